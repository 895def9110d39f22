//! OpenTelemetry export (cargo feature `otlp`): spans reach an OTLP/HTTP
//! collector. Run with `cargo test --features otlp --test otlp`.
#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Accepts one OTLP/HTTP POST and returns (request head, body).
async fn collect_one(listener: TcpListener) -> (String, Vec<u8>) {
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head, body_start) = loop {
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "collector connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&buf[..i]).to_string(), i + 4);
        }
    };
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    while buf.len() < body_start + len {
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    (head, buf[body_start..body_start + len].to_vec())
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http() {
    let collector = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/traces", collector.local_addr().unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtgate"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RTGATE_LOG__OTLP_ENDPOINT", &endpoint)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = tokio::spawn(collect_one(collector));
    // Wait for the gateway, then make a span: one WebSocket connection.
    let url = format!("ws://127.0.0.1:{port}/v1/ws?topic=otlp");
    let mut ws = None;
    for _ in 0..200 {
        if let Ok((c, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            ws = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    drop(ws.expect("gateway did not come up"));
    // SIGTERM: the process flushes its spans on the way out.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let (head, body) =
        tokio::time::timeout(Duration::from_secs(20), got).await.expect("no OTLP export").unwrap();
    assert!(head.starts_with("POST /v1/traces"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/x-protobuf"), "{head}");
    let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(find(b"rtgate"), "service name missing from the export");
    assert!(find(b"ws") && find(b"peer"), "the connection span (ws, peer) is missing from the export");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");
}
