//! Dead letters: the `warden.deadletter.v1.DeadLetterService` handlers,
//! over whatever a service keeps them in ([`DeadLetters`]): the policy
//! engine's decision log keeps files, the approval and alerting services
//! keep a table beside their outbox ([`OutboxTable`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use warden_errors::{Validator, WardenError, to_status};
use warden_proto::deadletter::v1 as pb;
use warden_proto::deadletter::v1::dead_letter_service_server::{DeadLetterService, DeadLetterServiceServer};
use warden_store::Database;
use warden_store::outbox::Outbox;

static DEAD_LETTERED: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    warden_telemetry::register(
        prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "warden_dead_letters_total",
                "Items a receiver refused for good, moved to the dead letters, by service and kind",
            ),
            &["service", "kind"],
        )
        .expect("valid metric"),
    )
});

/// Counts items dead-lettered by `service` (the alert rule
/// `WardenDeadLetters` fires on it).
pub fn count(service: &str, kind: &str, n: usize) {
    if n > 0 {
        DEAD_LETTERED.with_label_values(&[service, kind]).inc_by(n as u64);
    }
}

/// The `dead_lettered` audit event that records a dead letter (an alert
/// rule of the alerting service fires on it). Its id derives from the dead
/// event's, so recording it again after a crash keeps it once. `None` for
/// a dead `dead_lettered` event: no event about an event about an event.
pub fn dead_lettered_event(
    service: &str,
    dead: &warden_proto::audit::v1::AuditEvent,
    reason: &str,
    bytes: usize,
) -> Option<warden_proto::audit::v1::AuditEvent> {
    use prost_types::value::Kind;
    if dead.event_type == "dead_lettered" {
        return None;
    }
    let text = |s: &str| prost_types::Value { kind: Some(Kind::StringValue(s.to_owned())) };
    let mut reason = reason.to_owned();
    if reason.len() > warden_contract::bounds::REASON_BYTES {
        let mut cut = warden_contract::bounds::REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("service".to_string(), text(service));
    fields.insert("dead_event_id".to_string(), text(&dead.event_id));
    fields.insert("dead_event_type".to_string(), text(&dead.event_type));
    fields.insert("reason".to_string(), text(&reason));
    fields.insert("bytes".to_string(), prost_types::Value { kind: Some(Kind::NumberValue(bytes as f64)) });
    let id = format!("dead:{service}:{}", dead.event_id);
    Some(warden_proto::audit::v1::AuditEvent {
        event_id: if id.len() <= warden_contract::bounds::ID_BYTES { id } else { String::new() },
        event_type: "dead_lettered".into(),
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        correlation_id: dead.correlation_id.clone(),
        agent_id: dead.agent_id.clone(),
        actor: format!("warden-{service}"),
        payload: Some(prost_types::Struct { fields }),
        sensitive: None,
        subject: String::new(),
    })
}

/// Most dead letters listed at once, or named in one replay.
pub const MAX_LIST: u32 = 1000;
const DEFAULT_LIST: u32 = 100;

/// Where a service keeps what its receivers refused for good.
#[tonic::async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// The oldest `limit`, and how many there are.
    async fn list(&self, limit: u32) -> Result<(Vec<pb::DeadLetter>, u64), WardenError>;
    /// Puts those named (all when `ids` is empty) back in the delivery
    /// queue; returns how many. Unknown ids are skipped.
    async fn replay(&self, ids: &[String]) -> Result<u64, WardenError>;
}

/// The gRPC service over a [`DeadLetters`].
pub fn service<D: DeadLetters>(dead_letters: Arc<D>) -> DeadLetterServiceServer<Handlers<D>> {
    DeadLetterServiceServer::new(Handlers(dead_letters))
}

/// The handlers: validation, then the store.
#[derive(Debug)]
pub struct Handlers<D>(Arc<D>);

#[tonic::async_trait]
impl<D: DeadLetters> DeadLetterService for Handlers<D> {
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let limit = request.get_ref().limit;
        let mut v = Validator::new();
        v.check(limit <= MAX_LIST, "limit", format!("at most {MAX_LIST}"));
        v.finish().map_err(|e| to_status(&e))?;
        let limit = if limit == 0 { DEFAULT_LIST } else { limit };
        let (dead_letters, total) = self.0.list(limit).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ListDeadLettersResponse { dead_letters, total }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let ids = &request.get_ref().ids;
        let mut v = Validator::new();
        v.check(ids.len() <= MAX_LIST as usize, "ids", format!("at most {MAX_LIST}"));
        for (i, id) in ids.iter().enumerate() {
            v.required_str(&format!("ids[{i}]"), id, warden_contract::bounds::ID_BYTES);
        }
        v.finish().map_err(|e| to_status(&e))?;
        let requeued = self.0.replay(ids).await.map_err(|e| to_status(&e))?;
        tracing::warn!(requeued, named = ids.len(), "dead letters replayed");
        Ok(Response::new(pb::ReplayDeadLettersResponse { requeued }))
    }
}

/// A dead letter's listing, from what it holds.
pub fn describe(id: String, kind: &str, payload: &[u8], reason: String, dead_at_micros: i64) -> pb::DeadLetter {
    let (event_id, event_type) = match warden_client::OutboxItem::decode(kind, payload) {
        Some(warden_client::OutboxItem::Audit(event)) => (event.event_id, event.event_type),
        _ => (String::new(), String::new()),
    };
    pb::DeadLetter {
        id,
        kind: kind.to_owned(),
        event_id,
        event_type,
        reason,
        dead_at: Some(prost_types::Timestamp {
            seconds: dead_at_micros.div_euclid(1_000_000),
            nanos: (dead_at_micros.rem_euclid(1_000_000) * 1000) as i32,
        }),
        bytes: payload.len() as u64,
    }
}

/// A service's outbox table, for what the runtime does with it: queue
/// events that belong to no change (refusals), and list and replay its
/// dead letters (`<table>_dead`).
#[derive(Debug, Clone)]
pub struct OutboxTable {
    pub database: Database,
    pub outbox: Outbox,
    /// The service's SQLite writer lock (SQLite allows one writer).
    pub sqlite_writer: Arc<tokio::sync::Mutex<()>>,
}

impl OutboxTable {
    async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.database {
            Database::Sqlite(_) => Some(self.sqlite_writer.lock().await),
            Database::Postgres(_) => None,
        }
    }

    /// Claims up to `limit` due rows until `until_micros` (see
    /// [`warden_store::outbox`]).
    pub async fn claim(
        &self,
        replica: &str,
        now_micros: i64,
        until_micros: i64,
        limit: i64,
    ) -> Result<Vec<warden_store::outbox::ClaimedRow>, warden_store::StoreError> {
        let _writer = self.writer().await;
        self.outbox.claim(&self.database, replica, now_micros, until_micros, limit).await
    }

    /// Deletes delivered rows (only while `replica` holds them).
    pub async fn delivered(&self, replica: &str, ids: &[i64]) -> Result<(), warden_store::StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _writer = self.writer().await;
        self.outbox.delivered(&self.database, replica, ids).await
    }

    /// Releases a row for another attempt at `retry_at_micros`.
    pub async fn retry_later(&self, id: i64, retry_at_micros: i64) -> Result<(), warden_store::StoreError> {
        let _writer = self.writer().await;
        self.outbox.retry_later(&self.database, id, retry_at_micros).await
    }

    /// Moves rows refused for good to the dead letters, with why.
    pub async fn dead_letter(
        &self,
        replica: &str,
        rows: &[(i64, String)],
        now_micros: i64,
    ) -> Result<(), warden_store::StoreError> {
        let _writer = self.writer().await;
        self.outbox.dead_letter(&self.database, replica, rows, now_micros).await
    }

    /// Rows waiting.
    pub async fn waiting(&self) -> Result<i64, warden_store::StoreError> {
        self.outbox.len(&self.database).await
    }

    /// Queues audit events in a transaction of their own.
    pub async fn enqueue_audit(
        &self,
        events: &[warden_proto::audit::v1::AuditEvent],
    ) -> Result<(), warden_store::StoreError> {
        let rows: Vec<_> = events.iter().map(|e| warden_client::OutboxItem::Audit(e.clone()).encode()).collect();
        let _writer = self.writer().await;
        self.outbox.enqueue(&self.database, &rows).await
    }
}

/// Refusals (`auth_denied` events) go to the audit log through `table`,
/// without the refused request waiting for the write.
impl warden_auth::DenialSink for OutboxTable {
    fn record(&self, event: warden_proto::audit::v1::AuditEvent) {
        let table = self.clone();
        tokio::spawn(async move {
            if let Err(error) = table.enqueue_audit(&[event]).await {
                tracing::warn!(%error, "cannot queue an auth_denied event");
            }
        });
    }
}

#[tonic::async_trait]
impl DeadLetters for OutboxTable {
    async fn list(&self, limit: u32) -> Result<(Vec<pb::DeadLetter>, u64), WardenError> {
        let (rows, total) = self.outbox.dead_letters(&self.database, i64::from(limit)).await.map_err(store_error)?;
        let listed = rows
            .into_iter()
            .map(|row| describe(row.id.to_string(), &row.kind, &row.payload, row.reason, row.dead_at_micros))
            .collect();
        Ok((listed, total.max(0) as u64))
    }

    async fn replay(&self, ids: &[String]) -> Result<u64, WardenError> {
        let numbers: Vec<i64> = ids.iter().filter_map(|id| id.parse().ok()).collect();
        let _writer = self.writer().await;
        let selected = if ids.is_empty() { None } else { Some(numbers.as_slice()) };
        self.outbox.requeue(&self.database, selected).await.map_err(store_error)
    }
}

fn store_error(error: warden_store::StoreError) -> WardenError {
    use warden_errors::Classify;
    WardenError::new(error.category(), error.reason(), error.to_string())
}
