//! `cargo xtask bench audit`: durable appends through gRPC from concurrent
//! producers, side by side with the database's own limit (multi-row INSERTs
//! of the same rows into a plain table) measured in the same run, then
//! `Verify` over the whole log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use warden_audit::{AuditConfig, AuditServer};
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_store::Database;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Database: a postgres:// URL, or empty for SQLite in a temporary directory.
    #[arg(long, default_value = "")]
    database_url: String,
    /// Concurrent producers.
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// Events per Append call.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The service's `append_connections` (PostgreSQL: transactions a
    /// large batch is split across).
    #[arg(long, default_value_t = AuditConfig::default().append_connections)]
    append_connections: usize,
}

fn payload(i: usize) -> prost_types::Struct {
    let text = |s: String| prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(s)) };
    // About 400 bytes of event in all.
    prost_types::Struct {
        fields: [
            ("action".to_string(), text("issue_refund".into())),
            ("resource".to_string(), text(format!("order/{i}"))),
            ("effect".to_string(), text("allow".into())),
            ("reasons".to_string(), text("allowed for agents; refund under the automatic threshold of 250 EUR".into())),
            ("policy_version".to_string(), text("sha256:5b0c2f1e9d8a7b6c".into())),
            ("notes".to_string(), text("x".repeat(160))),
        ]
        .into(),
    }
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort_unstable();
    latencies.get(((latencies.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or_default()
}

pub async fn run(args: AuditArgs) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("warden-bench-audit-{}", std::process::id()));
    let url = if args.database_url.is_empty() { Database::default_url(&dir) } else { args.database_url.clone() };
    let backend = if url.starts_with("sqlite") { "SQLite" } else { "PostgreSQL" };
    let database = Database::connect(&url).await.map_err(|e| e.to_string())?;
    // A clean slate for the log's tables on a reused database.
    if let Database::Postgres(pool) = &database {
        let schema = format!("warden_bench_{}", std::process::id());
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(pool).await.map_err(|e| e.to_string())?;
        let result = run_on(
            &args,
            &format!("{url}{}options=-c%20search_path%3D{schema}", if url.contains('?') { '&' } else { '?' }),
            backend,
            &dir,
        )
        .await;
        let dropped = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(pool).await;
        database.close().await;
        return result.and(dropped.map(drop).map_err(|e| e.to_string()));
    }
    database.close().await;
    run_on(&args, &url, backend, &dir).await
}

async fn run_on(args: &AuditArgs, url: &str, backend: &str, dir: &std::path::Path) -> Result<(), String> {
    let mut config = AuditConfig::for_tests(dir);
    config.database_url = url.to_owned();
    config.append_connections = args.append_connections;
    let server = AuditServer::start(config).await.map_err(|e| e.to_string())?;
    let channel =
        Channel::from_shared(server.url()).map_err(|e| e.to_string())?.connect().await.map_err(|e| e.to_string())?;
    println!(
        "bench audit on {backend}: {} producers, {} event(s) per Append, ~400-byte events, {}s, {} append connection(s)",
        args.producers, args.batch, args.seconds, args.append_connections
    );

    // 1. Durable appends through the service.
    let metrics = &warden_audit::metrics::METRICS;
    let (commits_before, events_before) = (metrics.batch_size.get_sample_count(), metrics.batch_size.get_sample_sum());
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for producer in 0..args.producers {
        let mut client = AuditServiceClient::new(channel.clone());
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0usize;
            while Instant::now() < deadline {
                let events = (0..batch)
                    .map(|k| audit::AuditEvent {
                        event_id: format!("p{producer}-{n}-{k}"),
                        event_type: "policy_evaluation".into(),
                        agent_id: format!("agent-{}", producer % 5),
                        correlation_id: format!("c-{n}"),
                        actor: "bench".into(),
                        payload: Some(payload(n)),
                        ..Default::default()
                    })
                    .collect();
                let start = Instant::now();
                if client.append(audit::AppendRequest { events }).await.is_ok() {
                    latencies.push(start.elapsed());
                    n += 1;
                }
            }
            (n * batch, latencies)
        }));
    }
    let mut events = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (count, mut l) = task.await.map_err(|e| e.to_string())?;
        events += count;
        latencies.append(&mut l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let append_rate = events as f64 / elapsed;
    let per_commit = (metrics.batch_size.get_sample_sum() - events_before)
        / (metrics.batch_size.get_sample_count() - commits_before).max(1) as f64;
    let p99 = percentile(&mut latencies, 0.99);
    let p50 = percentile(&mut latencies, 0.5);

    // 2. The database's own limits on the same rows: 100 per INSERT at the
    // same concurrency, and a plain read of them all.
    let raw_rate = raw_inserts(url, args.producers, args.seconds).await?;

    // 3. Verify everything appended.
    let started = Instant::now();
    let report = server.log.verify(0, 0).await.map_err(|e| e.to_string())?;
    let verify_rate = report.verified as f64 / started.elapsed().as_secs_f64();
    let raw_read_rate = raw_reads(url, report.verified).await?;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);

    println!("{:<44} {:>12}", "measure", "value");
    println!("{:<44} {:>12.0}", "durable appends, events/s", append_rate);
    println!("{:<44} {:>12.0}", "events per group commit, mean", per_commit);
    println!("{:<44} {:>12.1?}", "time to receipt p50", p50);
    println!("{:<44} {:>12.1?}", "time to receipt p99", p99);
    println!("{:<44} {:>12.0}", "raw 100-row INSERTs (same rows), rows/s", raw_rate);
    println!("{:<44} {:>12.2}", "ratio appends / raw inserts", append_rate / raw_rate);
    println!("{:<44} {:>12.0}", "Verify, events/s", verify_rate);
    println!("{:<44} {:>12.0}", "raw SELECT of the same rows, rows/s", raw_read_rate);
    println!("{:<44} {:>12.2}", "ratio Verify / raw SELECT", verify_rate / raw_read_rate);
    println!("verify: ok={} verified={}", report.ok, report.verified);
    Ok(())
}

/// The database's own limits, measured on a plain table holding the same
/// rows as the log (every event column plus the payload; a primary key, no
/// other index): multi-row INSERTs of 100 rows by `producers` writers.
async fn raw_inserts(url: &str, producers: usize, seconds: u64) -> Result<f64, String> {
    let database = Arc::new(Database::connect(url).await.map_err(|e| e.to_string())?);
    let (create, hash_type) = match &*database {
        Database::Sqlite(_) => ("INTEGER", "BLOB"),
        Database::Postgres(_) => ("BIGINT", "BYTEA"),
    };
    let create = format!(
        "CREATE TABLE bench_raw (sequence {create} PRIMARY KEY, event_id TEXT NOT NULL, event_type TEXT NOT NULL, \
         time_micros BIGINT NOT NULL, correlation_id TEXT NOT NULL, agent_id TEXT NOT NULL, actor TEXT NOT NULL, \
         subject TEXT NOT NULL, payload_hash {hash_type} NOT NULL, leaf_hash {hash_type} NOT NULL, \
         recorded_at_micros BIGINT NOT NULL, payload TEXT NOT NULL)"
    );
    const COLUMNS: usize = 12;
    let marks: Vec<String> = (0..100)
        .map(|r| {
            let row: Vec<String> = (1..=COLUMNS)
                .map(|c| match &*database {
                    Database::Sqlite(_) => "?".to_string(),
                    Database::Postgres(_) => format!("${}", COLUMNS * r + c),
                })
                .collect();
            format!("({})", row.join(", "))
        })
        .collect();
    let insert = format!("INSERT INTO bench_raw VALUES {}", marks.join(", "));
    macro_rules! on_pool {
        ($pool:ident => $body:expr) => {
            match &*database {
                Database::Sqlite($pool) => $body,
                Database::Postgres($pool) => $body,
            }
        };
    }
    on_pool!(pool => sqlx::query(&create).execute(pool).await.map(drop)).map_err(|e| e.to_string())?;
    let payload_json = warden_audit::leaf::canonical_json(Some(&payload(0)))?;
    let next = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for producer in 0..producers {
        let (database, payload_json, next, insert) =
            (database.clone(), payload_json.clone(), next.clone(), insert.clone());
        tasks.push(tokio::spawn(async move {
            let mut rows = 0usize;
            while Instant::now() < deadline {
                let first = next.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
                macro_rules! bind_rows {
                    ($query:expr) => {{
                        let mut query = $query;
                        for r in 0..100i64 {
                            query = query
                                .bind(first + r)
                                .bind(format!("p{producer}-{rows}-{r}"))
                                .bind("policy_evaluation")
                                .bind(1_781_524_800_000_000i64 + r)
                                .bind(format!("c-{rows}"))
                                .bind(format!("agent-{}", producer % 5))
                                .bind("bench")
                                .bind(format!("agent-{}", producer % 5))
                                .bind([7u8; 32].to_vec())
                                .bind([9u8; 32].to_vec())
                                .bind(1_781_524_800_000_000i64 + r)
                                .bind(&payload_json);
                        }
                        query
                    }};
                }
                let ok = match &*database {
                    Database::Sqlite(pool) => bind_rows!(sqlx::query(&insert)).execute(pool).await.is_ok(),
                    Database::Postgres(pool) => bind_rows!(sqlx::query(&insert)).execute(pool).await.is_ok(),
                };
                if ok {
                    rows += 100;
                }
            }
            rows
        }));
    }
    let mut rows = 0;
    for task in tasks {
        rows += task.await.map_err(|e| e.to_string())?;
    }
    database.close().await;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Reads the first `rows` rows of the plain table back in sequence order.
async fn raw_reads(url: &str, rows: u64) -> Result<f64, String> {
    use futures::TryStreamExt;
    let database = Database::connect(url).await.map_err(|e| e.to_string())?;
    let read = format!("SELECT * FROM bench_raw WHERE sequence < {rows} ORDER BY sequence");
    let started = Instant::now();
    let count = match &database {
        Database::Sqlite(pool) => sqlx::query(&read).fetch(pool).try_fold(0u64, |n, _| async move { Ok(n + 1) }).await,
        Database::Postgres(pool) => {
            sqlx::query(&read).fetch(pool).try_fold(0u64, |n, _| async move { Ok(n + 1) }).await
        }
    }
    .map_err(|e| e.to_string())?;
    database.close().await;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
