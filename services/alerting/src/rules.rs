//! Rule files in Prometheus' shape (`groups: [{name, interval, rules:
//! [{alert|record, expr, for, keep_firing_for, labels, annotations}]}]`).
//!
//! Loading checks everything a rule will need at run time (the PromQL,
//! the templates, the durations) and names the file, line, group and rule
//! of the first problem; the caller keeps the last good set when a reload
//! fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::parser::Expr;
use serde::Deserialize;

use crate::template::Template;

/// The example rules (the seeds' eight, `AgentRefused`, `DeadLetters`), over
/// the derived series (see `docs/src/alerting.md`).
pub const DEFAULT_RULES: &str = include_str!("../../../examples/alerting/rules.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileYaml {
    groups: Vec<GroupYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupYaml {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    rules: Vec<RuleYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleYaml {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    expr: serde_yaml::Value,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Alert {
        for_: Duration,
        keep_firing_for: Duration,
        annotations: Vec<(String, Template)>,
        raw_annotations: BTreeMap<String, String>,
    },
    Record,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub expr_text: String,
    pub expr: Expr,
    /// Label values may be templates, as in Prometheus.
    pub labels: Vec<(String, Template)>,
    pub raw_labels: BTreeMap<String, String>,
    pub kind: Kind,
    pub line: usize,
}

impl Rule {
    /// `group/name`: the key of the rule's state.
    pub fn key(&self, group: &str) -> String {
        format!("{group}/{}", self.name)
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub file: String,
    pub interval: Duration,
    /// At most this many alerts (0: no limit); more is a rule error.
    pub limit: usize,
    pub rules: Vec<Rule>,
}

/// Every loaded group.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub groups: Vec<Group>,
}

impl RuleSet {
    /// The longest history any rule reads, in ms.
    pub fn lookback_ms(&self) -> i64 {
        self.groups.iter().flat_map(|g| g.rules.iter()).map(|r| crate::promql::lookback_ms(&r.expr)).max().unwrap_or(0)
    }

    pub fn rule_count(&self) -> usize {
        self.groups.iter().map(|g| g.rules.len()).sum()
    }

    /// Loads rule files; an empty list loads the built-in default rules.
    pub fn load(paths: &[PathBuf], default_interval: Duration) -> Result<RuleSet, String> {
        if paths.is_empty() {
            return parse(DEFAULT_RULES, "<default rules>", default_interval);
        }
        let mut set = RuleSet::default();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            set.groups.extend(parse(&text, &path.display().to_string(), default_interval)?.groups);
        }
        let mut names = std::collections::HashSet::new();
        for group in &set.groups {
            if !names.insert(group.name.clone()) {
                return Err(format!("{}: group {:?} is defined twice", group.file, group.name));
            }
        }
        Ok(set)
    }
}

/// Prometheus durations: `1h30m`, `5m`, `30s`, `100ms`, `1d`, `1w`, `1y`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("bad duration {text:?}: expected e.g. 30s, 5m, 1h30m"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("bad duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            "w" => Duration::from_secs(7 * 86400),
            "y" => Duration::from_secs(365 * 86400),
            other => return Err(format!("bad duration {text:?}: unknown unit {other:?}")),
        };
        total += unit * n as u32;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// The line (1-based) of a rule's `alert:`/`record:` key, searching from
/// its group's `name:` line.
fn line_of(text: &str, group: &str, key: &str, name: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let bare = |line: &str, field: &str, value: &str| {
        let line = line.trim().trim_start_matches('-').trim();
        line.strip_prefix(field)
            .and_then(|r| r.trim_start().strip_prefix(':'))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == value)
            .unwrap_or(false)
    };
    let start = lines.iter().position(|l| bare(l, "name", group)).unwrap_or(0);
    lines.iter().skip(start).position(|l| bare(l, key, name)).map_or(start + 1, |i| start + i + 1)
}

/// Parses one rule file's text.
pub fn parse(text: &str, file: &str, default_interval: Duration) -> Result<RuleSet, String> {
    let parsed: FileYaml = serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(at) => format!("{file}:{}: {e}", at.line()),
        None => format!("{file}: {e}"),
    })?;
    let mut set = RuleSet::default();
    for group in parsed.groups {
        if group.name.is_empty() {
            return Err(format!("{file}: a group has no name"));
        }
        let interval = match &group.interval {
            Some(text) => parse_duration(text).map_err(|e| format!("{file}: group {}: interval: {e}", group.name))?,
            None => default_interval,
        };
        if interval.is_zero() {
            return Err(format!("{file}: group {}: interval must be positive", group.name));
        }
        let mut rules = Vec::new();
        for raw in group.rules {
            let (key, name) = match (&raw.alert, &raw.record) {
                (Some(alert), None) => ("alert", alert.clone()),
                (None, Some(record)) => ("record", record.clone()),
                _ => {
                    return Err(format!(
                        "{file}: group {}: each rule needs exactly one of `alert` and `record`",
                        group.name
                    ));
                }
            };
            let line = line_of(text, &group.name, key, &name);
            let at = |what: String| format!("{file}:{line}: group {}, rule {name}: {what}", group.name);
            if name.is_empty() {
                return Err(at("the name is empty".into()));
            }
            let expr_text = match &raw.expr {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                _ => return Err(at("expr must be a string".into())),
            };
            let expr = crate::promql::parse(&expr_text).map_err(|e| at(format!("expr: {e}")))?;
            let mut raw_labels = group.labels.clone();
            raw_labels.extend(raw.labels);
            for label in raw_labels.keys() {
                if !valid_label_name(label) {
                    return Err(at(format!("invalid label name {label:?}")));
                }
            }
            let labels = raw_labels
                .iter()
                .map(|(k, v)| Template::compile(v).map(|t| (k.clone(), t)).map_err(|e| at(format!("label {k}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let kind = if key == "alert" {
                let duration = |field: &str, value: &Option<String>| -> Result<Duration, String> {
                    value
                        .as_deref()
                        .map_or(Ok(Duration::ZERO), |v| parse_duration(v).map_err(|e| at(format!("{field}: {e}"))))
                };
                let annotations = raw
                    .annotations
                    .iter()
                    .map(|(k, v)| {
                        Template::compile(v).map(|t| (k.clone(), t)).map_err(|e| at(format!("annotation {k}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Kind::Alert {
                    for_: duration("for", &raw.for_)?,
                    keep_firing_for: duration("keep_firing_for", &raw.keep_firing_for)?,
                    annotations,
                    raw_annotations: raw.annotations,
                }
            } else {
                if !valid_metric_name(&name) {
                    return Err(at("invalid metric name".into()));
                }
                if raw.for_.is_some() || !raw.annotations.is_empty() {
                    return Err(at("recording rules take no `for` or annotations".into()));
                }
                Kind::Record
            };
            rules.push(Rule { name, expr_text, expr, labels, raw_labels, kind, line });
        }
        set.groups.push(Group {
            name: group.name,
            file: file.to_owned(),
            interval,
            limit: group.limit.unwrap_or(0),
            rules,
        });
    }
    Ok(set)
}

pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Reads the rule files named on the command line or in the config
/// (a directory means its `*.yaml` and `*.yml` files).
pub fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(path.clone());
        }
    }
    out
}

/// Whether a path is one of the rule files (for hot reload).
pub fn watches(paths: &[PathBuf], changed: &Path) -> bool {
    paths.iter().any(|p| changed.starts_with(p) || p == changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_rules_load() {
        let set = RuleSet::load(&[], Duration::from_secs(30)).unwrap();
        assert_eq!(set.rule_count(), 10);
        assert!(set.lookback_ms() >= 3_600_000);
    }

    #[test]
    fn errors_name_file_line_group_and_rule() {
        let text = "groups:\n  - name: g\n    rules:\n      - alert: Good\n        expr: up == 0\n      - alert: Bad\n        expr: rate(x[5m]\n";
        let error = parse(text, "r.yaml", Duration::from_secs(30)).unwrap_err();
        assert!(error.starts_with("r.yaml:6: group g, rule Bad: expr:"), "{error}");
        let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        for: 5 minutes\n";
        assert!(parse(text, "r.yaml", Duration::from_secs(30)).unwrap_err().contains("for: bad duration"));
        let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        annotations:\n          d: '{{ $value'\n";
        assert!(parse(text, "r.yaml", Duration::from_secs(30)).unwrap_err().contains("annotation d: unclosed"));
        let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        exp: up\n";
        assert!(parse(text, "r.yaml", Duration::from_secs(30)).unwrap_err().starts_with("r.yaml:5:"));
    }

    #[test]
    fn durations_parse_as_prometheus_writes_them() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
    }
}
