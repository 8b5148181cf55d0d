//! The Python example agent (`examples/python/agent.py`, on the Python
//! client `clients/python`, which `.ci/run` installs) against real
//! services: it is asked to refund 150, waits while a manager approves,
//! acts, records the outcome, and prints its audit trail.

use std::path::Path;
use std::time::Duration;

use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_audit::AuditServer;
use warden_policy_engine::PolicyEngine;
use warden_proto::approval::v1 as pb;
use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use warden_tests::identity::{self, bearer};
use warden_tests::{Sandbox, channel, eventually};

const POLICY: &str = r#"
rules:
  - name: refunds-over-100
    actions: ["issue_refund"]
    when: "action.params.amount > 100.0"
    effect: require_approval
    reason: "refunds over 100 need a manager"
  - name: agents-may-work
    effect: allow
"#;

#[tokio::test]
async fn the_python_agent_waits_for_a_manager_then_acts_and_records() {
    let Some(python) = warden_tests::python::interpreter() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    let sandbox = Sandbox::new(&[("refunds.yaml", POLICY)]);
    let keys = identity::keys(sandbox.data.path());
    let mut audit_config = warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"));
    audit_config.auth = keys.auth();
    let audit = AuditServer::start(audit_config).await.unwrap();
    let mut approval_config = ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    approval_config.auth = keys.auth();
    approval_config.audit_url = audit.url();
    approval_config.outbound.credential = keys.token("service").into();
    approval_config.outbox_interval = Duration::from_millis(20);
    approval_config.watch_poll = Duration::from_millis(50);
    let approval = ApprovalServer::start(approval_config).await.unwrap();
    let config = sandbox.secured_config(&keys, &audit.url(), &approval.url());
    let engine = PolicyEngine::start(config).await.unwrap();

    let mut agent = tokio::process::Command::new(&python);
    agent
        .arg(root.join("examples/python/agent.py"))
        .args(["--amount", "150", "--wait", "30", "--correlation-id", "ticket-982"])
        .env("WARDEN_API_KEY", keys.token("agent"))
        // The URL form, as wardenctl takes it: one meaning everywhere.
        .env("WARDEN_ADDR", format!("http://{}", engine.addr))
        .env("WARDEN_APPROVAL_ADDR", approval.addr.to_string())
        .env("WARDEN_AUDIT_ADDR", audit.addr.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let running = agent.spawn().unwrap();

    // The manager approves what the agent asked for, by its ticket, as the
    // book shows (`wardenctl approvals approve --correlation-id`).
    let manager = ApprovalServiceClient::new(channel(&approval.url()).await);
    let token = keys.token("approver").to_owned();
    eventually(Duration::from_secs(30), || {
        let (mut manager, token) = (manager.clone(), token.clone());
        async move {
            let list = pb::ListApprovalsRequest { reviewable_by_me: true, ..Default::default() };
            let pending = manager.list_approvals(bearer(tonic::Request::new(list), &token)).await.ok()?.into_inner();
            pending.approvals.into_iter().find(|a| a.correlation_id == "ticket-982").map(|_| ())
        }
    })
    .await;
    let approve = [
        "--approval-addr",
        &approval.url(),
        "--api-key",
        &token,
        "approvals",
        "approve",
        "--correlation-id",
        "ticket-982",
        "--comment",
        "refund ok",
    ];
    let (code, out, err) = warden_tests::wardenctl::run(approve.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 0, "{out}{err}");

    let output = tokio::time::timeout(Duration::from_secs(60), running.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("EFFECT_REQUIRE_APPROVAL") && stdout.contains("STATE_APPROVED"), "{stdout}");
    assert!(stdout.contains("EFFECT_ALLOW") && stdout.contains("refunding 150"), "{stdout}");
    assert!(stdout.contains("action_completed by support-bot"), "{stdout}");
    assert!(stdout.contains("policy_evaluation"), "{stdout}");
    // The whole approval is on the trail, the grant under the approver's name.
    assert!(stdout.contains("approval_requested by warden-approval"), "{stdout}");
    assert!(stdout.contains("approval_granted by approver"), "{stdout}");
    assert!(stdout.contains("approval_redeemed by support-bot"), "{stdout}");
    engine.shutdown().await;
    approval.shutdown().await;
    audit.shutdown().await;
}
