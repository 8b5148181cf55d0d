//! Identity and access across the services, through real gRPC clients:
//! the authorization matrix, impersonation, key rotation on two replicas,
//! JWT edge cases, mTLS, and per-principal rate limits.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use prost::Message;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use warden_audit::AuditServer;
use warden_auth::authz;
use warden_policy_engine::PolicyEngine;
use warden_proto::audit::v1 as audit;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_proto::policy::v1 as pb;
use warden_proto::policy::v1::policy_service_client::PolicyServiceClient;
use warden_tests::identity::{self, Keys, bearer};
use warden_tests::{Sandbox, channel, eventually, example_policies, pki, request};

/// Calls `path` with an empty message (the server decodes it as the
/// request type's default) and returns the gRPC code.
async fn call(channel: Channel, path: &str, streaming: bool, token: Option<&str>) -> (Code, String) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert("x-warden-principal", "admin".parse().unwrap());
    if let Some(token) = token {
        request = bearer(request, token);
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_str(path).unwrap();
    let result = if streaming {
        grpc.server_streaming(request, path, codec).await.map(drop)
    } else {
        grpc.unary(request, path, codec).await.map(drop)
    };
    match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// Every RPC of every contract, with whether it streams responses.
fn all_rpcs() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(warden_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                rpcs.push((
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    method.server_streaming(),
                ));
            }
        }
    }
    rpcs
}

struct Stack {
    _sandbox: Sandbox,
    keys: Keys,
    audit: AuditServer,
    approval: warden_approval::ApprovalServer,
    alerting: warden_alerting::AlertingServer,
    engine: PolicyEngine,
}

/// Audit and policy engine with auth on, one keys file, the decision log
/// shipped with the service key.
async fn stack() -> Stack {
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let mut audit_config = warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"));
    audit_config.auth = keys.auth();
    let audit = AuditServer::start(audit_config).await.unwrap();
    let mut approval_config = warden_approval::ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    approval_config.auth = keys.auth();
    let approval = warden_approval::ApprovalServer::start(approval_config).await.unwrap();
    let mut alerting_config = warden_alerting::AlertingConfig::for_tests(sandbox.data.path().join("alerting"));
    alerting_config.auth = keys.auth();
    let alerting = warden_alerting::AlertingServer::start(alerting_config).await.unwrap();
    let mut config = warden_policy_engine::PolicyEngineConfig::for_tests(example_policies(), sandbox.data.path());
    config.auth = keys.auth();
    config.audit_url = audit.url();
    config.outbound.credential = keys.token("service").to_owned();
    let engine = PolicyEngine::start(config).await.unwrap();
    Stack { _sandbox: sandbox, keys, audit, approval, alerting, engine }
}

#[tokio::test]
async fn every_rpc_answers_each_caller_exactly_as_the_table_says() {
    let stack = stack().await;
    let engine = channel(&stack.engine.url()).await;
    let audit = channel(&stack.audit.url()).await;
    let approval = channel(&stack.approval.url()).await;
    let alerting = channel(&stack.alerting.url()).await;
    let no_grants = Default::default();
    let mut checked = 0;
    for (path, streaming) in all_rpcs() {
        let channel = if path.starts_with("/warden.policy.") {
            engine.clone()
        } else if path.starts_with("/warden.approval.") {
            approval.clone()
        } else if path.starts_with("/warden.alerting.") {
            alerting.clone()
        } else if path.starts_with("/warden.deadletter.") {
            // Served by every service that delivers.
            approval.clone()
        } else {
            audit.clone()
        };
        let allowed = authz::roles_for(&path, &no_grants);
        let mut callers: Vec<(&str, Option<&str>)> = vec![("nobody", None)];
        for name in identity::ROLES.iter().chain(&["revoked", "expired"]) {
            callers.push((name, Some(stack.keys.token(name))));
        }
        for (name, token) in callers {
            let (code, message) = call(channel.clone(), &path, streaming, token).await;
            let expected_refusal = match name {
                "nobody" | "revoked" | "expired" => Some(Code::Unauthenticated),
                role if allowed.iter().any(|r| r == role) => None,
                _ => Some(Code::PermissionDenied),
            };
            match expected_refusal {
                Some(expected) => assert_eq!(code, expected, "{path} as {name}: {message}"),
                // Allowed: whatever the handler answers (often INVALID_ARGUMENT
                // for an empty request), never an auth refusal.
                None => assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{path} as {name}: {code:?} {message}"
                ),
            }
            if expected_refusal == Some(Code::PermissionDenied) {
                assert!(message.contains("lacks the role"), "{path} as {name}: {message}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 22 * 8, "{checked}");
    // Health stays open.
    for channel in [engine, audit, approval] {
        let (code, _) = call(channel, "/grpc.health.v1.Health/Check", false, None).await;
        assert_eq!(code, Code::Ok);
    }
    // Refusals are counted where the UnauthorizedAccessAttempt alert looks.
    let metrics = warden_telemetry::render_metrics();
    assert!(
        metrics.contains(
            r#"grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="SetKillSwitch",grpc_service="warden.policy.v1.PolicyService"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"grpc_code="PermissionDenied",grpc_method="Verify""#), "{metrics}");
    stack.engine.shutdown().await;
    stack.approval.shutdown().await;
    stack.audit.shutdown().await;
}

#[tokio::test]
async fn an_agent_cannot_act_as_another_and_the_attempt_is_audited() {
    let stack = stack().await;
    let mut policy = PolicyServiceClient::new(channel(&stack.engine.url()).await);
    let agent = stack.keys.token("agent");

    let own = policy.evaluate(bearer(tonic::Request::new(request("support-bot", 0.9, "send_email", 0.0)), agent)).await;
    assert!(own.is_ok(), "{own:?}");

    let other = policy
        .evaluate(bearer(tonic::Request::new(request("billing-bot", 0.9, "send_email", 0.0)), agent))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    assert_eq!(other.message(), "principal support-bot may not act as agent billing-bot");

    // Headers that claim another identity change nothing.
    let mut forged = bearer(
        tonic::Request::new(pb::SetKillSwitchRequest { agent_id: String::new(), engaged: true, reason: "x".into() }),
        agent,
    );
    for header in ["x-warden-principal", "x-forwarded-user", "x-warden-roles", "x-remote-user"] {
        forged.metadata_mut().insert(header, "admin".parse().unwrap());
    }
    let refused = policy.set_kill_switch(forged).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("support-bot lacks the role admin"), "{}", refused.message());

    // The denial reaches the audit log through the decision log's outbox.
    let mut auditor = AuditServiceClient::new(channel(&stack.audit.url()).await);
    let auditor_token = stack.keys.token("auditor").to_owned();
    let denial = eventually(Duration::from_secs(10), || {
        let mut auditor = auditor.clone();
        let token = auditor_token.clone();
        async move {
            let query = audit::QueryRequest {
                agent_id: "billing-bot".into(),
                event_types: vec!["auth_denied".into()],
                ..Default::default()
            };
            let records = auditor.query(bearer(tonic::Request::new(query), &token)).await.ok()?.into_inner().records;
            records.into_iter().next()
        }
    })
    .await;
    let event = denial.event.unwrap();
    assert_eq!(event.actor, "support-bot");
    let payload = event.payload.unwrap().fields;
    let text = |key: &str| match payload[key].kind.as_ref().unwrap() {
        prost_types::value::Kind::StringValue(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(text("code"), "PermissionDenied");
    assert_eq!(text("method"), "/warden.policy.v1.PolicyService/Evaluate");
    assert!(text("reason").contains("may not act as agent billing-bot"));

    // Agents record only their own actions' outcomes, and read only their own trail.
    let note = audit::AuditEvent { event_type: "approval_granted".into(), ..Default::default() };
    let refused = auditor
        .append(bearer(tonic::Request::new(audit::AppendRequest { events: vec![note] }), agent))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let theirs = audit::AuditEvent {
        event_type: "action_completed".into(),
        agent_id: "billing-bot".into(),
        ..Default::default()
    };
    let refused = auditor
        .append(bearer(tonic::Request::new(audit::AppendRequest { events: vec![theirs] }), agent))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mine = audit::AuditEvent { event_type: "action_completed".into(), ..Default::default() };
    auditor.append(bearer(tonic::Request::new(audit::AppendRequest { events: vec![mine] }), agent)).await.unwrap();
    let others = audit::QueryRequest { agent_id: "billing-bot".into(), ..Default::default() };
    assert_eq!(
        auditor.query(bearer(tonic::Request::new(others), agent)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let own = auditor
        .query(bearer(tonic::Request::new(audit::QueryRequest::default()), agent))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(!own.is_empty() && own.iter().all(|r| r.event.as_ref().unwrap().agent_id == "support-bot"));

    // The audit service records the caller as the actor when none is given.
    let admin = stack.keys.token("admin");
    let event = audit::AuditEvent { event_type: "note".into(), ..Default::default() };
    let receipt = auditor
        .append(bearer(tonic::Request::new(audit::AppendRequest { events: vec![event] }), admin))
        .await
        .unwrap()
        .into_inner()
        .receipts
        .remove(0);
    let query = audit::QueryRequest { event_types: vec!["note".into()], ..Default::default() };
    let records = auditor.query(bearer(tonic::Request::new(query), admin)).await.unwrap().into_inner().records;
    assert_eq!(records[0].sequence, receipt.sequence);
    assert_eq!(records[0].event.as_ref().unwrap().actor, "admin");
    stack.engine.shutdown().await;
    stack.audit.shutdown().await;
}

#[tokio::test]
async fn a_rotated_key_overlaps_and_a_revoked_one_fails_on_every_replica() {
    let sandbox = Sandbox::new(&[]);
    let mut keys = identity::keys(sandbox.data.path());
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let mut config =
            warden_policy_engine::PolicyEngineConfig::for_tests(example_policies(), sandbox.data.path().join(name));
        config.auth = keys.auth();
        replicas.push(PolicyEngine::start(config).await.unwrap());
    }
    let old = keys.token("admin").to_owned();
    let replacement =
        warden_auth::api_key::create_key("admin", warden_auth::Kind::Human, vec!["admin".into()], vec![], None, None);
    let new = replacement.token.expose().to_owned();
    keys.file.keys.push(replacement.entry);
    keys.save();

    async fn code(engine: &PolicyEngine, token: &str) -> Code {
        let mut client = PolicyServiceClient::new(channel(&engine.url()).await);
        match client.get_kill_switch(bearer(tonic::Request::new(pb::GetKillSwitchRequest::default()), token)).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }
    for replica in &replicas {
        // The new key is picked up without a restart; the old one still works.
        eventually(Duration::from_secs(5), || async { (code(replica, &new).await == Code::Ok).then_some(()) }).await;
        assert_eq!(code(replica, &old).await, Code::Ok);
    }
    let old_id = warden_auth::api_key::split_token(&old).unwrap().0.to_owned();
    keys.file.keys.iter_mut().find(|k| k.id == old_id).unwrap().revoked = true;
    keys.save();
    for replica in &replicas {
        eventually(Duration::from_secs(5), || async {
            (code(replica, &old).await == Code::Unauthenticated).then_some(())
        })
        .await;
        assert_eq!(code(replica, &new).await, Code::Ok);
    }
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn a_noisy_principal_is_rate_limited_and_others_are_not() {
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let mut config = warden_policy_engine::PolicyEngineConfig::for_tests(example_policies(), sandbox.data.path());
    config.auth = keys.auth();
    config.auth.rate_limits =
        vec![warden_auth::RateLimitRule { role: "agent".into(), method: "Evaluate".into(), per_second: 1, burst: 2 }];
    let engine = PolicyEngine::start(config).await.unwrap();
    let mut client = PolicyServiceClient::new(channel(&engine.url()).await);
    let evaluate =
        |token: &str, agent: &str| bearer(tonic::Request::new(request(agent, 0.9, "send_email", 0.0)), token);
    for _ in 0..2 {
        client.evaluate(evaluate(keys.token("agent"), "support-bot")).await.unwrap();
    }
    let limited = client.evaluate(evaluate(keys.token("agent"), "support-bot")).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let error = warden_errors::WardenError::from_status(&limited);
    assert!(error.retry_after.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(1)), "{error:?}");
    assert!(limited.message().contains("support-bot exceeded 1 requests/s"), "{}", limited.message());
    // Another principal (an admin, acting as the same agent) is not limited.
    for _ in 0..5 {
        client.evaluate(evaluate(keys.token("admin"), "support-bot")).await.unwrap();
    }
    engine.shutdown().await;
}

// === JWT ===

struct Idp {
    url: String,
    jwks: Arc<Mutex<serde_json::Value>>,
}

/// A JWKS endpoint whose key set the test can rotate.
async fn idp() -> Idp {
    let jwks = Arc::new(Mutex::new(serde_json::json!({ "keys": [] })));
    let served = jwks.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let served = served.clone();
            async move { axum::Json(served.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Idp { url: format!("http://{addr}/jwks.json"), jwks }
}

struct SigningKey {
    kid: String,
    pem: String,
    public_raw: Vec<u8>,
}

fn signing_key(kid: &str) -> SigningKey {
    let key = rcgen::KeyPair::generate().unwrap();
    SigningKey { kid: kid.into(), pem: key.serialize_pem(), public_raw: key.public_key_raw().to_vec() }
}

impl SigningKey {
    fn jwk(&self) -> serde_json::Value {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // Uncompressed point: 0x04 || x || y.
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
            "x": b64(&self.public_raw[1..33]), "y": b64(&self.public_raw[33..65]),
        })
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap())
            .unwrap()
    }
}

const ISSUER: &str = "https://idp.warden.test";

fn claims(sub: &str, overrides: serde_json::Value) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({
        "sub": sub, "kind": "agent", "roles": ["agent"], "iss": ISSUER, "aud": "warden-policy",
        "iat": now, "exp": now + 300,
    });
    for (key, value) in overrides.as_object().unwrap() {
        claims[key] = value.clone();
    }
    claims
}

#[tokio::test]
async fn jwts_are_checked_for_issuer_audience_time_algorithm_and_key() {
    let idp = idp().await;
    let k1 = signing_key("k1");
    *idp.jwks.lock().unwrap() = serde_json::json!({ "keys": [k1.jwk()] });
    let sandbox = Sandbox::new(&[]);
    let mut config = warden_policy_engine::PolicyEngineConfig::for_tests(example_policies(), sandbox.data.path());
    config.auth = warden_auth::AuthConfig::default();
    config.auth.jwt = warden_auth::jwt::JwtConfig {
        issuer: ISSUER.into(),
        audiences: vec!["warden-policy".into()],
        jwks_url: idp.url.clone(),
        jwks_min_refetch: Duration::ZERO,
        kind_claim: "kind".into(),
        ..Default::default()
    };
    let engine = PolicyEngine::start(config).await.unwrap();
    let client = PolicyServiceClient::new(channel(&engine.url()).await);
    let evaluate = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .evaluate(bearer(tonic::Request::new(request("support-bot", 0.9, "send_email", 0.0)), &token))
                .await
                .map(drop)
                .map_err(|s| (s.code(), s.message().to_owned()))
        }
    };
    let now = chrono::Utc::now().timestamp();
    assert_eq!(evaluate(k1.sign(&claims("support-bot", serde_json::json!({})))).await, Ok(()));
    for (overrides, expected) in [
        (serde_json::json!({"aud": "another-service"}), "another audience"),
        (serde_json::json!({"iss": "https://evil.test"}), "another issuer"),
        (serde_json::json!({"exp": now - 3600}), "expired"),
        (serde_json::json!({"nbf": now + 3600}), "not yet valid"),
    ] {
        let (code, message) = evaluate(k1.sign(&claims("support-bot", overrides.clone()))).await.unwrap_err();
        assert_eq!(code, Code::Unauthenticated, "{overrides}");
        assert!(message.contains(expected), "{overrides}: {message}");
    }
    // The token names the agent it may act as: no other.
    let mut other_agent = client.clone();
    let refused = other_agent
        .evaluate(bearer(
            tonic::Request::new(request("support-bot", 0.9, "send_email", 0.0)),
            &k1.sign(&claims("billing-bot", serde_json::json!({}))),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // alg: none, and an HMAC token "signed" with the public key (the HS/RS
    // confusion attack), are refused.
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let body = b64(claims("support-bot", serde_json::json!({})).to_string().as_bytes());
    let none = format!("{}.{body}.", b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#));
    assert_eq!(evaluate(none).await.unwrap_err().0, Code::Unauthenticated);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims("support-bot", serde_json::json!({})),
        &jsonwebtoken::EncodingKey::from_secret(&k1.public_raw),
    )
    .unwrap();
    let (code, message) = evaluate(confused).await.unwrap_err();
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("HS256 tokens are not accepted"), "{message}");

    // The provider rotates: a token from a new key is refused while the
    // set lacks it, and accepted, without a restart, once it is published.
    let k2 = signing_key("k2");
    let rotated = k2.sign(&claims("support-bot", serde_json::json!({})));
    let (code, message) = evaluate(rotated.clone()).await.unwrap_err();
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("unknown signing key"), "{message}");
    *idp.jwks.lock().unwrap() = serde_json::json!({ "keys": [k2.jwk()] });
    assert_eq!(evaluate(rotated).await, Ok(()));
    // k1 left the set: its tokens stop working too.
    let (code, _) = evaluate(k1.sign(&claims("support-bot", serde_json::json!({"jti": "fresh"})))).await.unwrap_err();
    assert_eq!(code, Code::Unauthenticated);
    engine.shutdown().await;
}

// === TLS ===

#[tokio::test]
async fn mtls_takes_the_principal_from_the_certificate_and_refuses_strangers() {
    let sandbox = Sandbox::new(&[]);
    let dir = sandbox.data.path();
    let ca = pki::ca("warden test ca");
    let server = ca.server(dir, "server");
    let client = ca.client(dir, "support-bot", "spiffe://warden.local/agent/support-bot");
    let stranger_ca = pki::ca("someone else's ca");
    let stranger = stranger_ca.client(dir, "stranger", "spiffe://warden.local/agent/support-bot");
    let keys = identity::keys(dir);
    let mut config = warden_policy_engine::PolicyEngineConfig::for_tests(example_policies(), dir);
    config.auth = keys.auth();
    config.auth.tls_cert = server.cert.clone();
    config.auth.tls_key = server.key.display().to_string();
    config.auth.tls_client_ca = ca.write(dir, "ca.pem");
    let engine = PolicyEngine::start(config).await.unwrap();
    let url = format!("https://127.0.0.1:{}", engine.addr.port());

    let tls = |leaf: &pki::Leaf| {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca.pem))
            .identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem))
            .domain_name("localhost")
    };
    let connect = |leaf: &pki::Leaf| {
        let endpoint = Channel::from_shared(url.clone()).unwrap().tls_config(tls(leaf)).unwrap();
        async move { endpoint.connect().await }
    };
    let mut policy = PolicyServiceClient::new(connect(&client).await.unwrap());
    policy.evaluate(tonic::Request::new(request("support-bot", 0.9, "send_email", 0.0))).await.unwrap();
    // The certificate says support-bot: an admin key in the request changes nothing.
    let claimed = policy
        .evaluate(bearer(tonic::Request::new(request("billing-bot", 0.9, "send_email", 0.0)), keys.token("admin")))
        .await
        .unwrap_err();
    assert_eq!(claimed.code(), Code::PermissionDenied);
    assert_eq!(claimed.message(), "principal support-bot may not act as agent billing-bot");
    let switch = policy
        .set_kill_switch(bearer(tonic::Request::new(pb::SetKillSwitchRequest::default()), keys.token("admin")))
        .await
        .unwrap_err();
    assert_eq!(switch.code(), Code::PermissionDenied);

    // A certificate from another CA never gets to a request.
    let stranger_result = match connect(&stranger).await {
        Err(error) => Err(error.to_string()),
        Ok(channel) => PolicyServiceClient::new(channel)
            .evaluate(tonic::Request::new(request("support-bot", 0.9, "send_email", 0.0)))
            .await
            .map(drop)
            .map_err(|status| status.to_string()),
    };
    assert!(stranger_result.is_err(), "a stranger's certificate was accepted");

    // A client that speaks only TLS 1.2 is refused at the handshake.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&ca.pem) {
        roots.add(cert).unwrap();
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = tokio::net::TcpStream::connect(engine.addr).await.unwrap();
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(tls12))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), stream)
        .await;
    assert!(handshake.is_err(), "a TLS 1.2 client completed a handshake");

    // Plain text to a TLS port fails too.
    let plain = Channel::from_shared(format!("http://{}", engine.addr)).unwrap().connect().await;
    if let Ok(channel) = plain {
        let result = PolicyServiceClient::new(channel)
            .evaluate(tonic::Request::new(request("support-bot", 0.9, "x", 0.0)))
            .await;
        assert!(result.is_err());
    }
    engine.shutdown().await;
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    warden_auth::tls::read_certs_pem(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn the_sdk_and_the_decision_log_authenticate_over_tls() {
    let sandbox = Sandbox::new(&[]);
    let dir = sandbox.data.path();
    let ca = pki::ca("warden test ca");
    let server = ca.server(dir, "server");
    let keys = identity::keys(dir);
    let mut tls_auth = keys.auth();
    tls_auth.tls_cert = server.cert.clone();
    tls_auth.tls_key = format!("file:{}", server.key.display());
    let ca_path = ca.write(dir, "ca.pem");

    let mut audit_config = warden_audit::AuditConfig::for_tests(dir.join("audit"));
    audit_config.auth = tls_auth.clone();
    let audit = AuditServer::start(audit_config).await.unwrap();
    let mut config = warden_policy_engine::PolicyEngineConfig::for_tests(example_policies(), dir);
    config.auth = tls_auth;
    config.audit_url = format!("https://127.0.0.1:{}", audit.addr.port());
    config.outbound = warden_auth::OutboundConfig {
        credential: keys.token("service").to_owned(),
        tls_ca: ca_path.clone(),
        tls_domain: "localhost".into(),
        ..Default::default()
    };
    let engine = PolicyEngine::start(config).await.unwrap();
    let sdk = warden_client::PolicyClient::new(
        warden_client::ClientConfig::new(format!("https://127.0.0.1:{}", engine.addr.port()))
            .api_key(keys.token("agent"))
            .tls(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem)).domain_name("localhost")),
    )
    .unwrap();
    let decision = sdk.evaluate(warden_client::Request::new("support-bot", "send_email")).await.unwrap();
    assert_eq!(decision.source, warden_client::Source::PolicyEngine, "{decision:?}");
    let refused = sdk.evaluate(warden_client::Request::new("billing-bot", "send_email")).await.unwrap_err();
    assert!(matches!(refused, warden_client::ClientError::Refused(_)), "{refused:?}");

    // The decision reached the audit log over TLS with the service key.
    let audit_channel = Channel::from_shared(format!("https://127.0.0.1:{}", audit.addr.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem)).domain_name("localhost"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auditor = AuditServiceClient::new(audit_channel);
    let token = keys.token("auditor").to_owned();
    let decision_id = decision.decision_id.unwrap();
    let record = eventually(Duration::from_secs(10), || {
        let (mut auditor, token) = (auditor.clone(), token.clone());
        async move {
            let query = audit::QueryRequest { event_types: vec!["policy_evaluation".into()], ..Default::default() };
            let records = auditor.query(bearer(tonic::Request::new(query), &token)).await.ok()?.into_inner().records;
            records.into_iter().next()
        }
    })
    .await;
    assert_eq!(record.event.unwrap().event_id, decision_id);
    engine.shutdown().await;
    audit.shutdown().await;
}

#[tokio::test]
async fn services_call_each_other_with_their_own_certificates() {
    let sandbox = Sandbox::new(&[]);
    let dir = sandbox.data.path();
    let ca = pki::ca("warden test ca");
    let server = ca.server(dir, "audit-server");
    let engine_cert = ca.client(dir, "policy-engine", "spiffe://warden.local/service/policy-engine");
    let auditor_cert = ca.client(dir, "auditor", "spiffe://warden.local/human/ada");
    let ca_path = ca.write(dir, "ca.pem");
    let keys = identity::keys(dir);

    // The audit service requires client certificates; a person's
    // certificate gets the auditor role through an explicit mapping.
    let mut audit_config = warden_audit::AuditConfig::for_tests(dir.join("audit"));
    audit_config.auth = keys.auth();
    audit_config.auth.tls_cert = server.cert.clone();
    audit_config.auth.tls_key = server.key.display().to_string();
    audit_config.auth.tls_client_ca = ca_path.clone();
    audit_config.auth.certificates = vec![warden_auth::CertificateMapping {
        identity: "spiffe://warden.local/human/ada".into(),
        principal: "ada".into(),
        kind: warden_auth::Kind::Human,
        roles: vec!["auditor".into()],
        agents: vec![],
    }];
    let audit = AuditServer::start(audit_config).await.unwrap();
    // The policy engine presents its own certificate (no API key) when it
    // ships the decision log.
    let mut config = warden_policy_engine::PolicyEngineConfig::for_tests(example_policies(), dir);
    config.auth = keys.auth();
    config.audit_url = format!("https://127.0.0.1:{}", audit.addr.port());
    config.outbound = warden_auth::OutboundConfig {
        tls_ca: ca_path.clone(),
        tls_cert: engine_cert.cert.clone(),
        tls_key: engine_cert.key.display().to_string(),
        tls_domain: "localhost".into(),
        ..Default::default()
    };
    let engine = PolicyEngine::start(config).await.unwrap();
    let sdk =
        warden_client::PolicyClient::new(warden_client::ClientConfig::new(engine.url()).api_key(keys.token("agent")))
            .unwrap();
    let decision = sdk.evaluate(warden_client::Request::new("support-bot", "send_email")).await.unwrap();
    let decision_id = decision.decision_id.unwrap();

    let auditor_channel = Channel::from_shared(format!("https://127.0.0.1:{}", audit.addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca.pem))
                .identity(Identity::from_pem(&auditor_cert.cert_pem, &auditor_cert.key_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auditor = AuditServiceClient::new(auditor_channel);
    let record = eventually(Duration::from_secs(10), || {
        let mut auditor = auditor.clone();
        async move {
            let query = audit::QueryRequest { event_types: vec!["policy_evaluation".into()], ..Default::default() };
            auditor.query(tonic::Request::new(query)).await.ok()?.into_inner().records.into_iter().next()
        }
    })
    .await;
    let event = record.event.unwrap();
    assert_eq!(event.event_id, decision_id);
    // The append succeeded with no API key configured: the engine's
    // certificate (spiffe://.../service/policy-engine) gave it the service
    // role, which may name the engine as the actor.
    assert_eq!(event.actor, "warden-policy-engine");
    engine.shutdown().await;
    audit.shutdown().await;
}
