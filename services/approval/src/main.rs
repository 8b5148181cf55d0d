//! `warden-approval`: loads config, initialises telemetry, serves until
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use warden_approval::ApprovalServer;
use warden_config::CommonArgs;

/// The Warden approval service.
#[derive(Debug, Parser)]
#[command(name = "warden-approval", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The approval routes file (YAML).
    #[arg(long, value_name = "FILE")]
    routes: Option<PathBuf>,
    /// The audit service that records every step.
    #[arg(long, value_name = "URL")]
    audit_url: Option<String>,
    /// The web inbox's HTTP address (empty disables it).
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
    sources.flag("routes", args.routes.as_ref().map(|p| p.display()));
    sources.flag("audit_url", args.audit_url.as_ref());
    sources.flag("http_listen", args.http_listen.as_ref());
    warden_server::runtime::main::<ApprovalServer>(&args.common, &sources).await
}
