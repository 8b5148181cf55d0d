//! Approval routes: who may review which actions, how many must agree,
//! and the clocks (timeout, escalation, reminder, grant lifetime); and the
//! receivers notifications go to.
//!
//! A YAML file (`routes` in the config, e.g. `examples/approvals.yaml`);
//! the first route whose `actions` and `rules` match applies, else the
//! built-in default (any `approver`, one approval, 1 h timeout, 15 min
//! grant).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use warden_glob::Glob;

/// Who may review: `role:NAME` or `principal:ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reviewer {
    Role(String),
    Principal(String),
}

impl Reviewer {
    fn parse(text: &str) -> Result<Reviewer, String> {
        match text.split_once(':') {
            Some(("role", name)) if !name.is_empty() => Ok(Reviewer::Role(name.to_owned())),
            Some(("principal", id)) if !id.is_empty() => Ok(Reviewer::Principal(id.to_owned())),
            _ => Err(format!("reviewer {text:?}: expected role:NAME or principal:ID")),
        }
    }

    pub fn admits(&self, principal: &warden_auth::Principal) -> bool {
        match self {
            Reviewer::Role(role) => principal.has_role(role),
            Reviewer::Principal(id) => &principal.id == id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    actions: Vec<Glob>,
    rules: Vec<Glob>,
    pub reviewers: Vec<Reviewer>,
    /// The second tier, added after `escalate_after`.
    pub escalate_to: Vec<Reviewer>,
    pub min_approvals: u32,
    pub timeout: Duration,
    pub escalate_after: Option<Duration>,
    pub remind_before: Option<Duration>,
    pub grant_ttl: Duration,
    pub notify: Vec<String>,
    pub escalate_notify: Vec<String>,
}

impl Route {
    fn default_route() -> Route {
        Route {
            name: "default".into(),
            actions: vec![Glob::Any],
            rules: vec![Glob::Any],
            reviewers: vec![Reviewer::Role("approver".into())],
            escalate_to: Vec::new(),
            min_approvals: 1,
            timeout: Duration::from_secs(3600),
            escalate_after: None,
            remind_before: None,
            grant_ttl: Duration::from_secs(900),
            notify: Vec::new(),
            escalate_notify: Vec::new(),
        }
    }

    fn matches(&self, action: &str, rules: &[String]) -> bool {
        self.actions.iter().any(|g| g.matches(action))
            && (rules.is_empty() || self.rules.iter().any(|g| rules.iter().any(|r| g.matches(r))))
    }

    /// Whether `principal` may review under this route at `escalation_level`.
    pub fn admits(&self, principal: &warden_auth::Principal, escalation_level: u32) -> bool {
        self.reviewers.iter().any(|r| r.admits(principal))
            || (escalation_level > 0 && self.escalate_to.iter().any(|r| r.admits(principal)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookReceiver {
    pub url: String,
    /// A secret reference; the body's HMAC-SHA256 goes in `X-Warden-Signature: sha256=<hex>`.
    #[serde(default)]
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackReceiver {
    /// The incoming webhook URL (a secret reference is accepted).
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailReceiver {
    /// `smtp://HOST:PORT` (plain, or `?tls=required` for STARTTLS) or
    /// `smtps://USER:PASSWORD@HOST:465`; a secret reference is accepted.
    pub smtp_url: String,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    pub name: String,
    #[serde(default)]
    pub webhook: Option<WebhookReceiver>,
    #[serde(default)]
    pub slack: Option<SlackReceiver>,
    #[serde(default)]
    pub email: Option<EmailReceiver>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    #[serde(default)]
    receivers: Vec<Receiver>,
    #[serde(default)]
    routes: Vec<RouteSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSource {
    name: String,
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    reviewers: Vec<String>,
    #[serde(default)]
    escalate_to: Vec<String>,
    #[serde(default = "one")]
    min_approvals: u32,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    escalate_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    remind_before: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    grant_ttl: Option<Duration>,
    #[serde(default)]
    notify: Vec<String>,
    #[serde(default)]
    escalate_notify: Vec<String>,
}

fn one() -> u32 {
    1
}

/// The routes in force.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
    default: Route,
    pub receivers: Vec<Receiver>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes { routes: Vec::new(), default: Route::default_route(), receivers: Vec::new() }
    }
}

impl Routes {
    pub fn load(path: &Path) -> Result<Routes, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Routes::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Routes, String> {
        let file: RouteFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut routes = Vec::new();
        for receiver in &file.receivers {
            let kinds = [receiver.webhook.is_some(), receiver.slack.is_some(), receiver.email.is_some()];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(format!("receiver {}: give exactly one of webhook, slack or email", receiver.name));
            }
            if let Some(email) = &receiver.email
                && (email.to.is_empty() || !email.from.contains('@'))
            {
                return Err(format!("receiver {}: email needs a from address and at least one to", receiver.name));
            }
        }
        for source in file.routes {
            let name = source.name.clone();
            let fail = |message: String| format!("route {name}: {message}");
            let parse_all = |items: &[String]| items.iter().map(|r| Reviewer::parse(r)).collect::<Result<Vec<_>, _>>();
            let reviewers = parse_all(&source.reviewers).map_err(fail)?;
            if reviewers.is_empty() {
                return Err(fail("at least one reviewer (role:NAME or principal:ID) is required".into()));
            }
            if source.min_approvals == 0 || source.min_approvals > 10 {
                return Err(fail(format!("min_approvals must be 1 to 10, got {}", source.min_approvals)));
            }
            for receiver in source.notify.iter().chain(&source.escalate_notify) {
                if !file.receivers.iter().any(|r| &r.name == receiver) {
                    return Err(fail(format!("notifies unknown receiver {receiver:?}")));
                }
            }
            let glob = |items: &[String]| {
                if items.is_empty() { vec![Glob::Any] } else { items.iter().map(|p| Glob::new(p)).collect() }
            };
            let defaults = Route::default_route();
            let route = Route {
                actions: glob(&source.actions),
                rules: glob(&source.rules),
                reviewers,
                escalate_to: parse_all(&source.escalate_to).map_err(fail)?,
                min_approvals: source.min_approvals,
                timeout: source.timeout.unwrap_or(defaults.timeout),
                escalate_after: source.escalate_after,
                remind_before: source.remind_before,
                grant_ttl: source.grant_ttl.unwrap_or(defaults.grant_ttl),
                notify: source.notify,
                escalate_notify: source.escalate_notify,
                name: source.name,
            };
            if route.timeout.is_zero() || route.grant_ttl.is_zero() {
                return Err(format!("route {}: timeout and grant_ttl must be longer than zero", route.name));
            }
            routes.push(route);
        }
        Ok(Routes { routes, default: Route::default_route(), receivers: file.receivers })
    }

    /// The route for an action and the rules that demanded approval.
    pub fn route_for(&self, action: &str, rules: &[String]) -> &Route {
        self.routes.iter().find(|r| r.matches(action, rules)).unwrap_or(&self.default)
    }

    /// A route by name (a request keeps the name of the route it got).
    pub fn by_name(&self, name: &str) -> &Route {
        self.routes.iter().find(|r| r.name == name).unwrap_or(&self.default)
    }

    pub fn receiver(&self, name: &str) -> Option<&Receiver> {
        self.receivers.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_by_action_and_rule_and_bad_files_name_the_route() {
        let routes = Routes::parse(
            r#"
receivers:
  - name: ops
    webhook: { url: "http://127.0.0.1:1/hook", secret: "env:HOOK_SECRET" }
routes:
  - name: big-refunds
    actions: ["issue_refund"]
    rules: ["refund-*"]
    reviewers: ["role:finance", "principal:ada"]
    min_approvals: 2
    timeout: 30m
    escalate_after: 10m
    escalate_to: ["role:admin"]
    grant_ttl: 5m
    notify: [ops]
"#,
        )
        .unwrap();
        let route = routes.route_for("issue_refund", &["refund-over-100".into()]);
        assert_eq!((route.name.as_str(), route.min_approvals), ("big-refunds", 2));
        assert_eq!(route.timeout, Duration::from_secs(1800));
        assert_eq!(routes.route_for("issue_refund", &["other".into()]).name, "default");
        assert_eq!(routes.route_for("send_email", &[]).name, "default");

        for (text, expected) in [
            ("routes: [{name: r, reviewers: []}]", "route r: at least one reviewer"),
            ("routes: [{name: r, reviewers: [boss]}]", "expected role:NAME"),
            ("routes: [{name: r, reviewers: [role:a], min_approvals: 0}]", "min_approvals"),
            ("routes: [{name: r, reviewers: [role:a], notify: [nope]}]", "unknown receiver"),
            ("routes: [{name: r, reviewers: [role:a], timeout: soon}]", "timeout"),
        ] {
            let error = Routes::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
