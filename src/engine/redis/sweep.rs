//! The age sweep: publishes and reads trim a topic by age, but an idle
//! topic would keep entries older than `history.max_age` until its stream
//! expires (`max_age` after its newest message). Each process therefore
//! runs the sweep script over every key group at an interval of a tenth of
//! the shortest `max_age` of any topic policy (1 s to 60 s): it trims the
//! topics whose oldest entry is due in the group's age index. Sweeps of
//! several processes overlap harmlessly (trimming is idempotent); each call
//! handles a bounded number of topics.
//!
//! Per-topic ages (`[[topics]]`): the age index is scored by expiry time
//! (oldest entry + the topic's own `max_age`, written by the publish), so a
//! short-lived topic is due on time. One sweep call is two script runs: the
//! due topics (by Redis's clock), then their trimming with each topic's age
//! resolved here from the policies (every process shares the config, so all
//! agree on a topic's age).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::RedisEngine;
use crate::core::engine::EngineError;
use crate::core::message::Topic;

/// Topics one sweep call trims at most.
const BATCH: usize = 100;
/// Calls per key group and interval at most (then the next interval goes on).
const ROUNDS: usize = 10;

impl RedisEngine {
    /// Sweeps every key group each interval until `token` is cancelled.
    pub(super) async fn sweep(self, token: CancellationToken) {
        let every = (self.shortest_max_age() / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.inner.ready.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            for group in 0..self.inner.groups.len() {
                for _ in 0..ROUNDS {
                    match self.sweep_group(group).await {
                        Ok(n) if n >= BATCH => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::debug!(engine = "redis", group, error = %e, "age sweep failed");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// One sweep call on `group`: how many topics were due.
    async fn sweep_group(&self, group: usize) -> Result<usize, EngineError> {
        let mut conn = self.conn().await?;
        let index = self.age_index(group);
        let tag = self.tag(group);
        let mut due = self.inner.sweep.key(&index);
        due.arg(&tag).arg("due").arg(BATCH);
        let topics: Vec<String> = self.run(due.invoke_async(&mut conn)).await?;
        if topics.is_empty() {
            return Ok(0);
        }
        let mut trim = self.inner.sweep.key(&index);
        trim.arg(&tag).arg("trim");
        for name in &topics {
            // A name that is no topic (written by something else) gets the
            // default age: trimmed, then forgotten with its stream.
            let age = match Topic::new(name) {
                Ok(t) => self.retention(&t).1,
                Err(_) => self.max_age_ms(),
            };
            trim.arg(name).arg(age);
        }
        self.run(trim.invoke_async::<usize>(&mut conn)).await?;
        Ok(topics.len())
    }
}
