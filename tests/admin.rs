//! The optional admin listener: `/metrics` moves off the public port.
#![allow(clippy::unwrap_used)]

mod support;
use support::*;

#[tokio::test]
async fn metrics_move_to_the_admin_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = TestServer::start(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    // The public port still answers health, but no longer metrics.
    assert_eq!(s.get("/healthz").await.0, 200);
    let public = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
    // The admin port answers all three once it is up (bounded wait for the bind).
    let admin = format!("http://127.0.0.1:{port}");
    let mut text = None;
    for _ in 0..100 {
        if let Ok(r) = s.http.get(format!("{admin}/metrics")).send().await {
            assert_eq!(r.status(), 200);
            text = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let text = text.expect("admin listener never answered");
    assert!(text.contains("# TYPE rtgate_delivery_latency_seconds histogram"), "{text}");
    assert_eq!(s.http.get(format!("{admin}/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(s.http.get(format!("{admin}/v1/history/x")).send().await.unwrap().status(), 404);
    s.stop().await;
}

/// Issue 11 item 17: `/metrics` on the public port is for loopback peers by
/// default (these tests are one), and `public_metrics = "off"` removes it
/// there like an unknown route.
#[tokio::test]
async fn public_metrics_follow_the_policy() {
    let s = TestServer::start("").await;
    let r = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a loopback peer reads /metrics by default");
    assert!(r.text().await.unwrap().contains("rtgate_"));

    let s = TestServer::start("[admin]\npublic_metrics = \"off\"\n").await;
    let r = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(s.http.get(s.url("/readyz")).send().await.unwrap().status(), 200);
}
