//! Who is calling: a principal's kind, id, roles, and the agent ids it may
//! act as.

use std::fmt;

use serde::{Deserialize, Serialize};
use warden_glob::Glob;

/// The built-in roles. Deployments may define more (any string); the
/// authorization table and `grants` refer to roles by name.
pub mod roles {
    /// May ask for decisions, as the agents it is bound to.
    pub const AGENT: &str = "agent";
    /// May review approval requests.
    pub const APPROVER: &str = "approver";
    /// May call every RPC.
    pub const ADMIN: &str = "admin";
    /// May read the audit log, its proofs and checkpoints.
    pub const AUDITOR: &str = "auditor";
    /// May silence alerts, test routes and read alerting state (on-call).
    pub const OPERATOR: &str = "operator";
    /// A Warden service calling another (e.g. the policy engine appending
    /// the decision log).
    pub const SERVICE: &str = "service";
}

/// Capabilities beyond the role table: what a caller may *assert* in a
/// request rather than have the server decide. Each is held by admins, by a
/// principal with a role of the same name, or by the roles `[auth.grants]`
/// lists under the capability's name (`assert_time = ["replay"]`).
pub mod capabilities {
    /// May set an agent's roles, labels and name in `Evaluate` (an
    /// orchestrator that authenticates its own agents); everyone else gets
    /// the agent registry's.
    pub const ASSERT_AGENT_ATTRIBUTES: &str = "assert_agent_attributes";
    /// May evaluate at a time other than the engine's clock (replay,
    /// tests); everyone else's `time` must be within `max_clock_skew`.
    pub const ASSERT_TIME: &str = "assert_time";
    /// Every capability.
    pub const ALL: &[&str] = &[ASSERT_AGENT_ATTRIBUTES, ASSERT_TIME];
}

/// What kind of party a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Agent,
    Human,
    Service,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Human => "human",
            Kind::Service => "service",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "agent" => Some(Kind::Agent),
            "human" => Some(Kind::Human),
            "service" => Some(Kind::Service),
            _ => None,
        }
    }
}

/// An authenticated caller. Built once per credential (at key-file load,
/// token verification or TLS handshake) and shared as an `Arc` by every
/// request that presents it.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: Kind,
    pub id: String,
    pub roles: Vec<String>,
    /// The agent ids this principal may act as in `Evaluate`. For an agent
    /// principal this defaults to exactly its own id.
    agents: Vec<Glob>,
    /// How the caller proved who it is: `api_key:<key id>`, `jwt:<issuer>`,
    /// `mtls:<certificate identity>`.
    pub credential: String,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} {:?} via {}", self.kind.as_str(), self.id, self.roles, self.credential)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

impl Principal {
    /// A principal; `agents` are glob patterns (empty: an agent principal
    /// may act as itself only, others as no agent).
    pub fn new(
        kind: Kind,
        id: impl Into<String>,
        roles: Vec<String>,
        agents: &[String],
        credential: impl Into<String>,
    ) -> Principal {
        let id = id.into();
        let agents = if agents.is_empty() && kind == Kind::Agent {
            vec![Glob::new(&id)]
        } else {
            agents.iter().map(|pattern| Glob::new(pattern)).collect()
        };
        Principal { kind, id, roles, agents, credential: credential.into() }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether this principal is bound to `agent_id` by its `agents` globs
    /// (not by being an admin): who may not review that agent's requests.
    pub fn bound_to(&self, agent_id: &str) -> bool {
        self.agents.iter().any(|glob| glob.matches(agent_id))
    }

    /// Whether this principal may ask for decisions in `agent_id`'s name.
    /// Admins may act as any agent (to test policies); everyone else only as
    /// the agents they are bound to.
    pub fn may_act_as(&self, agent_id: &str) -> bool {
        self.has_role(roles::ADMIN) || self.agents.iter().any(|glob| glob.matches(agent_id))
    }
}

/// Who the auth layer let through, put in every request's extensions.
/// Handlers that check identity (`Evaluate`'s agent binding, the audit
/// event's actor) read it; a request without it is refused (fail closed).
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off (`--insecure-no-auth`).
    Anonymous,
    Principal(std::sync::Arc<Principal>),
}

impl Caller {
    /// The caller of a tonic request; `None` when the auth layer did not run.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Caller> {
        request.extensions().get::<Caller>()
    }

    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Caller::Anonymous => None,
            Caller::Principal(principal) => Some(principal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_act_as_themselves_unless_bound_to_more() {
        let bot = Principal::new(Kind::Agent, "support-bot", vec![roles::AGENT.into()], &[], "api_key:x");
        assert!(bot.may_act_as("support-bot"));
        assert!(!bot.may_act_as("billing-bot"));
        let fleet = Principal::new(Kind::Agent, "fleet", vec![roles::AGENT.into()], &["support-*".into()], "api_key:y");
        assert!(fleet.may_act_as("support-eu"));
        assert!(!fleet.may_act_as("fleet"));
        let person = Principal::new(Kind::Human, "ada", vec![roles::APPROVER.into()], &[], "jwt:idp");
        assert!(!person.may_act_as("ada"));
        let admin = Principal::new(Kind::Human, "root", vec![roles::ADMIN.into()], &[], "jwt:idp");
        assert!(admin.may_act_as("anyone"));
    }
}
