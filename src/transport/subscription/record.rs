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
///
/// Kept small (every stream's task holds it): the method and the peer are
/// read from the stream's [`ConnInfo`], the messages written from its count.
pub(super) struct Record {
    opened: Instant,
    /// Frames received from the client (logged when `reads_input`).
    received: u64,
    reads_input: bool,
    reason: Close,
}

impl Subscription {
    /// Starts the open/close record (log line and metrics), when the stream
    /// really begins. A stream that `reads_input` (WebSocket, `Connect`)
    /// logs the frames it received as `msgs_in`.
    pub(crate) fn open(&mut self, rpc: Option<&'static str>, peer: Option<SocketAddr>, reads_input: bool) {
        self.describe(rpc, peer);
        self.opened(reads_input);
    }

    /// Names the stream's method and peer for its record, before it opens
    /// (so that a connection's task need not keep them until then).
    pub(crate) fn describe(&mut self, rpc: Option<&'static str>, peer: Option<SocketAddr>) {
        let user = self.access.grants.user.clone();
        self.info = Some(Arc::new(ConnInfo::new(self.transport.label(), rpc, peer, user)));
    }

    /// [`Subscription::open`] of a stream already described (one that was
    /// not is opened with no method and no peer).
    pub(crate) fn opened(&mut self, reads_input: bool) {
        if self.info.is_none() {
            self.describe(None, None);
        }
        let Some(info) = self.info.clone() else { return };
        metrics::connection_opened(self.transport);
        tracing::info!(transport = self.transport.label(), rpc = info.rpc, peer = %Peer(info.peer), "connection opened");
        self.record =
            Some(Record { opened: Instant::now(), received: 0, reads_input, reason: Close::Client });
        self.session.set_info(info);
        self.sync_topics();
    }

    /// Counts a frame received from the client (logged as `msgs_in`).
    pub(crate) fn received(&mut self) {
        if let Some(r) = self.record.as_mut() {
            r.received += 1;
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
        let info = self.info.as_deref();
        tracing::info!(
            transport = self.transport.label(),
            rpc = info.and_then(|i| i.rpc),
            peer = %Peer(info.and_then(|i| i.peer)),
            duration_ms = r.opened.elapsed().as_millis() as u64,
            msgs_in = r.reads_input.then_some(r.received),
            msgs_out = info.map_or(0, ConnInfo::messages_out),
            reason = reason.label(),
            "connection closed"
        );
    }
}
