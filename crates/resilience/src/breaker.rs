//! Circuit breaker: closed, open, half-open.
//!
//! - **Closed**: calls pass; outcomes are counted. The breaker trips when
//!   `consecutive_failures` calls fail in a row, or when the failure rate
//!   over the sliding window (the last N calls, or the last T of time)
//!   reaches `failure_rate`, once the window holds `minimum_calls`.
//! - **Open**: calls are refused for `open_duration`.
//! - **Half-open**: at most `half_open_max_calls` probes pass at once;
//!   `success_threshold` successes close the breaker, one failure opens it.
//!
//! Only failures that count move it: by default transient, external-service
//! and internal errors. Invalid input and policy violations say nothing
//! about the upstream's health. Outcomes of calls that began in an earlier
//! state are ignored (each transition starts a new generation).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use warden_errors::Category;

use crate::metrics::METRICS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the failure rate is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last N calls.
    Count(u32),
    /// The calls of the last T.
    Time(Duration),
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Trip after this many failures in a row.
    pub consecutive_failures: Option<u32>,
    /// Trip when this share of the window's calls failed (0.0 to 1.0).
    pub failure_rate: Option<f64>,
    pub window: SlidingWindow,
    /// Calls the window must hold before the rate can trip the breaker.
    pub minimum_calls: u32,
    pub open_duration: Duration,
    pub half_open_max_calls: u32,
    pub success_threshold: u32,
    /// Which error categories count as failures.
    pub counts_as_failure: fn(Category) -> bool,
}

fn default_counts(category: Category) -> bool {
    matches!(category, Category::Transient | Category::ExternalService | Category::Internal)
}

impl Default for BreakerConfig {
    /// Trips on 5 failures in a row or on 50% of the last 20 calls (at least
    /// 10); stays open 5 s; 2 probes, 2 successes to close.
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: Some(5),
            failure_rate: Some(0.5),
            window: SlidingWindow::Count(20),
            minimum_calls: 10,
            open_duration: Duration::from_secs(5),
            half_open_max_calls: 2,
            success_threshold: 2,
            counts_as_failure: default_counts,
        }
    }
}

/// A state change, for subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub name: Arc<str>,
    pub from: BreakerState,
    pub to: BreakerState,
}

/// How a call ended, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Neither: the call did not reach the upstream, or its error says
    /// nothing about the upstream's health.
    Ignored,
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

impl State {
    fn public(&self) -> BreakerState {
        match self {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// Outcomes in the sliding window.
#[derive(Debug, Default)]
struct Window {
    /// Count-based: the last outcomes (true = failure).
    recent: std::collections::VecDeque<bool>,
    /// Time-based: (bucket start, calls, failures), oldest first.
    buckets: std::collections::VecDeque<(Instant, u32, u32)>,
}

impl Window {
    fn record(&mut self, kind: SlidingWindow, now: Instant, failed: bool) {
        match kind {
            SlidingWindow::Count(size) => {
                self.recent.push_back(failed);
                while self.recent.len() > size.max(1) as usize {
                    self.recent.pop_front();
                }
            }
            SlidingWindow::Time(span) => {
                let bucket = span / 10;
                match self.buckets.back_mut() {
                    Some((start, calls, failures)) if now.duration_since(*start) < bucket => {
                        *calls += 1;
                        *failures += u32::from(failed);
                    }
                    _ => self.buckets.push_back((now, 1, u32::from(failed))),
                }
            }
        }
    }

    /// (calls, failures) in the window.
    fn totals(&mut self, kind: SlidingWindow, now: Instant) -> (u32, u32) {
        match kind {
            SlidingWindow::Count(_) => {
                (self.recent.len() as u32, self.recent.iter().filter(|failed| **failed).count() as u32)
            }
            SlidingWindow::Time(span) => {
                while self.buckets.front().is_some_and(|(start, _, _)| now.duration_since(*start) >= span) {
                    self.buckets.pop_front();
                }
                self.buckets.iter().fold((0, 0), |(c, f), (_, calls, failures)| (c + calls, f + failures))
            }
        }
    }

    fn clear(&mut self) {
        self.recent.clear();
        self.buckets.clear();
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    generation: u64,
    consecutive_failures: u32,
    window: Window,
}

pub struct CircuitBreaker {
    name: Arc<str>,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    events: broadcast::Sender<StateChange>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker").field("name", &self.name).field("state", &self.state()).finish()
    }
}

/// Permission to make one call; report how it went with [`Permit::record`].
/// Dropping a permit unrecorded counts as [`Outcome::Ignored`].
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    generation: u64,
    probe: bool,
    recorded: bool,
}

impl Permit {
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.record(self.generation, self.probe, outcome);
    }

    /// Records a result, classifying its error by category.
    pub fn record_category(self, error: Option<Category>) {
        let outcome = match error {
            None => Outcome::Success,
            Some(category) if (self.breaker.config.counts_as_failure)(category) => Outcome::Failure,
            Some(_) => Outcome::Ignored,
        };
        self.record(outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.generation, self.probe, Outcome::Ignored);
        }
    }
}

/// The breaker refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub retry_after: Duration,
}

impl CircuitBreaker {
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Arc<CircuitBreaker> {
        let name = name.into();
        let (events, _) = broadcast::channel(64);
        let breaker = CircuitBreaker {
            name,
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                generation: 0,
                consecutive_failures: 0,
                window: Window::default(),
            }),
            events,
        };
        breaker.publish_state(BreakerState::Closed);
        Arc::new(breaker)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state (an expired open state reads as open until the
    /// next call moves it to half-open).
    pub fn state(&self) -> BreakerState {
        self.lock().state.public()
    }

    /// State changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.events.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks to make a call.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Rejected> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let State::Open { until } = inner.state {
            if now < until {
                return Err(Rejected { retry_after: until - now });
            }
            self.transition(&mut inner, State::HalfOpen { in_flight: 0, successes: 0 });
        }
        let generation = inner.generation;
        match &mut inner.state {
            State::Closed => Ok(Permit { breaker: self.clone(), generation, probe: false, recorded: false }),
            State::HalfOpen { in_flight, .. } => {
                if *in_flight >= self.config.half_open_max_calls.max(1) {
                    return Err(Rejected { retry_after: self.config.open_duration.min(Duration::from_secs(1)) });
                }
                *in_flight += 1;
                Ok(Permit { breaker: self.clone(), generation, probe: true, recorded: false })
            }
            State::Open { .. } => unreachable!("open states were handled above"),
        }
    }

    fn record(&self, generation: u64, probe: bool, outcome: Outcome) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.generation != generation {
            // The call began in an earlier state; its outcome is stale.
            return;
        }
        match (&mut inner.state, probe) {
            (State::HalfOpen { in_flight, successes }, true) => {
                *in_flight = in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Ignored => {}
                    Outcome::Success => {
                        *successes += 1;
                        if *successes >= self.config.success_threshold.max(1) {
                            self.transition(&mut inner, State::Closed);
                        }
                    }
                    Outcome::Failure => {
                        let until = now + self.config.open_duration;
                        self.transition(&mut inner, State::Open { until });
                    }
                }
            }
            (State::Closed, false) => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let failed = outcome == Outcome::Failure;
                inner.consecutive_failures = if failed { inner.consecutive_failures + 1 } else { 0 };
                inner.window.record(self.config.window, now, failed);
                let (calls, failures) = inner.window.totals(self.config.window, now);
                let by_streak =
                    self.config.consecutive_failures.is_some_and(|n| inner.consecutive_failures >= n.max(1));
                let by_rate = self.config.failure_rate.is_some_and(|rate| {
                    calls >= self.config.minimum_calls.max(1) && f64::from(failures) / f64::from(calls) >= rate
                });
                if failed && (by_streak || by_rate) {
                    let until = now + self.config.open_duration;
                    self.transition(&mut inner, State::Open { until });
                }
            }
            _ => {}
        }
    }

    fn transition(&self, inner: &mut Inner, to: State) {
        let from = inner.state.public();
        let to_public = to.public();
        inner.state = to;
        inner.generation += 1;
        inner.consecutive_failures = 0;
        inner.window.clear();
        tracing::info!(breaker = %self.name, from = from.as_str(), to = to_public.as_str(), "circuit breaker state changed");
        METRICS.breaker_transitions.with_label_values(&[&*self.name, to_public.as_str()]).inc();
        self.publish_state(to_public);
        let _ = self.events.send(StateChange { name: self.name.clone(), from, to: to_public });
    }

    fn publish_state(&self, current: BreakerState) {
        for state in [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen] {
            METRICS.breaker_state.with_label_values(&[&*self.name, state.as_str()]).set(i64::from(state == current));
        }
    }
}

/// Breakers shared by name, so every caller of one upstream shares one.
#[derive(Debug, Default)]
pub struct BreakerRegistry {
    breakers: Mutex<HashMap<String, Arc<CircuitBreaker>>>,
}

static GLOBAL: LazyLock<BreakerRegistry> = LazyLock::new(BreakerRegistry::default);

impl BreakerRegistry {
    /// The process-wide registry.
    pub fn global() -> &'static BreakerRegistry {
        &GLOBAL
    }

    /// The breaker called `name`, created with `config` if it does not
    /// exist yet (an existing breaker keeps its config).
    pub fn get_or_create(&self, name: &str, config: impl FnOnce() -> BreakerConfig) -> Arc<CircuitBreaker> {
        let mut breakers = self.breakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        breakers.entry(name.to_owned()).or_insert_with(|| CircuitBreaker::new(name, config())).clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<CircuitBreaker>> {
        self.breakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(name).cloned()
    }
}

#[cfg(test)]
mod tests;
