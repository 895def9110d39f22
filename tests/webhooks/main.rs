//! Webhooks end to end (contract §9) against the real server and a real
//! receiver (`receiver.rs`, a hyper server whose signature checks are the
//! `standardwebhooks` crate's, not rtgate's): retries with growing delays,
//! `Retry-After`, timeouts, dead letters and their redrive, `410 Gone`,
//! isolation of a dead endpoint, once-per-endpoint delivery with two
//! processes on one Redis and takeover after `kill -9`; inbound
//! verification. Short backoffs keep the crate fast.
#![allow(clippy::unwrap_used, clippy::disallowed_types, dead_code, unreachable_pub)]
#[path = "../support/mod.rs"]
mod support;

mod inbound;
mod outbound;
mod receiver;
mod redis;

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

/// Upper bound of one wait.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// The API key of configs with auth on.
pub(crate) const API_KEY: &str = "ops-key-0123456789abcdef";

/// A `whsec_` secret made from `seed`.
pub(crate) fn secret(seed: &str) -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(format!("secret-{seed}-0123456789")))
}

/// One `[[webhooks]]` entry for `url` with short test timings; `extra`
/// adds or overrides keys.
pub(crate) fn endpoint(name: &str, url: &str, secrets: &[String], topics: &str, extra: &str) -> String {
    let secrets: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
    let mut defaults = String::new();
    for (k, v) in [("backoff", "\"50ms\""), ("max_backoff", "\"1s\""), ("timeout", "\"2s\"")] {
        if !extra.lines().any(|l| l.split('=').next().map(str::trim) == Some(k)) {
            defaults.push_str(&format!("{k} = {v}\n"));
        }
    }
    format!(
        "[[webhooks]]\nname = {name:?}\nurl = {url:?}\nsecrets = [{}]\ntopics = [{topics:?}]\n{defaults}{extra}\n",
        secrets.join(", ")
    )
}

/// Publishes `data` on `topic` (with `key` as bearer when given); the id.
pub(crate) async fn publish(
    http: &reqwest::Client,
    base: &str,
    topic: &str,
    data: &str,
    key: Option<&str>,
) -> String {
    let mut req = http.post(format!("{base}/v1/publish/{topic}")).body(data.to_owned());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = tokio::time::timeout(WAIT, req.send()).await.unwrap().unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let v: Value = res.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// `GET /v1/webhooks/dead-letters` → (status, body).
pub(crate) async fn dead_letters(http: &reqwest::Client, base: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = http.get(format!("{base}/v1/webhooks/dead-letters"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = tokio::time::timeout(WAIT, req.send()).await.unwrap().unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

/// Polls the dead letters (bounded) until there are `n`.
pub(crate) async fn wait_dead_letters(
    http: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    n: usize,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, v) = dead_letters(http, base, key).await;
        assert_eq!(status, 200, "{v}");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if items.len() == n {
            return items;
        }
        assert!(tokio::time::Instant::now() < deadline, "expected {n} dead letters, have {items:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the list, bounded
    }
}
