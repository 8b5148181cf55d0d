//! The MCP servers behind the gateway: the upstreams file, and one
//! connection per upstream (Streamable HTTP, or a command the gateway
//! spawns and restarts), with its credentials, timeout and circuit breaker.
//!
//! An upstream's credentials (`bearer`, `headers`, `env`) are secret
//! settings (`env:NAME`, `file:PATH`, `vault:MOUNT/PATH#FIELD`) resolved
//! by the gateway; they are sent to the upstream only, never to agents.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, Implementation, JsonObject, Tool};
use rmcp::service::{NotificationContext, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde::Deserialize;
use warden_auth::SecretResolver;
use warden_resilience::{BreakerConfig, CircuitBreaker, Outcome};

use crate::metrics::METRICS;

/// The upstreams file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsFile {
    pub upstreams: Vec<UpstreamConfig>,
}

/// One MCP server behind the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its name: the namespace of its tools (`billing` → `billing__refund`)
    /// and of their default action types (`billing.refund`).
    pub name: String,
    /// A Streamable HTTP endpoint (`http://billing:8000/mcp`); or `command`.
    #[serde(default)]
    pub url: String,
    /// A command speaking MCP on stdin/stdout, spawned by the gateway and
    /// restarted when it exits; or `url`.
    #[serde(default)]
    pub command: Vec<String>,
    /// HTTP: sent as `Authorization: Bearer ...`; a secret setting.
    #[serde(default)]
    pub bearer: String,
    /// HTTP: more headers; each value a secret setting.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// stdio: the command's environment (nothing else of the gateway's is
    /// passed on but `PATH`, `HOME` and `LANG`); each value a secret setting.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How long one call may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra attempts for tools the upstream marks read-only or idempotent
    /// (`readOnlyHint`, `idempotentHint`); other tools are never retried,
    /// since a second attempt could act twice.
    #[serde(default)]
    pub retries: u32,
    /// Calls failing in a row before the breaker opens, and how long it
    /// stays open (calls then fail at once).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "default_breaker_open", with = "humantime_serde")]
    pub breaker_open: Duration,
    /// HTTP: calls in flight to it at once, over the gateway's one session
    /// (more wait their turn).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// HTTP: keep connections to it open between calls (measured with
    /// `cargo xtask bench mcp`: 0.41 → 0.31 ms per forwarded call at one in
    /// flight). Only for a server that sends as it writes (`TCP_NODELAY`;
    /// Python's asyncio, Node's and Go's servers do, `axum::serve` does not
    /// by default): on a kept connection a server that batches small
    /// writes waits out TCP's delayed acknowledgement, 40 ms a call. Off: a
    /// connection per call, which never stalls.
    #[serde(default)]
    pub keep_alive: bool,
    /// Per tool: the action type its calls are decided as (default
    /// `<upstream>.<tool>`) and the resource, a template over the arguments
    /// (`order/{order_id}`).
    #[serde(default)]
    pub tools: BTreeMap<String, ToolMapping>,
}

/// How a tool's calls are put to the policy engine.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolMapping {
    /// `action.type`; default `<upstream>.<tool>`.
    #[serde(default)]
    pub action: String,
    /// `action.resource`: `{name}` is the argument `name` (a string, number
    /// or boolean; `{a.b}` reaches into an object), percent-encoded so that
    /// an argument cannot add path segments or glob characters.
    #[serde(default)]
    pub resource: String,
    /// `action.estimated_cost`: the argument (`amount`, `a.b`) holding the
    /// call's cost, a number >= 0; none: 0.
    #[serde(default)]
    pub cost: String,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open() -> Duration {
    Duration::from_secs(30)
}
fn default_concurrency() -> usize {
    256
}

impl UpstreamsFile {
    /// Reads and checks the file: names, transports, templates.
    pub fn load(path: &Path, separator: &str) -> Result<UpstreamsFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        UpstreamsFile::parse(&text, separator).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str, separator: &str) -> Result<UpstreamsFile, String> {
        let file: UpstreamsFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if file.upstreams.is_empty() {
            return Err("upstreams: at least one upstream is required".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, upstream) in file.upstreams.iter().enumerate() {
            let at = format!("upstreams[{i}]");
            let name_ok = !upstream.name.is_empty()
                && upstream.name.len() <= 32
                && upstream.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
                && !upstream.name.contains(separator);
            if !name_ok {
                return Err(format!(
                    "{at}.name: {:?}: 1-32 of a-z, 0-9, '-', '_', not containing the separator {separator:?}",
                    upstream.name
                ));
            }
            if !seen.insert(upstream.name.as_str()) {
                return Err(format!("{at}.name: {:?} is named twice", upstream.name));
            }
            match (upstream.url.is_empty(), upstream.command.is_empty()) {
                (false, true) => {
                    if !(upstream.url.starts_with("http://") || upstream.url.starts_with("https://")) {
                        return Err(format!("{at}.url: {:?}: expected http(s)://...", upstream.url));
                    }
                    if !upstream.env.is_empty() {
                        return Err(format!("{at}.env: only for a command"));
                    }
                }
                (true, false) => {
                    if !upstream.bearer.is_empty() || !upstream.headers.is_empty() {
                        return Err(format!("{at}: bearer and headers are for a url; a command takes env"));
                    }
                    if upstream.keep_alive {
                        return Err(format!("{at}.keep_alive: only for a url (a command's pipe stays open)"));
                    }
                }
                _ => return Err(format!("{at}: exactly one of url and command")),
            }
            for name in upstream.headers.keys() {
                http::HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("{at}.headers: {name:?} is no header name"))?;
            }
            if upstream.timeout.is_zero() {
                return Err(format!("{at}.timeout: must be more than 0"));
            }
            if !(1..=4096).contains(&upstream.concurrency) {
                return Err(format!("{at}.concurrency: 1 to 4096"));
            }
            if upstream.retries > 3 {
                return Err(format!("{at}.retries: at most 3"));
            }
            for (tool, mapping) in &upstream.tools {
                crate::template::Template::parse(&mapping.resource)
                    .map_err(|e| format!("{at}.tools.{tool}.resource: {e}"))?;
                if !mapping.cost.is_empty() && mapping.cost.split('.').any(str::is_empty) {
                    return Err(format!("{at}.tools.{tool}.cost: {:?} is no argument name", mapping.cost));
                }
                if mapping.action.len() > warden_contract::bounds::NAME_BYTES {
                    return Err(format!("{at}.tools.{tool}.action: too long"));
                }
            }
        }
        Ok(file)
    }
}

/// What the gateway tells an upstream about itself, and how it hears that
/// the upstream's tools changed.
#[derive(Clone)]
struct UpstreamClient {
    changed: Arc<tokio::sync::Notify>,
}

impl ClientHandler for UpstreamClient {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info = Implementation::new("warden-mcp-gateway", env!("CARGO_PKG_VERSION"));
        info
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }
}

type Connection = RunningService<RoleClient, UpstreamClient>;

/// Why a call to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {0} is unavailable (circuit open; retry in {1:?})")]
    Open(String, Duration),
    #[error("upstream {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("cannot connect to upstream {0}: {1}")]
    Connect(String, String),
    #[error("upstream {0} failed: {1}")]
    Call(String, String),
}

impl UpstreamError {
    /// A short class for metrics and the audit record.
    pub fn class(&self) -> &'static str {
        match self {
            UpstreamError::Open(..) => "circuit_open",
            UpstreamError::Timeout(..) => "timeout",
            UpstreamError::Connect(..) => "unavailable",
            UpstreamError::Call(..) => "upstream_error",
        }
    }
}

/// One upstream: its connection (made on first use and again after it
/// breaks; a command is spawned again), its tools and its breaker.
pub struct Upstream {
    pub config: UpstreamConfig,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    breaker: Arc<CircuitBreaker>,
    tools: ArcSwap<Vec<Tool>>,
    secrets: SecretResolver,
    /// Notified when the upstream says its tools changed.
    pub changed: Arc<tokio::sync::Notify>,
    connects: AtomicU64,
    /// The HTTP client for an HTTP upstream: no redirects followed; idle
    /// connections kept only with [`UpstreamConfig::keep_alive`] (on a
    /// reused connection, a server with Nagle's algorithm on holds its
    /// answer's second write until the gateway's delayed ACK, 40 ms, as
    /// rmcp's own default client notes; measured here with `bench mcp`).
    http: reqwest_mcp::Client,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.config.name).finish()
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig, secrets: SecretResolver, changed: Arc<tokio::sync::Notify>) -> Upstream {
        let breaker = CircuitBreaker::new(
            format!("mcp-upstream:{}", config.name),
            BreakerConfig {
                consecutive_failures: Some(config.breaker_failures.max(1)),
                failure_rate: None,
                open_duration: config.breaker_open,
                half_open_max_calls: 1,
                success_threshold: 1,
                ..BreakerConfig::default()
            },
        );
        let mut http = reqwest_mcp::Client::builder().redirect(reqwest_mcp::redirect::Policy::none()).tcp_nodelay(true);
        if !config.keep_alive {
            http = http.pool_max_idle_per_host(0);
        }
        Upstream {
            http: http.build().expect("an HTTP client without TLS settings of its own"),
            config,
            connection: tokio::sync::Mutex::new(None),
            breaker,
            tools: ArcSwap::from_pointee(Vec::new()),
            secrets,
            changed,
            connects: AtomicU64::new(0),
        }
    }

    /// The tools last listed.
    pub fn tools(&self) -> Arc<Vec<Tool>> {
        self.tools.load_full()
    }

    /// How many times a connection was made (a restarted command counts).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// The live connection, made (or the command spawned) when there is none
    /// or the last one closed.
    async fn connection(&self) -> Result<Arc<Connection>, UpstreamError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref()
            && !connection.is_closed()
            && !connection.peer().is_transport_closed()
        {
            return Ok(connection.clone());
        }
        if slot.take().is_some() {
            tracing::warn!(upstream = %self.config.name, "upstream connection closed; reconnecting");
            METRICS.upstream_restarts.with_label_values(&[&self.config.name]).inc();
        }
        let connection = tokio::time::timeout(self.config.timeout, self.connect())
            .await
            .map_err(|_| UpstreamError::Timeout(self.config.name.clone(), self.config.timeout))??;
        let connection = Arc::new(connection);
        self.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(upstream = %self.config.name, "connected to upstream");
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(&self) -> Result<Connection, UpstreamError> {
        let name = &self.config.name;
        let failed = |e: String| UpstreamError::Connect(name.clone(), e);
        let handler = UpstreamClient { changed: self.changed.clone() };
        if !self.config.url.is_empty() {
            let mut headers = HashMap::new();
            for (key, setting) in &self.config.headers {
                let Some(secret) = self.secrets.resolve_setting(setting).await.map_err(|e| failed(e.to_string()))?
                else {
                    continue;
                };
                let value = http::HeaderValue::from_str(secret.expose())
                    .map_err(|_| failed(format!("header {key}: not a valid header value")))?;
                headers.insert(http::HeaderName::try_from(key.as_str()).map_err(|e| failed(e.to_string()))?, value);
            }
            let mut config = StreamableHttpClientTransportConfig::with_uri(self.config.url.as_str())
                .custom_headers(headers)
                .max_concurrent_requests(self.config.concurrency);
            if let Some(token) =
                self.secrets.resolve_setting(&self.config.bearer).await.map_err(|e| failed(e.to_string()))?
            {
                config = config.auth_header(token.expose().to_owned());
            }
            let transport = StreamableHttpClientTransport::with_client(self.http.clone(), config);
            handler.serve(transport).await.map_err(|e| failed(e.to_string()))
        } else {
            let mut command = tokio::process::Command::new(&self.config.command[0]);
            command.args(&self.config.command[1..]).env_clear().kill_on_drop(true);
            for key in ["PATH", "HOME", "LANG"] {
                if let Ok(value) = std::env::var(key) {
                    command.env(key, value);
                }
            }
            for (key, setting) in &self.config.env {
                if let Some(secret) =
                    self.secrets.resolve_setting(setting).await.map_err(|e| failed(format!("env {key}: {e}")))?
                {
                    command.env(key, secret.expose());
                }
            }
            let process = TokioChildProcess::new(command).map_err(|e| failed(e.to_string()))?;
            handler.serve(process).await.map_err(|e| failed(e.to_string()))
        }
    }

    /// Lists the upstream's tools again (connecting if need be); returns
    /// whether they changed.
    pub async fn refresh(&self) -> Result<bool, UpstreamError> {
        let connection = self.connection().await?;
        let listed = tokio::time::timeout(self.config.timeout, connection.peer().list_all_tools())
            .await
            .map_err(|_| UpstreamError::Timeout(self.config.name.clone(), self.config.timeout))?
            .map_err(|e| UpstreamError::Call(self.config.name.clone(), e.to_string()))?;
        let changed = *self.tools.load_full() != listed;
        self.tools.store(Arc::new(listed));
        Ok(changed)
    }

    /// Calls `tool` with exactly `arguments`, through the breaker, within
    /// the timeout; retried only for a tool the upstream marks read-only or
    /// idempotent, and only when the attempt did not reach it or broke.
    pub async fn call(&self, tool: &str, arguments: Option<JsonObject>) -> Result<CallToolResult, UpstreamError> {
        let retriable =
            self.tools().iter().find(|t| t.name == tool).and_then(|t| t.annotations.as_ref()).is_some_and(|a| {
                a.read_only_hint == Some(true) || (a.idempotent_hint == Some(true) && a.destructive_hint != Some(true))
            });
        let attempts = if retriable { 1 + self.config.retries } else { 1 };
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            match self.attempt(tool, arguments.clone()).await {
                Ok(result) => return Ok(result),
                // The upstream answered (or was not tried): never again.
                Err(error @ (UpstreamError::Open(..) | UpstreamError::Call(..))) => return Err(error),
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn attempt(&self, tool: &str, arguments: Option<JsonObject>) -> Result<CallToolResult, UpstreamError> {
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|rejected| UpstreamError::Open(self.config.name.clone(), rejected.retry_after))?;
        let outcome = async {
            let connection = self.connection().await?;
            let mut params = CallToolRequestParams::new(tool.to_owned());
            params.arguments = arguments;
            // The trace goes on to the upstream (`_meta.traceparent`).
            if let Some(traceparent) = warden_telemetry::current_traceparent() {
                let mut meta = rmcp::model::RequestMetaObject::new();
                meta.insert("traceparent".to_owned(), serde_json::Value::String(traceparent));
                params.meta = Some(meta);
            }
            match tokio::time::timeout(self.config.timeout, connection.peer().call_tool(params)).await {
                Err(_) => Err(UpstreamError::Timeout(self.config.name.clone(), self.config.timeout)),
                Ok(Ok(result)) => Ok(result),
                Ok(Err(ServiceError::McpError(error))) => {
                    // The upstream answered: it is up, the call was wrong.
                    Err(UpstreamError::Call(self.config.name.clone(), error.message.to_string()))
                }
                Ok(Err(error)) => {
                    // The connection is gone (a command that exited): the
                    // next call makes a new one.
                    self.forget(&connection).await;
                    Err(UpstreamError::Connect(self.config.name.clone(), error.to_string()))
                }
            }
        }
        .await;
        permit.record(match &outcome {
            Ok(_) | Err(UpstreamError::Call(..)) => Outcome::Success,
            Err(_) => Outcome::Failure,
        });
        outcome
    }

    /// Drops `broken` if it is still the current connection.
    async fn forget(&self, broken: &Arc<Connection>) {
        let mut slot = self.connection.lock().await;
        if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, broken)) {
            slot.take();
            METRICS.upstream_restarts.with_label_values(&[&self.config.name]).inc();
        }
    }

    /// Closes the connection (a command is stopped).
    pub async fn close(&self) {
        if let Some(connection) = self.connection.lock().await.take()
            && let Ok(mut connection) = Arc::try_unwrap(connection)
        {
            let _ = connection.close_with_timeout(Duration::from_secs(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rmcp::model::{CallToolResponse, ContentBlock, InitializeResult, ListToolsResult, PaginatedRequestParams};
    use rmcp::service::RequestContext;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
    use rmcp::{ErrorData, RoleServer, ServerHandler};
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn parse(yaml: &str) -> Result<UpstreamsFile, String> {
        UpstreamsFile::parse(yaml, "__")
    }

    #[test]
    fn the_file_refuses_what_cannot_work_by_field() {
        let refused = [
            ("upstreams: []", "at least one upstream"),
            ("upstreams:\n  - name: a\n", "exactly one of url and command"),
            ("upstreams:\n  - name: a\n    url: http://x/mcp\n    command: [x]\n", "exactly one of url and command"),
            ("upstreams:\n  - name: a\n    url: ftp://x/mcp\n", "upstreams[0].url"),
            ("upstreams:\n  - name: a\n    command: [x]\n    keep_alive: true\n", "upstreams[0].keep_alive"),
            ("upstreams:\n  - name: a\n    command: [x]\n    bearer: env:T\n", "bearer and headers are for a url"),
            ("upstreams:\n  - name: a\n    url: http://x/mcp\n    env: {A: b}\n", "upstreams[0].env"),
            ("upstreams:\n  - name: a\n    url: http://x/mcp\n    keepalive: true\n", "keepalive"),
        ];
        for (yaml, says) in refused {
            let error = parse(yaml).expect_err(yaml);
            assert!(error.contains(says), "{yaml}: {error}");
        }
        let file = parse("upstreams:\n  - name: a\n    url: http://x/mcp\n    keep_alive: true\n").unwrap();
        assert!(file.upstreams[0].keep_alive);
        assert!(!parse("upstreams:\n  - name: a\n    url: http://x/mcp\n").unwrap().upstreams[0].keep_alive);
    }

    #[derive(Clone)]
    struct Echo;

    impl ServerHandler for Echo {
        fn get_info(&self) -> InitializeResult {
            InitializeResult::new(rmcp::model::ServerCapabilities::builder().enable_tools().build())
        }

        async fn list_tools(
            &self,
            _request: Option<PaginatedRequestParams>,
            _context: RequestContext<RoleServer>,
        ) -> Result<ListToolsResult, ErrorData> {
            let schema = serde_json::json!({"type": "object"}).as_object().cloned().unwrap_or_default();
            Ok(ListToolsResult::with_all_items(vec![Tool::new("echo", "Echoes.", Arc::new(schema))]))
        }

        async fn call_tool(
            &self,
            request: CallToolRequestParams,
            _context: RequestContext<RoleServer>,
        ) -> Result<CallToolResponse, ErrorData> {
            let text = serde_json::to_string(&request.arguments).unwrap_or_default();
            Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
        }
    }

    /// An MCP server sending as it writes (`TCP_NODELAY`), and how many
    /// connections it accepted.
    async fn server(stop: CancellationToken) -> (SocketAddr, Arc<AtomicU64>) {
        let config = StreamableHttpServerConfig::default().with_cancellation_token(stop.clone());
        let service = StreamableHttpService::new(|| Ok(Echo), LocalSessionManager::default().into(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = accepted.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
            let _ = tcp.set_nodelay(true);
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let router = axum::Router::new().nest_service("/mcp", service);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        (addr, accepted)
    }

    /// Connections the server accepted for 20 calls, with and without
    /// `keep_alive`; every call answered with exactly its arguments.
    async fn connections_for_calls(keep_alive: bool) -> u64 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let stop = CancellationToken::new();
        let (addr, accepted) = server(stop.clone()).await;
        let yaml = format!("upstreams:\n  - name: echo\n    url: http://{addr}/mcp\n    keep_alive: {keep_alive}\n");
        let config = parse(&yaml).unwrap().upstreams.remove(0);
        let upstream = Upstream::new(config, SecretResolver::new(HashMap::new(), Duration::ZERO), Default::default());
        assert!(upstream.refresh().await.unwrap());
        let before = accepted.load(Ordering::Relaxed);
        for i in 0..20 {
            let arguments = serde_json::json!({"i": i, "s": "ä\"\n"}).as_object().cloned();
            let result = upstream.call("echo", arguments.clone()).await.unwrap();
            let echoed = result.content[0].as_text().map(|t| t.text.clone()).unwrap_or_default();
            assert_eq!(echoed, serde_json::to_string(&arguments).unwrap());
        }
        let used = accepted.load(Ordering::Relaxed) - before;
        upstream.close().await;
        stop.cancel();
        used
    }

    #[tokio::test]
    async fn keep_alive_reuses_connections_and_without_it_each_call_has_its_own() {
        let kept = connections_for_calls(true).await;
        assert!(kept <= 2, "20 calls on kept connections opened {kept}");
        let fresh = connections_for_calls(false).await;
        assert!(fresh >= 20, "20 calls without keep-alive opened only {fresh}");
    }
}
