//! Log subscriber setup: human-readable or JSON lines, `RUST_LOG` filtering,
//! and (cargo feature `otlp`, config `log.otlp_endpoint`) OpenTelemetry
//! export of spans over OTLP/HTTP.

use thiserror::Error;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// Telemetry that could not be set up.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// `log.otlp_endpoint` is set but the binary was built without `otlp`.
    #[error("log.otlp_endpoint is set but rtgate was built without the `otlp` feature (cargo build --features otlp)")]
    OtlpNotBuilt,
    /// The OTLP exporter could not be built.
    #[error("cannot set up OTLP export: {0}")]
    Otlp(String),
}

/// Keeps the span exporter alive; dropping it flushes pending spans.
#[derive(Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global tracing subscriber; `RUST_LOG` overrides
/// `log.level`. A second call (tests) leaves the first one in place.
pub fn init(log: &LogConfig) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: piped logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = match log.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).boxed(),
    };
    let mut telemetry = Telemetry::default();
    let otel = otel_layer(log, &mut telemetry)?;
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    Ok(telemetry)
}

#[cfg(feature = "otlp")]
fn otel_layer<S>(
    log: &LogConfig,
    telemetry: &mut Telemetry,
) -> Result<Option<Box<dyn Layer<S> + Send + Sync>>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    let Some(endpoint) = log.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else { return Ok(None) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("rtgate").build())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("rtgate")).boxed();
    telemetry.provider = Some(provider);
    Ok(Some(layer))
}

#[cfg(not(feature = "otlp"))]
fn otel_layer<S>(
    log: &LogConfig,
    _telemetry: &mut Telemetry,
) -> Result<Option<Box<dyn Layer<S> + Send + Sync>>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    match log.otlp_endpoint.as_deref() {
        Some(e) if !e.is_empty() => Err(TelemetryError::OtlpNotBuilt),
        _ => Ok(None),
    }
}
