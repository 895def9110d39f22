//! The server: composes the HTTP and gRPC routers into one [`App`], runs the
//! accept loop (HTTP/1.1 with upgrades and HTTP/2 on one port, in clear or
//! over TLS ([`tls`]), gRPC routed by content type) and drains on shutdown.
//!
//! Exhaustion guards of the accept loop: at most `limits.max_connections`
//! sockets ([`Limited`]), each with TCP keepalive; a connection that has
//! not sent its first request headers (or the HTTP/2 preface and SETTINGS)
//! within `http.handshake_timeout` is closed; a request body (not gRPC)
//! must arrive within `http.body_timeout` ([`body`]). Each HTTP/2 stream
//! runs in a task of its own with a [`StreamControl`] kill switch, so a
//! stream that must end is reset alone.

mod body;
pub mod tls;

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
use futures_util::future::Either;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::abuse::Abuse;
use crate::config::Config;
use crate::error::{ApiError, Code};
use crate::pacing::Pacer;
use crate::state::{AppState, ClientIp, ConnControl, Peer, StreamControl, STREAM};

/// Every endpoint of the public port: the HTTP router (API, WebSocket, SSE,
/// long polling, health, metrics) and the gRPC router (gateway, health,
/// reflection). [`serve`] picks one per request by content type, after the
/// connection-attempt limits (`abuse`).
#[derive(Clone)]
pub struct App {
    /// Everything that is not gRPC.
    pub http: Router,
    /// `application/grpc…` requests.
    pub grpc: Router,
    /// The abuse limits every request is checked against first.
    pub abuse: Arc<Abuse>,
    /// Reconnect hints for refused connection attempts.
    pub pacer: Pacer,
}

/// The routers of every endpoint, used by `run` and by tests.
pub fn app(state: AppState) -> App {
    App {
        abuse: Arc::clone(&state.abuse),
        pacer: state.pacer,
        grpc: crate::transport::grpc::router(state.clone()),
        http: http_app(state),
    }
}

/// The HTTP router: the transports' routes, health, readiness and (without
/// an admin listener) metrics.
fn http_app(state: AppState) -> Router {
    let cors = cors(&state.config.cors_origins());
    let router = Router::new()
        .merge(crate::transport::routes())
        .merge(crate::transport::assets::routes(state.config.demo.enabled))
        .merge(crate::admin::routes())
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

/// Bytes an HTTP/1 connection buffers: a request head larger than this is
/// refused (`431`), and no more than this of a response (an SSE stream's
/// events) waits in hyper for a client to read it (hyper's default is
/// 400 KiB).
const HTTP1_BUF: usize = 64 * 1024;

/// Serves `listener` until `token` is cancelled: each connection speaks
/// HTTP/1.1 (with upgrades to WebSocket) or HTTP/2 (gRPC, and HTTP clients
/// that choose it: by ALPN over TLS, by prior knowledge in clear), and each
/// request goes to `app.grpc` when its `content-type` is
/// `application/grpc…`, to `app.http` otherwise. With `tls`, every
/// connection is TLS: its handshake runs in the connection's task and must
/// end, like the first request, within `http.handshake_timeout`. Then stops
/// accepting and lets open connections finish (HTTP/1 after the request in
/// flight, HTTP/2 after a GOAWAY); long-lived streams are ended by the
/// shutdown's session close.
pub async fn serve(
    mut listener: Limited,
    app: App,
    config: &Config,
    tls: Option<TlsAcceptor>,
    token: CancellationToken,
) {
    let h2 = &config.http2;
    let handshake = config.http.handshake_timeout;
    let mut builder = auto::Builder::new(StreamExecutor);
    // What an HTTP/1 connection buffers is bounded by `HTTP1_BUF`: a client
    // that stops reading an SSE stream holds at most that in hyper (then its
    // outbox fills and it is closed as slow). Vectored writes stay on:
    // gathering each SSE event into one buffer for a plain `send` measured
    // no cheaper than hyper's `writev` of chunk size, data and CRLF
    // (sse-1k-r100, three A/B rounds), and would copy every event.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(handshake).max_buf_size(HTTP1_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(h2.keepalive_interval))
        .keep_alive_timeout(h2.keepalive_timeout)
        .max_concurrent_streams(h2.max_concurrent_streams)
        // What one stream may have buffered for a client that does not read
        // (hyper's default is 400 KiB); the outbox bounds the rest.
        .max_send_buf_size(SEND_BUF_PER_STREAM);
    let builder = Arc::new(builder);
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
            body_timeout: config.http.body_timeout,
            abuse: Arc::clone(&app.abuse),
            pacer: app.pacer,
        };
        let deadline = Instant::now() + handshake;
        // Watched from here on: a drain waits for handshakes in progress.
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(connection(&builder, watcher, io, svc, deadline));
            }
            Some(acceptor) => {
                let (acceptor, builder) = (acceptor.clone(), Arc::clone(&builder));
                tokio::spawn(tls::connection(acceptor, builder, watcher, io, svc, deadline));
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection over `io` (TCP, or TLS over TCP) with `svc`:
/// closed at `deadline` unless it completed its handshake by then.
fn connection<S>(
    builder: &auto::Builder<StreamExecutor>,
    watcher: Watcher,
    io: LimitedIo<S>,
    svc: Dispatch,
    deadline: Instant,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let control = Arc::clone(&io.control);
    let addr = svc.peer.0;
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
    let conn = watcher.watch(conn.into_owned());
    async move {
        let mut conn = std::pin::pin!(conn);
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            () = tokio::time::sleep_until(deadline) => {
                if !control.handshaken() {
                    // Dropping the connection closes the socket and
                    // frees its permit.
                    tracing::debug!(peer = %addr, "closing a connection that sent no request in time");
                    return;
                }
                conn.await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Spawns each HTTP/2 stream hyper hands it (the only futures hyper spawns
/// on a server) as a task with a [`StreamControl`] of its own, visible to
/// the stream's handler as [`STREAM`] ([`Peer::kill_switch`]). Once the
/// stream is killed the task returns, unless the stream finished on the
/// same wake-up, and dropping the stream makes hyper reset it
/// (`RST_STREAM`): that stream only, even when its body waits on flow
/// control for a client that does not read it.
#[derive(Clone, Copy, Debug)]
struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let control = Arc::new(StreamControl::default());
        tokio::spawn(async move {
            let stream = STREAM.scope(Arc::clone(&control), fut);
            tokio::select! {
                biased;
                _ = stream => {}
                () = control.killed() => {}
            }
        });
    }
}

/// Routes one connection's requests to the gRPC or the HTTP router, with the
/// connection's [`Peer`] as `ConnectInfo` and the client's address as
/// [`ClientIp`]. A request's headers complete the connection's handshake; a
/// request body (not gRPC) must arrive within `body_timeout`
/// ([`body::deadline`]).
///
/// Before any routing, the connection's first request and every request
/// that opens a stream ([`opens_stream`]) is a connection attempt of its
/// client address ([`Abuse::attempt`]); over the limits it is refused at
/// once ([`refuse`]): HTTP 429 `rate_limited` (the WebSocket handshake
/// included), gRPC `RESOURCE_EXHAUSTED`, each with a paced retry hint.
#[derive(Clone)]
struct Dispatch {
    http: Router,
    grpc: Router,
    peer: Peer,
    body_timeout: Duration,
    abuse: Arc<Abuse>,
    pacer: Pacer,
}

/// What [`Dispatch`] answers: a router's future, one with a body deadline,
/// or a refusal made before routing.
type DispatchFuture = Either<
    Either<axum::routing::future::RouteFuture<std::convert::Infallible>, body::Deadlined>,
    std::future::Ready<Result<axum::response::Response, std::convert::Infallible>>,
>;

impl tower::Service<axum::http::Request<hyper::body::Incoming>> for Dispatch {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = DispatchFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        self.peer.1.set_handshaken();
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let ip = self.abuse.client_ip(self.peer.0, req.headers());
        // Asked of every request, so that only the first one is first.
        let first = self.peer.1.first_request();
        if first || opens_stream(&req) {
            if let Err(wait) = self.abuse.attempt(ip) {
                tracing::debug!(client = %ip, "connection attempt over the abuse limits");
                return Either::Right(std::future::ready(Ok(refuse(grpc, self.pacer.after(wait)))));
            }
        }
        req.extensions_mut().insert(ConnectInfo(self.peer.clone()));
        req.extensions_mut().insert(ClientIp(ip));
        if grpc {
            // gRPC bodies are streams (Connect) and do not hold a connection
            // of their own.
            return Either::Left(Either::Left(tower::Service::call(&mut self.grpc, req)));
        }
        if hyper::body::Body::is_end_stream(req.body()) {
            return Either::Left(Either::Left(tower::Service::call(&mut self.http, req)));
        }
        Either::Left(Either::Right(body::deadline(&mut self.http, req, self.body_timeout)))
    }
}

/// gRPC methods that open a stream.
const GRPC_STREAMS: [&str; 2] = ["/rtgate.v1.Gateway/Subscribe", "/rtgate.v1.Gateway/Connect"];

/// True for the requests that open a stream: `GET /v1/ws`, `/v1/sse`, gRPC
/// `Subscribe` and `Connect`. A long poll is not among them: re-polling on
/// a kept-alive connection is a poller's normal stride (a thousand pollers
/// of a 20 msg/s topic make 20,000 polls a second), not a reconnect; a poll
/// counts as an attempt when it is its connection's first request, and as
/// an open stream while it is held.
fn opens_stream<B>(req: &axum::http::Request<B>) -> bool {
    let path = req.uri().path();
    match *req.method() {
        Method::GET => matches!(path, "/v1/ws" | "/v1/sse"),
        Method::POST => GRPC_STREAMS.contains(&path),
        _ => false,
    }
}

/// The answer to a connection attempt over the limits, telling the client
/// to come back after `hint`: HTTP 429 `rate_limited` with `Retry-After`,
/// or a trailers-only gRPC `RESOURCE_EXHAUSTED` with `retry-after-ms` and
/// `grpc-retry-pushback-ms`.
fn refuse(grpc: bool, hint: Duration) -> axum::response::Response {
    let e = ApiError::new(Code::RateLimited, "too many connection attempts; retry later").with_retry(hint);
    if grpc {
        tonic::Status::from(e).into_http::<axum::body::Body>()
    } else {
        e.into_response()
    }
}

/// A TCP listener that holds at most `limits.max_connections` connections
/// open; further clients wait in the kernel's accept queue. Sets
/// `TCP_NODELAY` (latency matters more than packet count here), TCP
/// keepalive (`http.tcp_keepalive`) and, when configured, the send buffer
/// (`http.send_buffer`).
pub struct Limited {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    keepalive: socket2::TcpKeepalive,
    send_buffer: usize,
}

impl Limited {
    /// Wraps `inner`: at most `max` connections, TCP keepalive probes after
    /// `keepalive` of silence.
    pub fn new(inner: TcpListener, max: usize, keepalive: Duration) -> Self {
        let ka = socket2::TcpKeepalive::new().with_time(keepalive);
        #[cfg(target_os = "linux")]
        let ka = ka.with_interval((keepalive / 3).max(Duration::from_secs(1))).with_retries(3);
        Limited {
            inner,
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            keepalive: ka,
            send_buffer: 0,
        }
    }

    /// Sets `SO_SNDBUF` to `bytes` on every accepted socket (0: the
    /// kernel's autotuned default).
    pub fn with_send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = bytes;
        self
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
                    let sock = socket2::SockRef::from(&stream);
                    if let Err(e) = sock.set_tcp_keepalive(&self.keepalive) {
                        tracing::debug!(error = %e, "cannot set TCP keepalive");
                    }
                    if self.send_buffer > 0 {
                        if let Err(e) = sock.set_send_buffer_size(self.send_buffer) {
                            tracing::debug!(error = %e, "cannot set the send buffer");
                        }
                    }
                    crate::metrics::tcp_connection(true);
                    let io = LimitedIo {
                        stream,
                        control: Arc::default(),
                        preface: Some(Preface::default()),
                        _slot: Slot { _permit: permit },
                    };
                    return (io, addr);
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

/// A connection's stream (TCP, or a TLS stream over it) holding one
/// connection permit until dropped, with the connection's kill switch and
/// handshake watch on the bytes the HTTP layer reads and writes (the
/// plaintext, over TLS).
pub struct LimitedIo<S = TcpStream> {
    stream: S,
    control: Arc<ConnControl>,
    /// Watches the first bytes for the HTTP/2 preface and SETTINGS (the
    /// handshake of a connection that may open no stream for a while);
    /// `None` once decided.
    preface: Option<Preface>,
    _slot: Slot,
}

/// One of `limits.max_connections`, counted in the TCP connection gauge
/// while held.
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::tcp_connection(false);
    }
}

impl LimitedIo {
    /// Replaces the TCP stream by what `wrap` makes of it (a TLS
    /// handshake), keeping the permit, kill switch and handshake watch; on
    /// an error the connection is closed and its permit freed.
    async fn wrap<T, E, F>(self, wrap: impl FnOnce(TcpStream) -> F) -> Result<LimitedIo<T>, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        let LimitedIo { stream, control, preface, _slot } = self;
        let stream = wrap(stream).await?;
        Ok(LimitedIo { stream, control, preface, _slot })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for LimitedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.control.check_read(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(preface) = &mut this.preface {
            if let Some(h2) = preface.feed(&buf.filled()[before..]) {
                this.preface = None;
                if h2 {
                    this.control.set_handshaken();
                }
            }
        }
        read
    }
}

/// Recognises the start of an HTTP/2 connection: the client preface, then
/// a complete SETTINGS frame.
#[derive(Debug, Default)]
struct Preface {
    /// Bytes seen so far.
    seen: u32,
    /// The SETTINGS frame's payload length (from its first 3 bytes).
    len: u32,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface and a frame header.
const H2_START: u32 = 24 + 9;
/// Frame type of SETTINGS.
const H2_SETTINGS: u8 = 4;

impl Preface {
    /// Feeds the next bytes read: `Some(true)` once the preface and the
    /// SETTINGS frame are complete, `Some(false)` when this is not HTTP/2
    /// (or a broken start hyper will refuse), `None` while undecided.
    fn feed(&mut self, mut data: &[u8]) -> Option<bool> {
        while let Some(&b) = data.first() {
            let pos = self.seen;
            let n = if pos < 24 {
                let p = pos as usize;
                let n = (24 - p).min(data.len());
                if data[..n] != H2_PREFACE[p..p + n] {
                    return Some(false);
                }
                n
            } else if pos < H2_START {
                if pos < 27 {
                    self.len = self.len << 8 | u32::from(b);
                } else if pos == 27 && b != H2_SETTINGS {
                    return Some(false);
                }
                1
            } else {
                let left = (H2_START + self.len - pos) as usize;
                left.min(data.len())
            };
            self.seen += n as u32;
            data = &data[n..];
            if self.seen >= H2_START && self.seen == H2_START + self.len {
                return Some(true);
            }
        }
        None
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LimitedIo<S> {
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

    // A TLS stream can wait in a flush or a shutdown (close_notify) for a
    // client that does not read: the switch ends those too.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.control.check_write(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.control.check_write(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step`; the first decision.
    fn decide(bytes: &[u8], step: usize) -> Option<bool> {
        let mut p = Preface::default();
        bytes.chunks(step).find_map(|c| p.feed(c))
    }

    #[test]
    fn preface_and_settings_complete_the_http2_handshake() {
        let empty: Vec<u8> = [&H2_PREFACE[..], &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat();
        let six: Vec<u8> = [&H2_PREFACE[..], &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]].concat();
        for step in [1, 2, 7, 100] {
            assert_eq!(decide(&empty, step), Some(true), "step {step}");
            assert_eq!(decide(&six, step), Some(true), "step {step}");
            // Short of the last byte: undecided.
            assert_eq!(decide(&six[..six.len() - 1], step), None, "step {step}");
            assert_eq!(decide(&H2_PREFACE[..14], step), None, "step {step}");
        }
        assert_eq!(decide(b"GET / HTTP/1.1\r\n", 3), Some(false));
        assert_eq!(decide(b"PRI * HTTP/1.1", 1), Some(false));
        // A first frame that is not SETTINGS is not a handshake.
        assert_eq!(decide(&[&H2_PREFACE[..], &[0, 0, 0, 6]].concat(), 5), Some(false));
    }
}
