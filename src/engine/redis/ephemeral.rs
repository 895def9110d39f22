//! Ephemeral messages (contract §11) across processes: Redis pub/sub, one
//! channel per key group (`{prefix}{s<N>}:e`, the group's hash tag, so on a
//! Cluster it is a sharded channel on the group's slot: `SPUBLISH` and
//! `SSUBSCRIBE`). Nothing is stored: a process that is not subscribed at
//! that moment never sees the message, and none is ever replayed.
//!
//! # Once per subscriber
//!
//! [`RedisEngine::broadcast`](crate::core::Engine::broadcast) publishes to
//! Redis first (a failure is `unavailable` and nothing is delivered), then
//! hands the message to the local feed itself; every payload carries the
//! publishing process's id, and the subscription skips its own process's
//! messages. Local subscribers thus get each message once, without a round
//! trip through Redis, and never twice.
//!
//! # Payload (version 1, binary)
//!
//! ```text
//! [0]        1 (version)
//! [1..9]     publishing process id (u64, big-endian)
//! [9..17]    origin connection id (u64, big-endian; 0 = not a connection)
//! [17..19]   topic length (u16, big-endian), then the topic
//! [..+2]     user length + 1 (u16, big-endian; 0 = no user), then the user
//! rest       data (the JSON text as published)
//! ```
//!
//! # Subscription
//!
//! One task per process. A single server: one pub/sub connection
//! subscribed to every group's channel, pinged every second (a stalled or
//! dead connection is replaced, with jittered backoff, and counts as a
//! connection failure for readiness). A Cluster: one RESP3 cluster
//! connection with sharded subscriptions to every group's channel; the
//! client re-subscribes by itself after reconnects. Received messages go
//! through a bounded queue; when it is full, messages are dropped (the
//! first thing to go under backpressure).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::conn::Clients;
use super::RedisEngine;
use crate::core::engine::EngineError;
use crate::core::message::{Ephemeral, Message, Topic};

/// The payload's version byte.
const VERSION: u8 = 1;
/// Bytes before the topic.
const HEADER: usize = 1 + 8 + 8;
/// Received ephemeral messages queued at most (Cluster push queue).
const QUEUE: usize = 4096;
/// How often the subscription connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(1);

/// An ephemeral payload that cannot be framed or read.
#[derive(Debug, Error, PartialEq, Eq)]
pub(super) enum FrameError {
    /// The user id is longer than the framing allows.
    #[error("user id too long for an ephemeral message")]
    UserTooLong,
    /// The topic is longer than the framing allows.
    #[error("topic too long for an ephemeral message")]
    TopicTooLong,
    /// Not a version-1 payload, truncated, or an invalid topic or user.
    #[error("malformed ephemeral payload")]
    Malformed,
}

/// One decoded payload.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame {
    /// The publishing process.
    pub(super) process: u64,
    /// The topic.
    pub(super) topic: Topic,
    /// Who sent it.
    pub(super) from: Ephemeral,
    /// The JSON text.
    pub(super) data: Bytes,
}

/// Frames one ephemeral message (see the module docs).
pub(super) fn encode(
    process: u64,
    topic: &Topic,
    from: &Ephemeral,
    data: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let t = topic.as_str().as_bytes();
    let tlen = u16::try_from(t.len()).map_err(|_| FrameError::TopicTooLong)?;
    let user = from.user.as_deref().map(str::as_bytes);
    let ulen = match user {
        Some(u) => {
            u16::try_from(u.len()).ok().and_then(|n| n.checked_add(1)).ok_or(FrameError::UserTooLong)?
        }
        None => 0,
    };
    let mut out = Vec::with_capacity(HEADER + 4 + t.len() + user.map_or(0, <[u8]>::len) + data.len());
    out.push(VERSION);
    out.extend_from_slice(&process.to_be_bytes());
    out.extend_from_slice(&from.origin.to_be_bytes());
    out.extend_from_slice(&tlen.to_be_bytes());
    out.extend_from_slice(t);
    out.extend_from_slice(&ulen.to_be_bytes());
    if let Some(u) = user {
        out.extend_from_slice(u);
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Reads a payload framed by [`encode`].
pub(super) fn decode(payload: &[u8]) -> Result<Frame, FrameError> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
        if p.len() < n {
            return Err(FrameError::Malformed);
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Ok(head)
    }
    fn u64_of(b: &[u8]) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(b.try_into().map_err(|_| FrameError::Malformed)?))
    }
    fn u16_of(b: &[u8]) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(b.try_into().map_err(|_| FrameError::Malformed)?))
    }
    let mut p = payload;
    if take(&mut p, 1)? != [VERSION] {
        return Err(FrameError::Malformed);
    }
    let process = u64_of(take(&mut p, 8)?)?;
    let origin = u64_of(take(&mut p, 8)?)?;
    let tlen = usize::from(u16_of(take(&mut p, 2)?)?);
    let topic = std::str::from_utf8(take(&mut p, tlen)?).map_err(|_| FrameError::Malformed)?;
    let topic = Topic::new(topic).map_err(|_| FrameError::Malformed)?;
    let ulen = usize::from(u16_of(take(&mut p, 2)?)?);
    let user = match ulen {
        0 => None,
        n => {
            let u = std::str::from_utf8(take(&mut p, n - 1)?).map_err(|_| FrameError::Malformed)?;
            Some(Arc::<str>::from(u))
        }
    };
    Ok(Frame { process, topic, from: Ephemeral { origin, user }, data: Bytes::copy_from_slice(p) })
}

/// Why the subscription stopped (it is then reopened).
#[derive(Debug, Error)]
enum SubError {
    /// Redis refused, or the connection failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The connection closed.
    #[error("subscription connection closed")]
    Closed,
    /// A step took longer than the command timeout (Redis slow or
    /// unreachable; the health task's pings decide readiness).
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// The subscription task's reconnect state.
struct Retry {
    backoff: Duration,
    failing: bool,
}

impl Retry {
    /// The subscription is confirmed: reset the backoff, log the recovery.
    fn opened(&mut self) {
        self.backoff = Duration::from_millis(100);
        if self.failing {
            tracing::info!(engine = "redis", "ephemeral subscription was open again");
            self.failing = false;
        }
    }
}

impl RedisEngine {
    /// Publishes `message` (ephemeral) to its group's channel, then hands it
    /// to the local feed.
    pub(super) async fn broadcast_ephemeral(&self, message: Arc<Message>) -> Result<(), EngineError> {
        let Some(from) = message.ephemeral.as_deref() else {
            return Err(EngineError::Rejected("broadcast of a stored message".into()));
        };
        let payload = encode(self.inner.process_id, &message.topic, from, &message.data)
            .map_err(|e| EngineError::Rejected(e.to_string()))?;
        let channel = self.ephemeral_channel(self.group_of(&message.topic));
        let publish =
            if matches!(self.inner.clients, Clients::Cluster { .. }) { "SPUBLISH" } else { "PUBLISH" };
        let mut conn = self.conn().await?;
        let cmd = redis::cmd(publish).arg(channel).arg(payload).to_owned();
        self.run(cmd.query_async::<i64>(&mut conn)).await?;
        self.inner.listener.deliver(&message);
        Ok(())
    }

    /// Hands a received payload to the feed: skipped when this process
    /// published it (delivered locally already), when no local subscriber
    /// watches its topic, or when it is malformed.
    fn on_ephemeral(&self, payload: &[u8]) {
        let frame = match decode(payload) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(engine = "redis", error = %e, "ignored an ephemeral payload");
                return;
            }
        };
        if frame.process == self.inner.process_id {
            return;
        }
        let group = self.group_of(&frame.topic);
        if !self.inner.groups[group].topics.lock().contains_key(&frame.topic) {
            return;
        }
        let message = Arc::new(Message::ephemeral(frame.topic, frame.data, frame.from));
        self.inner.listener.deliver(&message);
    }

    /// Every group's ephemeral channel.
    fn ephemeral_channels(&self) -> Vec<String> {
        (0..self.inner.groups.len()).map(|g| self.ephemeral_channel(g)).collect()
    }

    /// The subscription task: keeps one subscription to every group's
    /// channel open until `token` is cancelled.
    pub(super) async fn subscribe_ephemeral(self, token: CancellationToken) {
        let mut retry = Retry { backoff: Duration::from_millis(100), failing: false };
        loop {
            let e = tokio::select! {
                _ = token.cancelled() => return,
                e = self.ephemeral_session(&mut retry) => e,
            };
            if !retry.failing {
                tracing::warn!(engine = "redis", error = %e, "ephemeral subscription failed; reconnecting");
                retry.failing = true;
            }
            match e {
                // Like a live reader's: evidence of an outage.
                SubError::Redis(_) | SubError::Closed => self.connection_failed(&e.to_string()),
                SubError::Timeout(_) => {
                    crate::metrics::engine_error();
                    self.inner.probe.notify_one();
                }
            }
            if super::reader::sleep_backoff(&token, &mut retry.backoff).await {
                return;
            }
        }
    }

    /// One subscription, until it fails (the error says why).
    async fn ephemeral_session(&self, retry: &mut Retry) -> SubError {
        let ended = match &self.inner.clients {
            Clients::Single(client) => self.single_session(client, retry).await,
            Clients::Cluster { .. } => self.cluster_session(retry).await,
        };
        match ended {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    /// A single server's subscription: one pub/sub connection subscribed to
    /// every group's channel, pinged every second.
    async fn single_session(
        &self,
        client: &redis::Client,
        retry: &mut Retry,
    ) -> Result<std::convert::Infallible, SubError> {
        let op_timeout = self.inner.opts.op_timeout;
        let timed = |what| move |_| SubError::Timeout(what);
        let pubsub = tokio::time::timeout(op_timeout, client.get_async_pubsub())
            .await
            .map_err(timed("subscription connect"))??;
        let (mut sink, mut stream) = pubsub.split();
        tokio::time::timeout(op_timeout, sink.subscribe(self.ephemeral_channels()))
            .await
            .map_err(timed("subscribe"))??;
        retry.opened();
        let mut tick = tokio::time::interval(PING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.on_ephemeral(msg.get_payload_bytes()),
                    None => return Err(SubError::Closed),
                },
                _ = tick.tick() => {
                    tokio::time::timeout(op_timeout, sink.ping::<redis::Value>())
                        .await
                        .map_err(timed("subscription ping"))??;
                }
            }
        }
    }

    /// The Cluster's subscription: sharded subscriptions on one RESP3
    /// cluster connection (re-subscribed by the client after reconnects).
    async fn cluster_session(&self, retry: &mut Retry) -> Result<std::convert::Infallible, SubError> {
        let opts = &self.inner.opts;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<redis::PushInfo>(QUEUE);
        let client = redis::cluster::ClusterClient::builder(opts.cluster_urls.iter().map(String::as_str))
            .connection_timeout(opts.op_timeout)
            .response_timeout(opts.op_timeout)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(move |info: redis::PushInfo| {
                // Full: dropped (ephemeral messages go first under load).
                let _ = tx.try_send(info);
                Ok::<(), ()>(())
            })
            .build()?;
        let mut conn = tokio::time::timeout(opts.op_timeout, client.get_async_connection())
            .await
            .map_err(|_| SubError::Timeout("subscription connect"))??;
        for channel in self.ephemeral_channels() {
            // One call per channel: the channels hash to different slots.
            tokio::time::timeout(opts.op_timeout, conn.ssubscribe(&channel))
                .await
                .map_err(|_| SubError::Timeout("subscribe"))??;
        }
        retry.opened();
        while let Some(info) = rx.recv().await {
            if let Some(msg) = redis::Msg::from_push_info(info) {
                self.on_ephemeral(msg.get_payload_bytes());
            }
        }
        Err(SubError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let topic = Topic::new("room.1").unwrap();
        let from = Ephemeral { origin: 42, user: Some(Arc::from("alice")) };
        let p = encode(7, &topic, &from, br#"{"typing":true}"#).unwrap();
        let f = decode(&p).unwrap();
        assert_eq!(
            f,
            Frame { process: 7, topic: topic.clone(), from, data: Bytes::from_static(br#"{"typing":true}"#) }
        );

        let anon = Ephemeral { origin: 0, user: None };
        let p = encode(u64::MAX, &topic, &anon, b"1").unwrap();
        let f = decode(&p).unwrap();
        assert_eq!((f.process, f.from, &f.data[..]), (u64::MAX, anon, &b"1"[..]));
        // An empty user is a user, not "none".
        let empty = Ephemeral { origin: 1, user: Some(Arc::from("")) };
        assert_eq!(decode(&encode(1, &topic, &empty, b"2").unwrap()).unwrap().from, empty);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let topic = Topic::new("t").unwrap();
        let p = encode(1, &topic, &Ephemeral::default(), b"{}").unwrap();
        // Every truncation inside the header fails; data may be empty.
        for n in 0..HEADER + 2 + 1 + 2 {
            assert_eq!(decode(&p[..n]), Err(FrameError::Malformed), "cut at {n}");
        }
        let mut other = p.clone();
        other[0] = 2;
        assert_eq!(decode(&other), Err(FrameError::Malformed), "unknown version");
        let long = Ephemeral { origin: 0, user: Some(Arc::from("u".repeat(70_000).as_str())) };
        assert_eq!(encode(1, &topic, &long, b"1"), Err(FrameError::UserTooLong));
    }
}
