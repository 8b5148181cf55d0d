//! The audit service's configuration: every key, its default, and checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_config::{ConfigError, Validate, humantime_serde};
use warden_telemetry::TelemetryConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Prometheus `/metrics` address; empty disables it.
    pub metrics_listen: String,
    /// `sqlite://...` or `postgres://...`; empty means `sqlite://<data_dir>/warden.db`.
    pub database_url: String,
    /// Local state: the signing and master keys when not configured.
    pub data_dir: PathBuf,
    /// The log's origin line in checkpoints, and the signing key's name.
    pub origin: String,
    /// Checkpoint signing key in the note form `PRIVATE+KEY+<name>+<hash>+<key>`,
    /// or a secret reference (`env:NAME`, `file:PATH`, `vault:MOUNT/PATH#FIELD`);
    /// empty reads `signing_key_file`.
    pub signing_key: String,
    /// File holding the signing key; empty means `<data_dir>/audit-signing.key`
    /// (created on first start).
    pub signing_key_file: PathBuf,
    /// Master key that wraps subjects' data keys: 64 hex digits or a secret
    /// reference; empty reads `master_key_file`.
    pub master_key: String,
    /// File holding the master key; empty means `<data_dir>/audit-master.key`
    /// (created on first start).
    pub master_key_file: PathBuf,
    /// Events recorded longer ago than this lose their payload (never their
    /// hash); 0s keeps payloads forever.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Most events committed in one transaction (group commit).
    pub max_batch: usize,
    /// PostgreSQL: a batch of several calls is split across up to this
    /// many transactions on as many connections, whose writes run at once
    /// and which commit in order (1 turns this off).
    pub append_connections: usize,
    /// How far into the future an event's own `time` may be, against this
    /// service's clock, before the event is refused (`INVALID_ARGUMENT`).
    /// Every event also records when this service received it.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Who may call, and how callers prove it.
    pub auth: warden_auth::AuthConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            listen: "127.0.0.1:50052".into(),
            metrics_listen: "127.0.0.1:9092".into(),
            database_url: String::new(),
            data_dir: PathBuf::from("./warden-data"),
            origin: "warden.local/audit".into(),
            signing_key: String::new(),
            signing_key_file: PathBuf::new(),
            master_key: String::new(),
            master_key_file: PathBuf::new(),
            retention: Duration::ZERO,
            retention_interval: Duration::from_secs(3600),
            max_batch: 1000,
            append_connections: 3,
            max_future_skew: Duration::from_secs(300),
            auth: warden_auth::AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Validate for AuditConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        warden_config::validate_service_keys(&self.listen, &self.metrics_listen, &self.database_url)?;
        if self.origin.is_empty() || self.origin.chars().any(|c| c.is_whitespace() || c == '+') {
            return Err(ConfigError::invalid("origin", &self.origin, "must be non-empty, without spaces or '+'"));
        }
        let reference = |s: &str| ["env:", "file:", "vault:"].iter().any(|p| s.starts_with(p));
        if !self.master_key.is_empty()
            && !reference(&self.master_key)
            && (self.master_key.len() != 64 || hex::decode(&self.master_key).is_err())
        {
            return Err(ConfigError::invalid("master_key", "(hidden)", "must be 64 hex digits (32 bytes)"));
        }
        if !(1..=10_000).contains(&self.max_batch) {
            return Err(ConfigError::invalid("max_batch", self.max_batch, "must be between 1 and 10000"));
        }
        if !(1..=8).contains(&self.append_connections) {
            return Err(ConfigError::invalid("append_connections", self.append_connections, "must be between 1 and 8"));
        }
        if self.max_future_skew > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::invalid(
                "max_future_skew",
                humantime::format_duration(self.max_future_skew),
                "must be at most 24h",
            ));
        }
        if self.retention_interval < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "retention_interval",
                humantime::format_duration(self.retention_interval),
                "must be at least 1s",
            ));
        }
        self.auth.validate()
    }
}

impl AuditConfig {
    pub fn signing_key_path(&self) -> PathBuf {
        if self.signing_key_file.as_os_str().is_empty() {
            self.data_dir.join("audit-signing.key")
        } else {
            self.signing_key_file.clone()
        }
    }

    pub fn master_key_path(&self) -> PathBuf {
        if self.master_key_file.as_os_str().is_empty() {
            self.data_dir.join("audit-master.key")
        } else {
            self.master_key_file.clone()
        }
    }

    /// A config for in-process tests: ephemeral port, no metrics listener,
    /// authentication off (tests of identity and access turn it on).
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        AuditConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: String::new(),
            data_dir: data_dir.into(),
            auth: warden_auth::AuthConfig::insecure(),
            ..AuditConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use warden_config::Sources;

    use super::*;

    #[test]
    fn batching_keys_are_read_and_checked() {
        let sources = Sources::default().with_override("append_connections", "4").with_override("max_batch", "500");
        let config: AuditConfig = warden_config::load(&sources).unwrap();
        assert_eq!((config.append_connections, config.max_batch), (4, 500));
        for (key, value) in [("append_connections", "0"), ("append_connections", "9"), ("max_batch", "0")] {
            let error = warden_config::load::<AuditConfig>(&Sources::default().with_override(key, value))
                .unwrap_err()
                .to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}={value}: {error}");
        }
    }
}
