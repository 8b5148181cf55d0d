//! The audit service over gRPC: appends, checkpoints that verify with the
//! published key, proofs, streams, and bad input.

use std::time::Duration;

use futures::StreamExt;
use tonic::Code;
use warden_errors::WardenError;
use warden_merkle::note::{Checkpoint, NoteVerifier};
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_tests::{channel, start_audit};

fn event(id: &str, agent: &str, kind: &str) -> audit::AuditEvent {
    audit::AuditEvent {
        event_id: id.into(),
        event_type: kind.into(),
        agent_id: agent.into(),
        correlation_id: format!("corr-{agent}"),
        actor: "tester".into(),
        ..Default::default()
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().expect("32-byte hash")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_checkpoints_and_proofs_over_grpc() {
    let data = tempfile::tempdir().unwrap();
    let server = start_audit(data.path(), "127.0.0.1:0").await;
    let mut client = AuditServiceClient::new(channel(&server.url()).await);
    let events: Vec<audit::AuditEvent> =
        (0..10).map(|i| event(&format!("e{i}"), &format!("a{}", i % 2), "action_completed")).collect();
    let receipts = client.append(audit::AppendRequest { events: events.clone() }).await.unwrap().into_inner().receipts;
    assert_eq!(receipts.iter().map(|r| r.sequence).collect::<Vec<_>>(), (0..10).collect::<Vec<u64>>());
    let again =
        client.append(audit::AppendRequest { events: events[..2].to_vec() }).await.unwrap().into_inner().receipts;
    assert!(again.iter().all(|r| r.duplicate));

    let checkpoint = client.get_checkpoint(audit::GetCheckpointRequest {}).await.unwrap().into_inner();
    assert_eq!(checkpoint.verifier_key, server.verifier_key);
    let verifier = NoteVerifier::parse(&checkpoint.verifier_key).unwrap();
    let head = Checkpoint::parse(verifier.verify(&checkpoint.note).unwrap()).unwrap();
    assert_eq!((head.size, head.root.to_vec()), (10, checkpoint.root_hash.clone()));
    assert!(checkpoint.note.starts_with("warden.local/audit\n10\n"));

    let proof = client
        .get_inclusion_proof(audit::GetInclusionProofRequest { sequence: 3, tree_size: 10 })
        .await
        .unwrap()
        .into_inner();
    let hashes: Vec<[u8; 32]> = proof.hashes.iter().map(|h| hash(h)).collect();
    assert_eq!(proof.leaf_hash, receipts[3].leaf_hash);
    warden_merkle::verify_inclusion(3, 10, &hash(&proof.leaf_hash), &hashes, &head.root).unwrap();

    client.append(audit::AppendRequest { events: vec![event("later", "a0", "action_completed")] }).await.unwrap();
    let newer = client.get_checkpoint(audit::GetCheckpointRequest {}).await.unwrap().into_inner();
    let consistency = client
        .get_consistency_proof(audit::GetConsistencyProofRequest { old_size: 10, new_size: 0 })
        .await
        .unwrap()
        .into_inner();
    let hashes: Vec<[u8; 32]> = consistency.hashes.iter().map(|h| hash(h)).collect();
    warden_merkle::verify_consistency(10, 11, &head.root, &hash(&newer.root_hash), &hashes).unwrap();

    let report = client.verify(audit::VerifyRequest::default()).await.unwrap().into_inner();
    assert!(report.ok && report.verified == 11, "{report:?}");

    let page = client
        .query(audit::QueryRequest { agent_id: "a1".into(), page_size: 3, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1, 3, 5]);
    let rest = client
        .query(audit::QueryRequest {
            agent_id: "a1".into(),
            page_size: 3,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.records.iter().map(|r| r.sequence).collect::<Vec<_>>(), [7, 9]);
    assert!(rest.next_page_token.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_subscribe_stream_the_log() {
    let data = tempfile::tempdir().unwrap();
    let server = start_audit(data.path(), "127.0.0.1:0").await;
    let mut client = AuditServiceClient::new(channel(&server.url()).await);
    let events: Vec<audit::AuditEvent> = (0..5).map(|i| event(&format!("e{i}"), "a", "approval_requested")).collect();
    client.append(audit::AppendRequest { events }).await.unwrap();

    let exported: Vec<u64> = client
        .export(audit::ExportRequest { from_sequence: 1, to_sequence: 4, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().sequence)
        .collect()
        .await;
    assert_eq!(exported, [1, 2, 3]);

    let mut live = client.subscribe(audit::SubscribeRequest { from_sequence: 3 }).await.unwrap().into_inner();
    assert_eq!(live.next().await.unwrap().unwrap().sequence, 3);
    assert_eq!(live.next().await.unwrap().unwrap().sequence, 4);
    // New events arrive as they are appended.
    client.append(audit::AppendRequest { events: vec![event("new", "b", "approval_granted")] }).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), live.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.sequence, 5);
    assert_eq!(next.event.unwrap().event_type, "approval_granted");
    server.shutdown().await;
}

/// A payload nested `levels` deep.
fn nested(levels: usize) -> prost_types::Struct {
    let mut value = prost_types::Struct::default();
    for _ in 0..levels {
        value = prost_types::Struct {
            fields: [(
                "x".to_string(),
                prost_types::Value { kind: Some(prost_types::value::Kind::StructValue(value)) },
            )]
            .into(),
        };
    }
    value
}

fn check_invalid(status: tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = WardenError::from_status(&status).violations.into_iter().map(|v| v.field).collect();
    assert!(fields.iter().any(|f| f == field), "expected {field}, got {fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_writes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = start_audit(data.path(), "127.0.0.1:0").await;
    let mut client = AuditServiceClient::new(channel(&server.url()).await);
    let nan = prost_types::Struct {
        fields: [("n".to_string(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)) })]
            .into(),
    };
    let cases = vec![
        (vec![], "events"),
        (vec![event("a", "x", "")], "events[0].event_type"),
        (
            vec![event("a", "x", "t"), audit::AuditEvent { payload: Some(nan), ..event("b", "x", "t") }],
            "events[1].payload.n",
        ),
        // Nested past what every reader may decode once it is wrapped.
        (vec![audit::AuditEvent { payload: Some(nested(25)), ..event("a", "x", "t") }], "events[0].payload"),
        // Nested past protobuf's own recursion limit: it does not decode.
        (vec![audit::AuditEvent { payload: Some(nested(40)), ..event("a", "x", "t") }], "events.payload"),
        // Dated far in the future, or past the year 9999.
        (
            vec![audit::AuditEvent {
                time: Some(prost_types::Timestamp::from(std::time::SystemTime::now() + Duration::from_secs(3600))),
                ..event("a", "x", "t")
            }],
            "events[0].time",
        ),
        (
            vec![audit::AuditEvent {
                time: Some(prost_types::Timestamp { seconds: 32_503_680_000_000, nanos: 0 }),
                ..event("a", "x", "t")
            }],
            "events[0].time",
        ),
        (vec![event(&"x".repeat(300), "x", "t")], "events[0].event_id"),
        (
            vec![audit::AuditEvent {
                time: Some(prost_types::Timestamp { seconds: 0, nanos: -1 }),
                ..event("a", "x", "t")
            }],
            "events[0].time",
        ),
        ((0..1001).map(|i| event(&i.to_string(), "x", "t")).collect(), "events"),
    ];
    for (events, field) in cases {
        check_invalid(client.append(audit::AppendRequest { events }).await.unwrap_err(), field);
    }
    check_invalid(
        client.query(audit::QueryRequest { page_token: "nonsense".into(), ..Default::default() }).await.unwrap_err(),
        "page_token",
    );
    check_invalid(
        client.query(audit::QueryRequest { page_size: 5000, ..Default::default() }).await.unwrap_err(),
        "page_size",
    );
    check_invalid(
        client.forget_subject(audit::ForgetSubjectRequest { subject: String::new() }).await.unwrap_err(),
        "subject",
    );
    let out_of_range =
        client.get_inclusion_proof(audit::GetInclusionProofRequest { sequence: 0, tree_size: 0 }).await.unwrap_err();
    assert_eq!(out_of_range.code(), Code::OutOfRange);
    let checkpoint = client.get_checkpoint(audit::GetCheckpointRequest {}).await.unwrap().into_inner();
    assert_eq!(checkpoint.tree_size, 0, "no rejected event was written");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_share_one_gap_free_log() {
    let Some(url) = warden_store::testing::postgres_url().await else { return };
    let start = |url: String| async move {
        let data = tempfile::tempdir().unwrap();
        let mut config = warden_audit::AuditConfig::for_tests(data.path());
        config.database_url = url;
        // The replicas share one signing identity, as a deployment would.
        config.signing_key =
            warden_merkle::note::NoteSigner::from_seed("warden.test/audit", [3; 32]).unwrap().private_key();
        config.master_key = "11".repeat(32);
        (warden_audit::AuditServer::start(config).await.unwrap(), data)
    };
    let (first, _a) = start(url.clone()).await;
    let (second, _b) = start(url).await;
    let clients =
        [AuditServiceClient::new(channel(&first.url()).await), AuditServiceClient::new(channel(&second.url()).await)];
    let mut tasks = Vec::new();
    for producer in 0..8 {
        let mut client = clients[producer % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut sequences = Vec::new();
            for batch in 0..10 {
                let events = (0..5).map(|k| event(&format!("p{producer}-{batch}-{k}"), "replicated", "t")).collect();
                let receipts = client.append(audit::AppendRequest { events }).await.unwrap().into_inner().receipts;
                sequences.extend(receipts.into_iter().map(|r| r.sequence));
            }
            sequences
        }));
    }
    let mut sequences = Vec::new();
    for task in tasks {
        sequences.extend(task.await.unwrap());
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (0..400).collect::<Vec<u64>>());
    let mut client = clients[1].clone();
    let report = client.verify(audit::VerifyRequest::default()).await.unwrap().into_inner();
    assert!(report.ok && report.verified == 400, "{report:?}");
    let a = clients[0].clone().get_checkpoint(audit::GetCheckpointRequest {}).await.unwrap().into_inner();
    let b = client.get_checkpoint(audit::GetCheckpointRequest {}).await.unwrap().into_inner();
    assert_eq!((a.tree_size, a.root_hash), (b.tree_size, b.root_hash));
    first.shutdown().await;
    second.shutdown().await;
}
