//! The `warden.policy.v1.PolicyService` gRPC handlers: input validation,
//! decisions, policy management and kill switches. Errors become
//! `tonic::Status` here and nowhere else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use warden_auth::capabilities;
use warden_errors::{Category, FieldViolation, Validator, WardenError, to_status};
use warden_policy::registry::{self, Trust};
use warden_proto::policy::v1 as pb;
use warden_proto::policy::v1::policy_service_server::PolicyService;

use crate::approval_client::{ApprovalClient, Outcome};
use crate::cel::Input;
use crate::decision_log::DecisionLog;
use crate::engine::Engine;
use crate::kill_switch::{KillSwitchRecord, KillSwitchStore, to_state};
use crate::metrics::METRICS;
use crate::policy::{self, Effect, PolicyError, PolicySet, Source};

/// Largest accepted sizes of request fields: the shared contract's
/// (`warden_contract::bounds`), so that every decision can be recorded.
pub mod limits {
    pub use warden_contract::bounds::{
        ID_BYTES, LABEL_KEY_BYTES, LABEL_VALUE_BYTES, LABELS, NAME_BYTES, PARAMS_BYTES, REASON_BYTES, RESOURCE_BYTES,
        ROLE_BYTES, ROLES,
    };
    pub const VALIDATE_SOURCES: usize = 1000;
}

/// Re-reads the policy directory and records how the last attempt went.
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    options: policy::LoadOptions,
    engine: Arc<Engine>,
    status: Mutex<ReloadStatus>,
}

#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub errors: Vec<PolicyError>,
    pub attempted_at: Option<SystemTime>,
}

impl Reloader {
    pub fn new(dir: PathBuf, options: policy::LoadOptions, engine: Arc<Engine>) -> Self {
        Reloader { dir, options, engine, status: Mutex::new(ReloadStatus::default()) }
    }

    /// How policies are loaded (also for `ValidatePolicies`).
    pub fn options(&self) -> policy::LoadOptions {
        self.options
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    /// Loads the directory and activates it when it is valid; otherwise the
    /// last good set stays active and the errors are reported.
    pub async fn reload(&self) -> Result<Arc<str>, Vec<PolicyError>> {
        // One reload at a time, so an older read never overwrites a newer one.
        let mut status = self.status.lock().await;
        let dir = self.dir.clone();
        let options = self.options;
        let loaded =
            tokio::task::spawn_blocking(move || policy::load_dir_with(&dir, &options)).await.unwrap_or_else(|error| {
                Err(vec![PolicyError {
                    file: String::new(),
                    line: 0,
                    rule: String::new(),
                    message: format!("reload task failed: {error}"),
                }])
            });
        status.attempted_at = Some(SystemTime::now());
        match loaded {
            Ok(set) => {
                let version = set.version.clone();
                let unchanged = self.engine.policies().version == version;
                set_gauges(&set);
                self.engine.swap_policies(set);
                status.errors.clear();
                METRICS.reloads.with_label_values(&["success"]).inc();
                tracing::info!(version = %version, unchanged, "policies reloaded");
                Ok(version)
            }
            Err(errors) => {
                METRICS.reloads.with_label_values(&["failure"]).inc();
                for error in &errors {
                    tracing::error!(file = %error.file, line = error.line, rule = %error.rule, message = %error.message, "policy reload rejected");
                }
                status.errors = errors.clone();
                Err(errors)
            }
        }
    }

    pub async fn status(&self) -> ReloadStatus {
        self.status.lock().await.clone()
    }
}

pub fn set_gauges(set: &PolicySet) {
    METRICS.rules_active.set(set.rules.len() as i64);
    METRICS.limits_active.set(set.limits.len() as i64);
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct PolicyServiceImpl {
    engine: Arc<Engine>,
    reloader: Arc<Reloader>,
    kill_switches: KillSwitchStore,
    decision_log: Option<Arc<DecisionLog>>,
    auth: Arc<warden_auth::Auth>,
    approvals: Option<ApprovalClient>,
    /// How far an agent's `time` may be from the engine's clock.
    max_clock_skew: Duration,
}

impl PolicyServiceImpl {
    pub fn new(
        engine: Arc<Engine>,
        reloader: Arc<Reloader>,
        kill_switches: KillSwitchStore,
        decision_log: Option<Arc<DecisionLog>>,
        auth: Arc<warden_auth::Auth>,
        approvals: Option<ApprovalClient>,
    ) -> Self {
        PolicyServiceImpl {
            engine,
            reloader,
            kill_switches,
            decision_log,
            auth,
            approvals,
            max_clock_skew: crate::config::DEFAULT_MAX_CLOCK_SKEW,
        }
    }

    /// Sets how far an agent's `time` may be from the engine's clock.
    pub fn with_max_clock_skew(mut self, skew: Duration) -> Self {
        self.max_clock_skew = skew;
        self
    }
}

const EVALUATE_PATH: &str = "/warden.policy.v1.PolicyService/Evaluate";

impl PolicyServiceImpl {
    /// Approvals: a decision that requires approval opens a request (the
    /// agent waits on `approval_id`); an `approval_id` on a decision that
    /// requires approval is redeemed, and only then allows. A deny stays a
    /// deny (nothing is redeemed), an allow needs no approval. When the
    /// approval service cannot answer, the answer is deny.
    ///
    /// A redemption carries the decision's event as it will read if the
    /// grant is spent, and the approval service commits it with the
    /// redemption: one durable write for the decision, not two in series.
    /// Returns the effect, and whether the decision is recorded already.
    async fn approve(
        &self,
        request: &pb::EvaluateRequest,
        response: &mut pb::EvaluateResponse,
        effect: Effect,
        rules_effect: Effect,
        requested_by: &str,
        time: chrono::DateTime<chrono::Utc>,
    ) -> (Effect, bool) {
        if effect != Effect::RequireApproval {
            return (effect, false);
        }
        let outcome = match &self.approvals {
            None if request.approval_id.is_empty() => return (effect, false),
            None => Outcome::Refused(format!(
                "approval {} cannot be checked: this policy engine has no approval service; denying",
                request.approval_id
            )),
            Some(approvals) if request.approval_id.is_empty() => {
                approvals.open(request, response.matched_rules.clone(), response.reasons.clone(), requested_by).await
            }
            Some(approvals) => {
                let decision = match &self.decision_log {
                    Some(_) => {
                        // The approval service sets the reasons (naming the approvers).
                        let granted = pb::EvaluateResponse {
                            effect: Effect::Allow.to_proto() as i32,
                            reasons: Vec::new(),
                            approval_id: request.approval_id.clone(),
                            ..response.clone()
                        };
                        let mut event = Vec::new();
                        self.decision_record(request, &granted, time, Effect::Allow, rules_effect, &mut event);
                        event
                    }
                    None => Vec::new(),
                };
                approvals.redeem(&request.approval_id, &response.decision_id, request, decision).await
            }
        };
        let mut recorded = false;
        let effect = match outcome {
            Outcome::Opened(id) => {
                response.approval_id = id;
                Effect::RequireApproval
            }
            Outcome::Redeemed { reason, recorded: committed } => {
                response.reasons = vec![reason];
                response.approval_id = request.approval_id.clone();
                recorded = committed;
                Effect::Allow
            }
            Outcome::Refused(reason) => {
                response.reasons = vec![reason];
                Effect::Deny
            }
            Outcome::Unanswered(reason) => {
                // The approval service may have spent the grant and recorded
                // the allow under this decision's id before the answer was
                // lost: this deny is a decision of its own.
                response.decision_id = uuid::Uuid::now_v7().to_string();
                response.reasons = vec![reason];
                Effect::Deny
            }
        };
        response.effect = effect.to_proto() as i32;
        (effect, recorded)
    }

    /// When the action is evaluated: the engine's clock. A `time` in the
    /// request is accepted from a principal granted `assert_time` (replay,
    /// tests); from anyone else it must agree with the clock within
    /// `max_clock_skew`, and the clock is used.
    fn evaluation_time(
        &self,
        caller: Option<&warden_auth::Caller>,
        request: &pb::EvaluateRequest,
    ) -> Result<chrono::DateTime<chrono::Utc>, Status> {
        let now = self.engine.clock().now();
        let Some(claimed) = &request.time else { return Ok(now) };
        let claimed = chrono::DateTime::from_timestamp(claimed.seconds, claimed.nanos as u32).expect("validated");
        if self.auth.granted(caller, capabilities::ASSERT_TIME) {
            return Ok(claimed);
        }
        let skew = (claimed - now).abs();
        if skew.to_std().unwrap_or(Duration::MAX) <= self.max_clock_skew {
            return Ok(now);
        }
        METRICS.refused_claims.with_label_values(&["time"]).inc();
        let agent_id = request.agent.as_ref().map(|a| a.id.as_str()).unwrap_or_default();
        let error = WardenError::invalid_argument(vec![FieldViolation::new(
            "time",
            format!(
                "{} is {} from the engine's clock ({}); the most allowed is max_clock_skew ({}), \
                 and only a principal granted assert_time may evaluate at another time",
                claimed.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                humantime::format_duration(Duration::from_millis(skew.num_milliseconds().unsigned_abs())),
                now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                humantime::format_duration(self.max_clock_skew),
            ),
        )]);
        Err(self.auth.refuse(caller, EVALUATE_PATH, error, agent_id))
    }

    /// The decision's encoded `policy_evaluation` event, appended to `buf`
    /// (after a journal record's header, or alone).
    fn decision_record(
        &self,
        request: &pb::EvaluateRequest,
        response: &pb::EvaluateResponse,
        time: chrono::DateTime<chrono::Utc>,
        effect: Effect,
        rules_effect: Effect,
        buf: &mut Vec<u8>,
    ) {
        let decided = crate::decision_record::Decided {
            decision_id: &response.decision_id,
            request,
            time,
            decided_at: self.engine.clock().now(),
            response,
            effect: effect.as_str(),
            rules_effect: rules_effect.as_str(),
            personal: &self.engine.policies().personal_params,
        };
        crate::decision_record::encode_into(&decided, buf);
    }
}

/// Checks an `EvaluateRequest`, naming every bad field.
pub fn validate_evaluate(request: &pb::EvaluateRequest) -> Result<(&pb::Agent, &pb::Action), WardenError> {
    let mut v = Validator::new();
    match &request.agent {
        None => v.violation("agent", "is required"),
        Some(agent) => {
            v.required_str("agent.id", &agent.id, limits::ID_BYTES);
            v.max_len("agent.name", &agent.name, limits::NAME_BYTES);
            if !agent.confidence.is_finite() || !(0.0..=1.0).contains(&agent.confidence) {
                v.violation("agent.confidence", format!("must be between 0 and 1, got {}", agent.confidence));
            }
            if agent.roles.len() > limits::ROLES {
                v.violation("agent.roles", format!("at most {} roles", limits::ROLES));
            }
            // Field names are formatted only for a violation: this runs on
            // every decision.
            for (i, role) in agent.roles.iter().enumerate() {
                if role.is_empty() || role.len() > limits::ROLE_BYTES || role.contains('\0') {
                    v.required_str(&format!("agent.roles[{i}]"), role, limits::ROLE_BYTES);
                }
            }
            if agent.labels.len() > limits::LABELS {
                v.violation("agent.labels", format!("at most {} labels", limits::LABELS));
            }
            for (key, value) in &agent.labels {
                if key.is_empty() || key.len() > limits::LABEL_KEY_BYTES {
                    v.violation("agent.labels", format!("label keys must be 1 to {} bytes", limits::LABEL_KEY_BYTES));
                }
                if value.len() > limits::LABEL_VALUE_BYTES || value.contains('\0') {
                    v.max_len(&format!("agent.labels[{key}]"), value, limits::LABEL_VALUE_BYTES);
                }
            }
        }
    }
    match &request.action {
        None => v.violation("action", "is required"),
        Some(action) => {
            v.required_str("action.type", &action.r#type, limits::ID_BYTES);
            v.max_len("action.resource", &action.resource, limits::RESOURCE_BYTES);
            if action.estimated_cost.is_nan() || action.estimated_cost < 0.0 || action.estimated_cost.is_infinite() {
                v.violation(
                    "action.estimated_cost",
                    format!("must be a finite number >= 0, got {}", action.estimated_cost),
                );
            }
            if let Some(params) = &action.params {
                warden_contract::check_params(&mut v, "action.params", params);
            }
        }
    }
    v.max_len("correlation_id", &request.correlation_id, limits::ID_BYTES);
    if let Some(time) = &request.time {
        warden_contract::check_timestamp(&mut v, "time", time);
    }
    v.finish()?;
    Ok((request.agent.as_ref().expect("validated"), request.action.as_ref().expect("validated")))
}

fn invalid(error: WardenError) -> Status {
    METRICS.invalid_requests.inc();
    to_status(&error)
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

fn micros_to_timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn errors_to_proto(errors: &[PolicyError]) -> Vec<pb::PolicyError> {
    errors.iter().map(PolicyError::to_proto).collect()
}

#[tonic::async_trait]
impl PolicyService for PolicyServiceImpl {
    async fn evaluate(&self, request: Request<pb::EvaluateRequest>) -> Result<Response<pb::EvaluateResponse>, Status> {
        let started = Instant::now();
        let _under_way = self.decision_log.as_ref().map(|log| log.under_way());
        validate_evaluate(request.get_ref()).map_err(invalid)?;
        // An agent may only ask in the name of the agents it is bound to.
        let agent_id = request.get_ref().agent.as_ref().map(|a| a.id.as_str()).unwrap_or_default();
        self.auth.check_agent(&request, EVALUATE_PATH, agent_id)?;
        let caller = warden_auth::Caller::of(&request).cloned();
        let requested_by = caller.as_ref().and_then(|c| c.principal().map(|p| p.id.clone())).unwrap_or_default();
        let mut request = request.into_inner();
        let time = self.evaluation_time(caller.as_ref(), &request)?;
        // What the agent is comes from the registry, not from the request.
        let trust = if self.auth.granted(caller.as_ref(), capabilities::ASSERT_AGENT_ATTRIBUTES) {
            Trust::Asserted
        } else {
            Trust::Registry
        };
        let policies = self.engine.policies();
        let agent = request.agent.as_mut().expect("validated");
        if let Err(refusal) = registry::resolve(&policies.agents, agent, trust) {
            METRICS.refused_claims.with_label_values(&[refusal.field]).inc();
            let error = WardenError::new(Category::PolicyViolation, "UNHELD_ATTRIBUTE", refusal.message)
                .with_code(tonic::Code::PermissionDenied);
            return Err(self.auth.refuse(caller.as_ref(), EVALUATE_PATH, error, &agent.id));
        }
        let (agent, action) = (request.agent.as_ref().expect("validated"), request.action.as_ref().expect("validated"));
        let input = Input { agent, action, time, correlation_id: &request.correlation_id };
        let decision = self.engine.decide_in(&policies, &input).await;
        let decision_id = uuid::Uuid::now_v7().to_string();
        METRICS.evaluations.with_label_values(&[decision.decided_by(), decision.effect.as_str()]).inc();
        METRICS.evaluation_duration.observe(started.elapsed().as_secs_f64());
        // Every decision as a structured event, at debug: the decision log
        // (the audit service) is the record, and a line per decision at
        // info cost a tenth of the engine's CPU under load. Print them with
        // `log_level = "info,warden::decision=debug"`.
        tracing::debug!(
            target: "warden::decision",
            decision_id = %decision_id,
            agent_id = %agent.id,
            action = %action.r#type,
            resource = %action.resource,
            effect = decision.effect.as_str(),
            reasons = ?decision.reasons(),
            matched_rules = ?decision.matched(),
            shadow_rules = ?decision.shadow,
            policy_version = %decision.policy_version,
            correlation_id = %request.correlation_id,
            "decision"
        );
        let mut response = pb::EvaluateResponse {
            decision_id,
            effect: decision.effect.to_proto() as i32,
            reasons: decision.reasons(),
            matched_rules: decision.matched(),
            shadow_rules: decision.shadow.iter().map(|s| String::from(&**s)).collect(),
            policy_version: String::from(&*decision.policy_version),
            approval_id: String::new(),
        };
        let (mut effect, mut recorded) = (decision.effect, false);
        if effect == Effect::RequireApproval || !request.approval_id.is_empty() {
            (effect, recorded) =
                self.approve(&request, &mut response, effect, decision.rules_effect, &requested_by, time).await;
        }
        if effect == Effect::Deny {
            METRICS.denied_agents.with_label_values(&[&agent.id]).inc();
        }
        if let Some(log) = &self.decision_log
            && !recorded
        {
            let mut record = DecisionLog::record_start(1024);
            self.decision_record(&request, &response, time, effect, decision.rules_effect, &mut record);
            // Freed here, while warm and on this thread, rather than after
            // the wait for the sync, cold and perhaps on another worker.
            drop(decision);
            drop(policies);
            drop(request);
            drop(caller);
            log.record(record).await.map_err(|error| {
                tracing::warn!(%error, "decision not recorded; refusing to answer");
                to_status(&error)
            })?;
        }
        Ok(Response::new(response))
    }

    async fn validate_policies(
        &self,
        request: Request<pb::ValidatePoliciesRequest>,
    ) -> Result<Response<pb::ValidatePoliciesResponse>, Status> {
        let request = request.into_inner();
        let mut v = Validator::new();
        v.check(!request.sources.is_empty(), "sources", "at least one source is required");
        v.check(
            request.sources.len() <= limits::VALIDATE_SOURCES,
            "sources",
            format!("at most {} sources", limits::VALIDATE_SOURCES),
        );
        for (i, source) in request.sources.iter().enumerate() {
            v.required_str(&format!("sources[{i}].file"), &source.file, limits::NAME_BYTES);
            v.max_len(&format!("sources[{i}].content"), &source.content, policy::bounds::MAX_FILE_BYTES);
        }
        v.finish().map_err(invalid)?;
        let sources: Vec<Source> =
            request.sources.into_iter().map(|s| Source { file: s.file, content: s.content }).collect();
        let version = policy::version_of(&sources);
        let options = self.reloader.options();
        let result = tokio::task::spawn_blocking(move || policy::compile_sources_with(&sources, &options))
            .await
            .map_err(|e| to_status(&WardenError::new(Category::Internal, "VALIDATION_FAILED", e.to_string())))?;
        Ok(Response::new(match result {
            Ok(set) => pb::ValidatePoliciesResponse {
                valid: true,
                errors: Vec::new(),
                policy_version: version,
                rule_count: set.rules.len() as u32,
                limit_count: set.limits.len() as u32,
            },
            Err(errors) => pb::ValidatePoliciesResponse {
                valid: false,
                errors: errors_to_proto(&errors),
                policy_version: version,
                rule_count: 0,
                limit_count: 0,
            },
        }))
    }

    async fn reload_policies(
        &self,
        _request: Request<pb::ReloadPoliciesRequest>,
    ) -> Result<Response<pb::ReloadPoliciesResponse>, Status> {
        Ok(Response::new(match self.reloader.reload().await {
            Ok(version) => {
                pb::ReloadPoliciesResponse { reloaded: true, policy_version: version.to_string(), errors: Vec::new() }
            }
            Err(errors) => pb::ReloadPoliciesResponse {
                reloaded: false,
                policy_version: self.engine.policies().version.to_string(),
                errors: errors_to_proto(&errors),
            },
        }))
    }

    async fn get_policies(
        &self,
        _request: Request<pb::GetPoliciesRequest>,
    ) -> Result<Response<pb::GetPoliciesResponse>, Status> {
        let set = self.engine.policies();
        let status = self.reloader.status().await;
        Ok(Response::new(pb::GetPoliciesResponse {
            policy_version: set.version.to_string(),
            loaded_at: Some(timestamp(set.loaded_at)),
            rules: set
                .rules
                .iter()
                .map(|rule| pb::RuleSummary {
                    name: rule.name.to_string(),
                    file: rule.file.clone(),
                    actions: rule.scope.action_source.clone(),
                    agents: rule.scope.agent_source.clone(),
                    when: rule.condition.as_ref().map(|c| c.source().to_owned()).unwrap_or_default(),
                    effect: rule.effect.to_proto() as i32,
                    reason: rule.reason.to_string(),
                    shadow: rule.shadow,
                })
                .collect(),
            limits: set
                .limits
                .iter()
                .map(|limit| pb::LimitSummary {
                    name: limit.name.to_string(),
                    file: limit.file.clone(),
                    actions: limit.scope.action_source.clone(),
                    agents: limit.scope.agent_source.clone(),
                    per: limit.per.as_str().to_owned(),
                    max_requests: limit.max_requests.unwrap_or(0),
                    max_cost: limit.max_cost.unwrap_or(0.0),
                    window_seconds: limit.window.as_secs_f64(),
                    effect: limit.effect.to_proto() as i32,
                })
                .collect(),
            last_reload_errors: errors_to_proto(&status.errors),
            last_reload_attempt: status.attempted_at.map(timestamp),
            policies_dir: self.reloader.dir().display().to_string(),
        }))
    }

    async fn set_kill_switch(
        &self,
        request: Request<pb::SetKillSwitchRequest>,
    ) -> Result<Response<pb::SetKillSwitchResponse>, Status> {
        let request = request.into_inner();
        let mut v = Validator::new();
        v.max_len("agent_id", &request.agent_id, limits::ID_BYTES);
        v.max_len("reason", &request.reason, limits::REASON_BYTES);
        if request.engaged && request.reason.trim().is_empty() {
            v.violation("reason", "is required when engaging a kill switch");
        }
        v.finish().map_err(invalid)?;
        let now_micros =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros() as i64;
        let record = KillSwitchRecord {
            agent_id: request.agent_id.clone(),
            engaged: request.engaged,
            reason: request.reason.clone(),
            updated_at_micros: now_micros,
        };
        // Durable first, then effective: a switch we acknowledged survives
        // a restart.
        self.kill_switches.set(&record).await.map_err(|error| {
            tracing::error!(%error, "cannot store kill switch");
            to_status(&error)
        })?;
        let records = self.kill_switches.list().await.map_err(|error| to_status(&error))?;
        let state = to_state(&records);
        METRICS.kill_switches_engaged.set(state.engaged_count() as i64);
        self.engine.set_kill_switches(state);
        tracing::warn!(
            agent_id = %if request.agent_id.is_empty() { "*" } else { request.agent_id.as_str() },
            engaged = request.engaged,
            reason = %request.reason,
            "kill switch changed"
        );
        Ok(Response::new(pb::SetKillSwitchResponse { kill_switch: Some(record_to_proto(&record)) }))
    }

    async fn get_kill_switch(
        &self,
        request: Request<pb::GetKillSwitchRequest>,
    ) -> Result<Response<pb::GetKillSwitchResponse>, Status> {
        let request = request.into_inner();
        let mut v = Validator::new();
        v.max_len("agent_id", &request.agent_id, limits::ID_BYTES);
        v.finish().map_err(invalid)?;
        let records = self.kill_switches.list().await.map_err(|error| to_status(&error))?;
        let kill_switches = records
            .iter()
            .filter(|r| r.engaged)
            .filter(|r| request.agent_id.is_empty() || r.agent_id.is_empty() || r.agent_id == request.agent_id)
            .map(record_to_proto)
            .collect();
        Ok(Response::new(pb::GetKillSwitchResponse { kill_switches }))
    }
}

fn record_to_proto(record: &KillSwitchRecord) -> pb::KillSwitch {
    pb::KillSwitch {
        agent_id: record.agent_id.clone(),
        engaged: record.engaged,
        reason: record.reason.clone(),
        updated_at: Some(micros_to_timestamp(record.updated_at_micros)),
    }
}
