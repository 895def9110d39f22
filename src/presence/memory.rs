//! The embedded presence store: entries of this process only (with the
//! memory engine there is no other process). A closed connection's entry
//! stays `grace` before it is removed by the sweep; there are no leases
//! (a process that dies takes its whole store with it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::entry::{Change, Entry, Listing, Transitions};
use super::StoreOp;
use crate::core::Topic;

/// Presence entries of every topic, in process.
#[derive(Default)]
pub(crate) struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<Topic, Room>,
    /// User → (topic, user) memberships, for `user.online`/`user.offline`.
    users: HashMap<Arc<str>, usize>,
}

#[derive(Default)]
struct Room {
    entries: HashMap<Arc<str>, Slot>,
    /// User → connections present.
    users: HashMap<Arc<str>, usize>,
    /// Entries waiting out their grace.
    closing: usize,
}

struct Slot {
    entry: Entry,
    /// When a closed connection's entry goes (`None` while it is open).
    expires: Option<Instant>,
}

impl MemoryStore {
    /// Applies `ops` to `topic`'s entries.
    pub(crate) fn apply(
        &self,
        topic: &Topic,
        ops: Vec<StoreOp>,
        grace: Duration,
        now: Instant,
    ) -> (Option<Change>, Transitions) {
        let mut inner = self.inner.lock();
        let Inner { rooms, users } = &mut *inner;
        let room = rooms.entry(topic.clone()).or_default();
        let was_empty = room.users.is_empty();
        let mut change = Change { topic: topic.clone(), joins: Vec::new(), leaves: Vec::new(), users: 0 };
        let mut t = Transitions::default();
        for op in ops {
            match op {
                StoreOp::Upsert(entry) => {
                    if let Some(slot) = room.entries.get_mut(&entry.client) {
                        if slot.expires.take().is_some() {
                            room.closing -= 1;
                        }
                        continue;
                    }
                    let n = room.users.entry(Arc::clone(&entry.user)).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        change.joins.push(entry.clone());
                        t.joined.push(Arc::clone(&entry.user));
                        if bump(users, &entry.user, true) {
                            t.online.push(Arc::clone(&entry.user));
                        }
                    }
                    room.entries.insert(Arc::clone(&entry.client), Slot { entry, expires: None });
                }
                StoreOp::Close(client) => {
                    if let Some(slot) = room.entries.get_mut(&client) {
                        if slot.expires.replace(now + grace).is_none() {
                            room.closing += 1;
                        }
                    }
                }
            }
        }
        change.users = room.users.len() as u64;
        if was_empty && !room.users.is_empty() {
            t.occupied.push(topic.clone());
        }
        if room.entries.is_empty() {
            rooms.remove(topic);
        }
        let changed = !change.joins.is_empty();
        (changed.then_some(change), t)
    }

    /// Removes the entries whose grace is over: the leaves of their users'
    /// last connections.
    pub(crate) fn sweep(&self, now: Instant) -> (Vec<Change>, Transitions) {
        let mut inner = self.inner.lock();
        let Inner { rooms, users } = &mut *inner;
        let mut changes = Vec::new();
        let mut t = Transitions::default();
        rooms.retain(|topic, room| {
            if room.closing == 0 {
                return true;
            }
            let gone: Vec<Arc<str>> = room
                .entries
                .iter()
                .filter(|(_, s)| s.expires.is_some_and(|at| at <= now))
                .map(|(c, _)| Arc::clone(c))
                .collect();
            if gone.is_empty() {
                return true;
            }
            let mut change = Change { topic: topic.clone(), joins: Vec::new(), leaves: Vec::new(), users: 0 };
            for client in gone {
                let Some(slot) = room.entries.remove(&client) else { continue };
                room.closing -= 1;
                let user = Arc::clone(&slot.entry.user);
                let last = match room.users.get_mut(&user) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    _ => {
                        room.users.remove(&user);
                        true
                    }
                };
                if last {
                    t.left.push(Arc::clone(&user));
                    if bump(users, &user, false) {
                        t.offline.push(Arc::clone(&user));
                    }
                    change.leaves.push(slot.entry);
                }
            }
            change.users = room.users.len() as u64;
            if room.users.is_empty() && !change.leaves.is_empty() {
                t.vacated.push(topic.clone());
            }
            if !change.leaves.is_empty() {
                changes.push(change);
            }
            !room.entries.is_empty()
        });
        (changes, t)
    }

    /// Who is present in `topic` (at most `max` connections listed).
    pub(crate) fn list(&self, topic: &Topic, max: usize) -> Listing {
        let inner = self.inner.lock();
        let Some(room) = inner.rooms.get(topic) else {
            return Listing::default();
        };
        let mut clients: Vec<Entry> = room.entries.values().map(|s| s.entry.clone()).collect();
        clients.sort_by(|a, b| (a.since, &a.client).cmp(&(b.since, &b.client)));
        clients.truncate(max);
        Listing { users: room.users.len() as u64, clients }
    }

    /// Entries held (the gauge).
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().rooms.values().map(|r| r.entries.len()).sum()
    }
}

/// Counts `user` in (or out of) one more topic; true on the transition
/// (0 → 1 in, 1 → 0 out).
fn bump(users: &mut HashMap<Arc<str>, usize>, user: &Arc<str>, up: bool) -> bool {
    if up {
        let n = users.entry(Arc::clone(user)).or_insert(0);
        *n += 1;
        return *n == 1;
    }
    match users.get_mut(user) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            users.remove(user);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, client: &str) -> Entry {
        Entry { user: user.into(), client: client.into(), info: None, since: 1 }
    }

    #[test]
    fn a_user_joins_once_and_leaves_with_its_last_connection() {
        let s = MemoryStore::default();
        let t = Topic::new("room").unwrap();
        let now = Instant::now();
        let g = Duration::from_secs(1);
        let (c, tr) = s.apply(&t, vec![StoreOp::Upsert(entry("u", "1"))], g, now);
        assert_eq!(c.unwrap().joins.len(), 1);
        assert_eq!((tr.occupied.len(), tr.online.len()), (1, 1));
        // A second connection of the same user: no join.
        let (c, tr) = s.apply(&t, vec![StoreOp::Upsert(entry("u", "2"))], g, now);
        assert!(c.is_none() && tr.is_empty());
        // The first closes; after grace, no leave (the second is there).
        s.apply(&t, vec![StoreOp::Close("1".into())], g, now);
        assert!(s.sweep(now + g).0.is_empty());
        assert_eq!(s.list(&t, 10).clients.len(), 1);
        s.apply(&t, vec![StoreOp::Close("2".into())], g, now);
        assert!(s.sweep(now).0.is_empty(), "within grace");
        let (changes, tr) = s.sweep(now + g);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].leaves[0].client.as_ref(), "2");
        assert_eq!((tr.vacated.len(), tr.offline.len()), (1, 1));
        assert_eq!(s.len(), 0);
    }
}
