//! Resume (contract §1, §4): `after` on the subscribe op and `cursor` at
//! connect replay every missed message with no gap and no duplicate, while a
//! publisher keeps going; trimmed history is reported with a `gap` frame.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::post_publish as publish;
use support::*;

use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `{"op":"subscribe","after":ID}` on a fresh connection.
    SubscribeAfter,
    /// `GET /v1/ws?topic=T&cursor=C`.
    ConnectCursor,
}

/// Client A reads some messages and leaves; the publisher keeps going; client
/// B resumes from A's position while publishes continue; B must get exactly
/// the ids published after A's last one.
async fn resume_while_publishing(toml: &str, mode: Mode) {
    const TOTAL: usize = 1500;
    const PAUSE_AT: usize = 300; // the publisher waits here until A has left
    const A_READS: usize = 37;
    let s = TestServer::start(toml).await;
    let topic = "resume.t";

    let mut a = match mode {
        Mode::SubscribeAfter => {
            let mut a = s.ws("/v1/ws").await;
            let (before, ack) = a.subscribe(topic, None).await;
            assert!(before.is_empty(), "{before:?}");
            assert_eq!(ack["recovered"], true, "{ack}");
            a
        }
        Mode::ConnectCursor => s.ws(&format!("/v1/ws?topic={topic}")).await,
    };

    let (go_tx, go_rx) = oneshot::channel::<()>();
    let http = s.http.clone();
    let url = s.url(&format!("/v1/publish/{topic}"));
    let publisher = tokio::spawn(async move {
        let mut go = Some(go_rx);
        let mut published = Vec::with_capacity(TOTAL);
        for i in 0..TOTAL {
            if i == PAUSE_AT {
                tokio::time::timeout(WAIT, go.take().expect("once"))
                    .await
                    .expect("go timed out")
                    .expect("go");
            }
            published.push(publish(&http, &url, format!(r#"{{"i":{i}}}"#)).await);
        }
        published
    });

    let got_a = a.messages(A_READS).await;
    let last = got_a.last().expect("a message");
    let last_id = last["id"].as_str().expect("id").to_owned();
    let cursor = last["cursor"].as_str().expect("cursor").to_owned();
    tokio::time::timeout(WAIT, a.ws.close(None)).await.expect("close timed out").expect("close");
    drop(a);
    go_tx.send(()).expect("publisher alive");

    let mut b = match mode {
        Mode::SubscribeAfter => {
            let mut b = s.ws("/v1/ws").await;
            let (before, ack) = b.subscribe(topic, Some(&last_id)).await;
            assert!(before.is_empty(), "nothing precedes the ack without a gap: {before:?}");
            assert_eq!(ack["recovered"], true, "{ack}");
            b
        }
        Mode::ConnectCursor => s.ws(&format!("/v1/ws?topic={topic}&cursor={cursor}")).await,
    };

    let published = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher timed out")
        .expect("publisher");
    assert_eq!(published.len(), TOTAL);
    assert!(published.windows(2).all(|w| pid(&w[0]) < pid(&w[1])), "ids increase");
    assert_eq!(ids(&got_a), published[..A_READS].to_vec(), "A got the first messages in order");
    for (i, m) in got_a.iter().enumerate() {
        assert_eq!(m["data"], json!({"i": i}));
    }

    let expected = &published[A_READS..];
    let got_b = b.messages(expected.len()).await;
    assert_eq!(ids(&got_b), expected.to_vec(), "B resumes exactly after {last_id}");
    for (k, m) in got_b.iter().enumerate() {
        assert_eq!(m["topic"], topic);
        assert_eq!(m["data"], json!({"i": A_READS + k}));
    }
    b.assert_quiet("end").await;

    // B's own cursor resumes at its end: nothing more to replay.
    let c_cursor = got_b.last().expect("last")["cursor"].as_str().expect("cursor").to_owned();
    let mut c = s.ws(&format!("/v1/ws?topic={topic}&cursor={c_cursor}")).await;
    c.assert_quiet("c").await;
    let live = s.publish(topic, r#"{"live":true}"#).await;
    assert_eq!(c.next_op("message").await["id"], live.as_str());
    assert_eq!(b.next_op("message").await["id"], live.as_str());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_after_while_publishing() {
    resume_while_publishing("", Mode::SubscribeAfter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_after_while_publishing_small_pages() {
    resume_while_publishing("[history]\nreplay_page = 7\n", Mode::SubscribeAfter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_cursor_while_publishing() {
    resume_while_publishing("", Mode::ConnectCursor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_cursor_while_publishing_small_pages() {
    resume_while_publishing("[history]\nreplay_page = 7\n", Mode::ConnectCursor).await;
}

#[tokio::test]
async fn multi_topic_cursor_resumes_both_topics() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws").await;
    for t in ["mt.a", "mt.b"] {
        let (before, ack) = c.subscribe(t, None).await;
        assert!(before.is_empty());
        assert_eq!(ack["recovered"], true);
    }
    // Seen: a0 b0 a1 b1 a2.
    let order = ["mt.a", "mt.b", "mt.a", "mt.b", "mt.a"];
    let mut seen = vec![];
    for (i, t) in order.iter().enumerate() {
        seen.push((t.to_string(), s.publish(t, &format!(r#"{{"seen":{i}}}"#)).await));
    }
    let got = c.messages(order.len()).await;
    let got_pairs: Vec<(String, String)> = got
        .iter()
        .map(|m| (m["topic"].as_str().unwrap().to_owned(), m["id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(got_pairs, seen, "one connection, publish order");
    let cursor = got.last().unwrap()["cursor"].as_str().expect("cursor").to_owned();
    assert!(cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)), "{cursor}");
    tokio::time::timeout(WAIT, c.ws.close(None)).await.expect("close timed out").expect("close");
    drop(c);

    // Missed on both topics while away.
    let (mut missed_a, mut missed_b) = (vec![], vec![]);
    for (i, t) in ["mt.b", "mt.a", "mt.a", "mt.b", "mt.b", "mt.a", "mt.b"].iter().enumerate() {
        let id = s.publish(t, &format!(r#"{{"missed":{i}}}"#)).await;
        if *t == "mt.a" {
            missed_a.push(id)
        } else {
            missed_b.push(id)
        }
    }
    // A topic not subscribed must not leak in.
    s.publish("mt.c", "1").await;

    let mut d = s.ws(&format!("/v1/ws?topic=mt.a&topic=mt.b&cursor={cursor}")).await;
    let replayed = d.messages(missed_a.len() + missed_b.len()).await;
    let of = |t: &str| -> Vec<String> {
        replayed.iter().filter(|m| m["topic"] == t).map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(of("mt.a"), missed_a);
    assert_eq!(of("mt.b"), missed_b);
    d.assert_quiet("replayed").await;

    // Then live on both, and the new cursor resumes both with nothing missing.
    let la = s.publish("mt.a", r#""live-a""#).await;
    let lb = s.publish("mt.b", r#""live-b""#).await;
    let live = d.messages(2).await;
    assert_eq!((live[0]["topic"].clone(), live[0]["id"].clone()), (json!("mt.a"), json!(la)));
    assert_eq!((live[1]["topic"].clone(), live[1]["id"].clone()), (json!("mt.b"), json!(lb)));
    let cursor2 = live[1]["cursor"].as_str().unwrap().to_owned();
    drop(d);
    let a2 = s.publish("mt.a", "2").await;
    let mut e = s.ws(&format!("/v1/ws?topic=mt.a&topic=mt.b&cursor={cursor2}")).await;
    let m = e.next_op("message").await;
    assert_eq!((m["topic"].clone(), m["id"].clone()), (json!("mt.a"), json!(a2)));
    e.assert_quiet("e").await;
    s.stop().await;
}

const TRIM5: &str = "[history]\nmax_len = 5\n";

async fn publish_n(s: &TestServer, topic: &str, n: usize) -> Vec<String> {
    let mut out = vec![];
    for i in 0..n {
        out.push(s.publish(topic, &format!(r#"{{"n":{i}}}"#)).await);
    }
    out
}

#[tokio::test]
async fn gap_after_trim_subscribe_after() {
    let s = TestServer::start(TRIM5).await;
    let published = publish_n(&s, "gap", 20).await;
    let mut c = s.ws("/v1/ws").await;
    let (before, ack) = c.subscribe("gap", Some(&published[0])).await;
    assert_eq!(
        before,
        vec![json!({"op": "gap", "topic": "gap", "after": published[0], "oldest": published[15]})],
        "exactly one gap frame before the ack"
    );
    assert_eq!(ack["recovered"], false, "{ack}");
    let got = c.messages(5).await;
    assert_eq!(ids(&got), published[15..].to_vec());
    c.assert_quiet("q").await;
    let live = s.publish("gap", "21").await;
    assert_eq!(c.next_op("message").await["id"], live.as_str());
    c.assert_quiet("q2").await;
    s.stop().await;
}

#[tokio::test]
async fn no_gap_when_resuming_just_before_oldest_retained() {
    let s = TestServer::start(TRIM5).await;
    let published = publish_n(&s, "edge", 20).await;
    let mut c = s.ws("/v1/ws").await;
    let (before, ack) = c.subscribe("edge", Some(&published[14])).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ids(&c.messages(5).await), published[15..].to_vec());
    c.assert_quiet("q").await;
    // One older than that: a gap naming it.
    let mut d = s.ws("/v1/ws").await;
    let (before, ack) = d.subscribe("edge", Some(&published[13])).await;
    assert_eq!(
        before,
        vec![json!({"op": "gap", "topic": "edge", "after": published[13], "oldest": published[15]})]
    );
    assert_eq!(ack["recovered"], false);
    assert_eq!(ids(&d.messages(5).await), published[15..].to_vec());
    d.assert_quiet("q").await;
    s.stop().await;
}

#[tokio::test]
async fn gap_after_trim_connect_cursor() {
    let s = TestServer::start(TRIM5).await;
    // A live subscriber hands out a cursor naming the first message.
    let mut w = s.ws("/v1/ws?topic=gapc").await;
    let published = publish_n(&s, "gapc", 20).await;
    let seen = w.messages(20).await;
    assert_eq!(ids(&seen), published);
    let cursor0 = seen[0]["cursor"].as_str().expect("cursor").to_owned();
    drop(w);

    let mut c = s.ws(&format!("/v1/ws?topic=gapc&cursor={cursor0}")).await;
    let gap = c.next().await;
    assert_eq!(gap, json!({"op": "gap", "topic": "gapc", "after": published[0], "oldest": published[15]}));
    let got = c.messages(5).await;
    assert_eq!(ids(&got), published[15..].to_vec());
    c.assert_quiet("q").await;
    let live = s.publish("gapc", "21").await;
    assert_eq!(c.next_op("message").await["id"], live.as_str());
    c.assert_quiet("q2").await;
    s.stop().await;
}

#[tokio::test]
async fn resume_from_newest_replays_nothing_then_live() {
    let s = TestServer::start("").await;
    let mut w = s.ws("/v1/ws?topic=new").await;
    let published = publish_n(&s, "new", 5).await;
    let seen = w.messages(5).await;
    assert_eq!(ids(&seen), published);
    let cursor = seen[4]["cursor"].as_str().unwrap().to_owned();

    let mut c = s.ws("/v1/ws").await;
    let (before, ack) = c.subscribe("new", Some(&published[4])).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack["recovered"], true, "{ack}");
    c.assert_quiet("nothing-replayed").await;

    let mut d = s.ws(&format!("/v1/ws?topic=new&cursor={cursor}")).await;
    d.assert_quiet("nothing-replayed").await;

    let live = publish_n(&s, "new", 3).await;
    assert_eq!(ids(&c.messages(3).await), live);
    assert_eq!(ids(&d.messages(3).await), live);
    assert_eq!(ids(&w.messages(3).await), live);
    c.assert_quiet("c").await;
    d.assert_quiet("d").await;

    // A topic with no history here, resumed from an id it never had (a
    // cursor from a history that is gone, e.g. before a restart of the
    // embedded engine): the server cannot vouch for what came after it, so
    // it reports a gap, then goes live.
    let mut e = s.ws("/v1/ws").await;
    let (before, ack) = e.subscribe("empty", Some("1-0")).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["op"], "gap");
    assert_eq!(before[0]["after"], "1-0");
    assert_eq!(ack["recovered"], false, "{ack}");
    e.assert_quiet("nothing").await;
    let live = publish_n(&s, "empty", 2).await;
    assert_eq!(ids(&e.messages(2).await), live);
    e.assert_quiet("e").await;
    s.stop().await;
}

/// Resuming while the history is being trimmed under the replay: every id
/// published after the resume point is either delivered (once, in order) or
/// inside a reported gap. Silence about a lost message is a bug.
async fn resume_under_trimming(mode: Mode) {
    const TOTAL: usize = 3000;
    const START_AT: usize = 100;
    let s = TestServer::start("[history]\nmax_len = 20\nreplay_page = 3\n").await;
    let topic = "trim";
    let mut watcher = s.ws(&format!("/v1/ws?topic={topic}")).await;

    let (started_tx, started_rx) = oneshot::channel::<()>();
    let http = s.http.clone();
    let url = s.url(&format!("/v1/publish/{topic}"));
    let publisher = tokio::spawn(async move {
        let mut started = Some(started_tx);
        let mut published = Vec::with_capacity(TOTAL);
        for i in 0..TOTAL {
            published.push(publish(&http, &url, format!(r#"{{"i":{i}}}"#)).await);
            if i == START_AT {
                let _ = started.take().expect("once").send(());
            }
        }
        published
    });
    let first = watcher.next_op("message").await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    let cursor0 = first["cursor"].as_str().unwrap().to_owned();
    drop(watcher);
    tokio::time::timeout(WAIT, started_rx).await.expect("publisher start timed out").expect("started");

    let mut frames = vec![];
    let mut c = match mode {
        Mode::SubscribeAfter => {
            let mut c = s.ws("/v1/ws").await;
            let (before, ack) = c.subscribe(topic, Some(&first_id)).await;
            let gap_before_ack = before.iter().any(|f| f["op"] == "gap");
            assert!(before.iter().all(|f| f["op"] == "gap"), "only gaps precede the ack: {before:?}");
            assert_eq!(ack["recovered"], !gap_before_ack, "{ack} after {before:?}");
            frames.extend(before);
            c
        }
        Mode::ConnectCursor => s.ws(&format!("/v1/ws?topic={topic}&cursor={cursor0}")).await,
    };
    let published = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher timed out")
        .expect("publisher");
    let last = published.last().unwrap().clone();
    loop {
        let f = c.next().await;
        let done = f["op"] == "message" && f["id"] == last.as_str();
        frames.push(f);
        if done {
            break;
        }
    }
    c.assert_quiet("end").await;

    // Walk the frames: messages ascend; gaps move forward; every published id
    // after the resume point is delivered exactly once or lies inside a gap.
    let mut pos = pid(&first_id);
    let mut delivered = std::collections::HashSet::new();
    let mut gaps: Vec<((u64, u64), (u64, u64))> = vec![];
    for f in &frames {
        match f["op"].as_str() {
            Some("message") => {
                let id = pid(f["id"].as_str().unwrap());
                assert!(id > pos, "message {} not after position {pos:?}", f["id"]);
                pos = id;
                delivered.insert(f["id"].as_str().unwrap().to_owned());
            }
            Some("gap") => {
                assert_eq!(f["topic"], topic);
                let (after, oldest) = (pid(f["after"].as_str().unwrap()), pid(f["oldest"].as_str().unwrap()));
                assert!(after < oldest, "{f}");
                assert!(oldest > pos, "gap {f} does not move past position {pos:?}");
                gaps.push((after, oldest));
            }
            _ => panic!("unexpected frame {f}"),
        }
    }
    for id in &published[1..] {
        let p = pid(id);
        let in_gap = gaps.iter().any(|&(a, o)| a < p && p < o);
        assert!(
            delivered.contains(id) ^ in_gap,
            "id {id}: delivered={} in_gap={in_gap}",
            delivered.contains(id)
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_after_under_trimming_reports_every_loss() {
    resume_under_trimming(Mode::SubscribeAfter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_cursor_under_trimming_reports_every_loss() {
    resume_under_trimming(Mode::ConnectCursor).await;
}
