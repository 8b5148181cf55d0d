//! `warden-audit`: loads config, initialises telemetry, serves until Ctrl-C
//! or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use warden_audit::{AuditConfig, AuditServer};
use warden_config::CommonArgs;

/// The Warden audit service.
#[derive(Debug, Parser)]
#[command(name = "warden-audit", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// mimalloc rather than the system allocator: request handling allocates
/// many small, short-lived objects across threads, where glibc's malloc
/// spent about a tenth of the audit service's CPU (see the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config: AuditConfig = match warden_config::load(&args.common.sources()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("warden-audit: {error}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match warden_telemetry::init("warden-audit", &config.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("warden-audit: {error}");
            return ExitCode::from(2);
        }
    };
    let server = match AuditServer::start(config).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("warden-audit: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("warden-audit listening on {} (checkpoint verifier key {})", server.addr, server.verifier_key);
    warden_telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}
