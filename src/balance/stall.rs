//! Stalled endpoints: one that has requests outstanding and has answered
//! none of them for `max(stall_factor × its latency estimate,
//! stall_floor)`. See the [module docs](super#stalled-endpoints).

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::Shared;
use super::load::Load;
use super::set::EndpointSet;
use crate::discover::Address;

impl<S, C> Shared<S, C> {
    /// Whether `load`'s endpoint is stalled at `now_ns`: it has requests
    /// outstanding, has answered none of them past its threshold, and
    /// another endpoint of `set` has since answered a request sent after
    /// the moment it should have answered by. The last part keeps a fleet
    /// that slows down as a whole (every endpoint silent at once) from
    /// being judged stalled: a hung endpoint stands out against the
    /// others. An endpoint alone is never stalled; its deadline decides.
    pub(super) fn is_stalled(&self, set: &EndpointSet<S>, load: &Load, now_ns: u64) -> bool {
        let Some(due) = load.silent_past(now_ns) else {
            return false;
        };
        set.slots
            .iter()
            .any(|s| s.load.answered_sent.load(Ordering::Relaxed) >= due)
    }

    /// Watches a pending call's endpoint for a stall: arms (or moves)
    /// `stall` to the moment the endpoint would be stalled if it stays
    /// silent, and when that moment comes with no answer heard since,
    /// returns how long it has been silent. `None` while it is not
    /// stalled (the timer holds `cx`'s waker).
    pub(super) fn watch_stall(
        &self,
        load: &Load,
        mut stall: Pin<&mut Option<Sleep>>,
        cx: &mut Context<'_>,
    ) -> Option<Duration> {
        loop {
            let until_ns = load.alive_until.load(Ordering::Relaxed);
            // Not watched yet (no request started its clock), or too far
            // away to matter: the call waits on its own.
            let until = match self.epoch.checked_add(Duration::from_nanos(until_ns)) {
                Some(until) if until_ns != 0 => until,
                _ => return None,
            };
            match stall.as_mut().as_pin_mut() {
                None => stall.set(Some(tokio::time::sleep_until(until))),
                Some(sleep) if sleep.deadline() != until => sleep.reset(until),
                Some(_) => {}
            }
            let sleep = stall.as_mut().as_pin_mut().expect("armed above");
            if sleep.poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            let now_ns = self.nanos(now);
            if self.is_stalled(&self.set.load(), load, now_ns) {
                let threshold = Duration::from_nanos(load.stall_after_ns.load(Ordering::Relaxed));
                return Some(threshold + now.saturating_duration_since(until));
            }
            if load.alive_until.load(Ordering::Relaxed) == until_ns {
                // Silent, but so far no other endpoint has shown it should
                // have answered: look again a little later, backing off as
                // the silence grows (an eighth of it) so that a long poll
                // on a quiet fleet wakes rarely.
                let threshold = Duration::from_nanos(load.stall_after_ns.load(Ordering::Relaxed));
                let silence = threshold + now.saturating_duration_since(until);
                let again = now
                    + (silence / 8)
                        .max(self.config.stall_floor / 10)
                        .max(Duration::from_millis(1));
                let mut sleep = stall.as_mut().as_pin_mut().expect("armed above");
                sleep.as_mut().reset(again);
                if sleep.poll(cx).is_pending() {
                    return None;
                }
            }
            // Heard from since the timer was set: wait for the new moment.
        }
    }
}

/// The error of a call given up because its endpoint stalled: it had
/// requests outstanding and answered none of them for `silent`. The
/// endpoint's failure; an idempotent request may be retried elsewhere.
///
/// ```
/// use palisade::balance::Stalled;
/// use std::time::Duration;
///
/// let e = Stalled::new("127.0.0.1:8080".parse().unwrap(), Duration::from_secs(1));
/// assert_eq!(
///     e.to_string(),
///     "endpoint 127.0.0.1:8080 stalled: no answer for 1s with requests outstanding"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    endpoint: Address,
    silent: Duration,
}

impl Stalled {
    /// The error for `endpoint`, silent for `silent`.
    pub fn new(endpoint: Address, silent: Duration) -> Self {
        Stalled { endpoint, silent }
    }

    /// The endpoint that stalled.
    pub fn endpoint(&self) -> &Address {
        &self.endpoint
    }

    /// How long it had been silent with requests outstanding.
    pub fn silent(&self) -> Duration {
        self.silent
    }
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "endpoint {} stalled: no answer for {:?} with requests outstanding",
            self.endpoint, self.silent
        )
    }
}

impl std::error::Error for Stalled {}
