//! CEL's strings extension (as cel-go's `ext.Strings` ships it): `charAt`,
//! `indexOf`, `lastIndexOf`, `replace`, `split`, `substring`, `trim`,
//! `reverse` on strings, and `join` on lists of strings. Indices count code
//! points, not bytes.

use std::sync::Arc;

use super::compile::Ty;
use super::value::{EvalError, List, Value};

/// The argument types and result type of `receiver.function(args)`, or
/// `None` when there is no such overload.
pub fn signature(function: &str, receiver: &Ty, arity: usize) -> Option<(&'static [Ty], Ty)> {
    let on_string = matches!(receiver, Ty::String | Ty::Dyn);
    let on_list = matches!(receiver, Ty::List(item) if matches!(**item, Ty::String | Ty::Dyn)) || *receiver == Ty::Dyn;
    Some(match (function, arity) {
        ("charAt", 1) if on_string => (&[Ty::Int], Ty::String),
        ("indexOf" | "lastIndexOf", 1) if on_string => (&[Ty::String], Ty::Int),
        ("indexOf" | "lastIndexOf", 2) if on_string => (&[Ty::String, Ty::Int], Ty::Int),
        ("replace", 2) if on_string => (&[Ty::String, Ty::String], Ty::String),
        ("replace", 3) if on_string => (&[Ty::String, Ty::String, Ty::Int], Ty::String),
        ("split", 1) if on_string => (&[Ty::String], Ty::List(Box::new(Ty::String))),
        ("split", 2) if on_string => (&[Ty::String, Ty::Int], Ty::List(Box::new(Ty::String))),
        ("substring", 1) if on_string => (&[Ty::Int], Ty::String),
        ("substring", 2) if on_string => (&[Ty::Int, Ty::Int], Ty::String),
        ("trim" | "reverse", 0) if on_string => (&[], Ty::String),
        ("join", 0) if on_list => (&[], Ty::String),
        ("join", 1) if on_list => (&[Ty::String], Ty::String),
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
                        let end = (from + needle.len()).min(s.len());
                        let end = (end..=s.len()).find(|&e| s.is_char_boundary(e)).unwrap_or(s.len());
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
