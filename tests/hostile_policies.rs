//! Hostile input to the topic-policy surfaces (contract §11) through the
//! real server on real sockets: coalescing keys, ephemeral flags and
//! presence requests that are malformed, oversized or of the wrong type.
//! Each is refused with `bad_request` (or `too_large`), stores nothing,
//! and leaves the connection that sent it working and every other
//! connection untouched.
#![allow(clippy::unwrap_used)]
mod support;

use serde_json::{json, Value};
use support::*;

const CONFIG: &str = r#"
[[topics]]
pattern = "price.*"
delivery = "latest"

[[topics]]
pattern = "room.*"
presence = true
"#;

/// The number of stored messages of `topic`.
async fn stored(s: &TestServer, topic: &str) -> usize {
    let (status, v) = s.get(&format!("/v1/history/{topic}")).await;
    assert_eq!(status, 200, "{v}");
    v["messages"].as_array().unwrap().len()
}

async fn post(s: &TestServer, path_and_query: &str, body: &str) -> (u16, Value) {
    let res = s.http.post(s.url(path_and_query)).body(body.to_owned()).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn http_publish_refuses_bad_keys_and_ephemeral_flags_and_stores_nothing() {
    let s = TestServer::start(CONFIG).await;
    let long = "k".repeat(257);
    let bad = [
        "/v1/publish/price.a?key=".to_owned(),
        format!("/v1/publish/price.a?key={long}"),
        "/v1/publish/price.a?key=%00".to_owned(),
        "/v1/publish/price.a?key=a%0Ab".to_owned(),
        "/v1/publish/price.a?key=%FF%FE".to_owned(),
        "/v1/publish/price.a?ephemeral=yes".to_owned(),
        "/v1/publish/price.a?ephemeral=".to_owned(),
        "/v1/publish/price.a?ephemeral=TRUE%00".to_owned(),
    ];
    for path in &bad {
        let (status, v) = post(&s, path, r#"{"p":1}"#).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{path}: {v}");
    }
    // An ephemeral publish too large is refused like a stored one.
    let big = format!("\"{}\"", "x".repeat(70_000));
    let (status, v) = post(&s, "/v1/publish/room.a?ephemeral=true", &big).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    assert_eq!(stored(&s, "price.a").await, 0);
    assert_eq!(stored(&s, "room.a").await, 0);
    // The longest allowed key still works and is stored once.
    let (status, v) = post(&s, &format!("/v1/publish/price.a?key={}", "k".repeat(256)), "1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(stored(&s, "price.a").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn websocket_ops_with_bad_policy_fields_get_errors_and_the_connection_goes_on() {
    let s = TestServer::start(CONFIG).await;
    let mut bystander = s.ws("/v1/ws").await;
    let (_, ack) = bystander.subscribe("price.a", None).await;
    assert_eq!(ack["op"], "ack", "{ack}");

    let mut c = s.ws("/v1/ws").await;
    let long = "k".repeat(257);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"op":"publish","topic":"price.a","data":1,"key":5,"ref":1}), "bad_request"),
        (json!({"op":"publish","topic":"price.a","data":1,"key":"","ref":2}), "bad_request"),
        (json!({"op":"publish","topic":"price.a","data":1,"key":long,"ref":3}), "bad_request"),
        (json!({"op":"publish","topic":"price.a","data":1,"key":"a\u{0}b","ref":4}), "bad_request"),
        (json!({"op":"publish","topic":"price.a","data":1,"key":["a"],"ref":5}), "bad_request"),
        (json!({"op":"publish","topic":"room.a","data":1,"ephemeral":"yes","ref":6}), "bad_request"),
        (json!({"op":"publish","topic":"room.a","data":1,"ephemeral":1,"ref":7}), "bad_request"),
        (json!({"op":"publish","topic":"room.a","data":1,"ephemeral":null,"ref":8}), "bad_request"),
        (json!({"op":"subscribe","topic":"room.a","presence":"yes","ref":9}), "bad_request"),
        (json!({"op":"presence","ref":10}), "bad_request"),
        (json!({"op":"presence","topic":"a b","ref":11}), "bad_topic"),
        (json!({"op":"presence","topic":"x".repeat(10_000),"ref":12}), "bad_topic"),
        (json!({"op":"presence","topic":["room.a"],"ref":13}), "bad_request"),
        // A topic without presence: nothing to list.
        (json!({"op":"presence","topic":"price.a","ref":14}), "bad_request"),
    ];
    for (op, code) in &cases {
        c.send(op.clone()).await;
        let v = c.next().await;
        assert_eq!(v["op"], "error", "{op}: {v}");
        assert_eq!(v["code"], *code, "{op}: {v}");
        if let Some(r) = op.get("ref") {
            if v.get("ref").is_some() {
                assert_eq!(&v["ref"], r, "{op}: {v}");
            }
        }
    }
    // Nothing was stored, the bystander got nothing, and both connections
    // still work.
    c.assert_quiet("after").await;
    bystander.assert_quiet("bystander").await;
    assert_eq!(stored(&s, "price.a").await, 0);
    assert_eq!(stored(&s, "room.a").await, 0);
    c.send(json!({"op":"publish","topic":"price.a","data":2,"key":"good","ref":"ok"})).await;
    let ack = c.next_op("ack").await;
    assert_eq!(ack["ref"], "ok", "{ack}");
    let m = bystander.next_op("message").await;
    assert_eq!(m["data"], 2, "{m}");
    assert_eq!(m["id"], ack["id"], "{m} {ack}");
    s.stop().await;
}

#[tokio::test]
async fn presence_http_refuses_bad_topics_and_a_listing_storm_harms_no_one() {
    let s = TestServer::start(CONFIG).await;
    let long = format!("/v1/presence/{}", "x".repeat(5_000));
    for (path, code) in
        [("/v1/presence/a%20b", "bad_topic"), ("/v1/presence/price.a", "bad_request"), (&*long, "bad_topic")]
    {
        let (status, v) = s.get(path).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
    }

    // One member; a client asks for the list 2,000 times without reading
    // the answers in between; the member's subscription stays live and
    // the list stays right.
    let mut member = s.ws("/v1/ws").await;
    member.send(json!({"op":"subscribe","topic":"room.a","presence":true,"ref":"s"})).await;
    let ack = member.next_op("ack").await;
    assert_eq!(ack["ref"], "s", "{ack}");
    let mut storm = s.ws("/v1/ws").await;
    for i in 0..2_000 {
        storm.send_text(&format!(r#"{{"op":"presence","topic":"room.a","ref":{i}}}"#)).await;
    }
    let mut answers = 0;
    let mut refused = 0;
    while answers + refused < 2_000 {
        let v = storm.next().await;
        match v["op"].as_str() {
            Some("ack") => {
                assert_eq!(v["users"], 1, "{v}");
                answers += 1;
            }
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                refused += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(answers >= 1, "some listings answered");
    let id = s.publish("room.a", r#"{"still":"live"}"#).await;
    let m = member.next_op("message").await;
    assert_eq!(m["id"], id.as_str(), "{m}");
    let (status, v) = s.get("/v1/presence/room.a").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["users"], 1, "{v}");
    s.stop().await;
}
