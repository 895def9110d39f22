//! Publishers: HTTP publishes at a steady rate through both gateways, each
//! with its own `Idempotency-Key`, retried (same key, the other gateway)
//! until answered, so every message is accepted exactly once and its id
//! recorded.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rtgate::core::MessageId;
use serde_json::Value;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// A publish the server answered with an id.
#[derive(Clone, Debug)]
pub(crate) struct Accepted {
    pub(crate) topic: String,
    pub(crate) id: MessageId,
}

/// What the publishers share and report.
pub(crate) struct Book {
    pub(crate) accepted: Mutex<Vec<Accepted>>,
    /// Attempts that failed and were retried.
    pub(crate) retries: AtomicU64,
    /// Publishes given up (never answered within the retry budget): their
    /// message may or may not be stored.
    pub(crate) unconfirmed: AtomicU64,
}

pub(crate) struct Publisher {
    pub(crate) index: usize,
    pub(crate) gateways: Vec<String>,
    pub(crate) topics: Vec<String>,
    pub(crate) period: Duration,
    pub(crate) pad: usize,
    pub(crate) run_id: String,
    pub(crate) http: reqwest::Client,
}

impl Publisher {
    /// Publishes one message per `period` until `stop`; topic `n` of this
    /// publisher is `topics[(index + n) % len]`.
    pub(crate) async fn run(self, book: Arc<Book>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let pad = "x".repeat(self.pad);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let topic = &self.topics[(self.index + n as usize) % self.topics.len()];
            let key = format!("{}-{}-{n}", self.run_id, self.index);
            let body = serde_json::json!({"p": self.index, "n": n, "pad": pad}).to_string();
            let mut g = self.index;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let url = format!("http://{}/v1/publish/{topic}", self.gateways[g % self.gateways.len()]);
                match self.attempt(&url, &key, &body).await {
                    Ok(id) => {
                        book.accepted.lock().push(Accepted { topic: topic.clone(), id });
                        break;
                    }
                    Err(_) if Instant::now() < deadline => {
                        book.retries.fetch_add(1, Relaxed);
                        g += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await; // retry backoff
                    }
                    Err(e) => {
                        eprintln!("chaos: publish {key} to {topic} given up: {e}");
                        book.unconfirmed.fetch_add(1, Relaxed);
                        break;
                    }
                }
            }
            n += 1;
        }
    }

    async fn attempt(&self, url: &str, key: &str, body: &str) -> Result<MessageId, String> {
        let res = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_owned())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let v: Value = res.json().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("HTTP {status}: {v}"));
        }
        v.get("id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no id in {v}"))
    }
}
