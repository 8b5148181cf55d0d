//! The HTTP surfaces follow the one role table: the approval inbox,
//! Alertmanager's API and the MCP gateway's endpoint answer each caller
//! exactly as
//! `warden_auth::authz::HTTP_TABLE` says (each route as the RPC it
//! mirrors), record refusals as `auth_denied` events, and throttle bad
//! credentials as gRPC does.

use std::time::Duration;

use tonic::Code;
use warden_alerting::{AlertingConfig, AlertingServer};
use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_audit::AuditServer;
use warden_auth::authz::{self, HttpRule};
use warden_mcp_gateway::{GatewayConfig, GatewayServer};
use warden_proto::approval::v1 as pb;
use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_tests::identity::{self, Keys, bearer};
use warden_tests::{Sandbox, channel, eventually, inbox};

struct Stack {
    _sandbox: Sandbox,
    keys: Keys,
    audit: AuditServer,
    approval: ApprovalServer,
    alerting: AlertingServer,
    gateway: GatewayServer,
}

/// Audit, approval (with its inbox), alerting (with its API) and the MCP
/// gateway (its upstream and policy engine not running: only its
/// admission is tested here), auth on.
async fn stack(bad_credentials_per_minute: u32) -> Stack {
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let mut auth = keys.auth();
    auth.bad_credentials_per_minute = bad_credentials_per_minute;
    let mut audit_config = warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"));
    audit_config.auth = keys.auth();
    let audit = AuditServer::start(audit_config).await.unwrap();
    let mut approval_config = ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    approval_config.auth = auth.clone();
    approval_config.http_listen = "127.0.0.1:0".into();
    approval_config.audit_url = audit.url();
    approval_config.outbound.credential = keys.token("service").into();
    approval_config.outbox_interval = Duration::from_millis(20);
    let approval = ApprovalServer::start(approval_config).await.unwrap();
    let mut alerting_config = AlertingConfig::for_tests(sandbox.data.path().join("alerting"));
    alerting_config.auth = auth.clone();
    alerting_config.audit_url = audit.url();
    alerting_config.outbound.credential = keys.token("alerting").into();
    alerting_config.outbox_interval = Duration::from_millis(20);
    let alerting = AlertingServer::start(alerting_config).await.unwrap();
    let upstreams = sandbox.data.path().join("upstreams.yaml");
    std::fs::write(&upstreams, "upstreams:\n  - name: down\n    url: http://127.0.0.1:1/mcp\n").unwrap();
    let mut gateway_config =
        GatewayConfig::for_tests(sandbox.data.path().join("gateway"), &upstreams, "http://127.0.0.1:1");
    gateway_config.auth = auth;
    gateway_config.audit_url = audit.url();
    gateway_config.outbound.credential = keys.token("service").into();
    gateway_config.outbox_interval = Duration::from_millis(20);
    let gateway = GatewayServer::start(gateway_config).await.unwrap();
    Stack { _sandbox: sandbox, keys, audit, approval, alerting, gateway }
}

impl Stack {
    fn inbox(&self) -> String {
        format!("http://{}", self.approval.http_addr.unwrap())
    }

    fn alertmanager(&self) -> String {
        format!("http://{}", self.alerting.http_addr.unwrap())
    }

    fn mcp(&self) -> String {
        format!("http://{}", self.gateway.mcp_addr)
    }

    /// A pending request for support-bot, opened as the policy engine does.
    async fn pending(&self) -> String {
        let mut client = ApprovalServiceClient::new(channel(&self.approval.url()).await);
        let create = pb::CreateApprovalRequest {
            agent_id: "support-bot".into(),
            action: Some(pb::Action { r#type: "issue_refund".into(), ..Default::default() }),
            requested_by: "support-bot".into(),
            ..Default::default()
        };
        client
            .create_approval(bearer(tonic::Request::new(create), self.keys.token("service")))
            .await
            .unwrap()
            .into_inner()
            .id
    }

    /// Every `auth_denied` event of `service`, once there are `wanted`.
    async fn denials(&self, service: &str, wanted: usize) -> Vec<audit::AuditEvent> {
        let client = AuditServiceClient::new(channel(&self.audit.url()).await);
        let token = self.keys.token("auditor").to_owned();
        eventually(Duration::from_secs(10), || {
            let (mut client, token) = (client.clone(), token.clone());
            async move {
                let query = audit::QueryRequest {
                    event_types: vec!["auth_denied".into()],
                    page_size: 1000,
                    ..Default::default()
                };
                let records = client.query(bearer(tonic::Request::new(query), &token)).await.ok()?.into_inner().records;
                let events: Vec<_> = records
                    .into_iter()
                    .filter_map(|r| r.event)
                    .filter(|e| {
                        matches!(
                            e.payload.as_ref().and_then(|p| p.fields.get("service")).and_then(|v| v.kind.as_ref()),
                            Some(prost_types::value::Kind::StringValue(s)) if s == service
                        )
                    })
                    .collect();
                (events.len() >= wanted).then_some(events)
            }
        })
        .await
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        self.alerting.shutdown().await;
        self.approval.shutdown().await;
        self.audit.shutdown().await;
    }
}

/// The callers: one key per role, and two bad credentials.
const CALLERS: &[&str] = &["agent", "approver", "admin", "auditor", "service", "operator", "revoked", "none"];

fn may(rule: &HttpRule, caller: &str) -> bool {
    authz::http_roles(rule, &Default::default()).iter().any(|role| role == caller)
}

/// The status a caller gets: 401 for a bad credential, 403 for a role the
/// table does not give, anything else (2xx, 3xx, 404, 409) for admitted.
fn expected(rule: &HttpRule, caller: &str, status: u16) -> bool {
    match caller {
        "revoked" | "none" => status == 401,
        _ if may(rule, caller) => status != 401 && status != 403,
        _ => status == 403,
    }
}

#[tokio::test]
async fn every_http_route_answers_each_caller_exactly_as_the_table_says() {
    let stack = stack(10_000).await;
    let http = inbox::client();
    let id = stack.pending().await;
    let silence = serde_json::json!({
        "matchers": [{"name": "alertname", "value": "X", "isRegex": false, "isEqual": true}],
        "startsAt": chrono::Utc::now().to_rfc3339(),
        "endsAt": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        "createdBy": "test",
        "comment": "matrix",
    });
    // Sessions of whoever may sign in (the pages need one).
    let mut sessions = std::collections::BTreeMap::new();
    let mut checked = 0;
    let login = authz::http_rule("inbox", "POST", "/login").unwrap();
    for caller in CALLERS {
        let token = if *caller == "none" { "" } else { stack.keys.token(caller) };
        let answer = inbox::sign_in(&http, &stack.inbox(), token).await;
        let status = answer.status().as_u16();
        assert!(expected(login, caller, status), "{caller} signing in: {status}");
        if may(login, caller) {
            assert_eq!(status, 303, "{caller}");
            sessions.insert(*caller, inbox::session_set_cookie(&answer).split(';').next().unwrap().to_owned());
        }
        checked += 1;
    }
    for rule in authz::HTTP_TABLE {
        for caller in CALLERS {
            let status = match rule.surface {
                "inbox" if rule.route == "/login" => continue,
                "inbox" => {
                    // Only those who may sign in have a session to try.
                    let Some(session) = sessions.get(caller) else { continue };
                    let path = rule.route.replace("{id}", &id);
                    let url = format!("{}{path}", stack.inbox());
                    match rule.method {
                        "GET" => http.get(&url).header("cookie", session).send().await.unwrap().status().as_u16(),
                        _ => {
                            let page = inbox::get(&http, &stack.inbox(), "/approvals", session).await;
                            let csrf = inbox::csrf_of(&page.text().await.unwrap());
                            http.post(&url)
                                .header("cookie", session)
                                .form(&[("csrf", csrf.as_str()), ("decision", "deny"), ("comment", "matrix")])
                                .send()
                                .await
                                .unwrap()
                                .status()
                                .as_u16()
                        }
                    }
                }
                "mcp" => {
                    // A message the endpoint reads after admission (and
                    // refuses: no session), or its stream and its end.
                    let url = format!("{}{}", stack.mcp(), rule.route);
                    let mut request = match rule.method {
                        "GET" => http.get(&url).header("accept", "text/event-stream"),
                        "DELETE" => http.delete(&url).header("mcp-session-id", "no-such-session"),
                        _ => http
                            .post(&url)
                            .header("accept", "application/json, text/event-stream")
                            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),
                    };
                    if *caller != "none" {
                        request = request.bearer_auth(stack.keys.token(caller));
                    }
                    request.send().await.unwrap().status().as_u16()
                }
                _ => {
                    let url = format!("{}{}", stack.alertmanager(), rule.route.replace("{id}", "no-such-silence"));
                    let mut request = match rule.method {
                        "GET" => http.get(&url),
                        "DELETE" => http.delete(&url),
                        _ if rule.route.ends_with("silences") => http.post(&url).json(&silence),
                        _ => http.post(&url).json(&serde_json::json!([{"labels": {"alertname": "Matrix"}}])),
                    };
                    if *caller != "none" {
                        request = request.bearer_auth(stack.keys.token(caller));
                    }
                    request.send().await.unwrap().status().as_u16()
                }
            };
            assert!(
                expected(rule, caller, status),
                "{caller} on {} {} {}: {status}",
                rule.surface,
                rule.method,
                rule.route
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked}");
    // Operators and services are refused by the inbox, as ListApprovals refuses them.
    assert!(!sessions.contains_key("operator") && !sessions.contains_key("service"));
    // The refusals are in the audit log, from both services.
    let approval = stack.denials("approval", 3).await;
    assert!(approval.iter().any(|e| e.actor == "operator"), "{approval:?}");
    let alerting = stack.denials("alerting", 3).await;
    assert!(alerting.iter().any(|e| e.actor == "anonymous"), "{alerting:?}");
    let gateway = stack.denials("mcp-gateway", 3).await;
    assert!(gateway.iter().any(|e| e.actor == "approver"), "{gateway:?}");
    stack.stop().await;
}

#[tokio::test]
async fn bad_credentials_are_throttled_on_every_surface() {
    let stack = stack(3).await;
    let http = inbox::client();
    // The inbox's sign-in: three bad keys, then the fourth is throttled,
    // and so is a good key from the same address until the wait is over.
    for _ in 0..3 {
        assert_eq!(inbox::sign_in(&http, &stack.inbox(), "wdn_nope_guess").await.status(), 401);
    }
    let throttled = inbox::sign_in(&http, &stack.inbox(), "wdn_nope_guess").await;
    assert_eq!(throttled.status(), 429);
    let wait: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(inbox::sign_in(&http, &stack.inbox(), stack.keys.token("approver")).await.status(), 429);

    // Alertmanager's API, its own budget: 401 three times, then 429.
    let url = format!("{}/api/v2/alerts", stack.alertmanager());
    for _ in 0..3 {
        assert_eq!(http.get(&url).bearer_auth("wdn_nope_guess").send().await.unwrap().status(), 401);
    }
    let throttled = http.get(&url).bearer_auth("wdn_nope_guess").send().await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().contains_key("retry-after"));

    // The MCP endpoint, its own: 401 with the challenge, then 429.
    let url = format!("{}/mcp", stack.mcp());
    for _ in 0..3 {
        let refused = http.post(&url).bearer_auth("wdn_nope_guess").body("{}").send().await.unwrap();
        assert_eq!(refused.status(), 401);
        assert!(refused.headers().contains_key("www-authenticate"));
    }
    let throttled = http.post(&url).bearer_auth("wdn_nope_guess").body("{}").send().await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().contains_key("retry-after"));

    // gRPC on the approval service shares the inbox's throttle: the
    // address that guessed at the sign-in is refused at once, with RetryInfo,
    // even with a good key.
    let mut client = ApprovalServiceClient::new(channel(&stack.approval.url()).await);
    let ask = |token: &str| bearer(tonic::Request::new(pb::GetApprovalRequest { id: "x".into() }), token);
    for token in ["wdn_nope_guess", stack.keys.token("approver")] {
        let throttled = client.get_approval(ask(token)).await.unwrap_err();
        assert_eq!(throttled.code(), Code::ResourceExhausted, "{throttled:?}");
        assert!(warden_errors::WardenError::from_status(&throttled).retry_after.is_some());
    }
    // Each refusal is recorded.
    let denials = stack.denials("approval", 7).await;
    assert!(denials.iter().any(|e| format!("{:?}", e.payload).contains("too many bad credentials")), "{denials:?}");
    stack.stop().await;
}
