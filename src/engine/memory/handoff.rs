//! The per-topic ordered hand-off from append to fan-out ("combining").
//!
//! Publishers append to a topic's log and queue the message here under the
//! topic's lock, then release it. The first publisher to find no drain
//! running becomes the drainer: outside the lock it takes whatever is
//! queued, in id order, hands it to the feed, and repeats until the queue
//! is empty, which it sees (and ends the drain) under the lock. So:
//!
//! - **Order.** One drainer per topic at a time, taking the queue in
//!   append order: the feed hears of a topic's messages in id order.
//! - **Nothing lost.** A message is queued while a drain runs, or starts
//!   one; a drain ends only when it found the queue empty under the lock,
//!   so every queued message is delivered by the drain that saw it.
//! - **The lock is never held across the fan-out.** Other publishers to the
//!   topic append and return while a drainer delivers.
//! - **Bounded.** At most [`HANDOFF_CAP`] messages wait; a publisher that
//!   finds the queue full waits (asynchronously) until the drainer takes
//!   it, which is the backpressure holding the lock used to give.
//!
//! The drain is synchronous (no `.await` between taking the drainer role
//! and giving it back), so a cancelled publish can never leave a topic with
//! a drain flag set and nobody draining.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::core::message::Message;

/// Messages of one topic waiting for the drainer; a publisher finding this
/// many waits for room.
pub(super) const HANDOFF_CAP: usize = 1024;

/// The queue between a topic's appends and its fan-out.
#[derive(Default)]
pub(super) struct Handoff {
    pending: VecDeque<Arc<Message>>,
    /// A drainer is running (holds for as long as `pending` is non-empty).
    draining: bool,
}

impl Handoff {
    /// True when a publisher may queue one more message.
    pub(super) fn has_room(&self) -> bool {
        self.pending.len() < HANDOFF_CAP
    }

    /// Queues `message`; true when the caller must now drain
    /// ([`Handoff::next_batch`] until it returns false).
    pub(super) fn push(&mut self, message: Arc<Message>) -> bool {
        self.pending.push_back(message);
        !std::mem::replace(&mut self.draining, true)
    }

    /// For the drainer: swaps everything queued into `batch` (which must be
    /// empty) and returns true, or, with nothing queued, ends the drain and
    /// returns false.
    pub(super) fn next_batch(&mut self, batch: &mut VecDeque<Arc<Message>>) -> bool {
        debug_assert!(batch.is_empty());
        if self.pending.is_empty() {
            self.draining = false;
            return false;
        }
        std::mem::swap(&mut self.pending, batch);
        true
    }

    /// True while a drain runs or messages wait for one.
    pub(super) fn is_busy(&self) -> bool {
        self.draining || !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::core::message::{MessageId, Topic};

    fn m(ms: u64) -> Arc<Message> {
        Arc::new(Message::new(Topic::new("t").unwrap(), MessageId::new(ms, 0), ms, Bytes::from_static(b"1")))
    }

    #[test]
    fn the_first_pusher_drains_everything_in_order() {
        let mut h = Handoff::default();
        let mut batch = VecDeque::new();
        assert!(h.push(m(1)), "first: drain");
        assert!(!h.push(m(2)), "a drain runs");
        assert!(h.next_batch(&mut batch));
        assert_eq!(batch.drain(..).map(|m| m.id.ms).collect::<Vec<_>>(), [1, 2]);
        // Queued while the drainer delivered: still its job.
        assert!(!h.push(m(3)));
        assert!(h.is_busy());
        assert!(h.next_batch(&mut batch));
        assert_eq!(batch.drain(..).map(|m| m.id.ms).collect::<Vec<_>>(), [3]);
        assert!(!h.next_batch(&mut batch), "empty: the drain ends");
        assert!(!h.is_busy());
        assert!(h.push(m(4)), "the next pusher drains again");
    }

    #[test]
    fn room_is_bounded() {
        let mut h = Handoff::default();
        for ms in 0..HANDOFF_CAP as u64 {
            assert!(h.has_room());
            h.push(m(ms));
        }
        assert!(!h.has_room());
        let mut batch = VecDeque::new();
        assert!(h.next_batch(&mut batch));
        assert!(h.has_room());
    }
}
