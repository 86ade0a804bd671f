//! Serving a listener: accepting, the connection cap, telling HTTP/1.1
//! from h2c, the request-head limits and timeouts, and finishing a
//! connection gracefully on shutdown. The proxy's listeners and the admin
//! listener are served by this one path, each with its own handler and
//! its own connection count.
//!
//! Shutdown: every connection holds a receiver of the listener's stop
//! channel. When the channel says stop, the accept loop ends and each
//! connection is asked to finish (HTTP/1.1: no keep-alive after the
//! response in flight; h2c: GOAWAY, the open streams complete); the
//! connection drops its receiver when it has ended, so the sender's
//! `closed()` is "every connection has drained".
//!
//! An h2c connection is asked to finish the same way once it has had no
//! open stream for `server.idle_timeout` (see `idle`): a client that opens
//! a connection and leaves it idle cannot hold it for good (HTTP/1.1 has
//! `header_read_timeout` between requests for that).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::conns::{AcceptErrors, Connections as Count};
use super::idle::{Counted, OpenStreams};
use super::server::State;

/// The smallest `server.max_header_bytes` a config may ask for.
pub(crate) const MIN_MAX_HEADER_BYTES: usize = 1024;

/// The most `server.max_headers` a config may ask for (hyper then keeps
/// the header slots on the heap, per request).
pub(crate) const MAX_MAX_HEADERS: usize = 10_000;

/// The most admin connections open at once, whatever
/// `server.max_connections` allows: the admin listener serves scrapes and
/// probes, and its connections fit in the descriptors the default cap
/// keeps back.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How often an idle h2c connection is pinged, and how long the answer
/// may take before the connection is closed as dead.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The client preface that starts every h2c connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which listener a connection came in on: each has its own count of open
/// connections, so a flood on one cannot lock the other out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// A proxy listener (`listeners`): `server.max_connections`.
    Proxy,
    /// The admin listener: `server.max_connections`, at most
    /// [`ADMIN_MAX_CONNECTIONS`].
    Admin,
}

impl Side {
    /// This side's connection count, and its cap under the running config.
    fn count_and_cap(self, state: &State, configured: Option<usize>) -> (&Count, usize) {
        let max = configured.unwrap_or(state.default_max_connections);
        match self {
            Side::Proxy => (&state.connections, max),
            Side::Admin => (&state.admin_connections, max.min(ADMIN_MAX_CONNECTIONS)),
        }
    }
}

/// Accepts connections on `listener` until `stop` says so, and serves each
/// with `handler` (given the request and the peer's address).
///
/// A connection gets the running config's `server.max_header_bytes`,
/// `max_headers`, `header_read_timeout` and `idle_timeout`, and counts against
/// `max_connections`: a reload that changes them applies to the
/// connections accepted after it.
pub(crate) async fn serve<H, F, B>(
    listener: TcpListener,
    state: Arc<State>,
    side: Side,
    mut stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut current: Option<Arc<Builders>> = None;
    let mut errors = AcceptErrors::default();
    while let Some((stream, remote)) = accept(&listener, &mut stop, &mut errors).await {
        let (limits, configured) = {
            let routing = state.routing.load();
            let server = &routing.config.server;
            let limits = ConnectionLimits {
                max_header_bytes: server.max_header_bytes,
                max_headers: server.max_headers,
                header_read_timeout: server.header_read_timeout,
                idle_timeout: server.idle_timeout,
            };
            (limits, server.max_connections)
        };
        let (count, max_connections) = side.count_and_cap(&state, configured);
        // Over the cap: closed at once (and counted), before it costs more.
        let Some(admitted) = count.admit(max_connections) else {
            tracing::debug!(%remote, ?side, max_connections, "connection refused: the connection cap is reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builders = match &current {
            Some(c) if c.limits == limits => c.clone(),
            _ => {
                let c = Arc::new(Builders::new(limits));
                current = Some(c.clone());
                c
            }
        };
        let (handler, stop) = (handler.clone(), stop.clone());
        tokio::spawn(async move {
            let _admitted = admitted;
            serve_connection(stream, remote, &builders, stop, handler).await;
        });
    }
}

/// Serves one accepted connection to its end.
async fn serve_connection<H, F, B>(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    builders: &Builders,
    mut stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let read_timeout = builders.limits.header_read_timeout;
    let sniffed = tokio::select! {
        sniffed = tokio::time::timeout(read_timeout, sniff(stream)) => sniffed,
        // Shutting down before a request began: nothing to finish.
        () = stopped(&mut stop) => return,
    };
    let (h2, io) = match sniffed {
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %remote, "connection ended before its first request");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "connection sent no request in time");
            return;
        }
    };
    // Each request's stream is open until its response body is done.
    let streams = OpenStreams::new();
    let service = {
        let streams = streams.clone();
        hyper::service::service_fn(move |req| {
            let stream = streams.open();
            let rsp = handler(req, remote);
            async move { Ok::<_, Infallible>(rsp.await.map(|body| Counted::new(body, stream))) }
        })
    };
    let result = if h2 {
        let conn = builders.http2.serve_connection(io, service);
        let idle = streams.idle_for(builders.limits.idle_timeout);
        drive(conn, |c| c.graceful_shutdown(), stop, idle).await
    } else {
        // Between HTTP/1.1 requests, `header_read_timeout` is the idle bound.
        let conn = builders.http1.serve_connection(io, service);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            stop,
            std::future::pending(),
        )
        .await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %remote, "connection ended with an error");
    }
}

/// Drives `conn` to its end; once `stop` says so or it is `idle`, asks
/// it to `finish` (hyper's graceful shutdown) and drives it on until its
/// requests in flight are done.
async fn drive<C: Future>(
    conn: C,
    finish: impl FnOnce(Pin<&mut C>),
    mut stop: watch::Receiver<bool>,
    idle: impl Future<Output = ()>,
) -> C::Output {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        out = conn.as_mut() => return out,
        () = stopped(&mut stop) => {}
        () = idle => tracing::debug!("closing an idle h2c connection"),
    }
    finish(conn.as_mut());
    // `stop` is held until the connection has ended: the drain waits for it.
    let out = conn.await;
    drop(stop);
    out
}

/// Resolves once `stop` says stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A connection's bytes: the ones read to tell the protocol, then the rest.
type Sniffed = TokioIo<
    tokio::io::Join<
        tokio::io::Chain<std::io::Cursor<Vec<u8>>, tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    >,
>;

/// Reads just enough of a new connection to tell the h2c preface from an
/// HTTP/1 request line (at most the preface's 24 bytes; one byte settles
/// most HTTP/1 requests), and hands back the connection with those bytes
/// in front.
async fn sniff(mut stream: tokio::net::TcpStream) -> std::io::Result<(bool, Sniffed)> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; 24];
    let h2 = loop {
        let n = stream
            .read(&mut chunk[..H2_PREFACE.len() - seen.len()])
            .await?;
        seen.extend_from_slice(&chunk[..n]);
        if n == 0 || !H2_PREFACE.starts_with(&seen) {
            break false;
        }
        if seen.len() == H2_PREFACE.len() {
            break true;
        }
    };
    let (read, write) = stream.into_split();
    let io = tokio::io::join(std::io::Cursor::new(seen).chain(read), write);
    Ok((h2, TokioIo::new(io)))
}

/// The `server` settings a connection is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

/// How a connection is served, HTTP/1.1 or h2c, with request heads
/// limited to `max_header_bytes`, exactly: on HTTP/1.1 the request line
/// and headers (hyper's `max_header_size`), on h2c the header list as
/// HTTP/2 counts it (`h2` refuses a list whose size reaches its setting,
/// so the setting is one more than the largest list accepted).
pub(crate) struct Builders {
    limits: ConnectionLimits,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Builders {
    pub(crate) fn new(limits: ConnectionLimits) -> Builders {
        let ConnectionLimits {
            max_header_bytes,
            max_headers,
            header_read_timeout,
            idle_timeout: _,
        } = limits;
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .max_header_size(max_header_bytes)
            .max_headers(max_headers)
            .header_read_timeout(header_read_timeout)
            .timer(hyper_util::rt::TokioTimer::new());
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        let list = u32::try_from(max_header_bytes.saturating_add(1)).unwrap_or(u32::MAX);
        http2
            .max_header_list_size(list)
            .keep_alive_interval(H2_KEEP_ALIVE)
            .keep_alive_timeout(H2_KEEP_ALIVE)
            .timer(hyper_util::rt::TokioTimer::new());
        Builders {
            limits,
            http1,
            http2,
        }
    }
}

/// The next connection, or `None` once told to stop. Accept errors (out of
/// file descriptors and the like) pause accepting, longer while they go
/// on, and are logged at most once a second (see `conns`).
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    errors: &mut AcceptErrors,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = stopped(stop) => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    errors.succeeded();
                    return Some(accepted);
                }
                Err(e) => {
                    let pause = errors.failed(&e);
                    tokio::time::sleep(pause).await;
                }
            },
        }
    }
}
