//! Idle connections: a connection counts its open streams, and knows when
//! it has had none for a while (`server.idle_timeout`, for h2c).
//!
//! A stream is open from the moment its request reaches the handler until
//! its response body has ended, failed or been dropped (the client reset
//! the stream, or the connection went away); a request whose answer is
//! still being computed or streamed keeps its connection busy however long
//! it takes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;

/// The streams open on one connection.
#[derive(Debug, Clone)]
pub(crate) struct OpenStreams(Arc<watch::Sender<usize>>);

impl OpenStreams {
    pub(crate) fn new() -> OpenStreams {
        OpenStreams(Arc::new(watch::Sender::new(0)))
    }

    /// One more open stream, until the returned guard is dropped.
    pub(crate) fn open(&self) -> StreamGuard {
        self.0.send_modify(|n| *n += 1);
        StreamGuard(self.0.clone())
    }

    /// Resolves once the connection has had no open stream for `timeout`
    /// without a break: a stream opened meanwhile starts the wait again
    /// when it ends.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let mut open = self.0.subscribe();
        loop {
            // `self` holds the sender: these never see it closed.
            let _ = open.wait_for(|n| *n == 0).await;
            tokio::select! {
                () = tokio::time::sleep(timeout) => return,
                _ = open.changed() => {}
            }
        }
    }
}

/// One open stream; dropping it closes it.
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<watch::Sender<usize>>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A response body that keeps its stream open until it ends, fails or is
/// dropped.
#[derive(Debug)]
#[pin_project::pin_project]
pub(crate) struct Counted<B> {
    #[pin]
    inner: B,
    stream: Option<StreamGuard>,
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, stream: StreamGuard) -> Counted<B> {
        Counted {
            inner,
            stream: Some(stream),
        }
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.stream.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_stream_open_for_the_whole_timeout() {
        let streams = OpenStreams::new();
        let timeout = Duration::from_secs(10);
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle_for(timeout).await }
        });
        // Busy from 5 s to 60 s: not idle meanwhile, however long.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let body = Counted::new(Full::new(Bytes::from_static(b"ok")), streams.open());
        tokio::time::sleep(Duration::from_secs(55)).await;
        assert!(!idle.is_finished(), "idle while a stream was open");
        // The body's end closes the stream; idle 10 s after that.
        let _ = body.collect().await.unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!idle.is_finished(), "idle before the timeout passed");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(idle.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_body_closes_its_stream() {
        let streams = OpenStreams::new();
        let body = Counted::new(Full::new(Bytes::new()), streams.open());
        assert_eq!(*streams.0.borrow(), 1);
        drop(body);
        assert_eq!(*streams.0.borrow(), 0);
    }
}
