//! Server-Sent Events end to end (contract §1, §5, §10): headers and event
//! framing as parsed by a real SSE client library, multi-topic streams,
//! `Last-Event-ID` / `lastEventId` resume while publishing, `event: gap`,
//! heartbeat comments, slow-client disconnect and resume, clean shutdown,
//! HTTP/2, CORS, bad requests, and the Redis engine across two processes.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::post_publish as publish;
use support::redis::RedisServer;
use support::sse::{assert_quiet, sse_path, Sse};
use support::*;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, EventStream};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

// ---------------------------------------------------------------- helpers

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes an HTTP/1.1 chunked body that may be cut short anywhere.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    while let Some(eol) = find(b, b"\r\n") {
        let line = std::str::from_utf8(&b[..eol]).expect("chunk size line");
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        b = &b[eol + 2..];
        if size == 0 {
            break;
        }
        if b.len() < size {
            out.extend_from_slice(b);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size..];
        if b.len() < 2 {
            break;
        }
        b = &b[2..];
    }
    out
}

/// Parses a complete SSE body with the library (an incomplete trailing event
/// is dropped, as a browser does when the connection breaks).
async fn parse_events(body: Vec<u8>) -> Vec<Event> {
    EventStream::new(futures_util::stream::iter([Ok::<_, Infallible>(body)]))
        .map(|e| e.expect("SSE parse"))
        .collect()
        .await
}

// ---------------------------------------------------------------- framing

#[tokio::test]
async fn headers_retry_hint_and_message_events() {
    let s = TestServer::start("[sse]\nretry = \"1500ms\"\n").await;
    let t = "sse.frame";
    let mut c = Sse::open(&s, &sse_path(&[t]), None).await;
    assert_eq!(c.header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(c.header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(c.header("x-accel-buffering").as_deref(), Some("no"));
    assert_eq!(c.version, reqwest::Version::HTTP_11);

    // Published after the 200: the stream had joined already.
    let bodies = [r#"{"b":1,"a":[1,2,{"z":null}],"s":"é\"x"}"#, r#""just a string""#, "42", "null"];
    let mut published = vec![];
    for b in bodies {
        let (status, reply) = s.publish_raw(t, b, None).await;
        assert_eq!(status, 200, "{reply}");
        published.push(reply);
    }
    let mut ids = vec![];
    for (i, b) in bodies.iter().enumerate() {
        let ev = c.next().await;
        // No `event:` field: the library reports the default type.
        assert_eq!(ev.event, "message", "{ev:?}");
        check_cursor(&ev.id);
        let v: Value = serde_json::from_str(&ev.data).expect("json");
        check_shape(&v);
        assert_eq!(v["topic"], t);
        assert_eq!(v["id"], published[i]["id"]);
        assert_eq!(v["ts"], published[i]["ts"]);
        assert_eq!(v["data"], serde_json::from_str::<Value>(b).unwrap());
        // Forwarded as the bytes the publisher sent (key order, escapes).
        assert!(ev.data.contains(&format!("\"data\":{b}")), "data not verbatim: {}", ev.data);
        ids.push(ev.id);
    }
    assert!(
        published.windows(2).all(|w| pid(w[0]["id"].as_str().unwrap()) < pid(w[1]["id"].as_str().unwrap())),
        "ids increase"
    );
    // Each event's id is the cursor after it: distinct, and resuming from
    // the second one gets exactly the last two.
    assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), ids.len());
    let mut r = Sse::open(&s, &sse_path(&[t]), Some(&ids[1])).await;
    let rest = r.messages(2).await;
    assert_eq!(rest[0].1["id"], published[2]["id"]);
    assert_eq!(rest[1].1["id"], published[3]["id"]);
    assert_eq!(rest[0].0, ids[2]);
    assert_eq!(rest[1].0, ids[3]);

    // Byte level: the retry hint comes first, then one `id:` + `data:`
    // event per message, with no `event:` line at all.
    let raw = c.raw_text();
    assert!(raw.starts_with("retry: 1500\n\n"), "retry hint not first: {raw:?}");
    let blocks: Vec<&str> = raw["retry: 1500\n\n".len()..].split_terminator("\n\n").collect();
    assert_eq!(blocks.len(), 4, "{raw:?}");
    for (block, id) in blocks.iter().zip(&ids) {
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines.len(), 2, "{block:?}");
        assert_eq!(lines[0], format!("id: {id}"));
        assert!(lines[1].starts_with("data: {"), "{block:?}");
    }
    assert!(!raw.contains("event:"), "{raw:?}");
    s.stop().await;
}

/// Pretty-printed JSON (raw line breaks between tokens, as `\n`, `\r\n`
/// or `\r`) goes out as several `data:` lines, which a client joins back
/// into the same JSON; written as one line, everything after the first
/// break would be lost and the cursor would move past it.
#[tokio::test]
async fn line_breaks_in_data_arrive_whole() {
    let s = TestServer::start("").await;
    let t = "sse.nl";
    let mut c = Sse::open(&s, &sse_path(&[t]), None).await;
    let bodies = ["{\"a\":\n1}", "[\r\n  1,\r\n  2\r\n]", "{\"s\":\"x\\ny\",\r\"b\":\n\n true}"];
    let mut published = vec![];
    for b in bodies {
        let (status, reply) = s.publish_raw(t, b, None).await;
        assert_eq!(status, 200, "{reply}");
        published.push(reply);
    }
    for (b, p) in bodies.iter().zip(&published) {
        let (_, v) = c.message().await;
        assert_eq!(v["id"], p["id"]);
        assert_eq!(v["data"], serde_json::from_str::<Value>(b).unwrap(), "{v}");
    }
    // Byte level: no bare line anywhere.
    let raw = c.raw_text();
    assert!(!raw.contains('\r'), "a bare CR would end an SSE line: {raw:?}");
    assert!(
        raw.split_terminator("\n\n")
            .skip(1)
            .all(|block| block.lines().all(|l| l.starts_with("id: ") || l.starts_with("data: "))),
        "every line of every event is a field: {raw:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn multi_topic_stream_and_cursor() {
    let s = TestServer::start("").await;
    let (ta, tb) = ("sse.mt.a", "sse.mt.b");
    // A repeated topic is one subscription.
    let mut c = Sse::open(&s, "/v1/sse?topic=sse.mt.a&topic=sse.mt.b&topic=sse.mt.a", None).await;
    let order = [ta, tb, tb, ta, tb, ta];
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, t) in order.iter().enumerate() {
        let id = s.publish(t, &format!(r#"{{"i":{i}}}"#)).await;
        want.entry(t.to_string()).or_default().push(id);
    }
    let got = c.messages(order.len()).await;
    let vals: Vec<Value> = got.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(by_topic(&vals), want, "each topic complete and in order");

    // Every event id names both topics: resuming from any of them gets
    // exactly what came after it, on both topics.
    let mut resumed = vec![];
    for k in 0..got.len() {
        let mut r = Sse::open(&s, &sse_path(&[ta, tb]), Some(&got[k].0)).await;
        let rest = r.messages(got.len() - 1 - k).await;
        let rest: Vec<Value> = rest.into_iter().map(|(_, v)| v).collect();
        assert_eq!(by_topic(&rest), by_topic(&vals[k + 1..]), "resume after event {k}");
        resumed.push(r);
    }
    let mut clients: Vec<&mut Sse> = resumed.iter_mut().collect();
    clients.push(&mut c);
    assert_quiet(&s, &[ta, tb], &mut clients).await;
    s.stop().await;
}

// ---------------------------------------------------------------- resume

#[derive(Clone, Copy, Debug)]
enum ResumeBy {
    /// `Last-Event-ID` header (what `EventSource` sends on reconnect).
    Header,
    /// `?lastEventId=` query parameter.
    Query,
}

/// Client A reads some events of a two-topic stream and leaves while a
/// publisher alternates between the topics; B resumes from A's last event
/// id while the publisher keeps going and must get exactly the rest of each
/// topic, in order, with no duplicate.
async fn resume_while_publishing(engine: Engine<'_>, toml: &str, by: ResumeBy) {
    const A_READS: usize = 37;
    let total = engine.pick(600, 300);
    let pause_at = total / 3;
    assert!(pause_at > A_READS);
    let s = TestServer::start(&engine.config(toml)).await;
    let (ta, tb) = ("sse.res.a", "sse.res.b");
    let path = sse_path(&[ta, tb]);
    let mut a = Sse::open(&s, &path, None).await;

    let (go_tx, go_rx) = oneshot::channel::<()>();
    let http = s.http.clone();
    let base = s.url("/v1/publish/");
    let publisher = tokio::spawn(async move {
        let mut go = Some(go_rx);
        let mut published = Vec::with_capacity(total);
        for i in 0..total {
            if i == pause_at {
                tokio::time::timeout(WAIT, go.take().unwrap()).await.expect("go timed out").expect("go");
            }
            let t = if i % 2 == 0 { ta } else { tb };
            let id = publish(&http, &format!("{base}{t}"), format!(r#"{{"i":{i}}}"#)).await;
            published.push((t.to_owned(), id));
        }
        published
    });

    let got_a = a.messages(A_READS).await;
    let last = got_a.last().unwrap().0.clone();
    drop(a);
    go_tx.send(()).expect("publisher alive");

    let mut b = match by {
        ResumeBy::Header => Sse::open(&s, &path, Some(&last)).await,
        ResumeBy::Query => Sse::open(&s, &format!("{path}&lastEventId={last}"), None).await,
    };
    let published = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher timed out")
        .expect("publisher");
    let index = publish_index(&published);
    // A saw a prefix of each topic.
    let a_vals: Vec<Value> = got_a.iter().map(|(_, v)| v.clone()).collect();
    let expected = rest_after(&published, &by_topic(&a_vals));
    let n: usize = expected.values().map(Vec::len).sum();
    assert_eq!(n, total - A_READS);

    let got_b = b.messages(n).await;
    let b_vals: Vec<Value> = got_b.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(by_topic(&b_vals), expected, "B resumes exactly after {last}");
    for v in &b_vals {
        let i = index[&(v["topic"].as_str().unwrap(), v["id"].as_str().unwrap())];
        assert_eq!(v["data"], json!({"i": i}));
    }
    assert_quiet(&s, &[ta, tb], &mut [&mut b]).await;
    s.stop().await;
}

crate::engine_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    resume_last_event_id_header_while_publishing, redis_resume_last_event_id_header_while_publishing
        => |engine| resume_while_publishing(engine, "", ResumeBy::Header)
}

crate::engine_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    resume_last_event_id_query_while_publishing_small_pages, redis_resume_last_event_id_query_while_publishing
        => |engine| resume_while_publishing(engine, "[history]\nreplay_page = 7\n", ResumeBy::Query)
}

/// History trimmed past the resume point: `event: gap` with `{topic, after,
/// oldest}`, then the retained messages; the gap event's id is past the gap,
/// so resuming from it does not report the gap again.
async fn gap_event(engine: Engine<'_>) {
    let s = TestServer::start(&engine.config("[history]\nmax_len = 5\n")).await;
    let (t, other) = ("sse.gap", "sse.gap.other");
    let path = sse_path(&[t, other]);
    let mut a = Sse::open(&s, &path, None).await;
    let mut ids = vec![s.publish(t, r#"{"n":0}"#).await];
    let (cursor0, m0) = a.message().await;
    assert_eq!(m0["id"], ids[0].as_str());
    drop(a);
    for n in 1..=10 {
        ids.push(s.publish(t, &format!(r#"{{"n":{n}}}"#)).await);
    }
    let other_id = s.publish(other, r#"{"o":1}"#).await;

    let mut b = Sse::open(&s, &path, Some(&cursor0)).await;
    let gap = b.next().await;
    assert_eq!(gap.event, "gap", "{gap:?}");
    check_cursor(&gap.id);
    let g: Value = serde_json::from_str(&gap.data).expect("gap json");
    assert_eq!(g, json!({"topic": t, "after": ids[0], "oldest": ids[6]}), "gap data");
    let rest: Vec<Value> = b.messages(6).await.into_iter().map(|(_, v)| v).collect();
    let mut want = BTreeMap::new();
    want.insert(t.to_owned(), ids[6..].to_vec());
    want.insert(other.to_owned(), vec![other_id.clone()]);
    assert_eq!(by_topic(&rest), want);
    for v in &rest {
        if v["topic"] == t {
            let n = ids.iter().position(|i| v["id"] == i.as_str()).unwrap();
            assert_eq!(v["data"], json!({ "n": n }));
        }
    }

    // Resuming from the gap event's id: no second gap, same messages.
    let mut c = Sse::open(&s, &path, Some(&gap.id)).await;
    let again: Vec<Value> = c.messages(6).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(by_topic(&again), want);
    assert_quiet(&s, &[t, other], &mut [&mut b, &mut c]).await;
    s.stop().await;
}

crate::engine_tests! {
    #[tokio::test]
    gap_event_after_trim, redis_gap_event_after_trim => gap_event
}

// ---------------------------------------------------------------- heartbeat

#[tokio::test]
async fn heartbeat_comments() {
    const PING: &str = ": ping\n\n";
    let s = TestServer::start("[heartbeat]\ninterval = \"200ms\"\ntimeout = \"2s\"\n").await;
    let t = "sse.hb";
    let started = Instant::now();
    let res = tokio::time::timeout(WAIT, reqwest::Client::new().get(s.url(&sse_path(&[t]))).send())
        .await
        .expect("connect timed out")
        .expect("connect");
    assert_eq!(res.status().as_u16(), 200);
    let mut body = Box::pin(res.bytes_stream());
    let mut raw = String::new();
    async fn read_until(
        body: &mut (impl Stream<Item = reqwest::Result<Bytes>> + Unpin),
        raw: &mut String,
        done: impl Fn(&str) -> bool,
    ) {
        while !done(raw) {
            let chunk = tokio::time::timeout(WAIT, body.next())
                .await
                .expect("timed out reading the SSE body")
                .expect("SSE body ended")
                .expect("SSE body error");
            raw.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }
    // Three pings on a quiet stream, no sooner than three intervals.
    read_until(&mut body, &mut raw, |r| r.matches(PING).count() >= 3).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(600), "pings faster than the interval: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "pings too slow: {elapsed:?}");

    // A message, then pings continue after it.
    let id = s.publish(t, r#"{"hb":1}"#).await;
    read_until(&mut body, &mut raw, |r| r.contains("data: ")).await;
    read_until(&mut body, &mut raw, |r| r.rfind("data: ").is_some_and(|i| r[i..].matches(PING).count() >= 2))
        .await;

    // Byte level: retry hint, then only `: ping` comments and the one event.
    let rest = raw.strip_prefix("retry: 2000\n\n").unwrap_or_else(|| panic!("no retry hint first: {raw:?}"));
    let blocks: Vec<&str> = rest.split_terminator("\n\n").collect();
    let pings = blocks.iter().filter(|b| **b == ": ping").count();
    assert!(pings >= 5, "{raw:?}");
    assert_eq!(pings + 1, blocks.len(), "only pings and one event: {raw:?}");
    // The parser drops the comments: one event, the message.
    let events = parse_events(raw.clone().into_bytes()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event, "message");
    let v: Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["data"], json!({"hb": 1}));
    s.stop().await;
}

// ---------------------------------------------------------------- slow client

/// A raw HTTP/1.1 SSE request from a socket with a tiny receive buffer;
/// returns once the response headers arrived (the server has joined the
/// topics by then), with the bytes read so far.
async fn stalled_client(s: &TestServer, path: &str) -> (TcpStream, Vec<u8>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c =
        tokio::time::timeout(WAIT, sock.connect(s.addr)).await.expect("connect timed out").expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", s.addr);
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![];
    while find(&buf, b"\r\n\r\n").is_none() {
        let mut chunk = [0u8; 512];
        let n = tokio::time::timeout(WAIT, c.read(&mut chunk))
            .await
            .expect("headers timed out")
            .expect("read headers");
        assert!(n > 0, "connection closed before headers");
        buf.extend_from_slice(&chunk[..n]);
    }
    (c, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_disconnected_and_resumes_without_loss() {
    const N: usize = 400;
    const PAD: usize = 32 * 1024;
    let s = TestServer::start("[limits]\noutbox_capacity = 8\nmax_message_bytes = 1048576\n").await;
    let t = "sse.slow";
    let path = sse_path(&[t]);
    let slow_before = s.scrape().await.slow("sse");

    let (mut stalled, head) = stalled_client(&s, &path).await;
    let head_end = find(&head, b"\r\n\r\n").unwrap() + 4;
    let head_text = String::from_utf8_lossy(&head[..head_end]).to_ascii_lowercase();
    assert!(head_text.starts_with("http/1.1 200"), "{head_text}");
    assert!(head_text.contains("transfer-encoding: chunked"), "{head_text}");

    // A fast client reads everything meanwhile. The publisher waits for it
    // after each message, so it never lags, while the stalled client's
    // buffers fill up.
    let mut fast = Sse::open(&s, &path, None).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        for _ in 0..N {
            let (id, v) = fast.message().await;
            seen_tx.send(id_of(&v)).unwrap();
            got.push((id, v));
        }
        (fast, got)
    });

    let pad = "x".repeat(PAD);
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        let id = s.publish(t, &format!(r#"{{"i":{i},"pad":"{pad}"}}"#)).await;
        let seen = tokio::time::timeout(WAIT, seen_rx.recv())
            .await
            .expect("the fast client fell behind")
            .expect("the fast client stopped");
        assert_eq!(seen, id);
        published.push(id);
    }
    let (mut fast, got) =
        tokio::time::timeout(WAIT, reader).await.expect("fast client timed out").expect("fast client");
    let fast_ids: Vec<String> = got.iter().map(|(_, v)| id_of(v)).collect();
    assert_eq!(fast_ids, published, "the fast client got everything, in order");

    // The stalled client's connection was ended: reading now drains what
    // the kernel buffered and then hits end of stream (or a reset).
    let mut bytes = head[head_end..].to_vec();
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stalled.read(&mut buf))
            .await
            .expect("the stalled client's connection was not ended")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    let events = parse_events(dechunk(&bytes)).await;
    let k = events.len();
    assert!(k < N, "the stalled client was not cut off ({k} events)");
    assert!(k > 0, "the stalled client got no complete event before the cut");
    let prefix: Vec<String> = events
        .iter()
        .map(|e| {
            assert_eq!(e.event, "message");
            id_of(&serde_json::from_str::<Value>(&e.data).unwrap())
        })
        .collect();
    assert_eq!(prefix[..], published[..k], "what it got is a prefix");

    // It comes back like a browser: Last-Event-ID = last complete event.
    let last = events.last().map(|e| e.id.clone());
    let mut back = Sse::open(&s, &path, last.as_deref()).await;
    let rest: Vec<String> = back.messages(N - k).await.iter().map(|(_, v)| id_of(v)).collect();
    assert_eq!(rest[..], published[k..], "the rest, with no loss");
    assert_quiet(&s, &[t], &mut [&mut back, &mut fast]).await;

    // The counter is recorded as the connection is torn down, which may
    // trail the socket's end by a moment: poll it, bounded.
    let deadline = Instant::now() + Duration::from_secs(3);
    let slow_after = loop {
        let v = s.scrape().await.slow("sse");
        if v > slow_before || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        slow_after - slow_before,
        1.0,
        "rtgate_slow_consumer_disconnects_total{{transport=\"sse\"}} must count the stalled SSE client (GET {path}, outbox_capacity 8, {N} x 32 KiB; it was cut off after {k} events)"
    );
    s.stop().await;
}

// ---------------------------------------------------------------- shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_cleanly() {
    let s = TestServer::start("").await;
    let (ta, tb) = ("sse.down.a", "sse.down.b");
    let mut one = Sse::open(&s, &sse_path(&[ta]), None).await;
    let mut two = Sse::open(&s, &sse_path(&[ta, tb]), None).await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(s.publish(ta, &format!(r#"{{"i":{i}}}"#)).await);
    }
    let got1: Vec<String> = one.messages(5).await.iter().map(|(_, v)| id_of(v)).collect();
    let got2: Vec<String> = two.messages(5).await.iter().map(|(_, v)| id_of(v)).collect();
    assert_eq!(got1, ids);
    assert_eq!(got2, ids);

    let started = Instant::now();
    let stop = tokio::spawn(s.stop());
    for c in [&mut one, &mut two] {
        let extra = c.end().await;
        assert!(extra.is_empty(), "nothing after the last message: {extra:?}");
        let raw = c.raw_text();
        assert!(raw.ends_with("\n\n"), "stream ended mid-event: {raw:?}");
    }
    tokio::time::timeout(WAIT, stop).await.expect("stop timed out").expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "streams should end at once, not at the grace deadline: {:?}",
        started.elapsed()
    );
}

/// Redis engine: a stream ended by shutdown keeps its cursor; another
/// process on the same Redis resumes it with no loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_shutdown_then_resume_on_another_process() {
    let r = RedisServer::start();
    let cfg = r.config("");
    let a = TestServer::start(&cfg).await;
    let t = "sse.down.redis";
    let mut c = Sse::open(&a, &sse_path(&[t]), None).await;
    let mut ids = vec![];
    for i in 0..3 {
        ids.push(a.publish(t, &format!(r#"{{"i":{i}}}"#)).await);
    }
    let got = c.messages(3).await;
    assert_eq!(got.iter().map(|(_, v)| id_of(v)).collect::<Vec<_>>(), ids);
    a.stop().await;
    assert!(c.end().await.is_empty());
    let last = got.last().unwrap().0.clone();

    let b = TestServer::start(&cfg).await;
    let mut more = vec![];
    for i in 3..6 {
        more.push(b.publish(t, &format!(r#"{{"i":{i}}}"#)).await);
    }
    let mut c2 = Sse::open(&b, &sse_path(&[t]), Some(&last)).await;
    let rest = c2.messages(3).await;
    assert_eq!(rest.iter().map(|(_, v)| id_of(v)).collect::<Vec<_>>(), more);
    for (i, (_, v)) in rest.iter().enumerate() {
        assert_eq!(v["data"], json!({"i": 3 + i}));
    }
    assert_quiet(&b, &[t], &mut [&mut c2]).await;
    b.stop().await;
}

// ---------------------------------------------------------------- HTTP/2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge() {
    let s = TestServer::start("").await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let (ta, tb) = ("sse.h2.a", "sse.h2.b");
    // Two streams multiplexed on one HTTP/2 connection.
    let mut a = Sse::open_with(&h2, &s.url(&sse_path(&[ta])), None).await;
    let mut ab = Sse::open_with(&h2, &s.url(&sse_path(&[ta, tb])), None).await;
    for c in [&a, &ab] {
        assert_eq!(c.version, reqwest::Version::HTTP_2);
        assert_eq!(c.header("content-type").as_deref(), Some("text/event-stream"));
        assert_eq!(c.header("cache-control").as_deref(), Some("no-cache"));
    }
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..20 {
        let t = if i % 3 == 0 { tb } else { ta };
        let id = publish(&h2, &s.url(&format!("/v1/publish/{t}")), format!(r#"{{"i":{i}}}"#)).await;
        want.entry(t.to_owned()).or_default().push(id);
    }
    let got_a: Vec<Value> = a.messages(want[ta].len()).await.into_iter().map(|(_, v)| v).collect();
    let got_ab = ab.messages(20).await;
    let ab_ids: Vec<String> = got_ab.iter().map(|(id, _)| id.clone()).collect();
    let got_ab: Vec<Value> = got_ab.into_iter().map(|(_, v)| v).collect();
    assert_eq!(by_topic(&got_a)[ta], want[ta]);
    assert_eq!(by_topic(&got_ab), want);

    // Resume over HTTP/2 from the middle of the two-topic stream.
    let k = 9;
    let mut r = Sse::open_with(&h2, &s.url(&sse_path(&[ta, tb])), Some(&ab_ids[k])).await;
    let rest: Vec<Value> = r.messages(20 - k - 1).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(by_topic(&rest), by_topic(&got_ab[k + 1..]));
    assert_quiet(&s, &[ta, tb], &mut [&mut ab, &mut r]).await;
    let (_, marker) = a.message().await;
    assert_eq!(marker["topic"], ta);
    assert_eq!(marker["data"], json!({"marker": true}));
    assert!(a.raw_text().starts_with("retry: 2000\n\n"));
    s.stop().await;
}

// ---------------------------------------------------------------- CORS

#[tokio::test]
async fn cors_allowed_and_disallowed_origins() {
    let s = TestServer::start("[http]\ncors_origins = [\"http://a.example\"]\n").await;
    let url = s.url("/v1/sse?topic=sse.cors");
    let http = reqwest::Client::new();
    let acao = |h: &reqwest::header::HeaderMap| {
        h.get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
    };

    // Preflight (EventSource with a Last-Event-ID header is not "simple").
    for (origin, allowed) in [("http://a.example", true), ("http://b.example", false)] {
        let res = tokio::time::timeout(
            WAIT,
            http.request(reqwest::Method::OPTIONS, &url)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "GET")
                .header("Access-Control-Request-Headers", "last-event-id")
                .send(),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(res.status().is_success(), "preflight {origin}: {}", res.status());
        let h = res.headers();
        if allowed {
            assert_eq!(acao(h).as_deref(), Some(origin));
            let methods = h["access-control-allow-methods"].to_str().unwrap().to_ascii_uppercase();
            assert!(methods.contains("GET"), "{methods}");
            let allow = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
            assert!(allow.contains("last-event-id"), "{allow}");
        } else {
            assert_eq!(acao(h), None, "preflight for a disallowed origin");
        }
    }

    // The stream itself.
    for (origin, allowed) in [("http://a.example", true), ("http://b.example", false)] {
        let res = tokio::time::timeout(WAIT, http.get(&url).header("Origin", origin).send())
            .await
            .unwrap()
            .unwrap();
        let h = res.headers().clone();
        if allowed {
            assert_eq!(res.status().as_u16(), 200);
            assert_eq!(h["content-type"], "text/event-stream");
            assert_eq!(acao(&h).as_deref(), Some(origin));
            let vary = h
                .get_all("vary")
                .iter()
                .map(|v| v.to_str().unwrap().to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(",");
            assert!(vary.contains("origin"), "Vary: {vary}");
        } else {
            assert_eq!(acao(&h), None, "GET from a disallowed origin");
        }
        drop(res);
    }

    // Default config: any origin.
    let any = TestServer::start("").await;
    let res = tokio::time::timeout(
        WAIT,
        http.get(any.url("/v1/sse?topic=sse.cors")).header("Origin", "http://c.example").send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(acao(res.headers()).as_deref(), Some("*"));
    drop(res);
    any.stop().await;
    s.stop().await;
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn bad_requests() {
    let s = TestServer::start("").await;
    let http = reqwest::Client::new();
    let good = {
        // A real cursor, to show only the bad ones fail.
        let mut c = Sse::open(&s, "/v1/sse?topic=sse.err", None).await;
        s.publish("sse.err", "1").await;
        c.message().await.0
    };
    let long = "a".repeat(129);
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        ("/v1/sse?topic=bad%20topic".into(), None, "bad_topic"),
        ("/v1/sse?topic=ok&topic=b%2Fd".into(), None, "bad_topic"),
        (format!("/v1/sse?topic={long}"), None, "bad_topic"),
        ("/v1/sse?topic=".into(), None, "bad_topic"),
        ("/v1/sse".into(), None, "bad_request"),
        ("/v1/sse?lastEventId=abc".into(), None, "bad_request"),
        ("/v1/sse?topic=sse.err".into(), Some("!!not-a-cursor!!"), "bad_request"),
        ("/v1/sse?topic=sse.err".into(), Some("AAAA"), "bad_request"),
        ("/v1/sse?topic=sse.err&lastEventId=zz%20z".into(), None, "bad_request"),
        ("/v1/sse?topic=sse.err&lastEventId=Zm9v".into(), None, "bad_request"),
    ];
    for (path, header, code) in cases {
        let mut req = http.get(s.url(&path));
        if let Some(h) = header {
            req = req.header("Last-Event-ID", h);
        }
        let res = tokio::time::timeout(WAIT, req.send()).await.unwrap().unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.expect("JSON error body");
        assert_eq!(status, 400, "GET {path} (Last-Event-ID {header:?}): {body}");
        assert_eq!(body["error"]["code"], code, "GET {path}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    // The good cursor still works, and the server is fine.
    let mut c = Sse::open(&s, "/v1/sse?topic=sse.err", Some(&good)).await;
    assert_quiet(&s, &["sse.err"], &mut [&mut c]).await;
    s.stop().await;
}

// ---------------------------------------------------------------- two processes

/// Two gateways on one Redis: publish on A, stream on B (and on A); a cursor
/// from B's stream resumes on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_on_a_stream_on_b() {
    const N: usize = 200;
    let r = RedisServer::start();
    let (a, b) = r.two_servers("").await;
    let (tx, ty) = ("sse.two.x", "sse.two.y");
    let path = sse_path(&[tx, ty]);
    let mut on_b = Sse::open(&b, &path, None).await;
    let mut on_a = Sse::open(&a, &path, None).await;

    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut all = vec![];
    for i in 0..N {
        let t = if i % 2 == 0 { tx } else { ty };
        let id = a.publish(t, &format!(r#"{{"i":{i}}}"#)).await;
        want.entry(t.to_owned()).or_default().push(id.clone());
        all.push((t, id));
    }
    let got_b = on_b.messages(N).await;
    let b_vals: Vec<Value> = got_b.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(by_topic(&b_vals), want, "B got every message of A, in order");
    for v in &b_vals {
        let i = all.iter().position(|(t, id)| v["topic"] == *t && v["id"] == id.as_str()).unwrap();
        assert_eq!(v["data"], json!({ "i": i }));
    }
    let a_vals: Vec<Value> = on_a.messages(N).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(by_topic(&a_vals), want);

    // B's event id after message k resumes on A with exactly the rest.
    let k = N / 2 + 1;
    let mut resumed = Sse::open(&a, &path, Some(&got_b[k - 1].0)).await;
    let rest: Vec<Value> = resumed.messages(N - k).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(by_topic(&rest), by_topic(&b_vals[k..]));
    assert_quiet(&b, &[tx, ty], &mut [&mut resumed, &mut on_a, &mut on_b]).await;
    a.stop().await;
    b.stop().await;
}
