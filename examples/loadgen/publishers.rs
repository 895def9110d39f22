//! Publishers: one waiting for each answer (HTTP or gRPC `Publish`) and the
//! throughput publishers (HTTP, WebSocket, gRPC `Publish` and `Connect`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::{client_frame, server_frame, ClientFrame, PublishOp, PublishRequest};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::args::{Flavour, Via};
use crate::grpc::grpc_client;
use crate::http::HttpPost;
use crate::payload::make_payload;
use crate::stats::{hist, Shared};

/// A publisher that waits for each answer: HTTP/1.1 keep-alive or the gRPC
/// `Publish` rpc (on a connection it may share), over a list of topics.
pub(crate) enum Unary {
    Http { http: HttpPost, paths: Vec<String> },
    Grpc { client: GatewayClient<tonic::transport::Channel>, topics: Vec<String> },
}

impl Unary {
    /// rtgate's (or Nchan's) HTTP publish endpoint for each topic.
    pub(crate) fn http(flavour: Flavour, addr: &str, topics: &[String]) -> Self {
        let paths = topics
            .iter()
            .map(|t| match flavour {
                Flavour::Rtgate => format!("/v1/publish/{t}"),
                Flavour::Nchan => format!("/pub?id={t}"),
            })
            .collect();
        Unary::Http { http: HttpPost::new(addr.to_string()), paths }
    }

    /// Publishes `body` to topic `ti` (5 s at most); Err describes a failure.
    pub(crate) async fn publish(&mut self, ti: usize, body: Vec<u8>) -> Result<(), String> {
        let limit = Duration::from_secs(5);
        match self {
            Unary::Http { http, paths } => {
                match tokio::time::timeout(limit, http.post(&paths[ti], &body)).await {
                    Ok(Ok(code)) if (200..300).contains(&code) => Ok(()),
                    Ok(Ok(code)) => Err(format!("HTTP {code}")),
                    other => {
                        http.conn = None; // a timed out request leaves the connection unusable
                        Err(format!("{other:?}"))
                    }
                }
            }
            Unary::Grpc { client, topics } => {
                let req = PublishRequest {
                    topic: topics[ti].clone(),
                    data: body,
                    idempotency_key: String::new(),
                    ..Default::default()
                };
                match tokio::time::timeout(limit, client.publish(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err(status.to_string()),
                    Err(_) => Err("no answer within 5 s".into()),
                }
            }
        }
    }
}

/// What every throughput publisher shares.
pub(crate) struct Tp {
    pub(crate) sh: Arc<Shared>,
    pub(crate) addr: String,
    pub(crate) topics: Vec<String>,
    pub(crate) payload: usize,
    pub(crate) inflight: usize,
    pub(crate) deadline: tokio::time::Instant,
    pub(crate) count: u64,
    pub(crate) issued: AtomicU64,
    pub(crate) errors_logged: AtomicU64,
}

impl Tp {
    /// May one more publish be sent?
    fn claim(&self) -> bool {
        tokio::time::Instant::now() < self.deadline
            && (self.count == 0 || self.issued.fetch_add(1, Relaxed) < self.count)
    }

    fn log_error(&self, what: &str) {
        if self.errors_logged.fetch_add(1, Relaxed) < 5 {
            eprintln!("publish error: {what}");
        }
    }
}

pub(crate) struct TpStats {
    pub(crate) accepted: u64,
    pub(crate) errors: u64,
    pub(crate) lat_us: Histogram<u64>,
    /// Accepted publishes per topic index.
    pub(crate) per_topic: Vec<u64>,
}

impl TpStats {
    fn new(topics: usize) -> Self {
        TpStats { accepted: 0, errors: 0, lat_us: hist(), per_topic: vec![0; topics] }
    }

    /// Counts an accepted publish to topic `ti` sent at `t0` and answered at `now` (ns).
    fn accept(&mut self, ti: usize, t0: u64, now: u64) {
        self.accepted += 1;
        self.per_topic[ti] += 1;
        self.lat_us.saturating_record(now.saturating_sub(t0) / 1000);
    }

    /// Adds another publisher's figures.
    fn merge(&mut self, other: &TpStats) {
        self.accepted += other.accepted;
        self.errors += other.errors;
        self.lat_us.add(&other.lat_us).ok();
        for (a, b) in self.per_topic.iter_mut().zip(&other.per_topic) {
            *a += b;
        }
    }

    /// The summed figures of publisher tasks.
    pub(crate) async fn join(topics: usize, handles: Vec<tokio::task::JoinHandle<TpStats>>) -> TpStats {
        let mut st = TpStats::new(topics);
        for h in handles {
            if let Ok(s) = h.await {
                st.merge(&s);
            }
        }
        st
    }
}

/// Starts `publishers` publishers (connections) over `via`.
pub(crate) fn spawn_publishers(
    tp: &Arc<Tp>,
    via: Via,
    publishers: usize,
) -> Vec<tokio::task::JoinHandle<TpStats>> {
    (0..publishers.max(1))
        .map(|p| {
            let tp = tp.clone();
            match via {
                Via::Http => {
                    let http = Unary::http(Flavour::Rtgate, &tp.addr, &tp.topics);
                    tokio::spawn(tp_unary(tp, p, http))
                }
                Via::GrpcPublish => tokio::spawn(tp_grpc_publish(tp, p)),
                Via::Ws | Via::GrpcConnect => tokio::spawn(tp_pipelined(tp, p, via)),
            }
        })
        .collect()
}

/// One publisher waiting for each answer (HTTP POST or gRPC `Publish`);
/// `p` numbers its payloads' sequences apart from the other publishers'.
async fn tp_unary(tp: Arc<Tp>, p: usize, mut unary: Unary) -> TpStats {
    let m = tp.topics.len();
    let mut seqs = vec![0u64; m];
    let mut st = TpStats::new(m);
    let mut k = p;
    while tp.claim() {
        let ti = k % m;
        k += 1;
        let t0 = tp.sh.now_ns();
        let body = make_payload(seqs[ti], t0, p, tp.payload);
        seqs[ti] += 1;
        match unary.publish(ti, body).await {
            Ok(()) => st.accept(ti, t0, tp.sh.now_ns()),
            Err(e) => {
                st.errors += 1;
                tp.log_error(&e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    st
}

/// gRPC `Publish` calls on one HTTP/2 connection, `--inflight` of them at
/// once (each a sequential publisher of its own).
async fn tp_grpc_publish(tp: Arc<Tp>, p: usize) -> TpStats {
    let client = match grpc_client(&tp.addr) {
        Ok(c) => c,
        Err(e) => {
            tp.log_error(&e);
            return TpStats { errors: 1, ..TpStats::new(tp.topics.len()) };
        }
    };
    let w = tp.inflight.max(1);
    let handles = (0..w)
        .map(|j| {
            let unary = Unary::Grpc { client: client.clone(), topics: tp.topics.clone() };
            tokio::spawn(tp_unary(tp.clone(), p * w + j, unary))
        })
        .collect();
    TpStats::join(tp.topics.len(), handles).await
}

/// A connection carrying publishes tagged with a numeric ref, each answered
/// by an ack or an error: WebSocket or a gRPC `Connect` stream (one per
/// publisher: the size of its variants does not matter).
#[allow(clippy::large_enum_variant)]
enum Pipe {
    Ws(tokio_tungstenite::WebSocketStream<TcpStream>),
    Grpc { tx: tokio::sync::mpsc::Sender<ClientFrame>, frames: tonic::Streaming<rtgate::proto::ServerFrame> },
}

impl Pipe {
    async fn open(tp: &Tp, via: Via) -> Result<Pipe, String> {
        if via == Via::Ws {
            let tcp = TcpStream::connect(&tp.addr).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let url = format!("ws://{}/v1/ws", tp.addr);
            let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.map_err(|e| e.to_string())?;
            return Ok(Pipe::Ws(ws));
        }
        let mut client = grpc_client(&tp.addr)?;
        let (tx, rx) = tokio::sync::mpsc::channel(tp.inflight.max(1));
        let call = client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        Ok(Pipe::Grpc { tx, frames: call.map_err(|s| s.to_string())?.into_inner() })
    }

    /// Queues one publish (written by `flush`).
    async fn feed(&mut self, r: u64, topic: &str, body: Vec<u8>) -> Result<(), String> {
        match self {
            Pipe::Ws(ws) => {
                let data = String::from_utf8_lossy(&body);
                let frame = format!(r#"{{"op":"publish","topic":"{topic}","data":{data},"ref":{r}}}"#);
                ws.feed(Message::text(frame)).await.map_err(|e| e.to_string())
            }
            Pipe::Grpc { tx, .. } => {
                let op = PublishOp {
                    topic: topic.to_string(),
                    data: body,
                    idempotency_key: String::new(),
                    ..Default::default()
                };
                let frame = ClientFrame { r#ref: r.to_string(), op: Some(client_frame::Op::Publish(op)) };
                tx.send(frame).await.map_err(|_| "Connect request stream closed".to_string())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        match self {
            Pipe::Ws(ws) => ws.flush().await.map_err(|e| e.to_string()),
            Pipe::Grpc { .. } => Ok(()),
        }
    }

    /// The next frame: `Some((ref, None))` for an ack with an id,
    /// `Some((ref, Some(frame)))` for another answer, `None` for a frame that
    /// answers no publish.
    async fn answer(&mut self) -> Result<Option<(u64, Option<String>)>, String> {
        match self {
            Pipe::Ws(ws) => {
                let text = match ws.next().await {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
                    Some(Ok(_)) => return Ok(None),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("connection closed".into()),
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { return Ok(None) };
                let acked = v.get("op").and_then(Value::as_str) == Some("ack") && v.get("id").is_some();
                Ok(v.get("ref").and_then(Value::as_u64).map(|r| (r, (!acked).then(|| text.to_string()))))
            }
            Pipe::Grpc { frames, .. } => {
                let frame = frames.message().await.map_err(|s| s.to_string())?.ok_or("stream ended")?;
                let (r, failure) = match frame.frame {
                    Some(server_frame::Frame::Ack(a)) => {
                        (a.r#ref.clone(), a.id.is_empty().then(|| format!("{a:?}")))
                    }
                    Some(server_frame::Frame::Error(e)) => (e.r#ref.clone(), Some(format!("{e:?}"))),
                    _ => return Ok(None),
                };
                Ok(r.parse().ok().map(|r| (r, failure)))
            }
        }
    }

    async fn close(self) {
        match self {
            Pipe::Ws(mut ws) => {
                let _ = ws.close(None).await;
            }
            Pipe::Grpc { .. } => {} // dropping the sender ends the request stream
        }
    }
}

/// WebSocket or gRPC `Connect` publisher: up to `inflight` publishes
/// awaiting their ack on one connection, reconnecting when it breaks.
async fn tp_pipelined(tp: Arc<Tp>, p: usize, via: Via) -> TpStats {
    let m = tp.topics.len();
    let mut seqs = vec![0u64; m];
    let mut st = TpStats::new(m);
    let mut k = p;
    let mut next_ref: u64 = 0;
    let mut done = false;
    while !done {
        let mut pipe = match tokio::time::timeout(Duration::from_secs(10), Pipe::open(&tp, via)).await {
            Ok(Ok(pipe)) => pipe,
            other => {
                st.errors += 1;
                tp.log_error(&format!("connect: {:?}", other.map(|r| r.map(|_| ()))));
                if tokio::time::Instant::now() >= tp.deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // ref -> (send time, topic index)
        let mut pending: std::collections::HashMap<u64, (u64, usize)> = std::collections::HashMap::new();
        let broken: Option<String> = 'conn: loop {
            let mut sent = false;
            while !done && pending.len() < tp.inflight.max(1) {
                if !tp.claim() {
                    done = true;
                    break;
                }
                let ti = k % m;
                k += 1;
                let t0 = tp.sh.now_ns();
                let body = make_payload(seqs[ti], t0, p, tp.payload);
                seqs[ti] += 1;
                let r = next_ref;
                next_ref += 1;
                pending.insert(r, (t0, ti));
                if let Err(e) = pipe.feed(r, &tp.topics[ti], body).await {
                    break 'conn Some(e);
                }
                sent = true;
            }
            if sent {
                if let Err(e) = pipe.flush().await {
                    break 'conn Some(e);
                }
            }
            if pending.is_empty() {
                if done {
                    break None;
                }
                continue;
            }
            let (r, failure) = match tokio::time::timeout(Duration::from_secs(10), pipe.answer()).await {
                Ok(Ok(Some(answer))) => answer,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => break Some(e),
                Err(_) => break Some("no ack within 10 s".into()),
            };
            let Some((t0, ti)) = pending.remove(&r) else {
                continue;
            };
            match failure {
                None => st.accept(ti, t0, tp.sh.now_ns()),
                Some(frame) => {
                    st.errors += 1;
                    tp.log_error(&frame);
                }
            }
        };
        if let Some(e) = broken {
            // Unacknowledged publishes count as errors (they may or may not have been stored).
            st.errors += pending.len() as u64;
            tp.log_error(&format!("{e} ({} unacknowledged)", pending.len()));
            done = done || tokio::time::Instant::now() >= tp.deadline;
        } else {
            pipe.close().await;
        }
    }
    st
}
