//! CEL's lists and sets extensions (as cel-go's `ext.Lists` and `ext.Sets`
//! ship them): `slice`, `flatten`, `sort`, `sortBy`, `distinct`, `first`,
//! `last` on lists,
//! `lists.range(n)`, and `sets.contains`, `sets.equivalent`,
//! `sets.intersects`.

use std::cmp::Ordering;
use std::sync::Arc;

use super::types::Ty;
use super::value::{EvalError, List, Value};

/// The namespaces whose functions these are.
pub const NAMESPACES: &[&str] = &["lists", "sets"];

/// The longest list `lists.range` may build.
pub const MAX_RANGE: i64 = 100_000;

fn is_list(ty: &Ty) -> bool {
    matches!(ty, Ty::List(_) | Ty::Dyn)
}

/// The result type of `receiver.function(args)` on a list.
pub fn method_signature(function: &str, receiver: &Ty, args: &[Ty]) -> Option<Ty> {
    if !is_list(receiver) {
        return None;
    }
    let int = |ty: &Ty| matches!(ty, Ty::Int | Ty::Dyn);
    Some(match (function, args) {
        ("slice", [from, to]) if int(from) && int(to) => receiver.clone(),
        ("flatten", []) => Ty::List(Box::new(Ty::Dyn)),
        ("flatten", [depth]) if int(depth) => Ty::List(Box::new(Ty::Dyn)),
        ("sort" | "distinct", []) => receiver.clone(),
        ("first" | "last", []) => Ty::Optional(Box::new(match receiver {
            Ty::List(item) => (**item).clone(),
            _ => Ty::Dyn,
        })),
        _ => return None,
    })
}

/// The result type of `namespace.function(args)`.
pub fn signature(namespace: &str, function: &str, args: &[Ty]) -> Option<Ty> {
    Some(match (namespace, function, args) {
        ("lists", "range", [Ty::Int | Ty::Dyn]) => Ty::List(Box::new(Ty::Int)),
        ("sets", "contains" | "equivalent" | "intersects", [a, b]) if is_list(a) && is_list(b) => Ty::Bool,
        _ => return None,
    })
}

fn items<'a>(value: &Value<'a>, function: &str) -> Result<Vec<Value<'a>>, EvalError> {
    match value {
        Value::List(list) => Ok(list.iter().collect()),
        other => Err(EvalError::new(format!("{function} needs a list, not {}", other.type_name()))),
    }
}

fn list<'a>(items: Vec<Value<'a>>) -> Value<'a> {
    Value::List(List::Owned(Arc::new(items)))
}

fn int(value: Option<&Value<'_>>, function: &str) -> Result<i64, EvalError> {
    match value {
        Some(Value::Int(i)) => Ok(*i),
        Some(other) => Err(EvalError::new(format!("{function} needs an int, not {}", other.type_name()))),
        None => Err(EvalError::new(format!("{function} needs an int"))),
    }
}

fn contains_all(haystack: &[Value<'_>], needles: &[Value<'_>]) -> bool {
    needles.iter().all(|needle| haystack.iter().any(|item| item.equals(needle)))
}

fn flatten_into<'a>(items: Vec<Value<'a>>, depth: i64, out: &mut Vec<Value<'a>>) {
    for item in items {
        match item {
            Value::List(inner) if depth > 0 => flatten_into(inner.iter().collect(), depth - 1, out),
            other => out.push(other),
        }
    }
}

/// Runs `receiver.function(args)` on a list.
pub fn method<'a>(function: &str, receiver: Value<'a>, args: &[Value<'a>]) -> Result<Value<'a>, EvalError> {
    let all = items(&receiver, function)?;
    Ok(match function {
        "slice" => {
            let (from, to) = (int(args.first(), function)?, int(args.get(1), function)?);
            if from < 0 || to < from || to as usize > all.len() {
                return Err(EvalError::new(format!("slice({from}, {to}) out of range for a list of {}", all.len())));
            }
            list(all[from as usize..to as usize].to_vec())
        }
        "flatten" => {
            let depth = if args.is_empty() { 1 } else { int(args.first(), function)? };
            if depth < 0 {
                return Err(EvalError::new("flatten depth must not be negative"));
            }
            let mut out = Vec::new();
            flatten_into(all, depth, &mut out);
            list(out)
        }
        "sort" => {
            let order = sort_order(&all)?;
            list(order.into_iter().map(|i| all[i].clone()).collect())
        }
        "first" => Value::optional(all.first().cloned()),
        "last" => Value::optional(all.last().cloned()),
        "distinct" => {
            let mut kept: Vec<Value<'a>> = Vec::new();
            for item in all {
                if !kept.iter().any(|k| k.equals(&item)) {
                    kept.push(item);
                }
            }
            list(kept)
        }
        other => return Err(EvalError::new(format!("no list function '{other}'"))),
    })
}

/// The positions of `keys` in ascending order, stable. The keys must all
/// be of one ordered type (and no NaN), so the order is total: a list that
/// mixes types is an error rather than an arbitrary order.
pub fn sort_order(keys: &[Value<'_>]) -> Result<Vec<usize>, EvalError> {
    if let Some(first) = keys.first() {
        for key in keys {
            let comparable = matches!(
                key,
                Value::Int(_)
                    | Value::Uint(_)
                    | Value::String(_)
                    | Value::Bool(_)
                    | Value::Bytes(_)
                    | Value::Timestamp(_)
                    | Value::Duration(_)
            ) || matches!(key, Value::Double(d) if !d.is_nan());
            if !comparable || std::mem::discriminant(key) != std::mem::discriminant(first) {
                return Err(EvalError::new(format!(
                    "sort needs values of one ordered type, found {} and {}",
                    first.type_name(),
                    key.type_name()
                )));
            }
        }
    }
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].compare(&keys[b], "sort").unwrap_or(Ordering::Equal));
    Ok(order)
}

/// Runs `namespace.function(args)`.
pub fn call<'a>(namespace: &str, function: &str, args: Vec<Value<'a>>) -> Result<Value<'a>, EvalError> {
    if namespace == "lists" {
        let n = int(args.first(), "lists.range")?;
        if !(0..=MAX_RANGE).contains(&n) {
            return Err(EvalError::new(format!("lists.range({n}) out of range (0 to {MAX_RANGE})")));
        }
        return Ok(list((0..n).map(Value::Int).collect()));
    }
    let (a, b) = match args.as_slice() {
        [a, b] => (items(a, function)?, items(b, function)?),
        _ => return Err(EvalError::new(format!("sets.{function} takes two lists"))),
    };
    Ok(Value::Bool(match function {
        "contains" => contains_all(&a, &b),
        "equivalent" => contains_all(&a, &b) && contains_all(&b, &a),
        _ => a.iter().any(|x| b.iter().any(|y| x.equals(y))),
    }))
}
