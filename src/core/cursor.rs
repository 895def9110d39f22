//! [`Cursor`]: one opaque, URL-safe token naming a position in every topic of
//! a subscription, shared by all transports.
//!
//! Encoding (version 1): base64url without padding of
//! `0x01 (len:u8 topic:len bytes ms:varint seq:varint)*`, entries sorted by
//! topic. The alphabet `A-Z a-z 0-9 - _` is a subset of what the contract
//! allows, so a cursor needs no escaping in a header, a URL or JSON. Parsing
//! is strict: a cursor the server could not have produced is rejected, never
//! half-understood, and no input makes the decoder panic.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use smallvec::SmallVec;
use thiserror::Error;

use super::message::{MessageId, Topic, MAX_TOPIC_LEN};

/// Longest cursor the contract allows, in characters.
pub const MAX_CURSOR_LEN: usize = 4096;
const VERSION: u8 = 1;

/// Why a cursor was rejected (always the contract's `bad_request`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BadCursor {
    /// Longer than [`MAX_CURSOR_LEN`].
    #[error("cursor longer than 4096 characters")]
    TooLong,
    /// Not base64url, or an unknown version, or malformed entries.
    #[error("malformed cursor")]
    Malformed,
}

/// Positions per topic: the last message id delivered (or the position a
/// subscription started at), for each topic of a subscription.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    entries: SmallVec<[(Topic, MessageId); 1]>,
}

impl Cursor {
    /// An empty cursor.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cursor naming one position.
    pub fn single(topic: Topic, id: MessageId) -> Self {
        let mut c = Cursor::new();
        c.entries.push((topic, id));
        c
    }

    /// The position recorded for `topic`.
    pub fn get(&self, topic: &Topic) -> Option<MessageId> {
        self.find(topic.as_str()).ok().map(|i| self.entries[i].1)
    }

    /// Records `id` as the position of `topic`.
    pub fn set(&mut self, topic: &Topic, id: MessageId) {
        match self.find(topic.as_str()) {
            Ok(i) => self.entries[i].1 = id,
            Err(i) => self.entries.insert(i, (topic.clone(), id)),
        }
    }

    /// Moves `topic` to `id` when `id` is past its position: true when it
    /// moved (a message to deliver), false for a topic not named or an id
    /// already passed (a duplicate).
    pub fn advance(&mut self, topic: &Topic, id: MessageId) -> bool {
        match self.find(topic.as_str()) {
            Ok(i) if self.entries[i].1 < id => {
                self.entries[i].1 = id;
                true
            }
            _ => false,
        }
    }

    /// Moves a named `topic` to at least `id` (past a gap); never back.
    pub fn skip_to(&mut self, topic: &Topic, id: MessageId) {
        if let Ok(i) = self.find(topic.as_str()) {
            self.entries[i].1 = self.entries[i].1.max(id);
        }
    }

    /// Forgets `topic`.
    pub fn remove(&mut self, topic: &Topic) {
        if let Ok(i) = self.find(topic.as_str()) {
            self.entries.remove(i);
        }
    }

    /// Number of topics named.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no topic is named.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The (topic, position) pairs, sorted by topic.
    pub fn iter(&self) -> impl Iterator<Item = &(Topic, MessageId)> {
        self.entries.iter()
    }

    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(t, _)| t.as_str().cmp(topic))
    }

    fn binary_len(&self) -> usize {
        1 + self
            .entries
            .iter()
            .map(|(t, id)| 1 + t.as_str().len() + varint_len(id.ms) + varint_len(id.seq))
            .sum::<usize>()
    }

    /// Length of [`Cursor::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        (self.binary_len() * 4).div_ceil(3)
    }

    /// True when the encoded form fits the contract's limit.
    pub fn fits(&self) -> bool {
        self.encoded_len() <= MAX_CURSOR_LEN
    }

    /// The opaque string form.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(self.binary_len());
        raw.push(VERSION);
        for (t, id) in &self.entries {
            raw.push(t.as_str().len() as u8);
            raw.extend_from_slice(t.as_str().as_bytes());
            put_varint(&mut raw, id.ms);
            put_varint(&mut raw, id.seq);
        }
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Strictly parses a string produced by [`Cursor::encode`].
    pub fn parse(s: &str) -> Result<Self, BadCursor> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(BadCursor::TooLong);
        }
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| BadCursor::Malformed)?;
        let (&version, mut rest) = raw.split_first().ok_or(BadCursor::Malformed)?;
        if version != VERSION {
            return Err(BadCursor::Malformed);
        }
        let mut cursor = Cursor::new();
        while let Some((&len, tail)) = rest.split_first() {
            let len = len as usize;
            if len == 0 || len > MAX_TOPIC_LEN || tail.len() < len {
                return Err(BadCursor::Malformed);
            }
            let name = std::str::from_utf8(&tail[..len]).map_err(|_| BadCursor::Malformed)?;
            let topic = Topic::new(name).map_err(|_| BadCursor::Malformed)?;
            let (ms, tail) = take_varint(&tail[len..]).ok_or(BadCursor::Malformed)?;
            let (seq, tail) = take_varint(tail).ok_or(BadCursor::Malformed)?;
            // Entries are written sorted and unique; anything else is forged.
            if let Some((last, _)) = cursor.entries.last() {
                if last.as_str() >= topic.as_str() {
                    return Err(BadCursor::Malformed);
                }
            }
            cursor.entries.push((topic, MessageId::new(ms, seq)));
            rest = tail;
        }
        Ok(cursor)
    }
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a minimal LEB128 varint; rejects overlong and overflowing forms.
fn take_varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut n: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        n |= part << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return None; // overlong: a trailing zero group
            }
            return Some((n, &buf[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn round_trip_and_alphabet() {
        let mut c = Cursor::new();
        c.set(&t("b:x@y"), MessageId::new(1_700_000_000_123, 4));
        c.set(&t("a"), MessageId::new(0, 0));
        c.set(&t("b:x@y"), MessageId::new(1_700_000_000_124, 0));
        let s = c.encode();
        assert_eq!(s.len(), c.encoded_len());
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let back = Cursor::parse(&s).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get(&t("a")), Some(MessageId::ZERO));
        assert_eq!(back.get(&t("b:x@y")), Some(MessageId::new(1_700_000_000_124, 0)));
        assert_eq!(back.get(&t("c")), None);
        let mut back = back;
        back.remove(&t("a"));
        assert_eq!(back.len(), 1);
    }

    #[test]
    fn advance_and_skip_never_go_back() {
        let mut c = Cursor::single(t("a"), MessageId::new(5, 0));
        assert!(!c.advance(&t("a"), MessageId::new(5, 0)), "the same id is a duplicate");
        assert!(!c.advance(&t("a"), MessageId::new(4, 9)), "an older id is a duplicate");
        assert!(c.advance(&t("a"), MessageId::new(5, 1)));
        assert_eq!(c.get(&t("a")), Some(MessageId::new(5, 1)));
        assert!(!c.advance(&t("b"), MessageId::new(9, 0)), "a topic not named is not subscribed");
        assert_eq!(c.len(), 1);
        c.skip_to(&t("a"), MessageId::new(3, 0));
        assert_eq!(c.get(&t("a")), Some(MessageId::new(5, 1)), "a gap never moves the cursor back");
        c.skip_to(&t("a"), MessageId::new(8, 0));
        assert_eq!(c.get(&t("a")), Some(MessageId::new(8, 0)));
        c.skip_to(&t("b"), MessageId::new(8, 0));
        assert_eq!(c.get(&t("b")), None);
    }

    #[test]
    fn rejects_forgeries() {
        let enc = |raw: &[u8]| URL_SAFE_NO_PAD.encode(raw);
        for bad in [
            String::new(),
            "!!".into(),
            "AQ==".into(),                           // padding
            enc(&[2]),                               // unknown version
            enc(&[1, 0]),                            // empty topic
            enc(&[1, 1, b'a', 1]),                   // missing seq
            enc(&[1, 1, b'/', 1, 1]),                // bad topic char
            enc(&[1, 1, b'a', 0x80, 0, 1]),          // overlong varint
            enc(&[1, 1, b'b', 1, 1, 1, b'a', 1, 1]), // unsorted
            enc(&[1, 1, b'a', 1, 1, 1, b'a', 1, 1]), // duplicate
            enc(&[1, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1]), // overflow
            "A".repeat(4097),
        ] {
            assert!(Cursor::parse(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(Cursor::parse(&enc(&[1])).unwrap(), Cursor::new());
    }

    fn arb_cursor() -> impl Strategy<Value = Cursor> {
        proptest::collection::btree_map("[A-Za-z0-9_.:@-]{1,128}", (any::<u64>(), any::<u64>()), 0..8)
            .prop_map(|m| {
                let mut c = Cursor::new();
                for (k, (ms, seq)) in m {
                    c.set(&Topic::new(&k).unwrap(), MessageId::new(ms, seq));
                }
                c
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(c in arb_cursor()) {
            let s = c.encode();
            prop_assert!(s.len() <= MAX_CURSOR_LEN);
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(Cursor::parse(&s).unwrap(), c);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,5000}") {
            let _ = Cursor::parse(&s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let s = URL_SAFE_NO_PAD.encode(&raw);
            if let Ok(c) = Cursor::parse(&s) {
                // Whatever parses re-encodes to the same string: one form per cursor.
                prop_assert_eq!(c.encode(), s);
            }
        }
    }
}
