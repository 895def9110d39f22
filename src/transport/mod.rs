//! Protocol adapters: each turns sockets into bus operations; the core never
//! sees a socket.

pub mod frame;
pub mod grpc;
pub mod http;
pub mod poll;
pub mod sse;
pub mod ws;

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;

use crate::core::replay::{Resume, Step};
use crate::core::subscriber::Session;
use crate::core::{Close, Cursor, MessageId, Subscriber, Topic};
use crate::error::{ApiError, Code};
use crate::metrics::Transport;
use crate::server::AppState;

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 256;
/// History page bounds (contract §3; the gRPC `History` rpc uses the same).
pub(crate) const HISTORY_DEFAULT: usize = 100;
pub(crate) const HISTORY_MAX: usize = 1000;

/// A topic name, or `bad_topic`.
pub(crate) fn topic(name: &str) -> Result<Topic, ApiError> {
    Topic::new(name).map_err(|e| ApiError::new(Code::BadTopic, e.to_string()))
}

/// A cursor handed out earlier, or `bad_request`.
pub(crate) fn cursor(s: &str) -> Result<Cursor, ApiError> {
    Cursor::parse(s).map_err(|e| ApiError::new(Code::BadRequest, e.to_string()))
}

/// A message id (`"<ms>-<seq>"`), or `bad_request`.
pub(crate) fn message_id(s: &str) -> Result<MessageId, ApiError> {
    s.parse::<MessageId>().map_err(|e| ApiError::new(Code::BadRequest, e.to_string()))
}

/// Checks the number of topics of a streaming subscription: at least one,
/// at most `limits.max_topics_per_connection`.
pub(crate) fn check_topic_count(n: usize, max: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::new(Code::BadRequest, "at least one topic is required"));
    }
    if n > max {
        return Err(ApiError::new(Code::BadRequest, "too many topics (limits.max_topics_per_connection)"));
    }
    Ok(())
}

/// Runs `work` (which may wait on a client that stopped reading) until it
/// finishes or `stop` resolves: a blocked write never keeps a connection
/// from being closed. `stop` must not be polled again once it resolved; the
/// caller returns instead.
pub(crate) async fn guard<S: std::future::Future<Output = Close>>(
    stop: std::pin::Pin<&mut S>,
    work: impl std::future::Future<Output = Result<(), Close>>,
) -> Result<(), Close> {
    tokio::select! {
        biased;
        reason = stop => Err(reason),
        outcome = work => outcome,
    }
}

/// Parses a `limit` query value: a positive integer, clamped to `max`.
pub(crate) fn parse_limit(v: &str, max: usize) -> Result<usize, crate::error::ApiError> {
    v.parse::<usize>().ok().filter(|n| *n >= 1).map(|n| n.min(max)).ok_or_else(|| {
        crate::error::ApiError::new(crate::error::Code::BadRequest, "limit must be a positive integer")
    })
}

/// Checks an idempotency key: 1 to 256 visible ASCII characters.
pub(crate) fn check_idempotency_key(key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::new(
            Code::BadRequest,
            "idempotency key must be 1 to 256 visible ASCII characters",
        ));
    }
    Ok(())
}

/// Checks a message's `data`: at most `max` bytes (`too_large`) of one JSON
/// value (`bad_request`). Returns the value without surrounding whitespace,
/// otherwise byte for byte.
pub(crate) fn check_data(data: Bytes, max: usize) -> Result<Bytes, ApiError> {
    if data.len() > max {
        return Err(ApiError::new(Code::TooLarge, format!("data over {max} bytes")));
    }
    let data = trim_json(data);
    if data.is_empty() {
        return Err(ApiError::new(Code::BadRequest, "data must be a JSON value"));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&data) {
        return Err(ApiError::new(Code::BadRequest, format!("data is not valid JSON: {e}")));
    }
    Ok(data)
}

/// Drops leading and trailing JSON whitespace; the value itself is kept
/// byte for byte.
fn trim_json(mut b: Bytes) -> Bytes {
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |i| i + 1);
    b.truncate(end);
    b.split_off(start)
}

/// Adds `name` to `topics` (once), or fails with `bad_topic`.
pub(crate) fn push_topic(topics: &mut Vec<Topic>, name: &str) -> Result<(), ApiError> {
    let t = topic(name)?;
    if !topics.contains(&t) {
        topics.push(t);
    }
    Ok(())
}

/// Starts a streaming subscription: topics that `cursor` names are to be
/// replayed after their position (returned, in order); the others are joined
/// live now, so anything published after this returns reaches `sub`.
/// Returns the stream's starting cursor too.
pub(crate) async fn start_subscription(
    sub: &mut Subscriber,
    topics: Vec<Topic>,
    cursor: Option<&Cursor>,
    page: usize,
) -> Result<(Cursor, Vec<Resume>), ApiError> {
    let mut position = Cursor::new();
    let mut resumes = Vec::new();
    for topic in topics {
        match cursor.and_then(|c| c.get(&topic)) {
            Some(after) => {
                position.set(&topic, after);
                resumes.push(Resume::after(topic, after, page));
            }
            None => {
                let pos = Resume::from_now(sub, &topic).await?;
                position.set(&topic, pos);
            }
        }
    }
    if !position.fits() {
        return Err(ApiError::new(Code::BadRequest, "too many topics for one cursor"));
    }
    Ok((position, resumes))
}

/// The next step of `resume`, raced against `session`'s close flag.
/// `Ok(None)` once the topic is live (the replay is then recorded in the
/// metrics); `Err` with the reason when the session was closed, or
/// [`Close::Unavailable`] when the engine failed (the client resumes from
/// its cursor).
pub(crate) async fn replay_step(
    session: &Session,
    resume: &mut Resume,
    sub: &mut Subscriber,
) -> Result<Option<Step>, Close> {
    let step = tokio::select! {
        biased;
        r = session.wait_closed() => return Err(r),
        step = resume.next(sub) => step,
    };
    match step {
        Ok(None) => {
            crate::metrics::replay(resume.recovered(), resume.replayed());
            Ok(None)
        }
        Ok(Some(step)) => Ok(Some(step)),
        Err(e) => {
            tracing::warn!(error = %e, topic = %resume.topic(), "replay failed");
            crate::metrics::engine_error();
            Err(Close::Unavailable)
        }
    }
}

/// A long-lived stream's open/close accounting (SSE streams, gRPC
/// `Subscribe`/`Connect`): a log line and metrics at open, and at close
/// however the stream ends, finished or dropped by hyper because the client
/// left or the connection was killed. A reason set on the session (slow
/// consumer, shutdown) wins over the one recorded here.
pub(crate) struct StreamRecord {
    transport: Transport,
    /// gRPC method, logged as `rpc`.
    rpc: Option<&'static str>,
    peer: String,
    session: std::sync::Arc<Session>,
    opened: tokio::time::Instant,
    /// Frames received, logged as `msgs_in` (streams that take input).
    pub(crate) received: Option<u64>,
    /// Messages sent.
    pub(crate) sent: u64,
    /// Why it ended, when the session has no reason of its own.
    pub(crate) reason: Close,
}

impl StreamRecord {
    pub(crate) fn open(
        transport: Transport,
        rpc: Option<&'static str>,
        peer: Option<std::net::SocketAddr>,
        session: std::sync::Arc<Session>,
    ) -> Self {
        crate::metrics::connection_opened(transport);
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        tracing::info!(transport = transport.label(), rpc, %peer, "connection opened");
        StreamRecord {
            transport,
            rpc,
            peer,
            session,
            opened: tokio::time::Instant::now(),
            received: None,
            sent: 0,
            reason: Close::Client,
        }
    }
}

impl Drop for StreamRecord {
    fn drop(&mut self) {
        let reason = self.session.closed().unwrap_or(self.reason);
        crate::metrics::connection_closed(self.transport, reason.label());
        tracing::info!(
            transport = self.transport.label(),
            rpc = self.rpc,
            peer = %self.peer,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            msgs_in = self.received,
            msgs_out = self.sent,
            reason = reason.label(),
            "connection closed"
        );
    }
}

/// The first steps of a subscribe op with `after`: a gap step when history
/// was trimmed past `after` (reported before the op's ack), then the first
/// real step or the failure (see [`replay_step`]).
pub(crate) async fn first_steps(
    session: &Session,
    resume: &mut Resume,
    sub: &mut Subscriber,
) -> (Option<Step>, Result<Option<Step>, Close>) {
    match replay_step(session, resume, sub).await {
        Ok(Some(gap @ Step::Gap(_))) => (Some(gap), replay_step(session, resume, sub).await),
        first => (None, first),
    }
}

/// Routes of every transport.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/publish/{topic}", post(http::publish))
        .route("/v1/history/{topic}", get(http::history))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/sse", get(sse::stream))
        .route("/v1/poll", get(poll::poll))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_outer_whitespace() {
        assert_eq!(&trim_json(Bytes::from_static(b" \n{\"a\": 1 }\r\n"))[..], b"{\"a\": 1 }");
        assert_eq!(&trim_json(Bytes::from_static(b"   "))[..], b"");
        assert_eq!(&trim_json(Bytes::from_static(b"1"))[..], b"1");
    }

    #[test]
    fn data_and_keys() {
        assert_eq!(check_data(Bytes::from_static(b" [1] "), 16).unwrap(), Bytes::from_static(b"[1]"));
        assert_eq!(check_data(Bytes::from_static(b"{"), 16).unwrap_err().code, Code::BadRequest);
        assert_eq!(check_data(Bytes::from_static(b""), 16).unwrap_err().code, Code::BadRequest);
        assert_eq!(
            check_data(Bytes::from_static(b"\"0123456789abcdef\""), 16).unwrap_err().code,
            Code::TooLarge
        );
        assert!(check_idempotency_key(b"k-1").is_ok());
        assert!(check_idempotency_key(b"").is_err());
        assert!(check_idempotency_key(b"a b").is_err());
        assert!(check_idempotency_key(&[b'x'; 257]).is_err());
    }
}
