//! The layer against a real tonic server that fails on purpose.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use warden_errors::{Category, FieldViolation, WardenError};

use super::*;
use crate::backoff::Backoff;
use crate::breaker::{BreakerConfig, CircuitBreaker, SlidingWindow};
use crate::pipeline::RetryPolicy;

/// Answers `failures` calls with `error`, then SERVING.
struct Flaky {
    calls: Arc<AtomicU32>,
    failures: u32,
    error: WardenError,
}

type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for Flaky {
    async fn check(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= self.failures {
            return Err(self.error.to_status());
        }
        Ok(Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

async fn serve(failures: u32, error: WardenError) -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = HealthServer::new(Flaky { calls: calls.clone(), failures, error });
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), calls)
}

fn client(channel: Channel, pipeline: Pipeline) -> HealthClient<ResilientService<Channel>> {
    HealthClient::new(tower::ServiceBuilder::new().layer(ResilienceLayer::new(pipeline)).service(channel))
}

fn retry(attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts: attempts, deadline: None, backoff: Backoff::constant(Duration::from_millis(1)) }
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest { service: String::new() }
}

#[tokio::test]
async fn unavailable_with_retry_info_is_retried_after_the_servers_delay() {
    let error =
        WardenError::new(Category::Transient, "WARMING_UP", "warming up").with_retry_after(Duration::from_millis(60));
    let (url, calls) = serve(2, error).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut client = client(channel, Pipeline::builder("health").retry(retry(5)).build());
    let started = Instant::now();
    let response = client.check(check()).await.unwrap().into_inner();
    assert_eq!(response.status, ServingStatus::Serving as i32);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Two waits of the server's 60 ms, not the 1 ms backoff.
    assert!(started.elapsed() >= Duration::from_millis(120), "{:?}", started.elapsed());
}

#[tokio::test]
async fn invalid_argument_is_returned_at_once_with_its_details() {
    let error = WardenError::invalid_argument(vec![FieldViolation::new("service", "unknown service")]);
    let (url, calls) = serve(100, error).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut client = client(channel, Pipeline::builder("health").retry(retry(5)).build());
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(WardenError::from_status(&status).violations[0].field, "service");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_open_breaker_answers_unavailable_without_calling() {
    let error = WardenError::new(Category::Transient, "DOWN", "down");
    let (url, calls) = serve(1000, error).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let breaker = CircuitBreaker::new(
        "health-upstream",
        BreakerConfig {
            consecutive_failures: Some(2),
            failure_rate: None,
            window: SlidingWindow::Count(10),
            open_duration: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
    );
    let mut client = client(channel, Pipeline::builder("health").retry(retry(5)).breaker(breaker).build());
    let first = client.check(check()).await.unwrap_err();
    assert_eq!(first.code(), tonic::Code::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the breaker opened after two failed attempts");
    let refused = client.check(check()).await.unwrap_err();
    let classified = WardenError::from_status(&refused);
    assert_eq!(classified.reason, "CIRCUIT_OPEN");
    assert!(classified.retry_after.is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn transport_errors_are_retried_then_reported() {
    // Nothing listens on port 1.
    let channel = Channel::from_static("http://127.0.0.1:1").connect_lazy();
    let mut client = client(channel, Pipeline::builder("nowhere").retry(retry(3)).build());
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
}
