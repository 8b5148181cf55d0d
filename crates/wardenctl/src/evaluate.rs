//! `wardenctl evaluate`: ask the policy engine for a decision as an agent
//! does, and with `--wait` go on as an agent does when the answer is
//! require-approval: wait for the review, then ask again with the approval.

use std::time::Duration;

use warden_client::json::json_to_value;
use warden_proto::approval::v1 as approval;
use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use warden_proto::policy::v1 as policy;
use warden_proto::policy::v1::policy_service_client::PolicyServiceClient;

use crate::Failure;
use crate::remote::{Output, RemoteArgs, explain, print_json};

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The action's type, e.g. `issue_refund`.
    action: String,
    /// The agent asking (the key must be bound to it).
    #[arg(long)]
    agent: String,
    /// What the action touches, e.g. `order/1234`.
    #[arg(long, default_value = "")]
    resource: String,
    /// A parameter, `KEY=VALUE`; VALUE is read as JSON when it is JSON
    /// (`amount=300`, `notify=true`, `to=["a","b"]`) and as text otherwise.
    /// Repeat for several.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    params: Vec<(String, serde_json::Value)>,
    /// The agent's estimate of the cost.
    #[arg(long, default_value_t = 0.0)]
    cost: f64,
    /// The agent's confidence, in [0, 1].
    #[arg(long, default_value_t = 1.0)]
    confidence: f64,
    /// A role the agent claims; the engine refuses claims its registry does
    /// not back. Repeat for several.
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Ties the decision to a ticket, conversation or workflow.
    #[arg(long, default_value = "")]
    correlation_id: String,
    /// Spend this granted approval on the action.
    #[arg(long, default_value = "")]
    approval_id: String,
    /// When approval is required: wait this long for the review, then ask
    /// again with the approval (the agent's whole workflow).
    #[arg(long)]
    wait: Option<humantime::Duration>,
}

fn parse_param(text: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{text:?} has no key"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

fn effect_name(effect: i32) -> &'static str {
    match policy::Effect::try_from(effect).unwrap_or(policy::Effect::Unspecified) {
        policy::Effect::Allow => "allow",
        policy::Effect::Deny => "deny",
        policy::Effect::RequireApproval => "require_approval",
        policy::Effect::Unspecified => "unspecified",
    }
}

fn print_decision(decision: &policy::EvaluateResponse, output: Output) {
    if output == Output::Json {
        return print_json(serde_json::json!({
            "decision_id": decision.decision_id, "effect": effect_name(decision.effect),
            "reasons": decision.reasons, "matched_rules": decision.matched_rules,
            "shadow_rules": decision.shadow_rules, "policy_version": decision.policy_version,
            "approval_id": decision.approval_id,
        }));
    }
    println!("decision   {}", decision.decision_id);
    println!("effect     {}", effect_name(decision.effect));
    println!("reasons    {}", decision.reasons.join("; "));
    println!("rules      {}", decision.matched_rules.join(", "));
    if !decision.shadow_rules.is_empty() {
        println!("shadow     {}", decision.shadow_rules.join(", "));
    }
    if !decision.approval_id.is_empty() {
        println!("approval   {}", decision.approval_id);
    }
}

pub async fn run(args: &RemoteArgs, command: EvaluateArgs) -> Result<(), Failure> {
    let mut client = PolicyServiceClient::new(args.channel(args.addr()).await?);
    let params = serde_json::Map::from_iter(command.params.iter().cloned());
    let mut request = policy::EvaluateRequest {
        agent: Some(policy::Agent {
            id: command.agent.clone(),
            roles: command.roles.clone(),
            confidence: command.confidence,
            ..Default::default()
        }),
        action: Some(policy::Action {
            r#type: command.action.clone(),
            resource: command.resource.clone(),
            estimated_cost: command.cost,
            params: Some(prost_types::Struct {
                fields: params.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect(),
            }),
        }),
        time: None,
        correlation_id: command.correlation_id.clone(),
        approval_id: command.approval_id.clone(),
    };
    let decision = client.evaluate(request.clone()).await.map_err(explain)?.into_inner();
    print_decision(&decision, args.output);
    let (Some(wait), false) = (command.wait, decision.approval_id.is_empty()) else { return Ok(()) };
    if decision.effect != policy::Effect::RequireApproval as i32 {
        return Ok(());
    }
    let reviewed = tokio::time::timeout(Duration::from(wait), review_of(args, &decision.approval_id))
        .await
        .map_err(|_| Failure::Failed(format!("approval {} was not reviewed within {wait}", decision.approval_id)))??;
    if args.output == Output::Table {
        let names: Vec<&str> = reviewed.reviews.iter().map(|r| r.reviewer.as_str()).collect();
        println!("reviewed   {} by {}", state_word(reviewed.state), names.join(", "));
    }
    if reviewed.state != approval::State::Approved as i32 {
        return Ok(());
    }
    request.approval_id = decision.approval_id;
    let decision = client.evaluate(request).await.map_err(explain)?.into_inner();
    print_decision(&decision, args.output);
    Ok(())
}

fn state_word(state: i32) -> &'static str {
    match approval::State::try_from(state).unwrap_or(approval::State::Unspecified) {
        approval::State::Approved => "approved",
        approval::State::Denied => "denied",
        approval::State::Expired => "expired",
        approval::State::Cancelled => "cancelled",
        approval::State::Redeemed => "redeemed",
        approval::State::Pending | approval::State::Unspecified => "pending",
    }
}

/// The approval once it is no longer pending (`WatchApproval`, reconnecting
/// when the stream drops, as an agent's SDK does).
async fn review_of(args: &RemoteArgs, id: &str) -> Result<approval::Approval, Failure> {
    loop {
        let mut client = ApprovalServiceClient::new(args.channel(args.approval_addr()).await?);
        let mut stream = client
            .watch_approval(approval::WatchApprovalRequest { id: id.to_string() })
            .await
            .map_err(explain)?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(a)) if a.state != approval::State::Pending as i32 => return Ok(a),
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(status) if status.code() == tonic::Code::Unavailable => break,
                Err(status) => return Err(explain(status)),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_json_when_they_parse_and_text_otherwise() {
        assert_eq!(parse_param("amount=300").unwrap(), ("amount".into(), serde_json::json!(300)));
        assert_eq!(parse_param("to=[\"a\",\"b\"]").unwrap(), ("to".into(), serde_json::json!(["a", "b"])));
        assert_eq!(parse_param("note=hello world").unwrap(), ("note".into(), serde_json::json!("hello world")));
        assert_eq!(parse_param("expr=a=b").unwrap(), ("expr".into(), serde_json::json!("a=b")));
        assert_eq!(parse_param("empty=").unwrap(), ("empty".into(), serde_json::json!("")));
        assert!(parse_param("no-equals").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_param("=1").unwrap_err().contains("no key"));
    }
}
