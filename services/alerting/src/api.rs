//! Alertmanager's HTTP API (v2), so Prometheus can use Warden as its
//! Alertmanager and `amtool` works against it: `POST|GET /api/v2/alerts`,
//! `GET|POST /api/v2/silences`, `GET|DELETE /api/v2/silence/{id}`,
//! `GET /api/v2/alerts/groups`, `GET /api/v2/status`,
//! `GET /api/v2/receivers`, `/-/healthy`,
//! `/-/ready`; and `GET /rules`, the page a rule alert's `generatorURL`
//! leads to.
//!
//! With authentication on, callers send `authorization: Bearer <key or
//! token>` (Prometheus' `alertmanager_config.authorization`), and every
//! route answers as the role table says (`warden_auth::authz::HTTP_TABLE`:
//! reads and silences as the alerting RPCs they mirror, posting alerts
//! `service` or `operator`), with the same rate limits, throttle on bad
//! credentials and `auth_denied` events as gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, MatchedPath, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use warden_auth::Caller;

use crate::engine::{Engine, PostedAlert, SilenceFields, SilenceRequest, rfc3339};
use crate::routing;
use crate::store::{AlertState, Silence};

#[derive(Clone)]
pub struct Api {
    pub engine: Arc<Engine>,
    pub auth: Arc<warden_auth::Auth>,
    /// The routing file's text, for `/api/v2/status`.
    pub config_text: Arc<arc_swap::ArcSwap<String>>,
    pub started_ms: i64,
}

/// Largest accepted alerts per post.
const MAX_ALERTS: usize = 10_000;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"code": status.as_u16(), "message": message.into()}))).into_response()
}

fn bad_request(field: &str, message: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, format!("{field}: {message}"))
}

impl Api {
    pub fn router(self) -> Router {
        Router::new()
            .route("/-/healthy", get(|| async { "OK" }))
            .route("/-/ready", get(ready))
            .route("/api/v2/status", get(status))
            .route("/api/v2/receivers", get(receivers))
            .route("/rules", get(rules_page))
            .route("/api/v2/alerts", get(list_alerts).post(post_alerts))
            .route("/api/v2/alerts/groups", get(list_alert_groups))
            .route("/api/v2/silences", get(list_silences).post(post_silence))
            .route("/api/v2/silence/{id}", delete(delete_silence).get(get_silence))
            .route_layer(axum::middleware::from_fn_with_state(self.clone(), admit))
            .with_state(self)
    }
}

/// Routes anyone may call.
const OPEN_ROUTES: &[&str] = &["/-/healthy", "/-/ready"];

/// Admits every request by the role table before its handler runs; the
/// caller travels in the request's extensions. A route the table does not
/// name and that is not open is refused (fail closed).
async fn admit(
    State(api): State<Api>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    if OPEN_ROUTES.contains(&route.as_str()) {
        return next.run(request).await;
    }
    let method = request.method().as_str().to_owned();
    match api.auth.admit_http("alertmanager", &method, &route, request.headers(), Some(remote)).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(denial) => {
            let mut response = error(denial.status(), denial.message.clone());
            if let Some(value) = denial.retry_after_header() {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
            }
            response
        }
    }
}

/// Who posted: the principal, or `anonymous` with authentication off.
fn author(caller: &Caller) -> String {
    caller.principal().map(|p| p.id.clone()).unwrap_or_else(|| "anonymous".into())
}

async fn ready(State(api): State<Api>) -> Response {
    if api.engine.caught_up.load(Ordering::Relaxed) {
        "OK".into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "still reading the audit log")
    }
}

/// Alertmanager's `GET /api/v2/receivers`: every receiver's name (those
/// `receiver_matchers` keep).
async fn receivers(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    match Params::parse(raw.as_deref()).and_then(|query| query.receivers_kept()) {
        Ok(true) => {}
        Ok(false) => return Json(Vec::<serde_json::Value>::new()).into_response(),
        Err((field, message)) => return bad_request(&field, message),
    }
    let loaded = api.engine.loaded();
    let names: Vec<serde_json::Value> =
        loaded.routing.receivers.keys().map(|name| serde_json::json!({"name": name})).collect();
    Json(names).into_response()
}

/// The loaded rules as a page: what a rule alert's `generatorURL` leads
/// to (`/rules#rule-GROUP-NAME`).
async fn rules_page(State(api): State<Api>) -> Response {
    let escape = crate::receivers::escape_html;
    let loaded = api.engine.loaded();
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Warden alerting: rules</title></head><body><h1>Rules</h1>",
    );
    for group in &loaded.rules.groups {
        html.push_str(&format!(
            "<h2>{} <small>({}, every {:?})</small></h2>",
            escape(&group.name),
            escape(&group.file),
            group.interval
        ));
        for rule in &group.rules {
            let labels: Vec<String> = rule.raw_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            html.push_str(&format!(
                "<section id=\"{}\"><h3>{}</h3><pre>{}</pre><p>labels: {}</p><p>line {}</p></section>",
                crate::engine::rule_anchor(&group.name, &rule.name),
                escape(&rule.name),
                escape(&rule.expr_text),
                escape(&labels.join(", ")),
                rule.line
            ));
        }
    }
    html.push_str("</body></html>");
    axum::response::Html(html).into_response()
}

async fn status(State(api): State<Api>) -> Response {
    Json(serde_json::json!({
        "cluster": {"status": "disabled", "peers": []},
        "versionInfo": {"version": env!("CARGO_PKG_VERSION"), "branch": "", "revision": "", "buildUser": "", "buildDate": "", "goVersion": "warden"},
        "config": {"original": crate::routing::masked(api.config_text.load().as_str())},
        "uptime": rfc3339(api.started_ms),
    }))
    .into_response()
}

/// An RFC 3339 time; the error is the message for a 400.
fn parse_time(field: &str, value: &Option<String>) -> Result<Option<i64>, String> {
    match value.as_deref() {
        None | Some("") => Ok(None),
        // Go's zero time (`0001-01-01T00:00:00Z`, however many fraction
        // digits) means unset, as in Alertmanager.
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| (chrono::Datelike::year(&t) > 1).then(|| t.timestamp_millis()))
            .map_err(|e| format!("{field}: {text:?} is not an RFC 3339 time: {e}")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    generator_url: String,
}

async fn post_alerts(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let alerts: Vec<PostableAlert> = match serde_json::from_slice(&body) {
        Ok(alerts) => alerts,
        Err(e) => return bad_request("body", format!("expected a JSON list of alerts: {e}")),
    };
    if alerts.len() > MAX_ALERTS {
        return bad_request("body", format!("at most {MAX_ALERTS} alerts per request"));
    }
    let mut posted = Vec::with_capacity(alerts.len());
    for (i, alert) in alerts.into_iter().enumerate() {
        let field = |name: &str| format!("[{i}].{name}");
        if alert.labels.is_empty() {
            return bad_request(&field("labels"), "at least one label pair required");
        }
        for (name, value) in &alert.labels {
            if !crate::rules::valid_label_name(name) {
                return bad_request(&field("labels"), format!("invalid label name {name:?}"));
            }
            if value.is_empty() {
                return bad_request(&field("labels"), format!("label {name} has an empty value"));
            }
        }
        let starts = match parse_time(&field("startsAt"), &alert.starts_at) {
            Ok(t) => t,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        let ends = match parse_time(&field("endsAt"), &alert.ends_at) {
            Ok(t) => t,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        if let (Some(s), Some(e)) = (starts, ends)
            && e < s
        {
            return bad_request(&field("endsAt"), "start time must be before end time");
        }
        posted.push(PostedAlert {
            labels: alert.labels,
            annotations: alert.annotations,
            starts_at_ms: starts,
            ends_at_ms: ends,
            generator_url: alert.generator_url,
        });
    }
    match api.engine.post(posted).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot store the alerts: {e}")),
    }
}

/// A query string as Alertmanager's API reads it: `filter` may repeat
/// (amtool sends one per matcher), booleans are `true` or `false`.
#[derive(Debug, Default)]
struct Params {
    filter: Vec<String>,
    silenced: Option<bool>,
    inhibited: Option<bool>,
    active: Option<bool>,
    receiver: Option<String>,
    /// Silences: which states to include.
    expired: Option<bool>,
    pending: Option<bool>,
    /// Alert groups: include groups whose alerts are all muted.
    muted: Option<bool>,
    /// Matchers over the receivers' labels (Alertmanager's receiver
    /// `labels`, which Warden's receivers do not have: empty sets).
    receiver_matchers: Vec<String>,
}

impl Params {
    /// The query's parameters; `Err` is the 400 to answer (the parameter
    /// and what is wrong with it).
    fn parse(raw: Option<&str>) -> Result<Params, (String, String)> {
        let mut params = Params::default();
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let flag = |value: &str| match value {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                other => Err((key.to_string(), format!("expected true or false, got {other:?}"))),
            };
            match key.as_ref() {
                "filter" => params.filter.push(value.into_owned()),
                "silenced" => params.silenced = flag(&value)?,
                "inhibited" => params.inhibited = flag(&value)?,
                "active" => params.active = flag(&value)?,
                // Alertmanager's `unprocessed`: every alert here is processed.
                "unprocessed" => {
                    flag(&value)?;
                }
                "receiver" => params.receiver = Some(value.into_owned()),
                "expired" => params.expired = flag(&value)?,
                "pending" => params.pending = flag(&value)?,
                "muted" => params.muted = flag(&value)?,
                "receiver_matchers" => params.receiver_matchers.push(value.into_owned()),
                // Unknown parameters are ignored, as Alertmanager does.
                _ => {}
            }
        }
        Ok(params)
    }

    /// Every `filter` (each one or more comma-separated matchers).
    fn matchers(&self) -> Result<Vec<routing::Matcher>, (String, String)> {
        let mut all = Vec::new();
        for text in self.filter.iter().filter(|f| !f.is_empty()) {
            all.extend(routing::parse_matchers(text).map_err(|e| ("filter".to_owned(), e))?);
        }
        Ok(all)
    }

    /// `receiver`, a regular expression over the whole receiver name.
    fn receiver_regex(&self) -> Result<Option<regex::Regex>, (String, String)> {
        match self.receiver.as_deref().filter(|r| !r.is_empty()) {
            Some(pattern) => regex::Regex::new(&format!("^(?:{pattern})$"))
                .map(Some)
                .map_err(|e| ("receiver".to_owned(), e.to_string())),
            None => Ok(None),
        }
    }

    /// Whether `receiver_matchers` keep a receiver: Warden's receivers
    /// carry no labels, so a matcher keeps them when it matches the empty
    /// value (`owner=""`, `owner!="team"`), as Alertmanager's do for an
    /// absent label.
    fn receivers_kept(&self) -> Result<bool, (String, String)> {
        let mut kept = true;
        for text in self.receiver_matchers.iter().filter(|f| !f.is_empty()) {
            for matcher in routing::parse_matchers(text).map_err(|e| ("receiver_matchers".to_owned(), e))? {
                kept &= matcher.matches(&BTreeMap::new());
            }
        }
        Ok(kept)
    }
}

/// One firing alert as Alertmanager's API shows it, and whether it is
/// muted.
struct Listed {
    json: serde_json::Value,
    muted: bool,
}

/// The firing alerts a query selects (`filter`, `silenced`, `inhibited`,
/// `active`, `receiver`, `receiver_matchers`).
async fn selected_alerts(api: &Api, query: &Params) -> Result<Vec<Listed>, (String, String)> {
    let filter = query.matchers()?;
    let receiver_filter = query.receiver_regex()?;
    if !query.receivers_kept()? {
        return Ok(Vec::new());
    }
    let now = api.engine.clock.now_ms();
    let loaded = api.engine.loaded();
    let state = api.engine.state.lock().await;
    let mut out = Vec::new();
    for alert in state.alerts.values() {
        // Alertmanager lists alerts that are firing; resolved ones drop out.
        if alert.state != AlertState::Firing || !filter.iter().all(|m| m.matches(&alert.labels)) {
            continue;
        }
        let muting = Engine::muting(&state, &loaded, alert, now);
        let silenced = !muting.silenced_by.is_empty();
        let inhibited = !muting.inhibited_by.is_empty();
        if (!query.silenced.unwrap_or(true) && silenced)
            || (!query.inhibited.unwrap_or(true) && inhibited)
            || (!query.active.unwrap_or(true) && !silenced && !inhibited)
        {
            continue;
        }
        let receivers: Vec<String> =
            loaded.routing.matching_routes(&alert.labels).iter().map(|r| r.receiver.clone()).collect();
        if let Some(re) = &receiver_filter
            && !receivers.iter().any(|r| re.is_match(r))
        {
            continue;
        }
        let json = serde_json::json!({
            "labels": alert.labels,
            "annotations": alert.annotations,
            "startsAt": rfc3339(alert.starts_at_ms()),
            "endsAt": alert.ends_at_ms.map_or(crate::engine::ZERO_TIME.to_owned(), rfc3339),
            "updatedAt": rfc3339(alert.last_active_ms),
            "generatorURL": alert.generator_url,
            "fingerprint": alert.fingerprint,
            "receivers": receivers.iter().map(|r| serde_json::json!({"name": r})).collect::<Vec<_>>(),
            "status": {
                "state": if silenced || inhibited { "suppressed" } else { "active" },
                "silencedBy": muting.silenced_by,
                "inhibitedBy": muting.inhibited_by,
                "mutedBy": [],
            },
        });
        out.push(Listed { json, muted: silenced || inhibited });
    }
    Ok(out)
}

async fn list_alerts(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    let selected = match Params::parse(raw.as_deref()) {
        Ok(query) => selected_alerts(&api, &query).await,
        Err(refused) => Err(refused),
    };
    match selected {
        Ok(alerts) => Json(alerts.into_iter().map(|a| a.json).collect::<Vec<_>>()).into_response(),
        Err((field, message)) => bad_request(&field, message),
    }
}

/// Alertmanager's `GET /api/v2/alerts/groups`: the selected alerts by
/// route and the route's `group_by` labels, as the dispatcher groups them.
async fn list_alert_groups(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    let query = match Params::parse(raw.as_deref()) {
        Ok(query) => query,
        Err((field, message)) => return bad_request(&field, message),
    };
    let alerts = match selected_alerts(&api, &query).await {
        Ok(alerts) => alerts,
        Err((field, message)) => return bad_request(&field, message),
    };
    let loaded = api.engine.loaded();
    let receiver_filter = match query.receiver_regex() {
        Ok(re) => re,
        Err((field, message)) => return bad_request(&field, message),
    };
    /// One aggregation group: its receiver, labels, alerts, and whether
    /// every alert in it is muted.
    struct Group {
        receiver: String,
        labels: BTreeMap<String, String>,
        alerts: Vec<serde_json::Value>,
        muted: bool,
    }
    // By (route path, group labels).
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for listed in alerts {
        let labels: BTreeMap<String, String> =
            serde_json::from_value(listed.json["labels"].clone()).unwrap_or_default();
        for route in loaded.routing.matching_routes(&labels) {
            if receiver_filter.as_ref().is_some_and(|re| !re.is_match(&route.receiver)) {
                continue;
            }
            let group_labels: BTreeMap<String, String> = match &route.group_by {
                routing::GroupBy::All => labels.clone(),
                routing::GroupBy::Labels(names) => {
                    labels.iter().filter(|(k, _)| names.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
                }
            };
            let key = (route.path.clone(), serde_json::to_string(&group_labels).expect("json"));
            let group = groups.entry(key).or_insert_with(|| Group {
                receiver: route.receiver.clone(),
                labels: group_labels,
                alerts: Vec::new(),
                muted: true,
            });
            group.alerts.push(listed.json.clone());
            group.muted &= listed.muted;
        }
    }
    let out: Vec<serde_json::Value> = groups
        .into_values()
        .filter(|group| query.muted.unwrap_or(true) || !group.muted)
        .map(|group| {
            serde_json::json!({
                "labels": group.labels, "routeLabels": {}, "receiver": {"name": group.receiver}, "alerts": group.alerts,
            })
        })
        .collect();
    Json(out).into_response()
}

fn silence_json(silence: &Silence, now: i64) -> serde_json::Value {
    let matchers: Vec<serde_json::Value> = silence
        .matchers
        .iter()
        .filter_map(|m| routing::parse_matchers(m).ok())
        .flatten()
        .map(
            |m| serde_json::json!({"name": m.name, "value": m.value, "isRegex": m.is_regex(), "isEqual": m.is_equal()}),
        )
        .collect();
    serde_json::json!({
        "id": silence.id,
        "status": {"state": silence.state(now)},
        "updatedAt": rfc3339(silence.updated_at_ms),
        "matchers": matchers,
        "startsAt": rfc3339(silence.starts_at_ms),
        "endsAt": rfc3339(silence.ends_at_ms),
        "createdBy": silence.created_by,
        "comment": silence.comment,
    })
}

async fn list_silences(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    let (query, filter) = match Params::parse(raw.as_deref()).and_then(|q| q.matchers().map(|f| (q, f))) {
        Ok(parsed) => parsed,
        Err((field, message)) => return bad_request(&field, message),
    };
    let now = api.engine.clock.now_ms();
    // `active`, `pending` and `expired` include those states (all by default).
    let wanted = |state: &str| match state {
        "active" => query.active.unwrap_or(true),
        "pending" => query.pending.unwrap_or(true),
        _ => query.expired.unwrap_or(true),
    };
    match api.engine.store.silences().await {
        Ok(silences) => Json(
            silences
                .iter()
                .filter(|s| wanted(s.state(now)))
                .filter(|s| {
                    // A filter matcher selects silences that have an equal matcher.
                    filter.iter().all(|f| s.matchers.iter().any(|m| m == &f.to_string()))
                })
                .map(|s| silence_json(s, now))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn get_silence(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let now = api.engine.clock.now_ms();
    match api.engine.store.silences().await {
        Ok(silences) => match silences.iter().find(|s| s.id == id) {
            Some(silence) => Json(silence_json(silence, now)).into_response(),
            None => error(StatusCode::NOT_FOUND, format!("silence {id} not found")),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableMatcher {
    name: String,
    value: String,
    #[serde(default)]
    is_regex: bool,
    #[serde(default = "yes")]
    is_equal: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableSilence {
    #[serde(default)]
    id: String,
    #[serde(default)]
    matchers: Vec<PostableMatcher>,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
}

const HTTP_SILENCE_FIELDS: SilenceFields =
    SilenceFields { id: "id", matchers: "matchers", ends_at: "endsAt", comment: "comment" };

async fn post_silence(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let caller = author(&caller);
    let silence: PostableSilence = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return bad_request("body", format!("expected a silence: {e}")),
    };
    let matchers = silence
        .matchers
        .iter()
        .map(|m| {
            let op = match (m.is_regex, m.is_equal) {
                (false, true) => "=",
                (false, false) => "!=",
                (true, true) => "=~",
                (true, false) => "!~",
            };
            format!("{}{op}{}", m.name, serde_json::Value::String(m.value.clone()))
        })
        .collect();
    let starts = match parse_time("startsAt", &silence.starts_at) {
        Ok(t) => t,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let ends = match parse_time("endsAt", &silence.ends_at) {
        Ok(t) => t,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // The authenticated caller is the author; with authentication off the
    // body's createdBy is taken.
    let created_by = if caller == "anonymous" && !silence.created_by.is_empty() { silence.created_by } else { caller };
    let request = SilenceRequest {
        id: silence.id,
        matchers,
        starts_at_ms: starts,
        ends_at_ms: ends,
        created_by,
        comment: silence.comment,
    };
    match api.engine.silence(request, &HTTP_SILENCE_FIELDS).await {
        Ok(created) => Json(serde_json::json!({"silenceID": created.id})).into_response(),
        Err(e) => {
            let status = match e.code {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let detail = e.violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>();
            error(status, if detail.is_empty() { e.message.clone() } else { detail.join("; ") })
        }
    }
}

async fn delete_silence(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.engine.store.silences().await {
        Ok(silences) if !silences.iter().any(|s| s.id == id) => {
            error(StatusCode::NOT_FOUND, format!("silence {id} not found"))
        }
        Ok(_) => match api.engine.expire_silence(&id).await {
            Ok(_) => StatusCode::OK.into_response(),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
