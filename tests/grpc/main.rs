//! gRPC transport end to end (contract §1, §2, §4, §7 and the comments of
//! proto/rtgate/v1/gateway.proto) against the real server with the generated
//! tonic client: Publish/History, Subscribe (multi-topic, resume by cursor
//! while publishing, gaps), Connect (the WebSocket protocol as protobuf),
//! error codes, health and reflection, cursors shared with WebSocket and SSE,
//! slow and stalled consumers, shutdown, and plain HTTP on the same port.
//! One module per section; the client side they share is in `helpers`.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
#[path = "../support/mod.rs"]
mod support;

mod helpers;

mod connect;
mod cross_transport;
mod health;
mod inflight;
mod keepalive;
mod publish;
mod redis_loss;
mod same_port;
mod shutdown;
mod slow;
mod subscribe;
