//! Hedging: one backup request to another endpoint when the first is slow.
//!
//! [`HedgeLayer`] cuts tail latency. When a request has not been answered
//! after the *hedge delay*, it sends **one** copy of it (the *backup*) to a
//! different endpoint; the first good answer is returned and the other
//! request is cancelled (its future dropped, which for HTTP aborts it).
//!
//! It sits inside the retry layer, above the balancer (`… → retry → hedge →
//! balancer`), so it receives `http::Request<ReplayBody<B>>` and every
//! attempt of a retried request may be hedged.
//!
//! # When a backup is sent
//!
//! Only requests that may safely be sent twice are hedged — those the retry
//! layer could retry: an [idempotent](crate::classify::is_idempotent) method
//! and a body that can still be replayed
//! ([`ReplayBody::try_clone`] gives a handle). Both are checked when the
//! request arrives (no timer is armed otherwise). When the delay has passed
//! without an answer, the backup goes unless one of these says no, in this
//! order:
//!
//! 1. **deadline**: what remains of the request's [`Deadline`] is less than
//!    the hedge delay: the delay (for the default, the p95 latency) is the
//!    time a backup may well need, so one that would most likely be cut by
//!    the deadline is not worth its load;
//! 2. **breaker**: the service breaker given to
//!    [`breaker`](HedgeLayer::breaker) is not closed: a service that is
//!    failing or being probed gets no extra load;
//! 3. **body**: the body outgrew the replay buffer while the first request
//!    was sending it;
//! 4. **budget**: the hedge budget grants a token. It is a
//!    [`RetryBudget`] of its own, separate from the retry budget, with **no
//!    floor**: every request deposits one token, each backup withdraws one,
//!    and the backups of the last 10 s stay within
//!    [`budget_ratio`](HedgeSettings::budget_ratio) (5 %) of that time's
//!    requests (`RetryBudget::new(10 s, 0, 0.05)`), so hedging adds at most
//!    5 % load whatever happens.
//!
//! The backup is built from the first request's parts: same method, URI,
//! version, headers and extensions (among them the [`Deadline`] and the
//! [`Tried`] list, which the layer adds when no retry layer did), with the
//! deadline headers re-stamped with what remains. Because both requests
//! share one [`Tried`], the [balancer](crate::balance) sends the backup to
//! an endpoint other than the first request's whenever one is available;
//! when it picks the same endpoint anyway (every other one is excluded),
//! the backup is dropped before anything is sent
//! ([`HedgeSkip::SameEndpoint`]; its budget token is spent).
//!
//! # Which answer wins
//!
//! The first answer that is not a failure (by the [`Classify`]: for HTTP,
//! not a 5xx, not a 429, not a transport error) is returned, and the other
//! request is dropped. When one of two requests in flight fails, its failure
//! is dropped and the other is awaited, whatever it turns out to be: the
//! caller (the retry layer) gets a failure only when both failed — the
//! later one — and a retry then goes to a third endpoint, since the
//! [`Tried`] list has both. A first request that fails before the delay is
//! returned at once: retrying it is the retry layer's job.
//!
//! # The delay
//!
//! [`HedgeDelay::Percentile`] (the default, p95) follows the latency of
//! this layer's own first requests over the last 5–10 s
//! ([`window`](HedgeSettings::window), 10 s). Backups are not counted, so
//! hedging does not feed its own delay. A first request that lost to its
//! backup counts with the time it had run when it was cancelled: a lower
//! bound, but above the delay, which is all a percentile needs. Failures
//! are not counted. Until the window holds
//! [`min_samples`](HedgeSettings::min_samples) (100), the
//! [`fallback_delay`](HedgeSettings::fallback_delay) (100 ms) is used.
//! Latencies are kept in lock-free log-linear buckets (within 6.25 %,
//! rounded up) and the percentile is recomputed every 16 samples; reading
//! it costs one atomic load. [`HedgeDelay::Fixed`] uses one delay always.
//!
//! # Defaults
//!
//! | knob | default |
//! |---|---|
//! | [`delay`](HedgeSettings::delay) | p95 of recent latencies ([`HedgeDelay::Percentile`]`(0.95)`) |
//! | [`min_samples`](HedgeSettings::min_samples) | 100 |
//! | [`fallback_delay`](HedgeSettings::fallback_delay) | 100 ms |
//! | [`window`](HedgeSettings::window) | 10 s (percentile over the last 5–10 s) |
//! | [`budget_ratio`](HedgeSettings::budget_ratio) | 5 % of requests over 10 s, no floor (or your own budget: [`with_budget`](HedgeLayer::with_budget)) |
//! | [`breaker`](HedgeLayer::breaker) | none |
//! | [`classify`](HedgeLayer::classify) | [`HttpClassify`] |
//!
//! One layer value is one hedger, created once by [`HedgeLayer::new`]: the
//! services it makes, their clones and the layer's clones (whatever breaker
//! or classifier they are given) share its latency tracker, budget and
//! counters, which a [`HedgeHandle`] reads. Every request costs a budget
//! deposit, a few clock reads and (for a percentile delay) one latency
//! sample, a few atomic adds; one that may be hedged also clones its head
//! (method, URI, headers, extensions) and the inner service for the backup,
//! and arms a timer. The response future is a named, pin-projected state
//! machine; only a backup, once sent, is boxed (at most the budget's share
//! of requests). All timing uses Tokio's clock, whose timers tick in whole
//! milliseconds: a backup goes up to 1 ms after its delay.
//!
//! Under the retry layer, a per-try timeout covers both requests of an
//! attempt; when both fail, the retry avoids both endpoints. The balancer
//! treats a backup like a retry (the [`Tried`] list is not empty): it will
//! not start one on an endpoint whose latency estimate does not fit before
//! the deadline, and the backup then fails at once while the first request
//! goes on.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use palisade::hedge::{HedgeDelay, HedgeLayer, HedgeSettings};
//! use palisade::retry::{ReplayBody, RetryBudget};
//! use tokio::time::Instant;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The first call takes a second, later ones 10 ms.
//! let calls = Arc::new(AtomicU32::new(0));
//! let backend = service_fn(move |_req: http::Request<ReplayBody<String>>| {
//!     let n = calls.fetch_add(1, Ordering::Relaxed);
//!     async move {
//!         let ms = if n == 0 { 1000 } else { 10 };
//!         tokio::time::sleep(Duration::from_millis(ms)).await;
//!         Ok::<_, Infallible>(http::Response::new(n))
//!     }
//! });
//! let settings = HedgeSettings {
//!     delay: HedgeDelay::Fixed(Duration::from_millis(50)),
//!     ..HedgeSettings::default()
//! };
//! // A floor of one hedge a second, so that the very first request may be
//! // hedged (the default budget has no floor).
//! let budget = RetryBudget::from_settings(&palisade::budget::BudgetSettings {
//!     ratio: 0.05,
//!     min_per_sec: 1,
//!     ttl: Duration::from_secs(10),
//! })?;
//! let layer = HedgeLayer::with_budget("users", settings, budget)?;
//! let hedges = layer.handle();
//! let svc = layer.layer(backend);
//!
//! let req = http::Request::get("http://users/").body(ReplayBody::new(String::new(), 1024))?;
//! let start = Instant::now();
//! let rsp = svc.oneshot(req).await?;
//! assert_eq!(*rsp.body(), 1, "the backup answered");
//! assert_eq!(start.elapsed(), Duration::from_millis(60), "50 ms delay + 10 ms");
//! assert_eq!((hedges.stats().sent, hedges.stats().won), (1, 1));
//! # Ok(())
//! # }
//! ```
//!
//! [`Deadline`]: crate::deadline::Deadline
//! [`Tried`]: crate::balance::Tried
//! [`RetryBudget`]: crate::budget::RetryBudget

mod future;
mod latency;
mod settings;

pub use future::ResponseFuture;
pub use settings::{
    DEFAULT_BUDGET_RATIO, DEFAULT_BUDGET_TTL, DEFAULT_FALLBACK_DELAY, DEFAULT_MIN_SAMPLES,
    DEFAULT_PERCENTILE, DEFAULT_WINDOW, HedgeDelay, HedgeSettings, MIN_WINDOW,
};

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use self::latency::LatencyTracker;
use crate::budget::RetryBudget;
use crate::classify::is_idempotent;
use crate::classify::{Classify, HttpClassify};
use crate::facts::{Circuit, Deadline, Tried};
use crate::replay::ReplayBody;
use crate::settings::SettingsError;

/// Why a request was not hedged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HedgeSkip {
    /// The hedge budget was spent.
    Budget,
    /// Less than the hedge delay remained before the deadline.
    Deadline,
    /// The service breaker was not closed.
    Breaker,
    /// The method is not idempotent (counted when the request arrives).
    Method,
    /// The body cannot be replayed (counted when the request arrives, or
    /// when the delay passed if it outgrew the replay buffer meanwhile).
    Body,
    /// The balancer had no other endpoint for the backup.
    SameEndpoint,
}

impl HedgeSkip {
    /// Every reason, in the order of [`as_str`](HedgeSkip::as_str)'s labels.
    pub const ALL: [HedgeSkip; 6] = [
        HedgeSkip::Budget,
        HedgeSkip::Deadline,
        HedgeSkip::Breaker,
        HedgeSkip::Method,
        HedgeSkip::Body,
        HedgeSkip::SameEndpoint,
    ];

    /// A short label for metrics: `budget`, `deadline`, `breaker`,
    /// `method`, `body`, `same_endpoint`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HedgeSkip::Budget => "budget",
            HedgeSkip::Deadline => "deadline",
            HedgeSkip::Breaker => "breaker",
            HedgeSkip::Method => "method",
            HedgeSkip::Body => "body",
            HedgeSkip::SameEndpoint => "same_endpoint",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for HedgeSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HedgeSkip::Budget => "hedge budget exhausted",
            HedgeSkip::Deadline => "too little time left before the deadline",
            HedgeSkip::Breaker => "circuit breaker not closed",
            HedgeSkip::Method => "method is not idempotent",
            HedgeSkip::Body => "request body cannot be replayed",
            HedgeSkip::SameEndpoint => "no other endpoint for the backup",
        })
    }
}

/// What every service, clone, future and handle of one layer shares.
#[derive(Debug)]
struct State {
    service: Arc<str>,
    settings: HedgeSettings,
    budget: RetryBudget,
    /// Present for a percentile delay.
    tracker: Option<LatencyTracker>,
    sent: AtomicU64,
    won: AtomicU64,
    skipped: [AtomicU64; HedgeSkip::ALL.len()],
}

impl State {
    fn new(service: Arc<str>, settings: HedgeSettings, budget: RetryBudget) -> State {
        let tracker = match settings.delay {
            HedgeDelay::Percentile(q) => Some(LatencyTracker::new(
                q,
                settings.min_samples,
                settings.window,
            )),
            HedgeDelay::Fixed(_) => None,
        };
        State {
            service,
            settings,
            budget,
            tracker,
            sent: AtomicU64::new(0),
            won: AtomicU64::new(0),
            skipped: Default::default(),
        }
    }

    /// The hedge delay for a request arriving now.
    fn delay(&self) -> Duration {
        match (self.settings.delay, &self.tracker) {
            (HedgeDelay::Fixed(delay), _) => delay,
            (_, Some(tracker)) => tracker.get().unwrap_or(self.settings.fallback_delay),
            (_, None) => self.settings.fallback_delay,
        }
    }

    /// Records the latency of a first request sent at `started`
    /// (percentile delay only).
    fn observe(&self, started: Instant) {
        if let Some(tracker) = &self.tracker {
            let now = Instant::now();
            tracker.observe(now.saturating_duration_since(started), now);
        }
    }

    fn skip(&self, reason: HedgeSkip) {
        self.skipped[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::trace!(service = %self.service, %reason, "not hedged");
    }
}

/// The shared state plus what a layer value is wired to: the breaker it
/// consults and the classifier (the handle needs only the state). Giving a
/// layer another breaker or classifier makes a new `Inner` around the same
/// state.
#[derive(Debug)]
struct Inner<C> {
    state: Arc<State>,
    breaker: Option<Arc<dyn Circuit>>,
    classify: C,
}

impl<C> Inner<C> {
    /// Whether an outcome ends the request (a good answer) rather than
    /// letting the other request, if any, go on.
    fn is_good<RB, E>(&self, outcome: &Result<Response<RB>, E>) -> bool
    where
        C: Classify<Response<RB>>,
    {
        match outcome {
            Ok(rsp) => !self.classify.classify_response(rsp).is_failure(),
            Err(_) => false,
        }
    }

    /// The checks made when the delay has passed, in the documented order;
    /// the budget token is withdrawn last, only when all else agrees.
    fn may_hedge<B>(
        &self,
        parts: &http::request::Parts,
        body: &ReplayBody<B>,
        delay: Duration,
    ) -> Result<(), HedgeSkip> {
        if let Some(deadline) = parts.extensions.get::<Deadline>()
            && deadline.remaining() < delay
        {
            return Err(HedgeSkip::Deadline);
        }
        if let Some(breaker) = &self.breaker
            && !breaker.is_closed()
        {
            return Err(HedgeSkip::Breaker);
        }
        if !body.is_replayable() {
            return Err(HedgeSkip::Body);
        }
        if !self.state.budget.withdraw() {
            return Err(HedgeSkip::Budget);
        }
        Ok(())
    }
}

/// Sends one backup request to another endpoint when the first is slow;
/// see the [module docs](self).
///
/// The hedger (latency tracker, budget, counters) is created once, by
/// [`new`](HedgeLayer::new). Every service the layer makes, every clone of
/// the layer (whatever [`breaker`](HedgeLayer::breaker) or
/// [`classify`](HedgeLayer::classify) gives it) and every
/// [`handle`](HedgeLayer::handle) shares it, so a handle taken at any time
/// reports what the services do.
///
/// ```
/// use palisade::hedge::{HedgeDelay, HedgeLayer, HedgeSettings};
/// use std::time::Duration;
///
/// let settings = HedgeSettings {
///     delay: HedgeDelay::Percentile(0.99),
///     min_samples: 200,
///     fallback_delay: Duration::from_millis(250),
///     budget_ratio: 0.02,
///     ..HedgeSettings::default()
/// };
/// let layer = HedgeLayer::new("users", settings)?;
/// assert_eq!(layer.settings().min_samples, 200);
/// assert_eq!(layer.handle().delay(), Duration::from_millis(250));
/// # Ok::<(), palisade::settings::SettingsError>(())
/// ```
#[derive(Debug)]
#[must_use]
pub struct HedgeLayer<C = HttpClassify> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for HedgeLayer<C> {
    fn clone(&self) -> Self {
        HedgeLayer {
            inner: self.inner.clone(),
        }
    }
}

impl HedgeLayer<HttpClassify> {
    /// A hedging layer for the service called `service` (named in logs)
    /// with the default HTTP classifier and no breaker, its budget made
    /// from [`budget_ratio`](HedgeSettings::budget_ratio), or every problem
    /// with `settings`.
    pub fn new(
        service: impl Into<Arc<str>>,
        settings: HedgeSettings,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        let budget = RetryBudget::new(DEFAULT_BUDGET_TTL, 0, settings.budget_ratio);
        Ok(HedgeLayer::from_parts(service.into(), settings, budget))
    }

    /// Like [`new`](HedgeLayer::new), but backups draw on `budget` (a clone
    /// of one budget shares it; the settings' `budget_ratio` is then not
    /// used). Give it a budget of its own, not the retry budget: the two
    /// would starve each other.
    pub fn with_budget(
        service: impl Into<Arc<str>>,
        settings: HedgeSettings,
        budget: RetryBudget,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(HedgeLayer::from_parts(service.into(), settings, budget))
    }

    fn from_parts(service: Arc<str>, settings: HedgeSettings, budget: RetryBudget) -> Self {
        HedgeLayer {
            inner: Arc::new(Inner {
                state: Arc::new(State::new(service, settings, budget)),
                breaker: None,
                classify: HttpClassify::default(),
            }),
        }
    }
}

impl<C> HedgeLayer<C> {
    /// The settings the hedger was built from.
    pub fn settings(&self) -> &HedgeSettings {
        &self.inner.state.settings
    }

    /// A handle on this layer's counters and current delay.
    pub fn handle(&self) -> HedgeHandle {
        HedgeHandle {
            state: self.inner.state.clone(),
        }
    }

    /// The budget backups draw on.
    pub fn hedge_budget(&self) -> &RetryBudget {
        &self.inner.state.budget
    }

    /// The service breaker to consult (any [`Circuit`] view, such as a
    /// [`BreakerHandle`](crate::breaker::BreakerHandle)): no backup is sent
    /// while it is not closed. Default none. The hedger is kept.
    pub fn breaker(self, breaker: impl Circuit + 'static) -> Self
    where
        C: Clone,
    {
        HedgeLayer {
            inner: Arc::new(Inner {
                state: self.inner.state.clone(),
                breaker: Some(Arc::new(breaker)),
                classify: self.inner.classify.clone(),
            }),
        }
    }

    /// Replaces the classifier that decides which answers are failures
    /// (it should be the one the rest of the stack uses). The hedger is
    /// kept.
    pub fn classify<C2>(self, classify: C2) -> HedgeLayer<C2> {
        HedgeLayer {
            inner: Arc::new(Inner {
                state: self.inner.state.clone(),
                breaker: self.inner.breaker.clone(),
                classify,
            }),
        }
    }
}

impl<S, C> Layer<S> for HedgeLayer<C> {
    type Service = Hedge<S, C>;

    fn layer(&self, inner: S) -> Hedge<S, C> {
        Hedge {
            inner,
            shared: self.inner.clone(),
        }
    }
}

/// The service [`HedgeLayer`] makes; see the [module docs](self).
///
/// Its inner service (normally the balancer) receives the same
/// `Request<ReplayBody<B>>` type, and must be `Clone`: the backup is sent
/// through a clone.
pub struct Hedge<S, C = HttpClassify> {
    inner: S,
    shared: Arc<Inner<C>>,
}

impl<S: Clone, C> Clone for Hedge<S, C> {
    fn clone(&self) -> Self {
        Hedge {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Hedge<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("hedger", &self.shared.state)
            .finish_non_exhaustive()
    }
}

impl<S, C> Hedge<S, C> {
    /// A handle on this service's hedger (shared with its layer).
    pub fn handle(&self) -> HedgeHandle {
        HedgeHandle {
            state: self.shared.state.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, B, RB> Service<Request<ReplayBody<B>>> for Hedge<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    C: Classify<Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, C, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        let state = &*self.shared.state;
        let started = Instant::now();
        let shared = self.shared.clone();
        state.budget.deposit();
        if !is_idempotent(req.method()) {
            state.skip(HedgeSkip::Method);
            return ResponseFuture::single(shared, self.inner.call(req), started);
        }
        let Some(body) = req.body().try_clone() else {
            state.skip(HedgeSkip::Body);
            return ResponseFuture::single(shared, self.inner.call(req), started);
        };
        let (mut parts, first) = req.into_parts();
        if parts.extensions.get::<Tried>().is_none() {
            // Shared by both requests, so that the balancer sends the backup
            // elsewhere.
            parts.extensions.insert(Tried::default());
        }
        let backup = future::Backup {
            service: self.inner.clone(),
            parts: parts.clone(),
            body,
        };
        let delay = state.delay();
        let primary = self.inner.call(Request::from_parts(parts, first));
        ResponseFuture::hedged(shared, primary, started, backup, delay)
    }
}

/// A cheap, cloneable view of one hedger: counters and the current delay,
/// for snapshots and metrics.
///
/// ```
/// use palisade::hedge::{HedgeLayer, HedgeSettings, HedgeSkip};
/// use std::time::Duration;
///
/// let layer = HedgeLayer::new("users", HedgeSettings::default())?;
/// let stats = layer.handle().stats();
/// assert_eq!((stats.sent, stats.won), (0, 0));
/// assert_eq!(stats.skipped(HedgeSkip::Budget), 0);
/// assert_eq!(stats.delay, Duration::from_millis(100), "the fallback, until 100 samples");
/// # Ok::<(), palisade::settings::SettingsError>(())
/// ```
#[derive(Clone)]
pub struct HedgeHandle {
    state: Arc<State>,
}

impl fmt::Debug for HedgeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeHandle")
            .field("service", &self.state.service)
            .field("stats", &self.stats())
            .finish()
    }
}

impl HedgeHandle {
    /// The counters and the current delay, now.
    pub fn stats(&self) -> HedgeStats {
        let state = &*self.state;
        HedgeStats {
            sent: state.sent.load(Ordering::Relaxed),
            won: state.won.load(Ordering::Relaxed),
            skipped: std::array::from_fn(|i| state.skipped[i].load(Ordering::Relaxed)),
            delay: state.delay(),
            samples: state
                .tracker
                .as_ref()
                .map_or(0, |t| t.samples(Instant::now())),
            budget_balance: state.budget.balance(),
        }
    }

    /// The delay a request arriving now would get.
    pub fn delay(&self) -> Duration {
        self.state.delay()
    }

    /// The budget backups draw on.
    pub fn budget(&self) -> &RetryBudget {
        &self.state.budget
    }

    /// The name of the service.
    pub fn service(&self) -> &str {
        &self.state.service
    }
}

/// What a [`HedgeHandle`] reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HedgeStats {
    /// Backups sent.
    pub sent: u64,
    /// Backups whose answer was returned (the first request lost, or
    /// failed).
    pub won: u64,
    skipped: [u64; HedgeSkip::ALL.len()],
    /// The delay a request arriving now would get.
    pub delay: Duration,
    /// Latency samples in the percentile's window (0 for a fixed delay).
    pub samples: u64,
    /// Backups the budget would grant now (may be fractional).
    pub budget_balance: f64,
}

/// Written with `delay_ms` in milliseconds and `skipped` as a map from
/// reason (`budget`, `deadline`, …) to count.
#[cfg(feature = "serde")]
impl serde::Serialize for HedgeStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Skipped<'a>(&'a HedgeStats);
        impl serde::Serialize for Skipped<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(
                    HedgeSkip::ALL
                        .iter()
                        .map(|r| (r.as_str(), self.0.skipped(*r))),
                )
            }
        }
        let mut map = s.serialize_map(Some(6))?;
        map.serialize_entry("sent", &self.sent)?;
        map.serialize_entry("won", &self.won)?;
        map.serialize_entry("delay_ms", &(self.delay.as_secs_f64() * 1e3))?;
        map.serialize_entry("samples", &self.samples)?;
        map.serialize_entry("budget_balance", &self.budget_balance)?;
        map.serialize_entry("skipped", &Skipped(self))?;
        map.end()
    }
}

impl HedgeStats {
    /// Requests not hedged for `reason`. [`HedgeSkip::Method`] and
    /// [`HedgeSkip::Body`] count requests when they arrive (most of them
    /// would have been answered before any delay); the others count
    /// requests whose delay passed.
    pub fn skipped(&self, reason: HedgeSkip) -> u64 {
        self.skipped[reason.index()]
    }
}

#[cfg(test)]
mod tests;
