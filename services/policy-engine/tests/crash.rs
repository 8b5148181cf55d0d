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
    PolicyServiceClient::new(connect_channel(port).await)
}

async fn connect_channel(port: u16) -> tonic::transport::Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await
        {
            return channel;
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

/// An audit service that records what it is sent, and refuses for good
/// (INVALID_ARGUMENT) any call holding a decision whose correlation id is
/// `poison` while `refuse_poison` is set.
#[derive(Default, Clone)]
struct Receiver {
    appended: Arc<Mutex<HashMap<String, usize>>>,
    refuse_poison: Arc<AtomicBool>,
    /// Events of type `dead_lettered`, by the dead event's id.
    notices: Arc<Mutex<Vec<String>>>,
}

type Records = Pin<Box<dyn futures::Stream<Item = Result<audit::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for Receiver {
    async fn append(&self, request: Request<audit::AppendRequest>) -> Result<Response<audit::AppendResponse>, Status> {
        let events = request.into_inner().events;
        let poisoned = |e: &audit::AuditEvent| e.correlation_id == "poison" && e.event_type == "policy_evaluation";
        if self.refuse_poison.load(Ordering::SeqCst) && events.iter().any(poisoned) {
            return Err(Status::invalid_argument("events[0].payload: a poisoned event"));
        }
        let mut appended = self.appended.lock().unwrap();
        for event in events {
            if event.event_type == "dead_lettered" {
                let dead = event.payload.as_ref().and_then(|p| p.fields.get("dead_event_id")).cloned();
                if let Some(prost_types::value::Kind::StringValue(id)) = dead.and_then(|v| v.kind) {
                    self.notices.lock().unwrap().push(id);
                }
            }
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

fn dead_letter_files(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("decision-log-dead-letters"))
        .map(|entries| {
            entries.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "dead")).count()
        })
        .unwrap_or(0)
}

/// A decision the audit service refuses for good is dead-lettered, once,
/// across kills of the engine, and never holds up the decisions after it;
/// once the cause is fixed, a replay delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_decision_is_dead_lettered_once_across_a_kill_and_the_rest_ships() {
    use warden_proto::deadletter::v1 as dl;
    use warden_proto::deadletter::v1::dead_letter_service_client::DeadLetterServiceClient;
    let data = tempfile::tempdir().unwrap();
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("p.yaml"), "rules:\n  - name: ok\n    effect: allow\n").unwrap();
    let (port, audit_port) = (free_port(), free_port());
    let mut child = spawn(data.path(), policies.path(), port, audit_port);
    let mut client = connect(port).await;
    // 200 decisions while the audit service is down, the 100th poisoned.
    let mut answered = Vec::new();
    for i in 0..200 {
        let mut ask = request(i);
        if i == 100 {
            ask.correlation_id = "poison".into();
        }
        answered.push(client.evaluate(ask).await.unwrap().into_inner().decision_id);
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let receiver = Receiver::default();
    receiver.refuse_poison.store(true, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", audit_port)).await.unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuditServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let poisoned = answered[100].clone();
    let shipped = |receiver: &Receiver| {
        let appended = receiver.appended.lock().unwrap();
        answered.iter().filter(|id| appended.contains_key(*id)).count()
    };
    // Restart, and kill again as soon as the dead letter is written: the
    // restart after that writes it again under the same name, never twice.
    let mut child = spawn(data.path(), policies.path(), port, audit_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while dead_letter_files(data.path()) == 0 {
        assert!(Instant::now() < deadline, "the poisoned decision was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn(data.path(), policies.path(), port, audit_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while shipped(&receiver) < 199 || receiver.notices.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the rest did not ship: {} of 199", shipped(&receiver));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let appended = receiver.appended.lock().unwrap();
        assert!(!appended.contains_key(&poisoned));
        // (A kill between a delivery and the cursor's move sends a batch
        // again; the audit service keeps each event once.)
        assert!(
            answered.iter().filter(|id| **id != poisoned).all(|id| appended.contains_key(id)),
            "a decision is lost"
        );
    }
    assert_eq!(dead_letter_files(data.path()), 1);
    assert!(receiver.notices.lock().unwrap().iter().all(|id| *id == poisoned));

    // Listed; replayed while the cause remains, it comes back, once.
    let mut dead = DeadLetterServiceClient::new(connect_channel(port).await);
    let listed = dead.list_dead_letters(dl::ListDeadLettersRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.total, 1);
    assert_eq!(listed.dead_letters[0].event_id, poisoned);
    assert!(listed.dead_letters[0].reason.contains("InvalidArgument"), "{:?}", listed.dead_letters[0]);
    let replayed = dead.replay_dead_letters(dl::ReplayDeadLettersRequest::default()).await.unwrap().into_inner();
    assert_eq!(replayed.requeued, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead_letter_files(data.path()) != 1 {
        assert!(Instant::now() < deadline, "the replayed decision did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fixed: a replay delivers it, once.
    receiver.refuse_poison.store(false, Ordering::SeqCst);
    let id = dead.list_dead_letters(dl::ListDeadLettersRequest::default()).await.unwrap().into_inner().dead_letters[0]
        .id
        .clone();
    let replayed = dead.replay_dead_letters(dl::ReplayDeadLettersRequest { ids: vec![id] }).await.unwrap().into_inner();
    assert_eq!(replayed.requeued, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver.appended.lock().unwrap().contains_key(&poisoned) {
        assert!(Instant::now() < deadline, "the replayed decision was not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dead_letter_files(data.path()), 0);
    assert_eq!(receiver.appended.lock().unwrap()[&poisoned], 1);
    child.kill().unwrap();
    child.wait().unwrap();
    server.abort();
}
