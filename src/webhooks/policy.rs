//! What an answer means (success, retry, dead letter, disable), how long
//! to wait before a retry, and the per-endpoint circuit breaker.

use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;
use rand::Rng;

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// 5xx, 408, 429, a timeout or a connection failure: try again, not
    /// before the `Retry-After` given, if any.
    Retry {
        /// Why (`"HTTP 503"`, `"timeout"`, `"connect"`).
        error: String,
        /// `Retry-After`, if the answer had one.
        after: Option<Duration>,
    },
    /// Another 4xx: dead letter at once.
    Refused(String),
    /// 410 Gone: the endpoint asks to be disabled.
    Gone,
}

/// The outcome of an answer with `status` and a `Retry-After` header value.
pub fn classify(status: u16, retry_after: Option<&str>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        408 | 429 | 500..=599 => {
            Outcome::Retry { error: format!("HTTP {status}"), after: retry_after.and_then(parse_retry_after) }
        }
        _ => Outcome::Refused(format!("HTTP {status}")),
    }
}

/// `Retry-After`: delay-seconds, or an HTTP date (from now; a past date is 0).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate(v)?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP/1.1 senders use.
fn httpdate(v: &str) -> Option<std::time::SystemTime> {
    let mut it = v.split_whitespace();
    let _weekday = it.next()?;
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || h > 23 || m > 59 || s > 60 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The delay before retry number `retry` (1 = after the first attempt):
/// `min(max, base × 2^(retry-1))`, with full jitter (uniform in 0 to that)
/// when `jitter`, and never less than `retry_after` (itself capped at `max`).
pub fn backoff(
    base: Duration,
    max: Duration,
    retry: u32,
    jitter: bool,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base.saturating_mul(1u32 << retry.saturating_sub(1).min(30)).min(max);
    let d = if jitter { exp.mul_f64(rand::rng().random::<f64>()) } else { exp };
    match retry_after {
        Some(ra) => d.max(ra.min(max)),
        None => d,
    }
}

/// Breaker states, as the metric's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts go out.
    Closed = 0,
    /// No attempts until the cooldown is over.
    Open = 1,
    /// One probe attempt is out.
    HalfOpen = 2,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A circuit breaker: `failures` consecutive failures open it for
/// `cooldown`; then one probe goes out, and its success closes it.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    failures: u32,
    cooldown: Duration,
}

/// What the breaker says to an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Permit {
    /// Go (as the probe, when half open).
    Go,
    /// Wait this long and ask again.
    Wait(Duration),
}

impl Breaker {
    /// A closed breaker.
    pub fn new(failures: u32, cooldown: Duration) -> Breaker {
        Breaker { state: Mutex::new(State::Closed { failures: 0 }), failures: failures.max(1), cooldown }
    }

    /// May an attempt go now?
    pub fn permit(&self) -> Permit {
        let mut s = self.state.lock();
        match *s {
            State::Closed { .. } => Permit::Go,
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *s = State::HalfOpen { probing: true };
                    Permit::Go
                } else {
                    Permit::Wait(until - now)
                }
            }
            State::HalfOpen { probing: false } => {
                *s = State::HalfOpen { probing: true };
                Permit::Go
            }
            State::HalfOpen { probing: true } => Permit::Wait(self.cooldown.min(Duration::from_millis(100))),
        }
    }

    /// An attempt's result; returns the new state when it changed.
    pub fn record(&self, ok: bool) -> Option<BreakerState> {
        let mut s = self.state.lock();
        let before = Self::label(&s);
        *s = match (&*s, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.failures => {
                State::Closed { failures: failures + 1 }
            }
            (State::Open { until }, false) => State::Open { until: *until },
            (_, false) => State::Open { until: Instant::now() + self.cooldown },
        };
        let after = Self::label(&s);
        (before != after).then_some(after)
    }

    fn label(s: &State) -> BreakerState {
        match s {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_answers() {
        assert_eq!(classify(204, None), Outcome::Delivered);
        assert_eq!(classify(410, None), Outcome::Gone);
        assert_eq!(classify(400, None), Outcome::Refused("HTTP 400".into()));
        assert_eq!(
            classify(429, Some("3")),
            Outcome::Retry { error: "HTTP 429".into(), after: Some(Duration::from_secs(3)) }
        );
        assert!(matches!(classify(408, None), Outcome::Retry { .. }));
        assert!(matches!(classify(503, Some("soon")), Outcome::Retry { after: None, .. }));
    }

    #[test]
    fn retry_after_dates() {
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        let t = httpdate("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        assert_eq!(parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let (b, m) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(backoff(b, m, 1, false, None), b);
        assert_eq!(backoff(b, m, 3, false, None), Duration::from_millis(400));
        assert_eq!(backoff(b, m, 20, false, None), m);
        for _ in 0..100 {
            assert!(backoff(b, m, 3, true, None) <= Duration::from_millis(400));
        }
        assert_eq!(backoff(b, m, 1, true, Some(Duration::from_millis(700))), Duration::from_millis(700));
        assert_eq!(backoff(b, m, 1, false, Some(Duration::from_secs(60))), m);
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let br = Breaker::new(2, Duration::from_millis(0));
        assert_eq!(br.record(false), None);
        assert_eq!(br.record(false), Some(BreakerState::Open));
        assert_eq!(br.permit(), Permit::Go);
        assert!(matches!(br.permit(), Permit::Wait(_)));
        assert_eq!(br.record(true), Some(BreakerState::Closed));
        let slow = Breaker::new(1, Duration::from_secs(60));
        slow.record(false);
        assert!(matches!(slow.permit(), Permit::Wait(d) if d > Duration::from_secs(50)));
    }
}
