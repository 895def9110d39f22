//! One topic's log in the embedded engine: messages, retention by count and
//! age, the idempotency keys, and the bytes all of it costs.
//!
//! Pure bookkeeping: no locks, no clock (callers pass `now`), no global
//! state. What a trim frees is returned, so the engine can keep its
//! process-wide count of retained bytes exact.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::core::message::{Message, MessageId};
use crate::core::policy::Retention;

use super::MemoryOptions;

/// Bytes a stored message costs besides its data: the message itself, its
/// `Arc` counts and its slot in the log. (Wire encodings cached on a message
/// once it was replayed, and the box of their slots, are not counted: they
/// are at most a few times `data` and shared by every subscriber.)
pub(super) const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 3 * std::mem::size_of::<usize>();

/// Bytes an idempotency key costs besides its text (stored twice: the map
/// and the expiry order).
const KEY_OVERHEAD: usize = 96;

/// What a message of `data_len` bytes costs while it is retained.
pub(super) fn message_cost(data_len: usize) -> usize {
    data_len + MESSAGE_OVERHEAD
}

/// What an idempotency key costs while it is remembered.
pub(super) fn key_cost(key: &str) -> usize {
    2 * key.len() + KEY_OVERHEAD
}

/// One topic's messages and idempotency keys.
#[derive(Default)]
pub(super) struct Log {
    pub(super) messages: VecDeque<Arc<Message>>,
    /// Newest id ever assigned.
    pub(super) last: Option<MessageId>,
    /// Newest id ever trimmed: a read after an older id has a gap.
    pub(super) trimmed_through: Option<MessageId>,
    /// Ids of this log are above this one: the newest id the engine handed
    /// out in any topic it reclaimed before this log was created (so a
    /// reclaimed topic written again never repeats or goes below an old id).
    pub(super) floor: MessageId,
    idem: HashMap<Box<str>, (MessageId, u64)>,
    /// Keys in insertion order with their expiry (ms); expiry grows with it.
    idem_order: VecDeque<(Box<str>, u64)>,
    /// The topic's own retention (`[[topics]]`); `None`: the engine's.
    retention: Option<Retention>,
}

impl Log {
    /// An empty log whose ids will be above `floor`.
    pub(super) fn above(floor: MessageId) -> Log {
        Log { floor, ..Log::default() }
    }

    /// The same log kept by the topic's own `retention`.
    pub(super) fn with_retention(mut self, retention: Option<Retention>) -> Log {
        self.retention = retention;
        self
    }

    fn limits(&self, opts: &MemoryOptions) -> Retention {
        self.retention.unwrap_or(Retention { max_len: opts.max_len, max_age: opts.max_age })
    }

    /// Drops messages beyond `max_len` or older than `max_age`, and expired
    /// or surplus idempotency keys; returns the bytes freed.
    pub(super) fn trim(&mut self, opts: &MemoryOptions, now: u64) -> usize {
        let keep = self.limits(opts);
        let min_ts = now.saturating_sub(keep.max_age.as_millis() as u64);
        let mut freed = 0;
        while let Some(front) = self.messages.front() {
            if self.messages.len() > keep.max_len || front.ts < min_ts {
                self.trimmed_through = Some(front.id);
                freed += message_cost(front.data.len());
                self.messages.pop_front();
            } else {
                break;
            }
        }
        while let Some((key, expiry)) = self.idem_order.front() {
            if *expiry <= now || self.idem_order.len() > opts.idempotency_max_keys {
                freed += key_cost(key);
                self.idem.remove(key);
                self.idem_order.pop_front();
            } else {
                break;
            }
        }
        freed
    }

    /// The first publish's id and ts under `key`, if remembered.
    pub(super) fn duplicate(&self, key: &str) -> Option<(MessageId, u64)> {
        self.idem.get(key).copied()
    }

    /// The next id for a message accepted at `now`: above every id this
    /// log (and any reclaimed log of its topic) handed out.
    pub(super) fn next_id(&self, now: u64) -> Option<MessageId> {
        MessageId::next_after(self.last.unwrap_or(MessageId::ZERO).max(self.floor), now)
    }

    /// What retained bytes grow by when a message of `data_len` bytes (with
    /// `key`) is appended and the log trimmed by count; may be negative
    /// when the append pushes out a bigger message.
    pub(super) fn growth(&self, opts: &MemoryOptions, data_len: usize, key: Option<&str>) -> isize {
        let mut grow = message_cost(data_len) as isize;
        if self.messages.len() >= self.limits(opts).max_len {
            if let Some(front) = self.messages.front() {
                grow -= message_cost(front.data.len()) as isize;
            }
        }
        if let Some(key) = key {
            grow += key_cost(key) as isize;
            if self.idem_order.len() >= opts.idempotency_max_keys {
                if let Some((old, _)) = self.idem_order.front() {
                    grow -= key_cost(old) as isize;
                }
            }
        }
        grow
    }

    /// Appends `message` (its id from [`Log::next_id`]), remembering `key`
    /// until `key_expiry`; returns the bytes added (trim afterwards).
    pub(super) fn append(&mut self, message: Arc<Message>, key: Option<(&str, u64)>) -> usize {
        let mut added = message_cost(message.data.len());
        self.last = Some(message.id);
        if let Some((key, expiry)) = key {
            added += key_cost(key);
            self.idem.insert(key.into(), (message.id, message.ts));
            self.idem_order.push_back((key.into(), expiry));
        }
        self.messages.push_back(message);
        added
    }

    /// The oldest id still retained, or the first that could still be.
    pub(super) fn oldest(&self) -> Option<MessageId> {
        match self.messages.front() {
            Some(m) => Some(m.id),
            None => self.trimmed_through.and_then(MessageId::successor),
        }
    }

    /// True when nothing is left to keep: no message, no idempotency key.
    /// Such a log can be dropped; a read of its topic then answers like a
    /// topic never written (a resume from any id is a gap, which is true:
    /// all its messages were trimmed).
    pub(super) fn is_idle(&self) -> bool {
        self.messages.is_empty() && self.idem_order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::core::message::Topic;

    fn opts(max_len: usize, max_keys: usize) -> MemoryOptions {
        MemoryOptions {
            max_len,
            max_age: Duration::from_secs(10),
            idempotency_ttl: Duration::from_secs(10),
            idempotency_max_keys: max_keys,
            ..MemoryOptions::default()
        }
    }

    fn msg(id: MessageId, ts: u64, len: usize) -> Arc<Message> {
        Arc::new(Message::new(Topic::new("t").unwrap(), id, ts, Bytes::from(vec![b'1'; len])))
    }

    #[test]
    fn bytes_added_are_the_bytes_freed() {
        let o = opts(2, 1);
        let mut log = Log::default();
        let mut retained = 0isize;
        for (i, len) in [10usize, 300, 7, 50].into_iter().enumerate() {
            let key = format!("k{i}");
            let id = log.next_id(1000 + i as u64).unwrap();
            let grow = log.growth(&o, len, Some(&key));
            let before = retained;
            retained += log.append(msg(id, 1000 + i as u64, len), Some((&key, 5000))) as isize;
            retained -= log.trim(&o, 1000 + i as u64) as isize;
            assert_eq!(retained - before, grow, "growth predicted append {i}");
        }
        // Everything expires: the log gives back exactly what it took.
        retained -= log.trim(&o, 60_000) as isize;
        assert_eq!(retained, 0);
        assert!(log.is_idle());
        assert_eq!(log.trimmed_through, log.last);
    }

    #[test]
    fn ids_stay_above_the_floor_and_the_last_id() {
        let floor = MessageId::new(5_000, 3);
        let log = Log::above(floor);
        // The clock is behind the floor (stepped back): still above it.
        assert_eq!(log.next_id(4_000), Some(MessageId::new(5_000, 4)));
        assert_eq!(log.next_id(6_000), Some(MessageId::new(6_000, 0)));
        let mut log = Log::above(floor);
        log.last = Some(MessageId::new(7_000, 1));
        assert_eq!(log.next_id(6_000), Some(MessageId::new(7_000, 2)));
    }

    #[test]
    fn a_log_with_keys_is_not_idle() {
        let o = MemoryOptions { max_age: Duration::from_millis(1), ..opts(5, 5) };
        let mut log = Log::default();
        let id = log.next_id(1000).unwrap();
        log.append(msg(id, 1000, 3), Some(("k", 9_000)));
        log.trim(&o, 5_000);
        assert!(log.messages.is_empty());
        assert!(!log.is_idle(), "the key is remembered until its ttl");
        assert_eq!(log.duplicate("k"), Some((id, 1000)));
        log.trim(&o, 9_000);
        assert!(log.is_idle());
    }
}
