//! The `warden.audit.v1.AuditService` gRPC handlers: input validation and
//! conversion. Errors become `tonic::Status` here and nowhere else.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};
use warden_errors::{Validator, to_status};
use warden_proto::audit::v1 as pb;
use warden_proto::audit::v1::audit_service_server::AuditService;

use crate::log::{AuditLog, EventInput, Record};
use crate::store::Filter;

/// Largest accepted sizes: the shared contract's
/// (`warden_contract::bounds`) for what an event holds.
pub mod limits {
    pub use warden_contract::bounds::{ID_BYTES, STRUCT_BYTES};
    pub const EVENTS_PER_APPEND: usize = 1000;
    pub const PAGE_SIZE: u32 = 1000;
    pub const DEFAULT_PAGE_SIZE: u32 = 100;
    pub const EVENT_TYPES: usize = 32;
}

/// Where event ids appended by agents live: an agent's own id `X` is
/// recorded as `agent:<agent principal>:X`, so no agent can take an id a
/// service will use (a decision's id, say, which the agent learns before
/// the decision is recorded).
pub const AGENT_ID_PREFIX: &str = "agent:";

#[derive(Debug, Clone)]
pub struct AuditServiceImpl {
    log: Arc<AuditLog>,
    auth: Arc<warden_auth::Auth>,
    /// How far into the future an event's time may be.
    max_future_skew: Duration,
    /// Becomes true when the server shuts down: live streams end, so a
    /// graceful shutdown never waits on a subscriber.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl AuditServiceImpl {
    pub fn new(log: Arc<AuditLog>, auth: Arc<warden_auth::Auth>, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        AuditServiceImpl { log, auth, max_future_skew: Duration::from_secs(300), stopping }
    }

    /// Sets how far into the future an event's time may be.
    pub fn with_max_future_skew(mut self, skew: Duration) -> Self {
        self.max_future_skew = skew;
        self
    }
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn record_to_proto(record: Record) -> pb::AuditRecord {
    let stored = record.stored;
    pb::AuditRecord {
        sequence: stored.sequence,
        leaf_hash: stored.leaf_hash.to_vec(),
        recorded_at: Some(timestamp(stored.recorded_at_micros)),
        payload_purged: stored.payload_json.is_none(),
        sensitive_forgotten: record.sensitive_forgotten,
        event: Some(pb::AuditEvent {
            event_id: stored.event_id,
            event_type: stored.event_type,
            time: Some(timestamp(stored.time_micros)),
            correlation_id: stored.correlation_id,
            agent_id: stored.agent_id,
            actor: stored.actor,
            payload: record.payload,
            sensitive: record.sensitive,
            subject: stored.subject,
        }),
    }
}

fn validate_filter(v: &mut Validator, correlation_id: &str, agent_id: &str, event_types: &[String]) -> Filter {
    v.max_len("correlation_id", correlation_id, limits::ID_BYTES);
    v.max_len("agent_id", agent_id, limits::ID_BYTES);
    v.check(event_types.len() <= limits::EVENT_TYPES, "event_types", format!("at most {} types", limits::EVENT_TYPES));
    for (i, event_type) in event_types.iter().enumerate() {
        v.required_str(&format!("event_types[{i}]"), event_type, limits::ID_BYTES);
    }
    Filter {
        correlation_id: (!correlation_id.is_empty()).then(|| correlation_id.to_owned()),
        agent_id: (!agent_id.is_empty()).then(|| agent_id.to_owned()),
        event_types: event_types.to_vec(),
        ..Filter::default()
    }
}

/// What an agent may record about itself: its actions' outcomes and its
/// circuit breakers' state.
const AGENT_EVENTS: &[&str] = &["action_completed", "circuit_breaker_changed"];

const APPEND_PATH: &str = "/warden.audit.v1.AuditService/Append";
const QUERY_PATH: &str = "/warden.audit.v1.AuditService/Query";

type RecordStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditServiceImpl {
    async fn append(&self, request: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        // The authenticated caller is the actor; only services and admins
        // may record in someone else's name.
        let mut actors = Vec::with_capacity(request.get_ref().events.len());
        let mut agents = Vec::with_capacity(request.get_ref().events.len());
        let plain_agent = self.auth.is_plain_agent(&request);
        for (i, event) in request.get_ref().events.iter().enumerate() {
            actors.push(self.auth.actor(&request, APPEND_PATH, &event.actor)?);
            // Agents record only what their own actions did.
            if plain_agent && !AGENT_EVENTS.contains(&event.event_type.as_str()) {
                return Err(to_status(&warden_errors::WardenError::invalid_argument(vec![
                    warden_errors::FieldViolation::new(
                        format!("events[{i}].event_type"),
                        "agents may only record action_completed and circuit_breaker_changed events",
                    ),
                ])));
            }
            agents.push(self.auth.own_agent(&request, APPEND_PATH, &event.agent_id)?);
        }
        let request = request.into_inner();
        let mut v = Validator::new();
        v.check(!request.events.is_empty(), "events", "at least one event is required");
        v.check(
            request.events.len() <= limits::EVENTS_PER_APPEND,
            "events",
            format!("at most {} events per call", limits::EVENTS_PER_APPEND),
        );
        let mut inputs = Vec::with_capacity(request.events.len());
        let latest = crate::log::now_micros().saturating_add(self.max_future_skew.as_micros() as i64);
        for (i, mut event) in request.events.into_iter().enumerate() {
            v.max_len(&format!("events[{i}].event_id"), &event.event_id, limits::ID_BYTES);
            if plain_agent && !event.event_id.is_empty() {
                // The agent's id space: see AGENT_ID_PREFIX.
                event.event_id = format!("{AGENT_ID_PREFIX}{}:{}", actors[i], event.event_id);
            }
            v.required_str(&format!("events[{i}].event_type"), &event.event_type, limits::ID_BYTES);
            v.max_len(&format!("events[{i}].correlation_id"), &event.correlation_id, limits::ID_BYTES);
            v.max_len(&format!("events[{i}].agent_id"), &event.agent_id, limits::ID_BYTES);
            v.max_len(&format!("events[{i}].actor"), &event.actor, limits::ID_BYTES);
            v.max_len(&format!("events[{i}].subject"), &event.subject, limits::ID_BYTES);
            for (name, value) in [("payload", &event.payload), ("sensitive", &event.sensitive)] {
                if let Some(value) = value {
                    warden_contract::check_payload(&mut v, &format!("events[{i}].{name}"), value);
                }
            }
            let field = format!("events[{i}].time");
            let time_micros =
                event.time.as_ref().and_then(|time| warden_contract::check_timestamp(&mut v, &field, time));
            if let Some(micros) = time_micros
                && micros > latest
            {
                v.violation(
                    field,
                    format!(
                        "is {} s ahead of this service's clock; at most max_future_skew ({} s) is accepted",
                        (micros - latest) / 1_000_000 + self.max_future_skew.as_secs() as i64,
                        self.max_future_skew.as_secs()
                    ),
                );
            }
            inputs.push(EventInput {
                event_id: event.event_id,
                event_type: event.event_type,
                time_micros,
                correlation_id: event.correlation_id,
                agent_id: std::mem::take(&mut agents[i]),
                actor: std::mem::take(&mut actors[i]),
                subject: event.subject,
                payload: event.payload,
                sensitive: event.sensitive,
            });
        }
        v.finish().map_err(|e| to_status(&e))?;
        let receipts = self.log.append(inputs).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::AppendResponse {
            receipts: receipts
                .into_iter()
                .map(|r| pb::Receipt {
                    event_id: r.event_id,
                    sequence: r.sequence,
                    leaf_hash: r.leaf_hash.to_vec(),
                    duplicate: r.duplicate,
                })
                .collect(),
        }))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        // Agents read their own trail only.
        let agent_id = self.auth.own_agent(&request, QUERY_PATH, &request.get_ref().agent_id)?;
        let mut request = request.into_inner();
        request.agent_id = agent_id;
        let mut v = Validator::new();
        let mut filter = validate_filter(&mut v, &request.correlation_id, &request.agent_id, &request.event_types);
        v.check(request.page_size <= limits::PAGE_SIZE, "page_size", format!("at most {}", limits::PAGE_SIZE));
        let from = if request.page_token.is_empty() {
            0
        } else {
            match request.page_token.parse::<u64>() {
                Ok(from) => from,
                Err(_) => {
                    v.violation("page_token", "is not a token this service issued");
                    0
                }
            }
        };
        for (field, time, slot) in [
            ("start_time", &request.start_time, &mut filter.start_micros),
            ("end_time", &request.end_time, &mut filter.end_micros),
        ] {
            if let Some(time) = time {
                *slot = warden_contract::check_timestamp(&mut v, field, time);
            }
        }
        v.finish().map_err(|e| to_status(&e))?;
        let page_size = if request.page_size == 0 { limits::DEFAULT_PAGE_SIZE } else { request.page_size };
        // One extra row tells whether there is a next page.
        let records = self.log.records(&filter, from, page_size + 1).await.map_err(|e| to_status(&e))?;
        let more = records.len() > page_size as usize;
        // A page also ends before it passes PAGE_BYTES (at least one record),
        // so any client's default message limit reads it.
        let (mut page, mut bytes) = (Vec::with_capacity(records.len().min(page_size as usize)), 0usize);
        for record in records.into_iter().take(page_size as usize) {
            let record = record_to_proto(record);
            bytes += prost::Message::encoded_len(&record) + 8;
            if !page.is_empty() && bytes > warden_contract::bounds::PAGE_BYTES {
                break;
            }
            page.push(record);
        }
        let cut = page.len() < page_size as usize && (more || bytes > warden_contract::bounds::PAGE_BYTES);
        let next_page_token = if more || cut {
            (page.last().expect("page is not empty").sequence + 1).to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::QueryResponse { records: page, next_page_token }))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        let checkpoint = self.log.checkpoint().await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::Checkpoint {
            tree_size: checkpoint.tree_size,
            root_hash: checkpoint.root_hash.to_vec(),
            time: Some(timestamp(checkpoint.created_at_micros)),
            note: checkpoint.note,
            verifier_key: self.log.verifier_key(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let request = request.into_inner();
        let (size, leaf, hashes) =
            self.log.inclusion_proof(request.sequence, request.tree_size).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::InclusionProof {
            sequence: request.sequence,
            tree_size: size,
            leaf_hash: leaf.to_vec(),
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let request = request.into_inner();
        let (size, hashes) =
            self.log.consistency_proof(request.old_size, request.new_size).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ConsistencyProof {
            old_size: request.old_size,
            new_size: size,
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let request = request.into_inner();
        let report = self.log.verify(request.from_sequence, request.to_sequence).await.map_err(|e| to_status(&e))?;
        if !report.ok {
            tracing::error!(first_bad_sequence = report.first_bad_sequence, problem = %report.problem, "audit log verification failed");
        }
        Ok(Response::new(pb::VerifyResponse {
            ok: report.ok,
            verified: report.verified,
            first_bad_sequence: report.first_bad_sequence,
            problem: report.problem,
            tree_size: report.tree_size,
        }))
    }

    type ExportStream = RecordStream;

    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<RecordStream>, Status> {
        let request = request.into_inner();
        let mut v = Validator::new();
        let mut filter = validate_filter(&mut v, &request.correlation_id, &request.agent_id, &request.event_types);
        v.check(
            request.to_sequence == 0 || request.to_sequence >= request.from_sequence,
            "to_sequence",
            "must not be before from_sequence",
        );
        v.finish().map_err(|e| to_status(&e))?;
        if request.to_sequence > 0 {
            filter.before_sequence = Some(request.to_sequence);
        } else {
            filter.before_sequence = Some(self.log.store().size().await.map_err(|e| to_status(&e))?);
        }
        let log = self.log.clone();
        let stream = async_stream(move |tx| async move {
            let mut from = request.from_sequence;
            loop {
                let page = match log.records(&filter, from, 500).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = tx.send(Err(to_status(&error))).await;
                        return;
                    }
                };
                let Some(last) = page.last().map(|r| r.stored.sequence) else { return };
                for record in page {
                    if tx.send(Ok(record_to_proto(record))).await.is_err() {
                        return;
                    }
                }
                from = last + 1;
            }
        });
        Ok(Response::new(stream))
    }

    type SubscribeStream = RecordStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<RecordStream>, Status> {
        let from = request.into_inner().from_sequence;
        let log = self.log.clone();
        let mut stopping = self.stopping.clone();
        let stream = async_stream(move |tx| async move {
            let mut next = from;
            let mut size = log.watch_size();
            loop {
                let page = match log.records(&Filter::default(), next, 500).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = tx.send(Err(to_status(&error))).await;
                        return;
                    }
                };
                let caught_up = page.len() < 500;
                for record in page {
                    next = record.stored.sequence + 1;
                    if tx.send(Ok(record_to_proto(record))).await.is_err() {
                        return;
                    }
                }
                if caught_up {
                    // Woken by this process's appends, or by the poll that
                    // notices other replicas' appends.
                    tokio::select! {
                        changed = size.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = tx.closed() => return,
                        _ = stopped(&mut stopping) => {
                            let _ = tx.send(Err(Status::unavailable("the audit service is shutting down; resubscribe"))).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn forget_subject(
        &self,
        request: Request<pb::ForgetSubjectRequest>,
    ) -> Result<Response<pb::ForgetSubjectResponse>, Status> {
        let request = request.into_inner();
        let mut v = Validator::new();
        v.required_str("subject", &request.subject, limits::ID_BYTES);
        v.finish().map_err(|e| to_status(&e))?;
        let forgotten = self.log.forget(&request.subject).await.map_err(|e| to_status(&e))?;
        tracing::warn!(forgotten, "subject forgotten");
        Ok(Response::new(pb::ForgetSubjectResponse { forgotten }))
    }
}

/// Resolves once the server is shutting down.
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let stop = *stopping.borrow_and_update();
        if stop || stopping.changed().await.is_err() {
            return;
        }
    }
}

/// A stream fed by a task through a bounded channel (back-pressure: a slow
/// reader slows the task, never grows memory).
fn async_stream<F, Fut>(produce: F) -> RecordStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::AuditRecord, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
