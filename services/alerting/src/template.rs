//! The annotation templates of Prometheus rule files: `{{ $labels.NAME }}`
//! (or `.Labels.NAME`), `{{ $value }}` (or `.Value`), pipelines of
//! Prometheus' functions (`humanize`, `humanize1024`, `humanizePercentage`,
//! `humanizeDuration`, `humanizeTimestamp`, `printf`, `toUpper`,
//! `toLower`, `title`, `reReplaceAll`, `match`), `{{ if }}` / `{{ else if }}`
//! / `{{ else }}` / `{{ end }}` with `eq`, `ne`, `lt`, `le`, `gt`, `ge`,
//! `and`, `or`, `not`, and Go's trim markers. Numbers print as Go prints a
//! float64. A template is compiled at load, so an unknown function is a
//! load error rather than a blank page at 3 a.m.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Label(String),
    Value,
    Text(String),
    Number(f64),
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
}

/// A value in a pipeline, typed as Go's templates type it: what a
/// condition finds true, and how a comparison compares.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Text(String),
    Number(f64),
    Bool(bool),
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::Text(text) => text.clone(),
            Val::Number(v) => format_value(*v),
            Val::Bool(b) => b.to_string(),
        }
    }

    fn number(&self) -> f64 {
        match self {
            Val::Text(text) => number(text),
            Val::Number(v) => *v,
            Val::Bool(b) => f64::from(u8::from(*b)),
        }
    }

    /// Go's truth: false, zero and the empty string are false.
    fn truthy(&self) -> bool {
        match self {
            Val::Text(text) => !text.is_empty(),
            Val::Number(v) => *v != 0.0,
            Val::Bool(b) => *b,
        }
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

fn arg(token: &str) -> Result<Arg, String> {
    if let Some(text) = token.strip_prefix('"') {
        return Ok(Arg::Text(text.to_owned()));
    }
    if token == "$value" || token == ".Value" {
        return Ok(Arg::Value);
    }
    if let Some(name) = token.strip_prefix("$labels.").or_else(|| token.strip_prefix(".Labels.")) {
        return Ok(Arg::Label(name.to_owned()));
    }
    if let Ok(v) = token.parse::<f64>() {
        return Ok(Arg::Number(v));
    }
    Err(format!("unsupported template argument {token:?} (use $labels.NAME or $value)"))
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
fn pipeline(action: &str) -> Result<Vec<Command>, String> {
    let mut commands = Vec::new();
    let tokens = tokens(action)?;
    for part in tokens.split(|t| t == "|") {
        let Some((head, tail)) = part.split_first() else { return Err("empty pipeline stage".into()) };
        if FUNCTIONS.contains(&head.as_str()) {
            commands.push(Command {
                function: Some(head.clone()),
                args: tail.iter().map(|t| arg(t)).collect::<Result<_, _>>()?,
            });
        } else if tail.is_empty() {
            commands.push(Command { function: None, args: vec![arg(head)?] });
        } else {
            return Err(format!("unknown template function {head:?}"));
        }
    }
    Ok(commands)
}

/// Segments up to the `end`, `else` or `else if` closing the block they
/// are in (returned with them), or to the end of the template.
fn block(items: &mut std::vec::IntoIter<Item>, nested: bool) -> Result<(Vec<Segment>, Option<String>), String> {
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
                return Err(format!("{{{{ {action} }}}} without an if"));
            }
            return Ok((segments, Some(action)));
        }
        let Some(condition) = action.strip_prefix("if ") else {
            segments.push(Segment::Action(pipeline(&action)?));
            continue;
        };
        let mut branches = vec![(pipeline(condition)?, Vec::new())];
        let mut otherwise = Vec::new();
        loop {
            let (body, closing) = block(items, true)?;
            branches.last_mut().expect("a branch").1 = body;
            match closing.as_deref() {
                Some("end") => break,
                Some("else") => {
                    let (body, closing) = block(items, true)?;
                    if closing.as_deref() != Some("end") {
                        return Err("{{ else }} must be the last branch before {{ end }}".into());
                    }
                    otherwise = body;
                    break;
                }
                Some(other) => {
                    let condition = other.strip_prefix("else if ").expect("else if");
                    branches.push((pipeline(condition)?, Vec::new()));
                }
                None => return Err("{{ if }} without {{ end }}".into()),
            }
        }
        segments.push(Segment::If { branches, otherwise });
    }
    Ok((segments, None))
}

impl Template {
    pub fn compile(text: &str) -> Result<Template, String> {
        let (segments, _) = block(&mut items(text)?.into_iter(), false)?;
        Ok(Template { segments })
    }

    pub fn render(&self, labels: &BTreeMap<String, String>, value: f64) -> String {
        let mut out = String::new();
        render(&self.segments, labels, value, &mut out);
        out
    }
}

fn render(segments: &[Segment], labels: &BTreeMap<String, String>, value: f64, out: &mut String) {
    for segment in segments {
        match segment {
            Segment::Text(text) => out.push_str(text),
            Segment::Action(commands) => out.push_str(&run(commands, labels, value).text()),
            Segment::If { branches, otherwise } => {
                let taken = branches.iter().find(|(condition, _)| run(condition, labels, value).truthy());
                render(taken.map_or(otherwise, |(_, body)| body), labels, value, out);
            }
        }
    }
}

/// Runs a pipeline: each command's result is the next one's last argument.
fn run(commands: &[Command], labels: &BTreeMap<String, String>, value: f64) -> Val {
    let mut piped: Option<Val> = None;
    for command in commands {
        let mut args: Vec<Val> = command
            .args
            .iter()
            .map(|a| match a {
                Arg::Label(name) => Val::Text(labels.get(name).cloned().unwrap_or_default()),
                Arg::Value => Val::Number(value),
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
        assert!(Template::compile("{{ $value").unwrap_err().contains("unclosed"));
        assert!(Template::compile("{{ .Foo }}").is_err());
    }
}
