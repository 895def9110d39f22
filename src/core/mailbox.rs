//! [`Mailbox`]: one subscriber's bounded outbox, filled by the hub's
//! fan-out and emptied by the task that owns the stream.
//!
//! A queue under a mutex plus one waker, instead of a channel: the hub only
//! ever offers (never waits), the owner only ever takes, and an idle
//! connection's outbox is a few words. The queue's buffer is allocated when
//! the first message arrives and released once a burst has drained, so
//! thousands of idle subscribers keep none.
//!
//! # Full outbox, by delivery policy (contract §11)
//!
//! An offer never waits. When the outbox holds `capacity` entries:
//!
//! - an **ephemeral** message is dropped (first to go), and a queued one
//!   makes room for any stored message;
//! - **lossless**: the offer fails and the hub closes the session as a slow
//!   consumer, which resumes from its cursor;
//! - **latest**: a queued message of the same topic and key is replaced
//!   (at any fill level, so a reader that falls behind only ever has the
//!   newest per key queued). The entry carries how many were replaced
//!   (`skipped`), and the newest always goes to the back, so each topic
//!   stays in id order. Latest entries are bounded apart from the others
//!   (up to `capacity` of them, one per key; so the outbox holds at most
//!   twice `capacity` entries): they never make a lossless topic's
//!   subscriber look slow. With more distinct keys queued than that, the
//!   topic's oldest entry makes room (its count rides on the new one);
//! - **drop**: the message is dropped for this subscriber and its range
//!   remembered; the topic's next message that fits, or the moment the
//!   outbox runs empty, first yields [`Entry::Dropped`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use super::message::{Message, MessageId, Topic};
use super::notice::Notice;
use super::policy::Delivery;

/// Queue capacity kept after a burst drained; a larger buffer is freed.
const KEEP: usize = 16;

/// What the owner takes out of a mailbox.
#[derive(Debug)]
pub enum Entry {
    /// A message (stored or ephemeral).
    Message(Arc<Message>),
    /// A `delivery = "latest"` message (counted apart, see the module
    /// docs); `skipped` older messages of its topic (and key) were replaced
    /// by it.
    Latest {
        /// The message.
        message: Arc<Message>,
        /// Messages it replaced.
        skipped: u64,
    },
    /// Messages of a `delivery = "drop"` topic were dropped for this
    /// subscriber, up to and including `last`.
    Dropped(Box<Dropped>),
    /// A presence event.
    Notice(Arc<Notice>),
}

impl Entry {
    /// The message of a message entry (stored, ephemeral or latest).
    pub fn message(&self) -> Option<&Arc<Message>> {
        match self {
            Entry::Message(m) | Entry::Latest { message: m, .. } => Some(m),
            Entry::Dropped(_) | Entry::Notice(_) => None,
        }
    }
}

/// A range dropped by `delivery = "drop"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The topic.
    pub topic: Topic,
    /// The newest id dropped.
    pub last: MessageId,
    /// How many were dropped.
    pub count: u64,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Entry>,
    /// How many of `items` are [`Entry::Latest`].
    latest: usize,
    /// Ranges dropped and not yet reported (boxed: rare; an idle outbox
    /// keeps one word for it).
    drops: Option<Box<Vec<Dropped>>>,
}

/// One subscriber's bounded outbox.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    capacity: usize,
}

/// Whether an entry holds a stored (not ephemeral) message of `topic` with
/// coalescing key `key`.
fn same_key(e: &Entry, topic: &Topic, key: Option<&str>) -> bool {
    matches!(e, Entry::Latest { message, .. } if message.topic == *topic && message.key.as_deref() == key)
}

fn of_topic(e: &Entry, topic: &Topic) -> bool {
    matches!(e, Entry::Latest { message, .. } if message.topic == *topic)
}

fn is_ephemeral(e: &Entry) -> bool {
    matches!(e, Entry::Message(message) if message.is_ephemeral())
}

impl Mailbox {
    /// An empty outbox that holds at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Mailbox { queue: Mutex::new(Queue::default()), waker: AtomicWaker::new(), capacity: capacity.max(1) }
    }

    /// Queues a lossless `message` and wakes the owner; false (nothing
    /// queued) when the outbox is full.
    pub fn offer(&self, message: Arc<Message>) -> bool {
        self.offer_with(message, Delivery::Lossless)
    }

    /// Queues `message` under its topic's `delivery` policy (see the
    /// module docs). False only when the subscriber must be closed as slow.
    pub fn offer_with(&self, message: Arc<Message>, delivery: Delivery) -> bool {
        let queued = {
            let mut q = self.queue.lock();
            match self.place(&mut q, message, delivery) {
                Placed::Queued => true,
                Placed::Discarded => return true,
                Placed::Full => return false,
            }
        };
        if queued {
            self.waker.wake();
        }
        true
    }

    fn place(&self, q: &mut Queue, message: Arc<Message>, delivery: Delivery) -> Placed {
        if message.is_ephemeral() {
            if q.items.len() - q.latest >= self.capacity {
                return Placed::Discarded;
            }
            q.items.push_back(Entry::Message(message));
            return Placed::Queued;
        }
        match delivery {
            Delivery::Lossless => {
                if !self.room(q) {
                    return Placed::Full;
                }
                q.items.push_back(Entry::Message(message));
            }
            Delivery::Latest => {
                let (topic, key) = (&message.topic, message.key.as_deref());
                // The queued message of the same key, else (when the
                // latest entries are at their bound) the topic's oldest.
                let old = q.items.iter().rposition(|e| same_key(e, topic, key)).or_else(|| {
                    (q.latest >= self.capacity)
                        .then(|| q.items.iter().position(|e| of_topic(e, topic)))
                        .flatten()
                });
                let mut skipped = 0;
                match old.and_then(|i| q.items.remove(i)) {
                    Some(Entry::Latest { skipped: s, .. }) => {
                        skipped = s + 1;
                        q.latest -= 1;
                    }
                    // Other topics' latest entries fill the bound: nothing
                    // of this topic can make room.
                    _ if q.latest >= self.capacity => return Placed::Full,
                    _ => {}
                }
                q.latest += 1;
                q.items.push_back(Entry::Latest { message, skipped });
            }
            Delivery::Drop => {
                if !self.room(q) {
                    let drops = q.drops.get_or_insert_with(Default::default);
                    match drops.iter_mut().find(|d| d.topic == message.topic) {
                        Some(d) => {
                            d.last = d.last.max(message.id);
                            d.count += 1;
                        }
                        None => {
                            drops.push(Dropped { topic: message.topic.clone(), last: message.id, count: 1 })
                        }
                    }
                    return Placed::Discarded;
                }
                if let Some(d) = take_drop(q, &message.topic) {
                    q.items.push_back(Entry::Dropped(Box::new(d)));
                }
                q.items.push_back(Entry::Message(message));
            }
        }
        Placed::Queued
    }

    /// Room for one more stored message, made by dropping a queued
    /// ephemeral one if need be.
    fn room(&self, q: &mut Queue) -> bool {
        q.items.len() - q.latest < self.capacity || self.drop_ephemeral(q)
    }

    fn drop_ephemeral(&self, q: &mut Queue) -> bool {
        match q.items.iter().position(is_ephemeral) {
            Some(i) => {
                q.items.remove(i);
                true
            }
            None => false,
        }
    }

    /// Queues a presence event; false (nothing queued) when full.
    pub fn offer_notice(&self, notice: Arc<Notice>) -> bool {
        {
            let mut q = self.queue.lock();
            if !self.room(&mut q) {
                return false;
            }
            q.items.push_back(Entry::Notice(notice));
        }
        self.waker.wake();
        true
    }

    /// The oldest queued entry, if any; once the queue runs empty, the
    /// ranges dropped meanwhile (the subscriber has caught up).
    pub fn try_recv(&self) -> Option<Entry> {
        let mut q = self.queue.lock();
        if let Some(e) = q.items.pop_front() {
            if matches!(e, Entry::Latest { .. }) {
                q.latest -= 1;
            }
            if q.items.is_empty() && q.items.capacity() > KEEP {
                q.items = VecDeque::new();
            }
            return Some(e);
        }
        let drops = q.drops.as_mut()?;
        let d = drops.pop();
        if drops.is_empty() {
            q.drops = None;
        }
        d.map(|d| Entry::Dropped(Box::new(d)))
    }

    /// Resolves with the oldest queued entry once there is one. Only the
    /// owning task should wait (one waker is kept).
    pub fn recv(&self) -> Recv<'_> {
        Recv(self)
    }

    /// Entries queued.
    pub fn len(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn take_drop(q: &mut Queue, topic: &Topic) -> Option<Dropped> {
    let drops = q.drops.as_mut()?;
    let i = drops.iter().position(|d| d.topic == *topic)?;
    let d = drops.swap_remove(i);
    if drops.is_empty() {
        q.drops = None;
    }
    Some(d)
}

enum Placed {
    Queued,
    /// Not queued, by policy (nothing to wake for).
    Discarded,
    Full,
}

/// Future of [`Mailbox::recv`].
#[derive(Debug)]
pub struct Recv<'a>(&'a Mailbox);

impl Future for Recv<'_> {
    type Output = Entry;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Entry> {
        if let Some(m) = self.0.try_recv() {
            return Poll::Ready(m);
        }
        // Registered before the second look: an offer in between wakes us.
        self.0.waker.register(cx.waker());
        match self.0.try_recv() {
            Some(m) => Poll::Ready(m),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests;
