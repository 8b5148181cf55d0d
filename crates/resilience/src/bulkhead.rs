//! Bulkhead: at most N calls at once, a bounded queue behind them, and a
//! bounded wait in the queue. A rejection is an immediate, classified error,
//! never a hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::METRICS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadConfig {
    pub max_concurrent: usize,
    /// Calls that may wait for a slot; more are refused at once.
    pub max_queue: usize,
    /// How long a queued call waits before it is refused.
    pub queue_timeout: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        BulkheadConfig { max_concurrent: 64, max_queue: 256, queue_timeout: Duration::from_secs(1) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkheadRejection {
    Full,
    Timeout(Duration),
}

#[derive(Debug)]
pub struct Bulkhead {
    name: Arc<str>,
    config: BulkheadConfig,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
}

impl Bulkhead {
    pub fn new(name: impl Into<Arc<str>>, config: BulkheadConfig) -> Arc<Bulkhead> {
        Arc::new(Bulkhead {
            name: name.into(),
            slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            queued: AtomicUsize::new(0),
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.config.max_concurrent.max(1) - self.slots.available_permits()
    }

    /// Waits for a slot; the slot is held until the permit is dropped.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, BulkheadRejection> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Join the queue only if there is room in it.
        let joined = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.config.max_queue).then_some(queued + 1)
            })
            .is_ok();
        if !joined {
            METRICS.bulkhead_rejections.with_label_values(&[&*self.name, "full"]).inc();
            return Err(BulkheadRejection::Full);
        }
        let waited = tokio::time::timeout(self.config.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout anyway.
            Ok(Err(_)) | Err(_) => {
                METRICS.bulkhead_rejections.with_label_values(&[&*self.name, "timeout"]).inc();
                Err(BulkheadRejection::Timeout(self.config.queue_timeout))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_n_in_flight_under_a_thousand_callers() {
        let bulkhead = Bulkhead::new(
            "db",
            BulkheadConfig { max_concurrent: 8, max_queue: 1000, queue_timeout: Duration::from_secs(30) },
        );
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (bulkhead, running, peak) = (bulkhead.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = bulkhead.acquire().await.expect("queue is large enough");
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 8, "peak {}", peak.load(Ordering::SeqCst));
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_rejects_at_once_and_a_long_wait_times_out() {
        let bulkhead = Bulkhead::new(
            "x",
            BulkheadConfig { max_concurrent: 1, max_queue: 1, queue_timeout: Duration::from_millis(500) },
        );
        let held = bulkhead.acquire().await.unwrap();
        let waiter = {
            let bulkhead = bulkhead.clone();
            tokio::spawn(async move { bulkhead.acquire().await.map(drop) })
        };
        tokio::task::yield_now().await;
        // One waits in the queue; the next is refused without waiting.
        assert_eq!(bulkhead.acquire().await.unwrap_err(), BulkheadRejection::Full);
        tokio::time::advance(Duration::from_millis(501)).await;
        assert_eq!(waiter.await.unwrap().unwrap_err(), BulkheadRejection::Timeout(Duration::from_millis(500)));
        drop(held);
        assert!(bulkhead.acquire().await.is_ok());
    }
}
