//! Price-feed benchmark (issue 15): `latest` against `lossless` delivery.
//!
//! `--subscribers` WebSocket readers on one topic, a `--slow-fraction` of
//! them slow (each takes a frame, then waits `--slow-delay-ms`); a publisher
//! at `--rate` msg/s over `--keys` keys on `--publishers` HTTP/1.1 keep-alive
//! connections (`POST /v1/publish/{topic}?key=kN`). Key k is always published
//! by connection k % P, one request in flight, so each key's publishes keep
//! their order; every payload is `{"key","seq","sent_us","pad"}` (unix µs,
//! padded to `--payload` bytes). A reader closed by the server (1013
//! `slow_consumer`, or any other end) reconnects at once with its last cursor.
//!
//! The topic's policy is the server's (`[[topics]] delivery = ...`): this
//! tool only measures. After `--warmup` s of publishing it measures for
//! `--duration` s: deliveries/s, the server's CPU (from /proc/PID/stat of
//! `--server-pid`) per 1M deliveries, its RSS, and per class of reader
//! (fast, slow) the staleness of each message read (now − `sent_us`),
//! `skipped` summed, reconnects and server gaps. Then the publisher stops
//! and the tool waits up to `--drain` s for every reader to have read, for
//! every key, the last value published; it checks per reader that ids
//! increase and that each message's `skipped` equals the number of that
//! key's messages it did not see (so on a lossless topic: nothing lost).
//! Prints one JSON line on stdout.
//!
//! ```text
//! taskset -c 0 pricefeed --url http://127.0.0.1:8095 --server-pid 123 --label latest
//! ```
#![allow(clippy::print_stdout)]

// The load generator's HTTP/1.1 keep-alive client and /proc sampling.
#[allow(dead_code)]
#[path = "loadgen/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "loadgen/procfs.rs"]
mod procfs;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use http::{parse_url, HttpPost};
use procfs::{proc_cpu, server_cpu, server_rss};

/// Price-feed benchmark: latest vs lossless with slow readers.
#[derive(Parser, Debug, Clone)]
#[command(name = "pricefeed")]
struct Args {
    /// Server base URL, http://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Topic (its [[topics]] entry on the server decides the delivery mode).
    #[arg(long, default_value = "price.bench")]
    topic: String,
    /// WebSocket readers, all on the topic.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Fraction of the readers that read slowly.
    #[arg(long, default_value_t = 0.1)]
    slow_fraction: f64,
    /// A slow reader waits this long after each frame it takes.
    #[arg(long, default_value_t = 50)]
    slow_delay_ms: u64,
    /// SO_RCVBUF of the slow readers' sockets in bytes (0: the kernel's default).
    #[arg(long, default_value_t = 0)]
    slow_rcvbuf: u32,
    /// Messages published per second, over all keys.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Distinct keys (k0 .. k{N-1}).
    #[arg(long, default_value_t = 50)]
    keys: usize,
    /// HTTP keep-alive connections of the publisher (one request in flight each).
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Bytes of each published JSON body.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Seconds of publishing before the measurement starts.
    #[arg(long, default_value_t = 10.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Longest wait, after the publisher stops, for every reader to hold the last value of every key.
    #[arg(long, default_value_t = 20.0)]
    drain: f64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Server PIDs whose CPU and RSS are sampled (comma separated; summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Idle mode: connect the readers, run --on-connected, hold them this many
    /// seconds (nothing published), run --on-done, report (presence cost).
    #[arg(long)]
    idle: Option<f64>,
    /// Shell command run once the readers are connected (after a 1 s settle).
    #[arg(long)]
    on_connected: Option<String>,
    /// Shell command run at the end of the measured window (or of --idle).
    #[arg(long)]
    on_done: Option<String>,
    /// Free-form label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

const NONE: u64 = u64::MAX;
/// Phases: readers count staleness, deliveries and skips only while measuring.
const WARMUP: u8 = 0;
const MEASURING: u8 = 1;
const DRAINING: u8 = 2;

/// Runs an --on-connected / --on-done shell command (its output goes to stderr).
fn hook(cmd: &Option<String>) {
    let Some(cmd) = cmd else { return };
    let out =
        std::process::Command::new("sh").arg("-c").arg(cmd).stdout(std::process::Stdio::null()).status();
    if !matches!(out, Ok(s) if s.success()) {
        eprintln!("hook {cmd:?}: {out:?}");
    }
}

/// (busy, total) jiffies of each CPU from /proc/stat: what else ran beside the server.
fn cpu_times() -> Vec<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let total: u64 = f.iter().take(8).sum();
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Busy % of each CPU between two [`cpu_times`] samples.
fn busy_pct(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|((b0, t0), (b1, t1))| ((b1 - b0) as f64 * 1000.0 / (t1 - t0).max(1) as f64).round() / 10.0)
        .collect()
}

fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits: the bounds are constants.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds")
}

/// A server frame; `data` only as far as this tool reads it.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    op: &'a str,
    #[serde(borrow, default)]
    id: Option<&'a str>,
    #[serde(borrow, default)]
    cursor: Option<&'a str>,
    #[serde(default)]
    skipped: Option<u64>,
    #[serde(borrow, default)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    key: &'a str,
    seq: u64,
    sent_us: u64,
}

/// "<ms>-<seq>" as a pair that orders like the ids.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The publisher's layout: key k goes over connection k % P; connection c
/// cycles its keys, its j-th message has seq j*P + c. So consecutive
/// messages of key k are `step(k)` seqs apart.
#[derive(Clone)]
struct Layout {
    conns: usize,
    keys: usize,
}

impl Layout {
    fn keys_of(&self, c: usize) -> Vec<usize> {
        (0..self.keys).filter(|k| k % self.conns == c).collect()
    }
    fn step(&self, k: usize) -> u64 {
        (self.keys_of(k % self.conns).len() * self.conns) as u64
    }
}

/// Figures of one class of readers (fast or slow), counted while measuring.
#[derive(Default)]
struct Class {
    delivered: AtomicU64,
    skipped: AtomicU64,
    reconnects_1013: AtomicU64,
    reconnects_other: AtomicU64,
    gaps: AtomicU64,
    stale_us: Mutex<Option<Histogram<u64>>>,
}

impl Class {
    fn record_stale(&self, us: u64) {
        if let Ok(mut h) = self.stale_us.lock() {
            h.get_or_insert_with(hist).saturating_record(us.max(1));
        }
    }
}

/// What one reader exposes to the final checks.
struct Reader {
    slow: bool,
    /// Last seq read per key (NONE: none yet).
    last_seq: Vec<AtomicU64>,
    order_errors: AtomicU64,
    skip_mismatches: AtomicU64,
    reconnects: AtomicU64,
    delivered_total: AtomicU64,
}

struct Shared {
    args: Args,
    layout: Layout,
    addr: String,
    phase: AtomicU8,
    connected: AtomicU64,
    connect_failures: AtomicU64,
    fast: Class,
    slow: Class,
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(sh: &Shared, slow: bool, cursor: Option<&str>) -> Result<Ws, String> {
    let addr: std::net::SocketAddr =
        tokio::net::lookup_host(&sh.addr).await.map_err(|e| e.to_string())?.next().ok_or("no address")?;
    let sock =
        if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| e.to_string())?;
    if slow && sh.args.slow_rcvbuf > 0 {
        sock.set_recv_buffer_size(sh.args.slow_rcvbuf).map_err(|e| e.to_string())?;
    }
    let tcp = sock.connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut url = format!("ws://{}/v1/ws?topic={}", sh.addr, sh.args.topic);
    if let Some(c) = cursor {
        url.push_str("&cursor=");
        url.push_str(c);
    }
    let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let conn = tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(cfg));
    match tokio::time::timeout(Duration::from_secs(15), conn).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timeout".into()),
    }
}

/// One reader: reads until the process exits, reconnecting with its cursor.
async fn reader(sh: Arc<Shared>, me: Arc<Reader>, sem: Arc<Semaphore>) {
    let class = if me.slow { &sh.slow } else { &sh.fast };
    let delay = Duration::from_millis(sh.args.slow_delay_ms);
    let mut cursor: Option<String> = None;
    let mut last_id = (0u64, 0u64);
    let mut first = true;
    loop {
        let permit = if first { sem.clone().acquire_owned().await.ok() } else { None };
        let ws = match connect(&sh, me.slow, cursor.as_deref()).await {
            Ok(ws) => ws,
            Err(e) => {
                if sh.connect_failures.fetch_add(1, Relaxed) < 3 {
                    eprintln!("connect failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        drop(permit);
        if first {
            sh.connected.fetch_add(1, Relaxed);
            first = false;
        }
        let mut ws = ws;
        let mut ping_at = Instant::now() + Duration::from_secs(10);
        let mut code_1013 = false;
        while let Some(msg) = ws.next().await {
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(f)) => {
                    code_1013 = f.is_some_and(|f| f.code == CloseCode::Again);
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            };
            let now_us = unix_us();
            let measuring = sh.phase.load(Relaxed) == MEASURING;
            if let Ok(f) = serde_json::from_str::<Frame<'_>>(text.as_str()) {
                match (f.op, f.data, f.id) {
                    ("message", Some(d), Some(id)) => {
                        me.delivered_total.fetch_add(1, Relaxed);
                        let id = parse_id(id).unwrap_or((0, 0));
                        if id <= last_id {
                            me.order_errors.fetch_add(1, Relaxed);
                        }
                        last_id = id;
                        if let Some(c) = f.cursor {
                            cursor = Some(c.to_string());
                        }
                        let skipped = f.skipped.unwrap_or(0);
                        if let Some(k) = d.key.strip_prefix('k').and_then(|k| k.parse::<usize>().ok()) {
                            if let Some(slot) = me.last_seq.get(k) {
                                let prev = slot.swap(d.seq, Relaxed);
                                let step = sh.layout.step(k);
                                if prev != NONE && d.seq.checked_sub(prev) != Some((skipped + 1) * step) {
                                    me.skip_mismatches.fetch_add(1, Relaxed);
                                }
                            }
                        }
                        if measuring {
                            class.delivered.fetch_add(1, Relaxed);
                            class.skipped.fetch_add(skipped, Relaxed);
                            class.record_stale(now_us.saturating_sub(d.sent_us));
                        }
                    }
                    ("gap", ..) => {
                        // A reported loss: the skip check restarts for every key.
                        me.last_seq.iter().for_each(|s| s.store(NONE, Relaxed));
                        if measuring {
                            class.gaps.fetch_add(1, Relaxed);
                        }
                    }
                    _ => {}
                }
            }
            if me.slow {
                tokio::time::sleep(delay).await;
            }
            if Instant::now() >= ping_at {
                // Keeps the server hearing from a reader whose pongs queue behind data.
                let _ = ws.send(Message::Ping(Vec::new().into())).await;
                ping_at = Instant::now() + Duration::from_secs(10);
            }
        }
        me.reconnects.fetch_add(1, Relaxed);
        if sh.phase.load(Relaxed) == MEASURING {
            if code_1013 { &class.reconnects_1013 } else { &class.reconnects_other }.fetch_add(1, Relaxed);
        }
    }
}

fn payload(key: usize, seq: u64, size: usize) -> Vec<u8> {
    let head = format!("{{\"key\":\"k{key}\",\"seq\":{seq},\"sent_us\":{},\"pad\":\"", unix_us());
    let mut v = head.into_bytes();
    let pad = size.saturating_sub(v.len() + 2);
    v.resize(v.len() + pad, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// What one publisher connection did.
struct Published {
    /// (key, last seq answered 200) for its keys that got one.
    last: Vec<(usize, u64)>,
    ok: u64,
    /// Answered 200 within the measured window.
    ok_in_window: u64,
    errors: u64,
    /// Sent more than 50 ms after their due time (the publisher fell behind).
    late: u64,
    lag_max_ms: f64,
    rtt_us: Histogram<u64>,
}

/// Connection `c`: its j-th message (seq j*P + c) is due at start + seq/rate.
async fn publisher(sh: Arc<Shared>, c: usize, start: Instant, window: (Instant, Instant)) -> Published {
    let a = &sh.args;
    let keys = sh.layout.keys_of(c);
    let mut http = HttpPost::new(sh.addr.clone());
    let mut out = Published {
        last: Vec::new(),
        ok: 0,
        ok_in_window: 0,
        errors: 0,
        late: 0,
        lag_max_ms: 0.0,
        rtt_us: hist(),
    };
    let mut last = vec![NONE; keys.len()];
    if keys.is_empty() {
        return out;
    }
    for j in 0u64.. {
        let seq = j * sh.layout.conns as u64 + c as u64;
        let due = start + Duration::from_secs_f64(seq as f64 / a.rate);
        if due >= window.1 {
            break;
        }
        let lag = Instant::now().saturating_duration_since(due);
        if lag > Duration::from_millis(50) {
            out.late += 1;
        }
        out.lag_max_ms = out.lag_max_ms.max(lag.as_secs_f64() * 1000.0);
        tokio::time::sleep_until(due).await;
        let ki = (j as usize) % keys.len();
        let key = keys[ki];
        let t0 = Instant::now();
        let path = format!("/v1/publish/{}?key=k{key}", a.topic);
        match http.post(&path, &payload(key, seq, a.payload)).await {
            Ok(200) => {
                out.ok += 1;
                let now = Instant::now();
                if now >= window.0 && now < window.1 {
                    out.ok_in_window += 1;
                }
                last[ki] = seq;
                out.rtt_us.saturating_record(t0.elapsed().as_micros() as u64);
            }
            r => {
                if out.errors < 3 {
                    eprintln!("publish {path}: {r:?}");
                }
                out.errors += 1;
            }
        }
    }
    out.last = keys.iter().zip(last).filter(|(_, s)| *s != NONE).map(|(k, s)| (*k, s)).collect();
    out
}

fn pct(h: &Option<Histogram<u64>>, q: f64) -> Option<f64> {
    h.as_ref().filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(q) as f64 / 1000.0)
}

fn class_json(c: &Class, readers: usize, secs: f64) -> Value {
    let h = c.stale_us.lock().ok().and_then(|h| h.clone());
    let delivered = c.delivered.load(Relaxed);
    json!({
        "readers": readers,
        "delivered": delivered,
        "per_reader_per_s": if readers > 0 { delivered as f64 / readers as f64 / secs } else { 0.0 },
        "stale_ms_p50": pct(&h, 0.5), "stale_ms_p99": pct(&h, 0.99),
        "stale_ms_max": h.as_ref().filter(|h| !h.is_empty()).map(|h| h.max() as f64 / 1000.0),
        "skipped": c.skipped.load(Relaxed),
        "reconnects_1013": c.reconnects_1013.load(Relaxed),
        "reconnects_other": c.reconnects_other.load(Relaxed),
        "gaps": c.gaps.load(Relaxed),
    })
}

/// The readers of one class that hold `final_seq` for every key, and the
/// order and skip errors of the class.
fn check(readers: &[Arc<Reader>], slow: bool, final_seq: &[u64]) -> (usize, u64, u64, u64) {
    let mut done = 0;
    let (mut order, mut skip, mut reconnects) = (0, 0, 0);
    for r in readers.iter().filter(|r| r.slow == slow) {
        if r.last_seq.iter().zip(final_seq).all(|(s, f)| s.load(Relaxed) == *f) {
            done += 1;
        }
        order += r.order_errors.load(Relaxed);
        skip += r.skip_mismatches.load(Relaxed);
        reconnects += r.reconnects.load(Relaxed);
    }
    (done, order, skip, reconnects)
}

async fn run(args: Args) -> Result<Value, String> {
    let addr = parse_url(&args.url)?;
    if args.rate <= 0.0 || args.keys == 0 || args.publishers == 0 || args.duration <= 0.0 {
        return Err("--rate, --keys, --publishers and --duration must be positive".into());
    }
    let layout = Layout { conns: args.publishers.min(args.keys), keys: args.keys };
    let n = args.subscribers;
    let sh = Arc::new(Shared {
        layout,
        addr,
        phase: AtomicU8::new(WARMUP),
        connected: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
        fast: Class::default(),
        slow: Class::default(),
        args: args.clone(),
    });
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    // Reader i is slow when it crosses a multiple of 1/fraction: spread evenly.
    let slow_of =
        |i: usize| ((i + 1) as f64 * args.slow_fraction).floor() > (i as f64 * args.slow_fraction).floor();
    let readers: Vec<Arc<Reader>> = (0..n)
        .map(|i| {
            Arc::new(Reader {
                slow: slow_of(i),
                last_seq: (0..args.keys).map(|_| AtomicU64::new(NONE)).collect(),
                order_errors: AtomicU64::new(0),
                skip_mismatches: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                delivered_total: AtomicU64::new(0),
            })
        })
        .collect();
    let n_slow = readers.iter().filter(|r| r.slow).count();
    for r in &readers {
        tokio::spawn(reader(sh.clone(), r.clone(), sem.clone()));
    }
    let t_connect = Instant::now();
    while (sh.connected.load(Relaxed) as usize) < n {
        if t_connect.elapsed() > Duration::from_secs(120) {
            return Err(format!("only {} of {n} readers connected", sh.connected.load(Relaxed)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids = &args.server_pid;
    let rss_connected = server_rss(pids);
    hook(&args.on_connected);
    if let Some(idle) = args.idle {
        let cpu0 = server_cpu(pids);
        tokio::time::sleep(Duration::from_secs_f64(idle)).await;
        let cpu = server_cpu(pids).zip(cpu0).map(|(a, b)| a - b);
        hook(&args.on_done);
        let reconnects: u64 = readers.iter().map(|r| r.reconnects.load(Relaxed)).sum();
        return Ok(json!({
            "label": args.label, "idle_s": idle, "subscribers": n,
            "connect_s": (connect_s * 100.0).round() / 100.0,
            "connect_failures": sh.connect_failures.load(Relaxed), "reconnects": reconnects,
            "server_cpu_s": cpu, "rss_mib_connected": rss_connected.map(|b| b as f64 / 1048576.0),
        }));
    }

    let start = Instant::now() + Duration::from_millis(100);
    let window = (
        start + Duration::from_secs_f64(args.warmup),
        start + Duration::from_secs_f64(args.warmup + args.duration),
    );
    let pubs: Vec<_> =
        (0..sh.layout.conns).map(|c| tokio::spawn(publisher(sh.clone(), c, start, window))).collect();
    let mut rss_max = 0u64;
    tokio::time::sleep_until(window.0).await;
    sh.phase.store(MEASURING, Relaxed);
    let (cpu0, me0, rss_start, cpus0) = (server_cpu(pids), proc_cpu("self"), server_rss(pids), cpu_times());
    while Instant::now() < window.1 {
        tokio::time::sleep_until((Instant::now() + Duration::from_secs(1)).min(window.1)).await;
        rss_max = rss_max.max(server_rss(pids).unwrap_or(0));
    }
    sh.phase.store(DRAINING, Relaxed);
    let (cpu1, me1, rss_end, cpus1) = (server_cpu(pids), proc_cpu("self"), server_rss(pids), cpu_times());
    hook(&args.on_done);
    let secs = args.duration;

    let mut final_seq = vec![NONE; args.keys];
    let (mut ok, mut ok_w, mut errors, mut late, mut lag, mut rtt) = (0, 0, 0, 0, 0f64, hist());
    for p in pubs {
        let p = p.await.map_err(|e| e.to_string())?;
        for (k, s) in p.last {
            final_seq[k] = s;
        }
        (ok, ok_w, errors, late) = (ok + p.ok, ok_w + p.ok_in_window, errors + p.errors, late + p.late);
        lag = lag.max(p.lag_max_ms);
        let _ = rtt.add(&p.rtt_us);
    }
    // Drain: until every reader holds every key's last value, or --drain.
    let t_drain = Instant::now();
    let mut converged_after = None;
    loop {
        let (f, ..) = check(&readers, false, &final_seq);
        let (s, ..) = check(&readers, true, &final_seq);
        if f + s == n {
            converged_after = Some(t_drain.elapsed().as_secs_f64());
            break;
        }
        if t_drain.elapsed().as_secs_f64() >= args.drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (fast_done, fast_order, fast_skip, fast_rc) = check(&readers, false, &final_seq);
    let (slow_done, slow_order, slow_skip, slow_rc) = check(&readers, true, &final_seq);
    let delivered = sh.fast.delivered.load(Relaxed) + sh.slow.delivered.load(Relaxed);
    let cpu = cpu1.zip(cpu0).map(|(a, b)| a - b);
    let mut fast = class_json(&sh.fast, n - n_slow, secs);
    let mut slow = class_json(&sh.slow, n_slow, secs);
    for (v, done, order, skip, rc) in [
        (&mut fast, fast_done, fast_order, fast_skip, fast_rc),
        (&mut slow, slow_done, slow_order, slow_skip, slow_rc),
    ] {
        v["final_values_ok"] = json!(done);
        v["id_order_errors"] = json!(order);
        v["skip_count_mismatches"] = json!(skip);
        v["reconnects_total"] = json!(rc);
    }
    let mib = |b: Option<u64>| b.map(|b| (b as f64 / 1048576.0 * 10.0).round() / 10.0);
    Ok(json!({
        "label": args.label,
        "subscribers": n, "slow": n_slow, "slow_delay_ms": args.slow_delay_ms, "rate": args.rate,
        "keys": args.keys, "payload": args.payload, "warmup_s": args.warmup, "duration_s": secs,
        "connect_s": (connect_s * 100.0).round() / 100.0,
        "connect_failures": sh.connect_failures.load(Relaxed),
        "published": ok, "published_in_window": ok_w, "publish_rate_achieved": (ok_w as f64 / secs).round(),
        "publish_errors": errors, "publish_late": late, "publish_lag_ms_max": lag.round(),
        "publish_rtt_ms_p50": rtt.value_at_quantile(0.5) as f64 / 1000.0,
        "publish_rtt_ms_p99": rtt.value_at_quantile(0.99) as f64 / 1000.0,
        "deliveries_per_s": (delivered as f64 / secs).round(),
        "server_cpu_s": cpu,
        "server_cpu_pct": cpu.map(|c| (c / secs * 1000.0).round() / 10.0),
        "server_cpu_s_per_1m_deliveries": cpu.filter(|_| delivered > 0).map(|c| c * 1e6 / delivered as f64),
        "cpu_busy_pct": busy_pct(&cpus0, &cpus1),
        "loadgen_cpu_pct": me1.zip(me0).map(|(a, b)| ((a - b) / secs * 1000.0).round() / 10.0),
        "rss_mib_connected": mib(rss_connected), "rss_mib_start": mib(rss_start),
        "rss_mib_end": mib(rss_end), "rss_mib_max": mib(Some(rss_max).filter(|m| *m > 0)),
        "drain_s": converged_after.map(|s| (s * 100.0).round() / 100.0),
        "fast": fast, "slow_readers": slow,
    }))
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match rt.block_on(run(args)) {
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => {
            eprintln!("pricefeed: {e}");
            1
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Do not wait for a thousand reader tasks to be torn down.
    std::process::exit(code);
}
