//! The MCP gateway with MCP software nobody here wrote: an upstream server
//! built with the official Python SDK (`tests/mcp/upstream.py`, which logs
//! every call it receives), agents on rmcp's client and on the Python
//! SDK's Streamable HTTP client (`tests/mcp/agent.py`), in front of real
//! policy engine, approval and audit services with authentication on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, JsonObject};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use tokio::io::AsyncBufReadExt;
use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_audit::AuditServer;
use warden_auth::Kind;
use warden_mcp_gateway::{GatewayConfig, GatewayServer};
use warden_policy_engine::PolicyEngine;
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_proto::policy::v1 as policy;
use warden_proto::policy::v1::policy_service_client::PolicyServiceClient;
use warden_tests::identity::{self, Keys, bearer};
use warden_tests::{Sandbox, channel, eventually};

const POLICY: &str = r#"
rules:
  - name: refunds-over-100
    actions: ["issue_refund"]
    when: "action.params.amount > 100.0"
    effect: require_approval
    reason: "refunds over 100 need a manager"
  - name: support-never-deletes
    actions: ["billing.delete_record"]
    agents: ["support-bot"]
    effect: deny
    reason: "support agents never delete records"
  - name: mail-stays-inside
    actions: ["billing.send_email"]
    when: "!action.params.to.endsWith('@example.com')"
    effect: deny
    reason: "mail only to example.com"
  - name: cost-cap
    when: "action.estimated_cost > 10000.0"
    effect: deny
    reason: "over the cost cap"
  - name: unsure-agents-wait
    when: "agent.confidence < 0.5"
    effect: deny
    reason: "the agent is unsure"
  - name: agents-may-work
    effect: allow
"#;

const UPSTREAM_TOKEN: &str = "upstream-only-secret";

/// The whole stack: services, the Python upstream and the gateway.
struct Stack {
    sandbox: Sandbox,
    keys: Keys,
    audit: AuditServer,
    approval: ApprovalServer,
    engine: PolicyEngine,
    gateway: GatewayServer,
    upstream: Option<tokio::process::Child>,
    calls_log: PathBuf,
    python: String,
}

fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp").join(name)
}

/// Starts the Python upstream over HTTP; returns it and its port.
async fn start_upstream(python: &str, log: &Path) -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new(python)
        .arg(python_script("upstream.py"))
        .args(["--transport", "http", "--token", UPSTREAM_TOKEN, "--log"])
        .arg(log)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python upstream");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let port = line.strip_prefix("LISTENING ").unwrap_or_else(|| panic!("upstream said {line:?}")).parse().unwrap();
    (child, port)
}

struct Options {
    approval_wait: Duration,
    /// The gateway key's `agents`.
    gateway_agents: &'static [&'static str],
    policy_engine_url: Option<String>,
    /// Upstreams YAML; `{port}`, `{python}`, `{upstream}`, `{log}` and
    /// `{token_file}` are filled in.
    upstreams: &'static str,
    /// The gateway's database (its outbox); SQLite in its data dir when `None`.
    database_url: Option<String>,
}

const HTTP_UPSTREAM: &str = r#"
upstreams:
  - name: billing
    url: http://127.0.0.1:{port}/mcp
    bearer: file:{token_file}
    timeout: 5s
    retries: 2
    breaker_failures: 50
    tools:
      refund: { action: issue_refund, resource: "order/{{order_id}}", cost: amount }
"#;

impl Default for Options {
    fn default() -> Self {
        Options {
            approval_wait: Duration::from_secs(30),
            gateway_agents: &["*"],
            policy_engine_url: None,
            upstreams: HTTP_UPSTREAM,
            database_url: None,
        }
    }
}

async fn stack(options: Options) -> Option<Stack> {
    let python = warden_tests::python::interpreter()?;
    let sandbox = Sandbox::new(&[("tools.yaml", POLICY)]);
    let mut keys = identity::keys(sandbox.data.path());
    keys.add("gateway", "mcp-gateway", Kind::Service, &["service"], options.gateway_agents);
    keys.add("ops-bot", "ops-bot", Kind::Agent, &["agent"], &[]);
    for (i, name) in AGENTS.iter().enumerate() {
        keys.add(name, &format!("agent-{i}"), Kind::Agent, &["agent"], &[]);
    }
    keys.save();
    let audit = keys.audit(&sandbox.data.path().join("audit")).await;
    let mut approval_config = ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    approval_config.auth = keys.auth();
    approval_config.audit_url = audit.url();
    approval_config.outbound.credential = keys.token("service").into();
    approval_config.outbox_interval = Duration::from_millis(20);
    approval_config.watch_poll = Duration::from_millis(50);
    let approval = ApprovalServer::start(approval_config).await.unwrap();
    let engine = PolicyEngine::start(sandbox.secured_config(&keys, &audit.url(), &approval.url())).await.unwrap();

    let calls_log = sandbox.data.path().join("calls.jsonl");
    let (upstream, port) = if options.upstreams.contains("{port}") {
        let (child, port) = start_upstream(&python, &calls_log).await;
        (Some(child), port)
    } else {
        (None, 0)
    };
    let token_file = sandbox.data.path().join("upstream-token");
    std::fs::write(&token_file, UPSTREAM_TOKEN).unwrap();
    let upstreams = options
        .upstreams
        .replace("{port}", &port.to_string())
        .replace("{python}", &python)
        .replace("{upstream}", &python_script("upstream.py").display().to_string())
        .replace("{log}", &calls_log.display().to_string())
        .replace("{token_file}", &token_file.display().to_string())
        .replace("{{", "{")
        .replace("}}", "}");
    let upstreams_file = sandbox.data.path().join("upstreams.yaml");
    std::fs::write(&upstreams_file, upstreams).unwrap();
    let engine_url = options.policy_engine_url.clone().unwrap_or_else(|| engine.url());
    let mut config = GatewayConfig::for_tests(sandbox.data.path().join("gateway"), &upstreams_file, &engine_url);
    config.auth = keys.auth();
    config.approval_url = approval.url();
    config.audit_url = audit.url();
    config.outbound.credential = keys.token("gateway").into();
    config.approval_wait = options.approval_wait;
    config.progress_interval = Duration::from_millis(200);
    config.refresh_interval = Duration::from_millis(200);
    config.outbox_interval = Duration::from_millis(20);
    if let Some(url) = &options.database_url {
        config.database_url = url.clone();
    }
    let gateway = GatewayServer::start(config).await.unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    // The upstreams' tools are known (an upstream still starting is listed
    // at the next refresh).
    let known = gateway.gateway.clone();
    eventually(Duration::from_secs(30), || {
        let known = known.clone();
        async move { known.upstreams.iter().all(|u| !u.tools().is_empty()).then_some(()) }
    })
    .await;
    Some(Stack { sandbox, keys, audit, approval, engine, gateway, upstream, calls_log, python })
}

const AGENTS: [&str; 10] = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"];

/// An rmcp client that counts `notifications/tools/list_changed`.
#[derive(Clone, Default)]
struct Agent {
    list_changed: Arc<AtomicUsize>,
}

impl ClientHandler for Agent {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.fetch_add(1, Ordering::SeqCst);
    }
}

async fn connect(stack: &Stack, token: &str) -> RunningService<RoleClient, Agent> {
    connect_to(&stack.gateway.mcp_url(), token).await.unwrap_or_else(|e| panic!("cannot connect: {e}"))
}

async fn connect_to(url: &str, token: &str) -> Result<RunningService<RoleClient, Agent>, String> {
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token.to_owned());
    Agent::default().serve(StreamableHttpClientTransport::from_config(config)).await.map_err(|e| e.to_string())
}

fn args(json: serde_json::Value) -> JsonObject {
    json.as_object().unwrap().clone()
}

async fn call(client: &RunningService<RoleClient, Agent>, tool: &str, arguments: serde_json::Value) -> CallToolResult {
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args(arguments));
    tokio::time::timeout(Duration::from_secs(60), client.peer().call_tool(params))
        .await
        .expect("the call answered in time")
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

/// A call whose `_meta` has `key: value`.
async fn call_with_meta(
    client: &RunningService<RoleClient, Agent>,
    tool: &str,
    arguments: serde_json::Value,
    key: &str,
    value: serde_json::Value,
) -> CallToolResult {
    let mut params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args(arguments));
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.insert(key.to_owned(), value);
    params.meta = Some(meta);
    client.peer().call_tool(params).await.unwrap()
}

fn text(result: &CallToolResult) -> String {
    result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join("\n")
}

/// What the upstream received, in order.
fn received(stack: &Stack) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&stack.calls_log)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn trail(stack: &Stack, agent: &str, event_type: &str, wanted: usize) -> Vec<audit::AuditRecord> {
    let client = AuditServiceClient::new(channel(&stack.audit.url()).await);
    let token = stack.keys.token("auditor").to_owned();
    eventually(Duration::from_secs(20), || {
        let (mut client, token) = (client.clone(), token.clone());
        let request = audit::QueryRequest {
            agent_id: agent.to_owned(),
            event_types: vec![event_type.to_owned()],
            page_size: 1000,
            ..Default::default()
        };
        async move {
            let records = client.query(bearer(tonic::Request::new(request), &token)).await.ok()?.into_inner().records;
            (records.len() >= wanted).then_some(records)
        }
    })
    .await
}

fn field(record: &audit::AuditRecord, name: &str) -> serde_json::Value {
    let payload = record.event.as_ref().unwrap().payload.as_ref().unwrap();
    warden_client::json::struct_to_json(payload)[name].clone()
}

impl Stack {
    async fn stop(mut self) {
        self.gateway.shutdown().await;
        self.engine.shutdown().await;
        self.approval.shutdown().await;
        self.audit.shutdown().await;
        if let Some(mut upstream) = self.upstream.take() {
            let _ = upstream.kill().await;
        }
    }

    async fn approve_pending(&self, agent: &str) -> String {
        use warden_proto::approval::v1 as pb;
        let client = warden_proto::approval::v1::approval_service_client::ApprovalServiceClient::new(
            channel(&self.approval.url()).await,
        );
        let token = self.keys.token("approver").to_owned();
        let id = eventually(Duration::from_secs(30), || {
            let (mut client, token) = (client.clone(), token.clone());
            async move {
                let list = pb::ListApprovalsRequest { reviewable_by_me: true, ..Default::default() };
                let pending = client.list_approvals(bearer(tonic::Request::new(list), &token)).await.ok()?.into_inner();
                pending.approvals.into_iter().find(|a| a.agent_id == agent).map(|a| a.id)
            }
        })
        .await;
        let approve = ["--approval-addr", &self.approval.url(), "--api-key", &token, "approvals", "approve", &id];
        let (code, out, err) = warden_tests::wardenctl::run(approve.iter().map(|s| s.to_string()).collect()).await;
        assert_eq!(code, 0, "{out}{err}");
        id
    }
}

#[tokio::test]
async fn allowed_calls_reach_the_upstream_with_exactly_their_arguments_and_are_recorded() {
    let Some(stack) = stack(Options::default()).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    let tools: Vec<String> =
        client.peer().list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    assert!(tools.contains(&"billing__refund".to_string()), "{tools:?}");
    assert!(tools.contains(&"billing__lookup".to_string()), "{tools:?}");

    let arguments = serde_json::json!({"order_id": "A-42", "amount": 40.5, "note": "damaged ✓ \"box\""});
    let result = call(&client, "billing__refund", arguments.clone()).await;
    assert_ne!(result.is_error, Some(true), "{}", text(&result));
    assert_eq!(text(&result), "refunded 40.5 on A-42");
    let got = received(&stack);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((&got[0]["tool"], &got[0]["arguments"]), (&serde_json::json!("refund"), &arguments));

    // The decision (as the agent, with the resource from the template) and
    // what the tool did are both on the agent's trail, tied by the decision.
    let decisions = trail(&stack, "support-bot", "policy_evaluation", 1).await;
    let decision = decisions.last().unwrap();
    assert_eq!(field(decision, "agent")["confidence"], 1.0, "the SDK's default");
    assert_eq!(field(decision, "action"), "issue_refund");
    assert_eq!(field(decision, "resource"), "order/A-42");
    assert_eq!(field(decision, "params")["amount"], 40.5);
    let decision_id = decision.event.as_ref().unwrap().event_id.clone();
    let completed = trail(&stack, "support-bot", "action_completed", 1).await;
    assert_eq!(field(&completed[0], "decision_id"), decision_id.as_str());
    assert_eq!(field(&completed[0], "status"), "success");
    assert!(completed[0].event.as_ref().unwrap().correlation_id.starts_with("mcp:"));
    stack.stop().await;
}

#[tokio::test]
async fn denied_hidden_and_unknown_calls_never_reach_the_upstream() {
    let Some(stack) = stack(Options::default()).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    // Unconditionally denied to this agent: not listed.
    let tools: Vec<String> =
        client.peer().list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    assert!(!tools.contains(&"billing__delete_record".to_string()), "{tools:?}");
    assert!(tools.contains(&"billing__send_email".to_string()), "conditional denials are decided per call: {tools:?}");

    let denied = call(&client, "billing__send_email", serde_json::json!({"to": "x@evil.test", "subject": "hi"})).await;
    assert_eq!(denied.is_error, Some(true));
    let message = text(&denied);
    assert!(message.contains("Warden denied this call: mail only to example.com (decision "), "{message}");
    // Called anyway, the hidden tool is denied with the rule's reason.
    let hidden = call(&client, "billing__delete_record", serde_json::json!({"record_id": "7"})).await;
    assert!(text(&hidden).contains("support agents never delete records"), "{}", text(&hidden));
    for name in ["billing__nope", "nobody__refund", "billing", "__refund", "billing__refund__x", ""] {
        let unknown = call(&client, name, serde_json::json!({})).await;
        assert!(text(&unknown).starts_with("unknown tool"), "{name}: {}", text(&unknown));
    }
    // Hostile arguments: a resource the template cannot make, numbers the
    // policy could not see exactly, arguments too large to decide on.
    let missing = call(&client, "billing__refund", serde_json::json!({"amount": 1})).await;
    assert!(text(&missing).contains("argument \"order_id\""), "{}", text(&missing));
    let inexact =
        call(&client, "billing__refund", serde_json::json!({"order_id": "1", "amount": 9007199254740993u64})).await;
    assert!(text(&inexact).contains("cannot be decided on exactly"), "{}", text(&inexact));
    let huge = call(
        &client,
        "billing__refund",
        serde_json::json!({"order_id": "1", "amount": 1, "note": "x".repeat(100_000)}),
    )
    .await;
    assert!(text(&huge).starts_with("invalid arguments"), "{}", text(&huge));
    let mut nested = serde_json::json!("deep");
    for _ in 0..40 {
        nested = serde_json::json!({ "a": nested });
    }
    let deep =
        call(&client, "billing__refund", serde_json::json!({"order_id": "1", "amount": 1, "note": nested})).await;
    assert!(text(&deep).starts_with("invalid arguments"), "{}", text(&deep));
    // The cost comes from the argument the mapping names; a confidence, from
    // the client's _meta (1.0, the SDK's default, without one).
    let costly = call(&client, "billing__refund", serde_json::json!({"order_id": "1", "amount": 20000})).await;
    assert!(text(&costly).contains("over the cost cap"), "{}", text(&costly));
    let priceless = call(&client, "billing__refund", serde_json::json!({"order_id": "1", "amount": "lots"})).await;
    assert!(text(&priceless).contains("the call's cost, must be a number"), "{}", text(&priceless));
    use warden_mcp_gateway::gateway::{CONFIDENCE_META, CORRELATION_META};
    for (key, value, expected) in [
        (CONFIDENCE_META, serde_json::json!(0.2), "the agent is unsure"),
        (CONFIDENCE_META, serde_json::json!("high"), "must be a number from 0 to 1"),
        (CONFIDENCE_META, serde_json::json!(1.5), "must be a number from 0 to 1"),
        (CONFIDENCE_META, serde_json::json!(-0.1), "must be a number from 0 to 1"),
        (CORRELATION_META, serde_json::json!("x".repeat(129)), "must be 1 to 128 printable ASCII"),
        (CORRELATION_META, serde_json::json!("a\nb"), "must be 1 to 128 printable ASCII"),
        (CORRELATION_META, serde_json::json!(7), "must be 1 to 128 printable ASCII"),
        (CORRELATION_META, serde_json::json!(""), "must be 1 to 128 printable ASCII"),
    ] {
        let answer = call_with_meta(&client, "billing__lookup", serde_json::json!({"order_id": "1"}), key, value).await;
        assert!(text(&answer).contains(expected), "{key} {}", text(&answer));
    }
    assert!(received(&stack).is_empty(), "{:?}", received(&stack));

    // Allowed to another agent (the rule names support-bot), who sees it.
    let ops = connect(&stack, stack.keys.token("ops-bot")).await;
    let tools: Vec<String> =
        ops.peer().list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    assert!(tools.contains(&"billing__delete_record".to_string()), "{tools:?}");
    stack.stop().await;
}

#[tokio::test]
async fn a_held_call_completes_once_approved_and_other_arguments_need_their_own_approval() {
    let Some(stack) = stack(Options::default()).await else { return };
    // The Python SDK's client, asking for progress while it is held.
    let steps = serde_json::json!([
        {"call": "billing__refund", "arguments": {"order_id": "B-7", "amount": 150}, "progress": true}
    ]);
    let agent = tokio::process::Command::new(&stack.python)
        .arg(python_script("agent.py"))
        .args([&stack.gateway.mcp_url(), stack.keys.token("agent"), &steps.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(received(&stack).is_empty(), "held, not forwarded");
    let first_id = stack.approve_pending("support-bot").await;
    let output = tokio::time::timeout(Duration::from_secs(60), agent.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let answer: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(answer["is_error"], false, "{answer}");
    assert_eq!(answer["text"], "refunded 150.0 on B-7");
    let progress = answer["progress"].as_array().unwrap();
    assert!(progress.iter().any(|m| m.as_str().unwrap_or_default().contains("waiting for a person")), "{answer}");
    let got = received(&stack);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["arguments"], serde_json::json!({"order_id": "B-7", "amount": 150.0, "note": ""}));

    // The same refund with one argument changed is another action: held
    // for an approval of its own, never forwarded on the first one's grant.
    let client = connect(&stack, stack.keys.token("agent")).await;
    let mut params = CallToolRequestParams::new("billing__refund")
        .with_arguments(args(serde_json::json!({"order_id": "B-7", "amount": 151})));
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.insert(warden_mcp_gateway::gateway::APPROVAL_META.to_owned(), serde_json::json!(first_id));
    params.meta = Some(meta);
    let changed = tokio::spawn({
        let peer = client.peer().clone();
        async move { peer.call_tool(params).await }
    });
    let second = stack.approve_pending("support-bot").await;
    let changed = changed.await.unwrap().unwrap();
    assert_ne!(changed.is_error, Some(true), "{}", text(&changed));
    assert_ne!(second, first_id);
    assert_eq!(received(&stack).len(), 2);
    stack.stop().await;
}

#[tokio::test]
async fn a_call_held_past_the_wait_names_its_approval_and_the_same_call_later_redeems_it_once() {
    let options = Options { approval_wait: Duration::from_millis(500), ..Options::default() };
    let Some(stack) = stack(options).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    let refund = serde_json::json!({"order_id": "C-1", "amount": 300});
    let held = call(&client, "billing__refund", refund.clone()).await;
    assert_eq!(held.is_error, Some(true));
    let message = text(&held);
    assert!(message.starts_with("Held for approval: approval "), "{message}");
    assert!(message.contains("refunds over 100 need a manager"), "{message}");
    let id = stack.approve_pending("support-bot").await;
    assert!(message.contains(&id), "{message} names {id}");
    assert!(received(&stack).is_empty());

    // Another agent naming that grant in its _meta does not spend it: the
    // grant is support-bot's; ops-bot's call is held for its own.
    let ops = connect(&stack, stack.keys.token("ops-bot")).await;
    let stolen = call_with_meta(
        &ops,
        "billing__refund",
        refund.clone(),
        warden_mcp_gateway::gateway::APPROVAL_META,
        serde_json::json!(id),
    )
    .await;
    assert!(text(&stolen).starts_with("Held for approval") && !text(&stolen).contains(&id), "{}", text(&stolen));
    // Once approved, the same call goes through, on that grant.
    let done = call(&client, "billing__refund", refund.clone()).await;
    assert_eq!(text(&done), "refunded 300.0 on C-1");
    // A grant is spent once: the third time needs a new approval.
    let again = call(&client, "billing__refund", refund).await;
    assert!(text(&again).starts_with("Held for approval"), "{}", text(&again));
    assert!(!text(&again).contains(&id), "a new approval");
    assert_eq!(received(&stack).len(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn the_endpoint_wants_a_warden_credential_and_says_where_its_metadata_is() {
    let Some(stack) = stack(Options::default()).await else { return };
    let http = reqwest::Client::new();
    let url = stack.gateway.mcp_url();
    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let metadata_url = format!("http://{}/.well-known/oauth-protected-resource/mcp", stack.gateway.mcp_addr);
    for (token, status, challenge) in [
        (None, 401, format!("Bearer resource_metadata=\"{metadata_url}\"")),
        (Some("wdn_not-a-key"), 401, format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata_url}\"")),
        (
            Some(stack.keys.token("revoked")),
            401,
            format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata_url}\""),
        ),
        // A credential without the role to ask for decisions.
        (
            Some(stack.keys.token("approver")),
            403,
            format!("Bearer error=\"insufficient_scope\", resource_metadata=\"{metadata_url}\""),
        ),
    ] {
        let mut request = http.post(&url).header("accept", "application/json, text/event-stream").json(&initialize);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"].to_str().unwrap(), challenge);
    }
    let metadata: serde_json::Value = http.get(&metadata_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(metadata["resource"], url);
    assert_eq!(metadata["bearer_methods_supported"], serde_json::json!(["header"]));
    // The upstream's credential never reaches an agent: not in the tools,
    // not in answers.
    let client = connect(&stack, stack.keys.token("agent")).await;
    let listed = serde_json::to_string(&client.peer().list_all_tools().await.unwrap()).unwrap();
    assert!(!listed.contains(UPSTREAM_TOKEN));
    // rmcp's client sees the refusal as an authorization error.
    let refused = connect_to(&url, "wdn_nope").await.err().unwrap();
    assert!(refused.to_lowercase().contains("auth") || refused.contains("401"), "{refused}");
    stack.stop().await;
}

#[tokio::test]
async fn an_agent_acts_only_as_itself_and_the_gateway_only_for_its_agents() {
    let options = Options { gateway_agents: &["support-*", "ops-bot"], ..Options::default() };
    let Some(stack) = stack(options).await else { return };
    // Naming another agent in the arguments or the meta changes nothing: the
    // decision is the authenticated principal's.
    let ops = connect(&stack, stack.keys.token("ops-bot")).await;
    let mut params = CallToolRequestParams::new("billing__delete_record")
        .with_arguments(args(serde_json::json!({"record_id": "9", "agent_id": "support-bot"})));
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.insert("agent_id".to_owned(), serde_json::json!("support-bot"));
    params.meta = Some(meta);
    let done = ops.peer().call_tool(params).await.unwrap();
    assert_eq!(text(&done), "deleted 9");
    let decisions = trail(&stack, "ops-bot", "policy_evaluation", 1).await;
    assert_eq!(field(&decisions[0], "agent")["id"], "ops-bot");
    // An agent the gateway's key does not list: refused by the engine,
    // never forwarded.
    let stranger = connect(&stack, stack.keys.token("a0")).await;
    let refused = call(&stranger, "billing__lookup", serde_json::json!({"order_id": "1"})).await;
    assert!(text(&refused).contains("may not act as agent agent-0"), "{}", text(&refused));
    assert_eq!(received(&stack).len(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn the_kill_switch_and_an_unreachable_engine_deny_every_call() {
    let Some(stack) = stack(Options::default()).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    let mut admin = PolicyServiceClient::new(channel(&stack.engine.url()).await);
    let engage = policy::SetKillSwitchRequest { agent_id: String::new(), engaged: true, reason: "incident 7".into() };
    admin.set_kill_switch(bearer(tonic::Request::new(engage), stack.keys.token("admin"))).await.unwrap();
    let denied = call(&client, "billing__lookup", serde_json::json!({"order_id": "1"})).await;
    assert!(text(&denied).starts_with("Warden denied this call"), "{}", text(&denied));
    assert!(text(&denied).contains("incident 7"), "{}", text(&denied));
    assert!(received(&stack).is_empty());
    stack.stop().await;

    // A gateway whose policy engine is down: denied, fail closed.
    let options = Options { policy_engine_url: Some("http://127.0.0.1:1".into()), ..Options::default() };
    let Some(stack) = self::stack(options).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    let started = tokio::time::Instant::now();
    let denied = call(&client, "billing__lookup", serde_json::json!({"order_id": "1"})).await;
    assert!(text(&denied).contains("policy engine could not be reached"), "{}", text(&denied));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(received(&stack).is_empty());
    stack.stop().await;
}

#[tokio::test]
async fn an_upstream_down_is_a_clear_tool_error_without_hanging() {
    let Some(mut stack) = stack(Options::default()).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    assert_eq!(text(&call(&client, "billing__lookup", serde_json::json!({"order_id": "1"})).await), "order 1: shipped");
    let mut upstream = stack.upstream.take().unwrap();
    upstream.kill().await.unwrap();
    let started = tokio::time::Instant::now();
    let failed = call(&client, "billing__refund", serde_json::json!({"order_id": "2", "amount": 5})).await;
    assert_eq!(failed.is_error, Some(true));
    assert!(text(&failed).contains("upstream billing"), "{}", text(&failed));
    assert!(text(&failed).contains("Warden allowed the call"), "{}", text(&failed));
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let completed = trail(&stack, "support-bot", "action_completed", 2).await;
    let failure = completed.iter().find(|r| field(r, "status") == "failure").expect("the failure is recorded");
    assert_eq!(field(failure, "error_class"), "unavailable");
    stack.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_calls_from_ten_agents_each_get_their_own_decision() {
    let Some(stack) = stack(Options::default()).await else { return };
    let mut clients = Vec::new();
    for name in AGENTS {
        clients.push(Arc::new(connect(&stack, stack.keys.token(name)).await));
    }
    let mut calls = tokio::task::JoinSet::new();
    for (agent, client) in clients.iter().enumerate() {
        for n in 0..10 {
            let client = client.clone();
            calls.spawn(async move {
                let order = format!("agent-{agent}-order-{n}");
                let result =
                    call(&client, "billing__refund", serde_json::json!({"order_id": order, "amount": n})).await;
                (order, text(&result))
            });
        }
    }
    while let Some(done) = calls.join_next().await {
        let (order, answer) = done.unwrap();
        assert_eq!(answer, format!("refunded {}.0 on {order}", order.rsplit('-').next().unwrap()));
    }
    assert_eq!(received(&stack).len(), 100);
    for agent in 0..10 {
        let decisions = trail(&stack, &format!("agent-{agent}"), "policy_evaluation", 10).await;
        assert_eq!(decisions.len(), 10);
        for decision in &decisions {
            let resource = field(decision, "resource");
            assert!(resource.as_str().unwrap().starts_with(&format!("order/agent-{agent}-order-")), "{resource}");
        }
        let ids: std::collections::BTreeSet<_> =
            decisions.iter().map(|d| d.event.as_ref().unwrap().event_id.clone()).collect();
        assert_eq!(ids.len(), 10, "one decision per call");
    }
    stack.stop().await;
}

const STDIO_UPSTREAM: &str = r#"
upstreams:
  - name: files
    command: ["{python}", "{upstream}", "--transport", "stdio", "--log", "{log}"]
    timeout: 10s
"#;

#[tokio::test]
async fn a_stdio_upstream_that_crashes_is_started_again() {
    let options = Options { upstreams: STDIO_UPSTREAM, ..Options::default() };
    let Some(stack) = stack(options).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    assert_eq!(text(&call(&client, "files__lookup", serde_json::json!({"order_id": "1"})).await), "order 1: shipped");
    let crashed = call(&client, "files__crash", serde_json::json!({})).await;
    assert_eq!(crashed.is_error, Some(true), "{}", text(&crashed));
    let after = call(&client, "files__lookup", serde_json::json!({"order_id": "2"})).await;
    assert_eq!(text(&after), "order 2: shipped");
    let got = received(&stack);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_ne!(got[0]["pid"], got[2]["pid"], "a new process");
    stack.stop().await;
}

#[tokio::test]
async fn sessions_hear_when_the_policies_change_what_they_may_see() {
    let Some(stack) = stack(Options::default()).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    let before = client.peer().list_all_tools().await.unwrap();
    assert!(before.iter().any(|t| t.name == "billing__lookup"));
    stack.sandbox.write(
        "no-lookups.yaml",
        "rules:\n  - name: no-lookups\n    actions: [\"billing.lookup\"]\n    effect: deny\n    reason: \"closed\"\n",
    );
    let mut admin = PolicyServiceClient::new(channel(&stack.engine.url()).await);
    admin
        .reload_policies(bearer(tonic::Request::new(policy::ReloadPoliciesRequest {}), stack.keys.token("admin")))
        .await
        .unwrap();
    let heard = client.service().list_changed.clone();
    eventually(Duration::from_secs(10), || {
        let heard = heard.clone();
        async move { (heard.load(Ordering::SeqCst) > 0).then_some(()) }
    })
    .await;
    let after = client.peer().list_all_tools().await.unwrap();
    assert!(!after.iter().any(|t| t.name == "billing__lookup"));
    stack.stop().await;
}

#[tokio::test]
async fn the_client_config_the_readme_shows_connects_an_mcp_client() {
    let Some(stack) = stack(Options::default()).await else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("examples/mcp/client.json")).unwrap()).unwrap();
    let server = &config["mcpServers"]["support-desk"];
    assert_eq!(server["type"], "http");
    // The address `cargo xtask dev` serves; here, this test's gateway.
    let default = format!("http://{}/mcp", GatewayConfig::default().mcp_listen);
    assert_eq!(server["url"], default.as_str());
    let url = server["url"].as_str().unwrap().replace(&default, &stack.gateway.mcp_url());
    let mut headers = std::collections::HashMap::new();
    for (name, value) in server["headers"].as_object().unwrap() {
        let value = value.as_str().unwrap().replace("${WARDEN_API_KEY}", stack.keys.token("agent"));
        headers
            .insert(http::HeaderName::try_from(name.as_str()).unwrap(), http::HeaderValue::from_str(&value).unwrap());
    }
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(headers),
    );
    let client = Agent::default().serve(transport).await.unwrap();
    let answer = call(&client, "billing__lookup", serde_json::json!({"order_id": "9"})).await;
    assert_eq!(text(&answer), "order 9: shipped");
    stack.stop().await;
}

const EXAMPLE_TOOLS: &str = r#"
upstreams:
  - name: support
    command: ["{python}", "{example}", "--transport", "stdio"]
    tools:
      issue_refund: { action: issue_refund, resource: "order/{{order_id}}" }
"#;

#[tokio::test]
async fn the_example_tools_on_the_python_sdk_serve_behind_the_gateway() {
    // examples/mcp/server.py, which the compose stack runs over HTTP,
    // spawned by the gateway as a command here.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mcp/server.py");
    let upstreams: &'static str =
        Box::leak(EXAMPLE_TOOLS.replace("{example}", &example.display().to_string()).into_boxed_str());
    let Some(stack) = stack(Options { upstreams, ..Options::default() }).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    let mut tools: Vec<String> =
        client.peer().list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    tools.sort();
    assert_eq!(
        tools,
        ["support__delete_customer", "support__issue_refund", "support__lookup_order", "support__send_email"]
    );
    let done = call(&client, "support__issue_refund", serde_json::json!({"order_id": "77", "amount": 12.5})).await;
    assert_eq!(text(&done), "refunded 12.5 on order 77");
    let looked = call(&client, "support__lookup_order", serde_json::json!({"order_id": "77"})).await;
    assert_eq!(text(&looked), "order 77: shipped");
    stack.stop().await;
}

/// `warden-mcp-gateway stdio` for `agent` with `token`, as a local MCP
/// client spawns it, on this stack's upstreams and services.
async fn stdio_gateway(stack: &Stack, token: &str, agent: &str) -> RunningService<RoleClient, ()> {
    let binary = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("warden-mcp-gateway");
    // Built by `cargo test --workspace` for the package's own test,
    // services/mcp-gateway/tests/stdio_cli.rs.
    assert!(binary.exists(), "{} (built by cargo test --workspace)", binary.display());
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("stdio")
        .arg("--upstreams")
        .arg(stack.sandbox.data.path().join("upstreams.yaml"))
        .args(["--policy-engine-url", &stack.engine.url()])
        .args(["--approval-url", &stack.approval.url()])
        .args(["--audit-url", &stack.audit.url()])
        .arg("--data-dir")
        .arg(stack.sandbox.data.path().join(format!("stdio-{agent}-{}", &token[..12])))
        .env_remove("WARDEN_API_KEY")
        .env("WARDEN_API_KEY", token)
        .env("WARDEN_AGENT_ID", agent)
        .env("WARDEN__OUTBOX_INTERVAL", "20ms");
    let process = rmcp::transport::TokioChildProcess::new(command).unwrap();
    ().serve(process).await.unwrap()
}

#[tokio::test]
async fn a_stdio_gateway_serves_one_agent_on_its_own_credential() {
    let Some(stack) = stack(Options::default()).await else { return };
    let client = stdio_gateway(&stack, stack.keys.token("agent"), "support-bot").await;
    // The agent's key may not read the policies: every tool is listed, and
    // a denied one is still never called.
    let tools: Vec<String> =
        client.peer().list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    assert!(tools.contains(&"billing__delete_record".to_string()), "{tools:?}");
    let call = |name: &str, arguments: serde_json::Value| {
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(args(arguments));
        client.peer().call_tool(params)
    };
    assert_eq!(text(&call("billing__lookup", serde_json::json!({"order_id": "4"})).await.unwrap()), "order 4: shipped");
    let denied = call("billing__delete_record", serde_json::json!({"record_id": "4"})).await.unwrap();
    assert!(text(&denied).contains("support agents never delete records"), "{}", text(&denied));
    let completed = trail(&stack, "support-bot", "action_completed", 1).await;
    assert_eq!(field(&completed[0], "status"), "success");
    assert_eq!(received(&stack).len(), 1);
    client.cancel().await.unwrap();

    // Another principal's key naming this agent: the engine refuses it, so
    // nothing is called.
    let impostor = stdio_gateway(&stack, stack.keys.token("ops-bot"), "support-bot").await;
    let params =
        CallToolRequestParams::new("billing__lookup").with_arguments(args(serde_json::json!({"order_id": "5"})));
    let refused = impostor.peer().call_tool(params).await.unwrap();
    assert!(text(&refused).contains("may not act as agent support-bot"), "{}", text(&refused));
    assert_eq!(received(&stack).len(), 1);
    impostor.cancel().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn on_postgres_the_outbox_delivers_what_calls_did_and_refusals() {
    let Some(url) = warden_store::testing::postgres_url().await else { return };
    let Some(stack) = stack(Options { database_url: Some(url), ..Options::default() }).await else { return };
    let client = connect(&stack, stack.keys.token("agent")).await;
    for n in 0..3 {
        let done = call(&client, "billing__lookup", serde_json::json!({"order_id": n.to_string()})).await;
        assert_eq!(text(&done), format!("order {n}: shipped"));
    }
    let completed = trail(&stack, "support-bot", "action_completed", 3).await;
    assert_eq!(completed.len(), 3);
    assert!(completed.iter().all(|r| field(r, "status") == "success"));
    // A refused credential on the MCP endpoint is recorded through the same outbox.
    let refused =
        reqwest::Client::new().post(stack.gateway.mcp_url()).bearer_auth("wdn_nope").body("{}").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let client = AuditServiceClient::new(channel(&stack.audit.url()).await);
    let token = stack.keys.token("auditor").to_owned();
    eventually(Duration::from_secs(20), || {
        let (mut client, token) = (client.clone(), token.clone());
        let request =
            audit::QueryRequest { event_types: vec!["auth_denied".into()], page_size: 100, ..Default::default() };
        async move {
            let records = client.query(bearer(tonic::Request::new(request), &token)).await.ok()?.into_inner().records;
            records
                .iter()
                .any(|r| format!("{:?}", r.event.as_ref().unwrap().payload).contains("mcp-gateway"))
                .then_some(())
        }
    })
    .await;
    stack.stop().await;
}
