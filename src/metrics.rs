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
}

impl Transport {
    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
        }
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
    HANDLE
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default()
}

struct Handles {
    ws_connections: Gauge,
    ws_connections_total: Counter,
    published_http: Counter,
    published_ws: Counter,
    delivered_ws: Counter,
    slow_ws: Counter,
    engine_errors: Counter,
}

fn handles() -> &'static Handles {
    static H: OnceLock<Handles> = OnceLock::new();
    H.get_or_init(|| Handles {
        ws_connections: gauge!("rtgate_connections", "transport" => "ws"),
        ws_connections_total: counter!("rtgate_connections_total", "transport" => "ws"),
        published_http: counter!("rtgate_messages_published_total", "transport" => "http"),
        published_ws: counter!("rtgate_messages_published_total", "transport" => "ws"),
        delivered_ws: counter!("rtgate_messages_delivered_total", "transport" => "ws"),
        slow_ws: counter!("rtgate_slow_consumer_disconnects_total", "transport" => "ws"),
        engine_errors: counter!("rtgate_engine_errors_total"),
    })
}

/// A connection opened.
pub fn connection_opened(t: Transport) {
    if t == Transport::Ws {
        handles().ws_connections.increment(1.0);
        handles().ws_connections_total.increment(1);
    }
}

/// A connection closed for `reason`.
pub fn connection_closed(t: Transport, reason: &'static str) {
    if t == Transport::Ws {
        handles().ws_connections.decrement(1.0);
        if reason == "slow_consumer" {
            handles().slow_ws.increment(1);
        }
    }
    counter!("rtgate_connection_closes_total", "transport" => t.label(), "reason" => reason)
        .increment(1);
}

/// A message was accepted from `t`.
pub fn published(t: Transport) {
    match t {
        Transport::Http => handles().published_http.increment(1),
        Transport::Ws => handles().published_ws.increment(1),
    }
}

/// `n` messages were written to WebSocket clients.
pub fn delivered_ws(n: u64) {
    handles().delivered_ws.increment(n);
}

/// An engine operation failed.
pub fn engine_error() {
    handles().engine_errors.increment(1);
}
