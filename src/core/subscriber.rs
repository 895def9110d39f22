//! [`Subscriber`]: one client stream's membership in the bus, owned by the
//! stream's task: its bounded outbox and the topics it joined.
//!
//! A subscriber has one bounded outbox for all its topics. The hub only ever
//! `try_send`s into it; when it is full the hub marks the session closed with
//! [`Close::Slow`](super::Close::Slow) and wakes the owning task, which ends
//! the stream.

use std::sync::Arc;

use smallvec::SmallVec;

use super::engine::{Engine, EngineError};
use super::hub::{Hub, JoinKey, SubscriberHandle};
use super::mailbox::Mailbox;
use super::message::Topic;
use super::session::Session;

/// One connection's membership in the bus: its outbox and joined topics.
/// Dropping it leaves every topic.
pub struct Subscriber {
    hub: Hub,
    engine: Arc<dyn Engine>,
    /// Live messages for the joined topics, in per-topic id order.
    pub outbox: Arc<Mailbox>,
    session: Arc<Session>,
    joined: SmallVec<[(Topic, JoinKey); 1]>,
}

impl Subscriber {
    /// A subscriber whose outbox holds at most `capacity` messages.
    pub fn new(hub: Hub, engine: Arc<dyn Engine>, capacity: usize) -> Self {
        // Bounded: when full, the hub closes this session as slow (never waits).
        let outbox = Arc::new(Mailbox::new(capacity));
        Subscriber { hub, engine, outbox, session: Arc::default(), joined: SmallVec::new() }
    }

    /// The session flag the hub uses to close this subscriber.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// True when `topic` is joined.
    pub fn is_joined(&self, topic: &Topic) -> bool {
        self.joined.iter().any(|(t, _)| t == topic)
    }

    /// Topics joined.
    pub fn joined_count(&self) -> usize {
        self.joined.len()
    }

    /// Joins `topic` live; resolves once the engine guarantees delivery of
    /// every later message (see [`Engine::watch`]). Fails without joining
    /// when the hub is at its topic cap.
    pub async fn join(&mut self, topic: &Topic) -> Result<(), EngineError> {
        if self.is_joined(topic) {
            return Ok(());
        }
        let handle =
            SubscriberHandle { outbox: Arc::clone(&self.outbox), session: Arc::clone(&self.session) };
        let (key, ready) = self.hub.join(topic, handle, &*self.engine)?;
        self.joined.push((topic.clone(), key));
        if let Err(e) = ready.await {
            self.leave(topic);
            return Err(e);
        }
        Ok(())
    }

    /// The hub's tip of `topic` ([`Hub::tip`]): once this subscriber has
    /// joined it, a position equal to the tip has every later message coming
    /// to the outbox.
    pub fn tip(&self, topic: &Topic) -> Option<super::message::MessageId> {
        self.hub.tip(topic)
    }

    /// Leaves `topic`; messages already in the outbox for it must be dropped
    /// by the caller.
    pub fn leave(&mut self, topic: &Topic) {
        if let Some(i) = self.joined.iter().position(|(t, _)| t == topic) {
            let (t, key) = self.joined.swap_remove(i);
            self.hub.leave(&t, key, &*self.engine);
        }
    }

    /// Leaves every topic.
    pub fn leave_all(&mut self) {
        for (t, key) in std::mem::take(&mut self.joined) {
            self.hub.leave(&t, key, &*self.engine);
        }
    }

    /// The topic policies its hub delivers by.
    pub fn policies(&self) -> &Arc<super::policy::Policies> {
        self.hub.policies()
    }

    /// The engine this subscriber reads history from.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.leave_all();
    }
}
