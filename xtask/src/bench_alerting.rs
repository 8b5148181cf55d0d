//! `cargo xtask bench alerting`: whether the alerting service keeps up
//! with the audit log, and how fast a posted alert reaches its receiver.
//!
//! 1. The audit service's append rate: producers append agent events
//!    (actions, decisions, denials) for `--seconds`.
//! 2. The alerting service (the eight default rules, evaluated every
//!    second) follows that log from its start: the events per second it
//!    applies while catching up, against the append rate of phase 1.
//! 3. Latency: alerts posted one at a time to Alertmanager's API
//!    (`group_wait: 0s`), timed until a webhook receiver has them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_alerting::{AlertingConfig, AlertingServer};
use warden_audit::{AuditConfig, AuditServer};
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;

#[derive(Debug, clap::Args)]
pub struct AlertingArgs {
    /// Concurrent producers appending to the audit log.
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// Events per Append call.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Seconds of appending.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Agents the events are spread over (series per metric).
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Alerts posted in the latency part.
    #[arg(long, default_value_t = 300)]
    alerts: usize,
}

fn event(i: usize, agents: usize) -> audit::AuditEvent {
    use prost_types::value::Kind;
    let text = |s: &str| prost_types::Value { kind: Some(Kind::StringValue(s.to_owned())) };
    let number = |n: f64| prost_types::Value { kind: Some(Kind::NumberValue(n)) };
    let agent = format!("agent-{}", i % agents);
    let (event_type, fields): (&str, Vec<(&str, prost_types::Value)>) = match i % 3 {
        0 => (
            "action_completed",
            vec![
                ("action_type", text("send_email")),
                ("status", text(if i.is_multiple_of(7) { "failure" } else { "success" })),
                ("duration_seconds", number((i % 100) as f64 / 10.0)),
                ("cost", number(0.02)),
            ],
        ),
        1 => (
            "policy_evaluation",
            vec![("effect", text(if i.is_multiple_of(5) { "deny" } else { "allow" })), ("action", text("send_email"))],
        ),
        _ => (
            "auth_denied",
            vec![("code", text("UNAUTHENTICATED")), ("peer", text("10.0.0.1")), ("service", text("policy"))],
        ),
    };
    audit::AuditEvent {
        event_id: String::new(),
        event_type: event_type.into(),
        time: None,
        correlation_id: String::new(),
        agent_id: agent,
        actor: String::new(),
        payload: Some(prost_types::Struct { fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() }),
        sensitive: None,
        subject: String::new(),
    }
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort_unstable();
    latencies.get(((latencies.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or_default()
}

/// Appends from `args.producers` producers for `args.seconds`; returns the
/// events appended and their rate.
async fn append_for(
    channel: &tonic::transport::Channel,
    args: &AlertingArgs,
    round: usize,
) -> Result<(usize, f64), String> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for producer in 0..args.producers {
        let mut client = AuditServiceClient::new(channel.clone());
        let (batch, agents) = (args.batch, args.agents);
        tasks.push(tokio::spawn(async move {
            let mut appended = 0usize;
            let mut i = round * 100_000_000 + producer * 1_000_000;
            while Instant::now() < deadline {
                let events = (0..batch).map(|k| event(i + k, agents)).collect();
                i += batch;
                if client.append(audit::AppendRequest { events }).await.is_ok() {
                    appended += batch;
                }
            }
            appended
        }));
    }
    let mut appended = 0;
    for task in tasks {
        appended += task.await.map_err(|e| e.to_string())?;
    }
    Ok((appended, appended as f64 / started.elapsed().as_secs_f64()))
}

pub async fn run(args: AlertingArgs) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let audit = AuditServer::start(AuditConfig::for_tests(dir.path().join("audit")))
        .await
        .map_err(|e| format!("audit service: {e}"))?;
    let channel = tonic::transport::Endpoint::from_shared(audit.url())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;

    // 1. The audit service's append rate.
    let (appended, append_rate) = append_for(&channel, &args, 0).await?;
    println!(
        "audit appends:       {appended} events, {append_rate:.0}/s ({} producers, batch {})",
        args.producers, args.batch
    );

    // A receiver for phase 3.
    let received: Arc<tokio::sync::Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                let now = Instant::now();
                let mut sink = sink.lock().await;
                for alert in body["alerts"].as_array().into_iter().flatten() {
                    if let Some(n) = alert["labels"]["n"].as_str() {
                        sink.entry(n.to_owned()).or_insert(now);
                    }
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let hook = format!("http://{}/hook", listener.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let routing = dir.path().join("alertmanager.yml");
    std::fs::write(
        &routing,
        format!(
            "route:\n  receiver: hook\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 1m\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: '{hook}'}}]\n"
        ),
    )
    .map_err(|e| e.to_string())?;

    // 2. The alerting service follows the log from its start.
    let mut config = AlertingConfig::for_tests(dir.path().join("alerting"));
    config.audit_url = audit.url();
    config.routing = routing;
    config.evaluation_interval = Duration::from_secs(1);
    let alerting = AlertingServer::start(config).await.map_err(|e| format!("alerting service: {e}"))?;
    let started = Instant::now();
    let target = appended as u64;
    loop {
        let position = alerting.engine.state.lock().await.derived.position;
        if position >= target {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("the alerting service read only {position} of {target} events in 10 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let follow_rate = appended as f64 / started.elapsed().as_secs_f64();
    println!(
        "alerting catches up: {follow_rate:.0} events/s from the log's start: {:.2}x the append rate",
        follow_rate / append_rate
    );

    // 2b. Live: appending again at full speed while alerting follows and
    //     evaluates the eight rules every second.
    let (live, live_rate) = append_for(&channel, &args, 1).await?;
    let target = (appended + live) as u64;
    let behind = target.saturating_sub(alerting.engine.state.lock().await.derived.position);
    let drain = Instant::now();
    while alerting.engine.state.lock().await.derived.position < target {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (series, evaluations, slowest) = {
        let state = alerting.engine.state.lock().await;
        let slowest = state.rule_status.values().map(|s| s.evaluation_seconds).fold(0.0, f64::max);
        let evaluated = state.rule_status.values().filter(|s| s.last_evaluation_ms > 0).count();
        (state.derived.tsdb.series_count(), evaluated, slowest)
    };
    println!(
        "live:                {live} events at {live_rate:.0}/s while {evaluations} rules were evaluated every 1 s over {series} series (slowest rule {:.2} ms); behind by {behind} events at the end, caught up {:.0} ms later",
        slowest * 1e3,
        drain.elapsed().as_secs_f64() * 1e3
    );

    // 3. Posted alert to webhook.
    let http = reqwest::Client::new();
    let api = format!("http://{}/api/v2/alerts", alerting.http_addr.ok_or("no http api")?);
    let mut latencies = Vec::with_capacity(args.alerts);
    for n in 0..args.alerts {
        let key = n.to_string();
        let body = serde_json::json!([{"labels": {"alertname": "Bench", "n": key}}]);
        let sent = Instant::now();
        http.post(&api).json(&body).send().await.map_err(|e| e.to_string())?;
        let deadline = sent + Duration::from_secs(30);
        loop {
            if let Some(at) = received.lock().await.get(&key) {
                latencies.push(at.duration_since(sent));
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("alert {n} did not arrive within 30 s"));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    println!(
        "post to webhook:     p50 {:.1} ms, p99 {:.1} ms beyond group_wait ({} alerts)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        args.alerts
    );
    alerting.shutdown().await;
    audit.shutdown().await;
    Ok(())
}
