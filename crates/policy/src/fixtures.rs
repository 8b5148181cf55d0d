//! Policy sets and requests for benchmarks and tests: realistic rules of
//! every condition shape (numbers, roles, labels, params, time zones), sized
//! on demand.

use std::collections::HashMap;

use prost_types::{Struct, Value, value::Kind};
use warden_proto::policy::v1::{Action, Agent};

/// The condition of rule `i` (of 20 per action); the last rule allows.
fn condition(i: usize) -> (&'static str, String) {
    match i % 10 {
        0 => ("deny", format!("action.estimated_cost > {}.0", 1000 + i)),
        1 => ("require_approval", format!("agent.confidence < 0.{}", 1 + i % 5)),
        2 => ("deny", format!("'banned-{i}' in agent.roles")),
        3 => ("require_approval", format!("has(action.params.amount) && action.params.amount > {}.0", 5000 + i)),
        4 => ("deny", format!("agent.labels.team == 'blocked-{i}'")),
        5 => ("require_approval", "context.time.getHours('America/New_York') >= 23".to_owned()),
        6 => ("deny", format!("action.resource.startsWith('secret/{i}')")),
        7 => ("require_approval", format!("agent.id == 'probation-{i}' || action.estimated_cost > {}.0", 2000 + i)),
        8 => ("deny", format!("action.params.currency in ['XXX', 'ZZZ{i}']")),
        _ => ("require_approval", format!("size(agent.roles) > {}", 10 + i)),
    }
}

/// YAML for `actions` action types with `rules_per_action` rules each. Every
/// rule of an action applies to every request for it (the worst case), and
/// the last rule of each action allows. The agent registry gives
/// [`request`]'s agent exactly the attributes it sends, so an engine with
/// authentication on checks them and decides as with it off.
pub fn rule_set(actions: usize, rules_per_action: usize) -> String {
    let mut yaml = String::from(
        "agents:\n  - id: support-bot-1\n    name: Support bot\n    roles: [support, refunds]\n    labels: { team: billing }\n",
    );
    yaml.push_str("rules:\n");
    for a in 0..actions {
        for r in 0..rules_per_action {
            let (effect, when) = if r + 1 == rules_per_action { ("allow", "true".to_owned()) } else { condition(r) };
            yaml.push_str(&format!(
                "  - name: a{a}-r{r}\n    actions: [\"action_{a}\"]\n    when: \"{when}\"\n    effect: {effect}\n"
            ));
        }
    }
    yaml
}

/// A request for `action_{action}` that no deny or approval rule matches.
pub fn request(action: usize) -> (Agent, Action) {
    let agent = Agent {
        id: "support-bot-1".into(),
        name: "Support bot".into(),
        roles: vec!["support".into(), "refunds".into()],
        confidence: 0.93,
        labels: HashMap::from([("team".into(), "billing".into())]),
    };
    let params = Struct {
        fields: [
            ("amount".to_string(), Value { kind: Some(Kind::NumberValue(120.0)) }),
            ("currency".to_string(), Value { kind: Some(Kind::StringValue("EUR".into())) }),
        ]
        .into(),
    };
    let action = Action {
        r#type: format!("action_{action}"),
        resource: "order/1234".into(),
        estimated_cost: 12.5,
        params: Some(params),
    };
    (agent, action)
}

/// The same 20 conditions as [`rule_set`] written by hand in Rust, with
/// their constants prepared once: the baseline a compiled policy set is
/// measured against in the same benchmark run.
/// A hand-written rule: whether it denies (else requires approval), and its
/// condition over the agent, the action and the hour in New York.
type HandRule = (bool, Box<dyn Fn(&Agent, &Action, u32) -> bool + Send + Sync>);

pub struct HandWritten {
    rules: Vec<HandRule>,
    new_york: chrono_tz::Tz,
}

fn param_number(action: &Action, key: &str) -> Option<f64> {
    action.params.as_ref()?.fields.get(key).and_then(|v| match v.kind {
        Some(Kind::NumberValue(n)) => Some(n),
        _ => None,
    })
}

fn param_text<'a>(action: &'a Action, key: &str) -> Option<&'a str> {
    action.params.as_ref()?.fields.get(key).and_then(|v| match &v.kind {
        Some(Kind::StringValue(s)) => Some(s.as_str()),
        _ => None,
    })
}

impl Default for HandWritten {
    fn default() -> Self {
        let mut rules: Vec<HandRule> = Vec::new();
        for i in 0..19usize {
            let rule: HandRule = match i % 10 {
                0 => {
                    let bound = (1000 + i) as f64;
                    (true, Box::new(move |_, action, _| action.estimated_cost > bound))
                }
                1 => {
                    let bound = (1 + i % 5) as f64 / 10.0;
                    (false, Box::new(move |agent, _, _| agent.confidence < bound))
                }
                2 => {
                    let role = format!("banned-{i}");
                    (true, Box::new(move |agent, _, _| agent.roles.contains(&role)))
                }
                3 => {
                    let bound = (5000 + i) as f64;
                    (false, Box::new(move |_, action, _| param_number(action, "amount").is_some_and(|a| a > bound)))
                }
                4 => {
                    let team = format!("blocked-{i}");
                    (true, Box::new(move |agent, _, _| agent.labels.get("team").is_some_and(|t| *t == team)))
                }
                5 => (false, Box::new(|_, _, hour| hour >= 23)),
                6 => {
                    let prefix = format!("secret/{i}");
                    (true, Box::new(move |_, action, _| action.resource.starts_with(&prefix)))
                }
                7 => {
                    let id = format!("probation-{i}");
                    let bound = (2000 + i) as f64;
                    (false, Box::new(move |agent, action, _| agent.id == id || action.estimated_cost > bound))
                }
                8 => {
                    let other = format!("ZZZ{i}");
                    (
                        true,
                        Box::new(move |_, action, _| {
                            param_text(action, "currency").is_some_and(|c| c == "XXX" || c == other)
                        }),
                    )
                }
                _ => {
                    let bound = 10 + i;
                    (false, Box::new(move |agent, _, _| agent.roles.len() > bound))
                }
            };
            rules.push(rule);
        }
        HandWritten { rules, new_york: "America/New_York".parse().expect("known zone") }
    }
}

impl HandWritten {
    /// 0 allow, 1 require approval, 2 deny, combined as the engine does.
    pub fn decide(&self, agent: &Agent, action: &Action, time: chrono::DateTime<chrono::Utc>) -> u8 {
        use chrono::Timelike;
        let hour = time.with_timezone(&self.new_york).hour();
        let (mut deny, mut approval) = (false, false);
        for (is_deny, rule) in &self.rules {
            if rule(agent, action, hour) {
                if *is_deny { deny = true } else { approval = true }
            }
        }
        if deny {
            2
        } else if approval {
            1
        } else {
            0
        }
    }
}
