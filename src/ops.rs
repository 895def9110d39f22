//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use crate::state::AppState;

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
