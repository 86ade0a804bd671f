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
use crate::classify::{Class, Classify, Outcome, ResponseEos};
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
            outcome = tracing::field::Empty,
            grpc_status = tracing::field::Empty,
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
            in_flight: Some(InFlight(self.shared.clone())),
        }
    }
}

/// Counts a request in flight until dropped: cancelled, failed, or its
/// response's body ended. Clones share the count.
#[derive(Debug)]
struct InFlight<C>(Arc<Shared<C>>);

impl<C> InFlight<C> {
    /// The response's stream ended with `class`: counts it and closes the
    /// request's span fields; the in-flight count ends with `self`.
    fn ended(self, span: &tracing::Span, class: Class, status: u16) {
        if let Some(m) = &self.0.metrics {
            m.response(class.outcome(), status);
            if let Some(code) = class.grpc_status() {
                m.grpc_response(code);
            }
        }
        span.record("outcome", outcome_name(class.outcome()));
        if let Some(code) = class.grpc_status() {
            span.record("grpc_status", code.as_str());
        }
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Overloaded => "overloaded",
        Outcome::Caller => "caller",
        Outcome::Local => "local",
    }
}

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
    /// Taken when the head arrives, to last until the body ends.
    in_flight: Option<InFlight<C>>,
}

impl<F, C, RB> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<RB>, Error>>,
    C: Classify<Response<RB>>,
{
    type Output = Result<Response<RB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll(cx));
        let in_flight = this.in_flight.take().expect("polled after completion");
        let shared = in_flight.0.clone();
        if let Some(m) = &shared.metrics {
            m.duration.observe(this.start.elapsed());
        }
        match &result {
            Ok(rsp) => {
                let head = shared.classify.classify_response(rsp);
                let status = rsp.status().as_u16();
                let span = this.inner.span().clone();
                let end = move |class: Class| in_flight.ended(&span, class, status);
                match rsp.eos() {
                    Some(eos) => {
                        let classify = shared.classify.clone();
                        eos.on_end(move |e| end(classify.classify_end(head, e)));
                    }
                    None => end(head),
                }
            }
            Err(e) => {
                if let Some(m) = &shared.metrics {
                    m.error(e);
                }
                this.inner.span().record("outcome", "error");
            }
        }
        Poll::Ready(result)
    }
}
