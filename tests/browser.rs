//! A real browser against the real binary (contract §5): a Chromium page's
//! `EventSource` receives messages, the gateway is restarted (Redis engine),
//! the browser reconnects by itself with `Last-Event-ID`, and the page ends
//! with every message exactly once, in order.
//!
//! Chromium is driven over the WebDriver protocol (plain HTTP with reqwest)
//! through a `chromedriver` child on a free port; the page comes from a tiny
//! HTTP server inside the test. Missing `chromium` / `chromedriver` fails
//! the test with an install hint (never skips).
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::redis::RedisServer;
use support::WAIT;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL_HINT: &str =
    "install them (Debian: apt-get install -y chromium chromium-driver); scripts/test does this";

/// The whole test, start to finish.
const BUDGET: Duration = Duration::from_secs(55);
/// The `retry:` hint the restarted gateway's page reconnects with.
const SSE_RETRY: &str = "300ms";
const TOPIC: &str = "browser.sse";
const BATCH: usize = 20;

fn require_browser() {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(Path::new(bin).is_file(), "`{bin}` not found: {INSTALL_HINT}");
    }
    let ok = Command::new(CHROMEDRIVER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`{CHROMEDRIVER} --version` failed: {INSTALL_HINT}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An HTTP client that never goes through a proxy (loopback only).
fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Collects a child's stdout and stderr (for failure messages).
fn capture(child: &mut Child) -> Arc<Mutex<String>> {
    let logs = Arc::new(Mutex::new(String::new()));
    let out: Option<Box<dyn Read + Send>> = child.stdout.take().map(|p| Box::new(p) as _);
    let err: Option<Box<dyn Read + Send>> = child.stderr.take().map(|p| Box::new(p) as _);
    for mut pipe in [out, err].into_iter().flatten() {
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    logs
}

/// The real `rtgate` binary; killed on drop if still running.
use support::binary::Gateway;

/// The gateway's settings here: the Redis engine on `redis_url`, a short SSE
/// retry hint (also the hint a stream gets when the gateway stops: the
/// reconnect window), a 5 s grace.
fn gateway_env(redis_url: &str) -> [(&str, &str); 6] {
    [
        ("RTGATE_ENGINE__KIND", "redis"),
        ("RTGATE_REDIS__URL", redis_url),
        ("RTGATE_SSE__RETRY", SSE_RETRY),
        ("RTGATE_RECONNECT__MIN", SSE_RETRY),
        ("RTGATE_RECONNECT__WINDOW", SSE_RETRY),
        ("RTGATE_SHUTDOWN__GRACE", "5s"),
    ]
}

impl Gateway {
    async fn start(redis_url: &str) -> Gateway {
        Gateway::spawn(&[], &gateway_env(redis_url)).await
    }

    /// Starts again on the same `port` (bounded retries while it frees up).
    async fn restart(port: u16, redis_url: &str) -> Gateway {
        Gateway::restart_on(port, &[], &gateway_env(redis_url)).await
    }

    /// `POST /v1/publish/{topic}`; returns the message id.
    async fn publish(&self, client: &reqwest::Client, topic: &str, data: &Value) -> String {
        let res = client
            .post(self.url(&format!("/v1/publish/{topic}")))
            .body(data.to_string())
            .timeout(WAIT)
            .send()
            .await
            .expect("publish");
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "publish answered {status} {body}");
        body["id"].as_str().expect("id").to_owned()
    }
}

/// A tiny HTTP server answering every GET with one HTML page; stopped on drop.
struct PageServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    async fn start(html: String) -> PageServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let html = Arc::new(html);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let html = Arc::clone(&html);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut req = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
                        match tokio::time::timeout(WAIT, conn.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                        html.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(html.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        PageServer { port, task }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The page: one `EventSource` recording what it sees into `window.rt`.
fn page(sse_url: &str) -> String {
    let url = Value::from(sse_url).to_string();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>rtgate SSE</title></head>
<body><script>
"use strict";
window.rt = {{ ids: [], data: [], opens: 0, errors: 0, closed: false, gaps: [], bad: [], lastEventId: "" }};
const es = new EventSource({url});
es.onopen = () => {{ rt.opens += 1; }};
es.onerror = () => {{
  rt.errors += 1;
  if (es.readyState === EventSource.CLOSED) {{ rt.closed = true; }}
}};
es.onmessage = (e) => {{
  try {{
    const m = JSON.parse(e.data);
    rt.ids.push(m.id);
    rt.data.push(m.data);
  }} catch (err) {{ rt.bad.push(String(e.data)); }}
  rt.lastEventId = e.lastEventId;
}};
es.addEventListener("gap", (e) => {{ rt.gaps.push(e.data); }});
window.es = es;
</script></body></html>
"#
    )
}

static PROFILE: AtomicU32 = AtomicU32::new(0);

/// `chromedriver` on a free port with one headless Chromium session.
/// Drop deletes the session (closing Chromium), then kills what is left of
/// the driver's process group.
struct Browser {
    driver: Child,
    port: u16,
    session: Option<String>,
    profile: PathBuf,
    logs: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Browser {
    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    async fn start() -> Browser {
        require_browser();
        let profile = std::env::temp_dir().join(format!(
            "rtgate-chromium-{}-{}",
            std::process::id(),
            PROFILE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let client = http();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Its own process group, so drop can reach Chromium too.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER}: {e}; {INSTALL_HINT}"));
            let logs = capture(&mut driver);
            let mut b =
                Browser { driver, port, session: None, profile: profile.clone(), logs, http: client.clone() };
            if b.wait_ready().await {
                b.new_session().await;
                return b;
            }
            last = b.logs();
            // Dropping `b` kills this driver; the profile is recreated below.
            drop(b);
            std::fs::create_dir_all(&profile).unwrap();
        }
        panic!("chromedriver did not start: {last}");
    }

    /// Waits (bounded) for `GET /status` to say ready; false when the driver
    /// exited (port taken).
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.driver.try_wait().unwrap().is_some() {
                return false;
            }
            let ready = match self
                .http
                .get(format!("http://127.0.0.1:{}/status", self.port))
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return true;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await; // polling /status, bounded
        }
    }

    /// One WebDriver command; returns its `value`, panics on an error.
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut req = self.http.request(method.clone(), &url).timeout(Duration::from_secs(20));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}; logs: {}", self.logs()));
        let status = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "WebDriver {method} {path} answered {status} {v}; logs: {}", self.logs());
        v["value"].clone()
    }

    async fn new_session(&mut self) {
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-proxy-server".to_owned(),
            format!("--user-data-dir={}", self.profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"script": 5000, "pageLoad": 10000},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let v = self.cmd(reqwest::Method::POST, "/session", Some(caps)).await;
        let id = v["sessionId"].as_str().unwrap_or_else(|| panic!("no sessionId in {v}")).to_owned();
        self.session = Some(id);
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().expect("session"))
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, &self.session_path("/url"), Some(json!({ "url": url }))).await;
    }

    /// Runs `script` in the page (`execute/sync`) and returns its result.
    async fn eval(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// The page's record (`window.rt`).
    async fn record(&self) -> Value {
        self.eval("return window.rt;").await
    }

    /// Polls (bounded) until `done(record)`; returns the record.
    async fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let rec = self.record().await;
            if done(&rec) {
                return rec;
            }
            assert!(Instant::now() < deadline, "page never got {what}; record: {rec}");
            tokio::time::sleep(Duration::from_millis(100)).await; // polling the page, bounded
        }
    }

    /// `DELETE /session/{id}`: Chromium exits.
    async fn quit(&mut self) {
        if let Some(id) = self.session.take() {
            self.cmd(reqwest::Method::DELETE, &format!("/session/{id}"), None).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Blocking, so it also runs while unwinding from a panic.
        if let Some(id) = self.session.take() {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = write!(
                    s,
                    "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n",
                    self.port
                );
                // Until the whole answer is in (the driver may keep the
                // connection open), bounded by the read timeout.
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !answer_complete(&got) {
                    match s.read(&mut buf) {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
            }
        }
        // The driver leads its own process group (Chromium included).
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.driver.id()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Whether `raw` holds a whole HTTP answer with a `Content-Length` body.
fn answer_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|len| raw.len() >= end + 4 + len)
}

/// Publishes `BATCH` messages through `via`; returns their ids.
async fn publish_batch(via: &Gateway, client: &reqwest::Client, phase: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(BATCH);
    for i in 0..BATCH {
        let data = json!({"phase": phase, "n": i});
        out.push(via.publish(client, TOPIC, &data).await);
    }
    out
}

fn ids(rec: &Value) -> Vec<String> {
    rec["ids"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or("<not a string>").to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_survives_gateway_restart_with_every_message_once() {
    require_browser();
    tokio::time::timeout(BUDGET, scenario())
        .await
        .unwrap_or_else(|_| panic!("browser test took longer than {BUDGET:?}"));
}

async fn scenario() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    // A serves the page's EventSource; B takes the publishes (also while A
    // is down). Both share the Redis.
    let mut a = Gateway::start(&redis_url).await;
    let port_a = a.port;
    let b = Gateway::start(&redis_url).await;
    let client = http();

    let sse_url = format!("http://127.0.0.1:{port_a}/v1/sse?topic={TOPIC}");
    let page_server = PageServer::start(page(&sse_url)).await;
    let mut browser = Browser::start().await;
    browser.goto(&format!("http://127.0.0.1:{}/", page_server.port)).await;
    browser.wait_for("its EventSource open", |r| r["opens"].as_u64() >= Some(1)).await;

    let mut published = Vec::new();

    // 1. Live delivery.
    published.extend(publish_batch(&b, &client, "before").await);
    browser.wait_for("the first 20 messages", |r| ids(r).len() >= BATCH).await;

    // 2. A stops gracefully (its SSE stream ends), then 20 more while it is down.
    a.sigterm();
    let status = a.exited(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit {status}; logs: {}", a.logs());
    published.extend(publish_batch(&b, &client, "down").await);
    // The stream's end is one `error`; a refused reconnect attempt is another.
    let rec = browser.wait_for("a refused reconnect attempt", |r| r["errors"].as_u64() >= Some(2)).await;
    assert_eq!(rec["closed"], false, "the EventSource gave up: {rec}");
    assert_eq!(ids(&rec).len(), BATCH, "messages arrived with the gateway down: {rec}");

    // 3. A again, same port: the browser reconnects on its own with
    // Last-Event-ID and gets the missed 20.
    let a2 = Gateway::restart(port_a, &redis_url).await;
    browser.wait_for("the 20 published while the gateway was down", |r| ids(r).len() >= 2 * BATCH).await;

    // 4. Live again after the resume.
    published.extend(publish_batch(&b, &client, "after").await);
    browser.wait_for("all 60 messages", |r| ids(r).len() >= 3 * BATCH).await;
    // Anything late (a duplicate) would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rec = browser.record().await;

    let got = ids(&rec);
    assert_eq!(published.len(), 3 * BATCH);
    assert_eq!(
        got,
        published,
        "the page must hold every published id once, in order; record: {rec}; gateway logs: {}",
        a2.logs()
    );
    assert!(rec["opens"].as_u64() >= Some(2), "the EventSource did not reconnect by itself: {rec}");
    assert_eq!(rec["closed"], false, "the EventSource gave up: {rec}");
    assert_eq!(rec["gaps"], json!([]), "unexpected gap events: {rec}");
    assert_eq!(rec["bad"], json!([]), "unparsable message data: {rec}");
    assert_eq!(rec["lastEventId"].as_str().map(str::is_empty), Some(false), "events carry an id: {rec}");

    browser.quit().await;
    drop(browser);
    drop(page_server);
    drop((a, a2, b, redis));
}

/// Issue 11 item 1, proven with Chromium's own `EventSource`: message data
/// with raw line breaks between its JSON tokens (any pretty-printed JSON:
/// LF, CRLF, a lone CR, an empty line) arrives whole and parses, followed by
/// the next message. Written as one `data:` line, the browser cut the event
/// at the first line break: `JSON.parse` failed and the message was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_gets_pretty_printed_json_whole() {
    require_browser();
    tokio::time::timeout(BUDGET, async {
        let gw = Gateway::spawn(&[], &[("RTGATE_SHUTDOWN__GRACE", "5s")]).await;
        let client = http();
        let topic = "browser.lines";
        let sse_url = format!("http://127.0.0.1:{}/v1/sse?topic={topic}", gw.port);
        let page_server = PageServer::start(page(&sse_url)).await;
        let mut browser = Browser::start().await;
        browser.goto(&format!("http://127.0.0.1:{}/", page_server.port)).await;
        browser.wait_for("its EventSource open", |r| r["opens"].as_u64() >= Some(1)).await;

        let bodies: [&str; 3] = ["{\"a\":\n  1,\r\n  \"b\": [2,\n\n3],\r\"c\": \"x\"\n}", "[\n]", "7"];
        let mut published = Vec::new();
        for body in bodies {
            let res = client.post(gw.url(&format!("/v1/publish/{topic}"))).body(body).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let v: Value = res.json().await.unwrap();
            published.push(v["id"].as_str().unwrap().to_owned());
        }
        let rec = browser
            .wait_for("all three messages", |r| ids(r).len() + r["bad"].as_array().map_or(0, Vec::len) >= 3)
            .await;
        assert_eq!(rec["bad"], json!([]), "the browser could not parse an event: {rec}");
        assert_eq!(ids(&rec), published, "{rec}");
        assert_eq!(rec["data"], json!([{"a": 1, "b": [2, 3], "c": "x"}, [], 7]), "{rec}");
        browser.quit().await;
    })
    .await
    .unwrap_or_else(|_| panic!("browser test took longer than {BUDGET:?}"));
}
