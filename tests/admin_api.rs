//! The operator's surface (contract §12): `GET /v1/client.js` (the committed
//! client build, with an ETag), the admin JSON under `/v1/admin/` (API key
//! while auth is on; connections listed with their topics; a kick closes a
//! WebSocket with 1008 `kicked`), and the chat demo behind `[demo]` /
//! `--demo`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::binary::Gateway;
use support::*;

const API_KEY: &str = "ops-key-0123456789abcdef";
const SECRET: &str = "admin-test-secret-0123456789abcdef";

#[tokio::test]
async fn client_js_is_the_committed_build_with_an_etag() {
    let s = TestServer::start("").await;
    let committed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/dist/rtgate.js")).unwrap();
    let res = s.http.get(s.url("/v1/client.js")).header("Origin", "http://app.example").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=300");
    assert_eq!(h["access-control-allow-origin"], "*", "CORS as the other endpoints (auth off: any origin)");
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2, "{etag}");
    let body = res.bytes().await.unwrap();
    assert_eq!(body.len(), committed.len());
    assert!(body[..] == committed[..], "served bytes differ from clients/js/dist/rtgate.js");
    assert!(std::str::from_utf8(&body).unwrap().contains("export class Rtgate"));

    // Revalidation: the same ETag is not modified, another one is.
    let again = s.http.get(s.url("/v1/client.js")).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let other = s.http.get(s.url("/v1/client.js")).header("If-None-Match", "\"nope\"").send().await.unwrap();
    assert_eq!(other.status(), 200);
    s.stop().await;
}

async fn call(s: &TestServer, method: reqwest::Method, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = s.http.request(method, s.url(path));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let res = tokio::time::timeout(WAIT, req.send()).await.expect("timed out").unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admin_endpoints_need_an_api_key_while_auth_is_on() {
    let s =
        TestServer::start(&format!("[auth]\nhmac_secrets = [\"{SECRET}\"]\napi_keys = [\"{API_KEY}\"]\n"))
            .await;
    let spec = rtgate::auth::TokenSpec {
        sub: Some("alice".into()),
        subscribe: vec!["*".into()],
        publish: vec!["*".into()],
        ttl: Some(Duration::from_secs(600)),
        info: None,
        issuer: None,
        audience: None,
    };
    let user = rtgate::auth::mint(SECRET.as_bytes(), &spec).unwrap();
    use reqwest::Method;
    let routes = [
        (Method::GET, "/v1/admin/stats"),
        (Method::GET, "/v1/admin/connections"),
        (Method::POST, "/v1/admin/connections/00000000000000ff/close"),
    ];
    for (m, path) in routes {
        let (status, body) = call(&s, m.clone(), path, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthenticated")),
            "{path}: {body}"
        );
        let (status, body) = call(&s, m.clone(), path, Some("not-the-key")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthenticated")),
            "{path}: {body}"
        );
        let (status, body) = call(&s, m.clone(), path, Some(&user)).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{path}: {body}");
    }
    let (status, body) = call(&s, Method::GET, "/v1/admin/stats", Some(API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["auth"].as_bool(), body["ready"].as_bool()), (Some(true), Some(true)), "{body}");
    let (status, body) = call(&s, Method::GET, "/v1/admin/connections", Some(API_KEY)).await;
    assert_eq!((status, body["total"].as_u64()), (200, Some(0)), "{body}");
    let (status, body) =
        call(&s, Method::POST, "/v1/admin/connections/00000000000000ff/close", Some(API_KEY)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    // The page itself holds no data: it loads without a key and asks for one.
    let page = s.http.get(s.url("/admin")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("/v1/admin/stats"));
    s.stop().await;
}

/// Polls the connection list (bounded) until `done` holds for it.
async fn connections_until(s: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = s.get("/v1/admin/connections").await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "connections never showed {what}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the listing, bounded
    }
}

#[tokio::test]
async fn a_live_websocket_is_listed_with_its_topics_and_a_kick_closes_it() {
    let s = TestServer::start("").await;
    let mut ws = s.ws("/v1/ws?topic=admin.a").await;
    let (_, ack) = ws.subscribe("admin.b", None).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    s.publish("admin.b", "{\"n\":1}").await;
    let got = ws.messages(1).await;
    assert_eq!(got[0]["data"], json!({"n": 1}));

    let list = connections_until(&s, "the WebSocket with both topics and one message out", |v| {
        v["connections"].as_array().is_some_and(|c| {
            c.len() == 1
                && c[0]["topics"].as_array().is_some_and(|t| t.len() == 2)
                && c[0]["messages_out"] == 1
        })
    })
    .await;
    assert_eq!(list["total"], 1, "{list}");
    let conn = &list["connections"][0];
    let id = conn["id"].as_str().unwrap().to_owned();
    assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(conn["transport"], "ws");
    assert!(conn["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{conn}");
    assert_eq!(conn["user"], Value::Null, "auth off: no user");
    let mut topics: Vec<&str> =
        conn["topics"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    topics.sort_unstable();
    assert_eq!(topics, ["admin.a", "admin.b"]);
    let opened = conn["opened_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(opened <= now && now - opened < 60_000, "opened_at {opened}, now {now}");

    let (status, stats) = s.get("/v1/admin/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["auth"], false);
    assert_eq!(stats["connections"]["total"], 1, "{stats}");
    assert_eq!(stats["connections"]["by_transport"], json!({"ws": 1, "sse": 0, "poll": 0, "grpc": 0}));
    assert_eq!(stats["topics"]["count"], 2, "{stats}");
    let top = stats["topics"]["top"].as_array().unwrap();
    let b = top.iter().find(|t| t["topic"] == "admin.b").unwrap_or_else(|| panic!("admin.b not in {stats}"));
    assert_eq!((b["subscribers"].as_u64(), b["messages"].as_u64()), (Some(1), Some(1)), "{b}");
    assert!(stats["rates"]["published_per_s"].as_f64().is_some(), "{stats}");
    assert_eq!(stats["dead_letters"], 0, "{stats}");

    // Kick: 200 with the id; the client sees 1008 "kicked".
    let (status, body) =
        call(&s, reqwest::Method::POST, &format!("/v1/admin/connections/{id}/close"), None).await;
    assert_eq!((status, body), (200, json!({ "closed": id })));
    assert_eq!(ws.ended().await, Ended::Closed(1008, "kicked".into()));
    connections_until(&s, "no connection after the kick", |v| v["total"] == 0).await;
    let (status, stats) = s.get("/v1/admin/stats").await;
    assert!(status == 200 && stats["totals"]["kicked"].as_u64() >= Some(1), "{stats}");

    // Gone: 404; never a connection id: 400.
    let (status, body) =
        call(&s, reqwest::Method::POST, &format!("/v1/admin/connections/{id}/close"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = call(&s, reqwest::Method::POST, "/v1/admin/connections/xyz/close", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    s.stop().await;
}

#[tokio::test]
async fn the_demo_is_served_only_when_enabled() {
    let off = TestServer::start("").await;
    assert_eq!(off.http.get(off.url("/demo/")).send().await.unwrap().status(), 404);
    off.stop().await;

    let on = TestServer::start("[demo]\nenabled = true\n").await;
    let page = on.http.get(on.url("/demo/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("rtgate chat") && html.contains("chat.js"), "{html}");
    let js = on.http.get(on.url("/demo/chat.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(js.text().await.unwrap().contains("from \"/v1/client.js\""));
    on.stop().await;
}

#[tokio::test]
async fn the_demo_flag_serves_the_demo_and_adds_its_topic_policy() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtgate"))
        .args(["--demo", "--print-config"])
        .env_remove("RTGATE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(config["demo"]["enabled"].as_bool(), Some(true));
    let topics = config["topics"].as_array().unwrap();
    assert_eq!(topics.len(), 1, "{topics:?}");
    assert_eq!(topics[0]["pattern"].as_str(), Some("chat.*"));
    assert_eq!(topics[0]["presence"].as_bool(), Some(true));

    let g = Gateway::spawn(&["--demo"], &[]).await;
    let res = g.http.get(g.url("/demo/")).send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", g.logs());
    assert!(res.text().await.unwrap().contains("rtgate chat"));
}

#[tokio::test]
async fn sse_streams_and_held_polls_are_listed_and_kicked() {
    let s = TestServer::start("").await;
    let client = reqwest::Client::new();
    let mut sse = client.get(s.url("/v1/sse?topic=admin.s")).send().await.unwrap();
    assert_eq!(sse.status(), 200);
    let poll_url = s.url("/v1/poll?topic=admin.p&timeout=30");
    let poll = tokio::spawn(async move {
        let res = reqwest::Client::new().get(poll_url).send().await.unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    });
    let list = connections_until(&s, "an SSE stream and a held poll", |v| v["total"] == 2).await;
    let of = |t: &str| -> Value {
        list["connections"].as_array().unwrap().iter().find(|c| c["transport"] == t).cloned().unwrap()
    };
    let (sse_conn, poll_conn) = (of("sse"), of("poll"));
    assert_eq!(sse_conn["topics"], json!(["admin.s"]));
    assert_eq!(poll_conn["topics"], json!(["admin.p"]));
    assert_eq!(poll_conn["peer"], "127.0.0.1", "a poll shows the client address only: {poll_conn}");
    let (_, stats) = s.get("/v1/admin/stats").await;
    assert_eq!(stats["connections"]["by_transport"], json!({"ws": 0, "sse": 1, "poll": 1, "grpc": 0}));

    let kick = |id: &Value| format!("/v1/admin/connections/{}/close", id.as_str().unwrap());
    let (status, _) = call(&s, reqwest::Method::POST, &kick(&sse_conn["id"]), None).await;
    assert_eq!(status, 200);
    // The stream ends (cleanly, or reset by the kill switch).
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match sse.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the SSE stream did not end after the kick");

    let (status, _) = call(&s, reqwest::Method::POST, &kick(&poll_conn["id"]), None).await;
    assert_eq!(status, 200);
    let (status, body) = tokio::time::timeout(WAIT, poll).await.expect("the poll was not answered").unwrap();
    assert_eq!((status, &body["messages"]), (200, &json!([])), "{body}");
    check_cursor(body["cursor"].as_str().unwrap());
    connections_until(&s, "nothing after both kicks", |v| v["total"] == 0).await;
    s.stop().await;
}
