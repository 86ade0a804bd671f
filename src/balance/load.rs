//! Per-endpoint load: the peak-EWMA latency estimate, in-flight count,
//! `Retry-After` busy mark and counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A peak-sensitive, exponentially weighted moving average of latency.
///
/// Two estimates move together: the *cost* estimate the balancer compares,
/// fed with failure penalties, and the plain *latency* estimate of what the
/// endpoint actually took, used to judge whether an attempt can finish
/// before a deadline.
///
/// It starts from a *seed* (a guess); the first real observation replaces
/// the seed outright, so a guess that was too high does not linger for
/// several time constants.
///
/// The estimate decays toward zero with time constant `tau` when nothing is
/// observed, so an endpoint that was slow a while ago is eventually tried
/// again. An observation above the current (decayed) estimate replaces it at
/// once (the *peak*); one below it is blended in with weight
/// `1 - exp(-elapsed / tau)`, where `elapsed` is the time since the previous
/// observation.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    state: Mutex<EwmaState>,
}

#[derive(Debug, Clone, Copy)]
struct EwmaState {
    /// The estimate in nanoseconds as of `stamp`.
    rtt_ns: f64,
    /// The plain latency estimate (no penalties) as of `stamp`.
    latency_ns: f64,
    stamp: Instant,
    /// Whether the estimates are still the seed.
    seeded: bool,
}

/// `exp(-elapsed / tau)`, the weight the old estimate keeps.
fn decay_weight(elapsed: Duration, tau: Duration) -> f64 {
    let tau = tau.as_nanos() as f64;
    if tau <= 0.0 {
        return 0.0;
    }
    (-(elapsed.as_nanos() as f64) / tau).exp()
}

impl PeakEwma {
    pub(crate) fn new(seed: Duration, now: Instant) -> Self {
        PeakEwma {
            state: Mutex::new(EwmaState {
                rtt_ns: seed.as_nanos() as f64,
                latency_ns: seed.as_nanos() as f64,
                stamp: now,
                seeded: true,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EwmaState> {
        // The state is two plain numbers: a panic elsewhere cannot leave it
        // half-written in a way that matters, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decayed estimate at `now`, in nanoseconds.
    pub(crate) fn estimate_ns(&self, now: Instant, tau: Duration) -> f64 {
        let s = *self.lock();
        s.rtt_ns * decay_weight(now.saturating_duration_since(s.stamp), tau)
    }

    /// The decayed plain latency estimate at `now`, in nanoseconds.
    pub(crate) fn latency_ns(&self, now: Instant, tau: Duration) -> f64 {
        let s = *self.lock();
        s.latency_ns * decay_weight(now.saturating_duration_since(s.stamp), tau)
    }

    /// Records one sample taken at `now`: `cost` feeds the cost estimate
    /// (a failure's penalty included), `latency` what it really took.
    pub(crate) fn observe(&self, cost: Duration, latency: Duration, now: Instant, tau: Duration) {
        let mut s = self.lock();
        let w = decay_weight(now.saturating_duration_since(s.stamp), tau);
        let seeded = s.seeded;
        let peak_ewma = |estimate: f64, sample: Duration| {
            let sample = sample.as_nanos() as f64;
            let decayed = estimate * w;
            if sample > decayed || seeded {
                sample
            } else {
                decayed + sample * (1.0 - w)
            }
        };
        s.rtt_ns = peak_ewma(s.rtt_ns, cost);
        s.latency_ns = peak_ewma(s.latency_ns, latency);
        s.seeded = false;
        // Never move the stamp backwards (samples can finish out of order).
        if now > s.stamp {
            s.stamp = now;
        }
    }
}

/// Everything the balancer knows about one endpoint's load.
#[derive(Debug)]
pub(crate) struct Load {
    pub(crate) ewma: PeakEwma,
    pub(crate) in_flight: AtomicUsize,
    /// Nanoseconds since the balancer's epoch until which the endpoint asked
    /// to be left alone (`Retry-After`); 0 when not busy.
    pub(crate) busy_until: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
}

impl Load {
    pub(crate) fn new(seed: Duration, now: Instant) -> Self {
        Load {
            ewma: PeakEwma::new(seed, now),
            in_flight: AtomicUsize::new(0),
            busy_until: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn is_busy(&self, now_ns: u64) -> bool {
        self.busy_until.load(Ordering::Relaxed) > now_ns
    }

    /// Marks the endpoint busy until `until_ns`, never shortening an
    /// existing mark.
    pub(crate) fn mark_busy(&self, until_ns: u64) {
        self.busy_until.fetch_max(until_ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);
    const MS: f64 = 1_000_000.0;

    #[tokio::test(start_paused = true)]
    async fn decays_toward_zero_with_tau() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(100), t0);
        assert_eq!(e.estimate_ns(t0, TAU), 100.0 * MS);
        let later = t0 + TAU;
        let est = e.estimate_ns(later, TAU);
        assert!(
            (est - 100.0 * MS / std::f64::consts::E).abs() < 1.0,
            "{est}"
        );
        // Reading does not change the state.
        assert_eq!(e.estimate_ns(t0, TAU), 100.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_is_taken_at_once() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(10), t0);
        e.observe(
            Duration::from_millis(500),
            Duration::from_millis(500),
            t0 + Duration::from_millis(1),
            TAU,
        );
        assert_eq!(
            e.estimate_ns(t0 + Duration::from_millis(1), TAU),
            500.0 * MS
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_sample_replaces_the_seed() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(30), t0);
        e.observe(Duration::from_millis(5), Duration::from_millis(5), t0, TAU);
        assert_eq!(e.estimate_ns(t0, TAU), 5.0 * MS);
        // After that, lower samples blend.
        e.observe(
            Duration::from_millis(1),
            Duration::from_millis(1),
            t0 + TAU,
            TAU,
        );
        assert!(e.estimate_ns(t0 + TAU, TAU) > 1.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn lower_samples_blend_by_elapsed_time() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(100), t0);
        e.observe(
            Duration::from_millis(100),
            Duration::from_millis(100),
            t0,
            TAU,
        );
        // After one tau, the old value keeps weight 1/e.
        e.observe(
            Duration::from_millis(10),
            Duration::from_millis(10),
            t0 + TAU,
            TAU,
        );
        let w = (-1.0f64).exp();
        let want = 100.0 * MS * w + 10.0 * MS * (1.0 - w);
        let got = e.estimate_ns(t0 + TAU, TAU);
        assert!((got - want).abs() < 1.0, "{got} vs {want}");
        // A burst of fast samples at the same instant barely moves it...
        for _ in 0..100 {
            e.observe(
                Duration::from_millis(1),
                Duration::from_millis(1),
                t0 + TAU,
                TAU,
            );
        }
        assert!((e.estimate_ns(t0 + TAU, TAU) - want).abs() < 1.0);
        // ...but a steady stream over time converges to the new latency.
        let mut t = t0 + TAU;
        for _ in 0..600 {
            t += Duration::from_millis(100);
            e.observe(Duration::from_millis(10), Duration::from_millis(10), t, TAU);
        }
        let got = e.estimate_ns(t, TAU) / MS;
        assert!((got - 10.0).abs() < 0.5, "{got}");
    }

    #[tokio::test(start_paused = true)]
    async fn latency_ignores_penalties() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(30), t0);
        e.observe(Duration::from_secs(1), Duration::from_millis(2), t0, TAU);
        assert_eq!(e.estimate_ns(t0, TAU), 1000.0 * MS);
        assert_eq!(e.latency_ns(t0, TAU), 2.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_mark_only_grows() {
        let l = Load::new(Duration::from_millis(1), Instant::now());
        l.mark_busy(100);
        l.mark_busy(50);
        assert!(l.is_busy(99));
        assert!(!l.is_busy(100));
    }
}
