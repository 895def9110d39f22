//! What every adapter is handed: [`AppState`] (the bus, the configuration,
//! the shutdown handle) and, per connection, [`Peer`] with its
//! [`ConnControl`] kill switch; per HTTP/2 stream, [`StreamControl`]. It
//! sits below the transports and the server, which both import it; it
//! imports neither.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::abuse::Abuse;
use crate::auth::Auth;
use crate::config::Config;
use crate::core::expiry::Expiries;
use crate::core::session::Kill;
use crate::core::Bus;
use crate::error::{ApiError, Code};
use crate::pacing::Pacer;
use crate::shutdown::Shutdown;

/// Everything a handler needs: one `Arc`, so a clone (every request, every
/// connection's task) is one atomic increment and one pointer of memory.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Shares `parts`.
    pub fn new(parts: Shared) -> Self {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    /// Engine + hub.
    pub bus: Bus,
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Shutdown token and task tracker.
    pub shutdown: Shutdown,
    /// Credentials: tokens and API keys.
    pub auth: Arc<Auth>,
    /// Abuse limits.
    pub abuse: Arc<Abuse>,
    /// Reconnect hints.
    pub pacer: Pacer,
    /// Closes streams whose token expires.
    pub expiries: Arc<Expiries>,
    /// Outbound workers, inbound sources and dead letters.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// Publish, delivery and topic rates for the admin API (sampled by
    /// `core::rates::run`).
    pub rates: Arc<crate::core::rates::Rates>,
    /// Presence entries, events and occupancy webhooks.
    pub presence: Arc<crate::presence::Presence>,
}

impl Shared {
    /// True when the engine is reachable and the process is not draining:
    /// what `/readyz` and gRPC health report.
    pub fn is_ready(&self) -> bool {
        self.bus.engine.is_ready() && !self.shutdown.is_shutting_down()
    }

    /// Refuses new long-lived connections and streams once draining, with
    /// a reconnect hint (every client is refused alike: spread them).
    pub fn check_open(&self) -> Result<(), ApiError> {
        if self.shutdown.is_shutting_down() {
            return Err(ApiError::new(Code::Unavailable, "shutting down").with_retry(self.pacer.hint()));
        }
        Ok(())
    }
}

/// The client's address as the abuse limits see it (the peer, or the
/// address a trusted proxy forwarded: `Abuse::client_ip`), put in every
/// request's extensions by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The address the server resolved for a request with these
    /// extensions; the connection's peer when it resolved none (a handler
    /// called outside the server, as in unit tests).
    pub fn of(extensions: &axum::http::Extensions) -> ClientIp {
        extensions.get::<ClientIp>().copied().unwrap_or_else(|| {
            let peer = extensions.get::<axum::extract::ConnectInfo<Peer>>().map(|c| c.0 .0.ip());
            ClientIp(peer.unwrap_or(IpAddr::from([0, 0, 0, 0])))
        })
    }
}

/// Handlers take the resolved address as an extractor.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp::of(&parts.extensions))
    }
}

/// What a handler knows of its connection (axum `ConnectInfo`): the peer
/// address and the connection's kill switch.
#[derive(Clone, Debug)]
pub struct Peer(pub SocketAddr, pub Arc<ConnControl>);

impl Peer {
    /// The kill switch of the request the caller runs in: on HTTP/2, its
    /// own stream's ([`StreamControl`]: killing it resets that stream
    /// only, the connection's other streams go on); on HTTP/1.1, where a
    /// stuck write can only end with the connection, the connection's
    /// (armed here).
    pub fn kill_switch(&self) -> Arc<dyn Kill> {
        match STREAM.try_with(Arc::clone) {
            Ok(stream) => stream,
            Err(_) => {
                self.1.arm();
                Arc::clone(&self.1) as Arc<dyn Kill>
            }
        }
    }
}

tokio::task_local! {
    /// The [`StreamControl`] of the HTTP/2 stream whose task is running
    /// (set by the server's executor; absent on HTTP/1.1).
    pub(crate) static STREAM: Arc<StreamControl>;
}

/// Kill switch of one HTTP/2 stream. The server runs each stream in a task
/// of its own; once killed, that task stops polling the stream and drops
/// it unless it finished on the same wake-up (a body that could still be
/// polled ends cleanly), so hyper resets just that stream (`RST_STREAM`)
/// even while its body waits on flow control for a client that does not
/// read it.
#[derive(Debug, Default)]
pub struct StreamControl {
    killed: AtomicBool,
    waker: AtomicWaker,
}

impl StreamControl {
    /// Resolves once [`Kill::kill`] was called.
    pub fn killed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.killed.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.killed.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

impl Kill for StreamControl {
    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Per-connection kill switch: once killed, the connection's reads and
/// writes fail, which makes hyper drop it even while a response body waits
/// on a client that stopped reading. Used on HTTP/1.1 (one stream per
/// connection); HTTP/2 streams have a [`StreamControl`] each.
///
/// It is inert until [`ConnControl::arm`]ed (by [`Peer::kill_switch`]):
/// only then does the I/O remember the wakers of whoever polls it.
/// Remembering them always would keep the finished HTTP task of every
/// upgraded WebSocket alive through a stale waker (≈ 2.5 KiB per idle
/// connection).
///
/// It also records whether the connection got past its handshake (first
/// request headers, or the HTTP/2 preface and SETTINGS): the server closes
/// connections that do not within `http.handshake_timeout`.
#[derive(Debug, Default)]
pub struct ConnControl {
    armed: AtomicBool,
    killed: AtomicBool,
    handshaken: AtomicBool,
    requested: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
}

impl ConnControl {
    /// Records that the client completed its handshake.
    pub fn set_handshaken(&self) {
        self.handshaken.store(true, Ordering::Relaxed);
    }

    /// True once [`ConnControl::set_handshaken`] was called.
    pub fn handshaken(&self) -> bool {
        self.handshaken.load(Ordering::Relaxed)
    }

    /// True for the connection's first request (the first call only): the
    /// one that counts as its connection attempt.
    pub fn first_request(&self) -> bool {
        !self.requested.swap(true, Ordering::Relaxed)
    }

    /// Makes [`Kill::kill`] effective for this connection.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Release);
    }

    /// Checks the switch before a read; remembers the reader when armed.
    pub(crate) fn check_read(&self, cx: &Context<'_>) -> Result<(), io::Error> {
        self.check(&self.read, cx)
    }

    /// Checks the switch before a write; remembers the writer when armed.
    pub(crate) fn check_write(&self, cx: &Context<'_>) -> Result<(), io::Error> {
        self.check(&self.write, cx)
    }

    fn check(&self, waker: &AtomicWaker, cx: &Context<'_>) -> Result<(), io::Error> {
        if self.armed.load(Ordering::Acquire) {
            if self.killed.load(Ordering::Acquire) {
                return Err(aborted());
            }
            waker.register(cx.waker());
        }
        Ok(())
    }
}

impl Kill for ConnControl {
    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.read.wake();
        self.write.wake();
    }
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the server")
}
