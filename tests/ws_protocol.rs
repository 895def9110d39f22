//! The WebSocket protocol itself (RFC 6455), spoken byte by byte by a raw
//! TCP client, as a hostile or careless one would: frames that break the
//! protocol end that connection alone, pings and the client's close are
//! answered, and a connection that sent one large frame does not keep a
//! large buffer for the rest of its life (measured on the real binary).
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

mod support;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::binary::Gateway;
use support::{TestServer, WAIT};

/// A client frame: `first` byte (FIN, RSV, opcode) and `payload`, masked
/// unless `masked` is false.
fn frame_with(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x0b, 0xad, 0xf0, 0x0d];
    let bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(first, payload, true)
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A WebSocket spoken by hand: TCP, the opening handshake, then raw frames.
struct Raw {
    sock: TcpStream,
    /// Bytes read and not parsed yet.
    buf: Vec<u8>,
}

/// How reading the server's frames ended.
#[derive(Debug, PartialEq)]
enum Next {
    Frame(u8, Vec<u8>),
    /// End of file or a reset: the server dropped the connection.
    Ended,
}

impl Raw {
    async fn connect(addr: &str, path: &str) -> Raw {
        let mut sock = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Raw { sock, buf: Vec::new() };
        let deadline = Instant::now() + WAIT;
        let end = loop {
            if let Some(p) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            assert!(raw.read_more(deadline).await, "connection ended during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        raw
    }

    /// Reads more bytes; false once the server ended the connection.
    async fn read_more(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.sock.read(&mut chunk)).await.expect("timed out reading")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The server's next frame (opcode, payload), or its end.
    async fn next(&mut self) -> Next {
        let deadline = Instant::now() + WAIT;
        loop {
            let b = &self.buf;
            if b.len() >= 2 {
                assert_eq!(b[1] & 0x80, 0, "server frames are never masked");
                let (len, at) = match b[1] & 0x7F {
                    126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                    127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && b.len() >= at + len {
                    let f = Next::Frame(b[0] & 0x0F, b[at..at + len].to_vec());
                    self.buf.drain(..at + len);
                    return f;
                }
            }
            if !self.read_more(deadline).await {
                assert!(self.buf.is_empty(), "connection ended inside a frame: {:?}", self.buf);
                return Next::Ended;
            }
        }
    }

    /// The next text frame as JSON, skipping pings.
    async fn next_json(&mut self) -> Value {
        loop {
            match self.next().await {
                Next::Frame(0x1, p) => return serde_json::from_slice(&p).unwrap(),
                Next::Frame(0x9, _) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }
}

/// Frames a server must refuse (RFC 6455 §5), each on a connection of its
/// own: the server drops that connection without delivering anything, and
/// a well-behaved subscriber of the same topic gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_end_only_their_connection() {
    let s = TestServer::start("").await;
    let addr = s.addr.to_string();
    let publish = br#"{"op":"publish","topic":"pv","data":1}"#;
    let huge_length = {
        // A text frame declaring 2^62 bytes, and only its header.
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 62).to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        f
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", frame_with(0x81, publish, false)),
        ("reserved bits", frame(0xC1, publish)),
        ("data opcode 3", frame(0x83, publish)),
        ("control opcode 11", frame(0x8B, b"")),
        ("fragmented ping", frame(0x09, b"x")),
        ("ping of 126 bytes", frame(0x89, &[b'p'; 126])),
        ("continuation first", frame(0x80, publish)),
        ("text inside a fragmented message", [frame(0x01, b"{\"op\""), frame(0x81, b"x")].concat()),
        ("text that is not UTF-8", frame(0x81, b"{\"op\":\"ping\",\"ref\":\"\xff\xfe\"}")),
        ("close code 1005", frame(0x88, &close_payload(1005, ""))),
        ("close of one byte", frame(0x88, &[3])),
        ("close reason not UTF-8", frame(0x88, &[0x03, 0xE8, 0xC3])),
    ];
    let mut good = s.ws("/v1/ws?topic=pv").await;
    let mut expected = vec![];
    for (name, bytes) in &cases {
        let mut raw = Raw::connect(&addr, "/v1/ws?topic=pv").await;
        raw.send(bytes).await;
        // Whatever the violation, the server ends the connection (without
        // publishing); pings may come first.
        loop {
            match raw.next().await {
                Next::Ended => break,
                Next::Frame(0x9, _) => continue,
                other => panic!("{name}: expected the connection to end, got {other:?}"),
            }
        }
        expected.push(s.publish("pv", &format!("\"after {name}\"")).await);
    }
    // A length over every limit is refused from the header alone: closed
    // as too large (1009), nothing buffered.
    let mut raw = Raw::connect(&addr, "/v1/ws?topic=pv").await;
    raw.send(&huge_length).await;
    let Next::Frame(0x8, close) = raw.next().await else { panic!("a close frame") };
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009);
    expected.push(s.publish("pv", "\"after a huge length\"").await);

    let got: Vec<String> =
        good.messages(expected.len()).await.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, expected, "the good subscriber got every message, in order");
    good.assert_quiet("nothing the bad clients sent was published").await;
    s.stop().await;
}

/// A ping is answered with a pong carrying its payload, also between the
/// fragments of a message; a fragmented publish is one publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_and_fragments_joined() {
    let s = TestServer::start("").await;
    let mut raw = Raw::connect(&s.addr.to_string(), "/v1/ws").await;
    raw.send(&frame(0x89, b"are you there")).await;
    assert_eq!(raw.next().await, Next::Frame(0xA, b"are you there".to_vec()));
    let mut bytes = frame(0x01, br#"{"op":"publish","#);
    bytes.extend(frame(0x89, b"mid"));
    bytes.extend(frame(0x00, br#""topic":"frag","data":"#));
    bytes.extend(frame(0x80, br#""caf\u00e9","ref":7}"#));
    raw.send(&bytes).await;
    assert_eq!(raw.next().await, Next::Frame(0xA, b"mid".to_vec()));
    let ack = raw.next_json().await;
    assert_eq!((ack["op"].as_str(), ack["ref"].as_i64()), (Some("ack"), Some(7)), "{ack}");
    let (status, history) = s.get("/v1/history/frag").await;
    assert_eq!(status, 200);
    assert_eq!(history["messages"][0]["id"], ack["id"]);
    assert_eq!(history["messages"][0]["data"], "café");
    s.stop().await;
}

/// The client's close is answered with its own code (RFC 6455 §5.5.1),
/// then the server ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_close_is_answered_with_its_code() {
    let s = TestServer::start("").await;
    for code in [1000u16, 1001, 4321] {
        let mut raw = Raw::connect(&s.addr.to_string(), "/v1/ws?topic=bye").await;
        raw.send(&frame(0x88, &close_payload(code, "done"))).await;
        assert_eq!(raw.next().await, Next::Frame(0x8, code.to_be_bytes().to_vec()), "code {code}");
        assert_eq!(raw.next().await, Next::Ended, "code {code}");
    }
    let mut raw = Raw::connect(&s.addr.to_string(), "/v1/ws?topic=bye").await;
    raw.send(&frame(0x88, b"")).await;
    assert_eq!(raw.next().await, Next::Frame(0x8, vec![]), "an empty close is answered empty");
    assert_eq!(raw.next().await, Next::Ended);
    s.stop().await;
}

/// The process's resident memory, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Every connection sends one frame of 60 KB (just under the limit), one
/// connection after the other, and all stay open: the gateway keeps none of
/// those buffers. (A decoder that keeps its largest read buffer costs each
/// connection 60 KB: +18 MB here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_frame_per_connection_leaves_no_buffer_behind() {
    const CONNS: usize = 300;
    let g = Gateway::spawn(&[], &[("RTGATE_ABUSE__CONNECT_RATE_PER_IP", "0"), ("RUST_LOG", "warn")]).await;
    let addr = g.addr();
    // An op the server refuses with a short error: the 60 KB are read and
    // decoded, nothing is stored or echoed.
    let pad = "x".repeat(60_000);
    let big = frame(0x81, format!(r#"{{"op":"nope","pad":"{pad}"}}"#).as_bytes());
    let mut conns = Vec::with_capacity(CONNS);
    // Warm up: the first connections' allocations (the runtime, the hub,
    // the allocator's arenas) are not what is measured.
    for _ in 0..20 {
        let mut raw = Raw::connect(&addr, "/v1/ws?topic=mem").await;
        raw.send(&big).await;
        assert_eq!(raw.next_json().await["code"], "bad_request");
        conns.push(raw);
    }
    let before = rss(g.child.id());
    for _ in 0..CONNS {
        let mut raw = Raw::connect(&addr, "/v1/ws?topic=mem").await;
        raw.send(&big).await;
        assert_eq!(raw.next_json().await["code"], "bad_request");
        conns.push(raw);
    }
    let per_conn = rss(g.child.id()).saturating_sub(before) / CONNS as u64;
    eprintln!("{per_conn} B of RSS per connection after one 60 KB frame each");
    // An idle connection costs a few KB; a kept 60 KB buffer would be 60.
    assert!(per_conn < 16 * 1024, "{per_conn} bytes of RSS per connection after one 60 KB frame each");
    // Every connection is still served.
    let id = support::post_publish(&g.http, &g.url("/v1/publish/mem"), "1".into()).await;
    for raw in &mut conns {
        let m = raw.next_json().await;
        assert_eq!((m["op"].as_str(), m["id"].as_str()), (Some("message"), Some(id.as_str())), "{m}");
    }
}
