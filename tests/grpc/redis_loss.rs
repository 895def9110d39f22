//! Redis losing data under the streams: a flushed stream and a Redis
//! restarted empty are reported (a gap or UNAVAILABLE), never silent.

use std::time::Duration;

use rtgate::proto::server_frame::Frame;
use rtgate::proto::Gap;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;
use crate::support::redis::{cli, RedisServer};
use crate::support::*;

/// A Redis stream lost (FLUSHALL) and written again: resuming from a
/// position before the loss reports the gap (Subscribe: on the next
/// message; Connect: a gap frame, recovered = false), never silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_stream_resume_reports_gap() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("")).await;
    let mut c = client(&s).await;
    let t = "grpc.lost.b";
    let mut st = subscribe(&mut c, &[t], "").await;
    let mut published = vec![];
    for i in 0..5 {
        published.push(publish(&mut c, t, &format!("{i}")).await.id);
    }
    let seen = msgs(&mut st, 5).await;
    assert_eq!(ids(&seen), published);
    drop(st);
    // published[3] and [4] are lost with the flush.
    assert_eq!(tokio::task::block_in_place(|| cli(redis.port, &["FLUSHALL"])).trim(), "OK");
    let fresh = publish(&mut c, t, r#""fresh""#).await.id;
    assert!(pid(&fresh) > pid(&published[4]));
    let gap =
        Gap { topic: t.into(), after: published[2].clone(), oldest: fresh.clone(), ..Default::default() };

    let mut st = subscribe(&mut c, &[t], &seen[2].cursor).await;
    let m = next_msg(&mut st).await;
    assert_eq!(m.id, fresh);
    assert_eq!(m.gap.as_ref(), Some(&gap), "lost messages {:?} must be reported", &published[3..]);
    assert_quiet(&mut c, &[t], &mut [&mut st]).await;

    let mut conn = Conn::open(&mut c).await;
    let (before, ack) = conn.subscribe(t, Some(&published[2]), "s").await;
    assert_eq!(before, [Frame::Gap(gap)]);
    assert!(!ack.recovered, "{ack:?}");
    let h = history(&mut c, t, &published[2], 0).await;
    assert!(h.truncated);
    let after_loss = ids(&h.messages);
    assert_eq!(after_loss.len(), 2, "fresh and the marker");
    assert_eq!(after_loss[0], fresh);
    assert_eq!(ids(&conn.messages(2).await), after_loss);
    conn.ping_quiet("q").await;
    s.stop().await;
}

/// Redis restarted without its data under live streams: the engine lost
/// history under the subscriptions, so Subscribe and Connect end with
/// UNAVAILABLE; a resume by cursor reports the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_ends_streams_unavailable_then_gap() {
    let mut redis = RedisServer::start();
    let s = TestServer::start(&redis.config("op_timeout = \"500ms\"\nblock = \"1s\"")).await;
    let mut h = HealthClient::new(channel(&s).await);
    wait_health(&mut h, "", ServingStatus::Serving, WAIT).await;
    let mut c = client(&s).await;
    let t = "grpc.lost.c";
    let mut st = subscribe(&mut c, &[t], "").await;
    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(t, None, "s").await;
    let mut published = vec![];
    for i in 0..3 {
        published.push(publish(&mut c, t, &format!("{i}")).await.id);
    }
    let seen = msgs(&mut st, 3).await;
    assert_eq!(ids(&seen), published);
    assert_eq!(ids(&conn.messages(3).await), published);

    tokio::task::block_in_place(|| redis.restart_empty());
    let (rest, status) = end_of(&mut st).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&status, Code::Unavailable, "unavailable");
    let (rest, status) = conn.end().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&status, Code::Unavailable, "unavailable");

    wait_health(&mut h, "", ServingStatus::Serving, Duration::from_secs(15)).await;
    let mut st = subscribe(&mut c, &[t], &seen[2].cursor).await;
    let live = publish(&mut c, t, r#""again""#).await.id;
    let m = next_msg(&mut st).await;
    assert_eq!(m.id, live);
    let gap = m.gap.unwrap_or_else(|| panic!("the loss of history after {} must be reported", published[2]));
    assert_eq!((gap.topic.as_str(), gap.after.as_str()), (t, published[2].as_str()), "{gap:?}");
    pid(&gap.oldest);
    assert_quiet(&mut c, &[t], &mut [&mut st]).await;
    s.stop().await;
}
