//! Scripted timelines in the style of Alertmanager's acceptance tests:
//! events in, notifications out at the expected instants. The engine's
//! clock is moved by hand (no waiting); deliveries go to a fake receiver
//! over HTTP. Storage tests run on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use prost_types::value::Kind as K;
use warden_store::Database;
use warden_testkit::{Answer, Receiver};

use crate::engine::{Clock, Engine, Loaded, PostedAlert, SilenceFields, SilenceRequest};
use crate::notify::{Notifications, deliveries};
use crate::routing;
use crate::rules::{self, RuleSet};
use crate::series::tests::{record, s};
use crate::series::{Derived, labels};
use crate::store::{AlertState, AlertingStore};

/// A time on 10 s and 1 min boundaries.
const T0: i64 = 1_800_000_000_000;

struct Harness {
    engine: Arc<Engine>,
    shipper: warden_server::delivery::Deliveries<Notifications>,
    clock: Clock,
}

fn routing_yaml(url: &str, extra_route: &str, extra: &str) -> String {
    format!(
        "route:\n  receiver: hook\n  group_by: [alertname, agent_id]\n  group_wait: 20s\n  group_interval: 1m\n  repeat_interval: 5m\n{extra_route}receivers:\n  - name: hook\n    webhook_configs: [{{url: '{url}'}}]\n{extra}"
    )
}

const BREAKER_RULES: &str = "groups:\n  - name: g\n    interval: 10s\n    rules:\n      - alert: BreakerOpen\n        expr: circuit_breaker_state{state=\"open\"} == 1\n        for: 30s\n        labels: {severity: critical}\n        annotations: {description: 'breaker {{ $labels.name }} of {{ $labels.agent_id }} is open'}\n";

async fn harness(database: Database, rules_yaml: &str, routing_text: &str, clock: Clock) -> Harness {
    let store = AlertingStore::new(database);
    let loaded = Loaded {
        rules: rules::parse(rules_yaml, "rules.yaml", Duration::from_secs(30)).unwrap(),
        routing: routing::Config::parse(routing_text, "am.yml").unwrap(),
    };
    let snapshot = store.load_snapshot().await.unwrap();
    let derived = snapshot.map_or_else(|| Derived::new(5_000, 3_600_000), |b| serde_json::from_slice(&b).unwrap());
    let alerts = store.load_alerts().await.unwrap();
    let engine = Engine::new(store, loaded, derived, alerts, clock.clone(), false, "http://warden".into());
    engine.refresh_silences().await.unwrap();
    let secrets = warden_auth::SecretResolver::from_process_env(Duration::from_secs(1));
    let outbound = warden_server::delivery::Outbound::new(&Default::default(), Duration::from_secs(10), secrets);
    let mut shipper = deliveries(Notifications { engine: engine.clone(), outbound }, None, Duration::from_secs(60));
    shipper.backoff = warden_resilience::Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5))
        .with_jitter(warden_resilience::Jitter::None);
    Harness { engine, shipper, clock }
}

impl Harness {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Applies an audit event at the engine's current time.
    async fn event(&self, event_type: &str, agent: &str, payload: &[(&str, K)]) {
        let mut state = self.engine.state.lock().await;
        let sequence = state.derived.position;
        state.derived.apply(&record(sequence, event_type, agent, self.now(), payload));
    }

    async fn breaker(&self, agent: &str, breaker_state: &str) {
        self.event("circuit_breaker_changed", agent, &[("name", s("payments")), ("state", s(breaker_state))]).await;
    }

    /// Moves the clock to `T0 + at` in 5 s steps, ticking and delivering at
    /// each; returns when each delivery was seen (ms after T0).
    async fn run_until(&self, at_s: i64, receiver: &Receiver, seen: &mut Vec<(i64, String)>) {
        while self.now() < T0 + at_s * 1000 {
            self.clock.advance(Duration::from_secs(5));
            self.engine.tick().await.unwrap();
            while self.shipper.pass().await.unwrap() > 0 {}
            let got = receiver.got();
            for message in got.iter().skip(seen.len()) {
                seen.push(((self.now() - T0) / 1000, message["status"].as_str().unwrap().to_owned()));
            }
        }
    }

    async fn state_of(&self, alertname: &str) -> Option<AlertState> {
        let state = self.engine.state.lock().await;
        state.alerts.values().find(|a| a.labels["alertname"] == alertname).map(|a| a.state)
    }
}

/// The clock starts at `T0`; real time adds a few ms.
fn clock() -> Clock {
    Clock::at(T0)
}

async fn for_group_wait_repeat_and_resolve_happen_on_time(database: Database) {
    let receiver = Receiver::start().await;
    let url = receiver.url.clone();
    let h = harness(database, BREAKER_RULES, &routing_yaml(&url, "", ""), clock()).await;
    h.breaker("bot", "open").await;
    let mut seen = Vec::new();
    h.run_until(35, &receiver, &mut seen).await;
    assert_eq!(h.state_of("BreakerOpen").await, Some(AlertState::Pending), "held for `for: 30s`");
    h.run_until(55, &receiver, &mut seen).await;
    assert_eq!(h.state_of("BreakerOpen").await, Some(AlertState::Firing));
    assert!(seen.is_empty(), "group_wait holds the first notification: {seen:?}");
    h.run_until(365, &receiver, &mut seen).await;
    // Fired at 40 s; group_wait 20 s; nothing new at each group_interval;
    // repeat_interval 5 m after the first.
    assert_eq!(seen, [(60, "firing".to_string()), (360, "firing".to_string())]);
    h.breaker("bot", "closed").await;
    h.run_until(430, &receiver, &mut seen).await;
    assert_eq!(seen.last(), Some(&(420, "resolved".to_string())), "{seen:?}");
    let resolved = receiver.got().pop().unwrap();
    assert_eq!(resolved["version"], "4");
    assert_eq!(resolved["alerts"][0]["labels"]["agent_id"], "bot");
    assert_eq!(resolved["alerts"][0]["annotations"]["description"], "breaker payments of bot is open");
    assert_eq!(resolved["groupLabels"], serde_json::json!({"alertname": "BreakerOpen", "agent_id": "bot"}));
    assert_eq!(resolved["externalURL"], "http://warden");
    assert_ne!(resolved["alerts"][0]["endsAt"], crate::engine::ZERO_TIME);
    // Nothing more once resolved.
    h.run_until(900, &receiver, &mut seen).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
}

async fn silences_and_inhibition_mute_and_expiry_unmutes(database: Database) {
    let receiver = Receiver::start().await;
    let url = receiver.url.clone();
    let rules_yaml = format!(
        "{BREAKER_RULES}      - alert: BreakerWarning\n        expr: circuit_breaker_state{{state=\"open\"}} == 1\n        for: 40s\n        labels: {{severity: warning}}\n"
    );
    let inhibit = "inhibit_rules:\n  - source_matchers: [severity=critical]\n    target_matchers: [severity=warning]\n    equal: [agent_id]\n";
    let h = harness(database, &rules_yaml, &routing_yaml(&url, "", inhibit), clock()).await;
    let fields = SilenceFields { id: "id", matchers: "matchers", ends_at: "ends_at", comment: "comment" };
    let silence = h
        .engine
        .silence(
            SilenceRequest {
                id: String::new(),
                matchers: vec!["alertname=BreakerOpen".into(), "agent_id=~\"b.*\"".into()],
                starts_at_ms: None,
                ends_at_ms: Some(T0 + 200_000),
                created_by: "ada".into(),
                comment: "maintenance".into(),
            },
            &fields,
        )
        .await
        .unwrap();
    h.breaker("bot", "open").await;
    let mut seen = Vec::new();
    // The critical alert fires at 40 s (silenced), the warning at 50 s:
    // inhibited by the critical one, whose silence does not stop it
    // inhibiting.
    h.run_until(100, &receiver, &mut seen).await;
    assert_eq!(h.state_of("BreakerWarning").await, Some(AlertState::Firing));
    assert!(seen.is_empty(), "warning inhibited, critical silenced: {seen:?}");
    {
        let state = h.engine.state.lock().await;
        let loaded = h.engine.loaded();
        let warning = state.alerts.values().find(|a| a.labels["alertname"] == "BreakerWarning").unwrap();
        let critical = state.alerts.values().find(|a| a.labels["alertname"] == "BreakerOpen").unwrap();
        assert_eq!(Engine::muting(&state, &loaded, warning, h.now()).inhibited_by, vec![critical.fingerprint.clone()]);
        assert_eq!(Engine::muting(&state, &loaded, critical, h.now()).silenced_by, vec![silence.id.clone()]);
    }
    // Expiring the silence lets the critical alert through at the next
    // group_interval; the warning stays inhibited.
    assert!(h.engine.expire_silence(&silence.id).await.unwrap());
    assert!(!h.engine.expire_silence(&silence.id).await.unwrap(), "expiring twice changes nothing");
    h.run_until(200, &receiver, &mut seen).await;
    let got = receiver.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["alerts"][0]["labels"]["alertname"], "BreakerOpen");
    // An expired silence never comes back, even after its original end.
    let silences = h.engine.store.silences().await.unwrap();
    assert!(silences[0].ends_at_ms <= h.now() && silences[0].state(h.now()) == "expired");
}

async fn mute_time_intervals_hold_notifications(database: Database) {
    let receiver = Receiver::start().await;
    let url = receiver.url.clone();
    // T0 is a Friday, 2027-01-15T08:00:00Z.
    let routes =
        "  routes:\n    - receiver: hook\n      matchers: [severity=critical]\n      mute_time_intervals: [morning]\n";
    let intervals = "time_intervals:\n  - name: morning\n    time_intervals: [{times: [{start_time: '08:00', end_time: '08:10'}]}]\n";
    let h = harness(database, BREAKER_RULES, &routing_yaml(&url, routes, intervals), clock()).await;
    h.breaker("bot", "open").await;
    let mut seen = Vec::new();
    h.run_until(590, &receiver, &mut seen).await;
    assert!(seen.is_empty(), "muted until 08:10: {seen:?}");
    h.run_until(700, &receiver, &mut seen).await;
    // The first group_interval tick after 08:10 (600 s) sends it.
    assert_eq!(seen, [(600, "firing".to_string())]);
}

async fn retry_after_is_honoured_and_failures_are_retried_until_delivered(database: Database) {
    let receiver = Receiver::start().await;
    let url = receiver.url.clone();
    let h = harness(database, "groups: []\n", &routing_yaml(&url, "", ""), clock()).await;
    receiver.script([
        Answer::Status(429, Some("2".into())),
        Answer::Status(500, None),
        Answer::Status(503, None),
        Answer::Status(502, None),
    ]);
    let post = |name: &str| PostedAlert {
        labels: labels("", &[("alertname", name), ("agent_id", "bot")])
            .into_iter()
            .filter(|(k, _)| k != "__name__")
            .collect(),
        annotations: Default::default(),
        starts_at_ms: Some(T0 - 60_000),
        ends_at_ms: None,
        generator_url: "http://prometheus/graph".into(),
    };
    h.engine.post(vec![post("Posted")]).await.unwrap();
    // Started a minute ago: not held for group_wait.
    h.engine.tick().await.unwrap();
    assert_eq!(h.shipper.pass().await.unwrap(), 0);
    assert_eq!(receiver.attempts(), 1, "429 with Retry-After: 2");
    h.clock.advance(Duration::from_millis(1900));
    assert_eq!(h.shipper.pass().await.unwrap(), 0);
    assert_eq!(receiver.attempts(), 1, "not before Retry-After");
    let mut delivered_after = None;
    for step in 1..200 {
        h.clock.advance(Duration::from_millis(100));
        if h.shipper.pass().await.unwrap() > 0 {
            delivered_after = Some(1900 + step * 100);
            break;
        }
    }
    // 2 s, then three 5xx answers with backoff 100, 200, 400 ms: one delivery.
    let delivered_after = delivered_after.expect("delivered");
    assert!(delivered_after >= 2_700, "{delivered_after}");
    assert_eq!(receiver.attempts(), 5);
    assert_eq!(receiver.got().len(), 1);
    assert_eq!(receiver.got()[0]["alerts"][0]["generatorURL"], "http://prometheus/graph");
    assert_eq!(h.engine.store.outbox_table().waiting().await.unwrap(), 0);
}

async fn a_restart_sends_the_resolved_notification_once(database: Database) {
    let receiver = Receiver::start().await;
    let url = receiver.url.clone();
    let clock = clock();
    let mut seen = Vec::new();
    {
        let h = harness(database.clone(), BREAKER_RULES, &routing_yaml(&url, "", ""), clock.clone()).await;
        h.breaker("bot", "open").await;
        h.run_until(65, &receiver, &mut seen).await;
        assert_eq!(seen, [(60, "firing".to_string())]);
        h.engine.save_derived().await.unwrap();
        // The process dies here: nothing but the database survives.
    }
    let h = harness(database, BREAKER_RULES, &routing_yaml(&url, "", ""), clock).await;
    assert_eq!(h.state_of("BreakerOpen").await, Some(AlertState::Firing), "the firing alert was stored");
    h.run_until(100, &receiver, &mut seen).await;
    assert_eq!(seen.len(), 1, "the delivered notification is not sent again: {seen:?}");
    h.breaker("bot", "closed").await;
    h.run_until(300, &receiver, &mut seen).await;
    assert_eq!(seen.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), ["firing", "resolved"], "{seen:?}");
}

async fn two_replicas_send_each_notification_once(database: Database) {
    let receiver = Receiver::start().await;
    let url = receiver.url.clone();
    let routing_text = routing_yaml(&url, "", "").replace("group_by: [alertname, agent_id]", "group_by: ['...']");
    let a = harness(database.clone(), "groups: []\n", &routing_text, clock()).await;
    let b = harness(database, "groups: []\n", &routing_text, clock()).await;
    let alerts: Vec<PostedAlert> = (0..50)
        .map(|i| PostedAlert {
            labels: [("alertname".to_string(), "Posted".to_string()), ("n".to_string(), i.to_string())].into(),
            annotations: Default::default(),
            starts_at_ms: Some(T0 - 60_000),
            ends_at_ms: None,
            generator_url: String::new(),
        })
        .collect();
    // Prometheus sends every alert to every replica.
    a.engine.post(alerts.clone()).await.unwrap();
    b.engine.post(alerts).await.unwrap();
    let (ra, rb) = tokio::join!(a.engine.tick(), b.engine.tick());
    ra.unwrap();
    rb.unwrap();
    let (ra, rb) = tokio::join!(a.engine.tick(), b.engine.tick());
    ra.unwrap();
    rb.unwrap();
    loop {
        let (da, db) = tokio::join!(a.shipper.pass(), b.shipper.pass());
        if da.unwrap() + db.unwrap() == 0 {
            break;
        }
    }
    let got = receiver.got();
    assert_eq!(got.len(), 50);
    let mut names: Vec<String> =
        got.iter().map(|m| m["alerts"][0]["labels"]["n"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 50);
}

async fn posted_alerts_resolve_by_ends_at_and_resolve_timeout(database: Database) {
    let receiver = Receiver::start().await;
    let url = receiver.url.clone();
    let h = harness(database, "groups: []\n", &routing_yaml(&url, "", ""), clock()).await;
    let alert = |ends: Option<i64>| PostedAlert {
        labels: [("alertname".to_string(), "Disk".to_string()), ("agent_id".to_string(), "x".to_string())].into(),
        annotations: [("summary".to_string(), "disk full".to_string())].into(),
        starts_at_ms: None,
        ends_at_ms: ends,
        generator_url: String::new(),
    };
    h.engine.post(vec![alert(None)]).await.unwrap();
    let mut seen = Vec::new();
    // Re-sent while firing (Prometheus does, every evaluation).
    for at in [60, 120, 180] {
        h.run_until(at, &receiver, &mut seen).await;
        h.engine.post(vec![alert(None)]).await.unwrap();
    }
    assert_eq!(seen, [(20, "firing".to_string())]);
    // An endsAt in the past resolves it.
    h.engine.post(vec![alert(Some(h.now() - 1))]).await.unwrap();
    h.run_until(300, &receiver, &mut seen).await;
    assert_eq!(seen.last().unwrap().1, "resolved");
    // One not re-sent resolves after resolve_timeout (5 m).
    h.engine
        .post(vec![PostedAlert { labels: [("alertname".to_string(), "Other".to_string())].into(), ..alert(None) }])
        .await
        .unwrap();
    h.run_until(600, &receiver, &mut seen).await;
    assert_eq!(h.state_of("Other").await, Some(AlertState::Resolved));
}

async fn keep_firing_for_holds_an_alert_through_a_gap(database: Database) {
    let receiver = Receiver::start().await;
    let rules_yaml = BREAKER_RULES.replace("        for: 30s\n", "        for: 30s\n        keep_firing_for: 1m\n");
    let h = harness(database, &rules_yaml, &routing_yaml(&receiver.url, "", ""), clock()).await;
    h.breaker("bot", "open").await;
    let mut seen = Vec::new();
    h.run_until(65, &receiver, &mut seen).await;
    assert_eq!(seen, [(60, "firing".to_string())]);
    // The condition clears at 65 s. The minute of `keep_firing_for` counts
    // from the first evaluation without it, at 70 s (Prometheus'
    // KeepFiringSince): still firing at 125 s, resolved at 130 s.
    h.breaker("bot", "closed").await;
    h.run_until(125, &receiver, &mut seen).await;
    assert_eq!(h.state_of("BreakerOpen").await, Some(AlertState::Firing));
    h.run_until(130, &receiver, &mut seen).await;
    assert_eq!(h.state_of("BreakerOpen").await, Some(AlertState::Resolved));
    h.run_until(200, &receiver, &mut seen).await;
    assert_eq!(seen.last().map(|(_, s)| s.as_str()), Some("resolved"), "{seen:?}");
}

warden_store::backend_tests!(
    keep_firing_for_holds_an_alert_through_a_gap,
    for_group_wait_repeat_and_resolve_happen_on_time,
    silences_and_inhibition_mute_and_expiry_unmutes,
    mute_time_intervals_hold_notifications,
    retry_after_is_honoured_and_failures_are_retried_until_delivered,
    a_restart_sends_the_resolved_notification_once,
    two_replicas_send_each_notification_once,
    posted_alerts_resolve_by_ends_at_and_resolve_timeout,
);

/// The seeds' eight rules and the dead-letter rule, each driven by a stream
/// of audit events built to trigger it, and quiet for a stream that should
/// not. The events are as the services write them (`auth_denied` codes in
/// gRPC's spelling, `Unauthenticated`).
#[tokio::test]
async fn the_default_rules_fire_on_misbehaviour_and_stay_quiet_otherwise() {
    let database = warden_store::testing::sqlite().await;
    let store = AlertingStore::new(database.database.clone());
    let loaded = Loaded {
        rules: RuleSet::load(&[], Duration::from_secs(30)).unwrap(),
        routing: routing::Config::default_config(),
    };
    let engine =
        Engine::new(store, loaded, Derived::new(15_000, 3 * 3_600_000), Vec::new(), clock(), false, String::new());
    let mut sequence = 0;
    let mut emit = |state: &mut crate::engine::State, event: &str, agent: &str, at: i64, payload: &[(&str, K)]| {
        state.derived.apply(&record(sequence, event, agent, at, payload));
        sequence += 1;
    };
    let number = K::NumberValue;
    let step_ms = 10_000;
    // 2 hours, an event batch every 10 s.
    for i in 0..720 {
        engine.clock.advance(Duration::from_millis(step_ms as u64));
        let at = engine.clock.now_ms();
        {
            let mut state = engine.state.lock().await;
            for agent in ["bad", "good"] {
                let bad = agent == "bad";
                // HighErrorRate: 5 failures per 10 s (0.5/s) vs none.
                for _ in 0..5 {
                    let status = if bad { "failure" } else { "success" };
                    emit(
                        &mut state,
                        "action_completed",
                        agent,
                        at,
                        &[
                            ("action_type", s("refund")),
                            ("status", s(status)),
                            // SlowActionExecution: 20 s actions vs 0.2 s.
                            ("duration_seconds", number(if bad { 20.0 } else { 0.2 })),
                            // HighCost: $1 per action, 30/min = $1800/h vs $0.01.
                            ("cost", number(if bad { 1.0 } else { 0.0001 })),
                        ],
                    );
                }
                // PolicyViolationSpike: 150 denials per 10 s (15/s) vs 1.
                for _ in 0..if bad { 150 } else { 1 } {
                    emit(&mut state, "policy_evaluation", agent, at, &[("effect", s("deny"))]);
                }
                // UnauthorizedAccessAttempt / RateLimitExceeded: 60 and 120
                // per 10 s (6/s, 12/s) vs one of each.
                let count = |n: f64| if bad { n } else { 0.0 };
                emit(
                    &mut state,
                    "auth_denied",
                    agent,
                    at,
                    &[
                        // As the auth layer writes it (gRPC's code name).
                        ("code", s("Unauthenticated")),
                        ("peer", s(if bad { "10.0.0.66" } else { "10.0.0.1" })),
                        ("suppressed_before", number(count(59.0))),
                    ],
                );
                emit(
                    &mut state,
                    "auth_denied",
                    agent,
                    at,
                    &[("code", s("ResourceExhausted")), ("suppressed_before", number(count(119.0)))],
                );
            }
            if i == 695 {
                // AgentRefused: one refused claim is enough.
                emit(&mut state, "auth_denied", "bad", at, &[("code", s("PermissionDenied"))]);
            }
            if i == 690 {
                // DeadLetters: the audit service refused one of the policy
                // engine's records for good.
                emit(
                    &mut state,
                    "dead_lettered",
                    "bad",
                    at,
                    &[("service", s("policy-engine")), ("dead_event_type", s("policy_evaluation"))],
                );
            }
            if i == 0 {
                // ApprovalBacklog: one request never decided, one decided at once.
                emit(&mut state, "approval_requested", "bad", at, &[("approval_id", s("stuck"))]);
                emit(&mut state, "approval_requested", "good", at, &[("approval_id", s("quick"))]);
                emit(&mut state, "approval_granted", "good", at + 1000, &[("approval_id", s("quick"))]);
                // CircuitBreakerOpen: opened and left open vs opened and closed.
                emit(
                    &mut state,
                    "circuit_breaker_changed",
                    "bad",
                    at,
                    &[("name", s("payments")), ("state", s("open"))],
                );
                emit(
                    &mut state,
                    "circuit_breaker_changed",
                    "good",
                    at,
                    &[("name", s("payments")), ("state", s("open"))],
                );
                emit(
                    &mut state,
                    "circuit_breaker_changed",
                    "good",
                    at + 1000,
                    &[("name", s("payments")), ("state", s("closed"))],
                );
            }
        }
        engine.tick().await.unwrap();
    }
    let state = engine.state.lock().await;
    let firing: std::collections::BTreeSet<(String, String)> = state
        .alerts
        .values()
        .filter(|a| a.state == AlertState::Firing)
        .map(|a| {
            let who = a
                .labels
                .get("agent_id")
                .or_else(|| a.labels.get("ip"))
                .or_else(|| a.labels.get("service"))
                .cloned()
                .unwrap_or_default();
            (a.labels["alertname"].clone(), who)
        })
        .collect();
    let expected: std::collections::BTreeSet<(String, String)> = [
        ("HighErrorRate", "bad"),
        ("SlowActionExecution", "bad"),
        ("HighCost", "bad"),
        ("ApprovalBacklog", "bad"),
        ("PolicyViolationSpike", "bad"),
        ("CircuitBreakerOpen", "bad"),
        ("UnauthorizedAccessAttempt", "10.0.0.66"),
        ("RateLimitExceeded", "bad"),
        ("DeadLetters", "policy-engine"),
        ("AgentRefused", "bad"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(firing, expected);
    for status in state.rule_status.values() {
        assert_eq!(status.last_error, "");
    }
}

#[test]
fn the_seeds_alert_file_loads_with_metric_names_changed() {
    // The seeds' own file (observability-kit/alerts.yaml), with only the
    // metric names Warden derives differently changed.
    let text = include_str!("../testdata/seeds-alerts.yaml")
        .replace(
            "histogram_quantile(0.95, agent_action_duration_seconds)",
            "histogram_quantile(0.95, agent_action_duration_seconds_bucket)",
        )
        .replace("http_requests_total", "requests_denied_total");
    let set = rules::parse(&text, "alerts.yaml", Duration::from_secs(30)).unwrap();
    assert_eq!(set.rule_count(), 8);
}

/// Slack, PagerDuty and email receivers, delivered for real to fakes: the
/// seeds' critical routing (PagerDuty and Slack), trigger then resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_pagerduty_and_email_receivers_are_delivered_to() {
    let slack = Receiver::start().await;
    let pagerduty = Receiver::start().await;
    let smtp = warden_testkit::Smtp::start().await;
    let routing_text = format!(
        "global:\n  smtp_smarthost: '{}'\n  smtp_from: warden@example.com\nroute:\n  receiver: mail\n  group_wait: 0s\n  routes:\n    - matchers: [severity=critical]\n      receiver: pager\n      continue: true\n    - matchers: [severity=critical]\n      receiver: mail\nreceivers:\n  - name: pager\n    slack_configs: [{{api_url: '{}', channel: '#incidents', send_resolved: true}}]\n    pagerduty_configs: [{{routing_key: literal-key, url: '{}'}}]\n  - name: mail\n    email_configs: [{{to: oncall@example.com}}]\n",
        smtp.addr, slack.url, pagerduty.url
    );
    let test = warden_store::testing::sqlite().await;
    let h = harness(test.database.clone(), "groups: []\n", &routing_text, clock()).await;
    let alert = |ends: Option<i64>| PostedAlert {
        labels: [("alertname".to_string(), "HighCost".to_string()), ("severity".to_string(), "critical".to_string())]
            .into(),
        annotations: [("summary".to_string(), "agent spending $120/hour".to_string())].into(),
        starts_at_ms: None,
        ends_at_ms: ends,
        generator_url: String::new(),
    };
    h.engine.post(vec![alert(None)]).await.unwrap();
    h.engine.tick().await.unwrap();
    while h.shipper.pass().await.unwrap() > 0 {}
    let trigger = &pagerduty.got()[0];
    assert_eq!(
        (trigger["event_action"].as_str(), trigger["routing_key"].as_str()),
        (Some("trigger"), Some("literal-key"))
    );
    assert_eq!(slack.got()[0]["channel"], "#incidents");
    assert_eq!(slack.got()[0]["attachments"][0]["color"], "danger");
    let mail = smtp.received();
    assert_eq!(mail.len(), 1);
    assert!(
        mail[0].contains("Subject: [warden] [FIRING:1] HighCost") && mail[0].contains("agent spending $120/hour"),
        "{}",
        mail[0]
    );
    // Resolved: PagerDuty resolves the same incident; Slack (send_resolved)
    // says so; email (send_resolved false by default) stays quiet.
    h.clock.advance(Duration::from_secs(1));
    h.engine.post(vec![alert(Some(h.now() - 1))]).await.unwrap();
    h.clock.advance(Duration::from_secs(300));
    h.engine.tick().await.unwrap();
    while h.shipper.pass().await.unwrap() > 0 {}
    let resolve = &pagerduty.got()[1];
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
    assert_eq!(slack.got()[1]["attachments"][0]["color"], "good");
    assert_eq!(smtp.received().len(), 1);
}

/// An `alertmanager.yml` as an Alertmanager user has it: credentials in
/// `http_config` reach each receiver, templates shape the messages, and a
/// field Warden does not implement is refused by name at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alertmanager_configs_credentials_and_templates_reach_the_receivers() {
    let (hook, slack, pagerduty) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    let smtp = warden_testkit::Smtp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("hook-token");
    std::fs::write(&token_file, "from-a-file\n").unwrap();
    let routing_text = format!(
        r#"global:
  smtp_smarthost: '{smtp}'
  smtp_from: warden@example.com
route:
  receiver: all
  group_wait: 0s
receivers:
  - name: all
    webhook_configs:
      - url: '{hook}'
        http_config:
          authorization:
            type: Token
            credentials_file: {token}
    slack_configs:
      - api_url: '{slack}'
        title: '{{{{ .Status | toUpper }}}}: {{{{ .CommonLabels.alertname }}}}'
        text: '{{{{ range .Alerts }}}}{{{{ .Annotations.summary }}}}{{{{ end }}}}'
        http_config:
          basic_auth: {{username: warden, password: hunter2}}
    pagerduty_configs:
      - routing_key: key
        url: '{pagerduty}'
        description: '{{{{ .CommonLabels.alertname }}}} on {{{{ .CommonLabels.agent_id }}}}'
        http_config:
          bearer_token: pd-token
          follow_redirects: false
    email_configs:
      - to: oncall@example.com
        headers: {{Subject: 'Warden: {{{{ .CommonLabels.alertname }}}}'}}
        html: '<b>{{{{ .CommonLabels.alertname }}}}</b>'
"#,
        smtp = smtp.addr,
        hook = hook.url,
        slack = slack.url,
        pagerduty = pagerduty.url,
        token = token_file.display(),
    );
    let test = warden_store::testing::sqlite().await;
    let h = harness(test.database.clone(), "groups: []\n", &routing_text, clock()).await;
    let alert = PostedAlert {
        labels: [("alertname", "HighCost"), ("agent_id", "bot")].map(|(k, v)| (k.to_string(), v.to_string())).into(),
        annotations: [("summary".to_string(), "agent spending $120/hour".to_string())].into(),
        starts_at_ms: None,
        ends_at_ms: None,
        generator_url: String::new(),
    };
    h.engine.post(vec![alert]).await.unwrap();
    h.engine.tick().await.unwrap();
    while h.shipper.pass().await.unwrap() > 0 {}
    assert_eq!(hook.authorizations(), [Some("Token from-a-file".to_string())]);
    assert_eq!(slack.authorizations(), [Some("Basic d2FyZGVuOmh1bnRlcjI=".to_string())]);
    assert_eq!(pagerduty.authorizations(), [Some("Bearer pd-token".to_string())]);
    assert_eq!(slack.got()[0]["attachments"][0]["title"], "FIRING: HighCost");
    assert_eq!(slack.got()[0]["attachments"][0]["text"], "agent spending $120/hour");
    assert_eq!(pagerduty.got()[0]["payload"]["summary"], "HighCost on bot");
    let mail = smtp.received();
    assert!(mail[0].contains("Subject: Warden: HighCost") && mail[0].contains("<b>HighCost</b>"), "{}", mail[0]);

    // What Alertmanager has and Warden does not is refused by name, not
    // as a parse error; so is a field neither has, and a bad combination.
    let refused = |extra: &str| {
        let text = format!(
            "route: {{receiver: r}}\nreceivers:\n  - name: r\n    webhook_configs:\n      - url: http://h\n{extra}"
        );
        routing::Config::parse(&text, "alertmanager.yml").unwrap_err()
    };
    assert_eq!(
        refused("        http_config: {oauth2: {client_id: x}}\n"),
        "alertmanager.yml: receivers[0].webhook_configs[0].http_config.oauth2: Alertmanager's `oauth2` is not supported by Warden yet"
    );
    assert!(refused("        http_confg: {}\n").contains("http_confg: unknown field"));
    assert!(refused("        http_config: {bearer_token: a, basic_auth: {username: u}}\n").contains("at most one of"),);
    assert!(refused("        http_config: {tls_config: {cert_file: /c.pem}}\n").contains("needs its key"));
    let template = "route: {receiver: r}\nreceivers:\n  - name: r\n    slack_configs:\n      - api_url: http://h\n        title: '{{ template \"slack.custom\" . }}'\n";
    assert!(routing::Config::parse(template, "am.yml").unwrap_err().contains("receivers[0].slack_configs[0].title"));
}
