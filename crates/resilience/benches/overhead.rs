//! What the resilience pipeline costs: around a no-op future (against the
//! bare future), and as a tower stack around a loopback unary gRPC call
//! (against the bare channel), measured in the same run.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use warden_errors::WardenError;
use warden_resilience::grpc::ResilienceLayer;
use warden_resilience::{BreakerConfig, Bulkhead, BulkheadConfig, CircuitBreaker, Pipeline, RetryPolicy};

fn full_pipeline(name: &str) -> Pipeline {
    Pipeline::builder(name)
        .retry(RetryPolicy::default())
        .breaker(CircuitBreaker::new(name, BreakerConfig::default()))
        .bulkhead(Bulkhead::new(name, BulkheadConfig::default()))
        .timeout(Duration::from_secs(5))
        .build()
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("resilience");

    let pipeline = full_pipeline("noop");
    group.bench_function("bare_noop_future", |b| {
        b.to_async(&runtime).iter(|| async { std::hint::black_box(async { Ok::<_, WardenError>(1u32) }.await) })
    });
    group.bench_function("pipeline_noop_future", |b| {
        b.to_async(&runtime)
            .iter(|| async { std::hint::black_box(pipeline.call(|| async { Ok::<_, WardenError>(1u32) }).await) })
    });

    let (url, _server) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(
            Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (format!("http://{addr}"), server)
    });
    let channel = runtime.block_on(async { Channel::from_shared(url).unwrap().connect().await.unwrap() });
    let bare = HealthClient::new(channel.clone());
    let layered = HealthClient::new(
        tower::ServiceBuilder::new().layer(ResilienceLayer::new(full_pipeline("grpc"))).service(channel),
    );
    group.bench_function("bare_unary_call", |b| {
        b.to_async(&runtime).iter(|| {
            let mut client = bare.clone();
            async move { client.check(HealthCheckRequest { service: String::new() }).await.unwrap() }
        })
    });
    group.bench_function("layered_unary_call", |b| {
        b.to_async(&runtime).iter(|| {
            let mut client = layered.clone();
            async move { client.check(HealthCheckRequest { service: String::new() }).await.unwrap() }
        })
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
