//! The alert engine: rule evaluation and the alert lifecycle (inactive,
//! pending for `for`, firing, resolved, `keep_firing_for`), alerts posted
//! by Prometheus, silences and inhibition, and the dispatcher that groups
//! alerts by route and decides, with Alertmanager's timing (`group_wait`,
//! `group_interval`, `repeat_interval`) and its notification-log rules,
//! which receiver is told what.
//!
//! Every alert change is stored with its audit event before the next step
//! uses it; a notification is queued only through the notification log's
//! conditional update, so it is sent once however many replicas run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use warden_proto::audit::v1::AuditEvent;

use crate::promql::{Evaluator, Sample, Value};
use crate::routing::{self, GroupBy, Matcher};
use crate::rules::{Kind, RuleSet};
use crate::series::{Derived, Labels, NAME};
use crate::store::{Alert, AlertChange, AlertState, AlertingStore, NflogEntry, Outgoing, Silence, fingerprint};

/// How long a resolved alert is kept (and shown) after it resolved.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;
/// How long expired silences are kept.
pub const SILENCE_RETENTION_MS: i64 = 5 * 24 * 3600 * 1000;

/// Wall-clock milliseconds that follow tokio's clock (so tests can pause
/// it), plus an offset tests move with [`Clock::advance`] to drive a
/// timeline without waiting.
#[derive(Debug, Clone)]
pub struct Clock {
    base_ms: i64,
    start: tokio::time::Instant,
    offset_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl Clock {
    pub fn system() -> Clock {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Clock::at(now.as_millis() as i64)
    }

    /// A clock reading `base_ms` now.
    pub fn at(base_ms: i64) -> Clock {
        Clock { base_ms, start: tokio::time::Instant::now(), offset_ms: Arc::default() }
    }

    pub fn now_ms(&self) -> i64 {
        self.base_ms
            + self.start.elapsed().as_millis() as i64
            + self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The rules and routing in force.
#[derive(Debug)]
pub struct Loaded {
    pub rules: RuleSet,
    pub routing: routing::Config,
}

#[derive(Debug, Clone, Default)]
pub struct RuleStatus {
    pub last_evaluation_ms: i64,
    pub evaluation_seconds: f64,
    pub last_error: String,
}

/// An aggregation group: alerts a route groups together.
#[derive(Debug, Clone)]
struct Group {
    route_path: String,
    labels: Labels,
    next_flush_ms: i64,
    fingerprints: BTreeSet<String>,
}

#[derive(Debug)]
pub struct State {
    pub derived: Derived,
    pub alerts: BTreeMap<String, Alert>,
    pub rule_status: HashMap<String, RuleStatus>,
    next_evaluation_ms: HashMap<String, i64>,
    silences: Vec<(Silence, Vec<Matcher>)>,
    groups: BTreeMap<String, Group>,
    /// When the derived series were last saved.
    pub saved_at_ms: i64,
}

/// A posted alert (Alertmanager's `postableAlert`).
#[derive(Debug, Clone, PartialEq)]
pub struct PostedAlert {
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    pub generator_url: String,
}

/// Why an alert is not being notified.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Muting {
    pub silenced_by: Vec<String>,
    pub inhibited_by: Vec<String>,
}

pub struct Engine {
    pub store: AlertingStore,
    pub clock: Clock,
    loaded: ArcSwap<Loaded>,
    pub state: tokio::sync::Mutex<State>,
    /// Audit events are written only when an audit service is configured.
    audit: bool,
    /// The service's address as receivers see it (`externalURL`), set
    /// once the HTTP listener is bound when not configured.
    external_url: std::sync::RwLock<String>,
    /// The audit log has been read up to (nearly) now at least once: rules
    /// are not evaluated over a history still being replayed.
    pub caught_up: std::sync::atomic::AtomicBool,
    /// Posted alerts wake the dispatcher, queued notifications the shipper,
    /// so neither waits for its next tick.
    pub wake_dispatch: tokio::sync::Notify,
    pub wake_shipper: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn millis_to_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// RFC 3339 with milliseconds, as Alertmanager writes times.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Alertmanager's zero time, for alerts that have not ended.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Engine {
    /// `externalURL`: where receivers' links lead.
    pub fn external_url(&self) -> String {
        self.external_url.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Sets `externalURL` (once the HTTP listener's address is known).
    pub fn set_external_url(&self, url: &str) {
        *self.external_url.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = url.trim_end_matches('/').into();
    }

    pub fn new(
        store: AlertingStore,
        loaded: Loaded,
        derived: Derived,
        alerts: Vec<Alert>,
        clock: Clock,
        audit: bool,
        external_url: String,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            clock,
            loaded: ArcSwap::from_pointee(loaded),
            state: tokio::sync::Mutex::new(State {
                derived,
                alerts: alerts.into_iter().map(|a| (a.fingerprint.clone(), a)).collect(),
                rule_status: HashMap::new(),
                next_evaluation_ms: HashMap::new(),
                silences: Vec::new(),
                groups: BTreeMap::new(),
                saved_at_ms: 0,
            }),
            // Without an audit service there is nothing to replay.
            caught_up: std::sync::atomic::AtomicBool::new(!audit),
            audit,
            external_url: std::sync::RwLock::new(external_url.trim_end_matches('/').to_owned()),
            wake_dispatch: tokio::sync::Notify::new(),
            wake_shipper: Arc::new(tokio::sync::Notify::new()),
        })
    }

    pub fn loaded(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    pub fn replace(&self, loaded: Loaded) {
        self.loaded.store(Arc::new(loaded));
    }

    fn audit_event(&self, event_type: &str, alert: &Alert, at_ms: i64, extra: &[(&str, String)]) -> Option<AuditEvent> {
        if !self.audit {
            return None;
        }
        use prost_types::value::Kind as K;
        let text = |s: &str| prost_types::Value { kind: Some(K::StringValue(s.to_owned())) };
        let map = |m: &BTreeMap<String, String>| prost_types::Value {
            kind: Some(K::StructValue(prost_types::Struct {
                fields: m.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
            })),
        };
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("fingerprint".to_string(), text(&alert.fingerprint));
        fields.insert("alertname".to_string(), text(alert.labels.get("alertname").map_or("", |s| s)));
        fields.insert("labels".to_string(), map(&alert.labels));
        fields.insert("annotations".to_string(), map(&alert.annotations));
        fields.insert("rule".to_string(), text(&alert.rule));
        fields.insert(
            "value".to_string(),
            prost_types::Value { kind: Some(K::NumberValue(if alert.value.is_finite() { alert.value } else { 0.0 })) },
        );
        for (k, v) in extra {
            fields.insert((*k).to_string(), text(v));
        }
        Some(AuditEvent {
            // The same transition seen by two replicas is recorded once.
            event_id: format!("{event_type}:{}:{}", alert.fingerprint, alert.starts_at_ms()),
            event_type: event_type.into(),
            time: Some(millis_to_timestamp(at_ms)),
            correlation_id: String::new(),
            agent_id: alert.labels.get("agent_id").cloned().unwrap_or_default(),
            actor: "warden-alerting".into(),
            payload: Some(prost_types::Struct { fields: fields.into_iter().collect() }),
            sensitive: None,
            subject: String::new(),
        })
    }

    /// One pass: due rule groups, posted alerts' expiry, storage, dispatch.
    pub async fn tick(&self) -> Result<(), warden_store::StoreError> {
        let now = self.clock.now_ms();
        let loaded = self.loaded();
        let silences = self.store.silences().await?;
        let mut changes = Vec::new();
        let mut events = Vec::new();
        let mut state = self.state.lock().await;
        state.silences = silences
            .into_iter()
            .map(|s| {
                let matchers = s.matchers.iter().filter_map(|m| routing::parse_matchers(m).ok()).flatten().collect();
                (s, matchers)
            })
            .collect();
        let caught_up = self.caught_up.load(std::sync::atomic::Ordering::Relaxed);
        for group in loaded.rules.groups.iter().filter(|_| caught_up) {
            let interval = group.interval.as_millis() as i64;
            let due = *state.next_evaluation_ms.entry(group.name.clone()).or_insert((now / interval) * interval);
            if now < due {
                continue;
            }
            // Evaluate at the boundary, so replicas evaluate at the same
            // instants and agree on the alerts' times.
            let at = (now / interval) * interval;
            state.next_evaluation_ms.insert(group.name.clone(), at + interval);
            self.evaluate_group(&mut state, group, at, &mut changes, &mut events);
        }
        // Posted alerts resolve at their end time unless sent again.
        for alert in state.alerts.values_mut() {
            if alert.rule.is_empty() && alert.state == AlertState::Firing && alert.ends_at_ms.is_some_and(|e| e <= now)
            {
                alert.state = AlertState::Resolved;
                alert.resolved_at_ms = alert.ends_at_ms;
                changes.push(AlertChange::Upsert(alert.clone()));
                events.extend(self.audit_event("alert_resolved", alert, now, &[]));
            }
        }
        let expired: Vec<String> = state
            .alerts
            .values()
            .filter(|a| a.rule.is_empty() && a.state == AlertState::Resolved)
            .filter(|a| a.resolved_at_ms.is_some_and(|r| now - r > RESOLVED_RETENTION_MS))
            .map(|a| a.fingerprint.clone())
            .collect();
        for fingerprint in expired {
            state.alerts.remove(&fingerprint);
            changes.push(AlertChange::Delete(fingerprint));
        }
        self.store.save_alerts(&changes, &events).await?;
        crate::metrics::METRICS.alerts.reset();
        for alert in state.alerts.values() {
            crate::metrics::METRICS.alerts.with_label_values(&[alert.state.as_str()]).inc();
        }
        self.dispatch(&mut state, &loaded, now).await
    }

    fn evaluate_group(
        &self,
        state: &mut State,
        group: &crate::rules::Group,
        at: i64,
        changes: &mut Vec<AlertChange>,
        events: &mut Vec<AuditEvent>,
    ) {
        state.derived.advance_to(at);
        for rule in &group.rules {
            let started = std::time::Instant::now();
            let key = rule.key(&group.name);
            let result = Evaluator { tsdb: &state.derived.tsdb, default_step_ms: group.interval.as_millis() as i64 }
                .query(&rule.expr, at);
            let samples = match result {
                Ok(Value::Vector(samples)) => Ok(samples),
                Ok(Value::Scalar(value)) => Ok(vec![Sample { labels: Labels::new(), value }]),
                Ok(_) => Err("the expression must give an instant vector or a scalar".to_string()),
                Err(error) => Err(error),
            };
            let outcome = samples.and_then(|samples| match &rule.kind {
                Kind::Record => {
                    for sample in samples {
                        let mut labels = sample.labels;
                        for (name, template) in &rule.labels {
                            labels.insert(name.clone(), template.render(&labels, sample.value));
                        }
                        labels.insert(NAME.into(), rule.name.clone());
                        state.derived.tsdb.push(&labels, at, sample.value);
                    }
                    Ok(())
                }
                Kind::Alert { for_, keep_firing_for, annotations, .. } => {
                    let mut active: BTreeMap<String, (Labels, BTreeMap<String, String>, f64)> = BTreeMap::new();
                    for sample in samples {
                        let mut source = sample.labels;
                        source.remove(NAME);
                        let mut labels = source.clone();
                        for (name, template) in &rule.labels {
                            let value = template.render(&source, sample.value);
                            if value.is_empty() {
                                labels.remove(name);
                            } else {
                                labels.insert(name.clone(), value);
                            }
                        }
                        labels.insert("alertname".into(), rule.name.clone());
                        let rendered =
                            annotations.iter().map(|(k, t)| (k.clone(), t.render(&source, sample.value))).collect();
                        let fp = fingerprint(&labels);
                        if active.insert(fp, (labels, rendered, sample.value)).is_some() {
                            return Err("vector contains metrics with the same labelset after applying alert labels".into());
                        }
                    }
                    if group.limit > 0 && active.len() > group.limit {
                        return Err(format!("exceeded the group's limit of {} alerts ({})", group.limit, active.len()));
                    }
                    for (fp, (labels, annotations, value)) in &active {
                        match state.alerts.get_mut(fp) {
                            Some(alert) if alert.rule == key && alert.state != AlertState::Resolved => {
                                alert.value = *value;
                                alert.last_active_ms = at;
                                if &alert.annotations != annotations {
                                    alert.annotations = annotations.clone();
                                    changes.push(AlertChange::Upsert(alert.clone()));
                                }
                            }
                            _ => {
                                let alert = Alert {
                                    fingerprint: fp.clone(),
                                    rule: key.clone(),
                                    labels: labels.clone(),
                                    annotations: annotations.clone(),
                                    state: AlertState::Pending,
                                    active_at_ms: at,
                                    fired_at_ms: None,
                                    resolved_at_ms: None,
                                    last_active_ms: at,
                                    ends_at_ms: None,
                                    value: *value,
                                    generator_url: rule_url(&self.external_url(), &group.name, &rule.name),
                                    keep_firing_since_ms: None,
                                };
                                changes.push(AlertChange::Upsert(alert.clone()));
                                state.alerts.insert(fp.clone(), alert);
                            }
                        }
                    }
                    let hold = for_.as_millis() as i64;
                    let keep = keep_firing_for.as_millis() as i64;
                    let mine: Vec<String> =
                        state.alerts.values().filter(|a| a.rule == key).map(|a| a.fingerprint.clone()).collect();
                    for fp in mine {
                        let alert = state.alerts.get_mut(&fp).expect("listed");
                        if active.contains_key(&fp) {
                            if alert.keep_firing_since_ms.take().is_some() {
                                changes.push(AlertChange::Upsert(alert.clone()));
                            }
                            if alert.state == AlertState::Pending && at - alert.active_at_ms >= hold {
                                alert.state = AlertState::Firing;
                                alert.fired_at_ms = Some(at);
                                changes.push(AlertChange::Upsert(alert.clone()));
                                events.extend(self.audit_event("alert_firing", alert, at, &[]));
                                tracing::info!(alert = %rule.name, fingerprint = %fp, value = alert.value, "alert firing");
                            }
                            continue;
                        }
                        match alert.state {
                            AlertState::Pending => {
                                state.alerts.remove(&fp);
                                changes.push(AlertChange::Delete(fp));
                            }
                            // Held for `keep_firing_for` from the first
                            // evaluation that no longer returned it.
                            AlertState::Firing if keep > 0 && at - alert.keep_firing_since_ms.unwrap_or(at) < keep => {
                                if alert.keep_firing_since_ms.is_none() {
                                    alert.keep_firing_since_ms = Some(at);
                                    changes.push(AlertChange::Upsert(alert.clone()));
                                }
                            }
                            AlertState::Firing => {
                                alert.state = AlertState::Resolved;
                                alert.resolved_at_ms = Some(at);
                                changes.push(AlertChange::Upsert(alert.clone()));
                                events.extend(self.audit_event("alert_resolved", alert, at, &[]));
                                tracing::info!(alert = %rule.name, fingerprint = %fp, "alert resolved");
                            }
                            AlertState::Resolved => {
                                if alert.resolved_at_ms.is_some_and(|r| at - r > RESOLVED_RETENTION_MS) {
                                    state.alerts.remove(&fp);
                                    changes.push(AlertChange::Delete(fp));
                                }
                            }
                        }
                    }
                    Ok(())
                }
            });
            let status = state.rule_status.entry(key).or_default();
            status.last_evaluation_ms = at;
            status.evaluation_seconds = started.elapsed().as_secs_f64();
            status.last_error = match outcome {
                Ok(()) => String::new(),
                Err(error) => {
                    tracing::warn!(rule = %rule.name, group = %group.name, %error, "rule evaluation failed");
                    crate::metrics::METRICS.rule_failures.inc();
                    error
                }
            };
            crate::metrics::METRICS.rule_evaluations.inc();
        }
    }

    /// Takes alerts posted by Prometheus (Alertmanager's semantics: an
    /// alert without `endsAt` resolves after `resolve_timeout` unless sent
    /// again; one with a past `endsAt` is resolved).
    pub async fn post(&self, posted: Vec<PostedAlert>) -> Result<(), warden_store::StoreError> {
        let now = self.clock.now_ms();
        let resolve_timeout = self.loaded().routing.resolve_timeout.as_millis() as i64;
        let mut changes = Vec::new();
        let mut events = Vec::new();
        let mut state = self.state.lock().await;
        for alert in posted {
            let fp = fingerprint(&alert.labels);
            let starts = alert.starts_at_ms.unwrap_or(now);
            let ends = alert.ends_at_ms.unwrap_or(now + resolve_timeout);
            let resolved = ends <= now;
            let previous = state.alerts.get(&fp).filter(|a| a.rule.is_empty()).cloned();
            let mut next = match previous {
                // The same alert still firing, or resolved and firing again
                // before it ended: merge (earliest start, latest end).
                Some(old) if old.state == AlertState::Firing || old.resolved_at_ms.is_some_and(|r| starts <= r) => {
                    Alert {
                        active_at_ms: old.active_at_ms.min(starts),
                        fired_at_ms: Some(old.starts_at_ms().min(starts)),
                        ..old
                    }
                }
                _ => Alert {
                    fingerprint: fp.clone(),
                    rule: String::new(),
                    labels: alert.labels.clone(),
                    annotations: BTreeMap::new(),
                    state: AlertState::Firing,
                    active_at_ms: starts,
                    fired_at_ms: Some(starts),
                    resolved_at_ms: None,
                    last_active_ms: now,
                    ends_at_ms: None,
                    value: 0.0,
                    generator_url: String::new(),
                    keep_firing_since_ms: None,
                },
            };
            let was = state.alerts.get(&fp).filter(|a| a.rule.is_empty()).map(|a| a.state);
            next.annotations = alert.annotations;
            next.generator_url = alert.generator_url;
            next.last_active_ms = now;
            next.ends_at_ms = Some(ends);
            if resolved {
                next.state = AlertState::Resolved;
                next.resolved_at_ms = Some(ends);
            } else {
                next.state = AlertState::Firing;
                next.resolved_at_ms = None;
            }
            match (was, next.state) {
                (Some(AlertState::Firing), AlertState::Firing) | (Some(AlertState::Resolved), AlertState::Resolved) => {
                }
                (_, AlertState::Firing) => events.extend(self.audit_event("alert_firing", &next, now, &[])),
                (Some(_), AlertState::Resolved) => events.extend(self.audit_event("alert_resolved", &next, now, &[])),
                _ => {}
            }
            changes.push(AlertChange::Upsert(next.clone()));
            state.alerts.insert(fp, next);
        }
        self.store.save_alerts(&changes, &events).await?;
        self.wake_dispatch.notify_one();
        Ok(())
    }

    /// Why an alert is muted now (silences and inhibitions).
    pub fn muting(state: &State, loaded: &Loaded, alert: &Alert, now: i64) -> Muting {
        let silenced_by = state
            .silences
            .iter()
            .filter(|(s, m)| {
                s.starts_at_ms <= now
                    && s.ends_at_ms > now
                    && !m.is_empty()
                    && m.iter().all(|m| m.matches(&alert.labels))
            })
            .map(|(s, _)| s.id.clone())
            .collect();
        let mut inhibited_by = Vec::new();
        for rule in &loaded.routing.inhibit_rules {
            if !rule.target.iter().all(|m| m.matches(&alert.labels)) {
                continue;
            }
            for source in state.alerts.values() {
                if source.fingerprint == alert.fingerprint
                    || source.state != AlertState::Firing
                    || !rule.source.iter().all(|m| m.matches(&source.labels))
                    || !rule.equal.iter().all(|l| source.labels.get(l) == alert.labels.get(l))
                {
                    continue;
                }
                inhibited_by.push(source.fingerprint.clone());
            }
        }
        inhibited_by.sort();
        inhibited_by.dedup();
        Muting { silenced_by, inhibited_by }
    }

    /// Active silences matching `labels`.
    pub async fn silencing(&self, labels: &Labels) -> Vec<String> {
        let now = self.clock.now_ms();
        let state = self.state.lock().await;
        state
            .silences
            .iter()
            .filter(|(s, m)| {
                s.starts_at_ms <= now && s.ends_at_ms > now && !m.is_empty() && m.iter().all(|m| m.matches(labels))
            })
            .map(|(s, _)| s.id.clone())
            .collect()
    }

    async fn dispatch(&self, state: &mut State, loaded: &Loaded, now: i64) -> Result<(), warden_store::StoreError> {
        let routing = &loaded.routing;
        // Membership: every firing or resolved alert joins the group of
        // each route it matches.
        let mut members: BTreeMap<String, (String, Labels, i64)> = BTreeMap::new();
        let mut joined: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for alert in state.alerts.values() {
            if alert.state == AlertState::Pending {
                continue;
            }
            for route in routing.matching_routes(&alert.labels) {
                let labels: Labels = match &route.group_by {
                    GroupBy::All => alert.labels.clone(),
                    GroupBy::Labels(names) => alert
                        .labels
                        .iter()
                        .filter(|(k, _)| names.contains(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                };
                let key = format!("{}:{}", route.path, serde_json::to_string(&labels).expect("json"));
                let wait = route.group_wait.as_millis() as i64;
                // group_wait counts from the alert's start: one that started
                // long ago is not held.
                let first_flush = (alert.starts_at_ms() + wait).max(now);
                let entry = members.entry(key.clone()).or_insert((route.path.clone(), labels, first_flush));
                entry.2 = entry.2.min(first_flush);
                joined.entry(key).or_default().insert(alert.fingerprint.clone());
            }
        }
        for (key, (route_path, labels, first_flush)) in members {
            let group = state.groups.entry(key.clone()).or_insert_with(|| Group {
                route_path,
                labels,
                next_flush_ms: first_flush,
                fingerprints: BTreeSet::new(),
            });
            group.fingerprints.extend(joined.remove(&key).unwrap_or_default());
        }
        let alerts = &state.alerts;
        for group in state.groups.values_mut() {
            group.fingerprints.retain(|fp| alerts.contains_key(fp));
        }
        state.groups.retain(|_, g| !g.fingerprints.is_empty());
        let due: Vec<String> =
            state.groups.iter().filter(|(_, g)| g.next_flush_ms <= now).map(|(k, _)| k.clone()).collect();
        for key in due {
            let Some(route) = find_route(&routing.route, &state.groups[&key].route_path) else {
                state.groups.remove(&key);
                continue;
            };
            let group = state.groups.get_mut(&key).expect("listed");
            group.next_flush_ms = now + route.group_interval.as_millis() as i64;
            let group = group.clone();
            if routing.muted(route, chrono::DateTime::from_timestamp_millis(now).unwrap_or_default()) {
                continue;
            }
            let mut firing = Vec::new();
            let mut resolved = Vec::new();
            for fp in &group.fingerprints {
                let alert = &state.alerts[fp];
                let muting = Engine::muting(state, loaded, alert, now);
                if !muting.silenced_by.is_empty() || !muting.inhibited_by.is_empty() {
                    continue;
                }
                match alert.state {
                    AlertState::Firing => firing.push(alert.clone()),
                    AlertState::Resolved => resolved.push(alert.clone()),
                    AlertState::Pending => {}
                }
            }
            let Some(receiver) = routing.receivers.get(&route.receiver) else { continue };
            let mut all_sent = true;
            for (integration, send_resolved) in integrations(receiver) {
                let name = format!("{}/{integration}", receiver.name);
                let entry = self.store.nflog(&key, &name).await?;
                let firing_set: BTreeSet<String> = firing.iter().map(|a| a.fingerprint.clone()).collect();
                let resolved_set: BTreeSet<String> = resolved.iter().map(|a| a.fingerprint.clone()).collect();
                if !needs_update(entry.as_ref(), &firing_set, &resolved_set, send_resolved, route.repeat_interval, now)
                {
                    continue;
                }
                let mut shown: Vec<&Alert> = firing.iter().collect();
                if send_resolved {
                    shown.extend(resolved.iter());
                }
                let items = if shown.is_empty() {
                    Vec::new()
                } else {
                    let external_url = self.external_url();
                    let body = webhook_message(&key, &receiver.name, &group.labels, &shown, &external_url, now);
                    vec![Outgoing::Notify { receiver: name.clone(), body }]
                };
                let next = NflogEntry { firing: firing_set, resolved: resolved_set, sent_at_ms: now, version: 0 };
                let claimed = self
                    .store
                    .claim_notification(&key, &name, entry.as_ref().map(|e| e.version), &next, &items)
                    .await?;
                if claimed && !items.is_empty() {
                    self.wake_shipper.notify_one();
                    tracing::info!(group = %key, receiver = %name, firing = firing.len(), resolved = resolved.len(), "notification queued");
                    crate::metrics::METRICS.notifications_queued.inc();
                }
                all_sent &= claimed || entry.is_some();
            }
            // Resolved alerts the receivers have been told about leave the group.
            if all_sent && let Some(group) = state.groups.get_mut(&key) {
                for alert in &resolved {
                    group.fingerprints.remove(&alert.fingerprint);
                }
            }
        }
        Ok(())
    }

    /// A silence is created (replacing `replaces`, which is expired).
    pub async fn create_silence(
        &self,
        silence: Silence,
        replaces: Option<&str>,
    ) -> Result<Silence, warden_store::StoreError> {
        if let Some(old) = replaces {
            self.store.expire_silence(old, self.clock.now_ms()).await?;
        }
        self.store.insert_silence(&silence).await?;
        self.refresh_silences().await?;
        Ok(silence)
    }

    pub async fn expire_silence(&self, id: &str) -> Result<bool, warden_store::StoreError> {
        let expired = self.store.expire_silence(id, self.clock.now_ms()).await?;
        self.refresh_silences().await?;
        Ok(expired)
    }

    pub async fn refresh_silences(&self) -> Result<(), warden_store::StoreError> {
        let silences = self.store.silences().await?;
        let mut state = self.state.lock().await;
        state.silences = silences
            .into_iter()
            .map(|s| {
                let matchers = s.matchers.iter().filter_map(|m| routing::parse_matchers(m).ok()).flatten().collect();
                (s, matchers)
            })
            .collect();
        Ok(())
    }

    /// Saves the derived series and their audit position.
    pub async fn save_derived(&self) -> Result<(), warden_store::StoreError> {
        let now = self.clock.now_ms();
        let (position, snapshot) = {
            let mut state = self.state.lock().await;
            state.saved_at_ms = now;
            (state.derived.position, serde_json::to_vec(&state.derived).expect("json"))
        };
        self.store.save_snapshot(position, &snapshot, now).await
    }
}

fn find_route<'a>(route: &'a routing::Route, path: &str) -> Option<&'a routing::Route> {
    if route.path == path {
        return Some(route);
    }
    route.routes.iter().find_map(|child| find_route(child, path))
}

/// A receiver's integrations: `KIND/INDEX` and whether they are told about
/// resolved alerts.
pub fn integrations(receiver: &routing::ReceiverYaml) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    out.extend(receiver.webhook_configs.iter().enumerate().map(|(i, c)| (format!("webhook/{i}"), c.send_resolved)));
    out.extend(receiver.slack_configs.iter().enumerate().map(|(i, c)| (format!("slack/{i}"), c.send_resolved)));
    out.extend(receiver.pagerduty_configs.iter().enumerate().map(|(i, c)| (format!("pagerduty/{i}"), c.send_resolved)));
    out.extend(receiver.email_configs.iter().enumerate().map(|(i, c)| (format!("email/{i}"), c.send_resolved)));
    out.extend(receiver.log_configs.iter().enumerate().map(|(i, c)| (format!("log/{i}"), c.send_resolved)));
    out
}

/// Alertmanager's rule for telling a receiver again.
fn needs_update(
    entry: Option<&NflogEntry>,
    firing: &BTreeSet<String>,
    resolved: &BTreeSet<String>,
    send_resolved: bool,
    repeat: Duration,
    now: i64,
) -> bool {
    let Some(entry) = entry else { return !firing.is_empty() };
    if !firing.is_subset(&entry.firing) {
        return true;
    }
    if firing.is_empty() {
        // Everything resolved: tell the receiver if it was told of any
        // firing alert (this also clears the log's firing set).
        return !entry.firing.is_empty();
    }
    if send_resolved && !resolved.is_subset(&entry.resolved) {
        return true;
    }
    entry.sent_at_ms + repeat.as_millis() as i64 <= now
}

/// Alertmanager's webhook payload (version 4).
pub fn webhook_message(
    group_key: &str,
    receiver: &str,
    group_labels: &Labels,
    alerts: &[&Alert],
    external_url: &str,
    now: i64,
) -> serde_json::Value {
    let common = |pick: &dyn Fn(&Alert) -> &BTreeMap<String, String>| -> BTreeMap<String, String> {
        let Some(first) = alerts.first() else { return BTreeMap::new() };
        pick(first)
            .iter()
            .filter(|(k, v)| alerts.iter().all(|a| pick(a).get(*k) == Some(*v)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let firing = alerts.iter().any(|a| a.state == AlertState::Firing);
    serde_json::json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common(&|a| &a.labels),
        "commonAnnotations": common(&|a| &a.annotations),
        "externalURL": external_url,
        "alerts": alerts.iter().map(|a| serde_json::json!({
            "status": if a.state == AlertState::Firing { "firing" } else { "resolved" },
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.starts_at_ms()),
            "endsAt": match a.state {
                AlertState::Resolved => rfc3339(a.resolved_at_ms.unwrap_or(now)),
                _ => a.ends_at_ms.map_or(ZERO_TIME.to_owned(), rfc3339),
            },
            "generatorURL": a.generator_url,
            "fingerprint": a.fingerprint,
        })).collect::<Vec<_>>(),
    })
}

/// A silence to create, as either API receives it.
#[derive(Debug, Clone)]
pub struct SilenceRequest {
    pub id: String,
    pub matchers: Vec<String>,
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    pub created_by: String,
    pub comment: String,
}

/// Longest accepted comment.
pub const COMMENT_BYTES: usize = 4096;

impl Engine {
    /// Checks a silence request (fields named as `prefix` + field) and
    /// creates it; an `id` replaces that silence, which expires.
    pub async fn silence(
        &self,
        request: SilenceRequest,
        fields: &SilenceFields,
    ) -> Result<Silence, warden_errors::WardenError> {
        let now = self.clock.now_ms();
        let mut check = warden_errors::Validator::new();
        let mut canonical = Vec::new();
        if request.matchers.is_empty() {
            check.violation(fields.matchers, "a silence needs at least one matcher");
        }
        for (i, text) in request.matchers.iter().enumerate() {
            match routing::parse_matchers(text) {
                Ok(parsed) => canonical.extend(parsed.iter().map(|m| m.to_string())),
                Err(error) => check.violation(format!("{}[{i}]", fields.matchers), error),
            }
        }
        if !request.matchers.is_empty()
            && canonical.len() == request.matchers.len()
            && request
                .matchers
                .iter()
                .filter_map(|t| routing::parse_matchers(t).ok())
                .flatten()
                .all(|m| m.matches(&Labels::new()))
        {
            check.violation(fields.matchers, "the matchers match every alert (each matches an empty label set)");
        }
        let starts = request.starts_at_ms.unwrap_or(now).max(now);
        match request.ends_at_ms {
            None => check.violation(fields.ends_at, "required"),
            Some(ends) if ends <= starts => {
                check.violation(fields.ends_at, "must be after starts_at (and in the future)")
            }
            Some(_) => {}
        }
        check.max_len(fields.comment, &request.comment, COMMENT_BYTES);
        check.max_len(fields.id, &request.id, 256);
        check.finish()?;
        let replaces = (!request.id.is_empty()).then_some(request.id.as_str());
        if let Some(id) = replaces
            && !self.store.silences().await.map_err(|e| store_error(&e))?.iter().any(|s| s.id == id)
        {
            return Err(warden_errors::WardenError::new(
                warden_errors::Category::Permanent,
                "SILENCE_NOT_FOUND",
                format!("silence {id} not found"),
            )
            .with_code(tonic::Code::NotFound));
        }
        let silence = Silence {
            id: uuid::Uuid::now_v7().to_string(),
            matchers: canonical,
            starts_at_ms: starts,
            ends_at_ms: request.ends_at_ms.unwrap_or(starts),
            created_by: request.created_by,
            comment: request.comment,
            updated_at_ms: now,
        };
        self.create_silence(silence, replaces).await.map_err(|e| store_error(&e))
    }
}

/// The field names a silence request's errors use (the gRPC and HTTP
/// APIs name them differently).
#[derive(Debug, Clone, Copy)]
pub struct SilenceFields {
    pub id: &'static str,
    pub matchers: &'static str,
    pub ends_at: &'static str,
    pub comment: &'static str,
}

/// A storage error as a classified Warden error.
pub fn store_error(error: &warden_store::StoreError) -> warden_errors::WardenError {
    warden_errors::WardenError::from_status(&warden_errors::to_status(error))
}

/// A rule alert's `generatorURL`: the rule on the service's `/rules` page.
pub fn rule_url(external_url: &str, group: &str, rule: &str) -> String {
    if external_url.is_empty() {
        return String::new();
    }
    format!("{external_url}/rules#{}", rule_anchor(group, rule))
}

/// The id of a rule's entry on the `/rules` page.
pub fn rule_anchor(group: &str, rule: &str) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!(".{b:02X}")
                }
            })
            .collect()
    };
    format!("rule-{}-{}", encode(group), encode(rule))
}
