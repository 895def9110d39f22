//! Engine conformance: one set of checks every engine must pass (ids,
//! ordering, retention, gaps, replay, idempotency, the replay→live race).
//! Each engine gets a `mod` below that instantiates the suite with its own
//! constructor, so engines cannot drift apart.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rtgate::core::replay::{Resume, Step};
use rtgate::core::{Engine, Feed, Hub, MessageId, Subscriber, Topic};

mod support;

/// Builds an engine with `max_len` retention that notifies `listener`.
type Factory<'a> = &'a dyn Fn(usize, Arc<dyn Feed>) -> Arc<dyn Engine>;

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

async fn publish_n(e: &dyn Engine, t: &Topic, n: usize) -> Vec<MessageId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(e.publish(t, Bytes::from(format!("{{\"n\":{i}}}")), None).await.unwrap().id);
    }
    ids
}

pub async fn ids_strictly_increase_and_history_pages(make: Factory<'_>) {
    let e = make(1000, Arc::new(Hub::new()));
    let t = topic("ids");
    let ids = publish_n(&*e, &t, 300).await;
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing");
    assert_eq!(e.last_id(&t).await.unwrap(), Some(ids[299]));
    let mut pos = MessageId::ZERO;
    let mut got = vec![];
    loop {
        let page = e.history(&t, Some(pos), 64).await.unwrap();
        assert!(!page.truncated);
        if page.messages.is_empty() {
            break;
        }
        pos = page.messages.last().unwrap().id;
        got.extend(page.messages.iter().map(|m| m.id));
    }
    assert_eq!(got, ids);
    let newest = e.history(&t, None, 10).await.unwrap();
    assert_eq!(newest.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids[290..].to_vec());
    assert_eq!(&newest.messages[9].data[..], b"{\"n\":299}");
    assert_eq!(e.last_id(&topic("never")).await.unwrap(), None);
}

pub async fn retention_reports_gaps(make: Factory<'_>) {
    let e = make(10, Arc::new(Hub::new()));
    let t = topic("trim");
    let ids = publish_n(&*e, &t, 25).await;
    let h = e.history(&t, Some(ids[0]), 100).await.unwrap();
    assert!(h.truncated);
    assert_eq!(h.oldest, Some(ids[15]));
    assert_eq!(h.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids[15..].to_vec());
    let h = e.history(&t, Some(ids[14]), 100).await.unwrap();
    assert!(!h.truncated, "resuming right before the oldest retained is not a gap");
    assert_eq!(h.messages.len(), 10);
}

pub async fn idempotency(make: Factory<'_>) {
    let e = make(100, Arc::new(Hub::new()));
    let t = topic("idem");
    let a = e.publish(&t, Bytes::from_static(b"1"), Some("key-1")).await.unwrap();
    let b = e.publish(&t, Bytes::from_static(b"2"), Some("key-1")).await.unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!((a.id, a.ts), (b.id, b.ts));
    let h = e.history(&t, None, 100).await.unwrap();
    assert_eq!(h.messages.len(), 1);
    assert_eq!(&h.messages[0].data[..], b"1");
}

pub async fn listener_hears_watched_topic_in_order(make: Factory<'_>) {
    let hub = Hub::new();
    let e = make(10_000, Arc::new(hub.clone()));
    let t = topic("live");
    let mut sub = Subscriber::new(hub, Arc::clone(&e), 10_000);
    sub.join(&t).await.unwrap();
    let ids = publish_n(&*e, &t, 1000).await;
    let mut got = vec![];
    while got.len() < ids.len() {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.outbox.recv()).await.unwrap();
        let m = m.message().expect("a message").clone();
        got.push(m.id);
    }
    assert_eq!(got, ids);
}

/// A resume from an old id while a publisher races: replay, hand over to
/// live, drop the overlap by id; the result is exactly every id after the
/// resume point, in order.
pub async fn replay_to_live_race_has_no_gap_and_no_duplicate(make: Factory<'_>) {
    let hub = Hub::new();
    let e = make(100_000, Arc::new(hub.clone()));
    let t = topic("race");
    let before = publish_n(&*e, &t, 2000).await;
    let publisher = {
        let e = Arc::clone(&e);
        let t = t.clone();
        tokio::spawn(async move {
            let mut ids = vec![];
            for i in 0..3000 {
                ids.push(e.publish(&t, Bytes::from(format!("{i}")), None).await.unwrap().id);
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            ids
        })
    };
    let mut sub = Subscriber::new(hub, Arc::clone(&e), 100_000);
    let mut resume = Resume::after(t.clone(), before[99], 64);
    let mut pos = before[99];
    let mut got = vec![];
    while let Some(step) = resume.next(&mut sub).await.unwrap() {
        match step {
            Step::Gap(g) => panic!("unexpected gap {g:?}"),
            Step::Messages(ms) => {
                for m in ms {
                    assert!(m.id > pos, "replay went backwards");
                    pos = m.id;
                    got.push(m.id);
                }
            }
        }
    }
    assert!(resume.recovered());
    let during = publisher.await.unwrap();
    let last = *during.last().unwrap();
    while pos < last {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.outbox.recv()).await.unwrap();
        let m = m.message().expect("a message").clone();
        if m.id > pos {
            pos = m.id;
            got.push(m.id);
        }
    }
    let mut expected = before[100..].to_vec();
    expected.extend(during);
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

macro_rules! engine_suite {
    ($name:ident, $setup:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn ids_strictly_increase_and_history_pages() {
                let (_guard, make) = $setup;
                super::ids_strictly_increase_and_history_pages(&make).await;
            }
            #[tokio::test]
            async fn retention_reports_gaps() {
                let (_guard, make) = $setup;
                super::retention_reports_gaps(&make).await;
            }
            #[tokio::test]
            async fn idempotency() {
                let (_guard, make) = $setup;
                super::idempotency(&make).await;
            }
            #[tokio::test]
            async fn listener_hears_watched_topic_in_order() {
                let (_guard, make) = $setup;
                super::listener_hears_watched_topic_in_order(&make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replay_to_live_race_has_no_gap_and_no_duplicate() {
                let (_guard, make) = $setup;
                super::replay_to_live_race_has_no_gap_and_no_duplicate(&make).await;
            }
        }
    };
}

fn memory(max_len: usize, listener: Arc<dyn Feed>) -> Arc<dyn Engine> {
    use rtgate::engine::memory::{MemoryEngine, MemoryOptions};
    Arc::new(MemoryEngine::new(
        MemoryOptions {
            max_len,
            max_age: Duration::from_secs(3600),
            idempotency_ttl: Duration::from_secs(3600),
            idempotency_max_keys: 1000,
            ..MemoryOptions::default()
        },
        listener,
    ))
}

/// A fresh `redis-server` and a factory of Redis engines on it; the guard
/// stops the engines' tasks and the server when dropped.
struct RedisGuard {
    _server: support::redis::RedisServer,
    token: tokio_util::sync::CancellationToken,
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

#[allow(clippy::type_complexity)]
fn redis_setup() -> (RedisGuard, impl Fn(usize, Arc<dyn Feed>) -> Arc<dyn Engine>) {
    use rtgate::engine::redis::{RedisEngine, RedisOptions};
    let server = support::redis::RedisServer::start();
    let url = server.url();
    let token = tokio_util::sync::CancellationToken::new();
    let shutdown = rtgate::shutdown::Shutdown::new(token.clone(), Duration::from_secs(1));
    let make = move |max_len: usize, listener: Arc<dyn Feed>| -> Arc<dyn Engine> {
        let opts = RedisOptions {
            url: url.clone(),
            cluster_urls: vec![],
            key_prefix: "test:".into(),
            shards: 4,
            max_len,
            max_age: Duration::from_secs(3600),
            idempotency_ttl: Duration::from_secs(3600),
            idempotency_max_keys: 1000,
            op_timeout: Duration::from_secs(2),
            block: Duration::from_secs(2),
            routes: None,
            policies: None,
        };
        RedisEngine::start(opts, listener, &shutdown).unwrap()
    };
    (RedisGuard { _server: server, token }, make)
}

engine_suite!(memory_engine, ((), memory));
engine_suite!(redis_engine, redis_setup());
