//! The approval workflow over the store: opening requests on the right
//! route, reviews with separation of duties, cancellation, redemption,
//! expiry, escalation and reminders, and the audit events and
//! notifications each step writes to the outbox.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use warden_auth::Principal;
use warden_client::json::{json_to_struct, struct_to_json};
use warden_proto::approval::v1 as pb;
use warden_proto::audit::v1::AuditEvent;

use crate::metrics::METRICS;
use crate::routes::{Route, Routes};
use crate::store::{ApprovalRow, ApprovalStore, NewApproval, Outgoing, ReviewInput, State, TransitionError};

/// Microseconds since the epoch on tokio's clock, so tests run with a
/// paused clock: the wall clock at start plus tokio's elapsed time.
/// [`Clock::advance`] moves it forward by hand, for tests that run on a
/// multi-threaded runtime (where tokio's clock cannot be paused).
#[derive(Debug, Clone)]
pub struct Clock {
    base_micros: i64,
    start: tokio::time::Instant,
    offset_micros: Arc<std::sync::atomic::AtomicI64>,
}

impl Clock {
    pub fn system() -> Clock {
        let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Clock {
            base_micros: base.as_micros() as i64,
            start: tokio::time::Instant::now(),
            offset_micros: Arc::default(),
        }
    }

    pub fn now_micros(&self) -> i64 {
        self.base_micros
            + self.start.elapsed().as_micros() as i64
            + self.offset_micros.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn advance(&self, by: Duration) {
        self.offset_micros.fetch_add(micros(by), std::sync::atomic::Ordering::Relaxed);
    }
}

fn micros(duration: Duration) -> i64 {
    duration.as_micros().min(i64::MAX as u128) as i64
}

/// The canonical JSON of an action and its hash: what a reviewer sees is
/// exactly what redemption compares.
pub fn canonical_action(action: &pb::Action) -> (String, String) {
    let json = serde_json::json!({
        "type": action.r#type,
        "resource": action.resource,
        "estimated_cost": action.estimated_cost,
        "params": action.params.as_ref().map(struct_to_json).unwrap_or_else(|| serde_json::json!({})),
    });
    let text = serde_json::to_string(&json).expect("json");
    let hash = format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
    (text, hash)
}

/// Why a request to review, cancel or redeem was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("approval request {0} not found")]
    NotFound(String),
    /// Reviewing or cancelling a request that is not pending.
    #[error("approval request is {0}")]
    WrongState(String),
    /// Self-review, an unauthorised reviewer, another agent's request.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    AlreadyReviewed(String),
    #[error("storage: {0}")]
    Store(warden_store::StoreError),
}

impl From<TransitionError> for ApprovalError {
    fn from(error: TransitionError) -> Self {
        match error {
            TransitionError::NotFound(id) => ApprovalError::NotFound(id),
            TransitionError::WrongState(state) => ApprovalError::WrongState(state.to_owned()),
            TransitionError::AlreadyReviewed(who) => {
                ApprovalError::AlreadyReviewed(format!("{who} has already reviewed this request"))
            }
            TransitionError::Refused(message) => ApprovalError::Forbidden(message),
            TransitionError::Store(error) => ApprovalError::Store(error),
        }
    }
}

impl warden_errors::Classify for ApprovalError {
    fn category(&self) -> warden_errors::Category {
        use warden_errors::Category;
        match self {
            ApprovalError::NotFound(_) | ApprovalError::WrongState(_) | ApprovalError::AlreadyReviewed(_) => {
                Category::Permanent
            }
            ApprovalError::Forbidden(_) => Category::PolicyViolation,
            ApprovalError::Store(error) => error.category(),
        }
    }
    fn reason(&self) -> &str {
        match self {
            ApprovalError::NotFound(_) => "APPROVAL_NOT_FOUND",
            ApprovalError::WrongState(_) => "APPROVAL_NOT_PENDING",
            ApprovalError::AlreadyReviewed(_) => "ALREADY_REVIEWED",
            ApprovalError::Forbidden(_) => "REVIEW_FORBIDDEN",
            ApprovalError::Store(error) => error.reason(),
        }
    }
    fn code(&self) -> tonic::Code {
        match self {
            ApprovalError::NotFound(_) => tonic::Code::NotFound,
            ApprovalError::WrongState(_) | ApprovalError::AlreadyReviewed(_) => tonic::Code::FailedPrecondition,
            ApprovalError::Forbidden(_) => tonic::Code::PermissionDenied,
            ApprovalError::Store(error) => error.code(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApprovalError::Store(error) => error.retry_after(),
            _ => None,
        }
    }
}

/// The outcome of a redemption.
#[derive(Debug, Clone)]
pub enum Redemption {
    /// Spent (now, or earlier for the same decision). `reason` names the
    /// approval and its approvers; `recorded` says the caller's decision
    /// event was committed with the redemption.
    Redeemed {
        row: ApprovalRow,
        reason: String,
        recorded: bool,
    },
    Refused {
        reason: String,
        row: Option<ApprovalRow>,
    },
}

/// A redemption: this agent's action, for one decision, whose
/// `policy_evaluation` event (if any) is committed with it.
#[derive(Debug, Clone)]
pub struct RedeemInput<'a> {
    pub id: &'a str,
    pub agent_id: &'a str,
    pub action: &'a pb::Action,
    pub decision_id: &'a str,
    pub decision: Option<AuditEvent>,
}

/// Why a spent grant allows: the approval and everyone who approved it.
fn grant_reason(row: &ApprovalRow) -> String {
    format!("approved by {} (approval {})", row.approvers().join(", "), row.id)
}

/// The caller's decision event as recorded: its reasons are the grant's,
/// and it names the approvers.
fn granted_decision(mut event: AuditEvent, row: &ApprovalRow) -> AuditEvent {
    use prost_types::value::Kind;
    let text = |s: String| prost_types::Value { kind: Some(Kind::StringValue(s)) };
    let list = |items: Vec<String>| prost_types::Value {
        kind: Some(Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(text).collect() })),
    };
    let payload = event.payload.get_or_insert_with(Default::default);
    payload.fields.insert("reasons".into(), list(vec![grant_reason(row)]));
    payload.fields.insert("approvers".into(), list(row.approvers()));
    event
}

/// The approval workflow; cheap to share.
pub struct Approvals {
    pub store: ApprovalStore,
    routes: ArcSwap<Routes>,
    pub clock: Clock,
    /// Audit events go to the outbox only when an audit service is configured.
    audit: bool,
    /// Ids of requests that changed here; watchers also poll for changes
    /// made by other replicas.
    changes: tokio::sync::broadcast::Sender<String>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").field("audit", &self.audit).finish()
    }
}

const SERVICE_ACTOR: &str = "warden-approval";

impl Approvals {
    pub fn new(store: ApprovalStore, routes: Routes, clock: Clock, audit: bool) -> Arc<Approvals> {
        Arc::new(Approvals {
            store,
            routes: ArcSwap::from_pointee(routes),
            clock,
            audit,
            changes: tokio::sync::broadcast::channel(1024).0,
        })
    }

    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    pub fn set_routes(&self, routes: Routes) {
        self.routes.store(Arc::new(routes));
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    fn changed(&self, id: &str) {
        let _ = self.changes.send(id.to_owned());
    }

    /// The audit event (if audit is on) and notifications of one step.
    fn outgoing(&self, row: &ApprovalRow, event_type: &str, actor: &str, receivers: &[String]) -> Vec<Outgoing> {
        let mut items = Vec::new();
        let summary = summary(row);
        if self.audit {
            let mut payload = summary.clone();
            payload.insert("event".into(), serde_json::json!(event_type));
            items.push(Outgoing::Audit(AuditEvent {
                event_id: uuid::Uuid::now_v7().to_string(),
                event_type: event_type.to_owned(),
                time: Some(prost_types::Timestamp {
                    seconds: self.clock.now_micros().div_euclid(1_000_000),
                    nanos: (self.clock.now_micros().rem_euclid(1_000_000) * 1000) as i32,
                }),
                correlation_id: row.correlation_id.clone(),
                agent_id: row.agent_id.clone(),
                actor: actor.to_owned(),
                payload: Some(json_to_struct(&payload)),
                sensitive: None,
                subject: String::new(),
            }));
        }
        for receiver in receivers {
            let mut body = summary.clone();
            body.insert("event".into(), serde_json::json!(event_type));
            items.push(Outgoing::Notify { receiver: receiver.clone(), body: serde_json::Value::Object(body) });
        }
        items
    }

    /// Opens a request, or returns the pending one for the same agent and
    /// action (`false`).
    pub async fn create(
        &self,
        request: &pb::CreateApprovalRequest,
        requested_by: &str,
    ) -> Result<(ApprovalRow, bool), ApprovalError> {
        let action = request.action.clone().unwrap_or_default();
        let (action_json, action_hash) = canonical_action(&action);
        let routes = self.routes();
        let route = routes.route_for(&action.r#type, &request.rules);
        let now = self.clock.now_micros();
        let new = NewApproval {
            id: uuid::Uuid::now_v7().to_string(),
            agent_id: request.agent_id.clone(),
            requested_by: if request.requested_by.is_empty() {
                requested_by.to_owned()
            } else {
                request.requested_by.clone()
            },
            action_json,
            action_hash,
            correlation_id: request.correlation_id.clone(),
            rules: request.rules.clone(),
            reasons: request.reasons.clone(),
            route: route.name.clone(),
            min_approvals: route.min_approvals,
            idempotency_key: (!request.idempotency_key.is_empty()).then(|| request.idempotency_key.clone()),
            created_at_micros: now,
            expires_at_micros: now.saturating_add(micros(route.timeout)),
        };
        let notify = route.notify.clone();
        let effects = |row: &ApprovalRow| self.outgoing(row, "approval_requested", SERVICE_ACTOR, &notify);
        let (row, created) = self.store.create(&new, &effects).await?;
        if created {
            METRICS.requested.with_label_values(&[&row.route]).inc();
            tracing::info!(approval_id = %row.id, agent_id = %row.agent_id, action = %action.r#type, route = %row.route, "approval requested");
            self.changed(&row.id);
        }
        Ok((row, created))
    }

    /// Whether `principal` may see `row`: an agent principal only its own
    /// agents' requests; everyone the role table lets read, all of them.
    pub fn may_see(&self, principal: &Principal, row: &ApprovalRow) -> Result<(), String> {
        if principal.kind == warden_auth::Kind::Agent && !principal.may_act_as(&row.agent_id) {
            return Err(format!("principal {} may not see agent {}'s approval requests", principal.id, row.agent_id));
        }
        Ok(())
    }

    /// Whether `principal` may review `row`, and why not.
    ///
    /// Separation of duties: nobody reviews a request they could benefit
    /// from. Refused are the agent itself, every principal that asked for
    /// the action (`requesters`, `requested_by`), and every principal
    /// bound to act as the agent (its `agents` globs match), who could
    /// redeem the grant in the agent's name.
    pub fn may_review(&self, row: &ApprovalRow, principal: &Principal) -> Result<(), String> {
        if principal.id == row.agent_id || principal.id == row.requested_by {
            return Err(format!("{} may not review its own request", principal.id));
        }
        if row.requesters.contains(&principal.id) {
            return Err(format!("{} asked for this action and may not review it", principal.id));
        }
        if principal.bound_to(&row.agent_id) {
            return Err(format!(
                "{} may act as agent {} and so may not review its requests",
                principal.id, row.agent_id
            ));
        }
        if principal.kind == warden_auth::Kind::Agent {
            return Err(format!("agent {} may not review approval requests", principal.id));
        }
        let routes = self.routes();
        let route = routes.by_name(&row.route);
        if !route.admits(principal, row.escalation_level) {
            return Err(format!("{} is not a reviewer for route {}", principal.id, route.name));
        }
        Ok(())
    }

    pub async fn review(
        &self,
        id: &str,
        reviewer: &Principal,
        approve: bool,
        comment: &str,
    ) -> Result<ApprovalRow, ApprovalError> {
        let row = self.store.get(id).await?.ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
        if row.state != State::Pending {
            return Err(ApprovalError::WrongState(row.state.as_str().to_owned()));
        }
        self.may_review(&row, reviewer).map_err(ApprovalError::Forbidden)?;
        let routes = self.routes();
        let route = routes.by_name(&row.route);
        let effects = |after: &ApprovalRow| {
            let mut items = self.outgoing(after, "approval_reviewed", &reviewer.id, &[]);
            match after.state {
                State::Approved => items.extend(self.outgoing(after, "approval_granted", &reviewer.id, &route.notify)),
                State::Denied => items.extend(self.outgoing(after, "approval_denied", &reviewer.id, &route.notify)),
                _ => {}
            }
            items
        };
        let input = ReviewInput {
            id,
            reviewer: &reviewer.id,
            approve,
            comment,
            now_micros: self.clock.now_micros(),
            grant_ttl_micros: micros(route.grant_ttl),
        };
        let after = self.store.review(&input, &effects).await?;
        tracing::info!(approval_id = %id, reviewer = %reviewer.id, approve, state = after.state.as_str(), "approval reviewed");
        if after.state != State::Pending {
            self.decided(&after, route);
        }
        self.changed(id);
        Ok(after)
    }

    fn decided(&self, row: &ApprovalRow, route: &Route) {
        let decision = match row.state {
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            _ => return,
        };
        METRICS.decided.with_label_values(&[&route.name, decision]).inc();
        if let Some(decided) = row.decided_at_micros {
            let waited = (decided - row.created_at_micros).max(0) as f64 / 1e6;
            METRICS.wait_time.with_label_values(&[&route.name]).observe(waited);
        }
    }

    /// Withdrawn by the requesting agent.
    pub async fn cancel(&self, id: &str, by: &Principal, reason: &str) -> Result<ApprovalRow, ApprovalError> {
        let row = self.store.get(id).await?.ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
        if !by.may_act_as(&row.agent_id) {
            return Err(ApprovalError::Forbidden(format!("{} may not cancel agent {}'s request", by.id, row.agent_id)));
        }
        let reason =
            format!("cancelled by {}{}", by.id, if reason.is_empty() { String::new() } else { format!(": {reason}") });
        let effects = |after: &ApprovalRow| {
            let routes = self.routes();
            self.outgoing(after, "approval_cancelled", &by.id, &routes.by_name(&after.route).notify)
        };
        let now = self.clock.now_micros();
        match self.store.transition(id, State::Pending, State::Cancelled, &reason, now, &effects).await? {
            Some(after) => {
                self.decided(&after, self.routes().by_name(&after.route));
                self.changed(id);
                Ok(after)
            }
            None => {
                let state = self.store.get(id).await?.map(|r| r.state.as_str()).unwrap_or("gone");
                Err(ApprovalError::WrongState(state.to_owned()))
            }
        }
    }

    /// Spends a granted approval for this exact agent and action, once,
    /// committing the decision's event (when given and this service ships
    /// audit events) in the same transaction. The common case is one
    /// conditional update; a refusal reads the request to say why. A retry
    /// for the decision that spent the grant is answered as the first call
    /// was.
    pub async fn redeem(&self, input: RedeemInput<'_>) -> Result<Redemption, ApprovalError> {
        let RedeemInput { id, agent_id, action, decision_id, decision } = input;
        let (_, hash) = canonical_action(action);
        let recorded = self.audit && decision.is_some();
        let effects = |after: &ApprovalRow| {
            let mut items = self.outgoing(after, "approval_redeemed", agent_id, &[]);
            if let (true, Some(event)) = (self.audit, &decision) {
                items.push(Outgoing::Audit(granted_decision(event.clone(), after)));
            }
            items
        };
        let redeeming = crate::store::Redeeming { id, agent_id, action_hash: &hash, decision_id };
        if let Some(row) = self.store.redeem(&redeeming, self.clock.now_micros(), &effects).await? {
            METRICS.redeemed.inc();
            self.changed(id);
            return Ok(Redemption::Redeemed { reason: grant_reason(&row), row, recorded });
        }
        let Some(row) = self.store.get(id).await? else {
            return Ok(Redemption::Refused { reason: format!("approval {id} not found"), row: None });
        };
        let same_action = row.agent_id == agent_id && row.action_hash == hash;
        if row.state == State::Redeemed
            && same_action
            && !decision_id.is_empty()
            && row.redeemed_decision_id == decision_id
        {
            return Ok(Redemption::Redeemed { reason: grant_reason(&row), row, recorded });
        }
        let now = self.clock.now_micros();
        let reason = if !same_action {
            "approval was for a different action".to_string()
        } else {
            match row.state {
                State::Approved if row.grant_expires_at_micros.is_some_and(|t| now >= t) => {
                    self.expire(&row, State::Approved).await?;
                    "approval expired before it was used".to_string()
                }
                // Redeemable after all: the grant changed between the two
                // reads (it cannot become redeemable again); say so.
                State::Approved => "approval changed while being redeemed; ask again".to_string(),
                State::Redeemed => "approval already used".to_string(),
                State::Pending => "approval is still pending".to_string(),
                State::Denied => format!("approval was denied ({})", row.outcome_reason),
                State::Expired => format!("approval expired ({})", row.outcome_reason),
                State::Cancelled => "approval was cancelled".to_string(),
            }
        };
        Ok(Redemption::Refused { reason, row: Some(row) })
    }

    /// Expires a pending request (nobody decided in time) or an unused grant.
    async fn expire(&self, row: &ApprovalRow, from: State) -> Result<(), ApprovalError> {
        let reason = match from {
            State::Pending => "no decision before the request's timeout (not a rejection by a reviewer)",
            _ => "the grant was not used before it expired",
        };
        let effects = |after: &ApprovalRow| {
            let routes = self.routes();
            self.outgoing(after, "approval_expired", SERVICE_ACTOR, &routes.by_name(&after.route).notify)
        };
        if let Some(after) =
            self.store.transition(&row.id, from, State::Expired, reason, self.clock.now_micros(), &effects).await?
        {
            tracing::info!(approval_id = %row.id, from = from.as_str(), "approval expired");
            if from == State::Pending {
                self.decided(&after, self.routes().by_name(&after.route));
            }
            self.changed(&row.id);
        }
        Ok(())
    }

    /// One pass of the clocks: expiry, grant expiry, escalation, reminders,
    /// and the pending gauges. Every step is a conditional update, so
    /// replicas running this at once act once.
    pub async fn tick(&self) -> Result<(), ApprovalError> {
        let now = self.clock.now_micros();
        let rows = self.store.pending_and_due_grants(now).await?;
        let routes = self.routes();
        let (mut pending, mut oldest) = (0i64, None::<i64>);
        for row in rows {
            let route = routes.by_name(&row.route);
            match row.state {
                State::Approved => self.expire(&row, State::Approved).await?,
                State::Pending if now >= row.expires_at_micros => self.expire(&row, State::Pending).await?,
                State::Pending => {
                    pending += 1;
                    oldest = Some(oldest.map_or(row.created_at_micros, |o| o.min(row.created_at_micros)));
                    if row.escalation_level == 0
                        && let Some(after) = route.escalate_after
                        && now >= row.created_at_micros.saturating_add(micros(after))
                    {
                        let effects = |after: &ApprovalRow| {
                            self.outgoing(after, "approval_escalated", SERVICE_ACTOR, &route.escalate_notify)
                        };
                        if self.store.mark(&row.id, true, &effects).await?.is_some() {
                            tracing::info!(approval_id = %row.id, route = %route.name, "approval escalated");
                            self.changed(&row.id);
                        }
                    }
                    if !row.reminded
                        && let Some(before) = route.remind_before
                        && now >= row.expires_at_micros.saturating_sub(micros(before))
                    {
                        let effects = |after: &ApprovalRow| {
                            let mut receivers = route.notify.clone();
                            if after.escalation_level > 0 {
                                receivers.extend(route.escalate_notify.iter().cloned());
                            }
                            self.outgoing(after, "approval_reminder", SERVICE_ACTOR, &receivers)
                        };
                        self.store.mark(&row.id, false, &effects).await?;
                    }
                }
                _ => {}
            }
        }
        METRICS.pending.set(pending);
        METRICS.oldest_pending_age.set(oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1e6));
        Ok(())
    }
}

/// What reviewers, notifications and audit events show of a request.
pub fn summary(row: &ApprovalRow) -> serde_json::Map<String, serde_json::Value> {
    let action: serde_json::Value = serde_json::from_str(&row.action_json).unwrap_or_default();
    let mut map = serde_json::Map::new();
    map.insert("approval_id".into(), serde_json::json!(row.id));
    map.insert("state".into(), serde_json::json!(row.state.as_str()));
    map.insert("agent_id".into(), serde_json::json!(row.agent_id));
    map.insert("requested_by".into(), serde_json::json!(row.requested_by));
    map.insert("action".into(), action);
    map.insert("action_hash".into(), serde_json::json!(row.action_hash));
    map.insert("rules".into(), serde_json::json!(row.rules));
    map.insert("reasons".into(), serde_json::json!(row.reasons));
    map.insert("route".into(), serde_json::json!(row.route));
    map.insert("min_approvals".into(), serde_json::json!(row.min_approvals));
    map.insert("approvers".into(), serde_json::json!(row.approvers()));
    map.insert(
        "reviews".into(),
        serde_json::Value::Array(
            row.reviews
                .iter()
                .map(|r| serde_json::json!({"reviewer": r.reviewer, "approve": r.approve, "comment": r.comment}))
                .collect(),
        ),
    );
    map.insert("expires_at_micros".into(), serde_json::json!(row.expires_at_micros));
    if !row.outcome_reason.is_empty() {
        map.insert("outcome_reason".into(), serde_json::json!(row.outcome_reason));
    }
    if !row.redeemed_decision_id.is_empty() {
        map.insert("decision_id".into(), serde_json::json!(row.redeemed_decision_id));
    }
    map
}
