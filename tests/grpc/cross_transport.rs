//! Across transports: gRPC publishes reach WebSocket and SSE, theirs reach
//! gRPC, and one cursor resumes any of them.

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::helpers::*;
use crate::support::sse::{sse_path, Sse};
use crate::support::*;

/// The `data` member of a JSON message, as the exact text it holds.
fn raw_data(json_text: &str) -> String {
    let v: HashMap<String, Box<RawValue>> = serde_json::from_str(json_text).expect("json object");
    v.get("data").unwrap_or_else(|| panic!("no data in {json_text}")).get().to_owned()
}

#[tokio::test]
async fn grpc_publish_reaches_websocket_and_sse() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let t = "grpc.x.out";
    let mut ws = s.ws(&format!("/v1/ws?topic={t}")).await;
    let mut sse = Sse::open(&s, &sse_path(&[t]), None).await;
    let data = r#"{"z":1,  "a" : [ true, null, "h\u00e9 \"x\"" ], "n": 1.50}"#;
    let r = publish(&mut c, t, data).await;

    let raw = ws.next_text().await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        (v["op"].as_str(), v["topic"].as_str(), v["id"].as_str()),
        (Some("message"), Some(t), Some(&*r.id))
    );
    assert_eq!(v["ts"].as_u64(), Some(r.ts));
    assert_eq!(raw_data(&raw), data, "WebSocket data byte for byte");

    let (_, text) = sse.message_text().await;
    let v: Value = serde_json::from_str(&text).unwrap();
    check_shape(&v);
    assert_eq!(
        (v["topic"].as_str(), v["id"].as_str(), v["ts"].as_u64()),
        (Some(t), Some(&*r.id), Some(r.ts))
    );
    assert_eq!(raw_data(&text), data, "SSE data byte for byte");
    s.stop().await;
}

#[tokio::test]
async fn http_and_websocket_publishes_reach_grpc_subscribe() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let t = "grpc.x.in";
    let mut st = subscribe(&mut c, &[t], "").await;
    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(t, None, "s").await;

    let d1 = r#"{"via" : "http",  "k":[1,2]}"#;
    let id1 = s.publish(t, d1).await;
    let d2 = r#"{"b": [1, 2],"a":"é \u00e9"}"#;
    let mut ws = s.ws("/v1/ws").await;
    ws.send_text(&format!(r#"{{"op":"publish","topic":"{t}","data":{d2},"ref":"w1"}}"#)).await;
    let ack = ws.next_op("ack").await;
    assert_eq!(ack["ref"], "w1");
    let id2 = ack["id"].as_str().unwrap().to_owned();

    let got = msgs(&mut st, 2).await;
    let over_connect = conn.messages(2).await;
    for got in [&got, &over_connect] {
        assert_eq!(ids(got), [id1.clone(), id2.clone()]);
        assert_eq!(got[0].data, d1.as_bytes());
        assert_eq!(got[1].data, d2.as_bytes());
    }
    assert_quiet(&mut c, &[t], &mut [&mut st]).await;
    s.stop().await;
}

#[tokio::test]
async fn cursors_are_shared_with_websocket_and_sse() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let (a, b) = ("grpc.cur.a", "grpc.cur.b");

    // A WebSocket cursor resumes a gRPC Subscribe.
    let mut ws = s.ws(&format!("/v1/ws?topic={a}&topic={b}")).await;
    let a1 = publish(&mut c, a, "1").await.id;
    let m = ws.next_op("message").await;
    assert_eq!(m["id"], a1.as_str());
    let ws_cursor = m["cursor"].as_str().unwrap().to_owned();
    let a2 = publish(&mut c, a, "2").await.id;
    let b1 = publish(&mut c, b, "3").await.id;
    let mut st = subscribe(&mut c, &[a, b], &ws_cursor).await;
    let got = msgs(&mut st, 2).await;
    assert_eq!(by_topic(&got), want(&[(a, vec![a2]), (b, vec![b1])]));
    let grpc_cursor = got[1].cursor.clone();
    drop(st);

    // A gRPC cursor resumes SSE (Last-Event-ID).
    let a3 = publish(&mut c, a, "4").await.id;
    let mut sse = Sse::open(&s, &sse_path(&[a, b]), Some(&grpc_cursor)).await;
    let (sse_id, text) = sse.message_text().await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((v["topic"].as_str(), v["id"].as_str()), (Some(a), Some(&*a3)));

    // An SSE event id resumes gRPC.
    let b2 = publish(&mut c, b, "5").await.id;
    let mut st = subscribe(&mut c, &[a, b], &sse_id).await;
    let got = next_msg(&mut st).await;
    assert_eq!((got.topic.as_str(), got.id.as_str()), (b, b2.as_str()));
    assert_quiet(&mut c, &[a, b], &mut [&mut st]).await;
    s.stop().await;
}
