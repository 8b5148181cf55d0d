//! A decision before it is rendered for the wire, and the combining rules
//! that make one from what the rules said.

use std::sync::Arc;

use crate::cel::Input;
use crate::policy::{Deciding, Effect, PolicySet};

/// What decided a request, before it is rendered for the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub effect: Effect,
    /// What the rules alone decided, before kill switches, limits and
    /// approvals: what replaying the rules reproduces.
    pub rules_effect: Effect,
    /// The rules and limits that decided the effect, with their reasons.
    pub deciding: Vec<Deciding>,
    pub shadow: Vec<Arc<str>>,
    pub policy_version: Arc<str>,
}

impl Decision {
    pub fn reasons(&self) -> Vec<String> {
        // `String::from(&str)`: `to_string` on an `Arc<str>` goes through
        // `Display` and the formatter (about 350 instructions a call).
        self.deciding.iter().map(|d| String::from(&*d.reason)).collect()
    }

    /// The enforced rules and limits that decided.
    pub fn matched(&self) -> Vec<String> {
        self.deciding.iter().filter_map(|d| d.name.as_deref().map(str::to_owned)).collect()
    }

    /// The rule, limit or mechanism named in the evaluation metric.
    pub fn decided_by(&self) -> &str {
        self.deciding.first().and_then(|d| d.name.as_deref()).unwrap_or("default-deny")
    }
}

pub fn deciding(name: &Arc<str>, reason: impl Into<Arc<str>>) -> Deciding {
    Deciding { name: Some(name.clone()), reason: reason.into() }
}

/// Applies the combining rules to what the rules said: deny beats
/// require_approval beats allow, and no allow means deny. Returns the
/// decision and whether limits apply (the outcome is not deny).
pub fn decide_rules(policies: &PolicySet, input: &Input<'_>) -> (Decision, bool) {
    let outcome = policies.evaluate_rules(input);
    let (effect, deciding) = match outcome.effect {
        Some(effect) => (effect, outcome.deciding),
        None => (
            Effect::Deny,
            vec![Deciding {
                name: None,
                reason: Arc::from(format!("no rule allows action '{}' (default deny)", input.action.r#type)),
            }],
        ),
    };
    let decision = Decision {
        effect,
        rules_effect: effect,
        deciding,
        shadow: outcome.shadow,
        policy_version: policies.version.clone(),
    };
    (decision, outcome.effect.is_some_and(|e| e != Effect::Deny))
}
