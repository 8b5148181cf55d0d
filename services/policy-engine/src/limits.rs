//! Rate and spend limits: sliding windows counted in memory (one replica)
//! or in Redis (several replicas share one count).
//!
//! Each window is split into [`BUCKETS`] buckets. A check counts the current
//! bucket and the previous [`BUCKETS`] ones, so the counted span is never
//! shorter than the window: a limit can be conservative by at most one
//! bucket (1/30 of the window), never permissive.
//!
//! A charge is all-or-nothing across the limits of one request: when any
//! limit that denies is exceeded, nothing is recorded (the request is denied
//! and "limits count only requests whose outcome is not deny").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use warden_errors::{Category, Classify};

/// How many buckets a window is split into.
pub const BUCKETS: u64 = 30;

/// One limit's share of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// Identifies the counter: limit name, window and partition.
    pub key: String,
    pub window: Duration,
    pub max_requests: Option<u64>,
    pub max_cost: Option<f64>,
    /// The request's cost (its `estimated_cost`).
    pub cost: f64,
    /// Whether exceeding this limit denies the request (and so records nothing).
    pub blocking: bool,
}

impl Charge {
    fn bucket_ms(&self) -> u64 {
        (self.window.as_millis() as u64 / BUCKETS).max(1)
    }

    fn exceeded_by(&self, count: u64, spent: f64) -> bool {
        self.max_requests.is_some_and(|max| count + 1 > max) || self.max_cost.is_some_and(|max| spent + self.cost > max)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    #[error("limit store unavailable: {0}")]
    Unavailable(String),
}

impl Classify for LimitError {
    fn category(&self) -> Category {
        Category::ExternalService
    }
    fn reason(&self) -> &str {
        "LIMIT_STORE_UNAVAILABLE"
    }
}

/// Counts requests and cost per limit.
pub trait LimitStore: Send + Sync + 'static {
    /// Checks every charge and, unless a blocking one is exceeded, records
    /// them all, atomically. Returns which charges are exceeded.
    fn charge<'a>(&'a self, now_ms: u64, charges: &'a [Charge]) -> BoxFuture<'a, Result<Vec<bool>, LimitError>>;

    /// A short name for logs and `GetPolicies`.
    fn kind(&self) -> &'static str;
}

// === In memory ===

#[derive(Debug, Default)]
struct Window {
    bucket_ms: u64,
    /// (bucket id, requests, cost), oldest first.
    buckets: Vec<(u64, u64, f64)>,
}

impl Window {
    fn prune(&mut self, oldest: u64) {
        self.buckets.retain(|(id, _, _)| *id >= oldest);
    }

    fn totals(&self) -> (u64, f64) {
        self.buckets.iter().fold((0, 0.0), |(n, c), (_, dn, dc)| (n + dn, c + dc))
    }
}

/// Limits counted in this process.
#[derive(Debug, Default)]
pub struct MemoryLimitStore {
    windows: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    windows: HashMap<String, Window>,
    charges_since_sweep: u64,
}

impl MemoryLimitStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn charge_now(&self, now_ms: u64, charges: &[Charge]) -> Vec<bool> {
        let mut state = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut exceeded = Vec::with_capacity(charges.len());
        let mut block = false;
        for charge in charges {
            let bucket_ms = charge.bucket_ms();
            let oldest = (now_ms / bucket_ms).saturating_sub(BUCKETS);
            let (count, spent) = match state.windows.get_mut(&charge.key) {
                Some(window) => {
                    window.prune(oldest);
                    window.totals()
                }
                None => (0, 0.0),
            };
            let over = charge.exceeded_by(count, spent);
            block |= over && charge.blocking;
            exceeded.push(over);
        }
        if !block {
            for charge in charges {
                let bucket_ms = charge.bucket_ms();
                let id = now_ms / bucket_ms;
                let window = state
                    .windows
                    .entry(charge.key.clone())
                    .or_insert_with(|| Window { bucket_ms, buckets: Vec::new() });
                match window.buckets.last_mut() {
                    Some((last, n, c)) if *last == id => {
                        *n += 1;
                        *c += charge.cost;
                    }
                    _ => window.buckets.push((id, 1, charge.cost)),
                }
            }
            state.charges_since_sweep += 1;
            if state.charges_since_sweep >= 4096 {
                // Forget partitions (agents) that have gone quiet.
                state.charges_since_sweep = 0;
                state.windows.retain(|_, window| {
                    let oldest = (now_ms / window.bucket_ms).saturating_sub(BUCKETS);
                    window.prune(oldest);
                    !window.buckets.is_empty()
                });
            }
        }
        exceeded
    }
}

impl LimitStore for MemoryLimitStore {
    fn charge<'a>(&'a self, now_ms: u64, charges: &'a [Charge]) -> BoxFuture<'a, Result<Vec<bool>, LimitError>> {
        Box::pin(async move { Ok(self.charge_now(now_ms, charges)) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

// === Redis ===

/// The same algorithm as [`MemoryLimitStore`], run atomically inside Redis.
/// KEYS: one hash per charge. ARGV: now_ms, then per charge: bucket_ms,
/// buckets, max_requests (-1: none), max_cost (-1: none), cost, blocking,
/// ttl_ms. Hash fields are `c:<bucket>` (requests) and `s:<bucket>` (cost).
const CHARGE_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local n = #KEYS
local exceeded = {}
local ids = {}
local block = false
for i = 1, n do
  local base = 1 + (i - 1) * 7
  local bucket_ms = tonumber(ARGV[base + 1])
  local buckets = tonumber(ARGV[base + 2])
  local max_requests = tonumber(ARGV[base + 3])
  local max_cost = tonumber(ARGV[base + 4])
  local cost = tonumber(ARGV[base + 5])
  local id = math.floor(now / bucket_ms)
  ids[i] = id
  local oldest = id - buckets
  local flat = redis.call('HGETALL', KEYS[i])
  local count = 0
  local spent = 0
  for j = 1, #flat, 2 do
    local field = flat[j]
    local bucket = tonumber(string.sub(field, 3))
    if bucket < oldest then
      redis.call('HDEL', KEYS[i], field)
    elseif string.sub(field, 1, 1) == 'c' then
      count = count + tonumber(flat[j + 1])
    else
      spent = spent + tonumber(flat[j + 1])
    end
  end
  local over = (max_requests >= 0 and count + 1 > max_requests) or (max_cost >= 0 and spent + cost > max_cost)
  if over then
    exceeded[i] = 1
    if ARGV[base + 6] == '1' then block = true end
  else
    exceeded[i] = 0
  end
end
if not block then
  for i = 1, n do
    local base = 1 + (i - 1) * 7
    redis.call('HINCRBY', KEYS[i], 'c:' .. ids[i], 1)
    local cost = tonumber(ARGV[base + 5])
    if cost > 0 then
      redis.call('HINCRBYFLOAT', KEYS[i], 's:' .. ids[i], ARGV[base + 5])
    end
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[base + 7]))
  end
end
return exceeded
"#;

/// Limits shared by every replica through one Redis.
pub struct RedisLimitStore {
    /// Timeout and circuit breaker around every Redis round trip: while
    /// Redis is down, limits fail closed at once instead of each request
    /// waiting for a timeout.
    pipeline: warden_resilience::Pipeline,
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisLimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimitStore").field("prefix", &self.prefix).finish()
    }
}

impl RedisLimitStore {
    /// Creates the store; the connection is made on first use, so a Redis
    /// that is down at start makes limits fail closed rather than the
    /// service fail to start.
    pub fn new(url: &str, prefix: impl Into<String>, timeout: Duration) -> Result<Self, LimitError> {
        let client =
            redis::Client::open(url).map_err(|e| LimitError::Unavailable(format!("invalid redis url: {e}")))?;
        let breaker_name = format!("redis-limits:{}", client.get_connection_info().addr);
        let breaker = warden_resilience::BreakerRegistry::global().get_or_create(&breaker_name, || {
            warden_resilience::BreakerConfig {
                consecutive_failures: Some(3),
                failure_rate: None,
                open_duration: Duration::from_secs(1),
                half_open_max_calls: 1,
                success_threshold: 1,
                ..warden_resilience::BreakerConfig::default()
            }
        });
        let pipeline = warden_resilience::Pipeline::builder(breaker_name).breaker(breaker).timeout(timeout).build();
        Ok(RedisLimitStore {
            pipeline,
            client,
            connection: tokio::sync::Mutex::new(None),
            script: redis::Script::new(CHARGE_SCRIPT),
            prefix: prefix.into(),
            timeout,
        })
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, LimitError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config =
            redis::AsyncConnectionConfig::new().set_connection_timeout(self.timeout).set_response_timeout(self.timeout);
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn run(&self, now_ms: u64, charges: &[Charge]) -> Result<Vec<bool>, LimitError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(now_ms);
        for charge in charges {
            let bucket_ms = charge.bucket_ms();
            invocation
                .key(format!("{}{}", self.prefix, charge.key))
                .arg(bucket_ms)
                .arg(BUCKETS)
                .arg(charge.max_requests.map(|n| n as i64).unwrap_or(-1))
                .arg(charge.max_cost.map(|c| c.to_string()).unwrap_or_else(|| "-1".into()))
                .arg(charge.cost.to_string())
                .arg(if charge.blocking { "1" } else { "0" })
                .arg(bucket_ms * (BUCKETS + 2));
        }
        let result: Result<Vec<i64>, redis::RedisError> =
            match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(LimitError::Unavailable(format!("no answer from redis within {:?}", self.timeout)));
                }
            };
        match result {
            Ok(flags) => Ok(flags.into_iter().map(|f| f == 1).collect()),
            Err(error) => {
                if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() {
                    // Reconnect on the next call.
                    *self.connection.lock().await = None;
                }
                Err(LimitError::Unavailable(error.to_string()))
            }
        }
    }
}

impl LimitStore for RedisLimitStore {
    fn charge<'a>(&'a self, now_ms: u64, charges: &'a [Charge]) -> BoxFuture<'a, Result<Vec<bool>, LimitError>> {
        Box::pin(async move {
            self.pipeline.call(|| self.run(now_ms, charges)).await.map_err(|error| match error {
                warden_resilience::ResilienceError::Inner(error) => error,
                // Open breaker or timeout: fail closed with the reason.
                other => LimitError::Unavailable(other.to_string()),
            })
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(key: &str, max: u64, window_secs: u64) -> Charge {
        Charge {
            key: key.into(),
            window: Duration::from_secs(window_secs),
            max_requests: Some(max),
            max_cost: None,
            cost: 0.0,
            blocking: true,
        }
    }

    fn spend(key: &str, max: f64, cost: f64, blocking: bool) -> Charge {
        Charge {
            key: key.into(),
            window: Duration::from_secs(3600),
            max_requests: None,
            max_cost: Some(max),
            cost,
            blocking,
        }
    }

    /// The behaviour both stores must share.
    async fn suite(store: &dyn LimitStore, prefix: &str) {
        let t0 = 1_700_000_000_000u64;
        let rate = requests(&format!("{prefix}rate"), 3, 60);
        for _ in 0..3 {
            assert_eq!(store.charge(t0, std::slice::from_ref(&rate)).await.unwrap(), vec![false]);
        }
        assert_eq!(store.charge(t0 + 1_000, std::slice::from_ref(&rate)).await.unwrap(), vec![true]);
        // Still inside the window.
        assert_eq!(store.charge(t0 + 59_000, std::slice::from_ref(&rate)).await.unwrap(), vec![true]);
        // A window and one bucket later, the first three have expired.
        assert_eq!(store.charge(t0 + 62_001, std::slice::from_ref(&rate)).await.unwrap(), vec![false]);

        // Spend: 40 + 40 fits under 100, the third 40 does not.
        let a = spend(&format!("{prefix}spend"), 100.0, 40.0, true);
        assert_eq!(store.charge(t0, std::slice::from_ref(&a)).await.unwrap(), vec![false]);
        assert_eq!(store.charge(t0, std::slice::from_ref(&a)).await.unwrap(), vec![false]);
        assert_eq!(store.charge(t0, std::slice::from_ref(&a)).await.unwrap(), vec![true]);
        // A smaller one still fits: denied requests were not recorded.
        let small = Charge { cost: 20.0, ..a.clone() };
        assert_eq!(store.charge(t0, std::slice::from_ref(&small)).await.unwrap(), vec![false]);

        // All or nothing: when a blocking limit is exceeded, the other
        // limits of the request are not charged either.
        let tight = requests(&format!("{prefix}tight"), 0, 60);
        let loose = requests(&format!("{prefix}loose"), 1, 60);
        assert_eq!(store.charge(t0, &[loose.clone(), tight.clone()]).await.unwrap(), vec![false, true]);
        assert_eq!(store.charge(t0, std::slice::from_ref(&loose)).await.unwrap(), vec![false]);

        // A non-blocking (require_approval) limit that is exceeded still counts.
        let soft = Charge { blocking: false, ..requests(&format!("{prefix}soft"), 1, 60) };
        assert_eq!(store.charge(t0, std::slice::from_ref(&soft)).await.unwrap(), vec![false]);
        assert_eq!(store.charge(t0, std::slice::from_ref(&soft)).await.unwrap(), vec![true]);
        let soft_and_hard = [soft.clone(), requests(&format!("{prefix}hard"), 2, 60)];
        assert_eq!(store.charge(t0, &soft_and_hard).await.unwrap(), vec![true, false]);
        assert_eq!(store.charge(t0, &soft_and_hard).await.unwrap(), vec![true, false]);
        assert_eq!(store.charge(t0, &soft_and_hard).await.unwrap(), vec![true, true]);
    }

    #[tokio::test]
    async fn memory_store_counts_sliding_windows() {
        suite(&MemoryLimitStore::new(), "").await;
    }

    #[tokio::test]
    async fn redis_store_counts_sliding_windows() {
        let Some(url) = warden_store::testing::external_url("WARDEN_TEST_REDIS_URL", "Redis limit store tests") else {
            return;
        };
        let store = RedisLimitStore::new(&url, "warden-test:limits:", Duration::from_secs(2)).unwrap();
        // A unique prefix per run keeps runs apart in a shared Redis.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        suite(&store, &format!("{}-{nanos}:", std::process::id())).await;
    }

    #[tokio::test]
    async fn an_unreachable_redis_opens_the_breaker_and_fails_fast() {
        // Nothing listens on port 2.
        let store = RedisLimitStore::new("redis://127.0.0.1:2", "x:", Duration::from_millis(300)).unwrap();
        for _ in 0..3 {
            assert!(store.charge(0, &[requests("k", 1, 60)]).await.is_err());
        }
        let error = store.charge(0, &[requests("k", 1, 60)]).await.unwrap_err();
        assert!(error.to_string().contains("circuit breaker 'redis-limits:127.0.0.1:2' is open"), "{error}");
    }

    #[tokio::test]
    async fn redis_store_fails_closed_when_unreachable() {
        // Nothing listens on port 1.
        let store = RedisLimitStore::new("redis://127.0.0.1:1", "x:", Duration::from_millis(500)).unwrap();
        let error = store.charge(0, &[requests("k", 1, 60)]).await.unwrap_err();
        assert!(matches!(error, LimitError::Unavailable(_)));
        assert_eq!(error.category(), Category::ExternalService);
    }
}
