//! Warden's alert rules against Prometheus' own: the engine evaluates a
//! rule file over a set of series, minute by minute, and the alerts it
//! fires at each minute (labels and rendered annotations) are written as
//! the expectations of a `promtool test rules` file over the same series.
//! `promtool` (Debian's `prometheus` package) then evaluates the same
//! rules and must agree at every minute: `for`, `keep_firing_for`, gaps
//! and staleness, PromQL, and the templates' formatting of `$value`,
//! `humanize`, `humanize1024`, `humanizePercentage`, `humanizeDuration`
//! and `printf`, and a recording rule an alert reads in the same group.
//!
//! Debian's `promtool` is Prometheus 2.42, whose range windows include
//! their start (3.x: they do not): the rules' ranges are not a multiple of
//! the series' interval, so both hold the same samples. `$value` is
//! printed whole only where it is exact: two evaluators may differ in
//! the last bit of a computed rate.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::{Clock, Engine, Loaded};
use crate::routing;
use crate::rules;
use crate::series::{Derived, Labels, STALE_BITS, labels};
use crate::store::{AlertState, AlertingStore};

const RULES: &str = r#"groups:
  - name: agents
    interval: 1m
    rules:
      - alert: HighCost
        expr: rate(agent_cost_total_dollars[5m30s]) * 3600 > 100
        for: 3m
        labels:
          severity: critical
          team: '{{ $labels.agent_id }}-ops'
        annotations:
          summary: 'agent {{ $labels.agent_id }} spends ${{ printf "%.2f" $value }}/h'
          human: '{{ $value | humanize }}'
      - alert: ErrorRatio
        expr: sum by (agent_id) (rate(agent_actions_total{status="error"}[5m30s])) / sum by (agent_id) (rate(agent_actions_total[5m30s])) > 0.2
        for: 2m
        keep_firing_for: 3m
        annotations:
          ratio: '{{ $value | humanizePercentage }}'
      - record: agent:errors:rate5m30s
        expr: sum by (agent_id) (rate(agent_actions_total{status="error"}[5m30s]))
        labels:
          source: recorded
      - alert: RecordedErrors
        expr: agent:errors:rate5m30s * 60 > 2
        annotations:
          per_minute: '{{ printf "%.1f" $value }} errors a minute ({{ $labels.source }})'
      - alert: Backlog
        expr: approvals_pending > 3
        annotations:
          description: '{{ $value }} approvals pending for {{ $labels.route }}'
          trimmed: "route:   {{- $labels.route -}}  , value: {{ .Value }}"
          level: '{{ if gt $value 6.0 }}high{{ else if eq $value 5.0 }}five{{ else }}low{{ end }}'
          team: '{{ reReplaceAll "^(ref)unds$" "$1-team" $labels.route }}{{ if match "unds" $labels.route }} (refunds){{ end }}'
          logic: '{{ if and $labels.route $value }}both{{ end }}{{ if or $labels.nothere $labels.route }}-either{{ end }}{{ if not $labels.nothere }}-none{{ end }}'
      - alert: SlowQueue
        expr: queue_wait_seconds > 0.01
        annotations:
          waited: '{{ $value | humanizeDuration }}'
          since: '{{ $value | humanizeTimestamp }}'
      - alert: Tokens
        expr: tokens > 0.001
        annotations:
          decimal: '{{ $value | humanize }}'
          binary: '{{ $value | humanize1024 }}'
          value: '{{ $value }}'
          upper: '{{ $labels.agent_id | toUpper }}'
"#;

/// Minutes evaluated: 0 to `MINUTES`.
const MINUTES: usize = 40;

enum Point {
    Value(f64),
    Missing,
    Stale,
}

/// The input: per series, one point a minute from 0.
fn series() -> Vec<(Labels, Vec<Point>)> {
    use Point::{Missing, Stale, Value};
    let every = |f: &dyn Fn(usize) -> Point| (0..=MINUTES).map(f).collect::<Vec<_>>();
    // Spending: $1/min, then $5/min (300/h) for ten minutes, then flat.
    let mut spent = 0.0;
    let cost = every(&|_| Missing)
        .into_iter()
        .enumerate()
        .map(|(m, _)| {
            spent += match m {
                0 => 0.0,
                1..=10 => 1.0,
                11..=20 => 5.0,
                _ => 0.0,
            };
            Value(spent)
        })
        .collect();
    // Actions: 10 a minute; errors 1 a minute, 5 a minute from 12 to 17.
    let mut errors = 0.0;
    let errors_series = (0..=MINUTES)
        .map(|m| {
            errors += match m {
                0 => 0.0,
                12..=17 => 5.0,
                _ => 1.0,
            };
            Value(errors)
        })
        .collect();
    let successes = every(&|m| Value(9.0 * m as f64));
    // A gauge with a gap (the lookback keeps the last value) and a
    // staleness marker (which ends it at once).
    let pending = every(&|m| match m {
        0..=4 => Value(m as f64),
        5..=8 => Missing,
        9..=14 => Value(7.0),
        15 => Stale,
        16..=24 => Missing,
        _ => Value(2.0 + (m % 4) as f64),
    });
    let waits = [0.25, 45.0, 59.9, 61.5, 3600.0, 3725.0, 86_400.0, 90_061.0, 0.000_5, 1.0];
    let wait = every(&|m| Value(waits[m % waits.len()]));
    let counts = [1_500_000.0, 1234.5678, 0.000_123, 999.95, 1024.0, 1_048_576.0, 12_345_678_901.0, 0.5, 7.0, 1e21];
    let tokens = every(&|m| Value(counts[m % counts.len()]));
    vec![
        (labels("agent_cost_total_dollars", &[("agent_id", "a"), ("cost_type", "api")]), cost),
        (labels("agent_actions_total", &[("agent_id", "a"), ("status", "error")]), errors_series),
        (labels("agent_actions_total", &[("agent_id", "a"), ("status", "success")]), successes),
        (labels("approvals_pending", &[("route", "refunds")]), pending),
        (labels("queue_wait_seconds", &[("agent_id", "b")]), wait),
        (labels("tokens", &[("agent_id", "c")]), tokens),
    ]
}

fn selector(labels: &Labels) -> String {
    let name = labels.get("__name__").cloned().unwrap_or_default();
    let pairs: Vec<String> =
        labels.iter().filter(|(k, _)| k.as_str() != "__name__").map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", pairs.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_fire_and_render_as_promtool_says() {
    let Some(promtool) = warden_store::testing::external_tool("promtool", "apt-get install prometheus") else {
        return;
    };
    // The series go straight into the engine's store of samples; the
    // scrape interval is out of reach, so nothing derived replaces them.
    let mut derived = Derived::new(1 << 50, 1 << 50);
    let input = series();
    for (labels, points) in &input {
        for (m, point) in points.iter().enumerate() {
            let at = m as i64 * 60_000;
            match point {
                Point::Value(v) => derived.tsdb.push(labels, at, *v),
                Point::Stale => derived.tsdb.push(labels, at, f64::from_bits(STALE_BITS)),
                Point::Missing => {}
            }
        }
    }
    let test = warden_store::testing::sqlite().await;
    let loaded = Loaded {
        rules: rules::parse(RULES, "rules.yaml", Duration::from_secs(60)).unwrap(),
        routing: routing::Config::default_config(),
    };
    let clock = Clock::at(0);
    let engine = Engine::new(
        AlertingStore::new(test.database.clone()),
        loaded,
        derived,
        Vec::new(),
        clock.clone(),
        false,
        "".into(),
    );
    let names = ["HighCost", "ErrorRatio", "RecordedErrors", "Backlog", "SlowQueue", "Tokens"];
    let mut expectations = Vec::new();
    let mut fired: BTreeMap<&str, usize> = BTreeMap::new();
    for minute in 0..=MINUTES {
        engine.tick().await.unwrap();
        let state = engine.state.lock().await;
        for name in names {
            let alerts: Vec<serde_json::Value> = state
                .alerts
                .values()
                .filter(|a| a.labels.get("alertname").map(String::as_str) == Some(name))
                .filter(|a| a.state == AlertState::Firing)
                .map(|a| {
                    let mut labels = a.labels.clone();
                    labels.remove("alertname");
                    serde_json::json!({"exp_labels": labels, "exp_annotations": a.annotations})
                })
                .collect();
            *fired.entry(name).or_default() += usize::from(!alerts.is_empty());
            expectations.push(serde_json::json!({
                "eval_time": format!("{minute}m"),
                "alertname": name,
                "exp_alerts": alerts,
            }));
        }
        drop(state);
        clock.advance(Duration::from_secs(60));
    }
    // Every rule fires at some minute and is quiet at another.
    for name in names {
        let n = fired.get(name).copied().unwrap_or(0);
        assert!(n > 0 && n <= MINUTES, "{name} fired at {n} of {} minutes", MINUTES + 1);
    }
    let input_series: Vec<serde_json::Value> = input
        .iter()
        .map(|(labels, points)| {
            let values: Vec<String> = points
                .iter()
                .map(|p| match p {
                    Point::Value(v) => format!("{v:?}"),
                    Point::Missing => "_".into(),
                    Point::Stale => "stale".into(),
                })
                .collect();
            serde_json::json!({"series": selector(labels), "values": values.join(" ")})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    // JSON is YAML.
    let tests = serde_json::json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": expectations}],
    });
    let file = dir.path().join("tests.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&tests).unwrap()).unwrap();
    let output = std::process::Command::new(promtool).args(["test", "rules"]).arg(&file).output().unwrap();
    assert!(
        output.status.success(),
        "promtool disagrees with Warden:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
