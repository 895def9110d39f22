//! Publish and History: ids, data byte for byte, paging, idempotency, and
//! the error codes.

use rtgate::proto::client_frame::Op;
use rtgate::proto::{HistoryRequest, PublishOp};
use tonic::Code;

use crate::helpers::*;
use crate::support::*;

#[tokio::test]
async fn publish_then_history_ids_data_paging_and_idempotency() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let t = "grpc.hist";
    let datas = [
        r#"{"z":1,  "a" : [ true, null, "h\u00e9 \"x\"" ], "n": 1.50}"#,
        "2",
        "null",
        r#""str""#,
        "[ {\"b\":2,\n\"a\":1} ]",
        r#"{"i":5}"#,
    ];
    let mut replies = vec![];
    for d in datas {
        replies.push(publish(&mut c, t, d).await);
    }
    let published: Vec<String> = replies.iter().map(|r| r.id.clone()).collect();
    assert!(strictly_increasing(&published), "{published:?}");

    // Everything, in order, byte for byte.
    let h = history(&mut c, t, "", 0).await;
    assert!(!h.truncated);
    assert_eq!(ids(&h.messages), published);
    for ((m, r), d) in h.messages.iter().zip(&replies).zip(datas) {
        assert_eq!(m.topic, t);
        assert_eq!(m.data, d.as_bytes(), "data of {}: {:?}", m.id, String::from_utf8_lossy(&m.data));
        assert_eq!(m.ts, r.ts, "{m:?}");
        assert!(m.cursor.is_empty(), "History messages carry no cursor: {m:?}");
        assert!(m.gap.is_none());
    }

    // Paging.
    assert_eq!(ids(&history(&mut c, t, &published[1], 0).await.messages), published[2..]);
    assert_eq!(ids(&history(&mut c, t, "", 2).await.messages), published[4..], "newest 2");
    assert_eq!(ids(&history(&mut c, t, &published[0], 2).await.messages), published[1..3]);
    let last = history(&mut c, t, &published[5], 0).await;
    assert!(last.messages.is_empty() && !last.truncated, "{last:?}");
    let mut paged = vec![];
    let mut after = "0-0".to_owned();
    loop {
        let page = history(&mut c, t, &after, 4).await;
        assert!(!page.truncated, "nothing was trimmed");
        let Some(m) = page.messages.last() else { break };
        after = m.id.clone();
        paged.extend(ids(&page.messages));
    }
    assert_eq!(paged, published);
    assert!(history(&mut c, "grpc.hist.empty", "", 0).await.messages.is_empty());

    // HTTP sees the same ids.
    let (status, v) = s.get(&format!("/v1/history/{t}")).await;
    assert_eq!(status, 200, "{v}");
    let http_ids: Vec<&str> =
        v["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(http_ids, published);

    // Idempotency: a repeat answers the first id and publishes nothing.
    let k = "order-42:a/b~{x}";
    let t2 = "grpc.idem";
    let first = publish_key(&mut c, t2, r#"{"n":1}"#, k).await;
    let again = publish_key(&mut c, t2, r#"{"n":1}"#, k).await;
    let other_data = publish_key(&mut c, t2, r#"{"n":2}"#, k).await;
    assert_eq!(again.id, first.id);
    assert_eq!(other_data.id, first.id);
    let h = history(&mut c, t2, "", 0).await;
    assert_eq!(ids(&h.messages), std::slice::from_ref(&first.id));
    assert_eq!(h.messages[0].data, br#"{"n":1}"#);
    let second = publish_key(&mut c, t2, r#"{"n":3}"#, "another-key").await;
    assert!(pid(&second.id) > pid(&first.id));

    // Invalid keys: INVALID_ARGUMENT, nothing published.
    for bad in ["a b".to_owned(), "clé".to_owned(), "x".repeat(257), "tab\t".to_owned()] {
        let st = publish_err(&mut c, publish_req(t2, b"1", &bad)).await;
        assert_status(&st, Code::InvalidArgument, "bad_request");
    }
    publish_key(&mut c, t2, "1", &"k".repeat(256)).await;
    assert_eq!(history(&mut c, t2, "", 0).await.messages.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn publish_and_history_errors() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1024\n").await;
    let mut c = client(&s).await;
    let t = "grpc.err";
    let long = "t".repeat(129);
    for bad in ["a b", "", "slash/no", "é", long.as_str()] {
        let st = publish_err(&mut c, publish_req(bad, b"1", "")).await;
        assert_status(&st, Code::InvalidArgument, "bad_topic");
        let st = within(c.history(HistoryRequest { topic: bad.to_owned(), ..Default::default() }))
            .await
            .expect_err("history of a bad topic");
        assert_status(&st, Code::InvalidArgument, "bad_topic");
    }
    publish(&mut c, &"t".repeat(128), "1").await;
    publish(&mut c, "A-z_0.9:@-", "1").await;

    for bad in [&b"{"[..], &b""[..], &b"   "[..], &b"{\"a\":1} {\"b\":2}"[..], &b"nul"[..], &b"\xff\xfe"[..]]
    {
        let st = publish_err(&mut c, publish_req(t, bad, "")).await;
        assert_status(&st, Code::InvalidArgument, "bad_request");
    }
    // JSON whose strings are not UTF-8 (serde_json alone lets them through).
    for bad in [&b"\"\xff\""[..], &b"{\"k\":\"\xc3\"}"[..], &b"[\"\xed\xa0\x80\"]"[..]] {
        let st = publish_err(&mut c, publish_req(t, bad, "")).await;
        assert_status(&st, Code::InvalidArgument, "bad_request");
        let mut conn = Conn::open(&mut c).await;
        let op = PublishOp {
            topic: t.into(),
            data: bad.to_vec(),
            idempotency_key: String::new(),
            ..Default::default()
        };
        let e = conn.error("bad-utf8", Some(Op::Publish(op))).await;
        assert_eq!(e.code, "bad_request", "{e:?}");
        conn.ping_quiet("still-open").await;
    }

    // limits.max_message_bytes: exactly at the limit is accepted, one over is
    // too_large.
    let at_limit = format!("\"{}\"", "x".repeat(1022));
    assert_eq!(at_limit.len(), 1024);
    let ok = publish(&mut c, t, &at_limit).await;
    let over = format!("\"{}\"", "x".repeat(1023));
    let st = publish_err(&mut c, publish_req(t, over.as_bytes(), "")).await;
    assert_status(&st, Code::ResourceExhausted, "too_large");

    // History: a bad `after` is bad_request; the topic holds only the
    // accepted message.
    for bad in ["x", "1-", "-1", "1-2-3", " 1-2"] {
        let st = within(c.history(HistoryRequest { topic: t.to_owned(), after: bad.to_owned(), limit: 0 }))
            .await
            .expect_err("bad after");
        assert_status(&st, Code::InvalidArgument, "bad_request");
    }
    assert_eq!(ids(&history(&mut c, t, "", 0).await.messages), [ok.id]);
    s.stop().await;
}

/// Contract §2: `too_large` is RESOURCE_EXHAUSTED on gRPC, whatever the
/// size. (Connect handles a frame over the decoder's limit that way.)
#[tokio::test]
async fn publish_far_over_the_limit_is_resource_exhausted() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1024\n").await;
    let mut c = client(&s).await;
    let t = "grpc.toolarge";
    let data = format!("\"{}\"", "x".repeat(8 * 1024));
    let st = publish_err(&mut c, publish_req(t, data.as_bytes(), "")).await;
    assert_eq!(
        st.code(),
        Code::ResourceExhausted,
        "Publish of {} bytes with limits.max_message_bytes = 1024: {st:?}",
        data.len()
    );
    assert!(history(&mut c, t, "", 0).await.messages.is_empty());
    // The channel still works.
    publish(&mut c, t, "1").await;
    s.stop().await;
}
