//! A webhook receiver for `scripts/bench-webhooks.sh`: answers every POST
//! with `--status` (after `--delay-ms`), counts distinct `webhook-id`s and
//! the time from each message's `ts` (its publish) to its arrival.
//! `GET /stats` answers the figures as JSON.
//!
//! `cargo run --release --example hookrecv -- --listen 127.0.0.1:9301 [--delay-ms 0] [--status 200]`
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Default)]
struct Stats {
    requests: u64,
    ids: HashSet<String>,
    /// Publish → arrival of first arrivals, ms.
    latencies: Vec<u64>,
    first_ms: u64,
    last_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.into())
}

fn report(s: &Stats) -> String {
    let mut l = s.latencies.clone();
    l.sort_unstable();
    let q = |p: f64| if l.is_empty() { 0 } else { l[((l.len() - 1) as f64 * p) as usize] };
    let span = s.last_ms.saturating_sub(s.first_ms).max(1);
    serde_json::json!({
        "requests": s.requests,
        "distinct": s.ids.len(),
        "per_sec": (s.ids.len() as f64) * 1000.0 / span as f64,
        "first_ms": s.first_ms,
        "last_ms": s.last_ms,
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "max_ms": l.last().copied().unwrap_or(0),
    })
    .to_string()
}

#[tokio::main]
async fn main() {
    let listen = arg("--listen", "127.0.0.1:9301");
    let delay = Duration::from_millis(arg("--delay-ms", "0").parse().unwrap());
    let status: u16 = arg("--status", "200").parse().unwrap();
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    eprintln!("hookrecv on {listen}");
    let stats: Arc<Mutex<Stats>> = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let stats = Arc::clone(&stats);
                async move {
                    if req.method() == Method::GET {
                        let body = report(&stats.lock().unwrap());
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))));
                    }
                    let id = req
                        .headers()
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let ts = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["ts"].as_u64());
                    let now = now_ms();
                    {
                        let mut s = stats.lock().unwrap();
                        s.requests += 1;
                        if s.ids.insert(id) {
                            if s.first_ms == 0 {
                                s.first_ms = now;
                            }
                            s.last_ms = now;
                            if let Some(ts) = ts {
                                s.latencies.push(now.saturating_sub(ts));
                            }
                        }
                    }
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut res = Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    Ok(res)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
