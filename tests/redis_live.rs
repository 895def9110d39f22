//! The Redis engine's live path against a real `redis-server` (issue 11):
//! entries trimmed before the live reader saw them are a gap, never a silent
//! jump (item 4); readiness does not follow a stalled data connection (item
//! 12); a reader behind the notify stream's cap misses nothing (item 13);
//! the last leave racing a first join of a topic never leaves the new
//! subscriber without live messages (item 3).
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::redis::RedisServer;
use support::sse::{sse_path, Sse};
use support::*;

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

/// Appends `n` entries to `stream` in one atomic script (so no reader can
/// run in between) the way a publisher of the gateway's key layout does
/// (`d` = data, `t` = ts), then trims it to `max_len` recording the newest
/// trimmed id in `marker`. Returns the ids appended.
async fn burst(redis: &RedisServer, stream: &str, marker: &str, n: usize, max_len: usize) -> Vec<String> {
    const SCRIPT: &str = r"
        local ids = {}
        for i = 1, tonumber(ARGV[1]) do
          ids[i] = redis.call('XADD', KEYS[1], '*', 'd', tostring(i), 't', ARGV[2])
        end
        local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[3])
        if excess > 0 then
          local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
          redis.call('SET', KEYS[2], old[#old][1])
          redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[3])
        end
        return ids";
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .expect("redis connect timed out")
        .expect("redis connect");
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let script = ::redis::Script::new(SCRIPT);
    let mut inv = script.key(stream);
    inv.key(marker).arg(n).arg(ts).arg(max_len);
    tokio::time::timeout(WAIT, inv.invoke_async::<Vec<String>>(&mut conn))
        .await
        .expect("burst timed out")
        .expect("burst")
}

/// Item 4: a burst larger than `max_len` lands between two reads of the live
/// reader (atomically, as if another gateway published faster than this one
/// reads). The live WebSocket and SSE subscribers are closed (1013 / end of
/// stream) instead of jumping silently over the trimmed ids, and their
/// resume by cursor reports the gap, then continues with what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_before_the_live_read_are_a_gap() {
    const MAX_LEN: usize = 5;
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config(&format!("shards = 1\n[history]\nmax_len = {MAX_LEN}\n"))).await;
    let topic = "live.trim";
    let mut ws = s.ws(&format!("/v1/ws?topic={topic}")).await;
    let mut sse = Sse::open(&s, &sse_path(&[topic]), None).await;
    let first = s.publish(topic, r#""first""#).await;
    let m = ws.next_op("message").await;
    assert_eq!(m["id"], first.as_str());
    let ws_cursor = m["cursor"].as_str().unwrap().to_owned();
    let (sse_cursor, m) = sse.message().await;
    assert_eq!(m["id"], first.as_str());

    // 20 entries, of which all but the newest MAX_LEN are trimmed at once.
    let stream = format!("rtgate:{{s0}}:t:{topic}");
    let marker = format!("rtgate:{{s0}}:m:{topic}");
    let appended = burst(&redis, &stream, &marker, 20, MAX_LEN).await;
    assert_eq!(appended.len(), 20);
    // One ordinary publish after it (trims one more).
    let last = s.publish(topic, r#""last""#).await;
    let retained: Vec<String> = appended[20 - MAX_LEN + 1..].iter().cloned().chain([last.clone()]).collect();

    // WebSocket: closed as unavailable, not a single message past the trim.
    let (frames, end) = ws.frames_until_end().await;
    assert!(frames.is_empty(), "frames past the trimmed ids instead of a close: {frames:?}");
    assert_paced_close(&end, 1013, "unavailable");
    let mut ws = s.ws(&format!("/v1/ws?topic={topic}&cursor={ws_cursor}")).await;
    let gap = ws.next_op("gap").await;
    assert_eq!(gap, json!({"op": "gap", "topic": topic, "after": first, "oldest": retained[0]}));
    assert_eq!(ids(&ws.messages(retained.len()).await), retained);
    ws.assert_quiet("ws").await;

    // SSE: the stream ends (or is aborted) with no message past the trimmed ids.
    let (rest, _clean) = sse.end_or_drop().await;
    assert!(rest.iter().all(|e| e.event != "message"), "messages past the trim: {rest:?}");
    let mut sse = Sse::open(&s, &sse_path(&[topic]), Some(&sse_cursor)).await;
    let ev = sse.next().await;
    assert_eq!(ev.event, "gap", "{ev:?}");
    let gap: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(gap, json!({"topic": topic, "after": first, "oldest": retained[0]}));
    let got: Vec<Value> = sse.messages(retained.len()).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(ids(&got), retained);

    // Both are live again.
    let again = s.publish(topic, r#""again""#).await;
    assert_eq!(ws.next_op("message").await["id"], again.as_str());
    assert_eq!(sse.message().await.1["id"], again.as_str());
    ws.assert_quiet("ws2").await;
    s.stop().await;
}

/// Item 13: the reader fell a whole notify-stream cap behind (simulated: the
/// notify stream is trimmed and refilled with 1,001 notifications of another
/// topic, atomically, while an entry lands in the watched topic's stream
/// with no notification of its own). A full batch whose previous position is
/// gone makes the reader read every watched topic: the entry is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_the_notify_cap_reads_every_watched_topic() {
    const SCRIPT: &str = r"
        local id = redis.call('XADD', KEYS[1], '*', 'd', '42', 't', ARGV[1])
        redis.call('XTRIM', KEYS[2], 'MAXLEN', 0)
        for i = 1, 1001 do redis.call('XADD', KEYS[2], '*', 's', KEYS[3]) end
        return id";
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("shards = 1\n")).await;
    let topic = "live.behind";
    let mut ws = s.ws(&format!("/v1/ws?topic={topic}")).await;
    let first = s.publish(topic, "1").await;
    assert_eq!(ws.next_op("message").await["id"], first.as_str());

    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .expect("redis connect timed out")
        .expect("redis connect");
    let script = ::redis::Script::new(SCRIPT);
    let mut inv = script.key(format!("rtgate:{{s0}}:t:{topic}"));
    inv.key("rtgate:{s0}:n").key("rtgate:{s0}:t:live.other").arg(1);
    let id: String = tokio::time::timeout(WAIT, inv.invoke_async(&mut conn))
        .await
        .expect("script timed out")
        .expect("script");
    let m = ws.next_op("message").await;
    assert_eq!((m["id"].as_str(), m["data"].clone()), (Some(id.as_str()), json!(42)), "{m}");
    ws.assert_quiet("ws").await;
    s.stop().await;
}

/// Item 12: the data connection stalls (`CLIENT PAUSE WRITE` holds the
/// gateway's publish, and everything queued behind it on that connection,
/// for 3 s while Redis stays reachable): publishes time out, but readiness
/// stays 200 throughout, because health pings have their own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_ignores_a_stalled_data_connection() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("op_timeout = \"500ms\"\n")).await;
    wait_status(&s, "/readyz", 200, WAIT).await;
    let topic = "stall.t";
    s.publish(topic, "0").await;
    let paused = Instant::now();
    let pause = tokio::task::block_in_place(|| {
        support::redis::cli(redis.port, &["CLIENT", "PAUSE", "3000", "WRITE"])
    });
    assert_eq!(pause.trim(), "OK");
    // The publish is held by Redis: it times out (503) while queued.
    let (status, v) = s.publish_raw(topic, "1", None).await;
    assert_eq!((status, v["error"]["code"].clone()), (503, json!("unavailable")), "{v}");
    let mut checks = 0;
    while paused.elapsed() < Duration::from_millis(2800) {
        let (status, body) = s.get("/readyz").await;
        assert_eq!(status, 200, "readiness flapped {:?} into a stalled data path: {body}", paused.elapsed());
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks >= 10, "{checks} readiness checks during the stall");
    // Once the pause ends, publishing works again.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = s.publish_raw(topic, "2", None).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "publish still failing: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}

/// Item 3: the ordinary reconnect pattern, many times over: the last
/// subscriber of a topic leaves while a new one joins it, concurrently, on
/// several topics at once; after each join a publish must reach the new
/// subscriber. Zero misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn last_leave_racing_first_join_never_misses() {
    const TOPICS: usize = 4;
    const ROUNDS: usize = 50;
    let redis = RedisServer::start();
    let s = std::sync::Arc::new(TestServer::start(&redis.config("")).await);
    let mut tasks = vec![];
    for k in 0..TOPICS {
        let s = std::sync::Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let topic = format!("race.{k}");
            let mut old = s.ws("/v1/ws").await;
            old.subscribe(&topic, None).await;
            let mut misses = vec![];
            for round in 0..ROUNDS {
                // The old one leaves (close frame) while the new one joins.
                let url = s.ws_url("/v1/ws");
                let t = topic.clone();
                let (_, new) = tokio::join!(
                    async move {
                        let _ = tokio::time::timeout(WAIT, old.ws.close(None)).await;
                        drop(old);
                    },
                    async move {
                        let mut c = WsClient::connect(&url).await;
                        let (before, ack) = c.subscribe(&t, None).await;
                        assert!(before.is_empty(), "{before:?}");
                        assert_eq!(ack["recovered"], true, "{ack}");
                        c
                    }
                );
                old = new;
                let id = s.publish(&topic, &format!("{round}")).await;
                match tokio::time::timeout(Duration::from_secs(5), old.next()).await {
                    Ok(m) if m["op"] == "message" && m["id"] == id.as_str() => {}
                    Ok(other) => panic!("round {round} of {topic}: unexpected {other}"),
                    Err(_) => {
                        misses.push(round);
                        // Start the next round from a working subscriber.
                        old = s.ws("/v1/ws").await;
                        old.subscribe(&topic, None).await;
                    }
                }
            }
            misses
        }));
    }
    let mut all = vec![];
    for (k, t) in tasks.into_iter().enumerate() {
        let misses =
            tokio::time::timeout(Duration::from_secs(240), t).await.expect("rounds timed out").unwrap();
        if !misses.is_empty() {
            all.push((k, misses));
        }
    }
    assert!(all.is_empty(), "new subscribers that got no live message (topic, rounds): {all:?}");
}
