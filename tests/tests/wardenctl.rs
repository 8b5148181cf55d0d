//! `wardenctl` against running services, as an operator uses it: review an
//! approval, engage and release a kill switch, check an inclusion proof
//! locally; exit codes scripts rely on.

use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_audit::AuditServer;
use warden_client::{ClientConfig, Effect, PolicyClient, Request};
use warden_policy_engine::PolicyEngine;
use warden_tests::Sandbox;
use warden_tests::identity;
use warden_tests::wardenctl::run;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn operators_review_stop_agents_and_check_proofs() {
    let sandbox = Sandbox::new(&[(
        "refunds.yaml",
        "personal_params: [customer_email]\nrules:\n  - name: big\n    actions: [issue_refund]\n    effect: require_approval\n  - name: rest\n    effect: allow\n",
    )]);
    let keys = identity::keys(sandbox.data.path());
    let mut audit_config = warden_audit::AuditConfig::for_tests(sandbox.data.path().join("audit"));
    audit_config.auth = keys.auth();
    let audit = AuditServer::start(audit_config).await.unwrap();
    let mut approval_config = ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    approval_config.auth = keys.auth();
    let approval = ApprovalServer::start(approval_config).await.unwrap();
    let config = sandbox.secured_config(&keys, &audit.url(), &approval.url());
    let engine = PolicyEngine::start(config).await.unwrap();
    let agent = PolicyClient::new(ClientConfig::new(engine.url()).api_key(keys.token("agent"))).unwrap();
    let decision = agent
        .evaluate(
            Request::new("support-bot", "issue_refund")
                .param("amount", 150.0)
                .param("customer_email", "ada@example.com"),
        )
        .await
        .unwrap();
    let id = decision.approval_id.unwrap();

    let remote = |key: &str| {
        vec![
            "--addr".to_string(),
            engine.url(),
            "--audit-addr".into(),
            audit.url(),
            "--approval-addr".into(),
            approval.url(),
            "--api-key".into(),
            keys.token(key).into(),
        ]
    };
    let with = |key: &str, rest: &[&str]| {
        let mut all = remote(key);
        all.extend(args(rest));
        all
    };

    let (code, out, _) = run(with("approver", &["approvals", "list"])).await;
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("issue_refund"), "{out}");
    let (code, out, _) = run(with("approver", &["approvals", "approve", &id, "-c", "looks right"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("state      approved"), "{out}");
    // Granted: what the reviewer sees is how long the grant may be redeemed,
    // to the sub-second, not the request's own deadline.
    let redeem_by = out.lines().find(|l| l.starts_with("redeem by  ")).unwrap_or_else(|| panic!("{out}"));
    assert!(redeem_by.contains('.') || redeem_by.contains(":00Z"), "{redeem_by}");
    assert!(!out.contains("expires    "), "{out}");
    let (code, _, err) = run(with("approver", &["approvals", "deny", &id])).await;
    assert_eq!(code, 1);
    assert!(err.contains("approval request is APPROVED"), "{err}");
    let (code, out, _) = run(with("approver", &["approvals", "show", &id, "-o", "json"])).await;
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["state"], "approved");
    // The agent comes back with the grant: allowed, and recorded as an allow
    // the rules alone would have sent for approval.
    let granted = agent
        .evaluate(
            Request::new("support-bot", "issue_refund")
                .param("amount", 150.0)
                .param("customer_email", "ada@example.com")
                .approval_id(id.clone()),
        )
        .await
        .unwrap();
    assert_eq!(granted.effect, Effect::Allow, "{:?}", granted.reasons);
    // The reviewer sees the params as JSON, as they will run.
    assert_eq!(shown["action"]["params"]["amount"], 150.0, "{out}");
    assert_eq!(shown["action"]["params"]["customer_email"], "ada@example.com", "{out}");
    let (code, out, _) = run(with("approver", &["approvals", "show", &id])).await;
    assert_eq!(code, 0);
    assert!(out.contains("amount = 150.0") && out.contains(r#"customer_email = "ada@example.com""#), "{out}");

    // Kill switches: an admin stops the agent, and its next decision is a deny.
    let (code, out, _) =
        run(with("admin", &["killswitch", "engage", "--agent", "support-bot", "--reason", "incident 7"])).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(agent.evaluate(Request::new("support-bot", "send_email")).await.unwrap().effect, Effect::Deny);
    let (_, out, _) = run(with("admin", &["killswitch", "list"])).await;
    assert!(out.contains("support-bot") && out.contains("incident 7"), "{out}");
    let (code, _, _) = run(with("admin", &["killswitch", "release", "--agent", "support-bot"])).await;
    assert_eq!(code, 0);
    assert_eq!(agent.evaluate(Request::new("support-bot", "send_email")).await.unwrap().effect, Effect::Allow);
    // An agent's key cannot.
    let (code, _, err) = run(with("agent", &["killswitch", "engage", "--reason", "x"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("PermissionDenied"), "{err}");

    // Audit: the log verifies; an inclusion proof checks out locally
    // against the signed checkpoint, and fails against another key.
    warden_tests::eventually(std::time::Duration::from_secs(10), || async {
        (audit.log.checkpoint().await.ok()?.tree_size >= 1).then_some(())
    })
    .await;
    let (code, out, _) = run(with("auditor", &["audit", "verify"])).await;
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = run(with("auditor", &["audit", "proof", "0", "--key", &audit.verifier_key])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: event 0"), "{out}");
    let other = warden_merkle::note::NoteSigner::from_seed("warden.local/audit", [7; 32]).unwrap().verifier_key();
    let (code, _, err) = run(with("auditor", &["audit", "proof", "0", "--key", &other])).await;
    assert_eq!(code, 3, "{err}");

    // Policies: files checked by the engine's compiler, errors by file and line.
    let examples = warden_tests::example_policies().display().to_string();
    let (code, out, err) = run(with("admin", &["policy", "validate", &examples])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("valid: "), "{out}");
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(
        broken.path().join("bad.yaml"),
        "rules:\n  - name: typo\n    when: \"agent.confidance > 0.5\"\n    effect: allow\n",
    )
    .unwrap();
    let (code, _, err) = run(with("admin", &["policy", "validate", &broken.path().display().to_string()])).await;
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml:2: rule typo: ") && err.contains("confidance"), "{err}");
    // Offline is the default: no engine, no key needed; --remote asks one.
    let dir = broken.path().display().to_string();
    let (code, _, offline) = run(args(&["--addr", "127.0.0.1:1", "policy", "validate", &dir])).await;
    assert_eq!((code, offline.clone()), (1, err.clone()), "the same errors offline");
    let (code, _, refused) = run(args(&["--addr", "127.0.0.1:1", "policy", "validate", "--remote", &dir])).await;
    assert!(code == 1 && refused.contains("cannot connect"), "{refused}");
    // A file-level error has no rule, and an unknown line no `:0`.
    std::fs::write(
        broken.path().join("bad.yaml"),
        "rules: [
",
    )
    .unwrap();
    let (code, _, err) = run(args(&["policy", "validate", &dir])).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("bad.yaml") && !err.contains("::") && !err.contains(":0:") && !err.contains("rule :"),
        "{err}"
    );
    let (code, out, _) = run(with("auditor", &["policy", "show"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("big") && out.contains("require_approval"), "{out}");

    // `-o json`, one rule for every verb: one JSON document, except the
    // verbs that stream, which print JSON Lines.
    let key = audit.verifier_key.clone();
    let documents: [(&str, &[&str]); 12] = [
        ("auditor", &["policy", "show"]),
        ("admin", &["policy", "reload"]),
        ("admin", &["policy", "validate", &examples]),
        ("admin", &["policy", "test", &examples]),
        ("admin", &["killswitch", "list"]),
        ("admin", &["killswitch", "release", "--agent", "nobody"]),
        ("approver", &["approvals", "list", "--state", "all"]),
        ("approver", &["approvals", "show", &id]),
        ("auditor", &["audit", "verify"]),
        ("auditor", &["audit", "checkpoint", "--key", &key]),
        ("auditor", &["audit", "proof", "0", "--key", &key]),
        ("admin", &["audit", "forget", "nobody@example.com"]),
    ];
    for (who, verb) in documents {
        let (code, out, err) = run(with(who, &[verb, &["-o", "json"]].concat())).await;
        assert_eq!(code, 0, "{verb:?}: {err}");
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&out);
        assert!(parsed.is_ok(), "{verb:?} -o json is not one JSON document:\n{out}");
    }
    let streams: [(&str, &[&str]); 2] =
        [("auditor", &["audit", "query", "--agent", "support-bot"]), ("auditor", &["audit", "export", "--from", "0"])];
    for (who, verb) in streams {
        let (code, out, err) = run(with(who, &[verb, &["-o", "json"]].concat())).await;
        assert_eq!(code, 0, "{verb:?}: {err}");
        assert!(!out.trim().is_empty(), "{verb:?}");
        for line in out.lines() {
            assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "{verb:?}: not JSON Lines: {line}");
        }
    }
    let (code, out, _) = run(args(&["completions", "bash"])).await;
    assert!(code == 0 && out.contains("wardenctl"), "{out}");

    // Replay: recorded decisions re-decided with a stricter candidate set.
    let candidate = tempfile::tempdir().unwrap();
    std::fs::write(
        candidate.path().join("p.yaml"),
        "rules:\n  - name: no-email\n    actions: [send_email]\n    effect: deny\n    reason: email is off\n  - name: rest\n    effect: allow\n",
    )
    .unwrap();
    let candidate_dir = candidate.path().display().to_string();
    // Compared with what the rules said then: the kill-switched email was
    // allowed by the rules, and the granted refund needed approval.
    let mut replayed = String::new();
    for _ in 0..100 {
        let (code, out, err) =
            run(with("auditor", &["policy", "replay", "--policies", &candidate_dir, "--since", "1h"])).await;
        assert_eq!(code, 0, "{err}");
        replayed = out;
        if replayed.contains("replayed 4 decisions") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(replayed.contains("allow -> deny: 2") && replayed.contains("no-email (2)"), "{replayed}");
    assert!(replayed.contains("require_approval -> allow: 2"), "{replayed}");
    // The same policies change nothing: not the approved refund, not the
    // kill switch's deny.
    let current = sandbox.policies_dir().display().to_string();
    let (code, out, err) = run(with("auditor", &["policy", "replay", "--policies", &current, "--since", "1h"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 4 decisions") && out.contains("4 unchanged, 0 would change"), "{out}");
    assert!(!out.contains("recorded before"), "{out}");
    // A decision recorded before `rules_effect` existed (a kill switch's
    // deny) can only be compared with its final effect, and replay says so.
    let older = warden_proto::audit::v1::AuditEvent {
        event_id: "older-decision".into(),
        event_type: "policy_evaluation".into(),
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        agent_id: "support-bot".into(),
        actor: "warden-policy-engine".into(),
        payload: Some(warden_client::json::json_to_struct(
            serde_json::json!({
                "action": "send_email", "agent": {"id": "support-bot", "roles": [], "labels": {}, "confidence": 0.9},
                "effect": "deny", "params": {}, "resource": "",
            })
            .as_object()
            .unwrap(),
        )),
        ..Default::default()
    };
    let mut recorder = warden_proto::audit::v1::audit_service_client::AuditServiceClient::new(
        warden_tests::channel(&audit.url()).await,
    );
    let append = warden_proto::audit::v1::AppendRequest { events: vec![older] };
    recorder.append(identity::bearer(tonic::Request::new(append), keys.token("service"))).await.unwrap();
    let (code, out, err) = run(with("auditor", &["policy", "replay", "--policies", &current, "--since", "1h"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 5 decisions") && out.contains("deny -> allow: 1"), "{out}");
    assert!(out.contains("1 recorded before decisions kept the rules' own effect"), "{out}");

    // A profile file instead of flags; audit query and export.
    let profile = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        profile.path(),
        format!(
            "addr = \"{}\"\naudit_addr = \"{}\"\napproval_addr = \"{}\"\napi_key = \"{}\"\n",
            engine.url(),
            audit.url(),
            approval.url(),
            keys.token("auditor")
        ),
    )
    .unwrap();
    let profile_path = profile.path().display().to_string();
    let (code, out, err) =
        run(args(&["--profile", &profile_path, "audit", "query", "--types", "policy_evaluation"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().filter(|l| l.contains("policy_evaluation")).count() >= 3, "{out}");
    let (code, out, _) = run(args(&["--profile", &profile_path, "audit", "export"])).await;
    assert_eq!(code, 0);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["sequence"], 0);
    // Payloads export as JSON objects, for scripts.
    let decision = out
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|record| record["event_type"] == "policy_evaluation")
        .expect("a decision in the export");
    assert!(decision["payload"]["effect"].is_string(), "{decision}");

    // The personal param is kept encrypted, apart from the payload.
    let mut auditor = warden_proto::audit::v1::audit_service_client::AuditServiceClient::new(
        warden_tests::channel(&audit.url()).await,
    );
    let query =
        warden_proto::audit::v1::QueryRequest { event_types: vec!["policy_evaluation".into()], ..Default::default() };
    let records = auditor
        .query(identity::bearer(tonic::Request::new(query), keys.token("auditor")))
        .await
        .unwrap()
        .into_inner()
        .records;
    let refund = records
        .iter()
        .filter_map(|r| r.event.clone())
        .find(|e| format!("{:?}", e.payload).contains("issue_refund"))
        .unwrap();
    assert!(!format!("{:?}", refund.payload).contains("ada@example.com"));
    assert!(format!("{:?}", refund.sensitive).contains("ada@example.com"));

    // No credentials: refused, and told what to do.
    let mut anonymous = remote("agent");
    anonymous.truncate(6);
    anonymous.extend(args(&["approvals", "list", "--state", "all"]));
    let (code, _, err) = run(anonymous).await;
    assert_eq!(code, 1);
    assert!(err.contains("Unauthenticated") && err.contains("--api-key"), "{err}");

    engine.shutdown().await;
    approval.shutdown().await;
    audit.shutdown().await;
}

#[tokio::test]
async fn on_call_silences_and_checks_routing() {
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    sandbox.write(
        "alertmanager.yml",
        "route:\n  receiver: log\n  routes:\n    - matchers: [severity=critical]\n      receiver: pager\nreceivers:\n  - name: log\n    log_configs: [{}]\n  - name: pager\n    log_configs: [{}]\n",
    );
    let mut config = warden_alerting::AlertingConfig::for_tests(sandbox.data.path().join("alerting"));
    config.auth = keys.auth();
    config.routing = sandbox.policies_dir().join("alertmanager.yml");
    let alerting = warden_alerting::AlertingServer::start(config).await.unwrap();
    let with = |key: &str, rest: &[&str]| {
        let mut all = vec!["--alerting-addr".to_string(), alerting.url(), "--api-key".into(), keys.token(key).into()];
        all.extend(args(rest));
        all
    };
    let (code, out, err) = run(with("operator", &["alerts", "test-route", "severity=critical", "agent_id=bot"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("pager  route 0/0"), "{out}");
    let (code, id, err) =
        run(with("operator", &["alerts", "silence", "agent_id=bot", "--duration", "2h", "-c", "deploying"])).await;
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_owned();
    let (_, out, _) = run(with("operator", &["alerts", "test-route", "agent_id=bot"])).await;
    assert!(out.contains(&format!("silenced by {id}")), "{out}");
    let (_, out, _) = run(with("auditor", &["alerts", "silences", "-o", "json"])).await;
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((listed[0]["id"].as_str(), listed[0]["created_by"].as_str()), (Some(id.as_str()), Some("operator")));
    let (code, out, _) = run(with("operator", &["alerts", "expire", &id])).await;
    assert_eq!((code, out.trim()), (0, format!("{id} expired").as_str()));
    let (code, out, _) = run(with("operator", &["alerts", "rules"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("HighErrorRate") && out.contains("agent_health"), "{out}");
    // A bad matcher names the field; an auditor may not silence.
    let (code, _, err) = run(with("operator", &["alerts", "silence", "agent_id=~\"(\""])).await;
    assert_eq!(code, 1);
    assert!(err.contains("matchers[0]"), "{err}");
    let (code, _, err) = run(with("auditor", &["alerts", "silence", "agent_id=bot"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("PermissionDenied"), "{err}");
    // Waiting for an alert that never fires ends, with exit 1.
    let (code, _, err) = run(with("operator", &["alerts", "list", "alertname=Nothing", "--wait", "2s"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("no firing alert matched within 2s"), "{err}");
}

#[tokio::test]
async fn an_agent_waits_and_a_reviewer_approves_by_correlation_id() {
    let sandbox = Sandbox::new(&[(
        "refunds.yaml",
        "rules:\n  - name: big\n    actions: [issue_refund]\n    when: \"action.params.amount > 100.0\"\n    effect: require_approval\n    reason: big refund\n  - name: rest\n    effect: allow\n    reason: fine\n",
    )]);
    let keys = identity::keys(sandbox.data.path());
    let mut approval_config = ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    approval_config.auth = keys.auth();
    let approval = ApprovalServer::start(approval_config).await.unwrap();
    let config = sandbox.secured_config(&keys, "", &approval.url());
    let engine = PolicyEngine::start(config).await.unwrap();
    let with = |key: &str, rest: &[&str]| {
        let mut all = vec![
            "--addr".to_string(),
            engine.url(),
            "--approval-addr".into(),
            approval.url(),
            "--api-key".into(),
            keys.token(key).into(),
        ];
        all.extend(args(rest));
        all
    };
    let ask = |amount: &str, ticket: &str, wait: &str| {
        with(
            "agent",
            &[
                "evaluate",
                "issue_refund",
                "--agent",
                "support-bot",
                "--resource",
                "order/1",
                "--param",
                &format!("amount={amount}"),
                "--param",
                "note=a b=c",
                "--correlation-id",
                ticket,
                "--wait",
                wait,
            ],
        )
    };

    // Allowed at once: one decision, nothing to wait for.
    let (code, out, err) = run(ask("50", "t-0", "30s")).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("effect     allow") && out.contains("rules      rest"), "{out}");
    assert!(!out.contains("approval"), "{out}");

    // Required: the agent waits; the reviewer finds the request by ticket.
    let waiting = tokio::spawn(run(ask("150", "t-1", "30s")));
    let approved = warden_tests::eventually(std::time::Duration::from_secs(15), || {
        let args = with("approver", &["approvals", "approve", "--correlation-id", "t-1", "-c", "ok"]);
        async move {
            let (code, out, _) = run(args).await;
            (code == 0).then_some(out)
        }
    })
    .await;
    assert!(approved.contains("state      approved") && approved.contains("note = \"a b=c\""), "{approved}");
    let (code, out, err) = waiting.await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("effect     require_approval") && out.contains("reasons    big refund"), "{out}");
    assert!(out.contains("reviewed   approved by approver"), "{out}");
    let last = out.rsplit("decision ").next().unwrap();
    assert!(last.contains("effect     allow") && last.contains("approved by approver"), "{out}");

    // Denied: the agent's wait ends with the review and no second decision.
    let waiting = tokio::spawn(run(ask("150", "t-2", "30s")));
    warden_tests::eventually(std::time::Duration::from_secs(15), || {
        let args = with("approver", &["approvals", "deny", "--correlation-id", "t-2"]);
        async move { (run(args).await.0 == 0).then_some(()) }
    })
    .await;
    let (code, out, _) = waiting.await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("reviewed   denied by approver"), "{out}");
    assert_eq!(out.matches("decision   ").count(), 1, "{out}");

    // Nobody reviews: the wait ends, exit 1.
    let (code, out, err) = run(ask("150", "t-3", "1s")).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("was not reviewed within 1s"), "{err}");

    // Two pending requests share a ticket: the reviewer must name one.
    let (code, _, _) = run(ask("160", "t-3", "0s")).await;
    assert_eq!(code, 1);
    let (code, _, err) = run(with("approver", &["approvals", "approve", "--correlation-id", "t-3"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("2 pending requests have correlation id \"t-3\""), "{err}");

    // Hostile or wrong input.
    let (code, _, err) = run(with("approver", &["approvals", "approve", "--correlation-id", "nope"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("no pending request you may review"), "{err}");
    let (code, _, err) = run(with("approver", &["approvals", "approve", "--correlation-id", " "])).await;
    assert_eq!(code, 1);
    assert!(err.contains("--correlation-id is empty"), "{err}");
    let (code, _, _) = run(with("approver", &["approvals", "approve", "some-id", "--correlation-id", "t-3"])).await;
    assert_eq!(code, 2);
    let (code, _, _) = run(with("approver", &["approvals", "approve"])).await;
    assert_eq!(code, 2);
    // The agent's own key cannot review its request.
    let (code, _, err) = run(with("agent", &["approvals", "approve", "--correlation-id", "t-3"])).await;
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run(with("agent", &["evaluate", "x", "--agent", "support-bot", "--param", "nokey"])).await;
    assert_eq!(code, 2);
    assert!(err.contains("KEY=VALUE"), "{err}");
    let (code, _, err) = run(with("agent", &["evaluate", "x", "--agent", "billing-bot"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("PermissionDenied") && err.contains("billing-bot"), "{err}");
    let (code, _, err) = run(with("agent", &["evaluate", "x", "--agent", "support-bot", "--confidence", "2"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("InvalidArgument") && err.contains("confidence"), "{err}");

    engine.shutdown().await;
    approval.shutdown().await;
}

/// `--addr` (and `WARDEN_ADDR`) means what it means to the Python agent:
/// `host:port` or an http(s) URL; another scheme is refused by name.
#[tokio::test]
async fn an_address_is_host_port_or_a_url_and_a_bad_one_is_named() {
    let sandbox = Sandbox::new(&[("allow.yaml", "rules:\n  - name: all\n    effect: allow\n")]);
    let keys = identity::keys(sandbox.data.path());
    let mut config =
        warden_policy_engine::PolicyEngineConfig::for_tests(sandbox.policies_dir(), sandbox.data.path().join("pe"));
    config.auth = keys.auth();
    let engine = PolicyEngine::start(config).await.unwrap();
    let admin = keys.token("admin").to_string();
    for addr in [engine.addr.to_string(), format!("http://{}", engine.addr)] {
        let (code, out, err) = run(args(&["--addr", &addr, "--api-key", &admin, "policy", "show"])).await;
        assert_eq!(code, 0, "{addr}: {out}{err}");
        assert!(out.contains("all"), "{addr}: {out}");
    }
    let (code, _, err) =
        run(args(&["--addr", &format!("grpc://{}", engine.addr), "--api-key", &admin, "policy", "show"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("the scheme must be http:// or https://") && err.contains("grpc://"), "{err}");
}
