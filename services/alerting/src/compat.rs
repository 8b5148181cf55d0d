//! Alertmanager's configuration fields, section by section: the ones
//! Warden implements, and the ones it does not yet, which are refused at
//! load by name ("... is not supported by Warden yet") rather than as a
//! parse error. A field neither has is refused as unknown, with its path.
//!
//! The lists follow Alertmanager's own configuration types (`config.go`,
//! `notifiers.go` and prometheus/common's HTTP client settings).

/// A section of the file: its fields Warden reads, and the fields only
/// Alertmanager has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Top,
    Global,
    Route,
    Inhibit,
    Receiver,
    Webhook,
    Slack,
    SlackField,
    SlackAction,
    SlackConfirm,
    PagerDuty,
    PagerDutyImage,
    PagerDutyLink,
    Email,
    Log,
    HttpConfig,
    Authorization,
    BasicAuth,
    Tls,
    TimeInterval,
    TimeSpec,
    TimeRange,
}

/// (Warden reads, Alertmanager only).
fn fields(section: Section) -> (&'static [&'static str], &'static [&'static str]) {
    use Section::*;
    match section {
        Top => (
            &["global", "route", "inhibit_rules", "receivers", "time_intervals", "mute_time_intervals", "templates"],
            &["tracing", "event_recorder"],
        ),
        Global => (
            &[
                "resolve_timeout",
                "smtp_from",
                "smtp_smarthost",
                "smtp_auth_username",
                "smtp_auth_password",
                "smtp_require_tls",
                "slack_api_url",
                "pagerduty_url",
            ],
            &[
                "http_config",
                "jira_api_url",
                "smtp_hello",
                "smtp_auth_password_file",
                "smtp_auth_secret",
                "smtp_auth_secret_file",
                "smtp_auth_identity",
                "smtp_tls_config",
                "smtp_force_implicit_tls",
                "slack_api_url_file",
                "slack_app_token",
                "slack_app_token_file",
                "slack_app_url",
                "opsgenie_api_url",
                "opsgenie_api_key",
                "opsgenie_api_key_file",
                "wechat_api_url",
                "wechat_api_secret",
                "wechat_api_secret_file",
                "wechat_api_corp_id",
                "victorops_api_url",
                "victorops_api_key",
                "victorops_api_key_file",
                "telegram_api_url",
                "telegram_bot_token",
                "telegram_bot_token_file",
                "webex_api_url",
                "rocketchat_api_url",
                "rocketchat_token",
                "rocketchat_token_file",
                "rocketchat_token_id",
                "rocketchat_token_id_file",
                "mattermost_webhook_url",
                "mattermost_webhook_url_file",
            ],
        ),
        Route => (
            &[
                "receiver",
                "group_by",
                "continue",
                "matchers",
                "match",
                "match_re",
                "group_wait",
                "group_interval",
                "repeat_interval",
                "mute_time_intervals",
                "active_time_intervals",
                "routes",
            ],
            &["labels"],
        ),
        Inhibit => (
            &[
                "source_matchers",
                "target_matchers",
                "source_match",
                "source_match_re",
                "target_match",
                "target_match_re",
                "equal",
            ],
            &["name"],
        ),
        Receiver => (
            &["name", "webhook_configs", "slack_configs", "pagerduty_configs", "email_configs", "log_configs"],
            &[
                "labels",
                "discord_configs",
                "incidentio_configs",
                "opsgenie_configs",
                "wechat_configs",
                "pushover_configs",
                "victorops_configs",
                "sns_configs",
                "telegram_configs",
                "webex_configs",
                "msteams_configs",
                "msteamsv2_configs",
                "jira_configs",
                "rocketchat_configs",
                "mattermost_configs",
            ],
        ),
        Webhook => (&["url", "url_file", "http_config", "max_alerts", "send_resolved"], &["timeout", "payload"]),
        Slack => (
            &[
                "api_url",
                "api_url_file",
                "http_config",
                "send_resolved",
                "channel",
                "username",
                "color",
                "title",
                "title_link",
                "pretext",
                "text",
                "fields",
                "short_fields",
                "footer",
                "fallback",
                "callback_id",
                "icon_emoji",
                "icon_url",
                "image_url",
                "thumb_url",
                "link_names",
                "mrkdwn_in",
                "actions",
            ],
            &["app_token", "app_token_file", "app_url", "message_text", "update_message", "timeout"],
        ),
        SlackField => (&["title", "value", "short"], &[]),
        SlackAction => (&["type", "text", "url", "style", "name", "value", "confirm"], &[]),
        SlackConfirm => (&["text", "title", "ok_text", "dismiss_text"], &[]),
        PagerDuty => (
            &[
                "routing_key",
                "routing_key_file",
                "url",
                "http_config",
                "send_resolved",
                "severity",
                "client",
                "client_url",
                "description",
                "details",
                "images",
                "links",
                "source",
                "class",
                "component",
                "group",
            ],
            &["service_key", "service_key_file", "timeout"],
        ),
        PagerDutyImage => (&["src", "alt", "href"], &[]),
        PagerDutyLink => (&["href", "text"], &[]),
        Email => (
            &[
                "to",
                "from",
                "smarthost",
                "auth_username",
                "auth_password",
                "auth_password_file",
                "require_tls",
                "send_resolved",
                "headers",
                "text",
                "html",
            ],
            &[
                "hello",
                "auth_secret",
                "auth_secret_file",
                "auth_identity",
                "tls_config",
                "force_implicit_tls",
                "threading",
            ],
        ),
        Log => (&["send_resolved"], &[]),
        HttpConfig => (
            &["authorization", "basic_auth", "bearer_token", "bearer_token_file", "tls_config", "follow_redirects"],
            &[
                "oauth2",
                "proxy_url",
                "no_proxy",
                "proxy_from_environment",
                "proxy_connect_header",
                "enable_http2",
                "http_headers",
            ],
        ),
        Authorization => (&["type", "credentials", "credentials_file"], &[]),
        BasicAuth => (&["username", "username_file", "password", "password_file"], &[]),
        Tls => (
            &[
                "ca",
                "ca_file",
                "cert",
                "cert_file",
                "key",
                "key_file",
                "insecure_skip_verify",
                "min_version",
                "max_version",
            ],
            &["ca_ref", "cert_ref", "key_ref", "server_name"],
        ),
        TimeInterval => (&["name", "time_intervals"], &[]),
        TimeSpec => (&["times", "weekdays", "days_of_month", "months", "years", "location"], &[]),
        TimeRange => (&["start_time", "end_time"], &[]),
    }
}

/// The section a field's value is (`true`: a list of them), for fields
/// that hold sections rather than values or free-form maps.
fn nested(section: Section, field: &str) -> Option<(Section, bool)> {
    use Section::*;
    Some(match (section, field) {
        (Top, "global") => (Global, false),
        (Top, "route") => (Route, false),
        (Top, "inhibit_rules") => (Inhibit, true),
        (Top, "receivers") => (Receiver, true),
        (Top, "time_intervals" | "mute_time_intervals") => (TimeInterval, true),
        (Route, "routes") => (Route, true),
        (Receiver, "webhook_configs") => (Webhook, true),
        (Receiver, "slack_configs") => (Slack, true),
        (Receiver, "pagerduty_configs") => (PagerDuty, true),
        (Receiver, "email_configs") => (Email, true),
        (Receiver, "log_configs") => (Log, true),
        (Webhook | Slack | PagerDuty, "http_config") => (HttpConfig, false),
        (Slack, "fields") => (SlackField, true),
        (Slack, "actions") => (SlackAction, true),
        (SlackAction, "confirm") => (SlackConfirm, false),
        (PagerDuty, "images") => (PagerDutyImage, true),
        (PagerDuty, "links") => (PagerDutyLink, true),
        (HttpConfig, "authorization") => (Authorization, false),
        (HttpConfig, "basic_auth") => (BasicAuth, false),
        (HttpConfig, "tls_config") => (Tls, false),
        (TimeInterval, "time_intervals") => (TimeSpec, true),
        (TimeSpec, "times") => (TimeRange, true),
        _ => return None,
    })
}

/// Checks every field of an Alertmanager configuration; the first one
/// Warden cannot honour, by path.
pub fn check(config: &serde_yaml::Value) -> Result<(), String> {
    walk(config, Section::Top, "")
}

fn walk(value: &serde_yaml::Value, section: Section, path: &str) -> Result<(), String> {
    let Some(map) = value.as_mapping() else { return Ok(()) };
    let (read, alertmanager_only) = fields(section);
    for (key, child) in map {
        let Some(key) = key.as_str() else { continue };
        let at = if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
        if alertmanager_only.contains(&key) {
            return Err(format!("{at}: Alertmanager's `{key}` is not supported by Warden yet"));
        }
        if !read.contains(&key) {
            return Err(format!("{at}: unknown field `{key}` (Alertmanager has none by that name either)"));
        }
        match nested(section, key) {
            Some((inner, true)) => {
                for (i, item) in child.as_sequence().into_iter().flatten().enumerate() {
                    walk(item, inner, &format!("{at}[{i}]"))?;
                }
            }
            Some((inner, false)) => walk(child, inner, &at)?,
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(yaml: &str) -> Result<(), String> {
        check(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn alertmanager_only_fields_are_named_and_unknown_ones_located() {
        assert_eq!(
            checked("receivers:\n  - name: x\n    webhook_configs:\n      - url: http://h\n        http_config:\n          oauth2: {}\n"),
            Err("receivers[0].webhook_configs[0].http_config.oauth2: Alertmanager's `oauth2` is not supported by Warden yet".into())
        );
        assert_eq!(
            checked("receivers:\n  - name: x\n    opsgenie_configs: [{}]\n"),
            Err("receivers[0].opsgenie_configs: Alertmanager's `opsgenie_configs` is not supported by Warden yet"
                .into())
        );
        let unknown = checked("route:\n  routes:\n    - recevier: x\n").unwrap_err();
        assert!(unknown.starts_with("route.routes[0].recevier: unknown field"), "{unknown}");
        // What Warden reads passes, however deep.
        checked(
            "receivers:\n  - name: x\n    slack_configs:\n      - api_url: http://h\n        title: t\n        actions:\n          - type: button\n            confirm: {text: sure}\n        http_config:\n          basic_auth: {username: u, password: p}\n          tls_config: {insecure_skip_verify: true}\n",
        )
        .unwrap();
    }
}
