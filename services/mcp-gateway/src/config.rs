//! The MCP gateway's configuration: every key, its default, and checks.
//! The upstream MCP servers are in a file of their own
//! ([`crate::upstreams::UpstreamsFile`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_auth::{AuthConfig, OutboundConfig};
use warden_config::{ConfigError, Validate, humantime_serde};
use warden_telemetry::TelemetryConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// gRPC listen address (health, dead letters).
    pub listen: String,
    /// Prometheus `/metrics` address; empty disables it.
    pub metrics_listen: String,
    /// Where agents reach MCP over Streamable HTTP (`POST /mcp`).
    pub mcp_listen: String,
    /// The address agents use for this gateway's MCP endpoint
    /// (`https://tools.example.com/mcp`): the resource its Protected
    /// Resource Metadata names. Empty: `http://<mcp_listen>/mcp`.
    pub public_url: String,
    /// Host names (or `host:port`) the MCP endpoint answers to, against DNS
    /// rebinding; loopback names are always accepted.
    pub allowed_hosts: Vec<String>,
    /// `sqlite://...` or `postgres://...` (the outbox of audit events);
    /// empty means `sqlite://<data_dir>/warden.db`.
    pub database_url: String,
    pub data_dir: PathBuf,
    /// The upstream MCP servers (YAML); required.
    pub upstreams: PathBuf,
    /// The policy engine that decides every tool call.
    pub policy_engine_url: String,
    /// The approval service held calls wait on; empty: a held call is
    /// answered at once with the approval's id.
    pub approval_url: String,
    /// The audit service that records what each call did; empty records
    /// nothing (decisions are still recorded by the policy engine).
    pub audit_url: String,
    /// How long a call held for approval waits before the agent gets an
    /// answer naming the approval (the same call later redeems it).
    #[serde(with = "humantime_serde")]
    pub approval_wait: Duration,
    /// How often a held call tells the agent it is still waiting (MCP
    /// progress notifications, when the call asked for them).
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// How often the policies in force and the upstreams' tools are read
    /// again (a change is announced with `notifications/tools/list_changed`).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How often the outbox is delivered to the audit service.
    #[serde(with = "humantime_serde")]
    pub outbox_interval: Duration,
    /// The separator between an upstream's name and its tool's in the
    /// names agents see (`billing__refund`).
    pub separator: String,
    pub auth: AuthConfig,
    /// What this gateway presents to the policy engine, the approval
    /// service and the audit service: a service credential allowed to act
    /// for the agents it serves (`agents = ["*"]` in its key entry).
    pub outbound: OutboundConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:50055".into(),
            metrics_listen: "127.0.0.1:9096".into(),
            mcp_listen: "127.0.0.1:8095".into(),
            public_url: String::new(),
            allowed_hosts: Vec::new(),
            database_url: String::new(),
            data_dir: PathBuf::from("./warden-data"),
            upstreams: PathBuf::new(),
            policy_engine_url: "http://127.0.0.1:50051".into(),
            approval_url: String::new(),
            audit_url: String::new(),
            approval_wait: Duration::from_secs(60),
            progress_interval: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(10),
            outbox_interval: Duration::from_millis(200),
            separator: "__".into(),
            auth: AuthConfig::default(),
            outbound: OutboundConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        warden_config::validate_service_keys(&self.listen, &self.metrics_listen, &self.database_url)?;
        warden_config::parse_addr("mcp_listen", &self.mcp_listen)?;
        if self.upstreams.as_os_str().is_empty() {
            return Err(ConfigError::invalid("upstreams", "", "the upstream MCP servers file is required"));
        }
        if self.policy_engine_url.is_empty() {
            return Err(ConfigError::invalid("policy_engine_url", "", "every tool call is decided there; required"));
        }
        warden_config::validate_service_url("policy_engine_url", &self.policy_engine_url)?;
        warden_config::validate_service_url("approval_url", &self.approval_url)?;
        warden_config::validate_service_url("audit_url", &self.audit_url)?;
        if !self.public_url.is_empty() {
            warden_config::validate_service_url("public_url", &self.public_url)?;
        }
        if self.separator.is_empty()
            || !self.separator.chars().all(|c| c == '_' || c == '-' || c == '.')
            || self.separator.len() > 4
        {
            return Err(ConfigError::invalid("separator", &self.separator, "one to four of '_', '-', '.'"));
        }
        warden_config::validate_intervals(&[
            ("progress_interval", self.progress_interval),
            ("refresh_interval", self.refresh_interval),
            ("outbox_interval", self.outbox_interval),
        ])?;
        self.auth.validate()?;
        self.outbound.validate()
    }
}

impl GatewayConfig {
    /// A config for in-process tests: ephemeral ports, no metrics listener,
    /// authentication off (tests of identity turn it on).
    pub fn for_tests(data_dir: impl Into<PathBuf>, upstreams: impl Into<PathBuf>, policy_engine_url: &str) -> Self {
        GatewayConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: String::new(),
            mcp_listen: "127.0.0.1:0".into(),
            data_dir: data_dir.into(),
            upstreams: upstreams.into(),
            policy_engine_url: policy_engine_url.to_owned(),
            auth: AuthConfig::insecure(),
            ..GatewayConfig::default()
        }
    }
}
