//! Long-lived streams close at the token's `exp` (±1 s; `leeway = 0s`)
//! unless the client refreshed first: WebSocket 1008 `token_expired`, SSE
//! end of stream, gRPC UNAUTHENTICATED.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use rtgate::proto::client_frame::Op;
use rtgate::proto::server_frame::Frame;
use rtgate::proto::RefreshOp;
use serde_json::json;
use tonic::Code;

use crate::helpers::{client, sub_req, within, Conn};
use crate::support::Ended;
use crate::{now, server, token};

/// Seconds (fractional) between now and Unix second `exp`.
fn from_exp(exp: u64) -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    now - exp as f64
}

/// A token expiring at the whole second at least `secs` from now; (token, exp).
fn expiring(secs: u64, subscribe: &[&str]) -> (String, u64) {
    let exp = now() + secs;
    (token("alice", subscribe, &["chat.*"], exp as i64 - now() as i64), exp)
}

#[tokio::test]
async fn a_websocket_closes_at_exp_with_token_expired() {
    let s = server().await;
    let (t, exp) = expiring(2, &["chat.*"]);
    let mut c = s.ws(&format!("/v1/ws?topic=chat.a&access_token={t}")).await;
    c.assert_quiet("alive").await;
    let end = c.ended().await;
    let off = from_exp(exp);
    assert_eq!(end, Ended::Closed(1008, "token_expired".into()));
    assert!(off.abs() <= 1.0, "closed {off:.3}s from exp");
}

#[tokio::test]
async fn a_refresh_extends_a_websocket() {
    let s = server().await;
    let (t, exp) = expiring(2, &["chat.*"]);
    let mut c = s.ws(&format!("/v1/ws?topic=chat.a&access_token={t}")).await;
    let (later, later_exp) = expiring(5, &["chat.*"]);
    c.send(json!({"op": "refresh", "token": later, "ref": "r"})).await;
    assert_eq!(c.next_op("ack").await["ref"], "r");
    // Past the first token's expiry the connection still answers...
    tokio::time::sleep(Duration::from_secs_f64((1.5 - from_exp(exp)).max(0.0))).await;
    c.assert_quiet("after-first-exp").await;
    // ...and it closes at the refreshed token's.
    assert_eq!(c.ended().await, Ended::Closed(1008, "token_expired".into()));
    let off = from_exp(later_exp);
    assert!(off.abs() <= 1.0, "closed {off:.3}s from the refreshed exp");
}

#[tokio::test]
async fn an_sse_stream_ends_at_exp() {
    let s = server().await;
    let (t, exp) = expiring(2, &["chat.*"]);
    let res = s.http.get(s.url(&format!("/v1/sse?topic=chat.a&access_token={t}"))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    // The stream ends (no error) at exp.
    let ended = within(async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    });
    ended.await;
    let off = from_exp(exp);
    assert!(off.abs() <= 1.0, "ended {off:.3}s from exp");
}

#[tokio::test]
async fn grpc_subscribe_ends_unauthenticated_at_exp() {
    let s = server().await;
    let (t, exp) = expiring(2, &["chat.*"]);
    let mut c = client(&s).await;
    let mut req = tonic::Request::new(sub_req(&["chat.a"], ""));
    req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    let mut st = within(c.subscribe(req)).await.unwrap().into_inner();
    let status = within(st.message()).await.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().starts_with("unauthenticated:"), "{status:?}");
    let off = from_exp(exp);
    assert!(off.abs() <= 1.0, "ended {off:.3}s from exp");
}

#[tokio::test]
async fn a_refresh_extends_grpc_connect_and_expiry_ends_it() {
    let s = server().await;
    let (t, exp) = expiring(2, &["chat.*"]);
    let mut c = client(&s).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    let rx = within(c.connect(req)).await.unwrap().into_inner();
    let mut conn = Conn { tx, rx };
    let (later, later_exp) = expiring(4, &["chat.*"]);
    conn.send("r", Some(Op::Refresh(RefreshOp { token: later }))).await;
    match conn.next().await {
        Frame::Ack(a) => assert_eq!(a.r#ref, "r"),
        other => panic!("expected the refresh's ack, got {other:?}"),
    }
    let status = match within(conn.rx.message()).await {
        Ok(Some(f)) => panic!("unexpected frame {f:?}"),
        Ok(None) => panic!("ended without a status"),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("token_expired"), "{status:?}");
    let off = from_exp(later_exp);
    assert!(from_exp(exp) > 1.0 && off.abs() <= 1.0, "ended {off:.3}s from the refreshed exp");
}
