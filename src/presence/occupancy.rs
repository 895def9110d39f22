//! Occupancy events (contract §11, §9): `topic.occupied`, `topic.vacated`,
//! `user.online`, `user.offline`, published as ordinary stored messages on
//! the reserved topics `presence.topic.occupied`, `presence.topic.vacated`,
//! `presence.user.online` and `presence.user.offline`, so a `[[webhooks]]`
//! endpoint with `topics = ["presence.*"]` gets them through the webhook
//! outbox (once per endpoint, retried, dead-lettered like any message).
//!
//! Each transition is decided once across processes (by the store update
//! that made it), so each is published once. Nothing is published unless a
//! webhook pattern matches the topic.

use std::sync::Arc;

use bytes::Bytes;

use super::entry::{push_str, Transitions};
use crate::auth::Pattern;
use crate::config::Config;
use crate::core::{Engine, Topic};

/// The reserved topics.
pub const OCCUPIED: &str = "presence.topic.occupied";
/// See [`OCCUPIED`].
pub const VACATED: &str = "presence.topic.vacated";
/// See [`OCCUPIED`].
pub const ONLINE: &str = "presence.user.online";
/// See [`OCCUPIED`].
pub const OFFLINE: &str = "presence.user.offline";

/// Publishes occupancy events for the webhooks that want them.
pub(super) struct Occupancy {
    engine: Arc<dyn Engine>,
    /// Which of the four topics some webhook matches.
    wanted: [Option<Topic>; 4],
}

impl Occupancy {
    pub(super) fn new(config: &Config, engine: Arc<dyn Engine>) -> Self {
        let patterns: Vec<Pattern> =
            config.webhooks.iter().flat_map(|w| &w.topics).filter_map(|p| Pattern::parse(p).ok()).collect();
        let want =
            |name: &str| patterns.iter().any(|p| p.matches(name)).then(|| Topic::new(name).ok()).flatten();
        Occupancy { engine, wanted: [want(OCCUPIED), want(VACATED), want(ONLINE), want(OFFLINE)] }
    }

    /// Publishes the events of `t`.
    pub(super) async fn publish(&self, t: &Transitions) {
        let ts = super::now_ms();
        let [occupied, vacated, online, offline] = &self.wanted;
        for (to, names) in [(occupied, &t.occupied), (vacated, &t.vacated)] {
            let Some(to) = to else { continue };
            for topic in names {
                self.send(to, "topic", topic.as_str(), ts).await;
            }
        }
        for (to, users) in [(online, &t.online), (offline, &t.offline)] {
            let Some(to) = to else { continue };
            for user in users {
                self.send(to, "user", user, ts).await;
            }
        }
    }

    async fn send(&self, to: &Topic, field: &str, value: &str, ts: u64) {
        let mut data = String::with_capacity(48 + value.len());
        data.push_str("{\"");
        data.push_str(field);
        data.push_str("\":");
        push_str(&mut data, value);
        data.push_str(",\"ts\":");
        data.push_str(&ts.to_string());
        data.push('}');
        if let Err(e) = self.engine.publish(to, Bytes::from(data), None).await {
            tracing::warn!(error = %e, topic = %to, "occupancy event not published");
        }
    }
}
