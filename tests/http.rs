//! HTTP API (contract §2, §3, §10) against the real server on a real socket.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- helpers

/// A full HTTP answer: status, lower-cased headers, raw body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().expect("ascii header").to_owned())
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let res = tokio::time::timeout(WAIT, req.send()).await.expect("request timed out").expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = tokio::time::timeout(WAIT, res.bytes()).await.expect("body timed out").expect("body").to_vec();
    Answer { status, headers, body }
}

async fn post(s: &TestServer, path: &str, body: impl Into<reqwest::Body>, key: Option<&str>) -> Answer {
    let mut req = s.http.post(s.url(path)).body(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    send(req).await
}

async fn get(s: &TestServer, path: &str) -> Answer {
    send(s.http.get(s.url(path))).await
}

/// Asserts the contract's error shape: status, JSON content type, body
/// exactly `{"error":{"code":C,"message":TEXT}}`.
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "status; body: {}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type").as_deref(), Some("application/json"), "content-type");
    let v = a.json();
    let top = v.as_object().expect("object body");
    assert_eq!(top.len(), 1, "only `error` at top level: {v}");
    let err = top["error"].as_object().expect("error object");
    let mut keys: Vec<&str> = err.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message"], "error keys: {v}");
    assert_eq!(err["code"], code, "code: {v}");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "message is non-empty text: {v}");
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or_else(|| panic!("id {id:?} is not <ms>-<seq>"));
    assert!(!ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()), "id {id:?}");
    assert!(!seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()), "id {id:?}");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// Publishes `body` to `topic`, asserting a 200; returns the id.
async fn publish_ok(s: &TestServer, topic: &str, body: &str) -> String {
    let a = post(s, &format!("/v1/publish/{topic}"), body.to_owned(), None).await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()["id"].as_str().expect("id").to_owned()
}

async fn publish_n(s: &TestServer, topic: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(publish_ok(s, topic, &i.to_string()).await);
    }
    ids
}

/// GET /v1/history/...; asserts 200 and returns (ids, data as JSON, truncated).
async fn history(s: &TestServer, topic: &str, query: &str) -> (Vec<String>, Vec<Value>, bool) {
    let a = get(s, &format!("/v1/history/{topic}{query}")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type").as_deref(), Some("application/json"));
    let v = a.json();
    let msgs = v["messages"].as_array().unwrap_or_else(|| panic!("messages array: {v}"));
    let ids = msgs.iter().map(|m| m["id"].as_str().expect("id").to_owned()).collect();
    let data = msgs.iter().map(|m| m["data"].clone()).collect();
    for m in msgs {
        assert_eq!(m["topic"], topic);
        assert!(m["ts"].as_u64().is_some(), "ts: {m}");
    }
    (ids, data, v["truncated"].as_bool().unwrap_or_else(|| panic!("truncated bool: {v}")))
}

/// A raw HTTP/1.1 exchange over a plain TCP socket (for a chunked body,
/// which the test's reqwest build cannot stream). Returns (status, body).
async fn raw_http(s: &TestServer, request: &[u8]) -> (u16, Vec<u8>) {
    let mut sock = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(s.addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    tokio::time::timeout(WAIT, sock.write_all(request)).await.expect("write timed out").expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the head is complete and the body's Content-Length arrived.
    loop {
        let n =
            tokio::time::timeout(WAIT, sock.read(&mut chunk)).await.expect("read timed out").expect("read");
        if n > 0 {
            buf.extend_from_slice(&chunk[..n]);
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("content-length"))
                .expect("answer has content-length");
            if buf.len() >= end + 4 + len || n == 0 {
                let status = head.split(' ').nth(1).expect("status").parse().expect("status code");
                return (status, buf[end + 4..(end + 4 + len).min(buf.len())].to_vec());
            }
        }
        assert!(n > 0, "connection closed before a full answer: {}", String::from_utf8_lossy(&buf));
    }
}

fn chunked_publish(s: &TestServer, topic: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/publish/{topic} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.addr
    )
    .into_bytes();
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

// ---------------------------------------------------------------- publish

#[tokio::test]
async fn publish_answers_topic_id_ts_with_increasing_ids() {
    let s = TestServer::start("").await;
    let mut prev: Option<(u64, u64)> = None;
    let mut ids = vec![];
    for i in 0..20 {
        let before = now_ms();
        let a = post(&s, "/v1/publish/orders.eu:1@x-y_z", format!("{{\"n\":{i}}}"), None).await;
        let after = now_ms();
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("content-type").as_deref(), Some("application/json"));
        let v = a.json();
        let obj = v.as_object().expect("object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["id", "topic", "ts"], "{v}");
        assert_eq!(v["topic"], "orders.eu:1@x-y_z");
        let ts = v["ts"].as_u64().expect("ts is an integer");
        assert!(before <= ts && ts <= after, "ts {ts} not within [{before}, {after}]");
        let id = v["id"].as_str().expect("id string");
        let parsed = parse_id(id);
        if let Some(p) = prev {
            assert!(parsed > p, "id {id} not after {p:?}");
        }
        prev = Some(parsed);
        ids.push(id.to_owned());
    }
    let (hist, data, truncated) = history(&s, "orders.eu:1@x-y_z", "").await;
    assert_eq!(hist, ids);
    assert_eq!(data, (0..20).map(|i| serde_json::json!({ "n": i })).collect::<Vec<_>>());
    assert!(!truncated);
    s.stop().await;
}

#[tokio::test]
async fn data_is_stored_and_served_verbatim() {
    let s = TestServer::start("").await;
    // Odd key order, inner whitespace, escapes, unicode, big numbers: all kept
    // byte for byte (only whitespace around the value is not part of it).
    let inner = r#"{"z": 1,  "a" :[1 , 2.50, 1e3, {"y":null ,"b":true}], "s":"h\u00e9llo \"q\" é", "big": 123456789012345678901234567890}"#;
    let id = publish_ok(&s, "verbatim", &format!(" \n{inner}\r\n ")).await;
    let others = ["null", "\"just a string\"", "0", "[ ]", "-1.50E+2"];
    for o in others {
        publish_ok(&s, "verbatim", o).await;
    }
    let a = get(&s, "/v1/history/verbatim").await;
    assert_eq!(a.status, 200);
    let text = a.text();
    assert!(text.contains(&format!("\"data\":{inner}")), "object not verbatim in {text}");
    for o in others {
        assert!(text.contains(&format!("\"data\":{o}")), "{o} not verbatim in {text}");
    }
    let v = a.json();
    assert_eq!(v["messages"][0]["id"], id.as_str());
    assert_eq!(v["messages"].as_array().expect("array").len(), 1 + others.len());
    s.stop().await;
}

#[tokio::test]
async fn malformed_or_empty_body_is_bad_request() {
    let s = TestServer::start("").await;
    for body in ["{", "{\"a\":1,}", "nope", "{\"a\":1} trailing", "[1,2", "'single'", ""] {
        let a = post(&s, "/v1/publish/t", body.to_owned(), None).await;
        assert_error(&a, 400, "bad_request");
    }
    // Whitespace only is empty too.
    let a = post(&s, "/v1/publish/t", " \r\n\t ".to_owned(), None).await;
    assert_error(&a, 400, "bad_request");
    // Nothing was stored.
    let (ids, _, _) = history(&s, "t", "").await;
    assert!(ids.is_empty(), "{ids:?}");
    s.stop().await;
}

/// Bytes that are not UTF-8 inside a JSON string: serde_json alone would
/// let them through, and no strict client could read the message back.
#[tokio::test]
async fn data_that_is_not_utf8_is_bad_request() {
    let s = TestServer::start("").await;
    // The last three escape a lone surrogate: JSON by its grammar, but no
    // Unicode text (a strict decoder refuses the whole message).
    for body in [
        &b"\"\xff\""[..],
        b"{\"k\":\"\xc3\"}",
        b"[\"\xed\xa0\x80\"]",
        b"\"\xf8\x88\x80\x80\x80\"",
        br#""\ud800""#,
        br#"{"k":["\uDFFF"]}"#,
        br#""\ud83d x""#,
    ] {
        let a = post(&s, "/v1/publish/utf", body.to_vec(), None).await;
        assert_error(&a, 400, "bad_request");
    }
    // Nothing was stored; valid UTF-8 beyond ASCII still is.
    let (ids, _, _) = history(&s, "utf", "").await;
    assert!(ids.is_empty(), "{ids:?}");
    publish_ok(&s, "utf", "\"\u{e9}\u{1f600}\"").await;
    publish_ok(&s, "utf", r#""\ud83d\ude00""#).await; // an escaped pair is text
    let (ids, data, _) = history(&s, "utf", "").await;
    assert_eq!((ids.len(), data[0].as_str()), (2, Some("\u{e9}\u{1f600}")));
    assert_eq!(data[1].as_str(), Some("\u{1f600}"));
    s.stop().await;
}

#[tokio::test]
async fn bad_topics_are_rejected() {
    let s = TestServer::start("").await;
    let long_ok = "a".repeat(128);
    let too_long = "a".repeat(129);
    for bad in ["a%20b", too_long.as_str(), "a%2Fb", "caf%C3%A9", "a*b", "a%00"] {
        let a = post(&s, &format!("/v1/publish/{bad}"), "1", None).await;
        assert_error(&a, 400, "bad_topic");
        let a = get(&s, &format!("/v1/history/{bad}")).await;
        assert_error(&a, 400, "bad_topic");
    }
    let id = publish_ok(&s, &long_ok, "1").await;
    let (ids, _, _) = history(&s, &long_ok, "").await;
    assert_eq!(ids, [id]);
    s.stop().await;
}

#[tokio::test]
async fn body_over_limit_is_too_large() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1000\n").await;
    // Exactly the limit is accepted.
    let at_limit = format!("\"{}\"", "x".repeat(998));
    assert_eq!(at_limit.len(), 1000);
    let id = publish_ok(&s, "big", &at_limit).await;
    // One byte over, with Content-Length.
    let over = format!("\"{}\"", "x".repeat(999));
    let a = post(&s, "/v1/publish/big", over.clone(), None).await;
    assert_error(&a, 413, "too_large");
    let a = post(&s, "/v1/publish/big", format!("\"{}\"", "y".repeat(5000)), None).await;
    assert_error(&a, 413, "too_large");

    // Chunked (no Content-Length): accepted under the limit, 413 over it.
    let (status, body) = raw_http(&s, &chunked_publish(&s, "big", &[b"{\"a\":", b" [1, 2]", b"}"])).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let chunked_id =
        serde_json::from_slice::<Value>(&body).expect("json")["id"].as_str().expect("id").to_owned();
    let half = over.len() / 2;
    let req = chunked_publish(&s, "big", &[&over.as_bytes()[..half], &over.as_bytes()[half..]]);
    let (status, body) = raw_http(&s, &req).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("json error body");
    assert_eq!(v["error"]["code"], "too_large");

    let a = get(&s, "/v1/history/big").await;
    let v = a.json();
    let ids: Vec<&str> =
        v["messages"].as_array().expect("array").iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(ids, [id.as_str(), chunked_id.as_str()]);
    assert!(a.text().contains("\"data\":{\"a\": [1, 2]}"), "{}", a.text());
    s.stop().await;
}

#[tokio::test]
async fn idempotency_key_dedupes_per_topic() {
    let s = TestServer::start("").await;
    let first = post(&s, "/v1/publish/idem", "{\"n\":1}", Some("key-1")).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    // Same key, same body; then same key, different body: both answer the first.
    for body in ["{\"n\":1}", "{\"n\":2}"] {
        let again = post(&s, "/v1/publish/idem", body, Some("key-1")).await;
        assert_eq!(again.status, 200, "{}", again.text());
        let again = again.json();
        assert_eq!(again["id"], first["id"]);
        assert_eq!(again["ts"], first["ts"]);
        assert_eq!(again["topic"], "idem");
    }
    // Another key publishes.
    let other = post(&s, "/v1/publish/idem", "{\"n\":3}", Some("key-2")).await.json();
    assert_ne!(other["id"], first["id"]);
    let (ids, data, _) = history(&s, "idem", "").await;
    assert_eq!(ids, [first["id"].as_str().expect("id"), other["id"].as_str().expect("id")]);
    assert_eq!(data, [serde_json::json!({"n":1}), serde_json::json!({"n":3})]);

    // The same key on another topic is another publish.
    let elsewhere = post(&s, "/v1/publish/idem2", "{\"n\":9}", Some("key-1")).await;
    assert_eq!(elsewhere.status, 200);
    let (ids2, data2, _) = history(&s, "idem2", "").await;
    assert_eq!(ids2, [elsewhere.json()["id"].as_str().expect("id")]);
    assert_eq!(data2, [serde_json::json!({"n":9})]);
    s.stop().await;
}

#[tokio::test]
async fn topics_are_independent() {
    let s = TestServer::start("").await;
    let a1 = publish_ok(&s, "ta", "\"a1\"").await;
    let b1 = publish_ok(&s, "tb", "\"b1\"").await;
    let a2 = publish_ok(&s, "ta", "\"a2\"").await;
    let b2 = publish_ok(&s, "tb", "\"b2\"").await;
    let (ids, data, _) = history(&s, "ta", "").await;
    assert_eq!(ids, [a1, a2]);
    assert_eq!(data, ["a1", "a2"]);
    let (ids, data, _) = history(&s, "tb", "").await;
    assert_eq!(ids, [b1, b2]);
    assert_eq!(data, ["b1", "b2"]);
    let (ids, _, truncated) = history(&s, "never-published", "").await;
    assert!(ids.is_empty());
    assert!(!truncated);
    s.stop().await;
}

// ---------------------------------------------------------------- history

#[tokio::test]
async fn history_after_and_limits() {
    let s = TestServer::start("").await;
    let ids = publish_n(&s, "h", 1005).await;

    // Default limit 100: the newest 100, ascending.
    let (got, data, truncated) = history(&s, "h", "").await;
    assert_eq!(got, ids[905..].to_vec());
    assert_eq!(data[0], 905);
    assert!(!truncated);

    // Explicit limit.
    let (got, _, _) = history(&s, "h", "?limit=7").await;
    assert_eq!(got, ids[998..].to_vec());
    // Max 1000: larger limits are clamped.
    let (got, _, _) = history(&s, "h", "?limit=1000").await;
    assert_eq!(got, ids[5..].to_vec());
    let (got, _, _) = history(&s, "h", "?limit=5000").await;
    assert_eq!(got, ids[5..].to_vec());

    // After: the messages after it, oldest first, up to limit.
    let (got, data, truncated) = history(&s, "h", &format!("?after={}", ids[10])).await;
    assert_eq!(got, ids[11..111].to_vec());
    assert_eq!(data[0], 11);
    assert!(!truncated);
    let (got, _, _) = history(&s, "h", &format!("?after={}&limit=3", ids[500])).await;
    assert_eq!(got, ids[501..504].to_vec());
    let (got, _, _) = history(&s, "h", &format!("?after={}&limit=1000000", ids[0])).await;
    assert_eq!(got, ids[1..1001].to_vec());
    let (got, _, _) = history(&s, "h", "?after=0-0&limit=2").await;
    assert_eq!(got, ids[..2].to_vec());
    let (got, _, truncated) = history(&s, "h", &format!("?after={}", ids[1004])).await;
    assert!(got.is_empty());
    assert!(!truncated);
    s.stop().await;
}

#[tokio::test]
async fn history_rejects_bad_parameters() {
    let s = TestServer::start("").await;
    publish_ok(&s, "hp", "1").await;
    for q in [
        "?limit=0",
        "?limit=-1",
        "?limit=abc",
        "?limit=",
        "?after=garbage",
        "?after=12",
        "?after=1-",
        "?after=-1",
        "?after=1-2-3",
        "?after=",
    ] {
        let a = get(&s, &format!("/v1/history/hp{q}")).await;
        assert_error(&a, 400, "bad_request");
    }
    s.stop().await;
}

#[tokio::test]
async fn history_reports_truncation_after_trim() {
    let s = TestServer::start("[history]\nmax_len = 3\n").await;
    let ids = publish_n(&s, "trim", 5).await;
    // Only the newest 3 remain.
    let (got, data, truncated) = history(&s, "trim", "").await;
    assert_eq!(got, ids[2..].to_vec());
    assert_eq!(data, [2, 3, 4]);
    assert!(!truncated);
    // Resuming from before the oldest retained message: truncated.
    for after in ["0-0", ids[0].as_str()] {
        let (got, _, truncated) = history(&s, "trim", &format!("?after={after}")).await;
        assert_eq!(got, ids[2..].to_vec(), "after={after}");
        assert!(truncated, "after={after} must be truncated");
    }
    // Resuming from the message just before the oldest retained one loses
    // nothing, and from a retained one neither.
    for (i, after) in [(1, ids[1].as_str()), (2, ids[2].as_str())] {
        let (got, _, truncated) = history(&s, "trim", &format!("?after={after}")).await;
        assert_eq!(got, ids[i + 1..].to_vec());
        assert!(!truncated, "after={after}");
    }
    s.stop().await;
}

// ---------------------------------------------------------------- operations

/// A request head is buffered up to 64 KiB: a larger one is refused with
/// `431` (never buffered without bound), and the server goes on serving.
#[tokio::test]
async fn an_oversized_request_head_is_refused_and_others_are_served() {
    let s = TestServer::start("").await;
    let head = |filler: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(filler)
        )
    };
    let (status, _) = raw_http(&s, head(60 * 1024).as_bytes()).await;
    assert_eq!(status, 200, "a 60 KiB head is served");
    let (status, _) = raw_http(&s, head(70 * 1024).as_bytes()).await;
    assert_eq!(status, 431, "a 70 KiB head is refused");
    assert_eq!(get(&s, "/healthz").await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn health_ready_and_not_found() {
    let s = TestServer::start("").await;
    assert_eq!(get(&s, "/healthz").await.status, 200);
    assert_eq!(get(&s, "/readyz").await.status, 200);
    for path in ["/nope", "/v1/publish", "/v1/history", "/v2/publish/t"] {
        let a = get(&s, path).await;
        assert_error(&a, 404, "not_found");
    }
    s.stop().await;
}

#[tokio::test]
async fn metrics_expose_published_counter() {
    let s = TestServer::start("").await;
    publish_ok(&s, "m", "1").await;
    let text = s.scrape().await.text;
    assert!(
        text.lines().any(|l| l.starts_with("rtgate_messages_published_total")),
        "no rtgate_messages_published_total sample in:\n{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_simple_requests() {
    let s = TestServer::start("").await;
    let origin = "http://app.example.com";
    for (path, method) in [("/v1/publish/t", "POST"), ("/v1/history/t", "GET")] {
        let a = send(
            s.http
                .request(reqwest::Method::OPTIONS, s.url(path))
                .header("Origin", origin)
                .header("Access-Control-Request-Method", method)
                .header("Access-Control-Request-Headers", "content-type,idempotency-key"),
        )
        .await;
        assert!((200..300).contains(&a.status), "preflight {path}: {}", a.status);
        let allow = a.header("access-control-allow-origin").expect("access-control-allow-origin");
        assert!(allow == "*" || allow == origin, "allow-origin {allow}");
        let methods = a.header("access-control-allow-methods").unwrap_or_default().to_ascii_uppercase();
        assert!(methods.contains(method) || methods == "*", "allow-methods {methods}");
        let headers = a.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
        assert!(headers.contains("idempotency-key") || headers == "*", "allow-headers {headers}");
    }
    // Actual cross-origin requests carry the header too.
    let a = send(s.http.post(s.url("/v1/publish/t")).header("Origin", origin).body("1")).await;
    assert_eq!(a.status, 200);
    assert!(a.header("access-control-allow-origin").is_some());
    let a = send(s.http.get(s.url("/v1/history/t")).header("Origin", origin)).await;
    assert_eq!(a.status, 200);
    assert!(a.header("access-control-allow-origin").is_some());
    s.stop().await;
}
