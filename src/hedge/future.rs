//! The response future of [`Hedge`](super::Hedge).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use super::{HedgeSkip, Inner};
use crate::classify::Classify;
use crate::facts::{self, Tried};
use crate::replay::ReplayBody;

/// What the backup is made of, kept until it is sent or given up.
pub(super) struct Backup<S, B> {
    /// A clone of the inner service, made ready when the delay has passed.
    pub(super) service: S,
    /// The first request's head; shares its `Tried`.
    pub(super) parts: http::request::Parts,
    /// A handle on the first request's body, replaying it from the start.
    pub(super) body: ReplayBody<B>,
}

/// The response future of [`Hedge`](super::Hedge): the first request, the
/// hedge timer and (once sent) the backup, polled in that order; see the
/// [module docs](super#which-answer-wins).
///
/// Dropping it drops both requests.
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    shared: Arc<Inner<C>>,
    /// When the first request was sent.
    started: Instant,
    /// The hedge delay this request got (for the deadline check).
    delay: Duration,
    /// The first request, until it is answered or loses.
    #[pin]
    primary: Option<S::Future>,
    /// Runs until the delay has passed (then `None`; `pending` stays while
    /// the service gets ready).
    #[pin]
    timer: Option<Sleep>,
    /// Present from the first request's arrival until the backup is sent or
    /// given up.
    pending: Option<Backup<S, B>>,
    /// The backup, once sent, until it is answered or loses. Boxed: it
    /// exists for at most a budget's share of requests (5 % by default),
    /// and every other request's future is smaller for it.
    backup: Option<Pin<Box<Instrumented<S::Future>>>>,
}

impl<S, C, B> fmt::Debug for ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("primary", &self.primary.is_some())
            .field("waiting", &self.pending.is_some())
            .field("backup", &self.backup.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, C, B> ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    /// A request that will not be hedged.
    pub(super) fn single(shared: Arc<Inner<C>>, primary: S::Future, started: Instant) -> Self {
        ResponseFuture {
            shared,
            started,
            delay: Duration::ZERO,
            primary: Some(primary),
            timer: None,
            pending: None,
            backup: None,
        }
    }

    /// A request that may be hedged after `delay`.
    pub(super) fn hedged(
        shared: Arc<Inner<C>>,
        primary: S::Future,
        started: Instant,
        backup: Backup<S, B>,
        delay: Duration,
    ) -> Self {
        ResponseFuture {
            shared,
            started,
            delay,
            primary: Some(primary),
            timer: Some(tokio::time::sleep_until(started + delay)),
            pending: Some(backup),
            backup: None,
        }
    }
}

impl<S, C, B, RB> Future for ResponseFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    C: Classify<Response<RB>>,
{
    type Output = Result<Response<RB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let state = &*shared.state;

        // 1. The first request.
        if let Some(primary) = this.primary.as_mut().as_pin_mut()
            && let Poll::Ready(outcome) = primary.poll(cx)
        {
            this.primary.set(None);
            let good = shared.is_good(&outcome);
            if good {
                state.observe(*this.started);
            }
            if good || this.backup.is_none() {
                // Not needed any more: cancel now rather than when the
                // caller drops this future.
                this.timer.set(None);
                *this.pending = None;
                *this.backup = None;
                return Poll::Ready(outcome);
            }
            tracing::debug!(service = %state.service, "first request failed; waiting for the backup");
        }

        // 2. The delay, then the backup's service readiness.
        if this.pending.is_some() {
            if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                if timer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timer.set(None);
                let checked = match this.pending.as_ref() {
                    Some(b) => shared.may_hedge(&b.parts, &b.body, *this.delay),
                    None => Ok(()),
                };
                if let Err(reason) = checked {
                    state.skip(reason);
                    *this.pending = None;
                    return Poll::Pending;
                }
            }
            let ready = match this.pending.as_mut() {
                Some(b) => b.service.poll_ready(cx),
                None => return Poll::Pending,
            };
            match ready {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    // The budget token is spent; the first request goes on.
                    tracing::debug!(service = %state.service, "not hedged: the service failed to become ready");
                    *this.pending = None;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {
                    if let Some(backup) = this.pending.take()
                        && let Some(future) = send(state, backup, *this.delay)
                    {
                        *this.backup = Some(Box::pin(future));
                    } else {
                        return Poll::Pending;
                    }
                }
            }
        }

        // 3. The backup.
        if let Some(backup) = this.backup.as_mut()
            && let Poll::Ready(outcome) = backup.as_mut().poll(cx)
        {
            *this.backup = None;
            let good = shared.is_good(&outcome);
            if good || this.primary.is_none() {
                if this.primary.is_some() {
                    // The first request loses. The time it ran is a lower
                    // bound of its latency, and above the delay: enough for
                    // the percentile.
                    state.observe(*this.started);
                    this.primary.set(None);
                }
                if good {
                    state.won.fetch_add(1, Ordering::Relaxed);
                }
                return Poll::Ready(outcome);
            }
            tracing::debug!(service = %state.service, "backup failed; waiting for the first request");
        }
        Poll::Pending
    }
}

/// Sends the backup through its (ready) service, in a `palisade.hedge`
/// span that the balancer records its endpoint in. Returns `None` (and
/// cancels it before anything is sent) when the balancer picked the first
/// request's endpoint again.
fn send<S, B>(
    state: &super::State,
    backup: Backup<S, B>,
    delay: Duration,
) -> Option<Instrumented<S::Future>>
where
    S: Service<Request<ReplayBody<B>>>,
{
    let Backup {
        mut service,
        mut parts,
        body,
    } = backup;
    facts::stamp_headers(&mut parts);
    let tried = parts.extensions.get::<Tried>().cloned();
    let before = tried.as_ref().map(Tried::addresses);
    let span = tracing::debug_span!("palisade.hedge", endpoint = tracing::field::Empty);
    let future = {
        let _entered = span.enter();
        service.call(Request::from_parts(parts, body))
    };
    if let (Some(before), Some(tried)) = (before, tried) {
        let after = tried.addresses();
        if after.len() == before.len() + 1
            && before.last().is_some()
            && before.last() == after.last()
        {
            state.skip(HedgeSkip::SameEndpoint);
            return None;
        }
    }
    state.sent.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(service = %state.service, ?delay, "hedge sent");
    Some(future.instrument(span))
}
