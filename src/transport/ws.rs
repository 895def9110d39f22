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
//! Every write to the client is bounded by the heartbeat timeout (checked
//! on the heartbeat tick, [`Beat`]): a client that stops reading is closed
//! as `heartbeat_timeout` also in the middle of a replay or a blocked send,
//! when its frames are not being read. A client op runs to its end, never
//! cut off by the close flag: a publish is always acknowledged, also when
//! the connection is being closed (contract §10, in-flight publishes).
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
//! Memory per idle connection is kept small on purpose: the client's frames
//! are decoded by our own codec ([`codec`]), which reads through a stack
//! buffer and keeps nothing once a frame is decoded (also after a large
//! one), the task holds nothing of the upgrade once it is done, and data
//! frames are written from the shared encoded bytes with one vectored write
//! per wake-up ([`socket`]): no read or write buffer is kept.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message as WsMessage, Utf8Bytes};

use super::access::{self, Access};
use super::frame;
use super::ops;
use super::request::Topics;
use super::subscription::{Event, GapReport, Subscription};
use crate::auth::Grants;
use crate::core::message::Wire;
use crate::core::{Close, Cursor, Message};
use crate::error::{ApiError, Code};
use crate::metrics::Transport;
use crate::state::{AppState, ClientIp, Peer};

mod codec;
mod socket;
pub(crate) use socket::Socket;
use socket::{write_queued, Conn};

/// How long a close frame may take to reach a client, and its answer to come.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Events written per wake-up before flushing.
const WRITE_BATCH: usize = 64;

/// Why the connection loop stopped, and what to tell the client.
type Outcome = Result<(), Close>;

/// `GET /v1/ws`: checks the origin and the credential, joins the query's
/// topics, then upgrades. A refused connect still completes the handshake
/// and then closes with the reason (browsers cannot read a refused
/// handshake's status; contract §4).
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    ClientIp(ip): ClientIp,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    let accept = match handshake(&parts.headers) {
        Ok(accept) => accept,
        Err(e) => return e.into_response(),
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::new(Code::BadRequest, "this connection cannot be upgraded").into_response();
    };
    if let Err(e) = state.check_open() {
        return e.into_response();
    }
    let headers = &parts.headers;
    let (mut sub, connect) = match access::http(&state, ip, headers, query.as_deref(), true) {
        Ok(access) => {
            let mut sub = Subscription::new(&state, Transport::Ws, GapReport::Event, access);
            let connect = connect(&state, &mut sub, query.as_deref()).await;
            (sub, connect)
        }
        Err(e) => {
            // Never served: `run` only sends the refusal and closes.
            let access = Access::new(Arc::new(Grants::anonymous()), ip);
            let sub = Subscription::new(&state, Transport::Ws, GapReport::Event, access);
            (sub, Err(e))
        }
    };
    let cfg = &state.config;
    let max_frame = cfg.ws_max_frame();
    let tracker = state.shutdown.clone();
    let span = tracing::info_span!("ws", %peer);
    let socket = upgraded(on_upgrade, max_frame);
    sub.describe(None, Some(peer));
    // Boxed: a refusal is rare, and the task keeps this for its whole life.
    let connect = connect.map_err(Box::new);
    tokio::spawn(tracker.track(run(state, sub, socket, connect).instrument(span)));
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// A served connection's socket.
type Upgraded = Conn<TokioIo<hyper::upgrade::Upgraded>>;

/// The upgraded connection's socket, once hyper hands it over; `None` when
/// the connection failed before (it never became a WebSocket). Boxed, and
/// freed once the upgrade is done: otherwise its state would stay reserved
/// in every connection's task.
fn upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    max_frame: usize,
) -> std::pin::Pin<Box<impl std::future::Future<Output = Option<Upgraded>> + Send>> {
    Box::pin(async move {
        let upgraded = on_upgrade.await.ok()?;
        Some(Conn::new(TokioIo::new(upgraded), max_frame, max_frame))
    })
}

/// Checks an HTTP/1.1 WebSocket opening handshake (RFC 6455 §4.2.1) and
/// answers its key: `Sec-WebSocket-Accept`.
fn handshake(headers: &HeaderMap) -> Result<HeaderValue, ApiError> {
    let bad = |what: &str| Err(ApiError::new(Code::BadRequest, format!("not a WebSocket handshake: {what}")));
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return bad("Connection must include upgrade");
    }
    if !has_token(header::UPGRADE, "websocket") {
        return bad("Upgrade must be websocket");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return bad("Sec-WebSocket-Version must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return bad("Sec-WebSocket-Key is missing");
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::from_str(&accept).or_else(|_| bad("Sec-WebSocket-Key"))
}

/// Counts the stream against the abuse limits, parses the connect query
/// (`topic`, repeatable, and `cursor`) and subscribes; topics named by the
/// cursor are replayed after the handshake.
async fn connect(state: &AppState, sub: &mut Subscription, query: Option<&str>) -> Result<(), ApiError> {
    let max = state.config.limits.max_topics_per_connection;
    let request = Topics::from_query(query, None, &["cursor"], 0, max)?;
    sub.admit(state)?;
    if request.presence {
        for topic in &request.topics {
            sub.want_presence(topic, true);
        }
    }
    sub.start(request.topics, request.cursor.as_ref()).await
}

/// Serves one connection once `socket` (the upgrade) gives its socket,
/// until it ends, then closes it; a failed upgrade (`None`) drops `sub`
/// unserved. (A plain function returning an `async move` block, spawned as
/// it is: an `async fn`, or a spawned block calling this, would keep the
/// arguments twice in every idle connection's task.)
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<S: Socket>(
    state: AppState,
    mut sub: Subscription,
    socket: impl std::future::Future<Output = Option<S>> + Send,
    connect: Result<(), Box<ApiError>>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let Some(mut socket) = socket.await else { return };
        // Described (its peer) before the task began.
        sub.opened(true);
        let outcome = match connect {
            Ok(()) => serve(&state, &mut sub, &mut socket).await,
            Err(e) => {
                let refusal = socket.send(text(frame::error(None, e.code, &e.message)));
                let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, refusal)).await;
                Err(e.connect_close())
            }
        };
        let reason = outcome.err().unwrap_or(Close::Client);
        sub.ended(reason);
        // Leave the hub before the (bounded) close handshake.
        sub.leave_all();
        if reason == Close::Client {
            // The client closed (or its socket failed): our answer to its
            // close frame goes out, then our side ends (bounded).
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close()).await;
        } else {
            Box::pin(close(&mut socket, reason, &state.pacer)).await;
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
    let interval = hb.interval;
    let mut beat =
        Beat { tick: tokio::time::interval_at(Instant::now() + interval, interval), timeout: hb.timeout };
    beat.tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    loop {
        // A replay runs to its end before the client's next frame is read.
        // Boxed: replays are rare next to live delivery, and their (large)
        // state would otherwise be reserved in every idle connection's task.
        if sub.replaying() {
            let mut replaying = Box::pin(replay(socket, sub));
            beat.bound(stop.as_mut(), replaying.as_mut()).await?;
            // The client is not read meanwhile: a client that took the
            // replay's frames (each batch within the heartbeat timeout, see
            // `Beat::bound`) is alive.
            last_seen = Instant::now();
            continue;
        }
        tokio::select! {
            biased;
            reason = &mut stop => return Err(reason),
            event = sub.next_live() => {
                let write = write_events(socket, sub, event);
                tokio::pin!(write);
                beat.bound(stop.as_mut(), write).await?;
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
                        Box::pin(handle(state, sub, socket, stop.as_mut(), &mut beat, t.as_str())).await?;
                    }
                    Some(Ok(WsMessage::Binary(_))) => {
                        sub.received();
                        let refuse = send(socket, frame::error(None, Code::BadRequest, "binary frames are not supported"));
                        tokio::pin!(refuse);
                        beat.bound(stop.as_mut(), refuse).await?;
                    }
                    Some(Ok(WsMessage::Close(_))) => return Ok(()),
                    Some(Ok(_)) => {} // ping (answered by the library) or pong
                }
            }
            _ = beat.tick.tick() => {
                let silent = last_seen.elapsed();
                if silent >= beat.timeout {
                    return Err(Close::Silent);
                }
                if silent >= interval {
                    let ping = async { socket.send(WsMessage::Ping(Bytes::new())).await.map_err(|_| Close::Client) };
                    tokio::pin!(ping);
                    beat.bound(stop.as_mut(), ping).await?;
                }
            }
        }
    }
}

/// The heartbeat: its tick, and the timeout after which a client that
/// neither answered nor accepted a write is closed (`heartbeat_timeout`).
struct Beat {
    tick: tokio::time::Interval,
    timeout: Duration,
}

impl Beat {
    /// Runs `work` (writes to the client) until it finishes or `stop`
    /// resolves (a blocked write never keeps a connection from being
    /// closed), or until it has taken the heartbeat timeout: a client that
    /// accepts nothing that long (it stopped reading) is as gone as one that
    /// answers no ping. Checked on the heartbeat tick, so it fires within
    /// `timeout + interval`; the tick costs no timer of its own. `stop` must
    /// not be polled again once it resolved; the caller returns instead.
    /// `work` is pinned by the caller: taken by value, it would be kept
    /// twice in this future, and so in every connection's task.
    async fn bound<F, W>(&mut self, stop: std::pin::Pin<&mut F>, work: std::pin::Pin<&mut W>) -> Outcome
    where
        F: std::future::Future<Output = Close>,
        W: std::future::Future<Output = Outcome>,
    {
        match self.race(stop, work).await {
            Raced::Done(outcome) => outcome,
            Raced::Stopped(reason) => Err(reason),
        }
    }

    /// [`Beat::bound`], leaving `work` to the caller when `stop` resolves
    /// first (to finish it, bounded).
    async fn race<F, W>(&mut self, mut stop: std::pin::Pin<&mut F>, mut work: std::pin::Pin<&mut W>) -> Raced
    where
        F: std::future::Future<Output = Close>,
        W: std::future::Future<Output = Outcome>,
    {
        let started = Instant::now();
        loop {
            tokio::select! {
                biased;
                reason = stop.as_mut() => return Raced::Stopped(reason),
                outcome = work.as_mut() => return Raced::Done(outcome),
                _ = self.tick.tick() => {
                    if started.elapsed() >= self.timeout {
                        return Raced::Done(Err(Close::Silent));
                    }
                }
            }
        }
    }
}

/// How [`Beat::race`] ended.
enum Raced {
    /// The work finished (or took the heartbeat timeout: `Close::Silent`).
    Done(Outcome),
    /// The connection was closed first; the work is unfinished.
    Stopped(Close),
}

/// Writes the replay's next events.
async fn replay<S: Socket>(socket: &mut S, sub: &mut Subscription) -> Outcome {
    match sub.next_replayed().await {
        Some(first) => write_events(socket, sub, first).await,
        None => Ok(()),
    }
}

/// Writes `first` and whatever else is ready (up to [`WRITE_BATCH`]
/// frames) with as few writes as the socket takes.
async fn write_events<S: Socket>(socket: &mut S, sub: &mut Subscription, first: Event) -> Outcome {
    let mut next = Some(first);
    let mut n = 0;
    let mut ended = None;
    while let Some(event) = next.take() {
        match event {
            Event::Closed(reason) => {
                // Frames queued before the close still go out first.
                ended = Some(reason);
                break;
            }
            Event::Gap(gap) => socket.queue(socket::text_frame(frame::gap(&gap).as_bytes())),
            Event::Message { message, skipped: 0, .. } => socket.queue(message_frame(&message, sub.cursor())),
            Event::Message { message, skipped, .. } => {
                let body = frame::message_skipped(&message, &sub.cursor().encode(), skipped);
                socket.queue(socket::text_frame(&body))
            }
            Event::Ephemeral(message) => socket
                .queue(message.encoded(Wire::EPHEMERAL_WS, |m| socket::text_frame(&frame::ephemeral(m)))),
            Event::Notice(notice) => socket.queue(socket::text_frame(&notice.json)),
        }
        n += 1;
        if n < WRITE_BATCH {
            next = sub.try_next();
        }
    }
    write_queued(socket).await.map_err(|_| Close::Client)?;
    ended.map_or(Ok(()), Err)
}

/// The complete `message` frame for `m` at position `cursor` (encoded once
/// per message and shared for a single-topic connection).
fn message_frame(m: &Message, cursor: &Cursor) -> Bytes {
    let encode = |m: &Message, cursor: &str| {
        socket::encode_text_frame(frame::message_len(m, cursor), |out| frame::write_message(out, m, cursor))
    };
    if cursor.len() == 1 {
        m.encoded(Wire::WsSingle, |m| encode(m, &Cursor::single(m.topic.clone(), m.id).encode()))
    } else {
        encode(m, &cursor.encode())
    }
}

/// One client text frame: parse, carry out, answer.
///
/// The op is not raced against the close flag: a publish the engine may
/// already have stored is finished and acknowledged (contract §10), so a
/// client never retries a message it cannot know was stored; a subscribe's
/// replay watches the flag itself. When the connection is closed meanwhile,
/// the answers still get [`CLOSE_TIMEOUT`] to go out, before the close
/// frame.
async fn handle<S: Socket, F: std::future::Future<Output = Close>>(
    state: &AppState,
    sub: &mut Subscription,
    socket: &mut S,
    stop: std::pin::Pin<&mut F>,
    beat: &mut Beat,
    text: &str,
) -> Outcome {
    let (r, op) = match frame::parse(text, state.config.limits.max_message_bytes) {
        Ok(parsed) => parsed,
        Err(e) if e.code == Code::TooLarge => return Err(Close::TooLarge),
        Err(e) => {
            let refuse = send(socket, frame::error(e.r.as_deref(), e.code, &e.message));
            tokio::pin!(refuse);
            return beat.bound(stop, refuse).await;
        }
    };
    let replies = ops::handle(state, Transport::Ws, sub, op).await?;
    let write = async {
        for reply in &replies {
            socket.feed(self::text(frame::reply(r.as_deref(), reply))).await.map_err(|_| Close::Client)?;
        }
        socket.flush().await.map_err(|_| Close::Client)
    };
    tokio::pin!(write);
    match beat.race(stop, write.as_mut()).await {
        Raced::Done(outcome) => outcome,
        Raced::Stopped(reason) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, write).await;
            Err(reason)
        }
    }
}

fn text(s: String) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(s))
}

async fn send<S: Socket>(socket: &mut S, s: String) -> Outcome {
    socket.send(text(s)).await.map_err(|_| Close::Client)
}

/// Maps a read error: an oversized frame is `too_large` (1009), anything
/// else means the client is gone.
fn read_error(e: tungstenite::Error) -> Close {
    match e {
        tungstenite::Error::Capacity(_) => Close::TooLarge,
        _ => Close::Client,
    }
}

/// Sends a close frame and waits (bounded) for the client's answer. A
/// close that hits many clients at once (shutdown, engine unavailable)
/// says when to come back: reason `"<reason>; retry_ms=<ms>"` (`pacing`).
async fn close<S: Socket>(socket: &mut S, reason: Close, pacer: &crate::pacing::Pacer) {
    let text = if crate::pacing::paced(reason) {
        Utf8Bytes::from(crate::pacing::ws_reason(reason.label(), pacer.hint()))
    } else {
        Utf8Bytes::from_static(reason.label())
    };
    let frame = CloseFrame { code: reason.ws_code().into(), reason: text };
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
