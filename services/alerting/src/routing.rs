//! Alertmanager's configuration shape: `global`, the `route` tree,
//! `inhibit_rules`, `receivers`, `time_intervals` (and the older
//! `mute_time_intervals`), so a team can paste its `alertmanager.yml`
//! sections. Matchers use Alertmanager's syntax (`name="value"`,
//! `name=~"regex"`, `{a="b", c!="d"}`), and the older `match` /
//! `match_re` maps are read too.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Datelike, Timelike};
use serde::Deserialize;

use crate::rules::parse_duration;

/// A label matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<regex::Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, String> {
        if !crate::rules::valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| format!("invalid regex {value:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(Matcher { name: name.to_owned(), op, value: value.to_owned(), regex })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }

    pub fn is_regex(&self) -> bool {
        matches!(self.op, MatchOp::Regex | MatchOp::NotRegex)
    }

    pub fn is_equal(&self) -> bool {
        matches!(self.op, MatchOp::Equal | MatchOp::Regex)
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        };
        write!(f, "{}{op}{:?}", self.name, self.value)
    }
}

/// Keys whose values are secrets wherever they appear (Alertmanager's
/// `Secret` fields, and `http_config`'s credentials).
const SECRET_KEYS: &[&str] = &[
    "auth_password",
    "auth_secret",
    "smtp_auth_password",
    "smtp_auth_secret",
    "slack_api_url",
    "api_url",
    "routing_key",
    "service_key",
    "password",
    "credentials",
    "bearer_token",
    "client_secret",
    "api_key",
    "api_secret",
    "opsgenie_api_key",
    "victorops_api_key",
    "wechat_api_secret",
    "bot_token",
    "token",
    "key",
];

/// The routing file as `/api/v2/status` shows it: every secret replaced by
/// `<secret>`, as Alertmanager does (and a webhook's `url`, which often
/// carries a token). Text that does not parse is not shown at all.
pub fn masked(text: &str) -> String {
    fn mask(value: &mut serde_yaml::Value, in_webhook: bool) {
        match value {
            serde_yaml::Value::Mapping(map) => {
                for (key, item) in map.iter_mut() {
                    let key = key.as_str().unwrap_or_default();
                    let secret = SECRET_KEYS.contains(&key) || (in_webhook && key == "url");
                    if secret && !item.is_mapping() && !item.is_sequence() && !item.is_null() {
                        *item = serde_yaml::Value::String("<secret>".into());
                    } else {
                        mask(item, key == "webhook_configs" || (in_webhook && !key.ends_with("_configs")));
                    }
                }
            }
            serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(|item| mask(item, in_webhook)),
            serde_yaml::Value::Tagged(tagged) => mask(&mut tagged.value, in_webhook),
            _ => {}
        }
    }
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(mut value) => {
            mask(&mut value, false);
            serde_yaml::to_string(&value).unwrap_or_default()
        }
        Err(_) => "(the routing file does not parse)".into(),
    }
}

/// Parses one matcher string, which may hold several (`{a="b",c=~"d"}`).
pub fn parse_matchers(text: &str) -> Result<Vec<Matcher>, String> {
    let trimmed = text.trim();
    let inner = trimmed.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(trimmed);
    let mut out = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let name_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let name = &rest[..name_end];
        rest = rest[name_end..].trim_start();
        let (op, len) = if rest.starts_with("=~") {
            (MatchOp::Regex, 2)
        } else if rest.starts_with("!~") {
            (MatchOp::NotRegex, 2)
        } else if rest.starts_with("!=") {
            (MatchOp::NotEqual, 2)
        } else if rest.starts_with('=') {
            (MatchOp::Equal, 1)
        } else {
            return Err(format!("bad matcher {text:?}: expected name=\"value\", name!=, name=~ or name!~"));
        };
        rest = rest[len..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut text_value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => text_value.push('\n'),
                        Some((_, other)) => text_value.push(other),
                        None => break,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    other => text_value.push(other),
                }
            }
            let end = end.ok_or_else(|| format!("bad matcher {text:?}: unterminated quote"))?;
            value = text_value;
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            if value.contains(['=', '!', '~', '{', '}', '"']) {
                return Err(format!("bad matcher {text:?}: quote values that hold operators"));
            }
            rest = &rest[end..];
        }
        out.push(Matcher::new(name, op, &value).map_err(|e| format!("bad matcher {text:?}: {e}"))?);
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("bad matcher {text:?}: expected `,` between matchers"));
        }
    }
    if out.is_empty() {
        return Err(format!("bad matcher {text:?}: empty"));
    }
    Ok(out)
}

fn matchers_from(
    list: &[String],
    equal: &BTreeMap<String, String>,
    regex: &BTreeMap<String, String>,
) -> Result<Vec<Matcher>, String> {
    let mut out = Vec::new();
    for text in list {
        out.extend(parse_matchers(text)?);
    }
    for (name, value) in equal {
        out.push(Matcher::new(name, MatchOp::Equal, value)?);
    }
    for (name, value) in regex {
        out.push(Matcher::new(name, MatchOp::Regex, value)?);
    }
    Ok(out)
}

// === the YAML shape ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigYaml {
    #[serde(default)]
    global: GlobalYaml,
    route: Option<RouteYaml>,
    #[serde(default)]
    inhibit_rules: Vec<InhibitYaml>,
    #[serde(default)]
    receivers: Vec<ReceiverYaml>,
    #[serde(default)]
    time_intervals: Vec<TimeIntervalYaml>,
    #[serde(default)]
    mute_time_intervals: Vec<TimeIntervalYaml>,
    #[serde(default)]
    templates: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalYaml {
    #[serde(default)]
    pub resolve_timeout: Option<String>,
    #[serde(default)]
    pub smtp_smarthost: String,
    #[serde(default)]
    pub smtp_from: String,
    #[serde(default)]
    pub smtp_auth_username: String,
    #[serde(default)]
    pub smtp_auth_password: String,
    #[serde(default)]
    pub smtp_require_tls: Option<bool>,
    #[serde(default)]
    pub slack_api_url: String,
    #[serde(default)]
    pub pagerduty_url: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteYaml {
    #[serde(default)]
    receiver: Option<String>,
    #[serde(default)]
    group_by: Option<Vec<String>>,
    #[serde(default, rename = "continue")]
    continue_: bool,
    #[serde(default)]
    matchers: Vec<String>,
    #[serde(default, rename = "match")]
    match_: BTreeMap<String, String>,
    #[serde(default)]
    match_re: BTreeMap<String, String>,
    #[serde(default)]
    group_wait: Option<String>,
    #[serde(default)]
    group_interval: Option<String>,
    #[serde(default)]
    repeat_interval: Option<String>,
    #[serde(default)]
    mute_time_intervals: Vec<String>,
    #[serde(default)]
    active_time_intervals: Vec<String>,
    #[serde(default)]
    routes: Vec<RouteYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InhibitYaml {
    #[serde(default)]
    source_matchers: Vec<String>,
    #[serde(default)]
    target_matchers: Vec<String>,
    #[serde(default)]
    source_match: BTreeMap<String, String>,
    #[serde(default)]
    source_match_re: BTreeMap<String, String>,
    #[serde(default)]
    target_match: BTreeMap<String, String>,
    #[serde(default)]
    target_match_re: BTreeMap<String, String>,
    #[serde(default)]
    equal: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverYaml {
    pub name: String,
    #[serde(default)]
    pub webhook_configs: Vec<WebhookConfig>,
    #[serde(default)]
    pub slack_configs: Vec<SlackConfig>,
    #[serde(default)]
    pub pagerduty_configs: Vec<PagerDutyConfig>,
    #[serde(default)]
    pub email_configs: Vec<EmailConfig>,
    /// Warden's own: the alert is written to the service's log.
    #[serde(default)]
    pub log_configs: Vec<LogConfig>,
}

fn yes() -> bool {
    true
}

use crate::http_config::HttpConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The receiver's URL (or a secret reference to it), or `url_file`.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub url_file: String,
    #[serde(default)]
    pub http_config: HttpConfig,
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// At most this many alerts per message (0: all); the rest are counted
    /// in `truncatedAlerts`.
    #[serde(default)]
    pub max_alerts: usize,
}

/// A Slack receiver. The text fields are templates over Alertmanager's
/// notification data (see [`crate::template`]); empty ones take Warden's
/// defaults (`slack.default.*`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    #[serde(default)]
    pub api_url: String,
    #[serde(default)]
    pub api_url_file: String,
    #[serde(default)]
    pub http_config: HttpConfig,
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub send_resolved: bool,
    #[serde(default)]
    pub color: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub title_link: String,
    #[serde(default)]
    pub pretext: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub fields: Vec<SlackField>,
    #[serde(default)]
    pub short_fields: bool,
    #[serde(default)]
    pub footer: String,
    #[serde(default)]
    pub fallback: String,
    #[serde(default)]
    pub callback_id: String,
    #[serde(default)]
    pub icon_emoji: String,
    #[serde(default)]
    pub icon_url: String,
    #[serde(default)]
    pub image_url: String,
    #[serde(default)]
    pub thumb_url: String,
    #[serde(default)]
    pub link_names: bool,
    #[serde(default)]
    pub mrkdwn_in: Vec<String>,
    #[serde(default)]
    pub actions: Vec<SlackAction>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackField {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub short: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackAction {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub style: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub confirm: Option<SlackConfirm>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfirm {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub ok_text: String,
    #[serde(default)]
    pub dismiss_text: String,
}

/// A PagerDuty receiver (Events API v2). The text fields are templates,
/// as Slack's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub routing_key_file: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub http_config: HttpConfig,
    #[serde(default = "yes")]
    pub send_resolved: bool,
    #[serde(default)]
    pub severity: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub client_url: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    #[serde(default)]
    pub images: Vec<PagerDutyImage>,
    #[serde(default)]
    pub links: Vec<PagerDutyLink>,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub class: String,
    #[serde(default)]
    pub component: String,
    #[serde(default)]
    pub group: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyImage {
    #[serde(default)]
    pub src: String,
    #[serde(default)]
    pub alt: String,
    #[serde(default)]
    pub href: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyLink {
    #[serde(default)]
    pub href: String,
    #[serde(default)]
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub to: String,
    #[serde(default)]
    pub from: String,
    /// `host:port`; the global `smtp_smarthost` when empty.
    #[serde(default)]
    pub smarthost: String,
    #[serde(default)]
    pub auth_username: String,
    #[serde(default)]
    pub auth_password: String,
    #[serde(default)]
    pub auth_password_file: String,
    #[serde(default)]
    pub require_tls: Option<bool>,
    #[serde(default)]
    pub send_resolved: bool,
    /// Headers of the message; `Subject` (a template) replaces Warden's.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body, a template; Warden's text when empty.
    #[serde(default)]
    pub text: String,
    /// An HTML body beside the text, a template.
    #[serde(default)]
    pub html: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeIntervalYaml {
    name: String,
    time_intervals: Vec<TimeSpecYaml>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeSpecYaml {
    #[serde(default)]
    times: Vec<TimeRangeYaml>,
    #[serde(default)]
    weekdays: Vec<String>,
    #[serde(default)]
    days_of_month: Vec<String>,
    #[serde(default)]
    months: Vec<String>,
    #[serde(default)]
    years: Vec<String>,
    #[serde(default)]
    location: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeRangeYaml {
    start_time: String,
    end_time: String,
}

// === the checked configuration ===

#[derive(Debug, Clone)]
pub struct Route {
    pub receiver: String,
    pub group_by: GroupBy,
    pub continue_: bool,
    pub matchers: Vec<Matcher>,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub mute_time_intervals: Vec<String>,
    pub active_time_intervals: Vec<String>,
    pub routes: Vec<Route>,
    /// Position in the tree, e.g. `0/2/1`: part of a group's key.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupBy {
    Labels(Vec<String>),
    /// `...`: every label, i.e. one group per alert.
    All,
}

#[derive(Debug, Clone)]
pub struct InhibitRule {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

#[derive(Debug, Clone)]
struct TimeSpec {
    times: Vec<(u32, u32)>,
    weekdays: Vec<(u32, u32)>,
    days_of_month: Vec<(i32, i32)>,
    months: Vec<(u32, u32)>,
    years: Vec<(i32, i32)>,
    location: chrono_tz::Tz,
}

impl TimeSpec {
    fn contains(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        let local = at.with_timezone(&self.location);
        let minute = local.hour() * 60 + local.minute();
        // A range may wrap (`saturday:sunday`, `november:february`).
        let in_ranges = |ranges: &[(u32, u32)], v: u32| {
            ranges.is_empty()
                || ranges.iter().any(|(a, b)| if a <= b { v >= *a && v <= *b } else { v >= *a || v <= *b })
        };
        let times_ok = self.times.is_empty() || self.times.iter().any(|(a, b)| minute >= *a && minute < *b);
        let days_in_month = {
            let (y, m) = (local.year(), local.month());
            let next = if m == 12 {
                chrono::NaiveDate::from_ymd_opt(y + 1, 1, 1)
            } else {
                chrono::NaiveDate::from_ymd_opt(y, m + 1, 1)
            };
            next.and_then(|n| n.pred_opt()).map_or(31, |d| d.day() as i32)
        };
        let day = local.day() as i32;
        let days_ok = self.days_of_month.is_empty()
            || self.days_of_month.iter().any(|(a, b)| {
                let resolve = |d: i32| if d < 0 { days_in_month + 1 + d } else { d };
                day >= resolve(*a) && day <= resolve(*b)
            });
        let years_ok =
            self.years.is_empty() || self.years.iter().any(|(a, b)| local.year() >= *a && local.year() <= *b);
        times_ok
            && in_ranges(&self.weekdays, local.weekday().num_days_from_sunday())
            && days_ok
            && in_ranges(&self.months, local.month())
            && years_ok
    }
}

/// The checked routing configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub global: GlobalYaml,
    pub resolve_timeout: Duration,
    pub route: Route,
    pub inhibit_rules: Vec<InhibitRule>,
    pub receivers: BTreeMap<String, ReceiverYaml>,
    time_intervals: BTreeMap<String, Vec<TimeSpec>>,
}

/// The built-in routing: every alert to the service's log.
pub const DEFAULT_CONFIG: &str =
    "route:\n  receiver: log\n  group_by: [alertname]\nreceivers:\n  - name: log\n    log_configs: [{}]\n";

fn parse_range<T: Copy + std::str::FromStr>(text: &str, parse: impl Fn(&str) -> Option<T>) -> Option<(T, T)> {
    match text.split_once(':') {
        Some((a, b)) => Some((parse(a.trim())?, parse(b.trim())?)),
        None => {
            let v = parse(text.trim())?;
            Some((v, v))
        }
    }
}

fn weekday(text: &str) -> Option<u32> {
    ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
        .iter()
        .position(|d| *d == text.to_ascii_lowercase())
        .map(|i| i as u32)
}

fn month(text: &str) -> Option<u32> {
    let names = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    names
        .iter()
        .position(|m| *m == text.to_ascii_lowercase())
        .map(|i| i as u32 + 1)
        .or_else(|| text.parse().ok().filter(|m| (1..=12).contains(m)))
}

fn clock(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
}

impl Config {
    pub fn parse(text: &str, file: &str) -> Result<Config, String> {
        // Fields Alertmanager has and Warden does not (yet) are named as
        // such, before the typed parse would call them unknown.
        if let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(text) {
            crate::compat::check(&value).map_err(|e| format!("{file}: {e}"))?;
        }
        let raw: ConfigYaml = serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(at) => format!("{file}:{}: {e}", at.line()),
            None => format!("{file}: {e}"),
        })?;
        if !raw.templates.is_empty() {
            return Err(format!(
                "{file}: `templates` (Go template files) are not supported; messages use Warden's formats"
            ));
        }
        let err = |what: String| format!("{file}: {what}");
        let resolve_timeout = match &raw.global.resolve_timeout {
            Some(t) => parse_duration(t).map_err(|e| err(format!("global.resolve_timeout: {e}")))?,
            None => Duration::from_secs(300),
        };
        let mut receivers = BTreeMap::new();
        for (r, receiver) in raw.receivers.into_iter().enumerate() {
            crate::receivers::validate(&receiver, &format!("receivers[{r}]")).map_err(err)?;
            for webhook in &receiver.webhook_configs {
                if !webhook.url.is_empty()
                    && !webhook.url.starts_with("http://")
                    && !webhook.url.starts_with("https://")
                    && !webhook.url.contains(':')
                {
                    return Err(err(format!("receiver {}: webhook url {:?} is not a URL", receiver.name, webhook.url)));
                }
            }
            for slack in &receiver.slack_configs {
                if slack.api_url.is_empty() && slack.api_url_file.is_empty() && raw.global.slack_api_url.is_empty() {
                    return Err(err(format!(
                        "receiver {}: slack needs api_url (or global.slack_api_url)",
                        receiver.name
                    )));
                }
            }
            for pd in &receiver.pagerduty_configs {
                if pd.routing_key.is_empty() && pd.routing_key_file.is_empty() {
                    return Err(err(format!("receiver {}: pagerduty needs routing_key", receiver.name)));
                }
            }
            for email in &receiver.email_configs {
                if email.smarthost.is_empty() && raw.global.smtp_smarthost.is_empty() {
                    return Err(err(format!(
                        "receiver {}: email needs smarthost (or global.smtp_smarthost)",
                        receiver.name
                    )));
                }
                if email.from.is_empty() && raw.global.smtp_from.is_empty() {
                    return Err(err(format!("receiver {}: email needs from (or global.smtp_from)", receiver.name)));
                }
            }
            if receivers.insert(receiver.name.clone(), receiver.clone()).is_some() {
                return Err(err(format!("receiver {} is defined twice", receiver.name)));
            }
        }
        let mut time_intervals = BTreeMap::new();
        for interval in raw.time_intervals.iter().chain(&raw.mute_time_intervals) {
            let mut specs = Vec::new();
            for spec in &interval.time_intervals {
                let at =
                    |field: &str, value: &str| err(format!("time interval {}: bad {field} {value:?}", interval.name));
                let mut times = Vec::new();
                for range in &spec.times {
                    let (a, b) = (clock(&range.start_time), clock(&range.end_time));
                    match (a, b) {
                        (Some(a), Some(b)) if a < b => times.push((a, b)),
                        _ => return Err(at("times", &format!("{}-{}", range.start_time, range.end_time))),
                    }
                }
                let collect = |field: &str, list: &[String], f: &dyn Fn(&str) -> Option<(u32, u32)>| {
                    list.iter().map(|t| f(t).ok_or_else(|| at(field, t))).collect::<Result<Vec<_>, _>>()
                };
                let weekdays = collect("weekdays", &spec.weekdays, &|t| parse_range(t, weekday))?;
                let months = collect("months", &spec.months, &|t| parse_range(t, month))?;
                let days_of_month = spec
                    .days_of_month
                    .iter()
                    .map(|t| {
                        let parsed = match t.trim().strip_prefix('-') {
                            Some(_) if !t.contains(':') => t.trim().parse::<i32>().ok().map(|v| (v, v)),
                            _ => {
                                let mut parts = t.splitn(2, ':');
                                let a = parts.next().and_then(|p| p.trim().parse::<i32>().ok());
                                let b = parts.next().map_or(a, |p| p.trim().parse::<i32>().ok());
                                a.zip(b)
                            }
                        };
                        parsed
                            .filter(|(a, b)| (1..=31).contains(&a.abs()) && (1..=31).contains(&b.abs()))
                            .ok_or_else(|| at("days_of_month", t))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let years = spec
                    .years
                    .iter()
                    .map(|t| parse_range(t, |y| y.parse::<i32>().ok()).ok_or_else(|| at("years", t)))
                    .collect::<Result<Vec<_>, _>>()?;
                let location = match spec.location.as_deref() {
                    None | Some("UTC") | Some("") => chrono_tz::UTC,
                    Some(name) => name.parse().map_err(|_| at("location", name))?,
                };
                specs.push(TimeSpec { times, weekdays, days_of_month, months, years, location });
            }
            time_intervals.insert(interval.name.clone(), specs);
        }
        let root = raw.route.ok_or_else(|| err("a `route` is required".into()))?;
        let defaults = Route {
            receiver: String::new(),
            group_by: GroupBy::Labels(Vec::new()),
            continue_: false,
            matchers: Vec::new(),
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            repeat_interval: Duration::from_secs(4 * 3600),
            mute_time_intervals: Vec::new(),
            active_time_intervals: Vec::new(),
            routes: Vec::new(),
            path: String::new(),
        };
        let route = build_route(&root, &defaults, "0", &receivers, &time_intervals).map_err(err)?;
        if route.receiver.is_empty() {
            return Err(err("route: the root route needs a receiver".into()));
        }
        if !route.matchers.is_empty() {
            return Err(err("route: the root route must not have matchers".into()));
        }
        let inhibit_rules = raw
            .inhibit_rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                Ok(InhibitRule {
                    source: matchers_from(&rule.source_matchers, &rule.source_match, &rule.source_match_re)
                        .map_err(|e| err(format!("inhibit_rules[{i}]: {e}")))?,
                    target: matchers_from(&rule.target_matchers, &rule.target_match, &rule.target_match_re)
                        .map_err(|e| err(format!("inhibit_rules[{i}]: {e}")))?,
                    equal: rule.equal.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Config { global: raw.global, resolve_timeout, route, inhibit_rules, receivers, time_intervals })
    }

    pub fn default_config() -> Config {
        Config::parse(DEFAULT_CONFIG, "<default routing>").expect("the default routing parses")
    }

    /// The routes an alert with these labels reaches, in tree order
    /// (Alertmanager's matching: the deepest matching route on each
    /// branch, siblings after a match only with `continue`).
    pub fn matching_routes(&self, labels: &BTreeMap<String, String>) -> Vec<&Route> {
        let mut out = Vec::new();
        match_route(&self.route, labels, &mut out);
        out
    }

    /// Whether a route's time intervals mute notifications at `at`.
    pub fn muted(&self, route: &Route, at: chrono::DateTime<chrono::Utc>) -> bool {
        let inside =
            |name: &String| self.time_intervals.get(name).is_some_and(|specs| specs.iter().any(|s| s.contains(at)));
        route.mute_time_intervals.iter().any(inside)
            || (!route.active_time_intervals.is_empty() && !route.active_time_intervals.iter().any(inside))
    }
}

fn match_route<'a>(route: &'a Route, labels: &BTreeMap<String, String>, out: &mut Vec<&'a Route>) -> bool {
    if !route.matchers.iter().all(|m| m.matches(labels)) {
        return false;
    }
    let mut matched_child = false;
    for child in &route.routes {
        if match_route(child, labels, out) {
            matched_child = true;
            if !child.continue_ {
                break;
            }
        }
    }
    if !matched_child {
        out.push(route);
    }
    true
}

fn build_route(
    raw: &RouteYaml,
    parent: &Route,
    path: &str,
    receivers: &BTreeMap<String, ReceiverYaml>,
    intervals: &BTreeMap<String, Vec<TimeSpec>>,
) -> Result<Route, String> {
    let at = |what: String| format!("route {path}: {what}");
    let duration = |field: &str, value: &Option<String>, inherited: Duration| -> Result<Duration, String> {
        match value {
            Some(text) => parse_duration(text).map_err(|e| at(format!("{field}: {e}"))),
            None => Ok(inherited),
        }
    };
    let receiver = raw.receiver.clone().unwrap_or_else(|| parent.receiver.clone());
    if !receiver.is_empty() && !receivers.contains_key(&receiver) {
        return Err(at(format!("receiver {receiver:?} is not defined")));
    }
    let group_by = match &raw.group_by {
        Some(list) if list.iter().any(|l| l == "...") => {
            if list.len() > 1 {
                return Err(at("group_by: `...` must be alone".into()));
            }
            GroupBy::All
        }
        Some(list) => {
            for label in list {
                if !crate::rules::valid_label_name(label) {
                    return Err(at(format!("group_by: invalid label name {label:?}")));
                }
            }
            GroupBy::Labels(list.clone())
        }
        None => parent.group_by.clone(),
    };
    for name in raw.mute_time_intervals.iter().chain(&raw.active_time_intervals) {
        if !intervals.contains_key(name) {
            return Err(at(format!("time interval {name:?} is not defined")));
        }
    }
    let mut route = Route {
        receiver,
        group_by,
        continue_: raw.continue_,
        matchers: matchers_from(&raw.matchers, &raw.match_, &raw.match_re).map_err(at)?,
        group_wait: duration("group_wait", &raw.group_wait, parent.group_wait)?,
        group_interval: duration("group_interval", &raw.group_interval, parent.group_interval)?,
        repeat_interval: duration("repeat_interval", &raw.repeat_interval, parent.repeat_interval)?,
        mute_time_intervals: raw.mute_time_intervals.clone(),
        active_time_intervals: raw.active_time_intervals.clone(),
        routes: Vec::new(),
        path: path.to_owned(),
    };
    if route.group_interval.is_zero() || route.repeat_interval.is_zero() {
        return Err(at("group_interval and repeat_interval must be positive".into()));
    }
    for (i, child) in raw.routes.iter().enumerate() {
        let built = build_route(child, &route, &format!("{path}/{i}"), receivers, intervals)?;
        route.routes.push(built);
    }
    Ok(route)
}

#[cfg(test)]
mod tests {

    #[test]
    fn status_shows_no_secret() {
        let text = r#"
global:
  smtp_auth_password: hunter2
  slack_api_url: https://hooks.slack.com/services/T0/B0/XXXX
route: { receiver: web }
receivers:
  - name: web
    webhook_configs:
      - url: https://example.com/hook?token=abc
        http_config:
          authorization: { credentials: s3cr3t }
          basic_auth: { username: ops, password: pa55 }
  - name: pd
    pagerduty_configs: [{ routing_key: r0ut1ng, severity: critical }]
  - name: mail
    email_configs: [{ to: ops@example.com, auth_password: m4il }]
"#;
        let shown = masked(text);
        for secret in ["hunter2", "XXXX", "token=abc", "s3cr3t", "pa55", "r0ut1ng", "m4il"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        for kept in ["ops@example.com", "critical", "username: ops", "name: web"] {
            assert!(shown.contains(kept), "{kept} lost: {shown}");
        }
        assert_eq!(shown.matches("<secret>").count(), 7, "{shown}");
    }

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn matchers_parse_in_alertmanagers_syntax() {
        let list = parse_matchers("{severity=\"critical\", agent_id=~\"support-.*\", team!=ops}").unwrap();
        assert_eq!(list.len(), 3);
        assert!(list.iter().all(|m| m.matches(&labels(&[
            ("severity", "critical"),
            ("agent_id", "support-bot"),
            ("team", "care")
        ]))));
        assert!(!list[1].matches(&labels(&[("agent_id", "x-support-bot")])));
        assert_eq!(list[0].to_string(), "severity=\"critical\"");
        for bad in ["", "severity", "severity==x", "1a=\"b\"", "a=~\"(\"", "a=\"b"] {
            assert!(parse_matchers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_example_routing_sends_by_severity() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/alerting/alertmanager.yml"))
                .unwrap();
        let config = Config::parse(&text, "alertmanager.yml").unwrap();
        let receivers = |severity: &str| {
            config
                .matching_routes(&labels(&[("severity", severity), ("alertname", "A")]))
                .iter()
                .map(|r| r.receiver.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(receivers("critical"), ["pagerduty", "slack-incidents"]);
        assert_eq!(receivers("high"), ["slack-alerts", "oncall-email"]);
        assert_eq!(receivers("warning"), ["slack-monitoring"]);
        assert_eq!(receivers("info"), ["log"]);
    }

    #[test]
    fn bad_configurations_name_the_problem() {
        let cases = [
            ("route:\n  receiver: nowhere\n", "receiver \"nowhere\" is not defined"),
            ("receivers: [{name: a}]\n", "a `route` is required"),
            ("route:\n  receiver: a\n  group_wait: soon\nreceivers: [{name: a}]\n", "group_wait"),
            ("route:\n  receiver: a\n  routes: [{matchers: ['x=~\"(\"']}]\nreceivers: [{name: a}]\n", "route 0/0"),
            (
                "route:\n  receiver: a\n  mute_time_intervals: [night]\nreceivers: [{name: a}]\n",
                "\"night\" is not defined",
            ),
            ("route:\n  receiver: a\nreceivers: [{name: a, pagerduty_configs: [{}]}]\n", "routing_key"),
        ];
        for (text, expected) in cases {
            let error = Config::parse(text, "am.yml").unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn time_intervals_mute_and_activate_routes() {
        let text = "route:\n  receiver: a\n  routes:\n    - receiver: a\n      matchers: [x=1]\n      mute_time_intervals: [weekend]\n    - receiver: a\n      matchers: [x=2]\n      active_time_intervals: [office]\nreceivers: [{name: a}]\ntime_intervals:\n  - name: weekend\n    time_intervals: [{weekdays: ['saturday:sunday']}]\n  - name: office\n    time_intervals: [{weekdays: ['monday:friday'], times: [{start_time: '09:00', end_time: '17:00'}], location: Europe/Berlin}]\n";
        let config = Config::parse(text, "am.yml").unwrap();
        let saturday = chrono::DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z").unwrap().to_utc();
        let monday_10_berlin = chrono::DateTime::parse_from_rfc3339("2026-11-30T09:00:00Z").unwrap().to_utc();
        let monday_night = chrono::DateTime::parse_from_rfc3339("2026-11-30T20:00:00Z").unwrap().to_utc();
        let weekend_route = &config.route.routes[0];
        let office_route = &config.route.routes[1];
        assert!(config.muted(weekend_route, saturday) && !config.muted(weekend_route, monday_10_berlin));
        assert!(!config.muted(office_route, monday_10_berlin) && config.muted(office_route, monday_night));
    }
}
