//! Long-polling subscriber: each poll passes the previous answer's cursor back.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::http::HttpPost;
use crate::payload::decode_message;
use crate::stats::{SeqCheck, Shared};

/// Decrements the held-polls gauge when a poll ends (or is abandoned).
struct Held<'a>(&'a AtomicU64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The `cursor` of a poll answer.
pub(crate) fn poll_cursor(body: &[u8]) -> Result<(Value, String), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("poll answer: {e}"))?;
    let c = v.get("cursor").and_then(Value::as_str).ok_or("poll answer without cursor")?.to_string();
    Ok((v, c))
}

/// One long-polling subscriber: a `timeout=0` poll for a cursor at "now"
/// (then it counts as connected), then polls passing each answer's cursor back.
pub(crate) async fn poll_subscriber(
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    addr: String,
    topic: String,
    topic_idx: usize,
    timeout_s: f64,
) {
    let permit = sem.acquire_owned().await;
    let mut http = HttpPost::new(addr);
    let first = async {
        match http.get(&format!("/v1/poll?topic={topic}&timeout=0")).await? {
            (200, body) => poll_cursor(&body).map(|(_, c)| c),
            (code, body) => Err(format!("HTTP {code}: {}", String::from_utf8_lossy(&body))),
        }
    };
    let Some(mut cursor) = sh.attempt("poll", topic_idx, first).await else { return };
    drop(permit);

    let mut seqs = SeqCheck::default();
    let limit = Duration::from_secs_f64(timeout_s + 15.0);
    loop {
        let path = format!("/v1/poll?topic={topic}&cursor={cursor}&timeout={timeout_s}");
        let res = tokio::time::timeout(limit, async {
            let r = async {
                http.send("GET", &path, b"").await?;
                sh.held.fetch_add(1, Relaxed);
                let _held = Held(&sh.held);
                http.response(true).await
            }
            .await;
            if r.is_err() {
                http.conn = None;
            }
            r
        })
        .await;
        let now = sh.now_ns();
        let answer = match res {
            Ok(Ok((200, body))) => poll_cursor(&body),
            Ok(Ok((code, body))) => Err(format!("HTTP {code}: {}", String::from_utf8_lossy(&body))),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                http.conn = None;
                Err("poll not answered in time".into())
            }
        };
        let (v, next) = match answer {
            Ok(a) => a,
            Err(e) => {
                if sh.poll_errors.fetch_add(1, Relaxed) < 3 {
                    eprintln!("poll failed (retrying with the same cursor): {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for m in v.get("messages").and_then(Value::as_array).into_iter().flatten() {
            sh.payload(&mut seqs, now, decode_message(m));
        }
        if let Some(g) = v.get("gaps").and_then(Value::as_array) {
            sh.srv_gaps.fetch_add(g.len() as u64, Relaxed);
        }
        cursor = next;
    }
}
