//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`.

use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use crate::config::PublicMetrics;
use crate::error::{ApiError, Code};
use crate::state::{AppState, Peer};

/// `GET /healthz`: 200 while the process serves.
pub(crate) async fn healthz() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], "{\"status\":\"ok\"}")
}

/// `GET /readyz`: 200 when the engine is reachable and the process is not
/// shutting down, 503 otherwise.
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let engine = state.bus.engine.is_ready();
    let ready = state.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "unavailable" },
        "engine": state.bus.engine.name(),
        "engine_ready": engine,
        "shutting_down": state.shutdown.is_shutting_down(),
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::metrics::hub_sizes(state.bus.hub.topic_count(), state.bus.hub.subscription_count());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render())
}

/// `GET /metrics` on the public port: [`metrics`] for the peers that
/// `admin.public_metrics` allows, `not_found` (as for an unknown route) for
/// the others.
pub(crate) async fn public_metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> axum::response::Response {
    if !metrics_allowed(state.config.admin.public_metrics, peer.0.ip()) {
        return ApiError::new(Code::NotFound, "no such endpoint").into_response();
    }
    metrics(State(state)).await.into_response()
}

/// Whether `policy` lets a peer at `ip` read `/metrics` on the public port.
fn metrics_allowed(policy: PublicMetrics, ip: std::net::IpAddr) -> bool {
    match policy {
        PublicMetrics::All => true,
        PublicMetrics::Loopback => ip.to_canonical().is_loopback(),
        PublicMetrics::Off => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_metrics_policy() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for local in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"] {
            assert!(metrics_allowed(PublicMetrics::Loopback, ip(local)), "{local}");
            assert!(!metrics_allowed(PublicMetrics::Off, ip(local)), "{local}");
        }
        for remote in ["10.1.2.3", "203.0.113.9", "2001:db8::1", "::ffff:198.51.100.7", "0.0.0.0"] {
            assert!(!metrics_allowed(PublicMetrics::Loopback, ip(remote)), "{remote}");
            assert!(metrics_allowed(PublicMetrics::All, ip(remote)), "{remote}");
        }
    }
}
