//! The policy engine as an agent sees it: a real server on 127.0.0.1:0,
//! called through the generated gRPC client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use warden_errors::{Classify, WardenError};
use warden_proto::policy::v1 as pb;
use warden_tests::{Sandbox, channel, eventually, policy_client, request};

const BASE: &str = r#"
rules:
  - name: only-humans-delete-customers
    actions: ["delete_customer"]
    effect: deny
    reason: "Only humans may delete customers"
  - name: cost-limit
    when: "action.estimated_cost > 500.0"
    effect: deny
    reason: "estimated cost exceeds the cost limit"
  - name: low-confidence
    when: "agent.confidence < 0.7"
    effect: require_approval
    reason: "agent confidence is low"
  - name: new-refund-rule
    actions: ["issue_refund"]
    when: "action.params.amount > 100.0"
    effect: require_approval
    mode: shadow
  - name: agents-may-work
    effect: allow
limits:
  - name: email-rate
    actions: ["send_email"]
    per: agent
    max_requests: 2
    window: 1h
"#;

fn effect(response: &pb::EvaluateResponse) -> pb::Effect {
    pb::Effect::try_from(response.effect).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_answers_with_effect_reasons_and_rules() {
    let sandbox = Sandbox::new(&[("base.yaml", BASE)]);
    let engine = sandbox.start().await;
    let mut client = policy_client(&engine).await;

    let allowed = client.evaluate(request("agent-1", 0.9, "send_email", 1.0)).await.unwrap().into_inner();
    assert_eq!(effect(&allowed), pb::Effect::Allow);
    assert_eq!(allowed.matched_rules, ["agents-may-work"]);
    assert!(allowed.policy_version.starts_with("sha256:"));
    let id = uuid::Uuid::parse_str(&allowed.decision_id).unwrap();
    assert_eq!(id.get_version_num(), 7);

    let approval = client.evaluate(request("agent-1", 0.5, "send_email", 1.0)).await.unwrap().into_inner();
    assert_eq!(effect(&approval), pb::Effect::RequireApproval);
    assert_eq!(approval.reasons, ["agent confidence is low"]);

    let denied = client.evaluate(request("agent-1", 0.9, "delete_customer", 900.0)).await.unwrap().into_inner();
    assert_eq!(effect(&denied), pb::Effect::Deny);
    assert_eq!(denied.reasons, ["Only humans may delete customers", "estimated cost exceeds the cost limit"]);

    // Third email in the window: the limit denies, naming itself.
    let limited = client.evaluate(request("agent-1", 0.9, "send_email", 1.0)).await.unwrap().into_inner();
    assert_eq!(effect(&limited), pb::Effect::Deny);
    assert_eq!(limited.matched_rules, ["email-rate"]);

    // Shadow rules are reported, never enforced.
    let mut refund = request("agent-1", 0.9, "issue_refund", 10.0);
    refund.action.as_mut().unwrap().params = Some(prost_types::Struct {
        fields: [(
            "amount".to_string(),
            prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(150.0)) },
        )]
        .into(),
    });
    let shadowed = client.evaluate(refund).await.unwrap().into_inner();
    assert_eq!(effect(&shadowed), pb::Effect::Allow);
    assert_eq!(shadowed.shadow_rules, ["new-refund-rule"]);

    // Time is taken from the request when given.
    let mut at_night = request("agent-1", 0.9, "noop", 0.0);
    at_night.time = Some(prost_types::Timestamp { seconds: 1_781_500_000, nanos: 0 });
    assert_eq!(effect(&client.evaluate(at_night).await.unwrap().into_inner()), pb::Effect::Allow);
    engine.shutdown().await;
}

fn check_invalid(status: tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let error = WardenError::from_status(&status);
    assert!(!error.retryable());
    let fields: Vec<&str> = error.violations.iter().map(|v| v.field.as_str()).collect();
    assert!(fields.contains(&field), "expected a violation on {field}, got {fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let sandbox = Sandbox::new(&[("base.yaml", BASE)]);
    let engine = sandbox.start().await;
    let mut client = policy_client(&engine).await;
    let cases: Vec<(pb::EvaluateRequest, &str)> = vec![
        (request("", 0.9, "send_email", 1.0), "agent.id"),
        (request("a", 0.9, "", 1.0), "action.type"),
        (request("a", 0.9, "send_email", -1.0), "action.estimated_cost"),
        (request("a", 0.9, "send_email", f64::NAN), "action.estimated_cost"),
        (request("a", 0.9, "send_email", f64::INFINITY), "action.estimated_cost"),
        (request("a", 1.5, "send_email", 1.0), "agent.confidence"),
        (request("a", -0.1, "send_email", 1.0), "agent.confidence"),
        (request(&"x".repeat(10_000), 0.9, "send_email", 1.0), "agent.id"),
        (pb::EvaluateRequest { agent: None, ..request("a", 0.9, "x", 0.0) }, "agent"),
        (pb::EvaluateRequest { action: None, ..request("a", 0.9, "x", 0.0) }, "action"),
        (
            pb::EvaluateRequest {
                time: Some(prost_types::Timestamp { seconds: 0, nanos: -5 }),
                ..request("a", 0.9, "x", 0.0)
            },
            "time",
        ),
    ];
    for (bad, field) in cases {
        check_invalid(client.evaluate(bad).await.unwrap_err(), field);
    }
    let mut huge = request("a", 0.9, "x", 0.0);
    huge.action.as_mut().unwrap().params = Some(prost_types::Struct {
        fields: [(
            "blob".to_string(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue("x".repeat(100_000))) },
        )]
        .into(),
    });
    check_invalid(client.evaluate(huge).await.unwrap_err(), "action.params");
    let mut roles = request("a", 0.9, "x", 0.0);
    roles.agent.as_mut().unwrap().roles = vec![String::new()];
    check_invalid(client.evaluate(roles).await.unwrap_err(), "agent.roles[0]");
    // The server is still healthy after all of that.
    assert_eq!(effect(&client.evaluate(request("a", 0.9, "x", 0.0)).await.unwrap().into_inner()), pb::Effect::Allow);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let sandbox = Sandbox::new(&[("base.yaml", BASE)]);
    let engine = sandbox.start().await;
    let channel = channel(&engine.url()).await;
    let mut health = HealthClient::new(channel.clone());
    let overall = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(overall.status, ServingStatus::Serving as i32);
    let policy = health
        .check(HealthCheckRequest { service: "warden.policy.v1.PolicyService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policy.status, ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let requests = tokio_stream::iter(vec![ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]);
    let mut responses = reflection.server_reflection_info(requests).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"warden.policy.v1.PolicyService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_last_good_set_and_reports_errors() {
    let sandbox = Sandbox::new(&[("base.yaml", BASE)]);
    let mut config = sandbox.config();
    config.watch_policies = false;
    let engine = warden_tests::start(config).await;
    let mut client = policy_client(&engine).await;
    let first = client.get_policies(pb::GetPoliciesRequest {}).await.unwrap().into_inner();
    assert_eq!(first.rules.len(), 5);
    assert_eq!(first.limits.len(), 1);

    sandbox.write(
        "extra.yaml",
        "rules:\n  - name: no-email\n    actions: [send_email]\n    effect: deny\n    reason: email is off\n",
    );
    let reloaded = client.reload_policies(pb::ReloadPoliciesRequest {}).await.unwrap().into_inner();
    assert!(reloaded.reloaded);
    assert_ne!(reloaded.policy_version, first.policy_version);
    let denied = client.evaluate(request("a", 0.9, "send_email", 0.0)).await.unwrap().into_inner();
    assert_eq!(denied.reasons, ["email is off"]);
    assert_eq!(denied.policy_version, reloaded.policy_version);

    sandbox.write("broken.yaml", "rules:\n  - name: broken\n    when: \"agent.nope\"\n    effect: deny\n");
    let rejected = client.reload_policies(pb::ReloadPoliciesRequest {}).await.unwrap().into_inner();
    assert!(!rejected.reloaded);
    assert_eq!(rejected.policy_version, reloaded.policy_version);
    assert_eq!(rejected.errors.len(), 1);
    let error = &rejected.errors[0];
    assert_eq!((error.file.as_str(), error.line, error.rule.as_str()), ("broken.yaml", 2, "broken"));
    // The last good set still decides, and GetPolicies says the reload failed.
    let still = client.evaluate(request("a", 0.9, "send_email", 0.0)).await.unwrap().into_inner();
    assert_eq!(still.reasons, ["email is off"]);
    let status = client.get_policies(pb::GetPoliciesRequest {}).await.unwrap().into_inner();
    assert_eq!(status.last_reload_errors.len(), 1);
    assert!(status.last_reload_attempt.is_some());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_sources_without_activating_them() {
    let sandbox = Sandbox::new(&[("base.yaml", BASE)]);
    let engine = sandbox.start().await;
    let mut client = policy_client(&engine).await;
    let response = client
        .validate_policies(pb::ValidatePoliciesRequest {
            sources: vec![
                pb::PolicySource { file: "ok.yaml".into(), content: "rules:\n  - name: a\n    effect: allow\n".into() },
                pb::PolicySource {
                    file: "bad.yaml".into(),
                    content: "rules:\n  - name: b\n    effect: deny\n    when: \"agent.confidence * 2 > 1.0\"\n".into(),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!response.valid);
    assert_eq!(response.errors.len(), 1);
    assert_eq!(
        (response.errors[0].file.as_str(), response.errors[0].line, response.errors[0].rule.as_str()),
        ("bad.yaml", 2, "b")
    );
    assert!(response.errors[0].message.contains("no matching overload for '*' with double and int"));
    let active = client.get_policies(pb::GetPoliciesRequest {}).await.unwrap().into_inner();
    assert_eq!(active.rules.len(), 5, "validation must not activate anything");
    let empty = client.validate_policies(pb::ValidatePoliciesRequest { sources: vec![] }).await.unwrap_err();
    check_invalid(empty, "sources");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_reload_automatically() {
    let sandbox = Sandbox::new(&[("base.yaml", BASE)]);
    let engine = sandbox.start().await;
    let mut client = policy_client(&engine).await;
    sandbox.write("base.yaml", &BASE.replace("agent confidence is low", "confidence too low"));
    let reasons = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let response = client.evaluate(request("a", 0.5, "x", 0.0)).await.unwrap().into_inner();
            (response.reasons == ["confidence too low"]).then_some(response.reasons)
        }
    })
    .await;
    assert_eq!(reasons, ["confidence too low"]);
    let status = client.get_policies(pb::GetPoliciesRequest {}).await.unwrap().into_inner();
    assert!(status.last_reload_errors.is_empty());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_swap_atomically_under_load() {
    // Two versions that disagree on every field: a response mixing them
    // would show a torn swap.
    let version_a = "rules:\n  - name: rule-a\n    effect: allow\n    reason: from-a\n";
    let version_b = "rules:\n  - name: rule-b\n    effect: require_approval\n    reason: from-b\n";
    let sandbox = Sandbox::new(&[("p.yaml", version_a)]);
    let mut config = sandbox.config();
    config.watch_policies = false;
    let engine = warden_tests::start(config).await;
    let client = policy_client(&engine).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let mut client = client.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut seen = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let response =
                    client.evaluate(request(&format!("w{worker}"), 0.9, "x", 0.0)).await.unwrap().into_inner();
                match (effect(&response), response.matched_rules.as_slice(), response.reasons.as_slice()) {
                    (pb::Effect::Allow, [rule], [reason]) if rule == "rule-a" && reason == "from-a" => seen.0 += 1,
                    (pb::Effect::RequireApproval, [rule], [reason]) if rule == "rule-b" && reason == "from-b" => {
                        seen.1 += 1
                    }
                    _ => panic!("torn decision: {response:?}"),
                }
            }
            seen
        }));
    }
    let mut reload_client = client.clone();
    for round in 0..20 {
        sandbox.write("p.yaml", if round % 2 == 0 { version_b } else { version_a });
        assert!(reload_client.reload_policies(pb::ReloadPoliciesRequest {}).await.unwrap().into_inner().reloaded);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut totals = (0, 0);
    for worker in workers {
        let seen = worker.await.unwrap();
        totals = (totals.0 + seen.0, totals.1 + seen.1);
    }
    assert!(totals.0 > 0 && totals.1 > 0, "both versions should have answered: {totals:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switches_are_durable_across_restarts() {
    let sandbox = Sandbox::new(&[("base.yaml", BASE)]);
    let engine = sandbox.start().await;
    let mut client = policy_client(&engine).await;
    let missing_reason = client
        .set_kill_switch(pb::SetKillSwitchRequest { agent_id: "agent-1".into(), engaged: true, reason: String::new() })
        .await
        .unwrap_err();
    check_invalid(missing_reason, "reason");
    client
        .set_kill_switch(pb::SetKillSwitchRequest {
            agent_id: "agent-1".into(),
            engaged: true,
            reason: "refund loop".into(),
        })
        .await
        .unwrap();
    let denied = client.evaluate(request("agent-1", 0.9, "x", 0.0)).await.unwrap().into_inner();
    assert_eq!(effect(&denied), pb::Effect::Deny);
    assert_eq!(denied.reasons, ["kill switch engaged: refund loop"]);
    assert_eq!(
        effect(&client.evaluate(request("agent-2", 0.9, "x", 0.0)).await.unwrap().into_inner()),
        pb::Effect::Allow
    );
    engine.shutdown().await;

    // A new process on the same data directory.
    let engine = sandbox.start().await;
    let mut client = policy_client(&engine).await;
    let denied = client.evaluate(request("agent-1", 0.9, "x", 0.0)).await.unwrap().into_inner();
    assert_eq!(denied.reasons, ["kill switch engaged: refund loop"]);
    let listed =
        client.get_kill_switch(pb::GetKillSwitchRequest { agent_id: String::new() }).await.unwrap().into_inner();
    assert_eq!(listed.kill_switches.len(), 1);
    client
        .set_kill_switch(pb::SetKillSwitchRequest {
            agent_id: String::new(),
            engaged: true,
            reason: "incident 9".into(),
        })
        .await
        .unwrap();
    let everyone = client.evaluate(request("agent-2", 0.9, "x", 0.0)).await.unwrap().into_inner();
    assert_eq!(everyone.reasons, ["kill switch engaged: incident 9"]);
    for agent_id in ["", "agent-1"] {
        client
            .set_kill_switch(pb::SetKillSwitchRequest {
                agent_id: agent_id.into(),
                engaged: false,
                reason: String::new(),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        effect(&client.evaluate(request("agent-1", 0.9, "x", 0.0)).await.unwrap().into_inner()),
        pb::Effect::Allow
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_kill_switches_through_postgres() {
    let Some(url) = warden_store::testing::postgres_url().await else {
        return;
    };
    let sandbox = Sandbox::new(&[("base.yaml", BASE)]);
    let mut config = sandbox.config();
    config.database_url = url;
    config.kill_switch_refresh = Duration::from_millis(100);
    let first = warden_tests::start(config.clone()).await;
    let second = warden_tests::start(config).await;
    let mut a = policy_client(&first).await;
    let b = policy_client(&second).await;
    a.set_kill_switch(pb::SetKillSwitchRequest { agent_id: "agent-1".into(), engaged: true, reason: "stop".into() })
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || {
        let mut b = b.clone();
        async move {
            let response = b.evaluate(request("agent-1", 0.9, "x", 0.0)).await.unwrap().into_inner();
            (effect(&response) == pb::Effect::Deny).then_some(())
        }
    })
    .await;
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_limits_through_redis() {
    let Some(redis) = warden_store::testing::external_url("WARDEN_TEST_REDIS_URL", "Redis limit tests") else {
        return;
    };
    // A unique limit name keeps runs apart in a shared Redis.
    let name = format!("shared-{}", uuid::Uuid::now_v7().simple());
    let policy = format!(
        "rules:\n  - name: ok\n    effect: allow\nlimits:\n  - name: {name}\n    per: global\n    max_requests: 3\n    window: 1h\n"
    );
    let sandbox = Sandbox::new(&[("p.yaml", &policy)]);
    let mut config = sandbox.config();
    config.redis_url = redis;
    let first = warden_tests::start(config.clone()).await;
    let second = warden_tests::start(config).await;
    let mut a = policy_client(&first).await;
    let mut b = policy_client(&second).await;
    let mut effects = Vec::new();
    for i in 0..5 {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        effects.push(effect(&client.evaluate(request("bot", 0.9, "x", 0.0)).await.unwrap().into_inner()));
    }
    use pb::Effect::{Allow, Deny};
    assert_eq!(effects, [Allow, Allow, Allow, Deny, Deny]);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_stop_the_engine_from_starting() {
    let sandbox = Sandbox::new(&[("bad.yaml", "rules:\n  - name: x\n    effect: allow\n    when: \"nope\"\n")]);
    let error = warden_policy_engine::PolicyEngine::start(sandbox.config()).await.unwrap_err().to_string();
    assert!(error.contains("bad.yaml:2: rule 'x': invalid condition: undeclared reference to 'nope'"), "{error}");
}

const CEL_EXTENSIONS: &str = r#"
rules:
  - name: internal-network-only
    actions: ["call_api"]
    when: "!cidr('10.0.0.0/8').containsIP(action.params.?source_ip.orValue('0.0.0.0'))"
    effect: deny
    reason: "calls must come from the internal network"
  - name: big-batches
    actions: ["call_api"]
    when: "action.params.?items.orValue([]).transformList(i, x, x.size() > 3, x).size() > 1"
    effect: require_approval
  - name: rest
    effect: allow
"#;

fn with_params(mut request: pb::EvaluateRequest, fields: &[(&str, prost_types::Value)]) -> pb::EvaluateRequest {
    request.action.as_mut().unwrap().params =
        Some(prost_types::Struct { fields: fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() });
    request
}

fn text(s: &str) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(s.into())) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_use_the_cel_extensions_and_costly_ones_are_refused() {
    let sandbox = Sandbox::new(&[("cel.yaml", CEL_EXTENSIONS)]);
    let engine = sandbox.start().await;
    let mut client = policy_client(&engine).await;
    let call = |fields: &[(&str, prost_types::Value)]| with_params(request("agent-1", 0.9, "call_api", 1.0), fields);

    let inside = client.evaluate(call(&[("source_ip", text("10.1.2.3"))])).await.unwrap().into_inner();
    assert_eq!(effect(&inside), pb::Effect::Allow, "{inside:?}");
    let outside = client.evaluate(call(&[("source_ip", text("192.168.1.1"))])).await.unwrap().into_inner();
    assert_eq!(outside.reasons, ["calls must come from the internal network"]);
    // Absent: the optional's default (0.0.0.0) is outside, so deny.
    let absent = client.evaluate(call(&[])).await.unwrap().into_inner();
    assert_eq!(effect(&absent), pb::Effect::Deny);
    // Not an address: a run-time error, which denies and says why.
    let garbage = client.evaluate(call(&[("source_ip", text("not-an-ip"))])).await.unwrap().into_inner();
    assert_eq!(effect(&garbage), pb::Effect::Deny);
    assert!(garbage.reasons[0].contains("parse error"), "{:?}", garbage.reasons);
    let items = prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(prost_types::ListValue {
            values: vec![text("alpha"), text("ab"), text("gamma")],
        })),
    };
    let batch = client.evaluate(call(&[("source_ip", text("10.0.0.1")), ("items", items)])).await.unwrap().into_inner();
    assert_eq!(effect(&batch), pb::Effect::RequireApproval, "{batch:?}");

    // A condition quadratic in the request is refused before it can run.
    let response = client
        .validate_policies(pb::ValidatePoliciesRequest {
            sources: vec![pb::PolicySource {
                file: "costly.yaml".into(),
                content: "rules:\n  - name: pairs\n    effect: deny\n    when: \"action.params.ids.exists(a, action.params.ids.exists(b, a != b && a == b))\"\n".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!response.valid);
    let error = &response.errors[0];
    assert_eq!((error.file.as_str(), error.line, error.rule.as_str()), ("costly.yaml", 2, "pairs"));
    assert!(error.message.contains("the limit is 1000000"), "{}", error.message);
    engine.shutdown().await;
}
