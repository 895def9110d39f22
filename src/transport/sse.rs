//! Server-Sent Events (contract §5): `GET /v1/sse?topic=A&topic=B`.
//!
//! One event per message (the shared driver's events, encoded): `id:` is the cursor after it (naming every topic
//! of the stream), `data:` the message JSON of §1, no `event:` field (so
//! `EventSource.onmessage` fires). A trimmed history sends `event: gap`
//! first. `Last-Event-ID` (header, as browsers send on reconnect) or
//! `lastEventId` (query) resumes every topic with no gap and no duplicate.
//!
//! Topics without a resume position are joined before the response headers
//! are sent, so anything published after the client sees `200` reaches it.
//! The body is a stream polled by the connection's task: no extra task per
//! client. A client that stops reading stops being polled, so its session's
//! kill switch ends the stream when its outbox overflows: on HTTP/2 that
//! stream alone is reset, on HTTP/1.1 the connection is aborted. It comes
//! back with `Last-Event-ID` and loses nothing. On shutdown the stream ends
//! cleanly; at the token's expiry (without auth: never) it ends too, and
//! the client reconnects with a fresh token (every request presents one).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::{Instant, MissedTickBehavior};

use super::access;
use super::request::Topics;
use super::subscription::{Event, GapReport, Subscription};
use crate::core::message::Wire;
use crate::core::replay::Gap;
use crate::core::{Cursor, Message};
use crate::error::ApiError;
use crate::metrics::Transport;
use crate::state::{AppState, ClientIp, Peer};

/// Events gathered into one body chunk.
const CHUNK_EVENTS: usize = 64;

/// `GET /v1/sse`.
pub(crate) async fn stream(
    State(state): State<AppState>,
    ConnectInfo(conn): ConnectInfo<Peer>,
    ClientIp(ip): ClientIp,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_open()?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    let max = state.config.limits.max_topics_per_connection;
    let request = Topics::from_query(query.as_deref(), last_event_id, &["lastEventId"], 1, max)?;
    let peer = conn.0;
    let access = access::http(&state, ip, &headers, query.as_deref(), true)?;
    let mut sub = Subscription::new(&state, Transport::Sse, GapReport::Event, access);
    sub.session().set_kill(conn.kill_switch());
    sub.admit(&state)?;
    if request.presence {
        for topic in &request.topics {
            sub.want_presence(topic, true);
        }
    }
    sub.start(request.topics, request.cursor.as_ref()).await?;
    let body = Body::from_stream(events(state, peer, sub));
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// The event stream of one client.
fn events(
    state: AppState,
    peer: SocketAddr,
    mut sub: Subscription,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    async_stream::stream! {
        // The close is recorded when the stream ends *or is dropped* (hyper
        // drops the body when the client goes away or the connection is
        // killed): the subscription logs it when dropped.
        sub.open(None, Some(peer), false);
        let retry = state.config.sse.retry.as_millis();
        yield Ok(Bytes::from(format!("retry: {retry}\n\n")));
        let interval = state.config.heartbeat.interval;
        // Comments keep proxies from timing the stream out once it is live.
        let mut tick = None;
        loop {
            let first = if sub.replaying() {
                // Boxed: replays are rare; their state would otherwise be
                // reserved in every stream.
                match Box::pin(sub.next_replayed()).await {
                    Some(event) => event,
                    None => continue,
                }
            } else {
                let tick = tick.get_or_insert_with(|| {
                    let mut t = tokio::time::interval_at(Instant::now() + interval, interval);
                    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    t
                });
                tokio::select! {
                    biased;
                    event = sub.next_live() => event,
                    _ = tick.tick() => {
                        yield Ok(Bytes::from_static(b": ping\n\n"));
                        continue;
                    }
                }
            };
            let mut out = Chunk::default();
            let mut next = Some(first);
            let mut n = 0;
            let mut closed = None;
            while let Some(event) = next.take() {
                match event {
                    Event::Closed(reason) => {
                        closed = Some(reason);
                        break;
                    }
                    Event::Gap(gap) => gap_event(out.buf(), sub.cursor(), &gap),
                    Event::Message { message, skipped: 0, .. } => message_event(&mut out, sub.cursor(), &message),
                    Event::Message { message, skipped, .. } => skipped_event(out.buf(), sub.cursor(), &message, skipped),
                    Event::Ephemeral(message) => out.push(ephemeral_event(&message)),
                    Event::Notice(notice) => {
                        let b = out.buf();
                        b.put_slice(b"event: ");
                        b.put_slice(notice.event.as_bytes());
                        b.put_slice(b"\n");
                        put_data(b, &notice.json);
                        b.put_slice(b"\n");
                    }
                }
                n += 1;
                if n < CHUNK_EVENTS {
                    next = sub.try_next();
                }
            }
            // A close that hits many clients at once says when to come back.
            if closed.is_some_and(crate::pacing::paced) {
                out.buf().put_slice(crate::pacing::sse_retry(state.pacer.hint()).as_bytes());
            }
            if let Some(chunk) = out.take() {
                yield Ok(chunk);
            }
            if let Some(reason) = closed {
                sub.ended(reason);
                break;
            }
        }
    }
}

/// One body chunk being gathered: a lone cached event goes out as the
/// shared bytes themselves (no copy); several are joined into one buffer.
#[derive(Default)]
struct Chunk {
    shared: Option<Bytes>,
    own: BytesMut,
}

impl Chunk {
    /// Appends `bytes` (kept shared while it is the chunk's only content).
    fn push(&mut self, bytes: Bytes) {
        if self.shared.is_none() && self.own.is_empty() {
            self.shared = Some(bytes);
        } else {
            self.buf().put(bytes);
        }
    }

    /// The chunk as a buffer of its own, to append to.
    fn buf(&mut self) -> &mut BytesMut {
        if let Some(b) = self.shared.take() {
            self.own.put(b);
        }
        &mut self.own
    }

    /// The gathered bytes, if any.
    fn take(self) -> Option<Bytes> {
        match self.shared {
            Some(b) => Some(b),
            None => (!self.own.is_empty()).then(|| self.own.freeze()),
        }
    }
}

/// Appends the event for `m` at position `cursor` (the cached event for a
/// single-topic stream, encoded once per message and shared).
fn message_event(out: &mut Chunk, cursor: &Cursor, m: &Message) {
    if cursor.len() == 1 {
        out.push(m.encoded(Wire::SseSingle, |m| {
            let mut b = BytesMut::new();
            event(&mut b, None, &Cursor::single(m.topic.clone(), m.id).encode(), &m.json());
            b.freeze()
        }));
    } else {
        event(out.buf(), None, &cursor.encode(), &m.json());
    }
}

/// A message event whose data carries `"skipped":N` (`delivery = "latest"`):
/// written for this subscriber alone.
fn skipped_event(out: &mut BytesMut, cursor: &Cursor, m: &Message, skipped: u64) {
    let mut json = Vec::with_capacity(m.data.len() + 96);
    m.write_json_skipped(&mut json, skipped);
    event(out, None, &cursor.encode(), &json);
}

/// `event: ephemeral` with no `id:` line (contract §11), cached on the
/// message: `{"topic":T,"data":D,"ephemeral":true,"user":U?}`.
fn ephemeral_event(m: &Message) -> Bytes {
    m.encoded(Wire::EPHEMERAL_SSE, |m| {
        let mut json = Vec::with_capacity(m.data.len() + m.topic.as_str().len() + 64);
        json.extend_from_slice(b"{\"topic\":\"");
        json.extend_from_slice(m.topic.as_str().as_bytes());
        json.extend_from_slice(b"\",\"data\":");
        json.extend_from_slice(&m.data);
        json.extend_from_slice(b",\"ephemeral\":true");
        super::frame::write_user(&mut json, m);
        json.push(b'}');
        let mut b = BytesMut::with_capacity(json.len() + 32);
        b.put_slice(b"event: ephemeral\n");
        put_data(&mut b, &json);
        b.put_slice(b"\n");
        b.freeze()
    })
}

/// `event: gap`, with the cursor already moved past the gap, so a
/// reconnect does not report it again.
fn gap_event(out: &mut BytesMut, cursor: &Cursor, gap: &Gap) {
    event(out, Some("gap"), &cursor.encode(), gap.json().as_bytes());
}

/// One event: `event:` (when named), `id:`, `data:`, blank line.
fn event(out: &mut BytesMut, name: Option<&str>, id: &str, data: &[u8]) {
    out.reserve(id.len() + data.len() + 32);
    if let Some(name) = name {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_slice(b"\n");
    }
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_slice(b"\n");
    put_data(out, data);
    out.put_slice(b"\n");
}

/// `data:` lines for `data`. SSE ends a line at `\r\n`, `\r` or `\n`, and
/// JSON may hold raw line breaks between its tokens (never inside a
/// string), so each line of `data` gets its own `data:` field; a client
/// joins them with `\n`, which leaves the JSON value as it was. Written as
/// one line, the rest of a pretty-printed message would be lost.
fn put_data(out: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    loop {
        let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
            out.put_slice(b"data: ");
            out.put_slice(rest);
            out.put_slice(b"\n");
            return;
        };
        out.put_slice(b"data: ");
        out.put_slice(&rest[..i]);
        out.put_slice(b"\n");
        let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
        rest = &rest[i + if crlf { 2 } else { 1 }..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{MessageId, Topic};

    #[test]
    fn skipped_and_ephemeral_events() {
        let t = Topic::new("a").unwrap();
        let c = Cursor::single(t.clone(), MessageId::new(2, 0));
        let m = Message::new(t.clone(), MessageId::new(2, 0), 2, Bytes::from_static(b"1"));
        let mut out = BytesMut::new();
        skipped_event(&mut out, &c, &m, 7);
        let id = c.encode();
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            format!(
                "id: {id}\ndata: {{\"topic\":\"a\",\"id\":\"2-0\",\"ts\":2,\"data\":1,\"skipped\":7}}\n\n"
            )
        );
        let from = crate::core::message::Ephemeral { origin: 1, user: Some("al\"ice".into()) };
        let e = Message::ephemeral(t, Bytes::from_static(b"{\"typing\":true}"), from);
        assert_eq!(
            String::from_utf8(ephemeral_event(&e).to_vec()).unwrap(),
            "event: ephemeral\ndata: {\"topic\":\"a\",\"data\":{\"typing\":true},\"ephemeral\":true,\"user\":\"al\\\"ice\"}\n\n",
            "no id: line, the user JSON-escaped"
        );
    }

    #[test]
    fn events_carry_cursor_and_json() {
        let t = Topic::new("a").unwrap();
        let c = Cursor::single(t.clone(), MessageId::new(2, 0));
        let m = Message::new(t.clone(), MessageId::new(2, 0), 2, Bytes::from_static(b"{\"x\":1}"));
        let mut out = Chunk::default();
        message_event(&mut out, &c, &m);
        let text = String::from_utf8(out.take().unwrap().to_vec()).unwrap();
        let id = c.encode();
        assert_eq!(
            text,
            format!("id: {id}\ndata: {{\"topic\":\"a\",\"id\":\"2-0\",\"ts\":2,\"data\":{{\"x\":1}}}}\n\n")
        );
        let gap = Gap {
            topic: t,
            after: MessageId::new(1, 0),
            oldest: MessageId::new(5, 0),
            resume_from: MessageId::new(4, 0),
            dropped: false,
        };
        let mut out = BytesMut::new();
        gap_event(&mut out, &c, &gap);
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            format!(
                "event: gap\nid: {id}\ndata: {{\"topic\":\"a\",\"after\":\"1-0\",\"oldest\":\"5-0\"}}\n\n"
            )
        );
    }

    #[test]
    fn a_lone_cached_event_is_sent_without_a_copy_and_several_are_joined() {
        let t = Topic::new("a").unwrap();
        let c = Cursor::single(t.clone(), MessageId::new(2, 0));
        let m = Message::new(t, MessageId::new(2, 0), 2, Bytes::from_static(b"1"));
        let mut one = Chunk::default();
        message_event(&mut one, &c, &m);
        let one = one.take().unwrap();
        let cached = m.encoded(Wire::SseSingle, |_| unreachable!("cached by the first event"));
        assert_eq!(one.as_ptr(), cached.as_ptr(), "the shared bytes themselves");
        let mut two = Chunk::default();
        message_event(&mut two, &c, &m);
        message_event(&mut two, &c, &m);
        two.buf().put_slice(b"retry: 5\n\n");
        assert_eq!(two.take().unwrap(), [&cached[..], &cached[..], b"retry: 5\n\n"].concat());
        assert_eq!(Chunk::default().take(), None);
    }

    /// What an EventSource makes of one event's `data:` lines (HTML spec:
    /// lines end at CRLF, CR or LF; `data` values are joined with LF).
    fn client_data(event: &[u8]) -> String {
        let text = std::str::from_utf8(event).unwrap().replace("\r\n", "\n").replace('\r', "\n");
        let lines: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        lines.join("\n")
    }

    #[test]
    fn line_breaks_in_data_become_data_lines() {
        let t = Topic::new("nl").unwrap();
        let c = Cursor::single(t.clone(), MessageId::new(3, 0));
        let raw: &[u8] = b"{\"a\":\n1,\r\n\"b\":\r[2,\n\n3]}";
        let m = Message::new(t, MessageId::new(3, 0), 3, Bytes::copy_from_slice(raw));
        let mut out = Chunk::default();
        message_event(&mut out, &c, &m);
        let out = out.take().unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        // No bare line in the event: every line is a field, then one blank line ends it.
        let fields: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
        assert!(fields.iter().all(|l| l.starts_with("id: ") || l.starts_with("data: ")), "{text:?}");
        assert!(text.ends_with("\n\n") && !text.contains('\r'), "{text:?}");
        let got: serde_json::Value =
            serde_json::from_str(&client_data(&out)).expect("the client's data is JSON");
        assert_eq!(got["data"], serde_json::json!({"a": 1, "b": [2, 3]}));
        assert_eq!(got["id"], "3-0");
    }
}
