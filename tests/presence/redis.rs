//! Two and three processes on one Redis: lists and events across them,
//! `kill -9` of one, occupancy webhooks once per transition.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use tokio::time::Instant;

use crate::receiver::{always, Receiver};
use crate::support::binary::Gateway;
use crate::support::redis::RedisServer;
use crate::support::{WsClient, WAIT};
use crate::*;

/// A member on B is seen by a watcher on A (join, then leave after grace),
/// and both processes list both connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_events_across_processes() {
    let redis = RedisServer::start();
    let (a, b) = redis.two_servers(&format!("shards = 2\n{}", presence_cfg(200, 2000))).await;
    let mut w = Watcher::open(&a, "room.r", None).await;
    let m = member(&b, "room.r", None).await;
    w.until(|w| w.joins.len() == 2).await;
    let other = w.joins[1]["client"].clone();
    for s in [&a, &b] {
        let v = wait_list(s, "room.r", |v| v["users"] == 2).await;
        let clients: BTreeSet<&str> =
            v["clients"].as_array().unwrap().iter().map(|c| c["client"].as_str().unwrap()).collect();
        assert_eq!(clients, [w.joins[0]["client"].as_str().unwrap(), other.as_str().unwrap()].into());
    }
    m.close_and_wait().await;
    let f = w.frame().await;
    assert_eq!((f["op"].as_str(), &f["client"]), (Some("leave"), &other), "{f}");
    wait_list(&b, "room.r", |v| v["users"] == 1).await;
    a.stop().await;
    b.stop().await;
}

/// Auth on, two processes: alice leaves A and comes back through B within
/// grace; the watcher on A sees nothing but the next real join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_another_process_within_grace_is_silent() {
    let redis = RedisServer::start();
    let cfg = format!("shards = 2\n{}{}", presence_cfg(400, 3000), auth_cfg());
    let (a, b) = redis.two_servers(&cfg).await;
    let topics = ["room.*"];
    let mut w = Watcher::open(&a, "room.x", Some(&token("watcher", None, &topics))).await;
    let alice = token("alice", None, &topics);
    let first = member(&a, "room.x", Some(&alice)).await;
    w.until(|w| w.joins.len() == 2).await;
    let old = w.joins[1]["client"].clone();
    first.close_and_wait().await;
    let _back = member(&b, "room.x", Some(&alice)).await;
    wait_list_as(&a, "room.x", Some(&alice), |v| {
        let c = v["clients"].as_array().unwrap();
        c.len() == 2 && c.iter().all(|c| c["client"] != old)
    })
    .await;
    let _carol = member(&b, "room.x", Some(&token("carol", None, &topics))).await;
    let f = w.frame().await;
    assert_eq!((f["op"].as_str(), f["user"].as_str()), (Some("join"), Some("carol")), "{f}");
    a.stop().await;
    b.stop().await;
}

/// Three processes; one is killed with -9 while three users are connected
/// to it only. Each survivor's watcher sees each of them leave exactly once,
/// within `presence.ttl` of the kill (plus a sweep and a batch window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_users_leave_once_within_ttl() {
    const TTL_MS: u64 = 2000;
    let redis = RedisServer::start();
    let rest = format!("shards = 2\n{}", presence_cfg(200, TTL_MS));
    let dir = std::env::temp_dir().join(format!("rtgate-presence-{}-{}", std::process::id(), redis.port));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, redis.config(&rest)).unwrap();
    let mut victim = Gateway::spawn(&["--config", path.to_str().unwrap()], &[]).await;
    let (a, b) = redis.two_servers(&rest).await;
    let mut wa = Watcher::open(&a, "room.k", None).await;
    let mut wb = Watcher::open(&b, "room.k", None).await;
    let mut doomed = Vec::new();
    for _ in 0..3 {
        let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{}/v1/ws?topic=room.k", victim.port)).await;
        ws.assert_quiet("ready").await;
        doomed.push(ws);
    }
    let v = wait_list(&a, "room.k", |v| v["users"] == 5).await;
    let mine: BTreeSet<String> =
        [&wa, &wb].iter().map(|w| w.joins[0]["client"].as_str().unwrap().to_owned()).collect();
    let victims: BTreeSet<String> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_owned())
        .filter(|c| !mine.contains(c))
        .collect();
    assert_eq!(victims.len(), 3);
    for w in [&mut wa, &mut wb] {
        w.until(|w| victims.iter().all(|c| w.joins.iter().any(|j| j["client"] == c.as_str()))).await;
    }
    victim.child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    for w in [&mut wa, &mut wb] {
        w.until(|w| victims.iter().all(|c| w.leaves.iter().any(|l| l["client"] == c.as_str()))).await;
        let took = killed.elapsed();
        assert!(took < Duration::from_millis(TTL_MS + 1000), "leaves after {took:?}");
    }
    let _marker = member(&a, "room.k", None).await;
    for w in [&mut wa, &mut wb] {
        let f = w.frame().await;
        assert_eq!(f["op"], "join", "the marker's join comes next, no repeated leave: {f}");
        assert_eq!(w.leaves.len(), 3, "each leave once: {:?}", w.leaves);
    }
    let v = wait_list(&b, "room.k", |v| v["users"] == 3).await;
    assert_eq!(v["clients"].as_array().unwrap().len(), 3);
    drop(doomed);
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `topic.occupied`, `user.online`, `user.offline`, `topic.vacated` reach a
/// webhook endpoint once per transition with two processes on one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupancy_webhooks_once_per_transition() {
    let redis = RedisServer::start();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode("presence-webhook-secret-0123456789")
    );
    let rx = Receiver::start(std::slice::from_ref(&secret), always(200)).await;
    let hook = format!(
        "[[webhooks]]\nname = \"occ\"\nurl = {:?}\nsecrets = [{secret:?}]\ntopics = [\"presence.*\"]\nbackoff = \"50ms\"\n\
         [webhook_queue]\npoll_interval = \"50ms\"\n",
        rx.url
    );
    let cfg = format!("shards = 2\n{}{}{hook}", presence_cfg(200, 2000), auth_cfg());
    let (a, b) = redis.two_servers(&cfg).await;
    let topics = ["room.*"];
    let (alice, bob) = (token("alice", None, &topics), token("bob", None, &topics));
    // alice twice (both processes) and bob: one occupied, two online.
    let a1 = member(&a, "room.w", Some(&alice)).await;
    let a2 = member(&b, "room.w", Some(&alice)).await;
    let b1 = member(&b, "room.w", Some(&bob)).await;
    let got = rx.wait_for(WAIT, "occupied + 2 online", |r| r.len() >= 3).await;
    let kinds = |r: &[crate::receiver::Received]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = r
            .iter()
            .map(|r| {
                let d = &r.body["data"];
                let who = d["topic"].as_str().or(d["user"].as_str()).unwrap_or_default().to_owned();
                (r.body["topic"].as_str().unwrap().to_owned(), who)
            })
            .collect();
        v.sort();
        v
    };
    let pair = |t: &str, w: &str| (t.to_owned(), w.to_owned());
    assert_eq!(
        kinds(&got),
        vec![
            pair("presence.topic.occupied", "room.w"),
            pair("presence.user.online", "alice"),
            pair("presence.user.online", "bob"),
        ]
    );
    assert!(got.iter().all(|r| r.verified && r.body["data"]["ts"].as_u64().unwrap() > 0));
    // bob leaves: offline after grace; alice closes one of two: nothing.
    b1.close_and_wait().await;
    a1.close_and_wait().await;
    rx.wait_for(WAIT, "bob offline", |r| r.len() >= 4).await;
    wait_list_as(&a, "room.w", Some(&alice), |v| v["clients"].as_array().unwrap().len() == 1).await;
    // The last one: alice offline, the room vacated.
    a2.close_and_wait().await;
    let got = rx.wait_for(WAIT, "alice offline + vacated", |r| r.len() >= 6).await;
    // Another transition proves nothing more was queued before it.
    let _c = member(&a, "room.w2", Some(&token("carol", None, &topics))).await;
    let all = rx.wait_for(WAIT, "room.w2 occupied + carol online", |r| r.len() >= 8).await;
    assert_eq!(
        kinds(&got),
        vec![
            pair("presence.topic.occupied", "room.w"),
            pair("presence.topic.vacated", "room.w"),
            pair("presence.user.offline", "alice"),
            pair("presence.user.offline", "bob"),
            pair("presence.user.online", "alice"),
            pair("presence.user.online", "bob"),
        ]
    );
    assert_eq!(all.len(), 8, "{:?}", kinds(&all));
    assert_eq!(rx.distinct().len(), 8, "each once");
    a.stop().await;
    b.stop().await;
}

/// A `"count"` topic across two processes: `presence_count` frames with the
/// users of both, no member list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_topics_across_processes() {
    let redis = RedisServer::start();
    let (a, b) = redis.two_servers(&format!("shards = 2\n{}", presence_cfg(100, 2000))).await;
    let mut ws = a.ws("/v1/ws?topic=big.r&presence=1").await;
    let first = ws.next().await;
    assert_eq!((first["op"].as_str(), first["users"].as_u64()), (Some("presence_count"), Some(1)), "{first}");
    let _m1 = member(&b, "big.r", None).await;
    let _m2 = member(&b, "big.r", None).await;
    loop {
        let f = ws.next().await;
        assert_eq!(f["op"], "presence_count", "{f}");
        if f["users"] == 3 {
            break;
        }
    }
    let (status, v) = list(&a, "big.r", None).await;
    assert_eq!((status, v["users"].as_u64(), v["clients"].as_array().map(Vec::len)), (200, Some(3), Some(0)));
    a.stop().await;
    b.stop().await;
}
