//! `cargo xtask bench h2load`: `Evaluate` vs `grpc.health.v1.Health/Check`
//! on one policy engine, driven by h2load (Debian's `nghttp2-client`), an
//! outside load generator that costs the server nothing of its own stack.
//! The engine is the release `warden-policy-engine` binary as deployed
//! (default telemetry, its own process; `--pid-file` lets a profiler attach).
//! Phases alternate; h2load cannot read gRPC trailers, so the Evaluate
//! request is checked through a real client first.
//!
//! `--callgrind` counts instead of timing: the engine runs under valgrind's
//! callgrind, and each RPC's instructions per request are counted over a
//! fixed number of requests (after a warm-up, counters zeroed). The count
//! is the same from run to run whatever else the machine does, so it can
//! tell apart changes that the timed phases' noise (several points of the
//! ratio between rounds) hides. It is machine work, not time: waiting and
//! the kernel's share are not in it. A 1 MiB last-level cache is simulated
//! too, and its data misses per request counted: what a request's memory
//! costs once the requests under way no longer fit. With `--decision-log`
//! it counts the engine recording decisions against the one without.

use std::process::Command;
use std::time::Duration;

use prost::Message;
use warden_client::{ClientConfig, Effect, PolicyClient};
use warden_policy_engine::fixtures;

use crate::bench::DecisionLogMode;

#[derive(Debug, clap::Args)]
pub struct H2loadArgs {
    /// Seconds per phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Phases of each kind (they alternate).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent streams on each connection.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Send an agent's API key (the auth layer checks it) instead of
    /// running the engine with auth off.
    #[arg(long)]
    auth: bool,
    /// Write the engine's process id here once it serves (for `perf record -p`).
    #[arg(long)]
    pid_file: Option<std::path::PathBuf>,
    /// Count the engine's instructions and cache misses per request under
    /// callgrind (valgrind) instead of timing phases (with
    /// `--decision-log`: the recording engine's against the other's).
    #[arg(long)]
    callgrind: bool,
    /// Requests counted per RPC with `--callgrind`.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Drive this engine binary instead of building the workspace's (to
    /// compare two builds in one session).
    #[arg(long)]
    engine: Option<std::path::PathBuf>,
    /// Instead of Evaluate vs Health/Check: Evaluate on an engine recording
    /// every decision (`sync` or `async`, to an audit address nobody
    /// serves, so only the engine's own cost counts) vs one without a
    /// decision log, with p50/p99 from h2load's per-request log and the
    /// journal's counters.
    #[arg(long, value_enum, default_value_t = DecisionLogMode::Off)]
    decision_log: DecisionLogMode,
    /// With `--decision-log`: the journal's commit delay (e.g. 0s); the
    /// engine's default when absent.
    #[arg(long)]
    commit_delay: Option<String>,
    /// With `--decision-log sync`: the longest a sync waits under load
    /// (equal to the commit delay: never longer); the engine's default
    /// when absent.
    #[arg(long)]
    max_commit_delay: Option<String>,
}

/// A unary gRPC request body: the 5-byte frame header, then the message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// The engine process, killed when the benchmark ends or fails.
struct Engine(std::process::Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Default, Clone)]
struct Run {
    requests: f64,
    seconds: f64,
    failed: u64,
    mean_ms: f64,
    /// Each request's latency in microseconds, when h2load logged them.
    latencies_us: Vec<u64>,
}

/// How long h2load drives the server: seconds (after a second's warm-up),
/// or a number of requests.
#[derive(Debug, Clone, Copy)]
enum Load {
    Seconds(u64),
    Requests(usize),
}

fn h2load(
    args: &H2loadArgs,
    load: Load,
    url: &str,
    body: &std::path::Path,
    token: Option<&str>,
) -> Result<Run, String> {
    h2load_logged(args, load, url, body, token, None)
}

/// h2load; with `log`, each request's latency is read back from its
/// per-request log (`--log-file`: start, status, microseconds).
fn h2load_logged(
    args: &H2loadArgs,
    load: Load,
    url: &str,
    body: &std::path::Path,
    token: Option<&str>,
    log: Option<&std::path::Path>,
) -> Result<Run, String> {
    let mut command = Command::new("h2load");
    if let Some(log) = log {
        command.arg("--log-file").arg(log);
    }
    command.args(["-t", "1", "-c", &args.connections.to_string(), "-m", &args.streams.to_string()]);
    match load {
        Load::Seconds(seconds) => command.args(["-D", &seconds.to_string(), "--warm-up-time", "1"]),
        Load::Requests(requests) => command.args(["-n", &requests.to_string()]),
    };
    command.args(["-H", "content-type: application/grpc", "-H", "te: trailers"]).arg("-d").arg(body);
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    let output =
        command.arg(url).output().map_err(|e| format!("cannot run h2load (apt-get install nghttp2-client): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("h2load failed: {text}{}", String::from_utf8_lossy(&output.stderr)));
    }
    let mut run = Run { seconds: args.seconds as f64, ..Run::default() };
    if let Load::Requests(_) = load {
        run.seconds = 0.0;
    }
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("requests:") {
            // requests: N total, N started, N done, N succeeded, N failed, ...
            let number = |name: &str| {
                words.windows(2).find(|w| w[1].trim_end_matches(',') == name).and_then(|w| w[0].parse::<f64>().ok())
            };
            run.requests = number("succeeded").unwrap_or(0.0);
            run.failed = number("failed").unwrap_or(0.0) as u64 + number("errored").unwrap_or(0.0) as u64;
        } else if line.starts_with("time for request:") {
            // The mean is the third figure, with its unit.
            if let Some(mean) = words.get(5) {
                run.mean_ms = parse_duration_ms(mean);
            }
        }
    }
    if run.requests == 0.0 {
        return Err(format!("h2load reported no successful requests:\n{text}"));
    }
    if let Some(log) = log {
        let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
        run.latencies_us = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                let status = fields.nth(1)?;
                (status == "200").then_some(())?;
                fields.next()?.trim().parse().ok()
            })
            .collect();
        let _ = std::fs::remove_file(log);
    }
    Ok(run)
}

fn parse_duration_ms(text: &str) -> f64 {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or(0.0);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        _ => number,
    }
}

/// One engine process: its data in `root/name`, the bench's policies, an
/// agent key when `keys_file` is given (else auth off), `env` on top of
/// the defaults, and metrics on `metrics_port`.
fn spawn_engine(
    args: &H2loadArgs,
    root: &std::path::Path,
    name: &str,
    keys_file: Option<&std::path::Path>,
    env: &[(&str, String)],
    metrics_port: Option<u16>,
) -> Result<(Engine, String), String> {
    let binary = match &args.engine {
        Some(path) => path.clone(),
        None => crate::bench::release_binary("warden-policy-engine")?,
    };
    let port = crate::bench::free_port()?;
    let mut engine = if args.callgrind {
        let mut valgrind = Command::new("valgrind");
        valgrind.arg("--tool=callgrind").arg(format!("--callgrind-out-file={}/callgrind.%p", root.display()));
        // A cache the size of one core's L2 here (1 MiB): misses in it are
        // what a request's memory costs once it no longer fits.
        valgrind.args(["--cache-sim=yes", "--LL=1048576,16,64"]);
        valgrind.arg(binary);
        valgrind
    } else {
        Command::new(binary)
    };
    let metrics = metrics_port.map(|port| format!("127.0.0.1:{port}")).unwrap_or_default();
    engine
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &metrics])
        .arg("--data-dir")
        .arg(root.join(name))
        .arg("--policies")
        .arg(root.join("policies"))
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdout(std::process::Stdio::null());
    match keys_file {
        Some(keys_file) => engine.arg("--keys-file").arg(keys_file),
        None => engine.arg("--insecure-no-auth").stderr(std::process::Stdio::null()),
    };
    let engine = Engine(engine.spawn().map_err(|e| format!("cannot start warden-policy-engine: {e}"))?);
    if args.callgrind {
        // Valgrind starts the engine many times slower.
        std::thread::sleep(Duration::from_secs(2));
    }
    crate::bench::wait_for_port(port, "warden-policy-engine")?;
    Ok((engine, format!("http://127.0.0.1:{port}")))
}

/// Checks that the engine at `url` decides `request` (h2load sees HTTP
/// statuses only, never the gRPC status in the trailers).
async fn check_decides(
    url: &str,
    token: Option<&str>,
    request: &warden_proto::policy::v1::EvaluateRequest,
) -> Result<(), String> {
    let mut client_config = ClientConfig::new(url.to_owned());
    if let Some(token) = token {
        client_config = client_config.api_key(token);
    }
    let client = PolicyClient::new(client_config).map_err(|e| e.to_string())?;
    let decision = client.evaluate(request.clone()).await.map_err(|e| format!("Evaluate failed: {e}"))?;
    if decision.effect == Effect::Deny && decision.reasons.iter().any(|r| r.contains("unavailable")) {
        return Err(format!("Evaluate did not decide: {decision:?}"));
    }
    Ok(())
}

pub async fn run(args: H2loadArgs) -> Result<(), String> {
    let root = std::env::temp_dir().join(format!("warden-bench-h2load-{}", std::process::id()));
    let policies = root.join("policies");
    std::fs::create_dir_all(&policies).map_err(|e| e.to_string())?;
    std::fs::write(policies.join("bench.yaml"), fixtures::rule_set(10, 20)).map_err(|e| e.to_string())?;
    let (agent, action) = fixtures::request(3);
    let (keys_file, token) = if args.auth {
        let (keys_file, key) = crate::bench::agent_key_file(&root, &agent.id)?;
        (Some(keys_file), Some(key))
    } else {
        (None, None)
    };
    let request = crate::bench::evaluate_request(agent, action);
    if args.decision_log != DecisionLogMode::Off {
        let result = decision_log(&args, &root, keys_file.as_deref(), token.as_deref(), &request).await;
        let _ = std::fs::remove_dir_all(&root);
        return result;
    }
    let (engine, url) = spawn_engine(&args, &root, "data", keys_file.as_deref(), &[], None)?;
    if let Some(path) = &args.pid_file {
        std::fs::write(path, engine.0.id().to_string()).map_err(|e| e.to_string())?;
    }
    check_decides(&url, token.as_deref(), &request).await?;
    let evaluate_body = root.join("evaluate.bin");
    std::fs::write(&evaluate_body, grpc_frame(&request.encode_to_vec())).map_err(|e| e.to_string())?;
    let health_body = root.join("health.bin");
    std::fs::write(&health_body, grpc_frame(&[])).map_err(|e| e.to_string())?;
    let evaluate_url = format!("{url}/warden.policy.v1.PolicyService/Evaluate");
    let health_url = format!("{url}/grpc.health.v1.Health/Check");
    if args.callgrind {
        let pid = engine.0.id();
        let rpcs = [
            Counted { name: "Evaluate", pid, url: &evaluate_url, body: &evaluate_body },
            Counted { name: "Health/Check", pid, url: &health_url, body: &health_body },
        ];
        let result = count_instructions(&args, &root, &rpcs, token.as_deref()).map(|counts| {
            println!(
                "ratio Health/Evaluate instructions (the throughput ratio if machine work were all): {:.3}",
                counts[1].instructions / counts[0].instructions
            );
        });
        drop(engine);
        let _ = std::fs::remove_dir_all(&root);
        return result;
    }
    println!(
        "bench h2load: 200-rule set, {} connections x {} streams, {} x {}s phases each, alternating, auth {}",
        args.connections,
        args.streams,
        args.rounds,
        args.seconds,
        if args.auth { "on (API key)" } else { "off" }
    );
    let (mut evaluate, mut health) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let (a, url, body, token) = (&args, evaluate_url.clone(), evaluate_body.clone(), token.clone());
        let load = Load::Seconds(args.seconds);
        let run = tokio::task::block_in_place(|| h2load(a, load, &url, &body, token.as_deref()))?;
        evaluate.push(run);
        let (url, body) = (health_url.clone(), health_body.clone());
        let run = tokio::task::block_in_place(|| h2load(a, load, &url, &body, token.as_deref()))?;
        health.push(run);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(engine);
    let _ = std::fs::remove_dir_all(&root);
    let total = |runs: &[Run]| {
        let requests: f64 = runs.iter().map(|r| r.requests).sum();
        let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
        let failed: u64 = runs.iter().map(|r| r.failed).sum();
        let mean = runs.iter().map(|r| r.mean_ms).sum::<f64>() / runs.len().max(1) as f64;
        (requests / seconds, failed, mean)
    };
    let (evaluate_rate, evaluate_failed, evaluate_mean) = total(&evaluate);
    let (health_rate, health_failed, health_mean) = total(&health);
    println!("{:<14} {:>12} {:>12} {:>8}", "rpc", "requests/s", "mean", "failed");
    println!("{:<14} {:>12.0} {:>10.2}ms {:>8}", "Evaluate", evaluate_rate, evaluate_mean, evaluate_failed);
    println!("{:<14} {:>12.0} {:>10.2}ms {:>8}", "Health/Check", health_rate, health_mean, health_failed);
    let rounds: Vec<String> =
        evaluate.iter().zip(&health).map(|(e, h)| format!("{:.2}", e.requests / h.requests)).collect();
    println!("ratio Evaluate/Health throughput: {:.2} (per round: {})", evaluate_rate / health_rate, rounds.join(", "));
    Ok(())
}

/// One RPC counted under callgrind: on the engine `pid`, at `url`.
struct Counted<'a> {
    name: &'a str,
    pid: u32,
    url: &'a str,
    body: &'a std::path::Path,
}

/// What one request cost, from callgrind's totals.
#[derive(Debug, Clone, Copy)]
struct Count {
    instructions: f64,
    /// Data reads and writes that missed the simulated last-level cache.
    cache_misses: f64,
}

/// `--callgrind`: each RPC's instructions and cache misses per request in
/// its engine, over `args.requests` requests after a warm-up of 1,000.
fn count_instructions(
    args: &H2loadArgs,
    root: &std::path::Path,
    rpcs: &[Counted<'_>],
    token: Option<&str>,
) -> Result<Vec<Count>, String> {
    println!(
        "bench h2load --callgrind: 200-rule set, {} connections x {} streams, {} requests of each counted, 1 MiB last-level cache simulated",
        args.connections, args.streams, args.requests
    );
    let control = |command: &str, pid: u32| -> Result<(), String> {
        let status = Command::new("callgrind_control")
            .args([command, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run callgrind_control: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("callgrind_control {command} failed")) }
    };
    let mut counts = Vec::new();
    for (i, rpc) in rpcs.iter().enumerate() {
        let name = rpc.name;
        h2load(args, Load::Requests(1000), rpc.url, rpc.body, token)?;
        control("-z", rpc.pid)?;
        let run = h2load(args, Load::Requests(args.requests), rpc.url, rpc.body, token)?;
        if run.failed > 0 || run.requests as usize != args.requests {
            return Err(format!("{name}: {} of {} requests succeeded", run.requests, args.requests));
        }
        control("-d", rpc.pid)?;
        // Each engine numbers its dumps from 1 in the order they are asked for.
        let dump = rpcs[..=i].iter().filter(|r| r.pid == rpc.pid).count();
        let file = root.join(format!("callgrind.{}.{dump}", rpc.pid));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let count = loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if let Some(count) = totals(&text) {
                break count;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("callgrind wrote no totals in {}", file.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let per_request = args.requests as f64;
        counts.push(Count {
            instructions: count.instructions / per_request,
            cache_misses: count.cache_misses / per_request,
        });
        // Kept for `callgrind_annotate --inclusive=yes FILE`.
        let kept = crate::workspace_root().join("target/callgrind");
        std::fs::create_dir_all(&kept).map_err(|e| e.to_string())?;
        let kept = kept.join(format!("{}.out", name.replace(['/', ' '], "-")));
        std::fs::copy(&file, &kept).map_err(|e| format!("{}: {e}", kept.display()))?;
        println!("profile of {name}: {}", kept.display());
    }
    println!("{:<18} {:>22} {:>22}", "", "instructions/request", "LL misses/request");
    for (rpc, count) in rpcs.iter().zip(&counts) {
        println!("{:<18} {:>22.0} {:>22.1}", rpc.name, count.instructions, count.cache_misses);
    }
    Ok(counts)
}

/// The totals of a callgrind dump: instructions (`Ir`) and last-level data
/// misses (`DLmr` + `DLmw`), by the names its `events:` line gives them.
fn totals(text: &str) -> Option<Count> {
    let events: Vec<&str> = text.lines().find_map(|line| line.strip_prefix("events:"))?.split_whitespace().collect();
    let values: Vec<f64> = text
        .lines()
        .find_map(|line| line.strip_prefix("totals:"))?
        .split_whitespace()
        .map(|value| value.parse().unwrap_or(0.0))
        .collect();
    let value = |name: &str| events.iter().position(|e| *e == name).and_then(|i| values.get(i)).copied();
    Some(Count {
        instructions: value("Ir")?,
        cache_misses: value("DLmr").unwrap_or(0.0) + value("DLmw").unwrap_or(0.0),
    })
}

/// The journal counters the engine publishes, read from its metrics.
#[derive(Debug, Default, Clone, Copy)]
struct JournalCounters {
    records: f64,
    groups: f64,
    syncs: f64,
    sync_seconds: f64,
    notify_seconds: f64,
}

impl JournalCounters {
    /// Reads them once the engine has published the phase's last second.
    async fn read(metrics_port: u16) -> Result<JournalCounters, String> {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let url = format!("http://127.0.0.1:{metrics_port}/metrics");
        let text = reqwest::get(&url).await.and_then(|r| r.error_for_status()).map_err(|e| format!("{url}: {e}"))?;
        let text = text.text().await.map_err(|e| e.to_string())?;
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(JournalCounters {
            records: value("decision_log_journal_records_total"),
            groups: value("decision_log_journal_groups_total"),
            syncs: value("decision_log_journal_syncs_total"),
            sync_seconds: value("decision_log_journal_sync_seconds_total"),
            notify_seconds: value("decision_log_journal_notify_seconds_total"),
        })
    }

    fn since(self, before: JournalCounters) -> JournalCounters {
        JournalCounters {
            records: self.records - before.records,
            groups: self.groups - before.groups,
            syncs: self.syncs - before.syncs,
            sync_seconds: self.sync_seconds - before.sync_seconds,
            notify_seconds: self.notify_seconds - before.notify_seconds,
        }
    }

    fn add(&mut self, other: JournalCounters) {
        self.records += other.records;
        self.groups += other.groups;
        self.syncs += other.syncs;
        self.sync_seconds += other.sync_seconds;
        self.notify_seconds += other.notify_seconds;
    }
}

/// The `q` quantile of the runs' latencies, in milliseconds.
fn quantile_ms(runs: &[Run], q: f64) -> f64 {
    let mut all: Vec<u64> = runs.iter().flat_map(|run| run.latencies_us.iter().copied()).collect();
    if all.is_empty() {
        return 0.0;
    }
    all.sort_unstable();
    let index = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len()) - 1;
    all[index] as f64 / 1000.0
}

/// `--decision-log sync|async`: an engine recording every decision vs one
/// without a decision log, in alternating phases.
async fn decision_log(
    args: &H2loadArgs,
    root: &std::path::Path,
    keys_file: Option<&std::path::Path>,
    token: Option<&str>,
    request: &warden_proto::policy::v1::EvaluateRequest,
) -> Result<(), String> {
    let durability = match args.decision_log {
        DecisionLogMode::Sync => "sync",
        _ => "async",
    };
    // Nobody serves this address: decisions stay in the journal, and the
    // shipper's retries (a breaker, backing off) cost next to nothing.
    let audit_url = format!("http://127.0.0.1:{}", crate::bench::free_port()?);
    let quiet = ("WARDEN__TELEMETRY__LOG_LEVEL", "error".to_owned());
    let mut logged_env = vec![
        ("WARDEN__AUDIT_URL", audit_url),
        ("WARDEN__DECISION_LOG__DURABILITY", durability.to_owned()),
        ("WARDEN__DECISION_LOG__OUTBOX_CAP", "1000000000000".to_owned()),
        quiet.clone(),
    ];
    if let Some(delay) = &args.commit_delay {
        logged_env.push(("WARDEN__DECISION_LOG__COMMIT_DELAY", delay.clone()));
    }
    if let Some(delay) = &args.max_commit_delay {
        logged_env.push(("WARDEN__DECISION_LOG__MAX_COMMIT_DELAY", delay.clone()));
    }
    let (off_engine, off_url) = spawn_engine(args, root, "off", keys_file, &[quiet], None)?;
    let metrics_port = crate::bench::free_port()?;
    let (logged_engine, logged_url) = spawn_engine(args, root, "logged", keys_file, &logged_env, Some(metrics_port))?;
    if let Some(path) = &args.pid_file {
        std::fs::write(path, logged_engine.0.id().to_string()).map_err(|e| e.to_string())?;
    }
    check_decides(&off_url, token, request).await?;
    check_decides(&logged_url, token, request).await?;
    let body = root.join("evaluate.bin");
    std::fs::write(&body, grpc_frame(&request.encode_to_vec())).map_err(|e| e.to_string())?;
    let path = "/warden.policy.v1.PolicyService/Evaluate";
    if args.callgrind {
        let (off_url, logged_url) = (format!("{off_url}{path}"), format!("{logged_url}{path}"));
        let rpcs = [
            Counted { name: "no decision log", pid: off_engine.0.id(), url: &off_url, body: &body },
            Counted { name: durability, pid: logged_engine.0.id(), url: &logged_url, body: &body },
        ];
        let counts = count_instructions(args, root, &rpcs, token)?;
        println!(
            "{durability} / no log: instructions {:.3}, LL misses {:.2}",
            counts[1].instructions / counts[0].instructions,
            counts[1].cache_misses / counts[0].cache_misses.max(f64::EPSILON)
        );
        return Ok(());
    }
    println!(
        "bench h2load --decision-log {durability}: 200-rule set, {} in flight ({} connections x {} streams), {} x {}s phases each, alternating, auth {}",
        args.connections * args.streams,
        args.connections,
        args.streams,
        args.rounds,
        args.seconds,
        if args.auth { "on (API key)" } else { "off" }
    );
    let (mut off, mut logged) = (Vec::new(), Vec::new());
    let mut journal = JournalCounters::default();
    let log = root.join("h2load.log");
    for _ in 0..args.rounds {
        let load = Load::Seconds(args.seconds);
        let url = format!("{off_url}{path}");
        off.push(tokio::task::block_in_place(|| h2load_logged(args, load, &url, &body, token, Some(&log)))?);
        let before = JournalCounters::read(metrics_port).await?;
        let url = format!("{logged_url}{path}");
        logged.push(tokio::task::block_in_place(|| h2load_logged(args, load, &url, &body, token, Some(&log)))?);
        journal.add(JournalCounters::read(metrics_port).await?.since(before));
    }
    drop(off_engine);
    drop(logged_engine);
    let rate = |runs: &[Run]| {
        runs.iter().map(|r| r.requests).sum::<f64>() / runs.iter().map(|r| r.seconds).sum::<f64>().max(f64::EPSILON)
    };
    let failed = |runs: &[Run]| runs.iter().map(|r| r.failed).sum::<u64>();
    println!("{:<18} {:>12} {:>9} {:>9} {:>8}", "engine", "requests/s", "p50", "p99", "failed");
    for (name, runs) in [("no decision log", &off), (durability, &logged)] {
        println!(
            "{name:<18} {:>12.0} {:>7.2}ms {:>7.2}ms {:>8}",
            rate(runs),
            quantile_ms(runs, 0.5),
            quantile_ms(runs, 0.99),
            failed(runs)
        );
    }
    let rounds: Vec<String> = off.iter().zip(&logged).map(|(o, l)| format!("{:.2}", l.requests / o.requests)).collect();
    println!(
        "ratio {durability}/no log: throughput {:.2} (per round: {}), p50 {:.2}, p99 {:.2}",
        rate(&logged) / rate(&off),
        rounds.join(", "),
        quantile_ms(&logged, 0.5) / quantile_ms(&off, 0.5),
        quantile_ms(&logged, 0.99) / quantile_ms(&off, 0.99),
    );
    let logged_seconds = logged.iter().map(|r| r.seconds + 1.0).sum::<f64>();
    println!(
        "journal ({durability} phases, warm-up included): {:.0} decisions, {:.1} per group, {:.1} per sync, {:.0} syncs/s, {:.3} ms per sync ({:.0}% of the phases in fdatasync), waking the waiters {:.2} us per decision",
        journal.records,
        journal.records / journal.groups.max(1.0),
        journal.records / journal.syncs.max(1.0),
        journal.syncs / logged_seconds,
        journal.sync_seconds * 1000.0 / journal.syncs.max(1.0),
        journal.sync_seconds * 100.0 / logged_seconds,
        journal.notify_seconds * 1e6 / journal.records.max(1.0),
    );
    Ok(())
}
