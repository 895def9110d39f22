//! A Connect publish in flight when the stream is closed (shutdown) is
//! finished and acknowledged before the stream ends, and stored once; a
//! retry with its idempotency key on a new stream answers the same id.

use rtgate::proto::client_frame::Op;
use rtgate::proto::server_frame::Frame;
use rtgate::proto::PublishOp;
use tonic::Code;

use crate::helpers::*;
use crate::support::redis::{Paused, RedisServer};
use crate::support::*;

fn publish_op(topic: &str, data: &str, key: &str) -> Option<Op> {
    Some(Op::Publish(PublishOp {
        topic: topic.to_owned(),
        data: data.as_bytes().to_vec(),
        idempotency_key: key.to_owned(),
        ..Default::default()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_publish_in_flight_at_shutdown_is_acked_and_stored_once() {
    let redis = RedisServer::start();
    let cfg = redis.config("op_timeout = \"30s\"\n");
    let s = TestServer::start(&cfg).await;
    let t = "grpc.inflight";
    let mut c = client(&s).await;
    let first = publish(&mut c, t, "0").await.id;
    let mut publisher = Conn::open(&mut c).await;
    let mut idle = Conn::open(&mut c).await;
    publisher.ping_quiet("p0").await;
    idle.ping_quiet("i0").await;

    let pause = Paused::writes(&redis);
    publisher.send("p1", publish_op(t, r#"{"n":1}"#, "inflight-1")).await;
    pause.until_held().await;
    let stop = tokio::spawn(s.stop());
    // Shutdown closed every session (the idle stream ends) while the
    // publish is still held in Redis.
    let (rest, status) = idle.end().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&status, Code::Unavailable, "unavailable");
    pause.end();
    let (rest, status) = publisher.end().await;
    assert_status(&status, Code::Unavailable, "unavailable");
    let [Frame::Ack(ack)] = &rest[..] else {
        panic!("expected the publish ack before the end, got {rest:?}")
    };
    assert_eq!(ack.r#ref, "p1");
    pid(&ack.id);
    within(stop).await.expect("stop");

    // Stored once; the retry on a new stream answers the same id.
    let s = TestServer::start(&cfg).await;
    let mut c = client(&s).await;
    assert_eq!(ids(&history(&mut c, t, "", 0).await.messages), [first.clone(), ack.id.clone()]);
    let mut retry = Conn::open(&mut c).await;
    retry.send("p1", publish_op(t, r#"{"n":1}"#, "inflight-1")).await;
    match retry.until_ref("p1").await {
        (before, Frame::Ack(again)) if before.is_empty() => assert_eq!(again.id, ack.id),
        other => panic!("expected the first id again, got {other:?}"),
    }
    assert_eq!(ids(&history(&mut c, t, "", 0).await.messages), [first, ack.id.clone()]);
    s.stop().await;
}
