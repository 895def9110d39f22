//! The embedded engine: per-topic in-memory logs with live notification,
//! retention by count and age, and an idempotency cache.
//!
//! Each topic has its own mutex; publishing appends, trims and notifies the
//! listener under it, which gives per-topic id order without any lock shared
//! between topics. History lives until restart or trim.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use crate::core::engine::{lost_after, Engine, EngineError, Feed, History, Published};
use crate::core::message::{now_ms, Message, MessageId, Topic};
use crate::shutdown::Shutdown;

/// How often [`MemoryEngine::start`]'s sweeper drops expired messages of idle
/// topics.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Retention and idempotency settings of the embedded engine.
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
}

/// The in-memory engine.
pub struct MemoryEngine {
    topics: DashMap<Topic, Arc<Mutex<Log>>>,
    listener: Arc<dyn Feed>,
    opts: MemoryOptions,
}

#[derive(Default)]
struct Log {
    messages: VecDeque<Arc<Message>>,
    /// Newest id ever assigned.
    last: Option<MessageId>,
    /// Newest id ever trimmed: a read after an older id has a gap.
    trimmed_through: Option<MessageId>,
    idem: HashMap<Box<str>, (MessageId, u64)>,
    /// Keys in insertion order with their expiry (ms); expiry grows with it.
    idem_order: VecDeque<(Box<str>, u64)>,
}

impl Log {
    fn trim(&mut self, opts: &MemoryOptions, now: u64) {
        let min_ts = now.saturating_sub(opts.max_age.as_millis() as u64);
        while let Some(front) = self.messages.front() {
            if self.messages.len() > opts.max_len || front.ts < min_ts {
                self.trimmed_through = Some(front.id);
                self.messages.pop_front();
            } else {
                break;
            }
        }
        while let Some((key, expiry)) = self.idem_order.front() {
            if *expiry <= now || self.idem_order.len() > opts.idempotency_max_keys {
                self.idem.remove(key);
                self.idem_order.pop_front();
            } else {
                break;
            }
        }
    }

    fn oldest(&self) -> Option<MessageId> {
        match self.messages.front() {
            Some(m) => Some(m.id),
            None => self.trimmed_through.and_then(MessageId::successor),
        }
    }
}

impl MemoryEngine {
    /// An engine that notifies `listener` of every message.
    pub fn new(opts: MemoryOptions, listener: Arc<dyn Feed>) -> Self {
        MemoryEngine { topics: DashMap::new(), listener, opts }
    }

    /// An engine that notifies `listener` of every message, with a task
    /// under `shutdown` that [sweeps](MemoryEngine::sweep) it periodically
    /// until shutdown begins.
    pub fn start(opts: MemoryOptions, listener: Arc<dyn Feed>, shutdown: &Shutdown) -> Arc<MemoryEngine> {
        let engine = Arc::new(MemoryEngine::new(opts, listener));
        let sweeper = Arc::clone(&engine);
        let token = shutdown.token().clone();
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => sweeper.sweep(),
                }
            }
        });
        engine
    }

    fn log(&self, topic: &Topic) -> Option<Arc<Mutex<Log>>> {
        self.topics.get(topic).map(|e| Arc::clone(e.value()))
    }

    /// Drops expired messages and keys of every topic; called periodically so
    /// idle topics give their memory back.
    pub fn sweep(&self) {
        let now = now_ms();
        let logs: Vec<_> = self.topics.iter().map(|e| Arc::clone(e.value())).collect();
        for log in logs {
            log.lock().trim(&self.opts, now);
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(
        &self,
        topic: &Topic,
        data: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Published, EngineError> {
        let log = match self.log(topic) {
            Some(log) => log,
            None => Arc::clone(self.topics.entry(topic.clone()).or_default().value()),
        };
        let mut log = log.lock();
        let now = now_ms();
        log.trim(&self.opts, now);
        if let Some(key) = idempotency_key {
            if let Some(&(id, ts)) = log.idem.get(key) {
                return Ok(Published { id, ts, duplicate: true });
            }
        }
        let id = MessageId::next_after(log.last.unwrap_or(MessageId::ZERO), now)
            .ok_or(EngineError::IdsExhausted)?;
        let message = Arc::new(Message::new(topic.clone(), id, now, data));
        log.last = Some(id);
        log.messages.push_back(Arc::clone(&message));
        if let Some(key) = idempotency_key {
            let expiry = now.saturating_add(self.opts.idempotency_ttl.as_millis() as u64);
            log.idem.insert(key.into(), (id, now));
            log.idem_order.push_back((key.into(), expiry));
        }
        log.trim(&self.opts, now);
        // Notify under the topic lock: listeners see this topic in id order.
        self.listener.deliver(&message);
        Ok(Published { id, ts: now, duplicate: false })
    }

    async fn history(
        &self,
        topic: &Topic,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<History, EngineError> {
        let Some(log) = self.log(topic) else {
            // Never written here (or written before a restart: then a
            // resume point past zero is lost history).
            let truncated = after.is_some_and(|a| lost_after(a, false, None));
            return Ok(History { truncated, ..History::default() });
        };
        let mut log = log.lock();
        log.trim(&self.opts, now_ms());
        let (start, truncated) = match after {
            Some(after) => {
                let start = log.messages.partition_point(|m| m.id <= after);
                let present = start > 0 && log.messages[start - 1].id == after;
                (start, lost_after(after, present, log.trimmed_through))
            }
            None => (log.messages.len().saturating_sub(limit), false),
        };
        let messages = log.messages.range(start..).take(limit).cloned().collect();
        Ok(History { messages, truncated, oldest: log.oldest(), trimmed: log.trimmed_through, cut: false })
    }

    async fn last_id(&self, topic: &Topic) -> Result<Option<MessageId>, EngineError> {
        Ok(self.log(topic).and_then(|log| log.lock().last))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Hub;

    fn engine(max_len: usize, max_age: Duration) -> MemoryEngine {
        MemoryEngine::new(
            MemoryOptions {
                max_len,
                max_age,
                idempotency_ttl: Duration::from_secs(60),
                idempotency_max_keys: 3,
            },
            Arc::new(Hub::new()),
        )
    }

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[tokio::test]
    async fn ids_increase_and_history_pages() {
        let e = engine(100, Duration::from_secs(3600));
        let mut ids = vec![];
        for i in 0..10 {
            ids.push(e.publish(&t("a"), Bytes::from(i.to_string()), None).await.unwrap().id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let h = e.history(&t("a"), Some(ids[3]), 4).await.unwrap();
        assert_eq!(h.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids[4..8].to_vec());
        assert!(!h.truncated);
        let newest = e.history(&t("a"), None, 3).await.unwrap();
        assert_eq!(newest.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids[7..].to_vec());
        assert_eq!(e.last_id(&t("a")).await.unwrap(), Some(ids[9]));
        assert_eq!(e.last_id(&t("b")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn retention_by_count_reports_truncation() {
        let e = engine(3, Duration::from_secs(3600));
        let mut ids = vec![];
        for i in 0..6 {
            ids.push(e.publish(&t("a"), Bytes::from(i.to_string()), None).await.unwrap().id);
        }
        let h = e.history(&t("a"), Some(ids[0]), 10).await.unwrap();
        assert!(h.truncated);
        assert_eq!(h.oldest, Some(ids[3]));
        assert_eq!(h.messages.len(), 3);
        // Resuming from just before the oldest retained one is not a gap.
        let h = e.history(&t("a"), Some(ids[2]), 10).await.unwrap();
        assert!(!h.truncated);
        assert_eq!(h.messages.len(), 3);
    }

    #[tokio::test]
    async fn retention_by_age() {
        let e = engine(100, Duration::from_millis(0));
        let id = e.publish(&t("a"), Bytes::from_static(b"1"), None).await.unwrap().id;
        // max_age 0: gone by the next read (ts < now - 0 once a ms passed).
        tokio::time::sleep(Duration::from_millis(3)).await;
        let h = e.history(&t("a"), Some(MessageId::ZERO), 10).await.unwrap();
        assert!(h.messages.is_empty());
        assert!(h.truncated);
        assert_eq!(h.oldest, id.successor());
    }

    #[tokio::test]
    async fn idempotency_keys_dedupe_and_are_bounded() {
        let e = engine(100, Duration::from_secs(3600));
        let a = e.publish(&t("a"), Bytes::from_static(b"1"), Some("k")).await.unwrap();
        let b = e.publish(&t("a"), Bytes::from_static(b"2"), Some("k")).await.unwrap();
        assert!(!a.duplicate && b.duplicate);
        assert_eq!((a.id, a.ts), (b.id, b.ts));
        // Same key, other topic: independent.
        assert!(!e.publish(&t("b"), Bytes::from_static(b"1"), Some("k")).await.unwrap().duplicate);
        for k in ["k2", "k3", "k4"] {
            e.publish(&t("a"), Bytes::from_static(b"1"), Some(k)).await.unwrap();
        }
        // Cap of 3 keys: "k" was forgotten.
        assert!(!e.publish(&t("a"), Bytes::from_static(b"1"), Some("k")).await.unwrap().duplicate);
        assert_eq!(e.history(&t("a"), None, 100).await.unwrap().messages.len(), 5);
    }
}
