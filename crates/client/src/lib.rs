//! The Rust SDK agents embed to ask Warden before they act.
//!
//! [`PolicyClient`] connects to the policy engine through the resilience
//! pipeline (per-attempt timeout, retries honouring `RetryInfo`, a circuit
//! breaker shared by every client of the same URL) and **fails closed**:
//! when the policy engine cannot answer, [`PolicyClient::evaluate`] returns
//! a deny with the reason "policy engine unavailable", unless the caller
//! explicitly chose [`WhenUnavailable::Allow`].
//!
//! ```no_run
//! # async fn run() -> Result<(), warden_client::ClientError> {
//! use warden_client::{ClientConfig, PolicyClient, Request};
//! let config = ClientConfig::new("http://127.0.0.1:50051").api_key(std::env::var("WARDEN_API_KEY").unwrap_or_default());
//! let client = PolicyClient::new(config)?;
//! let decision = client.evaluate(Request::new("support-bot", "issue_refund").cost(20.0)).await?;
//! if decision.is_allowed() { /* act */ }
//! # Ok(()) }
//! ```

pub mod json;

use std::sync::Arc;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
pub use warden_auth::{CallCredentials, ClientIdentity};
use warden_errors::{Classify, WardenError};
use warden_proto::policy::v1 as pb;
use warden_proto::policy::v1::policy_service_client::PolicyServiceClient;
use warden_resilience::grpc::{ResilienceLayer, ResilientService};
use warden_resilience::{Backoff, BreakerConfig, BreakerRegistry, Pipeline, RetryPolicy, SlidingWindow};

pub use pb::Effect;

/// What the client answers when the policy engine cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenUnavailable {
    /// Deny (the default: never fail open by accident).
    #[default]
    Deny,
    /// Allow, with a reason saying so. Only for actions whose risk the
    /// caller accepts without governance.
    Allow,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://HOST:PORT` of the policy engine.
    pub url: String,
    pub connect_timeout: Duration,
    /// Time one attempt may take.
    pub attempt_timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    pub when_unavailable: WhenUnavailable,
    /// The credential sent on every call, and TLS settings for `https://`.
    pub identity: ClientIdentity,
}

impl ClientConfig {
    /// Defaults for an agent on the request path: 250 ms per attempt, 3
    /// attempts within 1 s, a breaker that opens after 5 failures in a row
    /// for 2 s.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_millis(250),
            retry: RetryPolicy {
                max_attempts: 3,
                deadline: Some(Duration::from_secs(1)),
                backoff: Backoff::exponential(Duration::from_millis(20), Duration::from_millis(200)),
            },
            breaker: BreakerConfig {
                consecutive_failures: Some(5),
                failure_rate: Some(0.5),
                window: SlidingWindow::Time(Duration::from_secs(10)),
                minimum_calls: 20,
                open_duration: Duration::from_secs(2),
                half_open_max_calls: 1,
                success_threshold: 1,
                ..BreakerConfig::default()
            },
            when_unavailable: WhenUnavailable::Deny,
            identity: ClientIdentity::default(),
        }
    }

    /// Defaults for a Warden service calling another off the request path
    /// (shipping to the audit log): 5 s per attempt, 3 attempts within
    /// 10 s, the default breaker, presenting `identity`.
    pub fn for_service(url: impl Into<String>, identity: ClientIdentity) -> Self {
        ClientConfig {
            attempt_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_attempts: 3,
                deadline: Some(Duration::from_secs(10)),
                backoff: Backoff::exponential(Duration::from_millis(50), Duration::from_secs(1)),
            },
            breaker: BreakerConfig::default(),
            identity,
            ..ClientConfig::new(url)
        }
    }

    /// Sends `token` (a Warden API key or a JWT) as `authorization: Bearer`.
    pub fn api_key(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.identity.bearer = (!token.is_empty()).then(|| warden_auth::Secret::new(token));
        self
    }

    /// TLS settings (CA, client certificate for mTLS) for an `https://` URL.
    pub fn tls(mut self, tls: tonic::transport::ClientTlsConfig) -> Self {
        self.identity.tls = Some(tls);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid policy engine url {0:?}: {1}")]
    InvalidUrl(String, String),
    #[error("invalid credential: {0}")]
    InvalidCredential(String),
    /// The engine refused the caller: no or a bad credential
    /// (UNAUTHENTICATED), a missing role or another agent's name
    /// (PERMISSION_DENIED). Not an outage: fix the credential.
    #[error("refused: {0}")]
    Refused(WardenError),
    /// The request itself is wrong (fix the caller): the violations name the
    /// fields.
    #[error("invalid request: {0}")]
    InvalidRequest(WardenError),
}

/// Where a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The policy engine decided (and logged) it.
    PolicyEngine,
    /// The engine could not answer; the client applied [`WhenUnavailable`].
    Unavailable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub effect: Effect,
    pub reasons: Vec<String>,
    pub matched_rules: Vec<String>,
    pub shadow_rules: Vec<String>,
    /// The decision log id; `None` when the engine did not decide.
    pub decision_id: Option<String>,
    pub policy_version: Option<String>,
    /// When approval is required: the request to wait on
    /// ([`ApprovalClient::wait_for_approval`]), then to send back with
    /// [`Request::approval_id`].
    pub approval_id: Option<String>,
    pub source: Source,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.effect == Effect::Allow
    }

    pub fn requires_approval(&self) -> bool {
        self.effect == Effect::RequireApproval
    }
}

/// A request under construction.
#[derive(Debug, Clone, Default)]
pub struct Request(pb::EvaluateRequest);

impl Request {
    pub fn new(agent_id: impl Into<String>, action_type: impl Into<String>) -> Self {
        Request(pb::EvaluateRequest {
            agent: Some(pb::Agent { id: agent_id.into(), confidence: 1.0, ..Default::default() }),
            action: Some(pb::Action { r#type: action_type.into(), ..Default::default() }),
            ..Default::default()
        })
    }

    pub fn confidence(mut self, confidence: f64) -> Self {
        self.agent().confidence = confidence;
        self
    }

    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.agent().roles.push(role.into());
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.agent().labels.insert(key.into(), value.into());
        self
    }

    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.action().resource = resource.into();
        self
    }

    pub fn cost(mut self, cost: f64) -> Self {
        self.action().estimated_cost = cost;
        self
    }

    /// Adds a numeric, string or boolean parameter.
    pub fn param(mut self, key: impl Into<String>, value: impl Into<Param>) -> Self {
        let kind = match value.into() {
            Param::Number(n) => prost_types::value::Kind::NumberValue(n),
            Param::Text(s) => prost_types::value::Kind::StringValue(s),
            Param::Bool(b) => prost_types::value::Kind::BoolValue(b),
        };
        self.action()
            .params
            .get_or_insert_with(Default::default)
            .fields
            .insert(key.into(), prost_types::Value { kind: Some(kind) });
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.0.correlation_id = id.into();
        self
    }

    /// Spends a granted approval on this (exact) action.
    pub fn approval_id(mut self, id: impl Into<String>) -> Self {
        self.0.approval_id = id.into();
        self
    }

    fn agent(&mut self) -> &mut pb::Agent {
        self.0.agent.get_or_insert_with(Default::default)
    }

    fn action(&mut self) -> &mut pb::Action {
        self.0.action.get_or_insert_with(Default::default)
    }
}

impl From<pb::EvaluateRequest> for Request {
    fn from(request: pb::EvaluateRequest) -> Self {
        Request(request)
    }
}

/// A parameter value.
#[derive(Debug, Clone)]
pub enum Param {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl From<f64> for Param {
    fn from(n: f64) -> Self {
        Param::Number(n)
    }
}
impl From<i64> for Param {
    fn from(n: i64) -> Self {
        Param::Number(n as f64)
    }
}
impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Param::Text(s.to_owned())
    }
}
impl From<String> for Param {
    fn from(s: String) -> Self {
        Param::Text(s)
    }
}
impl From<bool> for Param {
    fn from(b: bool) -> Self {
        Param::Bool(b)
    }
}

/// The channel stack: credentials and trace context, then the resilience pipeline.
pub type PolicyChannel = InterceptedService<ResilientService<Channel>, CallCredentials>;

/// A lazily connected channel to `config.url` through the resilience
/// pipeline (one breaker per service and URL, shared by every client of
/// it), with the caller's credentials and trace context.
fn resilient_channel(config: &ClientConfig, service: &str) -> Result<PolicyChannel, ClientError> {
    let endpoint = config
        .identity
        .endpoint(&config.url)
        .map_err(|e| ClientError::InvalidUrl(config.url.clone(), e))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true);
    let credentials = config.identity.credentials().map_err(ClientError::InvalidCredential)?;
    let channel = endpoint.connect_lazy();
    let breaker_name = format!("{service}:{}", config.url);
    let breaker = BreakerRegistry::global().get_or_create(&breaker_name, || config.breaker.clone());
    let pipeline = Pipeline::builder(breaker_name)
        .retry(config.retry.clone())
        .breaker(breaker)
        .timeout(config.attempt_timeout)
        .build();
    let stack = tower::ServiceBuilder::new().layer(ResilienceLayer::new(pipeline)).service(channel);
    Ok(InterceptedService::new(stack, credentials))
}

/// A resilient client of the audit service, for the services that append
/// to it (one breaker per URL, shared with every other client of it).
pub fn audit_client(
    config: &ClientConfig,
) -> Result<warden_proto::audit::v1::audit_service_client::AuditServiceClient<PolicyChannel>, ClientError> {
    Ok(warden_proto::audit::v1::audit_service_client::AuditServiceClient::new(resilient_channel(
        config,
        "warden-audit",
    )?)
    .max_decoding_message_size(warden_contract::bounds::MESSAGE_BYTES)
    .max_encoding_message_size(warden_contract::bounds::MESSAGE_BYTES))
}

/// What a service's outbox holds: an audit event (shipped with
/// [`ship_audit_events`]) or a notification for one receiver, as JSON.
/// Stored as a `kind` and a `payload` (see `warden_store::outbox`).
#[derive(Debug, Clone, PartialEq)]
pub enum OutboxItem {
    Audit(warden_proto::audit::v1::AuditEvent),
    Notify { receiver: String, body: serde_json::Value },
}

impl OutboxItem {
    /// The row's `kind` and `payload`.
    pub fn encode(&self) -> (&'static str, Vec<u8>) {
        use prost::Message;
        match self {
            OutboxItem::Audit(event) => ("audit", event.encode_to_vec()),
            OutboxItem::Notify { receiver, body } => (
                "notify",
                serde_json::to_vec(&serde_json::json!({ "receiver": receiver, "body": body })).expect("json"),
            ),
        }
    }

    /// Reads a row back; `None` for a kind or payload this version cannot read.
    pub fn decode(kind: &str, payload: &[u8]) -> Option<OutboxItem> {
        use prost::Message;
        match kind {
            "audit" => warden_proto::audit::v1::AuditEvent::decode(payload).ok().map(OutboxItem::Audit),
            "notify" => {
                let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
                Some(OutboxItem::Notify {
                    receiver: value["receiver"].as_str()?.to_owned(),
                    body: value["body"].clone(),
                })
            }
            _ => None,
        }
    }
}

/// An outbox row holding an audit event: its id, delivery attempts so
/// far (this one included) and the event.
pub type OutboxEvent = (i64, i32, warden_proto::audit::v1::AuditEvent);

/// What became of one event handed to [`append_isolating`].
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The audit service recorded it (or had it already).
    Delivered,
    /// It could not be sent now (the service unavailable, busy, a deadline):
    /// try again, after the delay the service asked for, when it did.
    Retry(Option<Duration>),
    /// The audit service refused it for good (`INVALID_ARGUMENT`,
    /// `OUT_OF_RANGE`, `FAILED_PRECONDITION`, `ALREADY_EXISTS`,
    /// `UNIMPLEMENTED`): retrying cannot succeed, so it goes to a
    /// dead-letter store, and the events after it move on.
    Dead { code: tonic::Code, reason: String },
}

/// Whether an error from the audit service is the event's own fault, so
/// that sending it again cannot succeed. Authentication and permission
/// errors are not: they are the sender's configuration, fixed for all its
/// events at once, and its events wait for that.
pub fn permanent_refusal(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition | Code::AlreadyExists | Code::Unimplemented
    )
}

/// Most events in one Append call (the audit service's limit).
const APPEND_EVENTS: usize = 1000;

/// Appends `events` in calls of at most [`warden_contract::bounds::BATCH_BYTES`]
/// and 1,000 events, and says what became of each, in order. A call the
/// audit service refuses for good is split in halves until the events it
/// refuses are alone, so one bad event is dead-lettered and the rest are
/// delivered; a transient failure stops there, leaving it and every later
/// event to retry (in order).
pub async fn append_isolating(
    client: &warden_proto::audit::v1::audit_service_client::AuditServiceClient<PolicyChannel>,
    events: &[warden_proto::audit::v1::AuditEvent],
) -> Vec<Delivery> {
    use prost::Message;
    let mut outcomes = vec![Delivery::Retry(None); events.len()];
    // Chunks by bytes and count, in order.
    let mut ranges = std::collections::VecDeque::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, event) in events.iter().enumerate() {
        let size = event.encoded_len() + 8;
        if i > start && (bytes + size > warden_contract::bounds::BATCH_BYTES || i - start == APPEND_EVENTS) {
            ranges.push_back(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < events.len() {
        ranges.push_back(start..events.len());
    }
    while let Some(range) = ranges.pop_front() {
        let request = warden_proto::audit::v1::AppendRequest { events: events[range.clone()].to_vec() };
        match client.clone().append(request).await {
            Ok(_) => outcomes[range].fill(Delivery::Delivered),
            Err(status) if permanent_refusal(status.code()) => {
                if range.len() == 1 {
                    let reason = status.message().to_owned();
                    tracing::error!(code = ?status.code(), %reason, event_id = %events[range.start].event_id, "audit service refused an event for good; dead-lettered");
                    outcomes[range.start] = Delivery::Dead { code: status.code(), reason };
                } else {
                    let middle = range.start + range.len() / 2;
                    ranges.push_front(middle..range.end);
                    ranges.push_front(range.start..middle);
                }
            }
            Err(status) => {
                let error = warden_errors::WardenError::from_status(&status);
                tracing::warn!(code = ?status.code(), reason = %error.reason, events = events.len() - range.start, "audit service unavailable; events wait");
                outcomes[range.start..].fill(Delivery::Retry(error.retry_after));
                break;
            }
        }
    }
    outcomes
}

/// What [`ship_audit_events`] did with an outbox's rows.
#[derive(Debug, Default)]
pub struct Shipped {
    /// Recorded (or nothing to record them in): delete them.
    pub delivered: Vec<i64>,
    /// To send again after the delay (the service's `RetryInfo` or the
    /// backoff, whichever is longer).
    pub retry: Vec<(i64, Duration)>,
    /// Refused for good: move them to the dead-letter table, with why.
    pub dead: Vec<(i64, String)>,
}

/// Appends an outbox's audit events (the audit service deduplicates by
/// event id, so a retry records each once), isolating any the audit service
/// refuses for good ([`append_isolating`]). Without an audit service events
/// are not recorded and count as delivered.
pub async fn ship_audit_events(
    client: Option<&warden_proto::audit::v1::audit_service_client::AuditServiceClient<PolicyChannel>>,
    events: &[OutboxEvent],
    backoff: &warden_resilience::Backoff,
) -> Shipped {
    let mut shipped = Shipped::default();
    let Some(client) = client.filter(|_| !events.is_empty()) else {
        shipped.delivered = events.iter().map(|(id, ..)| *id).collect();
        return shipped;
    };
    let bodies: Vec<_> = events.iter().map(|(.., e)| e.clone()).collect();
    for ((id, attempts, _), outcome) in events.iter().zip(append_isolating(client, &bodies).await) {
        match outcome {
            Delivery::Delivered => shipped.delivered.push(*id),
            Delivery::Retry(after) => {
                shipped.retry.push((*id, after.unwrap_or_default().max(backoff.delay((*attempts).max(1) as u32 - 1))))
            }
            Delivery::Dead { code, reason } => shipped.dead.push((*id, format!("{code:?}: {reason}"))),
        }
    }
    shipped
}

/// A resilient, fail-closed client of the policy engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PolicyClient {
    client: PolicyServiceClient<PolicyChannel>,
    when_unavailable: WhenUnavailable,
    url: Arc<str>,
}

impl PolicyClient {
    /// Creates the client. It connects lazily: a policy engine that is down
    /// now makes decisions fail closed, not this call fail.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let client = PolicyServiceClient::new(resilient_channel(&config, "warden-policy-engine")?);
        Ok(PolicyClient { client, when_unavailable: config.when_unavailable, url: config.url.into() })
    }

    /// Asks whether an action may proceed. Never fails open: when the engine
    /// cannot answer, the decision is a deny (or an allow only when
    /// configured). Only a malformed request is an error.
    pub async fn evaluate(&self, request: impl Into<Request>) -> Result<Decision, ClientError> {
        let request = request.into().0;
        match self.client.clone().evaluate(request).await {
            Ok(response) => {
                let response = response.into_inner();
                Ok(Decision {
                    effect: Effect::try_from(response.effect).unwrap_or(Effect::Deny),
                    reasons: response.reasons,
                    matched_rules: response.matched_rules,
                    shadow_rules: response.shadow_rules,
                    decision_id: Some(response.decision_id),
                    policy_version: Some(response.policy_version),
                    approval_id: (!response.approval_id.is_empty()).then_some(response.approval_id),
                    source: Source::PolicyEngine,
                })
            }
            Err(status) => {
                let error = WardenError::from_status(&status);
                if status.code() == tonic::Code::InvalidArgument {
                    return Err(ClientError::InvalidRequest(error));
                }
                if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) {
                    return Err(ClientError::Refused(error));
                }
                tracing::warn!(url = %self.url, code = ?status.code(), reason = %error.reason, retryable = error.retryable(), "policy engine unavailable");
                let (effect, verdict) = match self.when_unavailable {
                    WhenUnavailable::Deny => (Effect::Deny, "denying"),
                    WhenUnavailable::Allow => (Effect::Allow, "allowing, as configured"),
                };
                Ok(Decision {
                    effect,
                    reasons: vec![format!("policy engine unavailable ({}); {verdict}", status.message())],
                    matched_rules: Vec::new(),
                    shadow_rules: Vec::new(),
                    decision_id: None,
                    policy_version: None,
                    approval_id: None,
                    source: Source::Unavailable,
                })
            }
        }
    }

    /// The generated client on the same resilient channel, for the other
    /// RPCs (kill switches, policy management).
    pub fn raw(&self) -> PolicyServiceClient<PolicyChannel> {
        self.client.clone()
    }
}

// === outcomes ===

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionStatus {
    Success,
    Failure,
}

/// What an action did, for the audit log and the alerting service.
#[derive(Debug, Clone)]
pub struct ActionOutcome {
    pub agent_id: String,
    pub action_type: String,
    pub correlation_id: String,
    /// The decision that allowed it: makes the record idempotent (a retry
    /// records it once).
    pub decision_id: Option<String>,
    pub status: ActionStatus,
    pub duration: Duration,
    /// What it cost, in the operator's currency.
    pub cost: f64,
    /// What kind of cost (`llm_tokens`, `api_calls`, ...); the alerting
    /// service's `agent_cost_total_dollars{cost_type}`, `action` when unset.
    pub cost_type: Option<String>,
    /// For failures: a class such as `timeout` or `rate_limited`.
    pub error_class: Option<String>,
}

/// The `action_completed` audit event recording `outcome` (its id
/// derived from the decision's, so a retry records it once).
pub fn action_completed_event(outcome: &ActionOutcome) -> warden_proto::audit::v1::AuditEvent {
    use prost_types::value::Kind;
    let text = |s: &str| prost_types::Value { kind: Some(Kind::StringValue(s.to_owned())) };
    let number = |n: f64| prost_types::Value { kind: Some(Kind::NumberValue(n)) };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("action_type".to_string(), text(&outcome.action_type));
    let status = match outcome.status {
        ActionStatus::Success => "success",
        ActionStatus::Failure => "failure",
    };
    fields.insert("status".to_string(), text(status));
    fields.insert("duration_seconds".to_string(), number(outcome.duration.as_secs_f64()));
    fields.insert("cost".to_string(), number(outcome.cost));
    if let Some(kind) = &outcome.cost_type {
        fields.insert("cost_type".to_string(), text(kind));
    }
    if let Some(class) = &outcome.error_class {
        fields.insert("error_class".to_string(), text(class));
    }
    if let Some(id) = &outcome.decision_id {
        fields.insert("decision_id".to_string(), text(id));
    }
    warden_proto::audit::v1::AuditEvent {
        event_id: outcome.decision_id.as_ref().map(|id| format!("action:{id}")).unwrap_or_default(),
        event_type: "action_completed".into(),
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        correlation_id: outcome.correlation_id.clone(),
        agent_id: outcome.agent_id.clone(),
        actor: String::new(),
        payload: Some(prost_types::Struct { fields: fields.into_iter().collect() }),
        sensitive: None,
        subject: String::new(),
    }
}

/// Records `action_completed` events in the audit log (an agent key may
/// record only its own actions).
#[derive(Debug, Clone)]
pub struct ActionRecorder {
    client: warden_proto::audit::v1::audit_service_client::AuditServiceClient<PolicyChannel>,
}

impl ActionRecorder {
    /// `config.url` is the audit service's address.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        Ok(ActionRecorder { client: audit_client(&config)? })
    }

    /// Records one outcome; returns its sequence number in the log.
    pub async fn record_action(&self, outcome: &ActionOutcome) -> Result<u64, tonic::Status> {
        self.append(action_completed_event(outcome)).await
    }

    /// Records that one of the agent's circuit breakers changed state
    /// (`circuit_breaker_changed`): the alerting service alerts on open
    /// breakers (`circuit_breaker_state{name,state,agent_id}`).
    pub async fn record_breaker_change(
        &self,
        agent_id: &str,
        name: &str,
        state: warden_resilience::BreakerState,
    ) -> Result<u64, tonic::Status> {
        use prost_types::value::Kind;
        let text = |s: &str| prost_types::Value { kind: Some(Kind::StringValue(s.to_owned())) };
        let fields = [("name".to_string(), text(name)), ("state".to_string(), text(state.as_str()))];
        let event = warden_proto::audit::v1::AuditEvent {
            event_id: String::new(),
            event_type: "circuit_breaker_changed".into(),
            time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            correlation_id: String::new(),
            agent_id: agent_id.to_owned(),
            actor: String::new(),
            payload: Some(prost_types::Struct { fields: fields.into_iter().collect() }),
            sensitive: None,
            subject: String::new(),
        };
        self.append(event).await
    }

    /// Records every state change of `breaker` as the agent's, until the
    /// breaker is dropped. A change that cannot be recorded is logged.
    pub fn watch_breaker(
        &self,
        agent_id: impl Into<String>,
        breaker: &std::sync::Arc<warden_resilience::CircuitBreaker>,
    ) -> tokio::task::JoinHandle<()> {
        let recorder = self.clone();
        let agent_id = agent_id.into();
        let mut changes = breaker.subscribe();
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(change) => {
                        if let Err(status) = recorder.record_breaker_change(&agent_id, &change.name, change.to).await {
                            tracing::warn!(breaker = %change.name, code = ?status.code(), "cannot record a breaker change");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "breaker changes were missed");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    async fn append(&self, event: warden_proto::audit::v1::AuditEvent) -> Result<u64, tonic::Status> {
        let response =
            self.client.clone().append(warden_proto::audit::v1::AppendRequest { events: vec![event] }).await?;
        Ok(response.into_inner().receipts.first().map(|r| r.sequence).unwrap_or_default())
    }
}

// === approvals ===

/// How waiting for an approval ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ApprovalOutcome {
    /// Granted: ask `evaluate` again with [`Request::approval_id`].
    Approved(warden_proto::approval::v1::Approval),
    /// Denied by a reviewer, expired, or cancelled: do not act.
    NotApproved(warden_proto::approval::v1::Approval),
    /// Still pending when the caller's timeout ran out.
    TimedOut,
}

/// A client of the approval service, for agents that wait.
#[derive(Debug, Clone)]
pub struct ApprovalClient {
    client: warden_proto::approval::v1::approval_service_client::ApprovalServiceClient<
        InterceptedService<Channel, CallCredentials>,
    >,
}

impl ApprovalClient {
    /// `config.url` is the approval service's address; its credential and
    /// TLS settings are used as for the policy engine.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let channel = config
            .identity
            .endpoint(&config.url)
            .map_err(|e| ClientError::InvalidUrl(config.url.clone(), e))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let credentials = config.identity.credentials().map_err(ClientError::InvalidCredential)?;
        Ok(ApprovalClient {
            client: warden_proto::approval::v1::approval_service_client::ApprovalServiceClient::new(
                InterceptedService::new(channel, credentials),
            ),
        })
    }

    /// Waits until the request is decided or `timeout` passes. Survives a
    /// restart of either side: a broken stream is reopened, and the first
    /// message of a new stream is the current state.
    pub async fn wait_for_approval(&self, id: &str, timeout: Duration) -> Result<ApprovalOutcome, tonic::Status> {
        use warden_proto::approval::v1::{State, WatchApprovalRequest};
        let deadline = tokio::time::Instant::now() + timeout;
        let wait = async {
            loop {
                let stream = self.client.clone().watch_approval(WatchApprovalRequest { id: id.to_owned() }).await;
                let mut stream = match stream {
                    Ok(stream) => stream.into_inner(),
                    Err(status) if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(status) => return Err(status),
                };
                loop {
                    match stream.message().await {
                        Ok(Some(approval)) => match State::try_from(approval.state).unwrap_or(State::Unspecified) {
                            State::Pending | State::Unspecified => {}
                            State::Approved => return Ok(ApprovalOutcome::Approved(approval)),
                            _ => return Ok(ApprovalOutcome::NotApproved(approval)),
                        },
                        // The stream ended or broke (a restart): reopen it.
                        Ok(None) | Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            break;
                        }
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(result) => result,
            Err(_) => Ok(ApprovalOutcome::TimedOut),
        }
    }

    /// The generated client, for the other RPCs.
    pub fn raw(
        &self,
    ) -> warden_proto::approval::v1::approval_service_client::ApprovalServiceClient<
        InterceptedService<Channel, CallCredentials>,
    > {
        self.client.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_build_the_wire_message() {
        let request = Request::new("bot", "issue_refund")
            .confidence(0.8)
            .role("support")
            .label("team", "billing")
            .resource("order/1")
            .cost(12.5)
            .param("amount", 100.0)
            .param("currency", "EUR")
            .param("vip", true)
            .correlation_id("c-1")
            .0;
        let agent = request.agent.unwrap();
        let action = request.action.unwrap();
        assert_eq!(
            (agent.id.as_str(), agent.confidence, agent.roles.as_slice()),
            ("bot", 0.8, &["support".to_string()][..])
        );
        assert_eq!(agent.labels["team"], "billing");
        assert_eq!(
            (action.r#type.as_str(), action.resource.as_str(), action.estimated_cost),
            ("issue_refund", "order/1", 12.5)
        );
        assert_eq!(action.params.unwrap().fields.len(), 3);
        assert_eq!(request.correlation_id, "c-1");
    }

    #[test]
    fn bad_urls_are_reported() {
        assert!(matches!(PolicyClient::new(ClientConfig::new("not a url")), Err(ClientError::InvalidUrl(..))));
    }

    #[tokio::test]
    async fn an_unreachable_engine_means_deny_unless_configured_otherwise() {
        let mut config = ClientConfig::new("http://127.0.0.1:1");
        config.retry.max_attempts = 2;
        let client = PolicyClient::new(config.clone()).unwrap();
        let decision = client.evaluate(Request::new("bot", "send_email")).await.unwrap();
        assert_eq!(decision.effect, Effect::Deny);
        assert_eq!(decision.source, Source::Unavailable);
        assert!(decision.reasons[0].starts_with("policy engine unavailable"), "{:?}", decision.reasons);
        assert!(decision.decision_id.is_none());

        config.when_unavailable = WhenUnavailable::Allow;
        config.url = "http://127.0.0.1:2".into();
        let open = PolicyClient::new(config).unwrap().evaluate(Request::new("bot", "send_email")).await.unwrap();
        assert!(open.is_allowed());
        assert!(open.reasons[0].contains("allowing, as configured"));
    }
}
