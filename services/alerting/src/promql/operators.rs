//! Aggregations and binary operators: grouping labels, `topk`/`bottomk`/
//! `quantile` parameters, arithmetic and comparison, and vector matching
//! with `on`/`ignoring`/`group_left`/`group_right`.

use super::*;

/// The labels an aggregation groups by.
pub(super) fn group_labels(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        Some(LabelModifier::Include(keep)) => {
            labels.iter().filter(|(k, _)| keep.labels.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        Some(LabelModifier::Exclude(drop)) => labels
            .iter()
            .filter(|(k, _)| !drop.labels.contains(k) && k.as_str() != NAME)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => Labels::new(),
    }
}

/// The `k` of `topk` / `bottomk`: `None` below 1 (an empty result), an
/// error for NaN or past 64 bits.
pub(super) fn k_parameter(op: &str, param: Option<&Value>) -> Result<Option<usize>, String> {
    let Some(Value::Scalar(k)) = param else { return Err(format!("{op} needs a scalar parameter")) };
    if *k < 1.0 {
        return Ok(None);
    }
    if k.is_nan() {
        return Err("Parameter value is NaN".into());
    }
    if *k >= i64::MAX as f64 {
        return Err(format!("Scalar value {k} overflows int64"));
    }
    Ok(Some(*k as usize))
}

pub(super) fn aggregate_vector(
    op: &str,
    param: Option<Value>,
    modifier: Option<&LabelModifier>,
    samples: Vec<Sample>,
) -> Result<Vec<Sample>, String> {
    if op == "count_values" {
        let Some(Value::String(label)) = param else { return Err("count_values needs a string parameter".into()) };
        check_label_name("count_values", &label)?;
        let mut counts: BTreeMap<Labels, f64> = BTreeMap::new();
        for sample in samples {
            let mut labels = sample.labels;
            labels.insert(label.clone(), format_value(sample.value));
            let mut group = match modifier {
                Some(LabelModifier::Exclude(drop)) => group_labels(
                    &labels,
                    Some(&LabelModifier::Exclude(promql_parser::label::Labels::new(
                        drop.labels.iter().filter(|l| **l != label).map(String::as_str).collect(),
                    ))),
                ),
                _ => group_labels(&labels, modifier),
            };
            group.insert(label.clone(), labels[&label].clone());
            *counts.entry(group).or_default() += 1.0;
        }
        return Ok(counts.into_iter().map(|(labels, value)| Sample { labels, value }).collect());
    }
    let k = match op {
        "topk" | "bottomk" => match k_parameter(op, param.as_ref())? {
            Some(k) => k,
            None => return Ok(Vec::new()),
        },
        _ => 0,
    };
    let q = match (op, &param) {
        ("quantile", Some(Value::Scalar(q))) => *q,
        ("quantile", _) => return Err("quantile needs a scalar parameter".into()),
        _ => f64::NAN,
    };
    // Groups in the order they first appear.
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: HashMap<Labels, Vec<Sample>> = HashMap::new();
    for sample in samples {
        let key = group_labels(&sample.labels, modifier);
        let members = groups.entry(key.clone()).or_default();
        if members.is_empty() {
            order.push(key);
        }
        members.push(sample);
    }
    let mut out = Vec::new();
    for labels in order {
        let members = groups.remove(&labels).expect("listed");
        let values: Vec<f64> = members.iter().map(|s| s.value).collect();
        let first = values[0];
        let value = match op {
            "sum" => {
                let (sum, c) = values[1..].iter().fold((first, 0.0), |(s, c), &v| kahan_inc(v, s, c));
                sum + c
            }
            "avg" => mean(&values),
            "min" => values.iter().fold(first, |m, &v| if m > v || m.is_nan() { v } else { m }),
            "max" => values.iter().fold(first, |m, &v| if m < v || m.is_nan() { v } else { m }),
            "count" => values.len() as f64,
            "group" => 1.0,
            "stddev" | "stdvar" => {
                // Welford's method; a NaN or infinite first value gives NaN.
                let (mut mean, mut sum) = (first, if first.is_finite() { 0.0 } else { f64::NAN });
                for (i, &v) in values.iter().enumerate().skip(1) {
                    let delta = v - mean;
                    mean += delta / (i + 1) as f64;
                    sum += delta * (v - mean);
                }
                let variance = sum / values.len() as f64;
                if op == "stddev" { variance.sqrt() } else { variance }
            }
            "quantile" => quantile(q, values),
            "topk" | "bottomk" => {
                // The best k, best first; NaN is never better than a number.
                let mut members = members;
                members.sort_by(|a, b| match (a.value.is_nan(), b.value.is_nan()) {
                    (false, false) if op == "topk" => b.value.total_cmp(&a.value),
                    (false, false) => a.value.total_cmp(&b.value),
                    (nan_a, nan_b) => nan_a.cmp(&nan_b),
                });
                out.extend(members.into_iter().take(k));
                continue;
            }
            other => return Err(format!("aggregation {other} is not supported")),
        };
        out.push(Sample { labels, value });
    }
    Ok(out)
}

/// A value as `count_values` labels it (Go's `FormatFloat(v, 'f', -1)`).
pub(super) fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{value}")
    }
}

pub(super) fn arithmetic(op: &str, a: f64, b: f64) -> Option<f64> {
    Some(match op {
        "+" => a + b,
        "-" => a - b,
        "*" => a * b,
        "/" => a / b,
        "%" => a % b,
        "^" => a.powf(b),
        "atan2" => a.atan2(b),
        _ => return None,
    })
}

pub(super) fn compare(op: &str, a: f64, b: f64) -> Option<bool> {
    Some(match op {
        "==" => a == b,
        "!=" => a != b,
        ">" => a > b,
        "<" => a < b,
        ">=" => a >= b,
        "<=" => a <= b,
        _ => return None,
    })
}

/// The part of the labels vectors are matched on.
pub(super) fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(on)) => {
            labels.iter().filter(|(k, _)| on.labels.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        Some(LabelModifier::Exclude(ignoring)) => labels
            .iter()
            .filter(|(k, _)| !ignoring.labels.contains(k) && k.as_str() != NAME)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => without_name(labels.clone()),
    }
}

pub(super) fn binary_op(
    op: &str,
    lhs: Value,
    rhs: Value,
    modifier: Option<&promql_parser::parser::BinModifier>,
    return_bool: bool,
) -> Result<Value, String> {
    let is_comparison = compare(op, 0.0, 0.0).is_some();
    // The result's value and whether the metric name goes; `None` drops
    // the sample (a comparison that does not hold, without `bool`).
    let apply = |a: f64, b: f64| -> Option<(f64, bool)> {
        if let Some(v) = arithmetic(op, a, b) {
            return Some((v, true));
        }
        let holds = compare(op, a, b)?;
        if return_bool { Some((if holds { 1.0 } else { 0.0 }, true)) } else { holds.then_some((a, false)) }
    };
    match (lhs, rhs) {
        (Value::Scalar(a), Value::Scalar(b)) => {
            if let Some(v) = arithmetic(op, a, b) {
                return Ok(Value::Scalar(v));
            }
            let holds = compare(op, a, b).ok_or_else(|| format!("operator {op} needs vectors"))?;
            Ok(Value::Scalar(if holds { 1.0 } else { 0.0 }))
        }
        (Value::Vector(samples), Value::Scalar(b)) => Ok(Value::Vector(
            samples
                .into_iter()
                .filter_map(|s| {
                    let (value, drop_name) = apply(s.value, b)?;
                    Some(Sample { labels: if drop_name { without_name(s.labels) } else { s.labels }, value })
                })
                .collect(),
        )),
        (Value::Scalar(a), Value::Vector(samples)) => Ok(Value::Vector(
            samples
                .into_iter()
                .filter_map(|s| {
                    let (value, drop_name) = apply(a, s.value)?;
                    // A comparison filter keeps the vector's own value.
                    let value = if is_comparison && !return_bool { s.value } else { value };
                    Some(Sample { labels: if drop_name { without_name(s.labels) } else { s.labels }, value })
                })
                .collect(),
        )),
        (Value::Vector(left), Value::Vector(right)) => {
            let matching = modifier.and_then(|m| m.matching.as_ref());
            match op {
                "and" | "unless" => {
                    let keys: std::collections::HashSet<Labels> =
                        right.iter().map(|s| signature(&s.labels, matching)).collect();
                    let keep_if = op == "and";
                    Ok(Value::Vector(
                        left.into_iter()
                            .filter(|s| keys.contains(&signature(&s.labels, matching)) == keep_if)
                            .collect(),
                    ))
                }
                "or" => {
                    let keys: std::collections::HashSet<Labels> =
                        left.iter().map(|s| signature(&s.labels, matching)).collect();
                    let mut out = left;
                    out.extend(right.into_iter().filter(|s| !keys.contains(&signature(&s.labels, matching))));
                    Ok(Value::Vector(out))
                }
                _ => vector_match(op, left, right, modifier, &apply),
            }
        }
        _ => Err(format!("operator {op} cannot combine these operand types")),
    }
}

pub(super) fn vector_match(
    op: &str,
    left: Vec<Sample>,
    right: Vec<Sample>,
    modifier: Option<&promql_parser::parser::BinModifier>,
    apply: &dyn Fn(f64, f64) -> Option<(f64, bool)>,
) -> Result<Value, String> {
    let matching = modifier.and_then(|m| m.matching.as_ref());
    let card = modifier.map(|m| m.card.clone()).unwrap_or(VectorMatchCardinality::OneToOne);
    // `group_right` is `group_left` with the sides swapped.
    let (many, one, swapped, include) = match &card {
        VectorMatchCardinality::OneToMany(include) => (right, left, true, include.labels.clone()),
        VectorMatchCardinality::ManyToOne(include) => (left, right, false, include.labels.clone()),
        _ => (left, right, false, Vec::new()),
    };
    let mut by_signature: HashMap<Labels, &Sample> = HashMap::new();
    for sample in &one {
        if by_signature.insert(signature(&sample.labels, matching), sample).is_some() {
            return Err(format!(
                "many-to-many matching not allowed: found duplicate series for the match group on the {} side of {op}",
                if swapped { "left" } else { "right" }
            ));
        }
    }
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    // Per match group: one-to-one, whether it matched; many-to-one, the
    // result labels it gave.
    let mut matched: HashMap<Labels, std::collections::HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for sample in many {
        let key = signature(&sample.labels, matching);
        let Some(other) = by_signature.get(&key) else { continue };
        // A second match of a one-to-one group is an error even when a
        // comparison would filter one of them out (as in Prometheus).
        let results = matched.entry(key).or_default();
        if one_to_one && !results.is_empty() {
            return Err(format!(
                "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right) in {op}"
            ));
        }
        let (a, b) = if swapped { (other.value, sample.value) } else { (sample.value, other.value) };
        let Some((value, drop_name)) = apply(a, b) else {
            if one_to_one {
                results.insert(Labels::new());
            }
            continue;
        };
        let mut labels = sample.labels.clone();
        if drop_name {
            labels.remove(NAME);
        }
        if one_to_one {
            match matching {
                Some(LabelModifier::Include(on)) => labels.retain(|k, _| on.labels.contains(k)),
                Some(LabelModifier::Exclude(ignoring)) => labels.retain(|k, _| !ignoring.labels.contains(k)),
                None => {}
            }
        }
        for name in &include {
            match other.labels.get(name) {
                Some(value) => labels.insert(name.clone(), value.clone()),
                None => labels.remove(name),
            };
        }
        if !one_to_one && results.contains(&labels) {
            return Err(format!("multiple matches for labels: grouping labels must ensure unique matches in {op}"));
        }
        results.insert(labels.clone());
        out.push(Sample { labels, value });
    }
    Ok(Value::Vector(out))
}
