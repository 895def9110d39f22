//! The health service (following the engine) and server reflection.

use std::time::Duration;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::helpers::*;
use crate::support::redis::RedisServer;
use crate::support::*;

/// Reads a Watch stream until it reports `want`.
async fn watch_until(w: &mut Streaming<HealthCheckResponse>, want: ServingStatus, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left, w.message())
            .await
            .unwrap_or_else(|_| panic!("Watch did not report {want:?} within {limit:?}"))
            .expect("Watch failed")
            .expect("Watch ended");
        if r.status() == want {
            return;
        }
    }
}

#[tokio::test]
async fn health_serving_with_the_embedded_engine() {
    let s = TestServer::start("").await;
    let mut h = HealthClient::new(channel(&s).await);
    for svc in ["", "rtgate.v1.Gateway"] {
        assert_eq!(health(&mut h, svc).await.expect("check"), ServingStatus::Serving, "{svc:?}");
    }
    let st = health(&mut h, "no.such.Service").await.expect_err("unknown service");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let mut w = within(h.watch(HealthCheckRequest { service: "rtgate.v1.Gateway".into() }))
        .await
        .expect("watch")
        .into_inner();
    let first = within(w.message()).await.expect("watch").expect("first status");
    assert_eq!(first.status(), ServingStatus::Serving);
    let mut unknown = within(h.watch(HealthCheckRequest { service: "no.such.Service".into() }))
        .await
        .expect("watch")
        .into_inner();
    let first = within(unknown.message()).await.expect("watch").expect("first status");
    assert_eq!(first.status(), ServingStatus::ServiceUnknown);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_redis() {
    let mut r = RedisServer::start();
    let s = TestServer::start(&r.config("")).await;
    let mut h = HealthClient::new(channel(&s).await);
    let gw = "rtgate.v1.Gateway";
    for svc in ["", gw] {
        wait_health(&mut h, svc, ServingStatus::Serving, WAIT).await;
    }
    let mut w = within(h.watch(HealthCheckRequest { service: gw.into() })).await.expect("watch").into_inner();
    watch_until(&mut w, ServingStatus::Serving, WAIT).await;
    let mut c = client(&s).await;
    publish(&mut c, "grpc.health", "1").await;

    tokio::task::block_in_place(|| r.stop());
    for svc in ["", gw] {
        wait_health(&mut h, svc, ServingStatus::NotServing, WAIT).await;
    }
    watch_until(&mut w, ServingStatus::NotServing, WAIT).await;
    let st = publish_err(&mut c, publish_req("grpc.health", b"2", "")).await;
    assert_status(&st, Code::Unavailable, "unavailable");

    tokio::task::block_in_place(|| r.restart());
    for svc in ["", gw] {
        wait_health(&mut h, svc, ServingStatus::Serving, Duration::from_secs(20)).await;
    }
    watch_until(&mut w, ServingStatus::Serving, WAIT).await;
    publish(&mut c, "grpc.health", "3").await;
    s.stop().await;
}

/// Just enough of `google.protobuf.FileDescriptorProto` to check a
/// reflection answer.
#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceDescriptorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    method: Vec<MethodDescriptorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MethodDescriptorProto {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(bool, optional, tag = "5")]
    client_streaming: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    server_streaming: Option<bool>,
}

#[tokio::test]
async fn reflection_lists_services_and_describes_the_gateway() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let s = TestServer::start("").await;
    let ch = channel(&s).await;
    let mut r = ServerReflectionClient::new(ch.clone());
    let (tx, rx) = mpsc::channel(4);
    let mut answers =
        within(r.server_reflection_info(ReceiverStream::new(rx))).await.expect("reflection").into_inner();
    async fn ask_on(
        tx: &mpsc::Sender<ServerReflectionRequest>,
        answers: &mut Streaming<tonic_reflection::pb::v1::ServerReflectionResponse>,
        req: MessageRequest,
    ) -> Option<MessageResponse> {
        tx.send(ServerReflectionRequest { host: String::new(), message_request: Some(req) }).await.unwrap();
        within(answers.message()).await.expect("reflection answer").expect("stream ended").message_response
    }

    let Some(MessageResponse::ListServicesResponse(list)) =
        ask_on(&tx, &mut answers, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in ["rtgate.v1.Gateway", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        ask_on(&tx, &mut answers, MessageRequest::FileContainingSymbol("rtgate.v1.Gateway".into())).await
    else {
        panic!("expected a file descriptor")
    };
    let files: Vec<FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|b| FileDescriptorProto::decode(&b[..]).expect("descriptor"))
        .collect();
    let file = files
        .iter()
        .find(|f| f.name.as_deref() == Some("rtgate/v1/gateway.proto"))
        .unwrap_or_else(|| panic!("no rtgate/v1/gateway.proto in {files:?}"));
    assert_eq!(file.package.as_deref(), Some("rtgate.v1"));
    let svc = file.service.iter().find(|s| s.name.as_deref() == Some("Gateway")).expect("service Gateway");
    let methods: Vec<(&str, bool, bool)> = svc
        .method
        .iter()
        .map(|m| {
            (
                m.name.as_deref().unwrap(),
                m.client_streaming.unwrap_or(false),
                m.server_streaming.unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        methods,
        [
            ("Connect", true, true),
            ("Subscribe", false, true),
            ("Publish", false, false),
            ("History", false, false),
            ("Presence", false, false)
        ]
    );

    // A method name resolves too; an unknown symbol is NOT_FOUND.
    assert!(matches!(
        ask_on(&tx, &mut answers, MessageRequest::FileContainingSymbol("rtgate.v1.Gateway.Subscribe".into()))
            .await,
        Some(MessageResponse::FileDescriptorResponse(_))
    ));
    // An unknown symbol: NOT_FOUND, as an error response or (tonic-reflection)
    // as the stream's status.
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("rtgate.v1.Nope".into())),
    };
    tx.send(req).await.unwrap();
    match within(answers.message()).await {
        Ok(Some(r)) => match r.message_response {
            Some(MessageResponse::ErrorResponse(e)) => {
                assert_eq!(e.error_code, Code::NotFound as i32, "{e:?}")
            }
            other => panic!("expected an error response, got {other:?}"),
        },
        Ok(None) => panic!("reflection stream ended without an answer"),
        Err(st) => assert_eq!(st.code(), Code::NotFound, "{st:?}"),
    }
    drop(tx);

    // The older v1alpha service (older grpcurl) answers too.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaReq;
        let req = AlphaReq {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        };
        let mut a = Alpha::new(ch);
        let mut answers =
            within(a.server_reflection_info(tokio_stream::once(req))).await.expect("v1alpha").into_inner();
        match within(answers.message()).await.expect("answer").expect("ended").message_response {
            Some(AlphaResponse::ListServicesResponse(l)) => {
                assert!(l.service.iter().any(|s| s.name == "rtgate.v1.Gateway"), "{l:?}")
            }
            other => panic!("{other:?}"),
        }
    }
    s.stop().await;
}
