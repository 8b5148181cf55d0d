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

use chrono::{Datelike, Timelike};
use promql_parser::label::Matchers;
use promql_parser::parser::{self, Expr, LabelModifier, Offset, VectorMatchCardinality};

use crate::series::{Labels, NAME, Tsdb, is_stale};

mod functions;
mod operators;

pub use functions::almost_equal;
use functions::*;
use operators::*;

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
    "day_of_month",
    "day_of_year",
    "days_in_month",
    "month",
    "year",
    "predict_linear",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "sinh",
    "cosh",
    "tanh",
    "asinh",
    "acosh",
    "atanh",
    "deg",
    "rad",
    "pi",
];

const AGGREGATIONS: &[&str] =
    &["sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values"];

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

/// Whether a series with these labels is one `selector` selects (its
/// name, if it has one, and every matcher).
pub fn selects(selector: &promql_parser::parser::VectorSelector, labels: &Labels) -> bool {
    selector.name.as_ref().is_none_or(|n| labels.get(NAME) == Some(n)) && matches(&selector.matchers, labels)
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

/// A range argument evaluated: its window `(start, end]` and its series.
struct Window {
    start: i64,
    end: i64,
    series: Vec<(Labels, Vec<(i64, f64)>)>,
}

impl Evaluator<'_> {
    /// Evaluates a rule's or a query's expression at `at_ms`: the value,
    /// or an error where Prometheus' engine has one, including a vector
    /// holding two series with the same labels (`ceil({__name__=~"a|b"})`).
    pub fn query(&self, expr: &Expr, at_ms: i64) -> Result<Value, String> {
        let value = self.eval(expr, at_ms)?;
        if let Value::Vector(samples) = &value {
            let mut seen = std::collections::HashSet::with_capacity(samples.len());
            if !samples.iter().all(|s| seen.insert(&s.labels)) {
                return Err("vector cannot contain metrics with the same labelset".into());
            }
        }
        Ok(value)
    }

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
                let mut out = Vec::new();
                for series in self.tsdb.select(selector.name.as_deref(), |l| matches(&selector.matchers, l)) {
                    if let Some(&(_, v)) = latest(&series.samples, at) {
                        out.push(Sample { labels: series.labels.clone(), value: v });
                    }
                }
                Ok(Value::Vector(out))
            }
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Ok(Value::Matrix(self.window(expr, at_ms)?.series)),
            Expr::Call(call) => self.call(call.func.name, &call.args.args, at_ms),
            Expr::Aggregate(aggregate) => {
                let op = aggregate.op.to_string();
                let param = match &aggregate.param {
                    Some(p) => Some(self.eval(p, at_ms)?),
                    None => None,
                };
                let Value::Vector(samples) = self.eval(&aggregate.expr, at_ms)? else {
                    return Err(format!("{op} needs a vector"));
                };
                aggregate_vector(&op, param, aggregate.modifier.as_ref(), samples).map(Value::Vector)
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

    /// A range selector's or a subquery's window and series (parentheses
    /// around either are allowed, as in Prometheus).
    fn window(&self, expr: &Expr, at_ms: i64) -> Result<Window, String> {
        match expr {
            Expr::Paren(p) => self.window(&p.expr, at_ms),
            Expr::MatrixSelector(m) => {
                let end = at_ms - offset_ms(&m.vs.offset);
                let start = end - m.range.as_millis() as i64;
                let mut series = Vec::new();
                for data in self.tsdb.select(m.vs.name.as_deref(), |l| matches(&m.vs.matchers, l)) {
                    let points: Vec<(i64, f64)> = data
                        .samples
                        .iter()
                        .copied()
                        .filter(|(t, v)| *t > start && *t <= end && !is_stale(*v))
                        .collect();
                    if !points.is_empty() {
                        series.push((data.labels.clone(), points));
                    }
                }
                Ok(Window { start, end, series })
            }
            Expr::Subquery(subquery) => {
                let step = subquery.step.map_or(self.default_step_ms, |d| d.as_millis() as i64).max(1);
                let end = at_ms - offset_ms(&subquery.offset);
                let start = end - subquery.range.as_millis() as i64;
                let mut series: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
                // Steps at multiples of the step, in the left-open window.
                let mut t = start.div_euclid(step) * step;
                if t <= start {
                    t += step;
                }
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
                Ok(Window { start, end, series: series.into_iter().collect() })
            }
            _ => Err("expected a range vector".into()),
        }
    }

    fn arg(&self, args: &[Box<Expr>], index: usize, at_ms: i64) -> Result<Value, String> {
        let arg = args.get(index).ok_or_else(|| format!("argument {} is missing", index + 1))?;
        self.eval(arg, at_ms)
    }

    fn scalar_arg(&self, args: &[Box<Expr>], index: usize, at_ms: i64) -> Result<f64, String> {
        match self.arg(args, index, at_ms)? {
            Value::Scalar(v) => Ok(v),
            _ => Err(format!("argument {} must be a scalar", index + 1)),
        }
    }

    fn string_arg(&self, args: &[Box<Expr>], index: usize, at_ms: i64) -> Result<String, String> {
        match self.arg(args, index, at_ms)? {
            Value::String(s) => Ok(s),
            _ => Err(format!("argument {} must be a string", index + 1)),
        }
    }

    fn vector_arg(&self, args: &[Box<Expr>], index: usize, at_ms: i64) -> Result<Vec<Sample>, String> {
        match self.arg(args, index, at_ms)? {
            Value::Vector(v) => Ok(v),
            _ => Err(format!("argument {} must be an instant vector", index + 1)),
        }
    }

    fn call(&self, name: &str, args: &[Box<Expr>], at_ms: i64) -> Result<Value, String> {
        // A function of each sample's value; the metric name goes.
        let map_vector = |f: &dyn Fn(f64) -> f64| -> Result<Value, String> {
            let samples = self.vector_arg(args, 0, at_ms)?;
            Ok(Value::Vector(
                samples.into_iter().map(|s| Sample { labels: without_name(s.labels), value: f(s.value) }).collect(),
            ))
        };
        // A function of each sample's value read as a Unix time (UTC), or
        // of the evaluation time without an argument.
        let map_date = |f: &dyn Fn(chrono::DateTime<chrono::Utc>) -> f64| -> Result<Value, String> {
            let date = |seconds: f64| f(chrono::DateTime::from_timestamp(seconds as i64, 0).unwrap_or_default());
            if args.is_empty() {
                return Ok(Value::Vector(vec![Sample { labels: Labels::new(), value: date(at_ms as f64 / 1000.0) }]));
            }
            map_vector(&|v| date(v))
        };
        match name {
            "rate" | "increase" | "delta" | "irate" | "idelta" | "deriv" | "resets" | "changes" | "avg_over_time"
            | "min_over_time" | "max_over_time" | "sum_over_time" | "count_over_time" | "last_over_time"
            | "present_over_time" | "stddev_over_time" | "stdvar_over_time" | "quantile_over_time"
            | "predict_linear" => {
                let (window_index, parameter) = match name {
                    "quantile_over_time" => (1, Some(self.scalar_arg(args, 0, at_ms)?)),
                    "predict_linear" => (0, Some(self.scalar_arg(args, 1, at_ms)?)),
                    _ => (0, None),
                };
                let arg = args.get(window_index).ok_or_else(|| format!("{name} needs a range vector"))?;
                let window = self.window(arg, at_ms).map_err(|_| format!("{name} needs a range vector"))?;
                let mut out = Vec::new();
                for (labels, points) in window.series {
                    let value = match name {
                        "rate" | "increase" | "delta" => {
                            extrapolated(&points, window.start, window.end, name != "delta", name == "rate")
                        }
                        "irate" | "idelta" => instant_rate(&points, name == "irate"),
                        "deriv" => (points.len() >= 2).then(|| linear_regression(&points, points[0].0).0),
                        "predict_linear" => (points.len() >= 2).then(|| {
                            let (slope, intercept) = linear_regression(&points, at_ms);
                            slope * parameter.unwrap_or_default() + intercept
                        }),
                        "resets" => Some(points.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
                        "changes" => Some(
                            points
                                .windows(2)
                                .filter(|w| w[1].1 != w[0].1 && !(w[1].1.is_nan() && w[0].1.is_nan()))
                                .count() as f64,
                        ),
                        _ => over_time(name, parameter, &points),
                    };
                    if let Some(value) = value {
                        let labels = if name == "last_over_time" { labels } else { without_name(labels) };
                        out.push(Sample { labels, value });
                    }
                }
                Ok(Value::Vector(out))
            }
            "absent_over_time" => {
                let arg = args.first().ok_or("absent_over_time needs a range vector")?;
                let window = self.window(arg, at_ms).map_err(|_| "absent_over_time needs a range vector")?;
                let absent = match arg.as_ref() {
                    Expr::MatrixSelector(m) => absent_labels(&m.vs.matchers),
                    _ => Labels::new(),
                };
                Ok(Value::Vector(if window.series.is_empty() {
                    vec![Sample { labels: absent, value: 1.0 }]
                } else {
                    Vec::new()
                }))
            }
            "absent" => {
                let samples = self.vector_arg(args, 0, at_ms)?;
                if !samples.is_empty() {
                    return Ok(Value::Vector(Vec::new()));
                }
                let labels = match args[0].as_ref() {
                    Expr::VectorSelector(v) => absent_labels(&v.matchers),
                    _ => Labels::new(),
                };
                Ok(Value::Vector(vec![Sample { labels, value: 1.0 }]))
            }
            "abs" => map_vector(&f64::abs),
            "ceil" => map_vector(&f64::ceil),
            "floor" => map_vector(&f64::floor),
            "exp" => map_vector(&f64::exp),
            "ln" => map_vector(&f64::ln),
            "log2" => map_vector(&f64::log2),
            "log10" => map_vector(&f64::log10),
            "sqrt" => map_vector(&f64::sqrt),
            "sin" => map_vector(&f64::sin),
            "cos" => map_vector(&f64::cos),
            "tan" => map_vector(&f64::tan),
            "asin" => map_vector(&f64::asin),
            "acos" => map_vector(&f64::acos),
            "atan" => map_vector(&f64::atan),
            "sinh" => map_vector(&f64::sinh),
            "cosh" => map_vector(&f64::cosh),
            "tanh" => map_vector(&f64::tanh),
            "asinh" => map_vector(&f64::asinh),
            "acosh" => map_vector(&f64::acosh),
            "atanh" => map_vector(&f64::atanh),
            "deg" => map_vector(&|v| v * 180.0 / std::f64::consts::PI),
            "rad" => map_vector(&|v| v * std::f64::consts::PI / 180.0),
            "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
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
                let inverse = 1.0 / to;
                map_vector(&|v: f64| (v * inverse + 0.5).floor() / inverse)
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
                let selector = match args.first().map(|a| a.as_ref()) {
                    Some(Expr::VectorSelector(selector)) => selector,
                    Some(Expr::Paren(p)) if let Expr::VectorSelector(selector) = p.expr.as_ref() => selector,
                    _ => return map_vector(&|_| at_ms as f64 / 1000.0),
                };
                // The samples' own times, not the evaluation's.
                let at = at_ms - offset_ms(&selector.offset);
                let mut out = Vec::new();
                for series in self.tsdb.select(selector.name.as_deref(), |l| matches(&selector.matchers, l)) {
                    if let Some(&(t, _)) = latest(&series.samples, at) {
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
                // NaN last either way, as in Prometheus.
                samples.sort_by(|a, b| match (a.value.is_nan(), b.value.is_nan()) {
                    (false, false) if name == "sort" => a.value.total_cmp(&b.value),
                    (false, false) => b.value.total_cmp(&a.value),
                    (nan_a, nan_b) => nan_a.cmp(&nan_b),
                });
                Ok(Value::Vector(samples))
            }
            "day_of_week" => map_date(&|t| f64::from(t.weekday().num_days_from_sunday())),
            "day_of_month" => map_date(&|t| f64::from(t.day())),
            "day_of_year" => map_date(&|t| f64::from(t.ordinal())),
            "days_in_month" => map_date(&|t| {
                let first = chrono::NaiveDate::from_ymd_opt(t.year(), t.month(), 1).unwrap_or_default();
                let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(first);
                (next - first).num_days() as f64
            }),
            "month" => map_date(&|t| f64::from(t.month())),
            "year" => map_date(&|t| f64::from(t.year())),
            "hour" => map_date(&|t| f64::from(t.hour())),
            "minute" => map_date(&|t| f64::from(t.minute())),
            "label_replace" => {
                let samples = self.vector_arg(args, 0, at_ms)?;
                let dst = self.string_arg(args, 1, at_ms)?;
                let replacement = self.string_arg(args, 2, at_ms)?;
                let src = self.string_arg(args, 3, at_ms)?;
                let pattern = self.string_arg(args, 4, at_ms)?;
                check_label_name("label_replace", &dst)?;
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
                check_label_name("label_join", &dst)?;
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

#[cfg(test)]
mod tests;
