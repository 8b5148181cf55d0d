//! Policy sets: the YAML format, loading with full validation, and rule
//! evaluation.
//!
//! A [`PolicySet`] is immutable once built; the engine swaps whole sets
//! atomically on reload. Rules are indexed by exact action type at load time
//! so a decision only looks at the rules that can apply to its action.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use warden_proto::policy::v1 as pb;

use crate::cel::{Input, NumberProgram, Program};
use crate::registry::{AgentRegistry, AgentSpec};
use warden_glob::Glob;

/// Bounds on what a policy set may cost to load and evaluate.
pub mod bounds {
    /// Largest policy file, in bytes.
    pub const MAX_FILE_BYTES: usize = 1024 * 1024;
    /// Most policy files in a directory.
    pub const MAX_FILES: usize = 1000;
    /// Most rules in a whole set.
    pub const MAX_RULES: usize = 10_000;
    /// Most limits in a whole set.
    pub const MAX_LIMITS: usize = 1_000;
    /// Longest condition, in bytes.
    pub const MAX_CONDITION_BYTES: usize = 4096;
    /// Most patterns in one `actions` or `agents` list.
    pub const MAX_PATTERNS: usize = 256;
    /// Longest name, reason or pattern.
    pub const MAX_TEXT_BYTES: usize = 1024;
    /// Longest limit window.
    pub const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(31 * 24 * 3600);
}

/// What a rule or limit decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
    RequireApproval,
}

impl Effect {
    pub fn to_proto(self) -> pb::Effect {
        match self {
            Effect::Allow => pb::Effect::Allow,
            Effect::Deny => pb::Effect::Deny,
            Effect::RequireApproval => pb::Effect::RequireApproval,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::RequireApproval => "require_approval",
        }
    }
}

/// One problem in the policy sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    /// 1-based; 0 when unknown.
    pub line: u32,
    /// The rule or limit at fault; empty for file-level problems.
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)?;
        if !self.rule.is_empty() {
            write!(f, ": rule '{}'", self.rule)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl PolicyError {
    pub fn to_proto(&self) -> pb::PolicyError {
        pb::PolicyError {
            file: self.file.clone(),
            line: self.line,
            rule: self.rule.clone(),
            message: self.message.clone(),
        }
    }
}

// === The file format ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rules: Vec<RuleSpec>,
    #[serde(default)]
    limits: Vec<LimitSpec>,
    /// Action params that are personal data: the decision log keeps them
    /// encrypted (the audit log's `sensitive`, forgettable per subject).
    #[serde(default)]
    personal_params: Vec<String>,
    /// The agent registry (see [`crate::registry`]).
    #[serde(default)]
    agents: Vec<AgentSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    actions: Option<Vec<String>>,
    #[serde(default)]
    agents: Option<Vec<String>>,
    #[serde(default)]
    when: Option<String>,
    effect: Effect,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    mode: Mode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    name: String,
    #[serde(default)]
    actions: Option<Vec<String>>,
    #[serde(default)]
    agents: Option<Vec<String>>,
    per: Per,
    #[serde(default)]
    max_requests: Option<u64>,
    #[serde(default)]
    max_cost: Option<f64>,
    /// What a request costs, as CEL over the request (`action.params.amount`);
    /// without it, the agent's own `estimated_cost`.
    #[serde(default)]
    cost: Option<String>,
    window: String,
    #[serde(default)]
    effect: Option<Effect>,
    #[serde(default)]
    reason: Option<String>,
}

/// How a limit's count is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    Agent,
    AgentAction,
    Global,
}

impl Per {
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Agent => "agent",
            Per::AgentAction => "agent_action",
            Per::Global => "global",
        }
    }
}

// === The compiled form ===

/// Who a rule applies to.
#[derive(Debug, Clone)]
pub enum AgentPattern {
    Id(Glob),
    Role(Glob),
}

impl AgentPattern {
    fn parse(pattern: &str) -> Result<AgentPattern, String> {
        match pattern.strip_prefix("role:") {
            Some("") => Err("'role:' needs a role name, e.g. role:admin".into()),
            Some(role) => Ok(AgentPattern::Role(Glob::new(role))),
            None if pattern.is_empty() => Err("empty agent pattern".into()),
            None => Ok(AgentPattern::Id(Glob::new(pattern))),
        }
    }

    fn matches(&self, agent: &pb::Agent) -> bool {
        match self {
            AgentPattern::Id(glob) => glob.matches(&agent.id),
            AgentPattern::Role(glob) => agent.roles.iter().any(|role| glob.matches(role)),
        }
    }
}

/// What a rule or limit applies to: action globs and agent patterns.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Empty = every action.
    pub actions: Vec<Glob>,
    /// Empty = every agent.
    pub agents: Vec<AgentPattern>,
    pub action_source: Vec<String>,
    pub agent_source: Vec<String>,
}

impl Scope {
    fn matches_action(&self, action_type: &str) -> bool {
        self.actions.is_empty() || self.actions.iter().any(|glob| glob.matches(action_type))
    }

    #[inline]
    fn matches_agent(&self, agent: &pb::Agent) -> bool {
        self.agents.is_empty() || self.agents.iter().any(|pattern| pattern.matches(agent))
    }

    pub fn matches(&self, agent: &pb::Agent, action_type: &str) -> bool {
        self.matches_action(action_type) && self.matches_agent(agent)
    }

    /// The exact action types this scope lists, when it lists only exact ones.
    fn exact_actions(&self) -> Option<Vec<&str>> {
        if self.actions.is_empty() {
            return None;
        }
        self.actions.iter().map(Glob::is_exact).collect()
    }
}

#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    pub file: String,
    pub line: u32,
    pub scope: Scope,
    pub condition: Option<Program>,
    pub effect: Effect,
    pub reason: Arc<str>,
    pub shadow: bool,
    pub description: Option<String>,
}

#[derive(Debug)]
pub struct Limit {
    pub name: Arc<str>,
    pub file: String,
    pub line: u32,
    pub scope: Scope,
    pub per: Per,
    pub max_requests: Option<u64>,
    pub max_cost: Option<f64>,
    /// How a request's cost is computed from the action; `None`: the
    /// agent's `estimated_cost`.
    pub cost: Option<NumberProgram>,
    pub window: Duration,
    pub effect: Effect,
    pub reason: Arc<str>,
}

impl Limit {
    /// What `input` costs against this limit: the limit's `cost`
    /// expression, else the agent's own estimate. An error (a param
    /// missing, not a number, negative) makes the limit deny.
    pub fn cost_of(&self, input: &Input<'_>) -> Result<f64, String> {
        match &self.cost {
            None => Ok(input.action.estimated_cost),
            Some(program) => program.evaluate(input).map_err(|error| {
                format!("limit '{}' cannot compute the cost ({}): {error}", self.name, program.source())
            }),
        }
    }
}

/// Candidate rules for one action type, in file order.
///
/// Each candidate says whether its action patterns still need checking:
/// rules found through their exact action name already match it.
#[derive(Debug, Default)]
struct Index {
    /// Fx hashing: keys are policy-defined action names, and the lookup is
    /// on every decision's path.
    by_action: rustc_hash::FxHashMap<String, Arc<[Candidate]>>,
    /// Rules with globs or no action list: candidates for every action.
    other: Arc<[Candidate]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    index: u32,
    check_action: bool,
}

impl Index {
    fn build(scopes: &[&Scope]) -> Index {
        let mut other = Vec::new();
        let mut exact: HashMap<String, Vec<Candidate>> = HashMap::new();
        for (i, scope) in scopes.iter().enumerate() {
            let index = i as u32;
            match scope.exact_actions() {
                Some(actions) => {
                    for action in actions {
                        let list = exact.entry(action.to_owned()).or_default();
                        if list.last().map(|c| c.index) != Some(index) {
                            list.push(Candidate { index, check_action: false });
                        }
                    }
                }
                None => other.push(Candidate { index, check_action: !scope.actions.is_empty() }),
            }
        }
        // Each action's list holds its exact rules merged with the others,
        // in file order, so evaluation order never depends on the index.
        let by_action = exact
            .into_iter()
            .map(|(action, mut list)| {
                list.extend(other.iter().copied());
                list.sort_unstable();
                (action, Arc::from(list))
            })
            .collect();
        Index { by_action, other: Arc::from(other) }
    }

    fn candidates(&self, action_type: &str) -> &[Candidate] {
        self.by_action.get(action_type).unwrap_or(&self.other)
    }
}

/// A loaded, validated, immutable policy set.
#[derive(Debug)]
pub struct PolicySet {
    pub version: Arc<str>,
    pub rules: Vec<Rule>,
    pub limits: Vec<Limit>,
    /// Param names any file marks as personal data (`personal_params`).
    pub personal_params: std::collections::BTreeSet<String>,
    /// What each agent is: roles, labels, name and owner.
    pub agents: AgentRegistry,
    rule_index: Index,
    limit_index: Index,
    pub loaded_at: SystemTime,
}

/// A rule or limit that decided a request, with the reason it gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Deciding {
    /// The rule or limit; `None` for the default deny.
    pub name: Option<Arc<str>>,
    pub reason: Arc<str>,
}

/// What the rules (before limits) decided for one request.
#[derive(Debug, Default)]
pub struct RuleOutcome {
    /// The strongest effect any enforced rule gave; `None` when no rule matched.
    pub effect: Option<Effect>,
    /// The rules that gave that effect, in file order.
    pub deciding: Vec<Deciding>,
    pub shadow: Vec<Arc<str>>,
}

/// Deny beats require_approval beats allow.
fn precedence(effect: Effect) -> u8 {
    match effect {
        Effect::Allow => 0,
        Effect::RequireApproval => 1,
        Effect::Deny => 2,
    }
}

impl PolicySet {
    /// An empty set: every request is denied by default.
    pub fn empty() -> PolicySet {
        PolicySet::build(Vec::new(), Vec::new(), version_of(&[]))
    }

    fn build(rules: Vec<Rule>, limits: Vec<Limit>, version: String) -> PolicySet {
        let rule_index = Index::build(&rules.iter().map(|r| &r.scope).collect::<Vec<_>>());
        let limit_index = Index::build(&limits.iter().map(|l| &l.scope).collect::<Vec<_>>());
        PolicySet {
            version: version.into(),
            rules,
            limits,
            personal_params: Default::default(),
            agents: AgentRegistry::default(),
            rule_index,
            limit_index,
            loaded_at: SystemTime::now(),
        }
    }

    /// Evaluates every rule that applies to the request and keeps the rules
    /// of the strongest effect.
    pub fn evaluate_rules(&self, input: &Input<'_>) -> RuleOutcome {
        let mut outcome = RuleOutcome::default();
        let action_type = input.action.r#type.as_str();
        for candidate in self.rule_index.candidates(action_type) {
            let rule = &self.rules[candidate.index as usize];
            if (candidate.check_action && !rule.scope.matches_action(action_type))
                || !rule.scope.matches_agent(input.agent)
            {
                continue;
            }
            let (effect, reason) = match &rule.condition {
                None => (rule.effect, None),
                Some(program) => match program.evaluate(input) {
                    Ok(true) => (rule.effect, None),
                    Ok(false) => continue,
                    // Never fail open: an error makes the rule deny.
                    Err(error) => (
                        Effect::Deny,
                        Some(Arc::from(format!("rule '{}' failed to evaluate (treated as deny): {error}", rule.name))),
                    ),
                },
            };
            if rule.shadow {
                outcome.shadow.push(rule.name.clone());
                continue;
            }
            match outcome.effect.map(precedence) {
                Some(current) if current > precedence(effect) => continue,
                Some(current) if current == precedence(effect) => {}
                _ => {
                    outcome.effect = Some(effect);
                    outcome.deciding.clear();
                }
            }
            outcome.deciding.push(Deciding {
                name: Some(rule.name.clone()),
                reason: reason.unwrap_or_else(|| rule.reason.clone()),
            });
        }
        outcome
    }

    /// The limits that apply to a request.
    pub fn applicable_limits<'a>(
        &'a self,
        agent: &'a pb::Agent,
        action_type: &'a str,
    ) -> impl Iterator<Item = &'a Limit> + 'a {
        self.limit_index
            .candidates(action_type)
            .iter()
            .filter(move |c| !c.check_action || self.limits[c.index as usize].scope.matches_action(action_type))
            .map(move |c| &self.limits[c.index as usize])
            .filter(move |limit| limit.scope.matches_agent(agent))
    }

    pub fn has_limits(&self) -> bool {
        !self.limits.is_empty()
    }
}

// === Loading ===

/// Policy source text with the name errors refer to.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: String,
    pub content: String,
}

/// Reads every `*.yaml` / `*.yml` file in `dir` (not recursive), sorted by name.
/// Whether a file in a policy directory holds policy tests, not policies.
pub fn is_test_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_test.yaml") || n.ends_with("_test.yml"))
}

pub fn read_dir(dir: &Path) -> Result<Vec<Source>, Vec<PolicyError>> {
    let file_error = |file: &Path, message: String| PolicyError {
        file: file.display().to_string(),
        line: 0,
        rule: String::new(),
        message,
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| vec![file_error(dir, format!("cannot read policies directory: {e}"))])?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file() && matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        // Policy tests live next to the policies (`*_test.yaml`).
        .filter(|path| !is_test_file(path))
        .collect();
    paths.sort();
    if paths.len() > bounds::MAX_FILES {
        return Err(vec![file_error(dir, format!("{} policy files; the limit is {}", paths.len(), bounds::MAX_FILES))]);
    }
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.len() as usize > bounds::MAX_FILE_BYTES => {
                errors.push(file_error(
                    Path::new(&name),
                    format!("file is {} bytes; the limit is {}", meta.len(), bounds::MAX_FILE_BYTES),
                ));
                continue;
            }
            Err(e) => {
                errors.push(file_error(Path::new(&name), e.to_string()));
                continue;
            }
            Ok(_) => {}
        }
        match std::fs::read_to_string(&path) {
            Ok(content) => sources.push(Source { file: name, content }),
            Err(e) => errors.push(file_error(Path::new(&name), format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() { Ok(sources) } else { Err(errors) }
}

/// What loading accepts beyond the fixed [`bounds`]: settable by whoever
/// deploys the policy engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The most a condition's evaluation may cost, estimated at load (a
    /// condition over it is refused) and enforced as its run-time budget.
    /// See `cel::cost`.
    pub max_condition_cost: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { max_condition_cost: crate::cel::cost::MAX_COST }
    }
}

/// Loads a policy directory.
pub fn load_dir(dir: &Path) -> Result<PolicySet, Vec<PolicyError>> {
    load_dir_with(dir, &LoadOptions::default())
}

/// Loads a policy directory with `options`.
pub fn load_dir_with(dir: &Path, options: &LoadOptions) -> Result<PolicySet, Vec<PolicyError>> {
    compile_sources_with(&read_dir(dir)?, options)
}

/// The content hash naming a set of sources.
pub fn version_of(sources: &[Source]) -> String {
    let mut sorted: Vec<&Source> = sources.iter().collect();
    sorted.sort_by(|a, b| a.file.cmp(&b.file));
    let mut hasher = Sha256::new();
    for source in sorted {
        hasher.update((source.file.len() as u64).to_be_bytes());
        hasher.update(source.file.as_bytes());
        hasher.update((source.content.len() as u64).to_be_bytes());
        hasher.update(source.content.as_bytes());
    }
    format!("sha256:{}", &hex::encode(hasher.finalize())[..16])
}

/// Validates and compiles sources into a set, reporting every error found.
pub fn compile_sources(sources: &[Source]) -> Result<PolicySet, Vec<PolicyError>> {
    compile_sources_with(sources, &LoadOptions::default())
}

/// [`compile_sources`] with `options`.
pub fn compile_sources_with(sources: &[Source], options: &LoadOptions) -> Result<PolicySet, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let mut limits = Vec::new();
    let mut rule_names: BTreeMap<String, String> = BTreeMap::new();
    let mut limit_names: HashSet<String> = HashSet::new();
    let mut personal: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut agents = Vec::new();
    for source in sources {
        let file = &source.file;
        if source.content.len() > bounds::MAX_FILE_BYTES {
            errors.push(PolicyError {
                file: file.clone(),
                line: 0,
                rule: String::new(),
                message: format!("file is {} bytes; the limit is {}", source.content.len(), bounds::MAX_FILE_BYTES),
            });
            continue;
        }
        let parsed: PolicyFile = if source.content.trim().is_empty() {
            PolicyFile { rules: Vec::new(), limits: Vec::new(), personal_params: Vec::new(), agents: Vec::new() }
        } else {
            match serde_yaml::from_str(&source.content) {
                Ok(parsed) => parsed,
                Err(error) => {
                    let line = error.location().map(|l| l.line() as u32).unwrap_or(0);
                    let message = error.to_string();
                    let rule = rule_named_in(&source.content, &message).unwrap_or_default();
                    errors.push(PolicyError { file: file.clone(), line, rule, message });
                    continue;
                }
            }
        };
        let lines = NameLines::new(&source.content);
        personal.extend(parsed.personal_params.iter().cloned());
        for spec in parsed.agents {
            agents.push((file.clone(), lines.find_key("id", &spec.id), spec));
        }
        for spec in parsed.rules {
            let line = lines.find(&spec.name);
            let mut fail = |message: String| {
                errors.push(PolicyError { file: file.clone(), line, rule: spec.name.clone(), message });
            };
            if let Err(message) = check_name(&spec.name) {
                fail(message);
                continue;
            }
            if let Some(previous) = rule_names.insert(spec.name.clone(), file.clone()) {
                fail(format!("duplicate rule name (also defined in {previous})"));
                continue;
            }
            let scope = match build_scope(spec.actions.as_deref(), spec.agents.as_deref()) {
                Ok(scope) => scope,
                Err(message) => {
                    fail(message);
                    continue;
                }
            };
            let condition = match spec.when.as_deref().map(str::trim) {
                None => None,
                Some("") => {
                    fail("'when' is empty; remove it or write a condition".into());
                    continue;
                }
                Some(when) if when.len() > bounds::MAX_CONDITION_BYTES => {
                    fail(format!("condition is {} bytes; the limit is {}", when.len(), bounds::MAX_CONDITION_BYTES));
                    continue;
                }
                Some(when) => match Program::compile_with_max_cost(when, options.max_condition_cost) {
                    Ok(program) => Some(program),
                    Err(error) => {
                        fail(format!("invalid condition: {error}"));
                        continue;
                    }
                },
            };
            if let Some(reason) = &spec.reason
                && reason.len() > bounds::MAX_TEXT_BYTES
            {
                fail(format!("reason is longer than {} bytes", bounds::MAX_TEXT_BYTES));
                continue;
            }
            let reason = spec.reason.clone().unwrap_or_else(|| match spec.effect {
                Effect::Allow => format!("allowed by rule '{}'", spec.name),
                Effect::Deny => format!("denied by rule '{}'", spec.name),
                Effect::RequireApproval => format!("approval required by rule '{}'", spec.name),
            });
            rules.push(Rule {
                name: spec.name.as_str().into(),
                file: file.clone(),
                line,
                scope,
                condition,
                effect: spec.effect,
                reason: reason.into(),
                shadow: spec.mode == Mode::Shadow,
                description: spec.description,
            });
        }
        for spec in parsed.limits {
            let line = lines.find(&spec.name);
            let mut fail = |message: String| {
                errors.push(PolicyError { file: file.clone(), line, rule: spec.name.clone(), message });
            };
            if let Err(message) = check_name(&spec.name) {
                fail(message);
                continue;
            }
            if !limit_names.insert(spec.name.clone()) {
                fail("duplicate limit name".into());
                continue;
            }
            let scope = match build_scope(spec.actions.as_deref(), spec.agents.as_deref()) {
                Ok(scope) => scope,
                Err(message) => {
                    fail(message);
                    continue;
                }
            };
            let window = match humantime::parse_duration(&spec.window) {
                Ok(window) if window.is_zero() => {
                    fail("window must be longer than zero".into());
                    continue;
                }
                Ok(window) if window > bounds::MAX_WINDOW => {
                    fail(format!("window {} is longer than the limit of 31 days", spec.window));
                    continue;
                }
                Ok(window) if window < Duration::from_millis(100) => {
                    fail("window must be at least 100ms".into());
                    continue;
                }
                Ok(window) => window,
                Err(error) => {
                    fail(format!("invalid window {:?}: {error} (write e.g. 1m, 24h)", spec.window));
                    continue;
                }
            };
            match (spec.max_requests, spec.max_cost) {
                (None, None) => {
                    fail("a limit needs max_requests, max_cost or both".into());
                    continue;
                }
                (_, Some(cost)) if !cost.is_finite() || cost < 0.0 => {
                    fail(format!("max_cost must be a finite number >= 0, got {cost}"));
                    continue;
                }
                _ => {}
            }
            let cost = match spec.cost.as_deref().map(str::trim) {
                None => None,
                Some(_) if spec.max_cost.is_none() => {
                    fail("'cost' says what max_cost counts; add max_cost".into());
                    continue;
                }
                Some("") => {
                    fail("'cost' is empty; remove it or write an expression".into());
                    continue;
                }
                Some(cost) if cost.len() > bounds::MAX_CONDITION_BYTES => {
                    fail(format!("cost is {} bytes; the limit is {}", cost.len(), bounds::MAX_CONDITION_BYTES));
                    continue;
                }
                Some(cost) => match NumberProgram::compile_with_max_cost(cost, options.max_condition_cost) {
                    Ok(program) => Some(program),
                    Err(error) => {
                        fail(format!("invalid cost: {error}"));
                        continue;
                    }
                },
            };
            let effect = spec.effect.unwrap_or(Effect::Deny);
            if effect == Effect::Allow {
                fail("a limit's effect must be deny or require_approval".into());
                continue;
            }
            let reason = spec.reason.clone().unwrap_or_else(|| {
                let mut parts = Vec::new();
                if let Some(n) = spec.max_requests {
                    parts.push(format!("{n} requests"));
                }
                if let Some(c) = spec.max_cost {
                    parts.push(format!("cost {c}"));
                }
                format!(
                    "limit '{}' exceeded: at most {} per {} {}",
                    spec.name,
                    parts.join(" and "),
                    spec.window,
                    spec.per.as_str()
                )
            });
            limits.push(Limit {
                name: spec.name.as_str().into(),
                file: file.clone(),
                line,
                scope,
                per: spec.per,
                max_requests: spec.max_requests,
                max_cost: spec.max_cost,
                cost,
                window,
                effect,
                reason: reason.into(),
            });
        }
    }
    if rules.len() > bounds::MAX_RULES {
        errors.push(PolicyError {
            file: String::new(),
            line: 0,
            rule: String::new(),
            message: format!("{} rules; the limit is {}", rules.len(), bounds::MAX_RULES),
        });
    }
    if limits.len() > bounds::MAX_LIMITS {
        errors.push(PolicyError {
            file: String::new(),
            line: 0,
            rule: String::new(),
            message: format!("{} limits; the limit is {}", limits.len(), bounds::MAX_LIMITS),
        });
    }
    let registry = match AgentRegistry::build(agents) {
        Ok(registry) => registry,
        Err(problems) => {
            errors.extend(problems.into_iter().map(|(file, line, message)| PolicyError {
                file,
                line,
                rule: String::new(),
                message,
            }));
            AgentRegistry::default()
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut set = PolicySet::build(rules, limits, version_of(sources));
    set.personal_params = personal;
    set.agents = registry;
    Ok(set)
}

/// The name of the rule or limit a deserialisation error points at
/// (`rules[2].effect: ...`), read from the loosely parsed document.
fn rule_named_in(content: &str, message: &str) -> Option<String> {
    let (list, rest) = if let Some(rest) = message.strip_prefix("rules[") {
        ("rules", rest)
    } else {
        ("limits", message.strip_prefix("limits[")?)
    };
    let index: usize = rest.split(']').next()?.parse().ok()?;
    let document: serde_yaml::Value = serde_yaml::from_str(content).ok()?;
    document.get(list)?.get(index)?.get("name")?.as_str().map(str::to_owned)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("name must not be empty".into());
    }
    if name.len() > 128 {
        return Err("name must be at most 128 bytes".into());
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')) {
        return Err("name may use letters, digits and - _ . : / only".into());
    }
    Ok(())
}

fn build_scope(actions: Option<&[String]>, agents: Option<&[String]>) -> Result<Scope, String> {
    let actions = actions.unwrap_or_default();
    let agents = agents.unwrap_or_default();
    if actions.len() > bounds::MAX_PATTERNS || agents.len() > bounds::MAX_PATTERNS {
        return Err(format!("at most {} patterns per list", bounds::MAX_PATTERNS));
    }
    for pattern in actions.iter().chain(agents) {
        if pattern.is_empty() {
            return Err("empty pattern in actions or agents".into());
        }
        if pattern.len() > bounds::MAX_TEXT_BYTES {
            return Err(format!("pattern longer than {} bytes", bounds::MAX_TEXT_BYTES));
        }
    }
    // A lone "*" is the same as no list: keep it out of the glob path.
    let action_globs: Vec<Glob> =
        if actions.iter().any(|a| a == "*") { Vec::new() } else { actions.iter().map(|a| Glob::new(a)).collect() };
    let agent_patterns: Vec<AgentPattern> = if agents.iter().any(|a| a == "*") {
        Vec::new()
    } else {
        agents.iter().map(|a| AgentPattern::parse(a)).collect::<Result<_, _>>()?
    };
    Ok(Scope {
        actions: action_globs,
        agents: agent_patterns,
        action_source: actions.to_vec(),
        agent_source: agents.to_vec(),
    })
}

/// Finds the line of `name: X` for a rule or limit (or `id: X` for an
/// agent), to point errors at it.
struct NameLines<'s> {
    lines: Vec<(u32, &'s str, &'s str)>,
}

impl<'s> NameLines<'s> {
    fn new(content: &'s str) -> Self {
        let lines = content
            .lines()
            .enumerate()
            .filter_map(|(i, line)| {
                let trimmed = line.trim_start().trim_start_matches("- ").trim_start();
                let (key, value) = trimmed.split_once(':')?;
                let value = value.trim();
                let value = value.split(" #").next().unwrap_or(value).trim();
                let value = value.trim_matches(|c| c == '"' || c == '\'');
                Some((i as u32 + 1, key.trim(), value))
            })
            .collect();
        NameLines { lines }
    }

    fn find(&self, name: &str) -> u32 {
        self.find_key("name", name)
    }

    fn find_key(&self, key: &str, value: &str) -> u32 {
        self.lines.iter().find(|(_, k, v)| *k == key && *v == value).map(|(line, ..)| *line).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
