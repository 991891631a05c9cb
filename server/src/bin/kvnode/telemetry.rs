//! Where `kvnode`'s spans and events go: log lines on stdout (`--log-format`,
//! filtered by `KVNODE_LOG`) and, when built with the `otel` feature and
//! given `--otel-endpoint`, every span exported over OTLP/HTTP (protobuf) to
//! a collector (Jaeger, Tempo, the OpenTelemetry Collector...).
//!
//! The exporter batches spans on the SDK's own thread with a blocking HTTP
//! client, so a slow or absent collector costs the runtime nothing: a full
//! batch queue drops spans rather than hold requests up. The guard flushes
//! what is queued when the process ends.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// tracing's human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `fields` (the
    /// message and the event's fields), `target`, `span` (the innermost
    /// span, e.g. `{"name": "request", "id": ".."}`) and `spans`.
    Json,
}

/// Flushes exported spans when dropped.
pub(crate) struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("kvnode: flushing spans to the OpenTelemetry collector: {e}");
            }
        }
    }
}

/// Installs the global subscriber; `otel_endpoint` is the collector's OTLP/HTTP
/// traces URL (e.g. `http://127.0.0.1:4318/v1/traces`), used as given.
pub(crate) fn init(format: LogFormat, otel_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env("KVNODE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let subscriber = Registry::default().with(logs);
    #[cfg(feature = "otel")]
    {
        let provider = otel_endpoint.map(otel::provider).transpose()?;
        let spans = provider.as_ref().map(|p| {
            use opentelemetry::trace::TracerProvider as _;
            tracing_opentelemetry::layer().with_tracer(p.tracer("kvnode"))
        });
        subscriber.with(spans).with(filter).init();
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otel"))]
    {
        if otel_endpoint.is_some() {
            anyhow::bail!("--otel-endpoint needs kvnode built with `--features otel`");
        }
        subscriber.with(filter).init();
        Ok(Telemetry {})
    }
}

#[cfg(feature = "otel")]
mod otel {
    use anyhow::Context;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;

    /// Span export to `endpoint`, batched, as service `kvnode`.
    pub(super) fn provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(std::time::Duration::from_secs(5))
            .build()
            .with_context(|| format!("the OTLP exporter to {endpoint}"))?;
        let resource = Resource::builder()
            .with_service_name("kvnode")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build())
    }
}
