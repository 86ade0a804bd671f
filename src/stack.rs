//! The assembled client: [`Client::builder`] puts palisade's layers together
//! in the order of `docs/ARCHITECTURE.md`, with defaults.
//!
//! Today the stack is, outside in:
//!
//! ```text
//! telemetry (TelemetryLayer) → a span per request; per-request metrics
//! deadline (DeadlineLayer)   → one absolute deadline; propagated per attempt
//!  breaker (BreakerLayer)    → Hystrix-style: fail fast while the service fails
//!   retry (RetryLayer)       → policy + shared budget + backoff + body replay
//!    balancer (Balance)      → P2C over peak-EWMA; ejects failing endpoints,
//!                              avoids endpoints already tried
//!     inner client           → one per endpoint, from the NewEndpoint factory
//! discovery                  → feeds the balancer
//! ```
//!
//! Limits join it in this one place as they land, so the request path stays
//! visible here.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::discover::Discover;
use tower::{Layer, Service};

use crate::balance::{
    Balance, BalanceConfig, Choice, EjectionConfig, EndpointStats, NewEndpoint, WeakBalance,
};
use crate::breaker::{self, Breaker, BreakerHandle, BreakerLayer, BreakerSettings};
use crate::classify::{Classify, HttpClassify};
use crate::deadline::{self, DeadlineLayer, DeadlineSettings, EnforceDeadline};
use crate::discover::{Endpoint, Static};
use crate::error::{BoxError, BuildError, Error};
use crate::hedge::{Hedge, HedgeHandle, HedgeLayer};
use crate::http::HttpEndpoints;
use crate::limit::{
    self, ConcurrencyHandle, ConcurrencyLimit, ConcurrencyLimitLayer, RateLimit, RateLimitHandle,
    RateLimitLayer, Throttle, ThrottleHandle, ThrottleLayer, rate::HeaderKey,
};
use crate::metrics::{self, Metrics, Observe, Telemetry, TelemetryLayer};
use crate::retry::{
    self, Backoff, ReplayBody, RetryBudget, RetryCounters, RetryLayer, RetryService,
};
pub use crate::snapshot::Snapshot;

/// The balancer, with hedging when configured.
type Hedged<S, C> = Toggle<Hedge<Balance<S, C>, C>, Balance<S, C>>;
/// The layers of a [`Client`] below the limits: breaker, retry, balancer.
type Guarded<S, C> = Breaker<RetryService<Hedged<S, C>, C>, C>;
/// Adaptive throttling, when configured.
type Throttled<S, C> = Toggle<Throttle<Guarded<S, C>, C>, Guarded<S, C>>;
/// The concurrency limit, when configured.
type Bulkhead<S, C> = Toggle<ConcurrencyLimit<Throttled<S, C>>, Throttled<S, C>>;
/// The rate limit, when configured.
type RateLimited<S, C> = Toggle<RateLimit<Bulkhead<S, C>, Option<HeaderKey>>, Bulkhead<S, C>>;
/// The layers of a [`Client`], outside in.
type Stack<S, C> = Telemetry<EnforceDeadline<RateLimited<S, C>>, C>;

/// A layer of the [`Client`] stack that is configured on or off: one
/// service type either way, so that the client's type does not depend on
/// its configuration.
#[derive(Debug, Clone)]
pub enum Toggle<A, B> {
    /// The layer is on: `A` wraps the rest of the stack.
    On(A),
    /// The layer is off: the rest of the stack, called directly.
    Off(B),
}

impl<A, S> Toggle<A, S> {
    /// `layer` over `inner` when there is one, else `inner` alone.
    fn layer<L: Layer<S, Service = A>>(layer: Option<&L>, inner: S) -> Self {
        match layer {
            Some(layer) => Toggle::On(layer.layer(inner)),
            None => Toggle::Off(inner),
        }
    }
}

impl<A, B, Req> Service<Req> for Toggle<A, B>
where
    A: Service<Req, Error = Error>,
    B: Service<Req, Response = A::Response, Error = Error>,
{
    type Response = A::Response;
    type Error = Error;
    type Future = ToggleFuture<A::Future, B::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self {
            Toggle::On(a) => a.poll_ready(cx),
            Toggle::Off(b) => b.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self {
            Toggle::On(a) => ToggleFuture::On(a.call(req)),
            Toggle::Off(b) => ToggleFuture::Off(b.call(req)),
        }
    }
}

/// The response future of a [`Toggle`].
#[pin_project::pin_project(project = ToggleProj)]
#[derive(Debug)]
pub enum ToggleFuture<A, B> {
    /// The layer's future.
    On(#[pin] A),
    /// The rest of the stack's future.
    Off(#[pin] B),
}

impl<A, B> std::future::Future for ToggleFuture<A, B>
where
    A: std::future::Future,
    B: std::future::Future<Output = A::Output>,
{
    type Output = A::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        match self.project() {
            ToggleProj::On(a) => a.poll(cx),
            ToggleProj::Off(b) => b.poll(cx),
        }
    }
}

/// A resilient HTTP client for one logical service: cheap to clone,
/// `Send + Sync`, usable from any number of tasks at once.
///
/// Build one with [`Client::builder`]. It is a
/// `tower::Service<http::Request<B>>` whose error is [`Error`]; `poll_ready`
/// is always ready, so `ServiceExt::oneshot` on a clone is the usual way to
/// call it. The inner client receives `http::Request<ReplayBody<B>>`: the
/// body wrapped so that a retry can resend it.
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use palisade::{Client, discover::Static};
/// use tower::ServiceExt;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = Client::builder("users")
///     .discover(Static::parse(["127.0.0.1:8081", "127.0.0.1:8082"])?)
///     .http(palisade::http::hyper_client())
///     .build()?;
/// let req = http::Request::get("http://users/health").body(Full::<Bytes>::default())?;
/// let rsp = client.clone().oneshot(req).await?;
/// println!("{}", rsp.status());
/// # Ok(())
/// # }
/// ```
pub struct Client<S, C = HttpClassify> {
    stack: Stack<S, C>,
    balance: Balance<S, C>,
    budget: RetryBudget,
    retries: RetryCounters,
    breaker: BreakerHandle,
    limits: Arc<LimitHandles>,
}

/// Handles on the optional layers a client was built with.
#[derive(Debug, Default)]
struct LimitHandles {
    rate: Option<RateLimitHandle>,
    concurrency: Option<ConcurrencyHandle>,
    throttle: Option<ThrottleHandle>,
    hedge: Option<HedgeHandle>,
}

impl<S, C: Clone> Clone for Client<S, C> {
    fn clone(&self) -> Self {
        Client {
            stack: self.stack.clone(),
            balance: self.balance.clone(),
            budget: self.budget.clone(),
            retries: self.retries.clone(),
            breaker: self.breaker.clone(),
            limits: self.limits.clone(),
        }
    }
}

impl<S, C> fmt::Debug for Client<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("balance", &self.balance)
            .finish()
    }
}

impl Client<(), HttpClassify> {
    /// Starts building a client for the service called `name` (used in
    /// every error message and log line).
    ///
    /// Set discovery ([`Builder::discover`] or [`Builder::endpoints`]) and
    /// the inner client ([`Builder::http`] or [`Builder::new_endpoint`]),
    /// then [`Builder::build`]. Everything else has a default.
    pub fn builder(name: impl Into<Arc<str>>) -> Builder<Unset, Unset, HttpClassify> {
        Builder {
            name: name.into(),
            discover: Unset,
            new_endpoint: Unset,
            classify: HttpClassify::default(),
            balance: BalanceConfig::default(),
            retry: RetryLayer::new(""),
            deadline: DeadlineSettings::default(),
            breaker: BreakerSettings::default(),
            limits: Limits::default(),
            metrics: None,
        }
    }
}

impl<S, C> Client<S, C> {
    /// The service name.
    pub fn name(&self) -> &str {
        self.balance.name()
    }

    /// The balancer's current view of every endpoint.
    pub fn endpoint_stats(&self) -> Vec<EndpointStats> {
        self.balance.endpoint_stats()
    }

    /// Waits until `done` returns true, checking it now and after each change
    /// of the endpoint set; see [`Balance::wait_until`].
    ///
    /// ```no_run
    /// # async fn f<S, C>(client: palisade::Client<S, C>) -> Result<(), tokio::time::error::Elapsed> {
    /// use std::time::Duration;
    /// tokio::time::timeout(Duration::from_secs(5), client.wait_until(|c| c.endpoint_count() > 0)).await
    /// # }
    /// ```
    pub async fn wait_until(&self, mut done: impl FnMut(&Self) -> bool) {
        self.balance.wait_until(|_| done(self)).await
    }

    /// How many endpoints requests are currently spread over.
    pub fn endpoint_count(&self) -> usize {
        self.balance.len()
    }

    /// The retry budget every clone of this client shares.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// The service breaker every clone of this client shares.
    pub fn breaker(&self) -> &BreakerHandle {
        &self.breaker
    }

    /// The rate limit's live state, if the client has one.
    pub fn rate_limit(&self) -> Option<&RateLimitHandle> {
        self.limits.rate.as_ref()
    }

    /// The concurrency limit's live state, if the client has one.
    pub fn concurrency_limit(&self) -> Option<&ConcurrencyHandle> {
        self.limits.concurrency.as_ref()
    }

    /// Adaptive throttling's live state, if the client has it.
    pub fn throttle(&self) -> Option<&ThrottleHandle> {
        self.limits.throttle.as_ref()
    }

    /// Hedging's counters and current delay, if the client hedges.
    pub fn hedge(&self) -> Option<&HedgeHandle> {
        self.limits.hedge.as_ref()
    }

    /// The client's live state, as plain data: every endpoint's load and
    /// standing, the retry budget, the breaker. The demo's table, the tests
    /// and the proxy's admin endpoint read this.
    pub fn snapshot(&self) -> Snapshot {
        snapshot(
            &self.balance,
            &self.budget,
            &self.retries,
            &self.breaker,
            &self.limits,
        )
    }
}

/// What the metrics collector holds of a client: nothing that keeps it
/// alive.
struct Observer<S, C> {
    balance: WeakBalance<S, C>,
    budget: RetryBudget,
    retries: RetryCounters,
    breaker: BreakerHandle,
    limits: Arc<LimitHandles>,
    counts: Option<metrics::ClientMetrics>,
}

impl<S, C> Observe for Observer<S, C>
where
    S: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    fn snapshot(&self) -> Option<(Snapshot, u64)> {
        let balance = self.balance.upgrade()?;
        let requests = self.counts.as_ref().map_or(0, |m| m.requests.get());
        let s = snapshot(
            &balance,
            &self.budget,
            &self.retries,
            &self.breaker,
            &self.limits,
        );
        Some((s, requests))
    }
}

fn snapshot<S, C>(
    balance: &Balance<S, C>,
    budget: &RetryBudget,
    retries: &RetryCounters,
    breaker: &BreakerHandle,
    limits: &LimitHandles,
) -> Snapshot {
    let (panic_mode, panics) = balance.panic_mode();
    Snapshot {
        service: balance.name().to_owned(),
        endpoints: balance.endpoint_stats(),
        retry_budget: budget.balance(),
        retries: retries.stats(),
        breaker: breaker.state(),
        breaker_transitions: breaker.transitions(),
        panic_mode,
        panics,
        concurrency: limits.concurrency.as_ref().map(ConcurrencyHandle::stats),
        rate_limit: limits.rate.as_ref().map(RateLimitHandle::stats),
        throttle: limits.throttle.as_ref().map(ThrottleHandle::stats),
        hedges: limits.hedge.as_ref().map(HedgeHandle::stats),
    }
}

/// The response future of the breaker, retry and balancer layers.
type GuardedFuture<S, C, B> = breaker::ResponseFuture<retry::ResponseFuture<Hedged<S, C>, C, B>, C>;
/// ... with adaptive throttling, when configured.
type ThrottledFuture<S, C, B> = ToggleFuture<
    limit::throttle::ResponseFuture<GuardedFuture<S, C, B>, C>,
    GuardedFuture<S, C, B>,
>;
/// ... with the concurrency limit, when configured.
type BulkheadFuture<S, C, B> = ToggleFuture<
    limit::concurrency::ResponseFuture<Throttled<S, C>, Request<B>>,
    ThrottledFuture<S, C, B>,
>;

/// The response future of [`Client`].
pub type ResponseFuture<S, C, B> = metrics::ResponseFuture<
    deadline::ResponseFuture<
        ToggleFuture<limit::rate::ResponseFuture<BulkheadFuture<S, C, B>>, BulkheadFuture<S, C, B>>,
    >,
    C,
>;

impl<S, C, B, RB> Service<Request<B>> for Client<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    C: Classify<Response<RB>>,
    B: http_body::Body,
{
    type Response = Response<RB>;
    type Error = Error;
    type Future = ResponseFuture<S, C, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Service::<Request<B>>::poll_ready(&mut self.stack, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.stack.call(req)
    }
}

/// A palisade [`Client`] over one shared hyper-util client,
/// taking `http::Request<B>`: the type [`Client::builder`]
/// `.http(`[`hyper_client()`](crate::http::hyper_client)`)` builds.
#[cfg(feature = "http")]
pub type Hyper<B> = Client<crate::http::HttpEndpoint<crate::http::HyperClient<ReplayBody<B>>>>;

#[cfg(feature = "reqwest")]
/// A palisade [`Client`] over one shared reqwest client: the
/// type `Client::builder(..).http(ReqwestService::new(..)).build()` returns.
///
/// Unlike [`Hyper<B>`](Hyper) it takes no body type parameter:
/// one client accepts any `Send + 'static` request body whose error is
/// `Into<`[`BoxError`]`>`.
///
/// ```no_run
/// use palisade::Client;
/// use palisade::discover::Endpoint;
/// use palisade::Reqwest;
/// use palisade::http::reqwest::{ReqwestService, client_builder};
///
/// fn users(addrs: Vec<std::net::SocketAddr>) -> Result<Reqwest, Box<dyn std::error::Error>> {
///     Ok(Client::builder("users")
///         .endpoints(addrs.into_iter().map(Endpoint::from))
///         .http(ReqwestService::new(client_builder().build()?))
///         .build()?)
/// }
/// # let _ = users;
/// ```
pub type Reqwest = Client<crate::http::HttpEndpoint<crate::http::reqwest::ReqwestService>>;

/// A part of the [`Builder`] that has not been set yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unset;

/// Builds a [`Client`]; see [`Client::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct Builder<D, N, C> {
    name: Arc<str>,
    discover: D,
    new_endpoint: N,
    classify: C,
    balance: BalanceConfig,
    retry: RetryLayer,
    deadline: DeadlineSettings,
    breaker: BreakerSettings,
    limits: Limits,
    metrics: Option<Metrics>,
}

/// The optional layers of a [`Builder`], outside in; all off by default.
#[derive(Debug, Default)]
struct Limits {
    rate: Option<RateLimitLayer<Option<HeaderKey>>>,
    concurrency: Option<ConcurrencyLimitLayer>,
    throttle: Option<ThrottleLayer>,
    hedge: Option<HedgeLayer>,
}

impl<D, N, C> Builder<D, N, C> {
    /// Where endpoints come from: any `Discover` of [`Endpoint`]s (see
    /// [`discover`](crate::discover)).
    pub fn discover<D2>(self, discover: D2) -> Builder<D2, N, C> {
        Builder {
            name: self.name,
            discover,
            new_endpoint: self.new_endpoint,
            classify: self.classify,
            balance: self.balance,
            retry: self.retry,
            deadline: self.deadline,
            breaker: self.breaker,
            limits: self.limits,
            metrics: self.metrics,
        }
    }

    /// A fixed list of endpoints (shorthand for `.discover(Static::new(..))`).
    pub fn endpoints(self, endpoints: impl IntoIterator<Item = Endpoint>) -> Builder<Static, N, C> {
        self.discover(Static::new(endpoints))
    }

    /// How each endpoint's service is built: any [`NewEndpoint`].
    pub fn new_endpoint<N2>(self, new_endpoint: N2) -> Builder<D, N2, C> {
        Builder {
            name: self.name,
            discover: self.discover,
            new_endpoint,
            classify: self.classify,
            balance: self.balance,
            retry: self.retry,
            deadline: self.deadline,
            breaker: self.breaker,
            limits: self.limits,
            metrics: self.metrics,
        }
    }

    /// Sends requests through one shared HTTP client (for example
    /// [`http::hyper_client`](crate::http::hyper_client)), with the URI
    /// authority rewritten per endpoint; see [`HttpEndpoints`].
    pub fn http<S>(self, client: S) -> Builder<D, HttpEndpoints<S>, C> {
        self.new_endpoint(HttpEndpoints::new(client))
    }

    /// Replaces the classifier (default [`HttpClassify`]).
    pub fn classify<C2>(self, classify: C2) -> Builder<D, N, C2> {
        Builder {
            name: self.name,
            discover: self.discover,
            new_endpoint: self.new_endpoint,
            classify,
            balance: self.balance,
            retry: self.retry,
            deadline: self.deadline,
            breaker: self.breaker,
            limits: self.limits,
            metrics: self.metrics,
        }
    }

    /// Replaces all balancer settings at once.
    pub fn balance(mut self, config: BalanceConfig) -> Self {
        self.balance = config;
        self
    }

    /// How long a request waits for an endpoint when there is none
    /// (default 3 s) before failing with [`Error::NoEndpoints`].
    pub fn endpoint_wait(mut self, wait: Duration) -> Self {
        self.balance.endpoint_wait = wait;
        self
    }

    /// Latency charged for a failed request (default 1 s).
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.balance.failure_penalty = penalty;
        self
    }

    /// Time constant of the latency estimate's decay (default 10 s).
    pub fn decay(mut self, decay: Duration) -> Self {
        self.balance.decay = decay;
        self
    }

    /// The endpoint selection strategy (default P2C over peak-EWMA).
    pub fn choice(mut self, choice: Choice) -> Self {
        self.balance.choice = choice;
        self
    }

    /// The timeout for requests that bring no deadline (default 15 s;
    /// `None` for none; greater than 0, or [`build`](Builder::build)
    /// refuses it). See [`DeadlineSettings::timeout`].
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.deadline.timeout = timeout;
        self
    }

    /// Replaces the deadline settings (timeout, reserve, propagation,
    /// header cap) with the layer's. The layer's own service name is
    /// replaced by the client's.
    pub fn deadline(mut self, layer: DeadlineLayer) -> Self {
        self.deadline = layer.settings().clone();
        self
    }

    /// Failure accrual: when endpoints are ejected and probed, and the fleet
    /// guards (see [`EjectionConfig`]; on by default).
    pub fn ejection(mut self, ejection: EjectionConfig) -> Self {
        self.balance.ejection = ejection;
        self
    }

    /// Replaces the service breaker's settings with the layer's (see
    /// [`BreakerSettings`]; on by default: 50 % errors over 10 s with at
    /// least 20 requests opens it for 5 s). The client makes its own
    /// breaker from them, with its name and classifier; read it with
    /// [`Client::breaker`].
    pub fn breaker(mut self, breaker: BreakerLayer) -> Self {
        self.breaker = breaker.settings().clone();
        self
    }

    /// Counts this client's requests, retries and live state in `metrics`
    /// (see [`Metrics`]); series carry `client="<name>"`. Off by default.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A rate limit shared by every clone of the client (off by default):
    /// requests over it fail at once with [`Error::Overloaded`]. Pass
    /// `RateLimitLayer::new(name, rate)`, optionally
    /// [`keyed_by_header`](RateLimitLayer::keyed_by_header); for another
    /// key, wrap the client in your own [`RateLimitLayer::keyed`]. The
    /// layer keeps its name and state: pass clones of one layer to several
    /// clients to share one limit.
    ///
    /// ```
    /// use palisade::limit::RateLimitLayer;
    /// # let builder = palisade::Client::builder("users");
    /// let builder = builder.rate_limit(RateLimitLayer::new("users", 500.0).burst(50));
    /// # let _ = builder;
    /// ```
    pub fn rate_limit(mut self, layer: impl Into<RateLimitLayer<Option<HeaderKey>>>) -> Self {
        self.limits.rate = Some(layer.into());
        self
    }

    /// A concurrency limit (bulkhead) shared by every clone of the client
    /// (off by default): at most `max` requests in flight and `queue`
    /// waiting, never past their deadline; the rest fail at once with
    /// [`Error::Overloaded`]. The layer keeps its name and state: clones
    /// of one layer given to several clients share one bulkhead.
    pub fn concurrency_limit(mut self, layer: ConcurrencyLimitLayer) -> Self {
        self.limits.concurrency = Some(layer);
        self
    }

    /// Adaptive client throttling (off by default): when the service
    /// refuses requests for overload, reject locally with probability
    /// max(0, (requests − K·accepts) / (requests + 1)). The layer's
    /// classifier is replaced by the client's; its name and state stay.
    pub fn throttle(mut self, layer: ThrottleLayer) -> Self {
        self.limits.throttle = Some(layer);
        self
    }

    /// Hedging (off by default): after a delay (default: the client's p95
    /// latency), one backup of an idempotent, replayable request goes to
    /// another endpoint; the first good answer wins and the other is
    /// cancelled. Backups draw on the layer's own budget (default 5 % of
    /// requests, no floor) and stop when the deadline is too close or the
    /// client's breaker is not closed. Sits inside retries, above the
    /// balancer. The layer's classifier is replaced by the client's and it
    /// is given the client's breaker; its state is kept, so its handles
    /// stay live. Read its counters with [`Client::hedge`].
    ///
    /// ```
    /// use palisade::hedge::{HedgeDelay, HedgeLayer, HedgeSettings};
    /// # let builder = palisade::Client::builder("users");
    /// let settings = HedgeSettings {
    ///     delay: HedgeDelay::Percentile(0.99),
    ///     ..Default::default()
    /// };
    /// let builder = builder.hedge(HedgeLayer::new("users", settings)?);
    /// # let _ = builder;
    /// # Ok::<(), palisade::settings::SettingsError>(())
    /// ```
    pub fn hedge(mut self, layer: HedgeLayer) -> Self {
        self.limits.hedge = Some(layer);
        self
    }

    /// Turns the service breaker off (it never trips).
    pub fn without_breaker(mut self) -> Self {
        self.breaker.enabled = false;
        self
    }

    /// Attempts per request, the first included (default 3; 1 disables
    /// retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.retry = self.retry.max_attempts(attempts);
        self
    }

    /// The retry budget (default: 20 % of requests plus 10 retries a second,
    /// over 10 s). Pass a clone of one budget to several clients to share it.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.retry = self.retry.budget(budget);
        self
    }

    /// The backoff between attempts (default 25 ms → 250 ms, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.retry = self.retry.backoff(backoff);
        self
    }

    /// A timeout for each attempt, capped by the deadline (default none).
    pub fn per_try_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.retry = self.retry.per_try_timeout(timeout);
        self
    }

    /// How much of each request body is kept so it can be replayed
    /// (default 64 KiB); larger bodies are sent once and not retried.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.retry = self.retry.body_limit(bytes);
        self
    }

    /// Builds the client. Must be called inside a Tokio runtime: discovery
    /// runs on a task spawned there.
    pub fn build(self) -> Result<Client<N::Service, C>, BuildError>
    where
        D: Discover<Service = Endpoint> + Send + 'static,
        D::Key: Hash + Eq + Clone + fmt::Debug + Send,
        D::Error: Into<BoxError>,
        N: NewEndpoint,
        N::Service: Send + Sync + 'static,
        C: Clone + Send + Sync + 'static,
    {
        let balance = Balance::new(
            self.name.clone(),
            self.discover,
            self.new_endpoint,
            self.classify.clone(),
            self.balance,
        )?;
        let telemetry = TelemetryLayer::new(
            self.name.clone(),
            self.metrics.as_ref(),
            self.classify.clone(),
        );
        let client_metrics = telemetry.client_metrics().cloned();
        let retry = self
            .retry
            .named(self.name.clone())
            .classify(self.classify.clone());
        let budget = retry.retry_budget().clone();
        let retries = retry.counters().clone();
        let breaker = BreakerLayer::new(self.name.clone(), self.breaker)
            .map_err(|e| BuildError::settings(&self.name, e))?
            .classify(self.classify.clone());
        let breaker_handle = breaker.handle();
        let Limits {
            rate,
            concurrency,
            throttle,
            hedge,
        } = self.limits;
        let hedge = hedge.map(|h| {
            h.breaker(breaker_handle.clone())
                .classify(self.classify.clone())
        });
        let hedged = Toggle::layer(hedge.as_ref(), balance.clone());
        let guarded = breaker.layer(retry.layer(hedged));
        // The layers keep their own names and state: one limit may be shared
        // by several clients, and the caller's handles stay live.
        let throttle = throttle.map(|t| t.classify(self.classify.clone()));
        let handles = LimitHandles {
            rate: rate.as_ref().map(RateLimitLayer::handle),
            concurrency: concurrency.as_ref().map(ConcurrencyLimitLayer::handle),
            throttle: throttle.as_ref().map(ThrottleLayer::handle),
            hedge: hedge.as_ref().map(HedgeLayer::handle),
        };
        let limited = Toggle::layer(
            rate.as_ref(),
            Toggle::layer(
                concurrency.as_ref(),
                Toggle::layer(throttle.as_ref(), guarded),
            ),
        );
        let deadline = DeadlineLayer::new(self.name.clone(), self.deadline)
            .map_err(|e| BuildError::settings(&self.name, e))?;
        let stack = telemetry.layer(deadline.layer(limited));
        let limits = Arc::new(handles);
        if let Some(registry) = &self.metrics {
            registry.observe(Box::new(Observer {
                balance: balance.downgrade(),
                budget: budget.clone(),
                retries: retries.clone(),
                breaker: breaker_handle.clone(),
                limits: limits.clone(),
                counts: client_metrics,
            }));
        }
        Ok(Client {
            stack,
            balance,
            budget,
            retries,
            breaker: breaker_handle,
            limits,
        })
    }
}
