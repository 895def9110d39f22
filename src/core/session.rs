//! [`Session`]: the close flag of one client stream, and [`Sessions`], the
//! registry shutdown uses to close them all.
//!
//! Whoever may end a stream (the hub on overflow, the server on shutdown, the
//! engine on a reset) calls [`Session::close`] with a [`Close`] reason; the
//! task that owns the stream waits on [`Session::wait_closed`], an atomic
//! load plus a waker registration, so the per-message loop takes no lock.
//!
//! A session that carries a client stream also holds its [`ConnInfo`]
//! (transport, peer, user, topics, messages out): what the admin API lists.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::close::Close;

/// State shared between a session's task and whoever may close it (the hub
/// on overflow, the server on shutdown).
///
/// Waiting is an atomic load plus an [`AtomicWaker`] registration: the
/// owning task polls it on every wake-up, so it must not take a lock.
pub struct Session {
    reason: AtomicU8,
    waker: AtomicWaker,
    kill: std::sync::OnceLock<Arc<dyn Kill>>,
    /// What the admin API shows of the stream (set once it opens).
    info: std::sync::OnceLock<Arc<ConnInfo>>,
    id: u64,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            reason: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            kill: std::sync::OnceLock::new(),
            info: std::sync::OnceLock::new(),
            id: next_id(),
        }
    }
}

/// A connection id unique across processes with high probability: this
/// process's random 24-bit tag over a 40-bit counter.
fn next_id() -> u64 {
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
    static TAG: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let tag = *TAG.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        (h.finish() & 0xff_ffff).max(1)
    });
    (tag << 40) | (NEXT.fetch_add(1, Ordering::Relaxed) & ((1 << 40) - 1))
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("reason", &self.closed()).finish_non_exhaustive()
    }
}

/// Aborts a stream whose owner cannot be woken by the session flag, e.g. a
/// streamed HTTP body that the server stopped polling because the client
/// stopped reading: its HTTP/2 stream, or its HTTP/1.1 connection.
pub trait Kill: Send + Sync {
    /// Abort the stream now (it is reset, or its connection's I/O starts
    /// failing).
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

    /// The connection's id: unique across processes (with high
    /// probability), never 0. Presence shows it as `client` (hex).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The id as presence and the admin API show it: 16 hex digits.
    pub fn client_id(&self) -> String {
        format!("{:016x}", self.id)
    }

    /// Installs the connection's kill switch (once).
    pub fn set_kill(&self, kill: Arc<dyn Kill>) {
        let _ = self.kill.set(kill);
    }

    /// Attaches what the admin API shows of this stream (once).
    pub fn set_info(&self, info: Arc<ConnInfo>) {
        let _ = self.info.set(info);
    }

    /// What the admin API shows of this stream, once it opened.
    pub fn info(&self) -> Option<&Arc<ConnInfo>> {
        self.info.get()
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

    /// Closes the live session with id `id` for `reason`; false when none has it.
    pub fn close_one(&self, id: u64, reason: Close) -> bool {
        let inner = self.inner.lock();
        match inner.live.iter().find(|(_, s)| s.id() == id) {
            Some((_, s)) => {
                s.close(reason);
                true
            }
            None => false,
        }
    }

    /// The live sessions (for the admin API; walks the registry).
    pub fn snapshot(&self) -> Vec<Arc<Session>> {
        self.inner.lock().live.iter().map(|(_, s)| Arc::clone(s)).collect()
    }

    /// At most `limit` live sessions that carry a [`ConnInfo`], and how
    /// many carry one in all (one walk under the lock, no allocation past
    /// `limit`).
    pub fn listed(&self, limit: usize) -> (Vec<Arc<Session>>, usize) {
        let inner = self.inner.lock();
        let mut out = Vec::with_capacity(limit.min(inner.live.len()));
        let mut total = 0;
        for (_, s) in inner.live.iter().filter(|(_, s)| s.info().is_some()) {
            total += 1;
            if out.len() < limit {
                out.push(Arc::clone(s));
            }
        }
        (out, total)
    }

    /// Live streams per transport label (of their [`ConnInfo`]), in the
    /// order first seen.
    pub fn count_by_transport(&self) -> Vec<(&'static str, usize)> {
        let inner = self.inner.lock();
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for info in inner.live.iter().filter_map(|(_, s)| s.info()) {
            match counts.iter_mut().find(|(t, _)| *t == info.transport) {
                Some((_, n)) => *n += 1,
                None => counts.push((info.transport, 1)),
            }
        }
        counts
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

/// What the admin API shows of one client stream: set when the stream
/// opens, read only by the admin API. One small allocation per stream; the
/// per-message cost is one relaxed atomic add ([`ConnInfo::sent`]), and the
/// topic list changes only on subscribe and unsubscribe.
#[derive(Debug)]
pub struct ConnInfo {
    /// Transport label (`ws`, `sse`, `poll`, `grpc`).
    pub transport: &'static str,
    /// The gRPC method (`connect`, `subscribe`), if any.
    pub rpc: Option<&'static str>,
    /// The peer's address, when known.
    pub peer: Option<std::net::SocketAddr>,
    /// The credential's user (`sub`), if any.
    pub user: Option<Arc<str>>,
    /// When the stream opened, Unix milliseconds.
    pub opened_ms: u64,
    topics: parking_lot::Mutex<Vec<super::Topic>>,
    sent: std::sync::atomic::AtomicU64,
}

impl ConnInfo {
    /// A record of a stream opened now.
    pub fn new(
        transport: &'static str,
        rpc: Option<&'static str>,
        peer: Option<std::net::SocketAddr>,
        user: Option<Arc<str>>,
    ) -> Self {
        let opened_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        ConnInfo {
            transport,
            rpc,
            peer,
            user,
            opened_ms,
            topics: parking_lot::Mutex::default(),
            sent: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Replaces the subscribed topics.
    pub fn set_topics(&self, topics: impl IntoIterator<Item = super::Topic>) {
        let mut t = self.topics.lock();
        t.clear();
        t.extend(topics);
    }

    /// The subscribed topics.
    pub fn topics(&self) -> Vec<super::Topic> {
        self.topics.lock().clone()
    }

    /// Counts `n` messages written to the client.
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Messages written to the client so far.
    pub fn messages_out(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.inner.lock().live.try_remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_streams_with_info_are_listed_and_counted() {
        let sessions = Arc::new(Sessions::default());
        let all: Vec<Arc<Session>> = (0..4).map(|_| Arc::new(Session::default())).collect();
        let _guards: Vec<SessionGuard> = all.iter().map(|s| sessions.register(s)).collect();
        for (s, t) in all.iter().zip(["ws", "sse", "ws"]) {
            s.set_info(Arc::new(ConnInfo::new(t, None, None, None)));
        }
        let (listed, total) = sessions.listed(2);
        assert_eq!((listed.len(), total), (2, 3));
        let mut counts = sessions.count_by_transport();
        counts.sort_unstable();
        assert_eq!(counts, [("sse", 1), ("ws", 2)]);
        let info = all[0].info().expect("info");
        info.sent(2);
        info.set_topics([crate::core::Topic::new("a").expect("topic")]);
        assert_eq!((info.messages_out(), info.topics().len()), (2, 1));
        assert!(sessions.close_one(all[3].id(), Close::Kicked));
        assert_eq!(all[3].closed(), Some(Close::Kicked));
    }
}
