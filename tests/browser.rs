//! A real browser against the real binary (contract §5): a Chromium page's
//! `EventSource` receives messages, the gateway is restarted (Redis engine),
//! the browser reconnects by itself with `Last-Event-ID`, and the page ends
//! with every message exactly once, in order.
//!
//! Chromium is driven by `support::browser`; the page comes from
//! `support::proxy` (the EventSource talks to the gateway directly).
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::browser::{require_browser, Browser};
use support::post_publish;
use support::proxy::{Mode, Proxy};
use support::redis::RedisServer;
use support::WAIT;

/// The whole test, start to finish.
const BUDGET: Duration = Duration::from_secs(55);
/// The `retry:` hint the restarted gateway's page reconnects with.
const SSE_RETRY: &str = "300ms";
const TOPIC: &str = "browser.sse";
const BATCH: usize = 20;

/// An HTTP client that never goes through a proxy (loopback only).
fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

use support::binary::Gateway;

/// The gateway's settings here: the Redis engine on `redis_url`, a short SSE
/// retry hint (also the hint a stream gets when the gateway stops: the
/// reconnect window), a 5 s grace.
fn gateway_env(redis_url: &str) -> [(&str, &str); 6] {
    [
        ("RTGATE_ENGINE__KIND", "redis"),
        ("RTGATE_REDIS__URL", redis_url),
        ("RTGATE_SSE__RETRY", SSE_RETRY),
        ("RTGATE_RECONNECT__MIN", SSE_RETRY),
        ("RTGATE_RECONNECT__WINDOW", SSE_RETRY),
        ("RTGATE_SHUTDOWN__GRACE", "5s"),
    ]
}

impl Gateway {
    async fn start(redis_url: &str) -> Gateway {
        Gateway::spawn(&[], &gateway_env(redis_url)).await
    }

    /// Starts again on the same `port` (bounded retries while it frees up).
    async fn restart(port: u16, redis_url: &str) -> Gateway {
        Gateway::restart_on(port, &[], &gateway_env(redis_url)).await
    }
}

/// The page: one `EventSource` recording what it sees into `window.rt`.
fn page(sse_url: &str) -> String {
    let url = Value::from(sse_url).to_string();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>rtgate SSE</title></head>
<body><script>
"use strict";
window.rt = {{ ids: [], data: [], opens: 0, errors: 0, closed: false, gaps: [], bad: [], lastEventId: "" }};
const es = new EventSource({url});
es.onopen = () => {{ rt.opens += 1; }};
es.onerror = () => {{
  rt.errors += 1;
  if (es.readyState === EventSource.CLOSED) {{ rt.closed = true; }}
}};
es.onmessage = (e) => {{
  try {{
    const m = JSON.parse(e.data);
    rt.ids.push(m.id);
    rt.data.push(m.data);
  }} catch (err) {{ rt.bad.push(String(e.data)); }}
  rt.lastEventId = e.lastEventId;
}};
es.addEventListener("gap", (e) => {{ rt.gaps.push(e.data); }});
window.es = es;
</script></body></html>
"#
    )
}

/// Publishes `BATCH` messages through `via`; returns their ids.
async fn publish_batch(via: &Gateway, client: &reqwest::Client, phase: &str) -> Vec<String> {
    publish_batch_of(via, client, phase, BATCH).await
}

/// Publishes `n` messages through `via`; returns their ids.
async fn publish_batch_of(via: &Gateway, client: &reqwest::Client, phase: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let data = json!({"phase": phase, "n": i});
        out.push(post_publish(client, &via.url(&format!("/v1/publish/{TOPIC}")), data.to_string()).await);
    }
    out
}

/// Polls the record (bounded) until `done(record)`; the record.
async fn wait_rt(b: &Browser, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    b.wait_for(what, "return window.rt;", WAIT, done).await
}

fn ids(rec: &Value) -> Vec<String> {
    rec["ids"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or("<not a string>").to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_survives_gateway_restart_with_every_message_once() {
    require_browser();
    tokio::time::timeout(BUDGET, scenario())
        .await
        .unwrap_or_else(|_| panic!("browser test took longer than {BUDGET:?}"));
}

async fn scenario() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    // A serves the page's EventSource; B takes the publishes (also while A
    // is down). Both share the Redis.
    let mut a = Gateway::start(&redis_url).await;
    let port_a = a.port;
    let b = Gateway::start(&redis_url).await;
    let client = http();

    let sse_url = format!("http://127.0.0.1:{port_a}/v1/sse?topic={TOPIC}");
    let page_server = Proxy::start(0, Mode::Pass, page(&sse_url), None).await;
    let mut browser = Browser::start(800, 600).await;
    browser.goto(&page_server.url("/")).await;
    wait_rt(&browser, "its EventSource open", |r| r["opens"].as_u64() >= Some(1)).await;

    let mut published = Vec::new();

    // 1. Live delivery.
    published.extend(publish_batch(&b, &client, "before").await);
    wait_rt(&browser, "the first 20 messages", |r| ids(r).len() >= BATCH).await;

    // 2. A stops gracefully (its SSE stream ends), then 20 more while it is down.
    a.sigterm();
    let status = a.exited(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit {status}; logs: {}", a.logs());
    published.extend(publish_batch(&b, &client, "down").await);
    // The stream's end is one `error`; a refused reconnect attempt is another.
    let rec = wait_rt(&browser, "a refused reconnect attempt", |r| r["errors"].as_u64() >= Some(2)).await;
    assert_eq!(rec["closed"], false, "the EventSource gave up: {rec}");
    assert_eq!(ids(&rec).len(), BATCH, "messages arrived with the gateway down: {rec}");

    // 3. A again, same port: the browser reconnects on its own with
    // Last-Event-ID and gets the missed 20.
    let a2 = Gateway::restart(port_a, &redis_url).await;
    wait_rt(&browser, "the 20 published while the gateway was down", |r| ids(r).len() >= 2 * BATCH).await;

    // 4. Live again after the resume.
    published.extend(publish_batch(&b, &client, "after").await);
    wait_rt(&browser, "all 60 messages", |r| ids(r).len() >= 3 * BATCH).await;
    // A duplicate would come before the next message: one more, then the
    // page must hold exactly what was published.
    published.extend(publish_batch_of(&b, &client, "last", 1).await);
    let rec = wait_rt(&browser, "the last message", |r| ids(r).len() > 3 * BATCH).await;

    let got = ids(&rec);
    assert_eq!(published.len(), 3 * BATCH + 1);
    assert_eq!(
        got,
        published,
        "the page must hold every published id once, in order; record: {rec}; gateway logs: {}",
        a2.logs()
    );
    assert!(rec["opens"].as_u64() >= Some(2), "the EventSource did not reconnect by itself: {rec}");
    assert_eq!(rec["closed"], false, "the EventSource gave up: {rec}");
    assert_eq!(rec["gaps"], json!([]), "unexpected gap events: {rec}");
    assert_eq!(rec["bad"], json!([]), "unparsable message data: {rec}");
    assert_eq!(rec["lastEventId"].as_str().map(str::is_empty), Some(false), "events carry an id: {rec}");

    browser.quit().await;
    drop(browser);
    drop(page_server);
    drop((a, a2, b, redis));
}

/// Issue 11 item 1, proven with Chromium's own `EventSource`: message data
/// with raw line breaks between its JSON tokens (any pretty-printed JSON:
/// LF, CRLF, a lone CR, an empty line) arrives whole and parses, followed by
/// the next message. Written as one `data:` line, the browser cut the event
/// at the first line break: `JSON.parse` failed and the message was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_gets_pretty_printed_json_whole() {
    require_browser();
    tokio::time::timeout(BUDGET, async {
        let gw = Gateway::spawn(&[], &[("RTGATE_SHUTDOWN__GRACE", "5s")]).await;
        let client = http();
        let topic = "browser.lines";
        let sse_url = format!("http://127.0.0.1:{}/v1/sse?topic={topic}", gw.port);
        let page_server = Proxy::start(0, Mode::Pass, page(&sse_url), None).await;
        let mut browser = Browser::start(800, 600).await;
        browser.goto(&page_server.url("/")).await;
        wait_rt(&browser, "its EventSource open", |r| r["opens"].as_u64() >= Some(1)).await;

        let bodies: [&str; 3] = ["{\"a\":\n  1,\r\n  \"b\": [2,\n\n3],\r\"c\": \"x\"\n}", "[\n]", "7"];
        let mut published = Vec::new();
        for body in bodies {
            let res = client.post(gw.url(&format!("/v1/publish/{topic}"))).body(body).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let v: Value = res.json().await.unwrap();
            published.push(v["id"].as_str().unwrap().to_owned());
        }
        let rec = wait_rt(&browser, "all three messages", |r| {
            ids(r).len() + r["bad"].as_array().map_or(0, Vec::len) >= 3
        })
        .await;
        assert_eq!(rec["bad"], json!([]), "the browser could not parse an event: {rec}");
        assert_eq!(ids(&rec), published, "{rec}");
        assert_eq!(rec["data"], json!([{"a": 1, "b": [2, 3], "c": "x"}, [], 7]), "{rec}");
        browser.quit().await;
    })
    .await
    .unwrap_or_else(|_| panic!("browser test took longer than {BUDGET:?}"));
}
