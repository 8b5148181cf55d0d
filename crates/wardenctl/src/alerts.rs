//! `wardenctl alerts`: the alerting service's alerts, rules and silences,
//! and a dry run of its routing.

use clap::Subcommand;
use warden_proto::alerting::v1 as pb;
use warden_proto::alerting::v1::alerting_service_client::AlertingServiceClient;

use crate::Failure;
use crate::remote::{RemoteArgs, explain, print_json, seconds};

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Alerts now (firing, pending, recently resolved), filtered by matchers
    /// such as `severity="critical"` or `agent_id=~"support-.*"`.
    List {
        matchers: Vec<String>,
        /// Hide silenced and inhibited alerts.
        #[arg(long)]
        active: bool,
        /// Wait up to this long for a firing alert to match (polling every
        /// second); exit 1 if none does.
        #[arg(long)]
        wait: Option<humantime::Duration>,
    },
    /// Every rule with its state, health and last error.
    Rules,
    /// Silence alerts matching every matcher, for a while.
    Silence {
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long, e.g. 2h.
        #[arg(long, default_value = "1h")]
        duration: humantime::Duration,
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// Silences (active and pending; `--expired` for all).
    Silences {
        #[arg(long)]
        expired: bool,
    },
    /// End a silence now.
    Expire { id: String },
    /// Which receivers an alert with these labels (`name=value`) would reach.
    TestRoute {
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Reload the rule and routing files.
    Reload,
}

fn alert_json(a: &pb::Alert) -> serde_json::Value {
    serde_json::json!({
        "fingerprint": a.fingerprint, "state": a.state, "labels": a.labels, "annotations": a.annotations,
        "value": a.value, "rule": a.rule, "active_at": seconds(&a.active_at), "starts_at": seconds(&a.starts_at),
        "ends_at": seconds(&a.ends_at), "silenced_by": a.silenced_by, "inhibited_by": a.inhibited_by,
    })
}

fn silence_json(s: &pb::Silence) -> serde_json::Value {
    serde_json::json!({
        "id": s.id, "state": s.state, "matchers": s.matchers, "starts_at": seconds(&s.starts_at),
        "ends_at": seconds(&s.ends_at), "created_by": s.created_by, "comment": s.comment,
    })
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

pub async fn run(args: &RemoteArgs, command: AlertsCommand) -> Result<(), Failure> {
    let mut client = AlertingServiceClient::new(args.channel(&args.alerting_addr).await?);
    let json = args.json();
    match command {
        AlertsCommand::List { matchers, active, wait } => {
            let request = pb::ListAlertsRequest { matchers, exclude_silenced: active, exclude_inhibited: active };
            let deadline = wait.map(|wait| tokio::time::Instant::now() + std::time::Duration::from(wait));
            let alerts = loop {
                let alerts = client.list_alerts(request.clone()).await.map_err(explain)?.into_inner().alerts;
                match deadline {
                    Some(_) if alerts.iter().any(|a| a.state == "firing") => break alerts,
                    Some(deadline) if tokio::time::Instant::now() >= deadline => {
                        let wait = wait.expect("a deadline comes from --wait");
                        return Err(Failure::Failed(format!("no firing alert matched within {wait}")));
                    }
                    Some(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                    None => break alerts,
                }
            };
            if json {
                print_json(serde_json::Value::Array(alerts.iter().map(alert_json).collect()));
                return Ok(());
            }
            println!("{:<17} {:<9} {:<10} {:<25} LABELS", "FINGERPRINT", "STATE", "MUTED", "SINCE");
            for a in &alerts {
                let muted = if !a.silenced_by.is_empty() {
                    "silenced"
                } else if !a.inhibited_by.is_empty() {
                    "inhibited"
                } else {
                    "-"
                };
                let since = if a.starts_at.is_some() { &a.starts_at } else { &a.active_at };
                println!(
                    "{:<17} {:<9} {:<10} {:<25} {}",
                    a.fingerprint,
                    a.state,
                    muted,
                    seconds(since),
                    labels_text(&a.labels)
                );
            }
        }
        AlertsCommand::Rules => {
            let rules = client.list_rules(pb::ListRulesRequest {}).await.map_err(explain)?.into_inner().rules;
            if json {
                let list = rules
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "group": r.group, "name": r.name, "expr": r.expr, "state": r.state, "health": r.health,
                            "last_error": r.last_error, "last_evaluation": seconds(&r.last_evaluation),
                            "alerts": r.alerts.iter().map(alert_json).collect::<Vec<_>>(), "file": r.file,
                        })
                    })
                    .collect();
                print_json(serde_json::Value::Array(list));
                return Ok(());
            }
            println!("{:<20} {:<28} {:<9} {:<7} {:<7} LAST ERROR", "GROUP", "RULE", "STATE", "HEALTH", "ALERTS");
            for r in &rules {
                println!(
                    "{:<20} {:<28} {:<9} {:<7} {:<7} {}",
                    r.group,
                    r.name,
                    if r.state.is_empty() { "-" } else { &r.state },
                    r.health,
                    r.alerts.len(),
                    r.last_error
                );
            }
        }
        AlertsCommand::Silence { matchers, duration, comment } => {
            let ends = std::time::SystemTime::now() + *duration;
            let request = pb::CreateSilenceRequest {
                matchers,
                starts_at: None,
                ends_at: Some(prost_types::Timestamp::from(ends)),
                comment,
                id: String::new(),
            };
            let silence = client.create_silence(request).await.map_err(explain)?.into_inner();
            if json {
                print_json(silence_json(&silence));
            } else {
                println!("{}", silence.id);
            }
        }
        AlertsCommand::Silences { expired } => {
            let request = pb::ListSilencesRequest { include_expired: expired };
            let silences = client.list_silences(request).await.map_err(explain)?.into_inner().silences;
            if json {
                print_json(serde_json::Value::Array(silences.iter().map(silence_json).collect()));
                return Ok(());
            }
            println!("{:<38} {:<8} {:<25} {:<12} MATCHERS / COMMENT", "ID", "STATE", "ENDS", "BY");
            for s in &silences {
                println!(
                    "{:<38} {:<8} {:<25} {:<12} {} / {}",
                    s.id,
                    s.state,
                    seconds(&s.ends_at),
                    s.created_by,
                    s.matchers.join(","),
                    s.comment
                );
            }
        }
        AlertsCommand::Expire { id } => {
            let silence = client.expire_silence(pb::ExpireSilenceRequest { id }).await.map_err(explain)?.into_inner();
            if json {
                print_json(silence_json(&silence));
            } else {
                println!("{} {}", silence.id, silence.state);
            }
        }
        AlertsCommand::TestRoute { labels } => {
            let mut map = std::collections::HashMap::new();
            for pair in labels {
                let Some((name, value)) = pair.split_once('=') else {
                    return Err(Failure::Failed(format!("{pair:?}: expected name=value")));
                };
                map.insert(name.to_owned(), value.trim_matches('"').to_owned());
            }
            let routed = client.test_route(pb::TestRouteRequest { labels: map }).await.map_err(explain)?.into_inner();
            if json {
                let routes: Vec<serde_json::Value> = routed
                    .routes
                    .iter()
                    .map(|r| serde_json::json!({"receiver": r.receiver, "group_by": r.group_by, "path": r.path, "muted_now": r.muted_now}))
                    .collect();
                print_json(serde_json::json!({"routes": routes, "silenced_by": routed.silenced_by}));
                return Ok(());
            }
            for r in &routed.routes {
                let muted = if r.muted_now { " (muted now by a time interval)" } else { "" };
                println!("{}  route {} group_by [{}]{muted}", r.receiver, r.path, r.group_by.join(", "));
            }
            if !routed.silenced_by.is_empty() {
                println!("silenced by {}", routed.silenced_by.join(", "));
            }
        }
        AlertsCommand::Reload => {
            let done = client.reload_config(pb::ReloadConfigRequest {}).await.map_err(explain)?.into_inner();
            if json {
                print_json(serde_json::json!({"rules": done.rules, "receivers": done.receivers}));
            } else {
                println!("reloaded: {} rules, {} receivers", done.rules, done.receivers);
            }
        }
    }
    Ok(())
}
