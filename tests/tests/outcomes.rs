//! `ActionRecorder::record_action`: an agent reports what an action did,
//! once, as its own `action_completed` event.

use std::time::Duration;

use warden_audit::AuditServer;
use warden_client::{ActionOutcome, ActionRecorder, ActionStatus, ClientConfig};
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_tests::identity::{self, bearer};
use warden_tests::{Sandbox, channel};

#[tokio::test]
async fn an_agent_records_an_outcome_once() {
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let mut config = warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"));
    config.auth = keys.auth();
    let server = AuditServer::start(config).await.unwrap();
    let recorder = ActionRecorder::new(ClientConfig::new(server.url()).api_key(keys.token("agent"))).unwrap();
    let outcome = ActionOutcome {
        agent_id: "support-bot".into(),
        action_type: "issue_refund".into(),
        correlation_id: "ticket-7".into(),
        decision_id: Some("0199-decision".into()),
        status: ActionStatus::Failure,
        duration: Duration::from_millis(1500),
        cost: 0.25,
        cost_type: None,
        error_class: Some("timeout".into()),
    };
    let first = recorder.record_action(&outcome).await.unwrap();
    let again = recorder.record_action(&outcome).await.unwrap();
    assert_eq!(first, again, "a retried record is the same event");
    let other = ActionOutcome { agent_id: "billing-bot".into(), ..outcome.clone() };
    assert_eq!(recorder.record_action(&other).await.unwrap_err().code(), tonic::Code::PermissionDenied);

    let mut auditor = AuditServiceClient::new(channel(&server.url()).await);
    let query = audit::QueryRequest { correlation_id: "ticket-7".into(), ..Default::default() };
    let records =
        auditor.query(bearer(tonic::Request::new(query), keys.token("auditor"))).await.unwrap().into_inner().records;
    assert_eq!(records.len(), 1);
    let event = records[0].event.clone().unwrap();
    assert_eq!((event.event_type.as_str(), event.actor.as_str()), ("action_completed", "support-bot"));
    let payload = event.payload.unwrap().fields;
    let text = |k: &str| format!("{:?}", payload[k].kind);
    assert!(text("status").contains("failure") && text("error_class").contains("timeout"));
    assert!(text("duration_seconds").contains("1.5"));
    server.shutdown().await;
}
