//! The policy engine's decision log reaching the audit service, including
//! while the audit service is down.

use std::collections::HashSet;
use std::time::Duration;

use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_tests::{Sandbox, channel, eventually, policy_client, request, start_audit};

const POLICY: &str = "rules:\n  - name: ok\n    effect: allow\n    reason: fine\n";

/// Every policy_evaluation event in the log, by paging through Query.
async fn logged_decisions(url: &str) -> Vec<audit::AuditRecord> {
    let mut client = AuditServiceClient::new(channel(url).await);
    let mut records = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .query(audit::QueryRequest {
                event_types: vec!["policy_evaluation".into()],
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            return records;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_reaches_the_audit_log_exactly_once_even_across_an_outage() {
    let audit_data = tempfile::tempdir().unwrap();
    let audit_server = start_audit(audit_data.path(), "127.0.0.1:0").await;
    let audit_addr = audit_server.addr;
    let sandbox = Sandbox::new(&[("p.yaml", POLICY)]);
    let mut config = sandbox.config();
    config.audit_url = audit_server.url();
    let engine = warden_tests::start(config).await;
    let mut client = policy_client(&engine).await;

    let first = client.evaluate(request("agent-1", 0.9, "send_email", 2.0)).await.unwrap().into_inner();
    let records = eventually(Duration::from_secs(10), || async {
        let records = logged_decisions(&audit_server.url()).await;
        (!records.is_empty()).then_some(records)
    })
    .await;
    let event = records[0].event.as_ref().unwrap();
    assert_eq!(event.event_id, first.decision_id);
    assert_eq!(event.agent_id, "agent-1");
    let payload = &event.payload.as_ref().unwrap().fields;
    assert_eq!(payload["effect"].kind, Some(prost_types::value::Kind::StringValue("allow".into())));
    assert_eq!(payload["action"].kind, Some(prost_types::value::Kind::StringValue("send_email".into())));

    // The audit service goes away; decisions go on.
    audit_server.shutdown().await;
    let mut decision_ids = HashSet::from([first.decision_id.clone()]);
    for i in 0..1000 {
        let response =
            client.evaluate(request(&format!("agent-{}", i % 7), 0.9, "send_email", 1.0)).await.unwrap().into_inner();
        decision_ids.insert(response.decision_id);
    }
    assert_eq!(decision_ids.len(), 1001);
    assert!(engine.decision_log.as_ref().unwrap().pending() > 0, "decisions wait in the outbox");

    // It comes back on the same address and database: everything arrives, once.
    let audit_server = start_audit(audit_data.path(), &audit_addr.to_string()).await;
    let records = eventually(Duration::from_secs(60), || async {
        let records = logged_decisions(&audit_server.url()).await;
        (records.len() >= 1001).then_some(records)
    })
    .await;
    let logged: Vec<String> = records.iter().map(|r| r.event.as_ref().unwrap().event_id.clone()).collect();
    let unique: HashSet<String> = logged.iter().cloned().collect();
    assert_eq!(logged.len(), 1001, "no decision logged twice");
    assert_eq!(unique, decision_ids);
    assert_eq!(engine.decision_log.as_ref().unwrap().pending(), 0);
    let mut audit_client = AuditServiceClient::new(channel(&audit_server.url()).await);
    let report = audit_client.verify(audit::VerifyRequest::default()).await.unwrap().into_inner();
    assert!(report.ok, "{report:?}");
    engine.shutdown().await;
    audit_server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_blocks_decisions_with_retry_info() {
    // Nothing listens on port 1, so the outbox only fills.
    let sandbox = Sandbox::new(&[("p.yaml", POLICY)]);
    let mut config = sandbox.config();
    config.audit_url = "http://127.0.0.1:1".into();
    config.decision_log.outbox_cap = 5;
    let engine = warden_tests::start(config).await;
    let mut client = policy_client(&engine).await;
    for _ in 0..5 {
        client.evaluate(request("a", 0.9, "x", 0.0)).await.unwrap();
    }
    let status = client.evaluate(request("a", 0.9, "x", 0.0)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let error = warden_errors::WardenError::from_status(&status);
    assert_eq!(error.reason, "DECISION_LOG_FULL");
    assert_eq!(error.retry_after, Some(Duration::from_secs(1)));
    engine.shutdown().await;

    // With when_full = drop, decisions go on unlogged.
    let sandbox = Sandbox::new(&[("p.yaml", POLICY)]);
    let mut config = sandbox.config();
    config.audit_url = "http://127.0.0.1:1".into();
    config.decision_log.outbox_cap = 5;
    config.decision_log.when_full = warden_policy_engine::decision_log::WhenFull::Drop;
    let engine = warden_tests::start(config).await;
    let mut client = policy_client(&engine).await;
    for _ in 0..10 {
        client.evaluate(request("a", 0.9, "x", 0.0)).await.unwrap();
    }
    assert_eq!(engine.decision_log.as_ref().unwrap().pending(), 5);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_left_in_an_earlier_releases_sqlite_outbox_are_shipped_after_an_upgrade() {
    use prost::Message;
    let audit_data = tempfile::tempdir().unwrap();
    let audit_server = start_audit(audit_data.path(), "127.0.0.1:0").await;
    let sandbox = Sandbox::new(&[("p.yaml", POLICY)]);
    let mut config = sandbox.config();
    config.audit_url = audit_server.url();
    // The outbox an earlier release left behind, with one decision in it.
    let outbox = config.data_dir.join("decision-outbox.db");
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let database = warden_store::Database::connect(&format!("sqlite://{}", outbox.display())).await.unwrap();
    let warden_store::Database::Sqlite(pool) = &database else { unreachable!() };
    warden_store::sqlx::query(
        "CREATE TABLE decision_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event BLOB NOT NULL, traceparent TEXT)",
    )
    .execute(pool)
    .await
    .unwrap();
    let event = audit::AuditEvent {
        event_id: "left-behind".into(),
        event_type: "policy_evaluation".into(),
        agent_id: "agent-1".into(),
        ..Default::default()
    };
    warden_store::sqlx::query("INSERT INTO decision_outbox (event) VALUES (?)")
        .bind(event.encode_to_vec())
        .execute(pool)
        .await
        .unwrap();
    database.close().await;

    let engine = warden_tests::start(config).await;
    let records = eventually(Duration::from_secs(10), || async {
        let records = logged_decisions(&audit_server.url()).await;
        (!records.is_empty()).then_some(records)
    })
    .await;
    assert_eq!(records[0].event.as_ref().unwrap().event_id, "left-behind");
    assert!(!outbox.exists(), "the old outbox is removed once its rows are in the journal");
    engine.shutdown().await;
    audit_server.shutdown().await;
}
