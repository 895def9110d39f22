//! The embedded engine: lists, events, grace, SSE, count topics, HTTP codes.

use serde_json::{json, Value};

use crate::support::sse::Sse;
use crate::support::TestServer;
use crate::*;

/// A member's join reaches a watcher, the list (HTTP and the WebSocket op)
/// names both connections, and the member's close is a leave after grace.
#[tokio::test]
async fn lists_and_events_over_websocket() {
    let s = TestServer::start(&presence_cfg(200, 2000)).await;
    let mut w = Watcher::open(&s, "room.a", None).await;
    let me = w.joins[0].clone();
    assert_eq!(me["user"], me["client"], "auth off: the user is the connection id");
    assert_eq!(me["client"].as_str().unwrap().len(), 16);
    let m = member(&s, "room.a", None).await;
    w.until(|w| w.joins.len() == 2).await;
    let other = w.joins[1].clone();
    assert_ne!(other["client"], me["client"]);

    let (status, v) = list(&s, "room.a", None).await;
    assert_eq!(status, 200);
    assert_eq!((v["topic"].as_str(), v["users"].as_u64()), (Some("room.a"), Some(2)));
    let clients: Vec<&str> =
        v["clients"].as_array().unwrap().iter().map(|c| c["client"].as_str().unwrap()).collect();
    assert_eq!(clients.len(), 2);
    assert!(
        clients.contains(&me["client"].as_str().unwrap())
            && clients.contains(&other["client"].as_str().unwrap())
    );
    assert!(v["clients"][0]["since"].as_u64().unwrap() > 0);

    w.ws.send(json!({"op": "presence", "topic": "room.a", "ref": 9})).await;
    let ack = loop {
        let f = w.ws.next().await;
        if f["op"] == "ack" {
            break f;
        }
    };
    assert_eq!(
        (ack["ref"].as_u64(), ack["topic"].as_str(), ack["users"].as_u64()),
        (Some(9), Some("room.a"), Some(2))
    );
    assert_eq!(ack["clients"].as_array().unwrap().len(), 2);
    // The op on a topic without presence: an error frame, the connection goes on.
    w.ws.send(json!({"op": "presence", "topic": "plain", "ref": 10})).await;
    let err = w.ws.next().await;
    assert_eq!(
        (err["op"].as_str(), err["code"].as_str(), err["ref"].as_u64()),
        (Some("error"), Some("bad_request"), Some(10))
    );

    m.close_and_wait().await;
    let leave = w.frame().await;
    assert_eq!(leave["op"], "leave", "{leave}");
    assert_eq!((leave["topic"].as_str(), &leave["client"]), (Some("room.a"), &other["client"]));
    wait_list(&s, "room.a", |v| v["users"] == 1).await;
    assert_eq!(w.frames, 3, "own join, the member's join, its leave");
    s.stop().await;
}

/// A user whose connection closes and comes back (a new connection) within
/// grace causes neither a leave nor a join; `info` is the token's.
#[tokio::test]
async fn a_reconnect_within_grace_is_silent() {
    let s = TestServer::start(&format!("{}{}", presence_cfg(300, 3000), auth_cfg())).await;
    let topics = ["room.*"];
    let mut w = Watcher::open(&s, "room.g", Some(&token("watcher", None, &topics))).await;
    let alice = token("alice", Some(json!({"name": "Alice"})), &topics);
    let first = member(&s, "room.g", Some(&alice)).await;
    w.until(|w| w.joins.len() == 2).await;
    assert_eq!(w.joins[1]["user"], "alice");
    assert_eq!(w.joins[1]["info"], json!({"name": "Alice"}));
    let old_client = w.joins[1]["client"].clone();

    first.close_and_wait().await;
    let _second = member(&s, "room.g", Some(&alice)).await;
    // The old connection's entry goes after grace...
    let v = wait_list_as(&s, "room.g", Some(&alice), |v| {
        v["clients"].as_array().unwrap().iter().all(|c| c["client"] != old_client)
            && v["clients"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(v["users"], 2);
    // ...without a frame: the next one is carol's join, alone.
    let _carol = member(&s, "room.g", Some(&token("carol", None, &topics))).await;
    let f = w.frame().await;
    assert_eq!((f["op"].as_str(), f["user"].as_str()), (Some("join"), Some("carol")), "{f}");
    assert_eq!(w.frames, 3);
    s.stop().await;
}

/// SSE with `presence=1` gets `event: join` / `event: leave` with the
/// frame as data (no id line).
#[tokio::test]
async fn sse_subscribers_get_events() {
    let s = TestServer::start(&presence_cfg(100, 2000)).await;
    let mut sse = Sse::open(&s, "/v1/sse?topic=room.s&presence=1", None).await;
    let own = sse.next().await;
    assert_eq!(own.event, "join", "{own:?}");
    assert!(own.id.is_empty(), "no id line: {own:?}");
    let own: Value = serde_json::from_str(&own.data).unwrap();
    assert_eq!(own["topic"], "room.s");
    let m = member(&s, "room.s", None).await;
    let join = sse.next().await;
    assert_eq!(join.event, "join");
    let join: Value = serde_json::from_str(&join.data).unwrap();
    assert_ne!(join["client"], own["client"]);
    m.close_and_wait().await;
    let leave = sse.next().await;
    assert_eq!(leave.event, "leave");
    let leave: Value = serde_json::from_str(&leave.data).unwrap();
    assert_eq!(leave["client"], join["client"]);
    s.stop().await;
}

/// A `presence = "count"` topic: `presence_count` frames only, at most one
/// a second; its list has the number of users and no connections.
#[tokio::test]
async fn count_topics_send_counts_at_most_once_a_second() {
    let s = TestServer::start(&presence_cfg(100, 2000)).await;
    let mut ws = s.ws("/v1/ws?topic=big.hall&presence=1").await;
    let first = ws.next().await;
    assert_eq!(first, json!({"op": "presence_count", "topic": "big.hall", "users": 1}));
    let at = tokio::time::Instant::now();
    let mut members = Vec::new();
    for _ in 0..5 {
        members.push(member(&s, "big.hall", None).await);
    }
    let mut seen = vec![];
    loop {
        let f = ws.next().await;
        assert_eq!(f["op"], "presence_count", "{f}");
        seen.push((at.elapsed(), f["users"].as_u64().unwrap()));
        if f["users"] == 6 {
            break;
        }
    }
    assert!(seen.len() <= 2, "five joins within a second: at most two count frames, got {seen:?}");
    assert!(seen[0].0.as_millis() >= 900, "a second after the first frame: {seen:?}");
    let (status, v) = list(&s, "big.hall", None).await;
    assert_eq!((status, v["users"].as_u64(), v["clients"].as_array().map(Vec::len)), (200, Some(6), Some(0)));
    s.stop().await;
}

/// `GET /v1/presence/{topic}`: a bad topic is `bad_topic`, a topic without
/// presence `bad_request`; with auth on the subscribe grant is needed.
#[tokio::test]
async fn http_endpoint_codes() {
    let s = TestServer::start(&format!("{}{}", presence_cfg(100, 2000), auth_cfg())).await;
    let ok = token("u", None, &["room.*", "plain"]);
    let (status, v) = list(&s, "bad%20topic", Some(&ok)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_topic")), "{v}");
    let (status, v) = list(&s, "plain", Some(&ok)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_request")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("presence"), "{v}");
    let (status, v) = list(&s, "room.x", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{v}");
    let (status, v) = list(&s, "room.x", Some(&token("u", None, &["other.*"]))).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (status, v) = list(&s, "room.x", Some(&ok)).await;
    assert_eq!((status, v), (200, json!({"topic": "room.x", "users": 0, "clients": []})));
    s.stop().await;
}

/// A token refresh that no longer allows the topic ends the membership
/// (a leave after grace), like an unsubscribe; an unsubscribe does too.
#[tokio::test]
async fn a_refresh_dropping_the_topic_and_an_unsubscribe_leave() {
    let s = TestServer::start(&format!("{}{}", presence_cfg(100, 2000), auth_cfg())).await;
    let mut w = Watcher::open(&s, "room.f", Some(&token("watcher", None, &["room.*"]))).await;
    let mut dave = member(&s, "room.f", Some(&token("dave", None, &["room.*"]))).await;
    let mut erin = member(&s, "room.f", Some(&token("erin", None, &["room.*"]))).await;
    w.until(|w| w.joins.len() == 3).await;
    dave.send(json!({"op": "refresh", "token": token("dave", None, &["other.*"]), "ref": "r"})).await;
    let f = dave.next().await;
    assert_eq!((f["op"].as_str(), f["code"].as_str()), (Some("error"), Some("forbidden")), "{f}");
    dave.next_op("ack").await;
    let leave = w.frame().await;
    assert_eq!((leave["op"].as_str(), leave["user"].as_str()), (Some("leave"), Some("dave")), "{leave}");
    erin.send(json!({"op": "unsubscribe", "topic": "room.f", "ref": "u"})).await;
    erin.next_op("ack").await;
    let leave = w.frame().await;
    assert_eq!((leave["op"].as_str(), leave["user"].as_str()), (Some("leave"), Some("erin")), "{leave}");
    s.stop().await;
}

/// The embedded engine's occupancy events reach a webhook endpoint once
/// per transition.
#[tokio::test]
async fn occupancy_webhooks_on_the_embedded_engine() {
    use base64::Engine as _;
    let secret =
        format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode("presence-memory-secret-0123"));
    let rx =
        crate::receiver::Receiver::start(std::slice::from_ref(&secret), crate::receiver::always(200)).await;
    let hook = format!(
        "[[webhooks]]\nname = \"occ\"\nurl = {:?}\nsecrets = [{secret:?}]\ntopics = [\"presence.*\"]\nbackoff = \"50ms\"\n",
        rx.url
    );
    let s = TestServer::start(&format!("{}{hook}", presence_cfg(100, 2000))).await;
    let m = member(&s, "room.o", None).await;
    let got = rx.wait_for(WAIT, "occupied + online", |r| r.len() >= 2).await;
    let mut topics: Vec<&str> = got.iter().map(|r| r.body["topic"].as_str().unwrap()).collect();
    topics.sort();
    assert_eq!(topics, ["presence.topic.occupied", "presence.user.online"]);
    assert_eq!(
        got.iter().find(|r| r.body["topic"] == "presence.topic.occupied").unwrap().body["data"]["topic"],
        "room.o"
    );
    m.close_and_wait().await;
    let got = rx.wait_for(WAIT, "vacated + offline", |r| r.len() >= 4).await;
    let mut topics: Vec<&str> = got[2..].iter().map(|r| r.body["topic"].as_str().unwrap()).collect();
    topics.sort();
    assert_eq!(topics, ["presence.topic.vacated", "presence.user.offline"]);
    assert_eq!(got[2..].iter().map(|r| r.body["data"]["user"].clone()).filter(|u| !u.is_null()).count(), 1);
    s.stop().await;
}

/// `presence.max_list` caps the listed connections; `users` counts all.
#[tokio::test]
async fn the_list_is_capped_at_max_list() {
    let cfg = presence_cfg(100, 2000).replace("max_list = 5000", "max_list = 2");
    let s = TestServer::start(&cfg).await;
    let _m: Vec<_> = futures_util::future::join_all((0..3).map(|_| member(&s, "room.cap", None))).await;
    let v = wait_list(&s, "room.cap", |v| v["users"] == 3).await;
    assert_eq!(v["clients"].as_array().unwrap().len(), 2, "{v}");
    s.stop().await;
}
