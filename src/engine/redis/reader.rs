//! The live readers: one task per key group, with its own connection, loops
//! on `XREAD BLOCK` over the group's watched topics and hands new entries to
//! the listener; after an outage it checks the watched streams for lost data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use redis::Value;
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use super::conn::RedisConn;
use super::reply::{as_str, parse_entry, parse_id};
use super::RedisEngine;
use crate::core::engine::{lost_after, Engine, EngineError};
use crate::core::message::{MessageId, Topic};

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
    /// Wakes the reader when its first topic is watched.
    pub(super) wake: Notify,
}

impl RedisEngine {
    /// One reader: `XREAD BLOCK` over the watched topics of `group`.
    pub(super) async fn read_group(self, group: usize, token: CancellationToken) {
        let mut conn: Option<RedisConn> = None;
        let mut wake_last = MessageId::ZERO;
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        let mut check_pending = false;
        let wake_key = self.wake_key(group);
        loop {
            let watched = self.watched(group);
            if watched.is_empty() {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = self.inner.groups[group].wake.notified() => continue,
                }
            }
            if check_pending {
                // Back after an outage: streams may have lost data meanwhile.
                match self.check_resets(group).await {
                    Ok(()) => check_pending = false,
                    Err(_) => {
                        if sleep_backoff(&token, &mut backoff).await {
                            return;
                        }
                    }
                }
                continue;
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match tokio::select! {
                    _ = token.cancelled() => return,
                    r = self.inner.clients.reader(&self.inner.opts) => r,
                } {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        note_failure(group, &e, "reader cannot connect; retrying", &mut failing);
                        check_pending = true;
                        if sleep_backoff(&token, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(self.inner.opts.block.as_millis() as u64)
                .arg("STREAMS");
            let keys: Vec<String> = watched.iter().map(|(t, _)| self.stream_key(t)).collect();
            for k in &keys {
                cmd.arg(k);
            }
            cmd.arg(&wake_key);
            for (_, last) in &watched {
                cmd.arg(last.to_string());
            }
            cmd.arg(wake_last.to_string());
            let reply = tokio::select! {
                _ = token.cancelled() => return,
                r = cmd.query_async::<Value>(c) => r,
            };
            match reply {
                Ok(value) => {
                    if failing {
                        tracing::info!(engine = "redis", group, "reader reading again");
                        failing = false;
                    }
                    backoff = Duration::from_millis(100);
                    let by_key: HashMap<&str, &Topic> =
                        keys.iter().map(String::as_str).zip(watched.iter().map(|(t, _)| t)).collect();
                    self.deliver(group, &value, &by_key, &wake_key, &mut wake_last);
                }
                Err(e) => {
                    note_failure(group, &e, "reader failed; reconnecting", &mut failing);
                    check_pending = true;
                    conn = None;
                    if sleep_backoff(&token, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// The watched topics of `group` whose start position is known, with the
    /// last id handed to the hub.
    fn watched(&self, group: usize) -> Vec<(Topic, MessageId)> {
        self.inner.groups[group]
            .topics
            .lock()
            .iter()
            .filter_map(|(t, w)| w.last.map(|l| (t.clone(), l)))
            .collect()
    }

    /// Hands the entries of an `XREAD` reply to the listener, in id order per
    /// topic, each once.
    fn deliver(
        &self,
        group: usize,
        reply: &Value,
        by_key: &HashMap<&str, &Topic>,
        wake_key: &str,
        wake_last: &mut MessageId,
    ) {
        let streams: Vec<(&Value, &Value)> = match reply {
            Value::Array(items) => items
                .iter()
                .filter_map(|s| match s {
                    Value::Array(kv) if kv.len() == 2 => Some((&kv[0], &kv[1])),
                    _ => None,
                })
                .collect(),
            Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
            _ => return,
        };
        for (key, entries) in streams {
            let Some(key) = as_str(key) else { continue };
            let Value::Array(entries) = entries else {
                continue;
            };
            if key == wake_key {
                if let Some(last) = entries
                    .iter()
                    .filter_map(|e| match e {
                        Value::Array(p) => p.first().and_then(parse_id),
                        _ => None,
                    })
                    .max()
                {
                    *wake_last = (*wake_last).max(last);
                }
                continue;
            }
            let Some(&topic) = by_key.get(key) else {
                continue;
            };
            for entry in entries {
                let Some(message) = parse_entry(topic, entry) else {
                    continue;
                };
                let fresh = {
                    let mut topics = self.inner.groups[group].topics.lock();
                    match topics.get_mut(topic).and_then(|w| w.last.as_mut()) {
                        Some(last) if message.id > *last => {
                            *last = message.id;
                            true
                        }
                        _ => false,
                    }
                };
                if fresh {
                    self.inner.listener.deliver(&Arc::new(message));
                }
            }
        }
    }

    /// Records where live reading of `topic` starts (the stream's current
    /// last id: nothing written after it can be missed) and wakes the reader
    /// so the topic joins its `XREAD` now rather than when the block ends.
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
        // Best effort: without it the topic joins at the end of the block.
        let _ = self.run(wake.query_async::<()>(&mut conn)).await;
        Ok(())
    }

    /// After an outage: a watched stream that no longer holds what was
    /// delivered from it (flushed, restarted without persistence, deleted)
    /// lost data; its subscribers are closed so they resume from their
    /// cursors and are told of the gap. Errors leave the check to be retried.
    async fn check_resets(&self, group: usize) -> Result<(), EngineError> {
        for (topic, seen) in self.watched(group) {
            let read = self.read(&topic, "check", seen, 0).await?;
            let (lost, now) = match &read {
                None => (lost_after(seen, false, None), MessageId::ZERO),
                Some(r) => (lost_after(seen, r.present, r.trimmed), r.last.unwrap_or_default()),
            };
            if lost {
                tracing::warn!(engine = "redis", %topic, %seen, %now, "stream lost data in redis; closing its subscribers");
                if let Some(w) = self.inner.groups[group].topics.lock().get_mut(&topic) {
                    w.last = Some(now);
                }
                self.inner.listener.reset(&topic);
            }
        }
        Ok(())
    }
}

/// A reader failure: counted always, logged once per streak of failures.
fn note_failure(group: usize, e: &redis::RedisError, what: &str, failing: &mut bool) {
    if !*failing {
        tracing::warn!(engine = "redis", group, error = %e, "{what}");
        *failing = true;
    }
    crate::metrics::engine_error();
}

/// Sleeps `backoff` with ±50 % jitter and doubles it (max 5 s); true when
/// cancelled meanwhile.
async fn sleep_backoff(token: &CancellationToken, backoff: &mut Duration) -> bool {
    let jitter = rand::rng().random_range(0.5..1.5);
    let wait = backoff.mul_f64(jitter);
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    tokio::select! {
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}
