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
//! {prefix}{s<N>}:t:<topic>            the topic's stream (field d = data, k = the
//!                                     coalescing key when the publish gave one)
//! {prefix}{s<N>}:m:<topic>            the newest id ever trimmed from the stream
//! {prefix}{s<N>}:i:<len>:<topic>:<key> an idempotency key → "<id> <ts>" (SET PX)
//! {prefix}{s<N>}:k:<topic>            the topic's idempotency keys by time (ZSET)
//! {prefix}{s<N>}:w:<process>          wake-up stream of one process's reader N
//! {prefix}{s<N>}:a                  the group's age index: topic → when its oldest entry expires
//! {prefix}{s<N>}:n                  notify stream of group N: the stream key of
//!                                   every publish (capped at ~10,000 entries)
//! {prefix}{s<N>}:e                  ephemeral channel of group N (pub/sub; sharded
//!                                   pub/sub on a Cluster), see `ephemeral.rs`
//! {prefix}{s<N>}:o                  webhook outbox of group N (fields t, i, d, e):
//!                                   one consumer group `wh:<endpoint>` per endpoint
//! {prefix}{wh}:dl, {prefix}{wh}:dlo webhook dead letters (hash id → JSON; zset id → time)
//! {prefix}{wh}:lease:<endpoint>     which process reads an ordered endpoint (SET PX)
//! ```
//!
//! `N = fnv1a(topic) % shards`: every process must use the same `shards`.
//! `<len>` is the topic's length: topics and keys may both contain `:`.
//!
//! Retention is per topic: its `[[topics]]` policy's `history.max_len` and
//! `history.max_age` (else `[history]`); every process must share the
//! config. Every key expires. Each publish sets the stream and its marker
//! to expire the topic's `max_age` after it, so an idle topic vanishes with its newest
//! message (a resume from one of its ids is then lost history: a gap), and
//! records in the group's age index (`{prefix}{s<N>}:a`, topic → when its
//! oldest entry reaches the topic's `max_age`: scored by expiry time, so
//! topics of different ages share one index) when the topic next needs trimming; a
//! sweep task trims the due topics of every group by age, so an entry
//! older than `max_age` is gone within a sweep interval even if nobody
//! touches its topic again. An idempotency key lives `idempotency.ttl`,
//! and a topic keeps at most `idempotency.max_keys_per_topic` of them (the
//! oldest are forgotten first), the index expiring with its newest key.
//!
//! Time is Redis's: age trimming reads `TIME` inside the scripts (the clock
//! the entry ids come from), and a message's `ts` is its id's ms part, so
//! `ts` never decreases within a topic whichever process published.
//!
//! # Operations
//!
//! - **Publish** is one `EVALSHA` (one round trip): idempotency check,
//!   `XADD`, exact trimming by count and age (recording the newest trimmed
//!   id), expiry, an `XADD` of the stream's key to the group's notify
//!   stream, `SET` of the idempotency key.
//!   The stream entry id is the message id.
//! - **History** is one script: trim by age, the first entry's id, the trim
//!   marker (the newest id ever trimmed, kept by the scripts because Redis
//!   does not record what `XTRIM` removed) and `XRANGE`/`XREVRANGE` in
//!   small batches, stopping at [`PAGE_BYTES`] of data (the page then says
//!   it was cut, and the caller pages on). No command reads more entries
//!   than it returns, and none copies a payload it does not need: count
//!   trimming reads at most 100 entries per publish, age trimming one.
//!   An `after` that nothing can follow (`u64::MAX-u64::MAX`) reads no
//!   entries instead of asking Redis for an impossible range.
//!   A read after a trimmed id reports `truncated`; so does a read after an
//!   id the stream never reached (the stream was deleted or Redis lost its
//!   data), so a lost stream is reported as a gap instead of waited on.
//! - **Live**: one reader task per key group, each with its own connection,
//!   loops on `XREAD BLOCK` over the group's notify stream (and its wake-up
//!   stream), then reads only the watched topics the notifications name,
//!   from the last id it handed to the hub per topic, with their trim
//!   markers in the same script: entries trimmed before the reader saw them
//!   close the topic's subscribers, who resume from their cursors and get
//!   the gap. Redis work per delivery follows the topics that changed, not
//!   the topics watched. Watching a topic records the stream's current last
//!   id first (so nothing written in between is missed), queues the topic
//!   for a read from there and wakes the reader through its wake-up stream.
//!   No per-subscriber and no per-topic Redis connection.
//!
//! # Outages
//!
//! A health task pings every second on its own connection (never queued
//! behind data) and at once when a data-path command fails; readiness
//! follows the pings. Connection failures mark the engine unready; an error
//! *reply* to one command (the store is up and refused that request, see
//! [`is_rejection`]) is `EngineError::Rejected` and leaves readiness alone,
//! so no request can take the gateway out of a load balancer. Errors are
//! counted and logged once per state change. Readers back off with jitter
//! and resume from the last id seen per topic, so nothing written during the
//! outage is missed. After a reconnect every watched topic is read: a
//! stream that lost what was delivered from it (flushed, restarted without
//! persistence, key deleted) makes the hub close that topic's subscribers,
//! which resume from their cursors and get an explicit gap.
//!
//! # Code
//!
//! - `scripts/*.lua`: the publish, history and sweep scripts, each run as
//!   one `EVALSHA`; `trim.lua` (the shared trimming function) is prepended
//!   to each; `live.lua`, the readers' read of the topics that changed.
//! - `mod.rs`: settings, the engine and its [`Engine`] implementation.
//! - `conn.rs`: connections (one shared command connection, one dedicated
//!   connection per reader; single server or Cluster).
//! - `reply.rs`: parsing of script replies and stream entries.
//! - `keys.rs`: key groups and key names.
//! - `health.rs`: the command timeout, readiness and the health task (own
//!   connection).
//! - `sweep.rs`: the age sweep of idle topics.
//! - `ephemeral.rs`: ephemeral messages over pub/sub (payload framing, the
//!   per-process subscription).
//! - `outbox.rs`: the webhook outbox ([`crate::core::outbox::Outbox`]):
//!   consumer groups, takeover, trimming below every group, dead letters.
//! - `reader.rs`: the per-group live readers (notify stream, trimmed-entry
//!   detection, the check after a reconnect).

mod conn;
mod ephemeral;
mod health;
mod keys;
mod outbox;
mod reader;
mod reply;
mod sweep;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use rand::Rng;
use redis::{Script, Value};
use tokio::sync::{Notify, OnceCell};

use self::conn::{Clients, RedisConn};
use self::reader::{Group, Watched};
use self::reply::{parse_entry, StreamRead};
use crate::core::engine::{lost_after, Engine, EngineError, Feed, History, PublishOptions, Published};
use crate::core::message::{Message, MessageId, Topic};
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
    /// Idempotency keys kept per topic (the oldest are forgotten first).
    pub idempotency_max_keys: usize,
    /// Timeout of one command.
    pub op_timeout: Duration,
    /// How long one `XREAD` blocks.
    pub block: Duration,
    /// Topics recorded in the webhook outbox (none without webhooks).
    pub routes: Option<crate::core::outbox::Routes>,
    /// Per-topic retention (`[[topics]]`); `None`: `max_len` and `max_age`
    /// for every topic.
    pub policies: Option<Arc<crate::core::policy::Policies>>,
}

/// The shared trimming function, prepended to every script.
const TRIM: &str = include_str!("scripts/trim.lua");
/// The publish script (after [`TRIM`]).
const PUBLISH: &str = include_str!("scripts/publish.lua");
/// The history script (after [`TRIM`]).
const HISTORY: &str = include_str!("scripts/history.lua");
/// The age sweep script (after [`TRIM`]).
const SWEEP: &str = include_str!("scripts/sweep.lua");

/// Bytes of data one history page holds at most (beyond its first message):
/// bounds one script's work and one reply on the shared connection.
pub const PAGE_BYTES: usize = 1 << 20;

/// Longest expiry the scripts set (100 years): keeps `PEXPIRE` in range
/// whatever the configuration says.
pub(super) const MAX_TTL_MS: u64 = 100 * 365 * 86_400_000;

/// What the clones of one engine share.
struct Inner {
    opts: RedisOptions,
    clients: Clients,
    commands: OnceCell<RedisConn>,
    listener: Arc<dyn Feed>,
    groups: Vec<Group>,
    process: String,
    /// This process's id (`process` in hex): tags its ephemeral payloads.
    process_id: u64,
    ready: AtomicBool,
    /// Whether readiness was ever decided (so the first failure is logged).
    decided: AtomicBool,
    /// Asks the health task for a ping now (a data-path command failed).
    probe: Notify,
    /// The shared command connection failed (not merely timed out): not
    /// ready until it answers again.
    data_broken: AtomicBool,
    publish: Script,
    history: Script,
    sweep: Script,
    /// The outbox's trim script and dead-letter take script.
    outbox_trim: Script,
    take_dead: Script,
    lease: Script,
    /// Woken when this process recorded an outbox entry.
    outbox_added: tokio::sync::watch::Sender<u64>,
}

/// The Redis Streams engine. Clone = `Arc` bump.
#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

/// Whether `e` is Redis refusing one command while serving others: a
/// generic or script error (`ERR`), a wrong key type, a cross-slot or
/// aborted transaction. Conditions of the server itself (loading, busy,
/// out of memory, read-only, cluster down, no permission, …) and every
/// connection failure are outages.
pub(super) fn is_rejection(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ResponseError | ServerErrorKind::CrossSlot | ServerErrorKind::ExecAbort,
        ) => true,
        ErrorKind::Extension => e.code() == Some("WRONGTYPE"),
        _ => false,
    }
}

impl RedisEngine {
    /// Connects lazily (the process starts while Redis is down and becomes
    /// ready when it is reachable) and starts the health task and one reader
    /// per key group under `shutdown`.
    pub fn start(
        opts: RedisOptions,
        listener: Arc<dyn Feed>,
        shutdown: &Shutdown,
    ) -> Result<Arc<RedisEngine>, EngineError> {
        let clients = Clients::open(&opts).map_err(unavailable)?;
        let groups = (0..opts.shards.max(1)).map(|_| Group::default()).collect();
        let process_id = rand::rng().random::<u64>();
        let process = format!("{process_id:016x}");
        let engine = Arc::new(RedisEngine {
            inner: Arc::new(Inner {
                opts,
                clients,
                commands: OnceCell::new(),
                listener,
                groups,
                process,
                process_id,
                ready: AtomicBool::new(false),
                decided: AtomicBool::new(false),
                probe: Notify::new(),
                data_broken: AtomicBool::new(false),
                publish: Script::new(&format!("{TRIM}{PUBLISH}")),
                history: Script::new(&format!("{TRIM}{HISTORY}")),
                sweep: Script::new(&format!("{TRIM}{SWEEP}")),
                outbox_trim: Script::new(outbox::TRIM_OUTBOX),
                take_dead: Script::new(outbox::TAKE_DEAD),
                lease: Script::new(outbox::LEASE),
                outbox_added: tokio::sync::watch::Sender::new(0),
            }),
        });
        let token = shutdown.token().clone();
        let health = RedisEngine::clone(&engine);
        shutdown.spawn(async move { health.health(token).await });
        let sweeper = RedisEngine::clone(&engine);
        let token = shutdown.token().clone();
        shutdown.spawn(async move { sweeper.sweep(token).await });
        let subscriber = RedisEngine::clone(&engine);
        let token = shutdown.token().clone();
        shutdown.spawn(async move { subscriber.subscribe_ephemeral(token).await });
        for group in 0..engine.inner.groups.len() {
            let reader = RedisEngine::clone(&engine);
            let token = shutdown.token().clone();
            shutdown.spawn(async move { reader.read_group(group, token).await });
        }
        Ok(engine)
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
        let start = after.successor().map(|s| s.to_string()).unwrap_or_default();
        let mut inv = self.inner.history.key(self.stream_key(topic));
        inv.key(self.marker_key(topic))
            .arg(mode)
            .arg(after.to_string())
            .arg(start)
            .arg(count)
            .arg(self.retention(topic).1)
            .arg(PAGE_BYTES);
        let reply: Value = self.run(inv.invoke_async(&mut conn)).await?;
        reply::stream_read(reply)
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish_with(
        &self,
        topic: &Topic,
        data: Bytes,
        options: PublishOptions<'_>,
    ) -> Result<Published, EngineError> {
        let idempotency_key = options.idempotency_key;
        let mut conn = self.conn().await?;
        let stream = self.stream_key(topic);
        // Without a key, the key slots name the stream (every key of a
        // script must be declared, and in one slot); the script ignores them.
        let (idem, index) = match idempotency_key {
            Some(k) => (self.idempotency_key(topic, k), self.idempotency_index(topic)),
            None => (stream.clone(), stream.clone()),
        };
        let opts = &self.inner.opts;
        let (max_len, max_age_ms) = self.retention(topic);
        let ttl_ms =
            u64::try_from(opts.idempotency_ttl.as_millis()).unwrap_or(u64::MAX).clamp(1000, MAX_TTL_MS);
        let ttl = idempotency_key.map(|_| ttl_ms.to_string());
        let mut inv = self.inner.publish.key(&stream);
        inv.key(self.marker_key(topic))
            .key(&idem)
            .key(&index)
            .key(self.age_index(self.group_of(topic)))
            .key(self.notify_key(self.group_of(topic)))
            .key(self.outbox_key(self.group_of(topic)))
            .arg(data.as_ref())
            .arg(max_len)
            .arg(max_age_ms)
            .arg(ttl.unwrap_or_default())
            .arg(opts.idempotency_max_keys.max(1))
            .arg(topic.as_str())
            .arg(match &opts.routes {
                Some(r) if r.matches(topic) => r.max_len.to_string(),
                _ => String::new(),
            })
            .arg(if options.key.is_some() { "1" } else { "" })
            .arg(options.key.unwrap_or_default());
        let reply: Value = self.run(inv.invoke_async(&mut conn)).await?;
        let published = reply::published(reply);
        if matches!(published, Err(EngineError::Full(_))) {
            crate::metrics::rejected("webhook_outbox_full");
            tracing::warn!(topic = %topic, "webhook outbox full: publish refused");
        } else if self.inner.opts.routes.as_ref().is_some_and(|r| r.matches(topic)) {
            self.inner.outbox_added.send_modify(|n| *n = n.wrapping_add(1));
        }
        published
    }

    async fn broadcast(&self, message: Arc<Message>) -> Result<(), EngineError> {
        self.broadcast_ephemeral(message).await
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
        Ok(History { messages, truncated, oldest, trimmed: read.trimmed, cut: read.cut })
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
