//! The policy engine's Prometheus metrics. Names match the dashboards and
//! alert rules in the requirements (`policy_evaluations_total`,
//! `policy_evaluation_duration_seconds`).

use std::sync::LazyLock;

use prometheus::{Counter, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use warden_telemetry::register;

pub struct Metrics {
    /// Decisions by the rule/limit that decided and the effect.
    pub evaluations: IntCounterVec,
    pub evaluation_duration: Histogram,
    /// Reloads by result: success, failure.
    pub reloads: IntCounterVec,
    pub rules_active: IntGauge,
    pub limits_active: IntGauge,
    /// Requests over a limit, by limit.
    pub limit_exceeded: IntCounterVec,
    pub limit_store_errors: IntCounter,
    pub kill_switches_engaged: IntGauge,
    pub invalid_requests: IntCounter,
    pub outbox_pending: IntGauge,
    pub decisions_shipped: IntCounter,
    pub decisions_dropped: IntCounter,
    /// The decision log journal's writer: records written, groups (one
    /// `write` each), `fdatasync` calls and the seconds they took, and
    /// the seconds spent waking the decisions that waited for a sync.
    pub journal_records: IntCounter,
    pub journal_groups: IntCounter,
    pub journal_syncs: IntCounter,
    pub journal_sync_seconds: Counter,
    pub journal_notify_seconds: Counter,
    /// Denied requests by agent (the "top denied agents" panel). Only
    /// denials are counted, so the series grow with misbehaving agents, not
    /// with traffic.
    pub denied_agents: IntCounterVec,
    /// Requests refused for claiming what the agent is not (`agent.roles`,
    /// `agent.labels`, `agent.name`) or a time the engine's clock disputes.
    pub refused_claims: IntCounterVec,
    /// Decision log records waiting in the dead letters.
    pub dead_letters: IntGauge,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    dead_letters: register(
        IntGauge::new(
            "decision_log_dead_letters",
            "Decision log records the audit service refused, waiting for a replay",
        )
        .expect("metric"),
    ),
    refused_claims: register(
        IntCounterVec::new(
            Opts::new("policy_refused_claims_total", "Evaluate requests refused for an unbacked claim, by field"),
            &["field"],
        )
        .expect("metric"),
    ),
    denied_agents: register(
        IntCounterVec::new(Opts::new("policy_denials_total", "Denied requests, by agent"), &["agent_id"])
            .expect("metric"),
    ),
    evaluations: register(
        IntCounterVec::new(
            Opts::new("policy_evaluations_total", "Policy decisions, by deciding rule and effect"),
            &["policy_name", "decision"],
        )
        .expect("metric"),
    ),
    evaluation_duration: register(
        Histogram::with_opts(
            HistogramOpts::new("policy_evaluation_duration_seconds", "Time to decide one Evaluate request").buckets(
                vec![
                    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
                ],
            ),
        )
        .expect("metric"),
    ),
    reloads: register(
        IntCounterVec::new(Opts::new("policy_reloads_total", "Policy reloads, by result"), &["result"])
            .expect("metric"),
    ),
    rules_active: register(IntGauge::new("policy_rules_active", "Rules in the active policy set").expect("metric")),
    limits_active: register(IntGauge::new("policy_limits_active", "Limits in the active policy set").expect("metric")),
    limit_exceeded: register(
        IntCounterVec::new(Opts::new("policy_limit_exceeded_total", "Requests over a limit, by limit"), &["limit"])
            .expect("metric"),
    ),
    limit_store_errors: register(
        IntCounter::new(
            "policy_limit_store_errors_total",
            "Limit checks that failed closed because the store was unavailable",
        )
        .expect("metric"),
    ),
    kill_switches_engaged: register(
        IntGauge::new("policy_kill_switches_engaged", "Engaged kill switches").expect("metric"),
    ),
    invalid_requests: register(
        IntCounter::new("policy_invalid_requests_total", "Evaluate requests refused as invalid").expect("metric"),
    ),
    outbox_pending: register(
        IntGauge::new("decision_log_outbox_pending", "Decisions waiting in the outbox for the audit service")
            .expect("metric"),
    ),
    journal_records: register(
        IntCounter::new("decision_log_journal_records_total", "Decisions written to the journal").expect("metric"),
    ),
    journal_groups: register(
        IntCounter::new(
            "decision_log_journal_groups_total",
            "Groups of decisions written to the journal, one write each",
        )
        .expect("metric"),
    ),
    journal_syncs: register(
        IntCounter::new("decision_log_journal_syncs_total", "fdatasync calls on the journal").expect("metric"),
    ),
    journal_sync_seconds: register(
        Counter::new("decision_log_journal_sync_seconds_total", "Seconds spent in fdatasync on the journal")
            .expect("metric"),
    ),
    journal_notify_seconds: register(
        Counter::new(
            "decision_log_journal_notify_seconds_total",
            "Seconds the journal writer spent waking decisions that waited for their sync",
        )
        .expect("metric"),
    ),
    decisions_shipped: register(
        IntCounter::new("decision_log_shipped_total", "Decisions acknowledged by the audit service").expect("metric"),
    ),
    decisions_dropped: register(
        IntCounter::new(
            "decision_log_dropped_total",
            "Decisions not logged because the outbox was full (when_full = drop)",
        )
        .expect("metric"),
    ),
});
