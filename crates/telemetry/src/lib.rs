//! Telemetry for Warden services: structured logs, traces and metrics.
//!
//! - Logs are `tracing` events, printed as human-readable lines or JSON.
//! - Traces are exported over OTLP when an endpoint is configured (off by
//!   default, and silent when no collector listens).
//! - W3C trace context is read from incoming gRPC metadata
//!   ([`grpc_request_span`]) and written to outgoing metadata
//!   ([`TraceContextInterceptor`]).
//! - Metrics live in the process-wide Prometheus registry and are served as
//!   text on an HTTP `/metrics` listener ([`serve_metrics`]).
//!
//! This crate knows no service; services register their own metrics.

use std::net::SocketAddr;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use prometheus;

/// How log lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// The `[telemetry]` section every service's config embeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `warden=debug,info`.
    pub log_level: String,
    /// OTLP/gRPC collector endpoint, e.g. `http://127.0.0.1:4317`; empty
    /// disables trace export.
    pub otlp_endpoint: String,
    /// Log to stderr instead of stdout (a process whose stdout is a
    /// protocol: the MCP gateway's stdio mode).
    pub log_to_stderr: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            otlp_endpoint: String::new(),
            log_to_stderr: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log_level {0:?}: {1}")]
    Filter(String, String),
    #[error("cannot build the OTLP exporter for {0:?}: {1}")]
    Otlp(String, String),
    #[error("cannot bind the metrics listener on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("invalid metrics_listen {0:?}: expected HOST:PORT with a numeric IP")]
    Addr(String),
}

/// Keeps the trace pipeline alive; flushes spans when dropped.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. Calling it again (as tests do) leaves the
/// first subscriber in place and returns an empty guard.
pub fn init(service_name: &'static str, config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    // The OpenTelemetry SDK reports export failures through `tracing`; keep
    // those quiet so an absent collector does not flood the logs.
    let directive = format!("{},opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off", config.log_level);
    let filter = EnvFilter::try_new(&directive)
        .map_err(|error| TelemetryError::Filter(config.log_level.clone(), error.to_string()))?;

    install_propagator();
    let mut guard = TelemetryGuard::default();
    let otel_layer = if config.otlp_endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .build()
            .map_err(|error| TelemetryError::Otlp(config.otlp_endpoint.clone(), error.to_string()))?;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service_name).build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let tracer = provider.tracer(service_name);
        guard.provider = Some(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    };

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let writer = if config.log_to_stderr {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout)
    };
    let terminal = if config.log_to_stderr {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
    } else {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    };
    let result = match config.log_format {
        LogFormat::Json => {
            registry.with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(writer)).try_init()
        }
        LogFormat::Pretty => {
            registry.with(tracing_subscriber::fmt::layer().compact().with_ansi(terminal).with_writer(writer)).try_init()
        }
    };
    if result.is_err() {
        // Already initialised (tests, or several services in one process).
        return Ok(TelemetryGuard::default());
    }
    Ok(guard)
}

// === W3C trace context over gRPC metadata ===

/// Installs the W3C trace context propagator (idempotent). `init` calls it;
/// tests that install their own subscriber call it too.
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
}

/// The current span's `traceparent`, to carry a trace across a queue (the
/// decision log's outbox); `None` outside a sampled trace.
pub fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    // Written directly in the W3C format rather than through the global
    // propagator and a map: this runs on every recorded decision.
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// The span context a `traceparent` names, for a span that continues it.
pub fn context_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let carrier: std::collections::HashMap<String, String> =
        [("traceparent".to_string(), traceparent.to_string())].into();
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The span of one incoming gRPC request, child of the caller's trace when
/// the request carries a `traceparent` header. Use with
/// `tonic::transport::Server::builder().trace_fn(grpc_request_span)`.
pub fn grpc_request_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc_request",
        otel.kind = "server",
        rpc.method = %request.uri().path(),
    );
    if request.headers().contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let _ = span.set_parent(parent);
    }
    span
}

/// Writes the current span's trace context into outgoing request metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()))
        });
        Ok(request)
    }
}

// === gRPC server plumbing shared by every service ===

/// gRPC server reflection (v1 and v1alpha, so every client finds it) over
/// Warden's contracts and the health service.
pub fn reflection_services() -> (
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
) {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(warden_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("reflection descriptors are valid");
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(warden_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("reflection descriptors are valid");
    (v1, v1alpha)
}

/// A running gRPC server and the background tasks that live as long as it.
pub struct ServerHandle {
    name: &'static str,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").field("name", &self.name).finish()
    }
}

/// The future a server's graceful shutdown waits on.
pub type ShutdownSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl ServerHandle {
    /// Spawns `serve`, handing it the signal that starts its graceful
    /// shutdown (e.g. `Server::builder()...serve_with_incoming_shutdown(incoming, signal)`).
    pub fn spawn<F, Fut>(name: &'static str, background: Vec<tokio::task::JoinHandle<()>>, serve: F) -> Self
    where
        F: FnOnce(ShutdownSignal) -> Fut,
        Fut: std::future::Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(Box::pin(async move {
            let _ = rx.await;
        })));
        ServerHandle { name, shutdown: Some(tx), server, background }
    }

    /// Stops accepting requests, lets in-flight ones finish, and stops the
    /// background tasks.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for task in &self.background {
            task.abort();
        }
        match (&mut self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(server = self.name, %error, "server failed"),
            Err(error) => tracing::error!(server = self.name, %error, "server task failed"),
        }
    }
}

/// Starts the `/metrics` listener unless `listen` is empty.
pub async fn start_metrics(listen: &str) -> Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>, TelemetryError> {
    if listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen.parse().map_err(|_| TelemetryError::Addr(listen.to_owned()))?;
    serve_metrics(addr).await.map(Some)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

// === Prometheus ===

/// Renders every metric in the process-wide registry in the text format.
pub fn render_metrics() -> String {
    use prometheus::Encoder;
    let mut buffer = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(error) = encoder.encode(&prometheus::gather(), &mut buffer) {
        tracing::warn!(%error, "cannot encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// Binds the `/metrics` listener and serves it in the background until the
/// returned handle is aborted. Returns the bound address (port 0 picks one).
pub async fn serve_metrics(addr: SocketAddr) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), TelemetryError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|error| TelemetryError::Bind(addr, error))?;
    let local = listener.local_addr().map_err(|error| TelemetryError::Bind(addr, error))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render_metrics())
        }),
    );
    let handle = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics listener stopped");
        }
    });
    tracing::info!(addr = %local, "metrics listening");
    Ok((local, handle))
}

/// Registers a collector in the process-wide registry, or returns the one
/// already registered under the same name (several services or tests in one
/// process share the registry).
pub fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    match prometheus::register(Box::new(collector.clone())) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => collector,
        Err(error) => {
            tracing::warn!(%error, "cannot register metric");
            collector
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_listener_serves_registered_metrics() {
        let counter = register(prometheus::IntCounter::new("telemetry_test_total", "test counter").unwrap());
        counter.inc();
        let (addr, handle) = serve_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        assert!(body.contains("telemetry_test_total 1"), "{body}");
        handle.abort();
    }

    #[test]
    fn bad_log_level_is_reported() {
        let config = TelemetryConfig { log_level: "info,[[[".into(), ..TelemetryConfig::default() };
        assert!(matches!(init("test", &config), Err(TelemetryError::Filter(..))));
    }
}
