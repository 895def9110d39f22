//! WebSocket: refused connects complete the handshake and close 1008 with
//! the code as reason; refused ops answer an error frame and the
//! connection goes on; a refresh drops the topics the new token no longer
//! allows.

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Ended, TestServer, WsClient, WAIT};
use crate::{bad_credentials, chat_token, server, token, API_KEY, ORIGIN};

/// Connects to `path_and_query` with optional `Authorization` and `Origin` headers.
pub(crate) async fn ws_with(
    s: &TestServer,
    path_and_query: &str,
    auth: Option<&str>,
    origin: Option<&str>,
) -> WsClient {
    let mut req = s.ws_url(path_and_query).into_client_request().unwrap();
    if let Some(a) = auth {
        req.headers_mut().insert("authorization", a.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
        .expect("the handshake completes even when the connect is refused");
    WsClient { ws }
}

/// Reads to the end: the error frame's code and the close.
async fn refused(mut c: WsClient) -> (String, Ended) {
    let (frames, end) = c.frames_until_end().await;
    assert_eq!(frames.len(), 1, "one error frame before the close: {frames:?}");
    assert_eq!(frames[0]["op"], "error", "{frames:?}");
    (frames[0]["code"].as_str().unwrap().to_owned(), end)
}

#[tokio::test]
async fn connect_without_a_valid_token_closes_1008_unauthenticated() {
    let s = server().await;
    let c = ws_with(&s, "/v1/ws?topic=chat.a", None, None).await;
    assert_eq!(refused(c).await, ("unauthenticated".into(), Ended::Closed(1008, "unauthenticated".into())));
    for (what, t) in bad_credentials() {
        let c = s.ws(&format!("/v1/ws?topic=chat.a&access_token={t}")).await;
        let got = refused(c).await;
        assert_eq!(got, ("unauthenticated".into(), Ended::Closed(1008, "unauthenticated".into())), "{what}");
    }
}

#[tokio::test]
async fn connect_with_a_topic_the_token_lacks_closes_1008_forbidden() {
    let s = server().await;
    let t = chat_token();
    let c = s.ws(&format!("/v1/ws?topic=chat.a&topic=news.a&access_token={t}")).await;
    assert_eq!(refused(c).await, ("forbidden".into(), Ended::Closed(1008, "forbidden".into())));
    let c =
        ws_with(&s, "/v1/ws?topic=chat.a", Some(&format!("Bearer {t}")), Some("https://evil.example")).await;
    assert_eq!(refused(c).await, ("forbidden".into(), Ended::Closed(1008, "forbidden".into())), "origin");
}

#[tokio::test]
async fn ops_the_token_lacks_get_an_error_frame_and_the_connection_goes_on() {
    let s = server().await;
    let t = token("carol", &["chat.*"], &["chat.own"], 3600);
    let mut c = ws_with(&s, "/v1/ws?topic=chat.a", Some(&format!("Bearer {t}")), Some(ORIGIN)).await;
    c.send(json!({"op": "subscribe", "topic": "news.a", "ref": "s1"})).await;
    let e = c.next_op("error").await;
    assert_eq!((e["ref"].as_str(), e["code"].as_str()), (Some("s1"), Some("forbidden")), "{e}");
    c.send(json!({"op": "publish", "topic": "chat.a", "data": 1, "ref": "p1"})).await;
    let e = c.next_op("error").await;
    assert_eq!((e["ref"].as_str(), e["code"].as_str()), (Some("p1"), Some("forbidden")), "{e}");
    c.send(json!({"op": "publish", "topic": "chat.own", "data": 2, "ref": "p2"})).await;
    let ack = c.next_op("ack").await;
    assert_eq!(ack["ref"], "p2");
    // Still subscribed to chat.a, and only to it.
    let api = s.http.clone();
    for topic in ["news.a", "chat.a"] {
        let res = api
            .post(s.url(&format!("/v1/publish/{topic}")))
            .bearer_auth(API_KEY)
            .body(format!("\"{topic}\""))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let m = c.next_op("message").await;
    assert_eq!((m["topic"].as_str(), m["data"].as_str()), (Some("chat.a"), Some("chat.a")), "{m}");
    c.assert_quiet("q").await;
}

#[tokio::test]
async fn a_refresh_with_fewer_topics_drops_them_with_forbidden() {
    let s = server().await;
    let both = token("dave", &["chat.*", "news.*"], &[], 3600);
    let mut c = s.ws(&format!("/v1/ws?topic=chat.a&topic=news.a&access_token={both}")).await;
    let narrower = token("dave", &["chat.*"], &[], 3600);
    c.send(json!({"op": "refresh", "token": narrower, "ref": "r1"})).await;
    let e = c.next_op("error").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(e["message"].as_str().unwrap().contains("news.a"), "{e}");
    let ack = c.next_op("ack").await;
    assert_eq!(ack["ref"], "r1");
    for topic in ["news.a", "chat.a"] {
        s.http
            .post(s.url(&format!("/v1/publish/{topic}")))
            .bearer_auth(API_KEY)
            .body("0")
            .send()
            .await
            .unwrap();
    }
    let m = c.next_op("message").await;
    assert_eq!(m["topic"], "chat.a", "news.a was dropped: {m}");
    c.assert_quiet("q").await;
    // A bad refresh is refused and changes nothing; another user's token is refused.
    c.send(json!({"op": "refresh", "token": "junk", "ref": "r2"})).await;
    assert_eq!(c.next_op("error").await["code"], "unauthenticated");
    let eve = token("eve", &["*"], &["*"], 3600);
    c.send(json!({"op": "refresh", "token": eve, "ref": "r3"})).await;
    assert_eq!(c.next_op("error").await["code"], "forbidden");
    c.send(json!({"op": "subscribe", "topic": "news.b", "ref": "s"})).await;
    assert_eq!(c.next_op("error").await["code"], "forbidden", "eve's grants were not taken");
}

#[tokio::test]
async fn an_api_key_connection_may_do_everything() {
    let s = server().await;
    let mut c = s.ws(&format!("/v1/ws?topic=x.y&access_token={API_KEY}")).await;
    c.send(json!({"op": "publish", "topic": "x.y", "data": {"k": 1}, "ref": "p"})).await;
    let mut got = vec![c.next().await, c.next().await];
    got.sort_by_key(|v| v["op"].as_str().unwrap().to_owned());
    assert_eq!((got[0]["op"].as_str(), got[1]["op"].as_str()), (Some("ack"), Some("message")), "{got:?}");
}
