//! The alerting service across real services (audit and alerting,
//! authentication on): agents report failing actions, a rule over the
//! derived series fires, a webhook receiver is told, and the audit log
//! records the alert and the notification. Prometheus-format ingestion and
//! silences over Alertmanager's HTTP API; the gRPC contract's validation;
//! a restart that resumes the audit log where it was.

use std::time::Duration;

use tonic::Code;
use warden_alerting::{AlertingConfig, AlertingServer};
use warden_audit::AuditServer;
use warden_client::{ActionOutcome, ActionRecorder, ActionStatus, ClientConfig};
use warden_proto::alerting::v1 as pb;
use warden_proto::alerting::v1::alerting_service_client::AlertingServiceClient;
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_tests::identity::{self, Keys, bearer};
use warden_tests::{Sandbox, channel, eventually};

const RULES: &str = r#"
groups:
  - name: agents
    interval: 200ms
    rules:
      - alert: ActionsFailing
        expr: sum by (agent_id) (increase(agent_actions_total{status="error"}[1m])) >= 3
        labels:
          severity: critical
        annotations:
          description: "{{ $labels.agent_id }} failed {{ $value }} actions"
"#;

fn routing(url: &str) -> String {
    format!(
        "route:\n  receiver: hook\n  group_by: [alertname, agent_id]\n  group_wait: 100ms\n  group_interval: 200ms\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: '{url}'}}]\n"
    )
}

struct Stack {
    sandbox: Sandbox,
    keys: Keys,
    audit: AuditServer,
    alerting: AlertingServer,
    webhook: warden_testkit::Receiver,
    webhook_url: String,
}

fn alerting_config(sandbox: &Sandbox, keys: &Keys, audit_url: &str, webhook_url: &str) -> AlertingConfig {
    sandbox.write("agents.rules.yaml", RULES);
    sandbox.write("alertmanager.yml", &routing(webhook_url));
    let mut config = AlertingConfig::for_tests(sandbox.data.path().join("alerting"));
    config.auth = keys.auth();
    config.audit_url = audit_url.into();
    config.outbound.credential = keys.token("alerting").into();
    config.rules = sandbox.policies_dir().join("agents.rules.yaml").display().to_string();
    config.routing = sandbox.policies_dir().join("alertmanager.yml");
    config.scrape_interval = Duration::from_millis(100);
    config.tick_interval = Duration::from_millis(50);
    config.outbox_interval = Duration::from_millis(20);
    config.snapshot_interval = Duration::from_millis(100);
    config
}

async fn stack() -> Stack {
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let mut audit_config = warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"));
    audit_config.auth = keys.auth();
    let audit = AuditServer::start(audit_config).await.unwrap();
    let webhook = warden_testkit::Receiver::start().await;
    let webhook_url = webhook.url.clone();
    let alerting = AlertingServer::start(alerting_config(&sandbox, &keys, &audit.url(), &webhook_url)).await.unwrap();
    Stack { sandbox, keys, audit, alerting, webhook, webhook_url }
}

async fn fail(stack: &Stack, n: usize) {
    let recorder =
        ActionRecorder::new(ClientConfig::new(stack.audit.url()).api_key(stack.keys.token("agent"))).unwrap();
    for i in 0..n {
        recorder
            .record_action(&ActionOutcome {
                agent_id: "support-bot".into(),
                action_type: "send_email".into(),
                correlation_id: format!("c-{i}"),
                decision_id: None,
                status: ActionStatus::Failure,
                duration: Duration::from_millis(300),
                cost: 0.01,
                cost_type: Some("llm_tokens".into()),
                error_class: Some("timeout".into()),
            })
            .await
            .unwrap();
    }
}

async fn events_of(stack: &Stack, event_type: &str) -> Vec<audit::AuditRecord> {
    let mut client = AuditServiceClient::new(channel(&stack.audit.url()).await);
    let request = audit::QueryRequest { event_types: vec![event_type.into()], ..Default::default() };
    client.query(bearer(tonic::Request::new(request), stack.keys.token("auditor"))).await.unwrap().into_inner().records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_actions_fire_an_alert_that_reaches_the_receiver_and_the_audit_log() {
    let stack = stack().await;
    fail(&stack, 3).await;
    let message = eventually(Duration::from_secs(20), || async { stack.webhook.got().first().cloned() }).await;
    assert_eq!(message["version"], "4");
    assert_eq!(message["status"], "firing");
    assert_eq!(message["alerts"][0]["labels"]["agent_id"], "support-bot");
    assert_eq!(message["alerts"][0]["labels"]["severity"], "critical");
    assert!(message["alerts"][0]["annotations"]["description"].as_str().unwrap().starts_with("support-bot failed"));
    // Links lead somewhere: externalURL defaults to the service's own
    // address, and a rule alert's generatorURL to the rule on its page.
    let api = format!("http://{}", stack.alerting.http_addr.unwrap());
    assert_eq!(message["externalURL"], api.as_str());
    let generator = message["alerts"][0]["generatorURL"].as_str().unwrap().to_owned();
    assert_eq!(generator, format!("{api}/rules#rule-agents-ActionsFailing"));
    let page = reqwest::Client::new()
        .get(generator.split('#').next().unwrap())
        .bearer_auth(stack.keys.token("operator"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("id=\"rule-agents-ActionsFailing\"") && page.contains("increase(agent_actions_total"),
        "{page}"
    );
    // The alert and its delivery are in the audit log, with the agent.
    let firing = eventually(Duration::from_secs(10), || async {
        let records = events_of(&stack, "alert_firing").await;
        (!records.is_empty()).then_some(records)
    })
    .await;
    assert_eq!(firing[0].event.as_ref().unwrap().agent_id, "support-bot");
    eventually(Duration::from_secs(10), || async {
        (!events_of(&stack, "notification_sent").await.is_empty()).then_some(())
    })
    .await;
    // gRPC: the rule is healthy and firing.
    let mut client = AlertingServiceClient::new(channel(&stack.alerting.url()).await);
    let rules = client
        .list_rules(bearer(tonic::Request::new(pb::ListRulesRequest {}), stack.keys.token("operator")))
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(
        (rules[0].name.as_str(), rules[0].health.as_str(), rules[0].state.as_str()),
        ("ActionsFailing", "ok", "firing")
    );
    let alerts = client
        .list_alerts(bearer(
            tonic::Request::new(pb::ListAlertsRequest {
                matchers: vec!["agent_id=\"support-bot\"".into()],
                ..Default::default()
            }),
            stack.keys.token("auditor"),
        ))
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].value >= 3.0);
    // An agent may not read alerting state.
    let refused = client
        .list_alerts(bearer(tonic::Request::new(pb::ListAlertsRequest::default()), stack.keys.token("agent")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field() {
    let stack = stack().await;
    let mut client = AlertingServiceClient::new(channel(&stack.alerting.url()).await);
    let operator = stack.keys.token("operator");
    let cases = [
        (pb::CreateSilenceRequest { ends_at: Some(future(3600)), ..Default::default() }, "matchers"),
        (
            pb::CreateSilenceRequest {
                matchers: vec!["agent_id=~\"(\"".into()],
                ends_at: Some(future(3600)),
                ..Default::default()
            },
            "matchers[0]",
        ),
        (pb::CreateSilenceRequest { matchers: vec!["agent_id=bot".into()], ..Default::default() }, "ends_at"),
        (
            pb::CreateSilenceRequest {
                matchers: vec!["agent_id=bot".into()],
                starts_at: Some(future(7200)),
                ends_at: Some(future(3600)),
                ..Default::default()
            },
            "ends_at",
        ),
        (
            pb::CreateSilenceRequest {
                matchers: vec!["agent_id=~\".*\"".into()],
                ends_at: Some(future(3600)),
                ..Default::default()
            },
            "matchers",
        ),
    ];
    for (request, field) in cases {
        let status = client.create_silence(bearer(tonic::Request::new(request.clone()), operator)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        let error = warden_errors::WardenError::from_status(&status);
        assert!(error.violations.iter().any(|v| v.field == field), "{field}: {:?}", error.violations);
    }
    let status =
        client.test_route(bearer(tonic::Request::new(pb::TestRouteRequest::default()), operator)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A good silence, listed, then expired for good.
    let silence = client
        .create_silence(bearer(
            tonic::Request::new(pb::CreateSilenceRequest {
                matchers: vec!["agent_id=\"support-bot\"".into()],
                ends_at: Some(future(3600)),
                comment: "deploying".into(),
                ..Default::default()
            }),
            operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((silence.state.as_str(), silence.created_by.as_str()), ("active", "operator"));
    let routed = client
        .test_route(bearer(
            tonic::Request::new(pb::TestRouteRequest {
                labels: [
                    ("agent_id".to_string(), "support-bot".to_string()),
                    ("severity".to_string(), "critical".to_string()),
                ]
                .into(),
            }),
            operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(routed.routes[0].receiver, "hook");
    assert_eq!(routed.silenced_by, vec![silence.id.clone()]);
    let expired = client
        .expire_silence(bearer(tonic::Request::new(pb::ExpireSilenceRequest { id: silence.id.clone() }), operator))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.state, "expired");
    let listed = client
        .list_silences(bearer(tonic::Request::new(pb::ListSilencesRequest { include_expired: false }), operator))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.silences.is_empty());
}

/// GET with a bearer key; the JSON answer.
async fn get_json(http: &reqwest::Client, url: String, token: &str) -> serde_json::Value {
    http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

/// POST JSON with a bearer key; the JSON answer.
async fn post_json(http: &reqwest::Client, url: String, token: &str, body: &serde_json::Value) -> serde_json::Value {
    http.post(url).bearer_auth(token).json(body).send().await.unwrap().json().await.unwrap()
}

fn future(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + seconds, nanos: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_can_use_warden_as_its_alertmanager() {
    let stack = stack().await;
    let http = reqwest::Client::new();
    let api = format!("http://{}", stack.alerting.http_addr.unwrap());
    let service = stack.keys.token("service");
    let alerts = serde_json::json!([{
        "labels": {"alertname": "NodeDown", "instance": "db-1", "severity": "critical"},
        "annotations": {"summary": "db-1 is down"},
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
    }]);
    // Without credentials: refused.
    let refused = http.post(format!("{api}/api/v2/alerts")).json(&alerts).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let posted = http.post(format!("{api}/api/v2/alerts")).bearer_auth(service).json(&alerts).send().await.unwrap();
    assert_eq!(posted.status(), 200);
    let bad = http
        .post(format!("{api}/api/v2/alerts"))
        .bearer_auth(service)
        .json(&serde_json::json!([{"labels": {}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("[0].labels"));
    let message = eventually(Duration::from_secs(20), || async {
        stack.webhook.got().into_iter().find(|m| m["alerts"][0]["labels"]["alertname"] == "NodeDown")
    })
    .await;
    assert_eq!(message["alerts"][0]["generatorURL"], "http://prometheus:9090/graph?g0.expr=up");
    let listed =
        get_json(&http, format!("{api}/api/v2/alerts?filter=alertname%3D%22NodeDown%22"), stack.keys.token("operator"))
            .await;
    assert_eq!(listed[0]["status"]["state"], "active");
    assert_eq!(listed[0]["receivers"][0]["name"], "hook");
    // A silence through the HTTP API, as amtool creates it.
    let silence = serde_json::json!({
        "matchers": [{"name": "instance", "value": "db-1", "isRegex": false, "isEqual": true}],
        "startsAt": chrono::Utc::now().to_rfc3339(),
        "endsAt": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        "createdBy": "ignored when authenticated",
        "comment": "rebooting",
    });
    let created = post_json(&http, format!("{api}/api/v2/silences"), stack.keys.token("operator"), &silence).await;
    let id = created["silenceID"].as_str().unwrap().to_owned();
    let suppressed = get_json(&http, format!("{api}/api/v2/alerts"), stack.keys.token("operator")).await;
    let node_down = suppressed.as_array().unwrap().iter().find(|a| a["labels"]["alertname"] == "NodeDown").unwrap();
    assert_eq!(node_down["status"]["state"], "suppressed");
    assert_eq!(node_down["status"]["silencedBy"][0], id.as_str());
    let got = get_json(&http, format!("{api}/api/v2/silence/{id}"), stack.keys.token("auditor")).await;
    assert_eq!((got["createdBy"].as_str(), got["status"]["state"].as_str()), (Some("operator"), Some("active")));
    let deleted = http
        .delete(format!("{api}/api/v2/silence/{id}"))
        .bearer_auth(stack.keys.token("operator"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    // An auditor may read but not silence.
    let forbidden = http
        .post(format!("{api}/api/v2/silences"))
        .bearer_auth(stack.keys.token("auditor"))
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let status: serde_json::Value = http
        .get(format!("{api}/api/v2/status"))
        .bearer_auth(stack.keys.token("operator"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The routing file, with its secrets (a webhook's URL) masked as
    // Alertmanager masks them.
    let shown = status["config"]["original"].as_str().unwrap();
    assert!(shown.contains("<secret>") && !shown.contains(&stack.webhook_url), "{shown}");
    assert_eq!(http.get(format!("{api}/-/healthy")).send().await.unwrap().status(), 200);
    eventually(Duration::from_secs(10), || async {
        (http.get(format!("{api}/-/ready")).send().await.unwrap().status() == 200).then_some(())
    })
    .await;
}

/// The number of failures the derived series count.
async fn failures_counted(server: &AlertingServer) -> f64 {
    let state = server.engine.state.lock().await;
    let expr = warden_alerting::promql::parse("sum(agent_actions_total{status=\"error\"})").unwrap();
    let evaluator = warden_alerting::promql::Evaluator { tsdb: &state.derived.tsdb, default_step_ms: 1000 };
    match evaluator.eval(&expr, state.derived.last_scrape_ms).unwrap() {
        warden_alerting::promql::Value::Vector(v) => v.first().map_or(0.0, |s| s.value),
        _ => 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_audit_log_and_counts_no_event_twice() {
    let stack = stack().await;
    fail(&stack, 2).await;
    eventually(Duration::from_secs(20), || async { (failures_counted(&stack.alerting).await == 2.0).then_some(()) })
        .await;
    let Stack { sandbox, keys, audit, alerting, webhook_url, .. } = stack;
    alerting.shutdown().await;
    let restarted = AlertingServer::start(alerting_config(&sandbox, &keys, &audit.url(), &webhook_url)).await.unwrap();
    let resumed = restarted.engine.state.lock().await.derived.position;
    assert!(resumed >= 2, "resumed at {resumed}");
    let recorder = ActionRecorder::new(ClientConfig::new(audit.url()).api_key(keys.token("agent"))).unwrap();
    recorder
        .record_action(&ActionOutcome {
            agent_id: "support-bot".into(),
            action_type: "send_email".into(),
            correlation_id: "after-restart".into(),
            decision_id: None,
            status: ActionStatus::Failure,
            duration: Duration::from_millis(10),
            cost: 0.0,
            cost_type: None,
            error_class: None,
        })
        .await
        .unwrap();
    eventually(Duration::from_secs(20), || async { (failures_counted(&restarted).await == 3.0).then_some(()) }).await;
    // And it stays 3: nothing was replayed twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(failures_counted(&restarted).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_circuit_breaker_becomes_a_series() {
    let stack = stack().await;
    let recorder =
        ActionRecorder::new(ClientConfig::new(stack.audit.url()).api_key(stack.keys.token("agent"))).unwrap();
    let breaker = warden_resilience::CircuitBreaker::new("payments", warden_resilience::BreakerConfig::default());
    let watching = recorder.watch_breaker("support-bot", &breaker);
    recorder.record_breaker_change("support-bot", "payments", warden_resilience::BreakerState::Open).await.unwrap();
    let open = eventually(Duration::from_secs(20), || async {
        let state = stack.alerting.engine.state.lock().await;
        let expr = warden_alerting::promql::parse("circuit_breaker_state{state=\"open\"} == 1").unwrap();
        let evaluator = warden_alerting::promql::Evaluator { tsdb: &state.derived.tsdb, default_step_ms: 1000 };
        match evaluator.eval(&expr, state.derived.last_scrape_ms).unwrap() {
            warden_alerting::promql::Value::Vector(v) if !v.is_empty() => Some(v),
            _ => None,
        }
    })
    .await;
    assert_eq!(open[0].labels["agent_id"], "support-bot");
    assert_eq!(open[0].labels["name"], "payments");
    // Agents may record these about themselves, not about others.
    let refused = recorder
        .record_breaker_change("someone-else", "payments", warden_resilience::BreakerState::Open)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    watching.abort();
}

/// `amtool` (Alertmanager's own CLI) against Warden's Alertmanager API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amtool_works_against_the_http_api() {
    let Some(amtool) = warden_store::testing::external_tool("amtool", "apt-get install prometheus-alertmanager") else {
        return;
    };
    let stack = stack().await;
    let http_config = stack.sandbox.data.path().join("amtool-http.yml");
    std::fs::write(&http_config, format!("authorization:\n  credentials: {}\n", stack.keys.token("operator"))).unwrap();
    let url = format!("http://{}", stack.alerting.http_addr.unwrap());
    let run = |args: Vec<String>| {
        let amtool = amtool.clone();
        let mut full =
            vec![format!("--alertmanager.url={url}"), format!("--http.config.file={}", http_config.display())];
        full.extend(args);
        async move {
            let output = tokio::process::Command::new(amtool).args(&full).output().await.unwrap();
            assert!(
                output.status.success(),
                "amtool {full:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        }
    };
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    run(owned(&["alert", "add", "alertname=NodeDown", "instance=db-1", "--annotation=summary=db-1 down"])).await;
    run(owned(&["alert", "add", "alertname=NodeDown", "instance=db-2", "severity=info"])).await;
    run(owned(&["alert", "add", "alertname=DiskFull", "instance=db-2", "severity=info"])).await;
    let alerts: serde_json::Value =
        serde_json::from_str(&run(owned(&["alert", "query", "-o", "json", "alertname=NodeDown"])).await).unwrap();
    assert_eq!(alerts.as_array().map(Vec::len), Some(2), "{alerts}");
    // Several matchers (amtool sends one `filter` each), regexes, negations.
    let instances = |json: &str| -> Vec<String> {
        let alerts: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut found: Vec<String> = alerts
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!("{}/{}", a["labels"]["alertname"].as_str().unwrap(), a["labels"]["instance"].as_str().unwrap())
            })
            .collect();
        found.sort();
        found
    };
    for (matchers, expected) in [
        (&["alertname=NodeDown", "severity=info"][..], &["NodeDown/db-2"][..]),
        (&["alertname=NodeDown", "instance=db-1"], &["NodeDown/db-1"]),
        (&["alertname=~Node.*|Disk.*", "instance=db-2"], &["DiskFull/db-2", "NodeDown/db-2"]),
        (&["alertname!=NodeDown"], &["DiskFull/db-2"]),
        (&["instance!~db-1", "alertname=NodeDown"], &["NodeDown/db-2"]),
        (&["alertname=NodeDown", "severity=info", "instance=db-1"], &[]),
    ] {
        let mut args = owned(&["alert", "query", "-o", "json"]);
        args.extend(owned(matchers));
        assert_eq!(instances(&run(args).await), expected, "{matchers:?}");
    }
    let id =
        run(owned(&["silence", "add", "instance=db-1", "--comment=rebooting", "--duration=1h", "--author=ignored"]))
            .await
            .trim()
            .to_owned();
    let silences: serde_json::Value =
        serde_json::from_str(&run(owned(&["silence", "query", "-o", "json"])).await).unwrap();
    assert_eq!(silences[0]["id"], id.as_str());
    assert_eq!(silences[0]["createdBy"], "operator");
    // Silences by several matchers too.
    let other = run(owned(&["silence", "add", "alertname=DiskFull", "instance=db-2", "--comment=x", "--duration=1h"]))
        .await
        .trim()
        .to_owned();
    let both: serde_json::Value = serde_json::from_str(
        &run(owned(&["silence", "query", "-o", "json", "alertname=DiskFull", "instance=db-2"])).await,
    )
    .unwrap();
    assert_eq!(both.as_array().map(Vec::len), Some(1), "{both}");
    assert_eq!(both[0]["id"], other.as_str());
    run(vec!["silence".into(), "expire".into(), other]).await;
    let suppressed: serde_json::Value =
        serde_json::from_str(&run(owned(&["alert", "query", "-o", "json", "--silenced", "instance=db-1"])).await)
            .unwrap();
    assert_eq!(suppressed[0]["status"]["state"], "suppressed");
    run(vec!["silence".into(), "expire".into(), id]).await;
    let left: serde_json::Value = serde_json::from_str(&run(owned(&["silence", "query", "-o", "json"])).await).unwrap();
    assert_eq!(left.as_array().map(Vec::len), Some(0));
}

async fn rule_names(stack: &Stack) -> Vec<String> {
    let mut client = AlertingServiceClient::new(channel(&stack.alerting.url()).await);
    let request = bearer(tonic::Request::new(pb::ListRulesRequest {}), stack.keys.token("operator"));
    client.list_rules(request).await.unwrap().into_inner().rules.into_iter().map(|r| r.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_file_is_refused_with_its_line_and_the_last_good_set_stays() {
    let stack = stack().await;
    let mut client = AlertingServiceClient::new(channel(&stack.alerting.url()).await);
    stack
        .sandbox
        .write("agents.rules.yaml", &RULES.replace("increase(agent_actions_total", "increase(agent_actions_total["));
    let refused = client
        .reload_config(bearer(tonic::Request::new(pb::ReloadConfigRequest {}), stack.keys.token("admin")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("agents.rules.yaml:6: group agents, rule ActionsFailing: expr:"),
        "{}",
        refused.message()
    );
    assert_eq!(rule_names(&stack).await, ["ActionsFailing"]);
    // Reloading is an admin's.
    let denied = client
        .reload_config(bearer(tonic::Request::new(pb::ReloadConfigRequest {}), stack.keys.token("operator")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    stack.sandbox.write("agents.rules.yaml", &RULES.replace("ActionsFailing", "ActionsFailingAgain"));
    let done = client
        .reload_config(bearer(tonic::Request::new(pb::ReloadConfigRequest {}), stack.keys.token("admin")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.rules, done.receivers), (1, 1));
    assert_eq!(rule_names(&stack).await, ["ActionsFailingAgain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_rule_files_are_reloaded_while_it_runs() {
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let mut audit_config = warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"));
    audit_config.auth = keys.auth();
    let audit = AuditServer::start(audit_config).await.unwrap();
    let webhook = warden_testkit::Receiver::start().await;
    let webhook_url = webhook.url.clone();
    let mut config = alerting_config(&sandbox, &keys, &audit.url(), &webhook_url);
    config.watch = true;
    let alerting = AlertingServer::start(config).await.unwrap();
    let stack = Stack { sandbox, keys, audit, alerting, webhook, webhook_url };
    stack.sandbox.write("agents.rules.yaml", &RULES.replace("ActionsFailing", "Edited"));
    eventually(Duration::from_secs(20), || async { (rule_names(&stack).await == ["Edited"]).then_some(()) }).await;
    // A broken edit changes nothing.
    stack.sandbox.write("agents.rules.yaml", "groups: [");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rule_names(&stack).await, ["Edited"]);
}

/// An HTTPS receiver that accepts only clients with a certificate from
/// `client_ca`; the bodies it received, one request per connection.
async fn https_receiver(
    server: &warden_tests::pki::Leaf,
    client_ca: &warden_tests::pki::Ca,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(client_ca.pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(roots.into()).build().unwrap();
    let certs = vec![rustls::pki_types::CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
    let received: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, store) = (acceptor.clone(), store.clone());
            tokio::spawn(async move {
                // A client without an accepted certificate fails here.
                let Ok(mut stream) = acceptor.accept(stream).await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        store.lock().unwrap().push(body.to_owned());
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}

/// A pasted `alertmanager.yml` whose webhook is reached over mutual TLS
/// (`tls_config` with a CA, a client certificate and key): the service
/// delivers with them, where a client without the certificate is turned
/// away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_behind_mutual_tls_is_reached_with_the_configs_tls_settings() {
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let pki = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (warden_tests::pki::ca("receiver CA"), warden_tests::pki::ca("warden clients"));
    let server = server_ca.server(pki.path(), "receiver");
    let client = client_ca.client(pki.path(), "warden", "spiffe://example.org/warden-alerting");
    let (url, received) = https_receiver(&server, &client_ca).await;
    let ca_file = server_ca.write(pki.path(), "receiver-ca.pem");
    let mut config = alerting_config(&sandbox, &keys, "", &url);
    config.audit_url = String::new();
    let routing = |tls: &str| {
        format!(
            "route:\n  receiver: hook\n  group_wait: 0s\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: '{url}'\n        http_config:\n          tls_config:\n            ca_file: {}\n{tls}",
            ca_file.display()
        )
    };
    sandbox.write(
        "alertmanager.yml",
        &routing(&format!(
            "            cert_file: {}\n            key_file: {}\n            min_version: TLS12\n",
            client.cert.display(),
            client.key.display()
        )),
    );
    let alerting = AlertingServer::start(config).await.unwrap();
    let api = format!("http://{}", alerting.http_addr.unwrap());
    let http = reqwest::Client::new();
    let alert = serde_json::json!([{"labels": {"alertname": "OverTls", "severity": "info"}}]);
    let posted = http.post(format!("{api}/api/v2/alerts")).bearer_auth(keys.token("service")).json(&alert).send();
    assert_eq!(posted.await.unwrap().status(), 200);
    let body = eventually(Duration::from_secs(20), || async { received.lock().unwrap().first().cloned() }).await;
    assert!(body.contains("OverTls"), "{body}");
    // The receiver does require the client certificate.
    let ca = reqwest::Certificate::from_pem(server_ca.pem.as_bytes()).unwrap();
    let without = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    assert!(without.post(&url).body("{}").send().await.is_err());
    assert_eq!(received.lock().unwrap().len(), 1);
    alerting.shutdown().await;
}

/// Every path, method and query parameter of Alertmanager's own OpenAPI
/// specification (`tests/data/alertmanager/openapi.yaml`, taken whole) is
/// served: each path answers, each boolean parameter is read (a bad value
/// is a 400 naming it), and so is each matcher or regex parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_and_parameter_of_alertmanagers_openapi_spec_is_served() {
    let stack = stack().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("data/alertmanager/openapi.yaml")).unwrap()).unwrap();
    let base = spec["basePath"].as_str().unwrap_or("/api/v2").trim_end_matches('/').to_owned();
    let api = format!("http://{}{base}", stack.alerting.http_addr.unwrap());
    let http = reqwest::Client::new();
    let admin = stack.keys.token("admin").to_string();
    // Something for each path to find: an alert, and a silence.
    let alert = serde_json::json!([{"labels": {"alertname": "SpecCheck", "severity": "info"}}]);
    let posted = http.post(format!("{api}/alerts")).bearer_auth(&admin).json(&alert).send().await.unwrap();
    assert_eq!(posted.status(), 200);
    let silence = |comment: &str| {
        serde_json::json!({
            "matchers": [{"name": "alertname", "value": "Nothing", "isRegex": false}],
            "startsAt": chrono::Utc::now().to_rfc3339(), "endsAt": (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339(),
            "createdBy": "spec", "comment": comment,
        })
    };
    let mut checked = Vec::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        for (method, operation) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if !["get", "post", "delete"].contains(&method) {
                continue;
            }
            // A fresh silence for each call that names one (a delete expires it).
            let id = {
                let created =
                    http.post(format!("{api}/silences")).bearer_auth(&admin).json(&silence(path)).send().await.unwrap();
                created.json::<serde_json::Value>().await.unwrap()["silenceID"].as_str().unwrap().to_owned()
            };
            let url = format!("{api}{}", path.replace("{silenceID}", &id));
            let request = match method {
                "get" => http.get(&url),
                "delete" => http.delete(&url),
                _ if path == "/alerts" => http.post(&url).json(&alert),
                _ => http.post(&url).json(&silence("posted")),
            };
            let answer = request.bearer_auth(&admin).send().await.unwrap();
            assert_eq!(answer.status(), 200, "{} {path}: {}", method.to_uppercase(), answer.text().await.unwrap());
            checked.push(format!("{} {path}", method.to_uppercase()));
            for parameter in operation["parameters"].as_sequence().into_iter().flatten() {
                let parameter = match parameter["$ref"].as_str() {
                    Some(reference) => &spec["parameters"][reference.rsplit('/').next().unwrap()],
                    None => parameter,
                };
                if parameter["in"].as_str() != Some("query") {
                    continue;
                }
                let name = parameter["name"].as_str().unwrap();
                let bad = match (parameter["type"].as_str(), name) {
                    (Some("boolean"), _) => "maybe",
                    (_, "receiver") => "(",
                    _ => "{not a matcher",
                };
                let good = match parameter["type"].as_str() {
                    Some("boolean") => "false",
                    _ if name == "receiver" => ".*",
                    _ => "alertname=\"SpecCheck\"",
                };
                let with = |value: &str| http.get(&url).query(&[(name, value)]).bearer_auth(&admin).send();
                let answer = with(good).await.unwrap();
                assert_eq!(answer.status(), 200, "{path}?{name}={good}");
                let refused = with(bad).await.unwrap();
                assert_eq!(refused.status(), 400, "{path}?{name}={bad} was not read");
                let body = refused.text().await.unwrap();
                assert!(body.contains(name), "{path}?{name}: {body}");
                checked.push(format!("{path}?{name}"));
            }
        }
    }
    assert!(checked.len() >= 20, "{checked:?}");
    // The groups hold the posted alert under its route's receiver.
    let groups: serde_json::Value =
        http.get(format!("{api}/alerts/groups")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    let group = groups.as_array().unwrap().iter().find(|g| g["alerts"][0]["labels"]["alertname"] == "SpecCheck");
    assert_eq!(group.expect("a group")["receiver"]["name"], "hook", "{groups}");
    let receivers: serde_json::Value =
        http.get(format!("{api}/receivers")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(receivers, serde_json::json!([{"name": "hook"}]));
}
