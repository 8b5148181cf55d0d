//! Warden's routing against Alertmanager's own: for route trees that use
//! what trips people up (`continue`, nested routes, regex anchoring, a
//! missing label matching `=""`, quoted values with commas, the older
//! `match` / `match_re`), every alert in a grid of label sets must reach
//! the receivers `amtool config routes test` (Debian's
//! `prometheus-alertmanager`) names, in the same order.

use std::collections::BTreeMap;

use warden_alerting::routing::Config;

const RECEIVERS: &[&str] = &["default", "pager", "db", "web", "staging", "agents", "quiet", "other"];

/// Route trees, each under the same receivers.
const TREES: &[&str] = &[
    // `continue`, then a sibling; nested routes under a regex.
    r#"
route:
  receiver: default
  routes:
    - matchers: ['severity="critical"']
      receiver: pager
      continue: true
    - matchers: ['team=~"db|web"']
      receiver: other
      routes:
        - matchers: ['team="db"']
          receiver: db
        - matchers: ['env!="prod"']
          receiver: staging
    - matchers: ['agent_id=~"a-.*"', 'severity!~"info|"']
      receiver: agents
"#,
    // A missing label matches `=""`; `!=""` needs it; regexes are anchored.
    r#"
route:
  receiver: default
  routes:
    - matchers: ['team=""']
      receiver: quiet
      continue: true
    - matchers: ['team!=""', 'team=~"d"']
      receiver: db
    - matchers: ['agent_id=~"[ab]-1"']
      receiver: agents
      continue: true
    - matchers: ['severity=~".*"', 'env="staging"']
      receiver: staging
"#,
    // Several matchers in one string, quoted values with commas and
    // braces, and the older `match` / `match_re`.
    r#"
route:
  receiver: default
  routes:
    - matchers: ['{severity=~"critical|warning", env="prod"}']
      receiver: pager
      routes:
        - match: {team: web}
          receiver: web
          continue: true
        - match_re: {agent_id: "b-.+"}
          receiver: agents
    - matchers: ['note="a,b}"']
      receiver: other
    - match_re: {severity: "warn.*"}
      receiver: staging
      continue: true
    - match: {env: staging}
      receiver: quiet
"#,
    // Unquoted values, spaces around operators, escapes in regexes.
    r#"
route:
  receiver: default
  routes:
    - matchers: [team=db, 'severity =~ "crit.*|warning"']
      receiver: db
    - matchers: ['note=~"a\\,b.*"']
      receiver: other
      continue: true
    - matchers: ['agent_id!~"a-\\d"', env=prod]
      receiver: agents
"#,
];

fn config(tree: &str) -> String {
    let receivers: String = RECEIVERS
        .iter()
        .map(|name| format!("  - name: {name}\n    webhook_configs: [{{url: 'http://127.0.0.1:9/{name}'}}]\n"))
        .collect();
    format!("{tree}\nreceivers:\n{receivers}")
}

/// Every combination of these labels' values ("" leaves the label out).
fn label_sets() -> Vec<BTreeMap<String, String>> {
    let dimensions: &[(&str, &[&str])] = &[
        ("severity", &["critical", "warning", "info", ""]),
        ("team", &["db", "web", "dbx", ""]),
        ("agent_id", &["a-1", "b-2", ""]),
        ("env", &["prod", "staging"]),
        ("note", &["a,b}", ""]),
    ];
    let mut sets = vec![BTreeMap::new()];
    for (name, values) in dimensions {
        sets = sets
            .into_iter()
            .flat_map(|set| {
                values.iter().map(move |value| {
                    let mut set = set.clone();
                    if !value.is_empty() {
                        set.insert(name.to_string(), value.to_string());
                    }
                    set
                })
            })
            .collect();
    }
    sets
}

#[test]
fn every_alert_reaches_the_receivers_alertmanager_routes_it_to() {
    let Some(amtool) = warden_store::testing::external_tool("amtool", "apt-get install prometheus-alertmanager") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sets = label_sets();
    let (mut compared, mut several) = (0, 0);
    for (index, tree) in TREES.iter().enumerate() {
        let text = config(tree);
        let file = dir.path().join(format!("alertmanager-{index}.yml"));
        std::fs::write(&file, &text).unwrap();
        let ours = Config::parse(&text, "test").unwrap_or_else(|e| panic!("tree {index}: {e}"));
        // amtool answers one alert per run: four runs at a time.
        let answers: Vec<Vec<String>> = std::thread::scope(|scope| {
            let chunks: Vec<_> = sets
                .chunks(sets.len().div_ceil(4))
                .map(|chunk| {
                    scope.spawn(|| chunk.iter().map(|labels| routes(&amtool, &file, labels)).collect::<Vec<_>>())
                })
                .collect();
            chunks.into_iter().flat_map(|c| c.join().unwrap()).collect()
        });
        for (labels, theirs) in sets.iter().zip(answers) {
            let warden: Vec<String> = ours.matching_routes(labels).iter().map(|r| r.receiver.clone()).collect();
            assert_eq!(warden, theirs, "tree {index}, labels {labels:?}");
            compared += 1;
            several += usize::from(theirs.len() > 1);
        }
    }
    assert_eq!(compared, TREES.len() * sets.len());
    assert!(several > 0, "no alert reached several receivers: the trees test too little");
}

/// The receivers `amtool config routes test` names for these labels.
fn routes(amtool: &std::path::Path, file: &std::path::Path, labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut args = vec!["config".to_string(), "routes".into(), "test".into()];
    args.push(format!("--config.file={}", file.display()));
    // amtool reads each argument as a matcher: quote the values.
    args.extend(labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "\\\""))));
    let output = std::process::Command::new(amtool).args(&args).output().unwrap();
    assert!(
        output.status.success(),
        "amtool {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().split(',').map(str::to_owned).collect()
}
