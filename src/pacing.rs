//! Server-paced reconnects: when rtgate closes or refuses many clients at
//! once (shutdown, a shed storm), each is told when to come back, spread
//! uniformly over `reconnect.min..reconnect.window` with per-client jitter,
//! so a restart of a gateway holding many clients does not come back as
//! one synchronised storm.
//!
//! Wire forms of a hint of `ms` milliseconds: WebSocket close reason
//! `"<reason>; retry_ms=<ms>"`, SSE `retry: <ms>` before the end of the
//! stream, `Retry-After: <seconds, rounded up>` on 429/503, gRPC trailer
//! `retry-after-ms: <ms>` (and `grpc-retry-pushback-ms`).

use std::time::Duration;

use crate::config::ReconnectConfig;

/// Draws reconnect hints.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    min: Duration,
    window: Duration,
}

impl Pacer {
    /// A pacer for `cfg`.
    pub fn new(cfg: &ReconnectConfig) -> Pacer {
        Pacer { min: cfg.min, window: cfg.window.max(cfg.min) }
    }

    /// A hint for one client: uniform in `min..=window`.
    pub fn hint(&self) -> Duration {
        let span = (self.window - self.min).as_millis() as u64;
        let jitter = if span == 0 { 0 } else { rand::random_range(0..=span) };
        self.min + Duration::from_millis(jitter)
    }

    /// A hint no earlier than `earliest` (a rate limiter's next token):
    /// `earliest` plus a share of the window.
    pub fn after(&self, earliest: Duration) -> Duration {
        earliest.max(self.min) + self.hint().saturating_sub(self.min)
    }
}
