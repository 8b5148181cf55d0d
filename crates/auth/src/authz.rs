//! Which roles may call which RPC: the one table, for every service.
//!
//! `admin` may call everything and is not repeated below. Health checks and
//! reflection are open (reflection can be turned off). A method missing
//! from the table is refused to everyone but admins; the test
//! `every_rpc_of_every_contract_is_in_the_table` keeps it complete.
//! Deployments add roles per method (or per `package.Service/*`) with
//! `[auth.grants]`.

use crate::principal::roles::{AGENT, APPROVER, AUDITOR, OPERATOR, SERVICE};

/// One row: a full gRPC path and the roles (besides admin) that may call it.
#[derive(Debug, Clone, Copy)]
pub struct MethodRule {
    pub path: &'static str,
    pub roles: &'static [&'static str],
}

const fn rule(path: &'static str, roles: &'static [&'static str]) -> MethodRule {
    MethodRule { path, roles }
}

const ADMIN_ONLY: &[&str] = &[];

/// The authorization table.
pub const TABLE: &[MethodRule] = &[
    // warden.policy.v1: agents ask; so does a service acting for agents
    // (the MCP gateway), held to the agents its key lists like any
    // principal; auditors and services may look at what is in force.
    rule("/warden.policy.v1.PolicyService/Evaluate", &[AGENT, SERVICE]),
    rule("/warden.policy.v1.PolicyService/ValidatePolicies", ADMIN_ONLY),
    rule("/warden.policy.v1.PolicyService/ReloadPolicies", ADMIN_ONLY),
    rule("/warden.policy.v1.PolicyService/GetPolicies", &[AUDITOR, SERVICE]),
    rule("/warden.policy.v1.PolicyService/SetKillSwitch", ADMIN_ONLY),
    rule("/warden.policy.v1.PolicyService/GetKillSwitch", &[AUDITOR]),
    // warden.audit.v1: services write; auditors read and prove. Agents may
    // record what their own actions did (`action_completed`) and read
    // their own trail (the handlers hold them to that).
    rule("/warden.audit.v1.AuditService/Append", &[SERVICE, AGENT]),
    rule("/warden.audit.v1.AuditService/Query", &[AUDITOR, AGENT]),
    rule("/warden.audit.v1.AuditService/GetCheckpoint", &[AUDITOR]),
    rule("/warden.audit.v1.AuditService/GetInclusionProof", &[AUDITOR]),
    rule("/warden.audit.v1.AuditService/GetConsistencyProof", &[AUDITOR]),
    rule("/warden.audit.v1.AuditService/Verify", &[AUDITOR]),
    rule("/warden.audit.v1.AuditService/Export", &[AUDITOR]),
    rule("/warden.audit.v1.AuditService/Subscribe", &[AUDITOR]),
    rule("/warden.audit.v1.AuditService/ForgetSubject", ADMIN_ONLY),
    // warden.approval.v1: the policy engine opens and redeems; people
    // review; agents wait on (and withdraw) their own requests.
    rule("/warden.approval.v1.ApprovalService/CreateApproval", &[SERVICE]),
    rule("/warden.approval.v1.ApprovalService/GetApproval", &[AGENT, APPROVER, AUDITOR, SERVICE]),
    rule("/warden.approval.v1.ApprovalService/ListApprovals", &[APPROVER, AUDITOR]),
    rule("/warden.approval.v1.ApprovalService/WatchApproval", &[AGENT, APPROVER, SERVICE]),
    rule("/warden.approval.v1.ApprovalService/Review", &[APPROVER]),
    rule("/warden.approval.v1.ApprovalService/Cancel", &[AGENT]),
    rule("/warden.approval.v1.ApprovalService/Redeem", &[SERVICE]),
    // warden.alerting.v1: on-call operators read, silence and test routes;
    // auditors read; reloading is an admin's.
    rule("/warden.alerting.v1.AlertingService/ListAlerts", &[OPERATOR, AUDITOR]),
    rule("/warden.alerting.v1.AlertingService/ListRules", &[OPERATOR, AUDITOR]),
    rule("/warden.alerting.v1.AlertingService/CreateSilence", &[OPERATOR]),
    rule("/warden.alerting.v1.AlertingService/ExpireSilence", &[OPERATOR]),
    rule("/warden.alerting.v1.AlertingService/ListSilences", &[OPERATOR, AUDITOR]),
    rule("/warden.alerting.v1.AlertingService/TestRoute", &[OPERATOR, AUDITOR]),
    rule("/warden.alerting.v1.AlertingService/ReloadConfig", ADMIN_ONLY),
    // warden.deadletter.v1 (every service that delivers): on-call
    // operators and auditors look; replaying is an admin's.
    rule("/warden.deadletter.v1.DeadLetterService/ListDeadLetters", &[OPERATOR, AUDITOR]),
    rule("/warden.deadletter.v1.DeadLetterService/ReplayDeadLetters", ADMIN_ONLY),
];

/// What an HTTP route requires: the same as the RPC it mirrors (a page
/// answers exactly what that RPC would), or roles of its own where no RPC
/// does the same.
#[derive(Debug, Clone, Copy)]
pub enum HttpAccess {
    Rpc(&'static str),
    Roles(&'static [&'static str]),
}

/// One HTTP route of a service's web surface.
#[derive(Debug, Clone, Copy)]
pub struct HttpRule {
    /// `inbox` (the approval service's web inbox), `alertmanager` (the
    /// alerting service's Alertmanager v2 API) or `mcp` (the MCP gateway's
    /// endpoint).
    pub surface: &'static str,
    pub method: &'static str,
    /// The route as the router writes it (`/approvals/{id}`).
    pub route: &'static str,
    pub access: HttpAccess,
}

const fn http(surface: &'static str, method: &'static str, route: &'static str, access: HttpAccess) -> HttpRule {
    HttpRule { surface, method, route, access }
}

const EVALUATE: &str = "/warden.policy.v1.PolicyService/Evaluate";
const LIST_APPROVALS: &str = "/warden.approval.v1.ApprovalService/ListApprovals";
const GET_APPROVAL: &str = "/warden.approval.v1.ApprovalService/GetApproval";

/// The HTTP surfaces' half of the table: every route that needs a
/// credential. Health and readiness (`/-/healthy`, `/-/ready`), the
/// inbox's sign-in form and stylesheet, and the MCP gateway's Protected
/// Resource Metadata (`/.well-known/oauth-protected-resource`) are open.
pub const HTTP_TABLE: &[HttpRule] = &[
    // The approval inbox: signing in takes what listing approvals takes,
    // and each page answers what its RPC would.
    http("inbox", "POST", "/login", HttpAccess::Rpc(LIST_APPROVALS)),
    http("inbox", "GET", "/approvals", HttpAccess::Rpc(LIST_APPROVALS)),
    http("inbox", "GET", "/history", HttpAccess::Rpc(LIST_APPROVALS)),
    http("inbox", "GET", "/approvals/{id}", HttpAccess::Rpc(GET_APPROVAL)),
    http("inbox", "POST", "/approvals/{id}/review", HttpAccess::Rpc("/warden.approval.v1.ApprovalService/Review")),
    // Alertmanager's API v2: reads and silences as the alerting RPCs;
    // posting alerts (Prometheus, a service) has no RPC.
    http("alertmanager", "POST", "/api/v2/alerts", HttpAccess::Roles(&[SERVICE, OPERATOR])),
    http("alertmanager", "GET", "/api/v2/alerts", HttpAccess::Rpc("/warden.alerting.v1.AlertingService/ListAlerts")),
    http(
        "alertmanager",
        "GET",
        "/api/v2/alerts/groups",
        HttpAccess::Rpc("/warden.alerting.v1.AlertingService/ListAlerts"),
    ),
    http(
        "alertmanager",
        "GET",
        "/api/v2/silences",
        HttpAccess::Rpc("/warden.alerting.v1.AlertingService/ListSilences"),
    ),
    http(
        "alertmanager",
        "GET",
        "/api/v2/silence/{id}",
        HttpAccess::Rpc("/warden.alerting.v1.AlertingService/ListSilences"),
    ),
    http(
        "alertmanager",
        "POST",
        "/api/v2/silences",
        HttpAccess::Rpc("/warden.alerting.v1.AlertingService/CreateSilence"),
    ),
    http(
        "alertmanager",
        "DELETE",
        "/api/v2/silence/{id}",
        HttpAccess::Rpc("/warden.alerting.v1.AlertingService/ExpireSilence"),
    ),
    http("alertmanager", "GET", "/api/v2/status", HttpAccess::Rpc("/warden.alerting.v1.AlertingService/ListRules")),
    http("alertmanager", "GET", "/api/v2/receivers", HttpAccess::Rpc("/warden.alerting.v1.AlertingService/ListRules")),
    http("alertmanager", "GET", "/rules", HttpAccess::Rpc("/warden.alerting.v1.AlertingService/ListRules")),
    // The MCP gateway: every MCP request (a session's messages, its event
    // stream, its end) takes what asking for a decision takes, and acts
    // for the principal that made it.
    http("mcp", "POST", "/mcp", HttpAccess::Rpc(EVALUATE)),
    http("mcp", "GET", "/mcp", HttpAccess::Rpc(EVALUATE)),
    http("mcp", "DELETE", "/mcp", HttpAccess::Rpc(EVALUATE)),
];

/// The HTTP route's rule.
pub fn http_rule(surface: &str, method: &str, route: &str) -> Option<&'static HttpRule> {
    HTTP_TABLE.iter().find(|r| r.surface == surface && r.method == method && r.route == route)
}

/// The roles that may call an HTTP route, with `admin` and the grants of
/// the RPC it mirrors.
pub fn http_roles(rule: &HttpRule, grants: &std::collections::BTreeMap<String, Vec<String>>) -> Vec<String> {
    match rule.access {
        HttpAccess::Rpc(path) => roles_for(path, grants),
        HttpAccess::Roles(roles) => {
            let mut all: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
            all.push(crate::principal::roles::ADMIN.to_owned());
            all.sort();
            all.dedup();
            all
        }
    }
}

/// Services anyone may call, authenticated or not.
pub const OPEN_SERVICES: &[&str] = &["grpc.health.v1.Health"];

/// Reflection services: open unless `reflection = false`.
pub const REFLECTION_SERVICES: &[&str] =
    &["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// `/package.Service/Method` split into service and method.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

/// The roles that may call `path`, with `admin` and the configured grants.
pub fn roles_for(path: &str, grants: &std::collections::BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut roles: Vec<String> = vec![crate::principal::roles::ADMIN.to_owned()];
    if let Some(rule) = TABLE.iter().find(|r| r.path == path) {
        roles.extend(rule.roles.iter().map(|r| (*r).to_owned()));
    }
    let service_wildcard = split_path(path).map(|(service, _)| format!("{service}/*"));
    for (key, extra) in grants {
        let key = key.trim_start_matches('/');
        if key == path.trim_start_matches('/') || Some(key) == service_wildcard.as_deref() {
            roles.extend(extra.iter().cloned());
        }
    }
    roles.sort();
    roles.dedup();
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn every_rpc_of_every_contract_is_in_the_table() {
        let set = prost_types::FileDescriptorSet::decode(warden_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut paths = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
        assert!(paths.len() >= TABLE.len(), "{paths:?}");
        for path in &paths {
            assert!(TABLE.iter().any(|rule| rule.path == path), "{path} is missing from the authorization table");
        }
        for rule in TABLE {
            assert!(paths.iter().any(|path| path == rule.path), "{} is in the table but no contract has it", rule.path);
        }
    }

    #[test]
    fn every_http_route_mirrors_an_rpc_of_the_table_or_names_its_roles() {
        for rule in HTTP_TABLE {
            if let HttpAccess::Rpc(path) = rule.access {
                assert!(TABLE.iter().any(|r| r.path == path), "{} {} mirrors unknown {path}", rule.method, rule.route);
            }
        }
        let grants = Default::default();
        let login = http_rule("inbox", "POST", "/login").unwrap();
        assert_eq!(http_roles(login, &grants), ["admin", "approver", "auditor"]);
        let post = http_rule("alertmanager", "POST", "/api/v2/alerts").unwrap();
        assert_eq!(http_roles(post, &grants), ["admin", "operator", "service"]);
    }

    #[test]
    fn grants_add_roles_per_method_or_service() {
        let grants = [
            ("warden.audit.v1.AuditService/*".to_string(), vec!["compliance".to_string()]),
            ("/warden.policy.v1.PolicyService/GetPolicies".to_string(), vec!["support".to_string()]),
        ]
        .into();
        assert_eq!(roles_for("/warden.audit.v1.AuditService/Verify", &grants), ["admin", "auditor", "compliance"]);
        assert_eq!(
            roles_for("/warden.policy.v1.PolicyService/GetPolicies", &grants),
            ["admin", "auditor", "service", "support"]
        );
        assert_eq!(roles_for("/warden.policy.v1.PolicyService/Evaluate", &grants), ["admin", "agent", "service"]);
        assert_eq!(roles_for("/unknown.Service/Call", &grants), ["admin"]);
        assert_eq!(split_path("/a.B/C"), Some(("a.B", "C")));
        assert_eq!(split_path("/a.B"), None);
    }
}
