//! Topic policies (contract §11) through the real server on real sockets:
//! `delivery = "latest"` and `"drop"` for a reader that stops reading,
//! coalesced resumes and long polls, ephemeral messages on every
//! transport, `client_publish` and per-topic history.
#![allow(clippy::unwrap_used)]
mod support;

use std::collections::BTreeMap;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::sse::Sse;
use support::*;

/// Padding that makes each message big enough (≈ 60 KB) for a few hundred
/// of them to fill any loopback socket buffer.
fn pad() -> String {
    "x".repeat(60_000)
}

const CONFIG: &str = r#"
[limits]
outbox_capacity = 8

[[topics]]
pattern = "price.*"
delivery = "latest"

[[topics]]
pattern = "log.*"
delivery = "drop"

[[topics]]
pattern = "short.*"
history = { max_len = 3 }

[[topics]]
pattern = "feed.*"
client_publish = false
"#;

/// Publishes `n` messages round-robin over `keys` on `topic` with `?key=`;
/// returns (id, key) in publish order.
async fn publish_keyed(s: &TestServer, topic: &str, keys: &[&str], n: usize) -> Vec<(String, String)> {
    let pad = pad();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = keys[i % keys.len()];
        let url = s.url(&format!("/v1/publish/{topic}?key={key}"));
        let body = json!({"k": key, "i": i, "pad": pad}).to_string();
        out.push((post_publish(&s.http, &url, body).await, key.to_owned()));
    }
    out
}

/// A reader that stops reading while hundreds of messages of five keys are
/// published gets, once it reads again, every key's newest message, each
/// message either delivered or counted in exactly one `skipped`, in id
/// order, and keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_latest_topic_gets_the_newest_per_key_and_stays_connected() {
    let s = TestServer::start(CONFIG).await;
    let mut slow = s.ws("/v1/ws?topic=price.eu").await;
    slow.assert_quiet("ready").await;
    let keys = ["a", "b", "c", "d", "e"];
    // Not reading meanwhile: the socket fills, then the outbox coalesces.
    let published = publish_keyed(&s, "price.eu", &keys, 400).await;
    let newest: BTreeMap<&str, &str> = published.iter().map(|(id, k)| (k.as_str(), id.as_str())).collect();

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut accounted: BTreeMap<String, u64> = BTreeMap::new();
    let mut last: Option<(u64, u64)> = None;
    let mut frames = 0u64;
    while seen.len() < keys.len() || keys.iter().any(|k| seen.get(*k).map(String::as_str) != Some(newest[k]))
    {
        let m = slow.next_op("message").await;
        frames += 1;
        let id = m["id"].as_str().unwrap().to_owned();
        assert!(last < Some(pid(&id)), "out of order: {id} after {last:?}");
        last = Some(pid(&id));
        let key = m["data"]["k"].as_str().unwrap().to_owned();
        let skipped = m.get("skipped").map_or(0, |v| v.as_u64().expect("skipped is a number"));
        assert!(m.get("skipped").is_none_or(|v| v.as_u64() > Some(0)), "skipped 0 is left out: {m}");
        *accounted.entry(key.clone()).or_default() += 1 + skipped;
        seen.insert(key, id);
    }
    for k in keys {
        let sent = published.iter().filter(|(_, key)| key == k).count() as u64;
        assert_eq!(accounted[k], sent, "key {k}: delivered + skipped = published");
    }
    assert_eq!(accounted.values().sum::<u64>(), 400);
    assert!(frames < 400, "the reader fell behind, so some messages were coalesced ({frames} frames)");
    // Still connected, nothing else queued, and live again.
    slow.assert_quiet("after").await;
    let id = s.publish("price.eu", r#"{"k":"a","i":-1}"#).await;
    let m = slow.next_op("message").await;
    assert_eq!((m["id"].as_str(), m.get("skipped")), (Some(id.as_str()), None));
    // History is untouched by the coalescing.
    let (_, h) = s.get("/v1/history/price.eu?limit=1000").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 401);
    s.stop().await;
}

/// `http.send_buffer`: with a small kernel send buffer, a reader that stops
/// reading has its backlog wait in the outbox, where `latest` coalesces
/// even small messages (with the kernel's autotuned buffers, megabytes of
/// them would sit in the socket first). The reader's own receive buffer is
/// small too, so the bytes in flight are a few kilobytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_send_buffer_makes_latest_coalesce_a_backlog_of_small_messages() {
    let s = TestServer::start(&format!("{CONFIG}\n[http]\nsend_buffer = 4096\n")).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = tokio::time::timeout(WAIT, socket.connect(s.addr)).await.unwrap().unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let url = s.ws_url("/v1/ws?topic=price.small");
    let (ws, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream)).await.unwrap().unwrap();
    let mut slow = WsClient { ws };
    slow.assert_quiet("ready").await;
    let keys = ["a", "b", "c"];
    let body = |key: &str, i: usize| json!({"k": key, "i": i, "pad": "x".repeat(900)}).to_string();
    let mut published = Vec::new();
    for i in 0..300 {
        let key = keys[i % keys.len()];
        let url = s.url(&format!("/v1/publish/price.small?key={key}"));
        published.push((post_publish(&s.http, &url, body(key, i)).await, key));
    }
    let newest: BTreeMap<&str, &str> = published.iter().map(|(id, k)| (*k, id.as_str())).collect();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let (mut frames, mut accounted) = (0u64, 0u64);
    while keys.iter().any(|k| seen.get(*k).map(String::as_str) != Some(newest[k])) {
        let m = slow.next_op("message").await;
        frames += 1;
        accounted += 1 + m.get("skipped").map_or(0, |v| v.as_u64().expect("skipped is a number"));
        seen.insert(m["data"]["k"].as_str().unwrap().to_owned(), m["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(accounted, 300, "delivered + skipped = published");
    assert!(frames < 150, "the backlog waited in the outbox and was coalesced ({frames} frames for 300)");
    slow.assert_quiet("after").await;
    s.stop().await;
}

/// A reader of a drop topic that stops reading loses the messages published
/// while its outbox was full, and is told so once per range: a `gap` with
/// `reason: dropped` whose `after` is the last message it got and whose
/// `oldest` is at most the next one it gets; the range is still in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_drop_topic_gets_one_gap_naming_the_range() {
    let s = TestServer::start(&format!("{CONFIG}\n[history]\nmax_len = 1000\n")).await;
    let mut slow = s.ws("/v1/ws?topic=log.app").await;
    slow.assert_quiet("ready").await;
    let pad = pad();
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(s.publish("log.app", &json!({"i": i, "pad": pad}).to_string()).await);
    }
    let mut got = Vec::new();
    let mut gaps = Vec::new();
    // The range reaches the end of the burst: the gap comes once the reader
    // has caught up; the next message follows it.
    let mut last = None;
    while last.is_none() || got.last() != last.as_ref() {
        if last.is_none() && !gaps.is_empty() {
            last = Some(s.publish("log.app", r#"{"i":"last"}"#).await);
        }
        let v = slow.next().await;
        match v["op"].as_str() {
            Some("message") => got.push(v["id"].as_str().unwrap().to_owned()),
            Some("gap") => gaps.push((got.len(), v)),
            _ => panic!("unexpected frame {v}"),
        }
    }
    // Every message is delivered or inside exactly one reported range.
    assert!(!gaps.is_empty(), "the reader fell behind: some range was dropped");
    let missing: Vec<&String> = ids.iter().filter(|id| !got.contains(id)).collect();
    assert_eq!(got.len() + missing.len(), ids.len() + 1, "no duplicate, nothing unaccounted");
    let mut covered = 0;
    for (at, gap) in &gaps {
        assert_eq!((gap["reason"].as_str(), gap["topic"].as_str()), (Some("dropped"), Some("log.app")));
        let after = got[at - 1].as_str();
        assert_eq!(gap["after"].as_str(), Some(after), "after = the last message delivered before it");
        let oldest = gap["oldest"].as_str().unwrap();
        assert!(pid(oldest) <= pid(&got[*at]), "oldest is at most the next delivered id");
        let range: Vec<&str> = missing
            .iter()
            .filter(|m| pid(m) > pid(after) && pid(m) < pid(oldest))
            .map(|m| m.as_str())
            .collect();
        assert!(!range.is_empty(), "a gap names a non-empty range: {gap}");
        covered += range.len();
        // The dropped range can be fetched from history.
        let (_, h) = s.get(&format!("/v1/history/log.app?after={after}&limit={}", range.len())).await;
        let fetched: Vec<&str> =
            h["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(fetched, range);
    }
    assert_eq!(covered, missing.len(), "every dropped message is in a reported range");
    slow.assert_quiet("still-open").await;
    s.stop().await;
}

/// A resume of a latest topic replays the newest message per key with
/// `skipped`; a long poll with a backlog answers the same way, and the
/// next poll continues after it.
#[tokio::test]
async fn a_resume_and_a_long_poll_of_a_latest_topic_are_coalesced_per_key() {
    let s = TestServer::start(CONFIG).await;
    let first = s.publish("price.us", r#"{"k":"start"}"#).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let key = ["x", "y", "z"][i % 3];
        let url = s.url(&format!("/v1/publish/price.us?key={key}"));
        ids.push(post_publish(&s.http, &url, json!({"k": key, "i": i}).to_string()).await);
    }
    let mut c = s.ws("/v1/ws").await;
    let (before, ack) = c.subscribe("price.us", Some(&first)).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack["recovered"], true);
    let replayed = c.messages(3).await;
    let got: Vec<(&str, u64)> =
        replayed.iter().map(|m| (m["id"].as_str().unwrap(), m["skipped"].as_u64().unwrap())).collect();
    assert_eq!(got, vec![(ids[27].as_str(), 9), (ids[28].as_str(), 9), (ids[29].as_str(), 9)]);
    c.assert_quiet("replayed").await;

    let cursor = cursor_after(&s, "price.us", &first).await;
    let (status, p) = s.get(&format!("/v1/poll?topic=price.us&cursor={cursor}&timeout=1")).await;
    assert_eq!(status, 200, "{p}");
    let polled: Vec<(&str, u64)> = p["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["skipped"].as_u64().unwrap()))
        .collect();
    assert_eq!(polled, vec![(ids[27].as_str(), 9), (ids[28].as_str(), 9), (ids[29].as_str(), 9)]);
    let (_, next) =
        s.get(&format!("/v1/poll?topic=price.us&cursor={}&timeout=1", p["cursor"].as_str().unwrap())).await;
    assert_eq!(next["messages"], json!([]));
    s.stop().await;
}

/// The cursor just after message `id` of `topic`, as a WebSocket replay
/// from the start hands it out (cursors are one opaque form everywhere).
async fn cursor_after(s: &TestServer, topic: &str, id: &str) -> String {
    let mut c = s.ws("/v1/ws").await;
    c.send(json!({"op": "subscribe", "topic": topic, "after": "0-0", "ref": 1})).await;
    loop {
        let v = c.next().await;
        if v["op"] == "message" && v["id"] == id {
            return v["cursor"].as_str().unwrap().to_owned();
        }
    }
}

/// An ephemeral publish reaches the topic's other subscribers on WebSocket,
/// SSE and gRPC, not the publishing connection, not long polling, not
/// history, and moves no cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_messages_reach_current_subscribers_only_and_move_no_cursor() {
    let s = TestServer::start(CONFIG).await;
    let stored = s.publish("room.1", r#"{"n":1}"#).await;
    let mut sender = s.ws("/v1/ws?topic=room.1").await;
    let mut other = s.ws("/v1/ws?topic=room.1").await;
    let mut sse = Sse::open(&s, "/v1/sse?topic=room.1", None).await;
    let channel = tonic::transport::Endpoint::from_shared(s.url("")).unwrap().connect().await.unwrap();
    let mut grpc = rtgate::proto::gateway_client::GatewayClient::new(channel);
    let mut stream = grpc
        .subscribe(rtgate::proto::SubscribeRequest { topics: vec!["room.1".into()], cursor: String::new() })
        .await
        .unwrap()
        .into_inner();
    sender.assert_quiet("s").await;
    other.assert_quiet("o").await;
    // A poll held meanwhile must not answer with it.
    let poll_cursor = cursor_after(&s, "room.1", &stored).await;
    let (http, url) =
        (s.http.clone(), s.url(&format!("/v1/poll?topic=room.1&cursor={poll_cursor}&timeout=2")));
    let poll = tokio::spawn(async move {
        let res = http.get(url).send().await.unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    });
    held_poll(&s).await;

    sender
        .send(json!({"op":"publish","topic":"room.1","data":{"typing":true},"ephemeral":true,"ref":"e"}))
        .await;
    assert_eq!(sender.next().await, json!({"op":"ack","ref":"e"}));
    let mut got = other.next_op("message").await;
    // With auth off the sender is named by its connection id, as presence does.
    let user = got.as_object_mut().unwrap().remove("user").expect("user");
    assert_eq!(user.as_str().map(str::len), Some(16), "{user}");
    assert_eq!(got, json!({"op":"message","topic":"room.1","data":{"typing":true},"ephemeral":true}));
    let ev = sse.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        (
            "ephemeral",
            format!(r#"{{"topic":"room.1","data":{{"typing":true}},"ephemeral":true,"user":{user}}}"#)
                .as_str()
        )
    );
    let g = tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap().unwrap();
    assert!(g.ephemeral && g.id.is_empty() && g.cursor.is_empty(), "{g:?}");
    assert_eq!(g.data, br#"{"typing":true}"#);
    sender.assert_quiet("not-echoed").await;

    let (status, answer) = poll.await.unwrap();
    assert_eq!(
        (status, answer["messages"].clone()),
        (200, json!([])),
        "long polling carries no ephemeral message"
    );
    let (_, h) = s.get("/v1/history/room.1").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1, "never stored: {h}");
    // Over HTTP too; the next stored message's cursor follows the stored one.
    let (status, body) = {
        let res =
            s.http.post(s.url("/v1/publish/room.1?ephemeral=true")).body(r#""hi""#).send().await.unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    assert_eq!((status, body), (200, json!({"topic":"room.1","ephemeral":true})));
    assert_eq!(other.next_op("message").await["data"], "hi");
    let next = s.publish("room.1", r#"{"n":2}"#).await;
    let m = other.next_op("message").await;
    assert_eq!(m["id"].as_str(), Some(next.as_str()));
    let mut resumed = s.ws(&format!("/v1/ws?topic=room.1&cursor={poll_cursor}")).await;
    let replay = resumed.messages(1).await;
    assert_eq!(replay[0]["id"].as_str(), Some(next.as_str()), "only the stored message follows the cursor");
    resumed.assert_quiet("resumed").await;
    s.stop().await;
}

/// Waits until a long poll is held (the process-wide gauge; other tests'
/// polls may count too, which only makes the wait shorter).
async fn held_poll(s: &TestServer) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let held = text
            .lines()
            .find_map(|l| l.strip_prefix("rtgate_held_polls "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if held >= 1.0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no poll was held");
        tokio::task::yield_now().await;
    }
}

/// Ephemeral publishes have their own per-connection rate; over it the
/// connection gets `rate_limited` and stays open.
#[tokio::test]
async fn ephemeral_publishes_are_rate_limited_per_connection() {
    let s = TestServer::start(&format!(
        "{CONFIG}\n[abuse]\nexempt = []\nephemeral_rate_per_connection = 1\nephemeral_burst_per_connection = 2\n"
    ))
    .await;
    let mut c = s.ws("/v1/ws").await;
    for r in 0..2 {
        c.send(json!({"op":"publish","topic":"t","data":1,"ephemeral":true,"ref":r})).await;
        assert_eq!(c.next().await, json!({"op":"ack","ref":r}));
    }
    c.send(json!({"op":"publish","topic":"t","data":1,"ephemeral":true,"ref":2})).await;
    let e = c.next_op("error").await;
    assert_eq!((e["code"].as_str(), e["ref"].as_i64()), (Some("rate_limited"), Some(2)));
    // Stored publishes are counted apart.
    c.send(json!({"op":"publish","topic":"t","data":1,"ref":3})).await;
    let ack = c.next_op("ack").await;
    assert!(ack["id"].is_string(), "{ack}");
    s.stop().await;
}

/// `client_publish = false`: a client stream may not publish (forbidden,
/// the connection goes on); a server request may (auth is off).
#[tokio::test]
async fn client_publish_false_leaves_publishing_to_server_requests() {
    let s = TestServer::start(CONFIG).await;
    let mut c = s.ws("/v1/ws?topic=feed.news").await;
    c.send(json!({"op":"publish","topic":"feed.news","data":1,"ref":1})).await;
    let e = c.next_op("error").await;
    assert_eq!(e["code"], "forbidden");
    c.send(json!({"op":"publish","topic":"feed.news","data":1,"ephemeral":true,"ref":2})).await;
    assert_eq!(c.next_op("error").await["code"], "forbidden");
    let id = s.publish("feed.news", "2").await;
    assert_eq!(c.next_op("message").await["id"].as_str(), Some(id.as_str()));
    s.stop().await;
}

/// A `[[topics]]` history overrides `[history]` for its topics only.
#[tokio::test]
async fn per_topic_history_trims_only_its_topics() {
    let s = TestServer::start(CONFIG).await;
    let mut short = Vec::new();
    for i in 0..5 {
        short.push(s.publish("short.a", &i.to_string()).await);
        s.publish("long.a", &i.to_string()).await;
    }
    let (_, h) = s.get("/v1/history/short.a").await;
    let kept: Vec<&str> =
        h["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(kept, short[2..].iter().map(String::as_str).collect::<Vec<_>>());
    let (_, h) = s.get(&format!("/v1/history/short.a?after={}", short[0])).await;
    assert_eq!(h["truncated"], true);
    let (_, h) = s.get("/v1/history/long.a").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 5);
    s.stop().await;
}

/// A bad `[[topics]]` entry stops the gateway at startup, naming the key.
#[test]
fn bad_topic_policies_are_refused_at_startup() {
    for (toml, key) in [
        ("[[topics]]\npattern = \"a b\"\n", "topics.pattern"),
        ("[[topics]]\npattern = \"a.*\"\n[[topics]]\npattern = \"a.*\"\n", "topics.pattern"),
        ("[[topics]]\npattern = \"a\"\nhistory = { max_len = 0 }\n", "topics.history.max_len"),
        ("[[topics]]\npattern = \"a\"\ndelivery = \"fastest\"\n", "delivery"),
        ("[[topics]]\npattern = \"a\"\npresence = \"all\"\n", "presence"),
    ] {
        // from_toml validates.
        let err = rtgate::config::Config::from_toml(toml).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(key), "{toml:?}: {err:?}");
    }
}

/// The same coalesced resume on SSE (`Last-Event-ID`) and gRPC `Subscribe`
/// (`cursor`): `skipped` rides in the message JSON and in `Message.skipped`.
#[tokio::test]
async fn sse_and_grpc_resumes_of_a_latest_topic_carry_skipped() {
    let s = TestServer::start(CONFIG).await;
    let first = s.publish("price.jp", r#"{"k":"start"}"#).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let key = ["x", "y"][i % 2];
        let url = s.url(&format!("/v1/publish/price.jp?key={key}"));
        ids.push(post_publish(&s.http, &url, json!({"k": key, "i": i}).to_string()).await);
    }
    let cursor = cursor_after(&s, "price.jp", &first).await;
    let mut sse = Sse::open(&s, "/v1/sse?topic=price.jp", Some(&cursor)).await;
    for want in [&ids[8], &ids[9]] {
        let (_, m) = sse.message_text().await;
        let m: Value = serde_json::from_str(&m).unwrap();
        assert_eq!((m["id"].as_str(), m["skipped"].as_u64()), (Some(want.as_str()), Some(4)), "{m}");
    }
    let channel = tonic::transport::Endpoint::from_shared(s.url("")).unwrap().connect().await.unwrap();
    let mut grpc = rtgate::proto::gateway_client::GatewayClient::new(channel);
    let mut stream = grpc
        .subscribe(rtgate::proto::SubscribeRequest { topics: vec!["price.jp".into()], cursor })
        .await
        .unwrap()
        .into_inner();
    for want in [&ids[8], &ids[9]] {
        let m = tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap().unwrap();
        assert_eq!((m.id.as_str(), m.skipped, m.ephemeral), (want.as_str(), 4, false));
    }
    s.stop().await;
}
