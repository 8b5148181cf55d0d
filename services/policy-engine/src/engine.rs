//! The decision procedure: kill switches, then rules, then limits.
//!
//! The engine holds the active [`PolicySet`] and the kill switch state in
//! `ArcSwap`s: a decision reads both without locks, and a reload or a kill
//! switch change swaps them atomically under load.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use warden_policy::cel::Input;
use warden_policy::decision::deciding;
pub use warden_policy::decision::{Decision, decide_rules};
use warden_policy::policy::{Effect, Per, PolicySet};

use crate::limits::{Charge, LimitStore};

/// The engine's clock: wall time, advanced by tokio's clock so tests can
/// pause and advance time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    pub fn system() -> Clock {
        let base_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Clock { base_ms, base: tokio::time::Instant::now() }
    }

    /// A clock that reads `start_ms` now.
    pub fn starting_at(start_ms: u64) -> Clock {
        Clock { base_ms: start_ms, base: tokio::time::Instant::now() }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.now_ms() as i64).unwrap_or_default()
    }
}

/// Engaged kill switches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillSwitches {
    /// The switch that stops every agent, with its reason.
    pub global: Option<Arc<str>>,
    pub agents: HashMap<String, Arc<str>>,
}

impl KillSwitches {
    pub fn reason_for(&self, agent_id: &str) -> Option<&Arc<str>> {
        self.global.as_ref().or_else(|| self.agents.get(agent_id))
    }

    pub fn engaged_count(&self) -> usize {
        self.agents.len() + usize::from(self.global.is_some())
    }
}

pub struct Engine {
    policies: ArcSwap<PolicySet>,
    kill_switches: ArcSwap<KillSwitches>,
    limits: Arc<dyn LimitStore>,
    clock: Clock,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("version", &self.policies.load().version).finish()
    }
}

impl Engine {
    pub fn new(policies: PolicySet, limits: Arc<dyn LimitStore>, clock: Clock) -> Engine {
        Engine {
            policies: ArcSwap::from_pointee(policies),
            kill_switches: ArcSwap::from_pointee(KillSwitches::default()),
            limits,
            clock,
        }
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// Activates a new policy set; in-flight decisions finish on the old one.
    pub fn swap_policies(&self, policies: PolicySet) {
        self.policies.store(Arc::new(policies));
    }

    pub fn kill_switches(&self) -> Arc<KillSwitches> {
        self.kill_switches.load_full()
    }

    pub fn set_kill_switches(&self, switches: KillSwitches) {
        self.kill_switches.store(Arc::new(switches));
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn limit_store_kind(&self) -> &'static str {
        self.limits.kind()
    }

    /// Decides one request with the active policies.
    pub async fn decide(&self, input: &Input<'_>) -> Decision {
        let policies = self.policies.load_full();
        self.decide_in(&policies, input).await
    }

    /// Decides one request with `policies` (the set whose agent registry
    /// resolved the request's agent).
    pub async fn decide_in(&self, policies: &PolicySet, input: &Input<'_>) -> Decision {
        if let Some(reason) = self.kill_switches.load().reason_for(&input.agent.id) {
            // The rules still run, for the record: replaying them later
            // compares with what they said then.
            let (rules, _) = decide_rules(policies, input);
            return Decision {
                effect: Effect::Deny,
                rules_effect: rules.effect,
                deciding: vec![deciding(&Arc::from("kill-switch"), format!("kill switch engaged: {reason}"))],
                shadow: Vec::new(),
                policy_version: policies.version.clone(),
            };
        }
        let (mut decision, outcome_allows_limits) = decide_rules(policies, input);
        if outcome_allows_limits && policies.has_limits() {
            self.apply_limits(policies, input, &mut decision).await;
        }
        decision
    }

    async fn apply_limits(&self, policies: &PolicySet, input: &Input<'_>, decision: &mut Decision) {
        let applicable: Vec<_> = policies.applicable_limits(input.agent, &input.action.r#type).collect();
        if applicable.is_empty() {
            return;
        }
        // A cost that cannot be computed from the action denies (fail
        // closed), naming the limit; nothing is charged.
        let mut costs = Vec::with_capacity(applicable.len());
        for limit in &applicable {
            match limit.cost_of(input) {
                Ok(cost) => costs.push(cost),
                Err(reason) => {
                    decision.effect = Effect::Deny;
                    decision.deciding = vec![deciding(&limit.name, reason)];
                    return;
                }
            }
        }
        let charges: Vec<Charge> = applicable
            .iter()
            .zip(costs)
            .map(|(limit, cost)| {
                let partition = match limit.per {
                    Per::Agent => format!("a:{}", input.agent.id),
                    Per::AgentAction => {
                        format!("aa:{}\u{1f}{}", input.agent.id, input.action.r#type)
                    }
                    Per::Global => "g".to_owned(),
                };
                Charge {
                    key: format!("{}:{}:{}", limit.name, limit.window.as_millis(), partition),
                    window: limit.window,
                    max_requests: limit.max_requests,
                    max_cost: limit.max_cost,
                    cost,
                    blocking: limit.effect == Effect::Deny,
                }
            })
            .collect();
        let exceeded = match self.limits.charge(self.clock.now_ms(), &charges).await {
            Ok(exceeded) => exceeded,
            Err(error) => {
                // Fail closed: a limit that cannot be counted denies.
                tracing::warn!(%error, limits = applicable.len(), "limit store unavailable; denying");
                crate::metrics::METRICS.limit_store_errors.inc();
                let names: Vec<&str> = applicable.iter().map(|l| &*l.name).collect();
                let reason: Arc<str> = Arc::from(format!(
                    "limits cannot be checked ({}): {error}; denying until the limit store is back",
                    names.join(", ")
                ));
                decision.effect = Effect::Deny;
                decision.deciding = applicable.iter().map(|l| deciding(&l.name, reason.clone())).collect();
                return;
            }
        };
        let over: Vec<_> = applicable.iter().zip(&exceeded).filter(|(_, over)| **over).map(|(l, _)| *l).collect();
        if over.is_empty() {
            return;
        }
        for limit in &over {
            crate::metrics::METRICS.limit_exceeded.with_label_values(&[&*limit.name]).inc();
        }
        let denying: Vec<_> = over.iter().filter(|l| l.effect == Effect::Deny).collect();
        if !denying.is_empty() {
            decision.effect = Effect::Deny;
            decision.deciding = denying.iter().map(|l| deciding(&l.name, l.reason.clone())).collect();
            return;
        }
        // Only approval limits were exceeded.
        if decision.effect == Effect::Allow {
            decision.deciding.clear();
        }
        decision.effect = Effect::RequireApproval;
        decision.deciding.extend(over.iter().map(|l| deciding(&l.name, l.reason.clone())));
    }
}

/// How long a kill switch change may take to reach other replicas.
pub const KILL_SWITCH_REFRESH: Duration = Duration::from_secs(2);

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
