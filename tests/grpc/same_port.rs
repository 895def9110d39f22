//! Plain HTTP/1.1 and HTTP/2 share the port with gRPC; unknown methods are
//! UNIMPLEMENTED.

use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::PingOp;
use serde_json::{json, Value};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

use crate::helpers::*;
use crate::support::*;

#[tokio::test]
async fn plain_http_on_the_same_port_and_unknown_methods() {
    let s = TestServer::start("").await;
    let ch = channel(&s).await;
    let mut c = GatewayClient::new(ch.clone());
    let t = "grpc.port";
    let r1 = publish(&mut c, t, r#"{"via":"grpc"}"#).await.id;

    // HTTP/1.1.
    let (status, body) = s.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let r2 = s.publish(t, r#"{"via":"http"}"#).await;
    let (status, body) = s.get(&format!("/v1/history/{t}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["messages"][0]["data"], json!({"via": "grpc"}));

    // HTTP/2 without a gRPC content type goes to the HTTP endpoints.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let res = within(h2.get(s.url("/healthz")).send()).await.expect("h2 healthz");
    assert_eq!((res.status().as_u16(), res.version()), (200, reqwest::Version::HTTP_2));
    let res = within(h2.post(s.url(&format!("/v1/publish/{t}"))).body(r#"{"via":"h2"}"#).send())
        .await
        .expect("h2 publish");
    assert_eq!(res.status().as_u16(), 200);
    let v: Value = within(res.json()).await.expect("json");
    let r3 = v["id"].as_str().unwrap().to_owned();
    let res = within(h2.get(s.url("/v1/nope")).send()).await.expect("h2 get");
    assert_eq!(res.status().as_u16(), 404);

    // Unknown methods and services: UNIMPLEMENTED.
    let mut g = tonic::client::Grpc::new(ch.clone());
    for path in ["/rtgate.v1.Gateway/Nope", "/rtgate.v2.Gateway/Publish", "/no.such.Service/Call"] {
        within(g.ready()).await.expect("ready");
        let res: Result<tonic::Response<PingOp>, Status> = within(g.unary(
            tonic::Request::new(PingOp {}),
            PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        ))
        .await;
        let st = res.expect_err(path);
        assert_eq!(st.code(), Code::Unimplemented, "{path}: {st:?}");
    }

    // gRPC on the same connection still works and sees all three.
    let h = history(&mut c, t, "", 0).await;
    assert_eq!(ids(&h.messages), [r1, r2, r3]);
    assert_eq!(h.messages[2].data, br#"{"via":"h2"}"#);
    s.stop().await;
}
