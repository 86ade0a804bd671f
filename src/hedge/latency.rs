//! A recent-latency percentile, lock-free: what the hedge delay follows.
//!
//! Why not the crate's `metrics::LatencyHistogram`? That one is built for
//! export: thirteen fixed Prometheus buckets (about three per decade, so a
//! p95 read from it could be off by 2.5×) that count forever. A hedge delay
//! needs a fine-grained quantile of *recent* latencies, so that it follows
//! the fleet as it speeds up or slows down. Same idea (atomic bucket
//! counts), different purpose; this one is private to hedging.
//!
//! [`LatencyTracker`] keeps log-linear buckets (16 per power of two, so a
//! value is known to within 1/16 = 6.25 %), from 1 µs to 67 s (longer samples
//! land in the last bucket), in two halves of the window: samples go to the
//! current half, the quantile is read over the current and the previous
//! half (so over the last `window / 2` to `window`), and a half is cleared
//! when it is reused. The quantile is recomputed every [`REFRESH`] samples
//! (and when a half is reused) and cached in an atomic, so reading the
//! delay costs one atomic load.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Sub-buckets per power of two (as bits).
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets: exact below 16 µs, then 16 per power of two up to 2^26 µs (67 s).
const BUCKETS: usize = 23 * SUB as usize;
/// Samples between two recomputations of the cached quantile.
pub(super) const REFRESH: u64 = 16;
/// The cached value meaning "not enough samples".
const NONE: u64 = u64::MAX;

/// The bucket of a latency in microseconds.
fn index(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let shift = msb - SUB_BITS;
    let i = (u64::from(shift) + 1) * SUB + ((us >> shift) & (SUB - 1));
    (i as usize).min(BUCKETS - 1)
}

/// The exclusive upper bound of bucket `i`, in microseconds: a quantile is
/// reported as the top of its bucket, so it errs on the late side (fewer
/// hedges, never more).
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i + 1;
    }
    let shift = i / SUB - 1;
    (SUB + i % SUB + 1) << shift
}

/// One half of the window.
struct Half {
    /// The generation (time / half width, plus 2 so that 0 means unused)
    /// these counts belong to.
    stamp: AtomicU64,
    count: AtomicU64,
    buckets: [AtomicU32; BUCKETS],
}

impl Default for Half {
    fn default() -> Self {
        Half {
            stamp: AtomicU64::new(0),
            count: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// The `quantile` of the latencies observed over the last window, once at
/// least `min_samples` were; see the [module docs](self).
///
/// Approximate at half boundaries, like `rolling::RollingCount`: a sample
/// racing the reset of its half may be lost.
pub(super) struct LatencyTracker {
    quantile: f64,
    min_samples: u64,
    epoch: Instant,
    half_nanos: u64,
    halves: [Half; 2],
    /// Samples ever observed (drives [`REFRESH`]).
    observed: AtomicU64,
    /// The cached quantile in nanoseconds, or [`NONE`].
    cached: AtomicU64,
}

impl fmt::Debug for LatencyTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyTracker")
            .field("quantile", &self.quantile)
            .field("min_samples", &self.min_samples)
            .field(
                "window",
                &Duration::from_nanos(self.half_nanos.saturating_mul(2)),
            )
            .field("value", &self.get())
            .finish_non_exhaustive()
    }
}

impl LatencyTracker {
    /// A tracker of `quantile` (0..=1) over `window`, reporting nothing
    /// until it holds `min_samples` (at least 1).
    pub(super) fn new(quantile: f64, min_samples: u64, window: Duration) -> Self {
        LatencyTracker {
            quantile,
            min_samples: min_samples.max(1),
            epoch: Instant::now(),
            half_nanos: (window.as_nanos() / 2).clamp(1, u128::from(u64::MAX)) as u64,
            halves: Default::default(),
            observed: AtomicU64::new(0),
            cached: AtomicU64::new(NONE),
        }
    }

    fn generation(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        (nanos / u128::from(self.half_nanos)) as u64 + 2
    }

    /// Records one latency observed at `now`.
    pub(super) fn observe(&self, latency: Duration, now: Instant) {
        let generation = self.generation(now);
        let half = &self.halves[(generation % 2) as usize];
        let stamp = half.stamp.load(Ordering::Acquire);
        let mut refresh = false;
        if stamp < generation
            && half
                .stamp
                .compare_exchange(stamp, generation, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This thread moved the half to a new generation: it starts empty.
            for bucket in &half.buckets {
                bucket.store(0, Ordering::Relaxed);
            }
            half.count.store(0, Ordering::Release);
            refresh = true;
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        half.buckets[index(us)].fetch_add(1, Ordering::Relaxed);
        half.count.fetch_add(1, Ordering::Release);
        let n = self.observed.fetch_add(1, Ordering::Relaxed) + 1;
        if refresh || n.is_multiple_of(REFRESH) {
            self.refresh(now);
        }
    }

    /// Recomputes the cached quantile from the halves that are current at
    /// `now`.
    fn refresh(&self, now: Instant) {
        let live = self.live(now);
        let total: u64 = live.clone().map(|h| h.count.load(Ordering::Acquire)).sum();
        let value = if total < self.min_samples {
            NONE
        } else {
            // The rank of the quantile among `total` samples, 1-based.
            let rank = ((self.quantile * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            let mut value = upper(BUCKETS - 1);
            for i in 0..BUCKETS {
                seen += live
                    .clone()
                    .map(|h| u64::from(h.buckets[i].load(Ordering::Relaxed)))
                    .sum::<u64>();
                if seen >= rank {
                    value = upper(i);
                    break;
                }
            }
            value.saturating_mul(1000)
        };
        self.cached.store(value, Ordering::Relaxed);
    }

    /// The halves whose counts belong to the window ending at `now`.
    fn live(&self, now: Instant) -> impl Iterator<Item = &Half> + Clone {
        let generation = self.generation(now);
        self.halves
            .iter()
            .filter(move |h| h.stamp.load(Ordering::Acquire) + 1 >= generation)
    }

    /// The quantile as of the last refresh, if enough samples were seen.
    pub(super) fn get(&self) -> Option<Duration> {
        match self.cached.load(Ordering::Relaxed) {
            NONE => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Samples in the current window (for stats).
    pub(super) fn samples(&self, now: Instant) -> u64 {
        self.live(now)
            .map(|h| h.count.load(Ordering::Acquire))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_within_a_sixteenth() {
        let mut previous_upper = 0;
        for i in 0..BUCKETS {
            let lower = previous_upper;
            let top = upper(i);
            assert!(top > lower, "bucket {i}");
            assert_eq!(index(lower), i, "lower bound of bucket {i}");
            assert_eq!(index(top - 1), i, "upper bound of bucket {i}");
            if lower >= SUB {
                assert!((top - lower) * SUB <= lower, "bucket {i} too wide");
            }
            previous_upper = top;
        }
        assert!(upper(BUCKETS - 1) >= 60_000_000, "covers a minute");
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_the_quantile_once_it_has_enough_samples() {
        let t = LatencyTracker::new(0.95, 100, Duration::from_secs(10));
        // 1..=99 ms: not yet 100 samples.
        for ms in 1..=99 {
            t.observe(Duration::from_millis(ms), Instant::now());
        }
        t.refresh(Instant::now());
        assert_eq!(t.get(), None);
        t.observe(Duration::from_millis(100), Instant::now());
        t.refresh(Instant::now());
        // The 95th of 1..=100 ms, rounded up to its bucket's top.
        let p95 = t.get().unwrap();
        assert!(
            p95 >= Duration::from_millis(95) && p95 <= Duration::from_micros(95_000 * 17 / 16),
            "{p95:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_leave_with_the_window() {
        let t = LatencyTracker::new(0.5, 10, Duration::from_secs(10));
        for _ in 0..100 {
            t.observe(Duration::from_millis(50), Instant::now());
        }
        assert!(t.get().unwrap() >= Duration::from_millis(50));
        tokio::time::advance(Duration::from_secs(6)).await;
        for _ in 0..200 {
            t.observe(Duration::from_millis(5), Instant::now());
        }
        let median = t.get().unwrap();
        assert!(median < Duration::from_millis(6), "{median:?}");
        // Both halves expire after a quiet window: back to "not enough".
        tokio::time::advance(Duration::from_secs(20)).await;
        t.observe(Duration::from_millis(5), Instant::now());
        assert_eq!(t.get(), None);
        assert_eq!(t.samples(Instant::now()), 1);
    }
}
