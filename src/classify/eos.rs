//! The end of a response's stream: how layers hear about it.
//!
//! A response is judged twice. Its head is classified at once
//! ([`Classify::classify_response`](super::Classify::classify_response)):
//! that verdict decides retries and hedges. Its *end* is classified when
//! the body finishes ([`Classify::classify_end`](super::Classify::classify_end)):
//! that verdict is the one the balancer's failure accrual and penalty, the
//! breaker, throttling and the metrics record, because a gRPC failure
//! arrives in the trailers and a reset can break a body after a good head.
//!
//! [`WatchEos`] wraps a service so that each response's body is an
//! [`EosBody`] and its extensions hold an [`Eos`]: a handle on which layers
//! register what to do when the stream ends. The client builder puts it
//! under every endpoint; a layer used on its own, over a service without
//! it, judges by the head alone.
//!
//! A body that sends nothing for too long can be cut: with an
//! [idle timeout](WatchEos::idle_timeout) (the client builder sets
//! [`DeadlineSettings::body_idle_timeout`](crate::deadline::DeadlineSettings::body_idle_timeout),
//! 60 s by default), a body that stays pending that long after its last
//! frame fails with [`BodyStalled`]: an error, so the endpoint's failure,
//! and the reader sees the body end in that error (a truncation). Time
//! counts only while the reader is waiting for the body, never while the
//! reader is slow to ask. gRPC responses are left alone: their streams may
//! idle for as long as their deadline (`grpc-timeout`, which the server
//! enforces) allows.
//!
//! How a stream ends ([`End`]):
//!
//! - **complete**: the body ended, with trailers or without;
//! - **error**: the body failed after the head (a reset, a truncated body):
//!   the endpoint's failure;
//! - **dropped**: the caller dropped the body before its end. That is the
//!   caller's choice, not the endpoint's failure, so the verdict is the
//!   head's (Linkerd's answer too). A dropped gRPC stream whose status never
//!   arrived counts as a success.
//!
//! ```
//! use http_body_util::{BodyExt, Full};
//! use palisade::classify::{Eos, End, WatchEos};
//! use std::sync::{Arc, Mutex};
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let inner = service_fn(|_: ()| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from("hi"))))
//! });
//! let rsp = WatchEos::new(inner).oneshot(()).await.unwrap();
//! let heard = Arc::new(Mutex::new(None));
//! let h = heard.clone();
//! rsp.extensions().get::<Eos>().unwrap().on_end(move |end| {
//!     *h.lock().unwrap() = Some(matches!(end, End::Complete(None)));
//! });
//! assert_eq!(*heard.lock().unwrap(), None, "not yet: the body is unread");
//! let body = rsp.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(&body[..], b"hi");
//! assert_eq!(*heard.lock().unwrap(), Some(true));
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project::{pin_project, pinned_drop};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::grpc::is_grpc_content_type;
use crate::error::BoxError;

/// How a response's stream ended; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub enum End<'a> {
    /// The body ended cleanly, with these trailers if it had any.
    Complete(Option<&'a HeaderMap>),
    /// The body failed after the head: a reset, a truncated body.
    Error(&'a (dyn StdError + 'static)),
    /// The body was dropped before its end (the caller stopped reading).
    /// Also what a listener registered after the end hears.
    Dropped,
}

type Listener = Box<dyn FnOnce(&End<'_>) + Send>;

/// One response's end of stream, which layers listen for.
///
/// [`WatchEos`] puts one in each response's extensions; clones share it.
/// Listeners run once, in the order they were registered (the lowest layer
/// first), on the task that reads the body to its end or drops it.
#[derive(Clone, Default)]
pub struct Eos {
    listeners: Arc<Mutex<Listeners>>,
}

/// Listeners kept in the `Eos`'s own allocation: a client's usual ones
/// (balancer, breaker, throttle, metrics) need no list of their own.
const INLINE_LISTENERS: usize = 4;

#[derive(Default)]
enum Listeners {
    #[default]
    Empty,
    Open {
        inline: [Option<Listener>; INLINE_LISTENERS],
        /// Those past the inline ones, in order.
        more: Vec<Listener>,
    },
    Ended,
}

impl Listeners {
    fn count(&self) -> usize {
        match self {
            Listeners::Open { inline, more } => {
                inline.iter().filter(|l| l.is_some()).count() + more.len()
            }
            _ => 0,
        }
    }
}

impl fmt::Debug for Eos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.lock() {
            Listeners::Ended => "ended".to_owned(),
            open => format!("open, {} listeners", open.count()),
        };
        f.debug_tuple("Eos").field(&state).finish()
    }
}

impl Eos {
    fn lock(&self) -> std::sync::MutexGuard<'_, Listeners> {
        // A listener runs outside the lock, so a panicking one cannot leave
        // the list half-written.
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `listener` when the stream ends. If it already has, runs it now
    /// with [`End::Dropped`] (judge by the head).
    pub fn on_end(&self, listener: impl FnOnce(&End<'_>) + Send + 'static) {
        let mut guard = self.lock();
        if let Listeners::Empty = &*guard {
            *guard = Listeners::Open {
                inline: Default::default(),
                more: Vec::new(),
            };
        }
        match &mut *guard {
            Listeners::Open { inline, more } => {
                let listener: Listener = Box::new(listener);
                match inline.iter_mut().find(|slot| slot.is_none()) {
                    Some(slot) => *slot = Some(listener),
                    None => more.push(listener),
                }
            }
            Listeners::Empty | Listeners::Ended => {
                drop(guard);
                listener(&End::Dropped);
            }
        }
    }

    /// Whether the stream has ended (listeners have run).
    pub fn has_ended(&self) -> bool {
        matches!(*self.lock(), Listeners::Ended)
    }

    /// Tells every listener how the stream ended; later calls do nothing.
    fn end(&self, end: &End<'_>) {
        let list = std::mem::replace(&mut *self.lock(), Listeners::Ended);
        if let Listeners::Open { inline, more } = list {
            for listener in inline.into_iter().flatten().chain(more) {
                listener(end);
            }
        }
    }
}

/// A response whose end of stream may be watched: palisade's layers find
/// the [`Eos`] through this. Implemented for `http::Response<B>` (the
/// handle is in its extensions); a custom response type opts in with an
/// empty impl, which means "judge by the head alone":
///
/// ```
/// struct MyResponse(u64);
/// impl palisade::classify::ResponseEos for MyResponse {}
/// ```
pub trait ResponseEos {
    /// The handle on this response's end of stream, if it is watched.
    fn eos(&self) -> Option<&Eos> {
        None
    }
}

impl<B> ResponseEos for http::Response<B> {
    fn eos(&self) -> Option<&Eos> {
        self.extensions().get::<Eos>()
    }
}

/// A response body that sent nothing for its idle timeout, and was cut:
/// the endpoint's failure.
///
/// ```
/// use palisade::classify::BodyStalled;
/// use std::time::Duration;
///
/// let e = BodyStalled::new(Duration::from_secs(60));
/// assert_eq!(e.to_string(), "response body sent nothing for 60s (body idle timeout)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyStalled {
    after: Duration,
}

impl BodyStalled {
    /// A body cut after sending nothing for `after`.
    pub fn new(after: Duration) -> Self {
        BodyStalled { after }
    }

    /// How long the body had sent nothing.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "response body sent nothing for {:?} (body idle timeout)",
            self.after
        )
    }
}

impl StdError for BodyStalled {}

/// A response body that tells its [`Eos`] how it ended, and is cut when it
/// sends nothing for its idle timeout (if it has one).
#[pin_project(PinnedDrop)]
pub struct EosBody<B> {
    #[pin]
    inner: B,
    eos: Option<Eos>,
    /// How long the body may stay pending after a frame.
    idle: Option<Duration>,
    /// Armed at the first pending poll, re-armed at the first pending poll
    /// after each frame: no timer work while frames keep coming. Boxed so
    /// that the body stays `Unpin` when its inner body is, and allocated
    /// only for a body that ever waits.
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether a frame arrived since the timer was armed.
    progressed: bool,
    /// Cut for stalling: ended.
    cut: bool,
}

impl<B> EosBody<B> {
    /// Wraps `inner`, reporting to `eos`.
    pub fn new(inner: B, eos: Eos) -> Self {
        EosBody {
            inner,
            eos: Some(eos),
            idle: None,
            stall: None,
            progressed: false,
            cut: false,
        }
    }

    /// Cuts the body with [`BodyStalled`] when it stays pending for `idle`
    /// after its last frame (or its first poll); `None` never cuts it.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle = idle;
        self
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for EosBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EosBody")
            .field("inner", &self.inner)
            .field("ended", &self.eos.is_none())
            .finish()
    }
}

#[pinned_drop]
impl<B> PinnedDrop for EosBody<B> {
    fn drop(self: Pin<&mut Self>) {
        if let Some(eos) = self.project().eos.take() {
            eos.end(&End::Dropped);
        }
    }
}

/// Its error is the inner body's, boxed: the listeners borrow it as a
/// `dyn Error` before the reader gets it.
impl<B> Body for EosBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        if *this.cut {
            return Poll::Ready(None);
        }
        let frame = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.progressed = true;
                frame.map(|f| f.map_err(Into::into))
            }
            Poll::Pending => {
                let Some(idle) = *this.idle else {
                    return Poll::Pending;
                };
                let stall = match this.stall {
                    None => this.stall.insert(Box::pin(tokio::time::sleep(idle))),
                    Some(sleep) => {
                        if *this.progressed {
                            sleep.as_mut().reset(Instant::now() + idle);
                        }
                        sleep
                    }
                };
                *this.progressed = false;
                if stall.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *this.cut = true;
                Some(Err(Box::new(BodyStalled::new(idle)) as BoxError))
            }
        };
        if let Some(eos) = this.eos.take() {
            match &frame {
                None => eos.end(&End::Complete(None)),
                Some(Err(e)) => eos.end(&End::Error(&**e)),
                Some(Ok(f)) => match f.trailers_ref() {
                    Some(trailers) => eos.end(&End::Complete(Some(trailers))),
                    // A reader may stop at `is_end_stream` without polling
                    // for the `None`: end there.
                    None if this.inner.is_end_stream() => eos.end(&End::Complete(None)),
                    None => *this.eos = Some(eos),
                },
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a service's response bodies in [`EosBody`] and puts their [`Eos`]
/// in the responses' extensions; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct WatchEos<S> {
    inner: S,
    idle: Option<Duration>,
}

impl<S> WatchEos<S> {
    /// Watches `inner`'s responses (with no idle timeout).
    pub fn new(inner: S) -> Self {
        WatchEos { inner, idle: None }
    }

    /// Cuts a response body that sends nothing for `idle` (see
    /// [`EosBody::idle_timeout`]); gRPC responses excepted. `None` (the
    /// default here) never cuts one.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle = idle;
        self
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// The [`Layer`] of [`WatchEos`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchEosLayer {
    idle: Option<Duration>,
}

impl WatchEosLayer {
    /// Watches responses, with no idle timeout.
    pub fn new() -> Self {
        WatchEosLayer::default()
    }

    /// See [`WatchEos::idle_timeout`].
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle = idle;
        self
    }
}

impl<S> Layer<S> for WatchEosLayer {
    type Service = WatchEos<S>;

    fn layer(&self, inner: S) -> WatchEos<S> {
        WatchEos::new(inner).idle_timeout(self.idle)
    }
}

impl<S, Req, B> Service<Req> for WatchEos<S>
where
    S: Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<EosBody<B>>;
    type Error = S::Error;
    type Future = WatchFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        WatchFuture {
            inner: self.inner.call(req),
            idle: self.idle,
        }
    }
}

/// The response future of [`WatchEos`].
#[pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct WatchFuture<F> {
    #[pin]
    inner: F,
    idle: Option<Duration>,
}

impl<F, B, E> Future for WatchFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<EosBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = ready!(this.inner.poll(cx))?;
        let eos = Eos::default();
        let (mut parts, body) = rsp.into_parts();
        parts.extensions.insert(eos.clone());
        // A gRPC stream may idle as long as its deadline allows.
        let idle = this.idle.filter(|_| !is_grpc_content_type(&parts.headers));
        Poll::Ready(Ok(http::Response::from_parts(
            parts,
            EosBody::new(body, eos).idle_timeout(idle),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// What the listeners heard, as text.
    fn recorder(eos: &Eos) -> Arc<Mutex<Vec<String>>> {
        let heard = Arc::new(Mutex::new(Vec::new()));
        for i in 0..2 {
            let h = heard.clone();
            eos.on_end(move |end| {
                let what = match end {
                    End::Complete(None) => "complete".to_owned(),
                    End::Complete(Some(t)) => format!("trailers {}", t.len()),
                    End::Error(e) => format!("error {e}"),
                    End::Dropped => "dropped".to_owned(),
                };
                h.lock().unwrap().push(format!("{i}: {what}"));
            });
        }
        heard
    }

    type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;
    type Stream =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

    fn body(frames: Frames) -> Stream {
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn trailers_end_the_stream_for_every_listener_in_order() {
        let eos = Eos::default();
        let heard = recorder(&eos);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let b = EosBody::new(
            body(vec![
                Ok(Frame::data(Bytes::from("a"))),
                Ok(Frame::trailers(trailers)),
            ]),
            eos.clone(),
        );
        let collected = b.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(*heard.lock().unwrap(), ["0: trailers 1", "1: trailers 1"]);
        assert!(eos.has_ended());
    }

    /// More listeners than fit inline still run, all of them, in order.
    #[test]
    fn listeners_past_the_inline_ones_run_in_order() {
        let eos = Eos::default();
        let heard = Arc::new(Mutex::new(Vec::new()));
        for i in 0..INLINE_LISTENERS + 3 {
            let h = heard.clone();
            eos.on_end(move |_| h.lock().unwrap().push(i));
        }
        assert_eq!(
            format!("{eos:?}"),
            format!("Eos(\"open, {} listeners\")", INLINE_LISTENERS + 3)
        );
        eos.end(&End::Complete(None));
        assert_eq!(
            *heard.lock().unwrap(),
            (0..INLINE_LISTENERS + 3).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn an_error_mid_body_is_heard_once() {
        let eos = Eos::default();
        let heard = recorder(&eos);
        let b = EosBody::new(
            body(vec![
                Ok(Frame::data(Bytes::from("a"))),
                Err(std::io::Error::other("reset")),
            ]),
            eos,
        );
        assert!(b.collect().await.is_err());
        assert_eq!(*heard.lock().unwrap(), ["0: error reset", "1: error reset"]);
    }

    #[tokio::test]
    async fn a_drop_before_the_end_is_dropped_and_after_it_is_nothing() {
        let eos = Eos::default();
        let heard = recorder(&eos);
        let mut b = Box::pin(EosBody::new(
            body(vec![
                Ok(Frame::data(Bytes::from("a"))),
                Ok(Frame::data(Bytes::from("b"))),
            ]),
            eos,
        ));
        b.frame().await.unwrap().unwrap();
        drop(b);
        assert_eq!(*heard.lock().unwrap(), ["0: dropped", "1: dropped"]);

        // Read to the end, then dropped: heard once, as complete.
        let eos = Eos::default();
        let heard = recorder(&eos);
        let b = EosBody::new(http_body_util::Full::new(Bytes::from("x")), eos);
        let _ = b.collect().await.unwrap();
        assert_eq!(*heard.lock().unwrap(), ["0: complete", "1: complete"]);
    }

    #[tokio::test]
    async fn a_late_listener_runs_at_once_as_dropped() {
        let eos = Eos::default();
        drop(EosBody::new(
            http_body_util::Empty::<Bytes>::new(),
            eos.clone(),
        ));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        eos.on_end(move |end| {
            assert!(matches!(end, End::Dropped));
            r.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 1);
    }

    /// A body that is always ready is never cut, however slowly it is
    /// read: the timer runs only while the reader waits for the body.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_not_a_stalled_body() {
        let b = EosBody::new(
            body(vec![
                Ok(Frame::data(Bytes::from("a"))),
                Ok(Frame::data(Bytes::from("b"))),
            ]),
            Eos::default(),
        )
        .idle_timeout(Some(Duration::from_secs(1)));
        let mut b = std::pin::pin!(b);
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(120)).await;
            assert!(b.frame().await.unwrap().is_ok());
        }
        assert!(b.frame().await.is_none());
    }

    /// A stalled body ends in `BodyStalled`, heard as an error; a gRPC
    /// response through `WatchEos` is left to its deadline.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_but_a_grpc_stream_is_not() {
        let stalling = |grpc: bool| {
            let svc = tower::service_fn(move |_: ()| async move {
                let frames =
                    futures::stream::iter([Ok::<_, std::io::Error>(Frame::data(Bytes::from("a")))])
                        .chain(futures::stream::pending());
                let mut rsp = http::Response::new(StreamBody::new(frames));
                if grpc {
                    rsp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                }
                Ok::<_, std::convert::Infallible>(rsp)
            });
            WatchEosLayer::new()
                .idle_timeout(Some(Duration::from_secs(5)))
                .layer(svc)
        };
        let rsp = stalling(false).oneshot(()).await.unwrap();
        let heard = recorder(rsp.extensions().get::<Eos>().unwrap());
        let mut b = rsp.into_body();
        assert!(b.frame().await.unwrap().is_ok());
        let start = tokio::time::Instant::now();
        let err = b.frame().await.unwrap().unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(
            err.downcast_ref::<BodyStalled>(),
            Some(&BodyStalled::new(Duration::from_secs(5)))
        );
        assert!(b.is_end_stream());
        assert!(b.frame().await.is_none(), "ended after the cut");
        assert_eq!(
            heard.lock().unwrap()[0],
            "0: error response body sent nothing for 5s (body idle timeout)"
        );

        let rsp = stalling(true).oneshot(()).await.unwrap();
        let mut b = rsp.into_body();
        assert!(b.frame().await.unwrap().is_ok());
        let waited = tokio::time::timeout(Duration::from_secs(600), b.frame()).await;
        assert!(waited.is_err(), "a gRPC stream may idle until its deadline");
    }
}
