//! Database connections for Warden services: SQLite (embedded, the default)
//! and PostgreSQL (production), embedded migrations, and the one place where
//! `sqlx` errors are translated into Warden's error classification.
//!
//! The store knows no service's schema beyond running the migrations in
//! `migrations/`; each service owns its tables (prefixed with the service
//! name) and its queries. [`testing`] runs one test suite against both
//! backends.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use warden_errors::{Category, Classify, Code};

pub mod outbox;
mod sqlite_writer;
pub mod testing;

pub use rusqlite;
pub use sqlite_writer::SqliteWriter;

pub use sqlx;

/// How often [`Database::checkpoints`] checkpoints a SQLite database.
///
/// Each complete checkpoint costs a sync of the database file, and the
/// first commit after it restarts the log with a sync of its header: at
/// 200 ms these landed often enough on a redemption's commit to set its
/// p99 (`xtask bench approval --decision-log`, 1,000 pairs, alternating:
/// p99 ratio median 2.08 at 200 ms, 1.84 at 1 s). The log still restarts
/// at the size a second of writes gives it, so commits do not grow the file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Pages in SQLite's write-ahead log past which a commit checkpoints
/// inline (SQLite's default is 1,000).
pub const INLINE_CHECKPOINT_PAGES: u32 = 8_000;

/// How long a SQLite write waits for the lock another connection holds.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled PostgreSQL connection idle this long is pinged before use.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// A connection pool to one of the supported databases.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Runs a batch of statements (`;`-separated, `$N` parameters shared by
/// all of them) on one SQLite connection, in one round trip to its thread,
/// and returns the rows they produce.
///
/// Every statement is otherwise a round trip of its own to the
/// connection's thread. A batch may hold a whole transaction (`BEGIN
/// IMMEDIATE` ... `COMMIT`) or wrap settings around a statement, so a batch
/// that does not finish (an error, or the caller dropping the future) must
/// not leave its connection in the pool half way: the connection is closed
/// instead, which rolls back whatever the batch began.
pub async fn sqlite_batch(
    pool: &sqlx::SqlitePool,
    sql: String,
    arguments: sqlx::sqlite::SqliteArguments<'_>,
) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError> {
    /// Closes the connection on drop unless the batch finished.
    struct Batch(Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>);
    impl Drop for Batch {
        fn drop(&mut self) {
            if let Some(connection) = &mut self.0 {
                connection.close_on_drop();
            }
        }
    }
    let mut batch = Batch(Some(pool.acquire().await?));
    let connection = batch.0.as_mut().expect("acquired");
    let rows = sqlx::query_with(&sql, arguments).fetch_all(&mut **connection).await?;
    // Finished: the connection goes back to the pool.
    batch.0.take();
    Ok(rows)
}

/// Which kind of database a [`Database`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Database {
    /// Connects by URL. `sqlite://PATH` creates the file (and its directory)
    /// when missing; `sqlite::memory:` is an in-memory database;
    /// `postgres://...` connects to PostgreSQL.
    pub async fn connect(url: &str) -> Result<Database, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|error| StoreError::InvalidUrl(redact(url), error.to_string()))?
                .create_if_missing(true)
                // WAL with synchronous=FULL: an acknowledged commit survives
                // a crash or power loss.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(BUSY_TIMEOUT)
                // Checkpoints run in the background (see
                // [`Database::checkpoints`]); a commit checkpoints inline
                // only once the log is this long (pages), as a bound.
                .pragma("wal_autocheckpoint", INLINE_CHECKPOINT_PAGES.to_string())
                // Statement journals and sorts stay in memory: by default a
                // statement journal past 64 KiB (a multi-row insert inside a
                // transaction, as the audit log's appends) spills to a
                // deleted file in /var/tmp, a write per page.
                .pragma("temp_store", "MEMORY")
                .foreign_keys(true);
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
                && !parent.exists()
            {
                std::fs::create_dir_all(parent).map_err(|error| {
                    StoreError::InvalidUrl(redact(url), format!("cannot create {}: {error}", parent.display()))
                })?;
            }
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let pool = SqlitePoolOptions::new()
                // An in-memory database lives in one connection.
                .max_connections(if in_memory { 1 } else { 8 })
                .min_connections(if in_memory { 1 } else { 0 })
                .idle_timeout(if in_memory { None } else { Some(Duration::from_secs(600)) })
                .max_lifetime(if in_memory { None } else { Some(Duration::from_secs(3600)) })
                .acquire_timeout(Duration::from_secs(10))
                // A connection to a local file does not go away as a
                // network connection can: no ping (a round trip to the
                // connection's thread) before each use.
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .map_err(translate)?;
            Ok(Database::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|error| StoreError::InvalidUrl(redact(url), error.to_string()))?;
            Self::connect_postgres(options).await
        } else {
            Err(StoreError::InvalidUrl(redact(url), "expected a sqlite:// or postgres:// URL".into()))
        }
    }

    /// Connects to PostgreSQL with explicit options (tests use this to pin a
    /// schema through `search_path`).
    pub async fn connect_postgres(options: PgConnectOptions) -> Result<Database, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            // A connection in steady use is not pinged before each use (a
            // round trip to the server in front of every query); one idle
            // for a while is, since that is when a server restart or an
            // idle timeout on the way has broken it.
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        use sqlx::Connection;
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(translate)?;
        Ok(Database::Postgres(pool))
    }

    /// The default URL for a data directory: an SQLite file inside it.
    pub fn default_url(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("warden.db").display())
    }

    pub fn backend(&self) -> Backend {
        match self {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs the embedded migrations for this backend. Safe to run from every
    /// service and replica: applied migrations are skipped, and migrations
    /// of newer binaries are tolerated.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(pool) => {
                let mut migrator = sqlx::migrate!("../../migrations/sqlite");
                migrator.set_ignore_missing(true);
                migrator.run(pool).await?;
            }
            Database::Postgres(pool) => {
                let mut migrator = sqlx::migrate!("../../migrations/postgres");
                migrator.set_ignore_missing(true);
                migrator.run(pool).await?;
            }
        }
        Ok(())
    }

    /// On SQLite, the task that checkpoints the write-ahead log every
    /// [`CHECKPOINT_EVERY`], for the service to run beside its others;
    /// `None` on PostgreSQL.
    ///
    /// SQLite's own checkpoint runs inside the commit that crosses its
    /// threshold: that caller (and every writer queued behind it) waited
    /// while a few megabytes went to the database file and were synced.
    /// Here a pooled connection checkpoints in the background without
    /// blocking writers (`PASSIVE`); the log restarts from its beginning at
    /// the next commit after a complete checkpoint, so it keeps its size
    /// and a commit's `fdatasync` has no file growth to record. Under
    /// writes so continuous that no background checkpoint completes, the
    /// inline one at [`INLINE_CHECKPOINT_PAGES`] still bounds the log.
    pub fn checkpoints(&self) -> Option<tokio::task::JoinHandle<()>> {
        let Database::Sqlite(pool) = self else { return None };
        let pool = pool.clone();
        Some(tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECKPOINT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !pool.is_closed() {
                every.tick().await;
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await
                    && !pool.is_closed()
                {
                    tracing::warn!(%error, "sqlite checkpoint failed; will retry");
                }
            }
        }))
    }

    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

/// Hides a password in a URL before it reaches a log or an error.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &credentials[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A storage failure, classified.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database url {0}: {1}")]
    InvalidUrl(String, String),
    /// The database cannot be reached or is overloaded: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A concurrent transaction conflicted: retry the transaction.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// A unique constraint refused the write.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A check constraint or trigger refused the write.
    #[error("refused by the database: {0}")]
    Refused(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Other(String),
}

impl Classify for StoreError {
    fn category(&self) -> Category {
        match self {
            StoreError::Unavailable(_) | StoreError::Conflict(_) => Category::Transient,
            StoreError::AlreadyExists(_) | StoreError::NotFound(_) | StoreError::Refused(_) => Category::Permanent,
            StoreError::InvalidUrl(..) => Category::Permanent,
            StoreError::Migrate(_) | StoreError::Other(_) => Category::Internal,
        }
    }

    fn reason(&self) -> &str {
        match self {
            StoreError::InvalidUrl(..) => "STORE_INVALID_URL",
            StoreError::Unavailable(_) => "STORE_UNAVAILABLE",
            StoreError::Conflict(_) => "STORE_CONFLICT",
            StoreError::AlreadyExists(_) => "STORE_ALREADY_EXISTS",
            StoreError::NotFound(_) => "STORE_NOT_FOUND",
            StoreError::Refused(_) => "STORE_REFUSED",
            StoreError::Migrate(_) => "STORE_MIGRATION_FAILED",
            StoreError::Other(_) => "STORE_ERROR",
        }
    }

    fn code(&self) -> Code {
        match self {
            StoreError::AlreadyExists(_) => Code::AlreadyExists,
            StoreError::NotFound(_) => Code::NotFound,
            StoreError::Conflict(_) => Code::Aborted,
            _ => self.category().default_code(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            StoreError::Unavailable(_) => Some(Duration::from_millis(500)),
            StoreError::Conflict(_) => Some(Duration::from_millis(20)),
            _ => None,
        }
    }
}

/// Translates an sqlx error by database error code: the one place where
/// backend-specific codes become classified errors.
pub fn translate(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::RowNotFound => StoreError::NotFound(error.to_string()),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            StoreError::Unavailable(error.to_string())
        }
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = db.message().to_owned();
            match code.as_str() {
                // PostgreSQL SQLSTATEs.
                "23505" => StoreError::AlreadyExists(message),
                "40001" | "40P01" => StoreError::Conflict(message),
                "57P01" | "57P02" | "57P03" | "53300" | "08000" | "08003" | "08006" => StoreError::Unavailable(message),
                "23514" | "23502" | "23503" | "P0001" => StoreError::Refused(message),
                // SQLite reports its extended result code.
                _ => match code.parse::<i32>() {
                    Ok(code) => sqlite_code(code, message),
                    Err(_) if message.contains("append-only") => StoreError::Refused(message),
                    Err(_) => StoreError::Other(format!("{code}: {message}")),
                },
            }
        }
        _ => StoreError::Other(error.to_string()),
    }
}

/// Translates SQLite's extended result codes (from sqlx or rusqlite):
/// UNIQUE and PRIMARY KEY constraint, BUSY and LOCKED, CHECK, NOT NULL,
/// FOREIGN KEY, trigger RAISE.
fn sqlite_code(code: i32, message: String) -> StoreError {
    match code {
        2067 | 1555 => StoreError::AlreadyExists(message),
        5 | 6 | 261 | 517 | 262 => StoreError::Unavailable(message),
        275 | 1299 | 787 | 1811 => StoreError::Refused(message),
        _ if message.contains("append-only") => StoreError::Refused(message),
        _ => StoreError::Other(format!("{code}: {message}")),
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        translate(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://warden:s3cret@db:5432/warden"), "postgres://warden:***@db:5432/warden");
        assert_eq!(redact("postgres://postgres@127.0.0.1/test"), "postgres://postgres@127.0.0.1/test");
    }

    #[tokio::test]
    async fn a_failed_sqlite_batch_leaves_nothing_half_done() {
        let dir = tempfile::tempdir().unwrap();
        let Database::Sqlite(pool) = Database::connect(&Database::default_url(dir.path())).await.unwrap() else {
            unreachable!()
        };
        sqlx::query("CREATE TABLE t (n INTEGER NOT NULL)").execute(&pool).await.unwrap();
        let arguments = || {
            use sqlx::Arguments;
            let mut arguments = sqlx::sqlite::SqliteArguments::default();
            arguments.add(1_i64).unwrap();
            arguments
        };
        // The second insert fails after the first ran inside the batch's
        // transaction: the first is rolled back with it.
        let batch = "BEGIN IMMEDIATE; INSERT INTO t (n) VALUES ($1); INSERT INTO t (n) VALUES (NULL); COMMIT;";
        assert!(sqlite_batch(&pool, batch.to_string(), arguments()).await.is_err());
        let rows = sqlite_batch(&pool, "INSERT INTO t (n) VALUES ($1) RETURNING n".to_string(), arguments()).await;
        assert_eq!(rows.unwrap().len(), 1);
        // No connection was left inside the failed transaction: every
        // connection of the pool sees the one committed row, and writes.
        let mut connections = Vec::new();
        for _ in 0..pool.options().get_max_connections() {
            let mut connection = pool.acquire().await.unwrap();
            let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t").fetch_one(&mut *connection).await.unwrap();
            assert_eq!(count, 1);
            connections.push(connection);
        }
        drop(connections);
        sqlx::query("INSERT INTO t (n) VALUES (2)").execute(&pool).await.unwrap();
    }

    /// Commits stay in the write-ahead log until the background task
    /// checkpoints them into the database file; the log then restarts
    /// from its beginning instead of growing.
    #[tokio::test]
    async fn sqlite_checkpoints_run_in_the_background_and_the_log_keeps_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::connect(&Database::default_url(dir.path())).await.unwrap();
        let Database::Sqlite(pool) = &database else { unreachable!() };
        let (pages,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint").fetch_one(pool).await.unwrap();
        assert_eq!(pages, i64::from(INLINE_CHECKPOINT_PAGES));
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).map(|m| m.len()).unwrap_or(0);
        let insert = || async {
            // About 300 pages: below the inline threshold.
            for _ in 0..300 {
                sqlx::query("INSERT INTO t (b) VALUES (randomblob(4000))").execute(pool).await.unwrap();
            }
        };
        sqlx::query("CREATE TABLE t (b BLOB)").execute(pool).await.unwrap();
        insert().await;
        assert!(size("warden.db") < 100_000, "nothing checkpointed yet: {} bytes", size("warden.db"));
        let wal = size("warden.db-wal");
        assert!(wal > 1_000_000, "{wal}");

        let task = database.checkpoints().expect("sqlite");
        // Until the background checkpoint has copied every page into the
        // database file (the file then has the database's whole size).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let (pages, page_size): (i64, i64) =
            sqlx::query_as("SELECT * FROM pragma_page_count(), pragma_page_size()").fetch_one(pool).await.unwrap();
        while size("warden.db") < (pages * page_size) as u64 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The checkpoint syncs the file before it marks the log done; a
        // checkpoint of our own (which waits for nothing) reports when every
        // frame is in the file.
        loop {
            let (busy, log, done): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(pool).await.unwrap();
            if busy == 0 && log == done {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the checkpoint did not finish within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        insert().await;
        // Appended, the log would have doubled; restarted, the same
        // writes fill about the same frames (a few more for the larger
        // table's interior pages).
        let after = size("warden.db-wal");
        assert!(after < wal + wal / 10, "the log grew from {wal} to {after} bytes instead of restarting");

        database.close().await;
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("the task ends with the pool").unwrap();
    }

    #[tokio::test]
    async fn bad_urls_are_permanent_errors() {
        let error = Database::connect("mysql://x").await.unwrap_err();
        assert_eq!(error.category(), Category::Permanent);
    }
}
