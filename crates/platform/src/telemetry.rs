//! Logs, traces and metrics: `tracing` with the trace and span ids in every log line, spans
//! exported over OTLP when an endpoint is configured, W3C trace context propagated on every hop,
//! and one Prometheus recorder for the process.
use std::{
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, SpanExporter},
};
use tracing::{Event, Subscriber, dispatcher::WeakDispatch, field::Visit};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer as _,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer, writer::BoxMakeWriter},
    layer::SubscriberExt,
    registry::LookupSpan,
};

use crate::config::{Config, LogFormat};

/// Histogram buckets (seconds) for request and call durations: 100 µs to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Lags that reach from instant to hours (a webhook retried from the dead-letter queue waits 30 s
/// to 1 h between tries).
const LAG_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Keeps the tracer provider alive; flushes pending spans when shut down.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops span export.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {e}");
        }
        crate::logwriter::flush_stdout();
    }
}

static ACCESS_LOG: std::sync::OnceLock<crate::config::AccessLog> = std::sync::OnceLock::new();

/// Sets the process's access-log policy, once (telemetry's init does it from the configuration;
/// a test binary may before its first request).
pub fn set_access_log(policy: crate::config::AccessLog) {
    let _ = ACCESS_LOG.set(policy);
}
static ACCESS_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether this request gets an access-log line (`THALI_ACCESS_LOG`; every request until the
/// process's telemetry says otherwise). `error`: it was answered with an error status.
pub fn access_line_wanted(error: bool) -> bool {
    let policy = ACCESS_LOG.get().copied().unwrap_or(crate::config::AccessLog::All);
    let seen = match policy {
        crate::config::AccessLog::Sampled(_) if !error => {
            ACCESS_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        }
        _ => 0,
    };
    access_decision(policy, error, seen)
}

/// [`access_line_wanted`] for the `seen`-th request that was not an error (from 0).
pub fn access_decision(policy: crate::config::AccessLog, error: bool, seen: u64) -> bool {
    match policy {
        crate::config::AccessLog::All => true,
        crate::config::AccessLog::Errors => error,
        crate::config::AccessLog::Sampled(n) => error || seen.is_multiple_of(u64::from(n)),
    }
}

/// The sampler of new traces: a trace begun by a caller keeps the caller's decision; one begun
/// here is kept with probability `ratio`.
pub fn sampler(ratio: f64) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler;
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

/// Sets up logging, tracing and metrics for this process from the configuration.
pub fn init(cfg: &Config, service_name: &str) -> anyhow::Result<Telemetry> {
    set_access_log(cfg.access_log());
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler(cfg.trace_sample_ratio))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        );
    if let Some(endpoint) = &cfg.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    use std::io::IsTerminal;
    let format = cfg.log_format.resolve(std::io::stdout().is_terminal());
    install(builder.build(), &cfg.log, format)
}

/// Like [`init`], but spans go to the given exporter as they end (tests read them back).
pub fn init_with_exporter<E: SpanExporter + 'static>(exporter: E, filter: &str) -> anyhow::Result<Telemetry> {
    init_with_exporter_and_writer(exporter, filter, BoxMakeWriter::new(std::io::stdout), 1.0)
}

/// Like [`init_with_exporter`], with log lines written to `writer` (a test reads what a process
/// would have logged).
pub fn init_with_exporter_and_writer<E: SpanExporter + 'static>(
    exporter: E,
    filter: &str,
    writer: BoxMakeWriter,
    sample_ratio: f64,
) -> anyhow::Result<Telemetry> {
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler(sample_ratio))
        .with_simple_exporter(exporter)
        .build();
    install_to(provider, filter, LogFormat::Pretty, writer)
}

fn install(provider: SdkTracerProvider, filter: &str, format: LogFormat) -> anyhow::Result<Telemetry> {
    // A slow terminal or pipe never stalls a request (crate::logwriter).
    install_to(provider, filter, format, BoxMakeWriter::new(crate::logwriter::stdout()))
}

fn install_to(
    provider: SdkTracerProvider,
    filter: &str,
    format: LogFormat,
    writer: BoxMakeWriter,
) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    // Spans are traced at INFO whatever the log filter says, so a quiet log level never loses
    // trace ids (in problem answers, propagation, exported traces).
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("thali"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let line = LogLine::new(format);
    let dispatch_cell = line.dispatch.clone();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .event_format(line)
        .with_filter(EnvFilter::try_new(filter)?);
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(otel).with(fmt));
    let _ = dispatch_cell.set(dispatch.downgrade());
    tracing::dispatcher::set_global_default(dispatch)?;
    metrics_handle();
    Ok(Telemetry { provider })
}

/// Whether a gRPC status code says the server failed (the codes alert RpcErrorRate counts, and
/// Unimplemented and DataLoss): such a call's span gets the OpenTelemetry status ERROR, which
/// the collector's tail sampling keeps. Client mistakes (InvalidArgument, NotFound, …) do not.
pub fn is_server_fault(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    )
}

/// The process-wide Prometheus recorder; installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(DURATION_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("webhook_processing_lag_seconds".into()),
                    LAG_BUCKETS,
                )
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("the Prometheus recorder is installed once, here");
            let upkeep = handle.clone();
            // Histograms keep raw samples until upkeep folds them into buckets.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

/// Trace id of the current span, as 32 hex digits; empty when there is no trace.
pub fn current_trace_id() -> String {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Reads the W3C trace context out of HTTP headers (facade and gRPC server side).
pub fn extract_context(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the current span's W3C trace context into HTTP headers (gRPC client side).
pub fn inject_context(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// One log line with the event's fields plus the trace and span ids of the current span.
struct LogLine {
    format: LogFormat,
    /// The dispatcher this formatter belongs to, to read the OpenTelemetry context of a span
    /// (tracing refuses re-entrant `Span::current()` lookups while it dispatches an event).
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl LogLine {
    fn new(format: LogFormat) -> Self {
        Self {
            format,
            dispatch: Arc::default(),
        }
    }

    /// Trace and span ids of the span the event belongs to, or empty strings.
    fn ids<S>(&self, ctx: &FmtContext<'_, S, impl for<'a> FormatFields<'a> + 'static>) -> (String, String)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let span_id = match ctx.parent_span() {
            Some(span) => span.id(),
            None => return (String::new(), String::new()),
        };
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return (String::new(), String::new());
        };
        match tracing_opentelemetry::get_otel_context(&span_id, &dispatch) {
            Some(cx) => {
                let span = cx.span();
                let sc = span.span_context();
                if sc.is_valid() {
                    (sc.trace_id().to_string(), sc.span_id().to_string())
                } else {
                    (String::new(), String::new())
                }
            }
            None => (String::new(), String::new()),
        }
    }
}

impl<S, N> FormatEvent<S, N> for LogLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = FieldMap::default();
        event.record(&mut fields);
        // Fields of the enclosing spans (route, rpc method, request id…) belong to the line too.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(stored) = span.extensions().get::<tracing_subscriber::fmt::FormattedFields<N>>()
                    && !stored.fields.is_empty()
                {
                    fields.spans.push(format!("{}{{{}}}", span.name(), stored.fields));
                }
            }
        }
        let (trace_id, span_id) = self.ids(ctx);
        let meta = event.metadata();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        match self.format {
            LogFormat::Json => {
                let mut line = serde_json::Map::new();
                line.insert("timestamp".into(), now.into());
                line.insert("level".into(), meta.level().as_str().into());
                line.insert("target".into(), meta.target().into());
                line.insert("message".into(), fields.message.into());
                line.insert("trace_id".into(), trace_id.into());
                line.insert("span_id".into(), span_id.into());
                if !fields.spans.is_empty() {
                    line.insert("spans".into(), fields.spans.join(" ").into());
                }
                for (k, v) in fields.values {
                    line.insert(k, v);
                }
                writeln!(writer, "{}", serde_json::Value::Object(line))
            }
            LogFormat::Pretty | LogFormat::Auto => {
                write!(
                    writer,
                    "{now} {:>5} {}: {}",
                    meta.level(),
                    meta.target(),
                    fields.message
                )?;
                for (k, v) in &fields.values {
                    match v {
                        serde_json::Value::String(text) => write!(writer, " {k}={text}")?,
                        other => write!(writer, " {k}={other}")?,
                    }
                }
                if !fields.spans.is_empty() {
                    write!(writer, " [{}]", fields.spans.join(" "))?;
                }
                if !trace_id.is_empty() {
                    write!(writer, " trace_id={trace_id} span_id={span_id}")?;
                }
                writeln!(writer)
            }
        }
    }
}

#[derive(Default)]
struct FieldMap {
    message: String,
    values: Vec<(String, serde_json::Value)>,
    spans: Vec<String>,
}

impl FieldMap {
    fn push(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        self.values.push((field.name().to_owned(), value));
    }
}

impl Visit for FieldMap {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.push(field, value.into());
        }
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.push(field, value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.push(field, value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.push(field, value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.push(field, value.into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.push(field, format!("{value:?}").into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CapturedWriter;

    #[test]
    fn every_json_log_line_carries_trace_and_span_ids() {
        let provider = SdkTracerProvider::builder().build();
        let out = CapturedWriter::default();
        let writer = out.clone();
        let line = LogLine::new(LogFormat::Json);
        let cell = line.dispatch.clone();
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .event_format(line)
                        .with_writer(move || writer.clone()),
                ),
        );
        let _ = cell.set(dispatch.downgrade());
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("http.server", route = "/api/v1/store/{username}");
            span.in_scope(|| tracing::info!(status = 200, "request"));
        });
        let text = out.text();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["message"], "request");
        assert_eq!(line["status"], 200);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["trace_id"].as_str().unwrap().len(), 32, "{line}");
        assert_eq!(line["span_id"].as_str().unwrap().len(), 16, "{line}");
        assert!(line["spans"].as_str().unwrap().contains("route"), "{line}");
    }

    #[test]
    fn server_faults_are_errors_and_client_mistakes_are_not() {
        for code in [
            tonic::Code::Internal,
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
        ] {
            assert!(is_server_fault(code), "{code:?}");
        }
        for code in [
            tonic::Code::Ok,
            tonic::Code::NotFound,
            tonic::Code::InvalidArgument,
            tonic::Code::PermissionDenied,
            tonic::Code::FailedPrecondition,
        ] {
            assert!(!is_server_fault(code), "{code:?}");
        }
    }

    #[test]
    fn traceparent_round_trips_through_headers() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let cx = extract_context(&headers);
        let span = cx.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(span.span_context().is_remote());
    }

    #[test]
    fn access_modes_keep_every_error_and_what_they_say_of_the_rest() {
        use crate::config::AccessLog;
        let kept = |policy, error| (0..1000).filter(|seen| access_decision(policy, error, *seen)).count();
        assert_eq!(kept(AccessLog::All, false), 1000);
        assert_eq!(kept(AccessLog::Errors, false), 0);
        assert_eq!(kept(AccessLog::Errors, true), 1000);
        assert_eq!(kept(AccessLog::Sampled(100), false), 10);
        assert_eq!(kept(AccessLog::Sampled(100), true), 1000);
        assert_eq!(kept(AccessLog::Sampled(1), false), 1000);
    }

    #[test]
    fn a_sampled_out_request_still_has_a_trace_id_and_passes_its_context_on() {
        use opentelemetry::trace::TracerProvider as _;
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        // Nothing new is kept; a caller's decision is followed.
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler(0.0))
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            // A request that starts a trace here: not sampled, yet it has ids to log and passes
            // them on (flags 00) so the next hop joins the same trace.
            let span = tracing::info_span!("http.server");
            let (trace_id, sent) = span.in_scope(|| {
                let mut headers = http::HeaderMap::new();
                inject_context(&mut headers);
                (current_trace_id(), headers)
            });
            assert_eq!(trace_id.len(), 32, "an unsampled request still has a trace id to log");
            let traceparent = sent
                .get("traceparent")
                .expect("propagated")
                .to_str()
                .unwrap()
                .to_owned();
            assert!(traceparent.contains(&trace_id), "{traceparent}");
            assert!(traceparent.ends_with("-00"), "not sampled: {traceparent}");
            drop(span);
            // A caller that sampled its trace is followed, whatever our own ratio says.
            let mut incoming = http::HeaderMap::new();
            incoming.insert(
                "traceparent",
                http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            let span = tracing::info_span!("grpc.server");
            let _ = span.set_parent(extract_context(&incoming));
            let sent = span.in_scope(|| {
                let mut headers = http::HeaderMap::new();
                inject_context(&mut headers);
                headers
            });
            let traceparent = sent.get("traceparent").unwrap().to_str().unwrap().to_owned();
            assert!(
                traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{traceparent}"
            );
            assert!(traceparent.ends_with("-01"), "the caller sampled it: {traceparent}");
            drop(span);
        });
        let _ = provider.force_flush();
        let kept = exporter.get_finished_spans().unwrap();
        assert_eq!(kept.len(), 1, "only the span of the sampled trace is exported");
        assert_eq!(
            kept[0].span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
