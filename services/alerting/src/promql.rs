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

/// An instant selector's sample at `at`: the latest within the lookback,
/// unless it is a staleness marker.
fn latest(samples: &std::collections::VecDeque<(i64, f64)>, at: i64) -> Option<&(i64, f64)> {
    samples.iter().rev().find(|(t, _)| *t <= at).filter(|(t, v)| *t > at - LOOKBACK_MS && !is_stale(*v))
}

/// A label name `label_replace` and `label_join` may write: Prometheus'
/// classic name syntax.
fn check_label_name(function: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid { Ok(()) } else { Err(format!("{function}: invalid destination label name {name:?}")) }
}

/// The labels `absent()` reports: the selector's equality matchers; a
/// label matched more than once, or otherwise than by equality, is left
/// out (Prometheus' rule).
fn absent_labels(matchers: &Matchers) -> Labels {
    let mut labels = Labels::new();
    let mut has = std::collections::HashSet::new();
    for m in &matchers.matchers {
        if m.name == NAME {
            continue;
        }
        if matches!(m.op, promql_parser::label::MatchOp::Equal) && !has.contains(&m.name) {
            labels.insert(m.name.clone(), m.value.clone());
            has.insert(m.name.clone());
        } else {
            labels.remove(&m.name);
        }
    }
    labels
}

/// One step of Kahan-Neumaier summation (Prometheus' `kahansum.Inc`):
/// the new sum and compensation.
fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// The mean as Prometheus computes it: a compensated sum while it stays
/// finite, an incremental mean from the point it would overflow.
fn mean(values: &[f64]) -> f64 {
    let Some((&first, rest)) = values.split_first() else { return f64::NAN };
    let (mut sum, mut c, mut mean, mut incremental) = (first, 0.0, 0.0, false);
    for (i, &v) in rest.iter().enumerate() {
        let count = (i + 2) as f64;
        if !incremental {
            let (s, k) = kahan_inc(v, sum, c);
            if !s.is_infinite() {
                (sum, c) = (s, k);
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(v / count, q * mean, q * c);
    }
    let n = values.len() as f64;
    if incremental { mean + c } else { sum / n + c / n }
}

/// Prometheus' extrapolated rate, increase and delta over the window
/// `(range_start, range_end]`.
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
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let average = sampled / (points.len() - 1) as f64;
    // Samples close enough to a boundary (10% more than the average
    // interval) are extrapolated to it; otherwise by half an interval.
    let threshold = average * 1.1;
    if to_start >= threshold {
        to_start = average / 2.0;
    }
    if counter {
        // A counter does not go below zero: extrapolate to where it would
        // have been zero, if that is nearer.
        let to_zero = if result > 0.0 && first_v >= 0.0 { sampled * (first_v / result) } else { to_start };
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = average / 2.0;
    }
    let mut factor = if sampled != 0.0 { (sampled + to_start + to_end) / sampled } else { 1.0 };
    if per_second {
        factor /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_rate(points: &[(i64, f64)], per_second: bool) -> Option<f64> {
    let [.., (t0, v0), (t1, v1)] = points else { return None };
    if t1 == t0 {
        return None;
    }
    let mut diff = v1 - v0;
    if per_second && v1 < v0 {
        // A counter reset.
        diff = *v1;
    }
    if !per_second {
        return Some(diff);
    }
    Some(diff / ((t1 - t0) as f64 / 1000.0))
}

/// Least squares over the points, times in seconds from `intercept_ms`:
/// the slope and the value at `intercept_ms` (Prometheus'
/// `linearRegression`, compensated sums included).
fn linear_regression(points: &[(i64, f64)], intercept_ms: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let first = points[0].1;
    let constant = points.iter().all(|(_, v)| *v == first);
    for &(t, v) in points {
        n += 1.0;
        let x = (t - intercept_ms) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    if constant {
        return if first.is_infinite() { (f64::NAN, f64::NAN) } else { (0.0, first) };
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let covariance = sum_xy - sum_x * sum_y / n;
    let variance = sum_x2 - sum_x * sum_x / n;
    let slope = covariance / variance;
    (slope, sum_y / n - slope * sum_x / n)
}

fn over_time(name: &str, q: Option<f64>, points: &[(i64, f64)]) -> Option<f64> {
    let values: Vec<f64> = points.iter().map(|(_, v)| *v).collect();
    let first = *values.first()?;
    // NaN loses to any number; only NaNs give NaN.
    let pick = |better: fn(f64, f64) -> bool| {
        values.iter().fold(first, |m, &v| if better(v, m) || m.is_nan() { v } else { m })
    };
    Some(match name {
        "avg_over_time" => mean(&values),
        "min_over_time" => pick(|v, m| v < m),
        "max_over_time" => pick(|v, m| v > m),
        "sum_over_time" => {
            let (sum, c) = values.iter().fold((0.0, 0.0), |(s, c), &v| kahan_inc(v, s, c));
            if sum.is_infinite() { sum } else { sum + c }
        }
        "count_over_time" => values.len() as f64,
        "last_over_time" => *values.last()?,
        "present_over_time" => 1.0,
        "stddev_over_time" => variance(&values).sqrt(),
        "stdvar_over_time" => variance(&values),
        "quantile_over_time" => quantile(q.unwrap_or(f64::NAN), values),
        _ => return None,
    })
}

/// The population variance, by Welford's method with compensated sums
/// (Prometheus' `varianceOverTime`).
fn variance(values: &[f64]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Orders NaN before every number, as Prometheus' sample heaps do.
fn nan_first(a: &f64, b: &f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a.total_cmp(b),
        (nan_a, nan_b) => nan_b.cmp(&nan_a),
    }
}

/// Prometheus' `quantile` (linear interpolation between ranks; NaN
/// values sort first).
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
    values.sort_by(nan_first);
    let rank = q * (values.len() - 1) as f64;
    let lower = rank.floor() as usize;
    let upper = (lower + 1).min(values.len() - 1);
    let weight = rank - rank.floor();
    values[lower] * (1.0 - weight) + values[upper] * weight
}

/// `histogram_quantile` over classic buckets (series with an `le` label),
/// one histogram per series name and labels.
fn histogram_quantile(q: f64, samples: Vec<Sample>) -> Vec<Sample> {
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for sample in samples {
        let mut labels = sample.labels;
        let Some(le) = labels.remove("le") else { continue };
        let bound = match le.as_str() {
            "+Inf" | "Inf" | "+inf" | "inf" => f64::INFINITY,
            other => other.parse::<f64>().unwrap_or(f64::NAN),
        };
        if bound.is_nan() {
            continue;
        }
        groups.entry(labels).or_default().push((bound, sample.value));
    }
    groups
        .into_iter()
        .map(|(labels, mut buckets)| Sample { labels: without_name(labels), value: bucket_quantile(q, &mut buckets) })
        .collect()
}

/// Prometheus' `BucketQuantile`: buckets of one upper bound merged, counts
/// made monotonic (differences below 1e-12 relative ignored), then linear
/// interpolation within the bucket holding the rank.
fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
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
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    buckets.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 += later.1;
        }
        same
    });
    let mut previous = buckets[0].1;
    for bucket in buckets.iter_mut().skip(1) {
        let current = bucket.1;
        if current == previous {
            continue;
        }
        if almost_equal(previous, current, 1e-12) || current < previous {
            bucket.1 = previous;
            continue;
        }
        previous = current;
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = buckets[..buckets.len() - 1].iter().position(|(_, count)| *count >= rank).unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (start, mut count) = (if b == 0 { 0.0 } else { buckets[b - 1].0 }, buckets[b].1);
    if b > 0 {
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (buckets[b].0 - start) * (rank / count)
}

/// Prometheus' `almost.Equal`: equal, both NaN, or within a relative
/// `epsilon`.
pub fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    if a.is_nan() && b.is_nan() || a == b {
        return true;
    }
    let (sum, diff) = (a.abs() + b.abs(), (a - b).abs());
    if a == 0.0 || b == 0.0 || sum < f64::MIN_POSITIVE {
        return diff < epsilon * f64::MIN_POSITIVE;
    }
    diff / sum.min(f64::MAX) < epsilon
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

/// The `k` of `topk` / `bottomk`: `None` below 1 (an empty result), an
/// error for NaN or past 64 bits.
fn k_parameter(op: &str, param: Option<&Value>) -> Result<Option<usize>, String> {
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

fn aggregate_vector(
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
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{value}")
    }
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

fn vector_match(
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
        assert!(parse("limitk(2, x)").unwrap_err().contains("limitk"));
        assert!(parse("x @ 100").unwrap_err().contains("@"));
        assert!(parse("rate(x[5m]").is_err());
        assert!(parse("holt_winters(x[5m], 0.5, 0.5)").is_err());
        assert_eq!(lookback_ms(&parse("rate(x[1h]) > 0").unwrap()), 3_600_000);
    }
}
