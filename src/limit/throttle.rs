//! Adaptive client throttling (Google SRE book, "Handling Overload"): reject
//! locally, in proportion to how much the backend has been refusing.
//!
//! See the [module docs](super) for the rule and where it sits in the stack.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use crate::classify::{Class, Classify, HttpClassify, Outcome, ResponseEos, Retry};
use crate::error::{BoxError, Error, Limit};
use crate::refuse::{Finish, Refusable};
use crate::rolling::RollingCount;
use crate::settings::{Problems, SettingsError};

/// Default [`k`](ThrottleSettings::k): the backend may be offered about
/// this many times what it accepts.
pub const DEFAULT_K: f64 = 2.0;
/// Default [`window`](ThrottleSettings::window) requests and accepts are
/// counted over.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(120);

/// The settings of a [`ThrottleLayer`]; `Default` is the library's
/// default.
///
/// ```
/// use palisade::limit::ThrottleSettings;
///
/// let settings = ThrottleSettings { k: 0.5, ..ThrottleSettings::default() };
/// assert_eq!(
///     settings.validate().unwrap_err().to_string(),
///     "k: must be a finite number at least 1 (the backend is offered at least \
///      what it accepts), got 0.5"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct ThrottleSettings {
    /// The multiplier K: requests are rejected locally once they exceed K
    /// times the accepted ones. Lower is more aggressive; the book suggests
    /// 1.1 to 2. Finite, at least 1 (the backend is always offered at least
    /// what it accepts). Default [`DEFAULT_K`].
    pub k: f64,
    /// The window requests and accepts are counted over (counts expire a
    /// tenth of it at a time); greater than 0. Default [`DEFAULT_WINDOW`].
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub window: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            k: DEFAULT_K,
            window: DEFAULT_WINDOW,
        }
    }
}

impl ThrottleSettings {
    /// Every problem with these settings, each at its field (`"k"`).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        if !(self.k.is_finite() && self.k >= 1.0) {
            p.add(
                "k",
                format!(
                    "must be a finite number at least 1 (the backend is offered at least what it accepts), got {}",
                    self.k
                ),
            );
        }
        p.positive("window", self.window, "");
        p.finish()
    }
}

/// Adaptive client throttling shared by every service made from it; see the
/// [module docs](super).
///
/// The counts are created once, by [`new`](ThrottleLayer::new). Every
/// service the layer makes, every clone of the layer and every
/// [`handle`](ThrottleLayer::handle) shares them, whatever classifier a
/// clone is given: clone one layer to throttle several clients of one
/// backend together.
///
/// ```
/// use palisade::limit::{ThrottleLayer, ThrottleSettings};
/// use std::time::Duration;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let settings = ThrottleSettings {
///     k: 1.5,
///     window: Duration::from_secs(60),
/// };
/// let layer = ThrottleLayer::new("users", settings)?;
/// let handle = layer.handle();
///
/// // Another client's clone of the layer counts into the same window.
/// let backend = service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
/// let other = layer.clone().layer(backend);
/// other.oneshot(http::Request::new(())).await?;
/// assert_eq!((handle.requests(), handle.accepts()), (1, 1));
/// assert_eq!(handle.k(), 1.5);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ThrottleLayer<C = HttpClassify> {
    core: Arc<Core>,
    classify: C,
}

impl ThrottleLayer<HttpClassify> {
    /// Adaptive throttling for the service called `service` (named in
    /// errors) with the default HTTP classifier and a random seed, or every
    /// problem with `settings`.
    pub fn new(
        service: impl Into<Arc<str>>,
        settings: ThrottleSettings,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(ThrottleLayer {
            core: Arc::new(Core::new(service.into(), settings)),
            classify: HttpClassify::default(),
        })
    }
}

impl<C> ThrottleLayer<C> {
    /// The settings the throttle was built from.
    pub fn settings(&self) -> &ThrottleSettings {
        &self.core.config
    }

    /// Seeds the random draws that decide rejections, so that a test (or a
    /// simulation) sees the same rejections every run. Default: a random
    /// seed. The draws are shared like the counts: this reseeds them for
    /// every clone.
    pub fn seed(self, seed: u64) -> Self {
        self.core.rng.store(seed, Ordering::Relaxed);
        self
    }

    /// Replaces the classifier that decides which outcomes the backend
    /// accepted (it should be the one the rest of the stack uses). The
    /// counts are kept.
    pub fn classify<C2>(self, classify: C2) -> ThrottleLayer<C2> {
        ThrottleLayer {
            core: self.core,
            classify,
        }
    }

    /// A handle on this layer's counts.
    pub fn handle(&self) -> ThrottleHandle {
        ThrottleHandle {
            core: self.core.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for ThrottleLayer<C> {
    type Service = Throttle<S, C>;

    fn layer(&self, inner: S) -> Throttle<S, C> {
        Throttle {
            inner,
            core: self.core.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service [`ThrottleLayer`] makes: rejects a share of requests locally
/// while the backend refuses more than it accepts.
#[derive(Debug, Clone)]
pub struct Throttle<S, C = HttpClassify> {
    inner: S,
    core: Arc<Core>,
    classify: C,
}

impl<S, C> Throttle<S, C> {
    /// A handle on this service's counts (shared with the layer and every
    /// other service made from it).
    pub fn handle(&self) -> ThrottleHandle {
        ThrottleHandle {
            core: self.core.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, Req> Service<Req> for Throttle<S, C>
where
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
        let now = Instant::now();
        let probability = self.core.probability(now);
        // Local rejections count as requests too (as in the book): while
        // the backend accepts nothing, the probability keeps rising.
        self.core.requests.add(now, 1);
        if probability > 0.0 && self.core.draw() < probability {
            self.core.rejected.fetch_add(1, Ordering::Relaxed);
            let limit = Limit::Throttled { probability };
            tracing::debug!(service = %self.core.service, %limit, "request shed");
            return Refusable::refused(Error::Overloaded {
                service: self.core.service.clone(),
                limit,
            });
        }
        Refusable::running(
            self.inner.call(req),
            CountAccepts {
                core: self.core.clone(),
                classify: self.classify.clone(),
            },
        )
    }
}

/// Whether the backend accepted a request, by its class: it did unless it
/// refused for load (`Outcome::Overloaded`: 429) or failed in a way the
/// classifier calls retryable (the backend did not do the work: 502, 503,
/// 504, transport errors). A failure that is not retryable (500, 501) was
/// accepted: the backend took the request and answered it.
pub(crate) fn accepted(class: &Class) -> bool {
    match class.outcome() {
        // Not the backend's answer at all: neither for nor against it.
        Outcome::Success | Outcome::Caller | Outcome::Local => true,
        Outcome::Overloaded => false,
        Outcome::Failure => class.retry() == Retry::Never,
    }
}

/// The response future of [`Throttle`].
///
/// Its outcome is counted as accepted or not when it completes; dropped
/// before that, the request stays counted and not accepted.
pub type ResponseFuture<F, C> = Refusable<F, CountAccepts<C>>;

/// The [`Finish`] step of [`Throttle`]: counts an accepted outcome.
pub struct CountAccepts<C> {
    core: Arc<Core>,
    classify: C,
}

impl<C> fmt::Debug for CountAccepts<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountAccepts").finish_non_exhaustive()
    }
}

impl<C, T, E> Finish<Result<T, E>> for CountAccepts<C>
where
    E: Into<BoxError>,
    C: Classify<T>,
    T: ResponseEos,
{
    type Response = T;

    fn finish(self, output: Result<T, E>) -> Result<T, Error> {
        match output {
            Ok(rsp) => {
                let head = self.classify.classify_response(&rsp);
                match rsp.eos() {
                    // Accepted or not is the end of the stream's verdict.
                    Some(eos) => {
                        let CountAccepts { core, classify } = self;
                        eos.on_end(move |end| {
                            core.count(&classify.classify_end(head, end));
                        });
                    }
                    None => self.core.count(&head),
                }
                Ok(rsp)
            }
            Err(e) => {
                let e: BoxError = e.into();
                self.core.count(&self.classify.classify_error(&*e));
                Err(Error::inner(&self.core.service, None, e))
            }
        }
    }
}

/// One throttle's counts: shared by every service a layer makes, their
/// clones, their response futures and every [`ThrottleHandle`].
struct Core {
    service: Arc<str>,
    config: ThrottleSettings,
    requests: RollingCount,
    accepts: RollingCount,
    /// A SplitMix64 counter: each draw advances it by one step, lock-free.
    rng: AtomicU64,
    rejected: AtomicU64,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = Instant::now();
        f.debug_struct("Throttle")
            .field("service", &self.service)
            .field("requests", &self.requests.sum(now))
            .field("accepts", &self.accepts.sum(now))
            .field("probability", &self.probability(now))
            .field("config", &self.config)
            .finish()
    }
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl Core {
    /// Counts one outcome as accepted, or not.
    fn count(&self, class: &Class) {
        if accepted(class) {
            self.accepts.add(Instant::now(), 1);
        }
    }

    fn new(service: Arc<str>, config: ThrottleSettings) -> Core {
        Core {
            service,
            requests: RollingCount::new(config.window),
            accepts: RollingCount::new(config.window),
            rng: AtomicU64::new(rand::random()),
            rejected: AtomicU64::new(0),
            config,
        }
    }

    /// max(0, (requests − K·accepts) / (requests + 1)) over the window.
    fn probability(&self, now: Instant) -> f64 {
        let requests = self.requests.sum(now).max(0) as f64;
        let accepts = self.accepts.sum(now).max(0) as f64;
        ((requests - self.config.k * accepts) / (requests + 1.0)).clamp(0.0, 1.0)
    }

    /// A uniform draw in `[0, 1)`.
    fn draw(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A cheap, cloneable view of one throttle's counts, for snapshots and
/// metrics.
///
/// ```
/// use palisade::limit::{ThrottleLayer, ThrottleSettings};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let handle = ThrottleLayer::new("users", ThrottleSettings::default())
///     .unwrap()
///     .handle();
/// assert_eq!(handle.probability(), 0.0);
/// assert_eq!((handle.requests(), handle.accepts()), (0, 0));
/// # }
/// ```
#[derive(Clone)]
pub struct ThrottleHandle {
    core: Arc<Core>,
}

impl ThrottleHandle {
    /// The probability a request is rejected locally now.
    pub fn probability(&self) -> f64 {
        self.core.probability(Instant::now())
    }

    /// Requests counted in the window now (local rejections included).
    pub fn requests(&self) -> u64 {
        self.core.requests.sum(Instant::now()).max(0) as u64
    }

    /// Requests the backend accepted in the window now.
    pub fn accepts(&self) -> u64 {
        self.core.accepts.sum(Instant::now()).max(0) as u64
    }

    /// Requests rejected locally so far. Never decreases.
    pub fn rejected(&self) -> u64 {
        self.core.rejected.load(Ordering::Relaxed)
    }

    /// The multiplier K.
    pub fn k(&self) -> f64 {
        self.core.config.k
    }

    /// The window requests and accepts are counted over.
    pub fn window(&self) -> Duration {
        self.core.config.window
    }

    /// The name of the service the throttle guards.
    pub fn service(&self) -> &str {
        &self.core.service
    }
}

/// Adaptive throttling's state in a [`Snapshot`](crate::Snapshot).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ThrottleStats {
    /// The probability a request is rejected locally now.
    pub probability: f64,
    /// Requests in the window.
    pub requests: u64,
    /// Of those, accepted by the service.
    pub accepts: u64,
    /// Requests rejected locally.
    pub rejected: u64,
}

impl ThrottleHandle {
    /// Throttling's state now, as plain data.
    pub fn stats(&self) -> ThrottleStats {
        ThrottleStats {
            probability: self.probability(),
            requests: self.requests(),
            accepts: self.accepts(),
            rejected: self.rejected(),
        }
    }
}

impl fmt::Debug for ThrottleHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}
