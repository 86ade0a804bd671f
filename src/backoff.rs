//! Exponential backoff with full jitter: the one backoff shape shared by
//! retries (between attempts) and discovery (after a failed refresh).

use std::time::Duration;

use rand::RngExt;

/// Exponential backoff with full jitter.
///
/// ```
/// use palisade::backoff::Backoff;
/// use std::time::Duration;
///
/// let b = Backoff::new(Duration::from_millis(25), Duration::from_millis(250));
/// assert!(b.delay(1) <= Duration::from_millis(25));
/// assert!(b.delay(10) <= Duration::from_millis(250));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Backoff starting at `base`, doubling per retry, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap }
    }

    /// A random delay before retry number `retry` (1 for the first retry):
    /// uniform between zero and `min(cap, base × 2^(retry − 1))`.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1 << exp).min(self.cap);
        if ceiling.is_zero() {
            return Duration::ZERO;
        }
        let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}
