//! Power-of-two-choices load balancing over peak-EWMA load.
//!
//! [`Balance`] spreads requests over a changing set of endpoints and prefers
//! the ones that answer fastest with the least outstanding work. It is
//! `Clone + Send + Sync`: every clone shares one endpoint set and one load
//! table, so it can be used from any number of tasks at once without a
//! `tower::buffer::Buffer` worker in front. Endpoint changes arrive from a
//! discovery source on a small background task; requests read the current
//! set through an atomic pointer and never wait on a lock.
//!
//! # Choosing an endpoint
//!
//! For each request the balancer draws two distinct endpoints at random
//! (weighted, see [below](#weights)) and sends the request to the one with
//! the lower *cost*:
//!
//! ```text
//! cost = max(latency + penalty, min_rtt) × (in_flight / weight + 1)
//! ```
//!
//! An endpoint marked busy by `Retry-After` loses to one that is not; if both
//! are busy the lower cost wins. Costs within 10 % of each other are a tie
//! (such differences between latency estimates are noise), settled by a coin
//! weighted by the two weights. The choice is O(1): two random draws, two
//! cost reads (each a short, uncontended per-endpoint lock), no allocation.
//! Ejected endpoints (see [`EjectionSettings`]) are not drawn, except for
//! their probes.
//!
//! # Peak-EWMA
//!
//! Each endpoint keeps a latency estimate that
//!
//! - **decays** toward zero with time constant
//!   [`decay`](BalanceSettings::decay) (default 10 s) while nothing is observed,
//!   so a slow endpoint is eventually given another chance;
//! - jumps to any sample **above** the current estimate at once (the *peak*),
//!   so a slowdown is noticed on the first slow response;
//! - blends in samples **below** it with weight `1 - exp(-Δt / decay)`, where
//!   `Δt` is the time since the previous sample, so recovery is smooth and
//!   independent of request rate bursts; but never less than 1/50, so that
//!   at a high request rate one hiccup (a pause, a scheduling delay) fades
//!   after about 50 faster answers instead of holding the estimate up for
//!   most of the decay time, which let an idle slow endpoint look as cheap
//!   as a busy fast one.
//!
//! A new endpoint starts at the median estimate of the current set (of a
//! random sample of 63 of its endpoints when it has more, so that adding
//! one costs the same at any size; or
//! [`default_rtt`](BalanceSettings::default_rtt), 30 ms, when the set is
//! empty), never below [`min_rtt`](BalanceSettings::min_rtt) (1 ms), so it is
//! neither flooded nor starved while it earns a real estimate. Its first
//! sample replaces the seed outright; blending starts from the second.
//!
//! **When a sample is taken:** the clock starts when the request is handed to
//! the endpoint's service (after that service reported ready) and stops when
//! its response future resolves: for HTTP, when the response *head* arrives.
//! That is the latency sample: what the next request waits before anything
//! arrives; streaming the body is not included. The *verdict* waits for the
//! end of the stream when the response is watched
//! ([`WatchEos`](crate::classify::WatchEos), which the client builder puts
//! under every endpoint): the [`Classify`]'s
//! [`classify_end`](Classify::classify_end) judges the trailers (gRPC's
//! status), a body that failed (a reset mid-body is the endpoint's failure)
//! or a body the caller dropped (the head's verdict), and the in-flight
//! count lasts until then, so a long stream counts as load. A response
//! that is not watched is judged by its head. A failure (5xx, a gRPC
//! failure status, a transport or body error, 429 with the default
//! classifier, a call cut off by the per-try timeout or the deadline while
//! it waited) enters the latency estimate at the latency it really had,
//! and also raises the endpoint's
//! *penalty* to [`failure_penalty`](BalanceSettings::failure_penalty) (1 s).
//! The penalty is added to the latency in the cost and fades with its own
//! length as time constant (368 ms a second later, 18 ms four seconds
//! later): an endpoint that fails fast looks slow rather than attractive,
//! is tried again a few seconds later, and if that try succeeds it competes
//! on its real latency at once. (A penalty fed into the 10 s average
//! instead would keep a recovered endpoint out for most of a minute.) A
//! `Retry-After` on a 429 or 503 marks the endpoint busy until then.
//!
//! # Weights
//!
//! An endpoint's weight is its relative *capacity*. It enters the choice in
//! two places:
//!
//! 1. each of the two candidates is drawn with probability proportional to
//!    weight (Vose's alias table, rebuilt when the set changes, O(1) per
//!    draw), and exact cost ties are settled by a coin weighted the same way;
//! 2. in-flight requests are divided by weight in the cost, so under load an
//!    endpoint of weight 3 carries about three times the concurrent requests
//!    of a weight-1 endpoint before it looks as loaded.
//!
//! So when endpoints are equally fast and lightly loaded, traffic splits
//! roughly in proportion to weight; under concurrency the outstanding work
//! splits in proportion; and weights never override measured latency: a heavy
//! endpoint that is slow is still avoided (latency is not scaled by weight).
//! P2C's draw of two is not an exact weighted split — with three endpoints
//! weighted 1, 1, 2 the heavy one gets about 55 % instead of 50 % — so for an
//! exact percentage (canaries) split traffic between services at the route
//! level, or use [`Choice::Random`], which follows weights exactly.
//!
//! # Endpoint changes
//!
//! A removed endpoint gets no new requests from the moment the change is
//! applied; requests already in flight to it finish normally. A replaced
//! endpoint (same key, new metadata) keeps its load estimate. When the
//! endpoint factory fails for one endpoint, that endpoint is left out (with an
//! error log naming it) and the others keep serving. When the set is empty, a
//! request waits up to [`endpoint_wait`](BalanceSettings::endpoint_wait)
//! (default 3 s) for one to appear, then fails with
//! [`Error::NoEndpoints`].
//!
//! # Stalled endpoints
//!
//! An endpoint that accepts requests and never answers (a hung process, a
//! full accept queue behind a live listener, a long GC pause) is caught
//! without a per-try timeout. Each endpoint keeps a silence clock: its
//! last sign of life (a response head, or a request sent to it when it had
//! none outstanding) plus a threshold of
//! `max(stall_factor × its latency estimate, stall_floor)` (8×, at least
//! 1 s) as of its last answer. It is **stalled** when it has requests
//! outstanding, the clock has run out, and *another endpoint has answered
//! a request sent after that moment*: the fleet shows the endpoint should
//! have answered by then. That last part keeps a fleet that slows down as
//! a whole (every endpoint silent at once: an overloaded database behind
//! all of them) from being judged stalled, and an endpoint alone is never
//! judged (its deadline decides).
//!
//! A stalled endpoint is passed over like a quarantined one. Its
//! idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE; see
//! [`Hints::idempotent`]) are given up: each in-flight call arms a timer
//! for the end of its endpoint's silence clock when it first waits
//! (rechecking, at an eighth of the silence so far, while no other
//! endpoint has shown the silence to be abnormal), and when it finds the
//! endpoint stalled it fails with [`Stalled`]: the endpoint's failure
//! (penalty, failure accrual, counted in
//! [`EndpointStats::timeouts`]), which the retry layer may send to another
//! endpoint within its budget and the deadline. A POST is not given up (it
//! may have been acted on); it waits for its answer or its deadline.
//!
//! Under steady traffic a request stuck on a hung endpoint is given up
//! about a second after the endpoint went silent (tests/reliability.rs
//! `b_blackholed_backend_with_the_defaults`: 4000 GETs, one of five
//! backends blackholed, all succeeded, the slowest in 1.15 s, 7 attempts
//! ever sent to the blackhole). Without other traffic there is no
//! evidence, and the deadline cuts the call, also as the endpoint's
//! failure. The cost: an endpoint that normally takes longer than
//! `stall_floor` while the others answer fast is judged stalled too, and
//! its idempotent requests go to the others; raise `stall_floor` above
//! such an endpoint's latency, or turn `stall_detection` off, if that is
//! not wanted. An endpoint slower than the others but under the floor
//! (20× of 5 ms) is never judged (tests/hangs.rs).
//!
//! # Readiness
//!
//! `poll_ready` is always ready: capacity is decided per request, not per
//! clone. The chosen endpoint's own service is driven to readiness inside the
//! response future; an endpoint whose service fails to become ready is
//! charged a failure.
//!
//! # Example
//!
//! ```
//! use palisade::balance::{Balance, BalanceSettings, EjectionSettings};
//! use palisade::classify::{Class, Classify};
//! use palisade::discover::{Endpoint, Static};
//! use tower::{Service, ServiceExt, service_fn};
//!
//! #[derive(Clone)]
//! struct AlwaysOk;
//! impl<T> Classify<T> for AlwaysOk {
//!     fn classify_response(&self, _: &T) -> Class { Class::SUCCESS }
//!     fn classify_error(&self, e: &(dyn std::error::Error + 'static)) -> Class {
//!         palisade::classify::classify_transport_error(e)
//!     }
//! }
//!
//! /// A request of some protocol other than HTTP: it opts in to the
//! /// balancer with an empty `Hints` impl (no retry or deadline hints).
//! struct Echo(String);
//! impl palisade::balance::Hints for Echo {}
//!
//! /// Its reply opts in with an empty `ResponseEos` impl: it has no stream
//! /// to watch, so it is judged by its head alone.
//! struct Reply(String);
//! impl palisade::classify::ResponseEos for Reply {}
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let endpoints = Static::parse(["127.0.0.1:1", "127.0.0.1:2"])?;
//! // One service per endpoint; here an in-memory echo of its address.
//! let new_endpoint = |ep: &Endpoint| {
//!     let addr = ep.address().to_string();
//!     Ok::<_, std::convert::Infallible>(service_fn(move |req: Echo| {
//!         let addr = addr.clone();
//!         async move { Ok::<_, std::convert::Infallible>(Reply(format!("{addr} got {}", req.0))) }
//!     }))
//! };
//! let settings = (BalanceSettings::default(), EjectionSettings::default());
//! let balance = Balance::new("echo", endpoints, new_endpoint, AlwaysOk, settings.0, settings.1)?;
//! let reply = balance.clone().oneshot(Echo("hi".into())).await?;
//! assert!(reply.0.ends_with("got hi"));
//! # Ok(())
//! # }
//! ```

mod discovery;
mod future;
mod health;
mod load;
mod pick;
mod set;
mod stall;
mod verdict;

pub use stall::Stalled;

pub use future::ResponseFuture;
mod settings;

pub use health::EndpointState;
pub use settings::{BalanceSettings, Choice, EjectionSettings};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tower::Service;
use tower::discover::{Change, Discover};

use self::load::{Load, Room};
use self::set::{CostModel, EndpointSet, Slot};
use crate::classify::{Classify, ResponseEos};
use crate::discover::{Address, Endpoint};
pub use crate::endpoint::NewEndpoint;
use crate::error::{BoxError, BuildError, Error};
pub use crate::facts::{Hints, Tried};
use crate::settings::Problems;

/// A P2C peak-EWMA load balancer; see the [module docs](self).
pub struct Balance<S, C> {
    shared: Arc<Shared<S, C>>,
}

impl<S, C> Clone for Balance<S, C> {
    fn clone(&self) -> Self {
        Balance {
            shared: self.shared.clone(),
        }
    }
}

impl<S, C> fmt::Debug for Balance<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("service", &self.shared.name)
            .field("endpoints", &self.shared.set.load().len())
            .finish()
    }
}

pub(crate) struct Shared<S, C> {
    name: Arc<str>,
    set: ArcSwap<EndpointSet<S>>,
    changed: Notify,
    /// Where requests wait when every endpoint is at its in-flight cap.
    room: Arc<Room>,
    classify: C,
    config: BalanceSettings,
    ejection: EjectionSettings,
    cost: CostModel,
    epoch: Instant,
    /// Endpoints of the current set that are ejected (recounted whenever the
    /// set is republished).
    ejected: AtomicUsize,
    /// Whether the fleet guard's panic mode is on (for logging its changes).
    panicking: AtomicBool,
    /// How long after its second failure in a row an endpoint is not drawn
    /// for comparison: until its penalty has faded to a tenth
    /// (`failure_penalty × ln 10`).
    quarantine_ns: u64,
    /// How many times panic mode was entered.
    panics: AtomicU64,
    /// Dropped with the last reference: tells the discovery task to stop.
    _close: oneshot::Sender<()>,
}

/// What the balancer knows about one endpoint, at one moment.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct EndpointStats {
    /// The endpoint's address.
    pub address: Address,
    /// Its weight.
    pub weight: f64,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The current (decayed) peak-EWMA cost estimate: latency, with each
    /// failure counted as at least the failure penalty. This is what the
    /// balancer compares.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "rtt_estimate_ms", with = "crate::settings::millis")
    )]
    pub rtt_estimate: Duration,
    /// The current (decayed) peak-EWMA of the latency it really showed,
    /// failures included at their real latency. Retries use it to judge
    /// whether an attempt can finish before the deadline.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "latency_estimate_ms", with = "crate::settings::millis")
    )]
    pub latency_estimate: Duration,
    /// Requests sent to it and not yet answered.
    pub in_flight: usize,
    /// Requests sent to it since it was added.
    pub requests: u64,
    /// Of those, how many were classified as failures.
    pub failures: u64,
    /// Of the failures, how many were calls cut off while they waited on
    /// the endpoint, by the per-try timeout or the deadline: a hung
    /// endpoint's signature.
    pub timeouts: u64,
    /// How much longer it is marked busy by `Retry-After`, if it is.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "busy_for_ms", with = "crate::settings::millis::option")
    )]
    pub busy_for: Option<Duration>,
    /// Whether failure accrual has ejected it.
    pub state: EndpointState,
    /// How many times it was ejected (failed probes included).
    pub ejections: u64,
}

impl<S, C> Balance<S, C>
where
    S: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    /// Creates a balancer named `name` (used in errors and logs) over the
    /// endpoints that `discover` yields, building each endpoint's service
    /// with `new_endpoint`.
    ///
    /// Spawns the discovery task on the current Tokio runtime; it ends when
    /// the last clone of the balancer (and the last in-flight request) is
    /// dropped. Fails if called outside a Tokio runtime.
    pub fn new<D, N>(
        name: impl Into<Arc<str>>,
        discover: D,
        new_endpoint: N,
        classify: C,
        config: BalanceSettings,
        ejection: EjectionSettings,
    ) -> Result<Self, BuildError>
    where
        D: Discover<Service = Endpoint> + Send + 'static,
        D::Key: Hash + Eq + Clone + fmt::Debug + Send,
        D::Error: Into<BoxError>,
        N: NewEndpoint<Service = S>,
    {
        let name = name.into();
        let mut problems = Problems::new();
        problems.nested("balancer", config.validate());
        problems.nested("ejection", ejection.validate());
        problems
            .finish()
            .map_err(|e| BuildError::settings(&name, e))?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| BuildError::no_runtime(&name))?;
        let (close_tx, close_rx) = oneshot::channel();
        let quarantine_ns =
            (config.failure_penalty.as_nanos() as f64 * std::f64::consts::LN_10) as u64;
        let shared = Arc::new(Shared {
            name,
            set: ArcSwap::from_pointee(EndpointSet::empty()),
            changed: Notify::new(),
            room: Arc::default(),
            classify,
            cost: CostModel {
                decay: config.decay,
                failure_penalty: config.failure_penalty,
                min_rtt_ns: config.min_rtt.as_nanos() as f64,
            },
            config,
            ejection,
            epoch: Instant::now(),
            ejected: AtomicUsize::new(0),
            panicking: AtomicBool::new(false),
            quarantine_ns,
            panics: AtomicU64::new(0),
            _close: close_tx,
        });
        runtime.spawn(discovery::discover_task(
            discover,
            new_endpoint,
            Arc::downgrade(&shared),
            close_rx,
        ));
        Ok(Balance { shared })
    }
}

/// A handle on a [`Balance`] that does not keep it alive (for observers
/// such as metrics collectors: when the client is gone, so are its series).
pub struct WeakBalance<S, C> {
    shared: Weak<Shared<S, C>>,
}

impl<S, C> Clone for WeakBalance<S, C> {
    fn clone(&self) -> Self {
        WeakBalance {
            shared: self.shared.clone(),
        }
    }
}

impl<S, C> fmt::Debug for WeakBalance<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakBalance").finish_non_exhaustive()
    }
}

impl<S, C> WeakBalance<S, C> {
    /// The balancer, if any clone of it (or a request in flight) remains.
    pub fn upgrade(&self) -> Option<Balance<S, C>> {
        self.shared.upgrade().map(|shared| Balance { shared })
    }
}

impl<S, C> Balance<S, C> {
    /// The service name given at construction.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The settings the balancer was built with.
    pub fn settings(&self) -> &BalanceSettings {
        &self.shared.config
    }

    /// The failure accrual settings the balancer was built with.
    pub fn ejection_settings(&self) -> &EjectionSettings {
        &self.shared.ejection
    }

    /// A handle that does not keep the balancer alive.
    pub fn downgrade(&self) -> WeakBalance<S, C> {
        WeakBalance {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Whether the fleet guard's panic mode is on (too few endpoints
    /// available: ejections ignored), and how many times it was entered.
    pub fn panic_mode(&self) -> (bool, u64) {
        (
            self.shared.panicking.load(Ordering::Relaxed),
            self.shared.panics.load(Ordering::Relaxed),
        )
    }

    /// How many endpoints the balancer currently chooses from.
    pub fn len(&self) -> usize {
        self.shared.set.load().len()
    }

    /// Whether the balancer currently has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.shared.set.load().is_empty()
    }

    /// Waits until `done` returns true, checking it now and again after each
    /// change of the endpoint set. For example, at start-up, wait for the
    /// first endpoint (bound it with `tokio::time::timeout`):
    ///
    /// ```no_run
    /// # async fn f<S, C>(balance: palisade::balance::Balance<S, C>) {
    /// balance.wait_until(|b| !b.is_empty()).await;
    /// # }
    /// ```
    pub async fn wait_until(&self, mut done: impl FnMut(&Self) -> bool) {
        loop {
            // Created before the check, so a change in between is not missed.
            let changed = self.shared.changed.notified();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    /// The load of every current endpoint, in no particular order.
    pub fn endpoint_stats(&self) -> Vec<EndpointStats> {
        let now = Instant::now();
        let now_ns = self.shared.nanos(now);
        self.shared
            .set
            .load()
            .slots
            .iter()
            .map(|slot| {
                let load = &slot.load;
                let busy_until = load.busy_until.load(Ordering::Relaxed);
                EndpointStats {
                    address: slot.endpoint.address().clone(),
                    weight: slot.endpoint.weight(),
                    labels: slot.endpoint.labels().clone(),
                    rtt_estimate: Duration::from_nanos(load.ewma.estimate_ns(
                        now,
                        self.shared.config.decay,
                        self.shared.config.failure_penalty,
                    ) as u64),
                    latency_estimate: Duration::from_nanos(
                        load.ewma.latency_ns(now, self.shared.config.decay) as u64,
                    ),
                    in_flight: load.in_flight(),
                    requests: load.requests.load(Ordering::Relaxed),
                    failures: load.failures.load(Ordering::Relaxed),
                    timeouts: load.timeouts.load(Ordering::Relaxed),
                    busy_for: (busy_until > now_ns)
                        .then(|| Duration::from_nanos(busy_until - now_ns)),
                    state: load.health.state(now_ns),
                    ejections: load.health.ejections(),
                }
            })
            .collect()
    }
}

impl<S, C, Req> Service<Req> for Balance<S, C>
where
    Req: Hints,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Response: ResponseEos,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, C, Req>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let set = self.shared.set.load();
        if set.is_empty() {
            return ResponseFuture::waiting(self.shared.clone(), req);
        }
        let picked = self.shared.pick_for(&set, &req);
        drop(set);
        if let Ok(Some(in_flight)) = &picked {
            // Fills the retry layer's attempt span, when there is one.
            tracing::Span::current().record(
                "endpoint",
                tracing::field::display(in_flight.slot.endpoint.address()),
            );
        }
        match picked {
            Ok(Some(in_flight)) => ResponseFuture::ready(self.shared.clone(), in_flight, req),
            // Every endpoint is at its cap: wait for a slot.
            Ok(None) => ResponseFuture::waiting(self.shared.clone(), req),
            Err(error) => ResponseFuture::failed(self.shared.clone(), error),
        }
    }
}

/// Waits until some endpoint could take a request (the set is non-empty
/// and one endpoint is below its in-flight cap) or `until` passes.
async fn wait_for_endpoints<S, C>(shared: Arc<Shared<S, C>>, until: Instant) {
    loop {
        let mut changed = pin!(shared.changed.notified());
        changed.as_mut().enable();
        let waiter = shared.room.wait();
        let mut room = pin!(waiter.freed());
        room.as_mut().enable();
        if shared.set.load().slots.iter().any(|s| s.load.has_room()) {
            return;
        }
        let either = futures::future::select(changed, room);
        if tokio::time::timeout_at(until, either).await.is_err() {
            return;
        }
    }
}

pub(crate) use verdict::InFlight;

#[cfg(test)]
mod cap_tests;
#[cfg(test)]
mod cut_tests;
#[cfg(test)]
mod discovery_tests;
#[cfg(test)]
mod eos_tests;
#[cfg(test)]
mod tests;
