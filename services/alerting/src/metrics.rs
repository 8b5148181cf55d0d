//! The alerting service's own Prometheus metrics (Alertmanager's names
//! where it has one).

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use warden_telemetry::register;

pub struct Metrics {
    /// `alertmanager_alerts{state}`.
    pub alerts: IntGaugeVec,
    pub rule_evaluations: IntCounter,
    pub rule_failures: IntCounter,
    pub notifications_queued: IntCounter,
    /// `alertmanager_notifications_total{integration,outcome}`.
    pub notifications: IntCounterVec,
    pub outbox_pending: IntGauge,
    /// Audit records applied to the derived series.
    pub events: IntCounter,
    /// The next audit sequence to read.
    pub position: IntGauge,
    pub series: IntGauge,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    alerts: register(
        IntGaugeVec::new(Opts::new("alertmanager_alerts", "Alerts by state"), &["state"]).expect("metric"),
    ),
    rule_evaluations: register(
        IntCounter::new("prometheus_rule_evaluations_total", "Rule evaluations").expect("metric"),
    ),
    rule_failures: register(
        IntCounter::new("prometheus_rule_evaluation_failures_total", "Rule evaluations that failed").expect("metric"),
    ),
    notifications_queued: register(
        IntCounter::new("alerting_notifications_queued_total", "Notifications claimed and queued").expect("metric"),
    ),
    notifications: register(
        IntCounterVec::new(
            Opts::new("alertmanager_notifications_total", "Notification deliveries by integration and outcome"),
            &["integration", "outcome"],
        )
        .expect("metric"),
    ),
    outbox_pending: register(
        IntGauge::new("alerting_outbox_pending", "Notifications and audit events not yet delivered").expect("metric"),
    ),
    events: register(IntCounter::new("alerting_audit_events_total", "Audit records applied").expect("metric")),
    position: register(IntGauge::new("alerting_audit_position", "The next audit sequence to read").expect("metric")),
    series: register(IntGauge::new("alerting_series", "Derived series held").expect("metric")),
});
