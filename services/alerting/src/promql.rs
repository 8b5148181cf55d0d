//! PromQL evaluation over the derived series ([`crate::series::Tsdb`]).
//!
//! Parsing is the `promql-parser` crate's; evaluating is ours, following
//! Prometheus' semantics: left-open range windows, the 5 minute lookback
//! and staleness markers for instant selectors, extrapolated `rate` /
//! `increase` / `delta` with counter resets, classic-bucket
//! `histogram_quantile`, aggregation `by` / `without`, vector matching with
//! `on` / `ignoring` / `group_left` / `group_right`, comparison filters and
//! `bool`, and the set operators. [`check`] refuses at load what this
//! evaluator does not implement, so a rule never fails at run time for
//! want of a function.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use promql_parser::label::Matchers;
use promql_parser::parser::{self, Expr, LabelModifier, Offset, VectorMatchCardinality};

use crate::series::{Labels, NAME, Tsdb, is_stale};

/// Prometheus' default lookback for instant selectors.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
}

const FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "resets",
    "changes",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "quantile_over_time",
    "absent_over_time",
    "abs",
    "ceil",
    "floor",
    "exp",
    "ln",
    "log2",
    "log10",
    "sqrt",
    "sgn",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "histogram_quantile",
    "time",
    "vector",
    "scalar",
    "absent",
    "timestamp",
    "label_replace",
    "label_join",
    "sort",
    "sort_desc",
    "day_of_week",
    "hour",
    "minute",
];

const AGGREGATIONS: &[&str] =
    &["sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile"];

/// Parses and checks an expression; the error says what is wrong.
pub fn parse(text: &str) -> Result<Expr, String> {
    let expr = parser::parse(text)?;
    check(&expr)?;
    Ok(expr)
}

/// Refuses what this evaluator does not implement.
pub fn check(expr: &Expr) -> Result<(), String> {
    match expr {
        Expr::Aggregate(aggregate) => {
            let op = aggregate.op.to_string();
            if !AGGREGATIONS.contains(&op.as_str()) {
                return Err(format!("aggregation {op} is not supported"));
            }
            if let Some(param) = &aggregate.param {
                check(param)?;
            }
            check(&aggregate.expr)
        }
        Expr::Unary(unary) => check(&unary.expr),
        Expr::Binary(binary) => {
            if binary.modifier.as_ref().is_some_and(|m| m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some()) {
                return Err("fill modifiers are not supported".into());
            }
            check(&binary.lhs)?;
            check(&binary.rhs)
        }
        Expr::Paren(paren) => check(&paren.expr),
        Expr::Subquery(subquery) => {
            if subquery.at.is_some() {
                return Err("the @ modifier is not supported in rules".into());
            }
            check(&subquery.expr)
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::VectorSelector(selector) => {
            if selector.at.is_some() {
                return Err("the @ modifier is not supported in rules".into());
            }
            Ok(())
        }
        Expr::MatrixSelector(matrix) => {
            if matrix.vs.at.is_some() {
                return Err("the @ modifier is not supported in rules".into());
            }
            Ok(())
        }
        Expr::Call(call) => {
            if !FUNCTIONS.contains(&call.func.name) {
                return Err(format!("function {} is not supported", call.func.name));
            }
            call.args.args.iter().try_for_each(|arg| check(arg))
        }
        Expr::Extension(_) => Err("extension expressions are not supported".into()),
    }
}

/// The longest range the expression looks back over (ranges, offsets and
/// the lookback), so history is kept long enough.
pub fn lookback_ms(expr: &Expr) -> i64 {
    let offset = |o: &Option<Offset>| match o {
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        _ => 0,
    };
    match expr {
        Expr::Aggregate(a) => lookback_ms(&a.expr).max(a.param.as_deref().map_or(0, lookback_ms)),
        Expr::Unary(u) => lookback_ms(&u.expr),
        Expr::Binary(b) => lookback_ms(&b.lhs).max(lookback_ms(&b.rhs)),
        Expr::Paren(p) => lookback_ms(&p.expr),
        Expr::Subquery(s) => lookback_ms(&s.expr) + s.range.as_millis() as i64 + offset(&s.offset),
        Expr::VectorSelector(v) => LOOKBACK_MS + offset(&v.offset),
        Expr::MatrixSelector(m) => m.range.as_millis() as i64 + offset(&m.vs.offset),
        Expr::Call(c) => c.args.args.iter().map(|a| lookback_ms(a)).max().unwrap_or(0),
        _ => 0,
    }
}

/// Evaluates expressions at an instant over a [`Tsdb`].
pub struct Evaluator<'a> {
    pub tsdb: &'a Tsdb,
    /// The step of subqueries that name none.
    pub default_step_ms: i64,
}

fn matches(matchers: &Matchers, labels: &Labels) -> bool {
    let one = |m: &promql_parser::label::Matcher| m.is_match(labels.get(&m.name).map(String::as_str).unwrap_or(""));
    matchers.matchers.iter().all(one)
        && (matchers.or_matchers.is_empty() || matchers.or_matchers.iter().any(|group| group.iter().all(one)))
}

fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
        None => 0,
    }
}

fn without_name(mut labels: Labels) -> Labels {
    labels.remove(NAME);
    labels
}

impl Evaluator<'_> {
    /// Evaluates `expr` at `at_ms`.
    pub fn eval(&self, expr: &Expr, at_ms: i64) -> Result<Value, String> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, at_ms),
            Expr::Unary(u) => match self.eval(&u.expr, at_ms)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(samples) => Ok(Value::Vector(
                    samples.into_iter().map(|s| Sample { labels: without_name(s.labels), value: -s.value }).collect(),
                )),
                _ => Err("unary minus needs a scalar or a vector".into()),
            },
            Expr::VectorSelector(selector) => {
                let at = at_ms - offset_ms(&selector.offset);
                let name = selector.name.as_deref();
                let mut out = Vec::new();
                for series in self.tsdb.select(name, |l| matches(&selector.matchers, l)) {
                    let latest = series.samples.iter().rev().find(|(t, _)| *t <= at);
                    if let Some(&(t, v)) = latest
                        && t > at - LOOKBACK_MS
                        && !is_stale(v)
                    {
                        out.push(Sample { labels: series.labels.clone(), value: v });
                    }
                }
                Ok(Value::Vector(out))
            }
            Expr::MatrixSelector(matrix) => {
                let at = at_ms - offset_ms(&matrix.vs.offset);
                Ok(Value::Matrix(self.range(&matrix.vs.name, &matrix.vs.matchers, at, matrix.range)))
            }
            Expr::Subquery(subquery) => {
                let step = subquery.step.map_or(self.default_step_ms, |d| d.as_millis() as i64).max(1);
                let end = at_ms - offset_ms(&subquery.offset);
                let start = end - subquery.range.as_millis() as i64;
                let mut series: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
                let mut t = (start / step + 1) * step;
                while t <= end {
                    match self.eval(&subquery.expr, t)? {
                        Value::Vector(samples) => {
                            for s in samples {
                                series.entry(s.labels).or_default().push((t, s.value));
                            }
                        }
                        Value::Scalar(v) => series.entry(Labels::new()).or_default().push((t, v)),
                        _ => return Err("a subquery needs a vector expression".into()),
                    }
                    t += step;
                }
                Ok(Value::Matrix(series.into_iter().collect()))
            }
            Expr::Call(call) => self.call(call.func.name, &call.args.args, at_ms),
            Expr::Aggregate(aggregate) => {
                let op = aggregate.op.to_string();
                let param = match &aggregate.param {
                    Some(p) => match self.eval(p, at_ms)? {
                        Value::Scalar(v) => Some(v),
                        _ => return Err(format!("{op} needs a scalar parameter")),
                    },
                    None => None,
                };
                let Value::Vector(samples) = self.eval(&aggregate.expr, at_ms)? else {
                    return Err(format!("{op} needs a vector"));
                };
                Ok(Value::Vector(aggregate_vector(&op, param, aggregate.modifier.as_ref(), samples)))
            }
            Expr::Binary(binary) => {
                let lhs = self.eval(&binary.lhs, at_ms)?;
                let rhs = self.eval(&binary.rhs, at_ms)?;
                let op = binary.op.to_string();
                let return_bool = binary.modifier.as_ref().is_some_and(|m| m.return_bool);
                binary_op(&op, lhs, rhs, binary.modifier.as_ref(), return_bool)
            }
            Expr::Extension(_) => Err("extension expressions are not supported".into()),
        }
    }

    fn range(
        &self,
        name: &Option<String>,
        matchers: &Matchers,
        at: i64,
        range: Duration,
    ) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let from = at - range.as_millis() as i64;
        let mut out = Vec::new();
        for series in self.tsdb.select(name.as_deref(), |l| matches(matchers, l)) {
            let points: Vec<(i64, f64)> =
                series.samples.iter().copied().filter(|(t, v)| *t > from && *t <= at && !is_stale(*v)).collect();
            if !points.is_empty() {
                out.push((series.labels.clone(), points));
            }
        }
        out
    }

    fn scalar_arg(&self, args: &[Box<Expr>], index: usize, at_ms: i64) -> Result<f64, String> {
        match args.get(index).map(|a| self.eval(a, at_ms)).transpose()? {
            Some(Value::Scalar(v)) => Ok(v),
            _ => Err(format!("argument {} must be a scalar", index + 1)),
        }
    }

    fn string_arg(&self, args: &[Box<Expr>], index: usize, at_ms: i64) -> Result<String, String> {
        match args.get(index).map(|a| self.eval(a, at_ms)).transpose()? {
            Some(Value::String(s)) => Ok(s),
            _ => Err(format!("argument {} must be a string", index + 1)),
        }
    }

    fn vector_arg(&self, args: &[Box<Expr>], index: usize, at_ms: i64) -> Result<Vec<Sample>, String> {
        match args.get(index).map(|a| self.eval(a, at_ms)).transpose()? {
            Some(Value::Vector(v)) => Ok(v),
            _ => Err(format!("argument {} must be an instant vector", index + 1)),
        }
    }

    fn call(&self, name: &str, args: &[Box<Expr>], at_ms: i64) -> Result<Value, String> {
        let map_vector = |f: &dyn Fn(f64) -> f64| -> Result<Value, String> {
            let samples = self.vector_arg(args, 0, at_ms)?;
            Ok(Value::Vector(
                samples.into_iter().map(|s| Sample { labels: without_name(s.labels), value: f(s.value) }).collect(),
            ))
        };
        match name {
            "rate" | "increase" | "delta" | "irate" | "idelta" | "deriv" | "resets" | "changes" | "avg_over_time"
            | "min_over_time" | "max_over_time" | "sum_over_time" | "count_over_time" | "last_over_time"
            | "present_over_time" | "stddev_over_time" | "stdvar_over_time" | "quantile_over_time" => {
                let (matrix_index, q) =
                    if name == "quantile_over_time" { (1, Some(self.scalar_arg(args, 0, at_ms)?)) } else { (0, None) };
                let (range_ms, matrix) = match args.get(matrix_index).map(|a| a.as_ref()) {
                    Some(Expr::MatrixSelector(m)) => {
                        (m.range.as_millis() as i64, self.eval(args[matrix_index].as_ref(), at_ms)?)
                    }
                    Some(Expr::Subquery(s)) => {
                        (s.range.as_millis() as i64, self.eval(args[matrix_index].as_ref(), at_ms)?)
                    }
                    _ => return Err(format!("{name} needs a range vector")),
                };
                let Value::Matrix(series) = matrix else { return Err(format!("{name} needs a range vector")) };
                let mut out = Vec::new();
                for (labels, points) in series {
                    let value = match name {
                        "rate" | "increase" | "delta" => {
                            extrapolated(&points, at_ms - range_ms, at_ms, name != "delta", name == "rate")
                        }
                        "irate" | "idelta" => instant_rate(&points, name == "irate"),
                        "deriv" => deriv(&points),
                        "resets" => Some(points.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
                        "changes" => Some(points.windows(2).filter(|w| w[1].1 != w[0].1).count() as f64),
                        _ => over_time(name, q, &points),
                    };
                    if let Some(value) = value {
                        let labels = if name == "last_over_time" { labels } else { without_name(labels) };
                        out.push(Sample { labels, value });
                    }
                }
                Ok(Value::Vector(out))
            }
            "absent_over_time" => {
                let Some(Expr::MatrixSelector(m)) = args.first().map(|a| a.as_ref()) else {
                    return Err("absent_over_time needs a range selector".into());
                };
                let found = self.range(&m.vs.name, &m.vs.matchers, at_ms - offset_ms(&m.vs.offset), m.range);
                Ok(Value::Vector(if found.is_empty() { vec![absent_labels(&m.vs.matchers)] } else { Vec::new() }))
            }
            "absent" => {
                let samples = self.vector_arg(args, 0, at_ms)?;
                if !samples.is_empty() {
                    return Ok(Value::Vector(Vec::new()));
                }
                let sample = match args[0].as_ref() {
                    Expr::VectorSelector(v) => absent_labels(&v.matchers),
                    _ => Sample { labels: Labels::new(), value: 1.0 },
                };
                Ok(Value::Vector(vec![sample]))
            }
            "abs" => map_vector(&f64::abs),
            "ceil" => map_vector(&f64::ceil),
            "floor" => map_vector(&f64::floor),
            "exp" => map_vector(&f64::exp),
            "ln" => map_vector(&f64::ln),
            "log2" => map_vector(&f64::log2),
            "log10" => map_vector(&f64::log10),
            "sqrt" => map_vector(&f64::sqrt),
            "sgn" => map_vector(&|v: f64| {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    v
                }
            }),
            "round" => {
                let to = if args.len() > 1 { self.scalar_arg(args, 1, at_ms)? } else { 1.0 };
                map_vector(&|v: f64| (v / to + 0.5).floor() * to)
            }
            "clamp" => {
                let (lo, hi) = (self.scalar_arg(args, 1, at_ms)?, self.scalar_arg(args, 2, at_ms)?);
                if lo > hi {
                    return Ok(Value::Vector(Vec::new()));
                }
                map_vector(&|v: f64| v.max(lo).min(hi))
            }
            "clamp_min" => {
                let lo = self.scalar_arg(args, 1, at_ms)?;
                map_vector(&|v: f64| v.max(lo))
            }
            "clamp_max" => {
                let hi = self.scalar_arg(args, 1, at_ms)?;
                map_vector(&|v: f64| v.min(hi))
            }
            "timestamp" => {
                let Some(Expr::VectorSelector(selector)) = args.first().map(|a| a.as_ref()) else {
                    return map_vector(&|_| at_ms as f64 / 1000.0);
                };
                let at = at_ms - offset_ms(&selector.offset);
                let mut out = Vec::new();
                for series in self.tsdb.select(selector.name.as_deref(), |l| matches(&selector.matchers, l)) {
                    if let Some(&(t, v)) = series.samples.iter().rev().find(|(t, _)| *t <= at)
                        && t > at - LOOKBACK_MS
                        && !is_stale(v)
                    {
                        out.push(Sample { labels: without_name(series.labels.clone()), value: t as f64 / 1000.0 });
                    }
                }
                Ok(Value::Vector(out))
            }
            "histogram_quantile" => {
                let q = self.scalar_arg(args, 0, at_ms)?;
                let samples = self.vector_arg(args, 1, at_ms)?;
                Ok(Value::Vector(histogram_quantile(q, samples)))
            }
            "time" => Ok(Value::Scalar(at_ms as f64 / 1000.0)),
            "vector" => {
                Ok(Value::Vector(vec![Sample { labels: Labels::new(), value: self.scalar_arg(args, 0, at_ms)? }]))
            }
            "scalar" => {
                let samples = self.vector_arg(args, 0, at_ms)?;
                Ok(Value::Scalar(if samples.len() == 1 { samples[0].value } else { f64::NAN }))
            }
            "sort" | "sort_desc" => {
                let mut samples = self.vector_arg(args, 0, at_ms)?;
                samples.sort_by(|a, b| a.value.total_cmp(&b.value));
                if name == "sort_desc" {
                    samples.reverse();
                }
                Ok(Value::Vector(samples))
            }
            "day_of_week" | "hour" | "minute" => {
                use chrono::{Datelike, Timelike};
                let of = |seconds: f64| {
                    let time = chrono::DateTime::from_timestamp(seconds as i64, 0).unwrap_or_default();
                    match name {
                        "day_of_week" => f64::from(time.weekday().num_days_from_sunday()),
                        "hour" => f64::from(time.hour()),
                        _ => f64::from(time.minute()),
                    }
                };
                if args.is_empty() {
                    return Ok(Value::Vector(vec![Sample { labels: Labels::new(), value: of(at_ms as f64 / 1000.0) }]));
                }
                map_vector(&of)
            }
            "label_replace" => {
                let samples = self.vector_arg(args, 0, at_ms)?;
                let dst = self.string_arg(args, 1, at_ms)?;
                let replacement = self.string_arg(args, 2, at_ms)?;
                let src = self.string_arg(args, 3, at_ms)?;
                let pattern = self.string_arg(args, 4, at_ms)?;
                let regex =
                    regex::Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| format!("label_replace: {e}"))?;
                Ok(Value::Vector(
                    samples
                        .into_iter()
                        .map(|mut s| {
                            let value = s.labels.get(&src).cloned().unwrap_or_default();
                            if let Some(captures) = regex.captures(&value) {
                                let mut out = String::new();
                                captures.expand(&replacement, &mut out);
                                if out.is_empty() {
                                    s.labels.remove(&dst);
                                } else {
                                    s.labels.insert(dst.clone(), out);
                                }
                            }
                            s
                        })
                        .collect(),
                ))
            }
            "label_join" => {
                let samples = self.vector_arg(args, 0, at_ms)?;
                let dst = self.string_arg(args, 1, at_ms)?;
                let separator = self.string_arg(args, 2, at_ms)?;
                let sources: Vec<String> =
                    (3..args.len()).map(|i| self.string_arg(args, i, at_ms)).collect::<Result<_, _>>()?;
                Ok(Value::Vector(
                    samples
                        .into_iter()
                        .map(|mut s| {
                            let joined = sources
                                .iter()
                                .map(|k| s.labels.get(k).cloned().unwrap_or_default())
                                .collect::<Vec<_>>()
                                .join(&separator);
                            if joined.is_empty() {
                                s.labels.remove(&dst);
                            } else {
                                s.labels.insert(dst.clone(), joined);
                            }
                            s
                        })
                        .collect(),
                ))
            }
            other => Err(format!("function {other} is not supported")),
        }
    }
}

/// The labels `absent()` reports: the selector's equality matchers.
fn absent_labels(matchers: &Matchers) -> Sample {
    let mut labels = Labels::new();
    for m in &matchers.matchers {
        if matches!(m.op, promql_parser::label::MatchOp::Equal) && m.name != NAME {
            labels.insert(m.name.clone(), m.value.clone());
        }
    }
    Sample { labels, value: 1.0 }
}

/// Prometheus' extrapolated rate, increase and delta.
fn extrapolated(
    points: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (first_t, first_v) = points[0];
    let (last_t, last_v) = points[points.len() - 1];
    let mut result = last_v - first_v;
    if counter {
        for pair in points.windows(2) {
            if pair[1].1 < pair[0].1 {
                result += pair[0].1;
            }
        }
    }
    let sampled = (last_t - first_t) as f64 / 1000.0;
    if sampled <= 0.0 {
        return None;
    }
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let to_end = (range_end - last_t) as f64 / 1000.0;
    let average = sampled / (points.len() - 1) as f64;
    if counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold { to_start } else { average / 2.0 };
    interval += if to_end < threshold { to_end } else { average / 2.0 };
    let mut value = result * (interval / sampled);
    if per_second {
        value /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(value)
}

fn instant_rate(points: &[(i64, f64)], per_second: bool) -> Option<f64> {
    let [.., (t0, v0), (t1, v1)] = points else { return None };
    let mut diff = v1 - v0;
    if per_second && v1 < v0 {
        // A counter reset.
        diff = *v1;
    }
    if !per_second {
        return Some(diff);
    }
    let dt = (t1 - t0) as f64 / 1000.0;
    (dt > 0.0).then(|| diff / dt)
}

fn deriv(points: &[(i64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let t0 = points[0].0;
    let xs: Vec<f64> = points.iter().map(|(t, _)| (t - t0) as f64 / 1000.0).collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, v)| v).sum::<f64>() / n;
    let covariance: f64 = xs.iter().zip(points).map(|(x, (_, y))| (x - mean_x) * (y - mean_y)).sum();
    let variance: f64 = xs.iter().map(|x| (x - mean_x).powi(2)).sum();
    (variance > 0.0).then(|| covariance / variance)
}

fn over_time(name: &str, q: Option<f64>, points: &[(i64, f64)]) -> Option<f64> {
    let values: Vec<f64> = points.iter().map(|(_, v)| *v).collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    Some(match name {
        "avg_over_time" => mean,
        "min_over_time" => values.iter().copied().fold(f64::INFINITY, f64::min),
        "max_over_time" => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "sum_over_time" => values.iter().sum(),
        "count_over_time" => n,
        "last_over_time" => *values.last()?,
        "present_over_time" => 1.0,
        "stddev_over_time" => variance.sqrt(),
        "stdvar_over_time" => variance,
        "quantile_over_time" => quantile(q.unwrap_or(f64::NAN), values),
        _ => return None,
    })
}

/// Prometheus' `quantile` (linear interpolation between ranks).
fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(f64::total_cmp);
    let rank = q * (values.len() - 1) as f64;
    let lower = rank.floor() as usize;
    let upper = (lower + 1).min(values.len() - 1);
    let weight = rank - rank.floor();
    values[lower] * (1.0 - weight) + values[upper] * weight
}

/// `histogram_quantile` over classic buckets (series with an `le` label).
fn histogram_quantile(q: f64, samples: Vec<Sample>) -> Vec<Sample> {
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for sample in samples {
        let mut labels = without_name(sample.labels);
        let Some(le) = labels.remove("le") else { continue };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse::<f64>().unwrap_or(f64::NAN) };
        if bound.is_nan() {
            continue;
        }
        groups.entry(labels).or_default().push((bound, sample.value));
    }
    groups.into_iter().map(|(labels, mut buckets)| Sample { labels, value: bucket_quantile(q, &mut buckets) }).collect()
}

fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.len() < 2 || buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Counts must not decrease (scrapes can straddle an observation).
    for i in 1..buckets.len() {
        if buckets[i].1 < buckets[i - 1].1 {
            buckets[i].1 = buckets[i - 1].1;
        }
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = buckets.iter().position(|(_, count)| *count >= rank).unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (start, mut count) =
        if b == 0 { (0.0, buckets[0].1) } else { (buckets[b - 1].0, buckets[b].1 - buckets[b - 1].1) };
    if b > 0 {
        rank -= buckets[b - 1].1;
    }
    if count == 0.0 {
        count = 1.0;
    }
    start + (buckets[b].0 - start) * (rank / count)
}

/// The labels an aggregation groups by.
fn group_labels(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
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

fn aggregate_vector(
    op: &str,
    param: Option<f64>,
    modifier: Option<&LabelModifier>,
    samples: Vec<Sample>,
) -> Vec<Sample> {
    let mut groups: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    for sample in samples {
        groups.entry(group_labels(&sample.labels, modifier)).or_default().push(sample);
    }
    let mut out = Vec::new();
    for (labels, members) in groups {
        let values: Vec<f64> = members.iter().map(|s| s.value).collect();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let value = match op {
            "sum" => values.iter().sum(),
            "avg" => mean,
            "min" => values.iter().copied().filter(|v| !v.is_nan()).fold(f64::INFINITY, f64::min),
            "max" => values.iter().copied().filter(|v| !v.is_nan()).fold(f64::NEG_INFINITY, f64::max),
            "count" => n,
            "group" => 1.0,
            "stddev" => (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt(),
            "stdvar" => values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n,
            "quantile" => quantile(param.unwrap_or(f64::NAN), values),
            "topk" | "bottomk" => {
                let k = param.unwrap_or(0.0).max(0.0) as usize;
                let mut members = members;
                members.sort_by(|a, b| b.value.total_cmp(&a.value));
                if op == "bottomk" {
                    members.reverse();
                }
                out.extend(members.into_iter().take(k));
                continue;
            }
            _ => continue,
        };
        out.push(Sample { labels, value });
    }
    out
}

fn arithmetic(op: &str, a: f64, b: f64) -> Option<f64> {
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

fn compare(op: &str, a: f64, b: f64) -> Option<bool> {
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
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
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

fn binary_op(
    op: &str,
    lhs: Value,
    rhs: Value,
    modifier: Option<&promql_parser::parser::BinModifier>,
    return_bool: bool,
) -> Result<Value, String> {
    let is_comparison = compare(op, 0.0, 0.0).is_some();
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
                _ => vector_match(op, left, right, modifier, &apply, is_comparison && !return_bool),
            }
        }
        _ => Err(format!("operator {op} cannot combine these operand types")),
    }
}

fn vector_match(
    op: &str,
    left: Vec<Sample>,
    right: Vec<Sample>,
    modifier: Option<&promql_parser::parser::BinModifier>,
    apply: &dyn Fn(f64, f64) -> Option<(f64, bool)>,
    filter: bool,
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
    let mut seen: std::collections::HashSet<Labels> = std::collections::HashSet::new();
    let mut out = Vec::new();
    for sample in many {
        let key = signature(&sample.labels, matching);
        let Some(other) = by_signature.get(&key) else { continue };
        let (a, b) = if swapped { (other.value, sample.value) } else { (sample.value, other.value) };
        let Some((mut value, drop_name)) = apply(a, b) else { continue };
        if filter {
            value = sample.value;
        }
        let mut labels = if one_to_one {
            match matching {
                Some(LabelModifier::Include(on)) => {
                    let mut kept: Labels = sample
                        .labels
                        .iter()
                        .filter(|(k, _)| on.labels.contains(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if !drop_name && let Some(name) = sample.labels.get(NAME) {
                        kept.insert(NAME.into(), name.clone());
                    }
                    kept
                }
                Some(LabelModifier::Exclude(ignoring)) => sample
                    .labels
                    .iter()
                    .filter(|(k, _)| !ignoring.labels.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => sample.labels.clone(),
            }
        } else {
            sample.labels.clone()
        };
        for name in &include {
            match other.labels.get(name) {
                Some(value) => labels.insert(name.clone(), value.clone()),
                None => labels.remove(name),
            };
        }
        if drop_name {
            labels.remove(NAME);
        }
        if one_to_one && !seen.insert(labels.clone()) {
            return Err(format!(
                "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right) in {op}"
            ));
        }
        out.push(Sample { labels, value });
    }
    Ok(Value::Vector(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::labels;

    fn tsdb(series: &[(&Labels, &[(i64, f64)])]) -> Tsdb {
        let mut tsdb = Tsdb::default();
        for (labels, points) in series {
            for (t, v) in *points {
                tsdb.push(labels, *t, *v);
            }
        }
        tsdb
    }

    fn eval(tsdb: &Tsdb, text: &str, at: i64) -> Vec<Sample> {
        let expr = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let evaluator = Evaluator { tsdb, default_step_ms: 60_000 };
        match evaluator.eval(&expr, at).unwrap() {
            Value::Vector(mut v) => {
                v.sort_by(|a, b| a.labels.cmp(&b.labels));
                v
            }
            Value::Scalar(s) => vec![Sample { labels: Labels::new(), value: s }],
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_increase_and_resets_follow_prometheus() {
        // A counter scraped every 15 s, rising by 1 per scrape, with a reset.
        let a = labels("x_total", &[("job", "a")]);
        let points: Vec<(i64, f64)> =
            (0..=20).map(|i| (i * 15_000, if i <= 10 { i as f64 } else { (i - 11) as f64 })).collect();
        let db = tsdb(&[(&a, &points)]);
        let at = 300_000;
        // 20 scrapes: 10 increments, a reset (counts 0 from the new start), 9 more.
        let increase = eval(&db, "increase(x_total[5m])", at)[0].value;
        let rate = eval(&db, "rate(x_total[5m])", at)[0].value;
        assert!((rate * 300.0 - increase).abs() < 1e-9);
        // The window (0, 300 s] holds 20 samples: 9 increments, a reset
        // (10 -> 0 counts as 0), 9 more; 18 over 285 s, extrapolated to 300 s.
        assert!((increase - 18.0 * 300.0 / 285.0).abs() < 1e-9, "{increase}");
        assert_eq!(eval(&db, "resets(x_total[5m])", at)[0].value, 1.0);
        assert_eq!(eval(&db, "irate(x_total[1m])", at)[0].value, 1.0 / 15.0);
        // One sample is not enough for a rate.
        assert!(eval(&db, "rate(x_total[10s])", at).is_empty());
    }

    #[test]
    fn instant_selectors_honour_lookback_and_staleness() {
        let a = labels("g", &[("k", "a")]);
        let b = labels("g", &[("k", "b")]);
        let db = tsdb(&[(&a, &[(0, 1.0)]), (&b, &[(0, 2.0), (10_000, f64::from_bits(crate::series::STALE_BITS))])]);
        assert_eq!(eval(&db, "g", 20_000).len(), 1);
        assert_eq!(eval(&db, "g", 299_999).len(), 1);
        assert!(eval(&db, "g", 300_000).is_empty());
        // Ten seconds earlier, both were there.
        assert_eq!(eval(&db, "g offset 10s", 15_000).len(), 2);
    }

    #[test]
    fn aggregations_matching_and_set_operators() {
        let rows = [
            (labels("req_total", &[("agent_id", "a"), ("status", "error")]), 3.0),
            (labels("req_total", &[("agent_id", "a"), ("status", "success")]), 7.0),
            (labels("req_total", &[("agent_id", "b"), ("status", "success")]), 10.0),
            (labels("limit", &[("agent_id", "a")]), 5.0),
            (labels("limit", &[("agent_id", "b")]), 5.0),
        ];
        let series: Vec<(&Labels, &[(i64, f64)])> = Vec::new();
        let mut db = tsdb(&series);
        for (l, v) in &rows {
            db.push(l, 0, *v);
        }
        let sum = eval(&db, "sum by (agent_id) (req_total)", 0);
        assert_eq!(sum.iter().map(|s| s.value).collect::<Vec<_>>(), [10.0, 10.0]);
        let ratio = eval(&db, "sum by (agent_id) (req_total{status=\"error\"}) / sum by (agent_id) (req_total)", 0);
        assert_eq!((ratio.len(), ratio[0].value), (1, 0.3));
        let over = eval(&db, "sum without (status) (req_total) > on(agent_id) limit", 0);
        assert_eq!(over.len(), 2);
        let filtered = eval(&db, "req_total > 5", 0);
        assert_eq!(filtered.len(), 2);
        assert_eq!(filtered[0].labels["__name__"], "req_total");
        let flags = eval(&db, "req_total > bool 5", 0);
        assert_eq!(flags.iter().map(|s| s.value).sum::<f64>(), 2.0);
        assert!(!flags[0].labels.contains_key("__name__"));
        let grouped = eval(&db, "req_total * on(agent_id) group_left limit", 0);
        assert_eq!(grouped.len(), 3);
        assert_eq!(eval(&db, "req_total unless on(agent_id) limit{agent_id=\"a\"}", 0).len(), 1);
        assert_eq!(eval(&db, "limit or req_total", 0).len(), 5);
        assert_eq!(eval(&db, "count(req_total)", 0)[0].value, 3.0);
        assert_eq!(eval(&db, "topk(1, req_total)", 0)[0].value, 10.0);
        let error = Evaluator { tsdb: &db, default_step_ms: 1 }
            .eval(&parse("req_total * on(agent_id) limit").unwrap(), 0)
            .unwrap_err();
        assert!(error.contains("many-to-one"), "{error}");
    }

    #[test]
    fn histogram_quantile_interpolates_within_buckets() {
        let mut db = Tsdb::default();
        for (le, count) in [("0.5", 50.0), ("1", 90.0), ("5", 100.0), ("+Inf", 100.0)] {
            db.push(&labels("d_bucket", &[("le", le), ("agent_id", "a")]), 0, count);
        }
        let p50 = eval(&db, "histogram_quantile(0.5, d_bucket)", 0);
        assert_eq!((p50[0].value, p50[0].labels.get("agent_id").map(String::as_str)), (0.5, Some("a")));
        assert!((eval(&db, "histogram_quantile(0.95, d_bucket)", 0)[0].value - 3.0).abs() < 1e-9);
        assert_eq!(eval(&db, "histogram_quantile(1, d_bucket)", 0)[0].value, 5.0);
    }

    #[test]
    fn unsupported_constructs_are_refused_at_load() {
        assert!(parse("count_values(\"v\", x)").unwrap_err().contains("count_values"));
        assert!(parse("x @ 100").unwrap_err().contains("@"));
        assert!(parse("rate(x[5m]").is_err());
        assert!(parse("holt_winters(x[5m], 0.5, 0.5)").is_err());
        assert_eq!(lookback_ms(&parse("rate(x[1h]) > 0").unwrap()), 3_600_000);
    }
}
