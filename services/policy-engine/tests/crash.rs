//! Kill the policy engine (SIGKILL) while agents ask it for decisions:
//! every decision it answered is in its journal exactly once, and after a
//! restart every one of them reaches the audit service.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tonic::{Request, Response, Status};
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_server::{AuditService, AuditServiceServer};
use warden_proto::policy::v1 as pb;
use warden_proto::policy::v1::policy_service_client::PolicyServiceClient;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(data: &std::path::Path, policies: &std::path::Path, port: u16, audit_port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warden-policy-engine"))
        // Durability, not identity, is under test here.
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "", "--insecure-no-auth"])
        .args(["--audit-url", &format!("http://127.0.0.1:{audit_port}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--policies")
        .arg(policies)
        .env("WARDEN__TELEMETRY__LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warden-policy-engine")
}

async fn connect(port: u16) -> PolicyServiceClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await
        {
            return PolicyServiceClient::new(channel);
        }
        assert!(Instant::now() < deadline, "warden-policy-engine did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request(i: usize) -> pb::EvaluateRequest {
    pb::EvaluateRequest {
        agent: Some(pb::Agent { id: format!("agent-{}", i % 5), confidence: 0.9, ..Default::default() }),
        action: Some(pb::Action { r#type: "send_email".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Every decision id in the journal, as many times as it is there.
fn journal_ids(dir: &std::path::Path) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (journal, mut reader, _) = warden_journal::Journal::open(dir, Default::default()).unwrap();
        let mut ids = Vec::new();
        while reader.pending() > 0 && ids.len() < journal.pending() as usize {
            for record in reader.next_batch(10_000).await.unwrap() {
                let (&length, rest) = record.payload.split_first().unwrap();
                let event = audit::AuditEvent::decode(&rest[length as usize..]).unwrap();
                ids.push(event.event_id);
            }
        }
        ids
    })
}

/// An audit service that records what it is sent.
#[derive(Default, Clone)]
struct Receiver {
    appended: Arc<Mutex<HashMap<String, usize>>>,
}

type Records = Pin<Box<dyn futures::Stream<Item = Result<audit::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for Receiver {
    async fn append(&self, request: Request<audit::AppendRequest>) -> Result<Response<audit::AppendResponse>, Status> {
        let mut appended = self.appended.lock().unwrap();
        for event in request.into_inner().events {
            *appended.entry(event.event_id).or_default() += 1;
        }
        Ok(Response::new(audit::AppendResponse::default()))
    }
    async fn query(&self, _: Request<audit::QueryRequest>) -> Result<Response<audit::QueryResponse>, Status> {
        Err(Status::unimplemented("a test receiver"))
    }
    async fn get_checkpoint(
        &self,
        _: Request<audit::GetCheckpointRequest>,
    ) -> Result<Response<audit::Checkpoint>, Status> {
        Err(Status::unimplemented("a test receiver"))
    }
    async fn get_inclusion_proof(
        &self,
        _: Request<audit::GetInclusionProofRequest>,
    ) -> Result<Response<audit::InclusionProof>, Status> {
        Err(Status::unimplemented("a test receiver"))
    }
    async fn get_consistency_proof(
        &self,
        _: Request<audit::GetConsistencyProofRequest>,
    ) -> Result<Response<audit::ConsistencyProof>, Status> {
        Err(Status::unimplemented("a test receiver"))
    }
    async fn verify(&self, _: Request<audit::VerifyRequest>) -> Result<Response<audit::VerifyResponse>, Status> {
        Err(Status::unimplemented("a test receiver"))
    }
    type ExportStream = Records;
    async fn export(&self, _: Request<audit::ExportRequest>) -> Result<Response<Records>, Status> {
        Err(Status::unimplemented("a test receiver"))
    }
    type SubscribeStream = Records;
    async fn subscribe(&self, _: Request<audit::SubscribeRequest>) -> Result<Response<Records>, Status> {
        Err(Status::unimplemented("a test receiver"))
    }
    async fn forget_subject(
        &self,
        _: Request<audit::ForgetSubjectRequest>,
    ) -> Result<Response<audit::ForgetSubjectResponse>, Status> {
        Err(Status::unimplemented("a test receiver"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_decision_survives_a_kill_and_is_shipped_once() {
    let data = tempfile::tempdir().unwrap();
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("p.yaml"), "rules:\n  - name: ok\n    effect: allow\n").unwrap();
    let (port, audit_port) = (free_port(), free_port());
    // Nothing listens on the audit port yet: every decision stays in the journal.
    let mut child = spawn(data.path(), policies.path(), port, audit_port);
    let client = connect(port).await;

    let answered: Arc<Mutex<HashSet<String>>> = Arc::default();
    let killed: Arc<AtomicBool> = Arc::default();
    let mut agents = Vec::new();
    for agent in 0..16 {
        let (mut client, answered, killed) = (client.clone(), answered.clone(), killed.clone());
        agents.push(tokio::spawn(async move {
            for i in 0.. {
                match client.evaluate(request(agent * 1_000_000 + i)).await {
                    Ok(response) => {
                        answered.lock().unwrap().insert(response.into_inner().decision_id);
                    }
                    // The process is gone. Where the kill caught the call
                    // decides what hyper reports (a refused connection, a
                    // reset or a cancelled stream); before it, nothing fails.
                    Err(_) if killed.load(Ordering::SeqCst) => return,
                    Err(status) => panic!("{status:?}"),
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.lock().unwrap().len() < 2000 {
        assert!(Instant::now() < deadline, "decisions did not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Mid-write, without warning: 16 decisions are in flight.
    killed.store(true, Ordering::SeqCst);
    child.kill().unwrap();
    child.wait().unwrap();
    for agent in agents {
        agent.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();

    let journal = data.path().join("decision-log");
    let ids = tokio::task::spawn_blocking(move || journal_ids(&journal)).await.unwrap();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "a decision is in the journal twice");
    let missing: Vec<&String> = answered.difference(&unique).collect();
    assert!(missing.is_empty(), "{} answered decisions lost, e.g. {:?}", missing.len(), missing.first());

    // The audit service comes up and the engine restarts: everything ships, once.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", audit_port)).await.unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuditServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut child = spawn(data.path(), policies.path(), port, audit_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.appended.lock().unwrap().len() < unique.len() {
        assert!(Instant::now() < deadline, "the journal did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let appended = receiver.appended.lock().unwrap().clone();
    assert!(appended.values().all(|&n| n == 1), "a decision shipped twice");
    assert!(answered.iter().all(|id| appended.contains_key(id)));
    child.kill().unwrap();
    child.wait().unwrap();
    server.abort();
}
