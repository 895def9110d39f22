//! The Redis presence store: every process's entries in the Redis the
//! engine uses, under the engine's key prefix and key groups (one topic's
//! keys share its group's hash tag):
//!
//! ```text
//! {prefix}{s<N>}:p:<topic>   entries: client → entry JSON (hash)
//! {prefix}{s<N>}:px:<topic>  lease ends: client → ms (zset)
//! {prefix}{s<N>}:pu:<topic>  users: user → connections present (hash)
//! {prefix}{s<N>}:pi          the group's index: topic → earliest lease end (zset)
//! {prefix}{s<N>}:pc          the group's change channel (pub/sub)
//! {prefix}{presence}:users   user → presence topics present in (hash)
//! ```
//!
//! Each script runs as one `EVALSHA` and reads the time from Redis, so
//! leases do not depend on the processes' clocks. `apply.lua` adds,
//! refreshes and closes entries and publishes the joins; `sweep.lua` removes
//! expired entries and publishes the leaves (whoever removes an entry
//! announces it: each leave once); `list.lua` answers who is present;
//! `users.lua` counts users across topics (`user.online`/`offline`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::entry::{Change, Entry, Listing, Transitions};
use super::{PresenceError, StoreOp};
use crate::core::Topic;

const APPLY: &str = include_str!("scripts/apply.lua");
const SWEEP: &str = include_str!("scripts/sweep.lua");
const LIST: &str = include_str!("scripts/list.lua");
const USERS: &str = include_str!("scripts/users.lua");

/// Most topics one sweep call handles per key group.
const SWEEP_TOPICS: usize = 200;
/// Most ops per apply call (a storm is cut into calls of this size).
const APPLY_OPS: usize = 500;

/// FNV-1a, the key-group hash of the Redis engine (`engine::redis::keys`):
/// a topic's presence keys live in its stream's group.
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Presence entries in Redis.
pub(crate) struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    shards: usize,
    ttl_ms: u64,
    grace_ms: u64,
    apply: Script,
    sweep: Script,
    list: Script,
    users: Script,
    /// True once the change channels are subscribed (the worker waits for
    /// it, bounded, so this process sees its first changes too).
    subscribed: tokio::sync::watch::Sender<bool>,
}

impl RedisStore {
    /// A store on `url` (connects lazily).
    pub(crate) fn new(
        url: &str,
        prefix: &str,
        shards: usize,
        op_timeout: Duration,
        ttl: Duration,
        grace: Duration,
    ) -> Result<RedisStore, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(RedisStore {
            client,
            conn,
            prefix: prefix.to_owned(),
            shards: shards.max(1),
            ttl_ms: ttl.as_millis() as u64,
            grace_ms: grace.as_millis() as u64,
            apply: Script::new(APPLY),
            sweep: Script::new(SWEEP),
            list: Script::new(LIST),
            users: Script::new(USERS),
            subscribed: tokio::sync::watch::Sender::new(false),
        })
    }

    fn tag(&self, group: usize) -> String {
        format!("{}{{s{}}}", self.prefix, group)
    }

    fn group_of(&self, topic: &Topic) -> usize {
        fnv1a(topic.as_str()) as usize % self.shards
    }

    fn channel(&self, group: usize) -> String {
        format!("{}:pc", self.tag(group))
    }

    fn topic_keys(&self, topic: &Topic) -> [String; 3] {
        let tag = self.tag(self.group_of(topic));
        [format!("{tag}:p:{topic}"), format!("{tag}:px:{topic}"), format!("{tag}:pu:{topic}")]
    }

    /// Resolves once the change channels are subscribed, or after `within`.
    pub(crate) async fn ready(&self, within: Duration) {
        let mut rx = self.subscribed.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|s| *s)).await;
    }

    /// Applies `ops` to `topic` (joins are published by the script).
    pub(crate) async fn apply(
        &self,
        topic: &Topic,
        count: bool,
        ops: &[StoreOp],
    ) -> Result<Transitions, PresenceError> {
        let group = self.group_of(topic);
        let keys = self.topic_keys(topic);
        let mut t = Transitions::default();
        for chunk in ops.chunks(APPLY_OPS) {
            let mut inv = self.apply.key(&keys[0]);
            inv.key(&keys[1]).key(&keys[2]).key(format!("{}:pi", self.tag(group)));
            inv.arg(topic.as_str())
                .arg(self.channel(group))
                .arg(self.ttl_ms)
                .arg(self.grace_ms)
                .arg(u8::from(count));
            for op in chunk {
                match op {
                    StoreOp::Upsert(e) => inv.arg("u").arg(&*e.client).arg(&*e.user).arg(e.json()),
                    StoreOp::Close(client) => inv.arg("c").arg(&**client).arg("").arg(""),
                };
            }
            crate::metrics::presence_redis_op("apply");
            let (occupied, _users, joined): (u8, u64, Vec<String>) =
                inv.invoke_async(&mut self.conn.clone()).await?;
            if occupied == 1 {
                t.occupied.push(topic.clone());
            }
            t.joined.extend(joined.into_iter().map(Arc::from));
        }
        Ok(t)
    }

    /// Sweeps every key group: removes expired entries, announcing their
    /// leaves.
    pub(crate) async fn sweep(&self) -> Result<Transitions, PresenceError> {
        let mut t = Transitions::default();
        for group in 0..self.shards {
            let tag = self.tag(group);
            let mut inv = self.sweep.key(format!("{tag}:pi"));
            inv.arg(&tag).arg(self.channel(group)).arg(SWEEP_TOPICS);
            crate::metrics::presence_redis_op("sweep");
            let out: Vec<(String, u8, Vec<String>)> = inv.invoke_async(&mut self.conn.clone()).await?;
            for (topic, vacated, left) in out {
                if vacated == 1 {
                    if let Ok(topic) = Topic::new(&topic) {
                        t.vacated.push(topic);
                    }
                }
                t.left.extend(left.into_iter().map(Arc::from));
            }
        }
        Ok(t)
    }

    /// Who is present in `topic`.
    pub(crate) async fn list(&self, topic: &Topic, max: usize) -> Result<Listing, PresenceError> {
        let [entries, expiries, users] = self.topic_keys(topic);
        let mut inv = self.list.key(entries);
        inv.key(expiries).key(users).arg(max);
        crate::metrics::presence_redis_op("list");
        let reply: Vec<Value> = inv.invoke_async(&mut self.conn.clone()).await?;
        let mut it = reply.into_iter();
        let users = match it.next() {
            Some(Value::Int(n)) => n.max(0) as u64,
            _ => 0,
        };
        let mut clients: Vec<Entry> = it
            .filter_map(|v| match v {
                Value::BulkString(b) => Entry::parse(&b).ok(),
                _ => None,
            })
            .collect();
        clients.sort_by(|a, b| (a.since, &a.client).cmp(&(b.since, &b.client)));
        Ok(Listing { users, clients })
    }

    /// Counts `t`'s joined and left users across topics: fills its online
    /// and offline lists.
    pub(crate) async fn count_users(&self, t: &mut Transitions) -> Result<(), PresenceError> {
        if t.joined.is_empty() && t.left.is_empty() {
            return Ok(());
        }
        let mut inv = self.users.key(format!("{}{{presence}}:users", self.prefix));
        inv.arg(t.joined.len());
        for u in t.joined.iter().chain(&t.left) {
            inv.arg(&**u);
        }
        crate::metrics::presence_redis_op("users");
        let (online, offline): (Vec<String>, Vec<String>) = inv.invoke_async(&mut self.conn.clone()).await?;
        t.online.extend(online.into_iter().map(Arc::from));
        t.offline.extend(offline.into_iter().map(Arc::from));
        Ok(())
    }

    /// Forwards every group's published changes to `out` until `token` is
    /// cancelled, resubscribing after a lost connection.
    pub(crate) async fn subscribe(self: Arc<Self>, out: mpsc::Sender<Change>, token: CancellationToken) {
        let channels: Vec<String> = (0..self.shards).map(|g| self.channel(g)).collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            let session = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                for c in &channels {
                    pubsub.subscribe(c).await?;
                }
                tracing::debug!(channels = channels.len(), "presence changes subscribed");
                self.subscribed.send_replace(true);
                Ok::<_, redis::RedisError>(pubsub.into_on_message())
            };
            let stream = tokio::select! {
                _ = token.cancelled() => return,
                s = session => s,
            };
            match stream {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(100);
                    loop {
                        let msg = tokio::select! {
                            _ = token.cancelled() => return,
                            m = stream.next() => m,
                        };
                        let Some(msg) = msg else { break };
                        match Change::parse(msg.get_payload_bytes()) {
                            Ok(change) => {
                                if out.send(change).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "presence change ignored"),
                        }
                    }
                    tracing::warn!("presence change subscription lost; resubscribing");
                }
                Err(e) => tracing::warn!(error = %e, "presence change subscription failed; retrying"),
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn groups_match_the_engine() {
        // The engine's test vectors (engine::redis::keys).
        assert_eq!(fnv1a("a"), 0xe40c_292c);
        assert_eq!(fnv1a("foobar"), 0xbf9c_f968);
    }
}
