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
    /// Starts `rtgate --listen 127.0.0.1:PORT ARGS` with `env` (RUST_LOG is
    /// `info` unless `env` sets it) and waits (bounded) for `/healthz`;
    /// retries on another port when the chosen one was taken meanwhile.
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let http = reqwest::Client::new();
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
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
                    eprintln!("rtgate exited early ({status}): {}", g.logs());
                    break;
                }
                let ok = http
                    .get(g.url("/healthz"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200);
                if ok {
                    return g;
                }
                assert!(Instant::now() < deadline, "rtgate did not become healthy: {}", g.logs());
                tokio::time::sleep(Duration::from_millis(20)).await; // polling /healthz, bounded
            }
        }
        panic!("could not start rtgate on a free port");
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
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
