//! One trace across the services: the agent's SDK call, the policy
//! engine's Evaluate, the approval request it opens, the decision log's
//! shipping and the audit append, checked span by span with an in-memory
//! exporter.

use std::time::Duration;

use opentelemetry_sdk::trace::SpanData;
use tracing::Instrument;
use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_audit::AuditServer;
use warden_client::{ClientConfig, Effect, PolicyClient, Request};
use warden_policy_engine::{PolicyEngine, PolicyEngineConfig};
use warden_tests::{Sandbox, eventually};

fn method(span: &SpanData) -> String {
    span.attributes.iter().find(|kv| kv.key.as_str() == "rpc.method").map(|kv| kv.value.to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_agent_the_engine_the_approval_and_the_audit_append() {
    let (exporter, provider) = warden_tests::capture_spans();

    let sandbox = Sandbox::new(&[(
        "p.yaml",
        "rules:\n  - name: gated\n    actions: [gated]\n    effect: require_approval\n  - name: rest\n    effect: allow\n",
    )]);
    let audit =
        AuditServer::start(warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"))).await.unwrap();
    let approval =
        ApprovalServer::start(ApprovalConfig::for_tests(sandbox.data.path().join("approval"))).await.unwrap();
    let mut config = PolicyEngineConfig::for_tests(sandbox.policies_dir(), sandbox.data.path());
    config.audit_url = audit.url();
    config.approval_url = approval.url();
    let engine = PolicyEngine::start(config).await.unwrap();

    let sdk = PolicyClient::new(ClientConfig::new(engine.url())).unwrap();
    let decision = sdk
        .evaluate(Request::new("support-bot", "gated").correlation_id("traced"))
        .instrument(tracing::info_span!("agent_task"))
        .await
        .unwrap();
    assert_eq!(decision.effect, Effect::RequireApproval);
    // The decision reaches the audit log through the outbox.
    let log = audit.log.clone();
    eventually(Duration::from_secs(10), || {
        let log = log.clone();
        async move { (log.checkpoint().await.ok()?.tree_size >= 1).then_some(()) }
    })
    .await;
    let _ = provider.force_flush();
    let spans = eventually(Duration::from_secs(10), || {
        let exporter = exporter.clone();
        let provider = provider.clone();
        async move {
            let _ = provider.force_flush();
            let spans = exporter.get_finished_spans().ok()?;
            spans.iter().any(|s| method(s) == "/warden.audit.v1.AuditService/Append").then_some(spans)
        }
    })
    .await;

    let root = spans.iter().find(|s| s.name == "agent_task").expect("the agent's span");
    let trace = root.span_context.trace_id();
    let child_of = |parent: &SpanData, pick: &dyn Fn(&SpanData) -> bool, what: &str| -> SpanData {
        spans
            .iter()
            .find(|s| {
                s.span_context.trace_id() == trace && s.parent_span_id == parent.span_context.span_id() && pick(s)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {what} under {:?} in trace {trace}: {:#?}",
                    parent.name,
                    spans.iter().map(|s| (&s.name, method(s), s.parent_span_id)).collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let evaluate = child_of(root, &|s| method(s) == "/warden.policy.v1.PolicyService/Evaluate", "Evaluate");
    child_of(&evaluate, &|s| method(s) == "/warden.approval.v1.ApprovalService/CreateApproval", "CreateApproval");
    let ship = child_of(&evaluate, &|s| s.name == "decision_log_ship", "decision log shipping");
    child_of(&ship, &|s| method(s) == "/warden.audit.v1.AuditService/Append", "audit Append");

    engine.shutdown().await;
    approval.shutdown().await;
    audit.shutdown().await;
}
