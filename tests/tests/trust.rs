//! An agent's request is untrusted input: through the real services with
//! authentication on, an agent proves who it is and nothing else it says
//! about itself decides an outcome. Its roles, labels and name come from
//! the agent registry, the time from the engine's clock, and a spend
//! limit's cost from the action.

use std::time::Duration;

use tonic::Code;
use warden_audit::AuditServer;
use warden_auth::Kind;
use warden_errors::WardenError;
use warden_policy_engine::PolicyEngine;
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_proto::policy::v1 as pb;
use warden_proto::policy::v1::policy_service_client::PolicyServiceClient;
use warden_tests::identity::{self, Keys, bearer};
use warden_tests::{Sandbox, channel, eventually};

const POLICIES: &str = r#"
agents:
  - id: support-bot
    name: Support bot
    owner: support-team
    roles: [support]
    labels: { team: support }
rules:
  - name: finance-refunds
    actions: [issue_refund]
    agents: ["role:finance"]
    effect: allow
  - name: support-refunds
    actions: [issue_refund]
    agents: ["role:support"]
    when: "action.params.amount <= 1000.0"
    effect: allow
  - name: admin-purge
    actions: ["purge_*"]
    agents: ["role:admin"]
    effect: allow
  - name: support-email
    actions: [send_email]
    when: "agent.labels.team == 'support' && 'support' in agent.roles"
    effect: allow
  - name: last-century-only
    actions: [archive]
    when: "context.time.getFullYear() < 2000"
    effect: allow
  - name: this-millennium
    actions: [report]
    when: "context.time.getFullYear() >= 2000"
    effect: allow
limits:
  - name: refund-spend
    actions: [issue_refund]
    per: agent
    max_cost: 1000
    cost: "action.params.amount"
    window: 24h
"#;

struct Stack {
    _sandbox: Sandbox,
    keys: Keys,
    audit: AuditServer,
    engine: PolicyEngine,
}

/// Audit and policy engine with auth on; besides one key per role, an
/// orchestrator trusted to assert its agents' attributes and a replay
/// principal granted `assert_time`.
async fn stack() -> Stack {
    let sandbox = Sandbox::new(&[("policies.yaml", POLICIES)]);
    let mut keys = identity::keys(sandbox.data.path());
    keys.add("orchestrator", "orchestrator", Kind::Service, &["agent", "assert_agent_attributes"], &["support-*"]);
    keys.add("replay", "replayer", Kind::Human, &["replay"], &["*"]);
    keys.save();
    let audit = keys.audit(&sandbox.data.path().join("audit")).await;
    let mut config = sandbox.secured_config(&keys, &audit.url(), "");
    config.auth.grants.insert("assert_time".into(), vec!["replay".into()]);
    config.auth.grants.insert("warden.policy.v1.PolicyService/Evaluate".into(), vec!["replay".into()]);
    let engine = PolicyEngine::start(config).await.unwrap();
    Stack { _sandbox: sandbox, keys, audit, engine }
}

fn ask(agent: &str, roles: &[&str], action: &str, amount: f64) -> pb::EvaluateRequest {
    let params = prost_types::Struct {
        fields: [(
            "amount".to_string(),
            prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(amount)) },
        )]
        .into(),
    };
    pb::EvaluateRequest {
        agent: Some(pb::Agent {
            id: agent.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            confidence: 0.9,
            ..Default::default()
        }),
        action: Some(pb::Action { r#type: action.into(), params: Some(params), ..Default::default() }),
        ..Default::default()
    }
}

impl Stack {
    async fn evaluate(&self, token: &str, request: pb::EvaluateRequest) -> Result<pb::EvaluateResponse, tonic::Status> {
        let mut client = PolicyServiceClient::new(channel(&self.engine.url()).await);
        client.evaluate(bearer(tonic::Request::new(request), self.keys.token(token))).await.map(|r| r.into_inner())
    }

    async fn effect(&self, token: &str, request: pb::EvaluateRequest) -> pb::Effect {
        let response = self.evaluate(token, request).await.unwrap_or_else(|status| panic!("{status:?}"));
        response.effect()
    }

    /// The audit log's events of one type, once `wanted` of them arrived.
    async fn events(&self, event_type: &str, wanted: usize) -> Vec<audit::AuditEvent> {
        let client = AuditServiceClient::new(channel(&self.audit.url()).await);
        let token = self.keys.token("auditor").to_owned();
        eventually(Duration::from_secs(10), || {
            let (mut client, token) = (client.clone(), token.clone());
            async move {
                let query = audit::QueryRequest { event_types: vec![event_type.into()], ..Default::default() };
                let records = client.query(bearer(tonic::Request::new(query), &token)).await.ok()?.into_inner().records;
                let events: Vec<_> = records.into_iter().filter_map(|r| r.event).collect();
                (events.len() >= wanted).then_some(events)
            }
        })
        .await
    }

    async fn stop(self) {
        self.engine.shutdown().await;
        self.audit.shutdown().await;
    }
}

fn field<'a>(payload: &'a prost_types::Struct, name: &str) -> &'a prost_types::value::Kind {
    payload.fields[name].kind.as_ref().unwrap()
}

fn text(kind: &prost_types::value::Kind) -> &str {
    match kind {
        prost_types::value::Kind::StringValue(s) => s,
        other => panic!("not a string: {other:?}"),
    }
}

#[tokio::test]
async fn claimed_roles_and_labels_are_refused_and_registered_ones_apply() {
    let stack = stack().await;
    // A role the registry does not give the agent: refused, naming it.
    for role in ["finance", "admin"] {
        let action = if role == "finance" { "issue_refund" } else { "purge_customers" };
        let refused = stack.evaluate("agent", ask("support-bot", &[role], action, 10.0)).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains(&format!("agent support-bot does not hold role {role}")), "{refused:?}");
    }
    // Held roles among them change nothing: still refused.
    let mixed = stack.evaluate("agent", ask("support-bot", &["support", "finance"], "issue_refund", 10.0)).await;
    assert_eq!(mixed.unwrap_err().code(), Code::PermissionDenied);
    // A label or a name it does not hold: refused too.
    let mut labelled = ask("support-bot", &[], "send_email", 0.0);
    labelled.agent.as_mut().unwrap().labels.insert("team".into(), "finance".into());
    let refused = stack.evaluate("agent", labelled).await.unwrap_err();
    assert!(refused.message().contains("does not hold label team=finance"), "{refused:?}");
    let mut named = ask("support-bot", &[], "send_email", 0.0);
    named.agent.as_mut().unwrap().name = "Finance bot".into();
    assert_eq!(stack.evaluate("agent", named).await.unwrap_err().code(), Code::PermissionDenied);

    // Naming none, or naming held ones, the registered roles and labels apply.
    assert_eq!(stack.effect("agent", ask("support-bot", &[], "send_email", 0.0)).await, pb::Effect::Allow);
    assert_eq!(stack.effect("agent", ask("support-bot", &["support"], "issue_refund", 10.0)).await, pb::Effect::Allow);
    // Without the finance role no rule allows a large refund.
    assert_eq!(stack.effect("agent", ask("support-bot", &[], "issue_refund", 2000.0)).await, pb::Effect::Deny);

    // An orchestrator trusted to assert attributes may set them.
    assert_eq!(
        stack.effect("orchestrator", ask("support-bot", &["finance"], "issue_refund", 10.0)).await,
        pb::Effect::Allow
    );

    // Each refusal is an auth_denied event naming the agent and the claim.
    let denials = stack.events("auth_denied", 4).await;
    let reasons: Vec<&str> = denials.iter().map(|e| text(field(e.payload.as_ref().unwrap(), "reason"))).collect();
    assert!(reasons.iter().any(|r| r.contains("does not hold role finance")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("does not hold label team=finance")), "{reasons:?}");
    assert!(denials.iter().all(|e| e.agent_id == "support-bot"), "{denials:?}");

    // Decisions record the attributes the engine used: the registry's.
    let decisions = stack.events("policy_evaluation", 4).await;
    let email = decisions
        .iter()
        .find(|e| text(field(e.payload.as_ref().unwrap(), "action")) == "send_email")
        .expect("the email decision");
    let prost_types::value::Kind::StructValue(agent) = field(email.payload.as_ref().unwrap(), "agent") else {
        panic!("agent is a struct")
    };
    assert_eq!(text(field(agent, "name")), "Support bot");
    let prost_types::value::Kind::ListValue(roles) = field(agent, "roles") else { panic!("roles is a list") };
    assert_eq!(roles.values.len(), 1);
    assert_eq!(text(roles.values[0].kind.as_ref().unwrap()), "support");
    let prost_types::value::Kind::StructValue(labels) = field(agent, "labels") else { panic!("labels") };
    assert_eq!(text(field(labels, "team")), "support");
    stack.stop().await;
}

#[tokio::test]
async fn the_time_is_the_engines_unless_the_caller_may_assert_it() {
    let stack = stack().await;
    let at = |request: &mut pb::EvaluateRequest, time: chrono::DateTime<chrono::Utc>| {
        request.time = Some(prost_types::Timestamp { seconds: time.timestamp(), nanos: 0 });
    };
    let now = chrono::Utc::now();
    // An agent claiming another time, far or hours away, is refused.
    for claimed in [
        chrono::DateTime::parse_from_rfc3339("1999-06-15T12:00:00Z").unwrap().to_utc(),
        now + chrono::Duration::hours(10),
        now - chrono::Duration::minutes(1),
    ] {
        let mut request = ask("support-bot", &[], "archive", 0.0);
        at(&mut request, claimed);
        let refused = stack.evaluate("agent", request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        let error = WardenError::from_status(&refused);
        assert_eq!(error.violations[0].field, "time");
        assert!(error.violations[0].description.contains("max_clock_skew"), "{error:?}");
    }
    // Within the skew it is accepted, and the engine's clock decides: the
    // decision is recorded at the engine's time, not at the claimed one.
    let claimed = now + chrono::Duration::seconds(3);
    let mut close = ask("support-bot", &[], "report", 0.0);
    close.correlation_id = "close-enough".into();
    at(&mut close, claimed);
    assert_eq!(stack.effect("agent", close).await, pb::Effect::Allow);
    // A principal granted assert_time (replay) may evaluate in 1999.
    let mut replayed = ask("support-bot", &[], "archive", 0.0);
    at(&mut replayed, chrono::DateTime::parse_from_rfc3339("1999-06-15T12:00:00Z").unwrap().to_utc());
    assert_eq!(stack.effect("replay", replayed).await, pb::Effect::Allow);
    // The year 50000 is refused to everyone, before any rule runs.
    for token in ["agent", "replay", "admin"] {
        let mut far = ask("support-bot", &[], "report", 0.0);
        far.time = Some(prost_types::Timestamp { seconds: 1_515_683_040_000, nanos: 0 });
        let refused = stack.evaluate(token, far).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{token}: {refused:?}");
        assert!(refused.message().contains("years 1 to 9999"), "{refused:?}");
    }
    let decisions = stack.events("policy_evaluation", 2).await;
    let recorded = decisions.iter().find(|e| e.correlation_id == "close-enough").expect("recorded");
    let recorded = recorded.time.as_ref().unwrap().seconds;
    assert!(recorded < claimed.timestamp() - 1, "recorded at {recorded}, the agent claimed {}", claimed.timestamp());
    stack.stop().await;
}

#[tokio::test]
async fn a_spend_limit_charges_the_action_not_the_agents_estimate() {
    let stack = stack().await;
    let refund = |amount: f64, estimate: f64| {
        let mut request = ask("support-bot", &[], "issue_refund", amount);
        request.action.as_mut().unwrap().estimated_cost = estimate;
        request
    };
    // 5,000 with an estimate of 0, where a rule allows it (the orchestrator
    // asserts the finance role): the limit counts 5,000, over its 1,000.
    let mut asserted = refund(5000.0, 0.0);
    asserted.agent.as_mut().unwrap().roles = vec!["finance".into()];
    let response = stack.evaluate("orchestrator", asserted.clone()).await.unwrap();
    assert_eq!(response.effect(), pb::Effect::Deny, "{response:?}");
    assert_eq!(response.matched_rules, ["refund-spend"]);
    // Two refunds of 600 estimated at 0: the second is over the budget.
    let first = stack.evaluate("agent", refund(600.0, 0.0)).await.unwrap();
    assert_eq!(first.effect(), pb::Effect::Allow, "{first:?}");
    let second = stack.evaluate("agent", refund(600.0, 0.0)).await.unwrap();
    assert_eq!(second.effect(), pb::Effect::Deny, "{second:?}");
    assert_eq!(second.matched_rules, ["refund-spend"]);
    // A cost the expression cannot compute (a string, a negative amount)
    // denies, naming the limit.
    for amount in [prost_types::value::Kind::StringValue("0".into()), prost_types::value::Kind::NumberValue(-5000.0)] {
        let mut hostile = asserted.clone();
        hostile
            .action
            .as_mut()
            .unwrap()
            .params
            .as_mut()
            .unwrap()
            .fields
            .insert("amount".into(), prost_types::Value { kind: Some(amount) });
        let refused = stack.evaluate("orchestrator", hostile).await.unwrap();
        assert_eq!(refused.effect(), pb::Effect::Deny);
        assert!(refused.reasons[0].contains("limit 'refund-spend' cannot compute the cost"), "{refused:?}");
    }
    stack.stop().await;
}
