//! Deadlines: one absolute instant per request, enforced here, read below,
//! and propagated to the next hop.
//!
//! [`DeadlineLayer`] gives every request a [`Deadline`] in its extensions,
//! taken from, in order:
//!
//! 1. a `Deadline` already in the extensions (set by the caller, e.g. from
//!    its own incoming request with [`Deadline::from_headers`]);
//! 2. the tightest valid deadline header on the request (see [`header`]):
//!    `palisade-deadline-ms`, `grpc-timeout`, `x-envoy-expected-rq-timeout-ms`,
//!    which by default can only shorten the
//!    [`timeout`](DeadlineSettings::timeout), never extend it (see
//!    [`headers_may_extend`](DeadlineSettings::headers_may_extend) and
//!    [`header_cap`](DeadlineSettings::header_cap));
//! 3. the [`timeout`](DeadlineSettings::timeout) (15 s).
//!
//! A deadline that is already spent fails at once with
//! [`Error::DeadlineExceeded`] without calling the inner service. Otherwise
//! the whole call below — retries, backoff, balancer waits — is cut off at
//! the deadline with the same error. The deadline covers getting the
//! response head; streaming the body afterwards is not cut by it, but a
//! body that sends nothing for
//! [`body_idle_timeout`](DeadlineSettings::body_idle_timeout) (60 s) is,
//! by the client builder's [`WatchEos`](crate::classify::WatchEos).
//!
//! Outgoing requests carry what remains, minus a
//! [`reserve`](DeadlineSettings::reserve) for the trip back (5 ms), in
//! `palisade-deadline-ms`, and in `grpc-timeout` when the request is gRPC
//! (`content-type: application/grpc…`). The retry layer refreshes these
//! headers for every attempt, so each hop sees the time that is really left.
//! Envoy's header is removed from outgoing requests: it would be stale.
//!
//! A gRPC server that gives up at the deadline it was sent answers with
//! `DEADLINE_EXCEEDED` (grpc-go, grpc-java) or, as tonic's servers do,
//! `CANCELLED` ("Timeout expired"). Such an answer (a Trailers-Only
//! response arriving once the propagated deadline has passed) is the
//! deadline's doing, so the caller gets [`Error::DeadlineExceeded`], the
//! same as when the deadline fires here first.
//!
//! ```
//! use palisade::deadline::{DeadlineLayer, DeadlineSettings};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = service_fn(|req: http::Request<()>| async move {
//!     // What the next hop sees.
//!     let left = req.headers()["palisade-deadline-ms"].to_str().unwrap().to_owned();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(left))
//! });
//! let settings = DeadlineSettings {
//!     timeout: Some(Duration::from_secs(2)),
//!     ..DeadlineSettings::default()
//! };
//! let svc = DeadlineLayer::new("users", settings)?.layer(backend);
//! let rsp = svc.oneshot(http::Request::new(())).await?;
//! assert_eq!(rsp.body(), "1995"); // 2 s minus the 5 ms reserve
//! # Ok(())
//! # }
//! ```

pub use crate::facts::header;
pub use crate::facts::{Deadline, Propagate};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Request;
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::classify::{GrpcCode, is_grpc_content_type};
use crate::error::{BoxError, Error};
use crate::facts::stamp_headers;
use crate::refuse::{Pass, Refusable};
use crate::settings::{Problems, SettingsError};

/// The settings of a [`DeadlineLayer`]; `Default` is the library's default.
///
/// ```
/// use palisade::deadline::DeadlineSettings;
/// use std::time::Duration;
///
/// let settings = DeadlineSettings {
///     timeout: Some(Duration::from_secs(2)),
///     ..Default::default()
/// };
/// assert!(settings.validate().is_ok());
///
/// let settings = DeadlineSettings { timeout: Some(Duration::ZERO), ..settings };
/// assert_eq!(
///     settings.validate().unwrap_err().to_string(),
///     "timeout: must be greater than 0 (\"none\" for no default deadline)"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct DeadlineSettings {
    /// The timeout for requests that bring no deadline: greater than 0, or
    /// `None` for no deadline at all (`"none"` in a file). Default 15 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::opt_duration"))]
    pub timeout: Option<Duration>,
    /// The longest deadline a request header may ask for when
    /// [`headers_may_extend`](Self::headers_may_extend) is set, or when
    /// there is no [`timeout`](Self::timeout); longer ones are clamped to
    /// it. Greater than 0. Default 5 min.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub max_timeout: Duration,
    /// Subtracted from what remains before it is written to outgoing
    /// headers, for the response's trip back. Default 5 ms.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub reserve: Duration,
    /// Whether outgoing requests carry the remaining deadline. Default
    /// true.
    pub propagate: bool,
    /// Whether a deadline header may ask for more time than
    /// [`timeout`](Self::timeout) (up to [`max_timeout`](Self::max_timeout)).
    /// Default false: a header can only shorten the deadline, so a caller
    /// cannot hold a connection and an endpoint's slot for minutes by
    /// asking. Set it for callers trusted to know their own deadline.
    pub headers_may_extend: bool,
    /// How long a response body may send nothing once its head has
    /// arrived; a body silent that long is cut, counted as the endpoint's
    /// failure, and ends in an error for the reader
    /// ([`BodyStalled`](crate::classify::BodyStalled)). Time counts only
    /// while the reader waits for the body. gRPC responses are exempt:
    /// their streams may idle, and `grpc-timeout` bounds them. Greater
    /// than 0, or `None` (`"none"`) for bodies that may idle indefinitely
    /// (server-sent events without heartbeats, long polls). Default 60 s,
    /// nginx's `proxy_read_timeout`.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::opt_duration"))]
    pub body_idle_timeout: Option<Duration>,
}

impl Default for DeadlineSettings {
    fn default() -> Self {
        DeadlineSettings {
            timeout: Some(Duration::from_secs(15)),
            max_timeout: Duration::from_secs(300),
            reserve: Duration::from_millis(5),
            propagate: true,
            headers_may_extend: false,
            body_idle_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl DeadlineSettings {
    /// The longest deadline a request header may ask for: the
    /// [`timeout`](Self::timeout), unless headers may extend it (or there
    /// is none), then [`max_timeout`](Self::max_timeout).
    ///
    /// ```
    /// use palisade::deadline::DeadlineSettings;
    /// use std::time::Duration;
    ///
    /// let settings = DeadlineSettings::default();
    /// assert_eq!(settings.header_cap(), Duration::from_secs(15));
    /// let trusting = DeadlineSettings { headers_may_extend: true, ..settings };
    /// assert_eq!(trusting.header_cap(), Duration::from_secs(300));
    /// ```
    pub fn header_cap(&self) -> Duration {
        match self.timeout {
            Some(timeout) if !self.headers_may_extend => timeout.min(self.max_timeout),
            _ => self.max_timeout,
        }
    }

    /// Every problem with these settings, each at its field (`"timeout"`).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        if let Some(timeout) = self.timeout {
            p.positive("timeout", timeout, "\"none\" for no default deadline");
        }
        p.positive("max_timeout", self.max_timeout, "");
        if let Some(idle) = self.body_idle_timeout {
            p.positive(
                "body_idle_timeout",
                idle,
                "\"none\" for bodies that may idle indefinitely",
            );
        }
        p.finish()
    }
}

/// Gives requests a [`Deadline`] and enforces it; see the [module docs](self).
///
/// Built from [`DeadlineSettings`] by [`new`](DeadlineLayer::new); clones
/// share them.
#[derive(Debug, Clone)]
#[must_use]
pub struct DeadlineLayer {
    config: Arc<Config>,
}

#[derive(Debug)]
struct Config {
    service: Arc<str>,
    settings: DeadlineSettings,
}

impl DeadlineLayer {
    /// A deadline layer for the service called `service` (named in
    /// errors), or every problem with `settings`.
    pub fn new(
        service: impl Into<Arc<str>>,
        settings: DeadlineSettings,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(DeadlineLayer {
            config: Arc::new(Config {
                service: service.into(),
                settings,
            }),
        })
    }

    /// The settings the layer was built from.
    pub fn settings(&self) -> &DeadlineSettings {
        &self.config.settings
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = EnforceDeadline<S>;

    fn layer(&self, inner: S) -> EnforceDeadline<S> {
        EnforceDeadline {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct EnforceDeadline<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, B, RB> Service<Request<B>> for EnforceDeadline<S>
where
    S: Service<Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::inner(&self.config.service, None, e))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        let settings = &self.config.settings;
        let deadline = match parts.extensions.get::<Deadline>() {
            Some(d) => Some(*d),
            None => header::incoming_timeout(&parts.headers)
                .map(|t| t.min(settings.header_cap()))
                .or(settings.timeout)
                .map(Deadline::after),
        };
        let Some(deadline) = deadline else {
            let future = self.inner.call(Request::from_parts(parts, body));
            return Refusable::running(
                Cutoff::new(future, None, Duration::ZERO, start, &self.config.service),
                Pass,
            );
        };
        if deadline.is_expired() {
            return Refusable::refused(Error::DeadlineExceeded {
                service: self.config.service.clone(),
                elapsed: Duration::ZERO,
            });
        }
        parts.extensions.insert(deadline);
        // What the next hop was told: the deadline, less the reserve.
        let mut reserve = Duration::ZERO;
        if settings.propagate {
            reserve = settings.reserve;
            parts.extensions.insert(Propagate { reserve });
            stamp_headers(&mut parts);
        }
        let future = self.inner.call(Request::from_parts(parts, body));
        Refusable::running(
            Cutoff::new(future, Some(deadline), reserve, start, &self.config.service),
            Pass,
        )
    }
}

/// The response future of [`EnforceDeadline`]: refused at once when the
/// deadline is already spent, else the call raced against the deadline.
pub type ResponseFuture<F> = Refusable<Cutoff<F>, Pass>;

/// The inner call raced against the request's deadline: whichever ends
/// first decides ([`Error::DeadlineExceeded`] if the deadline does, or if
/// the next hop answers that the deadline it was sent has passed).
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct Cutoff<F> {
    #[pin]
    inner: F,
    #[pin]
    sleep: Option<Sleep>,
    /// When the next hop's deadline (ours, less the reserve) passes.
    next_hop: Option<Instant>,
    start: Instant,
    service: Arc<str>,
}

impl<F> Cutoff<F> {
    fn new(
        inner: F,
        deadline: Option<Deadline>,
        reserve: Duration,
        start: Instant,
        service: &Arc<str>,
    ) -> Self {
        Cutoff {
            inner,
            sleep: deadline.map(|d| tokio::time::sleep_until(d.instant())),
            next_hop: deadline.map(|d| d.instant().checked_sub(reserve).unwrap_or(d.instant())),
            start,
            service: service.clone(),
        }
    }
}

/// Whether `rsp` is a gRPC server giving up at its deadline: a
/// Trailers-Only answer with `DEADLINE_EXCEEDED`, or `CANCELLED` (what
/// tonic's servers send when their timeout expires).
fn is_grpc_deadline_answer<B>(rsp: &http::Response<B>) -> bool {
    is_grpc_content_type(rsp.headers())
        && matches!(
            GrpcCode::from_headers(rsp.headers()),
            Some(GrpcCode::DeadlineExceeded | GrpcCode::Cancelled)
        )
}

impl<F> fmt::Debug for Cutoff<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cutoff")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for Cutoff<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let exceeded = |service: &Arc<str>, start: &Instant| Error::DeadlineExceeded {
            service: service.clone(),
            elapsed: start.elapsed(),
        };
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(match result {
                Ok(rsp)
                    if this.next_hop.is_some_and(|at| Instant::now() >= at)
                        && is_grpc_deadline_answer(&rsp) =>
                {
                    Err(exceeded(this.service, this.start))
                }
                Ok(rsp) => Ok(rsp),
                Err(e) => Err(Error::inner(this.service, None, e)),
            });
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            return Poll::Ready(Err(exceeded(this.service, this.start)));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
