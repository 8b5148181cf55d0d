//! The client SDK against a real policy engine: decisions, bad requests,
//! and failing closed while the engine is down.

use std::time::Duration;

use warden_client::{ClientConfig, ClientError, Effect, PolicyClient, Request, Source, WhenUnavailable};
use warden_tests::{Sandbox, eventually};

const POLICY: &str = r#"
rules:
  - name: big-refunds
    actions: ["issue_refund"]
    when: "action.params.amount > 100.0"
    effect: require_approval
    reason: "refunds over 100 need a human"
  - name: ok
    effect: allow
"#;

fn config(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url);
    // Recover quickly in tests.
    config.breaker.open_duration = Duration::from_millis(100);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_through_the_sdk() {
    let sandbox = Sandbox::new(&[("p.yaml", POLICY)]);
    let engine = sandbox.start().await;
    let client = PolicyClient::new(config(engine.url())).unwrap();
    let small = client.evaluate(Request::new("bot", "issue_refund").param("amount", 20.0)).await.unwrap();
    assert!(small.is_allowed());
    assert_eq!(small.source, Source::PolicyEngine);
    assert!(small.decision_id.is_some());
    let big = client.evaluate(Request::new("bot", "issue_refund").param("amount", 500.0)).await.unwrap();
    assert!(big.requires_approval());
    assert_eq!(big.reasons, ["refunds over 100 need a human"]);

    let Err(ClientError::InvalidRequest(error)) = client.evaluate(Request::new("", "issue_refund")).await else {
        panic!("an empty agent id is the caller's bug");
    };
    assert_eq!(error.violations[0].field, "agent.id");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_fails_closed_while_the_engine_is_down_and_recovers() {
    let sandbox = Sandbox::new(&[("p.yaml", POLICY)]);
    let engine = sandbox.start().await;
    let addr = engine.addr;
    let client = PolicyClient::new(config(engine.url())).unwrap();
    assert!(client.evaluate(Request::new("bot", "x")).await.unwrap().is_allowed());
    engine.shutdown().await;

    let denied = client.evaluate(Request::new("bot", "x")).await.unwrap();
    assert_eq!(denied.effect, Effect::Deny);
    assert_eq!(denied.source, Source::Unavailable);
    assert!(denied.reasons[0].starts_with("policy engine unavailable"), "{:?}", denied.reasons);

    let mut open_config = config(format!("http://{addr}"));
    open_config.when_unavailable = WhenUnavailable::Allow;
    let lenient = PolicyClient::new(open_config).unwrap();
    assert!(lenient.evaluate(Request::new("bot", "x")).await.unwrap().is_allowed());

    // The engine comes back on the same address: decisions resume once the
    // breaker lets a probe through.
    let mut restarted = sandbox.config();
    restarted.listen = addr.to_string();
    let engine = warden_tests::start(restarted).await;
    let decision = eventually(Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let decision = client.evaluate(Request::new("bot", "x")).await.unwrap();
            (decision.source == Source::PolicyEngine).then_some(decision)
        }
    })
    .await;
    assert!(decision.is_allowed());
    engine.shutdown().await;
}
