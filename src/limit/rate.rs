//! The rate limit: `rate` requests per second with bursts of `burst`, shared
//! by every clone, optionally one bucket per key.
//!
//! See the [module docs](super) for where it sits in the stack.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderName;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::error::{BoxError, Error, Limit};
use crate::refuse::{NameErrors, Refusable};
use crate::settings::{Problems, SettingsError};

/// Default [`max_keys`](RateLimitSettings::max_keys) of a keyed limit.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// Keys longer than this many bytes are cut to it (at a character
/// boundary) before they are looked up or stored, so a key table holds at
/// most `max_keys × 256` bytes of keys.
pub const MAX_KEY_LEN: usize = 256;

/// The slowest rate a limit accepts (one request in about 11.6 days).
pub const MIN_RATE: f64 = 1e-6;
/// The fastest rate a limit accepts (one request a nanosecond).
pub const MAX_RATE: f64 = 1e9;

/// The settings of a [`RateLimitLayer`].
///
/// A rate limit has no sensible default rate, so `per_second` is required:
/// `Default` leaves it 0 (not set), which [`validate`](Self::validate)
/// refuses; every other field's `Default` is the library's default.
///
/// ```
/// use palisade::limit::RateLimitSettings;
///
/// let settings = RateLimitSettings { per_second: 500.0, ..Default::default() };
/// assert!(settings.validate().is_ok());
/// assert_eq!(
///     RateLimitSettings::default().validate().unwrap_err().to_string(),
///     "per_second: is required (0 is not a rate): a finite number of requests \
///      a second from 1e-6 to 1e9"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct RateLimitSettings {
    /// Sustained requests a second: finite, from [`MIN_RATE`] to
    /// [`MAX_RATE`]. Required: the default, 0, is "not set" and is refused.
    pub per_second: f64,
    /// Requests that may go at once after a quiet spell; at least 1.
    /// Default `None`: one second's worth, `per_second` rounded up, at
    /// least 1.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub burst: Option<u32>,
    /// Limit each value of this request header separately (one bucket per
    /// tenant, say); a valid header name. Default `None`: one bucket for
    /// every request.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub key_header: Option<String>,
    /// The most keys a keyed limit tracks; at least 1. A key whose bucket
    /// is full again is idle and may be forgotten to make room; a new key
    /// that finds the table full of busy keys is shed with [`Limit::Keys`].
    /// Default [`DEFAULT_MAX_KEYS`].
    pub max_keys: usize,
    /// What a keyed limit does with requests that have no key. An unkeyed
    /// limit ignores it: it limits every request. Default
    /// [`WithoutKey::Shared`].
    pub without_key: WithoutKey,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            per_second: 0.0,
            burst: None,
            key_header: None,
            max_keys: DEFAULT_MAX_KEYS,
            without_key: WithoutKey::default(),
        }
    }
}

impl RateLimitSettings {
    /// Every problem with these settings, each at its field
    /// (`"per_second"`).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        let per_second = self.per_second;
        if per_second == 0.0 {
            p.add(
                "per_second",
                format!(
                    "is required (0 is not a rate): a finite number of requests a second from {MIN_RATE:e} to {MAX_RATE:e}"
                ),
            );
        } else if !(per_second.is_finite() && (MIN_RATE..=MAX_RATE).contains(&per_second)) {
            p.add(
                "per_second",
                format!(
                    "must be a finite number of requests a second from {MIN_RATE:e} to {MAX_RATE:e}, got {per_second}"
                ),
            );
        }
        if let Some(burst) = self.burst {
            p.at_least("burst", burst, 1, "");
        }
        if let Err(why) = self.key() {
            p.add("key_header", why);
        }
        p.at_least("max_keys", self.max_keys, 1, "");
        p.finish()
    }

    /// The key `key_header` names, or why it names none.
    fn key(&self) -> Result<Option<HeaderKey>, String> {
        match &self.key_header {
            None => Ok(None),
            Some(name) => HeaderName::from_bytes(name.as_bytes())
                .map(|name| Some(HeaderKey(name)))
                .map_err(|_| format!("{name:?} is not a valid header name")),
        }
    }
}

/// Rate-limits requests, shared by every service made from it; see the
/// [module docs](super).
///
/// `K` picks each request's key: `Option<`[`HeaderKey`]`>` (what
/// [`new`](RateLimitLayer::new) makes from
/// [`key_header`](RateLimitSettings::key_header), or
/// [`keyed_by_header`](RateLimitLayer::keyed_by_header); `None`: one bucket
/// for all) or [`KeyFn`] ([`keyed`](RateLimitLayer::keyed)).
///
/// The buckets are created once, by [`new`](RateLimitLayer::new). Every
/// service the layer makes, every clone of the layer and every
/// [`handle`](RateLimitLayer::handle) shares them, and so does the layer
/// [`keyed`](RateLimitLayer::keyed) returns: clone one layer to share one
/// limit between clients.
///
/// ```
/// use palisade::limit::{RateLimitLayer, RateLimitSettings};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // 100 requests a second, bursts of 2, per `x-tenant`, at most 1000 tenants.
/// let settings = RateLimitSettings {
///     per_second: 100.0,
///     burst: Some(2),
///     key_header: Some("x-tenant".into()),
///     max_keys: 1000,
///     ..Default::default()
/// };
/// let layer = RateLimitLayer::new("users", settings)?;
/// let handle = layer.handle();
///
/// // Two clients, one limit: each is given a clone of the layer.
/// let backend = service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
/// let a = layer.clone().layer(backend.clone());
/// let b = layer.layer(backend);
/// let tenant = || http::Request::builder().header("x-tenant", "t1").body(()).unwrap();
/// a.clone().oneshot(tenant()).await?;
/// b.clone().oneshot(tenant()).await?;
/// let err = a.oneshot(tenant()).await.unwrap_err();
/// assert!(err.is_overloaded(), "t1's burst of 2 is spent, whichever client sent it");
/// assert_eq!((handle.admitted(), handle.rejected(), handle.keys()), (2, 1, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimitLayer<K = Option<HeaderKey>> {
    core: Arc<Core>,
    key: K,
    settings: RateLimitSettings,
}

/// What a keyed limit does with a request that has no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum WithoutKey {
    /// Requests without a key share one bucket of the same rate and burst
    /// (the default: a missing key never bypasses the limit).
    #[default]
    Shared,
    /// Requests without a key are not limited.
    Pass,
}

#[derive(Debug, Clone)]
struct Config {
    rate: f64,
    burst: u32,
    max_keys: usize,
    without_key: WithoutKey,
}

impl RateLimitLayer<Option<HeaderKey>> {
    /// A rate limit for the service called `service` (named in errors),
    /// keyed by `settings.key_header` when it is set, or every problem with
    /// `settings`.
    pub fn new(
        service: impl Into<Arc<str>>,
        settings: RateLimitSettings,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        // Validated: the header, if any, is a header name.
        let key = settings.key().ok().flatten();
        let rate = settings.per_second;
        let config = Config {
            rate,
            burst: settings.burst.unwrap_or_else(|| burst_for(rate)),
            max_keys: settings.max_keys,
            without_key: settings.without_key,
        };
        Ok(RateLimitLayer {
            core: Arc::new(Core::new(service.into(), config)),
            key,
            settings,
        })
    }
}

fn burst_for(rate: f64) -> u32 {
    // Saturating float-to-int cast: at most u32::MAX.
    (rate.ceil() as u32).max(1)
}

impl<K> RateLimitLayer<K> {
    /// The settings the limit was built from, with `key_header` as the
    /// layer now keys (`None` after [`keyed`](Self::keyed): the key is a
    /// function).
    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// One bucket per value of the header `name` (the first value, when
    /// it is UTF-8; other requests have no key). The buckets are kept.
    pub fn keyed_by_header(mut self, name: HeaderName) -> RateLimitLayer<Option<HeaderKey>> {
        self.settings.key_header = Some(name.as_str().to_owned());
        RateLimitLayer {
            core: self.core,
            key: Some(HeaderKey(name)),
            settings: self.settings,
        }
    }

    /// One bucket per key that `key` returns for a request (`None`: no
    /// key). The buckets are kept.
    ///
    /// ```
    /// use palisade::limit::{RateLimitLayer, RateLimitSettings};
    ///
    /// let settings = RateLimitSettings { per_second: 10.0, ..Default::default() };
    /// let layer = RateLimitLayer::new("users", settings)
    ///     .unwrap()
    ///     .keyed(|req: &http::Request<()>| req.uri().path().split('/').nth(1).map(str::to_owned));
    /// # let _ = layer;
    /// ```
    pub fn keyed<F>(mut self, key: F) -> RateLimitLayer<KeyFn<F>> {
        self.settings.key_header = None;
        RateLimitLayer {
            core: self.core,
            key: KeyFn(key),
            settings: self.settings,
        }
    }

    /// A handle on this layer's buckets.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            core: self.core.clone(),
        }
    }
}

impl<S, K: Clone> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;

    fn layer(&self, inner: S) -> RateLimit<S, K> {
        RateLimit {
            inner,
            core: self.core.clone(),
            key: self.key.clone(),
        }
    }
}

/// Picks the key a request is rate-limited under.
///
/// Implemented by `Option<`[`HeaderKey`]`>`, [`HeaderKey`] and [`KeyFn`];
/// implement it for a key that needs no allocation per request.
pub trait RateKey<Req>: Clone + Send + Sync + 'static {
    /// Whether the limit is keyed at all. Only an unset key (`None`) says
    /// no: then every request uses the shared bucket, whatever
    /// [`without_key`](RateLimitSettings::without_key) says.
    fn keyed(&self) -> bool {
        true
    }

    /// Calls `f` with the request's key, or `None` when it has none.
    fn with_key<T>(&self, req: &Req, f: impl FnOnce(Option<&str>) -> T) -> T;
}

/// Keys by the value of one request header; see
/// [`RateLimitLayer::keyed_by_header`].
#[derive(Debug, Clone)]
pub struct HeaderKey(HeaderName);

impl<B> RateKey<http::Request<B>> for HeaderKey {
    fn with_key<T>(&self, req: &http::Request<B>, f: impl FnOnce(Option<&str>) -> T) -> T {
        let value = req.headers().get(&self.0);
        f(value.and_then(|v| std::str::from_utf8(v.as_bytes()).ok()))
    }
}

/// A header key or none: what [`RateLimitLayer::new`] makes from
/// [`key_header`](RateLimitSettings::key_header), and what
/// [`Builder::rate_limit`](crate::stack::Builder::rate_limit) takes. `None`
/// limits every request with the shared bucket.
impl<B> RateKey<http::Request<B>> for Option<HeaderKey> {
    fn keyed(&self) -> bool {
        self.is_some()
    }

    fn with_key<T>(&self, req: &http::Request<B>, f: impl FnOnce(Option<&str>) -> T) -> T {
        match self {
            Some(key) => key.with_key(req, f),
            None => f(None),
        }
    }
}

/// Keys by a function of the request; see [`RateLimitLayer::keyed`].
#[derive(Clone)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn(..)")
    }
}

impl<F, Req, R> RateKey<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<R> + Clone + Send + Sync + 'static,
    R: AsRef<str>,
{
    fn with_key<T>(&self, req: &Req, f: impl FnOnce(Option<&str>) -> T) -> T {
        let key = (self.0)(req);
        f(key.as_ref().map(AsRef::as_ref))
    }
}

/// The service [`RateLimitLayer`] makes: calls its inner service while the
/// request's bucket has room, and sheds the request at once otherwise.
#[derive(Debug, Clone)]
pub struct RateLimit<S, K = Option<HeaderKey>> {
    inner: S,
    core: Arc<Core>,
    key: K,
}

impl<S, K> RateLimit<S, K> {
    /// A handle on this service's buckets (shared with the layer and every
    /// other service made from it).
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            core: self.core.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, K, Req> Service<Req> for RateLimit<S, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: RateKey<Req>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::inner(&self.core.service, None, e))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let now = self.core.nanos(Instant::now());
        let core = &self.core;
        let keyed = self.key.keyed();
        match self.key.with_key(&req, |key| core.acquire(key, keyed, now)) {
            Ok(()) => {
                Refusable::running(self.inner.call(req), NameErrors(self.core.service.clone()))
            }
            Err(limit) => Refusable::refused(self.core.shed(limit)),
        }
    }
}

/// The response future of [`RateLimit`]: the inner service's future, or
/// the error that shed the request.
pub type ResponseFuture<F> = Refusable<F, NameErrors>;

/// The generic cell rate algorithm on one bucket: `tat` is the theoretical
/// arrival time of the next request, in nanoseconds since the epoch. A
/// request at `now` is admitted when the bucket's new `tat` is at most
/// `tolerance` ahead of `now`. Returns the new `tat`, or how long until a
/// request would be admitted.
fn gcra(tat: u64, now: u64, interval: u64, tolerance: u64) -> Result<u64, u64> {
    let next = tat.max(now).saturating_add(interval);
    let ahead = next - now;
    if ahead > tolerance {
        Err(ahead - tolerance)
    } else {
        Ok(next)
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Each key's `tat`.
    buckets: HashMap<Arc<str>, u64>,
    /// No bucket is idle before this (a lower bound of the `tat`s), so a
    /// full table need not be swept before then.
    next_idle: u64,
}

/// One limit's buckets: shared by every service a layer makes, their clones
/// and every [`RateLimitHandle`].
struct Core {
    service: Arc<str>,
    config: Config,
    epoch: Instant,
    /// Nanoseconds between two admissions at the sustained rate.
    interval: u64,
    /// How far ahead of now a bucket's `tat` may be: `burst × interval`.
    tolerance: u64,
    /// The shared bucket's `tat`.
    shared: AtomicU64,
    /// Keyed buckets, behind a lock taken for one lookup (and, only when
    /// the table is full, one sweep).
    table: Mutex<Table>,
    admitted: AtomicU64,
    rejected: AtomicU64,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("service", &self.service)
            .field("config", &self.config)
            .field("keys", &self.lock().buckets.len())
            .finish()
    }
}

impl Core {
    fn new(service: Arc<str>, config: Config) -> Core {
        let interval = ((1e9 / config.rate).round() as u64).max(1);
        Core {
            service,
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst)),
            config,
            epoch: Instant::now(),
            // A `tat` at or before now is a full bucket.
            shared: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table is consistent between statements.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    fn limit(&self, key: Option<Arc<str>>, retry_in: u64) -> Limit {
        Limit::Rate {
            rate: self.config.rate,
            burst: self.config.burst,
            key,
            retry_in: Duration::from_nanos(retry_in),
        }
    }

    /// Admits a request with `key` (of a `keyed` limit) at `now`, or says
    /// which limit it hit.
    fn acquire(&self, key: Option<&str>, keyed: bool, now: u64) -> Result<(), Limit> {
        let result = match key {
            Some(key) => self.acquire_keyed(truncate(key), now),
            None if keyed && self.config.without_key == WithoutKey::Pass => Ok(()),
            None => self.acquire_shared(now),
        };
        if result.is_ok() {
            self.admitted.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn acquire_shared(&self, now: u64) -> Result<(), Limit> {
        let mut tat = self.shared.load(Ordering::Acquire);
        loop {
            let next = gcra(tat, now, self.interval, self.tolerance)
                .map_err(|retry_in| self.limit(None, retry_in))?;
            match self
                .shared
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    fn acquire_keyed(&self, key: &str, now: u64) -> Result<(), Limit> {
        let mut table = self.lock();
        if let Some(tat) = table.buckets.get_mut(key) {
            match gcra(*tat, now, self.interval, self.tolerance) {
                Ok(next) => {
                    *tat = next;
                    return Ok(());
                }
                Err(retry_in) => {
                    // Name the key with the table's copy: no allocation.
                    let key = table.buckets.get_key_value(key).map(|(k, _)| k.clone());
                    return Err(self.limit(key, retry_in));
                }
            }
        }
        if table.buckets.len() >= self.config.max_keys {
            if now < table.next_idle {
                return Err(Limit::Keys {
                    max: self.config.max_keys,
                });
            }
            // Forget the idle keys (full buckets); remember when the next
            // one may be idle.
            table.buckets.retain(|_, tat| *tat > now);
            table.next_idle = table.buckets.values().copied().min().unwrap_or(u64::MAX);
            if table.buckets.len() >= self.config.max_keys {
                return Err(Limit::Keys {
                    max: self.config.max_keys,
                });
            }
        }
        // A new key's bucket is full: the request is admitted.
        let next = now.saturating_add(self.interval);
        table.next_idle = table.next_idle.min(next);
        table.buckets.insert(Arc::from(key), next);
        Ok(())
    }

    fn shed(&self, limit: Limit) -> Error {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(service = %self.service, %limit, "request shed");
        Error::Overloaded {
            service: self.service.clone(),
            limit,
        }
    }

    /// Whole requests a bucket with `tat` admits at once at `now`.
    fn available(&self, tat: u64, now: u64) -> u32 {
        let ahead = tat.saturating_sub(now);
        let room = self.tolerance.saturating_sub(ahead) / self.interval;
        u32::try_from(room)
            .unwrap_or(u32::MAX)
            .min(self.config.burst)
    }
}

/// `key` cut to at most [`MAX_KEY_LEN`] bytes, at a character boundary.
fn truncate(key: &str) -> &str {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let mut end = MAX_KEY_LEN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// A cheap, cloneable view of one rate limit's buckets, for snapshots and
/// metrics.
///
/// ```
/// use palisade::limit::{RateLimitLayer, RateLimitSettings};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let settings = RateLimitSettings {
///     per_second: 50.0,
///     burst: Some(10),
///     ..Default::default()
/// };
/// let handle = RateLimitLayer::new("users", settings).unwrap().handle();
/// assert_eq!(handle.available(), 10);
/// assert_eq!((handle.rate(), handle.keys()), (50.0, 0));
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimitHandle {
    core: Arc<Core>,
}

impl RateLimitHandle {
    /// Requests the shared bucket would admit at once now.
    pub fn available(&self) -> u32 {
        let now = self.core.nanos(Instant::now());
        self.core
            .available(self.core.shared.load(Ordering::Acquire), now)
    }

    /// Requests `key`'s bucket would admit at once now (a key not tracked
    /// has a full bucket).
    pub fn available_for(&self, key: &str) -> u32 {
        let now = self.core.nanos(Instant::now());
        let tat = self
            .core
            .lock()
            .buckets
            .get(truncate(key))
            .copied()
            .unwrap_or(0);
        self.core.available(tat, now)
    }

    /// Keys tracked now (idle ones included until a full table sweeps
    /// them).
    pub fn keys(&self) -> usize {
        self.core.lock().buckets.len()
    }

    /// The sustained rate, in requests a second.
    pub fn rate(&self) -> f64 {
        self.core.config.rate
    }

    /// The burst size.
    pub fn burst(&self) -> u32 {
        self.core.config.burst
    }

    /// The most keys tracked.
    pub fn max_keys(&self) -> usize {
        self.core.config.max_keys
    }

    /// Requests admitted so far. Never decreases.
    pub fn admitted(&self) -> u64 {
        self.core.admitted.load(Ordering::Relaxed)
    }

    /// Requests shed so far ([`Limit::Rate`] and [`Limit::Keys`]). Never
    /// decreases.
    pub fn rejected(&self) -> u64 {
        self.core.rejected.load(Ordering::Relaxed)
    }

    /// The name of the service the limit guards.
    pub fn service(&self) -> &str {
        &self.core.service
    }
}

/// A rate limit's state in a [`Snapshot`](crate::Snapshot).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Requests admitted.
    pub admitted: u64,
    /// Requests shed.
    pub rejected: u64,
    /// Keys tracked now (0 for an unkeyed limit).
    pub keys: usize,
}

impl RateLimitHandle {
    /// The limit's state now, as plain data.
    pub fn stats(&self) -> RateLimitStats {
        RateLimitStats {
            admitted: self.admitted(),
            rejected: self.rejected(),
            keys: self.keys(),
        }
    }
}

impl fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_the_burst_then_one_an_interval() {
        let (interval, burst) = (100, 3);
        let tolerance = interval * burst;
        let mut tat = 0;
        for _ in 0..burst {
            tat = gcra(tat, 0, interval, tolerance).unwrap();
        }
        assert_eq!(gcra(tat, 0, interval, tolerance), Err(100));
        assert_eq!(gcra(tat, 99, interval, tolerance), Err(1));
        assert!(gcra(tat, 100, interval, tolerance).is_ok());
    }

    #[test]
    fn long_keys_are_cut_at_a_char_boundary() {
        let key = "é".repeat(200); // 400 bytes
        let cut = truncate(&key);
        assert!(cut.len() <= MAX_KEY_LEN && cut.len() >= MAX_KEY_LEN - 1);
        assert!(key.starts_with(cut));
        assert_eq!(truncate("short"), "short");
    }
}
