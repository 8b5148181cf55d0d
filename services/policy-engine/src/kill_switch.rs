//! Durable kill switch state, in SQLite or PostgreSQL.
//!
//! The table `policy_kill_switches` is owned by the policy engine. A row per
//! agent (`''` is the global switch); releasing a switch keeps the row with
//! `engaged = false`, so the last change and its reason stay visible.

use std::sync::Arc;

use sqlx::Row;
use warden_store::{Database, StoreError};

use crate::engine::KillSwitches;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillSwitchRecord {
    /// Empty for the global switch.
    pub agent_id: String,
    pub engaged: bool,
    pub reason: String,
    pub updated_at_micros: i64,
}

#[derive(Debug, Clone)]
pub struct KillSwitchStore {
    database: Database,
}

const UPSERT_SQLITE: &str = "INSERT INTO policy_kill_switches (agent_id, engaged, reason, updated_at_micros) \
     VALUES (?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET engaged = excluded.engaged, \
     reason = excluded.reason, updated_at_micros = excluded.updated_at_micros";
const UPSERT_POSTGRES: &str = "INSERT INTO policy_kill_switches (agent_id, engaged, reason, updated_at_micros) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (agent_id) DO UPDATE SET engaged = excluded.engaged, \
     reason = excluded.reason, updated_at_micros = excluded.updated_at_micros";
const LIST: &str = "SELECT agent_id, engaged, reason, updated_at_micros FROM policy_kill_switches ORDER BY agent_id";

impl KillSwitchStore {
    pub fn new(database: Database) -> Self {
        KillSwitchStore { database }
    }

    /// Records a switch change; durable when this returns.
    pub async fn set(&self, record: &KillSwitchRecord) -> Result<(), StoreError> {
        match &self.database {
            Database::Sqlite(pool) => {
                sqlx::query(UPSERT_SQLITE)
                    .bind(&record.agent_id)
                    .bind(record.engaged)
                    .bind(&record.reason)
                    .bind(record.updated_at_micros)
                    .execute(pool)
                    .await?;
            }
            Database::Postgres(pool) => {
                sqlx::query(UPSERT_POSTGRES)
                    .bind(&record.agent_id)
                    .bind(record.engaged)
                    .bind(&record.reason)
                    .bind(record.updated_at_micros)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Every switch ever set, engaged or not.
    pub async fn list(&self) -> Result<Vec<KillSwitchRecord>, StoreError> {
        fn record<R: Row>(row: &R) -> Result<KillSwitchRecord, sqlx::Error>
        where
            for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            for<'c> &'c str: sqlx::ColumnIndex<R>,
        {
            Ok(KillSwitchRecord {
                agent_id: row.try_get("agent_id")?,
                engaged: row.try_get("engaged")?,
                reason: row.try_get("reason")?,
                updated_at_micros: row.try_get("updated_at_micros")?,
            })
        }
        let records = match &self.database {
            Database::Sqlite(pool) => {
                sqlx::query(LIST).fetch_all(pool).await?.iter().map(record).collect::<Result<Vec<_>, _>>()?
            }
            Database::Postgres(pool) => {
                sqlx::query(LIST).fetch_all(pool).await?.iter().map(record).collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(records)
    }

    /// The engaged switches, in the form the engine reads.
    pub async fn load(&self) -> Result<KillSwitches, StoreError> {
        Ok(to_state(&self.list().await?))
    }
}

pub fn to_state(records: &[KillSwitchRecord]) -> KillSwitches {
    let mut state = KillSwitches::default();
    for record in records.iter().filter(|r| r.engaged) {
        let reason: Arc<str> =
            if record.reason.is_empty() { "no reason given".into() } else { record.reason.as_str().into() };
        if record.agent_id.is_empty() {
            state.global = Some(reason);
        } else {
            state.agents.insert(record.agent_id.clone(), reason);
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(agent_id: &str, engaged: bool, reason: &str, at: i64) -> KillSwitchRecord {
        KillSwitchRecord { agent_id: agent_id.into(), engaged, reason: reason.into(), updated_at_micros: at }
    }

    async fn switches_survive_reconnects(database: Database) {
        let store = KillSwitchStore::new(database.clone());
        store.set(&record("agent-1", true, "runaway refunds", 1)).await.unwrap();
        store.set(&record("", true, "incident 42", 2)).await.unwrap();
        store.set(&record("agent-2", true, "loop", 3)).await.unwrap();
        store.set(&record("agent-2", false, "fixed", 4)).await.unwrap();

        // A second store on the same database (another replica, or after a
        // restart) sees the same state.
        let other = KillSwitchStore::new(database);
        let records = other.list().await.unwrap();
        assert_eq!(
            records,
            vec![
                record("", true, "incident 42", 2),
                record("agent-1", true, "runaway refunds", 1),
                record("agent-2", false, "fixed", 4)
            ]
        );
        let state = other.load().await.unwrap();
        assert_eq!(state.global.as_deref(), Some("incident 42"));
        assert_eq!(state.agents.len(), 1);
        assert_eq!(state.reason_for("agent-9").map(|r| &**r), Some("incident 42"));
    }

    async fn releasing_clears_the_state(database: Database) {
        let store = KillSwitchStore::new(database);
        store.set(&record("", true, "x", 1)).await.unwrap();
        store.set(&record("", false, "all clear", 2)).await.unwrap();
        let state = store.load().await.unwrap();
        assert_eq!(state, KillSwitches::default());
    }

    warden_store::backend_tests!(switches_survive_reconnects, releasing_clears_the_state);
}
