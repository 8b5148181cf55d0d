//! The errors a resilience pipeline adds to an operation's own.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use warden_errors::{Category, Classify, Code, Severity};

/// An operation's error, or the reason the pipeline did not let it finish.
#[derive(Debug)]
pub enum ResilienceError<E> {
    /// The operation's own error (the last one, after retries).
    Inner(E),
    /// An attempt took longer than its timeout.
    Timeout { after: Duration },
    /// The circuit breaker is open: the call was not attempted.
    CircuitOpen { name: Arc<str>, retry_after: Duration },
    /// The bulkhead's queue was full: the call was not attempted.
    BulkheadFull { name: Arc<str> },
    /// The call waited in the bulkhead's queue for too long.
    BulkheadTimeout { name: Arc<str>, waited: Duration },
}

impl<E> ResilienceError<E> {
    /// The operation's own error, if that is what this is.
    pub fn inner(&self) -> Option<&E> {
        match self {
            ResilienceError::Inner(error) => Some(error),
            _ => None,
        }
    }

    pub fn into_inner(self) -> Option<E> {
        match self {
            ResilienceError::Inner(error) => Some(error),
            _ => None,
        }
    }

    /// Whether the pipeline itself refused the call (breaker or bulkhead),
    /// as opposed to the call failing.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            ResilienceError::CircuitOpen { .. }
                | ResilienceError::BulkheadFull { .. }
                | ResilienceError::BulkheadTimeout { .. }
        )
    }
}

impl<E: fmt::Display> fmt::Display for ResilienceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResilienceError::Inner(error) => error.fmt(f),
            ResilienceError::Timeout { after } => write!(f, "timed out after {after:?}"),
            ResilienceError::CircuitOpen { name, retry_after } => {
                write!(f, "circuit breaker '{name}' is open; retry in {retry_after:?}")
            }
            ResilienceError::BulkheadFull { name } => write!(f, "bulkhead '{name}' is full"),
            ResilienceError::BulkheadTimeout { name, waited } => {
                write!(f, "waited {waited:?} for bulkhead '{name}' without getting in")
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ResilienceError<E> {}

impl<E: Classify> Classify for ResilienceError<E> {
    fn category(&self) -> Category {
        match self {
            ResilienceError::Inner(error) => error.category(),
            // A timeout, an open breaker and a full bulkhead all pass.
            _ => Category::Transient,
        }
    }

    fn severity(&self) -> Severity {
        match self {
            ResilienceError::Inner(error) => error.severity(),
            ResilienceError::CircuitOpen { .. } => Severity::Degraded,
            _ => Severity::Recoverable,
        }
    }

    fn reason(&self) -> &str {
        match self {
            ResilienceError::Inner(error) => error.reason(),
            ResilienceError::Timeout { .. } => "TIMEOUT",
            ResilienceError::CircuitOpen { .. } => "CIRCUIT_OPEN",
            ResilienceError::BulkheadFull { .. } => "BULKHEAD_FULL",
            ResilienceError::BulkheadTimeout { .. } => "BULKHEAD_TIMEOUT",
        }
    }

    fn code(&self) -> Code {
        match self {
            ResilienceError::Inner(error) => error.code(),
            ResilienceError::Timeout { .. } => Code::DeadlineExceeded,
            ResilienceError::BulkheadFull { .. } | ResilienceError::BulkheadTimeout { .. } => Code::ResourceExhausted,
            ResilienceError::CircuitOpen { .. } => Code::Unavailable,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ResilienceError::Inner(error) => error.retry_after(),
            ResilienceError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    fn field_violations(&self) -> &[warden_errors::FieldViolation] {
        match self {
            ResilienceError::Inner(error) => error.field_violations(),
            _ => &[],
        }
    }

    fn retryable(&self) -> bool {
        match self {
            ResilienceError::Inner(error) => error.retryable(),
            _ => true,
        }
    }
}
