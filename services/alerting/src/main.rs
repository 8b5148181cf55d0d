//! `warden-alerting`: loads config, initialises telemetry, serves until
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use warden_alerting::AlertingServer;
use warden_config::CommonArgs;

/// The Warden alerting service.
#[derive(Debug, Parser)]
#[command(name = "warden-alerting", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Rule files or directories (Prometheus' rule-file shape), comma-separated.
    #[arg(long, value_name = "FILES")]
    rules: Option<String>,
    /// The routing file (Alertmanager's configuration shape).
    #[arg(long, value_name = "FILE")]
    routing: Option<PathBuf>,
    /// The audit service to follow and to record in.
    #[arg(long, value_name = "URL")]
    audit_url: Option<String>,
    /// Alertmanager's HTTP API address (empty disables it).
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
}

/// mimalloc, as in the other services.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut sources = args.common.sources();
    sources.flag("rules", args.rules.as_ref());
    sources.flag("routing", args.routing.as_ref().map(|p| p.display()));
    sources.flag("audit_url", args.audit_url.as_ref());
    sources.flag("http_listen", args.http_listen.as_ref());
    warden_server::runtime::main::<AlertingServer>(&args.common, &sources).await
}
