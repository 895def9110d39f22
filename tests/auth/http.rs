//! HTTP API, SSE and long polling: 401 / 403 with the contract's body, and
//! what each credential may do.

use serde_json::Value;

use crate::support::{TestServer, WAIT};
use crate::{bad_credentials, chat_token, server, token, API_KEY, ORIGIN};

/// (status, error code) of a request with `auth` (Authorization value) and `origin`.
async fn call(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    auth: Option<&str>,
    origin: Option<&str>,
) -> (u16, String) {
    let mut req = s.http.request(method.clone(), s.url(path));
    if method == reqwest::Method::POST {
        req = req.body("{\"x\":1}");
    }
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(o) = origin {
        req = req.header("Origin", o);
    }
    let res = tokio::time::timeout(WAIT, req.send()).await.expect("timed out").expect("request");
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("").to_owned())
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Every endpoint a client uses, as (method, path); `timeout=0` so a
/// successful poll answers at once.
fn endpoints() -> Vec<(reqwest::Method, &'static str)> {
    vec![
        (reqwest::Method::POST, "/v1/publish/chat.a"),
        (reqwest::Method::GET, "/v1/history/chat.a"),
        (reqwest::Method::GET, "/v1/poll?topic=chat.a&timeout=0"),
    ]
}

#[tokio::test]
async fn no_or_bad_credential_is_401_unauthenticated_everywhere() {
    let s = server().await;
    for (method, path) in endpoints() {
        assert_eq!(
            call(&s, method.clone(), path, None, None).await,
            (401, "unauthenticated".into()),
            "{path}"
        );
        assert_eq!(
            call(&s, method.clone(), path, Some("Basic YWxpY2U6cHc="), None).await,
            (401, "unauthenticated".into()),
            "{path}: not a bearer credential"
        );
        for (what, t) in bad_credentials() {
            assert_eq!(
                call(&s, method.clone(), path, Some(&bearer(&t)), None).await,
                (401, "unauthenticated".into()),
                "{path}: {what}"
            );
        }
    }
    // SSE: refused before the stream starts.
    for (what, t) in bad_credentials() {
        let (status, code) =
            call(&s, reqwest::Method::GET, "/v1/sse?topic=chat.a", Some(&bearer(&t)), None).await;
        assert_eq!((status, code.as_str()), (401, "unauthenticated"), "sse: {what}");
    }
    let (status, _) = call(&s, reqwest::Method::GET, "/v1/sse?topic=chat.a", None, None).await;
    assert_eq!(status, 401);
    // Nothing was published by any of them.
    let (status, history) = s.get(&format!("/v1/history/chat.a?access_token={API_KEY}")).await;
    assert_eq!(status, 200);
    assert_eq!(history["messages"].as_array().unwrap().len(), 0, "{history}");
}

#[tokio::test]
async fn a_token_is_accepted_from_the_header_and_the_access_token_query() {
    let s = server().await;
    let t = chat_token();
    for (method, path) in endpoints() {
        let (status, code) = call(&s, method.clone(), path, Some(&bearer(&t)), None).await;
        assert_eq!(status, 200, "{path}: {code}");
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, code) = call(&s, method, &format!("{path}{sep}access_token={t}"), None, None).await;
        assert_eq!(status, 200, "{path} with access_token: {code}");
    }
    let (status, history) = s.get(&format!("/v1/history/chat.a?access_token={t}")).await;
    assert_eq!(status, 200);
    assert_eq!(history["messages"].as_array().unwrap().len(), 2, "both publishes were stored: {history}");
}

#[tokio::test]
async fn a_token_without_the_topic_is_403_forbidden() {
    let s = server().await;
    // May subscribe to chat.* only; may publish nowhere.
    let reader = token("bob", &["chat.*"], &[], 3600);
    let (status, code) =
        call(&s, reqwest::Method::POST, "/v1/publish/chat.a", Some(&bearer(&reader)), None).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    for path in ["/v1/history/news.a", "/v1/poll?topic=chat.a&topic=news.a&timeout=0", "/v1/sse?topic=news.a"]
    {
        let (status, code) = call(&s, reqwest::Method::GET, path, Some(&bearer(&reader)), None).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{path}");
    }
    // `chat.*` does not reach `chatroom1`.
    let (status, _) =
        call(&s, reqwest::Method::GET, "/v1/history/chatroom1", Some(&bearer(&reader)), None).await;
    assert_eq!(status, 403);
    let (status, _) =
        call(&s, reqwest::Method::GET, "/v1/history/chat.a.b", Some(&bearer(&reader)), None).await;
    assert_eq!(status, 200, "chat.* allows chat.a.b");
}

#[tokio::test]
async fn an_api_key_may_publish_and_subscribe_everywhere() {
    let s = server().await;
    for (method, path) in [
        (reqwest::Method::POST, "/v1/publish/any.topic"),
        (reqwest::Method::GET, "/v1/history/any.topic"),
        (reqwest::Method::GET, "/v1/poll?topic=other&timeout=0"),
    ] {
        let (status, code) = call(&s, method, path, Some(&bearer(API_KEY)), None).await;
        assert_eq!(status, 200, "{path}: {code}");
    }
    let near_miss = format!("{}x", &API_KEY[..API_KEY.len() - 1]);
    let (status, _) =
        call(&s, reqwest::Method::POST, "/v1/publish/any.topic", Some(&bearer(&near_miss)), None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn browser_transports_refuse_origins_not_allowed() {
    let s = server().await;
    let t = chat_token();
    for path in ["/v1/poll?topic=chat.a&timeout=0", "/v1/sse?topic=chat.a"] {
        let (status, code) =
            call(&s, reqwest::Method::GET, path, Some(&bearer(&t)), Some("https://evil.example")).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{path}");
    }
    let (status, _) =
        call(&s, reqwest::Method::GET, "/v1/poll?topic=chat.a&timeout=0", Some(&bearer(&t)), Some(ORIGIN))
            .await;
    assert_eq!(status, 200);
    // CORS answers the allowed origin only (the default follows auth.allowed_origins).
    let pre = |origin: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/v1/publish/chat.a"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
    };
    let ok = pre(ORIGIN).await.unwrap();
    assert_eq!(ok.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap()), Some(ORIGIN));
    let evil = pre("https://evil.example").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none(), "{:?}", evil.headers());
}

#[tokio::test]
async fn with_auth_off_everything_is_allowed_as_before() {
    let s = TestServer::start("").await;
    let (status, _) =
        call(&s, reqwest::Method::POST, "/v1/publish/x", None, Some("https://any.example")).await;
    assert_eq!(status, 200);
    let (status, _) =
        call(&s, reqwest::Method::GET, "/v1/poll?topic=x&timeout=0", Some("Bearer junk"), None).await;
    assert_eq!(status, 200, "a credential is ignored while auth is off");
}
