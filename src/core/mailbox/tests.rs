use bytes::Bytes;

use super::*;

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn m(n: u64) -> Arc<Message> {
    keyed("t", n, None)
}

fn keyed(t: &str, n: u64, key: Option<&str>) -> Arc<Message> {
    Arc::new(
        Message::new(topic(t), MessageId::new(n, 0), n, Bytes::from_static(b"1"))
            .with_key(key.map(Arc::from)),
    )
}

fn ephemeral(t: &str) -> Arc<Message> {
    Arc::new(Message::ephemeral(topic(t), Bytes::from_static(b"1"), Default::default()))
}

/// Drains `b` into (topic, id ms, key, skipped) for messages, and
/// ("dropped:T", last ms, count) markers.
fn drain(b: &Mailbox) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = b.try_recv() {
        out.push(match e {
            Entry::Message(message) if message.is_ephemeral() => format!("eph:{}", message.topic),
            Entry::Message(message) => {
                format!("{}:{}:{}:0", message.topic, message.id.ms, message.key.as_deref().unwrap_or("-"))
            }
            Entry::Latest { message, skipped } => format!(
                "{}:{}:{}:{skipped}",
                message.topic,
                message.id.ms,
                message.key.as_deref().unwrap_or("-")
            ),
            Entry::Dropped(d) => format!("dropped:{}:{}:{}", d.topic, d.last.ms, d.count),
            Entry::Notice(n) => format!("notice:{}", n.event),
        });
    }
    out
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
        assert!(matches!(b.try_recv(), Some(Entry::Message(message)) if message.id.ms == n));
    }
    assert!(b.is_empty());
    assert_eq!(b.queue.lock().items.capacity(), 0, "the burst's buffer is freed");
    assert!(Mailbox::new(0).offer(m(1)), "capacity is at least 1");
}

#[test]
fn latest_keeps_the_newest_per_key_in_id_order_and_counts_what_it_replaced() {
    let b = Mailbox::new(100);
    for n in 1..=9 {
        let key = ["a", "b", "c"][(n % 3) as usize];
        assert!(b.offer_with(keyed("p", n, Some(key)), Delivery::Latest));
    }
    // Keys: 1→b 2→c 3→a 4→b 5→c 6→a 7→b 8→c 9→a; the newest of each, in id order.
    assert_eq!(drain(&b), ["p:7:b:2", "p:8:c:2", "p:9:a:2"]);
    // A reader that keeps up never skips.
    assert!(b.offer_with(keyed("p", 10, Some("a")), Delivery::Latest));
    assert_eq!(drain(&b), ["p:10:a:0"]);
    // Keyless: the newest of the topic.
    for n in 11..=14 {
        assert!(b.offer_with(keyed("q", n, None), Delivery::Latest));
    }
    assert_eq!(drain(&b), ["q:14:-:3"]);
}

#[test]
fn latest_entries_are_bounded_apart_and_never_make_a_lossless_topic_slow() {
    let b = Mailbox::new(3);
    for n in 1..=3 {
        assert!(b.offer_with(keyed("p", n, Some(&n.to_string())), Delivery::Latest));
    }
    // Three lossless messages still fit: latest entries are counted apart.
    for n in 4..=6 {
        assert!(b.offer(keyed("other", n, None)));
    }
    assert!(!b.offer(keyed("other", 7, None)), "the lossless bound is its own");
    // A fourth key at the latest bound: the topic's oldest makes room.
    assert!(b.offer_with(keyed("p", 8, Some("8")), Delivery::Latest));
    assert_eq!(drain(&b), ["p:2:2:0", "p:3:3:0", "other:4:-:0", "other:5:-:0", "other:6:-:0", "p:8:8:1"]);
    // At the bound with another topic's entries only: nothing of q to evict.
    for n in 1..=3 {
        assert!(b.offer_with(keyed("p", n + 10, Some(&n.to_string())), Delivery::Latest));
    }
    assert!(!b.offer_with(keyed("q", 20, None), Delivery::Latest));
}

#[test]
fn drop_reports_one_range_when_the_reader_catches_up() {
    let b = Mailbox::new(2);
    assert!(b.offer_with(keyed("d", 1, None), Delivery::Drop));
    assert!(b.offer_with(keyed("d", 2, None), Delivery::Drop));
    for n in 3..=6 {
        assert!(b.offer_with(keyed("d", n, None), Delivery::Drop), "dropped, never closed");
    }
    // The reader takes one: room again; the next message comes after the marker.
    assert_eq!(drain_one(&b), "d:1:-:0");
    assert!(b.offer_with(keyed("d", 7, None), Delivery::Drop));
    assert_eq!(drain(&b), ["d:2:-:0", "dropped:d:6:4", "d:7:-:0"]);
    // A range dropped with no later message is reported once the queue runs empty.
    let b = Mailbox::new(1);
    assert!(b.offer_with(keyed("d", 1, None), Delivery::Drop));
    assert!(b.offer_with(keyed("d", 2, None), Delivery::Drop));
    assert_eq!(drain(&b), ["d:1:-:0", "dropped:d:2:1"]);
    assert!(b.try_recv().is_none());
}

fn drain_one(b: &Mailbox) -> String {
    match b.try_recv() {
        Some(Entry::Message(message)) => format!("{}:{}:-:0", message.topic, message.id.ms),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn ephemeral_messages_go_first_under_backpressure() {
    let b = Mailbox::new(2);
    assert!(b.offer_with(ephemeral("t"), Delivery::Lossless));
    assert!(b.offer(m(1)));
    assert!(b.offer_with(ephemeral("t"), Delivery::Lossless), "full: dropped, not a slow close");
    assert_eq!(b.len(), 2);
    // A stored message takes the ephemeral one's place.
    assert!(b.offer(m(2)));
    assert_eq!(drain(&b), ["t:1:-:0", "t:2:-:0"]);
}

#[tokio::test]
async fn recv_wakes_on_an_offer_from_another_task() {
    let b = Arc::new(Mailbox::new(4));
    let b2 = Arc::clone(&b);
    let waiter = tokio::spawn(async move {
        match b2.recv().await {
            Entry::Message(message) => message.id.ms,
            _ => 0,
        }
    });
    tokio::task::yield_now().await;
    assert!(b.offer(m(7)));
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
    assert_eq!(got.expect("woken").expect("task"), 7);
}
