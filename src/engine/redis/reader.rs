//! The live readers: one task per key group, with its own connection.
//!
//! # What one read costs
//!
//! Every publish also appends its stream's key to the group's notify stream
//! (`…:n`, capped at about 10,000 entries). A reader blocks in `XREAD` on
//! that stream and its process's wake-up stream only, so a wake-up costs the
//! same with ten or 100,000 watched topics; it then reads, in one script
//! call, only the watched topics that were named ("dirty"), each from the
//! last id handed to the hub. Redis work per delivery grows with the topics
//! that changed, not with the topics watched.
//!
//! # Nothing missed, nothing hidden
//!
//! - The script reads a topic's entries after its last delivered id together
//!   (atomically) with the trim marker and whether that id is still in the
//!   stream. If entries after it were trimmed before the reader saw them (a
//!   burst larger than `max_len`, age trimming) or the stream lost its data
//!   (flushed, deleted, Redis restarted empty), the hub closes the topic's
//!   subscribers ([`Feed::reset`](crate::core::engine::Feed::reset)): they
//!   resume from their cursors and get an explicit gap. Never a silent jump.
//! - A newly watched topic is read once from its start position, whatever
//!   the notify stream says, so an append between that position and the
//!   reader's next notification is not missed.
//! - After a (re)connect, or when topics are watched again after none were,
//!   every watched topic is read (a sweep): this also finds streams that lost
//!   data during an outage. So is it when a full batch of notifications came
//!   back and the reader's previous position is gone from the notify stream
//!   (it fell a whole cap behind: notifications may have been trimmed).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use redis::{Script, Value};
use thiserror::Error;
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use super::conn::RedisConn;
use super::reply::{as_int, as_str, parse_entry, parse_id};
use super::RedisEngine;
use crate::core::engine::{lost_after, Engine, EngineError};
use crate::core::message::{MessageId, Topic};

/// Notifications read per `XREAD`.
const NOTIFY_COUNT: usize = 1000;
/// Topics read per script call.
const TOPICS_PER_READ: usize = 128;
/// Entries read per script call (over all its topics).
const ENTRIES_PER_READ: usize = 1000;

/// The live read script (see `scripts/live.lua`).
static LIVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/live.lua")));

/// One watched topic: the last id handed to the hub (`None` until the start
/// position is known), and the one in-flight read of that start position
/// that concurrent first subscribers share.
pub(super) struct Watched {
    /// The last id handed to the hub.
    pub(super) last: Option<MessageId>,
    /// The shared read of the start position.
    pub(super) start: Arc<OnceCell<()>>,
}

/// Watched topics of one key group: topic → last id handed to the hub
/// (`None` while the watch is still reading its start position).
#[derive(Default)]
pub(super) struct Group {
    /// The watched topics.
    pub(super) topics: Mutex<HashMap<Topic, Watched>>,
    /// Topics whose start position was just recorded: read them at once.
    pub(super) dirty: Mutex<HashSet<Topic>>,
    /// Wakes the reader when its first topic is watched.
    pub(super) wake: Notify,
}

/// Why one step of a reader failed.
#[derive(Debug, Error)]
enum ReadError {
    /// Redis answered with an error or the connection failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// A reply of an unexpected shape.
    #[error("unexpected reply from redis: {0}")]
    Malformed(&'static str),
}

/// A reader's state between steps.
struct Reader {
    conn: Option<RedisConn>,
    /// Position in the notify stream; `None` when it must be found again
    /// (then every watched topic is read).
    notify: Option<MessageId>,
    /// Position in the wake-up stream.
    wake: MessageId,
    /// Topics to read, in order, each once.
    dirty: VecDeque<Topic>,
    queued: HashSet<Topic>,
}

impl Reader {
    fn push(&mut self, topic: Topic) {
        if self.queued.insert(topic.clone()) {
            self.dirty.push_back(topic);
        }
    }

    fn pop(&mut self) -> Option<Topic> {
        let t = self.dirty.pop_front()?;
        self.queued.remove(&t);
        Some(t)
    }
}

/// What the live script read about one topic.
struct TopicRead {
    exists: bool,
    trimmed: Option<MessageId>,
    present: bool,
    entries: Vec<Value>,
}

impl RedisEngine {
    /// One reader: waits on the group's notify stream and reads the topics
    /// it names (see the module docs).
    pub(super) async fn read_group(self, group: usize, token: CancellationToken) {
        let mut r = Reader {
            conn: None,
            notify: None,
            wake: MessageId::ZERO,
            dirty: VecDeque::new(),
            queued: HashSet::new(),
        };
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        loop {
            if self.inner.groups[group].topics.lock().is_empty() {
                // Idle: reading resumes at the notify stream's head, with a sweep.
                r.notify = None;
                r.dirty.clear();
                r.queued.clear();
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = self.inner.groups[group].wake.notified() => continue,
                }
            }
            let step = tokio::select! {
                _ = token.cancelled() => return,
                step = self.step(group, &mut r) => step,
            };
            match step {
                Ok(()) => {
                    if failing {
                        tracing::info!(engine = "redis", group, "reader reading again");
                        failing = false;
                    }
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(engine = "redis", group, error = %e, "reader failed; reconnecting");
                        failing = true;
                    }
                    self.connection_failed(&e.to_string());
                    r.conn = None;
                    r.notify = None;
                    if sleep_backoff(&token, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// One step: (re)connect, find the notify position (then sweep), read
    /// dirty topics, or else block for notifications.
    async fn step(&self, group: usize, r: &mut Reader) -> Result<(), ReadError> {
        let mut conn = match &r.conn {
            Some(c) => c.clone(),
            None => {
                let c = self.inner.clients.reader(&self.inner.opts).await?;
                r.conn = Some(c.clone());
                c
            }
        };
        let notify_key = self.notify_key(group);
        if r.notify.is_none() {
            let head: Value = redis::cmd("XREVRANGE")
                .arg(&notify_key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            r.notify = Some(first_id(&head).unwrap_or(MessageId::ZERO));
            self.read_every_watched(group, r);
        }
        for t in std::mem::take(&mut *self.inner.groups[group].dirty.lock()) {
            r.push(t);
        }
        if !r.dirty.is_empty() {
            return self.read_dirty(group, r, &mut conn).await;
        }
        let prev = r.notify.unwrap_or_default();
        let wake_key = self.wake_key(group);
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(NOTIFY_COUNT)
            .arg("BLOCK")
            .arg(self.inner.opts.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&notify_key)
            .arg(&wake_key)
            .arg(prev.to_string())
            .arg(r.wake.to_string())
            .query_async(&mut conn)
            .await?;
        let prefix = self.stream_prefix(group);
        let mut named = HashSet::new();
        let mut notified = 0;
        for (key, entries) in streams(&reply) {
            for entry in entries {
                let Value::Array(parts) = entry else { continue };
                let Some(id) = parts.first().and_then(parse_id) else { continue };
                if key == wake_key {
                    r.wake = r.wake.max(id);
                    continue;
                }
                if key != notify_key {
                    continue;
                }
                notified += 1;
                r.notify = r.notify.max(Some(id));
                if let Some(Value::Array(fields)) = parts.get(1) {
                    for pair in fields.chunks(2) {
                        if let (Some("s"), Some(v)) =
                            (pair.first().and_then(as_str), pair.get(1).and_then(as_str))
                        {
                            if let Some(name) = v.strip_prefix(prefix.as_str()) {
                                named.insert(name.to_owned());
                            }
                        }
                    }
                }
            }
        }
        if notified >= NOTIFY_COUNT && prev != MessageId::ZERO {
            // Behind by a full batch: if the previous position was trimmed
            // from the notify stream, notifications may have been lost.
            let at = prev.to_string();
            let still: Value =
                redis::cmd("XRANGE").arg(&notify_key).arg(&at).arg(&at).query_async(&mut conn).await?;
            if first_id(&still).is_none() {
                tracing::warn!(
                    engine = "redis",
                    group,
                    "reader fell behind the notify stream; reading every watched topic"
                );
                self.read_every_watched(group, r);
                return Ok(());
            }
        }
        if !named.is_empty() {
            let topics = self.inner.groups[group].topics.lock();
            for name in named {
                if let Ok(t) = Topic::new(&name) {
                    if topics.get(&t).is_some_and(|w| w.last.is_some()) {
                        r.push(t);
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues every watched topic whose start position is known.
    fn read_every_watched(&self, group: usize, r: &mut Reader) {
        let all: Vec<Topic> = self.inner.groups[group]
            .topics
            .lock()
            .iter()
            .filter(|(_, w)| w.last.is_some())
            .map(|(t, _)| t.clone())
            .collect();
        for t in all {
            r.push(t);
        }
    }

    /// Reads up to [`TOPICS_PER_READ`] dirty topics in one script call and
    /// hands their new entries to the hub; a topic that lost entries before
    /// they were read is reset. Topics not finished stay dirty.
    async fn read_dirty(&self, group: usize, r: &mut Reader, conn: &mut RedisConn) -> Result<(), ReadError> {
        let mut batch: Vec<(Topic, MessageId)> = Vec::new();
        {
            let topics = self.inner.groups[group].topics.lock();
            while batch.len() < TOPICS_PER_READ {
                let Some(t) = r.pop() else { break };
                if let Some(last) = topics.get(&t).and_then(|w| w.last) {
                    batch.push((t, last));
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut inv = LIVE.prepare_invoke();
        inv.arg(ENTRIES_PER_READ);
        for (t, after) in &batch {
            inv.key(self.stream_key(t)).key(self.marker_key(t)).arg(after.to_string());
        }
        let reply: Value = inv.invoke_async(conn).await?;
        let Value::Array(reads) = reply else {
            return Err(ReadError::Malformed("live read"));
        };
        let mut reads = reads.into_iter();
        let mut budget = ENTRIES_PER_READ;
        for (topic, after) in batch {
            let Some(read) = reads.next() else {
                // The budget ran out before this topic.
                r.push(topic);
                continue;
            };
            let read = topic_read(read).ok_or(ReadError::Malformed("live read topic"))?;
            let asked = budget;
            budget = budget.saturating_sub(read.entries.len());
            if self.apply(group, &topic, after, read, asked) {
                r.push(topic);
            }
        }
        Ok(())
    }

    /// Hands one topic's read to the hub, or resets the topic if entries
    /// after `after` were lost. True when the topic must be read again.
    fn apply(&self, group: usize, topic: &Topic, after: MessageId, read: TopicRead, asked: usize) -> bool {
        let lost = lost_after(after, read.exists && read.present, read.trimmed);
        let mut topics = self.inner.groups[group].topics.lock();
        let Some(w) = topics.get_mut(topic) else { return false };
        if w.last != Some(after) {
            // Unwatched and watched again meanwhile: read from the new position.
            return true;
        }
        if lost {
            // Entries (after, trimmed] are gone; later ones are read next.
            // (A lost stream's later entries are newer than its marker.)
            let resume = read.trimmed.unwrap_or(MessageId::ZERO);
            w.last = Some(resume);
            drop(topics);
            tracing::warn!(
                engine = "redis",
                %topic,
                seen = %after,
                trimmed = %read.trimmed.unwrap_or_default(),
                "entries lost before the live read (trimmed, or the stream lost its data); closing the topic's subscribers"
            );
            crate::metrics::engine_error();
            self.inner.listener.reset(topic);
            return true;
        }
        let mut fresh = Vec::with_capacity(read.entries.len());
        for entry in &read.entries {
            let id = match entry {
                Value::Array(p) => p.first().and_then(parse_id),
                _ => None,
            };
            let Some(id) = id.filter(|&id| Some(id) > w.last) else { continue };
            w.last = Some(id);
            if let Some(m) = parse_entry(topic, entry) {
                fresh.push(Arc::new(m));
            }
        }
        drop(topics);
        for m in &fresh {
            self.inner.listener.deliver(m);
        }
        asked > 0 && read.entries.len() >= asked
    }

    /// Records where live reading of `topic` starts (the stream's current
    /// last id: nothing written after it can be missed), queues the topic to
    /// be read from there, and wakes the reader so that happens now rather
    /// than when its block ends.
    pub(super) async fn start_watch(&self, group: usize, topic: &Topic) -> Result<(), EngineError> {
        let start = self.last_id(topic).await?.unwrap_or(MessageId::ZERO);
        {
            let mut topics = self.inner.groups[group].topics.lock();
            if let Some(w) = topics.get_mut(topic) {
                if w.last.is_none() {
                    w.last = Some(start);
                }
            }
        }
        self.inner.groups[group].dirty.lock().insert(topic.clone());
        self.inner.groups[group].wake.notify_one();
        let mut conn = self.conn().await?;
        let mut wake = redis::pipe();
        wake.cmd("XADD")
            .arg(self.wake_key(group))
            .arg("MAXLEN")
            .arg("~")
            .arg(16)
            .arg("*")
            .arg("w")
            .arg(1)
            .ignore();
        wake.cmd("PEXPIRE").arg(self.wake_key(group)).arg(3_600_000).ignore();
        // Best effort: without it the topic is read at the end of the block.
        let _ = self.run(wake.query_async::<()>(&mut conn)).await;
        Ok(())
    }
}

/// The `(key, entries)` pairs of an `XREAD` reply (RESP2 or RESP3).
fn streams(reply: &Value) -> Vec<(&str, &[Value])> {
    let pairs: Vec<(&Value, &Value)> = match reply {
        Value::Array(items) => items
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => Some((&kv[0], &kv[1])),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| match (as_str(k), v) {
            (Some(k), Value::Array(entries)) => Some((k, entries.as_slice())),
            _ => None,
        })
        .collect()
}

/// The id of the first entry of an `XRANGE`/`XREVRANGE` reply.
fn first_id(reply: &Value) -> Option<MessageId> {
    match reply {
        Value::Array(entries) => match entries.first() {
            Some(Value::Array(p)) => p.first().and_then(parse_id),
            _ => None,
        },
        _ => None,
    }
}

/// One `{exists, trimmed, present, entries}` of the live script.
fn topic_read(v: Value) -> Option<TopicRead> {
    let Value::Array(mut p) = v else { return None };
    if p.len() != 4 {
        return None;
    }
    let Value::Array(entries) = p.pop()? else { return None };
    Some(TopicRead {
        exists: as_int(&p[0])? == 1,
        trimmed: parse_id(&p[1]),
        present: as_int(&p[2])? == 1,
        entries,
    })
}

/// Sleeps `backoff` with ±50 % jitter and doubles it (max 5 s); true when
/// cancelled meanwhile.
pub(super) async fn sleep_backoff(token: &CancellationToken, backoff: &mut Duration) -> bool {
    let jitter = rand::rng().random_range(0.5..1.5);
    let wait = backoff.mul_f64(jitter);
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    tokio::select! {
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str) -> Value {
        Value::Array(vec![bulk(id), Value::Array(vec![bulk("s"), bulk("k")])])
    }

    #[test]
    fn xread_replies_in_both_protocols() {
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("n"), Value::Array(vec![entry("1-0")])])]);
        let resp3 = Value::Map(vec![(bulk("n"), Value::Array(vec![entry("1-0"), entry("2-0")]))]);
        assert_eq!(streams(&resp2).iter().map(|(k, e)| (*k, e.len())).collect::<Vec<_>>(), [("n", 1)]);
        assert_eq!(streams(&resp3).iter().map(|(k, e)| (*k, e.len())).collect::<Vec<_>>(), [("n", 2)]);
        assert!(streams(&Value::Nil).is_empty(), "a block that timed out");
        assert_eq!(first_id(&Value::Array(vec![entry("7-1")])), Some(MessageId::new(7, 1)));
        assert_eq!(first_id(&Value::Array(vec![])), None);
    }

    #[test]
    fn live_script_topic_reads() {
        let r = topic_read(Value::Array(vec![
            Value::Int(1),
            bulk("5-0"),
            Value::Int(0),
            Value::Array(vec![entry("6-0")]),
        ]))
        .unwrap();
        assert!(r.exists && !r.present);
        assert_eq!((r.trimmed, r.entries.len()), (Some(MessageId::new(5, 0)), 1));
        let none =
            topic_read(Value::Array(vec![Value::Int(0), bulk(""), Value::Int(0), Value::Array(vec![])]))
                .unwrap();
        assert!(!none.exists && none.trimmed.is_none());
        assert!(topic_read(Value::Array(vec![Value::Int(1)])).is_none(), "malformed");
    }
}
