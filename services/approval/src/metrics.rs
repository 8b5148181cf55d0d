//! The approval service's Prometheus metrics, with the seeds' names.

use std::sync::LazyLock;

use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};
use warden_telemetry::register;

pub struct Metrics {
    pub requested: IntCounterVec,
    /// `approvals_total{approval_type,decision}`.
    pub decided: IntCounterVec,
    pub wait_time: HistogramVec,
    pub redeemed: IntCounter,
    pub pending: IntGauge,
    pub oldest_pending_age: Gauge,
    pub notifications: IntCounterVec,
    pub outbox_pending: IntGauge,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    requested: register(
        IntCounterVec::new(Opts::new("approval_requests_total", "Approval requests opened"), &["approval_type"])
            .expect("metric"),
    ),
    decided: register(
        IntCounterVec::new(Opts::new("approvals_total", "Approval requests decided"), &["approval_type", "decision"])
            .expect("metric"),
    ),
    wait_time: register(
        HistogramVec::new(
            HistogramOpts::new("approval_wait_time_seconds", "Time from request to decision")
                .buckets(vec![60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0]),
            &["approval_type"],
        )
        .expect("metric"),
    ),
    redeemed: register(IntCounter::new("approvals_redeemed_total", "Granted approvals spent").expect("metric")),
    pending: register(IntGauge::new("approvals_pending", "Approval requests waiting for a decision").expect("metric")),
    oldest_pending_age: register(
        Gauge::new("approvals_oldest_pending_age_seconds", "Age of the oldest pending approval request")
            .expect("metric"),
    ),
    notifications: register(
        IntCounterVec::new(
            Opts::new("approval_notifications_total", "Notifications by receiver and outcome"),
            &["receiver", "outcome"],
        )
        .expect("metric"),
    ),
    outbox_pending: register(
        IntGauge::new("approval_outbox_pending", "Audit events and notifications not yet delivered").expect("metric"),
    ),
});
