//! The decision log: every decision becomes a `policy_evaluation` audit
//! event, written first to a local outbox (an SQLite file in the data
//! directory) and shipped to the audit service in batches.
//!
//! - `Evaluate` never waits for the audit service. In `sync` durability
//!   (the default) it waits for the outbox write, which is group-committed:
//!   concurrent decisions share one fsync. In `async` durability it does not
//!   wait at all, and a crash may lose the last few milliseconds.
//! - The shipper sends the oldest rows through the resilience pipeline and
//!   deletes them only after the audit service acknowledged them. A crash
//!   between the two resends them, and the audit service's idempotent
//!   appends (event_id = decision_id) keep each decision exactly once.
//! - When the outbox holds `outbox_cap` events, `block` makes `Evaluate`
//!   answer UNAVAILABLE with RetryInfo, and `drop` skips the decision log
//!   (counted and logged).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::{Notify, mpsc, oneshot};
use warden_errors::{Category, Classify, WardenError};
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_resilience::grpc::{ResilienceLayer, ResilientService};
use warden_resilience::{Backoff, BreakerConfig, BreakerRegistry, Pipeline, RetryPolicy};

use crate::metrics::METRICS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The decision is on disk before `Evaluate` answers.
    #[default]
    Sync,
    /// The decision is queued in memory and written within milliseconds.
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// `Evaluate` answers UNAVAILABLE with RetryInfo.
    #[default]
    Block,
    /// The decision is not logged (counted in a metric and logged).
    Drop,
}

/// The `[decision_log]` section of the policy engine's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    pub durability: Durability,
    /// Most events the outbox may hold.
    pub outbox_cap: u64,
    pub when_full: WhenFull,
    /// Most events per Append call to the audit service.
    pub batch: usize,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig { durability: Durability::Sync, outbox_cap: 100_000, when_full: WhenFull::Block, batch: 500 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    #[error("the decision log outbox is full ({0} events); retry shortly")]
    Full(u64),
    #[error("decision log outbox: {0}")]
    Store(#[from] warden_store::StoreError),
    #[error("the decision log writer has stopped")]
    Stopped,
    #[error("invalid audit url {0:?}: {1}")]
    Url(String, String),
}

impl Classify for DecisionLogError {
    fn category(&self) -> Category {
        match self {
            DecisionLogError::Full(_) => Category::Transient,
            DecisionLogError::Store(error) => error.category(),
            DecisionLogError::Stopped => Category::Internal,
            DecisionLogError::Url(..) => Category::Permanent,
        }
    }
    fn reason(&self) -> &str {
        match self {
            DecisionLogError::Full(_) => "DECISION_LOG_FULL",
            DecisionLogError::Store(error) => error.reason(),
            DecisionLogError::Stopped => "DECISION_LOG_STOPPED",
            DecisionLogError::Url(..) => "INVALID_AUDIT_URL",
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            DecisionLogError::Full(_) => Some(Duration::from_secs(1)),
            DecisionLogError::Store(error) => error.retry_after(),
            _ => None,
        }
    }
}

struct WriteJob {
    event: Vec<u8>,
    /// The decision's trace, continued by the shipping span.
    traceparent: Option<String>,
    ack: Option<oneshot::Sender<Result<(), String>>>,
}

pub struct DecisionLog {
    writer: mpsc::Sender<WriteJob>,
    /// Events accepted and not yet acknowledged by the audit service.
    pending: Arc<AtomicU64>,
    config: DecisionLogConfig,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog").field("pending", &self.pending.load(Ordering::Relaxed)).finish()
    }
}

type AuditClient = AuditServiceClient<
    tonic::service::interceptor::InterceptedService<
        ResilientService<tonic::transport::Channel>,
        warden_auth::CallCredentials,
    >,
>;

impl DecisionLog {
    /// Opens the outbox in `data_dir` and starts the writer and the shipper.
    /// `identity` is what the engine presents to the audit service (its
    /// API key or client certificate).
    pub async fn start(
        audit_url: &str,
        identity: &warden_auth::ClientIdentity,
        data_dir: &Path,
        config: DecisionLogConfig,
    ) -> Result<Arc<DecisionLog>, DecisionLogError> {
        let url = format!("sqlite://{}", data_dir.join("decision-outbox.db").display());
        let database = warden_store::Database::connect(&url).await?;
        let warden_store::Database::Sqlite(pool) = database else { unreachable!("the outbox is always SQLite") };
        // A local file private to this process: its one table is created
        // here rather than by the shared migrations.
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS decision_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event BLOB NOT NULL, \
             traceparent TEXT)",
        )
        .execute(&pool)
        .await
        .map_err(warden_store::translate)?;
        // Outboxes written by an earlier release lack the trace column.
        if sqlx::query("SELECT traceparent FROM decision_outbox LIMIT 0").execute(&pool).await.is_err() {
            sqlx::query("ALTER TABLE decision_outbox ADD COLUMN traceparent TEXT")
                .execute(&pool)
                .await
                .map_err(warden_store::translate)?;
        }
        let backlog: i64 = sqlx::query("SELECT COUNT(*) AS n FROM decision_outbox")
            .fetch_one(&pool)
            .await
            .map_err(warden_store::translate)?
            .try_get("n")
            .map_err(warden_store::translate)?;
        let pending = Arc::new(AtomicU64::new(backlog as u64));
        METRICS.outbox_pending.set(backlog);
        let channel = identity
            .endpoint(audit_url)
            .map_err(|e| DecisionLogError::Url(audit_url.to_owned(), e))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let credentials = identity.credentials().map_err(|e| DecisionLogError::Url(audit_url.to_owned(), e))?;
        let breaker_name = format!("warden-audit:{audit_url}");
        let breaker = BreakerRegistry::global().get_or_create(&breaker_name, || BreakerConfig {
            open_duration: Duration::from_millis(500),
            half_open_max_calls: 1,
            success_threshold: 1,
            ..BreakerConfig::default()
        });
        let pipeline = Pipeline::builder(breaker_name)
            .retry(RetryPolicy {
                max_attempts: 3,
                deadline: Some(Duration::from_secs(10)),
                backoff: Backoff::exponential(Duration::from_millis(50), Duration::from_secs(1)),
            })
            .breaker(breaker)
            .timeout(Duration::from_secs(5))
            .build();
        let client = AuditServiceClient::new(tonic::service::interceptor::InterceptedService::new(
            tower::ServiceBuilder::new().layer(ResilienceLayer::new(pipeline)).service(channel),
            credentials,
        ));
        let (writer, jobs) = mpsc::channel(65_536);
        let wake = Arc::new(Notify::new());
        tokio::spawn(run_writer(pool.clone(), jobs, pending.clone(), wake.clone()));
        tokio::spawn(run_shipper(pool, client, config.batch.max(1), pending.clone(), wake));
        Ok(Arc::new(DecisionLog { writer, pending, config }))
    }

    /// Events not yet acknowledged by the audit service.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Records one decision's event.
    pub async fn record(&self, event: audit::AuditEvent) -> Result<(), DecisionLogError> {
        let pending = self.pending.load(Ordering::Relaxed);
        if pending >= self.config.outbox_cap {
            return match self.config.when_full {
                WhenFull::Block => Err(DecisionLogError::Full(pending)),
                WhenFull::Drop => {
                    METRICS.decisions_dropped.inc();
                    tracing::warn!(pending, event_id = %event.event_id, "decision log outbox full; decision not logged");
                    Ok(())
                }
            };
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        let bytes = event.encode_to_vec();
        let traceparent = warden_telemetry::current_traceparent();
        match self.config.durability {
            Durability::Async => self
                .writer
                .send(WriteJob { event: bytes, traceparent, ack: None })
                .await
                .map_err(|_| DecisionLogError::Stopped),
            Durability::Sync => {
                let (ack, written) = oneshot::channel();
                self.writer
                    .send(WriteJob { event: bytes, traceparent, ack: Some(ack) })
                    .await
                    .map_err(|_| DecisionLogError::Stopped)?;
                match written.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(DecisionLogError::Store(warden_store::StoreError::Unavailable(error))),
                    Err(_) => Err(DecisionLogError::Stopped),
                }
            }
        }
    }
}

/// Denials (unauthenticated calls, missing roles, impersonation) reach the
/// audit log through the same outbox as decisions, without waiting.
impl warden_auth::DenialSink for DecisionLog {
    fn record(&self, event: audit::AuditEvent) {
        if self.pending.load(Ordering::Relaxed) >= self.config.outbox_cap {
            METRICS.decisions_dropped.inc();
            return;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        let job =
            WriteJob { event: event.encode_to_vec(), traceparent: warden_telemetry::current_traceparent(), ack: None };
        if self.writer.try_send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            METRICS.decisions_dropped.inc();
        }
    }
}

/// Writes queued events in one transaction per batch (group commit).
async fn run_writer(
    pool: sqlx::SqlitePool,
    mut jobs: mpsc::Receiver<WriteJob>,
    pending: Arc<AtomicU64>,
    wake: Arc<Notify>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = write_batch(&pool, &batch).await;
        if let Err(error) = &result {
            // Not written: these events are not pending any more.
            pending.fetch_sub(batch.len() as u64, Ordering::Relaxed);
            tracing::error!(%error, events = batch.len(), "cannot write the decision log outbox");
        }
        METRICS.outbox_pending.set(pending.load(Ordering::Relaxed) as i64);
        for job in batch {
            if let Some(ack) = job.ack {
                let _ = ack.send(result.clone().map_err(|e| e.to_string()));
            }
        }
        wake.notify_one();
    }
}

async fn write_batch(pool: &sqlx::SqlitePool, batch: &[WriteJob]) -> Result<(), String> {
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    for chunk in batch.chunks(500) {
        let marks = vec!["(?, ?)"; chunk.len()].join(", ");
        let text = format!("INSERT INTO decision_outbox (event, traceparent) VALUES {marks}");
        let mut query = sqlx::query(&text);
        for job in chunk {
            query = query.bind(&job.event).bind(&job.traceparent);
        }
        query.execute(&mut *tx).await.map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())
}

/// Sends the oldest outbox rows to the audit service, deleting them once
/// acknowledged.
async fn run_shipper(
    pool: sqlx::SqlitePool,
    client: AuditClient,
    batch: usize,
    pending: Arc<AtomicU64>,
    wake: Arc<Notify>,
) {
    let mut failures = 0u32;
    loop {
        let rows = sqlx::query("SELECT id, event, traceparent FROM decision_outbox ORDER BY id LIMIT ?")
            .bind(batch as i64)
            .fetch_all(&pool)
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(%error, "cannot read the decision log outbox");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if rows.is_empty() {
            // Wait for the writer, with a timeout as a safety net.
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        }
        let mut last_id = 0i64;
        let mut events = Vec::with_capacity(rows.len());
        // The shipping span continues the first decision's trace and links
        // the others, so a decision's trace reaches the audit append.
        let span = tracing::info_span!("decision_log_ship", events = rows.len());
        for (i, row) in rows.iter().enumerate() {
            if let Ok(Some(traceparent)) = row.try_get::<Option<String>, _>("traceparent") {
                use opentelemetry::trace::TraceContextExt;
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                let context = warden_telemetry::context_from_traceparent(&traceparent);
                if i == 0 {
                    let _ = span.set_parent(context);
                } else {
                    span.add_link(context.span().span_context().clone());
                }
            }
        }
        for row in &rows {
            last_id = row.get::<i64, _>("id");
            let bytes: Vec<u8> = row.get("event");
            match audit::AuditEvent::decode(bytes.as_slice()) {
                Ok(event) => events.push(event),
                Err(error) => tracing::error!(%error, id = last_id, "skipping an undecodable outbox row"),
            }
        }
        let shipped = if events.is_empty() {
            Ok(())
        } else {
            use tracing::Instrument;
            client.clone().append(audit::AppendRequest { events }).instrument(span).await.map(drop)
        };
        match shipped {
            Ok(()) => {
                failures = 0;
                if let Err(error) =
                    sqlx::query("DELETE FROM decision_outbox WHERE id <= ?").bind(last_id).execute(&pool).await
                {
                    // The rows will be resent and deduplicated by the audit service.
                    tracing::error!(%error, "cannot trim the decision log outbox");
                    continue;
                }
                pending.fetch_sub(rows.len() as u64, Ordering::Relaxed);
                METRICS.decisions_shipped.inc_by(rows.len() as u64);
                METRICS.outbox_pending.set(pending.load(Ordering::Relaxed) as i64);
            }
            Err(status) => {
                failures += 1;
                let error = WardenError::from_status(&status);
                let delay =
                    error.retry_after.unwrap_or_else(|| Duration::from_millis(100 * u64::from(failures.min(20))));
                tracing::warn!(code = ?status.code(), reason = %error.reason, pending = pending.load(Ordering::Relaxed), "audit service unavailable; decisions wait in the outbox");
                tokio::time::sleep(delay.min(Duration::from_secs(5))).await;
            }
        }
    }
}
