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
use crate::http_config::HttpConfig;
use crate::metrics::METRICS;
use crate::receivers;
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

    /// POSTs `payload` to `url` with a receiver's `http_config`: its
    /// credentials in `Authorization`, its TLS and redirect settings.
    async fn post(&self, url: &str, http: &HttpConfig, payload: &serde_json::Value) -> Delivery {
        let authorization = match http.authorization(|setting| async move { self.secret(&setting).await }).await {
            Ok(authorization) => authorization,
            Err(outcome) => return outcome,
        };
        let headers: Vec<(&str, String)> = authorization.into_iter().map(|value| ("authorization", value)).collect();
        let body = serde_json::to_vec(payload).expect("json");
        if !http.needs_own_client() {
            return self.outbound.post(url, &headers, body).await;
        }
        match http.client_tls() {
            Ok(tls) => self.outbound.post_with(&tls, url, &headers, body).await,
            // A CA or certificate file missing now: it may come back.
            Err(error) => Delivery::Retry(Duration::from_secs(30), error),
        }
    }

    /// A secret setting's value, as text.
    async fn secret(&self, setting: &str) -> Result<String, Delivery> {
        self.outbound.secret(setting).await.map(|secret| secret.expose().to_owned())
    }

    /// `value`, or the file `file` names (read at each delivery).
    async fn value_or_file(&self, value: &str, file: &str) -> Result<String, Delivery> {
        if file.is_empty() { self.secret(value).await } else { self.secret(&format!("file:{file}")).await }
    }

    async fn webhook(&self, config: &ReceiverYaml, index: usize, body: &serde_json::Value) -> Delivery {
        let Some(webhook) = config.webhook_configs.get(index) else {
            return Delivery::Failed("no such webhook".into());
        };
        let url = match self.value_or_file(&webhook.url, &webhook.url_file).await {
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
        self.post(url.trim(), &webhook.http_config, &body).await
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
        let setting = if slack.api_url.is_empty() && slack.api_url_file.is_empty() {
            &global.slack_api_url
        } else {
            &slack.api_url
        };
        let url = match self.value_or_file(setting, &slack.api_url_file).await {
            Ok(url) => url,
            Err(outcome) => return outcome,
        };
        self.post(url.trim(), &slack.http_config, &receivers::slack_message(body, slack)).await
    }

    async fn pagerduty(&self, config: &ReceiverYaml, index: usize, body: &serde_json::Value) -> Delivery {
        let Some(pd) = config.pagerduty_configs.get(index) else {
            return Delivery::Failed("no such pagerduty config".into());
        };
        let routing_key = match self.value_or_file(&pd.routing_key, &pd.routing_key_file).await {
            Ok(key) => key,
            Err(outcome) => return outcome,
        };
        let url = if pd.url.is_empty() { "https://events.pagerduty.com/v2/enqueue" } else { pd.url.as_str() };
        self.post(url, &pd.http_config, &receivers::pagerduty_event(body, routing_key.trim(), pd)).await
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
            let setting = if email.auth_password.is_empty() && email.auth_password_file.is_empty() {
                &global.smtp_auth_password
            } else {
                &email.auth_password
            };
            let password = match self.value_or_file(setting, &email.auth_password_file).await {
                Ok(password) => password,
                Err(outcome) => return outcome,
            };
            builder = builder
                .credentials(lettre::transport::smtp::authentication::Credentials::new(username.clone(), password));
        }
        let transport = builder.timeout(Some(Duration::from_secs(10))).build();
        let from = if email.from.is_empty() { &global.smtp_from } else { &email.from };
        // Alertmanager's headers: `Subject`, `To` and `From` replace the
        // message's own; the others are added. All are templates.
        let mut headers: Vec<(String, String)> = Vec::new();
        let (mut subject, mut to_line, mut from_line) = (None, None, None);
        for (name, text) in &email.headers {
            let value = receivers::render(text, body, "");
            match name.to_ascii_lowercase().as_str() {
                "subject" => subject = Some(value),
                "to" => to_line = Some(value),
                "from" => from_line = Some(value),
                _ => headers.push((name.clone(), value)),
            }
        }
        let subject = subject.unwrap_or_else(|| format!("[warden] {}", receivers::title(body)));
        let text = receivers::render(&email.text, body, "");
        let text = if text.is_empty() {
            format!("{}\n\n{}\n", receivers::title(body), receivers::alert_lines(body))
        } else {
            text
        };
        let html = Some(receivers::render(&email.html, body, "")).filter(|html| !html.is_empty());
        let to_line = to_line.unwrap_or_else(|| email.to.clone());
        let to: Vec<&str> = to_line.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        let from = from_line.as_deref().unwrap_or(from);
        let message = warden_server::delivery::Email { from, to: &to, subject, text, html, headers: &headers };
        warden_server::delivery::send_message(&transport, message).await
    }
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
        let pd = crate::routing::PagerDutyConfig::default();
        let trigger = receivers::pagerduty_event(&body("firing"), "key", &pd);
        let resolve = receivers::pagerduty_event(&body("resolved"), "key", &pd);
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
        let slack = crate::routing::SlackConfig { channel: "#incidents".into(), ..Default::default() };
        let message = receivers::slack_message(&body("firing"), &slack);
        assert_eq!(message["channel"], "#incidents");
        assert_eq!(message["attachments"][0]["color"], "danger");
        assert!(message["attachments"][0]["text"].as_str().unwrap().contains("spending $120/hour"));
        let plain = crate::routing::SlackConfig::default();
        assert_eq!(receivers::slack_message(&body("resolved"), &plain)["attachments"][0]["color"], "good");
    }

    #[test]
    fn a_receivers_templates_shape_its_slack_message_and_pagerduty_event() {
        let yaml = "api_url: http://slack\ntitle: '{{ .Status | toUpper }} {{ .CommonLabels.alertname }}'\ntext: '{{ range .Alerts }}{{ .Annotations.description }}{{ end }}'\nicon_emoji: ':rotating_light:'\nusername: warden\nfields:\n  - title: agent\n    value: '{{ .CommonLabels.agent_id }}'\nactions:\n  - type: button\n    text: Runbook\n    url: 'https://runbooks/{{ .GroupLabels.alertname }}'\n";
        let slack: crate::routing::SlackConfig = serde_yaml::from_str(yaml).unwrap();
        let message = receivers::slack_message(&body("firing"), &slack);
        let attachment = &message["attachments"][0];
        assert_eq!(attachment["title"], "FIRING HighCost");
        assert_eq!(attachment["text"], "spending $120/hour");
        assert_eq!(
            (message["icon_emoji"].as_str(), message["username"].as_str()),
            (Some(":rotating_light:"), Some("warden"))
        );
        assert_eq!(attachment["fields"][0]["value"], "bot");
        assert_eq!(attachment["actions"][0]["url"], "https://runbooks/HighCost");
        let yaml = "routing_key: k\ndescription: '{{ .CommonAnnotations.summary }} ({{ .Alerts | len }})'\nclass: cost\ndetails:\n  agent: '{{ .CommonLabels.agent_id }}'\nlinks:\n  - href: 'http://x/{{ .GroupLabels.agent_id }}'\n    text: agent\n";
        let pd: crate::routing::PagerDutyConfig = serde_yaml::from_str(yaml).unwrap();
        let event = receivers::pagerduty_event(&body("firing"), "k", &pd);
        assert_eq!(event["payload"]["summary"], " (1)");
        assert_eq!(event["payload"]["class"], "cost");
        assert_eq!(event["payload"]["custom_details"]["agent"], "bot");
        assert_eq!(event["links"][0]["href"], "http://x/bot");
    }
}
