//! Policy tests: files next to the policies (`*_test.yaml`) that give a
//! request and the decision expected for it, run offline through the same
//! rule evaluation the policy engine uses (like `opa test`).
//!
//! ```yaml
//! tests:
//!   - name: large refunds need a human
//!     request:
//!       agent: { id: support-bot, roles: [support], confidence: 0.9 }
//!       action: { type: issue_refund, resource: order/1, estimated_cost: 300, params: { amount: 300 } }
//!       time: "2026-06-15T12:00:00Z"      # optional; time-dependent rules
//!     expect:
//!       effect: require_approval
//!       rules: [large-refunds]             # optional: exactly these deciding rules
//!       reasons_contain: ["over 250"]      # optional
//! ```
//!
//! Kill switches and limits are state, not policy: tests see rules only.
//!
//! The agent registry applies as it does in the policy engine: a case's
//! agent gets its registered roles, labels and name, and a case that
//! claims a role or label the registry does not give it is refused (write
//! `effect: refused` to test that). `asserted: true` stands for a caller
//! trusted to assert attributes (an orchestrator): the case's own apply.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use warden_proto::policy::v1::{Action, Agent};

use crate::cel::Input;
use crate::decision::decide_rules;
use crate::policy::{Effect, PolicySet, is_test_file};
use crate::registry::{Trust, resolve};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    request: TestRequest,
    expect: Expectation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    agent: TestAgent,
    /// The request comes from a principal trusted to assert the agent's
    /// attributes; otherwise the registry decides them.
    #[serde(default)]
    asserted: bool,
    action: TestAction,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    correlation_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestAgent {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default = "one")]
    confidence: f64,
    #[serde(default)]
    labels: HashMap<String, String>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestAction {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    estimated_cost: f64,
    #[serde(default)]
    params: Option<serde_yaml::Mapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    effect: String,
    #[serde(default)]
    rules: Option<Vec<String>>,
    #[serde(default)]
    reasons_contain: Vec<String>,
}

/// One test's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    pub file: String,
    pub name: String,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
}

fn yaml_to_value(value: &serde_yaml::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_yaml::Value::Null => Kind::NullValue(0),
        serde_yaml::Value::Bool(b) => Kind::BoolValue(*b),
        serde_yaml::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_yaml::Value::String(s) => Kind::StringValue(s.clone()),
        serde_yaml::Value::Sequence(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(yaml_to_value).collect() })
        }
        serde_yaml::Value::Mapping(map) => Kind::StructValue(mapping_to_struct(map)),
        serde_yaml::Value::Tagged(tagged) => return yaml_to_value(&tagged.value),
    };
    prost_types::Value { kind: Some(kind) }
}

fn mapping_to_struct(map: &serde_yaml::Mapping) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.iter().filter_map(|(k, v)| k.as_str().map(|k| (k.to_owned(), yaml_to_value(v)))).collect(),
    }
}

fn effect_name(effect: Effect) -> &'static str {
    effect.as_str()
}

/// Runs every `*_test.yaml` in `dir` against `policies`. A test file that
/// cannot be read or parsed is one failed result naming the file.
pub fn run_dir(dir: &Path, policies: &PolicySet) -> Vec<TestResult> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_test_file(p)).collect())
        .unwrap_or_default();
    files.sort();
    let mut results = Vec::new();
    for path in files {
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_yaml::from_str::<TestFile>(&text).map_err(|e| e.to_string()));
        match parsed {
            Err(error) => results.push(TestResult { file, name: "(file)".into(), failure: Some(error) }),
            Ok(tests) => {
                for case in tests.tests {
                    let failure = run_case(&case, policies).err();
                    results.push(TestResult { file: file.clone(), name: case.name, failure });
                }
            }
        }
    }
    results
}

fn run_case(case: &TestCase, policies: &PolicySet) -> Result<(), String> {
    let request = &case.request;
    let mut agent = Agent {
        id: request.agent.id.clone(),
        name: request.agent.name.clone(),
        roles: request.agent.roles.clone(),
        confidence: request.agent.confidence,
        labels: request.agent.labels.clone(),
    };
    let action = Action {
        r#type: request.action.kind.clone(),
        resource: request.action.resource.clone(),
        estimated_cost: request.action.estimated_cost,
        params: request.action.params.as_ref().map(mapping_to_struct),
    };
    let time = match &request.time {
        None => chrono::Utc::now(),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("request.time {text:?}: {e}"))?
            .with_timezone(&chrono::Utc),
    };
    let trust = if request.asserted { Trust::Asserted } else { Trust::Registry };
    if let Err(refusal) = resolve(&policies.agents, &mut agent, trust) {
        // The engine refuses the request before any rule runs.
        return match case.expect.effect.as_str() {
            "refused" => match case.expect.reasons_contain.iter().find(|w| !refusal.message.contains(w.as_str())) {
                None => Ok(()),
                Some(wanted) => Err(format!("refused with {:?}, which does not contain {wanted:?}", refusal.message)),
            },
            expected => Err(format!("refused: {refusal} (expected {expected})")),
        };
    }
    let input = Input { agent: &agent, action: &action, time, correlation_id: &request.correlation_id };
    let (decision, _) = decide_rules(policies, &input);
    let mut problems = Vec::new();
    if effect_name(decision.effect) != case.expect.effect {
        problems.push(format!("effect {} (expected {})", effect_name(decision.effect), case.expect.effect));
    }
    if let Some(rules) = &case.expect.rules
        && &decision.matched() != rules
    {
        problems.push(format!("rules {:?} (expected {rules:?})", decision.matched()));
    }
    let reasons = decision.reasons();
    for wanted in &case.expect.reasons_contain {
        if !reasons.iter().any(|r| r.contains(wanted.as_str())) {
            problems.push(format!("no reason contains {wanted:?} (reasons {reasons:?})"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// JUnit XML for CI systems.
pub fn junit(results: &[TestResult]) -> String {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let failures = results.iter().filter(|r| r.failure.is_some()).count();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"warden-policy\" tests=\"{}\" failures=\"{failures}\">\n",
        results.len()
    );
    for result in results {
        xml.push_str(&format!("  <testcase classname=\"{}\" name=\"{}\"", escape(&result.file), escape(&result.name)));
        match &result.failure {
            None => xml.push_str("/>\n"),
            Some(failure) => {
                xml.push_str(&format!(">\n    <failure message=\"{}\"/>\n  </testcase>\n", escape(failure)))
            }
        }
    }
    xml.push_str("</testsuite>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_pass_fail_and_report() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.yaml"),
            "rules:\n  - name: big\n    actions: [issue_refund]\n    when: \"action.params.amount > 100.0\"\n    effect: require_approval\n    reason: over 100\n  - name: rest\n    effect: allow\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("p_test.yaml"),
            r#"
tests:
  - name: big refunds wait
    request:
      agent: { id: bot }
      action: { type: issue_refund, params: { amount: 150 } }
    expect: { effect: require_approval, rules: [big], reasons_contain: ["over 100"] }
  - name: wrong on purpose
    request:
      agent: { id: bot }
      action: { type: issue_refund, params: { amount: 50 } }
    expect: { effect: deny }
"#,
        )
        .unwrap();
        let policies = crate::policy::load_dir(dir.path()).unwrap();
        let results = run_dir(dir.path(), &policies);
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].failure, None);
        assert_eq!(results[1].failure.as_deref(), Some("effect allow (expected deny)"));
        let xml = junit(&results);
        assert!(xml.contains("tests=\"2\" failures=\"1\"") && xml.contains("<failure message=\"effect allow"), "{xml}");
    }

    #[test]
    fn cases_see_the_agent_registry_as_the_engine_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("agents.yaml"),
            "agents:\n  - id: support-bot\n    roles: [support]\n    labels: { team: support }\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("p.yaml"),
            "rules:\n  - name: finance-refunds\n    actions: [issue_refund]\n    agents: [\"role:finance\"]\n    effect: allow\n  - name: support-email\n    actions: [send_email]\n    when: \"agent.labels.team == 'support' && 'support' in agent.roles\"\n    effect: allow\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("p_test.yaml"),
            r#"
tests:
  - name: registered attributes apply though none are sent
    request: { agent: { id: support-bot }, action: { type: send_email } }
    expect: { effect: allow, rules: [support-email] }
  - name: a claimed role is refused
    request: { agent: { id: support-bot, roles: [finance] }, action: { type: issue_refund } }
    expect: { effect: refused, reasons_contain: ["agent support-bot does not hold role finance"] }
  - name: an orchestrator may assert it
    request: { agent: { id: support-bot, roles: [finance] }, asserted: true, action: { type: issue_refund } }
    expect: { effect: allow }
  - name: this one fails, the claim being refused
    request: { agent: { id: support-bot, labels: { team: finance } }, action: { type: send_email } }
    expect: { effect: allow }
"#,
        )
        .unwrap();
        let policies = crate::policy::load_dir(dir.path()).unwrap();
        let results = run_dir(dir.path(), &policies);
        let failures: Vec<_> = results.iter().map(|r| r.failure.as_deref()).collect();
        assert_eq!(failures[..3], [None, None, None], "{results:?}");
        assert!(failures[3].unwrap().contains("does not hold label team=finance"), "{results:?}");
    }
}
