//! Starting and stopping the approval service: storage, routes, the
//! workflow, the clocks and the outbox shipper, the gRPC server behind the
//! shared auth layer, and the metrics listener.

use std::sync::Arc;
use std::time::Duration;

use warden_proto::approval::v1::approval_service_server::ApprovalServiceServer;
use warden_server::delivery::Outbound;
use warden_server::{Runtime, Serving};

use crate::approvals::{Approvals, Clock};
use crate::config::ApprovalConfig;
use crate::routes::Routes;
use crate::service::ApprovalServiceImpl;
use crate::store::ApprovalStore;
use crate::worker::{Notifications, deliveries, run_clocks};

pub use warden_server::StartError;

/// A running approval service (its addresses through `Deref`; the web
/// inbox's is `http_addr`).
pub struct ApprovalServer {
    pub serving: Serving,
    pub approvals: Arc<Approvals>,
    stopping: tokio::sync::watch::Sender<bool>,
}

impl ApprovalServer {
    pub async fn start(config: ApprovalConfig) -> Result<ApprovalServer, StartError> {
        ApprovalServer::start_with_clock(config, Clock::system()).await
    }

    /// Starts with a given clock (tests pass one on tokio's paused time).
    pub async fn start_with_clock(config: ApprovalConfig, clock: Clock) -> Result<ApprovalServer, StartError> {
        let routes = if config.routes.as_os_str().is_empty() {
            Routes::default()
        } else {
            Routes::load(&config.routes).map_err(StartError::Config)?
        };
        let mut runtime = Runtime::start("approval", &config.auth, &config.data_dir, &config.metrics_listen).await?;
        let database = runtime.database(&config.database_url, &config.data_dir).await?;
        let audit = if config.audit_url.is_empty() {
            None
        } else {
            let identity = config.outbound.resolve(&runtime.secrets).await.map_err(StartError::Outbound)?;
            Some(
                warden_client::audit_client(&warden_client::ClientConfig::for_service(&config.audit_url, identity))
                    .map_err(|e| StartError::Outbound(e.to_string()))?,
            )
        };
        let approvals = Approvals::new(ApprovalStore::new(database)?, routes, clock, audit.is_some());
        if audit.is_some() {
            // Refusals (gRPC and the inbox) go to the audit log through the outbox.
            runtime.auth.set_denial_sink(Arc::new(approvals.store.outbox_table()));
        }
        runtime.spawn(run_clocks(approvals.clone(), config.clock_interval));
        let outbound = Outbound::new(&config.webhooks, Duration::from_secs(10), runtime.secrets.clone());
        let deliveries = deliveries(Notifications { approvals: approvals.clone(), outbound }, audit);
        runtime.spawn(deliveries.run(config.outbox_interval, None));
        if !config.http_listen.is_empty() {
            let inbox = crate::inbox::Inbox::new(approvals.clone(), runtime.auth.clone(), runtime.auth.tls().is_some());
            runtime.serve_http("inbox", &config.http_listen, inbox.router()).await?;
        }
        runtime.serving::<ApprovalServiceServer<ApprovalServiceImpl>>().await;
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        let service =
            ApprovalServiceServer::new(ApprovalServiceImpl::new(approvals.clone(), stopping, config.watch_poll))
                .max_decoding_message_size(warden_contract::bounds::MESSAGE_BYTES);
        let dead_letters = warden_server::dead_letters::service(Arc::new(approvals.store.outbox_table()));
        let routes = tonic::service::Routes::new(service).add_service(dead_letters);
        let serving = runtime.serve(&config.listen, routes).await?;
        Ok(ApprovalServer { serving, approvals, stopping: stopping_tx })
    }

    /// Stops accepting requests; watchers' streams end.
    pub async fn shutdown(self) {
        self.stopping.send_replace(true);
        self.serving.stop().await;
    }
}

warden_server::service!(ApprovalServer, ApprovalConfig, "warden-approval", StartError);
