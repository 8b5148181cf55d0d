//! The MCP gateway's Prometheus metrics: per upstream and tool, what was
//! decided, how long calls took, what failed upstream.

use std::sync::LazyLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use warden_telemetry::register;

pub struct Metrics {
    /// `mcp_gateway_tool_calls_total{upstream,tool,effect}`: effect is
    /// `allow`, `deny`, `require_approval` (held, then answered pending),
    /// `refused` (no decision was possible: unknown tool, bad arguments).
    pub calls: IntCounterVec,
    /// Whole calls as the agent sees them, decision and upstream included.
    pub duration: HistogramVec,
    /// The upstream's part of allowed calls.
    pub upstream_duration: HistogramVec,
    /// Warden's part: each `Evaluate` round trip, by upstream.
    pub decision_duration: HistogramVec,
    /// `mcp_gateway_upstream_errors_total{upstream,class}`.
    pub upstream_errors: IntCounterVec,
    /// Connections made again after one closed (a command restarted).
    pub upstream_restarts: IntCounterVec,
    pub outbox_pending: IntGauge,
}

const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    calls: register(
        IntCounterVec::new(
            Opts::new("mcp_gateway_tool_calls_total", "Tool calls by upstream, tool and what Warden decided"),
            &["upstream", "tool", "effect"],
        )
        .expect("metric"),
    ),
    duration: register(
        HistogramVec::new(
            HistogramOpts::new("mcp_gateway_tool_call_duration_seconds", "Tool calls from request to answer")
                .buckets(BUCKETS.to_vec()),
            &["upstream", "effect"],
        )
        .expect("metric"),
    ),
    upstream_duration: register(
        HistogramVec::new(
            HistogramOpts::new("mcp_gateway_upstream_duration_seconds", "Forwarded calls, upstream's part")
                .buckets(BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("metric"),
    ),
    decision_duration: register(
        HistogramVec::new(
            HistogramOpts::new("mcp_gateway_decision_duration_seconds", "Evaluate round trips, Warden's part of calls")
                .buckets(BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("metric"),
    ),
    upstream_errors: register(
        IntCounterVec::new(
            Opts::new("mcp_gateway_upstream_errors_total", "Forwarded calls that failed, by class"),
            &["upstream", "class"],
        )
        .expect("metric"),
    ),
    upstream_restarts: register(
        IntCounterVec::new(
            Opts::new("mcp_gateway_upstream_reconnects_total", "Upstream connections made again after closing"),
            &["upstream"],
        )
        .expect("metric"),
    ),
    outbox_pending: register(
        IntGauge::new("mcp_gateway_outbox_pending", "Audit events not yet delivered").expect("metric"),
    ),
});
