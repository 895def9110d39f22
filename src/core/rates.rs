//! Rates for the admin API (`admin`): a task samples the process's running totals and
//! the busiest topics' message counters once a second; a rate is the
//! difference across the last [`WINDOW`] samples. Bounded: [`WINDOW`] + 1
//! samples of at most [`TOPICS_SAMPLED`] topics each.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::core::hub::TopicStat;
use crate::core::{Hub, Topic};
use crate::metrics::{self, TotalsSnapshot};

/// Samples a rate is taken over (one a second).
pub const WINDOW: usize = 5;
/// Topics whose counters each sample keeps (those with the most local
/// subscribers).
pub const TOPICS_SAMPLED: usize = 200;
/// Time between samples.
pub const PERIOD: Duration = Duration::from_secs(1);

struct Sample {
    at: Instant,
    totals: TotalsSnapshot,
    topics: Vec<(Topic, u64)>,
}

/// The last samples (see the module docs).
#[derive(Default)]
pub struct Rates {
    samples: Mutex<VecDeque<Sample>>,
}

/// Publish and delivery rates over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Throughput {
    /// Messages accepted per second.
    pub published_per_s: f64,
    /// Messages written to clients per second.
    pub delivered_per_s: f64,
    /// Seconds the rates cover (0 before two samples).
    pub window_s: f64,
}

impl Rates {
    /// Takes a sample now.
    pub fn sample(&self, hub: &Hub) {
        let topics = hub.top_topics(TOPICS_SAMPLED).into_iter().map(|t| (t.topic, t.messages)).collect();
        let sample = Sample { at: Instant::now(), totals: metrics::totals(), topics };
        let mut samples = self.samples.lock();
        samples.push_back(sample);
        while samples.len() > WINDOW + 1 {
            samples.pop_front();
        }
    }

    /// Rates between the oldest and the newest sample.
    pub fn throughput(&self) -> Throughput {
        let samples = self.samples.lock();
        let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
            return Throughput::default();
        };
        let secs = last.at.saturating_duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return Throughput::default();
        }
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        Throughput {
            published_per_s: per_s(first.totals.published, last.totals.published),
            delivered_per_s: per_s(first.totals.delivered, last.totals.delivered),
            window_s: secs,
        }
    }

    /// Messages per second of `stat`'s topic: from the oldest sample that
    /// has it to now; 0 when no sample has it yet.
    pub fn topic_rate(&self, stat: &TopicStat) -> f64 {
        let samples = self.samples.lock();
        let found = samples
            .iter()
            .find_map(|s| s.topics.iter().find(|(t, _)| *t == stat.topic).map(|(_, n)| (s.at, *n)));
        let Some((at, n)) = found else {
            return 0.0;
        };
        let secs = Instant::now().saturating_duration_since(at).as_secs_f64();
        if secs < 0.5 {
            return 0.0;
        }
        stat.messages.saturating_sub(n) as f64 / secs
    }
}

/// Samples `hub` into `rates` every [`PERIOD`] until `stop` is cancelled.
pub async fn run(rates: std::sync::Arc<Rates>, hub: Hub, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = tick.tick() => rates.sample(&hub),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rates_are_differences_over_the_window() {
        let rates = Rates::default();
        let hub = Hub::new();
        assert_eq!(rates.throughput(), Throughput::default());
        for _ in 0..(WINDOW + 3) {
            rates.sample(&hub);
            tokio::time::advance(PERIOD).await;
        }
        let t = rates.throughput();
        // Bounded to WINDOW + 1 samples: WINDOW seconds.
        assert!((t.window_s - WINDOW as f64).abs() < 1e-6, "{t:?}");
        assert_eq!(rates.samples.lock().len(), WINDOW + 1);
    }
}
