//! Replay mode: publish N messages, then time one SSE client resuming from before them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::args::Args;
use crate::http::HttpPost;
use crate::poll::poll_cursor;
use crate::procfs::{proc_cpu, server_cpu};
use crate::publishers::{spawn_publishers, Tp, TpStats};
use crate::sse::sse_subscriber;
use crate::stats::{new_shared, per_msg_us};

/// Publishes `--replay N` messages to a fresh topic, then times one SSE client
/// that resumes (`lastEventId`) from a cursor taken before the first publish.
pub(crate) async fn replay(args: Args, addr: String, sub_addr: String, topic: String) -> i32 {
    let n = args.replay;
    let sh = new_shared(1);
    // A cursor at "now" on the still empty topic: before the first message.
    let mut http = HttpPost::new(addr.clone());
    let c0 = match http.get(&format!("/v1/poll?topic={topic}&timeout=0")).await {
        Ok((200, body)) => poll_cursor(&body).map(|(_, c)| c),
        Ok((code, body)) => Err(format!("HTTP {code}: {}", String::from_utf8_lossy(&body))),
        Err(e) => Err(e),
    };
    let c0 = match c0 {
        Ok(c) => c,
        Err(e) => {
            eprintln!("initial poll: {e}");
            return 1;
        }
    };
    drop(http);

    let pub_t0 = sh.now_ns();
    let tp = Arc::new(Tp {
        sh: sh.clone(),
        addr: addr.clone(),
        topics: vec![topic.clone()],
        payload: args.payload,
        inflight: args.inflight,
        deadline: tokio::time::Instant::now() + Duration::from_secs(3600),
        count: n,
        issued: AtomicU64::new(0),
        errors_logged: AtomicU64::new(0),
    });
    let st = TpStats::join(1, spawn_publishers(&tp, args.via, args.publishers)).await;
    let pub_s = (sh.now_ns() - pub_t0) as f64 / 1e9;
    eprintln!(
        "published {} ({} errors) in {pub_s:.2}s; replaying over SSE from {c0}",
        st.accepted, st.errors
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    let cpu0 = proc_cpu("self").unwrap_or(0.0);
    let scpu0 = server_cpu(&args.server_pid);
    let t0 = sh.now_ns();
    tokio::spawn(sse_subscriber(
        sh.clone(),
        Arc::new(Semaphore::new(1)),
        sub_addr,
        topic.clone(),
        0,
        Some(c0),
    ));
    // Until everything is in, the stream ends, or nothing arrives for 10 s.
    let expected = st.accepted;
    let mut seen = 0;
    let mut progress = Instant::now();
    loop {
        let d = sh.delivered.load(Relaxed);
        if d >= expected
            || sh.connect_failed.load(Relaxed) > 0
            || sh.closed_early.load(Relaxed) > 0
            || progress.elapsed() > Duration::from_secs(10)
        {
            break;
        }
        if d != seen {
            seen = d;
            progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let lg_cpu = proc_cpu("self").unwrap_or(0.0) - cpu0;
    let srv_cpu = server_cpu(&args.server_pid).zip(scpu0).map(|(b, a)| b - a);
    let delivered = sh.delivered.load(Relaxed);
    let dup = sh.dup.load(Relaxed);
    let lost = expected.saturating_sub(delivered.saturating_sub(dup));
    let last = sh.last_delivery_ns.load(Relaxed).max(t0);
    let replay_s = (last - t0) as f64 / 1e9;
    let rate = delivered as f64 / replay_s.max(1e-9);
    let out = json!({
        "label": args.label,
        "server": "rtgate",
        "mode": "replay",
        "transport": "sse",
        "topic": topic,
        "url": args.url,
        "payload_bytes": args.payload,
        "publishers": args.publishers.max(1),
        "replay": n,
        "accepted": st.accepted,
        "publish_errors": st.errors,
        "publish_s": pub_s,
        "publish_per_s": st.accepted as f64 / pub_s.max(1e-9),
        "expected": expected,
        "delivered": delivered,
        "lost": lost,
        "duplicated": dup,
        "gap_events": sh.gap_events.load(Relaxed),
        "server_gap_events": sh.srv_gaps.load(Relaxed),
        "foreign_frames": sh.foreign.load(Relaxed),
        "connected": sh.connected.load(Relaxed),
        "replay_s": replay_s,
        "replay_msgs_per_s": rate,
        "loadgen_cpu_s": lg_cpu,
        "server_cpu_s": srv_cpu,
        "server_cpu_us_per_msg": per_msg_us(srv_cpu, delivered),
    });
    println!(
        "replay: published {} ({} errors) in {pub_s:.2}s ({:.0} msg/s) to {topic}",
        st.accepted,
        st.errors,
        st.accepted as f64 / pub_s.max(1e-9)
    );
    println!(
        "  one SSE client from before the first: {delivered}/{expected} in {replay_s:.2}s = {rate:.0} msg/s; lost {lost}, duplicated {dup}, out of order/gaps {}, server gap events {}, foreign {}",
        sh.gap_events.load(Relaxed),
        sh.srv_gaps.load(Relaxed),
        sh.foreign.load(Relaxed)
    );
    println!("  loadgen CPU {lg_cpu:.2}s; server CPU {}", srv_cpu.map_or("-".into(), |c| format!("{c:.2}s")));
    if args.json {
        println!("{out}");
    }
    if st.errors == 0
        && lost == 0
        && dup == 0
        && sh.gap_events.load(Relaxed) == 0
        && sh.srv_gaps.load(Relaxed) == 0
    {
        0
    } else {
        1
    }
}
