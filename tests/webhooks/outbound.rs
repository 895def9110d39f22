//! Outbound delivery on the embedded engine: retries, `Retry-After`,
//! timeouts, dead letters and redrive, `410 Gone`, isolation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::receiver::{always, Receiver, Reply};
use crate::support::TestServer;
use crate::{dead_letters, endpoint, publish, secret, wait_dead_letters, API_KEY, WAIT};

/// 500, 500, 200: delivered once, the same webhook-id every time, signed
/// with both secrets (rotation), body = the message JSON, delays growing
/// (50 ms, then 100 ms without jitter).
#[tokio::test]
async fn retries_until_delivered_with_growing_delays() {
    let secrets = [secret("a1"), secret("a2")];
    let script = Arc::new(|_: &str, n: usize| Reply::Status(if n <= 2 { 500 } else { 200 }));
    let rx = Receiver::start(&secrets, script).await;
    let cfg = endpoint("retry", &rx.url, &secrets, "orders.*", "jitter = false");
    let s = TestServer::start(&cfg).await;
    let id = publish(&s.http, &s.url(""), "orders.1", r#"{"n":1}"#, None).await;
    let got = rx.wait_for(WAIT, "three attempts", |r| r.len() >= 3).await;
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(r.id, format!("orders.1:{id}"));
        assert!(r.verified, "signature checked by standardwebhooks");
        assert_eq!(r.signatures, 2);
        assert_eq!(r.body["topic"], "orders.1");
        assert_eq!(r.body["id"], Value::String(id.clone()));
        assert_eq!(r.body["data"], json!({"n": 1}));
        assert!(r.body["ts"].as_u64().is_some());
    }
    let d1 = got[1].at - got[0].at;
    let d2 = got[2].at - got[1].at;
    assert!(d1 >= Duration::from_millis(50), "first retry after {d1:?}");
    assert!(d2 >= Duration::from_millis(100), "second retry after {d2:?}");
    assert!(d2 > d1, "delays grow: {d1:?} then {d2:?}");
    let (status, v) = dead_letters(&s.http, &s.url(""), None).await;
    assert_eq!((status, v["items"].as_array().map(Vec::len)), (200, Some(0)), "{v}");
    s.stop().await;
}

/// `503` with `Retry-After: 1` waits at least a second although the
/// backoff says 50 ms.
#[tokio::test]
async fn retry_after_is_honoured() {
    let secrets = [secret("b")];
    let script =
        Arc::new(|_: &str, n: usize| if n == 1 { Reply::RetryAfter(503, 1) } else { Reply::Status(200) });
    let rx = Receiver::start(&secrets, script).await;
    let s = TestServer::start(&endpoint("ra", &rx.url, &secrets, "t", "")).await;
    publish(&s.http, &s.url(""), "t", "1", None).await;
    let got = rx.wait_for(WAIT, "two attempts", |r| r.len() >= 2).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(1), "Retry-After 1 s, retried after {gap:?}");
    assert!(gap < Duration::from_secs(3), "retried after {gap:?}");
    assert_eq!(got[0].id, got[1].id);
    s.stop().await;
}

/// An attempt over `timeout` counts as a failure and is retried.
#[tokio::test]
async fn a_timeout_is_retried() {
    let secrets = [secret("c")];
    let script =
        Arc::new(
            |_: &str, n: usize| {
                if n == 1 {
                    Reply::After(Duration::from_secs(3), 200)
                } else {
                    Reply::Status(200)
                }
            },
        );
    let rx = Receiver::start(&secrets, script).await;
    let s = TestServer::start(&endpoint("slow", &rx.url, &secrets, "t", "timeout = \"300ms\"")).await;
    publish(&s.http, &s.url(""), "t", "1", None).await;
    let got = rx.wait_for(WAIT, "a retry after the timeout", |r| r.len() >= 2).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(300), "retried after {gap:?}, before the timeout");
    assert!(gap < Duration::from_secs(3), "retried after {gap:?}: the timeout did not cut the attempt");
    assert_eq!(got[0].id, got[1].id);
    s.stop().await;
}

/// 400 → dead letter at once (one attempt) → listed (API key needed) →
/// redriven → delivered with the same webhook-id; the list is empty again.
#[tokio::test]
async fn refused_messages_are_dead_lettered_listed_and_redriven() {
    let secrets = [secret("d")];
    let script = Arc::new(|_: &str, n: usize| Reply::Status(if n == 1 { 400 } else { 204 }));
    let rx = Receiver::start(&secrets, script).await;
    let cfg = format!(
        "[auth]\napi_keys = [{API_KEY:?}]\nhmac_secrets = [\"jwt-secret-0123456789abcdef0123456789\"]\n{}",
        endpoint("dl", &rx.url, &secrets, "t", "")
    );
    let s = TestServer::start(&cfg).await;
    let base = s.url("");
    let id = publish(&s.http, &base, "t", r#"{"x":[1,2]}"#, Some(API_KEY)).await;
    let (status, v) = dead_letters(&s.http, &base, None).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthenticated", "{v}");
    let items = wait_dead_letters(&s.http, &base, Some(API_KEY), 1).await;
    let item = &items[0];
    assert_eq!(item["id"], format!("dl:t:{id}"));
    assert_eq!(item["endpoint"], "dl");
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["last_error"], "HTTP 400");
    assert_eq!(item["message"]["id"], Value::String(id.clone()));
    assert_eq!(item["message"]["data"], json!({"x": [1, 2]}));
    assert_eq!(rx.received().len(), 1);
    let redrive = |key: Option<&str>| {
        let mut req = s
            .http
            .post(s.url(&format!("/v1/webhooks/dead-letters/{}/redrive", item["id"].as_str().unwrap())));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    assert_eq!(redrive(None).await.unwrap().status().as_u16(), 401);
    assert_eq!(redrive(Some(API_KEY)).await.unwrap().status().as_u16(), 202);
    let got = rx.wait_for(WAIT, "the redriven delivery", |r| r.len() >= 2).await;
    assert_eq!(got[1].id, format!("t:{id}"));
    assert!(got[1].verified);
    wait_dead_letters(&s.http, &base, Some(API_KEY), 0).await;
    // Gone now: a second redrive is not_found.
    let res = redrive(Some(API_KEY)).await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    s.stop().await;
}

/// 410 disables the endpoint: its message and every later one go to the
/// dead letters, and no further attempt is made.
#[tokio::test]
async fn gone_disables_the_endpoint() {
    let secrets = [secret("e")];
    let rx = Receiver::start(&secrets, always(410)).await;
    let s =
        TestServer::start(&endpoint("gone", &rx.url, &secrets, "t", "concurrency = 1\nordered = true")).await;
    let base = s.url("");
    publish(&s.http, &base, "t", "1", None).await;
    publish(&s.http, &base, "t", "2", None).await;
    let items = wait_dead_letters(&s.http, &base, None, 2).await;
    assert_eq!(items[0]["last_error"], "HTTP 410");
    assert_eq!(items[1]["last_error"], "endpoint disabled (HTTP 410)");
    assert_eq!(items[1]["attempts"], 0);
    assert_eq!(rx.received().len(), 1, "no attempt after 410");
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("rtgate_webhook_disabled{endpoint=\"gone\"} 1"), "{metrics}");
    s.stop().await;
}

/// A receiver that never answers in time does not delay a healthy one:
/// every message reaches the healthy endpoint quickly while the dead one
/// times out and retries.
#[tokio::test]
async fn a_dead_endpoint_does_not_delay_a_healthy_one() {
    let secrets = [secret("f")];
    let dead =
        Receiver::start(&secrets, Arc::new(|_: &str, _| Reply::After(Duration::from_secs(30), 200))).await;
    let healthy = Receiver::start(&secrets, always(200)).await;
    let cfg = format!(
        "{}{}",
        endpoint("dead", &dead.url, &secrets, "load.*", "timeout = \"1s\"\nconcurrency = 2"),
        endpoint("healthy", &healthy.url, &secrets, "load.*", "")
    );
    let s = TestServer::start(&cfg).await;
    let mut sent = Vec::new();
    for i in 0..40 {
        let topic = format!("load.{}", i % 4);
        let at = Instant::now();
        let id = publish(&s.http, &s.url(""), &topic, "0", None).await;
        sent.push((at, format!("{topic}:{id}")));
    }
    let got = healthy.wait_for(WAIT, "40 deliveries", |r| r.len() >= 40).await;
    let arrived: std::collections::HashMap<&str, Instant> =
        got.iter().map(|r| (r.id.as_str(), r.at)).collect();
    let worst =
        sent.iter().map(|(at, wid)| arrived[wid.as_str()].saturating_duration_since(*at)).max().unwrap();
    assert!(worst < Duration::from_millis(750), "healthy endpoint delayed up to {worst:?}");
    assert_eq!(healthy.distinct().len(), 40);
    dead.wait_for(WAIT, "attempts at the dead endpoint", |r| !r.is_empty()).await;
    s.stop().await;
}

/// `ordered = true`: a topic's messages arrive in id order, a failing one
/// holding back its successors until its retry succeeds.
#[tokio::test]
async fn ordered_endpoints_keep_each_topics_order() {
    let secrets = [secret("o")];
    let first = Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = Arc::clone(&first);
    let script = Arc::new(move |id: &str, n: usize| {
        let mut f = seen.lock().unwrap();
        let is_first = f.get_or_insert_with(|| id.to_owned()) == id;
        Reply::Status(if is_first && n == 1 { 500 } else { 200 })
    });
    let rx = Receiver::start(&secrets, script).await;
    let s =
        TestServer::start(&endpoint("ord", &rx.url, &secrets, "seq.*", "ordered = true\nconcurrency = 4"))
            .await;
    let mut want = Vec::new();
    for i in 0..5 {
        let id = publish(&s.http, &s.url(""), "seq.a", &i.to_string(), None).await;
        want.push(format!("seq.a:{id}"));
    }
    let got = rx.wait_for(WAIT, "6 requests", |r| r.len() >= 6).await;
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    let mut expected: Vec<&str> = vec![&want[0], &want[0]];
    expected.extend(want[1..].iter().map(String::as_str));
    assert_eq!(ids, expected, "the first message (retried) holds back the rest, which follow in order");
    s.stop().await;
}

/// Concurrent publishes of one topic reach an `ordered` endpoint in id
/// order: the embedded outbox records each publish in the order of its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_reach_an_ordered_endpoint_in_id_order() {
    let secrets = [secret("c")];
    let rx = Receiver::start(&secrets, Arc::new(|_: &str, _| Reply::Status(200))).await;
    let s = TestServer::start(&endpoint("conc", &rx.url, &secrets, "par", "ordered = true")).await;
    let publishers: Vec<_> = (0..8)
        .map(|p| {
            let (http, url) = (s.http.clone(), s.url(""));
            tokio::spawn(async move {
                for i in 0..25 {
                    publish(&http, &url, "par", &(p * 100 + i).to_string(), None).await;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let got = rx.wait_for(WAIT, "200 deliveries", |r| r.len() >= 200).await;
    let ids: Vec<rtgate::core::MessageId> =
        got.iter().map(|r| r.id.strip_prefix("par:").expect("topic:id").parse().expect("an id")).collect();
    assert_eq!(ids.len(), 200);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "delivered out of id order: {ids:?}");
    s.stop().await;
}

/// The outbox is bounded: while an endpoint holds every entry, a publish
/// of a routed topic is refused (`unavailable`, nothing stored) instead of
/// being dropped for the webhooks; other topics are unaffected.
#[tokio::test]
async fn a_full_outbox_refuses_routed_publishes() {
    let secrets = [secret("q")];
    let rx =
        Receiver::start(&secrets, Arc::new(|_: &str, _| Reply::After(Duration::from_secs(30), 200))).await;
    let cfg = format!(
        "[webhook_queue]\nmax_len = 3\nmax_in_flight = 8\n{}",
        endpoint("full", &rx.url, &secrets, "q.*", "concurrency = 1\ntimeout = \"20s\"")
    );
    let s = TestServer::start(&cfg).await;
    for i in 0..3 {
        publish(&s.http, &s.url(""), "q.x", &i.to_string(), None).await;
    }
    let (status, v) = s.publish_raw("q.x", "4", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("unavailable")), "{v}");
    let (_, history) = s.get("/v1/history/q.x").await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 3, "the refused publish stored nothing");
    publish(&s.http, &s.url(""), "other", "1", None).await;
    s.stop().await;
}

/// Consecutive failures open the breaker: no attempt until its cooldown
/// is over (although the backoff says 50 ms), then a probe whose success
/// closes it.
#[tokio::test]
async fn the_circuit_breaker_pauses_a_failing_endpoint() {
    let secrets = [secret("cb")];
    let script = Arc::new(|_: &str, n: usize| Reply::Status(if n <= 2 { 503 } else { 200 }));
    let rx = Receiver::start(&secrets, script).await;
    let extra = "jitter = false\nbreaker_failures = 2\nbreaker_cooldown = \"700ms\"";
    let s = TestServer::start(&endpoint("cb", &rx.url, &secrets, "t", extra)).await;
    publish(&s.http, &s.url(""), "t", "1", None).await;
    let got = rx.wait_for(WAIT, "the probe after the cooldown", |r| r.len() >= 3).await;
    let closed_gap = got[1].at - got[0].at;
    let open_gap = got[2].at - got[1].at;
    assert!(closed_gap < Duration::from_millis(600), "first retry after {closed_gap:?}");
    assert!(open_gap >= Duration::from_millis(700), "probe after {open_gap:?}, before the cooldown");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if m.contains("rtgate_webhook_circuit_state{endpoint=\"cb\"} 0")
            && m.contains("rtgate_webhook_deliveries_total{endpoint=\"cb\",outcome=\"delivered\"} 1")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "breaker not closed again:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling /metrics, bounded
    }
    s.stop().await;
}
