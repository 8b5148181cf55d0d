//! CEL's strings extension (as cel-go's `ext.Strings` ships it): `charAt`,
//! `indexOf`, `lastIndexOf`, `replace`, `split`, `substring`, `trim`,
//! `reverse` and `format` on strings, `join` on lists of strings, and
//! `strings.quote`. Indices count code points, not bytes.

use std::sync::Arc;

use super::types::Ty;
use super::value::{EvalError, List, Value};

/// The argument types and result type of `receiver.function(args)`, or
/// `None` when there is no such overload.
pub fn signature(function: &str, receiver: &Ty, arity: usize) -> Option<(Vec<Ty>, Ty)> {
    let on_string = matches!(receiver, Ty::String | Ty::Dyn);
    let on_list = matches!(receiver, Ty::List(item) if matches!(**item, Ty::String | Ty::Dyn)) || *receiver == Ty::Dyn;
    Some(match (function, arity) {
        ("charAt", 1) if on_string => (vec![Ty::Int], Ty::String),
        ("indexOf" | "lastIndexOf", 1) if on_string => (vec![Ty::String], Ty::Int),
        ("indexOf" | "lastIndexOf", 2) if on_string => (vec![Ty::String, Ty::Int], Ty::Int),
        ("replace", 2) if on_string => (vec![Ty::String, Ty::String], Ty::String),
        ("replace", 3) if on_string => (vec![Ty::String, Ty::String, Ty::Int], Ty::String),
        ("split", 1) if on_string => (vec![Ty::String], Ty::List(Box::new(Ty::String))),
        ("split", 2) if on_string => (vec![Ty::String, Ty::Int], Ty::List(Box::new(Ty::String))),
        ("substring", 1) if on_string => (vec![Ty::Int], Ty::String),
        ("substring", 2) if on_string => (vec![Ty::Int, Ty::Int], Ty::String),
        ("trim" | "reverse", 0) if on_string => (vec![], Ty::String),
        ("join", 0) if on_list => (vec![], Ty::String),
        ("join", 1) if on_list => (vec![Ty::String], Ty::String),
        ("format", 1) if on_string => (vec![Ty::List(Box::new(Ty::Dyn))], Ty::String),
        _ => return None,
    })
}

/// The longest string `replace` and `join` may build: past it they are a
/// run-time error, so a condition cannot allocate without bound.
pub const MAX_RESULT_BYTES: usize = 1 << 20;

fn too_large(function: &str, bytes: usize) -> EvalError {
    EvalError::new(format!("{function} would build {bytes} bytes, more than the {MAX_RESULT_BYTES} allowed"))
}

fn range_error(what: &str) -> EvalError {
    EvalError::new(format!("{what} out of range"))
}

fn int(value: &Value<'_>) -> Result<i64, EvalError> {
    match value {
        Value::Int(i) => Ok(*i),
        other => Err(EvalError::new(format!("expected int, got {}", other.type_name()))),
    }
}

fn text<'v>(value: &'v Value<'_>) -> Result<&'v str, EvalError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(EvalError::new(format!("expected string, got {}", other.type_name()))),
    }
}

/// The byte offset of code point `index` in `s` (`s.len()` for one past
/// the end), or a range error.
fn byte_offset(s: &str, index: i64) -> Result<usize, EvalError> {
    let index = usize::try_from(index).map_err(|_| range_error("index"))?;
    s.char_indices().map(|(offset, _)| offset).chain([s.len()]).nth(index).ok_or_else(|| range_error("index"))
}

/// The code point index of byte offset `offset` in `s`.
fn char_index(s: &str, offset: usize) -> i64 {
    s[..offset].chars().count() as i64
}

/// Runs `receiver.function(args)`, with types already checked at load.
pub fn call<'a>(function: &str, receiver: Value<'a>, args: &[Value<'a>]) -> Result<Value<'a>, EvalError> {
    if function == "join" {
        let Value::List(list) = &receiver else {
            return Err(EvalError::new(format!("join on {}", receiver.type_name())));
        };
        let separator = args.first().map(text).transpose()?.unwrap_or("");
        let mut parts = Vec::with_capacity(list.len());
        let mut bytes = separator.len().saturating_mul(list.len().saturating_sub(1));
        for item in list.iter() {
            let part = text(&item)?.to_owned();
            bytes = bytes.saturating_add(part.len());
            parts.push(part);
        }
        if bytes > MAX_RESULT_BYTES {
            return Err(too_large("join", bytes));
        }
        return Ok(Value::string(parts.join(separator)));
    }
    let s = text(&receiver)?;
    Ok(match function {
        "charAt" => {
            let start = byte_offset(s, int(&args[0])?)?;
            Value::string(s[start..].chars().next().map(String::from).unwrap_or_default())
        }
        "indexOf" | "lastIndexOf" => {
            let needle = text(&args[0])?;
            let last = function == "lastIndexOf";
            let found = match args.get(1) {
                None if last => s.rfind(needle),
                None => s.find(needle),
                Some(from) => {
                    let from = byte_offset(s, int(from)?)?;
                    if last {
                        // The last match starting at or before `from`.
                        // A match starting at or before `from` ends at or before
                        // `from + needle.len()`, on a char boundary.
                        let end = (from + needle.len()).min(s.len());
                        let end = (0..=end).rev().find(|&e| s.is_char_boundary(e)).unwrap_or(0);
                        s[..end].rfind(needle)
                    } else {
                        s[from..].find(needle).map(|offset| offset + from)
                    }
                }
            };
            Value::Int(found.map_or(-1, |offset| char_index(s, offset)))
        }
        "replace" => {
            let (from, to) = (text(&args[0])?, text(&args[1])?);
            let limit = args.get(2).map(int).transpose()?.unwrap_or(-1);
            let matches = if from.is_empty() { s.chars().count() + 1 } else { s.matches(from).count() };
            let replaced = if limit < 0 { matches } else { matches.min(limit as usize) };
            let bytes = s.len().saturating_add(replaced.saturating_mul(to.len()));
            if bytes > MAX_RESULT_BYTES {
                return Err(too_large("replace", bytes));
            }
            Value::string(if limit < 0 { s.replace(from, to) } else { s.replacen(from, to, limit as usize) })
        }
        "split" => {
            let separator = text(&args[0])?;
            let limit = args.get(1).map(int).transpose()?.unwrap_or(-1);
            let parts: Vec<Value<'a>> = match limit {
                0 => Vec::new(),
                n if n < 0 => split(s, separator, usize::MAX),
                n => split(s, separator, n as usize),
            };
            Value::List(List::Owned(Arc::new(parts)))
        }
        "substring" => {
            let start = byte_offset(s, int(&args[0])?)?;
            let end = match args.get(1) {
                Some(end) => byte_offset(s, int(end)?)?,
                None => s.len(),
            };
            if end < start {
                return Err(range_error("substring end before start:"));
            }
            Value::string(&s[start..end])
        }
        "trim" => Value::string(s.trim()),
        "format" => match &args[0] {
            Value::List(list) => Value::string(format(s, &list.iter().collect::<Vec<_>>())?),
            other => return Err(EvalError::new(format!("format() needs a list, not {}", other.type_name()))),
        },
        "reverse" => Value::string(s.chars().rev().collect::<String>()),
        other => return Err(EvalError::new(format!("no strings function '{other}'"))),
    })
}

/// Splits as cel-go does: an empty separator splits into code points.
fn split<'a>(s: &str, separator: &str, limit: usize) -> Vec<Value<'a>> {
    if separator.is_empty() {
        let mut chars: Vec<String> = s.chars().map(String::from).collect();
        if chars.len() > limit {
            let rest: String = chars.split_off(limit - 1).concat();
            chars.push(rest);
        }
        return chars.into_iter().map(Value::string).collect();
    }
    s.splitn(limit, separator).map(Value::string).collect()
}

/// Namespaced functions: `strings.quote(s)`.
pub const NAMESPACES: &[&str] = &["strings"];

pub fn namespaced_signature(namespace: &str, function: &str, args: &[Ty]) -> Option<Ty> {
    match (namespace, function, args) {
        ("strings", "quote", [Ty::String | Ty::Dyn]) => Some(Ty::String),
        _ => None,
    }
}

pub fn namespaced_call<'a>(namespace: &str, function: &str, args: Vec<Value<'a>>) -> Result<Value<'a>, EvalError> {
    match (namespace, function, args.as_slice()) {
        ("strings", "quote", [Value::String(s)]) => Ok(Value::string(quote(s))),
        _ => Err(EvalError::new(format!("no such overload: {namespace}.{function}"))),
    }
}

/// A CEL string literal that reads back as `s`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Checks a format string's clauses without arguments: a literal format
/// string with an unknown clause is a load error.
pub fn check_format(template: &str) -> Result<(), String> {
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            continue;
        }
        let (_, verb) = clause(&mut chars).map_err(|e| e.0)?;
        let _ = verb;
    }
    Ok(())
}

/// The largest precision a format clause may ask for.
pub const MAX_PRECISION: usize = 100;

/// Reads `[.precision]verb` after a `%`.
fn clause(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<(Option<usize>, char), EvalError> {
    let mut precision = None;
    if chars.peek() == Some(&'.') {
        chars.next();
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let parsed = digits.parse::<usize>().ok().filter(|p| *p <= MAX_PRECISION);
        precision = Some(parsed.ok_or_else(|| {
            EvalError::new(format!("could not parse formatting clause: precision must be 0 to {MAX_PRECISION}"))
        })?);
    }
    match chars.next() {
        Some(verb @ ('s' | 'd' | 'f' | 'e' | 'x' | 'X' | 'o' | 'b')) => Ok((precision, verb)),
        Some(other) => Err(EvalError::new(format!(
            "could not parse formatting clause: unrecognized formatting clause \"{other}\""
        ))),
        None => Err(EvalError::new("could not parse formatting clause: the format string ends after '%'")),
    }
}

/// `template.format(args)`, as cel-go's strings extension formats: `%s`,
/// `%d`, `%f`, `%e`, `%x`, `%X`, `%o`, `%b`, an optional `.precision`, and
/// `%%`. The result is bounded by [`MAX_RESULT_BYTES`].
pub fn format(template: &str, args: &[Value<'_>]) -> Result<String, EvalError> {
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    let mut next = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        let (precision, verb) = clause(&mut chars)?;
        let arg = args.get(next).ok_or_else(|| EvalError::new(format!("index {next} out of range")))?;
        next += 1;
        format_one(&mut out, verb, precision, arg)?;
        if out.len() > MAX_RESULT_BYTES {
            return Err(too_large("format", out.len()));
        }
    }
    Ok(out)
}

fn formatting(message: String) -> EvalError {
    EvalError::new(format!("error during formatting: {message}"))
}

fn non_finite(d: f64) -> Option<&'static str> {
    if d.is_nan() {
        Some("NaN")
    } else if d.is_infinite() {
        Some(if d > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        None
    }
}

fn format_one(out: &mut String, verb: char, precision: Option<usize>, arg: &Value<'_>) -> Result<(), EvalError> {
    use std::fmt::Write;
    let kind = arg.type_name();
    match verb {
        's' => display(out, arg, 0)?,
        'd' => match arg {
            Value::Int(i) => write!(out, "{i}").expect("write to a String"),
            Value::Uint(u) => write!(out, "{u}").expect("write to a String"),
            Value::Double(d) if non_finite(*d).is_some() => out.push_str(non_finite(*d).unwrap_or_default()),
            _ => return Err(formatting(format!("decimal clause can only be used on integers, was given {kind}"))),
        },
        'f' | 'e' => {
            let d = match arg {
                Value::Double(d) => *d,
                Value::Int(i) => *i as f64,
                Value::Uint(u) => *u as f64,
                _ => {
                    let clause = if verb == 'f' { "fixed-point" } else { "scientific" };
                    return Err(formatting(format!("{clause} clause can only be used on doubles, was given {kind}")));
                }
            };
            if let Some(text) = non_finite(d) {
                out.push_str(text);
            } else if verb == 'f' {
                write!(out, "{:.*}", precision.unwrap_or(6), d).expect("write to a String");
            } else {
                // Go's form: one digit, the fraction, then e+XX.
                let text = format!("{:.*e}", precision.unwrap_or(6), d);
                let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
                let exponent: i32 = exponent.parse().unwrap_or(0);
                let sign = if exponent < 0 { '-' } else { '+' };
                write!(out, "{mantissa}e{sign}{:02}", exponent.abs()).expect("write to a String");
            }
        }
        'x' | 'X' => {
            let text = match arg {
                Value::Int(i) if *i < 0 => format!("-{:x}", i.unsigned_abs()),
                Value::Int(i) => format!("{i:x}"),
                Value::Uint(u) => format!("{u:x}"),
                Value::String(s) => hex::encode(s.as_bytes()),
                Value::Bytes(b) => hex::encode(b),
                _ => {
                    return Err(formatting(format!(
                        "only integers, byte buffers, and strings can be formatted as hex, was given {kind}"
                    )));
                }
            };
            out.push_str(&if verb == 'X' { text.to_ascii_uppercase() } else { text });
        }
        'o' => match arg {
            Value::Int(i) if *i < 0 => write!(out, "-{:o}", i.unsigned_abs()).expect("write to a String"),
            Value::Int(i) => write!(out, "{i:o}").expect("write to a String"),
            Value::Uint(u) => write!(out, "{u:o}").expect("write to a String"),
            _ => return Err(formatting(format!("octal clause can only be used on integers, was given {kind}"))),
        },
        _ => match arg {
            Value::Int(i) if *i < 0 => write!(out, "-{:b}", i.unsigned_abs()).expect("write to a String"),
            Value::Int(i) => write!(out, "{i:b}").expect("write to a String"),
            Value::Uint(u) => write!(out, "{u:b}").expect("write to a String"),
            Value::Bool(b) => out.push(if *b { '1' } else { '0' }),
            _ => {
                return Err(formatting(format!(
                    "only integers and bools can be formatted as binary, was given {kind}"
                )));
            }
        },
    }
    Ok(())
}

/// `%s`: strings as they are, lists and maps with their items so (maps
/// sorted by key), everything else as `string()` would convert it.
fn display(out: &mut String, value: &Value<'_>, depth: usize) -> Result<(), EvalError> {
    use std::fmt::Write;
    if depth > 32 {
        return Err(formatting("value nested too deeply".into()));
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => write!(out, "{b}").expect("write to a String"),
        Value::Int(i) => write!(out, "{i}").expect("write to a String"),
        Value::Uint(u) => write!(out, "{u}").expect("write to a String"),
        Value::Double(d) => match non_finite(*d) {
            Some(text) => out.push_str(text),
            None => write!(out, "{d}").expect("write to a String"),
        },
        Value::String(s) => out.push_str(s),
        Value::Bytes(b) => out.push_str(&String::from_utf8_lossy(b)),
        Value::Type(name) => out.push_str(name),
        Value::Ip(ip) => out.push_str(&ip.to_string()),
        Value::Cidr(ip, length) => out.push_str(&format!("{ip}/{length}")),
        Value::Optional(None) => out.push_str("optional.none()"),
        Value::Optional(Some(inner)) => {
            out.push_str("optional.of(");
            display(out, inner, depth + 1)?;
            out.push(')');
        }
        Value::Timestamp(t) => out.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        Value::Duration(d) => out.push_str(&super::value::duration_string(*d)),
        Value::List(list) => {
            out.push('[');
            for (i, item) in list.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                display(out, &item, depth + 1)?;
                if out.len() > MAX_RESULT_BYTES {
                    return Err(too_large("format", out.len()));
                }
            }
            out.push(']');
        }
        Value::Map(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for key in map.keys() {
                let mut k = String::new();
                display(&mut k, &key, depth + 1)?;
                let mut v = String::new();
                display(&mut v, &map.get(&key).unwrap_or(Value::Null), depth + 1)?;
                entries.push((k, v));
            }
            entries.sort();
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write!(out, "{k}: {v}").expect("write to a String");
                if out.len() > MAX_RESULT_BYTES {
                    return Err(too_large("format", out.len()));
                }
            }
            out.push('}');
        }
    }
    Ok(())
}
