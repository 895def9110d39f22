//! gRPC (contract §7): service `rtgate.v1.Gateway`, plus `grpc.health.v1`
//! and server reflection, on the same port as HTTP (h2c).
//!
//! The server routes a request here when its `content-type` starts with
//! `application/grpc` (see `server::Dispatch`).
//!
//! - `Subscribe` and `Connect` are streams polled by hyper's task for the
//!   HTTP/2 stream: no task of our own per subscriber. Each has the same
//!   bounded outbox as every other transport; when it overflows, the stream
//!   ends with `RESOURCE_EXHAUSTED` and the client resumes by cursor.
//! - A client that does not read at all leaves its stream unpolled (HTTP/2
//!   flow control), so it cannot be told; after `grpc.stall_timeout` that
//!   stream is reset ([`StallKill`]), the connection's other streams go on.
//!   A connection whose client reads nothing at all is closed by the
//!   HTTP/2 keepalive (`http2.keepalive_*`).
//! - Messages are written as bytes encoded once per message
//!   ([`wire::EncodedMessage`]).

mod connect;
mod health;
mod service;
pub mod wire;

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::core::session::{Kill, Session};
use crate::error;
use crate::state::{AppState, Peer};

/// Server-side generated code (`rtgate.v1.Message` is [`wire::EncodedMessage`]).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub(crate) mod pb {
    include!(concat!(env!("OUT_DIR"), "/server/rtgate.v1.rs"));
}

/// The encoded `FileDescriptorSet` of `proto/rtgate/v1/gateway.proto`, for
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rtgate_descriptor.bin"));

/// The fully qualified service name.
pub const SERVICE: &str = "rtgate.v1.Gateway";

/// Every gRPC service (Gateway, health, reflection) as one router.
pub fn router(state: AppState) -> axum::Router {
    let health = health::service(state.clone());
    let max_frame = state.config.ws_max_frame();
    let gateway = pb::gateway_server::GatewayServer::new(service::Gateway::new(state))
        .max_decoding_message_size(max_frame)
        .max_encoding_message_size(usize::MAX);
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(gateway).add_service(health);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => {
            routes.add_service(v1).add_service(v1alpha);
        }
        (Err(e), _) | (_, Err(e)) => tracing::error!(error = %e, "gRPC reflection unavailable"),
    }
    routes.routes().prepare().into_axum_router().layer(axum::middleware::map_response(too_large_status))
}

/// tonic refuses a request message over the decoder's limit with
/// `OUT_OF_RANGE` before a handler runs (no handler of ours answers that
/// code); the contract says `too_large` ([`error::decode_limit_status`]).
/// Rewrites that trailers-only answer. (A `Connect` frame over the limit
/// arrives mid-stream and is mapped by the stream.)
async fn too_large_status(mut res: axum::response::Response) -> axum::response::Response {
    let h = res.headers_mut();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    if out_of_range {
        let status = error::decode_limit_status().into_http::<()>();
        for (name, value) in status.headers() {
            if name.as_str().starts_with("grpc-") {
                h.insert(name.clone(), value.clone());
            }
        }
    }
    res
}

/// The connection a request came on (set by the server's dispatch).
fn peer<T>(req: &tonic::Request<T>) -> Option<Peer> {
    req.extensions().get::<axum::extract::ConnectInfo<Peer>>().map(|c| c.0.clone())
}

/// Kill switch of a gRPC stream: when its session is closed (slow consumer,
/// engine reset) and the stream still exists after `grpc.stall_timeout`, the
/// client is not reading it at all, so the stream cannot even be told its
/// status; it is reset (HTTP/2 `RST_STREAM`, just this stream).
struct StallKill {
    target: Arc<dyn Kill>,
    stream: Weak<()>,
    after: Duration,
}

impl Kill for StallKill {
    fn kill(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (target, stream, after) = (Arc::clone(&self.target), self.stream.clone(), self.after);
        rt.spawn(async move {
            tokio::time::sleep(after).await;
            if stream.strong_count() > 0 {
                tracing::warn!("gRPC stream still not reading after it was closed; resetting it");
                target.kill();
            }
        });
    }
}

/// Arms the stall kill switch for a stream; keep the returned token alive as
/// long as the stream is.
fn arm_stall_kill(state: &AppState, peer: Option<&Peer>, session: &Session) -> Arc<()> {
    let alive = Arc::new(());
    if let Some(peer) = peer {
        session.set_kill(Arc::new(StallKill {
            target: peer.kill_switch(),
            stream: Arc::downgrade(&alive),
            after: state.config.grpc.stall_timeout,
        }));
    }
    alive
}
