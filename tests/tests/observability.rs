//! The observable stack's files, checked against the code: the Prometheus
//! rules and config pass `promtool`, and every Grafana panel queries a
//! metric the running services export (scraped from a live stack).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_audit::AuditServer;
use warden_client::{ClientConfig, PolicyClient, Request};
use warden_policy_engine::{PolicyEngine, PolicyEngineConfig};
use warden_proto::approval::v1 as pb;
use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use warden_tests::identity::{self, bearer};
use warden_tests::{Sandbox, channel};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn prometheus_rules_and_config_pass_promtool() {
    let Ok(promtool) = which("promtool") else {
        assert!(
            std::env::var("WARDEN_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "promtool is missing (apt-get install prometheus) and WARDEN_REQUIRE_EXTERNAL=1"
        );
        eprintln!("skipping promtool checks: promtool is not installed");
        return;
    };
    for args in [
        vec!["check".to_string(), "rules".into(), deploy().join("prometheus/alert-rules.yml").display().to_string()],
        vec!["check".to_string(), "config".into(), deploy().join("prometheus/prometheus.yml").display().to_string()],
    ] {
        let output = Command::new(&promtool).args(&args).output().unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rules = std::fs::read_to_string(deploy().join("prometheus/alert-rules.yml")).unwrap();
    for alert in [
        "HighErrorRate",
        "SlowActionExecution",
        "HighCost",
        "ApprovalBacklog",
        "PolicyViolationSpike",
        "CircuitBreakerOpen",
        "UnauthorizedAccessAttempt",
        "RateLimitExceeded",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "the seeds' {alert} rule is missing");
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.exists())
        .ok_or(())
}

/// Metric names a panel's query selects: identifiers followed by `{` or
/// `[`, or a query that is one bare name.
fn selected_metrics(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let trimmed = expr.trim();
    if trimmed.chars().all(is_ident) {
        return vec![trimmed.to_owned()];
    }
    let mut names = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_ident(chars[i]) && (i == 0 || !is_ident(chars[i - 1])) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            if matches!(chars.get(i), Some('{') | Some('[')) {
                names.push(chars[start..i].iter().collect());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test]
async fn every_dashboard_panel_queries_an_exported_metric() {
    // A stack with traffic that touches every family: decisions, a refused
    // call, an approval decided, the decision log shipped to audit.
    let sandbox = Sandbox::new(&[(
        "p.yaml",
        "rules:\n  - name: gated\n    actions: [gated]\n    effect: require_approval\n  - name: no\n    actions: [forbidden]\n    effect: deny\n  - name: rest\n    effect: allow\n",
    )]);
    let keys = identity::keys(sandbox.data.path());
    let mut audit_config = warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"));
    audit_config.auth = keys.auth();
    let audit = AuditServer::start(audit_config).await.unwrap();
    let mut approval_config = ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    approval_config.auth = keys.auth();
    approval_config.clock_interval = Duration::from_millis(20);
    let approval = ApprovalServer::start(approval_config).await.unwrap();
    let mut config = PolicyEngineConfig::for_tests(sandbox.policies_dir(), sandbox.data.path());
    config.auth = keys.auth();
    config.metrics_listen = "127.0.0.1:0".into();
    config.audit_url = audit.url();
    config.approval_url = approval.url();
    config.outbound.credential = keys.token("service").into();
    let engine = PolicyEngine::start(config).await.unwrap();
    let agent = PolicyClient::new(ClientConfig::new(engine.url()).api_key(keys.token("agent"))).unwrap();
    agent.evaluate(Request::new("support-bot", "send_email")).await.unwrap();
    agent.evaluate(Request::new("support-bot", "forbidden")).await.unwrap();
    let id = agent.evaluate(Request::new("support-bot", "gated")).await.unwrap().approval_id.unwrap();
    let mut reviewer = ApprovalServiceClient::new(channel(&approval.url()).await);
    let review = pb::ReviewRequest { id, approve: true, comment: String::new() };
    reviewer.review(bearer(tonic::Request::new(review), keys.token("approver"))).await.unwrap();
    let anonymous = PolicyClient::new(ClientConfig::new(engine.url())).unwrap();
    assert!(anonymous.evaluate(Request::new("support-bot", "send_email")).await.is_err());
    let metrics_addr = engine.metrics_addr.unwrap();
    let families = warden_tests::eventually(Duration::from_secs(10), || async move {
        let body = reqwest::get(format!("http://{metrics_addr}/metrics")).await.ok()?.text().await.ok()?;
        let families: HashSet<String> = body
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
            .collect();
        families.contains("audit_events_appended_total").then_some(families)
    })
    .await;

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/dashboards/warden.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = selected_metrics(expr);
            assert!(!names.is_empty(), "panel {:?} selects no metric: {expr}", panel["title"]);
            for name in names {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|base| families.contains(*base)))
                    .unwrap_or(&name);
                // Prometheus itself writes ALERTS from the rules file we ship.
                let from_prometheus = matches!(family, "ALERTS" | "ALERTS_FOR_STATE");
                assert!(
                    from_prometheus || families.contains(family),
                    "panel {:?} queries {name}, which no service exports",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "{checked}");
    engine.shutdown().await;
    approval.shutdown().await;
    audit.shutdown().await;
}
