//! Webhook metrics. Labels come from fixed sets: `endpoint` and `source`
//! are names from the configuration (never URLs), `result` and `outcome`
//! are the constants below.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use super::policy::{BreakerState, Outcome};

/// One attempt: `rtgate_webhook_attempts_total{endpoint, result}` with
/// result `2xx`, `4xx`, `410`, `retry` (5xx, 408, 429), `timeout`, `error`.
pub(super) fn attempt(endpoint: &str, outcome: &Outcome) {
    let result = match outcome {
        Outcome::Delivered => "2xx",
        Outcome::Refused(_) => "4xx",
        Outcome::Gone => "410",
        Outcome::Retry { error, .. } if error == "timeout" => "timeout",
        Outcome::Retry { error, .. } if error.starts_with("HTTP") => "retry",
        Outcome::Retry { .. } => "error",
    };
    counter!("rtgate_webhook_attempts_total", "endpoint" => endpoint.to_owned(), "result" => result)
        .increment(1);
}

/// A delivery done: `rtgate_webhook_deliveries_total{outcome="delivered"}`
/// and the time from publish to the 2xx, a Prometheus histogram
/// (`# TYPE rtgate_webhook_delivery_seconds histogram`, buckets set in
/// `crate::metrics::install`) exposed as
/// `rtgate_webhook_delivery_seconds_bucket{{endpoint="…",le="…"}}`,
/// `rtgate_webhook_delivery_seconds_sum{{endpoint="…"}}` and
/// `rtgate_webhook_delivery_seconds_count{{endpoint="…"}}`.
pub(super) fn delivered(endpoint: &str, latency: Duration) {
    counter!("rtgate_webhook_deliveries_total", "endpoint" => endpoint.to_owned(), "outcome" => "delivered")
        .increment(1);
    histogram!("rtgate_webhook_delivery_seconds", "endpoint" => endpoint.to_owned())
        .record(latency.as_secs_f64());
}

/// A message dead-lettered (`outcome="dead_letter"`).
pub(super) fn dead_lettered(endpoint: &str) {
    counter!("rtgate_webhook_deliveries_total", "endpoint" => endpoint.to_owned(), "outcome" => "dead_letter")
        .increment(1);
}

/// A dead letter redriven (`outcome="redriven"`).
pub(super) fn redriven(endpoint: &str) {
    counter!("rtgate_webhook_deliveries_total", "endpoint" => endpoint.to_owned(), "outcome" => "redriven")
        .increment(1);
}

/// A delivery another process left, taken over.
pub(super) fn taken_over(endpoint: &str) {
    counter!("rtgate_webhook_takeovers_total", "endpoint" => endpoint.to_owned()).increment(1);
}

/// Deliveries being worked on in this process.
pub(super) fn in_flight(endpoint: &str, delta: f64) {
    gauge!("rtgate_webhook_in_flight", "endpoint" => endpoint.to_owned()).increment(delta);
}

/// The breaker's state: 0 closed, 1 open, 2 half open.
pub(super) fn circuit(endpoint: &str, state: BreakerState) {
    gauge!("rtgate_webhook_circuit_state", "endpoint" => endpoint.to_owned()).set(state as u8 as f64);
}

/// A `410 Gone` disabled the endpoint.
pub(super) fn disabled(endpoint: &str) {
    gauge!("rtgate_webhook_disabled", "endpoint" => endpoint.to_owned()).set(1.0);
}

/// Dead letters stored (all endpoints, all processes).
pub(super) fn dead_letters(n: u64) {
    gauge!("rtgate_webhook_dead_letters").set(n as f64);
}

/// One inbound request: `rtgate_webhook_inbound_total{source, result}`,
/// result `accepted`, `replayed`, `bad_signature`, `stale`, `bad_request`,
/// `unavailable`.
pub(super) fn inbound(source: &str, result: &'static str) {
    counter!("rtgate_webhook_inbound_total", "source" => source.to_owned(), "result" => result).increment(1);
}
