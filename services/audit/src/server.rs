//! Starting and stopping the audit service: storage, keys, the log and its
//! appender, retention, the gRPC server with health and reflection, and the
//! metrics listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use warden_proto::audit::v1::audit_service_server::AuditServiceServer;
use warden_store::Database;

use crate::config::AuditConfig;
use crate::keys::{KeyError, MasterKey, load_signer};
use crate::log::{AuditError, AuditLog, now_micros};
use crate::service::AuditServiceImpl;
use crate::store::AuditStore;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Store(#[from] warden_store::StoreError),
    #[error("keys: {0}")]
    Key(#[from] KeyError),
    #[error("audit log: {0}")]
    Log(#[from] AuditError),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("telemetry: {0}")]
    Telemetry(#[from] warden_telemetry::TelemetryError),
}

/// A running audit service.
pub struct AuditServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub log: Arc<AuditLog>,
    /// The checkpoint verifier key (also printed at start).
    pub verifier_key: String,
    stopping: tokio::sync::watch::Sender<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for AuditServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditServer").field("addr", &self.addr).finish()
    }
}

impl AuditServer {
    pub async fn start(config: AuditConfig) -> Result<AuditServer, StartError> {
        let database = Database::connect(&config.database_url()).await?;
        database.migrate().await?;
        let (signer, created) = load_signer(&config.origin, &config.signing_key, &config.signing_key_path())?;
        if created {
            tracing::warn!(path = %config.signing_key_path().display(), "created a new checkpoint signing key");
        }
        let master = MasterKey::load(&config.master_key, &config.master_key_path())?;
        let log = AuditLog::open(AuditStore::new(database), signer, master, config.max_batch).await?;
        let verifier_key = log.verifier_key();
        tracing::info!(verifier_key = %verifier_key, "checkpoint verifier key");

        let mut background = Vec::new();
        if !config.retention.is_zero() {
            background.push(tokio::spawn(run_retention(log.clone(), config.retention, config.retention_interval)));
        }
        let metrics_addr = if config.metrics_listen.is_empty() {
            None
        } else {
            let addr = warden_config::parse_addr("metrics_listen", &config.metrics_listen)
                .map_err(|e| StartError::Bind(config.metrics_listen.clone(), std::io::Error::other(e.to_string())))?;
            let (bound, task) = warden_telemetry::serve_metrics(addr).await?;
            background.push(task);
            Some(bound)
        };
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|error| StartError::Bind(config.listen.clone(), error))?;
        let addr = listener.local_addr().map_err(|error| StartError::Bind(config.listen.clone(), error))?;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<AuditServiceServer<AuditServiceImpl>>().await;
        let (reflection_v1, reflection_v1alpha) = warden_telemetry::reflection_services();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .trace_fn(warden_telemetry::grpc_request_span)
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(AuditServiceServer::new(AuditServiceImpl::new(log.clone(), stopping)))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = shutdown_rx.await;
                }),
        );
        tracing::info!(%addr, "audit service listening");
        Ok(AuditServer {
            addr,
            metrics_addr,
            log,
            verifier_key,
            stopping: stopping_tx,
            shutdown: Some(shutdown_tx),
            server,
            background,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests and lets in-flight ones finish.
    pub async fn shutdown(mut self) {
        self.stopping.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for task in &self.background {
            task.abort();
        }
        match (&mut self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "audit server failed"),
            Err(error) => tracing::error!(%error, "audit server task failed"),
        }
    }
}

async fn run_retention(log: Arc<AuditLog>, retention: Duration, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let cutoff = now_micros() - retention.as_micros() as i64;
        if let Err(error) = log.purge_before(cutoff).await {
            tracing::warn!(%error, "retention failed; will retry");
        }
    }
}
