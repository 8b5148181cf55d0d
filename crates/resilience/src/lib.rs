//! Resilience policies for calls that can fail: retry with backoff and
//! jitter, per-attempt timeout, circuit breaker, bulkhead and fallback,
//! composed in one [`Pipeline`] and driven by the error classification of
//! `warden-errors` (the policies ask the error whether it is retryable and
//! how long to wait; they never guess from messages).
//!
//! Two ways in: the plain async API ([`Pipeline::call`]) for any future, and
//! [`grpc::ResilienceLayer`], a `tower::Layer` for tonic channels.
//!
//! This crate knows no Warden service.

pub mod backoff;
pub mod breaker;
pub mod bulkhead;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod pipeline;

pub use backoff::{Backoff, Growth, Jitter};
pub use breaker::{BreakerConfig, BreakerRegistry, BreakerState, CircuitBreaker, Outcome, SlidingWindow, StateChange};
pub use bulkhead::{Bulkhead, BulkheadConfig};
pub use error::ResilienceError;
pub use pipeline::{Pipeline, PipelineBuilder, RetryPolicy};
