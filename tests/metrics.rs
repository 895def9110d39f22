//! `/metrics` (contract §10) against the real binary: each scenario runs its
//! own `rtgate` process (the recorder is process-global), drives traffic over
//! one transport and asserts exact deltas in the parsed Prometheus exposition.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::metrics::Metrics;
use support::sse::RawSse;
use support::*;

use std::net::SocketAddr;

use prometheus_parse::Value as PromValue;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------- process

/// The real binary on a free port; killed on drop.
use support::binary::Gateway as Proc;

impl Proc {
    /// Starts the binary with `env` (and `RUST_LOG=info`).
    async fn start(env: &[(&str, &str)]) -> Proc {
        Proc::spawn(&[], env).await
    }

    async fn ws(&self, path_and_query: &str) -> WsClient {
        WsClient::connect(&format!("ws://127.0.0.1:{}{path_and_query}", self.port)).await
    }

    /// POST /v1/publish/{topic}; returns the id.
    async fn publish(&self, topic: &str, body: &str) -> String {
        self.publish_with_key(topic, body, None).await
    }

    async fn publish_with_key(&self, topic: &str, body: &str, key: Option<&str>) -> String {
        let mut req = self.http.post(self.url(&format!("/v1/publish/{topic}"))).body(body.to_owned());
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = tokio::time::timeout(WAIT, req.send()).await.expect("publish timed out").expect("publish");
        assert_eq!(res.status().as_u16(), 200);
        let v: Value = res.json().await.expect("publish json");
        v["id"].as_str().expect("id").to_owned()
    }

    async fn poll(&self, query: &str) -> (Vec<Value>, String) {
        let res = tokio::time::timeout(WAIT, self.http.get(self.url(&format!("/v1/poll?{query}"))).send())
            .await
            .expect("poll timed out")
            .expect("poll");
        assert_eq!(res.status().as_u16(), 200);
        let v: Value = res.json().await.expect("poll json");
        let messages = v["messages"].as_array().expect("messages").clone();
        (messages, v["cursor"].as_str().expect("cursor").to_owned())
    }
}

// ---------------------------------------------------------------- clients

/// A WebSocket client over a raw TCP socket with a tiny receive buffer that
/// never reads after the handshake.
async fn raw_ws_never_reading(addr: &str, path_and_query: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let sa: SocketAddr = addr.parse().expect("addr");
    let mut stream =
        tokio::time::timeout(WAIT, sock.connect(sa)).await.expect("connect timed out").expect("connect");
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.expect("write handshake");
    // Read the response head one byte at a time, so nothing after it is consumed.
    let mut head = vec![];
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(WAIT, stream.read(&mut b))
            .await
            .expect("handshake timed out")
            .expect("read");
        assert_eq!(n, 1, "closed during handshake: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "handshake: {head}");
    stream
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publishes_count_by_transport_and_engine_operation() {
    const N: usize = 7;
    let p = Proc::start(&[]).await;
    let m0 = p.scrape().await;
    for i in 0..N {
        p.publish("mh", &format!(r#"{{"i":{i}}}"#)).await;
    }
    // Counted before the answer: no wait needed.
    let m1 = p.scrape().await;
    assert_eq!(
        m1.counter("rtgate_messages_published_total", &[("transport", "http")]),
        m0.published("http") + N as f64
    );
    assert_eq!(m1.publish_ops_ok(), m0.publish_ops_ok() + N as f64);
    assert_eq!(m1.v("rtgate_engine_operations_total", &[("op", "publish"), ("outcome", "error")]), 0.0);
    assert_eq!(m1.v("rtgate_engine_errors_total", &[]), 0.0);
    for t in ["ws", "sse", "poll"] {
        assert_eq!(m1.published(t), m0.published(t), "published{{transport={t}}}");
    }
    // No subscriber: nothing delivered anywhere.
    for t in ["ws", "sse", "poll"] {
        assert_eq!(m1.delivered(t), 0.0, "delivered{{transport={t}}}");
    }

    // An idempotent repeat publishes nothing (contract §3), so it is not a
    // published message.
    p.publish_with_key("mh", "1", Some("k1")).await;
    p.publish_with_key("mh", "1", Some("k1")).await;
    let m2 = p.scrape().await;
    assert_eq!(m2.published("http"), m1.published("http") + 1.0, "a duplicate counted as published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_publish_ops_and_live_deliveries_with_latency_histogram() {
    const M: usize = 5; // publish ops over WebSocket
    const H: usize = 3; // and over HTTP
    const K: usize = M + H; // live deliveries to the one subscriber
    let p = Proc::start(&[]).await;
    let mut sub = p.ws("/v1/ws?topic=mw").await;
    let mut publisher = p.ws("/v1/ws").await; // not subscribed to anything
    let m0 = p.scrape().await;
    assert_eq!(m0.latency_count("ws"), 0.0);

    for i in 0..M {
        publisher.send(json!({"op": "publish", "topic": "mw", "data": {"i": i}, "ref": i})).await;
        let ack = publisher.next_op("ack").await;
        assert_eq!(ack["ref"], i);
        assert!(ack["id"].is_string(), "{ack}");
    }
    for i in M..K {
        p.publish("mw", &format!(r#"{{"i":{i}}}"#)).await;
    }
    let got = sub.messages(K).await;
    let is: Vec<u64> = got.iter().map(|m| m["data"]["i"].as_u64().unwrap()).collect();
    assert_eq!(is, (0..K as u64).collect::<Vec<_>>());

    let m1 = p
        .wait_for("ws deliveries", |m| {
            m.delivered("ws") >= m0.delivered("ws") + K as f64 && m.latency_count("ws") >= K as f64
        })
        .await;
    assert_eq!(m1.published("ws"), m0.published("ws") + M as f64);
    assert_eq!(m1.published("http"), m0.published("http") + H as f64);
    assert_eq!(m1.publish_ops_ok(), m0.publish_ops_ok() + K as f64);
    assert_eq!(
        m1.counter("rtgate_messages_delivered_total", &[("transport", "ws")]),
        m0.delivered("ws") + K as f64
    );
    assert_eq!(m1.latency_count("ws"), m0.latency_count("ws") + K as f64);
    // Every bucket moved by at most K, +Inf by exactly K.
    let (h0, h1) = (
        m0.histogram("rtgate_delivery_latency_seconds", &[("transport", "ws")]),
        m1.histogram("rtgate_delivery_latency_seconds", &[("transport", "ws")]),
    );
    assert_eq!(h0.len(), h1.len());
    for (a, b) in h0.iter().zip(&h1) {
        assert_eq!(a.less_than, b.less_than);
        assert!(b.count >= a.count && b.count - a.count <= K as f64, "{a:?} -> {b:?}");
    }
    assert_eq!(h1.last().unwrap().count - h0.last().unwrap().count, K as f64);
    // Other transports untouched.
    assert_eq!(m1.delivered("sse"), m0.delivered("sse"));
    assert_eq!(m1.latency_count("sse"), m0.latency_count("sse"));
    assert_eq!(m1.delivered("poll"), m0.delivered("poll"));
    drop((sub, publisher));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_connection_gauge_totals_closes_topics_and_subscriptions() {
    let p = Proc::start(&[]).await;
    let m0 = p.scrape().await;
    assert_eq!(m0.connections("ws"), 0.0);
    assert_eq!((m0.topics(), m0.subscriptions()), (0.0, 0.0));

    let mut a = p.ws("/v1/ws?topic=ga&topic=gb").await;
    // The connection is counted at the upgrade, its query topics joined
    // just after: wait for both.
    let m = p
        .wait_for("one ws connection on two topics", |m| {
            m.connections("ws") == 1.0 && (m.topics(), m.subscriptions()) == (2.0, 2.0)
        })
        .await;
    assert_eq!(m.connections_total("ws"), m0.connections_total("ws") + 1.0);

    let mut b = p.ws("/v1/ws?topic=ga").await;
    let (_, ack) = b.subscribe("gc", None).await; // joined before the ack
    assert_eq!(ack["recovered"], true);
    let m = p.wait_for("two ws connections", |m| m.connections("ws") == 2.0).await;
    assert_eq!(m.connections_total("ws"), m0.connections_total("ws") + 2.0);
    assert_eq!((m.topics(), m.subscriptions()), (3.0, 4.0), "topics ga, gb, gc; a:{{ga,gb}} b:{{ga,gc}}");

    a.send(json!({"op": "unsubscribe", "topic": "gb", "ref": "u"})).await;
    assert_eq!(a.next_op("ack").await["ref"], "u");
    let m = p.scrape().await;
    assert_eq!((m.topics(), m.subscriptions()), (2.0, 3.0), "after unsubscribing gb");

    a.close_and_wait().await;
    let m = p
        .wait_for("first client close", |m| m.closes("ws", "client") == m0.closes("ws", "client") + 1.0)
        .await;
    assert_eq!(m.connections("ws"), 1.0);
    assert_eq!((m.topics(), m.subscriptions()), (2.0, 2.0), "b still holds ga and gc");
    assert_eq!(m.connections_total("ws"), m0.connections_total("ws") + 2.0, "a total never decreases");

    b.close_and_wait().await;
    let m = p
        .wait_for("second client close", |m| m.closes("ws", "client") == m0.closes("ws", "client") + 2.0)
        .await;
    assert_eq!(
        m.counter("rtgate_connection_closes_total", &[("transport", "ws"), ("reason", "client")]),
        2.0
    );
    assert_eq!(m.connections("ws"), 0.0);
    assert_eq!((m.topics(), m.subscriptions()), (0.0, 0.0));
    assert_eq!(m.connections_total("ws"), m0.connections_total("ws") + 2.0);
    assert_eq!(m.slow("ws"), 0.0);
    // No other close reason was recorded.
    for s in m.scrape.samples.iter().filter(|s| s.metric == "rtgate_connection_closes_total") {
        if s.labels.get("reason") != Some("client") {
            assert_eq!(s.value, PromValue::Counter(0.0), "{:?}", s.labels);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_live_deliveries_connection_gauge_and_close() {
    const K: usize = 6;
    let p = Proc::start(&[]).await;
    let m0 = p.scrape().await;
    let mut sse = RawSse::open(&p.addr(), "/v1/sse?topic=ms", None).await;
    let m = p.wait_for("one sse connection", |m| m.connections("sse") == 1.0).await;
    assert_eq!(m.connections_total("sse"), m0.connections_total("sse") + 1.0);
    assert_eq!((m.topics(), m.subscriptions()), (1.0, 1.0));

    let mut ids = vec![];
    for i in 0..K {
        ids.push(p.publish("ms", &format!(r#"{{"i":{i}}}"#)).await);
    }
    let got = sse.events(K).await;
    let got_ids: Vec<&str> = got.iter().map(|(_, d)| d["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());

    let m1 = p
        .wait_for("sse deliveries", |m| {
            m.delivered("sse") >= m0.delivered("sse") + K as f64 && m.latency_count("sse") >= K as f64
        })
        .await;
    assert_eq!(m1.delivered("sse"), m0.delivered("sse") + K as f64);
    assert_eq!(m1.latency_count("sse"), m0.latency_count("sse") + K as f64);
    assert_eq!(m1.delivered("ws"), m0.delivered("ws"));
    assert_eq!(m1.latency_count("ws"), m0.latency_count("ws"));
    assert_eq!(m1.published("http"), m0.published("http") + K as f64);

    drop(sse); // the client goes away
               // The close is counted as the body stream is dropped; the hub membership
               // goes with it (in no guaranteed order with the counter), so wait for both.
    let m2 = p
        .wait_for("sse close and hub leave", |m| {
            // Topics and subscriptions are read one after the other in a
            // scrape, so a leave can fall between them: wait for both.
            m.closes("sse", "client") >= m0.closes("sse", "client") + 1.0
                && m.subscriptions() == 0.0
                && m.topics() == 0.0
        })
        .await;
    assert_eq!(m2.closes("sse", "client"), m0.closes("sse", "client") + 1.0);
    assert_eq!(m2.connections("sse"), 0.0);
    assert_eq!(m2.connections_total("sse"), m0.connections_total("sse") + 1.0);
    assert_eq!((m2.topics(), m2.subscriptions()), (0.0, 0.0));
    assert_eq!(m2.delivered("sse"), m1.delivered("sse"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_publishes_stream_deliveries_gauge_and_close() {
    use rtgate::proto::{gateway_client::GatewayClient, PublishRequest, SubscribeRequest};
    const K: usize = 5;
    let p = Proc::start(&[]).await;
    let m0 = p.scrape().await;
    let channel = tonic::transport::Endpoint::from_shared(p.url(""))
        .expect("endpoint")
        .connect()
        .await
        .expect("grpc connect");
    let mut client = GatewayClient::new(channel);
    let req = SubscribeRequest { topics: vec!["mg".into()], cursor: String::new() };
    let mut stream = tokio::time::timeout(WAIT, client.subscribe(req))
        .await
        .expect("subscribe timed out")
        .expect("subscribe")
        .into_inner();
    let m = p.wait_for("one grpc stream", |m| m.connections("grpc") == 1.0).await;
    assert_eq!(m.connections_total("grpc"), m0.connections_total("grpc") + 1.0);
    assert_eq!((m.topics(), m.subscriptions()), (1.0, 1.0));

    let mut ids = vec![];
    for i in 0..K {
        let req = PublishRequest {
            topic: "mg".into(),
            data: format!(r#"{{"i":{i}}}"#).into_bytes(),
            ..Default::default()
        };
        ids.push(client.publish(req).await.expect("publish").into_inner().id);
    }
    let mut got = vec![];
    while got.len() < K {
        let m =
            tokio::time::timeout(WAIT, stream.message()).await.expect("message timed out").expect("status");
        got.push(m.expect("stream ended").id);
    }
    assert_eq!(got, ids);

    let m1 = p
        .wait_for("grpc deliveries", |m| {
            m.delivered("grpc") >= m0.delivered("grpc") + K as f64 && m.latency_count("grpc") >= K as f64
        })
        .await;
    assert_eq!(m1.published("grpc"), m0.published("grpc") + K as f64);
    assert_eq!(m1.published("http"), m0.published("http"));
    assert_eq!(m1.delivered("grpc"), m0.delivered("grpc") + K as f64);
    assert_eq!(m1.latency_count("grpc"), m0.latency_count("grpc") + K as f64);

    drop(stream); // the client cancels the call
    let m2 = p
        .wait_for("grpc close and hub leave", |m| {
            m.closes("grpc", "client") >= m0.closes("grpc", "client") + 1.0 && m.subscriptions() == 0.0
        })
        .await;
    assert_eq!(m2.connections("grpc"), 0.0);
    assert_eq!(m2.closes("grpc", "client"), m0.closes("grpc", "client") + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_count_delivered_messages_and_held_polls() {
    let p = Proc::start(&[]).await;
    let m0 = p.scrape().await;
    assert_eq!(m0.gauge("rtgate_held_polls", &[]), 0.0);

    // A poll with nothing to return waits; one publish wakes it with 1 message.
    let held = {
        let http = p.http.clone();
        let url = p.url("/v1/poll?topic=mp&timeout=20");
        tokio::spawn(async move {
            let res = tokio::time::timeout(WAIT, http.get(url).send())
                .await
                .expect("poll timed out")
                .expect("poll");
            assert_eq!(res.status().as_u16(), 200);
            res.json::<Value>().await.expect("poll json")
        })
    };
    p.wait_for("a held poll", |m| m.gauge("rtgate_held_polls", &[]) == 1.0).await;
    let first = p.publish("mp", "0").await;
    let v = tokio::time::timeout(WAIT, held).await.expect("held poll").expect("join");
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{v}");
    assert_eq!(msgs[0]["id"], first.as_str());
    let cursor = v["cursor"].as_str().unwrap().to_owned();
    let m1 = p.wait_for("no held poll", |m| m.gauge("rtgate_held_polls", &[]) == 0.0).await;
    assert_eq!(m1.delivered("poll"), m0.delivered("poll") + 1.0);

    // Three waiting messages come back at once; an empty poll adds nothing.
    for i in 1..4 {
        p.publish("mp", &i.to_string()).await;
    }
    let (msgs, cursor) = p.poll(&format!("topic=mp&cursor={cursor}&timeout=5")).await;
    assert_eq!(msgs.len(), 3);
    let (msgs, _) = p.poll(&format!("topic=mp&cursor={cursor}&timeout=0")).await;
    assert_eq!(msgs.len(), 0);
    let m2 = p.scrape().await;
    assert_eq!(
        m2.counter("rtgate_messages_delivered_total", &[("transport", "poll")]),
        m0.delivered("poll") + 4.0
    );
    assert_eq!(m2.gauge("rtgate_held_polls", &[]), 0.0);
    assert_eq!(m2.delivered("ws"), 0.0);
    assert_eq!(m2.delivered("sse"), 0.0);
    assert_eq!((m2.topics(), m2.subscriptions()), (0.0, 0.0), "a finished poll leaves the hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_count_recovered_gaps_and_replayed_messages() {
    // History keeps 5 messages per topic.
    let p = Proc::start(&[("RTGATE_HISTORY__MAX_LEN", "5")]).await;
    let m0 = p.scrape().await;
    let recovered = |m: &Metrics| m.v("rtgate_replays_total", &[("outcome", "recovered")]);
    let gaps = |m: &Metrics| m.v("rtgate_replays_total", &[("outcome", "gap")]);
    let replayed = |m: &Metrics| m.v("rtgate_replayed_messages_total", &[]);

    // Recovered: 5 published, resume after the first: 4 replayed.
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(p.publish("rr", &i.to_string()).await);
    }
    let mut c = p.ws("/v1/ws").await;
    let (before, ack) = c.subscribe("rr", Some(&ids[0])).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack["recovered"], true);
    let got = c.messages(4).await;
    assert_eq!(got.iter().map(|m| m["id"].as_str().unwrap()).collect::<Vec<_>>(), ids[1..].to_vec());
    let m1 = p.wait_for("recovered replay", |m| recovered(m) >= recovered(&m0) + 1.0).await;
    assert_eq!(m1.counter("rtgate_replays_total", &[("outcome", "recovered")]), recovered(&m0) + 1.0);
    assert_eq!(gaps(&m1), gaps(&m0));
    assert_eq!(m1.counter("rtgate_replayed_messages_total", &[]), replayed(&m0) + 4.0);
    // Replayed messages are delivered, but not live: no latency observation.
    assert_eq!(m1.delivered("ws"), m0.delivered("ws") + 4.0);
    assert_eq!(m1.latency_count("ws"), m0.latency_count("ws"));

    // Gap: 8 published, the first 3 trimmed; resume after the first: a gap,
    // then the 5 retained.
    let mut ids = vec![];
    for i in 0..8 {
        ids.push(p.publish("rg", &i.to_string()).await);
    }
    let (before, ack) = c.subscribe("rg", Some(&ids[0])).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["op"], "gap");
    assert_eq!(ack["recovered"], false);
    let got = c.messages(5).await;
    assert_eq!(got.iter().map(|m| m["id"].as_str().unwrap()).collect::<Vec<_>>(), ids[3..].to_vec());
    let m2 = p.wait_for("gap replay", |m| gaps(m) >= gaps(&m0) + 1.0).await;
    assert_eq!(m2.counter("rtgate_replays_total", &[("outcome", "gap")]), gaps(&m0) + 1.0);
    assert_eq!(recovered(&m2), recovered(&m1));
    assert_eq!(replayed(&m2), replayed(&m1) + 5.0);
    assert_eq!(m2.delivered("ws"), m1.delivered("ws") + 5.0);

    // A subscribe without `after` is not a replay.
    let (_, ack) = c.subscribe("rn", None).await;
    assert_eq!(ack["recovered"], true);
    let m3 = p.scrape().await;
    assert_eq!((recovered(&m3), gaps(&m3), replayed(&m3)), (recovered(&m2), gaps(&m2), replayed(&m2)));
    c.close_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_ws_client_counts_one_slow_consumer_disconnect() {
    const DATA: usize = 256 * 1024;
    const MAX_PUBLISHES: usize = 1000; // 256 MiB: far beyond any socket buffer
    let p = Proc::start(&[
        ("RTGATE_LIMITS__OUTBOX_CAPACITY", "8"),
        ("RTGATE_LIMITS__MAX_MESSAGE_BYTES", "1048576"),
        ("RTGATE_HISTORY__MAX_LEN", "16"),
    ])
    .await;
    let m0 = p.scrape().await;
    let stuck = raw_ws_never_reading(&p.addr(), "/v1/ws?topic=slow").await;
    p.wait_for("the stuck ws connection", |m| m.connections("ws") == 1.0).await;

    let pad = "x".repeat(DATA);
    let mut dropped = false;
    for i in 0..MAX_PUBLISHES {
        p.publish("slow", &format!(r#"{{"i":{i},"pad":"{pad}"}}"#)).await;
        // The overflowing session leaves the hub at once; its close (and the
        // metrics) follow after a bounded close handshake with the stuck socket.
        if i % 8 == 7 {
            let m = p.scrape().await;
            if m.subscriptions() == 0.0 || m.slow("ws") > m0.slow("ws") {
                dropped = true;
                break;
            }
        }
    }
    assert!(
        dropped,
        "a client that never reads was not dropped after {MAX_PUBLISHES} messages of {DATA} bytes"
    );
    let m1 = p
        .wait_for("the slow connection closed", |m| {
            m.slow("ws") > m0.slow("ws") && m.connections("ws") == 0.0
        })
        .await;
    assert_eq!(
        m1.counter("rtgate_slow_consumer_disconnects_total", &[("transport", "ws")]),
        m0.slow("ws") + 1.0
    );
    assert_eq!(m1.closes("ws", "slow_consumer"), m0.closes("ws", "slow_consumer") + 1.0);
    assert_eq!(m1.closes("ws", "client"), m0.closes("ws", "client"));
    assert_eq!(m1.connections_total("ws"), m0.connections_total("ws") + 1.0);
    for t in ["sse", "poll", "http"] {
        assert_eq!(m1.slow(t), 0.0, "slow{{transport={t}}}");
    }
    assert_eq!((m1.topics(), m1.subscriptions()), (0.0, 0.0));
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_families_are_typed_and_named_by_prometheus_conventions() {
    let p = Proc::start(&[]).await;
    // Touch every family first (lazily registered series included).
    let c = p.ws("/v1/ws?topic=nc").await;
    p.publish("nc", "1").await;
    c.close_and_wait().await;
    let m = p.wait_for("a ws close", |m| m.closes("ws", "client") == 1.0).await;

    let mut counters = std::collections::BTreeSet::new();
    let mut gauges = std::collections::BTreeSet::new();
    let mut histograms = std::collections::BTreeSet::new();
    for s in &m.scrape.samples {
        assert!(s.metric.starts_with("rtgate_"), "{} lacks the rtgate_ prefix", s.metric);
        match &s.value {
            PromValue::Counter(v) => {
                assert!(s.metric.ends_with("_total"), "counter {} does not end in _total", s.metric);
                assert!(*v >= 0.0 && v.fract() == 0.0, "counter {} = {v}", s.metric);
                counters.insert(s.metric.clone());
            }
            PromValue::Gauge(v) => {
                assert!(!s.metric.ends_with("_total"), "gauge {} ends in _total", s.metric);
                assert!(*v >= 0.0, "gauge {} = {v}", s.metric);
                gauges.insert(s.metric.clone());
            }
            PromValue::Histogram(_) => {
                assert!(s.metric.ends_with("_seconds"), "histogram {} is not in _seconds", s.metric);
                histograms.insert(s.metric.clone());
            }
            PromValue::Untyped(_) => {
                // Only a histogram's _sum and _count are untyped for the parser.
                let base = s.metric.strip_suffix("_sum").or_else(|| s.metric.strip_suffix("_count"));
                assert!(
                    base.is_some_and(|b| m.text.contains(&format!("# TYPE {b} histogram"))),
                    "untyped sample {}",
                    s.metric
                );
            }
            PromValue::Summary(_) => panic!("unexpected summary {}", s.metric),
        }
    }
    for c in [
        "rtgate_connections_total",
        "rtgate_connection_closes_total",
        "rtgate_messages_published_total",
        "rtgate_messages_delivered_total",
        "rtgate_slow_consumer_disconnects_total",
        "rtgate_engine_errors_total",
        "rtgate_engine_operations_total",
        "rtgate_replays_total",
        "rtgate_replayed_messages_total",
        "rtgate_tcp_connections_total",
    ] {
        assert!(counters.contains(c), "counter {c} missing; counters: {counters:?}");
    }
    for g in [
        "rtgate_connections",
        "rtgate_topics",
        "rtgate_subscriptions",
        "rtgate_tcp_connections",
        "rtgate_held_polls",
    ] {
        assert!(gauges.contains(g), "gauge {g} missing; gauges: {gauges:?}");
    }
    assert_eq!(
        histograms.into_iter().collect::<Vec<_>>(),
        vec!["rtgate_delivery_latency_seconds".to_owned()]
    );
    // Per-transport families carry each streaming transport.
    for t in ["ws", "sse"] {
        m.latency_count(t);
        m.connections(t);
        m.counter("rtgate_connections_total", &[("transport", t)]);
        m.counter("rtgate_messages_delivered_total", &[("transport", t)]);
        m.counter("rtgate_slow_consumer_disconnects_total", &[("transport", t)]);
    }
    for t in ["http", "ws"] {
        m.counter("rtgate_messages_published_total", &[("transport", t)]);
    }
    m.counter("rtgate_messages_delivered_total", &[("transport", "poll")]);
    // Each family has one TYPE line.
    for name in counters.iter().chain(&gauges) {
        let n = m.text.lines().filter(|l| l.starts_with(&format!("# TYPE {name} "))).count();
        assert_eq!(n, 1, "# TYPE {name}");
    }
}

/// History reads (`rtgate_engine_operations_total{op="history"}`) of a
/// client polling in step with a topic another subscriber keeps joined:
/// every held poll whose cursor is the newest message fanned out costs no
/// history read (on Redis, no round trip), and still receives each message
/// once, in order. A poll that cannot wait (`timeout=0`), or one whose
/// cursor is behind, reads.
async fn polls_at_the_tip_read_no_history(env: &[(&str, &str)]) {
    let p = Proc::start(env).await;
    let t = "tip.poll";
    let reads = |m: &Metrics| m.v("rtgate_engine_operations_total", &[("op", "history"), ("outcome", "ok")]);
    // The bystander keeps the topic joined (and its tip known) between polls.
    let mut bystander = p.ws("/v1/ws").await;
    bystander.subscribe(t, None).await;
    let (none, c0) = p.poll(&format!("topic={t}&timeout=0")).await;
    assert!(none.is_empty());
    let first = p.publish(t, "0").await;
    assert_eq!(bystander.next_op("message").await["id"], first.as_str());
    let (m, mut cursor) = p.poll(&format!("topic={t}&cursor={c0}&timeout=0")).await;
    assert_eq!(ids(&m), [first.as_str()]);

    let before = reads(&p.scrape().await);
    let (mut published, mut got) = (vec![first], vec![]);
    for i in 1..=20 {
        let held = {
            let http = p.http.clone();
            let url = p.url(&format!("/v1/poll?topic={t}&cursor={cursor}&timeout=20"));
            tokio::spawn(async move {
                let res = tokio::time::timeout(WAIT, http.get(url).send())
                    .await
                    .expect("poll timed out")
                    .expect("poll");
                assert_eq!(res.status().as_u16(), 200);
                res.json::<Value>().await.expect("poll json")
            })
        };
        p.wait_for("a held poll", |m| m.gauge("rtgate_held_polls", &[]) == 1.0).await;
        let id = p.publish(t, &i.to_string()).await;
        // Fanned out (so the tip moved) before the next poll starts.
        assert_eq!(bystander.next_op("message").await["id"], id.as_str());
        let v = tokio::time::timeout(WAIT, held).await.expect("held poll").expect("join");
        let messages = v["messages"].as_array().expect("messages");
        got.extend(messages.iter().map(id_of));
        cursor = v["cursor"].as_str().expect("cursor").to_owned();
        published.push(id);
        p.wait_for("no held poll", |m| m.gauge("rtgate_held_polls", &[]) == 0.0).await;
    }
    assert_eq!(got, published[1..], "each message once, in order");
    let after = reads(&p.scrape().await);
    assert_eq!(after, before, "20 held polls at the tip read history {} times", after - before);

    // Not waiting: reads (and finds nothing).
    let (m, _) = p.poll(&format!("topic={t}&cursor={cursor}&timeout=0")).await;
    assert!(m.is_empty(), "{m:?}");
    assert_eq!(reads(&p.scrape().await), after + 1.0);
    // Behind the tip: reads, and answers at once with everything after.
    let (m, _) = p.poll(&format!("topic={t}&cursor={c0}&timeout=20")).await;
    assert_eq!(ids(&m), published);
    assert_eq!(reads(&p.scrape().await), after + 2.0);
}

/// The environment that puts the gateway on the Redis server at `url`.
fn on_redis(url: &str) -> [(&'static str, &str); 2] {
    [("RTGATE_ENGINE__KIND", "redis"), ("RTGATE_REDIS__URL", url)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_at_the_tip_read_no_history_memory() {
    polls_at_the_tip_read_no_history(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_at_the_tip_read_no_history_redis() {
    let redis = support::redis::RedisServer::start();
    let url = redis.url();
    polls_at_the_tip_read_no_history(&on_redis(&url)).await;
}

/// Redis loses the topic's stream (FLUSHALL) while a poll is held at the
/// tip and another subscriber keeps the topic joined; a message published
/// after reaches the polling client within a few polls, once, and a gap, if
/// one is reported, starts at the client's position: the remembered tip
/// never makes the poll skip what the new stream holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_held_at_the_tip_survives_a_lost_stream_redis() {
    let redis = support::redis::RedisServer::start();
    let url = redis.url();
    let p = Proc::start(&on_redis(&url)).await;
    let t = "tip.lost";
    let mut bystander = p.ws("/v1/ws").await;
    bystander.subscribe(t, None).await;
    let (_, c0) = p.poll(&format!("topic={t}&timeout=0")).await;
    let mut published = vec![];
    for i in 0..3 {
        published.push(p.publish(t, &i.to_string()).await);
    }
    assert_eq!(ids(&bystander.messages(3).await), published);
    let (m, c3) = p.poll(&format!("topic={t}&cursor={c0}&timeout=0")).await;
    assert_eq!(ids(&m), published);

    let held = {
        let http = p.http.clone();
        let url = p.url(&format!("/v1/poll?topic={t}&cursor={c3}&timeout=20"));
        tokio::spawn(async move {
            let res = tokio::time::timeout(WAIT, http.get(url).send())
                .await
                .expect("poll timed out")
                .expect("poll");
            assert_eq!(res.status().as_u16(), 200);
            res.json::<Value>().await.expect("poll json")
        })
    };
    p.wait_for("a held poll", |m| m.gauge("rtgate_held_polls", &[]) == 1.0).await;
    let flushed = tokio::task::block_in_place(|| support::redis::cli(redis.port, &["FLUSHALL"]));
    assert_eq!(flushed.trim(), "OK");
    let fresh = p.publish(t, r#""fresh""#).await;

    let mut answer = tokio::time::timeout(WAIT, held).await.expect("held poll").expect("join");
    let (mut got, mut gaps) = (vec![], vec![]);
    for _ in 0..4 {
        got.extend(answer["messages"].as_array().expect("messages").iter().map(id_of));
        gaps.extend(answer.get("gaps").and_then(Value::as_array).cloned().unwrap_or_default());
        if !got.is_empty() {
            break;
        }
        let cursor = answer["cursor"].as_str().expect("cursor").to_owned();
        let res = tokio::time::timeout(
            WAIT,
            p.http.get(p.url(&format!("/v1/poll?topic={t}&cursor={cursor}&timeout=5"))).send(),
        )
        .await
        .expect("poll timed out")
        .expect("poll");
        assert_eq!(res.status().as_u16(), 200);
        answer = res.json().await.expect("poll json");
    }
    assert_eq!(got, [fresh.as_str()], "the message after the loss, once (gaps {gaps:?})");
    for g in &gaps {
        assert_eq!(g["after"], published[2].as_str(), "{g}");
    }
}

/// Engine reads of WebSocket subscribes on a topic another subscriber keeps
/// joined (its tip known): one from "now" asks the engine nothing (the tip
/// is "now"); one resuming at the tip reads history once (before it joins),
/// not twice; one resuming behind the tip reads once and replays what it
/// missed, that read ending at the tip. Each then gets
/// the next message live, once.
async fn subscribes_at_the_tip_read_less(env: &[(&str, &str)]) {
    let p = Proc::start(env).await;
    let t = "tip.ws";
    let op = |m: &Metrics, op: &str| m.v("rtgate_engine_operations_total", &[("op", op), ("outcome", "ok")]);
    let mut bystander = p.ws("/v1/ws").await;
    bystander.subscribe(t, None).await;
    let first = p.publish(t, "0").await;
    let second = p.publish(t, "1").await;
    let seen = bystander.messages(2).await;
    assert_eq!(ids(&seen), [first.as_str(), second.as_str()]);
    let (behind, tip) = (seen[0]["cursor"].as_str().unwrap(), seen[1]["cursor"].as_str().unwrap());

    let m0 = p.scrape().await;
    let mut now = p.ws("/v1/ws").await;
    let (before, ack) = now.subscribe(t, None).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack["op"], "ack", "{ack}");
    let m1 = p.scrape().await;
    assert_eq!((op(&m1, "last_id"), op(&m1, "history")), (op(&m0, "last_id"), op(&m0, "history")));

    let mut at_tip = p.ws(&format!("/v1/ws?topic={t}&cursor={tip}")).await;
    at_tip.assert_quiet("at_tip").await;
    let m2 = p.scrape().await;
    assert_eq!(op(&m2, "history"), op(&m1, "history") + 1.0, "one read before the join, none after");

    let mut from_behind = p.ws(&format!("/v1/ws?topic={t}&cursor={behind}")).await;
    assert_eq!(ids(&from_behind.messages(1).await), [second.as_str()]);
    let m3 = p.scrape().await;
    // The replay's read reaches the tip: after the join, no second read.
    assert_eq!(op(&m3, "history"), op(&m2, "history") + 1.0, "behind the tip: one read that replays");

    let next = p.publish(t, "2").await;
    for c in [&mut bystander, &mut now, &mut at_tip, &mut from_behind] {
        assert_eq!(ids(&c.messages(1).await), [next.as_str()]);
        c.assert_quiet("after").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_at_the_tip_read_less_memory() {
    subscribes_at_the_tip_read_less(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_at_the_tip_read_less_redis() {
    let redis = support::redis::RedisServer::start();
    let url = redis.url();
    subscribes_at_the_tip_read_less(&on_redis(&url)).await;
}
