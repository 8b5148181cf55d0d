//! The contract for what may be recorded, as a property: requests generated
//! at and beyond every bound of `warden_contract` are either refused by
//! `Evaluate` as INVALID_ARGUMENT, or accepted, and then stored by the
//! audit service and readable by every reader: `Query`, `Export`,
//! `wardenctl audit query` and the Python client.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use prost_types::value::Kind;
use tonic::Code;
use warden_auth::Kind as PrincipalKind;
use warden_contract::bounds;
use warden_policy_engine::PolicyEngine;
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_proto::policy::v1 as pb;
use warden_proto::policy::v1::policy_service_client::PolicyServiceClient;
use warden_tests::identity::{self, bearer};
use warden_tests::{Sandbox, channel, eventually};

const CORRELATION: &str = "contract";

/// A value nested `depth` levels, ending in `leaf`.
fn nest(depth: usize, leaf: prost_types::Value, list: bool) -> prost_types::Value {
    let mut value = leaf;
    for _ in 0..depth {
        value = if list {
            prost_types::Value { kind: Some(Kind::ListValue(prost_types::ListValue { values: vec![value] })) }
        } else {
            prost_types::Value {
                kind: Some(Kind::StructValue(prost_types::Struct { fields: [("k".to_string(), value)].into() })),
            }
        };
    }
    value
}

fn leaf() -> impl Strategy<Value = prost_types::Value> {
    prop_oneof![
        4 => any::<f64>().prop_filter("finite", |n| n.is_finite()).prop_map(Kind::NumberValue),
        1 => Just(Kind::NumberValue(f64::NAN)),
        1 => Just(Kind::NumberValue(f64::NEG_INFINITY)),
        2 => Just(Kind::NumberValue(f64::MAX)),
        4 => "\\PC{0,40}".prop_map(Kind::StringValue),
        2 => (0usize..3).prop_map(|n| Kind::StringValue("\0".repeat(n))),
        2 => any::<bool>().prop_map(Kind::BoolValue),
        2 => Just(Kind::NullValue(0)),
    ]
    .prop_map(|kind| prost_types::Value { kind: Some(kind) })
}

/// Sizes: small, just under or at a bound, and (less often) just over it.
fn around(bound: usize) -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0..=bound.min(8), 3 => (bound.saturating_sub(8))..=bound, 1 => (bound + 1)..=(bound + 8)]
}

fn request() -> impl Strategy<Value = pb::EvaluateRequest> {
    let params = (
        prop::collection::vec(
            (
                "[a-z]{1,6}",
                leaf(),
                prop_oneof![8 => 0usize..=bounds::VALUE_DEPTH, 1 => (bounds::VALUE_DEPTH + 1)..=(bounds::VALUE_DEPTH + 2)],
                any::<bool>(),
            ),
            0..4,
        ),
        around(bounds::PARAMS_BYTES),
    );
    let labels = (around(bounds::LABELS), around(bounds::LABEL_VALUE_BYTES));
    let roles = (around(bounds::ROLES), around(bounds::ROLE_BYTES));
    let text = (around(bounds::ID_BYTES), around(bounds::RESOURCE_BYTES), around(bounds::NAME_BYTES));
    (params, labels, roles, text, prop::option::of(-1_000i64..=1_000)).prop_map(
        |((values, filler), (label_count, label_bytes), (role_count, role_bytes), (id, resource, name), skew)| {
            let mut fields: BTreeMap<String, prost_types::Value> = values
                .into_iter()
                .map(|(key, leaf, depth, list)| (key, nest(depth.saturating_sub(1), leaf, list)))
                .collect();
            // Filler that brings the params' encoding near the limit.
            fields.insert(
                "filler".into(),
                prost_types::Value { kind: Some(Kind::StringValue("f".repeat(filler.saturating_sub(32)))) },
            );
            pb::EvaluateRequest {
                agent: Some(pb::Agent {
                    id: "support-bot".into(),
                    name: "n".repeat(name),
                    roles: (0..role_count)
                        .map(|i| format!("{i:03}{}", "r".repeat(role_bytes.saturating_sub(3))))
                        .collect(),
                    labels: (0..label_count).map(|i| (format!("l{i:03}"), "v".repeat(label_bytes))).collect(),
                    confidence: 0.9,
                }),
                action: Some(pb::Action {
                    r#type: "probe".into(),
                    resource: "r".repeat(resource),
                    estimated_cost: 1.0,
                    params: Some(prost_types::Struct { fields: fields.into_iter().collect() }),
                }),
                // Seconds from now, or the engine's clock.
                time: skew.map(|s| {
                    prost_types::Timestamp::from(
                        std::time::SystemTime::now() + Duration::from_secs(s.unsigned_abs()) * u32::from(s >= 0)
                            - Duration::from_secs(s.unsigned_abs()) * u32::from(s < 0),
                    )
                }),
                correlation_id: format!("{CORRELATION}{}", "c".repeat(id.saturating_sub(CORRELATION.len()))),
                approval_id: String::new(),
            }
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_evaluate_accepts_every_reader_reads_back() {
    let sandbox = Sandbox::new(&[("p.yaml", "rules:\n  - name: all\n    effect: allow\n")]);
    let mut keys = identity::keys(sandbox.data.path());
    // An orchestrator asserts the generated roles, labels, names and times.
    let roles = ["agent", "assert_agent_attributes", "assert_time"];
    keys.add("orchestrator", "orchestrator", PrincipalKind::Service, &roles, &["*"]);
    keys.save();
    let audit = keys.audit(&sandbox.data.path().join("audit")).await;
    let config = sandbox.secured_config(&keys, &audit.url(), "");
    let engine = PolicyEngine::start(config).await.unwrap();
    let mut client = PolicyServiceClient::new(channel(&engine.url()).await).max_encoding_message_size(16 << 20);

    let mut runner = proptest::test_runner::TestRunner::default();
    let strategy = request();
    let (mut accepted, mut refused) = (HashSet::new(), 0);
    for _ in 0..96 {
        let request = strategy.new_tree(&mut runner).unwrap().current();
        match client.evaluate(bearer(tonic::Request::new(request.clone()), keys.token("orchestrator"))).await {
            Ok(response) => {
                accepted.insert(response.into_inner().decision_id);
            }
            Err(status) => {
                let summary = |r: &pb::EvaluateRequest| {
                    let a = r.agent.as_ref().unwrap();
                    format!(
                        "roles {}x{}, labels {}, name {}, resource {}, correlation {}, params {} bytes, time {:?}",
                        a.roles.len(),
                        a.roles.first().map_or(0, |r| r.len()),
                        a.labels.len(),
                        a.name.len(),
                        r.action.as_ref().unwrap().resource.len(),
                        r.correlation_id.len(),
                        prost::Message::encoded_len(r.action.as_ref().unwrap().params.as_ref().unwrap()),
                        r.time
                    )
                };
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?} for {}", summary(&request));
                refused += 1;
            }
        }
    }
    assert!(
        accepted.len() >= 8 && refused >= 8,
        "the cases reach both sides: {} accepted, {refused} refused",
        accepted.len()
    );

    // Query (paged by count and bytes) finds every accepted decision.
    let mut auditor = AuditServiceClient::new(channel(&audit.url()).await);
    let token = keys.token("auditor").to_owned();
    let queried: HashSet<String> = eventually(Duration::from_secs(30), || {
        let (mut auditor, token, accepted) = (auditor.clone(), token.clone(), accepted.clone());
        async move {
            let (mut ids, mut page_token) = (HashSet::new(), String::new());
            loop {
                let query = audit::QueryRequest {
                    event_types: vec!["policy_evaluation".into()],
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                };
                let page = auditor.query(bearer(tonic::Request::new(query), &token)).await.ok()?.into_inner();
                ids.extend(page.records.into_iter().map(|r| r.event.unwrap().event_id));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if ids != accepted {
                let missing = accepted.difference(&ids).count();
                let extra = ids.difference(&accepted).count();
                eprintln!("query: {} of {} accepted, {missing} missing, {extra} extra", ids.len(), accepted.len());
            }
            (ids == accepted).then_some(ids)
        }
    })
    .await;
    // Export streams them, each record decoding.
    let export = audit::ExportRequest { from_sequence: 0, to_sequence: 0, ..Default::default() };
    let mut stream = auditor.export(bearer(tonic::Request::new(export), &token)).await.unwrap().into_inner();
    let mut exported = HashSet::new();
    while let Some(record) = stream.next().await {
        let event = record.unwrap().event.unwrap();
        if event.event_type == "policy_evaluation" {
            exported.insert(event.event_id);
        }
    }
    assert_eq!(exported, queried);
    // wardenctl reads every page.
    let args = [
        "--audit-addr",
        &audit.url(),
        "--api-key",
        &token,
        "-o",
        "json",
        "audit",
        "query",
        "--types",
        "policy_evaluation",
        "--limit",
        "10000",
    ];
    let (code, out, err) = warden_tests::wardenctl::run(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, 0, "{err}");
    for id in &accepted {
        assert!(out.contains(id.as_str()), "wardenctl misses {id}");
    }
    // So does Python's protobuf.
    if let Some(python) = warden_tests::python::interpreter() {
        let stubs = warden_tests::python::stubs(&python);
        let addr = audit.url();
        let script = warden_tests::python::audit_stub(&stubs, addr.trim_start_matches("http://"))
            + &format!(
                "token, ids = '', set()\n\
                 while True:\n\
                 \x20   page = stub.Query(audit_pb2.QueryRequest(event_types=['policy_evaluation'], page_size=1000, page_token=token), metadata=[('authorization', 'Bearer {token}')])\n\
                 \x20   ids.update(r.event.event_id for r in page.records)\n\
                 \x20   token = page.next_page_token\n\
                 \x20   if not token: break\n\
                 print(len(ids))\n"
            );
        let output = tokio::process::Command::new(&python).args(["-c", &script]).output().await.unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), accepted.len().to_string());
    }
    engine.shutdown().await;
    audit.shutdown().await;
}
