//! The retry layer's own counters: attempts sent and retries refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::RetryStop;

/// Counts kept by one retry layer and shared by every clone of it; read
/// them with [`stats`](RetryCounters::stats). The metrics and the
/// proxy's admin server read these, not a second count of their own.
///
/// ```
/// use palisade::retry::{RetryLayer, RetrySettings};
///
/// let layer = RetryLayer::new("users", RetrySettings::default())?;
/// let stats = layer.counters().stats();
/// assert_eq!(stats.attempts, 0);
/// assert_eq!(stats.refused_budget, 0);
/// # Ok::<(), palisade::settings::SettingsError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RetryCounters(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    attempts: AtomicU64,
    /// By [`RetryStop`]: budget, deadline, attempts, method, body.
    refused: [AtomicU64; 5],
}

impl RetryCounters {
    pub(crate) fn attempt(&self) {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, stop: RetryStop) {
        let i = match stop {
            RetryStop::Budget => 0,
            RetryStop::Deadline => 1,
            RetryStop::Attempts(_) => 2,
            RetryStop::Method => 3,
            RetryStop::Body => 4,
        };
        self.0.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now, as plain data.
    pub fn stats(&self) -> RetryStats {
        let refused = |i: usize| self.0.refused[i].load(Ordering::Relaxed);
        RetryStats {
            attempts: self.0.attempts.load(Ordering::Relaxed),
            refused_budget: refused(0),
            refused_deadline: refused(1),
            refused_attempts: refused(2),
            refused_method: refused(3),
            refused_body: refused(4),
        }
    }
}

/// A retry layer's counts in a [`Snapshot`](crate::Snapshot). A retryable
/// failure returned without a retry is counted once, by the first check
/// that said no (see [`RetryStop`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RetryStats {
    /// Attempts sent to endpoints, first attempts included.
    pub attempts: u64,
    /// Retries refused because the budget was spent.
    pub refused_budget: u64,
    /// Retries refused because the deadline was too close.
    pub refused_deadline: u64,
    /// Retries refused because every attempt was made.
    pub refused_attempts: u64,
    /// Retries refused because the method is not idempotent.
    pub refused_method: u64,
    /// Retries refused because the body outgrew the replay buffer.
    pub refused_body: u64,
}

impl RetryStats {
    /// The refusals by reason, as (`reason` label, count): the labels of
    /// `palisade_retry_refusals_total`.
    pub fn refusals(&self) -> [(&'static str, u64); 5] {
        [
            ("budget", self.refused_budget),
            ("deadline", self.refused_deadline),
            ("attempts", self.refused_attempts),
            ("method", self.refused_method),
            ("body", self.refused_body),
        ]
    }
}
