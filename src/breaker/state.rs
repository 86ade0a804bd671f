//! The breaker's shared state machine: an atomic state word read on the hot
//! path, rolling success/failure counts, and a short lock for transitions and
//! half-open probe accounting.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::BreakerSettings;
use crate::rolling::RollingCount;

/// How long a request turned away while the half-open probes are in flight
/// is told to wait (at most the sleep window): the probes' outcome is
/// usually that close.
pub(super) const HALF_OPEN_RETRY_IN: Duration = Duration::from_millis(100);

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const STATE_MASK: u64 = 0b11;

/// The state word: the state in the low two bits, the generation (the number
/// of transitions so far) above them.
fn encode(state: u64, generation: u64) -> u64 {
    generation << 2 | state
}

fn decode(word: u64) -> (u64, u64) {
    (word & STATE_MASK, word >> 2)
}

/// One breaker: shared by every service a layer makes, their clones, their
/// response futures and every [`BreakerHandle`].
pub(super) struct Core {
    pub(super) service: Arc<str>,
    pub(super) settings: BreakerSettings,
    /// What `open_until` counts from.
    epoch: Instant,
    /// See [`encode`].
    word: AtomicU64,
    /// While open: when the sleep window ends, in nanoseconds since `epoch`.
    /// Written before the state word (under the lock), so a reader that sees
    /// `OPEN` sees this open's value or a later one.
    open_until: AtomicU64,
    successes: RollingCount,
    failures: RollingCount,
    /// Taken for transitions and half-open admission, never across an
    /// await.
    lock: Mutex<Locked>,
}

#[derive(Debug, Default)]
struct Locked {
    /// Probes in flight in the current half-open generation.
    probes: u32,
}

/// Admission to call the inner service. Held by the response future; a probe
/// permit dropped without an outcome (the request was cancelled) is handed
/// back so that the breaker can probe again.
pub(super) struct Permit {
    core: Arc<Core>,
    /// The generation the request was admitted in; its outcome only counts
    /// if the breaker is still in it.
    generation: u64,
    probe: bool,
    done: bool,
    /// The request's deadline: dropped after it, the call was cut off
    /// waiting on the service, and that is a failure.
    deadline: Option<Instant>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("generation", &self.generation)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Permit {
    /// The service this permit's breaker guards.
    pub(super) fn service(&self) -> &Arc<str> {
        &self.core.service
    }

    /// The request's deadline, so that a call the deadline cuts off counts
    /// as a failure.
    pub(super) fn until(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Records the request's outcome.
    pub(super) fn record(mut self, failure: bool) {
        self.done(failure);
    }

    fn done(&mut self, failure: bool) {
        self.done = true;
        let now = Instant::now();
        if self.probe {
            self.core.probe_done(self.generation, failure, now);
        } else {
            self.core.closed_done(self.generation, failure, now);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            // The deadline cut the call off while it waited: the service
            // did not answer in time, which a hung endpoint looks like.
            self.done(true);
        } else if self.probe {
            self.core.probe_cancelled(self.generation);
        }
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("service", &self.service)
            .field("state", &self.state())
            .field("transitions", &self.transitions())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Core {
    /// A closed breaker with nothing counted; `settings` must be valid.
    pub(super) fn new(service: Arc<str>, settings: BreakerSettings) -> Core {
        Core {
            service,
            epoch: Instant::now(),
            word: AtomicU64::new(encode(CLOSED, 0)),
            open_until: AtomicU64::new(0),
            successes: RollingCount::new(settings.window),
            failures: RollingCount::new(settings.window),
            lock: Mutex::new(Locked::default()),
            settings,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        // The lock guards plain counters that are consistent between
        // statements: a panic elsewhere cannot leave them half-written.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    /// Until the sleep window ends, if the breaker is open and it has not.
    fn open_for(&self, now: Instant) -> Option<Duration> {
        let until = self.open_until.load(Ordering::Acquire);
        let now = self.nanos(now);
        (now < until).then(|| Duration::from_nanos(until - now))
    }

    fn permit(self: &Arc<Self>, generation: u64, probe: bool) -> Permit {
        Permit {
            core: self.clone(),
            generation,
            probe,
            done: false,
            deadline: None,
        }
    }

    /// Lets a request through, or says how long until one may be.
    pub(super) fn admit(self: &Arc<Self>) -> Result<Permit, Duration> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            let (state, generation) = decode(word);
            match state {
                CLOSED => return Ok(self.permit(generation, false)),
                OPEN => {
                    if let Some(retry_in) = self.open_for(Instant::now()) {
                        return Err(retry_in);
                    }
                    let mut locked = self.lock();
                    if self.word.load(Ordering::Acquire) != word {
                        continue; // Someone else moved it on; look again.
                    }
                    locked.probes = 1;
                    self.word
                        .store(encode(HALF_OPEN, generation + 1), Ordering::Release);
                    drop(locked);
                    tracing::debug!(
                        service = %self.service,
                        "circuit breaker half-open: probing"
                    );
                    return Ok(self.permit(generation + 1, true));
                }
                _ => {
                    let mut locked = self.lock();
                    if self.word.load(Ordering::Acquire) != word {
                        continue;
                    }
                    if locked.probes < self.settings.half_open_probes {
                        locked.probes += 1;
                        return Ok(self.permit(generation, true));
                    }
                    return Err(HALF_OPEN_RETRY_IN.min(self.settings.sleep_window));
                }
            }
        }
    }

    /// The outcome of a request admitted while closed.
    fn closed_done(&self, generation: u64, failure: bool, now: Instant) {
        if !self.settings.enabled {
            // Turned off: nothing is counted, so it never opens.
            return;
        }
        let word = encode(CLOSED, generation);
        if self.word.load(Ordering::Acquire) != word {
            // Admitted before the breaker opened: it says nothing about the
            // service as it is now.
            return;
        }
        if !failure {
            // A success never trips the breaker: it costs one atomic add.
            self.successes.add(now, 1);
            return;
        }
        self.failures.add(now, 1);
        let failures = self.failures.sum(now).max(0);
        let total = failures + self.successes.sum(now).max(0);
        let rate = failures as f64 / total as f64;
        if total < i64::from(self.settings.volume_threshold) || rate < self.settings.error_threshold
        {
            return;
        }
        let locked = self.lock();
        if self.word.load(Ordering::Acquire) != word {
            return;
        }
        self.open(generation + 1, now);
        drop(locked);
        tracing::info!(
            service = %self.service,
            error_rate = rate,
            volume = total,
            sleep_window = ?self.settings.sleep_window,
            "circuit breaker opened: {failures} of {total} requests in the last {:?} failed",
            self.settings.window,
        );
    }

    /// Moves to open in `generation` for a sleep window from `now`. Call with
    /// the lock held.
    fn open(&self, generation: u64, now: Instant) {
        let until = self.nanos(now).saturating_add(
            u64::try_from(self.settings.sleep_window.as_nanos()).unwrap_or(u64::MAX),
        );
        self.open_until.store(until, Ordering::Release);
        self.word.store(encode(OPEN, generation), Ordering::Release);
    }

    /// The outcome of a half-open probe.
    fn probe_done(&self, generation: u64, failure: bool, now: Instant) {
        let mut locked = self.lock();
        if self.word.load(Ordering::Acquire) != encode(HALF_OPEN, generation) {
            // Another probe already decided.
            return;
        }
        locked.probes = locked.probes.saturating_sub(1);
        if failure {
            self.open(generation + 1, now);
            drop(locked);
            tracing::info!(
                service = %self.service,
                sleep_window = ?self.settings.sleep_window,
                "circuit breaker reopened: the probe failed",
            );
        } else {
            self.successes.clear();
            self.failures.clear();
            self.word
                .store(encode(CLOSED, generation + 1), Ordering::Release);
            drop(locked);
            tracing::info!(
                service = %self.service,
                "circuit breaker closed: the probe succeeded",
            );
        }
    }

    /// A probe that was dropped before its outcome: its slot is free again.
    fn probe_cancelled(&self, generation: u64) {
        let mut locked = self.lock();
        if self.word.load(Ordering::Acquire) == encode(HALF_OPEN, generation) {
            locked.probes = locked.probes.saturating_sub(1);
        }
    }

    /// The state as callers experience it now.
    fn state(&self) -> BreakerState {
        let (state, _) = decode(self.word.load(Ordering::Acquire));
        match state {
            CLOSED => BreakerState::Closed,
            OPEN => match self.open_for(Instant::now()) {
                Some(retry_in) => BreakerState::Open { retry_in },
                None => BreakerState::HalfOpen,
            },
            _ => BreakerState::HalfOpen,
        }
    }

    fn transitions(&self) -> u64 {
        decode(self.word.load(Ordering::Acquire)).1
    }

    /// Probes in flight (zero unless half-open).
    #[cfg(test)]
    pub(super) fn probes_in_flight(&self) -> u32 {
        let locked = self.lock();
        let (state, _) = decode(self.word.load(Ordering::Acquire));
        if state == HALF_OPEN { locked.probes } else { 0 }
    }
}

/// The state of a circuit breaker, as a [`BreakerHandle`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Requests go through; outcomes are counted.
    Closed,
    /// Requests fail at once with
    /// [`Error::CircuitOpen`](crate::Error::CircuitOpen).
    Open {
        /// How long until the sleep window ends and a probe may go through.
        retry_in: Duration,
    },
    /// Probe requests go through (up to
    /// [`half_open_probes`](super::BreakerSettings::half_open_probes) at a
    /// time); the first outcome closes or reopens the breaker. An open
    /// breaker whose sleep window has passed is reported half-open: its next
    /// request is a probe.
    HalfOpen,
}

/// Written as `"closed"`, `"half-open"` or `"open"`.
#[cfg(feature = "serde")]
impl serde::Serialize for BreakerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half-open",
            BreakerState::Open { .. } => "open",
        })
    }
}

/// A cheap, cloneable view of one breaker's state, for snapshots and
/// metrics.
///
/// ```
/// use palisade::breaker::{BreakerLayer, BreakerSettings, BreakerState};
///
/// let layer = BreakerLayer::new("users", BreakerSettings::default())?;
/// let handle = layer.handle();
/// assert_eq!(handle.state(), BreakerState::Closed);
/// assert_eq!(handle.transitions(), 0);
/// assert_eq!(handle.service(), "users");
/// # Ok::<(), palisade::settings::SettingsError>(())
/// ```
#[derive(Clone)]
pub struct BreakerHandle {
    pub(super) core: Arc<Core>,
}

impl BreakerHandle {
    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        self.core.state()
    }

    /// How many state transitions the breaker has made (closed → open →
    /// half-open → closed is three). Never decreases.
    pub fn transitions(&self) -> u64 {
        self.core.transitions()
    }

    /// The name of the service the breaker guards.
    pub fn service(&self) -> &str {
        &self.core.service
    }
}

impl crate::facts::Circuit for BreakerHandle {
    fn is_closed(&self) -> bool {
        self.state() == BreakerState::Closed
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}
