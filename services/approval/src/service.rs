//! The `warden.approval.v1.ApprovalService` gRPC handlers: input
//! validation, who may see and do what, conversion. Errors become
//! `tonic::Status` here and nowhere else.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status};
use warden_auth::{Caller, Principal};
use warden_client::json::json_to_struct;
use warden_errors::{Category, Validator, WardenError, to_status};
use warden_proto::approval::v1 as pb;
use warden_proto::approval::v1::approval_service_server::ApprovalService;
use warden_proto::audit::v1::AuditEvent;

use crate::approvals::{Approvals, RedeemInput, Redemption};
use crate::store::{ApprovalRow, State};

/// Largest accepted sizes.
pub mod limits {
    pub const ID_BYTES: usize = 256;
    pub const RESOURCE_BYTES: usize = 1024;
    pub const PARAMS_BYTES: usize = 64 * 1024;
    pub const COMMENT_BYTES: usize = 4096;
    pub const RULES: usize = 64;
    pub const REASON_BYTES: usize = 1024;
    /// An encoded decision event carried by `Redeem`: params plus the rest.
    pub const DECISION_BYTES: usize = 256 * 1024;
    pub const PAGE_SIZE: u32 = 500;
    pub const DEFAULT_PAGE_SIZE: u32 = 50;
}

#[derive(Debug, Clone)]
pub struct ApprovalServiceImpl {
    approvals: Arc<Approvals>,
    stopping: tokio::sync::watch::Receiver<bool>,
    watch_poll: Duration,
}

impl ApprovalServiceImpl {
    pub fn new(approvals: Arc<Approvals>, stopping: tokio::sync::watch::Receiver<bool>, watch_poll: Duration) -> Self {
        ApprovalServiceImpl { approvals, stopping, watch_poll }
    }
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn state_to_proto(state: State) -> pb::State {
    match state {
        State::Pending => pb::State::Pending,
        State::Approved => pb::State::Approved,
        State::Denied => pb::State::Denied,
        State::Expired => pb::State::Expired,
        State::Cancelled => pb::State::Cancelled,
        State::Redeemed => pb::State::Redeemed,
    }
}

pub fn to_proto(row: &ApprovalRow) -> pb::Approval {
    let action: serde_json::Value = serde_json::from_str(&row.action_json).unwrap_or_default();
    pb::Approval {
        id: row.id.clone(),
        state: state_to_proto(row.state) as i32,
        agent_id: row.agent_id.clone(),
        requested_by: row.requested_by.clone(),
        requesters: row.requesters.clone(),
        action: Some(pb::Action {
            r#type: action["type"].as_str().unwrap_or_default().to_owned(),
            resource: action["resource"].as_str().unwrap_or_default().to_owned(),
            estimated_cost: action["estimated_cost"].as_f64().unwrap_or_default(),
            params: action["params"].as_object().map(json_to_struct),
        }),
        action_hash: row.action_hash.clone(),
        correlation_id: row.correlation_id.clone(),
        rules: row.rules.clone(),
        reasons: row.reasons.clone(),
        route: row.route.clone(),
        min_approvals: row.min_approvals,
        reviews: row
            .reviews
            .iter()
            .map(|r| pb::Review {
                reviewer: r.reviewer.clone(),
                approve: r.approve,
                comment: r.comment.clone(),
                time: Some(timestamp(r.at_micros)),
            })
            .collect(),
        created_at: Some(timestamp(row.created_at_micros)),
        expires_at: Some(timestamp(row.expires_at_micros)),
        decided_at: row.decided_at_micros.map(timestamp),
        grant_expires_at: row.grant_expires_at_micros.map(timestamp),
        redeemed_at: row.redeemed_at_micros.map(timestamp),
        outcome_reason: row.outcome_reason.clone(),
        escalation_level: row.escalation_level,
    }
}

fn validate_action(v: &mut Validator, field: &str, action: &Option<pb::Action>) {
    match action {
        None => v.violation(field, "is required"),
        Some(action) => {
            v.required_str(&format!("{field}.type"), &action.r#type, limits::ID_BYTES);
            v.max_len(&format!("{field}.resource"), &action.resource, limits::RESOURCE_BYTES);
            if !action.estimated_cost.is_finite() || action.estimated_cost < 0.0 {
                v.violation(format!("{field}.estimated_cost"), "must be a finite number >= 0");
            }
            if let Some(params) = &action.params {
                let size = params.encoded_len();
                v.check(
                    size <= limits::PARAMS_BYTES,
                    format!("{field}.params"),
                    format!("must be at most {} bytes encoded, got {size}", limits::PARAMS_BYTES),
                );
                if has_non_finite(params) {
                    v.violation(format!("{field}.params"), "numbers must be finite");
                }
            }
        }
    }
}

fn has_non_finite(s: &prost_types::Struct) -> bool {
    fn value(v: &prost_types::Value) -> bool {
        use prost_types::value::Kind;
        match &v.kind {
            Some(Kind::NumberValue(n)) => !n.is_finite(),
            Some(Kind::ListValue(list)) => list.values.iter().any(value),
            Some(Kind::StructValue(s)) => has_non_finite(s),
            _ => false,
        }
    }
    s.fields.values().any(value)
}

fn invalid(error: WardenError) -> Status {
    to_status(&error)
}

/// The authenticated principal; reviews and cancellations need one.
fn principal<T>(request: &Request<T>) -> Result<Arc<Principal>, Status> {
    match Caller::of(request) {
        Some(Caller::Principal(principal)) => Ok(principal.clone()),
        Some(Caller::Anonymous) => Err(to_status(
            &WardenError::new(
                Category::Permanent,
                "AUTHENTICATION_REQUIRED",
                "this needs an authenticated principal; the service runs with authentication off",
            )
            .with_code(tonic::Code::FailedPrecondition),
        )),
        None => Err(to_status(
            &WardenError::new(Category::Internal, "NO_CALLER", "the request did not pass the auth layer")
                .with_code(tonic::Code::PermissionDenied),
        )),
    }
}

/// Agents see only their own requests; people and services see all.
fn may_see<T>(approvals: &Approvals, request: &Request<T>, row: &ApprovalRow) -> Result<(), Status> {
    if let Some(Caller::Principal(p)) = Caller::of(request)
        && let Err(message) = approvals.may_see(p, row)
    {
        return Err(to_status(
            &WardenError::new(Category::PolicyViolation, "NOT_YOUR_APPROVAL", message)
                .with_code(tonic::Code::PermissionDenied),
        ));
    }
    Ok(())
}

fn id_field(v: &mut Validator, id: &str) {
    v.required_str("id", id, limits::ID_BYTES);
}

type ApprovalStream = Pin<Box<dyn Stream<Item = Result<pb::Approval, Status>> + Send>>;

#[tonic::async_trait]
impl ApprovalService for ApprovalServiceImpl {
    async fn create_approval(
        &self,
        request: Request<pb::CreateApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let caller = Caller::of(&request).and_then(|c| c.principal().map(|p| p.id.clone())).unwrap_or_default();
        let body = request.into_inner();
        let mut v = Validator::new();
        v.max_len("idempotency_key", &body.idempotency_key, limits::ID_BYTES);
        v.required_str("agent_id", &body.agent_id, limits::ID_BYTES);
        validate_action(&mut v, "action", &body.action);
        v.max_len("correlation_id", &body.correlation_id, limits::ID_BYTES);
        v.max_len("requested_by", &body.requested_by, limits::ID_BYTES);
        v.check(body.rules.len() <= limits::RULES, "rules", format!("at most {}", limits::RULES));
        v.check(body.reasons.len() <= limits::RULES, "reasons", format!("at most {}", limits::RULES));
        for (i, rule) in body.rules.iter().enumerate() {
            v.max_len(&format!("rules[{i}]"), rule, limits::ID_BYTES);
        }
        for (i, reason) in body.reasons.iter().enumerate() {
            v.max_len(&format!("reasons[{i}]"), reason, limits::REASON_BYTES);
        }
        v.finish().map_err(invalid)?;
        let (row, _) = self.approvals.create(&body, &caller).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn get_approval(&self, request: Request<pb::GetApprovalRequest>) -> Result<Response<pb::Approval>, Status> {
        let mut v = Validator::new();
        id_field(&mut v, &request.get_ref().id);
        v.finish().map_err(invalid)?;
        let id = &request.get_ref().id;
        let row = self
            .approvals
            .store
            .get(id)
            .await
            .map_err(|e| to_status(&crate::approvals::ApprovalError::from(e)))?
            .ok_or_else(|| to_status(&crate::approvals::ApprovalError::NotFound(id.clone())))?;
        may_see(&self.approvals, &request, &row)?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let body = request.get_ref();
        let mut v = Validator::new();
        v.max_len("agent_id", &body.agent_id, limits::ID_BYTES);
        v.max_len("page_token", &body.page_token, limits::ID_BYTES);
        v.check(body.page_size <= limits::PAGE_SIZE, "page_size", format!("at most {}", limits::PAGE_SIZE));
        let state = match pb::State::try_from(body.state) {
            Ok(pb::State::Unspecified) => None,
            Ok(pb::State::Pending) => Some(State::Pending),
            Ok(pb::State::Approved) => Some(State::Approved),
            Ok(pb::State::Denied) => Some(State::Denied),
            Ok(pb::State::Expired) => Some(State::Expired),
            Ok(pb::State::Cancelled) => Some(State::Cancelled),
            Ok(pb::State::Redeemed) => Some(State::Redeemed),
            Err(_) => {
                v.violation("state", format!("unknown state {}", body.state));
                None
            }
        };
        let reviewer = if body.reviewable_by_me { Some(principal(&request)?) } else { None };
        v.finish().map_err(invalid)?;
        let size = if body.page_size == 0 { limits::DEFAULT_PAGE_SIZE } else { body.page_size };
        let state = if reviewer.is_some() { Some(State::Pending) } else { state };
        let mut approvals = Vec::new();
        let mut before = (!body.page_token.is_empty()).then(|| body.page_token.clone());
        let mut next_page_token = String::new();
        // Filtering "reviewable by me" happens after the read: read pages
        // until this one is full or the table ends.
        loop {
            let rows = self
                .approvals
                .store
                .list(state, (!body.agent_id.is_empty()).then_some(body.agent_id.as_str()), before.as_deref(), size)
                .await
                .map_err(|e| to_status(&crate::approvals::ApprovalError::from(e)))?;
            let exhausted = (rows.len() as u32) < size;
            for row in rows {
                before = Some(row.id.clone());
                let visible = may_see(&self.approvals, &request, &row).is_ok();
                let reviewable = match &reviewer {
                    None => true,
                    Some(p) => {
                        self.approvals.may_review(&row, p).is_ok() && !row.reviews.iter().any(|r| r.reviewer == p.id)
                    }
                };
                if visible && reviewable {
                    approvals.push(to_proto(&row));
                    if approvals.len() as u32 == size {
                        next_page_token = row.id.clone();
                        break;
                    }
                }
            }
            if exhausted || !next_page_token.is_empty() {
                break;
            }
        }
        Ok(Response::new(pb::ListApprovalsResponse { approvals, next_page_token }))
    }

    type WatchApprovalStream = ApprovalStream;

    async fn watch_approval(
        &self,
        request: Request<pb::WatchApprovalRequest>,
    ) -> Result<Response<Self::WatchApprovalStream>, Status> {
        let mut v = Validator::new();
        id_field(&mut v, &request.get_ref().id);
        v.finish().map_err(invalid)?;
        let id = request.get_ref().id.clone();
        let store = self.approvals.store.clone();
        let first = store
            .get(&id)
            .await
            .map_err(|e| to_status(&crate::approvals::ApprovalError::from(e)))?
            .ok_or_else(|| to_status(&crate::approvals::ApprovalError::NotFound(id.clone())))?;
        may_see(&self.approvals, &request, &first)?;
        let mut changes = self.approvals.subscribe();
        let mut stopping = self.stopping.clone();
        let poll = self.watch_poll;
        let stream = async_stream(move |tx| async move {
            let mut last = first;
            if tx.send(Ok(to_proto(&last))).await.is_err() {
                return;
            }
            let mut ticker = tokio::time::interval(poll);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !last.state.is_terminal() {
                tokio::select! {
                    changed = changes.recv() => match changed {
                        Ok(changed) if changed != id => continue,
                        // Lagged or closed: re-read to be safe.
                        _ => {}
                    },
                    _ = ticker.tick() => {}
                    _ = stopping.changed() => return,
                }
                match store.get(&id).await {
                    Ok(Some(now)) if now != last => {
                        last = now;
                        if tx.send(Ok(to_proto(&last))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let _ = tx.send(Err(to_status(&crate::approvals::ApprovalError::from(error)))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn review(&self, request: Request<pb::ReviewRequest>) -> Result<Response<pb::Approval>, Status> {
        let body = request.get_ref();
        let mut v = Validator::new();
        id_field(&mut v, &body.id);
        v.max_len("comment", &body.comment, limits::COMMENT_BYTES);
        v.finish().map_err(invalid)?;
        let reviewer = principal(&request)?;
        let row =
            self.approvals.review(&body.id, &reviewer, body.approve, &body.comment).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn cancel(&self, request: Request<pb::CancelRequest>) -> Result<Response<pb::Approval>, Status> {
        let body = request.get_ref();
        let mut v = Validator::new();
        id_field(&mut v, &body.id);
        v.max_len("reason", &body.reason, limits::REASON_BYTES);
        v.finish().map_err(invalid)?;
        let by = principal(&request)?;
        let row = self.approvals.cancel(&body.id, &by, &body.reason).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn redeem(&self, request: Request<pb::RedeemRequest>) -> Result<Response<pb::RedeemResponse>, Status> {
        let body = request.into_inner();
        let mut v = Validator::new();
        id_field(&mut v, &body.id);
        v.required_str("agent_id", &body.agent_id, limits::ID_BYTES);
        validate_action(&mut v, "action", &body.action);
        v.max_len("decision_id", &body.decision_id, limits::ID_BYTES);
        let decision = decision_event(&mut v, &body);
        v.finish().map_err(invalid)?;
        let action = body.action.unwrap_or_default();
        let input = RedeemInput {
            id: &body.id,
            agent_id: &body.agent_id,
            action: &action,
            decision_id: &body.decision_id,
            decision,
        };
        let outcome = self.approvals.redeem(input).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(match outcome {
            Redemption::Redeemed { row, reason, recorded } => pb::RedeemResponse {
                redeemed: true,
                reason,
                approvers: row.approvers(),
                approval: Some(to_proto(&row)),
                decision_recorded: recorded,
            },
            Redemption::Refused { reason, row } => pb::RedeemResponse {
                redeemed: false,
                reason,
                approvers: row.as_ref().map(|r| r.approvers()).unwrap_or_default(),
                approval: row.as_ref().map(to_proto),
                decision_recorded: false,
            },
        }))
    }
}

/// The decision event a `Redeem` carries, checked: an encoded
/// `policy_evaluation` event of this decision, agent and approval, allowing.
fn decision_event(v: &mut Validator, body: &pb::RedeemRequest) -> Option<AuditEvent> {
    if body.decision.is_empty() {
        return None;
    }
    if body.decision.len() > limits::DECISION_BYTES {
        let message = format!("must be at most {} bytes, got {}", limits::DECISION_BYTES, body.decision.len());
        v.violation("decision", message);
        return None;
    }
    let Ok(event) = AuditEvent::decode(body.decision.as_slice()) else {
        v.violation("decision", "is not an encoded warden.audit.v1.AuditEvent");
        return None;
    };
    let text = |key: &str| match event.payload.as_ref().and_then(|p| p.fields.get(key)).and_then(|v| v.kind.as_ref()) {
        Some(prost_types::value::Kind::StringValue(s)) => s.as_str(),
        _ => "",
    };
    let mut ok = true;
    let mut check = |good: bool, field: &str, message: &str| {
        ok &= good;
        v.check(good, field, message);
    };
    check(!body.decision_id.is_empty(), "decision_id", "is required with a decision");
    check(event.event_id == body.decision_id, "decision.event_id", "must be the decision_id");
    check(event.event_type == "policy_evaluation", "decision.event_type", "must be policy_evaluation");
    check(event.agent_id == body.agent_id, "decision.agent_id", "must be the agent_id");
    check(text("effect") == "allow", "decision.payload.effect", "must be allow");
    check(text("approval_id") == body.id, "decision.payload.approval_id", "must be the approval's id");
    ok.then_some(event)
}

/// A stream fed by a task: the task ends when the client goes away.
fn async_stream<F, Fut>(produce: F) -> ApprovalStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::Approval, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
