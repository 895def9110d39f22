//! The bus's nouns: [`Topic`], [`MessageId`] and [`Message`].
//!
//! A message keeps its `data` as the exact JSON bytes the publisher sent and
//! caches each wire encoding the first time a transport asks for it, so a
//! message fanned out to many subscribers is encoded once per wire format and
//! the bytes are shared (`Bytes` clones are reference-count bumps).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use thiserror::Error;

/// Longest topic name the contract allows.
pub const MAX_TOPIC_LEN: usize = 128;

/// A validated topic name: `^[A-Za-z0-9_.:@-]{1,128}$`.
///
/// Cloning is a reference-count bump. None of the allowed characters needs
/// escaping in JSON, so encoders may write the name verbatim.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// Why a topic name was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("topic must be 1 to 128 characters of A-Z a-z 0-9 _ . : @ -")]
pub struct BadTopic;

impl Topic {
    /// Validates `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, BadTopic> {
        if Self::is_valid(name) {
            Ok(Topic(Arc::from(name)))
        } else {
            Err(BadTopic)
        }
    }

    /// True when `name` is a valid topic name.
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_TOPIC_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", &self.0)
    }
}

/// A message's position in its topic: `"<ms>-<seq>"`, the Redis Streams entry
/// id form. Ordered by `ms`, then `seq`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MessageId {
    /// Milliseconds part (acceptance time, never decreasing within a topic).
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

/// Why a message id was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("message id must look like <ms>-<seq>, two decimal integers")]
pub struct BadMessageId;

impl MessageId {
    /// The id before every real id; "from the beginning".
    pub const ZERO: MessageId = MessageId { ms: 0, seq: 0 };

    /// Builds an id.
    pub const fn new(ms: u64, seq: u64) -> Self {
        MessageId { ms, seq }
    }

    /// The smallest id strictly greater than `self`, if any.
    pub fn successor(self) -> Option<MessageId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(MessageId { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| MessageId { ms, seq: 0 }),
        }
    }

    /// The greatest id strictly smaller than `self`, if any.
    pub fn predecessor(self) -> Option<MessageId> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(MessageId { ms: self.ms, seq }),
            None => self.ms.checked_sub(1).map(|ms| MessageId { ms, seq: u64::MAX }),
        }
    }

    /// The next id to assign after `last` for a message accepted at `now_ms`:
    /// strictly greater than `last` even when the clock stepped back.
    pub fn next_after(last: MessageId, now_ms: u64) -> Option<MessageId> {
        if now_ms > last.ms {
            Some(MessageId { ms: now_ms, seq: 0 })
        } else {
            last.successor()
        }
    }
}

fn parse_u64_strict(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl FromStr for MessageId {
    type Err = BadMessageId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(BadMessageId)?;
        Ok(MessageId {
            ms: parse_u64_strict(ms).ok_or(BadMessageId)?,
            seq: parse_u64_strict(seq).ok_or(BadMessageId)?,
        })
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl serde::Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The wire encodings a message can cache; one slot each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Wire {
    /// The message JSON of contract §1: `{"topic","id","ts","data"}`.
    Json = 0,
    /// The WebSocket `message` frame for a single-topic subscriber (cursor
    /// names only this topic).
    WsSingle = 1,
    /// The SSE event for a single-topic stream.
    SseSingle = 2,
    /// The protobuf `rtgate.v1.Message` fields topic, id, ts and data
    /// (a multi-topic gRPC subscriber appends its own cursor field).
    Grpc = 3,
    /// The protobuf `rtgate.v1.Message` with the single-topic cursor.
    GrpcSingle = 4,
}

impl Wire {
    /// An ephemeral message has no cursor, so its frame for each transport
    /// lives in that transport's single-topic slot.
    pub const EPHEMERAL_WS: Wire = Wire::WsSingle;
    /// See [`Wire::EPHEMERAL_WS`].
    pub const EPHEMERAL_SSE: Wire = Wire::SseSingle;
    /// See [`Wire::EPHEMERAL_WS`].
    pub const EPHEMERAL_GRPC: Wire = Wire::GrpcSingle;
}

const WIRE_SLOTS: usize = 5;

/// One published message. Shared as `Arc<Message>` from the engine through
/// the hub into every subscriber's outbox.
pub struct Message {
    /// The topic it was published on.
    pub topic: Topic,
    /// Its position in the topic.
    pub id: MessageId,
    /// Server acceptance time, Unix milliseconds.
    pub ts: u64,
    /// The JSON text of `data`, exactly as the publisher sent it.
    pub data: Bytes,
    /// Monotonic time the gateway accepted or first saw it; for latency metrics.
    pub seen: tokio::time::Instant,
    /// The publisher's coalescing key (`delivery = "latest"` keeps the
    /// newest message per key); stored with the message.
    pub key: Option<Arc<str>>,
    /// Set on an ephemeral message (contract §11): never stored, no id, no
    /// cursor. `id` and `ts` are then the acceptance time only.
    pub ephemeral: Option<Box<Ephemeral>>,
    /// The wire encodings, one slot each, allocated at the first: a
    /// retained message that no one reads back carries only this pointer
    /// (inline, the five slots were 200 of its bytes).
    wire: OnceLock<Box<[OnceLock<Bytes>; WIRE_SLOTS]>>,
}

/// Who sent an ephemeral message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ephemeral {
    /// The publishing connection's id (0: not a connection), so it is not
    /// echoed back to it.
    pub origin: u64,
    /// The publisher's user id, shown to receivers as `user`.
    pub user: Option<Arc<str>>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .field("ts", &self.ts)
            .field("data", &String::from_utf8_lossy(&self.data))
            .finish()
    }
}

impl Message {
    /// Builds a message; `data` must already be valid JSON text.
    pub fn new(topic: Topic, id: MessageId, ts: u64, data: Bytes) -> Self {
        Message {
            topic,
            id,
            ts,
            data,
            seen: tokio::time::Instant::now(),
            key: None,
            ephemeral: None,
            wire: Default::default(),
        }
    }

    /// The same message with a coalescing key.
    pub fn with_key(mut self, key: Option<Arc<str>>) -> Self {
        self.key = key;
        self
    }

    /// An ephemeral message from `origin` (see [`Ephemeral`]).
    pub fn ephemeral(topic: Topic, data: Bytes, from: Ephemeral) -> Self {
        let ts = now_ms();
        let mut m = Message::new(topic, MessageId::ZERO, ts, data);
        m.ephemeral = Some(Box::new(from));
        m
    }

    /// True for an ephemeral message.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral.is_some()
    }

    /// The cached encoding for `wire`, computed by `encode` on first use.
    pub fn encoded(&self, wire: Wire, encode: impl FnOnce(&Message) -> Bytes) -> Bytes {
        let slots = self.wire.get_or_init(Default::default);
        slots[wire as usize].get_or_init(|| encode(self)).clone()
    }

    /// Appends the message JSON of §1 to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"topic\":\"");
        out.extend_from_slice(self.topic.as_str().as_bytes());
        out.extend_from_slice(b"\",\"id\":\"");
        write_id(out, self.id);
        out.extend_from_slice(b"\",\"ts\":");
        write_u64(out, self.ts);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(&self.data);
        out.push(b'}');
    }

    /// Appends the message JSON of §1 with `"skipped":N` when `skipped` is
    /// more than 0 (`delivery = "latest"`: SSE data, long-poll messages).
    pub fn write_json_skipped(&self, out: &mut Vec<u8>, skipped: u64) {
        self.write_json(out);
        if skipped > 0 {
            out.pop();
            out.extend_from_slice(b",\"skipped\":");
            write_u64(out, skipped);
            out.push(b'}');
        }
    }

    /// The message JSON of §1, cached.
    pub fn json(&self) -> Bytes {
        self.encoded(Wire::Json, |m| {
            let mut out = Vec::with_capacity(m.data.len() + 64 + m.topic.as_str().len());
            m.write_json(&mut out);
            Bytes::from(out)
        })
    }
}

/// Appends `id` in its `"<ms>-<seq>"` form.
pub fn write_id(out: &mut Vec<u8>, id: MessageId) {
    write_u64(out, id.ms);
    out.push(b'-');
    write_u64(out, id.seq);
}

/// Appends the decimal form of `n`.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Milliseconds since the Unix epoch by the wall clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(Topic::new("a").is_ok());
        assert!(Topic::new("chat:room-1@eu.x_y").is_ok());
        assert!(Topic::new(&"a".repeat(128)).is_ok());
        assert_eq!(Topic::new(&"a".repeat(129)), Err(BadTopic));
        assert_eq!(Topic::new(""), Err(BadTopic));
        assert_eq!(Topic::new("a b"), Err(BadTopic));
        assert_eq!(Topic::new("a/b"), Err(BadTopic));
        assert_eq!(Topic::new("é"), Err(BadTopic));
    }

    #[test]
    fn ids_parse_and_print() {
        let id: MessageId = "1700000000000-3".parse().unwrap();
        assert_eq!(id, MessageId::new(1_700_000_000_000, 3));
        assert_eq!(id.to_string(), "1700000000000-3");
        for bad in ["", "1", "-1", "1-", "a-1", "1-b", "+1-1", "1-1-1", " 1-1", "99999999999999999999-1"] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
        assert!(MessageId::new(1, 5) < MessageId::new(2, 0));
        assert!(MessageId::new(2, 5) > MessageId::new(2, 4));
    }

    #[test]
    fn next_id_is_strictly_increasing_even_when_clock_steps_back() {
        let last = MessageId::new(1000, 7);
        assert_eq!(MessageId::next_after(last, 1001), Some(MessageId::new(1001, 0)));
        assert_eq!(MessageId::next_after(last, 1000), Some(MessageId::new(1000, 8)));
        assert_eq!(MessageId::next_after(last, 10), Some(MessageId::new(1000, 8)));
        assert_eq!(MessageId::next_after(MessageId::new(5, u64::MAX), 3), Some(MessageId::new(6, 0)));
        assert_eq!(MessageId::next_after(MessageId::new(u64::MAX, u64::MAX), 3), None);
    }

    #[test]
    fn json_is_verbatim() {
        let t = Topic::new("t").unwrap();
        let m = Message::new(t, MessageId::new(5, 1), 5, Bytes::from_static(b"{\"b\":1, \"a\":2}"));
        assert_eq!(&m.json()[..], br#"{"topic":"t","id":"5-1","ts":5,"data":{"b":1, "a":2}}"#);
    }

    /// Every retained message pays this (the memory engine keeps up to
    /// `history.max_len` per topic): bounded so that growth is noticed.
    #[test]
    fn a_message_stays_small_and_encodes_each_wire_once() {
        let size = std::mem::size_of::<Message>();
        assert!(size <= 128, "Message grew to {size} B");
        let m = Message::new(Topic::new("t").unwrap(), MessageId::new(1, 0), 1, Bytes::from_static(b"1"));
        let calls = std::cell::Cell::new(0);
        let encode = |_: &Message| {
            calls.set(calls.get() + 1);
            Bytes::from_static(b"frame")
        };
        let a = m.encoded(Wire::WsSingle, encode);
        let b = m.encoded(Wire::WsSingle, encode);
        assert_eq!((a.as_ptr(), calls.get()), (b.as_ptr(), 1), "encoded once, the bytes shared");
        m.encoded(Wire::SseSingle, encode);
        assert_eq!(calls.get(), 2, "one encoding per wire");
    }
}
