//! Logs and traces of both binaries. Logs go to stderr, filtered by `RUST_LOG`. Traces are off
//! unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: then
//! spans of aether's own code at level `info` (whatever `RUST_LOG` says) go to that OTLP receiver
//! over HTTP/protobuf, sampled as `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` say (default:
//! every trace, or as its parent was), named `OTEL_SERVICE_NAME` (default: the binary's name), with
//! `OTEL_RESOURCE_ATTRIBUTES` as resource attributes. Trace context crosses processes as a W3C
//! `traceparent` ([`traceparent`] and [`follow`]).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// W3C trace context header (NATS headers, HTTP headers, stored sends).
pub const TRACEPARENT: &str = "traceparent";

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: code that makes a span only for the trace asks first.
#[must_use]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Flushes the spans not exported yet when dropped (at the process's end).
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is left, off the runtime's workers (the exporter runs on them).
    pub async fn finish(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("traces: {e}");
        }
    }
}

/// Logs to stderr (JSON lines with `json`) filtered by `RUST_LOG` (default `info`), and traces when
/// an OTLP endpoint is set; `service` names the process in traces unless `OTEL_SERVICE_NAME` does.
/// Must run inside the tokio runtime (the exporter's batches are sent from it). An endpoint that
/// does not build an exporter is said on stderr and traces stay off.
#[must_use]
pub fn init(json: bool, service: &str) -> Telemetry {
    // async-nats logs every failed connection attempt as an error; the processes say once why they
    // cannot connect (and /readyz says it), so its connector is quiet unless RUST_LOG names it.
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("async_nats") {
        spec
    } else {
        format!("{spec},async_nats::connector=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats::connector=off"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let provider = exporter(service);
    let traces = provider.as_ref().map(|p| {
        let ours = tracing_subscriber::filter::Targets::new()
            .with_target("aether_node", tracing::Level::INFO)
            .with_target("aether_operator", tracing::Level::INFO)
            .with_target("aether_nats", tracing::Level::INFO);
        // Only what a span says of itself: no source location, thread, level or target
        // attributes and no busy/idle timing (each costs on every span or every poll).
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("aether"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(ours)
    });
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        ON.store(true, Ordering::Relaxed);
    }
    tracing_subscriber::registry().with(fmt).with(traces).init();
    Telemetry { provider }
}

fn exporter(service: &str) -> Option<SdkTracerProvider> {
    let set = |v: &str| std::env::var(v).is_ok_and(|e| !e.is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("traces off: the OTLP exporter did not build: {e}");
            return None;
        }
    };
    let batches =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_resource(resource)
            .build(),
    )
}

/// The W3C `traceparent` of `span`, when traces are on and it is sampled or recording.
#[must_use]
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// A span made by `make` as a child of `traceparent` (see [`follow`]) when traces are on; no span
/// otherwise (spans made only for the trace cost nothing with traces off).
pub fn child_of(parent: Option<&str>, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = make();
    follow(&span, parent);
    span
}

/// The `traceparent` among NATS message headers.
#[must_use]
pub fn parent_in(headers: Option<&async_nats::HeaderMap>) -> Option<&str> {
    headers
        .and_then(|h| h.get(TRACEPARENT))
        .map(async_nats::HeaderValue::as_str)
}

/// Puts `traceparent` (when there is one) among NATS message headers.
pub fn put(headers: &mut async_nats::HeaderMap, traceparent: Option<String>) {
    if let Some(tp) = traceparent {
        headers.insert(TRACEPARENT, tp.as_str());
    }
}

/// Makes `span` a child of the span `traceparent` names (another process's, or a stored one).
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent.filter(|_| enabled()) else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), tp.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}
