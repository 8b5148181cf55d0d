//! The approval service's configuration: every key, its default, and checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_auth::{AuthConfig, OutboundConfig};
use warden_config::{ConfigError, Validate, humantime_serde};
use warden_telemetry::TelemetryConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Prometheus `/metrics` address; empty disables it.
    pub metrics_listen: String,
    /// The web inbox's HTTP address; empty disables it.
    pub http_listen: String,
    /// `sqlite://...` or `postgres://...`; empty means `sqlite://<data_dir>/warden.db`.
    pub database_url: String,
    pub data_dir: PathBuf,
    /// The approval routes file (YAML); empty uses the built-in default
    /// route (any `approver`, one approval, 1 h timeout, 15 min grant).
    pub routes: PathBuf,
    /// The audit service that records every step; empty records none.
    pub audit_url: String,
    /// How often expiry, escalation and reminders are checked.
    #[serde(with = "humantime_serde")]
    pub clock_interval: Duration,
    /// How often the outbox is delivered.
    #[serde(with = "humantime_serde")]
    pub outbox_interval: Duration,
    /// How often a watcher re-reads its request, to see reviews made
    /// through other replicas.
    #[serde(with = "humantime_serde")]
    pub watch_poll: Duration,
    /// What notifications may reach: redirects (`none`, `same-origin`)
    /// and link-local destinations (cloud metadata; refused by default).
    pub webhooks: warden_server::webhook::WebhookPolicy,
    pub auth: AuthConfig,
    /// What this service presents to the audit service.
    pub outbound: OutboundConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        ApprovalConfig {
            listen: "127.0.0.1:50053".into(),
            metrics_listen: "127.0.0.1:9093".into(),
            http_listen: "127.0.0.1:8093".into(),
            database_url: String::new(),
            data_dir: PathBuf::from("./warden-data"),
            routes: PathBuf::new(),
            audit_url: String::new(),
            clock_interval: Duration::from_secs(1),
            outbox_interval: Duration::from_millis(200),
            watch_poll: Duration::from_secs(1),
            webhooks: Default::default(),
            auth: AuthConfig::default(),
            outbound: OutboundConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Validate for ApprovalConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let intervals = [
            ("clock_interval", self.clock_interval),
            ("outbox_interval", self.outbox_interval),
            ("watch_poll", self.watch_poll),
        ];
        warden_config::validate_delivering_service(&self.http_listen, &self.audit_url, &intervals)?;
        warden_config::validate_service_keys(&self.listen, &self.metrics_listen, &self.database_url)?;
        self.auth.validate()?;
        self.outbound.validate()
    }
}

impl ApprovalConfig {
    /// A config for in-process tests: ephemeral port, no metrics listener,
    /// authentication off (tests of identity turn it on).
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        ApprovalConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: String::new(),
            http_listen: String::new(),
            data_dir: data_dir.into(),
            auth: AuthConfig::insecure(),
            ..ApprovalConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use warden_config::Sources;

    use super::*;

    #[test]
    fn keys_are_read_and_checked() {
        let sources =
            Sources::default().with_override("clock_interval", "5s").with_override("routes", "approvals.yaml");
        let config: ApprovalConfig = warden_config::load(&sources).unwrap();
        assert_eq!((config.clock_interval, config.routes), (Duration::from_secs(5), PathBuf::from("approvals.yaml")));
        for (key, value) in [("audit_url", "audit:50052"), ("watch_poll", "1ms"), ("listen", "nowhere")] {
            let error = warden_config::load::<ApprovalConfig>(&Sources::default().with_override(key, value))
                .unwrap_err()
                .to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}={value}: {error}");
        }
    }
}
