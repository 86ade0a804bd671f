//! The concurrency limit (bulkhead): at most `max` requests in flight, a
//! bounded FIFO queue for the next few, and a typed error for the rest.
//!
//! See the [module docs](super) for where it sits in the stack.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::error::{BoxError, Error, Limit};
use crate::facts::Hints;
use crate::refuse::{Pass, Refusable};
use crate::settings::{Problems, SettingsError};

/// Default [`max`](ConcurrencySettings::max): requests in flight.
pub const DEFAULT_MAX: usize = 256;
/// Default [`queue`](ConcurrencySettings::queue): requests waiting for a
/// slot.
pub const DEFAULT_QUEUE: usize = 64;
/// Default [`max_wait`](ConcurrencySettings::max_wait) in the queue.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);

/// The waiter table is allocated up front up to this many entries; a larger
/// `queue` grows it on demand, never past `queue`.
const PREALLOCATE: usize = 1024;

/// The settings of a [`ConcurrencyLimitLayer`]; `Default` is the library's
/// default bulkhead.
///
/// ```
/// use palisade::limit::ConcurrencySettings;
/// use std::time::Duration;
///
/// let settings = ConcurrencySettings {
///     max: 0,
///     max_wait: Some(Duration::ZERO),
///     ..ConcurrencySettings::default()
/// };
/// let err = settings.validate().unwrap_err();
/// assert_eq!(err.problems().len(), 2);
/// assert_eq!(err.problems()[0].to_string(), "max: must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct ConcurrencySettings {
    /// Requests allowed in flight at once, across every clone; at least 1.
    /// Default [`DEFAULT_MAX`].
    pub max: usize,
    /// Requests allowed to wait, first in first out, for a slot; 0 sheds
    /// every request that finds all slots taken. Default [`DEFAULT_QUEUE`].
    pub queue: usize,
    /// The longest a request waits in the queue before it is shed with
    /// [`Limit::QueueTimeout`]; greater than 0. `None` (`"none"`) waits as
    /// long as the request's deadline allows; a request never waits past
    /// its [`Deadline`](crate::deadline::Deadline) either way. Default
    /// [`DEFAULT_MAX_WAIT`].
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::opt_duration"))]
    pub max_wait: Option<Duration>,
}

impl Default for ConcurrencySettings {
    fn default() -> Self {
        ConcurrencySettings {
            max: DEFAULT_MAX,
            queue: DEFAULT_QUEUE,
            max_wait: Some(DEFAULT_MAX_WAIT),
        }
    }
}

impl ConcurrencySettings {
    /// Every problem with these settings, each at its field (`"max"`).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        p.at_least("max", self.max, 1, "");
        if let Some(wait) = self.max_wait {
            p.positive(
                "max_wait",
                wait,
                "\"none\" waits as long as the request's deadline allows; \
                 `queue = 0` sheds instead of queueing",
            );
        }
        p.finish()
    }
}

/// A bulkhead shared by every service made from it; see the
/// [module docs](super).
///
/// The limit is created once, by [`new`](ConcurrencyLimitLayer::new).
/// Every service the layer makes, every clone of the layer and every
/// [`handle`](ConcurrencyLimitLayer::handle) shares it: clone one layer to
/// share one bulkhead between clients.
///
/// ```
/// use palisade::limit::{ConcurrencyLimitLayer, ConcurrencySettings};
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let settings = ConcurrencySettings {
///     max: 32,
///     queue: 8,
///     max_wait: Some(Duration::from_millis(250)),
/// };
/// let layer = ConcurrencyLimitLayer::new("users", settings)?;
/// let handle = layer.handle();
///
/// // Two clients, one bulkhead: each is given a clone of the layer.
/// let backend = service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
/// let mut a = layer.clone().layer(backend.clone());
/// let mut b = layer.layer(backend);
/// let first = a.ready().await?.call(http::Request::new(()));
/// let second = b.ready().await?.call(http::Request::new(()));
/// assert_eq!((handle.in_flight(), handle.max()), (2, 32));
/// drop((first, second));
/// assert_eq!(handle.in_flight(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ConcurrencyLimitLayer {
    core: Arc<Core>,
}

impl ConcurrencyLimitLayer {
    /// A concurrency limit for the service called `service` (named in
    /// errors), or every problem with `settings`.
    pub fn new(
        service: impl Into<Arc<str>>,
        settings: ConcurrencySettings,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(ConcurrencyLimitLayer {
            core: Arc::new(Core::new(service.into(), settings)),
        })
    }

    /// The settings the limit was built from.
    pub fn settings(&self) -> &ConcurrencySettings {
        &self.core.config
    }

    /// A handle on this layer's limit.
    pub fn handle(&self) -> ConcurrencyHandle {
        ConcurrencyHandle {
            core: self.core.clone(),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            core: self.core.clone(),
        }
    }
}

/// The service [`ConcurrencyLimitLayer`] makes: calls its inner service
/// while it holds one of the shared slots.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    core: Arc<Core>,
}

impl<S> ConcurrencyLimit<S> {
    /// A handle on this service's limit (shared with the layer and every
    /// other service made from it).
    pub fn handle(&self) -> ConcurrencyHandle {
        ConcurrencyHandle {
            core: self.core.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Hints,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::inner(&self.core.service, None, e))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let now = Instant::now();
        let until = match (self.core.config.max_wait, req.deadline()) {
            (Some(wait), Some(deadline)) => Some(deadline.instant().min(now + wait)),
            (Some(wait), None) => Some(now + wait),
            (None, Some(deadline)) => Some(deadline.instant()),
            (None, None) => None,
        };
        let may_wait = until.is_none_or(|until| until > now);
        let state = match self.core.acquire(may_wait) {
            Acquire::Permit(permit) => State::Running {
                future: self.inner.call(req),
                permit: Some(permit),
            },
            Acquire::Queued(ticket) => {
                // The future calls the inner service once it has a slot: it
                // takes the instance that was driven to readiness and leaves
                // a fresh clone here for the next `poll_ready`.
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                State::Waiting {
                    sleep: until.map(tokio::time::sleep_until),
                    ticket,
                    service: Some(service),
                    req: Some(req),
                    since: now,
                }
            }
            Acquire::Full => {
                return Refusable::refused(self.core.shed(Limit::Concurrency {
                    max: self.core.config.max,
                    queue: self.core.config.queue,
                }));
            }
            Acquire::NoTime => {
                return Refusable::refused(self.core.shed(Limit::QueueTimeout {
                    max: self.core.config.max,
                    waited: Duration::ZERO,
                }));
            }
        };
        Refusable::running(Admitted { state }, Pass)
    }
}

/// The response future of [`ConcurrencyLimit`]: shed at once, or
/// [`Admitted`] (queued, then running).
pub type ResponseFuture<S, Req> = Refusable<Admitted<S, Req>, Pass>;

/// A request the bulkhead took: while queued it holds the request and its
/// place in the queue; once running, its slot. Dropping it at any point
/// leaves the queue or frees the slot (handing it to the next waiter).
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct Admitted<S, Req>
where
    S: Service<Req>,
{
    #[pin]
    state: State<S, Req, S::Future>,
}

#[pin_project(project = StateProj)]
enum State<S, Req, F> {
    /// Waiting in the queue for a slot.
    Waiting {
        #[pin]
        sleep: Option<Sleep>,
        ticket: Ticket,
        service: Option<S>,
        req: Option<Req>,
        since: Instant,
    },
    /// Holding a slot; the inner service has the request.
    Running {
        #[pin]
        future: F,
        permit: Option<Permit>,
    },
    /// Done: shed after waiting, or answered.
    Done,
}

impl<S: Service<Req>, Req> fmt::Debug for Admitted<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "Waiting",
            State::Running { .. } => "Running",
            State::Done => "Done",
        };
        f.debug_struct("Admitted")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Future for Admitted<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Done => panic!("polled after completion"),
                StateProj::Running { future, permit } => {
                    let result = std::task::ready!(future.poll(cx));
                    let permit = permit.take().expect("polled after completion");
                    let result = result.map_err(|e| Error::inner(&permit.core.service, None, e));
                    // Frees the slot (or hands it to the next waiter).
                    drop(permit);
                    return Poll::Ready(result);
                }
                StateProj::Waiting {
                    sleep,
                    ticket,
                    service,
                    req,
                    since,
                } => {
                    let granted = match ticket.poll_granted(cx) {
                        Poll::Ready(()) => true,
                        Poll::Pending => {
                            let expired = sleep.as_pin_mut().is_some_and(|s| s.poll(cx).is_ready());
                            if !expired {
                                return Poll::Pending;
                            }
                            // Out of time: leave the queue, unless a slot
                            // arrived in the meantime.
                            ticket.leave()
                        }
                    };
                    if !granted {
                        let core = &ticket.core;
                        let error = core.shed(Limit::QueueTimeout {
                            max: core.config.max,
                            waited: since.elapsed(),
                        });
                        self.set(Admitted { state: State::Done });
                        return Poll::Ready(Err(error));
                    }
                    let permit = ticket.granted();
                    let mut service = service.take().expect("polled after completion");
                    let req = req.take().expect("polled after completion");
                    let future = service.call(req);
                    self.set(Admitted {
                        state: State::Running {
                            future,
                            permit: Some(permit),
                        },
                    });
                }
            }
        }
    }
}

/// What [`Core::acquire`] found.
enum Acquire {
    /// A free slot, now held.
    Permit(Permit),
    /// No free slot; a place in the queue, now held.
    Queued(Ticket),
    /// No free slot and the queue is full.
    Full,
    /// No free slot, and the request may not wait at all.
    NoTime,
}

/// One waiter in the queue.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Slots {
    in_flight: usize,
    /// Waiters in arrival order; tickets increase front to back, so a
    /// waiter is found by binary search.
    waiters: VecDeque<Waiter>,
    next_ticket: u64,
}

/// One limit: shared by every service a layer makes, their clones, their
/// response futures and every [`ConcurrencyHandle`].
struct Core {
    service: Arc<str>,
    config: ConcurrencySettings,
    /// Taken for a few instructions per acquire and release, never across
    /// an await.
    slots: Mutex<Slots>,
    shed_full: AtomicU64,
    shed_timeout: AtomicU64,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (in_flight, queued) = self.counts();
        f.debug_struct("ConcurrencyLimit")
            .field("service", &self.service)
            .field("in_flight", &in_flight)
            .field("queued", &queued)
            .field("config", &self.config)
            .finish()
    }
}

impl Core {
    fn new(service: Arc<str>, config: ConcurrencySettings) -> Core {
        Core {
            service,
            slots: Mutex::new(Slots {
                in_flight: 0,
                waiters: VecDeque::with_capacity(config.queue.min(PREALLOCATE)),
                next_ticket: 0,
            }),
            config,
            shed_full: AtomicU64::new(0),
            shed_timeout: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // The counts are consistent between statements: a panic elsewhere
        // cannot leave them half-written.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot, or a place in the queue if `may_wait`.
    fn acquire(self: &Arc<Self>, may_wait: bool) -> Acquire {
        let mut slots = self.lock();
        // A free slot implies an empty queue: a release hands its slot to
        // the first waiter rather than freeing it.
        if slots.in_flight < self.config.max {
            slots.in_flight += 1;
            return Acquire::Permit(Permit { core: self.clone() });
        }
        if slots.waiters.len() >= self.config.queue {
            return Acquire::Full;
        }
        if !may_wait {
            return Acquire::NoTime;
        }
        let ticket = slots.next_ticket;
        slots.next_ticket += 1;
        slots.waiters.push_back(Waiter {
            ticket,
            waker: None,
        });
        Acquire::Queued(Ticket {
            core: self.clone(),
            ticket,
            queued: true,
        })
    }

    /// Frees a slot: hands it to the first waiter, if any.
    fn release(&self) {
        let mut slots = self.lock();
        let waker = match slots.waiters.pop_front() {
            Some(waiter) => waiter.waker,
            None => {
                slots.in_flight -= 1;
                None
            }
        };
        drop(slots);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn shed(&self, limit: Limit) -> Error {
        let counter = match limit {
            Limit::QueueTimeout { .. } => &self.shed_timeout,
            _ => &self.shed_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(service = %self.service, %limit, "request shed");
        Error::Overloaded {
            service: self.service.clone(),
            limit,
        }
    }

    fn counts(&self) -> (usize, usize) {
        let slots = self.lock();
        (slots.in_flight, slots.waiters.len())
    }
}

/// A held slot; dropping it frees the slot.
struct Permit {
    core: Arc<Core>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.core.release();
    }
}

/// A held place in the queue; dropping it leaves the queue (or, when the
/// slot had already been handed to it, frees that slot).
struct Ticket {
    core: Arc<Core>,
    ticket: u64,
    /// Still counted in the queue or holding a granted slot: `Drop` has
    /// work to do.
    queued: bool,
}

impl Ticket {
    /// Ready once a release handed this waiter a slot (it left the queue).
    fn poll_granted(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = self.core.lock();
        let waiters = &mut slots.waiters;
        match waiters.binary_search_by_key(&self.ticket, |w| w.ticket) {
            Ok(i) => {
                let waker = &mut waiters[i].waker;
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            // Only a release takes a waiter out of the queue on its behalf.
            Err(_) => Poll::Ready(()),
        }
    }

    /// Leaves the queue. Returns whether a slot had been granted first (the
    /// ticket then still holds it; turn it into a permit).
    fn leave(&mut self) -> bool {
        let mut slots = self.core.lock();
        match slots
            .waiters
            .binary_search_by_key(&self.ticket, |w| w.ticket)
        {
            Ok(i) => {
                slots.waiters.remove(i);
                self.queued = false;
                false
            }
            Err(_) => true,
        }
    }

    /// The slot this waiter was handed.
    fn granted(&mut self) -> Permit {
        self.queued = false;
        Permit {
            core: self.core.clone(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.queued && self.leave() {
            // Handed a slot it will never use: pass it on.
            self.core.release();
        }
    }
}

/// A cheap, cloneable view of one concurrency limit's live state, for
/// snapshots and metrics.
///
/// ```
/// use palisade::limit::{ConcurrencyLimitLayer, ConcurrencySettings};
///
/// let layer = ConcurrencyLimitLayer::new("users", ConcurrencySettings::default())?;
/// let handle = layer.handle();
/// assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
/// assert_eq!((handle.max(), handle.queue()), (256, 64));
/// assert_eq!(handle.service(), "users");
/// # Ok::<(), palisade::settings::SettingsError>(())
/// ```
#[derive(Clone)]
pub struct ConcurrencyHandle {
    core: Arc<Core>,
}

impl ConcurrencyHandle {
    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.core.counts().0
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.core.counts().1
    }

    /// Requests allowed in flight.
    pub fn max(&self) -> usize {
        self.core.config.max
    }

    /// Requests allowed to wait.
    pub fn queue(&self) -> usize {
        self.core.config.queue
    }

    /// The longest a request may wait in the queue.
    pub fn max_wait(&self) -> Option<Duration> {
        self.core.config.max_wait
    }

    /// Requests shed so far because the queue was full
    /// ([`Limit::Concurrency`]). Never decreases.
    pub fn shed_full(&self) -> u64 {
        self.core.shed_full.load(Ordering::Relaxed)
    }

    /// Requests shed so far because they waited too long, or had no time
    /// to wait ([`Limit::QueueTimeout`]). Never decreases.
    pub fn shed_timeout(&self) -> u64 {
        self.core.shed_timeout.load(Ordering::Relaxed)
    }

    /// The name of the service the limit guards.
    pub fn service(&self) -> &str {
        &self.core.service
    }
}

/// A concurrency limit's state in a [`Snapshot`](crate::Snapshot).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ConcurrencyStats {
    /// Requests in flight now.
    pub in_flight: usize,
    /// Requests waiting for a slot now.
    pub queued: usize,
    /// The most in flight.
    pub max: usize,
    /// Requests shed because the queue was full.
    pub shed_full: u64,
    /// Requests shed after waiting as long as allowed.
    pub shed_timeout: u64,
}

impl ConcurrencyHandle {
    /// The limit's state now, as plain data.
    pub fn stats(&self) -> ConcurrencyStats {
        ConcurrencyStats {
            in_flight: self.in_flight(),
            queued: self.queued(),
            max: self.max(),
            shed_full: self.shed_full(),
            shed_timeout: self.shed_timeout(),
        }
    }
}

impl fmt::Debug for ConcurrencyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}
