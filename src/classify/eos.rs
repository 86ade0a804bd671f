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

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project::{pin_project, pinned_drop};
use tower::{Layer, Service};

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

#[derive(Default)]
enum Listeners {
    #[default]
    Empty,
    Open(Vec<Listener>),
    Ended,
}

impl fmt::Debug for Eos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.lock() {
            Listeners::Empty => "open, 0 listeners".to_owned(),
            Listeners::Open(l) => format!("open, {} listeners", l.len()),
            Listeners::Ended => "ended".to_owned(),
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
        match &mut *guard {
            Listeners::Empty => {
                // Room for a client's usual listeners (balancer, breaker,
                // throttle, metrics) in one allocation.
                let mut list: Vec<Listener> = Vec::with_capacity(4);
                list.push(Box::new(listener));
                *guard = Listeners::Open(list);
            }
            Listeners::Open(list) => list.push(Box::new(listener)),
            Listeners::Ended => {
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
        if let Listeners::Open(list) = list {
            for listener in list {
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

/// A response body that tells its [`Eos`] how it ended.
#[pin_project(PinnedDrop)]
pub struct EosBody<B> {
    #[pin]
    inner: B,
    eos: Option<Eos>,
}

impl<B> EosBody<B> {
    /// Wraps `inner`, reporting to `eos`.
    pub fn new(inner: B, eos: Eos) -> Self {
        EosBody {
            inner,
            eos: Some(eos),
        }
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
        let frame = ready!(this.inner.as_mut().poll_frame(cx)).map(|f| f.map_err(Into::into));
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
        self.inner.is_end_stream()
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
}

impl<S> WatchEos<S> {
    /// Watches `inner`'s responses.
    pub fn new(inner: S) -> Self {
        WatchEos { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// The [`Layer`] of [`WatchEos`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchEosLayer;

impl<S> Layer<S> for WatchEosLayer {
    type Service = WatchEos<S>;

    fn layer(&self, inner: S) -> WatchEos<S> {
        WatchEos::new(inner)
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
}

impl<F, B, E> Future for WatchFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<EosBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rsp = ready!(self.project().inner.poll(cx))?;
        let eos = Eos::default();
        let (mut parts, body) = rsp.into_parts();
        parts.extensions.insert(eos.clone());
        Poll::Ready(Ok(http::Response::from_parts(
            parts,
            EosBody::new(body, eos),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::atomic::{AtomicUsize, Ordering};

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
}
