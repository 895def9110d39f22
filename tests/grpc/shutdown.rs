//! Shutdown ends every stream with UNAVAILABLE at once, and health says
//! NOT_SERVING.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_unavailable() {
    let s = TestServer::start("").await;
    let t = "grpc.down";
    let mut c = client(&s).await;
    let mut sub = subscribe(&mut c, &[t], "").await;
    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(t, None, "s").await;
    let id = publish(&mut c, t, "1").await.id;
    assert_eq!(next_msg(&mut sub).await.id, id);
    assert_eq!(conn.message().await.id, id);
    let mut h = HealthClient::new(channel(&s).await);
    let mut w =
        within(h.watch(HealthCheckRequest { service: String::new() })).await.expect("watch").into_inner();
    assert_eq!(within(w.message()).await.expect("watch").expect("status").status(), ServingStatus::Serving);

    let started = Instant::now();
    let stop = tokio::spawn(s.stop());
    let (rest, st) = end_of(&mut sub).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&st, Code::Unavailable, "unavailable");
    let (rest, st) = conn.end().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&st, Code::Unavailable, "unavailable");
    // Health Watch says NOT_SERVING, then ends.
    let last = within(w.message()).await.expect("watch").expect("a last status");
    assert_eq!(last.status(), ServingStatus::NotServing);
    assert!(matches!(within(w.message()).await, Ok(None)), "Watch ends at shutdown");
    within(stop).await.expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "streams should end at once: {:?}",
        started.elapsed()
    );
}
