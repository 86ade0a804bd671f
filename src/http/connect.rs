//! The pooled client's connector: hyper-util's `HttpConnector`, whose
//! HTTP/1.1 connections notice a close by the server before they are
//! reused.
//!
//! A kept-alive HTTP/1.1 connection the server closes while it sits idle
//! (its keep-alive timeout ran out) is dropped from the pool once the
//! connection's task reads the end of the stream. The task reads when the
//! runtime's reactor says the socket is readable, and the reactor may not
//! have looked yet when the next request takes the connection: the task
//! then skips the read (no readiness), writes the request onto the closed
//! socket, and the request fails as `IncompleteMessage`, written, which no
//! one may resend for a POST. [`Conn`] closes that gap: while a connection
//! is between a response and the next request, a read that would wait
//! first asks the kernel (a one-byte non-blocking `MSG_PEEK`) whether the
//! server has closed. If it has, hyper sees the end of the stream before
//! it takes the request, hands the request back unwritten, and hyper-util
//! (`retry_canceled_requests`) sends it on a new connection, whatever its
//! method. A close that lands after the request was written is still an
//! error the classifier retries only for idempotent methods.
//!
//! hyper polls an idle connection's read several times between two
//! requests (after the response, after answering its own caller, before
//! the next request): a peek on each cost three to five system calls per
//! proxied request. A connection is asked only once it has been idle for
//! [`PEEK_AFTER`], and then at most once per [`PEEK_INTERVAL`]. Servers
//! close idle connections after keep-alive timeouts of a second or more;
//! a connection reused sooner than [`PEEK_AFTER`] after its response was
//! closed by a server going away, which the classifier handles (an
//! idempotent request is retried).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use crate::BoxError;

/// hyper-util's [`HttpConnector`], whose connections are [`Conn`]s: an
/// HTTP/1.1 connection the server closed while it sat idle in the pool
/// (its keep-alive timeout ran out) is never written to. Between a
/// response and the next request, a read that would wait first asks the
/// kernel (a one-byte non-blocking `MSG_PEEK`) whether the server has
/// closed; if it has, hyper sees the end of the stream before it takes the
/// next request, hands the request back unwritten, and hyper-util sends
/// it on a new connection, whatever its method. Without it, a request
/// taking the connection before the runtime had read the close was
/// written onto the closed socket and failed as `IncompleteMessage`,
/// which no one may resend for a POST.
#[derive(Debug, Clone)]
pub struct Connector {
    inner: HttpConnector,
    check_close: bool,
}

impl Connector {
    /// Wraps `inner`; with `check_close` (HTTP/1.1), each connection looks
    /// for the server's close before it is reused.
    pub(crate) fn new(inner: HttpConnector, check_close: bool) -> Connector {
        Connector { inner, check_close }
    }
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    // Once per connection, not per request.
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let check_close = self.check_close;
        Box::pin(async move {
            let io = connecting.await?;
            Ok(Conn {
                io,
                check_close,
                idle: false,
                read_at: None,
                peeked: None,
            })
        })
    }
}

/// A TCP connection of the pooled client, made by [`Connector`] (which
/// says what it adds to a plain TCP stream).
#[derive(Debug)]
pub struct Conn {
    io: TokioIo<TcpStream>,
    check_close: bool,
    /// Whether the last bytes moved were read: the connection is between
    /// a response (or part of one) and the next request.
    idle: bool,
    /// When the last bytes were read: the idle period's start.
    read_at: Option<Instant>,
    /// When the kernel was last asked whether the server closed.
    peeked: Option<Instant>,
}

/// How long a connection is idle before a read that would wait asks the
/// kernel whether the server closed it.
const PEEK_AFTER: Duration = Duration::from_millis(1);

/// The least time between two peeks of one idle connection.
const PEEK_INTERVAL: Duration = Duration::from_micros(50);

impl Conn {
    /// Whether the server has closed the connection (or reset it), asked
    /// of the kernel now rather than of the reactor's last word.
    fn peer_closed(&mut self) -> Option<io::Result<()>> {
        let now = Instant::now();
        let fresh = self
            .read_at
            .is_some_and(|at| now.duration_since(at) < PEEK_AFTER);
        let asked = self
            .peeked
            .is_some_and(|at| now.duration_since(at) < PEEK_INTERVAL);
        if fresh || asked {
            return None;
        }
        self.peeked = Some(now);
        let mut byte = [MaybeUninit::<u8>::uninit()];
        match socket2::SockRef::from(self.io.inner()).peek(&mut byte) {
            Ok(0) => Some(Ok(())),
            Ok(_) => None,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                None
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // Data (or the end of the stream): the next wait is a new
                // idle period, whose first read peeks.
                self.idle = true;
                self.read_at = Some(Instant::now());
                self.peeked = None;
                Poll::Ready(Ok(()))
            }
            // The reactor registered interest: if the kernel has data the
            // task is woken; a close it has already seen is the end of the
            // stream now (nothing was put in `buf`).
            Poll::Pending if self.check_close && self.idle => match self.peer_closed() {
                Some(closed) => Poll::Ready(closed),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.idle = false;
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.idle = false;
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}
