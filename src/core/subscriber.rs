//! [`Subscriber`] (owned by a transport task) and [`SubscriberHandle`] (held
//! by the hub, one per joined topic).
//!
//! A subscriber has one bounded outbox for all its topics. The hub only ever
//! `try_send`s into it; when it is full the hub marks the session closed with
//! [`Close::Slow`] and wakes the transport task, which ends the connection.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use smallvec::SmallVec;
use tokio::sync::{mpsc, Notify};

use super::close::Close;
use super::engine::{Engine, EngineError};
use super::hub::{Hub, JoinKey};
use super::message::{Message, Topic};

/// State shared between a session's task and the hub's handles.
#[derive(Debug, Default)]
pub struct Session {
    reason: AtomicU8,
    notify: Notify,
}

impl Session {
    /// Asks the owning task to end the connection for `reason` (first reason
    /// wins).
    pub fn close(&self, reason: Close) {
        if self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// The reason given to [`Session::close`], if any.
    pub fn closed(&self) -> Option<Close> {
        Close::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Resolves when [`Session::close`] was called.
    pub async fn wait_closed(&self) -> Close {
        loop {
            if let Some(reason) = self.closed() {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

/// The hub's side of a subscriber: the outbox sender and the session.
#[derive(Debug, Clone)]
pub struct SubscriberHandle {
    pub(super) tx: mpsc::Sender<Arc<Message>>,
    pub(super) session: Arc<Session>,
}

/// One connection's membership in the bus: its outbox and joined topics.
/// Dropping it leaves every topic.
pub struct Subscriber {
    hub: Hub,
    engine: Arc<dyn Engine>,
    tx: mpsc::Sender<Arc<Message>>,
    /// Live messages for the joined topics, in per-topic id order.
    pub outbox: mpsc::Receiver<Arc<Message>>,
    session: Arc<Session>,
    joined: SmallVec<[(Topic, JoinKey); 1]>,
}

impl Subscriber {
    /// A subscriber whose outbox holds at most `capacity` messages.
    pub fn new(hub: Hub, engine: Arc<dyn Engine>, capacity: usize) -> Self {
        // Bounded: when full, the hub closes this session as slow (never waits).
        let (tx, outbox) = mpsc::channel(capacity.max(1));
        Subscriber {
            hub,
            engine,
            tx,
            outbox,
            session: Arc::default(),
            joined: SmallVec::new(),
        }
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
    /// every later message (see [`Engine::watch`]).
    pub async fn join(&mut self, topic: &Topic) -> Result<(), EngineError> {
        if self.is_joined(topic) {
            return Ok(());
        }
        let handle = SubscriberHandle {
            tx: self.tx.clone(),
            session: Arc::clone(&self.session),
        };
        let (key, ready) = self.hub.join(topic, handle, &*self.engine);
        self.joined.push((topic.clone(), key));
        if let Err(e) = ready.await {
            self.leave(topic);
            return Err(e);
        }
        Ok(())
    }

    /// Leaves `topic`; messages already in the outbox for it must be dropped
    /// by the caller.
    pub fn leave(&mut self, topic: &Topic) {
        if let Some(i) = self.joined.iter().position(|(t, _)| t == topic) {
            let (t, key) = self.joined.swap_remove(i);
            self.hub.leave(&t, key, &*self.engine);
        }
    }

    /// The engine this subscriber reads history from.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for (t, key) in std::mem::take(&mut self.joined) {
            self.hub.leave(&t, key, &*self.engine);
        }
    }
}
