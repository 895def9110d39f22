//! The [`Hub`]: topic → local subscribers, fed by the engine's [`Feed`]
//! calls.
//!
//! # Backpressure invariant
//!
//! Fan-out never waits for a subscriber. Each message is offered to every
//! subscriber's bounded outbox with `try_send`; a full outbox closes that
//! session with [`Close::Slow`] (its client resumes from its cursor), and a
//! closed one is skipped. No lock is held across subscribers of different
//! topics: the topic map is sharded (`DashMap`) and each topic's subscriber
//! list has its own read-mostly lock, taken for reading by fan-out.
//!
//! # Cap
//!
//! At most `max_topics` topics have local subscribers (`limits.max_topics`):
//! each costs an entry here and, with Redis, a watched stream every reader
//! lists. A first join of one more topic is refused with
//! [`EngineError::Full`]; joins of topics already here always succeed.
//!
//! # Tip
//!
//! Each topic remembers the id of the newest stored message it fanned out
//! ([`Hub::tip`]) while it has been continuously fed: the entry is created
//! with no tip when the topic gets its first local subscriber (so anything
//! published before that is not known here) and the tip is forgotten when
//! the engine reports lost live continuity ([`Feed::reset`]). The tip is
//! written under the subscriber list's read lock that fan-out holds, and
//! [`Hub::join`] inserts under its write lock: a subscriber that joined and
//! then reads a tip equal to its position knows that every later message
//! reaches its outbox — one fanned out before the join would have moved the
//! tip past it. Long polling uses this to skip a history read that could
//! only come back empty.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use slab::Slab;

use super::close::Close;
use super::engine::{Engine, EngineError, Feed};
use super::mailbox::Mailbox;
use super::message::{Message, MessageId, Topic};
use super::policy::{Delivery, Policies};
use super::session::Session;

/// The hub's side of a subscriber: its outbox and its session.
#[derive(Debug, Clone)]
pub struct SubscriberHandle {
    /// Its outbox.
    pub outbox: Arc<Mailbox>,
    /// Its close flag.
    pub session: Arc<Session>,
}

/// Registry of local subscribers per topic. Clone = `Arc` bump.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    topics: DashMap<Topic, Arc<TopicSubs>>,
    /// Entries of `topics` (`DashMap::len` walks every shard).
    count: AtomicUsize,
    /// The most topics `topics` may hold.
    max_topics: usize,
    /// Where each topic's delivery policy comes from (resolved once, when
    /// the topic gets its first local subscriber).
    policies: Arc<Policies>,
}

impl Default for HubInner {
    fn default() -> Self {
        HubInner {
            topics: DashMap::new(),
            count: AtomicUsize::new(0),
            max_topics: usize::MAX,
            policies: Arc::default(),
        }
    }
}

#[derive(Default)]
struct TopicSubs {
    subs: RwLock<Slab<SubscriberHandle>>,
    delivery: Delivery,
    /// Messages fanned out since the topic got its first local subscriber
    /// (the admin API's per-topic rate): one relaxed add per message.
    fanned: AtomicU64,
    /// The newest stored message fanned out while continuously fed (see the
    /// module's `# Tip`).
    tip: Mutex<Option<MessageId>>,
}

/// One topic of [`Hub::top_topics`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicStat {
    /// The topic.
    pub topic: Topic,
    /// Its local subscribers.
    pub subscribers: usize,
    /// Messages fanned out to them since it got its first local subscriber.
    pub messages: u64,
}

/// Where a subscriber sits in the hub; needed to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinKey(usize);

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty hub holding at most `max_topics` topics (see the module's
    /// `# Cap`).
    pub fn with_max_topics(max_topics: usize) -> Self {
        Hub { inner: Arc::new(HubInner { max_topics, ..HubInner::default() }) }
    }

    /// An empty hub holding at most `max_topics` topics, delivering each
    /// topic by its policy in `policies`.
    pub fn with_policies(max_topics: usize, policies: Arc<Policies>) -> Self {
        Hub { inner: Arc::new(HubInner { max_topics, policies, ..HubInner::default() }) }
    }

    /// The topic policies this hub delivers by.
    pub fn policies(&self) -> &Arc<Policies> {
        &self.inner.policies
    }

    /// Adds `handle` to `topic`'s subscribers and registers the topic with
    /// the engine (under the same shard lock as the insertion, so a watch and
    /// the unwatch of a racing last leave are seen in order). Await the
    /// returned future before reading history: it resolves once the engine
    /// delivers every later message. A first join of a topic past the cap
    /// is refused ([`EngineError::Full`]) and changes nothing.
    #[allow(clippy::type_complexity)]
    pub fn join(
        &self,
        topic: &Topic,
        handle: SubscriberHandle,
        engine: &dyn Engine,
    ) -> Result<(JoinKey, futures_util::future::BoxFuture<'static, Result<(), EngineError>>), EngineError>
    {
        let entry = match self.inner.topics.entry(topic.clone()) {
            Entry::Occupied(e) => e.into_ref(),
            Entry::Vacant(v) => {
                let max = self.inner.max_topics;
                let admitted = self
                    .inner
                    .count
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
                    .is_ok();
                if !admitted {
                    return Err(EngineError::Full("limits.max_topics"));
                }
                let delivery = self.inner.policies.get(topic.as_str()).delivery;
                v.insert(Arc::new(TopicSubs { delivery, ..TopicSubs::default() }))
            }
        };
        let key = entry.subs.write().insert(handle);
        let ready = engine.watch(topic);
        drop(entry);
        Ok((JoinKey(key), ready))
    }

    /// Removes a subscriber; the last one out unregisters the topic.
    ///
    /// The unwatch happens under the same shard lock as the removal, as
    /// [`Hub::join`] calls `watch` under the lock of its insertion: a first
    /// join racing this last leave either finds the topic still here (and no
    /// unwatch follows) or finds it gone and unwatched (and watches anew).
    /// Unwatching after the lock was released let a racing join's watch see
    /// the old registration, which the unwatch then deleted: the new
    /// subscriber got no live message and no error.
    pub fn leave(&self, topic: &Topic, key: JoinKey, engine: &dyn Engine) {
        let removed = self.inner.topics.remove_if(topic, |_, subs| {
            let mut g = subs.subs.write();
            g.try_remove(key.0);
            let last = g.is_empty();
            if last {
                engine.unwatch(topic);
            }
            last
        });
        if removed.is_some() {
            self.inner.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Number of topics with local subscribers.
    pub fn topic_count(&self) -> usize {
        self.inner.topics.len()
    }

    /// Number of (subscriber, topic) memberships (walks every topic: for
    /// scrapes, not hot paths).
    pub fn subscription_count(&self) -> usize {
        let subs: Vec<_> = self.inner.topics.iter().map(|e| Arc::clone(e.value())).collect();
        subs.iter().map(|t| t.subs.read().len()).sum()
    }

    /// Number of local subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        self.inner.topics.get(topic).map_or(0, |t| t.subs.read().len())
    }

    /// The `n` topics with the most local subscribers (ties by name), for
    /// the admin API: walks every topic, keeps `n`.
    pub fn top_topics(&self, n: usize) -> Vec<TopicStat> {
        let all: Vec<(Topic, Arc<TopicSubs>)> =
            self.inner.topics.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        let mut stats: Vec<TopicStat> = all
            .into_iter()
            .map(|(topic, t)| TopicStat {
                topic,
                subscribers: t.subs.read().len(),
                messages: t.fanned.load(Ordering::Relaxed),
            })
            .collect();
        stats.sort_unstable_by(|a, b| b.subscribers.cmp(&a.subscribers).then_with(|| a.topic.cmp(&b.topic)));
        stats.truncate(n);
        stats
    }

    /// Offers `message` to every local subscriber of its topic.
    pub fn fan_out(&self, message: &Arc<Message>) {
        let Some(subs) = self.inner.topics.get(&message.topic).map(|e| Arc::clone(e.value())) else {
            return;
        };
        let delivery = subs.delivery;
        subs.fanned.fetch_add(1, Ordering::Relaxed);
        let list = subs.subs.read();
        if !message.is_ephemeral() {
            let mut tip = subs.tip.lock();
            *tip = (*tip).max(Some(message.id));
        }
        for (_, handle) in list.iter() {
            if !handle.outbox.offer_with(Arc::clone(message), delivery) {
                handle.session.close(Close::Slow);
            }
        }
    }

    /// The id of the newest stored message of `topic` fanned out to its
    /// local subscribers since the engine has fed it without a break (see
    /// the module's `# Tip`); `None` when nothing was fanned out since, or
    /// the topic has no local subscriber.
    pub fn tip(&self, topic: &Topic) -> Option<MessageId> {
        let subs = self.inner.topics.get(topic).map(|e| Arc::clone(e.value()))?;
        let tip = *subs.tip.lock();
        tip
    }

    /// The local subscribers' outboxes and sessions of `topic` (presence
    /// events pick their receivers from them).
    pub fn handles(&self, topic: &Topic) -> Vec<SubscriberHandle> {
        self.inner
            .topics
            .get(topic)
            .map(|e| e.value().subs.read().iter().map(|(_, h)| h.clone()).collect())
            .unwrap_or_default()
    }
}

impl Feed for Hub {
    fn deliver(&self, message: &Arc<Message>) {
        self.fan_out(message);
    }

    fn reset(&self, topic: &Topic) {
        if let Some(subs) = self.inner.topics.get(topic).map(|e| Arc::clone(e.value())) {
            let list = subs.subs.read();
            // Messages after the break may be missing here: the tip no
            // longer proves that nothing newer exists.
            *subs.tip.lock() = None;
            for (_, handle) in list.iter() {
                handle.session.close(Close::Unavailable);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::core::engine::{History, PublishOptions, Published};
    use crate::core::message::MessageId;
    use crate::core::Subscriber;

    /// Counts watch/unwatch and records what is watched; the hub never reads
    /// or writes messages. With a [`Pause`], `unwatch` waits (up to a bound)
    /// between announcing itself and forgetting the topic, so a racing join
    /// can run there.
    #[derive(Default)]
    struct Watches {
        watched: AtomicUsize,
        unwatched: AtomicUsize,
        live: std::sync::Mutex<std::collections::HashSet<Topic>>,
        pause: Option<Pause>,
    }

    struct Pause {
        entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
        joined: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    #[async_trait]
    impl Engine for Watches {
        fn name(&self) -> &'static str {
            "watches"
        }
        async fn publish_with(
            &self,
            _: &Topic,
            _: Bytes,
            _: PublishOptions<'_>,
        ) -> Result<Published, EngineError> {
            Err(EngineError::Unavailable("not in hub tests".into()))
        }
        async fn broadcast(&self, _: Arc<Message>) -> Result<(), EngineError> {
            Err(EngineError::Unavailable("not in hub tests".into()))
        }
        async fn history(&self, _: &Topic, _: Option<MessageId>, _: usize) -> Result<History, EngineError> {
            Ok(History::default())
        }
        async fn last_id(&self, _: &Topic) -> Result<Option<MessageId>, EngineError> {
            Ok(None)
        }
        fn watch(&self, t: &Topic) -> futures_util::future::BoxFuture<'static, Result<(), EngineError>> {
            self.watched.fetch_add(1, Ordering::SeqCst);
            self.live.lock().unwrap().insert(t.clone());
            Box::pin(async { Ok(()) })
        }
        fn unwatch(&self, t: &Topic) {
            self.unwatched.fetch_add(1, Ordering::SeqCst);
            if let Some(p) = &self.pause {
                let _ = p.entered.lock().unwrap().send(());
                // A join that can run now (it could before the fix) runs here.
                let _ = p.joined.lock().unwrap().recv_timeout(std::time::Duration::from_millis(300));
            }
            self.live.lock().unwrap().remove(t);
        }
        fn is_ready(&self) -> bool {
            true
        }
    }

    fn message(topic: &Topic, ms: u64) -> Arc<Message> {
        Arc::new(Message::new(topic.clone(), MessageId::new(ms, 0), ms, Bytes::from_static(b"1")))
    }

    #[tokio::test]
    async fn a_full_outbox_closes_only_its_session() {
        let hub = Hub::new();
        let engine: Arc<dyn Engine> = Arc::new(Watches::default());
        let t = Topic::new("t").unwrap();
        let mut slow = Subscriber::new(hub.clone(), Arc::clone(&engine), 2);
        let mut fast = Subscriber::new(hub.clone(), Arc::clone(&engine), 64);
        slow.join(&t).await.unwrap();
        fast.join(&t).await.unwrap();
        assert_eq!((hub.topic_count(), hub.subscription_count(), hub.subscriber_count(&t)), (1, 2, 2));
        for ms in 1..=3 {
            hub.fan_out(&message(&t, ms));
        }
        // The third message found the slow outbox full: closed as slow.
        assert_eq!(slow.session().closed(), Some(Close::Slow));
        assert_eq!(fast.session().closed(), None);
        let mut got = Vec::new();
        while let Some(crate::core::mailbox::Entry::Message(message)) = fast.outbox.try_recv() {
            got.push(message.id.ms);
        }
        assert_eq!(got, [1, 2, 3], "the fast subscriber lost nothing");
        assert_eq!(slow.outbox.len(), 2, "the slow one keeps what fit; it resumes by cursor");
        // A message for another topic reaches nobody.
        hub.fan_out(&message(&Topic::new("other").unwrap(), 4));
        assert!(fast.outbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn the_last_leave_unwatches_once() {
        let hub = Hub::new();
        let watches = Arc::new(Watches::default());
        let engine: Arc<dyn Engine> = watches.clone();
        let t = Topic::new("t").unwrap();
        let mut a = Subscriber::new(hub.clone(), Arc::clone(&engine), 4);
        let mut b = Subscriber::new(hub.clone(), Arc::clone(&engine), 4);
        a.join(&t).await.unwrap();
        a.join(&t).await.unwrap(); // idempotent
        b.join(&t).await.unwrap();
        assert_eq!(watches.watched.load(Ordering::SeqCst), 2);
        a.leave(&t);
        assert_eq!((watches.unwatched.load(Ordering::SeqCst), hub.topic_count()), (0, 1));
        drop(b); // dropping a subscriber leaves every topic
        assert_eq!((watches.unwatched.load(Ordering::SeqCst), hub.topic_count()), (1, 0));
        hub.fan_out(&message(&t, 1));
        assert!(a.outbox.try_recv().is_none(), "a left: nothing delivered");
    }

    /// Issue 11 item 3: the last leave racing the first join must leave the
    /// topic watched while it has a subscriber.
    #[test]
    fn a_first_join_racing_the_last_leave_stays_watched() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (joined, joined_rx) = std::sync::mpsc::channel();
        let engine = Arc::new(Watches {
            pause: Some(Pause {
                entered: std::sync::Mutex::new(entered_tx),
                joined: std::sync::Mutex::new(joined_rx),
            }),
            ..Watches::default()
        });
        let hub = Hub::new();
        let t = Topic::new("race").unwrap();
        let handle = || SubscriberHandle { outbox: Arc::new(Mailbox::new(4)), session: Arc::default() };
        let (key, _) = hub.join(&t, handle(), &*engine).unwrap();
        assert!(engine.live.lock().unwrap().contains(&t));
        std::thread::scope(|s| {
            s.spawn(|| hub.leave(&t, key, &*engine));
            entered.recv_timeout(std::time::Duration::from_secs(5)).expect("the leave unwatches");
            s.spawn(|| {
                let _ = hub.join(&t, handle(), &*engine);
                let _ = joined.send(());
            });
        });
        assert_eq!(hub.subscriber_count(&t), 1);
        assert!(engine.live.lock().unwrap().contains(&t), "a subscribed topic is no longer watched");
    }

    #[tokio::test]
    async fn reset_closes_the_topics_subscribers_as_unavailable() {
        let hub = Hub::new();
        let engine: Arc<dyn Engine> = Arc::new(Watches::default());
        let (t, u) = (Topic::new("t").unwrap(), Topic::new("u").unwrap());
        let mut a = Subscriber::new(hub.clone(), Arc::clone(&engine), 4);
        let mut b = Subscriber::new(hub.clone(), Arc::clone(&engine), 4);
        a.join(&t).await.unwrap();
        b.join(&u).await.unwrap();
        Feed::reset(&hub, &t);
        assert_eq!((a.session().closed(), b.session().closed()), (Some(Close::Unavailable), None));
    }

    /// The tip: unknown until something is fanned out, the newest stored id
    /// after (an ephemeral message does not move it, an older id never
    /// lowers it), forgotten on a reset and with the topic's last leave.
    #[tokio::test]
    async fn the_tip_is_the_newest_stored_id_fed_without_a_break() {
        let hub = Hub::new();
        let engine: Arc<dyn Engine> = Arc::new(Watches::default());
        let (t, u) = (Topic::new("t").unwrap(), Topic::new("u").unwrap());
        assert_eq!(hub.tip(&t), None, "no local subscriber");
        let mut a = Subscriber::new(hub.clone(), Arc::clone(&engine), 16);
        a.join(&t).await.unwrap();
        a.join(&u).await.unwrap();
        assert_eq!(hub.tip(&t), None, "nothing fanned out since the join");
        hub.fan_out(&message(&t, 5));
        hub.fan_out(&message(&t, 7));
        assert_eq!(hub.tip(&t), Some(MessageId::new(7, 0)));
        assert_eq!(hub.tip(&u), None, "per topic");
        hub.fan_out(&Arc::new(Message::ephemeral(
            t.clone(),
            Bytes::from_static(b"1"),
            crate::core::message::Ephemeral::default(),
        )));
        hub.fan_out(&message(&t, 6));
        assert_eq!(hub.tip(&t), Some(MessageId::new(7, 0)), "ephemeral and older ids leave it");
        Feed::reset(&hub, &t);
        assert_eq!(hub.tip(&t), None, "a break in the feed forgets it");
        let mut b = Subscriber::new(hub.clone(), Arc::clone(&engine), 16);
        b.join(&u).await.unwrap();
        hub.fan_out(&message(&u, 9));
        drop(a);
        assert_eq!(hub.tip(&u), Some(MessageId::new(9, 0)), "b still holds u");
        drop(b);
        assert_eq!(hub.tip(&u), None, "the last leave forgets it");
        let mut c = Subscriber::new(hub.clone(), Arc::clone(&engine), 16);
        c.join(&u).await.unwrap();
        assert_eq!(hub.tip(&u), None, "a new first join starts unknown");
    }

    /// Issue 11 item 10: at most `max_topics` topics; joins of a topic
    /// already here still succeed; a last leave makes room.
    #[tokio::test]
    async fn the_topic_cap_refuses_only_new_topics() {
        let hub = Hub::with_max_topics(2);
        let engine: Arc<dyn Engine> = Arc::new(Watches::default());
        let (t, u, v) = (Topic::new("t").unwrap(), Topic::new("u").unwrap(), Topic::new("v").unwrap());
        let mut a = Subscriber::new(hub.clone(), Arc::clone(&engine), 4);
        let mut b = Subscriber::new(hub.clone(), Arc::clone(&engine), 4);
        a.join(&t).await.unwrap();
        a.join(&u).await.unwrap();
        assert!(matches!(b.join(&v).await, Err(EngineError::Full("limits.max_topics"))));
        assert!(!b.is_joined(&v));
        b.join(&t).await.unwrap();
        assert_eq!((hub.topic_count(), hub.subscriber_count(&t)), (2, 2));
        a.leave(&u);
        b.join(&v).await.unwrap();
        assert_eq!(hub.topic_count(), 2);
    }

    #[tokio::test]
    async fn top_topics_ranks_by_subscribers_and_counts_fanned_messages() {
        let hub = Hub::new();
        let engine: Arc<dyn Engine> = Arc::new(Watches::default());
        let (t, u) = (Topic::new("t").unwrap(), Topic::new("u").unwrap());
        let mut a = Subscriber::new(hub.clone(), Arc::clone(&engine), 8);
        let mut b = Subscriber::new(hub.clone(), Arc::clone(&engine), 8);
        a.join(&u).await.unwrap();
        a.join(&t).await.unwrap();
        b.join(&t).await.unwrap();
        for ms in 1..=3 {
            hub.fan_out(&message(&t, ms));
        }
        hub.fan_out(&message(&u, 4));
        let top = hub.top_topics(10);
        let got: Vec<(&str, usize, u64)> =
            top.iter().map(|s| (s.topic.as_str(), s.subscribers, s.messages)).collect();
        assert_eq!(got, [("t", 2, 3), ("u", 1, 1)]);
        assert_eq!(hub.top_topics(1).len(), 1);
    }
}
