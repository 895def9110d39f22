//! Headless Chromium driven over WebDriver (plain HTTP with reqwest)
//! through a `chromedriver` child on a free port: windows, script
//! evaluation, bounded waits on DOM conditions, screenshots. Missing
//! `chromium` / `chromedriver` fails with an install hint (never skips).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::disallowed_types)]

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::WAIT;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const INSTALL_HINT: &str =
    "install them (Debian: apt-get install -y chromium chromium-driver); scripts/test does this";

/// Panics with the install hint unless both binaries are there and run.
pub fn require_browser() {
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

static PROFILE: AtomicU32 = AtomicU32::new(0);

/// One Chromium session. Drop deletes the session, then kills the driver's
/// process group (Chromium included) and removes the profile.
pub struct Browser {
    driver: Child,
    port: u16,
    session: Option<String>,
    profile: PathBuf,
    logs: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Browser {
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Starts the driver (retrying on another port if it cannot bind) and
    /// opens a session with a `width`×`height` window.
    pub async fn start(width: u32, height: u32) -> Browser {
        require_browser();
        let profile = std::env::temp_dir().join(format!(
            "rtgate-chromium-b-{}-{}",
            std::process::id(),
            PROFILE.fetch_add(1, Ordering::Relaxed)
        ));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut last = String::new();
        for _ in 0..5 {
            let _ = std::fs::remove_dir_all(&profile);
            std::fs::create_dir_all(&profile).unwrap();
            let port = free_port();
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER}: {e}; {INSTALL_HINT}"));
            let logs = capture(&mut driver);
            let mut b =
                Browser { driver, port, session: None, profile: profile.clone(), logs, http: http.clone() };
            if b.wait_ready().await {
                b.new_session(width, height).await;
                return b;
            }
            last = b.logs();
        }
        panic!("chromedriver did not start: {last}");
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.driver.try_wait().unwrap().is_some() {
                return false;
            }
            let url = format!("http://127.0.0.1:{}/status", self.port);
            let ready = match self.http.get(url).timeout(Duration::from_secs(1)).send().await {
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

    /// One WebDriver command; its `value`; panics on an error answer.
    pub async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
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

    async fn new_session(&mut self, width: u32, height: u32) {
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-background-timer-throttling".to_owned(),
            "--disable-renderer-backgrounding".to_owned(),
            "--disable-backgrounding-occluded-windows".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-proxy-server".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", self.profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"script": 5000, "pageLoad": 10000},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let v = self.cmd(reqwest::Method::POST, "/session", Some(caps)).await;
        self.session =
            Some(v["sessionId"].as_str().unwrap_or_else(|| panic!("no sessionId in {v}")).to_owned());
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().expect("session"))
    }

    /// The current window's handle.
    pub async fn window(&self) -> String {
        self.cmd(reqwest::Method::GET, &self.path("/window"), None).await.as_str().unwrap().to_owned()
    }

    /// Opens a new tab and switches to it; returns its handle.
    pub async fn new_tab(&self) -> String {
        let v =
            self.cmd(reqwest::Method::POST, &self.path("/window/new"), Some(json!({"type": "tab"}))).await;
        let handle = v["handle"].as_str().unwrap_or_else(|| panic!("no handle in {v}")).to_owned();
        self.switch(&handle).await;
        handle
    }

    /// Makes `handle` the window commands go to.
    pub async fn switch(&self, handle: &str) {
        self.cmd(reqwest::Method::POST, &self.path("/window"), Some(json!({ "handle": handle }))).await;
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, &self.path("/url"), Some(json!({ "url": url }))).await;
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub async fn eval(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            &self.path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Polls `script` (bounded by `within`) until `done(value)`; the value.
    pub async fn wait_for(
        &self,
        what: &str,
        script: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(script).await;
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "page never showed {what}; last: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await; // polling the DOM, bounded
        }
    }

    /// Saves a PNG of the current window to `file` (directories created).
    pub async fn screenshot(&self, file: &Path) {
        let v = self.cmd(reqwest::Method::GET, &self.path("/screenshot"), None).await;
        let png =
            base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("base64 screenshot")).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(file, png).unwrap();
    }

    /// `DELETE /session/{id}`: Chromium exits.
    pub async fn quit(&mut self) {
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
                let _ = write!(
                    s,
                    "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.port
                );
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
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
