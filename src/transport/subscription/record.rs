//! The open/close record of a stream: a log line and metrics at open, and
//! at close however the stream ends, and the admin API's connection record.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::Subscription;
use crate::core::session::ConnInfo;
use crate::core::Close;
use crate::metrics;

/// The open/close accounting of a stream: a log line and metrics at open,
/// and at close however the stream ends (finished, or dropped by hyper
/// because the client left or the connection was killed).
pub(super) struct Record {
    rpc: Option<&'static str>,
    peer: Option<SocketAddr>,
    opened: Instant,
    received: Option<u64>,
    reason: Close,
}

impl Subscription {
    /// Starts the open/close record (log line and metrics), when the stream
    /// really begins. A stream that `reads_input` (WebSocket, `Connect`)
    /// logs the frames it received as `msgs_in`.
    pub(crate) fn open(&mut self, rpc: Option<&'static str>, peer: Option<SocketAddr>, reads_input: bool) {
        metrics::connection_opened(self.transport);
        tracing::info!(transport = self.transport.label(), rpc, peer = %Peer(peer), "connection opened");
        let received = reads_input.then_some(0);
        self.record = Some(Record { rpc, peer, opened: Instant::now(), received, reason: Close::Client });
        let info =
            Arc::new(ConnInfo::new(self.transport.label(), rpc, peer, self.access.grants.user.clone()));
        self.session.set_info(Arc::clone(&info));
        self.info = Some(info);
        self.sync_topics();
    }

    /// Counts a frame received from the client (logged as `msgs_in`).
    pub(crate) fn received(&mut self) {
        if let Some(n) = self.record.as_mut().and_then(|r| r.received.as_mut()) {
            *n += 1;
        }
    }

    /// Why the stream ended, when its session has no reason of its own.
    pub(crate) fn ended(&mut self, reason: Close) {
        if let Some(r) = self.record.as_mut() {
            r.reason = reason;
        }
    }
}

/// A peer address for logs (empty when unknown).
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => p.fmt(f),
            None => Ok(()),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(r) = self.record.take() else {
            return;
        };
        let reason = self.session.closed().unwrap_or(r.reason);
        metrics::connection_closed(self.transport, reason.label());
        tracing::info!(
            transport = self.transport.label(),
            rpc = r.rpc,
            peer = %Peer(r.peer),
            duration_ms = r.opened.elapsed().as_millis() as u64,
            msgs_in = r.received,
            msgs_out = self.sent,
            reason = reason.label(),
            "connection closed"
        );
    }
}
