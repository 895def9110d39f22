//! Stable fuzzing of every surface a client's bytes reach: the targets of
//! `rtgate::fuzz` (the same functions the `cargo fuzz` crate in `fuzz/`
//! calls), driven by seeded random mutation of a seed corpus, with a cheap
//! feedback (a new result shape keeps the input in the corpus).
//!
//! In the normal suite each target runs briefly (a fraction of a second;
//! the front door a few hundred inputs). Longer runs:
//!
//! ```text
//! RTGATE_FUZZ_SECS=600 cargo test --release --locked --test fuzz -- --test-threads=1   # 1 hour in all
//! RTGATE_FUZZ_SEED=1234 cargo test --locked --test fuzz cursor                       # replay one seed
//! ```
//!
//! `RTGATE_FUZZ_SECS` is the time per target; `RTGATE_FUZZ_SEEDS_DIR=fuzz/seeds`
//! also writes each target's seeds there (the starting corpus for `cargo fuzz`). A failing input is written to
//! `target/fuzz-crashes/<target>-<seed>-<n>.bin` and printed in hex; the
//! summary line per target (inputs, corpus, shapes, crashes) goes to stderr.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

mod support;

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtgate::core::{Cursor, MessageId, Topic};

/// Longest input the mutator makes (the publish limit is tested with a
/// limit of 64 bytes, so short inputs reach it).
const MAX_INPUT: usize = 4096;

fn env_secs(default: f64) -> Duration {
    let secs = std::env::var("RTGATE_FUZZ_SECS").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(default);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    std::env::var("RTGATE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id())
    })
}

/// One mutation step: bit flip, random byte, insert, delete a range,
/// duplicate a range, insert a dictionary token, splice another input,
/// truncate.
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, dict: &[&[u8]], other: &[u8]) {
    let len = input.len();
    match rng.random_range(0..8) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = rng.random();
        }
        2 => {
            let i = rng.random_range(0..=len);
            const SPECIAL: &[u8] = b"\"{}[],:-\\0\n\r \xff";
            let b =
                if rng.random_bool(0.5) { rng.random() } else { SPECIAL[rng.random_range(0..SPECIAL.len())] };
            input.insert(i, b);
        }
        3 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(16));
            input.drain(i..i + n);
        }
        4 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(64));
            let piece = input[i..i + n].to_vec();
            let at = rng.random_range(0..=len);
            let times = if rng.random_bool(0.1) { rng.random_range(2..64) } else { 1 };
            for _ in 0..times {
                input.splice(at..at, piece.iter().copied());
            }
        }
        5 if !dict.is_empty() => {
            let tok = dict[rng.random_range(0..dict.len())];
            let at = rng.random_range(0..=len);
            input.splice(at..at, tok.iter().copied());
        }
        6 if !other.is_empty() => {
            let a = rng.random_range(0..=len);
            let b = rng.random_range(0..other.len());
            input.truncate(a);
            input.extend_from_slice(&other[b..]);
        }
        _ if len > 0 => input.truncate(rng.random_range(0..len)),
        _ => input.push(rng.random()),
    }
    input.truncate(MAX_INPUT);
}

/// Runs `target` on every seed, then on mutations for `budget` (at least
/// `min_inputs`), on `threads` threads (each its own corpus, seed `seed+i`);
/// fails the test with the input on the first panic.
fn fuzz(
    name: &str,
    seeds: Vec<Vec<u8>>,
    dict: &[&[u8]],
    budget: Duration,
    min_inputs: u64,
    threads: usize,
    target: impl Fn(&[u8]) -> u64 + Sync,
) {
    let seed = seed();
    if let Ok(dir) = std::env::var("RTGATE_FUZZ_SEEDS_DIR") {
        // The seed corpus for `cargo fuzz run <target> <dir>/<target>`.
        let dir = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }
    let started = Instant::now();
    let totals: Vec<(u64, usize, usize)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1) as u64)
            .map(|i| {
                let (seeds, target) = (seeds.clone(), &target);
                let min = min_inputs / threads.max(1) as u64;
                scope.spawn(move || worker(name, seeds, dict, budget, min, seed.wrapping_add(i), target))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    let n: u64 = totals.iter().map(|t| t.0).sum();
    eprintln!(
        "fuzz {name}: {n} inputs in {:.1} s on {threads} thread(s), 0 crashes, corpus {:?}, result shapes {:?}, seed {seed}",
        started.elapsed().as_secs_f64(),
        totals.iter().map(|t| t.1).collect::<Vec<_>>(),
        totals.iter().map(|t| t.2).collect::<Vec<_>>(),
    );
}

/// One fuzzing loop; returns (inputs, corpus size, result shapes).
fn worker(
    name: &str,
    seeds: Vec<Vec<u8>>,
    dict: &[&[u8]],
    budget: Duration,
    min_inputs: u64,
    seed: u64,
    target: &(impl Fn(&[u8]) -> u64 + Sync),
) -> (u64, usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut corpus = seeds;
    let mut shapes = HashSet::new();
    let started = Instant::now();
    let mut n: u64 = 0;
    let run = |input: &[u8], n: u64| -> u64 {
        match catch_unwind(AssertUnwindSafe(|| target(input))) {
            Ok(sig) => sig,
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../fuzz-crashes");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{name}-{seed}-{n}.bin"));
                let _ = std::fs::write(&file, input);
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                panic!(
                    "fuzz {name}: property failed ({why}) on input {:?} (hex {hex}), saved to {}; seed {seed}",
                    String::from_utf8_lossy(input),
                    file.display()
                );
            }
        }
    };
    for (i, s) in corpus.clone().iter().enumerate() {
        shapes.insert(run(s, i as u64));
        n += 1;
    }
    while started.elapsed() < budget || n < min_inputs {
        let pick = rng.random_range(0..corpus.len());
        let mut input = corpus[pick].clone();
        let other = corpus[rng.random_range(0..corpus.len())].clone();
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut rng, &mut input, dict, &other);
        }
        let sig = run(&input, n);
        n += 1;
        if shapes.insert(sig) && corpus.len() < 8192 {
            corpus.push(input);
        }
    }
    (n, corpus.len(), shapes.len())
}

/// Threads for the front-door targets (they mostly wait on sockets):
/// `RTGATE_FUZZ_THREADS`, default 8. With more than one, a server-side
/// failure may be reported on another thread's input: rerun the saved
/// input with `RTGATE_FUZZ_THREADS=1` to confirm.
fn door_threads() -> usize {
    std::env::var("RTGATE_FUZZ_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(8)
}

fn t(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

/// Cursors the server could hand out: single and multi-topic, extreme ids.
fn cursor_seeds() -> Vec<String> {
    let mut c = Cursor::new();
    c.set(&t("a"), MessageId::new(1_700_000_000_000, 3));
    c.set(&t("room:42@x.y-z_"), MessageId::new(u64::MAX, u64::MAX));
    c.set(&t(&"b".repeat(128)), MessageId::ZERO);
    vec![
        Cursor::new().encode(),
        Cursor::single(t("t"), MessageId::new(5, 1)).encode(),
        c.encode(),
        "AQ".into(),
        "AQFhAQE".into(),
        "AQFh__________8B__________8B".into(),
    ]
}

#[test]
fn cursor() {
    let mut seeds: Vec<Vec<u8>> = cursor_seeds().into_iter().map(String::into_bytes).collect();
    // Raw bodies too (the target also base64-encodes its input).
    seeds.push(vec![1, 1, b'a', 1, 1]);
    seeds.push(vec![1, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0]);
    seeds.push(vec![1, 2, b'a', b'b', 0x80, 0x01, 0, 1, b'c', 0, 0]);
    let dict: &[&[u8]] =
        &[b"AQ", b"_", b"-", b"=", b"\x01", b"\x80", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x7f"];
    fuzz("cursor", seeds, dict, env_secs(0.5), 2000, 1, rtgate::fuzz::cursor);
}

#[test]
fn message_id() {
    let seeds: Vec<Vec<u8>> = [
        "0-0",
        "1700000000000-0",
        "18446744073709551615-18446744073709551615",
        "18446744073709551616-0",
        "007-01",
        "-",
        "1-",
        "+1-2",
        "1-2-3",
        "\u{0661}-1",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([vec![0xff; 16], vec![0; 16], [u64::MAX.to_le_bytes(), 0u64.to_le_bytes()].concat()])
    .collect();
    let dict: &[&[u8]] = &[b"-", b"0", b"9", b"18446744073709551615", b" ", b"+"];
    fuzz("message_id", seeds, dict, env_secs(0.5), 2000, 1, rtgate::fuzz::message_id);
}

#[test]
fn ws_frame() {
    let c = Cursor::single(t("t"), MessageId::new(5, 1)).encode();
    let seeds: Vec<Vec<u8>> = [
        r#"{"op":"subscribe","topic":"t","after":"5-1","ref":1}"#.to_owned(),
        r#"{"op":"subscribe","topic":"a:b@c","presence":true,"ref":"x"}"#.to_owned(),
        r#"{"op":"unsubscribe","topic":"t","ref":[1,{"a":null}]}"#.to_owned(),
        r#"{"op":"publish","topic":"t","data":{"a":[1,2.5e3,"x\n\u00e9\ud83d\ude00"]},"ref":2}"#.to_owned(),
        r#"{"op":"publish","topic":"t","data":"0123456789abcdefgh","key":"k","ephemeral":false,"idempotency_key":"i-1"}"#
            .to_owned(),
        r#"{"op":"publish","topic":"t","data":null}"#.to_owned(),
        r#"{"op":"presence","topic":"t","ref":3}"#.to_owned(),
        r#"{"op":"ping","ref":{"deep":[[[[]]]]}}"#.to_owned(),
        r#"{"op":"refresh","token":"a.b.c"}"#.to_owned(),
        format!(r#"{{"op":"subscribe","topic":"t","after":"{c}"}}"#),
        r#"{"op":"dance"}"#.to_owned(),
        "[1]".to_owned(),
        r#"{"op":"subscribe","op":"publish","topic":"t"}"#.to_owned(),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let dict: &[&[u8]] = &[
        b"\"op\"",
        b"\"topic\"",
        b"\"data\"",
        b"\"after\"",
        b"\"ref\"",
        b"\"token\"",
        b"\"publish\"",
        b"\"subscribe\"",
        b"\\u0000",
        b"\\ud800",
        b"\\\"",
        b"null",
        b"1e999",
        b"[[[[[[[[",
        b"{\"a\":",
        b"\xc3\xa9",
    ];
    fuzz("ws_frame", seeds, dict, env_secs(0.5), 2000, 1, rtgate::fuzz::ws_frame);
}

#[test]
fn last_event_id() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for c in cursor_seeds() {
        seeds.push(format!("topic=t&topic=a\n{c}").into_bytes());
        seeds.push(format!("topic=room%3A42%40x.y-z_&lastEventId={c}").into_bytes());
    }
    seeds.push(b"topic=a&topic=a&topic=b&access_token=x&lastEventId=".to_vec());
    seeds.push(b"topic=a%20b\n".to_vec());
    seeds.push(b"\n\x80\xff".to_vec());
    seeds.push("topic=".repeat(70).into_bytes());
    let dict: &[&[u8]] = &[b"topic=", b"&", b"lastEventId=", b"%", b"%2", b"+", b"=", b"\n", b"AQ", b"\t"];
    fuzz("last_event_id", seeds, dict, env_secs(0.5), 2000, 1, rtgate::fuzz::last_event_id);
}

#[test]
fn publish_body() {
    let seeds: Vec<Vec<u8>> = [
        &b"{\"a\":\n1}"[..],
        b" [1, 2, {\"b\": null}]\r\n",
        b"\"\xff\"",
        b"\"\xed\xa0\x80\"",
        b"\"\\ud800\"",
        b"1e400",
        b"-0.0e-0",
        b"\"\xc3\xa9\xf0\x9f\x98\x80\"",
        b"true false",
        b"",
        b"{\"a\":1,}",
        b"\"0123456789012345678901234567890123456789012345678901234567890123\"",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    let dict: &[&[u8]] = &[
        b"\\u",
        b"\\ud83d\\ude00",
        b"\xf0\x9f",
        b"\xe2\x80\xa8",
        b"\"",
        b"[",
        b"{",
        b"\x00",
        b"1e",
        b" \t\r\n",
    ];
    fuzz("publish_body", seeds, dict, env_secs(0.5), 2000, 1, rtgate::fuzz::publish_body);
}

/// HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal header field without indexing, new name (no Huffman).
fn hpack(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An h2c request: preface, SETTINGS, HEADERS (end of headers), optional DATA.
fn h2_request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    let mut block = hpack(":method", method);
    block.extend(hpack(":scheme", "http"));
    block.extend(hpack(":path", path));
    block.extend(hpack(":authority", "fuzz"));
    for (k, v) in headers {
        block.extend(hpack(k, v));
    }
    let end_stream = if body.is_none() { 0x1 } else { 0 };
    out.extend(h2_frame(1, 0x4 | end_stream, 1, &block));
    if let Some(b) = body {
        out.extend(h2_frame(0, 0x1, 1, b));
    }
    out
}

/// A gRPC message frame around a protobuf body.
fn grpc_msg(pb: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(pb.len() as u32).to_be_bytes());
    out.extend_from_slice(pb);
    out
}

fn front_door_seeds() -> Vec<Vec<u8>> {
    let c = Cursor::single(t("t"), MessageId::new(1, 0)).encode();
    let mut seeds: Vec<Vec<u8>> = [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "POST /v1/publish/t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"a\":\n1}".to_owned(),
        "POST /v1/publish/t HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1]\r\n0\r\n\r\n".to_owned(),
        "GET /v1/history/t?after=0-0&limit=5 HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        format!("GET /v1/poll?topic=t&cursor={c}&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("GET /v1/sse?topic=t&topic=u HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {c}\r\n\r\n"),
        "GET /v1/ws?topic=t HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_owned(),
        "GET /metrics HTTP/1.0\r\n\r\n".to_owned(),
        "OPTIONS /v1/publish/t HTTP/1.1\r\nHost: x\r\nOrigin: http://o\r\nAccess-Control-Request-Method: POST\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            .to_owned(),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // A WebSocket upgrade followed by a masked text frame with a publish op.
    let mut ws = seeds[6].clone();
    let op = br#"{"op":"publish","topic":"t","data":[1]}"#;
    ws.extend_from_slice(&[0x81, 0x80 | op.len() as u8, 1, 2, 3, 4]);
    ws.extend(op.iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
    seeds.push(ws);
    seeds.push(PREFACE.to_vec());
    seeds.push(PREFACE[..10].to_vec());
    seeds.push(h2_request("GET", "/healthz", &[], None));
    seeds.push(h2_request(
        "POST",
        "/v1/publish/t",
        &[("content-type", "application/json")],
        Some(b"{\"x\":1}"),
    ));
    // gRPC Publish{topic: "t", data: "[1]"} and Subscribe{topics: ["t"], cursor}.
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    seeds.push(h2_request(
        "POST",
        "/rtgate.v1.Gateway/Publish",
        &grpc,
        Some(&grpc_msg(b"\x0a\x01t\x12\x03[1]")),
    ));
    let mut sub = vec![0x0a, 1, b't', 0x12, c.len() as u8];
    sub.extend_from_slice(c.as_bytes());
    seeds.push(h2_request("POST", "/rtgate.v1.Gateway/Subscribe", &grpc, Some(&grpc_msg(&sub))));
    seeds.push(h2_request("POST", "/grpc.health.v1.Health/Check", &grpc, Some(&grpc_msg(b""))));
    seeds
}

const FRONT_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1",
    b"HTTP/2.0",
    b"Content-Length: 99999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Upgrade: websocket\r\n",
    b"Connection: Upgrade\r\n",
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    b"\x00\x00\x08\x06\x00",
    b"\xff\xff\xff",
    b"%00",
    b"?topic=",
    b"/v1/ws",
    b"/v1/sse",
    b"/v1/poll",
    b"18446744073709551615",
    b"after=",
    b"&cursor=",
];

/// The embedded engine: the server stays up and healthy after any bytes.
#[test]
fn front_door() {
    let mut door = rtgate::fuzz::FrontDoor::start("").unwrap();
    door.check_ready = true;
    fuzz("front_door", front_door_seeds(), FRONT_DICT, env_secs(2.0), 100, door_threads(), |d| door.feed(d));
}

/// The Redis engine (a `redis-server` of the test's own): the same, and no
/// input makes the gateway unready (an id or cursor Redis refuses is the
/// client's error, not an outage; issue 11 item 9).
#[test]
fn front_door_redis() {
    let redis = support::redis::RedisServer::start();
    let mut door = rtgate::fuzz::FrontDoor::start(&redis.config("")).unwrap();
    door.probe("/readyz", Duration::from_secs(20)).unwrap();
    door.check_ready = true;
    let mut seeds = front_door_seeds();
    let max = "18446744073709551615-18446744073709551615";
    seeds.push(format!("GET /v1/history/t?after={max} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes());
    let c = Cursor::single(t("t"), MessageId::new(u64::MAX, u64::MAX)).encode();
    seeds.push(format!("GET /v1/poll?topic=t&cursor={c}&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes());
    fuzz("front_door_redis", seeds, FRONT_DICT, env_secs(2.0), 100, door_threads(), |d| door.feed(d));
}
