//! Request facts: what a layer tells the layers below it about one request,
//! carried in the request's extensions (or, for a custom request type,
//! through [`Hints`]). These types are shared by every layer, so no layer
//! imports another to learn them.
//!
//! - [`Deadline`]: the absolute instant the request must be answered by,
//!   set by the deadline layer and read by limits, retries, hedging and the
//!   balancer; [`header`] parses and writes its wire forms.
//! - [`Tried`]: the endpoints a request's attempts went to, created by the
//!   retry layer and read and appended to by the balancer.
//! - [`Circuit`]: a read-only view of the service breaker, for layers below
//!   it (hedging) that must not spend extra work on a failing service.

mod deadline;
pub mod header;

pub(crate) use deadline::stamp_headers;
pub use deadline::{Deadline, Propagate};

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::endpoint::Address;

/// A read-only view of a service breaker: whether the service is healthy
/// enough to spend extra work on (a hedge, say). Implemented by
/// [`BreakerHandle`](crate::breaker::BreakerHandle).
pub trait Circuit: fmt::Debug + Send + Sync {
    /// Whether the breaker is closed (requests flow normally).
    fn is_closed(&self) -> bool;
}

/// What the balancer reads from a request: the endpoints its earlier
/// attempts tried, its deadline, and whether it may be sent again.
///
/// Implemented for `http::Request<B>` (both live in its extensions). A
/// custom request type opts in with an empty impl, which gives no hints:
///
/// ```
/// struct MyRequest(u64);
/// impl palisade::facts::Hints for MyRequest {}
/// ```
pub trait Hints {
    /// The endpoints earlier attempts of this request were sent to.
    fn tried(&self) -> Option<&Tried> {
        None
    }
    /// The request's deadline.
    fn deadline(&self) -> Option<Deadline> {
        None
    }
    /// Whether sending the request twice is as good as once (an
    /// idempotent method): the balancer gives up on such a request when
    /// its endpoint stalls, so that it can be sent elsewhere. Default
    /// false: a request of unknown kind waits for its endpoint.
    fn idempotent(&self) -> bool {
        false
    }
}

impl<B> Hints for http::Request<B> {
    fn tried(&self) -> Option<&Tried> {
        self.extensions().get::<Tried>()
    }
    fn deadline(&self) -> Option<Deadline> {
        Deadline::of(self)
    }
    fn idempotent(&self) -> bool {
        crate::classify::is_idempotent(self.method())
    }
}

/// The endpoints a request's attempts went to, shared between attempts.
///
/// The retry layer puts one in every attempt's extensions; the balancer
/// avoids the endpoints in it whenever another is available, and appends
/// the one it picks. Its length is bounded by the number of attempts.
///
/// It also carries one flag from the retry layer to the balancer: the
/// attempt in flight was cut off by its per-try timeout. The balancer's
/// future, dropped then, records a failure for its endpoint (an endpoint
/// that never answers must be ejected, not only slowed down), where any
/// other cancellation (a hedge lost, the caller went away) only raises the
/// endpoint's latency estimate.
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<TriedState>);

#[derive(Debug, Default)]
struct TriedState {
    addresses: Mutex<Vec<Address>>,
    timed_out: AtomicBool,
}

impl Tried {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Address>> {
        self.0.addresses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the attempt in flight as cut off by its per-try timeout; the
    /// retry layer calls this just before it drops the attempt.
    pub(crate) fn time_out(&self) {
        self.0.timed_out.store(true, Ordering::Release);
    }

    /// Clears the mark for a new attempt.
    pub(crate) fn start_attempt(&self) {
        self.0.timed_out.store(false, Ordering::Relaxed);
    }

    /// Whether the attempt in flight was cut off by its per-try timeout.
    pub(crate) fn timed_out(&self) -> bool {
        self.0.timed_out.load(Ordering::Acquire)
    }

    /// The endpoints tried so far, in order.
    pub fn addresses(&self) -> Vec<Address> {
        self.lock().clone()
    }

    /// The endpoint the latest attempt went to.
    pub fn last(&self) -> Option<Address> {
        self.lock().last().cloned()
    }
}
