//! The enforcement point: what an agent's `tools/list` and `tools/call`
//! become. Every call is one `Evaluate` in the agent's name; only an allow
//! is forwarded, with exactly the arguments that were decided on; a call
//! that needs approval is held until a person decides; what the upstream
//! did is recorded in the audit log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, InitializeResult,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData as McpError, Peer, RoleServer, ServerHandler};
use sha2::{Digest, Sha256};
use warden_client::{
    ActionOutcome, ActionStatus, ApprovalClient, ApprovalOutcome, ClientError, Decision, PolicyClient, Source,
};
use warden_glob::Glob;
use warden_proto::policy::v1 as pb;
use warden_server::dead_letters::OutboxTable;

use crate::metrics::METRICS;
use crate::template::Template;
use crate::upstreams::Upstream;

/// The agent an MCP request acts for: the authenticated principal's id,
/// put in the HTTP request's extensions by the auth layer (or the identity
/// a stdio gateway was started with). Never a field of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentId(pub String);

/// The `_meta` key under which an agent may name the approval its call
/// redeems (the gateway also remembers the approvals it opened).
pub const APPROVAL_META: &str = "warden.dev/approval_id";

/// The `_meta` key under which an agent may tie its call to a ticket,
/// conversation or workflow (the decision's correlation id); without one,
/// `mcp:<session>:<request id>`.
pub const CORRELATION_META: &str = "warden.dev/correlation_id";

/// The `_meta` key under which an agent may report its confidence (0 to
/// 1), as an SDK agent does in its request; 1.0 when absent, the SDK's
/// default.
pub const CONFIDENCE_META: &str = "warden.dev/confidence";

/// A rule that denies some tools to some agents whatever the call says:
/// those tools are not listed to those agents.
#[derive(Debug)]
struct HideRule {
    actions: Vec<Glob>,
    agents: Vec<Glob>,
    /// The rule also names agents by role, which the gateway does not know.
    by_role: bool,
}

impl HideRule {
    fn hides(&self, agent: &str, action: &str) -> bool {
        let action_matches = self.actions.is_empty() || self.actions.iter().any(|g| g.matches(action));
        let agent_matches = self.agents.is_empty() && !self.by_role || self.agents.iter().any(|g| g.matches(agent));
        action_matches && agent_matches
    }
}

/// What is hidden, from the policies in force.
#[derive(Debug, Default)]
struct Hidden {
    version: String,
    rules: Vec<HideRule>,
}

impl Hidden {
    /// The rules of `policies` that deny unconditionally (enforced, no
    /// `when`): a tool whose every call they deny is not listed.
    fn of(policies: &pb::GetPoliciesResponse) -> Hidden {
        let rules = policies
            .rules
            .iter()
            .filter(|r| r.effect == pb::Effect::Deny as i32 && r.when.trim().is_empty() && !r.shadow)
            .map(|r| HideRule {
                actions: r.actions.iter().map(|a| Glob::new(a)).collect(),
                agents: r.agents.iter().filter(|a| !a.starts_with("role:")).map(|a| Glob::new(a)).collect(),
                by_role: r.agents.iter().any(|a| a.starts_with("role:")),
            })
            .collect();
        Hidden { version: policies.policy_version.clone(), rules }
    }

    fn hides(&self, agent: &str, action: &str) -> bool {
        self.rules.iter().any(|rule| rule.hides(agent, action))
    }
}

/// Everything the sessions share.
pub struct Gateway {
    pub upstreams: Vec<Arc<Upstream>>,
    separator: String,
    policy: PolicyClient,
    approvals: Option<ApprovalClient>,
    /// Writes `action_completed` events to the outbox, in the background.
    recorder: Option<Recorder>,
    hidden: ArcSwap<Hidden>,
    approval_wait: Duration,
    progress_interval: Duration,
    /// Approvals opened for an exact action (agent, type, resource,
    /// arguments), so that the same call, made again, redeems its grant.
    held: moka::sync::Cache<String, String>,
    /// Sessions to tell when the tools they may see change.
    peers: std::sync::Mutex<Vec<Peer<RoleServer>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("upstreams", &self.upstreams).finish()
    }
}

/// What the gateway is built from.
pub struct Parts {
    pub upstreams: Vec<Arc<Upstream>>,
    pub separator: String,
    pub policy: PolicyClient,
    pub approvals: Option<ApprovalClient>,
    pub recorder: Option<Recorder>,
    pub approval_wait: Duration,
    pub progress_interval: Duration,
}

/// How a call ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Allowed,
    Denied,
    Held,
    Refused,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Allowed => "allow",
            Ended::Denied => "deny",
            Ended::Held => "require_approval",
            Ended::Refused => "refused",
        }
    }
}

/// What a call's `_meta` says about it: the agent's own word, which the
/// policies may read like any agent's request but which decides no
/// identity.
struct Claims {
    confidence: Option<serde_json::Value>,
    correlation_id: Option<serde_json::Value>,
}

/// One tool call, resolved against the upstreams and the tool's mapping.
struct Call<'a> {
    agent: &'a str,
    upstream: &'a Arc<Upstream>,
    tool: &'a str,
    arguments: Option<JsonObject>,
    request: pb::EvaluateRequest,
    /// The exact action's key in `held`.
    key: String,
}

impl Gateway {
    pub fn new(parts: Parts) -> Arc<Gateway> {
        Arc::new(Gateway {
            upstreams: parts.upstreams,
            separator: parts.separator,
            policy: parts.policy,
            approvals: parts.approvals,
            recorder: parts.recorder,
            hidden: ArcSwap::from_pointee(Hidden::default()),
            approval_wait: parts.approval_wait,
            progress_interval: parts.progress_interval,
            held: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            peers: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The name agents see for `tool` of `upstream`.
    pub fn exposed_name(&self, upstream: &str, tool: &str) -> String {
        format!("{upstream}{}{tool}", self.separator)
    }

    /// The action type a tool's calls are decided as.
    pub fn action_type(upstream: &Upstream, tool: &str) -> String {
        match upstream.config.tools.get(tool) {
            Some(mapping) if !mapping.action.is_empty() => mapping.action.clone(),
            _ => format!("{}.{tool}", upstream.config.name),
        }
    }

    fn resolve<'a>(&'a self, name: &'a str) -> Option<(&'a Arc<Upstream>, &'a str)> {
        let (upstream, tool) = name.split_once(self.separator.as_str())?;
        let upstream = self.upstreams.iter().find(|u| u.config.name == upstream)?;
        upstream.tools().iter().any(|t| t.name == tool).then_some((upstream, tool))
    }

    /// Reads the policies in force (which tools are hidden) and every
    /// upstream's tools again; tells the sessions when what they may see
    /// changed.
    pub async fn refresh(&self) {
        let mut changed = false;
        for upstream in &self.upstreams {
            match upstream.refresh().await {
                Ok(tools_changed) => changed |= tools_changed,
                Err(error) => {
                    tracing::warn!(upstream = %upstream.config.name, %error, "cannot list the upstream's tools")
                }
            }
        }
        match self.policy.raw().get_policies(pb::GetPoliciesRequest {}).await {
            Ok(response) => {
                let hidden = Hidden::of(response.get_ref());
                if hidden.version != self.hidden.load().version {
                    changed = true;
                    self.hidden.store(Arc::new(hidden));
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot read the policies in force; tools stay listed as before")
            }
        }
        if changed {
            self.announce().await;
        }
    }

    /// `notifications/tools/list_changed` to every open session.
    async fn announce(&self) {
        let peers: Vec<Peer<RoleServer>> = {
            let mut peers = self.peers.lock().expect("peers");
            peers.retain(|peer| !peer.is_transport_closed());
            peers.clone()
        };
        for peer in peers {
            if let Err(error) = peer.notify_tool_list_changed().await {
                tracing::debug!(%error, "cannot tell a session its tools changed");
            }
        }
    }

    /// The tools `agent` could ever be allowed to call.
    pub fn tools_for(&self, agent: &str) -> Vec<rmcp::model::Tool> {
        let hidden = self.hidden.load();
        let mut listed = Vec::new();
        for upstream in &self.upstreams {
            for tool in upstream.tools().iter() {
                if hidden.hides(agent, &Gateway::action_type(upstream, &tool.name)) {
                    continue;
                }
                let mut tool = tool.clone();
                tool.name = self.exposed_name(&upstream.config.name, &tool.name).into();
                listed.push(tool);
            }
        }
        listed
    }

    /// One `tools/call` from `agent`.
    pub async fn call(
        &self,
        agent: &str,
        params: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let started = Instant::now();
        let Some((upstream, tool)) = self.resolve(&params.name) else {
            METRICS.calls.with_label_values(&["", "", Ended::Refused.as_str()]).inc();
            return error_result(format!("unknown tool {:?}: call tools/list for the tools you may use", params.name));
        };
        let (name, tool_name) = (upstream.config.name.clone(), tool.to_owned());
        // The call's `_meta` (rmcp hands it over in the context).
        let meta = |key: &str| context.meta.get(key).or_else(|| params.meta.as_ref().and_then(|m| m.get(key))).cloned();
        let approval_meta = meta(APPROVAL_META).and_then(|v| v.as_str().map(str::to_owned));
        let claims = Claims { confidence: meta(CONFIDENCE_META), correlation_id: meta(CORRELATION_META) };
        let (ended, result) = match self.prepare(agent, upstream, tool, params.arguments, claims, context) {
            Ok(call) => self.decide_and_forward(call, approval_meta, context).await,
            Err(message) => (Ended::Refused, error_result(message)),
        };
        METRICS.calls.with_label_values(&[&name, &tool_name, ended.as_str()]).inc();
        METRICS.duration.with_label_values(&[&name, ended.as_str()]).observe(started.elapsed().as_secs_f64());
        result
    }

    /// The call's `Evaluate` request, or why none can be made.
    fn prepare<'a>(
        &self,
        agent: &'a str,
        upstream: &'a Arc<Upstream>,
        tool: &'a str,
        arguments: Option<JsonObject>,
        claims: Claims,
        context: &RequestContext<RoleServer>,
    ) -> Result<Call<'a>, String> {
        let action_type = Gateway::action_type(upstream, tool);
        let mapping = upstream.config.tools.get(tool);
        let template = mapping.map(|m| m.resource.as_str()).unwrap_or_default();
        let resource = Template::parse(template)
            .map_err(|e| format!("the gateway's resource template for this tool is broken: {e}"))?
            .render(arguments.as_ref())
            .map_err(|missing| missing.to_string())?;
        check_numbers(arguments.as_ref())?;
        let estimated_cost = match mapping.map(|m| m.cost.as_str()).filter(|c| !c.is_empty()) {
            None => 0.0,
            Some(path) => {
                let mut value = arguments.as_ref().and_then(|a| a.get(path.split('.').next().unwrap_or_default()));
                for key in path.split('.').skip(1) {
                    value = value.and_then(|v| v.get(key));
                }
                match value.and_then(serde_json::Value::as_f64) {
                    Some(cost) if cost.is_finite() && cost >= 0.0 => cost,
                    _ => return Err(format!("argument {path:?}, the call's cost, must be a number >= 0")),
                }
            }
        };
        let confidence = match claims.confidence {
            None => 1.0,
            Some(value) => match value.as_f64() {
                Some(c) if (0.0..=1.0).contains(&c) => c,
                _ => return Err(format!("_meta {CONFIDENCE_META:?} must be a number from 0 to 1, not {value}")),
            },
        };
        let params = arguments.as_ref().map(warden_client::json::json_to_struct);
        let mut v = warden_errors::Validator::new();
        v.max_len("resource", &resource, warden_contract::bounds::RESOURCE_BYTES);
        if let Some(params) = &params {
            warden_contract::check_params(&mut v, "arguments", params);
        }
        v.finish().map_err(|e| format!("invalid arguments: {}", e.message))?;
        let canonical = serde_json::to_string(&arguments).expect("json");
        let key = hex::encode(Sha256::digest(format!("{agent}\n{action_type}\n{resource}\n{canonical}")));
        let request = pb::EvaluateRequest {
            agent: Some(pb::Agent { id: agent.to_owned(), confidence, ..Default::default() }),
            action: Some(pb::Action { r#type: action_type, resource, estimated_cost, params }),
            time: None,
            correlation_id: match claims.correlation_id {
                None => correlation_id(context),
                Some(serde_json::Value::String(id))
                    if !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()) =>
                {
                    id
                }
                Some(other) => {
                    return Err(format!(
                        "_meta {CORRELATION_META:?} must be 1 to 128 printable ASCII characters, not {other}"
                    ));
                }
            },
            approval_id: String::new(),
        };
        Ok(Call { agent, upstream, tool, arguments, request, key })
    }

    async fn decide_and_forward(
        &self,
        mut call: Call<'_>,
        approval_meta: Option<String>,
        context: &RequestContext<RoleServer>,
    ) -> (Ended, CallToolResult) {
        // An approval this exact action already has: redeem it if granted,
        // wait on it if pending.
        let remembered = approval_meta.or_else(|| self.held.get(&call.key));
        let mut waiting_on = None;
        if let Some(id) = remembered {
            match self.approval_state(&id, call.agent).await {
                Some(warden_proto::approval::v1::State::Approved) => call.request.approval_id = id,
                Some(warden_proto::approval::v1::State::Pending) => waiting_on = Some(id),
                _ => self.held.invalidate(&call.key),
            }
        }
        let decision = match waiting_on {
            Some(id) => self.hold(&mut call, id, Vec::new(), context).await,
            None => match self.evaluate(&call).await {
                Ok(decision) if decision.requires_approval() => {
                    let Some(id) = decision.approval_id.clone() else {
                        return (
                            Ended::Denied,
                            deny_result(&decision, "this call needs approval, and none could be opened"),
                        );
                    };
                    self.held.insert(call.key.clone(), id.clone());
                    self.hold(&mut call, id, decision.reasons, context).await
                }
                other => other,
            },
        };
        match decision {
            Ok(decision) if decision.is_allowed() => {
                self.held.invalidate(&call.key);
                (Ended::Allowed, self.forward(&call, &decision).await)
            }
            Ok(decision) if decision.requires_approval() => (Ended::Held, pending_result(&decision, call.tool)),
            Ok(decision) => (Ended::Denied, deny_result(&decision, "")),
            Err(message) => (Ended::Denied, error_result(message)),
        }
    }

    async fn evaluate(&self, call: &Call<'_>) -> Result<Decision, String> {
        let started = Instant::now();
        let decided = self.policy.evaluate(call.request.clone()).await;
        let upstream = call.upstream.config.name.as_str();
        METRICS.decision_duration.with_label_values(&[upstream]).observe(started.elapsed().as_secs_f64());
        decided.map_err(|error| match error {
            ClientError::Refused(error) => format!("Warden refused the call: {}", error.message),
            ClientError::InvalidRequest(error) => format!("invalid arguments: {}", error.message),
            other => format!("Warden could not decide: {other}"),
        })
    }

    /// The state of approval `id`, if it is `agent`'s.
    async fn approval_state(&self, id: &str, agent: &str) -> Option<warden_proto::approval::v1::State> {
        let approvals = self.approvals.as_ref()?;
        let request = warden_proto::approval::v1::GetApprovalRequest { id: id.to_owned() };
        let approval = approvals.raw().get_approval(request).await.ok()?.into_inner();
        (approval.agent_id == agent).then(|| approval.state()).filter(|_| approval.id == id)
    }

    /// Waits on approval `id` (telling the agent it waits, when it asked for
    /// progress); once granted, asks again with the grant. Returns the
    /// decision: allow (granted and redeemed), deny, or still
    /// require_approval when the wait ended first.
    async fn hold(
        &self,
        call: &mut Call<'_>,
        id: String,
        reasons: Vec<String>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Decision, String> {
        let pending = Decision {
            effect: warden_client::Effect::RequireApproval,
            reasons,
            matched_rules: Vec::new(),
            shadow_rules: Vec::new(),
            decision_id: None,
            policy_version: None,
            approval_id: Some(id.clone()),
            source: Source::PolicyEngine,
        };
        let Some(approvals) = &self.approvals else { return Ok(pending) };
        let token = context.meta.get_progress_token();
        let watched = id.clone();
        let wait = approvals.wait_for_approval(&watched, self.approval_wait);
        tokio::pin!(wait);
        let mut ticks = tokio::time::interval(self.progress_interval);
        let mut progress = 0u32;
        let outcome = loop {
            tokio::select! {
                outcome = &mut wait => break outcome,
                _ = ticks.tick() => {
                    if let Some(token) = &token {
                        progress += 1;
                        let note = ProgressNotificationParam::new(token.clone(), f64::from(progress))
                            .with_message(format!("waiting for a person to approve ({id})"));
                        let _ = context.peer.notify_progress(note).await;
                    }
                }
                _ = context.ct.cancelled() => return Ok(pending),
            }
        };
        match outcome {
            Ok(ApprovalOutcome::Approved(_)) => {
                call.request.approval_id = id;
                self.evaluate(call).await
            }
            Ok(ApprovalOutcome::NotApproved(approval)) => {
                self.held.invalidate(&call.key);
                Err(format!(
                    "approval {id} was not granted ({}); nothing was done",
                    approval.state().as_str_name().trim_start_matches("STATE_").to_lowercase()
                ))
            }
            Ok(ApprovalOutcome::TimedOut) => Ok(pending),
            Err(status) => {
                tracing::warn!(approval_id = %id, code = ?status.code(), "cannot wait on an approval");
                Ok(pending)
            }
        }
    }

    /// Sends the allowed call upstream with exactly the decided arguments,
    /// and records what happened.
    async fn forward(&self, call: &Call<'_>, decision: &Decision) -> CallToolResult {
        let started = Instant::now();
        let upstream = &call.upstream.config.name;
        let outcome = call.upstream.call(call.tool, call.arguments.clone()).await;
        let duration = started.elapsed();
        METRICS.upstream_duration.with_label_values(&[upstream]).observe(duration.as_secs_f64());
        let (status, error_class) = match &outcome {
            Ok(result) if result.is_error == Some(true) => (ActionStatus::Failure, Some("tool_error".to_owned())),
            Ok(_) => (ActionStatus::Success, None),
            Err(error) => {
                METRICS.upstream_errors.with_label_values(&[upstream, error.class()]).inc();
                (ActionStatus::Failure, Some(error.class().to_owned()))
            }
        };
        let action = call.request.action.as_ref().expect("built with an action");
        self.record(ActionOutcome {
            agent_id: call.agent.to_owned(),
            action_type: action.r#type.clone(),
            correlation_id: call.request.correlation_id.clone(),
            decision_id: decision.decision_id.clone(),
            status,
            duration,
            cost: action.estimated_cost,
            cost_type: None,
            error_class,
        })
        .await;
        match outcome {
            Ok(mut result) => {
                // Complete, whichever protocol version the upstream spoke
                // (rmcp leaves it out again for agents on older ones).
                result.result_type = Some(rmcp::model::ResultType::COMPLETE);
                result
            }
            Err(error) => {
                tracing::warn!(%upstream, tool = call.tool, %error, "allowed call failed upstream");
                error_result(format!("{error}; Warden allowed the call (decision {})", decision_label(decision)))
            }
        }
    }

    async fn record(&self, outcome: ActionOutcome) {
        if let Some(recorder) = &self.recorder {
            recorder.record(warden_client::action_completed_event(&outcome));
        }
    }
}

/// Writes `action_completed` events to the outbox from a task of its own:
/// every event queued while a write commits goes in the next one (one
/// commit, and on SQLite one sync, for many calls; it gathers for
/// [`GATHER`] first), and a call's answer does not wait for the disk. A
/// crash between the answer and the commit loses the event; the decision that allowed the call is in the decision
/// log either way.
/// How long the recorder gathers events before it commits them.
const GATHER: Duration = Duration::from_millis(10);

#[derive(Clone)]
pub struct Recorder {
    queue: tokio::sync::mpsc::UnboundedSender<warden_proto::audit::v1::AuditEvent>,
}

impl Recorder {
    /// The recorder, and the task that writes to `outbox`.
    pub fn new(outbox: OutboxTable) -> (Recorder, impl std::future::Future<Output = ()> + Send + 'static) {
        let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel();
        let writer = async move {
            let mut batch = Vec::new();
            while queued.recv_many(&mut batch, 1000).await > 0 {
                // What arrives in the next moment goes in the same commit:
                // one sync for them, not one per call, so the recorder's
                // syncs do not queue on the disk behind (or in front of)
                // the decision log's.
                tokio::time::sleep(GATHER).await;
                while batch.len() < 10_000
                    && let Ok(event) = queued.try_recv()
                {
                    batch.push(event);
                }
                let mut delay = Duration::from_millis(100);
                while let Err(error) = outbox.enqueue_audit(&batch).await {
                    tracing::error!(%error, events = batch.len(), "cannot queue action_completed events; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                batch.clear();
            }
        };
        (Recorder { queue }, writer)
    }

    fn record(&self, event: warden_proto::audit::v1::AuditEvent) {
        if self.queue.send(event).is_err() {
            tracing::error!("the recorder has stopped; an action_completed event is not recorded");
        }
    }
}

/// Refuses integers JSON holds exactly but the policy engine's numbers
/// (doubles) would not: the policy would see another amount than the tool.
fn check_numbers(arguments: Option<&JsonObject>) -> Result<(), String> {
    fn walk(value: &serde_json::Value, path: &str) -> Result<(), String> {
        match value {
            serde_json::Value::Number(n) => {
                let exact = n.as_f64().is_some_and(|f| {
                    n.as_i64().is_none_or(|i| (f as i64 == i) && i.unsigned_abs() <= 1 << 53)
                        && n.as_u64().is_none_or(|u| u <= 1 << 53)
                });
                if exact { Ok(()) } else { Err(format!("invalid arguments: {path}: {n} cannot be decided on exactly")) }
            }
            serde_json::Value::Array(items) => {
                items.iter().enumerate().try_for_each(|(i, item)| walk(item, &format!("{path}[{i}]")))
            }
            serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| walk(v, &format!("{path}.{k}"))),
            _ => Ok(()),
        }
    }
    match arguments {
        Some(map) => map.iter().try_for_each(|(k, v)| walk(v, &format!("arguments.{k}"))),
        None => Ok(()),
    }
}

/// `mcp:<session>:<request id>`, hashed when the client's ids make it too
/// long or odd for a correlation id.
fn correlation_id(context: &RequestContext<RoleServer>) -> String {
    let session = context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let id = match &context.id {
        rmcp::model::NumberOrString::Number(n) => n.to_string(),
        rmcp::model::NumberOrString::String(s) => s.to_string(),
    };
    let text = format!("mcp:{session}:{id}");
    if text.len() <= 128 && text.chars().all(|c| c.is_ascii_graphic()) {
        text
    } else {
        format!("mcp:{}", &hex::encode(Sha256::digest(text.as_bytes()))[..32])
    }
}

fn decision_label(decision: &Decision) -> &str {
    decision.decision_id.as_deref().unwrap_or("none")
}

fn error_result(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

fn deny_result(decision: &Decision, fallback: &str) -> CallToolResult {
    let reasons = if decision.reasons.is_empty() { fallback.to_owned() } else { decision.reasons.join("; ") };
    let origin = match decision.source {
        Source::PolicyEngine => format!("decision {}", decision_label(decision)),
        Source::Unavailable => "no decision: the policy engine could not be reached, so the call is denied".to_owned(),
    };
    error_result(format!("Warden denied this call: {reasons} ({origin}). The tool was not called."))
}

fn pending_result(decision: &Decision, tool: &str) -> CallToolResult {
    let id = decision.approval_id.as_deref().unwrap_or_default();
    let why = if decision.reasons.is_empty() { String::new() } else { format!(" ({})", decision.reasons.join("; ")) };
    error_result(format!(
        "Held for approval: approval {id} is waiting for a person{why}. The tool was not called. \
         Call {tool} again with the same arguments once it is approved; other arguments need an approval of their own."
    ))
}

/// The MCP server each agent session talks to.
#[derive(Clone)]
pub struct Handler {
    pub gateway: Arc<Gateway>,
    /// A stdio gateway's agent (started with its credential); `None`: the
    /// authenticated principal of each HTTP request.
    pub agent: Option<String>,
}

impl Handler {
    /// The agent a request acts for.
    fn agent(&self, extensions: &rmcp::model::Extensions) -> Result<String, McpError> {
        if let Some(agent) = &self.agent {
            return Ok(agent.clone());
        }
        extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<AgentId>())
            .map(|agent| agent.0.clone())
            .ok_or_else(|| McpError::invalid_request("no authenticated agent", None))
    }
}

impl ServerHandler for Handler {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build())
            .with_server_info(Implementation::new("warden-mcp-gateway", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tools behind Warden: every call is decided by policy. A denied call says why; \
                 a call needing approval waits for a person, or says which approval to wait for.",
            )
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.gateway.peers.lock().expect("peers").push(context.peer.clone());
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let agent = self.agent(&context.extensions)?;
        Ok(ListToolsResult::with_all_items(self.gateway.tools_for(&agent)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let agent = self.agent(&context.extensions)?;
        let span = tracing::info_span!("mcp.tools_call", agent_id = %agent, tool = %request.name);
        // The agent's trace, when it sends one (W3C `traceparent` in the
        // call's `_meta`, as OpenTelemetry's MCP conventions put it, or as
        // an HTTP header): the decision and the upstream call continue it.
        let traceparent = context.meta.get("traceparent").and_then(|v| v.as_str().map(str::to_owned)).or_else(|| {
            let parts = context.extensions.get::<http::request::Parts>()?;
            parts.headers.get("traceparent")?.to_str().ok().map(str::to_owned)
        });
        if let Some(traceparent) = traceparent.filter(|t| t.len() <= 128) {
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
                &span,
                warden_telemetry::context_from_traceparent(&traceparent),
            );
        }
        let result = tracing::Instrument::instrument(self.gateway.call(&agent, request, &context), span).await;
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(actions: &[&str], agents: &[&str], when: &str, effect: pb::Effect, shadow: bool) -> pb::RuleSummary {
        pb::RuleSummary {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            agents: agents.iter().map(|s| s.to_string()).collect(),
            when: when.into(),
            effect: effect as i32,
            shadow,
            ..Default::default()
        }
    }

    #[test]
    fn only_unconditional_enforced_denials_hide_tools() {
        let policies = pb::GetPoliciesResponse {
            policy_version: "v1".into(),
            rules: vec![
                rule(&["files.delete_*"], &["support-*"], "", pb::Effect::Deny, false),
                rule(&["billing.refund"], &[], "action.params.amount > 100", pb::Effect::Deny, false),
                rule(&["billing.export"], &[], "", pb::Effect::Deny, true),
                rule(&["billing.void"], &[], "", pb::Effect::RequireApproval, false),
                rule(&["mail.send"], &["role:intern"], "", pb::Effect::Deny, false),
                rule(&[], &["rogue-bot"], "", pb::Effect::Deny, false),
            ],
            ..Default::default()
        };
        let hidden = Hidden::of(&policies);
        assert!(hidden.hides("support-bot", "files.delete_record"));
        assert!(!hidden.hides("ops-bot", "files.delete_record"), "another agent");
        assert!(!hidden.hides("support-bot", "billing.refund"), "conditional: decided per call");
        assert!(!hidden.hides("support-bot", "billing.export"), "shadow rules are not enforced");
        assert!(!hidden.hides("support-bot", "billing.void"), "approval is not a denial");
        assert!(!hidden.hides("support-bot", "mail.send"), "roles are the registry's: decided per call");
        assert!(hidden.hides("rogue-bot", "anything.at_all"), "a rule for every action");
    }

    #[test]
    fn numbers_the_policy_cannot_hold_exactly_are_refused() {
        let ok: JsonObject =
            serde_json::from_str(r#"{"a": 1, "b": 2.5, "c": [9007199254740992], "d": {"e": -3}}"#).unwrap();
        assert_eq!(check_numbers(Some(&ok)), Ok(()));
        for bad in
            [r#"{"a": 9007199254740993}"#, r#"{"a": [1, {"b": 18446744073709551615}]}"#, r#"{"a": -9007199254740993}"#]
        {
            let args: JsonObject = serde_json::from_str(bad).unwrap();
            let error = check_numbers(Some(&args)).unwrap_err();
            assert!(error.starts_with("invalid arguments: arguments.a"), "{error}");
        }
    }
}
