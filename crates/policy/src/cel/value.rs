//! Run-time values of compiled conditions, and the operators over them.
//!
//! Values borrow from the request wherever they can (strings, lists and
//! maps of the agent and action are never copied), so evaluating a condition
//! allocates nothing in the common case.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use prost_types::value::Kind;

/// Why a condition could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl EvalError {
    pub fn new(message: impl Into<String>) -> Self {
        EvalError(message.into())
    }

    pub fn no_overload(op: &str, left: &Value<'_>, right: &Value<'_>) -> Self {
        EvalError(format!("no such overload: {} {op} {}", left.type_name(), right.type_name()))
    }
}

/// A string that is either borrowed from the request or shared.
#[derive(Clone, Debug)]
pub enum Str<'a> {
    Borrowed(&'a str),
    Shared(Arc<str>),
}

impl Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Str::Borrowed(s) => s,
            Str::Shared(s) => s,
        }
    }
}

#[derive(Clone, Debug)]
pub enum List<'a> {
    Strings(&'a [String]),
    Proto(&'a [prost_types::Value]),
    Owned(Arc<Vec<Value<'a>>>),
}

impl<'a> List<'a> {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match self {
            List::Strings(items) => items.len(),
            List::Proto(items) => items.len(),
            List::Owned(items) => items.len(),
        }
    }

    pub fn get(&self, index: usize) -> Option<Value<'a>> {
        match self {
            List::Strings(items) => items.get(index).map(|s| Value::String(Str::Borrowed(s))),
            List::Proto(items) => items.get(index).map(Value::from_proto),
            List::Owned(items) => items.get(index).cloned(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

#[derive(Clone, Debug)]
pub enum Map<'a> {
    Labels(&'a HashMap<String, String>),
    Proto(&'a BTreeMap<String, prost_types::Value>),
    Owned(Arc<Vec<(Value<'a>, Value<'a>)>>),
}

impl<'a> Map<'a> {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match self {
            Map::Labels(map) => map.len(),
            Map::Proto(map) => map.len(),
            Map::Owned(entries) => entries.len(),
        }
    }

    pub fn get_str(&self, key: &str) -> Option<Value<'a>> {
        match self {
            Map::Labels(map) => map.get(key).map(|v| Value::String(Str::Borrowed(v))),
            Map::Proto(map) => map.get(key).map(Value::from_proto),
            Map::Owned(entries) => {
                entries.iter().find(|(k, _)| matches!(k, Value::String(s) if &**s == key)).map(|(_, v)| v.clone())
            }
        }
    }

    pub fn get(&self, key: &Value<'_>) -> Option<Value<'a>> {
        match (self, key) {
            (_, Value::String(s)) => self.get_str(s),
            (Map::Owned(entries), key) => entries.iter().find(|(k, _)| k.equals(key)).map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    pub fn keys(&self) -> Vec<Value<'a>> {
        match self {
            Map::Labels(map) => map.keys().map(|k| Value::String(Str::Borrowed(k))).collect(),
            Map::Proto(map) => map.keys().map(|k| Value::String(Str::Borrowed(k))).collect(),
            Map::Owned(entries) => entries.iter().map(|(k, _)| k.clone()).collect(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    String(Str<'a>),
    Bytes(Arc<[u8]>),
    Timestamp(DateTime<Utc>),
    Duration(TimeDelta),
    List(List<'a>),
    Map(Map<'a>),
    /// A type, as `type(x)` returns and `int`, `string`, ... name.
    Type(&'static str),
    /// An optional value: `optional.of(x)`, `optional.none()`, `m.?key`.
    Optional(Option<Arc<Value<'a>>>),
    /// `net.IP`: `ip('10.0.0.1')`.
    Ip(std::net::IpAddr),
    /// `net.CIDR`: `cidr('10.0.0.0/8')`, the address as written and the
    /// prefix length.
    Cidr(std::net::IpAddr, u8),
}

/// CEL's type names: each is also an identifier whose value is that type.
pub const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "int",
    "list",
    "map",
    "net.CIDR",
    "net.IP",
    "null_type",
    "optional_type",
    "string",
    "type",
    "uint",
];

impl<'a> Value<'a> {
    pub fn from_proto(value: &'a prost_types::Value) -> Value<'a> {
        match &value.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::NumberValue(n)) => Value::Double(*n),
            Some(Kind::StringValue(s)) => Value::String(Str::Borrowed(s)),
            Some(Kind::BoolValue(b)) => Value::Bool(*b),
            Some(Kind::StructValue(s)) => Value::Map(Map::Proto(&s.fields)),
            Some(Kind::ListValue(l)) => Value::List(List::Proto(&l.values)),
        }
    }

    pub fn string(s: impl Into<Arc<str>>) -> Value<'static> {
        Value::String(Str::Shared(s.into()))
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null_type",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Uint(_) => "uint",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Timestamp(_) => "google.protobuf.Timestamp",
            Value::Duration(_) => "google.protobuf.Duration",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Type(_) => "type",
            Value::Optional(_) => "optional_type",
            Value::Ip(_) => "net.IP",
            Value::Cidr(..) => "net.CIDR",
        }
    }

    /// CEL equality: numbers compare across int, uint and double; values of
    /// different kinds are unequal (never an error).
    pub fn equals(&self, other: &Value<'_>) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::String(a), Value::String(b)) => **a == **b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            (Value::Duration(a), Value::Duration(b)) => a == b,
            (Value::Type(a), Value::Type(b)) => a == b,
            (Value::Ip(a), Value::Ip(b)) => super::net::canonical(*a) == super::net::canonical(*b),
            (Value::Cidr(a, m), Value::Cidr(b, n)) => m == n && super::net::canonical(*a) == super::net::canonical(*b),
            (Value::Optional(a), Value::Optional(b)) => match (a, b) {
                (None, None) => true,
                (Some(x), Some(y)) => x.equals(y),
                _ => false,
            },
            (Value::List(a), Value::List(b)) => a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.equals(&y)),
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len()
                    && a.keys().iter().all(|k| match (a.get(k), b.get(k)) {
                        (Some(x), Some(y)) => x.equals(&y),
                        _ => false,
                    })
            }
            (a, b) => matches!(numeric_cmp(a, b), Some(Ordering::Equal)),
        }
    }

    /// CEL ordering for `<`, `<=`, `>`, `>=`.
    pub fn compare(&self, other: &Value<'_>, op: &str) -> Result<Ordering, EvalError> {
        let ordering = match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::String(a), Value::String(b)) => Some((**a).cmp(&**b)),
            (Value::Bytes(a), Value::Bytes(b)) => Some(a.cmp(b)),
            (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
            (Value::Duration(a), Value::Duration(b)) => Some(a.cmp(b)),
            (a, b) if a.is_number() && b.is_number() => {
                // NaN compares false with everything: report it as an error
                // rather than pretend an order.
                return numeric_cmp(a, b).ok_or_else(|| EvalError::new("comparison with NaN"));
            }
            _ => None,
        };
        ordering.ok_or_else(|| EvalError::no_overload(op, self, other))
    }

    fn is_number(&self) -> bool {
        matches!(self, Value::Int(_) | Value::Uint(_) | Value::Double(_))
    }

    /// `self in container`.
    pub fn is_in(&self, container: &Value<'_>) -> Result<bool, EvalError> {
        match container {
            Value::List(list) => Ok(list.iter().any(|item| item.equals(self))),
            Value::Map(map) => Ok(map.get(self).is_some()),
            other => Err(EvalError::no_overload("in", self, other)),
        }
    }

    pub fn size(&self) -> Result<i64, EvalError> {
        Ok(match self {
            Value::String(s) => s.chars().count() as i64,
            Value::Bytes(b) => b.len() as i64,
            Value::List(l) => l.len() as i64,
            Value::Map(m) => m.len() as i64,
            other => {
                return Err(EvalError::new(format!("no such overload: size({})", other.type_name())));
            }
        })
    }
}

impl<'a> Value<'a> {
    pub fn optional(value: Option<Value<'a>>) -> Value<'a> {
        Value::Optional(value.map(Arc::new))
    }

    /// Whether a value is its type's zero (`optional.ofNonZeroValue`).
    pub fn is_zero(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Int(i) => *i == 0,
            Value::Uint(u) => *u == 0,
            Value::Double(d) => *d == 0.0,
            Value::String(s) => s.is_empty(),
            Value::Bytes(b) => b.is_empty(),
            Value::Timestamp(t) => t.timestamp() == 0 && t.timestamp_subsec_nanos() == 0,
            Value::Duration(d) => d.is_zero(),
            Value::List(l) => l.is_empty(),
            Value::Map(m) => m.is_empty(),
            Value::Type(_) => false,
            Value::Optional(o) => o.is_none(),
            Value::Ip(_) | Value::Cidr(..) => false,
        }
    }
}

/// `value.field`, or with `optional` `value.?field`. Selecting on an
/// optional value yields an optional (none stays none).
pub fn select<'a>(value: Value<'a>, field: &str, optional: bool) -> Result<Value<'a>, EvalError> {
    match value {
        Value::Map(map) => match (map.get_str(field), optional) {
            (Some(found), false) => Ok(found),
            (found, true) => Ok(Value::optional(found)),
            (None, false) => Err(EvalError::new(format!("no such key: '{field}'"))),
        },
        Value::Optional(None) => Ok(Value::Optional(None)),
        Value::Optional(Some(inner)) => select((*inner).clone(), field, true),
        other => Err(EvalError::new(format!("cannot select field '{field}' from {}", other.type_name()))),
    }
}

/// `container[key]`, or with `optional` `container[?key]`; indexing an
/// optional value yields an optional.
pub fn index<'a>(container: Value<'a>, key: Value<'a>, optional: bool) -> Result<Value<'a>, EvalError> {
    let found = match (&container, &key) {
        (Value::Optional(None), _) => return Ok(Value::Optional(None)),
        (Value::Optional(Some(inner)), _) => return index((**inner).clone(), key, true),
        (Value::List(list), Value::Int(_) | Value::Uint(_) | Value::Double(_)) => {
            let position = match key {
                Value::Int(i) => usize::try_from(i).ok(),
                Value::Uint(u) => usize::try_from(u).ok(),
                Value::Double(d) if d.fract() == 0.0 && d >= 0.0 => Some(d as usize),
                _ => None,
            };
            match position.and_then(|p| list.get(p)) {
                Some(item) => Some(item),
                None if optional => None,
                None => return Err(EvalError::new(format!("index out of range: {key:?}"))),
            }
        }
        (Value::Map(map), _) => match map.get(&key) {
            Some(value) => Some(value),
            None if optional => None,
            None => {
                return Err(match &key {
                    Value::String(s) => EvalError::new(format!("no such key: '{}'", &**s)),
                    other => EvalError::new(format!("no such key: {other:?}")),
                });
            }
        },
        _ => return Err(EvalError::no_overload("[]", &container, &key)),
    };
    Ok(if optional { Value::optional(found) } else { found.expect("present unless optional") })
}

fn numeric_cmp(a: &Value<'_>, b: &Value<'_>) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Uint(x), Value::Uint(y)) => Some(x.cmp(y)),
        (Value::Double(x), Value::Double(y)) => x.partial_cmp(y),
        (Value::Int(x), Value::Uint(y)) => Some(if *x < 0 { Ordering::Less } else { (*x as u64).cmp(y) }),
        (Value::Uint(x), Value::Int(y)) => Some(if *y < 0 { Ordering::Greater } else { x.cmp(&(*y as u64)) }),
        (Value::Int(x), Value::Double(y)) => (*x as f64).partial_cmp(y),
        (Value::Double(x), Value::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Value::Uint(x), Value::Double(y)) => (*x as f64).partial_cmp(y),
        (Value::Double(x), Value::Uint(y)) => x.partial_cmp(&(*y as f64)),
        _ => None,
    }
}

fn overflow() -> EvalError {
    EvalError::new("integer overflow")
}

/// CEL's timestamps run from 0001-01-01 to 9999-12-31: anything else is a
/// range error, never a value.
pub fn timestamp_in_range(t: DateTime<Utc>) -> Result<DateTime<Utc>, EvalError> {
    if (1..=9999).contains(&t.year()) { Ok(t) } else { Err(EvalError::new("timestamp out of range")) }
}

/// CEL's durations are whole int64 nanoseconds (about +-292 years, as in
/// cel-go): a result beyond that is a range error, never a wrapped value.
pub fn duration_in_range(d: TimeDelta) -> Result<TimeDelta, EvalError> {
    if d.num_nanoseconds().is_some() { Ok(d) } else { Err(EvalError::new("duration out of range")) }
}

fn timestamp_overflow() -> EvalError {
    EvalError::new("timestamp out of range")
}

fn duration_overflow() -> EvalError {
    EvalError::new("duration out of range")
}

pub fn add<'a>(a: Value<'a>, b: Value<'a>) -> Result<Value<'a>, EvalError> {
    Ok(match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(x.checked_add(*y).ok_or_else(overflow)?),
        (Value::Uint(x), Value::Uint(y)) => Value::Uint(x.checked_add(*y).ok_or_else(overflow)?),
        (Value::Double(x), Value::Double(y)) => Value::Double(x + y),
        (Value::String(x), Value::String(y)) => Value::string(format!("{}{}", &**x, &**y)),
        (Value::Bytes(x), Value::Bytes(y)) => Value::Bytes([&x[..], &y[..]].concat().into()),
        (Value::List(x), Value::List(y)) => Value::List(List::Owned(Arc::new(x.iter().chain(y.iter()).collect()))),
        (Value::Timestamp(t), Value::Duration(d)) | (Value::Duration(d), Value::Timestamp(t)) => {
            Value::Timestamp(timestamp_in_range(t.checked_add_signed(*d).ok_or_else(timestamp_overflow)?)?)
        }
        (Value::Duration(x), Value::Duration(y)) => {
            Value::Duration(duration_in_range(x.checked_add(y).ok_or_else(duration_overflow)?)?)
        }
        _ => return Err(EvalError::no_overload("+", &a, &b)),
    })
}

pub fn sub<'a>(a: Value<'a>, b: Value<'a>) -> Result<Value<'a>, EvalError> {
    Ok(match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(x.checked_sub(*y).ok_or_else(overflow)?),
        (Value::Uint(x), Value::Uint(y)) => Value::Uint(x.checked_sub(*y).ok_or_else(overflow)?),
        (Value::Double(x), Value::Double(y)) => Value::Double(x - y),
        (Value::Timestamp(x), Value::Timestamp(y)) => Value::Duration(duration_in_range(x.signed_duration_since(*y))?),
        (Value::Timestamp(t), Value::Duration(d)) => {
            Value::Timestamp(timestamp_in_range(t.checked_sub_signed(*d).ok_or_else(timestamp_overflow)?)?)
        }
        (Value::Duration(x), Value::Duration(y)) => {
            Value::Duration(duration_in_range(x.checked_sub(y).ok_or_else(duration_overflow)?)?)
        }
        _ => return Err(EvalError::no_overload("-", &a, &b)),
    })
}

pub fn mul<'a>(a: Value<'a>, b: Value<'a>) -> Result<Value<'a>, EvalError> {
    Ok(match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(x.checked_mul(*y).ok_or_else(overflow)?),
        (Value::Uint(x), Value::Uint(y)) => Value::Uint(x.checked_mul(*y).ok_or_else(overflow)?),
        (Value::Double(x), Value::Double(y)) => Value::Double(x * y),
        _ => return Err(EvalError::no_overload("*", &a, &b)),
    })
}

pub fn div<'a>(a: Value<'a>, b: Value<'a>) -> Result<Value<'a>, EvalError> {
    Ok(match (&a, &b) {
        (Value::Int(_), Value::Int(0)) | (Value::Uint(_), Value::Uint(0)) => {
            return Err(EvalError::new("division by zero"));
        }
        (Value::Int(x), Value::Int(y)) => Value::Int(x.checked_div(*y).ok_or_else(overflow)?),
        (Value::Uint(x), Value::Uint(y)) => Value::Uint(x / y),
        (Value::Double(x), Value::Double(y)) => Value::Double(x / y),
        _ => return Err(EvalError::no_overload("/", &a, &b)),
    })
}

pub fn rem<'a>(a: Value<'a>, b: Value<'a>) -> Result<Value<'a>, EvalError> {
    Ok(match (&a, &b) {
        (Value::Int(_), Value::Int(0)) | (Value::Uint(_), Value::Uint(0)) => {
            return Err(EvalError::new("modulus by zero"));
        }
        (Value::Int(x), Value::Int(y)) => Value::Int(x.checked_rem(*y).ok_or_else(overflow)?),
        (Value::Uint(x), Value::Uint(y)) => Value::Uint(x % y),
        _ => return Err(EvalError::no_overload("%", &a, &b)),
    })
}

/// A duration as CEL's `string()` writes it: seconds, with the fraction
/// only as long as it needs to be (`90s`, `1.5s`, `-0.000000001s`).
pub fn duration_string(d: TimeDelta) -> String {
    let nanos = d.num_nanoseconds().map_or(i128::from(d.num_seconds()) * 1_000_000_000, i128::from);
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    let (seconds, fraction) = (abs / 1_000_000_000, abs % 1_000_000_000);
    if fraction == 0 {
        format!("{sign}{seconds}s")
    } else {
        let digits = format!("{fraction:09}");
        format!("{sign}{seconds}.{}s", digits.trim_end_matches('0'))
    }
}

/// Parses a duration in CEL's (Go's) form: `1h30m`, `1.5s`, `-250ms`.
pub fn parse_duration(text: &str) -> Result<TimeDelta, EvalError> {
    let bad = || EvalError::new(format!("invalid duration {text:?}"));
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(TimeDelta::zero());
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_nanos: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        if number_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic() || *b == 0xc2 || *b == 0xb5).count();
        let unit_nanos: f64 = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_nanos += (number * unit_nanos).round() as i128;
    }
    // Whole int64 nanoseconds, as every other duration (`duration_in_range`).
    let nanos = i64::try_from(if negative { -total_nanos } else { total_nanos })
        .map_err(|_| EvalError::new(format!("duration {text:?} out of range")))?;
    Ok(TimeDelta::nanoseconds(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_across_kinds() {
        assert!(Value::Int(1).equals(&Value::Double(1.0)));
        assert!(Value::Uint(1).equals(&Value::Int(1)));
        assert!(!Value::Int(-1).equals(&Value::Uint(u64::MAX)));
        assert_eq!(Value::Int(-1).compare(&Value::Uint(0), "<").unwrap(), Ordering::Less);
        assert!(Value::Double(f64::NAN).compare(&Value::Int(1), "<").is_err());
        assert!(!Value::string("1").equals(&Value::Int(1)));
        assert!(Value::string("a").compare(&Value::Int(1), "<").is_err());
    }

    #[test]
    fn arithmetic_checks_overflow_and_types() {
        assert!(add(Value::Int(i64::MAX), Value::Int(1)).is_err());
        assert!(div(Value::Int(1), Value::Int(0)).is_err());
        assert!(add(Value::Int(1), Value::Double(1.0)).unwrap_err().0.contains("int + double"));
        assert!(sub(Value::Uint(1), Value::Uint(2)).is_err());
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("1h30m").unwrap(), TimeDelta::minutes(90));
        assert_eq!(parse_duration("-1.5s").unwrap(), TimeDelta::milliseconds(-1500));
        assert_eq!(parse_duration("250ms").unwrap(), TimeDelta::milliseconds(250));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("").is_err());
    }
}
