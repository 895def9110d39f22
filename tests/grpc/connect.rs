//! Connect: the WebSocket protocol as protobuf frames (subscribe, publish,
//! ping, refresh, unsubscribe), replay then live, gaps before the ack, and
//! errors that keep the stream open or end it.

use rtgate::proto::client_frame::Op;
use rtgate::proto::server_frame::Frame;
use rtgate::proto::{Ack, Error as ErrorFrame, Gap, PublishOp, RefreshOp, SubscribeOp, UnsubscribeOp};
use tonic::Code;

use crate::helpers::*;
use crate::support::*;

fn bad_topic_error(e: &ErrorFrame) {
    assert_eq!((e.code.as_str(), e.status), ("bad_topic", Code::InvalidArgument as i32), "{e:?}");
}

fn bad_request_error(e: &ErrorFrame) {
    assert_eq!((e.code.as_str(), e.status), ("bad_request", Code::InvalidArgument as i32), "{e:?}");
}
#[tokio::test]
async fn connect_round_trip() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let (t, u) = ("grpc.conn.a", "grpc.conn.b");
    let mut conn = Conn::open(&mut c).await;

    let (before, ack) = conn.subscribe(t, None, "s1").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(
        ack,
        Ack { r#ref: "s1".into(), recovered: true, id: String::new(), ts: 0, ..Default::default() }
    );

    // Publish on the stream: ack with the id, and the message comes back.
    let data = r#"{"b": [1, 2],"a":"é \u00e9"}"#;
    let op = PublishOp {
        topic: t.into(),
        data: data.as_bytes().to_vec(),
        idempotency_key: String::new(),
        ..Default::default()
    };
    conn.send("p1", Some(Op::Publish(op))).await;
    let (mut frames, ack) = conn.until_ref("p1").await;
    let Frame::Ack(ack) = ack else { panic!("expected the publish ack, got {ack:?}") };
    assert_eq!(ack.r#ref, "p1");
    assert!(!ack.recovered);
    pid(&ack.id);
    assert!(ack.ts > 0, "{ack:?}");
    let m = match frames.pop() {
        Some(Frame::Message(m)) => m,
        None => conn.message().await,
        Some(f) => panic!("unexpected frame {f:?}"),
    };
    assert!(frames.is_empty(), "{frames:?}");
    check_msg(&m);
    assert_eq!((m.topic.as_str(), m.id.as_str(), m.ts), (t, ack.id.as_str(), ack.ts));
    assert_eq!(m.data, data.as_bytes());
    assert!(m.gap.is_none());

    // A message published elsewhere arrives too, after it.
    let r2 = publish(&mut c, t, "2").await;
    let m2 = conn.message().await;
    assert_eq!((m2.id.as_str(), &m2.data[..]), (r2.id.as_str(), &b"2"[..]));
    assert!(pid(&m2.id) > pid(&m.id));
    assert_eq!(ids(&history(&mut c, t, "", 0).await.messages), [ack.id.clone(), r2.id.clone()]);

    // Idempotent publish on the stream.
    for r in ["k1", "k2"] {
        let op = PublishOp {
            topic: u.into(),
            data: b"7".to_vec(),
            idempotency_key: "idem-1".into(),
            ..Default::default()
        };
        conn.send(r, Some(Op::Publish(op))).await;
    }
    let (f1, a1) = conn.until_ref("k1").await;
    let (f2, a2) = conn.until_ref("k2").await;
    assert!(f1.is_empty() && f2.is_empty(), "not subscribed to {u}: {f1:?} {f2:?}");
    let (Frame::Ack(a1), Frame::Ack(a2)) = (a1, a2) else { panic!("acks expected") };
    assert_eq!(a1.id, a2.id);
    assert_eq!(history(&mut c, u, "", 0).await.messages.len(), 1);

    // Ping, with and without a ref; refresh is acknowledged.
    conn.ping_quiet("pp").await;
    conn.ping_quiet("").await;
    conn.send("rf", Some(Op::Refresh(RefreshOp { token: "t".into() }))).await;
    assert_eq!(conn.next().await, Frame::Ack(Ack { r#ref: "rf".into(), ..Default::default() }));

    // Unsubscribe stops delivery: a message on `t` after it does not come;
    // the marker on `u` is the very next frame.
    let (before, ack) = conn.subscribe(u, None, "s2").await;
    assert!(before.is_empty() && ack.recovered, "{before:?} {ack:?}");
    conn.send("u1", Some(Op::Unsubscribe(UnsubscribeOp { topic: t.into() }))).await;
    assert_eq!(conn.next().await, Frame::Ack(Ack { r#ref: "u1".into(), ..Default::default() }));
    let missed = publish(&mut c, t, r#"{"after":"unsubscribe"}"#).await.id;
    let marker = publish(&mut c, u, r#"{"marker":1}"#).await.id;
    let next = conn.message().await;
    assert_eq!((next.topic.as_str(), next.id.as_str()), (u, marker.as_str()), "{next:?}");

    // Subscribing again after the last id seen gets the missed message.
    let (before, ack) = conn.subscribe(t, Some(&r2.id), "s3").await;
    assert!(before.is_empty() && ack.recovered, "{before:?} {ack:?}");
    let back = conn.message().await;
    assert_eq!((back.topic.as_str(), back.id.as_str()), (t, missed.as_str()));
    conn.ping_quiet("end").await;

    // Closing the request stream ends the call with OK.
    drop(conn.tx);
    assert!(matches!(within(conn.rx.message()).await, Ok(None)), "Connect should end cleanly");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_subscribe_after_replays_then_live_without_duplicates() {
    const BEFORE: usize = 50;
    const DURING: usize = 100;
    const AFTER_INDEX: usize = 9;
    let s = TestServer::start("[history]\nreplay_page = 7\n").await;
    let mut c = client(&s).await;
    let t = "grpc.conn.replay";
    let mut published = vec![];
    for i in 0..BEFORE {
        published.push(publish(&mut c, t, &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    // A publisher runs while the subscription replays and goes live.
    let mut pc = client(&s).await;
    let publisher = tokio::spawn(async move {
        let mut out = vec![];
        for i in BEFORE..BEFORE + DURING {
            out.push(publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id);
        }
        out
    });
    let mut conn = Conn::open(&mut c).await;
    let (before, ack) = conn.subscribe(t, Some(&published[AFTER_INDEX]), "s").await;
    assert!(before.is_empty(), "{before:?}");
    assert!(ack.recovered, "{ack:?}");
    published.extend(within(publisher).await.expect("publisher"));

    let got = conn.messages(published.len() - AFTER_INDEX - 1).await;
    assert_eq!(ids(&got), published[AFTER_INDEX + 1..], "replay then live, in order, once");
    for (m, i) in got.iter().zip(AFTER_INDEX + 1..) {
        assert_eq!(m.data, format!(r#"{{"i":{i}}}"#).as_bytes());
    }
    conn.ping_quiet("q").await;

    // `after` = the newest id: nothing to replay.
    let other = "grpc.conn.replay.2";
    let last = publish(&mut c, other, "1").await.id;
    let (before, ack) = conn.subscribe(other, Some(&last), "s2").await;
    assert!(before.is_empty() && ack.recovered, "{before:?} {ack:?}");
    conn.ping_quiet("q2").await;
    let live = publish(&mut c, other, "2").await.id;
    assert_eq!(conn.message().await.id, live);
    s.stop().await;
}

/// A Connect message's cursor covers every topic of the stream and resumes
/// a Subscribe call.
#[tokio::test]
async fn connect_cursor_resumes_subscribe() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let (a, b) = ("grpc.conn.cur.a", "grpc.conn.cur.b");
    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(a, None, "sa").await;
    conn.subscribe(b, None, "sb").await;
    let b1 = publish(&mut c, b, "1").await.id;
    let a1 = publish(&mut c, a, "2").await.id;
    let got = conn.messages(2).await;
    assert_eq!(by_topic(&got), want(&[(a, vec![a1]), (b, vec![b1])]));
    let cursor = got[1].cursor.clone();
    drop(conn);
    let a2 = publish(&mut c, a, "3").await.id;
    let b2 = publish(&mut c, b, "4").await.id;
    let mut st = subscribe(&mut c, &[a, b], &cursor).await;
    let got = msgs(&mut st, 2).await;
    assert_eq!(by_topic(&got), want(&[(a, vec![a2]), (b, vec![b2])]));
    assert_quiet(&mut c, &[a, b], &mut [&mut st]).await;
    s.stop().await;
}

#[tokio::test]
async fn connect_errors_keep_the_stream_open() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let t = "grpc.conn.err";
    let mut conn = Conn::open(&mut c).await;

    let sub = |topic: &str, after: Option<&str>| {
        Some(Op::Subscribe(SubscribeOp {
            topic: topic.into(),
            after: after.map(str::to_owned),
            ..Default::default()
        }))
    };
    let publ = |topic: &str, data: &[u8], key: &str| {
        Some(Op::Publish(PublishOp {
            topic: topic.into(),
            data: data.to_vec(),
            idempotency_key: key.into(),
            ..Default::default()
        }))
    };
    bad_topic_error(&conn.error("e1", sub("bad topic", None)).await);
    bad_topic_error(&conn.error("e2", sub("", None)).await);
    bad_request_error(&conn.error("e3", sub(t, Some("nope"))).await);
    bad_request_error(&conn.error("e4", sub(t, Some("1-2-3"))).await);
    bad_topic_error(&conn.error("e5", publ("", b"1", "")).await);
    bad_request_error(&conn.error("e6", publ(t, b"{", "")).await);
    bad_request_error(&conn.error("e7", publ(t, b"1", "a b")).await);
    bad_request_error(&conn.error("e8", None).await);
    bad_topic_error(&conn.error("e9", Some(Op::Unsubscribe(UnsubscribeOp { topic: "a/b".into() }))).await);
    conn.ping_quiet("alive").await;

    // Still fully working: subscribe, a second subscribe is refused and
    // does not double delivery.
    let (before, ack) = conn.subscribe(t, None, "s1").await;
    assert!(before.is_empty() && ack.recovered);
    bad_request_error(&conn.error("e10", sub(t, None)).await);
    let id = publish(&mut c, t, r#"{"ok":true}"#).await.id;
    let m = conn.message().await;
    assert_eq!((m.id.as_str(), &m.data[..]), (id.as_str(), &br#"{"ok":true}"#[..]));
    conn.ping_quiet("once").await;

    // Unsubscribing from a topic that was never subscribed: answered (the
    // proto's comment calls it an error, WebSocket acks it; see the report)
    // and the stream goes on.
    conn.send("u", Some(Op::Unsubscribe(UnsubscribeOp { topic: "never.subscribed".into() }))).await;
    match conn.next().await {
        Frame::Ack(a) => assert_eq!(a.r#ref, "u"),
        Frame::Error(e) => assert_eq!(e.r#ref, "u"),
        f => panic!("unexpected {f:?}"),
    }
    conn.ping_quiet("still").await;
    s.stop().await;
}

#[tokio::test]
async fn connect_oversized_publish_ends_the_stream_resource_exhausted() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1024\n").await;
    let mut c = client(&s).await;
    let t = "grpc.conn.big";
    let publ = |data: String| {
        Some(Op::Publish(PublishOp {
            topic: t.into(),
            data: data.into_bytes(),
            idempotency_key: String::new(),
            ..Default::default()
        }))
    };

    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(t, None, "s").await;
    let at_limit = format!("\"{}\"", "x".repeat(1022));
    conn.send("ok", publ(at_limit.clone())).await;
    let (_, ack) = conn.until_ref("ok").await;
    let Frame::Ack(ack) = ack else { panic!("{ack:?}") };
    let over = format!("\"{}\"", "x".repeat(1023));
    assert_eq!(over.len(), 1025);
    conn.send("big", publ(over)).await;
    let (frames, st) = conn.end().await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().starts_with("too_large"), "{st:?}");
    // At most the accepted message's frame came first; no answer to "big".
    assert!(frames.len() <= 1, "{frames:?}");
    for f in &frames {
        assert!(matches!(f, Frame::Message(m) if m.id == ack.id), "{f:?}");
    }

    // A frame over the decoder's limit ends the stream the same way.
    let mut conn2 = Conn::open(&mut c).await;
    conn2.ping_quiet("p").await;
    conn2.send("huge", publ(format!("\"{}\"", "x".repeat(8 * 1024)))).await;
    let (frames, st) = conn2.end().await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");

    // Only the accepted message was stored; the channel still works.
    let h = history(&mut c, t, "", 0).await;
    assert_eq!(ids(&h.messages), [ack.id]);
    assert_eq!(h.messages[0].data, at_limit.as_bytes());
    publish(&mut c, t, "1").await;
    s.stop().await;
}

#[tokio::test]
async fn connect_reports_gap_before_the_ack() {
    let s = TestServer::start("[history]\nmax_len = 5\n").await;
    let mut c = client(&s).await;
    // Resuming after ids[0] and after ids[4]: both were trimmed (ids[6..] are
    // retained), so a gap frame, then the ack with recovered = false.
    for (after, t) in [(0usize, "grpc.conn.gap0"), (4, "grpc.conn.gap4")] {
        let mut ids_ = vec![];
        for n in 0..=10 {
            ids_.push(publish(&mut c, t, &format!(r#"{{"n":{n}}}"#)).await.id);
        }
        let mut conn = Conn::open(&mut c).await;
        let (before, ack) = conn.subscribe(t, Some(&ids_[after]), "g").await;
        assert_eq!(
            before,
            [Frame::Gap(Gap {
                topic: t.into(),
                after: ids_[after].clone(),
                oldest: ids_[6].clone(),
                ..Default::default()
            })],
            "a gap frame before the ack"
        );
        assert_eq!(ack, Ack { r#ref: "g".into(), recovered: false, ..Default::default() });
        let got = conn.messages(5).await;
        assert_eq!(ids(&got), ids_[6..]);
        assert!(got.iter().all(|m| m.gap.is_none()), "Connect reports gaps as frames only");
        for (m, n) in got.iter().zip(6..) {
            assert_eq!(m.data, format!(r#"{{"n":{n}}}"#).as_bytes());
        }
        conn.ping_quiet("q").await;
        let live = publish(&mut c, t, r#"{"live":1}"#).await.id;
        assert_eq!(conn.message().await.id, live);

        // From a retained id: no gap, recovered.
        let mut conn = Conn::open(&mut c).await;
        let (before, ack) = conn.subscribe(t, Some(&ids_[7]), "r").await;
        assert!(before.is_empty(), "{before:?}");
        assert!(ack.recovered, "{ack:?}");
        let mut rest = ids_[8..].to_vec();
        rest.push(live);
        assert_eq!(ids(&conn.messages(4).await), rest);
        conn.ping_quiet("q").await;
    }
    s.stop().await;
}
