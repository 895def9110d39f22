//! Structured logs (contract §10) of the real binary: `--log-format json`
//! lines, one open and one close line per WebSocket / SSE connection with
//! transport, peer, duration, message counts and reason (`client`,
//! `shutdown`), `--log-format text`, and `RUST_LOG` filtering.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::sse::RawSse;
use support::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;

// ---------------------------------------------------------------- process

/// The real binary on a free port; killed on drop if still running.
use support::binary::Gateway as Proc;

impl Proc {
    /// Starts the binary with `ARGS`, `RUST_LOG=rust_log` and a 5 s grace.
    async fn start(args: &[&str], rust_log: &str) -> Proc {
        Proc::spawn(args, &[("RUST_LOG", rust_log), ("RTGATE_SHUTDOWN__GRACE", "5s")]).await
    }

    async fn ws(&self, path_and_query: &str) -> (WsClient, SocketAddr) {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(self.addr()))
            .await
            .expect("connect timed out")
            .expect("connect");
        let local = tcp.local_addr().expect("local addr");
        let url = format!("ws://{}{path_and_query}", self.addr());
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)))
                .await
                .expect("handshake timed out")
                .expect("handshake");
        (WsClient { ws }, local)
    }

    async fn publish(&self, topic: &str, body: &str) -> String {
        post_publish(&self.http, &self.url(&format!("/v1/publish/{topic}")), body.to_owned()).await
    }

    /// Waits (bounded) until the close counter reaches `n`.
    async fn wait_closes(&self, transport: &str, reason: &str, n: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.scrape().await.closes(transport, reason);
            if v >= n {
                assert_eq!(v, n, "closes{{transport={transport},reason={reason}}}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "closes{{{transport},{reason}}} stayed at {v}: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // polling /metrics, bounded
        }
    }

    /// Waits (bounded) for a JSON log line satisfying `pred`.
    async fn wait_line(&self, what: &str, pred: impl Fn(&Map<String, Value>) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| v.as_object().is_some_and(&pred));
            if found {
                return;
            }
            assert!(Instant::now() < deadline, "no log line {what}: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await; // polling captured stderr, bounded
        }
    }

    /// SIGTERM, then [`Proc::wait_exit`].
    async fn terminate(&mut self) -> String {
        self.sigterm();
        self.wait_exit().await
    }

    /// Waits (bounded) for exit 0; returns the complete stderr.
    async fn wait_exit(&mut self) -> String {
        let status = self.exited(Duration::from_secs(15)).await;
        assert_eq!(status.code(), Some(0), "exit status {status}; logs: {}", self.logs());
        // The pipe's only writer is gone: the reader thread is at EOF.
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stderr reader");
        }
        self.logs()
    }
}

// ---------------------------------------------------------------- log lines

/// Parses every stderr line as one JSON object with the json formatter's
/// shape (event fields flattened next to `timestamp`, `level`, `target`).
fn json_lines(logs: &str) -> Vec<Map<String, Value>> {
    let mut out = vec![];
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        let Value::Object(o) = v else { panic!("not a JSON object: {line:?}") };
        let ts = o.get("timestamp").and_then(Value::as_str).unwrap_or_else(|| panic!("no timestamp: {line}"));
        // RFC 3339, UTC: 2026-01-02T03:04:05.678901Z
        assert!(
            ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "timestamp {ts:?}"
        );
        let level = o.get("level").and_then(Value::as_str).unwrap_or_else(|| panic!("no level: {line}"));
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level), "level {level:?}");
        assert!(
            o.get("message").and_then(Value::as_str).is_some_and(|m| !m.is_empty()),
            "no message: {line}"
        );
        assert!(o.get("target").and_then(Value::as_str).is_some(), "no target: {line}");
        assert!(!o.contains_key("fields"), "event fields are not flattened: {line}");
        out.push(o);
    }
    out
}

fn s<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

/// The "connection opened" / "connection closed" lines of one peer.
fn conn_lines<'a>(
    lines: &'a [Map<String, Value>],
    message: &str,
    peer: SocketAddr,
) -> Vec<&'a Map<String, Value>> {
    let peer = peer.to_string();
    lines.iter().filter(|o| s(o, "message") == Some(message) && s(o, "peer") == Some(peer.as_str())).collect()
}

/// Checks the open and close line of `peer` and returns the close line.
fn one_open_one_close<'a>(
    lines: &'a [Map<String, Value>],
    transport: &str,
    peer: SocketAddr,
    logs: &str,
) -> &'a Map<String, Value> {
    let opened = conn_lines(lines, "connection opened", peer);
    let closed = conn_lines(lines, "connection closed", peer);
    assert_eq!(opened.len(), 1, "opened lines for {peer}: {logs}");
    assert_eq!(closed.len(), 1, "closed lines for {peer}: {logs}");
    let (o, c) = (opened[0], closed[0]);
    for l in [o, c] {
        assert_eq!(s(l, "level"), Some("INFO"), "{l:?}");
        assert_eq!(s(l, "transport"), Some(transport), "{l:?}");
    }
    assert!(s(o, "timestamp") <= s(c, "timestamp"), "close logged before open: {o:?} {c:?}");
    let pos = |l: &Map<String, Value>| lines.iter().position(|x| std::ptr::eq(x, l)).unwrap();
    assert!(pos(o) < pos(c), "close line before open line");
    assert!(c.get("duration_ms").is_some_and(Value::is_u64), "duration_ms not a number: {c:?}");
    assert!(s(c, "reason").is_some(), "no reason: {c:?}");
    c
}

fn num(o: &Map<String, Value>, k: &str) -> u64 {
    o.get(k).and_then(Value::as_u64).unwrap_or_else(|| panic!("{k} is not a number: {o:?}"))
}

/// Strips ANSI SGR sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_have_one_open_and_one_close_per_ws_connection() {
    const HTTP_PUBLISHES: usize = 3;
    let mut p = Proc::start(&["--log-format", "json"], "info").await;
    let t0 = Instant::now();
    let (mut c, local) = p.ws("/v1/ws?topic=lw").await;
    // In: a ping and two publish ops (3 frames). Out: the client's own two
    // messages and three HTTP publishes (5 messages), besides acks and a pong.
    c.send(json!({"op": "ping", "ref": "p"})).await;
    assert_eq!(c.next().await, json!({"op": "pong", "ref": "p"}));
    for i in 0..2 {
        c.send(json!({"op": "publish", "topic": "lw", "data": i, "ref": i})).await;
    }
    let (mut acks, mut messages) = (0, 0);
    while acks < 2 || messages < 2 {
        let v = c.next().await;
        match v["op"].as_str() {
            Some("ack") => acks += 1,
            Some("message") => messages += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    for i in 0..HTTP_PUBLISHES {
        p.publish("lw", &i.to_string()).await;
    }
    c.messages(HTTP_PUBLISHES).await;
    c.close_and_wait().await;
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    p.wait_line("closed for the ws client", |o| {
        s(o, "message") == Some("connection closed") && s(o, "peer") == Some(local.to_string().as_str())
    })
    .await;

    let logs = p.terminate().await;
    let lines = json_lines(&logs);
    let close = one_open_one_close(&lines, "ws", local, &logs);
    assert_eq!(num(close, "msgs_in"), 3, "{close:?}");
    assert_eq!(num(close, "msgs_out"), 2 + HTTP_PUBLISHES as u64, "{close:?}");
    assert_eq!(s(close, "reason"), Some("client"), "{close:?}");
    assert!(
        num(close, "duration_ms") <= elapsed_ms,
        "duration_ms {} > {elapsed_ms}",
        num(close, "duration_ms")
    );
    // Exactly one connection happened: no other open/close lines at all.
    let conn = |m: &str| lines.iter().filter(|o| s(o, "message") == Some(m)).count();
    assert_eq!((conn("connection opened"), conn("connection closed")), (1, 1), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_have_one_open_and_one_close_per_sse_connection() {
    const K: usize = 4;
    let mut p = Proc::start(&["--log-format", "json"], "info").await;
    let t0 = Instant::now();
    let mut sse = RawSse::open(&p.addr(), "/v1/sse?topic=ls", None).await;
    let local = sse.local;
    let mut ids = vec![];
    for i in 0..K {
        ids.push(p.publish("ls", &i.to_string()).await);
    }
    let got = sse.events(K).await;
    assert_eq!(got.iter().map(|(_, d)| d["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>(), ids);
    drop(sse); // the client goes away
    p.wait_line("closed for the sse client", |o| {
        s(o, "message") == Some("connection closed") && s(o, "peer") == Some(local.to_string().as_str())
    })
    .await;
    let elapsed_ms = t0.elapsed().as_millis() as u64;

    let logs = p.terminate().await;
    let lines = json_lines(&logs);
    let close = one_open_one_close(&lines, "sse", local, &logs);
    assert_eq!(num(close, "msgs_out"), K as u64, "{close:?}");
    assert_eq!(s(close, "reason"), Some("client"), "{close:?}");
    assert!(
        num(close, "duration_ms") <= elapsed_ms,
        "duration_ms {} > {elapsed_ms}",
        num(close, "duration_ms")
    );
    let conn = |m: &str| lines.iter().filter(|o| s(o, "message") == Some(m)).count();
    assert_eq!((conn("connection opened"), conn("connection closed")), (1, 1), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_logs_shutdown_closes_for_every_connection() {
    let mut p = Proc::start(&["--log-format", "json"], "info").await;
    let (mut ws, ws_local) = p.ws("/v1/ws?topic=lt").await;
    let mut sse = RawSse::open(&p.addr(), "/v1/sse?topic=lt", None).await;
    let sse_local = sse.local;
    // The SSE stream is joined before its response head; the WS one before 101.
    for i in 0..2 {
        p.publish("lt", &i.to_string()).await;
    }
    ws.messages(2).await;
    sse.events(2).await;

    p.sigterm();
    let end = ws.ended().await;
    assert_eq!(end.paced().map(|(c, w, _)| (c, w)), Some((1001, "shutdown")), "{end:?}; logs: {}", p.logs());
    assert!(sse.until_end().await, "the SSE stream did not end cleanly; logs: {}", p.logs());
    let logs = p.wait_exit().await;
    let lines = json_lines(&logs);

    let c = one_open_one_close(&lines, "ws", ws_local, &logs);
    assert_eq!(s(c, "reason"), Some("shutdown"), "{c:?}");
    assert_eq!((num(c, "msgs_in"), num(c, "msgs_out")), (0, 2), "{c:?}");
    let c = one_open_one_close(&lines, "sse", sse_local, &logs);
    assert_eq!(s(c, "reason"), Some("shutdown"), "{c:?}");
    assert_eq!(num(c, "msgs_out"), 2, "{c:?}");
    let conn = |m: &str| lines.iter().filter(|o| s(o, "message") == Some(m)).count();
    assert_eq!((conn("connection opened"), conn("connection closed")), (2, 2), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_format_is_human_readable_lines() {
    let mut p = Proc::start(&["--log-format", "text"], "info").await;
    let (c, local) = p.ws("/v1/ws?topic=lx").await;
    c.close_and_wait().await;
    p.wait_closes("ws", "client", 1.0).await;
    let logs = p.terminate().await;
    assert!(!logs.trim().is_empty(), "no log output");
    for line in logs.lines() {
        assert!(serde_json::from_str::<Value>(line).is_err(), "a JSON line in text format: {line}");
    }
    let plain: Vec<String> = logs.lines().map(strip_ansi).collect();
    let find = |m: &str| {
        let v: Vec<&String> =
            plain.iter().filter(|l| l.contains(m) && l.contains(&local.to_string())).collect();
        assert_eq!(v.len(), 1, "{m}: {plain:#?}");
        v[0].clone()
    };
    let opened = find("connection opened");
    let closed = find("connection closed");
    for l in [&opened, &closed] {
        assert!(l.contains(" INFO "), "{l}");
        assert!(l.contains(r#"transport="ws""#), "{l}");
        assert!(l.contains(&format!("peer={local}")), "{l}");
        // Starts with an RFC 3339 timestamp.
        let ts = l.split_whitespace().next().unwrap();
        assert!(ts.len() >= 20 && ts.as_bytes()[10] == b'T', "{l}");
    }
    assert!(closed.contains(r#"reason="client""#), "{closed}");
    assert!(closed.contains("msgs_in=0") && closed.contains("msgs_out=0"), "{closed}");
    assert!(closed.contains("duration_ms="), "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_warn_suppresses_info_lines() {
    let mut p = Proc::start(&["--log-format", "json"], "warn").await;
    let (c, _) = p.ws("/v1/ws?topic=lq").await;
    c.close_and_wait().await;
    let mut sse = RawSse::open(&p.addr(), "/v1/sse?topic=lq", None).await;
    p.publish("lq", "1").await;
    sse.events(1).await;
    drop(sse);
    // Both connections were opened and closed (seen in the metrics, not the logs).
    p.wait_closes("ws", "client", 1.0).await;
    p.wait_closes("sse", "client", 1.0).await;
    let logs = p.terminate().await;
    for o in json_lines(&logs) {
        assert!(matches!(s(&o, "level"), Some("WARN" | "ERROR")), "a line below warn: {o:?}");
    }
    assert!(!logs.contains("connection opened") && !logs.contains("connection closed"), "{logs}");
    assert!(!logs.contains("rtgate listening"), "{logs}");
}

/// Issue 11 item 16: platforms put variables of their own under the prefix
/// (a Kubernetes Service named `rtgate` injects `RTGATE_PORT=tcp://…` and
/// `RTGATE_SERVICE_HOST`); the gateway starts, warns once naming them and
/// never shows their values. A variable naming a real key with a bad value
/// still stops startup, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_prefixed_variables_warn_and_known_ones_still_validate() {
    let env = [
        ("RTGATE_PORT", "tcp://10.96.0.12:8080"),
        ("RTGATE_SERVICE_HOST", "10.96.0.12"),
        ("RTGATE_PORT_8080_TCP_ADDR", "10.96.0.12"),
        ("RTGATE_SHUTDOWN__GRACE", "5s"),
    ];
    let mut p = Proc::spawn(&["--log-format", "json"], &env).await;
    let status = p.http.get(p.url("/readyz")).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 200);
    let logs = p.terminate().await;
    let warnings: Vec<_> = json_lines(&logs)
        .into_iter()
        .filter(|o| s(o, "level") == Some("WARN") && s(o, "message").is_some_and(|m| m.contains("RTGATE_")))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert_eq!(
        s(&warnings[0], "variables"),
        Some("RTGATE_PORT RTGATE_PORT_8080_TCP_ADDR RTGATE_SERVICE_HOST")
    );
    assert!(!logs.contains("10.96.0.12"), "a value was logged: {logs}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bad = Proc::spawn_on(
        port,
        &[],
        &[("RTGATE_PORT", "tcp://10.96.0.12:8080"), ("RTGATE_HISTORY__MAX_LEN", "many")],
    )
    .await;
    let err = bad.err().expect("a bad value of a real key stops startup");
    assert!(err.to_lowercase().contains("history.max_len"), "{err}");
}
