//! Failure accrual: when an endpoint is ejected from the choice, and how it
//! earns its way back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;

use crate::classify::{Class, Outcome};
use crate::rolling::RollingCount;

use super::settings::EjectionSettings;

impl EjectionSettings {
    /// How many of `n` endpoints may be ejected at once.
    pub(crate) fn max_ejected(&self, n: usize) -> usize {
        let share = if self.max_ejection_percent.is_finite() {
            self.max_ejection_percent.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ((n as f64 * share).floor() as usize).max(1)
    }

    /// Whether `available` of `n` endpoints is below the panic threshold.
    pub(crate) fn panics(&self, available: usize, n: usize) -> bool {
        (available as f64) < self.panic_threshold * n as f64
    }

    fn jittered(&self, penalty: Duration) -> Duration {
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if jitter == 0.0 {
            return penalty;
        }
        let factor = rand::rng().random_range(1.0 - jitter / 2.0..=1.0 + jitter / 2.0);
        penalty.mul_f64(factor)
    }
}

/// An endpoint's standing with failure accrual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointState {
    /// In the choice.
    Active,
    /// Out of the choice; eligible for a probe once `probe_in` has passed.
    Ejected {
        /// Time until a probe may be sent.
        probe_in: Duration,
    },
    /// Out of the choice, with a probe request in flight.
    Probing,
}

/// Written as `"active"`, `"ejected"` or `"probing"`.
#[cfg(feature = "serde")]
impl serde::Serialize for EndpointState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            EndpointState::Active => "active",
            EndpointState::Ejected { .. } => "ejected",
            EndpointState::Probing => "probing",
        })
    }
}

/// What an outcome did to an endpoint's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing changed.
    Unchanged,
    /// The endpoint should be ejected (if the fleet guard allows).
    Eject,
    /// A probe succeeded: the endpoint is back.
    Restored,
    /// A probe failed: the endpoint is ejected again, for longer.
    Reejected,
}

/// Failure accrual state of one endpoint.
#[derive(Debug)]
pub(crate) struct Health {
    consecutive: AtomicU32,
    successes: RollingCount,
    failures: RollingCount,
    ejected: AtomicBool,
    /// Nanoseconds since the balancer's epoch when a probe may be sent.
    probe_at: AtomicU64,
    probing: AtomicBool,
    ejections: AtomicU64,
    /// The next ejection's penalty (doubles on each failed probe).
    penalty: Mutex<Duration>,
}

impl Health {
    pub(crate) fn new(config: &EjectionSettings) -> Self {
        Health {
            consecutive: AtomicU32::new(0),
            successes: RollingCount::new(config.window),
            failures: RollingCount::new(config.window),
            ejected: AtomicBool::new(false),
            probe_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            ejections: AtomicU64::new(0),
            penalty: Mutex::new(config.base_penalty),
        }
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Failures in a row (429s aside) since the last success.
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    pub(crate) fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub(crate) fn state(&self, now_ns: u64) -> EndpointState {
        if !self.is_ejected() {
            EndpointState::Active
        } else if self.probing.load(Ordering::Acquire) {
            EndpointState::Probing
        } else {
            let at = self.probe_at.load(Ordering::Acquire);
            EndpointState::Ejected {
                probe_in: Duration::from_nanos(at.saturating_sub(now_ns)),
            }
        }
    }

    /// Claims the one probe of an ejected endpoint whose penalty has passed.
    pub(crate) fn try_claim_probe(&self, now_ns: u64) -> bool {
        self.is_ejected()
            && self.probe_at.load(Ordering::Acquire) <= now_ns
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Gives a probe back unresolved (its request was cancelled).
    pub(crate) fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// Counts one outcome and says what it means for the endpoint.
    pub(crate) fn observe(
        &self,
        class: Class,
        probe: bool,
        config: &EjectionSettings,
        now: Instant,
    ) -> Verdict {
        let outcome = class.outcome();
        if !class.judges_endpoint() {
            // The caller's failure, or ours: nothing learned.
            return Verdict::Unchanged;
        }
        if probe {
            return if outcome == Outcome::Success {
                Verdict::Restored
            } else {
                Verdict::Reejected
            };
        }
        match outcome {
            Outcome::Success => {
                self.successes.add(now, 1);
                self.consecutive.store(0, Ordering::Relaxed);
            }
            Outcome::Overloaded => self.failures.add(now, 1),
            Outcome::Failure => {
                self.failures.add(now, 1);
                self.consecutive.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Caller | Outcome::Local => {}
        }
        if !config.enabled || self.is_ejected() || outcome == Outcome::Success {
            return Verdict::Unchanged;
        }
        // A connect refused or timed out: the endpoint is down or out of
        // reach, and every request sent there meanwhile would fail the same
        // way. Out at once, with the ejection's backoff (1 s doubling to
        // 60 s, jittered), not after a run of failures; the fleet guard
        // still applies.
        if class.is_unreachable() {
            return Verdict::Eject;
        }
        let run = self.consecutive.load(Ordering::Relaxed);
        if config.consecutive_failures > 0 && run >= config.consecutive_failures {
            return Verdict::Eject;
        }
        let (ok, failed) = (self.successes.sum(now), self.failures.sum(now));
        let total = ok + failed;
        if config.success_rate > 0.0
            && total >= i64::from(config.min_requests.max(1))
            && (ok as f64) < config.success_rate * total as f64
        {
            return Verdict::Eject;
        }
        Verdict::Unchanged
    }

    /// Ejects the endpoint until `now_ns` plus its (jittered) penalty, and
    /// doubles the next penalty. Returns the penalty, or `None` if it was
    /// already ejected.
    pub(crate) fn eject(
        &self,
        now_ns: u64,
        config: &EjectionSettings,
        reprobe: bool,
    ) -> Option<Duration> {
        let mut penalty = self.penalty.lock().unwrap_or_else(|p| p.into_inner());
        if !reprobe && self.ejected.swap(true, Ordering::AcqRel) {
            return None;
        }
        let this = config.jittered(*penalty);
        *penalty = penalty
            .saturating_mul(2)
            .min(config.max_penalty.max(config.base_penalty));
        self.probe_at.store(
            now_ns.saturating_add(this.as_nanos() as u64),
            Ordering::Release,
        );
        self.probing.store(false, Ordering::Release);
        self.ejected.store(true, Ordering::Release);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        Some(this)
    }

    /// Puts the endpoint back: counts and penalty start afresh.
    pub(crate) fn restore(&self, config: &EjectionSettings) {
        *self.penalty.lock().unwrap_or_else(|p| p.into_inner()) = config.base_penalty;
        self.consecutive.store(0, Ordering::Relaxed);
        self.successes.clear();
        self.failures.clear();
        self.probing.store(false, Ordering::Release);
        self.ejected.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Retry;

    fn config() -> EjectionSettings {
        EjectionSettings {
            jitter: 0.0,
            ..EjectionSettings::default()
        }
    }

    const FAIL: Class = Class::failure(Retry::Never);
    const BUSY: Class = Class::overloaded();

    /// With the default jitter (0.5), ejection penalties spread over
    /// `base × [0.75, 1.25]`, so endpoints ejected together are not probed
    /// together; repeat ejections double around the doubled base.
    #[test]
    fn penalties_are_jittered_by_the_default() {
        let c = EjectionSettings::default();
        assert_eq!(c.jitter, 0.5);
        let base = c.base_penalty.as_secs_f64();
        let firsts: Vec<f64> = (0..400)
            .map(|_| {
                let h = Health::new(&c);
                h.eject(0, &c, false).unwrap().as_secs_f64() / base
            })
            .collect();
        let (min, max) = firsts
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let mean = firsts.iter().sum::<f64>() / firsts.len() as f64;
        assert!(min >= 0.75 && max <= 1.25, "factors {min}..{max}");
        assert!(
            max - min > 0.4,
            "400 penalties spread only over {min}..{max}"
        );
        assert!((0.95..1.05).contains(&mean), "mean factor {mean}");

        let h = Health::new(&c);
        h.eject(0, &c, false);
        let second = h.eject(0, &c, true).unwrap().as_secs_f64() / base;
        assert!(
            (1.5..=2.5).contains(&second),
            "second penalty {second} × base"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn five_failures_in_a_row_eject() {
        // The success-rate trigger off: only the run of failures can eject.
        let c = EjectionSettings {
            success_rate: 0.0,
            ..config()
        };
        let h = Health::new(&c);
        for _ in 0..4 {
            assert_eq!(
                h.observe(FAIL, false, &c, Instant::now()),
                Verdict::Unchanged
            );
        }
        // A success breaks the run.
        assert_eq!(
            h.observe(Class::SUCCESS, false, &c, Instant::now()),
            Verdict::Unchanged
        );
        for _ in 0..3 {
            h.observe(FAIL, false, &c, Instant::now());
        }
        // The fourth in this run is not enough; the fifth ejects.
        assert_eq!(
            h.observe(FAIL, false, &c, Instant::now()),
            Verdict::Unchanged
        );
        assert_eq!(h.observe(FAIL, false, &c, Instant::now()), Verdict::Eject);
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_success_rate_ejects_with_enough_requests() {
        let c = EjectionSettings {
            consecutive_failures: 0,
            ..config()
        };
        let h = Health::new(&c);
        // 3 of 4 succeed: under the minimum of 5 requests, nothing happens.
        for class in [Class::SUCCESS, FAIL, Class::SUCCESS, Class::SUCCESS] {
            assert_eq!(
                h.observe(class, false, &c, Instant::now()),
                Verdict::Unchanged
            );
        }
        // 3 of 5 (60 % < 80 %): ejected.
        assert_eq!(h.observe(FAIL, false, &c, Instant::now()), Verdict::Eject);
    }

    #[tokio::test(start_paused = true)]
    async fn overload_counts_for_the_rate_but_not_the_run() {
        let c = EjectionSettings {
            success_rate: 0.0,
            ..config()
        };
        let h = Health::new(&c);
        for _ in 0..20 {
            assert_eq!(
                h.observe(BUSY, false, &c, Instant::now()),
                Verdict::Unchanged
            );
        }
        let c = config();
        let h = Health::new(&c);
        for _ in 0..4 {
            h.observe(BUSY, false, &c, Instant::now());
        }
        assert_eq!(
            h.observe(BUSY, false, &c, Instant::now()),
            Verdict::Eject,
            "0 of 5 succeeded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_expire_with_the_window() {
        let c = EjectionSettings {
            consecutive_failures: 0,
            ..config()
        };
        let h = Health::new(&c);
        for _ in 0..4 {
            h.observe(FAIL, false, &c, Instant::now());
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            h.observe(FAIL, false, &c, Instant::now()),
            Verdict::Unchanged
        );
    }

    #[tokio::test(start_paused = true)]
    async fn penalties_double_up_to_the_cap_and_reset_on_restore() {
        let c = EjectionSettings {
            max_penalty: Duration::from_secs(5),
            ..config()
        };
        let h = Health::new(&c);
        assert_eq!(h.eject(0, &c, false), Some(Duration::from_secs(1)));
        assert_eq!(h.eject(0, &c, false), None, "already ejected");
        assert!(!h.try_claim_probe(999_999_999));
        assert!(h.try_claim_probe(1_000_000_000));
        assert!(!h.try_claim_probe(1_000_000_000), "one probe at a time");
        assert_eq!(h.state(1_000_000_000), EndpointState::Probing);
        for want in [2, 4, 5, 5] {
            assert_eq!(h.eject(0, &c, true), Some(Duration::from_secs(want)));
        }
        h.restore(&c);
        assert_eq!(h.state(0), EndpointState::Active);
        assert_eq!(h.eject(0, &c, false), Some(Duration::from_secs(1)));
        assert_eq!(h.ejections(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_is_given_back() {
        let c = config();
        let h = Health::new(&c);
        h.eject(0, &c, false);
        assert!(h.try_claim_probe(2_000_000_000));
        h.release_probe();
        assert!(h.try_claim_probe(2_000_000_000));
    }

    #[test]
    fn fleet_guard_arithmetic() {
        let c = EjectionSettings::default();
        assert_eq!(c.max_ejected(1), 1, "always one");
        assert_eq!(c.max_ejected(5), 2);
        assert_eq!(c.max_ejected(10), 5);
        assert!(c.panics(1, 3));
        assert!(!c.panics(2, 3));
        let odd = EjectionSettings {
            max_ejection_percent: f64::NAN,
            ..EjectionSettings::default()
        };
        assert_eq!(odd.max_ejected(10), 1);
    }
}
