//! The embedded engine's webhook outbox: the [`Outbox`] semantics in
//! process, bounded, without crash survival (a restart loses what was not
//! delivered yet, like the embedded engine loses its history).
//!
//! [`Enqueuing`] wraps the embedded engine: a publish of a topic that some
//! endpoint matches first reserves room in the outbox (refused with
//! `EngineError::Full("webhook_queue.max_len")` when there is none, before
//! anything is stored), then publishes, then records the message before
//! the id is returned. One shared log; every endpoint has its own cursor
//! and pending set, and the log is trimmed below what every endpoint has
//! acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::core::outbox::{DeadLetter, Entry, EntryRef, Outbox, Routes};
use crate::core::{Engine, EngineError, History, Message, MessageId, PublishOptions, Published, Topic};

/// Dead letters the embedded outbox keeps; past it the oldest is dropped
/// (counted and logged).
pub const MAX_DEAD_LETTERS: usize = 10_000;

#[derive(Default)]
struct Cursor {
    /// Next sequence number to hand out.
    next: u64,
    /// Handed out, not acknowledged: sequence → when last touched.
    pending: HashMap<u64, Instant>,
}

#[derive(Default)]
struct Log {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<(Arc<Message>, Option<String>)>,
    /// Publishes between their room check and their record.
    reserved: usize,
    cursors: HashMap<String, Cursor>,
    dead: VecDeque<DeadLetter>,
}

impl Log {
    fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    fn entry(&self, seq: u64) -> Option<Entry> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let (message, only) = self.entries.get(i)?;
        Some(Entry {
            at: EntryRef { group: 0, id: seq.to_string() },
            message: Arc::clone(message),
            only: only.clone(),
        })
    }

    /// Drops entries every endpoint is done with.
    fn trim(&mut self) {
        let keep = self
            .cursors
            .values()
            .map(|c| c.pending.keys().copied().min().unwrap_or(c.next).min(c.next))
            .min()
            .unwrap_or_else(|| self.end());
        while self.base < keep && !self.entries.is_empty() {
            self.entries.pop_front();
            self.base += 1;
        }
    }

    fn push(&mut self, message: Arc<Message>, only: Option<String>) {
        self.entries.push_back((message, only));
    }
}

/// The in-process outbox. Clone = `Arc` bump.
#[derive(Clone)]
pub struct LocalOutbox {
    log: Arc<Mutex<Log>>,
    added: Arc<watch::Sender<u64>>,
    max_len: usize,
}

impl LocalOutbox {
    /// An empty outbox of at most `max_len` entries for `endpoints`
    /// (registered now, so nothing is trimmed before each one has read it).
    pub fn new(max_len: usize, endpoints: &[String]) -> LocalOutbox {
        let mut log = Log::default();
        for e in endpoints {
            log.cursors.insert(e.clone(), Cursor::default());
        }
        LocalOutbox {
            log: Arc::new(Mutex::new(log)),
            added: Arc::new(watch::Sender::new(0)),
            max_len: max_len.max(1),
        }
    }

    fn seq(id: &str) -> Option<u64> {
        id.parse().ok()
    }
}

#[async_trait]
impl Outbox for LocalOutbox {
    async fn register(&self, endpoint: &str) -> Result<(), EngineError> {
        let mut log = self.log.lock();
        let base = log.base;
        log.cursors.entry(endpoint.to_owned()).or_insert_with(|| Cursor { next: base, ..Cursor::default() });
        Ok(())
    }

    async fn fetch(&self, endpoint: &str, _consumer: &str, max: usize) -> Result<Vec<Entry>, EngineError> {
        let mut log = self.log.lock();
        let end = log.end();
        let Some(cursor) = log.cursors.get_mut(endpoint) else { return Ok(Vec::new()) };
        let from = cursor.next;
        let to = end.min(from + max as u64);
        let now = Instant::now();
        for seq in from..to {
            cursor.pending.insert(seq, now);
        }
        cursor.next = to;
        Ok((from..to).filter_map(|seq| log.entry(seq)).collect())
    }

    async fn reclaim(
        &self,
        endpoint: &str,
        _consumer: &str,
        idle: Duration,
        max: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let mut log = self.log.lock();
        let Some(cursor) = log.cursors.get_mut(endpoint) else { return Ok(Vec::new()) };
        let now = Instant::now();
        let mut stale: Vec<u64> =
            cursor.pending.iter().filter(|(_, t)| now.duration_since(**t) >= idle).map(|(s, _)| *s).collect();
        stale.sort_unstable();
        stale.truncate(max);
        for seq in &stale {
            cursor.pending.insert(*seq, now);
        }
        Ok(stale.into_iter().filter_map(|seq| log.entry(seq)).collect())
    }

    async fn keep(&self, endpoint: &str, _consumer: &str, entries: &[EntryRef]) -> Result<(), EngineError> {
        let mut log = self.log.lock();
        if let Some(cursor) = log.cursors.get_mut(endpoint) {
            let now = Instant::now();
            for seq in entries.iter().filter_map(|e| Self::seq(&e.id)) {
                if let Some(t) = cursor.pending.get_mut(&seq) {
                    *t = now;
                }
            }
        }
        Ok(())
    }

    async fn ack(&self, endpoint: &str, entry: &EntryRef) -> Result<(), EngineError> {
        let mut log = self.log.lock();
        if let (Some(cursor), Some(seq)) = (log.cursors.get_mut(endpoint), Self::seq(&entry.id)) {
            cursor.pending.remove(&seq);
        }
        log.trim();
        Ok(())
    }

    async fn lease(&self, _endpoint: &str, _consumer: &str, _ttl: Duration) -> Result<bool, EngineError> {
        // One process: always its own.
        Ok(true)
    }

    fn added(&self) -> watch::Receiver<u64> {
        self.added.subscribe()
    }

    async fn enqueue_for(&self, endpoint: &str, message: &Message) -> Result<(), EngineError> {
        {
            let mut log = self.log.lock();
            if log.entries.len() + log.reserved >= self.max_len {
                return Err(EngineError::Full("webhook_queue.max_len"));
            }
            let copy = Message::new(message.topic.clone(), message.id, message.ts, message.data.clone());
            log.push(Arc::new(copy), Some(endpoint.to_owned()));
        }
        self.added.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), EngineError> {
        let mut log = self.log.lock();
        log.dead.retain(|d| d.id != letter.id);
        if log.dead.len() >= MAX_DEAD_LETTERS {
            if let Some(old) = log.dead.pop_front() {
                crate::metrics::rejected("webhook_dead_letters_full");
                tracing::warn!(endpoint = %old.endpoint, id = %old.id, "dead-letter list full: oldest dropped");
            }
        }
        log.dead.push_back(letter.clone());
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        Ok(self.log.lock().dead.iter().take(limit).cloned().collect())
    }

    async fn take_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, EngineError> {
        let mut log = self.log.lock();
        let at = log.dead.iter().position(|d| d.id == id);
        Ok(at.and_then(|i| log.dead.remove(i)))
    }

    async fn dead_letter_count(&self) -> Result<u64, EngineError> {
        Ok(self.log.lock().dead.len() as u64)
    }
}

/// The embedded engine with its outbox: publishes of routed topics are
/// recorded for the webhooks before their id is returned.
pub struct Enqueuing {
    engine: Arc<dyn Engine>,
    outbox: LocalOutbox,
    routes: Routes,
    /// Held from a routed publish to its record, so the outbox holds each
    /// topic's messages in id order (`ordered` endpoints rely on it). The
    /// embedded engine's publish never waits on I/O: the hold is short.
    order: tokio::sync::Mutex<()>,
}

impl Enqueuing {
    /// Records `engine`'s publishes that `routes` match in `outbox`.
    pub fn new(engine: Arc<dyn Engine>, outbox: LocalOutbox, routes: Routes) -> Enqueuing {
        Enqueuing { engine, outbox, routes, order: tokio::sync::Mutex::new(()) }
    }
}

#[async_trait]
impl Engine for Enqueuing {
    fn name(&self) -> &'static str {
        self.engine.name()
    }

    async fn publish_with(
        &self,
        topic: &Topic,
        data: Bytes,
        options: PublishOptions<'_>,
    ) -> Result<Published, EngineError> {
        if !self.routes.matches(topic) {
            return self.engine.publish_with(topic, data, options).await;
        }
        {
            let mut log = self.outbox.log.lock();
            if log.entries.len() + log.reserved >= self.outbox.max_len {
                drop(log);
                crate::metrics::rejected("webhook_outbox_full");
                tracing::warn!(topic = %topic, "webhook outbox full: publish refused");
                return Err(EngineError::Full("webhook_queue.max_len"));
            }
            log.reserved += 1;
        }
        // Released on every path, also when this future is dropped.
        struct Reservation<'a>(&'a LocalOutbox);
        impl Drop for Reservation<'_> {
            fn drop(&mut self) {
                self.0.log.lock().reserved -= 1;
            }
        }
        let reservation = Reservation(&self.outbox);
        let order = self.order.lock().await;
        let published = self.engine.publish_with(topic, data.clone(), options).await?;
        if !published.duplicate {
            // Exactly the data's bytes: `data` may be a slice of a much
            // bigger buffer (hyper's read buffer) that would stay alive.
            let data = Bytes::copy_from_slice(&data);
            let message = Arc::new(Message::new(topic.clone(), published.id, published.ts, data));
            let mut log = self.outbox.log.lock();
            log.push(message, None);
            log.reserved -= 1;
            std::mem::forget(reservation);
            drop(log);
            self.outbox.added.send_modify(|n| *n = n.wrapping_add(1));
        }
        drop(order);
        Ok(published)
    }

    async fn broadcast(&self, message: Arc<Message>) -> Result<(), EngineError> {
        // Ephemeral messages are never stored, so never routed to webhooks.
        self.engine.broadcast(message).await
    }

    async fn history(
        &self,
        topic: &Topic,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<History, EngineError> {
        self.engine.history(topic, after, limit).await
    }

    async fn last_id(&self, topic: &Topic) -> Result<Option<MessageId>, EngineError> {
        self.engine.last_id(topic).await
    }

    fn watch(&self, topic: &Topic) -> BoxFuture<'static, Result<(), EngineError>> {
        self.engine.watch(topic)
    }

    fn unwatch(&self, topic: &Topic) {
        self.engine.unwatch(topic);
    }

    fn is_ready(&self) -> bool {
        self.engine.is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u64) -> Message {
        Message::new(Topic::new("t").unwrap(), MessageId::new(n, 0), n, Bytes::from(n.to_string()))
    }

    fn len(o: &LocalOutbox) -> usize {
        o.log.lock().entries.len()
    }

    #[tokio::test(start_paused = true)]
    async fn entries_stay_until_every_endpoint_is_done_and_idle_ones_are_reclaimed() {
        let o = LocalOutbox::new(2, &["a".into(), "b".into()]);
        o.enqueue_for("a", &message(1)).await.unwrap();
        o.enqueue_for("b", &message(2)).await.unwrap();
        assert!(matches!(o.enqueue_for("a", &message(3)).await, Err(EngineError::Full(_))));
        let a = o.fetch("a", "c1", 10).await.unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].only.as_deref(), Some("a"));
        for e in &a {
            o.ack("a", &e.at).await.unwrap();
        }
        assert_eq!(len(&o), 2, "b has read nothing yet");
        let b = o.fetch("b", "c1", 1).await.unwrap();
        assert!(o.reclaim("b", "c2", Duration::from_secs(5), 10).await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(6)).await;
        let again = o.reclaim("b", "c2", Duration::from_secs(5), 10).await.unwrap();
        assert_eq!(again.iter().map(|e| &e.at).collect::<Vec<_>>(), vec![&b[0].at]);
        o.ack("b", &b[0].at).await.unwrap();
        assert_eq!(len(&o), 1);
        let rest = o.fetch("b", "c1", 10).await.unwrap();
        o.ack("b", &rest[0].at).await.unwrap();
        assert_eq!(len(&o), 0);
    }

    #[tokio::test]
    async fn dead_letters_are_replaced_by_id_and_taken_once() {
        let o = LocalOutbox::new(10, &[]);
        let letter = |attempts| DeadLetter {
            id: "a:t:1-0".into(),
            endpoint: "a".into(),
            message: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            attempts,
            last_error: "HTTP 400".into(),
        };
        o.put_dead_letter(&letter(1)).await.unwrap();
        o.put_dead_letter(&letter(2)).await.unwrap();
        assert_eq!(o.dead_letter_count().await.unwrap(), 1);
        assert_eq!(o.dead_letters(10).await.unwrap()[0].attempts, 2);
        assert!(o.take_dead_letter("a:t:1-0").await.unwrap().is_some());
        assert!(o.take_dead_letter("a:t:1-0").await.unwrap().is_none());
    }
}
