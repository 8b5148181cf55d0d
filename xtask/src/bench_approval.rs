//! `cargo xtask bench approval`: approval requests created, reviewed and
//! redeemed per second through gRPC (authentication on), on SQLite or
//! PostgreSQL; then the latency an `Evaluate` with an `approval_id` adds
//! over a plain `Evaluate` on the same engine, in alternating rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_client::{ClientConfig, Effect, PolicyClient, Request};
use warden_policy_engine::{PolicyEngine, PolicyEngineConfig};
use warden_proto::approval::v1 as pb;
use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use warden_store::Database;

#[derive(Debug, clap::Args)]
pub struct ApprovalArgs {
    /// Database: a postgres:// URL, or empty for SQLite in a temporary directory.
    #[arg(long, default_value = "")]
    database_url: String,
    /// Concurrent workers.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Seconds of create/review/redeem cycles.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Evaluate pairs (plain, with approval_id) in the latency part.
    #[arg(long, default_value_t = 500)]
    pairs: usize,
    /// Callers at once in the latency part (1: the latency one call adds,
    /// without queueing behind other writes).
    #[arg(long, default_value_t = 1)]
    latency_callers: usize,
    /// Record every decision (sync outbox, audit service in the same
    /// process), as production does; both Evaluates then pay for it.
    #[arg(long)]
    decision_log: bool,
    /// Also print each path's N slowest calls, with the pair each was in.
    #[arg(long, default_value_t = 0)]
    slowest: usize,
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort_unstable();
    latencies.get(((latencies.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or_default()
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    request
}

pub async fn run(args: ApprovalArgs) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("warden-bench-approval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (url, schema) = if args.database_url.is_empty() {
        (Database::default_url(&dir), None)
    } else {
        let schema = format!("warden_bench_{}", std::process::id());
        let database = Database::connect(&args.database_url).await.map_err(|e| e.to_string())?;
        if let Database::Postgres(pool) = &database {
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(pool).await.map_err(|e| e.to_string())?;
        }
        database.close().await;
        let separator = if args.database_url.contains('?') { '&' } else { '?' };
        (format!("{}{separator}options=-c%20search_path%3D{schema}", args.database_url), Some(schema))
    };
    let result = run_on(&args, &url, &dir).await;
    if let Some(schema) = schema {
        let database = Database::connect(&args.database_url).await.map_err(|e| e.to_string())?;
        if let Database::Postgres(pool) = &database {
            let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(pool).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_on(args: &ApprovalArgs, url: &str, dir: &std::path::Path) -> Result<(), String> {
    use warden_auth::Kind;
    let mut keys = warden_auth::KeyFile::default();
    let mut token = |principal: &str, kind: Kind, role: &str| {
        let key = warden_auth::api_key::create_key(principal, kind, vec![role.into()], vec!["*".into()], None, None);
        keys.keys.push(key.entry);
        key.token.expose().to_owned()
    };
    let (service, approver, agent) = (
        token("engine", Kind::Service, "service"),
        token("ada", Kind::Human, "approver"),
        token("bot", Kind::Agent, "agent"),
    );
    let keys_file = dir.join("keys.toml");
    std::fs::write(&keys_file, keys.to_toml()).map_err(|e| e.to_string())?;
    let auth = warden_auth::AuthConfig { keys_file: keys_file.clone(), ..Default::default() };

    // With a decision log, an audit service records decisions and the
    // approval service's events, as in production.
    let audit = if args.decision_log {
        let mut config = warden_audit::AuditConfig::for_tests(dir.join("audit"));
        config.auth = auth.clone();
        Some(warden_audit::AuditServer::start(config).await.map_err(|e| e.to_string())?)
    } else {
        None
    };
    let mut config = ApprovalConfig::for_tests(dir.join("approval"));
    config.database_url = url.to_owned();
    config.auth = auth.clone();
    if let Some(audit) = &audit {
        config.audit_url = audit.url();
        config.outbound.credential = service.clone();
    }
    let approval = ApprovalServer::start(config).await.map_err(|e| e.to_string())?;
    let backend = if url.starts_with("sqlite") { "SQLite" } else { "PostgreSQL" };
    let channel = tonic::transport::Channel::from_shared(approval.url())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let client = ApprovalServiceClient::new(channel);

    println!(
        "bench approval ({backend}): {} workers, create + review + redeem per cycle, {} s",
        args.workers, args.seconds
    );
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.workers {
        let (client, service, approver) = (client.clone(), service.clone(), approver.clone());
        tasks.push(tokio::spawn(async move {
            let mut cycles = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let begin = Instant::now();
                let action = pb::Action {
                    r#type: "issue_refund".into(),
                    resource: format!("order/{worker}-{i}"),
                    ..Default::default()
                };
                let create = pb::CreateApprovalRequest {
                    agent_id: format!("bot-{worker}"),
                    action: Some(action.clone()),
                    ..Default::default()
                };
                let id = client
                    .clone()
                    .create_approval(bearer(create, &service))
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .id;
                let review = pb::ReviewRequest { id: id.clone(), approve: true, comment: String::new() };
                client.clone().review(bearer(review, &approver)).await.map_err(|e| e.to_string())?;
                let redeem = pb::RedeemRequest {
                    id,
                    agent_id: format!("bot-{worker}"),
                    action: Some(action),
                    ..Default::default()
                };
                let redeemed = client.clone().redeem(bearer(redeem, &service)).await.map_err(|e| e.to_string())?;
                if !redeemed.into_inner().redeemed {
                    return Err("a granted approval was not redeemed".to_string());
                }
                cycles.push(begin.elapsed());
                i += 1;
            }
            Ok::<_, String>(cycles)
        }));
    }
    let mut cycles = Vec::new();
    for task in tasks {
        cycles.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = cycles.len() as f64 / elapsed;
    println!(
        "cycles: {} ({rate:.0}/s: {rate:.0} requests created, reviewed and redeemed per second; {:.0} RPCs/s), cycle p50 {:.1?}, p99 {:.1?}",
        cycles.len(),
        rate * 3.0,
        percentile(&mut cycles, 0.5),
        percentile(&mut cycles, 0.99)
    );

    // Latency: plain Evaluate vs Evaluate with an approval_id (one extra
    // round trip to the approval service), alternating per pair.
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).map_err(|e| e.to_string())?;
    std::fs::write(
        policies.join("gated.yaml"),
        "rules:\n  - name: gated\n    actions: [gated]\n    effect: require_approval\n  - name: rest\n    effect: allow\n",
    )
    .map_err(|e| e.to_string())?;
    let mut engine_config = PolicyEngineConfig::for_tests(&policies, dir.join("engine"));
    engine_config.auth = auth;
    engine_config.approval_url = approval.url();
    engine_config.outbound.credential = service.clone();
    engine_config.watch_policies = false;
    if let Some(audit) = &audit {
        engine_config.audit_url = audit.url();
    }
    let engine = PolicyEngine::start(engine_config).await.map_err(|e| e.to_string())?;
    let policy = PolicyClient::new(ClientConfig::new(engine.url()).api_key(&agent)).map_err(|e| e.to_string())?;
    // Granted approvals first, so the measured calls do not queue behind
    // the writes that open and review them.
    let approver = Arc::new(approver);
    let mut granted = Vec::with_capacity(args.pairs);
    for i in 0..args.pairs {
        let gated = Request::new("bot-0", "gated").param("n", i as f64);
        let id =
            policy.evaluate(gated.clone()).await.map_err(|e| e.to_string())?.approval_id.ok_or("no approval opened")?;
        let review = pb::ReviewRequest { id: id.clone(), approve: true, comment: String::new() };
        client.clone().review(bearer(review, &approver)).await.map_err(|e| e.to_string())?;
        granted.push(gated.approval_id(id));
    }
    // The setup's events (thousands of outbox rows) drain first: the
    // calls measured then share the disk only with their own events.
    let drained = Instant::now() + Duration::from_secs(60);
    while approval.approvals.store.outbox_table().waiting().await.map_err(|e| e.to_string())? > 0
        && Instant::now() < drained
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let granted = Arc::new(std::sync::Mutex::new(granted));
    let mut tasks = Vec::new();
    for _ in 0..args.latency_callers.max(1) {
        let (policy, granted) = (policy.clone(), granted.clone());
        tasks.push(tokio::spawn(async move {
            let (mut plain, mut redeeming) = (Vec::new(), Vec::new());
            loop {
                let Some(request) = granted.lock().expect("not poisoned").pop() else { break };
                let begin = Instant::now();
                let decision = policy.evaluate(Request::new("bot-0", "free")).await.map_err(|e| e.to_string())?;
                plain.push(begin.elapsed());
                if decision.effect != Effect::Allow {
                    return Err(format!("plain Evaluate: {decision:?}"));
                }
                let begin = Instant::now();
                let decision = policy.evaluate(request).await.map_err(|e| e.to_string())?;
                redeeming.push(begin.elapsed());
                if decision.effect != Effect::Allow {
                    return Err(format!("Evaluate with approval_id: {decision:?}"));
                }
            }
            Ok::<_, String>((plain, redeeming))
        }));
    }
    let (mut plain, mut redeeming) = (Vec::new(), Vec::new());
    for task in tasks {
        let (p, r) = task.await.map_err(|e| e.to_string())??;
        plain.extend(p);
        redeeming.extend(r);
    }
    if args.slowest > 0 {
        // Each path's slowest pairs, by their place in the run: slow runs of
        // consecutive pairs on both paths point at the machine, not a path.
        for (name, latencies) in [("Evaluate", &plain), ("Evaluate with approval_id", &redeeming)] {
            let mut order: Vec<usize> = (0..latencies.len()).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(latencies[i]));
            let slowest: Vec<String> =
                order.iter().take(args.slowest).map(|&i| format!("#{i} {:.1?}", latencies[i])).collect();
            println!("slowest {name}: {}", slowest.join(", "));
        }
    }
    let (p50, p99) = (percentile(&mut plain, 0.5), percentile(&mut plain, 0.99));
    let (r50, r99) = (percentile(&mut redeeming, 0.5), percentile(&mut redeeming, 0.99));
    println!(
        "latency, {} caller(s), alternating, decision log {}:",
        args.latency_callers.max(1),
        if args.decision_log { "sync" } else { "off" }
    );
    println!("Evaluate                   p50 {p50:>9.1?}  p99 {p99:>9.1?}  ({} calls)", plain.len());
    println!("Evaluate with approval_id  p50 {r50:>9.1?}  p99 {r99:>9.1?}  ({} calls)", redeeming.len());
    println!("ratio p99 with approval_id / plain: {:.2}", r99.as_secs_f64() / p99.as_secs_f64());
    engine.shutdown().await;
    approval.shutdown().await;
    if let Some(audit) = audit {
        audit.shutdown().await;
    }
    Ok(())
}
