//! Presence (contract §11): who is subscribed to a `presence` topic, by
//! user and connection, with join/leave events and occupancy webhooks.
//! `docs/presence.md` is the operator's guide.
//!
//! # Model
//!
//! An entry per topic and connection (user, client, info, since) with a
//! lease. Stream subscriptions register their connection's entries
//! ([`Membership`], driven by `transport::subscription`: one place for every
//! stream transport); a background worker applies the registrations to the
//! store, refreshes this process's live entries every `ttl / 3`, and sweeps
//! expired entries. A closed (or unsubscribed) connection's entry is kept
//! `grace`, so a user back within it (a new connection of the same user)
//! causes neither leave nor join. Events are per user: `join` when a user
//! had no connection in the topic, `leave` when its last one's entry goes.
//!
//! # Stores
//!
//! - `memory.rs`: in process (embedded engine); changes go straight to the
//!   batcher.
//! - `redis.rs`: in the engine's Redis, every operation one Lua script;
//!   the scripts publish the changes they decided on the key group's
//!   channel, and every process's subscriber forwards them to its batcher.
//!   Whoever's script removes an entry announces its leave: once, across
//!   processes, also for the entries of a process that died.
//!
//! `batch.rs` turns changes into frames (one per topic per `batch`
//! window); `occupancy.rs` publishes the webhook events.
//!
//! This module imports the core, the config and metrics; the state and the
//! transports import it.

mod batch;
pub mod entry;
mod membership;
mod memory;
pub mod occupancy;
mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

pub use self::entry::{Entry, Listing, Transitions};
pub(crate) use self::membership::Membership;
use self::memory::MemoryStore;
use self::redis::RedisStore;
use crate::config::{Config, EngineKind, PresenceConfig};
use crate::core::policy::{Policies, PresenceMode};
use crate::core::{Engine, Hub, Topic};
use crate::error::{ApiError, Code};
use crate::shutdown::Shutdown;

/// Changes waiting for the batcher (its producers wait when it is full).
const CHANGES: usize = 4096;

/// How long a shutting-down process keeps applying the closes of its
/// connections (they end during the drain).
const DRAIN: Duration = Duration::from_secs(2);

/// One change to a topic's entries.
#[derive(Debug, Clone)]
pub(crate) enum StoreOp {
    /// Add the entry, or refresh its lease.
    Upsert(Entry),
    /// The connection (client id) closed: keep its entry `grace`.
    Close(Arc<str>),
}

/// Why presence cannot answer or start.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// Redis failed or refused.
    #[error("presence store: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// `[redis] cluster_urls` with presence topics.
    #[error("presence topics need a single Redis server (cluster_urls is not supported for presence yet)")]
    Cluster,
    /// The topic has no presence.
    #[error("topic {0} has no presence (see [[topics]] presence)")]
    Off(String),
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> ApiError {
        match e {
            PresenceError::Off(_) => ApiError::new(Code::BadRequest, e.to_string()),
            PresenceError::Redis(_) | PresenceError::Cluster => {
                ApiError::new(Code::Unavailable, "presence store unavailable")
            }
        }
    }
}

enum Store {
    Memory(MemoryStore),
    Redis(Arc<RedisStore>),
}

/// This process's part: its live connections' entries (refreshed) and the
/// registrations not yet applied.
#[derive(Default)]
struct Local {
    live: HashMap<Topic, HashMap<u64, Entry>>,
    queued: Vec<(Topic, StoreOp)>,
}

/// The presence service of one process.
pub struct Presence {
    store: Store,
    config: PresenceConfig,
    policies: Arc<Policies>,
    local: Mutex<Local>,
    wake: Notify,
    changes: mpsc::Sender<Change>,
    occupancy: occupancy::Occupancy,
    watchers: Arc<batch::Watchers>,
}

use self::entry::Change;

impl Presence {
    /// The presence service for `config`, its tasks (worker, batcher and,
    /// with Redis, the change subscriber) started under `shutdown` when
    /// some topic has presence. `hub` receives the frames; occupancy events
    /// are published through `engine`.
    pub fn start(
        config: &Config,
        hub: Hub,
        engine: Arc<dyn Engine>,
        shutdown: &Shutdown,
    ) -> Result<Arc<Presence>, PresenceError> {
        let policies = Arc::clone(hub.policies());
        let p = &config.presence;
        let store = match config.engine.kind {
            EngineKind::Memory => Store::Memory(MemoryStore::default()),
            EngineKind::Redis => {
                if !config.redis.cluster_urls.is_empty() && policies.any_presence() {
                    return Err(PresenceError::Cluster);
                }
                let r = &config.redis;
                Store::Redis(Arc::new(RedisStore::new(
                    &r.url,
                    &r.key_prefix,
                    usize::from(r.shards),
                    r.op_timeout,
                    p.ttl,
                    p.grace,
                )?))
            }
        };
        let (tx, rx) = mpsc::channel(CHANGES);
        let presence = Arc::new(Presence {
            store,
            config: p.clone(),
            policies: Arc::clone(&policies),
            local: Mutex::new(Local::default()),
            wake: Notify::new(),
            changes: tx.clone(),
            occupancy: occupancy::Occupancy::new(config, engine),
            watchers: Arc::default(),
        });
        if !policies.any_presence() {
            return Ok(presence);
        }
        let token = shutdown.token().clone();
        shutdown.spawn(batch::run(hub, Arc::clone(&presence.watchers), policies, p.batch, rx, token.clone()));
        if let Store::Redis(store) = &presence.store {
            shutdown.spawn(Arc::clone(store).subscribe(tx, token.clone()));
        }
        shutdown.spawn(Arc::clone(&presence).work(token));
        Ok(presence)
    }

    /// Local streams that asked for presence frames.
    pub(crate) fn watchers(&self) -> &Arc<batch::Watchers> {
        &self.watchers
    }

    /// The presence mode of `topic`.
    pub fn mode(&self, topic: &Topic) -> PresenceMode {
        self.policies.get(topic.as_str()).presence
    }

    /// Registers connection `client` (of `user`, with `info`) in `topic`;
    /// false (nothing registered) when the topic has no presence.
    pub(crate) fn enter(
        &self,
        topic: &Topic,
        client: u64,
        user: Option<Arc<str>>,
        info: Option<Arc<str>>,
    ) -> bool {
        if !self.mode(topic).is_on() {
            return false;
        }
        let id: Arc<str> = Arc::from(format!("{client:016x}"));
        let entry =
            Entry { user: user.unwrap_or_else(|| Arc::clone(&id)), client: id, info, since: now_ms() };
        {
            let mut local = self.local.lock();
            local.live.entry(topic.clone()).or_default().insert(client, entry.clone());
            local.queued.push((topic.clone(), StoreOp::Upsert(entry)));
        }
        self.wake.notify_one();
        true
    }

    /// Ends connection `client`'s registration in `topic`: its entry stays
    /// `grace`, then goes (announcing the leave if it was its user's last).
    pub(crate) fn exit(&self, topic: &Topic, client: u64) {
        {
            let mut local = self.local.lock();
            if let Some(room) = local.live.get_mut(topic) {
                room.remove(&client);
                if room.is_empty() {
                    local.live.remove(topic);
                }
            }
            local.queued.push((topic.clone(), StoreOp::Close(Arc::from(format!("{client:016x}")))));
        }
        self.wake.notify_one();
    }

    /// Who is present in `topic`: `users` and, unless the topic counts
    /// only, up to `presence.max_list` connections.
    pub async fn list(&self, topic: &Topic) -> Result<Listing, PresenceError> {
        let mode = self.mode(topic);
        if !mode.is_on() {
            return Err(PresenceError::Off(topic.as_str().to_owned()));
        }
        let max = if mode == PresenceMode::Count { 0 } else { self.config.max_list };
        match &self.store {
            Store::Memory(s) => Ok(s.list(topic, max)),
            Store::Redis(s) => s.list(topic, max).await,
        }
    }

    /// The worker: applies registrations, refreshes leases, sweeps.
    async fn work(self: Arc<Self>, token: tokio_util::sync::CancellationToken) {
        let refresh_every = (self.config.ttl / 3).max(Duration::from_millis(100));
        let sweep_every = (self.config.grace / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut refresh = tokio::time::interval(refresh_every);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Store::Redis(s) = &self.store {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = s.ready(Duration::from_secs(2)) => {}
            }
        }
        loop {
            let (refreshing, sweeping) = tokio::select! {
                _ = token.cancelled() => {
                    // The closes of the connections the shutdown ends: their
                    // users have `grace` to come back through another process.
                    let _ = tokio::time::timeout(DRAIN, self.drain()).await;
                    return;
                }
                _ = self.wake.notified() => (false, false),
                _ = refresh.tick() => (true, false),
                _ = sweep.tick() => (false, true),
            };
            self.flush().await;
            if refreshing {
                self.refresh().await;
            }
            if sweeping {
                self.sweep().await;
            }
            let entries = match &self.store {
                Store::Memory(s) => s.len(),
                Store::Redis(_) => self.local.lock().live.values().map(HashMap::len).sum(),
            };
            crate::metrics::presence_entries(entries);
        }
    }

    /// At shutdown: applies the closes of this process's connections as
    /// they end, until none is left.
    async fn drain(&self) {
        loop {
            self.flush().await;
            if self.local.lock().live.is_empty() {
                self.flush().await;
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.wake.notified()).await;
        }
    }

    /// Applies the queued registrations, topic by topic, in order.
    async fn flush(&self) {
        let queued = std::mem::take(&mut self.local.lock().queued);
        if queued.is_empty() {
            return;
        }
        let mut order: Vec<(Topic, Vec<StoreOp>)> = Vec::new();
        let mut index: HashMap<Topic, usize> = HashMap::new();
        for (topic, op) in queued {
            let i = *index.entry(topic.clone()).or_insert_with(|| {
                order.push((topic, Vec::new()));
                order.len() - 1
            });
            order[i].1.push(op);
        }
        for (topic, ops) in order {
            self.apply(&topic, ops).await;
        }
    }

    /// Refreshes the leases of this process's live entries (Redis).
    async fn refresh(&self) {
        if !matches!(self.store, Store::Redis(_)) {
            return;
        }
        let live: Vec<(Topic, Vec<StoreOp>)> = self
            .local
            .lock()
            .live
            .iter()
            .map(|(t, room)| (t.clone(), room.values().cloned().map(StoreOp::Upsert).collect()))
            .collect();
        for (topic, ops) in live {
            self.apply(&topic, ops).await;
        }
    }

    async fn apply(&self, topic: &Topic, ops: Vec<StoreOp>) {
        let t = match &self.store {
            Store::Memory(s) => {
                let (change, t) = s.apply(topic, ops, self.config.grace, tokio::time::Instant::now());
                if let Some(c) = change {
                    let _ = self.changes.send(c).await;
                }
                t
            }
            Store::Redis(s) => {
                let count = self.mode(topic) == PresenceMode::Count;
                match s.apply(topic, count, &ops).await {
                    Ok(t) => t,
                    Err(e) => {
                        // Live entries are written again at the next
                        // refresh; a lost close ends with the lease.
                        tracing::warn!(error = %e, topic = %topic, "presence update failed");
                        return;
                    }
                }
            }
        };
        self.transitions(t).await;
    }

    async fn sweep(&self) {
        let t = match &self.store {
            Store::Memory(s) => {
                let (changes, t) = s.sweep(tokio::time::Instant::now());
                for c in changes {
                    let _ = self.changes.send(c).await;
                }
                t
            }
            Store::Redis(s) => match s.sweep().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %e, "presence sweep failed; retried next tick");
                    return;
                }
            },
        };
        self.transitions(t).await;
    }

    /// Counts users across topics (Redis) and publishes the occupancy
    /// events of `t`.
    async fn transitions(&self, mut t: Transitions) {
        if t.is_empty() {
            return;
        }
        if let Store::Redis(s) = &self.store {
            if let Err(e) = s.count_users(&mut t).await {
                tracing::warn!(error = %e, "presence user count failed; user.online/offline events lost");
            }
        }
        self.occupancy.publish(&t).await;
    }
}

/// Unix time in ms.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
