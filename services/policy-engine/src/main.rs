//! `warden-policy-engine`: loads config, initialises telemetry, serves until
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use warden_config::CommonArgs;
use warden_policy_engine::PolicyEngine;

/// The Warden policy engine.
#[derive(Debug, Parser)]
#[command(name = "warden-policy-engine", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Directory of *.yaml policy files.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Redis URL for limits shared by replicas (default: in memory).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// The audit service that receives the decision log (default: none,
    /// decisions go to the log output only).
    #[arg(long, value_name = "URL")]
    audit_url: Option<String>,
    /// The approval service: decisions that require approval open requests
    /// there (default: none).
    #[arg(long, value_name = "URL")]
    approval_url: Option<String>,
}

/// mimalloc rather than the system allocator: request handling allocates
/// many small, short-lived objects across threads, where glibc's malloc
/// spent about a tenth of the audit service's CPU (see the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut sources = args.common.sources();
    sources.flag("policies", args.policies.as_ref().map(|p| p.display()));
    sources.flag("redis_url", args.redis_url.as_ref());
    sources.flag("audit_url", args.audit_url.as_ref());
    sources.flag("approval_url", args.approval_url.as_ref());
    warden_server::runtime::main::<PolicyEngine>(&args.common, &sources).await
}
