//! `cargo xtask bench ...`: benchmarks over gRPC against in-process servers.
//!
//! Figures are reported as ratios against a baseline measured in the same
//! run (this machine is shared and noisy): `bench policy` compares
//! `Evaluate` with `grpc.health.v1.Health/Check` on the same server,
//! alternating phases so drift hits both alike.

use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use warden_client::{ClientConfig, PolicyClient, Source};
use warden_policy_engine::{PolicyEngine, PolicyEngineConfig, fixtures};
use warden_proto::policy::v1 as pb;
use warden_resilience::grpc::ResilienceLayer;
use warden_resilience::{Pipeline, RetryPolicy};

#[derive(Debug, clap::Subcommand)]
pub enum Target {
    /// Evaluate vs Health/Check on one policy engine; with `--decision-log`,
    /// an engine recording every decision vs one that does not.
    Policy(PolicyArgs),
    /// Evaluate vs Health/Check driven by h2load (an outside load
    /// generator; Debian's nghttp2-client).
    H2load(crate::bench_h2load::H2loadArgs),
    /// Audit appends vs the database's own multi-row INSERT, and Verify.
    Audit(crate::bench_audit::AuditArgs),
    /// Approvals created, reviewed and redeemed per second; what redeeming adds to Evaluate.
    Approval(crate::bench_approval::ApprovalArgs),
    /// Whether alerting keeps up with the audit log; posted alert to webhook latency.
    Alerting(crate::bench_alerting::AlertingArgs),
    /// tools/call straight to an MCP server vs through the MCP gateway.
    Mcp(crate::bench_mcp::McpArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecisionLogMode {
    /// No audit service: decisions go to the log output only.
    Off,
    /// Each decision is on disk in the journal before Evaluate answers.
    Sync,
    /// Decisions are written to the journal in the background.
    Async,
}

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// Seconds per phase.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Phases of each kind (they alternate).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Connections the requests share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Where decisions are recorded.
    #[arg(long, value_enum, default_value_t = DecisionLogMode::Off)]
    decision_log: DecisionLogMode,
    /// With `--decision-log sync`: how long the journal waits for more
    /// decisions to share a sync (e.g. 0s); the engine's default when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub commit_delay: Option<Duration>,
    /// With `--decision-log sync`: decisions waiting before the journal
    /// waits `--commit-delay`; the engine's default when absent.
    #[arg(long)]
    pub commit_siblings: Option<usize>,
    /// Compare Evaluate with authentication on (an API key) against the
    /// same engine setup with it off, instead of against Health/Check.
    #[arg(long)]
    compare_auth: bool,
}

pub async fn run(target: Target) -> Result<(), String> {
    if cfg!(debug_assertions) {
        return rerun_in_release();
    }
    match target {
        Target::Policy(args) => policy(args).await,
        Target::H2load(args) => crate::bench_h2load::run(args).await,
        Target::Audit(args) => crate::bench_audit::run(args).await,
        Target::Approval(args) => crate::bench_approval::run(args).await,
        Target::Alerting(args) => crate::bench_alerting::run(args).await,
        Target::Mcp(args) => crate::bench_mcp::run(args).await,
    }
}

/// Benchmarks of a debug build measure the debug build: re-run this command
/// from a release build instead.
fn rerun_in_release() -> Result<(), String> {
    eprintln!("xtask: building in release mode for benchmarks");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
        .args(std::env::args().skip(1))
        .current_dir(crate::workspace_root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("release benchmark failed: {status}")) }
}

/// The request every Evaluate benchmark sends: `fixtures::request`'s agent
/// and action.
pub fn evaluate_request(agent: pb::Agent, action: pb::Action) -> pb::EvaluateRequest {
    pb::EvaluateRequest {
        agent: Some(agent),
        action: Some(action),
        time: None,
        correlation_id: "bench".into(),
        approval_id: String::new(),
    }
}

/// A keys file in `dir` with one agent key for `agent_id`; returns its
/// path and the token.
pub fn agent_key_file(dir: &std::path::Path, agent_id: &str) -> Result<(std::path::PathBuf, String), String> {
    let key =
        warden_auth::api_key::create_key(agent_id, warden_auth::Kind::Agent, vec!["agent".into()], vec![], None, None);
    let path = dir.join("keys.toml");
    std::fs::write(&path, warden_auth::KeyFile { keys: vec![key.entry.clone()] }.to_toml())
        .map_err(|e| e.to_string())?;
    Ok((path, key.token.expose().to_owned()))
}

/// A service binary from a release build of the workspace (built here).
pub fn release_binary(package: &str) -> Result<std::path::PathBuf, String> {
    let root = crate::workspace_root();
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "-p", package])
        .current_dir(&root)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("cannot build {package}"));
    }
    Ok(root.join("target/release").join(package))
}

/// A free port on 127.0.0.1.
pub fn free_port() -> Result<u16, String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| e.to_string())?
        .local_addr()
        .map_err(|e| e.to_string())?
        .port())
}

/// Waits until something listens on `port` (a started process).
pub fn wait_for_port(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not come up"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Latencies and count of one phase.
#[derive(Debug, Default)]
pub struct Phase {
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: u64,
}

#[derive(Debug, Default)]
pub struct Totals {
    pub latencies: Vec<Duration>,
    elapsed: Duration,
    errors: u64,
}

impl Totals {
    pub fn add(&mut self, phase: Phase) {
        self.latencies.extend(phase.latencies);
        self.elapsed += phase.elapsed;
        self.errors += phase.errors;
    }

    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }
}

/// Runs `in_flight` loops calling `call(task index)` until the phase ends.
async fn drive<F, Fut>(in_flight: usize, duration: Duration, call: F) -> Phase
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..in_flight {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                if call(task).await {
                    latencies.push(start.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut phase = Phase::default();
    for task in tasks {
        let (latencies, errors) = task.await.expect("bench task");
        phase.latencies.extend(latencies);
        phase.errors += errors;
    }
    phase.elapsed = started.elapsed();
    phase
}

/// One Evaluate phase through the SDK clients; failures are counted and
/// the first one is printed (a benchmark that hides its errors misleads).
pub async fn evaluate_phase(
    clients: std::sync::Arc<Vec<PolicyClient>>,
    request: pb::EvaluateRequest,
    in_flight: usize,
    phase: Duration,
) -> Phase {
    drive(in_flight, phase, move |task| {
        let client = clients[task % clients.len()].clone();
        let request = request.clone();
        async move {
            match client.evaluate(request).await {
                Ok(decision) if decision.source == Source::PolicyEngine => true,
                other => {
                    static REPORTED: std::sync::Once = std::sync::Once::new();
                    REPORTED.call_once(|| eprintln!("first failed Evaluate: {other:?}"));
                    false
                }
            }
        }
    })
    .await
}

pub fn print_rows(rows: &mut [(&str, &mut Totals)]) {
    println!("{:<22} {:>12} {:>10} {:>10} {:>8}", "rpc", "requests/s", "p50", "p99", "errors");
    for (name, totals) in rows.iter_mut() {
        let rate = totals.rate();
        let (p50, p99) = (totals.percentile(0.5), totals.percentile(0.99));
        println!("{:<22} {:>12.0} {:>10.1?} {:>10.1?} {:>8}", name, rate, p50, p99, totals.errors);
    }
}

/// Evaluate on an engine with API-key authentication against one without,
/// alternating phases, same request, same client stack.
async fn compare_auth(args: PolicyArgs) -> Result<(), String> {
    let root = std::env::temp_dir().join(format!("warden-bench-auth-{}", std::process::id()));
    let policies = root.join("policies");
    std::fs::create_dir_all(&policies).map_err(|e| e.to_string())?;
    std::fs::write(policies.join("bench.yaml"), fixtures::rule_set(10, 20)).map_err(|e| e.to_string())?;
    let (agent, action) = fixtures::request(3);
    let (keys_file, token) = agent_key_file(&root, &agent.id)?;
    let mut engines = Vec::new();
    let mut clients = Vec::new();
    for auth_on in [false, true] {
        let mut config = PolicyEngineConfig::for_tests(&policies, root.join(if auth_on { "on" } else { "off" }));
        config.watch_policies = false;
        if auth_on {
            config.auth = warden_auth::AuthConfig { keys_file: keys_file.clone(), ..Default::default() };
        }
        let engine = PolicyEngine::start(config).await.map_err(|e| e.to_string())?;
        let mut per_engine = Vec::new();
        for _ in 0..args.connections {
            let mut config = ClientConfig::new(engine.url());
            if auth_on {
                config = config.api_key(&token);
            }
            per_engine.push(PolicyClient::new(config).map_err(|e| e.to_string())?);
        }
        clients.push(std::sync::Arc::new(per_engine));
        engines.push(engine);
    }
    let request = evaluate_request(agent, action);
    println!(
        "bench policy --compare-auth: Evaluate with an API key vs auth off, {} in flight over {} connections, {} x {}s phases each, alternating",
        args.in_flight, args.connections, args.rounds, args.seconds
    );
    let phase = Duration::from_secs(args.seconds);
    let (mut off, mut on) = (Totals::default(), Totals::default());
    for _ in 0..args.rounds {
        off.add(evaluate_phase(clients[0].clone(), request.clone(), args.in_flight, phase).await);
        on.add(evaluate_phase(clients[1].clone(), request.clone(), args.in_flight, phase).await);
    }
    for engine in engines {
        engine.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&root);
    let ratio = on.rate() / off.rate();
    print_rows(&mut [("Evaluate, auth off", &mut off), ("Evaluate, API key", &mut on)]);
    println!("ratio auth on/off throughput: {ratio:.2}");
    Ok(())
}

async fn policy(args: PolicyArgs) -> Result<(), String> {
    if args.compare_auth {
        return compare_auth(args).await;
    }
    if args.decision_log != DecisionLogMode::Off {
        let mode = args.decision_log;
        return crate::bench_log::run(args, mode).await;
    }
    let policies = std::env::temp_dir().join(format!("warden-bench-policies-{}", std::process::id()));
    let data = std::env::temp_dir().join(format!("warden-bench-data-{}", std::process::id()));
    std::fs::create_dir_all(&policies).map_err(|e| e.to_string())?;
    std::fs::write(policies.join("bench.yaml"), fixtures::rule_set(10, 20)).map_err(|e| e.to_string())?;
    let mut config = PolicyEngineConfig::for_tests(&policies, &data);
    config.watch_policies = false;
    let engine = PolicyEngine::start(config).await.map_err(|e| e.to_string())?;
    let url = engine.url();
    // Evaluate goes through the client SDK (resilience pipeline, trace
    // context); Health/Check through a channel with the same pipeline, so
    // the ratio compares the servers' work, not the client stacks.
    let mut policy_clients = Vec::new();
    let mut health_clients = Vec::new();
    for _ in 0..args.connections {
        policy_clients.push(PolicyClient::new(ClientConfig::new(url.clone())).map_err(|e| e.to_string())?);
        let channel =
            Channel::from_shared(url.clone()).map_err(|e| e.to_string())?.connect().await.map_err(|e| e.to_string())?;
        let pipeline =
            Pipeline::builder("bench-health").retry(RetryPolicy::default()).timeout(Duration::from_secs(5)).build();
        health_clients.push(HealthClient::new(
            tower::ServiceBuilder::new().layer(ResilienceLayer::new(pipeline)).service(channel),
        ));
    }
    let (agent, action) = fixtures::request(3);
    let request = evaluate_request(agent, action);
    println!(
        "bench policy: 200-rule set (20 per action), {} in flight over {} connections, {} x {}s phases each, alternating",
        args.in_flight, args.connections, args.rounds, args.seconds
    );
    let phase = Duration::from_secs(args.seconds);
    let mut evaluate = Totals::default();
    let mut health = Totals::default();
    let policy_clients = std::sync::Arc::new(policy_clients);
    let health_clients = std::sync::Arc::new(health_clients);
    for _ in 0..args.rounds {
        evaluate.add(evaluate_phase(policy_clients.clone(), request.clone(), args.in_flight, phase).await);
        let clients = health_clients.clone();
        health.add(
            drive(args.in_flight, phase, move |task| {
                let mut client = clients[task % clients.len()].clone();
                async move { client.check(HealthCheckRequest { service: String::new() }).await.is_ok() }
            })
            .await,
        );
    }
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&policies);
    let _ = std::fs::remove_dir_all(&data);

    let (evaluate_rate, health_rate) = (evaluate.rate(), health.rate());
    print_rows(&mut [("Evaluate", &mut evaluate), ("Health/Check", &mut health)]);
    println!("ratio Evaluate/Health throughput: {:.2}", evaluate_rate / health_rate);
    Ok(())
}
