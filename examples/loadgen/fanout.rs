//! Fan-out mode: subscribers on one topic, one publisher at a fixed rate.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::args::{grpc_conns, name, poll_timeout, Args, Transport, Via};
use crate::grpc::grpc_client;
use crate::hook;
use crate::payload::make_payload;
use crate::procfs::{proc_cpu, proc_rss, server_cpu, server_rss, CpuMark};
use crate::publishers::Unary;
use crate::stats::{hist, ms, new_shared, Shared};
use crate::subs::connect_subs;

struct PubStats {
    published: u64,
    errors: u64,
    late: u64,
    rtt_us: Histogram<u64>,
    end_ns: u64,
}

/// The fan-out publisher: `--rate` messages per second for `--duration` seconds.
async fn publisher(args: &Args, sh: &Shared, mut unary: Unary) -> PubStats {
    let total = (args.rate * args.duration).round().max(0.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1e-6));
    let start = tokio::time::Instant::now();
    let hard_stop = start + Duration::from_secs_f64(args.duration * 1.5 + 10.0);
    let mut st = PubStats { published: 0, errors: 0, late: 0, rtt_us: hist(), end_ns: 0 };
    let mut k: u64 = 0;
    while k < total {
        let due = start + interval.mul_f64(k as f64);
        let now = tokio::time::Instant::now();
        if now >= hard_stop {
            eprintln!("publisher: hard stop after {} of {total}", st.published);
            break;
        }
        if now > due + Duration::from_millis(100) {
            st.late += 1;
        } else {
            tokio::time::sleep_until(due).await;
        }
        let t0 = sh.now_ns();
        let body = make_payload(st.published, t0, 0, args.payload);
        let res = unary.publish(0, body).await;
        let rtt = sh.now_ns() - t0;
        match res {
            Ok(()) => {
                st.published += 1;
                st.rtt_us.saturating_record(rtt / 1000);
            }
            Err(e) => {
                // The seq is reused by the next attempt.
                if st.errors < 3 {
                    eprintln!("publish failed: {e}");
                }
                st.errors += 1;
            }
        }
        k += 1;
    }
    st.end_ns = sh.now_ns();
    st
}

/// Fan-out mode: `--rate` publishes per second to subscribers on one topic.
pub(crate) async fn fanout(args: Args, addr: String, sub_addr: String, topic: String) -> i32 {
    let unary = match args.via {
        Via::Http => Unary::http(args.server, &addr, std::slice::from_ref(&topic)),
        Via::GrpcPublish => match grpc_client(&addr) {
            Ok(client) => Unary::Grpc { client, topics: vec![topic.clone()] },
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
        Via::Ws | Via::GrpcConnect => {
            eprintln!("fan-out mode publishes --via http or grpc");
            return 2;
        }
    };
    let sh = new_shared(1);
    let n = args.subscribers.unwrap_or(1000) as u64;
    let rss_before = server_rss(&args.server_pid);
    let self_cpu0 = proc_cpu("self").unwrap_or(0.0);

    let (connected, failed, connect_s) =
        connect_subs(&sh, &args, n as usize, &sub_addr, std::slice::from_ref(&topic)).await;
    if args.transport == Transport::Poll {
        // A poll is held once its request is sent; wait for all of them (the
        // settle below then lets the server take them in).
        let until = Instant::now() + Duration::from_secs(30);
        while sh.held.load(Relaxed) < connected && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let self_cpu_conn = proc_cpu("self").unwrap_or(0.0) - self_cpu0;
    let mut out = json!({
        "label": args.label,
        "server": format!("{:?}", args.server).to_lowercase(),
        "mode": if args.idle { "idle" } else { "load" },
        "transport": name(args.transport),
        "topic": topic,
        "url": args.url,
        "sub_url": args.sub_url.as_deref().unwrap_or(&args.url),
        "subscribers": n,
        "grpc_conns": if args.transport == Transport::Grpc { Some(grpc_conns(&args, n as usize)) } else { None },
        "connected": connected,
        "connect_failed": failed,
        "connect_s": connect_s,
        "loadgen_connect_cpu_s": self_cpu_conn,
        "loadgen_threads": args.threads,
    });

    if args.idle {
        let rss_after = server_rss(&args.server_pid);
        let self_rss = proc_rss("self");
        let per_conn = match (rss_before, rss_after) {
            (Some(b), Some(a)) if connected > 0 => Some((a as f64 - b as f64) / connected as f64),
            _ => None,
        };
        out["server_rss_before"] = json!(rss_before);
        out["server_rss_after"] = json!(rss_after);
        out["server_rss_per_conn_bytes"] = json!(per_conn);
        out["loadgen_rss"] = json!(self_rss);
        if args.transport == Transport::Poll {
            out["held_polls"] = json!(sh.held.load(Relaxed));
            out["poll_timeout_s"] = json!(poll_timeout(&args));
        }
        if args.transport == Transport::Poll {
            println!("held polls: {} (timeout {}s)", sh.held.load(Relaxed), poll_timeout(&args));
        }
        println!(
            "idle: {connected}/{n} connected ({failed} failed) in {connect_s:.2}s; loadgen CPU {self_cpu_conn:.2}s ({:.0}% of a core) while connecting, RSS {:.1} MiB",
            100.0 * self_cpu_conn / (connect_s + args.settle),
            self_rss.unwrap_or(0) as f64 / 1048576.0
        );
        if let (Some(b), Some(a)) = (rss_before, rss_after) {
            println!(
                "server RSS {:.1} MiB -> {:.1} MiB: {:.2} KiB per connection",
                b as f64 / 1048576.0,
                a as f64 / 1048576.0,
                per_conn.unwrap_or(0.0) / 1024.0
            );
        }
        if args.json {
            println!("{out}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let hold_t0 = Instant::now();
        let c0 = proc_cpu("self").unwrap_or(0.0);
        let s0 = server_cpu(&args.server_pid);
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        let hold = hold_t0.elapsed().as_secs_f64();
        let s1 = server_cpu(&args.server_pid);
        eprintln!(
            "held {hold:.1}s: still open {} (polls held {}); loadgen CPU {:.2}s, server CPU {}",
            connected - sh.closed_early.load(Relaxed),
            sh.held.load(Relaxed),
            proc_cpu("self").unwrap_or(0.0) - c0,
            match (s0, s1) {
                (Some(a), Some(b)) => format!("{:.2}s", b - a),
                _ => "-".into(),
            }
        );
        return if connected == n { 0 } else { 1 };
    }

    // Measured window: first publish .. all deliveries in (or drain timeout).
    hook(&args.before_publish);
    let t0_ns = sh.now_ns();
    let mark0 = CpuMark::take(&args.server_pid);
    let ps = publisher(&args, &sh, unary).await;
    let expected = connected * ps.published;
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while sh.delivered.load(Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t1_ns = sh.now_ns();
    let used = CpuMark::take(&args.server_pid).since(&mark0, &args.server_pid);
    let rss_end = server_rss(&args.server_pid);
    hook(&args.after_publish);

    let window_s = (t1_ns - t0_ns) as f64 / 1e9;
    let pub_s = (ps.end_ns - t0_ns) as f64 / 1e9;
    let delivered = sh.delivered.load(Relaxed);
    let dup = sh.dup.load(Relaxed);
    let unique = delivered.saturating_sub(dup);
    let lost = expected.saturating_sub(unique);
    let last = sh.last_delivery_ns.load(Relaxed);
    let deliver_s = if last > t0_ns { (last - t0_ns) as f64 / 1e9 } else { window_s };
    let rate_dps = delivered as f64 / deliver_s.max(1e-9);
    let (lg_cpu, srv_cpu) = (used.loadgen, used.server);
    let per_m = srv_cpu.filter(|_| delivered > 0).map(|c| c * 1e6 / delivered as f64);
    let lg_per_m = if delivered > 0 { Some(lg_cpu * 1e6 / delivered as f64) } else { None };
    let h = sh.lat_us.lock().map(|h| h.clone()).unwrap_or_else(|_| hist());
    let q = |p: f64| {
        if h.is_empty() {
            0.0
        } else {
            ms(h.value_at_quantile(p))
        }
    };

    out["rate"] = json!(args.rate);
    out["duration_s"] = json!(args.duration);
    out["payload_bytes"] = json!(args.payload);
    out["publish_via"] = json!(name(args.via));
    out["published"] = json!(ps.published);
    out["publish_errors"] = json!(ps.errors);
    out["publish_late"] = json!(ps.late);
    out["publish_s"] = json!(pub_s);
    out["publish_rtt_p50_ms"] = json!(ms(ps.rtt_us.value_at_quantile(0.5)));
    out["publish_rtt_p99_ms"] = json!(ms(ps.rtt_us.value_at_quantile(0.99)));
    out["expected"] = json!(expected);
    out["delivered"] = json!(delivered);
    out["lost"] = json!(lost);
    out["duplicated"] = json!(dup);
    out["gap_events"] = json!(sh.gap_events.load(Relaxed));
    out["foreign_frames"] = json!(sh.foreign.load(Relaxed));
    out["server_gap_events"] = json!(sh.srv_gaps.load(Relaxed));
    out["poll_errors"] = json!(sh.poll_errors.load(Relaxed));
    out["closed_early"] = json!(sh.closed_early.load(Relaxed));
    out["lat_p50_ms"] = json!(q(0.5));
    out["lat_p90_ms"] = json!(q(0.9));
    out["lat_p99_ms"] = json!(q(0.99));
    out["lat_max_ms"] = json!(ms(h.max()));
    out["deliveries_per_s"] = json!(rate_dps);
    out["window_s"] = json!(window_s);
    out["loadgen_cpu_s"] = json!(lg_cpu);
    out["loadgen_cpu_pct"] = json!(100.0 * lg_cpu / window_s.max(1e-9));
    out["loadgen_cpu_s_per_m"] = json!(lg_per_m);
    out["server_cpu_s"] = json!(srv_cpu);
    out["server_cpu_pct"] = json!(srv_cpu.map(|c| 100.0 * c / window_s.max(1e-9)));
    out["server_cpu_s_per_m"] = json!(per_m);
    out["server_cpu_by_pid"] = used.by_pid;
    out["server_rss_end"] = json!(rss_end);

    println!(
        "{:?} {} {:?} subs x {} msg/s x {} B for {:.1}s (topic {topic})",
        args.server, connected, args.transport, args.rate, args.payload, pub_s
    );
    println!(
        "  published {} (errors {}, late {}), publish RTT p50 {:.2} ms p99 {:.2} ms",
        ps.published,
        ps.errors,
        ps.late,
        ms(ps.rtt_us.value_at_quantile(0.5)),
        ms(ps.rtt_us.value_at_quantile(0.99))
    );
    println!(
        "  deliveries expected {expected}, delivered {delivered}, lost {lost}, duplicated {dup}, gaps {}, closed early {}, foreign frames {}, server gap events {}, poll errors {}",
        sh.gap_events.load(Relaxed),
        sh.closed_early.load(Relaxed),
        sh.foreign.load(Relaxed),
        sh.srv_gaps.load(Relaxed),
        sh.poll_errors.load(Relaxed)
    );
    println!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2};  {:.0} deliveries/s",
        q(0.5),
        q(0.9),
        q(0.99),
        ms(h.max()),
        rate_dps
    );
    println!(
        "  loadgen CPU {lg_cpu:.2}s over {window_s:.1}s = {:.0}% of one core",
        100.0 * lg_cpu / window_s.max(1e-9)
    );
    if let Some(c) = srv_cpu {
        println!(
            "  server CPU {c:.2}s = {:.0}% of one core; {:.2} CPU-s per million deliveries; RSS {:.1} MiB",
            100.0 * c / window_s.max(1e-9),
            per_m.unwrap_or(f64::NAN),
            rss_end.unwrap_or(0) as f64 / 1048576.0
        );
    }
    if args.json {
        println!("{out}");
    }
    if connected == n && lost == 0 && dup == 0 {
        0
    } else {
        1
    }
}
