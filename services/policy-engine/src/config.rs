//! The policy engine's configuration: every key, its default, and checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_auth::{AuthConfig, OutboundConfig};
use warden_config::{ConfigError, Validate, humantime_serde};
use warden_telemetry::TelemetryConfig;

use crate::decision_log::DecisionLogConfig;

/// The default `max_clock_skew`: a clock kept by NTP is milliseconds off;
/// five seconds also covers a slow network and a retry.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Settable in the TOML file, as `WARDEN__KEY` / `WARDEN__SECTION__KEY`
/// environment variables, and (the common ones) as flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyEngineConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Prometheus `/metrics` address; empty disables it.
    pub metrics_listen: String,
    /// `sqlite://...` or `postgres://...`; empty means `sqlite://<data_dir>/warden.db`.
    pub database_url: String,
    /// Local state directory.
    pub data_dir: PathBuf,
    /// Directory of `*.yaml` policy files.
    pub policies: PathBuf,
    /// Reload policies when files in the directory change.
    pub watch_policies: bool,
    /// The most a rule's condition may cost to evaluate, in cost units (one
    /// per comprehension iteration or element built; see "Cost" in
    /// `docs/src/policies.md`). A condition whose load-time estimate is higher is a
    /// load error; evaluation past it is a run-time error (the rule denies).
    pub max_condition_cost: u64,
    /// How far the `time` an agent sends may be from the engine's clock
    /// (the engine's clock is used either way); further is refused.
    /// Principals granted `assert_time` may evaluate at any time.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Redis for limits shared by replicas; empty counts limits in memory.
    pub redis_url: String,
    /// How long a limit check may wait for Redis before failing closed.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// How often kill switches are re-read from the database, so a switch
    /// set on one replica reaches the others.
    #[serde(with = "humantime_serde")]
    pub kill_switch_refresh: Duration,
    /// The audit service (`http://HOST:PORT`) that receives the decision
    /// log; empty writes decisions to the log output only.
    pub audit_url: String,
    pub decision_log: DecisionLogConfig,
    /// The approval service (`http://HOST:PORT`): a decision that requires
    /// approval opens a request there, and `approval_id` is redeemed there.
    /// Empty: require_approval is answered as is, and an `approval_id` is
    /// refused (deny).
    pub approval_url: String,
    /// Who may call, and how callers prove it.
    pub auth: AuthConfig,
    /// What this service presents to the audit service.
    pub outbound: OutboundConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for PolicyEngineConfig {
    fn default() -> Self {
        PolicyEngineConfig {
            listen: "127.0.0.1:50051".into(),
            metrics_listen: "127.0.0.1:9091".into(),
            database_url: String::new(),
            data_dir: PathBuf::from("./warden-data"),
            policies: PathBuf::from("./policies"),
            watch_policies: true,
            max_condition_cost: warden_policy::cel::cost::MAX_COST,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            redis_url: String::new(),
            redis_timeout: Duration::from_millis(250),
            kill_switch_refresh: Duration::from_secs(2),
            audit_url: String::new(),
            decision_log: DecisionLogConfig::default(),
            approval_url: String::new(),
            auth: AuthConfig::default(),
            outbound: OutboundConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Validate for PolicyEngineConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        warden_config::validate_service_keys(&self.listen, &self.metrics_listen, &self.database_url)?;
        if !self.redis_url.is_empty()
            && !self.redis_url.starts_with("redis://")
            && !self.redis_url.starts_with("rediss://")
        {
            return Err(ConfigError::invalid("redis_url", &self.redis_url, "expected redis://HOST:PORT"));
        }
        if self.max_clock_skew > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "max_clock_skew",
                humantime::format_duration(self.max_clock_skew),
                "must be at most 1h (grant assert_time to callers that evaluate at other times)",
            ));
        }
        if self.redis_timeout.is_zero() {
            return Err(ConfigError::invalid("redis_timeout", "0s", "must be longer than zero"));
        }
        if self.kill_switch_refresh < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "kill_switch_refresh",
                humantime::format_duration(self.kill_switch_refresh),
                "must be at least 100ms",
            ));
        }
        warden_config::validate_service_url("audit_url", &self.audit_url)?;
        warden_config::validate_service_url("approval_url", &self.approval_url)?;
        if self.decision_log.segment_bytes < 4096 {
            return Err(ConfigError::invalid(
                "decision_log.segment_bytes",
                self.decision_log.segment_bytes,
                "must be at least 4096",
            ));
        }
        if self.decision_log.outbox_cap == 0 {
            return Err(ConfigError::invalid("decision_log.outbox_cap", 0, "must be at least 1"));
        }
        if !(1..=1000).contains(&self.decision_log.batch) {
            return Err(ConfigError::invalid(
                "decision_log.batch",
                self.decision_log.batch,
                "must be between 1 and 1000",
            ));
        }
        if !(1_000..=1_000_000_000).contains(&self.max_condition_cost) {
            return Err(ConfigError::invalid(
                "max_condition_cost",
                self.max_condition_cost,
                "must be between 1000 and 1000000000",
            ));
        }
        if self.policies.as_os_str().is_empty() {
            return Err(ConfigError::invalid("policies", "", "must name a directory"));
        }
        self.auth.validate()?;
        self.outbound.validate()
    }
}

impl PolicyEngineConfig {
    /// How the policy directory is loaded.
    pub fn load_options(&self) -> warden_policy::policy::LoadOptions {
        warden_policy::policy::LoadOptions { max_condition_cost: self.max_condition_cost }
    }

    /// A config for in-process tests: ephemeral ports, no metrics listener,
    /// authentication off (tests of identity and access turn it on).
    pub fn for_tests(policies: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        PolicyEngineConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: String::new(),
            policies: policies.into(),
            data_dir: data_dir.into(),
            auth: AuthConfig::insecure(),
            ..PolicyEngineConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_config::Sources;

    #[test]
    fn environment_and_flags_override_defaults() {
        let sources = Sources {
            env: [
                ("WARDEN__REDIS_URL".to_string(), "redis://127.0.0.1:6379".to_string()),
                ("WARDEN__TELEMETRY__LOG_FORMAT".to_string(), "json".to_string()),
                ("WARDEN__KILL_SWITCH_REFRESH".to_string(), "5s".to_string()),
                ("WARDEN__MAX_CONDITION_COST".to_string(), "50000".to_string()),
            ]
            .into(),
            ..Sources::default()
        }
        .with_override("listen", "0.0.0.0:6000");
        let config: PolicyEngineConfig = warden_config::load(&sources).unwrap();
        assert_eq!(config.listen, "0.0.0.0:6000");
        assert_eq!(config.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(config.telemetry.log_format, warden_telemetry::LogFormat::Json);
        assert_eq!(config.kill_switch_refresh, Duration::from_secs(5));
        assert_eq!(config.load_options().max_condition_cost, 50_000);
        assert_eq!(
            warden_server::runtime::database_url(&config.database_url, &config.data_dir),
            "sqlite://./warden-data/warden.db"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (key, value, expected) in [
            ("listen", "localhost", "`listen`"),
            ("database_url", "mysql://x", "`database_url`"),
            ("redis_url", "127.0.0.1:6379", "`redis_url`"),
            ("kill_switch_refresh", "1ms", "`kill_switch_refresh`"),
            ("max_condition_cost", "10", "`max_condition_cost`"),
            ("telemetry.log_format", "xml", "log_format"),
            ("polices", "x", "polices"),
        ] {
            let error = warden_config::load::<PolicyEngineConfig>(&Sources::default().with_override(key, value))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{key}={value}: {error}");
        }
    }
}
