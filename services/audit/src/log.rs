//! The audit log: group-committed appends, signed checkpoints, proofs,
//! verification, encryption of sensitive fields, retention.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use warden_errors::{Category, Classify, Code, FieldViolation};
use warden_merkle::note::{Checkpoint, NoteSigner, NoteVerifier};
use warden_merkle::{Hash, NodeSource};
use warden_store::StoreError;

use crate::keys::{DataKey, KeyError, MasterKey};
use crate::leaf::{LeafFields, canonical_json, payload_hash};
use crate::metrics::METRICS;
use crate::store::{
    AppendSession, Appended, AuditStore, Filter, NewEvent, Receipt, Staged, StoredCheckpoint, StoredEvent,
};

/// The event type retention appends; its correlation id records how far
/// payloads were purged (`purge-through-<sequence>`), committed to by its leaf.
pub const RETENTION_EVENT: &str = "retention_purge";
pub const FORGET_EVENT: &str = "subject_forgotten";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    #[error("{0}")]
    OutOfRange(String),
    #[error("key error: {0}")]
    Key(#[from] KeyError),
    #[error("the appender has stopped")]
    Stopped,
}

impl Classify for AuditError {
    fn category(&self) -> Category {
        match self {
            AuditError::Store(error) => error.category(),
            AuditError::Invalid(_) | AuditError::OutOfRange(_) => Category::Permanent,
            AuditError::Key(_) | AuditError::Stopped => Category::Internal,
        }
    }
    fn reason(&self) -> &str {
        match self {
            AuditError::Store(error) => error.reason(),
            AuditError::Invalid(_) => "INVALID_ARGUMENT",
            AuditError::OutOfRange(_) => "OUT_OF_RANGE",
            AuditError::Key(_) => "KEY_ERROR",
            AuditError::Stopped => "APPENDER_STOPPED",
        }
    }
    fn code(&self) -> Code {
        match self {
            AuditError::Store(error) => error.code(),
            AuditError::Invalid(_) => Code::InvalidArgument,
            AuditError::OutOfRange(_) => Code::OutOfRange,
            _ => Code::Internal,
        }
    }
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            AuditError::Store(error) => error.retry_after(),
            _ => None,
        }
    }
    fn field_violations(&self) -> &[FieldViolation] {
        match self {
            AuditError::Invalid(violations) => violations,
            _ => &[],
        }
    }
}

pub use warden_server::now_micros;

/// What a sender sent, hashed: every field but the id (the key it is
/// compared under) and the time (a retry is stamped anew by a sender or by
/// this log's clock), with the sensitive fields' plaintext (their sealing
/// differs every time).
fn content_hash(input: &EventInput, subject: &str, payload_hash: &Hash, sensitive_hash: &Hash) -> Hash {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for field in [&input.event_type, &input.correlation_id, &input.agent_id, &input.actor, subject] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update(payload_hash);
    hasher.update(sensitive_hash);
    hasher.finalize().into()
}

/// An event to append, as the API gives it.
#[derive(Debug, Clone, Default)]
pub struct EventInput {
    pub event_id: String,
    pub event_type: String,
    pub time_micros: Option<i64>,
    pub correlation_id: String,
    pub agent_id: String,
    pub actor: String,
    pub subject: String,
    pub payload: Option<prost_types::Struct>,
    pub sensitive: Option<prost_types::Struct>,
}

/// An event as read back: the stored record, its payload and decrypted
/// sensitive fields.
#[derive(Debug, Clone)]
pub struct Record {
    pub stored: StoredEvent,
    pub payload: Option<prost_types::Struct>,
    pub sensitive: Option<prost_types::Struct>,
    pub sensitive_forgotten: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub tree_size: u64,
    pub root_hash: Hash,
    pub note: String,
    pub created_at_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    pub verified: u64,
    pub first_bad_sequence: u64,
    pub problem: String,
    pub tree_size: u64,
}

/// How the appender groups commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most events committed at once (group commit).
    pub max_batch: usize,
    /// PostgreSQL: most transactions a large batch is split across.
    pub stripes: usize,
}

struct AppendJob {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Receipt>, StoreError>>,
}

pub struct AuditLog {
    store: AuditStore,
    signer: NoteSigner,
    verifier: NoteVerifier,
    origin: String,
    master: MasterKey,
    data_keys: Mutex<HashMap<String, DataKey>>,
    appender: mpsc::Sender<AppendJob>,
    size: watch::Sender<u64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("origin", &self.origin).finish()
    }
}

/// Node lookups recorded, to fetch them in one query.
struct Recorder(Vec<(u32, u64)>);

impl NodeSource for Recorder {
    type Error = std::convert::Infallible;
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        self.0.push((level, index));
        Ok([0; 32])
    }
}

struct Fetched(HashMap<(u32, u64), Hash>);

impl NodeSource for Fetched {
    type Error = StoreError;
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or_else(|| StoreError::Other(format!("tree node ({level}, {index}) is missing")))
    }
}

impl AuditLog {
    /// Opens the log and starts its appender task.
    pub async fn open(
        store: AuditStore,
        signer: NoteSigner,
        master: MasterKey,
        batching: Batching,
    ) -> Result<Arc<AuditLog>, AuditError> {
        let verifier = NoteVerifier::parse(&signer.verifier_key())
            .map_err(|e| KeyError::Invalid("signing key".into(), e.to_string()))?;
        let size = store.size().await?;
        let (size_tx, _) = watch::channel(size);
        let (appender, jobs) = mpsc::channel::<AppendJob>(4096);
        let log = Arc::new(AuditLog {
            origin: signer.name().to_owned(),
            store: store.clone(),
            signer,
            verifier,
            master,
            data_keys: Mutex::new(HashMap::new()),
            appender,
            size: size_tx,
        });
        tokio::spawn(run_appender(store, jobs, batching, log.size.clone()));
        Ok(log)
    }

    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    pub fn store(&self) -> &AuditStore {
        &self.store
    }

    /// Watches the log's size as this process appends.
    pub fn watch_size(&self) -> watch::Receiver<u64> {
        self.size.subscribe()
    }

    async fn data_key(&self, subject: &str, create: bool) -> Result<Option<DataKey>, AuditError> {
        if let Some(key) = self.data_keys.lock().unwrap_or_else(|p| p.into_inner()).get(subject) {
            return Ok(Some(key.clone()));
        }
        let wrapped = match self.store.subject_key(subject).await? {
            Some(wrapped) => wrapped,
            None if create => {
                let wrapped = self.master.wrap(subject, &rand::random::<[u8; 32]>());
                self.store.create_subject_key(subject, &wrapped, now_micros()).await?
            }
            None => return Ok(None),
        };
        let key = self.master.unwrap(subject, &wrapped)?;
        self.data_keys.lock().unwrap_or_else(|p| p.into_inner()).insert(subject.to_owned(), key.clone());
        Ok(Some(key))
    }

    /// Prepares events (ids, canonical payloads, encryption, leaf hashes)
    /// and appends them; returns once they are durable.
    pub async fn append(&self, inputs: Vec<EventInput>) -> Result<Vec<Receipt>, AuditError> {
        let events = self.prepare(inputs).await?;
        let (reply, receipt) = oneshot::channel();
        self.appender.send(AppendJob { events, reply }).await.map_err(|_| AuditError::Stopped)?;
        Ok(receipt.await.map_err(|_| AuditError::Stopped)??)
    }

    /// Events as stored: ids, canonical payloads, sealed sensitive fields
    /// and leaf hashes. Fails, naming every bad field, if any is invalid.
    pub async fn prepare(&self, inputs: Vec<EventInput>) -> Result<Vec<NewEvent>, AuditError> {
        let mut events = Vec::with_capacity(inputs.len());
        let mut violations = Vec::new();
        for (i, input) in inputs.into_iter().enumerate() {
            let event_id =
                if input.event_id.is_empty() { uuid::Uuid::now_v7().to_string() } else { input.event_id.clone() };
            let payload_json = match canonical_json(input.payload.as_ref()) {
                Ok(json) => json,
                Err(problem) => {
                    violations.push(FieldViolation::new(format!("events[{i}].payload"), problem));
                    continue;
                }
            };
            let subject = if input.subject.is_empty() { input.agent_id.clone() } else { input.subject.clone() };
            let mut sensitive_hash = [0u8; 32];
            let sensitive = match &input.sensitive {
                None => None,
                Some(fields) if fields.fields.is_empty() => None,
                Some(fields) => {
                    let json = match canonical_json(Some(fields)) {
                        Ok(json) => json,
                        Err(problem) => {
                            violations.push(FieldViolation::new(format!("events[{i}].sensitive"), problem));
                            continue;
                        }
                    };
                    if subject.is_empty() {
                        violations.push(FieldViolation::new(
                            format!("events[{i}].subject"),
                            "sensitive data needs a subject or an agent_id",
                        ));
                        continue;
                    }
                    let key = self.data_key(&subject, true).await?.expect("created on demand");
                    sensitive_hash = payload_hash(&json);
                    Some(key.seal(&event_id, json.as_bytes()))
                }
            };
            let hash = payload_hash(&payload_json);
            let content_hash = content_hash(&input, &subject, &hash, &sensitive_hash);
            let time_micros = input.time_micros.unwrap_or_else(now_micros);
            let leaf_hash = LeafFields {
                event_id: &event_id,
                event_type: &input.event_type,
                time_micros,
                correlation_id: &input.correlation_id,
                agent_id: &input.agent_id,
                actor: &input.actor,
                subject: &subject,
                payload_hash: &hash,
                sensitive: sensitive.as_deref(),
            }
            .leaf_hash();
            events.push(NewEvent {
                event_id,
                event_type: input.event_type,
                time_micros,
                correlation_id: input.correlation_id,
                agent_id: input.agent_id,
                actor: input.actor,
                subject,
                payload_json,
                payload_hash: hash,
                sensitive,
                leaf_hash,
                content_hash,
            });
        }
        if !violations.is_empty() {
            return Err(AuditError::Invalid(violations));
        }
        Ok(events)
    }

    async fn fetch_nodes<F>(&self, mut run: F) -> Result<Fetched, AuditError>
    where
        F: FnMut(&mut Recorder),
    {
        let mut recorder = Recorder(Vec::new());
        run(&mut recorder);
        recorder.0.sort_unstable();
        recorder.0.dedup();
        Ok(Fetched(self.store.nodes(&recorder.0).await?))
    }

    /// The root of the first `size` leaves, from stored nodes.
    pub async fn root(&self, size: u64) -> Result<Hash, AuditError> {
        let mut fetched = self
            .fetch_nodes(|r| {
                let _ = warden_merkle::root_hash(r, size);
            })
            .await?;
        Ok(warden_merkle::root_hash(&mut fetched, size)?)
    }

    /// Signs (and stores) a checkpoint of the current tree.
    pub async fn checkpoint(&self) -> Result<SignedCheckpoint, AuditError> {
        let size = self.store.size().await?;
        let root = self.root(size).await?;
        let body = Checkpoint { origin: self.origin.clone(), size, root }.body();
        let note = self.signer.sign(&body).map_err(|e| KeyError::Invalid("checkpoint".into(), e.to_string()))?;
        let checkpoint = StoredCheckpoint { tree_size: size, root_hash: root, note, created_at_micros: now_micros() };
        self.store.insert_checkpoint(&checkpoint).await?;
        crate::metrics::METRICS.checkpoint_time.set(checkpoint.created_at_micros as f64 / 1e6);
        crate::metrics::METRICS.checkpoint_size.set(checkpoint.tree_size as i64);
        Ok(SignedCheckpoint {
            tree_size: checkpoint.tree_size,
            root_hash: checkpoint.root_hash,
            note: checkpoint.note,
            created_at_micros: checkpoint.created_at_micros,
        })
    }

    fn resolve_size(requested: u64, current: u64, field: &str) -> Result<u64, AuditError> {
        match requested {
            0 => Ok(current),
            size if size > current => {
                Err(AuditError::OutOfRange(format!("{field} {size} is larger than the log ({current} events)")))
            }
            size => Ok(size),
        }
    }

    /// The inclusion proof of `sequence` in the tree of `tree_size` (0 = now).
    pub async fn inclusion_proof(&self, sequence: u64, tree_size: u64) -> Result<(u64, Hash, Vec<Hash>), AuditError> {
        let size = Self::resolve_size(tree_size, self.store.size().await?, "tree_size")?;
        if sequence >= size {
            return Err(AuditError::OutOfRange(format!("sequence {sequence} is not in a tree of {size} events")));
        }
        let mut fetched = self
            .fetch_nodes(|r| {
                let _ = warden_merkle::inclusion_proof(r, sequence, size);
                let _ = r.node(0, sequence);
            })
            .await?;
        let leaf = fetched.node(0, sequence)?;
        Ok((size, leaf, warden_merkle::inclusion_proof(&mut fetched, sequence, size)?))
    }

    pub async fn consistency_proof(&self, old: u64, new: u64) -> Result<(u64, Vec<Hash>), AuditError> {
        let new = Self::resolve_size(new, self.store.size().await?, "new_size")?;
        if old > new {
            return Err(AuditError::OutOfRange(format!("old_size {old} is larger than new_size {new}")));
        }
        let mut fetched = self
            .fetch_nodes(|r| {
                let _ = warden_merkle::consistency_proof(r, old, new);
            })
            .await?;
        Ok((new, warden_merkle::consistency_proof(&mut fetched, old, new)?))
    }

    fn decode(&self, stored: StoredEvent, key: Option<&DataKey>) -> Record {
        let payload = stored.payload_json.as_deref().and_then(crate::leaf::json_to_struct);
        let (sensitive, sensitive_forgotten) = match (&stored.sensitive, key) {
            (None, _) => (None, false),
            (Some(_), None) => (None, true),
            (Some(sealed), Some(key)) => match key.open(&stored.event_id, sealed) {
                Ok(plain) => (String::from_utf8(plain).ok().as_deref().and_then(crate::leaf::json_to_struct), false),
                Err(_) => (None, true),
            },
        };
        Record { stored, payload, sensitive, sensitive_forgotten }
    }

    /// Events matching `filter` from sequence `from`, decrypted where the
    /// subject's key still exists.
    pub async fn records(&self, filter: &Filter, from: u64, limit: u32) -> Result<Vec<Record>, AuditError> {
        let events = self.store.events(filter, from, limit).await?;
        let mut records = Vec::with_capacity(events.len());
        for stored in events {
            let key = if stored.sensitive.is_some() { self.data_key(&stored.subject, false).await? } else { None };
            records.push(self.decode(stored, key.as_ref()));
        }
        Ok(records)
    }

    /// Destroys a subject's data key and records that it did.
    pub async fn forget(&self, subject: &str) -> Result<bool, AuditError> {
        let forgotten = self.store.delete_subject_key(subject).await?;
        self.data_keys.lock().unwrap_or_else(|p| p.into_inner()).remove(subject);
        if forgotten {
            use sha2::Digest;
            let digest = hex::encode(sha2::Sha256::digest(subject.as_bytes()));
            let payload = prost_types::Struct {
                fields: [(
                    "subject_sha256".to_string(),
                    prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(digest)) },
                )]
                .into(),
            };
            self.append(vec![EventInput {
                event_type: FORGET_EVENT.into(),
                actor: "warden-audit".into(),
                payload: Some(payload),
                ..EventInput::default()
            }])
            .await?;
        }
        Ok(forgotten)
    }

    /// Purges payloads recorded before `cutoff_micros`, then records the
    /// purge as an event. Returns (purged through, rows deleted).
    pub async fn purge_before(&self, cutoff_micros: i64) -> Result<Option<(u64, u64)>, AuditError> {
        let Some(through) = self.store.last_recorded_before(cutoff_micros).await? else { return Ok(None) };
        let deleted = self.store.purge_payloads(through).await?;
        if deleted == 0 {
            return Ok(None);
        }
        self.append(vec![EventInput {
            event_type: RETENTION_EVENT.into(),
            correlation_id: format!("purge-through-{through}"),
            actor: "warden-audit".into(),
            ..EventInput::default()
        }])
        .await?;
        METRICS.payloads_purged.inc_by(deleted);
        tracing::info!(through, deleted, "retention purged payloads");
        Ok(Some((through, deleted)))
    }

    /// Recomputes `[from, to)` from stored data: payload hashes, leaf hashes,
    /// tree nodes, and every signed checkpoint's root.
    pub async fn verify(&self, from: u64, to: u64) -> Result<VerifyReport, AuditError> {
        let size = self.store.size().await?;
        let to = if to == 0 { size } else { to.min(size) };
        let mut report =
            VerifyReport { ok: true, verified: 0, first_bad_sequence: 0, problem: String::new(), tree_size: size };
        if from > to {
            return Err(AuditError::OutOfRange(format!("from_sequence {from} is past to_sequence {to}")));
        }
        let fail = |report: &mut VerifyReport, sequence: u64, problem: String| {
            report.ok = false;
            report.first_bad_sequence = sequence;
            report.problem = problem;
        };
        // How far retention may have purged: the largest horizon any
        // (tamper-evident) retention event records.
        let mut horizon: Option<u64> = None;
        let mut cursor = 0;
        loop {
            let filter = Filter { event_types: vec![RETENTION_EVENT.into()], ..Filter::default() };
            let page = self.store.events(&filter, cursor, 1000).await?;
            for event in &page {
                if let Some(n) = event.correlation_id.strip_prefix("purge-through-").and_then(|n| n.parse::<u64>().ok())
                {
                    horizon = Some(horizon.map_or(n, |h| h.max(n)));
                }
            }
            match page.last() {
                Some(last) if page.len() == 1000 => cursor = last.sequence + 1,
                _ => break,
            }
        }
        // Pages are read one ahead: while one page is hashed on a blocking
        // thread, the next is on its way from the database.
        const PAGE: u64 = 16_384;
        let read = |from: u64| {
            let store = self.store.clone();
            tokio::spawn(async move { store.range(from, (from + PAGE).min(to)).await })
        };
        let mut leaves: Vec<Hash> = Vec::with_capacity((to - from) as usize);
        let mut expected = from;
        let mut next = (expected < to).then(|| read(expected));
        while let Some(pending) = next.take() {
            let (events, payloads) = pending.await.map_err(|e| StoreError::Other(e.to_string()))??;
            let page_end = (expected + PAGE).min(to);
            next = (page_end < to).then(|| read(page_end));
            let checked =
                tokio::task::spawn_blocking(move || check_page(expected, page_end, &events, &payloads, horizon))
                    .await
                    .map_err(|e| StoreError::Other(e.to_string()))?;
            match checked {
                Ok(mut page_leaves) => {
                    report.verified += page_leaves.len() as u64;
                    leaves.append(&mut page_leaves);
                    expected = page_end;
                }
                Err((sequence, problem)) => {
                    if let Some(pending) = next {
                        pending.abort();
                    }
                    report.verified += sequence - expected;
                    fail(&mut report, sequence, problem);
                    return Ok(report);
                }
            }
        }
        // Inner nodes over complete subtrees inside the range, compared
        // with the stored levels.
        let mut level_hashes = leaves;
        let mut level_start = from;
        for level in 1..64u32 {
            // Align: the first complete pair at this level.
            let first_pair = level_start.div_ceil(2) * 2;
            let skip = (first_pair - level_start) as usize;
            if level_hashes.len() < skip + 2 {
                break;
            }
            let parents: Vec<Hash> =
                level_hashes[skip..].chunks_exact(2).map(|pair| warden_merkle::node_hash(&pair[0], &pair[1])).collect();
            let parent_start = first_pair / 2;
            if crate::store::is_stored_level(level) {
                let stored = self.store.level(level, parent_start, parent_start + parents.len() as u64).await?;
                let stored: HashMap<u64, Hash> = stored.into_iter().collect();
                for (offset, hash) in parents.iter().enumerate() {
                    let index = parent_start + offset as u64;
                    if stored.get(&index) != Some(hash) {
                        let first_leaf = index << level;
                        fail(
                            &mut report,
                            first_leaf,
                            format!("tree node ({level}, {index}) does not match the events under it"),
                        );
                        return Ok(report);
                    }
                }
            }
            level_hashes = parents;
            level_start = parent_start;
        }
        // Signed checkpoints: each must verify and match the tree.
        let mut previous = 0;
        for checkpoint in self.store.checkpoints().await? {
            if checkpoint.tree_size > size {
                fail(
                    &mut report,
                    size,
                    format!("checkpoint of size {} is larger than the log: events were deleted", checkpoint.tree_size),
                );
                return Ok(report);
            }
            let signed = self.verifier.verify(&checkpoint.note).ok().and_then(|text| Checkpoint::parse(text).ok());
            let Some(signed) = signed.filter(|c| c.size == checkpoint.tree_size && c.root == checkpoint.root_hash)
            else {
                fail(
                    &mut report,
                    previous,
                    format!("checkpoint of size {} has no valid signature", checkpoint.tree_size),
                );
                return Ok(report);
            };
            if self.root(signed.size).await? != signed.root {
                fail(
                    &mut report,
                    previous,
                    format!(
                        "the tree no longer matches signed checkpoint {}: events from {previous} on were altered",
                        signed.size
                    ),
                );
                return Ok(report);
            }
            previous = signed.size;
        }
        METRICS.verified_events.inc_by(report.verified);
        Ok(report)
    }
}

/// Checks one page of events `[from, to)` against their payloads and leaf
/// hashes; returns the recomputed leaves, or the first bad sequence and
/// what is wrong with it.
fn check_page(
    from: u64,
    to: u64,
    events: &[StoredEvent],
    payloads: &[(u64, String)],
    horizon: Option<u64>,
) -> Result<Vec<Hash>, (u64, String)> {
    let mut leaves = Vec::with_capacity(events.len());
    let mut payloads = payloads.iter().peekable();
    let mut expected = from;
    for event in events {
        if event.sequence != expected {
            return Err((expected, format!("event {expected} is missing (next stored is {})", event.sequence)));
        }
        while payloads.next_if(|(sequence, _)| *sequence < expected).is_some() {}
        match payloads.next_if(|(sequence, _)| *sequence == expected) {
            Some((_, json)) if payload_hash(json) != event.payload_hash => {
                return Err((expected, "payload does not match its committed hash".into()));
            }
            None if horizon.is_none_or(|h| expected > h) => {
                return Err((expected, "payload is missing and no retention purge covers it".into()));
            }
            _ => {}
        }
        let recomputed = LeafFields {
            event_id: &event.event_id,
            event_type: &event.event_type,
            time_micros: event.time_micros,
            correlation_id: &event.correlation_id,
            agent_id: &event.agent_id,
            actor: &event.actor,
            subject: &event.subject,
            payload_hash: &event.payload_hash,
            sensitive: event.sensitive.as_deref(),
        }
        .leaf_hash();
        if recomputed != event.leaf_hash {
            return Err((expected, "event fields do not match the leaf hash".into()));
        }
        leaves.push(recomputed);
        expected += 1;
    }
    if expected < to {
        return Err((expected, format!("event {expected} is missing")));
    }
    Ok(leaves)
}

/// The longest a busy appender keeps the append lock from other replicas
/// waiting for it.
const HOLD_LOCK: std::time::Duration = std::time::Duration::from_millis(100);

/// How long an idle appender keeps the append lock for the next batch.
const IDLE_GRACE: std::time::Duration = std::time::Duration::from_millis(5);

/// The Append calls of one group commit.
struct Batch {
    jobs: Vec<AppendJob>,
    events: usize,
    started: std::time::Instant,
}

impl Batch {
    fn groups(&self) -> Vec<&[NewEvent]> {
        self.jobs.iter().map(|job| job.events.as_slice()).collect()
    }
}

/// A batch written by open transactions, committing while the next batch
/// is written behind it (see [`AuditStore::stage`]).
struct InFlight {
    batch: Batch,
    staged: Staged,
}

impl InFlight {
    /// Commits it and answers its callers.
    async fn settle(self, session: &mut AppendSession, size: &watch::Sender<u64>) {
        let appended = self.staged.commit().await;
        finish(self.batch, appended, session, size);
    }
}

async fn run_appender(
    store: AuditStore,
    mut jobs: mpsc::Receiver<AppendJob>,
    batching: Batching,
    size: watch::Sender<u64>,
) {
    let Batching { max_batch, stripes } = batching;
    let mut session = AppendSession::default();
    let mut in_flight: Option<InFlight> = None;
    loop {
        // Busy for long and another replica waits: finish what is staged
        // and give it a turn (PostgreSQL queues this appender's next lock
        // request behind its).
        if session.locked_for().is_some_and(|held| held >= HOLD_LOCK) {
            if store.others_waiting(&mut session).await {
                if let Some(flight) = in_flight.take() {
                    flight.settle(&mut session, &size).await;
                }
                store.release(&mut session).await;
            } else {
                session.renew_hold();
            }
        }
        let first = match jobs.try_recv() {
            Ok(job) => Some(job),
            Err(_) if in_flight.is_some() => None,
            Err(_) => {
                // Idle: let other replicas append while this one waits. Not
                // at once: under steady load the queue empties between
                // batches, and taking the lock again costs a read of the log.
                let job = match tokio::time::timeout(IDLE_GRACE, jobs.recv()).await {
                    Ok(job) => job,
                    Err(_) => {
                        store.release(&mut session).await;
                        jobs.recv().await
                    }
                };
                match job {
                    Some(job) => Some(job),
                    None => break,
                }
            }
        };
        let Some(first) = first else {
            // Nothing queued behind the staged batch: commit it.
            if let Some(flight) = in_flight.take() {
                flight.settle(&mut session, &size).await;
            }
            continue;
        };
        let mut batch = Batch { events: first.events.len(), jobs: vec![first], started: std::time::Instant::now() };
        // Group commit: everything that queued during the last commit goes
        // into this one.
        while batch.events < max_batch {
            match jobs.try_recv() {
                Ok(job) => {
                    batch.events += job.events.len();
                    batch.jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let groups = batch.groups();
        let staged = match in_flight.take() {
            // Commit the staged batch while this one is written behind it.
            Some(InFlight { batch: before, staged }) => {
                let recorded = staged.fresh_receipts();
                let (appended, next) =
                    tokio::join!(staged.commit(), store.stage(&groups, &mut session, now_micros(), stripes, recorded));
                let failed = appended.error.is_some();
                finish(before, appended, &mut session, &size);
                match next {
                    Ok(next) if failed => {
                        // Its sequences followed on from the batch that failed.
                        next.abandon().await;
                        None
                    }
                    next => next.ok(),
                }
            }
            None => store.stage(&groups, &mut session, now_micros(), stripes, Vec::new()).await.ok(),
        };
        match staged {
            Some(staged) => in_flight = Some(InFlight { batch, staged }),
            // Not stageable, or staging failed (say, on an id the log
            // records already): append the batch reading the log first.
            None => {
                let appended = store.append(&batch.groups(), &mut session, now_micros(), stripes).await;
                finish(batch, appended, &mut session, &size);
            }
        }
    }
}

/// Answers a batch's callers once its transactions ended: receipts for the
/// calls that were committed, the error for the rest.
fn finish(batch: Batch, appended: Appended, session: &mut AppendSession, size: &watch::Sender<u64>) {
    let Batch { jobs, events, started } = batch;
    METRICS.commit_duration.observe(started.elapsed().as_secs_f64());
    METRICS.batch_size.observe(events as f64);
    let fresh = || appended.receipts.iter().flatten().filter(|r| !r.duplicate);
    METRICS.appended.inc_by(fresh().count() as u64);
    // The log's new size: one past the last sequence committed.
    let grown = fresh().map(|r| r.sequence + 1).max();
    let mut jobs_left = jobs.into_iter();
    for (job, receipts) in jobs_left.by_ref().zip(appended.receipts) {
        // An id recorded with other content refuses the whole call.
        let reply = match receipts.iter().find(|r| r.conflict) {
            Some(clash) => Err(StoreError::AlreadyExists(format!(
                "event {} is recorded with other content (event ids name one event; use a new id)",
                clash.event_id
            ))),
            None => Ok(receipts),
        };
        let _ = job.reply.send(reply);
    }
    if let Some(error) = appended.error {
        tracing::error!(%error, events, "append failed");
        // Something rolled back: the session's frontier may be ahead.
        session.reset();
        for job in jobs_left {
            let _ = job.reply.send(Err(StoreError::Other(error.to_string())));
        }
    }
    if let Some(grown) = grown {
        size.send_if_modified(|current| {
            let larger = grown > *current;
            *current = (*current).max(grown);
            larger
        });
    }
}
