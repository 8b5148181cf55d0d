//! The audit log's tables, in SQLite or PostgreSQL.
//!
//! An append batch (the events of one or more Append calls) is written by
//! one transaction, or on PostgreSQL a large one by several that commit in
//! sequence order (see [`AuditStore::append`]): duplicate detection,
//! sequence assignment, the events, their payloads, and the Merkle tree
//! nodes the new leaves complete on the stored levels.
//!
//! Only every eighth level of the tree is stored (levels 8, 16, ...; the
//! leaves are the events' `leaf_hash`). Any other node is recomputed from
//! at most 128 hashes of the stored level below it, as Tessera's tiles do:
//! a leaf costs 1/255 of a node row instead of two rows, which is most of
//! an append's write cost. On PostgreSQL appends first take an advisory
//! lock, held by the [`AppendSession`] while the appender is busy, so
//! replicas in different processes append one batch at a time and the
//! sequence and tree stay gap-free; under it, batches are staged behind
//! one another (see [`AuditStore::stage`]). SQLite has one writer by
//! design (one process owns the file).
//!
//! Query's indexes are plain indexes on `audit_events`, written with the
//! event by the same statement, so they cannot drift from the log.

use std::collections::HashMap;

use sqlx::Row;
use warden_merkle::Hash;
use warden_store::{Database, StoreError};

mod copy;
mod statements;
mod tree;

use copy::*;
use statements::*;
use tree::*;

/// The number of events in the log (sequences start at 0 and have no gaps).
const SIZE: &str = "SELECT COALESCE(MAX(sequence) + 1, 0) AS size FROM audit_events";

/// The append lock's advisory key: "WARDAUDT" (0x5741_5244_4155_4454)
/// mixed with the schema's name, so that deployments sharing a database in
/// different schemas do not hold each other up (advisory locks are
/// database-wide), while the replicas of one share the lock.
macro_rules! append_lock_key {
    () => {
        "(6287397007893283924 # hashtext(current_schema())::bigint)"
    };
}

/// The append lock, taken at session level: it covers the transactions of
/// a striped append on several connections, and is kept between batches
/// while the appender is busy, until [`UNLOCK_APPEND`].
const LOCK_APPEND: &str = concat!("SELECT pg_advisory_lock", append_lock_key!());
const UNLOCK_APPEND: &str = concat!("SELECT pg_advisory_unlock", append_lock_key!());

/// Whether any session waits for the append lock (a bigint advisory key
/// shows in `pg_locks` as its high and low halves, `objsubid` 1).
const LOCK_WAITERS: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM pg_locks, (SELECT ",
    append_lock_key!(),
    " AS key) k WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 \
     AND classid::bigint = (k.key >> 32) & 4294967295 AND objid::bigint = k.key & 4294967295)"
);

/// The smallest batch worth splitting across connections.
const STRIPE_MIN_EVENTS: usize = 256;

/// Rows per multi-row INSERT.
const CHUNK: usize = 400;

/// The distance between stored tree levels.
pub const LEVEL_STEP: u32 = 8;

/// Whether `audit_tree_nodes` holds the nodes of `level`.
pub fn is_stored_level(level: u32) -> bool {
    level > 0 && level.is_multiple_of(LEVEL_STEP)
}

/// An event ready to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: String,
    pub event_type: String,
    pub time_micros: i64,
    pub correlation_id: String,
    pub agent_id: String,
    pub actor: String,
    pub subject: String,
    pub payload_json: String,
    pub payload_hash: Hash,
    pub sensitive: Option<Vec<u8>>,
    pub leaf_hash: Hash,
    /// What the sender sent, hashed (not what the log derived from it: the
    /// sensitive fields' plaintext, not their sealing; not the time, which
    /// a retry stamps anew), to tell a retry of an event from another event
    /// under the same id.
    pub content_hash: Hash,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub sequence: u64,
    pub event_id: String,
    pub event_type: String,
    pub time_micros: i64,
    pub correlation_id: String,
    pub agent_id: String,
    pub actor: String,
    pub subject: String,
    /// `None` once retention purged it.
    pub payload_json: Option<String>,
    pub payload_hash: Hash,
    pub sensitive: Option<Vec<u8>>,
    pub leaf_hash: Hash,
    pub recorded_at_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub event_id: String,
    pub sequence: u64,
    pub leaf_hash: Hash,
    pub duplicate: bool,
    /// The recorded event's content hash (`None` for events recorded
    /// before content hashes were kept).
    pub content_hash: Option<Hash>,
    /// The event is recorded under this id with other content: its call
    /// is refused (`ALREADY_EXISTS`) and nothing of it is stored.
    pub conflict: bool,
}

/// The right edge of the tree: for each level, the complete subtree that
/// is still waiting for its right sibling.
#[derive(Debug, Clone)]
pub struct Frontier {
    pub size: u64,
    levels: Vec<Option<Hash>>,
}

impl Frontier {
    pub fn unknown() -> Self {
        Frontier { size: u64::MAX, levels: Vec::new() }
    }

    /// Adds leaf `size` and returns the nodes it completes, leaf first.
    fn push(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let mut nodes = vec![(0, self.size, leaf)];
        let (mut hash, mut level, mut index) = (leaf, 0u32, self.size);
        while index & 1 == 1 {
            let left = self.levels[level as usize].take().expect("a right child has a left sibling on the frontier");
            hash = warden_merkle::node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            nodes.push((level, index, hash));
        }
        if self.levels.len() <= level as usize {
            self.levels.resize(level as usize + 1, None);
        }
        self.levels[level as usize] = Some(hash);
        self.size += 1;
        nodes
    }
}

/// The (level, index) of each frontier node of a tree of `size` leaves.
fn frontier_keys(size: u64) -> Vec<(u32, u64)> {
    (0..64u32).filter(|level| size >> level & 1 == 1).map(|level| (level, (size >> level) - 1)).collect()
}

fn hash_of(bytes: Vec<u8>) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Other("stored hash is not 32 bytes".into()))
}

/// Rewrites `$1`-style placeholders for SQLite as plain `?`. Every query
/// here numbers its parameters in binding order, so positions agree; plain
/// `?` matters because SQLite looks numbered names up linearly, which made
/// binding a 400-row INSERT quadratic.
fn sql(database: &Database, text: &str) -> String {
    match database {
        Database::Postgres(_) => text.to_owned(),
        Database::Sqlite(_) => {
            let mut out = String::with_capacity(text.len());
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                    out.push('?');
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// Runs the same code against either pool type.
macro_rules! on_pool {
    ($database:expr, $pool:ident => $body:expr) => {
        match $database {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

macro_rules! stored_event {
    ($row:expr) => {{
        let row = $row;
        StoredEvent {
            sequence: row.try_get::<i64, _>("sequence")? as u64,
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            time_micros: row.try_get("time_micros")?,
            correlation_id: row.try_get("correlation_id")?,
            agent_id: row.try_get("agent_id")?,
            actor: row.try_get("actor")?,
            subject: row.try_get("subject")?,
            payload_json: row.try_get("payload")?,
            payload_hash: hash_of(row.try_get("payload_hash")?)?,
            sensitive: row.try_get("sensitive")?,
            leaf_hash: hash_of(row.try_get("leaf_hash")?)?,
            recorded_at_micros: row.try_get("recorded_at_micros")?,
        }
    }};
}

const EVENT_COLUMNS: &str = "e.sequence, e.event_id, e.event_type, e.time_micros, e.correlation_id, e.agent_id, \
     e.actor, e.subject, e.payload_hash, e.sensitive, e.leaf_hash, e.recorded_at_micros, p.payload";

/// What Query and Export select by.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub correlation_id: Option<String>,
    pub agent_id: Option<String>,
    pub event_types: Vec<String>,
    pub start_micros: Option<i64>,
    pub end_micros: Option<i64>,
    /// Exclusive upper bound on the sequence.
    pub before_sequence: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub tree_size: u64,
    pub root_hash: Hash,
    pub note: String,
    pub created_at_micros: i64,
}

/// What an append did: the receipts of the groups that were committed (a
/// prefix of the groups given), and why the rest were not.
#[derive(Debug)]
pub struct Appended {
    pub receipts: Vec<Vec<Receipt>>,
    pub error: Option<StoreError>,
}

/// The rows one append transaction writes.
#[derive(Debug, Default)]
struct Part<'a> {
    fresh: Vec<(u64, &'a NewEvent)>,
    nodes: Vec<(u32, u64, Hash)>,
    /// One past the last group whose events this part holds (a part
    /// starts where the one before it ends).
    end_group: usize,
}

/// Sequences, receipts and tree rows for a batch, split on group
/// boundaries into at most `stripes` parts of about equal size. Made under
/// the append lock, from the ids already `recorded` and a frontier that
/// [`sync_frontier`] brought up to the log's size.
struct Plan<'a> {
    parts: Vec<Part<'a>>,
    receipts: Vec<Vec<Receipt>>,
}

fn plan<'a>(groups: &[&'a [NewEvent]], recorded: Vec<Receipt>, frontier: &mut Frontier, stripes: usize) -> Plan<'a> {
    let total: usize = groups.iter().map(|g| g.len()).sum();
    let mut known: HashMap<String, Receipt> = recorded.into_iter().map(|r| (r.event_id.clone(), r)).collect();
    let target = total.div_ceil(stripes.max(1));
    let mut parts = vec![Part::default()];
    let mut in_part = 0;
    let mut receipts = Vec::with_capacity(groups.len());
    for (index, group) in groups.iter().enumerate() {
        if in_part >= target && parts.len() < stripes {
            parts.push(Part::default());
            in_part = 0;
        }
        let part = parts.last_mut().expect("there is always a part");
        let mut mine = Vec::with_capacity(group.len());
        // An id recorded (or earlier in this batch) with other content:
        // the whole call is refused and nothing of it written.
        let mut in_group: HashMap<&str, &Hash> = HashMap::new();
        let clash = group.iter().find(|event| {
            let recorded = known.get(&event.event_id).and_then(|r| r.content_hash);
            let earlier = in_group.insert(event.event_id.as_str(), &event.content_hash).copied();
            recorded.is_some_and(|h| h != event.content_hash) || earlier.is_some_and(|h| h != event.content_hash)
        });
        if let Some(clash) = clash {
            let recorded = known.get(&clash.event_id);
            mine.push(Receipt {
                event_id: clash.event_id.clone(),
                sequence: recorded.map_or(0, |r| r.sequence),
                leaf_hash: clash.leaf_hash,
                duplicate: true,
                content_hash: Some(clash.content_hash),
                conflict: true,
            });
            in_part += group.len();
            part.end_group = index + 1;
            receipts.push(mine);
            continue;
        }
        for event in group.iter() {
            if let Some(receipt) = known.get(&event.event_id) {
                mine.push(Receipt { duplicate: true, ..receipt.clone() });
                continue;
            }
            let sequence = frontier.size;
            part.nodes
                .extend(frontier.push(event.leaf_hash).into_iter().filter(|(level, _, _)| is_stored_level(*level)));
            part.fresh.push((sequence, event));
            let receipt = Receipt {
                event_id: event.event_id.clone(),
                sequence,
                leaf_hash: event.leaf_hash,
                duplicate: false,
                content_hash: Some(event.content_hash),
                conflict: false,
            };
            known.insert(event.event_id.clone(), receipt.clone());
            mine.push(receipt);
        }
        in_part += group.len();
        part.end_group = index + 1;
        receipts.push(mine);
    }
    Plan { parts, receipts }
}

/// The ids of a batch's events, in order.
fn ids<'a>(groups: &[&'a [NewEvent]]) -> Vec<&'a str> {
    groups.iter().flat_map(|g| g.iter()).map(|e| e.event_id.as_str()).collect()
}

/// Reloads the frontier from the stored tree if the log's size is not
/// the one it was cached at (another replica appended, or a rollback).
async fn sync_frontier<C: TreeRows>(connection: &mut C, frontier: &mut Frontier, size: u64) -> Result<(), StoreError> {
    if frontier.size != size {
        let mut loaded = Frontier { size, levels: vec![None; 64] };
        for ((level, _), hash) in compute_nodes(connection, &frontier_keys(size)).await? {
            loaded.levels[level as usize] = Some(hash);
        }
        *frontier = loaded;
    }
    Ok(())
}

/// An append in one transaction, already begun with the append lock.
async fn append_in<'c, DB>(
    mut tx: sqlx::Transaction<'c, DB>,
    groups: &[&[NewEvent]],
    frontier: &mut Frontier,
    now_micros: i64,
) -> Result<Vec<Vec<Receipt>>, StoreError>
where
    DB: sqlx::Database,
    sqlx::Transaction<'c, DB>: BatchStatements,
    DB::Connection: TreeRows,
{
    let (size, recorded) = tx.size_and_recorded(&ids(groups)).await?;
    sync_frontier(&mut *tx, frontier, size).await?;
    let plan = plan(groups, recorded, frontier, 1);
    let part = &plan.parts[0];
    tx.insert_batch(&part.fresh, &part.nodes, now_micros).await?;
    tx.commit().await?;
    Ok(plan.receipts)
}

/// What an appender keeps between batches: the tree's right edge and, on
/// PostgreSQL, the connection holding the append lock at session level
/// while the appender is busy (see [`AuditStore::release`]). While it holds
/// the lock no other appender can have grown the log, so the frontier is
/// the log's: batches are then staged without reading the log first.
#[derive(Debug)]
pub struct AppendSession {
    pub frontier: Frontier,
    lock: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    locked_since: Option<std::time::Instant>,
}

impl Default for AppendSession {
    fn default() -> Self {
        AppendSession { frontier: Frontier::unknown(), lock: None, locked_since: None }
    }
}

impl AppendSession {
    /// How long the append lock has been held, if it is.
    pub fn locked_for(&self) -> Option<std::time::Duration> {
        self.locked_since.map(|since| since.elapsed())
    }

    /// Forgets everything: the frontier, and the lock's connection, closed
    /// so that the lock ends with it.
    pub fn reset(&mut self) {
        self.frontier = Frontier::unknown();
        self.locked_since = None;
        if let Some(connection) = self.lock.take() {
            drop(connection.detach());
        }
    }

    /// Starts the hold time over: no other appender waited.
    pub fn renew_hold(&mut self) {
        if self.locked_since.is_some() {
            self.locked_since = Some(std::time::Instant::now());
        }
    }

    /// Takes the append lock at session level, unless it is held already.
    async fn lock(&mut self, pool: &sqlx::PgPool) -> Result<(), StoreError> {
        if self.lock.is_none() {
            let mut connection = pool.acquire().await?;
            sqlx::query(LOCK_APPEND).execute(&mut *connection).await?;
            self.lock = Some(connection);
            self.locked_since = Some(std::time::Instant::now());
        }
        Ok(())
    }
}

impl Drop for AppendSession {
    fn drop(&mut self) {
        // A connection holding the lock must never go back to the pool.
        if self.lock.is_some() {
            self.reset();
        }
    }
}

/// A batch whose rows are written, on PostgreSQL, by open transactions in
/// sequence order, none committed yet: [`Staged::commit`] commits them one
/// after another. Dropping it rolls them all back.
#[derive(Debug)]
pub struct Staged {
    /// Each transaction, and one past the last group it holds.
    transactions: Vec<(sqlx::Transaction<'static, sqlx::Postgres>, usize)>,
    receipts: Vec<Vec<Receipt>>,
}

impl Staged {
    /// The receipts of the events this batch adds to the log: the events a
    /// batch staged behind it must treat as recorded.
    pub fn fresh_receipts(&self) -> Vec<Receipt> {
        self.receipts.iter().flatten().filter(|r| !r.duplicate).cloned().collect()
    }

    /// Commits in sequence order, each transaction only after the one
    /// before it committed; the first that fails, and every one after it,
    /// roll back, and only the groups before it are appended.
    pub async fn commit(self) -> Appended {
        let Staged { transactions, mut receipts } = self;
        let mut committed_groups = 0;
        let mut transactions = transactions.into_iter();
        for (tx, end_group) in transactions.by_ref() {
            if let Err(error) = tx.commit().await {
                abandon(transactions.map(|(tx, _)| tx)).await;
                receipts.truncate(committed_groups);
                return Appended { receipts, error: Some(error.into()) };
            }
            committed_groups = end_group;
        }
        Appended { receipts, error: None }
    }

    /// Rolls every transaction back.
    pub async fn abandon(self) {
        abandon(self.transactions.into_iter().map(|(tx, _)| tx)).await;
    }
}

/// Rolls transactions back now rather than when their connections are next
/// used, so their rows stop holding up the appends that replace them.
async fn abandon(transactions: impl Iterator<Item = sqlx::Transaction<'static, sqlx::Postgres>>) {
    for result in futures::future::join_all(transactions.map(|tx| tx.rollback())).await {
        if let Err(error) = result {
            tracing::warn!(%error, "could not roll back an abandoned append transaction");
        }
    }
}

/// Begins a transaction for each part of `plan` (reusing `transactions`)
/// and writes the parts at once, each on its own connection. Returns the
/// parts before the first whose write failed, with that failure; the parts
/// from it on are rolled back.
async fn write_parts(
    pool: &sqlx::PgPool,
    mut transactions: Vec<sqlx::Transaction<'static, sqlx::Postgres>>,
    plan: Plan<'_>,
    now_micros: i64,
) -> (Staged, Option<StoreError>) {
    let Plan { parts, mut receipts } = plan;
    let mut error = None;
    if transactions.len() < parts.len() {
        let missing = parts.len() - transactions.len();
        for begun in futures::future::join_all((0..missing).map(|_| pool.begin())).await {
            match begun {
                Ok(tx) => transactions.push(tx),
                Err(failure) => error = error.or(Some(failure.into())),
            }
        }
    }
    let written: Vec<Result<(), StoreError>> = match error {
        Some(_) => Vec::new(),
        None => {
            futures::future::join_all(
                transactions
                    .iter_mut()
                    .zip(&parts)
                    .map(|(tx, part)| tx.insert_batch(&part.fresh, &part.nodes, now_micros)),
            )
            .await
        }
    };
    let good = written.iter().take_while(|result| result.is_ok()).count();
    if let Some(Err(failure)) = written.into_iter().nth(good) {
        error = Some(failure);
    }
    abandon(transactions.drain(good.min(transactions.len())..)).await;
    let kept: Vec<usize> = parts.iter().take(good).map(|part| part.end_group).collect();
    receipts.truncate(kept.last().copied().unwrap_or(0));
    (Staged { transactions: transactions.into_iter().zip(kept).collect(), receipts }, error)
}

/// How many transactions a PostgreSQL batch is split across.
fn stripes_for(groups: &[&[NewEvent]], stripes: usize) -> usize {
    let events: usize = groups.iter().map(|g| g.len()).sum();
    if stripes > 1 && groups.len() > 1 && events >= STRIPE_MIN_EVENTS { stripes } else { 1 }
}

/// An append on PostgreSQL under the session-level append lock (taken if
/// the session does not hold it): reads the log's size and which ids are
/// recorded, then writes and commits the batch, split across `stripes`
/// transactions when it is large (see [`AuditStore::append`]).
async fn append_locked(
    pool: &sqlx::PgPool,
    groups: &[&[NewEvent]],
    session: &mut AppendSession,
    now_micros: i64,
    stripes: usize,
) -> Appended {
    let planned = async {
        session.lock(pool).await?;
        let mut first = pool.begin().await?;
        let (size, recorded) = first.size_and_recorded(&ids(groups)).await?;
        sync_frontier(&mut *first, &mut session.frontier, size).await?;
        Ok::<_, StoreError>((first, plan(groups, recorded, &mut session.frontier, stripes_for(groups, stripes))))
    };
    let (first, plan) = match planned.await {
        Ok(planned) => planned,
        Err(error) => return Appended { receipts: Vec::new(), error: Some(error) },
    };
    let (staged, failure) = write_parts(pool, vec![first], plan, now_micros).await;
    let mut appended = staged.commit().await;
    appended.error = appended.error.or(failure);
    appended
}

#[derive(Debug, Clone)]
pub struct AuditStore {
    database: Database,
}

impl AuditStore {
    pub fn new(database: Database) -> Self {
        AuditStore { database }
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Appends the events of each group (one Append call's events) and
    /// returns each group's receipts. A group is committed whole or not at
    /// all. Events whose id is already recorded (or repeated earlier in the
    /// batch) get the first recording's receipt.
    ///
    /// On PostgreSQL a large batch of several groups is split, on group
    /// boundaries, into up to `stripes` transactions on as many
    /// connections: their inserts run at once (one backend alone leaves
    /// cores idle) and they commit in sequence order, each only after the
    /// one before it, so the log never has a gap: if one fails, it and the
    /// ones after it roll back and only the groups before it are appended.
    pub async fn append(
        &self,
        groups: &[&[NewEvent]],
        session: &mut AppendSession,
        now_micros: i64,
        stripes: usize,
    ) -> Appended {
        let result = match &self.database {
            // Under the session-level lock, kept while the appender is busy.
            Database::Postgres(pool) => match self.stage(groups, session, now_micros, stripes, Vec::new()).await {
                Ok(staged) => staged.commit().await,
                // Not stageable, or an id the log records already: read the
                // log first.
                Err(_) => append_locked(pool, groups, session, now_micros, stripes).await,
            },
            // One process owns the file: take the write lock up front (a
            // deferred transaction that reads, then writes, can deadlock
            // with another writer).
            Database::Sqlite(pool) => {
                let result = match pool.begin_with("BEGIN IMMEDIATE").await {
                    Ok(tx) => append_in(tx, groups, &mut session.frontier, now_micros).await,
                    Err(error) => Err(error.into()),
                };
                match result {
                    Ok(receipts) => Appended { receipts, error: None },
                    Err(error) => Appended { receipts: Vec::new(), error: Some(error) },
                }
            }
        };
        if result.error.is_some() {
            // Something rolled back: the cached frontier may be ahead, and
            // a connection may be broken.
            session.reset();
        }
        result
    }

    /// Whether [`AuditStore::stage`] can take a batch: on PostgreSQL, while
    /// the session holds the append lock and knows the log's size.
    pub fn can_stage(&self, session: &AppendSession) -> bool {
        matches!(self.database, Database::Postgres(_)) && session.lock.is_some() && session.frontier.size != u64::MAX
    }

    /// Writes a batch without committing it (see [`AuditStore::can_stage`]),
    /// without reading the log first: sequences come from the session's
    /// frontier, and the events of `in_flight` (those of a batch staged
    /// before this one and not yet committed) count as recorded. An id the
    /// log records already makes the unique index refuse the insert: the
    /// caller then appends the batch with [`AuditStore::append`], which
    /// reads the recorded ids first. On failure the session forgets its
    /// frontier.
    ///
    /// This is how the appender pipelines: while one batch commits, the
    /// next is written behind it. A staged batch must be committed after
    /// the one before it and abandoned if that one fails, since its
    /// sequences follow on from it.
    pub async fn stage(
        &self,
        groups: &[&[NewEvent]],
        session: &mut AppendSession,
        now_micros: i64,
        stripes: usize,
        in_flight: Vec<Receipt>,
    ) -> Result<Staged, StoreError> {
        let Database::Postgres(pool) = &self.database else {
            return Err(StoreError::Other("only PostgreSQL stages appends".into()));
        };
        if !self.can_stage(session) {
            return Err(StoreError::Other("the session does not hold the append lock".into()));
        }
        let plan = plan(groups, in_flight, &mut session.frontier, stripes_for(groups, stripes));
        match write_parts(pool, Vec::new(), plan, now_micros).await {
            (staged, None) => Ok(staged),
            (staged, Some(error)) => {
                staged.abandon().await;
                session.frontier = Frontier::unknown();
                Err(error)
            }
        }
    }

    /// Whether another appender (a replica) waits for the append lock the
    /// session holds. A failed check counts as yes.
    pub async fn others_waiting(&self, session: &mut AppendSession) -> bool {
        let Some(connection) = session.lock.as_mut() else { return false };
        sqlx::query_scalar::<_, bool>(LOCK_WAITERS).fetch_one(&mut **connection).await.unwrap_or(true)
    }

    /// Lets other appenders (replicas) in: releases the append lock if the
    /// session holds it. The appender calls this when it has nothing
    /// queued, and after holding the lock for a while.
    pub async fn release(&self, session: &mut AppendSession) {
        let Some(mut connection) = session.lock.take() else { return };
        session.locked_since = None;
        if let Err(error) = sqlx::query(UNLOCK_APPEND).execute(&mut *connection).await {
            tracing::warn!(%error, "could not release the append lock; closing its connection");
            drop(connection.detach());
        }
    }

    /// The number of events in the log.
    pub async fn size(&self) -> Result<u64, StoreError> {
        let database = &self.database;
        on_pool!(database, pool => {
            Ok(sqlx::query(SIZE).fetch_one(pool).await?.try_get::<i64, _>("size")? as u64)
        })
    }

    /// Tree nodes by (level, index), recomputed from the stored levels.
    pub async fn nodes(&self, keys: &[(u32, u64)]) -> Result<HashMap<(u32, u64), Hash>, StoreError> {
        let database = &self.database;
        on_pool!(database, pool => {
            let mut connection = pool.acquire().await?;
            compute_nodes(&mut *connection, keys).await
        })
    }

    /// Every stored node of one level in `[from, to)`, in index order.
    pub async fn level(&self, level: u32, from: u64, to: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
        let database = &self.database;
        let text = sql(
            database,
            "SELECT idx, hash FROM audit_tree_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
        );
        on_pool!(database, pool => {
            let rows = sqlx::query(&text).bind(level as i32).bind(from as i64).bind(to as i64).fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok((row.try_get::<i64, _>("idx")? as u64, hash_of(row.try_get("hash")?)?)))
                .collect()
        })
    }

    /// The events in `[from, to)` (without payloads) and, apart, the
    /// payloads still stored for them, both in sequence order. Verify's read
    /// path: two range scans on two connections at once, no join (on
    /// PostgreSQL by binary COPY: Verify ran ~35% faster than by rows).
    pub async fn range(&self, from: u64, to: u64) -> Result<(Vec<StoredEvent>, Vec<(u64, String)>), StoreError> {
        let pool = match &self.database {
            Database::Postgres(pool) => return range_by_copy(pool, from, to).await,
            Database::Sqlite(pool) => pool,
        };
        let events = async {
            let rows = sqlx::query(
                "SELECT sequence, event_id, event_type, time_micros, correlation_id, agent_id, actor, subject, \
                 payload_hash, sensitive, leaf_hash, recorded_at_micros, CAST(NULL AS TEXT) AS payload \
                 FROM audit_events WHERE sequence >= ? AND sequence < ? ORDER BY sequence",
            )
            .bind(from as i64)
            .bind(to as i64)
            .fetch_all(pool)
            .await?;
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                events.push(stored_event!(row));
            }
            Ok::<_, StoreError>(events)
        };
        let payloads = async {
            let rows = sqlx::query(
                "SELECT sequence, payload FROM audit_payloads WHERE sequence >= ? AND sequence < ? ORDER BY sequence",
            )
            .bind(from as i64)
            .bind(to as i64)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get::<i64, _>(0)? as u64, row.try_get(1)?)))
                .collect::<Result<Vec<(u64, String)>, StoreError>>()
        };
        tokio::try_join!(events, payloads)
    }

    /// Events matching `filter` with sequence >= `from`, oldest first.
    pub async fn events(&self, filter: &Filter, from: u64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let database = &self.database;
        let mut conditions = vec!["e.sequence >= $1".to_owned()];
        let mut next = 2;
        let mut mark = || {
            let m = format!("${next}");
            next += 1;
            m
        };
        if filter.correlation_id.is_some() {
            conditions.push(format!("e.correlation_id = {}", mark()));
        }
        if filter.agent_id.is_some() {
            conditions.push(format!("e.agent_id = {}", mark()));
        }
        if !filter.event_types.is_empty() {
            let marks: Vec<String> = filter.event_types.iter().map(|_| mark()).collect();
            conditions.push(format!("e.event_type IN ({})", marks.join(", ")));
        }
        if filter.start_micros.is_some() {
            conditions.push(format!("e.time_micros >= {}", mark()));
        }
        if filter.end_micros.is_some() {
            conditions.push(format!("e.time_micros < {}", mark()));
        }
        if filter.before_sequence.is_some() {
            conditions.push(format!("e.sequence < {}", mark()));
        }
        let limit_mark = mark();
        let text = sql(
            database,
            &format!(
                "SELECT {EVENT_COLUMNS} FROM audit_events e LEFT JOIN audit_payloads p ON p.sequence = e.sequence \
                 WHERE {} ORDER BY e.sequence LIMIT {limit_mark}",
                conditions.join(" AND ")
            ),
        );
        on_pool!(database, pool => {
            let mut query = sqlx::query(&text).bind(from as i64);
            if let Some(id) = &filter.correlation_id {
                query = query.bind(id);
            }
            if let Some(id) = &filter.agent_id {
                query = query.bind(id);
            }
            for event_type in &filter.event_types {
                query = query.bind(event_type);
            }
            if let Some(start) = filter.start_micros {
                query = query.bind(start);
            }
            if let Some(end) = filter.end_micros {
                query = query.bind(end);
            }
            if let Some(before) = filter.before_sequence {
                query = query.bind(before as i64);
            }
            let rows = query.bind(i64::from(limit)).fetch_all(pool).await?;
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                events.push(stored_event!(row));
            }
            Ok(events)
        })
    }

    pub async fn insert_checkpoint(&self, checkpoint: &StoredCheckpoint) -> Result<(), StoreError> {
        let database = &self.database;
        let text = sql(
            database,
            "INSERT INTO audit_checkpoints (tree_size, root_hash, note, created_at_micros) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tree_size) DO NOTHING",
        );
        on_pool!(database, pool => {
            sqlx::query(&text)
                .bind(checkpoint.tree_size as i64)
                .bind(checkpoint.root_hash.to_vec())
                .bind(&checkpoint.note)
                .bind(checkpoint.created_at_micros)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Every stored checkpoint, smallest tree first.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let database = &self.database;
        let text = "SELECT tree_size, root_hash, note, created_at_micros FROM audit_checkpoints ORDER BY tree_size";
        on_pool!(database, pool => {
            let rows = sqlx::query(text).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok(StoredCheckpoint {
                        tree_size: row.try_get::<i64, _>("tree_size")? as u64,
                        root_hash: hash_of(row.try_get("root_hash")?)?,
                        note: row.try_get("note")?,
                        created_at_micros: row.try_get("created_at_micros")?,
                    })
                })
                .collect()
        })
    }

    pub async fn subject_key(&self, subject: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let database = &self.database;
        let text = sql(database, "SELECT wrapped_key FROM audit_subject_keys WHERE subject = $1");
        on_pool!(database, pool => {
            let row = sqlx::query(&text).bind(subject).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(row.try_get("wrapped_key")?),
                None => None,
            })
        })
    }

    /// Stores a subject's wrapped key unless one exists; returns the key in
    /// effect (another replica may have won the race).
    pub async fn create_subject_key(
        &self,
        subject: &str,
        wrapped: &[u8],
        now_micros: i64,
    ) -> Result<Vec<u8>, StoreError> {
        let database = &self.database;
        let text = sql(
            database,
            "INSERT INTO audit_subject_keys (subject, wrapped_key, created_at_micros) VALUES ($1, $2, $3) \
             ON CONFLICT (subject) DO NOTHING",
        );
        on_pool!(database, pool => {
            sqlx::query(&text).bind(subject).bind(wrapped.to_vec()).bind(now_micros).execute(pool).await?;
        });
        self.subject_key(subject).await?.ok_or_else(|| StoreError::Other("subject key vanished".into()))
    }

    /// Destroys a subject's key. Returns whether there was one.
    pub async fn delete_subject_key(&self, subject: &str) -> Result<bool, StoreError> {
        let database = &self.database;
        let text = sql(database, "DELETE FROM audit_subject_keys WHERE subject = $1");
        on_pool!(database, pool => {
            Ok(sqlx::query(&text).bind(subject).execute(pool).await?.rows_affected() > 0)
        })
    }

    /// The last sequence recorded before `micros`, if any.
    pub async fn last_recorded_before(&self, micros: i64) -> Result<Option<u64>, StoreError> {
        let database = &self.database;
        let text = sql(database, "SELECT MAX(sequence) AS last FROM audit_events WHERE recorded_at_micros < $1");
        on_pool!(database, pool => {
            let last: Option<i64> = sqlx::query(&text).bind(micros).fetch_one(pool).await?.try_get("last")?;
            Ok(last.map(|l| l as u64))
        })
    }

    /// Deletes the payloads of events up to `through` (inclusive). Returns
    /// how many were deleted.
    pub async fn purge_payloads(&self, through: u64) -> Result<u64, StoreError> {
        let database = &self.database;
        let text = sql(database, "DELETE FROM audit_payloads WHERE sequence <= $1");
        on_pool!(database, pool => {
            Ok(sqlx::query(&text).bind(through as i64).execute(pool).await?.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests;
