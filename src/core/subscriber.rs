//! [`Subscriber`] (owned by a transport task) and [`SubscriberHandle`] (held
//! by the hub, one per joined topic).
//!
//! A subscriber has one bounded outbox for all its topics. The hub only ever
//! `try_send`s into it; when it is full the hub marks the session closed with
//! [`Close::Slow`] and wakes the transport task, which ends the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use smallvec::SmallVec;
use tokio::sync::mpsc;

use super::close::Close;
use super::engine::{Engine, EngineError};
use super::hub::{Hub, JoinKey};
use super::message::{Message, Topic};

/// State shared between a session's task and whoever may close it (the hub
/// on overflow, the server on shutdown).
///
/// Waiting is an atomic load plus an [`AtomicWaker`] registration: the
/// owning task polls it on every wake-up, so it must not take a lock.
#[derive(Default)]
pub struct Session {
    reason: AtomicU8,
    waker: AtomicWaker,
    kill: std::sync::OnceLock<Arc<dyn Kill>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("reason", &self.closed()).finish_non_exhaustive()
    }
}

/// Aborts a connection whose owner cannot be woken by the session flag,
/// e.g. a streamed HTTP body that the server stopped polling because the
/// client stopped reading.
pub trait Kill: Send + Sync {
    /// Abort the connection now (its I/O starts failing).
    fn kill(&self);
}

impl Session {
    /// Asks the owning task to end the connection for `reason` (first reason
    /// wins).
    pub fn close(&self, reason: Close) {
        if self.reason.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.waker.wake();
            // A slow consumer may be blocked in a write nobody polls; a
            // shutdown instead lets the owner end the stream cleanly.
            if reason != Close::Shutdown {
                if let Some(kill) = self.kill.get() {
                    kill.kill();
                }
            }
        }
    }

    /// Installs the connection's kill switch (once).
    pub fn set_kill(&self, kill: Arc<dyn Kill>) {
        let _ = self.kill.set(kill);
    }

    /// The reason given to [`Session::close`], if any.
    pub fn closed(&self) -> Option<Close> {
        Close::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Resolves when [`Session::close`] was called. Only the owning task
    /// should wait (one waker is kept).
    pub fn wait_closed(&self) -> WaitClosed<'_> {
        WaitClosed(self)
    }
}

/// Future of [`Session::wait_closed`].
#[derive(Debug)]
pub struct WaitClosed<'a>(&'a Session);

impl Future for WaitClosed<'_> {
    type Output = Close;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Close> {
        if let Some(reason) = self.0.closed() {
            return Poll::Ready(reason);
        }
        self.0.waker.register(cx.waker());
        match self.0.closed() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        }
    }
}

/// Every live session, so shutdown can close them all (each with
/// [`Close::Shutdown`]) without every connection polling a shared token.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: parking_lot::Mutex<SessionsInner>,
}

#[derive(Debug, Default)]
struct SessionsInner {
    live: slab::Slab<Arc<Session>>,
    closing: Option<Close>,
}

/// Membership in [`Sessions`]; dropping it unregisters.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    key: usize,
}

impl Sessions {
    /// Registers `session`; if everything is already closing, closes it too.
    pub fn register(self: &Arc<Self>, session: &Arc<Session>) -> SessionGuard {
        let mut inner = self.inner.lock();
        if let Some(reason) = inner.closing {
            session.close(reason);
        }
        let key = inner.live.insert(Arc::clone(session));
        SessionGuard { sessions: Arc::clone(self), key }
    }

    /// Closes every live session and every later one with `reason`.
    pub fn close_all(&self, reason: Close) {
        let mut inner = self.inner.lock();
        inner.closing = Some(reason);
        for (_, s) in inner.live.iter() {
            s.close(reason);
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.inner.lock().live.len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.inner.lock().live.try_remove(self.key);
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
        Subscriber { hub, engine, tx, outbox, session: Arc::default(), joined: SmallVec::new() }
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
        let handle = SubscriberHandle { tx: self.tx.clone(), session: Arc::clone(&self.session) };
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
