//! gRPC transport end to end (contract §1, §2, §4, §7 and the comments of
//! proto/rtgate/v1/gateway.proto) against the real server with the generated
//! tonic client: Publish/History, Subscribe (multi-topic, resume by cursor
//! while publishing, gaps), Connect (the WebSocket protocol as protobuf),
//! error codes, health and reflection, cursors shared with WebSocket and SSE,
//! slow and stalled consumers, shutdown, and plain HTTP on the same port.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;
use support::redis::{cli, RedisServer};
use support::sse::{sse_path, Sse};
use support::*;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prost::Message as _;
use rtgate::proto::client_frame::Op;
use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::server_frame::Frame;
use rtgate::proto::{
    Ack, ClientFrame, Error as ErrorFrame, Gap, HistoryReply, HistoryRequest, Message, PingOp, Pong,
    PublishOp, PublishReply, PublishRequest, RefreshOp, ServerFrame, SubscribeOp, SubscribeRequest,
    UnsubscribeOp,
};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

// ---------------------------------------------------------------- helpers

type Client = GatewayClient<Channel>;

/// Awaits `f`, failing the test after `WAIT`.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

fn endpoint(s: &TestServer) -> Endpoint {
    Endpoint::from_shared(format!("http://{}", s.addr)).expect("endpoint")
}

/// A new HTTP/2 connection to `s`.
async fn channel(s: &TestServer) -> Channel {
    within(endpoint(s).connect()).await.expect("gRPC connect")
}

async fn client(s: &TestServer) -> Client {
    GatewayClient::new(channel(s).await)
}

fn publish_req(topic: &str, data: &[u8], key: &str) -> PublishRequest {
    PublishRequest { topic: topic.to_owned(), data: data.to_vec(), idempotency_key: key.to_owned() }
}

/// Publish rpc; panics unless it succeeds.
async fn publish(c: &mut Client, topic: &str, data: &str) -> PublishReply {
    publish_key(c, topic, data, "").await
}

async fn publish_key(c: &mut Client, topic: &str, data: &str, key: &str) -> PublishReply {
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
async fn publish_err(c: &mut Client, req: PublishRequest) -> Status {
    let what = format!("{}: {} bytes, key {:?}", req.topic, req.data.len(), req.idempotency_key);
    match within(c.publish(req)).await {
        Ok(r) => panic!("publish {what} succeeded: {:?}", r.into_inner()),
        Err(s) => s,
    }
}

async fn history(c: &mut Client, topic: &str, after: &str, limit: u32) -> HistoryReply {
    within(c.history(HistoryRequest { topic: topic.to_owned(), after: after.to_owned(), limit }))
        .await
        .unwrap_or_else(|e| panic!("history of {topic}: {e:?}"))
        .into_inner()
}

fn sub_req(topics: &[&str], cursor: &str) -> SubscribeRequest {
    SubscribeRequest { topics: topics.iter().map(|t| t.to_string()).collect(), cursor: cursor.to_owned() }
}

/// Subscribe rpc; when it returns, the subscription is live.
async fn subscribe(c: &mut Client, topics: &[&str], cursor: &str) -> Streaming<Message> {
    within(c.subscribe(sub_req(topics, cursor)))
        .await
        .unwrap_or_else(|e| panic!("subscribe {topics:?}: {e:?}"))
        .into_inner()
}

async fn subscribe_err(c: &mut Client, topics: &[&str], cursor: &str) -> Status {
    match within(c.subscribe(sub_req(topics, cursor))).await {
        Ok(_) => panic!("subscribe {topics:?} with cursor {cursor:?} succeeded"),
        Err(s) => s,
    }
}

/// A status with `code` whose message starts with the contract's error code.
fn assert_status(s: &Status, code: Code, prefix: &str) {
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().starts_with(&format!("{prefix}:")), "message should start with {prefix:?}: {s:?}");
}

/// A streamed message: `<ms>-<seq>` id, a timestamp, a contract cursor.
fn check_msg(m: &Message) {
    assert!(!m.topic.is_empty(), "{m:?}");
    pid(&m.id);
    assert!(m.ts > 0, "{m:?}");
    check_cursor(&m.cursor);
}

async fn next_msg(st: &mut Streaming<Message>) -> Message {
    match within(st.message()).await {
        Ok(Some(m)) => {
            check_msg(&m);
            m
        }
        Ok(None) => panic!("Subscribe stream ended"),
        Err(s) => panic!("Subscribe stream failed: {s:?}"),
    }
}

async fn msgs(st: &mut Streaming<Message>, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_msg(st).await);
    }
    out
}

/// Reads until the stream fails; returns the messages before and the status.
async fn end_of(st: &mut Streaming<Message>) -> (Vec<Message>, Status) {
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

fn strictly_increasing(ids: &[String]) -> bool {
    ids.windows(2).all(|w| pid(&w[0]) < pid(&w[1]))
}

fn want(pairs: &[(&str, Vec<String>)]) -> BTreeMap<String, Vec<String>> {
    pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(t, v)| (t.to_string(), v.clone())).collect()
}

/// Publishes one marker per topic and asserts they are the very next
/// messages of each stream (every stream subscribed to all of `topics`):
/// nothing (no duplicate, no stray replay) came before.
async fn assert_quiet(c: &mut Client, topics: &[&str], streams: &mut [&mut Streaming<Message>]) {
    let mut expect = BTreeMap::new();
    for t in topics {
        expect.insert(t.to_string(), vec![publish(c, t, r#"{"marker":true}"#).await.id]);
    }
    for st in streams.iter_mut() {
        let got = msgs(st, topics.len()).await;
        assert_eq!(by_topic(&got), expect, "expected only the markers");
    }
}

/// The `data` member of a JSON message, as the exact text it holds.
fn raw_data(json_text: &str) -> String {
    let v: HashMap<String, Box<RawValue>> = serde_json::from_str(json_text).expect("json object");
    v.get("data").unwrap_or_else(|| panic!("no data in {json_text}")).get().to_owned()
}

/// One Connect call: frames go in through `tx`, out through `rx`.
struct Conn {
    tx: mpsc::Sender<ClientFrame>,
    rx: Streaming<ServerFrame>,
}

fn answers(f: &Frame) -> Option<&str> {
    match f {
        Frame::Ack(a) => Some(&a.r#ref),
        Frame::Error(e) => Some(&e.r#ref),
        Frame::Pong(p) => Some(&p.r#ref),
        Frame::Message(_) | Frame::Gap(_) => None,
    }
}

impl Conn {
    async fn open(c: &mut Client) -> Conn {
        let (tx, rx) = mpsc::channel(64);
        let rx = within(c.connect(ReceiverStream::new(rx))).await.expect("Connect").into_inner();
        Conn { tx, rx }
    }

    async fn send(&self, r: &str, op: Option<Op>) {
        within(self.tx.send(ClientFrame { r#ref: r.to_owned(), op }))
            .await
            .expect("Connect request stream closed");
    }

    async fn next(&mut self) -> Frame {
        match within(self.rx.message()).await {
            Ok(Some(ServerFrame { frame: Some(f) })) => f,
            Ok(Some(ServerFrame { frame: None })) => panic!("empty ServerFrame"),
            Ok(None) => panic!("Connect stream ended"),
            Err(s) => panic!("Connect stream failed: {s:?}"),
        }
    }

    async fn message(&mut self) -> Message {
        match self.next().await {
            Frame::Message(m) => {
                check_msg(&m);
                m
            }
            f => panic!("expected a message frame, got {f:?}"),
        }
    }

    async fn messages(&mut self, n: usize) -> Vec<Message> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.message().await);
        }
        out
    }

    /// Frames up to the answer (ack, error or pong) to `r`: (the frames
    /// before it, the answer).
    async fn until_ref(&mut self, r: &str) -> (Vec<Frame>, Frame) {
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
    async fn subscribe(&mut self, topic: &str, after: Option<&str>, r: &str) -> (Vec<Frame>, Ack) {
        let op = SubscribeOp { topic: topic.to_owned(), after: after.map(str::to_owned) };
        self.send(r, Some(Op::Subscribe(op))).await;
        match self.until_ref(r).await {
            (before, Frame::Ack(a)) => (before, a),
            (_, f) => panic!("subscribe {topic}: expected an ack, got {f:?}"),
        }
    }

    /// Sends `op` and asserts the very next frame is an error for it.
    async fn error(&mut self, r: &str, op: Option<Op>) -> ErrorFrame {
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
    async fn ping_quiet(&mut self, r: &str) {
        self.send(r, Some(Op::Ping(PingOp {}))).await;
        let f = self.next().await;
        assert_eq!(f, Frame::Pong(Pong { r#ref: r.to_owned() }), "expected only the pong");
    }

    /// Reads until the stream fails: (frames before, status).
    async fn end(&mut self) -> (Vec<Frame>, Status) {
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

fn bad_topic_error(e: &ErrorFrame) {
    assert_eq!((e.code.as_str(), e.status), ("bad_topic", Code::InvalidArgument as i32), "{e:?}");
}

fn bad_request_error(e: &ErrorFrame) {
    assert_eq!((e.code.as_str(), e.status), ("bad_request", Code::InvalidArgument as i32), "{e:?}");
}

/// A TCP connection that records when the server closed it (a read saw the
/// end of the stream or an error).
struct Watched {
    tcp: TcpStream,
    closed: Arc<watch::Sender<bool>>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if let Poll::Ready(res) = &r {
            if res.is_err() || buf.filled().len() == before {
                self.closed.send_replace(true);
            }
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Connects tonic through [`Watched`] TCP connections.
#[derive(Clone)]
struct WatchedConnector {
    addr: SocketAddr,
    closed: Arc<watch::Sender<bool>>,
}

impl tonic::codegen::Service<Uri> for WatchedConnector {
    type Response = TokioIo<Watched>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Watched>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, closed) = (self.addr, Arc::clone(&self.closed));
        Box::pin(async move { Ok(TokioIo::new(Watched { tcp: TcpStream::connect(addr).await?, closed })) })
    }
}

// ---------------------------------------------------------------- Publish and History

#[tokio::test]
async fn publish_then_history_ids_data_paging_and_idempotency() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let t = "grpc.hist";
    let datas = [
        r#"{"z":1,  "a" : [ true, null, "h\u00e9 \"x\"" ], "n": 1.50}"#,
        "2",
        "null",
        r#""str""#,
        "[ {\"b\":2,\n\"a\":1} ]",
        r#"{"i":5}"#,
    ];
    let mut replies = vec![];
    for d in datas {
        replies.push(publish(&mut c, t, d).await);
    }
    let published: Vec<String> = replies.iter().map(|r| r.id.clone()).collect();
    assert!(strictly_increasing(&published), "{published:?}");

    // Everything, in order, byte for byte.
    let h = history(&mut c, t, "", 0).await;
    assert!(!h.truncated);
    assert_eq!(ids(&h.messages), published);
    for ((m, r), d) in h.messages.iter().zip(&replies).zip(datas) {
        assert_eq!(m.topic, t);
        assert_eq!(m.data, d.as_bytes(), "data of {}: {:?}", m.id, String::from_utf8_lossy(&m.data));
        assert_eq!(m.ts, r.ts, "{m:?}");
        assert!(m.cursor.is_empty(), "History messages carry no cursor: {m:?}");
        assert!(m.gap.is_none());
    }

    // Paging.
    assert_eq!(ids(&history(&mut c, t, &published[1], 0).await.messages), published[2..]);
    assert_eq!(ids(&history(&mut c, t, "", 2).await.messages), published[4..], "newest 2");
    assert_eq!(ids(&history(&mut c, t, &published[0], 2).await.messages), published[1..3]);
    let last = history(&mut c, t, &published[5], 0).await;
    assert!(last.messages.is_empty() && !last.truncated, "{last:?}");
    let mut paged = vec![];
    let mut after = "0-0".to_owned();
    loop {
        let page = history(&mut c, t, &after, 4).await;
        assert!(!page.truncated, "nothing was trimmed");
        let Some(m) = page.messages.last() else { break };
        after = m.id.clone();
        paged.extend(ids(&page.messages));
    }
    assert_eq!(paged, published);
    assert!(history(&mut c, "grpc.hist.empty", "", 0).await.messages.is_empty());

    // HTTP sees the same ids.
    let (status, v) = s.get(&format!("/v1/history/{t}")).await;
    assert_eq!(status, 200, "{v}");
    let http_ids: Vec<&str> =
        v["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(http_ids, published);

    // Idempotency: a repeat answers the first id and publishes nothing.
    let k = "order-42:a/b~{x}";
    let t2 = "grpc.idem";
    let first = publish_key(&mut c, t2, r#"{"n":1}"#, k).await;
    let again = publish_key(&mut c, t2, r#"{"n":1}"#, k).await;
    let other_data = publish_key(&mut c, t2, r#"{"n":2}"#, k).await;
    assert_eq!(again.id, first.id);
    assert_eq!(other_data.id, first.id);
    let h = history(&mut c, t2, "", 0).await;
    assert_eq!(ids(&h.messages), std::slice::from_ref(&first.id));
    assert_eq!(h.messages[0].data, br#"{"n":1}"#);
    let second = publish_key(&mut c, t2, r#"{"n":3}"#, "another-key").await;
    assert!(pid(&second.id) > pid(&first.id));

    // Invalid keys: INVALID_ARGUMENT, nothing published.
    for bad in ["a b".to_owned(), "clé".to_owned(), "x".repeat(257), "tab\t".to_owned()] {
        let st = publish_err(&mut c, publish_req(t2, b"1", &bad)).await;
        assert_status(&st, Code::InvalidArgument, "bad_request");
    }
    publish_key(&mut c, t2, "1", &"k".repeat(256)).await;
    assert_eq!(history(&mut c, t2, "", 0).await.messages.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn publish_and_history_errors() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1024\n").await;
    let mut c = client(&s).await;
    let t = "grpc.err";
    let long = "t".repeat(129);
    for bad in ["a b", "", "slash/no", "é", long.as_str()] {
        let st = publish_err(&mut c, publish_req(bad, b"1", "")).await;
        assert_status(&st, Code::InvalidArgument, "bad_topic");
        let st = within(c.history(HistoryRequest { topic: bad.to_owned(), ..Default::default() }))
            .await
            .expect_err("history of a bad topic");
        assert_status(&st, Code::InvalidArgument, "bad_topic");
    }
    publish(&mut c, &"t".repeat(128), "1").await;
    publish(&mut c, "A-z_0.9:@-", "1").await;

    for bad in [&b"{"[..], &b""[..], &b"   "[..], &b"{\"a\":1} {\"b\":2}"[..], &b"nul"[..], &b"\xff\xfe"[..]]
    {
        let st = publish_err(&mut c, publish_req(t, bad, "")).await;
        assert_status(&st, Code::InvalidArgument, "bad_request");
    }

    // limits.max_message_bytes: exactly at the limit is accepted, one over is
    // too_large.
    let at_limit = format!("\"{}\"", "x".repeat(1022));
    assert_eq!(at_limit.len(), 1024);
    let ok = publish(&mut c, t, &at_limit).await;
    let over = format!("\"{}\"", "x".repeat(1023));
    let st = publish_err(&mut c, publish_req(t, over.as_bytes(), "")).await;
    assert_status(&st, Code::ResourceExhausted, "too_large");

    // History: a bad `after` is bad_request; the topic holds only the
    // accepted message.
    for bad in ["x", "1-", "-1", "1-2-3", " 1-2"] {
        let st = within(c.history(HistoryRequest { topic: t.to_owned(), after: bad.to_owned(), limit: 0 }))
            .await
            .expect_err("bad after");
        assert_status(&st, Code::InvalidArgument, "bad_request");
    }
    assert_eq!(ids(&history(&mut c, t, "", 0).await.messages), [ok.id]);
    s.stop().await;
}

/// Contract §2: `too_large` is RESOURCE_EXHAUSTED on gRPC, whatever the
/// size. (Connect handles a frame over the decoder's limit that way.)
#[tokio::test]
async fn publish_far_over_the_limit_is_resource_exhausted() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1024\n").await;
    let mut c = client(&s).await;
    let t = "grpc.toolarge";
    let data = format!("\"{}\"", "x".repeat(8 * 1024));
    let st = publish_err(&mut c, publish_req(t, data.as_bytes(), "")).await;
    assert_eq!(
        st.code(),
        Code::ResourceExhausted,
        "Publish of {} bytes with limits.max_message_bytes = 1024: {st:?}",
        data.len()
    );
    assert!(history(&mut c, t, "", 0).await.messages.is_empty());
    // The channel still works.
    publish(&mut c, t, "1").await;
    s.stop().await;
}

// ---------------------------------------------------------------- Subscribe

#[tokio::test]
async fn subscribe_single_and_multi_topic() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let (a, b) = ("grpc.sub.a", "grpc.sub.b");

    // Single topic.
    let mut one = subscribe(&mut c, &[a], "").await;
    let mut published = vec![];
    for i in 0..5 {
        published.push(publish(&mut c, a, &format!(r#"{{"i": {i}}}"#)).await);
    }
    let got = msgs(&mut one, 5).await;
    assert_eq!(ids(&got), published.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
    for (i, (m, r)) in got.iter().zip(&published).enumerate() {
        assert_eq!(m.topic, a);
        assert_eq!(m.data, format!(r#"{{"i": {i}}}"#).as_bytes());
        assert_eq!(m.ts, r.ts);
        assert!(m.gap.is_none());
    }
    assert!(strictly_increasing(&ids(&got)));

    // Two topics on one stream (and a topic named twice counts once).
    let mut two = subscribe(&mut c, &[a, b, a], "").await;
    let mut want_a = vec![];
    let mut want_b = vec![];
    for i in 0..10 {
        let t = if i % 3 == 0 { b } else { a };
        let id = publish(&mut c, t, &format!(r#"{{"i":{i}}}"#)).await.id;
        if t == a {
            want_a.push(id)
        } else {
            want_b.push(id)
        }
    }
    let got2 = msgs(&mut two, 10).await;
    assert_eq!(by_topic(&got2), want(&[(a, want_a.clone()), (b, want_b.clone())]));
    for ids in by_topic(&got2).values() {
        assert!(strictly_increasing(ids), "{ids:?}");
    }
    // The single-topic stream got only its topic.
    assert_eq!(ids(&msgs(&mut one, want_a.len()).await), want_a);

    // The last cursor of the two-topic stream resumes both topics.
    let cursor = got2.last().unwrap().cursor.clone();
    drop(two);
    let ra = publish(&mut c, a, "1").await.id;
    let rb = publish(&mut c, b, "2").await.id;
    let mut back = subscribe(&mut c, &[a, b], &cursor).await;
    let got3 = msgs(&mut back, 2).await;
    assert_eq!(by_topic(&got3), want(&[(a, vec![ra.clone()]), (b, vec![rb])]));
    assert_eq!(next_msg(&mut one).await.id, ra, "the single-topic stream goes on");

    assert_quiet(&mut c, &[a], &mut [&mut one, &mut back]).await;
    assert_quiet(&mut c, &[a, b], &mut [&mut back]).await;

    // A cursor naming only `a` (the single-topic stream's after its first
    // five messages): `a` resumes after that position, `b` starts from now.
    let one_cursor = got.last().unwrap().cursor.clone();
    let rb2 = publish(&mut c, b, r#"{"before":"subscribe"}"#).await.id;
    let mut partial = subscribe(&mut c, &[a, b], &one_cursor).await;
    let rb3 = publish(&mut c, b, r#"{"after":"subscribe"}"#).await.id;
    let resumed_a = ids(&history(&mut c, a, &got.last().unwrap().id, 0).await.messages);
    assert_eq!(resumed_a.len(), want_a.len() + 3, "want_a, ra and two markers");
    let got4 = msgs(&mut partial, resumed_a.len() + 1).await;
    assert_eq!(by_topic(&got4), want(&[(a, resumed_a), (b, vec![rb3])]), "{rb2} is before the subscription");
    assert_quiet(&mut c, &[a, b], &mut [&mut partial]).await;
    s.stop().await;
}

/// Subscriber A reads part of two topics while a publisher alternates
/// between them, drops; B resumes from A's last cursor while the publisher
/// keeps going and must get exactly the rest of each topic, in order.
async fn resume_while_publishing(engine: Engine<'_>) {
    const A_READS: usize = 37;
    let total = engine.pick(600, 300);
    let pause_at = total / 3;
    assert!(pause_at > A_READS);
    let s = TestServer::start(&engine.config("[history]\nreplay_page = 7\n")).await;
    let (ta, tb) = ("grpc.res.a", "grpc.res.b");
    let mut c = client(&s).await;
    let mut a = subscribe(&mut c, &[ta, tb], "").await;

    let (go_tx, go_rx) = oneshot::channel::<()>();
    let mut pc = client(&s).await;
    let publisher = tokio::spawn(async move {
        let mut go = Some(go_rx);
        let mut published = Vec::with_capacity(total);
        for i in 0..total {
            if i == pause_at {
                within(go.take().unwrap()).await.expect("go");
            }
            let t = if i % 2 == 0 { ta } else { tb };
            let id = publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id;
            published.push((t.to_owned(), id));
        }
        published
    });

    let got_a = msgs(&mut a, A_READS).await;
    let last = got_a.last().unwrap().cursor.clone();
    drop(a);
    go_tx.send(()).expect("publisher alive");
    let mut b = subscribe(&mut c, &[ta, tb], &last).await;

    let published = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher timed out")
        .expect("publisher");
    let index = publish_index(&published);
    let expected = rest_after(&published, &by_topic(&got_a));
    let n: usize = expected.values().map(Vec::len).sum();
    assert_eq!(n, total - A_READS);

    let got_b = msgs(&mut b, n).await;
    assert_eq!(by_topic(&got_b), expected, "B resumes exactly after {last}");
    for m in &got_b {
        let i = index[&(m.topic.as_str(), m.id.as_str())];
        assert_eq!(m.data, format!(r#"{{"i":{i}}}"#).as_bytes());
        assert!(m.gap.is_none());
    }
    assert_quiet(&mut c, &[ta, tb], &mut [&mut b]).await;
    s.stop().await;
}

crate::engine_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    resume_by_cursor_while_publishing, redis_resume_by_cursor_while_publishing => resume_while_publishing
}

/// History trimmed past the resume point: the first message of the topic
/// carries `gap {topic, after, oldest}`, then the retained messages follow;
/// resuming from that message's cursor reports no gap again.
async fn subscribe_gap(engine: Engine<'_>) {
    let s = TestServer::start(&engine.config("[history]\nmax_len = 5\n")).await;
    let (t, other) = ("grpc.gap", "grpc.gap.other");
    let mut c = client(&s).await;
    let mut a = subscribe(&mut c, &[t, other], "").await;
    let mut ids = vec![publish(&mut c, t, r#"{"n":0}"#).await.id];
    let m0 = next_msg(&mut a).await;
    assert_eq!(m0.id, ids[0]);
    assert!(m0.gap.is_none());
    drop(a);
    for n in 1..=10 {
        ids.push(publish(&mut c, t, &format!(r#"{{"n":{n}}}"#)).await.id);
    }
    let other_id = publish(&mut c, other, r#"{"o":1}"#).await.id;

    let mut b = subscribe(&mut c, &[t, other], &m0.cursor).await;
    let got = msgs(&mut b, 6).await;
    assert_eq!(by_topic(&got), want(&[(t, ids[6..].to_vec()), (other, vec![other_id.clone()])]));
    let first = got.iter().find(|m| m.topic == t).unwrap();
    assert_eq!(first.id, ids[6]);
    assert_eq!(
        first.gap,
        Some(Gap { topic: t.to_owned(), after: ids[0].clone(), oldest: ids[6].clone() }),
        "the first message after the trim reports the gap"
    );
    for m in got.iter().filter(|m| m.id != first.id || m.topic != t) {
        assert!(m.gap.is_none(), "only one gap notice: {m:?}");
    }
    for m in got.iter().filter(|m| m.topic == t) {
        let n = ids.iter().position(|i| *i == m.id).unwrap();
        assert_eq!(m.data, format!(r#"{{"n":{n}}}"#).as_bytes());
    }
    // History says the same.
    let h = history(&mut c, t, &ids[0], 0).await;
    assert!(h.truncated);
    assert_eq!(self::ids(&h.messages), ids[6..]);

    // Resuming from the gap message's cursor: no second gap.
    let mut d = subscribe(&mut c, &[t, other], &first.cursor).await;
    let again = msgs(&mut d, 5).await;
    assert_eq!(by_topic(&again), want(&[(t, ids[7..].to_vec()), (other, vec![other_id])]));
    assert!(again.iter().all(|m| m.gap.is_none()), "{again:?}");
    assert_quiet(&mut c, &[t, other], &mut [&mut b, &mut d]).await;
    s.stop().await;
}

crate::engine_tests! {
    #[tokio::test]
    subscribe_reports_gap_on_the_next_message, redis_subscribe_reports_gap_on_the_next_message => subscribe_gap
}

#[tokio::test]
async fn subscribe_errors() {
    let s = TestServer::start("[limits]\nmax_topics_per_connection = 3\n").await;
    let mut c = client(&s).await;
    let t = "grpc.suberr";
    let long_topic = "x".repeat(129);
    for bad in [&["ok", "bad topic"][..], &[""][..], &["a/b"][..], &[long_topic.as_str()][..]] {
        assert_status(&subscribe_err(&mut c, bad, "").await, Code::InvalidArgument, "bad_topic");
    }
    assert_status(&subscribe_err(&mut c, &[], "").await, Code::InvalidArgument, "bad_request");
    let long = "A".repeat(4097);
    for bad in ["!!!", "AAAA", "not a cursor", "%41", long.as_str()] {
        assert_status(&subscribe_err(&mut c, &[t], bad).await, Code::InvalidArgument, "bad_request");
    }
    assert_status(
        &subscribe_err(&mut c, &["t1", "t2", "t3", "t4"], "").await,
        Code::InvalidArgument,
        "bad_request",
    );
    // A cursor from another subscription still parses; the same channel works.
    let mut ok = subscribe(&mut c, &["t1", "t2", "t3"], "").await;
    let id = publish(&mut c, "t2", "1").await.id;
    assert_eq!(next_msg(&mut ok).await.id, id);
    s.stop().await;
}

// ---------------------------------------------------------------- Connect

#[tokio::test]
async fn connect_round_trip() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let (t, u) = ("grpc.conn.a", "grpc.conn.b");
    let mut conn = Conn::open(&mut c).await;

    let (before, ack) = conn.subscribe(t, None, "s1").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack, Ack { r#ref: "s1".into(), recovered: true, id: String::new(), ts: 0 });

    // Publish on the stream: ack with the id, and the message comes back.
    let data = r#"{"b": [1, 2],"a":"é \u00e9"}"#;
    let op = PublishOp { topic: t.into(), data: data.as_bytes().to_vec(), idempotency_key: String::new() };
    conn.send("p1", Some(Op::Publish(op))).await;
    let (mut frames, ack) = conn.until_ref("p1").await;
    let Frame::Ack(ack) = ack else { panic!("expected the publish ack, got {ack:?}") };
    assert_eq!(ack.r#ref, "p1");
    assert!(!ack.recovered);
    pid(&ack.id);
    assert!(ack.ts > 0, "{ack:?}");
    let m = match frames.pop() {
        Some(Frame::Message(m)) => m,
        None => conn.message().await,
        Some(f) => panic!("unexpected frame {f:?}"),
    };
    assert!(frames.is_empty(), "{frames:?}");
    check_msg(&m);
    assert_eq!((m.topic.as_str(), m.id.as_str(), m.ts), (t, ack.id.as_str(), ack.ts));
    assert_eq!(m.data, data.as_bytes());
    assert!(m.gap.is_none());

    // A message published elsewhere arrives too, after it.
    let r2 = publish(&mut c, t, "2").await;
    let m2 = conn.message().await;
    assert_eq!((m2.id.as_str(), &m2.data[..]), (r2.id.as_str(), &b"2"[..]));
    assert!(pid(&m2.id) > pid(&m.id));
    assert_eq!(ids(&history(&mut c, t, "", 0).await.messages), [ack.id.clone(), r2.id.clone()]);

    // Idempotent publish on the stream.
    for r in ["k1", "k2"] {
        let op = PublishOp { topic: u.into(), data: b"7".to_vec(), idempotency_key: "idem-1".into() };
        conn.send(r, Some(Op::Publish(op))).await;
    }
    let (f1, a1) = conn.until_ref("k1").await;
    let (f2, a2) = conn.until_ref("k2").await;
    assert!(f1.is_empty() && f2.is_empty(), "not subscribed to {u}: {f1:?} {f2:?}");
    let (Frame::Ack(a1), Frame::Ack(a2)) = (a1, a2) else { panic!("acks expected") };
    assert_eq!(a1.id, a2.id);
    assert_eq!(history(&mut c, u, "", 0).await.messages.len(), 1);

    // Ping, with and without a ref; refresh is acknowledged.
    conn.ping_quiet("pp").await;
    conn.ping_quiet("").await;
    conn.send("rf", Some(Op::Refresh(RefreshOp { token: "t".into() }))).await;
    assert_eq!(conn.next().await, Frame::Ack(Ack { r#ref: "rf".into(), ..Default::default() }));

    // Unsubscribe stops delivery: a message on `t` after it does not come;
    // the marker on `u` is the very next frame.
    let (before, ack) = conn.subscribe(u, None, "s2").await;
    assert!(before.is_empty() && ack.recovered, "{before:?} {ack:?}");
    conn.send("u1", Some(Op::Unsubscribe(UnsubscribeOp { topic: t.into() }))).await;
    assert_eq!(conn.next().await, Frame::Ack(Ack { r#ref: "u1".into(), ..Default::default() }));
    let missed = publish(&mut c, t, r#"{"after":"unsubscribe"}"#).await.id;
    let marker = publish(&mut c, u, r#"{"marker":1}"#).await.id;
    let next = conn.message().await;
    assert_eq!((next.topic.as_str(), next.id.as_str()), (u, marker.as_str()), "{next:?}");

    // Subscribing again after the last id seen gets the missed message.
    let (before, ack) = conn.subscribe(t, Some(&r2.id), "s3").await;
    assert!(before.is_empty() && ack.recovered, "{before:?} {ack:?}");
    let back = conn.message().await;
    assert_eq!((back.topic.as_str(), back.id.as_str()), (t, missed.as_str()));
    conn.ping_quiet("end").await;

    // Closing the request stream ends the call with OK.
    drop(conn.tx);
    assert!(matches!(within(conn.rx.message()).await, Ok(None)), "Connect should end cleanly");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_subscribe_after_replays_then_live_without_duplicates() {
    const BEFORE: usize = 50;
    const DURING: usize = 100;
    const AFTER_INDEX: usize = 9;
    let s = TestServer::start("[history]\nreplay_page = 7\n").await;
    let mut c = client(&s).await;
    let t = "grpc.conn.replay";
    let mut published = vec![];
    for i in 0..BEFORE {
        published.push(publish(&mut c, t, &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    // A publisher runs while the subscription replays and goes live.
    let mut pc = client(&s).await;
    let publisher = tokio::spawn(async move {
        let mut out = vec![];
        for i in BEFORE..BEFORE + DURING {
            out.push(publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id);
        }
        out
    });
    let mut conn = Conn::open(&mut c).await;
    let (before, ack) = conn.subscribe(t, Some(&published[AFTER_INDEX]), "s").await;
    assert!(before.is_empty(), "{before:?}");
    assert!(ack.recovered, "{ack:?}");
    published.extend(within(publisher).await.expect("publisher"));

    let got = conn.messages(published.len() - AFTER_INDEX - 1).await;
    assert_eq!(ids(&got), published[AFTER_INDEX + 1..], "replay then live, in order, once");
    for (m, i) in got.iter().zip(AFTER_INDEX + 1..) {
        assert_eq!(m.data, format!(r#"{{"i":{i}}}"#).as_bytes());
    }
    conn.ping_quiet("q").await;

    // `after` = the newest id: nothing to replay.
    let other = "grpc.conn.replay.2";
    let last = publish(&mut c, other, "1").await.id;
    let (before, ack) = conn.subscribe(other, Some(&last), "s2").await;
    assert!(before.is_empty() && ack.recovered, "{before:?} {ack:?}");
    conn.ping_quiet("q2").await;
    let live = publish(&mut c, other, "2").await.id;
    assert_eq!(conn.message().await.id, live);
    s.stop().await;
}

/// A Connect message's cursor covers every topic of the stream and resumes
/// a Subscribe call.
#[tokio::test]
async fn connect_cursor_resumes_subscribe() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let (a, b) = ("grpc.conn.cur.a", "grpc.conn.cur.b");
    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(a, None, "sa").await;
    conn.subscribe(b, None, "sb").await;
    let b1 = publish(&mut c, b, "1").await.id;
    let a1 = publish(&mut c, a, "2").await.id;
    let got = conn.messages(2).await;
    assert_eq!(by_topic(&got), want(&[(a, vec![a1]), (b, vec![b1])]));
    let cursor = got[1].cursor.clone();
    drop(conn);
    let a2 = publish(&mut c, a, "3").await.id;
    let b2 = publish(&mut c, b, "4").await.id;
    let mut st = subscribe(&mut c, &[a, b], &cursor).await;
    let got = msgs(&mut st, 2).await;
    assert_eq!(by_topic(&got), want(&[(a, vec![a2]), (b, vec![b2])]));
    assert_quiet(&mut c, &[a, b], &mut [&mut st]).await;
    s.stop().await;
}

#[tokio::test]
async fn connect_errors_keep_the_stream_open() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let t = "grpc.conn.err";
    let mut conn = Conn::open(&mut c).await;

    let sub = |topic: &str, after: Option<&str>| {
        Some(Op::Subscribe(SubscribeOp { topic: topic.into(), after: after.map(str::to_owned) }))
    };
    let publ = |topic: &str, data: &[u8], key: &str| {
        Some(Op::Publish(PublishOp { topic: topic.into(), data: data.to_vec(), idempotency_key: key.into() }))
    };
    bad_topic_error(&conn.error("e1", sub("bad topic", None)).await);
    bad_topic_error(&conn.error("e2", sub("", None)).await);
    bad_request_error(&conn.error("e3", sub(t, Some("nope"))).await);
    bad_request_error(&conn.error("e4", sub(t, Some("1-2-3"))).await);
    bad_topic_error(&conn.error("e5", publ("", b"1", "")).await);
    bad_request_error(&conn.error("e6", publ(t, b"{", "")).await);
    bad_request_error(&conn.error("e7", publ(t, b"1", "a b")).await);
    bad_request_error(&conn.error("e8", None).await);
    bad_topic_error(&conn.error("e9", Some(Op::Unsubscribe(UnsubscribeOp { topic: "a/b".into() }))).await);
    conn.ping_quiet("alive").await;

    // Still fully working: subscribe, a second subscribe is refused and
    // does not double delivery.
    let (before, ack) = conn.subscribe(t, None, "s1").await;
    assert!(before.is_empty() && ack.recovered);
    bad_request_error(&conn.error("e10", sub(t, None)).await);
    let id = publish(&mut c, t, r#"{"ok":true}"#).await.id;
    let m = conn.message().await;
    assert_eq!((m.id.as_str(), &m.data[..]), (id.as_str(), &br#"{"ok":true}"#[..]));
    conn.ping_quiet("once").await;

    // Unsubscribing from a topic that was never subscribed: answered (the
    // proto's comment calls it an error, WebSocket acks it; see the report)
    // and the stream goes on.
    conn.send("u", Some(Op::Unsubscribe(UnsubscribeOp { topic: "never.subscribed".into() }))).await;
    match conn.next().await {
        Frame::Ack(a) => assert_eq!(a.r#ref, "u"),
        Frame::Error(e) => assert_eq!(e.r#ref, "u"),
        f => panic!("unexpected {f:?}"),
    }
    conn.ping_quiet("still").await;
    s.stop().await;
}

#[tokio::test]
async fn connect_oversized_publish_ends_the_stream_resource_exhausted() {
    let s = TestServer::start("[limits]\nmax_message_bytes = 1024\n").await;
    let mut c = client(&s).await;
    let t = "grpc.conn.big";
    let publ = |data: String| {
        Some(Op::Publish(PublishOp {
            topic: t.into(),
            data: data.into_bytes(),
            idempotency_key: String::new(),
        }))
    };

    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(t, None, "s").await;
    let at_limit = format!("\"{}\"", "x".repeat(1022));
    conn.send("ok", publ(at_limit.clone())).await;
    let (_, ack) = conn.until_ref("ok").await;
    let Frame::Ack(ack) = ack else { panic!("{ack:?}") };
    let over = format!("\"{}\"", "x".repeat(1023));
    assert_eq!(over.len(), 1025);
    conn.send("big", publ(over)).await;
    let (frames, st) = conn.end().await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().starts_with("too_large"), "{st:?}");
    // At most the accepted message's frame came first; no answer to "big".
    assert!(frames.len() <= 1, "{frames:?}");
    for f in &frames {
        assert!(matches!(f, Frame::Message(m) if m.id == ack.id), "{f:?}");
    }

    // A frame over the decoder's limit ends the stream the same way.
    let mut conn2 = Conn::open(&mut c).await;
    conn2.ping_quiet("p").await;
    conn2.send("huge", publ(format!("\"{}\"", "x".repeat(8 * 1024)))).await;
    let (frames, st) = conn2.end().await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");

    // Only the accepted message was stored; the channel still works.
    let h = history(&mut c, t, "", 0).await;
    assert_eq!(ids(&h.messages), [ack.id]);
    assert_eq!(h.messages[0].data, at_limit.as_bytes());
    publish(&mut c, t, "1").await;
    s.stop().await;
}

#[tokio::test]
async fn connect_reports_gap_before_the_ack() {
    let s = TestServer::start("[history]\nmax_len = 5\n").await;
    let mut c = client(&s).await;
    // Resuming after ids[0] and after ids[4]: both were trimmed (ids[6..] are
    // retained), so a gap frame, then the ack with recovered = false.
    for (after, t) in [(0usize, "grpc.conn.gap0"), (4, "grpc.conn.gap4")] {
        let mut ids_ = vec![];
        for n in 0..=10 {
            ids_.push(publish(&mut c, t, &format!(r#"{{"n":{n}}}"#)).await.id);
        }
        let mut conn = Conn::open(&mut c).await;
        let (before, ack) = conn.subscribe(t, Some(&ids_[after]), "g").await;
        assert_eq!(
            before,
            [Frame::Gap(Gap { topic: t.into(), after: ids_[after].clone(), oldest: ids_[6].clone() })],
            "a gap frame before the ack"
        );
        assert_eq!(ack, Ack { r#ref: "g".into(), recovered: false, ..Default::default() });
        let got = conn.messages(5).await;
        assert_eq!(ids(&got), ids_[6..]);
        assert!(got.iter().all(|m| m.gap.is_none()), "Connect reports gaps as frames only");
        for (m, n) in got.iter().zip(6..) {
            assert_eq!(m.data, format!(r#"{{"n":{n}}}"#).as_bytes());
        }
        conn.ping_quiet("q").await;
        let live = publish(&mut c, t, r#"{"live":1}"#).await.id;
        assert_eq!(conn.message().await.id, live);

        // From a retained id: no gap, recovered.
        let mut conn = Conn::open(&mut c).await;
        let (before, ack) = conn.subscribe(t, Some(&ids_[7]), "r").await;
        assert!(before.is_empty(), "{before:?}");
        assert!(ack.recovered, "{ack:?}");
        let mut rest = ids_[8..].to_vec();
        rest.push(live);
        assert_eq!(ids(&conn.messages(4).await), rest);
        conn.ping_quiet("q").await;
    }
    s.stop().await;
}

/// A Redis stream lost (FLUSHALL) and written again: resuming from a
/// position before the loss reports the gap (Subscribe: on the next
/// message; Connect: a gap frame, recovered = false), never silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_stream_resume_reports_gap() {
    let redis = RedisServer::start();
    let s = TestServer::start(&redis.config("")).await;
    let mut c = client(&s).await;
    let t = "grpc.lost.b";
    let mut st = subscribe(&mut c, &[t], "").await;
    let mut published = vec![];
    for i in 0..5 {
        published.push(publish(&mut c, t, &format!("{i}")).await.id);
    }
    let seen = msgs(&mut st, 5).await;
    assert_eq!(ids(&seen), published);
    drop(st);
    // published[3] and [4] are lost with the flush.
    assert_eq!(tokio::task::block_in_place(|| cli(redis.port, &["FLUSHALL"])).trim(), "OK");
    let fresh = publish(&mut c, t, r#""fresh""#).await.id;
    assert!(pid(&fresh) > pid(&published[4]));
    let gap = Gap { topic: t.into(), after: published[2].clone(), oldest: fresh.clone() };

    let mut st = subscribe(&mut c, &[t], &seen[2].cursor).await;
    let m = next_msg(&mut st).await;
    assert_eq!(m.id, fresh);
    assert_eq!(m.gap.as_ref(), Some(&gap), "lost messages {:?} must be reported", &published[3..]);
    assert_quiet(&mut c, &[t], &mut [&mut st]).await;

    let mut conn = Conn::open(&mut c).await;
    let (before, ack) = conn.subscribe(t, Some(&published[2]), "s").await;
    assert_eq!(before, [Frame::Gap(gap)]);
    assert!(!ack.recovered, "{ack:?}");
    let h = history(&mut c, t, &published[2], 0).await;
    assert!(h.truncated);
    let after_loss = ids(&h.messages);
    assert_eq!(after_loss.len(), 2, "fresh and the marker");
    assert_eq!(after_loss[0], fresh);
    assert_eq!(ids(&conn.messages(2).await), after_loss);
    conn.ping_quiet("q").await;
    s.stop().await;
}

/// Redis restarted without its data under live streams: the engine lost
/// history under the subscriptions, so Subscribe and Connect end with
/// UNAVAILABLE; a resume by cursor reports the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_ends_streams_unavailable_then_gap() {
    let mut redis = RedisServer::start();
    let s = TestServer::start(&redis.config("op_timeout = \"500ms\"\nblock = \"1s\"")).await;
    let mut h = HealthClient::new(channel(&s).await);
    wait_health(&mut h, "", ServingStatus::Serving, WAIT).await;
    let mut c = client(&s).await;
    let t = "grpc.lost.c";
    let mut st = subscribe(&mut c, &[t], "").await;
    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(t, None, "s").await;
    let mut published = vec![];
    for i in 0..3 {
        published.push(publish(&mut c, t, &format!("{i}")).await.id);
    }
    let seen = msgs(&mut st, 3).await;
    assert_eq!(ids(&seen), published);
    assert_eq!(ids(&conn.messages(3).await), published);

    tokio::task::block_in_place(|| redis.restart_empty());
    let (rest, status) = end_of(&mut st).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&status, Code::Unavailable, "unavailable");
    let (rest, status) = conn.end().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&status, Code::Unavailable, "unavailable");

    wait_health(&mut h, "", ServingStatus::Serving, Duration::from_secs(15)).await;
    let mut st = subscribe(&mut c, &[t], &seen[2].cursor).await;
    let live = publish(&mut c, t, r#""again""#).await.id;
    let m = next_msg(&mut st).await;
    assert_eq!(m.id, live);
    let gap = m.gap.unwrap_or_else(|| panic!("the loss of history after {} must be reported", published[2]));
    assert_eq!((gap.topic.as_str(), gap.after.as_str()), (t, published[2].as_str()), "{gap:?}");
    pid(&gap.oldest);
    assert_quiet(&mut c, &[t], &mut [&mut st]).await;
    s.stop().await;
}

// ---------------------------------------------------------------- health and reflection

async fn health(h: &mut HealthClient<Channel>, service: &str) -> Result<ServingStatus, Status> {
    within(h.check(HealthCheckRequest { service: service.into() })).await.map(|r| r.into_inner().status())
}

/// Polls the health of `service` until it is `want` (bounded by `limit`).
async fn wait_health(h: &mut HealthClient<Channel>, service: &str, want: ServingStatus, limit: Duration) {
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
            ("History", false, false)
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

// ---------------------------------------------------------------- across transports

#[tokio::test]
async fn grpc_publish_reaches_websocket_and_sse() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let t = "grpc.x.out";
    let mut ws = s.ws(&format!("/v1/ws?topic={t}")).await;
    let mut sse = Sse::open(&s, &sse_path(&[t]), None).await;
    let data = r#"{"z":1,  "a" : [ true, null, "h\u00e9 \"x\"" ], "n": 1.50}"#;
    let r = publish(&mut c, t, data).await;

    let raw = ws.next_text().await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        (v["op"].as_str(), v["topic"].as_str(), v["id"].as_str()),
        (Some("message"), Some(t), Some(&*r.id))
    );
    assert_eq!(v["ts"].as_u64(), Some(r.ts));
    assert_eq!(raw_data(&raw), data, "WebSocket data byte for byte");

    let (_, text) = sse.message_text().await;
    let v: Value = serde_json::from_str(&text).unwrap();
    check_shape(&v);
    assert_eq!(
        (v["topic"].as_str(), v["id"].as_str(), v["ts"].as_u64()),
        (Some(t), Some(&*r.id), Some(r.ts))
    );
    assert_eq!(raw_data(&text), data, "SSE data byte for byte");
    s.stop().await;
}

#[tokio::test]
async fn http_and_websocket_publishes_reach_grpc_subscribe() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let t = "grpc.x.in";
    let mut st = subscribe(&mut c, &[t], "").await;
    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(t, None, "s").await;

    let d1 = r#"{"via" : "http",  "k":[1,2]}"#;
    let id1 = s.publish(t, d1).await;
    let d2 = r#"{"b": [1, 2],"a":"é \u00e9"}"#;
    let mut ws = s.ws("/v1/ws").await;
    ws.send_text(&format!(r#"{{"op":"publish","topic":"{t}","data":{d2},"ref":"w1"}}"#)).await;
    let ack = ws.next_op("ack").await;
    assert_eq!(ack["ref"], "w1");
    let id2 = ack["id"].as_str().unwrap().to_owned();

    let got = msgs(&mut st, 2).await;
    let over_connect = conn.messages(2).await;
    for got in [&got, &over_connect] {
        assert_eq!(ids(got), [id1.clone(), id2.clone()]);
        assert_eq!(got[0].data, d1.as_bytes());
        assert_eq!(got[1].data, d2.as_bytes());
    }
    assert_quiet(&mut c, &[t], &mut [&mut st]).await;
    s.stop().await;
}

#[tokio::test]
async fn cursors_are_shared_with_websocket_and_sse() {
    let s = TestServer::start("").await;
    let mut c = client(&s).await;
    let (a, b) = ("grpc.cur.a", "grpc.cur.b");

    // A WebSocket cursor resumes a gRPC Subscribe.
    let mut ws = s.ws(&format!("/v1/ws?topic={a}&topic={b}")).await;
    let a1 = publish(&mut c, a, "1").await.id;
    let m = ws.next_op("message").await;
    assert_eq!(m["id"], a1.as_str());
    let ws_cursor = m["cursor"].as_str().unwrap().to_owned();
    let a2 = publish(&mut c, a, "2").await.id;
    let b1 = publish(&mut c, b, "3").await.id;
    let mut st = subscribe(&mut c, &[a, b], &ws_cursor).await;
    let got = msgs(&mut st, 2).await;
    assert_eq!(by_topic(&got), want(&[(a, vec![a2]), (b, vec![b1])]));
    let grpc_cursor = got[1].cursor.clone();
    drop(st);

    // A gRPC cursor resumes SSE (Last-Event-ID).
    let a3 = publish(&mut c, a, "4").await.id;
    let mut sse = Sse::open(&s, &sse_path(&[a, b]), Some(&grpc_cursor)).await;
    let (sse_id, text) = sse.message_text().await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((v["topic"].as_str(), v["id"].as_str()), (Some(a), Some(&*a3)));

    // An SSE event id resumes gRPC.
    let b2 = publish(&mut c, b, "5").await.id;
    let mut st = subscribe(&mut c, &[a, b], &sse_id).await;
    let got = next_msg(&mut st).await;
    assert_eq!((got.topic.as_str(), got.id.as_str()), (b, b2.as_str()));
    assert_quiet(&mut c, &[a, b], &mut [&mut st]).await;
    s.stop().await;
}

// ---------------------------------------------------------------- slow consumers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_ends_resource_exhausted_and_resumes_without_loss() {
    const N: usize = 2000;
    let s = TestServer::start("[limits]\noutbox_capacity = 8\n[grpc]\nstall_timeout = \"60s\"\n").await;
    let t = "grpc.slow";
    // The slow subscriber: its own connection with a 1 KiB stream window,
    // and it does not read.
    let slow_ch = within(endpoint(&s).initial_stream_window_size(1024).connect()).await.expect("connect");
    let mut slow_client = GatewayClient::new(slow_ch);
    let mut slow = subscribe(&mut slow_client, &[t], "").await;

    // A healthy subscriber on another connection reads everything; the
    // publisher waits for it after each message, so it never lags.
    let mut hc = client(&s).await;
    let mut healthy = subscribe(&mut hc, &[t], "").await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        for _ in 0..N {
            let m = next_msg(&mut healthy).await;
            seen_tx.send(m.id.clone()).unwrap();
            got.push(m);
        }
        (healthy, got)
    });
    let mut pc = client(&s).await;
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        let id = publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id;
        let seen = within(seen_rx.recv()).await.expect("the healthy subscriber stopped");
        assert_eq!(seen, id);
        published.push(id);
    }
    let (mut healthy, got) = within(reader).await.expect("reader");
    assert_eq!(ids(&got), published, "the healthy subscriber got everything, in order");

    // Read at last: what was in flight, then RESOURCE_EXHAUSTED.
    let (prefix, st) = end_of(&mut slow).await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    let k = prefix.len();
    assert!(k > 0, "the slow subscriber got nothing before the end");
    assert!(k < N, "the slow subscriber was not cut off");
    assert_eq!(ids(&prefix), published[..k], "what it got is a prefix");

    // Resuming from its last cursor gives every remaining message.
    let mut back = subscribe(&mut hc, &[t], &prefix[k - 1].cursor).await;
    let rest = msgs(&mut back, N - k).await;
    assert_eq!(ids(&rest), published[k..], "the rest, with no loss");
    for (m, i) in rest.iter().zip(k..) {
        assert_eq!(m.data, format!(r#"{{"i":{i}}}"#).as_bytes());
    }
    assert_quiet(&mut pc, &[t], &mut [&mut back, &mut healthy]).await;
    s.stop().await;
}

/// The same on Connect: a stream that does not read while its topic is
/// busy ends with RESOURCE_EXHAUSTED once read; a new Connect subscribing
/// `after` the last id it got receives the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connect_stream_ends_resource_exhausted_and_resumes_without_loss() {
    const N: usize = 1000;
    let s = TestServer::start("[limits]\noutbox_capacity = 8\n[grpc]\nstall_timeout = \"60s\"\n").await;
    let t = "grpc.slow.connect";
    let slow_ch = within(endpoint(&s).initial_stream_window_size(1024).connect()).await.expect("connect");
    let mut slow_client = GatewayClient::new(slow_ch);
    let mut slow = Conn::open(&mut slow_client).await;
    let (_, ack) = slow.subscribe(t, None, "s").await;
    assert!(ack.recovered);

    let mut pc = client(&s).await;
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        published.push(publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    let (frames, st) = slow.end().await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    let got: Vec<String> = frames
        .into_iter()
        .map(|f| match f {
            Frame::Message(m) => m.id,
            f => panic!("unexpected {f:?}"),
        })
        .collect();
    let k = got.len();
    assert!(k > 0 && k < N, "{k} messages before the end");
    assert_eq!(got, published[..k], "what it got is a prefix");

    let mut back = Conn::open(&mut pc).await;
    let (before, ack) = back.subscribe(t, Some(&got[k - 1]), "r").await;
    assert!(before.is_empty() && ack.recovered, "{before:?} {ack:?}");
    assert_eq!(ids(&back.messages(N - k).await), published[k..], "the rest, with no loss");
    back.ping_quiet("q").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_connection_is_closed_after_stall_timeout() {
    const N: usize = 300;
    let s = TestServer::start("[limits]\noutbox_capacity = 8\n[grpc]\nstall_timeout = \"1s\"\n").await;
    let t = "grpc.stall";
    let (closed_tx, mut closed_rx) = watch::channel(false);
    let connector = WatchedConnector { addr: s.addr, closed: Arc::new(closed_tx) };
    let ch = within(endpoint(&s).initial_stream_window_size(1024).connect_with_connector(connector))
        .await
        .expect("connect");
    let mut stalled_client = GatewayClient::new(ch);
    let mut stalled = subscribe(&mut stalled_client, &[t], "").await;
    let mut pc = client(&s).await;
    let started = Instant::now();
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        published.push(publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    // The stream overflowed and was closed as slow; its client still does
    // not read, so after stall_timeout the server closes the connection.
    within(closed_rx.wait_for(|closed| *closed)).await.expect("watch");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before stall_timeout: {:?}",
        started.elapsed()
    );

    let (prefix, st) = end_of(&mut stalled).await;
    assert_ne!(st.code(), Code::ResourceExhausted, "the connection was closed, not the stream ended: {st:?}");
    let k = prefix.len();
    assert!(k > 0 && k < N, "{k} messages before the cut");
    assert_eq!(ids(&prefix), published[..k]);

    let mut c = client(&s).await;
    let mut back = subscribe(&mut c, &[t], &prefix[k - 1].cursor).await;
    assert_eq!(ids(&msgs(&mut back, N - k).await), published[k..], "the rest, with no loss");
    assert_quiet(&mut c, &[t], &mut [&mut back]).await;
    s.stop().await;
}

// ---------------------------------------------------------------- shutdown and the shared port

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_unavailable() {
    let s = TestServer::start("").await;
    let t = "grpc.down";
    let mut c = client(&s).await;
    let mut sub = subscribe(&mut c, &[t], "").await;
    let mut conn = Conn::open(&mut c).await;
    conn.subscribe(t, None, "s").await;
    let id = publish(&mut c, t, "1").await.id;
    assert_eq!(next_msg(&mut sub).await.id, id);
    assert_eq!(conn.message().await.id, id);
    let mut h = HealthClient::new(channel(&s).await);
    let mut w =
        within(h.watch(HealthCheckRequest { service: String::new() })).await.expect("watch").into_inner();
    assert_eq!(within(w.message()).await.expect("watch").expect("status").status(), ServingStatus::Serving);

    let started = Instant::now();
    let stop = tokio::spawn(s.stop());
    let (rest, st) = end_of(&mut sub).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&st, Code::Unavailable, "unavailable");
    let (rest, st) = conn.end().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&st, Code::Unavailable, "unavailable");
    // Health Watch says NOT_SERVING, then ends.
    let last = within(w.message()).await.expect("watch").expect("a last status");
    assert_eq!(last.status(), ServingStatus::NotServing);
    assert!(matches!(within(w.message()).await, Ok(None)), "Watch ends at shutdown");
    within(stop).await.expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "streams should end at once: {:?}",
        started.elapsed()
    );
}

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

// ---------------------------------------------------------------- keepalive

/// Reads one HTTP/2 frame: (type, flags, payload).
async fn h2_frame(tcp: &mut TcpStream) -> io::Result<(u8, u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload).await?;
    Ok((head[3], head[4], payload))
}

/// `http2.keepalive_interval` / `keepalive_timeout`: an HTTP/2 client that
/// never answers the server's PING is disconnected once the timeout passes
/// after the ping (a raw HTTP/2 connection, so nothing answers for us).
#[tokio::test]
async fn http2_keepalive_pings_and_drops_a_peer_that_never_answers() {
    use tokio::io::AsyncWriteExt;
    const PING: u8 = 0x6;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    let s =
        TestServer::start("[http2]\nkeepalive_interval = \"300ms\"\nkeepalive_timeout = \"400ms\"\n").await;
    let mut tcp = within(TcpStream::connect(s.addr)).await.expect("connect");
    // Preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface");
    let mut pinged = None;
    let closed = within(async {
        loop {
            match h2_frame(&mut tcp).await {
                Ok((SETTINGS, flags, _)) if flags & 1 == 0 => {
                    // Acknowledge the server's settings, as a live client would.
                    tcp.write_all(b"\0\0\0\x04\x01\0\0\0\0").await.expect("settings ack");
                }
                Ok((PING, flags, payload)) if flags & 1 == 0 => {
                    assert_eq!(payload.len(), 8, "PING payload");
                    pinged.get_or_insert_with(Instant::now);
                }
                Ok((GOAWAY, _, _)) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await;
    let pinged = pinged.expect("the server never sent a keepalive PING");
    let waited = closed.duration_since(pinged);
    assert!(waited >= Duration::from_millis(350), "closed {waited:?} after the unanswered PING");
    // The port still serves others.
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
    s.stop().await;
}
