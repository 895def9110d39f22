//! gRPC: the `Presence` rpc, and `Connect`'s presence op and
//! `PresenceEvent` frames.

use rtgate::proto::client_frame::Op;
use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::server_frame::Frame;
use rtgate::proto::{ClientFrame, PresenceOp, PresenceRequest, ServerFrame, SubscribeOp};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::support::{TestServer, WAIT};
use crate::*;

async fn next(rx: &mut tonic::Streaming<ServerFrame>) -> Frame {
    match tokio::time::timeout(WAIT, rx.message()).await.expect("timed out") {
        Ok(Some(ServerFrame { frame: Some(f) })) => f,
        other => panic!("Connect stream: {other:?}"),
    }
}

#[tokio::test]
async fn presence_rpc_and_connect_events() {
    let s = TestServer::start(&presence_cfg(100, 2000)).await;
    let channel = Endpoint::from_shared(format!("http://{}", s.addr)).unwrap().connect().await.unwrap();
    let mut c = GatewayClient::new(channel);

    // Connect: subscribe with presence, get its own join as a PresenceEvent.
    let (tx, rx) = mpsc::channel(16);
    let mut rx = c.connect(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let op = SubscribeOp { topic: "room.g".into(), after: None, presence: true };
    tx.send(ClientFrame { r#ref: "s".into(), op: Some(Op::Subscribe(op)) }).await.unwrap();
    let mut frames = vec![];
    let own = loop {
        match next(&mut rx).await {
            Frame::PresenceEvent(e) => break e,
            f => frames.push(f),
        }
    };
    assert!(matches!(&frames[..], [Frame::Ack(a)] if a.r#ref == "s"), "{frames:?}");
    assert_eq!((own.topic.as_str(), own.kind.as_str(), own.joins.len()), ("room.g", "join", 1));
    let me = own.joins[0].clone();
    assert_eq!(me.user, me.client);

    // A WebSocket member joins: a join event on Connect.
    let m = member(&s, "room.g", None).await;
    let join = match next(&mut rx).await {
        Frame::PresenceEvent(e) => e,
        f => panic!("{f:?}"),
    };
    assert_eq!((join.kind.as_str(), join.joins.len()), ("join", 1));
    assert_ne!(join.joins[0].client, me.client);

    // The rpc and the Connect op answer the same list.
    let reply = c.presence(PresenceRequest { topic: "room.g".into() }).await.unwrap().into_inner();
    assert_eq!((reply.topic.as_str(), reply.users, reply.clients.len()), ("room.g", 2, 2));
    assert!(reply.clients.iter().all(|e| e.since > 0 && e.info.is_empty()));
    tx.send(ClientFrame { r#ref: "p".into(), op: Some(Op::Presence(PresenceOp { topic: "room.g".into() })) })
        .await
        .unwrap();
    match next(&mut rx).await {
        Frame::Ack(a) => {
            assert_eq!(a.r#ref, "p");
            let p = a.presence.unwrap();
            assert_eq!((p.users, p.clients.len()), (2, 2));
        }
        f => panic!("{f:?}"),
    }
    let err = c.presence(PresenceRequest { topic: "plain".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    m.close_and_wait().await;
    match next(&mut rx).await {
        Frame::PresenceEvent(e) => {
            assert_eq!((e.kind.as_str(), e.leaves.len()), ("leave", 1));
            assert_eq!(e.leaves[0].client, join.joins[0].client);
        }
        f => panic!("{f:?}"),
    }
    drop(tx);
    s.stop().await;
}
