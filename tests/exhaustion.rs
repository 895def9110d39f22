//! Exhaustion and isolation at the connection level (issue 11, items 7 and
//! 8), with real clients over real sockets:
//!
//! - A slow stream on a shared HTTP/2 connection (SSE through reqwest, gRPC
//!   `Subscribe` through one tonic channel) is ended alone; the other
//!   stream on the same connection keeps receiving every message.
//! - Sockets that never finish their handshake (silent, half an HTTP/2
//!   preface, half an HTTP/1 request head) are closed after
//!   `http.handshake_timeout` and their slots go to waiting clients, while an
//!   idle HTTP/2 connection that did its handshake stays.
//! - A trickled publish body is answered 408 after `http.body_timeout` and
//!   its connection freed; accepted sockets carry TCP keepalive.
//!
//! The metrics recorder is per process: the transport gauges read here
//! (`sse`, `grpc`) are moved by one test each in this binary.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

mod support;

#[allow(dead_code, unused_imports)]
#[path = "grpc/helpers.rs"]
mod helpers;

use std::time::Duration;

use rtgate::proto::gateway_client::GatewayClient;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Code;

use support::sse::{sse_path, Sse};
use support::{ids, TestServer, WAIT};

/// Open long-lived connections of `transport` (`rtgate_connections`).
async fn open_streams(s: &TestServer, transport: &str) -> f64 {
    s.scrape().await.get("rtgate_connections", &[("transport", transport)]).unwrap_or(0.0)
}

// ------------------------------------------------- item 7: one stream only

/// Two SSE streams on one HTTP/2 connection; one stops reading while its
/// topic gets big messages and is closed as a slow consumer. Only that
/// stream ends (reset), the other receives every message before and after,
/// and the slow one resumes by `Last-Event-ID` without loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sse_stream_on_a_shared_http2_connection_ends_alone() {
    let s = TestServer::start("[limits]\noutbox_capacity = 8\n").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(64 * 1024)
        .build()
        .unwrap();
    let (ts, th) = ("ex.sse.slow", "ex.sse.ok");
    let mut slow = Sse::open_with(&h2, &s.url(&sse_path(&[ts])), None).await;
    let mut healthy = Sse::open_with(&h2, &s.url(&sse_path(&[th])), None).await;
    assert_eq!((slow.version, healthy.version), (reqwest::Version::HTTP_2, reqwest::Version::HTTP_2));
    s.wait_for("both SSE streams open", |m| m.gauge("rtgate_connections", &[("transport", "sse")]) == 2.0)
        .await;

    // The slow client reads its first message (a cursor to resume from),
    // then nothing more.
    let mut slow_ids = vec![s.publish(ts, r#"{"first":true}"#).await];
    let (mut slow_cursor, first) = slow.message().await;
    assert_eq!(first["id"], slow_ids[0]);

    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(16 * 1024));
    let mut ok_ids = vec![];
    let mut check_healthy = async |s: &TestServer, i: usize, ok_ids: &mut Vec<String>| {
        let id = s.publish(th, &format!(r#"{{"i":{i}}}"#)).await;
        let (_, m) = healthy.message().await;
        assert_eq!(m["id"], id, "the healthy stream got message {i} in order");
        ok_ids.push(id);
    };
    // Big messages for the slow stream until its stream is gone (64 KiB
    // window + 64 KiB send buffer + an outbox of 8), a small one after each
    // for the healthy stream, read at once.
    let mut i = 0;
    while open_streams(&s, "sse").await > 1.0 {
        assert!(slow_ids.len() < 200, "the slow stream was never closed");
        slow_ids.push(s.publish(ts, &big).await);
        check_healthy(&s, i, &mut ok_ids).await;
        i += 1;
    }
    // The same connection goes on carrying the healthy stream.
    for _ in 0..50 {
        check_healthy(&s, i, &mut ok_ids).await;
        i += 1;
    }
    assert_eq!(open_streams(&s, "sse").await, 1.0, "the healthy stream is still open");

    // What the slow client still holds, then a failure: the stream was
    // reset, not ended as if complete.
    let (events, failure) = slow.until_failure().await;
    assert!(failure.is_some(), "the slow stream ended cleanly; expected a reset");
    let got: Vec<String> = events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| {
            slow_cursor = e.id.clone();
            serde_json::from_str::<Value>(&e.data).unwrap()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let k = 1 + got.len();
    assert!(k < slow_ids.len(), "the slow stream was not cut off ({k} of {})", slow_ids.len());
    assert_eq!(got, slow_ids[1..k], "what it got is a prefix");

    // It resumes where it stopped and loses nothing.
    let mut back = Sse::open_with(&h2, &s.url(&sse_path(&[ts])), Some(&slow_cursor)).await;
    let rest: Vec<Value> = back.messages(slow_ids.len() - k).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(ids(&rest), slow_ids[k..], "the rest, with no loss");
    support::sse::assert_quiet(&s, &[ts], &mut [&mut back]).await;
    support::sse::assert_quiet(&s, &[th], &mut [&mut healthy]).await;
    s.stop().await;
}

/// Two `Subscribe` streams on one gRPC channel (one HTTP/2 connection); one
/// does not read, is closed as a slow consumer and, still not reading after
/// `grpc.stall_timeout`, reset: it ends CANCELLED. The other receives every
/// message before and after, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_grpc_stream_is_reset_alone_on_its_connection() {
    use helpers::*;
    let s = TestServer::start("[limits]\noutbox_capacity = 8\n[grpc]\nstall_timeout = \"1s\"\n").await;
    let (ts, th) = ("ex.grpc.slow", "ex.grpc.ok");
    let shared = within(endpoint(&s).initial_stream_window_size(16 * 1024).connect()).await.expect("connect");
    let mut slow_client = GatewayClient::new(shared.clone());
    let mut healthy_client = GatewayClient::new(shared);
    let mut slow = subscribe(&mut slow_client, &[ts], "").await;
    let mut healthy = subscribe(&mut healthy_client, &[th], "").await;
    let mut pc = client(&s).await;

    let mut slow_ids = vec![publish(&mut pc, ts, r#"{"first":true}"#).await.id];
    let first = next_msg(&mut slow).await;
    assert_eq!(first.id, slow_ids[0]);

    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4096));
    let mut ok_ids = vec![];
    let mut i = 0;
    let mut step = async |pc: &mut Client, ok_ids: &mut Vec<String>, i: usize| {
        let id = publish(pc, th, &format!(r#"{{"i":{i}}}"#)).await.id;
        let m = next_msg(&mut healthy).await;
        assert_eq!(m.id, id, "the healthy stream got message {i} in order");
        ok_ids.push(id);
    };
    // Until the slow stream is gone: overflow, then stall_timeout.
    while open_streams(&s, "grpc").await > 1.0 {
        assert!(slow_ids.len() < 2000, "the slow stream was never reset");
        if slow_ids.len() < 60 {
            slow_ids.push(publish(&mut pc, ts, &big).await.id);
        }
        step(&mut pc, &mut ok_ids, i).await;
        i += 1;
    }
    for _ in 0..50 {
        step(&mut pc, &mut ok_ids, i).await;
        i += 1;
    }
    assert_eq!(open_streams(&s, "grpc").await, 1.0, "the healthy stream is still open");

    let (prefix, status) = end_of(&mut slow).await;
    assert_eq!(status.code(), Code::Cancelled, "the stalled stream was reset: {status:?}");
    let k = 1 + prefix.len();
    assert!(k < slow_ids.len(), "the slow stream was not cut off");
    assert_eq!(ids(&prefix), slow_ids[1..k], "what it got is a prefix");
    let cursor = prefix.last().map_or(first.cursor.clone(), |m| m.cursor.clone());
    let mut back = subscribe(&mut pc, &[ts], &cursor).await;
    assert_eq!(ids(&msgs(&mut back, slow_ids.len() - k).await), slow_ids[k..], "the rest, with no loss");
    assert_quiet(&mut pc, &[ts], &mut [&mut back]).await;
    assert_quiet(&mut pc, &[th], &mut [&mut healthy]).await;
    s.stop().await;
}

// ------------------------------------- item 8: handshakes, bodies, keepalive

/// Reads HTTP/2 frames from `c` until a PING ACK with `payload` arrives.
async fn await_ping_ack(c: &mut TcpStream, payload: &[u8; 8]) {
    let mut buf = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            if kind == 6 && flags & 1 == 1 && buf[9..9 + len] == payload[..] {
                return;
            }
            buf.drain(..9 + len);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, c.read(&mut chunk))
            .await
            .expect("timed out waiting for the PING ACK")
            .expect("read");
        assert!(n > 0, "the HTTP/2 connection was closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the server closes `c` (a read sees the end or an error);
/// returns whatever it sent before.
async fn closed_by_server(c: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, c.read(&mut chunk)).await {
            Err(_) => panic!("{what}: still open after {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn connect(s: &TestServer) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(s.addr)).await.expect("connect timed out").expect("connect")
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// `max_connections` 4, all taken: an HTTP/2 connection that did its
/// handshake but opens no stream, a silent socket, half an HTTP/2 preface,
/// half an HTTP/1 request head. A fifth client waits in the accept queue.
/// The three that never finished their handshake are closed after
/// `http.handshake_timeout`, the fifth is served, the idle HTTP/2
/// connection still answers a PING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_handshake_are_closed_and_free_their_slots() {
    let s = TestServer::start("[limits]\nmax_connections = 4\n[http]\nhandshake_timeout = \"1s\"\n").await;
    let started = Instant::now();
    let mut idle_h2 = connect(&s).await;
    idle_h2.write_all(&[H2_PREFACE, H2_SETTINGS].concat()).await.unwrap();
    let mut silent = connect(&s).await;
    let mut half_h2 = connect(&s).await;
    half_h2.write_all(&H2_PREFACE[..14]).await.unwrap();
    let mut half_h1 = connect(&s).await;
    half_h1.write_all(b"POST /v1/publish/ex.half HTTP/1.1\r\nHost: x\r\n").await.unwrap();

    // A fresh client (its own connection): it waits for a slot.
    let url = s.url("/healthz");
    let fifth = tokio::spawn(async move {
        let res = reqwest::Client::new().get(url).send().await.expect("GET /healthz");
        (res.status().as_u16(), Instant::now())
    });

    for (c, what) in
        [(&mut silent, "silent"), (&mut half_h2, "half a preface"), (&mut half_h1, "half a head")]
    {
        closed_by_server(c, what).await;
    }
    let closed = started.elapsed();
    assert!(closed >= Duration::from_millis(900), "closed before handshake_timeout: {closed:?}");
    let (status, served) = tokio::time::timeout(WAIT, fifth).await.expect("the fifth client waited").unwrap();
    assert_eq!(status, 200);
    assert!(served - started >= Duration::from_millis(900), "served before a slot was freed");

    // Past its own handshake timer, the HTTP/2 connection is still served.
    let ping = *b"rtgate!!";
    idle_h2.write_all(&[&[0, 0, 8, 6, 0, 0, 0, 0, 0][..], &ping].concat()).await.unwrap();
    await_ping_ack(&mut idle_h2, &ping).await;
    drop(idle_h2); // or the drain waits for it (HTTP/2 GOAWAY, then the grace period)
    s.stop().await;
}

/// A publish whose 64 KiB body trickles in is answered 408 `bad_request`
/// after `http.body_timeout`, its connection is closed, nothing is stored,
/// and the only slot (`max_connections` 1) serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_publish_body_is_answered_408_and_frees_its_connection() {
    let s = TestServer::start("[limits]\nmax_connections = 1\n[http]\nbody_timeout = \"1s\"\n").await;
    let t = "ex.trickle";
    let mut c = connect(&s).await;
    let head = format!(
        "POST /v1/publish/{t} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n\""
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = c.into_split();
    // The client's pace (not a synchronisation): a byte every 100 ms until
    // the server closes.
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, rd.read(&mut chunk)).await.expect("no answer to the trickled body") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let elapsed = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "answer to a trickled body: {text:?}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text:?}");
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").expect("head end") + 4..]).unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert!(elapsed >= Duration::from_millis(900), "answered before body_timeout: {elapsed:?}");

    // The slot is free again, and the trickled message was not stored.
    let id = s.publish(t, r#"{"after":true}"#).await;
    let (status, history) = s.get(&format!("/v1/history/{t}")).await;
    assert_eq!(status, 200);
    assert_eq!(ids(history["messages"].as_array().unwrap()), [id]);
    s.stop().await;
}

/// The kernel's view of the server side of a connection (Linux
/// `/proc/net/tcp`): the `tr:tm->when` field, timer kind 2 being the
/// keepalive timer, in ticks of 1/100 s.
fn server_socket_timer(server: std::net::SocketAddr, client: std::net::SocketAddr) -> (u32, u64) {
    let hex = |a: std::net::SocketAddr| {
        let std::net::IpAddr::V4(ip) = a.ip() else { panic!("IPv4 expected: {a}") };
        format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), a.port())
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[1] == local && f[2] == remote {
            let (kind, when) = f[5].split_once(':').unwrap();
            return (u32::from_str_radix(kind, 16).unwrap(), u64::from_str_radix(when, 16).unwrap());
        }
    }
    panic!("no socket {local} -> {remote} in /proc/net/tcp");
}

/// Accepted sockets carry TCP keepalive with `http.tcp_keepalive` as its
/// idle time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(target_os = "linux")]
async fn accepted_sockets_have_tcp_keepalive() {
    let s = TestServer::start("[http]\ntcp_keepalive = \"7s\"\n").await;
    let mut c = connect(&s).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, c.read(&mut buf)).await.expect("answer").unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    let (kind, when) = server_socket_timer(s.addr, c.local_addr().unwrap());
    assert_eq!(kind, 2, "the server's socket has no keepalive timer");
    assert!(when > 0 && when <= 700, "keepalive due in {when} ticks, expected at most 7s");
    s.stop().await;
}
