//! The outermost layer: a span per request, and the per-request metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use super::ClientMetrics;
use crate::classify::Classify;
use crate::error::Error;

/// Opens the `palisade.request` span and counts requests, responses,
/// errors, latency and in-flight requests for one client (see the
/// [module docs](super)). The client builder puts it outermost.
#[derive(Debug)]
pub struct TelemetryLayer<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for TelemetryLayer<C> {
    fn clone(&self) -> Self {
        TelemetryLayer {
            shared: self.shared.clone(),
        }
    }
}

/// Everything a request needs after it completes, behind one `Arc` so
/// that a request costs one reference count, not one per handle.
#[derive(Debug)]
struct Shared<C> {
    client: Arc<str>,
    metrics: Option<ClientMetrics>,
    classify: C,
}

impl<C> TelemetryLayer<C> {
    /// A layer for the client called `client`, counting into `metrics` (or
    /// only tracing, when `None`), classifying with `classify`.
    pub fn new(client: impl Into<Arc<str>>, metrics: Option<&super::Metrics>, classify: C) -> Self {
        let client = client.into();
        TelemetryLayer {
            shared: Arc::new(Shared {
                metrics: metrics.map(|m| m.client(&client)),
                client,
                classify,
            }),
        }
    }

    pub(crate) fn client_metrics(&self) -> Option<&ClientMetrics> {
        self.shared.metrics.as_ref()
    }
}

impl<S, C> Layer<S> for TelemetryLayer<C> {
    type Service = Telemetry<S, C>;

    fn layer(&self, inner: S) -> Telemetry<S, C> {
        Telemetry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`TelemetryLayer`] makes.
#[derive(Debug)]
pub struct Telemetry<S, C> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Telemetry<S, C> {
    fn clone(&self) -> Self {
        Telemetry {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, C, B, RB> Service<Request<B>> for Telemetry<S, C>
where
    S: Service<Request<B>, Response = Response<RB>, Error = Error>,
    C: Classify<Response<RB>>,
{
    type Response = Response<RB>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let span = tracing::debug_span!(
            "palisade.request",
            client = %self.shared.client,
            method = %req.method(),
            path = req.uri().path(),
        );
        if let Some(m) = &self.shared.metrics {
            m.requests.inc();
            m.in_flight.inc();
        }
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner: future.instrument(span),
            start: Instant::now(),
            shared: InFlight(self.shared.clone()),
        }
    }
}

/// Counts a request in flight until dropped (completed or cancelled).
#[derive(Debug)]
struct InFlight<C>(Arc<Shared<C>>);

impl<C> Drop for InFlight<C> {
    fn drop(&mut self) {
        if let Some(m) = &self.0.metrics {
            m.in_flight.dec();
        }
    }
}

/// The response future of [`Telemetry`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<F, C> {
    #[pin]
    inner: Instrumented<F>,
    start: Instant,
    shared: InFlight<C>,
}

impl<F, C, RB> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<RB>, Error>>,
    C: Classify<Response<RB>>,
{
    type Output = Result<Response<RB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let shared = &this.shared.0;
        if let Some(m) = &shared.metrics {
            m.duration.observe(this.start.elapsed());
            match &result {
                Ok(rsp) => m.response(
                    shared.classify.classify_response(rsp).outcome(),
                    rsp.status().as_u16(),
                ),
                Err(e) => m.error(e),
            }
        }
        Poll::Ready(result)
    }
}
