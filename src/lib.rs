//! rtgate: one topic bus over WebSocket, Server-Sent Events, HTTP long
//! polling, gRPC and an HTTP API, backed by an embedded or a Redis Streams
//! engine.
//!
//! # Layout
//!
//! - [`core`]: topics, ids, cursors, the [`core::Engine`] seam, the hub that
//!   fans messages out to bounded outboxes, replay-then-live hand-over. It
//!   never imports an engine or a transport.
//! - [`engine`]: engine implementations (embedded memory, Redis Streams),
//!   chosen once from config.
//! - [`transport`]: protocol adapters (HTTP API, WebSocket, SSE, long poll,
//!   gRPC) that turn sockets into bus operations.
//! - [`server`]: `AppState`, the routers, the accept loop (HTTP/1.1 and h2c
//!   on one port, gRPC routed by content type); [`run`] ties it all
//!   together. [`config`], [`error`], [`metrics`], [`shutdown`],
//!   [`telemetry`], [`ops`] are what their names say; [`proto`] holds the
//!   gRPC client types.
//!
//! # Entry points
//!
//! `main.rs` only wires: it loads [`config::Config`], installs logging, binds
//! and calls [`run`]. Tests call [`run`] with a listener on port 0.

pub mod config;
pub mod core;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod proto;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::{Bus, Hub, Listener};
use crate::server::{AppState, Limited};
use crate::shutdown::Shutdown;

/// Serves on `listener` until `token` is cancelled, then drains: stops
/// accepting, closes WebSocket clients with 1001, waits for in-flight work
/// for at most `shutdown.grace`. Returns when done.
pub async fn run(listener: TcpListener, config: Config, token: CancellationToken) -> std::io::Result<()> {
    crate::metrics::install();
    // TLS to Redis (rediss://) uses rustls with the ring provider; the first
    // install wins, later calls (tests) are no-ops.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);
    let shutdown = Shutdown::new(token.clone(), config.shutdown.grace);
    let hub = Hub::new();
    let engine = engine::build(&config, Arc::new(hub.clone()) as Arc<dyn Listener>, &shutdown)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let bus = Bus {
        engine: Arc::new(engine::Metered(engine)),
        hub,
        outbox_capacity: config.limits.outbox_capacity,
        replay_page: config.history.replay_page,
    };
    let state = AppState { bus, config: Arc::clone(&config), shutdown: shutdown.clone() };
    let local: SocketAddr = listener.local_addr()?;
    let listener = Limited::new(listener, config.limits.max_connections);
    if let Some(addr) = config.admin.listen {
        let admin = TcpListener::bind(addr).await?;
        let admin_app = server::admin_app(state.clone());
        let admin_token = token.clone();
        tracing::info!(%addr, "admin listener (health, readiness, metrics)");
        shutdown.spawn(async move {
            let serve = axum::serve(admin, admin_app).with_graceful_shutdown(admin_token.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
    }
    let http = server::app(state.clone());
    let grpc = transport::grpc::router(state);
    let serve_token = token.clone();
    let h2 = config.http2.clone();
    shutdown.spawn(async move { server::serve(listener, http, grpc, &h2, serve_token).await });
    tracing::info!(addr = %local, engine = config.engine.kind_name(), "rtgate listening");
    token.cancelled().await;
    tracing::info!(grace = ?config.shutdown.grace, "draining");
    if shutdown.drain().await {
        tracing::info!("drained, bye");
    } else {
        tracing::warn!("grace period over with work still running; exiting anyway");
    }
    // Give the runtime a moment to flush socket closes of aborted tasks.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
