//! The server: composes the HTTP and gRPC routers into one [`App`], runs the
//! accept loop (HTTP/1.1 with upgrades and h2c on one port, gRPC routed by
//! content type) and drains on shutdown.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Method};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::config::Http2Config;
use crate::error::{ApiError, Code};
use crate::state::{AppState, ConnControl, Peer};

/// Every endpoint of the public port: the HTTP router (API, WebSocket, SSE,
/// long polling, health, metrics) and the gRPC router (gateway, health,
/// reflection). [`serve`] picks one per request by content type.
#[derive(Clone)]
pub struct App {
    /// Everything that is not gRPC.
    pub http: Router,
    /// `application/grpc…` requests.
    pub grpc: Router,
}

/// The routers of every endpoint, used by `run` and by tests.
pub fn app(state: AppState) -> App {
    App { grpc: crate::transport::grpc::router(state.clone()), http: http_app(state) }
}

/// The HTTP router: the transports' routes, health, readiness and (without
/// an admin listener) metrics.
fn http_app(state: AppState) -> Router {
    let cors = cors(&state.config.http.cors_origins);
    let router = Router::new()
        .merge(crate::transport::routes())
        .route("/healthz", get(crate::ops::healthz))
        .route("/readyz", get(crate::ops::readyz))
        .fallback(|| async { ApiError::new(Code::NotFound, "no such endpoint").into_response() })
        .method_not_allowed_fallback(|| async {
            let mut res = ApiError::new(Code::BadRequest, "method not allowed").into_response();
            *res.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
            res
        })
        .layer(cors);
    // With a separate admin listener, /metrics is served only there;
    // without one, to the peers `admin.public_metrics` allows.
    let router = if state.config.admin.listen.is_none() {
        router.route("/metrics", get(crate::ops::public_metrics))
    } else {
        router
    };
    router.with_state(state)
}

/// The admin listener's router (`admin.listen`): health, readiness and
/// metrics, nothing a client of the bus uses.
pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(crate::ops::healthz))
        .route("/readyz", get(crate::ops::readyz))
        .route("/metrics", get(crate::ops::metrics))
        .fallback(|| async { ApiError::new(Code::NotFound, "no such endpoint").into_response() })
        .with_state(state)
}

/// CORS for the configured origins (`*` = any).
fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new().allow_methods([Method::GET, Method::POST, Method::OPTIONS]).allow_headers([
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        header::HeaderName::from_static("idempotency-key"),
        header::HeaderName::from_static("last-event-id"),
    ]);
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

/// Bytes an HTTP/2 stream may buffer towards its client.
const SEND_BUF_PER_STREAM: usize = 64 * 1024;

/// Serves `listener` until `token` is cancelled: each connection speaks
/// HTTP/1.1 (with upgrades to WebSocket) or HTTP/2 (h2c: gRPC, and HTTP
/// clients that choose it), and each request goes to `app.grpc` when its
/// `content-type` is `application/grpc…`, to `app.http` otherwise. Then stops
/// accepting and lets open connections finish (HTTP/1 after the request in
/// flight, HTTP/2 after a GOAWAY); long-lived streams are ended by the
/// shutdown's session close.
pub async fn serve(mut listener: Limited, app: App, h2: &Http2Config, token: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(h2.keepalive_interval))
        .keep_alive_timeout(h2.keepalive_timeout)
        .max_concurrent_streams(h2.max_concurrent_streams)
        // What one stream may have buffered for a client that does not read
        // (hyper's default is 400 KiB); the outbox bounds the rest.
        .max_send_buf_size(SEND_BUF_PER_STREAM);
    let graceful = GracefulShutdown::new();
    loop {
        let (io, addr) = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            conn = axum::serve::Listener::accept(&mut listener) => conn,
        };
        let svc = Dispatch {
            http: app.http.clone(),
            grpc: app.grpc.clone(),
            peer: Peer(addr, Arc::clone(&io.control)),
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Routes one connection's requests to the gRPC or the HTTP router, with the
/// connection's [`Peer`] as `ConnectInfo`.
#[derive(Clone)]
struct Dispatch {
    http: Router,
    grpc: Router,
    peer: Peer,
}

impl tower::Service<axum::http::Request<hyper::body::Incoming>> for Dispatch {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer.clone()));
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let router = if grpc { &mut self.grpc } else { &mut self.http };
        tower::Service::call(router, req)
    }
}

/// A TCP listener that holds at most `limits.max_connections` connections
/// open; further clients wait in the kernel's accept queue. Sets
/// `TCP_NODELAY` (latency matters more than packet count here).
pub struct Limited {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl Limited {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, max: usize) -> Self {
        Limited { inner, permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))) }
    }
}

impl axum::serve::Listener for Limited {
    type Io = LimitedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match Arc::clone(&self.permits).acquire_owned().await {
            Ok(p) => p,
            Err(_) => std::future::pending().await, // never closed
        };
        let mut logged = false;
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    crate::metrics::tcp_connection(true);
                    return (LimitedIo { stream, control: Arc::default(), _permit: permit }, addr);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; log once per streak.
                    if !logged {
                        tracing::warn!(error = %e, "accept failed");
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream holding one connection permit until dropped.
pub struct LimitedIo {
    stream: TcpStream,
    control: Arc<ConnControl>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for LimitedIo {
    fn drop(&mut self) {
        crate::metrics::tcp_connection(false);
    }
}

impl AsyncRead for LimitedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.control.check_read(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.control.check_write(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.control.check_write(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
