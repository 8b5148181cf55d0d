//! `warden-audit`: loads config, initialises telemetry, serves until Ctrl-C
//! or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use warden_audit::AuditServer;
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
    warden_server::runtime::main::<AuditServer>(&args.common, &args.common.sources()).await
}
