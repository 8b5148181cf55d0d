//! Identity and access for every Warden service: who is calling, and may
//! they.
//!
//! - [`principal`]: principals (kind, id, roles, the agents they may act as).
//! - Credentials: [`api_key`] (keys file with digests, hot-reloaded),
//!   [`jwt`] (OIDC bearer tokens against a JWKS), [`tls`] (TLS 1.3 and
//!   mTLS, the principal taken from the client certificate).
//! - [`authz`]: the one table of which roles may call which RPC.
//! - [`layer`]: the tower layer every service's router sits behind:
//!   `UNAUTHENTICATED`, `PERMISSION_DENIED` naming the missing role,
//!   per-principal rate limits (`RESOURCE_EXHAUSTED` with `RetryInfo`),
//!   `grpc_server_handled_total`, and rate-limited `auth_denied` audit events.
//! - [`secret`]: secret settings (`env:`, `file:`, `vault:`) and a type that
//!   never prints them.
//! - [`client`]: what a caller presents (bearer credential, TLS).
//! - [`web`]: the HTTP surfaces' admission by the same table.
//! - [`throttle`]: bad credentials, per source address and key id.
//!
//! Running a service (listeners, startup, shutdown) is `warden-server`'s;
//! this crate is identity and access only. It knows no service: it sees method paths and the audit event
//! shape from the contracts, nothing else.

pub mod api_key;
pub mod authz;
pub mod client;
pub mod jwt;
pub mod layer;
pub mod principal;
pub mod secret;
pub mod throttle;
pub mod tls;
pub mod web;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Code, Status};
use warden_config::ConfigError;
use warden_errors::{Category, WardenError};
use warden_proto::audit::v1::AuditEvent;

pub use api_key::{KeyEntry, KeyFile, KeySet};
pub use client::{CallCredentials, ClientIdentity, OutboundConfig};
pub use layer::AuthLayer;
pub use principal::{Caller, Kind, Principal, capabilities, roles};
pub use secret::{Secret, SecretRef, SecretResolver};
pub use tls::CertificateMapping;

/// A per-principal rate limit for a role and method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// The role it applies to, or `*` for every principal.
    pub role: String,
    /// A full path (`/warden.policy.v1.PolicyService/Evaluate`), a method
    /// name (`Evaluate`), or `*`.
    #[serde(default = "star")]
    pub method: String,
    /// Sustained requests per second per principal.
    pub per_second: u32,
    /// Requests allowed at once above the rate (default: one second's worth).
    #[serde(default)]
    pub burst: u32,
}

fn star() -> String {
    "*".into()
}

/// The `[auth]` section every service's config embeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Turns authentication and authorization off. For experiments only:
    /// warned about at start and every hour.
    pub insecure_no_auth: bool,
    /// The API keys file; empty means `<data_dir>/keys.toml`. A secret
    /// reference (`vault:MOUNT/PATH#FIELD`, `env:NAME`) reads the file's
    /// content from there instead, again after `secret_cache_ttl`.
    pub keys_file: PathBuf,
    /// A secret reference for the HMAC pepper of `hmac-sha256:` digests.
    pub key_pepper: String,
    /// How often the keys file (and the TLS certificate) are re-read.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// PEM certificate chain; with `tls_key`, the listener speaks TLS 1.3 only.
    pub tls_cert: PathBuf,
    /// The certificate's private key: a path, or a secret reference (`file:`, `env:`, `vault:`).
    pub tls_key: String,
    /// PEM CA bundle; when set, clients must present a certificate it signed,
    /// and their principal comes from that certificate.
    pub tls_client_ca: PathBuf,
    /// The SPIFFE trust domain of `spiffe://<domain>/<kind>/<id>` client certificates.
    pub trust_domain: String,
    /// Explicit certificate identity -> principal mappings.
    pub certificates: Vec<CertificateMapping>,
    pub jwt: jwt::JwtConfig,
    /// Serve gRPC reflection (unauthenticated, like health).
    pub reflection: bool,
    /// Extra roles per method path or `package.Service/*`, and the roles
    /// that hold a capability (`assert_agent_attributes`, `assert_time`).
    pub grants: BTreeMap<String, Vec<String>>,
    /// Per-principal rate limits; the first matching rule applies.
    pub rate_limits: Vec<RateLimitRule>,
    /// Most `auth_denied` audit events per second (a flood is summarised).
    pub denial_events_per_second: u32,
    /// Bad credentials a source address (or a key id) may present per
    /// minute, on every surface; past it, it waits (`RESOURCE_EXHAUSTED`,
    /// HTTP 429, with the delay).
    pub bad_credentials_per_minute: u32,
    /// How long resolved secrets are cached before being read again.
    #[serde(with = "humantime_serde")]
    pub secret_cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            insecure_no_auth: false,
            keys_file: PathBuf::new(),
            key_pepper: String::new(),
            reload_interval: Duration::from_secs(2),
            tls_cert: PathBuf::new(),
            tls_key: String::new(),
            tls_client_ca: PathBuf::new(),
            trust_domain: "warden.local".into(),
            certificates: Vec::new(),
            jwt: jwt::JwtConfig::default(),
            reflection: true,
            grants: BTreeMap::new(),
            rate_limits: Vec::new(),
            denial_events_per_second: 10,
            bad_credentials_per_minute: 30,
            secret_cache_ttl: Duration::from_secs(300),
        }
    }
}

impl AuthConfig {
    /// Checks the section; every service's `Validate` calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.is_empty() {
            return Err(ConfigError::invalid("auth.tls_key", "(hidden)", "tls_cert and tls_key go together"));
        }
        if !self.tls_client_ca.as_os_str().is_empty() && self.tls_cert.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "auth.tls_client_ca",
                self.tls_client_ca.display(),
                "mTLS needs tls_cert and tls_key too",
            ));
        }
        if self.reload_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "auth.reload_interval",
                humantime::format_duration(self.reload_interval),
                "must be at least 100ms",
            ));
        }
        for (i, rule) in self.rate_limits.iter().enumerate() {
            if rule.per_second == 0 {
                return Err(ConfigError::invalid(
                    &format!("auth.rate_limits[{i}].per_second"),
                    0,
                    "must be at least 1",
                ));
            }
        }
        for key in self.grants.keys() {
            let known = capabilities::ALL.contains(&key.as_str())
                || authz::split_path(&format!("/{}", key.trim_start_matches('/'))).is_some();
            if !known {
                return Err(ConfigError::invalid(
                    &format!("auth.grants.{key}"),
                    key,
                    format!(
                        "expected a method (`package.Service/Method` or `package.Service/*`) or a capability ({})",
                        capabilities::ALL.join(", ")
                    ),
                ));
            }
        }
        if self.denial_events_per_second == 0 {
            return Err(ConfigError::invalid("auth.denial_events_per_second", 0, "must be at least 1"));
        }
        if self.bad_credentials_per_minute == 0 {
            return Err(ConfigError::invalid("auth.bad_credentials_per_minute", 0, "must be at least 1"));
        }
        SecretRef::parse(&self.key_pepper)
            .map_err(|e| ConfigError::invalid("auth.key_pepper", "(hidden)", e.to_string()))?;
        SecretRef::parse(&self.jwt.hs256_secret)
            .map_err(|e| ConfigError::invalid("auth.jwt.hs256_secret", "(hidden)", e.to_string()))?;
        self.jwt.validate()
    }

    pub fn keys_path(&self, data_dir: &Path) -> PathBuf {
        if self.keys_file.as_os_str().is_empty() { data_dir.join("keys.toml") } else { self.keys_file.clone() }
    }

    /// A config with authentication off, for tests that are about something else.
    pub fn insecure() -> AuthConfig {
        AuthConfig { insecure_no_auth: true, ..AuthConfig::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth: {0}")]
    Secret(#[from] secret::SecretError),
    #[error("auth: TLS: {0}")]
    Tls(String),
    #[error("auth: keys file: {0}")]
    Keys(String),
}

// === metrics ===

const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

static HANDLED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    warden_telemetry::register(
        prometheus::IntCounterVec::new(
            prometheus::Opts::new("grpc_server_handled_total", "RPCs completed on the server, by gRPC code"),
            &["grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("valid metric"),
    )
});

/// One method's authorization and its counters, looked up once per request.
#[derive(Debug)]
pub struct MethodEntry {
    pub path: String,
    /// Health (and reflection, unless turned off): no credentials needed.
    pub open: bool,
    pub roles: Vec<String>,
    /// Counters by gRPC code, created on first use.
    counters: [OnceLock<prometheus::IntCounter>; 17],
    service: String,
    method: String,
}

impl MethodEntry {
    /// An HTTP route, counted under its surface (`grpc_service`) and
    /// `METHOD route` (`grpc_method`).
    fn http(path: &str, surface: &str, roles: Vec<String>) -> MethodEntry {
        MethodEntry {
            path: path.to_owned(),
            open: false,
            roles,
            counters: Default::default(),
            service: surface.to_owned(),
            method: path.to_owned(),
        }
    }

    fn new(path: &str, open: bool, roles: Vec<String>) -> MethodEntry {
        let (service, method) = authz::split_path(path).unwrap_or(("unknown", "unknown"));
        MethodEntry {
            path: path.to_owned(),
            open,
            roles,
            counters: Default::default(),
            service: service.to_owned(),
            method: method.to_owned(),
        }
    }

    pub fn count(&self, code: Code) {
        let index = (code as usize).min(16);
        self.counters[index]
            .get_or_init(|| HANDLED.with_label_values(&[&self.service, &self.method, CODE_NAMES[index]]))
            .inc();
    }
}

// === rate limits ===

/// governor's clock on tokio's time, so tests run with a paused clock.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl governor::clock::Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type KeyedLimiter = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    TokioClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;
type DirectLimiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).expect("at least 1");
    Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate))
}

/// Where denials go: the service turns them into audit events it delivers
/// (the policy engine through its outbox, the audit service into its log).
pub trait DenialSink: Send + Sync + 'static {
    fn record(&self, event: AuditEvent);
}

/// The shared state of one service's identity and access layer.
pub struct Auth {
    config: AuthConfig,
    service: &'static str,
    keys_path: PathBuf,
    keys: ArcSwap<KeySet>,
    /// Hash of the keys file and pepper last loaded, to skip unchanged reloads.
    keys_fingerprint: Mutex<Option<[u8; 32]>>,
    tls_fingerprint: Mutex<Option<[u8; 32]>>,
    jwt: Option<Arc<jwt::JwtVerifier>>,
    tls: Option<Arc<tls::ServerTls>>,
    methods: HashMap<String, Arc<MethodEntry>>,
    limits: Vec<(RateLimitRule, KeyedLimiter, TokioClock)>,
    denial_sink: OnceLock<Arc<dyn DenialSink>>,
    denial_limiter: DirectLimiter,
    suppressed_denials: AtomicU64,
    resolver: SecretResolver,
    throttle: throttle::CredentialThrottle,
    /// The HTTP surfaces' routes (`surface METHOD route`), as method entries.
    http_methods: HashMap<String, Arc<MethodEntry>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("service", &self.service)
            .field("insecure", &self.config.insecure_no_auth)
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

/// Why a request could not be authenticated.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub message: String,
    /// The key id or token issuer, when the credential named one.
    pub credential: String,
    /// Set when the source (or the key id) sent too many bad credentials:
    /// how long it must wait.
    pub retry_after: Option<Duration>,
}

impl Auth {
    /// Builds the layer's state for `service` and starts its background
    /// tasks (keys and certificate reload, JWKS refresh, the insecure-mode
    /// warning); the tasks are returned to be stopped with the server.
    pub async fn start(
        config: &AuthConfig,
        service: &'static str,
        data_dir: &Path,
    ) -> Result<(Arc<Auth>, Vec<tokio::task::JoinHandle<()>>), AuthError> {
        let resolver = SecretResolver::from_process_env(config.secret_cache_ttl);
        Auth::start_with(config, service, data_dir, resolver).await
    }

    pub async fn start_with(
        config: &AuthConfig,
        service: &'static str,
        data_dir: &Path,
        resolver: SecretResolver,
    ) -> Result<(Arc<Auth>, Vec<tokio::task::JoinHandle<()>>), AuthError> {
        let tls = if config.tls_cert.as_os_str().is_empty() {
            None
        } else {
            let key = tls_key_pem(&resolver, &config.tls_key).await?;
            let client_ca = (!config.tls_client_ca.as_os_str().is_empty()).then_some(config.tls_client_ca.as_path());
            Some(Arc::new(
                tls::ServerTls::new(
                    &config.tls_cert,
                    key.expose(),
                    client_ca,
                    &config.trust_domain,
                    config.certificates.clone(),
                )
                .map_err(AuthError::Tls)?,
            ))
        };
        let jwt = if config.jwt.enabled() {
            let secret = resolver.resolve_setting(&config.jwt.hs256_secret).await?;
            Some(jwt::JwtVerifier::new(config.jwt.clone(), secret).await)
        } else {
            None
        };
        let mut methods = HashMap::new();
        for rule in authz::TABLE {
            methods.insert(
                rule.path.to_owned(),
                Arc::new(MethodEntry::new(rule.path, false, authz::roles_for(rule.path, &config.grants))),
            );
        }
        let mut open: Vec<&str> = authz::OPEN_SERVICES.to_vec();
        if config.reflection {
            open.extend(authz::REFLECTION_SERVICES);
        }
        for service in open {
            for method in ["Check", "Watch", "ServerReflectionInfo"] {
                let path = format!("/{service}/{method}");
                methods.insert(path.clone(), Arc::new(MethodEntry::new(&path, true, Vec::new())));
            }
        }
        let clock = TokioClock { start: tokio::time::Instant::now() };
        let limits = config
            .rate_limits
            .iter()
            .map(|rule| {
                (
                    rule.clone(),
                    RateLimiter::dashmap_with_clock(quota(rule.per_second, rule.burst), clock.clone()),
                    clock.clone(),
                )
            })
            .collect();
        let per_second = config.denial_events_per_second;
        let http_methods = authz::HTTP_TABLE
            .iter()
            .map(|rule| {
                let key = web::route_key(rule.surface, rule.method, rule.route);
                let path = format!("{} {}", rule.method, rule.route);
                (key, Arc::new(MethodEntry::http(&path, rule.surface, authz::http_roles(rule, &config.grants))))
            })
            .collect();
        let auth = Arc::new(Auth {
            throttle: throttle::CredentialThrottle::new(config.bad_credentials_per_minute, clock.clone()),
            http_methods,
            keys_path: config.keys_path(data_dir),
            keys: ArcSwap::from_pointee(KeySet::default()),
            keys_fingerprint: Mutex::new(None),
            tls_fingerprint: Mutex::new(None),
            jwt,
            tls,
            methods,
            limits,
            denial_sink: OnceLock::new(),
            denial_limiter: RateLimiter::direct_with_clock(quota(per_second, per_second.saturating_mul(5)), clock),
            suppressed_denials: AtomicU64::new(0),
            resolver,
            service,
            config: config.clone(),
        });
        let mut tasks = Vec::new();
        if config.insecure_no_auth {
            tasks.push(tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    interval.tick().await;
                    tracing::warn!(
                        service,
                        "authentication is off (insecure_no_auth): anyone who can reach this port may call every RPC"
                    );
                }
            }));
            return Ok((auth, tasks));
        }
        if !auth.keys_path.exists() && !setting_is_reference(&config.keys_file) {
            tracing::warn!(service, path = %auth.keys_path.display(), "no api keys file; create keys with `wardenctl keys create`");
        }
        match auth.reload().await {
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(service, %error, "no api keys loaded; the file is re-read every reload_interval")
            }
        }
        if let Some(task) = auth.jwt.as_ref().and_then(|jwt| jwt.spawn_refresh()) {
            tasks.push(task);
        }
        let reloading = auth.clone();
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(reloading.config.reload_interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                if let Err(error) = reloading.reload().await {
                    tracing::warn!(service = reloading.service, %error, "cannot reload keys or certificate; keeping the last good ones");
                }
            }
        }));
        Ok((auth, tasks))
    }

    pub fn insecure(&self) -> bool {
        self.config.insecure_no_auth
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn tls(&self) -> Option<Arc<tls::ServerTls>> {
        self.tls.clone()
    }

    pub fn keys_path(&self) -> &Path {
        &self.keys_path
    }

    /// Where denials are recorded; set once, when the service's audit path exists.
    pub fn set_denial_sink(&self, sink: Arc<dyn DenialSink>) {
        let _ = self.denial_sink.set(sink);
    }

    /// Re-reads the keys file (and the TLS certificate) if it changed.
    /// Returns the number of keys in force.
    pub async fn reload(&self) -> Result<usize, String> {
        if let Some(tls) = &self.tls {
            let key = tls_key_pem(&self.resolver, &self.config.tls_key).await.map_err(|e| e.to_string())?;
            let cert = std::fs::read(&tls.cert_path).map_err(|e| format!("{}: {e}", tls.cert_path.display()))?;
            let fingerprint: [u8; 32] = Sha256::new().chain_update(&cert).chain_update(key.expose()).finalize().into();
            let mut last = self.tls_fingerprint.lock().expect("not poisoned");
            if last.is_some_and(|f| f != fingerprint) {
                tls.cert.swap(&tls.cert_path, key.expose())?;
                tracing::info!(service = self.service, path = %tls.cert_path.display(), "tls certificate reloaded");
            }
            *last = Some(fingerprint);
        }
        let pepper = self.resolver.resolve_setting(&self.config.key_pepper).await.map_err(|e| e.to_string())?;
        // The keys file may itself come from a secret store (`vault:`,
        // `env:`), re-read when its cached value expires.
        if setting_is_reference(&self.config.keys_file) {
            let setting = self.config.keys_file.to_string_lossy();
            let text = self
                .resolver
                .resolve_setting(&setting)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_else(|| Secret::new(""));
            return self.install_keys(text.expose(), pepper);
        }
        let text = match std::fs::read_to_string(&self.keys_path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // No file (yet): no keys. Removing the file revokes them
                // all; said once, not at every reload.
                self.keys.store(Arc::new(KeySet::default()));
                let was_there = self.keys_fingerprint.lock().expect("not poisoned").take().is_some();
                return if was_there {
                    Err(format!("{} was removed: every API key is revoked", self.keys_path.display()))
                } else {
                    Ok(0)
                };
            }
            Err(error) => return Err(format!("cannot read {}: {error}", self.keys_path.display())),
        };
        self.install_keys(&text, pepper)
    }

    /// Parses and swaps in a keys file's text unless it is unchanged.
    fn install_keys(&self, text: &str, pepper: Option<Secret>) -> Result<usize, String> {
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(text.as_bytes())
            .chain_update(pepper.as_ref().map(|p| p.expose()).unwrap_or(""))
            .finalize()
            .into();
        if *self.keys_fingerprint.lock().expect("not poisoned") == Some(fingerprint) {
            return Ok(self.keys.load().len());
        }
        let file = KeyFile::parse(text).map_err(|e| format!("{}: {e}", self.keys_path.display()))?;
        let (set, problems) = KeySet::new(&file, pepper);
        for problem in problems {
            tracing::warn!(service = self.service, %problem, "api key skipped");
        }
        let count = set.len();
        self.keys.store(Arc::new(set));
        *self.keys_fingerprint.lock().expect("not poisoned") = Some(fingerprint);
        tracing::info!(service = self.service, keys = count, path = %self.keys_path.display(), "api keys loaded");
        Ok(count)
    }

    fn method(&self, path: &str) -> Arc<MethodEntry> {
        match self.methods.get(path) {
            Some(entry) => entry.clone(),
            // Not in the table: admins only (routing then answers UNIMPLEMENTED).
            None => Arc::new(MethodEntry::new(path, false, authz::roles_for(path, &self.config.grants))),
        }
    }

    /// The principal behind a request: the client certificate on an mTLS
    /// connection, else the bearer credential.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: Option<&tls::PeerInfo>,
    ) -> Result<Arc<Principal>, Rejection> {
        if let Some(certificate) = peer.and_then(|p| p.certificate.as_ref()) {
            return certificate.clone().map_err(|message| Rejection {
                message,
                credential: "mtls".into(),
                retry_after: None,
            });
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Rejection {
                message: "no credentials: send `authorization: Bearer <API key or token>`".into(),
                credential: String::new(),
                retry_after: None,
            })?;
        if token.starts_with(api_key::TOKEN_PREFIX) {
            let credential = api_key::split_token(token).map(|(id, _)| format!("api_key:{id}")).unwrap_or_default();
            return self.keys.load().verify(token, chrono::Utc::now()).map_err(|e| Rejection {
                message: e.to_string(),
                credential,
                retry_after: None,
            });
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(token).await.map_err(|e| Rejection {
                message: e.to_string(),
                credential: format!("jwt:{}", self.config.jwt.issuer),
                retry_after: None,
            }),
            None => Err(Rejection {
                message: "unrecognised credential (not a Warden API key, and JWT is not configured)".into(),
                credential: String::new(),
                retry_after: None,
            }),
        }
    }

    /// [`Auth::authenticate`], throttled: a source that sent too many bad
    /// credentials is refused before its credential is checked, and each
    /// bad one is charged to its source and its key id (see [`throttle`]).
    pub async fn authenticate_throttled(
        &self,
        headers: &http::HeaderMap,
        peer: Option<&tls::PeerInfo>,
    ) -> Result<Arc<Principal>, Rejection> {
        let source = peer.and_then(|p| p.remote).map(|r| r.ip());
        if let Some(wait) = self.throttle.blocked(source) {
            return Err(Rejection {
                message: format!(
                    "too many bad credentials from {}; retry in {} s",
                    source.map(|s| s.to_string()).unwrap_or_default(),
                    wait.as_secs().max(1)
                ),
                credential: String::new(),
                retry_after: Some(wait),
            });
        }
        match self.authenticate(headers, peer).await {
            Ok(principal) => Ok(principal),
            Err(mut rejection) => {
                let key_id = rejection.credential.strip_prefix("api_key:").unwrap_or_default();
                if let Some(wait) = self.throttle.failed(source, key_id) {
                    rejection.message = format!(
                        "{}; too many bad credentials, retry in {} s",
                        rejection.message,
                        wait.as_secs().max(1)
                    );
                    rejection.retry_after = Some(wait);
                }
                Err(rejection)
            }
        }
    }

    fn authorize(&self, method: &MethodEntry, principal: &Principal) -> Result<(), Status> {
        if method.roles.iter().any(|role| principal.has_role(role)) {
            return Ok(());
        }
        let needed = method.roles.join(" or ");
        let message = format!("principal {principal} lacks the role {needed} needed for {}", method.path);
        let status = WardenError::new(Category::PolicyViolation, "MISSING_ROLE", message.clone())
            .with_code(Code::PermissionDenied)
            .to_status();
        self.record_denial(&method.path, Code::PermissionDenied, &message, Some(principal), "", None);
        Err(status)
    }

    fn rate_limit(&self, method: &MethodEntry, principal: &Principal) -> Result<(), Status> {
        let Some((rule, limiter, clock)) = self.limits.iter().find(|(rule, ..)| {
            (rule.role == "*" || principal.has_role(&rule.role))
                && (rule.method == "*" || rule.method == method.path || rule.method == method.method)
        }) else {
            return Ok(());
        };
        match limiter.check_key(&principal.id) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                use governor::clock::Clock;
                let wait = not_until.wait_time_from(clock.now()).max(Duration::from_millis(1));
                let message = format!(
                    "principal {principal} exceeded {} requests/s on {} (role {}); retry in {} ms",
                    rule.per_second,
                    method.path,
                    rule.role,
                    wait.as_millis()
                );
                self.record_denial(&method.path, Code::ResourceExhausted, &message, Some(principal), "", None);
                Err(WardenError::new(Category::Transient, "RATE_LIMITED", message)
                    .with_code(Code::ResourceExhausted)
                    .with_retry_after(wait)
                    .to_status())
            }
        }
    }

    fn deny_unauthenticated(
        &self,
        method: &MethodEntry,
        peer: Option<&tls::PeerInfo>,
        rejection: &Rejection,
    ) -> Status {
        let code = if rejection.retry_after.is_some() { Code::ResourceExhausted } else { Code::Unauthenticated };
        self.record_denial(
            &method.path,
            code,
            &rejection.message,
            None,
            &rejection.credential,
            peer.and_then(|p| p.remote),
        );
        match rejection.retry_after {
            Some(wait) => WardenError::new(Category::Transient, "TOO_MANY_BAD_CREDENTIALS", rejection.message.clone())
                .with_code(Code::ResourceExhausted)
                .with_retry_after(wait)
                .to_status(),
            None => WardenError::new(Category::Permanent, "UNAUTHENTICATED", rejection.message.clone())
                .with_code(Code::Unauthenticated)
                .to_status(),
        }
    }

    /// Refuses a request whose caller asserted what it may not: records an
    /// `auth_denied` event (naming `agent_id`) and answers `error`.
    pub fn refuse(&self, caller: Option<&Caller>, path: &str, error: WardenError, agent_id: &str) -> Status {
        self.record_denial(path, error.code, &error.message, caller.and_then(Caller::principal), agent_id, None);
        error.to_status()
    }

    /// Whether the caller holds `capability` (see [`capabilities`]): admins,
    /// a role of that name, or a role `[auth.grants]` lists under it. With
    /// authentication off, everyone does.
    pub fn granted(&self, caller: Option<&Caller>, capability: &str) -> bool {
        match caller {
            Some(Caller::Anonymous) => self.insecure(),
            Some(Caller::Principal(principal)) => self.principal_granted(principal, capability),
            None => false,
        }
    }

    /// [`Auth::granted`] for a known principal.
    pub fn principal_granted(&self, principal: &Principal, capability: &str) -> bool {
        principal.has_role(roles::ADMIN)
            || principal.has_role(capability)
            || self.config.grants.get(capability).is_some_and(|roles| roles.iter().any(|r| principal.has_role(r)))
    }

    /// For `Evaluate`: the caller may ask in `agent_id`'s name. Fails closed
    /// when the auth layer did not run.
    pub fn check_agent<T>(&self, request: &tonic::Request<T>, path: &str, agent_id: &str) -> Result<(), Status> {
        match Caller::of(request) {
            Some(Caller::Anonymous) if self.insecure() => Ok(()),
            Some(Caller::Principal(principal)) if principal.may_act_as(agent_id) => Ok(()),
            Some(Caller::Principal(principal)) => {
                let message = format!("principal {} may not act as agent {agent_id}", principal.id);
                self.record_denial(path, Code::PermissionDenied, &message, Some(principal), agent_id, None);
                Err(WardenError::new(Category::PolicyViolation, "IMPERSONATION", message)
                    .with_code(Code::PermissionDenied)
                    .to_status())
            }
            _ => Err(no_caller()),
        }
    }

    /// An agent principal (one without the auditor, service or admin role)
    /// is held to its own agents: returns the agent id to use (its own
    /// when none was given) or refuses another's. Everyone else gets
    /// `requested` back unchanged.
    pub fn own_agent<T>(&self, request: &tonic::Request<T>, path: &str, requested: &str) -> Result<String, Status> {
        match Caller::of(request) {
            Some(Caller::Anonymous) if self.insecure() => Ok(requested.to_owned()),
            Some(Caller::Principal(principal)) => {
                let trusted = [roles::AUDITOR, roles::SERVICE, roles::ADMIN].iter().any(|r| principal.has_role(r));
                if trusted {
                    return Ok(requested.to_owned());
                }
                let agent_id = if requested.is_empty() { principal.id.as_str() } else { requested };
                if principal.may_act_as(agent_id) {
                    Ok(agent_id.to_owned())
                } else {
                    let message = format!("principal {} may not act as agent {agent_id}", principal.id);
                    self.record_denial(path, Code::PermissionDenied, &message, Some(principal), agent_id, None);
                    Err(WardenError::new(Category::PolicyViolation, "IMPERSONATION", message)
                        .with_code(Code::PermissionDenied)
                        .to_status())
                }
            }
            _ => Err(no_caller()),
        }
    }

    /// Whether the caller is held to its own agents (see [`Auth::own_agent`]).
    pub fn is_plain_agent<T>(&self, request: &tonic::Request<T>) -> bool {
        match Caller::of(request) {
            Some(Caller::Principal(p)) => ![roles::AUDITOR, roles::SERVICE, roles::ADMIN].iter().any(|r| p.has_role(r)),
            _ => false,
        }
    }

    /// For audit appends: the actor to record. Empty means the caller;
    /// another name is accepted only from services and admins (who record
    /// on behalf of the people and agents they serve).
    pub fn actor<T>(&self, request: &tonic::Request<T>, path: &str, supplied: &str) -> Result<String, Status> {
        match Caller::of(request) {
            Some(Caller::Anonymous) if self.insecure() => Ok(supplied.to_owned()),
            Some(Caller::Principal(principal)) => {
                if supplied.is_empty() {
                    Ok(principal.id.clone())
                } else if supplied == principal.id
                    || principal.has_role(roles::SERVICE)
                    || principal.has_role(roles::ADMIN)
                {
                    Ok(supplied.to_owned())
                } else {
                    let message = format!("principal {} may not record events as actor {supplied}", principal.id);
                    self.record_denial(path, Code::PermissionDenied, &message, Some(principal), "", None);
                    Err(WardenError::new(Category::PolicyViolation, "IMPERSONATION", message)
                        .with_code(Code::PermissionDenied)
                        .to_status())
                }
            }
            _ => Err(no_caller()),
        }
    }

    /// Records an `auth_denied` audit event, at most
    /// `denial_events_per_second` (the next event reports how many were
    /// suppressed).
    pub fn record_denial(
        &self,
        path: &str,
        code: Code,
        reason: &str,
        principal: Option<&Principal>,
        credential_or_agent: &str,
        remote: Option<SocketAddr>,
    ) {
        tracing::info!(service = self.service, method = path, code = ?code, principal = ?principal.map(|p| p.to_string()), reason, "request denied");
        let Some(sink) = self.denial_sink.get() else { return };
        if self.denial_limiter.check().is_err() {
            self.suppressed_denials.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed_denials.swap(0, Ordering::Relaxed);
        let text = |s: &str| prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(s.to_owned())) };
        let mut fields = BTreeMap::new();
        fields.insert("service".to_string(), text(self.service));
        fields.insert("method".to_string(), text(path));
        fields.insert("code".to_string(), text(CODE_NAMES[(code as usize).min(16)]));
        fields.insert("reason".to_string(), text(reason));
        if let Some(principal) = principal {
            fields.insert("principal".to_string(), text(&principal.id));
            fields.insert("principal_kind".to_string(), text(principal.kind.as_str()));
            fields.insert("credential".to_string(), text(&principal.credential));
        } else if !credential_or_agent.is_empty() {
            fields.insert("credential".to_string(), text(credential_or_agent));
        }
        if let Some(remote) = remote {
            fields.insert("peer".to_string(), text(&remote.ip().to_string()));
        }
        fields.insert(
            "suppressed_before".to_string(),
            prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(suppressed as f64)) },
        );
        let agent_id = match principal {
            // An impersonation names the agent that was claimed.
            Some(_) if !credential_or_agent.is_empty() => credential_or_agent.to_owned(),
            Some(p) if p.kind == Kind::Agent => p.id.clone(),
            _ => String::new(),
        };
        let now = std::time::SystemTime::now();
        sink.record(AuditEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: "auth_denied".into(),
            time: Some(prost_types::Timestamp::from(now)),
            correlation_id: String::new(),
            agent_id,
            actor: principal.map(|p| p.id.clone()).unwrap_or_else(|| "anonymous".into()),
            payload: Some(prost_types::Struct { fields: fields.into_iter().collect() }),
            sensitive: None,
            subject: String::new(),
        });
    }
}

fn setting_is_reference(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.starts_with("vault:") || text.starts_with("env:")
}

fn no_caller() -> Status {
    WardenError::new(Category::Internal, "NO_CALLER", "the request did not pass the auth layer; refusing")
        .with_code(Code::PermissionDenied)
        .to_status()
}

/// The TLS private key: a plain path (read each time, so a key rotated
/// with its certificate is picked up with it), or a secret reference
/// (cached for `secret_cache_ttl`).
async fn tls_key_pem(resolver: &SecretResolver, setting: &str) -> Result<Secret, AuthError> {
    if setting.starts_with("env:") || setting.starts_with("file:") || setting.starts_with("vault:") {
        return resolver.resolve_setting(setting).await?.ok_or_else(|| AuthError::Tls("tls_key is empty".into()));
    }
    std::fs::read_to_string(setting)
        .map(Secret::new)
        .map_err(|e| AuthError::Tls(format!("cannot read tls_key {setting}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(id: &str) -> Principal {
        Principal::new(Kind::Agent, id, vec![roles::AGENT.into()], &[], "test")
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_are_per_principal_and_refill_with_time() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig {
            rate_limits: vec![RateLimitRule {
                role: "agent".into(),
                method: "Evaluate".into(),
                per_second: 2,
                burst: 2,
            }],
            ..AuthConfig::default()
        };
        let (auth, tasks) = Auth::start(&config, "test", dir.path()).await.unwrap();
        let evaluate = auth.method("/warden.policy.v1.PolicyService/Evaluate");
        let query = auth.method("/warden.audit.v1.AuditService/Query");
        let (noisy, quiet) = (principal("noisy"), principal("quiet"));
        assert!(auth.rate_limit(&evaluate, &noisy).is_ok());
        assert!(auth.rate_limit(&evaluate, &noisy).is_ok());
        let limited = auth.rate_limit(&evaluate, &noisy).unwrap_err();
        assert_eq!(limited.code(), Code::ResourceExhausted);
        let retry = WardenError::from_status(&limited).retry_after.unwrap();
        assert!(retry > Duration::ZERO && retry <= Duration::from_millis(500), "{retry:?}");
        // Another principal, and another method, are not limited.
        assert!(auth.rate_limit(&evaluate, &quiet).is_ok());
        assert!(auth.rate_limit(&query, &noisy).is_ok());
        // Half a second later, one more request fits.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(auth.rate_limit(&evaluate, &noisy).is_ok());
        assert!(auth.rate_limit(&evaluate, &noisy).is_err());
        tasks.into_iter().for_each(|t| t.abort());
    }

    #[tokio::test(start_paused = true)]
    async fn denial_events_are_rate_limited_and_count_what_they_suppressed() {
        #[derive(Default)]
        struct Collect(std::sync::Mutex<Vec<AuditEvent>>);
        impl DenialSink for Collect {
            fn record(&self, event: AuditEvent) {
                self.0.lock().unwrap().push(event);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig { denial_events_per_second: 1, ..AuthConfig::default() };
        let (auth, tasks) = Auth::start(&config, "test", dir.path()).await.unwrap();
        let sink = Arc::new(Collect::default());
        auth.set_denial_sink(sink.clone());
        let bot = principal("bot");
        for _ in 0..100 {
            auth.record_denial("/x.Y/Z", Code::PermissionDenied, "no", Some(&bot), "", None);
        }
        // A burst of five, then nothing until time passes.
        assert_eq!(sink.0.lock().unwrap().len(), 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        auth.record_denial("/x.Y/Z", Code::PermissionDenied, "no", Some(&bot), "", None);
        let events = sink.0.lock().unwrap();
        assert_eq!(events.len(), 6);
        let suppressed = &events[5].payload.as_ref().unwrap().fields["suppressed_before"];
        assert_eq!(suppressed.kind, Some(prost_types::value::Kind::NumberValue(95.0)));
        assert_eq!(events[5].event_type, "auth_denied");
        assert_eq!(events[5].actor, "bot");
        tasks.into_iter().for_each(|t| t.abort());
    }

    #[tokio::test]
    async fn a_broken_keys_file_keeps_the_last_good_set_and_a_removed_one_revokes_all() {
        let dir = tempfile::tempdir().unwrap();
        let key = api_key::create_key("bot", Kind::Agent, vec!["agent".into()], vec![], None, None);
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, KeyFile { keys: vec![key.entry] }.to_toml()).unwrap();
        let (auth, tasks) = Auth::start(&AuthConfig::default(), "test", dir.path()).await.unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {}", key.token.expose()).parse().unwrap());
        assert_eq!(auth.authenticate(&headers, None).await.unwrap().id, "bot");
        std::fs::write(&path, "[[key]]\nthis is not toml").unwrap();
        assert!(auth.reload().await.unwrap_err().contains("keys.toml"));
        assert_eq!(auth.authenticate(&headers, None).await.unwrap().id, "bot");
        std::fs::remove_file(&path).unwrap();
        assert!(auth.reload().await.is_err());
        let refused = auth.authenticate(&headers, None).await.unwrap_err();
        assert!(refused.message.contains("unknown API key"), "{}", refused.message);
        let none = auth.authenticate(&http::HeaderMap::new(), None).await.unwrap_err();
        assert!(none.message.starts_with("no credentials"), "{}", none.message);
        tasks.into_iter().for_each(|t| t.abort());
    }

    #[tokio::test]
    async fn the_keys_file_can_come_from_a_secret_store() {
        let dir = tempfile::tempdir().unwrap();
        let key = api_key::create_key("bot", Kind::Agent, vec!["agent".into()], vec![], None, None);
        let env = [("WARDEN_KEYS".to_string(), KeyFile { keys: vec![key.entry] }.to_toml())].into();
        let config = AuthConfig { keys_file: "env:WARDEN_KEYS".into(), ..AuthConfig::default() };
        let resolver = SecretResolver::new(env, Duration::from_secs(60));
        let (auth, tasks) = Auth::start_with(&config, "test", dir.path(), resolver).await.unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {}", key.token.expose()).parse().unwrap());
        assert_eq!(auth.authenticate(&headers, None).await.unwrap().id, "bot");
        tasks.into_iter().for_each(|t| t.abort());
    }

    #[test]
    fn config_checks_name_their_keys() {
        let bad = [
            AuthConfig { tls_cert: "cert.pem".into(), ..AuthConfig::default() },
            AuthConfig { tls_client_ca: "ca.pem".into(), ..AuthConfig::default() },
            AuthConfig {
                jwt: jwt::JwtConfig { issuer: "https://idp".into(), ..Default::default() },
                ..AuthConfig::default()
            },
            AuthConfig { key_pepper: "vault:nope".into(), ..AuthConfig::default() },
        ];
        for (config, key) in
            bad.iter().zip(["auth.tls_key", "auth.tls_client_ca", "auth.jwt.audiences", "auth.key_pepper"])
        {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
        assert!(AuthConfig::default().validate().is_ok());
    }
}
