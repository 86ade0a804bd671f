//! A count of events over a sliding window of time: the one implementation
//! behind the retry budget, failure accrual's success rate and the service
//! breaker's error rate.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Number of slots a window is divided into: counts expire a tenth of the
/// window at a time.
pub(crate) const SLOTS: usize = 10;

/// Events counted over the last `window`, in [`SLOTS`] slots, lock-free.
///
/// Counts are approximate at slot boundaries: an add racing the reset of a
/// slot to a new tick may be lost (one event, once per slot width). Every user
/// (budgets, rates) tolerates that.
#[derive(Debug)]
pub(crate) struct RollingCount {
    epoch: Instant,
    slot_nanos: u64,
    counts: [AtomicI64; SLOTS],
    /// The tick (time / slot width, offset by `SLOTS`) each count belongs to.
    stamps: [AtomicU64; SLOTS],
}

impl RollingCount {
    /// A counter over `window` (at least 10 ns).
    pub(crate) fn new(window: Duration) -> Self {
        RollingCount {
            epoch: Instant::now(),
            slot_nanos: (window.as_nanos() / SLOTS as u128).max(1) as u64,
            counts: Default::default(),
            stamps: Default::default(),
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        // Offset by SLOTS so that "the last SLOTS ticks" never underflows and
        // never matches an unused slot (stamp 0).
        nanos / self.slot_nanos + SLOTS as u64
    }

    /// Counts `n` events at `now`.
    pub(crate) fn add(&self, now: Instant, n: i64) {
        let tick = self.tick(now);
        let i = (tick % SLOTS as u64) as usize;
        let stamp = self.stamps[i].load(Ordering::Acquire);
        if stamp < tick
            && self.stamps[i]
                .compare_exchange(stamp, tick, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This thread moved the slot to a new tick: it starts from zero.
            self.counts[i].store(0, Ordering::Release);
        }
        self.counts[i].fetch_add(n, Ordering::AcqRel);
    }

    /// The events counted in the window ending at `now`.
    pub(crate) fn sum(&self, now: Instant) -> i64 {
        let tick = self.tick(now);
        let oldest = tick - (SLOTS as u64 - 1);
        (0..SLOTS)
            .filter(|&i| (oldest..=tick).contains(&self.stamps[i].load(Ordering::Acquire)))
            .map(|i| self.counts[i].load(Ordering::Acquire))
            .sum()
    }

    /// Forgets every count.
    pub(crate) fn clear(&self) {
        for stamp in &self.stamps {
            stamp.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_expire_a_slot_at_a_time() {
        let c = RollingCount::new(Duration::from_secs(10));
        c.add(Instant::now(), 5);
        tokio::time::advance(Duration::from_secs(5)).await;
        c.add(Instant::now(), 3);
        assert_eq!(c.sum(Instant::now()), 8);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(c.sum(Instant::now()), 3, "the first 5 expired");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(c.sum(Instant::now()), 0);
        c.add(Instant::now(), 1);
        c.clear();
        assert_eq!(c.sum(Instant::now()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_reused_after_a_long_gap_starts_from_zero() {
        let c = RollingCount::new(Duration::from_secs(1));
        c.add(Instant::now(), 7);
        tokio::time::advance(Duration::from_secs(100)).await;
        c.add(Instant::now(), 1);
        assert_eq!(c.sum(Instant::now()), 1);
    }
}
