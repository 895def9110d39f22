//! HTTP long polling (contract §6): `GET /v1/poll?topic=A&topic=B&cursor=C&timeout=S&limit=N`.
//!
//! A poll is a replay with a deadline: join the topics live, then read
//! history after the cursor's positions (up to `limit`); if there is
//! something, answer at once; otherwise wait for the first outbox message
//! (joined before the read, so nothing published in between is missed),
//! the timeout or shutdown. A topic whose position is the hub's tip is not
//! read at all (see [`collect`]'s `# At the tip`). A poll with `timeout=0` only reads. The answer's cursor names every topic, so a
//! client that always passes the last cursor back receives every message
//! exactly once. A held poll is just this handler's future waiting on its
//! outbox: no task, timer wheel entry aside, and no Redis connection of its
//! own (the process's shared readers feed the hub).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::Instant;

use super::access;
use super::request::{self, Topics};
use crate::core::policy::Delivery;
use crate::core::replay::Gap;
use crate::core::session::ConnInfo;
use crate::core::{Cursor, MessageId, Topic};
use crate::error::{ApiError, Code};
use crate::metrics::{self, Transport};
use crate::state::{AppState, ClientIp};

/// Messages per answer when the client gives no `limit` (contract §6).
const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` honoured.
const MAX_LIMIT: usize = 1000;

/// `GET /v1/poll`. The request is taken as it is (its headers are read
/// in place, not copied: a poll is a request per answer, and every
/// allocation counts), and its query is parsed once.
pub(crate) async fn poll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let query = parts.uri.query();
    let max = state.config.limits.max_topics_per_connection;
    let mut params = Params::new(&state);
    let request = Topics::from_query_with(query, None, &["cursor"], 1, max, |k, v| {
        params.take(k, v, &state);
        Ok(())
    })?;
    // Checked on every poll (each presents its credential); the poll counts
    // as an open stream while it is held.
    let mut access = access::http_with_token(&state, ip, &parts.headers, params.token.as_deref(), true)?;
    drop(parts);
    for topic in &request.topics {
        access.may_subscribe(topic)?;
    }
    access.open_stream(&state)?;
    // A bad `timeout` or `limit` is reported after topics and access.
    if let Some(e) = params.error {
        return Err(e);
    }
    let (timeout, limit) = (params.timeout, params.limit);
    let deadline = Instant::now() + timeout;
    let engine = &state.bus.engine;

    // Positions: from the cursor, or "now" for topics it does not name.
    let mut cursor = Cursor::new();
    for topic in &request.topics {
        let pos = match request.cursor.as_ref().and_then(|c| c.get(topic)) {
            Some(pos) => pos,
            None => engine.last_id(topic).await?.unwrap_or(MessageId::ZERO),
        };
        cursor.set(topic, pos);
    }
    if !cursor.fits() {
        return Err(ApiError::new(Code::BadRequest, "too many topics for one cursor"));
    }

    // A poll that may wait joins its topics live *before* it reads history:
    // whatever is published after the read reaches the outbox, and the one
    // read covers everything before (one history read per held poll, not
    // one before joining and one after: with Redis, each is a round trip).
    // A poll with no time to wait only reads.
    let join = |state: &AppState| {
        let (state, topics, user) = (state.clone(), &request.topics, access.grants.user.clone());
        async move {
            let mut s = state.bus.subscriber();
            for topic in topics {
                s.join(topic).await?;
            }
            // Listed by the admin API while held (no port: the address is
            // the client's, maybe forwarded).
            let peer = Some(std::net::SocketAddr::new(ip, 0));
            let info = ConnInfo::new(Transport::Poll.label(), None, peer, user);
            info.set_topics(topics.iter().cloned());
            s.session().set_info(std::sync::Arc::new(info));
            let registered = state.shutdown.sessions().register(s.session());
            Ok::<_, ApiError>((s, registered))
        }
    };
    let mut sub = None;
    if timeout > Duration::ZERO && !state.shutdown.is_shutting_down() {
        sub = Some(join(&state).await?);
    }
    loop {
        let batch = collect(&state, &request.topics, &mut cursor, limit, sub.is_some()).await?;
        if !batch.is_empty() || Instant::now() >= deadline || state.shutdown.is_shutting_down() {
            return Ok(answer(batch, &cursor));
        }
        let sub = match sub.as_mut() {
            Some(sub) => sub,
            None => {
                // Not joined (the poll began with no time to wait, or
                // during shutdown): join, then read again before waiting.
                sub = Some(join(&state).await?);
                continue;
            }
        };
        let session = std::sync::Arc::clone(sub.0.session());
        let _held = HeldPoll::start();
        tokio::select! {
            biased;
            _ = session.wait_closed() => return Ok(answer(Batch::default(), &cursor)),
            _ = tokio::time::sleep_until(deadline) => return Ok(answer(Batch::default(), &cursor)),
            first = sub.0.outbox.recv() => {
                let mut queued = vec![first];
                while let Some(entry) = sub.0.outbox.try_recv() {
                    queued.push(entry);
                }
                // A session closed meanwhile (an engine that lost live
                // continuity resets its subscribers before it delivers past
                // the break, and draining takes the lock that delivery took)
                // answers from history only.
                let batch = match session.closed() {
                    None => from_live(queued, &mut cursor, limit),
                    Some(_) => Batch::default(),
                };
                if !batch.is_empty() {
                    metrics::delivered(Transport::Poll, batch.messages.len() as u64);
                    return Ok(answer(batch, &cursor));
                }
                // Nothing usable live (only ephemeral messages or presence,
                // or entries that history answers better): read there.
            }
        }
    }
}

/// The answer from what the outbox delivered, when it can be given from
/// there: the topics were joined before history was read at the cursor's
/// positions, so every stored message after a position reaches the outbox
/// in id order, and those at or before it (published between the join and
/// the read) are skipped by id. This saves a history read per answer.
///
/// Only plain stored messages qualify: a `latest` entry (coalescing and its
/// `skipped` count are computed from history) or a `drop` range (its gap is
/// read there) makes the whole answer come from history instead, with the
/// cursor untouched. A lossless outbox that overflowed closed the session,
/// so a message can never be missing between two queued ones. Ephemeral
/// messages and presence notices are not carried by long polling. Past
/// `limit` messages, the rest are left to the next poll's history read (the
/// cursor stops at the last one taken of each topic).
fn from_live(queued: Vec<crate::core::mailbox::Entry>, cursor: &mut Cursor, limit: usize) -> Batch {
    use crate::core::mailbox::Entry;
    let mut batch = Batch::default();
    if queued.iter().any(|e| matches!(e, Entry::Latest { .. } | Entry::Dropped(_))) {
        return batch;
    }
    for entry in queued {
        let Entry::Message(m) = entry else { continue };
        if m.is_ephemeral() || batch.messages.len() >= limit {
            continue;
        }
        match cursor.get(&m.topic) {
            Some(pos) if m.id > pos => {
                batch.messages.push(m.json());
                cursor.set(&m.topic, m.id);
            }
            _ => {}
        }
    }
    batch
}

/// Counts a poll in `rtgate_held_polls` while it waits.
struct HeldPoll;

impl HeldPoll {
    fn start() -> Self {
        metrics::held_poll(true);
        HeldPoll
    }
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        metrics::held_poll(false);
    }
}

/// A poll's own query parameters (besides topics and cursor).
struct Params {
    timeout: Duration,
    limit: usize,
    /// `access_token`, used without an `Authorization` header.
    token: Option<String>,
    /// The first bad value.
    error: Option<ApiError>,
}

impl Params {
    fn new(state: &AppState) -> Self {
        Params { timeout: state.config.poll.default_timeout, limit: DEFAULT_LIMIT, token: None, error: None }
    }

    /// Takes `timeout`, `limit` and `access_token`; ignores the rest. A bad
    /// value is kept in `error` (the first one).
    fn take(&mut self, k: &str, v: &str, state: &AppState) {
        let taken = match k {
            "timeout" => v
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .map(|secs| {
                    self.timeout =
                        Duration::from_secs_f64(secs.min(state.config.poll.max_timeout.as_secs_f64()));
                })
                .ok_or_else(|| ApiError::new(Code::BadRequest, "timeout must be a number of seconds")),
            "limit" => request::parse_limit(v, MAX_LIMIT).map(|limit| self.limit = limit),
            "access_token" => {
                if self.token.is_none() {
                    self.token = Some(v.to_owned());
                }
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = taken {
            self.error.get_or_insert(e);
        }
    }
}

/// What one answer carries.
#[derive(Default)]
struct Batch {
    messages: Vec<Bytes>,
    gaps: Vec<String>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.gaps.is_empty()
    }
}

/// Reads up to `limit` messages after the cursor's positions, advancing
/// the cursor over what it takes and past reported gaps.
///
/// # Fairness
///
/// `limit` is shared among the topics in rounds: each round gives every
/// topic still able to fill its share an equal part of the room left (at
/// least one message), so a busy topic never starves a quiet one; what a
/// topic leaves unused goes to the others in the next round. When there are
/// more topics than room, those whose position is oldest (served longest
/// ago) go first, ties in request order.
///
/// # At the tip
///
/// With `joined` (the topics were joined live, and each join's engine
/// watch was ready, before this call), a topic whose position is the hub's
/// tip for it (the newest stored message fanned out here, see
/// [`crate::core::Hub::tip`]) is not read: nothing newer exists that will
/// not reach the outbox, so the read could only come back empty. A client
/// polling in step with the topic (each answer's cursor is the tip until
/// the next publish) costs no history read, on Redis no round trip.
async fn collect(
    state: &AppState,
    topics: &[Topic],
    cursor: &mut Cursor,
    limit: usize,
    joined: bool,
) -> Result<Batch, ApiError> {
    let mut batch = Batch::default();
    let hub = &state.bus.hub;
    let mut active: Vec<(&Topic, MessageId)> = topics
        .iter()
        .filter_map(|t| cursor.get(t).map(|pos| (t, pos)))
        .filter(|&(t, pos)| !(joined && hub.tip(t) == Some(pos)))
        .collect();
    // Stable: request order among equal positions.
    active.sort_by_key(|&(_, pos)| pos);
    while !active.is_empty() && batch.messages.len() < limit {
        let share = ((limit - batch.messages.len()) / active.len()).max(1);
        let mut more = Vec::with_capacity(active.len());
        for (topic, pos) in active {
            let room = limit - batch.messages.len();
            if room == 0 {
                break;
            }
            let want = share.min(room);
            let (pos, full) = read_topic(state, topic, pos, want, &mut batch).await?;
            cursor.set(topic, pos);
            if full {
                more.push((topic, pos));
            }
        }
        active = more;
    }
    metrics::delivered(Transport::Poll, batch.messages.len() as u64);
    Ok(batch)
}

/// Reads up to `want` messages of `topic` after `pos` into `batch` (and
/// its gap, if any). Returns the new position and whether the read came
/// back full (the topic may have more).
async fn read_topic(
    state: &AppState,
    topic: &Topic,
    after: MessageId,
    want: usize,
    batch: &mut Batch,
) -> Result<(MessageId, bool), ApiError> {
    let engine = &state.bus.engine;
    if state.bus.hub.policies().get(topic.as_str()).delivery == Delivery::Latest {
        return read_latest(state, topic, after, want, batch).await;
    }
    let history = engine.history(topic, Some(after), want).await?;
    let mut pos = after;
    let gap = Gap::in_history(topic, after, &history);
    if let Some(gap) = &gap {
        batch.gaps.push(gap.json());
        pos = gap.resume_from;
    }
    for m in &history.messages {
        if m.id > pos {
            batch.messages.push(m.json());
            pos = m.id;
        }
    }
    if gap.is_some() && pos == after {
        // Lost history (a restarted embedded engine, a flushed stream): the
        // position is neither retained nor trimmed, so reading after it
        // would report this same gap again at once, forever. Continue from
        // the start of what the topic has now (after its newest trimmed id,
        // or from the beginning): everything retained there is new to this
        // client, and reading after it reports no gap.
        return Ok((history.trimmed.unwrap_or(MessageId::ZERO), false));
    }
    Ok((pos, history.messages.len() >= want))
}

/// Messages of a `delivery = "latest"` topic read for one poll at most: a
/// backlog longer than this is coalesced in parts.
const LATEST_READ_MAX: usize = 10_000;

/// [`read_topic`] for a `delivery = "latest"` topic: the backlog after
/// `after` (up to [`LATEST_READ_MAX`]) coalesced to the newest message per
/// key, each with `"skipped":N`, up to `want` of them in id order.
async fn read_latest(
    state: &AppState,
    topic: &Topic,
    after: MessageId,
    want: usize,
    batch: &mut Batch,
) -> Result<(MessageId, bool), ApiError> {
    let engine = &state.bus.engine;
    let page = state.bus.replay_page.max(want);
    let mut read = Vec::new();
    let mut pos = after;
    let mut more = true;
    while more && read.len() < LATEST_READ_MAX {
        let history = engine.history(topic, Some(pos), page).await?;
        if let Some(gap) = Gap::in_history(topic, pos, &history) {
            batch.gaps.push(gap.json());
            // Lost history (see read_topic): go on from what the topic has now.
            let lost = gap.resume_from == pos;
            pos = if lost { history.trimmed.unwrap_or(MessageId::ZERO) } else { gap.resume_from };
        }
        more = history.messages.len() >= page || history.cut;
        let before = read.len();
        read.extend(history.messages.into_iter().filter(|m| m.id > pos));
        match read.last() {
            Some(m) if read.len() > before => pos = m.id,
            _ => break,
        }
    }
    let kept = crate::transport::subscription::coalesce(read);
    let full = more || kept.len() > want;
    let mut last = None;
    for (m, skipped) in kept.into_iter().take(want) {
        let mut json = Vec::with_capacity(m.data.len() + 96);
        m.write_json_skipped(&mut json, skipped);
        if skipped > 0 {
            metrics::skipped(Transport::Poll, skipped);
        }
        batch.messages.push(Bytes::from(json));
        last = Some(m.id);
    }
    // All kept: everything read is delivered or superseded.
    Ok((if full { last.unwrap_or(pos) } else { pos }, full))
}

fn answer(batch: Batch, cursor: &Cursor) -> Response {
    let size = batch.messages.iter().map(Bytes::len).sum::<usize>() + 64;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"{\"messages\":[");
    for (i, m) in batch.messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.extend_from_slice(b"],\"cursor\":\"");
    out.extend_from_slice(cursor.encode().as_bytes());
    out.push(b'"');
    if !batch.gaps.is_empty() {
        out.extend_from_slice(b",\"gaps\":[");
        out.extend_from_slice(batch.gaps.join(",").as_bytes());
        out.push(b']');
    }
    out.push(b'}');
    let mut res = Bytes::from(out).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::config::Config;
    use crate::testing;

    async fn json(res: Response) -> Value {
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("body");
        serde_json::from_slice(&body).expect("JSON answer")
    }

    async fn get(state: &AppState, query: &str) -> Value {
        let request = axum::http::Request::get(format!("/v1/poll?{query}"))
            .body(axum::body::Body::empty())
            .expect("a request");
        let res = poll(State(state.clone()), ClientIp(std::net::IpAddr::from([127, 0, 0, 1])), request)
            .await
            .expect("an answer");
        json(res).await
    }

    fn stored(topic: &str, ms: u64) -> crate::core::mailbox::Entry {
        let m = crate::core::Message::new(testing::topic(topic), MessageId::new(ms, 0), ms, Bytes::from("1"));
        crate::core::mailbox::Entry::Message(std::sync::Arc::new(m))
    }

    #[test]
    fn a_live_answer_takes_stored_messages_after_the_cursor_up_to_the_limit() {
        use crate::core::mailbox::{Dropped, Entry};
        use crate::core::message::Ephemeral;
        let (a, b) = (testing::topic("a"), testing::topic("b"));
        let start = || {
            let mut c = Cursor::new();
            c.set(&a, MessageId::new(10, 0));
            c.set(&b, MessageId::new(5, 0));
            c
        };
        let ephemeral = Entry::Message(std::sync::Arc::new(crate::core::Message::ephemeral(
            a.clone(),
            Bytes::from("2"),
            Ephemeral { origin: 1, user: None },
        )));
        // At or before the cursor (published between the join and the
        // read): skipped; ephemeral: skipped; a topic not polled: skipped.
        let mut c = start();
        let queued = vec![
            stored("a", 9),
            stored("a", 10),
            ephemeral,
            stored("b", 6),
            stored("a", 11),
            stored("z", 99),
        ];
        let batch = from_live(queued, &mut c, 100);
        assert_eq!(batch.messages.len(), 2);
        assert_eq!((c.get(&a), c.get(&b)), (Some(MessageId::new(11, 0)), Some(MessageId::new(6, 0))));
        // The limit: the rest stays for history (the cursor stops at what was taken).
        let mut c = start();
        let batch = from_live(vec![stored("a", 11), stored("b", 6), stored("a", 12)], &mut c, 2);
        assert_eq!(batch.messages.len(), 2);
        assert_eq!((c.get(&a), c.get(&b)), (Some(MessageId::new(11, 0)), Some(MessageId::new(6, 0))));
        // A dropped range or a coalesced entry: history answers, the cursor is untouched.
        let dropped =
            Entry::Dropped(Box::new(Dropped { topic: a.clone(), last: MessageId::new(12, 0), count: 1 }));
        let latest = |e: Entry| match e {
            Entry::Message(message) => Entry::Latest { message, skipped: 1 },
            other => other,
        };
        for odd in [dropped, latest(stored("a", 12))] {
            let mut c = start();
            let batch = from_live(vec![stored("a", 11), odd], &mut c, 100);
            assert!(batch.is_empty());
            assert_eq!(c.get(&a), Some(MessageId::new(10, 0)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_poll_answers_at_its_timeout_with_a_cursor() {
        let state = testing::state(Config::default());
        let start = Instant::now();
        let answer = get(&state, "topic=p&timeout=5").await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(6), "{waited:?}");
        assert_eq!(answer["messages"], serde_json::json!([]));
        let cursor = request::cursor(answer["cursor"].as_str().expect("cursor")).expect("valid");
        assert_eq!(cursor.get(&testing::topic("p")), Some(MessageId::ZERO));
        // The timeout is capped by poll.max_timeout.
        let start = Instant::now();
        get(&state, "topic=p&timeout=100000").await;
        assert!(start.elapsed() <= state.config.poll.max_timeout + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_poll_answers_at_the_first_publish() {
        let state = testing::state(Config::default());
        let first = get(&state, "topic=q&timeout=0").await;
        let cursor = first["cursor"].as_str().expect("cursor").to_owned();
        let held = tokio::spawn({
            let state = state.clone();
            async move { get(&state, &format!("topic=q&timeout=30&cursor={cursor}")).await }
        });
        // Let the poll find nothing and wait on its outbox.
        while state.bus.hub.subscriber_count(&testing::topic("q")) == 0 {
            tokio::task::yield_now().await;
        }
        let start = Instant::now();
        let id = testing::publish(&state, "q", "{\"n\":1}").await;
        let answer = held.await.expect("poll task");
        assert!(start.elapsed() < Duration::from_secs(1), "answered at the publish, not the timeout");
        assert_eq!(answer["messages"][0]["id"].as_str(), Some(&*id.to_string()));
        assert_eq!(answer["messages"].as_array().map(Vec::len), Some(1));
    }
}
