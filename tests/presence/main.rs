//! Presence end to end (contract §11) against real servers and real
//! clients: lists over HTTP, the WebSocket op and gRPC; join/leave frames
//! on WebSocket, SSE and gRPC Connect; grace (a reconnect within it is
//! silent); two processes on one Redis (lists, events, `kill -9` of one);
//! a reconnect storm's frame count; occupancy webhooks once per
//! transition. Short grace, ttl and batch windows keep the crate fast.
#![allow(clippy::unwrap_used, clippy::disallowed_types, dead_code, unreachable_pub)]
#[path = "../support/mod.rs"]
mod support;

#[path = "../webhooks/receiver.rs"]
mod receiver;

mod grpc;
mod memory;
mod redis;
mod storm;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use support::{TestServer, WsClient, WAIT};

/// The HS256 secret of [`auth_cfg`].
pub(crate) const SECRET: &str = "presence-secret-0123456789abcdef0123456789";

/// `[presence]` with `grace` and `ttl` (ms), a 50 ms batch window, and the
/// topic rules: `room.*` presence, `big.*` count only, others none.
pub(crate) fn presence_cfg(grace_ms: u64, ttl_ms: u64) -> String {
    format!(
        "[presence]\ngrace = \"{grace_ms}ms\"\nttl = \"{ttl_ms}ms\"\nbatch = \"50ms\"\nmax_list = 5000\n\
         [[topics]]\npattern = \"room.*\"\npresence = true\n\
         [[topics]]\npattern = \"big.*\"\npresence = \"count\"\n\
         [abuse]\nconnect_rate_per_ip = 100000\nconnect_burst_per_ip = 100000\n\
         connect_rate_global = 100000\nconnect_burst_global = 100000\n"
    )
}

/// Auth on with [`SECRET`].
pub(crate) fn auth_cfg() -> String {
    format!("[auth]\nhmac_secrets = [\"{SECRET}\"]\nleeway = \"0s\"\n")
}

/// A token of `sub` (with `info`) that may subscribe to `subscribe`.
pub(crate) fn token(sub: &str, info: Option<Value>, subscribe: &[&str]) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let mut claims = json!({"sub": sub, "exp": exp, "topics": {"subscribe": subscribe, "publish": []}});
    if let Some(info) = info {
        claims["info"] = info;
    }
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

/// The joins and leaves a presence frame names (`join`, `leave`,
/// `presence_diff`): (joins, leaves).
pub(crate) fn entries(v: &Value) -> (Vec<Value>, Vec<Value>) {
    match v["op"].as_str() {
        Some("join") => (vec![entry_of(v)], vec![]),
        Some("leave") => (vec![], vec![entry_of(v)]),
        Some("presence_diff") => {
            (v["joins"].as_array().unwrap().clone(), v["leaves"].as_array().unwrap().clone())
        }
        _ => panic!("not a presence frame: {v}"),
    }
}

fn entry_of(v: &Value) -> Value {
    json!({"user": v["user"], "client": v["client"], "info": v["info"]})
}

/// True for a presence frame.
pub(crate) fn is_presence(v: &Value) -> bool {
    matches!(v["op"].as_str(), Some("join" | "leave" | "presence_diff" | "presence_count"))
}

/// A WebSocket subscriber of one topic that asked for presence, counting
/// the presence frames it gets.
pub(crate) struct Watcher {
    pub ws: WsClient,
    pub frames: usize,
    pub joins: Vec<Value>,
    pub leaves: Vec<Value>,
}

impl Watcher {
    /// Connects to `s` subscribed to `topic` with `presence=1` (and
    /// `token`), and waits for its own join (the first frame).
    pub async fn open(s: &TestServer, topic: &str, token: Option<&str>) -> Watcher {
        let mut q = format!("/v1/ws?topic={topic}&presence=1");
        if let Some(t) = token {
            q.push_str(&format!("&access_token={t}"));
        }
        let mut w = Watcher { ws: s.ws(&q).await, frames: 0, joins: vec![], leaves: vec![] };
        w.until(|w| !w.joins.is_empty()).await;
        w
    }

    /// The next presence frame (other frames skipped), recorded.
    pub async fn frame(&mut self) -> Value {
        loop {
            let v = self.ws.next().await;
            if is_presence(&v) {
                self.frames += 1;
                if v["op"] != "presence_count" {
                    let (j, l) = entries(&v);
                    self.joins.extend(j);
                    self.leaves.extend(l);
                }
                return v;
            }
        }
    }

    /// Reads presence frames until `done` holds (bounded by `WAIT` per frame).
    pub async fn until(&mut self, done: impl Fn(&Watcher) -> bool) {
        while !done(self) {
            self.frame().await;
        }
    }

    /// The users joined (in order) / left.
    pub fn joined(&self) -> Vec<String> {
        self.joins.iter().map(|e| e["user"].as_str().unwrap().to_owned()).collect()
    }

    pub fn left(&self) -> Vec<String> {
        self.leaves.iter().map(|e| e["user"].as_str().unwrap().to_owned()).collect()
    }
}

/// `GET /v1/presence/{topic}` on `s` (with `token`): (status, body).
pub(crate) async fn list(s: &TestServer, topic: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = s.http.get(s.url(&format!("/v1/presence/{topic}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = tokio::time::timeout(WAIT, req.send()).await.unwrap().unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

/// Polls the presence list of `topic` (bounded) until `done` holds.
pub(crate) async fn wait_list(s: &TestServer, topic: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_list_as(s, topic, None, done).await
}

/// [`wait_list`] with a token (auth on).
pub(crate) async fn wait_list_as(
    s: &TestServer,
    topic: &str,
    token: Option<&str>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, v) = list(s, topic, token).await;
        assert_eq!(status, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "presence list never matched: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a list, bounded
    }
}

/// A WebSocket client subscribed to `topic` (without presence events).
pub(crate) async fn member(s: &TestServer, topic: &str, token: Option<&str>) -> WsClient {
    let mut q = format!("/v1/ws?topic={topic}");
    if let Some(t) = token {
        q.push_str(&format!("&access_token={t}"));
    }
    let mut ws = s.ws(&q).await;
    // A pong proves the handshake (and the subscribe) done.
    ws.assert_quiet("ready").await;
    ws
}
