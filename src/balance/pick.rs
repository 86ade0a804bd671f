//! Choosing an endpoint: P2C over peak-EWMA cost, with the exclusions
//! (already tried, ejected, quarantined, stalled, at its cap) and the
//! fleet guard's panic mode. See the [module docs](super#choosing-an-endpoint).

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;

use super::set::EndpointSet;
use super::{Choice, Hints, InFlight, Shared};
use crate::discover::Address;
use crate::error::Error;

impl<S, C> Shared<S, C> {
    pub(super) fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Picks an endpoint for `req` from a non-empty set, avoiding the
    /// endpoints its earlier attempts tried whenever another is available,
    /// and records the choice for later attempts. `None` when every
    /// endpoint is at its in-flight cap.
    ///
    /// A retry (some endpoint was tried before) whose chosen endpoint's
    /// latency estimate (the plain one, without failure penalties) does not
    /// fit before the request's deadline is not started: that is
    /// [`Error::DeadlineExceeded`].
    pub(super) fn pick_for<Req: Hints>(
        &self,
        set: &EndpointSet<S>,
        req: &Req,
    ) -> Result<Option<InFlight<S>>, Error> {
        let Some(tried) = req.tried() else {
            return Ok(self.pick(set, &[]));
        };
        let mut tried = tried.lock();
        let retry = !tried.is_empty();
        let Some(picked) = self.pick(set, &tried) else {
            return Ok(None);
        };
        let slot = &picked.slot;
        tried.push(slot.endpoint.address().clone());
        drop(tried);
        if retry && let Some(deadline) = req.deadline() {
            let expected = slot
                .load
                .ewma
                .latency_ns(Instant::now(), self.config.decay)
                .max(self.cost.min_rtt_ns);
            if expected >= deadline.remaining().as_nanos() as f64 {
                return Err(Error::DeadlineExceeded {
                    service: self.name.clone(),
                    elapsed: Duration::ZERO,
                });
            }
        }
        Ok(Some(picked))
    }

    /// Picks an endpoint from a non-empty set, avoiding those in `avoid`
    /// and ejected ones while others exist, and sending a probe to an ejected
    /// endpoint whose penalty has passed when one is drawn. An endpoint at
    /// its in-flight cap is never picked: `None` when all are. The returned
    /// guard counts the request against the endpoint.
    fn pick(&self, set: &EndpointSet<S>, avoid: &[Address]) -> Option<InFlight<S>> {
        let n = set.len();
        let now_ns = self.nanos(Instant::now());
        let health = |i: usize| &set.slots[i].load.health;
        let room = |i: usize| set.slots[i].load.has_room();
        let chosen = |i: usize, probe: bool| InFlight::enter(set.slots[i].clone(), probe, now_ns);
        if n == 1 {
            // Nothing to fall back on: used ejected or not (panic mode), but
            // still probed, so that it can be restored.
            return room(0).then(|| chosen(0, health(0).try_claim_probe(now_ns)))?;
        }
        let ejected = self.ejected.load(Ordering::Relaxed).min(n);
        let panic = ejected > 0 && self.ejection.panics(n - ejected, n);
        self.note_panic(panic, n - ejected, n);
        let tried = |i: usize| avoid.contains(set.slots[i].endpoint.address());
        // Ejected endpoints, and for a little while endpoints that just
        // failed twice in a row, are replaced by a fresh draw rather than
        // compared: a pair of {slow, failing} would otherwise hand the slow
        // one the request every time the two are drawn together. (One
        // failure alone does not do this: a transient error should not take
        // an endpoint of a small fleet out of the choice.)
        let quarantine = self.quarantine_ns;
        let quarantined = |i: usize| {
            health(i).consecutive_failures() >= 2
                && set.slots[i].load.recently_failed(now_ns, quarantine)
        };
        // A stalled endpoint (silent too long with requests outstanding)
        // is passed over like a quarantined one.
        let stalled = |i: usize| self.is_stalled(set, &set.slots[i].load, now_ns);
        let allowed = |i: usize| {
            room(i)
                && !tried(i)
                && (panic || !health(i).is_ejected())
                && !quarantined(i)
                && !stalled(i)
        };
        // Only when most endpoints are excluded do the draws below miss; then
        // a scan finds one (bounded by the set size). When none is allowed,
        // any endpoint with room will do: preferences give way to capacity.
        let first_allowed = || (0..n).find(|&i| allowed(i));
        let any_with_room = || (0..n).find(|&i| room(i));
        let mut rng = rand::rng();
        let i = match self.config.choice {
            Choice::Random => {
                let mut i = set.sample(&mut rng);
                for _ in 0..4 {
                    if allowed(i) {
                        break;
                    }
                    i = set.sample(&mut rng);
                }
                if allowed(i) {
                    i
                } else {
                    first_allowed().or_else(|| room(i).then_some(i).or_else(any_with_room))?
                }
            }
            Choice::PeakEwmaP2c => {
                let mut pair = set.sample_pair(&mut rng);
                // An ejected endpoint drawn when its penalty is over gets
                // the probe, whatever its cost.
                for i in [pair.0, pair.1] {
                    if !tried(i) && room(i) && health(i).try_claim_probe(now_ns) {
                        return chosen(i, true);
                    }
                }
                // A candidate that may not be used is replaced by a fresh
                // draw, so that two usable endpoints are compared: keeping
                // the other one unopposed would hand it every pair it
                // shares with an excluded endpoint.
                for _ in 0..4 {
                    if !allowed(pair.0) {
                        pair.0 = set.sample(&mut rng);
                    } else if !allowed(pair.1) {
                        pair.1 = set.sample(&mut rng);
                    } else {
                        break;
                    }
                    if pair.0 == pair.1 {
                        pair.1 = (pair.0 + 1 + rng.random_range(0..n - 1)) % n;
                    }
                }
                match (allowed(pair.0), allowed(pair.1)) {
                    (true, false) => pair.0,
                    (false, true) => pair.1,
                    (true, true) => self.cheaper(set, pair, &mut rng),
                    (false, false) => match first_allowed() {
                        Some(i) => i,
                        None => match (room(pair.0), room(pair.1)) {
                            (true, true) => self.cheaper(set, pair, &mut rng),
                            (true, false) => pair.0,
                            (false, true) => pair.1,
                            (false, false) => any_with_room()?,
                        },
                    },
                }
            }
        };
        chosen(i, false)
    }

    /// Logs entering and leaving the fleet guard's panic mode.
    fn note_panic(&self, panic: bool, available: usize, n: usize) {
        if self.panicking.load(Ordering::Relaxed) != panic
            && self.panicking.swap(panic, Ordering::Relaxed) != panic
        {
            if panic {
                self.panics.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    service = %self.name, available, endpoints = n,
                    "too few endpoints available: ignoring ejections (panic mode)"
                );
            } else {
                tracing::info!(service = %self.name, available, endpoints = n, "enough endpoints available again: panic mode over");
            }
        }
    }

    /// The P2C comparison: not busy beats busy, then the lower cost, then a
    /// coin weighted by the endpoints' weights.
    fn cheaper(
        &self,
        set: &EndpointSet<S>,
        (a, b): (usize, usize),
        rng: &mut impl rand::Rng,
    ) -> usize {
        let (sa, sb) = (&set.slots[a], &set.slots[b]);
        let now = Instant::now();
        let now_ns = self.nanos(now);
        match (sa.load.is_busy(now_ns), sb.load.is_busy(now_ns)) {
            (false, true) => a,
            (true, false) => b,
            _ => {
                let (ca, cb) = (self.cost.cost(sa, now), self.cost.cost(sb, now));
                if ca < cb * (1.0 - TIE) {
                    a
                } else if cb < ca * (1.0 - TIE) {
                    b
                } else {
                    let (wa, wb) = (sa.endpoint.weight(), sb.endpoint.weight());
                    if rng.random::<f64>() * (wa + wb) < wa {
                        a
                    } else {
                        b
                    }
                }
            }
        }
    }
}

/// Costs closer than this fraction are a tie, settled by a weighted coin:
/// smaller differences between latency estimates are noise, and treating
/// them as signal makes light traffic follow whichever estimate decayed
/// last rather than the weights.
const TIE: f64 = 0.1;
