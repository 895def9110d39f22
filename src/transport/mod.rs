//! Protocol adapters: each turns its sockets into bus operations and the
//! driver's events into its wire; the core never sees a socket.
//!
//! - [`request`]: parsing and checks shared by every adapter.
//! - [`subscription`]: the one subscription driver (replay → live,
//!   de-duplication, gaps, the close flag, open/close records).
//! - [`ops`]: the one publish path and the op handler shared by WebSocket
//!   and gRPC `Connect`.
//! - Adapters: [`http`] (publish, history), [`ws`], [`sse`], [`poll`],
//!   [`grpc`]; [`frame`] holds the WebSocket JSON frames; `webhooks`
//!   (inbound webhooks and the dead-letter endpoints, over `crate::webhooks`);
//!   [`assets`] serves the embedded client library (and the chat demo).

pub(crate) mod access;
pub mod assets;
pub mod frame;
pub mod grpc;
pub mod http;
pub(crate) mod ops;
pub mod poll;
pub(crate) mod request;
pub mod sse;
pub(crate) mod subscription;
pub(crate) mod webhooks;
pub mod ws;

use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

/// Routes of every HTTP transport.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/publish/{topic}", post(http::publish))
        .route("/v1/history/{topic}", get(http::history))
        .route("/v1/presence/{topic}", get(http::presence))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/sse", get(sse::stream))
        .route("/v1/poll", get(poll::poll))
        .route("/v1/webhooks/dead-letters", get(webhooks::list))
        .route("/v1/webhooks/dead-letters/redrive", post(webhooks::redrive_all))
        .route("/v1/webhooks/dead-letters/{id}/redrive", post(webhooks::redrive))
        .route("/v1/webhooks/{source}", post(webhooks::inbound))
}
