//! Running a service: what every Warden service does besides its own
//! logic, written once.
//!
//! - [`main`]: the whole of a service binary's `main` once its flags are
//!   read: config (defaults, file, environment, flags, validation),
//!   `--healthcheck`, telemetry, start, Ctrl-C or SIGTERM, graceful stop.
//! - [`Runtime`]: what a service's `start` builds on: identity and access
//!   (`warden-auth`), the background tasks, the metrics listener, the
//!   database (opened, migrated, checkpointed), and the listeners: gRPC
//!   behind the auth layer with health and reflection ([`Runtime::serve`]),
//!   and HTTP surfaces ([`Runtime::serve_http`], with each connection's
//!   address for the auth layer's throttle).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use warden_auth::{Auth, AuthConfig, AuthLayer, SecretResolver};
pub use warden_config::CommonArgs;
use warden_config::{Sources, Validate};
use warden_store::Database;
use warden_telemetry::ServerHandle;

pub use warden_telemetry::TelemetryConfig;

/// A Warden service, as its binary runs it.
pub trait Service: Sized + Send + 'static {
    /// The binary's name (`warden-approval`).
    const NAME: &'static str;
    type Config: Default + Serialize + DeserializeOwned + Validate + Send;
    type Error: std::fmt::Display;

    fn telemetry(config: &Self::Config) -> &TelemetryConfig;
    /// The gRPC address (`--healthcheck` asks there).
    fn listen(config: &Self::Config) -> &str;
    fn start(config: Self::Config) -> impl Future<Output = Result<Self, Self::Error>> + Send;
    fn shutdown(self) -> impl Future<Output = ()> + Send;
    /// A line printed once the service serves (where it listens, what a
    /// client needs to know).
    fn banner(&self) -> Option<String> {
        None
    }
}

/// A service binary's whole `main.rs`: its flags (the shared ones, from
/// [`CommonArgs`], and its own, each setting the config key of its name),
/// mimalloc as the allocator, and [`main`] on a multi-threaded runtime.
///
/// ```ignore
/// warden_server::main!(ApprovalServer, "The Warden approval service.", {
///     /// The approval routes file (YAML).
///     routes,
/// });
/// ```
#[macro_export]
macro_rules! main {
    ($server:ty, $about:literal, { $( $(#[doc = $doc:literal])* $flag:ident ),* $(,)? }) => {
        $crate::main!($server, $about, { $( $(#[doc = $doc])* $flag ),* }, before = $crate::runtime::no_subcommand);
    };
    // `before` runs first and may take the process over (a subcommand of
    // the binary's own, such as the MCP gateway's `stdio`): `Some(code)`
    // ends it with that code.
    ($server:ty, $about:literal, { $( $(#[doc = $doc:literal])* $flag:ident ),* $(,)? }, before = $before:path) => {
        #[derive(Debug, clap::Parser)]
        #[command(version, about = $about)]
        struct Args {
            #[command(flatten)]
            common: $crate::runtime::CommonArgs,
            $( $(#[doc = $doc])* #[arg(long)] $flag: Option<String>, )*
        }

        /// mimalloc rather than the system allocator: request handling
        /// allocates many small, short-lived objects across threads, where
        /// glibc's malloc spent about a tenth of the audit service's CPU.
        #[global_allocator]
        static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

        fn main() -> std::process::ExitCode {
            if let Some(code) = $before() {
                return code;
            }
            let args = <Args as clap::Parser>::parse();
            #[allow(unused_mut)]
            let mut sources = args.common.sources();
            $( sources.flag(stringify!($flag), args.$flag.as_ref()); )*
            match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on($crate::runtime::main::<$server>(&args.common, &sources)),
                Err(error) => {
                    eprintln!("cannot start the async runtime: {error}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    };
}

/// The `before` of a binary without subcommands of its own.
pub fn no_subcommand() -> Option<ExitCode> {
    None
}

/// Implements [`Service`] for a server type whose config has `telemetry`
/// and `listen` fields, which has inherent `start(config)` and
/// `shutdown(self)` and holds its [`Serving`] in a `serving` field
/// (dereferenced to, and shown by `Debug`):
/// `warden_server::service!(ApprovalServer, ApprovalConfig,
/// "warden-approval", StartError);`.
#[macro_export]
macro_rules! service {
    ($server:ty, $config:ty, $name:literal, $error:ty) => {
        $crate::service!($server, $config, $name, $error, banner = |_server: &$server| None);
    };
    ($server:ty, $config:ty, $name:literal, $error:ty, banner = $banner:expr) => {
        impl $crate::Service for $server {
            const NAME: &'static str = $name;
            type Config = $config;
            type Error = $error;

            fn telemetry(config: &$config) -> &$crate::runtime::TelemetryConfig {
                &config.telemetry
            }
            fn listen(config: &$config) -> &str {
                &config.listen
            }
            async fn start(config: $config) -> Result<Self, $error> {
                <$server>::start(config).await
            }
            async fn shutdown(self) {
                <$server>::shutdown(self).await
            }
            fn banner(&self) -> Option<String> {
                let banner: fn(&$server) -> Option<String> = $banner;
                banner(self)
            }
        }

        impl std::ops::Deref for $server {
            type Target = $crate::runtime::Serving;
            fn deref(&self) -> &$crate::runtime::Serving {
                &self.serving
            }
        }

        impl std::fmt::Debug for $server {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($server)).field("addr", &self.serving.addr).finish()
            }
        }
    };
}

/// The `main` of every service binary: load the config (defaults, file,
/// environment, flags: `sources`), initialise telemetry, start, serve
/// until Ctrl-C or SIGTERM, stop. Exit codes: 2 for a bad configuration,
/// 1 when the service cannot start, 0 after a clean shutdown.
pub async fn main<S: Service>(common: &CommonArgs, sources: &Sources) -> ExitCode {
    let config: S::Config = match warden_config::load(sources) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: {error}", S::NAME);
            return ExitCode::from(2);
        }
    };
    if common.healthcheck {
        return healthcheck(S::NAME, S::listen(&config)).await;
    }
    let _telemetry = match warden_telemetry::init(S::NAME, S::telemetry(&config)) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("{}: {error}", S::NAME);
            return ExitCode::from(2);
        }
    };
    let service = match S::start(config).await {
        Ok(service) => service,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("{}: {error}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    if let Some(banner) = service.banner() {
        println!("{banner}");
    }
    warden_telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    service.shutdown().await;
    ExitCode::SUCCESS
}

/// Asks the local service on `listen` (a wildcard address means this
/// host) for its health.
async fn healthcheck(name: &str, listen: &str) -> ExitCode {
    let addr = listen.replacen("0.0.0.0", "127.0.0.1", 1).replacen("[::]", "[::1]", 1);
    let channel = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(endpoint) => {
            endpoint.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(2)).connect().await
        }
        Err(error) => {
            eprintln!("{name}: bad listen address {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(channel) = channel else {
        eprintln!("{name}: nothing answers on {addr}");
        return ExitCode::FAILURE;
    };
    let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
    match tonic_health::pb::health_client::HealthClient::new(channel).check(request).await {
        Ok(response)
            if response.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            println!("{name} on {addr}: serving");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("{name} on {addr}: {:?}", response.get_ref().status);
            ExitCode::FAILURE
        }
        Err(status) => {
            eprintln!("{name} on {addr}: {status}");
            ExitCode::FAILURE
        }
    }
}

/// The system clock in microseconds since the Unix epoch, as the services
/// store times (0 before the epoch).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

/// The database URL a service uses: `url`, or SQLite in `data_dir` when
/// it is empty.
pub fn database_url(url: &str, data_dir: &Path) -> String {
    if url.is_empty() { Database::default_url(data_dir) } else { url.to_owned() }
}

/// A running service's addresses, and the handle that stops it. Each
/// service's server holds one and dereferences to it
/// ([`service!`](crate::service)), so `server.addr` and `server.url()`
/// work for every service alike.
#[derive(Debug)]
pub struct Serving {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The `/metrics` address, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The HTTP surface (the inbox, Alertmanager's API), when it has one.
    pub http_addr: Option<SocketAddr>,
    handle: ServerHandle,
}

impl Serving {
    /// `http://ADDR`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests, lets in-flight ones finish, and stops the
    /// background tasks.
    pub async fn stop(self) {
        self.handle.stop().await;
    }
}

/// Why the runtime could not start a service.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("storage: {0}")]
    Store(#[from] warden_store::StoreError),
    #[error("{0}")]
    Auth(#[from] warden_auth::AuthError),
    #[error("telemetry: {0}")]
    Telemetry(#[from] warden_telemetry::TelemetryError),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
}

/// Why a service could not start, for the services that need no other
/// reasons than these.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("storage: {0}")]
    Store(#[from] warden_store::StoreError),
    /// Its own files (routes, rules): what is wrong with them.
    #[error("{0}")]
    Config(String),
    /// Who it calls (the audit service): why it cannot.
    #[error("audit client: {0}")]
    Outbound(String),
}

/// What a service's `start` builds on; [`Runtime::serve`] hands it to the
/// server it returns.
pub struct Runtime {
    name: &'static str,
    pub auth: Arc<Auth>,
    /// Secret references (`env:`, `file:`, `vault:`), cached as the auth
    /// section says.
    pub secrets: SecretResolver,
    pub metrics_addr: Option<SocketAddr>,
    background: Vec<JoinHandle<()>>,
    health: tonic_health::server::HealthReporter,
    http_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("name", &self.name).finish()
    }
}

impl Runtime {
    /// Identity and access for `name` (`approval`: the name its refusals
    /// carry), and the metrics listener unless `metrics_listen` is empty.
    pub async fn start(
        name: &'static str,
        auth: &AuthConfig,
        data_dir: &Path,
        metrics_listen: &str,
    ) -> Result<Runtime, RuntimeError> {
        let (auth_state, mut background) = Auth::start(auth, name, data_dir).await?;
        let metrics_addr = match warden_telemetry::start_metrics(metrics_listen).await? {
            Some((addr, task)) => {
                background.push(task);
                Some(addr)
            }
            None => None,
        };
        Ok(Runtime {
            name,
            auth: auth_state,
            secrets: SecretResolver::from_process_env(auth.secret_cache_ttl),
            metrics_addr,
            background,
            health: tonic_health::server::HealthReporter::new(),
            http_addr: None,
        })
    }

    /// Opens and migrates the database at `url` (empty: SQLite in
    /// `data_dir`); its background checkpoints (SQLite) run with the service.
    pub async fn database(&mut self, url: &str, data_dir: &Path) -> Result<Database, RuntimeError> {
        let database = Database::connect(&database_url(url, data_dir)).await?;
        database.migrate().await?;
        self.background.extend(database.checkpoints());
        Ok(database)
    }

    /// Runs `task` with the service; it is stopped with it.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.background.push(tokio::spawn(task));
    }

    /// Stops `task`, already running, with the service.
    pub fn adopt(&mut self, task: JoinHandle<()>) {
        self.background.push(task);
    }

    /// Serves an HTTP surface (the approval inbox, Alertmanager's API) on
    /// `listen`, with each connection's address (the auth layer throttles
    /// bad credentials by it); it stops with the service.
    pub async fn serve_http(
        &mut self,
        what: &str,
        listen: &str,
        router: axum::Router,
    ) -> Result<SocketAddr, RuntimeError> {
        let listener = Runtime::bind_http(listen).await?;
        self.serve_http_on(what, listener, router)
    }

    /// Binds `listen` for an HTTP surface whose routes need to know its
    /// address (served with [`Runtime::serve_http_on`]).
    pub async fn bind_http(listen: &str) -> Result<tokio::net::TcpListener, RuntimeError> {
        tokio::net::TcpListener::bind(listen).await.map_err(|error| RuntimeError::Bind(listen.to_owned(), error))
    }

    /// Serves `router` on a listener from [`Runtime::bind_http`], as
    /// [`Runtime::serve_http`] does.
    pub fn serve_http_on(
        &mut self,
        what: &str,
        listener: tokio::net::TcpListener,
        router: axum::Router,
    ) -> Result<SocketAddr, RuntimeError> {
        let addr = listener.local_addr().map_err(|error| RuntimeError::Bind(what.to_owned(), error))?;
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        // Answers go out as written (an MCP answer on an event stream is
        // small and followed by nothing until the next one).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (name, surface) = (self.name, what.to_owned());
        self.background.push(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(service = name, %surface, %error, "http listener stopped");
            }
        }));
        tracing::info!(service = self.name, surface = what, %addr, "listening");
        self.http_addr = Some(addr);
        Ok(addr)
    }

    /// Binds `listen` (TLS as the auth section says) and serves `routes`
    /// behind the auth layer, with health (serving) and reflection (unless
    /// turned off), until the returned handle is stopped. The background
    /// tasks stop with it.
    pub async fn serve(self, listen: &str, routes: tonic::service::Routes) -> Result<Serving, RuntimeError> {
        let Runtime { name, auth, mut background, health, metrics_addr, http_addr, .. } = self;
        let (incoming, addr, accept) = warden_auth::tls::bind(listen, auth.tls())
            .await
            .map_err(|error| RuntimeError::Bind(listen.to_owned(), error))?;
        background.push(accept);
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health),
        );
        let mut routes = routes.add_service(health_service);
        if auth.config().reflection {
            let (v1, v1alpha) = warden_telemetry::reflection_services();
            routes = routes.add_service(v1).add_service(v1alpha);
        }
        let layer = AuthLayer::new(auth.clone());
        let handle = ServerHandle::spawn(name, background, move |signal| {
            let mut builder =
                tonic::transport::Server::builder().trace_fn(warden_telemetry::grpc_request_span).layer(layer);
            builder.add_routes(routes).serve_with_incoming_shutdown(incoming, signal)
        });
        tracing::info!(service = name, %addr, tls = auth.tls().is_some(), mtls = auth.tls().as_ref().is_some_and(|t| t.mutual()), auth = !auth.insecure(), "listening");
        Ok(Serving { addr, metrics_addr, http_addr, handle })
    }

    /// Marks `S` serving in the health service (for probes that ask by
    /// service name).
    pub async fn serving<S: tonic::server::NamedService>(&self) {
        self.health.set_serving::<S>().await;
    }
}
