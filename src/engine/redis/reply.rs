//! Parsing of Redis replies: the scripts' results and stream entries.

use std::sync::Arc;

use bytes::Bytes;
use redis::Value;

use crate::core::engine::{EngineError, Published};
use crate::core::message::{Message, MessageId, Topic};

/// What the history script read about a stream.
pub(super) struct StreamRead {
    /// The stream's last generated id.
    pub(super) last: Option<MessageId>,
    /// The newest id ever trimmed from the stream.
    pub(super) trimmed: Option<MessageId>,
    /// The oldest id still in the stream.
    pub(super) first: Option<MessageId>,
    /// The entries read, as `[id, [field, value, …]]`.
    pub(super) entries: Vec<Value>,
    /// Whether the `after` id itself is still in the stream.
    pub(super) present: bool,
    /// Whether the page stopped at its byte budget with entries left.
    pub(super) cut: bool,
}

/// A string reply (bulk, simple or verbatim) as text.
pub(super) fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// An integer reply, or a string holding one.
pub(super) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_str(other).and_then(|s| s.parse().ok()),
    }
}

/// A stream entry id.
pub(super) fn parse_id(v: &Value) -> Option<MessageId> {
    as_str(v).and_then(|s| s.parse().ok())
}

/// The error for a reply of an unexpected shape.
pub(super) fn malformed(what: &str) -> EngineError {
    EngineError::Unavailable(format!("unexpected reply from redis: {what}"))
}

/// `[id, [field, value, …]]` → a message of `topic`, with its coalescing
/// key when the entry has a `k` field (entries written before keys existed
/// have none). Its `ts` is the id's
/// ms part: Redis's clock at `XADD`, never decreasing within a topic (a `t`
/// field written by earlier versions, the publishing process's clock, is
/// ignored).
pub(super) fn parse_entry(topic: &Topic, entry: &Value) -> Option<Message> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let id = parse_id(parts.first()?)?;
    let Value::Array(fields) = parts.get(1)? else {
        return None;
    };
    let mut data = None;
    let mut key = None;
    for pair in fields.chunks(2) {
        match (pair.first().and_then(as_str), pair.get(1)) {
            (Some("d"), Some(Value::BulkString(b))) => data = Some(Bytes::copy_from_slice(b)),
            (Some("k"), Some(v)) => key = as_str(v).map(Arc::<str>::from),
            _ => {}
        }
    }
    Some(Message::new(topic.clone(), id, id.ms, data?).with_key(key))
}

/// The publish script's `{"<id> <ts>", duplicate}`.
pub(super) fn published(reply: Value) -> Result<Published, EngineError> {
    let Value::Array(parts) = reply else {
        return Err(malformed("publish"));
    };
    if parts.get(1).and_then(as_int) == Some(2) {
        return Err(EngineError::Full("webhook_queue.max_len"));
    }
    let stored = parts.first().and_then(as_str).ok_or_else(|| malformed("publish id"))?;
    let (id, ts) = stored.split_once(' ').ok_or_else(|| malformed("publish id"))?;
    let id: MessageId = id.parse().map_err(|_| malformed("publish id"))?;
    let ts: u64 = ts.parse().map_err(|_| malformed("publish ts"))?;
    let duplicate = parts.get(1).and_then(as_int) == Some(1);
    Ok(Published { id, ts, duplicate })
}

/// The history script's reply: `None` when there is no stream.
pub(super) fn stream_read(reply: Value) -> Result<Option<StreamRead>, EngineError> {
    let Value::Array(parts) = reply else {
        return Err(malformed("history"));
    };
    if parts.first().and_then(as_int) != Some(1) {
        return Ok(None);
    }
    let last = parts.get(1).and_then(parse_id);
    let trimmed = parts.get(2).and_then(parse_id);
    let first = parts.get(3).and_then(parse_id);
    let entries = match parts.get(4) {
        Some(Value::Array(e)) => e.clone(),
        _ => Vec::new(),
    };
    let present = parts.get(5).and_then(as_int) == Some(1);
    let cut = parts.get(6).and_then(as_int) == Some(1);
    Ok(Some(StreamRead { last, trimmed, first, entries, present, cut }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        let t = Topic::new("t").unwrap();
        let e = Value::Array(vec![
            Value::BulkString(b"5-1".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(b"{\"a\":1}".to_vec()),
                Value::BulkString(b"t".to_vec()),
                Value::BulkString(b"7".to_vec()),
            ]),
        ]);
        let m = parse_entry(&t, &e).unwrap();
        // ts is the id's ms part, whatever an old `t` field says.
        assert_eq!((m.id, m.ts, &m.data[..]), (MessageId::new(5, 1), 5, &b"{\"a\":1}"[..]));
        assert!(m.key.is_none(), "an entry without k has no key");
        assert!(parse_entry(&t, &Value::Nil).is_none());
        let keyed = Value::Array(vec![
            Value::BulkString(b"6-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(b"1".to_vec()),
                Value::BulkString(b"k".to_vec()),
                Value::BulkString(b"eur:usd".to_vec()),
            ]),
        ]);
        let m = parse_entry(&t, &keyed).unwrap();
        assert_eq!((m.id, m.key.as_deref(), &m.data[..]), (MessageId::new(6, 0), Some("eur:usd"), &b"1"[..]));
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn script_replies_parse() {
        let p = published(Value::Array(vec![bulk("5-1 7"), Value::Int(1)])).unwrap();
        assert_eq!((p.id, p.ts, p.duplicate), (MessageId::new(5, 1), 7, true));
        assert!(published(Value::Array(vec![bulk("5-1"), Value::Int(0)])).is_err());
        assert!(published(Value::Nil).is_err());

        assert!(stream_read(Value::Array(vec![Value::Int(0)])).unwrap().is_none());
        let reply =
            vec![Value::Int(1), bulk("9-0"), bulk(""), bulk("3-0"), Value::Array(vec![]), Value::Int(1)];
        let r = stream_read(Value::Array(reply)).unwrap().unwrap();
        assert_eq!(
            (r.last, r.trimmed, r.first),
            (Some(MessageId::new(9, 0)), None, Some(MessageId::new(3, 0)))
        );
        assert!(r.entries.is_empty() && r.present && !r.cut);
        assert!(stream_read(Value::Nil).is_err());
    }
}
