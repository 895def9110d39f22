//! HTTP long polling end to end (contract §1, §6, §10): backlog at once, a
//! held poll answered by a publish, timeouts with a usable cursor, `limit`
//! across topics, `gaps` after trimming, exactly-once delivery to a client
//! looping on the cursor while two publishers run (embedded engine, and the
//! Redis engine across two processes), CORS and bad parameters.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::post_publish as publish;
use support::redis::RedisServer;
use support::*;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

// ---------------------------------------------------------------- helpers

/// One poll answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    /// From just before the request was sent to the full answer.
    elapsed: Duration,
}

impl Answer {
    /// A 200 answer: (messages, cursor). Checks the body's shape exactly:
    /// `messages` and `cursor`, plus `gaps` only when there are some.
    fn ok(&self) -> (Vec<Value>, String) {
        assert_eq!(self.status, 200, "{}", self.body);
        let o = self.body.as_object().expect("object");
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort_unstable();
        if o.contains_key("gaps") {
            assert_eq!(keys, ["cursor", "gaps", "messages"], "{}", self.body);
            assert!(
                !self.body["gaps"].as_array().expect("gaps").is_empty(),
                "empty gaps list: {}",
                self.body
            );
        } else {
            assert_eq!(keys, ["cursor", "messages"], "{}", self.body);
        }
        let cursor = self.body["cursor"].as_str().expect("cursor").to_owned();
        check_cursor(&cursor);
        let messages = self.body["messages"].as_array().expect("messages").clone();
        for m in &messages {
            check_shape(m);
        }
        (messages, cursor)
    }

    fn gaps(&self) -> Vec<Value> {
        self.body.get("gaps").map(|g| g.as_array().expect("gaps").clone()).unwrap_or_default()
    }
}

/// `GET /v1/poll?{query}` (bounded).
async fn poll_on(http: &reqwest::Client, s: &TestServer, query: &str) -> Answer {
    let url = s.url(&format!("/v1/poll?{query}"));
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(30), http.get(&url).send())
        .await
        .unwrap_or_else(|_| panic!("GET {url} timed out"))
        .expect("poll");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = tokio::time::timeout(WAIT, res.json::<Value>())
        .await
        .expect("poll body timed out")
        .expect("poll body is JSON");
    Answer { status, headers, body, elapsed: started.elapsed() }
}

async fn poll(s: &TestServer, query: &str) -> Answer {
    poll_on(&s.http, s, query).await
}

/// `topic=..&topic=..`
fn topics_q(topics: &[&str]) -> String {
    let q: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    q.join("&")
}

/// A cursor for "now" on `topics` (an immediate empty poll).
async fn now_cursor(s: &TestServer, topics: &[&str]) -> String {
    let a = poll(s, &format!("{}&timeout=0", topics_q(topics))).await;
    let (messages, cursor) = a.ok();
    assert!(messages.is_empty(), "{}", a.body);
    cursor
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn backlog_is_answered_at_once() {
    let s = TestServer::start("").await;
    let t = "poll.backlog";
    let c0 = now_cursor(&s, &[t]).await;
    let bodies = [r#"{"b":1,"a":[true,{"z":null}]}"#, r#""text""#, "7"];
    let mut replies = vec![];
    for b in bodies {
        let (status, reply) = s.publish_raw(t, b, None).await;
        assert_eq!(status, 200, "{reply}");
        replies.push(reply);
    }

    // Messages after the cursor exist: answered at once, not after 30 s.
    let a = poll(&s, &format!("topic={t}&cursor={c0}&timeout=30")).await;
    assert!(a.elapsed < Duration::from_secs(5), "{:?}", a.elapsed);
    assert_eq!(a.headers["content-type"], "application/json");
    let (messages, c1) = a.ok();
    let want: Vec<Value> = bodies
        .iter()
        .zip(&replies)
        .map(|(b, r)| {
            json!({"topic": t, "id": r["id"], "ts": r["ts"],
                   "data": serde_json::from_str::<Value>(b).unwrap()})
        })
        .collect();
    assert_eq!(messages, want);

    // The same cursor again: the same answer (a cursor is a position).
    let (again, _) = poll(&s, &format!("topic={t}&cursor={c0}&timeout=30")).await.ok();
    assert_eq!(again, want);

    // From the answer's cursor: nothing more.
    let (none, c2) = poll(&s, &format!("topic={t}&cursor={c1}&timeout=0")).await.ok();
    assert!(none.is_empty());
    // Without a cursor a poll starts at "now": the backlog is not returned.
    let (fresh, _) = poll(&s, &format!("topic={t}&timeout=0")).await.ok();
    assert!(fresh.is_empty(), "{fresh:?}");

    // Both later cursors continue with the next message only.
    let next = s.publish(t, r#"{"n":4}"#).await;
    for c in [&c1, &c2] {
        let (m, _) = poll(&s, &format!("topic={t}&cursor={c}&timeout=30")).await.ok();
        assert_eq!(ids(&m), [next.as_str()]);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_poll_returns_on_publish() {
    let s = TestServer::start("").await;
    let (ta, tb) = ("poll.held.a", "poll.held.b");
    let c0 = now_cursor(&s, &[ta, tb]).await;

    let http = s.http.clone();
    let url = s.url(&format!("/v1/poll?{}&cursor={c0}&timeout=20", topics_q(&[ta, tb])));
    let mut held = tokio::spawn(async move {
        let res = http.get(&url).send().await.expect("poll");
        assert_eq!(res.status().as_u16(), 200);
        (Instant::now(), res.json::<Value>().await.expect("json"))
    });
    // Nothing to return yet: the poll is held.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut held).await.is_err(),
        "an empty poll was answered before its timeout"
    );
    let published_at = Instant::now();
    let id = s.publish(tb, r#"{"wake":1}"#).await;
    let (answered_at, body) = tokio::time::timeout(WAIT, held)
        .await
        .expect("the held poll was not answered after a publish")
        .expect("poll task");
    let latency = answered_at - published_at;
    assert!(latency < Duration::from_secs(2), "answered {latency:?} after the publish");
    assert_eq!(body["messages"].as_array().unwrap().len(), 1, "{body}");
    let m = &body["messages"][0];
    check_shape(m);
    assert_eq!(m["topic"], tb);
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["data"], json!({"wake": 1}));

    // The answer's cursor continues: the next poll holds again and gets
    // the next publish, on the other topic.
    let c1 = body["cursor"].as_str().unwrap().to_owned();
    let http = s.http.clone();
    let url = s.url(&format!("/v1/poll?{}&cursor={c1}&timeout=20", topics_q(&[ta, tb])));
    let mut held = tokio::spawn(async move {
        let res = http.get(&url).send().await.expect("poll");
        res.json::<Value>().await.expect("json")
    });
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut held).await.is_err());
    let id2 = s.publish(ta, r#"{"wake":2}"#).await;
    let body = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    let got: Vec<String> = body["messages"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(got, [id2]);
    assert_eq!(body["messages"][0]["topic"], ta);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_answers_empty_with_a_usable_cursor() {
    let s = TestServer::start("[poll]\ndefault_timeout = \"400ms\"\nmax_timeout = \"1s\"\n").await;
    let t = "poll.timeout";

    // No cursor, no timeout: held for the default timeout, then empty.
    let a = poll(&s, &format!("topic={t}")).await;
    assert!(
        a.elapsed >= Duration::from_millis(400) && a.elapsed < Duration::from_secs(5),
        "default timeout: {:?}",
        a.elapsed
    );
    let (m, c1) = a.ok();
    assert!(m.is_empty());
    assert_eq!(a.body, json!({"messages": [], "cursor": c1}));

    // Passing it back later gets what was published meanwhile.
    let p1 = s.publish(t, r#"{"n":1}"#).await;
    let p2 = s.publish(t, r#"{"n":2}"#).await;
    let (m, c2) = poll(&s, &format!("topic={t}&cursor={c1}&timeout=0")).await.ok();
    assert_eq!(ids(&m), [p1, p2]);
    assert_eq!(m[0]["data"], json!({"n": 1}));

    // A fractional timeout, then one above max_timeout (clamped to 1 s).
    let a = poll(&s, &format!("topic={t}&cursor={c2}&timeout=0.3")).await;
    assert!(a.elapsed >= Duration::from_millis(300) && a.elapsed < Duration::from_secs(5), "{:?}", a.elapsed);
    let (m, c3) = a.ok();
    assert!(m.is_empty());
    let a = poll(&s, &format!("topic={t}&cursor={c3}&timeout=100")).await;
    assert!(
        a.elapsed >= Duration::from_secs(1) && a.elapsed < Duration::from_secs(5),
        "max_timeout clamp: {:?}",
        a.elapsed
    );
    let (m, c4) = a.ok();
    assert!(m.is_empty());
    assert_eq!(a.body, json!({"messages": [], "cursor": c4}));
    let p3 = s.publish(t, r#"{"n":3}"#).await;
    let (m, _) = poll(&s, &format!("topic={t}&cursor={c4}&timeout=0")).await.ok();
    assert_eq!(ids(&m), [p3]);
    s.stop().await;
}

#[tokio::test]
async fn limit_across_topics_and_cursor_continues() {
    let s = TestServer::start("").await;
    let (ta, tb) = ("poll.limit.a", "poll.limit.b");
    let q = topics_q(&[ta, tb]);
    let c0 = now_cursor(&s, &[ta, tb]).await;
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..5 {
        for t in [ta, tb] {
            let id = s.publish(t, &format!(r#"{{"i":{i}}}"#)).await;
            want.entry(t.to_owned()).or_default().push(id);
        }
    }

    let mut cursor = c0.clone();
    let mut sizes = vec![];
    let mut all = vec![];
    loop {
        let (m, next) = poll(&s, &format!("{q}&cursor={cursor}&limit=3&timeout=0")).await.ok();
        cursor = next;
        if m.is_empty() {
            break;
        }
        sizes.push(m.len());
        all.extend(m);
        assert!(sizes.len() <= 10, "does not end: {sizes:?}");
    }
    assert_eq!(sizes, [3, 3, 3, 1], "full batches of `limit`");
    assert_eq!(by_topic(&all), want, "every message once, per-topic order");

    // A limit above the maximum is clamped, not refused.
    let (m, _) = poll(&s, &format!("{q}&cursor={c0}&limit=100000&timeout=0")).await.ok();
    assert_eq!(by_topic(&m), want);

    // The final cursor continues exactly.
    let next = s.publish(tb, r#"{"i":5}"#).await;
    let (m, _) = poll(&s, &format!("{q}&cursor={cursor}&limit=3&timeout=0")).await.ok();
    assert_eq!(ids(&m), [next]);
    assert_eq!(m[0]["topic"], tb);
    s.stop().await;
}

async fn gaps_after_trimming(engine: Engine<'_>) {
    let s = TestServer::start(&engine.config("[history]\nmax_len = 5\n")).await;
    let (t, other) = ("poll.gap", "poll.gap.other");
    let q = topics_q(&[t, other]);
    let c0 = now_cursor(&s, &[t, other]).await;
    let mut ps = vec![s.publish(t, r#"{"n":0}"#).await];
    let (m, c1) = poll(&s, &format!("{q}&cursor={c0}&timeout=0")).await.ok();
    assert_eq!(ids(&m), [ps[0].clone()]);
    for n in 1..=10 {
        ps.push(s.publish(t, &format!(r#"{{"n":{n}}}"#)).await);
    }
    let o1 = s.publish(other, r#"{"o":1}"#).await;
    let gap = json!({"topic": t, "after": ps[0], "oldest": ps[6]});

    let a = poll(&s, &format!("{q}&cursor={c1}&timeout=0")).await;
    let (m, c2) = a.ok();
    assert_eq!(a.gaps(), std::slice::from_ref(&gap));
    let mut want = BTreeMap::new();
    want.insert(t.to_owned(), ps[6..].to_vec());
    want.insert(other.to_owned(), vec![o1.clone()]);
    assert_eq!(by_topic(&m), want);
    for v in m.iter().filter(|v| v["topic"] == t) {
        let n = ps.iter().position(|p| v["id"] == p.as_str()).unwrap();
        assert_eq!(v["data"], json!({ "n": n }));
    }
    // Past the gap: not reported again.
    let a = poll(&s, &format!("{q}&cursor={c2}&timeout=0")).await;
    let (m, _) = a.ok();
    assert!(m.is_empty() && a.gaps().is_empty(), "{}", a.body);

    // With a small limit: the gap comes with the first batch only, and the
    // batches continue from the oldest retained message; the limit is
    // shared between the topics (one message each).
    let a = poll(&s, &format!("{q}&cursor={c1}&limit=2&timeout=0")).await;
    let (m, c3) = a.ok();
    assert_eq!(a.gaps(), [gap]);
    let mut want_first = BTreeMap::new();
    want_first.insert(t.to_owned(), vec![ps[6].clone()]);
    want_first.insert(other.to_owned(), vec![o1]);
    assert_eq!(by_topic(&m), want_first);
    let a = poll(&s, &format!("{q}&cursor={c3}&limit=100&timeout=0")).await;
    let (m, _) = a.ok();
    assert!(a.gaps().is_empty(), "{}", a.body);
    let mut want_rest = BTreeMap::new();
    want_rest.insert(t.to_owned(), ps[7..].to_vec());
    assert_eq!(by_topic(&m), want_rest);
    s.stop().await;
}

crate::engine_tests! {
    #[tokio::test]
    gaps_reported_after_trimming, redis_gaps_reported_after_trimming => gaps_after_trimming
}

/// A client loops on the cursor (held polls, small `limit`) on `poller`
/// while two publishers run concurrently on `publisher`, one topic each; it
/// must receive every message exactly once, in per-topic order.
async fn loop_on_cursor(poller: &TestServer, publisher: &TestServer, n: usize) {
    let (ta, tb) = ("poll.loop.a", "poll.loop.b");
    let q = topics_q(&[ta, tb]);
    let mut cursor = now_cursor(poller, &[ta, tb]).await;

    let spawn_publisher = |t: &'static str| {
        let http = publisher.http.clone();
        let url = publisher.url(&format!("/v1/publish/{t}"));
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(publish(&http, &url, format!(r#"{{"t":"{t}","i":{i}}}"#)).await);
            }
            out
        })
    };
    let pa = spawn_publisher(ta);
    let pb = spawn_publisher(tb);

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut got = vec![];
    let mut polls = 0;
    while got.len() < 2 * n {
        assert!(Instant::now() < deadline, "only {} of {} messages after {polls} polls", got.len(), 2 * n);
        let (m, next) = poll_on(&http, poller, &format!("{q}&cursor={cursor}&limit=37&timeout=5")).await.ok();
        assert!(m.len() <= 37);
        polls += 1;
        cursor = next;
        got.extend(m);
    }
    let ids_a = tokio::time::timeout(WAIT, pa).await.unwrap().unwrap();
    let ids_b = tokio::time::timeout(WAIT, pb).await.unwrap().unwrap();
    let mut want = BTreeMap::new();
    want.insert(ta.to_owned(), ids_a);
    want.insert(tb.to_owned(), ids_b);
    for ids in want.values() {
        assert!(ids.windows(2).all(|w| pid(&w[0]) < pid(&w[1])), "ids increase");
    }
    assert_eq!(got.len(), 2 * n, "no duplicates");
    assert_eq!(by_topic(&got), want, "exactly once, in per-topic order");
    for t in [ta, tb] {
        let data: Vec<Value> = got.iter().filter(|m| m["topic"] == t).map(|m| m["data"].clone()).collect();
        let expect: Vec<Value> = (0..n).map(|i| json!({"t": t, "i": i})).collect();
        assert_eq!(data, expect);
    }
    assert!(polls > 1, "the loop should take several polls");
    // Nothing left over.
    let (m, _) = poll_on(&http, poller, &format!("{q}&cursor={cursor}&timeout=0")).await.ok();
    assert!(m.is_empty(), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_on_cursor_with_two_publishers_exactly_once() {
    // The poller polls back to back while 500 messages arrive, with the
    // default abuse limits: re-polls are not connection attempts.
    let s = TestServer::start("").await;
    loop_on_cursor(&s, &s, 500).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_loop_on_cursor_across_two_processes() {
    let r = RedisServer::start();
    let (a, b) = r.two_servers("").await;
    // Poll on B, publish on A.
    loop_on_cursor(&b, &a, 200).await;
    a.stop().await;
    b.stop().await;
}

/// Redis engine: a poll held on B is answered by a publish on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_held_poll_on_b_answered_by_publish_on_a() {
    let r = RedisServer::start();
    let (a, b) = r.two_servers("").await;
    let t = "poll.redis.held";
    let c0 = now_cursor(&b, &[t]).await;
    let http = b.http.clone();
    let url = b.url(&format!("/v1/poll?topic={t}&cursor={c0}&timeout=20"));
    let mut held = tokio::spawn(async move {
        let res = http.get(&url).send().await.expect("poll");
        (Instant::now(), res.json::<Value>().await.expect("json"))
    });
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut held).await.is_err());
    let published_at = Instant::now();
    let id = a.publish(t, r#"{"from":"a"}"#).await;
    let (answered_at, body) = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert!(answered_at - published_at < Duration::from_secs(3), "{:?}", answered_at - published_at);
    assert_eq!(
        body["messages"],
        json!([{"topic": t, "id": id, "ts": body["messages"][0]["ts"], "data": {"from": "a"}}])
    );
    a.stop().await;
    b.stop().await;
}

/// Shutdown answers a held poll at once, with a cursor that resumes on
/// another process sharing the Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_shutdown_answers_held_poll_with_usable_cursor() {
    let r = RedisServer::start();
    let cfg = r.config("");
    let a = TestServer::start(&cfg).await;
    let t = "poll.redis.down";
    let c0 = now_cursor(&a, &[t]).await;
    let p0 = a.publish(t, r#"{"n":0}"#).await;
    let (m, c1) = poll(&a, &format!("topic={t}&cursor={c0}&timeout=0")).await.ok();
    assert_eq!(ids(&m), [p0]);

    let http = a.http.clone();
    let url = a.url(&format!("/v1/poll?topic={t}&cursor={c1}&timeout=30"));
    let mut held = tokio::spawn(async move {
        let res = http.get(&url).send().await.expect("held poll");
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.expect("json"))
    });
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut held).await.is_err());
    let started = Instant::now();
    let stop = tokio::spawn(a.stop());
    let (status, body) = tokio::time::timeout(WAIT, held)
        .await
        .expect("a held poll was not answered at shutdown")
        .expect("poll task");
    assert!(started.elapsed() < Duration::from_secs(5), "answered only after {:?}", started.elapsed());
    assert_eq!(status, 200, "{body}");
    let c2 = body["cursor"].as_str().expect("cursor").to_owned();
    assert_eq!(body, json!({"messages": [], "cursor": c2}));
    tokio::time::timeout(WAIT, stop).await.expect("stop timed out").expect("stop");

    let b = TestServer::start(&cfg).await;
    let p1 = b.publish(t, r#"{"n":1}"#).await;
    let (m, _) = poll(&b, &format!("topic={t}&cursor={c2}&timeout=5")).await.ok();
    assert_eq!(ids(&m), [p1]);
    assert_eq!(m[0]["data"], json!({"n": 1}));
    b.stop().await;
}

#[tokio::test]
async fn cors_on_poll() {
    let s = TestServer::start("[http]\ncors_origins = [\"http://a.example\"]\n").await;
    let url = s.url("/v1/poll?topic=poll.cors&timeout=0");
    for (origin, allowed) in [("http://a.example", true), ("http://b.example", false)] {
        let pre = tokio::time::timeout(
            WAIT,
            s.http
                .request(reqwest::Method::OPTIONS, &url)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "GET")
                .send(),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(pre.status().is_success(), "{}", pre.status());
        let res = tokio::time::timeout(WAIT, s.http.get(&url).header("Origin", origin).send())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        for h in [pre.headers(), res.headers()] {
            let acao = h.get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
            if allowed {
                assert_eq!(acao.as_deref(), Some(origin));
            } else {
                assert_eq!(acao, None, "{origin}");
            }
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_parameters() {
    let s = TestServer::start("").await;
    let t = "poll.bad";
    let good = now_cursor(&s, &[t]).await;
    let long = "a".repeat(129);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "bad_request"),
        (format!("cursor={good}"), "bad_request"),
        ("topic=bad%20topic".into(), "bad_topic"),
        (format!("topic={t}&topic=x%2Fy"), "bad_topic"),
        (format!("topic={long}"), "bad_topic"),
        ("topic=".into(), "bad_topic"),
        (format!("topic={t}&cursor=!!"), "bad_request"),
        (format!("topic={t}&cursor=AAAA"), "bad_request"),
        (format!("topic={t}&cursor=Zm9v"), "bad_request"),
        (format!("topic={t}&cursor={}", "A".repeat(5000)), "bad_request"),
        (format!("topic={t}&timeout=abc"), "bad_request"),
        (format!("topic={t}&timeout=-1"), "bad_request"),
        (format!("topic={t}&timeout=NaN"), "bad_request"),
        (format!("topic={t}&timeout=inf"), "bad_request"),
        (format!("topic={t}&limit=0"), "bad_request"),
        (format!("topic={t}&limit=-3"), "bad_request"),
        (format!("topic={t}&limit=abc"), "bad_request"),
        (format!("topic={t}&limit=1.5"), "bad_request"),
    ];
    for (query, code) in cases {
        let a = poll(&s, &query).await;
        assert_eq!(a.status, 400, "GET /v1/poll?{query}: {}", a.body);
        assert_eq!(a.body["error"]["code"], code, "GET /v1/poll?{query}: {}", a.body);
        assert!(a.body["error"]["message"].is_string(), "{}", a.body);
        assert!(a.elapsed < Duration::from_secs(5), "a bad poll is not held");
    }
    // The server is fine and the good cursor works.
    let id = s.publish(t, "1").await;
    let (m, _) = poll(&s, &format!("topic={t}&cursor={good}&timeout=5")).await.ok();
    assert_eq!(ids(&m), [id]);
    s.stop().await;
}
