//! Redis engine limits (issue 11, items 9-12 and 17), through the real
//! server and a real `redis-server`: positions no client can make Redis
//! refuse, error replies that never flip readiness, keys that expire, an
//! unambiguous idempotency key layout, pages bounded in bytes, and `ts`
//! from Redis's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::redis::{cli, RedisServer};
use support::sse::{sse_path, Sse};
use support::*;

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

/// The largest id: nothing can follow it.
const MAX_ID: &str = "18446744073709551615-18446744073709551615";

/// Polls `/readyz` until it answers 200 (bounded).
async fn wait_ready(s: &TestServer) {
    wait_status(s, "/readyz", 200, Duration::from_secs(20)).await;
}

/// Asserts `/readyz` answers 200 now (and a few times over the next half
/// second: a flipped readiness would show at once).
async fn assert_still_ready(s: &TestServer, after: &str) {
    for _ in 0..5 {
        let (status, body) = s.get("/readyz").await;
        assert_eq!(status, 200, "/readyz after {after}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keys of the Redis on `port` matching `pattern`.
fn keys(port: u16, pattern: &str) -> Vec<String> {
    cli(port, &["--scan", "--pattern", pattern])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Polls until no key matches `pattern` (bounded by `within`).
async fn wait_keys_gone(port: u16, pattern: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = keys(port, pattern);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "keys {left:?} still there after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------ item 9

/// A forged position at the largest id, on every resume path, is answered
/// (an honest gap: nothing can follow it, and the engine never handed it
/// out) and never marks the gateway unready. Both engines.
async fn forged_max_after(engine: Engine<'_>) {
    let s = TestServer::start(&engine.config("")).await;
    wait_ready(&s).await;
    s.publish("forged", "1").await;

    let (status, v) = s.get(&format!("/v1/history/forged?after={MAX_ID}")).await;
    assert_eq!(status, 200, "history after the largest id: {v}");
    assert_eq!(v["messages"], json!([]), "{v}");
    assert_eq!(v["truncated"], true, "an id never handed out is lost history: {v}");
    assert_still_ready(&s, "history").await;

    let mut ws = s.ws("/v1/ws").await;
    let (before, ack) = ws.subscribe("forged", Some(MAX_ID)).await;
    assert_eq!(before.len(), 1, "one gap before the ack: {before:?}");
    assert_eq!(before[0]["op"], "gap", "{before:?}");
    assert_eq!(before[0]["after"], MAX_ID, "{before:?}");
    assert_eq!(ack["recovered"], false, "{ack}");
    ws.assert_quiet("after-forged").await;
    assert_still_ready(&s, "WebSocket subscribe").await;

    let topic = rtgate::core::Topic::new("forged").unwrap();
    let cursor = rtgate::core::Cursor::single(topic, MAX_ID.parse().unwrap()).encode();
    let mut sse = Sse::open(&s, &sse_path(&["forged"]), Some(&cursor)).await;
    let ev = sse.next().await;
    assert_eq!(ev.event, "gap", "{ev:?}");
    let gap: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(gap["after"], MAX_ID, "{gap}");
    assert_still_ready(&s, "SSE resume").await;

    let (status, v) = s.get(&format!("/v1/poll?topic=forged&cursor={cursor}&timeout=1")).await;
    assert_eq!(status, 200, "poll from the largest id: {v}");
    assert_eq!(v["messages"], json!([]), "{v}");
    assert_eq!(v["gaps"].as_array().map(Vec::len), Some(1), "{v}");
    assert_still_ready(&s, "poll").await;
    s.stop().await;
}

engine_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    memory_forged_max_after_is_a_gap, redis_forged_max_after_is_a_gap_and_keeps_ready
        => |e| forged_max_after(e)
}

/// Redis answering one command with an error reply (here: the topic's
/// stream key holds a string) is that request's error, in the contract's
/// vocabulary, and leaves readiness alone; other topics keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_error_reply_is_bad_request_and_keeps_ready() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("shards = 1")).await;
    wait_ready(&s).await;
    assert_eq!(cli(redis.port, &["set", "rtgate:{s0}:t:clobbered", "not a stream"]).trim(), "OK");

    let (status, v) = s.publish_raw("clobbered", "1", None).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    let (status, v) = s.get("/v1/history/clobbered?after=0-0").await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!("bad_request")), "{v}");
    assert_still_ready(&s, "an error reply").await;
    s.publish("fine", "1").await;
    s.stop().await;
}

// ------------------------------------------------------------ item 10

/// Every key of an idle topic expires: the stream and its trim marker at
/// `history.max_age` after the newest message, idempotency keys and their
/// index at `idempotency.ttl`. A resume from one of its ids afterwards is
/// an explicit gap, never silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topic_keys_expire_and_resume_reports_gap() {
    let redis = RedisServer::start();
    let cfg = redis.config("[history]\nmax_len = 2\nmax_age = \"2s\"\n[idempotency]\nttl = \"2s\"\n");
    let s = TestServer::start(&cfg).await;
    wait_ready(&s).await;
    let mut last = String::new();
    for i in 0..3 {
        let (status, v) = s.publish_raw("idle", &i.to_string(), Some(&format!("key-{i}"))).await;
        assert_eq!(status, 200, "{v}");
        last = v["id"].as_str().unwrap().to_owned();
    }
    let all = keys(redis.port, "*idle*");
    assert_eq!(all.len(), 2 + 1 + 3, "stream, marker, index and three idempotency keys: {all:?}");
    for k in &all {
        let ttl: i64 = cli(redis.port, &["pttl", k]).trim().parse().unwrap();
        assert!(ttl > 0 && ttl <= 2000, "{k} expires within max_age, PTTL {ttl}");
    }

    // Nobody touches the topic: its keys vanish by themselves.
    wait_keys_gone(redis.port, "*idle*", Duration::from_secs(20)).await;

    let (status, v) = s.get(&format!("/v1/history/idle?after={last}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((&v["messages"], &v["truncated"]), (&json!([]), &json!(true)), "{v}");
    let mut ws = s.ws("/v1/ws").await;
    let (before, ack) = ws.subscribe("idle", Some(&last)).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!((&before[0]["op"], &before[0]["after"]), (&json!("gap"), &json!(last)), "{before:?}");
    assert_eq!(ack["recovered"], false, "{ack}");
    // Live delivery goes on once the topic is written again.
    let id = s.publish("idle", "\"again\"").await;
    assert_eq!(ws.messages(1).await[0]["id"], id.as_str());
    s.stop().await;
}

/// An idle topic's older entries go at `history.max_age` too, not when the
/// stream expires with its newest one: the age sweep trims them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topic_old_entries_are_swept_by_age() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("shards = 1\n[history]\nmax_age = \"3s\"\n")).await;
    wait_ready(&s).await;
    let old = s.publish("swept", "\"old\"").await;
    // Age the first entry (the scenario, not a synchronisation).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let young = s.publish("swept", "\"young\"").await;
    // Nobody touches the topic: the old entry goes, the young one stays.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = "rtgate:{s0}:t:swept";
    loop {
        let ids = cli(redis.port, &["xrange", stream, "-", "+"]);
        if !ids.contains(&old) {
            assert!(ids.contains(&young), "the young entry went with the old one: {ids:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{old} still in the stream: {ids}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cli(redis.port, &["xlen", stream]).trim(), "1");
    s.stop().await;
}

/// A topic keeps at most `idempotency.max_keys_per_topic` keys; the oldest
/// are forgotten first (as in the embedded engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_per_topic_are_capped() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("[idempotency]\nmax_keys_per_topic = 3\n")).await;
    wait_ready(&s).await;
    let mut ids = vec![];
    for i in 0..5 {
        let (status, v) = s.publish_raw("capped", &i.to_string(), Some(&format!("k{i}"))).await;
        assert_eq!(status, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let idem = keys(redis.port, "*:i:*capped*");
    assert_eq!(idem.len(), 3, "{idem:?}");
    // The newest is remembered, the oldest forgotten.
    let (_, v) = s.publish_raw("capped", "\"retry\"", Some("k4")).await;
    assert_eq!(v["id"], ids[4].as_str(), "{v}");
    let (_, v) = s.publish_raw("capped", "\"retry\"", Some("k0")).await;
    assert_ne!(v["id"], ids[0].as_str(), "k0 was forgotten: published anew: {v}");
    s.stop().await;
}

/// The same on a three-node Cluster: every key the publish script touches
/// (stream, marker, idempotency key and index, forgotten keys) is in the
/// topic's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_cap_on_cluster() {
    let cluster = tokio::task::block_in_place(support::redis::RedisCluster::start);
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let toml = format!(
        "[engine]\nkind = \"redis\"\n[redis]\ncluster_urls = [{}]\n[idempotency]\nmax_keys_per_topic = 2\n",
        urls.join(", ")
    );
    let s = TestServer::start(&toml).await;
    wait_ready(&s).await;
    for t in ["cl.a", "cl.b", "cl.c"] {
        let mut ids = vec![];
        for i in 0..4 {
            let (status, v) = s.publish_raw(t, &i.to_string(), Some(&format!("k{i}"))).await;
            assert_eq!(status, 200, "{v}");
            ids.push(v["id"].as_str().unwrap().to_owned());
        }
        let (_, v) = s.publish_raw(t, "9", Some("k3")).await;
        assert_eq!(v["id"], ids[3].as_str(), "{v}");
        let stored: usize = cluster.nodes.iter().map(|n| keys(n.port, &format!("*:i:*{t}:*")).len()).sum();
        assert_eq!(stored, 2, "{t}");
    }
    s.stop().await;
}

// ------------------------------------------------------------ item 11

/// Topic `a` with key `b:c` and topic `a:b` with key `c` are two keys: the
/// second publish is stored, not answered with the first one's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_do_not_collide_across_topics() {
    let redis = RedisServer::start();
    // One key group, so both topics' keys share a prefix.
    let s = TestServer::start(&redis.config("shards = 1")).await;
    wait_ready(&s).await;
    let (status, first) = s.publish_raw("a", "1", Some("b:c")).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = s.publish_raw("a:b", "2", Some("c")).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["topic"], "a:b");
    let (_, h) = s.get("/v1/history/a:b").await;
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "the publish to a:b was stored: {h}");
    assert_eq!(msgs[0]["id"], second["id"], "{h}");
    assert_eq!(msgs[0]["data"], 2, "{h}");
    // Each key still dedupes its own topic.
    let (_, again) = s.publish_raw("a:b", "3", Some("c")).await;
    assert_eq!(again["id"], second["id"]);
    let (_, again) = s.publish_raw("a", "3", Some("b:c")).await;
    assert_eq!(again["id"], first["id"]);
    s.stop().await;
}

// ------------------------------------------------------------ item 12

/// One history page holds at most about 1 MiB of data; clients page on
/// with `after` and get everything, and a resume replays everything (a
/// page cut for size is not mistaken for "caught up").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_are_bounded_in_bytes() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("")).await;
    wait_ready(&s).await;
    let big = format!("\"{}\"", "x".repeat(60_000));
    let mut ids = vec![];
    for _ in 0..40 {
        ids.push(s.publish("big", &big).await);
    }
    let page_bytes = |v: &Value| -> usize {
        v["messages"].as_array().unwrap().iter().map(|m| m["data"].as_str().unwrap().len()).sum()
    };
    let (status, v) = s.get("/v1/history/big?after=0-0&limit=1000").await;
    assert_eq!(status, 200);
    let first = v["messages"].as_array().unwrap().len();
    assert!(first >= 1 && page_bytes(&v) <= (1 << 20) + 60_000, "{first} messages, {} bytes", page_bytes(&v));
    assert!(first < 40, "a page of 40 x 60 kB is cut");
    // Newest-first pages are bounded too.
    let (_, newest) = s.get("/v1/history/big?limit=1000").await;
    let n = newest["messages"].as_array().unwrap();
    assert!(!n.is_empty() && n.len() < 40, "{} newest", n.len());
    assert_eq!(n.last().unwrap()["id"], ids[39].as_str());

    // Paging by `after` gets every message once, in order.
    let mut got = vec![];
    let mut after = "0-0".to_owned();
    loop {
        let (_, v) = s.get(&format!("/v1/history/big?after={after}&limit=1000")).await;
        assert_eq!(v["truncated"], false);
        let page = v["messages"].as_array().unwrap();
        let Some(last) = page.last() else { break };
        after = last["id"].as_str().unwrap().to_owned();
        got.extend(page.iter().map(id_of));
    }
    assert_eq!(got, ids);

    // A resume from the start replays all 40, then goes live.
    let mut ws = s.ws("/v1/ws").await;
    let (before, ack) = ws.subscribe("big", Some("0-0")).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut replayed: Vec<String> = before.iter().map(id_of).collect();
    let rest = 40 - replayed.len();
    replayed.extend(ws.messages(rest).await.iter().map(id_of));
    assert_eq!(replayed, ids);
    let live = s.publish("big", "1").await;
    assert_eq!(ws.messages(1).await[0]["id"], live.as_str());
    s.stop().await;
}

/// Count trimming reads at most 100 entries per publish: after
/// `history.max_len` is lowered from 1000 to 10 over 300 messages, one
/// publish trims the oldest 100 (the rest over the next publishes), and the
/// trim marker still names the newest trimmed id exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_trimming_is_bounded_per_publish() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("shards = 1\n[history]\nmax_len = 1000\n")).await;
    wait_ready(&s).await;
    let mut ids = vec![];
    for i in 0..300 {
        ids.push(s.publish("lowered", &i.to_string()).await);
    }
    s.stop().await;
    let s = TestServer::start(&redis.config("shards = 1\n[history]\nmax_len = 10\n")).await;
    wait_ready(&s).await;
    ids.push(s.publish("lowered", "300").await);
    assert_eq!(cli(redis.port, &["xlen", "rtgate:{s0}:t:lowered"]).trim(), "201");
    let (_, v) = s.get(&format!("/v1/history/lowered?after={}&limit=1", ids[99])).await;
    assert_eq!(v["truncated"], false, "resuming at the newest trimmed id is no gap: {v}");
    assert_eq!(v["messages"][0]["id"], ids[100].as_str(), "{v}");
    let (_, v) = s.get(&format!("/v1/history/lowered?after={}&limit=1", ids[98])).await;
    assert_eq!(v["truncated"], true, "{v}");
    // The next publishes converge on max_len.
    for i in 0..3 {
        ids.push(s.publish("lowered", &format!("{}", 301 + i)).await);
    }
    assert_eq!(cli(redis.port, &["xlen", "rtgate:{s0}:t:lowered"]).trim(), "10");
    let (_, v) = s.get(&format!("/v1/history/lowered?after={}", ids[293])).await;
    assert_eq!(v["truncated"], false, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 10, "{v}");
    s.stop().await;
}

/// History on a non-empty stream does not run `XINFO STREAM` (which copies
/// the first and last entries with their payloads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_does_not_run_xinfo() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("")).await;
    wait_ready(&s).await;
    for i in 0..5 {
        s.publish("info", &i.to_string()).await;
    }
    let mut ws = s.ws("/v1/ws").await;
    ws.subscribe("info", Some("0-0")).await;
    for q in ["", "?after=0-0", "?limit=2"] {
        let (status, _) = s.get(&format!("/v1/history/info{q}")).await;
        assert_eq!(status, 200);
    }
    let stats = cli(redis.port, &["info", "commandstats"]);
    assert!(!stats.contains("cmdstat_xinfo"), "{stats}");
    s.stop().await;
}

// ------------------------------------------------------------ item 17

/// Two processes publishing concurrently to one topic: `ts` is Redis's
/// time (the id's ms part), so it never decreases in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ts_is_monotonic_per_topic_across_processes() {
    let redis = RedisServer::start();
    let (a, b) = redis.two_servers("").await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    let mut tasks = vec![];
    for p in 0..8 {
        let url = if p % 2 == 0 { a.url("/v1/publish/clock") } else { b.url("/v1/publish/clock") };
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut out = vec![];
            for i in 0..50 {
                let res = tokio::time::timeout(WAIT, http.post(&url).body(format!("{i}")).send())
                    .await
                    .expect("publish timed out")
                    .expect("publish");
                assert_eq!(res.status().as_u16(), 200);
                let v: Value = res.json().await.unwrap();
                out.push((v["id"].as_str().unwrap().to_owned(), v["ts"].as_u64().unwrap()));
            }
            out
        }));
    }
    let mut answered = vec![];
    for t in tasks {
        answered.extend(tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap());
    }
    answered.sort_by_key(|(id, _)| pid(id));
    assert_eq!(answered.len(), 400);
    for (id, ts) in &answered {
        assert_eq!(*ts, pid(id).0, "ts of {id} is its id's ms");
    }
    assert!(answered.windows(2).all(|w| w[0].1 <= w[1].1), "ts decreases in id order");
    let mut all = vec![];
    let mut after = "0-0".to_owned();
    loop {
        let (_, v) = b.get(&format!("/v1/history/clock?after={after}&limit=1000")).await;
        let page = v["messages"].as_array().unwrap().clone();
        let Some(last) = page.last() else { break };
        after = last["id"].as_str().unwrap().to_owned();
        all.extend(page);
    }
    let stored: Vec<(String, u64)> =
        all.iter().map(|m| (m["id"].as_str().unwrap().to_owned(), m["ts"].as_u64().unwrap())).collect();
    assert_eq!(stored, answered, "history says what publish answered");
    a.stop().await;
    b.stop().await;
}
