//! Topic policies (contract §11) through the real server on real sockets:
//! `delivery = "latest"` and `"drop"` for a reader that stops reading,
//! coalesced resumes and long polls, ephemeral messages on every
//! transport, `client_publish` and per-topic history.
#![allow(clippy::unwrap_used)]
mod support;

use std::collections::BTreeMap;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::sse::Sse;
use support::*;

/// Padding that makes each message big enough (≈ 60 KB) for a few hundred
/// of them to fill any loopback socket buffer.
fn pad() -> String {
    "x".repeat(60_000)
}

const CONFIG: &str = r#"
[limits]
outbox_capacity = 8

[[topics]]
pattern = "price.*"
delivery = "latest"

[[topics]]
pattern = "log.*"
delivery = "drop"

[[topics]]
pattern = "short.*"
history = { max_len = 3 }

[[topics]]
pattern = "feed.*"
client_publish = false
"#;

/// Publishes `n` messages round-robin over `keys` on `topic` with `?key=`;
/// returns (id, key) in publish order.
async fn publish_keyed(s: &TestServer, topic: &str, keys: &[&str], n: usize) -> Vec<(String, String)> {
    let pad = pad();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = keys[i % keys.len()];
        let url = s.url(&format!("/v1/publish/{topic}?key={key}"));
        let body = json!({"k": key, "i": i, "pad": pad}).to_string();
        out.push((post_publish(&s.http, &url, body).await, key.to_owned()));
    }
    out
}

/// A reader that stops reading while hundreds of messages of five keys are
/// published gets, once it reads again, every key's newest message, each
/// message either delivered or counted in exactly one `skipped`, in id
/// order, and keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_latest_topic_gets_the_newest_per_key_and_stays_connected() {
    let s = TestServer::start(CONFIG).await;
    let mut slow = s.ws("/v1/ws?topic=price.eu").await;
    slow.assert_quiet("ready").await;
    let keys = ["a", "b", "c", "d", "e"];
    // Not reading meanwhile: the socket fills, then the outbox coalesces.
    let published = publish_keyed(&s, "price.eu", &keys, 400).await;
    let newest: BTreeMap<&str, &str> =
        published.iter().map(|(id, k)| (k.as_str(), id.as_str())).collect();

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut accounted: BTreeMap<String, u64> = BTreeMap::new();
    let mut last: Option<(u64, u64)> = None;
    let mut frames = 0u64;
    while seen.len() < keys.len() || keys.iter().any(|k| seen.get(*k).map(String::as_str) != Some(newest[k])) {
        let m = slow.next_op("message").await;
        frames += 1;
        let id = m["id"].as_str().unwrap().to_owned();
        assert!(last < Some(pid(&id)), "out of order: {id} after {last:?}");
        last = Some(pid(&id));
        let key = m["data"]["k"].as_str().unwrap().to_owned();
        let skipped = m.get("skipped").map_or(0, |v| v.as_u64().expect("skipped is a number"));
        assert!(m.get("skipped").is_none_or(|v| v.as_u64() > Some(0)), "skipped 0 is left out: {m}");
        *accounted.entry(key.clone()).or_default() += 1 + skipped;
        seen.insert(key, id);
    }
    for k in keys {
        let sent = published.iter().filter(|(_, key)| key == k).count() as u64;
        assert_eq!(accounted[k], sent, "key {k}: delivered + skipped = published");
    }
    assert_eq!(accounted.values().sum::<u64>(), 400);
    assert!(frames < 400, "the reader fell behind, so some messages were coalesced ({frames} frames)");
    // Still connected, nothing else queued, and live again.
    slow.assert_quiet("after").await;
    let id = s.publish("price.eu", r#"{"k":"a","i":-1}"#).await;
    let m = slow.next_op("message").await;
    assert_eq!((m["id"].as_str(), m.get("skipped")), (Some(id.as_str()), None));
    // History is untouched by the coalescing.
    let (_, h) = s.get("/v1/history/price.eu?limit=1000").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 401);
    s.stop().await;
}
