//! The audit service's Prometheus metrics.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter};
use warden_telemetry::register;

pub struct Metrics {
    pub appended: IntCounter,
    pub batch_size: Histogram,
    pub commit_duration: Histogram,
    pub verified_events: IntCounter,
    pub payloads_purged: IntCounter,
    /// When the latest checkpoint was signed (Unix seconds), and its size.
    pub checkpoint_time: prometheus::Gauge,
    pub checkpoint_size: prometheus::IntGauge,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    appended: register(
        IntCounter::new("audit_events_appended_total", "Events appended (duplicates excluded)").expect("metric"),
    ),
    batch_size: register(
        Histogram::with_opts(
            HistogramOpts::new("audit_commit_batch_size", "Events per group commit")
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]),
        )
        .expect("metric"),
    ),
    commit_duration: register(
        Histogram::with_opts(HistogramOpts::new("audit_commit_duration_seconds", "Time to commit one batch"))
            .expect("metric"),
    ),
    verified_events: register(
        IntCounter::new("audit_events_verified_total", "Events checked by Verify").expect("metric"),
    ),
    checkpoint_time: register(
        prometheus::Gauge::new("audit_checkpoint_timestamp_seconds", "When the latest checkpoint was signed")
            .expect("metric"),
    ),
    checkpoint_size: register(
        prometheus::IntGauge::new("audit_checkpoint_tree_size", "Events under the latest signed checkpoint")
            .expect("metric"),
    ),
    payloads_purged: register(
        IntCounter::new("audit_payloads_purged_total", "Payloads removed by retention").expect("metric"),
    ),
});
