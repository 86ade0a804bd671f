//! Per-endpoint load: the peak-EWMA latency estimate, in-flight count,
//! `Retry-After` busy mark and counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::health::Health;
use super::settings::EjectionSettings;

/// A peak-sensitive, exponentially weighted moving average of latency, plus
/// a fading penalty for failures.
///
/// The *latency* estimate starts from a seed (a guess); the first real
/// observation replaces the seed outright, so a guess that was too high does
/// not linger for several time constants. It decays toward zero with time
/// constant `tau` when nothing is observed, so an endpoint that was slow a
/// while ago is eventually tried again. An observation above the current
/// (decayed) estimate replaces it at once (the *peak*); one below it is
/// blended in with weight `1 - exp(-elapsed / tau)`, where `elapsed` is the
/// time since the previous observation, and never less than 1/50, so that
/// at a high request rate a single hiccup fades after about 50 faster
/// answers instead of holding for most of `tau`. Failures are observed at their real
/// latency: this estimate answers "can an attempt here finish in time?".
///
/// The *penalty* is what a failure adds on top for choosing: each failure
/// raises it to at least the failure penalty, and it fades with that penalty
/// as its time constant (a 1 s penalty is 368 ms a second later, 18 ms four
/// seconds later). So an endpoint that fails fast looks slow for a while,
/// then is tried again; when that try succeeds it competes on its latency at
/// once, instead of waiting for a 1 s sample to decay out of a 10 s average.
///
/// The *cost* estimate the balancer compares is latency plus penalty.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    state: Mutex<EwmaState>,
}

#[derive(Debug, Clone, Copy)]
struct EwmaState {
    /// The latency estimate in nanoseconds as of `stamp`.
    latency_ns: f64,
    stamp: Instant,
    /// Whether the latency estimate is still the seed.
    seeded: bool,
    /// The failure penalty in nanoseconds as of `penalty_stamp`.
    penalty_ns: f64,
    penalty_stamp: Instant,
}

/// The least weight a sample below the estimate gets: a peak fades after
/// about 50 faster answers, or with the decay time, whichever comes first.
const MIN_BLEND: f64 = 1.0 / 50.0;

/// `exp(-elapsed / tau)`, the weight the old estimate keeps.
fn decay_weight(elapsed: Duration, tau: Duration) -> f64 {
    let tau = tau.as_nanos() as f64;
    if tau <= 0.0 {
        return 0.0;
    }
    (-(elapsed.as_nanos() as f64) / tau).exp()
}

impl EwmaState {
    fn latency_at(&self, now: Instant, tau: Duration) -> f64 {
        self.latency_ns * decay_weight(now.saturating_duration_since(self.stamp), tau)
    }

    fn penalty_at(&self, now: Instant, penalty: Duration) -> f64 {
        self.penalty_ns * decay_weight(now.saturating_duration_since(self.penalty_stamp), penalty)
    }

    fn penalize(&mut self, penalty: Duration, now: Instant) {
        let current = self.penalty_at(now, penalty);
        self.penalty_ns = current.max(penalty.as_nanos() as f64);
        self.penalty_stamp = now;
    }
}

impl PeakEwma {
    pub(crate) fn new(seed: Duration, now: Instant) -> Self {
        PeakEwma {
            state: Mutex::new(EwmaState {
                latency_ns: seed.as_nanos() as f64,
                stamp: now,
                seeded: true,
                penalty_ns: 0.0,
                penalty_stamp: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EwmaState> {
        // The state is plain numbers: a panic elsewhere cannot leave it
        // half-written in a way that matters, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cost estimate at `now`, in nanoseconds: latency (decaying with
    /// `tau`) plus the failure penalty (fading with `penalty`).
    pub(crate) fn estimate_ns(&self, now: Instant, tau: Duration, penalty: Duration) -> f64 {
        let s = *self.lock();
        s.latency_at(now, tau) + s.penalty_at(now, penalty)
    }

    /// The decayed latency estimate at `now`, in nanoseconds.
    pub(crate) fn latency_ns(&self, now: Instant, tau: Duration) -> f64 {
        self.lock().latency_at(now, tau)
    }

    /// Restarts from one observed latency, with no penalty (an endpoint back
    /// from ejection: its old failures say nothing about it now).
    pub(crate) fn reset(&self, latency: Duration, now: Instant) {
        let mut s = self.lock();
        s.latency_ns = latency.as_nanos() as f64;
        s.stamp = now;
        s.seeded = false;
        s.penalty_ns = 0.0;
        s.penalty_stamp = now;
    }

    /// Records that a call was still running `elapsed` after it started
    /// when it was cancelled (a hedge won, a per-try timeout fired, the
    /// caller went away): its latency is at least that. Raises the estimate
    /// when `elapsed` is above it, as a finished call that slow would; never
    /// lowers it, never adds a penalty. Without this, an endpoint whose calls
    /// are always cut short would look as fast as its seed.
    pub(crate) fn observe_at_least(&self, elapsed: Duration, now: Instant, tau: Duration) {
        let mut s = self.lock();
        let sample = elapsed.as_nanos() as f64;
        if sample > s.latency_at(now, tau) {
            s.latency_ns = sample;
            s.seeded = false;
            if now > s.stamp {
                s.stamp = now;
            }
        }
    }

    /// Records one outcome observed at `now`: what it took, and for a
    /// failure the penalty (`penalty` also sets how fast it fades).
    /// Returns the latency estimate after it, in nanoseconds.
    pub(crate) fn observe(
        &self,
        latency: Duration,
        failure: Option<Duration>,
        now: Instant,
        tau: Duration,
    ) -> f64 {
        let mut s = self.lock();
        let w = decay_weight(now.saturating_duration_since(s.stamp), tau);
        let sample = latency.as_nanos() as f64;
        let decayed = s.latency_ns * w;
        s.latency_ns = if sample > decayed || s.seeded {
            sample
        } else {
            // At a high request rate the time since the previous sample is
            // tiny, and so would be each sample's weight: one hiccup would
            // then hold the estimate up for most of `tau`. Every sample
            // moves it at least MIN_BLEND of the way.
            let keep = w.min(1.0 - MIN_BLEND);
            s.latency_ns * keep + sample * (1.0 - keep)
        };
        s.seeded = false;
        // Never move the stamp backwards (samples can finish out of order).
        if now > s.stamp {
            s.stamp = now;
        }
        if let Some(penalty) = failure {
            s.penalize(penalty, now);
        }
        s.latency_ns
    }

    /// Records a failure at `now`: raises the penalty to at least
    /// `penalty`, which also sets how fast it fades. A failure found at the
    /// end of a stream is penalised here, after its head's latency was
    /// observed.
    pub(crate) fn penalize(&self, penalty: Duration, now: Instant) {
        self.lock().penalize(penalty, now);
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
    /// Nanoseconds since the balancer's epoch of the last failure; 0 when
    /// there has been none.
    pub(crate) failed_at: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Of the failures, the calls cut off while they waited on the
    /// endpoint: by the per-try timeout, the deadline, or stall detection.
    pub(crate) timeouts: AtomicU64,
    /// Nanoseconds since the balancer's epoch after which the endpoint is
    /// stalled if it still has requests outstanding and has not answered
    /// any: its last sign of life (a response head, or a request sent when
    /// it had none outstanding) plus `stall_after_ns`. 0 before its first
    /// request.
    pub(crate) alive_until: AtomicU64,
    /// Nanoseconds since the balancer's epoch at which the latest-sent
    /// request this endpoint has answered was sent: other endpoints' stall
    /// judgments compare against it.
    pub(crate) answered_sent: AtomicU64,
    /// How long the endpoint may go silent with requests outstanding:
    /// `max(stall_factor × latency estimate, stall_floor)`, as of its last
    /// answer.
    pub(crate) stall_after_ns: AtomicU64,
    pub(crate) health: Health,
    /// The most requests outstanding at once
    /// ([`endpoint_max_in_flight`](super::BalanceSettings::endpoint_max_in_flight)).
    max_in_flight: usize,
    /// Where requests wait for an endpoint to free a slot: shared by every
    /// endpoint's load.
    room: Arc<Room>,
}

/// Requests waiting for a slot at a balancer whose endpoints are all at
/// their cap, and how they hear of one.
#[derive(Debug, Default)]
pub(crate) struct Room {
    freed: Notify,
    waiting: AtomicUsize,
}

impl Room {
    /// Counts a waiting request while the guard lives; its
    /// [`freed`](RoomWaiter::freed) future completes when a slot is freed
    /// after this call.
    pub(crate) fn wait(self: &Arc<Self>) -> RoomWaiter {
        // SeqCst, with the loads in `Load::leave` and `Load::has_room`: either
        // the waiter sees the freed slot or the leaver sees the waiter.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        RoomWaiter { room: self.clone() }
    }
}

/// A request waiting for a slot; see [`Room::wait`].
pub(crate) struct RoomWaiter {
    room: Arc<Room>,
}

impl RoomWaiter {
    pub(crate) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.freed.notified()
    }
}

impl Drop for RoomWaiter {
    fn drop(&mut self) {
        self.room.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Load {
    pub(crate) fn new(
        seed: Duration,
        now: Instant,
        ejection: &EjectionSettings,
        max_in_flight: usize,
        room: Arc<Room>,
        stall_after: Duration,
    ) -> Self {
        Load {
            max_in_flight,
            room,
            alive_until: AtomicU64::new(0),
            answered_sent: AtomicU64::new(0),
            stall_after_ns: AtomicU64::new(stall_after.as_nanos() as u64),
            health: Health::new(ejection),
            ewma: PeakEwma::new(seed, now),
            in_flight: AtomicUsize::new(0),
            busy_until: AtomicU64::new(0),
            failed_at: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether one more request may be sent now.
    pub(crate) fn has_room(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) < self.max_in_flight
    }

    /// Counts one more request outstanding at `now_ns`, unless the
    /// endpoint is at its cap. A request sent to an endpoint with none
    /// outstanding starts its silence clock.
    pub(crate) fn try_enter(&self, now_ns: u64) -> bool {
        match self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            }) {
            Ok(0) => {
                self.heard_at(now_ns);
                true
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// A sign of life at `now_ns`: the endpoint is not stalled before
    /// `now_ns + stall_after_ns`.
    pub(crate) fn heard_at(&self, now_ns: u64) {
        let until = now_ns.saturating_add(self.stall_after_ns.load(Ordering::Relaxed));
        self.alive_until.fetch_max(until, Ordering::Relaxed);
    }

    /// When the endpoint has requests outstanding and has been silent past
    /// its stall threshold at `now_ns`: the moment it should have answered
    /// by. Stalled if another endpoint has since answered a request sent
    /// after that moment (see [`Shared::is_stalled`](super::Shared)).
    pub(crate) fn silent_past(&self, now_ns: u64) -> Option<u64> {
        let until = self.alive_until.load(Ordering::Relaxed);
        (until != 0 && now_ns >= until && self.in_flight() > 0).then_some(until)
    }

    /// Counts one request fewer outstanding; a request waiting for a slot
    /// hears of it.
    pub(crate) fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.room.waiting.load(Ordering::SeqCst) > 0 {
            self.room.freed.notify_one();
        }
    }

    /// Whether the endpoint failed within the last `quarantine_ns`.
    pub(crate) fn recently_failed(&self, now_ns: u64, quarantine_ns: u64) -> bool {
        let at = self.failed_at.load(Ordering::Relaxed);
        at != 0 && now_ns.saturating_sub(at) < quarantine_ns
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
    const PENALTY: Duration = Duration::from_secs(1);
    const MS: f64 = 1_000_000.0;

    fn ok(e: &PeakEwma, ms: u64, at: Instant) {
        e.observe(Duration::from_millis(ms), None, at, TAU);
    }

    #[tokio::test(start_paused = true)]
    async fn decays_toward_zero_with_tau() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(100), t0);
        assert_eq!(e.estimate_ns(t0, TAU, PENALTY), 100.0 * MS);
        let est = e.estimate_ns(t0 + TAU, TAU, PENALTY);
        assert!(
            (est - 100.0 * MS / std::f64::consts::E).abs() < 1.0,
            "{est}"
        );
        // Reading does not change the state.
        assert_eq!(e.estimate_ns(t0, TAU, PENALTY), 100.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hiccup_fades_after_a_few_dozen_fast_answers() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(2), t0);
        ok(&e, 2, t0);
        // One 20 ms hiccup, then a fast answer every millisecond: by time
        // alone each would weigh 1e-4 and the peak would hold for seconds.
        ok(&e, 20, t0);
        for i in 1..=100 {
            ok(&e, 2, t0 + Duration::from_millis(i));
        }
        let est = e.latency_ns(t0 + Duration::from_millis(100), TAU);
        assert!(est < 4.5 * MS, "{}", est / MS);
        // A slow endpoint stays slow: its own samples are all high.
        let slow = PeakEwma::new(Duration::from_millis(2), t0);
        for i in 0..100 {
            ok(&slow, 20, t0 + Duration::from_millis(i));
        }
        assert!(slow.latency_ns(t0 + Duration::from_millis(100), TAU) > 19.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_sample_replaces_the_seed() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(30), t0);
        ok(&e, 5, t0);
        assert_eq!(e.latency_ns(t0, TAU), 5.0 * MS);
        // After that, lower samples blend.
        ok(&e, 1, t0 + TAU);
        assert!(e.latency_ns(t0 + TAU, TAU) > 1.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_is_taken_at_once() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(10), t0);
        ok(&e, 10, t0);
        ok(&e, 500, t0 + Duration::from_millis(1));
        assert_eq!(e.latency_ns(t0 + Duration::from_millis(1), TAU), 500.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn lower_samples_blend_by_elapsed_time() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(100), t0);
        ok(&e, 100, t0);
        // After one tau, the old value keeps weight 1/e.
        ok(&e, 10, t0 + TAU);
        let w = (-1.0f64).exp();
        let want = 100.0 * MS * w + 10.0 * MS * (1.0 - w);
        let got = e.latency_ns(t0 + TAU, TAU);
        assert!((got - want).abs() < 1.0, "{got} vs {want}");
        // A burst of fast samples at the same instant moves it 1/50 of the
        // way each (by time alone they would weigh nothing)...
        for _ in 0..10 {
            ok(&e, 1, t0 + TAU);
        }
        let keep = (1.0 - MIN_BLEND).powi(10);
        let burst = want * keep + 1.0 * MS * (1.0 - keep);
        let got = e.latency_ns(t0 + TAU, TAU);
        assert!((got - burst).abs() < 1.0, "{got} vs {burst}");
        // ...and a steady stream over time converges to the new latency.
        let mut t = t0 + TAU;
        for _ in 0..600 {
            t += Duration::from_millis(100);
            ok(&e, 10, t);
        }
        let got = e.latency_ns(t, TAU) / MS;
        assert!((got - 10.0).abs() < 0.5, "{got}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_adds_a_penalty_that_fades_with_its_own_time_constant() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_millis(30), t0);
        e.observe(Duration::from_millis(2), Some(PENALTY), t0, TAU);
        assert_eq!(e.latency_ns(t0, TAU), 2.0 * MS, "latency is what it took");
        assert_eq!(e.estimate_ns(t0, TAU, PENALTY), 1002.0 * MS);
        let later = t0 + PENALTY;
        let cost = e.estimate_ns(later, TAU, PENALTY) - e.latency_ns(later, TAU);
        assert!(
            (cost - 1000.0 * MS / std::f64::consts::E).abs() < 1.0,
            "{cost}"
        );
        // Successes do not erase it; it fades.
        ok(&e, 2, later);
        assert!(e.estimate_ns(later, TAU, PENALTY) > 300.0 * MS);
        assert!(e.estimate_ns(t0 + 5 * PENALTY, TAU, PENALTY) < 10.0 * MS);
        // Another failure tops it up to the full penalty again.
        e.observe(Duration::from_millis(2), Some(PENALTY), later, TAU);
        assert!(e.estimate_ns(later, TAU, PENALTY) >= 1000.0 * MS);
        // A reset clears it.
        e.reset(Duration::from_millis(3), later);
        assert_eq!(e.estimate_ns(later, TAU, PENALTY), 3.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_mark_only_grows() {
        let l = Load::new(
            Duration::from_millis(1),
            Instant::now(),
            &EjectionSettings::default(),
            1,
            Arc::default(),
            Duration::from_secs(1),
        );
        l.mark_busy(100);
        l.mark_busy(50);
        assert!(l.is_busy(99));
        assert!(!l.is_busy(100));
    }
}
