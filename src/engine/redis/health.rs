//! Readiness: a health task pings Redis every second on a connection of its
//! own, and readiness follows its answers; state changes are logged once.
//!
//! The health connection carries nothing else, so a ping never queues
//! behind data-path traffic (a large history reply, a publish held by
//! Redis): readiness says whether Redis is reachable, not how busy the
//! shared command connection is. A data-path command that fails or times
//! out is counted and makes the health task probe at once, so an outage
//! still turns readiness off within one ping.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::conn::RedisConn;
use super::{unavailable, RedisEngine};
use crate::core::engine::EngineError;

impl RedisEngine {
    /// Runs `cmd` with the command timeout; a failure is counted and asks
    /// the health task for an immediate probe (readiness follows the probe,
    /// not the data path).
    pub(super) async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.inner.opts.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.data_path_failed();
                Err(unavailable(e))
            }
            Err(_) => {
                self.data_path_failed();
                Err(EngineError::Unavailable("redis command timed out".into()))
            }
        }
    }

    /// A data-path command failed: counted, and the health task probes now.
    fn data_path_failed(&self) {
        crate::metrics::engine_error();
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

    /// Pings every second (and at once when a data-path command failed) on
    /// the health connection; readiness follows.
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
            match self.ping(&mut conn).await {
                Ok(()) => self.set_ready(true, None),
                Err(why) => {
                    // A broken or stuck connection is replaced next time.
                    conn = None;
                    self.set_ready(false, Some(&why));
                }
            }
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
