//! Go templates as Prometheus and Alertmanager use them.
//!
//! - Rule files' annotation and label templates: `{{ $labels.NAME }}` (or
//!   `.Labels.NAME`), `{{ $value }}` (or `.Value`).
//! - Receivers' message fields (Slack's `title` and `text`, PagerDuty's
//!   `description`, an email's `subject` header, ...): Alertmanager's
//!   notification data, `.Status`, `.Receiver`, `.GroupLabels.NAME`,
//!   `.CommonLabels.NAME`, `.CommonAnnotations.NAME`, `.ExternalURL` and
//!   `.Alerts` (each with `.Status`, `.Labels`, `.Annotations`,
//!   `.StartsAt`, `.EndsAt`, `.GeneratorURL`, `.Fingerprint`;
//!   `.Alerts.Firing` and `.Alerts.Resolved`; a label set's
//!   `.SortedPairs`, `.Names` and `.Values`), `{{ range }}` over them, and
//!   `{{ template "NAME" . }}` for the default texts the caller names.
//!
//! Both take pipelines of Prometheus' functions (`humanize`,
//! `humanize1024`, `humanizePercentage`, `humanizeDuration`,
//! `humanizeTimestamp`, `printf`, `toUpper`, `toLower`, `title`,
//! `reReplaceAll`, `match`) and Go's and Alertmanager's (`len`, `join`,
//! `safeHtml`, `trimSpace`), `{{ if }}` / `{{ else if }}` / `{{ else }}` /
//! `{{ end }}` with `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `and`, `or`,
//! `not`, and Go's trim markers. Numbers print as Go prints a float64. A
//! template is compiled at load, so an unknown function or field is a load
//! error rather than a blank page at 3 a.m.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    /// `.A.B` from the current value (`.` itself with no path), or with
    /// `root`, from the template's data (`$labels.X` is `$.Labels.X`).
    Field {
        root: bool,
        path: Vec<String>,
    },
    Text(String),
    Number(f64),
}

/// What a template may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A rule's: its labels and value only.
    Rule,
    /// A notification's: Alertmanager's data, and these named templates.
    Notification(&'static [&'static str]),
}

#[derive(Debug, Clone, PartialEq)]
struct Command {
    function: Option<String>,
    args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Action(Vec<Command>),
    /// `{{ if A }}...{{ else if B }}...{{ else }}...{{ end }}`.
    If {
        branches: Vec<(Vec<Command>, Vec<Segment>)>,
        otherwise: Vec<Segment>,
    },
    /// `{{ range A }}...{{ else }}...{{ end }}`: the body once per element
    /// (a map's values in key order) with `.` set to it; `otherwise` when
    /// there is none.
    Range {
        over: Vec<Command>,
        body: Vec<Segment>,
        otherwise: Vec<Segment>,
    },
    /// `{{ template "NAME" A }}`: a named text the caller renders.
    Named {
        name: String,
        data: Vec<Command>,
    },
}

/// A value in a pipeline, typed as Go's templates type it: what a
/// condition finds true, and how a comparison compares.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Text(String),
    Number(f64),
    Bool(bool),
    /// A list or a map.
    Data(serde_json::Value),
}

impl Val {
    fn from_json(value: serde_json::Value) -> Val {
        match value {
            serde_json::Value::Null => Val::Text(String::new()),
            serde_json::Value::String(text) => Val::Text(text),
            serde_json::Value::Number(n) => Val::Number(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::Bool(b) => Val::Bool(b),
            data => Val::Data(data),
        }
    }

    fn text(&self) -> String {
        match self {
            Val::Text(text) => text.clone(),
            Val::Number(v) => format_value(*v),
            Val::Bool(b) => b.to_string(),
            Val::Data(data) => go_print(data),
        }
    }

    fn number(&self) -> f64 {
        match self {
            Val::Text(text) => number(text),
            Val::Number(v) => *v,
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Data(_) => f64::NAN,
        }
    }

    /// Go's truth: false, zero and the empty string are false.
    fn truthy(&self) -> bool {
        match self {
            Val::Text(text) => !text.is_empty(),
            Val::Number(v) => *v != 0.0,
            Val::Bool(b) => *b,
            Val::Data(data) => data.as_array().map_or(0, Vec::len) + data.as_object().map_or(0, |m| m.len()) > 0,
        }
    }
}

/// A list or map as Go's `%v` prints one: `[a b]`, `map[k:v]`.
fn go_print(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Array(items) => format!("[{}]", items.iter().map(go_print).collect::<Vec<_>>().join(" ")),
        serde_json::Value::Object(map) => {
            let mut pairs: Vec<_> = map.iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}:{}", go_print(v))).collect();
            format!("map[{}]", pairs.join(" "))
        }
        other => Val::from_json(other.clone()).text(),
    }
}

/// One step of a field path: a map's key, or Alertmanager's methods on
/// label sets (`SortedPairs`, `Names`, `Values`) and alert lists
/// (`Firing`, `Resolved`). Anything else is empty, as a missing label is.
fn step(value: &serde_json::Value, key: &str) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => match map.get(key) {
            Some(found) => found.clone(),
            None => {
                let mut pairs: Vec<_> = map.iter().collect();
                pairs.sort_by(|a, b| a.0.cmp(b.0));
                match key {
                    "SortedPairs" => {
                        Value::Array(pairs.iter().map(|(k, v)| serde_json::json!({"Name": k, "Value": v})).collect())
                    }
                    "Names" => Value::Array(pairs.iter().map(|(k, _)| Value::String((*k).clone())).collect()),
                    "Values" => Value::Array(pairs.iter().map(|(_, v)| (*v).clone()).collect()),
                    _ => Value::Null,
                }
            }
        },
        Value::Array(items) if key == "Firing" || key == "Resolved" => {
            let status = key.to_lowercase();
            Value::Array(items.iter().filter(|item| item["Status"] == status.as_str()).cloned().collect())
        }
        _ => Value::Null,
    }
}

/// A template's text split at its actions, with Go's trim markers applied.
enum Item {
    Text(String),
    Action(String),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// The data a template runs on, and how it renders a named template.
struct Context<'a> {
    root: &'a serde_json::Value,
    named: &'a dyn Fn(&str, &serde_json::Value) -> String,
}

const FUNCTIONS: &[&str] = &[
    "humanize",
    "humanize1024",
    "humanizePercentage",
    "humanizeDuration",
    "humanizeTimestamp",
    "printf",
    "toUpper",
    "toLower",
    "title",
    "reReplaceAll",
    "match",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "len",
    "join",
    "safeHtml",
    "trimSpace",
];

fn tokens(action: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut text = String::from("\"");
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('n') => text.push('\n'),
                        Some(other) => text.push(other),
                        None => return Err("unterminated string".into()),
                    },
                    Some('"') => break,
                    Some(other) => text.push(other),
                    None => return Err("unterminated string".into()),
                }
            }
            out.push(text);
        } else if c == '|' {
            chars.next();
            out.push("|".into());
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '|' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

fn arg(token: &str, mode: Mode) -> Result<Arg, String> {
    if let Some(text) = token.strip_prefix('"') {
        return Ok(Arg::Text(text.to_owned()));
    }
    if let Ok(v) = token.parse::<f64>() {
        return Ok(Arg::Number(v));
    }
    let path = |rest: &str| -> Vec<String> { rest.split('.').filter(|p| !p.is_empty()).map(str::to_owned).collect() };
    let field = match token {
        "$value" => Arg::Field { root: true, path: vec!["Value".into()] },
        "$labels" => Arg::Field { root: true, path: vec!["Labels".into()] },
        "$" => Arg::Field { root: true, path: Vec::new() },
        _ if token.starts_with("$labels.") => {
            Arg::Field { root: true, path: [vec!["Labels".to_owned()], path(&token["$labels".len()..])].concat() }
        }
        _ if token.starts_with("$.") => Arg::Field { root: true, path: path(&token[1..]) },
        _ if token.starts_with('.') => Arg::Field { root: false, path: path(token) },
        _ if token.starts_with('$') => return Err(format!("template variables ({token}) are not supported")),
        _ => return Err(format!("unsupported template argument {token:?}")),
    };
    if let (Mode::Rule, Arg::Field { path, .. }) = (mode, &field) {
        let fine = match path.first().map(String::as_str) {
            Some("Labels") => path.len() <= 2,
            Some("Value") => path.len() == 1,
            // `.` itself (inside a range, the element).
            None => token == ".",
            _ => false,
        };
        if !fine {
            return Err(format!("unsupported template argument {token:?} (use $labels.NAME or $value)"));
        }
    }
    Ok(field)
}

/// Splits a template at its actions, applying trim markers.
fn items(text: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut rest = text;
    // Go's trim markers: `{{- ` drops the whitespace before the action,
    // ` -}}` the whitespace after it.
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let raw = &after[..end];
        let trim_before = raw.starts_with("- ") || raw.starts_with("-\n") || raw == "-";
        let trim_after = raw.ends_with(" -") || raw.ends_with("\n-");
        let mut before = &rest[..start];
        if trim_next {
            before = before.trim_start();
        }
        if trim_before {
            before = before.trim_end();
        }
        if !before.is_empty() {
            items.push(Item::Text(before.to_owned()));
        }
        trim_next = trim_after;
        let action = raw.trim().trim_start_matches('-').trim_end_matches('-').trim();
        items.push(Item::Action(action.to_owned()));
        rest = &after[end + 2..];
    }
    let rest = if trim_next { rest.trim_start() } else { rest };
    if !rest.is_empty() {
        items.push(Item::Text(rest.to_owned()));
    }
    Ok(items)
}

/// One action's pipeline: `a | f b | g`.
fn pipeline(action: &str, mode: Mode) -> Result<Vec<Command>, String> {
    if action.contains(":=") || action.split_whitespace().next().is_some_and(|t| t.starts_with('$') && t.ends_with(','))
    {
        return Err(format!("template variables ({action}) are not supported"));
    }
    let mut commands = Vec::new();
    let tokens = tokens(action)?;
    for part in tokens.split(|t| t == "|") {
        let Some((head, tail)) = part.split_first() else { return Err("empty pipeline stage".into()) };
        if FUNCTIONS.contains(&head.as_str()) {
            commands.push(Command {
                function: Some(head.clone()),
                args: tail.iter().map(|t| arg(t, mode)).collect::<Result<_, _>>()?,
            });
        } else if tail.is_empty() {
            commands.push(Command { function: None, args: vec![arg(head, mode)?] });
        } else {
            return Err(format!("unknown template function {head:?}"));
        }
    }
    Ok(commands)
}

/// Segments up to the `end`, `else` or `else if` closing the block they
/// are in (returned with them), or to the end of the template.
fn block(
    items: &mut std::vec::IntoIter<Item>,
    nested: bool,
    mode: Mode,
) -> Result<(Vec<Segment>, Option<String>), String> {
    let mut segments = Vec::new();
    while let Some(item) = items.next() {
        let action = match item {
            Item::Text(text) => {
                segments.push(Segment::Text(text));
                continue;
            }
            Item::Action(action) => action,
        };
        if action == "end" || action == "else" || action.starts_with("else if ") {
            if !nested {
                return Err(format!("{{{{ {action} }}}} without an if or a range"));
            }
            return Ok((segments, Some(action)));
        }
        let keyword = action.split_whitespace().next().unwrap_or_default();
        match keyword {
            "if" => segments.push(if_block(items, &action["if ".len()..], mode)?),
            "range" => {
                let over = pipeline(&action["range ".len()..], mode)?;
                let (body, closing) = block(items, true, mode)?;
                let otherwise = match closing.as_deref() {
                    Some("end") => Vec::new(),
                    Some("else") => match block(items, true, mode)? {
                        (otherwise, Some(end)) if end == "end" => otherwise,
                        _ => return Err("{{ else }} must be the last branch of a range before {{ end }}".into()),
                    },
                    _ => return Err("{{ range }} without {{ end }}".into()),
                };
                segments.push(Segment::Range { over, body, otherwise });
            }
            "template" => {
                let Mode::Notification(names) = mode else {
                    return Err("{{ template }} is not available in rule templates".into());
                };
                let tokens = tokens(&action)?;
                let name =
                    tokens.get(1).and_then(|t| t.strip_prefix('"')).ok_or("{{ template }} needs a quoted name")?;
                if !names.contains(&name) {
                    return Err(format!("unknown template {name:?} (known: {})", names.join(", ")));
                }
                let data = match tokens.get(2) {
                    Some(_) => pipeline(&tokens[2..].join(" "), mode)?,
                    None => vec![Command { function: None, args: vec![Arg::Field { root: false, path: Vec::new() }] }],
                };
                segments.push(Segment::Named { name: name.to_owned(), data });
            }
            "define" | "block" | "with" => {
                return Err(format!("{{{{ {keyword} }}}} is not supported (no template files)"));
            }
            _ => segments.push(Segment::Action(pipeline(&action, mode)?)),
        }
    }
    Ok((segments, None))
}

/// The rest of `{{ if CONDITION }}`, to its `{{ end }}`.
fn if_block(items: &mut std::vec::IntoIter<Item>, condition: &str, mode: Mode) -> Result<Segment, String> {
    let mut branches = vec![(pipeline(condition, mode)?, Vec::new())];
    let mut otherwise = Vec::new();
    loop {
        let (body, closing) = block(items, true, mode)?;
        branches.last_mut().expect("a branch").1 = body;
        match closing.as_deref() {
            Some("end") => break,
            Some("else") => {
                let (body, closing) = block(items, true, mode)?;
                if closing.as_deref() != Some("end") {
                    return Err("{{ else }} must be the last branch before {{ end }}".into());
                }
                otherwise = body;
                break;
            }
            Some(other) => {
                let condition = other.strip_prefix("else if ").expect("else if");
                branches.push((pipeline(condition, mode)?, Vec::new()));
            }
            None => return Err("{{ if }} without {{ end }}".into()),
        }
    }
    Ok(Segment::If { branches, otherwise })
}

impl Template {
    /// A rule file's template: its labels and value.
    pub fn compile(text: &str) -> Result<Template, String> {
        Self::compile_in(text, Mode::Rule)
    }

    /// A receiver's template over Alertmanager's notification data, which
    /// may use the named templates in `names`.
    pub fn compile_notification(text: &str, names: &'static [&'static str]) -> Result<Template, String> {
        Self::compile_in(text, Mode::Notification(names))
    }

    fn compile_in(text: &str, mode: Mode) -> Result<Template, String> {
        let (segments, _) = block(&mut items(text)?.into_iter(), false, mode)?;
        Ok(Template { segments })
    }

    /// Renders a rule's template for one sample.
    pub fn render(&self, labels: &BTreeMap<String, String>, value: f64) -> String {
        let data = serde_json::json!({"Labels": labels, "Value": value});
        self.render_data(&data, &|_, _| String::new())
    }

    /// Renders a notification's template over `data`; `named` renders
    /// `{{ template "NAME" X }}`.
    pub fn render_data(&self, data: &serde_json::Value, named: &dyn Fn(&str, &serde_json::Value) -> String) -> String {
        let mut out = String::new();
        render(&self.segments, data, &Context { root: data, named }, &mut out);
        out
    }
}

fn render(segments: &[Segment], dot: &serde_json::Value, context: &Context<'_>, out: &mut String) {
    for segment in segments {
        match segment {
            Segment::Text(text) => out.push_str(text),
            Segment::Action(commands) => out.push_str(&run(commands, dot, context).text()),
            Segment::If { branches, otherwise } => {
                let taken = branches.iter().find(|(condition, _)| run(condition, dot, context).truthy());
                render(taken.map_or(otherwise, |(_, body)| body), dot, context, out);
            }
            Segment::Range { over, body, otherwise } => {
                let items: Vec<serde_json::Value> = match run(over, dot, context) {
                    Val::Data(serde_json::Value::Array(items)) => items,
                    Val::Data(serde_json::Value::Object(map)) => {
                        let mut pairs: Vec<_> = map.into_iter().collect();
                        pairs.sort_by(|a, b| a.0.cmp(&b.0));
                        pairs.into_iter().map(|(_, v)| v).collect()
                    }
                    _ => Vec::new(),
                };
                if items.is_empty() {
                    render(otherwise, dot, context, out);
                }
                for item in &items {
                    render(body, item, context, out);
                }
            }
            Segment::Named { name, data } => {
                let data = match run(data, dot, context) {
                    Val::Data(data) => data,
                    _ => dot.clone(),
                };
                out.push_str(&(context.named)(name, &data));
            }
        }
    }
}

/// Runs a pipeline: each command's result is the next one's last argument.
fn run(commands: &[Command], dot: &serde_json::Value, context: &Context<'_>) -> Val {
    let mut piped: Option<Val> = None;
    for command in commands {
        let mut args: Vec<Val> = command
            .args
            .iter()
            .map(|a| match a {
                Arg::Field { root, path } => {
                    let start = if *root { context.root } else { dot };
                    let mut value = start.clone();
                    for key in path {
                        value = step(&value, key);
                    }
                    Val::from_json(value)
                }
                Arg::Text(text) => Val::Text(text.clone()),
                Arg::Number(v) => Val::Number(*v),
            })
            .collect();
        if let Some(previous) = piped.take() {
            args.push(previous);
        }
        piped = Some(match command.function.as_deref() {
            None => args.pop().unwrap_or(Val::Text(String::new())),
            Some(function) => apply(function, &args),
        });
    }
    piped.unwrap_or(Val::Text(String::new()))
}

/// `$value` as Go's `%v` prints a float64 (Prometheus renders it so):
/// the shortest digits, in exponent form from 1e+06 up or below 1e-04.
fn format_value(value: f64) -> String {
    format_g(value, None)
}

/// Go's `%g` for a float64: `None` is the shortest representation (`%v`),
/// `Some(n)` is `%.ng` (n significant digits, trailing zeros dropped).
fn format_g(value: f64, precision: Option<usize>) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let sign = if value.is_sign_negative() { "-" } else { "" };
    if value == 0.0 {
        return format!("{sign}0");
    }
    // The significant digits, and the decimal point's place among them.
    let scientific = match precision {
        None => format!("{:e}", value.abs()),
        Some(p) => format!("{:.*e}", p.max(1) - 1, value.abs()),
    };
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let significant = digits.iter().rposition(|d| *d != b'0').map_or(1, |i| i + 1);
    let digits = &digits[..significant];
    let nd = digits.len() as i32;
    let dp = exponent + 1;
    let digit = |i: i32| if (0..nd).contains(&i) { digits[i as usize] as char } else { '0' };
    let mut prec = precision.map_or(nd, |p| p.max(1) as i32);
    let eprec = match precision {
        None => 6,
        Some(_) if prec > nd && nd >= dp => nd,
        Some(_) => prec,
    };
    let exp = dp - 1;
    let mut out = String::from(sign);
    if exp < -4 || exp >= eprec {
        prec = prec.min(nd);
        out.push(digit(0));
        if prec > 1 {
            out.push('.');
            (1..prec).for_each(|i| out.push(digit(i)));
        }
        out.push_str(&format!("e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()));
        return out;
    }
    if prec > dp {
        prec = nd;
    }
    if dp <= 0 {
        out.push('0');
    } else {
        (0..dp).for_each(|i| out.push(digit(i)));
    }
    let decimals = (prec - dp).max(0);
    if decimals > 0 {
        out.push('.');
        (0..decimals).for_each(|i| out.push(digit(dp + i)));
    }
    out
}

fn number(text: &str) -> f64 {
    text.parse().unwrap_or(f64::NAN)
}

/// Go's `%.4g`, as Prometheus' humanizing functions print.
fn g4(value: f64) -> String {
    format_g(value, Some(4))
}

fn apply(function: &str, args: &[Val]) -> Val {
    let last = args.last().cloned().unwrap_or(Val::Text(String::new()));
    let compare = |holds: fn(std::cmp::Ordering) -> bool| {
        let [a, b] = args else { return Val::Bool(false) };
        // Numbers compare as numbers; anything else as text.
        let ordering = match (a, b) {
            (Val::Number(_), _) | (_, Val::Number(_)) => a.number().partial_cmp(&b.number()),
            _ => Some(a.text().cmp(&b.text())),
        };
        Val::Bool(ordering.is_some_and(holds))
    };
    match function {
        "eq" => compare(|o| o.is_eq()),
        "ne" => compare(|o| o.is_ne()),
        "lt" => compare(|o| o.is_lt()),
        "le" => compare(|o| o.is_le()),
        "gt" => compare(|o| o.is_gt()),
        "ge" => compare(|o| o.is_ge()),
        // Go's: the first false argument, or the last; the first true, or the last.
        "and" => args.iter().find(|a| !a.truthy()).unwrap_or(&last).clone(),
        "or" => args.iter().find(|a| a.truthy()).unwrap_or(&last).clone(),
        "not" => Val::Bool(!last.truthy()),
        "match" => {
            let (pattern, text) = (args.first().map(Val::text).unwrap_or_default(), last.text());
            Val::Bool(regex::Regex::new(&pattern).is_ok_and(|r| r.is_match(&text)))
        }
        "len" => Val::Number(match &last {
            Val::Data(data) => data.as_array().map_or(0, Vec::len) + data.as_object().map_or(0, |m| m.len()),
            other => other.text().chars().count(),
        } as f64),
        // Alertmanager's `join SEP LIST`.
        "join" => {
            let [separator, Val::Data(serde_json::Value::Array(items))] = args else { return last };
            let items: Vec<String> = items.iter().map(|item| Val::from_json(item.clone()).text()).collect();
            Val::Text(items.join(&separator.text()))
        }
        "reReplaceAll" => {
            let [pattern, replacement, text] = args else { return last };
            match regex::Regex::new(&pattern.text()) {
                Ok(regex) => Val::Text(regex.replace_all(&text.text(), replacement.text().as_str()).into_owned()),
                Err(_) => text.clone(),
            }
        }
        other => Val::Text(apply_text(other, args, &last)),
    }
}

fn apply_text(function: &str, args: &[Val], last: &Val) -> String {
    let text = last.text();
    match function {
        "humanize" => humanize(last.number()),
        "humanize1024" => {
            let v = last.number();
            if v.abs() <= 1.0 || !v.is_finite() {
                return g4(v);
            }
            let (v, prefix) = scale_down(v, 1024.0, &["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"]);
            format!("{}{prefix}", g4(v))
        }
        "humanizePercentage" => format!("{}%", g4(last.number() * 100.0)),
        "humanizeDuration" => humanize_duration(last.number()),
        "humanizeTimestamp" => humanize_timestamp(last.number()),
        "printf" => printf(&args.iter().map(Val::text).collect::<Vec<_>>()),
        "toUpper" => text.to_uppercase(),
        "trimSpace" => text.trim().to_owned(),
        "toLower" => text.to_lowercase(),
        "title" => {
            let mut chars = text.chars();
            chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default()
        }
        _ => text,
    }
}

/// Prometheus' `humanizeTimestamp`: Unix seconds as Go prints a UTC time
/// (`2026-12-01 05:46:00.5 +0000 UTC`), to the millisecond as Prometheus
/// keeps times. A time past 64-bit nanoseconds (where Prometheus shows an
/// error) prints as a number.
fn humanize_timestamp(seconds: f64) -> String {
    let nanos = seconds * 1e9;
    if !nanos.is_finite() || nanos >= i64::MAX as f64 || nanos <= i64::MIN as f64 {
        return g4(seconds);
    }
    let millis = nanos as i64 / 1_000_000;
    let (whole, fraction) = (millis.div_euclid(1000), millis.rem_euclid(1000) as u32 * 1_000_000);
    let Some(time) = chrono::DateTime::from_timestamp(whole, fraction) else { return g4(seconds) };
    let mut text = time.format("%Y-%m-%d %H:%M:%S").to_string();
    if fraction > 0 {
        text.push('.');
        text.push_str(format!("{fraction:09}").trim_end_matches('0'));
    }
    text + " +0000 UTC"
}

/// Prometheus' `humanize`: SI prefixes, four significant digits.
fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return g4(v);
    }
    let (v, prefix) =
        if v.abs() >= 1.0 { scale_down(v, 1000.0, &["k", "M", "G", "T", "P", "E", "Z", "Y"]) } else { scale_up(v) };
    format!("{}{prefix}", g4(v))
}

/// `v` divided by `base` while it is at least `base`, and the prefix
/// that says how often.
fn scale_down(mut v: f64, base: f64, prefixes: &[&'static str]) -> (f64, &'static str) {
    let mut prefix = "";
    for p in prefixes {
        if v.abs() < base {
            break;
        }
        prefix = p;
        v /= base;
    }
    (v, prefix)
}

/// `v` multiplied by 1000 while it is below 1, and the SI prefix that says
/// how often.
fn scale_up(mut v: f64) -> (f64, &'static str) {
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    (v, prefix)
}

/// Prometheus' `humanizeDuration`: whole days, hours, minutes and seconds
/// from a minute up; four significant digits of seconds (or of a smaller
/// unit) below it.
fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return g4(v);
    }
    if v == 0.0 {
        return format!("{}s", g4(v));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        let total = v as i64;
        let (days, hours, minutes, seconds) = (total / 86_400, total / 3600 % 24, total / 60 % 60, total % 60);
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", g4(v))
        };
    }
    let (v, prefix) = scale_up(v);
    format!("{}{prefix}s", g4(v))
}

/// `printf` with `%s`, `%v`, `%d`, `%f`, `%.Nf`, `%g` and `%%`.
fn printf(args: &[String]) -> String {
    let Some((format, values)) = args.split_first() else { return String::new() };
    let mut values = values.iter();
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            precision = digits.parse().ok();
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('d') => out.push_str(&format!("{}", number(values.next().map_or("", |v| v)) as i64)),
            Some('f') => {
                out.push_str(&format!("{:.*}", precision.unwrap_or(6), number(values.next().map_or("", |v| v))))
            }
            Some('g') => {
                out.push_str(&format_g(number(values.next().map_or("", |v| v)), precision));
            }
            Some(_) => out.push_str(values.next().map_or("", |v| v)),
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_annotations_render() {
        let labels: BTreeMap<String, String> = [("agent_id".to_string(), "support-bot".to_string())].into();
        let description = Template::compile("Agent {{ $labels.agent_id }} has error rate {{ $value }}%").unwrap();
        assert_eq!(description.render(&labels, 0.25), "Agent support-bot has error rate 0.25%");
        let cost =
            Template::compile("Agent {{ $labels.agent_id }} spending ${{ $value | printf \"%.2f\" }}/hour").unwrap();
        assert_eq!(cost.render(&labels, 123.456), "Agent support-bot spending $123.46/hour");
        assert_eq!(Template::compile("{{ humanize $value }}").unwrap().render(&labels, 1_234_567.0), "1.235M");
        assert_eq!(Template::compile("{{ $value | humanizePercentage }}").unwrap().render(&labels, 0.125), "12.5%");
        assert_eq!(Template::compile("{{ humanizeDuration $value }}").unwrap().render(&labels, 3723.0), "1h 2m 3s");
        assert_eq!(Template::compile("{{ $labels.missing }}!").unwrap().render(&labels, 0.0), "!");
        // Conditions, comparisons and the regex functions.
        let severity = Template::compile(
            "{{ if gt $value 10.0 }}critical{{ else if and (ge $value 5.0) $labels.agent_id }}high{{ else }}low{{ end }}",
        );
        assert!(severity.is_err(), "parenthesised pipelines are not supported");
        let severity =
            Template::compile("{{ if gt $value 10.0 }}critical{{ else if ge $value 5.0 }}high{{ else }}low{{ end }}")
                .unwrap();
        let levels: Vec<String> = [20.0, 5.0, 1.0].iter().map(|v| severity.render(&labels, *v)).collect();
        assert_eq!(levels, ["critical", "high", "low"]);
        let regex = Template::compile(
            "{{ reReplaceAll \"-bot$\" \"\" $labels.agent_id }}{{ if match \"^support\" $labels.agent_id }} (support){{ end }}",
        )
        .unwrap();
        assert_eq!(regex.render(&labels, 0.0), "support (support)");
        let missing = Template::compile("{{ if $labels.missing }}set{{ else }}unset{{ end }}").unwrap();
        assert_eq!(missing.render(&labels, 0.0), "unset");
        assert_eq!(
            Template::compile("{{ $value | humanizeTimestamp }}").unwrap().render(&labels, 1_764_567_960.5),
            "2025-12-01 05:46:00.5 +0000 UTC"
        );
        // Trim markers, as Go's: whitespace on the marked side goes.
        let trimmed = Template::compile("a  {{- $labels.agent_id -}} \n b {{ $value }}").unwrap();
        assert_eq!(trimmed.render(&labels, 1.5), "asupport-botb 1.5");
    }

    #[test]
    fn unknown_functions_and_unclosed_actions_are_load_errors() {
        assert!(Template::compile("{{ query \"up\" }}").unwrap_err().contains("query"));
        assert!(Template::compile("{{ if $value }}x").unwrap_err().contains("end"));
        assert!(Template::compile("x{{ end }}").unwrap_err().contains("without an if"));
        assert!(Template::compile("{{ template \"x\" . }}").unwrap_err().contains("not available"));
        assert!(Template::compile("{{ range $labels }}{{ . }}{{ end }}").is_ok());
        assert!(Template::compile("{{ $x := 1 }}").is_err());
        assert!(Template::compile("{{ $value").unwrap_err().contains("unclosed"));
        assert!(Template::compile("{{ .Foo }}").is_err());
    }

    /// Alertmanager's notification data for two alerts, one firing.
    fn notification() -> serde_json::Value {
        serde_json::json!({
            "Receiver": "oncall", "Status": "firing", "ExternalURL": "http://alerting:9095",
            "GroupLabels": {"alertname": "HighCost"},
            "CommonLabels": {"alertname": "HighCost", "severity": "critical"},
            "CommonAnnotations": {"summary": "High agent cost"},
            "Alerts": [
                {"Status": "firing", "Labels": {"alertname": "HighCost", "agent_id": "bot-a"},
                 "Annotations": {"description": "spending $120/hour"}, "Fingerprint": "f1"},
                {"Status": "resolved", "Labels": {"alertname": "HighCost", "agent_id": "bot-b"},
                 "Annotations": {"description": "back to $3/hour"}, "Fingerprint": "f2"},
            ],
        })
    }

    #[test]
    fn notification_templates_render_alertmanagers_data() {
        const NAMES: &[&str] = &["slack.default.title"];
        let render = |text: &str| {
            Template::compile_notification(text, NAMES).unwrap().render_data(&notification(), &|name, data| {
                format!("<{name}:{}>", data["Status"].as_str().unwrap_or(""))
            })
        };
        assert_eq!(
            render(
                "[{{ .Status | toUpper }}:{{ .Alerts.Firing | len }}] {{ .CommonLabels.alertname }} for {{ .Receiver }}"
            ),
            "[FIRING:1] HighCost for oncall"
        );
        assert_eq!(
            render("{{ range .Alerts }}{{ .Labels.agent_id }}={{ .Status }}; {{ end }}"),
            "bot-a=firing; bot-b=resolved; "
        );
        assert_eq!(
            render("{{ range .Alerts.Resolved }}{{ .Annotations.description }}{{ else }}none{{ end }}"),
            "back to $3/hour"
        );
        assert_eq!(
            render(
                "{{ range .Alerts.Firing }}{{ range .Labels.SortedPairs }}{{ .Name }}={{ .Value }} {{ end }}{{ end }}"
            ),
            "agent_id=bot-a alertname=HighCost "
        );
        assert_eq!(render("{{ join \", \" .CommonLabels.Names }}"), "alertname, severity");
        assert_eq!(render("{{ template \"slack.default.title\" . }}"), "<slack.default.title:firing>");
        assert_eq!(
            render("{{ if eq .Status \"firing\" }}:fire:{{ else }}:ok:{{ end }} {{ .ExternalURL }}"),
            ":fire: http://alerting:9095"
        );
        assert_eq!(render("{{ .CommonLabels.missing }}|{{ .Nope.Deeper }}|"), "||");
        // Unknown named templates and Go features beyond these are load errors.
        let refused = |text: &str| Template::compile_notification(text, NAMES).unwrap_err();
        assert!(refused("{{ template \"email.default.html\" . }}").contains("email.default.html"));
        assert!(refused("{{ define \"x\" }}{{ end }}").contains("not supported"));
        assert!(refused("{{ range .Alerts }}x").contains("end"));
        assert!(refused("{{ range $i, $a := .Alerts }}{{ end }}").contains("variables"));
    }
}
