//! `/metrics` scraped and parsed (`prometheus-parse`), with the names and
//! labels the tests read; for an in-process [`TestServer`] and a real
//! binary ([`Gateway`]).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use prometheus_parse::{HistogramCount, Scrape, Value as PromValue};
use tokio::time::Instant;

use super::binary::Gateway;
use super::{TestServer, WAIT};

/// A parsed scrape (and its text, for failure messages).
pub struct Metrics {
    pub scrape: Scrape,
    pub text: String,
}

/// One scrape of `url` (a `/metrics` endpoint): asserts a 200 with a
/// `text/plain` exposition and parses it.
pub async fn scrape(http: &reqwest::Client, url: &str) -> Metrics {
    let res =
        tokio::time::timeout(WAIT, http.get(url).send()).await.expect("metrics timed out").expect("metrics");
    assert_eq!(res.status().as_u16(), 200);
    let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert!(ct.as_deref().is_some_and(|c| c.starts_with("text/plain")), "content-type {ct:?}");
    let text = res.text().await.expect("metrics body");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("prometheus text");
    Metrics { scrape, text }
}

impl TestServer {
    /// One scrape of this server's `/metrics`, parsed.
    pub async fn scrape(&self) -> Metrics {
        scrape(&self.http, &self.url("/metrics")).await
    }

    /// Scrapes until `done` holds (bounded); returns that scrape. (The
    /// recorder is per process: only for series no other test of the same
    /// binary moves.)
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
        wait_for(&self.http, &self.url("/metrics"), what, done).await
    }
}

impl Gateway {
    /// One scrape of this process's `/metrics`, parsed.
    pub async fn scrape(&self) -> Metrics {
        scrape(&self.http, &self.url("/metrics")).await
    }

    /// Scrapes until `done` holds (bounded); returns that scrape.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
        wait_for(&self.http, &self.url("/metrics"), what, done).await
    }
}

/// Scrapes `url` until `done` holds (bounded); returns that scrape.
pub async fn wait_for(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    done: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = scrape(http, url).await;
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last scrape:\n{}", m.text);
        tokio::time::sleep(Duration::from_millis(20)).await; // polling /metrics, bounded
    }
}

fn labels_match(l: &prometheus_parse::Labels, want: &[(&str, &str)]) -> bool {
    l.len() == want.len() && want.iter().all(|(k, v)| l.get(k) == Some(*v))
}

impl Metrics {
    /// The value of the counter, gauge or untyped sample `name{labels}`
    /// (labels matched exactly), if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels_match(&s.labels, labels))
            .map(|s| match s.value {
                PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
                ref other => panic!("{name}{labels:?}: not a scalar: {other:?}"),
            })
            .collect();
        assert!(found.len() <= 1, "{name}{labels:?} appears {} times:\n{}", found.len(), self.text);
        found.first().copied()
    }

    /// Like `get`, with an absent series (a counter not touched yet) as 0.
    pub fn v(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// A series that must be present.
    pub fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing:\n{}", self.text))
    }

    /// A counter that must be present and typed `counter`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let s = self.scrape.samples.iter().find(|s| s.metric == name && labels_match(&s.labels, labels));
        match s.map(|s| &s.value) {
            Some(PromValue::Counter(v)) => *v,
            other => panic!("{name}{labels:?}: expected a counter, got {other:?}:\n{}", self.text),
        }
    }

    /// A gauge that must be present and typed `gauge`.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let s = self.scrape.samples.iter().find(|s| s.metric == name && labels_match(&s.labels, labels));
        match s.map(|s| &s.value) {
            Some(PromValue::Gauge(v)) => *v,
            other => panic!("{name}{labels:?}: expected a gauge, got {other:?}:\n{}", self.text),
        }
    }

    /// The buckets of histogram `name{labels}` (without `le`), in exposition order.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<HistogramCount> {
        let found: Vec<&Vec<HistogramCount>> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels_match(&s.labels, labels))
            .filter_map(|s| match &s.value {
                PromValue::Histogram(h) => Some(h),
                _ => None,
            })
            .collect();
        assert_eq!(found.len(), 1, "histogram {name}{labels:?}:\n{}", self.text);
        found[0].clone()
    }

    /// Checks the histogram's shape (ascending bounds, cumulative monotone
    /// counts, `+Inf` last and equal to `_count`) and returns `_count`.
    pub fn latency_count(&self, transport: &str) -> f64 {
        let name = "rtgate_delivery_latency_seconds";
        let l = [("transport", transport)];
        let buckets = self.histogram(name, &l);
        assert!(buckets.len() >= 2, "{name}{{transport={transport}}}: {buckets:?}");
        for w in buckets.windows(2) {
            assert!(w[0].less_than < w[1].less_than, "{transport}: bucket bounds not ascending: {buckets:?}");
            assert!(w[0].count <= w[1].count, "{transport}: buckets not cumulative: {buckets:?}");
        }
        let last = buckets.last().unwrap();
        assert!(last.less_than.is_infinite() && last.less_than > 0.0, "{transport}: last bucket {last:?}");
        let count = self.must(&format!("{name}_count"), &l);
        let sum = self.must(&format!("{name}_sum"), &l);
        assert_eq!(last.count, count, "{transport}: +Inf bucket != _count");
        assert!(sum >= 0.0 && sum.is_finite(), "{transport}: _sum {sum}");
        if count == 0.0 {
            assert_eq!(sum, 0.0, "{transport}: _sum without observations");
        }
        count
    }

    pub fn published(&self, t: &str) -> f64 {
        self.v("rtgate_messages_published_total", &[("transport", t)])
    }

    pub fn delivered(&self, t: &str) -> f64 {
        self.v("rtgate_messages_delivered_total", &[("transport", t)])
    }

    pub fn publish_ops_ok(&self) -> f64 {
        self.v("rtgate_engine_operations_total", &[("op", "publish"), ("outcome", "ok")])
    }

    pub fn connections(&self, t: &str) -> f64 {
        self.gauge("rtgate_connections", &[("transport", t)])
    }

    pub fn connections_total(&self, t: &str) -> f64 {
        self.v("rtgate_connections_total", &[("transport", t)])
    }

    pub fn closes(&self, t: &str, reason: &str) -> f64 {
        self.v("rtgate_connection_closes_total", &[("transport", t), ("reason", reason)])
    }

    pub fn slow(&self, t: &str) -> f64 {
        self.v("rtgate_slow_consumer_disconnects_total", &[("transport", t)])
    }

    pub fn topics(&self) -> f64 {
        self.gauge("rtgate_topics", &[])
    }

    pub fn subscriptions(&self) -> f64 {
        self.gauge("rtgate_subscriptions", &[])
    }
}
