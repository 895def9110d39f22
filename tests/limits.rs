//! Global caps and reclaiming of the embedded engine (issue 11 item 10),
//! through the real server: `limits.max_topics` and
//! `memory.max_retained_bytes` answer 503 `unavailable` and lose nothing
//! accepted; an idle topic is dropped after `history.max_age` even if
//! nobody touches it, a resume into it is a gap, and its next id is higher.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::*;

use std::time::Duration;

use serde_json::{json, Value};

/// The ids in `GET /v1/history/{topic}?after=0-0` and its `truncated`.
async fn history(s: &TestServer, topic: &str) -> (Vec<String>, bool) {
    let (status, v) = s.get(&format!("/v1/history/{topic}?after=0-0&limit=1000")).await;
    assert_eq!(status, 200, "{v}");
    let msgs = v["messages"].as_array().expect("messages").iter().map(id_of).collect();
    (msgs, v["truncated"].as_bool().expect("truncated"))
}

/// A refusal by a cap: 503 `unavailable` naming the cap, `Retry-After`.
async fn assert_refused(s: &TestServer, topic: &str, body: &str, cap: &str) {
    let res = tokio::time::timeout(
        WAIT,
        s.http.post(s.url(&format!("/v1/publish/{topic}"))).body(body.to_owned()).send(),
    )
    .await
    .expect("publish timed out")
    .expect("publish");
    assert_eq!(res.status().as_u16(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let v: Value = res.json().await.expect("json");
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(message.contains(cap), "{message}");
}

/// Publishes `topic` until it is accepted (a cap makes room as topics are
/// dropped): bounded polling, never a fixed sleep standing for an event.
async fn publish_when_room(s: &TestServer, topic: &str, body: &str) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (status, v) = s.publish_raw(topic, body, None).await;
            match status {
                200 => return v["id"].as_str().expect("id").to_owned(),
                503 => tokio::time::sleep(Duration::from_millis(50)).await,
                other => panic!("publish answered {other}: {v}"),
            }
        }
    })
    .await
    .expect("no room came back")
}

#[tokio::test]
async fn max_topics_answers_unavailable_and_loses_nothing() {
    let s = TestServer::start("[limits]\nmax_topics = 3\n").await;
    let mut accepted = Vec::new();
    for topic in ["t0", "t1", "t2"] {
        accepted.push((topic, s.publish(topic, r#"{"n":1}"#).await));
    }
    assert_refused(&s, "t3", r#"{"n":1}"#, "limits.max_topics").await;
    // Existing topics still take publishes; refusals changed nothing.
    accepted.push(("t0", s.publish("t0", r#"{"n":2}"#).await));
    assert_refused(&s, "t4", r#"{"n":1}"#, "limits.max_topics").await;
    for topic in ["t0", "t1", "t2"] {
        let want: Vec<String> =
            accepted.iter().filter(|(t, _)| *t == topic).map(|(_, id)| id.clone()).collect();
        assert_eq!(history(&s, topic).await, (want, false), "{topic}");
    }
    assert!(history(&s, "t3").await.0.is_empty());
    // A cap is not an outage: still ready.
    let (status, ready) = s.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    s.stop().await;
}

#[tokio::test]
async fn max_retained_bytes_answers_unavailable_and_loses_nothing() {
    let s = TestServer::start("[memory]\nmax_retained_bytes = 32768\n").await;
    let body = format!(r#""{}""#, "x".repeat(2000));
    let mut accepted = Vec::new();
    let refused = loop {
        let (status, v) = s.publish_raw("big", &body, None).await;
        match status {
            200 => accepted.push(v["id"].as_str().unwrap().to_owned()),
            503 => break v,
            other => panic!("publish answered {other}: {v}"),
        }
        assert!(accepted.len() < 100, "the cap never refused");
    };
    assert_eq!(refused["error"]["code"], "unavailable", "{refused}");
    assert!(accepted.len() >= 10, "only {} accepted", accepted.len());
    assert_refused(&s, "big", &body, "memory.max_retained_bytes").await;
    // What room is left below the cap (less than a big message) takes a
    // few small messages at most, then those are refused too.
    let mut small = Vec::new();
    while s.publish_raw("new", r#"{"n":1}"#, None).await.0 == 200 {
        small.push(());
        assert!(small.len() < 20, "small messages past the cap");
    }
    assert_refused(&s, "new", r#"{"n":1}"#, "memory.max_retained_bytes").await;
    assert_eq!(history(&s, "big").await, (accepted, false), "every accepted message is kept");
    assert_eq!(history(&s, "new").await.0.len(), small.len());
    s.stop().await;
}

#[tokio::test]
async fn an_idle_topic_is_dropped_after_max_age_and_resumes_with_a_gap() {
    // Sweeps every max_age/2 = 500 ms; two topics at most, so a third is
    // accepted only once one of them was dropped.
    let s = TestServer::start(
        "[history]\nmax_age = \"1s\"\n[idempotency]\nttl = \"1s\"\n[limits]\nmax_topics = 2\n",
    )
    .await;
    let (status, v) = s.publish_raw("idle", r#"{"n":1}"#, Some("k")).await;
    assert_eq!(status, 200, "{v}");
    let old = v["id"].as_str().unwrap().to_owned();
    let filler = s.publish("filler", r#"{"n":1}"#).await;
    assert_refused(&s, "probe", r#"{"n":1}"#, "limits.max_topics").await;
    // "idle" was written first: it is dropped no later than "filler".
    publish_when_room(&s, "probe", r#"{"n":1}"#).await;
    // Nobody touched "idle": its data is gone, and a resume from its old id
    // is told so.
    assert_eq!(history(&s, "idle").await, (vec![], false));
    let mut c = s.ws("/v1/ws").await;
    let (before, ack) = c.subscribe("idle", Some(&old)).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["op"], "gap", "{before:?}");
    assert_eq!((&before[0]["topic"], &before[0]["after"]), (&json!("idle"), &json!(old)));
    assert_eq!(ack["recovered"], false, "{ack}");
    // Written again (same idempotency key, long expired): a new message
    // with a higher id, live to the resumed subscriber.
    let (status, again) = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (status, v) = s.publish_raw("idle", r#"{"n":2}"#, Some("k")).await;
            if status != 503 {
                return (status, v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no room for idle");
    assert_eq!(status, 200, "{again}");
    let new = again["id"].as_str().unwrap().to_owned();
    assert!(pid(&new) > pid(&old) && pid(&new) > pid(&filler), "{new} after {old}");
    let live = c.next_op("message").await;
    assert_eq!(live["id"], new.as_str());
    c.assert_quiet("q").await;
    s.stop().await;
}

/// `limits.max_topics` also bounds topics with local subscribers (either
/// engine): a subscribe to one more is refused with `unavailable`, one to a
/// topic already held works, and a last leave makes room.
async fn subscribed_topics_are_capped(engine: Engine<'_>) {
    let s = TestServer::start(&engine.config("[limits]\nmax_topics = 2\n")).await;
    let mut a = s.ws("/v1/ws?topic=a").await;
    let mut b = s.ws("/v1/ws?topic=b").await;
    a.assert_quiet("a").await;
    b.assert_quiet("b").await;
    let mut c = s.ws("/v1/ws").await;
    c.send(json!({"op": "subscribe", "topic": "c", "ref": "c"})).await;
    let refused = c.next().await;
    assert_eq!(
        (&refused["op"], &refused["ref"], &refused["code"]),
        (&json!("error"), &json!("c"), &json!("unavailable")),
        "{refused}"
    );
    let (before, ack) = c.subscribe("a", None).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack["op"], "ack");
    // The published message reaches both subscribers of "a".
    let id = s.publish("a", r#"{"n":1}"#).await;
    assert_eq!(a.next_op("message").await["id"], id.as_str());
    assert_eq!(c.next_op("message").await["id"], id.as_str());
    // b leaves: "c" fits once the server has seen it go.
    b.close_and_wait().await;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            c.send(json!({"op": "subscribe", "topic": "c", "ref": "c"})).await;
            let v = c.next().await;
            if v["op"] == "ack" {
                return;
            }
            assert_eq!(v["code"], "unavailable", "{v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("room for c never came back");
    let id = s.publish("c", r#"{"n":2}"#).await;
    assert_eq!(c.next_op("message").await["id"], id.as_str());
    s.stop().await;
}

engine_tests! {
    #[tokio::test]
    subscribed_topics_are_capped_memory, subscribed_topics_are_capped_redis => subscribed_topics_are_capped
}
