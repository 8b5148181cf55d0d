//! Prometheus' own PromQL test scripts, run against Warden's evaluator.
//!
//! `testdata/promql/*.test` are copied whole from Prometheus'
//! `promql/promqltest/testdata` (Apache-2.0: `testdata/promql/LICENSE`,
//! `NOTICE`; the commit is in `testdata/promql/README.md`). This file reads
//! their scripting language (`load`, `clear`, `eval instant`, `eval range`,
//! `expect ...`) and checks every evaluation Warden accepts against
//! Prometheus' expected result, with Prometheus' tolerance (a relative
//! error of 1e-6).
//!
//! An evaluation is *unsupported*, and counted as such, when Warden refuses
//! it at load as a rule would be refused (`promql::parse`: the parser does
//! not know the syntax, or the evaluator does not implement a function) or
//! when it reads native histograms, which Warden's series never hold. Every
//! other evaluation must give Prometheus' answer; an evaluation Prometheus
//! expects to fail must fail.

use std::collections::BTreeMap;
use std::path::Path;

use promql_parser::parser::Expr;
use warden_alerting::promql::{self, Evaluator, Value};
use warden_alerting::series::{Labels, NAME, STALE_BITS, Tsdb};

/// Prometheus' default lookback and the step of subqueries that name
/// none in its test engine.
const SUBQUERY_STEP_MS: i64 = 60_000;

/// Prometheus' tolerance in its test engine: a relative error of 1e-6.
fn almost_equal(a: f64, b: f64) -> bool {
    promql::almost_equal(a, b, 0.000_001)
}

/// Prometheus' `model.ParseDuration` (`1h30m`, `10s`, `0`), in milliseconds.
fn duration_ms(text: &str) -> Result<i64, String> {
    if text == "0" {
        return Ok(0);
    }
    let (mut total, mut digits, mut rest) = (0i64, String::new(), text);
    while !rest.is_empty() {
        let c = rest.chars().next().expect("not empty");
        if c.is_ascii_digit() {
            digits.push(c);
            rest = &rest[1..];
            continue;
        }
        let (unit, len) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
            .iter()
            .chain(&[("w", 604_800_000), ("y", 31_536_000_000)])
            .find(|(u, _)| rest.starts_with(u))
            .map(|(u, ms)| (*ms, u.len()))
            .ok_or_else(|| format!("bad duration {text:?}"))?;
        let n: i64 = digits.parse().map_err(|_| format!("bad duration {text:?}"))?;
        total += n * unit;
        digits.clear();
        rest = &rest[len..];
    }
    if !digits.is_empty() {
        return Err(format!("bad duration {text:?}"));
    }
    Ok(total)
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseFloat`: an expected
/// scalar.
fn scalar(text: &str) -> Option<f64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X"))
        && let Ok(n) = i64::from_str_radix(hex, 16)
    {
        return Some(if negative { -n as f64 } else { n as f64 });
    }
    number(text)
}

/// A value in a series description (where `0x5` means 0 six times).
fn number(text: &str) -> Option<f64> {
    match text {
        "Inf" | "+Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ if text.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => text.parse().ok(),
        _ => None,
    }
}

/// A series description's labels (`name{a="b"}`) and the rest of the line.
fn series_labels(line: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    if name_end > 0 {
        labels.insert(NAME.into(), line[..name_end].to_owned());
    }
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            while chars.peek().is_some_and(|(_, c)| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            let Some(&(start, c)) = chars.peek() else { return Err(format!("unclosed labels: {line}")) };
            if c == '}' {
                rest = &inner[start + 1..];
                break;
            }
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|(_, c)| c.is_whitespace() || *c == '=') {
                chars.next();
            }
            let quote = chars.next().map(|(_, c)| c).ok_or_else(|| format!("no value: {line}"))?;
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some(other) => value.push(other),
                        None => return Err(format!("unterminated value: {line}")),
                    },
                    Some(c) if c == quote => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated value: {line}")),
                }
            }
            let key = key.trim_matches(|c| c == '"' || c == '\'').to_owned();
            labels.insert(key, value);
        }
    }
    Ok((labels, rest.trim()))
}

#[derive(Debug, Clone, Copy)]
enum Point {
    Missing,
    Stale,
    Value(f64),
}

/// A series description's values, expanded (`1+2x3`, `_x2`, `stale`);
/// `None` when it holds a native histogram.
fn series_values(text: &str) -> Result<Option<Vec<Point>>, String> {
    if text.contains("{{") {
        return Ok(None);
    }
    let mut points = Vec::new();
    for token in text.split_whitespace() {
        if token == "_" {
            points.push(Point::Missing);
        } else if let Some(n) = token.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("bad token {token}"))?;
            points.extend(std::iter::repeat_n(Point::Missing, n));
        } else if token == "stale" {
            points.push(Point::Stale);
        } else if let Some(value) = number(token) {
            points.push(Point::Value(value));
        } else if let Some((start, times)) = token.rsplit_once('x') {
            let times: usize = times.parse().map_err(|_| format!("bad token {token}"))?;
            // The step's sign: the last + or - that does not begin the
            // token or an exponent.
            let bytes = start.as_bytes();
            let split = (1..bytes.len())
                .rev()
                .find(|&i| (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E'));
            let (first, step) = match split {
                Some(i) => (&start[..i], &start[i..]),
                None => (start, "0"),
            };
            let first = number(first).ok_or_else(|| format!("bad token {token}"))?;
            let step = number(step).ok_or_else(|| format!("bad token {token}"))?;
            points.extend((0..=times).map(|i| Point::Value(first + step * i as f64)));
        } else {
            return Err(format!("bad token {token}"));
        }
    }
    Ok(Some(points))
}

#[derive(Debug, Default)]
struct Eval {
    line: usize,
    query: String,
    /// Instant: at; range: from, to, step.
    at_ms: i64,
    range: Option<(i64, i64, i64)>,
    fail: bool,
    ordered: bool,
    scalar: Option<f64>,
    string: Option<String>,
    /// Instant queries returning a range vector: its expected timestamps.
    range_vector: Option<(i64, i64, i64)>,
    series: Vec<(Labels, Vec<Point>)>,
    histograms: bool,
}

enum Outcome {
    Passed,
    Unsupported(String),
    Failed(String),
}

/// The scripts' state: the loaded series, and which hold native
/// histograms Warden cannot hold.
#[derive(Default)]
struct Script {
    tsdb: Tsdb,
    histograms: Vec<Labels>,
}

fn selectors(expr: &Expr, out: &mut Vec<promql_parser::parser::VectorSelector>) {
    match expr {
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::VectorSelector(v) => out.push(v.clone()),
        Expr::MatrixSelector(m) => out.push(m.vs.clone()),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out)),
        _ => {}
    }
}

fn format_labels(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

impl Script {
    fn run(&self, eval: &Eval) -> Outcome {
        if eval.histograms {
            return Outcome::Unsupported("native histograms".into());
        }
        let expr = match promql::parse(&eval.query) {
            Ok(expr) => expr,
            Err(_) if eval.fail => return Outcome::Passed,
            Err(error) => return Outcome::Unsupported(error),
        };
        let mut used = Vec::new();
        selectors(&expr, &mut used);
        if used.iter().any(|s| self.histograms.iter().any(|h| promql::selects(s, h))) {
            return Outcome::Unsupported("native histograms".into());
        }
        let evaluator = Evaluator { tsdb: &self.tsdb, default_step_ms: SUBQUERY_STEP_MS };
        let result = match eval.range {
            None => evaluator.query(&expr, eval.at_ms),
            Some((from, to, step)) => {
                let mut matrix: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
                let mut t = from;
                let mut failed = None;
                while t <= to {
                    match evaluator.query(&expr, t) {
                        Ok(Value::Vector(samples)) => {
                            for s in samples {
                                matrix.entry(s.labels).or_default().push((t, s.value));
                            }
                        }
                        Ok(Value::Scalar(v)) => matrix.entry(Labels::new()).or_default().push((t, v)),
                        Ok(other) => {
                            failed = Some(format!("a range query needs a vector or scalar, got {other:?}"));
                            break;
                        }
                        Err(error) => {
                            failed = Some(error);
                            break;
                        }
                    }
                    t += step;
                }
                match failed {
                    Some(error) => Err(error),
                    None => Ok(Value::Matrix(matrix.into_iter().collect())),
                }
            }
        };
        let value = match result {
            Err(_) if eval.fail => return Outcome::Passed,
            Err(error) => return Outcome::Failed(format!("error: {error}")),
            Ok(_) if eval.fail => return Outcome::Failed("Prometheus fails this query; Warden answered".into()),
            Ok(value) => value,
        };
        match compare(eval, value) {
            Ok(()) => Outcome::Passed,
            Err(error) => Outcome::Failed(error),
        }
    }
}

fn compare(eval: &Eval, value: Value) -> Result<(), String> {
    match value {
        Value::Scalar(v) => {
            let expected = eval.scalar.ok_or_else(|| format!("got the scalar {v}, expected {:?}", eval.series))?;
            if !almost_equal(expected, v) {
                return Err(format!("expected {expected}, got {v}"));
            }
        }
        Value::String(s) => {
            if eval.string.as_ref() != Some(&s) {
                return Err(format!("expected {:?}, got the string {s:?}", eval.string));
            }
        }
        Value::Vector(samples) => {
            if let Some(expected) = eval.scalar {
                return Err(format!("expected the scalar {expected}, got a vector of {}", samples.len()));
            }
            let expected: Vec<(&Labels, f64)> = eval
                .series
                .iter()
                .map(|(l, points)| match points.as_slice() {
                    [Point::Value(v)] => Ok((l, *v)),
                    other => Err(format!("an instant expectation with points {other:?}")),
                })
                .collect::<Result<_, _>>()?;
            if expected.len() != samples.len() {
                let got: Vec<String> =
                    samples.iter().map(|s| format!("{} {}", format_labels(&s.labels), s.value)).collect();
                return Err(format!("expected {} samples, got {}: {}", expected.len(), samples.len(), got.join("; ")));
            }
            for (i, sample) in samples.iter().enumerate() {
                let Some(position) = expected.iter().position(|(l, _)| **l == sample.labels) else {
                    return Err(format!("unexpected series {} {}", format_labels(&sample.labels), sample.value));
                };
                if eval.ordered && position != i {
                    return Err(format!("{} at position {i}, expected at {position}", format_labels(&sample.labels)));
                }
                let want = expected[position].1;
                if !almost_equal(want, sample.value) {
                    return Err(format!("{}: expected {want}, got {}", format_labels(&sample.labels), sample.value));
                }
            }
        }
        Value::Matrix(series) => {
            let times: Vec<i64> = match (eval.range, eval.range_vector) {
                (Some((from, to, step)), _) | (None, Some((from, to, step))) => {
                    (0..).map(|i| from + i * step).take_while(|t| *t <= to).collect()
                }
                (None, None) => return Err("got a range vector; the script expects none".into()),
            };
            let mut expected: BTreeMap<&Labels, Vec<(i64, f64)>> = BTreeMap::new();
            for (labels, points) in &eval.series {
                let values = points.iter().zip(&times).filter_map(|(p, t)| match p {
                    Point::Value(v) => Some((*t, *v)),
                    _ => None,
                });
                expected.entry(labels).or_default().extend(values);
            }
            if eval.range.is_some()
                && let Some(scalar) = eval.scalar
            {
                return Err(format!("expected the scalar {scalar} over a range"));
            }
            let actual: BTreeMap<&Labels, &Vec<(i64, f64)>> = series.iter().map(|(l, p)| (l, p)).collect();
            let got = |labels: &Labels| actual.get(labels).map(|p| p.len()).unwrap_or(0);
            for (labels, points) in &expected {
                let Some(actual) = actual.get(labels) else {
                    return Err(format!("missing series {}", format_labels(labels)));
                };
                if actual.len() != points.len()
                    || actual.iter().zip(points).any(|(a, e)| a.0 != e.0 || !almost_equal(a.1, e.1))
                {
                    return Err(format!(
                        "{}: expected {points:?}, got {actual:?} ({} points)",
                        format_labels(labels),
                        got(labels)
                    ));
                }
            }
            if let Some((labels, points)) = series.iter().find(|(l, _)| !expected.contains_key(l)) {
                return Err(format!("unexpected series {} {points:?}", format_labels(labels)));
            }
        }
    }
    Ok(())
}

fn eval_command(line: &str, number: usize) -> Result<Eval, String> {
    let instant =
        regex::Regex::new(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$").expect("valid");
    let range =
        regex::Regex::new(r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$")
            .expect("valid");
    let mut eval = Eval { line: number, ..Default::default() };
    let modifier = if let Some(parts) = instant.captures(line) {
        eval.at_ms = duration_ms(parts.get(2).map_or("0", |m| m.as_str()))?;
        eval.query = parts[3].to_owned();
        parts.get(1).map(|m| m.as_str().to_owned())
    } else if let Some(parts) = range.captures(line) {
        eval.range = Some((duration_ms(&parts[2])?, duration_ms(&parts[3])?, duration_ms(&parts[4])?));
        eval.query = parts[5].to_owned();
        parts.get(1).map(|m| m.as_str().to_owned())
    } else {
        return Err(format!("line {number}: not an eval command: {line}"));
    };
    match modifier.as_deref() {
        Some("fail") => eval.fail = true,
        Some("ordered") => eval.ordered = true,
        _ => {}
    }
    Ok(eval)
}

/// Runs one script; per evaluation, its line, query and outcome.
fn run_script(text: &str) -> Result<Vec<(usize, String, Outcome)>, String> {
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let l = l.trim();
            if l.starts_with('#') { String::new() } else { l.to_owned() }
        })
        .collect();
    let mut script = Script::default();
    let mut outcomes = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        let command = line.split_whitespace().next().unwrap_or("").to_lowercase();
        if command.is_empty() {
            i += 1;
            continue;
        }
        if command == "clear" {
            script = Script::default();
            i += 1;
            continue;
        }
        // The block of lines that belongs to this command.
        let end = (i + 1..lines.len()).find(|&j| lines[j].is_empty()).unwrap_or(lines.len());
        let body = &lines[i + 1..end];
        if command.starts_with("load") {
            let with_nhcb = command == "load_with_nhcb";
            let step = duration_ms(line.split_whitespace().nth(1).ok_or("load needs a step")?)?;
            // A series defined twice in one block keeps its last definition.
            let mut defined: BTreeMap<Labels, Vec<Point>> = BTreeMap::new();
            for definition in body {
                let (labels, rest) = series_labels(definition)?;
                let Some(points) = series_values(rest)? else {
                    script.histograms.push(labels);
                    continue;
                };
                if with_nhcb && let Some(name) = labels.get(NAME).and_then(|n| n.strip_suffix("_bucket")) {
                    let mut histogram = labels.clone();
                    histogram.remove("le");
                    histogram.insert(NAME.into(), name.to_owned());
                    script.histograms.push(histogram);
                }
                defined.insert(labels, points);
            }
            for (labels, points) in defined {
                for (k, point) in points.iter().enumerate() {
                    let t = k as i64 * step;
                    match point {
                        Point::Missing => {}
                        Point::Stale => script.tsdb.push(&labels, t, f64::from_bits(STALE_BITS)),
                        Point::Value(v) => script.tsdb.push(&labels, t, *v),
                    }
                }
            }
        } else if command.starts_with("eval") {
            let mut eval = eval_command(line, i + 1)?;
            for definition in body {
                if definition.starts_with("expected_fail_message") || definition.starts_with("expected_fail_regexp") {
                    continue;
                }
                if let Some(rest) = definition.strip_prefix("expect range vector ") {
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    let [_from, from, _to, to, _step, step] = words.as_slice() else {
                        return Err(format!("line {}: {definition}", i + 1));
                    };
                    eval.range_vector = Some((duration_ms(from)?, duration_ms(to)?, duration_ms(step)?));
                    continue;
                }
                if let Some(rest) = definition.strip_prefix("expect string ") {
                    let quoted = rest.trim();
                    eval.string = Some(quoted[1..quoted.len() - 1].to_owned());
                    continue;
                }
                if definition.split(' ').next() == Some("expect") {
                    match definition.split_whitespace().nth(1) {
                        Some("fail") => eval.fail = true,
                        Some("ordered") => eval.ordered = true,
                        _ => {}
                    }
                    continue;
                }
                if let Some(value) = scalar(definition) {
                    eval.scalar = Some(value);
                    continue;
                }
                let (labels, rest) = series_labels(definition)?;
                match series_values(rest)? {
                    Some(points) => eval.series.push((labels, points)),
                    None => eval.histograms = true,
                }
            }
            outcomes.push((eval.line, eval.query.clone(), script.run(&eval)));
        } else {
            return Err(format!("line {}: unknown command {line}", i + 1));
        }
        i = end;
    }
    Ok(outcomes)
}

#[test]
fn prometheus_promql_test_scripts_give_prometheus_answers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/promql");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the scripts are missing from {}", dir.display());
    let (mut passed, mut unsupported, mut failures) = (0, 0, Vec::new());
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let outcomes = run_script(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (mut p, mut u, mut f) = (0, 0, 0);
        for (line, query, outcome) in outcomes {
            match outcome {
                Outcome::Passed => p += 1,
                Outcome::Unsupported(reason) => {
                    u += 1;
                    let key = reason.split(':').next().unwrap_or(&reason).to_owned();
                    *reasons.entry(key).or_default() += 1;
                }
                Outcome::Failed(why) => {
                    f += 1;
                    failures.push(format!("{name}:{line}: {query}\n    {why}"));
                }
            }
        }
        println!("{name:<26} {p:>4} passed {u:>4} unsupported {f:>4} failed");
        passed += p;
        unsupported += u;
    }
    println!("all: {passed} passed, {unsupported} unsupported, {} failed", failures.len());
    for (reason, n) in &reasons {
        println!("  unsupported: {n:>4}  {reason}");
    }
    assert!(failures.is_empty(), "{} evaluations differ from Prometheus:\n{}", failures.len(), failures.join("\n"));
    assert!(passed > 500, "too few evaluations ran: {passed}");
}
