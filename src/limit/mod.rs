//! Limits: a concurrency limit (bulkhead), a rate limit, and adaptive client
//! throttling. Each sheds what it cannot take with
//! [`Error::Overloaded`](crate::Error::Overloaded), naming the service and
//! the [`Limit`](crate::Limit) that was hit; none queues without bound.
//!
//! | layer | sheds when | error |
//! |---|---|---|
//! | [`ConcurrencyLimitLayer`] | `max` requests are in flight and `queue` more wait | [`Limit::Concurrency`](crate::Limit::Concurrency), at once |
//! | | a request waited `max_wait`, or until its deadline | [`Limit::QueueTimeout`](crate::Limit::QueueTimeout) |
//! | [`RateLimitLayer`] | its bucket (shared, or its key's) is empty | [`Limit::Rate`](crate::Limit::Rate) with `retry_in`, at once |
//! | | a new key finds the key table full of busy keys | [`Limit::Keys`](crate::Limit::Keys), at once |
//! | [`ThrottleLayer`] | a draw falls under max(0, (requests − K·accepts) / (requests + 1)) | [`Limit::Throttled`](crate::Limit::Throttled), at once |
//!
//! Each layer is built from its settings ([`ConcurrencySettings`],
//! [`RateLimitSettings`], [`ThrottleSettings`]: plain structs whose
//! `Default` is the library's default and whose `validate()` names every bad
//! field), and its `new` refuses bad settings rather than adjusting them.
//! `new` creates the layer's one shared state behind an `Arc`: every service
//! the layer makes, every clone of the layer and of those services shares
//! it; no `Buffer` task is needed.
//! Each has a handle ([`ConcurrencyHandle`], [`RateLimitHandle`],
//! [`ThrottleHandle`]) that reads the live state for snapshots and metrics.
//! All timing uses Tokio's clock, so tests on paused time are exact.
//!
//! # Where they go
//!
//! Outside in: deadline → **rate limit → concurrency limit → throttle** →
//! service breaker → retry → balancer.
//!
//! - Below the deadline layer, so a queued request never waits past its
//!   deadline, and the deadline's cut (dropping the future) releases its
//!   place in the queue or its slot.
//! - Rate limit first: it only reads a clock and holds nothing, so a request
//!   it would refuse never takes a queue place or a slot.
//! - The throttle inside the concurrency limit, so it counts only requests
//!   that really go on to the backend: a request shed by the bulkhead is not
//!   a request the backend refused.
//! - Above the breaker and retries, so each sees one logical request: the
//!   throttle's "accepted" is the outcome after retries, and a retry never
//!   takes a second slot or token.
//!
//! ```
//! use palisade::deadline::DeadlineLayer;
//! use palisade::limit::{
//!     ConcurrencyLimitLayer, ConcurrencySettings, RateLimitLayer, RateLimitSettings,
//!     ThrottleLayer, ThrottleSettings,
//! };
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), palisade::settings::SettingsError> {
//! let backend = service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! });
//! let rate = RateLimitLayer::new(
//!     "users",
//!     RateLimitSettings { per_second: 100.0, burst: Some(10), ..Default::default() },
//! )?;
//! let bulkhead = ConcurrencyLimitLayer::new(
//!     "users",
//!     ConcurrencySettings { max: 32, queue: 8, ..Default::default() },
//! )?;
//! let throttle = ThrottleLayer::new("users", ThrottleSettings::default())?;
//! let svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new("users", Default::default()).unwrap())
//!     .layer(rate.clone())
//!     .layer(bulkhead.clone())
//!     .layer(throttle.clone())
//!     .service(backend);
//!
//! // A burst of ten, then the bucket is empty.
//! for _ in 0..10 {
//!     svc.clone().oneshot(http::Request::new(())).await.unwrap();
//! }
//! let err = svc.clone().oneshot(http::Request::new(())).await.unwrap_err();
//! assert!(err.is_overloaded());
//! assert_eq!(
//!     err.to_string(),
//!     "service \"users\": overloaded: rate limit of 100/s (burst 10) reached; \
//!      next request admitted in 10ms"
//! );
//!
//! // 10 ms later one more is admitted.
//! tokio::time::advance(Duration::from_millis(10)).await;
//! svc.clone().oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(bulkhead.handle().in_flight(), 0);
//! assert_eq!(throttle.handle().accepts(), 11);
//! # Ok(())
//! # }
//! ```
//!
//! # Concurrency limit (bulkhead)
//!
//! [`ConcurrencyLimitLayer`]: at most [`max`](ConcurrencySettings::max)
//! (256) requests in flight; the next [`queue`](ConcurrencySettings::queue)
//! (64) wait first in first out; any more are shed at once with
//! `Limit::Concurrency`. A waiter is shed with `Limit::QueueTimeout` after
//! [`max_wait`](ConcurrencySettings::max_wait) (1 s) or at its
//! [`Deadline`](crate::deadline::Deadline), whichever comes first; a request
//! whose deadline has passed is not queued at all.
//!
//! A request holds its slot until its response future completes (for HTTP:
//! the response head; the body streams without it) or is dropped. Dropping a
//! queued future leaves the queue; dropping a running one frees its slot,
//! which goes straight to the first waiter. `poll_ready` is the inner
//! service's: the slot is taken in `call`, and a request that must wait
//! takes the readied inner service into its future (leaving a clone), so the
//! inner service must be `Clone`. Requests must implement
//! [`Hints`](crate::balance::Hints) for their deadline (`http::Request<B>`
//! does; other types opt in with an empty impl).
//!
//! The defaults are a bulkhead, not a tuning knob: 256 in flight is
//! ~5 000 requests a second at 50 ms, well above what one client usually
//! sends one service, so only a runaway caller or a stalled backend meets
//! it; then it keeps that one service from taking every connection, task
//! and byte of memory. The queue (a quarter of `max`) absorbs short bursts;
//! a request that waits a whole second is better shed, since the backend is
//! not keeping up. The waiter table is allocated once (up to 1024 entries)
//! and never grows past `queue`.
//!
//! # Rate limit
//!
//! [`RateLimitLayer`]: `per_second` requests a second with bursts of `burst`
//! (default: one second's worth), by the generic cell rate algorithm (a
//! token bucket kept as one timestamp, the next request's theoretical
//! arrival time): the shared bucket is one atomic, updated by compare and
//! swap. Over the limit, a request is shed at once with `Limit::Rate`, whose
//! `retry_in` is exactly when the next request would be admitted; it never
//! waits.
//!
//! Keyed ([`key_header`](RateLimitSettings::key_header) or
//! [`keyed_by_header`](RateLimitLayer::keyed_by_header), or
//! [`keyed`](RateLimitLayer::keyed) with a function of the request), each
//! key has its own bucket in a table of at most
//! [`max_keys`](RateLimitSettings::max_keys) (10 000) keys of at most
//! [`MAX_KEY_LEN`](rate::MAX_KEY_LEN) bytes, behind one short lock. A key
//! whose bucket is full again is idle: when the table is full, idle keys are
//! forgotten to make room (a forgotten key comes back with a full bucket,
//! which is what it had). A new key that finds the table full of busy keys
//! is shed with `Limit::Keys`. Requests without a key share one bucket by
//! default ([`WithoutKey::Shared`]: leaving the key out never escapes the
//! limit), or pass unlimited ([`WithoutKey::Pass`]).
//!
//! # Adaptive throttling
//!
//! [`ThrottleLayer`] is client-side throttling from the Google SRE book
//! ("Handling Overload"). Over a rolling [`window`](ThrottleSettings::window)
//! (2 min, expiring a tenth at a time) it counts `requests` (every call,
//! local rejections included) and `accepts`, and rejects each new request
//! locally with probability
//!
//! ```text
//! max(0, (requests − K·accepts) / (requests + 1))      K = 2 by default
//! ```
//!
//! While the backend accepts everything this is 0. When it refuses for
//! overload, the client keeps offering it about K times what it accepts (the
//! extra share lets the client see when it recovers) and fails the rest
//! at once, without a round trip: the backend spends nothing on requests it
//! would have refused. As it accepts again, the probability falls to 0
//! within one window.
//!
//! What counts as accepted is decided by the stack's one
//! [`Classify`](crate::classify::Classify) (default
//! [`HttpClassify`](crate::classify::HttpClassify)), with one rule: the
//! backend did **not** accept a request when it refused it for load, or when
//! the failure is one the classifier calls retryable (the backend did not do
//! the work); everything else it answered, it accepted.
//!
//! | outcome (default classifier) | accepted |
//! |---|---|
//! | 1xx–4xx except 429 | yes |
//! | 500, 501, 505.. (failures, not retryable) | yes: the backend took it |
//! | 429 (`Outcome::Overloaded`) | no |
//! | 502, 503, 504 (retryable failures) | no |
//! | transport errors, connection refused | no |
//! | errors from the layers below (open breaker, no endpoints) | no |
//! | response future dropped (cancelled, deadline cut) | no |
//!
//! Rejections are random draws from a SplitMix64 sequence (one atomic add a
//! draw); [`seed`](ThrottleLayer::seed) makes them repeatable in tests.

pub mod concurrency;
pub mod rate;
pub mod throttle;

pub use concurrency::{
    ConcurrencyHandle, ConcurrencyLimit, ConcurrencyLimitLayer, ConcurrencySettings,
    ConcurrencyStats,
};
pub use rate::{
    HeaderKey, KeyFn, RateKey, RateLimit, RateLimitHandle, RateLimitLayer, RateLimitSettings,
    RateLimitStats, WithoutKey,
};
pub use throttle::{Throttle, ThrottleHandle, ThrottleLayer, ThrottleSettings, ThrottleStats};

/// The limits of one client, each off unless present; see
/// [`ClientConfig`](crate::ClientConfig). In a file, a written table takes
/// the library's default for every key left out (`concurrency = {}` is the
/// default bulkhead).
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct LimitSettings {
    /// The concurrency limit (bulkhead).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub concurrency: Option<ConcurrencySettings>,
    /// The rate limit.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub rate: Option<RateLimitSettings>,
    /// Adaptive client throttling.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub throttle: Option<ThrottleSettings>,
}

impl LimitSettings {
    /// Every problem with the limits that are present, each at its path
    /// (`rate.per_second`).
    pub fn validate(&self) -> Result<(), crate::settings::SettingsError> {
        let mut p = crate::settings::Problems::new();
        if let Some(c) = &self.concurrency {
            p.nested("concurrency", c.validate());
        }
        if let Some(r) = &self.rate {
            p.nested("rate", r.validate());
        }
        if let Some(t) = &self.throttle {
            p.nested("throttle", t.validate());
        }
        p.finish()
    }
}

#[cfg(test)]
mod tests;
