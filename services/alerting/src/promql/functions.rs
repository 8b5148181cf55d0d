//! The arithmetic behind PromQL's functions: extrapolated rates, regression,
//! `*_over_time`, quantiles and classic-histogram buckets, with Prometheus'
//! float handling (Kahan sums, NaN ordering).

use super::*;

/// An instant selector's sample at `at`: the latest within the lookback,
/// unless it is a staleness marker.
pub(super) fn latest(samples: &std::collections::VecDeque<(i64, f64)>, at: i64) -> Option<&(i64, f64)> {
    samples.iter().rev().find(|(t, _)| *t <= at).filter(|(t, v)| *t > at - LOOKBACK_MS && !is_stale(*v))
}

/// A label name `label_replace` and `label_join` may write: Prometheus'
/// classic name syntax.
pub(super) fn check_label_name(function: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid { Ok(()) } else { Err(format!("{function}: invalid destination label name {name:?}")) }
}

/// The labels `absent()` reports: the selector's equality matchers; a
/// label matched more than once, or otherwise than by equality, is left
/// out (Prometheus' rule).
pub(super) fn absent_labels(matchers: &Matchers) -> Labels {
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
pub(super) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
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
pub(super) fn mean(values: &[f64]) -> f64 {
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
pub(super) fn extrapolated(
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

pub(super) fn instant_rate(points: &[(i64, f64)], per_second: bool) -> Option<f64> {
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
pub(super) fn linear_regression(points: &[(i64, f64)], intercept_ms: i64) -> (f64, f64) {
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

pub(super) fn over_time(name: &str, q: Option<f64>, points: &[(i64, f64)]) -> Option<f64> {
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
pub(super) fn variance(values: &[f64]) -> f64 {
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
pub(super) fn nan_first(a: &f64, b: &f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a.total_cmp(b),
        (nan_a, nan_b) => nan_b.cmp(&nan_a),
    }
}

/// Prometheus' `quantile` (linear interpolation between ranks; NaN
/// values sort first).
pub(super) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
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
pub(super) fn histogram_quantile(q: f64, samples: Vec<Sample>) -> Vec<Sample> {
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
pub(super) fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
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
