//! [`Mailbox`]: one subscriber's bounded outbox, filled by the hub's
//! fan-out and emptied by the task that owns the stream.
//!
//! A queue under a mutex plus one waker, instead of a channel: the hub only
//! ever offers (never waits), the owner only ever takes, and an idle
//! connection's outbox is a few words. The queue's buffer is allocated when
//! the first message arrives and released once a burst has drained, so
//! thousands of idle subscribers keep none. Offers fail when the outbox
//! holds `capacity` messages: the hub then closes the session as a slow
//! consumer, which resumes from its cursor.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use super::message::Message;

/// Queue capacity kept after a burst drained; a larger buffer is freed.
const KEEP: usize = 16;

/// One subscriber's bounded outbox.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Arc<Message>>>,
    waker: AtomicWaker,
    capacity: usize,
}

impl Mailbox {
    /// An empty outbox that holds at most `capacity` messages (at least 1).
    pub fn new(capacity: usize) -> Self {
        Mailbox { queue: Mutex::new(VecDeque::new()), waker: AtomicWaker::new(), capacity: capacity.max(1) }
    }

    /// Queues `message` and wakes the owner; false (and nothing queued)
    /// when the outbox is full.
    pub fn offer(&self, message: Arc<Message>) -> bool {
        {
            let mut q = self.queue.lock();
            if q.len() >= self.capacity {
                return false;
            }
            q.push_back(message);
        }
        self.waker.wake();
        true
    }

    /// The oldest queued message, if any.
    pub fn try_recv(&self) -> Option<Arc<Message>> {
        let mut q = self.queue.lock();
        let m = q.pop_front();
        if q.is_empty() && q.capacity() > KEEP {
            *q = VecDeque::new();
        }
        m
    }

    /// Resolves with the oldest queued message once there is one. Only the
    /// owning task should wait (one waker is kept).
    pub fn recv(&self) -> Recv<'_> {
        Recv(self)
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Future of [`Mailbox::recv`].
#[derive(Debug)]
pub struct Recv<'a>(&'a Mailbox);

impl Future for Recv<'_> {
    type Output = Arc<Message>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Arc<Message>> {
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
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::core::message::{MessageId, Topic};

    fn m(n: u64) -> Arc<Message> {
        Arc::new(Message::new(Topic::new("t").unwrap(), MessageId::new(n, 0), n, Bytes::from_static(b"1")))
    }

    #[test]
    fn bounded_fifo_that_frees_its_buffer_after_a_burst() {
        let b = Mailbox::new(100);
        assert!(b.try_recv().is_none());
        for n in 0..100 {
            assert!(b.offer(m(n)));
        }
        assert!(!b.offer(m(100)), "full at its capacity");
        assert_eq!(b.len(), 100);
        for n in 0..100 {
            assert_eq!(b.try_recv().map(|m| m.id.ms), Some(n));
        }
        assert!(b.is_empty());
        assert_eq!(b.queue.lock().capacity(), 0, "the burst's buffer is freed");
        assert!(Mailbox::new(0).offer(m(1)), "capacity is at least 1");
    }

    #[tokio::test]
    async fn recv_wakes_on_an_offer_from_another_task() {
        let b = Arc::new(Mailbox::new(4));
        let b2 = Arc::clone(&b);
        let waiter = tokio::spawn(async move { b2.recv().await.id.ms });
        tokio::task::yield_now().await;
        assert!(b.offer(m(7)));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
        assert_eq!(got.expect("woken").expect("task"), 7);
    }
}
