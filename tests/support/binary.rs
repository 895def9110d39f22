//! The real `rtgate` binary as a child process: a free port, captured
//! stderr, a bounded wait for `/healthz`, killed on drop. For tests that
//! need a process of their own (signals, process-global metrics, logs).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::disallowed_types)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::WAIT;

/// A running `rtgate`.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub stderr: Arc<Mutex<String>>,
    pub reader: Option<std::thread::JoinHandle<()>>,
    pub http: reqwest::Client,
}

impl Gateway {
    /// Starts `rtgate --listen 127.0.0.1:PORT ARGS` on a free port with
    /// `env` (RUST_LOG is `info` unless `env` sets it) and waits (bounded)
    /// for `/healthz`; retries on another port when the chosen one was taken
    /// meanwhile.
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            match Gateway::spawn_on(port, args, env).await {
                Ok(g) => return g,
                Err(e) => last = e,
            }
        }
        panic!("could not start rtgate on a free port: {last}");
    }

    /// Starts again on the same `port` (bounded retries while it frees up).
    pub async fn restart_on(port: u16, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let deadline = Instant::now() + WAIT;
        loop {
            match Gateway::spawn_on(port, args, env).await {
                Ok(g) => return g,
                Err(e) => assert!(Instant::now() < deadline, "rtgate did not restart on port {port}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // retrying the bind, bounded
        }
    }

    /// Starts on `port` and waits (bounded) for `/healthz`; `Err` when the
    /// process exits first (most likely the port is taken).
    pub async fn spawn_on(port: u16, args: &[&str], env: &[(&str, &str)]) -> Result<Gateway, String> {
        // Loopback only: never through a proxy.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtgate"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env_remove("RTGATE_CONFIG")
            .env_remove("RTGATE_LISTEN")
            .env_remove("RTGATE_ADMIN__LISTEN")
            .env_remove("RTGATE_LOG__FORMAT")
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn rtgate");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut g = Gateway { child, port, stderr, reader: Some(reader), http: http.clone() };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = g.child.try_wait().expect("try_wait") {
                // The process is gone, so its stderr reaches end of file:
                // read it to the end before reporting (the reader thread may
                // not have seen the last bytes yet).
                if let Some(reader) = g.reader.take() {
                    let _ = reader.join();
                }
                return Err(format!("rtgate exited early ({status}): {}", g.logs()));
            }
            let ok = http
                .get(g.url("/healthz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
            if ok {
                return Ok(g);
            }
            assert!(Instant::now() < deadline, "rtgate did not become healthy: {}", g.logs());
            tokio::time::sleep(Duration::from_millis(20)).await; // polling /healthz, bounded
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status =
            Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
    }

    /// Waits (bounded by `within`) for the process to exit.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "rtgate still running after {within:?}: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(10)).await; // polling the child, bounded
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
