//! The WebSocket loop driven through channels: ops, delivery, replay,
//! heartbeat (under paused time) and close codes.

use crate::transport::access::Access;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use serde_json::Value;
use tokio::sync::mpsc;

use super::*;
use crate::config::Config;
use crate::testing;

/// The server's end of an in-memory WebSocket.
struct FakeSocket {
    inbound: mpsc::UnboundedReceiver<Result<WsMessage, tungstenite::Error>>,
    outbound: mpsc::UnboundedSender<WsMessage>,
    /// Frames accepted before every write blocks for good (a client that
    /// stopped reading); `None`: no limit.
    budget: Option<usize>,
    /// Frames queued by the loop, not yet taken.
    queued: std::collections::VecDeque<Bytes>,
}

impl Stream for FakeSocket {
    type Item = Result<WsMessage, tungstenite::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_recv(cx)
    }
}

impl Sink<WsMessage> for FakeSocket {
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.budget {
            Some(0) => Poll::Pending,
            _ => Poll::Ready(Ok(())),
        }
    }

    fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), Self::Error> {
        if let Some(n) = self.budget.as_mut() {
            *n = n.saturating_sub(1);
        }
        self.outbound.send(item).map_err(|_| tungstenite::Error::ConnectionClosed)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl Socket for FakeSocket {
    fn queue(&mut self, frame: Bytes) {
        self.queued.push_back(frame);
    }

    /// Decodes the queued frames back into messages, within the budget.
    fn poll_write_queued(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(frame) = self.queued.front() {
            if self.budget == Some(0) {
                return Poll::Pending;
            }
            let text = std::str::from_utf8(super::socket::text_payload(frame)).expect("UTF-8 text frame");
            let message = WsMessage::Text(Utf8Bytes::from(text));
            self.queued.pop_front();
            if let Some(n) = self.budget.as_mut() {
                *n -= 1;
            }
            self.outbound.send(message).map_err(|_| std::io::ErrorKind::BrokenPipe)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// The client's end.
struct Client {
    tx: mpsc::UnboundedSender<Result<WsMessage, tungstenite::Error>>,
    rx: mpsc::UnboundedReceiver<WsMessage>,
    server: tokio::task::JoinHandle<()>,
}

impl Client {
    fn send(&self, v: Value) {
        self.tx.send(Ok(WsMessage::Text(Utf8Bytes::from(v.to_string())))).expect("server alive");
    }

    async fn frame(&mut self) -> WsMessage {
        tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
            .await
            .expect("a frame in time")
            .expect("open")
    }

    async fn json(&mut self) -> Value {
        match self.frame().await {
            WsMessage::Text(t) => serde_json::from_str(t.as_str()).expect("JSON frame"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Connects with `query` (as `GET /v1/ws?query`) and runs the loop in a task.
async fn connect(state: &AppState, query: &str) -> Client {
    connect_with_budget(state, query, None).await
}

/// [`connect`] to a client that takes `budget` frames, then stops reading.
async fn connect_with_budget(state: &AppState, query: &str, budget: Option<usize>) -> Client {
    let (tx, inbound) = mpsc::unbounded_channel();
    let (outbound, rx) = mpsc::unbounded_channel();
    let mut sub = Subscription::new(state, Transport::Ws, GapReport::Event, Access::anonymous());
    let connected = super::connect(state, &mut sub, Some(query)).await.map_err(Box::new);
    let socket = FakeSocket { inbound, outbound, budget, queued: Default::default() };
    let server = tokio::spawn(run(state.clone(), sub, std::future::ready(Some(socket)), connected));
    Client { tx, rx, server }
}

/// What an idle connection's task holds inline (printed with
/// `--nocapture`), bounded so that growth is noticed: every byte here is
/// paid by every idle connection.
#[tokio::test]
async fn idle_task_stays_small() {
    let state = testing::state(Config::default());
    let mut sub = Subscription::new(&state, Transport::Ws, GapReport::Event, Access::anonymous());
    let connected = super::connect(&state, &mut sub, Some("topic=sizes")).await.map_err(Box::new);
    let on_upgrade = hyper::upgrade::on(axum::http::Request::new(()));
    let socket = upgraded(on_upgrade, 65_536);
    let task = state.shutdown.clone().track(run(state.clone(), sub, socket, connected));
    let conn = std::mem::size_of::<Upgraded>();
    let subscription = std::mem::size_of::<Subscription>();
    let total = std::mem::size_of_val(&task);
    eprintln!("connection task {total} B: socket {conn} B, subscription {subscription} B");
    {
        let mut sub = Subscription::new(&state, Transport::Ws, GapReport::Event, Access::anonymous());
        let (_tx, inbound) = mpsc::unbounded_channel();
        let (outbound, _rx) = mpsc::unbounded_channel();
        let mut fake = FakeSocket { inbound, outbound, budget: None, queued: Default::default() };
        let serve_size = std::mem::size_of_val(&serve(&state, &mut sub, &mut fake));
        let live_size = std::mem::size_of_val(&sub.next_live());
        let write_size =
            std::mem::size_of_val(&write_events(&mut fake, &mut sub, Event::Closed(Close::Client)));
        let event = std::mem::size_of::<Event>();
        let session = std::mem::size_of::<crate::core::session::Session>();
        eprintln!("serve {serve_size} B, next_live {live_size} B, event {event} B, write_events {write_size} B, session {session} B");
    }
    // tokio allocates a task as a 128-byte-aligned cell of the future plus
    // ~104 B (header, scheduler, trailer) and the connection's tracing
    // span adds 32 B: up to 1,144 B here the cell is 1,280 B, one more
    // byte makes it 1,408.
    assert!(total <= 1144, "an idle connection's task grew to {total} B");
}

#[tokio::test]
async fn ops_publish_deliver_and_unsubscribe() {
    let state = testing::state(Config::default());
    let mut c = connect(&state, "topic=t").await;
    c.send(serde_json::json!({"op":"publish","topic":"t","data":{"n":1},"ref":1}));
    let ack = c.json().await;
    assert_eq!((ack["op"].as_str(), ack["ref"].as_i64()), (Some("ack"), Some(1)));
    let id = ack["id"].as_str().expect("id").to_owned();
    let m = c.json().await;
    assert_eq!(
        (m["op"].as_str(), m["id"].as_str(), m["data"]["n"].as_i64()),
        (Some("message"), Some(&*id), Some(1))
    );
    let cursor = Cursor::parse(m["cursor"].as_str().expect("cursor")).expect("valid cursor");
    assert_eq!(cursor.get(&testing::topic("t")), Some(id.parse().expect("id")));

    c.send(serde_json::json!({"op":"unsubscribe","topic":"t","ref":"u"}));
    assert_eq!(c.json().await, serde_json::json!({"op":"ack","ref":"u"}));
    c.send(serde_json::json!({"op":"publish","topic":"t","data":2,"ref":2}));
    assert_eq!(c.json().await["ref"], 2);
    c.send(serde_json::json!({"op":"ping","ref":3}));
    // The publish after the unsubscribe is not delivered: the pong comes next.
    assert_eq!(c.json().await, serde_json::json!({"op":"pong","ref":3}));

    c.send(serde_json::json!({"op":"dance","ref":4}));
    let e = c.json().await;
    assert_eq!((e["code"].as_str(), e["ref"].as_i64()), (Some("bad_request"), Some(4)));
    drop(c.tx);
    c.server.await.expect("loop ends when the client goes");
    assert_eq!(state.bus.hub.topic_count(), 0);
}

#[tokio::test]
async fn subscribe_after_replays_then_goes_live_in_order() {
    let mut config = Config::default();
    config.history.replay_page = 3;
    let state = testing::state(config);
    let ids = testing::publish_numbers(&state, "r", 10).await;
    let mut c = connect(&state, "").await;
    c.send(serde_json::json!({"op":"subscribe","topic":"r","after":ids[2].to_string(),"ref":"s"}));
    assert_eq!(c.json().await, serde_json::json!({"op":"ack","ref":"s","recovered":true}));
    let mut got = Vec::new();
    while got.len() < 7 {
        let m = c.json().await;
        assert_eq!(m["op"], "message");
        got.push(m["id"].as_str().expect("id").parse::<crate::core::MessageId>().expect("id"));
    }
    assert_eq!(got, ids[3..].to_vec(), "the replay: each message once, in id order");
    // Once the replay is done the client is read again, with nothing live.
    c.send(serde_json::json!({"op":"ping","ref":"p"}));
    assert_eq!(c.json().await, serde_json::json!({"op":"pong","ref":"p"}));
    let live = testing::publish(&state, "r", "10").await;
    assert_eq!(c.json().await["id"].as_str(), Some(&*live.to_string()));
}

#[tokio::test]
async fn trimmed_history_sends_the_gap_before_the_ack() {
    let mut config = Config::default();
    config.history.max_len = 3;
    let state = testing::state(config);
    let ids = testing::publish_numbers(&state, "g", 8).await;
    let mut c = connect(&state, "").await;
    c.send(serde_json::json!({"op":"subscribe","topic":"g","after":ids[0].to_string(),"ref":1}));
    let gap = c.json().await;
    assert_eq!((gap["op"].as_str(), gap["after"].as_str()), (Some("gap"), Some(&*ids[0].to_string())));
    assert_eq!(gap["oldest"].as_str(), Some(&*ids[5].to_string()));
    assert_eq!(c.json().await, serde_json::json!({"op":"ack","ref":1,"recovered":false}));
    for id in &ids[5..] {
        assert_eq!(c.json().await["id"].as_str(), Some(&*id.to_string()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_then_closed() {
    let mut config = Config::default();
    config.heartbeat.interval = Duration::from_secs(10);
    config.heartbeat.timeout = Duration::from_secs(25);
    let state = testing::state(config);
    let mut c = connect(&state, "topic=hb").await;
    let start = Instant::now();
    assert!(matches!(c.frame().await, WsMessage::Ping(_)));
    assert!(start.elapsed() >= Duration::from_secs(10));
    assert!(matches!(c.frame().await, WsMessage::Ping(_)));
    match c.frame().await {
        WsMessage::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (1001, "heartbeat_timeout"))
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_secs(25) && elapsed < Duration::from_secs(35), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_during_a_replay_is_closed_at_the_heartbeat_timeout() {
    let mut config = Config::default();
    config.heartbeat.interval = Duration::from_secs(10);
    config.heartbeat.timeout = Duration::from_secs(25);
    config.history.replay_page = 10;
    let state = testing::state(config);
    let ids = testing::publish_numbers(&state, "big", 100).await;
    let cursor = Cursor::single(testing::topic("big"), crate::core::MessageId::ZERO).encode();
    // The client takes 15 frames of the replay, then reads nothing more
    // and answers no ping: the server blocks writing to it.
    let mut c = connect_with_budget(&state, &format!("topic=big&cursor={cursor}"), Some(15)).await;
    let start = Instant::now();
    for id in &ids[..15] {
        match c.frame().await {
            WsMessage::Text(t) => assert!(t.as_str().contains(&id.to_string()), "{t}"),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    tokio::time::timeout(Duration::from_secs(120), &mut c.server)
        .await
        .expect("closed in time")
        .expect("loop");
    let elapsed = start.elapsed();
    // Blocked writes end at the heartbeat timeout (checked on the tick),
    // then the close frame gets its own bound.
    let bound = Duration::from_secs(25 + 10) + CLOSE_TIMEOUT * 2;
    assert!(elapsed >= Duration::from_secs(25) && elapsed <= bound, "{elapsed:?}");
    assert_eq!(state.bus.hub.topic_count(), 0, "the connection left the hub");
}

#[tokio::test]
async fn refused_connect_and_oversized_publish_close_with_their_codes() {
    let state = testing::state(Config::default());
    let mut c = connect(&state, "topic=a%20b").await;
    assert_eq!(c.json().await["code"], "bad_topic");
    match c.frame().await {
        WsMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected a close frame, got {other:?}"),
    }

    let mut config = Config::default();
    config.limits.max_message_bytes = 8;
    let state = testing::state(config);
    let mut c = connect(&state, "topic=t").await;
    c.send(serde_json::json!({"op":"publish","topic":"t","data":"0123456789"}));
    match c.frame().await {
        WsMessage::Close(Some(f)) => assert_eq!((u16::from(f.code), f.reason.as_str()), (1009, "too_large")),
        other => panic!("expected a close frame, got {other:?}"),
    }
}
