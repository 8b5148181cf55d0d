//! The approval workflow on both backends (one suite): races, quorum,
//! separation of duties, redemption, the clocks, and the outbox.

use std::sync::Arc;
use std::time::Duration;

use warden_auth::{Kind, Principal};
use warden_proto::approval::v1 as pb;
use warden_store::Database;

use crate::approvals::{Approvals, Clock, RedeemInput, Redemption};
use crate::routes::Routes;
use crate::store::{ApprovalStore, Outgoing, State};

const ROUTES: &str = r#"
receivers:
  - name: hook
    webhook: { url: "http://127.0.0.1:9/hook" }
routes:
  - name: big-refunds
    actions: ["issue_refund"]
    reviewers: ["role:finance"]
    min_approvals: 2
    timeout: 1h
    escalate_after: 30m
    escalate_to: ["role:admin"]
    remind_before: 10m
    grant_ttl: 5m
    notify: [hook]
    escalate_notify: [hook]
"#;

async fn workflow(database: Database) -> Arc<Approvals> {
    database.migrate().await.unwrap();
    Approvals::new(ApprovalStore::new(database).expect("store"), Routes::parse(ROUTES).unwrap(), Clock::system(), true)
}

fn person(id: &str, role: &str) -> Principal {
    Principal::new(Kind::Human, id, vec![role.into()], &[], "test")
}

fn action(kind: &str, amount: f64) -> pb::Action {
    pb::Action {
        r#type: kind.into(),
        resource: "order/1".into(),
        estimated_cost: amount,
        params: Some(prost_types::Struct {
            fields: [(
                "amount".to_string(),
                prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(amount)) },
            )]
            .into(),
        }),
    }
}

/// Redeems for decision `decision_id`, carrying no decision event.
async fn redeem(approvals: &Approvals, id: &str, agent_id: &str, action: &pb::Action, decision_id: &str) -> Redemption {
    approvals.redeem(RedeemInput { id, agent_id, action, decision_id, decision: None }).await.unwrap()
}

fn create(agent: &str, action: pb::Action) -> pb::CreateApprovalRequest {
    pb::CreateApprovalRequest {
        agent_id: agent.into(),
        action: Some(action),
        correlation_id: format!("corr-{agent}"),
        rules: vec!["refunds-over-100".into()],
        reasons: vec!["refunds over 100 need a person".into()],
        ..Default::default()
    }
}

async fn a_request_is_opened_once_per_pending_action(database: Database) {
    let approvals = workflow(database).await;
    let (first, created) =
        approvals.create(&create("bot", action("issue_refund", 150.0)), "policy-engine").await.unwrap();
    assert!(created);
    assert_eq!((first.state, first.route.as_str(), first.min_approvals), (State::Pending, "big-refunds", 2));
    let (again, created) =
        approvals.create(&create("bot", action("issue_refund", 150.0)), "policy-engine").await.unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id, "a retry must not open a second request");
    let (other, created) =
        approvals.create(&create("bot", action("issue_refund", 151.0)), "policy-engine").await.unwrap();
    assert!(created && other.id != first.id, "different params are a different action");
    let mut keyed = create("bot2", action("send_email", 0.0));
    keyed.idempotency_key = "k-1".into();
    let (a, _) = approvals.create(&keyed, "policy-engine").await.unwrap();
    let (b, created) = approvals.create(&keyed, "policy-engine").await.unwrap();
    assert!(!created && a.id == b.id);
    assert_eq!(a.route, "default");
}

async fn quorum_deny_and_separation_of_duties(database: Database) {
    let approvals = workflow(database).await;
    let (row, _) = approvals.create(&create("bot", action("issue_refund", 150.0)), "owner").await.unwrap();
    let (ada, bob, cy) = (person("ada", "finance"), person("bob", "finance"), person("cy", "finance"));
    // Self-review: the agent, and the principal that asked for it.
    for own in [Principal::new(Kind::Human, "bot", vec!["finance".into()], &[], "t"), person("owner", "finance")] {
        let error = approvals.review(&row.id, &own, true, "mine").await.unwrap_err();
        assert!(error.to_string().contains("may not review its own request"), "{error}");
    }
    let error = approvals.review(&row.id, &person("eve", "approver"), true, "").await.unwrap_err();
    assert!(error.to_string().contains("not a reviewer for route big-refunds"), "{error}");

    // 2 of 3: one approval is not enough; the same reviewer counts once.
    let after = approvals.review(&row.id, &ada, true, "ok").await.unwrap();
    assert_eq!(after.state, State::Pending);
    let error = approvals.review(&row.id, &ada, true, "again").await.unwrap_err();
    assert!(error.to_string().contains("already reviewed"), "{error}");
    let after = approvals.review(&row.id, &bob, true, "fine").await.unwrap();
    assert_eq!(after.state, State::Approved);
    assert_eq!(after.approvers(), ["ada", "bob"]);
    assert!(after.grant_expires_at_micros.is_some());
    // Terminal for reviews: a late reviewer is told the state.
    let error = approvals.review(&row.id, &cy, false, "late").await.unwrap_err();
    assert_eq!(error.to_string(), "approval request is APPROVED");

    // Any authorised deny denies.
    let (row, _) = approvals.create(&create("bot", action("issue_refund", 300.0)), "owner").await.unwrap();
    approvals.review(&row.id, &ada, true, "ok").await.unwrap();
    let denied = approvals.review(&row.id, &cy, false, "too much").await.unwrap();
    assert_eq!(denied.state, State::Denied);
    assert_eq!(denied.outcome_reason, "denied by cy: too much");
}

async fn approve_and_deny_racing_have_exactly_one_outcome(database: Database) {
    let approvals = workflow(database).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let (row, _) = approvals.create(&create(&format!("bot-{i}"), action("send_email", 0.0)), "pe").await.unwrap();
        ids.push(row.id);
    }
    let mut tasks = Vec::new();
    for id in &ids {
        for (who, approve) in [("ada", true), ("bob", false)] {
            let (approvals, id) = (approvals.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                approvals.review(&id, &person(who, "approver"), approve, "").await.map(|row| row.state)
            }));
        }
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(State::Approved | State::Denied) => wins += 1,
            Ok(other) => panic!("a single review left {other:?}"),
            Err(error) => assert!(error.to_string().starts_with("approval request is"), "{error}"),
        }
    }
    assert_eq!(wins, 100, "each request has exactly one outcome");
    for id in &ids {
        let row = approvals.store.get(id).await.unwrap().unwrap();
        assert!(matches!(row.state, State::Approved | State::Denied));
        assert_eq!(row.reviews.len(), 1, "the losing review must not be recorded");
    }
}

async fn a_grant_is_spent_once_for_exactly_its_action(database: Database) {
    let approvals = workflow(database).await;
    let (row, _) = approvals.create(&create("bot", action("send_email", 0.0)), "pe").await.unwrap();
    let refused = redeem(&approvals, &row.id, "bot", &action("send_email", 0.0), "d-0").await;
    assert!(matches!(refused, Redemption::Refused { ref reason, .. } if reason == "approval is still pending"));
    approvals.review(&row.id, &person("ada", "approver"), true, "").await.unwrap();
    for (agent, changed) in [("bot", action("send_email", 1.0)), ("other-bot", action("send_email", 0.0))] {
        let refused = redeem(&approvals, &row.id, agent, &changed, "d-0").await;
        assert!(
            matches!(refused, Redemption::Refused { ref reason, .. } if reason == "approval was for a different action"),
            "{refused:?}"
        );
    }
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (approvals, id) = (approvals.clone(), row.id.clone());
        let decision = format!("d-{i}");
        tasks.push(tokio::spawn(
            async move { redeem(&approvals, &id, "bot", &action("send_email", 0.0), &decision).await },
        ));
    }
    let mut redeemed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Redemption::Redeemed { row, reason, recorded } => {
                redeemed += 1;
                assert_eq!(row.approvers(), ["ada"]);
                assert_eq!(reason, format!("approved by ada (approval {})", row.id));
                assert!(!recorded, "no decision event was given");
            }
            Redemption::Refused { reason, .. } => assert_eq!(reason, "approval already used"),
        }
    }
    assert_eq!(redeemed, 1);
    // Approving one call does not approve the next call of the same tool.
    let (next, created) = approvals.create(&create("bot", action("send_email", 0.0)), "pe").await.unwrap();
    assert!(created && next.id != row.id && next.state == State::Pending);
}

async fn clocks_expire_escalate_remind_and_end_grants(database: Database) {
    let approvals = workflow(database).await;
    let clock = approvals.clock.clone();
    let (row, _) = approvals.create(&create("bot", action("issue_refund", 150.0)), "pe").await.unwrap();
    let admin = person("root", "admin");
    assert!(approvals.may_review(&row, &admin).is_err(), "the second tier waits for escalation");
    clock.advance(Duration::from_secs(31 * 60));
    approvals.tick().await.unwrap();
    let escalated = approvals.store.get(&row.id).await.unwrap().unwrap();
    assert_eq!((escalated.escalation_level, escalated.state), (1, State::Pending));
    assert!(approvals.may_review(&escalated, &admin).is_ok());
    clock.advance(Duration::from_secs(20 * 60));
    approvals.tick().await.unwrap();
    assert!(approvals.store.get(&row.id).await.unwrap().unwrap().reminded);
    // Nobody decided in time: EXPIRED, and said not to be a rejection.
    clock.advance(Duration::from_secs(10 * 60));
    approvals.tick().await.unwrap();
    let expired = approvals.store.get(&row.id).await.unwrap().unwrap();
    assert_eq!(expired.state, State::Expired);
    assert!(expired.outcome_reason.contains("not a rejection"), "{}", expired.outcome_reason);
    approvals.tick().await.unwrap();
    let error = approvals.review(&row.id, &admin, true, "late").await.unwrap_err();
    assert_eq!(error.to_string(), "approval request is EXPIRED");

    // A grant not used within grant_ttl expires too.
    let (row, _) = approvals.create(&create("bot", action("send_email", 0.0)), "pe").await.unwrap();
    approvals.review(&row.id, &person("ada", "approver"), true, "").await.unwrap();
    clock.advance(Duration::from_secs(16 * 60));
    let refused = redeem(&approvals, &row.id, "bot", &action("send_email", 0.0), "d-1").await;
    assert!(matches!(refused, Redemption::Refused { ref reason, .. } if reason.contains("expired")), "{refused:?}");
    assert_eq!(approvals.store.get(&row.id).await.unwrap().unwrap().state, State::Expired);

    // Every step left its audit event (and notifications) in the outbox.
    let claimed =
        approvals.store.outbox_table().claim("r1", clock.now_micros(), clock.now_micros() + 60_000_000, 1000).await;
    let rows: Vec<Option<Outgoing>> =
        claimed.unwrap().iter().map(|row| Outgoing::decode(&row.kind, &row.payload)).collect();
    let types: Vec<String> = rows
        .iter()
        .filter_map(|item| match item {
            Some(Outgoing::Audit(event)) => Some(event.event_type.clone()),
            _ => None,
        })
        .collect();
    for expected in
        ["approval_requested", "approval_escalated", "approval_reminder", "approval_expired", "approval_granted"]
    {
        assert!(types.iter().any(|t| t == expected), "{expected} missing from {types:?}");
    }
    assert!(rows.iter().any(|item| matches!(item, Some(Outgoing::Notify { receiver, .. }) if receiver == "hook")));
}

async fn outbox_rows_are_claimed_by_one_replica(database: Database) {
    let approvals = workflow(database).await;
    for i in 0..20 {
        approvals.create(&create(&format!("bot-{i}"), action("send_email", 0.0)), "pe").await.unwrap();
    }
    let now = approvals.clock.now_micros();
    let lease = now + 60_000_000;
    let outbox = approvals.store.outbox_table();
    let (a, b) = tokio::join!(outbox.claim("a", now, lease, 1000), outbox.claim("b", now, lease, 1000));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 20, "every row claimed once");
    assert!(a.iter().all(|row| b.iter().all(|other| other.id != row.id)));
    // Delivered rows are gone; a row whose delivery failed comes back after its delay.
    let ids: Vec<i64> = a.iter().map(|r| r.id).collect();
    outbox.delivered("a", &ids).await.unwrap();
    // Only the replica holding a row deletes it.
    let b_ids: Vec<i64> = b.iter().map(|r| r.id).collect();
    outbox.delivered("a", &b_ids).await.unwrap();
    assert_eq!(outbox.waiting().await.unwrap(), b.len() as i64);
    if let Some(row) = b.first() {
        outbox.retry_later(row.id, now + 5_000_000).await.unwrap();
    }
    outbox.delivered("b", &b.iter().skip(1).map(|r| r.id).collect::<Vec<_>>()).await.unwrap();
    assert!(outbox.claim("c", now + 1_000_000, lease, 1000).await.unwrap().is_empty() || b.is_empty());
    let later = outbox.claim("c", now + 6_000_000, lease + 6_000_000, 1000).await.unwrap();
    assert_eq!(later.len(), usize::from(!b.is_empty()));
    if let Some(row) = later.first() {
        assert_eq!(row.attempts, 2);
    }
}

/// The engine's decision event, as it sends it with a redemption.
fn decision_event(id: &str, approval_id: &str) -> warden_proto::audit::v1::AuditEvent {
    let text = |s: &str| prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(s.into())) };
    warden_proto::audit::v1::AuditEvent {
        event_id: id.into(),
        event_type: "policy_evaluation".into(),
        agent_id: "bot".into(),
        actor: "warden-policy-engine".into(),
        payload: Some(prost_types::Struct {
            fields: [("effect".to_string(), text("allow")), ("approval_id".to_string(), text(approval_id))].into(),
        }),
        ..Default::default()
    }
}

async fn a_redemption_records_its_decision_and_a_retry_gets_the_same_answer(database: Database) {
    let approvals = workflow(database).await;
    let (row, _) = approvals.create(&create("bot", action("send_email", 0.0)), "pe").await.unwrap();
    approvals.review(&row.id, &person("ada", "approver"), true, "ok").await.unwrap();
    let email = action("send_email", 0.0);
    let input = |decision_id: &'static str| RedeemInput {
        id: &row.id,
        agent_id: "bot",
        action: &email,
        decision_id,
        decision: Some(decision_event(decision_id, &row.id)),
    };
    // Five decisions race for the grant: one wins, and only its event is
    // recorded.
    let decisions = ["d-1", "d-2", "d-3", "d-4", "d-5"];
    let outcomes = futures::future::join_all(decisions.map(|d| approvals.redeem(input(d)))).await;
    let mut winners = Vec::new();
    for (decision, outcome) in decisions.iter().zip(outcomes) {
        match outcome.unwrap() {
            Redemption::Redeemed { reason, recorded: true, .. } => winners.push((*decision, reason)),
            Redemption::Refused { reason, .. } => assert_eq!(reason, "approval already used"),
            other => panic!("{other:?}"),
        }
    }
    let [(winner, reason)] = &winners[..] else { panic!("{winners:?}") };
    assert_eq!(reason, &format!("approved by ada (approval {})", row.id));
    // The answer to the winner was lost; the engine's retry for the same
    // decision is answered the same way, and spends nothing more.
    let retried = approvals.redeem(input(winner)).await.unwrap();
    assert!(matches!(&retried, Redemption::Redeemed { reason: r, .. } if r == reason), "{retried:?}");
    let loser = if *winner == "d-1" { "d-2" } else { "d-1" };
    let other = approvals.redeem(input(loser)).await.unwrap();
    assert!(matches!(&other, Redemption::Refused { reason, .. } if reason == "approval already used"), "{other:?}");

    // The decision was committed with the redemption, once, with the
    // grant's reason and approvers; approval_redeemed names the decision.
    let now = approvals.clock.now_micros();
    let rows = claimed(&approvals.store, "r1", now, now + 60_000_000, 1000).await;
    let events: Vec<_> = rows
        .iter()
        .filter_map(|r| match r {
            Some(Outgoing::Audit(event)) => Some(event),
            _ => None,
        })
        .collect();
    let decisions: Vec<_> = events.iter().filter(|e| e.event_type == "policy_evaluation").collect();
    assert_eq!(decisions.len(), 1, "{events:?}");
    let payload = &decisions[0].payload.as_ref().unwrap().fields;
    let strings = |key: &str| match payload.get(key).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::ListValue(list)) => list
            .values
            .into_iter()
            .filter_map(|v| match v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s),
                _ => None,
            })
            .collect::<Vec<_>>(),
        other => panic!("{key}: {other:?}"),
    };
    assert_eq!(strings("approvers"), ["ada"]);
    assert_eq!(strings("reasons"), std::slice::from_ref(reason));
    let redeemed = events.iter().find(|e| e.event_type == "approval_redeemed").expect("approval_redeemed");
    let decision_id = redeemed.payload.as_ref().unwrap().fields.get("decision_id").and_then(|v| v.kind.clone());
    assert_eq!(decision_id, Some(prost_types::value::Kind::StringValue(winner.to_string())));

    // A refused redemption records nothing.
    let (pending, _) = approvals.create(&create("bot", action("send_email", 2.0)), "pe").await.unwrap();
    let two = action("send_email", 2.0);
    let refused = approvals
        .redeem(RedeemInput {
            id: &pending.id,
            agent_id: "bot",
            action: &two,
            decision_id: "d-6",
            decision: Some(decision_event("d-6", &pending.id)),
        })
        .await
        .unwrap();
    assert!(matches!(refused, Redemption::Refused { .. }));
    let rows = claimed(&approvals.store, "r1", now, now + 120_000_000, 1000).await;
    assert!(rows.iter().any(|r| matches!(r, Some(Outgoing::Audit(e)) if e.event_type == "approval_requested")));
    assert!(
        rows.iter().all(|r| !matches!(r, Some(Outgoing::Audit(e)) if e.event_type == "policy_evaluation")),
        "a refused redemption recorded a decision"
    );
}

/// Inbox sessions: found until they expire, ended by deletion, and a
/// sign-in sweeps the expired ones away.
async fn inbox_sessions_expire_and_sign_ins_sweep_them(database: Database) {
    let approvals = workflow(database).await;
    let store = &approvals.store;
    let session = |expires_at_micros: i64| crate::store::SessionRow {
        principal: "alice".into(),
        sealed_credential: vec![1, 2, 3],
        csrf: "csrf".into(),
        created_at_micros: 0,
        expires_at_micros,
    };
    store.insert_session("old", &session(1_000), 0).await.unwrap();
    store.insert_session("new", &session(5_000), 0).await.unwrap();
    let found = store.session("old", 999).await.unwrap().expect("valid until it expires");
    assert_eq!(
        (found.principal.as_str(), found.sealed_credential.as_slice(), found.csrf.as_str()),
        ("alice", &[1u8, 2, 3][..], "csrf")
    );
    assert!(store.session("old", 1_000).await.unwrap().is_none(), "expired");
    assert!(store.session("missing", 0).await.unwrap().is_none());
    // A sign-in at 2,000 removes the session expired at 1,000.
    store.insert_session("later", &session(9_000), 2_000).await.unwrap();
    assert!(store.session("old", 0).await.unwrap().is_none(), "swept");
    assert!(store.session("new", 2_000).await.unwrap().is_some());
    store.delete_session("new").await.unwrap();
    assert!(store.session("new", 2_000).await.unwrap().is_none(), "signed out");
    assert!(store.session("later", 2_000).await.unwrap().is_some());
}

warden_store::backend_tests!(
    inbox_sessions_expire_and_sign_ins_sweep_them,
    a_request_is_opened_once_per_pending_action,
    quorum_deny_and_separation_of_duties,
    approve_and_deny_racing_have_exactly_one_outcome,
    a_grant_is_spent_once_for_exactly_its_action,
    a_redemption_records_its_decision_and_a_retry_gets_the_same_answer,
    clocks_expire_escalate_remind_and_end_grants,
    outbox_rows_are_claimed_by_one_replica,
    two_replicas_expire_a_request_once,
);

/// An in-memory SQLite database cannot be opened by a second connection:
/// its redemptions commit on the pool's, with the same outcomes.
#[tokio::test]
async fn an_in_memory_database_redeems_through_the_pool() {
    let memory = || async { Database::connect("sqlite::memory:").await.unwrap() };
    a_grant_is_spent_once_for_exactly_its_action(memory().await).await;
    a_redemption_records_its_decision_and_a_retry_gets_the_same_answer(memory().await).await;
}

/// The outbox's rows, claimed by `replica` until `until`, decoded.
async fn claimed(
    store: &crate::store::ApprovalStore,
    replica: &str,
    now: i64,
    until: i64,
    limit: i64,
) -> Vec<Option<Outgoing>> {
    let rows = store.outbox_table().claim(replica, now, until, limit).await.unwrap();
    rows.iter().map(|row| Outgoing::decode(&row.kind, &row.payload)).collect()
}

/// A shipper with no audit service, backing off 100 ms at first.
fn shipper(approvals: &Arc<Approvals>) -> warden_server::delivery::Deliveries<crate::worker::Notifications> {
    let secrets = warden_auth::SecretResolver::new(Default::default(), Duration::from_secs(60));
    let outbound = warden_server::delivery::Outbound::new(&Default::default(), Duration::from_secs(10), secrets);
    let mut deliveries =
        crate::worker::deliveries(crate::worker::Notifications { approvals: approvals.clone(), outbound }, None);
    deliveries.backoff = warden_resilience::Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
    deliveries
}

/// A receiver that answers 429 with `Retry-After: 2` first, then 200, and
/// records what it got.
type Deliveries = Arc<std::sync::Mutex<Vec<(http::HeaderMap, Vec<u8>)>>>;

async fn flaky_receiver() -> (String, Deliveries) {
    let seen: Deliveries = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let recorded = recorded.clone();
            async move {
                let mut seen = recorded.lock().unwrap();
                seen.push((headers, body.to_vec()));
                if seen.len() == 1 {
                    (http::StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")]).into_response()
                } else {
                    http::StatusCode::OK.into_response()
                }
            }
        }),
    );
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), seen)
}

#[tokio::test]
async fn a_refused_notification_is_retried_after_retry_after_and_sent_once_signed() {
    let (url, seen) = flaky_receiver().await;
    let test = warden_store::testing::sqlite().await;
    test.database.migrate().await.unwrap();
    let routes = Routes::parse(&format!(
        "receivers:\n  - name: hook\n    webhook: {{ url: \"{url}\", secret: \"s3cret\" }}\nroutes:\n  - name: r\n    reviewers: [\"role:approver\"]\n    notify: [hook]\n"
    ))
    .unwrap();
    let approvals =
        Approvals::new(ApprovalStore::new(test.database.clone()).expect("store"), routes, Clock::system(), false);
    approvals.create(&create("bot", action("send_email", 0.0)), "pe").await.unwrap();
    let shipper = shipper(&approvals);
    assert_eq!(shipper.pass().await.unwrap(), 0, "429: not delivered");
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Not before the receiver's Retry-After, though our own backoff is shorter.
    approvals.clock.advance(Duration::from_secs(1));
    assert_eq!(shipper.pass().await.unwrap(), 0);
    assert_eq!(seen.lock().unwrap().len(), 1);
    approvals.clock.advance(Duration::from_millis(1100));
    assert_eq!(shipper.pass().await.unwrap(), 1);
    approvals.clock.advance(Duration::from_secs(60));
    assert_eq!(shipper.pass().await.unwrap(), 0, "a delivered notification is not sent again");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    let (headers, body) = &seen[1];
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(headers["x-warden-signature"].to_str().unwrap(), expected);
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["event"], "approval_requested");
    assert_eq!(json["action"]["type"], "send_email");
}

async fn two_replicas_expire_a_request_once(database: Database) {
    let first = workflow(database.clone()).await;
    let second = Approvals::new(
        ApprovalStore::new(database).expect("store"),
        Routes::parse(ROUTES).unwrap(),
        first.clock.clone(),
        true,
    );
    let (row, _) = first.create(&create("bot", action("send_email", 0.0)), "pe").await.unwrap();
    first.clock.advance(Duration::from_secs(2 * 3600));
    let (a, b) = tokio::join!(first.tick(), second.tick());
    a.unwrap();
    b.unwrap();
    assert_eq!(first.store.get(&row.id).await.unwrap().unwrap().state, State::Expired);
    let now = first.clock.now_micros();
    let rows = claimed(&first.store, "r", now, now + 60_000_000, 1000).await;
    let expired =
        rows.iter().filter(|r| matches!(r, Some(Outgoing::Audit(e)) if e.event_type == "approval_expired")).count();
    assert_eq!(expired, 1);
}

#[tokio::test]
async fn email_notifications_show_the_action_and_are_sent_once() {
    let smtp = warden_testkit::Smtp::start().await;
    let url = &smtp.url;
    let test = warden_store::testing::sqlite().await;
    test.database.migrate().await.unwrap();
    let routes = Routes::parse(&format!(
        "receivers:\n  - name: oncall\n    email: {{ smtp_url: \"{url}\", from: \"warden@example.com\", to: [\"oncall@example.com\"] }}\n\
         routes:\n  - name: r\n    reviewers: [\"role:approver\"]\n    notify: [oncall]\n"
    ))
    .unwrap();
    let approvals =
        Approvals::new(ApprovalStore::new(test.database.clone()).expect("store"), routes, Clock::system(), false);
    approvals.create(&create("bot", action("issue_refund", 150.0)), "pe").await.unwrap();
    let shipper = shipper(&approvals);
    assert_eq!(shipper.pass().await.unwrap(), 1);
    approvals.clock.advance(Duration::from_secs(120));
    assert_eq!(shipper.pass().await.unwrap(), 0);
    let received = smtp.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].contains("Subject: [warden] approval_requested: bot wants to issue_refund"), "{}", received[0]);
    assert!(received[0].contains("\"amount\": 150.0") && received[0].contains("order/1"), "{}", received[0]);
}

/// The clocks and the duplicate check read only their partial indexes (a
/// full scan would grow with every request ever made), and a redemption
/// rewrites no index but the grants': the commit an agent's `Evaluate`
/// waits for stays small.
#[tokio::test]
async fn sqlite_reads_partial_indexes_and_a_redemption_rewrites_one() {
    use crate::store::{DUE_GRANTS, PENDING, PENDING_DUPLICATE};
    let test = warden_store::testing::sqlite().await;
    let Database::Sqlite(pool) = &test.database else { unreachable!() };
    for (clause, index) in [
        (PENDING_DUPLICATE, "approval_requests_pending"),
        (PENDING, "approval_requests_pending_expiry"),
        (DUE_GRANTS, "approval_requests_granted_expiry"),
    ] {
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN SELECT id FROM approval_requests {clause}"))
                .bind("bot")
                .bind("hash")
                .fetch_all(pool)
                .await
                .unwrap();
        let plan: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
        assert!(plan.iter().any(|step| step.contains(&format!("USING INDEX {index}"))), "{clause}: {plan:?}");
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN approval_requests") && !step.contains(index)),
            "{plan:?}"
        );
    }
    // Every index on the table, and the states it covers: a redemption
    // (APPROVED -> REDEEMED) leaves only the grants' index.
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'approval_requests' AND sql IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let covering_grants: Vec<&str> = indexes
        .iter()
        .filter(|(_, sql)| !sql.contains("WHERE state = 'PENDING'"))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(covering_grants, ["approval_requests_granted_expiry"], "{indexes:?}");
}

/// The migration that rebuilds the outbox keeps the rows waiting in it,
/// and new rows still get ids above theirs.
#[tokio::test]
async fn sqlite_upgrade_keeps_the_waiting_outbox_rows() {
    let dir = tempfile::tempdir().unwrap();
    let database = Database::connect(&Database::default_url(dir.path())).await.unwrap();
    let Database::Sqlite(pool) = &database else { unreachable!() };
    let mut migrator = sqlx::migrate!("../../migrations/sqlite");
    let all = migrator.migrations.to_vec();
    migrator.migrations = all.iter().filter(|m| m.version < 20261202000001).cloned().collect::<Vec<_>>().into();
    migrator.run(pool).await.unwrap();
    for id in [5_i64, 9] {
        sqlx::query("INSERT INTO approval_outbox (id, kind, payload, attempts) VALUES ($1, 'audit', x'0102', 2)")
            .bind(id)
            .execute(pool)
            .await
            .unwrap();
    }
    database.migrate().await.unwrap();
    let rows: Vec<(i64, String, Vec<u8>, i32)> =
        sqlx::query_as("SELECT id, kind, payload, attempts FROM approval_outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(rows, [(5, "audit".to_string(), vec![1, 2], 2), (9, "audit".to_string(), vec![1, 2], 2)]);
    let (id,): (i64,) =
        sqlx::query_as("INSERT INTO approval_outbox (kind, payload) VALUES ('audit', x'03') RETURNING id")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(id, 10);
}
