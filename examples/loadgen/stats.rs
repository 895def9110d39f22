//! Counters the subscribers share, the per-subscriber sequence check and
//! latency histograms.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Counters shared by all subscriber tasks.
pub(crate) struct Shared {
    base: Instant,
    pub(crate) connected: AtomicU64,
    /// Connected subscribers per topic index.
    pub(crate) conn_by_topic: Vec<AtomicU64>,
    pub(crate) connect_failed: AtomicU64,
    pub(crate) closed_early: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dup: AtomicU64,
    pub(crate) gap_events: AtomicU64,
    pub(crate) gap_msgs: AtomicU64,
    pub(crate) foreign: AtomicU64,
    /// Gaps the server reported (SSE `event: gap`, poll `gaps`).
    pub(crate) srv_gaps: AtomicU64,
    /// Long polls whose request was sent and whose answer has not come yet.
    pub(crate) held: AtomicU64,
    /// Failed poll requests (retried with the same cursor).
    pub(crate) poll_errors: AtomicU64,
    pub(crate) last_delivery_ns: AtomicU64,
    pub(crate) lat_us: Mutex<Histogram<u64>>,
}

impl Shared {
    pub(crate) fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Runs one subscriber's connection attempt (15 s at most) and counts it
    /// as connected (on topic `topic_idx`) or failed, printing the first
    /// failures.
    pub(crate) async fn attempt<T>(
        &self,
        what: &str,
        topic_idx: usize,
        conn: impl Future<Output = Result<T, String>>,
    ) -> Option<T> {
        match tokio::time::timeout(Duration::from_secs(15), conn).await {
            Ok(Ok(c)) => {
                self.connected.fetch_add(1, Relaxed);
                if let Some(c) = self.conn_by_topic.get(topic_idx) {
                    c.fetch_add(1, Relaxed);
                }
                Some(c)
            }
            Ok(Err(e)) => {
                if self.connect_failed.fetch_add(1, Relaxed) < 3 {
                    eprintln!("{what} connect failed: {e}");
                }
                None
            }
            Err(_) => {
                self.connect_failed.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Counts a received data payload (JSON with seq, t, p) in `seqs`, or a foreign frame.
    pub(crate) fn payload(&self, seqs: &mut SeqCheck, now: u64, m: Option<(u64, u64, usize)>) {
        match m {
            Some(m) => seqs.record(self, now, m),
            None => {
                self.foreign.fetch_add(1, Relaxed);
            }
        }
    }
}

pub(crate) fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

pub(crate) fn new_shared(topics: usize) -> Arc<Shared> {
    Arc::new(Shared {
        base: Instant::now(),
        connected: AtomicU64::new(0),
        conn_by_topic: (0..topics.max(1)).map(|_| AtomicU64::new(0)).collect(),
        connect_failed: AtomicU64::new(0),
        closed_early: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        dup: AtomicU64::new(0),
        gap_events: AtomicU64::new(0),
        gap_msgs: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        srv_gaps: AtomicU64::new(0),
        held: AtomicU64::new(0),
        poll_errors: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        lat_us: Mutex::new(hist()),
    })
}

/// One subscriber's sequence check: the next expected sequence number per
/// publisher (each publisher numbers each topic 0, 1, ...).
#[derive(Default)]
pub(crate) struct SeqCheck {
    next: Vec<u64>,
}

impl SeqCheck {
    /// Counts one delivery of (seq, t, publisher) received at `now`.
    fn record(&mut self, sh: &Shared, now: u64, (seq, t, p): (u64, u64, usize)) {
        sh.delivered.fetch_add(1, Relaxed);
        sh.last_delivery_ns.fetch_max(now, Relaxed);
        if let Ok(mut h) = sh.lat_us.lock() {
            h.saturating_record(now.saturating_sub(t) / 1000);
        }
        if p >= self.next.len() {
            self.next.resize(p + 1, 0);
        }
        let next = &mut self.next[p];
        if seq == *next {
            *next += 1;
        } else if seq > *next {
            sh.gap_events.fetch_add(1, Relaxed);
            sh.gap_msgs.fetch_add(seq - *next, Relaxed);
            *next = seq + 1;
        } else {
            sh.dup.fetch_add(1, Relaxed);
        }
    }
}

pub(crate) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub(crate) fn per_msg_us(cpu_s: Option<f64>, msgs: u64) -> Option<f64> {
    cpu_s.filter(|_| msgs > 0).map(|c| c * 1e6 / msgs as f64)
}
