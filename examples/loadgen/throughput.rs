//! Throughput mode: publishers send as fast as they can.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::args::{name, Args, Flavour, Via};
use crate::hook;
use crate::procfs::CpuMark;
use crate::publishers::{spawn_publishers, Tp, TpStats};
use crate::stats::{hist, ms, new_shared, per_msg_us};
use crate::subs::connect_subs;

pub(crate) async fn throughput(args: Args, addr: String, sub_addr: String, topic: String) -> i32 {
    if args.server != Flavour::Rtgate {
        eprintln!("--throughput supports --server rtgate only");
        return 2;
    }
    let m = args.topics.max(1);
    let topics: Vec<String> =
        if m == 1 { vec![topic.clone()] } else { (0..m).map(|i| format!("{topic}-{i}")).collect() };
    let sh = new_shared(m);
    let n = args.subscribers.unwrap_or(0);
    let (connected, failed, connect_s) = connect_subs(&sh, &args, n, &sub_addr, &topics).await;
    if n > 0 {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    }

    hook(&args.before_publish);
    let t0_ns = sh.now_ns();
    let mark0 = CpuMark::take(&args.server_pid);
    let tp = Arc::new(Tp {
        sh: sh.clone(),
        addr: addr.clone(),
        topics: topics.clone(),
        payload: args.payload,
        inflight: args.inflight,
        deadline: tokio::time::Instant::now() + Duration::from_secs_f64(args.duration),
        count: args.count,
        issued: AtomicU64::new(0),
        errors_logged: AtomicU64::new(0),
    });
    let st = TpStats::join(m, spawn_publishers(&tp, args.via, args.publishers)).await;
    let pub_end_ns = sh.now_ns();
    let expected: u64 = st.per_topic.iter().zip(&sh.conn_by_topic).map(|(a, c)| a * c.load(Relaxed)).sum();
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while sh.delivered.load(Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t1_ns = sh.now_ns();
    let used = CpuMark::take(&args.server_pid).since(&mark0, &args.server_pid);
    let (lg_cpu, srv_cpu) = (used.loadgen, used.server);
    hook(&args.after_publish);

    let pub_s = (pub_end_ns - t0_ns) as f64 / 1e9;
    let window_s = (t1_ns - t0_ns) as f64 / 1e9;
    let rate = st.accepted as f64 / pub_s.max(1e-9);
    let delivered = sh.delivered.load(Relaxed);
    let dup = sh.dup.load(Relaxed);
    let lost = expected.saturating_sub(delivered.saturating_sub(dup));
    let q = |h: &Histogram<u64>, p: f64| {
        if h.is_empty() {
            0.0
        } else {
            ms(h.value_at_quantile(p))
        }
    };
    let dh = sh.lat_us.lock().map(|h| h.clone()).unwrap_or_else(|_| hist());

    let out = json!({
        "label": args.label,
        "server": "rtgate",
        "mode": "throughput",
        "transport": name(args.transport),
        "via": name(args.via),
        "url": args.url,
        "sub_url": args.sub_url.as_deref().unwrap_or(&args.url),
        "topic": topic,
        "topics": m,
        "publishers": args.publishers.max(1),
        "inflight": if args.via == Via::Http { None } else { Some(args.inflight) },
        "payload_bytes": args.payload,
        "duration_s": args.duration,
        "count": args.count,
        "publish_s": pub_s,
        "window_s": window_s,
        "accepted": st.accepted,
        "errors": st.errors,
        "accepted_per_s": rate,
        "publish_lat_p50_ms": q(&st.lat_us, 0.5),
        "publish_lat_p99_ms": q(&st.lat_us, 0.99),
        "publish_lat_max_ms": ms(st.lat_us.max()),
        "subscribers": n,
        "connected": connected,
        "connect_failed": failed,
        "connect_s": connect_s,
        "expected": expected,
        "delivered": delivered,
        "lost": lost,
        "duplicated": dup,
        "gap_events": sh.gap_events.load(Relaxed),
        "closed_early": sh.closed_early.load(Relaxed),
        "lat_p50_ms": q(&dh, 0.5),
        "lat_p99_ms": q(&dh, 0.99),
        "loadgen_cpu_s": lg_cpu,
        "loadgen_cpu_pct": 100.0 * lg_cpu / window_s.max(1e-9),
        "loadgen_cpu_us_per_msg": per_msg_us(Some(lg_cpu), st.accepted),
        "server_cpu_s": srv_cpu,
        "server_cpu_pct": srv_cpu.map(|c| 100.0 * c / window_s.max(1e-9)),
        "server_cpu_us_per_msg": per_msg_us(srv_cpu, st.accepted),
        "server_cpu_by_pid": used.by_pid,
    });

    println!(
        "throughput via {}: {} publishers{} x {} B over {m} topic(s) for {pub_s:.1}s to {}",
        name(args.via),
        args.publishers.max(1),
        if args.via == Via::Http { String::new() } else { format!(" x inflight {}", args.inflight) },
        args.payload,
        args.url
    );
    println!(
        "  accepted {} ({rate:.0} msg/s), errors {}, publish latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        st.accepted,
        st.errors,
        q(&st.lat_us, 0.5),
        q(&st.lat_us, 0.99),
        ms(st.lat_us.max())
    );
    if n > 0 {
        println!(
            "  {connected}/{n} subscribers on {}: expected {expected}, delivered {delivered}, lost {lost}, duplicated {dup}; latency p50 {:.2} ms p99 {:.2} ms",
            args.sub_url.as_deref().unwrap_or(&args.url),
            q(&dh, 0.5),
            q(&dh, 0.99)
        );
    }
    println!(
        "  loadgen CPU {lg_cpu:.2}s over {window_s:.1}s = {:.0}% of one core, {:.1} us per accepted message",
        100.0 * lg_cpu / window_s.max(1e-9),
        per_msg_us(Some(lg_cpu), st.accepted).unwrap_or(f64::NAN)
    );
    if let Some(c) = srv_cpu {
        let parts: Vec<String> = args
            .server_pid
            .iter()
            .zip(&used.per_pid)
            .map(|(p, c)| format!("{p}: {:.1}", per_msg_us(*c, st.accepted).unwrap_or(f64::NAN)))
            .collect();
        println!(
            "  server CPU {c:.2}s = {:.0}% of one core, {:.1} us per accepted message ({})",
            100.0 * c / window_s.max(1e-9),
            per_msg_us(Some(c), st.accepted).unwrap_or(f64::NAN),
            parts.join(", ")
        );
    }
    if args.json {
        println!("{out}");
    }
    if st.errors == 0 && st.accepted > 0 && lost == 0 && dup == 0 && connected == n as u64 {
        0
    } else {
        1
    }
}
