//! Throttling of bad credentials, on every surface (gRPC, the inbox's
//! sign-in, Alertmanager's API): a source address, or a key id, that
//! presents more than `bad_credentials_per_minute` bad credentials waits
//! before it is heard again (`RESOURCE_EXHAUSTED` / HTTP 429 with a retry
//! delay).
//!
//! A blocked source address is refused before its credential is even
//! checked, so guessing costs the guesser time and the service nothing. A
//! key id is only ever slowed for bad secrets: knowing a key's id (it is
//! not secret) cannot lock its holder out, because a good secret is
//! checked before the key id's budget is charged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{Quota, RateLimiter};

use crate::TokioClock;

type Keyed<K> = RateLimiter<
    K,
    governor::state::keyed::DefaultKeyedStateStore<K>,
    TokioClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// Most blocked sources remembered; past it, expired entries are dropped.
const MAX_BLOCKED: usize = 100_000;

pub struct CredentialThrottle {
    by_source: Keyed<IpAddr>,
    by_key: Keyed<String>,
    /// Sources refused until this instant of `clock`.
    blocked: Mutex<HashMap<IpAddr, Duration>>,
    clock: TokioClock,
}

impl std::fmt::Debug for CredentialThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialThrottle").finish_non_exhaustive()
    }
}

impl CredentialThrottle {
    pub fn new(per_minute: u32, clock: TokioClock) -> CredentialThrottle {
        let per_minute = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
        let quota = Quota::per_minute(per_minute).allow_burst(per_minute);
        CredentialThrottle {
            by_source: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            by_key: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            blocked: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn now(&self) -> Duration {
        use governor::clock::Clock;
        self.clock.now()
    }

    /// How long `source` must still wait, when it is blocked.
    pub fn blocked(&self, source: Option<IpAddr>) -> Option<Duration> {
        let source = source?;
        let now = self.now();
        let blocked = self.blocked.lock().expect("not poisoned");
        blocked.get(&source).filter(|until| **until > now).map(|until| *until - now)
    }

    /// Charges one bad credential to `source` and to `key_id` (when the
    /// credential named one). Returns how long to wait when either is now
    /// over its budget; the source is then blocked for that long.
    pub fn failed(&self, source: Option<IpAddr>, key_id: &str) -> Option<Duration> {
        use governor::clock::Clock;
        let now = self.clock.now();
        let over_source = source.and_then(|s| self.by_source.check_key(&s).err()).map(|n| n.wait_time_from(now));
        let over_key = (!key_id.is_empty())
            .then(|| self.by_key.check_key(&key_id.to_owned()).err())
            .flatten()
            .map(|n| n.wait_time_from(now));
        let wait = over_source.max(over_key)?.max(Duration::from_secs(1));
        if let Some(source) = source {
            let mut blocked = self.blocked.lock().expect("not poisoned");
            if blocked.len() >= MAX_BLOCKED {
                blocked.retain(|_, until| *until > now);
                self.by_source.retain_recent();
                self.by_key.retain_recent();
            }
            blocked.insert(source, now + wait);
        }
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_guessing_source_waits_and_others_do_not() {
        let throttle = CredentialThrottle::new(3, TokioClock { start: tokio::time::Instant::now() });
        let (guesser, other) = (Some("10.0.0.1".parse().unwrap()), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(throttle.failed(guesser, ""), None);
        assert_eq!(throttle.failed(guesser, ""), None);
        assert_eq!(throttle.failed(guesser, ""), None);
        let wait = throttle.failed(guesser, "").expect("over budget");
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(throttle.blocked(guesser).is_some());
        assert_eq!(throttle.blocked(other), None);
        // After the wait it is heard again.
        tokio::time::advance(wait).await;
        assert_eq!(throttle.blocked(guesser), None);
    }

    #[tokio::test(start_paused = true)]
    async fn guesses_at_one_key_from_many_sources_are_slowed_too() {
        let throttle = CredentialThrottle::new(2, TokioClock { start: tokio::time::Instant::now() });
        let results: Vec<_> = (1..=4u8).map(|i| throttle.failed(Some(IpAddr::from([10, 0, 0, i])), "key1")).collect();
        assert_eq!(results[..2], [None, None]);
        assert!(results[2].is_some() && results[3].is_some(), "{results:?}");
        // Another key is not affected.
        assert_eq!(throttle.failed(Some(IpAddr::from([10, 0, 1, 1])), "key2"), None);
    }
}
