//! Chaos run of the delivery guarantee (contract §1): two `rtgate`
//! gateways on one `redis-server` with append-only persistence
//! (`appendfsync always`), subscribers on all four transports (WebSocket,
//! SSE, long polling, gRPC `Subscribe`) resuming by cursor after every
//! disconnect, publishers at a steady rate through both gateways. While
//! they run, per cycle: restart Redis (SIGTERM, same port and AOF
//! directory), `kill -9` gateway A and restart it, `kill -9` gateway B and
//! restart it; 1 % of the subscribers (at least one per transport) follow every
//! topic and read slowly: closed as slow consumers, they resume (a slow
//! long poller just lags: polling has no server-side queue).
//!
//! At the end every subscriber must hold every accepted id of its topics
//! exactly once and in order, or an explicit `gap` covering ids that Redis
//! really lost (checked against what Redis still holds). Exits 0 when so,
//! 1 on any loss, duplicate or disorder, 2 when the run could not be set up.
//! `scripts/chaos.sh` builds and runs it; `docs/reliability.md` has the
//! figures of real runs.
//!
//! ```text
//! chaos --rtgate target/release/rtgate --duration 300 --cycles 5 --subs 100
//! ```
#![allow(clippy::print_stdout, clippy::disallowed_types)]

mod check;
mod procs;
mod publish;
mod subs;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use parking_lot::Mutex;
use rtgate::core::MessageId;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use procs::{Gateway, Redis};
use publish::{Book, Publisher};
use subs::{Ctx, Seen, Sub, Transport};

#[derive(Parser, Debug)]
#[command(about = "Chaos run: two gateways on one Redis, kills and restarts, every id exactly once")]
struct Args {
    /// The rtgate binary.
    #[arg(long, default_value = "target/debug/rtgate")]
    rtgate: String,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Seconds of publishing (the faults happen within it).
    #[arg(long, default_value_t = 45)]
    duration: u64,
    /// Fault cycles (restart Redis, kill A, kill B) spread over the duration.
    #[arg(long, default_value_t = 1)]
    cycles: u32,
    /// Subscribers per transport.
    #[arg(long, default_value_t = 25)]
    subs: usize,
    /// Percent of subscribers that read slowly (at least one per transport).
    #[arg(long, default_value_t = 1.0)]
    slow_percent: f64,
    /// Topics; subscriber i follows topics i and i+1 (two per cursor), a
    /// slow one all of them.
    #[arg(long, default_value_t = 8)]
    topics: usize,
    /// Publishes per second, all publishers together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Publishers (alternating gateways).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Bytes of padding per message (large enough that a slow reader's
    /// backlog outgrows the kernel's socket buffers, megabytes on loopback).
    #[arg(long, default_value_t = 4096)]
    pad: usize,
    /// Seconds a gateway stays down after `kill -9`.
    #[arg(long, default_value_t = 2)]
    down: u64,
    /// Seconds allowed for every subscriber to catch up after publishing.
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// Gateways' `limits.outbox_capacity` (small, so slow readers overflow).
    #[arg(long, default_value_t = 64)]
    outbox: usize,
    /// Milliseconds a slow subscriber pauses after each message.
    #[arg(long, default_value_t = 500)]
    slow_ms: u64,
    /// Working directory (Redis AOF, gateway config and logs); a fresh one
    /// under the system temp directory by default.
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(async {
        match run(args).await {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("chaos: {e}");
                2
            }
        }
    });
    std::process::exit(code);
}

fn log(start: Instant, what: &str) {
    println!("[{:7.2}s] {what}", start.elapsed().as_secs_f64());
}

async fn run(args: Args) -> Result<bool, String> {
    let start = Instant::now();
    let unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let run_id = format!("c{unix}-{}", std::process::id());
    let dir = args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("rtgate-chaos-{run_id}")));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{dir:?}: {e}"))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| e.to_string())?;

    let mut redis = Redis::start(&args.redis_server, &dir).await?;
    let config = dir.join("gateway.toml");
    let toml = format!(
        "[engine]\nkind = \"redis\"\n[redis]\nurl = \"{}\"\nkey_prefix = \"{run_id}:\"\n[history]\nmax_len = 1000000\n\
         [limits]\noutbox_capacity = {}\n[shutdown]\ngrace = \"2s\"\n",
        redis.url(),
        args.outbox
    );
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let mut a = Gateway::start("A", &args.rtgate, &config, &dir, http.clone()).await?;
    let mut b = Gateway::start("B", &args.rtgate, &config, &dir, http.clone()).await?;
    log(
        start,
        &format!("redis :{} (AOF in {dir:?}), gateway A {}, gateway B {}", redis.port, a.addr(), b.addr()),
    );

    let topics: Vec<String> = (0..args.topics.max(2)).map(|i| format!("{run_id}-t{i}")).collect();
    let ctx = Arc::new(Ctx {
        gateways: vec![a.addr(), b.addr()],
        stop: CancellationToken::new(),
        publishing: AtomicBool::new(true),
        http: http.clone(),
        slow_delay: Duration::from_millis(args.slow_ms),
    });

    // Subscribers start from a cursor the server handed out before the
    // first publish, so each must end up with every accepted id.
    let mut start_cursor = HashMap::new();
    for i in 0..topics.len() {
        let pair = [topics[i].clone(), topics[(i + 1) % topics.len()].clone()];
        let q = pair.iter().map(|t| format!("topic={t}")).collect::<Vec<_>>().join("&");
        let url = format!("http://{}/v1/poll?{q}&timeout=0", ctx.gateways[i % 2]);
        let v = get_json(&http, &url).await?;
        let c = v.get("cursor").and_then(Value::as_str).ok_or_else(|| format!("no cursor in {v}"))?;
        start_cursor.insert(i, (pair, c.to_owned()));
    }
    // A slow subscriber follows every topic (the most traffic, so its
    // queue overflows within seconds).
    let all_q = topics.iter().map(|t| format!("topic={t}")).collect::<Vec<_>>().join("&");
    let url = format!("http://{}/v1/poll?{all_q}&timeout=0", ctx.gateways[0]);
    let v: Value =
        http.get(&url).send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
    let all_cursor =
        v.get("cursor").and_then(Value::as_str).ok_or_else(|| format!("no cursor in {v}"))?.to_owned();
    let slow_every = (100.0 / args.slow_percent.max(0.01)).round().max(1.0) as usize;
    let mut subs = Vec::new();
    let mut tasks = Vec::new();
    for t in Transport::ALL {
        for i in 0..args.subs {
            let slow = i % slow_every == 0;
            let (follow, cursor) = if slow {
                (topics.clone(), all_cursor.clone())
            } else {
                let (pair, cursor) = start_cursor[&(i % topics.len())].clone();
                (pair.to_vec(), cursor)
            };
            let sub = Arc::new(Sub {
                transport: t,
                topics: follow,
                slow,
                seen: Mutex::new(Seen { cursor, ..Seen::default() }),
            });
            subs.push(Arc::clone(&sub));
            tasks.push(tokio::spawn(subs::run(Arc::clone(&ctx), sub, i)));
        }
    }
    log(start, &format!("{} subscribers ({} per transport), {} topics", subs.len(), args.subs, topics.len()));

    let book = Arc::new(Book {
        accepted: Mutex::new(Vec::new()),
        retries: Default::default(),
        unconfirmed: Default::default(),
    });
    let stop_publishing = CancellationToken::new();
    let per = Duration::from_secs_f64(args.publishers.max(1) as f64 / args.rate.max(0.1));
    let mut pubs = Vec::new();
    for index in 0..args.publishers.max(1) {
        let p = Publisher {
            index,
            gateways: ctx.gateways.clone(),
            topics: topics.clone(),
            period: per,
            pad: args.pad,
            run_id: run_id.clone(),
            http: http.clone(),
        };
        pubs.push(tokio::spawn(p.run(Arc::clone(&book), stop_publishing.clone())));
    }
    let publish_start = Instant::now();
    log(
        start,
        &format!("publishing {} msg/s for {} s, {} fault cycle(s)", args.rate, args.duration, args.cycles),
    );

    // The fault schedule, within each cycle: restart Redis at 20 %, kill A
    // at 45 %, kill B at 70 % (Redis first: a slow reader's queue fills
    // before a kill hands it a dead socket to drain).
    let cycle = Duration::from_secs(args.duration) / args.cycles.max(1);
    let down = Duration::from_secs(args.down);
    let mut faults = Vec::new();
    for c in 0..args.cycles.max(1) {
        let base = publish_start + cycle * c;
        tokio::time::sleep_until(base + cycle.mul_f64(0.2)).await;
        redis.restart().await?;
        log(start, "redis restarted (SIGTERM, same AOF)");
        faults.push("restart redis");
        for (at, g) in [(0.45, &mut a), (0.7, &mut b)] {
            tokio::time::sleep_until(base + cycle.mul_f64(at)).await;
            g.kill9().await?;
            log(start, &format!("kill -9 gateway {}", g.name));
            tokio::time::sleep(down).await;
            g.restart().await?;
            log(start, &format!("gateway {} restarted", g.name));
            faults.push(if g.name == "A" { "kill -9 A" } else { "kill -9 B" });
        }
    }
    tokio::time::sleep_until(publish_start + Duration::from_secs(args.duration)).await;
    stop_publishing.cancel();
    for p in pubs {
        let _ = p.await;
    }
    ctx.publishing.store(false, Relaxed);
    let accepted_list = book.accepted.lock().clone();
    log(start, &format!("publishing stopped: {} accepted", accepted_list.len()));

    let mut accepted: HashMap<String, Vec<MessageId>> = HashMap::new();
    for m in &accepted_list {
        accepted.entry(m.topic.clone()).or_default().push(m.id);
    }
    for ids in accepted.values_mut() {
        ids.sort_unstable();
    }
    // Settle: every subscriber reaches the last accepted id of its topics.
    let settle_deadline = Instant::now() + Duration::from_secs(args.settle);
    let behind = |subs: &[Arc<Sub>]| {
        subs.iter()
            .filter(|s| {
                s.topics
                    .iter()
                    .any(|t| accepted.get(t).and_then(|v| v.last()).is_some_and(|l| s.last(t) < Some(*l)))
            })
            .count()
    };
    loop {
        let n = behind(&subs);
        if n == 0 || Instant::now() >= settle_deadline {
            log(start, &format!("settled: {n} subscriber(s) behind"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await; // polling progress, bounded by --settle
    }
    ctx.stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }

    // What Redis still holds, through the history API.
    let gw = if a.running() { a.addr() } else { b.addr() };
    let mut stored: HashMap<String, HashSet<MessageId>> = HashMap::new();
    for t in &topics {
        stored.insert(t.clone(), history(&http, &gw, t).await?);
    }
    let redis_missing: usize =
        accepted.iter().map(|(t, ids)| ids.iter().filter(|id| !stored[t].contains(id)).count()).sum();

    let (mut per_transport, problems) = check::check(&subs, &accepted, &stored);
    // A slow reader sees its slow_consumer close only after draining what
    // the kernel still holds for it: count the closes on the server side.
    for g in [&a, &b] {
        for (t, n) in g.closes("slow_consumer") {
            if let Some(f) =
                Transport::ALL.iter().find(|x| x.name() == t).and_then(|x| per_transport.get_mut(x))
            {
                f.slow_closes += n;
            }
        }
    }
    let (table, all) = check::table(&per_transport);
    let elapsed = start.elapsed().as_secs_f64();
    println!("\n## chaos run {run_id}\n");
    println!(
        "{} s in all ({} s publishing), {} accepted publishes ({} retried attempts, {} unconfirmed), \
         {} accepted ids missing from Redis at the end; faults: {}\n",
        elapsed.round(),
        args.duration,
        accepted_list.len(),
        book.retries.load(Relaxed),
        book.unconfirmed.load(Relaxed),
        redis_missing,
        faults.join(", ")
    );
    println!("{table}");
    println!("session ends by reason: {:?}\n", all.ends);
    if all.extra > 0 {
        println!("{} received ids were never confirmed to a publisher (unconfirmed publishes)", all.extra);
    }
    for sub in subs.iter().filter(|s| s.slow) {
        let seen = sub.seen.lock();
        let got: usize = seen.ids.values().map(Vec::len).sum();
        println!("slow {} subscriber: {got} messages, session ends {:?}", sub.transport.name(), seen.ends);
    }
    for p in &problems {
        println!("VIOLATION {p}");
    }
    let ok = all.ok() && behind(&subs) == 0 && !accepted_list.is_empty();
    println!(
        "{}",
        if ok { "OK: every subscriber holds every accepted id exactly once, in order" } else { "FAILED" }
    );
    println!("logs: {dir:?}");
    Ok(ok)
}

/// Every id of `topic` still in the history (pages of 1000).
async fn history(http: &reqwest::Client, gw: &str, topic: &str) -> Result<HashSet<MessageId>, String> {
    let mut out = HashSet::new();
    let mut after = MessageId::ZERO.to_string();
    loop {
        let url = format!("http://{gw}/v1/history/{topic}?after={after}&limit=1000");
        let v = get_json(http, &url).await?;
        let msgs = v.get("messages").and_then(Value::as_array).ok_or_else(|| format!("history: {v}"))?;
        let ids: Vec<MessageId> = msgs
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str))
            .filter_map(|s| s.parse().ok())
            .collect();
        let Some(last) = ids.last() else { return Ok(out) };
        after = last.to_string();
        out.extend(ids);
    }
}

/// `GET url` as JSON; errors as text.
async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    http.get(url).send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())
}
