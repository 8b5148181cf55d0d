//! The series rules are evaluated over, derived from the audit log.
//!
//! [`Metrics`] holds the current value of every derived counter, gauge and
//! histogram bucket, updated by each audit event ([`Metrics::apply`]). It is
//! "scraped" into [`Tsdb`] at every multiple of the scrape interval, in the
//! events' own time, exactly as Prometheus would have scraped an exporter:
//! replaying the same events gives the same samples, so a restart from a
//! stored position reproduces the state it left. A series that disappears
//! (a pending approval decided) gets a staleness marker, as in Prometheus.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use warden_proto::audit::v1::AuditRecord;

/// A series' labels, `__name__` included.
pub type Labels = BTreeMap<String, String>;

/// Prometheus' staleness marker: a NaN with this exact bit pattern.
pub const STALE_BITS: u64 = 0x7ff0_0000_0000_0002;

pub fn is_stale(value: f64) -> bool {
    value.to_bits() == STALE_BITS
}

/// The metric name label.
pub const NAME: &str = "__name__";

/// Buckets (seconds) of `agent_action_duration_seconds`.
const DURATION_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Buckets (seconds) of `approval_wait_time_seconds`.
const WAIT_BUCKETS: &[f64] = &[60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0];

/// Builds labels from a name and pairs.
pub fn labels(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut labels = Labels::new();
    labels.insert(NAME.into(), name.into());
    for (k, v) in pairs {
        labels.insert((*k).into(), (*v).into());
    }
    labels
}

/// A pending approval, for the backlog gauges.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    agent_id: String,
    route: String,
    requested_at_ms: i64,
}

/// The derived metrics' current values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(with = "label_map")]
    values: HashMap<Labels, f64>,
    pending: BTreeMap<String, Pending>,
}

impl Metrics {
    fn add(&mut self, labels: Labels, delta: f64) {
        *self.values.entry(labels).or_insert(0.0) += delta;
    }

    fn observe(&mut self, name: &str, pairs: &[(&str, &str)], buckets: &[f64], value: f64) {
        for bound in buckets.iter().copied().chain([f64::INFINITY]) {
            if value <= bound {
                let le = format_le(bound);
                let mut with_le: Vec<(&str, &str)> = pairs.to_vec();
                with_le.push(("le", &le));
                self.add(labels(&format!("{name}_bucket"), &with_le), 1.0);
            } else {
                // Buckets are cumulative: make sure the series exists.
                let le = format_le(bound);
                let mut with_le: Vec<(&str, &str)> = pairs.to_vec();
                with_le.push(("le", &le));
                self.add(labels(&format!("{name}_bucket"), &with_le), 0.0);
            }
        }
        self.add(labels(&format!("{name}_sum"), pairs), value);
        self.add(labels(&format!("{name}_count"), pairs), 1.0);
    }

    /// Applies one audit record. Unknown event types change nothing.
    pub fn apply(&mut self, record: &AuditRecord) {
        let Some(event) = &record.event else { return };
        let payload = event.payload.as_ref();
        let text = |key: &str| -> String {
            match payload.and_then(|p| p.fields.get(key)).and_then(|v| v.kind.as_ref()) {
                Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
                Some(prost_types::value::Kind::NumberValue(n)) => format!("{n}"),
                Some(prost_types::value::Kind::BoolValue(b)) => b.to_string(),
                _ => String::new(),
            }
        };
        let number = |key: &str| -> f64 {
            match payload.and_then(|p| p.fields.get(key)).and_then(|v| v.kind.as_ref()) {
                Some(prost_types::value::Kind::NumberValue(n)) if n.is_finite() => *n,
                Some(prost_types::value::Kind::StringValue(s)) => {
                    s.parse().ok().filter(|n: &f64| n.is_finite()).unwrap_or(0.0)
                }
                _ => 0.0,
            }
        };
        let first = |key: &str| -> String {
            match payload.and_then(|p| p.fields.get(key)).and_then(|v| v.kind.as_ref()) {
                Some(prost_types::value::Kind::ListValue(list)) => {
                    match list.values.first().and_then(|v| v.kind.as_ref()) {
                        Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
                        _ => String::new(),
                    }
                }
                _ => String::new(),
            }
        };
        let agent = event.agent_id.as_str();
        let at_ms = event_time_ms(record);
        match event.event_type.as_str() {
            "policy_evaluation" => {
                let mut policy = first("matched_rules");
                if policy.is_empty() {
                    policy = "default".into();
                }
                let decision = text("effect");
                self.add(
                    labels(
                        "policy_evaluations_total",
                        &[("policy_name", &policy), ("decision", &decision), ("agent_id", agent)],
                    ),
                    1.0,
                );
            }
            "action_completed" => {
                let action_type = text("action_type");
                let status = match text("status").as_str() {
                    "success" | "ok" => "success",
                    _ => "error",
                };
                let pairs = [("agent_id", agent), ("action_type", action_type.as_str())];
                self.add(
                    labels(
                        "agent_actions_total",
                        &[("agent_id", agent), ("action_type", &action_type), ("status", status)],
                    ),
                    1.0,
                );
                self.observe(
                    "agent_action_duration_seconds",
                    &pairs,
                    DURATION_BUCKETS,
                    number("duration_seconds").max(0.0),
                );
                let mut cost_type = text("cost_type");
                if cost_type.is_empty() {
                    cost_type = "action".into();
                }
                self.add(
                    labels("agent_cost_total_dollars", &[("agent_id", agent), ("cost_type", &cost_type)]),
                    number("cost"),
                );
                let class = text("error_class");
                if status == "error" {
                    let class = if class.is_empty() { "unknown".to_owned() } else { class };
                    self.add(labels("agent_action_errors_total", &[("agent_id", agent), ("error_class", &class)]), 1.0);
                }
            }
            "approval_requested" => {
                let id = text("approval_id");
                self.add(labels("approval_requests_total", &[("agent_id", agent)]), 1.0);
                if !id.is_empty() {
                    self.pending
                        .insert(id, Pending { agent_id: agent.into(), route: text("route"), requested_at_ms: at_ms });
                }
            }
            kind @ ("approval_granted" | "approval_denied" | "approval_expired" | "approval_cancelled") => {
                let decision = kind.trim_start_matches("approval_");
                let id = text("approval_id");
                let route = text("route");
                self.add(labels("approvals_total", &[("agent_id", agent), ("decision", decision)]), 1.0);
                if let Some(pending) = self.pending.remove(&id) {
                    let waited = (at_ms - pending.requested_at_ms).max(0) as f64 / 1000.0;
                    self.observe("approval_wait_time_seconds", &[("route", &route)], WAIT_BUCKETS, waited);
                }
            }
            "auth_denied" => {
                // The code as the auth layer writes it (gRPC's name,
                // `Unauthenticated`), in any case or spelling.
                let code = text("code").to_ascii_uppercase().replace('_', "");
                let status = match code.as_str() {
                    "UNAUTHENTICATED" => "401",
                    "PERMISSIONDENIED" => "403",
                    "RESOURCEEXHAUSTED" => "429",
                    _ => "400",
                };
                let count = 1.0 + number("suppressed_before").max(0.0);
                self.add(
                    labels(
                        "requests_denied_total",
                        &[
                            ("service", &text("service")),
                            ("status", status),
                            ("ip", &text("peer")),
                            ("agent_id", agent),
                        ],
                    ),
                    count,
                );
            }
            "dead_lettered" => {
                let service = text("service");
                let dead_type = text("dead_event_type");
                self.add(labels("dead_letters_total", &[("service", &service), ("event_type", &dead_type)]), 1.0);
            }
            "circuit_breaker_changed" => {
                let name = text("name");
                let state = text("state");
                for candidate in ["closed", "open", "half_open"] {
                    let value = if candidate == state { 1.0 } else { 0.0 };
                    self.values.insert(
                        labels("circuit_breaker_state", &[("name", &name), ("state", candidate), ("agent_id", agent)]),
                        value,
                    );
                }
            }
            _ => {}
        }
    }

    /// Every series' value at `at_ms`, including the computed backlog gauges.
    fn sample(&self, at_ms: i64) -> Vec<(Labels, f64)> {
        let mut out: Vec<(Labels, f64)> = self.values.iter().map(|(l, v)| (l.clone(), *v)).collect();
        out.push((labels("approvals_pending", &[]), self.pending.len() as f64));
        for (id, pending) in &self.pending {
            out.push((
                labels(
                    "approval_wait_time_seconds",
                    &[("approval_id", id), ("agent_id", &pending.agent_id), ("route", &pending.route)],
                ),
                (at_ms - pending.requested_at_ms).max(0) as f64 / 1000.0,
            ));
        }
        out
    }
}

/// The time an event counts at: when it happened, else when it was
/// recorded, and never after it was recorded. An event cannot have happened
/// after the audit service received it, so a claimed time in the future
/// (by a careless or hostile sender) counts as the time it arrived: it
/// cannot move the series' clock ahead, trim their history or silence the
/// rules. Both times are stored, so a replay counts it at the same instant.
pub fn event_time_ms(record: &AuditRecord) -> i64 {
    let ms = |stamp: &prost_types::Timestamp| stamp.seconds * 1000 + i64::from(stamp.nanos) / 1_000_000;
    let claimed = record.event.as_ref().and_then(|e| e.time.as_ref()).map(ms);
    let received = record.recorded_at.as_ref().map(ms);
    match (claimed, received) {
        (Some(claimed), Some(received)) => claimed.min(received),
        (claimed, received) => claimed.or(received).unwrap_or_default(),
    }
}

/// `le` as Prometheus' client libraries write it.
pub fn format_le(bound: f64) -> String {
    if bound == f64::INFINITY { "+Inf".into() } else { format!("{bound}") }
}

/// Samples of every series over the retention window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tsdb {
    /// By metric name, then labels.
    series: BTreeMap<String, Vec<SeriesData>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesData {
    pub labels: Labels,
    /// Values are stored as bits: JSON has no NaN, and staleness markers
    /// are NaNs.
    #[serde(with = "sample_bits")]
    pub samples: VecDeque<(i64, f64)>,
}

impl Tsdb {
    pub fn push(&mut self, labels: &Labels, at_ms: i64, value: f64) {
        let name = labels.get(NAME).cloned().unwrap_or_default();
        let list = self.series.entry(name).or_default();
        match list.iter_mut().find(|s| &s.labels == labels) {
            Some(series) => {
                if series.samples.back().is_some_and(|(t, _)| *t >= at_ms) {
                    return;
                }
                series.samples.push_back((at_ms, value));
            }
            None => list.push(SeriesData { labels: labels.clone(), samples: VecDeque::from([(at_ms, value)]) }),
        }
    }

    /// Drops samples at or before `before_ms`, and series left empty.
    pub fn trim(&mut self, before_ms: i64) {
        for list in self.series.values_mut() {
            for series in list.iter_mut() {
                while series.samples.front().is_some_and(|(t, _)| *t <= before_ms) {
                    series.samples.pop_front();
                }
            }
            list.retain(|s| !s.samples.is_empty());
        }
        self.series.retain(|_, list| !list.is_empty());
    }

    /// Series with this name (every series when `None`) whose labels pass
    /// `keep`.
    pub fn select<'a>(
        &'a self,
        name: Option<&'a str>,
        keep: impl Fn(&Labels) -> bool + 'a,
    ) -> Box<dyn Iterator<Item = &'a SeriesData> + 'a> {
        match name {
            Some(name) => Box::new(self.series.get(name).into_iter().flatten().filter(move |s| keep(&s.labels))),
            None => Box::new(self.series.values().flatten().filter(move |s| keep(&s.labels))),
        }
    }

    pub fn series_count(&self) -> usize {
        self.series.values().map(Vec::len).sum()
    }
}

/// The derived metrics and their history, with the scrape clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Derived {
    pub metrics: Metrics,
    pub tsdb: Tsdb,
    /// The last scrape, in ms; scrapes happen at multiples of `scrape_ms`.
    pub last_scrape_ms: i64,
    pub scrape_ms: i64,
    pub retention_ms: i64,
    /// The next audit sequence to read.
    pub position: u64,
}

impl Derived {
    pub fn new(scrape_ms: i64, retention_ms: i64) -> Derived {
        Derived {
            metrics: Metrics::default(),
            tsdb: Tsdb::default(),
            last_scrape_ms: 0,
            scrape_ms: scrape_ms.max(1),
            retention_ms,
            position: 0,
        }
    }

    /// Scrapes at every multiple of the scrape interval in
    /// `(last_scrape, to_ms]` (at most a retention's worth).
    pub fn advance_to(&mut self, to_ms: i64) {
        let step = self.scrape_ms;
        let mut next = (self.last_scrape_ms / step + 1) * step;
        if to_ms - next > self.retention_ms {
            next = ((to_ms - self.retention_ms) / step + 1) * step;
        }
        while next <= to_ms {
            self.scrape(next);
            next += step;
        }
    }

    fn scrape(&mut self, at_ms: i64) {
        let current = self.metrics.sample(at_ms);
        let live: std::collections::HashSet<&Labels> = current.iter().map(|(l, _)| l).collect();
        let mut gone = Vec::new();
        for list in self.tsdb.series.values() {
            for series in list {
                if !live.contains(&series.labels) && series.samples.back().is_some_and(|(_, v)| !is_stale(*v)) {
                    gone.push(series.labels.clone());
                }
            }
        }
        for labels in gone {
            self.tsdb.push(&labels, at_ms, f64::from_bits(STALE_BITS));
        }
        for (labels, value) in &current {
            if self.tsdb.series.get(&labels[NAME]).is_none_or(|l| l.iter().all(|s| &s.labels != labels)) {
                // A counter born now starts from zero just before, as
                // Prometheus' created-timestamp ingestion does, so its
                // first increase counts.
                if is_counter(labels) {
                    self.tsdb.push(labels, at_ms - 1, 0.0);
                }
            }
            self.tsdb.push(labels, at_ms, *value);
        }
        self.last_scrape_ms = at_ms;
        self.tsdb.trim(at_ms - self.retention_ms);
    }

    /// Applies a record: scrapes up to its time, then counts it.
    pub fn apply(&mut self, record: &AuditRecord) {
        self.apply_before(record, i64::MAX);
    }

    /// [`Derived::apply`], counting the record no later than `now_ms` (this
    /// service's clock): the series never run ahead of it, whatever the
    /// audit service's clock says.
    pub fn apply_before(&mut self, record: &AuditRecord, now_ms: i64) {
        let at = event_time_ms(record).min(now_ms);
        self.advance_to(at);
        self.metrics.apply(record);
        self.position = self.position.max(record.sequence + 1);
    }
}

fn is_counter(labels: &Labels) -> bool {
    let name = labels.get(NAME).map(String::as_str).unwrap_or_default();
    name.ends_with("_total") || name.ends_with("_bucket") || name.ends_with("_count") || name.ends_with("_sum")
}

mod sample_bits {
    use std::collections::VecDeque;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(samples: &VecDeque<(i64, f64)>, serializer: S) -> Result<S::Ok, S::Error> {
        let list: Vec<(i64, u64)> = samples.iter().map(|(t, v)| (*t, v.to_bits())).collect();
        list.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<VecDeque<(i64, f64)>, D::Error> {
        let list: Vec<(i64, u64)> = Vec::deserialize(deserializer)?;
        Ok(list.into_iter().map(|(t, bits)| (t, f64::from_bits(bits))).collect())
    }
}

/// Serialises a map keyed by labels as a list of pairs (JSON keys must be
/// strings).
mod label_map {
    use std::collections::HashMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Labels;

    pub fn serialize<S: Serializer>(map: &HashMap<Labels, f64>, serializer: S) -> Result<S::Ok, S::Error> {
        let list: Vec<(&Labels, &f64)> = map.iter().collect();
        list.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HashMap<Labels, f64>, D::Error> {
        let list: Vec<(Labels, f64)> = Vec::deserialize(deserializer)?;
        Ok(list.into_iter().collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use prost_types::value::Kind;
    use warden_proto::audit::v1::AuditEvent;

    use super::*;

    /// A record of `event_type` at `at_ms` with a payload.
    pub fn record(sequence: u64, event_type: &str, agent: &str, at_ms: i64, payload: &[(&str, Kind)]) -> AuditRecord {
        AuditRecord {
            sequence,
            event: Some(AuditEvent {
                event_id: format!("e{sequence}"),
                event_type: event_type.into(),
                time: Some(prost_types::Timestamp {
                    seconds: at_ms.div_euclid(1000),
                    nanos: (at_ms.rem_euclid(1000) * 1_000_000) as i32,
                }),
                agent_id: agent.into(),
                payload: Some(prost_types::Struct {
                    fields: payload
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), prost_types::Value { kind: Some(v.clone()) }))
                        .collect(),
                }),
                ..AuditEvent::default()
            }),
            ..AuditRecord::default()
        }
    }

    pub fn s(text: &str) -> Kind {
        Kind::StringValue(text.into())
    }

    #[test]
    fn a_future_dated_event_counts_when_it_arrived_and_trims_nothing() {
        let mut derived = Derived::new(15_000, 3_600_000);
        let failure = |sequence: u64, at_ms: i64| {
            record(sequence, "action_completed", "bot", at_ms, &[("action_type", s("x")), ("status", s("failure"))])
        };
        derived.apply(&failure(0, 10_000));
        // Dated in the year 3000, received at 20 s: it counts at 20 s.
        let year_3000 = 32_503_680_000_000;
        let mut future = failure(1, year_3000);
        future.recorded_at = Some(prost_types::Timestamp { seconds: 20, nanos: 0 });
        assert_eq!(event_time_ms(&future), 20_000);
        derived.apply(&future);
        assert!(derived.last_scrape_ms < 60_000, "the clock stayed near now: {}", derived.last_scrape_ms);
        // Without a receive time, this service's own clock bounds it.
        derived.apply_before(&failure(2, year_3000), 40_000);
        assert_eq!(derived.last_scrape_ms, 30_000);
        derived.advance_to(60_000);
        let errors = labels("agent_actions_total", &[("agent_id", "bot"), ("action_type", "x"), ("status", "error")]);
        let series: Vec<_> = derived.tsdb.select(Some("agent_actions_total"), |l| l == &errors).collect();
        // History is intact: every scrape from 15 s on, counting all three.
        assert_eq!(series[0].samples.iter().map(|(t, _)| *t).filter(|t| *t >= 15_000).count(), 4);
        assert_eq!(series[0].samples.back(), Some(&(60_000, 3.0)));
    }

    #[test]
    fn events_become_scraped_series_and_decided_approvals_go_stale() {
        let mut derived = Derived::new(15_000, 3_600_000);
        derived.apply(&record(
            0,
            "action_completed",
            "bot",
            1_000,
            &[
                ("action_type", s("send_email")),
                ("status", s("failure")),
                ("duration_seconds", Kind::NumberValue(0.3)),
                ("cost", Kind::NumberValue(2.5)),
            ],
        ));
        derived.apply(&record(1, "approval_requested", "bot", 2_000, &[("approval_id", s("a1"))]));
        derived.advance_to(30_000);
        let errors =
            labels("agent_actions_total", &[("agent_id", "bot"), ("action_type", "send_email"), ("status", "error")]);
        let series: Vec<_> = derived.tsdb.select(Some("agent_actions_total"), |l| l == &errors).collect();
        assert_eq!(series[0].samples, [(14_999, 0.0), (15_000, 1.0), (30_000, 1.0)]);
        let bucket = |le: &str| {
            derived
                .tsdb
                .select(Some("agent_action_duration_seconds_bucket"), |l| l["le"] == le)
                .map(|s| s.samples.back().unwrap().1)
                .sum::<f64>()
        };
        assert_eq!((bucket("0.25"), bucket("0.5"), bucket("+Inf")), (0.0, 1.0, 1.0));
        let wait: Vec<_> = derived.tsdb.select(Some("approval_wait_time_seconds"), |_| true).collect();
        assert_eq!(wait[0].samples.back(), Some(&(30_000, 28.0)));
        derived.apply(&record(2, "approval_granted", "bot", 40_000, &[("approval_id", s("a1"))]));
        derived.advance_to(45_000);
        let wait: Vec<_> = derived.tsdb.select(Some("approval_wait_time_seconds"), |_| true).collect();
        assert!(is_stale(wait[0].samples.back().unwrap().1));
        assert_eq!(derived.position, 3);
        // A snapshot restores the same state.
        let copy: Derived = serde_json::from_str(&serde_json::to_string(&derived).unwrap()).unwrap();
        assert_eq!(copy.tsdb.series_count(), derived.tsdb.series_count());
        assert_eq!(copy.metrics.values.len(), derived.metrics.values.len());
    }
}
