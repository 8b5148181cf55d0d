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
