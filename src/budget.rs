//! A retry budget with Finagle's semantics.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::rolling::RollingCount;

/// How many retries a client may make: a share of its recent requests plus a
/// floor for quiet periods. One budget is shared by every clone of a client.
///
/// Each original request *deposits* one token; each retry *withdraws* one.
/// Over the last [`ttl`](RetryBudget::new) a retry is allowed while
///
/// ```text
/// withdrawals < ratio × deposits + min_per_sec × ttl
/// ```
///
/// so at a steady rate `r` the retries per request stay below
/// `ratio + min_per_sec / r`, however badly the backends fail. The defaults,
/// as in Finagle, are a ratio of 0.2, 10 retries a second and a 10 s ttl.
///
/// ```
/// use palisade::retry::RetryBudget;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // No floor: one retry per five requests.
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw(), "the third retry in ten requests is refused");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ratio: f64,
    /// `min_per_sec × ttl`: retries allowed in any window regardless of
    /// traffic.
    reserve: f64,
    deposits: RollingCount,
    withdrawals: RollingCount,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl RetryBudget {
    /// A budget over a window of `ttl`, allowing `min_per_sec` retries a
    /// second plus `ratio` retries per request. A ratio that is negative or
    /// not finite is taken as 0; a ttl under 10 ms as 10 ms.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Self {
        let ttl = ttl.max(Duration::from_millis(10));
        let ratio = if ratio.is_finite() {
            ratio.max(0.0)
        } else {
            0.0
        };
        RetryBudget {
            inner: Arc::new(Inner {
                ratio,
                reserve: f64::from(min_per_sec) * ttl.as_secs_f64(),
                deposits: RollingCount::new(ttl),
                withdrawals: RollingCount::new(ttl),
            }),
        }
    }

    /// Records an original request.
    pub fn deposit(&self) {
        self.inner.deposits.add(Instant::now(), 1);
    }

    /// Asks for one retry; `true` means it is granted (and counted).
    pub fn withdraw(&self) -> bool {
        let now = Instant::now();
        if self.balance_at(now) >= 1.0 {
            self.inner.withdrawals.add(now, 1);
            true
        } else {
            false
        }
    }

    /// Retries that would be granted right now (may be fractional).
    pub fn balance(&self) -> f64 {
        self.balance_at(Instant::now())
    }

    fn balance_at(&self, now: Instant) -> f64 {
        let deposits = self.inner.deposits.sum(now) as f64;
        let withdrawals = self.inner.withdrawals.sum(now) as f64;
        self.inner.ratio * deposits + self.inner.reserve - withdrawals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_without_traffic() {
        let b = RetryBudget::new(Duration::from_secs(10), 10, 0.2);
        let granted = (0..200).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 100, "10/s over 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_expire_with_the_ttl() {
        let b = RetryBudget::new(Duration::from_secs(10), 1, 0.0);
        assert_eq!((0..20).filter(|_| b.withdraw()).count(), 10);
        assert!(!b.withdraw());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.withdraw(), "still inside the window");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((0..20).filter(|_| b.withdraw()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_rate_gets_ratio_plus_floor() {
        // 100 requests/s for 60 s, every one of them wanting a retry.
        let b = RetryBudget::new(Duration::from_secs(10), 10, 0.2);
        let mut granted = 0;
        for _ in 0..6000 {
            b.deposit();
            if b.withdraw() {
                granted += 1;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let per_request = granted as f64 / 6000.0;
        // Bound: ratio + min/rate = 0.2 + 10/100 = 0.3 (plus the first
        // window's reserve, spread over six windows).
        assert!(per_request <= 0.3 + 100.0 / 6000.0 + 0.01, "{per_request}");
        assert!(per_request >= 0.28, "{per_request}");
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_budget() {
        let a = RetryBudget::new(Duration::from_secs(1), 0, 1.0);
        let b = a.clone();
        a.deposit();
        assert!(b.withdraw());
        assert!(!a.withdraw());
        assert_eq!(a.balance(), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_parameters_are_tamed() {
        let b = RetryBudget::new(Duration::ZERO, 0, f64::NAN);
        b.deposit();
        assert!(!b.withdraw());
    }
}
