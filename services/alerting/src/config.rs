//! The alerting service's configuration: every key, its default, and checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_auth::{AuthConfig, OutboundConfig};
use warden_config::{ConfigError, Validate, humantime_serde};
use warden_telemetry::TelemetryConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Prometheus `/metrics` address; empty disables it.
    pub metrics_listen: String,
    /// Alertmanager's HTTP API (`/api/v2/...`), for Prometheus and
    /// `amtool`; empty disables it.
    pub http_listen: String,
    /// `sqlite://...` or `postgres://...`; empty means `sqlite://<data_dir>/warden.db`.
    pub database_url: String,
    pub data_dir: PathBuf,
    /// Rule files or directories (Prometheus' rule-file shape), separated
    /// by commas; empty uses the built-in rules
    /// (`examples/alerting/rules.yaml`).
    pub rules: String,
    /// The routing file (Alertmanager's `alertmanager.yml` shape); empty
    /// sends every alert to the log.
    pub routing: PathBuf,
    /// The audit service: alerts are derived from its log, and every
    /// alert change and notification is recorded there. Empty: neither.
    pub audit_url: String,
    /// Groups that name no `interval` are evaluated this often.
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// How often the derived series are sampled (in the events' time).
    #[serde(with = "humantime_serde")]
    pub scrape_interval: Duration,
    /// How often alerts are dispatched and posted alerts expire.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    /// How often the outbox is delivered.
    #[serde(with = "humantime_serde")]
    pub outbox_interval: Duration,
    /// How long a replica holds a notification it is delivering: after a
    /// crash mid-delivery, another replica (or the restarted one) sends it
    /// after this long. Deliveries time out at half of it.
    #[serde(with = "humantime_serde")]
    pub delivery_lease: Duration,
    /// How often the derived series are saved with their audit position.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Reload rule and routing files when they change.
    pub watch: bool,
    /// Shown to receivers as `externalURL`, and the start of a rule
    /// alert's `generatorURL` (`EXTERNAL_URL/rules#...`). Empty: the
    /// Alertmanager API's own address (`http://HOSTNAME:PORT` when it
    /// listens on every interface).
    pub external_url: String,
    /// What notifications may reach: redirects (`none`, `same-origin`)
    /// and link-local destinations (cloud metadata; refused by default).
    pub webhooks: warden_server::webhook::WebhookPolicy,
    pub auth: AuthConfig,
    /// What this service presents to the audit service.
    pub outbound: OutboundConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            listen: "127.0.0.1:50054".into(),
            metrics_listen: "127.0.0.1:9094".into(),
            http_listen: "127.0.0.1:9095".into(),
            database_url: String::new(),
            data_dir: PathBuf::from("./warden-data"),
            rules: String::new(),
            routing: PathBuf::new(),
            audit_url: String::new(),
            evaluation_interval: Duration::from_secs(30),
            scrape_interval: Duration::from_secs(15),
            tick_interval: Duration::from_secs(1),
            outbox_interval: Duration::from_millis(200),
            delivery_lease: Duration::from_secs(60),
            snapshot_interval: Duration::from_secs(10),
            watch: true,
            external_url: String::new(),
            webhooks: Default::default(),
            auth: AuthConfig::default(),
            outbound: OutboundConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Validate for AlertingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        warden_config::validate_service_keys(&self.listen, &self.metrics_listen, &self.database_url)?;
        let intervals = [
            ("evaluation_interval", self.evaluation_interval),
            ("scrape_interval", self.scrape_interval),
            ("tick_interval", self.tick_interval),
            ("outbox_interval", self.outbox_interval),
            ("snapshot_interval", self.snapshot_interval),
            ("delivery_lease", self.delivery_lease),
        ];
        warden_config::validate_delivering_service(&self.http_listen, &self.audit_url, &intervals)?;
        self.auth.validate()?;
        self.outbound.validate()
    }
}

impl AlertingConfig {
    /// The rule files and directories named by `rules`.
    pub fn rule_paths(&self) -> Vec<PathBuf> {
        self.rules.split(',').map(str::trim).filter(|p| !p.is_empty()).map(PathBuf::from).collect()
    }

    /// A config for in-process tests: ephemeral ports, no metrics listener,
    /// authentication off (tests of identity turn it on).
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        AlertingConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: String::new(),
            http_listen: "127.0.0.1:0".into(),
            data_dir: data_dir.into(),
            watch: false,
            auth: AuthConfig::insecure(),
            ..AlertingConfig::default()
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
            Sources::default().with_override("scrape_interval", "5s").with_override("routing", "alertmanager.yml");
        let config: AlertingConfig = warden_config::load(&sources).unwrap();
        assert_eq!(
            (config.scrape_interval, config.routing),
            (Duration::from_secs(5), PathBuf::from("alertmanager.yml"))
        );
        for (key, value) in [("audit_url", "audit:50052"), ("tick_interval", "1ms"), ("http_listen", "nowhere")] {
            let error = warden_config::load::<AlertingConfig>(&Sources::default().with_override(key, value))
                .unwrap_err()
                .to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}={value}: {error}");
        }
    }
}
