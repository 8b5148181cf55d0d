//! CEL's math and encoders extensions (as cel-go's `ext.Math` and
//! `ext.Encoders` ship them): `math.greatest`, `math.least`, `math.ceil`,
//! `floor`, `round`, `trunc`, `abs`, `sign`, `isNaN`, `isInf`, `isFinite`,
//! `sqrt`, the bit operations, and `base64.encode` / `base64.decode`.

use std::cmp::Ordering;

use base64::Engine;

use super::types::Ty;
use super::value::{EvalError, Value};

/// The namespaces whose functions these are.
pub const NAMESPACES: &[&str] = &["math", "base64"];

/// The result type of `namespace.function(args)` for these argument
/// types, or `None` when there is no such overload.
pub fn signature(namespace: &str, function: &str, args: &[Ty]) -> Option<Ty> {
    let number = |ty: &Ty| matches!(ty, Ty::Int | Ty::Uint | Ty::Double | Ty::Dyn);
    let integer = |ty: &Ty| matches!(ty, Ty::Int | Ty::Uint | Ty::Dyn);
    let double = |ty: &Ty| matches!(ty, Ty::Double | Ty::Dyn);
    let same_as_first = || args[0].clone();
    Some(match (namespace, function, args) {
        ("math", "greatest" | "least", [Ty::List(item)]) if number(item) => (**item).clone(),
        ("math", "greatest" | "least", [Ty::Dyn]) => Ty::Dyn,
        ("math", "greatest" | "least", [first, rest @ ..]) if args.iter().all(number) => {
            if rest.iter().all(|ty| ty == first) { first.clone() } else { Ty::Dyn }
        }
        ("math", "ceil" | "floor" | "round" | "trunc", [x]) if double(x) => Ty::Double,
        ("math", "abs" | "sign", [x]) if number(x) => same_as_first(),
        ("math", "isNaN" | "isInf" | "isFinite", [x]) if double(x) => Ty::Bool,
        ("math", "sqrt", [x]) if number(x) => Ty::Double,
        ("math", "bitAnd" | "bitOr" | "bitXor", [a, b]) if integer(a) && (a == b || b.is_dyn() || a.is_dyn()) => {
            same_as_first()
        }
        ("math", "bitNot", [x]) if integer(x) => same_as_first(),
        ("math", "bitShiftLeft" | "bitShiftRight", [x, by]) if integer(x) && matches!(by, Ty::Int | Ty::Dyn) => {
            same_as_first()
        }
        ("base64", "encode", [Ty::Bytes | Ty::Dyn]) => Ty::String,
        ("base64", "decode", [Ty::String | Ty::Dyn]) => Ty::Bytes,
        _ => return None,
    })
}

fn no_overload(function: &str, value: &Value<'_>) -> EvalError {
    EvalError::new(format!("no such overload: math.{function}({})", value.type_name()))
}

fn double(function: &str, value: &Value<'_>) -> Result<f64, EvalError> {
    match value {
        Value::Double(d) => Ok(*d),
        other => Err(no_overload(function, other)),
    }
}

/// Runs `namespace.function(args)`, with types checked at load.
pub fn call<'a>(namespace: &str, function: &str, args: Vec<Value<'a>>) -> Result<Value<'a>, EvalError> {
    if namespace == "base64" {
        return match (function, args.first()) {
            ("encode", Some(Value::Bytes(bytes))) => {
                Ok(Value::string(base64::engine::general_purpose::STANDARD.encode(bytes)))
            }
            ("decode", Some(Value::String(text))) => {
                // Padding is optional, as in cel-go.
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.as_bytes()))
                    .map_err(|e| EvalError::new(format!("base64.decode: {e}")))?;
                Ok(Value::Bytes(decoded.into()))
            }
            (_, Some(other)) => {
                Err(EvalError::new(format!("no such overload: base64.{function}({})", other.type_name())))
            }
            (_, None) => Err(EvalError::new(format!("base64.{function} takes one argument"))),
        };
    }
    let first = args.first().cloned().unwrap_or(Value::Null);
    Ok(match function {
        "greatest" | "least" => {
            let candidates: Vec<Value<'a>> = match &first {
                Value::List(list) if args.len() == 1 => list.iter().collect(),
                _ => args,
            };
            let want = if function == "greatest" { Ordering::Greater } else { Ordering::Less };
            let mut best: Option<Value<'a>> = None;
            for candidate in candidates {
                if !matches!(candidate, Value::Int(_) | Value::Uint(_) | Value::Double(_)) {
                    return Err(no_overload(function, &candidate));
                }
                best = Some(match best {
                    Some(current) if candidate.compare(&current, function)? != want => current,
                    _ => candidate,
                });
            }
            best.ok_or_else(|| EvalError::new(format!("math.{function}() of an empty list")))?
        }
        "ceil" => Value::Double(double(function, &first)?.ceil()),
        "floor" => Value::Double(double(function, &first)?.floor()),
        "round" => Value::Double(double(function, &first)?.round()),
        "trunc" => Value::Double(double(function, &first)?.trunc()),
        "isNaN" => Value::Bool(double(function, &first)?.is_nan()),
        "isInf" => Value::Bool(double(function, &first)?.is_infinite()),
        "isFinite" => Value::Bool(double(function, &first)?.is_finite()),
        "abs" => match first {
            Value::Int(i) => Value::Int(i.checked_abs().ok_or_else(|| EvalError::new("math.abs: integer overflow"))?),
            Value::Uint(u) => Value::Uint(u),
            Value::Double(d) => Value::Double(d.abs()),
            other => return Err(no_overload(function, &other)),
        },
        "sign" => match first {
            Value::Int(i) => Value::Int(i.signum()),
            Value::Uint(u) => Value::Uint(u.min(1)),
            Value::Double(d) if d.is_nan() || d == 0.0 => Value::Double(d),
            Value::Double(d) => Value::Double(d.signum()),
            other => return Err(no_overload(function, &other)),
        },
        "sqrt" => match first {
            Value::Int(i) => Value::Double((i as f64).sqrt()),
            Value::Uint(u) => Value::Double((u as f64).sqrt()),
            Value::Double(d) => Value::Double(d.sqrt()),
            other => return Err(no_overload(function, &other)),
        },
        "bitNot" => match first {
            Value::Int(i) => Value::Int(!i),
            Value::Uint(u) => Value::Uint(!u),
            other => return Err(no_overload(function, &other)),
        },
        "bitAnd" | "bitOr" | "bitXor" => {
            let op = |a: u64, b: u64| match function {
                "bitAnd" => a & b,
                "bitOr" => a | b,
                _ => a ^ b,
            };
            match (&first, args.get(1)) {
                (Value::Int(a), Some(Value::Int(b))) => Value::Int(op(*a as u64, *b as u64) as i64),
                (Value::Uint(a), Some(Value::Uint(b))) => Value::Uint(op(*a, *b)),
                (other, _) => return Err(no_overload(function, other)),
            }
        }
        "bitShiftLeft" | "bitShiftRight" => {
            let by = match args.get(1) {
                Some(Value::Int(by)) if *by >= 0 => *by,
                Some(Value::Int(_)) => return Err(EvalError::new(format!("math.{function}: negative shift"))),
                _ => return Err(no_overload(function, &first)),
            };
            let left = function == "bitShiftLeft";
            // Shifts of 64 or more bits give 0, as in cel-go.
            let shift = |v: u64| {
                if by >= 64 {
                    0
                } else if left {
                    v << by
                } else {
                    v >> by
                }
            };
            match first {
                Value::Int(i) if left => Value::Int(shift(i as u64) as i64),
                // Right shifts of ints are logical, as in cel-go.
                Value::Int(i) => Value::Int(shift(i as u64) as i64),
                Value::Uint(u) => Value::Uint(shift(u)),
                other => return Err(no_overload(function, &other)),
            }
        }
        other => return Err(EvalError::new(format!("no function math.{other}"))),
    })
}
