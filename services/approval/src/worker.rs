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
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_resilience::Backoff;

use crate::approvals::Approvals;
use crate::metrics::METRICS;
use crate::routes::Receiver;
use crate::store::Outgoing;

pub type AuditClient = AuditServiceClient<warden_client::PolicyChannel>;

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

pub struct Shipper {
    pub approvals: Arc<Approvals>,
    pub audit: Option<AuditClient>,
    pub http: reqwest::Client,
    /// What notifications may reach (checked before each send; the
    /// client's resolver checks names).
    pub webhooks: warden_server::webhook::WebhookPolicy,
    pub secrets: warden_auth::SecretResolver,
    pub replica: String,
    pub backoff: Backoff,
}

impl Shipper {
    pub async fn run(self, every: Duration) {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(error) = self.pass().await {
                tracing::warn!(%error, "approval outbox pass failed; will retry");
            }
        }
    }

    /// Claims and delivers one batch. Returns how many rows were delivered.
    pub async fn pass(&self) -> Result<usize, crate::store::TransitionError> {
        let store = &self.approvals.store;
        let now = self.approvals.clock.now_micros();
        let rows = store.claim(&self.replica, now, now + LEASE.as_micros() as i64, 200).await?;
        if let Ok(pending) = store.outbox_len().await {
            METRICS.outbox_pending.set(pending);
        }
        let mut delivered = Vec::new();
        let mut events = Vec::new();
        for row in &rows {
            match &row.item {
                Some(Outgoing::Audit(event)) => events.push((row.id, row.attempts, event.clone())),
                Some(Outgoing::Notify { receiver, body }) => match self.notify(receiver, body).await {
                    Ok(()) => delivered.push(row.id),
                    Err(retry_after) => {
                        let delay = retry_after.max(self.backoff.delay(row.attempts.max(1) as u32 - 1));
                        store.retry_later(row.id, now + delay.as_micros() as i64).await?;
                    }
                },
                None => {
                    tracing::error!(id = row.id, "dropping an undecodable approval outbox row");
                    delivered.push(row.id);
                }
            }
        }
        let shipped = warden_client::ship_audit_events(self.audit.as_ref(), &events, &self.backoff).await;
        delivered.extend(shipped.delivered);
        for (id, delay) in shipped.retry {
            store.retry_later(id, now + delay.as_micros() as i64).await?;
        }
        if !shipped.dead.is_empty() {
            // Recorded before the rows move: a crash between the two
            // records it again, under the same id.
            let records: Vec<Outgoing> = shipped
                .dead
                .iter()
                .filter_map(|(id, reason)| {
                    let (_, _, event) = events.iter().find(|(row, ..)| row == id)?;
                    let bytes = prost::Message::encoded_len(event);
                    warden_server::dead_letters::dead_lettered_event("approval", event, reason, bytes)
                })
                .map(Outgoing::Audit)
                .collect();
            store.enqueue(&records).await?;
            store.dead_letter(&self.replica, &shipped.dead, now).await?;
            warden_server::dead_letters::count("approval", "audit", shipped.dead.len());
        }
        store.delivered(&self.replica, &delivered).await?;
        Ok(delivered.len())
    }

    /// Delivers one notification. `Err(delay)` to retry (429, 5xx, a
    /// network error); a permanent refusal (other 4xx) is logged and
    /// counted, not retried forever.
    async fn notify(&self, name: &str, body: &serde_json::Value) -> Result<(), Duration> {
        let routes = self.approvals.routes();
        let Some(receiver) = routes.receiver(name) else {
            tracing::warn!(receiver = name, "notification for a receiver no longer configured; dropped");
            METRICS.notifications.with_label_values(&[name, "dropped"]).inc();
            return Ok(());
        };
        if let Some(email) = &receiver.email {
            return self.email(name, email, body).await;
        }
        let (request, secret) = match self.build(receiver, body).await {
            Ok(built) => built,
            Err(error) => {
                tracing::warn!(receiver = name, %error, "cannot build notification; will retry");
                return Err(Duration::from_secs(5));
            }
        };
        let payload = request.1;
        if let Err(refused) = warden_server::webhook::check_url(&self.webhooks, &request.0) {
            METRICS.notifications.with_label_values(&[name, "failed"]).inc();
            tracing::error!(receiver = name, %refused, "notification destination refused; not retried");
            return Ok(());
        }
        let mut http = self.http.post(&request.0).header("content-type", "application/json");
        if let Some(secret) = secret {
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("any key length");
            mac.update(&payload);
            http = http.header("x-warden-signature", format!("sha256={}", hex::encode(mac.finalize().into_bytes())));
        }
        match http.body(payload).send().await {
            Ok(response) if response.status().is_success() => {
                METRICS.notifications.with_label_values(&[name, "sent"]).inc();
                Ok(())
            }
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| warden_resilience::http::parse_retry_after(v, std::time::SystemTime::now()));
                if status.as_u16() == 429 || status.is_server_error() {
                    METRICS.notifications.with_label_values(&[name, "retried"]).inc();
                    tracing::warn!(receiver = name, %status, "notification refused for now; will retry");
                    Err(retry_after.unwrap_or_default())
                } else {
                    METRICS.notifications.with_label_values(&[name, "failed"]).inc();
                    tracing::error!(receiver = name, %status, "notification refused; not retried");
                    Ok(())
                }
            }
            Err(error) => {
                METRICS.notifications.with_label_values(&[name, "retried"]).inc();
                tracing::warn!(receiver = name, %error, "cannot reach receiver; will retry");
                Err(Duration::ZERO)
            }
        }
    }

    /// Sends an email over SMTP. A temporary SMTP refusal (4xx) or a lost
    /// connection is retried; a permanent one (5xx) is logged and counted.
    async fn email(
        &self,
        name: &str,
        email: &crate::routes::EmailReceiver,
        body: &serde_json::Value,
    ) -> Result<(), Duration> {
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        let url = match self.secrets.resolve_setting(&email.smtp_url).await {
            Ok(Some(url)) => url,
            _ => {
                tracing::warn!(receiver = name, "cannot resolve smtp_url; will retry");
                return Err(Duration::from_secs(5));
            }
        };
        let transport = match AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose()) {
            Ok(builder) => builder.timeout(Some(Duration::from_secs(10))).build(),
            Err(error) => {
                tracing::error!(receiver = name, %error, "bad smtp_url; notification not sent");
                METRICS.notifications.with_label_values(&[name, "failed"]).inc();
                return Ok(());
            }
        };
        let (subject, text) = email_text(body);
        let mut message = Message::builder().subject(subject);
        match email.from.parse() {
            Ok(from) => message = message.from(from),
            Err(_) => return Ok(()),
        }
        for to in &email.to {
            match to.parse() {
                Ok(to) => message = message.to(to),
                Err(_) => tracing::warn!(receiver = name, to, "skipping a malformed address"),
            }
        }
        let message = match message.body(text) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(receiver = name, %error, "cannot build the email");
                return Ok(());
            }
        };
        match transport.send(message).await {
            Ok(_) => {
                METRICS.notifications.with_label_values(&[name, "sent"]).inc();
                Ok(())
            }
            Err(error) if error.is_permanent() => {
                METRICS.notifications.with_label_values(&[name, "failed"]).inc();
                tracing::error!(receiver = name, %error, "email refused; not retried");
                Ok(())
            }
            Err(error) => {
                METRICS.notifications.with_label_values(&[name, "retried"]).inc();
                tracing::warn!(receiver = name, %error, "email not sent; will retry");
                Err(Duration::ZERO)
            }
        }
    }

    /// The URL, body and signing secret for a receiver.
    async fn build(
        &self,
        receiver: &Receiver,
        body: &serde_json::Value,
    ) -> Result<((String, Vec<u8>), Option<warden_auth::Secret>), String> {
        if let Some(webhook) = &receiver.webhook {
            let secret = self.secrets.resolve_setting(&webhook.secret).await.map_err(|e| e.to_string())?;
            return Ok(((webhook.url.clone(), serde_json::to_vec(body).expect("json")), secret));
        }
        if let Some(slack) = &receiver.slack {
            let url = self.secrets.resolve_setting(&slack.url).await.map_err(|e| e.to_string())?.ok_or("empty url")?;
            return Ok(((url.expose().to_owned(), serde_json::to_vec(&slack_message(body)).expect("json")), None));
        }
        Err("receiver has no kind".into())
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
