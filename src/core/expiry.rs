//! [`Expiries`]: closes sessions whose credential expires, at its time.
//!
//! One timer for the whole process, not one per connection: a sorted map of
//! (deadline, entry) → session, and one task that sleeps until the earliest
//! deadline and closes what is due with [`Close::TokenExpired`]. A refresh
//! moves a session's entry; a session that ends removes it
//! ([`ExpiryEntry`] drops it).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::close::Close;
use super::session::Session;

/// The process's expiry schedule.
#[derive(Debug, Default)]
pub struct Expiries {
    inner: Mutex<Inner>,
    /// Wakes the task when an earlier deadline arrives.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// (deadline in Unix milliseconds, sequence) → session.
    due: BTreeMap<(u64, u64), Weak<Session>>,
    seq: u64,
    running: bool,
}

/// A scheduled expiry; dropping it cancels it.
#[derive(Debug)]
pub struct ExpiryEntry {
    owner: Weak<Expiries>,
    key: (u64, u64),
}

impl Drop for ExpiryEntry {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            owner.inner.lock().due.remove(&self.key);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Expiries {
    /// Closes `session` with [`Close::TokenExpired`] at `at_ms` (Unix
    /// milliseconds) unless the entry is dropped first. The first call
    /// starts the schedule's task on the current runtime.
    pub fn schedule(self: &Arc<Self>, session: &Arc<Session>, at_ms: u64) -> ExpiryEntry {
        let (key, earliest, start) = {
            let mut inner = self.inner.lock();
            inner.seq += 1;
            let key = (at_ms, inner.seq);
            inner.due.insert(key, Arc::downgrade(session));
            let earliest = inner.due.keys().next() == Some(&key);
            let start = !std::mem::replace(&mut inner.running, true);
            (key, earliest, start)
        };
        if start {
            tokio::spawn(Arc::clone(self).run());
        } else if earliest {
            self.changed.notify_one();
        }
        ExpiryEntry { owner: Arc::downgrade(self), key }
    }

    /// Number of scheduled entries.
    pub fn len(&self) -> usize {
        self.inner.lock().due.len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes due sessions; sleeps until the next deadline or a change.
    async fn run(self: Arc<Self>) {
        loop {
            let next = {
                let mut inner = self.inner.lock();
                let now = now_ms();
                while let Some(entry) = inner.due.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    if let Some(session) = entry.remove().upgrade() {
                        session.close(Close::TokenExpired);
                    }
                }
                inner.due.keys().next().map(|k| k.0 - now)
            };
            // Woken early by an earlier deadline; re-checked at least every
            // minute so a clock step is followed.
            let wait = Duration::from_millis(next.unwrap_or(60_000).min(60_000));
            let _ = tokio::time::timeout(wait, self.changed.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_due_session_is_closed_and_a_dropped_entry_is_not() {
        let expiries = Arc::new(Expiries::default());
        let (a, b, c) =
            (Arc::new(Session::default()), Arc::new(Session::default()), Arc::new(Session::default()));
        let now = now_ms();
        let _late = expiries.schedule(&a, now + 3_600_000);
        let cancelled = expiries.schedule(&b, now + 50);
        let _due = expiries.schedule(&c, now + 50);
        drop(cancelled);
        let closed = tokio::time::timeout(Duration::from_secs(5), c.wait_closed()).await;
        assert_eq!(closed.ok(), Some(Close::TokenExpired));
        assert_eq!(b.closed(), None);
        assert_eq!(a.closed(), None);
        assert_eq!(expiries.len(), 1);
    }
}
