//! The alerting service's tables: alerts, silences, the notification log,
//! the outbox, and the derived series' snapshot with its audit position.
//!
//! Every alert change is written with the audit events it produces in one
//! transaction; a notification is claimed through the notification log (a
//! conditional update on its version) in the transaction that queues it,
//! so two replicas on one PostgreSQL send it once. Queries are written once
//! with `$N` placeholders, which both drivers accept.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use sqlx::Row;
use warden_proto::audit::v1::AuditEvent;
use warden_store::{Database, StoreError};

use crate::series::Labels;

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    fn parse(text: &str) -> AlertState {
        match text {
            "pending" => AlertState::Pending,
            "firing" => AlertState::Firing,
            _ => AlertState::Resolved,
        }
    }
}

/// An alert, from a rule or posted by Prometheus.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub fingerprint: String,
    /// `group/name` of the rule; empty for posted alerts.
    pub rule: String,
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    /// When the condition started to hold.
    pub active_at_ms: i64,
    /// When it fired (`startsAt`).
    pub fired_at_ms: Option<i64>,
    /// When it resolved (`endsAt`).
    pub resolved_at_ms: Option<i64>,
    /// The last evaluation (or post) that saw it active.
    pub last_active_ms: i64,
    /// Posted alerts: when they resolve unless sent again.
    pub ends_at_ms: Option<i64>,
    /// A firing rule alert its rule no longer returns: the first such
    /// evaluation, from which `keep_firing_for` counts.
    pub keep_firing_since_ms: Option<i64>,
    pub value: f64,
    pub generator_url: String,
}

impl Alert {
    /// Alertmanager's `startsAt`.
    pub fn starts_at_ms(&self) -> i64 {
        self.fired_at_ms.unwrap_or(self.active_at_ms)
    }
}

/// The labels' identity: a hash of the sorted pairs.
pub fn fingerprint(labels: &Labels) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (k, v) in labels {
        hasher.update(k.as_bytes());
        hasher.update([0xff]);
        hasher.update(v.as_bytes());
        hasher.update([0xfe]);
    }
    hex::encode(&hasher.finalize()[..8])
}

#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    pub id: String,
    /// Canonical matcher text.
    pub matchers: Vec<String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub created_by: String,
    pub comment: String,
    pub updated_at_ms: i64,
}

impl Silence {
    pub fn state(&self, now_ms: i64) -> &'static str {
        if self.ends_at_ms <= now_ms {
            "expired"
        } else if self.starts_at_ms > now_ms {
            "pending"
        } else {
            "active"
        }
    }
}

/// What a receiver was last told about a group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NflogEntry {
    pub firing: BTreeSet<String>,
    pub resolved: BTreeSet<String>,
    pub sent_at_ms: i64,
    pub version: i64,
}

/// A row for the outbox (for alerting, `receiver` is `NAME/KIND/INDEX` and
/// the body the webhook-v4 message).
pub use warden_client::OutboxItem as Outgoing;

const OUTBOX: warden_store::outbox::Outbox = warden_store::outbox::Outbox { table: "alerting_outbox" };

/// A change to an alert, to store.
#[derive(Debug, Clone)]
pub enum AlertChange {
    Upsert(Alert),
    Delete(String),
}

macro_rules! on_pool {
    ($database:expr, |$pool:ident| $body:expr) => {
        match $database {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

macro_rules! begin {
    ($pool:expr, $sqlite:expr) => {
        if $sqlite { $pool.begin_with("BEGIN IMMEDIATE").await } else { $pool.begin().await }
    };
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("json")
}

fn decode_error(error: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(error))
}

#[derive(Debug, Clone)]
pub struct AlertingStore {
    database: Database,
    /// SQLite allows one writer: writers queue here instead of meeting
    /// `SQLITE_BUSY`.
    sqlite_writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

const ALERT_COLUMNS: &str = "fingerprint, rule, labels_json, annotations_json, state, active_at_ms, fired_at_ms, \
     resolved_at_ms, last_active_ms, ends_at_ms, value, generator_url, keep_firing_since_ms";

impl AlertingStore {
    pub fn new(database: Database) -> Self {
        AlertingStore { database, sqlite_writer: Default::default() }
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.database {
            Database::Sqlite(_) => Some(self.sqlite_writer.lock().await),
            Database::Postgres(_) => None,
        }
    }

    fn sqlite(&self) -> bool {
        matches!(self.database, Database::Sqlite(_))
    }

    pub async fn load_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let query = format!("SELECT {ALERT_COLUMNS} FROM alerting_alerts ORDER BY fingerprint");
        let rows = on_pool!(&self.database, |pool| {
            let rows = sqlx::query(&query).fetch_all(pool).await?;
            rows.iter()
                .map(|row| -> Result<Alert, sqlx::Error> {
                    Ok(Alert {
                        fingerprint: row.try_get("fingerprint")?,
                        rule: row.try_get("rule")?,
                        labels: serde_json::from_str(&row.try_get::<String, _>("labels_json")?)
                            .map_err(decode_error)?,
                        annotations: serde_json::from_str(&row.try_get::<String, _>("annotations_json")?)
                            .map_err(decode_error)?,
                        state: AlertState::parse(&row.try_get::<String, _>("state")?),
                        active_at_ms: row.try_get("active_at_ms")?,
                        fired_at_ms: row.try_get("fired_at_ms")?,
                        resolved_at_ms: row.try_get("resolved_at_ms")?,
                        last_active_ms: row.try_get("last_active_ms")?,
                        ends_at_ms: row.try_get("ends_at_ms")?,
                        value: row.try_get("value")?,
                        generator_url: row.try_get("generator_url")?,
                        keep_firing_since_ms: row.try_get("keep_firing_since_ms")?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Stores alert changes and their audit events in one transaction.
    pub async fn save_alerts(&self, changes: &[AlertChange], events: &[AuditEvent]) -> Result<(), StoreError> {
        if changes.is_empty() && events.is_empty() {
            return Ok(());
        }
        let _writer = self.writer().await;
        let sqlite = self.sqlite();
        let upsert = format!(
            "INSERT INTO alerting_alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (fingerprint) DO UPDATE SET rule = excluded.rule, labels_json = excluded.labels_json, \
             annotations_json = excluded.annotations_json, state = excluded.state, active_at_ms = excluded.active_at_ms, \
             fired_at_ms = excluded.fired_at_ms, resolved_at_ms = excluded.resolved_at_ms, \
             last_active_ms = excluded.last_active_ms, ends_at_ms = excluded.ends_at_ms, value = excluded.value, \
             generator_url = excluded.generator_url, keep_firing_since_ms = excluded.keep_firing_since_ms"
        );
        on_pool!(&self.database, |pool| {
            let mut tx = begin!(pool, sqlite)?;
            for change in changes {
                match change {
                    AlertChange::Upsert(alert) => {
                        sqlx::query(&upsert)
                            .bind(&alert.fingerprint)
                            .bind(&alert.rule)
                            .bind(json(&alert.labels))
                            .bind(json(&alert.annotations))
                            .bind(alert.state.as_str())
                            .bind(alert.active_at_ms)
                            .bind(alert.fired_at_ms)
                            .bind(alert.resolved_at_ms)
                            .bind(alert.last_active_ms)
                            .bind(alert.ends_at_ms)
                            .bind(if alert.value.is_finite() { alert.value } else { 0.0 })
                            .bind(&alert.generator_url)
                            .bind(alert.keep_firing_since_ms)
                            .execute(&mut *tx)
                            .await?;
                    }
                    AlertChange::Delete(fingerprint) => {
                        sqlx::query("DELETE FROM alerting_alerts WHERE fingerprint = $1")
                            .bind(fingerprint)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            for event in events {
                sqlx::query("INSERT INTO alerting_outbox (kind, payload) VALUES ('audit', $1)")
                    .bind(event.encode_to_vec())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        let query = "SELECT id, matchers_json, starts_at_ms, ends_at_ms, created_by, comment, updated_at_ms \
             FROM alerting_silences ORDER BY starts_at_ms, id";
        let rows = on_pool!(&self.database, |pool| {
            let rows = sqlx::query(query).fetch_all(pool).await?;
            rows.iter()
                .map(|row| -> Result<Silence, sqlx::Error> {
                    Ok(Silence {
                        id: row.try_get("id")?,
                        matchers: serde_json::from_str(&row.try_get::<String, _>("matchers_json")?)
                            .map_err(decode_error)?,
                        starts_at_ms: row.try_get("starts_at_ms")?,
                        ends_at_ms: row.try_get("ends_at_ms")?,
                        created_by: row.try_get("created_by")?,
                        comment: row.try_get("comment")?,
                        updated_at_ms: row.try_get("updated_at_ms")?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    pub async fn insert_silence(&self, silence: &Silence) -> Result<(), StoreError> {
        let _writer = self.writer().await;
        let insert = "INSERT INTO alerting_silences (id, matchers_json, starts_at_ms, ends_at_ms, created_by, comment, \
             updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        on_pool!(&self.database, |pool| {
            sqlx::query(insert)
                .bind(&silence.id)
                .bind(json(&silence.matchers))
                .bind(silence.starts_at_ms)
                .bind(silence.ends_at_ms)
                .bind(&silence.created_by)
                .bind(&silence.comment)
                .bind(silence.updated_at_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Ends a silence at `now_ms`. Only ever moves the end earlier, so an
    /// expired silence never comes back. `false` when there is no such
    /// silence or it had already expired.
    pub async fn expire_silence(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let _writer = self.writer().await;
        let update = "UPDATE alerting_silences SET ends_at_ms = $1, starts_at_ms = CASE WHEN starts_at_ms > $1 \
             THEN $1 ELSE starts_at_ms END, updated_at_ms = $1 WHERE id = $2 AND ends_at_ms > $1";
        let changed = on_pool!(&self.database, |pool| {
            sqlx::query(update).bind(now_ms).bind(id).execute(pool).await?.rows_affected()
        });
        Ok(changed > 0)
    }

    /// Deletes silences that expired before `before_ms`.
    pub async fn purge_silences(&self, before_ms: i64) -> Result<u64, StoreError> {
        let _writer = self.writer().await;
        let purged = on_pool!(&self.database, |pool| {
            sqlx::query("DELETE FROM alerting_silences WHERE ends_at_ms < $1")
                .bind(before_ms)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(purged)
    }

    pub async fn nflog(&self, group_key: &str, receiver: &str) -> Result<Option<NflogEntry>, StoreError> {
        let query = "SELECT firing_json, resolved_json, sent_at_ms, version FROM alerting_nflog \
             WHERE group_key = $1 AND receiver = $2";
        let entry = on_pool!(&self.database, |pool| {
            match sqlx::query(query).bind(group_key).bind(receiver).fetch_optional(pool).await? {
                None => None,
                Some(row) => Some(NflogEntry {
                    firing: serde_json::from_str(&row.try_get::<String, _>("firing_json")?).map_err(decode_error)?,
                    resolved: serde_json::from_str(&row.try_get::<String, _>("resolved_json")?)
                        .map_err(decode_error)?,
                    sent_at_ms: row.try_get("sent_at_ms")?,
                    version: row.try_get("version")?,
                }),
            }
        });
        Ok(entry)
    }

    /// Records that `receiver` is told `entry` about a group and queues the
    /// items, if the log still holds `expected` (the version read before;
    /// `None`: no entry yet). `false` when another replica got there first.
    pub async fn claim_notification(
        &self,
        group_key: &str,
        receiver: &str,
        expected: Option<i64>,
        entry: &NflogEntry,
        items: &[Outgoing],
    ) -> Result<bool, StoreError> {
        let _writer = self.writer().await;
        let sqlite = self.sqlite();
        let claimed = on_pool!(&self.database, |pool| {
            let mut tx = begin!(pool, sqlite)?;
            let changed = match expected {
                None => sqlx::query(
                    "INSERT INTO alerting_nflog (group_key, receiver, firing_json, resolved_json, sent_at_ms, version) \
                         VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (group_key, receiver) DO NOTHING",
                )
                .bind(group_key)
                .bind(receiver)
                .bind(json(&entry.firing))
                .bind(json(&entry.resolved))
                .bind(entry.sent_at_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Some(version) => sqlx::query(
                    "UPDATE alerting_nflog SET firing_json = $1, resolved_json = $2, sent_at_ms = $3, version = $4 \
                         WHERE group_key = $5 AND receiver = $6 AND version = $7",
                )
                .bind(json(&entry.firing))
                .bind(json(&entry.resolved))
                .bind(entry.sent_at_ms)
                .bind(version + 1)
                .bind(group_key)
                .bind(receiver)
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            if changed == 0 {
                tx.rollback().await?;
                false
            } else {
                for item in items {
                    let (kind, payload) = item.encode();
                    sqlx::query("INSERT INTO alerting_outbox (kind, payload) VALUES ($1, $2)")
                        .bind(kind)
                        .bind(payload)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                true
            }
        });
        Ok(claimed)
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

    /// Saves the derived series with the audit position they reflect.
    pub async fn save_snapshot(&self, position: u64, snapshot: &[u8], now_ms: i64) -> Result<(), StoreError> {
        let _writer = self.writer().await;
        let upsert = "INSERT INTO alerting_state (id, position, snapshot, saved_at_ms) VALUES ('derived', $1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET position = excluded.position, snapshot = excluded.snapshot, \
             saved_at_ms = excluded.saved_at_ms";
        on_pool!(&self.database, |pool| {
            sqlx::query(upsert).bind(position as i64).bind(snapshot).bind(now_ms).execute(pool).await?;
        });
        Ok(())
    }

    pub async fn load_snapshot(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let snapshot = on_pool!(&self.database, |pool| {
            sqlx::query("SELECT snapshot FROM alerting_state WHERE id = 'derived'")
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get::<Vec<u8>, _>("snapshot"))
                .transpose()?
        });
        Ok(snapshot)
    }
}
