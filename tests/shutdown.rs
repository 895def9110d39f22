//! Graceful shutdown (contract §4, §10): SIGTERM closes WebSocket clients
//! with 1001, stops accepting, and exits 0 within `shutdown.grace`.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::*;

use std::time::{Duration, Instant};

use serde_json::json;

const GRACE: Duration = Duration::from_secs(5);

/// The real binary on a free port with a 5 s grace; killed on drop if still
/// running.
use support::binary::Gateway as Proc;

impl Proc {
    async fn start() -> Proc {
        Proc::spawn(&[], &[("RTGATE_SHUTDOWN__GRACE", "5s")]).await
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
    assert_eq!(
        ea.paced().map(|(c, w, _)| (c, w)),
        Some((1001, "shutdown")),
        "client a: {ea:?}; logs: {}",
        p.logs()
    );
    assert_paced_close(&ea, 1001, "shutdown");
    assert_eq!(
        eb.paced().map(|(c, w, _)| (c, w)),
        Some((1001, "shutdown")),
        "client b: {eb:?}; logs: {}",
        p.logs()
    );
    assert_paced_close(&eb, 1001, "shutdown");
    drop((a, b));

    // Shutdown has begun: a new connection is refused (TCP refused/reset, or
    // the handshake is rejected), whether or not the process has exited yet.
    let late =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{base}/v1/ws?topic=sd")))
            .await
            .expect("late connect timed out");
    assert!(late.is_err(), "a WebSocket connection was accepted during shutdown");

    let status = p.exited(GRACE + Duration::from_secs(5)).await;
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
    let status = p.exited(GRACE + Duration::from_secs(5)).await;
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
    assert_paced_close(&ea, 1001, "shutdown");
    assert_paced_close(&eb, 1001, "shutdown");
    let refused =
        tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await.expect("connect timed out");
    assert!(refused.is_err(), "connection accepted after stop");
}
