//! What may be recorded: the bounds on every field an agent controls, in
//! one place, so that a request the policy engine accepts always becomes
//! an event the audit service stores and every reader (the services,
//! `wardenctl`, the Python client) decodes.
//!
//! Each bound leaves room for what wraps the value downstream: a decision's
//! params travel inside the decision's audit event, inside a journal
//! record, inside an `Append` batch, inside a `Query` page. Protobuf
//! decoders (prost's, Python's) stop at 100 nested messages and every
//! nesting level of a `google.protobuf.Struct` costs three (the struct,
//! its map entry, the value), so values may nest [`bounds::VALUE_DEPTH`]
//! levels and the envelopes have the rest. Numbers must be finite (JSON,
//! the audit log's canonical form, has no NaN or Infinity), timestamps lie
//! in the years 1 to 9999 (CEL's range, and the database's).
//!
//! The checks add violations to a [`Validator`], naming the field (and the
//! path inside a value: `action.params.items[2]`), so the caller answers one
//! `INVALID_ARGUMENT` for everything wrong.

use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Timestamp, Value};
use warden_errors::Validator;

/// The bounds. Sizes are of the encoded protobuf.
pub mod bounds {
    /// Ids, names, correlation ids, event types.
    pub const ID_BYTES: usize = 256;
    pub const NAME_BYTES: usize = 256;
    pub const ROLES: usize = 64;
    pub const ROLE_BYTES: usize = 128;
    pub const LABELS: usize = 64;
    pub const LABEL_KEY_BYTES: usize = 128;
    pub const LABEL_VALUE_BYTES: usize = 1024;
    pub const RESOURCE_BYTES: usize = 1024;
    /// An action's params.
    pub const PARAMS_BYTES: usize = 64 * 1024;
    /// The deepest nesting of lists and structs inside a value (params, a
    /// payload): `{"a": 1}` is one level, `{"a": [1]}` two.
    pub const VALUE_DEPTH: usize = 16;
    /// The deepest an event's payload may nest: a value at
    /// [`VALUE_DEPTH`] inside the two levels that carry it (a decision's
    /// `params`, an approval's `action.params`).
    pub const PAYLOAD_DEPTH: usize = VALUE_DEPTH + 2;
    /// An event's payload or sensitive part. A decision's payload holds the
    /// request (params, labels, roles: at most about 150 KiB) and the
    /// reasons recorded for it (see [`RECORDED_REASONS`]).
    pub const STRUCT_BYTES: usize = 256 * 1024;
    /// The most reasons (and rules) a decision's event records; the rest
    /// are counted, not listed. Each reason is at most [`REASON_BYTES`].
    pub const RECORDED_REASONS: usize = 64;
    pub const REASON_BYTES: usize = 1024;
    /// The largest gRPC message every service accepts, and that senders
    /// size their batches below.
    pub const MESSAGE_BYTES: usize = 16 * 1024 * 1024;
    /// The largest batch a sender puts in one message: a quarter of the
    /// limit, so that envelopes and a few oversized events never reach it.
    pub const BATCH_BYTES: usize = MESSAGE_BYTES / 4;
    /// The most a page of query results holds: below the 4 MiB that gRPC
    /// clients accept by default (Python's, tonic's), whatever the page size.
    pub const PAGE_BYTES: usize = 2 * 1024 * 1024;
    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in Unix seconds.
    pub const MIN_SECONDS: i64 = -62_135_596_800;
    pub const MAX_SECONDS: i64 = 253_402_300_799;
}

/// Checks params: [`check_struct`] with the bounds of params.
pub fn check_params(v: &mut Validator, field: &str, value: &Struct) -> bool {
    check_struct(v, field, value, bounds::PARAMS_BYTES, bounds::VALUE_DEPTH)
}

/// Checks an event's payload or sensitive part: [`check_struct`] with the
/// bounds of a payload.
pub fn check_payload(v: &mut Validator, field: &str, value: &Struct) -> bool {
    check_struct(v, field, value, bounds::STRUCT_BYTES, bounds::PAYLOAD_DEPTH)
}

/// Checks a struct: its encoded size, that it nests at most `max_depth`
/// levels of lists and structs (itself the first), and that every number
/// in it is finite. Returns whether it passed.
pub fn check_struct(v: &mut Validator, field: &str, value: &Struct, max_bytes: usize, max_depth: usize) -> bool {
    let size = value.encoded_len();
    if size > max_bytes {
        v.violation(field, format!("must be at most {max_bytes} bytes encoded, got {size}"));
        return false;
    }
    match walk_struct(value, 1, max_depth) {
        Ok(()) => true,
        Err(Problem::TooDeep) => {
            v.violation(field, format!("nests deeper than {max_depth} levels of lists and structs"));
            false
        }
        Err(Problem::NotFinite(path, number)) => {
            v.violation(format!("{field}{path}"), format!("must be a finite number, got {number}"));
            false
        }
    }
}

/// Checks a timestamp: a valid one in the years 1 to 9999. Returns it in
/// microseconds since the Unix epoch when it passed.
pub fn check_timestamp(v: &mut Validator, field: &str, time: &Timestamp) -> Option<i64> {
    let micros = (bounds::MIN_SECONDS..=bounds::MAX_SECONDS)
        .contains(&time.seconds)
        .then_some(())
        .filter(|_| (0..1_000_000_000).contains(&time.nanos))
        .map(|_| time.seconds * 1_000_000 + i64::from(time.nanos / 1000));
    if micros.is_none() {
        v.violation(field, "must be a valid timestamp in the years 1 to 9999");
    }
    micros
}

/// The depth of a value: 0 for a scalar, one more than its deepest member
/// for a list or struct.
pub fn depth(value: &Value) -> usize {
    match &value.kind {
        Some(Kind::StructValue(s)) => 1 + s.fields.values().map(depth).max().unwrap_or(0),
        Some(Kind::ListValue(l)) => 1 + l.values.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

enum Problem {
    TooDeep,
    /// The path (`.items[2]`) and the number.
    NotFinite(String, f64),
}

fn walk_struct(value: &Struct, level: usize, max: usize) -> Result<(), Problem> {
    if level > max {
        return Err(Problem::TooDeep);
    }
    for (key, item) in &value.fields {
        walk(item, level, max).map_err(|problem| match problem {
            Problem::NotFinite(path, n) => Problem::NotFinite(format!(".{key}{path}"), n),
            other => other,
        })?;
    }
    Ok(())
}

/// `value` sits inside a container at `level`.
fn walk(value: &Value, level: usize, max: usize) -> Result<(), Problem> {
    match &value.kind {
        Some(Kind::NumberValue(n)) if !n.is_finite() => Err(Problem::NotFinite(String::new(), *n)),
        Some(Kind::StructValue(s)) => walk_struct(s, level + 1, max),
        Some(Kind::ListValue(l)) => {
            if level + 1 > max {
                return Err(Problem::TooDeep);
            }
            for (i, item) in l.values.iter().enumerate() {
                walk(item, level + 1, max).map_err(|problem| match problem {
                    Problem::NotFinite(path, n) => Problem::NotFinite(format!("[{i}]{path}"), n),
                    other => other,
                })?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: f64) -> Value {
        Value { kind: Some(Kind::NumberValue(n)) }
    }

    fn object(key: &str, value: Value) -> Struct {
        Struct { fields: [(key.to_string(), value)].into() }
    }

    /// A struct nested `levels` deep, with `leaf` at the bottom.
    fn nested(levels: usize, leaf: Value) -> Struct {
        let mut value = object("x", leaf);
        for _ in 1..levels {
            value = object("x", Value { kind: Some(Kind::StructValue(value)) });
        }
        value
    }

    fn violations(check: impl FnOnce(&mut Validator)) -> Vec<(String, String)> {
        let mut v = Validator::new();
        check(&mut v);
        match v.finish() {
            Ok(()) => Vec::new(),
            Err(e) => e.violations.into_iter().map(|v| (v.field, v.description)).collect(),
        }
    }

    #[test]
    fn numbers_must_be_finite_and_the_path_is_named() {
        let list = Value {
            kind: Some(Kind::ListValue(prost_types::ListValue {
                values: vec![number(1.0), number(f64::NEG_INFINITY)],
            })),
        };
        let params = Struct { fields: [("amount".to_string(), number(5.0)), ("items".to_string(), list)].into() };
        let found = violations(|v| {
            check_params(v, "action.params", &params);
        });
        assert_eq!(found, [("action.params.items[1]".to_string(), "must be a finite number, got -inf".to_string())]);
        for bad in [f64::NAN, f64::INFINITY] {
            let found = violations(|v| {
                check_payload(v, "payload", &object("n", number(bad)));
            });
            assert_eq!(found[0].0, "payload.n");
        }
    }

    #[test]
    fn depth_is_bounded_at_exactly_the_limit() {
        let at = nested(bounds::VALUE_DEPTH, number(1.0));
        assert_eq!(depth(&Value { kind: Some(Kind::StructValue(at.clone())) }), bounds::VALUE_DEPTH);
        assert!(
            violations(|v| {
                check_params(v, "p", &at);
            })
            .is_empty()
        );
        let over = nested(bounds::VALUE_DEPTH + 1, number(1.0));
        let found = violations(|v| {
            check_params(v, "p", &over);
        });
        assert_eq!(found[0].0, "p");
        // A list at the bottom counts as a level too.
        let list = Value { kind: Some(Kind::ListValue(prost_types::ListValue { values: vec![number(1.0)] })) };
        assert!(
            !violations(|v| {
                check_params(v, "p", &nested(bounds::VALUE_DEPTH, list));
            })
            .is_empty()
        );
        // The deepest params fit in a payload, two levels down.
        let carried = object(
            "action",
            Value { kind: Some(Kind::StructValue(object("params", Value { kind: Some(Kind::StructValue(at)) }))) },
        );
        assert!(
            violations(|v| {
                check_payload(v, "payload", &carried);
            })
            .is_empty()
        );
    }

    #[test]
    fn a_value_at_the_limits_survives_every_envelope_prost_decodes() {
        // The deepest params, inside a struct inside a struct (a decision
        // event's payload), inside a message inside a message (a batch):
        // prost's recursion limit of 100 is not reached.
        let deepest = Value { kind: Some(Kind::StructValue(nested(bounds::VALUE_DEPTH, number(1.0)))) };
        let mut envelope = object("params", deepest);
        for _ in 0..6 {
            envelope = object("e", Value { kind: Some(Kind::StructValue(envelope)) });
        }
        let bytes = envelope.encode_to_vec();
        assert_eq!(Struct::decode(bytes.as_slice()).unwrap(), envelope);
    }

    #[test]
    fn sizes_and_times_are_bounded() {
        let big = object("s", Value { kind: Some(Kind::StringValue("x".repeat(100))) });
        let found = violations(|v| {
            check_struct(v, "action.params", &big, 50, bounds::VALUE_DEPTH);
        });
        assert!(found[0].1.starts_with("must be at most 50 bytes encoded"), "{found:?}");
        let mut v = Validator::new();
        assert_eq!(check_timestamp(&mut v, "time", &Timestamp { seconds: 0, nanos: 5000 }), Some(5));
        assert!(check_timestamp(&mut v, "time", &Timestamp { seconds: bounds::MAX_SECONDS, nanos: 0 }).is_some());
        assert!(v.is_empty());
        for bad in [
            Timestamp { seconds: bounds::MAX_SECONDS + 1, nanos: 0 },
            Timestamp { seconds: bounds::MIN_SECONDS - 1, nanos: 0 },
            Timestamp { seconds: 0, nanos: -1 },
            Timestamp { seconds: 1_515_683_040_000, nanos: 0 },
        ] {
            let mut v = Validator::new();
            assert_eq!(check_timestamp(&mut v, "time", &bad), None);
            assert!(!v.is_empty());
        }
    }
}
