//! The development stack: every service in one process, authentication
//! on, with the dev keys (see `cargo xtask dev`).

use std::path::{Path, PathBuf};

use warden_alerting::{AlertingConfig, AlertingServer};
use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_audit::{AuditConfig, AuditServer};
use warden_mcp_gateway::{GatewayConfig, GatewayServer};
use warden_policy_engine::{PolicyEngine, PolicyEngineConfig};

/// Where the services listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// Each service's default addresses (`127.0.0.1:50051` to `:50055`, the
    /// inbox on `:8093`, Alertmanager's API on `:9095`, the MCP gateway on
    /// `:8095`, metrics on `:9091` to `:9094` and `:9096`; the example MCP
    /// tools on `:8097`): what `wardenctl` and the README expect.
    Defaults,
    /// Ports the system picks, no metrics listeners (tests, which point
    /// `wardenctl` at them with `WARDEN_ADDR` and its siblings).
    Any,
    /// Every default port plus this much (a second stack beside the first:
    /// `cargo xtask dev --port-offset 100` listens on 50151, ...).
    Offset(u16),
}

impl Ports {
    /// `host:port` for a service whose default is `default`.
    fn listen(self, default: &str) -> Result<String, String> {
        match self {
            Ports::Defaults => Ok(default.to_owned()),
            Ports::Any => Ok("127.0.0.1:0".to_owned()),
            Ports::Offset(offset) => {
                let (host, port) = default.rsplit_once(':').ok_or_else(|| format!("no port in {default}"))?;
                let port: u16 = port.parse().map_err(|_| format!("no port in {default}"))?;
                let moved = port.checked_add(offset).ok_or_else(|| format!("port {port} + {offset} is past 65535"))?;
                Ok(format!("{host}:{moved}"))
            }
        }
    }

    /// A metrics listener: none with [`Ports::Any`].
    fn metrics(self, default: &str) -> Result<String, String> {
        if self == Ports::Any { Ok(String::new()) } else { self.listen(default) }
    }
}

/// Where the example MCP tools listen by default (`examples/mcp/upstreams.yaml`).
pub const EXAMPLE_TOOLS: &str = "127.0.0.1:8097";

/// The five services, and the example MCP tools behind the gateway, running.
pub struct Stack {
    pub policy_engine: PolicyEngine,
    pub audit: AuditServer,
    pub approval: ApprovalServer,
    pub alerting: AlertingServer,
    pub mcp_gateway: GatewayServer,
    pub example_tools: std::net::SocketAddr,
    stop_tools: tokio_util::sync::CancellationToken,
    pub data_dir: PathBuf,
    pub policies: PathBuf,
    /// The dev keys' tokens (`<data dir>/dev-keys`).
    pub keys: PathBuf,
}

impl Stack {
    /// Creates the dev keys if missing and starts audit, approval,
    /// alerting, the policy engine, the example MCP tools and the MCP
    /// gateway, in that order.
    pub async fn start(
        data_dir: &Path,
        policies: &Path,
        telemetry: warden_telemetry::TelemetryConfig,
        ports: Ports,
    ) -> Result<Stack, String> {
        let root = crate::workspace_root();
        let data_dir = data_dir.to_owned();
        let policies = policies.to_owned();
        let keys = dev_keys(&data_dir)?;
        let listen = |default: String| ports.listen(&default);
        let metrics = |default: String| ports.metrics(&default);
        let defaults = AuditConfig::default();
        let audit = AuditServer::start(AuditConfig {
            data_dir: data_dir.clone(),
            telemetry: telemetry.clone(),
            listen: listen(defaults.listen)?,
            metrics_listen: metrics(defaults.metrics_listen)?,
            ..AuditConfig::default()
        })
        .await
        .map_err(|e| format!("audit service: {e}"))?;
        // What a service presents: its dev key's file.
        let presents = |name: &str| warden_auth::OutboundConfig {
            credential: format!("file:{}", keys.join(format!("{name}.key")).display()),
            ..Default::default()
        };
        let service_key = presents("policy-engine");
        let defaults = ApprovalConfig::default();
        let approval = ApprovalServer::start(ApprovalConfig {
            data_dir: data_dir.clone(),
            routes: root.join("examples/approvals.yaml"),
            audit_url: audit.url(),
            outbound: service_key.clone(),
            telemetry: telemetry.clone(),
            listen: listen(defaults.listen)?,
            http_listen: listen(defaults.http_listen)?,
            metrics_listen: metrics(defaults.metrics_listen)?,
            ..ApprovalConfig::default()
        })
        .await
        .map_err(|e| format!("approval service: {e}"))?;
        // The example rules (examples/alerting/rules.yaml); alerts go to the
        // log (examples/alerting has the seeds' Slack/PagerDuty/email
        // routing, which needs real secrets).
        let defaults = AlertingConfig::default();
        let alerting = AlertingServer::start(AlertingConfig {
            data_dir: data_dir.clone(),
            audit_url: audit.url(),
            outbound: presents("alerting"),
            telemetry: telemetry.clone(),
            listen: listen(defaults.listen)?,
            http_listen: listen(defaults.http_listen)?,
            metrics_listen: metrics(defaults.metrics_listen)?,
            ..AlertingConfig::default()
        })
        .await
        .map_err(|e| format!("alerting service: {e}"))?;
        let defaults = PolicyEngineConfig::default();
        let policy_engine = PolicyEngine::start(PolicyEngineConfig {
            data_dir: data_dir.clone(),
            policies: policies.clone(),
            audit_url: audit.url(),
            approval_url: approval.url(),
            outbound: service_key,
            telemetry,
            listen: listen(defaults.listen)?,
            metrics_listen: metrics(defaults.metrics_listen)?,
            ..PolicyEngineConfig::default()
        })
        .await
        .map_err(|e| format!("policy engine: {e}"))?;
        // The example tools, and the gateway in front of them with the
        // upstreams file as examples/mcp has it (on the tools' address).
        let stop_tools = tokio_util::sync::CancellationToken::new();
        let (example_tools, _) =
            crate::example_tools::serve(&listen(EXAMPLE_TOOLS.to_owned())?, stop_tools.clone()).await?;
        let upstreams = std::fs::read_to_string(root.join("examples/mcp/upstreams.yaml"))
            .map_err(|e| format!("examples/mcp/upstreams.yaml: {e}"))?
            .replace(EXAMPLE_TOOLS, &example_tools.to_string());
        let upstreams_file = data_dir.join("mcp-upstreams.yaml");
        std::fs::write(&upstreams_file, upstreams).map_err(|e| format!("{}: {e}", upstreams_file.display()))?;
        let defaults = GatewayConfig::default();
        let mcp_gateway = GatewayServer::start(GatewayConfig {
            data_dir: data_dir.clone(),
            upstreams: upstreams_file,
            policy_engine_url: policy_engine.url(),
            approval_url: approval.url(),
            audit_url: audit.url(),
            outbound: presents("mcp-gateway"),
            listen: listen(defaults.listen)?,
            mcp_listen: listen(defaults.mcp_listen)?,
            metrics_listen: metrics(defaults.metrics_listen)?,
            ..GatewayConfig::default()
        })
        .await
        .map_err(|e| format!("mcp gateway: {e}"))?;
        Ok(Stack {
            policy_engine,
            audit,
            approval,
            alerting,
            mcp_gateway,
            example_tools,
            stop_tools,
            data_dir,
            policies,
            keys,
        })
    }

    /// `wardenctl`'s environment for this stack: the five addresses.
    pub fn wardenctl_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WARDEN_ADDR", self.policy_engine.url()),
            ("WARDEN_AUDIT_ADDR", self.audit.url()),
            ("WARDEN_APPROVAL_ADDR", self.approval.url()),
            ("WARDEN_ALERTING_ADDR", self.alerting.url()),
            ("WARDEN_MCP_ADDR", self.mcp_gateway.mcp_url()),
        ]
    }

    /// Stops the services, the gateway and the policy engine first.
    pub async fn shutdown(self) {
        self.mcp_gateway.shutdown().await;
        self.stop_tools.cancel();
        self.policy_engine.shutdown().await;
        self.alerting.shutdown().await;
        self.approval.shutdown().await;
        self.audit.shutdown().await;
    }
}

/// Creates the dev keys once; later runs reuse them. Returns the directory
/// holding the tokens.
pub fn dev_keys(data_dir: &Path) -> Result<PathBuf, String> {
    use warden_auth::Kind;
    let dir = data_dir.join("dev-keys");
    let keys_file = data_dir.join("keys.toml");
    // Name, kind, roles, and the agents it may act for (the MCP gateway
    // asks for any agent that reaches it).
    type Wanted = (&'static str, Kind, &'static [&'static str], &'static [&'static str]);
    let wanted: [Wanted; 8] = [
        ("admin", Kind::Human, &["admin"], &[]),
        ("auditor", Kind::Human, &["auditor"], &[]),
        ("support-bot", Kind::Agent, &["agent"], &[]),
        ("policy-engine", Kind::Service, &["service"], &[]),
        ("manager", Kind::Human, &["approver"], &[]),
        ("oncall", Kind::Human, &["operator"], &[]),
        ("alerting", Kind::Service, &["service", "auditor"], &[]),
        ("mcp-gateway", Kind::Service, &["service"], &["*"]),
    ];
    if keys_file.exists() && wanted.iter().all(|(name, ..)| dir.join(format!("{name}.key")).exists()) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut file = if keys_file.exists() { warden_auth::KeyFile::load(&keys_file)? } else { Default::default() };
    for (name, kind, roles, agents) in wanted {
        if keys_file.exists() && dir.join(format!("{name}.key")).exists() {
            continue;
        }
        let roles = roles.iter().map(|r| (*r).to_owned()).collect();
        let agents = agents.iter().map(|a| (*a).to_owned()).collect();
        let mut key = warden_auth::api_key::create_key(name, kind, roles, agents, None, None);
        key.entry.comment = "created by cargo xtask dev".into();
        let path = dir.join(format!("{name}.key"));
        write_private(&path, &format!("{}\n", key.token.expose()))?;
        file.keys.push(key.entry);
    }
    std::fs::write(&keys_file, file.to_toml()).map_err(|e| format!("cannot write {}: {e}", keys_file.display()))?;
    Ok(dir)
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
