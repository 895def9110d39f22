//! Redis CPU per live delivery against the number of watched topics (issue
//! 11 item 13). Run by `scripts/bench-watch.sh`, which starts `redis-server`
//! and the gateway; this subscribes `TOPICS` topics (250 per WebSocket
//! connection), then publishes `PUBLISHES` messages one at a time over HTTP
//! (each waits until its subscriber received it, so every publish is one
//! delivery and one reader wake-up) and prints the Redis CPU
//! (`used_cpu_sys + used_cpu_user`) and commands per delivery.
//!
//! `cargo run --release --example watch_cost -- http://127.0.0.1:8093 redis://127.0.0.1:6398/ 10000 2000`
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Topics per WebSocket connection.
const PER_CONN: usize = 250;
/// Topics the publishes rotate over (all on the first connection).
const HOT: usize = 16;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).cloned().unwrap_or_else(|| "http://127.0.0.1:8093".into());
    let redis_url = args.get(2).cloned().unwrap_or_else(|| "redis://127.0.0.1:6398/".into());
    let topics: usize = args.get(3).map_or(Ok(1000), |s| s.parse())?;
    let publishes: usize = args.get(4).map_or(Ok(2000), |s| s.parse())?;
    let ws_url = format!("{}/v1/ws", base.replacen("http", "ws", 1));

    // Subscribe every topic, 250 per connection, 8 connections at a time (a cursor holds ~300 topics).
    let started = Instant::now();
    let mut conns: Vec<Ws> = Vec::new();
    let chunks: Vec<Vec<usize>> =
        (0..topics).collect::<Vec<_>>().chunks(PER_CONN).map(<[usize]>::to_vec).collect();
    for group in chunks.chunks(8) {
        let mut tasks = Vec::new();
        for chunk in group {
            let url = ws_url.clone();
            let chunk = chunk.clone();
            tasks.push(tokio::spawn(async move { subscribe_all(&url, &chunk).await }));
        }
        for t in tasks {
            conns.push(t.await??);
        }
    }
    eprintln!("{topics} topics watched in {:?}", started.elapsed());
    // Let the readers settle (watch wake-ups, first reads).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let redis = redis::Client::open(redis_url.as_str())?;
    let mut rc = redis.get_multiplexed_async_connection().await?;
    let http = reqwest::Client::new();
    let (cpu0, cmds0) = redis_stats(&mut rc).await?;
    let t0 = Instant::now();
    let first = &mut conns[0];
    for k in 0..publishes {
        let topic = format!("w.{}", k % HOT.min(topics));
        let res = http.post(format!("{base}/v1/publish/{topic}")).body(k.to_string()).send().await?;
        let v: Value = res.json().await?;
        let id = v["id"].as_str().ok_or("publish failed")?.to_owned();
        // Wait for this delivery.
        loop {
            let frame =
                tokio::time::timeout(Duration::from_secs(10), first.next()).await?.ok_or("closed")??;
            if let WsMessage::Text(t) = frame {
                let m: Value = serde_json::from_str(t.as_str())?;
                if m["op"] == "message" && m["id"] == id.as_str() {
                    break;
                }
            }
        }
    }
    let elapsed = t0.elapsed();
    let (cpu1, cmds1) = redis_stats(&mut rc).await?;
    let per = (cpu1 - cpu0) / publishes as f64 * 1e6;
    let cmds = (cmds1 - cmds0) as f64 / publishes as f64;
    println!(
        "topics={topics}\tdeliveries={publishes}\tredis_cpu_us_per_delivery={per:.1}\tredis_cmds_per_delivery={cmds:.2}\twall_ms={}",
        elapsed.as_millis()
    );
    Ok(())
}

/// One connection subscribed to `w.<i>` for every `i` of `topics` (all
/// subscribe ops sent, then every ack awaited).
async fn subscribe_all(url: &str, topics: &[usize]) -> Result<Ws, String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| e.to_string())?;
    for i in topics {
        let op = json!({"op": "subscribe", "topic": format!("w.{i}"), "ref": format!("s{i}")});
        ws.send(WsMessage::text(op.to_string())).await.map_err(|e| e.to_string())?;
    }
    let mut acks = 0;
    while acks < topics.len() {
        let frame = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .map_err(|_| "subscribe timed out".to_owned())?
            .ok_or("closed")?
            .map_err(|e| e.to_string())?;
        if let WsMessage::Text(t) = frame {
            let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
            match v["op"].as_str() {
                Some("ack") => acks += 1,
                Some("error") => return Err(format!("subscribe refused: {v}")),
                _ => {}
            }
        }
    }
    Ok(ws)
}

/// Redis CPU seconds (sys + user) and commands processed so far.
async fn redis_stats(c: &mut redis::aio::MultiplexedConnection) -> Result<(f64, u64), redis::RedisError> {
    let info: String = redis::cmd("INFO").arg("ALL").query_async(c).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().strip_prefix(':')))
            .map(str::trim)
    };
    let num = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = num("used_cpu_sys") + num("used_cpu_user");
    let cmds = field("total_commands_processed").and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((cpu, cmds))
}
