//! Starting and stopping the audit service: storage, keys, the log and its
//! appender, retention, the gRPC server with health and reflection, and the
//! metrics listener.

use std::sync::Arc;
use std::time::Duration;

use warden_proto::audit::v1::audit_service_server::AuditServiceServer;
use warden_server::{Runtime, RuntimeError, Serving};

use crate::config::AuditConfig;
use crate::keys::{KeyError, MasterKey, load_signer};
use crate::log::{AuditError, AuditLog, Batching, now_micros};
use crate::service::AuditServiceImpl;
use crate::store::AuditStore;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("keys: {0}")]
    Key(#[from] KeyError),
    #[error("audit log: {0}")]
    Log(#[from] AuditError),
    #[error("secret: {0}")]
    Secret(#[from] warden_auth::secret::SecretError),
}

/// A running audit service.
pub struct AuditServer {
    /// Its addresses (through `Deref`) and its handle.
    pub serving: Serving,
    pub log: Arc<AuditLog>,
    /// The checkpoint verifier key (also printed at start).
    pub verifier_key: String,
    stopping: tokio::sync::watch::Sender<bool>,
}

impl AuditServer {
    pub async fn start(config: AuditConfig) -> Result<AuditServer, StartError> {
        let mut runtime = Runtime::start("audit", &config.auth, &config.data_dir, &config.metrics_listen).await?;
        let database = runtime.database(&config.database_url, &config.data_dir).await?;
        let signing_key = runtime.secrets.resolve_setting(&config.signing_key).await?;
        let master_key = runtime.secrets.resolve_setting(&config.master_key).await?;
        let (signer, created) = load_signer(
            &config.origin,
            signing_key.as_ref().map(|k| k.expose()).unwrap_or(""),
            &config.signing_key_path(),
        )?;
        if created {
            tracing::warn!(path = %config.signing_key_path().display(), "created a new checkpoint signing key");
        }
        let master = MasterKey::load(master_key.as_ref().map(|k| k.expose()).unwrap_or(""), &config.master_key_path())?;
        let log = AuditLog::open(
            AuditStore::new(database.clone()),
            signer,
            master,
            Batching { max_batch: config.max_batch, stripes: config.append_connections },
        )
        .await?;
        let verifier_key = log.verifier_key();
        tracing::info!(verifier_key = %verifier_key, "checkpoint verifier key");

        runtime.auth.set_denial_sink(Arc::new(LogDenials(log.clone())));
        if !config.retention.is_zero() {
            runtime.spawn(run_retention(log.clone(), config.retention, config.retention_interval));
        }
        runtime.serving::<AuditServiceServer<AuditServiceImpl>>().await;
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        let service = AuditServiceServer::new(
            AuditServiceImpl::new(log.clone(), runtime.auth.clone(), stopping)
                .with_max_future_skew(config.max_future_skew),
        )
        .max_decoding_message_size(warden_contract::bounds::MESSAGE_BYTES)
        .max_encoding_message_size(warden_contract::bounds::MESSAGE_BYTES);
        let serving = runtime.serve(&config.listen, tonic::service::Routes::new(service)).await?;
        Ok(AuditServer { serving, log, verifier_key, stopping: stopping_tx })
    }

    /// Stops accepting requests and lets in-flight ones finish.
    pub async fn shutdown(self) {
        self.stopping.send_replace(true);
        self.serving.stop().await;
    }
}

warden_server::service!(
    AuditServer,
    AuditConfig,
    "warden-audit",
    StartError,
    banner = |server: &AuditServer| Some(format!(
        "warden-audit listening on {} (checkpoint verifier key {})",
        server.addr, server.verifier_key
    ))
);

/// Denials of calls to the audit service are recorded in the log itself.
struct LogDenials(Arc<AuditLog>);

impl warden_auth::DenialSink for LogDenials {
    fn record(&self, event: warden_proto::audit::v1::AuditEvent) {
        let log = self.0.clone();
        let input = crate::log::EventInput {
            event_id: event.event_id,
            event_type: event.event_type,
            time_micros: None,
            correlation_id: event.correlation_id,
            agent_id: event.agent_id,
            actor: event.actor,
            subject: event.subject,
            payload: event.payload,
            sensitive: event.sensitive,
        };
        tokio::spawn(async move {
            if let Err(error) = log.append(vec![input]).await {
                tracing::warn!(%error, "cannot record an auth denial");
            }
        });
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
