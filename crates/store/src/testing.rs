//! One test suite, every backend.
//!
//! [`backend_tests!`](crate::backend_tests) turns async test functions that
//! take a [`Database`] into `sqlite::NAME` and `postgres::NAME` tests. The
//! SQLite database is a fresh file in a temporary directory; the PostgreSQL
//! one is a fresh schema in the database named by `WARDEN_TEST_DATABASE_URL`.
//! Without that variable PostgreSQL tests print a notice and pass, unless
//! `WARDEN_REQUIRE_EXTERNAL=1`, under which a skip is a failure.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::PgConnectOptions;

use crate::Database;

/// A migrated database that lives as long as this value.
#[derive(Debug)]
pub struct TestDatabase {
    pub database: Database,
    /// Keeps the SQLite file alive.
    _dir: Option<tempfile::TempDir>,
}

/// Whether a missing external service must fail the test run.
pub fn external_required() -> bool {
    std::env::var("WARDEN_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1" || v == "true")
}

/// Reads an external service's URL from `variable`, or reports the skip.
/// Panics when the service is required (`WARDEN_REQUIRE_EXTERNAL=1`).
pub fn external_url(variable: &str, what: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(!external_required(), "{variable} is not set but WARDEN_REQUIRE_EXTERNAL=1: {what} must run");
            eprintln!("notice: skipping {what}: set {variable} to run it");
            None
        }
    }
}

/// An external program the tests compare Warden with (`amtool`,
/// `promtool`), found on `PATH`, or `None` with a printed notice. Panics
/// when it is missing and external services are required
/// (`WARDEN_REQUIRE_EXTERNAL=1`): `install` says how to get it.
pub fn external_tool(name: &str, install: &str) -> Option<std::path::PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(!external_required(), "{name} is missing ({install}) and WARDEN_REQUIRE_EXTERNAL=1");
        eprintln!("notice: skipping a comparison with {name}: it is not installed ({install})");
    }
    found
}

/// A fresh, migrated SQLite database in a temporary directory.
pub async fn sqlite() -> TestDatabase {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = Database::default_url(dir.path());
    let database = Database::connect(&url).await.expect("connect to sqlite");
    database.migrate().await.expect("migrate sqlite");
    TestDatabase { database, _dir: Some(dir) }
}

/// A fresh, migrated schema in the test PostgreSQL database, or `None` (with
/// a printed notice) when `WARDEN_TEST_DATABASE_URL` is not set.
pub async fn postgres() -> Option<TestDatabase> {
    let url = external_url("WARDEN_TEST_DATABASE_URL", "PostgreSQL tests")?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let schema =
        format!("warden_test_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000);
    let admin = Database::connect(&url).await.expect("connect to the test PostgreSQL");
    if let Database::Postgres(pool) = &admin {
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(pool).await.expect("create test schema");
    }
    admin.close().await;
    let options = PgConnectOptions::from_str(&url).expect("test url").options([("search_path", schema.as_str())]);
    let database = Database::connect_postgres(options).await.expect("connect to the test schema");
    database.migrate().await.expect("migrate postgres");
    Some(TestDatabase { database, _dir: None })
}

/// A URL naming a fresh, empty schema in the test PostgreSQL database (via
/// the `options=-c search_path=...` parameter), for tests that hand a URL to
/// a service. `None`, with a notice, when PostgreSQL is not configured.
pub async fn postgres_url() -> Option<String> {
    let url = external_url("WARDEN_TEST_DATABASE_URL", "PostgreSQL tests")?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let schema =
        format!("warden_it_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000);
    let admin = Database::connect(&url).await.expect("connect to the test PostgreSQL");
    if let Database::Postgres(pool) = &admin {
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(pool).await.expect("create test schema");
    }
    admin.close().await;
    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{separator}options=-c%20search_path%3D{schema}"))
}

/// Generates `sqlite::NAME` and `postgres::NAME` tests from async functions
/// `async fn NAME(database: Database)` in the calling module.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let test = $crate::testing::sqlite().await;
                    super::$name(test.database.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(test) = $crate::testing::postgres().await {
                        super::$name(test.database.clone()).await;
                    }
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use warden_errors::{Category, Classify};

    use crate::{Database, StoreError};

    async fn exec(database: &Database, sql: &str) -> Result<(), StoreError> {
        match database {
            Database::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
            Database::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        }
        .map_err(Into::into)
    }

    async fn unique_violations_are_already_exists(database: Database) {
        exec(&database, "CREATE TABLE store_test_unique (id TEXT PRIMARY KEY)").await.unwrap();
        exec(&database, "INSERT INTO store_test_unique (id) VALUES ('a')").await.unwrap();
        let error = exec(&database, "INSERT INTO store_test_unique (id) VALUES ('a')").await.unwrap_err();
        assert!(matches!(error, StoreError::AlreadyExists(_)), "{error:?}");
        assert_eq!(error.category(), Category::Permanent);
    }

    async fn migrations_are_idempotent(database: Database) {
        database.migrate().await.unwrap();
        database.migrate().await.unwrap();
    }

    async fn check_violations_are_refused(database: Database) {
        exec(&database, "CREATE TABLE store_test_check (n INTEGER NOT NULL CHECK (n > 0))").await.unwrap();
        let error = exec(&database, "INSERT INTO store_test_check (n) VALUES (0)").await.unwrap_err();
        assert!(matches!(error, StoreError::Refused(_)), "{error:?}");
    }

    crate::backend_tests!(
        unique_violations_are_already_exists,
        migrations_are_idempotent,
        check_violations_are_refused
    );
}
