//! The annotation templates of Prometheus rule files: `{{ $labels.NAME }}`,
//! `{{ $value }}` and the common pipelines (`humanize`,
//! `humanizePercentage`, `humanizeDuration`, `printf "%.2f"`, `toUpper`,
//! `toLower`). A template is compiled at load, so an unknown function is a
//! load error rather than a blank page at 3 a.m.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Label(String),
    Value,
    Text(String),
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
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

const FUNCTIONS: &[&str] =
    &["humanize", "humanize1024", "humanizePercentage", "humanizeDuration", "printf", "toUpper", "toLower", "title"];

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
    if token.parse::<f64>().is_ok() {
        return Ok(Arg::Text(token.to_owned()));
    }
    Err(format!("unsupported template argument {token:?} (use $labels.NAME or $value)"))
}

impl Template {
    pub fn compile(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
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
                segments.push(Segment::Text(before.to_owned()));
            }
            trim_next = trim_after;
            let action = raw.trim().trim_start_matches('-').trim_end_matches('-').trim();
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
            segments.push(Segment::Action(commands));
            rest = &after[end + 2..];
        }
        let rest = if trim_next { rest.trim_start() } else { rest };
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_owned()));
        }
        Ok(Template { segments })
    }

    pub fn render(&self, labels: &BTreeMap<String, String>, value: f64) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Action(commands) => {
                    let mut piped: Option<String> = None;
                    for command in commands {
                        let mut args: Vec<String> = command
                            .args
                            .iter()
                            .map(|a| match a {
                                Arg::Label(name) => labels.get(name).cloned().unwrap_or_default(),
                                Arg::Value => format_value(value),
                                Arg::Text(text) => text.clone(),
                            })
                            .collect();
                        if let Some(previous) = piped.take() {
                            args.push(previous);
                        }
                        piped = Some(match command.function.as_deref() {
                            None => args.pop().unwrap_or_default(),
                            Some(function) => apply(function, &args),
                        });
                    }
                    out.push_str(&piped.unwrap_or_default());
                }
            }
        }
        out
    }
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

fn apply(function: &str, args: &[String]) -> String {
    let last = args.last().map(String::as_str).unwrap_or("");
    match function {
        "humanize" => humanize(number(last)),
        "humanize1024" => {
            let v = number(last);
            if v.abs() <= 1.0 || !v.is_finite() {
                return g4(v);
            }
            let (v, prefix) = scale_down(v, 1024.0, &["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"]);
            format!("{}{prefix}", g4(v))
        }
        "humanizePercentage" => format!("{}%", g4(number(last) * 100.0)),
        "humanizeDuration" => humanize_duration(number(last)),
        "printf" => printf(args),
        "toUpper" => last.to_uppercase(),
        "toLower" => last.to_lowercase(),
        "title" => {
            let mut chars = last.chars();
            chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default()
        }
        _ => last.to_owned(),
    }
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
        // Trim markers, as Go's: whitespace on the marked side goes.
        let trimmed = Template::compile("a  {{- $labels.agent_id -}} \n b {{ $value }}").unwrap();
        assert_eq!(trimmed.render(&labels, 1.5), "asupport-botb 1.5");
    }

    #[test]
    fn unknown_functions_and_unclosed_actions_are_load_errors() {
        assert!(Template::compile("{{ reReplaceAll \"a\" \"b\" $value }}").unwrap_err().contains("reReplaceAll"));
        assert!(Template::compile("{{ $value").unwrap_err().contains("unclosed"));
        assert!(Template::compile("{{ .Foo }}").is_err());
    }
}
