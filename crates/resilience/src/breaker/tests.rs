use std::time::Duration;

use proptest::prelude::*;
use warden_errors::Category;

use super::*;

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: Some(3),
        failure_rate: None,
        window: SlidingWindow::Count(10),
        minimum_calls: 1,
        open_duration: Duration::from_secs(10),
        half_open_max_calls: 2,
        success_threshold: 2,
        ..BreakerConfig::default()
    }
}

fn fail(breaker: &Arc<CircuitBreaker>) {
    breaker.try_acquire().expect("closed").record(Outcome::Failure);
}

fn succeed(breaker: &Arc<CircuitBreaker>) {
    breaker.try_acquire().expect("closed").record(Outcome::Success);
}

#[tokio::test(start_paused = true)]
async fn trips_on_consecutive_failures_and_recovers_through_half_open() {
    let breaker = CircuitBreaker::new("upstream", config());
    let mut events = breaker.subscribe();
    fail(&breaker);
    fail(&breaker);
    succeed(&breaker); // the streak restarts
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), BreakerState::Closed);
    fail(&breaker);
    assert_eq!(breaker.state(), BreakerState::Open);
    let rejected = breaker.try_acquire().unwrap_err();
    assert_eq!(rejected.retry_after, Duration::from_secs(10));

    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(breaker.try_acquire().unwrap_err().retry_after, Duration::from_secs(6));
    tokio::time::advance(Duration::from_secs(6)).await;
    // Half-open: two probes at once, no more.
    let probe_a = breaker.try_acquire().unwrap();
    let probe_b = breaker.try_acquire().unwrap();
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    assert!(breaker.try_acquire().is_err());
    probe_a.record(Outcome::Success);
    let probe_c = breaker.try_acquire().unwrap();
    probe_b.record(Outcome::Success);
    assert_eq!(breaker.state(), BreakerState::Closed);
    // A probe from the half-open generation no longer counts.
    probe_c.record(Outcome::Failure);
    assert_eq!(breaker.state(), BreakerState::Closed);

    let states: Vec<(BreakerState, BreakerState)> =
        std::iter::from_fn(|| events.try_recv().ok()).map(|e| (e.from, e.to)).collect();
    assert_eq!(
        states,
        [
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens() {
    let breaker = CircuitBreaker::new("x", config());
    for _ in 0..3 {
        fail(&breaker);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    breaker.try_acquire().unwrap().record(Outcome::Failure);
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(breaker.try_acquire().unwrap_err().retry_after, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn dropped_probes_free_their_slot() {
    let breaker = CircuitBreaker::new("x", config());
    for _ in 0..3 {
        fail(&breaker);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let a = breaker.try_acquire().unwrap();
    let b = breaker.try_acquire().unwrap();
    drop(a); // a cancelled call
    let c = breaker.try_acquire().expect("the dropped probe's slot is free again");
    drop((b, c));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window_needs_minimum_calls() {
    let breaker = CircuitBreaker::new(
        "rate",
        BreakerConfig {
            consecutive_failures: None,
            failure_rate: Some(0.5),
            window: SlidingWindow::Count(10),
            minimum_calls: 6,
            ..config()
        },
    );
    // 2 failures of 3 calls: 66%, but under the minimum of 6 calls.
    fail(&breaker);
    succeed(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), BreakerState::Closed);
    succeed(&breaker);
    succeed(&breaker);
    fail(&breaker); // 3 of 6: 50%
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failures_age_out_of_a_time_window() {
    let breaker = CircuitBreaker::new(
        "time",
        BreakerConfig {
            consecutive_failures: None,
            failure_rate: Some(0.5),
            window: SlidingWindow::Time(Duration::from_secs(60)),
            minimum_calls: 4,
            ..config()
        },
    );
    fail(&breaker);
    fail(&breaker);
    fail(&breaker);
    tokio::time::advance(Duration::from_secs(61)).await;
    // The old failures are gone: 1 failure in 4 calls.
    succeed(&breaker);
    succeed(&breaker);
    succeed(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), BreakerState::Closed);
    fail(&breaker);
    fail(&breaker); // 3 of 6
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test]
async fn only_failures_that_count_move_it() {
    let breaker = CircuitBreaker::new("classified", config());
    for _ in 0..10 {
        breaker.try_acquire().unwrap().record_category(Some(Category::PolicyViolation));
        breaker.try_acquire().unwrap().record_category(Some(Category::Permanent));
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    for _ in 0..3 {
        breaker.try_acquire().unwrap().record_category(Some(Category::ExternalService));
    }
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[test]
fn the_registry_shares_breakers_by_name() {
    let registry = BreakerRegistry::default();
    let a = registry.get_or_create("redis", config);
    let b = registry.get_or_create("redis", BreakerConfig::default);
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(b.config().consecutive_failures, Some(3));
    assert!(registry.get("other").is_none());
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Record(usize, Outcome),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Acquire),
        3 => (any::<usize>(), prop_oneof![Just(Outcome::Success), Just(Outcome::Failure), Just(Outcome::Ignored)])
            .prop_map(|(i, o)| Op::Record(i, o)),
        1 => (0u64..15_000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn state_machine_invariants(ops in proptest::collection::vec(op(), 1..200), rate in prop::option::of(0.1f64..1.0)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let breaker = CircuitBreaker::new("prop", BreakerConfig { failure_rate: rate, minimum_calls: 3, ..config() });
            let mut events = breaker.subscribe();
            let mut outstanding: Vec<Permit> = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire => {
                        if let Ok(permit) = breaker.try_acquire() {
                            outstanding.push(permit);
                        }
                    }
                    Op::Record(i, outcome) if !outstanding.is_empty() => {
                        let permit = outstanding.remove(i % outstanding.len());
                        permit.record(outcome);
                    }
                    Op::Record(..) => {}
                    Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                }
                // Probes in flight never exceed the half-open limit.
                let inner = breaker.lock();
                if let State::HalfOpen { in_flight, .. } = inner.state {
                    assert!(in_flight <= 2, "{in_flight} probes in flight");
                }
            }
            while let Ok(change) = events.try_recv() {
                let allowed = matches!(
                    (change.from, change.to),
                    (BreakerState::Closed, BreakerState::Open)
                        | (BreakerState::Open, BreakerState::HalfOpen)
                        | (BreakerState::HalfOpen, BreakerState::Open)
                        | (BreakerState::HalfOpen, BreakerState::Closed)
                );
                assert!(allowed, "illegal transition {:?} -> {:?}", change.from, change.to);
            }
        });
    }
}
