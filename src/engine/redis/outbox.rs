//! The webhook outbox on Redis Streams: one outbox stream per key group
//! (`{prefix}{s<N>}:o`, written by the publish script in the same call as
//! the message), one consumer group per endpoint on each (`wh:<endpoint>`),
//! so every endpoint gets every entry once whichever process reads it.
//! `XREADGROUP` hands entries out, `XACK` finishes them, `XAUTOCLAIM` takes
//! over those a dead process left pending past the visibility timeout,
//! `XCLAIM … JUSTID` keeps a live process's slow ones. A trim script drops
//! what every configured endpoint's group is done with (below its oldest
//! pending entry and its last-delivered id), never more: an endpoint that
//! falls behind holds entries back until the publish script's bound
//! (`webhook_queue.max_len` per group) refuses publishes of routed topics.
//!
//! Dead letters: a hash (id → JSON) and a sorted set (id → time) in one
//! slot (`{prefix}{wh}`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;

use super::reply::{as_int, as_str};
use super::{RedisEngine, MAX_TTL_MS};
use crate::core::engine::EngineError;
use crate::core::message::{now_ms, Message, MessageId, Topic};
use crate::core::outbox::{DeadLetter, Entry, EntryRef, Outbox};

/// Trims one outbox below what every named group is done with. KEYS: the
/// outbox. ARGV: the groups. Trims nothing while one is missing.
pub(super) const TRIM_OUTBOX: &str = r#"
local function key(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = key(a)
  local bm, bs = key(b)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local info = {}
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  info[f['name']] = f
end
local min = nil
for i = 1, #ARGV do
  local f = info[ARGV[i]]
  if not f then return 0 end
  local keep = f['last-delivered-id']
  if tonumber(f['pending']) > 0 then
    local p = redis.call('XPENDING', KEYS[1], ARGV[i])
    if p[2] and less(p[2], keep) then keep = p[2] end
  end
  if min == nil or less(keep, min) then min = keep end
end
if min == nil or min == '0-0' then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', min)
"#;

/// Removes and returns one dead letter. KEYS: hash, order. ARGV: id.
pub(super) const TAKE_DEAD: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return v
"#;

/// Takes or renews a lease. KEYS: the lease. ARGV: holder, ttl ms.
pub(super) const LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Runs `cmd`, answering `None` for a missing consumer group (`NOGROUP`:
/// Redis lost the outbox) instead of an error (which would count as an
/// outage).
async fn unless_no_group(
    cmd: &redis::Cmd,
    conn: &mut super::conn::RedisConn,
) -> redis::RedisResult<Option<Value>> {
    match cmd.query_async::<Value>(conn).await {
        Err(e) if e.code() == Some("NOGROUP") => Ok(None),
        r => r.map(Some),
    }
}

fn group_name(endpoint: &str) -> String {
    format!("wh:{endpoint}")
}

/// Entries of an `XREADGROUP`/`XAUTOCLAIM` reply's entry list; the ids of
/// entries that are not this version's go to `bad` (acknowledged unread,
/// so they do not come back forever).
fn entries(group: usize, list: &Value, out: &mut Vec<Entry>, bad: &mut Vec<String>) {
    let Value::Array(items) = list else { return };
    for item in items {
        let Value::Array(parts) = item else { continue };
        let (Some(id), Some(Value::Array(fields))) = (parts.first().and_then(as_str), parts.get(1)) else {
            continue;
        };
        let mut topic = None;
        let mut mid = None;
        let mut data = None;
        let mut only = None;
        for pair in fields.chunks(2) {
            match (pair.first().and_then(as_str), pair.get(1)) {
                (Some("t"), Some(v)) => topic = as_str(v).and_then(|t| Topic::new(t).ok()),
                (Some("i"), Some(v)) => mid = as_str(v).and_then(|i| i.parse::<MessageId>().ok()),
                (Some("d"), Some(Value::BulkString(b))) => data = Some(Bytes::copy_from_slice(b)),
                (Some("e"), Some(v)) => only = as_str(v).map(str::to_owned),
                _ => {}
            }
        }
        let at = EntryRef { group, id: id.to_owned() };
        match (topic, mid, data) {
            (Some(topic), Some(mid), Some(data)) => {
                let message = std::sync::Arc::new(Message::new(topic, mid, mid.ms, data));
                out.push(Entry { at, message, only });
            }
            _ => {
                tracing::warn!(entry = %id, "unreadable webhook outbox entry skipped");
                bad.push(at.id);
            }
        }
    }
}

impl RedisEngine {
    /// Acknowledges entries of `group` that cannot be read.
    async fn ack_unread(&self, endpoint: &str, group: usize, ids: &[String]) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("XACK");
        cmd.arg(self.outbox_key(group)).arg(group_name(endpoint)).arg(ids);
        let _: Value = self.run(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    /// Trims every group's outbox below what the `endpoints` are done with.
    pub async fn trim_outboxes(&self, endpoints: &[String]) -> Result<u64, EngineError> {
        let mut conn = self.conn().await?;
        let groups: Vec<String> = endpoints.iter().map(|e| group_name(e)).collect();
        let mut trimmed = 0;
        for g in 0..self.inner.groups.len() {
            let mut inv = self.inner.outbox_trim.key(self.outbox_key(g));
            for name in &groups {
                inv.arg(name);
            }
            let n: i64 = self.run(inv.invoke_async(&mut conn)).await?;
            trimmed += u64::try_from(n).unwrap_or(0);
        }
        Ok(trimmed)
    }
}

#[async_trait]
impl Outbox for RedisEngine {
    async fn register(&self, endpoint: &str) -> Result<(), EngineError> {
        let mut conn = self.conn().await?;
        for g in 0..self.inner.groups.len() {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE").arg(self.outbox_key(g)).arg(group_name(endpoint)).arg("0").arg("MKSTREAM");
            // An existing group is what we want: not an error (and not an
            // outage for the health check).
            let create = async {
                match cmd.query_async::<Value>(&mut conn).await {
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(Value::Okay),
                    r => r,
                }
            };
            self.run(create).await?;
        }
        Ok(())
    }

    async fn fetch(&self, endpoint: &str, consumer: &str, max: usize) -> Result<Vec<Entry>, EngineError> {
        let mut conn = self.conn().await?;
        let mut out = Vec::new();
        for g in 0..self.inner.groups.len() {
            if out.len() >= max {
                break;
            }
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(group_name(endpoint))
                .arg(consumer)
                .arg("COUNT")
                .arg(max - out.len())
                .arg("STREAMS")
                .arg(self.outbox_key(g))
                .arg(">");
            let Some(reply) = self.run(unless_no_group(&cmd, &mut conn)).await? else {
                // The group is gone (Redis flushed or restarted empty):
                // create it again; the next read goes on.
                tracing::warn!(endpoint, "webhook consumer group missing (Redis lost data?): recreated");
                self.register(endpoint).await?;
                continue;
            };
            let mut bad = Vec::new();
            // [[key, [entries]]] (RESP2) or nil.
            if let Value::Array(streams) = reply {
                for s in streams {
                    if let Value::Array(kv) = s {
                        if let Some(list) = kv.get(1) {
                            entries(g, list, &mut out, &mut bad);
                        }
                    }
                }
            }
            self.ack_unread(endpoint, g, &bad).await?;
        }
        Ok(out)
    }

    async fn reclaim(
        &self,
        endpoint: &str,
        consumer: &str,
        idle: Duration,
        max: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let mut conn = self.conn().await?;
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(MAX_TTL_MS).max(1);
        let mut out = Vec::new();
        for g in 0..self.inner.groups.len() {
            if out.len() >= max {
                break;
            }
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(self.outbox_key(g))
                .arg(group_name(endpoint))
                .arg(consumer)
                .arg(idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(max - out.len());
            // A missing group has nothing to take over (fetch recreates it).
            let Some(reply) = self.run(unless_no_group(&cmd, &mut conn)).await? else { continue };
            let mut bad = Vec::new();
            if let Value::Array(parts) = reply {
                if let Some(list) = parts.get(1) {
                    entries(g, list, &mut out, &mut bad);
                }
            }
            self.ack_unread(endpoint, g, &bad).await?;
        }
        Ok(out)
    }

    async fn keep(&self, endpoint: &str, consumer: &str, entries: &[EntryRef]) -> Result<(), EngineError> {
        let mut conn = self.conn().await?;
        for g in 0..self.inner.groups.len() {
            let ids: Vec<&str> = entries.iter().filter(|e| e.group == g).map(|e| e.id.as_str()).collect();
            if ids.is_empty() {
                continue;
            }
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(self.outbox_key(g))
                .arg(group_name(endpoint))
                .arg(consumer)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID");
            let _: Value = self.run(cmd.query_async(&mut conn)).await?;
        }
        Ok(())
    }

    async fn ack(&self, endpoint: &str, entry: &EntryRef) -> Result<(), EngineError> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("XACK");
        cmd.arg(self.outbox_key(entry.group)).arg(group_name(endpoint)).arg(&entry.id);
        let _: Value = self.run(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    async fn lease(&self, endpoint: &str, consumer: &str, ttl: Duration) -> Result<bool, EngineError> {
        let key = format!("{}{{wh}}:lease:{endpoint}", self.inner.opts.key_prefix);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(MAX_TTL_MS).clamp(1, MAX_TTL_MS);
        let mut conn = self.conn().await?;
        let mut inv = self.inner.lease.key(key);
        inv.arg(consumer).arg(ttl_ms);
        let held: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(held == 1)
    }

    fn added(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.outbox_added.subscribe()
    }

    async fn enqueue_for(&self, endpoint: &str, message: &Message) -> Result<(), EngineError> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.outbox_key(self.group_of(&message.topic)))
            .arg("*")
            .arg("t")
            .arg(message.topic.as_str())
            .arg("i")
            .arg(message.id.to_string())
            .arg("d")
            .arg(message.data.as_ref())
            .arg("e")
            .arg(endpoint);
        let _: Value = self.run(cmd.query_async(&mut conn)).await?;
        self.inner.outbox_added.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), EngineError> {
        let json = serde_json::to_string(letter).map_err(|e| EngineError::Rejected(e.to_string()))?;
        let (hash, order) = self.dead_keys();
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic().hset(&hash, &letter.id, json).ignore();
        pipe.cmd("ZADD").arg(&order).arg("NX").arg(now_ms()).arg(&letter.id).ignore();
        let _: Value = self.run(pipe.query_async(&mut conn)).await?;
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        let (hash, order) = self.dead_keys();
        let mut conn = self.conn().await?;
        let stop = i64::try_from(limit).unwrap_or(i64::MAX).saturating_sub(1).max(0);
        let ids: Vec<String> =
            self.run(redis::cmd("ZRANGE").arg(&order).arg(0).arg(stop).query_async(&mut conn)).await?;
        if ids.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> =
            self.run(redis::cmd("HMGET").arg(&hash).arg(&ids).query_async(&mut conn)).await?;
        Ok(values.into_iter().flatten().filter_map(|v| serde_json::from_str(&v).ok()).collect())
    }

    async fn take_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, EngineError> {
        let (hash, order) = self.dead_keys();
        let mut conn = self.conn().await?;
        let mut inv = self.inner.take_dead.key(&hash);
        inv.key(&order).arg(id);
        let v: Option<String> = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn dead_letter_count(&self) -> Result<u64, EngineError> {
        let (hash, _) = self.dead_keys();
        let mut conn = self.conn().await?;
        let n: Value = self.run(redis::cmd("HLEN").arg(&hash).query_async(&mut conn)).await?;
        Ok(as_int(&n).and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }
}
