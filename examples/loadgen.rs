//! WebSocket fan-out load generator for rtgate and for the Nchan peer.
//!
//! N WebSocket subscribers on one topic, one HTTP/1.1 keep-alive publisher at a
//! fixed rate. Every payload carries a sequence number and its send time, so each
//! subscriber measures publish→deliver latency and checks that it sees every
//! sequence number once, in order. Optionally samples the server's CPU and RSS
//! from /proc. `--idle` opens the connections and holds them (RSS per connection).
//! `--sub-url` connects the subscribers to another server than the publisher
//! (two rtgate processes sharing one Redis).
//!
//! `--transport sse|poll` (rtgate only) subscribes over Server-Sent Events (one
//! raw HTTP/1.1 connection per subscriber, events parsed here) or long polling
//! (each subscriber polls on its own keep-alive connection, passing each
//! answer's cursor back); the same latency and sequence checks apply. With
//! `--idle --transport poll` every subscriber holds one poll open
//! (`--poll-timeout`, default 60 s idle) and RSS is sampled once all are sent.
//! `--replay N` publishes N messages to a fresh topic (`--publishers` HTTP
//! connections), then times one SSE client resuming (`lastEventId`) from a
//! cursor taken before the first publish (messages/s, order, loss).
//!
//! `--transport grpc` (rtgate only) opens N `rtgate.v1.Gateway/Subscribe`
//! streams multiplexed over `--grpc-conns` HTTP/2 connections (default: one
//! per 100 streams, the usual MAX_CONCURRENT_STREAMS of gRPC servers and
//! proxies); the publisher uses HTTP, or the unary `Publish` rpc with
//! `--via grpc`.
//!
//! `--throughput` (rtgate only): `--publishers N` publish as fast as they can for
//! `--duration` seconds (or `--count` publishes in all), over HTTP keep-alive
//! (one request in flight per connection), WebSocket (`publish` frames, up to
//! `--inflight` unacknowledged per connection), gRPC `Publish` (`--via
//! grpc-publish`: `--inflight` concurrent calls per HTTP/2 connection) or gRPC
//! `Connect` (`--via grpc-connect`: publish ops on one stream per connection,
//! up to `--inflight` unacknowledged), spread over `--topics` topics.
//! Optional subscribers (subscriber i on topic i % topics) count deliveries.
//! `--before-publish` / `--after-publish` run a shell command right before the
//! first publish and after the last delivery (e.g. to snapshot Redis stats).
//!
//! ```text
//! taskset -c 0 loadgen --server nchan --url http://127.0.0.1:8081 \
//!     --subscribers 1000 --rate 100 --duration 20 --server-pid 123,124 --json
//! taskset -c 0 loadgen --throughput --via ws --publishers 4 --inflight 32 \
//!     --duration 10 --url http://127.0.0.1:8091 --server-pid 123,124,125 --json
//! taskset -c 0 loadgen --transport grpc --subscribers 1000 --rate 100 --duration 20
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_types)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::{client_frame, server_frame, ClientFrame, PublishOp, PublishRequest, SubscribeRequest};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Linux USER_HZ: /proc/*/stat counts CPU time in these ticks.
const CLK_TCK: f64 = 100.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    Ws,
    Sse,
    Poll,
    /// `Subscribe` streams over HTTP/2.
    Grpc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Flavour {
    Rtgate,
    Nchan,
}

/// Fan-out load generator (rtgate over WebSocket, SSE or long polling; Nchan over WebSocket).
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
struct Args {
    /// Server protocol flavour.
    #[arg(long, value_enum, default_value = "rtgate")]
    server: Flavour,
    /// Server base URL, http://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Topic / channel name (default: a fresh one per run).
    #[arg(long)]
    topic: Option<String>,
    /// Server base URL for the subscribers (default: --url).
    #[arg(long)]
    sub_url: Option<String>,
    /// Number of WebSocket subscriber connections (fan-out: all on one topic;
    /// default 1000, throughput mode: default 0).
    #[arg(long)]
    subscribers: Option<usize>,
    /// Connections opened concurrently.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Messages published per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Publishing time in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Size of each published JSON body in bytes.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Seconds to wait for in-flight deliveries after the last publish.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Seconds to wait after all subscribers connected, before publishing / measuring.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Idle mode: open the connections, report, hold them, exit.
    #[arg(long)]
    idle: bool,
    /// Idle mode: seconds to hold the connections after reporting.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Server PIDs to sample (comma separated): CPU over the window, RSS at the end.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Runtime worker threads; 1 = current-thread runtime (pin with taskset -c 0).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also print one JSON line with all figures.
    #[arg(long)]
    json: bool,
    /// Free-form label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// Publish-throughput mode (rtgate): publishers send as fast as they can.
    #[arg(long)]
    throughput: bool,
    /// Throughput mode: concurrent publishers (connections).
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// How publishes are sent (fan-out mode: http or grpc only).
    #[arg(long, value_enum, default_value = "http")]
    via: Via,
    /// Throughput mode: unacknowledged publishes per connection (--via ws and
    /// grpc-connect) or concurrent calls per connection (--via grpc-publish).
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Throughput mode: topics the publishes are spread over (TOPIC-0 .. TOPIC-{M-1} when M > 1).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Throughput mode: stop after this many publishes in all (0 = run for --duration).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Shell command run right before the first publish (after connecting and settling).
    #[arg(long)]
    before_publish: Option<String>,
    /// Shell command run after the last publish and the delivery drain.
    #[arg(long)]
    after_publish: Option<String>,
    /// Subscriber transport (sse, poll and grpc: --server rtgate only).
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// --transport grpc: HTTP/2 connections the Subscribe streams are spread
    /// over (default: one per 100 streams).
    #[arg(long)]
    grpc_conns: Option<usize>,
    /// --transport poll: seconds each poll may be held (default 30; 60 with --idle).
    #[arg(long)]
    poll_timeout: Option<f64>,
    /// Replay-speed mode (rtgate): publish N messages to a fresh topic
    /// (--publishers HTTP connections), then time one SSE client resuming from
    /// before the first of them.
    #[arg(long, default_value_t = 0)]
    replay: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Via {
    /// POST /v1/publish/{topic}, one request in flight per connection.
    Http,
    /// WebSocket `publish` frames.
    Ws,
    /// The unary `Publish` rpc.
    #[value(alias = "grpc")]
    GrpcPublish,
    /// Publish ops on `Connect` streams.
    GrpcConnect,
}

/// The command-line name of a value (`grpc-publish`).
fn name(v: impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// Counters shared by all subscriber tasks.
struct Shared {
    base: Instant,
    connected: AtomicU64,
    /// Connected subscribers per topic index.
    conn_by_topic: Vec<AtomicU64>,
    connect_failed: AtomicU64,
    closed_early: AtomicU64,
    delivered: AtomicU64,
    dup: AtomicU64,
    gap_events: AtomicU64,
    gap_msgs: AtomicU64,
    foreign: AtomicU64,
    /// Gaps the server reported (SSE `event: gap`, poll `gaps`).
    srv_gaps: AtomicU64,
    /// Long polls whose request was sent and whose answer has not come yet.
    held: AtomicU64,
    /// Failed poll requests (retried with the same cursor).
    poll_errors: AtomicU64,
    last_delivery_ns: AtomicU64,
    lat_us: Mutex<Histogram<u64>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Runs one subscriber's connection attempt (15 s at most) and counts it
    /// as connected (on topic `topic_idx`) or failed, printing the first
    /// failures.
    async fn attempt<T>(
        &self,
        what: &str,
        topic_idx: usize,
        conn: impl Future<Output = Result<T, String>>,
    ) -> Option<T> {
        match tokio::time::timeout(Duration::from_secs(15), conn).await {
            Ok(Ok(c)) => {
                self.connected.fetch_add(1, Relaxed);
                if let Some(c) = self.conn_by_topic.get(topic_idx) {
                    c.fetch_add(1, Relaxed);
                }
                Some(c)
            }
            Ok(Err(e)) => {
                if self.connect_failed.fetch_add(1, Relaxed) < 3 {
                    eprintln!("{what} connect failed: {e}");
                }
                None
            }
            Err(_) => {
                self.connect_failed.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Counts a received data payload (JSON with seq, t, p) in `seqs`, or a foreign frame.
    fn payload(&self, seqs: &mut SeqCheck, now: u64, m: Option<(u64, u64, usize)>) {
        match m {
            Some(m) => seqs.record(self, now, m),
            None => {
                self.foreign.fetch_add(1, Relaxed);
            }
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

/// (host:port, host header) from http://HOST:PORT[/...].
fn parse_url(url: &str) -> Result<String, String> {
    let rest =
        url.strip_prefix("http://").ok_or_else(|| format!("--url must start with http:// (got {url})"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    if hostport.is_empty() {
        return Err(format!("no host in {url}"));
    }
    Ok(if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") })
}

// ---------------------------------------------------------------- /proc sampling

/// utime+stime in seconds for one pid ("self" allowed).
fn proc_cpu(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the last ')' start at field 3 (state); utime=14, stime=15.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / CLK_TCK)
}

/// VmRSS in bytes.
fn proc_rss(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn server_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| proc_cpu(&p.to_string())).sum()
}

/// CPU seconds of each pid (None where /proc could not be read).
fn pid_cpus(pids: &[u32]) -> Vec<Option<f64>> {
    pids.iter().map(|p| proc_cpu(&p.to_string())).collect()
}

/// {"PID": {"cpu_s": X}} for the CPU used between two pid_cpus samples.
fn cpu_by_pid(pids: &[u32], before: &[Option<f64>], after: &[Option<f64>]) -> Value {
    let m: serde_json::Map<String, Value> = pids
        .iter()
        .zip(before.iter().zip(after))
        .map(|(p, (b, a))| {
            let d = a.zip(*b).map(|(a, b)| a - b);
            (p.to_string(), json!({ "cpu_s": d }))
        })
        .collect();
    Value::Object(m)
}

/// CPU counters at one instant: this process and each server pid.
struct CpuMark {
    me: f64,
    server: Vec<Option<f64>>,
}

/// CPU used between two [`CpuMark`]s.
struct CpuUse {
    loadgen: f64,
    /// Each server pid's.
    per_pid: Vec<Option<f64>>,
    /// All server pids' (None when there are none or one could not be read).
    server: Option<f64>,
    /// {"PID": {"cpu_s": X}}
    by_pid: Value,
}

impl CpuMark {
    fn take(pids: &[u32]) -> Self {
        CpuMark { me: proc_cpu("self").unwrap_or(0.0), server: pid_cpus(pids) }
    }

    /// What was used from `start` until this mark.
    fn since(&self, start: &CpuMark, pids: &[u32]) -> CpuUse {
        let loadgen = self.me - start.me;
        let per_pid: Vec<Option<f64>> =
            self.server.iter().zip(&start.server).map(|(a, b)| a.zip(*b).map(|(a, b)| a - b)).collect();
        let server: Option<f64> = if per_pid.is_empty() { None } else { per_pid.iter().copied().sum() };
        CpuUse { loadgen, by_pid: cpu_by_pid(pids, &start.server, &self.server), per_pid, server }
    }
}

fn server_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| proc_rss(&p.to_string())).sum()
}

// ---------------------------------------------------------------- subscribers

/// Pull (seq, t, publisher) out of a payload object.
fn seq_t(v: &Value) -> Option<(u64, u64, usize)> {
    let p = v.get("p").and_then(Value::as_u64).unwrap_or(0) as usize;
    Some((v.get("seq")?.as_u64()?, v.get("t")?.as_u64()?, p))
}

/// Returns Some((seq,t,publisher)) for a data message, None for anything else.
fn decode(flavour: Flavour, text: &[u8]) -> Option<(u64, u64, usize)> {
    let v: Value = serde_json::from_slice(text).ok()?;
    match flavour {
        Flavour::Nchan => seq_t(&v),
        Flavour::Rtgate => {
            if v.get("op")?.as_str()? != "message" {
                return None;
            }
            seq_t(v.get("data")?)
        }
    }
}

async fn subscriber(
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    flavour: Flavour,
    addr: String,
    ws_url: String,
    topic_idx: usize,
) {
    let permit = sem.acquire_owned().await;
    let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let conn = async {
        let tcp = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tokio_tungstenite::client_async_with_config(ws_url.as_str(), tcp, Some(cfg))
            .await
            .map_err(|e| e.to_string())
    };
    let Some((mut ws, _resp)) = sh.attempt("ws", topic_idx, conn).await else { return };
    drop(permit);

    let mut seqs = SeqCheck::default();
    // The process exits when the run is over; this loop ends only if the server closes.
    while let Some(msg) = ws.next().await {
        let bytes: &[u8] = match &msg {
            Ok(Message::Text(t)) => t.as_bytes(),
            Ok(Message::Binary(b)) => b,
            Ok(_) => continue, // ping/pong handled by tungstenite
            Err(_) => break,
        };
        sh.payload(&mut seqs, sh.now_ns(), decode(flavour, bytes));
    }
    sh.closed_early.fetch_add(1, Relaxed);
}

/// One subscriber's sequence check: the next expected sequence number per
/// publisher (each publisher numbers each topic 0, 1, ...).
#[derive(Default)]
struct SeqCheck {
    next: Vec<u64>,
}

impl SeqCheck {
    /// Counts one delivery of (seq, t, publisher) received at `now`.
    fn record(&mut self, sh: &Shared, now: u64, (seq, t, p): (u64, u64, usize)) {
        sh.delivered.fetch_add(1, Relaxed);
        sh.last_delivery_ns.fetch_max(now, Relaxed);
        if let Ok(mut h) = sh.lat_us.lock() {
            h.saturating_record(now.saturating_sub(t) / 1000);
        }
        if p >= self.next.len() {
            self.next.resize(p + 1, 0);
        }
        let next = &mut self.next[p];
        if seq == *next {
            *next += 1;
        } else if seq > *next {
            sh.gap_events.fetch_add(1, Relaxed);
            sh.gap_msgs.fetch_add(seq - *next, Relaxed);
            *next = seq + 1;
        } else {
            sh.dup.fetch_add(1, Relaxed);
        }
    }
}

/// (seq, t, publisher) of a message JSON {topic,id,ts,data} (SSE data, poll messages).
fn decode_message(v: &Value) -> Option<(u64, u64, usize)> {
    seq_t(v.get("data")?)
}

/// Parser state of one SSE stream (fields of the event being read).
#[derive(Default)]
struct SseEvent {
    data: Vec<u8>,
    has_data: bool,
    event: Vec<u8>,
    last_id: Vec<u8>,
}

impl SseEvent {
    /// Handles one line (without its end of line); calls `dispatch(event, data)`
    /// when a blank line ends an event that has data.
    fn line(&mut self, line: &[u8], mut dispatch: impl FnMut(&[u8], &[u8])) {
        if line.is_empty() {
            if self.has_data {
                dispatch(&self.event, &self.data);
            }
            self.data.clear();
            self.has_data = false;
            self.event.clear();
            return;
        }
        if line[0] == b':' {
            return; // comment (": ping")
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            _ => {} // retry, unknown fields
        }
    }
}

/// Opens GET /v1/sse and returns the stream, bytes read past the head, and
/// whether the body is chunked.
async fn sse_open(
    addr: &str,
    topic: &str,
    last_event_id: Option<&str>,
) -> Result<(TcpStream, Vec<u8>, bool), String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let resume = last_event_id.map(|c| format!("&lastEventId={c}")).unwrap_or_default();
    let req = format!(
        "GET /v1/sse?topic={topic}{resume} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(&mut tcp, &mut buf).await?;
    };
    let head = parse_head(&buf[..head_end])?;
    if head.status != 200 {
        return Err(format!("HTTP {}: {}", head.status, String::from_utf8_lossy(&buf[head_end..])));
    }
    buf.drain(..head_end);
    Ok((tcp, buf, head.chunked))
}

/// One SSE subscriber (`last_event_id`: resume from that cursor).
async fn sse_subscriber(
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    addr: String,
    topic: String,
    topic_idx: usize,
    last_event_id: Option<String>,
) {
    let permit = sem.acquire_owned().await;
    let conn = sse_open(&addr, &topic, last_event_id.as_deref());
    let Some((mut tcp, mut raw, chunked)) = sh.attempt("sse", topic_idx, conn).await else { return };
    drop(permit);

    let mut seqs = SeqCheck::default();
    let mut dechunk = Chunked::default();
    let mut text: Vec<u8> = Vec::new();
    let mut ev = SseEvent::default();
    loop {
        let done = if chunked {
            match dechunk.feed(&mut raw, &mut text) {
                Ok(done) => done,
                Err(e) => {
                    eprintln!("sse: {e}");
                    break;
                }
            }
        } else {
            text.append(&mut raw);
            false
        };
        let now = sh.now_ns();
        let mut pos = 0;
        while let Some(i) = text[pos..].iter().position(|&b| b == b'\n') {
            let mut line = &text[pos..pos + i];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            ev.line(line, |event, data| match event {
                b"" | b"message" => {
                    let m = serde_json::from_slice::<Value>(data).ok().as_ref().and_then(decode_message);
                    sh.payload(&mut seqs, now, m);
                }
                b"gap" => {
                    sh.srv_gaps.fetch_add(1, Relaxed);
                }
                _ => {
                    sh.foreign.fetch_add(1, Relaxed);
                }
            });
            pos += i + 1;
        }
        text.drain(..pos);
        if done {
            break;
        }
        if raw.capacity() - raw.len() < 2048 {
            raw.reserve(16384);
        }
        match tcp.read_buf(&mut raw).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    sh.closed_early.fetch_add(1, Relaxed);
}

/// Decrements the held-polls gauge when a poll ends (or is abandoned).
struct Held<'a>(&'a AtomicU64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The `cursor` of a poll answer.
fn poll_cursor(body: &[u8]) -> Result<(Value, String), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("poll answer: {e}"))?;
    let c = v.get("cursor").and_then(Value::as_str).ok_or("poll answer without cursor")?.to_string();
    Ok((v, c))
}

/// One long-polling subscriber: a `timeout=0` poll for a cursor at "now"
/// (then it counts as connected), then polls passing each answer's cursor back.
async fn poll_subscriber(
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

/// A gRPC client on one HTTP/2 connection to `addr` (host:port), made on
/// first use; tonic's defaults otherwise (TCP_NODELAY, hyper's 2 MiB stream
/// and 5 MiB connection receive windows).
fn grpc_client(addr: &str) -> Result<GatewayClient<tonic::transport::Channel>, String> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    Ok(GatewayClient::new(ep.connect_timeout(Duration::from_secs(10)).connect_lazy()))
}

/// One gRPC `Subscribe` stream on a shared connection (`client`). Connected
/// once the call answers: the subscription is in place by then.
async fn grpc_subscriber(
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    mut client: GatewayClient<tonic::transport::Channel>,
    topic: String,
    topic_idx: usize,
) {
    let permit = sem.acquire_owned().await;
    let req = SubscribeRequest { topics: vec![topic], cursor: String::new() };
    let call = async { client.subscribe(req).await.map(|r| r.into_inner()).map_err(|s| s.to_string()) };
    let Some(mut stream) = sh.attempt("grpc", topic_idx, call).await else { return };
    drop(permit);

    let mut seqs = SeqCheck::default();
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                let now = sh.now_ns();
                if m.gap.is_some() {
                    sh.srv_gaps.fetch_add(1, Relaxed);
                }
                let v = serde_json::from_slice::<Value>(&m.data).ok();
                sh.payload(&mut seqs, now, v.as_ref().and_then(seq_t));
            }
            Ok(None) => break,
            Err(status) => {
                if sh.closed_early.load(Relaxed) < 3 {
                    eprintln!("grpc stream ended: {status}");
                }
                break;
            }
        }
    }
    sh.closed_early.fetch_add(1, Relaxed);
}

// ---------------------------------------------------------------- publisher

/// Minimal HTTP/1.1 keep-alive client (one request in flight).
struct HttpPost {
    addr: String,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl HttpPost {
    fn new(addr: String) -> Self {
        HttpPost { addr, conn: None, buf: Vec::with_capacity(4096) }
    }

    /// POSTs and returns the status code; reads and discards the body.
    async fn post(&mut self, path: &str, body: &[u8]) -> Result<u16, String> {
        let r = async {
            self.send("POST", path, body).await?;
            self.response(false).await.map(|(status, _)| status)
        }
        .await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// GETs and returns the status code and body.
    async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let r = async {
            self.send("GET", path, b"").await?;
            self.response(true).await
        }
        .await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// Writes one request (connecting first if needed). On error the caller
    /// drops the connection (`self.conn = None`).
    async fn send(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await.map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            self.conn = Some(s);
            self.buf.clear();
        }
        let s = self.conn.as_mut().ok_or("no conn")?;
        let mut req = Vec::with_capacity(200 + body.len());
        if method == "GET" {
            req.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr).as_bytes());
        } else {
            req.extend_from_slice(
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    self.addr,
                    body.len()
                )
                .as_bytes(),
            );
            req.extend_from_slice(body);
        }
        s.write_all(&req).await.map_err(|e| e.to_string())
    }

    /// Reads one response: status and (when `keep`) the body.
    async fn response(&mut self, keep: bool) -> Result<(u16, Vec<u8>), String> {
        let s = self.conn.as_mut().ok_or("no conn")?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            read_more(s, &mut self.buf).await?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        self.buf.drain(..head_end);
        let mut body = Vec::new();
        let mut close = head.close;

        if head.chunked {
            let mut dec = Chunked::default();
            loop {
                let done = dec.feed(&mut self.buf, &mut body)?;
                if !keep {
                    body.clear();
                }
                if done {
                    break;
                }
                read_more(s, &mut self.buf).await?;
            }
        } else if let Some(n) = head.content_length {
            while self.buf.len() < n {
                read_more(s, &mut self.buf).await?;
            }
            if keep {
                body.extend_from_slice(&self.buf[..n]);
            }
            self.buf.drain(..n);
        } else if head.status >= 200 && head.status != 204 && head.status != 304 {
            // Body delimited by close.
            while read_more(s, &mut self.buf).await.is_ok() {}
            if keep {
                body = std::mem::take(&mut self.buf);
            }
            close = true;
        }
        if close {
            self.conn = None;
            self.buf.clear();
        }
        Ok((head.status, body))
    }
}

/// What the loadgen needs from a response head.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn parse_head(raw: &[u8]) -> Result<Head, String> {
    let head = String::from_utf8_lossy(raw).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|x| x.parse().ok()).ok_or("bad status line")?;
    let mut h = Head { status, content_length: None, chunked: false, close: false };
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            match k.trim() {
                "content-length" => h.content_length = v.parse().ok(),
                "transfer-encoding" => h.chunked = v.contains("chunked"),
                "connection" => h.close = v.contains("close"),
                _ => {}
            }
        }
    }
    Ok(h)
}

/// Incremental `Transfer-Encoding: chunked` decoder.
#[derive(Default)]
struct Chunked {
    /// Bytes left in the current chunk's data.
    remaining: usize,
    /// 0: expecting a size line, 1: in data, 2: expecting the CRLF after data, 3: done.
    state: u8,
}

impl Chunked {
    /// Moves what can be decoded from `raw` (consumed) to `out`; true once
    /// the last chunk (and its trailer section) has been read.
    fn feed(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<bool, String> {
        let mut pos = 0;
        loop {
            match self.state {
                0 => {
                    let Some(i) = find(&raw[pos..], b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&raw[pos..pos + i]).to_string();
                    let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| format!("bad chunk size {line:?}"))?;
                    pos += i + 2;
                    if size == 0 {
                        self.state = 4;
                    } else {
                        self.remaining = size;
                        self.state = 1;
                    }
                }
                1 => {
                    let take = self.remaining.min(raw.len() - pos);
                    if take == 0 {
                        break;
                    }
                    out.extend_from_slice(&raw[pos..pos + take]);
                    pos += take;
                    self.remaining -= take;
                    if self.remaining == 0 {
                        self.state = 2;
                    }
                }
                2 => {
                    if raw.len() - pos < 2 {
                        break;
                    }
                    if &raw[pos..pos + 2] != b"\r\n" {
                        return Err("chunk not followed by CRLF".into());
                    }
                    pos += 2;
                    self.state = 0;
                }
                4 => {
                    // Trailer section: header lines up to an empty line.
                    let Some(i) = find(&raw[pos..], b"\r\n") else {
                        break;
                    };
                    pos += i + 2;
                    if i == 0 {
                        self.state = 3;
                    }
                }
                _ => break,
            }
        }
        raw.drain(..pos);
        Ok(self.state == 3)
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut tmp = [0u8; 4096];
    let n = s.read(&mut tmp).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed".into());
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}

fn make_payload(seq: u64, t: u64, p: usize, size: usize) -> Vec<u8> {
    let head = format!("{{\"seq\":{seq},\"t\":{t},\"p\":{p},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut v = Vec::with_capacity(head.len() + pad + 2);
    v.extend_from_slice(head.as_bytes());
    v.resize(head.len() + pad, b'x');
    v.extend_from_slice(b"\"}");
    v
}

struct PubStats {
    published: u64,
    errors: u64,
    late: u64,
    rtt_us: Histogram<u64>,
    end_ns: u64,
}

/// A publisher that waits for each answer: HTTP/1.1 keep-alive or the gRPC
/// `Publish` rpc (on a connection it may share), over a list of topics.
enum Unary {
    Http { http: HttpPost, paths: Vec<String> },
    Grpc { client: GatewayClient<tonic::transport::Channel>, topics: Vec<String> },
}

impl Unary {
    /// rtgate's (or Nchan's) HTTP publish endpoint for each topic.
    fn http(flavour: Flavour, addr: &str, topics: &[String]) -> Self {
        let paths = topics
            .iter()
            .map(|t| match flavour {
                Flavour::Rtgate => format!("/v1/publish/{t}"),
                Flavour::Nchan => format!("/pub?id={t}"),
            })
            .collect();
        Unary::Http { http: HttpPost::new(addr.to_string()), paths }
    }

    /// Publishes `body` to topic `ti` (5 s at most); Err describes a failure.
    async fn publish(&mut self, ti: usize, body: Vec<u8>) -> Result<(), String> {
        let limit = Duration::from_secs(5);
        match self {
            Unary::Http { http, paths } => {
                match tokio::time::timeout(limit, http.post(&paths[ti], &body)).await {
                    Ok(Ok(code)) if (200..300).contains(&code) => Ok(()),
                    Ok(Ok(code)) => Err(format!("HTTP {code}")),
                    other => {
                        http.conn = None; // a timed out request leaves the connection unusable
                        Err(format!("{other:?}"))
                    }
                }
            }
            Unary::Grpc { client, topics } => {
                let req =
                    PublishRequest { topic: topics[ti].clone(), data: body, idempotency_key: String::new() };
                match tokio::time::timeout(limit, client.publish(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err(status.to_string()),
                    Err(_) => Err("no answer within 5 s".into()),
                }
            }
        }
    }
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

// ---------------------------------------------------------------- main

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn main() {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(run(args));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Do not wait for thousands of connection tasks to be torn down.
    std::process::exit(code);
}

/// Runs a --before-publish / --after-publish shell command (its output goes to stderr).
fn hook(cmd: &Option<String>) {
    let Some(cmd) = cmd else { return };
    match std::process::Command::new("sh").arg("-c").arg(cmd).stdout(std::process::Stdio::inherit()).status()
    {
        Ok(s) if s.success() => {}
        other => eprintln!("hook {cmd:?}: {other:?}"),
    }
}

fn new_shared(topics: usize) -> Arc<Shared> {
    Arc::new(Shared {
        base: Instant::now(),
        connected: AtomicU64::new(0),
        conn_by_topic: (0..topics.max(1)).map(|_| AtomicU64::new(0)).collect(),
        connect_failed: AtomicU64::new(0),
        closed_early: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        dup: AtomicU64::new(0),
        gap_events: AtomicU64::new(0),
        gap_msgs: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        srv_gaps: AtomicU64::new(0),
        held: AtomicU64::new(0),
        poll_errors: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        lat_us: Mutex::new(hist()),
    })
}

/// HTTP/2 connections for `n` gRPC subscribers: --grpc-conns, or one per 100 streams.
fn grpc_conns(args: &Args, n: usize) -> usize {
    args.grpc_conns.unwrap_or(n.div_ceil(100)).max(1)
}

/// Seconds a poll subscriber's polls may be held.
fn poll_timeout(args: &Args) -> f64 {
    args.poll_timeout.unwrap_or(if args.idle { 60.0 } else { 30.0 })
}

/// Opens the subscribers over `--transport` (subscriber i on topic i % topics.len())
/// and waits until each is connected or failed. Returns (connected, failed, seconds).
async fn connect_subs(
    sh: &Arc<Shared>,
    args: &Args,
    n: usize,
    addr: &str,
    topics: &[String],
) -> (u64, u64, f64) {
    let t_conn = Instant::now();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let urls: Vec<String> = topics
        .iter()
        .map(|t| match (args.transport, args.server) {
            (Transport::Ws, Flavour::Rtgate) => format!("ws://{addr}/v1/ws?topic={t}"),
            (Transport::Ws, Flavour::Nchan) => format!("ws://{addr}/sub/{t}"),
            (Transport::Sse, _) => format!("http://{addr}/v1/sse?topic={t}"),
            (Transport::Poll, _) => format!("http://{addr}/v1/poll?topic={t}"),
            (Transport::Grpc, _) => format!("http://{addr} rtgate.v1.Gateway/Subscribe {t}"),
        })
        .collect();
    let grpc: Vec<_> = match args.transport {
        Transport::Grpc => match (0..grpc_conns(args, n)).map(|_| grpc_client(addr)).collect() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return (0, n as u64, 0.0);
            }
        },
        _ => Vec::new(),
    };
    for i in 0..n {
        let ti = i % topics.len().max(1);
        let (sh, sem, addr, topic) = (sh.clone(), sem.clone(), addr.to_string(), topics[ti].clone());
        match args.transport {
            Transport::Ws => tokio::spawn(subscriber(sh, sem, args.server, addr, urls[ti].clone(), ti)),
            Transport::Sse => tokio::spawn(sse_subscriber(sh, sem, addr, topic, ti, None)),
            Transport::Poll => tokio::spawn(poll_subscriber(sh, sem, addr, topic, ti, poll_timeout(args))),
            Transport::Grpc => {
                tokio::spawn(grpc_subscriber(sh, sem, grpc[i % grpc.len()].clone(), topic, ti))
            }
        };
    }
    let n = n as u64;
    let conn_deadline = Instant::now() + Duration::from_secs(60 + n / 50);
    loop {
        let done = sh.connected.load(Relaxed) + sh.connect_failed.load(Relaxed);
        if done >= n || Instant::now() > conn_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = t_conn.elapsed().as_secs_f64();
    let connected = sh.connected.load(Relaxed);
    let failed = sh.connect_failed.load(Relaxed);
    if n > 0 {
        eprintln!(
            "{connected}/{n} connected ({failed} failed) in {connect_s:.2}s to {}{}{}",
            urls[0],
            if urls.len() > 1 { " ..." } else { "" },
            if grpc.is_empty() { String::new() } else { format!(" over {} HTTP/2 connections", grpc.len()) }
        );
    }
    (connected, failed, connect_s)
}

async fn run(args: Args) -> i32 {
    let addrs = parse_url(&args.url)
        .and_then(|a| parse_url(args.sub_url.as_deref().unwrap_or(&args.url)).map(|s| (a, s)));
    let (addr, sub_addr) = match addrs {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let topic = args.topic.clone().unwrap_or_else(|| format!("lg-{unix_ms}-{}", std::process::id()));
    if args.server == Flavour::Nchan
        && (args.transport != Transport::Ws || args.replay > 0 || args.via != Via::Http)
    {
        eprintln!(
            "--transport sse|poll|grpc, --replay and --via other than http support --server rtgate only"
        );
        return 2;
    }
    if args.replay > 0 {
        return replay(args, addr, sub_addr, topic).await;
    }
    if args.throughput {
        return throughput(args, addr, sub_addr, topic).await;
    }
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

// ---------------------------------------------------------------- throughput mode

/// What every throughput publisher shares.
struct Tp {
    sh: Arc<Shared>,
    addr: String,
    topics: Vec<String>,
    payload: usize,
    inflight: usize,
    deadline: tokio::time::Instant,
    count: u64,
    issued: AtomicU64,
    errors_logged: AtomicU64,
}

impl Tp {
    /// May one more publish be sent?
    fn claim(&self) -> bool {
        tokio::time::Instant::now() < self.deadline
            && (self.count == 0 || self.issued.fetch_add(1, Relaxed) < self.count)
    }

    fn log_error(&self, what: &str) {
        if self.errors_logged.fetch_add(1, Relaxed) < 5 {
            eprintln!("publish error: {what}");
        }
    }
}

struct TpStats {
    accepted: u64,
    errors: u64,
    lat_us: Histogram<u64>,
    /// Accepted publishes per topic index.
    per_topic: Vec<u64>,
}

impl TpStats {
    fn new(topics: usize) -> Self {
        TpStats { accepted: 0, errors: 0, lat_us: hist(), per_topic: vec![0; topics] }
    }

    /// Counts an accepted publish to topic `ti` sent at `t0` and answered at `now` (ns).
    fn accept(&mut self, ti: usize, t0: u64, now: u64) {
        self.accepted += 1;
        self.per_topic[ti] += 1;
        self.lat_us.saturating_record(now.saturating_sub(t0) / 1000);
    }

    /// Adds another publisher's figures.
    fn merge(&mut self, other: &TpStats) {
        self.accepted += other.accepted;
        self.errors += other.errors;
        self.lat_us.add(&other.lat_us).ok();
        for (a, b) in self.per_topic.iter_mut().zip(&other.per_topic) {
            *a += b;
        }
    }

    /// The summed figures of publisher tasks.
    async fn join(topics: usize, handles: Vec<tokio::task::JoinHandle<TpStats>>) -> TpStats {
        let mut st = TpStats::new(topics);
        for h in handles {
            if let Ok(s) = h.await {
                st.merge(&s);
            }
        }
        st
    }
}

/// Starts `publishers` publishers (connections) over `via`.
fn spawn_publishers(tp: &Arc<Tp>, via: Via, publishers: usize) -> Vec<tokio::task::JoinHandle<TpStats>> {
    (0..publishers.max(1))
        .map(|p| {
            let tp = tp.clone();
            match via {
                Via::Http => {
                    let http = Unary::http(Flavour::Rtgate, &tp.addr, &tp.topics);
                    tokio::spawn(tp_unary(tp, p, http))
                }
                Via::GrpcPublish => tokio::spawn(tp_grpc_publish(tp, p)),
                Via::Ws | Via::GrpcConnect => tokio::spawn(tp_pipelined(tp, p, via)),
            }
        })
        .collect()
}

/// One publisher waiting for each answer (HTTP POST or gRPC `Publish`);
/// `p` numbers its payloads' sequences apart from the other publishers'.
async fn tp_unary(tp: Arc<Tp>, p: usize, mut unary: Unary) -> TpStats {
    let m = tp.topics.len();
    let mut seqs = vec![0u64; m];
    let mut st = TpStats::new(m);
    let mut k = p;
    while tp.claim() {
        let ti = k % m;
        k += 1;
        let t0 = tp.sh.now_ns();
        let body = make_payload(seqs[ti], t0, p, tp.payload);
        seqs[ti] += 1;
        match unary.publish(ti, body).await {
            Ok(()) => st.accept(ti, t0, tp.sh.now_ns()),
            Err(e) => {
                st.errors += 1;
                tp.log_error(&e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    st
}

/// gRPC `Publish` calls on one HTTP/2 connection, `--inflight` of them at
/// once (each a sequential publisher of its own).
async fn tp_grpc_publish(tp: Arc<Tp>, p: usize) -> TpStats {
    let client = match grpc_client(&tp.addr) {
        Ok(c) => c,
        Err(e) => {
            tp.log_error(&e);
            return TpStats { errors: 1, ..TpStats::new(tp.topics.len()) };
        }
    };
    let w = tp.inflight.max(1);
    let handles = (0..w)
        .map(|j| {
            let unary = Unary::Grpc { client: client.clone(), topics: tp.topics.clone() };
            tokio::spawn(tp_unary(tp.clone(), p * w + j, unary))
        })
        .collect();
    TpStats::join(tp.topics.len(), handles).await
}

/// A connection carrying publishes tagged with a numeric ref, each answered
/// by an ack or an error: WebSocket or a gRPC `Connect` stream (one per
/// publisher: the size of its variants does not matter).
#[allow(clippy::large_enum_variant)]
enum Pipe {
    Ws(tokio_tungstenite::WebSocketStream<TcpStream>),
    Grpc { tx: tokio::sync::mpsc::Sender<ClientFrame>, frames: tonic::Streaming<rtgate::proto::ServerFrame> },
}

impl Pipe {
    async fn open(tp: &Tp, via: Via) -> Result<Pipe, String> {
        if via == Via::Ws {
            let tcp = TcpStream::connect(&tp.addr).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let url = format!("ws://{}/v1/ws", tp.addr);
            let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.map_err(|e| e.to_string())?;
            return Ok(Pipe::Ws(ws));
        }
        let mut client = grpc_client(&tp.addr)?;
        let (tx, rx) = tokio::sync::mpsc::channel(tp.inflight.max(1));
        let call = client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        Ok(Pipe::Grpc { tx, frames: call.map_err(|s| s.to_string())?.into_inner() })
    }

    /// Queues one publish (written by `flush`).
    async fn feed(&mut self, r: u64, topic: &str, body: Vec<u8>) -> Result<(), String> {
        match self {
            Pipe::Ws(ws) => {
                let data = String::from_utf8_lossy(&body);
                let frame = format!(r#"{{"op":"publish","topic":"{topic}","data":{data},"ref":{r}}}"#);
                ws.feed(Message::text(frame)).await.map_err(|e| e.to_string())
            }
            Pipe::Grpc { tx, .. } => {
                let op = PublishOp { topic: topic.to_string(), data: body, idempotency_key: String::new() };
                let frame = ClientFrame { r#ref: r.to_string(), op: Some(client_frame::Op::Publish(op)) };
                tx.send(frame).await.map_err(|_| "Connect request stream closed".to_string())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        match self {
            Pipe::Ws(ws) => ws.flush().await.map_err(|e| e.to_string()),
            Pipe::Grpc { .. } => Ok(()),
        }
    }

    /// The next frame: `Some((ref, None))` for an ack with an id,
    /// `Some((ref, Some(frame)))` for another answer, `None` for a frame that
    /// answers no publish.
    async fn answer(&mut self) -> Result<Option<(u64, Option<String>)>, String> {
        match self {
            Pipe::Ws(ws) => {
                let text = match ws.next().await {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
                    Some(Ok(_)) => return Ok(None),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("connection closed".into()),
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { return Ok(None) };
                let acked = v.get("op").and_then(Value::as_str) == Some("ack") && v.get("id").is_some();
                Ok(v.get("ref").and_then(Value::as_u64).map(|r| (r, (!acked).then(|| text.to_string()))))
            }
            Pipe::Grpc { frames, .. } => {
                let frame = frames.message().await.map_err(|s| s.to_string())?.ok_or("stream ended")?;
                let (r, failure) = match frame.frame {
                    Some(server_frame::Frame::Ack(a)) => {
                        (a.r#ref.clone(), a.id.is_empty().then(|| format!("{a:?}")))
                    }
                    Some(server_frame::Frame::Error(e)) => (e.r#ref.clone(), Some(format!("{e:?}"))),
                    _ => return Ok(None),
                };
                Ok(r.parse().ok().map(|r| (r, failure)))
            }
        }
    }

    async fn close(self) {
        match self {
            Pipe::Ws(mut ws) => {
                let _ = ws.close(None).await;
            }
            Pipe::Grpc { .. } => {} // dropping the sender ends the request stream
        }
    }
}

/// WebSocket or gRPC `Connect` publisher: up to `inflight` publishes
/// awaiting their ack on one connection, reconnecting when it breaks.
async fn tp_pipelined(tp: Arc<Tp>, p: usize, via: Via) -> TpStats {
    let m = tp.topics.len();
    let mut seqs = vec![0u64; m];
    let mut st = TpStats::new(m);
    let mut k = p;
    let mut next_ref: u64 = 0;
    let mut done = false;
    while !done {
        let mut pipe = match tokio::time::timeout(Duration::from_secs(10), Pipe::open(&tp, via)).await {
            Ok(Ok(pipe)) => pipe,
            other => {
                st.errors += 1;
                tp.log_error(&format!("connect: {:?}", other.map(|r| r.map(|_| ()))));
                if tokio::time::Instant::now() >= tp.deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // ref -> (send time, topic index)
        let mut pending: std::collections::HashMap<u64, (u64, usize)> = std::collections::HashMap::new();
        let broken: Option<String> = 'conn: loop {
            let mut sent = false;
            while !done && pending.len() < tp.inflight.max(1) {
                if !tp.claim() {
                    done = true;
                    break;
                }
                let ti = k % m;
                k += 1;
                let t0 = tp.sh.now_ns();
                let body = make_payload(seqs[ti], t0, p, tp.payload);
                seqs[ti] += 1;
                let r = next_ref;
                next_ref += 1;
                pending.insert(r, (t0, ti));
                if let Err(e) = pipe.feed(r, &tp.topics[ti], body).await {
                    break 'conn Some(e);
                }
                sent = true;
            }
            if sent {
                if let Err(e) = pipe.flush().await {
                    break 'conn Some(e);
                }
            }
            if pending.is_empty() {
                if done {
                    break None;
                }
                continue;
            }
            let (r, failure) = match tokio::time::timeout(Duration::from_secs(10), pipe.answer()).await {
                Ok(Ok(Some(answer))) => answer,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => break Some(e),
                Err(_) => break Some("no ack within 10 s".into()),
            };
            let Some((t0, ti)) = pending.remove(&r) else {
                continue;
            };
            match failure {
                None => st.accept(ti, t0, tp.sh.now_ns()),
                Some(frame) => {
                    st.errors += 1;
                    tp.log_error(&frame);
                }
            }
        };
        if let Some(e) = broken {
            // Unacknowledged publishes count as errors (they may or may not have been stored).
            st.errors += pending.len() as u64;
            tp.log_error(&format!("{e} ({} unacknowledged)", pending.len()));
            done = done || tokio::time::Instant::now() >= tp.deadline;
        } else {
            pipe.close().await;
        }
    }
    st
}

fn per_msg_us(cpu_s: Option<f64>, msgs: u64) -> Option<f64> {
    cpu_s.filter(|_| msgs > 0).map(|c| c * 1e6 / msgs as f64)
}

async fn throughput(args: Args, addr: String, sub_addr: String, topic: String) -> i32 {
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

// ---------------------------------------------------------------- replay mode

/// Publishes `--replay N` messages to a fresh topic, then times one SSE client
/// that resumes (`lastEventId`) from a cursor taken before the first publish.
async fn replay(args: Args, addr: String, sub_addr: String, topic: String) -> i32 {
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
