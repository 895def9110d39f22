//! The driver against the embedded engine: de-duplication, resume,
//! gaps both ways, close, the subscribe op's rules.

use super::*;
use crate::config::Config;
use crate::testing::{self, topic};
use crate::transport::access::Access;

fn ids(events: &[Event]) -> Vec<MessageId> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => Some(message.id),
            _ => None,
        })
        .collect()
}

/// Every event ready now.
fn drain(sub: &mut Subscription) -> Vec<Event> {
    std::iter::from_fn(|| sub.try_next()).collect()
}

#[tokio::test]
async fn a_message_seen_twice_is_handed_out_once() {
    let state = testing::state(Config::default());
    let mut sub = Subscription::new(&state, Transport::Ws, GapReport::Event, Access::anonymous());
    sub.start(vec![topic("d")], None).await.unwrap();
    let id = testing::publish(&state, "d", "1").await;
    // The same message again, as a replay/live overlap would bring it.
    let again = state.bus.engine.history(&topic("d"), None, 1).await.unwrap().messages;
    state.bus.hub.fan_out(&again[0]);
    let first = sub.next().await;
    assert_eq!(ids(&[first]), [id]);
    assert!(drain(&mut sub).is_empty(), "the duplicate is dropped");
    assert_eq!(sub.cursor().get(&topic("d")), Some(id));
}

#[tokio::test]
async fn resume_replays_after_the_cursor_then_goes_live() {
    let mut config = Config::default();
    config.history.replay_page = 2;
    let state = testing::state(config);
    let published = testing::publish_numbers(&state, "r", 7).await;
    let mut sub = Subscription::new(&state, Transport::Sse, GapReport::Event, Access::anonymous());
    let cursor = Cursor::single(topic("r"), published[1]);
    sub.start(vec![topic("r"), topic("other")], Some(&cursor)).await.unwrap();
    assert!(sub.replaying());
    let mut replayed = Vec::new();
    while let Some(e) = sub.next_replayed().await {
        replayed.push(e);
    }
    assert_eq!(ids(&replayed), published[2..].to_vec());
    assert!(!sub.replaying());
    let live = testing::publish(&state, "r", "7").await;
    let other = testing::publish(&state, "other", "8").await;
    let first = sub.next().await;
    let mut events = vec![first];
    events.extend(drain(&mut sub));
    assert_eq!(ids(&events), [live, other]);
    assert_eq!((sub.cursor().get(&topic("r")), sub.cursor().get(&topic("other"))), (Some(live), Some(other)));
}

#[tokio::test]
async fn a_gap_is_an_event_or_rides_on_the_next_message() {
    let mut config = Config::default();
    config.history.max_len = 3;
    let state = testing::state(config);
    let published = testing::publish_numbers(&state, "g", 6).await;
    let cursor = Cursor::single(topic("g"), published[0]);

    let mut sub = Subscription::new(&state, Transport::Ws, GapReport::Event, Access::anonymous());
    sub.start(vec![topic("g")], Some(&cursor)).await.unwrap();
    match sub.next_replayed().await {
        Some(Event::Gap(gap)) => {
            assert_eq!((gap.after, gap.oldest), (published[0], published[3]));
            // The cursor moved past the gap: a reconnect does not report it again.
            assert_eq!(sub.cursor().get(&topic("g")), Some(gap.resume_from));
            assert!(gap.resume_from >= published[2]);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    let mut rest = Vec::new();
    while let Some(e) = sub.next_replayed().await {
        rest.push(e);
    }
    assert_eq!(ids(&rest), published[3..].to_vec());

    let mut sub = Subscription::new(&state, Transport::Grpc, GapReport::OnNextMessage, Access::anonymous());
    sub.start(vec![topic("g")], Some(&cursor)).await.unwrap();
    match sub.next_replayed().await {
        Some(Event::Message { message, gap: Some(gap), .. }) => {
            assert_eq!((message.id, gap.after, gap.oldest), (published[3], published[0], published[3]));
        }
        other => panic!("expected the first message carrying the gap, got {other:?}"),
    }
    match sub.next_replayed().await {
        Some(Event::Message { gap: None, .. }) => {}
        other => panic!("expected a plain message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_closed_session_ends_the_stream_before_queued_messages() {
    let state = testing::state(Config::default());
    let mut sub = Subscription::new(&state, Transport::Ws, GapReport::Event, Access::anonymous());
    sub.start(vec![topic("c")], None).await.unwrap();
    testing::publish(&state, "c", "1").await;
    sub.session().close(Close::Slow);
    assert!(matches!(sub.next().await, Event::Closed(Close::Slow)));
}

#[tokio::test]
async fn subscribe_and_leave_rules() {
    let mut config = Config::default();
    config.limits.max_topics_per_connection = 2;
    let state = testing::state(config);
    let mut sub = Subscription::new(&state, Transport::Ws, GapReport::Event, Access::anonymous());
    let ok = sub.subscribe(topic("a"), None).await.unwrap();
    assert!(ok.recovered && ok.gap.is_none());
    let refused = |r: Result<Subscribed, SubscribeError>| match r {
        Err(SubscribeError::Refused(e)) => e.message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused(sub.subscribe(topic("a"), None).await), "already subscribed");
    sub.subscribe(topic("b"), None).await.unwrap();
    assert!(refused(sub.subscribe(topic("c"), None).await).starts_with("too many topics"));

    // Leaving drops what was queued for the topic.
    testing::publish(&state, "a", "1").await;
    let b = testing::publish(&state, "b", "2").await;
    sub.leave(&topic("a"));
    assert_eq!(ids(&drain(&mut sub)), [b]);
    assert_eq!(sub.cursor().len(), 1);
    assert_eq!(state.bus.hub.subscriber_count(&topic("a")), 0);
}
