//! Delays between attempts: exponential, linear or constant growth, capped,
//! with optional jitter.

use std::time::Duration;

use rand::Rng;

/// How the delay grows with the attempt number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Growth {
    /// `initial * factor^(n-1)`.
    Exponential { factor: f64 },
    /// `initial * n`.
    Linear,
    /// `initial`.
    Constant,
}

/// How randomness spreads the delay (so clients do not retry in lockstep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    None,
    /// Uniform in `[0, d]`.
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub growth: Growth,
    pub max_delay: Duration,
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s, equal jitter.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            growth: Growth::Exponential { factor: 2.0 },
            max_delay: Duration::from_secs(10),
            jitter: Jitter::Equal,
        }
    }
}

impl Backoff {
    pub fn exponential(initial: Duration, max_delay: Duration) -> Self {
        Backoff { initial, growth: Growth::Exponential { factor: 2.0 }, max_delay, jitter: Jitter::Equal }
    }

    pub fn linear(initial: Duration, max_delay: Duration) -> Self {
        Backoff { initial, growth: Growth::Linear, max_delay, jitter: Jitter::Equal }
    }

    pub fn constant(delay: Duration) -> Self {
        Backoff { initial: delay, growth: Growth::Constant, max_delay: delay, jitter: Jitter::None }
    }

    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before retry number `retry` (1 = the first retry), before
    /// jitter, capped at `max_delay`.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let retry = retry.max(1);
        let initial = self.initial.as_secs_f64();
        let seconds = match self.growth {
            Growth::Exponential { factor } => initial * factor.max(1.0).powi(retry.saturating_sub(1).min(1000) as i32),
            Growth::Linear => initial * f64::from(retry),
            Growth::Constant => initial,
        };
        let capped = seconds.min(self.max_delay.as_secs_f64());
        if capped.is_finite() && capped >= 0.0 { Duration::from_secs_f64(capped) } else { self.max_delay }
    }

    /// The delay with jitter applied, using `rng`.
    pub fn delay_with(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let base = self.base_delay(retry);
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => base.mul_f64(rng.random::<f64>()),
            Jitter::Equal => base / 2 + (base / 2).mul_f64(rng.random::<f64>()),
        }
    }

    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, &mut rand::rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn growth_shapes() {
        let ms = Duration::from_millis;
        let exponential = Backoff::exponential(ms(100), ms(1000)).with_jitter(Jitter::None);
        assert_eq!(
            (1..=6).map(|n| exponential.delay(n)).collect::<Vec<_>>(),
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        let linear = Backoff::linear(ms(100), ms(250)).with_jitter(Jitter::None);
        assert_eq!((1..=4).map(|n| linear.delay(n)).collect::<Vec<_>>(), [ms(100), ms(200), ms(250), ms(250)]);
        let constant = Backoff::constant(ms(70));
        assert_eq!((1..=3).map(|n| constant.delay(n)).collect::<Vec<_>>(), [ms(70); 3]);
    }

    fn any_growth() -> impl Strategy<Value = Growth> {
        prop_oneof![
            (1.0f64..4.0).prop_map(|factor| Growth::Exponential { factor }),
            Just(Growth::Linear),
            Just(Growth::Constant)
        ]
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)]
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(
            initial_ms in 0u64..5_000,
            max_ms in 0u64..60_000,
            growth in any_growth(),
            jitter in any_jitter(),
            retry in 1u32..200,
            seed in any::<u64>(),
        ) {
            use rand::SeedableRng;
            let backoff = Backoff {
                initial: Duration::from_millis(initial_ms),
                growth,
                max_delay: Duration::from_millis(max_ms),
                jitter,
            };
            let base = backoff.base_delay(retry);
            prop_assert!(base <= backoff.max_delay);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let delay = backoff.delay_with(retry, &mut rng);
            match jitter {
                Jitter::None => prop_assert_eq!(delay, base),
                Jitter::Full => prop_assert!(delay <= base),
                Jitter::Equal => prop_assert!(delay >= base / 2 && delay <= base),
            }
        }

        #[test]
        fn base_delays_never_shrink(initial_ms in 1u64..1_000, max_ms in 1u64..100_000, growth in any_growth(), retry in 1u32..100) {
            let backoff = Backoff { initial: Duration::from_millis(initial_ms), growth, max_delay: Duration::from_millis(max_ms), jitter: Jitter::None };
            prop_assert!(backoff.base_delay(retry + 1) >= backoff.base_delay(retry));
        }
    }
}
