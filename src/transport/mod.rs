//! Protocol adapters: each turns sockets into bus operations; the core never
//! sees a socket.

pub mod frame;
pub mod http;
pub mod poll;
pub mod sse;
pub mod ws;

use axum::routing::{get, post};
use axum::Router;

use crate::server::AppState;

/// Parses a `limit` query value: a positive integer, clamped to `max`.
pub(crate) fn parse_limit(v: &str, max: usize) -> Result<usize, crate::error::ApiError> {
    v.parse::<usize>().ok().filter(|n| *n >= 1).map(|n| n.min(max)).ok_or_else(|| {
        crate::error::ApiError::new(crate::error::Code::BadRequest, "limit must be a positive integer")
    })
}

/// Routes of every transport.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/publish/{topic}", post(http::publish))
        .route("/v1/history/{topic}", get(http::history))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/sse", get(sse::stream))
        .route("/v1/poll", get(poll::poll))
}
