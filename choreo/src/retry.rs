//! Retry policies.

use std::borrow::Cow;
use std::time::Duration;

/// How a handler's transient failures are retried.
///
/// Each delivery of a message runs the handler up to `1 + immediate` times, with a short
/// jittered pause between runs. When those runs fail, the message moves to the next delayed
/// tier and comes back after the tier's delay; messages behind it are not held up. After the
/// last tier the message goes to the handler's poison queue.
///
/// The default is two immediate retries (pause 50 ms, ±50% jitter) and tiers of 1 s, 10 s
/// and 60 s: twelve runs in all, spread over a little more than a minute.
///
/// ```
/// use std::time::Duration;
/// use choreo::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .immediate(1)
///     .delays([Duration::from_secs(5), Duration::from_secs(30)]);
/// assert_eq!(policy.max_attempts(), 6);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    immediate: u32,
    pause: Duration,
    delays: Cow<'static, [Duration]>,
}

const DEFAULT_DELAYS: &[Duration] = &[
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
];

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            immediate: 2,
            pause: Duration::from_millis(50),
            delays: Cow::Borrowed(DEFAULT_DELAYS),
        }
    }
}

impl RetryPolicy {
    /// No retries at all: the first failure poisons the message.
    pub const fn none() -> Self {
        Self {
            immediate: 0,
            pause: Duration::ZERO,
            delays: Cow::Borrowed(&[]),
        }
    }

    /// Sets how many times a delivery is retried at once before it moves to a delayed tier.
    #[must_use]
    pub fn immediate(mut self, retries: u32) -> Self {
        self.immediate = retries;
        self
    }

    /// Sets the mean pause between immediate retries; each pause is jittered by ±50%.
    #[must_use]
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// Sets the delayed tiers, in order. An empty list poisons after the immediate retries.
    #[must_use]
    pub fn delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.delays = Cow::Owned(delays.into_iter().collect());
        self
    }

    /// Immediate retries per delivery.
    pub fn immediate_retries(&self) -> u32 {
        self.immediate
    }

    /// The delayed tiers.
    pub fn tiers(&self) -> &[Duration] {
        &self.delays
    }

    /// The most times a handler runs for one message.
    pub fn max_attempts(&self) -> u32 {
        (1 + self.immediate).saturating_mul(1 + self.delays.len() as u32)
    }

    /// A pause before an immediate retry, jittered by ±50%.
    pub(crate) fn jittered_pause(&self) -> Duration {
        if self.pause.is_zero() {
            return Duration::ZERO;
        }
        self.pause.mul_f64(0.5 + fastrand::f64())
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(zero) = self.delays.iter().position(Duration::is_zero) {
            return Err(format!(
                "delay of tier {} is zero; tiers must be longer than zero (use immediate retries for no delay)",
                zero + 1
            ));
        }
        if self.pause > Duration::from_secs(5) {
            return Err(format!(
                "immediate pause {:?} holds the message in memory; keep it under 5 s and use delayed tiers for longer waits",
                self.pause
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_the_design() {
        let p = RetryPolicy::default();
        assert_eq!(p.immediate_retries(), 2);
        assert_eq!(
            p.tiers(),
            &[
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60)
            ]
        );
        assert_eq!(p.max_attempts(), 12);
        assert_eq!(RetryPolicy::none().max_attempts(), 1);
    }

    #[test]
    fn jitter_stays_within_half() {
        let p = RetryPolicy::default().pause(Duration::from_millis(100));
        for _ in 0..1000 {
            let d = p.jittered_pause();
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150));
        }
    }

    #[test]
    fn zero_tier_is_rejected() {
        let p = RetryPolicy::default().delays([Duration::from_secs(1), Duration::ZERO]);
        assert!(p.validate().unwrap_err().contains("tier 2"));
    }
}
