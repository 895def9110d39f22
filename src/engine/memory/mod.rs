//! The embedded engine: per-topic in-memory logs with live notification,
//! retention by count and age, an idempotency cache, and process-wide caps.
//!
//! # Design
//!
//! - **Per-topic order without a lock across the fan-out.** Each topic has
//!   its own mutex, held only to trim, append and queue the message on the
//!   topic's hand-off (module `handoff`); the feed is called outside it, by
//!   one drainer per topic at a time, in id order. A big topic's fan-out no longer blocks
//!   the other publishers to it (they append and return) nor any lock
//!   shared between topics.
//! - **Nothing outlives `history.max_age`.** A sweeper trims every topic at
//!   least every [`sweep_every`] (10 s at most), touched or not, and drops
//!   a topic whose log is empty (every message trimmed by age) and has no
//!   idempotency key left. A read of a dropped topic answers like one never
//!   written: a resume from any id but zero is a gap (true: all was
//!   trimmed; also for a client that had seen everything, which the engine
//!   can no longer tell). Its
//!   ids are not reused: the engine keeps one process-wide floor, the
//!   newest id of any topic it dropped, and a topic created later hands out
//!   ids above it.
//! - **Caps.** `limits.max_topics` topics stored and
//!   `memory.max_retained_bytes` retained (message data, idempotency keys
//!   and fixed per-message and per-topic overheads). A publish that would
//!   create a topic past the first, or grow retained bytes past the second,
//!   is refused with [`EngineError::Full`] and stores nothing; accepted
//!   messages are never evicted to make room (that would cut history short
//!   of `max_len`/`max_age` for no reason a subscriber could see). Room
//!   comes back as history is trimmed and idle topics are dropped.

mod handoff;
mod log;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::core::engine::{lost_after, Engine, EngineError, Feed, History, PublishOptions, Published};
use crate::core::message::{now_ms, Message, MessageId, Topic};
use crate::core::policy::Policies;
use crate::shutdown::Shutdown;

use handoff::Handoff;
use log::Log;

/// How often [`MemoryEngine::start`]'s sweeper trims every topic and drops
/// idle ones: half of `max_age`, between 50 ms and 10 s, so nothing is kept
/// much past `max_age` and a short `max_age` (tests) is swept promptly.
pub fn sweep_every(max_age: Duration) -> Duration {
    (max_age / 2).clamp(Duration::from_millis(50), Duration::from_secs(10))
}

/// How often, at most, refusals by a cap are logged (with their count).
const FULL_LOG_EVERY_MS: u64 = 10_000;

/// Retention, idempotency and capacity settings of the embedded engine.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Messages kept per topic.
    pub max_len: usize,
    /// Age after which messages are dropped.
    pub max_age: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// Idempotency keys remembered per topic (oldest forgotten first).
    pub idempotency_max_keys: usize,
    /// Topics stored at once (`limits.max_topics`).
    pub max_topics: usize,
    /// Bytes retained at once (`memory.max_retained_bytes`).
    pub max_retained_bytes: usize,
    /// Per-topic retention (`[[topics]]`); `None`: `max_len` and `max_age`
    /// for every topic.
    pub policies: Option<Arc<Policies>>,
}

impl Default for MemoryOptions {
    /// The configuration's defaults.
    fn default() -> Self {
        MemoryOptions {
            max_len: 10_000,
            max_age: Duration::from_secs(24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_max_keys: 10_000,
            max_topics: 100_000,
            max_retained_bytes: 256 << 20,
            policies: None,
        }
    }
}

/// The in-memory engine.
pub struct MemoryEngine {
    topics: DashMap<Topic, Arc<Slot>>,
    listener: Arc<dyn Feed>,
    opts: MemoryOptions,
    /// Entries of `topics` (counted here: `DashMap::len` walks every shard).
    topic_count: AtomicUsize,
    /// Bytes retained: every log's messages and keys plus topic overheads.
    retained: AtomicUsize,
    /// The newest id of any dropped topic; new topics' ids are above it.
    floor: Mutex<MessageId>,
    /// Publishes refused by a cap since the last log line about them.
    refused: AtomicU64,
    /// When (Unix ms) that line was written: at most one per
    /// [`FULL_LOG_EVERY_MS`], not one per refusal.
    refused_logged_ms: AtomicU64,
}

/// One topic: its state under one short lock, and the wake-up of
/// publishers waiting for room in its hand-off.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    room: Notify,
}

#[derive(Default)]
struct SlotState {
    log: Log,
    handoff: Handoff,
    /// Dropped from the map by the sweeper: whoever still holds this slot
    /// looks the topic up again.
    removed: bool,
}

impl SlotState {
    fn is_reclaimable(&self) -> bool {
        self.log.is_idle() && !self.handoff.is_busy()
    }
}

/// Bytes a topic costs besides its log's contents.
fn topic_cost(topic: &Topic) -> usize {
    std::mem::size_of::<Slot>() + topic.as_str().len() + 64
}

/// What one attempt to append found.
enum Appended {
    /// Stored (or a duplicate); `drain` when this publisher must fan out.
    Done { published: Published, drain: bool },
    /// The topic was dropped meanwhile: look it up again.
    Retry,
    /// The hand-off is full: wait for room, then try again.
    NoRoom,
}

impl MemoryEngine {
    /// An engine that notifies `listener` of every message.
    pub fn new(opts: MemoryOptions, listener: Arc<dyn Feed>) -> Self {
        MemoryEngine {
            topics: DashMap::new(),
            listener,
            opts,
            topic_count: AtomicUsize::new(0),
            retained: AtomicUsize::new(0),
            floor: Mutex::new(MessageId::ZERO),
            refused: AtomicU64::new(0),
            refused_logged_ms: AtomicU64::new(0),
        }
    }

    /// An engine that notifies `listener` of every message, with a task
    /// under `shutdown` that [sweeps](MemoryEngine::sweep) it every
    /// [`sweep_every`] until shutdown begins.
    pub fn start(opts: MemoryOptions, listener: Arc<dyn Feed>, shutdown: &Shutdown) -> Arc<MemoryEngine> {
        let shortest = opts.policies.as_ref().map_or(opts.max_age, |p| p.shortest_max_age());
        let every = sweep_every(opts.max_age.min(shortest));
        let engine = Arc::new(MemoryEngine::new(opts, listener));
        let sweeper = Arc::clone(&engine);
        let token = shutdown.token().clone();
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        let dropped = sweeper.sweep();
                        if dropped > 0 {
                            tracing::debug!(dropped, topics = sweeper.topic_count(), "memory engine dropped idle topics");
                        }
                    }
                }
            }
        });
        engine
    }

    /// Topics stored.
    pub fn topic_count(&self) -> usize {
        self.topic_count.load(Ordering::Relaxed)
    }

    /// Bytes retained (see the module docs for what counts).
    pub fn retained_bytes(&self) -> usize {
        self.retained.load(Ordering::Relaxed)
    }

    /// Trims every topic by count and age, expires idempotency keys and
    /// drops topics left with nothing; returns how many were dropped.
    /// Called periodically so that untouched topics give their memory back.
    pub fn sweep(&self) -> usize {
        let now = now_ms();
        let slots: Vec<_> = self.topics.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        let mut dropped = 0;
        for (topic, slot) in slots {
            let idle = {
                let mut st = slot.state.lock();
                let freed = st.log.trim(&self.opts, now);
                self.release(freed);
                st.is_reclaimable()
            };
            if idle && self.reclaim(&topic) {
                dropped += 1;
            }
        }
        dropped
    }

    /// Drops `topic` if it is still idle, under its map shard's lock (so no
    /// publish can find it meanwhile) and its own (so none is appending).
    fn reclaim(&self, topic: &Topic) -> bool {
        let removed = self.topics.remove_if(topic, |_, slot| {
            let mut st = slot.state.lock();
            if !st.is_reclaimable() {
                return false;
            }
            st.removed = true;
            if let Some(last) = st.log.last {
                let mut floor = self.floor.lock();
                *floor = (*floor).max(last);
            }
            true
        });
        if removed.is_some() {
            self.topic_count.fetch_sub(1, Ordering::Relaxed);
            self.release(topic_cost(topic));
        }
        removed.is_some()
    }

    /// Takes `bytes` of the retained-bytes budget, or false when they do
    /// not fit.
    fn reserve(&self, bytes: usize) -> bool {
        let cap = self.opts.max_retained_bytes;
        self.retained
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                r.checked_add(bytes).filter(|&n| n <= cap)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.retained.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// A cap refused a publish: the error; logged with the count of
    /// refusals at most once per [`FULL_LOG_EVERY_MS`].
    fn refuse(&self, cap: &'static str) -> EngineError {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let last = self.refused_logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= FULL_LOG_EVERY_MS
            && self
                .refused_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refused.fetch_sub(refused, Ordering::Relaxed);
            tracing::warn!(
                cap,
                refused,
                topics = self.topic_count(),
                retained_bytes = self.retained_bytes(),
                "memory engine full: refusing publishes that need more room"
            );
        }
        EngineError::Full(cap)
    }

    /// The topic's slot, created (within the caps) when it has none.
    fn slot_for_publish(&self, topic: &Topic) -> Result<Arc<Slot>, EngineError> {
        if let Some(slot) = self.topics.get(topic) {
            return Ok(Arc::clone(slot.value()));
        }
        match self.topics.entry(topic.clone()) {
            Entry::Occupied(e) => Ok(Arc::clone(e.get())),
            Entry::Vacant(v) => {
                let max = self.opts.max_topics;
                let admitted = self
                    .topic_count
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
                    .is_ok();
                if !admitted {
                    return Err(self.refuse("limits.max_topics"));
                }
                if !self.reserve(topic_cost(topic)) {
                    self.topic_count.fetch_sub(1, Ordering::Relaxed);
                    return Err(self.refuse("memory.max_retained_bytes"));
                }
                let floor = *self.floor.lock();
                let retention = self.opts.policies.as_ref().map(|p| p.get(topic.as_str()).history);
                let slot = Arc::new(Slot {
                    state: Mutex::new(SlotState {
                        log: Log::above(floor).with_retention(retention),
                        ..SlotState::default()
                    }),
                    room: Notify::new(),
                });
                v.insert(Arc::clone(&slot));
                Ok(slot)
            }
        }
    }

    /// The topic's live slot, if it has one.
    fn slot(&self, topic: &Topic) -> Option<Arc<Slot>> {
        self.topics.get(topic).map(|e| Arc::clone(e.value()))
    }

    /// One attempt to store `data` in `slot`, under its lock only.
    fn append(
        &self,
        slot: &Slot,
        topic: &Topic,
        data: &Bytes,
        options: PublishOptions<'_>,
    ) -> Result<Appended, EngineError> {
        let key = options.idempotency_key;
        let mut st = slot.state.lock();
        if st.removed {
            return Ok(Appended::Retry);
        }
        let now = now_ms();
        let freed = st.log.trim(&self.opts, now);
        self.release(freed);
        if let Some((id, ts)) = key.and_then(|k| st.log.duplicate(k)) {
            return Ok(Appended::Done { published: Published { id, ts, duplicate: true }, drain: false });
        }
        if !st.handoff.has_room() {
            return Ok(Appended::NoRoom);
        }
        let reserved = usize::try_from(st.log.growth(&self.opts, data.len(), key)).unwrap_or(0);
        if reserved > 0 && !self.reserve(reserved) {
            return Err(self.refuse("memory.max_retained_bytes"));
        }
        let Some(id) = st.log.next_id(now) else {
            self.release(reserved);
            return Err(EngineError::IdsExhausted);
        };
        // A copy of exactly `data`'s bytes: the caller's `Bytes` is often a
        // slice of a bigger buffer (hyper's read buffer, a whole WebSocket
        // frame), and a retained slice would keep all of it alive (about
        // 6 KiB per 128-byte message published over HTTP keep-alive).
        let coalesce: Option<Arc<str>> = options.key.map(Arc::from);
        let stored =
            Message::new(topic.clone(), id, now, Bytes::copy_from_slice(data)).with_key(coalesce.clone());
        // Live subscribers get their own copy: the wire encodings they cache
        // on it are freed once every subscriber wrote it, instead of staying
        // with the message in the log for as long as it is retained.
        let message = Arc::new(Message::new(topic.clone(), id, now, stored.data.clone()).with_key(coalesce));
        let expiry = now.saturating_add(self.opts.idempotency_ttl.as_millis() as u64);
        let added = st.log.append(Arc::new(stored), key.map(|k| (k, expiry)));
        let freed = st.log.trim(&self.opts, now);
        // Settle the reservation against what the append really cost.
        let diff = added as isize - freed as isize - reserved as isize;
        if diff > 0 {
            self.retained.fetch_add(diff.unsigned_abs(), Ordering::Relaxed);
        } else {
            self.release(diff.unsigned_abs());
        }
        let drain = st.handoff.push(message);
        Ok(Appended::Done { published: Published { id, ts: now, duplicate: false }, drain })
    }

    /// Fans out everything queued on `slot`'s hand-off, in order, outside
    /// its lock, until the queue is found empty (see [`handoff`]).
    fn drain(&self, slot: &Slot) {
        let mut batch = VecDeque::new();
        loop {
            let more = slot.state.lock().handoff.next_batch(&mut batch);
            if !more {
                return;
            }
            slot.room.notify_waiters();
            for message in batch.drain(..) {
                self.listener.deliver(&message);
            }
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish_with(
        &self,
        topic: &Topic,
        data: Bytes,
        options: PublishOptions<'_>,
    ) -> Result<Published, EngineError> {
        loop {
            let slot = self.slot_for_publish(topic)?;
            match self.append(&slot, topic, &data, options)? {
                Appended::Done { published, drain } => {
                    if drain {
                        self.drain(&slot);
                    }
                    return Ok(published);
                }
                Appended::Retry => continue,
                Appended::NoRoom => {
                    // Register before checking again, so the drainer's
                    // wake-up between the check and the wait is not missed.
                    let room = slot.room.notified();
                    tokio::pin!(room);
                    room.as_mut().enable();
                    let full = !slot.state.lock().handoff.has_room();
                    if full {
                        room.await;
                    }
                }
            }
        }
    }

    async fn broadcast(&self, message: Arc<Message>) -> Result<(), EngineError> {
        // One process: the local feed is every subscriber.
        self.listener.deliver(&message);
        Ok(())
    }

    async fn history(
        &self,
        topic: &Topic,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<History, EngineError> {
        loop {
            let Some(slot) = self.slot(topic) else {
                // Never written here, dropped when idle (every message
                // trimmed), or written before a restart: a resume point
                // past zero is lost history.
                let truncated = after.is_some_and(|a| lost_after(a, false, None));
                return Ok(History { truncated, ..History::default() });
            };
            let mut st = slot.state.lock();
            if st.removed {
                continue;
            }
            let freed = st.log.trim(&self.opts, now_ms());
            self.release(freed);
            let log = &st.log;
            let (start, truncated) = match after {
                Some(after) => {
                    let start = log.messages.partition_point(|m| m.id <= after);
                    let present = start > 0 && log.messages[start - 1].id == after;
                    (start, lost_after(after, present, log.trimmed_through))
                }
                None => (log.messages.len().saturating_sub(limit), false),
            };
            let messages = log.messages.range(start..).take(limit).cloned().collect();
            return Ok(History {
                messages,
                truncated,
                oldest: log.oldest(),
                trimmed: log.trimmed_through,
                cut: false,
            });
        }
    }

    async fn last_id(&self, topic: &Topic) -> Result<Option<MessageId>, EngineError> {
        loop {
            let Some(slot) = self.slot(topic) else { return Ok(None) };
            let st = slot.state.lock();
            if !st.removed {
                return Ok(st.log.last);
            }
        }
    }

    fn watch(&self, _topic: &Topic) -> BoxFuture<'static, Result<(), EngineError>> {
        // Every publish notifies the listener; nothing to register.
        Box::pin(async { Ok(()) })
    }

    fn unwatch(&self, _topic: &Topic) {}

    fn is_ready(&self) -> bool {
        true
    }
}
