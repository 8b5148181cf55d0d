//! `warden-mcp-gateway stdio`: the gateway for a local MCP client that can
//! only spawn a command (Claude Desktop's `command`, an IDE's). It speaks
//! MCP on stdin and stdout (logs go to stderr) for one agent, whose
//! identity comes from the environment, as the MCP specification has it
//! for stdio: `WARDEN_API_KEY` (its Warden credential) and
//! `WARDEN_AGENT_ID`.
//!
//! The gateway asks the policy engine *with the agent's own credential*:
//! the engine checks that the key is the agent's (a key for another
//! principal is refused, so every call is denied), and the agent's role
//! lets it wait on its own approvals and record its own actions. What it
//! cannot read is the policies in force, so every tool is listed; a
//! denied one is still never called.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rmcp::ServiceExt;
use warden_auth::{ClientIdentity, SecretResolver};
use warden_server::StartError;

use crate::config::GatewayConfig;
use crate::gateway::Handler;
use crate::upstreams::UpstreamsFile;

#[derive(Debug, Parser)]
#[command(
    name = "warden-mcp-gateway stdio",
    about = "The MCP gateway on stdin/stdout, for one agent (a local MCP client spawns it)."
)]
struct StdioArgs {
    /// The gateway's TOML config (the same keys as the service's; listeners are not used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The upstream MCP servers file (YAML).
    #[arg(long)]
    upstreams: Option<String>,
    /// The policy engine that decides every call.
    #[arg(long)]
    policy_engine_url: Option<String>,
    /// The approval service held calls wait on.
    #[arg(long)]
    approval_url: Option<String>,
    /// The audit service that records what each call did.
    #[arg(long)]
    audit_url: Option<String>,
    /// Where the outbox of audit events is kept (SQLite).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The agent this gateway serves.
    #[arg(long, env = "WARDEN_AGENT_ID", default_value = "", hide_default_value = true)]
    agent: String,
    /// The agent's Warden credential (an API key or a JWT).
    #[arg(long, env = "WARDEN_API_KEY", hide_env_values = true, default_value = "", hide_default_value = true)]
    api_key: String,
}

const IDENTITY_REQUIRED: &str =
    "WARDEN_AGENT_ID and WARDEN_API_KEY are required (the agent's id and its Warden credential; or --agent, --api-key)";

/// The binary's `before`: runs the `stdio` subcommand when it is the first
/// argument.
pub fn subcommand() -> Option<ExitCode> {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("stdio") {
        return None;
    }
    args.remove(1);
    let args = StdioArgs::parse_from(args);
    // The identity comes from the environment the client spawns us in
    // (MCP's stdio rule); say so in its words, before anything starts.
    if args.agent.is_empty() || args.api_key.is_empty() {
        eprintln!("warden-mcp-gateway stdio: {IDENTITY_REQUIRED}");
        return Some(ExitCode::from(2));
    }
    let mut sources = warden_config::Sources::from_process_env();
    sources.file = args.config.clone();
    sources.flag("upstreams", args.upstreams.as_ref());
    sources.flag("policy_engine_url", args.policy_engine_url.as_ref());
    sources.flag("approval_url", args.approval_url.as_ref());
    sources.flag("audit_url", args.audit_url.as_ref());
    sources.flag("data_dir", args.data_dir.as_ref().map(|d| d.display()));
    let mut config: GatewayConfig = match warden_config::load(&sources) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("warden-mcp-gateway stdio: {error}");
            return Some(ExitCode::from(2));
        }
    };
    // Standard output is the protocol.
    config.telemetry.log_to_stderr = true;
    let _telemetry = match warden_telemetry::init("warden-mcp-gateway", &config.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("warden-mcp-gateway stdio: {error}");
            return Some(ExitCode::from(2));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return Some(ExitCode::FAILURE);
        }
    };
    Some(match runtime.block_on(serve(config, args.agent, args.api_key)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the stdio gateway stopped");
            eprintln!("warden-mcp-gateway stdio: {error}");
            ExitCode::FAILURE
        }
    })
}

/// Serves MCP on stdin/stdout for `agent` until the client closes it.
pub async fn serve(config: GatewayConfig, agent: String, api_key: String) -> Result<(), StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if agent.is_empty() || api_key.is_empty() {
        return Err(StartError::Config(IDENTITY_REQUIRED.into()));
    }
    let file = UpstreamsFile::load(&config.upstreams, &config.separator).map_err(StartError::Config)?;
    let secrets = SecretResolver::from_process_env(config.auth.secret_cache_ttl);
    let database =
        warden_store::Database::connect(&warden_server::runtime::database_url(&config.database_url, &config.data_dir))
            .await?;
    database.migrate().await?;
    let mut background: Vec<tokio::task::JoinHandle<()>> = database.checkpoints().into_iter().collect();
    // Asked with the agent's own key: the engine checks it is the agent's.
    let assembled = crate::server::assemble(&config, file, ClientIdentity::bearer(api_key), secrets, database)?;
    background.extend(assembled.tasks.into_iter().map(tokio::spawn));
    let gateway = assembled.gateway;
    gateway.refresh().await;
    background.push(tokio::spawn(crate::server::refreshing(
        gateway.clone(),
        config.refresh_interval,
        assembled.changed,
    )));
    tracing::info!(%agent, "serving MCP on stdin/stdout");
    let handler = Handler { gateway: gateway.clone(), agent: Some(agent) };
    let outcome = match handler.serve(rmcp::transport::stdio()).await {
        Ok(service) => {
            let _ = service.waiting().await;
            Ok(())
        }
        Err(error) => Err(StartError::Config(format!("MCP on stdio: {error}"))),
    };
    for upstream in &gateway.upstreams {
        upstream.close().await;
    }
    for task in background {
        task.abort();
    }
    outcome
}
