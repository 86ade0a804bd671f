//! A token budget with Finagle's semantics: retries spend one, and hedges
//! spend their own.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::rolling::RollingCount;
use crate::settings::{Problems, SettingsError};

/// A budget's settings: `ratio` tokens per request plus `min_per_sec`
/// a second, over a window of `ttl`. `Default` is Finagle's (and the
/// library's): 0.2, 10 a second, 10 s.
///
/// ```
/// use palisade::budget::{BudgetSettings, RetryBudget};
///
/// let budget = RetryBudget::from_settings(&BudgetSettings { ratio: 0.1, ..Default::default() })?;
/// assert_eq!(budget.settings().min_per_sec, 10);
/// # Ok::<(), palisade::settings::SettingsError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct BudgetSettings {
    /// Tokens per request: a finite number, at least 0. Default 0.2.
    pub ratio: f64,
    /// Tokens a second regardless of traffic. Default 10.
    pub min_per_sec: u32,
    /// The window deposits and withdrawals are counted over; at least
    /// 10 ms. Default 10 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub ttl: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            ratio: 0.2,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// The shortest window a budget counts over.
const MIN_TTL: Duration = Duration::from_millis(10);

impl BudgetSettings {
    /// Every problem with these settings, each at its field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        if !(self.ratio.is_finite() && self.ratio >= 0.0) {
            p.add(
                "ratio",
                format!("must be a finite number at least 0, got {}", self.ratio),
            );
        }
        if self.ttl < MIN_TTL {
            p.add("ttl", "must be at least 10ms");
        }
        p.finish()
    }
}

/// How many retries a client may make: a share of its recent requests plus a
/// floor for quiet periods. One budget is shared by every clone of a client.
///
/// Each original request *deposits* one token; each retry *withdraws* one.
/// Over the last [`ttl`](BudgetSettings::ttl) a retry is allowed while
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
/// use palisade::budget::{BudgetSettings, RetryBudget};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade::settings::SettingsError> {
/// // No floor: one retry per five requests.
/// let budget = RetryBudget::from_settings(&BudgetSettings {
///     ratio: 0.2,
///     min_per_sec: 0,
///     ttl: Duration::from_secs(10),
/// })?;
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw(), "the third retry in ten requests is refused");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: BudgetSettings,
    ratio: f64,
    /// `min_per_sec × ttl`: retries allowed in any window regardless of
    /// traffic.
    reserve: f64,
    deposits: RollingCount,
    withdrawals: RollingCount,
}

impl Default for RetryBudget {
    fn default() -> Self {
        let s = BudgetSettings::default();
        RetryBudget::new(s.ttl, s.min_per_sec, s.ratio)
    }
}

impl RetryBudget {
    /// A budget from its settings, refused with every problem named if
    /// they are invalid. The budget is shared state: clones share it.
    pub fn from_settings(settings: &BudgetSettings) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(RetryBudget::new(
            settings.ttl,
            settings.min_per_sec,
            settings.ratio,
        ))
    }

    /// A budget from values already known to be valid (the layers' own
    /// defaults and validated settings).
    pub(crate) fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Self {
        debug_assert!(ttl >= MIN_TTL && ratio.is_finite() && ratio >= 0.0);
        RetryBudget {
            inner: Arc::new(Inner {
                settings: BudgetSettings {
                    ratio,
                    min_per_sec,
                    ttl,
                },
                ratio,
                reserve: f64::from(min_per_sec) * ttl.as_secs_f64(),
                deposits: RollingCount::new(ttl),
                withdrawals: RollingCount::new(ttl),
            }),
        }
    }

    /// The settings this budget was made from.
    pub fn settings(&self) -> &BudgetSettings {
        &self.inner.settings
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

    #[test]
    fn bad_settings_are_refused_not_tamed() {
        let bad = BudgetSettings {
            ratio: f64::NAN,
            min_per_sec: 0,
            ttl: Duration::ZERO,
        };
        let err = RetryBudget::from_settings(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ratio: must be a finite number at least 0, got NaN; ttl: must be at least 10ms"
        );
        let negative = BudgetSettings {
            ratio: -0.5,
            ..BudgetSettings::default()
        };
        assert!(negative.validate().is_err());
        assert_eq!(BudgetSettings::default().validate(), Ok(()));
    }
}
