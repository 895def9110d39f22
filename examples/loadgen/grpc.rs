//! gRPC client connections and the `Subscribe` stream subscriber.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::SubscribeRequest;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::payload::seq_t;
use crate::stats::{SeqCheck, Shared};

/// A gRPC client on one HTTP/2 connection to `addr` (host:port), made on
/// first use; tonic's defaults otherwise (TCP_NODELAY, hyper's 2 MiB stream
/// and 5 MiB connection receive windows).
pub(crate) fn grpc_client(addr: &str) -> Result<GatewayClient<tonic::transport::Channel>, String> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    Ok(GatewayClient::new(ep.connect_timeout(Duration::from_secs(10)).connect_lazy()))
}

/// One gRPC `Subscribe` stream on a shared connection (`client`). Connected
/// once the call answers: the subscription is in place by then.
pub(crate) async fn grpc_subscriber(
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    mut client: GatewayClient<tonic::transport::Channel>,
    topic: String,
    topic_idx: usize,
) {
    let permit = sem.acquire_owned().await;
    let req = SubscribeRequest { topics: vec![topic], cursor: String::new() };
    let call = async { client.subscribe(req).await.map(|r| r.into_inner()).map_err(|s| s.to_string()) };
    let Some(mut stream) = sh.attempt("grpc", topic_idx, call).await else { return };
    drop(permit);

    let mut seqs = SeqCheck::default();
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                let now = sh.now_ns();
                if m.gap.is_some() {
                    sh.srv_gaps.fetch_add(1, Relaxed);
                }
                let v = serde_json::from_slice::<Value>(&m.data).ok();
                sh.payload(&mut seqs, now, v.as_ref().and_then(seq_t));
            }
            Ok(None) => break,
            Err(status) => {
                if sh.closed_early.load(Relaxed) < 3 {
                    eprintln!("grpc stream ended: {status}");
                }
                break;
            }
        }
    }
    sh.closed_early.fetch_add(1, Relaxed);
}
