//! The agent registry: what the operator says each agent is (its roles,
//! labels, name and owner), so that nothing an agent claims about itself
//! decides an outcome.
//!
//! The registry is the `agents:` section of the policy files (by
//! convention `agents.yaml` beside the rules), loaded, versioned and
//! hot-reloaded with them:
//!
//! ```yaml
//! agents:
//!   - id: support-bot            # an agent id, or a glob (`support-*`)
//!     name: Support bot
//!     owner: support-team@example.com
//!     roles: [support]
//!     labels: { team: support }
//! ```
//!
//! [`resolve`] applies it to a request's agent: for a caller that may not
//! assert attributes, every role, label and name the request claims must be
//! one the registry gives that agent (else [`Refusal`]), and the decision
//! sees exactly the registered ones. An exact id wins over a glob; among
//! globs the first in file order wins. An agent the registry does not list
//! has no roles, no labels and no name.

use std::collections::HashMap;

use serde::Deserialize;
use warden_glob::Glob;
use warden_proto::policy::v1 as pb;

/// Bounds on one registry entry (the engine's request bounds, so a
/// registered agent's attributes always fit a request).
pub mod bounds {
    /// Most agents in a registry.
    pub const MAX_AGENTS: usize = 100_000;
    pub const MAX_ROLES: usize = 64;
    pub const MAX_ROLE_BYTES: usize = 128;
    pub const MAX_LABELS: usize = 64;
    pub const MAX_LABEL_KEY_BYTES: usize = 128;
    pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
    pub const MAX_TEXT_BYTES: usize = 256;
}

/// One `agents:` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentSpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

/// What the operator says an agent is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisteredAgent {
    /// The id or glob this entry was written for.
    pub pattern: String,
    pub name: String,
    pub owner: String,
    pub roles: Vec<String>,
    pub labels: HashMap<String, String>,
    pub file: String,
    pub line: u32,
}

/// Every registered agent, looked up by id on each decision.
#[derive(Debug, Default)]
pub struct AgentRegistry {
    entries: Vec<RegisteredAgent>,
    /// Fx hashing: the lookup is on every decision's path.
    exact: rustc_hash::FxHashMap<String, usize>,
    globs: Vec<(Glob, usize)>,
}

/// The attributes of an agent the registry does not list.
static UNREGISTERED: std::sync::LazyLock<RegisteredAgent> = std::sync::LazyLock::new(RegisteredAgent::default);

impl AgentRegistry {
    /// Checks and indexes entries; errors name the entry.
    pub(crate) fn build(specs: Vec<(String, u32, AgentSpec)>) -> Result<AgentRegistry, Vec<(String, u32, String)>> {
        let mut registry = AgentRegistry::default();
        let mut errors = Vec::new();
        if specs.len() > bounds::MAX_AGENTS {
            errors.push((String::new(), 0, format!("{} agents; the limit is {}", specs.len(), bounds::MAX_AGENTS)));
            return Err(errors);
        }
        for (file, line, spec) in specs {
            if let Err(message) = check(&spec) {
                errors.push((file, line, format!("agent '{}': {message}", spec.id)));
                continue;
            }
            let index = registry.entries.len();
            let glob = Glob::new(&spec.id);
            match glob.is_exact().map(str::to_owned) {
                Some(id) => {
                    if let Some(previous) = registry.exact.insert(id, index) {
                        let first = &registry.entries[previous];
                        errors.push((
                            file,
                            line,
                            format!("agent '{}' is registered twice (also at {}:{})", spec.id, first.file, first.line),
                        ));
                        continue;
                    }
                }
                None => registry.globs.push((glob, index)),
            }
            let mut roles = spec.roles;
            roles.sort();
            roles.dedup();
            registry.entries.push(RegisteredAgent {
                pattern: spec.id,
                name: spec.name,
                owner: spec.owner,
                roles,
                labels: spec.labels,
                file,
                line,
            });
        }
        if errors.is_empty() { Ok(registry) } else { Err(errors) }
    }

    /// The entry for `agent_id`: its exact entry, else the first glob
    /// that matches it.
    pub fn lookup(&self, agent_id: &str) -> Option<&RegisteredAgent> {
        if let Some(index) = self.exact.get(agent_id) {
            return Some(&self.entries[*index]);
        }
        self.globs.iter().find(|(glob, _)| glob.matches(agent_id)).map(|(_, index)| &self.entries[*index])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[RegisteredAgent] {
        &self.entries
    }
}

fn check(spec: &AgentSpec) -> Result<(), String> {
    let text = |field: &str, value: &str, max: usize| {
        if value.len() > max || value.contains('\0') {
            Err(format!("{field} must be at most {max} bytes, without NUL"))
        } else {
            Ok(())
        }
    };
    if spec.id.trim().is_empty() {
        return Err("id must not be empty".into());
    }
    text("id", &spec.id, bounds::MAX_TEXT_BYTES)?;
    text("name", &spec.name, bounds::MAX_TEXT_BYTES)?;
    text("owner", &spec.owner, bounds::MAX_TEXT_BYTES)?;
    if spec.roles.len() > bounds::MAX_ROLES {
        return Err(format!("at most {} roles", bounds::MAX_ROLES));
    }
    for role in &spec.roles {
        if role.is_empty() {
            return Err("roles must not be empty strings".into());
        }
        text("a role", role, bounds::MAX_ROLE_BYTES)?;
    }
    if spec.labels.len() > bounds::MAX_LABELS {
        return Err(format!("at most {} labels", bounds::MAX_LABELS));
    }
    for (key, value) in &spec.labels {
        if key.is_empty() {
            return Err("label keys must not be empty".into());
        }
        text("a label key", key, bounds::MAX_LABEL_KEY_BYTES)?;
        text(&format!("label {key}"), value, bounds::MAX_LABEL_VALUE_BYTES)?;
    }
    Ok(())
}

/// Who may say what an agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// An agent (or anyone without the grant): the registry decides, and
    /// claims it does not back are refused.
    Registry,
    /// A principal trusted to assert attributes (an orchestrator that
    /// authenticates its own agents, an admin testing policies): what the
    /// request says is used; what it leaves out comes from the registry.
    Asserted,
}

/// A claimed attribute the registry does not give the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The request field at fault (`agent.roles`, `agent.labels`, `agent.name`).
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Applies the registry to a request's agent in place: afterwards the
/// agent's roles, labels and name are what the decision may rely on.
/// Returns the registry entry used (`None`: the agent is not registered).
pub fn resolve<'r>(
    registry: &'r AgentRegistry,
    agent: &mut pb::Agent,
    trust: Trust,
) -> Result<Option<&'r RegisteredAgent>, Refusal> {
    let found = registry.lookup(&agent.id);
    let entry = found.unwrap_or(&UNREGISTERED);
    match trust {
        Trust::Registry => {
            if let Some(role) = agent.roles.iter().find(|role| entry.roles.binary_search(role).is_err()) {
                return Err(Refusal {
                    field: "agent.roles",
                    message: format!("agent {} does not hold role {role}", agent.id),
                });
            }
            if let Some((key, value)) = agent.labels.iter().find(|(key, value)| entry.labels.get(*key) != Some(value)) {
                return Err(Refusal {
                    field: "agent.labels",
                    message: format!("agent {} does not hold label {key}={value}", agent.id),
                });
            }
            if !agent.name.is_empty() && agent.name != entry.name {
                return Err(Refusal {
                    field: "agent.name",
                    message: format!("agent {} is not registered as {:?}", agent.id, agent.name),
                });
            }
            // Claims held are checked, never used: a request that leaves a
            // role out does not escape a rule written for that role.
            if agent.roles.len() != entry.roles.len() {
                agent.roles.clone_from(&entry.roles);
            }
            if agent.labels.len() != entry.labels.len() {
                agent.labels.clone_from(&entry.labels);
            }
            if agent.name.is_empty() && !entry.name.is_empty() {
                agent.name.clone_from(&entry.name);
            }
        }
        Trust::Asserted => {
            if agent.roles.is_empty() {
                agent.roles.clone_from(&entry.roles);
            }
            if agent.labels.is_empty() {
                agent.labels.clone_from(&entry.labels);
            }
            if agent.name.is_empty() {
                agent.name.clone_from(&entry.name);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, roles: &[&str], labels: &[(&str, &str)]) -> (String, u32, AgentSpec) {
        (
            "agents.yaml".into(),
            1,
            AgentSpec {
                id: id.into(),
                name: format!("{id} name"),
                owner: "ops".into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            },
        )
    }

    fn agent(id: &str, roles: &[&str], labels: &[(&str, &str)]) -> pb::Agent {
        pb::Agent {
            id: id.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    fn registry() -> AgentRegistry {
        AgentRegistry::build(vec![
            spec("support-bot", &["support", "refunds"], &[("team", "support")]),
            spec("support-*", &["support"], &[]),
            spec("*", &["guest"], &[]),
        ])
        .unwrap()
    }

    #[test]
    fn claims_the_registry_does_not_back_are_refused() {
        let registry = registry();
        for (claimed, field, message) in [
            (agent("support-bot", &["finance"], &[]), "agent.roles", "agent support-bot does not hold role finance"),
            (agent("support-bot", &["admin", "support"], &[]), "agent.roles", "does not hold role admin"),
            (agent("support-eu", &["refunds"], &[]), "agent.roles", "agent support-eu does not hold role refunds"),
            (agent("support-bot", &[], &[("team", "finance")]), "agent.labels", "does not hold label team=finance"),
            (agent("support-bot", &[], &[("tier", "gold")]), "agent.labels", "does not hold label tier=gold"),
        ] {
            let mut claimed = claimed;
            let refusal = resolve(&registry, &mut claimed, Trust::Registry).unwrap_err();
            assert_eq!(refusal.field, field);
            assert!(refusal.message.contains(message), "{refusal}");
        }
        let mut named = agent("support-bot", &[], &[]);
        named.name = "Finance bot".into();
        assert_eq!(resolve(&registry, &mut named, Trust::Registry).unwrap_err().field, "agent.name");
    }

    #[test]
    fn the_decision_sees_every_registered_attribute_whatever_was_claimed() {
        let registry = registry();
        // Nothing claimed, a subset claimed, everything claimed: the same.
        for claimed in [&[][..], &["support"][..], &["refunds", "support"][..]] {
            let mut request = agent("support-bot", claimed, &[]);
            let entry = resolve(&registry, &mut request, Trust::Registry).unwrap().unwrap();
            assert_eq!(entry.pattern, "support-bot");
            assert_eq!(request.roles, ["refunds", "support"]);
            assert_eq!(request.labels, [("team".to_string(), "support".to_string())].into());
            assert_eq!(request.name, "support-bot name");
        }
        // The exact entry beats the glob; the first glob wins among globs.
        let mut eu = agent("support-eu", &[], &[]);
        assert_eq!(resolve(&registry, &mut eu, Trust::Registry).unwrap().unwrap().pattern, "support-*");
        assert_eq!(eu.roles, ["support"]);
        let mut other = agent("billing", &[], &[]);
        assert_eq!(resolve(&registry, &mut other, Trust::Registry).unwrap().unwrap().pattern, "*");
        // Not registered at all: no roles, and none may be claimed.
        let empty = AgentRegistry::default();
        let mut bare = agent("ghost", &[], &[]);
        assert!(resolve(&empty, &mut bare, Trust::Registry).unwrap().is_none());
        assert!(bare.roles.is_empty() && bare.labels.is_empty() && bare.name.is_empty());
        let mut claims = agent("ghost", &["admin"], &[]);
        assert!(resolve(&empty, &mut claims, Trust::Registry).is_err());
    }

    #[test]
    fn a_trusted_caller_asserts_attributes_and_the_registry_fills_the_rest() {
        let registry = registry();
        let mut asserted = agent("support-bot", &["finance"], &[]);
        resolve(&registry, &mut asserted, Trust::Asserted).unwrap();
        assert_eq!(asserted.roles, ["finance"]);
        assert_eq!(asserted.labels, [("team".to_string(), "support".to_string())].into());
        assert_eq!(asserted.name, "support-bot name");
    }

    #[test]
    fn entries_are_checked_at_load() {
        let twice = AgentRegistry::build(vec![spec("a", &[], &[]), spec("a", &[], &[])]).unwrap_err();
        assert!(twice[0].2.contains("registered twice"), "{twice:?}");
        let long = "x".repeat(bounds::MAX_ROLE_BYTES + 1);
        let bad = AgentRegistry::build(vec![spec("b", &[&long], &[]), spec("", &[], &[]), spec("c", &[""], &[])])
            .unwrap_err();
        assert_eq!(bad.len(), 3, "{bad:?}");
    }
}
