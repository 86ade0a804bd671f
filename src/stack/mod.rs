//! The assembled client: [`Client::builder`] puts palisade's layers together
//! in the order of `docs/ARCHITECTURE.md`, each from its settings
//! ([`ClientConfig`] gathers them), in one `ServiceBuilder` chain that reads
//! in request order ([`Builder::build`]). Outside in:
//!
//! ```text
//! telemetry (TelemetryLayer)     → a span per request; per-request metrics
//! deadline (DeadlineLayer)       → one absolute deadline; propagated per attempt
//!  [rate limit (RateLimitLayer)] → GCRA; sheds at once
//!  [bulkhead (ConcurrencyLimit)] → max in flight + bounded queue
//!  [throttle (ThrottleLayer)]    → adaptive client throttling
//!   breaker (BreakerLayer)       → Hystrix-style: fail fast while the service fails
//!    retry (RetryLayer)          → policy + shared budget + backoff + body replay
//!     [hedge (HedgeLayer)]       → one backup after the p95, own budget
//!      balancer (Balance)        → P2C over peak-EWMA; ejects failing endpoints,
//!                                  avoids endpoints already tried
//!       inner client             → one per endpoint, from the NewEndpoint factory
//! discovery                      → feeds the balancer
//! ```
//!
//! The bracketed layers are off unless configured; an absent one is
//! `tower::util::Either::Right` (the rest of the stack, called directly),
//! so the client's type does not depend on its configuration.

mod builder;
mod config;
#[cfg(feature = "tonic")]
pub mod tonic;

#[cfg(feature = "tonic")]
pub use self::tonic::Grpc;
pub use builder::{Builder, Unset};
pub use config::ClientConfig;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;
use tower::util::Either;
use tower::util::future::EitherResponseFuture;

use crate::balance::{Balance, EndpointStats, WeakBalance};
use crate::breaker::{self, Breaker, BreakerHandle, BreakerSettings};
use crate::classify::{Classify, EosBody, HttpClassify, WatchEos};
use crate::deadline::{self, DeadlineSettings, EnforceDeadline};
use crate::error::{BoxError, Error};
use crate::hedge::{Hedge, HedgeHandle, HedgeSettings};
use crate::limit::{
    self, ConcurrencyHandle, ConcurrencyLimit, ConcurrencySettings, LimitSettings, RateLimit,
    RateLimitHandle, RateLimitSettings, Throttle, ThrottleHandle, ThrottleSettings,
    rate::HeaderKey,
};
use crate::metrics::{self, Observe, Telemetry};
use crate::retry::{self, ReplayBody, RetryBudget, RetryCounters, RetryService, RetrySettings};
pub use crate::snapshot::Snapshot;

/// The balancer, with hedging when configured.
type Hedged<S, C> = Either<Hedge<Watched<S, C>, C>, Watched<S, C>>;
/// The balancer, over endpoints whose responses are watched to their end.
type Watched<S, C> = Balance<WatchEos<S>, C>;
/// The layers of a [`Client`] below the limits: breaker, retry, balancer.
type Guarded<S, C> = Breaker<RetryService<Hedged<S, C>, C>, C>;
/// Adaptive throttling, when configured.
type Throttled<S, C> = Either<Throttle<Guarded<S, C>, C>, Guarded<S, C>>;
/// The concurrency limit, when configured.
type Bulkhead<S, C> = Either<ConcurrencyLimit<Throttled<S, C>>, Throttled<S, C>>;
/// The rate limit, when configured.
type RateLimited<S, C> = Either<RateLimit<Bulkhead<S, C>, Option<HeaderKey>>, Bulkhead<S, C>>;
/// The layers of a [`Client`], outside in.
type Stack<S, C> = Telemetry<EnforceDeadline<RateLimited<S, C>>, C>;

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
    balance: Watched<S, C>,
    budget: RetryBudget,
    retries: RetryCounters,
    breaker: BreakerHandle,
    limits: Arc<Handles>,
}

/// What a client keeps of its layers besides the balancer, budget and
/// breaker: the retry layer's settings, handles on the optional layers.
#[derive(Debug)]
struct Handles {
    retry: RetrySettings,
    deadline: DeadlineSettings,
    breaker: BreakerSettings,
    hedge_settings: Option<HedgeSettings>,
    rate_settings: Option<RateLimitSettings>,
    concurrency_settings: Option<ConcurrencySettings>,
    throttle_settings: Option<ThrottleSettings>,
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
        Builder::new(name.into())
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

    /// The settings the client runs with, read back from its layers (not
    /// a copy of what was asked for): what the proxy's `/config` shows, and
    /// how a test proves that every setting reached its layer.
    pub fn settings(&self) -> ClientConfig {
        ClientConfig {
            balancer: self.balance.settings().clone(),
            retry: self.limits.retry.clone(),
            budget: self.budget.settings().clone(),
            deadline: self.limits.deadline.clone(),
            ejection: self.balance.ejection_settings().clone(),
            breaker: self.limits.breaker.clone(),
            hedge: self.limits.hedge_settings.clone(),
            limits: LimitSettings {
                concurrency: self.limits.concurrency_settings.clone(),
                rate: self.limits.rate_settings.clone(),
                throttle: self.limits.throttle_settings.clone(),
            },
        }
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
    balance: WeakBalance<WatchEos<S>, C>,
    budget: RetryBudget,
    retries: RetryCounters,
    breaker: BreakerHandle,
    limits: Arc<Handles>,
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
    limits: &Handles,
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
type ThrottledFuture<S, C, B> = EitherResponseFuture<
    limit::throttle::ResponseFuture<GuardedFuture<S, C, B>, C>,
    GuardedFuture<S, C, B>,
>;
/// ... with the concurrency limit, when configured.
type BulkheadFuture<S, C, B> = EitherResponseFuture<
    limit::concurrency::ResponseFuture<Throttled<S, C>, Request<B>>,
    ThrottledFuture<S, C, B>,
>;

/// The response future of [`Client`].
pub type ResponseFuture<S, C, B> = metrics::ResponseFuture<
    deadline::ResponseFuture<
        EitherResponseFuture<
            limit::rate::ResponseFuture<BulkheadFuture<S, C, B>>,
            BulkheadFuture<S, C, B>,
        >,
    >,
    C,
>;

impl<S, C, B, RB> Service<Request<B>> for Client<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    C: Classify<Response<EosBody<RB>>>,
    B: http_body::Body,
{
    type Response = Response<EosBody<RB>>;
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
