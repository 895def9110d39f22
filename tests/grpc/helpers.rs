//! The gRPC client side shared by the sections: the generated client with
//! bounded waits, checked messages, the Connect call as [`Conn`], markers
//! that prove a stream quiet, and health checks.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rtgate::proto::client_frame::Op;
use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::server_frame::Frame;
use rtgate::proto::{
    Ack, ClientFrame, Error as ErrorFrame, HistoryReply, HistoryRequest, Message, PingOp, Pong, PublishReply,
    PublishRequest, ServerFrame, SubscribeOp, SubscribeRequest,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::support::{by_topic, check_cursor, pid, TestServer, WAIT};

pub(crate) type Client = GatewayClient<Channel>;

/// Awaits `f`, failing the test after `WAIT`.
pub(crate) async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

pub(crate) fn endpoint(s: &TestServer) -> Endpoint {
    Endpoint::from_shared(format!("http://{}", s.addr)).expect("endpoint")
}

/// A new HTTP/2 connection to `s`.
pub(crate) async fn channel(s: &TestServer) -> Channel {
    within(endpoint(s).connect()).await.expect("gRPC connect")
}

pub(crate) async fn client(s: &TestServer) -> Client {
    GatewayClient::new(channel(s).await)
}

pub(crate) fn publish_req(topic: &str, data: &[u8], key: &str) -> PublishRequest {
    PublishRequest {
        topic: topic.to_owned(),
        data: data.to_vec(),
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

/// Publish rpc; panics unless it succeeds.
pub(crate) async fn publish(c: &mut Client, topic: &str, data: &str) -> PublishReply {
    publish_key(c, topic, data, "").await
}

pub(crate) async fn publish_key(c: &mut Client, topic: &str, data: &str, key: &str) -> PublishReply {
    let r = within(c.publish(publish_req(topic, data.as_bytes(), key)))
        .await
        .unwrap_or_else(|e| panic!("publish on {topic}: {e:?}"))
        .into_inner();
    assert_eq!(r.topic, topic, "{r:?}");
    pid(&r.id);
    assert!(r.ts > 0, "{r:?}");
    r
}

/// Publish rpc that must fail.
pub(crate) async fn publish_err(c: &mut Client, req: PublishRequest) -> Status {
    let what = format!("{}: {} bytes, key {:?}", req.topic, req.data.len(), req.idempotency_key);
    match within(c.publish(req)).await {
        Ok(r) => panic!("publish {what} succeeded: {:?}", r.into_inner()),
        Err(s) => s,
    }
}

pub(crate) async fn history(c: &mut Client, topic: &str, after: &str, limit: u32) -> HistoryReply {
    within(c.history(HistoryRequest { topic: topic.to_owned(), after: after.to_owned(), limit }))
        .await
        .unwrap_or_else(|e| panic!("history of {topic}: {e:?}"))
        .into_inner()
}

pub(crate) fn sub_req(topics: &[&str], cursor: &str) -> SubscribeRequest {
    SubscribeRequest { topics: topics.iter().map(|t| t.to_string()).collect(), cursor: cursor.to_owned() }
}

/// Subscribe rpc; when it returns, the subscription is live.
pub(crate) async fn subscribe(c: &mut Client, topics: &[&str], cursor: &str) -> Streaming<Message> {
    within(c.subscribe(sub_req(topics, cursor)))
        .await
        .unwrap_or_else(|e| panic!("subscribe {topics:?}: {e:?}"))
        .into_inner()
}

pub(crate) async fn subscribe_err(c: &mut Client, topics: &[&str], cursor: &str) -> Status {
    match within(c.subscribe(sub_req(topics, cursor))).await {
        Ok(_) => panic!("subscribe {topics:?} with cursor {cursor:?} succeeded"),
        Err(s) => s,
    }
}

/// A status with `code` whose message starts with the contract's error code.
pub(crate) fn assert_status(s: &Status, code: Code, prefix: &str) {
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().starts_with(&format!("{prefix}:")), "message should start with {prefix:?}: {s:?}");
}

/// A streamed message: `<ms>-<seq>` id, a timestamp, a contract cursor.
pub(crate) fn check_msg(m: &Message) {
    assert!(!m.topic.is_empty(), "{m:?}");
    pid(&m.id);
    assert!(m.ts > 0, "{m:?}");
    check_cursor(&m.cursor);
}

pub(crate) async fn next_msg(st: &mut Streaming<Message>) -> Message {
    match within(st.message()).await {
        Ok(Some(m)) => {
            check_msg(&m);
            m
        }
        Ok(None) => panic!("Subscribe stream ended"),
        Err(s) => panic!("Subscribe stream failed: {s:?}"),
    }
}

pub(crate) async fn msgs(st: &mut Streaming<Message>, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_msg(st).await);
    }
    out
}

/// Reads until the stream fails; returns the messages before and the status.
pub(crate) async fn end_of(st: &mut Streaming<Message>) -> (Vec<Message>, Status) {
    let mut out = vec![];
    loop {
        match within(st.message()).await {
            Ok(Some(m)) => {
                check_msg(&m);
                out.push(m);
            }
            Ok(None) => panic!("stream ended with OK after {} messages, expected an error status", out.len()),
            Err(s) => return (out, s),
        }
    }
}

pub(crate) fn strictly_increasing(ids: &[String]) -> bool {
    ids.windows(2).all(|w| pid(&w[0]) < pid(&w[1]))
}

pub(crate) fn want(pairs: &[(&str, Vec<String>)]) -> BTreeMap<String, Vec<String>> {
    pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(t, v)| (t.to_string(), v.clone())).collect()
}

/// Publishes one marker per topic and asserts they are the very next
/// messages of each stream (every stream subscribed to all of `topics`):
/// nothing (no duplicate, no stray replay) came before.
pub(crate) async fn assert_quiet(c: &mut Client, topics: &[&str], streams: &mut [&mut Streaming<Message>]) {
    let mut expect = BTreeMap::new();
    for t in topics {
        expect.insert(t.to_string(), vec![publish(c, t, r#"{"marker":true}"#).await.id]);
    }
    for st in streams.iter_mut() {
        let got = msgs(st, topics.len()).await;
        assert_eq!(by_topic(&got), expect, "expected only the markers");
    }
}

/// One Connect call: frames go in through `tx`, out through `rx`.
pub(crate) struct Conn {
    pub(crate) tx: mpsc::Sender<ClientFrame>,
    pub(crate) rx: Streaming<ServerFrame>,
}

fn answers(f: &Frame) -> Option<&str> {
    match f {
        Frame::Ack(a) => Some(&a.r#ref),
        Frame::Error(e) => Some(&e.r#ref),
        Frame::Pong(p) => Some(&p.r#ref),
        Frame::Message(_) | Frame::Gap(_) | Frame::PresenceEvent(_) => None,
    }
}

impl Conn {
    pub(crate) async fn open(c: &mut Client) -> Conn {
        let (tx, rx) = mpsc::channel(64);
        let rx = within(c.connect(ReceiverStream::new(rx))).await.expect("Connect").into_inner();
        Conn { tx, rx }
    }

    pub(crate) async fn send(&self, r: &str, op: Option<Op>) {
        within(self.tx.send(ClientFrame { r#ref: r.to_owned(), op }))
            .await
            .expect("Connect request stream closed");
    }

    pub(crate) async fn next(&mut self) -> Frame {
        match within(self.rx.message()).await {
            Ok(Some(ServerFrame { frame: Some(f) })) => f,
            Ok(Some(ServerFrame { frame: None })) => panic!("empty ServerFrame"),
            Ok(None) => panic!("Connect stream ended"),
            Err(s) => panic!("Connect stream failed: {s:?}"),
        }
    }

    pub(crate) async fn message(&mut self) -> Message {
        match self.next().await {
            Frame::Message(m) => {
                check_msg(&m);
                m
            }
            f => panic!("expected a message frame, got {f:?}"),
        }
    }

    pub(crate) async fn messages(&mut self, n: usize) -> Vec<Message> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.message().await);
        }
        out
    }

    /// Frames up to the answer (ack, error or pong) to `r`: (the frames
    /// before it, the answer).
    pub(crate) async fn until_ref(&mut self, r: &str) -> (Vec<Frame>, Frame) {
        let mut before = vec![];
        loop {
            let f = self.next().await;
            if answers(&f) == Some(r) {
                return (before, f);
            }
            before.push(f);
        }
    }

    /// Subscribes; returns the frames before the ack (gaps) and the ack.
    pub(crate) async fn subscribe(&mut self, topic: &str, after: Option<&str>, r: &str) -> (Vec<Frame>, Ack) {
        let op =
            SubscribeOp { topic: topic.to_owned(), after: after.map(str::to_owned), ..Default::default() };
        self.send(r, Some(Op::Subscribe(op))).await;
        match self.until_ref(r).await {
            (before, Frame::Ack(a)) => (before, a),
            (_, f) => panic!("subscribe {topic}: expected an ack, got {f:?}"),
        }
    }

    /// Sends `op` and asserts the very next frame is an error for it.
    pub(crate) async fn error(&mut self, r: &str, op: Option<Op>) -> ErrorFrame {
        self.send(r, op).await;
        match self.next().await {
            Frame::Error(e) => {
                assert_eq!(e.r#ref, r, "{e:?}");
                assert!(!e.message.is_empty(), "{e:?}");
                e
            }
            f => panic!("expected an error frame for {r}, got {f:?}"),
        }
    }

    /// Pings and asserts the very next frame is its pong.
    pub(crate) async fn ping_quiet(&mut self, r: &str) {
        self.send(r, Some(Op::Ping(PingOp {}))).await;
        let f = self.next().await;
        assert_eq!(f, Frame::Pong(Pong { r#ref: r.to_owned() }), "expected only the pong");
    }

    /// Reads until the stream fails: (frames before, status).
    pub(crate) async fn end(&mut self) -> (Vec<Frame>, Status) {
        let mut out = vec![];
        loop {
            match within(self.rx.message()).await {
                Ok(Some(f)) => out.push(f.frame.expect("frame")),
                Ok(None) => panic!("Connect ended with OK after {out:?}, expected an error status"),
                Err(s) => return (out, s),
            }
        }
    }
}

pub(crate) async fn health(h: &mut HealthClient<Channel>, service: &str) -> Result<ServingStatus, Status> {
    within(h.check(HealthCheckRequest { service: service.into() })).await.map(|r| r.into_inner().status())
}

/// Polls the health of `service` until it is `want` (bounded by `limit`).
pub(crate) async fn wait_health(
    h: &mut HealthClient<Channel>,
    service: &str,
    want: ServingStatus,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let got = health(h, service).await;
        if got.as_ref().is_ok_and(|s| *s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health of {service:?} still {got:?} after {limit:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling, bounded
    }
}
