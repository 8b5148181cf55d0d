//! `cargo xtask dev`: every service in one process, for local development.

use std::path::PathBuf;

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
    let audit = AuditServer::start(AuditConfig {
        data_dir: data_dir.clone(),
        telemetry: telemetry.clone(),
        ..AuditConfig::default()
    })
    .await
    .map_err(|e| format!("audit service: {e}"))?;
    let policy_engine = PolicyEngine::start(PolicyEngineConfig {
        data_dir: data_dir.clone(),
        policies: policies.clone(),
        audit_url: audit.url(),
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
    println!("  checkpoint key {}", audit.verifier_key);
    println!("  policies       {} (edit to reload)", policies.display());
    println!("  data           {}", data_dir.display());
    println!();
    println!("Try:");
    println!(
        "  grpcurl -plaintext -d '{{\"agent\":{{\"id\":\"support-bot\",\"confidence\":0.9}},\"action\":{{\"type\":\"send_email\"}}}}' {} warden.policy.v1.PolicyService/Evaluate",
        policy_engine.addr
    );
    println!();

    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    println!("stopping");
    policy_engine.shutdown().await;
    audit.shutdown().await;
    Ok(())
}
