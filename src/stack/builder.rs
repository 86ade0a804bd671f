//! [`Builder`]: settings in, a [`Client`] out.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tower::ServiceBuilder;
use tower::discover::Discover;

use super::{Client, ClientConfig, Handles, Observer};
use crate::balance::{Balance, BalanceSettings, Choice, EjectionSettings, NewEndpoint};
use crate::breaker::{BreakerLayer, BreakerSettings};
use crate::budget::RetryBudget;
use crate::classify::{HttpClassify, WatchEos};
use crate::deadline::{DeadlineLayer, DeadlineSettings};
use crate::discover::{Endpoint, Static};
use crate::error::{BoxError, BuildError};
use crate::hedge::{HedgeLayer, HedgeSettings};
use crate::http::HttpEndpoints;
use crate::limit::{
    ConcurrencyLimitLayer, ConcurrencySettings, LimitSettings, RateLimitLayer, RateLimitSettings,
    ThrottleLayer, ThrottleSettings,
};
use crate::metrics::{Metrics, TelemetryLayer};
use crate::retry::{RetryLayer, RetrySettings};
use crate::settings::Problems;

/// A part of the [`Builder`] that has not been set yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unset;

/// Builds a [`Client`]; see [`Client::builder`].
///
/// Settings are plain data: [`config`](Self::config) takes every layer's
/// at once (a [`ClientConfig`], which serde can read from a file), and the
/// per-layer methods replace one table or one field of it. Nothing is
/// checked until [`build`](Self::build), which refuses invalid settings
/// with every problem named at its path (`retry.max_attempts`). The parts
/// that are code, not data, stay methods: discovery, the inner client, the
/// classifier, metrics, and state you want to share between clients (a
/// [`RetryBudget`], a limit layer).
#[derive(Debug)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct Builder<D, N, C> {
    discover: D,
    new_endpoint: N,
    classify: C,
    parts: Parts,
}

/// What a [`Builder`] holds besides its three type parameters.
#[derive(Debug)]
struct Parts {
    name: Arc<str>,
    config: ClientConfig,
    /// A budget shared with other clients, instead of one of its own.
    budget: Option<RetryBudget>,
    limits: Limits,
    metrics: Option<Metrics>,
}

/// Limits whose state the client shares with others (given as layers),
/// and the optional layers not yet built from settings.
#[derive(Debug, Default)]
struct Limits {
    rate: Option<RateLimitLayer>,
    concurrency: Option<ConcurrencyLimitLayer>,
    throttle: Option<ThrottleLayer>,
    hedge: Option<HedgeLayer>,
}

impl Builder<Unset, Unset, HttpClassify> {
    pub(super) fn new(name: Arc<str>) -> Self {
        Builder {
            discover: Unset,
            new_endpoint: Unset,
            classify: HttpClassify::default(),
            parts: Parts {
                name,
                config: ClientConfig::default(),
                budget: None,
                limits: Limits::default(),
                metrics: None,
            },
        }
    }
}

impl<D, N> Builder<D, N, HttpClassify> {
    /// Applies every layer's settings at once (see [`ClientConfig`]),
    /// replacing what was set before. The default classifier retries
    /// `config.retry.retryable_statuses` and `retryable_grpc_codes`; a
    /// classifier set later with
    /// [`classify`](Self::classify) replaces it.
    ///
    /// ```
    /// use palisade::{Client, ClientConfig};
    ///
    /// let mut config = ClientConfig::default();
    /// config.retry.max_attempts = 2;
    /// let builder = Client::builder("users").config(&config);
    /// assert_eq!(builder.settings().retry.max_attempts, 2);
    /// ```
    pub fn config(mut self, config: &ClientConfig) -> Self {
        self.parts.config = config.clone();
        self.with_retry_classifier()
    }

    /// The retry settings (see [`RetrySettings`]); the default classifier
    /// retries their `retryable_statuses` and `retryable_grpc_codes`.
    pub fn retry(mut self, retry: RetrySettings) -> Self {
        self.parts.config.retry = retry;
        self.with_retry_classifier()
    }

    fn with_retry_classifier(mut self) -> Self {
        self.classify = self.parts.config.retry.classifier();
        self
    }
}

impl<D, N, C> Builder<D, N, C> {
    /// The settings the client will be built with.
    pub fn settings(&self) -> &ClientConfig {
        &self.parts.config
    }

    /// Where endpoints come from: any `Discover` of [`Endpoint`]s (see
    /// [`discover`](crate::discover)).
    pub fn discover<D2>(self, discover: D2) -> Builder<D2, N, C> {
        Builder {
            discover,
            new_endpoint: self.new_endpoint,
            classify: self.classify,
            parts: self.parts,
        }
    }

    /// A fixed list of endpoints (shorthand for `.discover(Static::new(..))`).
    pub fn endpoints(self, endpoints: impl IntoIterator<Item = Endpoint>) -> Builder<Static, N, C> {
        self.discover(Static::new(endpoints))
    }

    /// How each endpoint's service is built: any [`NewEndpoint`].
    pub fn new_endpoint<N2>(self, new_endpoint: N2) -> Builder<D, N2, C> {
        Builder {
            discover: self.discover,
            new_endpoint,
            classify: self.classify,
            parts: self.parts,
        }
    }

    /// Sends requests through one shared HTTP client (for example
    /// [`http::hyper_client`](crate::http::hyper_client)), with the URI
    /// authority rewritten per endpoint; see [`HttpEndpoints`].
    pub fn http<S>(self, client: S) -> Builder<D, HttpEndpoints<S>, C> {
        self.new_endpoint(HttpEndpoints::new(client))
    }

    /// Replaces the classifier (default [`HttpClassify`], retrying the
    /// retry settings' `retryable_statuses`): every layer asks this one.
    pub fn classify<C2>(self, classify: C2) -> Builder<D, N, C2> {
        Builder {
            discover: self.discover,
            new_endpoint: self.new_endpoint,
            classify,
            parts: self.parts,
        }
    }

    /// The balancer's settings (see [`BalanceSettings`]).
    pub fn balance(mut self, settings: BalanceSettings) -> Self {
        self.parts.config.balancer = settings;
        self
    }

    /// How long a request waits for an endpoint when there is none
    /// (default 3 s) before failing with
    /// [`Error::NoEndpoints`](crate::Error::NoEndpoints), or for a slot
    /// when every endpoint is at
    /// [`endpoint_max_in_flight`](Self::endpoint_max_in_flight).
    pub fn endpoint_wait(mut self, wait: Duration) -> Self {
        self.parts.config.balancer.endpoint_wait = wait;
        self
    }

    /// The most requests one endpoint may have outstanding (default 256;
    /// over HTTP/1.1, its connections). See
    /// [`BalanceSettings::endpoint_max_in_flight`].
    pub fn endpoint_max_in_flight(mut self, max: usize) -> Self {
        self.parts.config.balancer.endpoint_max_in_flight = max;
        self
    }

    /// Latency charged for a failed request (default 1 s).
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.parts.config.balancer.failure_penalty = penalty;
        self
    }

    /// Time constant of the latency estimate's decay (default 10 s).
    pub fn decay(mut self, decay: Duration) -> Self {
        self.parts.config.balancer.decay = decay;
        self
    }

    /// The endpoint selection strategy (default P2C over peak-EWMA).
    pub fn choice(mut self, choice: Choice) -> Self {
        self.parts.config.balancer.choice = choice;
        self
    }

    /// Failure accrual: when endpoints are ejected and probed, and the fleet
    /// guards (see [`EjectionSettings`]; on by default).
    pub fn ejection(mut self, ejection: EjectionSettings) -> Self {
        self.parts.config.ejection = ejection;
        self
    }

    /// The timeout for requests that bring no deadline (default 15 s;
    /// `None` for none). See [`DeadlineSettings::timeout`].
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.parts.config.deadline.timeout = timeout;
        self
    }

    /// How long a response body may send nothing before it is cut as the
    /// endpoint's failure (default 60 s; `None` for never). See
    /// [`DeadlineSettings::body_idle_timeout`].
    pub fn body_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.parts.config.deadline.body_idle_timeout = idle;
        self
    }

    /// The deadline settings (timeout, header cap, reserve, propagation,
    /// body idle timeout; see [`DeadlineSettings`]).
    pub fn deadline(mut self, settings: DeadlineSettings) -> Self {
        self.parts.config.deadline = settings;
        self
    }

    /// The service breaker's settings (see [`BreakerSettings`]; on by
    /// default: 50 % errors over 10 s with at least 20 requests opens it for
    /// 5 s). Read the client's breaker with
    /// [`Client::breaker`](super::Client::breaker).
    pub fn breaker(mut self, settings: BreakerSettings) -> Self {
        self.parts.config.breaker = settings;
        self
    }

    /// Turns the service breaker off (it never trips).
    pub fn without_breaker(mut self) -> Self {
        self.parts.config.breaker.enabled = false;
        self
    }

    /// Counts this client's requests, retries and live state in `metrics`
    /// (see [`Metrics`]); series carry `client="<name>"`. Off by default.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.parts.metrics = Some(metrics);
        self
    }

    /// All the limits at once (see [`LimitSettings`]; each off unless
    /// present).
    pub fn limits(mut self, limits: LimitSettings) -> Self {
        self.parts.config.limits = limits;
        self
    }

    /// A rate limit for every clone of the client (off by default):
    /// requests over it fail at once with
    /// [`Error::Overloaded`](crate::Error::Overloaded); keyed by a header
    /// when the settings name one.
    ///
    /// ```
    /// use palisade::limit::RateLimitSettings;
    /// # let builder = palisade::Client::builder("users");
    /// let builder = builder.rate_limit(RateLimitSettings {
    ///     per_second: 500.0,
    ///     burst: Some(50),
    ///     ..Default::default()
    /// });
    /// # let _ = builder;
    /// ```
    pub fn rate_limit(mut self, settings: RateLimitSettings) -> Self {
        self.parts.config.limits.rate = Some(settings);
        self
    }

    /// A rate limit shared with other clients: clones of one
    /// [`RateLimitLayer`] are one limit (with the layer's own name,
    /// settings and key, such as [`RateLimitLayer::keyed`]). Replaces the
    /// `rate` settings.
    pub fn share_rate_limit(mut self, layer: RateLimitLayer) -> Self {
        self.parts.config.limits.rate = Some(layer.settings().clone());
        self.parts.limits.rate = Some(layer);
        self
    }

    /// A concurrency limit (bulkhead) for every clone of the client (off by
    /// default): at most `max` requests in flight and `queue` waiting,
    /// never past their deadline; the rest fail at once with
    /// [`Error::Overloaded`](crate::Error::Overloaded).
    pub fn concurrency_limit(mut self, settings: ConcurrencySettings) -> Self {
        self.parts.config.limits.concurrency = Some(settings);
        self
    }

    /// A bulkhead shared with other clients: clones of one
    /// [`ConcurrencyLimitLayer`] are one bulkhead. Replaces the
    /// `concurrency` settings.
    pub fn share_concurrency_limit(mut self, layer: ConcurrencyLimitLayer) -> Self {
        self.parts.config.limits.concurrency = Some(layer.settings().clone());
        self.parts.limits.concurrency = Some(layer);
        self
    }

    /// Adaptive client throttling (off by default): when the service
    /// refuses requests for overload, reject locally with probability
    /// max(0, (requests − K·accepts) / (requests + 1)).
    pub fn throttle(mut self, settings: ThrottleSettings) -> Self {
        self.parts.config.limits.throttle = Some(settings);
        self
    }

    /// Throttling shared with other clients: clones of one
    /// [`ThrottleLayer`] count together. Its classifier is replaced by the
    /// client's; its counts stay. Replaces the `throttle` settings.
    pub fn share_throttle(mut self, layer: ThrottleLayer) -> Self {
        self.parts.config.limits.throttle = Some(layer.settings().clone());
        self.parts.limits.throttle = Some(layer);
        self
    }

    /// Hedging (off by default): after a delay (default: the client's p95
    /// latency), one backup of an idempotent, replayable request goes to
    /// another endpoint; the first good answer wins and the other is
    /// cancelled. Backups draw on their own budget (default 5 % of
    /// requests, no floor) and stop when the deadline is too close or the
    /// client's breaker is not closed. Sits inside retries, above the
    /// balancer. Read its counters with [`Client::hedge`](super::Client::hedge).
    ///
    /// ```
    /// use palisade::hedge::{HedgeDelay, HedgeSettings};
    /// # let builder = palisade::Client::builder("users");
    /// let builder = builder.hedge(HedgeSettings {
    ///     delay: HedgeDelay::Percentile(0.99),
    ///     ..Default::default()
    /// });
    /// # let _ = builder;
    /// ```
    pub fn hedge(mut self, settings: HedgeSettings) -> Self {
        self.parts.config.hedge = Some(settings);
        self
    }

    /// Hedging with a layer made beforehand (say, with its own budget from
    /// [`HedgeLayer::with_budget`]): its state is kept, so handles taken
    /// from it stay live; it is given the client's classifier and breaker.
    /// Replaces the `hedge` settings.
    pub fn share_hedge(mut self, layer: HedgeLayer) -> Self {
        self.parts.config.hedge = Some(layer.settings().clone());
        self.parts.limits.hedge = Some(layer);
        self
    }

    /// Attempts per request, the first included (default 3; 1 disables
    /// retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.parts.config.retry.max_attempts = attempts;
        self
    }

    /// The backoff between attempts: up to `base` before the first retry,
    /// doubling per retry, never above `cap` (default 25 ms → 250 ms, full
    /// jitter).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.parts.config.retry.backoff_base = base;
        self.parts.config.retry.backoff_cap = cap;
        self
    }

    /// A timeout for each attempt, capped by the deadline (default none).
    pub fn per_try_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.parts.config.retry.per_try_timeout = timeout;
        self
    }

    /// How much of each request body is kept so it can be replayed
    /// (default 64 KiB); larger bodies are sent once and not retried.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.parts.config.retry.body_limit = bytes;
        self
    }

    /// A retry budget shared with other clients, instead of one of the
    /// client's own made from the `budget` settings: pass clones of one
    /// [`RetryBudget`] to share it.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.parts.budget = Some(budget);
        self
    }

    /// Builds the client. Must be called inside a Tokio runtime: discovery
    /// runs on a task spawned there. Fails with every settings problem
    /// named at its path, or outside a runtime.
    pub fn build(self) -> Result<Client<N::Service, C>, BuildError>
    where
        D: Discover<Service = Endpoint> + Send + 'static,
        D::Key: Hash + Eq + Clone + fmt::Debug + Send,
        D::Error: Into<BoxError>,
        N: NewEndpoint,
        N::Service: Send + Sync + 'static,
        C: Clone + Send + Sync + 'static,
    {
        let Builder {
            discover,
            new_endpoint,
            classify,
            parts,
        } = self;
        let Parts {
            name,
            config,
            budget,
            limits,
            metrics,
        } = parts;
        let invalid = |e| BuildError::settings(&name, e);
        config.validate().map_err(invalid)?;
        // A layer's own refusal, placed under its table (`deadline.timeout`).
        let own = |field: &str, e| {
            let mut p = Problems::new();
            p.nested(field, Err(e));
            invalid(p.finish().unwrap_err())
        };

        // Shared state, each made once: handles read it, layers use it.
        let budget = match budget {
            Some(shared) => shared,
            None => RetryBudget::from_settings(&config.budget).map_err(invalid)?,
        };
        let retry = RetryLayer::new(name.clone(), config.retry.clone())
            .map_err(|e| own("retry", e))?
            .classify(classify.clone())
            .budget(budget.clone());
        let retries = retry.counters().clone();
        let deadline = DeadlineLayer::new(name.clone(), config.deadline.clone())
            .map_err(|e| own("deadline", e))?;
        let breaker = BreakerLayer::new(name.clone(), config.breaker.clone())
            .map_err(|e| own("breaker", e))?
            .classify(classify.clone());
        let breaker_handle = breaker.handle();
        let Limits {
            rate,
            concurrency,
            throttle,
            hedge,
        } = limits;
        // A limit given as a layer is shared; one given as settings is
        // the client's own, made here.
        let rate = match (rate, &config.limits.rate) {
            (Some(shared), _) => Some(shared),
            (None, Some(s)) => Some(
                RateLimitLayer::new(name.clone(), s.clone()).map_err(|e| own("limits.rate", e))?,
            ),
            (None, None) => None,
        };
        let concurrency = match (concurrency, &config.limits.concurrency) {
            (Some(shared), _) => Some(shared),
            (None, Some(s)) => Some(
                ConcurrencyLimitLayer::new(name.clone(), s.clone())
                    .map_err(|e| own("limits.concurrency", e))?,
            ),
            (None, None) => None,
        };
        let throttle = match (throttle, &config.limits.throttle) {
            (Some(shared), _) => Some(shared),
            (None, Some(s)) => Some(
                ThrottleLayer::new(name.clone(), s.clone())
                    .map_err(|e| own("limits.throttle", e))?,
            ),
            (None, None) => None,
        };
        // The limits keep their own names and state: one limit may be
        // shared by several clients, and the caller's handles stay live.
        let hedge = match (hedge, &config.hedge) {
            (Some(shared), _) => Some(shared),
            (None, Some(s)) => {
                Some(HedgeLayer::new(name.clone(), s.clone()).map_err(|e| own("hedge", e))?)
            }
            (None, None) => None,
        };
        let hedge = hedge.map(|h| h.breaker(breaker_handle.clone()).classify(classify.clone()));
        let throttle = throttle.map(|t| t.classify(classify.clone()));
        let handles = Arc::new(Handles {
            retry: retry.settings().clone(),
            deadline: deadline.settings().clone(),
            breaker: breaker.settings().clone(),
            hedge_settings: hedge.as_ref().map(|l| l.settings().clone()),
            rate_settings: rate.as_ref().map(|l| l.settings().clone()),
            concurrency_settings: concurrency.as_ref().map(|l| l.settings().clone()),
            throttle_settings: throttle.as_ref().map(|l| l.settings().clone()),
            rate: rate.as_ref().map(RateLimitLayer::handle),
            concurrency: concurrency.as_ref().map(ConcurrencyLimitLayer::handle),
            throttle: throttle.as_ref().map(ThrottleLayer::handle),
            hedge: hedge.as_ref().map(HedgeLayer::handle),
        });
        let telemetry = TelemetryLayer::new(name.clone(), metrics.as_ref(), classify.clone());
        let counts = telemetry.client_metrics().cloned();

        // Every endpoint's responses are watched to the end of their
        // stream, where the layers above take their verdicts.
        let mut new_endpoint = new_endpoint;
        let idle = config.deadline.body_idle_timeout;
        let watched = move |endpoint: &Endpoint| {
            new_endpoint
                .new_endpoint(endpoint)
                .map(|svc| WatchEos::new(svc).idle_timeout(idle))
        };
        let balance = Balance::new(
            name.clone(),
            discover,
            watched,
            classify,
            config.balancer,
            config.ejection,
        )?;
        // The request path, outside in.
        let stack = ServiceBuilder::new()
            .layer(telemetry)
            .layer(deadline)
            .option_layer(rate)
            .option_layer(concurrency)
            .option_layer(throttle)
            .layer(breaker)
            .layer(retry)
            .option_layer(hedge)
            .service(balance.clone());

        if let Some(registry) = &metrics {
            registry.observe(Box::new(Observer {
                balance: balance.downgrade(),
                budget: budget.clone(),
                retries: retries.clone(),
                breaker: breaker_handle.clone(),
                limits: handles.clone(),
                counts,
            }));
        }
        Ok(Client {
            stack,
            balance,
            budget,
            retries,
            breaker: breaker_handle,
            limits: handles,
        })
    }
}
