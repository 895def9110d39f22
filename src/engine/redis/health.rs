//! Readiness: a health task pings every second, and every command that
//! cannot reach Redis or times out marks the engine unready (an error reply
//! to one command does not: [`super::is_rejection`]); state changes are
//! logged once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{is_rejection, unavailable, RedisEngine};
use crate::core::engine::EngineError;

impl RedisEngine {
    /// Runs `cmd` with the command timeout; failures to reach Redis mark the
    /// engine unready, an error reply is [`EngineError::Rejected`].
    pub(super) async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.inner.opts.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_rejection(&e) => Err(EngineError::Rejected(e.to_string())),
            Ok(Err(e)) => {
                self.set_ready(false, Some(&e.to_string()));
                Err(unavailable(e))
            }
            Err(_) => {
                self.set_ready(false, Some("command timed out"));
                Err(EngineError::Unavailable("redis command timed out".into()))
            }
        }
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

    /// Pings every second; readiness follows.
    pub(super) async fn health(self, token: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = match self.conn().await {
                Ok(mut c) => match self.run(redis::cmd("PING").query_async::<String>(&mut c)).await {
                    // Redis refusing even a PING cannot serve.
                    Err(EngineError::Rejected(e)) => {
                        self.set_ready(false, Some(&e));
                        Err(EngineError::Rejected(e))
                    }
                    other => other.map(|_| ()),
                },
                Err(e) => {
                    self.set_ready(false, Some(&e.to_string()));
                    Err(e)
                }
            };
            if result.is_ok() {
                self.set_ready(true, None);
            }
        }
    }
}
