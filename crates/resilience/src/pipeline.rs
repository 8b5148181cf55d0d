//! Composition: one call through fallback, retry, circuit breaker,
//! bulkhead and timeout.
//!
//! The order, outermost first, and why:
//!
//! 1. **Fallback** sees the final outcome and answers for it.
//! 2. **Retry** wraps the rest, so every attempt is a fresh pass through
//!    the breaker and bulkhead.
//! 3. **Circuit breaker** records every attempt: a failing upstream trips it
//!    after N attempts rather than N × max_attempts calls, and once it is
//!    open the retry loop stops at once (an open breaker is never retried
//!    inside the pipeline: failing fast is its point).
//! 4. **Bulkhead** inside the breaker, so its rejections (our overload, not
//!    the upstream's) are recorded as ignored, never as upstream failures.
//! 5. **Timeout** innermost, per attempt, capped by what is left of the
//!    retry deadline; a timeout is a transient failure.
//!
//! This is Polly v8's recommended order with the bulkhead added where it
//! cannot poison the breaker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use warden_errors::{Category, Classify};

use crate::backoff::Backoff;
use crate::breaker::CircuitBreaker;
use crate::bulkhead::{Bulkhead, BulkheadRejection};
use crate::error::ResilienceError;
use crate::metrics::METRICS;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The time the whole call (all attempts and delays) may take.
    pub deadline: Option<Duration>,
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms doubling with equal jitter, no overall deadline.
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, deadline: None, backoff: Backoff::default() }
    }
}

fn default_fallback_on(category: Category) -> bool {
    matches!(category, Category::Transient | Category::ExternalService | Category::Internal)
}

/// A named set of resilience policies to run calls through.
#[derive(Debug, Clone)]
pub struct Pipeline {
    name: Arc<str>,
    retry: Option<RetryPolicy>,
    breaker: Option<Arc<CircuitBreaker>>,
    bulkhead: Option<Arc<Bulkhead>>,
    timeout: Option<Duration>,
    fallback_on: fn(Category) -> bool,
}

#[derive(Debug, Clone)]
pub struct PipelineBuilder {
    pipeline: Pipeline,
}

impl PipelineBuilder {
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.pipeline.retry = Some(retry);
        self
    }

    /// Shares `breaker` (from a [`crate::BreakerRegistry`]) with every other
    /// pipeline that calls the same upstream.
    pub fn breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.pipeline.breaker = Some(breaker);
        self
    }

    pub fn bulkhead(mut self, bulkhead: Arc<Bulkhead>) -> Self {
        self.pipeline.bulkhead = Some(bulkhead);
        self
    }

    /// The time one attempt may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.pipeline.timeout = Some(timeout);
        self
    }

    /// Which error categories [`Pipeline::call_or_else`] falls back on
    /// (default: transient, external service and internal).
    pub fn fallback_on(mut self, categories: fn(Category) -> bool) -> Self {
        self.pipeline.fallback_on = categories;
        self
    }

    pub fn build(self) -> Pipeline {
        self.pipeline
    }
}

impl Pipeline {
    pub fn builder(name: impl Into<Arc<str>>) -> PipelineBuilder {
        PipelineBuilder {
            pipeline: Pipeline {
                name: name.into(),
                retry: None,
                breaker: None,
                bulkhead: None,
                timeout: None,
                fallback_on: default_fallback_on,
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.breaker.as_ref()
    }

    /// Runs `operation` (called once per attempt) through the pipeline.
    pub async fn call<T, E, F, Fut>(&self, mut operation: F) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        let started = Instant::now();
        let retry = self.retry.as_ref();
        let max_attempts = retry.map(|r| r.max_attempts.max(1)).unwrap_or(1);
        let deadline = retry.and_then(|r| r.deadline);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let remaining = deadline.map(|d| d.saturating_sub(started.elapsed()));
            let error = match self.attempt(&mut operation, remaining).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some(retry) = retry else {
                return Err(error);
            };
            if !error.retryable() || matches!(error, ResilienceError::CircuitOpen { .. }) {
                return Err(error);
            }
            if attempt >= max_attempts {
                METRICS.retries.with_label_values(&[&*self.name, "exhausted"]).inc();
                return Err(error);
            }
            // The server's hint (RetryInfo, Retry-After) wins when longer.
            let delay = retry.backoff.delay(attempt).max(error.retry_after().unwrap_or_default());
            if deadline.is_some_and(|d| started.elapsed() + delay >= d) {
                METRICS.retries.with_label_values(&[&*self.name, "gave_up"]).inc();
                return Err(error);
            }
            METRICS.retries.with_label_values(&[&*self.name, "retried"]).inc();
            tracing::debug!(pipeline = %self.name, attempt, delay_ms = delay.as_millis() as u64, error = %error, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Like [`Pipeline::call`], answering with `fallback` when the call fails
    /// with an error of a category the pipeline falls back on.
    pub async fn call_or_else<T, E, F, Fut, G, GFut>(&self, operation: F, fallback: G) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
        G: FnOnce(ResilienceError<E>) -> GFut,
        GFut: Future<Output = Result<T, ResilienceError<E>>>,
    {
        match self.call(operation).await {
            Ok(value) => Ok(value),
            Err(error) if (self.fallback_on)(error.category()) => {
                METRICS.fallbacks.with_label_values(&[&*self.name]).inc();
                tracing::warn!(pipeline = %self.name, error = %error, "using fallback");
                fallback(error).await
            }
            Err(error) => Err(error),
        }
    }

    async fn attempt<T, E, F, Fut>(
        &self,
        operation: &mut F,
        remaining: Option<Duration>,
    ) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        let permit = match &self.breaker {
            Some(breaker) => Some(breaker.try_acquire().map_err(|rejected| ResilienceError::CircuitOpen {
                name: Arc::from(breaker.name()),
                retry_after: rejected.retry_after,
            })?),
            None => None,
        };
        let slot = match &self.bulkhead {
            Some(bulkhead) => match bulkhead.acquire().await {
                Ok(slot) => Some(slot),
                // Dropping the breaker permit records the call as ignored.
                Err(BulkheadRejection::Full) => {
                    return Err(ResilienceError::BulkheadFull { name: bulkhead.name().clone() });
                }
                Err(BulkheadRejection::Timeout(waited)) => {
                    return Err(ResilienceError::BulkheadTimeout { name: bulkhead.name().clone(), waited });
                }
            },
            None => None,
        };
        let timeout = match (self.timeout, remaining) {
            (Some(t), Some(r)) => Some(t.min(r)),
            (t, r) => t.or(r),
        };
        let result = match timeout {
            Some(limit) => match tokio::time::timeout(limit, operation()).await {
                Ok(result) => result.map_err(ResilienceError::Inner),
                Err(_) => {
                    METRICS.timeouts.with_label_values(&[&*self.name]).inc();
                    Err(ResilienceError::Timeout { after: limit })
                }
            },
            None => operation().await.map_err(ResilienceError::Inner),
        };
        drop(slot);
        if let Some(permit) = permit {
            permit.record_category(result.as_ref().err().map(|error| error.category()));
        }
        result
    }
}

#[cfg(test)]
mod tests;
