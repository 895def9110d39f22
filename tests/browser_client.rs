//! The JavaScript client (`GET /v1/client.js`) in a real browser (contract
//! §12): headless Chromium loads a page from a small proxy in front of the
//! real binary (tests/support/proxy.rs) and drives `Rtgate` there.
//! - a proxy that refuses WebSocket upgrades → the client settles on SSE;
//!   one that also holds SSE responses like a buffering proxy → long
//!   polling; messages flow both ways, and a reload goes straight to the
//!   transport that worked (remembered in `sessionStorage`);
//! - a gateway killed (`SIGKILL`) and restarted mid-stream on the Redis
//!   engine, with messages published while the clients are away: a WS, an
//!   SSE and a long-poll client each reconnect by themselves and get every
//!   message exactly once, in order, with no gap;
//! - a token function whose tokens live 3 s: the WebSocket stays open
//!   across several expiries (refreshed with the `refresh` op) and still
//!   receives.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;

use std::time::Duration;

use serde_json::Value;
use support::binary::Gateway;
use support::browser::{require_browser, Browser};
use support::proxy::{Mode, Proxy};
use support::redis::RedisServer;

/// Any single scenario, start to finish.
const BUDGET: Duration = Duration::from_secs(90);
/// Any single condition in the page.
const STEP: Duration = Duration::from_secs(20);

/// The test page: the client from the gateway (through the proxy, so the
/// same origin), and helpers that record what each client sees.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>rtgate client e2e</title>
<script type="module">
import { Rtgate } from "/v1/client.js";
window.clients = {};
window.openClient = (name, topic, opts) => {
  const c = { states: [], got: [], data: [], gaps: [], errors: [], asked: 0, published: [] };
  const o = { ...opts };
  if (o.tokenUrl) {
    const u = o.tokenUrl;
    o.token = async () => { c.asked += 1; return (await fetch(u)).text(); };
    delete o.tokenUrl;
  }
  if (o.session) { o.storage = sessionStorage; delete o.session; }
  c.rt = new Rtgate(location.origin, o);
  c.rt.on("state", (s) => c.states.push({ state: s.state, transport: s.transport ?? null, reason: s.reason ?? null }));
  c.rt.on("error", (e) => c.errors.push(e.code));
  c.rt.subscribe(topic, {
    onMessage: (m) => { c.got.push(m.id); c.data.push(m.data); },
    onGap: (g) => c.gaps.push(g),
  });
  window.clients[name] = c;
  return true;
};
window.publishFrom = (name, topic, data) => {
  const c = window.clients[name];
  c.rt.publish(topic, data).then((id) => c.published.push(id), (e) => c.errors.push("publish:" + (e.code ?? e)));
  return true;
};
window.view = (name) => {
  const c = window.clients[name];
  return { states: c.states, got: c.got, data: c.data, gaps: c.gaps.length, errors: c.errors, asked: c.asked, published: c.published };
};
window.ready = true;
</script>"#;

async fn bounded(f: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(BUDGET, f).await.unwrap_or_else(|_| panic!("took longer than {BUDGET:?}"));
}

/// Writes `toml` to a file of this test process; its path.
fn config_file(name: &str, toml: &str) -> String {
    let path = std::env::temp_dir().join(format!("rtgate-browser-client-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

fn js(v: &Value) -> String {
    v.to_string()
}

/// Loads the page from `proxy` and waits for its module.
async fn load(b: &Browser, proxy: &Proxy) {
    b.goto(&proxy.url("/")).await;
    b.wait_for("the page's module", "return window.ready === true;", STEP, |v| v == &Value::Bool(true)).await;
}

async fn open(b: &Browser, name: &str, topic: &str, opts: Value) {
    let ok = b
        .eval(&format!(
            "return window.openClient({}, {}, {});",
            js(&name.into()),
            js(&topic.into()),
            js(&opts)
        ))
        .await;
    assert_eq!(ok, Value::Bool(true));
}

fn view_script(name: &str) -> String {
    format!("return window.view({});", js(&name.into()))
}

/// The transports of the client's `connected` events, in order.
fn connected(v: &Value) -> Vec<String> {
    v["states"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "connected")
        .map(|s| s["transport"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

async fn wait_view(b: &Browser, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    b.wait_for(&format!("{name}: {what}"), &view_script(name), STEP, done).await
}

/// Publishes over HTTP straight to the gateway (another client); the id.
async fn publish(gw_port: u16, topic: &str, body: &str) -> String {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{gw_port}/v1/publish/{topic}");
    support::post_publish(&http, &url, body.to_owned()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_websocket_falls_back_to_sse_and_a_buffered_sse_to_long_polling() {
    require_browser();
    bounded(async {
        let gw = Gateway::spawn(&[], &[]).await;
        let b = Browser::start(1000, 700).await;
        for (mode, want) in [(Mode::NoUpgrade, "sse"), (Mode::Buffering, "poll")] {
            let p = Proxy::start(gw.port, mode, PAGE, None).await;
            let topic = format!("e2e.fallback.{want}");
            load(&b, &p).await;
            let opts = serde_json::json!({ "sseTimeout": 1500, "pollTimeout": 5, "session": true });
            open(&b, "c", &topic, opts.clone()).await;
            let v = wait_view(&b, "c", &format!("connected over {want}"), |v| !connected(v).is_empty()).await;
            assert_eq!(connected(&v), [want], "{mode:?}: {v}");
            // Both ways: the page publishes (over HTTP), another client too.
            b.eval(&format!(
                "return window.publishFrom('c', {}, {{\"from\": \"page\"}});",
                js(&topic.as_str().into())
            ))
            .await;
            let v = wait_view(&b, "c", "its own publish acknowledged", |v| {
                v["published"].as_array().unwrap().len() == 1
            })
            .await;
            let mine = strings(&v["published"]);
            let theirs = publish(gw.port, &topic, r#"{"from":"elsewhere"}"#).await;
            let v = wait_view(&b, "c", "both messages", |v| v["got"].as_array().unwrap().len() >= 2).await;
            assert_eq!(strings(&v["got"]), [mine[0].clone(), theirs.clone()], "{mode:?}: {v}");
            assert_eq!(v["data"], serde_json::json!([{"from": "page"}, {"from": "elsewhere"}]));
            assert_eq!(v["gaps"], 0);

            // A reload remembers what worked: no attempt at a blocked
            // transport first, and it resumes after what it had.
            load(&b, &p).await;
            open(&b, "c", &topic, opts).await;
            let after = publish(gw.port, &topic, r#"{"from":"after reload"}"#).await;
            let v = wait_view(&b, "c", "the message after the reload", |v| {
                v["got"].as_array().unwrap().iter().any(|id| id.as_str() == Some(after.as_str()))
            })
            .await;
            assert_eq!(strings(&v["got"]), [after], "{mode:?}: resumed with no duplicate: {v}");
            let tried: Vec<&str> =
                v["states"].as_array().unwrap().iter().filter_map(|s| s["transport"].as_str()).collect();
            assert!(tried.iter().all(|t| *t == want), "{mode:?}: after a reload only {want} is tried: {v}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_and_restarted_mid_stream_loses_nothing_on_any_transport() {
    require_browser();
    bounded(async {
        let redis = RedisServer::start();
        let config = config_file("restart", &redis.config(""));
        let args = ["--config", config.as_str()];
        let env = [("RTGATE_RECONNECT__MIN", "100ms"), ("RTGATE_RECONNECT__WINDOW", "300ms")];
        let mut gw = Gateway::spawn(&args, &env).await;
        let port = gw.port;
        let p = Proxy::start(port, Mode::Pass, PAGE, None).await;
        let b = Browser::start(1000, 700).await;
        load(&b, &p).await;
        let topic = "e2e.restart";
        let names = ["ws", "sse", "poll"];
        for t in names {
            let opts = serde_json::json!({
                "transports": [t], "pollTimeout": 5, "backoff": {"base": 100, "cap": 1000},
            });
            open(&b, t, topic, opts).await;
        }
        for t in names {
            wait_view(&b, t, "connected", |v| connected(v) == [t]).await;
        }
        let mut ids =
            vec![publish(port, topic, r#"{"i":1}"#).await, publish(port, topic, r#"{"i":2}"#).await];
        for t in names {
            wait_view(&b, t, "the first two", |v| v["got"].as_array().unwrap().len() == 2).await;
        }

        // Killed: no goodbye to anyone. Restarted on the same port and the
        // same Redis; three messages go in while the clients are still away.
        gw.child.kill().unwrap();
        let _ = gw.child.wait();
        for t in names {
            wait_view(&b, t, "the drop noticed", |v| {
                v["states"].as_array().unwrap().iter().any(|s| s["state"] == "disconnected")
            })
            .await;
        }
        drop(gw);
        let gw = Gateway::restart_on(port, &args, &env).await;
        for i in 3..=5 {
            ids.push(publish(gw.port, topic, &format!(r#"{{"i":{i}}}"#)).await);
        }
        for t in names {
            wait_view(&b, t, "back and resumed", |v| {
                connected(v).len() >= 2 && v["got"].as_array().unwrap().len() >= 5
            })
            .await;
        }
        // Live again after the resume.
        ids.push(publish(gw.port, topic, r#"{"i":6}"#).await);
        for t in names {
            let v = wait_view(&b, t, "the sixth", |v| v["got"].as_array().unwrap().len() >= 6).await;
            assert_eq!(strings(&v["got"]), ids, "{t}: every message once, in order: {v}");
            assert_eq!(v["gaps"], 0, "{t}: nothing was lost, so no gap: {v}");
            assert!(connected(&v).iter().all(|c| c == t), "{t}: stayed on its transport: {v}");
        }
        // A duplicate would come with the next message: one more, then each
        // has exactly seven.
        ids.push(publish(gw.port, topic, r#"{"i":7}"#).await);
        for t in names {
            let v = wait_view(&b, t, "the seventh", |v| v["got"].as_array().unwrap().len() >= 7).await;
            assert_eq!(strings(&v["got"]), ids, "{t}: {v}");
        }
    })
    .await;
}

const SECRET: &str = "browser-client-secret";

/// An HS256 token for user `e2e`, every topic, valid for 3 s.
fn short_token() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "sub": "e2e", "exp": now + 3, "topics": {"subscribe": ["*"], "publish": ["*"]},
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refreshed_before_expiry_keep_the_websocket_open() {
    require_browser();
    bounded(async {
        let config =
            config_file("token", &format!("[auth]\nhmac_secrets = [\"{SECRET}\"]\nleeway = \"1s\"\n"));
        let gw = Gateway::spawn(&["--config", config.as_str()], &[]).await;
        let p = Proxy::start(gw.port, Mode::Pass, PAGE, Some(std::sync::Arc::new(short_token))).await;
        let b = Browser::start(1000, 700).await;
        load(&b, &p).await;
        let topic = "e2e.token";
        open(&b, "c", topic, serde_json::json!({"transports": ["ws"], "tokenUrl": "/token"})).await;
        wait_view(&b, "c", "connected", |v| connected(v) == ["ws"]).await;
        // Each token lives 3 s and the client asks again before it runs
        // out: four asks cover more than two expiries of the first one.
        wait_view(&b, "c", "four tokens asked for", |v| v["asked"].as_u64().unwrap() >= 4).await;
        b.eval(&format!("return window.publishFrom('c', {}, {{\"n\": 1}});", js(&topic.into()))).await;
        let v = wait_view(&b, "c", "its publish back", |v| !v["got"].as_array().unwrap().is_empty()).await;
        assert_eq!(v["got"], v["published"], "{v}");
        assert_eq!(connected(&v), ["ws"], "one connection all along: {v}");
        let drops: Vec<&Value> =
            v["states"].as_array().unwrap().iter().filter(|s| s["state"] == "disconnected").collect();
        assert!(drops.is_empty(), "never disconnected: {v}");
        assert_eq!(v["errors"], serde_json::json!([]), "{v}");
    })
    .await;
}
