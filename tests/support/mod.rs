//! Test harness: the real server on 127.0.0.1:0 (in process, or the real
//! binary), with real clients (reqwest, tokio-tungstenite).
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod binary;
pub mod browser;
pub mod metrics;
pub mod proxy;
pub mod redis;
pub mod sse;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use redis::RedisServer;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Parses a message id `"<ms>-<seq>"` into comparable parts.
pub fn pid(s: &str) -> (u64, u64) {
    let (ms, seq) = s.split_once('-').unwrap_or_else(|| panic!("bad id {s:?}"));
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// A cursor is 1 to 4096 characters of `A-Z a-z 0-9 - . _ ~` (contract §1).
pub fn check_cursor(c: &str) {
    assert!(!c.is_empty() && c.len() <= 4096, "cursor length: {c:?}");
    assert!(
        c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
        "cursor has characters outside A-Za-z0-9-._~: {c:?}"
    );
}

/// A message is exactly `{topic, id, ts, data}` with an `<ms>-<seq>` id.
pub fn check_shape(v: &Value) {
    let o = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "id", "topic", "ts"], "{v}");
    pid(v["id"].as_str().expect("id string"));
    assert!(v["ts"].as_u64().is_some(), "ts: {v}");
}

/// A delivered message as any client reads it: a JSON message (WebSocket,
/// SSE, long polling) or a gRPC one.
pub trait Delivered {
    fn topic(&self) -> &str;
    fn id(&self) -> &str;
}

impl Delivered for Value {
    fn topic(&self) -> &str {
        self["topic"].as_str().unwrap_or_else(|| panic!("no topic in {self}"))
    }

    fn id(&self) -> &str {
        self["id"].as_str().unwrap_or_else(|| panic!("no id in {self}"))
    }
}

impl Delivered for rtgate::proto::Message {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn id(&self) -> &str {
        &self.id
    }
}

/// The id of a JSON message.
pub fn id_of(v: &Value) -> String {
    v.id().to_owned()
}

/// Message ids, in arrival order.
pub fn ids<'a, M: Delivered + 'a>(msgs: impl IntoIterator<Item = &'a M>) -> Vec<String> {
    msgs.into_iter().map(|m| m.id().to_owned()).collect()
}

/// Message ids grouped by topic, in arrival order.
pub fn by_topic<'a, M: Delivered + 'a>(
    msgs: impl IntoIterator<Item = &'a M>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in msgs {
        out.entry(m.topic().to_owned()).or_default().push(m.id().to_owned());
    }
    out
}

/// What a client that saw `seen` (ids by topic, from the start) must still
/// get of `published` ((topic, id) in publish order): the rest of each
/// topic. Asserts that each topic's ids increase and that `seen` is a
/// prefix of each topic.
pub fn rest_after(
    published: &[(String, String)],
    seen: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<String>> {
    let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (t, id) in published {
        all.entry(t.clone()).or_default().push(id.clone());
    }
    let mut rest = BTreeMap::new();
    for (t, ids) in &all {
        assert!(ids.windows(2).all(|w| pid(&w[0]) < pid(&w[1])), "ids of {t} increase");
        let prefix = seen.get(t).cloned().unwrap_or_default();
        assert_eq!(prefix[..], ids[..prefix.len()], "A's view of {t}");
        rest.insert(t.clone(), ids[prefix.len()..].to_vec());
    }
    rest
}

/// Where each (topic, id) of `published` stands in publish order (ids are
/// per topic: two topics may share one).
pub fn publish_index(published: &[(String, String)]) -> HashMap<(&str, &str), usize> {
    published.iter().enumerate().map(|(i, (t, id))| ((t.as_str(), id.as_str()), i)).collect()
}

/// The engine a scenario runs on: the embedded one, or Redis on a
/// `redis-server` of the test's own.
#[derive(Clone, Copy)]
pub enum Engine<'a> {
    Memory,
    Redis(&'a RedisServer),
}

impl Engine<'_> {
    /// A server config on this engine, with `rest` (more TOML) after it.
    pub fn config(self, rest: &str) -> String {
        match self {
            Engine::Memory => rest.to_owned(),
            Engine::Redis(r) => r.config(rest),
        }
    }

    /// `memory` on the embedded engine, `redis` on Redis (e.g. how many
    /// messages a scenario can push through in its time).
    pub fn pick<T>(self, memory: T, redis: T) -> T {
        match self {
            Engine::Memory => memory,
            Engine::Redis(_) => redis,
        }
    }
}

/// One scenario as two tests: `$memory` runs `$run(Engine::Memory)`, `$redis`
/// runs `$run(Engine::Redis(..))` on a fresh `redis-server`; both carry the
/// attributes given first.
///
/// ```ignore
/// crate::engine_tests! {
///     #[tokio::test]
///     gap_after_trim, redis_gap_after_trim => |engine| gap_scenario(engine, 5)
/// }
/// ```
#[macro_export]
macro_rules! engine_tests {
    ($(#[$attr:meta])* $memory:ident, $redis:ident => $run:expr) => {
        $(#[$attr])*
        async fn $memory() {
            ($run)($crate::support::Engine::Memory).await;
        }

        $(#[$attr])*
        async fn $redis() {
            let redis = $crate::support::redis::RedisServer::start();
            ($run)($crate::support::Engine::Redis(&redis)).await;
        }
    };
}

/// POSTs `body` to a publish `url`; asserts 200 and returns the id.
pub async fn post_publish(http: &reqwest::Client, url: &str, body: String) -> String {
    let res = tokio::time::timeout(WAIT, http.post(url).body(body).send())
        .await
        .expect("publish timed out")
        .expect("publish");
    assert_eq!(res.status().as_u16(), 200);
    let v: Value = res.json().await.expect("json");
    v["id"].as_str().expect("id").to_owned()
}

/// An in-process rtgate on a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub token: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub http: reqwest::Client,
}

impl TestServer {
    /// Starts with the defaults overridden by `toml`.
    pub async fn start(toml: &str) -> TestServer {
        let config = rtgate::config::Config::from_toml(toml).expect("test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let task = tokio::spawn(rtgate::run(listener, config, token.clone()));
        TestServer { addr, token, task: Some(task), http: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// POST /v1/publish/{topic} with `body`; returns (status, json).
    pub async fn publish_raw(&self, topic: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(self.url(&format!("/v1/publish/{topic}"))).body(body.to_owned());
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = tokio::time::timeout(WAIT, req.send()).await.expect("publish timed out").expect("publish");
        let status = res.status().as_u16();
        let json = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, json)
    }

    /// Publishes and returns the id; panics on a non-200.
    pub async fn publish(&self, topic: &str, body: &str) -> String {
        let (status, json) = self.publish_raw(topic, body, None).await;
        assert_eq!(status, 200, "{json}");
        json["id"].as_str().expect("id").to_owned()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = tokio::time::timeout(WAIT, self.http.get(self.url(path)).send())
            .await
            .expect("get timed out")
            .expect("get");
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    }

    pub async fn ws(&self, path_and_query: &str) -> WsClient {
        WsClient::connect(&self.ws_url(path_and_query)).await
    }

    /// Cancels and waits for `run` to return.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server did not stop")
                .expect("join")
                .expect("run");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A WebSocket client speaking the rtgate protocol.
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, from the client's side.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(u16, String),
    Dropped,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        WsClient { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(WsMessage::text(s)).await.expect("send");
    }

    /// The next JSON text frame (skipping pings/pongs); panics on timeout or close.
    pub async fn next(&mut self) -> Value {
        serde_json::from_str(&self.next_text().await).expect("json frame")
    }

    /// The next text frame, unparsed (skipping pings/pongs); panics on
    /// timeout or close.
    pub async fn next_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("stream ended")
                .expect("ws error");
            match msg {
                WsMessage::Text(t) => return t.as_str().to_owned(),
                WsMessage::Close(c) => panic!("unexpected close: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame, asserting its op.
    pub async fn next_op(&mut self, op: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["op"], op, "expected {op}, got {v}");
        v
    }

    /// Subscribes with a ref and waits for the ack; returns (frames before the ack, the ack).
    pub async fn subscribe(&mut self, topic: &str, after: Option<&str>) -> (Vec<Value>, Value) {
        let mut req = serde_json::json!({"op": "subscribe", "topic": topic, "ref": format!("sub-{topic}")});
        if let Some(a) = after {
            req["after"] = Value::from(a);
        }
        self.send(req).await;
        let mut before = vec![];
        loop {
            let v = self.next().await;
            if v["op"] == "ack" && v["ref"] == format!("sub-{topic}") {
                return (before, v);
            }
            before.push(v);
        }
    }

    /// Reads `n` message frames (panics on any other frame).
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.next().await;
            assert_eq!(v["op"], "message", "expected message, got {v}");
            out.push(v);
        }
        out
    }

    /// Sends a ping and asserts the very next frame is its pong: nothing
    /// else (no extra message, no duplicate) was queued before it.
    pub async fn assert_quiet(&mut self, tag: &str) {
        self.send(serde_json::json!({"op": "ping", "ref": tag})).await;
        let v = self.next().await;
        assert_eq!(v, serde_json::json!({"op": "pong", "ref": tag}), "expected only a pong, got {v}");
    }

    /// Closes from the client side (close frame) and waits for the end.
    pub async fn close_and_wait(mut self) {
        tokio::time::timeout(WAIT, self.ws.close(None)).await.expect("close timed out").expect("close");
        let end = self.ended().await;
        assert!(matches!(end, Ended::Closed(..) | Ended::Dropped), "{end:?}");
    }

    /// Reads until the connection ends; returns the text frames read on the
    /// way (parsed) and how it ended.
    pub async fn frames_until_end(&mut self) -> (Vec<Value>, Ended) {
        let mut frames = vec![];
        loop {
            let Ok(next) = tokio::time::timeout(WAIT, self.ws.next()).await else {
                panic!("timed out waiting for close; frames read: {frames:?}");
            };
            match next {
                None | Some(Err(_)) => return (frames, Ended::Dropped),
                Some(Ok(WsMessage::Text(t))) => {
                    frames.push(serde_json::from_str(t.as_str()).expect("json frame"))
                }
                Some(Ok(WsMessage::Close(Some(f)))) => {
                    return (frames, Ended::Closed(u16::from(f.code), f.reason.as_str().to_owned()))
                }
                Some(Ok(WsMessage::Close(None))) => return (frames, Ended::Closed(1005, String::new())),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits for the connection to end; returns the close code and reason.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("timed out waiting for close") {
                None | Some(Err(_)) => return Ended::Dropped,
                Some(Ok(WsMessage::Close(Some(f)))) => {
                    return Ended::Closed(u16::from(f.code), f.reason.as_str().to_owned())
                }
                Some(Ok(WsMessage::Close(None))) => return Ended::Closed(1005, String::new()),
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// Polls `path` until it answers `want` (bounded by `within`).
pub async fn wait_status(s: &TestServer, path: &str, want: u16, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = s.get(path).await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still {status} {body} after {within:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Ended {
    /// A close's code, reason word and server-paced reconnect hint (reason
    /// `"<word>; retry_ms=<ms>"`); `None` for a dropped connection.
    pub fn paced(&self) -> Option<(u16, &str, Option<u64>)> {
        let Ended::Closed(code, reason) = self else {
            return None;
        };
        Some(match reason.split_once("; retry_ms=") {
            Some((word, ms)) => {
                (*code, word, Some(ms.parse().unwrap_or_else(|_| panic!("bad hint {reason:?}"))))
            }
            None => (*code, reason.as_str(), None),
        })
    }
}

/// Asserts that `end` is a close with `code` and reason `word` carrying a
/// reconnect hint (`"<word>; retry_ms=<ms>"`); returns the hint in ms.
pub fn assert_paced_close(end: &Ended, code: u16, word: &str) -> u64 {
    match end.paced() {
        Some((c, w, Some(ms))) if c == code && w == word => ms,
        _ => panic!("expected close {code} \"{word}; retry_ms=<ms>\", got {end:?}"),
    }
}
