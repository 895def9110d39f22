//! What presence stores and announces: [`Entry`] (one connection in one
//! topic), [`Change`] (joins and leaves of one topic, as a store reports
//! them), [`Listing`] (a presence answer) and [`Transitions`] (what the
//! occupancy webhooks are told).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::core::notice::NoticeEntry;
use crate::core::Topic;

/// One connection present in one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// JWT `sub`, or the connection id when auth is off.
    pub user: Arc<str>,
    /// The connection id (16 hex digits).
    pub client: Arc<str>,
    /// The token's `info` claim (JSON text).
    pub info: Option<Arc<str>>,
    /// Unix ms since when it is present.
    pub since: u64,
}

impl Entry {
    /// `{"user":U,"client":C,"info":I,"since":MS}` (`info` null when none):
    /// how Redis stores it and how the presence answer lists it.
    pub fn json(&self) -> String {
        let mut out = String::with_capacity(64 + self.user.len() + self.info.as_deref().map_or(4, str::len));
        out.push_str("{\"user\":");
        push_str(&mut out, &self.user);
        out.push_str(",\"client\":");
        push_str(&mut out, &self.client);
        out.push_str(",\"info\":");
        out.push_str(self.info.as_deref().unwrap_or("null"));
        out.push_str(",\"since\":");
        out.push_str(&self.since.to_string());
        out.push('}');
        out
    }

    /// `{"user":U,"client":C,"info":I}`: the entry as an event names it.
    pub fn event_json(&self, out: &mut String) {
        out.push_str("{\"user\":");
        push_str(out, &self.user);
        out.push_str(",\"client\":");
        push_str(out, &self.client);
        out.push_str(",\"info\":");
        out.push_str(self.info.as_deref().unwrap_or("null"));
        out.push('}');
    }

    /// The entry as a [`crate::core::notice::Notice`] carries it.
    pub fn notice(&self) -> NoticeEntry {
        NoticeEntry {
            user: Arc::clone(&self.user),
            client: Arc::clone(&self.client),
            info: self.info.clone(),
        }
    }

    /// Parses [`Entry::json`]'s form.
    pub fn parse(text: &[u8]) -> Result<Entry, serde_json::Error> {
        let raw: RawEntry<'_> = serde_json::from_slice(text)?;
        Ok(raw.into())
    }
}

/// Appends `s` as a JSON string.
pub(crate) fn push_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

#[derive(Deserialize)]
struct RawEntry<'a> {
    user: String,
    client: String,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
    #[serde(default)]
    since: u64,
}

impl From<RawEntry<'_>> for Entry {
    fn from(r: RawEntry<'_>) -> Entry {
        Entry {
            user: r.user.into(),
            client: r.client.into(),
            info: r.info.map(|v| Arc::from(v.get())).filter(|i: &Arc<str>| &**i != "null"),
            since: r.since,
        }
    }
}

/// Joins and leaves of one topic (per user: a join is a user's first
/// connection, a leave its last), and how many users are present after.
#[derive(Debug, Clone)]
pub struct Change {
    /// The topic.
    pub topic: Topic,
    /// Users who joined, with the connection that made them present.
    pub joins: Vec<Entry>,
    /// Users who left, with the connection whose end made them absent.
    pub leaves: Vec<Entry>,
    /// Distinct users present after the change.
    pub users: u64,
}

#[derive(Deserialize)]
struct RawChange<'a> {
    topic: String,
    #[serde(default)]
    users: u64,
    #[serde(borrow, default)]
    joins: Vec<RawEntry<'a>>,
    #[serde(borrow, default)]
    leaves: Vec<RawEntry<'a>>,
}

impl Change {
    /// Parses the form the Redis scripts publish:
    /// `{"topic":T,"users":N,"joins":[ENTRY…],"leaves":[ENTRY…]}`.
    pub fn parse(text: &[u8]) -> Result<Change, ChangeError> {
        let raw: RawChange<'_> = serde_json::from_slice(text)?;
        let topic = Topic::new(&raw.topic).map_err(|_| ChangeError::Topic)?;
        Ok(Change {
            topic,
            joins: raw.joins.into_iter().map(Entry::from).collect(),
            leaves: raw.leaves.into_iter().map(Entry::from).collect(),
            users: raw.users,
        })
    }
}

/// A published change that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Not the JSON the scripts write.
    #[error("malformed presence change: {0}")]
    Json(#[from] serde_json::Error),
    /// The topic is not a valid topic name.
    #[error("presence change of an invalid topic")]
    Topic,
}

/// Who is present in a topic.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Distinct users.
    pub users: u64,
    /// The connections, at most `presence.max_list`.
    pub clients: Vec<Entry>,
}

impl Listing {
    /// `{"topic":T,"users":N,"clients":[…]}` (contract §11), with more
    /// fields (`ref`, `op`) before it when `head` is given.
    pub fn json(&self, head: &str, topic: &Topic) -> String {
        let mut out = String::with_capacity(64 + self.clients.len() * 96);
        out.push('{');
        out.push_str(head);
        out.push_str("\"topic\":");
        push_str(&mut out, topic.as_str());
        out.push_str(",\"users\":");
        out.push_str(&self.users.to_string());
        out.push_str(",\"clients\":[");
        for (i, e) in self.clients.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&e.json());
        }
        out.push_str("]}");
        out
    }
}

/// Occupancy transitions one store operation decided (each decided once
/// across all processes: by the one whose atomic update made it).
#[derive(Debug, Default)]
pub struct Transitions {
    /// Topics that got their first user.
    pub occupied: Vec<Topic>,
    /// Topics whose last user left.
    pub vacated: Vec<Topic>,
    /// A user became present in a topic (one per user and topic).
    pub joined: Vec<Arc<str>>,
    /// A user stopped being present in a topic.
    pub left: Vec<Arc<str>>,
    /// Users present in no presence topic before, present in one now.
    pub online: Vec<Arc<str>>,
    /// Users present in a presence topic before, in none now.
    pub offline: Vec<Arc<str>>,
}

impl Transitions {
    /// Adds `other`'s transitions.
    pub fn extend(&mut self, other: Transitions) {
        self.occupied.extend(other.occupied);
        self.vacated.extend(other.vacated);
        self.joined.extend(other.joined);
        self.left.extend(other.left);
        self.online.extend(other.online);
        self.offline.extend(other.offline);
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.occupied.is_empty()
            && self.vacated.is_empty()
            && self.joined.is_empty()
            && self.left.is_empty()
            && self.online.is_empty()
            && self.offline.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e =
            Entry { user: "a\"b".into(), client: "00ff".into(), info: Some(r#"{"n":1}"#.into()), since: 7 };
        assert_eq!(e.json(), r#"{"user":"a\"b","client":"00ff","info":{"n":1},"since":7}"#);
        assert_eq!(Entry::parse(e.json().as_bytes()).unwrap(), e);
        let none = Entry { info: None, ..e };
        assert_eq!(Entry::parse(none.json().as_bytes()).unwrap(), none);
    }

    #[test]
    fn changes_parse() {
        let c = Change::parse(br#"{"topic":"room","users":2,"joins":[{"user":"u","client":"c","info":null,"since":1}],"leaves":[]}"#)
            .unwrap();
        assert_eq!(c.topic.as_str(), "room");
        assert_eq!((c.users, c.joins.len(), c.leaves.len()), (2, 1, 0));
        assert!(Change::parse(b"{}").is_err());
    }
}
