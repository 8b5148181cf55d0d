//! Runs the `decide` benchmark's 20-rule decision N times (the first
//! argument), for counting instructions with a tool whose counts do not
//! depend on the machine's load:
//!
//! ```sh
//! cargo build --release -p warden-policy --example decide_loop
//! for n in 0 20000; do valgrind --tool=callgrind target/release/examples/decide_loop $n; done
//! ```
//!
//! (instructions at 20000 - instructions at 0) / 20000 is the cost of one
//! decision.

use std::hint::black_box;

use warden_policy::cel::Input;
use warden_policy::decision::decide_rules;
use warden_policy::fixtures;
use warden_policy::policy::{Source, compile_sources};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    let time = chrono::DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z").expect("a timestamp").to_utc();
    let (agent, action) = fixtures::request(0);
    let input = Input { agent: &agent, action: &action, time, correlation_id: "corr" };
    let set = compile_sources(&[Source { file: "20.yaml".into(), content: fixtures::rule_set(1, 20) }])
        .expect("the benchmark's rule set loads");
    for _ in 0..n {
        black_box(decide_rules(&set, black_box(&input)));
    }
}
