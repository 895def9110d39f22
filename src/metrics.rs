//! Every metric name and label set, as small functions. Handles are
//! registered once and cached, so recording on the per-message path is an
//! atomic add: no allocation, no lock, no registry lookup.

use std::sync::OnceLock;

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
}

impl Transport {
    const ALL: [Transport; 4] = [Transport::Http, Transport::Ws, Transport::Sse, Transport::Poll];

    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
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
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .clone()
}

/// The Prometheus text exposition.
pub fn render() -> String {
    HANDLE.get().and_then(|h| h.as_ref()).map(|h| h.render()).unwrap_or_default()
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

/// A long-lived connection closed for `reason`.
pub fn connection_closed(t: Transport, reason: &'static str) {
    of(t).connections.decrement(1.0);
    if reason == "slow_consumer" {
        of(t).slow.increment(1);
    }
    counter!("rtgate_connection_closes_total", "transport" => t.label(), "reason" => reason).increment(1);
}

/// A message was accepted from `t`.
pub fn published(t: Transport) {
    of(t).published.increment(1);
}

/// `n` messages were written to clients of `t`.
pub fn delivered(t: Transport, n: u64) {
    of(t).delivered.increment(n);
}

/// `n` messages were written to WebSocket clients.
pub fn delivered_ws(n: u64) {
    delivered(Transport::Ws, n);
}

/// An engine operation failed.
pub fn engine_error() {
    handles().engine_errors.increment(1);
}
