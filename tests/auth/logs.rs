//! No log line of the real binary ever holds a token, a secret or an API
//! key, whatever the clients send and at the most verbose level of
//! rtgate's own logs.

use futures_util::StreamExt;
use serde_json::json;

use crate::support::binary::Gateway;
use crate::support::WsClient;
use crate::{chat_token, sign, token, API_KEY, CONFIG, SECRET};

#[tokio::test]
async fn logs_never_contain_a_token_or_a_secret() {
    let dir = std::env::temp_dir().join(format!("rtgate-auth-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let mut g =
        Gateway::spawn(&["--config", path.to_str().unwrap()], &[("RUST_LOG", "rtgate=trace,info")]).await;
    let good = chat_token();
    let expired = token("alice", &["chat.*"], &[], -30);
    let forged =
        sign(&json!({"sub": "mallory", "exp": crate::now() + 60}), "not-the-secret-not-the-secret-xx");
    let ws = |q: String| {
        let url = format!("ws://{}/v1/ws?{q}", g.addr());
        async move {
            let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            WsClient { ws }
        }
    };
    // Accepted, refused, refreshed, over every transport that takes a token.
    let mut c = ws(format!("topic=chat.a&access_token={good}")).await;
    c.send(json!({"op": "refresh", "token": forged, "ref": "r"})).await;
    assert_eq!(c.next_op("error").await["code"], "unauthenticated");
    c.send(json!({"op": "refresh", "token": good, "ref": "r2"})).await;
    assert_eq!(c.next_op("ack").await["ref"], "r2");
    for t in [&expired, &forged] {
        let mut refused = ws(format!("topic=chat.a&access_token={t}")).await;
        refused.ended().await;
    }
    for credential in [good.as_str(), expired.as_str(), forged.as_str(), API_KEY, "Bearer-junk"] {
        let res =
            g.http.post(g.url("/v1/publish/chat.a")).bearer_auth(credential).body("1").send().await.unwrap();
        let _ = res.bytes().await;
        let res = g
            .http
            .get(g.url(&format!("/v1/poll?topic=chat.a&timeout=0&access_token={credential}")))
            .send()
            .await
            .unwrap();
        let _ = res.bytes().await;
        let res = g
            .http
            .get(g.url(&format!("/v1/sse?topic=chat.b&access_token={credential}")))
            .send()
            .await
            .unwrap();
        let mut body = res.bytes_stream();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), body.next()).await;
    }
    c.close_and_wait().await;
    g.sigterm();
    g.exited(std::time::Duration::from_secs(15)).await;
    let logs = g.logs();
    assert!(logs.contains("ws"), "the binary logged the connections: {logs}");
    for (what, secret) in [
        ("token", good.as_str()),
        ("expired token", &expired),
        ("forged token", &forged),
        ("API key", API_KEY),
        ("HS secret", SECRET),
    ] {
        // Any long piece of it: a token's signature, or its payload.
        for piece in secret.split('.').filter(|p| p.len() >= 16) {
            assert!(!logs.contains(piece), "the logs contain a piece of the {what}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
