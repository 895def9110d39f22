//! Subscribers on the four transports, each resuming by cursor after every
//! disconnect, on the other gateway first. What each one receives is
//! recorded as it arrives (ids per topic, gaps, closes) for the final check.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use parking_lot::Mutex;
use rand::Rng;
use rtgate::core::MessageId;
use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::SubscribeRequest;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// The four subscribing transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Transport {
    Ws,
    Sse,
    Poll,
    Grpc,
}

impl Transport {
    pub(crate) const ALL: [Transport; 4] = [Transport::Ws, Transport::Sse, Transport::Poll, Transport::Grpc];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Grpc => "grpc",
        }
    }
}

/// A gap the server reported: everything after `after` and before
/// `oldest` in `topic` is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    pub(crate) topic: String,
    pub(crate) after: MessageId,
    pub(crate) oldest: MessageId,
}

/// What one subscriber saw.
#[derive(Default)]
pub(crate) struct Seen {
    /// Ids per topic, in arrival order.
    pub(crate) ids: HashMap<String, Vec<MessageId>>,
    pub(crate) gaps: Vec<Gap>,
    /// The cursor to resume from (the last one the server handed out).
    pub(crate) cursor: String,
    /// Sessions ended (by the server, a kill, or an error) and resumed.
    pub(crate) reconnects: u64,
    /// Why sessions ended, by reason word.
    pub(crate) ends: BTreeMap<String, u64>,
    /// Messages that could not be read (not the message JSON).
    pub(crate) garbled: u64,
}

/// One subscriber.
pub(crate) struct Sub {
    pub(crate) transport: Transport,
    pub(crate) topics: Vec<String>,
    /// Reads slowly while the run publishes (a slow consumer).
    pub(crate) slow: bool,
    pub(crate) seen: Mutex<Seen>,
}

impl Sub {
    fn message(&self, topic: &str, id: &str, cursor: Option<&str>) {
        let mut s = self.seen.lock();
        match id.parse::<MessageId>() {
            Ok(id) => s.ids.entry(topic.to_owned()).or_default().push(id),
            Err(_) => s.garbled += 1,
        }
        if let Some(c) = cursor.filter(|c| !c.is_empty()) {
            s.cursor = c.to_owned();
        }
    }

    fn gap(&self, v: &Value, cursor: Option<&str>) {
        let id = |k: &str| v.get(k).and_then(Value::as_str).and_then(|s| s.parse::<MessageId>().ok());
        let topic = v.get("topic").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut s = self.seen.lock();
        match (id("after"), id("oldest")) {
            (Some(after), Some(oldest)) => {
                let g = Gap { topic, after, oldest };
                if !s.gaps.contains(&g) {
                    s.gaps.push(g);
                }
            }
            _ => s.garbled += 1,
        }
        if let Some(c) = cursor.filter(|c| !c.is_empty()) {
            s.cursor = c.to_owned();
        }
    }

    fn cursor(&self) -> String {
        self.seen.lock().cursor.clone()
    }

    /// The last id received for `topic`.
    pub(crate) fn last(&self, topic: &str) -> Option<MessageId> {
        self.seen.lock().ids.get(topic).and_then(|v| v.last().copied())
    }
}

/// What every subscriber shares.
pub(crate) struct Ctx {
    /// host:port of each gateway.
    pub(crate) gateways: Vec<String>,
    pub(crate) stop: CancellationToken,
    /// True while the publishers run: slow subscribers read slowly only then.
    pub(crate) publishing: AtomicBool,
    pub(crate) http: reqwest::Client,
    /// Pause per message of a slow subscriber.
    pub(crate) slow_delay: Duration,
}

impl Ctx {
    fn slow_now(&self, sub: &Sub) -> bool {
        sub.slow && self.publishing.load(Relaxed)
    }
}

/// A short reason from an error text: its innermost cause (after the last
/// ": "), as a word (`connection_reset_without_closing_h`).
fn word(text: &str) -> String {
    let cause = text.rsplit(": ").next().unwrap_or(text).trim();
    let w: String = cause
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .take(32)
        .collect();
    if w.is_empty() {
        "error".into()
    } else {
        w
    }
}

/// Runs `sub` until `ctx.stop`: a session on one gateway, then, whatever
/// ended it, a resume from the last cursor on the next gateway.
pub(crate) async fn run(ctx: Arc<Ctx>, sub: Arc<Sub>, first_gateway: usize) {
    let mut g = first_gateway;
    while !ctx.stop.is_cancelled() {
        let addr = ctx.gateways[g % ctx.gateways.len()].clone();
        let session = async {
            match sub.transport {
                Transport::Ws => ws(&ctx, &sub, &addr).await,
                Transport::Sse => sse(&ctx, &sub, &addr).await,
                Transport::Poll => poll(&ctx, &sub, &addr).await,
                Transport::Grpc => grpc(&ctx, &sub, &addr).await,
            }
        };
        let end = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            end = session => end,
        };
        {
            let mut s = sub.seen.lock();
            s.reconnects += 1;
            *s.ends.entry(end).or_default() += 1;
        }
        g += 1;
        let pause = rand::rng().random_range(50..250);
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {} // reconnect backoff
        }
    }
}

/// The contract code a gRPC status message starts with (`slow_consumer:
/// ...`, `unavailable: ...`), else the short reason.
fn code_word(message: &str) -> String {
    match message.split_once(':') {
        Some((code, _)) if code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => code.to_owned(),
        _ => word(message),
    }
}

/// A TCP connection; a slow subscriber's has a small receive buffer so the
/// server's queue, not the kernel's, absorbs the backlog.
async fn connect(addr: &str, slow: bool) -> Result<TcpStream, String> {
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if slow {
        socket.set_recv_buffer_size(4096).map_err(|e| e.to_string())?;
    }
    let s = tokio::time::timeout(Duration::from_secs(3), socket.connect(sa))
        .await
        .map_err(|_| "connect_timeout".to_owned())?
        .map_err(|e| format!("connect {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn topics_query(sub: &Sub) -> String {
    sub.topics.iter().map(|t| format!("topic={t}")).collect::<Vec<_>>().join("&")
}

/// WebSocket: `?topic=..&cursor=C`, `message` and `gap` frames.
async fn ws(ctx: &Ctx, sub: &Sub, addr: &str) -> String {
    let slow = ctx.slow_now(sub);
    let tcp = match connect(addr, slow).await {
        Ok(t) => t,
        Err(e) => return word(&e),
    };
    let url = format!("ws://{addr}/v1/ws?{}&cursor={}", topics_query(sub), sub.cursor());
    let mut ws =
        match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::client_async(url, tcp)).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return format!("handshake_{}", word(&e.to_string())),
            Err(_) => return "handshake_timeout".into(),
        };
    while let Some(frame) = ws.next().await {
        let text = match frame {
            Ok(WsMessage::Text(t)) => t,
            Ok(WsMessage::Close(Some(f))) => {
                return format!("close_{}_{}", u16::from(f.code), f.reason.as_str())
            }
            Ok(WsMessage::Close(None)) => return "close".into(),
            Ok(_) => continue,
            Err(e) => return word(&e.to_string()),
        };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            sub.seen.lock().garbled += 1;
            continue;
        };
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
        match s("op") {
            "message" => sub.message(s("topic"), s("id"), Some(s("cursor"))),
            "gap" => sub.gap(&v, None),
            "error" => {
                let _ = ws.send(WsMessage::Close(None)).await;
                return format!("error_{}", s("code"));
            }
            _ => {}
        }
        if ctx.slow_now(sub) {
            tokio::time::sleep(ctx.slow_delay).await; // a slow reader, on purpose
        }
    }
    "eof".into()
}

/// Server-Sent Events over a plain HTTP/1.1 connection (hyper's client, so
/// a slow reader's socket can be small): `Last-Event-ID: C`.
async fn sse(ctx: &Ctx, sub: &Sub, addr: &str) -> String {
    let slow = ctx.slow_now(sub);
    let tcp = match connect(addr, slow).await {
        Ok(t) => t,
        Err(e) => return word(&e),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await {
            Ok(x) => x,
            Err(e) => return word(&e.to_string()),
        };
    let conn = tokio::spawn(conn);
    let _abort = AbortOnDrop(conn);
    let req = hyper::Request::get(format!("/v1/sse?{}", topics_query(sub)))
        .header("host", addr)
        .header("accept", "text/event-stream")
        .header("last-event-id", sub.cursor())
        .body(Empty::<Bytes>::new());
    let Ok(req) = req else { return "bad_request_build".into() };
    let res = match tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return word(&e.to_string()),
        Err(_) => return "response_timeout".into(),
    };
    if res.status() != 200 {
        return format!("http_{}", res.status().as_u16());
    }
    let mut events = res.into_body().into_data_stream().eventsource();
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return word(&e.to_string()),
        };
        let v = serde_json::from_str::<Value>(&ev.data);
        match (ev.event.as_str(), v) {
            ("message", Ok(v)) => {
                let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                sub.message(&s("topic"), &s("id"), Some(&ev.id));
            }
            ("gap", Ok(v)) => sub.gap(&v, Some(&ev.id)),
            _ => sub.seen.lock().garbled += 1,
        }
        if ctx.slow_now(sub) {
            tokio::time::sleep(ctx.slow_delay).await; // a slow reader, on purpose
        }
    }
    "eof".into()
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Long polling: each answer's cursor is passed back. A poller has no
/// server-side queue to overflow: a slow one polls small batches with pauses.
async fn poll(ctx: &Ctx, sub: &Sub, addr: &str) -> String {
    loop {
        let slow = ctx.slow_now(sub);
        let limit = if slow { 5 } else { 100 };
        let url = format!(
            "http://{addr}/v1/poll?{}&cursor={}&timeout=5&limit={limit}",
            topics_query(sub),
            sub.cursor()
        );
        let res = match ctx.http.get(&url).timeout(Duration::from_secs(15)).send().await {
            Ok(r) => r,
            Err(e) => return if e.is_timeout() { "timeout".into() } else { "connect".into() },
        };
        if res.status() != 200 {
            return format!("http_{}", res.status().as_u16());
        }
        let v: Value = match res.json().await {
            Ok(v) => v,
            Err(_) => return "body".into(),
        };
        for m in v.get("messages").and_then(Value::as_array).into_iter().flatten() {
            let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default();
            sub.message(s("topic"), s("id"), None);
        }
        for g in v.get("gaps").and_then(Value::as_array).into_iter().flatten() {
            sub.gap(g, None);
        }
        match v.get("cursor").and_then(Value::as_str) {
            Some(c) => sub.seen.lock().cursor = c.to_owned(),
            None => return "no_cursor".into(),
        }
        if slow {
            tokio::time::sleep(ctx.slow_delay).await; // a slow poller, on purpose
        }
    }
}

/// gRPC `Subscribe` on its own HTTP/2 connection (a slow one with small
/// flow-control windows, so the server's queue absorbs the backlog).
async fn grpc(ctx: &Ctx, sub: &Sub, addr: &str) -> String {
    let slow = ctx.slow_now(sub);
    let Ok(mut ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return "bad_endpoint".into();
    };
    ep = ep.connect_timeout(Duration::from_secs(3));
    if slow {
        ep = ep.initial_stream_window_size(16 * 1024).initial_connection_window_size(16 * 1024);
    }
    let channel = match ep.connect().await {
        Ok(c) => c,
        Err(_) => return "connect".into(),
    };
    let mut client = GatewayClient::new(channel);
    let req = SubscribeRequest { topics: sub.topics.clone(), cursor: sub.cursor() };
    let mut stream = match tokio::time::timeout(Duration::from_secs(5), client.subscribe(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return format!("status_{}", code_word(status.message())),
        Err(_) => return "call_timeout".into(),
    };
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if let Some(g) = &m.gap {
                    let v = serde_json::json!({"topic": g.topic, "after": g.after, "oldest": g.oldest});
                    sub.gap(&v, None);
                }
                sub.message(&m.topic, &m.id, Some(&m.cursor));
            }
            Ok(None) => return "eof".into(),
            Err(status) => return format!("status_{}", code_word(status.message())),
        }
        if ctx.slow_now(sub) {
            tokio::time::sleep(ctx.slow_delay).await; // a slow reader, on purpose
        }
    }
}
