//! In-process decision cost: a 20-rule set, a 200-rule set where each action
//! matches 20 rules, and the same 20 conditions hand-written in Rust as the
//! baseline measured in the same run.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use warden_policy::cel::Input;
use warden_policy::decision::decide_rules;
use warden_policy::fixtures;
use warden_policy::policy::{Source, compile_sources};

fn decide(c: &mut Criterion) {
    let time = chrono::DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let mut group = c.benchmark_group("decide");

    let (agent0, action0) = fixtures::request(0);
    let input0 = Input { agent: &agent0, action: &action0, time, correlation_id: "corr" };
    let small = compile_sources(&[Source { file: "20.yaml".into(), content: fixtures::rule_set(1, 20) }]).unwrap();
    group.bench_function("20_rules", |b| b.iter(|| black_box(decide_rules(&small, black_box(&input0)))));

    let (agent3, action3) = fixtures::request(3);
    let input3 = Input { agent: &agent3, action: &action3, time, correlation_id: "corr" };
    let large = compile_sources(&[Source { file: "200.yaml".into(), content: fixtures::rule_set(10, 20) }]).unwrap();
    group.bench_function("200_rules_20_per_action", |b| b.iter(|| black_box(decide_rules(&large, black_box(&input3)))));

    let baseline = fixtures::HandWritten::default();
    group.bench_function("hand_written_20_conditions", |b| {
        b.iter(|| black_box(baseline.decide(black_box(&agent0), black_box(&action0), time)))
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
