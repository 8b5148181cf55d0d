//! The durable delivery loop every service with an outbox runs: rows are
//! claimed through the database (a lease, so replicas deliver each once),
//! audit events go to the audit service in batches (one refused for good
//! goes to the dead letters, the rest move on), notifications go through
//! the service's [`Notifier`] with backoff and jitter (a receiver's
//! `Retry-After` wins when longer), and a row is deleted only once
//! delivered, or once refused for good: nothing is lost, nothing retried
//! forever.
//!
//! The HTTP and SMTP sends that notifiers share are here too ([`post`],
//! [`send_email`]), with one reading of a receiver's answer: 2xx is sent;
//! 408, 429 and 5xx (and a lost connection) are worth retrying; any other
//! refusal, and a 5xx SMTP reply, is final.

use std::sync::Arc;
use std::time::Duration;

use warden_client::OutboxItem;
use warden_proto::audit::v1::AuditEvent;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_resilience::Backoff;
use warden_store::StoreError;

use crate::dead_letters::OutboxTable;
use crate::webhook::WebhookPolicy;

pub type AuditClient = AuditServiceClient<warden_client::PolicyChannel>;

/// How one notification's delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Notified {
    Sent,
    /// Try again after at least this long.
    Retry(Duration, String),
    /// Refused for good.
    Failed(String),
}

/// What a notifier sends with: an HTTP client that follows the webhook
/// policy, the policy (checked before each send), and the secret resolver
/// its receivers' URLs, keys and passwords come from.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub http: reqwest::Client,
    pub policy: WebhookPolicy,
    pub secrets: warden_auth::SecretResolver,
    timeout: Duration,
    /// Clients for receivers with TLS settings of their own, by settings.
    own_clients: Arc<std::sync::Mutex<Vec<(crate::webhook::ClientTls, reqwest::Client)>>>,
}

impl Outbound {
    /// Deliveries time out after `timeout`.
    pub fn new(policy: &WebhookPolicy, timeout: Duration, secrets: warden_auth::SecretResolver) -> Outbound {
        Outbound {
            http: crate::webhook::http_client(policy, timeout),
            policy: *policy,
            secrets,
            timeout,
            own_clients: Arc::new(std::sync::Mutex::new(Vec::new())),
        }
    }

    /// POSTs `body` to `url` (see [`post`]).
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Notified {
        post(&self.http, &self.policy, url, headers, body).await
    }

    /// POSTs `body` to `url` with a receiver's own TLS and redirect
    /// settings (a client built once per distinct settings and kept).
    pub async fn post_with(
        &self,
        tls: &crate::webhook::ClientTls,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Notified {
        let client = {
            let mut clients = self.own_clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match clients.iter().find(|(settings, _)| settings == tls) {
                Some((_, client)) => client.clone(),
                None => match crate::webhook::http_client_with(&self.policy, self.timeout, tls) {
                    Ok(client) => {
                        // Settings come from the routing file: a handful.
                        if clients.len() >= 64 {
                            clients.remove(0);
                        }
                        clients.push((tls.clone(), client.clone()));
                        client
                    }
                    Err(error) => return Notified::Failed(error),
                },
            }
        };
        post(&client, &self.policy, url, headers, body).await
    }

    /// A secret setting's value: an empty one is a failed delivery, one
    /// that cannot be read now (a vault unreachable) a retry.
    pub async fn secret(&self, setting: &str) -> Result<warden_auth::Secret, Notified> {
        match self.secrets.resolve_setting(setting).await {
            Ok(Some(secret)) => Ok(secret),
            Ok(None) => Err(Notified::Failed("an empty setting".into())),
            Err(error) => Err(Notified::Retry(Duration::from_secs(5), format!("cannot resolve a secret: {error}"))),
        }
    }
}

/// A service's notifications: how one is delivered, and what is recorded
/// about its outcome.
pub trait Notifier: Send + Sync + 'static {
    /// Delivers the notification for `receiver`.
    fn notify(&self, receiver: &str, body: &serde_json::Value) -> impl Future<Output = Notified> + Send;

    /// Audit events recording an outcome (`notification_sent`, ...); none
    /// by default. They are queued before the row is deleted.
    fn recorded(
        &self,
        _receiver: &str,
        _body: &serde_json::Value,
        _attempts: i32,
        _outcome: &Notified,
    ) -> Vec<AuditEvent> {
        Vec::new()
    }
}

/// One service's delivery loop.
pub struct Deliveries<N> {
    /// The service, for its dead letters' notices and metric.
    pub service: &'static str,
    pub table: OutboxTable,
    /// The audit service; `None`: events are not recorded (and count as
    /// delivered).
    pub audit: Option<AuditClient>,
    pub notifier: N,
    pub replica: String,
    pub backoff: Backoff,
    /// How long a claimed row stays ours while we deliver it.
    pub lease: Duration,
    /// This service's clock, in microseconds (tests run it on a manual one).
    pub now_micros: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Set to the rows waiting at each pass.
    pub pending: Option<prometheus::IntGauge>,
}

impl<N: Notifier> Deliveries<N> {
    /// The loop over `table` for `service`: a fresh replica name, backoff
    /// from 1 s to 5 min, `pending` set at each pass.
    pub fn new(
        service: &'static str,
        table: OutboxTable,
        notifier: N,
        audit: Option<AuditClient>,
        lease: Duration,
        now_micros: Arc<dyn Fn() -> i64 + Send + Sync>,
        pending: Option<prometheus::IntGauge>,
    ) -> Deliveries<N> {
        Deliveries {
            service,
            table,
            audit,
            notifier,
            replica: uuid::Uuid::now_v7().to_string(),
            backoff: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(300)),
            lease,
            now_micros,
            pending,
        }
    }

    /// Delivers every `every`, and as soon as `wake` is notified.
    pub async fn run(self, every: Duration, wake: Option<Arc<tokio::sync::Notify>>) {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match &wake {
                Some(wake) => tokio::select! {
                    _ = interval.tick() => {}
                    _ = wake.notified() => {}
                },
                None => {
                    interval.tick().await;
                }
            }
            if let Err(error) = self.pass().await {
                tracing::warn!(service = self.service, %error, "outbox pass failed; will retry");
            }
        }
    }

    /// Claims and delivers one batch; returns how many rows were delivered.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        let table = &self.table;
        let now = (self.now_micros)();
        let rows = table.claim(&self.replica, now, now + self.lease.as_micros() as i64, 200).await?;
        if let Some(gauge) = &self.pending
            && let Ok(waiting) = table.waiting().await
        {
            gauge.set(waiting);
        }
        let (mut delivered, mut events, mut follow_ups) = (Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            match OutboxItem::decode(&row.kind, &row.payload) {
                Some(OutboxItem::Audit(event)) => events.push((row.id, row.attempts, event)),
                Some(OutboxItem::Notify { receiver, body }) => {
                    let outcome = self.notifier.notify(&receiver, &body).await;
                    if self.audit.is_some() {
                        follow_ups.extend(self.notifier.recorded(&receiver, &body, row.attempts, &outcome));
                    }
                    match outcome {
                        Notified::Sent => delivered.push(row.id),
                        Notified::Failed(reason) => {
                            tracing::error!(service = self.service, %receiver, %reason, "notification refused; not retried");
                            delivered.push(row.id);
                        }
                        Notified::Retry(at_least, reason) => {
                            tracing::warn!(service = self.service, %receiver, %reason, attempts = row.attempts, "notification not delivered; will retry");
                            let delay = at_least.max(self.backoff.delay(row.attempts.max(1) as u32 - 1));
                            table.retry_later(row.id, now + delay.as_micros() as i64).await?;
                        }
                    }
                }
                None => {
                    tracing::error!(service = self.service, id = row.id, "dropping an undecodable outbox row");
                    delivered.push(row.id);
                }
            }
        }
        let shipped = warden_client::ship_audit_events(self.audit.as_ref(), &events, &self.backoff).await;
        delivered.extend(shipped.delivered);
        for (id, delay) in shipped.retry {
            table.retry_later(id, now + delay.as_micros() as i64).await?;
        }
        if !shipped.dead.is_empty() {
            // Each refusal is recorded before its row moves: a crash between
            // the two records it again, under the same id.
            follow_ups.extend(shipped.dead.iter().filter_map(|(id, reason)| {
                let (_, _, event) = events.iter().find(|(row, ..)| row == id)?;
                let bytes = prost::Message::encoded_len(event);
                crate::dead_letters::dead_lettered_event(self.service, event, reason, bytes)
            }));
            table.enqueue_audit(&std::mem::take(&mut follow_ups)).await?;
            table.dead_letter(&self.replica, &shipped.dead, now).await?;
            crate::dead_letters::count(self.service, "audit", shipped.dead.len());
        }
        // What records a delivery is queued before its row is deleted: a
        // crash between the two sends it again, never loses the record.
        table.enqueue_audit(&follow_ups).await?;
        table.delivered(&self.replica, &delivered).await?;
        Ok(delivered.len())
    }
}

/// POSTs `body` to `url` (with `headers`), as a notification: refused by
/// the policy before any connection when the destination is forbidden.
pub async fn post(
    client: &reqwest::Client,
    policy: &WebhookPolicy,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Notified {
    if let Err(refused) = crate::webhook::check_url(policy, url) {
        return Notified::Failed(refused);
    }
    let mut request = client.post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Notified::Sent,
        Ok(response) => {
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| warden_resilience::http::parse_retry_after(v, std::time::SystemTime::now()));
            if matches!(status.as_u16(), 408 | 429) || status.is_server_error() {
                Notified::Retry(retry_after.unwrap_or_default(), format!("HTTP {status}"))
            } else {
                Notified::Failed(format!("HTTP {status}"))
            }
        }
        Err(error) => Notified::Retry(Duration::ZERO, error.to_string()),
    }
}

/// Sends an email: a temporary SMTP refusal (4xx) or a lost connection is
/// worth retrying; a permanent one (5xx) is final.
pub async fn send_email(
    transport: &lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: &str,
    to: &[&str],
    subject: String,
    text: String,
) -> Notified {
    send_message(transport, Email { from, to, subject, text, html: None, headers: &[] }).await
}

/// An email: a text body, an HTML alternative if given, and headers of
/// its own beside `Subject`, `From` and `To`.
pub struct Email<'a> {
    pub from: &'a str,
    pub to: &'a [&'a str],
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    pub headers: &'a [(String, String)],
}

/// Sends `email` through `transport`; an SMTP refusal that is permanent
/// (5xx) or a message that cannot be built is a failure, anything else a
/// retry.
pub async fn send_message(
    transport: &lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    email: Email<'_>,
) -> Notified {
    use lettre::message::header::{HeaderName, HeaderValue};
    use lettre::message::{MultiPart, SinglePart};
    use lettre::{AsyncTransport, Message};
    let Email { from, to, subject, text, html, headers } = email;
    let mut message = Message::builder().subject(subject);
    for (name, value) in headers {
        match HeaderName::new_from_ascii(name.clone()) {
            Ok(name) => message = message.raw_header(HeaderValue::new(name, value.clone())),
            Err(_) => return Notified::Failed(format!("bad header name {name:?}")),
        }
    }
    match from.parse() {
        Ok(from) => message = message.from(from),
        Err(_) => return Notified::Failed(format!("bad from address {from:?}")),
    }
    for to in to {
        match to.parse() {
            Ok(to) => message = message.to(to),
            Err(_) => return Notified::Failed(format!("bad to address {to:?}")),
        }
    }
    let built = match html {
        Some(html) => message.multipart(MultiPart::alternative_plain_html(text, html)),
        None => message.singlepart(SinglePart::plain(text)),
    };
    let message = match built {
        Ok(message) => message,
        Err(error) => return Notified::Failed(format!("cannot build the email: {error}")),
    };
    match transport.send(message).await {
        Ok(_) => Notified::Sent,
        Err(error) if error.is_permanent() => Notified::Failed(format!("smtp: {error}")),
        Err(error) => Notified::Retry(Duration::ZERO, format!("smtp: {error}")),
    }
}
