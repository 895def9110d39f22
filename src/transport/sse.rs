//! Server-Sent Events (contract §5): `GET /v1/sse?topic=A&topic=B`.
//!
//! One event per message: `id:` is the cursor after it (naming every topic
//! of the stream), `data:` the message JSON of §1, no `event:` field (so
//! `EventSource.onmessage` fires). A trimmed history sends `event: gap`
//! first. `Last-Event-ID` (header, as browsers send on reconnect) or
//! `lastEventId` (query) resumes every topic with no gap and no duplicate.
//!
//! Topics without a resume position are joined before the response headers
//! are sent, so anything published after the client sees `200` reaches it.
//! The body is a stream polled by the connection's task: no extra task per
//! client. A client that stops reading stops being polled, so its session's
//! kill switch aborts the connection when its outbox overflows; it comes
//! back with `Last-Event-ID` and loses nothing. On shutdown the stream ends
//! cleanly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::{Instant, MissedTickBehavior};

use crate::core::message::Wire;
use crate::core::replay::{Gap, Resume, Step};
use crate::core::{Close, Cursor, Message, Subscriber};
use crate::error::ApiError;
use crate::metrics::{self, Transport};
use crate::server::{AppState, Peer};

/// Outbox messages gathered into one body chunk.
const CHUNK_MESSAGES: usize = 64;

/// The parsed request: topics and where each resumes.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// Topics in request order.
    pub(crate) topics: Vec<crate::core::Topic>,
    /// The resume cursor (`Last-Event-ID` / `lastEventId` / `cursor`).
    pub(crate) cursor: Option<Cursor>,
}

/// Parses `topic` (repeatable) and a resume cursor from the query, with the
/// cursor header taking precedence when given.
pub(crate) fn parse_subscription(
    query: Option<&str>,
    header_cursor: Option<&str>,
    cursor_params: &[&str],
    max_topics: usize,
) -> Result<Subscription, ApiError> {
    let mut topics = Vec::new();
    let mut cursor = header_cursor.map(str::to_owned);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "topic" {
            super::push_topic(&mut topics, &v)?;
        } else if cursor_params.contains(&&*k) && cursor.is_none() && !v.is_empty() {
            cursor = Some(v.into_owned());
        }
    }
    super::check_topic_count(topics.len(), max_topics)?;
    let cursor = match cursor {
        Some(c) => Some(super::cursor(&c)?),
        None => None,
    };
    Ok(Subscription { topics, cursor })
}

/// `GET /v1/sse`.
pub(crate) async fn stream(
    State(state): State<AppState>,
    ConnectInfo(Peer(peer, control)): ConnectInfo<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.check_open()?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    let request = parse_subscription(
        query.as_deref(),
        last_event_id,
        &["lastEventId"],
        state.config.limits.max_topics_per_connection,
    )?;
    let mut sub = state.bus.subscriber();
    control.arm();
    sub.session().set_kill(control);
    let (cursor, resumes) =
        super::start_subscription(&mut sub, request.topics, request.cursor.as_ref(), state.bus.replay_page)
            .await?;
    let body = Body::from_stream(events(state, peer, sub, cursor, resumes));
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
    mut sub: Subscriber,
    mut cursor: Cursor,
    resumes: Vec<Resume>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    async_stream::stream! {
        let _registered = state.shutdown.sessions().register(sub.session());
        let session = Arc::clone(sub.session());
        // Records the close when the stream ends *or is dropped* (hyper drops
        // the body when the client goes away or the connection is killed).
        let mut record = super::StreamRecord::open(Transport::Sse, None, Some(peer), Arc::clone(&session));
        let retry = state.config.sse.retry.as_millis();
        yield Ok(Bytes::from(format!("retry: {retry}\n\n")));
        let mut reason = Close::Client;
        'replay: for mut resume in resumes {
            loop {
                match super::replay_step(&session, &mut resume, &mut sub).await {
                    Err(r) => {
                        reason = r;
                        break 'replay;
                    }
                    Ok(None) => break,
                    Ok(Some(Step::Gap(gap))) => {
                        yield Ok(gap_event(&mut cursor, &gap));
                    }
                    Ok(Some(Step::Messages(ms))) => {
                        let mut out = BytesMut::new();
                        let mut written = 0;
                        for m in &ms {
                            if write_event(&mut out, &mut cursor, m) {
                                written += 1;
                            }
                        }
                        record.sent += written;
                        metrics::delivered(Transport::Sse, written);
                        yield Ok(out.freeze());
                    }
                }
            }
        }
        if reason == Close::Client {
            let interval = state.config.heartbeat.interval;
            let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let stop = session.wait_closed();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    biased;
                    r = &mut stop => { reason = r; break; }
                    first = sub.outbox.recv() => {
                        let Some(first) = first else { break };
                        let mut out = BytesMut::new();
                        let mut next = Some(first);
                        let mut n = 0;
                        let mut written = 0;
                        let mut seen: smallvec::SmallVec<[Instant; 8]> = smallvec::SmallVec::new();
                        while let Some(m) = next.take() {
                            if write_event(&mut out, &mut cursor, &m) {
                                written += 1;
                                seen.push(m.seen);
                            }
                            n += 1;
                            if n < CHUNK_MESSAGES {
                                next = sub.outbox.try_recv().ok();
                            }
                        }
                        if written > 0 {
                            record.sent += written;
                            metrics::delivered(Transport::Sse, written);
                            let now = Instant::now();
                            for at in seen {
                                metrics::delivery_latency(Transport::Sse, now.saturating_duration_since(at));
                            }
                            yield Ok(out.freeze());
                        }
                    }
                    _ = tick.tick() => {
                        yield Ok(Bytes::from_static(b": ping\n\n"));
                    }
                }
            }
        }
        record.reason = reason;
    }
}

/// Appends the event for `m` (advancing the cursor); false when `m` is not
/// subscribed or already delivered.
fn write_event(out: &mut BytesMut, cursor: &mut Cursor, m: &Message) -> bool {
    let Some(pos) = cursor.get(&m.topic) else {
        return false;
    };
    if m.id <= pos {
        return false;
    }
    cursor.set(&m.topic, m.id);
    if cursor.len() == 1 {
        out.put(m.encoded(Wire::SseSingle, |m| {
            let mut b = BytesMut::new();
            event(&mut b, &Cursor::single(m.topic.clone(), m.id).encode(), &m.json());
            b.freeze()
        }));
    } else {
        event(out, &cursor.encode(), &m.json());
    }
    true
}

fn event(out: &mut BytesMut, id: &str, data: &[u8]) {
    out.reserve(id.len() + data.len() + 16);
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
}

/// `event: gap` with the cursor moved past the gap, so a reconnect does not
/// report it again.
fn gap_event(cursor: &mut Cursor, gap: &Gap) -> Bytes {
    if let Some(pos) = cursor.get(&gap.topic) {
        cursor.set(&gap.topic, pos.max(gap.resume_from));
    }
    let data =
        format!("{{\"topic\":\"{}\",\"after\":\"{}\",\"oldest\":\"{}\"}}", gap.topic, gap.after, gap.oldest);
    Bytes::from(format!("event: gap\nid: {}\ndata: {data}\n\n", cursor.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{MessageId, Topic};
    use crate::error::Code;

    #[test]
    fn events_carry_cursor_and_json() {
        let t = Topic::new("a").unwrap();
        let mut c = Cursor::single(t.clone(), MessageId::new(1, 0));
        let m = Message::new(t.clone(), MessageId::new(2, 0), 2, Bytes::from_static(b"{\"x\":1}"));
        let mut out = BytesMut::new();
        assert!(write_event(&mut out, &mut c, &m));
        assert!(!write_event(&mut out, &mut c, &m), "duplicate is dropped");
        let text = String::from_utf8(out.to_vec()).unwrap();
        let id = Cursor::single(t, MessageId::new(2, 0)).encode();
        assert_eq!(
            text,
            format!("id: {id}\ndata: {{\"topic\":\"a\",\"id\":\"2-0\",\"ts\":2,\"data\":{{\"x\":1}}}}\n\n")
        );
    }

    #[test]
    fn subscription_parsing() {
        let s = parse_subscription(Some("topic=a&topic=b&topic=a"), None, &["lastEventId"], 10).unwrap();
        assert_eq!(s.topics.len(), 2);
        assert!(s.cursor.is_none());
        assert_eq!(parse_subscription(Some(""), None, &[], 10).unwrap_err().code, Code::BadRequest);
        assert_eq!(parse_subscription(Some("topic=a%20b"), None, &[], 10).unwrap_err().code, Code::BadTopic);
        assert_eq!(
            parse_subscription(Some("topic=a&lastEventId=!!"), None, &["lastEventId"], 10).unwrap_err().code,
            Code::BadRequest
        );
        let c = Cursor::single(Topic::new("a").unwrap(), MessageId::new(3, 1)).encode();
        // The header wins over the query.
        let s = parse_subscription(Some("topic=a&lastEventId=!!"), Some(&c), &["lastEventId"], 10).unwrap();
        assert_eq!(s.cursor.unwrap().get(&Topic::new("a").unwrap()), Some(MessageId::new(3, 1)));
    }
}
