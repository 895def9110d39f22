//! The batcher: turns the changes the store reports (in process, or from
//! every process over Redis pub/sub) into presence frames for this
//! process's subscribers, at most one frame per topic per `presence.batch`
//! window (one per second on `presence = "count"` topics).
//!
//! A single change goes out as `join`/`leave`, several as one
//! `presence_diff`; a count topic gets `presence_count` with the number of
//! users. Each frame is encoded once and queued to every local subscriber
//! of its topic that asked for presence ([`Watchers`]; the subscription
//! driver checks again); a full outbox skips the frame for that subscriber
//! (presence frames never close a connection).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::entry::{push_str, Change, Entry};
use crate::core::notice::Notice;
use crate::core::policy::{Policies, PresenceMode};
use crate::core::{Hub, Topic};

/// Least time between two count frames of one topic.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// Which local streams asked for each topic's presence frames (by
/// connection id).
#[derive(Default)]
pub(crate) struct Watchers(Mutex<HashMap<Topic, HashSet<u64>>>);

impl Watchers {
    /// Adds (or removes) connection `client` as a watcher of `topic`.
    pub(crate) fn set(&self, topic: &Topic, client: u64, on: bool) {
        let mut map = self.0.lock();
        if on {
            map.entry(topic.clone()).or_default().insert(client);
        } else if let Some(set) = map.get_mut(topic) {
            set.remove(&client);
            if set.is_empty() {
                map.remove(topic);
            }
        }
    }

    fn any(&self, topic: &Topic) -> bool {
        self.0.lock().contains_key(topic)
    }

    fn of(&self, topic: &Topic) -> HashSet<u64> {
        self.0.lock().get(topic).cloned().unwrap_or_default()
    }
}

/// Changes of one topic waiting for their window to end.
struct Pending {
    joins: Vec<Entry>,
    leaves: Vec<Entry>,
    users: u64,
    due: Instant,
    count: bool,
}

/// Runs the batcher until `token` is cancelled or every sender is gone.
pub(crate) async fn run(
    hub: Hub,
    watchers: Arc<Watchers>,
    policies: Arc<Policies>,
    window: Duration,
    mut changes: mpsc::Receiver<Change>,
    token: CancellationToken,
) {
    let mut pending: HashMap<Topic, Pending> = HashMap::new();
    let mut counted: HashMap<Topic, Instant> = HashMap::new();
    loop {
        let next = pending.values().map(|p| p.due).min();
        tokio::select! {
            _ = token.cancelled() => return,
            c = changes.recv() => match c {
                Some(c) => add(&watchers, &policies, window, &counted, &mut pending, c),
                None => return,
            },
            _ = sleep_until(next) => {
                let now = Instant::now();
                let due: Vec<Topic> = pending.iter().filter(|(_, p)| p.due <= now).map(|(t, _)| t.clone()).collect();
                for topic in due {
                    if let Some(p) = pending.remove(&topic) {
                        if p.count {
                            counted.insert(topic.clone(), now);
                        }
                        send(&hub, &watchers, &topic, p);
                    }
                }
                counted.retain(|_, at| now.saturating_duration_since(*at) < COUNT_EVERY);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn add(
    watchers: &Watchers,
    policies: &Policies,
    window: Duration,
    counted: &HashMap<Topic, Instant>,
    pending: &mut HashMap<Topic, Pending>,
    c: Change,
) {
    let mode = policies.get(c.topic.as_str()).presence;
    if mode == PresenceMode::Off || !watchers.any(&c.topic) {
        return;
    }
    let count = mode == PresenceMode::Count;
    let now = Instant::now();
    let p = pending.entry(c.topic).or_insert_with_key(|topic| {
        let mut due = now + window;
        if let Some(last) = counted.get(topic).filter(|_| count) {
            due = due.max(*last + COUNT_EVERY);
        }
        Pending { joins: Vec::new(), leaves: Vec::new(), users: 0, due, count }
    });
    p.users = c.users;
    if !count {
        p.joins.extend(c.joins);
        p.leaves.extend(c.leaves);
    }
}

/// Encodes `p` once and queues it to `topic`'s local subscribers that
/// asked for presence.
fn send(hub: &Hub, watchers: &Watchers, topic: &Topic, p: Pending) {
    let wanted = watchers.of(topic);
    if wanted.is_empty() {
        return;
    }
    let Some(notice) = encode(topic, p) else { return };
    let notice = Arc::new(notice);
    let mut queued = 0u64;
    for h in hub.handles(topic).into_iter().filter(|h| wanted.contains(&h.session.id())) {
        if h.outbox.offer_notice(Arc::clone(&notice)) {
            queued += 1;
        }
    }
    crate::metrics::presence_events(notice.event, queued);
}

/// The frame of `p`: `presence_count`, `join`, `leave` or `presence_diff`.
fn encode(topic: &Topic, p: Pending) -> Option<Notice> {
    let mut json = String::with_capacity(64 + 80 * (p.joins.len() + p.leaves.len()));
    let head = |json: &mut String, op: &str| {
        json.push_str("{\"op\":\"");
        json.push_str(op);
        json.push_str("\",\"topic\":");
        push_str(json, topic.as_str());
    };
    let event = if p.count {
        head(&mut json, "presence_count");
        json.push_str(",\"users\":");
        json.push_str(&p.users.to_string());
        json.push('}');
        "presence_count"
    } else {
        match (p.joins.len(), p.leaves.len()) {
            (0, 0) => return None,
            (1, 0) | (0, 1) => {
                let (op, e) = match p.joins.first() {
                    Some(e) => ("join", e),
                    None => ("leave", &p.leaves[0]),
                };
                head(&mut json, op);
                let mut body = String::new();
                e.event_json(&mut body);
                // The entry's fields after the topic: drop its braces.
                json.push(',');
                json.push_str(&body[1..body.len() - 1]);
                json.push('}');
                op
            }
            _ => {
                head(&mut json, "presence_diff");
                for (name, list) in [("joins", &p.joins), ("leaves", &p.leaves)] {
                    json.push_str(",\"");
                    json.push_str(name);
                    json.push_str("\":[");
                    for (i, e) in list.iter().enumerate() {
                        if i > 0 {
                            json.push(',');
                        }
                        e.event_json(&mut json);
                    }
                    json.push(']');
                }
                json.push('}');
                "presence_diff"
            }
        }
    };
    Some(Notice {
        topic: topic.clone(),
        event,
        json: Bytes::from(json),
        joins: p.joins.iter().map(Entry::notice).collect(),
        leaves: p.leaves.iter().map(Entry::notice).collect(),
        users: p.users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str) -> Entry {
        Entry {
            user: user.into(),
            client: "0000000000000001".into(),
            info: Some("{\"n\":1}".into()),
            since: 5,
        }
    }

    fn pending(joins: Vec<Entry>, leaves: Vec<Entry>, count: bool) -> Pending {
        Pending { joins, leaves, users: 3, due: Instant::now(), count }
    }

    #[test]
    fn frames() {
        let t = Topic::new("room").unwrap();
        let n = encode(&t, pending(vec![entry("a")], vec![], false)).unwrap();
        assert_eq!(
            std::str::from_utf8(&n.json).unwrap(),
            r#"{"op":"join","topic":"room","user":"a","client":"0000000000000001","info":{"n":1}}"#
        );
        let n = encode(&t, pending(vec![entry("a")], vec![entry("b")], false)).unwrap();
        assert_eq!(n.event, "presence_diff");
        let v: serde_json::Value = serde_json::from_slice(&n.json).unwrap();
        assert_eq!((v["joins"][0]["user"].as_str(), v["leaves"][0]["user"].as_str()), (Some("a"), Some("b")));
        let n = encode(&t, pending(vec![], vec![], true)).unwrap();
        assert_eq!(
            std::str::from_utf8(&n.json).unwrap(),
            r#"{"op":"presence_count","topic":"room","users":3}"#
        );
        assert!(encode(&t, pending(vec![], vec![], false)).is_none());
    }
}
