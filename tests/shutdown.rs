//! Graceful shutdown (contract §4, §10): SIGTERM closes WebSocket clients
//! with 1001, stops accepting, and exits 0 within `shutdown.grace`.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::*;

use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

const GRACE: Duration = Duration::from_secs(5);

/// The real binary on a free port; killed on drop if still running.
struct Proc {
    child: std::process::Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Starts the binary and waits (bounded) for `/healthz` to answer 200;
    /// retries on another port when the chosen one was taken meanwhile.
    async fn start() -> Proc {
        let http = reqwest::Client::new();
        for _attempt in 0..5 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 0");
                l.local_addr().expect("addr").port()
            };
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rtgate"))
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .env("RTGATE_SHUTDOWN__GRACE", "5s")
                .env_remove("RTGATE_CONFIG")
                .env_remove("RTGATE_LISTEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rtgate");
            let stderr = Arc::new(Mutex::new(String::new()));
            let mut pipe = child.stderr.take().expect("stderr");
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            let mut p = Proc { child, port, stderr };
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = p.child.try_wait().expect("try_wait") {
                    // Most likely the port was taken between probe and bind: retry.
                    eprintln!("rtgate exited early ({status}): {}", p.logs());
                    break;
                }
                let ok = http
                    .get(format!("http://127.0.0.1:{port}/healthz"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200);
                if ok {
                    return p;
                }
                assert!(Instant::now() < deadline, "rtgate did not become healthy: {}", p.logs());
                tokio::time::sleep(Duration::from_millis(20)).await; // polling /healthz, bounded
            }
        }
        panic!("could not start rtgate on a free port");
    }

    fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
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

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let mut p = Proc::start().await;
    let base = format!("127.0.0.1:{}", p.port);
    let mut a = WsClient::connect(&format!("ws://{base}/v1/ws?topic=sd")).await;
    let mut b = WsClient::connect(&format!("ws://{base}/v1/ws")).await;
    let (_, ack) = b.subscribe("sd", None).await;
    assert_eq!(ack["recovered"], true);
    // Both are live before the signal.
    let res = reqwest::Client::new()
        .post(format!("http://{base}/v1/publish/sd"))
        .body("1")
        .timeout(WAIT)
        .send()
        .await
        .expect("publish");
    assert_eq!(res.status().as_u16(), 200);
    let id: serde_json::Value = res.json().await.expect("json");
    assert_eq!(a.next_op("message").await["id"], id["id"]);
    assert_eq!(b.next_op("message").await["id"], id["id"]);

    // A third client never reads, so the server waits on its close handshake
    // and the process is still draining when a and b have their 1001.
    let silent = WsClient::connect(&format!("ws://{base}/v1/ws?topic=sd")).await;

    let t0 = Instant::now();
    p.sigterm();
    let (ea, eb) = tokio::join!(a.ended(), b.ended());
    assert_eq!(ea, Ended::Closed(1001, "shutdown".into()), "client a; logs: {}", p.logs());
    assert_eq!(eb, Ended::Closed(1001, "shutdown".into()), "client b; logs: {}", p.logs());
    drop((a, b));

    // Shutdown has begun: a new connection is refused (TCP refused/reset, or
    // the handshake is rejected), whether or not the process has exited yet.
    let late =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{base}/v1/ws?topic=sd")))
            .await
            .expect("late connect timed out");
    assert!(late.is_err(), "a WebSocket connection was accepted during shutdown");

    let status = p.wait_exit(GRACE + Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}; logs: {}", p.logs());
    assert!(took < GRACE, "exited after {took:?}, grace is {GRACE:?}; logs: {}", p.logs());

    // Nothing accepts on the port any more.
    let refused =
        tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(&base)).await.expect("connect timed out");
    assert!(refused.is_err(), "connection accepted after shutdown");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_client_that_ignores_close_still_exits_in_grace() {
    // A client that never reads: the server cannot complete the close
    // handshake with it, and must still exit 0 within the grace period.
    let mut p = Proc::start().await;
    let base = format!("127.0.0.1:{}", p.port);
    let silent = WsClient::connect(&format!("ws://{base}/v1/ws?topic=idle")).await;
    let t0 = Instant::now();
    p.sigterm();
    let status = p.wait_exit(GRACE + Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}; logs: {}", p.logs());
    assert!(took < GRACE, "exited after {took:?}, grace is {GRACE:?}; logs: {}", p.logs());
    drop(silent);
}

#[tokio::test]
async fn in_process_stop_closes_ws_clients_with_1001() {
    let s = TestServer::start("").await;
    let addr = s.addr;
    let mut a = s.ws("/v1/ws?topic=stop").await;
    let mut b = s.ws("/v1/ws").await;
    let (_, ack) = b.subscribe("stop", None).await;
    assert_eq!(ack["recovered"], true);
    b.send(json!({"op": "ping", "ref": 1})).await;
    assert_eq!(b.next().await, json!({"op": "pong", "ref": 1}));

    let closes = tokio::spawn(async move {
        let ea = a.ended().await;
        let eb = b.ended().await;
        (ea, eb)
    });
    tokio::time::timeout(Duration::from_secs(15), s.stop()).await.expect("stop timed out");
    let (ea, eb) = tokio::time::timeout(WAIT, closes).await.expect("closes timed out").expect("join");
    assert_eq!(ea, Ended::Closed(1001, "shutdown".into()));
    assert_eq!(eb, Ended::Closed(1001, "shutdown".into()));
    let refused =
        tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await.expect("connect timed out");
    assert!(refused.is_err(), "connection accepted after stop");
}
