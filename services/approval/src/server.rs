//! Starting and stopping the approval service: storage, routes, the
//! workflow, the clocks and the outbox shipper, the gRPC server behind the
//! shared auth layer, and the metrics listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use warden_proto::approval::v1::approval_service_server::ApprovalServiceServer;
use warden_resilience::Backoff;
use warden_store::Database;
use warden_telemetry::ServerHandle;

use crate::approvals::{Approvals, Clock};
use crate::config::ApprovalConfig;
use crate::routes::Routes;
use crate::service::ApprovalServiceImpl;
use crate::store::ApprovalStore;
use crate::worker::{Shipper, run_clocks};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Store(#[from] warden_store::StoreError),
    #[error("approval routes: {0}")]
    Routes(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("telemetry: {0}")]
    Telemetry(#[from] warden_telemetry::TelemetryError),
    #[error("{0}")]
    Auth(#[from] warden_auth::AuthError),
    #[error("audit client: {0}")]
    Audit(String),
}

/// A running approval service.
pub struct ApprovalServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// The web inbox, when enabled.
    pub http_addr: Option<SocketAddr>,
    pub approvals: Arc<Approvals>,
    stopping: tokio::sync::watch::Sender<bool>,
    handle: ServerHandle,
}

impl std::fmt::Debug for ApprovalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalServer").field("addr", &self.addr).finish()
    }
}

impl ApprovalServer {
    pub async fn start(config: ApprovalConfig) -> Result<ApprovalServer, StartError> {
        ApprovalServer::start_with_clock(config, Clock::system()).await
    }

    /// Starts with a given clock (tests pass one on tokio's paused time).
    pub async fn start_with_clock(config: ApprovalConfig, clock: Clock) -> Result<ApprovalServer, StartError> {
        let database = Database::connect(&config.database_url()).await?;
        database.migrate().await?;
        let routes = if config.routes.as_os_str().is_empty() {
            Routes::default()
        } else {
            Routes::load(&config.routes).map_err(StartError::Routes)?
        };
        let (auth, mut background) = warden_auth::Auth::start(&config.auth, "approval", &config.data_dir).await?;
        background.extend(database.checkpoints());
        let secrets = warden_auth::SecretResolver::from_process_env(config.auth.secret_cache_ttl);
        let audit = if config.audit_url.is_empty() {
            None
        } else {
            let identity = config.outbound.resolve(&secrets).await.map_err(StartError::Audit)?;
            Some(
                warden_client::audit_client(&warden_client::ClientConfig::for_service(&config.audit_url, identity))
                    .map_err(|e| StartError::Audit(e.to_string()))?,
            )
        };
        let approvals = Approvals::new(ApprovalStore::new(database)?, routes, clock, audit.is_some());
        if audit.is_some() {
            // Refusals (gRPC and the inbox) go to the audit log through the outbox.
            let store = approvals.store.clone();
            auth.set_denial_sink(Arc::new(warden_auth::SpawnedDenials(move |event| {
                let store = store.clone();
                async move {
                    if let Err(error) = store.enqueue(&[crate::store::Outgoing::Audit(event)]).await {
                        tracing::warn!(%error, "cannot queue an auth_denied event");
                    }
                }
            })));
        }
        background.push(tokio::spawn(run_clocks(approvals.clone(), config.clock_interval)));
        let shipper = Shipper {
            approvals: approvals.clone(),
            audit,
            http: warden_server::webhook::http_client(&config.webhooks, Duration::from_secs(10)),
            webhooks: config.webhooks,
            secrets,
            replica: uuid::Uuid::now_v7().to_string(),
            backoff: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(300)),
        };
        background.push(tokio::spawn(shipper.run(config.outbox_interval)));
        let metrics_addr = warden_telemetry::start_metrics(&config.metrics_listen).await?.map(|(addr, task)| {
            background.push(task);
            addr
        });
        let http_addr = if config.http_listen.is_empty() {
            None
        } else {
            let inbox = crate::inbox::Inbox::new(approvals.clone(), auth.clone(), auth.tls().is_some());
            let (addr, task) = crate::inbox::serve(inbox, &config.http_listen)
                .await
                .map_err(|error| StartError::Bind(config.http_listen.clone(), error))?;
            background.push(task);
            Some(addr)
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<ApprovalServiceServer<ApprovalServiceImpl>>().await;
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        let service =
            ApprovalServiceServer::new(ApprovalServiceImpl::new(approvals.clone(), stopping, config.watch_poll))
                .max_decoding_message_size(warden_contract::bounds::MESSAGE_BYTES);
        let dead_letters = warden_server::dead_letters::service(Arc::new(approvals.store.dead_letters()));
        let routes = tonic::service::Routes::new(health_service).add_service(service).add_service(dead_letters);
        let (addr, handle) = warden_auth::serve("approval", &config.listen, auth, routes, background)
            .await
            .map_err(|error| StartError::Bind(config.listen.clone(), error))?;
        Ok(ApprovalServer { addr, metrics_addr, http_addr, approvals, stopping: stopping_tx, handle })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests; watchers' streams end.
    pub async fn shutdown(self) {
        self.stopping.send_replace(true);
        self.handle.stop().await;
    }
}
