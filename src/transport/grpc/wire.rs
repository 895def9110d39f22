//! `rtgate.v1.Message` as bytes encoded once per message.
//!
//! The server's generated code refers to [`EncodedMessage`] wherever the
//! proto says `Message` (see `build.rs`), so fan-out writes shared bytes
//! instead of building and encoding a struct per subscriber. Protobuf allows
//! a message's fields in any order and concatenated encodings merge, so a
//! message is a shared `head` (topic, id, ts, data; cached on the message)
//! followed by a per-subscriber `tail` (the cursor, and a gap notice when
//! there is one). A single-topic subscriber's whole encoding, cursor
//! included, is the same for every such subscriber and is cached as well.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, skip_field, DecodeContext, WireType};
use prost::DecodeError;

use crate::core::message::{write_id, Wire};
use crate::core::replay::Gap;
use crate::core::{Cursor, Message};

/// Field numbers of `rtgate.v1.Message` and `rtgate.v1.Gap`.
mod field {
    pub(super) const TOPIC: u32 = 1;
    pub(super) const ID: u32 = 2;
    pub(super) const TS: u32 = 3;
    pub(super) const DATA: u32 = 4;
    pub(super) const CURSOR: u32 = 5;
    pub(super) const GAP: u32 = 6;
    pub(super) const GAP_TOPIC: u32 = 1;
    pub(super) const GAP_AFTER: u32 = 2;
    pub(super) const GAP_OLDEST: u32 = 3;
    pub(super) const GAP_REASON: u32 = 4;
    pub(super) const EPHEMERAL: u32 = 7;
    pub(super) const USER: u32 = 8;
    pub(super) const SKIPPED: u32 = 9;
}

/// A `rtgate.v1.Message` ready to be written: `head` then `tail`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct EncodedMessage {
    head: Bytes,
    tail: Bytes,
}

impl std::fmt::Debug for EncodedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedMessage({} bytes)", self.head.len() + self.tail.len())
    }
}

impl EncodedMessage {
    /// The message without a cursor (History replies).
    pub fn plain(m: &Message) -> Self {
        EncodedMessage { head: head(m), tail: Bytes::new() }
    }

    /// The message for a subscriber whose position after it is `cursor`.
    /// A single-topic cursor uses the cached encoding shared by every
    /// single-topic subscriber.
    pub fn with_cursor(m: &Message, cursor: &Cursor) -> Self {
        if cursor.len() == 1 {
            let whole = m.encoded(Wire::GrpcSingle, |m| {
                let head = head(m);
                let cursor = Cursor::single(m.topic.clone(), m.id).encode();
                let mut b = BytesMut::with_capacity(head.len() + cursor.len() + 4);
                b.put_slice(&head);
                put_str(&mut b, field::CURSOR, &cursor);
                b.freeze()
            });
            return EncodedMessage { head: whole, tail: Bytes::new() };
        }
        let cursor = cursor.encode();
        let mut tail = BytesMut::with_capacity(cursor.len() + 4);
        put_str(&mut tail, field::CURSOR, &cursor);
        EncodedMessage { head: head(m), tail: tail.freeze() }
    }

    /// Adds the `gap` field (Subscribe reports a gap on the first message
    /// after it).
    pub fn with_gap(self, gap: &Gap) -> Self {
        let (after, oldest) = (gap.after.to_string(), gap.oldest.to_string());
        let mut inner = BytesMut::new();
        put_str(&mut inner, field::GAP_TOPIC, gap.topic.as_str());
        put_str(&mut inner, field::GAP_AFTER, &after);
        put_str(&mut inner, field::GAP_OLDEST, &oldest);
        if gap.dropped {
            put_str(&mut inner, field::GAP_REASON, "dropped");
        }
        let mut tail = BytesMut::with_capacity(self.tail.len() + inner.len() + 4);
        tail.put_slice(&self.tail);
        put_bytes(&mut tail, field::GAP, &inner);
        EncodedMessage { head: self.head, tail: tail.freeze() }
    }
}

impl EncodedMessage {
    /// Adds `skipped` (`delivery = "latest"`; nothing when 0).
    pub fn with_skipped(self, skipped: u64) -> Self {
        if skipped == 0 {
            return self;
        }
        let mut tail = BytesMut::with_capacity(self.tail.len() + 12);
        tail.put_slice(&self.tail);
        encode_key(field::SKIPPED, WireType::Varint, &mut tail);
        encode_varint(skipped, &mut tail);
        EncodedMessage { head: self.head, tail: tail.freeze() }
    }

    /// An ephemeral message (contract §11): topic, ts, data,
    /// `ephemeral = true` and the sender's `user`; no id, no cursor.
    /// Cached on the message.
    pub fn ephemeral(m: &Message) -> Self {
        let head = m.encoded(Wire::EPHEMERAL_GRPC, |m| {
            let mut b = BytesMut::with_capacity(m.data.len() + m.topic.as_str().len() + 32);
            put_str(&mut b, field::TOPIC, m.topic.as_str());
            encode_key(field::TS, WireType::Varint, &mut b);
            encode_varint(m.ts, &mut b);
            put_bytes(&mut b, field::DATA, &m.data);
            encode_key(field::EPHEMERAL, WireType::Varint, &mut b);
            encode_varint(1, &mut b);
            if let Some(user) = m.ephemeral.as_ref().and_then(|e| e.user.as_deref()) {
                put_str(&mut b, field::USER, user);
            }
            b.freeze()
        });
        EncodedMessage { head, tail: Bytes::new() }
    }
}

/// The shared fields (topic, id, ts, data), cached on the message.
fn head(m: &Message) -> Bytes {
    m.encoded(Wire::Grpc, |m| {
        let mut id = Vec::with_capacity(24);
        write_id(&mut id, m.id);
        let mut b = BytesMut::with_capacity(m.data.len() + m.topic.as_str().len() + id.len() + 24);
        put_str(&mut b, field::TOPIC, m.topic.as_str());
        put_bytes(&mut b, field::ID, &id);
        if m.ts != 0 {
            encode_key(field::TS, WireType::Varint, &mut b);
            encode_varint(m.ts, &mut b);
        }
        put_bytes(&mut b, field::DATA, &m.data);
        b.freeze()
    })
}

fn put_str(b: &mut BytesMut, tag: u32, s: &str) {
    put_bytes(b, tag, s.as_bytes());
}

/// A length-delimited field; empty values are omitted, as proto3 does.
fn put_bytes(b: &mut BytesMut, tag: u32, v: &[u8]) {
    if v.is_empty() {
        return;
    }
    b.reserve(v.len() + 1 + encoded_len_varint(v.len() as u64) + 1);
    encode_key(tag, WireType::LengthDelimited, b);
    encode_varint(v.len() as u64, b);
    b.put_slice(v);
}

impl prost::Message for EncodedMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.head);
        buf.put_slice(&self.tail);
    }

    /// The server never decodes messages; fields are skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    fn clear(&mut self) {
        *self = EncodedMessage::default();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::core::{MessageId, Topic};

    fn message(topic: &str, ms: u64) -> Message {
        Message::new(
            Topic::new(topic).unwrap(),
            MessageId::new(ms, 7),
            ms,
            Bytes::from_static(b"{\"k\":[1,2]}"),
        )
    }

    /// The bytes decode as the plain generated type, field by field.
    #[test]
    fn decodes_as_the_proto_message() {
        let m = message("room.1", 1_700_000_000_123);
        let plain =
            crate::proto::Message::decode(EncodedMessage::plain(&m).encode_to_vec().as_slice()).unwrap();
        assert_eq!(plain.topic, "room.1");
        assert_eq!(plain.id, "1700000000123-7");
        assert_eq!(plain.ts, 1_700_000_000_123);
        assert_eq!(plain.data, b"{\"k\":[1,2]}");
        assert_eq!(plain.cursor, "");
        assert!(plain.gap.is_none());

        let single = Cursor::single(m.topic.clone(), m.id);
        let got = crate::proto::Message::decode(
            EncodedMessage::with_cursor(&m, &single).encode_to_vec().as_slice(),
        )
        .unwrap();
        assert_eq!(got.cursor, single.encode());
        assert_eq!(got.id, "1700000000123-7");

        let mut multi = single.clone();
        multi.set(&Topic::new("other").unwrap(), MessageId::new(5, 0));
        let gap = Gap {
            topic: m.topic.clone(),
            after: MessageId::new(3, 0),
            oldest: MessageId::new(9, 1),
            resume_from: MessageId::new(9, 0),
            dropped: false,
        };
        let encoded = EncodedMessage::with_cursor(&m, &multi).with_gap(&gap);
        let got = crate::proto::Message::decode(encoded.encode_to_vec().as_slice()).unwrap();
        assert_eq!(got.cursor, multi.encode());
        assert_eq!(got.data, b"{\"k\":[1,2]}");
        let g = got.gap.unwrap();
        assert_eq!((g.topic.as_str(), g.after.as_str(), g.oldest.as_str()), ("room.1", "3-0", "9-1"));
    }

    #[test]
    fn single_topic_encoding_is_shared() {
        let m = message("a", 10);
        let c = Cursor::single(m.topic.clone(), m.id);
        let one = EncodedMessage::with_cursor(&m, &c);
        let two = EncodedMessage::with_cursor(&m, &c);
        assert_eq!(one.head.as_ptr(), two.head.as_ptr(), "same cached bytes");
        assert_eq!(EncodedMessage::plain(&m).head.as_ptr(), EncodedMessage::plain(&m).head.as_ptr());
    }
}
