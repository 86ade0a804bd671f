//! The proxy's configuration file (TOML). The schema, with every default,
//! is documented in `docs/config.md`.
//!
//! Every knob defaults to the library's default, so a minimal file is one
//! service and one route:
//!
//! ```
//! let config = palisade::proxy::config::Config::from_toml(r#"
//!     [[services]]
//!     name = "app"
//!     endpoints = ["127.0.0.1:8080"]
//!
//!     [[routes]]
//!     service = "app"
//! "#).unwrap();
//! assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:4140");
//! assert!(config.lints().is_empty());
//! ```
//!
//! [`Config::from_toml`] reports every problem it finds at once, each with
//! the field's path and the line it is on:
//!
//! ```
//! use palisade::proxy::config::Config;
//!
//! let err = Config::from_toml(r#"
//! [[services]]
//! name = "app"
//! endpoints = ["127.0.0.1:8080", "no-port"]
//! retry = { max_attempts = 0 }
//!
//! [[routes]]
//! service = "ap"
//! "#).unwrap_err();
//! let text = err.to_string();
//! assert!(text.contains("line 4: services[0].endpoints[1]: endpoint \"no-port\": expected host:port"));
//! assert!(text.contains("line 5: services[0].retry.max_attempts: must be at least 1"));
//! assert!(text.contains("line 8: routes[0].service: no service named \"ap\""));
//! ```
//!
//! [`Config::lints`] then names policies that parse but cannot work as
//! written, such as per-try timeouts that do not fit in the deadline.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::discover::{Address, Endpoint};

mod discovery;
mod lint;
mod source;
#[cfg(test)]
mod tests;
mod validate;

pub use discovery::*;
use lint::*;
pub(crate) use source::line_of;
use source::*;
pub use source::{ConfigError, Problem};
use validate::*;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Where the proxy accepts traffic (HTTP/1.1 and h2c). Default one
    /// listener on 127.0.0.1:4140.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<Listener>,
    /// The admin server.
    #[serde(default)]
    pub admin: Admin,
    /// Server-wide settings.
    #[serde(default)]
    pub server: Server,
    /// The upstream services.
    pub services: Vec<Service>,
    /// How requests find a service, tried in order; the first that matches
    /// wins. A route without `match` matches every request (a default route).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Where each field was written (for line numbers in problems); not
    /// part of the configuration, and ignored by `==`.
    #[serde(skip)]
    source: SourceMap,
    /// The directory relative paths in the file are relative to (the
    /// config file's); `None`: the current directory.
    #[serde(skip)]
    base_dir: Option<PathBuf>,
}

fn default_listeners() -> Vec<Listener> {
    vec![Listener::default()]
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Listener {
    /// Socket address. Default 127.0.0.1:4140.
    #[serde(default = "default_listener_address", with = "socket_addr")]
    pub address: SocketAddr,
}

fn default_listener_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4140))
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            address: default_listener_address(),
        }
    }
}

/// The admin server: `/metrics`, `/ready`, `/live`, `/config`, `/snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Admin {
    /// Socket address. Default 127.0.0.1:9990.
    #[serde(default = "default_admin_address", with = "socket_addr")]
    pub address: SocketAddr,
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9990))
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: default_admin_address(),
        }
    }
}

/// Server-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Server {
    /// How long a shutdown waits for in-flight requests. Default 10 s.
    #[serde(default = "default_grace", with = "duration")]
    pub grace_period: Duration,
    /// The largest request head accepted; larger ones are answered 431.
    /// HTTP/1.1: the request line and headers (exact on a connection's first
    /// request when a power of two; otherwise hyper's read buffer can let a
    /// head of up to about twice this through). h2c: the header list as
    /// HTTP/2 counts it, exactly. At least 8192, the smallest limit hyper's
    /// HTTP/1.1 parser can enforce. Default 64 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// How often the config file is checked for changes; greater than 0.
    /// Default 2 s.
    #[serde(default = "default_watch_interval", with = "duration")]
    pub watch_interval: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_watch_interval() -> Duration {
    Duration::from_secs(2)
}

impl Default for Server {
    fn default() -> Self {
        Server {
            grace_period: default_grace(),
            max_header_bytes: default_max_header_bytes(),
            watch_interval: default_watch_interval(),
        }
    }
}

/// An upstream service: a name, its endpoints and its policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Service {
    /// The name routes refer to (and metrics and errors carry): letters,
    /// digits, `.`, `_` and `-`, unique among the services.
    pub name: String,
    /// A fixed list of endpoints: `"host:port"`, or a table with
    /// `address`, `weight` and `labels`. Give either this (at least one
    /// endpoint) or [`discovery`](Service::discovery).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
    /// Where the endpoints come from when they are not listed: DNS, a file
    /// or Kubernetes. Give either this or [`endpoints`](Service::endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    /// How the proxy talks to the endpoints: `"http1"` (default) or `"h2c"`
    /// (HTTP/2 over plain TCP, prior knowledge). Either way connections are
    /// pooled and shared by every service with the same protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Load balancing.
    #[serde(default)]
    pub balancer: Balancer,
    /// Retries.
    #[serde(default)]
    pub retry: Retry,
    /// The retry budget.
    #[serde(default)]
    pub budget: Budget,
    /// Deadlines.
    #[serde(default)]
    pub deadline: Deadline,
    /// Failure accrual (outlier ejection).
    #[serde(default)]
    pub ejection: Ejection,
    /// The service breaker.
    #[serde(default)]
    pub breaker: Breaker,
    /// Limits: concurrency, rate, adaptive throttling. All off by default.
    #[serde(default)]
    pub limits: Limits,
    /// Hedging: one backup request to another endpoint after a delay. Off
    /// unless written (`hedge = {}` hedges with the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<Hedge>,
}

/// The protocol to the endpoints of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive (the default).
    #[default]
    Http1,
    /// HTTP/2 over plain TCP with prior knowledge (h2c).
    H2c,
}

// One endpoint of a service: the shape file discovery reads too.
pub use crate::discover::EndpointSpec;

/// Load balancing settings; see [`crate::balance::BalanceSettings`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Balancer {
    /// EWMA time constant. Default 10 s.
    #[serde(default = "d_decay", with = "duration")]
    pub decay: Duration,
    /// Seed estimate for the first endpoint. Default 30 ms.
    #[serde(default = "d_default_rtt", with = "duration")]
    pub default_rtt: Duration,
    /// What a failure adds to an endpoint's cost. Default 1 s.
    #[serde(default = "d_failure_penalty", with = "duration")]
    pub failure_penalty: Duration,
    /// How long a request waits for an endpoint when there is none.
    /// Default 3 s.
    #[serde(default = "d_endpoint_wait", with = "duration")]
    pub endpoint_wait: Duration,
}

fn d_decay() -> Duration {
    Duration::from_secs(10)
}
fn d_default_rtt() -> Duration {
    Duration::from_millis(30)
}
fn d_failure_penalty() -> Duration {
    Duration::from_secs(1)
}
fn d_endpoint_wait() -> Duration {
    Duration::from_secs(3)
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer {
            decay: d_decay(),
            default_rtt: d_default_rtt(),
            failure_penalty: d_failure_penalty(),
            endpoint_wait: d_endpoint_wait(),
        }
    }
}

/// Retry settings; see [`crate::retry::RetryLayer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Retry {
    /// Attempts in total, the first included (1 disables retries).
    /// At least 1. Default 3.
    #[serde(default = "d_max_attempts")]
    pub max_attempts: u32,
    /// Backoff base; at most `backoff_cap`. Default 25 ms.
    #[serde(default = "d_backoff_base", with = "duration")]
    pub backoff_base: Duration,
    /// Backoff cap. Default 250 ms.
    #[serde(default = "d_backoff_cap", with = "duration")]
    pub backoff_cap: Duration,
    /// Timeout of each attempt (`"none"` for none). Default none.
    #[serde(default, with = "opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// Request body bytes kept for replay. Default 65536.
    #[serde(default = "d_body_limit")]
    pub body_limit: usize,
    /// Statuses retried for idempotent methods (each 100 to 599).
    /// Default [502, 503, 504].
    #[serde(default = "d_retryable")]
    pub retryable_statuses: Vec<u16>,
}

fn d_max_attempts() -> u32 {
    3
}
fn d_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn d_backoff_cap() -> Duration {
    Duration::from_millis(250)
}
fn d_body_limit() -> usize {
    64 * 1024
}
fn d_retryable() -> Vec<u16> {
    vec![502, 503, 504]
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: d_max_attempts(),
            backoff_base: d_backoff_base(),
            backoff_cap: d_backoff_cap(),
            per_try_timeout: None,
            body_limit: d_body_limit(),
            retryable_statuses: d_retryable(),
        }
    }
}

/// Retry budget settings; see [`crate::retry::RetryBudget`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Budget {
    /// Retries allowed per request, finite and at least 0. Default 0.2.
    #[serde(default = "d_ratio")]
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic. Default 10.
    #[serde(default = "d_min_per_sec")]
    pub min_per_sec: u32,
    /// The window. Default 10 s.
    #[serde(default = "d_ttl", with = "duration")]
    pub ttl: Duration,
}

fn d_ratio() -> f64 {
    0.2
}
fn d_min_per_sec() -> u32 {
    10
}
fn d_ttl() -> Duration {
    Duration::from_secs(10)
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            ratio: d_ratio(),
            min_per_sec: d_min_per_sec(),
            ttl: d_ttl(),
        }
    }
}

/// Deadline settings; see [`crate::deadline::DeadlineLayer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Deadline {
    /// Timeout for requests that bring no deadline (`"none"` for none;
    /// otherwise greater than 0). Default 15 s.
    #[serde(default = "d_timeout", with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Longest deadline a request header may ask for; greater than 0.
    /// Default 5 min.
    #[serde(default = "d_max_timeout", with = "duration")]
    pub max_timeout: Duration,
    /// Kept back from what is propagated. Default 5 ms.
    #[serde(default = "d_reserve", with = "duration")]
    pub reserve: Duration,
    /// Whether the remaining deadline is sent upstream. Default true.
    #[serde(default = "yes")]
    pub propagate: bool,
}

fn d_timeout() -> Option<Duration> {
    Some(Duration::from_secs(15))
}
fn d_max_timeout() -> Duration {
    Duration::from_secs(300)
}
fn d_reserve() -> Duration {
    Duration::from_millis(5)
}
fn yes() -> bool {
    true
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline {
            timeout: d_timeout(),
            max_timeout: d_max_timeout(),
            reserve: d_reserve(),
            propagate: true,
        }
    }
}

/// Failure accrual settings; see [`crate::balance::EjectionSettings`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Ejection {
    /// Whether endpoints are ejected at all. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failures in a row that eject an endpoint; 0 turns this trigger off.
    /// Default 5.
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    /// The success rate (0 to 1) below which an endpoint is ejected; 0
    /// turns this trigger off. Default 0.8.
    #[serde(default = "d_success_rate")]
    pub success_rate: f64,
    /// The window the success rate is measured over. Default 10 s.
    #[serde(default = "d_ttl", with = "duration")]
    pub window: Duration,
    /// Requests needed in the window before the success rate counts.
    /// Default 5.
    #[serde(default = "d_min_requests")]
    pub min_requests: u32,
    /// The first ejection's length; at most `max_penalty`. Default 1 s.
    #[serde(default = "d_failure_penalty", with = "duration")]
    pub base_penalty: Duration,
    /// The longest ejection. Default 1 min.
    #[serde(default = "d_max_penalty", with = "duration")]
    pub max_penalty: Duration,
    /// Each penalty is scaled by a random factor in `1 ± jitter/2` (0 to
    /// 1). Default 0.5.
    #[serde(default = "half")]
    pub jitter: f64,
    /// The largest share (0 to 1) of endpoints ejected at once; at least
    /// one is always allowed. Default 0.5.
    #[serde(default = "half")]
    pub max_ejection_percent: f64,
    /// When the share (0 to 1) of available endpoints is below this,
    /// ejections are ignored. Default 0.5.
    #[serde(default = "half")]
    pub panic_threshold: f64,
}

fn d_consecutive() -> u32 {
    5
}
fn d_success_rate() -> f64 {
    0.8
}
fn d_min_requests() -> u32 {
    5
}
fn d_max_penalty() -> Duration {
    Duration::from_secs(60)
}
fn half() -> f64 {
    0.5
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            enabled: true,
            consecutive_failures: d_consecutive(),
            success_rate: d_success_rate(),
            window: d_ttl(),
            min_requests: d_min_requests(),
            base_penalty: d_failure_penalty(),
            max_penalty: d_max_penalty(),
            jitter: half(),
            max_ejection_percent: half(),
            panic_threshold: half(),
        }
    }
}

/// Service breaker settings; see [`crate::breaker::BreakerLayer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Breaker {
    /// Whether the breaker is on. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The rolling window outcomes are counted over. Default 10 s.
    #[serde(default = "d_ttl", with = "duration")]
    pub window: Duration,
    /// Requests needed in the window before the breaker may open.
    /// Default 20.
    #[serde(default = "d_volume")]
    pub volume_threshold: u32,
    /// The share of failures (greater than 0, at most 1) at or above which
    /// the breaker opens. Default 0.5.
    #[serde(default = "half")]
    pub error_threshold: f64,
    /// How long the breaker stays open before probing. Default 5 s.
    #[serde(default = "d_sleep", with = "duration")]
    pub sleep_window: Duration,
    /// Probes in flight at once while half-open; at least 1. Default 1.
    #[serde(default = "d_probes")]
    pub half_open_probes: u32,
}

fn d_volume() -> u32 {
    20
}
fn d_sleep() -> Duration {
    Duration::from_secs(5)
}
fn d_probes() -> u32 {
    1
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            enabled: true,
            window: d_ttl(),
            volume_threshold: d_volume(),
            error_threshold: half(),
            sleep_window: d_sleep(),
            half_open_probes: d_probes(),
        }
    }
}

// ---------------------------------------------------------------------------
// Limits.

/// Limits on the requests sent to a service (see [`crate::limit`]): each is
/// off unless its table is written, and a written table takes the library's
/// default for every key left out (`concurrency = {}` is the default
/// bulkhead).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// The concurrency limit (bulkhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// The rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Adaptive client throttling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
}

/// The concurrency limit; see [`crate::limit::ConcurrencyLimitLayer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Concurrency {
    /// Requests in flight at once; at least 1. Default
    /// [`DEFAULT_MAX`](crate::limit::concurrency::DEFAULT_MAX).
    #[serde(default = "d_concurrency_max")]
    pub max: usize,
    /// Requests that may wait for a slot, first in first out; 0 sheds at
    /// once. Default [`DEFAULT_QUEUE`](crate::limit::concurrency::DEFAULT_QUEUE).
    #[serde(default = "d_concurrency_queue")]
    pub queue: usize,
    /// The longest a request waits in the queue (`"none"`: as long as its
    /// deadline allows; never past it either way). Default
    /// [`DEFAULT_MAX_WAIT`](crate::limit::concurrency::DEFAULT_MAX_WAIT).
    #[serde(default = "d_concurrency_max_wait", with = "opt_duration")]
    pub max_wait: Option<Duration>,
}

fn d_concurrency_max() -> usize {
    crate::limit::concurrency::DEFAULT_MAX
}
fn d_concurrency_queue() -> usize {
    crate::limit::concurrency::DEFAULT_QUEUE
}
fn d_concurrency_max_wait() -> Option<Duration> {
    Some(crate::limit::concurrency::DEFAULT_MAX_WAIT)
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            max: d_concurrency_max(),
            queue: d_concurrency_queue(),
            max_wait: d_concurrency_max_wait(),
        }
    }
}

/// The rate limit; see [`crate::limit::RateLimitLayer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Rate {
    /// Sustained requests a second; required, finite, between
    /// [`MIN_RATE`](crate::limit::rate::MIN_RATE) and
    /// [`MAX_RATE`](crate::limit::rate::MAX_RATE).
    pub per_second: f64,
    /// Requests that may go at once after a quiet spell; at least 1.
    /// Default: the library's, one second's worth
    /// ([`RateLimitSettings::burst`](crate::limit::RateLimitSettings::burst)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Limit each value of this request header separately (one bucket per
    /// tenant, say). Default: one bucket for all requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_header: Option<String>,
    /// The most keys tracked with `key_header`; at least 1. Default
    /// [`DEFAULT_MAX_KEYS`](crate::limit::rate::DEFAULT_MAX_KEYS).
    #[serde(default = "d_max_keys")]
    pub max_keys: usize,
    /// With `key_header`, what requests without the header do: `"shared"`
    /// (one bucket between them, the default) or `"pass"` (not limited).
    #[serde(default)]
    pub without_key: WithoutKey,
}

fn d_max_keys() -> usize {
    crate::limit::rate::DEFAULT_MAX_KEYS
}

/// What a keyed rate limit does with requests that have no key; see
/// [`crate::limit::WithoutKey`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WithoutKey {
    /// They share one bucket (the default).
    #[default]
    Shared,
    /// They are not limited.
    Pass,
}

/// Adaptive client throttling; see [`crate::limit::ThrottleLayer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Throttle {
    /// The multiplier K: requests are rejected locally once they exceed K
    /// times the accepted ones; finite, at least 1. Default
    /// [`DEFAULT_K`](crate::limit::throttle::DEFAULT_K).
    #[serde(default = "d_k")]
    pub k: f64,
    /// The window requests and accepts are counted over; greater than 0.
    /// Default [`DEFAULT_WINDOW`](crate::limit::throttle::DEFAULT_WINDOW).
    #[serde(default = "d_throttle_window", with = "duration")]
    pub window: Duration,
}

fn d_k() -> f64 {
    crate::limit::throttle::DEFAULT_K
}
fn d_throttle_window() -> Duration {
    crate::limit::throttle::DEFAULT_WINDOW
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            k: d_k(),
            window: d_throttle_window(),
        }
    }
}

/// Hedging; see [`crate::hedge::HedgeLayer`]. Only idempotent requests
/// whose body fits the retry replay limit are hedged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Hedge {
    /// When the backup goes: `"p95"` (that percentile of the service's
    /// recent latencies, from `"p1"` to `"p99.99"`) or a duration such as
    /// `"20ms"`. Default `"p95"`
    /// ([`DEFAULT_PERCENTILE`](crate::hedge::DEFAULT_PERCENTILE)).
    #[serde(default, with = "hedge_delay")]
    pub delay: crate::hedge::HedgeDelay,
    /// Latency samples needed before a percentile is used; at least 1.
    /// Default [`DEFAULT_MIN_SAMPLES`](crate::hedge::DEFAULT_MIN_SAMPLES).
    #[serde(default = "d_hedge_min_samples")]
    pub min_samples: u64,
    /// The delay until then; greater than 0. Default
    /// [`DEFAULT_FALLBACK_DELAY`](crate::hedge::DEFAULT_FALLBACK_DELAY).
    #[serde(default = "d_hedge_fallback", with = "duration")]
    pub fallback_delay: Duration,
    /// The window the percentile is taken over; greater than 0. Default
    /// [`DEFAULT_WINDOW`](crate::hedge::DEFAULT_WINDOW).
    #[serde(default = "d_hedge_window", with = "duration")]
    pub window: Duration,
    /// Backups as a share of requests (over 10 s, no minimum per second):
    /// the most extra load hedging may add. Greater than 0, at most 1.
    /// Default [`DEFAULT_BUDGET_RATIO`](crate::hedge::DEFAULT_BUDGET_RATIO).
    #[serde(default = "d_hedge_ratio")]
    pub budget_ratio: f64,
}

fn d_hedge_min_samples() -> u64 {
    crate::hedge::DEFAULT_MIN_SAMPLES
}
fn d_hedge_fallback() -> Duration {
    crate::hedge::DEFAULT_FALLBACK_DELAY
}
fn d_hedge_window() -> Duration {
    crate::hedge::DEFAULT_WINDOW
}
fn d_hedge_ratio() -> f64 {
    crate::hedge::DEFAULT_BUDGET_RATIO
}

impl Default for Hedge {
    fn default() -> Self {
        Hedge {
            delay: crate::hedge::HedgeDelay::default(),
            min_samples: d_hedge_min_samples(),
            fallback_delay: d_hedge_fallback(),
            window: d_hedge_window(),
            budget_ratio: d_hedge_ratio(),
        }
    }
}

/// A hedge delay: `"p95"` or a duration.
mod hedge_delay {
    use super::*;
    use crate::hedge::HedgeDelay;

    pub(super) fn serialize<S: serde::Serializer>(d: &HedgeDelay, s: S) -> Result<S::Ok, S::Error> {
        match d {
            HedgeDelay::Fixed(d) => s.serialize_str(&format_duration(*d)),
            HedgeDelay::Percentile(q) => {
                s.collect_str(&format_args!("p{}", (q * 100_000.0).round() / 1000.0))
            }
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HedgeDelay, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = HedgeDelay;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    r#"a percentile such as "p95" or a duration ({DURATION_HINT})"#
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HedgeDelay, E> {
                if let Some(p) = v.strip_prefix('p').or_else(|| v.strip_prefix('P')) {
                    let pct: f64 = p.parse().map_err(|_| {
                        E::custom(format!(
                            r#"invalid percentile {v:?}: write "p" and a number, such as "p95" or "p99.9""#
                        ))
                    })?;
                    if !(pct.is_finite() && (1.0..=99.99).contains(&pct)) {
                        return Err(E::custom(format!(
                            "percentile {v:?} is out of range: from p1 to p99.99"
                        )));
                    }
                    // Thousandths of a percent: "p99.9" is exactly 0.999.
                    return Ok(HedgeDelay::Percentile((pct * 1000.0).round() / 100_000.0));
                }
                let d = parse_duration(v)?;
                if d.is_zero() {
                    return Err(E::custom(
                        "a fixed hedge delay must be greater than 0 (every request would be sent twice)",
                    ));
                }
                Ok(HedgeDelay::Fixed(d))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// How requests find a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Route {
    /// A name for logs and errors. Default `route-<index>` (0-based).
    #[serde(default)]
    pub name: Option<String>,
    /// What a request must look like; empty matches everything.
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// The one service (exclusive with `split`).
    #[serde(default)]
    pub service: Option<String>,
    /// A weighted split across services (exclusive with `service`).
    #[serde(default)]
    pub split: Vec<Split>,
}

/// What a request must look like to take a route; every given part must
/// match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Match {
    /// The request's host (authority or `Host` header, port ignored), exact,
    /// case-insensitive; `*.example.com` matches every name that ends in
    /// `.example.com` (`a.example.com`, `a.b.example.com`), not
    /// `example.com` itself.
    #[serde(default)]
    pub host: Option<String>,
    /// A path prefix, whole segments: `/api` matches `/api` and `/api/x`,
    /// not `/apix`; a prefix ending in `/` matches paths that start with it.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Headers that must be present with exactly these values (names are
    /// case-insensitive, values are not; of a repeated header, the first
    /// value counts).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// HTTP methods, uppercase (`["GET", "HEAD"]`); the request's method
    /// must be one of them. Empty (the default) matches every method.
    #[serde(default)]
    pub methods: Vec<String>,
}

/// One leg of a weighted split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Split {
    /// The service.
    pub service: String,
    /// Relative weight (≥ 0; the legs' total must be > 0).
    pub weight: u32,
}

impl Config {
    /// Parses and validates a config file's text.
    ///
    /// Every problem is reported, not just the first: TOML syntax errors
    /// (all of them), then type errors and unknown keys (one per service,
    /// route, listener and table at least), and, when the file parses,
    /// every failed [`validate`](Config::validate) check. Each names the
    /// field and the 1-based line.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config = parse(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Like [`from_toml`](Config::from_toml), for the text of the file at
    /// `path`: relative paths in it (such as `discovery.file`) are taken
    /// relative to the file's directory (see
    /// [`with_base_dir`](Config::with_base_dir)).
    pub fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config = Config::from_toml(text)?;
        Ok(config.with_base_dir(dir_of(path)))
    }

    /// Checks what serde cannot: names, references, ranges, addresses.
    /// [`from_toml`](Config::from_toml) calls it; a config changed in code
    /// can be checked again with it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut report = Report::new(&self.source);
        validate(self, &mut report);
        let problems = report.finish();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Policies that are valid but cannot work as written: per-try timeouts
    /// that do not fit in the deadline, budgets above 1, retries where no
    /// route sends an idempotent method, backoff as long as the deadline,
    /// default deadlines above `max_timeout`, routes that can never match,
    /// services no route reaches, discovery polled more than 10 times a
    /// second, endpoints files that are missing or bad now (read, relative
    /// to the [`base_dir`](Config::base_dir)), queue waits longer than the
    /// deadline, throttling windows under 10 s. Each names the field and
    /// line. Meant for a config that [`validate`](Config::validate)s.
    pub fn lints(&self) -> Vec<Problem> {
        let mut report = Report::new(&self.source);
        lint(self, &mut report);
        report.finish()
    }

    /// The 1-based line a field (a path as in [`Problem::field`]) was written
    /// on, or the line of the nearest enclosing table that was; `None` for a
    /// config not read from text.
    pub fn line_of(&self, field: &str) -> Option<usize> {
        self.source.line_of_rendered(field)
    }

    /// The same config, with relative paths in it (such as
    /// `discovery.file`) taken relative to `dir`: the config file's
    /// directory. Without it they are relative to the current directory.
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Config {
        self.base_dir = Some(dir.into());
        self
    }

    /// The directory relative paths are taken relative to, when set with
    /// [`with_base_dir`](Config::with_base_dir).
    pub fn base_dir(&self) -> Option<&Path> {
        self.base_dir.as_deref()
    }

    /// `path` as the config means it: relative paths are joined to the
    /// [`base_dir`](Config::base_dir).
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        match &self.base_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }
}
