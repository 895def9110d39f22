//! Subscribe: one and several topics, resume by cursor while publishing,
//! gaps after trimming (on both engines), and the error codes.

use std::time::Duration;

use rtgate::proto::Gap;
use tokio::sync::oneshot;
use tonic::Code;

use crate::helpers::*;
use crate::support::*;

#[tokio::test]
async fn subscribe_single_and_multi_topic() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let (a, b) = ("grpc.sub.a", "grpc.sub.b");

    // Single topic.
    let mut one = subscribe(&mut c, &[a], "").await;
    let mut published = vec![];
    for i in 0..5 {
        published.push(publish(&mut c, a, &format!(r#"{{"i": {i}}}"#)).await);
    }
    let got = msgs(&mut one, 5).await;
    assert_eq!(ids(&got), published.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
    for (i, (m, r)) in got.iter().zip(&published).enumerate() {
        assert_eq!(m.topic, a);
        assert_eq!(m.data, format!(r#"{{"i": {i}}}"#).as_bytes());
        assert_eq!(m.ts, r.ts);
        assert!(m.gap.is_none());
    }
    assert!(strictly_increasing(&ids(&got)));

    // Two topics on one stream (and a topic named twice counts once).
    let mut two = subscribe(&mut c, &[a, b, a], "").await;
    let mut want_a = vec![];
    let mut want_b = vec![];
    for i in 0..10 {
        let t = if i % 3 == 0 { b } else { a };
        let id = publish(&mut c, t, &format!(r#"{{"i":{i}}}"#)).await.id;
        if t == a {
            want_a.push(id)
        } else {
            want_b.push(id)
        }
    }
    let got2 = msgs(&mut two, 10).await;
    assert_eq!(by_topic(&got2), want(&[(a, want_a.clone()), (b, want_b.clone())]));
    for ids in by_topic(&got2).values() {
        assert!(strictly_increasing(ids), "{ids:?}");
    }
    // The single-topic stream got only its topic.
    assert_eq!(ids(&msgs(&mut one, want_a.len()).await), want_a);

    // The last cursor of the two-topic stream resumes both topics.
    let cursor = got2.last().unwrap().cursor.clone();
    drop(two);
    let ra = publish(&mut c, a, "1").await.id;
    let rb = publish(&mut c, b, "2").await.id;
    let mut back = subscribe(&mut c, &[a, b], &cursor).await;
    let got3 = msgs(&mut back, 2).await;
    assert_eq!(by_topic(&got3), want(&[(a, vec![ra.clone()]), (b, vec![rb])]));
    assert_eq!(next_msg(&mut one).await.id, ra, "the single-topic stream goes on");

    assert_quiet(&mut c, &[a], &mut [&mut one, &mut back]).await;
    assert_quiet(&mut c, &[a, b], &mut [&mut back]).await;

    // A cursor naming only `a` (the single-topic stream's after its first
    // five messages): `a` resumes after that position, `b` starts from now.
    let one_cursor = got.last().unwrap().cursor.clone();
    let rb2 = publish(&mut c, b, r#"{"before":"subscribe"}"#).await.id;
    let mut partial = subscribe(&mut c, &[a, b], &one_cursor).await;
    let rb3 = publish(&mut c, b, r#"{"after":"subscribe"}"#).await.id;
    let resumed_a = ids(&history(&mut c, a, &got.last().unwrap().id, 0).await.messages);
    assert_eq!(resumed_a.len(), want_a.len() + 3, "want_a, ra and two markers");
    let got4 = msgs(&mut partial, resumed_a.len() + 1).await;
    assert_eq!(by_topic(&got4), want(&[(a, resumed_a), (b, vec![rb3])]), "{rb2} is before the subscription");
    assert_quiet(&mut c, &[a, b], &mut [&mut partial]).await;
    s.stop().await;
}

/// Subscriber A reads part of two topics while a publisher alternates
/// between them, drops; B resumes from A's last cursor while the publisher
/// keeps going and must get exactly the rest of each topic, in order.
async fn resume_while_publishing(engine: Engine<'_>) {
    const A_READS: usize = 37;
    let total = engine.pick(600, 300);
    let pause_at = total / 3;
    assert!(pause_at > A_READS);
    let s = TestServer::start(&engine.config("[history]\nreplay_page = 7\n")).await;
    let (ta, tb) = ("grpc.res.a", "grpc.res.b");
    let mut c = client(&s).await;
    let mut a = subscribe(&mut c, &[ta, tb], "").await;

    let (go_tx, go_rx) = oneshot::channel::<()>();
    let mut pc = client(&s).await;
    let publisher = tokio::spawn(async move {
        let mut go = Some(go_rx);
        let mut published = Vec::with_capacity(total);
        for i in 0..total {
            if i == pause_at {
                within(go.take().unwrap()).await.expect("go");
            }
            let t = if i % 2 == 0 { ta } else { tb };
            let id = publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id;
            published.push((t.to_owned(), id));
        }
        published
    });

    let got_a = msgs(&mut a, A_READS).await;
    let last = got_a.last().unwrap().cursor.clone();
    drop(a);
    go_tx.send(()).expect("publisher alive");
    let mut b = subscribe(&mut c, &[ta, tb], &last).await;

    let published = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher timed out")
        .expect("publisher");
    let index = publish_index(&published);
    let expected = rest_after(&published, &by_topic(&got_a));
    let n: usize = expected.values().map(Vec::len).sum();
    assert_eq!(n, total - A_READS);

    let got_b = msgs(&mut b, n).await;
    assert_eq!(by_topic(&got_b), expected, "B resumes exactly after {last}");
    for m in &got_b {
        let i = index[&(m.topic.as_str(), m.id.as_str())];
        assert_eq!(m.data, format!(r#"{{"i":{i}}}"#).as_bytes());
        assert!(m.gap.is_none());
    }
    assert_quiet(&mut c, &[ta, tb], &mut [&mut b]).await;
    s.stop().await;
}

crate::engine_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    resume_by_cursor_while_publishing, redis_resume_by_cursor_while_publishing => resume_while_publishing
}

/// History trimmed past the resume point: the first message of the topic
/// carries `gap {topic, after, oldest}`, then the retained messages follow;
/// resuming from that message's cursor reports no gap again.
async fn subscribe_gap(engine: Engine<'_>) {
    let s = TestServer::start(&engine.config("[history]\nmax_len = 5\n")).await;
    let (t, other) = ("grpc.gap", "grpc.gap.other");
    let mut c = client(&s).await;
    let mut a = subscribe(&mut c, &[t, other], "").await;
    let mut ids = vec![publish(&mut c, t, r#"{"n":0}"#).await.id];
    let m0 = next_msg(&mut a).await;
    assert_eq!(m0.id, ids[0]);
    assert!(m0.gap.is_none());
    drop(a);
    for n in 1..=10 {
        ids.push(publish(&mut c, t, &format!(r#"{{"n":{n}}}"#)).await.id);
    }
    let other_id = publish(&mut c, other, r#"{"o":1}"#).await.id;

    let mut b = subscribe(&mut c, &[t, other], &m0.cursor).await;
    let got = msgs(&mut b, 6).await;
    assert_eq!(by_topic(&got), want(&[(t, ids[6..].to_vec()), (other, vec![other_id.clone()])]));
    let first = got.iter().find(|m| m.topic == t).unwrap();
    assert_eq!(first.id, ids[6]);
    assert_eq!(
        first.gap,
        Some(Gap {
            topic: t.to_owned(),
            after: ids[0].clone(),
            oldest: ids[6].clone(),
            ..Default::default()
        }),
        "the first message after the trim reports the gap"
    );
    for m in got.iter().filter(|m| m.id != first.id || m.topic != t) {
        assert!(m.gap.is_none(), "only one gap notice: {m:?}");
    }
    for m in got.iter().filter(|m| m.topic == t) {
        let n = ids.iter().position(|i| *i == m.id).unwrap();
        assert_eq!(m.data, format!(r#"{{"n":{n}}}"#).as_bytes());
    }
    // History says the same.
    let h = history(&mut c, t, &ids[0], 0).await;
    assert!(h.truncated);
    assert_eq!(self::ids(&h.messages), ids[6..]);

    // Resuming from the gap message's cursor: no second gap.
    let mut d = subscribe(&mut c, &[t, other], &first.cursor).await;
    let again = msgs(&mut d, 5).await;
    assert_eq!(by_topic(&again), want(&[(t, ids[7..].to_vec()), (other, vec![other_id])]));
    assert!(again.iter().all(|m| m.gap.is_none()), "{again:?}");
    assert_quiet(&mut c, &[t, other], &mut [&mut b, &mut d]).await;
    s.stop().await;
}

crate::engine_tests! {
    #[tokio::test]
    subscribe_reports_gap_on_the_next_message, redis_subscribe_reports_gap_on_the_next_message => subscribe_gap
}

#[tokio::test]
async fn subscribe_errors() {
    let s = TestServer::start("[limits]\nmax_topics_per_connection = 3\n").await;
    let mut c = client(&s).await;
    let t = "grpc.suberr";
    let long_topic = "x".repeat(129);
    for bad in [&["ok", "bad topic"][..], &[""][..], &["a/b"][..], &[long_topic.as_str()][..]] {
        assert_status(&subscribe_err(&mut c, bad, "").await, Code::InvalidArgument, "bad_topic");
    }
    assert_status(&subscribe_err(&mut c, &[], "").await, Code::InvalidArgument, "bad_request");
    let long = "A".repeat(4097);
    for bad in ["!!!", "AAAA", "not a cursor", "%41", long.as_str()] {
        assert_status(&subscribe_err(&mut c, &[t], bad).await, Code::InvalidArgument, "bad_request");
    }
    assert_status(
        &subscribe_err(&mut c, &["t1", "t2", "t3", "t4"], "").await,
        Code::InvalidArgument,
        "bad_request",
    );
    // A cursor from another subscription still parses; the same channel works.
    let mut ok = subscribe(&mut c, &["t1", "t2", "t3"], "").await;
    let id = publish(&mut c, "t2", "1").await.id;
    assert_eq!(next_msg(&mut ok).await.id, id);
    s.stop().await;
}
