//! The verbs that talk to running services over gRPC.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use warden_auth::{CallCredentials, ClientIdentity};
use warden_client::json::{struct_to_json, value_to_json};
use warden_proto::approval::v1 as approval;
use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_proto::policy::v1 as policy;
use warden_proto::policy::v1::policy_service_client::PolicyServiceClient;

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct RemoteArgs {
    /// The policy engine.
    #[arg(long, global = true, env = "WARDEN_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The audit service.
    #[arg(
        long,
        visible_alias = "audit",
        global = true,
        env = "WARDEN_AUDIT_ADDR",
        default_value = "http://127.0.0.1:50052"
    )]
    audit_addr: String,
    /// The approval service.
    #[arg(
        long,
        visible_alias = "approval",
        global = true,
        env = "WARDEN_APPROVAL_ADDR",
        default_value = "http://127.0.0.1:50053"
    )]
    approval_addr: String,
    /// The alerting service.
    #[arg(
        long,
        visible_alias = "alerting",
        global = true,
        env = "WARDEN_ALERTING_ADDR",
        default_value = "http://127.0.0.1:50054"
    )]
    pub(crate) alerting_addr: String,
    /// The MCP gateway's endpoint (`wardenctl mcp`).
    #[arg(long, global = true, env = "WARDEN_MCP_ADDR", default_value = "http://127.0.0.1:8095/mcp")]
    mcp_addr: String,
    /// API key or token, sent as `authorization: Bearer ...`.
    #[arg(long, global = true, env = "WARDEN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM CA for https:// addresses.
    #[arg(long, global = true, env = "WARDEN_CA")]
    ca: Option<PathBuf>,
    /// Output: table (for people) or json (for scripts).
    #[arg(short, long, global = true, default_value = "table")]
    pub(crate) output: Output,
    /// A TOML profile with addr, audit_addr, approval_addr, alerting_addr, mcp_addr, api_key, ca.
    #[arg(long, global = true, env = "WARDEN_PROFILE")]
    profile: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

type Stack = InterceptedService<Channel, CallCredentials>;

/// A profile file (`--profile FILE`, or `WARDEN_PROFILE`): the addresses
/// and key for one deployment, in TOML. Flags and the environment win.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    addr: Option<String>,
    audit_addr: Option<String>,
    approval_addr: Option<String>,
    alerting_addr: Option<String>,
    mcp_addr: Option<String>,
    api_key: Option<String>,
    ca: Option<PathBuf>,
}

impl RemoteArgs {
    /// Fills what flags and the environment left unset from the profile.
    pub fn with_profile(mut self) -> Result<RemoteArgs, String> {
        let Some(path) = self.profile.clone() else { return Ok(self) };
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read profile {}: {e}", path.display()))?;
        let profile: Profile = toml::from_str(&text).map_err(|e| format!("profile {}: {e}", path.display()))?;
        let defaults = RemoteArgs::default_addresses();
        if self.addr == defaults.0
            && let Some(addr) = profile.addr
        {
            self.addr = addr;
        }
        if self.audit_addr == defaults.1
            && let Some(addr) = profile.audit_addr
        {
            self.audit_addr = addr;
        }
        if self.approval_addr == defaults.2
            && let Some(addr) = profile.approval_addr
        {
            self.approval_addr = addr;
        }
        if self.alerting_addr == "http://127.0.0.1:50054"
            && let Some(addr) = profile.alerting_addr
        {
            self.alerting_addr = addr;
        }
        if self.mcp_addr == "http://127.0.0.1:8095/mcp"
            && let Some(addr) = profile.mcp_addr
        {
            self.mcp_addr = addr;
        }
        if self.api_key.is_none() {
            self.api_key = profile.api_key;
        }
        if self.ca.is_none() {
            self.ca = profile.ca;
        }
        Ok(self)
    }

    fn default_addresses() -> (&'static str, &'static str, &'static str) {
        ("http://127.0.0.1:50051", "http://127.0.0.1:50052", "http://127.0.0.1:50053")
    }

    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// The policy engine's address.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The approval service's address.
    pub(crate) fn approval_addr(&self) -> &str {
        &self.approval_addr
    }

    /// The MCP gateway's endpoint URL.
    pub(crate) fn mcp_addr(&self) -> &str {
        &self.mcp_addr
    }

    /// The credential, if one was given.
    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    pub(crate) async fn channel(&self, url: &str) -> Result<Stack, Failure> {
        let url = &service_url(url)?;
        let mut identity = ClientIdentity { bearer: self.api_key.clone().map(warden_auth::Secret::new), tls: None };
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            identity.tls = Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)));
        }
        let channel = identity
            .endpoint(url)
            .map_err(|e| format!("bad address {url}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}; is the service running there (see --addr flags)?"))?;
        Ok(InterceptedService::new(channel, identity.credentials()?))
    }
}

/// An address as every Warden tool takes it: `host:port` (plain HTTP/2),
/// or a URL with `http://` or `https://`.
pub(crate) fn service_url(addr: &str) -> Result<String, Failure> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(Failure::Failed("an empty address: give host:port or http(s)://host:port".into()));
    }
    match addr.split_once("://") {
        None => Ok(format!("http://{addr}")),
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(addr.to_owned()),
        Some((scheme, _)) => Err(Failure::Failed(format!(
            "bad address {addr}: the scheme must be http:// or https:// (or none: host:port), not {scheme}://"
        ))),
    }
}

/// A refused call, explained: the code, the message, each bad field, and
/// what to do about an authentication problem.
pub(crate) fn explain(status: tonic::Status) -> Failure {
    let error = warden_errors::WardenError::from_status(&status);
    let mut text = format!("{:?}: {}", status.code(), status.message());
    for violation in &error.violations {
        text.push_str(&format!("\n  {}: {}", violation.field, violation.description));
    }
    match status.code() {
        tonic::Code::Unauthenticated => text.push_str("\n  give a key with --api-key or WARDEN_API_KEY"),
        tonic::Code::PermissionDenied if status.message().contains(" lacks the role ") => {
            text.push_str("\n  use a key whose principal holds that role")
        }
        tonic::Code::Unavailable => text.push_str("\n  the service is unreachable or overloaded; try again"),
        _ => {}
    }
    Failure::Failed(text)
}

/// A verb's result: `json` with `-o json`, else `text`. The rule for every
/// verb: `-o json` prints one JSON document (a list is an array), except
/// the verbs that stream (`approvals watch`, `audit query`, `audit
/// export`), which print one JSON object per line (JSON Lines).
pub(crate) fn report(args: &RemoteArgs, json: serde_json::Value, text: String) {
    if args.output == Output::Json { print_json(json) } else { println!("{text}") }
}

pub(crate) fn print_json(value: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&value).expect("json"));
}

pub(crate) fn seconds(time: &Option<prost_types::Timestamp>) -> String {
    time.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        // As precise as the service recorded it: events a second apart in
        // whole seconds would read out of order.
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| "-".into())
}

// === approvals ===

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List requests (default: the pending ones you may review).
    List {
        /// pending, approved, denied, expired, cancelled, redeemed, or all.
        #[arg(long, default_value = "reviewable")]
        state: String,
        #[arg(long)]
        agent: Option<String>,
    },
    /// Show one request: the exact action, why, reviews, deadlines.
    Show { id: String },
    /// Approve, with a comment.
    Approve {
        #[command(flatten)]
        target: ReviewTarget,
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// Deny, with a comment.
    Deny {
        #[command(flatten)]
        target: ReviewTarget,
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// Print the request's state now and at every change until it ends.
    Watch { id: String },
}

/// Which request a review is for: its id, or the one pending request with
/// this correlation id that the caller may review.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ReviewTarget {
    id: Option<String>,
    /// The ticket, conversation or workflow the request belongs to.
    #[arg(long)]
    correlation_id: Option<String>,
}

fn state_name(state: i32) -> &'static str {
    match approval::State::try_from(state).unwrap_or(approval::State::Unspecified) {
        approval::State::Pending => "pending",
        approval::State::Approved => "approved",
        approval::State::Denied => "denied",
        approval::State::Expired => "expired",
        approval::State::Cancelled => "cancelled",
        approval::State::Redeemed => "redeemed",
        approval::State::Unspecified => "unknown",
    }
}

fn approval_json(a: &approval::Approval) -> serde_json::Value {
    let action = a.action.clone().unwrap_or_default();
    serde_json::json!({
        "id": a.id, "state": state_name(a.state), "agent_id": a.agent_id, "requested_by": a.requested_by, "requesters": a.requesters,
        "action": {"type": action.r#type, "resource": action.resource, "estimated_cost": action.estimated_cost,
                   "params": action.params.as_ref().map(struct_to_json).unwrap_or_else(|| serde_json::json!({}))},
        "action_hash": a.action_hash, "correlation_id": a.correlation_id, "rules": a.rules, "reasons": a.reasons,
        "route": a.route, "min_approvals": a.min_approvals,
        "reviews": a.reviews.iter().map(|r| serde_json::json!({"reviewer": r.reviewer, "approve": r.approve, "comment": r.comment})).collect::<Vec<_>>(),
        "created_at": seconds(&a.created_at), "expires_at": seconds(&a.expires_at),
        "grant_expires_at": seconds(&a.grant_expires_at), "outcome_reason": a.outcome_reason,
    })
}

fn print_approval(a: &approval::Approval, output: Output) {
    if output == Output::Json {
        return print_json(approval_json(a));
    }
    let action = a.action.clone().unwrap_or_default();
    println!("approval   {}", a.id);
    println!(
        "state      {}{}",
        state_name(a.state),
        if a.outcome_reason.is_empty() { String::new() } else { format!(" ({})", a.outcome_reason) }
    );
    let askers = if a.requesters.is_empty() { a.requested_by.clone() } else { a.requesters.join(", ") };
    println!("agent      {} (asked by {askers})", a.agent_id);
    println!("action     {} on {} (estimated cost {})", action.r#type, action.resource, action.estimated_cost);
    if let Some(params) = &action.params {
        for (key, value) in &params.fields {
            println!("  {key} = {}", value_to_json(value));
        }
    }
    println!("hash       {}", a.action_hash);
    println!("why        {} ({})", a.reasons.join("; "), a.rules.join(", "));
    println!("route      {} (needs {} approval(s))", a.route, a.min_approvals);
    if a.state == approval::State::Approved as i32 && a.grant_expires_at.is_some() {
        // Granted: what counts now is how long the grant may be redeemed.
        println!("redeem by  {} (the grant expires then)", seconds(&a.grant_expires_at));
    } else if a.state == approval::State::Pending as i32 {
        println!("expires    {} (unless reviewed by then)", seconds(&a.expires_at));
    } else {
        println!("expires    {}", seconds(&a.expires_at));
    }
    for r in &a.reviews {
        println!("review     {} {} {}", r.reviewer, if r.approve { "approved" } else { "denied" }, r.comment);
    }
}

pub async fn approvals(args: &RemoteArgs, command: ApprovalsCommand) -> Result<(), Failure> {
    let mut client = ApprovalServiceClient::new(args.channel(&args.approval_addr).await?);
    match command {
        ApprovalsCommand::List { state, agent } => {
            let (state, mine) = match state.as_str() {
                "reviewable" => (approval::State::Unspecified, true),
                "all" => (approval::State::Unspecified, false),
                "pending" => (approval::State::Pending, false),
                "approved" => (approval::State::Approved, false),
                "denied" => (approval::State::Denied, false),
                "expired" => (approval::State::Expired, false),
                "cancelled" => (approval::State::Cancelled, false),
                "redeemed" => (approval::State::Redeemed, false),
                other => {
                    return Err(Failure::Failed(format!(
                        "--state {other:?}: expected reviewable, all, pending, approved, denied, expired, cancelled or redeemed"
                    )));
                }
            };
            let request = approval::ListApprovalsRequest {
                state: state as i32,
                agent_id: agent.unwrap_or_default(),
                reviewable_by_me: mine,
                page_size: 500,
                page_token: String::new(),
            };
            let list = client.list_approvals(request).await.map_err(explain)?.into_inner().approvals;
            if args.output == Output::Json {
                print_json(serde_json::Value::Array(list.iter().map(approval_json).collect()));
                return Ok(());
            }
            println!("{:<38} {:<10} {:<20} {:<20} {:<8} EXPIRES", "ID", "STATE", "AGENT", "ACTION", "REVIEWS");
            for a in &list {
                let action = a.action.clone().unwrap_or_default();
                println!(
                    "{:<38} {:<10} {:<20} {:<20} {:<8} {}",
                    a.id,
                    state_name(a.state),
                    a.agent_id,
                    action.r#type,
                    format!("{}/{}", a.reviews.iter().filter(|r| r.approve).count(), a.min_approvals),
                    seconds(&a.expires_at)
                );
            }
            Ok(())
        }
        ApprovalsCommand::Show { id } => {
            let a = client.get_approval(approval::GetApprovalRequest { id }).await.map_err(explain)?.into_inner();
            print_approval(&a, args.output);
            Ok(())
        }
        ApprovalsCommand::Approve { target, comment } => {
            let id = target_id(&mut client, target).await?;
            review(&mut client, id, true, comment, args.output).await
        }
        ApprovalsCommand::Deny { target, comment } => {
            let id = target_id(&mut client, target).await?;
            review(&mut client, id, false, comment, args.output).await
        }
        ApprovalsCommand::Watch { id } => {
            let mut stream =
                client.watch_approval(approval::WatchApprovalRequest { id }).await.map_err(explain)?.into_inner();
            while let Some(a) = stream.message().await.map_err(explain)? {
                if args.output == Output::Json {
                    println!("{}", approval_json(&a));
                } else {
                    println!("{} {} reviews={}", a.id, state_name(a.state), a.reviews.len());
                }
            }
            Ok(())
        }
    }
}

/// The request a review names: its id as given, or the single pending
/// request with the correlation id among those the caller may review.
async fn target_id(client: &mut ApprovalServiceClient<Stack>, target: ReviewTarget) -> Result<String, Failure> {
    let correlation_id = match target {
        ReviewTarget { id: Some(id), .. } => return Ok(id),
        ReviewTarget { correlation_id: Some(c), .. } if !c.trim().is_empty() => c,
        _ => return Err(Failure::Failed("--correlation-id is empty".into())),
    };
    let mut found = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = approval::ListApprovalsRequest {
            state: approval::State::Pending as i32,
            agent_id: String::new(),
            reviewable_by_me: true,
            page_size: 500,
            page_token,
        };
        let page = client.list_approvals(request).await.map_err(explain)?.into_inner();
        found.extend(page.approvals.into_iter().filter(|a| a.correlation_id == correlation_id).map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Failure::Failed(format!("no pending request you may review has correlation id {correlation_id:?}"))),
        _ => Err(Failure::Failed(format!(
            "{} pending requests have correlation id {correlation_id:?}; name one: {}",
            found.len(),
            found.join(", ")
        ))),
    }
}

async fn review(
    client: &mut ApprovalServiceClient<Stack>,
    id: String,
    approve: bool,
    comment: String,
    output: Output,
) -> Result<(), Failure> {
    let a = client.review(approval::ReviewRequest { id, approve, comment }).await.map_err(explain)?.into_inner();
    print_approval(&a, output);
    Ok(())
}

// === kill switches ===

#[derive(Debug, Subcommand)]
pub enum KillSwitchCommand {
    /// Stop an agent (or, without --agent, every agent) now.
    Engage {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// Let it act again.
    Release {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The engaged switches.
    List {
        #[arg(long)]
        agent: Option<String>,
    },
}

pub async fn killswitch(args: &RemoteArgs, command: KillSwitchCommand) -> Result<(), Failure> {
    let mut client = PolicyServiceClient::new(args.channel(&args.addr).await?);
    let (agent, engaged, reason) = match command {
        KillSwitchCommand::List { agent } => {
            let list = client
                .get_kill_switch(policy::GetKillSwitchRequest { agent_id: agent.unwrap_or_default() })
                .await
                .map_err(explain)?
                .into_inner()
                .kill_switches;
            if args.output == Output::Json {
                print_json(serde_json::Value::Array(
                    list.iter()
                        .map(|k| serde_json::json!({"agent_id": k.agent_id, "engaged": k.engaged, "reason": k.reason, "updated_at": seconds(&k.updated_at)}))
                        .collect(),
                ));
            } else {
                println!("{:<24} {:<22} REASON", "AGENT", "SINCE");
                for k in list {
                    let agent = if k.agent_id.is_empty() { "* (every agent)".to_string() } else { k.agent_id };
                    println!("{agent:<24} {:<22} {}", seconds(&k.updated_at), k.reason);
                }
            }
            return Ok(());
        }
        KillSwitchCommand::Engage { agent, reason } => (agent, true, reason),
        KillSwitchCommand::Release { agent, reason } => (agent, false, reason),
    };
    let switch = client
        .set_kill_switch(policy::SetKillSwitchRequest { agent_id: agent.unwrap_or_default(), engaged, reason })
        .await
        .map_err(explain)?
        .into_inner()
        .kill_switch
        .unwrap_or_default();
    let who = if switch.agent_id.is_empty() { "every agent".to_string() } else { switch.agent_id.clone() };
    if args.output == Output::Json {
        print_json(
            serde_json::json!({"agent_id": switch.agent_id, "engaged": switch.engaged, "reason": switch.reason}),
        );
    } else {
        println!("kill switch for {who}: {}", if switch.engaged { "ENGAGED" } else { "released" });
    }
    Ok(())
}

// === audit ===

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Events by correlation id, agent and type, oldest first.
    Query {
        #[arg(long)]
        correlation_id: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        /// Event types, comma separated.
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Most events to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Every event in a sequence range, as JSON lines.
    Export {
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Exclusive; 0 = the current end of the log.
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
    /// Destroy a subject's data key: its sensitive fields become unreadable,
    /// the events and their hashes stay and verify (admin).
    Forget { subject: String },
    /// The latest signed checkpoint, its signature checked with --key.
    Checkpoint {
        /// The verifier key (`name+hash+key`, printed by the audit service at start).
        #[arg(long, env = "WARDEN_AUDIT_KEY")]
        key: Option<String>,
    },
    /// Ask the service to recompute every hash from stored data.
    Verify {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
    /// Prove an event is in the log: the inclusion proof is checked here,
    /// against the checkpoint's root, and the checkpoint's signature
    /// against --key.
    Proof {
        /// The event's sequence number.
        sequence: u64,
        /// The checkpoint verifier key (`name+hash+key`): the audit service
        /// prints it when it starts, and `cargo xtask dev` in its banner.
        #[arg(long, env = "WARDEN_AUDIT_KEY")]
        key: String,
    },
}

pub async fn audit(args: &RemoteArgs, command: AuditCommand) -> Result<(), Failure> {
    let mut client = AuditServiceClient::new(args.channel(&args.audit_addr).await?)
        .max_decoding_message_size(warden_contract::bounds::MESSAGE_BYTES);
    match command {
        AuditCommand::Checkpoint { key } => {
            let checkpoint = client.get_checkpoint(audit::GetCheckpointRequest {}).await.map_err(explain)?.into_inner();
            if let Some(key) = key {
                verified_checkpoint(&checkpoint.note, &key)?;
            }
            if args.output == Output::Json {
                print_json(
                    serde_json::json!({"tree_size": checkpoint.tree_size, "root_hash": hex::encode(&checkpoint.root_hash), "note": checkpoint.note, "verifier_key": checkpoint.verifier_key}),
                );
            } else {
                print!("{}", checkpoint.note);
            }
            Ok(())
        }
        AuditCommand::Verify { from, to } => {
            let result = client
                .verify(audit::VerifyRequest { from_sequence: from, to_sequence: to })
                .await
                .map_err(explain)?
                .into_inner();
            if result.ok {
                report(
                    args,
                    serde_json::json!({"ok": true, "verified": result.verified, "tree_size": result.tree_size}),
                    format!("ok: {} events verified (tree size {})", result.verified, result.tree_size),
                );
                Ok(())
            } else {
                Err(Failure::Unverified(format!("event {}: {}", result.first_bad_sequence, result.problem)))
            }
        }
        AuditCommand::Query { correlation_id, agent, types, limit } => {
            let mut token = String::new();
            let mut records = Vec::new();
            while records.len() < limit {
                let query = audit::QueryRequest {
                    correlation_id: correlation_id.clone().unwrap_or_default(),
                    agent_id: agent.clone().unwrap_or_default(),
                    event_types: types.clone(),
                    page_size: 1000.min(limit as u32),
                    page_token: token.clone(),
                    ..Default::default()
                };
                let page = client.query(query).await.map_err(explain)?.into_inner();
                let room = limit - records.len();
                records.extend(page.records.into_iter().take(room));
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            if args.output == Output::Table {
                println!("{:<8} {:<30} {:<22} {:<16} {:<20} CORRELATION", "SEQ", "TIME", "TYPE", "AGENT", "ACTOR");
            }
            for (record, after) in causal_order(records) {
                print_record(&record, args.output);
                if let (Some(decision), Output::Table) = (after, args.output) {
                    println!("{:<8} ^ reported after its decision (seq {decision}) was recorded", "");
                }
            }
            Ok(())
        }
        AuditCommand::Export { from, to } => {
            let mut stream = client
                .export(audit::ExportRequest { from_sequence: from, to_sequence: to, ..Default::default() })
                .await
                .map_err(explain)?
                .into_inner();
            while let Some(record) = stream.message().await.map_err(explain)? {
                print_record(&record, Output::Json);
            }
            Ok(())
        }
        AuditCommand::Forget { subject } => {
            let forgotten = client
                .forget_subject(audit::ForgetSubjectRequest { subject: subject.clone() })
                .await
                .map_err(explain)?
                .into_inner()
                .forgotten;
            report(
                args,
                serde_json::json!({"subject": subject, "forgotten": forgotten}),
                if forgotten {
                    format!("forgot {subject}: its sensitive fields are unreadable now")
                } else {
                    format!("{subject} had no stored personal data")
                },
            );
            Ok(())
        }
        AuditCommand::Proof { sequence, key } => {
            let checkpoint = client.get_checkpoint(audit::GetCheckpointRequest {}).await.map_err(explain)?.into_inner();
            let body = verified_checkpoint(&checkpoint.note, &key)?;
            let proof = client
                .get_inclusion_proof(audit::GetInclusionProofRequest { sequence, tree_size: body.size })
                .await
                .map_err(explain)?
                .into_inner();
            let leaf: warden_merkle::Hash = proof
                .leaf_hash
                .as_slice()
                .try_into()
                .map_err(|_| Failure::Unverified("leaf hash is not 32 bytes".into()))?;
            let hashes = proof
                .hashes
                .iter()
                .map(|h| <warden_merkle::Hash>::try_from(h.as_slice()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| Failure::Unverified("a proof hash is not 32 bytes".into()))?;
            warden_merkle::verify_inclusion(sequence, body.size, &leaf, &hashes, &body.root)
                .map_err(|e| Failure::Unverified(format!("inclusion proof of event {sequence}: {e}")))?;
            let signer = key.split('+').next().unwrap_or("");
            report(
                args,
                serde_json::json!({"ok": true, "sequence": sequence, "leaf_hash": hex::encode(leaf), "tree_size": body.size, "signer": signer}),
                format!(
                    "ok: event {sequence} (leaf {}) is in the log of {} events signed by {signer}",
                    hex::encode(leaf),
                    body.size
                ),
            );
            Ok(())
        }
    }
}

/// The records in the order they happened where the log's order says
/// otherwise: an action's outcome (`action_completed`, naming its
/// `payload.decision_id`) comes right after that decision when both are
/// here, even if it reached the log first (an agent records its outcome
/// directly, while an approval's events and the allowing decision arrive
/// through the approval service's outbox). Each moved record comes with
/// its decision's sequence; the rest keep the log's order.
fn causal_order(records: Vec<audit::AuditRecord>) -> Vec<(audit::AuditRecord, Option<u64>)> {
    let decision_of = |record: &audit::AuditRecord| {
        let event = record.event.as_ref()?;
        // An action's outcome follows the decision that allowed it (an
        // `approval_redeemed` names the decision it enabled: it comes before).
        if event.event_type != "action_completed" {
            return None;
        }
        let payload = event.payload.as_ref()?;
        match payload.fields.get("decision_id")?.kind.as_ref()? {
            prost_types::value::Kind::StringValue(id) if !id.is_empty() => Some(id.clone()),
            _ => None,
        }
    };
    let position: std::collections::HashMap<String, (usize, u64)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((r.event.as_ref()?.event_id.clone(), (i, r.sequence))))
        .collect();
    let mut after: std::collections::BTreeMap<usize, Vec<(audit::AuditRecord, Option<u64>)>> = Default::default();
    let mut kept = Vec::new();
    for (i, record) in records.into_iter().enumerate() {
        match decision_of(&record).and_then(|id| position.get(&id).copied()) {
            Some((at, sequence)) if at > i => after.entry(at).or_default().push((record, Some(sequence))),
            _ => kept.push((i, record)),
        }
    }
    let mut out = Vec::new();
    for (i, record) in kept {
        out.push((record, None));
        out.extend(after.remove(&i).unwrap_or_default());
    }
    out
}

fn print_record(record: &audit::AuditRecord, output: Output) {
    let event = record.event.clone().unwrap_or_default();
    if output == Output::Json {
        let payload = event.payload.as_ref().map(struct_to_json).unwrap_or(serde_json::Value::Null);
        println!(
            "{}",
            serde_json::json!({
                "sequence": record.sequence, "leaf_hash": hex::encode(&record.leaf_hash), "event_id": event.event_id,
                "event_type": event.event_type, "time": seconds(&event.time), "correlation_id": event.correlation_id,
                "agent_id": event.agent_id, "actor": event.actor, "payload": payload,
                "payload_purged": record.payload_purged, "sensitive_forgotten": record.sensitive_forgotten,
            })
        );
    } else {
        println!(
            "{:<8} {:<30} {:<22} {:<16} {:<20} {}",
            record.sequence,
            seconds(&event.time),
            event.event_type,
            event.agent_id,
            event.actor,
            event.correlation_id
        );
    }
}

/// Checks a checkpoint note's signature and returns its body.
fn verified_checkpoint(note: &str, key: &str) -> Result<warden_merkle::note::Checkpoint, Failure> {
    let verifier = warden_merkle::note::NoteVerifier::parse(key).map_err(|e| format!("--key: {e}"))?;
    let text = verifier.verify(note).map_err(|e| Failure::Unverified(format!("checkpoint signature: {e}")))?;
    warden_merkle::note::Checkpoint::parse(text).map_err(|e| Failure::Unverified(format!("checkpoint: {e}")))
}

// === policies ===

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run the policy tests (`*_test.yaml`) in DIR offline, through the
    /// engine's own evaluation: a summary, exit 1 on any failure.
    Test {
        dir: PathBuf,
        /// Also write JUnit XML here, for CI systems.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Re-decide recorded decisions with a candidate policy set and report
    /// which would change (rules only: kill switches, limits and approvals
    /// are not replayed). Needs an auditor key for the audit service.
    Replay {
        /// The candidate policy directory.
        #[arg(long)]
        policies: PathBuf,
        /// How far back, e.g. 24h or 7d.
        #[arg(long, default_value = "24h")]
        since: humantime::Duration,
        /// Most decisions to replay.
        #[arg(long, default_value_t = 100_000)]
        limit: usize,
        /// Example requests shown per change.
        #[arg(long, default_value_t = 3)]
        sample: usize,
    },
    /// Check every *.yaml file in DIR with the engine's own compiler, here
    /// (offline, as `opa check`), or with --remote on the running engine
    /// without activating them: errors with file, line and rule; exit 1
    /// when invalid.
    Validate {
        dir: PathBuf,
        /// Ask the running engine (--addr, an admin key) instead.
        #[arg(long)]
        remote: bool,
    },
    /// Re-read the engine's policy directory now (the last good set stays on error).
    Reload,
    /// The active rules and limits.
    Show,
}

fn print_policy_errors(errors: &[policy::PolicyError]) {
    for e in errors {
        eprintln!("{}", error_line(&e.file, e.line, &e.rule, &e.message));
    }
}

/// A policy error as compilers print one: `file:line: rule NAME: message`,
/// without the line when it is unknown (0) or the rule when there is none.
pub(crate) fn error_line(file: &str, line: u32, rule: &str, message: &str) -> String {
    let at = if line == 0 { file.to_owned() } else { format!("{file}:{line}") };
    if rule.is_empty() { format!("{at}: {message}") } else { format!("{at}: rule {rule}: {message}") }
}

/// `policy validate` without a server: the engine's own compiler, here.
fn validate_offline(sources: Vec<policy::PolicySource>) -> policy::ValidatePoliciesResponse {
    use warden_policy::policy as compiler;
    let sources: Vec<compiler::Source> =
        sources.into_iter().map(|s| compiler::Source { file: s.file, content: s.content }).collect();
    let policy_version = compiler::version_of(&sources);
    match compiler::compile_sources_with(&sources, &compiler::LoadOptions::default()) {
        Ok(set) => policy::ValidatePoliciesResponse {
            valid: true,
            errors: Vec::new(),
            policy_version,
            rule_count: set.rules.len() as u32,
            limit_count: set.limits.len() as u32,
        },
        Err(errors) => policy::ValidatePoliciesResponse {
            valid: false,
            errors: errors.iter().map(compiler::PolicyError::to_proto).collect(),
            policy_version,
            rule_count: 0,
            limit_count: 0,
        },
    }
}

/// Policy tests, offline: no server is involved.
fn policy_test(args: &RemoteArgs, dir: &std::path::Path, junit: Option<&std::path::Path>) -> Result<(), Failure> {
    let policies = warden_policy::policy::load_dir(dir).map_err(|errors| {
        for e in &errors {
            eprintln!("{}", error_line(&e.file, e.line, &e.rule, &e.message));
        }
        Failure::Failed(format!("the policies in {} do not load", dir.display()))
    })?;
    let results = warden_policy::testing::run_dir(dir, &policies);
    if let Some(path) = junit {
        std::fs::write(path, warden_policy::testing::junit(&results))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    if args.output == Output::Json {
        print_json(serde_json::Value::Array(
            results.iter().map(|r| serde_json::json!({"file": r.file, "name": r.name, "failure": r.failure})).collect(),
        ));
    } else {
        for result in &results {
            match &result.failure {
                None => println!("PASS {}: {}", result.file, result.name),
                Some(why) => println!("FAIL {}: {}: {why}", result.file, result.name),
            }
        }
        println!("{} passed, {failed} failed", results.len() - failed);
    }
    if results.is_empty() {
        return Err(Failure::Failed(format!("no policy tests (*_test.yaml) in {}", dir.display())));
    }
    if failed > 0 { Err(Failure::Failed(format!("{failed} policy test(s) failed"))) } else { Ok(()) }
}

pub async fn policy(args: &RemoteArgs, command: PolicyCommand) -> Result<(), Failure> {
    let connect = || async { Ok::<_, Failure>(PolicyServiceClient::new(args.channel(&args.addr).await?)) };
    match command {
        PolicyCommand::Test { dir, junit } => policy_test(args, &dir, junit.as_deref()),
        PolicyCommand::Replay { policies, since, limit, sample } => {
            replay(args, &policies, since.into(), limit, sample).await
        }
        PolicyCommand::Validate { dir, remote } => {
            let mut sources = Vec::new();
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().ends_with("_test.yaml")))
                .collect();
            paths.sort();
            for path in paths {
                let content =
                    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                sources.push(policy::PolicySource { file, content });
            }
            if sources.is_empty() {
                return Err(Failure::Failed(format!("no *.yaml policy files in {}", dir.display())));
            }
            let result = if remote {
                let mut client = connect().await?;
                client
                    .validate_policies(policy::ValidatePoliciesRequest { sources })
                    .await
                    .map_err(explain)?
                    .into_inner()
            } else {
                validate_offline(sources)
            };
            if args.output == Output::Json {
                print_json(serde_json::json!({
                    "valid": result.valid, "policy_version": result.policy_version, "rules": result.rule_count,
                    "limits": result.limit_count,
                    "errors": result.errors.iter().map(|e| serde_json::json!({"file": e.file, "line": e.line, "rule": e.rule, "message": e.message})).collect::<Vec<_>>(),
                }));
            }
            if result.valid {
                if args.output == Output::Table {
                    println!(
                        "valid: {} rules, {} limits (version {})",
                        result.rule_count, result.limit_count, result.policy_version
                    );
                }
                Ok(())
            } else {
                print_policy_errors(&result.errors);
                Err(Failure::Failed(format!("{} error(s) in {}", result.errors.len(), dir.display())))
            }
        }
        PolicyCommand::Reload => {
            let mut client = connect().await?;
            let result = client.reload_policies(policy::ReloadPoliciesRequest {}).await.map_err(explain)?.into_inner();
            if result.reloaded {
                report(
                    args,
                    serde_json::json!({"reloaded": true, "policy_version": result.policy_version}),
                    format!("reloaded: version {}", result.policy_version),
                );
                Ok(())
            } else {
                print_policy_errors(&result.errors);
                Err(Failure::Failed(format!("reload rejected; version {} stays active", result.policy_version)))
            }
        }
        PolicyCommand::Show => {
            let mut client = connect().await?;
            let set = client.get_policies(policy::GetPoliciesRequest {}).await.map_err(explain)?.into_inner();
            let effect = |e: i32| match policy::Effect::try_from(e).unwrap_or(policy::Effect::Unspecified) {
                policy::Effect::Allow => "allow",
                policy::Effect::Deny => "deny",
                policy::Effect::RequireApproval => "require_approval",
                policy::Effect::Unspecified => "?",
            };
            if args.output == Output::Json {
                print_json(serde_json::json!({
                    "policy_version": set.policy_version, "policies_dir": set.policies_dir,
                    "rules": set.rules.iter().map(|r| serde_json::json!({"name": r.name, "file": r.file, "actions": r.actions, "agents": r.agents, "when": r.when, "effect": effect(r.effect), "reason": r.reason, "shadow": r.shadow})).collect::<Vec<_>>(),
                    "limits": set.limits.iter().map(|l| serde_json::json!({"name": l.name, "per": l.per, "max_requests": l.max_requests, "max_cost": l.max_cost, "window_seconds": l.window_seconds})).collect::<Vec<_>>(),
                }));
                return Ok(());
            }
            println!("version {} from {}", set.policy_version, set.policies_dir);
            println!("{:<28} {:<18} {:<24} WHEN", "RULE", "EFFECT", "ACTIONS");
            for r in &set.rules {
                let name = if r.shadow { format!("{} (shadow)", r.name) } else { r.name.clone() };
                println!("{name:<28} {:<18} {:<24} {}", effect(r.effect), r.actions.join(","), r.when);
            }
            Ok(())
        }
    }
}

fn field<'a>(s: &'a prost_types::Struct, key: &str) -> Option<&'a prost_types::value::Kind> {
    s.fields.get(key).and_then(|v| v.kind.as_ref())
}

fn field_str(s: &prost_types::Struct, key: &str) -> String {
    match field(s, key) {
        Some(prost_types::value::Kind::StringValue(text)) => text.clone(),
        _ => String::new(),
    }
}

fn field_num(s: &prost_types::Struct, key: &str) -> f64 {
    match field(s, key) {
        Some(prost_types::value::Kind::NumberValue(n)) => *n,
        _ => 0.0,
    }
}

/// The request a recorded decision was made for, if the event carries it.
fn recorded_request(
    payload: &prost_types::Struct,
    sensitive: Option<&prost_types::Struct>,
) -> Option<(policy::Agent, policy::Action)> {
    use prost_types::value::Kind;
    let Some(Kind::StructValue(agent)) = field(payload, "agent") else { return None };
    let roles = match field(agent, "roles") {
        Some(Kind::ListValue(list)) => list
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let labels = match field(agent, "labels") {
        Some(Kind::StructValue(labels)) => labels.fields.keys().map(|k| (k.clone(), field_str(labels, k))).collect(),
        _ => Default::default(),
    };
    let mut params = match field(payload, "params") {
        Some(Kind::StructValue(params)) => Some(params.clone()),
        _ => None,
    };
    // Personal params are kept encrypted; the audit service decrypts them
    // for an auditor unless the subject was forgotten.
    if let Some(Kind::StructValue(private)) = sensitive.and_then(|s| field(s, "params")) {
        params.get_or_insert_with(Default::default).fields.extend(private.fields.clone());
    }
    Some((
        policy::Agent {
            id: field_str(agent, "id"),
            name: field_str(agent, "name"),
            roles,
            confidence: field_num(agent, "confidence"),
            labels,
        },
        policy::Action {
            r#type: field_str(payload, "action"),
            resource: field_str(payload, "resource"),
            estimated_cost: field_num(payload, "estimated_cost"),
            params,
        },
    ))
}

/// Decisions that would change one way (old -> new effect).
#[derive(Debug, Default)]
struct Change {
    count: usize,
    /// The candidate set's deciding rules, with how often each decided.
    rules: std::collections::BTreeMap<String, usize>,
    samples: Vec<String>,
}

async fn replay(
    args: &RemoteArgs,
    dir: &std::path::Path,
    since: Duration,
    limit: usize,
    sample: usize,
) -> Result<(), Failure> {
    use std::collections::BTreeMap;
    let candidate = warden_policy::policy::load_dir(dir).map_err(|errors| {
        for e in &errors {
            eprintln!("{}:{}: rule {}: {}", e.file, e.line, e.rule, e.message);
        }
        Failure::Failed(format!("the candidate policies in {} do not load", dir.display()))
    })?;
    let mut client = AuditServiceClient::new(args.channel(&args.audit_addr).await?)
        .max_decoding_message_size(warden_contract::bounds::MESSAGE_BYTES);
    let start = std::time::SystemTime::now() - since;
    let (mut total, mut unchanged, mut skipped) = (0usize, 0usize, 0usize);
    // Events recorded before `rules_effect` existed: compared with their
    // final effect, which a kill switch, a limit or an approval may have set.
    let mut final_only = 0usize;
    let mut changes: BTreeMap<(String, String), Change> = BTreeMap::new();
    let mut token = String::new();
    'pages: loop {
        let query = audit::QueryRequest {
            event_types: vec!["policy_evaluation".into()],
            start_time: Some(prost_types::Timestamp::from(start)),
            page_size: 1000,
            page_token: token.clone(),
            ..Default::default()
        };
        let page = client.query(query).await.map_err(explain)?.into_inner();
        for record in page.records {
            if total + skipped >= limit {
                break 'pages;
            }
            let Some(event) = record.event else { continue };
            let Some(payload) = event.payload else {
                skipped += 1;
                continue;
            };
            let Some((agent, action)) = recorded_request(&payload, event.sensitive.as_ref()) else {
                skipped += 1;
                continue;
            };
            total += 1;
            // The time the rules saw: `evaluated_at` when a principal
            // evaluated at another time, else when it was decided.
            let time = chrono::DateTime::parse_from_rfc3339(&field_str(&payload, "evaluated_at"))
                .map(|t| t.to_utc())
                .ok()
                .or_else(|| {
                    event.time.as_ref().and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
                })
                .unwrap_or_else(chrono::Utc::now);
            let input = warden_policy::cel::Input {
                agent: &agent,
                action: &action,
                time,
                correlation_id: &event.correlation_id,
            };
            let (decision, _) = warden_policy::decision::decide_rules(&candidate, &input);
            // What the rules said then, before kill switches, limits and
            // approvals (events recorded before `rules_effect` existed
            // carry the final effect only).
            let old = match field_str(&payload, "rules_effect") {
                rules if rules.is_empty() => {
                    final_only += 1;
                    field_str(&payload, "effect")
                }
                rules => rules,
            };
            let new = decision.effect.as_str().to_owned();
            if old == new {
                unchanged += 1;
                continue;
            }
            let entry = changes.entry((old, new)).or_default();
            entry.count += 1;
            for rule in decision.matched() {
                *entry.rules.entry(rule).or_default() += 1;
            }
            if entry.samples.len() < sample {
                entry.samples.push(format!(
                    "{} {} {} on {} (event {}, {})",
                    seconds(&event.time),
                    agent.id,
                    action.r#type,
                    action.resource,
                    record.sequence,
                    decision.reasons().join("; ")
                ));
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if args.output == Output::Json {
        print_json(serde_json::json!({
            "replayed": total, "unchanged": unchanged, "skipped": skipped, "compared_with_final_effect": final_only,
            "policy_version": candidate.version.to_string(),
            "changes": changes.iter().map(|((old, new), change)| serde_json::json!({
                "from": old, "to": new, "count": change.count, "rules": change.rules, "samples": change.samples})).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    println!(
        "replayed {total} decisions from the last {} against {} ({}): {unchanged} unchanged, {} would change{}",
        humantime::format_duration(since),
        dir.display(),
        candidate.version,
        total - unchanged,
        if skipped > 0 { format!(" ({skipped} recorded without their request were skipped)") } else { String::new() }
    );
    if final_only > 0 {
        println!(
            "  {final_only} recorded before decisions kept the rules' own effect: compared with their final effect \
             (a kill switch, a limit or an approval may have set it)"
        );
    }
    for ((old, new), change) in &changes {
        let rules: Vec<String> = change.rules.iter().map(|(rule, n)| format!("{rule} ({n})")).collect();
        println!("  {old} -> {new}: {}   rules: {}", change.count, rules.join(", "));
        for example in &change.samples {
            println!("    {example}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod causal_tests {
    use warden_proto::audit::v1 as audit;

    fn record(sequence: u64, event_id: &str, event_type: &str, decision_id: &str) -> audit::AuditRecord {
        let mut payload = prost_types::Struct::default();
        if !decision_id.is_empty() {
            let value = prost_types::value::Kind::StringValue(decision_id.into());
            payload.fields.insert("decision_id".into(), prost_types::Value { kind: Some(value) });
        }
        audit::AuditRecord {
            sequence,
            event: Some(audit::AuditEvent {
                event_id: event_id.into(),
                event_type: event_type.into(),
                payload: Some(payload),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The seeds' flow as the log holds it: the agent's outcome first,
    /// the approval's events and the allowing decision after it.
    #[test]
    fn an_outcome_reads_after_the_decision_that_allowed_it() {
        let log = vec![
            record(16, "d-ask", "policy_evaluation", ""),
            record(17, "done", "action_completed", "d-allow"),
            record(18, "r", "approval_reviewed", ""),
            record(19, "g", "approval_granted", ""),
            record(20, "x", "approval_redeemed", "d-allow"),
            record(21, "d-allow", "policy_evaluation", ""),
            record(22, "other", "action_completed", "not-here"),
        ];
        let ordered: Vec<(u64, Option<u64>)> =
            super::causal_order(log).into_iter().map(|(r, after)| (r.sequence, after)).collect();
        assert_eq!(ordered, [(16, None), (18, None), (19, None), (20, None), (21, None), (17, Some(21)), (22, None)]);
    }
}
