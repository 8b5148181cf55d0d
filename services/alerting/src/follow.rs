//! Following the audit log: `Subscribe` from the stored position, each
//! record applied once to the derived series, resubscribing with backoff
//! when the stream ends (a restart of either side).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use warden_proto::audit::v1::SubscribeRequest;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_resilience::Backoff;

use crate::engine::Engine;
use crate::metrics::METRICS;

pub type SubscribeClient = AuditServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, warden_auth::CallCredentials>,
>;

/// Records applied under one lock.
const BATCH: usize = 512;

/// How long the stream may be quiet before the log counts as read.
const IDLE: Duration = Duration::from_millis(500);

pub async fn follow(engine: Arc<Engine>, client: SubscribeClient) {
    let backoff = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(10));
    let mut failures = 0u32;
    loop {
        let from = engine.state.lock().await.derived.position;
        match client.clone().subscribe(SubscribeRequest { from_sequence: from }).await {
            Ok(response) => {
                tracing::info!(from, "following the audit log");
                let mut stream = response.into_inner().ready_chunks(BATCH);
                loop {
                    // A quiet stream means the log has been read to its end.
                    let batch = match tokio::time::timeout(IDLE, stream.next()).await {
                        Err(_) => {
                            engine.caught_up.store(true, Ordering::Relaxed);
                            continue;
                        }
                        Ok(None) => break,
                        Ok(Some(batch)) => batch,
                    };
                    failures = 0;
                    let full = batch.len() == BATCH;
                    let mut ended = None;
                    {
                        let mut state = engine.state.lock().await;
                        for item in batch {
                            match item {
                                Ok(record) if record.sequence >= state.derived.position => {
                                    state.derived.apply_before(&record, engine.clock.now_ms());
                                    METRICS.events.inc();
                                }
                                Ok(_) => {}
                                Err(status) => {
                                    ended = Some(status);
                                    break;
                                }
                            }
                        }
                        METRICS.position.set(state.derived.position as i64);
                        METRICS.series.set(state.derived.tsdb.series_count() as i64);
                    }
                    if !full {
                        engine.caught_up.store(true, Ordering::Relaxed);
                    }
                    if let Some(status) = ended {
                        tracing::warn!(code = ?status.code(), message = status.message(), "audit stream ended; resubscribing");
                        break;
                    }
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot follow the audit log; will retry");
            }
        }
        tokio::time::sleep(backoff.delay(failures.min(16))).await;
        failures += 1;
    }
}
