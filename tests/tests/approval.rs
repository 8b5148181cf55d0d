//! The seeds' approval flow across real services (policy engine, approval,
//! audit; authentication on): an agent asks to refund 150, approval is
//! required, a manager approves, the refund goes ahead once, and the audit
//! trail shows who approved.

use std::time::Duration;

use tonic::Code;
use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_audit::AuditServer;
use warden_client::{ApprovalClient, ApprovalOutcome, ClientConfig, Effect, PolicyClient, Request};
use warden_policy_engine::PolicyEngine;
use warden_proto::approval::v1 as pb;
use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_tests::identity::{self, Keys, bearer};
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

struct Stack {
    sandbox: Sandbox,
    keys: Keys,
    audit: AuditServer,
    approval: ApprovalServer,
    engine: PolicyEngine,
}

fn approval_config(stack_dir: &std::path::Path, keys: &Keys, audit_url: &str, listen: &str) -> ApprovalConfig {
    let mut config = ApprovalConfig::for_tests(stack_dir.join("approval"));
    config.listen = listen.into();
    config.auth = keys.auth();
    config.audit_url = audit_url.into();
    config.outbound.credential = keys.token("service").into();
    config.outbox_interval = Duration::from_millis(20);
    config.watch_poll = Duration::from_millis(50);
    config
}

async fn stack() -> Stack {
    let sandbox = Sandbox::new(&[("refunds.yaml", POLICY)]);
    let keys = identity::keys(sandbox.data.path());
    let mut audit_config = warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"));
    audit_config.auth = keys.auth();
    let audit = AuditServer::start(audit_config).await.unwrap();
    let approval =
        ApprovalServer::start(approval_config(sandbox.data.path(), &keys, &audit.url(), "127.0.0.1:0")).await.unwrap();
    let config = sandbox.secured_config(&keys, &audit.url(), &approval.url());
    let engine = PolicyEngine::start(config).await.unwrap();
    Stack { sandbox, keys, audit, approval, engine }
}

fn agent(stack: &Stack) -> PolicyClient {
    PolicyClient::new(ClientConfig::new(stack.engine.url()).api_key(stack.keys.token("agent"))).unwrap()
}

fn refund(amount: f64) -> Request {
    Request::new("support-bot", "issue_refund")
        .resource("order/1234")
        .param("amount", amount)
        .correlation_id("ticket-981")
}

async fn review(stack: &Stack, id: &str, who: &str, approve: bool) -> Result<pb::Approval, tonic::Status> {
    let mut client = ApprovalServiceClient::new(channel(&stack.approval.url()).await);
    let request = pb::ReviewRequest { id: id.into(), approve, comment: "checked the order".into() };
    client.review(bearer(tonic::Request::new(request), stack.keys.token(who))).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn a_manager_approves_a_refund_and_it_runs_once() {
    let stack = stack().await;
    let agent = agent(&stack);
    let asked = agent.evaluate(refund(150.0)).await.unwrap();
    assert_eq!(asked.effect, Effect::RequireApproval, "{asked:?}");
    let id = asked.approval_id.clone().expect("an approval request was opened");
    // Asking again while it is pending reuses it.
    assert_eq!(agent.evaluate(refund(150.0)).await.unwrap().approval_id.as_deref(), Some(id.as_str()));

    // The agent waits; the manager sees exactly the action and approves.
    let waiter =
        ApprovalClient::new(ClientConfig::new(stack.approval.url()).api_key(stack.keys.token("agent"))).unwrap();
    let wait = tokio::spawn({
        let (waiter, id) = (waiter.clone(), id.clone());
        async move { waiter.wait_for_approval(&id, Duration::from_secs(20)).await }
    });
    let mut reviewer = ApprovalServiceClient::new(channel(&stack.approval.url()).await);
    let pending = reviewer
        .list_approvals(bearer(
            tonic::Request::new(pb::ListApprovalsRequest { reviewable_by_me: true, ..Default::default() }),
            stack.keys.token("approver"),
        ))
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert_eq!(pending.len(), 1);
    let shown = pending[0].action.clone().unwrap();
    assert_eq!((shown.r#type.as_str(), shown.resource.as_str()), ("issue_refund", "order/1234"));
    assert_eq!(pending[0].reasons, ["refunds over 100 need a manager"]);
    let approved = review(&stack, &id, "approver", true).await.unwrap();
    assert_eq!(approved.state, pb::State::Approved as i32);
    let outcome = wait.await.unwrap().unwrap();
    assert!(matches!(outcome, ApprovalOutcome::Approved(_)), "{outcome:?}");

    // Approve then deny: the second review is refused, naming the state.
    let late = review(&stack, &id, "admin", false).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert_eq!(late.message(), "approval request is APPROVED");

    // The refund goes ahead once, and only with the reviewed params.
    let changed = agent.evaluate(refund(151.0).approval_id(&id)).await.unwrap();
    assert_eq!(changed.effect, Effect::Deny);
    assert!(changed.reasons[0].ends_with("approval was for a different action"), "{:?}", changed.reasons);
    let allowed = agent.evaluate(refund(150.0).approval_id(&id)).await.unwrap();
    assert_eq!(allowed.effect, Effect::Allow, "{allowed:?}");
    assert_eq!(allowed.reasons, [format!("approved by approver (approval {id})")]);
    let again = agent.evaluate(refund(150.0).approval_id(&id)).await.unwrap();
    assert_eq!(again.effect, Effect::Deny);
    assert!(again.reasons[0].ends_with("approval already used"), "{:?}", again.reasons);

    // The audit trail, by correlation id, shows every step and the approver.
    let auditor = AuditServiceClient::new(channel(&stack.audit.url()).await);
    let token = stack.keys.token("auditor").to_owned();
    let records = eventually(Duration::from_secs(10), || {
        let (mut auditor, token) = (auditor.clone(), token.clone());
        async move {
            let query =
                audit::QueryRequest { correlation_id: "ticket-981".into(), page_size: 100, ..Default::default() };
            let records = auditor.query(bearer(tonic::Request::new(query), &token)).await.ok()?.into_inner().records;
            let types: Vec<String> = records.iter().map(|r| r.event.as_ref().unwrap().event_type.clone()).collect();
            // The decision log and the approval outbox ship independently:
            // wait for both.
            let decisions = types.iter().filter(|t| *t == "policy_evaluation").count();
            (["approval_requested", "approval_reviewed", "approval_granted", "approval_redeemed"]
                .iter()
                .all(|t| types.iter().any(|x| x == t))
                && decisions >= 5)
                .then_some(records)
        }
    })
    .await;
    let granted = records.iter().find_map(|r| r.event.clone().filter(|e| e.event_type == "approval_granted")).unwrap();
    assert_eq!(granted.actor, "approver");
    assert_eq!(granted.agent_id, "support-bot");
    let approvers = &granted.payload.unwrap().fields["approvers"];
    assert!(format!("{approvers:?}").contains("approver"));
    let decisions: Vec<_> =
        records.iter().filter_map(|r| r.event.clone().filter(|e| e.event_type == "policy_evaluation")).collect();
    assert_eq!(decisions.len(), 5, "every decision is in the trail too, once");
    // The allowing decision was recorded with the redemption, as the agent
    // was answered: its reason and its approvers.
    let allowing = decisions.iter().find(|e| Some(&e.event_id) == allowed.decision_id.as_ref()).unwrap();
    let fields = &allowing.payload.as_ref().unwrap().fields;
    let text = |key: &str| format!("{:?}", fields[key].kind);
    assert!(text("effect").contains("\"allow\""), "{}", text("effect"));
    assert!(text("reasons").contains(&format!("approved by approver (approval {id})")), "{}", text("reasons"));
    assert!(text("approvers").contains("\"approver\""), "{}", text("approvers"));
    assert_eq!(allowing.actor, "warden-policy-engine");
    stack.engine.shutdown().await;
    stack.approval.shutdown().await;
    stack.audit.shutdown().await;
}

#[tokio::test]
async fn one_approval_allows_one_of_ten_concurrent_calls() {
    let stack = stack().await;
    let agent = agent(&stack);
    let id = agent.evaluate(refund(500.0)).await.unwrap().approval_id.unwrap();
    review(&stack, &id, "approver", true).await.unwrap();
    let mut calls = Vec::new();
    for _ in 0..10 {
        let (agent, id) = (agent.clone(), id.clone());
        calls.push(tokio::spawn(async move { agent.evaluate(refund(500.0).approval_id(id)).await.unwrap().effect }));
    }
    let mut allowed = 0;
    for call in calls {
        if call.await.unwrap() == Effect::Allow {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 1);
    stack.engine.shutdown().await;
    stack.approval.shutdown().await;
    stack.audit.shutdown().await;
}

#[tokio::test]
async fn reviewers_are_checked_and_denials_stop_the_action() {
    let stack = stack().await;
    let agent = agent(&stack);
    let id = agent.evaluate(refund(120.0)).await.unwrap().approval_id.unwrap();
    // An agent cannot review (no role), nor see another agent's requests.
    let refused = review(&stack, &id, "agent", true).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let denied = review(&stack, &id, "approver", false).await.unwrap();
    assert_eq!(denied.state, pb::State::Denied as i32);
    let late = review(&stack, &id, "approver", true).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(late.message(), "approval request is DENIED");
    let decision = agent.evaluate(refund(120.0).approval_id(&id)).await.unwrap();
    assert_eq!(decision.effect, Effect::Deny);
    assert!(decision.reasons[0].contains("approval was denied"), "{:?}", decision.reasons);
    // Bad input names the field.
    let bad = review(&stack, "", "approver", true).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(warden_errors::WardenError::from_status(&bad).violations[0].field, "id");
    let mut client = ApprovalServiceClient::new(channel(&stack.approval.url()).await);
    let huge = pb::ListApprovalsRequest { page_size: 100_000, ..Default::default() };
    let bad = client.list_approvals(bearer(tonic::Request::new(huge), stack.keys.token("auditor"))).await.unwrap_err();
    assert_eq!(warden_errors::WardenError::from_status(&bad).violations[0].field, "page_size");

    // Paging: three more requests, listed two at a time, newest first.
    for amount in [200.0, 300.0, 400.0] {
        agent.evaluate(refund(amount)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = pb::ListApprovalsRequest { page_size: 2, page_token: token.clone(), ..Default::default() };
        let page = client
            .list_approvals(bearer(tonic::Request::new(page), stack.keys.token("auditor")))
            .await
            .unwrap()
            .into_inner();
        assert!(page.approvals.len() <= 2);
        seen.extend(page.approvals.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first: {seen:?}");
    // The seeds' metrics are exported.
    let metrics = warden_telemetry::render_metrics();
    assert!(metrics.contains(r#"approvals_total{approval_type="default",decision="denied"}"#), "{metrics}");
    assert!(metrics.contains("approval_wait_time_seconds_bucket"), "{metrics}");
    let unknown = review(&stack, "no-such-id", "approver", true).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    stack.engine.shutdown().await;
    stack.approval.shutdown().await;
    stack.audit.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_approval_service_means_deny() {
    let sandbox = Sandbox::new(&[("refunds.yaml", POLICY)]);
    let keys = identity::keys(sandbox.data.path());
    let config = sandbox.secured_config(&keys, "", "http://127.0.0.1:1");
    let engine = PolicyEngine::start(config).await.unwrap();
    let agent = PolicyClient::new(ClientConfig::new(engine.url()).api_key(keys.token("agent"))).unwrap();
    let decision = agent.evaluate(refund(150.0)).await.unwrap();
    assert_eq!(decision.effect, Effect::Deny);
    assert!(decision.reasons[0].contains("approval service is unavailable"), "{:?}", decision.reasons);
    let redeem = agent.evaluate(refund(150.0).approval_id("0199-anything")).await.unwrap();
    assert_eq!(redeem.effect, Effect::Deny);
    // Small refunds need no approval and are unaffected.
    assert_eq!(agent.evaluate(refund(50.0)).await.unwrap().effect, Effect::Allow);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_waiting_agent_survives_a_restart_of_the_approval_service() {
    let stack = stack().await;
    let agent = agent(&stack);
    let id = agent.evaluate(refund(150.0)).await.unwrap().approval_id.unwrap();
    let waiter =
        ApprovalClient::new(ClientConfig::new(stack.approval.url()).api_key(stack.keys.token("agent"))).unwrap();
    let wait = tokio::spawn({
        let id = id.clone();
        async move { waiter.wait_for_approval(&id, Duration::from_secs(30)).await }
    });
    let listen = stack.approval.addr.to_string();
    let audit_url = stack.audit.url();
    let Stack { sandbox, keys, audit, approval, engine } = stack;
    approval.shutdown().await;
    let approval =
        ApprovalServer::start(approval_config(sandbox.data.path(), &keys, &audit_url, &listen)).await.unwrap();
    let stack = Stack { sandbox, keys, audit, approval, engine };
    review(&stack, &id, "approver", true).await.unwrap();
    let outcome = wait.await.unwrap().unwrap();
    assert!(matches!(outcome, ApprovalOutcome::Approved(_)), "{outcome:?}");
    stack.engine.shutdown().await;
    stack.approval.shutdown().await;
    stack.audit.shutdown().await;
}

#[tokio::test]
async fn two_replicas_on_one_postgres_share_requests_and_watchers_see_reviews_made_elsewhere() {
    let Some(url) = warden_store::testing::postgres_url().await else { return };
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let mut config = ApprovalConfig::for_tests(sandbox.data.path().join(name));
        config.database_url = url.clone();
        config.auth = keys.auth();
        config.watch_poll = Duration::from_millis(50);
        replicas.push(ApprovalServer::start(config).await.unwrap());
    }
    let mut a = ApprovalServiceClient::new(channel(&replicas[0].url()).await);
    let create = pb::CreateApprovalRequest {
        agent_id: "support-bot".into(),
        action: Some(pb::Action { r#type: "send_email".into(), ..Default::default() }),
        ..Default::default()
    };
    let id = a
        .create_approval(bearer(tonic::Request::new(create.clone()), keys.token("service")))
        .await
        .unwrap()
        .into_inner()
        .id;
    // The other replica finds the same pending request.
    let mut b = ApprovalServiceClient::new(channel(&replicas[1].url()).await);
    let again =
        b.create_approval(bearer(tonic::Request::new(create), keys.token("service"))).await.unwrap().into_inner();
    assert_eq!(again.id, id);
    // An agent watching on replica a sees the review made through b.
    let waiter = ApprovalClient::new(ClientConfig::new(replicas[0].url()).api_key(keys.token("agent"))).unwrap();
    let wait = tokio::spawn({
        let id = id.clone();
        async move { waiter.wait_for_approval(&id, Duration::from_secs(20)).await }
    });
    let review = pb::ReviewRequest { id: id.clone(), approve: true, comment: String::new() };
    b.review(bearer(tonic::Request::new(review), keys.token("approver"))).await.unwrap();
    assert!(matches!(wait.await.unwrap().unwrap(), ApprovalOutcome::Approved(_)));
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn bad_create_and_redeem_requests_name_their_fields_and_write_nothing() {
    let stack = stack().await;
    let mut client = ApprovalServiceClient::new(channel(&stack.approval.url()).await);
    let service = stack.keys.token("service");
    let bad = pb::CreateApprovalRequest {
        agent_id: String::new(),
        action: Some(pb::Action { r#type: String::new(), estimated_cost: -1.0, ..Default::default() }),
        ..Default::default()
    };
    let status = client.create_approval(bearer(tonic::Request::new(bad), service)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> =
        warden_errors::WardenError::from_status(&status).violations.into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["agent_id", "action.type", "action.estimated_cost"]);
    let redeem =
        pb::RedeemRequest { id: String::new(), agent_id: "support-bot".into(), action: None, ..Default::default() };
    let status = client.redeem(bearer(tonic::Request::new(redeem), service)).await.unwrap_err();
    let fields: Vec<String> =
        warden_errors::WardenError::from_status(&status).violations.into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["id", "action"]);
    // A decision event that is not this decision's allow, or not an event.
    let redeem = |decision: Vec<u8>| pb::RedeemRequest {
        id: "ap-1".into(),
        agent_id: "support-bot".into(),
        action: Some(pb::Action { r#type: "issue_refund".into(), ..Default::default() }),
        decision_id: "d-1".into(),
        decision,
    };
    let wrong = audit::AuditEvent {
        event_id: "d-2".into(),
        event_type: "approval_granted".into(),
        agent_id: "support-bot".into(),
        ..Default::default()
    };
    for (decision, expected) in [
        (
            prost::Message::encode_to_vec(&wrong),
            &["decision.event_id", "decision.event_type", "decision.payload.effect", "decision.payload.approval_id"][..],
        ),
        (vec![0xff; 8], &["decision"][..]),
    ] {
        let status = client.redeem(bearer(tonic::Request::new(redeem(decision)), service)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<String> =
            warden_errors::WardenError::from_status(&status).violations.into_iter().map(|v| v.field).collect();
        assert_eq!(fields, expected);
    }
    // Nothing was written.
    let all = pb::ListApprovalsRequest::default();
    let listed = client.list_approvals(bearer(tonic::Request::new(all), stack.keys.token("auditor"))).await.unwrap();
    assert!(listed.into_inner().approvals.is_empty());
    stack.engine.shutdown().await;
    stack.approval.shutdown().await;
    stack.audit.shutdown().await;
}

/// Separation of duties holds for delegates: a principal that asked for
/// the action, or that may act as the agent, cannot review it, through
/// `Review`, `wardenctl approvals` and the inbox alike; an unrelated
/// approver still can, and the agent's own request goes ahead.
#[tokio::test]
async fn a_delegate_cannot_approve_what_it_or_its_agent_asked_for() {
    use warden_auth::Kind;
    use warden_tests::inbox;
    let sandbox = Sandbox::new(&[("refunds.yaml", POLICY)]);
    let mut keys = identity::keys(sandbox.data.path());
    // An on-call lead: a reviewer who may also act as support-bot.
    keys.add("lead", "lead", Kind::Human, &["agent", "approver"], &["support-bot"]);
    // Another, who never asks: bound to the agent all the same.
    keys.add("deputy", "deputy", Kind::Human, &["agent", "approver"], &["support-*"]);
    // An admin who is also a reviewer (admins may ask as any agent).
    keys.add("boss", "boss", Kind::Human, &["admin", "approver"], &[]);
    keys.save();
    let audit = keys.audit(&sandbox.data.path().join("audit")).await;
    let mut approval_config = approval_config(sandbox.data.path(), &keys, &audit.url(), "127.0.0.1:0");
    approval_config.http_listen = "127.0.0.1:0".into();
    let approval = ApprovalServer::start(approval_config).await.unwrap();
    let config = sandbox.secured_config(&keys, &audit.url(), &approval.url());
    let engine = PolicyEngine::start(config).await.unwrap();
    let stack = Stack { sandbox, keys, audit, approval, engine };

    let as_principal =
        |name: &str| PolicyClient::new(ClientConfig::new(stack.engine.url()).api_key(stack.keys.token(name))).unwrap();
    let id = as_principal("agent").evaluate(refund(150.0)).await.unwrap().approval_id.unwrap();
    // The lead and the admin ask for the same action: the same request,
    // and each is recorded as one of its requesters.
    for asker in ["lead", "boss", "lead"] {
        let asked = as_principal(asker).evaluate(refund(150.0)).await.unwrap();
        assert_eq!(asked.approval_id.as_deref(), Some(id.as_str()), "{asker}");
    }
    let mut client = ApprovalServiceClient::new(channel(&stack.approval.url()).await);
    let shown = client
        .get_approval(bearer(
            tonic::Request::new(pb::GetApprovalRequest { id: id.clone() }),
            stack.keys.token("auditor"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.requesters, ["support-bot", "lead", "boss"]);

    // Review over gRPC: refused to each, naming why.
    for (who, why) in [
        ("lead", "lead asked for this action"),
        ("boss", "boss asked for this action"),
        ("deputy", "deputy may act as agent support-bot"),
    ] {
        let refused = review(&stack, &id, who, true).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains(why), "{refused:?}");
    }
    // The lead does not see it among the requests it may review.
    let listed = client
        .list_approvals(bearer(
            tonic::Request::new(pb::ListApprovalsRequest { reviewable_by_me: true, ..Default::default() }),
            stack.keys.token("lead"),
        ))
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert!(listed.is_empty(), "{listed:?}");

    // wardenctl: the same refusal.
    let (code, _, err) = warden_tests::wardenctl::run(
        ["--approval-addr", &stack.approval.url(), "--api-key", stack.keys.token("boss"), "approvals", "approve", &id]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("boss asked for this action"), "{err}");

    // The inbox: no review form, and a posted review is refused.
    let url = format!("http://{}", stack.approval.http_addr.unwrap());
    let http = inbox::client();
    let login = inbox::sign_in(&http, &url, stack.keys.token("deputy")).await;
    let session = inbox::session_set_cookie(&login).split(';').next().unwrap().to_owned();
    let page = inbox::get(&http, &url, &format!("/approvals/{id}"), &session).await.text().await.unwrap();
    assert!(page.contains("You cannot review this request") && !page.contains("id=\"approve\""), "{page}");
    let posted = http
        .post(format!("{url}/approvals/{id}/review"))
        .header("cookie", &session)
        .form(&[("csrf", inbox::csrf_of(&page).as_str()), ("decision", "approve"), ("comment", "mine")])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), reqwest::StatusCode::FORBIDDEN);

    // An unrelated approver may, and the agent's refund goes ahead.
    let approved = review(&stack, &id, "approver", true).await.unwrap();
    assert_eq!(approved.state, pb::State::Approved as i32);
    assert_eq!(approved.reviews.len(), 1, "nobody else's review counted");
    let allowed = as_principal("agent").evaluate(refund(150.0).approval_id(&id)).await.unwrap();
    assert_eq!(allowed.effect, Effect::Allow, "{allowed:?}");
    stack.engine.shutdown().await;
    stack.approval.shutdown().await;
    stack.audit.shutdown().await;
}
