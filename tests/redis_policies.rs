//! Topic policies on the Redis engine (issue 15, contract §11) against a
//! real `redis-server`: coalescing keys stored with the entry (history and
//! the live path), per-topic retention (`[[topics]]` length and age,
//! including the age sweep of a short-lived topic), and ephemeral messages
//! across two gateways on one Redis (delivered once per subscriber on both,
//! never stored, no cursor move, no echo, `unavailable` during an outage,
//! back after it).
#![allow(missing_docs, clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::redis::{cli, RedisServer};
use support::*;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rtgate::core::engine::PublishOptions;
use rtgate::core::pattern::Pattern;
use rtgate::core::policy::{Policies, Retention, TopicPolicy};
use rtgate::core::{Engine, Feed, Message, MessageId, Topic};
use rtgate::engine::redis::{RedisEngine, RedisOptions};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The key prefix of every engine and gateway here.
const PREFIX: &str = "pol:";

/// Records what the engine hands to the feed, and wakes waiters.
#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<Arc<Message>>>,
    more: Notify,
}

impl Feed for Recorder {
    fn deliver(&self, message: &Arc<Message>) {
        self.got.lock().push(Arc::clone(message));
        self.more.notify_waiters();
    }

    fn reset(&self, _topic: &Topic) {}
}

impl Recorder {
    /// Waits until `n` messages were delivered; returns them.
    async fn wait_for(&self, n: usize) -> Vec<Arc<Message>> {
        tokio::time::timeout(WAIT, async {
            loop {
                let more = self.more.notified();
                tokio::pin!(more);
                more.as_mut().enable();
                {
                    let got = self.got.lock();
                    if got.len() >= n {
                        return got.clone();
                    }
                }
                more.await;
            }
        })
        .await
        .expect("live messages timed out")
    }
}

/// One Redis engine on `redis` (one key group) with `policies`, feeding
/// `feed`; cancel the token to stop its tasks.
fn engine(
    redis: &RedisServer,
    policies: Option<Policies>,
    feed: Arc<Recorder>,
) -> (Arc<RedisEngine>, CancellationToken) {
    let token = CancellationToken::new();
    let shutdown = rtgate::shutdown::Shutdown::new(token.clone(), Duration::from_secs(1));
    let opts = RedisOptions {
        url: redis.url(),
        cluster_urls: vec![],
        key_prefix: PREFIX.into(),
        shards: 1,
        max_len: 1000,
        max_age: Duration::from_secs(3600),
        idempotency_ttl: Duration::from_secs(3600),
        idempotency_max_keys: 1000,
        op_timeout: Duration::from_secs(2),
        block: Duration::from_secs(2),
        routes: None,
        policies: policies.map(Arc::new),
    };
    (RedisEngine::start(opts, feed, &shutdown).unwrap(), token)
}

/// `[[topics]]` as policies: `short.*` keeps 3 messages for `age`, every
/// other topic 1000 for an hour.
fn short_policies(age: Duration) -> Policies {
    let default = TopicPolicy::defaults(Retention { max_len: 1000, max_age: Duration::from_secs(3600) });
    let short = TopicPolicy { history: Retention { max_len: 3, max_age: age }, ..default.clone() };
    Policies::new(vec![(Pattern::parse("short.*").unwrap(), short)], default)
}

/// The engine's key-group hash (FNV-1a), to pick topics of every group.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn stream_key(topic: &str) -> String {
    format!("{PREFIX}{{s0}}:t:{topic}")
}

async fn publish(e: &RedisEngine, t: &Topic, data: &'static str, key: Option<&str>) -> MessageId {
    let options = PublishOptions { idempotency_key: None, key };
    e.publish_with(t, Bytes::from_static(data.as_bytes()), options).await.unwrap().id
}

/// A keyed message keeps its key through history and the live path; an
/// unkeyed one (and an entry written without the field, as older versions
/// did) reads as no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_keys_round_trip_through_history_and_live() {
    let redis = RedisServer::start();
    let feed = Arc::new(Recorder::default());
    let (e, token) = engine(&redis, None, Arc::clone(&feed));
    let t = topic("prices");
    tokio::time::timeout(WAIT, e.watch(&t)).await.expect("watch timed out").unwrap();

    let a = publish(&e, &t, r#"{"p":1}"#, Some("eur:usd")).await;
    let b = publish(&e, &t, r#"{"p":2}"#, None).await;
    // An entry of the old layout (data only), written straight to Redis.
    let old = cli(redis.port, &["XADD", &stream_key("prices"), "*", "d", r#"{"p":3}"#]);
    let c: MessageId = old.trim().parse().expect("XADD id");
    let d = publish(&e, &t, r#"{"p":4}"#, Some("gbp")).await;

    let want = vec![(a, Some("eur:usd")), (b, None), (c, None), (d, Some("gbp"))];
    let h = e.history(&t, Some(MessageId::ZERO), 100).await.unwrap();
    let got: Vec<_> = h.messages.iter().map(|m| (m.id, m.key.as_deref())).collect();
    assert_eq!(got, want, "history");
    let newest = e.history(&t, None, 2).await.unwrap();
    let got: Vec<_> = newest.messages.iter().map(|m| (m.id, m.key.as_deref())).collect();
    assert_eq!(got, want[2..].to_vec(), "newest page");

    let live = feed.wait_for(4).await;
    let got: Vec<_> = live.iter().map(|m| (m.id, m.key.as_deref())).collect();
    assert_eq!(got, want, "live path");
    assert_eq!(&live[0].data[..], br#"{"p":1}"#);
    token.cancel();
}

/// `[[topics]]` with a small `max_len` on `short.*`: only those topics are
/// cut to 3 (and report the gap); another topic keeps all its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_topic_max_len_trims_only_matching_topics() {
    let redis = RedisServer::start();
    let (e, token) = engine(&redis, Some(short_policies(Duration::from_secs(3600))), Arc::default());
    let (short, other) = (topic("short.a"), topic("other"));
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(publish(&e, &short, "1", None).await);
        publish(&e, &other, "2", None).await;
    }
    let h = e.history(&short, Some(ids[0]), 100).await.unwrap();
    assert!(h.truncated, "short.a lost messages after its first id");
    assert_eq!(h.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids[7..].to_vec());
    assert_eq!((h.oldest, h.trimmed), (Some(ids[7]), Some(ids[6])));
    let h = e.history(&other, Some(MessageId::ZERO), 100).await.unwrap();
    assert_eq!((h.messages.len(), h.truncated, h.trimmed), (10, false, None));
    assert_eq!(cli(redis.port, &["XLEN", &stream_key("short.a")]).trim(), "3");
    assert_eq!(cli(redis.port, &["XLEN", &stream_key("other")]).trim(), "10");
    token.cancel();
}

/// A topic whose `max_age` (4 s) is far shorter than `[history]`'s (1 h) is
/// scored in the shared age index by its own expiry, and the sweep trims
/// its expired entry on time while the topic is idle (no publish, no read
/// touches it); the long-lived topic is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_max_age_topic_is_swept_on_time() {
    const AGE_MS: u64 = 4000;
    let redis = RedisServer::start();
    let (e, token) = engine(&redis, Some(short_policies(Duration::from_millis(AGE_MS))), Arc::default());
    let (short, long) = (topic("short.age"), topic("long.age"));
    let first = publish(&e, &short, "1", None).await;
    let long_first = publish(&e, &long, "1", None).await;
    // The second entry must be younger than the first by a clear margin:
    // this is time passing in Redis, not synchronisation.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let second = publish(&e, &short, "2", None).await;
    publish(&e, &long, "2", None).await;

    let index = format!("{PREFIX}{{s0}}:a");
    let score = |t: &str| cli(redis.port, &["ZSCORE", &index, t]).trim().parse::<u64>().expect("score");
    assert_eq!(score("short.age"), first.ms + AGE_MS, "scored by its own expiry");
    assert_eq!(score("long.age"), long_first.ms + 3_600_000);

    // Due 2 s from now; the sweep (every second) must cut `first` before
    // the stream itself expires (AGE_MS after `second`, 4 s from now).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(AGE_MS - 200);
    let left = loop {
        let ids = cli(redis.port, &["XRANGE", &stream_key("short.age"), "-", "+"]);
        if !ids.contains(&first.to_string()) {
            break ids;
        }
        assert!(tokio::time::Instant::now() < deadline, "first entry not swept in time: {ids}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(left.contains(&second.to_string()), "the younger entry stays: {left}");
    assert_eq!(score("short.age"), second.ms + AGE_MS, "re-scored by the next oldest");
    assert_eq!(cli(redis.port, &["XLEN", &stream_key("long.age")]).trim(), "2");
    let h = e.history(&short, Some(first), 10).await.unwrap();
    assert_eq!(h.messages.iter().map(|m| m.id).collect::<Vec<_>>(), vec![second]);
    assert_eq!(h.trimmed, Some(first));
    token.cancel();
}

/// Waits until Redis counts `n` subscribers on the group's ephemeral
/// channel (the gateways' subscriptions are open).
async fn wait_subscribers(redis: &RedisServer, n: usize) {
    let channel = format!("{PREFIX}{{s0}}:e");
    tokio::time::timeout(WAIT, async {
        loop {
            let out = cli(redis.port, &["PUBSUB", "NUMSUB", &channel]);
            if out.lines().nth(1).and_then(|l| l.trim().parse::<usize>().ok()) == Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("ephemeral subscriptions not open");
}

/// The next frame, asserting it is the ephemeral form of §11 (no id, no
/// cursor).
async fn next_ephemeral(ws: &mut WsClient, topic: &str, data: Value) {
    let mut v = ws.next_op("message").await;
    // A WS sender with auth off is named by its connection id (16 hex).
    if let Some(u) = v.as_object_mut().and_then(|o| o.remove("user")) {
        assert_eq!(u.as_str().map(str::len), Some(16), "{u}");
    }
    assert_eq!(v, json!({"op": "message", "topic": topic, "data": data, "ephemeral": true}), "{v}");
}

/// Ephemeral messages over Redis between two gateways: a WS publish on A
/// reaches a subscriber on B and one on A exactly once each and is not
/// echoed to the publishing connection; an HTTP one on B answers its
/// §11 form and reaches all three; neither is in history nor moves a
/// cursor (the next stored message follows, and a resume from the cursor
/// before them gets exactly that message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_messages_cross_processes_once_and_are_never_stored() {
    let redis = RedisServer::start();
    let (a, b) = redis.two_servers(&format!("key_prefix = \"{PREFIX}\"\nshards = 1\n")).await;
    wait_subscribers(&redis, 2).await;
    let t = "room.1";
    let mut on_a = a.ws("/v1/ws").await;
    let mut on_b = b.ws("/v1/ws").await;
    let mut publisher = a.ws("/v1/ws").await;
    for ws in [&mut on_a, &mut on_b, &mut publisher] {
        let (before, _) = ws.subscribe(t, None).await;
        assert!(before.is_empty(), "{before:?}");
    }
    let first = a.publish(t, r#"{"n":1}"#).await;
    let mut cursor = String::new();
    for ws in [&mut on_a, &mut on_b, &mut publisher] {
        let m = ws.next_op("message").await;
        assert_eq!(m["id"], first.as_str());
        cursor = m["cursor"].as_str().expect("cursor").to_owned();
    }

    publisher
        .send(json!({"op": "publish", "topic": t, "data": {"typing": true}, "ephemeral": true, "ref": "e1"}))
        .await;
    assert_eq!(publisher.next().await, json!({"op": "ack", "ref": "e1"}));
    next_ephemeral(&mut on_a, t, json!({"typing": true})).await;
    next_ephemeral(&mut on_b, t, json!({"typing": true})).await;

    let (status, body) = {
        let res = tokio::time::timeout(
            WAIT,
            b.http.post(b.url(&format!("/v1/publish/{t}?ephemeral=true"))).body(r#"{"x":2}"#).send(),
        )
        .await
        .expect("publish timed out")
        .expect("publish");
        (res.status().as_u16(), res.json::<Value>().await.expect("json"))
    };
    assert_eq!((status, body), (200, json!({"topic": t, "ephemeral": true})));
    for ws in [&mut on_a, &mut on_b, &mut publisher] {
        next_ephemeral(ws, t, json!({"x": 2})).await;
    }

    let second = b.publish(t, r#"{"n":2}"#).await;
    for ws in [&mut on_a, &mut on_b, &mut publisher] {
        // Exactly once: the stored message is the very next frame.
        let m = ws.next_op("message").await;
        assert_eq!((m["id"].as_str(), m.get("ephemeral")), (Some(second.as_str()), None), "{m}");
        ws.assert_quiet("q").await;
    }
    for s in [&a, &b] {
        let (status, h) = s.get(&format!("/v1/history/{t}")).await;
        assert_eq!(status, 200, "{h}");
        let ids: Vec<&str> =
            h["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [first.as_str(), second.as_str()], "{h}");
    }
    // Resuming from the cursor of the first message gets the second only.
    let mut resumed = b.ws(&format!("/v1/ws?topic={t}&cursor={cursor}")).await;
    let m = resumed.next_op("message").await;
    assert_eq!(m["id"], second.as_str());
    resumed.assert_quiet("r").await;
    a.stop().await;
    b.stop().await;
}

/// With Redis stopped an ephemeral publish answers `unavailable` (WS error
/// frame, HTTP 503); after Redis is back the subscription reopens and
/// ephemeral messages cross processes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_publish_during_an_outage_is_unavailable_then_recovers() {
    let mut redis = RedisServer::start();
    let (a, b) = redis.two_servers(&format!("key_prefix = \"{PREFIX}\"\nshards = 1\n")).await;
    wait_subscribers(&redis, 2).await;
    let t = "room.out";
    let mut publisher = a.ws("/v1/ws").await;

    redis.stop();
    publisher
        .send(json!({"op": "publish", "topic": t, "data": {"typing": true}, "ephemeral": true, "ref": "e1"}))
        .await;
    let v = publisher.next_op("error").await;
    assert_eq!((v["code"].as_str(), v["ref"].as_str()), (Some("unavailable"), Some("e1")), "{v}");
    let res = tokio::time::timeout(
        WAIT,
        a.http.post(a.url(&format!("/v1/publish/{t}?ephemeral=true"))).body("1").send(),
    )
    .await
    .expect("publish timed out")
    .expect("publish");
    assert_eq!(res.status().as_u16(), 503);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    redis.restart();
    wait_subscribers(&redis, 2).await;
    wait_status(&b, "/readyz", 200, WAIT).await;
    let mut on_b = b.ws("/v1/ws").await;
    on_b.subscribe(t, None).await;
    wait_status(&a, "/readyz", 200, WAIT).await;
    publisher
        .send(json!({"op": "publish", "topic": t, "data": {"back": true}, "ephemeral": true, "ref": "e2"}))
        .await;
    assert_eq!(publisher.next().await, json!({"op": "ack", "ref": "e2"}));
    next_ephemeral(&mut on_b, t, json!({"back": true})).await;
    on_b.assert_quiet("b").await;
    a.stop().await;
    b.stop().await;
}

/// With auth on, the publisher's user id (JWT `sub`) travels with the
/// ephemeral message to the other process: `"user": "alice"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishers_user_crosses_processes() {
    const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
    let token = |sub: &str| {
        let exp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
        let claims =
            json!({"sub": sub, "exp": exp, "topics": {"subscribe": ["chat.*"], "publish": ["chat.*"]}});
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)
            .unwrap()
    };
    let redis = RedisServer::start();
    let rest = format!("key_prefix = \"{PREFIX}\"\nshards = 1\n[auth]\nhmac_secrets = [\"{SECRET}\"]\n");
    let (a, b) = redis.two_servers(&rest).await;
    wait_subscribers(&redis, 2).await;
    let t = "chat.room";
    let mut bob = b.ws(&format!("/v1/ws?access_token={}", token("bob"))).await;
    bob.subscribe(t, None).await;
    let mut alice = a.ws(&format!("/v1/ws?access_token={}", token("alice"))).await;
    alice.subscribe(t, None).await;
    alice.send(json!({"op": "publish", "topic": t, "data": "hi", "ephemeral": true, "ref": "e"})).await;
    assert_eq!(alice.next().await, json!({"op": "ack", "ref": "e"}));
    let v = bob.next_op("message").await;
    assert_eq!(v, json!({"op": "message", "topic": t, "data": "hi", "ephemeral": true, "user": "alice"}));
    bob.assert_quiet("b").await;
    alice.assert_quiet("a").await;
    a.stop().await;
    b.stop().await;
}

/// Sharded pub/sub on a Cluster: one channel per key group, each on its
/// group's slot; ephemeral messages on topics of every group cross from A
/// to B once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_messages_cross_processes_on_a_cluster() {
    const SHARDS: usize = 4;
    let cluster = tokio::task::block_in_place(support::redis::RedisCluster::start);
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let toml = format!(
        "[engine]\nkind = \"redis\"\n[redis]\nkey_prefix = \"{PREFIX}\"\nshards = {SHARDS}\ncluster_urls = [{}]\n",
        urls.join(", ")
    );
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    wait_status(&a, "/readyz", 200, WAIT).await;
    wait_status(&b, "/readyz", 200, WAIT).await;
    // Both processes hold a sharded subscription to every group's channel
    // (each counted on the node that owns its slot).
    tokio::time::timeout(WAIT, async {
        loop {
            let open = (0..SHARDS).all(|g| {
                let channel = format!("{PREFIX}{{s{g}}}:e");
                let n: usize = cluster
                    .nodes
                    .iter()
                    .filter_map(|n| {
                        let out = cli(n.port, &["PUBSUB", "SHARDNUMSUB", &channel]);
                        out.lines().nth(1).and_then(|l| l.trim().parse::<usize>().ok())
                    })
                    .sum();
                n == 2
            });
            if open {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("sharded subscriptions not open");

    let topics: Vec<String> = (0..12).map(|i| format!("cl.e{i}")).collect();
    let groups: std::collections::BTreeSet<u32> = topics.iter().map(|t| fnv1a(t) % SHARDS as u32).collect();
    assert_eq!(groups.len(), SHARDS, "the topics cover every key group");
    let mut on_b = b.ws("/v1/ws").await;
    for t in &topics {
        on_b.subscribe(t, None).await;
    }
    for (i, t) in topics.iter().enumerate() {
        let res = tokio::time::timeout(
            WAIT,
            a.http.post(a.url(&format!("/v1/publish/{t}?ephemeral=true"))).body(i.to_string()).send(),
        )
        .await
        .expect("publish timed out")
        .expect("publish");
        assert_eq!(res.status().as_u16(), 200);
        next_ephemeral(&mut on_b, t, json!(i)).await;
    }
    on_b.assert_quiet("b").await;
    a.stop().await;
    b.stop().await;
}
