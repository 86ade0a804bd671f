//! In-process HTTP backends on 127.0.0.1, for `palisade demo`, the tests and
//! the examples.
//!
//! A [`Backend`] is a real hyper server (HTTP/1.1 and h2c) on a free
//! loopback port whose latency and failure rate can be changed while it runs,
//! and which counts the requests it answers. Every response names the
//! backend in the [`BACKEND_HEADER`] header. Dropping it (or calling
//! [`Backend::shutdown`]) closes the listener and every open connection, so
//! later connections are refused: a killed instance.
//!
//! ```
//! use palisade::demo::{Backend, Behavior};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let slow = Backend::spawn(Behavior::new().latency(Duration::from_millis(50))).await?;
//! println!("listening on {}", slow.addr());
//! assert_eq!(slow.requests(), 0);
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::RngExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How a [`Backend`] answers.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct Behavior {
    latency: Duration,
    jitter: f64,
    failure_rate: f64,
    fail_every: u64,
    tail_rate: f64,
    tail_latency: Duration,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior::new()
    }
}

impl Behavior {
    /// Answers `200 OK` at once.
    pub const fn new() -> Behavior {
        Behavior {
            latency: Duration::ZERO,
            jitter: 0.0,
            failure_rate: 0.0,
            fail_every: 0,
            tail_rate: 0.0,
            tail_latency: Duration::ZERO,
        }
    }

    /// Waits this long before answering (success or failure).
    pub const fn latency(mut self, latency: Duration) -> Behavior {
        self.latency = latency;
        self
    }

    /// Varies the latency uniformly by ± this fraction (clamped to 0..=1).
    pub fn jitter(mut self, fraction: f64) -> Behavior {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Answers `503 Service Unavailable` with this probability (clamped to
    /// 0..=1).
    pub fn failure_rate(mut self, rate: f64) -> Behavior {
        self.failure_rate = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Answers `503` to every `n`th request it receives (deterministic, unlike
    /// [`failure_rate`](Behavior::failure_rate)); 0 turns it off.
    pub const fn fail_every(mut self, n: u64) -> Behavior {
        self.fail_every = n;
        self
    }

    /// With probability `rate` (clamped to 0..=1), waits `latency` instead
    /// of the usual latency and jitter: a heavy tail, as in a fleet where a
    /// few requests hit a GC pause or a cold cache.
    pub fn tail(mut self, rate: f64, latency: Duration) -> Behavior {
        self.tail_rate = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.tail_latency = latency;
        self
    }

    fn delay(&self) -> Duration {
        if self.tail_rate > 0.0 && rand::rng().random::<f64>() < self.tail_rate {
            return self.tail_latency;
        }
        if self.jitter == 0.0 || self.latency.is_zero() {
            return self.latency;
        }
        let f = rand::rng().random_range(1.0 - self.jitter..=1.0 + self.jitter);
        self.latency.mul_f64(f)
    }
}

/// The response header that names the backend that answered.
pub const BACKEND_HEADER: &str = "x-palisade-backend";

#[derive(Debug)]
struct State {
    addr: http::HeaderValue,
    behavior: Mutex<Behavior>,
    requests: AtomicU64,
    failures: AtomicU64,
    last_request: Mutex<Option<http::request::Parts>>,
}

/// A hyper server on 127.0.0.1; see the [module docs](self).
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    /// Binds a free port on 127.0.0.1 and starts serving.
    pub async fn spawn(behavior: Behavior) -> io::Result<Backend> {
        Backend::spawn_on(
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            behavior,
        )
        .await
    }

    /// Binds `addr` (for example the address of a backend that was shut
    /// down: an instance coming back) and starts serving.
    pub async fn spawn_on(addr: SocketAddr, behavior: Behavior) -> io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            addr: http::HeaderValue::from_str(&addr.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            behavior: Mutex::new(behavior),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_request: Mutex::new(None),
        });
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(Backend {
            addr,
            state,
            server: Some(server),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered (or being answered) so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Of those, how many were answered with 503.
    pub fn failures(&self) -> u64 {
        self.state.failures.load(Ordering::Relaxed)
    }

    /// Changes how it answers from now on.
    pub fn set_behavior(&self, behavior: Behavior) {
        *self
            .state
            .behavior
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = behavior;
    }

    /// The method, URI, version and headers of the last request it received.
    pub fn last_request(&self) -> Option<http::request::Parts> {
        self.state
            .last_request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Closes the listener and every connection: new connections to the
    /// address are refused from now on.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Owning the connections here means aborting this task closes them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning on accept.
                        tracing::warn!(error = %e, "demo backend: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let nth = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let behavior = *state.behavior.lock().unwrap_or_else(|p| p.into_inner());
    let (parts, mut body) = req.into_parts();
    *state.last_request.lock().unwrap_or_else(|p| p.into_inner()) = Some(parts);
    // Read the request body to its end (discarding it), as a real handler
    // would before answering; one that breaks off gets no answer.
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return Ok(Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(Full::new(Bytes::from_static(b"request body broke off\n")))
                .unwrap_or_else(|_| Response::new(Full::default())));
        }
    }
    let delay = behavior.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let fail = (behavior.fail_every > 0 && nth.is_multiple_of(behavior.fail_every))
        || (behavior.failure_rate > 0.0 && rand::rng().random::<f64>() < behavior.failure_rate);
    let rsp = if fail {
        state.failures.fetch_add(1, Ordering::Relaxed);
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(BACKEND_HEADER, state.addr.clone())
            .body(Full::new(Bytes::from_static(b"unavailable\n")))
    } else {
        Response::builder()
            .header(BACKEND_HEADER, state.addr.clone())
            .body(Full::new(Bytes::from_static(b"ok\n")))
    };
    Ok(rsp.unwrap_or_else(|_| Response::new(Full::default())))
}
