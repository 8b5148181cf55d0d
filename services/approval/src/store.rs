//! The approval service's tables: requests, reviews, and the outbox of
//! audit events and notifications written in the same transaction as the
//! change they describe.
//!
//! Every transition is a conditional update on the current state inside a
//! transaction that first locks the request (`FOR UPDATE` on PostgreSQL,
//! `BEGIN IMMEDIATE` on SQLite), so two reviewers, or two replicas, racing
//! cannot both win, a quorum is counted under the lock, and terminal states
//! never change. Queries are written once with `$N` placeholders, which
//! both drivers accept.

use sqlx::Row;
use warden_store::{Database, SqliteWriter, StoreError};

/// A request's state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
    Redeemed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Approved => "APPROVED",
            State::Denied => "DENIED",
            State::Expired => "EXPIRED",
            State::Cancelled => "CANCELLED",
            State::Redeemed => "REDEEMED",
        }
    }

    pub fn parse(text: &str) -> State {
        match text {
            "PENDING" => State::Pending,
            "APPROVED" => State::Approved,
            "DENIED" => State::Denied,
            "CANCELLED" => State::Cancelled,
            "REDEEMED" => State::Redeemed,
            _ => State::Expired,
        }
    }

    /// No transition leaves these.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Denied | State::Expired | State::Cancelled | State::Redeemed)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReviewRow {
    pub reviewer: String,
    pub approve: bool,
    pub comment: String,
    pub at_micros: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    pub id: String,
    pub state: State,
    pub agent_id: String,
    pub requested_by: String,
    /// The canonical JSON of the action: what reviewers see and what is hashed.
    pub action_json: String,
    pub action_hash: String,
    pub correlation_id: String,
    pub rules: Vec<String>,
    pub reasons: Vec<String>,
    pub route: String,
    pub min_approvals: u32,
    pub created_at_micros: i64,
    pub expires_at_micros: i64,
    pub decided_at_micros: Option<i64>,
    pub grant_expires_at_micros: Option<i64>,
    pub redeemed_at_micros: Option<i64>,
    /// The decision the grant was spent on (empty when not redeemed, or
    /// redeemed by a caller that named no decision).
    pub redeemed_decision_id: String,
    pub outcome_reason: String,
    pub escalation_level: u32,
    pub reminded: bool,
    pub reviews: Vec<ReviewRow>,
    /// Every principal that asked for this action while it was pending
    /// (the first is `requested_by`); none of them may review it. Filled
    /// by [`ApprovalStore::get`] and [`ApprovalStore::list`].
    pub requesters: Vec<String>,
}

impl ApprovalRow {
    pub fn approvers(&self) -> Vec<String> {
        self.reviews.iter().filter(|r| r.approve).map(|r| r.reviewer.clone()).collect()
    }
}

/// A request to open.
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub id: String,
    pub agent_id: String,
    pub requested_by: String,
    pub action_json: String,
    pub action_hash: String,
    pub correlation_id: String,
    pub rules: Vec<String>,
    pub reasons: Vec<String>,
    pub route: String,
    pub min_approvals: u32,
    pub idempotency_key: Option<String>,
    pub created_at_micros: i64,
    pub expires_at_micros: i64,
}

/// One review to record.
#[derive(Debug, Clone, Copy)]
pub struct ReviewInput<'a> {
    pub id: &'a str,
    pub reviewer: &'a str,
    pub approve: bool,
    pub comment: &'a str,
    pub now_micros: i64,
    /// How long a grant stays redeemable.
    pub grant_ttl_micros: i64,
}

/// A row for the outbox (for alerting, `receiver` is `NAME/KIND/INDEX` and
/// the body the webhook-v4 message).
pub use warden_client::OutboxItem as Outgoing;

/// A grant to spend: on this agent and action, for this decision.
#[derive(Debug, Clone, Copy)]
pub struct Redeeming<'a> {
    pub id: &'a str,
    pub agent_id: &'a str,
    pub action_hash: &'a str,
    pub decision_id: &'a str,
}

/// A web inbox session as stored: found by a hash of its cookie, with the
/// reviewer's credential sealed under a key only the cookie gives.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub principal: String,
    pub sealed_credential: Vec<u8>,
    pub csrf: String,
    pub created_at_micros: i64,
    pub expires_at_micros: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("approval request {0} not found")]
    NotFound(String),
    /// The request is not in a state that allows this (names the state).
    #[error("approval request is {0}")]
    WrongState(&'static str),
    #[error("{0} has already reviewed this request")]
    AlreadyReviewed(String),
    #[error("{0}")]
    Refused(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TransitionError {
    fn from(error: sqlx::Error) -> Self {
        TransitionError::Store(warden_store::translate(error))
    }
}

/// Spends a grant: $1 now, $2 the outcome reason, $3 the id, $4 the
/// agent, $5 the action hash, $6 the decision.
const REDEEM: &str = "UPDATE approval_requests SET state = 'REDEEMED', redeemed_at_micros = $1, \
     outcome_reason = $2, redeemed_decision_id = $6 WHERE id = $3 AND state = 'APPROVED' AND agent_id = $4 \
     AND action_hash = $5 AND grant_expires_at_micros > $1";

/// The pending request already open for an agent and action.
pub(crate) const PENDING_DUPLICATE: &str =
    "WHERE agent_id = $1 AND action_hash = $2 AND state = 'PENDING' ORDER BY created_at_micros LIMIT 1";
/// Pending requests, the first to expire first.
pub(crate) const PENDING: &str = "WHERE state = 'PENDING' ORDER BY expires_at_micros LIMIT 10000";
/// Grants past their expiry at `$1`.
pub(crate) const DUE_GRANTS: &str = "WHERE state = 'APPROVED' AND grant_expires_at_micros <= $1 LIMIT 10000";

const OUTBOX: warden_store::outbox::Outbox = warden_store::outbox::Outbox { table: "approval_outbox" };

const COLUMNS: &str = "id, state, agent_id, requested_by, action_json, action_hash, correlation_id, rules_json, \
     reasons_json, route, min_approvals, created_at_micros, expires_at_micros, decided_at_micros, \
     grant_expires_at_micros, redeemed_at_micros, redeemed_decision_id, outcome_reason, escalation_level, reminded";

macro_rules! approval_from_row {
    ($row:expr) => {{
        let row = $row;
        let strings = |column: &str| -> Result<Vec<String>, sqlx::Error> {
            let text: String = row.try_get(column)?;
            serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
        };
        ApprovalRow {
            id: row.try_get("id")?,
            state: State::parse(&row.try_get::<String, _>("state")?),
            agent_id: row.try_get("agent_id")?,
            requested_by: row.try_get("requested_by")?,
            action_json: row.try_get("action_json")?,
            action_hash: row.try_get("action_hash")?,
            correlation_id: row.try_get("correlation_id")?,
            rules: strings("rules_json")?,
            reasons: strings("reasons_json")?,
            route: row.try_get("route")?,
            min_approvals: row.try_get::<i32, _>("min_approvals")? as u32,
            created_at_micros: row.try_get("created_at_micros")?,
            expires_at_micros: row.try_get("expires_at_micros")?,
            decided_at_micros: row.try_get("decided_at_micros")?,
            grant_expires_at_micros: row.try_get("grant_expires_at_micros")?,
            redeemed_at_micros: row.try_get("redeemed_at_micros")?,
            redeemed_decision_id: row.try_get("redeemed_decision_id")?,
            outcome_reason: row.try_get("outcome_reason")?,
            escalation_level: row.try_get::<i32, _>("escalation_level")? as u32,
            reminded: row.try_get("reminded")?,
            reviews: Vec::new(),
            requesters: Vec::new(),
        }
    }};
}

macro_rules! requesters_of {
    ($executor:expr, $id:expr) => {{
        let rows = sqlx::query(
            "SELECT principal FROM approval_requesters WHERE approval_id = $1 ORDER BY at_micros, principal",
        )
        .bind($id)
        .fetch_all($executor)
        .await?;
        rows.iter().map(|row| row.try_get::<String, _>("principal")).collect::<Result<Vec<_>, _>>()?
    }};
}

/// Records a principal that asked for a pending request (once).
const ADD_REQUESTER: &str = "INSERT INTO approval_requesters (approval_id, principal, at_micros) VALUES ($1, $2, $3) \
     ON CONFLICT (approval_id, principal) DO NOTHING";

macro_rules! reviews_of {
    ($executor:expr, $id:expr) => {{
        let rows = sqlx::query(
            "SELECT reviewer, approve, comment, at_micros FROM approval_reviews WHERE approval_id = $1 ORDER BY at_micros, reviewer",
        )
        .bind($id)
        .fetch_all($executor)
        .await?;
        let mut reviews = Vec::with_capacity(rows.len());
        for row in &rows {
            reviews.push(ReviewRow {
                reviewer: row.try_get("reviewer")?,
                approve: row.try_get("approve")?,
                comment: row.try_get("comment")?,
                at_micros: row.try_get("at_micros")?,
            });
        }
        reviews
    }};
}

/// Runs `$body` in a transaction that serializes writers: `BEGIN IMMEDIATE`
/// on SQLite; on PostgreSQL `$lock` (` FOR UPDATE`) is appended to the
/// statement that reads the request.
macro_rules! in_transaction {
    ($database:expr, |$tx:ident, $lock:ident| $body:block) => {
        match $database {
            Database::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let $lock = "";
                $body
            }
            Database::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let $lock = " FOR UPDATE";
                $body
            }
        }
    };
}

/// Runs `$body` with `$pool` bound to whichever pool the database has
/// (the body is compiled once per driver).
macro_rules! on_pool {
    ($database:expr, |$pool:ident| $body:expr) => {
        match $database {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

/// Inserts a transition's outbox rows in one statement (one round trip).
macro_rules! insert_outgoing {
    ($tx:expr, $items:expr) => {
        let items: Vec<_> = $items.iter().map(Outgoing::encode).collect();
        if !items.is_empty() {
            let statement =
                format!("INSERT INTO approval_outbox (kind, payload) VALUES {}", outgoing_values(items.len(), 1));
            let mut query = sqlx::query(&statement);
            for (kind, payload) in items {
                query = query.bind(kind).bind(payload);
            }
            query.execute(&mut *$tx).await?;
        }
    };
}

/// `($first, $first+1), ...`: `rows` outbox rows' kind and payload
/// parameters.
fn outgoing_values(rows: usize, first: usize) -> String {
    let values: Vec<String> = (0..rows).map(|i| format!("(${}, ${})", first + 2 * i, first + 2 * i + 1)).collect();
    values.join(", ")
}

/// What a transition produces besides the new row: audit events and
/// notifications, built by the caller from the row before and after.
pub type Effects<'a> = &'a (dyn Fn(&ApprovalRow) -> Vec<Outgoing> + Send + Sync);

#[derive(Debug, Clone)]
pub struct ApprovalStore {
    database: Database,
    /// SQLite allows one writer: writers queue here, in order, instead of
    /// meeting `SQLITE_BUSY` and sleeping in its busy handler (which put
    /// tens of milliseconds on the tail of every write under load).
    sqlite_writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The grants this process made, until one redemption tries them, so
    /// redeeming needs no read first. An APPROVED row changes only
    /// by being redeemed or expiring, and the redemption's update re-checks
    /// both: a stale entry can only make that update change nothing (then
    /// the database is read to say why).
    granted: moka::sync::Cache<String, ApprovalRow>,
    /// On a SQLite file, the connection redemptions commit on.
    sqlite_thread: Option<std::sync::Arc<SqliteWriter>>,
}

impl ApprovalStore {
    pub fn new(database: Database) -> Result<Self, StoreError> {
        // Bounded in size and in time: an entry not redeemed within the
        // hour (grants last 15 minutes by default) is read again if needed.
        let granted = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(std::time::Duration::from_secs(3600))
            .build();
        let sqlite_thread = match &database {
            Database::Sqlite(pool) => SqliteWriter::open(pool)?.map(std::sync::Arc::new),
            Database::Postgres(_) => None,
        };
        Ok(ApprovalStore { database, sqlite_writer: Default::default(), granted, sqlite_thread })
    }

    async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.database {
            Database::Sqlite(_) => Some(self.sqlite_writer.lock().await),
            Database::Postgres(_) => None,
        }
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Opens a request, or returns the one already open for the same key,
    /// or for the same agent and action while it is pending (`false`).
    pub async fn create(
        &self,
        new: &NewApproval,
        effects: Effects<'_>,
    ) -> Result<(ApprovalRow, bool), TransitionError> {
        let _writer = self.writer().await;
        let select_key = format!("SELECT {COLUMNS} FROM approval_requests WHERE idempotency_key = $1");
        let select_pending = format!("SELECT {COLUMNS} FROM approval_requests {PENDING_DUPLICATE}");
        let existing = in_transaction!(&self.database, |tx, lock| {
            if matches!(self.database, Database::Postgres(_)) {
                // Serialize creations of the same agent and action across replicas.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(format!("approval:{}:{}", new.agent_id, new.action_hash))
                    .execute(&mut *tx)
                    .await?;
            }
            let mut found = None;
            if let Some(key) = &new.idempotency_key
                && let Some(row) = sqlx::query(&select_key).bind(key).fetch_optional(&mut *tx).await?
            {
                found = Some(approval_from_row!(&row));
            }
            if found.is_none()
                && let Some(row) = sqlx::query(&format!("{select_pending}{lock}"))
                    .bind(&new.agent_id)
                    .bind(&new.action_hash)
                    .fetch_optional(&mut *tx)
                    .await?
            {
                found = Some(approval_from_row!(&row));
            }
            // Whoever asks for a pending action is one of its requesters,
            // recorded under the request's lock so a review in flight sees
            // it or comes first.
            let pending = match &found {
                Some(row) if row.state == State::Pending => Some(row.id.as_str()),
                Some(_) => None,
                None => Some(new.id.as_str()),
            };
            if let Some(id) = pending.filter(|_| !new.requested_by.is_empty()) {
                sqlx::query(ADD_REQUESTER)
                    .bind(id)
                    .bind(&new.requested_by)
                    .bind(new.created_at_micros)
                    .execute(&mut *tx)
                    .await?;
            }
            if found.is_none() {
                sqlx::query(
                    "INSERT INTO approval_requests (id, state, agent_id, requested_by, action_json, action_hash, \
                     correlation_id, rules_json, reasons_json, route, min_approvals, idempotency_key, \
                     created_at_micros, expires_at_micros) \
                     VALUES ($1, 'PENDING', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(&new.id)
                .bind(&new.agent_id)
                .bind(&new.requested_by)
                .bind(&new.action_json)
                .bind(&new.action_hash)
                .bind(&new.correlation_id)
                .bind(serde_json::to_string(&new.rules).expect("json"))
                .bind(serde_json::to_string(&new.reasons).expect("json"))
                .bind(&new.route)
                .bind(new.min_approvals as i32)
                .bind(&new.idempotency_key)
                .bind(new.created_at_micros)
                .bind(new.expires_at_micros)
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query(&format!("SELECT {COLUMNS} FROM approval_requests WHERE id = $1"))
                    .bind(&new.id)
                    .fetch_one(&mut *tx)
                    .await?;
                let row = approval_from_row!(&row);
                insert_outgoing!(tx, effects(&row));
            }
            tx.commit().await?;
            found
        });
        match existing {
            Some(row) => Ok((self.get(&row.id).await?.unwrap_or(row), false)),
            None => Ok((self.get(&new.id).await?.ok_or_else(|| TransitionError::NotFound(new.id.clone()))?, true)),
        }
    }

    /// A request and its reviews, in one query (a row per review).
    pub async fn get(&self, id: &str) -> Result<Option<ApprovalRow>, TransitionError> {
        let select = format!(
            "SELECT {COLUMNS}, reviewer, approve, comment, at_micros FROM approval_requests \
             LEFT JOIN approval_reviews ON approval_id = id WHERE id = $1 ORDER BY at_micros, reviewer"
        );
        on_pool!(&self.database, |pool| {
            let rows = sqlx::query(&select).bind(id).fetch_all(pool).await?;
            let Some(first) = rows.first() else { return Ok(None) };
            let mut approval = approval_from_row!(first);
            approval.requesters = requesters_of!(pool, id);
            for row in &rows {
                if let Some(reviewer) = row.try_get::<Option<String>, _>("reviewer")? {
                    approval.reviews.push(ReviewRow {
                        reviewer,
                        approve: row.try_get("approve")?,
                        comment: row.try_get("comment")?,
                        at_micros: row.try_get("at_micros")?,
                    });
                }
            }
            Ok(Some(approval))
        })
    }

    /// Requests newest first, filtered by state and agent, after `before`
    /// (a page token: the last id of the previous page).
    pub async fn list(
        &self,
        state: Option<State>,
        agent_id: Option<&str>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApprovalRow>, TransitionError> {
        // Ids are UUIDv7: ordering by id is ordering by creation.
        let select = format!(
            "SELECT {COLUMNS} FROM approval_requests WHERE ($1 = '' OR state = $1) AND ($2 = '' OR agent_id = $2) \
             AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $4"
        );
        let state = state.map(State::as_str).unwrap_or("");
        let mut rows = Vec::new();
        on_pool!(&self.database, |pool| {
            for row in sqlx::query(&select)
                .bind(state)
                .bind(agent_id.unwrap_or(""))
                .bind(before.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
            {
                let mut approval = approval_from_row!(&row);
                approval.reviews = reviews_of!(pool, &approval.id);
                approval.requesters = requesters_of!(pool, &approval.id);
                rows.push(approval);
            }
        });
        Ok(rows)
    }

    /// Records a review and, when it decides the request, the transition:
    /// any deny denies; `min_approvals` distinct approvals grant (valid for
    /// `grant_ttl_micros`).
    pub async fn review(&self, review: &ReviewInput<'_>, effects: Effects<'_>) -> Result<ApprovalRow, TransitionError> {
        let ReviewInput { id, reviewer, approve, comment, now_micros, grant_ttl_micros } = *review;
        let _writer = self.writer().await;
        let select = format!("SELECT {COLUMNS} FROM approval_requests WHERE id = $1");
        in_transaction!(&self.database, |tx, lock| {
            let row = sqlx::query(&format!("{select}{lock}"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| TransitionError::NotFound(id.to_owned()))?;
            let before = approval_from_row!(&row);
            if before.state != State::Pending {
                return Err(TransitionError::WrongState(before.state.as_str()));
            }
            if now_micros >= before.expires_at_micros {
                return Err(TransitionError::WrongState(State::Expired.as_str()));
            }
            let asked: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM approval_requesters WHERE approval_id = $1 AND principal = $2")
                    .bind(id)
                    .bind(reviewer)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if asked > 0 {
                return Err(TransitionError::Refused(format!(
                    "{reviewer} asked for this action and may not review it"
                )));
            }
            let inserted = sqlx::query(
                "INSERT INTO approval_reviews (approval_id, reviewer, approve, comment, at_micros) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (approval_id, reviewer) DO NOTHING",
            )
            .bind(id)
            .bind(reviewer)
            .bind(approve)
            .bind(comment)
            .bind(now_micros)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(TransitionError::AlreadyReviewed(reviewer.to_owned()));
            }
            let approvals: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM approval_reviews WHERE approval_id = $1 AND approve")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            let transition = if !approve {
                Some((State::Denied, None, format!("denied by {reviewer}: {comment}")))
            } else if approvals >= i64::from(before.min_approvals) {
                Some((
                    State::Approved,
                    Some(now_micros + grant_ttl_micros),
                    format!("approved by {approvals} reviewer(s)"),
                ))
            } else {
                None
            };
            if let Some((state, grant_expires, reason)) = transition {
                let updated = sqlx::query(
                    "UPDATE approval_requests SET state = $1, decided_at_micros = $2, grant_expires_at_micros = $3, \
                     outcome_reason = $4 WHERE id = $5 AND state = 'PENDING'",
                )
                .bind(state.as_str())
                .bind(now_micros)
                .bind(grant_expires)
                .bind(&reason)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    // Another transaction decided first: ours changes nothing.
                    return Err(TransitionError::WrongState("no longer pending"));
                }
            }
            let mut after = approval_from_row!(&sqlx::query(&select).bind(id).fetch_one(&mut *tx).await?);
            after.reviews = reviews_of!(&mut *tx, id);
            insert_outgoing!(tx, effects(&after));
            tx.commit().await?;
            if after.state == State::Approved {
                self.granted.insert(after.id.clone(), after.clone());
            }
            Ok(after)
        })
    }

    /// Moves a request from `from` to `to` if it is still in `from` (and,
    /// for a cancellation, still the requester's), with the outcome reason.
    /// `Ok(None)` when another writer moved it first.
    pub async fn transition(
        &self,
        id: &str,
        from: State,
        to: State,
        reason: &str,
        now_micros: i64,
        effects: Effects<'_>,
    ) -> Result<Option<ApprovalRow>, TransitionError> {
        let _writer = self.writer().await;
        let select = format!("SELECT {COLUMNS} FROM approval_requests WHERE id = $1");
        in_transaction!(&self.database, |tx, _lock| {
            let (decided, redeemed) = match to {
                State::Redeemed => (None, Some(now_micros)),
                _ if from == State::Pending => (Some(now_micros), None),
                _ => (None, None),
            };
            let updated = sqlx::query(
                "UPDATE approval_requests SET state = $1, outcome_reason = $2, \
                 decided_at_micros = COALESCE($3, decided_at_micros), redeemed_at_micros = COALESCE($4, redeemed_at_micros) \
                 WHERE id = $5 AND state = $6",
            )
            .bind(to.as_str())
            .bind(reason)
            .bind(decided)
            .bind(redeemed)
            .bind(id)
            .bind(from.as_str())
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() != 1 {
                return Ok(None);
            }
            let mut after = approval_from_row!(&sqlx::query(&select).bind(id).fetch_one(&mut *tx).await?);
            after.reviews = reviews_of!(&mut *tx, id);
            insert_outgoing!(tx, effects(&after));
            tx.commit().await?;
            Ok(Some(after))
        })
    }

    /// Spends a grant: only if it is APPROVED, for this agent and action
    /// hash, and not past its grant expiry; the row keeps `decision_id`.
    /// `Ok(None)` when it is not redeemable (the caller reads the row to
    /// say why).
    ///
    /// The grant is read first: from `granted` when this process made it,
    /// else in one query, without a lock. Once APPROVED, a row changes only
    /// by being redeemed or expiring, and the conditional update re-checks
    /// both, so the outbox rows can be built beforehand from the row it
    /// will become, and the write is one round trip: on SQLite one batch
    /// (`BEGIN IMMEDIATE`, the update, the outbox rows inserted only if it
    /// changed a row, `COMMIT`), on PostgreSQL one statement (the update in
    /// a `WITH`, the outbox rows inserted from it).
    pub async fn redeem(
        &self,
        redemption: &Redeeming<'_>,
        now_micros: i64,
        effects: Effects<'_>,
    ) -> Result<Option<ApprovalRow>, TransitionError> {
        let Redeeming { id, agent_id, action_hash, decision_id } = *redemption;
        let cached = self.granted.remove(id);
        let Some(mut after) = (match cached {
            Some(row) => Some(row),
            None => self.get(id).await?,
        }) else {
            return Ok(None);
        };
        let redeemable = after.state == State::Approved
            && after.agent_id == agent_id
            && after.action_hash == action_hash
            && after.grant_expires_at_micros.is_some_and(|t| t > now_micros);
        if !redeemable {
            return Ok(None);
        }
        after.state = State::Redeemed;
        after.redeemed_at_micros = Some(now_micros);
        after.outcome_reason = format!("redeemed by {agent_id}");
        after.redeemed_decision_id = decision_id.to_owned();
        let items: Vec<_> = effects(&after).iter().map(Outgoing::encode).collect();
        // $7, $8, ...: each outbox row's kind and payload.
        let values = outgoing_values(items.len(), 7);
        let texts = [after.outcome_reason.as_str(), id, agent_id, action_hash, decision_id];
        let updated = match &self.database {
            // The request's path: a transaction on the store's own
            // connection (see [`SqliteWriter`]), one statement each.
            Database::Sqlite(_) if let Some(thread) = &self.sqlite_thread => {
                let (reason, id, agent_id, action_hash, decision_id) = (
                    after.outcome_reason.clone(),
                    id.to_owned(),
                    agent_id.to_owned(),
                    action_hash.to_owned(),
                    decision_id.to_owned(),
                );
                let _writer = self.writer().await;
                thread
                    .transaction(move |tx| {
                        let changed = tx.prepare_cached(REDEEM)?.execute(warden_store::rusqlite::named_params! {
                            "$1": now_micros, "$2": reason, "$3": id, "$4": agent_id, "$5": action_hash, "$6": decision_id,
                        })?;
                        if changed == 1 {
                            let mut insert =
                                tx.prepare_cached("INSERT INTO approval_outbox (kind, payload) VALUES (?1, ?2)")?;
                            for (kind, payload) in &items {
                                insert.execute(warden_store::rusqlite::params![kind, payload])?;
                            }
                        }
                        Ok(changed == 1)
                    })
                    .await?
            }
            // An in-memory database (no second connection can open it): one
            // batch on the pool's connection.
            Database::Sqlite(pool) => {
                let mut batch = format!("BEGIN IMMEDIATE; {REDEEM} RETURNING id;");
                if !items.is_empty() {
                    // changes(): the rows the update just changed (0 or 1).
                    batch.push_str(&format!(
                        " INSERT INTO approval_outbox (kind, payload) SELECT column1, column2 \
                         FROM (VALUES {}) WHERE changes() = 1;",
                        values
                    ));
                }
                batch.push_str(" COMMIT;");
                let mut arguments = sqlx::sqlite::SqliteArguments::default();
                let bind = || -> Result<(), sqlx::error::BoxDynError> {
                    use sqlx::Arguments;
                    arguments.add(now_micros)?;
                    for text in texts {
                        arguments.add(text.to_owned())?;
                    }
                    for (kind, payload) in items {
                        arguments.add(kind)?;
                        arguments.add(payload)?;
                    }
                    Ok(())
                };
                bind().map_err(|error| TransitionError::Store(StoreError::Other(error.to_string())))?;
                // One writer at a time, as for every write (SQLite's own
                // lock would make the others sleep in its busy handler).
                let _writer = self.writer().await;
                warden_store::sqlite_batch(pool, batch, arguments).await?.len() == 1
            }
            Database::Postgres(pool) => {
                let statement = if items.is_empty() {
                    format!("{REDEEM} RETURNING id")
                } else {
                    format!(
                        "WITH spent AS ({REDEEM} RETURNING id) INSERT INTO approval_outbox (kind, payload) \
                         SELECT outgoing.kind, outgoing.payload FROM spent, (VALUES {}) AS outgoing (kind, payload) \
                         RETURNING id",
                        values
                    )
                };
                let mut query = sqlx::query(&statement).bind(now_micros);
                for text in texts {
                    query = query.bind(text);
                }
                for (kind, payload) in items {
                    query = query.bind(kind).bind(payload);
                }
                !query.fetch_all(pool).await?.is_empty()
            }
        };
        Ok(updated.then_some(after))
    }

    /// Marks a pending request escalated (level 0 -> 1) or reminded, once.
    pub async fn mark(
        &self,
        id: &str,
        escalate: bool,
        effects: Effects<'_>,
    ) -> Result<Option<ApprovalRow>, TransitionError> {
        let _writer = self.writer().await;
        let update = if escalate {
            "UPDATE approval_requests SET escalation_level = 1 WHERE id = $1 AND state = 'PENDING' AND escalation_level = 0"
        } else {
            "UPDATE approval_requests SET reminded = TRUE WHERE id = $1 AND state = 'PENDING' AND NOT reminded"
        };
        let select = format!("SELECT {COLUMNS} FROM approval_requests WHERE id = $1");
        in_transaction!(&self.database, |tx, _lock| {
            if sqlx::query(update).bind(id).execute(&mut *tx).await?.rows_affected() != 1 {
                return Ok(None);
            }
            let mut after = approval_from_row!(&sqlx::query(&select).bind(id).fetch_one(&mut *tx).await?);
            after.reviews = reviews_of!(&mut *tx, id);
            insert_outgoing!(tx, effects(&after));
            tx.commit().await?;
            Ok(Some(after))
        })
    }

    /// Every pending request (the first 10,000 to expire), then the grants
    /// past their expiry at `now`, for the worker to act on.
    ///
    /// Two queries, each over its partial index (a condition joining both
    /// states would make SQLite scan the table).
    pub async fn pending_and_due_grants(&self, now_micros: i64) -> Result<Vec<ApprovalRow>, TransitionError> {
        let pending = format!("SELECT {COLUMNS} FROM approval_requests {PENDING}");
        let due = format!("SELECT {COLUMNS} FROM approval_requests {DUE_GRANTS}");
        let mut rows = Vec::new();
        on_pool!(&self.database, |pool| {
            for row in sqlx::query(&pending).fetch_all(pool).await? {
                rows.push(approval_from_row!(&row));
            }
            for row in sqlx::query(&due).bind(now_micros).fetch_all(pool).await? {
                rows.push(approval_from_row!(&row));
            }
        });
        Ok(rows)
    }

    /// The outbox, for the runtime: refusals queued in it, its dead
    /// letters listed and replayed (`warden.deadletter.v1`).
    pub fn outbox_table(&self) -> warden_server::dead_letters::OutboxTable {
        warden_server::dead_letters::OutboxTable {
            database: self.database.clone(),
            outbox: OUTBOX,
            sqlite_writer: self.sqlite_writer.clone(),
        }
    }

    /// Stores a new inbox session under `id_hash`, and removes every
    /// session expired at `now_micros`: sign-ins are what add rows, so they
    /// also keep the table to the sessions still valid.
    pub async fn insert_session(
        &self,
        id_hash: &str,
        session: &SessionRow,
        now_micros: i64,
    ) -> Result<(), TransitionError> {
        let _writer = self.writer().await;
        in_transaction!(&self.database, |tx, _lock| {
            sqlx::query("DELETE FROM approval_inbox_sessions WHERE expires_at_micros <= $1")
                .bind(now_micros)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO approval_inbox_sessions \
                 (id_hash, principal, sealed_credential, csrf, created_at_micros, expires_at_micros) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id_hash)
            .bind(&session.principal)
            .bind(&session.sealed_credential)
            .bind(&session.csrf)
            .bind(session.created_at_micros)
            .bind(session.expires_at_micros)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The inbox session stored under `id_hash`, unless it has expired at
    /// `now_micros`.
    pub async fn session(&self, id_hash: &str, now_micros: i64) -> Result<Option<SessionRow>, TransitionError> {
        let select = "SELECT principal, sealed_credential, csrf, created_at_micros, expires_at_micros \
             FROM approval_inbox_sessions WHERE id_hash = $1 AND expires_at_micros > $2";
        on_pool!(&self.database, |pool| {
            let Some(row) = sqlx::query(select).bind(id_hash).bind(now_micros).fetch_optional(pool).await? else {
                return Ok(None);
            };
            Ok(Some(SessionRow {
                principal: row.try_get("principal")?,
                sealed_credential: row.try_get("sealed_credential")?,
                csrf: row.try_get("csrf")?,
                created_at_micros: row.try_get("created_at_micros")?,
                expires_at_micros: row.try_get("expires_at_micros")?,
            }))
        })
    }

    /// Ends the inbox session stored under `id_hash` (sign-out, or a
    /// credential no longer valid), on every replica at once.
    pub async fn delete_session(&self, id_hash: &str) -> Result<(), TransitionError> {
        let _writer = self.writer().await;
        on_pool!(&self.database, |pool| {
            sqlx::query("DELETE FROM approval_inbox_sessions WHERE id_hash = $1").bind(id_hash).execute(pool).await?;
        });
        Ok(())
    }
}
