//! Inbound `POST /v1/webhooks/{source}`: requests signed with the
//! `standardwebhooks` crate, as a sender would; valid ones are published on
//! the source's topic, everything else refused with the contract's codes.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::secret;
use crate::support::TestServer;

fn config() -> String {
    format!(
        "[[webhooks_in]]\nname = \"billing\"\nsecrets = [{:?}, {:?}]\ntopic = \"billing.events\"\n",
        secret("in-old"),
        secret("in-new")
    )
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// POSTs `body` to `source` with these headers (signed with `key` at `ts`
/// unless `signature` overrides it); (status, json).
async fn send(
    s: &TestServer,
    source: &str,
    id: &str,
    ts: i64,
    key: &str,
    body: &str,
    signed_body: &str,
) -> (u16, Value) {
    let sig = standardwebhooks::Webhook::new(key).unwrap().sign(id, ts, signed_body.as_bytes()).unwrap();
    let res = s
        .http
        .post(s.url(&format!("/v1/webhooks/{source}")))
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn inbound_webhooks_are_verified_then_published_once() {
    let s = TestServer::start(&config()).await;
    let key = secret("in-new");
    let body = r#"{"invoice":"in_1","paid":true}"#;
    // Valid (signed with the newer of two secrets): published.
    let (status, v) = send(&s, "billing", "msg_1", now(), &key, body, body).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["topic"], "billing.events");
    let id = v["id"].as_str().unwrap().to_owned();
    let (_, history) = s.get("/v1/history/billing.events").await;
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["id"], Value::String(id));
    assert_eq!(msgs[0]["data"], serde_json::json!({"invoice": "in_1", "paid": true}));
    // The older secret still verifies (rotation).
    let (status, _) = send(&s, "billing", "msg_2", now(), &secret("in-old"), "2", "2").await;
    assert_eq!(status, 202);
    // Replayed: the same webhook-id again is refused and not published.
    let (status, v) = send(&s, "billing", "msg_1", now(), &key, body, body).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_request")), "{v}");
    // Bad signature: signed over other bytes.
    let (status, v) = send(&s, "billing", "msg_3", now(), &key, body, "{}").await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{v}");
    // Wrong key.
    let (status, _) = send(&s, "billing", "msg_4", now(), &secret("attacker"), body, body).await;
    assert_eq!(status, 401);
    // Tampered body (signature of the original).
    let (status, _) =
        send(&s, "billing", "msg_5", now(), &key, r#"{"invoice":"in_1","paid":false}"#, body).await;
    assert_eq!(status, 401);
    // Too old and too far in the future (outside the 5 min default).
    let (status, v) = send(&s, "billing", "msg_6", now() - 400, &key, body, body).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{v}");
    let (status, _) = send(&s, "billing", "msg_7", now() + 400, &key, body, body).await;
    assert_eq!(status, 401);
    // Unknown source.
    let (status, v) = send(&s, "nobody", "msg_8", now(), &key, body, body).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    // Missing headers.
    let res = s.http.post(s.url("/v1/webhooks/billing")).body(body).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 400);
    // Only the two valid requests were published.
    let (_, history) = s.get("/v1/history/billing.events").await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2, "{history}");
    s.stop().await;
}
