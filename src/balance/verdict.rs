//! Recording a call's verdict into its endpoint: the latency sample when
//! the head arrives, the final verdict (failure counts, penalty, failure
//! accrual) when the stream ends, and the in-flight count in between.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use super::health::Verdict;
use super::set::Slot;
use crate::classify::{Class, Outcome, Retry};
use crate::error::{BoxError, Error};

impl<S, C> Shared<S, C> {
    /// Feeds one classified outcome, observed at `now`, back into the
    /// endpoint's load and failure accrual: its head and its end at once
    /// (an error, or a response whose end is not watched).
    pub(super) fn record(
        &self,
        in_flight: &mut InFlight<S>,
        class: Class,
        latency: Duration,
        now: Instant,
    ) {
        if class.judges_endpoint() {
            self.observe_head(&in_flight.slot, class, latency, now);
        }
        self.settle(in_flight, class, latency, now);
    }

    /// A call cut off while it waited on the endpoint, `elapsed` after it
    /// started (by the per-try timeout, the deadline, or stall detection):
    /// the endpoint's failure, counted in `timeouts`. Its latency was at
    /// least `elapsed`; but it is no sign of life, so the endpoint's
    /// silence clock runs on.
    pub(super) fn record_cut(&self, in_flight: &mut InFlight<S>, elapsed: Duration, now: Instant) {
        let load = &in_flight.slot.load;
        load.timeouts.fetch_add(1, Ordering::Relaxed);
        load.ewma.observe_at_least(elapsed, now, self.config.decay);
        self.settle(in_flight, Class::failure(Retry::IfIdempotent), elapsed, now);
    }

    /// A response head (or an error) arrived `latency` after the call:
    /// the latency sample, and a server-requested pause (`Retry-After`).
    ///
    /// Latency is measured to the head, not to the end of the body: it is
    /// what the next request waits before anything arrives, and a stream's
    /// length is the caller's business (a long stream counts as load
    /// through the in-flight count instead, which lasts until it ends).
    pub(super) fn observe_head(
        &self,
        slot: &Slot<S>,
        class: Class,
        latency: Duration,
        now: Instant,
    ) {
        let load = &slot.load;
        let estimate = load.ewma.observe(latency, None, now, self.config.decay);
        // A head is a sign of life: the silence clock restarts, with a
        // threshold from the estimate it just updated.
        let now_ns = self.nanos(now);
        load.stall_after_ns
            .store(self.config.stall_after_ns(estimate), Ordering::Relaxed);
        load.heard_at(now_ns);
        let sent = now_ns.saturating_sub(latency.as_nanos() as u64);
        load.answered_sent.fetch_max(sent, Ordering::Relaxed);
        if let Some(after) = class.retry_after() {
            load.mark_busy(now_ns.saturating_add(after.as_nanos() as u64));
        }
    }

    /// The final verdict on a call, at the end of its response's stream:
    /// failure counts and penalty, failure accrual (ejection, probes).
    /// `latency` is the head's, to restart an endpoint back from ejection.
    pub(super) fn settle(
        &self,
        in_flight: &mut InFlight<S>,
        class: Class,
        latency: Duration,
        now: Instant,
    ) {
        if !class.judges_endpoint() {
            // The caller's failure, or ours: nothing learned about the
            // endpoint (a probe's slot goes back when `in_flight` drops).
            return;
        }
        let slot = &in_flight.slot;
        let load = &slot.load;
        let now_ns = self.nanos(now);
        if class.is_failure() {
            load.failures.fetch_add(1, Ordering::Relaxed);
            load.failed_at.store(now_ns.max(1), Ordering::Relaxed);
            load.ewma.penalize(self.config.failure_penalty, now);
        }
        // The probe (if this was one) is resolved here, not on drop.
        let probe = std::mem::take(&mut in_flight.probe);
        let config = &self.ejection;
        let endpoint = slot.endpoint.address();
        match load.health.observe(class, probe, config, now) {
            Verdict::Unchanged => {}
            Verdict::Eject => self.eject(slot, now_ns),
            Verdict::Restored => {
                load.health.restore(config);
                load.ewma.reset(latency, now);
                self.ejected.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(service = %self.name, %endpoint, "probe succeeded: endpoint restored");
            }
            Verdict::Reejected => {
                if let Some(penalty) = load.health.eject(now_ns, config, true) {
                    tracing::warn!(service = %self.name, %endpoint, ?penalty, "probe failed: endpoint ejected again");
                }
            }
        }
    }

    /// The error for an endpoint's service failing with `e`, judged `class`:
    /// the caller's own failure is [`Error::Caller`], anything else
    /// [`Error::Inner`] naming the endpoint.
    pub(super) fn error(&self, in_flight: &InFlight<S>, class: Class, e: BoxError) -> Error {
        if class.outcome() == Outcome::Caller {
            Error::Caller {
                service: self.name.clone(),
                source: e,
            }
        } else {
            Error::inner(&self.name, Some(in_flight.slot.endpoint.address()), e)
        }
    }

    /// Ejects an endpoint unless the fleet guard says too many already are.
    pub(super) fn eject(&self, slot: &Slot<S>, now_ns: u64) {
        let n = self.set.load().len();
        let max = self.ejection.max_ejected(n);
        let endpoint = slot.endpoint.address();
        let reserved = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                (e < max).then_some(e + 1)
            });
        if reserved.is_err() {
            tracing::debug!(service = %self.name, %endpoint, max, "not ejecting: the fleet guard's limit is reached");
            return;
        }
        match slot.load.health.eject(now_ns, &self.ejection, false) {
            Some(penalty) => {
                tracing::warn!(service = %self.name, %endpoint, ?penalty, "endpoint ejected after repeated failures")
            }
            None => {
                self.ejected.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Counts one request against an endpoint while it is outstanding.
/// If it carries a probe that was never resolved (the request was
/// cancelled), dropping it gives the probe back.
pub(crate) struct InFlight<S> {
    pub(super) slot: Arc<Slot<S>>,
    pub(super) probe: bool,
}

impl<S> InFlight<S> {
    /// Counts a request against `slot`, unless it is at its cap: then
    /// `None`, and a `probe` claimed for it is given back.
    pub(super) fn enter(slot: Arc<Slot<S>>, probe: bool, now_ns: u64) -> Option<Self> {
        if !slot.load.try_enter(now_ns) {
            if probe {
                slot.load.health.release_probe();
            }
            return None;
        }
        slot.load.requests.fetch_add(1, Ordering::Relaxed);
        Some(InFlight { slot, probe })
    }
}

impl<S> Drop for InFlight<S> {
    fn drop(&mut self) {
        self.slot.load.leave();
        if self.probe {
            self.slot.load.health.release_probe();
        }
    }
}
