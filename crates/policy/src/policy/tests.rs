//! Policy loading and rule-combination tests: one `check` helper per outcome.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use warden_proto::policy::v1::{Action, Agent};

use super::{Effect, PolicySet, Source, compile_sources};
use crate::cel::Input;
use crate::decision::{Decision, decide_rules};

fn set(yaml: &str) -> PolicySet {
    compile_sources(&[Source { file: "test.yaml".into(), content: yaml.into() }])
        .unwrap_or_else(|errors| panic!("{}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))
}

fn agent(id: &str, roles: &[&str], confidence: f64) -> Agent {
    Agent {
        id: id.into(),
        name: String::new(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        confidence,
        labels: HashMap::new(),
    }
}

fn action(kind: &str, cost: f64) -> Action {
    Action { r#type: kind.into(), resource: String::new(), estimated_cost: cost, params: None }
}

fn noon() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z").unwrap().with_timezone(&Utc)
}

fn decide(set: &PolicySet, agent: &Agent, action: &Action) -> Decision {
    decide_rules(set, &Input { agent, action, time: noon(), correlation_id: "" }).0
}

fn check(set: &PolicySet, agent: &Agent, action: &Action, effect: Effect, matched: &[&str], reasons: &[&str]) {
    let decision = decide(set, agent, action);
    assert_eq!(decision.effect, effect, "{decision:?}");
    assert_eq!(decision.matched(), matched, "{decision:?}");
    assert_eq!(decision.reasons(), reasons, "{decision:?}");
}

const POLICY: &str = r#"
rules:
  - name: only-humans-delete-customers
    actions: ["delete_customer"]
    agents: ["*"]
    effect: deny
    reason: "Only humans may delete customers"
  - name: cost-limit
    when: "action.estimated_cost > 500.0"
    effect: deny
    reason: "estimated cost exceeds the cost limit"
  - name: low-confidence
    when: "agent.confidence < 0.7"
    effect: require_approval
    reason: "agent confidence is low"
  - name: refunds-need-finance
    actions: ["issue_*"]
    agents: ["role:finance*"]
    effect: allow
    reason: "finance agents may refund"
  - name: new-refund-rule
    actions: ["issue_refund"]
    when: "action.params.amount > 100.0"
    effect: require_approval
    mode: shadow
  - name: email-agents
    actions: ["send_email"]
    agents: ["mailer-?", "support-*"]
    effect: allow
"#;

#[test]
fn deny_beats_approval_beats_allow_and_default_is_deny() {
    let set = set(POLICY);
    let confident = agent("support-1", &[], 0.9);
    let unsure = agent("support-1", &[], 0.5);
    check(
        &set,
        &confident,
        &action("send_email", 1.0),
        Effect::Allow,
        &["email-agents"],
        &["allowed by rule 'email-agents'"],
    );
    check(
        &set,
        &unsure,
        &action("send_email", 1.0),
        Effect::RequireApproval,
        &["low-confidence"],
        &["agent confidence is low"],
    );
    // Both deny rules match: both reasons are given.
    check(
        &set,
        &unsure,
        &action("delete_customer", 900.0),
        Effect::Deny,
        &["only-humans-delete-customers", "cost-limit"],
        &["Only humans may delete customers", "estimated cost exceeds the cost limit"],
    );
    check(
        &set,
        &confident,
        &action("launch_rocket", 0.0),
        Effect::Deny,
        &[],
        &["no rule allows action 'launch_rocket' (default deny)"],
    );
}

#[test]
fn globs_and_roles_select_agents_and_actions() {
    let set = set(POLICY);
    let finance = agent("bot-9", &["support", "finance-eu"], 0.95);
    let other = agent("bot-9", &["support"], 0.95);
    check(
        &set,
        &finance,
        &action("issue_refund", 10.0),
        Effect::Allow,
        &["refunds-need-finance"],
        &["finance agents may refund"],
    );
    check(
        &set,
        &other,
        &action("issue_refund", 10.0),
        Effect::Deny,
        &[],
        &["no rule allows action 'issue_refund' (default deny)"],
    );
    check(
        &set,
        &agent("mailer-7", &[], 0.9),
        &action("send_email", 0.0),
        Effect::Allow,
        &["email-agents"],
        &["allowed by rule 'email-agents'"],
    );
    check(
        &set,
        &agent("mailer-77", &[], 0.9),
        &action("send_email", 0.0),
        Effect::Deny,
        &[],
        &["no rule allows action 'send_email' (default deny)"],
    );
}

#[test]
fn shadow_rules_are_reported_never_enforced() {
    let set = set(POLICY);
    let finance = agent("bot-9", &["finance"], 0.95);
    let mut refund = action("issue_refund", 10.0);
    refund.params = Some(prost_types::Struct {
        fields: [(
            "amount".to_string(),
            prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(150.0)) },
        )]
        .into(),
    });
    let decision = decide(&set, &finance, &refund);
    assert_eq!(decision.effect, Effect::Allow);
    assert_eq!(decision.shadow.iter().map(|s| &**s).collect::<Vec<_>>(), ["new-refund-rule"]);
}

#[test]
fn condition_errors_deny_and_say_why() {
    let set = set(r#"
rules:
  - name: refunds
    actions: ["issue_refund"]
    when: "action.params.amount < 100.0"
    effect: allow
"#);
    // No `amount` param: the allow rule cannot be evaluated, so it denies.
    check(
        &set,
        &agent("a", &[], 1.0),
        &action("issue_refund", 0.0),
        Effect::Deny,
        &["refunds"],
        &["rule 'refunds' failed to evaluate (treated as deny): no such key: 'amount'"],
    );
}

#[test]
fn rules_are_evaluated_in_file_order_whatever_the_index() {
    // An exact-action rule between two wildcard rules keeps its place.
    let set = set(r#"
rules:
  - name: first
    when: "agent.confidence < 0.5"
    effect: require_approval
  - name: exact
    actions: ["a"]
    effect: require_approval
  - name: last
    actions: ["a*"]
    effect: require_approval
"#);
    let decision = decide(&set, &agent("x", &[], 0.1), &action("a", 0.0));
    assert_eq!(decision.matched(), ["first", "exact", "last"]);
}

fn check_errors(files: &[(&str, &str)], expected: &[&str]) {
    let sources: Vec<Source> =
        files.iter().map(|(f, c)| Source { file: f.to_string(), content: c.to_string() }).collect();
    let errors = compile_sources(&sources).expect_err("sources should be rejected");
    let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(rendered, expected);
}

#[test]
fn bad_files_are_rejected_with_file_line_and_rule() {
    check_errors(
        &[(
            "bad.yaml",
            r#"rules:
  - name: ok
    effect: allow
  - name: typo-in-field
    when: "agent.confidance < 0.7"
    effect: deny
  - name: bad-effect
    effect: maybe
"#,
        )],
        &[
            "bad.yaml:8: rule 'bad-effect': rules[2].effect: unknown variant `maybe`, expected one of `allow`, `deny`, `require_approval` at line 8 column 13",
        ],
    );
    check_errors(
        &[(
            "conditions.yaml",
            r#"rules:
  - name: ok
    effect: allow
  - name: typo-in-field
    when: "agent.confidance < 0.7"
    effect: deny
  - name: "syntax"
    when: "agent.confidence <"
    effect: deny
"#,
        )],
        &[
            "conditions.yaml:4: rule 'typo-in-field': invalid condition: agent has no field 'confidance' (fields: id, name, roles, confidence, labels) at column 6",
            "conditions.yaml:7: rule 'syntax': invalid condition: expected an expression, found end of expression at column 19",
        ],
    );
    check_errors(
        &[
            ("a.yaml", "rules:\n  - name: same\n    effect: allow\n"),
            (
                "b.yaml",
                "rules:\n  - name: same\n    effect: deny\nlimits:\n  - name: l\n    per: agent\n    window: 1m\n",
            ),
        ],
        &[
            "b.yaml:2: rule 'same': duplicate rule name (also defined in a.yaml)",
            "b.yaml:5: rule 'l': a limit needs max_requests, max_cost or both",
        ],
    );
    check_errors(
        &[(
            "limits.yaml",
            "limits:\n  - name: w\n    per: agent\n    max_requests: 1\n    window: soon\n  - name: z\n    per: agent\n    max_cost: -1\n    window: 1h\n  - name: e\n    per: agent\n    max_requests: 1\n    window: 1h\n    effect: allow\n",
        )],
        &[
            "limits.yaml:2: rule 'w': invalid window \"soon\": expected number at 0 (write e.g. 1m, 24h)",
            "limits.yaml:6: rule 'z': max_cost must be a finite number >= 0, got -1",
            "limits.yaml:10: rule 'e': a limit's effect must be deny or require_approval",
        ],
    );
    check_errors(
        &[("unknown.yaml", "rulez: []\n")],
        &["unknown.yaml:1: unknown field `rulez`, expected one of `rules`, `limits`, `personal_params`, `agents`"],
    );
    check_errors(
        &[(
            "deep.yaml",
            &format!(
                "rules:\n  - name: deep\n    when: \"{}true{}\"\n    effect: deny\n",
                "(".repeat(100),
                ")".repeat(100)
            ),
        )],
        &["deep.yaml:2: rule 'deep': invalid condition: expression nests deeper than 48 levels at column 49"],
    );
}

#[test]
fn policy_versions_are_content_hashes() {
    let a = [Source { file: "a.yaml".into(), content: "rules: []".into() }];
    let b = [Source { file: "a.yaml".into(), content: "rules: [] ".into() }];
    assert_ne!(super::version_of(&a), super::version_of(&b));
    assert_eq!(super::version_of(&a), super::version_of(&a.clone()));
    assert!(super::version_of(&a).starts_with("sha256:"));
}

#[test]
fn example_policies_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    let set = super::load_dir(&dir).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(set.rules.len() >= 7 && set.limits.len() == 2);
}

#[test]
fn the_condition_cost_bound_is_configurable() {
    let yaml = "rules:\n  - name: ok\n    effect: allow\n  - name: every-pair\n    effect: deny\n    when: \"agent.roles.all(a, agent.roles.exists(b, a == b))\"\n";
    let source = [Source { file: "cost.yaml".into(), content: yaml.into() }];
    // Nested over the agent's (at most 64) roles: fine under the default.
    assert!(compile_sources(&source).is_ok());
    let tight = super::LoadOptions { max_condition_cost: 1_000 };
    let errors = super::compile_sources_with(&source, &tight).expect_err("over the configured bound");
    assert_eq!(errors.len(), 1);
    let error = &errors[0];
    assert_eq!((error.file.as_str(), error.line, error.rule.as_str()), ("cost.yaml", 4, "every-pair"));
    assert!(error.message.contains("the limit is 1000"), "{error}");
    // The bound is also the run-time budget of the conditions that load.
    let set = super::compile_sources_with(&source, &super::LoadOptions { max_condition_cost: 10_000 }).unwrap();
    let agent = agent("a", &["r1", "r2"], 0.9);
    check(&set, &agent, &action("x", 0.0), Effect::Deny, &["every-pair"], &["denied by rule 'every-pair'"]);
}

#[test]
fn a_limit_computes_its_cost_from_the_action() {
    let yaml = "limits:\n  - name: spend\n    actions: [issue_refund]\n    per: agent\n    max_cost: 1000\n    cost: \"action.params.amount\"\n    window: 24h\n  - name: guess\n    per: agent\n    max_cost: 10\n    window: 1h\n";
    let set = compile_sources(&[Source { file: "l.yaml".into(), content: yaml.into() }]).unwrap();
    let (spend, guess) = (&set.limits[0], &set.limits[1]);
    let agent = agent("bot", &[], 0.9);
    let refund = |amount: prost_types::value::Kind, estimated_cost: f64| Action {
        r#type: "issue_refund".into(),
        resource: String::new(),
        estimated_cost,
        params: Some(prost_types::Struct {
            fields: [("amount".to_string(), prost_types::Value { kind: Some(amount) })].into(),
        }),
    };
    let cost = |limit: &super::Limit, action: &Action| {
        limit.cost_of(&Input { agent: &agent, action, time: noon(), correlation_id: "" })
    };
    use prost_types::value::Kind;
    // The agent's estimate of 0 is ignored where the limit says what counts.
    let lying = refund(Kind::NumberValue(5000.0), 0.0);
    assert_eq!(cost(spend, &lying), Ok(5000.0));
    assert_eq!(cost(guess, &lying), Ok(0.0));
    // What cannot be a cost is an error (the limit then denies).
    for bad in [
        Kind::NumberValue(-1.0),
        Kind::NumberValue(f64::NAN),
        Kind::NumberValue(f64::INFINITY),
        Kind::StringValue("5".into()),
    ] {
        let error = cost(spend, &refund(bad.clone(), 1.0)).unwrap_err();
        assert!(error.contains("limit 'spend' cannot compute the cost"), "{bad:?}: {error}");
    }
    let missing = Action { params: None, ..refund(Kind::NumberValue(1.0), 1.0) };
    assert!(cost(spend, &missing).is_err());
}

#[test]
fn bad_costs_and_agents_are_load_errors() {
    check_errors(
        &[(
            "l.yaml",
            "limits:\n  - name: a\n    per: agent\n    max_requests: 1\n    cost: \"1.0\"\n    window: 1h\n  - name: b\n    per: agent\n    max_cost: 1\n    cost: \"action.resource\"\n    window: 1h\n  - name: c\n    per: agent\n    max_cost: 1\n    cost: \"action.params.amount +\"\n    window: 1h\n",
        )],
        &[
            "l.yaml:2: rule 'a': 'cost' says what max_cost counts; add max_cost",
            "l.yaml:7: rule 'b': invalid cost: must be a number, but it is string at column 1",
            "l.yaml:12: rule 'c': invalid cost: expected an expression, found end of expression at column 23",
        ],
    );
    check_errors(
        &[
            ("a.yaml", "agents:\n  - id: bot\n    roles: [x]\n"),
            ("b.yaml", "agents:\n  - id: other\n  - id: bot\n    roles: ['']\n  - id: bot\n"),
        ],
        &[
            "b.yaml:3: agent 'bot': roles must not be empty strings",
            "b.yaml:3: agent 'bot' is registered twice (also at a.yaml:2)",
        ],
    );
}

#[test]
fn the_registry_is_part_of_the_set_and_its_version() {
    let rules = Source { file: "p.yaml".into(), content: "rules:\n  - name: ok\n    effect: allow\n".into() };
    let agents = Source { file: "agents.yaml".into(), content: "agents:\n  - id: bot\n    roles: [support]\n".into() };
    let without = compile_sources(std::slice::from_ref(&rules)).unwrap();
    let with = compile_sources(&[rules, agents]).unwrap();
    assert!(without.agents.is_empty());
    assert_eq!(with.agents.lookup("bot").unwrap().roles, ["support"]);
    assert_ne!(without.version, with.version);
}
