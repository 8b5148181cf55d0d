//! Prometheus metrics of the resilience policies.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use warden_telemetry::register;

pub struct Metrics {
    /// 1 for a breaker's current state, 0 for the others. The alert rule
    /// `circuit_breaker_state{state="open"} == 1` watches it.
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    /// Retries by pipeline and outcome (`retried`, `exhausted`, `gave_up`).
    pub retries: IntCounterVec,
    /// Bulkhead rejections by reason (`full`, `timeout`).
    pub bulkhead_rejections: IntCounterVec,
    /// Attempts that timed out.
    pub timeouts: IntCounterVec,
    /// Calls answered by a fallback.
    pub fallbacks: IntCounterVec,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    breaker_state: register(
        IntGaugeVec::new(Opts::new("circuit_breaker_state", "1 for the breaker's current state"), &["name", "state"])
            .expect("metric"),
    ),
    breaker_transitions: register(
        IntCounterVec::new(
            Opts::new("circuit_breaker_transitions_total", "Breaker state changes, by the state entered"),
            &["name", "state"],
        )
        .expect("metric"),
    ),
    retries: register(
        IntCounterVec::new(Opts::new("resilience_retries_total", "Retry decisions, by outcome"), &["name", "outcome"])
            .expect("metric"),
    ),
    bulkhead_rejections: register(
        IntCounterVec::new(
            Opts::new("resilience_bulkhead_rejections_total", "Calls a bulkhead refused, by reason"),
            &["name", "reason"],
        )
        .expect("metric"),
    ),
    timeouts: register(
        IntCounterVec::new(Opts::new("resilience_timeouts_total", "Attempts that timed out"), &["name"])
            .expect("metric"),
    ),
    fallbacks: register(
        IntCounterVec::new(Opts::new("resilience_fallbacks_total", "Calls answered by a fallback"), &["name"])
            .expect("metric"),
    ),
});
