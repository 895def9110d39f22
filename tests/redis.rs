//! Redis Streams engine end to end (contract §1-§4, §10): several rtgate
//! processes on one real `redis-server` or a three-node Cluster, a process
//! stopped mid-stream, a Redis outage, lost streams, 1,000 topics.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::redis::{cli, RedisCluster, RedisServer};
use support::*;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

// ---------------------------------------------------------------- helpers

/// The same FNV-1a as the engine: which key group (`{s<N>}`) a topic uses.
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Every message of `topic`, paging with `after`.
async fn all_history(s: &TestServer, topic: &str) -> Vec<Value> {
    let mut out = vec![];
    let mut after = "0-0".to_owned();
    loop {
        let (status, v) = s.get(&format!("/v1/history/{topic}?after={after}&limit=1000")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["truncated"], false, "{v}");
        let page = v["messages"].as_array().expect("messages").clone();
        let Some(last) = page.last() else {
            return out;
        };
        after = last["id"].as_str().expect("id").to_owned();
        out.extend(page);
    }
}

/// Reads frames until the one whose `ref` is `r`; messages before it go to
/// `msgs`, any other frame fails the test.
async fn until_ref(c: &mut WsClient, r: &str, msgs: &mut Vec<Value>) -> Value {
    loop {
        let v = c.next().await;
        if v["ref"] == r {
            return v;
        }
        assert_eq!(v["op"], "message", "unexpected frame {v}");
        msgs.push(v);
    }
}

/// Reads message frames into `msgs` until one with id `last` (bounded per
/// frame by `WAIT`).
async fn messages_until(c: &mut WsClient, last: &str, msgs: &mut Vec<Value>) {
    if msgs.last().is_some_and(|m| m["id"] == last) {
        return;
    }
    loop {
        let v = c.next_op("message").await;
        let done = v["id"] == last;
        msgs.push(v);
        if done {
            return;
        }
    }
}

/// Reads every text frame until the server closes; returns them and the
/// close code.
async fn read_until_close(mut c: WsClient) -> (Vec<Value>, Option<u16>) {
    let mut frames = vec![];
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await.expect("timed out waiting for frames or close") {
            Some(Ok(WsMessage::Text(t))) => {
                frames.push(serde_json::from_str(t.as_str()).expect("json frame"))
            }
            Some(Ok(WsMessage::Close(f))) => return (frames, f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (frames, None),
        }
    }
}

/// Connects to `path` and returns the first text frame. Right after a Redis
/// restart the server may still answer with close 1013 (`unavailable`);
/// like a real client, this resumes again with the same URL (bounded).
async fn resume(s: &TestServer, path: &str) -> (WsClient, Value) {
    for _ in 0..20 {
        let mut c = s.ws(path).await;
        match tokio::time::timeout(WAIT, c.ws.next()).await.expect("timed out waiting for the first frame") {
            Some(Ok(WsMessage::Text(t))) => {
                return (c, serde_json::from_str(t.as_str()).expect("json frame"))
            }
            Some(Ok(WsMessage::Close(Some(f)))) if u16::from(f.code) == 1013 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("unexpected answer to a resume: {other:?}"),
        }
    }
    panic!("resume still refused with 1013 after 20 attempts");
}

/// Stream keys (`…:t:…`) held by the Redis on `port`.
fn stream_keys(port: u16) -> Vec<String> {
    cli(port, &["--scan", "--pattern", "*:t:*"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------- tests

/// Issue item 1: two processes on one Redis. HTTP publish on A reaches a WS
/// subscriber on B; a WS publish on B reaches a WS subscriber on A;
/// `Idempotency-Key` dedups across processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_topics_and_idempotency() {
    let redis = RedisServer::start();
    let (a, b) = redis.two_servers("key_prefix = \"itest:\"").await;

    // A → B over HTTP → WS.
    let mut on_b = b.ws("/v1/ws?topic=x.one").await;
    let (status, published) = a.publish_raw("x.one", r#"{"z":1,"a":[true,null],"s":"é"}"#, None).await;
    assert_eq!(status, 200, "{published}");
    let m = on_b.next_op("message").await;
    assert_eq!(m["topic"], "x.one");
    assert_eq!(m["id"], published["id"]);
    assert_eq!(m["ts"], published["ts"]);
    assert_eq!(m["data"], json!({"z": 1, "a": [true, null], "s": "é"}));
    on_b.assert_quiet("b1").await;
    // The bytes the publisher sent, key order kept, as stored by the other process.
    let raw = tokio::time::timeout(WAIT, async {
        b.http.get(b.url("/v1/history/x.one")).send().await.expect("history").text().await.expect("body")
    })
    .await
    .expect("history timed out");
    assert!(raw.contains(r#""data":{"z":1,"a":[true,null],"s":"é"}"#), "{raw}");

    // B (WS publish) → A (WS subscriber).
    let mut on_a = a.ws("/v1/ws").await;
    let (before, ack) = on_a.subscribe("x.two", None).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut pub_b = b.ws("/v1/ws").await;
    pub_b.send(json!({"op": "publish", "topic": "x.two", "data": {"from": "b"}, "ref": "p1"})).await;
    let ack = pub_b.next_op("ack").await;
    assert_eq!(ack["ref"], "p1", "{ack}");
    let id = ack["id"].as_str().expect("publish ack id").to_owned();
    let m = on_a.next_op("message").await;
    assert_eq!((m["topic"].clone(), m["id"].clone()), (json!("x.two"), json!(id)));
    assert_eq!(m["data"], json!({"from": "b"}));
    on_a.assert_quiet("a1").await;
    pub_b.assert_quiet("p").await;

    // Idempotency across processes: same key on A then B → one message.
    let mut watch = b.ws("/v1/ws?topic=x.idem").await;
    let (s1, r1) = a.publish_raw("x.idem", r#"{"n":1}"#, Some("key-1")).await;
    assert_eq!(s1, 200, "{r1}");
    let (s2, r2) = b.publish_raw("x.idem", r#"{"n":1}"#, Some("key-1")).await;
    assert_eq!(s2, 200, "{r2}");
    assert_eq!(r2["id"], r1["id"], "the repeat answers the first id");
    assert_eq!(r2["ts"], r1["ts"]);
    // A repeat on A again, and a different body with the same key: still the first id.
    let (s3, r3) = a.publish_raw("x.idem", r#"{"n":2}"#, Some("key-1")).await;
    assert_eq!((s3, r3["id"].clone()), (200, r1["id"].clone()));
    // Another key is another message.
    let (s4, r4) = b.publish_raw("x.idem", r#"{"n":1}"#, Some("key-2")).await;
    assert_eq!(s4, 200, "{r4}");
    assert!(pid(r4["id"].as_str().unwrap()) > pid(r1["id"].as_str().unwrap()));
    for s in [&a, &b] {
        let h = all_history(s, "x.idem").await;
        assert_eq!(ids(&h), vec![r1["id"].as_str().unwrap(), r4["id"].as_str().unwrap()]);
        assert_eq!(h[0]["data"], json!({"n": 1}));
        // History on either process holds what the other published.
        assert_eq!(ids(&all_history(s, "x.one").await), vec![published["id"].as_str().unwrap()]);
        assert_eq!(ids(&all_history(s, "x.two").await), vec![id.clone()]);
    }
    let got = watch.messages(2).await;
    assert_eq!(ids(&got), vec![r1["id"].as_str().unwrap(), r4["id"].as_str().unwrap()]);
    watch.assert_quiet("w").await;

    // Keys carry the configured prefix and a key-group hash tag.
    let keys = stream_keys(redis.port);
    assert_eq!(keys.len(), 3, "{keys:?}");
    for t in ["x.one", "x.two", "x.idem"] {
        let want = format!("itest:{{s{}}}:t:{t}", fnv1a(t) % 8);
        assert!(keys.contains(&want), "{want} not in {keys:?}");
    }
    a.stop().await;
    b.stop().await;
}

/// Issue item 2: a publisher runs against A; a WS client reads from B; B is
/// stopped while publishing goes on; the client resumes with its cursor on A
/// and on a new process C and gets exactly the ids after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_on_other_process_after_stop_while_publishing() {
    const AFTER_RESUME: usize = 300;
    const MAX: usize = 50_000;
    let redis = RedisServer::start();
    let toml = redis.config("[limits]\noutbox_capacity = 100000\n");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    let topic = "restart.t";
    let mut client = b.ws(&format!("/v1/ws?topic={topic}")).await;

    let resumed = Arc::new(AtomicBool::new(false));
    let publisher = {
        let http = a.http.clone();
        let url = a.url(&format!("/v1/publish/{topic}"));
        let resumed = Arc::clone(&resumed);
        tokio::spawn(async move {
            let mut published = vec![];
            let mut extra = 0;
            for i in 0..MAX {
                let res = tokio::time::timeout(WAIT, http.post(&url).body(format!(r#"{{"i":{i}}}"#)).send())
                    .await
                    .expect("publish timed out")
                    .expect("publish");
                assert_eq!(res.status().as_u16(), 200);
                let v: Value = res.json().await.expect("json");
                published.push(v["id"].as_str().expect("id").to_owned());
                if resumed.load(Ordering::Acquire) {
                    extra += 1;
                    if extra == AFTER_RESUME {
                        return published;
                    }
                }
            }
            panic!("publisher never told to finish");
        })
    };

    // Read a few live messages on B, then stop B while reading what is left.
    let mut on_b = client.messages(40).await;
    let reader = tokio::spawn(read_until_close(client));
    b.stop().await;
    let (rest, code) = reader.await.expect("reader");
    assert_eq!(code, Some(1001), "B closes with 1001 on shutdown");
    for f in &rest {
        assert_eq!(f["op"], "message", "{f}");
    }
    on_b.extend(rest);
    let cursor = on_b.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    assert!(!publisher.is_finished(), "publishing continues past B's stop");

    // Resume on A and on a fresh process C while publishing goes on.
    let c = TestServer::start(&toml).await;
    let mut on_a = a.ws(&format!("/v1/ws?topic={topic}&cursor={cursor}")).await;
    let mut on_c = c.ws(&format!("/v1/ws?topic={topic}&cursor={cursor}")).await;
    resumed.store(true, Ordering::Release);
    let published = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher timed out")
        .expect("publisher");
    assert!(published.windows(2).all(|w| pid(&w[0]) < pid(&w[1])), "ids increase");
    let n = on_b.len();
    assert!(n >= 40 && n < published.len(), "{n}");
    assert_eq!(ids(&on_b), published[..n].to_vec(), "B got a prefix, in order");
    let last = published.last().unwrap();
    for (name, client) in [("A", &mut on_a), ("C", &mut on_c)] {
        let mut got = vec![];
        messages_until(client, last, &mut got).await;
        assert_eq!(ids(&got), published[n..].to_vec(), "{name} resumes exactly after {}", published[n - 1]);
        for (k, m) in got.iter().enumerate() {
            assert_eq!(m["data"], json!({"i": n + k}));
        }
        client.assert_quiet(name).await;
    }
    a.stop().await;
    c.stop().await;
}

/// Issue item 3: Redis stops for a few seconds and comes back with its data.
/// /readyz follows, /healthz stays 200, publishes during the outage get 503
/// `unavailable`, nothing accepted is lost, and a WS connection opened
/// before the outage stays open and gets exactly the topic's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_and_recovery() {
    const AFTER_RECOVERY: usize = 20;
    let mut redis = RedisServer::start();
    let toml = redis.config("op_timeout = \"500ms\"\nblock = \"1s\"\n[limits]\noutbox_capacity = 100000\n");
    let s = TestServer::start(&toml).await;
    wait_status(&s, "/readyz", 200, WAIT).await;
    let topic = "outage.t";
    let mut w = s.ws(&format!("/v1/ws?topic={topic}")).await;

    // A publisher runs through the whole outage (paced, not synchronised).
    let recovered = Arc::new(AtomicBool::new(false));
    let publisher = {
        let http = s.http.clone();
        let url = s.url(&format!("/v1/publish/{topic}"));
        let recovered = Arc::clone(&recovered);
        tokio::spawn(async move {
            // (status, error code or id)
            let mut outcomes: Vec<(u16, String, bool)> = vec![];
            let mut after = 0;
            for i in 0..100_000 {
                let res = tokio::time::timeout(WAIT, http.post(&url).body(format!(r#"{{"i":{i}}}"#)).send())
                    .await
                    .expect("publish timed out")
                    .expect("publish");
                let status = res.status().as_u16();
                let v: Value = res.json().await.expect("json body");
                let late = recovered.load(Ordering::Acquire);
                match status {
                    200 => {
                        outcomes.push((200, v["id"].as_str().expect("id").to_owned(), late));
                        if late {
                            after += 1;
                            if after == AFTER_RECOVERY {
                                return outcomes;
                            }
                        }
                    }
                    503 => {
                        assert_eq!(v["error"]["code"], "unavailable", "{v}");
                        outcomes.push((503, String::new(), late));
                    }
                    other => panic!("publish answered {other}: {v}"),
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            panic!("publisher never told to finish");
        })
    };

    let mut w_msgs = w.messages(5).await;
    let before_outage = all_history(&s, topic).await;
    assert!(before_outage.len() >= 5);

    tokio::task::block_in_place(|| redis.stop());
    wait_status(&s, "/readyz", 503, WAIT).await;
    assert_eq!(s.get("/healthz").await.0, 200);

    // Publishes during the outage: 503 `unavailable` on HTTP, an error frame
    // on WS (the connection stays open).
    for k in 0..3 {
        let (status, v) = s.publish_raw(topic, &format!(r#"{{"down":{k}}}"#), None).await;
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (status, v) = s.get(&format!("/v1/history/{topic}")).await;
    assert_eq!((status, v["error"]["code"].clone()), (503, json!("unavailable")), "{v}");
    w.send(json!({"op": "publish", "topic": topic, "data": {"ws": "down"}, "ref": "down"})).await;
    let err = until_ref(&mut w, "down", &mut w_msgs).await;
    assert_eq!(err["op"], "error", "{err}");
    assert_eq!(err["code"], "unavailable", "{err}");

    // The outage lasts a few seconds (a duration under test, not a wait for an event).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(s.get("/readyz").await.0, 503);
    tokio::task::block_in_place(|| redis.restart());
    wait_status(&s, "/readyz", 200, Duration::from_secs(15)).await;
    assert_eq!(s.get("/healthz").await.0, 200);
    recovered.store(true, Ordering::Release);

    let outcomes = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher timed out")
        .expect("publisher");
    let accepted: Vec<String> = outcomes.iter().filter(|o| o.0 == 200).map(|o| o.1.clone()).collect();
    let refused = outcomes.iter().filter(|o| o.0 == 503).count();
    assert!(refused >= 1, "the publisher saw the outage: {outcomes:?}");
    assert!(accepted.windows(2).all(|w| pid(&w[0]) < pid(&w[1])), "ids increase across the outage");

    // Nothing accepted is lost: the history holds every accepted id (plus at
    // most the refused publishes that Redis applied before its reply was lost).
    let history = all_history(&s, topic).await;
    let hist_ids = ids(&history);
    assert_eq!(hist_ids[..before_outage.len()], ids(&before_outage)[..], "history before the outage intact");
    let mut it = hist_ids.iter();
    for id in &accepted {
        assert!(it.any(|h| h == id), "accepted {id} missing from history");
    }
    assert!(
        hist_ids.len() - accepted.len() <= refused,
        "{} in history, {} accepted, {refused} refused",
        hist_ids.len(),
        accepted.len()
    );
    assert!(hist_ids.iter().all(|h| !h.is_empty()));

    // The WS connection opened before the outage got exactly the history, in
    // order, each once: including what was published after recovery.
    messages_until(&mut w, accepted.last().unwrap(), &mut w_msgs).await;
    assert_eq!(ids(&w_msgs), hist_ids, "live delivery across the outage");
    w.assert_quiet("end").await;
    let live = s.publish(topic, r#""after""#).await;
    assert_eq!(w.next_op("message").await["id"], live.as_str());
    w.assert_quiet("end2").await;
    s.stop().await;
}

/// Issue item 4: a three-node Redis Cluster, two processes; 20 topics over
/// several key groups (so several slots and nodes) round-trip live and in
/// history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_round_trip() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let toml = format!("[engine]\nkind = \"redis\"\n[redis]\ncluster_urls = [{}]\n", urls.join(", "));
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    wait_status(&a, "/readyz", 200, WAIT).await;
    wait_status(&b, "/readyz", 200, WAIT).await;

    let topics: Vec<String> = (0..20).map(|i| format!("cl.{i}")).collect();
    let groups: BTreeSet<u32> = topics.iter().map(|t| fnv1a(t) % 8).collect();
    assert!(groups.len() >= 4, "topics spread over key groups: {groups:?}");

    let q: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    let mut all_b = b.ws(&format!("/v1/ws?{}", q.join("&"))).await;
    let mut one_b = b.ws("/v1/ws?topic=cl.7").await;
    let mut all_a = a.ws(&format!("/v1/ws?{}", q.join("&"))).await;

    let mut published = vec![];
    for (i, t) in topics.iter().enumerate() {
        let p = if i % 2 == 0 { &a } else { &b };
        published.push((t.clone(), p.publish(t, &format!(r#"{{"t":"{t}"}}"#)).await));
    }
    for (name, c) in [("B", &mut all_b), ("A", &mut all_a)] {
        let got = c.messages(topics.len()).await;
        let pairs: Vec<(String, String)> = got
            .iter()
            .map(|m| {
                assert_eq!(m["data"], json!({"t": m["topic"]}), "{m}");
                (m["topic"].as_str().unwrap().to_owned(), m["id"].as_str().unwrap().to_owned())
            })
            .collect();
        let mut want = published.clone();
        want.sort();
        let mut pairs_sorted = pairs;
        pairs_sorted.sort();
        assert_eq!(pairs_sorted, want, "{name} got every topic once");
        c.assert_quiet(name).await;
    }
    let m = one_b.next_op("message").await;
    assert_eq!(m["id"], published[7].1.as_str());
    one_b.assert_quiet("one").await;

    for (t, id) in &published {
        for s in [&a, &b] {
            assert_eq!(ids(&all_history(s, t).await), vec![id.clone()], "{t}");
        }
    }
    // The streams live on several nodes, under the expected key groups.
    let mut total = 0;
    let mut nodes_used = 0;
    let mut tags = BTreeSet::new();
    for n in &cluster.nodes {
        let keys = stream_keys(n.port);
        total += keys.len();
        nodes_used += usize::from(!keys.is_empty());
        for k in keys {
            let tag = k.split('{').nth(1).unwrap().split('}').next().unwrap();
            tags.insert(tag[1..].parse::<u32>().unwrap());
        }
    }
    assert_eq!(total, topics.len());
    assert_eq!(tags, groups);
    assert!(nodes_used >= 2, "streams on {nodes_used} node(s)");

    // Resume by cursor across processes works on the Cluster too.
    let cursor = m["cursor"].as_str().unwrap().to_owned();
    let more = a.publish("cl.7", "2").await;
    let mut r = a.ws(&format!("/v1/ws?topic=cl.7&cursor={cursor}")).await;
    assert_eq!(r.next_op("message").await["id"], more.as_str());
    r.assert_quiet("r").await;
    a.stop().await;
    b.stop().await;
}

/// Issue item 5: 1,000 topics, four subscribers each over two processes
/// (two 50-topic groupings, one 10-topic grouping, one connection per
/// topic: 1,140 connections), one message per topic published from either
/// process: every connection gets exactly its topics' messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_topics_across_two_processes() {
    const TOPICS: usize = 1000;
    let redis = RedisServer::start();
    // 1,140 connections to each process from one address, at once: more
    // than abuse.connect_burst_per_ip allows by default.
    let (a, b) = redis.two_servers("[abuse]\nconnect_rate_per_ip = 0").await;
    let topic = |i: usize| format!("many.{i:04}");

    // (process, topics) per connection.
    let mut plan: Vec<(usize, Vec<usize>)> = vec![];
    for g in 0..20 {
        plan.push((0, (g * 50..(g + 1) * 50).collect())); // A: blocks of 50
        plan.push((1, (0..TOPICS).filter(|i| i % 20 == g).collect())); // B: stride 20
    }
    for g in 0..100 {
        plan.push((g % 2, (0..TOPICS).filter(|i| i % 100 == g).collect())); // both: stride 100
    }
    for i in 0..TOPICS {
        plan.push(((i + 1) % 2, vec![i])); // both: one topic per connection
    }
    let servers = [&a, &b];
    let mut readers = vec![];
    for chunk in plan.chunks(100) {
        let mut connects = vec![];
        for (p, ts) in chunk {
            let q: Vec<String> = ts.iter().map(|&i| format!("topic={}", topic(i))).collect();
            let url = servers[*p].ws_url(&format!("/v1/ws?{}", q.join("&")));
            connects.push(tokio::spawn(async move { WsClient::connect(&url).await }));
        }
        for (h, (_, ts)) in connects.into_iter().zip(chunk) {
            let mut c = h.await.expect("connect");
            let n = ts.len();
            readers.push(tokio::spawn(async move {
                let got = c.messages(n).await;
                c.assert_quiet("done").await;
                got
            }));
        }
    }
    assert_eq!(readers.len(), 1140);

    // Publish one message per topic, half through each process, 16 at a time.
    let mut pubs = vec![];
    for k in 0..16 {
        let http = a.http.clone();
        let bases = [a.url(""), b.url("")];
        pubs.push(tokio::spawn(async move {
            let mut out = vec![];
            for i in (k..TOPICS).step_by(16) {
                let url = format!("{}/v1/publish/many.{i:04}", bases[i % 2]);
                let res = tokio::time::timeout(WAIT, http.post(&url).body(format!("{i}")).send())
                    .await
                    .expect("publish timed out")
                    .expect("publish");
                assert_eq!(res.status().as_u16(), 200);
                let v: Value = res.json().await.expect("json");
                out.push((i, v["id"].as_str().expect("id").to_owned()));
            }
            out
        }));
    }
    let mut id_of: HashMap<usize, String> = HashMap::new();
    for h in pubs {
        id_of.extend(h.await.expect("publisher"));
    }
    assert_eq!(id_of.len(), TOPICS);

    for (h, (p, ts)) in readers.into_iter().zip(&plan) {
        let got = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("reader timed out")
            .expect("reader");
        let mut got: Vec<(String, String, Value)> = got
            .into_iter()
            .map(|m| {
                (
                    m["topic"].as_str().unwrap().to_owned(),
                    m["id"].as_str().unwrap().to_owned(),
                    m["data"].clone(),
                )
            })
            .collect();
        got.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        let want: Vec<(String, String, Value)> =
            ts.iter().map(|&i| (topic(i), id_of[&i].clone(), json!(i))).collect();
        assert_eq!(got, want, "connection on process {p}");
    }
    a.stop().await;
    b.stop().await;
}

/// Issue item 6: a stream deleted in Redis, then a resume from an old
/// position (connect cursor, subscribe `after`, history `after`) reports the
/// loss explicitly and goes live, never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_stream_resume_reports_gap() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("")).await;
    let topic = "lost.a";
    let mut w = s.ws(&format!("/v1/ws?topic={topic}")).await;
    let mut published = vec![];
    for i in 0..5 {
        published.push(s.publish(topic, &format!("{i}")).await);
    }
    let seen = w.messages(5).await;
    assert_eq!(ids(&seen), published);
    let cursor = seen[4]["cursor"].as_str().unwrap().to_owned();
    drop(w);

    let keys = cli(redis.port, &["--scan", "--pattern", &format!("*:t:{topic}")]);
    let key = keys.trim();
    assert_eq!(key, format!("rtgate:{{s{}}}:t:{topic}", fnv1a(topic) % 8));
    assert_eq!(cli(redis.port, &["DEL", key]).trim(), "1");

    // Connect cursor: a gap naming the position, then nothing, then live.
    let mut c = s.ws(&format!("/v1/ws?topic={topic}&cursor={cursor}")).await;
    let gap = c.next_op("gap").await;
    assert_eq!((gap["topic"].clone(), gap["after"].clone()), (json!(topic), json!(published[4])), "{gap}");
    assert!(pid(gap["oldest"].as_str().unwrap()) >= pid(&published[4]), "{gap}");
    c.assert_quiet("c").await;

    // Subscribe `after`: the gap precedes the ack, which says recovered:false.
    let mut d = s.ws("/v1/ws").await;
    let (before, ack) = d.subscribe(topic, Some(&published[1])).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["op"], "gap");
    assert_eq!((before[0]["topic"].clone(), before[0]["after"].clone()), (json!(topic), json!(published[1])));
    assert_eq!(ack["recovered"], false, "{ack}");
    d.assert_quiet("d").await;

    // History `after` an id the stream no longer has: truncated.
    let (status, v) = s.get(&format!("/v1/history/{topic}?after={}", published[1])).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"messages": [], "truncated": true}));

    // Both resumed connections are live.
    let live = s.publish(topic, r#""new""#).await;
    assert_eq!(c.next_op("message").await["id"], live.as_str());
    assert_eq!(d.next_op("message").await["id"], live.as_str());
    c.assert_quiet("c2").await;
    d.assert_quiet("d2").await;
    s.stop().await;
}

/// A stream lost (FLUSHALL) and then written again: resuming from a
/// position before the loss must report a gap up to the new stream's oldest
/// message, not silently skip what was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_then_rewritten_stream_resume_reports_gap() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("")).await;
    let topic = "lost.b";
    let mut w = s.ws(&format!("/v1/ws?topic={topic}")).await;
    let mut published = vec![];
    for i in 0..5 {
        published.push(s.publish(topic, &format!("{i}")).await);
    }
    let seen = w.messages(5).await;
    let cursor2 = seen[2]["cursor"].as_str().unwrap().to_owned();
    drop(w);
    // published[3] and [4] are lost with the flush.
    assert_eq!(cli(redis.port, &["FLUSHALL"]).trim(), "OK");
    let fresh = s.publish(topic, r#""fresh""#).await;
    assert!(pid(&fresh) > pid(&published[4]));

    let mut c = s.ws(&format!("/v1/ws?topic={topic}&cursor={cursor2}")).await;
    let first = c.next().await;
    assert_eq!(
        first,
        json!({"op": "gap", "topic": topic, "after": published[2], "oldest": fresh}),
        "lost messages {:?} must be reported",
        &published[3..]
    );
    assert_eq!(c.next_op("message").await["id"], fresh.as_str());
    c.assert_quiet("c").await;

    let mut d = s.ws("/v1/ws").await;
    let (before, ack) = d.subscribe(topic, Some(&published[2])).await;
    assert_eq!(before, vec![json!({"op": "gap", "topic": topic, "after": published[2], "oldest": fresh})]);
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(d.next_op("message").await["id"], fresh.as_str());
    d.assert_quiet("d").await;

    let (status, v) = s.get(&format!("/v1/history/{topic}?after={}", published[2])).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["truncated"], true, "{v}");
    assert_eq!(ids(v["messages"].as_array().unwrap()), vec![fresh.clone()]);
    s.stop().await;
}

/// Redis restarted without its data while a subscriber is live: the engine
/// sees the stream went backwards, closes the subscriber (1013), and its
/// resume by cursor reports the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_closes_subscribers_then_gap() {
    let mut redis = RedisServer::start();
    let s = TestServer::start(&redis.config("op_timeout = \"500ms\"\nblock = \"1s\"")).await;
    wait_status(&s, "/readyz", 200, WAIT).await;
    let topic = "lost.c";
    let mut w = s.ws(&format!("/v1/ws?topic={topic}")).await;
    let mut published = vec![];
    for i in 0..3 {
        published.push(s.publish(topic, &format!("{i}")).await);
    }
    let seen = w.messages(3).await;
    assert_eq!(ids(&seen), published);
    let cursor = seen[2]["cursor"].as_str().unwrap().to_owned();

    tokio::task::block_in_place(|| redis.restart_empty());
    assert_eq!(cli(redis.port, &["DBSIZE"]).trim(), "0", "data gone");
    assert_paced_close(&w.ended().await, 1013, "unavailable");
    wait_status(&s, "/readyz", 200, Duration::from_secs(15)).await;
    let (mut c, gap) = resume(&s, &format!("/v1/ws?topic={topic}&cursor={cursor}")).await;
    assert_eq!(gap["op"], "gap", "{gap}");
    assert_eq!((gap["topic"].clone(), gap["after"].clone()), (json!(topic), json!(published[2])), "{gap}");
    c.assert_quiet("c").await;
    let live = s.publish(topic, r#""again""#).await;
    assert_eq!(c.next_op("message").await["id"], live.as_str());
    c.assert_quiet("c2").await;
    s.stop().await;
}
