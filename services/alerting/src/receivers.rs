//! What a receiver sends: Slack messages, PagerDuty events and emails
//! built from Alertmanager's notification data with the receiver's own
//! templates (Slack's `title`, `text`, `fields`, `actions`, ...;
//! PagerDuty's `description`, `details`, `client`, `links`, ...; an
//! email's `Subject` header, `text` and `html`), and their checks at load.
//!
//! A field left empty takes Warden's default text, which the templates can
//! also name: `{{ template "slack.default.title" . }}` and the other
//! `NAME.default.*` templates below, as Alertmanager's default templates
//! are named.

use std::collections::BTreeMap;

use crate::http_config::one_of as pair;
use crate::routing::{PagerDutyConfig, ReceiverYaml, SlackConfig};
use crate::template::Template;

/// The named templates a receiver's fields may use.
pub const NAMED: &[&str] = &[
    "__subject",
    "__description",
    "__text_alert_list",
    "__alertmanager",
    "__alertmanagerURL",
    "slack.default.title",
    "slack.default.username",
    "slack.default.fallback",
    "slack.default.callbackid",
    "slack.default.pretext",
    "slack.default.titlelink",
    "slack.default.iconemoji",
    "slack.default.iconurl",
    "slack.default.text",
    "slack.default.footer",
    "pagerduty.default.description",
    "pagerduty.default.client",
    "pagerduty.default.clientURL",
    "pagerduty.default.instances",
    "email.default.subject",
    "email.default.text",
    "email.default.html",
];

/// Alertmanager's notification data (`.Status`, `.Alerts`, ...) from the
/// webhook body Warden builds for every notification.
pub fn template_data(body: &serde_json::Value) -> serde_json::Value {
    let alerts: Vec<serde_json::Value> = body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|alert| {
            serde_json::json!({
                "Status": alert["status"],
                "Labels": alert["labels"],
                "Annotations": alert["annotations"],
                "StartsAt": alert["startsAt"],
                "EndsAt": alert["endsAt"],
                "GeneratorURL": alert["generatorURL"],
                "Fingerprint": alert["fingerprint"],
            })
        })
        .collect();
    serde_json::json!({
        "Receiver": body["receiver"],
        "Status": body["status"],
        "Alerts": alerts,
        "GroupLabels": body["groupLabels"],
        "CommonLabels": body["commonLabels"],
        "CommonAnnotations": body["commonAnnotations"],
        "ExternalURL": body["externalURL"],
        "GroupKey": body["groupKey"],
    })
}

fn alerts_of(body: &serde_json::Value) -> Vec<&serde_json::Value> {
    body["alerts"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

/// `[FIRING:2] HighCost (agent_id=bot)`: Warden's title for a group.
pub fn title(body: &serde_json::Value) -> String {
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

/// Each alert's summary, description, labels and start: Warden's text.
pub fn alert_lines(body: &serde_json::Value) -> String {
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

pub(crate) fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Warden's text for a named default template.
fn named(name: &str, body: &serde_json::Value) -> String {
    let external = body["externalURL"].as_str().unwrap_or("").to_owned();
    match name {
        "__subject"
        | "slack.default.title"
        | "slack.default.fallback"
        | "pagerduty.default.description"
        | "email.default.subject" => title(body),
        "__text_alert_list"
        | "__description"
        | "slack.default.text"
        | "pagerduty.default.instances"
        | "email.default.text" => alert_lines(body),
        "__alertmanager" | "slack.default.username" | "pagerduty.default.client" => "Warden".into(),
        "__alertmanagerURL" | "slack.default.titlelink" | "pagerduty.default.clientURL" => external,
        "email.default.html" => format!(
            "<html><body><h3>{}</h3><pre>{}</pre><p><a href=\"{}\">{}</a></p></body></html>",
            escape_html(&title(body)),
            escape_html(&alert_lines(body)),
            escape_html(&external),
            escape_html(&external)
        ),
        _ => String::new(),
    }
}

/// A receiver field rendered over `body`, or `default` when empty. The
/// template compiled at load ([`validate`]), so it compiles here.
pub fn render(text: &str, body: &serde_json::Value, default: &str) -> String {
    let text = if text.is_empty() { default } else { text };
    if !text.contains("{{") {
        return text.to_owned();
    }
    match Template::compile_notification(text, NAMED) {
        Ok(template) => template.render_data(&template_data(body), &|name, _| named(name, body)),
        Err(error) => format!("(template error: {error})"),
    }
}

/// A Slack incoming-webhook message.
pub fn slack_message(body: &serde_json::Value, slack: &SlackConfig) -> serde_json::Value {
    let severity = body["commonLabels"]["severity"].as_str().unwrap_or("");
    let default_color = if body["status"] == "resolved" {
        "good"
    } else {
        match severity {
            "critical" => "danger",
            "high" | "warning" => "warning",
            _ => "#439FE0",
        }
    };
    let field = |text: &str, default: &str| render(text, body, default);
    let title = field(&slack.title, "{{ template \"slack.default.title\" . }}");
    let mut attachment = serde_json::json!({
        "color": field(&slack.color, default_color),
        "title": title,
        "text": field(&slack.text, "{{ template \"slack.default.text\" . }}"),
        "fallback": field(&slack.fallback, "{{ template \"slack.default.fallback\" . }}"),
    });
    let optional = [
        ("title_link", &slack.title_link),
        ("pretext", &slack.pretext),
        ("footer", &slack.footer),
        ("callback_id", &slack.callback_id),
        ("image_url", &slack.image_url),
        ("thumb_url", &slack.thumb_url),
    ];
    for (key, text) in optional {
        let value = field(text, "");
        if !value.is_empty() {
            attachment[key] = value.into();
        }
    }
    if !slack.fields.is_empty() {
        let fields: Vec<serde_json::Value> = slack
            .fields
            .iter()
            .map(|f| {
                serde_json::json!({
                    "title": field(&f.title, ""),
                    "value": field(&f.value, ""),
                    "short": f.short.unwrap_or(slack.short_fields),
                })
            })
            .collect();
        attachment["fields"] = fields.into();
    }
    if !slack.mrkdwn_in.is_empty() {
        attachment["mrkdwn_in"] = slack.mrkdwn_in.clone().into();
    }
    if !slack.actions.is_empty() {
        let actions: Vec<serde_json::Value> = slack
            .actions
            .iter()
            .map(|a| {
                let mut action = serde_json::json!({
                    "type": field(&a.kind, ""),
                    "text": field(&a.text, ""),
                    "url": field(&a.url, ""),
                    "style": field(&a.style, ""),
                    "name": field(&a.name, ""),
                    "value": field(&a.value, ""),
                });
                if let Some(confirm) = &a.confirm {
                    action["confirm"] = serde_json::json!({
                        "text": field(&confirm.text, ""),
                        "title": field(&confirm.title, ""),
                        "ok_text": field(&confirm.ok_text, ""),
                        "dismiss_text": field(&confirm.dismiss_text, ""),
                    });
                }
                action
            })
            .collect();
        attachment["actions"] = actions.into();
    }
    let mut message = serde_json::json!({ "text": attachment["title"].clone(), "attachments": [attachment] });
    let top = [
        ("channel", &slack.channel),
        ("username", &slack.username),
        ("icon_emoji", &slack.icon_emoji),
        ("icon_url", &slack.icon_url),
    ];
    for (key, text) in top {
        let value = field(text, "");
        if !value.is_empty() {
            message[key] = value.into();
        }
    }
    if slack.link_names {
        message["link_names"] = true.into();
    }
    message
}

/// A PagerDuty Events API v2 event: trigger while firing, resolve after,
/// under one `dedup_key` per group.
pub fn pagerduty_event(body: &serde_json::Value, routing_key: &str, pd: &PagerDutyConfig) -> serde_json::Value {
    use sha2::Digest;
    let field = |text: &str, default: &str| render(text, body, default);
    let dedup_key = hex::encode(sha2::Sha256::digest(body["groupKey"].as_str().unwrap_or("").as_bytes()));
    let firing = body["status"] == "firing";
    let severity = match (field(&pd.severity, ""), body["commonLabels"]["severity"].as_str()) {
        (s, _) if !s.is_empty() => s,
        (_, Some("critical")) => "critical".into(),
        (_, Some("high")) => "error".into(),
        (_, Some("warning")) => "warning".into(),
        _ => "info".into(),
    };
    let mut summary = field(&pd.description, "{{ template \"pagerduty.default.description\" . }}");
    if summary.len() > 1024 {
        let mut cut = 1024;
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        summary.truncate(cut);
    }
    let mut details: BTreeMap<String, serde_json::Value> = [
        ("firing".to_string(), serde_json::json!(alert_lines(body))),
        (
            "num_firing".to_string(),
            serde_json::json!(alerts_of(body).iter().filter(|a| a["status"] == "firing").count()),
        ),
        (
            "num_resolved".to_string(),
            serde_json::json!(alerts_of(body).iter().filter(|a| a["status"] == "resolved").count()),
        ),
    ]
    .into();
    for (key, text) in &pd.details {
        details.insert(key.clone(), field(text, "").into());
    }
    let mut payload = serde_json::json!({
        "summary": summary,
        "source": field(&pd.source, "warden-alerting"),
        "severity": severity,
        "custom_details": details,
    });
    for (key, text) in [("class", &pd.class), ("component", &pd.component), ("group", &pd.group)] {
        let value = field(text, "");
        if !value.is_empty() {
            payload[key] = value.into();
        }
    }
    let mut event = serde_json::json!({
        "routing_key": routing_key,
        "event_action": if firing { "trigger" } else { "resolve" },
        "dedup_key": dedup_key,
        "payload": payload,
        "client": field(&pd.client, "{{ template \"pagerduty.default.client\" . }}"),
        "client_url": field(&pd.client_url, "{{ template \"pagerduty.default.clientURL\" . }}"),
    });
    if !pd.images.is_empty() {
        let images: Vec<serde_json::Value> = pd
            .images
            .iter()
            .map(
                |i| serde_json::json!({"src": field(&i.src, ""), "alt": field(&i.alt, ""), "href": field(&i.href, "")}),
            )
            .collect();
        event["images"] = images.into();
    }
    if !pd.links.is_empty() {
        let links: Vec<serde_json::Value> = pd
            .links
            .iter()
            .map(|l| serde_json::json!({"href": field(&l.href, ""), "text": field(&l.text, "")}))
            .collect();
        event["links"] = links.into();
    }
    event
}

/// Every template a receiver holds, by its field's path.
fn templates(receiver: &ReceiverYaml) -> Vec<(String, &str)> {
    let mut out: Vec<(String, &str)> = Vec::new();
    for (i, s) in receiver.slack_configs.iter().enumerate() {
        let at = |field: &str| format!("slack_configs[{i}].{field}");
        for (field, text) in [
            ("title", &s.title),
            ("title_link", &s.title_link),
            ("pretext", &s.pretext),
            ("text", &s.text),
            ("footer", &s.footer),
            ("fallback", &s.fallback),
            ("callback_id", &s.callback_id),
            ("color", &s.color),
            ("channel", &s.channel),
            ("username", &s.username),
            ("icon_emoji", &s.icon_emoji),
            ("icon_url", &s.icon_url),
            ("image_url", &s.image_url),
            ("thumb_url", &s.thumb_url),
        ] {
            out.push((at(field), text));
        }
        for (j, f) in s.fields.iter().enumerate() {
            out.push((at(&format!("fields[{j}].title")), &f.title));
            out.push((at(&format!("fields[{j}].value")), &f.value));
        }
        for (j, a) in s.actions.iter().enumerate() {
            for (field, text) in [
                ("type", &a.kind),
                ("text", &a.text),
                ("url", &a.url),
                ("style", &a.style),
                ("name", &a.name),
                ("value", &a.value),
            ] {
                out.push((at(&format!("actions[{j}].{field}")), text));
            }
        }
    }
    for (i, p) in receiver.pagerduty_configs.iter().enumerate() {
        let at = |field: &str| format!("pagerduty_configs[{i}].{field}");
        for (field, text) in [
            ("description", &p.description),
            ("client", &p.client),
            ("client_url", &p.client_url),
            ("severity", &p.severity),
            ("source", &p.source),
            ("class", &p.class),
            ("component", &p.component),
            ("group", &p.group),
        ] {
            out.push((at(field), text));
        }
        for (key, text) in &p.details {
            out.push((at(&format!("details.{key}")), text));
        }
    }
    for (i, e) in receiver.email_configs.iter().enumerate() {
        out.push((format!("email_configs[{i}].text"), &e.text));
        out.push((format!("email_configs[{i}].html"), &e.html));
        for (key, text) in &e.headers {
            out.push((format!("email_configs[{i}].headers.{key}"), text));
        }
    }
    out
}

/// A receiver's checks at load: its templates compile, its `http_config`s
/// are consistent, and no value is given twice (`url` and `url_file`).
pub fn validate(receiver: &ReceiverYaml, path: &str) -> Result<(), String> {
    for (field, text) in templates(receiver) {
        Template::compile_notification(text, NAMED).map_err(|e| format!("{path}.{field}: {e}"))?;
    }
    for (i, w) in receiver.webhook_configs.iter().enumerate() {
        let at = format!("{path}.webhook_configs[{i}]");
        pair(&at, ("url", &w.url), ("url_file", &w.url_file))?;
        if w.url.is_empty() && w.url_file.is_empty() {
            return Err(format!("{at}: one of url and url_file is required"));
        }
        w.http_config.validate(&format!("{at}.http_config"))?;
    }
    for (i, s) in receiver.slack_configs.iter().enumerate() {
        let at = format!("{path}.slack_configs[{i}]");
        pair(&at, ("api_url", &s.api_url), ("api_url_file", &s.api_url_file))?;
        s.http_config.validate(&format!("{at}.http_config"))?;
    }
    for (i, p) in receiver.pagerduty_configs.iter().enumerate() {
        let at = format!("{path}.pagerduty_configs[{i}]");
        pair(&at, ("routing_key", &p.routing_key), ("routing_key_file", &p.routing_key_file))?;
        p.http_config.validate(&format!("{at}.http_config"))?;
    }
    for (i, e) in receiver.email_configs.iter().enumerate() {
        let at = format!("{path}.email_configs[{i}]");
        pair(&at, ("auth_password", &e.auth_password), ("auth_password_file", &e.auth_password_file))?;
    }
    Ok(())
}
