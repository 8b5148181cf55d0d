//! A `tower::Layer` that runs every unary gRPC call on a tonic channel
//! through a [`Pipeline`].
//!
//! The request body is buffered once so each attempt can resend it (so use
//! this layer for unary methods, not streams). A failure is either a
//! transport error or a trailers-only response whose `grpc-status` is not
//! OK; it is classified through its google.rpc details (`RetryInfo` sets the
//! retry delay). When the pipeline gives up on a status, the caller gets
//! that status; when the breaker or bulkhead refuses, the caller gets
//! `UNAVAILABLE` / `RESOURCE_EXHAUSTED` with the classification attached.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tonic::Status;
use tonic::body::Body;
use tower::ServiceExt;
use warden_errors::{Category, Classify, Code, WardenError};

use crate::error::ResilienceError;
use crate::pipeline::Pipeline;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps a channel (or any `http` service) in a pipeline.
#[derive(Debug, Clone)]
pub struct ResilienceLayer {
    pipeline: Arc<Pipeline>,
}

impl ResilienceLayer {
    pub fn new(pipeline: Pipeline) -> Self {
        ResilienceLayer { pipeline: Arc::new(pipeline) }
    }
}

impl<S> tower_layer::Layer<S> for ResilienceLayer {
    type Service = ResilientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResilientService { inner, pipeline: self.pipeline.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct ResilientService<S> {
    inner: S,
    pipeline: Arc<Pipeline>,
}

/// One failed attempt.
enum Failure<E> {
    Transport(E),
    Status(Box<(WardenError, http::Response<Body>)>),
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Transport(error) => write!(f, "transport: {error}"),
            Failure::Status(failed) => write!(f, "{:?}: {}", failed.0.code, failed.0.message),
        }
    }
}

impl<E: fmt::Display> Classify for Failure<E> {
    fn category(&self) -> Category {
        match self {
            // Connection refused, reset, DNS: the server may come back.
            Failure::Transport(_) => Category::Transient,
            Failure::Status(failed) => failed.0.category(),
        }
    }
    fn reason(&self) -> &str {
        match self {
            Failure::Transport(_) => "TRANSPORT",
            Failure::Status(failed) => &failed.0.reason,
        }
    }
    fn code(&self) -> Code {
        match self {
            Failure::Transport(_) => Code::Unavailable,
            Failure::Status(failed) => failed.0.code,
        }
    }
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Failure::Transport(_) => None,
            Failure::Status(failed) => failed.0.retry_after,
        }
    }
    fn retryable(&self) -> bool {
        match self {
            Failure::Transport(_) => true,
            Failure::Status(failed) => failed.0.retryable(),
        }
    }
}

fn rebuild(parts: &http::request::Parts, body: &Bytes) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

fn status_response(error: &ResilienceError<impl Classify>) -> http::Response<Body> {
    let status: Status = warden_errors::to_status(error);
    status.into_http()
}

impl<S> tower_service::Service<http::Request<Body>> for ResilientService<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + fmt::Display + Send,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The ready service goes with this call; a fresh clone stays behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let pipeline = self.pipeline.clone();
        Box::pin(async move {
            // Behind a mutex so the future is Send without requiring S: Sync.
            let inner = std::sync::Mutex::new(inner);
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map_err(|e| -> BoxError { Box::new(e) })?.to_bytes();
            let result = pipeline
                .call(|| {
                    let service = inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
                    let request = rebuild(&parts, &body);
                    async move {
                        let response = service.oneshot(request).await.map_err(Failure::Transport)?;
                        match Status::from_header_map(response.headers()) {
                            Some(status) if status.code() != tonic::Code::Ok => {
                                Err(Failure::Status(Box::new((WardenError::from_status(&status), response))))
                            }
                            _ => Ok(response),
                        }
                    }
                })
                .await;
            match result {
                Ok(response) => Ok(response),
                Err(ResilienceError::Inner(Failure::Status(failed))) => Ok(failed.1),
                Err(ResilienceError::Inner(Failure::Transport(error))) => Err(error.into()),
                Err(other) => Ok(status_response(&other)),
            }
        })
    }
}

#[cfg(test)]
mod tests;
