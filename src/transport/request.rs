//! What a client asks for, parsed and checked: topic names, message ids,
//! cursors, limits, idempotency keys, message data and the topics of a
//! streaming subscription. Every transport parses through here, so a value
//! is accepted or refused the same way everywhere.

use std::borrow::Cow;
use std::collections::HashSet;

use bytes::Bytes;

use crate::core::{Cursor, MessageId, Topic};
use crate::error::{ApiError, Code};

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 256;
/// History page bounds (contract §3; the gRPC `History` rpc uses the same).
pub(crate) const HISTORY_DEFAULT: usize = 100;
pub(crate) const HISTORY_MAX: usize = 1000;

/// A decoded `name=value` of a query string.
pub(crate) type QueryPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// A query string's `name=value` pairs, decoded like a form (`+` is a
/// space, `%XX` a byte). Unlike `form_urlencoded::parse`, a name or value
/// whose bytes are not UTF-8 is `bad_request`, never replaced by U+FFFD: a
/// lossy decode would silently turn different keys into one.
pub(crate) fn query_pairs(query: Option<&str>) -> Result<Vec<QueryPair<'_>>, ApiError> {
    let mut pairs = Vec::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((decode_query_part(name)?, decode_query_part(value)?));
    }
    Ok(pairs)
}

fn decode_query_part(part: &str) -> Result<Cow<'_, str>, ApiError> {
    let bad = || ApiError::new(Code::BadRequest, "query parameter is not valid UTF-8 once decoded");
    if part.contains('+') {
        let spaced = part.replace('+', " ");
        let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8().map_err(|_| bad())?;
        return Ok(Cow::Owned(decoded.into_owned()));
    }
    percent_encoding::percent_decode_str(part).decode_utf8().map_err(|_| bad())
}

/// A topic name, or `bad_topic`.
pub(crate) fn topic(name: &str) -> Result<Topic, ApiError> {
    Topic::new(name).map_err(|e| ApiError::new(Code::BadTopic, e.to_string()))
}

/// A cursor handed out earlier, or `bad_request`.
pub(crate) fn cursor(s: &str) -> Result<Cursor, ApiError> {
    Cursor::parse(s).map_err(|e| ApiError::new(Code::BadRequest, e.to_string()))
}

/// A message id (`"<ms>-<seq>"`), or `bad_request`.
pub(crate) fn message_id(s: &str) -> Result<MessageId, ApiError> {
    s.parse::<MessageId>().map_err(|e| ApiError::new(Code::BadRequest, e.to_string()))
}

/// Checks the number of topics of a streaming subscription: at least
/// `min`, at most `limits.max_topics_per_connection`.
pub(crate) fn check_topic_count(n: usize, min: usize, max: usize) -> Result<(), ApiError> {
    if n < min {
        return Err(ApiError::new(Code::BadRequest, "at least one topic is required"));
    }
    if n > max {
        crate::metrics::rejected("topics_per_connection");
        return Err(ApiError::new(Code::BadRequest, "too many topics (limits.max_topics_per_connection)"));
    }
    Ok(())
}

/// Parses a `limit` query value: a positive integer, clamped to `max`.
pub(crate) fn parse_limit(v: &str, max: usize) -> Result<usize, ApiError> {
    v.parse::<usize>()
        .ok()
        .filter(|n| *n >= 1)
        .map(|n| n.min(max))
        .ok_or_else(|| ApiError::new(Code::BadRequest, "limit must be a positive integer"))
}

/// Checks an idempotency key: 1 to 256 visible ASCII characters.
pub(crate) fn check_idempotency_key(key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::new(
            Code::BadRequest,
            "idempotency key must be 1 to 256 visible ASCII characters",
        ));
    }
    Ok(())
}

/// A boolean query parameter: `true`/`1` or `false`/`0`.
pub(crate) fn flag(v: &str, name: &str) -> Result<bool, ApiError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::new(Code::BadRequest, format!("{name} must be true, false, 1 or 0"))),
    }
}

/// Checks a coalescing key (`delivery = "latest"`): 1 to 256 bytes, no
/// control characters.
pub(crate) fn check_coalescing_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
        return Err(ApiError::new(Code::BadRequest, "key must be 1 to 256 bytes without control characters"));
    }
    Ok(())
}

/// Checks a message's `data`: at most `max` bytes (`too_large`) of one JSON
/// value (`bad_request`). Returns the value without surrounding whitespace,
/// otherwise byte for byte.
pub(crate) fn check_data(data: Bytes, max: usize) -> Result<Bytes, ApiError> {
    if data.len() > max {
        return Err(ApiError::new(Code::TooLarge, format!("data over {max} bytes")));
    }
    let data = trim_json(data);
    if data.is_empty() {
        return Err(ApiError::new(Code::BadRequest, "data must be a JSON value"));
    }
    // serde_json skips UTF-8 checks inside strings it ignores; a message
    // that is not UTF-8 cannot be written to a text frame or read by a
    // strict client, so it is refused here, on every publish path.
    if std::str::from_utf8(&data).is_err() {
        return Err(ApiError::new(Code::BadRequest, "data is not valid UTF-8"));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&data) {
        return Err(ApiError::new(Code::BadRequest, format!("data is not valid JSON: {e}")));
    }
    // An escaped surrogate (`\ud800`) must come in a valid pair: a lone
    // one is JSON by its grammar but no Unicode text, and strict decoders
    // (serde_json into a string, among others) refuse the whole message,
    // so a poll or history client would be stuck on it. Skipping strings
    // does not decode escapes; the rare data that may hold one is decoded.
    if may_escape_a_surrogate(&data) {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&data) {
            return Err(ApiError::new(Code::BadRequest, format!("data is not valid JSON text: {e}")));
        }
    }
    Ok(data)
}

/// Whether `data` holds `\u` followed by `d`/`D` (the start of an escaped
/// surrogate, U+D800..U+DFFF), possibly after an escaped backslash: a cheap
/// over-approximation.
fn may_escape_a_surrogate(data: &[u8]) -> bool {
    data.windows(3).any(|w| w[0] == b'\\' && w[1] == b'u' && (w[2] == b'd' || w[2] == b'D'))
}

/// Drops leading and trailing JSON whitespace; the value itself is kept
/// byte for byte.
fn trim_json(mut b: Bytes) -> Bytes {
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |i| i + 1);
    b.truncate(end);
    b.split_off(start)
}

/// The topics of a streaming subscription or poll, and where they resume.
#[derive(Debug)]
pub(crate) struct Topics {
    /// Topics in request order, each once.
    pub(crate) topics: Vec<Topic>,
    /// The resume cursor (`Last-Event-ID` / `lastEventId` / `cursor`).
    pub(crate) cursor: Option<Cursor>,
    /// `presence=1`: the topics' presence events are wanted too.
    pub(crate) presence: bool,
}

impl Topics {
    /// Topics from names (each once), or `bad_topic`; checked against
    /// `min..=max`. The count is checked while reading: more than `max`
    /// distinct names stop the parse there (`bad_request`), and duplicates
    /// are found in O(1) each, so a request naming thousands of topics costs
    /// no more than `max` of them.
    pub(crate) fn from_names<'a>(
        names: impl IntoIterator<Item = &'a str>,
        cursor: Option<Cursor>,
        min: usize,
        max: usize,
    ) -> Result<Self, ApiError> {
        let mut set = TopicSet::new(max);
        for name in names {
            set.add(name)?;
        }
        set.finish(cursor, min)
    }

    /// Parses `topic` (repeatable) and a resume cursor from a query string,
    /// the cursor from the first of `cursor_params` present unless
    /// `header_cursor` (which wins) is given. One pass; topics are counted
    /// as they are read (see [`Topics::from_names`]).
    pub(crate) fn from_query(
        query: Option<&str>,
        header_cursor: Option<&str>,
        cursor_params: &[&str],
        min: usize,
        max: usize,
    ) -> Result<Self, ApiError> {
        Topics::from_query_with(query, header_cursor, cursor_params, min, max, |_, _| Ok(()))
    }

    /// [`Topics::from_query`], handing every other parameter to `other`
    /// (name, decoded value) in the same pass: a request's query is parsed
    /// once. An error from `other` ends the parse.
    pub(crate) fn from_query_with(
        query: Option<&str>,
        header_cursor: Option<&str>,
        cursor_params: &[&str],
        min: usize,
        max: usize,
        mut other: impl FnMut(&str, &str) -> Result<(), ApiError>,
    ) -> Result<Self, ApiError> {
        let mut set = TopicSet::new(max);
        let mut cursor_text = header_cursor.map(str::to_owned);
        let mut presence = false;
        // Lossy decoding is harmless here: a replaced byte makes a topic
        // `bad_topic`, a cursor or flag `bad_request`, as they should be.
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if k == "topic" {
                set.add(&v)?;
            } else if k == "presence" {
                presence = flag(&v, "presence")?;
            } else if cursor_params.contains(&&*k) {
                if cursor_text.is_none() && !v.is_empty() {
                    cursor_text = Some(v.into_owned());
                }
            } else {
                other(&k, &v)?;
            }
        }
        // Topics are checked before the cursor: a bad topic is `bad_topic`
        // whatever the cursor says.
        let mut parsed = set.finish(None, min)?;
        if let Some(c) = cursor_text {
            parsed.cursor = Some(cursor(&c)?);
        }
        parsed.presence = presence;
        Ok(parsed)
    }
}

/// Topics a [`TopicSet`] finds duplicates among by comparing each (few
/// topics: no hashing, no table); past this many it keeps a hash set.
const LINEAR_TOPICS: usize = 16;

/// Distinct topics in the order first named, at most `max` of them.
struct TopicSet {
    topics: Vec<Topic>,
    /// Every topic, once there are more than [`LINEAR_TOPICS`].
    seen: Option<HashSet<Topic>>,
    max: usize,
}

impl TopicSet {
    fn new(max: usize) -> Self {
        TopicSet { topics: Vec::new(), seen: None, max }
    }

    /// Adds `name` unless already there; `Err` for a bad name or once more
    /// than `max` distinct topics were named.
    fn add(&mut self, name: &str) -> Result<(), ApiError> {
        let t = topic(name)?;
        let new = match &mut self.seen {
            Some(seen) => seen.insert(t.clone()),
            None => !self.topics.contains(&t),
        };
        if new {
            self.topics.push(t);
            check_topic_count(self.topics.len(), 0, self.max)?;
            if self.seen.is_none() && self.topics.len() > LINEAR_TOPICS {
                self.seen = Some(self.topics.iter().cloned().collect());
            }
        }
        Ok(())
    }

    fn finish(self, cursor: Option<Cursor>, min: usize) -> Result<Topics, ApiError> {
        check_topic_count(self.topics.len(), min, self.max)?;
        Ok(Topics { topics: self.topics, cursor, presence: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_outer_whitespace() {
        assert_eq!(&trim_json(Bytes::from_static(b" \n{\"a\": 1 }\r\n"))[..], b"{\"a\": 1 }");
        assert_eq!(&trim_json(Bytes::from_static(b"   "))[..], b"");
        assert_eq!(&trim_json(Bytes::from_static(b"1"))[..], b"1");
    }

    #[test]
    fn query_pairs_decode_like_a_form_and_refuse_bytes_that_are_not_utf8() {
        let pairs = query_pairs(Some("key=a%20b+c&ephemeral=1&&flag&k%C3%A9y=%E2%82%AC")).unwrap();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(pairs, [("key", "a b c"), ("ephemeral", "1"), ("flag", ""), ("kéy", "€")]);
        assert!(query_pairs(None).unwrap().is_empty());
        for bad in ["key=%FF", "key=%C3", "%FE=1", "key=%ED%A0%80"] {
            assert_eq!(query_pairs(Some(bad)).unwrap_err().code, Code::BadRequest, "{bad}");
        }
        // An encoded U+FFFD is a real character, not a decoding failure.
        assert_eq!(query_pairs(Some("key=%EF%BF%BD")).unwrap()[0].1, "\u{FFFD}");
    }

    #[test]
    fn data_and_keys() {
        assert_eq!(check_data(Bytes::from_static(b" [1] "), 16).unwrap(), Bytes::from_static(b"[1]"));
        assert_eq!(check_data(Bytes::from_static(b"{"), 16).unwrap_err().code, Code::BadRequest);
        assert_eq!(check_data(Bytes::from_static(b""), 16).unwrap_err().code, Code::BadRequest);
        assert_eq!(
            check_data(Bytes::from_static(b"\"0123456789abcdef\""), 16).unwrap_err().code,
            Code::TooLarge
        );
        for bad in [&b"\"\xff\""[..], b"[\"\xc3\"]", b"{\"\xed\xa0\x80\":1}"] {
            let e = check_data(Bytes::copy_from_slice(bad), 16).unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (Code::BadRequest, "data is not valid UTF-8"));
        }
        assert!(check_data(Bytes::from("\"é\"".as_bytes()), 16).is_ok());
        // Escaped surrogates: a pair is text, a lone one is not.
        for lone in [&br#""\ud800""#[..], br#"["\uDC00"]"#, br#"{"k":"a\ud83d b"}"#] {
            let e = check_data(Bytes::copy_from_slice(lone), 64).unwrap_err();
            assert_eq!(e.code, Code::BadRequest, "{}", String::from_utf8_lossy(lone));
        }
        for fine in [&br#""\ud83d\ude00""#[..], br#""\\ud800""#, br#""\u00e9\u0064""#] {
            assert!(
                check_data(Bytes::copy_from_slice(fine), 64).is_ok(),
                "{}",
                String::from_utf8_lossy(fine)
            );
        }
        assert!(check_idempotency_key(b"k-1").is_ok());
        assert!(check_idempotency_key(b"").is_err());
        assert!(check_idempotency_key(b"a b").is_err());
        assert!(check_idempotency_key(&[b'x'; 257]).is_err());
    }

    #[test]
    fn subscription_parsing() {
        let parse = |q: &str, h: Option<&str>| Topics::from_query(Some(q), h, &["lastEventId"], 1, 10);
        let s = parse("topic=a&topic=b&topic=a", None).unwrap();
        assert_eq!(s.topics.len(), 2);
        assert!(s.cursor.is_none());
        assert_eq!(parse("", None).unwrap_err().code, Code::BadRequest);
        assert_eq!(parse("topic=a%20b", None).unwrap_err().code, Code::BadTopic);
        assert_eq!(parse("topic=a&lastEventId=!!", None).unwrap_err().code, Code::BadRequest);
        let c = Cursor::single(Topic::new("a").unwrap(), MessageId::new(3, 1)).encode();
        // The header wins over the query.
        let s = parse("topic=a&lastEventId=!!", Some(&c)).unwrap();
        assert_eq!(s.cursor.unwrap().get(&Topic::new("a").unwrap()), Some(MessageId::new(3, 1)));
        // Zero topics are fine where the minimum is zero (WebSocket connect).
        assert!(Topics::from_query(Some("cursor=AQ"), None, &["cursor"], 0, 10).unwrap().topics.is_empty());
        assert_eq!(
            Topics::from_query(Some("topic=a&topic=b"), None, &[], 1, 1).unwrap_err().code,
            Code::BadRequest
        );
        // Duplicates are found with few topics (compared) and with many
        // (hashed, past LINEAR_TOPICS), in request order.
        let names: Vec<String> = (0..40).map(|i| format!("t{}", i % 25)).collect();
        let q: String = names.iter().map(|n| format!("topic={n}&")).collect();
        let s = Topics::from_query(Some(&q), None, &[], 1, 100).unwrap();
        let got: Vec<&str> = s.topics.iter().map(Topic::as_str).collect();
        let want: Vec<String> = (0..25).map(|i| format!("t{i}")).collect();
        assert_eq!(got, want);
        // Other parameters reach the hook, decoded, in the same pass; its
        // error ends the parse.
        let mut seen = vec![];
        let s = Topics::from_query_with(
            Some("timeout=5&topic=a&x=%41&cursor="),
            None,
            &["cursor"],
            1,
            10,
            |k, v| {
                seen.push(format!("{k}={v}"));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((s.topics.len(), seen), (1, vec!["timeout=5".to_owned(), "x=A".to_owned()]));
        let e = Topics::from_query_with(Some("limit=x&topic=a"), None, &[], 1, 10, |_, _| {
            Err(ApiError::new(Code::BadRequest, "no"))
        })
        .unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
    }

    #[test]
    fn topic_count_is_checked_while_reading() {
        // More names than the limit: the parse stops at the first name over
        // it, whatever follows (thousands of names cost `max` of them).
        let pulled = std::cell::Cell::new(0usize);
        let names = (0..10_000).map(|i| {
            pulled.set(pulled.get() + 1);
            if i == 9_999 {
                "a b"
            } else {
                ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"][i % 8]
            }
        });
        let e = Topics::from_names(names, None, 1, 4).unwrap_err();
        assert_eq!(e.code, Code::BadRequest, "{}", e.message);
        assert_eq!(pulled.get(), 5, "stops at the fifth distinct topic");
        // Duplicates do not count; order is first mention.
        let s = Topics::from_names(["b", "a", "b", "a", "c"], None, 1, 3).unwrap();
        let names: Vec<&str> = s.topics.iter().map(Topic::as_str).collect();
        assert_eq!(names, ["b", "a", "c"]);
        // The same from a query string, in one pass.
        let q: String = (0..6_500).map(|i| format!("topic=t{i}&")).collect();
        let e = Topics::from_query(Some(&q), None, &["cursor"], 1, 100).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::BadRequest, "too many topics (limits.max_topics_per_connection)")
        );
    }
}
