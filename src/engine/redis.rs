//! The Redis Streams engine: durable history, replay, and live fan-out
//! across any number of gateway processes sharing one Redis (or a Redis
//! Cluster).
//!
//! # Keys
//!
//! Topics are spread over `redis.shards` key groups. Every key of a group
//! carries the same hash tag, so one group lives on one Cluster slot and one
//! `XREAD` can cover all of its topics:
//!
//! ```text
//! {prefix}{s<N>}:t:<topic>          the topic's stream (fields d = data, t = ts)
//! {prefix}{s<N>}:m:<topic>          the newest id ever trimmed from the stream
//! {prefix}{s<N>}:i:<topic>:<key>    an idempotency key → "<id> <ts>" (SET EX)
//! {prefix}{s<N>}:w:<process>        wake-up stream of one process's reader N
//! ```
//!
//! `N = fnv1a(topic) % shards`: every process must use the same `shards`.
//!
//! # Operations
//!
//! - **Publish** is one `EVALSHA` (one round trip): idempotency check,
//!   `XADD`, exact trimming by count and age (recording the newest trimmed
//!   id), `SET` of the idempotency key.
//!   The stream entry id is the message id.
//! - **History** is one script: trim by age, `XINFO STREAM`, the trim
//!   marker (the newest id ever trimmed, kept by the scripts because Redis
//!   does not record what `XTRIM` removed) and `XRANGE`/`XREVRANGE`.
//!   A read after a trimmed id reports `truncated`; so does a read after an
//!   id the stream never reached (the stream was deleted or Redis lost its
//!   data), so a lost stream is reported as a gap instead of waited on.
//! - **Live**: one reader task per key group, each with its own connection,
//!   loops on `XREAD BLOCK` over the watched topics of its group, from the
//!   last id it saw per topic, and hands entries to the hub. Watching a topic
//!   records the stream's current last id first (so nothing written in
//!   between is missed) and wakes the reader through its wake-up stream.
//!   No per-subscriber and no per-topic Redis connection.
//!
//! # Outages
//!
//! A health task pings every second; readiness follows it. Errors are
//! counted and logged once per state change. Readers back off with jitter
//! and resume from the last id seen per topic, so nothing written during the
//! outage is missed. After a reconnect every watched topic is checked: a
//! stream whose last id went backwards (flushed, restarted without
//! persistence, key deleted) makes the hub close that topic's subscribers,
//! which resume from their cursors and get an explicit gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use rand::Rng;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisFuture, Script, Value};
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::core::engine::{lost_after, Engine, EngineError, History, Listener, Published};
use crate::core::message::{now_ms, Message, MessageId, Topic};
use crate::shutdown::Shutdown;

/// Settings of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db` (`rediss://` for TLS).
    pub url: String,
    /// Cluster seed nodes; when non-empty, `url` is ignored.
    pub cluster_urls: Vec<String>,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Key groups (and reader tasks).
    pub shards: u16,
    /// Messages kept per topic.
    pub max_len: usize,
    /// Age after which messages are trimmed.
    pub max_age: Duration,
    /// Idempotency key lifetime.
    pub idempotency_ttl: Duration,
    /// Timeout of one command.
    pub op_timeout: Duration,
    /// How long one `XREAD` blocks.
    pub block: Duration,
}

/// Shared by both scripts: trims KEYS[1] to `maxlen` entries and drops
/// entries older than `minid`, recording the newest trimmed id in KEYS[2]
/// (Redis does not remember what trimming removed; gaps need it).
const TRIM: &str = r"
local function trim(stream, marker, maxlen, minid)
  local gone = nil
  if maxlen ~= '' then
    local excess = redis.call('XLEN', stream) - tonumber(maxlen)
    if excess > 0 then
      local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
      gone = old[#old][1]
      redis.call('XTRIM', stream, 'MAXLEN', maxlen)
    end
  end
  if minid ~= '' then
    -- Forward from the oldest entry: usually nothing has expired and this
    -- touches one node (a reverse scan would walk the whole stream).
    local old = redis.call('XRANGE', stream, '-', '(' .. minid)
    if #old > 0 then
      gone = old[#old][1]
      redis.call('XTRIM', stream, 'MINID', minid)
    end
  end
  if gone then redis.call('SET', marker, gone) end
end
";

/// KEYS: stream, trim marker, idempotency key. ARGV: data, ts, maxlen,
/// minid, idempotency ttl ('' = no key). Returns {"<id> <ts>", duplicate}.
const PUBLISH: &str = r"
if ARGV[5] ~= '' then
  local prev = redis.call('GET', KEYS[3])
  if prev then return {prev, 1} end
end
local id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[1], 't', ARGV[2])
trim(KEYS[1], KEYS[2], ARGV[3], ARGV[4])
local v = id .. ' ' .. ARGV[2]
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], v, 'EX', ARGV[5]) end
return {v, 0}
";

/// KEYS: stream, trim marker. ARGV: mode (after | newest | info | check), after
/// id, count, minid. Returns {0} without a stream, else
/// {1, last-generated-id, trimmed-through, first-entry-id, entries,
/// whether the `after` id itself is still in the stream}.
const HISTORY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
trim(KEYS[1], KEYS[2], '', ARGV[4])
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, first = '', ''
for i = 1, #info, 2 do
  local k = info[i]
  if k == 'last-generated-id' then last = info[i + 1]
  elseif k == 'first-entry' then
    local fe = info[i + 1]
    if fe then first = fe[1] end
  end
end
local trimmed = redis.call('GET', KEYS[2]) or ''
local present = 0
if (ARGV[1] == 'after' or ARGV[1] == 'check') and #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) > 0 then
  present = 1
end
local entries = {}
if ARGV[1] == 'newest' then
  entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[3])
elseif ARGV[1] == 'after' then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
end
return {1, last, trimmed, first, entries, present}
";

/// What the history script read about a stream.
struct StreamRead {
    last: Option<MessageId>,
    trimmed: Option<MessageId>,
    first: Option<MessageId>,
    entries: Vec<Value>,
    present: bool,
}

/// One connection of any of the supported kinds.
#[derive(Clone)]
enum Conn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per engine, never moved around
enum Clients {
    Single(redis::Client),
    Cluster { commands: ClusterClient, readers: ClusterClient },
}

impl Clients {
    fn open(opts: &RedisOptions) -> Result<Clients, redis::RedisError> {
        if opts.cluster_urls.is_empty() {
            return Ok(Clients::Single(redis::Client::open(opts.url.as_str())?));
        }
        let build = |response: Duration| {
            ClusterClient::builder(opts.cluster_urls.iter().map(String::as_str))
                .connection_timeout(opts.op_timeout)
                .response_timeout(response)
                .retries(2)
                .build()
        };
        Ok(Clients::Cluster {
            commands: build(opts.op_timeout)?,
            readers: build(opts.block + opts.op_timeout)?,
        })
    }

    /// The shared command connection (reconnects by itself).
    async fn commands(&self, opts: &RedisOptions) -> Result<Conn, redis::RedisError> {
        match self {
            Clients::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(opts.op_timeout))
                    .set_response_timeout(Some(opts.op_timeout))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(2));
                Ok(Conn::Manager(ConnectionManager::new_lazy_with_config(client.clone(), config)?))
            }
            Clients::Cluster { commands, .. } => Ok(Conn::Cluster(commands.get_async_connection().await?)),
        }
    }

    /// A dedicated connection for one blocking reader.
    async fn reader(&self, opts: &RedisOptions) -> Result<Conn, redis::RedisError> {
        match self {
            Clients::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(opts.op_timeout))
                    .set_response_timeout(Some(opts.block + opts.op_timeout));
                Ok(Conn::Multiplexed(client.get_multiplexed_async_connection_with_config(&config).await?))
            }
            Clients::Cluster { readers, .. } => Ok(Conn::Cluster(readers.get_async_connection().await?)),
        }
    }
}

/// One watched topic: the last id handed to the hub (`None` until the start
/// position is known), and the one in-flight read of that start position
/// that concurrent first subscribers share.
struct Watched {
    last: Option<MessageId>,
    start: Arc<OnceCell<()>>,
}

/// Watched topics of one key group: topic → last id handed to the hub
/// (`None` while the watch is still reading its start position).
#[derive(Default)]
struct Group {
    topics: Mutex<HashMap<Topic, Watched>>,
    wake: Notify,
}

struct Inner {
    opts: RedisOptions,
    clients: Clients,
    commands: OnceCell<Conn>,
    listener: Arc<dyn Listener>,
    groups: Vec<Group>,
    process: String,
    ready: AtomicBool,
    /// Whether readiness was ever decided (so the first failure is logged).
    decided: AtomicBool,
    publish: Script,
    history: Script,
}

/// The Redis Streams engine. Clone = `Arc` bump.
#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

/// FNV-1a: a stable hash every process agrees on.
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_str(other).and_then(|s| s.parse().ok()),
    }
}

fn parse_id(v: &Value) -> Option<MessageId> {
    as_str(v).and_then(|s| s.parse().ok())
}

fn malformed(what: &str) -> EngineError {
    EngineError::Unavailable(format!("unexpected reply from redis: {what}"))
}

/// `[id, [field, value, …]]` → a message of `topic`.
fn parse_entry(topic: &Topic, entry: &Value) -> Option<Message> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let id = parse_id(parts.first()?)?;
    let Value::Array(fields) = parts.get(1)? else {
        return None;
    };
    let mut data = None;
    let mut ts = None;
    for pair in fields.chunks(2) {
        match (pair.first().and_then(as_str), pair.get(1)) {
            (Some("d"), Some(Value::BulkString(b))) => data = Some(Bytes::copy_from_slice(b)),
            (Some("t"), Some(v)) => ts = as_str(v).and_then(|s| s.parse().ok()),
            _ => {}
        }
    }
    Some(Message::new(topic.clone(), id, ts.unwrap_or(id.ms), data?))
}

impl RedisEngine {
    /// Connects lazily (the process starts while Redis is down and becomes
    /// ready when it is reachable) and starts the health task and one reader
    /// per key group under `shutdown`.
    pub fn start(
        opts: RedisOptions,
        listener: Arc<dyn Listener>,
        shutdown: &Shutdown,
    ) -> Result<Arc<RedisEngine>, EngineError> {
        let clients = Clients::open(&opts).map_err(unavailable)?;
        let groups = (0..opts.shards.max(1)).map(|_| Group::default()).collect();
        let process = format!("{:016x}", rand::rng().random::<u64>());
        let engine = Arc::new(RedisEngine {
            inner: Arc::new(Inner {
                opts,
                clients,
                commands: OnceCell::new(),
                listener,
                groups,
                process,
                ready: AtomicBool::new(false),
                decided: AtomicBool::new(false),
                publish: Script::new(&format!("{TRIM}{PUBLISH}")),
                history: Script::new(&format!("{TRIM}{HISTORY}")),
            }),
        });
        let token = shutdown.token().clone();
        let health = RedisEngine::clone(&engine);
        shutdown.spawn(async move { health.health(token).await });
        for group in 0..engine.inner.groups.len() {
            let reader = RedisEngine::clone(&engine);
            let token = shutdown.token().clone();
            shutdown.spawn(async move { reader.read_group(group, token).await });
        }
        Ok(engine)
    }

    fn group_of(&self, topic: &Topic) -> usize {
        fnv1a(topic.as_str()) as usize % self.inner.groups.len()
    }

    fn tag(&self, group: usize) -> String {
        format!("{}{{s{}}}", self.inner.opts.key_prefix, group)
    }

    fn stream_key(&self, topic: &Topic) -> String {
        format!("{}:t:{}", self.tag(self.group_of(topic)), topic)
    }

    fn marker_key(&self, topic: &Topic) -> String {
        format!("{}:m:{}", self.tag(self.group_of(topic)), topic)
    }

    fn wake_key(&self, group: usize) -> String {
        format!("{}:w:{}", self.tag(group), self.inner.process)
    }

    async fn conn(&self) -> Result<Conn, EngineError> {
        let inner = &self.inner;
        let conn = tokio::time::timeout(
            inner.opts.op_timeout,
            inner.commands.get_or_try_init(|| inner.clients.commands(&inner.opts)),
        )
        .await
        .map_err(|_| EngineError::Unavailable("redis connect timed out".into()))?
        .map_err(unavailable)?;
        Ok(conn.clone())
    }

    /// Runs `cmd` with the command timeout; failures mark the engine unready.
    async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.inner.opts.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.set_ready(false, Some(&e.to_string()));
                Err(unavailable(e))
            }
            Err(_) => {
                self.set_ready(false, Some("command timed out"));
                Err(EngineError::Unavailable("redis command timed out".into()))
            }
        }
    }

    fn set_ready(&self, ready: bool, why: Option<&str>) {
        let was = self.inner.ready.swap(ready, Ordering::AcqRel);
        let first = !self.inner.decided.swap(true, Ordering::AcqRel);
        if was != ready || first {
            if ready {
                tracing::info!(engine = "redis", "redis reachable: ready");
            } else {
                tracing::warn!(engine = "redis", error = why.unwrap_or(""), "redis unreachable: not ready");
            }
        }
        if !ready {
            crate::metrics::engine_error();
        }
    }

    /// Pings every second; readiness follows.
    async fn health(self, token: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = match self.conn().await {
                Ok(mut c) => self.run(redis::cmd("PING").query_async::<String>(&mut c)).await.map(|_| ()),
                Err(e) => {
                    self.set_ready(false, Some(&e.to_string()));
                    Err(e)
                }
            };
            if result.is_ok() {
                self.set_ready(true, None);
            }
        }
    }

    /// Reads the stream's state and, per `mode`, entries.
    async fn read(
        &self,
        topic: &Topic,
        mode: &str,
        after: MessageId,
        count: usize,
    ) -> Result<Option<StreamRead>, EngineError> {
        let mut conn = self.conn().await?;
        let min_id = self.min_id();
        let mut inv = self.inner.history.key(self.stream_key(topic));
        inv.key(self.marker_key(topic)).arg(mode).arg(after.to_string()).arg(count).arg(min_id);
        let reply: Value = self.run(inv.invoke_async(&mut conn)).await?;
        let Value::Array(parts) = reply else {
            return Err(malformed("history"));
        };
        if parts.first().and_then(as_int) != Some(1) {
            return Ok(None);
        }
        let last = parts.get(1).and_then(parse_id);
        let trimmed = parts.get(2).and_then(parse_id);
        let first = parts.get(3).and_then(parse_id);
        let entries = match parts.get(4) {
            Some(Value::Array(e)) => e.clone(),
            _ => Vec::new(),
        };
        let present = parts.get(5).and_then(as_int) == Some(1);
        Ok(Some(StreamRead { last, trimmed, first, entries, present }))
    }

    /// `XTRIM MINID` argument for age retention.
    fn min_id(&self) -> String {
        let min_ms = now_ms().saturating_sub(self.inner.opts.max_age.as_millis() as u64);
        format!("{min_ms}-0")
    }

    /// One reader: `XREAD BLOCK` over the watched topics of `group`.
    async fn read_group(self, group: usize, token: CancellationToken) {
        let mut conn: Option<Conn> = None;
        let mut wake_last = MessageId::ZERO;
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        let mut check_pending = false;
        let wake_key = self.wake_key(group);
        loop {
            let watched: Vec<(Topic, MessageId)> = self.inner.groups[group]
                .topics
                .lock()
                .iter()
                .filter_map(|(t, w)| w.last.map(|l| (t.clone(), l)))
                .collect();
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
    async fn start_watch(&self, group: usize, topic: &Topic) -> Result<(), EngineError> {
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
        let watched: Vec<(Topic, MessageId)> = self.inner.groups[group]
            .topics
            .lock()
            .iter()
            .filter_map(|(t, w)| w.last.map(|l| (t.clone(), l)))
            .collect();
        for (topic, seen) in watched {
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

#[async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(
        &self,
        topic: &Topic,
        data: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Published, EngineError> {
        let mut conn = self.conn().await?;
        let stream = self.stream_key(topic);
        let idem = match idempotency_key {
            Some(k) => format!("{}:i:{}:{}", self.tag(self.group_of(topic)), topic, k),
            None => stream.clone(),
        };
        let ttl = idempotency_key.map(|_| self.inner.opts.idempotency_ttl.as_secs().max(1).to_string());
        let now = now_ms();
        let mut inv = self.inner.publish.key(&stream);
        inv.key(self.marker_key(topic))
            .key(&idem)
            .arg(data.as_ref())
            .arg(now)
            .arg(self.inner.opts.max_len)
            .arg(self.min_id())
            .arg(ttl.unwrap_or_default());
        let reply: Value = self.run(inv.invoke_async(&mut conn)).await?;
        let Value::Array(parts) = reply else {
            return Err(malformed("publish"));
        };
        let stored = parts.first().and_then(as_str).ok_or_else(|| malformed("publish id"))?;
        let (id, ts) = stored.split_once(' ').ok_or_else(|| malformed("publish id"))?;
        let id: MessageId = id.parse().map_err(|_| malformed("publish id"))?;
        let ts: u64 = ts.parse().map_err(|_| malformed("publish ts"))?;
        let duplicate = parts.get(1).and_then(as_int) == Some(1);
        Ok(Published { id, ts, duplicate })
    }

    async fn history(
        &self,
        topic: &Topic,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<History, EngineError> {
        let mode = if after.is_some() { "after" } else { "newest" };
        let after_id = after.unwrap_or_default();
        let Some(read) = self.read(topic, mode, after_id, limit).await? else {
            // No stream: never written, or lost with its data.
            let truncated = after.is_some_and(|a| lost_after(a, false, None));
            return Ok(History { truncated, ..History::default() });
        };
        let mut messages: Vec<Arc<Message>> =
            read.entries.iter().filter_map(|e| parse_entry(topic, e)).map(Arc::new).collect();
        if after.is_none() {
            messages.reverse();
        }
        let truncated = after.is_some_and(|a| lost_after(a, read.present, read.trimmed));
        let oldest = read.first.or_else(|| read.trimmed.max(read.last).and_then(MessageId::successor));
        Ok(History { messages, truncated, oldest, trimmed: read.trimmed })
    }

    async fn last_id(&self, topic: &Topic) -> Result<Option<MessageId>, EngineError> {
        Ok(self.read(topic, "info", MessageId::ZERO, 0).await?.and_then(|r| r.last))
    }

    fn watch(&self, topic: &Topic) -> BoxFuture<'static, Result<(), EngineError>> {
        let group = self.group_of(topic);
        let pending = {
            let mut topics = self.inner.groups[group].topics.lock();
            let w = topics
                .entry(topic.clone())
                .or_insert_with(|| Watched { last: None, start: Arc::new(OnceCell::new()) });
            w.last.is_none().then(|| Arc::clone(&w.start))
        };
        let this = self.clone();
        let topic = topic.clone();
        Box::pin(async move {
            let Some(start) = pending else { return Ok(()) };
            // Concurrent first subscribers share one read of the start
            // position; if it fails, the next one tries again.
            start.get_or_try_init(|| this.start_watch(group, &topic)).await?;
            Ok(())
        })
    }

    fn unwatch(&self, topic: &Topic) {
        let group = self.group_of(topic);
        self.inner.groups[group].topics.lock().remove(topic);
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_are_stable() {
        assert_eq!(fnv1a(""), 0x811c_9dc5);
        assert_eq!(fnv1a("a"), 0xe40c_292c);
        assert_eq!(fnv1a("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn entries_parse() {
        let t = Topic::new("t").unwrap();
        let e = Value::Array(vec![
            Value::BulkString(b"5-1".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(b"{\"a\":1}".to_vec()),
                Value::BulkString(b"t".to_vec()),
                Value::BulkString(b"7".to_vec()),
            ]),
        ]);
        let m = parse_entry(&t, &e).unwrap();
        assert_eq!((m.id, m.ts, &m.data[..]), (MessageId::new(5, 1), 7, &b"{\"a\":1}"[..]));
        assert!(parse_entry(&t, &Value::Nil).is_none());
    }
}
