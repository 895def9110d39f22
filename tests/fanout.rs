//! Fan-out (contract §1, §4, §10): every subscriber gets each topic's
//! messages in id order, exactly once; WS publishes reach other connections;
//! a client that stops reading is disconnected (1013) without slowing anyone.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::*;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The value of `rtgate_slow_consumer_disconnects_total{transport="ws"}`.
async fn slow_disconnects(s: &TestServer) -> u64 {
    s.scrape().await.slow("ws") as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_in_order_to_every_subscriber() {
    const PUBLISHERS: usize = 4;
    const PER: usize = 2500;
    const TOTAL: usize = PUBLISHERS * PER;
    const SUBSCRIBERS: usize = 3;
    // Big enough outboxes: this test is about order, not slow consumers.
    let s = TestServer::start("[limits]\noutbox_capacity = 20000\n").await;

    let mut readers = vec![];
    for k in 0..SUBSCRIBERS {
        // Connect-time subscriptions (and one via the op) are active before publishing starts.
        let mut c = if k == 0 {
            let mut c = s.ws("/v1/ws").await;
            let (before, ack) = c.subscribe("fan", None).await;
            assert!(before.is_empty());
            assert_eq!(ack["recovered"], true);
            c
        } else {
            s.ws("/v1/ws?topic=fan").await
        };
        readers.push(tokio::spawn(async move {
            let got = c.messages(TOTAL).await;
            (c, got)
        }));
    }

    let mut publishers = vec![];
    for p in 0..PUBLISHERS {
        let http = s.http.clone();
        let url = s.url("/v1/publish/fan");
        publishers.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(PER);
            for i in 0..PER {
                let res = tokio::time::timeout(
                    WAIT,
                    http.post(&url).body(format!(r#"{{"p":{p},"i":{i}}}"#)).send(),
                )
                .await
                .expect("publish timed out")
                .expect("publish");
                assert_eq!(res.status().as_u16(), 200);
                let v: Value = res.json().await.expect("json");
                ids.push(v["id"].as_str().expect("id").to_owned());
            }
            ids
        }));
    }
    let mut published = vec![];
    for (p, h) in publishers.into_iter().enumerate() {
        let ids = tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .expect("publisher timed out")
            .expect("join");
        assert!(ids.windows(2).all(|w| pid(&w[0]) < pid(&w[1])), "publisher {p}: its own ids increase");
        published.extend(ids);
    }
    assert_eq!(published.len(), TOTAL);
    assert_eq!(published.iter().collect::<HashSet<_>>().len(), TOTAL, "ids are unique");
    published.sort_by_key(|id| pid(id));

    for (k, h) in readers.into_iter().enumerate() {
        let (mut c, got) = tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .expect("reader timed out")
            .expect("reader");
        let ids: Vec<String> = got.iter().map(|m| m["id"].as_str().expect("id").to_owned()).collect();
        assert_eq!(ids.len(), TOTAL);
        if let Some(i) = ids.windows(2).position(|w| pid(&w[0]) >= pid(&w[1])) {
            panic!("subscriber {k}: not ascending at {i}: {} then {}", ids[i], ids[i + 1]);
        }
        assert_eq!(ids, published, "subscriber {k}: exactly the published ids, ascending");
        // Each publisher's messages arrive in its own publish order.
        let mut next = [0u64; PUBLISHERS];
        for m in &got {
            assert_eq!(m["topic"], "fan");
            let p = m["data"]["p"].as_u64().expect("p") as usize;
            assert_eq!(m["data"]["i"].as_u64(), Some(next[p]), "subscriber {k}, publisher {p}");
            next[p] += 1;
        }
        c.assert_quiet("end").await;
    }
    s.stop().await;
}

#[tokio::test]
async fn ws_publish_reaches_subscribers_on_other_connections() {
    let s = TestServer::start("").await;
    let mut s1 = s.ws("/v1/ws?topic=wsp").await;
    let mut s2 = s.ws("/v1/ws").await;
    let (_, ack) = s2.subscribe("wsp", None).await;
    assert_eq!(ack["recovered"], true);
    let mut other = s.ws("/v1/ws?topic=elsewhere").await;
    let mut p = s.ws("/v1/ws").await;

    // `data` is forwarded as the exact bytes sent (spacing, key order).
    p.send_text(r#"{"op":"publish","topic":"wsp","data":{"b":1,  "a":[2, 3]},"ref":"p0"}"#).await;
    let ack = p.next_op("ack").await;
    assert_eq!(ack["ref"], "p0");
    let id0 = ack["id"].as_str().expect("id").to_owned();
    for c in [&mut s1, &mut s2] {
        let raw = c.next_text().await;
        assert!(raw.contains(r#","data":{"b":1,  "a":[2, 3]},"#), "{raw}");
        let m: Value = serde_json::from_str(&raw).expect("json");
        assert_eq!(
            (m["op"].clone(), m["topic"].clone(), m["id"].clone()),
            (json!("message"), json!("wsp"), json!(id0))
        );
    }

    let mut acked = vec![id0];
    for i in 1..50 {
        p.send(json!({"op": "publish", "topic": "wsp", "data": {"i": i}, "ref": i})).await;
        let ack = p.next_op("ack").await;
        assert_eq!(ack["ref"], i);
        acked.push(ack["id"].as_str().expect("id").to_owned());
    }
    assert!(acked.windows(2).all(|w| pid(&w[0]) < pid(&w[1])));
    for c in [&mut s1, &mut s2] {
        let got = c.messages(49).await;
        let ids: Vec<String> = got.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(ids, acked[1..].to_vec());
        for (k, m) in got.iter().enumerate() {
            assert_eq!(m["data"], json!({"i": k + 1}));
        }
        c.assert_quiet("end").await;
    }
    // The publisher is not subscribed and the other topic's client hears nothing.
    p.assert_quiet("p").await;
    other.assert_quiet("o").await;
    // And an HTTP subscriber's view agrees: the history holds them in order.
    let (status, h) = s.get("/v1/history/wsp?limit=1000").await;
    assert_eq!(status, 200);
    let hist: Vec<String> =
        h["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(hist, acked);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_client_is_disconnected_and_others_get_everything() {
    const DATA: usize = 64 * 1024;
    const MAX_PUBLISHES: usize = 2000; // 128 MiB: far beyond any socket buffer
    let s = TestServer::start(
        "[limits]\noutbox_capacity = 16\nmax_message_bytes = 262144\n[history]\nmax_len = 100\n",
    )
    .await;
    let before = slow_disconnects(&s).await;
    let mut slow = s.ws("/v1/ws?topic=slow").await; // never read until the end
    let mut fast = s.ws("/v1/ws?topic=slow").await;

    let pad = "x".repeat(DATA);
    let url = s.url("/v1/publish/slow");
    let mut published = vec![];
    let mut disconnected = false;
    for i in 0..MAX_PUBLISHES {
        let res = tokio::time::timeout(
            WAIT,
            s.http.post(&url).body(format!(r#"{{"i":{i},"pad":"{pad}"}}"#)).send(),
        )
        .await
        .expect("publish timed out")
        .expect("publish");
        assert_eq!(res.status().as_u16(), 200);
        let v: Value = res.json().await.expect("json");
        let id = v["id"].as_str().expect("id").to_owned();
        // Lock-step: the reading client gets each message before the next
        // publish, so its own outbox never holds more than one.
        let m = fast.next_op("message").await;
        assert_eq!(m["id"], id.as_str(), "fast client, message {i}");
        assert_eq!(m["data"]["i"], i);
        published.push(id);
        if i % 16 == 15 && slow_disconnects(&s).await > before {
            disconnected = true;
            break;
        }
    }
    if !disconnected {
        // The close handshake with a stuck client is bounded (a few seconds).
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if slow_disconnects(&s).await > before {
                disconnected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // polling a metric, bounded
        }
    }
    let n = published.len();
    assert!(
        disconnected,
        "a client that never reads was not disconnected after {n} messages of {DATA} bytes \
         (rtgate_slow_consumer_disconnects_total{{transport=\"ws\"}} stayed at {before})"
    );
    assert_eq!(slow_disconnects(&s).await, before + 1, "only the non-reading client was slow");

    // The fast client is still connected and live.
    let id = s.publish("slow", r#""after""#).await;
    assert_eq!(fast.next_op("message").await["id"], id.as_str());
    fast.assert_quiet("fast").await;

    // The slow client: whatever reached it is an exact prefix of the
    // publishes, then the connection ends (1013, or dropped when the close
    // frame could not be written).
    let mut prefix = vec![];
    let end = loop {
        match tokio::time::timeout(WAIT, slow.ws.next()).await.expect("slow client: connection did not end") {
            None | Some(Err(_)) => break Ended::Dropped,
            Some(Ok(WsMessage::Close(Some(f)))) => {
                break Ended::Closed(u16::from(f.code), f.reason.as_str().to_owned())
            }
            Some(Ok(WsMessage::Close(None))) => break Ended::Closed(1005, String::new()),
            Some(Ok(WsMessage::Text(t))) => {
                let m: Value = serde_json::from_str(t.as_str()).expect("json");
                assert_eq!(m["op"], "message", "{}", &t.as_str()[..100.min(t.len())]);
                prefix.push(m["id"].as_str().expect("id").to_owned());
            }
            Some(Ok(_)) => {}
        }
    };
    assert!(prefix.len() < published.len(), "the slow client cannot have got everything");
    assert_eq!(prefix, published[..prefix.len()].to_vec(), "slow client: an in-order prefix");
    match end {
        Ended::Closed(code, _) => assert_eq!(code, 1013, "{end:?}"),
        Ended::Dropped => {}
    }
    s.stop().await;
}
