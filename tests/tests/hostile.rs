//! No agent input, however malformed, can stop, empty or blind the record
//! for other agents. Each test is a row of the issue that found the hole,
//! through the real services (SQLite, authentication on): what the engine
//! accepts, the audit service stores and every reader decodes; what it
//! cannot accept is refused at the edge as INVALID_ARGUMENT naming the
//! field; and what a receiver refuses for good waits in the dead letters
//! instead of blocking the rest.

use std::time::Duration;

use prost_types::value::Kind;
use tonic::Code;
use warden_audit::{AuditConfig, AuditServer};
use warden_auth::Kind as PrincipalKind;
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
    roles: [support]
rules:
  - name: big-refunds
    actions: [issue_refund]
    when: "action.params.amount > 1000.0"
    effect: deny
  - name: work
    effect: allow
"#;

struct Stack {
    sandbox: Sandbox,
    keys: Keys,
    audit: AuditServer,
    engine: PolicyEngine,
}

fn audit_config(sandbox: &Sandbox, keys: &Keys, listen: &str) -> AuditConfig {
    let mut config = AuditConfig::for_tests(sandbox.data.path().join("audit"));
    config.auth = keys.auth();
    config.listen = listen.into();
    config
}

/// Audit and policy engine, auth on; an orchestrator may assert labels.
async fn stack() -> Stack {
    let sandbox = Sandbox::new(&[("policies.yaml", POLICIES)]);
    let mut keys = identity::keys(sandbox.data.path());
    keys.add("orchestrator", "orchestrator", PrincipalKind::Service, &["agent", "assert_agent_attributes"], &["*"]);
    keys.save();
    let audit = AuditServer::start(audit_config(&sandbox, &keys, "127.0.0.1:0")).await.unwrap();
    let engine = start_engine(&sandbox, &keys, &audit.url()).await;
    Stack { sandbox, keys, audit, engine }
}

async fn start_engine(sandbox: &Sandbox, keys: &Keys, audit_url: &str) -> PolicyEngine {
    let config = sandbox.secured_config(keys, audit_url, "");
    PolicyEngine::start(config).await.unwrap()
}

fn number(n: f64) -> prost_types::Value {
    prost_types::Value { kind: Some(Kind::NumberValue(n)) }
}

fn text(s: &str) -> prost_types::Value {
    prost_types::Value { kind: Some(Kind::StringValue(s.into())) }
}

/// Params nested `levels` deep (`{"x": {"x": ... 1}}`).
fn nested(levels: usize) -> prost_types::Struct {
    let mut value = prost_types::Struct { fields: [("x".to_string(), number(1.0))].into() };
    for _ in 1..levels {
        value = prost_types::Struct {
            fields: [("x".to_string(), prost_types::Value { kind: Some(Kind::StructValue(value)) })].into(),
        };
    }
    value
}

fn ask(action: &str, params: prost_types::Struct, correlation: &str) -> pb::EvaluateRequest {
    pb::EvaluateRequest {
        agent: Some(pb::Agent { id: "support-bot".into(), confidence: 0.9, ..Default::default() }),
        action: Some(pb::Action { r#type: action.into(), params: Some(params), ..Default::default() }),
        correlation_id: correlation.into(),
        ..Default::default()
    }
}

impl Stack {
    async fn evaluate(&self, token: &str, request: pb::EvaluateRequest) -> Result<pb::EvaluateResponse, tonic::Status> {
        let mut client =
            PolicyServiceClient::new(channel(&self.engine.url()).await).max_encoding_message_size(64 * 1024 * 1024);
        client.evaluate(bearer(tonic::Request::new(request), self.keys.token(token))).await.map(|r| r.into_inner())
    }

    /// The audit log's records of `correlation`, once there are `wanted`.
    async fn trail(&self, correlation: &str, wanted: usize) -> Vec<audit::AuditRecord> {
        trail(&self.audit.url(), self.keys.token("auditor"), correlation, wanted).await
    }
}

async fn trail(url: &str, token: &str, correlation: &str, wanted: usize) -> Vec<audit::AuditRecord> {
    let client = AuditServiceClient::new(channel(url).await);
    let token = token.to_owned();
    eventually(Duration::from_secs(30), || {
        let (mut client, token) = (client.clone(), token.clone());
        async move {
            // Pages end by count or by bytes (at 2 MiB): read them all.
            let (mut records, mut page_token) = (Vec::new(), String::new());
            loop {
                let query = audit::QueryRequest {
                    correlation_id: correlation.into(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                };
                let page = client.query(bearer(tonic::Request::new(query), &token)).await.ok()?.into_inner();
                records.extend(page.records);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            (records.len() >= wanted).then_some(records)
        }
    })
    .await
}

fn refused_on(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = WardenError::from_status(status).violations.into_iter().map(|v| v.field).collect();
    assert!(fields.iter().any(|f| f == field), "expected {field}, got {fields:?}: {status:?}");
}

#[tokio::test]
async fn non_finite_numbers_are_refused_at_the_edge_and_the_record_goes_on() {
    let stack = stack().await;
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let params = prost_types::Struct { fields: [("amount".to_string(), number(bad))].into() };
        let refused = stack.evaluate("agent", ask("issue_refund", params, "bad")).await.unwrap_err();
        refused_on(&refused, "action.params.amount");
    }
    // -Infinity is never "not over 1000": it never reaches a rule. A later
    // decision reaches the audit log as ever.
    let params = prost_types::Struct { fields: [("amount".to_string(), number(10.0))].into() };
    let fine = stack.evaluate("agent", ask("issue_refund", params, "after-nan")).await.unwrap();
    assert_eq!(fine.effect(), pb::Effect::Allow);
    let records = stack.trail("after-nan", 1).await;
    assert_eq!(records[0].event.as_ref().unwrap().event_id, fine.decision_id);
}

#[tokio::test]
async fn the_largest_request_the_engine_accepts_is_recorded_whole() {
    let stack = stack().await;
    // 60,000 bytes of params and 64 labels of 1,000 bytes (asserted by a
    // trusted orchestrator: agents get the registry's labels).
    let params = prost_types::Struct { fields: [("blob".to_string(), text(&"p".repeat(60_000)))].into() };
    let mut request = ask("send_email", params, "largest");
    let agent = request.agent.as_mut().unwrap();
    agent.labels = (0..64).map(|i| (format!("label-{i:02}"), "l".repeat(1000))).collect();
    agent.roles = (0..64).map(|i| format!("role-{i:02}-{}", "r".repeat(100))).collect();
    let decision = stack.evaluate("orchestrator", request).await.unwrap();
    assert_eq!(decision.effect(), pb::Effect::Allow);
    let records = stack.trail("largest", 1).await;
    let payload = records[0].event.as_ref().unwrap().payload.clone().unwrap();
    let Some(Kind::StructValue(params)) = &payload.fields["params"].kind else { panic!("params") };
    assert_eq!(params.fields["blob"], text(&"p".repeat(60_000)));
}

#[tokio::test]
async fn params_at_the_depth_limit_are_readable_by_every_reader_and_deeper_is_refused() {
    let stack = stack().await;
    let limit = warden_contract::bounds::VALUE_DEPTH;
    refused_on(
        &stack.evaluate("agent", ask("send_email", nested(limit + 1), "too-deep")).await.unwrap_err(),
        "action.params",
    );
    // Deeper than protobuf decodes at all: refused as INVALID_ARGUMENT
    // (never INTERNAL, which a client would take for "unavailable").
    let refused = stack.evaluate("agent", ask("send_email", nested(200), "far-too-deep")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let decision = stack.evaluate("agent", ask("send_email", nested(limit), "deepest")).await.unwrap();
    let records = stack.trail("deepest", 1).await;
    assert_eq!(records[0].event.as_ref().unwrap().event_id, decision.decision_id);
    // wardenctl reads it back.
    let (code, out, err) = warden_tests::wardenctl::run(
        [
            "--audit-addr",
            &stack.audit.url(),
            "--api-key",
            stack.keys.token("auditor"),
            "-o",
            "json",
            "audit",
            "query",
            "--correlation-id",
            "deepest",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&decision.decision_id), "{out}");
    // So does Python's protobuf, when the CI's interpreter is there.
    if let Some(python) = warden_tests::python::interpreter() {
        let stubs = warden_tests::python::stubs(&python);
        let addr = stack.audit.url();
        let token = stack.keys.token("auditor");
        let script = warden_tests::python::audit_stub(&stubs, addr.trim_start_matches("http://"))
            + &format!(
                "page = stub.Query(audit_pb2.QueryRequest(correlation_id='deepest'), metadata=[('authorization', 'Bearer {token}')])\n\
                 print(page.records[0].event.event_id)\n"
            );
        // Not a blocking wait: the services answer on this test's runtime.
        let output = tokio::process::Command::new(&python).args(["-c", &script]).output().await.unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), decision.decision_id);
    }
}

#[tokio::test]
async fn params_with_an_empty_key_or_no_value_are_recorded_and_read_back() {
    let stack = stack().await;
    let params = prost_types::Struct {
        fields: [
            (String::new(), text("a param with no name")),
            ("unset".to_string(), prost_types::Value { kind: None }),
            ("null".to_string(), prost_types::Value { kind: Some(Kind::NullValue(0)) }),
            ("clé \"x\"".to_string(), text("")),
            ("long".to_string(), text(&"é".repeat(300))),
        ]
        .into(),
    };
    let decision = stack.evaluate("agent", ask("send_email", params.clone(), "odd-keys")).await.unwrap();
    let records = stack.trail("odd-keys", 1).await;
    let event = records[0].event.as_ref().unwrap();
    assert_eq!(event.event_id, decision.decision_id);
    let Some(Kind::StructValue(recorded)) = &event.payload.as_ref().unwrap().fields["params"].kind else {
        panic!("params")
    };
    // As sent, but that a value of no kind reads back as null: the audit
    // log keeps payloads as JSON, which has no "unset".
    let mut expected = params.clone();
    expected.fields.insert("unset".into(), prost_types::Value { kind: Some(Kind::NullValue(0)) });
    assert_eq!(recorded, &expected);
}

#[tokio::test]
async fn malformed_bytes_are_invalid_argument_and_the_sdk_does_not_fail_open() {
    let stack = stack().await;
    // An EvaluateRequest whose agent id is not UTF-8, as raw protobuf:
    // field 1 (agent) { field 1 (id): 0xff 0xfe }.
    let mut grpc = tonic::client::Grpc::new(channel(&stack.engine.url()).await);
    grpc.ready().await.unwrap();
    let request = bearer(tonic::Request::new(vec![0x0a_u8, 4, 0x0a, 2, 0xff, 0xfe]), stack.keys.token("agent"));
    let path = http::uri::PathAndQuery::from_static("/warden.policy.v1.PolicyService/Evaluate");
    let refused = grpc.unary(request, path, RawCodec).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // The SDK, even told to allow when the engine is unavailable, does not
    // allow what the engine refused as malformed.
    let config = warden_client::ClientConfig {
        when_unavailable: warden_client::WhenUnavailable::Allow,
        ..warden_client::ClientConfig::new(stack.engine.url()).api_key(stack.keys.token("agent"))
    };
    let client = warden_client::PolicyClient::new(config).unwrap();
    let deep = ask("send_email", nested(200), "sdk");
    match client.evaluate(deep).await {
        Err(error) => assert!(error.to_string().contains("decode"), "{error}"),
        Ok(decision) => assert_ne!(decision.effect, warden_client::Effect::Allow, "{decision:?}"),
    }
}

/// A codec that sends bytes as they are and reads an `EvaluateResponse`.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::EvaluateResponse;
    type Encoder = RawCodec;
    type Decoder = tonic_prost::ProstDecoder<pb::EvaluateResponse>;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

#[tokio::test]
async fn far_future_times_are_refused_and_cannot_move_anyones_clock() {
    let stack = stack().await;
    let year_3000 = prost_types::Timestamp { seconds: 32_503_680_000, nanos: 0 };
    let mut dated = ask("send_email", prost_types::Struct::default(), "future");
    dated.time = Some(year_3000);
    refused_on(&stack.evaluate("agent", dated.clone()).await.unwrap_err(), "time");
    // Not even a principal trusted to assert the time gets past the audit
    // service's bound into the future.
    let mut audit = AuditServiceClient::new(channel(&stack.audit.url()).await);
    let event = audit::AuditEvent {
        event_type: "action_completed".into(),
        agent_id: "support-bot".into(),
        time: Some(year_3000),
        ..Default::default()
    };
    let refused = audit
        .append(bearer(tonic::Request::new(audit::AppendRequest { events: vec![event] }), stack.keys.token("agent")))
        .await
        .unwrap_err();
    refused_on(&refused, "events[0].time");
}

#[tokio::test]
async fn an_agent_cannot_take_an_id_a_service_will_use() {
    let stack = stack().await;
    let mut audit = AuditServiceClient::new(channel(&stack.audit.url()).await);
    // The agent learns its decision's id before the decision is shipped,
    // and appends an outcome under it.
    let decision = stack.evaluate("agent", ask("send_email", prost_types::Struct::default(), "hijack")).await.unwrap();
    let outcome = audit::AuditEvent {
        event_id: decision.decision_id.clone(),
        event_type: "action_completed".into(),
        correlation_id: "hijack".into(),
        agent_id: "support-bot".into(),
        ..Default::default()
    };
    let receipt = audit
        .append(bearer(tonic::Request::new(audit::AppendRequest { events: vec![outcome] }), stack.keys.token("agent")))
        .await
        .unwrap()
        .into_inner()
        .receipts
        .remove(0);
    assert_eq!(receipt.event_id, format!("agent:support-bot:{}", decision.decision_id));
    // The decision is recorded under its own id all the same.
    let records = stack.trail("hijack", 2).await;
    let decision_event = records.iter().filter_map(|r| r.event.as_ref()).find(|e| e.event_id == decision.decision_id);
    assert_eq!(decision_event.map(|e| e.event_type.as_str()), Some("policy_evaluation"));
    // A service's id with other content: ALREADY_EXISTS, nothing stored.
    let forged = audit::AuditEvent {
        event_id: decision.decision_id.clone(),
        event_type: "policy_evaluation".into(),
        correlation_id: "hijack".into(),
        payload: Some(prost_types::Struct { fields: [("effect".to_string(), text("allow"))].into() }),
        ..Default::default()
    };
    let refused = audit
        .append(bearer(tonic::Request::new(audit::AppendRequest { events: vec![forged] }), stack.keys.token("service")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert_eq!(stack.trail("hijack", 2).await.len(), 2);
}

/// An outage's backlog of 12 KiB decisions (600 here, more than one
/// default-sized gRPC message holds; `WARDEN_BACKLOG_DECISIONS=100000` for
/// the issue's figure) drains when the audit service returns, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_decisions_drains_exactly_once() {
    let count: usize = std::env::var("WARDEN_BACKLOG_DECISIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(600);
    let sandbox = Sandbox::new(&[("policies.yaml", POLICIES)]);
    let keys = identity::keys(sandbox.data.path());
    // The audit service's port, with nothing on it yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let mut config = sandbox.secured_config(&keys, &url, "");
    config.decision_log.outbox_cap = count as u64 + 1000;
    let engine = PolicyEngine::start(config).await.unwrap();
    let client = PolicyServiceClient::new(channel(&engine.url()).await);
    let params = prost_types::Struct { fields: [("note".to_string(), text(&"n".repeat(12 * 1024)))].into() };
    // 16 agents' worth of requests at once.
    let mut asking = Vec::new();
    for worker in 0..16 {
        let (mut client, params, token) = (client.clone(), params.clone(), keys.token("agent").to_owned());
        asking.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (worker..count).step_by(16) {
                let request = bearer(tonic::Request::new(ask("send_email", params.clone(), "backlog")), &token);
                ids.push(client.evaluate(request).await.unwrap().into_inner().decision_id);
            }
            ids
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for worker in asking {
        ids.extend(worker.await.unwrap());
    }
    assert_eq!(ids.len(), count);
    let started = std::time::Instant::now();
    let audit = AuditServer::start(audit_config(&sandbox, &keys, &format!("127.0.0.1:{port}"))).await.unwrap();
    let mut auditor = AuditServiceClient::new(channel(&audit.url()).await).max_decoding_message_size(64 << 20);
    let token = keys.token("auditor").to_owned();
    // Wait for the log to hold them all (the checkpoint is cheap to read),
    // then read every record once.
    let deadline = std::time::Instant::now() + Duration::from_secs(60 + count as u64 / 100);
    loop {
        let checkpoint =
            auditor.get_checkpoint(bearer(tonic::Request::new(audit::GetCheckpointRequest {}), &token)).await;
        if checkpoint.is_ok_and(|c| c.into_inner().tree_size >= count as u64) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = started.elapsed();
    let export = audit::ExportRequest { from_sequence: 0, to_sequence: 0, ..Default::default() };
    let mut stream = auditor.export(bearer(tonic::Request::new(export), &token)).await.unwrap().into_inner();
    let mut recorded = Vec::new();
    while let Some(record) = futures::StreamExt::next(&mut stream).await {
        let event = record.unwrap().event.unwrap();
        if event.event_type == "policy_evaluation" {
            recorded.push(event.event_id);
        }
    }
    let unique: std::collections::HashSet<String> = recorded.iter().cloned().collect();
    assert_eq!(recorded.len(), count, "each exactly once");
    assert_eq!(unique, ids);
    eprintln!("{count} decisions of 12 KiB drained in {drained:?}");
    engine.shutdown().await;
    audit.shutdown().await;
}

/// The approval service's outbox: an event the audit service refuses for
/// good (a replica whose clock runs two hours ahead dates it in the
/// future) goes to the dead letters, the rest is delivered, `wardenctl
/// dead-letters` lists it, and once the receiver accepts it (its bound is
/// raised) a replay delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_event_refused_for_good_waits_in_the_dead_letters_until_replayed() {
    use warden_approval::approvals::Clock;
    use warden_approval::{ApprovalConfig, ApprovalServer};
    use warden_proto::approval::v1 as ap;
    use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
    let stack = stack().await;
    let mut config = ApprovalConfig::for_tests(stack.sandbox.data.path().join("approval"));
    config.auth = stack.keys.auth();
    config.audit_url = stack.audit.url();
    config.outbound.credential = stack.keys.token("service").into();
    config.outbox_interval = Duration::from_millis(20);
    let clock = Clock::system();
    clock.advance(Duration::from_secs(2 * 3600));
    let approval = ApprovalServer::start_with_clock(config, clock).await.unwrap();
    let mut client = ApprovalServiceClient::new(channel(&approval.url()).await);
    let create = ap::CreateApprovalRequest {
        agent_id: "support-bot".into(),
        action: Some(ap::Action { r#type: "issue_refund".into(), ..Default::default() }),
        correlation_id: "skewed".into(),
        ..Default::default()
    };
    client.create_approval(bearer(tonic::Request::new(create), stack.keys.token("service"))).await.unwrap();
    // The refusal is recorded (dated by the real clock), the event is not.
    let notice = stack.trail("skewed", 1).await;
    let notice = notice[0].event.as_ref().unwrap();
    assert_eq!(notice.event_type, "dead_lettered");
    let wardenctl = |args: &[&str]| {
        let mut all: Vec<String> = ["--approval-addr", &approval.url(), "--api-key", stack.keys.token("admin")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        warden_tests::wardenctl::run(all)
    };
    let (code, out, err) = wardenctl(&["-o", "json", "dead-letters", "list", "--service", "approval"]).await;
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["total"], 1, "{out}");
    assert_eq!(listed["dead_letters"][0]["event_type"], "approval_requested");
    assert!(listed["dead_letters"][0]["reason"].as_str().unwrap().contains("max_future_skew"), "{out}");
    // Fixed at the receiver: the audit service accepts two hours ahead.
    let Stack { sandbox, keys, audit, engine } = stack;
    audit.shutdown().await;
    let mut relaxed = audit_config(&sandbox, &keys, "127.0.0.1:0");
    relaxed.max_future_skew = Duration::from_secs(3 * 3600);
    let audit = AuditServer::start(relaxed).await.unwrap();
    // (The approval service delivers to the new address after a restart.)
    approval.shutdown().await;
    let mut config = ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    config.auth = keys.auth();
    config.audit_url = audit.url();
    config.outbound.credential = keys.token("service").into();
    config.outbox_interval = Duration::from_millis(20);
    let approval = ApprovalServer::start(config).await.unwrap();
    let mut args: Vec<String> =
        ["--approval-addr", &approval.url(), "--api-key", keys.token("admin")].iter().map(|s| s.to_string()).collect();
    args.extend(["dead-letters", "replay", "--service", "approval"].iter().map(|s| s.to_string()));
    let (code, out, err) = warden_tests::wardenctl::run(args).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 dead letter(s) back"), "{out}");
    let records = trail(&audit.url(), keys.token("auditor"), "skewed", 2).await;
    assert!(records.iter().any(|r| r.event.as_ref().unwrap().event_type == "approval_requested"));
    approval.shutdown().await;
    engine.shutdown().await;
    audit.shutdown().await;
}

/// Webhook deliveries follow no redirects: a receiver answering 307 to
/// another address does not get the body (and its signature) sent there.
#[tokio::test]
async fn notifications_follow_no_redirect_and_reach_no_link_local_address() {
    use warden_approval::{ApprovalConfig, ApprovalServer};
    use warden_proto::approval::v1 as ap;
    use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
    let sandbox = Sandbox::new(&[]);
    let first = warden_testkit::Receiver::start().await;
    let elsewhere = warden_testkit::Receiver::start().await;
    first.script([warden_testkit::Answer::Redirect(elsewhere.url.clone())]);
    let routes = sandbox.data.path().join("routes.yaml");
    std::fs::write(
        &routes,
        format!(
            "receivers:\n  - name: hook\n    webhook: {{ url: \"{}\" }}\n  - name: metadata\n    webhook: {{ url: \"http://169.254.169.254/latest/meta-data/\" }}\nroutes:\n  - name: all\n    reviewers: [\"role:approver\"]\n    notify: [hook, metadata]\n",
            first.url
        ),
    )
    .unwrap();
    let mut config = ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    config.routes = routes;
    config.outbox_interval = Duration::from_millis(20);
    let approval = ApprovalServer::start(config).await.unwrap();
    let mut client = ApprovalServiceClient::new(channel(&approval.url()).await);
    let create = ap::CreateApprovalRequest {
        agent_id: "support-bot".into(),
        action: Some(ap::Action { r#type: "issue_refund".into(), ..Default::default() }),
        ..Default::default()
    };
    client.create_approval(create).await.unwrap();
    eventually(Duration::from_secs(10), || async { (first.attempts() >= 1).then_some(()) }).await;
    // Let the shipper run a few more passes: the redirect is not followed
    // and not retried, and the metadata address is never dialled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(elsewhere.attempts(), 0, "the body was sent where the redirect pointed");
    assert_eq!(first.attempts(), 1, "a redirect is an answer, not retried");
    approval.shutdown().await;
}
