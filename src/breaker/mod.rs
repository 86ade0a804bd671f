//! Circuit breaking: a service-level breaker (Hystrix semantics).
//!
//! [`BreakerLayer`] wraps any tower `Service` in a [`Breaker`] that stops
//! calling it when too many recent calls failed, and fails those calls at
//! once with [`Error::CircuitOpen`] instead — shedding load from a service
//! that is down, and giving the caller a fast, typed answer.
//!
//! The breaker has three states:
//!
//! - **Closed**: requests go through. Each outcome is counted over a rolling
//!   [`window`](BreakerSettings::window) (10 s, expiring a tenth at a time): a
//!   response is a failure when the [`Classify`] says so (for HTTP: 5xx and
//!   429), and every `Err` is a failure. Once the window holds at least
//!   [`volume_threshold`](BreakerSettings::volume_threshold) outcomes (20) and
//!   failures make up at least
//!   [`error_threshold`](BreakerSettings::error_threshold) of them (0.5), the
//!   breaker **opens**. The check runs as each failure is counted, so only
//!   a failure trips the breaker: a window of only successes never opens
//!   it, whatever the thresholds.
//! - **Open**: requests fail at once with [`Error::CircuitOpen`], whose
//!   `retry_in` says when the next probe may go; the inner service is not
//!   called. After the [`sleep_window`](BreakerSettings::sleep_window) (5 s)
//!   the breaker is **half-open**.
//! - **Half-open**: up to
//!   [`half_open_probes`](BreakerSettings::half_open_probes) (1) probe
//!   requests go through at a time; others fail with `CircuitOpen` (retry in
//!   100 ms). The first probe to finish decides: a success **closes** the
//!   breaker with empty counts, a failure **reopens** it for another sleep
//!   window. A probe that is cancelled (its response future dropped) decides
//!   nothing and frees its slot for the next request.
//!
//! A request admitted while closed whose outcome arrives after the breaker
//! has moved on is not counted, and a cancelled request counts as nothing,
//! except one cut off by its deadline (its response future dropped once the
//! request's [`Deadline`](crate::deadline::Deadline) has passed): the
//! service kept it waiting too long, which is how a hung service looks, so
//! that is a failure (a probe's too).
//! Transitions are logged with `tracing` at `info` (open, close, reopen),
//! naming the service, the error rate and the volume. A breaker whose
//! settings say [`enabled = false`](BreakerSettings::enabled) counts nothing
//! and never opens.
//!
//! One layer value is one breaker, created once by [`BreakerLayer::new`]:
//! every service made from it (and from its clones), and every clone of
//! those, shares its state, which a [`BreakerHandle`] reports. While
//! closed, a request costs one atomic load and its outcome a few atomic
//! adds; only transitions and half-open admissions take a short lock. All
//! timing uses Tokio's clock.
//!
//! ```
//! use palisade::breaker::{BreakerLayer, BreakerSettings, BreakerState};
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let healthy = Arc::new(AtomicBool::new(false));
//! let backend = service_fn({
//!     let healthy = healthy.clone();
//!     move |_req: http::Request<()>| {
//!         let status = if healthy.load(Ordering::Relaxed) { 200 } else { 503 };
//!         async move {
//!             Ok::<_, std::convert::Infallible>(
//!                 http::Response::builder().status(status).body(()).unwrap(),
//!             )
//!         }
//!     }
//! });
//! let settings = BreakerSettings {
//!     volume_threshold: 5,
//!     ..BreakerSettings::default()
//! };
//! let layer = BreakerLayer::new("users", settings)?;
//! let breaker = layer.handle();
//! let svc = layer.layer(backend);
//!
//! // Five 503s in a row: the error rate is 100 % over the volume threshold.
//! for _ in 0..5 {
//!     let rsp = svc.clone().oneshot(http::Request::new(())).await?;
//!     assert_eq!(rsp.status(), 503);
//! }
//! assert!(matches!(breaker.state(), BreakerState::Open { .. }));
//!
//! // Open: fail fast, without calling the backend.
//! let err = svc.clone().oneshot(http::Request::new(())).await.unwrap_err();
//! assert!(err.is_circuit_open());
//! assert_eq!(err.to_string(), "service \"users\": circuit breaker open; next probe in 5s");
//!
//! // After the sleep window a probe goes through; its success closes the breaker.
//! healthy.store(true, Ordering::Relaxed);
//! tokio::time::advance(Duration::from_secs(5)).await;
//! let rsp = svc.clone().oneshot(http::Request::new(())).await?;
//! assert_eq!(rsp.status(), 200);
//! assert_eq!(breaker.state(), BreakerState::Closed);
//! # Ok(())
//! # }
//! ```

mod state;

pub use state::{BreakerHandle, BreakerState};

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use crate::classify::{Classify, HttpClassify, ResponseEos};
use crate::error::{BoxError, Error};
use crate::facts::Hints;
use crate::refuse::{Finish, Refusable};
use crate::settings::{Problems, SettingsError};
use state::{Core, Permit};

/// The settings of a [`BreakerLayer`]; `Default` is the library's default
/// (Hystrix's: 50 % errors over 10 s, at least 20 requests, open for 5 s).
///
/// ```
/// use palisade::breaker::BreakerSettings;
/// use std::time::Duration;
///
/// let settings = BreakerSettings {
///     sleep_window: Duration::from_secs(1),
///     ..Default::default()
/// };
/// assert!(settings.validate().is_ok());
///
/// let settings = BreakerSettings { error_threshold: 0.0, ..settings };
/// assert_eq!(
///     settings.validate().unwrap_err().to_string(),
///     "error_threshold: must be greater than 0 and at most 1, got 0"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct BreakerSettings {
    /// Whether the breaker is on; when off it counts nothing and never
    /// opens. Default true.
    pub enabled: bool,
    /// The rolling window outcomes are counted over (counts expire a tenth
    /// of it at a time); greater than 0. Default 10 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub window: Duration,
    /// Outcomes the window must hold before the breaker may open, so that a
    /// few failures in a quiet period do not trip it. Default 20.
    pub volume_threshold: u32,
    /// The share of failures in the window (greater than 0, at most 1) at or
    /// above which the breaker opens; at least one failure is always
    /// needed. Default 0.5.
    pub error_threshold: f64,
    /// How long the breaker stays open before it lets a probe through.
    /// Default 5 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub sleep_window: Duration,
    /// Probe requests in flight at once while half-open; at least 1.
    /// Default 1.
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            enabled: true,
            window: Duration::from_secs(10),
            volume_threshold: 20,
            error_threshold: 0.5,
            sleep_window: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

impl BreakerSettings {
    /// Every problem with these settings, each at its field
    /// (`"error_threshold"`).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        p.positive("window", self.window, "");
        let t = self.error_threshold;
        if !(t.is_finite() && t > 0.0 && t <= 1.0) {
            p.add(
                "error_threshold",
                format!("must be greater than 0 and at most 1, got {t}"),
            );
        }
        p.at_least("half_open_probes", self.half_open_probes, 1, "");
        p.finish()
    }
}

/// Wraps services in one shared circuit breaker; see the [module docs](self).
///
/// The breaker is created once, by [`new`](BreakerLayer::new). Every
/// service the layer makes, every clone of the layer (whatever classifier
/// it is given) and every [`handle`](BreakerLayer::handle) shares it, so a
/// handle taken at any time reports the breaker the services use.
///
/// ```
/// use palisade::breaker::{BreakerLayer, BreakerSettings, BreakerState};
/// use std::time::Duration;
///
/// let settings = BreakerSettings {
///     window: Duration::from_secs(30),
///     volume_threshold: 50,
///     error_threshold: 0.25,
///     sleep_window: Duration::from_secs(10),
///     half_open_probes: 3,
///     ..BreakerSettings::default()
/// };
/// let layer = BreakerLayer::new("users", settings)?;
/// assert_eq!(layer.settings().volume_threshold, 50);
/// assert_eq!(layer.handle().state(), BreakerState::Closed);
/// # Ok::<(), palisade::settings::SettingsError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct BreakerLayer<C = HttpClassify> {
    core: Arc<Core>,
    classify: C,
}

impl BreakerLayer<HttpClassify> {
    /// A breaker for the service called `service` (named in errors and
    /// logs) with the default HTTP classifier, or every problem with
    /// `settings`.
    pub fn new(
        service: impl Into<Arc<str>>,
        settings: BreakerSettings,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(BreakerLayer {
            core: Arc::new(Core::new(service.into(), settings)),
            classify: HttpClassify::default(),
        })
    }
}

impl<C> BreakerLayer<C> {
    /// The settings the breaker was built from.
    pub fn settings(&self) -> &BreakerSettings {
        &self.core.settings
    }

    /// Replaces the classifier that decides which responses are failures
    /// (it should be the one the rest of the stack uses). The breaker is
    /// kept.
    pub fn classify<C2>(self, classify: C2) -> BreakerLayer<C2> {
        BreakerLayer {
            core: self.core,
            classify,
        }
    }

    /// A handle on this layer's breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            core: self.core.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;

    fn layer(&self, inner: S) -> Breaker<S, C> {
        Breaker {
            inner,
            core: self.core.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service [`BreakerLayer`] makes: calls its inner service unless the
/// breaker is open.
#[derive(Debug, Clone)]
pub struct Breaker<S, C> {
    inner: S,
    core: Arc<Core>,
    classify: C,
}

impl<S, C> Breaker<S, C> {
    /// A handle on this service's breaker (shared with the layer and every
    /// other service made from it).
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            core: self.core.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, Req> Service<Req> for Breaker<S, C>
where
    Req: Hints,
    S: Service<Req>,
    S::Response: ResponseEos,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::inner(&self.core.service, None, e))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.core.admit() {
            Ok(permit) => {
                let permit = permit.until(req.deadline().map(|d| d.instant()));
                Refusable::running(
                    self.inner.call(req),
                    RecordOutcome {
                        permit,
                        classify: self.classify.clone(),
                    },
                )
            }
            Err(retry_in) => Refusable::refused(Error::CircuitOpen {
                service: self.core.service.clone(),
                retry_in,
            }),
        }
    }
}

/// The response future of [`Breaker`].
///
/// It holds the request's admission: dropping it before it completes
/// cancels the request without counting an outcome, and hands a half-open
/// probe's slot back; unless the request's deadline has passed, in which
/// case the call was cut off waiting on the service, and counts as a
/// failure.
pub type ResponseFuture<F, C> = Refusable<F, RecordOutcome<C>>;

/// The [`Finish`] step of [`Breaker`]: records the outcome against the
/// admission it holds.
pub struct RecordOutcome<C> {
    permit: Permit,
    classify: C,
}

impl<C> std::fmt::Debug for RecordOutcome<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordOutcome")
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

impl<C, T, E> Finish<Result<T, E>> for RecordOutcome<C>
where
    E: Into<BoxError>,
    C: Classify<T>,
    T: ResponseEos,
{
    type Response = T;

    fn finish(self, output: Result<T, E>) -> Result<T, Error> {
        let RecordOutcome { permit, classify } = self;
        match output {
            Ok(rsp) => {
                let head = classify.classify_response(&rsp);
                match rsp.eos() {
                    // The verdict (and a half-open probe's slot) waits for
                    // the end of the stream.
                    Some(eos) => eos.on_end(move |end| {
                        let class = classify.classify_end(head, end);
                        if class.judges_endpoint() {
                            permit.record(class.is_failure());
                        }
                    }),
                    None => permit.record(head.is_failure()),
                }
                Ok(rsp)
            }
            Err(e) => {
                // The caller's own failure, or ours, says nothing about the
                // service: the admission is handed back uncounted.
                let error = Error::inner(permit.service(), None, e);
                if classify.classify_error(&error).judges_endpoint() {
                    permit.record(true);
                }
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests;
