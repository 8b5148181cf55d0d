//! Starting and stopping the MCP gateway: the upstreams, the clients of
//! the policy engine, the approval service and the audit service (as one
//! service credential), the outbox of audit events, the refresh of
//! policies and tools, the MCP endpoint, and the gRPC surface (health,
//! dead letters) behind the shared auth layer.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_client::{ApprovalClient, ClientConfig, PolicyClient};
use warden_server::dead_letters::OutboxTable;
use warden_server::delivery::{Deliveries, Notified, Notifier};
use warden_server::{Runtime, Serving};

use crate::config::GatewayConfig;
use crate::gateway::{Gateway, Parts};
use crate::metrics::METRICS;
use crate::upstreams::{Upstream, UpstreamsFile};

pub use warden_server::StartError;

/// The gateway's outbox of audit events.
pub(crate) const OUTBOX: warden_store::outbox::Outbox = warden_store::outbox::Outbox { table: "mcp_gateway_outbox" };
pub(crate) const LEASE: Duration = Duration::from_secs(60);

/// A running gateway (its gRPC address through `Deref`; the MCP
/// endpoint is `http://{mcp_addr}/mcp`).
pub struct GatewayServer {
    pub serving: Serving,
    pub gateway: Arc<Gateway>,
    pub mcp_addr: std::net::SocketAddr,
    stop: CancellationToken,
}

/// The gateway queues audit events only: it sends no notifications.
pub(crate) struct AuditOnly;

impl Notifier for AuditOnly {
    async fn notify(&self, receiver: &str, _body: &serde_json::Value) -> Notified {
        Notified::Failed(format!("the MCP gateway has no receiver {receiver:?}"))
    }
}

/// Reads policies and tools again every `every`, and when an upstream says
/// its tools changed.
pub(crate) async fn refreshing(gateway: Arc<Gateway>, every: Duration, changed: Arc<tokio::sync::Notify>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = changed.notified() => {}
        }
        gateway.refresh().await;
    }
}

/// The gateway, as both modes (the service, `stdio`) build it.
pub(crate) struct Assembled {
    pub gateway: Arc<Gateway>,
    pub outbox: OutboxTable,
    /// Whether what calls did is recorded (an audit service is configured).
    pub recording: bool,
    /// Notified when an upstream says its tools changed.
    pub changed: Arc<tokio::sync::Notify>,
    /// The outbox's delivery, to run with the gateway.
    pub tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

/// The clients of the policy engine, the approval and audit services (as
/// `identity`), the outbox and its delivery, the upstreams and the gateway.
pub(crate) fn assemble(
    config: &GatewayConfig,
    file: UpstreamsFile,
    identity: warden_auth::ClientIdentity,
    secrets: warden_auth::SecretResolver,
    database: warden_store::Database,
) -> Result<Assembled, StartError> {
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
    let outbox = OutboxTable { database, outbox: OUTBOX, sqlite_writer: Arc::new(tokio::sync::Mutex::new(())) };
    let audit = if config.audit_url.is_empty() {
        None
    } else {
        Some(
            warden_client::audit_client(&ClientConfig::for_service(&config.audit_url, identity))
                .map_err(client_error)?,
        )
    };
    let recording = audit.is_some();
    let deliveries = Deliveries::new(
        "mcp-gateway",
        outbox.clone(),
        AuditOnly,
        audit,
        LEASE,
        Arc::new(warden_server::now_micros),
        Some(METRICS.outbox_pending.clone()),
    );
    let mut tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
        vec![Box::pin(deliveries.run(config.outbox_interval, None))];
    let recorder = recording.then(|| {
        let (recorder, writer) = crate::gateway::Recorder::new(outbox.clone());
        tasks.push(Box::pin(writer));
        recorder
    });
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
        recorder,
        approval_wait: config.approval_wait,
        progress_interval: config.progress_interval,
    });
    Ok(Assembled { gateway, outbox, recording, changed, tasks })
}

impl GatewayServer {
    pub async fn start(config: GatewayConfig) -> Result<GatewayServer, StartError> {
        // rustls for upstreams over https, with the crypto the rest uses
        // (already installed when another part of the process did it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let file = UpstreamsFile::load(&config.upstreams, &config.separator).map_err(StartError::Config)?;
        let mut runtime = Runtime::start("mcp-gateway", &config.auth, &config.data_dir, &config.metrics_listen).await?;
        let identity = config.outbound.resolve(&runtime.secrets).await.map_err(StartError::Outbound)?;
        let database = runtime.database(&config.database_url, &config.data_dir).await?;
        let assembled = assemble(&config, file, identity, runtime.secrets.clone(), database)?;
        if assembled.recording {
            // Refusals on the MCP endpoint go to the audit log too.
            runtime.auth.set_denial_sink(Arc::new(assembled.outbox.clone()));
        }
        for task in assembled.tasks {
            runtime.spawn(task);
        }
        let gateway = assembled.gateway;
        // Upstreams down now are connected at the next refresh or call.
        gateway.refresh().await;
        runtime.spawn(refreshing(gateway.clone(), config.refresh_interval, assembled.changed));
        let outbox = assembled.outbox;

        let stop = CancellationToken::new();
        let listener = Runtime::bind_http(&config.mcp_listen).await?;
        let bound = listener.local_addr().map_err(|e| StartError::Config(format!("mcp_listen: {e}")))?;
        let public_url =
            if config.public_url.is_empty() { format!("http://{bound}/mcp") } else { config.public_url.clone() };
        let router = crate::http::router(
            gateway.clone(),
            runtime.auth.clone(),
            &public_url,
            &config.allowed_hosts,
            stop.clone(),
        );
        let mcp_addr = runtime.serve_http_on("mcp", listener, router)?;
        let dead_letters = warden_server::dead_letters::service(Arc::new(outbox));
        let serving = runtime.serve(&config.listen, tonic::service::Routes::new(dead_letters)).await?;
        Ok(GatewayServer { serving, gateway, mcp_addr, stop })
    }

    /// The MCP endpoint, for clients.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.mcp_addr)
    }

    /// Ends the agents' sessions, stops the upstream commands, stops serving.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for upstream in &self.gateway.upstreams {
            upstream.close().await;
        }
        self.serving.stop().await;
    }
}

warden_server::service!(
    GatewayServer,
    GatewayConfig,
    "warden-mcp-gateway",
    StartError,
    banner = |server: &GatewayServer| Some(format!("MCP endpoint: {}", server.mcp_url()))
);
