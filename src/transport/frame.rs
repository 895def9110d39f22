//! JSON frames of the WebSocket protocol (contract §4).
//!
//! Client frames are parsed in two steps (a flat struct of optional fields,
//! then a match on `op`) so errors say what is wrong and `data` keeps the
//! publisher's exact bytes. Server `message` frames are written by hand from
//! cached parts; control frames use serde.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

use super::ops::{Op, PublishOp, Reply};
use crate::core::message::{write_id, write_u64};
use crate::core::replay::Gap;
use crate::core::{Message, MessageId, Topic};
use crate::error::Code;

/// A client's `ref`, echoed verbatim (any JSON value).
pub type Ref = Box<RawValue>;

/// A client frame that cannot be acted on.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct FrameError {
    /// The contract code.
    pub code: Code,
    /// Text for the error frame.
    pub message: String,
    /// The frame's `ref`, when it could be read.
    pub r: Option<Ref>,
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow)]
    after: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    r: Option<&'a RawValue>,
    token: Option<String>,
    /// Publish: makes a retry safe (checked like the HTTP
    /// `Idempotency-Key` header, by the publish path).
    idempotency_key: Option<String>,
    /// Publish: the coalescing key (`delivery = "latest"`).
    key: Option<String>,
    /// Publish: to current subscribers only (contract §11).
    #[serde(default)]
    ephemeral: bool,
    /// Subscribe: also the topic's presence events.
    #[serde(default)]
    presence: bool,
}

/// Keeps an explicit `null` as `Some("null")`: null is valid `data`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Parses one text frame into its `ref` and op; `max_data` bounds `data`
/// (over it: `too_large`).
pub(crate) fn parse(text: &str, max_data: usize) -> Result<(Option<Ref>, Op), FrameError> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| FrameError {
        code: Code::BadRequest,
        message: format!("malformed frame: {e}"),
        r: None,
    })?;
    let r = raw.r.map(RawValue::to_owned);
    let fail = |code, message: &str, r: Option<Ref>| FrameError { code, message: message.into(), r };
    let topic = |r: &Option<Ref>| -> Result<Topic, FrameError> {
        let name = raw.topic.as_deref().ok_or_else(|| fail(Code::BadRequest, "missing topic", r.clone()))?;
        Topic::new(name).map_err(|e| fail(Code::BadTopic, &e.to_string(), r.clone()))
    };
    match raw.op.as_deref() {
        Some("subscribe") => {
            let topic = topic(&r)?;
            let after = match raw.after.as_deref() {
                None => None,
                Some(a) => Some(a.parse().map_err(|_| {
                    fail(Code::BadRequest, "after must be a message id <ms>-<seq>", r.clone())
                })?),
            };
            Ok((r, Op::Subscribe { topic, after, presence: raw.presence }))
        }
        Some("unsubscribe") => {
            let topic = topic(&r)?;
            Ok((r, Op::Unsubscribe { topic }))
        }
        Some("publish") => {
            let topic = topic(&r)?;
            let data = raw.data.ok_or_else(|| fail(Code::BadRequest, "missing data", r.clone()))?;
            if data.get().len() > max_data {
                return Err(fail(Code::TooLarge, "data over limits.max_message_bytes", r));
            }
            let data = Bytes::copy_from_slice(data.get().as_bytes());
            let options =
                PublishOp { idempotency_key: raw.idempotency_key, key: raw.key, ephemeral: raw.ephemeral };
            Ok((r, Op::Publish { topic, data, options }))
        }
        Some("presence") => {
            let topic = topic(&r)?;
            Ok((r, Op::Presence { topic }))
        }
        Some("ping") => Ok((r, Op::Ping)),
        Some("refresh") => {
            let token = raw.token.ok_or_else(|| fail(Code::BadRequest, "missing token", r.clone()))?;
            Ok((r, Op::Refresh { token }))
        }
        Some(other) => Err(fail(Code::BadRequest, &format!("unknown op {other:?}"), r)),
        None => Err(fail(Code::BadRequest, "missing op", r)),
    }
}

#[derive(Serialize)]
struct Control<'a> {
    op: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    r: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<MessageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

impl<'a> Control<'a> {
    fn new(op: &'static str, r: Option<&'a RawValue>) -> Self {
        Control { op, r, recovered: None, id: None, code: None, message: None }
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"op\":\"error\"}"))
    }
}

/// `{"op":"ack","ref":R,"recovered":B}` for a subscribe.
pub fn ack_subscribe(r: Option<&RawValue>, recovered: bool) -> String {
    Control { recovered: Some(recovered), ..Control::new("ack", r) }.encode()
}

/// `{"op":"ack","ref":R,"id":ID}` for a publish.
pub fn ack_publish(r: Option<&RawValue>, id: MessageId) -> String {
    Control { id: Some(id), ..Control::new("ack", r) }.encode()
}

/// `{"op":"ack","ref":R}` for unsubscribe and refresh.
pub fn ack(r: Option<&RawValue>) -> String {
    Control::new("ack", r).encode()
}

/// `{"op":"pong","ref":R}`.
pub fn pong(r: Option<&RawValue>) -> String {
    Control::new("pong", r).encode()
}

/// `{"op":"error","ref":R,"code":C,"message":M}`.
pub fn error(r: Option<&RawValue>, code: Code, message: &str) -> String {
    Control { code: Some(code.as_str()), message: Some(message), ..Control::new("error", r) }.encode()
}

/// `{"op":"gap","topic":T,"after":ID,"oldest":ID}`.
pub fn gap(gap: &Gap) -> String {
    format!("{{\"op\":\"gap\",{}}}", gap.json_fields())
}

/// The frame answering one op [`Reply`].
pub(crate) fn reply(r: Option<&RawValue>, reply: &Reply) -> String {
    match reply {
        Reply::Gap(g) => gap(g),
        Reply::Subscribed { recovered } => ack_subscribe(r, *recovered),
        Reply::Published(p) => ack_publish(r, p.id),
        Reply::Done | Reply::Broadcast => ack(r),
        Reply::Pong => pong(r),
        Reply::Error(e) => error(r, e.code, &e.message),
        Reply::Presence { topic, listing } => ack_presence(r, topic, listing),
    }
}

/// `{"op":"ack","ref":R,"topic":T,"users":N,"clients":[…]}` for the
/// presence op (contract §11).
pub(crate) fn ack_presence(
    r: Option<&RawValue>,
    topic: &Topic,
    listing: &crate::presence::Listing,
) -> String {
    let mut head = String::from("\"op\":\"ack\",");
    if let Some(r) = r {
        head.push_str("\"ref\":");
        head.push_str(r.get());
        head.push(',');
    }
    listing.json(&head, topic)
}

/// `{"op":"message","topic":T,"id":ID,"ts":MS,"data":D,"cursor":"C"}`.
/// Topic, id and cursor alphabets need no JSON escaping.
pub fn message(m: &Message, cursor: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message_len(m, cursor));
    write_message(&mut out, m, cursor);
    out
}

/// About the length of [`message`]'s frame, to reserve.
pub fn message_len(m: &Message, cursor: &str) -> usize {
    m.data.len() + m.topic.as_str().len() + cursor.len() + 80
}

/// [`message`] with `"skipped":N` (`delivery = "latest"`), or without it
/// when `skipped` is 0.
pub fn message_skipped(m: &Message, cursor: &str, skipped: u64) -> Vec<u8> {
    let mut out = message(m, cursor);
    if skipped > 0 {
        out.pop();
        out.extend_from_slice(b",\"skipped\":");
        write_u64(&mut out, skipped);
        out.push(b'}');
    }
    out
}

/// The frame of an ephemeral message (contract §11):
/// `{"op":"message","topic":T,"data":D,"ephemeral":true,"user":U?}`.
pub fn ephemeral(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.data.len() + m.topic.as_str().len() + 64);
    out.extend_from_slice(b"{\"op\":\"message\",\"topic\":\"");
    out.extend_from_slice(m.topic.as_str().as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(&m.data);
    out.extend_from_slice(b",\"ephemeral\":true");
    write_user(&mut out, m);
    out.push(b'}');
    out
}

/// Appends `,"user":U` for an ephemeral message with a known sender.
pub fn write_user(out: &mut Vec<u8>, m: &Message) {
    if let Some(user) = m.ephemeral.as_ref().and_then(|e| e.user.as_deref()) {
        out.extend_from_slice(b",\"user\":");
        // A user id is any string: JSON-escaped.
        out.extend_from_slice(serde_json::to_string(user).unwrap_or_else(|_| "null".into()).as_bytes());
    }
}

/// Appends [`message`]'s frame to `out`.
pub fn write_message(out: &mut Vec<u8>, m: &Message, cursor: &str) {
    out.extend_from_slice(b"{\"op\":\"message\",\"topic\":\"");
    out.extend_from_slice(m.topic.as_str().as_bytes());
    out.extend_from_slice(b"\",\"id\":\"");
    write_id(out, m.id);
    out.extend_from_slice(b"\",\"ts\":");
    write_u64(out, m.ts);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&m.data);
    out.extend_from_slice(b",\"cursor\":\"");
    out.extend_from_slice(cursor.as_bytes());
    out.extend_from_slice(b"\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ops() {
        match parse(r#"{"op":"publish","topic":"t","data":{"b":1,  "a":[2]},"ref":7}"#, 100).unwrap() {
            (r, Op::Publish { topic, data, options }) => {
                assert_eq!(topic.as_str(), "t");
                assert_eq!(&data[..], br#"{"b":1,  "a":[2]}"#);
                assert_eq!(r.unwrap().get(), "7");
                assert_eq!(options.idempotency_key, None);
                assert_eq!((options.key, options.ephemeral), (None, false));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"op":"publish","topic":"t","data":1,"idempotency_key":"k-1"}"#, 100).unwrap(),
            (_, Op::Publish { options: PublishOp { idempotency_key: Some(k), .. }, .. }) if k == "k-1"
        ));
        assert!(matches!(
            parse(r#"{"op":"publish","topic":"t","data":null}"#, 100).unwrap(),
            (_, Op::Publish { data, .. }) if &data[..] == b"null"
        ));
        match parse(r#"{"op":"subscribe","topic":"t","after":"5-1","ref":"x"}"#, 100).unwrap() {
            (r, Op::Subscribe { after, .. }) => {
                assert_eq!(after, Some(MessageId::new(5, 1)));
                assert_eq!(r.unwrap().get(), "\"x\"");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(r#"{"op":"ping"}"#, 1).unwrap(), (None, Op::Ping)));
    }

    #[test]
    fn errors_carry_code_and_ref() {
        let e = parse("{nope", 10).unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
        let e = parse(r#"{"op":"dance","ref":1}"#, 10).unwrap_err();
        assert_eq!((e.code, e.r.unwrap().get()), (Code::BadRequest, "1"));
        let e = parse(r#"{"op":"subscribe","topic":"a b","ref":2}"#, 10).unwrap_err();
        assert_eq!(e.code, Code::BadTopic);
        let e = parse(r#"{"op":"subscribe","topic":"a","after":"x"}"#, 10).unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
        let e = parse(r#"{"op":"publish","topic":"a","data":"0123456789"}"#, 10).unwrap_err();
        assert_eq!(e.code, Code::TooLarge);
        let e = parse(r#"{"op":"publish","topic":"a"}"#, 10).unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
        let e = parse(r#"[1]"#, 10).unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
    }

    #[test]
    fn server_frames() {
        let r = RawValue::from_string("\"a\"".into()).unwrap();
        assert_eq!(ack_subscribe(Some(&r), false), r#"{"op":"ack","ref":"a","recovered":false}"#);
        assert_eq!(ack_publish(None, MessageId::new(1, 2)), r#"{"op":"ack","id":"1-2"}"#);
        assert_eq!(
            error(Some(&r), Code::BadTopic, "x"),
            r#"{"op":"error","ref":"a","code":"bad_topic","message":"x"}"#
        );
        let m = Message::new(Topic::new("t").unwrap(), MessageId::new(3, 4), 3, Bytes::from_static(b"[1]"));
        let f = message(&m, "AQ");
        let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
        assert_eq!(v["op"], "message");
        assert_eq!(v["id"], "3-4");
        assert_eq!(v["data"][0], 1);
        assert_eq!(v["cursor"], "AQ");
    }
}
