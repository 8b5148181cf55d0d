//! `cargo xtask dev`: every service in one process, for local development.
//!
//! Authentication is on, as in production: on first start, dev creates an
//! admin key, an agent key for the example agent (`support-bot`), an
//! approver key (`manager`), an on-call operator key (`oncall`), a service
//! key the policy engine and the approval service present to each other and
//! to audit, and one for the alerting service (which also reads the log),
//! writes their digests to `<data dir>/keys.toml` (which every service
//! reads) and the tokens to `<data dir>/dev-keys/` (mode 0600), and prints
//! them. Keys added in later versions are created on the next start. It
//! builds `wardenctl` first and says where it is. The stack itself is
//! [`xtask::stack::Stack`], which the README's test runs.

use std::path::PathBuf;

use xtask::stack::{Ports, Stack};

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
    /// Add this to every port (a second stack beside the first; point
    /// `wardenctl` at it with `--addr` and its siblings).
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
}

/// Builds `wardenctl`, which the README's tour and the banner use, so its
/// first use does not compile in silence; returns where it is.
fn build_wardenctl(root: &std::path::Path) -> Option<PathBuf> {
    println!("building wardenctl (the command-line client) ...");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo).args(["build", "-p", "wardenctl"]).current_dir(root).status();
    match status {
        Ok(status) if status.success() => {
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            let target = if target.is_absolute() { target } else { root.join(target) };
            Some(target.join("debug").join("wardenctl"))
        }
        Ok(status) => {
            eprintln!("building wardenctl failed ({status}); the services start anyway");
            None
        }
        Err(error) => {
            eprintln!("cannot run cargo to build wardenctl ({error}); the services start anyway");
            None
        }
    }
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
    let ports = if args.port_offset == 0 { Ports::Defaults } else { Ports::Offset(args.port_offset) };
    let wardenctl = build_wardenctl(&root);
    println!("starting the services (data in {}) ...", data_dir.display());
    let stack = Stack::start(&data_dir, &policies, telemetry, ports).await?;
    let metrics =
        |addr: Option<std::net::SocketAddr>| addr.map(|a| format!("http://{a}/metrics")).unwrap_or_else(|| "-".into());

    println!();
    println!("Warden is running (Ctrl-C stops it)");
    let Stack { policy_engine, audit, approval, alerting, mcp_gateway, example_tools, keys, .. } = &stack;
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
    println!("  mcp gateway    {}   metrics {}", mcp_gateway.mcp_url(), metrics(mcp_gateway.metrics_addr));
    println!("                 (MCP clients: bearer the agent's key; tools of http://{example_tools}/mcp)");
    match &wardenctl {
        Some(path) => println!("  wardenctl      {} (or: cargo run -q -p wardenctl -- ...)", path.display()),
        None => println!("  wardenctl      not built (see above); cargo run -q -p wardenctl -- ... builds it"),
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
        ("auditor", "auditor (audit, replay)"),
    ] {
        let file = format!("{name}.key");
        let token = std::fs::read_to_string(keys.join(&file)).unwrap_or_default();
        println!("    {file:<16} {role:<25} {}", token.trim());
    }
    println!();
    println!("Try (the README's tour goes on from here):");
    println!(
        "  WARDEN_API_KEY=$(cat {}) cargo run -q -p wardenctl -- evaluate send_email --agent support-bot",
        keys.join("support-bot.key").display()
    );
    println!();

    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    println!("stopping");
    stack.shutdown().await;
    Ok(())
}
