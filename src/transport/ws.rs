//! WebSocket transport (contract §4): `GET /v1/ws`.
//!
//! # Design
//!
//! One task owns each socket and runs one `select!` over: shutdown, the
//! session's close flag (set by the hub when the outbox overflows), the
//! outbox, inbound frames and the heartbeat tick. Subscriptions named in the
//! query are joined *before* the handshake completes, so a publish made after
//! the client saw `101` is delivered to it.
//!
//! Each outbox message is checked against the connection's [`Cursor`]: a
//! message for a topic no longer subscribed, or with an id not greater than
//! the position already delivered (the replay/live overlap), is dropped. A
//! single-topic connection sends the message's cached frame (encoded once for
//! every such subscriber); a multi-topic one appends its own cursor.
//!
//! Memory per idle connection is kept small on purpose: the library's read
//! buffer starts at `websocket.read_buffer_size` and frames are written
//! straight to the socket (`write_buffer_size = 0` by default).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::value::RawValue;
use smallvec::SmallVec;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::frame::{self, ClientOp};
use super::guard;
use crate::core::message::Wire;
use crate::core::replay::{Resume, Step};
use crate::core::subscriber::{Session, SessionGuard};
use crate::core::{Close, Cursor, EngineError, Message, Subscriber, Topic};
use crate::error::{ApiError, Code};
use crate::metrics::{self, Transport};
use crate::server::{AppState, Peer};

/// How long a close frame may take to reach a client, and its answer to come.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Outbox messages written per wake-up before flushing.
const WRITE_BATCH: usize = 64;

/// What the query asked for at connect.
struct Connect {
    /// Topics to replay from the cursor.
    resumes: Vec<Resume>,
}

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
    let mut conn = Conn::new(state.clone(), peer);
    let connect = conn.connect(query.as_deref()).await;
    let cfg = &state.config;
    let max_frame = cfg.ws_max_frame();
    ws.read_buffer_size(cfg.websocket.read_buffer_size)
        .write_buffer_size(cfg.websocket.write_buffer_size)
        .max_write_buffer_size(cfg.websocket.max_write_buffer_size)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("ws", %peer);
            state.shutdown.track(conn.run(socket, connect).instrument(span))
        })
}

/// One WebSocket connection's state, owned by its task.
struct Conn {
    state: AppState,
    peer: SocketAddr,
    sub: Subscriber,
    session: Arc<Session>,
    _registered: SessionGuard,
    cursor: Cursor,
    opened: Instant,
    last_seen: Instant,
    msgs_in: u64,
    msgs_out: u64,
}

/// Why the connection loop stopped, and what to tell the client.
type Outcome = Result<(), Close>;

impl Conn {
    fn new(state: AppState, peer: SocketAddr) -> Self {
        let sub = state.bus.subscriber();
        let session = Arc::clone(sub.session());
        let registered = state.shutdown.sessions().register(&session);
        let now = Instant::now();
        Conn {
            state,
            peer,
            sub,
            session,
            _registered: registered,
            cursor: Cursor::new(),
            opened: now,
            last_seen: now,
            msgs_in: 0,
            msgs_out: 0,
        }
    }

    /// Parses the connect query and joins "from now" topics; topics named by
    /// the cursor are replayed after the handshake.
    async fn connect(&mut self, query: Option<&str>) -> Result<Connect, ApiError> {
        let mut topics: Vec<Topic> = Vec::new();
        let mut cursor = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "topic" => {
                    super::push_topic(&mut topics, &v)?;
                }
                "cursor" => cursor = Some(super::cursor(&v)?),
                _ => {}
            }
        }
        if topics.len() > self.state.config.limits.max_topics_per_connection {
            return Err(ApiError::new(
                Code::BadRequest,
                "too many topics (limits.max_topics_per_connection)",
            ));
        }
        let mut resumes = Vec::new();
        for topic in topics {
            match cursor.as_ref().and_then(|c| c.get(&topic)) {
                Some(after) => {
                    self.cursor.set(&topic, after);
                    resumes.push(Resume::after(topic, after, self.state.bus.replay_page));
                }
                None => {
                    let pos = Resume::from_now(&mut self.sub, &topic).await.map_err(ApiError::from)?;
                    self.cursor.set(&topic, pos);
                }
            }
        }
        if !self.cursor.fits() {
            return Err(ApiError::new(Code::BadRequest, "too many topics for one cursor"));
        }
        Ok(Connect { resumes })
    }

    async fn run(mut self, mut socket: WebSocket, connect: Result<Connect, ApiError>) {
        metrics::connection_opened(Transport::Ws);
        tracing::info!(transport = "ws", peer = %self.peer, "connection opened");
        let outcome = match connect {
            Ok(connect) => self.serve(&mut socket, connect).await,
            Err(e) => {
                let _ = Box::pin(socket.send(text(frame::error(None, e.code, &e.message)))).await;
                Err(if e.code == Code::Unavailable { Close::Unavailable } else { Close::Policy })
            }
        };
        let reason = match outcome {
            Ok(()) => Close::Client,
            Err(reason) => reason,
        };
        // Leave the hub before the (bounded) close handshake.
        drop(std::mem::replace(&mut self.sub, self.state.bus.subscriber()));
        if reason != Close::Client {
            Box::pin(close(&mut socket, reason)).await;
        }
        metrics::connection_closed(Transport::Ws, reason.label());
        tracing::info!(
            transport = "ws",
            peer = %self.peer,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            msgs_in = self.msgs_in,
            msgs_out = self.msgs_out,
            reason = reason.label(),
            "connection closed"
        );
    }

    async fn serve(&mut self, socket: &mut WebSocket, connect: Connect) -> Outcome {
        let session = Arc::clone(&self.session);
        // One long-lived "stop" future, polled by every select: the hub (slow
        // consumer) and shutdown both close the session; polling it is an
        // atomic load.
        let stop = session.wait_closed();
        tokio::pin!(stop);
        for mut resume in connect.resumes {
            guard(stop.as_mut(), Box::pin(self.replay(socket, &mut resume))).await?;
        }
        let hb = &self.state.config.heartbeat;
        let (interval, timeout) = (hb.interval, hb.timeout);
        let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                reason = &mut stop => return Err(reason),
                Some(first) = self.sub.outbox.recv() => {
                    guard(stop.as_mut(), self.write_live(socket, first)).await?;
                }
                inbound = socket.recv() => {
                    self.last_seen = Instant::now();
                    match inbound {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(read_error(e)),
                        Some(Ok(WsMessage::Text(t))) => {
                            self.msgs_in += 1;
                            // Boxed: client ops are rare next to deliveries, and their
                            // (large) state would otherwise be reserved in every idle
                            // connection's task.
                            guard(stop.as_mut(), Box::pin(self.handle(socket, t.as_str()))).await?;
                        }
                        Some(Ok(WsMessage::Binary(_))) => {
                            self.msgs_in += 1;
                            send(socket, frame::error(None, Code::BadRequest, "binary frames are not supported")).await?;
                        }
                        Some(Ok(WsMessage::Close(_))) => return Ok(()),
                        Some(Ok(_)) => {} // ping (answered by the library) or pong
                    }
                }
                _ = tick.tick() => {
                    let silent = self.last_seen.elapsed();
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

    /// Writes `first` and whatever else is already queued, then flushes.
    async fn write_live(&mut self, socket: &mut WebSocket, first: Arc<Message>) -> Outcome {
        let mut written = 0u64;
        let mut next = Some(first);
        let mut n = 0;
        let mut seen: SmallVec<[Instant; 8]> = SmallVec::new();
        while let Some(m) = next.take() {
            if let Some(t) = self.frame_for(&m) {
                socket.feed(t).await.map_err(|_| Close::Client)?;
                written += 1;
                seen.push(m.seen);
            }
            n += 1;
            if n < WRITE_BATCH {
                next = self.sub.outbox.try_recv().ok();
            }
        }
        if written > 0 {
            socket.flush().await.map_err(|_| Close::Client)?;
            self.msgs_out += written;
            metrics::delivered_ws(written);
            let now = Instant::now();
            for at in seen {
                metrics::delivery_latency(Transport::Ws, now.saturating_duration_since(at));
            }
        }
        Ok(())
    }

    /// The frame for `m`, advancing the cursor; `None` when not subscribed or
    /// already delivered.
    fn frame_for(&mut self, m: &Message) -> Option<WsMessage> {
        let pos = self.cursor.get(&m.topic)?;
        if m.id <= pos {
            return None;
        }
        self.cursor.set(&m.topic, m.id);
        let bytes = if self.cursor.len() == 1 {
            m.encoded(Wire::WsSingle, |m| {
                Bytes::from(frame::message(m, &Cursor::single(m.topic.clone(), m.id).encode()))
            })
        } else {
            Bytes::from(frame::message(m, &self.cursor.encode()))
        };
        Utf8Bytes::try_from(bytes).ok().map(WsMessage::Text)
    }

    /// Replays one topic to the socket until it is live.
    async fn replay(&mut self, socket: &mut WebSocket, resume: &mut Resume) -> Outcome {
        while let Some(step) = self.step(resume).await? {
            self.write_step(socket, step).await?;
        }
        Ok(())
    }

    /// The next replay step (see [`super::replay_step`]); the caller's guard
    /// also races the session's close.
    async fn step(&mut self, resume: &mut Resume) -> Result<Option<Step>, Close> {
        super::replay_step(&Arc::clone(&self.session), resume, &mut self.sub).await
    }

    async fn write_step(&mut self, socket: &mut WebSocket, step: Step) -> Outcome {
        match step {
            Step::Gap(gap) => {
                if let Some(pos) = self.cursor.get(&gap.topic) {
                    self.cursor.set(&gap.topic, pos.max(gap.resume_from));
                }
                send(socket, frame::gap(&gap)).await
            }
            Step::Messages(messages) => {
                let mut written = 0;
                for m in &messages {
                    if let Some(t) = self.frame_for(m) {
                        socket.feed(t).await.map_err(|_| Close::Client)?;
                        written += 1;
                    }
                }
                socket.flush().await.map_err(|_| Close::Client)?;
                self.msgs_out += written;
                metrics::delivered_ws(written);
                Ok(())
            }
        }
    }

    async fn handle(&mut self, socket: &mut WebSocket, text: &str) -> Outcome {
        let max = self.state.config.limits.max_message_bytes;
        let op = match frame::parse(text, max) {
            Ok(op) => op,
            Err(e) if e.code == Code::TooLarge => return Err(Close::TooLarge),
            Err(e) => return send(socket, frame::error(e.r.as_deref(), e.code, &e.message)).await,
        };
        match op {
            ClientOp::Ping { r } => send(socket, frame::pong(r.as_deref())).await,
            ClientOp::Refresh { r, .. } => send(socket, frame::ack(r.as_deref())).await,
            ClientOp::Unsubscribe { topic, r } => {
                self.sub.leave(&topic);
                self.cursor.remove(&topic);
                send(socket, frame::ack(r.as_deref())).await
            }
            ClientOp::Publish { topic, data, r } => {
                match self.state.bus.engine.publish(&topic, data, None).await {
                    Ok(p) => {
                        metrics::published(Transport::Ws);
                        send(socket, frame::ack_publish(r.as_deref(), p.id)).await
                    }
                    Err(e) => self.engine_error(socket, r.as_deref(), e).await,
                }
            }
            ClientOp::Subscribe { topic, after, r } => {
                self.subscribe(socket, topic, after, r.as_deref()).await
            }
        }
    }

    async fn engine_error(
        &mut self,
        socket: &mut WebSocket,
        r: Option<&RawValue>,
        e: EngineError,
    ) -> Outcome {
        let e = ApiError::from(e);
        send(socket, frame::error(r, e.code, &e.message)).await
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        after: Option<crate::core::MessageId>,
        r: Option<&RawValue>,
    ) -> Outcome {
        if self.cursor.get(&topic).is_some() {
            return send(socket, frame::error(r, Code::BadRequest, "already subscribed")).await;
        }
        if self.cursor.len() >= self.state.config.limits.max_topics_per_connection {
            return send(
                socket,
                frame::error(r, Code::BadRequest, "too many topics (limits.max_topics_per_connection)"),
            )
            .await;
        }
        self.cursor.set(&topic, after.unwrap_or_default());
        if !self.cursor.fits() {
            self.cursor.remove(&topic);
            return send(socket, frame::error(r, Code::BadRequest, "too many topics for one cursor")).await;
        }
        let Some(after) = after else {
            return match Resume::from_now(&mut self.sub, &topic).await {
                Ok(pos) => {
                    self.cursor.set(&topic, pos);
                    send(socket, frame::ack_subscribe(r, true)).await
                }
                Err(e) => {
                    self.cursor.remove(&topic);
                    self.engine_error(socket, r, e).await
                }
            };
        };
        let mut resume = Resume::after(topic.clone(), after, self.state.bus.replay_page);
        let (gap, first) = super::first_steps(&Arc::clone(&self.session), &mut resume, &mut self.sub).await;
        if let Some(gap) = gap {
            self.write_step(socket, gap).await?;
        }
        let first = match first {
            Ok(first) => first,
            Err(Close::Unavailable) => {
                self.sub.leave(&topic);
                self.cursor.remove(&topic);
                return send(socket, frame::error(r, Code::Unavailable, "engine unavailable")).await;
            }
            Err(closed) => return Err(closed),
        };
        send(socket, frame::ack_subscribe(r, resume.recovered())).await?;
        if let Some(step) = first {
            self.write_step(socket, step).await?;
            self.replay(socket, &mut resume).await?;
        }
        Ok(())
    }
}

fn text(s: String) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(s))
}

async fn send(socket: &mut WebSocket, s: String) -> Outcome {
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
async fn close(socket: &mut WebSocket, reason: Close) {
    let frame = CloseFrame { code: reason.ws_code(), reason: Utf8Bytes::from_static(reason.label()) };
    if tokio::time::timeout(CLOSE_TIMEOUT, socket.send(WsMessage::Close(Some(frame)))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}
