//! Delivering the outbox: notifications to webhooks (Alertmanager's
//! payload, version 4), Slack incoming webhooks, PagerDuty's Events API v2
//! (trigger and resolve under one `dedup_key`), email over SMTP and the
//! service's log; and audit events to the audit service.
//!
//! Rows are claimed through the database (a lease), so replicas deliver
//! each once; a row is deleted only after its delivery succeeded. A
//! refused or failed delivery is retried later with backoff and jitter (a
//! receiver's `Retry-After` wins when longer) behind a circuit breaker per
//! integration; only a permanent refusal (a 4xx other than 408 and 429, a
//! 5xx SMTP reply) ends a notification, recorded as `notification_failed`.

use std::sync::Arc;
use std::time::Duration;

use warden_proto::audit::v1 as audit;
use warden_resilience::{BreakerConfig, BreakerRegistry, Outcome};
use warden_server::delivery::{AuditClient, Deliveries, Notified as Delivery, Notifier, Outbound};

use crate::engine::Engine;
use crate::metrics::METRICS;
use crate::routing::ReceiverYaml;

/// The alerting service's notifications: webhook (v4), Slack, PagerDuty,
/// email and the log, each integration behind a circuit breaker of its own.
pub struct Notifications {
    pub engine: Arc<Engine>,
    pub outbound: Outbound,
}

/// The outbox's delivery loop: audit events to `audit`, notifications
/// through [`Notifications`]; a claimed row stays ours for `lease`.
pub fn deliveries(
    notifications: Notifications,
    audit: Option<AuditClient>,
    lease: Duration,
) -> Deliveries<Notifications> {
    let engine = notifications.engine.clone();
    let table = notifications.engine.store.outbox_table();
    let now_micros = Arc::new(move || engine.clock.now_ms() * 1000);
    let pending = Some(METRICS.outbox_pending.clone());
    Deliveries::new("alerting", table, notifications, audit, lease, now_micros, pending)
}

impl Notifier for Notifications {
    async fn notify(&self, receiver: &str, body: &serde_json::Value) -> Delivery {
        let outcome = self.deliver(receiver, body).await;
        let integration = receiver.split('/').nth(1).unwrap_or("unknown");
        let counted = match &outcome {
            Delivery::Sent => "sent",
            Delivery::Retry(..) => "retried",
            Delivery::Failed(_) => "failed",
        };
        METRICS.notifications.with_label_values(&[integration, counted]).inc();
        outcome
    }

    fn recorded(
        &self,
        receiver: &str,
        body: &serde_json::Value,
        attempts: i32,
        outcome: &Delivery,
    ) -> Vec<audit::AuditEvent> {
        match outcome {
            Delivery::Sent => self.delivery_event("notification_sent", receiver, body, attempts, ""),
            Delivery::Failed(reason) => self.delivery_event("notification_failed", receiver, body, attempts, reason),
            Delivery::Retry(..) => Vec::new(),
        }
    }
}

impl Notifications {
    fn delivery_event(
        &self,
        event_type: &str,
        receiver: &str,
        body: &serde_json::Value,
        attempts: i32,
        reason: &str,
    ) -> Vec<audit::AuditEvent> {
        use prost_types::value::Kind;
        let text = |s: &str| prost_types::Value { kind: Some(Kind::StringValue(s.to_owned())) };
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("receiver".to_string(), text(receiver));
        fields.insert("group_key".to_string(), text(body["groupKey"].as_str().unwrap_or("")));
        fields.insert("status".to_string(), text(body["status"].as_str().unwrap_or("")));
        let fingerprints: Vec<prost_types::Value> = body["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["fingerprint"].as_str())
            .map(text)
            .collect();
        fields.insert(
            "fingerprints".to_string(),
            prost_types::Value { kind: Some(Kind::ListValue(prost_types::ListValue { values: fingerprints })) },
        );
        fields
            .insert("attempts".to_string(), prost_types::Value { kind: Some(Kind::NumberValue(f64::from(attempts))) });
        if !reason.is_empty() {
            fields.insert("reason".to_string(), text(reason));
        }
        let now = self.engine.clock.now_ms();
        vec![audit::AuditEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.into(),
            time: Some(prost_types::Timestamp {
                seconds: now.div_euclid(1000),
                nanos: (now.rem_euclid(1000) * 1_000_000) as i32,
            }),
            correlation_id: String::new(),
            agent_id: body["commonLabels"]["agent_id"].as_str().unwrap_or("").to_owned(),
            actor: "warden-alerting".into(),
            payload: Some(prost_types::Struct { fields: fields.into_iter().collect() }),
            sensitive: None,
            subject: String::new(),
        }]
    }

    /// Delivers one notification to `NAME/KIND/INDEX` behind that
    /// integration's circuit breaker.
    async fn deliver(&self, receiver: &str, body: &serde_json::Value) -> Delivery {
        let mut parts = receiver.rsplitn(3, '/');
        let (index, kind, name) = (parts.next(), parts.next(), parts.next());
        let (Some(index), Some(kind), Some(name)) = (index.and_then(|i| i.parse::<usize>().ok()), kind, name) else {
            return Delivery::Failed(format!("malformed receiver {receiver:?}"));
        };
        let loaded = self.engine.loaded();
        let Some(config) = loaded.routing.receivers.get(name) else {
            return Delivery::Failed(format!("receiver {name:?} is no longer configured"));
        };
        let breaker =
            BreakerRegistry::global().get_or_create(&format!("alerting-receiver:{receiver}"), BreakerConfig::default);
        let permit = match breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => return Delivery::Retry(rejected.retry_after, "circuit breaker open".into()),
        };
        let outcome = match kind {
            "webhook" => self.webhook(config, index, body).await,
            "slack" => self.slack(config, &loaded.routing.global, index, body).await,
            "pagerduty" => self.pagerduty(config, index, body).await,
            "email" => self.email(config, &loaded.routing.global, index, body).await,
            "log" => {
                for alert in body["alerts"].as_array().into_iter().flatten() {
                    tracing::warn!(
                        target: "warden::alert",
                        receiver = name,
                        status = alert["status"].as_str().unwrap_or(""),
                        alertname = alert["labels"]["alertname"].as_str().unwrap_or(""),
                        labels = %alert["labels"],
                        summary = alert["annotations"]["summary"].as_str().unwrap_or(""),
                        description = alert["annotations"]["description"].as_str().unwrap_or(""),
                        "alert"
                    );
                }
                Delivery::Sent
            }
            other => Delivery::Failed(format!("unknown integration {other:?}")),
        };
        permit.record(match &outcome {
            Delivery::Sent => Outcome::Success,
            Delivery::Retry(..) => Outcome::Failure,
            Delivery::Failed(_) => Outcome::Ignored,
        });
        outcome
    }

    async fn post(&self, url: &str, payload: &serde_json::Value) -> Delivery {
        self.outbound.post(url, &[], serde_json::to_vec(payload).expect("json")).await
    }

    /// A secret setting's value, as text.
    async fn secret(&self, setting: &str) -> Result<String, Delivery> {
        self.outbound.secret(setting).await.map(|secret| secret.expose().to_owned())
    }

    async fn webhook(&self, config: &ReceiverYaml, index: usize, body: &serde_json::Value) -> Delivery {
        let Some(webhook) = config.webhook_configs.get(index) else {
            return Delivery::Failed("no such webhook".into());
        };
        let url = match self.secret(&webhook.url).await {
            Ok(url) => url,
            Err(outcome) => return outcome,
        };
        let mut body = body.clone();
        if webhook.max_alerts > 0
            && let Some(alerts) = body["alerts"].as_array_mut()
            && alerts.len() > webhook.max_alerts
        {
            let truncated = alerts.len() - webhook.max_alerts;
            alerts.truncate(webhook.max_alerts);
            body["truncatedAlerts"] = serde_json::json!(truncated);
        }
        self.post(&url, &body).await
    }

    async fn slack(
        &self,
        config: &ReceiverYaml,
        global: &crate::routing::GlobalYaml,
        index: usize,
        body: &serde_json::Value,
    ) -> Delivery {
        let Some(slack) = config.slack_configs.get(index) else {
            return Delivery::Failed("no such slack config".into());
        };
        let setting = if slack.api_url.is_empty() { &global.slack_api_url } else { &slack.api_url };
        let url = match self.secret(setting).await {
            Ok(url) => url,
            Err(outcome) => return outcome,
        };
        self.post(&url, &slack_message(body, &slack.channel, &slack.username)).await
    }

    async fn pagerduty(&self, config: &ReceiverYaml, index: usize, body: &serde_json::Value) -> Delivery {
        let Some(pd) = config.pagerduty_configs.get(index) else {
            return Delivery::Failed("no such pagerduty config".into());
        };
        let routing_key = match self.secret(&pd.routing_key).await {
            Ok(key) => key,
            Err(outcome) => return outcome,
        };
        let url = if pd.url.is_empty() { "https://events.pagerduty.com/v2/enqueue" } else { pd.url.as_str() };
        self.post(url, &pagerduty_event(body, &routing_key, &pd.severity)).await
    }

    async fn email(
        &self,
        config: &ReceiverYaml,
        global: &crate::routing::GlobalYaml,
        index: usize,
        body: &serde_json::Value,
    ) -> Delivery {
        use lettre::{AsyncSmtpTransport, Tokio1Executor};
        let Some(email) = config.email_configs.get(index) else {
            return Delivery::Failed("no such email config".into());
        };
        let smarthost = if email.smarthost.is_empty() { &global.smtp_smarthost } else { &email.smarthost };
        let (host, port) = match smarthost.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse::<u16>().unwrap_or(25)),
            None => (smarthost.clone(), 25),
        };
        let require_tls = email.require_tls.or(global.smtp_require_tls).unwrap_or(false);
        let mut builder = if require_tls {
            match AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host) {
                Ok(builder) => builder.port(port),
                Err(error) => return Delivery::Failed(format!("smtp: {error}")),
            }
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host).port(port)
        };
        let username = if email.auth_username.is_empty() { &global.smtp_auth_username } else { &email.auth_username };
        if !username.is_empty() {
            let setting =
                if email.auth_password.is_empty() { &global.smtp_auth_password } else { &email.auth_password };
            let password = match self.secret(setting).await {
                Ok(password) => password,
                Err(outcome) => return outcome,
            };
            builder = builder
                .credentials(lettre::transport::smtp::authentication::Credentials::new(username.clone(), password));
        }
        let transport = builder.timeout(Some(Duration::from_secs(10))).build();
        let from = if email.from.is_empty() { &global.smtp_from } else { &email.from };
        let (subject, text) = email_text(body);
        let to: Vec<&str> = email.to.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        warden_server::delivery::send_email(&transport, from, &to, subject, text).await
    }
}

fn alerts_of(body: &serde_json::Value) -> Vec<&serde_json::Value> {
    body["alerts"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

fn title(body: &serde_json::Value) -> String {
    let alerts = alerts_of(body);
    let firing = alerts.iter().filter(|a| a["status"] == "firing").count();
    let name = body["groupLabels"]["alertname"]
        .as_str()
        .or_else(|| body["commonLabels"]["alertname"].as_str())
        .unwrap_or("alerts");
    let labels: Vec<String> = body["groupLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "alertname")
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    let status = body["status"].as_str().unwrap_or("firing").to_uppercase();
    let count = if status == "FIRING" { format!(":{firing}") } else { String::new() };
    if labels.is_empty() {
        format!("[{status}{count}] {name}")
    } else {
        format!("[{status}{count}] {name} ({})", labels.join(" "))
    }
}

fn alert_lines(body: &serde_json::Value) -> String {
    alerts_of(body)
        .iter()
        .map(|a| {
            let summary = a["annotations"]["summary"].as_str().unwrap_or("");
            let description = a["annotations"]["description"].as_str().unwrap_or("");
            let labels: Vec<String> = a["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            format!(
                "[{}] {summary}\n{description}\nLabels: {}\nSince: {}",
                a["status"].as_str().unwrap_or(""),
                labels.join(", "),
                a["startsAt"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A Slack incoming-webhook message, coloured by severity.
pub fn slack_message(body: &serde_json::Value, channel: &str, username: &str) -> serde_json::Value {
    let severity = body["commonLabels"]["severity"].as_str().unwrap_or("");
    let color = if body["status"] == "resolved" {
        "good"
    } else {
        match severity {
            "critical" => "danger",
            "high" | "warning" => "warning",
            _ => "#439FE0",
        }
    };
    let mut message = serde_json::json!({
        "text": title(body),
        "attachments": [{"color": color, "title": title(body), "text": alert_lines(body), "fallback": title(body)}],
    });
    if !channel.is_empty() {
        message["channel"] = serde_json::json!(channel);
    }
    if !username.is_empty() {
        message["username"] = serde_json::json!(username);
    }
    message
}

/// A PagerDuty Events API v2 event: trigger while firing, resolve after,
/// under one `dedup_key` per group.
pub fn pagerduty_event(body: &serde_json::Value, routing_key: &str, severity: &str) -> serde_json::Value {
    use sha2::Digest;
    let dedup_key = hex::encode(sha2::Sha256::digest(body["groupKey"].as_str().unwrap_or("").as_bytes()));
    let firing = body["status"] == "firing";
    let severity = match (severity, body["commonLabels"]["severity"].as_str()) {
        (s, _) if !s.is_empty() => s.to_owned(),
        (_, Some("critical")) => "critical".into(),
        (_, Some("high")) => "error".into(),
        (_, Some("warning")) => "warning".into(),
        _ => "info".into(),
    };
    let mut summary = title(body);
    summary.truncate(1024);
    serde_json::json!({
        "routing_key": routing_key,
        "event_action": if firing { "trigger" } else { "resolve" },
        "dedup_key": dedup_key,
        "payload": {
            "summary": summary,
            "source": "warden-alerting",
            "severity": severity,
            "custom_details": {
                "firing": alert_lines(body),
                "num_firing": alerts_of(body).iter().filter(|a| a["status"] == "firing").count(),
                "num_resolved": alerts_of(body).iter().filter(|a| a["status"] == "resolved").count(),
            },
        },
    })
}

fn email_text(body: &serde_json::Value) -> (String, String) {
    (format!("[warden] {}", title(body)), format!("{}\n\n{}\n", title(body), alert_lines(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(status: &str) -> serde_json::Value {
        serde_json::json!({
            "version": "4", "groupKey": "0/1:{\"alertname\":\"HighCost\"}", "status": status, "receiver": "pagerduty",
            "groupLabels": {"alertname": "HighCost", "agent_id": "bot"},
            "commonLabels": {"alertname": "HighCost", "severity": "critical", "agent_id": "bot"},
            "alerts": [{"status": status, "labels": {"alertname": "HighCost", "agent_id": "bot"},
                        "annotations": {"summary": "High agent cost", "description": "spending $120/hour"},
                        "startsAt": "2026-11-30T01:00:00.000Z", "fingerprint": "f1"}],
        })
    }

    #[test]
    fn pagerduty_triggers_and_resolves_under_one_dedup_key() {
        let trigger = pagerduty_event(&body("firing"), "key", "");
        let resolve = pagerduty_event(&body("resolved"), "key", "");
        assert_eq!(
            (trigger["event_action"].as_str(), resolve["event_action"].as_str()),
            (Some("trigger"), Some("resolve"))
        );
        assert_eq!(trigger["dedup_key"], resolve["dedup_key"]);
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["summary"], "[FIRING:1] HighCost (agent_id=bot)");
    }

    #[test]
    fn slack_messages_show_the_alerts_and_colour_by_severity() {
        let message = slack_message(&body("firing"), "#incidents", "");
        assert_eq!(message["channel"], "#incidents");
        assert_eq!(message["attachments"][0]["color"], "danger");
        assert!(message["attachments"][0]["text"].as_str().unwrap().contains("spending $120/hour"));
        assert_eq!(slack_message(&body("resolved"), "", "")["attachments"][0]["color"], "good");
    }
}
