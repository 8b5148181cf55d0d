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
use std::sync::Arc;

use clap::Parser;
use rmcp::ServiceExt;
use warden_auth::{ClientIdentity, SecretResolver};
use warden_client::{ApprovalClient, ClientConfig, PolicyClient};
use warden_server::StartError;
use warden_server::dead_letters::OutboxTable;
use warden_server::delivery::Deliveries;

use crate::config::GatewayConfig;
use crate::gateway::{Gateway, Handler, Parts};
use crate::metrics::METRICS;
use crate::upstreams::{Upstream, UpstreamsFile};

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
    #[arg(long, env = "WARDEN_AGENT_ID")]
    agent: String,
    /// The agent's Warden credential (an API key or a JWT).
    #[arg(long, env = "WARDEN_API_KEY", hide_env_values = true)]
    api_key: String,
}

/// The binary's `before`: runs the `stdio` subcommand when it is the first
/// argument.
pub fn subcommand() -> Option<ExitCode> {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("stdio") {
        return None;
    }
    args.remove(1);
    let args = StdioArgs::parse_from(args);
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
        return Err(StartError::Config("WARDEN_AGENT_ID and WARDEN_API_KEY are required".into()));
    }
    let file = UpstreamsFile::load(&config.upstreams, &config.separator).map_err(StartError::Config)?;
    let secrets = SecretResolver::from_process_env(config.auth.secret_cache_ttl);
    let identity = ClientIdentity::bearer(api_key);
    let client_error = |e: warden_client::ClientError| StartError::Outbound(e.to_string());
    let mut policy_config = ClientConfig::new(&config.policy_engine_url);
    policy_config.identity = identity.clone();
    let policy = PolicyClient::new(policy_config).map_err(client_error)?;
    let approvals = if config.approval_url.is_empty() {
        None
    } else {
        Some(
            ApprovalClient::new(ClientConfig::for_service(&config.approval_url, identity.clone()))
                .map_err(client_error)?,
        )
    };
    let database =
        warden_store::Database::connect(&warden_server::runtime::database_url(&config.database_url, &config.data_dir))
            .await?;
    database.migrate().await?;
    let mut background: Vec<tokio::task::JoinHandle<()>> = database.checkpoints().into_iter().collect();
    let outbox =
        OutboxTable { database, outbox: crate::server::OUTBOX, sqlite_writer: Arc::new(tokio::sync::Mutex::new(())) };
    let recording = !config.audit_url.is_empty();
    if recording {
        let audit = warden_client::audit_client(&ClientConfig::for_service(&config.audit_url, identity))
            .map_err(client_error)?;
        let deliveries = Deliveries::new(
            "mcp-gateway",
            outbox.clone(),
            crate::server::AuditOnly,
            Some(audit),
            crate::server::LEASE,
            Arc::new(crate::server::now_micros),
            Some(METRICS.outbox_pending.clone()),
        );
        background.push(tokio::spawn(deliveries.run(config.outbox_interval, None)));
    }
    let changed = Arc::new(tokio::sync::Notify::new());
    let upstreams = file
        .upstreams
        .into_iter()
        .map(|upstream| Arc::new(Upstream::new(upstream, secrets.clone(), changed.clone())))
        .collect();
    let gateway = Gateway::new(Parts {
        upstreams,
        separator: config.separator.clone(),
        policy,
        approvals,
        outbox: recording.then_some(outbox),
        approval_wait: config.approval_wait,
        progress_interval: config.progress_interval,
    });
    gateway.refresh().await;
    background.push(tokio::spawn(crate::server::refreshing(gateway.clone(), config.refresh_interval, changed)));
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
