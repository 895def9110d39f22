//! Every metric name and label set, as small functions. Handles are
//! registered once and cached, so recording on the per-message path is an
//! atomic add: no allocation, no lock, no registry lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Transports, as metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTP API.
    Http,
    /// WebSocket.
    Ws,
    /// Server-Sent Events.
    Sse,
    /// HTTP long polling.
    Poll,
    /// gRPC (Subscribe and Connect streams, Publish).
    Grpc,
}

impl Transport {
    const ALL: [Transport; 5] =
        [Transport::Http, Transport::Ws, Transport::Sse, Transport::Poll, Transport::Grpc];

    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Grpc => "grpc",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process; later calls reuse it).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| match webhook_buckets(PrometheusBuilder::new()).install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .clone()
}

/// Buckets of `rtgate_webhook_delivery_seconds` (publish to 2xx: 5 ms to
/// an hour, retries included).
fn webhook_buckets(b: PrometheusBuilder) -> PrometheusBuilder {
    const WEBHOOK: [f64; 14] =
        [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 120.0, 600.0, 3600.0];
    let m = metrics_exporter_prometheus::Matcher::Full("rtgate_webhook_delivery_seconds".into());
    match b.set_buckets_for_metric(m, &WEBHOOK) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "webhook latency buckets not set");
            PrometheusBuilder::new()
        }
    }
}

/// The Prometheus text exposition: the recorder's metrics, then the
/// delivery latency histograms (kept outside the recorder, see
/// [`LatencyHistogram`]).
pub fn render() -> String {
    let mut out = HANDLE.get().and_then(|h| h.as_ref()).map(|h| h.render()).unwrap_or_default();
    out.push_str("# HELP rtgate_delivery_latency_seconds Time from a message's acceptance (or arrival from Redis) by this process to its write to a live subscriber.\n");
    out.push_str("# TYPE rtgate_delivery_latency_seconds histogram\n");
    for (t, h) in [Transport::Ws, Transport::Sse, Transport::Grpc].iter().zip(LATENCY.iter()) {
        h.render(&mut out, t.label());
    }
    out
}

/// Upper bounds of the latency buckets, in seconds (100 µs to 5 s).
const BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A fixed-bucket histogram of atomics: recording is a few relaxed atomic
/// adds, with no allocation and no lock, so it can sit on the per-delivery
/// path (the exporter's own histograms buffer samples).
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    const fn new() -> Self {
        LatencyHistogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, transport: &str) {
        use std::fmt::Write as _;
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(self.buckets.iter()) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "rtgate_delivery_latency_seconds_bucket{{transport=\"{transport}\",le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "rtgate_delivery_latency_seconds_bucket{{transport=\"{transport}\",le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "rtgate_delivery_latency_seconds_sum{{transport=\"{transport}\"}} {sum}");
        let _ = writeln!(out, "rtgate_delivery_latency_seconds_count{{transport=\"{transport}\"}} {count}");
    }
}

static LATENCY: [LatencyHistogram; 3] =
    [LatencyHistogram::new(), LatencyHistogram::new(), LatencyHistogram::new()];

/// Records the publish→deliver latency of one live delivery.
pub fn delivery_latency(t: Transport, d: Duration) {
    match t {
        Transport::Ws => LATENCY[0].record(d),
        Transport::Sse => LATENCY[1].record(d),
        Transport::Grpc => LATENCY[2].record(d),
        Transport::Http | Transport::Poll => {}
    }
}

/// Handles per transport, indexed by `Transport::index`.
struct PerTransport {
    connections: Gauge,
    connections_total: Counter,
    published: Counter,
    delivered: Counter,
    slow: Counter,
}

struct Handles {
    transports: Vec<PerTransport>,
    engine_errors: Counter,
    engine_ops: Vec<[Counter; 2]>,
    replays_recovered: Counter,
    replays_gap: Counter,
    replayed: Counter,
    tcp_open: Gauge,
    tcp_total: Counter,
    held_polls: Gauge,
    rejections: Vec<(&'static str, Counter)>,
}

/// Why a connection, stream or request was refused, as label values of
/// `rtgate_rejections_total` (registered with the other handles, so each
/// shows 0 until it happens). [`rejected`] also takes other reasons.
pub const REJECTION_REASONS: [&str; 9] = [
    "connect_rate_ip",
    "connect_rate_global",
    "connections_per_ip",
    "connections_per_user",
    "publish_rate",
    "topics_per_connection",
    "unauthenticated",
    "forbidden",
    "origin",
];

/// Engine operations, as metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineOp {
    /// Append a message.
    Publish,
    /// Read history.
    History,
    /// Read a topic's newest id.
    LastId,
    /// Start live delivery of a topic.
    Watch,
}

impl EngineOp {
    const ALL: [EngineOp; 4] = [EngineOp::Publish, EngineOp::History, EngineOp::LastId, EngineOp::Watch];

    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            EngineOp::Publish => "publish",
            EngineOp::History => "history",
            EngineOp::LastId => "last_id",
            EngineOp::Watch => "watch",
        }
    }
}

fn handles() -> &'static Handles {
    static H: OnceLock<Handles> = OnceLock::new();
    H.get_or_init(|| Handles {
        transports: Transport::ALL
            .iter()
            .map(|t| {
                let l = t.label();
                PerTransport {
                    connections: gauge!("rtgate_connections", "transport" => l),
                    connections_total: counter!("rtgate_connections_total", "transport" => l),
                    published: counter!("rtgate_messages_published_total", "transport" => l),
                    delivered: counter!("rtgate_messages_delivered_total", "transport" => l),
                    slow: counter!("rtgate_slow_consumer_disconnects_total", "transport" => l),
                }
            })
            .collect(),
        engine_errors: counter!("rtgate_engine_errors_total"),
        engine_ops: EngineOp::ALL
            .iter()
            .map(|op| {
                let l = op.label();
                [
                    counter!("rtgate_engine_operations_total", "op" => l, "outcome" => "ok"),
                    counter!("rtgate_engine_operations_total", "op" => l, "outcome" => "error"),
                ]
            })
            .collect(),
        replays_recovered: counter!("rtgate_replays_total", "outcome" => "recovered"),
        replays_gap: counter!("rtgate_replays_total", "outcome" => "gap"),
        replayed: counter!("rtgate_replayed_messages_total"),
        tcp_open: gauge!("rtgate_tcp_connections"),
        tcp_total: counter!("rtgate_tcp_connections_total"),
        held_polls: gauge!("rtgate_held_polls"),
        rejections: REJECTION_REASONS
            .iter()
            .map(|&r| (r, counter!("rtgate_rejections_total", "reason" => r)))
            .collect(),
    })
}

fn of(t: Transport) -> &'static PerTransport {
    &handles().transports[t.index()]
}

/// A long-lived connection (WebSocket, SSE stream) opened.
pub fn connection_opened(t: Transport) {
    of(t).connections.increment(1.0);
    of(t).connections_total.increment(1);
}

/// Running totals of this process that the admin API samples (the
/// recorder's handles cannot be read back): one relaxed add each where the
/// matching metric is recorded.
#[derive(Debug)]
struct Totals {
    published: AtomicU64,
    delivered: AtomicU64,
    slow: AtomicU64,
    kicked: AtomicU64,
}

static TOTALS: Totals = Totals {
    published: AtomicU64::new(0),
    delivered: AtomicU64::new(0),
    slow: AtomicU64::new(0),
    kicked: AtomicU64::new(0),
};

/// A reading of the process's running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TotalsSnapshot {
    /// Messages accepted (every transport).
    pub published: u64,
    /// Messages written to clients (every transport).
    pub delivered: u64,
    /// Connections closed as slow consumers.
    pub slow_consumer_closes: u64,
    /// Connections closed by an operator.
    pub kicked: u64,
}

/// The running totals now.
pub fn totals() -> TotalsSnapshot {
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    TotalsSnapshot {
        published: r(&TOTALS.published),
        delivered: r(&TOTALS.delivered),
        slow_consumer_closes: r(&TOTALS.slow),
        kicked: r(&TOTALS.kicked),
    }
}

/// A long-lived connection closed for `reason`.
pub fn connection_closed(t: Transport, reason: &'static str) {
    of(t).connections.decrement(1.0);
    if reason == "slow_consumer" {
        of(t).slow.increment(1);
        TOTALS.slow.fetch_add(1, Ordering::Relaxed);
    } else if reason == "kicked" {
        TOTALS.kicked.fetch_add(1, Ordering::Relaxed);
    }
    counter!("rtgate_connection_closes_total", "transport" => t.label(), "reason" => reason).increment(1);
}

/// A message was accepted from `t`.
pub fn published(t: Transport) {
    of(t).published.increment(1);
    TOTALS.published.fetch_add(1, Ordering::Relaxed);
}

/// An ephemeral message was published over `t`.
pub fn published_ephemeral(t: Transport) {
    metrics::counter!("rtgate_ephemeral_published_total", "transport" => t.label()).increment(1);
}

/// A `delivery = "latest"` subscriber of `t` was not sent `n` messages
/// (replaced by newer ones of their key).
pub fn skipped(t: Transport, n: u64) {
    metrics::counter!("rtgate_skipped_total", "transport" => t.label()).increment(n);
}

/// A `delivery = "drop"` subscriber of `t` was not sent a range of messages.
pub fn dropped_range(t: Transport) {
    metrics::counter!("rtgate_dropped_ranges_total", "transport" => t.label()).increment(1);
}

/// `n` messages were written to clients of `t`.
pub fn delivered(t: Transport, n: u64) {
    of(t).delivered.increment(n);
    TOTALS.delivered.fetch_add(n, Ordering::Relaxed);
}

/// `n` messages were written to WebSocket clients.
pub fn delivered_ws(n: u64) {
    delivered(Transport::Ws, n);
}

/// An engine failure seen outside a single operation (a reader or health
/// check losing its connection).
pub fn engine_error() {
    handles().engine_errors.increment(1);
}

/// One engine operation finished; failures also count as engine errors.
pub fn engine_op(op: EngineOp, ok: bool) {
    let i = EngineOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
    handles().engine_ops[i][usize::from(!ok)].increment(1);
    if !ok {
        handles().engine_errors.increment(1);
    }
}

/// A resume finished its replay: `messages` were replayed, and history
/// either reached back (`recovered`) or a gap was reported.
pub fn replay(recovered: bool, messages: u64) {
    let h = handles();
    if recovered { &h.replays_recovered } else { &h.replays_gap }.increment(1);
    h.replayed.increment(messages);
}

/// A TCP connection was accepted (`true`) or closed (`false`).
pub fn tcp_connection(open: bool) {
    if open {
        handles().tcp_open.increment(1.0);
        handles().tcp_total.increment(1);
    } else {
        handles().tcp_open.decrement(1.0);
    }
}

/// A TLS certificate reload (`[tls]`): `ok` when the new files are in use,
/// not when they were refused (the current certificate stays).
pub fn tls_reload(ok: bool) {
    counter!("rtgate_tls_reloads_total", "outcome" => if ok { "ok" } else { "error" }).increment(1);
}

/// A reload of the `auth.jwks_file` (file change or SIGHUP): `ok` when
/// the new keys are in use, `error` when the file was refused (the current
/// keys stay).
pub fn jwks_reload(ok: bool) {
    counter!("rtgate_jwks_reloads_total", "outcome" => if ok { "ok" } else { "error" }).increment(1);
}

/// A TLS handshake that failed (`timeout`: not done within
/// `http.handshake_timeout`; `error`: refused, e.g. plain HTTP or an
/// untrusted certificate on the client's side).
pub fn tls_handshake_failed(timeout: bool) {
    counter!("rtgate_tls_handshake_failures_total", "reason" => if timeout { "timeout" } else { "error" })
        .increment(1);
}

/// A long poll started (`true`) or stopped (`false`) waiting.
pub fn held_poll(held: bool) {
    if held {
        handles().held_polls.increment(1.0);
    } else {
        handles().held_polls.decrement(1.0);
    }
}

/// A connection, stream or request was refused for `reason` (one of
/// [`REJECTION_REASONS`], or another stable word: no client input).
pub fn rejected(reason: &'static str) {
    match handles().rejections.iter().find(|(r, _)| *r == reason) {
        Some((_, c)) => c.increment(1),
        None => counter!("rtgate_rejections_total", "reason" => reason).increment(1),
    }
}

/// Sets the hub gauges (at scrape time).
pub fn hub_sizes(topics: usize, subscriptions: usize) {
    gauge!("rtgate_topics").set(topics as f64);
    gauge!("rtgate_subscriptions").set(subscriptions as f64);
}

/// One Redis presence operation (`op`: apply, sweep, list, users): what
/// "Redis operations per connection per minute" is measured from.
pub fn presence_redis_op(op: &'static str) {
    counter!("rtgate_presence_redis_operations_total", "op" => op).increment(1);
}

/// A presence frame (`event`: join, leave, presence_diff, presence_count)
/// was queued to `n` local subscribers.
pub fn presence_events(event: &'static str, n: u64) {
    counter!("rtgate_presence_frames_total", "event" => event).increment(n);
}

/// Presence entries: the store's (embedded) or this process's live ones (Redis).
pub fn presence_entries(n: usize) {
    gauge!("rtgate_presence_entries").set(n as f64);
}
