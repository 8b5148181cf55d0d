//! A SQLite connection of a service's own, for the few writes on a
//! request's path.
//!
//! Through sqlx, one transaction of four statements goes from the caller's
//! task to a pooled connection's thread and back once per statement and
//! result, and a connection that was handed to another writer in between
//! re-reads the pages that writer changed. Here a transaction is one job on
//! one connection kept for the life of the process, so its page cache stays
//! warm. Measured on this machine with a redemption's statements (an
//! `UPDATE` and an outbox `INSERT`, `synchronous = FULL`): p50 0.35 ms
//! against 0.51 to 0.57 ms as an sqlx batch in the same run.
//!
//! A job runs on the caller's thread while the connection is free and
//! recent commits were quick ([`INLINE_UNDER`]): the tokio worker blocks for
//! one commit, as it would for a lock held that long. Otherwise it goes to
//! the connection's own thread and the caller awaits it. The hop to that
//! thread and back costs two thread wake-ups, about 21 us each across this
//! machine's virtual CPUs: a redemption's transaction on tmpfs took 84 us
//! through the thread and 50 us inline (its statements 10 to 20 us). A
//! disk whose commits slow down past the bound sends jobs to the thread
//! again, so a slow disk never holds a worker for long more than once.
//!
//! The connection has the pool's settings (write-ahead log, `synchronous =
//! FULL`, the same busy timeout and inline checkpoint bound), so a commit
//! acknowledged here survives a crash or power loss like any other. It
//! shares the database with the pool: SQLite's locks keep the two apart,
//! and a service that serialises its writes should hold its writer lock
//! around a job as around any other write.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError, mpsc};
use std::time::{Duration, Instant};

use crate::{BUSY_TIMEOUT, INLINE_CHECKPOINT_PAGES, StoreError};

type Job = Box<dyn FnOnce() + Send>;

/// Jobs run on the caller's thread while recent commits (smoothed) took
/// at most this long.
pub const INLINE_UNDER: Duration = Duration::from_millis(1);

/// The connection, and the thread that runs jobs the caller's thread does
/// not; the thread ends when the writer is dropped, after the jobs already
/// sent.
#[derive(Debug)]
pub struct SqliteWriter {
    connection: Arc<Mutex<rusqlite::Connection>>,
    jobs: mpsc::Sender<Job>,
    /// Recent jobs' durations, smoothed, in microseconds.
    recent_micros: Arc<AtomicU64>,
}

impl SqliteWriter {
    /// Opens a connection to the pool's database file, and its thread.
    /// `None` for an in-memory database, which lives in the pool's one
    /// connection and cannot be opened again.
    pub fn open(pool: &sqlx::SqlitePool) -> Result<Option<SqliteWriter>, StoreError> {
        let options = pool.connect_options();
        let path = options.get_filename();
        if path.as_os_str() == ":memory:" || !path.is_file() {
            return Ok(None);
        }
        let connection = rusqlite::Connection::open(path).map_err(translate)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(translate)?;
        connection
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                 PRAGMA wal_autocheckpoint = {INLINE_CHECKPOINT_PAGES}; PRAGMA temp_store = MEMORY;"
            ))
            .map_err(translate)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("warden-sqlite-writer".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job();
                }
            })
            .map_err(|error| StoreError::Other(format!("cannot start the sqlite writer thread: {error}")))?;
        Ok(Some(SqliteWriter {
            connection: Arc::new(Mutex::new(connection)),
            jobs,
            recent_micros: Arc::new(AtomicU64::new(0)),
        }))
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction on the writer's
    /// connection: committed when it returns `Ok` (and synced before this
    /// returns), rolled back when it returns an error or panics. A caller
    /// that stops waiting does not stop the job: it commits or rolls back
    /// as if the caller were still there.
    pub async fn transaction<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        if self.inline() {
            let free = match self.connection.try_lock() {
                Ok(connection) => Some(connection),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut connection) = free {
                return timed(&self.recent_micros, || run(&mut connection, work));
            }
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let (connection, recent) = (self.connection.clone(), self.recent_micros.clone());
        let job: Job = Box::new(move || {
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = reply.send(timed(&recent, || run(&mut connection, work)));
        });
        self.jobs.send(job).map_err(|_| StoreError::Unavailable("the sqlite writer thread has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("the sqlite writer thread has stopped".into()))?
    }

    /// Whether recent jobs were quick enough to run on the caller's thread.
    fn inline(&self) -> bool {
        self.recent_micros.load(Ordering::Relaxed) <= INLINE_UNDER.as_micros() as u64
    }
}

/// Runs `job`, folding its duration into `recent` (an average over about
/// the last eight).
fn timed<R>(recent: &AtomicU64, job: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let result = job();
    observe(recent, started.elapsed());
    result
}

fn observe(recent: &AtomicU64, took: Duration) {
    let took = took.as_micros().min(u64::MAX as u128) as u64;
    let before = recent.load(Ordering::Relaxed);
    recent.store(before - before / 8 + took / 8, Ordering::Relaxed);
}

fn run<R, F>(connection: &mut rusqlite::Connection, work: F) -> Result<R, StoreError>
where
    F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R>,
{
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let result = work(&transaction)?;
        transaction.commit()?;
        Ok(result)
    }));
    match outcome {
        Ok(result) => result.map_err(translate),
        // The transaction's drop rolled it back while unwinding.
        Err(_) => Err(StoreError::Other("a sqlite writer job panicked; rolled back".into())),
    }
}

/// Translates a rusqlite error by SQLite's extended result code, as
/// [`crate::translate`] does for sqlx's.
pub(crate) fn translate(error: rusqlite::Error) -> StoreError {
    match &error {
        rusqlite::Error::SqliteFailure(failure, message) => {
            let message = message.clone().unwrap_or_else(|| failure.to_string());
            crate::sqlite_code(failure.extended_code, message)
        }
        _ => StoreError::Other(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::Database;

    async fn file_database() -> (tempfile::TempDir, sqlx::SqlitePool) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let Database::Sqlite(pool) = Database::connect(&Database::default_url(dir.path())).await.expect("connects")
        else {
            unreachable!("a sqlite url")
        };
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)")
            .execute(&pool)
            .await
            .expect("creates");
        (dir, pool)
    }

    async fn values(pool: &sqlx::SqlitePool) -> Vec<String> {
        sqlx::query_scalar("SELECT v FROM t ORDER BY id").fetch_all(pool).await.expect("reads")
    }

    #[tokio::test]
    async fn a_committed_job_is_seen_by_the_pool_and_a_failed_one_leaves_nothing() {
        let (_dir, pool) = file_database().await;
        let writer = SqliteWriter::open(&pool).expect("opens").expect("a file database");
        let inserted =
            writer.transaction(|tx| tx.execute("INSERT INTO t (v) VALUES ('a'), ('b')", [])).await.expect("commits");
        assert_eq!(inserted, 2);
        assert_eq!(values(&pool).await, ["a", "b"]);

        // The first statement succeeds, the second breaks the unique
        // constraint: the whole job rolls back, classified.
        let error = writer
            .transaction(|tx| {
                tx.execute("INSERT INTO t (v) VALUES ('c')", [])?;
                tx.execute("INSERT INTO t (v) VALUES ('a')", [])
            })
            .await
            .expect_err("unique");
        assert!(matches!(error, StoreError::AlreadyExists(_)), "{error:?}");
        let panicked = writer
            .transaction(|tx| -> rusqlite::Result<()> {
                tx.execute("INSERT INTO t (v) VALUES ('d')", [])?;
                panic!("a bug in a job");
            })
            .await
            .expect_err("panicked");
        assert!(matches!(panicked, StoreError::Other(_)), "{panicked:?}");
        assert_eq!(values(&pool).await, ["a", "b"]);

        // The thread outlives a failed or panicking job.
        writer.transaction(|tx| tx.execute("INSERT INTO t (v) VALUES ('e')", [])).await.expect("commits");
        assert_eq!(values(&pool).await, ["a", "b", "e"]);
    }

    #[tokio::test]
    async fn the_connection_has_the_pools_durability_and_keeps_temporary_data_in_memory() {
        let (_dir, pool) = file_database().await;
        let writer = SqliteWriter::open(&pool).expect("opens").expect("a file database");
        let (journal, synchronous, temp_store) = writer
            .transaction(|tx| {
                let journal: String = tx.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let synchronous: i64 = tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                let temp_store: i64 = tx.query_row("PRAGMA temp_store", [], |r| r.get(0))?;
                Ok((journal, synchronous, temp_store))
            })
            .await
            .expect("reads");
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "FULL");
        // Statement journals and sorts never spill to files in /var/tmp.
        assert_eq!(temp_store, 2, "MEMORY");
        let (pooled,): (i64,) = sqlx::query_as("PRAGMA temp_store").fetch_one(&pool).await.expect("reads");
        assert_eq!(pooled, 2, "the pool's connections: MEMORY");
    }

    #[tokio::test]
    async fn jobs_go_to_the_thread_while_the_connection_is_busy_or_commits_are_slow() {
        let (_dir, pool) = file_database().await;
        let writer = SqliteWriter::open(&pool).expect("opens").expect("a file database");
        assert!(writer.inline(), "a new writer runs jobs on the caller's thread");

        // Someone else holds the connection: the job queues for the thread,
        // which runs it once the connection is free.
        let held = writer.connection.lock().expect("not poisoned");
        let queued = writer.transaction(|tx| tx.execute("INSERT INTO t (v) VALUES ('queued')", []));
        let mut queued = std::pin::pin!(queued);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(queued.as_mut().poll(&mut cx).is_pending(), "waits for the thread, not on the caller's thread");
        drop(held);
        assert_eq!(queued.await.expect("commits"), 1);

        // Slow commits: the next jobs go to the thread, and still commit;
        // quick ones bring them back.
        for _ in 0..16 {
            observe(&writer.recent_micros, Duration::from_millis(3));
        }
        assert!(!writer.inline(), "recent jobs averaged 3 ms");
        writer.transaction(|tx| tx.execute("INSERT INTO t (v) VALUES ('slow')", [])).await.expect("commits");
        for _ in 0..32 {
            observe(&writer.recent_micros, Duration::from_micros(100));
        }
        assert!(writer.inline(), "recent jobs were quick again");
        writer.transaction(|tx| tx.execute("INSERT INTO t (v) VALUES ('quick')", [])).await.expect("commits");
        assert_eq!(values(&pool).await, ["queued", "slow", "quick"]);
    }

    #[tokio::test]
    async fn an_in_memory_database_has_no_writer() {
        let Database::Sqlite(pool) = Database::connect("sqlite::memory:").await.expect("connects") else {
            unreachable!("a sqlite url")
        };
        assert!(SqliteWriter::open(&pool).expect("no error").is_none());
    }
}
