//! Fuzz targets: one function per surface a client's bytes reach, shared
//! by the stable runner (`tests/fuzz.rs`, seeded mutation of a corpus) and
//! the `cargo fuzz` crate (`fuzz/`, libFuzzer on nightly). See
//! `docs/reliability.md` for how to run both.
//!
//! Each target feeds raw bytes to the real parser or the real server and
//! **panics when a property fails**: no input makes a parser panic; what
//! parses re-encodes to a form that parses back to the same value (cursor,
//! message id); what is refused is refused with the contract's code
//! (`bad_request`, `bad_topic`, `too_large`), never anything else; and the
//! front door ([`FrontDoor`]) answers `/healthz` (and, when asked,
//! `/readyz`) after any bytes, with no panic in any server task. A target returns a small number describing
//! which path the input took (the kind of result), which the stable runner
//! uses as cheap feedback to grow its corpus; libFuzzer ignores it.
//!
//! Not part of the public API (hidden from the docs); it exists so tests
//! and fuzzers outside the crate can reach crate-private parsers without
//! widening their visibility.

// Synchronous on purpose (libFuzzer calls a plain function), so wall-clock
// std time, not tokio's pausable clock.
#![allow(clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::IgnoredAny;
use tokio_util::sync::CancellationToken;

use crate::core::{Cursor, Message, MessageId, Topic};
use crate::error::Code;
use crate::transport::frame;
use crate::transport::ops::Op;
use crate::transport::request::{self, Topics};

/// A small hash of a result's shape (digits dropped, so "column 5" and
/// "column 9" are one path): the feedback a target returns.
fn signal(tag: u64, text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ tag;
    for b in text.bytes().filter(|b| !b.is_ascii_digit()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Combines two signals, order-sensitive (equal ones do not cancel).
fn mix(acc: u64, s: u64) -> u64 {
    acc.rotate_left(17) ^ s
}

/// The cursor decoder (`core::cursor`), on the bytes as a cursor string and
/// on the bytes as a decoded cursor body (base64url-encoded first, so the
/// entry parser sees them). Whatever parses re-encodes to the very same
/// string (one form per cursor) and parses back equal; a refusal through
/// `transport::request` is `bad_request`.
pub fn cursor(data: &[u8]) -> u64 {
    let mut sig = 0;
    if let Ok(s) = std::str::from_utf8(data) {
        sig = mix(sig, check_cursor_text(s));
    }
    let body = URL_SAFE_NO_PAD.encode(data);
    if body.len() <= crate::core::cursor::MAX_CURSOR_LEN {
        sig = mix(sig, check_cursor_text(&body));
    }
    sig
}

fn check_cursor_text(s: &str) -> u64 {
    match Cursor::parse(s) {
        Ok(c) => {
            let enc = c.encode();
            assert_eq!(enc, s, "a parsed cursor re-encodes to another string");
            assert_eq!(enc.len(), c.encoded_len(), "encoded_len disagrees with encode");
            assert!(c.fits(), "a parsed cursor does not fit the contract's limit");
            assert_eq!(Cursor::parse(&enc).as_ref(), Ok(&c), "cursor round trip");
            let sorted = c.iter().zip(c.iter().skip(1)).all(|(a, b)| a.0 < b.0);
            assert!(sorted, "cursor entries are not sorted and unique");
            signal(1, &format!("ok {}", c.len().min(4)))
        }
        Err(e) => {
            let api = request::cursor(s).err().map(|e| e.code);
            assert_eq!(api, Some(Code::BadRequest), "a bad cursor is bad_request");
            signal(2, &e.to_string())
        }
    }
}

/// The message id parser (`"<ms>-<seq>"`): what parses prints in canonical
/// form and parses back equal; a refusal is `bad_request`. The first 16
/// bytes also make an id from two integers that must survive print→parse,
/// with successor/predecessor inverse of each other.
pub fn message_id(data: &[u8]) -> u64 {
    let mut sig = 0;
    if let Ok(s) = std::str::from_utf8(data) {
        sig = match s.parse::<MessageId>() {
            Ok(id) => {
                let canon = id.to_string();
                assert!(canon.len() <= s.len(), "canonical id {canon} longer than input {s:?}");
                assert_eq!(canon.parse::<MessageId>(), Ok(id), "id round trip");
                assert_eq!(request::message_id(s).ok(), Some(id));
                signal(3, if canon == s { "canonical" } else { "padded" })
            }
            Err(e) => {
                let api = request::message_id(s).err().map(|e| e.code);
                assert_eq!(api, Some(Code::BadRequest), "a bad id is bad_request");
                signal(4, &format!("{e} {}", s.contains('-')))
            }
        };
    }
    if let (Some(a), Some(b)) = (data.get(..8), data.get(8..16)) {
        let mut ms = [0u8; 8];
        let mut seq = [0u8; 8];
        ms.copy_from_slice(a);
        seq.copy_from_slice(b);
        let id = MessageId::new(u64::from_le_bytes(ms), u64::from_le_bytes(seq));
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id), "printed id round trip");
        if let Some(next) = id.successor() {
            assert!(next > id, "successor not greater");
            assert_eq!(next.predecessor(), Some(id), "predecessor(successor(id)) != id");
        }
        if let Some(prev) = id.predecessor() {
            assert!(prev < id, "predecessor not smaller");
            assert_eq!(prev.successor(), Some(id), "successor(predecessor(id)) != id");
        }
    }
    sig
}

/// WebSocket op frames (`transport::frame::parse`), at a small and at the
/// default `data` limit. A refusal carries `bad_request`, `bad_topic` or
/// `too_large` and its error frame is valid JSON; an accepted publish has
/// `data` within the limit that then passes or fails the publish path's
/// data check (`transport::request::check_data`) with a contract code.
pub fn ws_frame(data: &[u8]) -> u64 {
    // A text frame is UTF-8 by the WebSocket protocol (the server refuses
    // others before parsing).
    let Ok(text) = std::str::from_utf8(data) else { return 0 };
    let mut sig = 0;
    for max in [16, 65_536] {
        let s = match frame::parse(text, max) {
            Ok((r, op)) => {
                if let Some(r) = &r {
                    assert!(serde_json::from_str::<IgnoredAny>(r.get()).is_ok(), "ref is not JSON");
                }
                signal(5, &op_shape(op, max))
            }
            Err(e) => {
                assert!(
                    matches!(e.code, Code::BadRequest | Code::BadTopic | Code::TooLarge),
                    "frame refused with {:?}",
                    e.code
                );
                let reply = frame::error(e.r.as_deref(), e.code, &e.message);
                // JSON grammar, not serde_json::Value: a `ref` of 1e999 is
                // valid JSON echoed verbatim, out of range for an f64.
                if let Err(err) = serde_json::from_str::<IgnoredAny>(&reply) {
                    panic!("error frame is not JSON ({err}): {reply}");
                }
                assert!(reply.starts_with(r#"{"op":"error""#), "{reply}");
                signal(
                    6,
                    &format!("{} {}", e.code.as_str(), e.message.split([':', '"']).next().unwrap_or("")),
                )
            }
        };
        sig = mix(sig, s);
    }
    sig
}

fn op_shape(op: Op, max: usize) -> String {
    match op {
        Op::Publish { topic, data, .. } => {
            assert!(data.len() <= max, "publish data over the limit accepted by the frame");
            assert!(Topic::is_valid(topic.as_str()));
            match request::check_data(data, max) {
                Ok(d) => {
                    check_accepted(&topic, &d, max);
                    "publish ok".into()
                }
                Err(e) => {
                    assert!(
                        matches!(e.code, Code::BadRequest | Code::TooLarge),
                        "data refused with {:?}",
                        e.code
                    );
                    format!("publish {}", e.code.as_str())
                }
            }
        }
        Op::Subscribe { topic, after, .. } => {
            assert!(Topic::is_valid(topic.as_str()));
            format!("subscribe {}", after.is_some())
        }
        other => format!("{other:?}").split([' ', '{', '(']).next().unwrap_or("").to_owned(),
    }
}

/// SSE resume: a `Last-Event-ID` header value (bytes after the first `\n`
/// of the input, as the server reads a header: visible ASCII or refused)
/// and the query (bytes before it) through `transport::request::Topics`.
/// Accepted: 1 to 64 distinct valid topics, a cursor that re-encodes and
/// parses back. Refused: `bad_request` or `bad_topic`.
pub fn last_event_id(data: &[u8]) -> u64 {
    let (query, header) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    // A URI's query is ASCII; hyper refuses anything else before routing.
    let Ok(query) = std::str::from_utf8(query) else { return 0 };
    let header = header.and_then(|h| axum::http::HeaderValue::from_bytes(h).ok());
    let header = header.as_ref().and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty());
    match Topics::from_query(Some(query), header, &["lastEventId"], 1, 64) {
        Ok(t) => {
            assert!((1..=64).contains(&t.topics.len()), "{} topics accepted", t.topics.len());
            for (i, a) in t.topics.iter().enumerate() {
                assert!(Topic::is_valid(a.as_str()));
                assert!(!t.topics[..i].contains(a), "topic {a} twice");
            }
            if let Some(c) = &t.cursor {
                assert_eq!(Cursor::parse(&c.encode()).as_ref(), Ok(c), "resume cursor round trip");
            }
            signal(7, &format!("{} {}", t.topics.len().min(3), t.cursor.is_some()))
        }
        Err(e) => {
            assert!(matches!(e.code, Code::BadRequest | Code::BadTopic), "resume refused with {:?}", e.code);
            signal(8, &format!("{} {}", e.code.as_str(), e.message))
        }
    }
}

/// Publish body validation (`transport::request::check_data`, the check
/// of every publish path): at a small and at the default limit. Accepted
/// data is non-empty UTF-8 JSON, trimmed, within the limit, the input's own
/// bytes, and makes valid JSON on the wire (message JSON, WebSocket
/// frame). Refused: `too_large` exactly when over the limit, otherwise
/// `bad_request`.
pub fn publish_body(data: &[u8]) -> u64 {
    let mut sig = 0;
    for max in [64, 65_536] {
        let s = match request::check_data(Bytes::copy_from_slice(data), max) {
            Ok(d) => {
                assert!(
                    data.windows(d.len().max(1)).any(|w| w == &d[..]),
                    "accepted data is not the input's bytes"
                );
                check_accepted(&Topic::new("fuzz").expect("a valid topic"), &d, max);
                signal(9, "ok")
            }
            Err(e) => {
                if data.len() > max {
                    assert_eq!(e.code, Code::TooLarge, "over the limit but {:?}", e.code);
                } else {
                    assert_eq!(e.code, Code::BadRequest, "refused with {:?}: {}", e.code, e.message);
                }
                signal(10, &format!("{} {}", e.code.as_str(), e.message.split(':').next().unwrap_or("")))
            }
        };
        sig = mix(sig, s);
    }
    sig
}

/// What every accepted `data` must be: deliverable on every wire.
fn check_accepted(topic: &Topic, d: &Bytes, max: usize) {
    assert!(!d.is_empty() && d.len() <= max, "accepted data of {} bytes (limit {max})", d.len());
    assert!(std::str::from_utf8(d).is_ok(), "accepted data is not UTF-8");
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    assert!(!ws(&d[0]) && !ws(&d[d.len() - 1]), "accepted data is not trimmed");
    assert!(serde_json::from_slice::<IgnoredAny>(d).is_ok(), "accepted data is not JSON");
    // A strict decoder finds no lone surrogate in it (numbers past f64's
    // range, `1e400`, are JSON too and accepted: not checked here).
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(d) {
        let e = e.to_string();
        assert!(!e.contains("surrogate") && !e.contains("escape"), "accepted data is not Unicode text: {e}");
    }
    let m = Message::new(topic.clone(), MessageId::new(1, 0), 1, d.clone());
    let json = m.json();
    assert!(serde_json::from_slice::<IgnoredAny>(&json).is_ok(), "message JSON invalid: {json:?}");
    let f = frame::message(&m, "AQ");
    assert!(std::str::from_utf8(&f).is_ok(), "WebSocket message frame is not UTF-8");
    assert!(serde_json::from_slice::<IgnoredAny>(&f).is_ok(), "WebSocket message frame invalid");
}

/// Panics seen in the front door's server threads (named
/// [`SERVER_THREAD`]); a panic in a connection task is caught by tokio and
/// would otherwise go unnoticed.
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);
const SERVER_THREAD: &str = "rtgate-fuzz-server";
static HOOK: Once = Once::new();

/// The raw-bytes front door: the real server (embedded engine, defaults)
/// in process on a loopback port, fed each input over a fresh TCP
/// connection (HTTP/1.1 or HTTP/2 detection, routing, every handler behind
/// it). After each input the server must answer `/healthz` with 200 and
/// no server thread may have panicked.
pub struct FrontDoor {
    addr: SocketAddr,
    token: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    /// How long one input's connection is read before it is dropped.
    pub linger: Duration,
    /// Also require `/readyz` 200 after each input: no client input may
    /// make the gateway unready (contract §2: a bad input never takes the
    /// process out of service). Set it when the engine is up for the run.
    pub check_ready: bool,
}

impl FrontDoor {
    /// Starts the server with the defaults overridden by `toml` (e.g. `""`),
    /// and the connection-attempt limits off (see the body).
    pub fn start(toml: &str) -> std::io::Result<FrontDoor> {
        HOOK.call_once(|| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if std::thread::current().name() == Some(SERVER_THREAD) {
                    SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
                }
                prev(info);
            }));
        });
        let mut config = crate::config::Config::from_toml(toml).map_err(std::io::Error::other)?;
        // Every input is a new connection from 127.0.0.1: the connection-
        // attempt limits would answer 429 after the first few hundred. They
        // are off; 127.0.0.1 is a trusted proxy instead, so every input's
        // `X-Forwarded-For` is parsed.
        config.abuse.connect_rate_per_ip = 0;
        config.abuse.connect_rate_global = 0;
        config.abuse.trusted_proxies = vec!["127.0.0.1".into()];
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let token = CancellationToken::new();
        let run_token = token.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name(SERVER_THREAD.into()).spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if let Err(e) = crate::run(listener, config, run_token).await {
                    tracing::error!(error = %e, "fuzz server ended");
                }
            });
        })?;
        ready_rx.recv().map_err(std::io::Error::other)??;
        let door = FrontDoor {
            addr,
            token,
            thread: Some(thread),
            linger: Duration::from_millis(80),
            check_ready: false,
        };
        door.probe("/healthz", Duration::from_secs(20))?;
        Ok(door)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes `data` on a fresh connection, reads what comes back (until
    /// the answer pauses, or at most `linger`), then asserts the server is healthy and no
    /// server thread panicked. Returns a signal of the answer's status line.
    pub fn feed(&self, data: &[u8]) -> u64 {
        let sig = self.exchange(data).unwrap_or(0);
        let alive = self.thread.as_ref().is_some_and(|t| !t.is_finished());
        assert!(alive, "the server stopped");
        if let Err(e) = self.probe("/healthz", Duration::from_secs(10)) {
            panic!("the server does not answer /healthz after the input: {e}");
        }
        if self.check_ready {
            // Readiness is a state, not a retry: asked once, right away.
            if let Err(e) = self.probe("/readyz", Duration::ZERO) {
                panic!("the gateway is not ready after the input: {e}");
            }
        }
        let panics = SERVER_PANICS.load(Ordering::SeqCst);
        assert_eq!(panics, 0, "a server thread panicked");
        sig
    }

    fn exchange(&self, data: &[u8]) -> std::io::Result<u64> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.set_read_timeout(Some(Duration::from_millis(10)))?;
        // The server may answer and close before reading everything. No
        // half-close: hyper drops a request whose client shut its write
        // side before the answer, so handlers would never run.
        let _ = s.write_all(data);
        // Read until the server closes, or the answer stops for IDLE, or
        // `linger` passes with no answer (an incomplete request).
        const IDLE: Duration = Duration::from_millis(15);
        let start = Instant::now();
        let mut last = None;
        let mut head = Vec::new();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        loop {
            let now = Instant::now();
            if now - start >= self.linger || last.is_some_and(|t| now - t >= IDLE) {
                break;
            }
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    last = Some(Instant::now());
                    got += n;
                    if head.len() < 1024 {
                        head.extend_from_slice(&buf[..n.min(1024 - head.len())]);
                    }
                    if http1_complete(&head, got) {
                        break;
                    }
                }
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        // Feedback: the status line (or the first bytes of an HTTP/2
        // answer) and the contract error code, if any.
        let text = String::from_utf8_lossy(&head);
        let code = text.split("\"code\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
        let status: String = text.chars().take(12).collect();
        Ok(signal(11, &format!("{status} {code}")))
    }

    /// GETs `path` until it answers 200 (for at most `within`).
    pub fn probe(&self, path: &str, within: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let r = (|| -> std::io::Result<()> {
                let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let req = format!("GET {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes())?;
                let mut answer = Vec::new();
                s.read_to_end(&mut answer)?;
                if answer.starts_with(b"HTTP/1.1 200") {
                    Ok(())
                } else {
                    Err(std::io::Error::other(String::from_utf8_lossy(&answer).into_owned()))
                }
            })();
            match r {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// True when `head` (the first bytes of an answer, `total` bytes in all)
/// holds one whole HTTP/1.1 response with a `content-length` body: no need
/// to wait for more.
fn http1_complete(head: &[u8], total: usize) -> bool {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    if !text.starts_with("http/1.1 ") || text.starts_with("http/1.1 101") {
        return false;
    }
    let len = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|n| total >= end + 4 + n)
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        self.token.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
