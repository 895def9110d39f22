//! The [`Hub`]: topic → local subscribers, fed by the engine's [`Listener`]
//! calls.
//!
//! # Backpressure invariant
//!
//! Fan-out never waits for a subscriber. Each message is offered to every
//! subscriber's bounded outbox with `try_send`; a full outbox closes that
//! session with [`Close::Slow`] (its client resumes from its cursor), and a
//! closed one is skipped. No lock is held across subscribers of different
//! topics: the topic map is sharded (`DashMap`) and each topic's subscriber
//! list has its own read-mostly lock, taken for reading by fan-out.

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use slab::Slab;
use tokio::sync::mpsc::error::TrySendError;

use super::close::Close;
use super::engine::{Engine, Listener};
use super::message::{Message, Topic};
use super::subscriber::SubscriberHandle;

/// Registry of local subscribers per topic. Clone = `Arc` bump.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Default)]
struct HubInner {
    topics: DashMap<Topic, Arc<TopicSubs>>,
}

#[derive(Default)]
struct TopicSubs {
    subs: RwLock<Slab<SubscriberHandle>>,
}

/// Where a subscriber sits in the hub; needed to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinKey(usize);

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `handle` to `topic`'s subscribers and registers the topic with
    /// the engine (under the same shard lock as the insertion, so a watch and
    /// the unwatch of a racing last leave are seen in order). Await the
    /// returned future before reading history: it resolves once the engine
    /// delivers every later message.
    pub fn join(
        &self,
        topic: &Topic,
        handle: SubscriberHandle,
        engine: &dyn Engine,
    ) -> (JoinKey, futures_util::future::BoxFuture<'static, Result<(), super::engine::EngineError>>) {
        let entry = self.inner.topics.entry(topic.clone()).or_default();
        let key = entry.subs.write().insert(handle);
        let ready = engine.watch(topic);
        drop(entry);
        (JoinKey(key), ready)
    }

    /// Removes a subscriber; the last one out unregisters the topic.
    pub fn leave(&self, topic: &Topic, key: JoinKey, engine: &dyn Engine) {
        let removed = self.inner.topics.remove_if(topic, |_, subs| {
            let mut g = subs.subs.write();
            g.try_remove(key.0);
            g.is_empty()
        });
        if removed.is_some() {
            engine.unwatch(topic);
        }
    }

    /// Number of topics with local subscribers.
    pub fn topic_count(&self) -> usize {
        self.inner.topics.len()
    }

    /// Number of (subscriber, topic) memberships (walks every topic: for
    /// scrapes, not hot paths).
    pub fn subscription_count(&self) -> usize {
        let subs: Vec<_> = self.inner.topics.iter().map(|e| Arc::clone(e.value())).collect();
        subs.iter().map(|t| t.subs.read().len()).sum()
    }

    /// Number of local subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        self.inner.topics.get(topic).map_or(0, |t| t.subs.read().len())
    }

    /// Offers `message` to every local subscriber of its topic.
    pub fn fan_out(&self, message: &Arc<Message>) {
        let Some(subs) = self.inner.topics.get(&message.topic).map(|e| Arc::clone(e.value())) else {
            return;
        };
        let subs = subs.subs.read();
        for (_, handle) in subs.iter() {
            match handle.tx.try_send(Arc::clone(message)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => handle.session.close(Close::Slow),
                Err(TrySendError::Closed(_)) => {}
            }
        }
    }
}

impl Listener for Hub {
    fn deliver(&self, message: &Arc<Message>) {
        self.fan_out(message);
    }

    fn reset(&self, topic: &Topic) {
        if let Some(subs) = self.inner.topics.get(topic).map(|e| Arc::clone(e.value())) {
            for (_, handle) in subs.subs.read().iter() {
                handle.session.close(Close::Unavailable);
            }
        }
    }
}
