//! The `warden.alerting.v1.AlertingService` gRPC handlers: input
//! validation, conversion. Errors become `tonic::Status` here and nowhere
//! else.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use warden_auth::Caller;
use warden_errors::{Category, Validator, WardenError, to_status};
use warden_proto::alerting::v1 as pb;
use warden_proto::alerting::v1::alerting_service_server::AlertingService;

use crate::engine::{Engine, SilenceFields, SilenceRequest, store_error};
use crate::routing::{self, Matcher};
use crate::rules::Kind;
use crate::store::{Alert, AlertState, Silence};

/// Reloads the rule and routing files (shared with the file watcher).
pub type Reload = Arc<dyn Fn() -> Result<(usize, usize), String> + Send + Sync>;

#[derive(Clone)]
pub struct AlertingServiceImpl {
    engine: Arc<Engine>,
    reload: Reload,
}

impl AlertingServiceImpl {
    pub fn new(engine: Arc<Engine>, reload: Reload) -> Self {
        AlertingServiceImpl { engine, reload }
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

fn millis(stamp: &prost_types::Timestamp) -> i64 {
    stamp.seconds.saturating_mul(1000).saturating_add(i64::from(stamp.nanos) / 1_000_000)
}

pub fn alert_to_proto(alert: &Alert, silenced_by: Vec<String>, inhibited_by: Vec<String>) -> pb::Alert {
    pb::Alert {
        fingerprint: alert.fingerprint.clone(),
        labels: alert.labels.clone().into_iter().collect(),
        annotations: alert.annotations.clone().into_iter().collect(),
        state: alert.state.as_str().into(),
        active_at: Some(timestamp(alert.active_at_ms)),
        starts_at: alert.fired_at_ms.map(timestamp),
        ends_at: alert.resolved_at_ms.map(timestamp),
        value: alert.value,
        rule: alert.rule.clone(),
        silenced_by,
        inhibited_by,
    }
}

fn silence_to_proto(silence: &Silence, now: i64) -> pb::Silence {
    pb::Silence {
        id: silence.id.clone(),
        matchers: silence.matchers.clone(),
        starts_at: Some(timestamp(silence.starts_at_ms)),
        ends_at: Some(timestamp(silence.ends_at_ms)),
        created_by: silence.created_by.clone(),
        comment: silence.comment.clone(),
        state: silence.state(now).into(),
        updated_at: Some(timestamp(silence.updated_at_ms)),
    }
}

/// Parses `field[i]` matchers, naming the bad ones.
fn matchers(field: &str, texts: &[String], check: &mut Validator) -> Vec<Matcher> {
    let mut out = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match routing::parse_matchers(text) {
            Ok(parsed) => out.extend(parsed),
            Err(error) => check.violation(format!("{field}[{i}]"), error),
        }
    }
    out
}

fn who<T>(request: &Request<T>) -> String {
    match Caller::of(request) {
        Some(Caller::Principal(principal)) => principal.id.clone(),
        _ => "anonymous".into(),
    }
}

const GRPC_SILENCE_FIELDS: SilenceFields =
    SilenceFields { id: "id", matchers: "matchers", ends_at: "ends_at", comment: "comment" };

#[tonic::async_trait]
impl AlertingService for AlertingServiceImpl {
    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let body = request.into_inner();
        let mut check = Validator::new();
        let filter = matchers("matchers", &body.matchers, &mut check);
        check.finish().map_err(|e| to_status(&e))?;
        let now = self.engine.clock.now_ms();
        let loaded = self.engine.loaded();
        let state = self.engine.state.lock().await;
        let mut alerts = Vec::new();
        for alert in state.alerts.values() {
            if !filter.iter().all(|m| m.matches(&alert.labels)) {
                continue;
            }
            let muting = Engine::muting(&state, &loaded, alert, now);
            if (body.exclude_silenced && !muting.silenced_by.is_empty())
                || (body.exclude_inhibited && !muting.inhibited_by.is_empty())
            {
                continue;
            }
            alerts.push(alert_to_proto(alert, muting.silenced_by, muting.inhibited_by));
        }
        Ok(Response::new(pb::ListAlertsResponse { alerts }))
    }

    async fn list_rules(
        &self,
        _request: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let loaded = self.engine.loaded();
        let state = self.engine.state.lock().await;
        let now = self.engine.clock.now_ms();
        let mut rules = Vec::new();
        for group in &loaded.rules.groups {
            for rule in &group.rules {
                let key = rule.key(&group.name);
                let status = state.rule_status.get(&key).cloned().unwrap_or_default();
                let alerts: Vec<&Alert> = state.alerts.values().filter(|a| a.rule == key).collect();
                let rule_state = if alerts.iter().any(|a| a.state == AlertState::Firing) {
                    "firing"
                } else if alerts.iter().any(|a| a.state == AlertState::Pending) {
                    "pending"
                } else {
                    "inactive"
                };
                let (for_seconds, keep_firing_for_seconds, annotations) = match &rule.kind {
                    Kind::Alert { for_, keep_firing_for, raw_annotations, .. } => {
                        (for_.as_secs_f64(), keep_firing_for.as_secs_f64(), raw_annotations.clone())
                    }
                    Kind::Record => (0.0, 0.0, BTreeMap::new()),
                };
                rules.push(pb::Rule {
                    group: group.name.clone(),
                    name: rule.name.clone(),
                    expr: rule.expr_text.clone(),
                    for_seconds,
                    keep_firing_for_seconds,
                    labels: rule.raw_labels.clone().into_iter().collect(),
                    annotations: annotations.into_iter().collect(),
                    state: if matches!(rule.kind, Kind::Record) { String::new() } else { rule_state.into() },
                    health: if status.last_evaluation_ms == 0 {
                        "unknown".into()
                    } else if status.last_error.is_empty() {
                        "ok".into()
                    } else {
                        "err".into()
                    },
                    last_error: status.last_error.clone(),
                    last_evaluation: (status.last_evaluation_ms > 0).then(|| timestamp(status.last_evaluation_ms)),
                    evaluation_seconds: status.evaluation_seconds,
                    alerts: alerts
                        .iter()
                        .map(|a| {
                            let muting = Engine::muting(&state, &loaded, a, now);
                            alert_to_proto(a, muting.silenced_by, muting.inhibited_by)
                        })
                        .collect(),
                    file: group.file.clone(),
                });
            }
        }
        Ok(Response::new(pb::ListRulesResponse { rules }))
    }

    async fn create_silence(
        &self,
        request: Request<pb::CreateSilenceRequest>,
    ) -> Result<Response<pb::Silence>, Status> {
        let created_by = who(&request);
        let body = request.into_inner();
        let silence = self
            .engine
            .silence(
                SilenceRequest {
                    id: body.id,
                    matchers: body.matchers,
                    starts_at_ms: body.starts_at.as_ref().map(millis),
                    ends_at_ms: body.ends_at.as_ref().map(millis),
                    created_by,
                    comment: body.comment,
                },
                &GRPC_SILENCE_FIELDS,
            )
            .await
            .map_err(|e| to_status(&e))?;
        tracing::info!(id = %silence.id, by = %silence.created_by, matchers = ?silence.matchers, "silence created");
        Ok(Response::new(silence_to_proto(&silence, self.engine.clock.now_ms())))
    }

    async fn expire_silence(
        &self,
        request: Request<pb::ExpireSilenceRequest>,
    ) -> Result<Response<pb::Silence>, Status> {
        let by = who(&request);
        let id = request.into_inner().id;
        let mut check = Validator::new();
        check.required_str("id", &id, 256);
        check.finish().map_err(|e| to_status(&e))?;
        let expired = self.engine.expire_silence(&id).await.map_err(|e| to_status(&store_error(&e)))?;
        let silences = self.engine.store.silences().await.map_err(|e| to_status(&store_error(&e)))?;
        let Some(silence) = silences.into_iter().find(|s| s.id == id) else {
            return Err(to_status(
                &WardenError::new(Category::Permanent, "SILENCE_NOT_FOUND", format!("silence {id} not found"))
                    .with_code(tonic::Code::NotFound),
            ));
        };
        if expired {
            tracing::info!(id = %id, by = %by, "silence expired");
        }
        Ok(Response::new(silence_to_proto(&silence, self.engine.clock.now_ms())))
    }

    async fn list_silences(
        &self,
        request: Request<pb::ListSilencesRequest>,
    ) -> Result<Response<pb::ListSilencesResponse>, Status> {
        let include_expired = request.into_inner().include_expired;
        let now = self.engine.clock.now_ms();
        let silences = self.engine.store.silences().await.map_err(|e| to_status(&store_error(&e)))?;
        Ok(Response::new(pb::ListSilencesResponse {
            silences: silences
                .iter()
                .filter(|s| include_expired || s.ends_at_ms > now)
                .map(|s| silence_to_proto(s, now))
                .collect(),
        }))
    }

    async fn test_route(
        &self,
        request: Request<pb::TestRouteRequest>,
    ) -> Result<Response<pb::TestRouteResponse>, Status> {
        let labels: BTreeMap<String, String> = request.into_inner().labels.into_iter().collect();
        let mut check = Validator::new();
        check.check(!labels.is_empty(), "labels", "give at least one label");
        for name in labels.keys() {
            check.check(crate::rules::valid_label_name(name), format!("labels[{name}]"), "invalid label name");
        }
        check.finish().map_err(|e| to_status(&e))?;
        let loaded = self.engine.loaded();
        let now = chrono::DateTime::from_timestamp_millis(self.engine.clock.now_ms()).unwrap_or_default();
        let routes = loaded
            .routing
            .matching_routes(&labels)
            .into_iter()
            .map(|route| pb::RouteMatch {
                receiver: route.receiver.clone(),
                group_by: match &route.group_by {
                    routing::GroupBy::All => vec!["...".into()],
                    routing::GroupBy::Labels(labels) => labels.clone(),
                },
                path: route.path.clone(),
                muted_now: loaded.routing.muted(route, now),
            })
            .collect();
        let silenced_by = self.engine.silencing(&labels).await;
        Ok(Response::new(pb::TestRouteResponse { routes, silenced_by }))
    }

    async fn reload_config(
        &self,
        _request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        match (self.reload)() {
            Ok((rules, receivers)) => {
                Ok(Response::new(pb::ReloadConfigResponse { rules: rules as u32, receivers: receivers as u32 }))
            }
            Err(error) => Err(to_status(
                &WardenError::new(Category::Permanent, "BAD_CONFIGURATION", error)
                    .with_code(tonic::Code::FailedPrecondition),
            )),
        }
    }
}
