//! What every adapter is handed: [`AppState`] (the bus, the configuration,
//! the shutdown handle) and, per connection, [`Peer`] with its
//! [`ConnControl`] kill switch. It sits below the transports and the server,
//! which both import it; it imports neither.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Context;

use futures_util::task::AtomicWaker;

use crate::config::Config;
use crate::core::session::Kill;
use crate::core::Bus;
use crate::error::{ApiError, Code};
use crate::shutdown::Shutdown;

/// Everything a handler needs. Clone = `Arc` bumps.
#[derive(Clone)]
pub struct AppState {
    /// Engine + hub.
    pub bus: Bus,
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Shutdown token and task tracker.
    pub shutdown: Shutdown,
}

impl AppState {
    /// True when the engine is reachable and the process is not draining:
    /// what `/readyz` and gRPC health report.
    pub fn is_ready(&self) -> bool {
        self.bus.engine.is_ready() && !self.shutdown.is_shutting_down()
    }

    /// Refuses new long-lived connections and streams once draining.
    pub fn check_open(&self) -> Result<(), ApiError> {
        if self.shutdown.is_shutting_down() {
            return Err(ApiError::new(Code::Unavailable, "shutting down"));
        }
        Ok(())
    }
}

/// What a handler knows of its connection (axum `ConnectInfo`): the peer
/// address and the connection's kill switch.
#[derive(Clone, Debug)]
pub struct Peer(pub SocketAddr, pub Arc<ConnControl>);

/// Per-connection kill switch: once killed, the connection's reads and
/// writes fail, which makes hyper drop it even while a response body waits
/// on a client that stopped reading. (On HTTP/2 this ends every stream of
/// the connection.)
///
/// It is inert until [`ConnControl::arm`]ed (by the SSE handler): only then
/// does the I/O remember the wakers of whoever polls it. Remembering them
/// always would keep the finished HTTP task of every upgraded WebSocket
/// alive through a stale waker (≈ 2.5 KiB per idle connection).
#[derive(Debug, Default)]
pub struct ConnControl {
    armed: AtomicBool,
    killed: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
}

impl ConnControl {
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
