//! The delivery side of a service's outbox table: rows written in the
//! transaction of the change they describe, claimed by one replica at a
//! time through a lease, deleted once delivered, released for a later
//! attempt when delivery failed.
//!
//! An outbox table has the columns `id` (ascending), `kind`, `payload`,
//! `attempts`, `claimed_until_micros` and `claimed_by`. The service
//! inserts rows in its own transactions and decodes `kind` and `payload`;
//! on SQLite it calls these while holding its writer lock.
//!
//! Rows the receiver refuses for good move to the table's dead letters
//! (`<table>_dead`: `id`, `kind`, `payload`, `attempts`, `reason`,
//! `dead_at_micros`), so the rows after them are delivered; a replay puts
//! them back.

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

/// A row of an outbox's dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    pub id: i64,
    pub kind: String,
    pub payload: Vec<u8>,
    pub attempts: i32,
    pub reason: String,
    pub dead_at_micros: i64,
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

/// On SQLite, the outbox's own bookkeeping is committed without a sync of
/// its own (`synchronous = NORMAL` around the statement; the pool's
/// connections are `FULL`): it survives a crash of the process, and the
/// next durable commit syncs it. A lease lost to a power loss only lets the
/// row be claimed again; a deletion lost to one makes a delivered row go
/// out again, as a crash between delivery and deletion does (the audit
/// service keeps each event once). The service's writes then do not wait
/// behind the outbox's syncs.
fn relaxed(statement: &str) -> String {
    format!("PRAGMA synchronous = NORMAL; {statement}; PRAGMA synchronous = FULL;")
}

fn claimed<R: Row>(row: &R) -> Result<ClaimedRow, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    Ok(ClaimedRow {
        id: row.try_get("id")?,
        attempts: row.try_get("attempts")?,
        kind: row.try_get("kind")?,
        payload: row.try_get("payload")?,
    })
}

/// Binds `values` in order to a batch's arguments.
fn arguments<'q>(values: impl IntoIterator<Item = Bind>) -> Result<sqlx::sqlite::SqliteArguments<'q>, StoreError> {
    use sqlx::Arguments;
    let mut arguments = sqlx::sqlite::SqliteArguments::default();
    for value in values {
        match value {
            Bind::Int(n) => arguments.add(n),
            Bind::Text(text) => arguments.add(text),
        }
        .map_err(|error| StoreError::Other(error.to_string()))?;
    }
    Ok(arguments)
}

enum Bind {
    Int(i64),
    Text(String),
}

impl Outbox {
    /// Claims up to `limit` rows nobody holds (or whose lease lapsed) until
    /// `until_micros`, oldest first. A row is claimed by one replica at a
    /// time: the outer condition is re-checked under the row lock.
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
             (SELECT id FROM {table} WHERE claimed_until_micros < $3 ORDER BY id LIMIT $4) \
             RETURNING id, kind, payload, attempts"
        );
        let mut rows = match database {
            Database::Sqlite(pool) => {
                let values =
                    [Bind::Int(until_micros), Bind::Text(replica.to_owned()), Bind::Int(now_micros), Bind::Int(limit)];
                let rows = crate::sqlite_batch(pool, relaxed(&claim), arguments(values)?).await?;
                rows.iter().map(claimed).collect::<Result<Vec<_>, _>>()?
            }
            Database::Postgres(pool) => {
                let query = sqlx::query(&claim).bind(until_micros).bind(replica).bind(now_micros).bind(limit);
                query.fetch_all(pool).await?.iter().map(claimed).collect::<Result<Vec<_>, _>>()?
            }
        };
        rows.sort_unstable_by_key(|row| row.id);
        Ok(rows)
    }

    /// Deletes delivered rows, only while `replica` still holds them: one
    /// statement per 500 rows. On PostgreSQL they go in one transaction
    /// (one commit), so the service's own writes do not queue behind a
    /// train of commits after each delivery; on SQLite each statement is
    /// committed without a sync of its own (see [`relaxed`]).
    pub async fn delivered(&self, database: &Database, replica: &str, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let delete = |rows: usize| {
            let placeholders: Vec<String> = (0..rows).map(|i| format!("${}", i + 2)).collect();
            format!("DELETE FROM {} WHERE claimed_by = $1 AND id IN ({})", self.table, placeholders.join(", "))
        };
        match database {
            Database::Sqlite(pool) => {
                for chunk in ids.chunks(500) {
                    let values =
                        std::iter::once(Bind::Text(replica.to_owned())).chain(chunk.iter().map(|id| Bind::Int(*id)));
                    crate::sqlite_batch(pool, relaxed(&delete(chunk.len())), arguments(values)?).await?;
                }
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for chunk in ids.chunks(500) {
                    let statement = delete(chunk.len());
                    let mut query = sqlx::query(&statement).bind(replica);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Releases a row for another attempt, not before `retry_at_micros`.
    pub async fn retry_later(&self, database: &Database, id: i64, retry_at_micros: i64) -> Result<(), StoreError> {
        let update = format!("UPDATE {} SET claimed_until_micros = $1 WHERE id = $2", self.table);
        on_pool!(database, |pool| sqlx::query(&update).bind(retry_at_micros).bind(id).execute(pool).await.map(drop)?);
        Ok(())
    }

    /// Queues rows (`kind`, `payload`) in a transaction of their own, for
    /// what is not part of a change (an `auth_denied` event). On SQLite the
    /// caller holds its writer lock.
    pub async fn enqueue(&self, database: &Database, rows: &[(&str, Vec<u8>)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let values: Vec<String> = (0..rows.len()).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
        let insert = format!("INSERT INTO {} (kind, payload) VALUES {}", self.table, values.join(", "));
        on_pool!(database, |pool| {
            let mut query = sqlx::query(&insert);
            for (kind, payload) in rows {
                query = query.bind(*kind).bind(payload.as_slice());
            }
            query.execute(pool).await.map(drop)?
        });
        Ok(())
    }

    /// Moves rows the receiver refused for good to the dead letters, each
    /// with its reason, in one transaction. Only rows `replica` still holds.
    pub async fn dead_letter(
        &self,
        database: &Database,
        replica: &str,
        rows: &[(i64, String)],
        now_micros: i64,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let table = self.table;
        let copy = format!(
            "INSERT INTO {table}_dead (id, kind, payload, attempts, reason, dead_at_micros) \
             SELECT id, kind, payload, attempts, $1, $2 FROM {table} WHERE id = $3 AND claimed_by = $4 \
             ON CONFLICT (id) DO NOTHING"
        );
        let delete = format!("DELETE FROM {table} WHERE id = $1 AND claimed_by = $2");
        on_pool!(database, |pool| {
            let mut tx = pool.begin().await?;
            for (id, reason) in rows {
                sqlx::query(&copy).bind(reason).bind(now_micros).bind(id).bind(replica).execute(&mut *tx).await?;
                sqlx::query(&delete).bind(id).bind(replica).execute(&mut *tx).await?;
            }
            tx.commit().await?
        });
        Ok(())
    }

    /// The oldest `limit` dead letters, and how many there are.
    pub async fn dead_letters(&self, database: &Database, limit: i64) -> Result<(Vec<DeadRow>, i64), StoreError> {
        let select = format!(
            "SELECT id, kind, payload, attempts, reason, dead_at_micros FROM {}_dead ORDER BY id LIMIT $1",
            self.table
        );
        let count = format!("SELECT COUNT(*) AS n FROM {}_dead", self.table);
        let (rows, total) = on_pool!(database, |pool| {
            let rows = sqlx::query(&select).bind(limit).fetch_all(pool).await?;
            let total: i64 = sqlx::query(&count).fetch_one(pool).await?.try_get("n")?;
            let rows = rows
                .iter()
                .map(|row| {
                    Ok::<_, sqlx::Error>(DeadRow {
                        id: row.try_get("id")?,
                        kind: row.try_get("kind")?,
                        payload: row.try_get("payload")?,
                        attempts: row.try_get("attempts")?,
                        reason: row.try_get("reason")?,
                        dead_at_micros: row.try_get("dead_at_micros")?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (rows, total)
        });
        Ok((rows, total))
    }

    /// Puts dead letters back in the outbox (those in `ids`, or all), as new
    /// rows at its end. Returns how many.
    pub async fn requeue(&self, database: &Database, ids: Option<&[i64]>) -> Result<u64, StoreError> {
        let table = self.table;
        let all = ids.is_none();
        let ids: Vec<i64> = ids.map(<[i64]>::to_vec).unwrap_or_default();
        let selected = if all { String::new() } else { "WHERE id = $1".to_owned() };
        let copy = format!(
            "INSERT INTO {table} (kind, payload) SELECT kind, payload FROM {table}_dead {selected} ORDER BY id"
        );
        let delete = format!("DELETE FROM {table}_dead {selected}");
        let moved = on_pool!(database, |pool| {
            let mut tx = pool.begin().await?;
            let mut moved = 0;
            if all {
                moved += sqlx::query(&copy).execute(&mut *tx).await?.rows_affected();
                sqlx::query(&delete).execute(&mut *tx).await?;
            } else {
                for id in &ids {
                    moved += sqlx::query(&copy).bind(id).execute(&mut *tx).await?.rows_affected();
                    sqlx::query(&delete).bind(id).execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            moved
        });
        Ok(moved)
    }

    /// Rows waiting.
    pub async fn len(&self, database: &Database) -> Result<i64, StoreError> {
        let count = format!("SELECT COUNT(*) AS n FROM {}", self.table);
        let n = on_pool!(database, |pool| sqlx::query(&count).fetch_one(pool).await?.try_get::<i64, _>("n")?);
        Ok(n)
    }
}
