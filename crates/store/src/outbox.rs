//! The delivery side of a service's outbox table: rows written in the
//! transaction of the change they describe, claimed by one replica at a
//! time through a lease, deleted once delivered, released for a later
//! attempt when delivery failed.
//!
//! An outbox table has the columns `id` (ascending), `kind`, `payload`,
//! `attempts`, `claimed_until_micros` and `claimed_by`. The service
//! inserts rows in its own transactions and decodes `kind` and `payload`;
//! on SQLite it calls these while holding its writer lock.

use sqlx::Row;

use crate::{Database, StoreError};

/// A claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRow {
    pub id: i64,
    /// Delivery attempts, this one included.
    pub attempts: i32,
    pub kind: String,
    pub payload: Vec<u8>,
}

/// One outbox table.
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    pub table: &'static str,
}

macro_rules! on_pool {
    ($database:expr, |$pool:ident| $body:expr) => {
        match $database {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

impl Outbox {
    /// Claims up to `limit` rows nobody holds (or whose lease lapsed) until
    /// `until_micros`. A row is claimed by one replica at a time: the outer
    /// condition is re-checked under the row lock.
    pub async fn claim(
        &self,
        database: &Database,
        replica: &str,
        now_micros: i64,
        until_micros: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        let table = self.table;
        let claim = format!(
            "UPDATE {table} SET claimed_until_micros = $1, claimed_by = $2, attempts = attempts + 1 \
             WHERE claimed_until_micros < $3 AND id IN \
             (SELECT id FROM {table} WHERE claimed_until_micros < $3 ORDER BY id LIMIT $4)"
        );
        let read = format!(
            "SELECT id, kind, payload, attempts FROM {table} WHERE claimed_by = $1 AND claimed_until_micros = $2 ORDER BY id"
        );
        let rows = on_pool!(database, |pool| {
            sqlx::query(&claim).bind(until_micros).bind(replica).bind(now_micros).bind(limit).execute(pool).await?;
            let rows = sqlx::query(&read).bind(replica).bind(until_micros).fetch_all(pool).await?;
            rows.iter()
                .map(|row| -> Result<ClaimedRow, sqlx::Error> {
                    Ok(ClaimedRow {
                        id: row.try_get("id")?,
                        attempts: row.try_get("attempts")?,
                        kind: row.try_get("kind")?,
                        payload: row.try_get("payload")?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Deletes delivered rows, only while `replica` still holds them, in
    /// one transaction: one commit (one sync) for the whole batch, not one
    /// per row, so the service's own writes do not queue behind a train
    /// of syncs after each delivery.
    pub async fn delivered(&self, database: &Database, replica: &str, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let delete = format!("DELETE FROM {} WHERE id = $1 AND claimed_by = $2", self.table);
        on_pool!(database, |pool| {
            let mut tx = pool.begin().await?;
            for id in ids {
                sqlx::query(&delete).bind(id).bind(replica).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Releases a row for another attempt, not before `retry_at_micros`.
    pub async fn retry_later(&self, database: &Database, id: i64, retry_at_micros: i64) -> Result<(), StoreError> {
        let update = format!("UPDATE {} SET claimed_until_micros = $1 WHERE id = $2", self.table);
        on_pool!(database, |pool| sqlx::query(&update).bind(retry_at_micros).bind(id).execute(pool).await.map(drop)?);
        Ok(())
    }

    /// Rows waiting.
    pub async fn len(&self, database: &Database) -> Result<i64, StoreError> {
        let count = format!("SELECT COUNT(*) AS n FROM {}", self.table);
        let n = on_pool!(database, |pool| sqlx::query(&count).fetch_one(pool).await?.try_get::<i64, _>("n")?);
        Ok(n)
    }
}
