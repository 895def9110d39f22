//! Readiness: a health task pings Redis every second on a connection of its
//! own, and readiness follows its answers; state changes are logged once.
//!
//! The health connection carries nothing else, so a ping never queues
//! behind data-path traffic (a large history reply, a publish held by
//! Redis): readiness says whether Redis is reachable, not how busy the
//! shared command connection is. A data-path command that fails or times
//! out is counted and makes the health task probe at once, so an outage
//! still turns readiness off within one ping; one that broke the shared
//! connection turns it off at once, until that connection answers a ping.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::conn::RedisConn;
use super::{is_rejection, unavailable, RedisEngine};
use crate::core::engine::EngineError;

impl RedisEngine {
    /// Runs `cmd` with the command timeout. A failure is counted and asks
    /// the health task for an immediate probe; one that broke the shared
    /// connection (I/O, dropped, refused) also marks the engine unready until
    /// that connection answers again. A timeout (queued behind other
    /// traffic) or an error about the command itself leaves readiness to
    /// the pings. An error reply to a request a client shaped
    /// ([`super::is_rejection`]) is [`EngineError::Rejected`] and changes
    /// nothing.
    pub(super) async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.inner.opts.op_timeout, fut).await {
            Ok(Ok(v)) => {
                if self.inner.data_broken.swap(false, Ordering::AcqRel) {
                    self.inner.probe.notify_one();
                }
                Ok(v)
            }
            Ok(Err(e)) if is_rejection(&e) => Err(EngineError::Rejected(e.to_string())),
            Ok(Err(e)) => {
                if breaks_connection(&e) {
                    self.connection_failed(&e.to_string());
                } else {
                    crate::metrics::engine_error();
                    self.inner.probe.notify_one();
                }
                Err(unavailable(e))
            }
            Err(_) => {
                crate::metrics::engine_error();
                self.inner.probe.notify_one();
                Err(EngineError::Unavailable("redis command timed out".into()))
            }
        }
    }

    /// A connection to Redis failed (the shared one, or a reader's: evidence
    /// of an outage the shared connection may not have noticed yet): not
    /// ready until the health task's pings answer on both its own and the
    /// shared connection, so a client let back in meets a working data path.
    pub(super) fn connection_failed(&self, why: &str) {
        self.inner.data_broken.store(true, Ordering::Release);
        self.set_ready(false, Some(why));
        self.inner.probe.notify_one();
    }

    /// Records readiness; logs when it changes (and the first decision), and
    /// counts every failure.
    fn set_ready(&self, ready: bool, why: Option<&str>) {
        let was = self.inner.ready.swap(ready, Ordering::AcqRel);
        let first = !self.inner.decided.swap(true, Ordering::AcqRel);
        if was != ready || first {
            if ready {
                tracing::info!(engine = "redis", "redis reachable: ready");
            } else {
                tracing::warn!(engine = "redis", error = why.unwrap_or(""), "redis unreachable: not ready");
            }
        }
        if !ready {
            crate::metrics::engine_error();
        }
    }

    /// Pings every second (and at once when a data-path command failed);
    /// readiness follows the health connection's answer. The shared command
    /// connection is pinged beside it only to notice that it broke (it then
    /// reconnects by itself): its answer may queue behind data, and a ping
    /// that timed out there says nothing about Redis.
    pub(super) async fn health(self, token: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut conn: Option<RedisConn> = None;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.inner.probe.notified() => {}
            }
            let (own, shared) = tokio::join!(self.ping(&mut conn), self.ping_commands());
            match shared {
                Some(true) => self.inner.data_broken.store(false, Ordering::Release),
                Some(false) => self.inner.data_broken.store(true, Ordering::Release),
                None => {}
            }
            match own {
                Err(why) => {
                    // A broken or stuck connection is replaced next time.
                    conn = None;
                    self.set_ready(false, Some(&why));
                }
                Ok(()) if self.inner.data_broken.load(Ordering::Acquire) => {
                    self.set_ready(false, Some("command connection failed; reconnecting"));
                }
                Ok(()) => self.set_ready(true, None),
            }
        }
    }

    /// One `PING` on the shared command connection: `Some(true)` when it
    /// answered, `Some(false)` when it failed, `None` when it timed out
    /// (queued behind other commands).
    async fn ping_commands(&self) -> Option<bool> {
        let Ok(mut c) = self.conn().await else { return Some(false) };
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.inner.opts.op_timeout, ping.query_async::<String>(&mut c)).await {
            Ok(Ok(_)) => Some(true),
            Ok(Err(e)) if e.is_timeout() => None,
            Ok(Err(_)) => Some(false),
            Err(_) => None,
        }
    }

    /// One `PING` on the health connection (opened on demand), within the
    /// command timeout.
    async fn ping(&self, conn: &mut Option<RedisConn>) -> Result<(), String> {
        let opts = &self.inner.opts;
        let timeout = opts.op_timeout;
        let c = match conn {
            Some(c) => c,
            None => match tokio::time::timeout(timeout, self.inner.clients.health(opts)).await {
                Ok(Ok(c)) => conn.insert(c),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("redis connect timed out".into()),
            },
        };
        match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(c)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("redis ping timed out".into()),
        }
    }
}

/// Whether `e` means the connection itself failed (as opposed to a timeout
/// or an error about the command).
fn breaks_connection(e: &redis::RedisError) -> bool {
    !e.is_timeout()
        && (e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error())
}
