//! `cargo xtask dev`: every service in one process, for local development.
//!
//! Authentication is on, as in production: on first start, dev creates an
//! admin key, an agent key for the example agent (`support-bot`), an
//! approver key (`manager`), an on-call operator key (`oncall`), a service
//! key the policy engine and the approval service present to each other and
//! to audit, and one for the alerting service (which also reads the log),
//! writes their digests to `<data dir>/keys.toml` (which every service
//! reads) and the tokens to `<data dir>/dev-keys/` (mode 0600), and prints
//! them. Keys added in later versions are created on the next start.

use std::path::{Path, PathBuf};

use warden_alerting::{AlertingConfig, AlertingServer};
use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_audit::{AuditConfig, AuditServer};
use warden_policy_engine::{PolicyEngine, PolicyEngineConfig};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Local state directory.
    #[arg(long, default_value = "warden-data")]
    data_dir: PathBuf,
    /// Policy directory (default: examples/policies).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Log as JSON instead of human-readable lines.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: DevArgs) -> Result<(), String> {
    let root = crate::workspace_root();
    let telemetry = warden_telemetry::TelemetryConfig {
        log_format: if args.json { warden_telemetry::LogFormat::Json } else { warden_telemetry::LogFormat::Pretty },
        ..Default::default()
    };
    let _guard = warden_telemetry::init("warden-dev", &telemetry).map_err(|e| e.to_string())?;
    let data_dir = if args.data_dir.is_absolute() { args.data_dir } else { root.join(args.data_dir) };
    let policies = args.policies.unwrap_or_else(|| root.join("examples/policies"));
    let keys = dev_keys(&data_dir)?;
    let audit = AuditServer::start(AuditConfig {
        data_dir: data_dir.clone(),
        telemetry: telemetry.clone(),
        ..AuditConfig::default()
    })
    .await
    .map_err(|e| format!("audit service: {e}"))?;
    let service_key = warden_auth::OutboundConfig {
        credential: format!("file:{}", keys.join("policy-engine.key").display()),
        ..Default::default()
    };
    let approval = ApprovalServer::start(ApprovalConfig {
        data_dir: data_dir.clone(),
        routes: root.join("examples/approvals.yaml"),
        audit_url: audit.url(),
        outbound: service_key.clone(),
        telemetry: telemetry.clone(),
        ..ApprovalConfig::default()
    })
    .await
    .map_err(|e| format!("approval service: {e}"))?;
    // The seeds' eight rules; alerts go to the log (examples/alerting has
    // the seeds' Slack/PagerDuty/email routing, which needs real secrets).
    let alerting = AlertingServer::start(AlertingConfig {
        data_dir: data_dir.clone(),
        audit_url: audit.url(),
        outbound: warden_auth::OutboundConfig {
            credential: format!("file:{}", keys.join("alerting.key").display()),
            ..Default::default()
        },
        telemetry: telemetry.clone(),
        ..AlertingConfig::default()
    })
    .await
    .map_err(|e| format!("alerting service: {e}"))?;
    let policy_engine = PolicyEngine::start(PolicyEngineConfig {
        data_dir: data_dir.clone(),
        policies: policies.clone(),
        audit_url: audit.url(),
        approval_url: approval.url(),
        outbound: service_key,
        telemetry: telemetry.clone(),
        ..PolicyEngineConfig::default()
    })
    .await
    .map_err(|e| format!("policy engine: {e}"))?;
    let metrics =
        |addr: Option<std::net::SocketAddr>| addr.map(|a| format!("http://{a}/metrics")).unwrap_or_else(|| "-".into());

    println!();
    println!("Warden is running (Ctrl-C stops it)");
    println!("  policy engine  grpc://{}   metrics {}", policy_engine.addr, metrics(policy_engine.metrics_addr));
    println!("  audit          grpc://{}   metrics {}", audit.addr, metrics(audit.metrics_addr));
    println!("  approval       grpc://{}   metrics {}", approval.addr, metrics(approval.metrics_addr));
    if let Some(inbox) = approval.http_addr {
        println!("  approval inbox http://{inbox}/ (sign in with the approver key)");
    }
    println!("  alerting       grpc://{}   metrics {}", alerting.addr, metrics(alerting.metrics_addr));
    if let Some(api) = alerting.http_addr {
        println!("  alertmanager   http://{api}/api/v2/alerts (Prometheus and amtool; bearer: the oncall key)");
    }
    println!("  checkpoint key {}", audit.verifier_key);
    println!("  policies       {} (edit to reload)", policies.display());
    println!("  data           {}", data_dir.display());
    println!("  api keys       {} (digests; tokens in {})", data_dir.join("keys.toml").display(), keys.display());
    for (name, role) in [
        ("admin", "admin"),
        ("support-bot", "agent for support-bot"),
        ("manager", "approver"),
        ("oncall", "operator (alerting)"),
    ] {
        let token = std::fs::read_to_string(keys.join(format!("{name}.key"))).unwrap_or_default();
        println!("    {role:<22} {}", token.trim());
    }
    println!();
    println!("Try:");
    println!(
        "  grpcurl -plaintext -H \"authorization: Bearer $(cat {})\" -d '{{\"agent\":{{\"id\":\"support-bot\",\"confidence\":0.9}},\"action\":{{\"type\":\"send_email\"}}}}' {} warden.policy.v1.PolicyService/Evaluate",
        keys.join("support-bot.key").display(),
        policy_engine.addr
    );
    println!();

    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    println!("stopping");
    policy_engine.shutdown().await;
    alerting.shutdown().await;
    approval.shutdown().await;
    audit.shutdown().await;
    Ok(())
}

/// Creates the dev keys once; later runs reuse them. Returns the directory
/// holding the tokens.
fn dev_keys(data_dir: &Path) -> Result<PathBuf, String> {
    use warden_auth::Kind;
    let dir = data_dir.join("dev-keys");
    let keys_file = data_dir.join("keys.toml");
    let wanted: [(&str, Kind, &[&str]); 6] = [
        ("admin", Kind::Human, &["admin"]),
        ("support-bot", Kind::Agent, &["agent"]),
        ("policy-engine", Kind::Service, &["service"]),
        ("manager", Kind::Human, &["approver"]),
        ("oncall", Kind::Human, &["operator"]),
        ("alerting", Kind::Service, &["service", "auditor"]),
    ];
    if keys_file.exists() && wanted.iter().all(|(name, ..)| dir.join(format!("{name}.key")).exists()) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut file = if keys_file.exists() { warden_auth::KeyFile::load(&keys_file)? } else { Default::default() };
    for (name, kind, roles) in wanted {
        if keys_file.exists() && dir.join(format!("{name}.key")).exists() {
            continue;
        }
        let roles = roles.iter().map(|r| (*r).to_owned()).collect();
        let mut key = warden_auth::api_key::create_key(name, kind, roles, vec![], None, None);
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
