//! Retries: what may be retried (policy), how much (budget), when
//! (backoff), where (another endpoint) and with what body (replay).
//!
//! [`RetryLayer`] retries an HTTP request when the [`Classify`] says its
//! outcome was a retryable failure and every one of these agrees:
//!
//! 1. **method**: the class allows it — [`Retry::IfIdempotent`] needs an
//!    idempotent method (GET, HEAD, OPTIONS, PUT, DELETE, TRACE);
//!    [`Retry::Always`] (the request provably never reached the server, e.g.
//!    connection refused) allows any;
//! 2. **attempts**: fewer than [`max_attempts`](RetrySettings::max_attempts)
//!    (3, counting the first) were made;
//! 3. **body**: the body is still replayable — it is buffered up to
//!    [`body_limit`](RetrySettings::body_limit) (64 KiB) while it streams to
//!    the first attempt; a larger body is sent once and not retried;
//! 4. **deadline**: the backoff sleep ends before the request's
//!    [`Deadline`]; and the balancer will not start the next attempt on an
//!    endpoint whose latency estimate does not fit in what remains;
//! 5. **budget**: the shared [`RetryBudget`] grants a token (taken before
//!    the backoff sleep: a retry waiting in backoff already counts).
//!
//! When any says no, the caller gets the last real outcome — the 503
//! response, or the [`Error::Inner`] — with a [`RetryStop`] saying why it was
//! not retried: in the response's extensions, or in
//! [`Error::retry_stop`]. Never a silent drop.
//!
//! Between attempts the layer sleeps a random time between zero and
//! `min(cap, base × 2^(retry − 1))` (exponential backoff with full jitter,
//! 25 ms and 250 ms by default), and tells the balancer which endpoints were
//! tried (through the request's extensions) so that a retry goes elsewhere
//! whenever another endpoint is available. An optional
//! [`per_try_timeout`](RetrySettings::per_try_timeout), capped by what remains
//! of the deadline, bounds each attempt.
//!
//! ```
//! use palisade::retry::{BudgetSettings, RetryBudget, RetryLayer, RetrySettings};
//! use std::time::Duration;
//!
//! let settings = RetrySettings {
//!     max_attempts: 2,
//!     per_try_timeout: Some(Duration::from_millis(300)),
//!     ..RetrySettings::default()
//! };
//! // The budget is shared state: clones of one budget, given to several
//! // layers, are one budget.
//! let budget = RetryBudget::from_settings(&BudgetSettings { ratio: 0.1, ..Default::default() })?;
//! let layer = RetryLayer::new("users", settings)?.budget(budget);
//! # let _ = layer;
//! # Ok::<(), palisade::settings::SettingsError>(())
//! ```

mod settings;
mod stats;

pub use settings::RetrySettings;
pub use stats::{RetryCounters, RetryStats};

pub use crate::backoff::Backoff;
pub use crate::budget::{BudgetSettings, RetryBudget};
pub use crate::classify::is_idempotent;
pub use crate::error::RetryStop;
pub use crate::replay::ReplayBody;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use crate::classify::{Classify, HttpClassify, Retry};
use crate::error::{BoxError, Error};
use crate::facts::{self, Deadline, Tried};

/// The error of an attempt cut off by the per-try timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimedOut {
    /// The timeout that fired.
    pub after: Duration,
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt timed out after {:?}", self.after)
    }
}

impl std::error::Error for AttemptTimedOut {}

#[derive(Debug, Clone)]
struct Config<C> {
    service: Arc<str>,
    settings: RetrySettings,
    max_attempts: u32,
    backoff: Backoff,
    budget: RetryBudget,
    per_try_timeout: Option<Duration>,
    body_limit: usize,
    classify: C,
    counters: RetryCounters,
}

/// Retries failed HTTP requests; see the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayer<C = HttpClassify> {
    config: Arc<Config<C>>,
}

impl RetryLayer<HttpClassify> {
    /// A retry layer for the service called `service`, from its settings
    /// (refused with every problem named if they are invalid), with the
    /// default budget (20 % plus 10/s over 10 s) and the default classifier
    /// retrying the settings' `retryable_statuses` and
    /// `retryable_grpc_codes`.
    ///
    /// ```
    /// use palisade::retry::{RetryLayer, RetrySettings};
    ///
    /// let layer = RetryLayer::new("users", RetrySettings { max_attempts: 2, ..Default::default() })?;
    /// assert_eq!(layer.settings().max_attempts, 2);
    /// assert!(RetryLayer::new("users", RetrySettings { max_attempts: 0, ..Default::default() }).is_err());
    /// # Ok::<(), palisade::settings::SettingsError>(())
    /// ```
    pub fn new(
        service: impl Into<Arc<str>>,
        settings: RetrySettings,
    ) -> Result<Self, crate::settings::SettingsError> {
        settings.validate()?;
        Ok(RetryLayer {
            config: Arc::new(Config {
                service: service.into(),
                max_attempts: settings.max_attempts,
                backoff: settings.backoff(),
                budget: RetryBudget::default(),
                per_try_timeout: settings.per_try_timeout,
                body_limit: settings.body_limit,
                classify: settings.classifier(),
                counters: RetryCounters::default(),
                settings,
            }),
        })
    }
}

impl<C: Clone> RetryLayer<C> {
    /// The budget retries draw on (default: 20 % of requests plus 10 a
    /// second, over 10 s). It is shared state: pass clones of one
    /// [`RetryBudget`] to several layers to share it between clients.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        Arc::make_mut(&mut self.config).budget = budget;
        self
    }

    /// The settings this layer was built from.
    pub fn settings(&self) -> &RetrySettings {
        &self.config.settings
    }

    /// Replaces the classifier (it must be the one the rest of the stack
    /// uses; the builder sees to that).
    pub fn classify<C2: Clone>(self, classify: C2) -> RetryLayer<C2> {
        let c = Arc::unwrap_or_clone(self.config);
        RetryLayer {
            config: Arc::new(Config {
                service: c.service,
                settings: c.settings,
                max_attempts: c.max_attempts,
                backoff: c.backoff,
                budget: c.budget,
                per_try_timeout: c.per_try_timeout,
                body_limit: c.body_limit,
                classify,
                counters: c.counters,
            }),
        }
    }

    /// The attempts and refusals this layer counts, shared by its clones.
    pub fn counters(&self) -> &RetryCounters {
        &self.config.counters
    }

    /// The budget this layer draws on.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.config.budget
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> RetryService<S, C> {
        RetryService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`RetryLayer`] makes. Its inner service receives
/// `Request<ReplayBody<B>>`.
#[derive(Debug)]
pub struct RetryService<S, C> {
    inner: S,
    config: Arc<Config<C>>,
}

impl<S: Clone, C> Clone for RetryService<S, C> {
    fn clone(&self) -> Self {
        RetryService {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S, C, B, RB> Service<Request<B>> for RetryService<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<Response<RB>>,
    B: http_body::Body,
{
    type Response = Response<RB>;
    type Error = Error;
    type Future = ResponseFuture<S, C, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::inner(&self.config.service, None, e))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.config.budget.deposit();
        let (parts, body) = req.into_parts();
        // The service that was made ready handles the first attempt; a clone
        // takes its place here.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            config: self.config.clone(),
            service,
            body: Some(ReplayBody::new(body, self.config.body_limit)),
            parts,
            tried: Tried::default(),
            attempts: 0,
            last: None,
            state: State::Ready,
        }
    }
}

/// The response future of [`RetryService`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    config: Arc<Config<C>>,
    service: S,
    /// The handle new attempts are cloned from; taken by the only attempt
    /// when the body is too large to replay.
    body: Option<ReplayBody<B>>,
    parts: http::request::Parts,
    tried: Tried,
    attempts: u32,
    /// The last failure, kept while a retry is pending so that it can be
    /// returned if the retry cannot start.
    last: Option<Result<S::Response, Error>>,
    #[pin]
    state: State<S::Future>,
}

#[pin_project(project = StateProj)]
enum State<F> {
    /// Waiting for the service to be ready for the next attempt.
    Ready,
    Calling {
        #[pin]
        future: Instrumented<F>,
        #[pin]
        timeout: Option<Sleep>,
    },
    Backoff {
        #[pin]
        sleep: Sleep,
    },
}

/// What to do with an attempt's outcome.
enum Next {
    /// Return it, with the reason it was not retried if it was retryable.
    Return(Option<RetryStop>),
    /// Retry after this long.
    RetryAfter(Duration),
}

impl<S, C, B, RB> Future for ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    C: Classify<Response<RB>>,
    B: http_body::Body,
{
    type Output = Result<Response<RB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let config = &**this.config;
        loop {
            match this.state.as_mut().project() {
                StateProj::Ready => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(Error::inner(&config.service, None, e)));
                    }
                    *this.attempts += 1;
                    let mut parts = this.parts.clone();
                    this.tried.start_attempt();
                    parts.extensions.insert(this.tried.clone());
                    facts::stamp_headers(&mut parts);
                    let body = match this.body.as_ref().and_then(ReplayBody::try_clone) {
                        Some(body) => body,
                        // Not replayable (its size is known to exceed the
                        // limit): the one handle goes, and no retry follows
                        // (`decide` sees there is no handle left).
                        None => match this.body.take() {
                            Some(body) => body,
                            None => {
                                let e = "request body was already sent and cannot be replayed";
                                return Poll::Ready(Err(Error::inner(&config.service, None, e)));
                            }
                        },
                    };
                    let timeout = config.per_try_timeout.map(|per_try| {
                        let mut until = Instant::now() + per_try;
                        if let Some(d) = parts.extensions.get::<Deadline>() {
                            until = until.min(d.instant());
                        }
                        tokio::time::sleep_until(until)
                    });
                    config.counters.attempt();
                    // The balancer records the endpoint it picks in this span.
                    let span = tracing::debug_span!(
                        "palisade.attempt",
                        attempt = *this.attempts,
                        endpoint = tracing::field::Empty,
                    );
                    let future = {
                        let _entered = span.enter();
                        this.service.call(Request::from_parts(parts, body))
                    };
                    this.state.set(State::Calling {
                        future: future.instrument(span),
                        timeout,
                    });
                }
                StateProj::Calling { future, timeout } => {
                    let outcome = match future.poll(cx) {
                        Poll::Ready(Ok(rsp)) => Ok(rsp),
                        Poll::Ready(Err(e)) => Err(Error::inner(&config.service, None, e)),
                        Poll::Pending => {
                            let fired = timeout.as_pin_mut().is_some_and(|t| t.poll(cx).is_ready());
                            if !fired {
                                return Poll::Pending;
                            }
                            let after = config.per_try_timeout.unwrap_or_default();
                            // The balancer's future, dropped with this
                            // attempt, records a failure for its endpoint.
                            this.tried.time_out();
                            Err(Error::inner(
                                &config.service,
                                this.tried.last().as_ref(),
                                AttemptTimedOut { after },
                            ))
                        }
                    };
                    // A retry the balancer refused to start (its endpoint's
                    // latency does not fit in what remains): the caller gets
                    // the failure that prompted it.
                    if *this.attempts > 1
                        && matches!(&outcome, Err(e) if e.is_deadline_exceeded())
                        && let Some(last) = this.last.take()
                    {
                        return Poll::Ready(annotate(config, last, RetryStop::Deadline));
                    }
                    let next = decide(
                        config,
                        &outcome,
                        this.parts,
                        *this.attempts,
                        this.body.as_ref(),
                    );
                    match next {
                        Next::Return(stop) => {
                            return Poll::Ready(match stop {
                                Some(stop) => annotate(config, outcome, stop),
                                None => outcome,
                            });
                        }
                        Next::RetryAfter(delay) => {
                            tracing::debug!(attempt = *this.attempts, ?delay, "retry scheduled");
                            *this.last = Some(outcome);
                            this.state.set(State::Backoff {
                                sleep: tokio::time::sleep(delay),
                            });
                        }
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Ready);
                }
            }
        }
    }
}

/// Records why a retryable outcome was returned without a retry: in the
/// outcome, in the metrics, as an event.
fn annotate<C, RB>(
    config: &Config<C>,
    outcome: Result<Response<RB>, Error>,
    stop: RetryStop,
) -> Result<Response<RB>, Error> {
    tracing::debug!(reason = %stop, "retryable failure not retried");
    config.counters.refused(stop);
    match outcome {
        Ok(mut rsp) => {
            rsp.extensions_mut().insert(stop);
            Ok(rsp)
        }
        Err(e) => Err(e.with_retry_stop(stop)),
    }
}

/// The retry decision for one attempt's outcome; see the module docs for
/// the order of the checks.
fn decide<C, RB, B>(
    config: &Config<C>,
    outcome: &Result<Response<RB>, Error>,
    parts: &http::request::Parts,
    attempts: u32,
    body: Option<&ReplayBody<B>>,
) -> Next
where
    C: Classify<Response<RB>>,
    B: http_body::Body,
{
    let class = match outcome {
        Ok(rsp) => config.classify.classify_response(rsp),
        // Only failures of the request itself are retried: no endpoints or
        // a spent deadline would only fail again.
        Err(e @ Error::Inner { .. }) => config.classify.classify_error(e),
        Err(_) => return Next::Return(None),
    };
    if !class.is_failure() {
        return Next::Return(None);
    }
    match class.retry() {
        Retry::Never => return Next::Return(None),
        Retry::IfIdempotent if !is_idempotent(&parts.method) => {
            return Next::Return(Some(RetryStop::Method));
        }
        Retry::IfIdempotent | Retry::Always => {}
    }
    if attempts >= config.max_attempts {
        return Next::Return(Some(RetryStop::Attempts(attempts)));
    }
    if !body.is_some_and(ReplayBody::is_replayable) {
        return Next::Return(Some(RetryStop::Body));
    }
    let delay = config.backoff.delay(attempts);
    if let Some(deadline) = parts.extensions.get::<Deadline>()
        && delay >= deadline.remaining()
    {
        return Next::Return(Some(RetryStop::Deadline));
    }
    if !config.budget.withdraw() {
        return Next::Return(Some(RetryStop::Budget));
    }
    Next::RetryAfter(delay)
}

#[cfg(test)]
mod tests;
