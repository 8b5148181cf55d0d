use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use warden_errors::{Category, FieldViolation, WardenError};

use super::*;
use crate::backoff::{Backoff, Jitter};
use crate::breaker::{BreakerConfig, BreakerState, SlidingWindow};
use crate::bulkhead::BulkheadConfig;

fn transient() -> WardenError {
    WardenError::new(Category::Transient, "UPSTREAM_BUSY", "upstream busy")
}

fn constant_retry(attempts: u32, delay_ms: u64) -> RetryPolicy {
    RetryPolicy { max_attempts: attempts, deadline: None, backoff: Backoff::constant(Duration::from_millis(delay_ms)) }
}

/// An operation that fails `failures` times with `error`, then succeeds.
fn flaky(
    failures: u32,
    error: WardenError,
) -> (Arc<AtomicU32>, impl FnMut() -> std::future::Ready<Result<u32, WardenError>>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let op = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(if n <= failures { Err(error.clone()) } else { Ok(n) })
    };
    (calls, op)
}

#[tokio::test(start_paused = true)]
async fn retries_transient_errors_with_backoff() {
    let pipeline = Pipeline::builder("t").retry(constant_retry(4, 100)).build();
    let (calls, op) = flaky(2, transient());
    let started = Instant::now();
    assert_eq!(pipeline.call(op).await.unwrap(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(started.elapsed(), Duration::from_millis(200));

    let (calls, op) = flaky(10, transient());
    let error = pipeline.call(op).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4, "max_attempts counts the first attempt");
    assert_eq!(error.inner().unwrap().reason, "UPSTREAM_BUSY");
}

#[tokio::test(start_paused = true)]
async fn never_retries_policy_violations_or_invalid_input() {
    let pipeline = Pipeline::builder("t").retry(constant_retry(5, 10)).build();
    for error in [
        WardenError::new(Category::PolicyViolation, "DENIED", "denied"),
        WardenError::invalid_argument(vec![FieldViolation::new("agent.id", "must not be empty")]),
        WardenError::new(Category::Permanent, "NOT_FOUND", "no such thing"),
    ] {
        let (calls, op) = flaky(1, error);
        assert!(pipeline.call(op).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn honours_the_servers_retry_delay() {
    let pipeline = Pipeline::builder("t").retry(constant_retry(3, 10)).build();
    let (_, op) = flaky(1, transient().with_retry_after(Duration::from_secs(2)));
    let started = Instant::now();
    pipeline.call(op).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_all_attempts() {
    let retry = RetryPolicy {
        max_attempts: 100,
        deadline: Some(Duration::from_millis(1000)),
        backoff: Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10)).with_jitter(Jitter::None),
    };
    let pipeline = Pipeline::builder("t").retry(retry).build();
    let (calls, op) = flaky(100, transient());
    let started = Instant::now();
    assert!(pipeline.call(op).await.is_err());
    // Delays 100, 200, 400 fit (700 ms); the next (800 ms) would pass the deadline.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(started.elapsed() < Duration::from_millis(1000));
}

#[tokio::test(start_paused = true)]
async fn attempts_time_out_and_timeouts_are_retried() {
    let pipeline = Pipeline::builder("t").retry(constant_retry(3, 0)).timeout(Duration::from_millis(50)).build();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let result = pipeline
        .call(|| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, WardenError>(n)
            }
        })
        .await;
    assert_eq!(result.unwrap(), 2);

    let slow = Pipeline::builder("t").timeout(Duration::from_millis(50)).build();
    let error = slow
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, WardenError>(())
        })
        .await
        .unwrap_err();
    assert!(matches!(error, ResilienceError::Timeout { after } if after == Duration::from_millis(50)));
    assert_eq!(error.category(), Category::Transient);
}

fn breaker(name: &str) -> Arc<CircuitBreaker> {
    CircuitBreaker::new(
        name,
        BreakerConfig {
            consecutive_failures: Some(3),
            failure_rate: None,
            window: SlidingWindow::Count(10),
            open_duration: Duration::from_secs(30),
            ..BreakerConfig::default()
        },
    )
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stops_retries_and_the_fallback_answers() {
    let breaker = breaker("payments");
    let pipeline = Pipeline::builder("payments").retry(constant_retry(10, 10)).breaker(breaker.clone()).build();
    let (calls, op) = flaky(100, transient());
    let answer = pipeline.call_or_else(op, |_| async { Ok(0) }).await.unwrap();
    assert_eq!(answer, 0, "the fallback answered");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the breaker opened after three attempts");
    assert_eq!(breaker.state(), BreakerState::Open);
    let (calls, op) = flaky(0, transient());
    let error = pipeline.call(op).await.unwrap_err();
    assert!(matches!(error, ResilienceError::CircuitOpen { .. }));
    // The breaker opened one backoff delay (10 ms) before the retry found it open.
    assert_eq!(error.retry_after(), Some(Duration::from_millis(29_990)));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing reaches an open breaker's upstream");
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_skip_the_fallback_and_leave_the_breaker_closed() {
    let breaker = breaker("p");
    let pipeline = Pipeline::builder("p").breaker(breaker.clone()).build();
    for _ in 0..5 {
        let (_, op) = flaky(1, WardenError::new(Category::PolicyViolation, "DENIED", "no"));
        let result = pipeline.call_or_else(op, |_| async { Ok(0) }).await;
        assert!(result.is_err());
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_rejections_do_not_trip_the_breaker() {
    let breaker = breaker("b");
    let bulkhead = Bulkhead::new(
        "b",
        BulkheadConfig { max_concurrent: 1, max_queue: 0, queue_timeout: Duration::from_millis(10) },
    );
    let pipeline = Arc::new(Pipeline::builder("b").breaker(breaker.clone()).bulkhead(bulkhead).build());
    let gate = Arc::new(tokio::sync::Notify::new());
    let busy = {
        let (pipeline, gate) = (pipeline.clone(), gate.clone());
        tokio::spawn(async move {
            pipeline
                .call(move || {
                    let gate = gate.clone();
                    async move {
                        gate.notified().await;
                        Ok::<_, WardenError>(())
                    }
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    for _ in 0..5 {
        let error = pipeline.call(|| async { Ok::<_, WardenError>(()) }).await.unwrap_err();
        assert!(matches!(error, ResilienceError::BulkheadFull { .. }));
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    gate.notify_one();
    busy.await.unwrap().unwrap();
}
