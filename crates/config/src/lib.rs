//! Layered configuration for Warden services.
//!
//! Every service loads its config the same way: its struct's `Default`
//! values, then an optional TOML file (`--config`), then the environment
//! (`WARDEN__SECTION__KEY`), then command-line flags, then the service's own
//! validation. Unknown keys are errors (services use
//! `#[serde(deny_unknown_fields)]`), and every error names the key at fault.
//!
//! The environment is passed in as a map so tests inject it instead of
//! mutating the process environment. This crate knows nothing about any
//! particular service.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use humantime_serde;

/// The prefix of environment variables Warden reads.
pub const ENV_PREFIX: &str = "WARDEN";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, environment or flags could not be merged or deserialised.
    /// The message names the key (the `config` crate includes it).
    #[error("configuration error: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration: key `{key}` = {value:?}: {message}")]
    Invalid { key: String, value: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: &str, value: impl Display, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.to_owned(), value: value.to_string(), message: message.into() }
    }
}

/// Where a service's configuration comes from, in increasing priority.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Optional TOML file.
    pub file: Option<PathBuf>,
    /// The environment; only `WARDEN__*` keys are read.
    pub env: HashMap<String, String>,
    /// Flag values as (dotted key, value), highest priority.
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// Sources from the process environment, with no file and no flags.
    pub fn from_process_env() -> Self {
        Sources { env: std::env::vars().collect(), ..Sources::default() }
    }

    pub fn with_override(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push((key.into(), value.into()));
        self
    }

    /// A flag's value as an override, when the flag was given.
    pub fn flag(&mut self, key: &str, value: Option<impl Display>) {
        if let Some(value) = value {
            self.overrides.push((key.to_owned(), value.to_string()));
        }
    }
}

/// Something that can check its own values after loading.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T`: defaults, file, environment, flags, then validation.
pub fn load<T>(sources: &Sources) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let defaults = config::Config::try_from(&T::default())?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = &sources.file {
        builder =
            builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml).required(true));
    }
    // Only our own variables: `WARDEN__LISTEN`, `WARDEN__TELEMETRY__LOG_FORMAT`.
    let env: HashMap<String, String> = sources
        .env
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env)),
    );
    for (key, value) in &sources.overrides {
        builder = builder.set_override(key.as_str(), value.as_str())?;
    }
    let config: T = builder.build()?.try_deserialize()?;
    config.validate()?;
    Ok(config)
}

/// The flags every Warden service accepts, with the same names everywhere.
/// Each is also settable in the config file and the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address, e.g. 127.0.0.1:50051.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Prometheus /metrics listen address; empty disables it.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Database URL: sqlite://PATH (created if missing) or postgres://...
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Directory for local state (default ./warden-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// API keys file (default <data-dir>/keys.toml); re-read every few seconds.
    #[arg(long, value_name = "FILE")]
    pub keys_file: Option<PathBuf>,
    /// PEM certificate chain: serve TLS 1.3 only (with --tls-key).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key: a path, or env:NAME / file:PATH / vault:MOUNT/PATH#FIELD.
    #[arg(long, value_name = "KEY")]
    pub tls_key: Option<String>,
    /// CA bundle for client certificates: require mTLS, principals from certificates.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Turn authentication off. For experiments only: anyone who can reach
    /// the port may call every RPC (warned about at start and hourly).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Instead of serving: ask the service already running with this
    /// configuration for its health (grpc.health.v1) and exit 0 when it
    /// serves, 1 when not. For container health checks.
    #[arg(long)]
    pub healthcheck: bool,
}

impl CommonArgs {
    /// The sources these flags describe, over the process environment.
    pub fn sources(&self) -> Sources {
        let mut sources = Sources::from_process_env();
        sources.file = self.config.clone();
        sources.flag("listen", self.listen.as_ref());
        sources.flag("metrics_listen", self.metrics_listen.as_ref());
        sources.flag("database_url", self.database_url.as_ref());
        sources.flag("data_dir", self.data_dir.as_ref().map(|p| p.display()));
        sources.flag("auth.keys_file", self.keys_file.as_ref().map(|p| p.display()));
        sources.flag("auth.tls_cert", self.tls_cert.as_ref().map(|p| p.display()));
        sources.flag("auth.tls_key", self.tls_key.as_ref());
        sources.flag("auth.tls_client_ca", self.tls_client_ca.as_ref().map(|p| p.display()));
        sources.flag("auth.insecure_no_auth", self.insecure_no_auth.then_some("true"));
        sources
    }
}

/// Parses a socket address, naming the key on error.
pub fn parse_addr(key: &str, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(key, value, "expected HOST:PORT with a numeric IP, e.g. 127.0.0.1:50051"))
}

/// Checks the keys every service has: `listen`, `metrics_listen` (empty
/// disables it) and `database_url` (empty means SQLite in the data
/// directory).
pub fn validate_service_keys(listen: &str, metrics_listen: &str, database_url: &str) -> Result<(), ConfigError> {
    parse_addr("listen", listen)?;
    if !metrics_listen.is_empty() {
        parse_addr("metrics_listen", metrics_listen)?;
    }
    if !database_url.is_empty() && !["sqlite:", "postgres:", "postgresql:"].iter().any(|p| database_url.starts_with(p))
    {
        return Err(ConfigError::invalid("database_url", database_url, "expected sqlite://PATH or postgres://..."));
    }
    Ok(())
}

/// Checks the keys of a service with an HTTP surface (`http_listen`, empty
/// disables it) that records in the audit service (`audit_url`, empty:
/// it records nothing), and its delivery intervals.
pub fn validate_delivering_service(
    http_listen: &str,
    audit_url: &str,
    intervals: &[(&str, std::time::Duration)],
) -> Result<(), ConfigError> {
    if !http_listen.is_empty() {
        parse_addr("http_listen", http_listen)?;
    }
    validate_service_url("audit_url", audit_url)?;
    validate_intervals(intervals)
}

/// Checks the URL of another service (`http(s)://HOST:PORT`); empty means
/// "not configured" and passes.
pub fn validate_service_url(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.starts_with("http://") || value.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, value, "expected http(s)://HOST:PORT"))
    }
}

/// Checks that each interval is at least 10 ms (a shorter one would spin).
pub fn validate_intervals(intervals: &[(&str, std::time::Duration)]) -> Result<(), ConfigError> {
    for (key, value) in intervals {
        if *value < std::time::Duration::from_millis(10) {
            return Err(ConfigError::invalid(key, format!("{value:?}"), "must be at least 10ms"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        listen: String,
        workers: u32,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
        nested: Nested,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        level: String,
    }

    impl Default for Example {
        fn default() -> Self {
            Example {
                listen: "127.0.0.1:1".into(),
                workers: 4,
                timeout: Duration::from_secs(5),
                nested: Nested::default(),
            }
        }
    }
    impl Default for Nested {
        fn default() -> Self {
            Nested { level: "info".into() }
        }
    }
    impl Validate for Example {
        fn validate(&self) -> Result<(), ConfigError> {
            parse_addr("listen", &self.listen)?;
            if self.workers == 0 {
                return Err(ConfigError::invalid("workers", self.workers, "must be at least 1"));
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_then_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("warden.toml");
        std::fs::write(&file, "workers = 8\ntimeout = \"2s\"\n[nested]\nlevel = \"debug\"\n").unwrap();
        let sources = Sources {
            file: Some(file),
            env: env(&[("WARDEN__WORKERS", "16"), ("WARDEN__NESTED__LEVEL", "warn"), ("HOME", "/root")]),
            overrides: vec![("workers".into(), "32".into())],
        };
        let config: Example = load(&sources).unwrap();
        assert_eq!(config.workers, 32);
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.nested.level, "warn");
        assert_eq!(config.listen, "127.0.0.1:1");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let sources = Sources { env: env(&[("WARDEN__WORKRES", "3")]), ..Sources::default() };
        let error = load::<Example>(&sources).unwrap_err().to_string();
        assert!(error.contains("workres"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("warden.toml");
        std::fs::write(&file, "[nested]\nlevle = \"x\"\n").unwrap();
        let error = load::<Example>(&Sources { file: Some(file), ..Sources::default() }).unwrap_err().to_string();
        assert!(error.contains("levle"), "{error}");
    }

    #[test]
    fn bad_values_name_the_key_and_value() {
        let error = load::<Example>(&Sources::default().with_override("listen", "nowhere")).unwrap_err().to_string();
        assert!(error.contains("`listen`") && error.contains("nowhere"), "{error}");
        let error = load::<Example>(&Sources::default().with_override("workers", "0")).unwrap_err().to_string();
        assert!(error.contains("`workers`"), "{error}");
        let error = load::<Example>(&Sources::default().with_override("timeout", "soon")).unwrap_err().to_string();
        assert!(error.contains("timeout"), "{error}");
    }
}
