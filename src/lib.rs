//! rtgate: one topic bus over WebSocket, Server-Sent Events, HTTP long
//! polling, gRPC and an HTTP API, backed by an embedded or a Redis Streams
//! engine.
//!
//! # Layout
//!
//! Every arrow points down; nothing imports a module above it.
//!
//! - [`server`]: composes the HTTP and gRPC routers into one [`server::App`],
//!   runs the accept loop (HTTP/1.1 and HTTP/2 on one port, in clear or
//!   over TLS, gRPC routed by content type) and drains; [`run`] ties it
//!   all together.
//! - [`admin`]: the operator's `/admin` page and its JSON under
//!   `/v1/admin/` (connections, stats, kick), over the session registry
//!   and the hub; beside the transports, below `server`.
//! - [`transport`]: protocol adapters (HTTP API, WebSocket, SSE, long poll,
//!   gRPC) that read their client's input and encode events for their wire,
//!   over three shared pieces: `transport::subscription` (the one
//!   subscription driver: replay → live, de-duplication, gaps, close),
//!   `transport::ops` (the one publish path and the op handler of WebSocket
//!   and gRPC `Connect`), `transport::request` (parsing and checks) and
//!   `transport::access` (credential, origin, grants and abuse limits of a
//!   request or stream, checked the same way on every transport).
//! - [`state`]: [`state::AppState`] and the per-connection [`state::Peer`]:
//!   what every adapter is handed.
//! - [`webhooks`]: outbound delivery (a worker per endpoint reading the
//!   engine's outbox: signatures, retries, circuit breaker, dead letters)
//!   and inbound verification; its HTTP endpoints are `transport::webhooks`.
//!   It imports the core (the `core::outbox` seam), auth patterns, config
//!   and metrics, never an engine or a transport.
//! - [`auth`] (JWT and API keys → [`auth::Grants`]) and [`abuse`] (token
//!   buckets, open-stream counts, the client IP behind trusted proxies):
//!   the gatekeepers `transport::access` and the server consult; [`pacing`]
//!   draws the reconnect hints of mass closes.
//! - [`presence`]: who is subscribed to presence topics (leases, grace,
//!   batched join/leave frames, occupancy webhooks), over an in-process or
//!   a Redis store; registered by `transport::subscription`.
//! - [`core`]: topics, ids, cursors, the [`core::Engine`] seam, the hub that
//!   fans messages out to bounded outboxes, sessions (close flags), replay.
//!   It never imports an engine or a transport.
//! - [`engine`]: engine implementations (embedded memory, Redis Streams),
//!   chosen once from config, each with its webhook outbox.
//! - Beside the stack: [`config`], [`error`] (the contract's codes and every
//!   projection of a reason onto a wire, with `core::close`), [`metrics`],
//!   [`shutdown`], [`telemetry`], [`ops`] (health, readiness, metrics
//!   endpoints), [`proto`] (the gRPC client types) and the hidden `fuzz`
//!   module (fuzz targets for `tests/fuzz.rs` and `fuzz/`).
//!
//! `docs/architecture.md` walks one published message and one resumed
//! subscription through these modules.
//!
//! # Entry points
//!
//! `main.rs` only wires: it loads [`config::Config`], installs logging, binds
//! and calls [`run`]. Tests call [`run`] with a listener on port 0.

pub mod abuse;
pub mod admin;
pub mod auth;
pub mod config;
pub mod core;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod metrics;
pub mod ops;
pub mod pacing;
pub mod presence;
pub mod proto;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod transport;
pub mod webhooks;

#[cfg(test)]
mod testing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::{Bus, Feed, Hub};
use crate::server::Limited;
use crate::shutdown::Shutdown;
use crate::state::AppState;

/// Why the application state cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The engine cannot be built from its configuration.
    #[error(transparent)]
    Engine(#[from] core::EngineError),
    /// A key source of `[auth]` cannot be used.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// A `[[webhooks]]` endpoint cannot be set up.
    #[error(transparent)]
    Webhooks(#[from] webhooks::worker::EndpointError),
    /// Presence cannot use the configured store.
    #[error(transparent)]
    Presence(#[from] presence::PresenceError),
}

/// The application state for `config`: the configured engine (metered),
/// the hub it feeds, and `shutdown`, which the engine's background tasks
/// obey.
pub fn state(config: Arc<Config>, shutdown: Shutdown) -> Result<AppState, StartError> {
    let hub = Hub::with_policies(config.limits.max_topics, Arc::new(config.policies()));
    let routes = webhooks::routes(&config);
    let built =
        engine::build(&config, Arc::new(hub.clone()) as Arc<dyn Feed>, hub.policies(), &shutdown, routes)?;
    let webhooks = webhooks::Webhooks::start(&config, built.outbox, &shutdown)?;
    let bus = Bus {
        engine: Arc::new(engine::Metered::new(built.engine)),
        hub,
        outbox_capacity: config.limits.outbox_capacity,
        replay_page: config.history.replay_page,
    };
    let presence = presence::Presence::start(&config, bus.hub.clone(), Arc::clone(&bus.engine), &shutdown)?;
    let auth = Arc::new(auth::Auth::new(&config.auth)?);
    let abuse = Arc::new(abuse::Abuse::new(&config.abuse));
    let pacer = pacing::Pacer::new(&config.reconnect);
    Ok(AppState::new(state::Shared {
        bus,
        config,
        shutdown,
        auth,
        abuse,
        pacer,
        expiries: Arc::default(),
        webhooks,
        rates: Arc::default(),
        presence,
    }))
}

/// Serves on `listener` (over TLS when `[tls]` is set) until `token` is
/// cancelled, then drains: stops accepting, closes WebSocket clients with
/// 1001, waits for in-flight work for at most `shutdown.grace`. Returns
/// when done; fails at once when the TLS files cannot be used.
pub async fn run(listener: TcpListener, config: Config, token: CancellationToken) -> std::io::Result<()> {
    crate::metrics::install();
    // TLS to Redis (rediss://) uses rustls with the ring provider; the first
    // install wins, later calls (tests) are no-ops.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = config;
    config.apply_demo();
    let config = Arc::new(config);
    let tls = server::tls::Tls::from_config(&config.tls).map_err(|e| std::io::Error::other(e.to_string()))?;
    let shutdown = Shutdown::new(token.clone(), config.shutdown.grace);
    let state =
        state(Arc::clone(&config), shutdown.clone()).map_err(|e| std::io::Error::other(e.to_string()))?;
    // Reload the JWKS file on change and on SIGHUP (nothing without one).
    state.auth.watch(&shutdown);
    shutdown.spawn(core::rates::run(Arc::clone(&state.rates), state.bus.hub.clone(), token.clone()));
    let local: SocketAddr = listener.local_addr()?;
    let listener = Limited::new(listener, config.limits.max_connections, config.http.tcp_keepalive)
        .with_send_buffer(config.http.send_buffer);
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
    let app = server::app(state);
    let acceptor = tls.as_ref().map(server::tls::Tls::acceptor);
    if let Some(tls) = tls {
        shutdown.spawn(tls.watch(token.clone()));
    }
    let serve_token = token.clone();
    let serve_config = Arc::clone(&config);
    shutdown.spawn(async move { server::serve(listener, app, &serve_config, acceptor, serve_token).await });
    tracing::info!(
        addr = %local,
        engine = config.engine.kind_name(),
        tls = config.tls.enabled(),
        "rtgate listening"
    );
    if let Some(cert_file) = config.tls.cert_file.as_deref().filter(|_| config.tls.enabled()) {
        tracing::info!(
            cert_file = %cert_file.display(),
            reload_interval = ?config.tls.reload_interval,
            "TLS on (ALPN h2, http/1.1); certificate reloaded when its files change and on SIGHUP"
        );
    }
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
