//! Background work: the clocks (expiry, escalation, reminders) and the
//! outbox shipper that delivers audit events to the audit service and
//! notifications to webhooks and Slack.
//!
//! Outbox rows are claimed through the database (a lease), so replicas
//! deliver each once; a row is deleted only after its delivery succeeded,
//! and a failed delivery is retried later with backoff and jitter (a
//! receiver's `Retry-After` wins when longer), never dropped: a restart
//! loses nothing, and the audit service's idempotent appends keep each
//! event once.

use std::sync::Arc;
use std::time::Duration;

use hmac::Mac;
use sha2::Sha256;
use warden_server::delivery::{AuditClient, Deliveries, Notified, Notifier, Outbound};

use crate::approvals::Approvals;
use crate::metrics::METRICS;

/// Runs the clocks every `every`.
pub async fn run_clocks(approvals: Arc<Approvals>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = approvals.tick().await {
            tracing::warn!(%error, "approval clock pass failed; will retry");
        }
    }
}

/// How long a claimed row stays ours while we deliver it.
const LEASE: Duration = Duration::from_secs(60);

/// The approval service's notifications: webhooks (HMAC-signed), Slack and
/// email, to the receivers the routes name.
pub struct Notifications {
    pub approvals: Arc<Approvals>,
    pub outbound: Outbound,
}

/// The outbox's delivery loop: audit events to `audit`, notifications
/// through [`Notifications`].
pub fn deliveries(notifications: Notifications, audit: Option<AuditClient>) -> Deliveries<Notifications> {
    let clock = notifications.approvals.clock.clone();
    let table = notifications.approvals.store.outbox_table();
    let now_micros = Arc::new(move || clock.now_micros());
    let pending = Some(METRICS.outbox_pending.clone());
    Deliveries::new("approval", table, notifications, audit, LEASE, now_micros, pending)
}

impl Notifier for Notifications {
    /// Delivers one notification: a permanent refusal (a 4xx other than
    /// 408 and 429, a 5xx SMTP reply) is counted and not retried.
    async fn notify(&self, name: &str, body: &serde_json::Value) -> Notified {
        let routes = self.approvals.routes();
        let Some(receiver) = routes.receiver(name) else {
            METRICS.notifications.with_label_values(&[name, "dropped"]).inc();
            return Notified::Failed("the receiver is no longer configured".into());
        };
        let outcome = match (&receiver.webhook, &receiver.slack, &receiver.email) {
            (Some(webhook), ..) => match self.outbound.secrets.resolve_setting(&webhook.secret).await {
                Ok(secret) => {
                    let payload = serde_json::to_vec(body).expect("json");
                    let signature = secret.map(|secret| {
                        let mut mac =
                            hmac::Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("any key length");
                        mac.update(&payload);
                        ("x-warden-signature", format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
                    });
                    let headers: Vec<_> = signature.into_iter().collect();
                    self.outbound.post(&webhook.url, &headers, payload).await
                }
                Err(error) => Notified::Retry(Duration::from_secs(5), format!("cannot resolve the secret: {error}")),
            },
            (None, Some(slack), _) => match self.outbound.secret(&slack.url).await {
                Ok(url) => {
                    let payload = serde_json::to_vec(&slack_message(body)).expect("json");
                    self.outbound.post(url.expose(), &[], payload).await
                }
                Err(outcome) => outcome,
            },
            (None, None, Some(email)) => self.email(email, body).await,
            (None, None, None) => Notified::Failed("the receiver has no kind".into()),
        };
        let counted = match &outcome {
            Notified::Sent => "sent",
            Notified::Retry(..) => "retried",
            Notified::Failed(_) => "failed",
        };
        METRICS.notifications.with_label_values(&[name, counted]).inc();
        outcome
    }
}

impl Notifications {
    async fn email(&self, email: &crate::routes::EmailReceiver, body: &serde_json::Value) -> Notified {
        use lettre::{AsyncSmtpTransport, Tokio1Executor};
        let url = match self.outbound.secret(&email.smtp_url).await {
            Ok(url) => url,
            Err(outcome) => return outcome,
        };
        let transport = match AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose()) {
            Ok(builder) => builder.timeout(Some(Duration::from_secs(10))).build(),
            Err(error) => return Notified::Failed(format!("bad smtp_url: {error}")),
        };
        let (subject, text) = email_text(body);
        let to: Vec<&str> = email.to.iter().map(String::as_str).collect();
        warden_server::delivery::send_email(&transport, &email.from, &to, subject, text).await
    }
}

/// An email's subject and plain-text body, showing exactly what will run.
fn email_text(body: &serde_json::Value) -> (String, String) {
    let subject = format!(
        "[warden] {}: {} wants to {}",
        body["event"].as_str().unwrap_or("approval"),
        body["agent_id"].as_str().unwrap_or("?"),
        body["action"]["type"].as_str().unwrap_or("?"),
    );
    let text = format!(
        "Approval {}\nState: {}\nAgent: {}\nWhy: {}\nRoute: {} (needs {})\n\nThe exact action (hash {}):\n{}\n",
        body["approval_id"].as_str().unwrap_or(""),
        body["state"].as_str().unwrap_or(""),
        body["agent_id"].as_str().unwrap_or(""),
        body["reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("; "))
            .unwrap_or_default(),
        body["route"].as_str().unwrap_or(""),
        body["min_approvals"],
        body["action_hash"].as_str().unwrap_or(""),
        serde_json::to_string_pretty(&body["action"]).unwrap_or_default(),
    );
    (subject, text)
}

/// A Slack message showing exactly what will run.
fn slack_message(body: &serde_json::Value) -> serde_json::Value {
    let title = format!(
        "{}: {} wants to {} ({})",
        body["event"].as_str().unwrap_or("approval"),
        body["agent_id"].as_str().unwrap_or("?"),
        body["action"]["type"].as_str().unwrap_or("?"),
        body["state"].as_str().unwrap_or("?"),
    );
    let details = format!(
        "*Approval* `{}`\n*Action* ```{}```\n*Why* {}\n*Route* {} (needs {})",
        body["approval_id"].as_str().unwrap_or(""),
        serde_json::to_string_pretty(&body["action"]).unwrap_or_default(),
        body["reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("; "))
            .unwrap_or_default(),
        body["route"].as_str().unwrap_or(""),
        body["min_approvals"],
    );
    serde_json::json!({
        "text": title,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": details}},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_and_email_messages_show_the_exact_action() {
        let body = serde_json::json!({
            "event": "approval_requested", "approval_id": "a-1", "state": "PENDING", "agent_id": "support-bot",
            "action": {"type": "issue_refund", "resource": "order/1234", "estimated_cost": 150.0, "params": {"amount": 150.0}},
            "action_hash": "sha256:ab", "reasons": ["refunds over 100 need a manager"], "route": "default", "min_approvals": 1,
        });
        let slack = slack_message(&body);
        assert_eq!(slack["text"], "approval_requested: support-bot wants to issue_refund (PENDING)");
        let details = slack["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(
            details.contains("\"amount\": 150.0") && details.contains("refunds over 100 need a manager"),
            "{details}"
        );
        let (subject, text) = email_text(&body);
        assert_eq!(subject, "[warden] approval_requested: support-bot wants to issue_refund");
        assert!(text.contains("sha256:ab") && text.contains("order/1234"), "{text}");
    }
}
