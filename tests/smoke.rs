mod support;
use support::*;

#[tokio::test]
async fn http_publish_reaches_ws_subscriber() {
    let s = TestServer::start("").await;
    let mut c = s.ws("/v1/ws?topic=chat").await;
    let id = s.publish("chat", r#"{"x": 1}"#).await;
    let m = c.next_op("message").await;
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["topic"], "chat");
    assert_eq!(m["data"]["x"], 1);
    assert!(m["cursor"].as_str().is_some());
    s.stop().await;
}
