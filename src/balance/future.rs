use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::{pin_project, pinned_drop};
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::{Hints, InFlight, Shared, Stalled, Tried, wait_for_endpoints};
use crate::classify::{Class, Classify, ResponseEos, Retry};
use crate::error::{BoxError, Error, Limit};
use crate::facts::Deadline;

/// The response future of [`Balance`](super::Balance).
///
/// On the common path it holds the chosen endpoint's service and its future
/// inline (no allocation); only a request that has to wait for the first
/// endpoint to appear boxes that wait.
///
/// Dropped while its call is in flight, it tells the endpoint what it
/// learned: cut off by the retry layer's per-try timeout (marked in the
/// request's [`Tried`](super::Tried)) or by the request's deadline (it is
/// dropped at or after the [`Deadline`] in the request), the call is a
/// failure of the endpoint, as if it had failed then, and is counted in
/// [`EndpointStats::timeouts`](super::EndpointStats::timeouts);
/// cancelled for any other reason (a hedge won, the caller went away),
/// it took at least as long as it ran, and the endpoint's latency
/// estimate rises to that if it was lower. Either way an endpoint whose
/// calls are always cut short cannot look fast, and one that never
/// answers is ejected with the defaults.
#[pin_project(PinnedDrop)]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<S, C, Req>
where
    S: Service<Req>,
{
    shared: Arc<Shared<S, C>>,
    #[pin]
    state: State<S, Req>,
}

#[pin_project(project = StateProj)]
enum State<S, Req>
where
    S: Service<Req>,
{
    Waiting {
        wait: Pin<Box<dyn Future<Output = ()> + Send>>,
        since: Instant,
        until: Instant,
        req: Option<Req>,
    },
    Ready {
        service: S,
        req: Option<Req>,
        in_flight: Option<InFlight<S>>,
    },
    Calling {
        #[pin]
        future: S::Future,
        /// Taken when the head arrives: it then lives until the end of the
        /// response's stream.
        in_flight: Option<InFlight<S>>,
        start: Instant,
        /// The request's `Tried`, to learn on drop whether the retry layer
        /// cut the call off with its per-try timeout.
        tried: Option<Tried>,
        /// The request's deadline, to learn on drop whether it was the
        /// deadline that cut the call off.
        deadline: Option<Deadline>,
        /// Whether the call may be given up when its endpoint stalls.
        idempotent: bool,
        /// Fires when the endpoint would be stalled if it has not answered
        /// anything by then; armed at the call's first pending poll.
        #[pin]
        stall: Option<Sleep>,
    },
    Failed {
        error: Option<Error>,
    },
    Done,
}

#[pinned_drop]
impl<S, C, Req> PinnedDrop for ResponseFuture<S, C, Req>
where
    S: Service<Req>,
{
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if let StateProj::Calling {
            in_flight: Some(in_flight),
            start,
            tried,
            deadline,
            ..
        } = this.state.project()
        {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(*start);
            let cut = tried.as_ref().is_some_and(Tried::timed_out)
                || deadline.is_some_and(|d| now >= d.instant());
            if cut {
                // Cut off by the per-try timeout or the deadline while it
                // waited on this endpoint: a failure of the endpoint, so
                // that one that never answers gets ejected.
                this.shared.record_cut(in_flight, elapsed, now);
            } else {
                in_flight
                    .slot
                    .load
                    .ewma
                    .observe_at_least(elapsed, now, this.shared.config.decay);
            }
        }
    }
}

impl<S, C, Req> ResponseFuture<S, C, Req>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    pub(super) fn ready(shared: Arc<Shared<S, C>>, in_flight: InFlight<S>, req: Req) -> Self {
        ResponseFuture {
            shared,
            state: State::Ready {
                service: in_flight.slot.service.clone(),
                req: Some(req),
                in_flight: Some(in_flight),
            },
        }
    }

    pub(super) fn failed(shared: Arc<Shared<S, C>>, error: Error) -> Self {
        ResponseFuture {
            shared,
            state: State::Failed { error: Some(error) },
        }
    }

    pub(super) fn waiting(shared: Arc<Shared<S, C>>, req: Req) -> Self {
        let since = Instant::now();
        let until = since + shared.config.endpoint_wait;
        ResponseFuture {
            state: State::Waiting {
                wait: Box::pin(wait_for_endpoints(shared.clone(), until)),
                since,
                until,
                req: Some(req),
            },
            shared,
        }
    }
}

impl<S, C, Req> Future for ResponseFuture<S, C, Req>
where
    Req: Hints,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Response: ResponseEos,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting {
                    wait,
                    since,
                    until,
                    req,
                } => {
                    ready!(wait.as_mut().poll(cx));
                    let set = this.shared.set.load();
                    if set.is_empty() {
                        let waited = since.elapsed();
                        this.state.set(State::Done);
                        return Poll::Ready(Err(Error::NoEndpoints {
                            service: this.shared.name.clone(),
                            waited,
                        }));
                    }
                    let in_flight = match this
                        .shared
                        .pick_for(&set, req.as_ref().expect("polled after completion"))
                    {
                        Ok(Some(in_flight)) => in_flight,
                        // Another request took the slot first: wait again,
                        // while there is time.
                        Ok(None) if Instant::now() < *until => {
                            *wait = Box::pin(wait_for_endpoints(this.shared.clone(), *until));
                            continue;
                        }
                        Ok(None) => {
                            let waited = since.elapsed();
                            this.state.set(State::Done);
                            return Poll::Ready(Err(Error::Overloaded {
                                service: this.shared.name.clone(),
                                limit: Limit::EndpointInFlight {
                                    max: this.shared.config.endpoint_max_in_flight,
                                    waited,
                                },
                            }));
                        }
                        Err(error) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                    };
                    let req = req.take().expect("polled after completion");
                    this.state.set(State::Ready {
                        service: in_flight.slot.service.clone(),
                        req: Some(req),
                        in_flight: Some(in_flight),
                    });
                }
                StateProj::Ready {
                    service,
                    req,
                    in_flight,
                } => {
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        let e: BoxError = e.into();
                        let class = this.shared.classify.classify_error(&*e);
                        let mut in_flight = in_flight.take().expect("polled after completion");
                        this.shared.record(
                            &mut in_flight,
                            class,
                            std::time::Duration::ZERO,
                            Instant::now(),
                        );
                        let error = this.shared.error(&in_flight, class, e);
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error));
                    }
                    let req = req.take().expect("polled after completion");
                    let in_flight = in_flight.take().expect("polled after completion");
                    let tried = req.tried().cloned();
                    let deadline = req.deadline();
                    let idempotent = this.shared.config.stall_detection && req.idempotent();
                    let start = Instant::now();
                    let future = service.call(req);
                    this.state.set(State::Calling {
                        future,
                        in_flight: Some(in_flight),
                        start,
                        tried,
                        deadline,
                        idempotent,
                        stall: None,
                    });
                }
                StateProj::Calling {
                    future,
                    in_flight,
                    start,
                    idempotent,
                    mut stall,
                    ..
                } => {
                    let result = match future.poll(cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending if !*idempotent => return Poll::Pending,
                        Poll::Pending => {
                            let load = &in_flight.as_ref().expect("in flight").slot.load;
                            let Some(silent) = this.shared.watch_stall(load, stall.as_mut(), cx)
                            else {
                                return Poll::Pending;
                            };
                            // Given up: the endpoint's failure, and an error
                            // the retry layer may send elsewhere.
                            let mut in_flight = in_flight.take().expect("in flight");
                            let now = Instant::now();
                            let latency = now.saturating_duration_since(*start);
                            this.shared.record_cut(&mut in_flight, latency, now);
                            let class = Class::failure(Retry::IfIdempotent);
                            let endpoint = in_flight.slot.endpoint.address().clone();
                            tracing::debug!(service = %this.shared.name, %endpoint, ?silent, "endpoint stalled: giving the call up");
                            let e = Box::new(Stalled::new(endpoint, silent));
                            let error = this.shared.error(&in_flight, class, e);
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                    };
                    let now = Instant::now();
                    let latency = now.saturating_duration_since(*start);
                    let mut in_flight = in_flight.take().expect("polled after completion");
                    let result = match result {
                        Ok(rsp) => {
                            let head = this.shared.classify.classify_response(&rsp);
                            this.shared
                                .observe_head(&in_flight.slot, head, latency, now);
                            match rsp.eos() {
                                // The verdict, and the in-flight count, wait
                                // for the end of the stream.
                                Some(eos) => {
                                    let shared = this.shared.clone();
                                    eos.on_end(move |end| {
                                        let class = shared.classify.classify_end(head, end);
                                        shared.settle(
                                            &mut in_flight,
                                            class,
                                            latency,
                                            Instant::now(),
                                        );
                                    });
                                }
                                None => this.shared.settle(&mut in_flight, head, latency, now),
                            }
                            Ok(rsp)
                        }
                        Err(e) => {
                            let e: BoxError = e.into();
                            let class = this.shared.classify.classify_error(&*e);
                            this.shared.record(&mut in_flight, class, latency, now);
                            Err(this.shared.error(&in_flight, class, e))
                        }
                    };
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
