//! WebSocket transport (contract §2, §4) against the real server with real
//! clients (tokio-tungstenite, and a raw TCP client for the heartbeat).
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

// ---------------------------------------------------------------- helpers

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> =
        v.as_object().unwrap_or_else(|| panic!("object frame: {v}")).keys().cloned().collect();
    k.sort_unstable();
    k
}

/// Asserts an error frame with `code` and (exactly) `r` as its ref.
fn assert_error_frame(v: &Value, code: &str, r: Option<Value>) {
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "message text: {v}");
    match r {
        Some(r) => {
            assert_eq!(v["ref"], r, "{v}");
            assert_eq!(keys(v), ["code", "message", "op", "ref"], "{v}");
        }
        None => assert_eq!(keys(v), ["code", "message", "op"], "{v}"),
    }
}

async fn publish_http(s: &TestServer, topic: &str, body: &str) -> Value {
    let (status, v) = s.publish_raw(topic, body, None).await;
    assert_eq!(status, 200, "{v}");
    v
}

fn assert_cursor(v: &Value) {
    let c = v["cursor"].as_str().unwrap_or_else(|| panic!("cursor string: {v}"));
    assert!(!c.is_empty() && c.len() <= 4096, "cursor length: {v}");
    assert!(
        c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')),
        "cursor alphabet: {c}"
    );
}

async fn history_ids(s: &TestServer, topic: &str) -> Vec<String> {
    let (status, v) = s.get(&format!("/v1/history/{topic}?limit=1000")).await;
    assert_eq!(status, 200, "{v}");
    v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}

// ---------------------------------------------------------------- delivery

#[tokio::test]
async fn http_publish_is_delivered_with_every_field() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws?topic=news").await;
    let data = r#"{"z":1,  "a" : [ true, null, "h\u00e9 \"x\"" ], "n": 1.50}"#;
    let p1 = publish_http(&s, "news", data).await;
    let raw = c.next_text().await;
    let m1: Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(keys(&m1), ["cursor", "data", "id", "op", "topic", "ts"], "{raw}");
    assert_eq!(m1["op"], "message");
    assert_eq!(m1["topic"], "news");
    assert_eq!(m1["id"], p1["id"]);
    assert_eq!(m1["ts"], p1["ts"]);
    assert!(raw.contains(&format!("\"data\":{data}")), "data not verbatim in {raw}");
    assert_cursor(&m1);

    let p2 = publish_http(&s, "news", "[]").await;
    let m2 = c.next_op("message").await;
    assert_eq!(m2["id"], p2["id"]);
    assert_eq!(m2["data"], json!([]));
    assert_cursor(&m2);
    assert_ne!(m1["cursor"], m2["cursor"], "the cursor moves with each message");
    c.assert_quiet("end").await;
    s.stop().await;
}

#[tokio::test]
async fn ws_publish_is_acked_and_delivered_to_others() {
    let s = TestServer::start("").await;
    let mut sub = s.ws("/v1/ws").await;
    let (before, ack) = sub.subscribe("room", None).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack, json!({"op": "ack", "ref": "sub-room", "recovered": true}));

    let mut publisher = s.ws("/v1/ws").await;
    let data = r#"{"b": [1, 2],"a":"é \u00e9"}"#;
    // The ref is any JSON value, echoed as sent.
    publisher
        .send_text(&format!(r#"{{"op":"publish","topic":"room","data":{data},"ref":{{"k":[1,"two"]}}}}"#))
        .await;
    let ack = publisher.next().await;
    assert_eq!(keys(&ack), ["id", "op", "ref"], "{ack}");
    assert_eq!(ack["op"], "ack");
    assert_eq!(ack["ref"], json!({"k": [1, "two"]}));
    let id = ack["id"].as_str().expect("id").to_owned();

    let raw = sub.next_text().await;
    let m: Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(m["op"], "message");
    assert_eq!(m["topic"], "room");
    assert_eq!(m["id"], id.as_str());
    assert!(raw.contains(&format!("\"data\":{data}")), "data not verbatim in {raw}");
    assert_cursor(&m);

    // A second publish without a ref: ack without ref, next id.
    publisher.send(json!({"op": "publish", "topic": "room", "data": 2})).await;
    let ack2 = publisher.next_op("ack").await;
    assert_eq!(keys(&ack2), ["id", "op"], "{ack2}");
    let m2 = sub.next_op("message").await;
    assert_eq!(m2["id"], ack2["id"]);
    assert_eq!(m2["data"], 2);

    // null is valid data.
    publisher.send_text(r#"{"op":"publish","topic":"room","data":null,"ref":3}"#).await;
    let ack3 = publisher.next_op("ack").await;
    assert_eq!(ack3["ref"], 3);
    let m3 = sub.next_op("message").await;
    assert_eq!(m3["id"], ack3["id"]);
    assert_eq!(keys(&m3), ["cursor", "data", "id", "op", "topic", "ts"], "{m3}");
    assert_eq!(m3["data"], Value::Null);

    // The publisher, not subscribed, got nothing else; history has all three,
    // with the data as sent.
    publisher.assert_quiet("p").await;
    sub.assert_quiet("s").await;
    assert_eq!(
        history_ids(&s, "room").await,
        [id.as_str(), ack2["id"].as_str().expect("id"), ack3["id"].as_str().expect("id")]
    );
    let res = tokio::time::timeout(WAIT, s.http.get(s.url("/v1/history/room")).send())
        .await
        .expect("history timed out")
        .expect("history");
    let text = tokio::time::timeout(WAIT, res.text()).await.expect("timed out").expect("body");
    assert!(text.contains(&format!("\"data\":{data}")), "data not verbatim in history: {text}");
    s.stop().await;
}

#[tokio::test]
async fn two_topics_on_one_connection_and_unsubscribe() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws").await;
    for t in ["alpha", "beta"] {
        let (before, ack) = c.subscribe(t, None).await;
        assert!(before.is_empty());
        assert_eq!(ack["recovered"], true);
    }
    let mut seen = vec![];
    for (t, d) in [("alpha", "1"), ("beta", "2"), ("gamma", "99"), ("alpha", "3"), ("beta", "4")] {
        let p = publish_http(&s, t, d).await;
        if t == "gamma" {
            continue; // not subscribed: must never arrive
        }
        let m = c.next_op("message").await;
        assert_eq!(m["topic"], t, "{m}");
        assert_eq!(m["id"], p["id"], "{m}");
        assert_eq!(m["data"].to_string(), d);
        assert_cursor(&m);
        seen.push(m);
    }
    c.assert_quiet("both").await;

    c.send(json!({"op": "unsubscribe", "topic": "alpha", "ref": "u1"})).await;
    assert_eq!(c.next().await, json!({"op": "ack", "ref": "u1"}));
    // alpha is published first: had it still been delivered it would come
    // before beta's message (one outbox, in order), and the pong after.
    publish_http(&s, "alpha", "5").await;
    let b = publish_http(&s, "beta", "6").await;
    let m = c.next_op("message").await;
    assert_eq!(m["topic"], "beta", "{m}");
    assert_eq!(m["id"], b["id"]);
    c.assert_quiet("after-unsub").await;
    publish_http(&s, "alpha", "7").await;
    c.assert_quiet("after-unsub-2").await;
    s.stop().await;
}

// ---------------------------------------------------------------- control ops

#[tokio::test]
async fn ping_answers_pong_with_ref() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws").await;
    c.send(json!({"op": "ping", "ref": "r-1"})).await;
    assert_eq!(c.next().await, json!({"op": "pong", "ref": "r-1"}));
    c.send(json!({"op": "ping", "ref": 42})).await;
    assert_eq!(c.next().await, json!({"op": "pong", "ref": 42}));
    c.send(json!({"op": "ping", "ref": {"a": [1]}})).await;
    assert_eq!(c.next().await, json!({"op": "pong", "ref": {"a": [1]}}));
    c.send(json!({"op": "ping"})).await;
    assert_eq!(c.next().await, json!({"op": "pong"}));
    s.stop().await;
}

#[tokio::test]
async fn malformed_json_is_bad_request_and_connection_survives() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws?topic=m").await;
    for bad in ["{nope", "", "[1,2]", "\"str\"", "{\"op\":\"ping\",}", "null"] {
        c.send_text(bad).await;
        let v = c.next().await;
        assert_error_frame(&v, "bad_request", None);
    }
    c.assert_quiet("alive").await;
    c.send(json!({"op": "publish", "topic": "m", "data": {"ok": true}, "ref": "p"})).await;
    // Subscribed to m too: the ack and the message both arrive, in either order.
    let mut frames = [c.next().await, c.next().await];
    frames.sort_by_key(|f| f["op"].as_str().unwrap_or_default().to_owned());
    assert_eq!(frames[0]["op"], "ack");
    assert_eq!(frames[0]["ref"], "p");
    assert_eq!(frames[1]["op"], "message");
    assert_eq!(frames[1]["id"], frames[0]["id"]);
    assert_eq!(frames[1]["data"], json!({"ok": true}));
    s.stop().await;
}

#[tokio::test]
async fn unknown_or_missing_op_is_bad_request_with_ref() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws").await;
    c.send(json!({"op": "dance", "ref": "r9"})).await;
    assert_error_frame(&c.next().await, "bad_request", Some(json!("r9")));
    c.send(json!({"op": "dance", "ref": [1, {"x": 2}]})).await;
    assert_error_frame(&c.next().await, "bad_request", Some(json!([1, {"x": 2}])));
    c.send(json!({"topic": "t", "ref": 5})).await;
    assert_error_frame(&c.next().await, "bad_request", Some(json!(5)));
    c.send(json!({"op": "dance"})).await;
    assert_error_frame(&c.next().await, "bad_request", None);
    // Known op, missing fields.
    c.send(json!({"op": "subscribe", "ref": "s"})).await;
    assert_error_frame(&c.next().await, "bad_request", Some(json!("s")));
    c.send(json!({"op": "publish", "topic": "t", "ref": "p"})).await;
    assert_error_frame(&c.next().await, "bad_request", Some(json!("p")));
    c.send(json!({"op": "subscribe", "topic": "t", "after": "garbage", "ref": "a"})).await;
    assert_error_frame(&c.next().await, "bad_request", Some(json!("a")));
    c.assert_quiet("alive").await;
    s.stop().await;
}

#[tokio::test]
async fn bad_topic_is_rejected() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws").await;
    let long = "a".repeat(129);
    for (i, bad) in ["a b", long.as_str(), "", "a/b", "café"].into_iter().enumerate() {
        c.send(json!({"op": "subscribe", "topic": bad, "ref": i})).await;
        assert_error_frame(&c.next().await, "bad_topic", Some(json!(i)));
        c.send(json!({"op": "publish", "topic": bad, "data": 1, "ref": i})).await;
        assert_error_frame(&c.next().await, "bad_topic", Some(json!(i)));
        c.send(json!({"op": "unsubscribe", "topic": bad, "ref": i})).await;
        assert_error_frame(&c.next().await, "bad_topic", Some(json!(i)));
    }
    // 128 characters is fine.
    let (_, ack) = c.subscribe(&"a".repeat(128), None).await;
    assert_eq!(ack["recovered"], true);
    s.stop().await;
}

#[tokio::test]
async fn subscribing_twice_is_an_error_and_delivers_once() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws?topic=dup").await;
    c.send(json!({"op": "subscribe", "topic": "dup", "ref": "again"})).await;
    assert_error_frame(&c.next().await, "bad_request", Some(json!("again")));
    let (_, ack) = c.subscribe("other", None).await;
    assert_eq!(ack["recovered"], true);
    c.send(json!({"op": "subscribe", "topic": "other", "ref": "again2"})).await;
    assert_error_frame(&c.next().await, "bad_request", Some(json!("again2")));
    // Still subscribed exactly once to each: one copy of each message.
    let a = publish_http(&s, "dup", "1").await;
    let b = publish_http(&s, "other", "2").await;
    assert_eq!(c.next_op("message").await["id"], a["id"]);
    assert_eq!(c.next_op("message").await["id"], b["id"]);
    c.assert_quiet("once").await;
    s.stop().await;
}

// ---------------------------------------------------------------- limits

#[tokio::test]
async fn data_over_limit_closes_1009() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1000\n").await;
    let mut watcher = s.ws("/v1/ws?topic=big").await;
    let mut c = s.ws("/v1/ws").await;
    // At the limit: accepted.
    let at_limit = format!("\"{}\"", "x".repeat(998));
    c.send_text(&format!(r#"{{"op":"publish","topic":"big","data":{at_limit},"ref":1}}"#)).await;
    let ack = c.next_op("ack").await;
    let id = ack["id"].as_str().expect("id").to_owned();
    // One byte over (the frame itself is well under the frame limit).
    let over = format!("\"{}\"", "x".repeat(999));
    c.send_text(&format!(r#"{{"op":"publish","topic":"big","data":{over},"ref":2}}"#)).await;
    assert_eq!(c.ended().await, Ended::Closed(1009, "too_large".into()));
    // Only the accepted one was published.
    assert_eq!(watcher.next_op("message").await["id"], id.as_str());
    watcher.assert_quiet("w").await;
    assert_eq!(history_ids(&s, "big").await, [id]);
    s.stop().await;
}

#[tokio::test]
async fn frame_over_frame_limit_closes_1009() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1000\n").await;
    let mut watcher = s.ws("/v1/ws?topic=big").await;
    // Small data, but the frame is over the frame limit (data limit + envelope).
    let mut c = s.ws("/v1/ws").await;
    c.send(json!({"op": "publish", "topic": "big", "data": 1, "ref": "r".repeat(4000)})).await;
    assert_eq!(c.ended().await, Ended::Closed(1009, "too_large".into()));
    // A huge frame of any kind.
    let mut c2 = s.ws("/v1/ws").await;
    c2.send_text(&" ".repeat(100_000)).await;
    assert_eq!(c2.ended().await, Ended::Closed(1009, "too_large".into()));
    watcher.assert_quiet("w").await;
    assert!(history_ids(&s, "big").await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn binary_frame_is_an_error_frame() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws").await;
    c.ws.send(WsMessage::binary(br#"{"op":"ping","ref":"b"}"#.to_vec())).await.expect("send");
    assert_error_frame(&c.next().await, "bad_request", None);
    c.assert_quiet("alive").await;
    s.stop().await;
}

// ---------------------------------------------------------------- connect query

#[tokio::test]
async fn bad_topic_at_connect_errors_then_closes_1008() {
    let s = TestServer::start("").await;
    let long = "a".repeat(129);
    for q in ["topic=a%20b".to_owned(), format!("topic=ok&topic={long}"), "topic=".to_owned()] {
        let mut c = s.ws(&format!("/v1/ws?{q}")).await;
        assert_error_frame(&c.next().await, "bad_topic", None);
        match c.ended().await {
            Ended::Closed(code, _) => assert_eq!(code, 1008, "{q}"),
            Ended::Dropped => panic!("{q}: dropped without a close frame"),
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_cursor_at_connect_errors_then_closes_1008() {
    let s = TestServer::start("").await;
    let long = "A".repeat(5000);
    for q in [
        "topic=t&cursor=%21%21%21",
        "topic=t&cursor=not-a-cursor",
        "cursor=zz",
        &format!("topic=t&cursor={long}"),
    ] {
        let mut c = s.ws(&format!("/v1/ws?{q}")).await;
        assert_error_frame(&c.next().await, "bad_request", None);
        match c.ended().await {
            Ended::Closed(code, _) => assert_eq!(code, 1008, "{q}"),
            Ended::Dropped => panic!("{q}: dropped without a close frame"),
        }
    }
    s.stop().await;
}

// ---------------------------------------------------------------- heartbeat

const HEARTBEAT: &str = "[heartbeat]\ninterval = \"200ms\"\ntimeout = \"600ms\"\n";

async fn read_more(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, deadline: tokio::time::Instant) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout_at(deadline, sock.read(&mut chunk))
        .await
        .expect("timed out reading")
        .expect("read");
    assert!(n > 0, "connection ended without a close frame");
    buf.extend_from_slice(&chunk[..n]);
}

/// A raw WebSocket client over TCP that completes the handshake and then
/// never writes a byte (so never answers a ping). Returns the frames it read
/// (opcode, payload) up to and including the close frame, and how long after
/// it started connecting the close came.
async fn silent_client(s: &TestServer) -> (Vec<(u8, Vec<u8>)>, Duration) {
    let opened = Instant::now();
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.expect("connect");
    let req = format!(
        "GET /v1/ws?topic=hb HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        s.addr
    );
    sock.write_all(req.as_bytes()).await.expect("write");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        read_more(&mut sock, &mut buf, deadline).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455 §1.3: the sample key's accept value.
    assert!(
        head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    buf.drain(..head_end);
    let mut frames = vec![];
    loop {
        // Parse one complete server frame (unmasked) from buf, if any.
        if buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            assert!(buf[1] & 0x80 == 0, "server frames are not masked");
            let (len, hdr) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => {
                    (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize, 10)
                }
                126 | 127 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            if len != usize::MAX && buf.len() >= hdr + len {
                let payload = buf[hdr..hdr + len].to_vec();
                buf.drain(..hdr + len);
                frames.push((opcode, payload));
                if opcode == 0x8 {
                    return (frames, opened.elapsed());
                }
                continue;
            }
        }
        read_more(&mut sock, &mut buf, deadline).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pings_and_closes_a_silent_client() {
    let s = TestServer::start(HEARTBEAT).await;
    let (frames, after) = silent_client(&s).await;
    let (close_op, close) = frames.last().expect("close frame");
    assert_eq!(*close_op, 0x8);
    assert!(close.len() >= 2, "close frame has a code");
    let code = u16::from_be_bytes([close[0], close[1]]);
    let reason = String::from_utf8_lossy(&close[2..]).to_string();
    assert_eq!((code, reason.as_str()), (1001, "heartbeat_timeout"));
    let pings = frames.iter().filter(|(op, _)| *op == 0x9).count();
    assert!(pings >= 1, "the server pinged before closing: {frames:?}");
    assert!(frames.iter().all(|(op, _)| *op == 0x9 || *op == 0x8), "only pings then close: {frames:?}");
    // The server's silence clock starts after our connect began, so the
    // close cannot come before the 600ms timeout; and it comes well before
    // a generous bound.
    assert!(after >= Duration::from_millis(600), "closed too early: {after:?}");
    assert!(after <= Duration::from_secs(3), "closed too late: {after:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_client_that_answers_pings() {
    // Generous margin: pings every 100-200ms, silence allowed up to 1s.
    let s = TestServer::start("[heartbeat]\ninterval = \"100ms\"\ntimeout = \"1s\"\n").await;
    let mut c = s.ws("/v1/ws?topic=hb").await;
    let opened = Instant::now();
    // Reading lets tungstenite answer each protocol ping with a pong. Keep
    // reading pings until well past the timeout.
    let mut pings = 0;
    while opened.elapsed() < Duration::from_millis(1500) {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("timed out waiting for a ping")
            .expect("stream ended")
            .expect("ws error");
        match msg {
            WsMessage::Ping(_) => pings += 1,
            other => panic!("unexpected frame: {other:?}"),
        }
    }
    assert!(pings >= 5, "the server kept pinging: {pings}");
    c.assert_quiet("still-here").await;
    let p = publish_http(&s, "hb", "1").await;
    assert_eq!(c.next_op("message").await["id"], p["id"]);
    s.stop().await;
}

// ---------------------------------------------------------------- isolation

#[tokio::test]
async fn bad_frames_never_affect_other_connections() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1000\n").await;
    let mut good = s.ws("/v1/ws?topic=iso").await;
    let mut expected = vec![];
    expected.push(publish_http(&s, "iso", "0").await["id"].clone());

    let mut bad = s.ws("/v1/ws?topic=iso").await;
    bad.send_text("{garbage").await;
    assert_error_frame(&bad.next().await, "bad_request", None);
    bad.ws.send(WsMessage::binary(vec![0u8, 159, 146, 150])).await.expect("send");
    assert_error_frame(&bad.next().await, "bad_request", None);
    expected.push(publish_http(&s, "iso", "1").await["id"].clone());
    let mut connect_bad = s.ws("/v1/ws?topic=a%20b").await;
    assert_error_frame(&connect_bad.next().await, "bad_topic", None);
    assert!(matches!(connect_bad.ended().await, Ended::Closed(1008, _)));
    bad.send_text(&format!(r#"{{"op":"publish","topic":"iso","data":"{}"}}"#, "x".repeat(5000))).await;
    // The bad client may still have a message queued before its close.
    loop {
        match tokio::time::timeout(WAIT, bad.ws.next()).await.expect("timed out waiting for close") {
            Some(Ok(WsMessage::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1009);
                break;
            }
            Some(Ok(WsMessage::Text(_))) => continue,
            other => panic!("expected close 1009, got {other:?}"),
        }
    }
    expected.push(publish_http(&s, "iso", "2").await["id"].clone());

    let got: Vec<Value> = good.messages(3).await.into_iter().map(|m| m["id"].clone()).collect();
    assert_eq!(got, expected);
    good.assert_quiet("unaffected").await;
    good.send(json!({"op": "publish", "topic": "iso", "data": 3, "ref": "g"})).await;
    let mut frames = [good.next().await, good.next().await];
    frames.sort_by_key(|f| f["op"].as_str().unwrap_or_default().to_owned());
    assert_eq!(frames[0]["op"], "ack");
    assert_eq!(frames[1]["op"], "message");
    assert_eq!(frames[1]["id"], frames[0]["id"]);
    s.stop().await;
}

/// Requests to `/v1/ws` that are not a valid opening handshake get 400
/// `bad_request` in the contract's shape, and never join a topic.
#[tokio::test]
async fn a_request_that_is_not_a_websocket_handshake_is_bad_request() {
    let s = TestServer::start("").await;
    let url = s.url("/v1/ws?topic=h");
    let ok = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let cases: [(&str, Option<&str>); 5] = [
        ("plain GET", None),
        ("upgrade", Some("h2c")),
        ("connection", Some("keep-alive")),
        ("sec-websocket-version", Some("8")),
        ("sec-websocket-key", None),
    ];
    for (i, (name, value)) in cases.iter().enumerate() {
        let mut req = s.http.get(&url);
        if i > 0 {
            for (k, v) in ok {
                if k == *name {
                    if let Some(v) = value {
                        req = req.header(k, *v);
                    }
                } else {
                    req = req.header(k, v);
                }
            }
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{name}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{name}: {body}");
    }
    assert_eq!(history_ids(&s, "h").await.len(), 0);
    s.stop().await;
}

/// A subscriber that stops reading while 14 MB are published (more than the
/// kernel buffers of a loopback connection hold) gets every
/// frame intact and in order once it reads again: the vectored writes that
/// the kernel takes only in part resume exactly where they stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_in_parts_arrive_whole_and_in_order() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws?topic=big").await;
    let pad = "x".repeat(16_000);
    let n = 900;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(publish_http(&s, "big", &format!("{{\"i\":{i},\"pad\":\"{pad}\"}}")).await["id"].clone());
    }
    for (i, id) in ids.iter().enumerate() {
        let m = c.next_op("message").await;
        assert_eq!((&m["id"], m["data"]["i"].as_u64()), (id, Some(i as u64)));
        assert_eq!(m["data"]["pad"].as_str().map(str::len), Some(16_000));
    }
    c.assert_quiet("end").await;
    s.stop().await;
}
