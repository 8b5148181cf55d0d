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
//! the kernel's share are not in it.

use std::process::Command;
use std::time::Duration;

use prost::Message;
use warden_client::{ClientConfig, Effect, PolicyClient};
use warden_policy_engine::fixtures;

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
    /// Count the engine's instructions per request under callgrind
    /// (valgrind) instead of timing phases.
    #[arg(long)]
    callgrind: bool,
    /// Requests counted per RPC with `--callgrind`.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Drive this engine binary instead of building the workspace's (to
    /// compare two builds in one session).
    #[arg(long)]
    engine: Option<std::path::PathBuf>,
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

#[derive(Debug, Default, Clone, Copy)]
struct Run {
    requests: f64,
    seconds: f64,
    failed: u64,
    mean_ms: f64,
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
    let mut command = Command::new("h2load");
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

pub async fn run(args: H2loadArgs) -> Result<(), String> {
    let root = std::env::temp_dir().join(format!("warden-bench-h2load-{}", std::process::id()));
    let policies = root.join("policies");
    std::fs::create_dir_all(&policies).map_err(|e| e.to_string())?;
    std::fs::write(policies.join("bench.yaml"), fixtures::rule_set(10, 20)).map_err(|e| e.to_string())?;
    let (agent, action) = fixtures::request(3);
    let binary = match &args.engine {
        Some(path) => path.clone(),
        None => crate::bench::release_binary("warden-policy-engine")?,
    };
    let port = crate::bench::free_port()?;
    let mut engine = if args.callgrind {
        let mut valgrind = Command::new("valgrind");
        valgrind.arg("--tool=callgrind").arg(format!("--callgrind-out-file={}/callgrind.%p", root.display()));
        valgrind.arg(binary);
        valgrind
    } else {
        Command::new(binary)
    };
    engine
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", ""])
        .arg("--data-dir")
        .arg(root.join("data"))
        .arg("--policies")
        .arg(&policies)
        .stdout(std::process::Stdio::null());
    let mut token = None;
    if args.auth {
        let (keys_file, key) = crate::bench::agent_key_file(&root, &agent.id)?;
        engine.arg("--keys-file").arg(keys_file);
        token = Some(key);
    } else {
        engine.arg("--insecure-no-auth").stderr(std::process::Stdio::null());
    }
    let engine = Engine(engine.spawn().map_err(|e| format!("cannot start warden-policy-engine: {e}"))?);
    if args.callgrind {
        // Valgrind starts the engine many times slower.
        std::thread::sleep(Duration::from_secs(2));
    }
    let url = format!("http://127.0.0.1:{port}");
    crate::bench::wait_for_port(port, "warden-policy-engine")?;
    if let Some(path) = &args.pid_file {
        std::fs::write(path, engine.0.id().to_string()).map_err(|e| e.to_string())?;
    }
    let request = crate::bench::evaluate_request(agent, action);
    // h2load sees HTTP statuses only: check that this exact request is answered.
    let mut client_config = ClientConfig::new(url.clone());
    if let Some(token) = &token {
        client_config = client_config.api_key(token);
    }
    let client = PolicyClient::new(client_config).map_err(|e| e.to_string())?;
    let decision = client.evaluate(request.clone()).await.map_err(|e| format!("Evaluate failed: {e}"))?;
    if decision.effect == Effect::Deny && decision.reasons.iter().any(|r| r.contains("unavailable")) {
        return Err(format!("Evaluate did not decide: {decision:?}"));
    }
    let evaluate_body = root.join("evaluate.bin");
    std::fs::write(&evaluate_body, grpc_frame(&request.encode_to_vec())).map_err(|e| e.to_string())?;
    let health_body = root.join("health.bin");
    std::fs::write(&health_body, grpc_frame(&[])).map_err(|e| e.to_string())?;
    let evaluate_url = format!("{url}/warden.policy.v1.PolicyService/Evaluate");
    let health_url = format!("{url}/grpc.health.v1.Health/Check");
    if args.callgrind {
        let rpcs =
            [("Evaluate", evaluate_url.as_str(), evaluate_body.as_path()), ("Health/Check", &health_url, &health_body)];
        let result = count_instructions(&args, engine.0.id(), &root, rpcs, token.as_deref());
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

/// `--callgrind`: each RPC's instructions per request in the engine, over
/// `args.requests` requests after a warm-up of 1,000.
fn count_instructions(
    args: &H2loadArgs,
    pid: u32,
    root: &std::path::Path,
    rpcs: [(&str, &str, &std::path::Path); 2],
    token: Option<&str>,
) -> Result<(), String> {
    println!(
        "bench h2load --callgrind: 200-rule set, {} connections x {} streams, {} requests of each RPC counted",
        args.connections, args.streams, args.requests
    );
    let control = |command: &str| -> Result<(), String> {
        let status = Command::new("callgrind_control")
            .args([command, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run callgrind_control: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("callgrind_control {command} failed")) }
    };
    let mut counts = Vec::new();
    for (dump, (name, url, body)) in rpcs.into_iter().enumerate() {
        h2load(args, Load::Requests(1000), url, body, token)?;
        control("-z")?;
        let run = h2load(args, Load::Requests(args.requests), url, body, token)?;
        if run.failed > 0 || run.requests as usize != args.requests {
            return Err(format!("{name}: {} of {} requests succeeded", run.requests, args.requests));
        }
        control("-d")?;
        // Dumps are numbered from 1 in the order they are asked for.
        let file = root.join(format!("callgrind.{pid}.{}", dump + 1));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let instructions = loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if let Some(total) = text.lines().find_map(|line| line.strip_prefix("totals:")) {
                break total.trim().parse::<f64>().map_err(|e| format!("{}: {e}", file.display()))?;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("callgrind wrote no {}", file.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        counts.push((name, instructions / args.requests as f64));
        // Kept for `callgrind_annotate --inclusive=yes FILE`.
        let kept = crate::workspace_root().join("target/callgrind");
        std::fs::create_dir_all(&kept).map_err(|e| e.to_string())?;
        let kept = kept.join(format!("{}.out", name.replace('/', "-")));
        std::fs::copy(&file, &kept).map_err(|e| format!("{}: {e}", kept.display()))?;
        println!("profile of {name}: {}", kept.display());
    }
    println!("{:<14} {:>22}", "rpc", "instructions/request");
    for (name, per_request) in &counts {
        println!("{name:<14} {per_request:>22.0}");
    }
    println!(
        "ratio Health/Evaluate instructions (the throughput ratio if machine work were all): {:.3}",
        counts[1].1 / counts[0].1
    );
    Ok(())
}
