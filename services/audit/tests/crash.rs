//! Kill the audit process (SIGKILL) while clients append: after a restart
//! every acknowledged event is there, nothing is half-written, and the log
//! verifies.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;

fn spawn(data: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warden-audit"))
        // Durability, not identity, is under test here.
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "", "--insecure-no-auth"])
        .arg("--data-dir")
        .arg(data)
        .env("WARDEN__TELEMETRY__LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warden-audit")
}

async fn connect(port: u16) -> AuditServiceClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await
        {
            let mut client = AuditServiceClient::new(channel);
            if client.get_checkpoint(audit::GetCheckpointRequest {}).await.is_ok() {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "warden-audit did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = spawn(data.path(), port);
    let client = connect(port).await;

    let acknowledged: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut producers = Vec::new();
    for producer in 0..4 {
        let (mut client, acknowledged) = (client.clone(), acknowledged.clone());
        producers.push(tokio::spawn(async move {
            for batch in 0.. {
                let events: Vec<audit::AuditEvent> = (0..10)
                    .map(|i| audit::AuditEvent {
                        event_id: format!("p{producer}-b{batch}-{i}"),
                        event_type: "action_completed".into(),
                        agent_id: format!("agent-{producer}"),
                        payload: Some(prost_types::Struct {
                            fields: [(
                                "blob".to_string(),
                                prost_types::Value {
                                    kind: Some(prost_types::value::Kind::StringValue("x".repeat(300))),
                                },
                            )]
                            .into(),
                        }),
                        ..Default::default()
                    })
                    .collect();
                match client.append(audit::AppendRequest { events }).await {
                    Ok(response) => {
                        let mut acked = acknowledged.lock().unwrap();
                        for receipt in response.into_inner().receipts {
                            acked.insert(receipt.event_id, receipt.sequence);
                        }
                    }
                    // The process is gone.
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill it mid-stream, without warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 400 {
        assert!(Instant::now() < deadline, "appends did not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for producer in producers {
        producer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let mut child = spawn(data.path(), port);
    let mut client = connect(port).await;
    let mut stored: HashMap<String, u64> = HashMap::new();
    let mut token = String::new();
    let mut expected_sequence = 0;
    loop {
        let page = client
            .query(audit::QueryRequest { page_size: 1000, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        for record in page.records {
            assert_eq!(record.sequence, expected_sequence, "the log has a gap");
            expected_sequence += 1;
            let event = record.event.unwrap();
            assert!(!record.payload_purged, "an event without its payload: half-written");
            stored.insert(event.event_id, record.sequence);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for (event_id, sequence) in &acknowledged {
        assert_eq!(stored.get(event_id), Some(sequence), "acknowledged event {event_id} lost or moved");
    }
    let report = client.verify(audit::VerifyRequest::default()).await.unwrap().into_inner();
    assert!(report.ok, "{report:?}");
    assert!(report.verified as usize >= acknowledged.len());
    child.kill().unwrap();
    child.wait().unwrap();
}
