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

/// Routes of every transport.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/publish/{topic}", post(http::publish))
        .route("/v1/history/{topic}", get(http::history))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/sse", get(sse::stream))
        .route("/v1/poll", get(poll::poll))
}
