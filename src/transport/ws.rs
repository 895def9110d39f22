//! WebSocket transport (contract §4): `GET /v1/ws`.
//!
//! # Design
//!
//! One task owns each socket and runs one `select!` over: the session's
//! close flag (set by the hub when the outbox overflows, and by shutdown),
//! the subscription's next event, inbound frames and the heartbeat tick.
//! Topics named in the query are joined *before* the handshake completes,
//! so a publish made after the client saw `101` is delivered to it.
//!
//! Everything about the subscription (replay, de-duplication, gaps, the
//! cursor) is the shared driver's ([`Subscription`]); ops are the shared
//! handler's ([`ops::handle`]). This file reads frames and writes the
//! driver's events as JSON frames: a single-topic connection sends the
//! message's cached frame (encoded once for every such subscriber); a
//! multi-topic one appends its own cursor.
//!
//! The loop is written against any `Sink + Stream` of WebSocket messages
//! ([`Socket`]), so unit tests drive it through channels.
//!
//! Memory per idle connection is kept small on purpose: the library's read
//! buffer starts at `websocket.read_buffer_size` and frames are written
//! straight to the socket (`write_buffer_size = 0` by default).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::frame;
use super::ops;
use super::request::Topics;
use super::subscription::{guard, Event, GapReport, Subscription};
use crate::core::message::Wire;
use crate::core::{Close, Cursor, Message};
use crate::error::{ApiError, Code};
use crate::metrics::Transport;
use crate::state::{AppState, Peer};

/// How long a close frame may take to reach a client, and its answer to come.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Events written per wake-up before flushing.
const WRITE_BATCH: usize = 64;

/// What the connection loop needs of a WebSocket: axum's socket, or
/// channels in tests.
pub(crate) trait Socket:
    Stream<Item = Result<WsMessage, axum::Error>> + Sink<WsMessage, Error = axum::Error> + Unpin + Send
{
}

impl<T> Socket for T where
    T: Stream<Item = Result<WsMessage, axum::Error>> + Sink<WsMessage, Error = axum::Error> + Unpin + Send
{
}

/// Why the connection loop stopped, and what to tell the client.
type Outcome = Result<(), Close>;

/// `GET /v1/ws`: joins the query's topics, then upgrades.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(e) = state.check_open() {
        return e.into_response();
    }
    let mut sub = Subscription::new(&state, Transport::Ws, GapReport::Event);
    let connect = connect(&state, &mut sub, query.as_deref()).await;
    let cfg = &state.config;
    let max_frame = cfg.ws_max_frame();
    ws.read_buffer_size(cfg.websocket.read_buffer_size)
        .write_buffer_size(cfg.websocket.write_buffer_size)
        .max_write_buffer_size(cfg.websocket.max_write_buffer_size)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("ws", %peer);
            let tracker = state.shutdown.clone();
            tracker.track(run(state, Some(peer), sub, socket, connect).instrument(span))
        })
}

/// Parses the connect query (`topic`, repeatable, and `cursor`) and
/// subscribes; topics named by the cursor are replayed after the handshake.
async fn connect(state: &AppState, sub: &mut Subscription, query: Option<&str>) -> Result<(), ApiError> {
    let max = state.config.limits.max_topics_per_connection;
    let request = Topics::from_query(query, None, &["cursor"], 0, max)?;
    sub.start(request.topics, request.cursor.as_ref()).await
}

/// Serves one upgraded connection until it ends, then closes it. (A plain
/// function returning an `async move` block: an `async fn` would keep its
/// arguments twice in every idle connection's task.)
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<S: Socket>(
    state: AppState,
    peer: Option<SocketAddr>,
    mut sub: Subscription,
    mut socket: S,
    connect: Result<(), ApiError>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        sub.open(None, peer, true);
        let outcome = match connect {
            Ok(()) => serve(&state, &mut sub, &mut socket).await,
            Err(e) => {
                let _ = Box::pin(socket.send(text(frame::error(None, e.code, &e.message)))).await;
                Err(e.connect_close())
            }
        };
        let reason = outcome.err().unwrap_or(Close::Client);
        sub.ended(reason);
        // Leave the hub before the (bounded) close handshake.
        sub.leave_all();
        if reason != Close::Client {
            Box::pin(close(&mut socket, reason)).await;
        }
    }
}

async fn serve<S: Socket>(state: &AppState, sub: &mut Subscription, socket: &mut S) -> Outcome {
    let session = std::sync::Arc::clone(sub.session());
    // One long-lived "stop" future, polled by every select: the hub (slow
    // consumer) and shutdown both close the session; polling it is an
    // atomic load.
    let stop = session.wait_closed();
    tokio::pin!(stop);
    let hb = &state.config.heartbeat;
    let (interval, timeout) = (hb.interval, hb.timeout);
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    loop {
        // A replay runs to its end before the client's next frame is read.
        // Boxed: replays are rare next to live delivery, and their (large)
        // state would otherwise be reserved in every idle connection's task.
        if sub.replaying() {
            guard(stop.as_mut(), Box::pin(replay(socket, sub))).await?;
            continue;
        }
        tokio::select! {
            biased;
            reason = &mut stop => return Err(reason),
            event = sub.next_live() => {
                guard(stop.as_mut(), write_events(socket, sub, event)).await?;
            }
            inbound = socket.next() => {
                last_seen = Instant::now();
                match inbound {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(read_error(e)),
                    Some(Ok(WsMessage::Text(t))) => {
                        sub.received();
                        // Boxed: client ops are rare next to deliveries, and their
                        // (large) state would otherwise be reserved in every idle
                        // connection's task.
                        guard(stop.as_mut(), Box::pin(handle(state, sub, socket, t.as_str()))).await?;
                    }
                    Some(Ok(WsMessage::Binary(_))) => {
                        sub.received();
                        send(socket, frame::error(None, Code::BadRequest, "binary frames are not supported")).await?;
                    }
                    Some(Ok(WsMessage::Close(_))) => return Ok(()),
                    Some(Ok(_)) => {} // ping (answered by the library) or pong
                }
            }
            _ = tick.tick() => {
                let silent = last_seen.elapsed();
                if silent >= timeout {
                    return Err(Close::Silent);
                }
                if silent >= interval {
                    let ping = async { socket.send(WsMessage::Ping(Bytes::new())).await.map_err(|_| Close::Client) };
                    guard(stop.as_mut(), ping).await?;
                }
            }
        }
    }
}

/// Writes the replay's next events.
async fn replay<S: Socket>(socket: &mut S, sub: &mut Subscription) -> Outcome {
    match sub.next_replayed().await {
        Some(first) => write_events(socket, sub, first).await,
        None => Ok(()),
    }
}

/// Writes `first` and whatever else is ready, then flushes.
async fn write_events<S: Socket>(socket: &mut S, sub: &mut Subscription, first: Event) -> Outcome {
    let mut next = Some(first);
    let mut n = 0;
    while let Some(event) = next.take() {
        let frame = match event {
            Event::Closed(reason) => return Err(reason),
            Event::Gap(gap) => Some(text(frame::gap(&gap))),
            Event::Message { message, .. } => message_frame(&message, sub.cursor()),
        };
        if let Some(frame) = frame {
            socket.feed(frame).await.map_err(|_| Close::Client)?;
        }
        n += 1;
        if n < WRITE_BATCH {
            next = sub.try_next();
        }
    }
    socket.flush().await.map_err(|_| Close::Client)
}

/// The `message` frame for `m` at position `cursor` (the cached frame for a
/// single-topic connection).
fn message_frame(m: &Message, cursor: &Cursor) -> Option<WsMessage> {
    let bytes = if cursor.len() == 1 {
        m.encoded(Wire::WsSingle, |m| {
            Bytes::from(frame::message(m, &Cursor::single(m.topic.clone(), m.id).encode()))
        })
    } else {
        Bytes::from(frame::message(m, &cursor.encode()))
    };
    Utf8Bytes::try_from(bytes).ok().map(WsMessage::Text)
}

/// One client text frame: parse, carry out, answer.
async fn handle<S: Socket>(state: &AppState, sub: &mut Subscription, socket: &mut S, text: &str) -> Outcome {
    let (r, op) = match frame::parse(text, state.config.limits.max_message_bytes) {
        Ok(parsed) => parsed,
        Err(e) if e.code == Code::TooLarge => return Err(Close::TooLarge),
        Err(e) => return send(socket, frame::error(e.r.as_deref(), e.code, &e.message)).await,
    };
    let replies = ops::handle(state, Transport::Ws, sub, op).await?;
    for reply in &replies {
        socket.feed(self::text(frame::reply(r.as_deref(), reply))).await.map_err(|_| Close::Client)?;
    }
    socket.flush().await.map_err(|_| Close::Client)
}

fn text(s: String) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(s))
}

async fn send<S: Socket>(socket: &mut S, s: String) -> Outcome {
    socket.send(text(s)).await.map_err(|_| Close::Client)
}

/// Maps a read error: an oversized frame is `too_large` (1009), anything
/// else means the client is gone.
fn read_error(e: axum::Error) -> Close {
    match e.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Close::TooLarge,
        _ => Close::Client,
    }
}

/// Sends a close frame and waits (bounded) for the client's answer.
async fn close<S: Socket>(socket: &mut S, reason: Close) {
    let frame = CloseFrame { code: reason.ws_code(), reason: Utf8Bytes::from_static(reason.label()) };
    if tokio::time::timeout(CLOSE_TIMEOUT, socket.send(WsMessage::Close(Some(frame)))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(m)) = socket.next().await {
            if matches!(m, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
