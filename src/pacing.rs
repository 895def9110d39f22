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
//!
//! Hints are given where the server closes or refuses clients en masse: at
//! shutdown ([`Close::Shutdown`]), when the engine is unavailable
//! ([`Close::Unavailable`]), to a new stream refused while draining, and to
//! a connection attempt refused by the rate limits (`abuse`), where the hint
//! is no earlier than the limiter's next token ([`Pacer::after`]).

use std::time::Duration;

use crate::config::ReconnectConfig;
use crate::core::Close;

/// gRPC trailer (or header, on a trailers-only answer) with the hint in
/// milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// The gRPC retry design's server pushback, in milliseconds: clients with
/// a retry policy wait this long.
pub const GRPC_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// True for the closes that hit many clients at once and so carry a hint:
/// shutdown and an unavailable engine.
pub fn paced(reason: Close) -> bool {
    matches!(reason, Close::Shutdown | Close::Unavailable)
}

/// The WebSocket close reason `"<reason>; retry_ms=<ms>"`.
pub fn ws_reason(reason: &str, hint: Duration) -> String {
    format!("{reason}; retry_ms={}", hint.as_millis())
}

/// The SSE field `retry: <ms>` (a complete event, blank line included).
pub fn sse_retry(hint: Duration) -> String {
    format!("retry: {}\n\n", hint.as_millis())
}

/// `Retry-After` seconds: the hint rounded up, at least 1.
pub fn retry_after_secs(hint: Duration) -> u64 {
    let secs = hint.as_secs() + u64::from(hint.subsec_nanos() > 0);
    secs.max(1)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(min_ms: u64, window_ms: u64) -> Pacer {
        Pacer::new(&ReconnectConfig {
            min: Duration::from_millis(min_ms),
            window: Duration::from_millis(window_ms),
        })
    }

    #[test]
    fn hints_are_spread_over_the_window() {
        let p = pacer(500, 10_500);
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let h = p.hint();
            assert!((Duration::from_millis(500)..=Duration::from_millis(10_500)).contains(&h), "{h:?}");
            buckets[((h.as_millis() as usize - 500) / 1000).min(9)] += 1;
        }
        // Uniform: 1000 per bucket; far from a spike.
        assert!(buckets.iter().all(|&n| (800..1200).contains(&n)), "{buckets:?}");
        assert_eq!(pacer(2000, 2000).hint(), Duration::from_millis(2000));
        // A window below min is min.
        assert_eq!(pacer(2000, 1000).hint(), Duration::from_millis(2000));
    }

    #[test]
    fn after_is_never_before_the_earliest() {
        let p = pacer(500, 1500);
        for _ in 0..1000 {
            let h = p.after(Duration::from_secs(3));
            assert!((Duration::from_secs(3)..=Duration::from_secs(4)).contains(&h), "{h:?}");
            let h = p.after(Duration::ZERO);
            assert!((Duration::from_millis(500)..=Duration::from_millis(1500)).contains(&h), "{h:?}");
        }
    }

    #[test]
    fn wire_forms() {
        assert_eq!(ws_reason("shutdown", Duration::from_millis(1234)), "shutdown; retry_ms=1234");
        assert_eq!(sse_retry(Duration::from_millis(987)), "retry: 987\n\n");
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert!(paced(Close::Shutdown) && paced(Close::Unavailable) && !paced(Close::Slow));
    }
}
