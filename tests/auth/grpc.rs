//! gRPC: every rpc answers UNAUTHENTICATED without a valid `authorization`
//! metadata entry and PERMISSION_DENIED for a topic the token lacks;
//! Connect ops the token lacks get an error frame.

use rtgate::proto::client_frame::Op;
use rtgate::proto::server_frame::Frame;
use rtgate::proto::{HistoryRequest, PublishOp, SubscribeOp};
use tonic::{Code, Request, Status};

use crate::helpers::{assert_status, client, publish_req, sub_req, within, Client, Conn};
use crate::{bad_credentials, chat_token, server, token, API_KEY};

fn with<T>(msg: T, credential: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(c) = credential {
        req.metadata_mut().insert("authorization", format!("Bearer {c}").parse().unwrap());
    }
    req
}

/// The status of each unary or streaming rpc called with `credential` on
/// topic `topic`, in the order publish, history, subscribe, connect.
async fn statuses(c: &mut Client, credential: Option<&str>, topic: &str) -> Vec<Result<(), Status>> {
    let publish = within(c.publish(with(publish_req(topic, b"1", ""), credential))).await.map(|_| ());
    let history = within(c.history(with(
        HistoryRequest { topic: topic.to_owned(), after: String::new(), limit: 1 },
        credential,
    )))
    .await
    .map(|_| ());
    let subscribe = within(c.subscribe(with(sub_req(&[topic], ""), credential))).await.map(|_| ());
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let connect = within(c.connect(with(tokio_stream::wrappers::ReceiverStream::new(rx), credential)))
        .await
        .map(|_| ());
    vec![publish, history, subscribe, connect]
}

#[tokio::test]
async fn every_rpc_refuses_a_missing_or_bad_credential() {
    let s = server().await;
    let mut c = client(&s).await;
    let mut cases = vec![("missing".to_owned(), None)];
    cases.extend(bad_credentials().into_iter().map(|(w, t)| (w.to_owned(), Some(t))));
    for (what, credential) in cases {
        for (rpc, got) in ["publish", "history", "subscribe", "connect"]
            .iter()
            .zip(statuses(&mut c, credential.as_deref(), "chat.a").await)
        {
            let status = got.expect_err(&format!("{rpc} with {what} credential succeeded"));
            assert_status(&status, Code::Unauthenticated, "unauthenticated");
        }
    }
}

#[tokio::test]
async fn every_rpc_refuses_a_topic_the_token_lacks() {
    let s = server().await;
    let mut c = client(&s).await;
    let t = chat_token();
    let got = statuses(&mut c, Some(&t), "news.a").await;
    for (rpc, got) in ["publish", "history", "subscribe"].iter().zip(got) {
        let status = got.expect_err(&format!("{rpc} on news.a succeeded"));
        assert_status(&status, Code::PermissionDenied, "forbidden");
    }
    for (rpc, got) in
        ["publish", "history", "subscribe", "connect"].iter().zip(statuses(&mut c, Some(&t), "chat.a").await)
    {
        assert!(got.is_ok(), "{rpc} on chat.a: {got:?}");
    }
    for got in statuses(&mut c, Some(API_KEY), "anything").await {
        assert!(got.is_ok(), "API key: {got:?}");
    }
}

#[tokio::test]
async fn connect_ops_the_token_lacks_get_error_frames() {
    let s = server().await;
    let mut c = client(&s).await;
    let t = token("frank", &["chat.*"], &[], 3600);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let rx = within(c.connect(with(tokio_stream::wrappers::ReceiverStream::new(rx), Some(&t))))
        .await
        .unwrap()
        .into_inner();
    let mut conn = Conn { tx, rx };
    conn.send("s", Some(Op::Subscribe(SubscribeOp { topic: "news.a".into(), ..Default::default() }))).await;
    match conn.next().await {
        Frame::Error(e) => assert_eq!((e.r#ref.as_str(), e.code.as_str()), ("s", "forbidden")),
        other => panic!("expected an error frame, got {other:?}"),
    }
    conn.send(
        "p",
        Some(Op::Publish(PublishOp { topic: "chat.a".into(), data: b"1".to_vec(), ..Default::default() })),
    )
    .await;
    match conn.next().await {
        Frame::Error(e) => assert_eq!((e.r#ref.as_str(), e.code.as_str()), ("p", "forbidden")),
        other => panic!("expected an error frame, got {other:?}"),
    }
    conn.send("ok", Some(Op::Subscribe(SubscribeOp { topic: "chat.a".into(), ..Default::default() }))).await;
    match conn.next().await {
        Frame::Ack(a) => assert_eq!(a.r#ref, "ok"),
        other => panic!("expected the ack, got {other:?}"),
    }
}
