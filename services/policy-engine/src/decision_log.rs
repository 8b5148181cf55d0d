//! The decision log: every decision becomes a `policy_evaluation` audit
//! event, written first to a local journal (`warden-journal`: append-only
//! segment files in `DATA_DIR/decision-log/`) and shipped to the audit
//! service in batches.
//!
//! - `Evaluate` never waits for the audit service. In `sync` durability
//!   (the default) it waits until the decision is on disk; the journal
//!   group-commits, so every decision waiting shares one `fdatasync` and
//!   the next group forms while it runs. In `async` durability it does not
//!   wait at all: the journal writes decisions in groups, at most a
//!   millisecond apart under load (the writer rests between them instead
//!   of being woken for each), with no sync of their own, and syncs within
//!   50 ms; a crash of the process loses only decisions still queued for
//!   the writer (about a millisecond's), a power loss at most the last
//!   50 ms.
//! - The shipper sends the oldest records through the resilience pipeline
//!   and moves the journal's cursor only after the audit service
//!   acknowledged them; segments wholly shipped are deleted. A crash
//!   between the two resends them, and the audit service's idempotent
//!   appends (event_id = decision_id) keep each decision exactly once.
//! - A decision allowed by an approval is the exception: its event goes
//!   with the `Redeem` call and the approval service commits it with the
//!   redemption (one durable write, not two in series), unless that
//!   service ships no audit events.
//! - When the outbox holds `outbox_cap` events, `block` makes `Evaluate`
//!   answer UNAVAILABLE with RetryInfo, and `drop` skips the decision log
//!   (counted and logged).
//! - A record the audit service refuses for good (`INVALID_ARGUMENT` and
//!   the like; see `warden_client::append_isolating`), or one that does not
//!   decode, never blocks the records after it: it is written to a
//!   dead-letter file (`DATA_DIR/decision-log-dead-letters/`, synced before
//!   the cursor moves past it, named by its journal sequence so a crash
//!   writes it once), counted in `warden_dead_letters_total`, recorded as a
//!   `dead_lettered` audit event, and listed and replayed through
//!   `warden.deadletter.v1` (`wardenctl dead-letters`). Batches are sized
//!   by bytes as well as count, below the audit service's message limit.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prost::Message;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use warden_errors::{Category, Classify, WardenError};
use warden_journal::{Journal, Reader};
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_resilience::BreakerConfig;
use warden_server::now_micros;

use crate::metrics::METRICS;

/// How long the journal's writer rests after writing `async` decisions
/// (see `warden_journal::Options::write_window`).
pub const ASYNC_WRITE_WINDOW: Duration = Duration::from_millis(1);

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
    /// Bytes per journal segment file; a shipped segment is deleted.
    pub segment_bytes: u64,
    /// How long the journal waits for more decisions to share one
    /// `fdatasync` (`sync` durability): fewer syncs for that much latency.
    #[serde(with = "humantime_serde")]
    pub commit_delay: Duration,
    /// The journal waits `commit_delay` only while recent syncs were
    /// shared by at least this many decisions on average (under load); a
    /// lone caller's decision is synced at once.
    pub commit_siblings: usize,
    /// Under load, a sync waits up to this long while more decisions are
    /// still being decided than wait for it: at saturation a group then
    /// takes what arrived meanwhile (`bench h2load --decision-log sync` at
    /// 512 in flight). Equal to `commit_delay`: never longer.
    #[serde(with = "humantime_serde")]
    pub max_commit_delay: Duration,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            durability: Durability::Sync,
            outbox_cap: 100_000,
            when_full: WhenFull::Block,
            batch: 500,
            segment_bytes: 64 << 20,
            commit_delay: Duration::from_micros(200),
            commit_siblings: 2,
            max_commit_delay: Duration::from_millis(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    #[error("the decision log outbox is full ({0} events); retry shortly")]
    Full(u64),
    #[error("decision log outbox: {0}")]
    Store(#[from] warden_store::StoreError),
    #[error("decision log journal: {0}")]
    Io(#[from] std::io::Error),
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
            DecisionLogError::Io(_) => Category::Transient,
            DecisionLogError::Stopped => Category::Internal,
            DecisionLogError::Url(..) => Category::Permanent,
        }
    }
    fn reason(&self) -> &str {
        match self {
            DecisionLogError::Full(_) => "DECISION_LOG_FULL",
            DecisionLogError::Store(error) => error.reason(),
            DecisionLogError::Io(_) => "DECISION_LOG_WRITE_FAILED",
            DecisionLogError::Stopped => "DECISION_LOG_STOPPED",
            DecisionLogError::Url(..) => "INVALID_AUDIT_URL",
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            DecisionLogError::Full(_) => Some(Duration::from_secs(1)),
            DecisionLogError::Store(error) => error.retry_after(),
            DecisionLogError::Io(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

pub struct DecisionLog {
    journal: Arc<Journal>,
    config: DecisionLogConfig,
    dead_letters: Arc<JournalDeadLetters>,
    /// Decisions under way (see [`DecisionLog::under_way`]).
    busy: Arc<AtomicUsize>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog").field("pending", &self.pending()).finish()
    }
}

type AuditClient = AuditServiceClient<warden_client::PolicyChannel>;

/// A journal record: the decision's traceparent (continued by the shipping
/// span), then the encoded event.
fn encode_record(event: &[u8], traceparent: Option<String>) -> Vec<u8> {
    let traceparent = traceparent.filter(|t| t.len() < 256).unwrap_or_default();
    let mut record = Vec::with_capacity(1 + traceparent.len() + event.len());
    record.push(traceparent.len() as u8);
    record.extend_from_slice(traceparent.as_bytes());
    record.extend_from_slice(event);
    record
}

fn decode_record(record: &[u8]) -> Result<(Option<String>, audit::AuditEvent), String> {
    let (&length, rest) = record.split_first().ok_or("an empty record")?;
    let (traceparent, event) = rest.split_at_checked(length as usize).ok_or("a record cut short")?;
    let traceparent = (!traceparent.is_empty()).then(|| String::from_utf8_lossy(traceparent).into_owned());
    let event = audit::AuditEvent::decode(event).map_err(|e| e.to_string())?;
    Ok((traceparent, event))
}

/// Copies the journal writer's counters into the metrics once a second,
/// for as long as the journal is open.
async fn publish_journal_stats(journal: std::sync::Weak<Journal>) {
    let mut published = warden_journal::Stats::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(journal) = journal.upgrade() else { return };
        let now = journal.stats();
        METRICS.journal_records.inc_by(now.records - published.records);
        METRICS.journal_groups.inc_by(now.groups - published.groups);
        METRICS.journal_syncs.inc_by(now.syncs - published.syncs);
        METRICS.journal_sync_seconds.inc_by((now.sync_time - published.sync_time).as_secs_f64());
        METRICS.journal_notify_seconds.inc_by((now.notify_time - published.notify_time).as_secs_f64());
        published = now;
    }
}

/// A decision under way (see [`DecisionLog::under_way`]).
pub struct UnderWay(Arc<AtomicUsize>);

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DecisionLog {
    /// Opens the journal in `data_dir` and starts the shipper.
    /// `identity` is what the engine presents to the audit service (its
    /// API key or client certificate).
    pub async fn start(
        audit_url: &str,
        identity: &warden_auth::ClientIdentity,
        data_dir: &Path,
        config: DecisionLogConfig,
    ) -> Result<Arc<DecisionLog>, DecisionLogError> {
        let busy = Arc::new(AtomicUsize::new(0));
        let options = warden_journal::Options {
            segment_bytes: config.segment_bytes,
            commit_delay: config.commit_delay,
            commit_siblings: config.commit_siblings,
            // `async` appends are written in groups of a millisecond's
            // decisions rather than waking the writer for each.
            write_window: ASYNC_WRITE_WINDOW,
            busy: Some(busy.clone()),
            max_commit_delay: config.max_commit_delay,
            ..Default::default()
        };
        let (journal, reader, recovery) = Journal::open(&data_dir.join("decision-log"), options)?;
        if recovery.truncated_bytes > 0 || !recovery.corrupt_segments.is_empty() {
            tracing::warn!(
                truncated_bytes = recovery.truncated_bytes,
                corrupt_segments = recovery.corrupt_segments.len(),
                "decision log journal repaired"
            );
        }
        migrate_sqlite_outbox(data_dir, &journal).await?;
        METRICS.outbox_pending.set(journal.pending() as i64);
        // A short open period: the journal holds the decisions meanwhile,
        // and shipping should resume as soon as the audit service is back.
        let client_config = warden_client::ClientConfig {
            breaker: BreakerConfig {
                open_duration: Duration::from_millis(500),
                half_open_max_calls: 1,
                success_threshold: 1,
                ..BreakerConfig::default()
            },
            ..warden_client::ClientConfig::for_service(audit_url, identity.clone())
        };
        let client = warden_client::audit_client(&client_config)
            .map_err(|e| DecisionLogError::Url(audit_url.to_owned(), e.to_string()))?;
        let journal = Arc::new(journal);
        let dead_letters = Arc::new(JournalDeadLetters::open(&data_dir.join(DEAD_LETTERS_DIR), journal.clone())?);
        tokio::spawn(run_shipper(reader, client, config.batch.max(1), dead_letters.clone()));
        tokio::spawn(publish_journal_stats(Arc::downgrade(&journal)));
        Ok(Arc::new(DecisionLog { journal, config, dead_letters, busy }))
    }

    /// Counts one decision under way until the guard drops: the journal
    /// lets a sync wait longer while many are (see
    /// `warden_journal::Options::busy`).
    pub fn under_way(&self) -> UnderWay {
        self.busy.fetch_add(1, Ordering::Relaxed);
        UnderWay(self.busy.clone())
    }

    /// The dead letters, for `warden.deadletter.v1`.
    pub fn dead_letters(&self) -> Arc<JournalDeadLetters> {
        self.dead_letters.clone()
    }

    /// The journal writer's counters (decisions per sync is group
    /// commit's gain).
    pub fn journal_stats(&self) -> warden_journal::Stats {
        self.journal.stats()
    }

    /// Events not yet acknowledged by the audit service.
    pub fn pending(&self) -> u64 {
        self.journal.pending() + self.journal.queued()
    }

    /// A record to encode one decision's event into (after
    /// [`DecisionLog::record_start`], `decision_record::encode_into`), for
    /// [`DecisionLog::record`]: one buffer from the encoder to the disk.
    pub fn record_start(capacity: usize) -> Vec<u8> {
        let traceparent = warden_telemetry::current_traceparent().filter(|t| t.len() < 256).unwrap_or_default();
        let mut record = Vec::with_capacity(1 + traceparent.len() + capacity);
        record.push(traceparent.len() as u8);
        record.extend_from_slice(traceparent.as_bytes());
        record
    }

    /// Records one decision: a record begun by [`DecisionLog::record_start`]
    /// with the encoded event after it.
    pub async fn record(&self, record: Vec<u8>) -> Result<(), DecisionLogError> {
        let pending = self.pending();
        if pending >= self.config.outbox_cap {
            return match self.config.when_full {
                WhenFull::Block => Err(DecisionLogError::Full(pending)),
                WhenFull::Drop => {
                    METRICS.decisions_dropped.inc();
                    tracing::warn!(pending, "decision log outbox full; decision not logged");
                    Ok(())
                }
            };
        }
        self.journal.append(record, self.config.durability == Durability::Sync).await.map_err(|error| {
            if error.kind() == std::io::ErrorKind::BrokenPipe { DecisionLogError::Stopped } else { error.into() }
        })
    }
}

/// Denials (unauthenticated calls, missing roles, impersonation) reach the
/// audit log through the same journal as decisions, without waiting.
impl warden_auth::DenialSink for DecisionLog {
    fn record(&self, event: audit::AuditEvent) {
        if self.pending() >= self.config.outbox_cap
            || !self.journal.try_append(encode_record(&event.encode_to_vec(), warden_telemetry::current_traceparent()))
        {
            METRICS.decisions_dropped.inc();
        }
    }
}

/// Earlier releases kept the outbox in `decision-outbox.db` (SQLite): its
/// rows move into the journal, durably, before the file is removed.
async fn migrate_sqlite_outbox(data_dir: &Path, journal: &Journal) -> Result<(), DecisionLogError> {
    let path = data_dir.join("decision-outbox.db");
    if !path.exists() {
        return Ok(());
    }
    let database = warden_store::Database::connect(&format!("sqlite://{}", path.display())).await?;
    let warden_store::Database::Sqlite(pool) = &database else { unreachable!("a sqlite:// URL") };
    let rows = sqlx::query("SELECT event, traceparent FROM decision_outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .map_err(warden_store::translate)?;
    let moved = rows.len();
    for (i, row) in rows.iter().enumerate() {
        let bytes: Vec<u8> = row.try_get("event").map_err(warden_store::translate)?;
        let traceparent: Option<String> = row.try_get("traceparent").unwrap_or(None);
        match audit::AuditEvent::decode(bytes.as_slice()) {
            Ok(_) => journal.append(encode_record(&bytes, traceparent), i + 1 == moved).await?,
            Err(error) => tracing::error!(%error, "skipping an undecodable outbox row"),
        }
    }
    database.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data_dir.join(format!("decision-outbox.db{suffix}")));
    }
    tracing::info!(events = moved, "moved the sqlite decision outbox into the journal");
    Ok(())
}

/// Where dead-lettered decision records wait, beside the journal.
pub const DEAD_LETTERS_DIR: &str = "decision-log-dead-letters";

/// A dead letter on disk: what the journal held, and why it was refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeadFile {
    sequence: u64,
    event_id: String,
    event_type: String,
    reason: String,
    dead_at_micros: i64,
    /// The journal record, base64.
    record: String,
}

/// The decision log's dead letters: one file per record, named by its
/// journal sequence.
pub struct JournalDeadLetters {
    dir: std::path::PathBuf,
    journal: Arc<Journal>,
}

impl std::fmt::Debug for JournalDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalDeadLetters").field("dir", &self.dir).finish()
    }
}

impl JournalDeadLetters {
    fn open(dir: &Path, journal: Arc<Journal>) -> std::io::Result<JournalDeadLetters> {
        std::fs::create_dir_all(dir)?;
        let dead = JournalDeadLetters { dir: dir.to_owned(), journal };
        METRICS.dead_letters.set(dead.files()?.len() as i64);
        Ok(dead)
    }

    fn files(&self) -> std::io::Result<Vec<std::path::PathBuf>> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "dead"))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Writes a dead letter durably (a crash after this keeps it; one
    /// before the cursor moves writes the same file again).
    fn write(
        &self,
        record: &warden_journal::Record,
        event: Option<&audit::AuditEvent>,
        reason: &str,
    ) -> std::io::Result<()> {
        use base64::Engine as _;
        use std::io::Write as _;
        let dead = DeadFile {
            sequence: record.sequence,
            event_id: event.map(|e| e.event_id.clone()).unwrap_or_default(),
            event_type: event.map(|e| e.event_type.clone()).unwrap_or_default(),
            reason: reason.to_owned(),
            dead_at_micros: now_micros(),
            record: base64::engine::general_purpose::STANDARD.encode(&record.payload),
        };
        let name = format!("{:020}.dead", record.sequence);
        let temporary = self.dir.join(format!(".{name}.tmp"));
        {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&serde_json::to_vec(&dead).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, self.dir.join(&name))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        METRICS.dead_letters.set(self.files()?.len() as i64);
        Ok(())
    }

    fn read(path: &Path) -> std::io::Result<DeadFile> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
    }
}

fn io_error(error: std::io::Error) -> WardenError {
    WardenError::new(Category::Transient, "DEAD_LETTERS_UNREADABLE", format!("decision log dead letters: {error}"))
}

#[tonic::async_trait]
impl warden_server::dead_letters::DeadLetters for JournalDeadLetters {
    async fn list(&self, limit: u32) -> Result<(Vec<warden_proto::deadletter::v1::DeadLetter>, u64), WardenError> {
        use base64::Engine as _;
        let files = self.files().map_err(io_error)?;
        let mut listed = Vec::new();
        for path in files.iter().take(limit as usize) {
            let dead = JournalDeadLetters::read(path).map_err(io_error)?;
            let record = base64::engine::general_purpose::STANDARD.decode(&dead.record).unwrap_or_default();
            let mut item = warden_server::dead_letters::describe(
                dead.sequence.to_string(),
                "audit",
                &[],
                dead.reason,
                dead.dead_at_micros,
            );
            (item.event_id, item.event_type, item.bytes) = (dead.event_id, dead.event_type, record.len() as u64);
            listed.push(item);
        }
        Ok((listed, files.len() as u64))
    }

    async fn replay(&self, ids: &[String]) -> Result<u64, WardenError> {
        use base64::Engine as _;
        let mut requeued = 0;
        for path in self.files().map_err(io_error)? {
            let dead = JournalDeadLetters::read(&path).map_err(io_error)?;
            if !ids.is_empty() && !ids.contains(&dead.sequence.to_string()) {
                continue;
            }
            let record = base64::engine::general_purpose::STANDARD
                .decode(&dead.record)
                .map_err(|e| io_error(std::io::Error::other(e)))?;
            // Durably back in the journal before the file goes: a crash
            // between the two replays it twice, which the audit service's
            // idempotent appends record once.
            self.journal.append(record, true).await.map_err(io_error)?;
            std::fs::remove_file(&path).map_err(io_error)?;
            requeued += 1;
        }
        METRICS.dead_letters.set(self.files().map_err(io_error)?.len() as i64);
        Ok(requeued)
    }
}

/// Sends the oldest journal records to the audit service, moving the
/// journal's cursor once each is acknowledged or dead-lettered.
async fn run_shipper(mut reader: Reader, client: AuditClient, batch: usize, dead_letters: Arc<JournalDeadLetters>) {
    loop {
        let mut records = match reader.next_batch(batch).await {
            Ok(records) if records.is_empty() => return,
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "cannot read the decision log journal");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut failures = 0u32;
        while !records.is_empty() {
            match ship(&client, &records, &dead_letters).await {
                Ok(()) => {
                    let end = records.last().map_or(0, |r| r.sequence + 1);
                    if let Err(error) = reader.consumed(end) {
                        // The records will be resent and deduplicated by the audit service.
                        tracing::error!(%error, "cannot move the decision log cursor");
                    }
                    METRICS.decisions_shipped.inc_by(records.len() as u64);
                    METRICS.outbox_pending.set(reader.pending() as i64);
                    break;
                }
                Err((done, delay)) => {
                    // The first `done` records are delivered or dead-lettered.
                    if done > 0 {
                        let end = records[done - 1].sequence + 1;
                        if let Err(error) = reader.consumed(end) {
                            tracing::error!(%error, "cannot move the decision log cursor");
                        }
                        METRICS.decisions_shipped.inc_by(done as u64);
                        records.drain(..done);
                        failures = 0;
                    }
                    failures += 1;
                    let delay = delay.unwrap_or_else(|| Duration::from_millis(100 * u64::from(failures.min(20))));
                    METRICS.outbox_pending.set(reader.pending() as i64);
                    tokio::time::sleep(delay.min(Duration::from_secs(5))).await;
                }
            }
        }
    }
}

/// Ships `records`: `Ok` when every one is delivered or dead-lettered;
/// `Err((done, delay))` when the audit service could not take them now,
/// `done` being how many at the front are handled.
async fn ship(
    client: &AuditClient,
    records: &[warden_journal::Record],
    dead_letters: &JournalDeadLetters,
) -> Result<(), (usize, Option<Duration>)> {
    // The shipping span continues the first decision's trace and links
    // the others, so a decision's trace reaches the audit append.
    let span = tracing::info_span!("decision_log_ship", events = records.len());
    let mut decoded = Vec::with_capacity(records.len());
    for record in records {
        match decode_record(&record.payload) {
            Ok((traceparent, event)) => {
                if let Some(traceparent) = traceparent {
                    use opentelemetry::trace::TraceContextExt;
                    use tracing_opentelemetry::OpenTelemetrySpanExt;
                    let context = warden_telemetry::context_from_traceparent(&traceparent);
                    if decoded.iter().all(Option::is_none) {
                        let _ = span.set_parent(context);
                    } else {
                        span.add_link(context.span().span_context().clone());
                    }
                }
                decoded.push(Some(event));
            }
            Err(error) => {
                tracing::error!(%error, sequence = record.sequence, "an undecodable journal record; dead-lettered");
                decoded.push(None);
            }
        }
    }
    let events: Vec<audit::AuditEvent> = decoded.iter().flatten().cloned().collect();
    let outcomes = {
        use tracing::Instrument;
        warden_client::append_isolating(client, &events).instrument(span).await
    };
    let mut outcomes = outcomes.into_iter();
    for (index, (record, event)) in records.iter().zip(&decoded).enumerate() {
        let outcome = match event {
            None => warden_client::Delivery::Dead {
                code: tonic::Code::DataLoss,
                reason: "the journal record does not decode".into(),
            },
            Some(_) => outcomes.next().expect("an outcome per event"),
        };
        match outcome {
            warden_client::Delivery::Delivered => {}
            warden_client::Delivery::Retry(delay) => return Err((index, delay)),
            warden_client::Delivery::Dead { code, reason } => {
                let reason = format!("{code:?}: {reason}");
                if let Err(error) = dead_letters.write(record, event.as_ref(), &reason) {
                    // Not written: not consumed either; try again later.
                    tracing::error!(%error, sequence = record.sequence, "cannot write a dead letter");
                    return Err((index, Some(Duration::from_secs(1))));
                }
                warden_server::dead_letters::count("policy-engine", "audit", 1);
                let dead = event.clone().unwrap_or_default();
                // The notice is durable before the cursor moves past the
                // dead record: a crash in between dead-letters it again
                // and records the notice again, under the same id.
                if let Some(notice) = warden_server::dead_letters::dead_lettered_event(
                    "policy-engine",
                    &dead,
                    &reason,
                    record.payload.len(),
                ) && let Err(error) =
                    dead_letters.journal.append(encode_record(&notice.encode_to_vec(), None), true).await
                {
                    tracing::error!(%error, sequence = record.sequence, "cannot record a dead letter's notice");
                    return Err((index, Some(Duration::from_secs(1))));
                }
            }
        }
    }
    Ok(())
}
