//! Engine tests: kill switches and limits on top of rule evaluation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use warden_policy::cel::Input;
use warden_policy::policy::{Effect, PolicySet, Source, compile_sources};
use warden_proto::policy::v1::{Action, Agent};

use crate::engine::{Clock, Decision, Engine, KillSwitches};
use crate::limits::MemoryLimitStore;

fn set(yaml: &str) -> PolicySet {
    compile_sources(&[Source { file: "test.yaml".into(), content: yaml.into() }])
        .unwrap_or_else(|errors| panic!("{}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))
}

fn agent(id: &str, roles: &[&str], confidence: f64) -> Agent {
    Agent {
        id: id.into(),
        name: String::new(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        confidence,
        labels: HashMap::new(),
    }
}

fn action(kind: &str, cost: f64) -> Action {
    Action { r#type: kind.into(), resource: String::new(), estimated_cost: cost, params: None }
}

// === Engine: kill switches and limits ===

const LIMITS: &str = r#"
rules:
  - name: low-confidence
    when: "agent.confidence < 0.7"
    effect: require_approval
  - name: no-deletes
    actions: ["delete_*"]
    effect: deny
  - name: allow-all
    effect: allow
limits:
  - name: email-rate
    actions: ["send_email"]
    per: agent
    max_requests: 3
    window: 1m
  - name: daily-spend
    per: agent
    max_cost: 50.0
    window: 24h
    effect: require_approval
"#;

fn engine(yaml: &str) -> Engine {
    Engine::new(set(yaml), Arc::new(MemoryLimitStore::new()), Clock::starting_at(1_781_524_800_000))
}

async fn effect_of(engine: &Engine, agent: &Agent, action: &Action) -> Decision {
    engine.decide(&Input { agent, action, time: engine.clock().now(), correlation_id: "" }).await
}

#[tokio::test(start_paused = true)]
async fn request_limits_slide_with_the_clock() {
    let engine = engine(LIMITS);
    let bot = agent("bot", &[], 0.9);
    let email = action("send_email", 0.0);
    for _ in 0..3 {
        assert_eq!(effect_of(&engine, &bot, &email).await.effect, Effect::Allow);
    }
    let limited = effect_of(&engine, &bot, &email).await;
    assert_eq!(limited.effect, Effect::Deny);
    assert_eq!(limited.matched(), ["email-rate"]);
    assert_eq!(limited.reasons(), ["limit 'email-rate' exceeded: at most 3 requests per 1m agent"]);
    // Another agent has its own count.
    assert_eq!(effect_of(&engine, &agent("other", &[], 0.9), &email).await.effect, Effect::Allow);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(effect_of(&engine, &bot, &email).await.effect, Effect::Deny);
    tokio::time::advance(Duration::from_secs(33)).await;
    assert_eq!(effect_of(&engine, &bot, &email).await.effect, Effect::Allow);
}

#[tokio::test(start_paused = true)]
async fn spend_limits_require_approval_and_denied_requests_do_not_count() {
    let engine = engine(LIMITS);
    let bot = agent("bot", &[], 0.9);
    assert_eq!(effect_of(&engine, &bot, &action("buy", 30.0)).await.effect, Effect::Allow);
    // Denied by a rule: not counted against the spend limit.
    assert_eq!(effect_of(&engine, &bot, &action("delete_user", 30.0)).await.effect, Effect::Deny);
    let over = effect_of(&engine, &bot, &action("buy", 30.0)).await;
    assert_eq!(over.effect, Effect::RequireApproval);
    assert_eq!(over.reasons(), ["limit 'daily-spend' exceeded: at most cost 50 per 24h agent"]);
    // The record keeps what the rules alone said, for replay.
    assert_eq!(over.rules_effect, Effect::Allow);
    // The approval-limited request counted (its outcome was not deny).
    assert_eq!(effect_of(&engine, &bot, &action("buy", 1.0)).await.effect, Effect::RequireApproval);
    // A rule that already requires approval keeps its reason next to the limit's.
    let unsure = agent("bot", &[], 0.5);
    let both = effect_of(&engine, &unsure, &action("buy", 1.0)).await;
    assert_eq!(both.matched(), ["low-confidence", "daily-spend"]);
    tokio::time::advance(Duration::from_secs(25 * 3600)).await;
    assert_eq!(effect_of(&engine, &bot, &action("buy", 30.0)).await.effect, Effect::Allow);
}

#[tokio::test]
async fn kill_switches_deny_first() {
    let engine = engine(LIMITS);
    let bot = agent("bot", &[], 0.9);
    engine.set_kill_switches(KillSwitches {
        global: None,
        agents: [("bot".to_string(), Arc::from("runaway loop"))].into(),
    });
    let decision = effect_of(&engine, &bot, &action("buy", 1.0)).await;
    assert_eq!(decision.effect, Effect::Deny);
    assert_eq!(decision.reasons(), ["kill switch engaged: runaway loop"]);
    assert_eq!(decision.rules_effect, Effect::Allow, "what the rules said, for replay");
    assert_eq!(effect_of(&engine, &agent("other", &[], 0.9), &action("buy", 1.0)).await.effect, Effect::Allow);
    engine.set_kill_switches(KillSwitches { global: Some(Arc::from("incident 7")), agents: HashMap::new() });
    let decision = effect_of(&engine, &agent("other", &[], 0.9), &action("buy", 1.0)).await;
    assert_eq!(decision.reasons(), ["kill switch engaged: incident 7"]);
}

#[tokio::test]
async fn limits_fail_closed_when_the_store_is_down() {
    let store = crate::limits::RedisLimitStore::new("redis://127.0.0.1:1", "x:", Duration::from_millis(300)).unwrap();
    let engine = Engine::new(set(LIMITS), Arc::new(store), Clock::system());
    let decision = effect_of(&engine, &agent("bot", &[], 0.9), &action("send_email", 0.0)).await;
    assert_eq!(decision.effect, Effect::Deny);
    assert!(
        decision.reasons()[0].starts_with("limits cannot be checked (email-rate, daily-spend)"),
        "{:?}",
        decision.reasons()
    );
    // Requests no limit applies to are unaffected... but daily-spend applies
    // to every action, so pick a rule denial to show rules still work.
    let denied = effect_of(&engine, &agent("bot", &[], 0.9), &action("delete_x", 0.0)).await;
    assert_eq!(denied.matched(), ["no-deletes"]);
}
