//! Unit tests of the embedded engine: retention, idempotency, caps, idle
//! topics dropped, and the fan-out outside the topic lock.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use super::handoff::HANDOFF_CAP;
use super::*;
use crate::core::Hub;

/// Upper bound of any wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn engine(max_len: usize, max_age: Duration) -> MemoryEngine {
    MemoryEngine::new(
        MemoryOptions {
            max_len,
            max_age,
            idempotency_ttl: Duration::from_secs(60),
            idempotency_max_keys: 3,
            ..MemoryOptions::default()
        },
        Arc::new(Hub::new()),
    )
}

fn t(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

/// A message published from a slice of a bigger buffer (hyper's read
/// buffer, a WebSocket frame) keeps only its own bytes: the stored data owns
/// its allocation alone, so retention costs what `max_retained_bytes`
/// counts, not the whole buffer.
#[tokio::test]
async fn a_retained_message_does_not_keep_its_source_buffer() {
    let e = engine(100, Duration::from_secs(3600));
    let mut buffer = vec![b' '; 8192];
    buffer[100..103].copy_from_slice(b"123");
    let buffer = Bytes::from(buffer);
    e.publish(&t("a"), buffer.slice(100..103), None).await.unwrap();
    let h = e.history(&t("a"), None, 1).await.unwrap();
    let stored = &h.messages[0].data;
    assert_eq!(&stored[..], b"123");
    assert!(stored.is_unique(), "the stored data shares the 8 KiB buffer it was sliced from");
    drop(buffer);
}

#[tokio::test]
async fn ids_increase_and_history_pages() {
    let e = engine(100, Duration::from_secs(3600));
    let mut ids = vec![];
    for i in 0..10 {
        ids.push(e.publish(&t("a"), Bytes::from(i.to_string()), None).await.unwrap().id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let h = e.history(&t("a"), Some(ids[3]), 4).await.unwrap();
    assert_eq!(h.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids[4..8].to_vec());
    assert!(!h.truncated);
    let newest = e.history(&t("a"), None, 3).await.unwrap();
    assert_eq!(newest.messages.iter().map(|m| m.id).collect::<Vec<_>>(), ids[7..].to_vec());
    assert_eq!(e.last_id(&t("a")).await.unwrap(), Some(ids[9]));
    assert_eq!(e.last_id(&t("b")).await.unwrap(), None);
}

#[tokio::test]
async fn retention_by_count_reports_truncation() {
    let e = engine(3, Duration::from_secs(3600));
    let mut ids = vec![];
    for i in 0..6 {
        ids.push(e.publish(&t("a"), Bytes::from(i.to_string()), None).await.unwrap().id);
    }
    let h = e.history(&t("a"), Some(ids[0]), 10).await.unwrap();
    assert!(h.truncated);
    assert_eq!(h.oldest, Some(ids[3]));
    assert_eq!(h.messages.len(), 3);
    // Resuming from just before the oldest retained one is not a gap.
    let h = e.history(&t("a"), Some(ids[2]), 10).await.unwrap();
    assert!(!h.truncated);
    assert_eq!(h.messages.len(), 3);
}

#[tokio::test]
async fn retention_by_age() {
    let e = engine(100, Duration::from_millis(0));
    let id = e.publish(&t("a"), Bytes::from_static(b"1"), None).await.unwrap().id;
    // max_age 0: gone by the next read (ts < now - 0 once a ms passed).
    tokio::time::sleep(Duration::from_millis(3)).await;
    let h = e.history(&t("a"), Some(MessageId::ZERO), 10).await.unwrap();
    assert!(h.messages.is_empty());
    assert!(h.truncated);
    assert_eq!(h.oldest, id.successor());
}

#[tokio::test]
async fn idempotency_keys_dedupe_and_are_bounded() {
    let e = engine(100, Duration::from_secs(3600));
    let a = e.publish(&t("a"), Bytes::from_static(b"1"), Some("k")).await.unwrap();
    let b = e.publish(&t("a"), Bytes::from_static(b"2"), Some("k")).await.unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!((a.id, a.ts), (b.id, b.ts));
    // Same key, other topic: independent.
    assert!(!e.publish(&t("b"), Bytes::from_static(b"1"), Some("k")).await.unwrap().duplicate);
    for k in ["k2", "k3", "k4"] {
        e.publish(&t("a"), Bytes::from_static(b"1"), Some(k)).await.unwrap();
    }
    // Cap of 3 keys: "k" was forgotten.
    assert!(!e.publish(&t("a"), Bytes::from_static(b"1"), Some("k")).await.unwrap().duplicate);
    assert_eq!(e.history(&t("a"), None, 100).await.unwrap().messages.len(), 5);
}

fn with(opts: MemoryOptions) -> Arc<MemoryEngine> {
    Arc::new(MemoryEngine::new(opts, Arc::new(Hub::new())))
}

/// Sweeps until a topic is dropped (its messages must first age out by
/// the wall clock); bounded.
async fn sweep_until_dropped(e: &MemoryEngine) -> usize {
    tokio::time::timeout(WAIT, async {
        loop {
            let dropped = e.sweep();
            if dropped > 0 {
                return dropped;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no topic was dropped")
}

#[test]
fn the_sweep_interval_follows_max_age() {
    assert_eq!(sweep_every(Duration::from_secs(24 * 3600)), Duration::from_secs(10));
    assert_eq!(sweep_every(Duration::from_secs(2)), Duration::from_secs(1));
    assert_eq!(sweep_every(Duration::from_millis(1)), Duration::from_millis(50));
}

/// Issue 11 item 10: an untouched topic gives everything back once its
/// messages are older than max_age, a resume into it is a gap, and its ids
/// keep increasing when it is written again.
#[tokio::test]
async fn an_idle_topic_is_dropped_and_its_ids_never_repeat() {
    let e = with(MemoryOptions {
        max_age: Duration::from_millis(30),
        idempotency_ttl: Duration::from_millis(30),
        ..MemoryOptions::default()
    });
    let old = e.publish(&t("a"), Bytes::from_static(b"1"), Some("k")).await.unwrap().id;
    assert_eq!(e.topic_count(), 1);
    assert!(e.retained_bytes() > 0);
    assert_eq!(sweep_until_dropped(&e).await, 1);
    assert!(e.slot(&t("a")).is_none());
    assert_eq!((e.topic_count(), e.retained_bytes()), (0, 0));
    assert!(*e.floor.lock() >= old, "the dropped topic's ids are remembered");
    // Untouched "a": nothing left; a resume from its old id is a gap.
    assert_eq!(e.last_id(&t("a")).await.unwrap(), None);
    let h = e.history(&t("a"), Some(old), 10).await.unwrap();
    assert!(h.truncated && h.messages.is_empty());
    assert!(!e.history(&t("a"), Some(MessageId::ZERO), 10).await.unwrap().truncated);
    // Written again: a new id above every old one, and the key is new.
    let again = e.publish(&t("a"), Bytes::from_static(b"4"), Some("k")).await.unwrap();
    assert!(!again.duplicate);
    assert!(again.id > old);
    let h = e.history(&t("a"), Some(old), 10).await.unwrap();
    assert!(h.truncated, "the old id is still not vouched for");
    assert_eq!(h.messages.iter().map(|m| m.id).collect::<Vec<_>>(), [again.id]);
    // Had the clock stepped back below a dropped topic's ids, a new topic
    // would still start above them.
    let ahead = MessageId::new(now_ms() + 3_600_000, 7);
    *e.floor.lock() = ahead;
    let fresh = e.publish(&t("fresh"), Bytes::from_static(b"5"), None).await.unwrap().id;
    assert_eq!(Some(fresh), ahead.successor());
}

/// Everything a topic retained is given back: the count of retained bytes
/// is exact, not a leak that grows with every topic ever seen.
#[tokio::test]
async fn retained_bytes_return_to_zero() {
    let e = with(MemoryOptions {
        max_age: Duration::from_millis(20),
        idempotency_ttl: Duration::from_millis(20),
        max_len: 3,
        ..MemoryOptions::default()
    });
    for i in 0..20 {
        let key = format!("k{i}");
        let topic = t(&format!("t{}", i % 4));
        e.publish(&topic, Bytes::from(vec![b'7'; i * 10 + 1]), Some(&key)).await.unwrap();
    }
    assert!(e.retained_bytes() > 0);
    let mut dropped = 0;
    tokio::time::timeout(WAIT, async {
        while dropped < 4 {
            dropped += sweep_until_dropped(&e).await;
        }
    })
    .await
    .unwrap();
    assert_eq!((e.topic_count(), e.retained_bytes()), (0, 0));
}

/// `limits.max_topics`: a publish creating one topic too many is refused
/// and stores nothing; existing topics still take publishes; a dropped
/// topic makes room.
#[tokio::test]
async fn max_topics_refuses_new_topics_only() {
    let e =
        with(MemoryOptions { max_topics: 2, max_age: Duration::from_millis(30), ..MemoryOptions::default() });
    e.publish(&t("a"), Bytes::from_static(b"1"), None).await.unwrap();
    e.publish(&t("b"), Bytes::from_static(b"1"), None).await.unwrap();
    let err = e.publish(&t("c"), Bytes::from_static(b"1"), None).await.unwrap_err();
    assert!(matches!(err, EngineError::Full("limits.max_topics")), "{err:?}");
    assert_eq!(e.topic_count(), 2);
    assert!(e.slot(&t("c")).is_none(), "nothing stored for c");
    e.publish(&t("a"), Bytes::from_static(b"2"), None).await.unwrap();
    sweep_until_dropped(&e).await;
    e.publish(&t("c"), Bytes::from_static(b"1"), None).await.unwrap();
}

/// `memory.max_retained_bytes`: a publish that would grow past it is
/// refused, every accepted one is kept; a publish that pushes out an older
/// message of its topic (max_len) does not grow and is accepted.
#[tokio::test]
async fn max_retained_bytes_refuses_growth_and_keeps_what_it_took() {
    let cap = 8 * 1024;
    let e = with(MemoryOptions { max_len: 5, max_retained_bytes: cap, ..MemoryOptions::default() });
    let data = Bytes::from(vec![b'1'; 1000]);
    let mut accepted = Vec::new();
    let mut topic = 0;
    let refused = loop {
        match e.publish(&t(&format!("t{}", topic / 3)), data.clone(), None).await {
            Ok(p) => accepted.push((topic / 3, p.id)),
            Err(err) => break err,
        }
        topic += 1;
        assert!(topic < 100, "the cap never refused");
    };
    assert!(matches!(refused, EngineError::Full("memory.max_retained_bytes")), "{refused:?}");
    assert!(e.retained_bytes() <= cap);
    for (n, id) in &accepted {
        let h = e.history(&t(&format!("t{n}")), None, 100).await.unwrap();
        assert!(h.messages.iter().any(|m| m.id == *id), "accepted {id:?} kept");
    }
    // At the cap, a topic at max_len takes a message of the size it pushes
    // out: the publish frees as much as it takes.
    let f = with(MemoryOptions { max_len: 2, max_retained_bytes: cap, ..MemoryOptions::default() });
    let mut i = 0;
    while f.publish(&t(&format!("u{i}")), data.clone(), None).await.is_ok()
        && f.publish(&t(&format!("u{i}")), data.clone(), None).await.is_ok()
    {
        i += 1;
    }
    assert!(i > 0);
    let before = f.retained_bytes();
    let full_topic = t("u0");
    assert_eq!(f.history(&full_topic, None, 10).await.unwrap().messages.len(), 2);
    f.publish(&full_topic, data.clone(), None).await.expect("net zero growth is accepted");
    assert_eq!(f.retained_bytes(), before);
}

/// A feed whose first delivery blocks until released (at most [`WAIT`]).
struct Gate {
    entered: parking_lot::Mutex<Option<mpsc::Sender<()>>>,
    release: parking_lot::Mutex<mpsc::Receiver<()>>,
    timed_out: AtomicBool,
    seen: parking_lot::Mutex<Vec<MessageId>>,
}

impl Gate {
    fn new() -> (Arc<Gate>, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let gate = Gate {
            entered: parking_lot::Mutex::new(Some(entered_tx)),
            release: parking_lot::Mutex::new(release_rx),
            timed_out: AtomicBool::new(false),
            seen: parking_lot::Mutex::new(Vec::new()),
        };
        (Arc::new(gate), entered, release)
    }
}

impl Feed for Gate {
    fn deliver(&self, message: &Arc<Message>) {
        let first = self.entered.lock().take();
        if let Some(entered) = first {
            let _ = entered.send(());
            if self.release.lock().recv_timeout(WAIT).is_err() {
                self.timed_out.store(true, Ordering::SeqCst);
            }
        }
        self.seen.lock().push(message.id);
    }

    fn reset(&self, _: &Topic) {}
}

/// Issue 11 item 15: while one publisher's fan-out is stuck in the feed,
/// other publishes to the same topic complete (the topic lock is not held
/// across the fan-out), the hand-off is bounded (a publisher finding it full
/// waits), and the feed still hears every message once, in id order.
#[tokio::test]
async fn the_fan_out_runs_outside_the_topic_lock() {
    let (gate, entered, release) = Gate::new();
    let e = Arc::new(MemoryEngine::new(MemoryOptions::default(), Arc::clone(&gate) as Arc<dyn Feed>));
    let first = {
        let e = Arc::clone(&e);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(e.publish(&t("big"), Bytes::from_static(b"0"), None)).unwrap().id
        })
    };
    entered.recv_timeout(WAIT).expect("the first publish fans out");
    // The first publisher is inside deliver. Others append and return.
    let big = t("big");
    let mut ids = Vec::new();
    for i in 0..HANDOFF_CAP {
        let p = tokio::time::timeout(WAIT, e.publish(&big, Bytes::from(i.to_string()), None)).await;
        ids.push(p.expect("a publish waited for the fan-out").unwrap().id);
    }
    assert!(!gate.timed_out.load(Ordering::SeqCst), "a publish waited for the blocked delivery");
    assert_eq!(e.history(&t("big"), None, 2 * HANDOFF_CAP).await.unwrap().messages.len(), HANDOFF_CAP + 1);
    // The hand-off is full: the next publisher waits for room.
    let e2 = Arc::clone(&e);
    let mut last = tokio::spawn(async move { e2.publish(&t("big"), Bytes::from_static(b"1"), None).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut last).await.is_err(),
        "a publish past the hand-off's bound did not wait"
    );
    release.send(()).unwrap();
    let first = first.join().unwrap();
    let last = tokio::time::timeout(WAIT, last).await.expect("room came back").unwrap().unwrap().id;
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            let n = gate.seen.lock().len();
            if n == HANDOFF_CAP + 2 {
                return gate.seen.lock().clone();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every message delivered");
    let mut want = vec![first];
    want.extend(ids);
    want.push(last);
    assert_eq!(seen, want, "each message once, in id order");
}

/// A feed that records each topic's ids and checks they arrive in order.
#[derive(Default)]
struct Record {
    seen: parking_lot::Mutex<std::collections::HashMap<Topic, Vec<MessageId>>>,
}

impl Feed for Record {
    fn deliver(&self, message: &Arc<Message>) {
        let mut seen = self.seen.lock();
        let ids = seen.entry(message.topic.clone()).or_default();
        assert!(
            ids.last().is_none_or(|&last| last < message.id),
            "out of order: {ids:?} then {:?}",
            message.id
        );
        ids.push(message.id);
    }

    fn reset(&self, _: &Topic) {}
}

/// Item 15: many publishers on one topic (and a second one) from several
/// worker threads: the feed hears strictly increasing ids, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_are_fanned_out_in_id_order() {
    const PUBLISHERS: usize = 8;
    const PER: usize = 500;
    let record = Arc::new(Record::default());
    let e = Arc::new(MemoryEngine::new(MemoryOptions::default(), Arc::clone(&record) as Arc<dyn Feed>));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let e = Arc::clone(&e);
        tasks.push(tokio::spawn(async move {
            let topic = t(if p % 4 == 3 { "other" } else { "hot" });
            let mut ids = Vec::with_capacity(PER);
            for i in 0..PER {
                ids.push((
                    topic.clone(),
                    e.publish(&topic, Bytes::from(i.to_string()), None).await.unwrap().id,
                ));
            }
            ids
        }));
    }
    let mut published: std::collections::HashMap<Topic, Vec<MessageId>> = Default::default();
    for task in tasks {
        for (topic, id) in tokio::time::timeout(WAIT, task).await.expect("publishers finish").unwrap() {
            published.entry(topic).or_default().push(id);
        }
    }
    // Publishes return once queued; the last drainer may still be running.
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            let total: usize = record.seen.lock().values().map(Vec::len).sum();
            if total == PUBLISHERS * PER {
                return record.seen.lock().clone();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every message delivered");
    for (topic, mut ids) in published {
        ids.sort();
        assert_eq!(seen[&topic], ids, "{topic}: every id once, in order");
    }
}
