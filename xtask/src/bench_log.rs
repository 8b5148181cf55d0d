//! `cargo xtask bench policy --decision-log sync|async`: what recording
//! every decision costs the policy engine. Two engines in this process, one
//! without a decision log and one shipping to an audit service running as
//! its own process (as in production), driven in alternating phases; a
//! third kind of phase stops the audit process (SIGSTOP) so the engine's
//! own cost shows without the audit service's appends sharing the cores.
//! The phases without a log stop it too, so that their baseline is not
//! slowed by the audit service catching up on the other phases' backlog.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_client::{ClientConfig, PolicyClient};
use warden_policy_engine::decision_log::Durability;
use warden_policy_engine::{PolicyEngine, PolicyEngineConfig, fixtures};

use crate::bench::{
    DecisionLogMode, PolicyArgs, Totals, evaluate_phase, evaluate_request, free_port, print_rows, release_binary,
    wait_for_port,
};

/// The release `warden-audit` binary, built if needed, started on a free
/// port with its own data directory.
struct AuditProcess {
    child: Child,
    url: String,
}

impl AuditProcess {
    fn start(data: &std::path::Path) -> Result<AuditProcess, String> {
        let binary = release_binary("warden-audit")?;
        let port = free_port()?;
        let child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "", "--insecure-no-auth"])
            .arg("--data-dir")
            .arg(data)
            .env("WARDEN__TELEMETRY__LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start warden-audit: {e}"))?;
        wait_for_port(port, "warden-audit")?;
        Ok(AuditProcess { child, url: format!("http://127.0.0.1:{port}") })
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
    }
}

impl Drop for AuditProcess {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(args: PolicyArgs, mode: DecisionLogMode) -> Result<(), String> {
    let root = std::env::temp_dir().join(format!("warden-bench-log-{}", std::process::id()));
    let policies = root.join("policies");
    std::fs::create_dir_all(&policies).map_err(|e| e.to_string())?;
    std::fs::write(policies.join("bench.yaml"), fixtures::rule_set(10, 20)).map_err(|e| e.to_string())?;
    let audit = AuditProcess::start(&root.join("audit"))?;
    let mut engines = Vec::new();
    let mut clients = Vec::new();
    for logged in [false, true] {
        let mut config = PolicyEngineConfig::for_tests(&policies, root.join(if logged { "logged" } else { "off" }));
        config.watch_policies = false;
        if logged {
            config.audit_url = audit.url.clone();
            config.decision_log.durability =
                if mode == DecisionLogMode::Sync { Durability::Sync } else { Durability::Async };
            config.decision_log.outbox_cap = u64::MAX;
            if let Some(delay) = args.commit_delay {
                config.decision_log.commit_delay = delay;
            }
            if let Some(siblings) = args.commit_siblings {
                config.decision_log.commit_siblings = siblings;
            }
        }
        let engine = PolicyEngine::start(config).await.map_err(|e| e.to_string())?;
        let mut per_engine = Vec::new();
        for _ in 0..args.connections {
            per_engine.push(PolicyClient::new(ClientConfig::new(engine.url())).map_err(|e| e.to_string())?);
        }
        clients.push(std::sync::Arc::new(per_engine));
        engines.push(engine);
    }
    let (agent, action) = fixtures::request(3);
    let request = evaluate_request(agent, action);
    println!(
        "bench policy --decision-log {mode:?}: 200-rule set, {} in flight over {} connections, {} x {}s phases each, alternating; audit service in its own process",
        args.in_flight, args.connections, args.rounds, args.seconds
    );
    let phase = Duration::from_secs(args.seconds);
    let (mut off, mut logged, mut paused) = (Totals::default(), Totals::default(), Totals::default());
    let syncs_before = engines[1].decision_log.as_ref().map_or(0, |log| log.journal_stats().syncs);
    for _ in 0..args.rounds {
        // The engine without a log is measured with the audit process
        // stopped too: otherwise it shares the cores with the audit service
        // appending the previous phases' backlog, and the engine's own cost
        // of recording (logged, audit stopped, against this) looks smaller
        // than it is.
        audit.signal("-STOP");
        off.add(evaluate_phase(clients[0].clone(), request.clone(), args.in_flight, phase).await);
        audit.signal("-CONT");
        logged.add(evaluate_phase(clients[1].clone(), request.clone(), args.in_flight, phase).await);
        audit.signal("-STOP");
        paused.add(evaluate_phase(clients[1].clone(), request.clone(), args.in_flight, phase).await);
        audit.signal("-CONT");
    }
    let backlog = engines[1].decision_log.as_ref().map_or(0, |log| log.pending());
    let syncs = engines[1].decision_log.as_ref().map_or(0, |log| log.journal_stats().syncs) - syncs_before;
    let recorded = (logged.latencies.len() + paused.latencies.len()) as f64;
    // Everything recorded reaches the audit service before the figures count.
    let deadline = Instant::now() + Duration::from_secs(120);
    while engines[1].decision_log.as_ref().is_some_and(|log| log.pending() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = engines[1].decision_log.as_ref().map_or(0, |log| log.pending());
    for engine in engines {
        engine.shutdown().await;
    }
    drop(audit);
    let _ = std::fs::remove_dir_all(&root);
    let (off_rate, off_p99) = (off.rate(), off.percentile(0.99));
    let (logged_rate, logged_p99) = (logged.rate(), logged.percentile(0.99));
    let (paused_rate, paused_p99) = (paused.rate(), paused.percentile(0.99));
    print_rows(&mut [
        ("Evaluate, no log", &mut off),
        ("Evaluate, logged", &mut logged),
        ("logged, audit stopped", &mut paused),
    ]);
    println!(
        "ratio logged/off: throughput {:.2}, p99 {:.2}; with the audit process stopped: throughput {:.2}, p99 {:.2}",
        logged_rate / off_rate,
        logged_p99.as_secs_f64() / off_p99.as_secs_f64(),
        paused_rate / off_rate,
        paused_p99.as_secs_f64() / off_p99.as_secs_f64(),
    );
    println!(
        "journal: {syncs} syncs, {:.1} decisions per sync; backlog after the last phase {backlog}, not shipped after draining {left}",
        recorded / syncs.max(1) as f64
    );
    if left > 0 {
        return Err(format!("{left} decisions were not shipped"));
    }
    Ok(())
}
