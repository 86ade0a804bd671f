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
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use toml::de::{DeArray, DeTable, DeValue};

use crate::discover::{Address, Endpoint};

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
    /// The largest request head (request line and headers) accepted; larger
    /// ones are answered 431. At least 1024. Default 64 KiB.
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
// Discovery: where a service's endpoints come from, when not listed.

/// Where a service's endpoints come from when they are not listed: one
/// source, named by its key (`dns`, `file` or `kubernetes`, whose value
/// says what to watch), with that source's settings beside it. Each source
/// starts empty, feeds the balancer as it learns, and keeps its last good
/// set through failures.
///
/// ```toml
/// discovery = { dns = "users.internal:8080" }
/// discovery = { dns = "_http._tcp.users.internal", refresh_max = "30s" }
/// discovery = { file = "endpoints.json", interval = "1s" }
/// discovery = { kubernetes = { namespace = "shop", service = "users", port = "http" } }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DiscoveryTable", into = "DiscoveryTable")]
#[non_exhaustive]
pub enum Discovery {
    /// A/AAAA or SRV records (`palisade::discover::dns`, feature `dns`).
    Dns(DnsDiscovery),
    /// A JSON or TOML file of endpoints (`palisade::discover::file`).
    File(FileDiscovery),
    /// A Service's EndpointSlices (`palisade::discover::kubernetes`,
    /// feature `kubernetes`).
    Kubernetes(KubernetesDiscovery),
}

impl Discovery {
    /// The source's key in the file: `"dns"`, `"file"` or `"kubernetes"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Discovery::Dns(_) => "dns",
            Discovery::File(_) => "file",
            Discovery::Kubernetes(_) => "kubernetes",
        }
    }
}

/// DNS discovery (`palisade::discover::dns`, feature `dns`). Settings left
/// out take the library's defaults.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DnsDiscovery {
    /// `dns`: `host:port` for A/AAAA records (every address gets the port),
    /// or `_service._proto.name` for SRV records (ports and weights from
    /// the records).
    pub name: String,
    /// The shortest re-resolve interval: record TTLs are raised to it, and
    /// retries after a failure wait at least this. Greater than 0, at most
    /// `refresh_max`. Default: the library's (`dns::DEFAULT_MIN_REFRESH`).
    pub refresh_min: Option<Duration>,
    /// The longest re-resolve interval: record TTLs are cut to it, and so
    /// is the backoff after failures. Default: the library's
    /// (`dns::DEFAULT_MAX_REFRESH`).
    pub refresh_max: Option<Duration>,
    /// What NXDOMAIN (or an answer without usable records) does to the
    /// endpoints: keep the last set (the default) or clear it.
    pub on_nxdomain: OnNxdomain,
    /// Which address records: A and AAAA (the default), or one of them.
    pub ip_family: IpFamily,
    /// Name servers to ask, instead of the system's (`/etc/resolv.conf`);
    /// at least one when given.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// How long one query may take. Default: the system configuration's.
    pub query_timeout: Option<Duration>,
}

impl DnsDiscovery {
    /// DNS discovery of `name` with the default settings.
    pub fn new(name: impl Into<String>) -> DnsDiscovery {
        DnsDiscovery {
            name: name.into(),
            refresh_min: None,
            refresh_max: None,
            on_nxdomain: OnNxdomain::default(),
            ip_family: IpFamily::default(),
            nameservers: None,
            query_timeout: None,
        }
    }

    /// The library's source for these settings, checked by the library
    /// (name and settings) but not started.
    #[cfg(feature = "dns")]
    pub(crate) fn to_dns(
        &self,
    ) -> Result<crate::discover::dns::Dns, crate::discover::dns::DnsError> {
        use crate::discover::dns;
        let mut source = dns::Dns::parse(&self.name)?
            .refresh_bounds(
                self.refresh_min.unwrap_or(dns::DEFAULT_MIN_REFRESH),
                self.refresh_max.unwrap_or(dns::DEFAULT_MAX_REFRESH),
            )
            .on_nxdomain(match self.on_nxdomain {
                OnNxdomain::Keep => dns::OnNxdomain::Keep,
                OnNxdomain::Clear => dns::OnNxdomain::Clear,
            })
            .ip_family(match self.ip_family {
                IpFamily::Both => dns::IpFamily::Both,
                IpFamily::V4 => dns::IpFamily::V4,
                IpFamily::V6 => dns::IpFamily::V6,
            });
        if let Some(servers) = &self.nameservers {
            source = source.nameservers(servers.iter().copied());
        }
        if let Some(timeout) = self.query_timeout {
            source = source.query_timeout(timeout);
        }
        source.check()?;
        Ok(source)
    }
}

/// What DNS discovery does with its endpoints when the name stops
/// resolving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OnNxdomain {
    /// Keep the last good set (the default).
    #[default]
    Keep,
    /// Clear it: requests fail fast until the name resolves again.
    Clear,
}

/// Which address records DNS discovery asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum IpFamily {
    /// A and AAAA (the default).
    #[default]
    Both,
    /// A only.
    V4,
    /// AAAA only.
    V6,
}

/// File discovery (`palisade::discover::file`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FileDiscovery {
    /// `file`: the endpoints file, JSON or TOML. A relative path is
    /// relative to the config file's directory.
    pub path: PathBuf,
    /// How often the file is checked for changes; greater than 0. Default
    /// [`file::DEFAULT_INTERVAL`](crate::discover::file::DEFAULT_INTERVAL).
    pub interval: Duration,
    /// The format, whatever the file's name says. Default: from the name's
    /// extension.
    pub format: Option<FileFormat>,
}

impl FileDiscovery {
    /// File discovery of `path` with the default settings.
    pub fn new(path: impl Into<PathBuf>) -> FileDiscovery {
        FileDiscovery {
            path: path.into(),
            interval: crate::discover::file::DEFAULT_INTERVAL,
            format: None,
        }
    }

    /// The library's source for these settings (not started), with the
    /// path resolved against `config`'s directory.
    pub(crate) fn to_watch(&self, config: &Config) -> crate::discover::file::Watch {
        use crate::discover::file::{Format, Watch};
        let watch = Watch::new(config.resolve_path(&self.path)).interval(self.interval);
        match self.format {
            Some(FileFormat::Json) => watch.format(Format::Json),
            Some(FileFormat::Toml) => watch.format(Format::Toml),
            None => watch,
        }
    }
}

/// The format of an endpoints file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FileFormat {
    /// JSON.
    Json,
    /// TOML.
    Toml,
}

/// Kubernetes discovery (`palisade::discover::kubernetes`, feature
/// `kubernetes`): the ready endpoints of a Service, through the API server
/// the proxy finds the way `kubectl` does (in a pod: its service account).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `namespace`, `service` and (optionally) `port`"
)]
#[non_exhaustive]
pub struct KubernetesDiscovery {
    /// The namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service port's name (e.g. `"http"`). Default: each
    /// EndpointSlice's only TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

/// The `discovery` table as written: the source's key and every source's
/// settings. Reading it checks that there is one source and that the
/// settings given are that source's.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kubernetes: Option<KubernetesDiscovery>,
    // dns
    #[serde(
        default,
        with = "maybe_duration",
        skip_serializing_if = "Option::is_none"
    )]
    refresh_min: Option<Duration>,
    #[serde(
        default,
        with = "maybe_duration",
        skip_serializing_if = "Option::is_none"
    )]
    refresh_max: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_nxdomain: Option<OnNxdomain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip_family: Option<IpFamily>,
    #[serde(
        default,
        with = "maybe_socket_addrs",
        skip_serializing_if = "Option::is_none"
    )]
    nameservers: Option<Vec<SocketAddr>>,
    #[serde(
        default,
        with = "maybe_duration",
        skip_serializing_if = "Option::is_none"
    )]
    query_timeout: Option<Duration>,
    // file
    #[serde(
        default,
        with = "maybe_duration",
        skip_serializing_if = "Option::is_none"
    )]
    interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<FileFormat>,
}

/// The settings of each source, as they are written.
const DNS_SETTINGS: &str =
    "`refresh_min`, `refresh_max`, `on_nxdomain`, `ip_family`, `nameservers` and `query_timeout`";
const FILE_SETTINGS: &str = "`interval` and `format`";

impl TryFrom<DiscoveryTable> for Discovery {
    type Error = String;

    fn try_from(t: DiscoveryTable) -> Result<Discovery, String> {
        let dns_settings = [
            ("refresh_min", t.refresh_min.is_some()),
            ("refresh_max", t.refresh_max.is_some()),
            ("on_nxdomain", t.on_nxdomain.is_some()),
            ("ip_family", t.ip_family.is_some()),
            ("nameservers", t.nameservers.is_some()),
            ("query_timeout", t.query_timeout.is_some()),
        ];
        let file_settings = [
            ("interval", t.interval.is_some()),
            ("format", t.format.is_some()),
        ];
        let first = |settings: &[(&'static str, bool)]| {
            settings
                .iter()
                .find_map(|(key, given)| given.then_some(*key))
        };
        // A setting of another source: the message names the key, so the
        // problem is placed at it.
        let misplaced = |source: &str, takes: &str, others: &[(&str, &[(&'static str, bool)])]| {
            others.iter().find_map(|(other, settings)| {
                first(settings).map(|key| {
                    format!(
                        "unknown field `{key}`: a setting of {other} discovery, not of {source} discovery ({takes})"
                    )
                })
            })
        };
        let sources: Vec<&str> = [
            ("`dns`", t.dns.is_some()),
            ("`file`", t.file.is_some()),
            ("`kubernetes`", t.kubernetes.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect();
        match (t.dns, t.file, t.kubernetes) {
            (Some(name), None, None) => {
                let takes = format!("which takes {DNS_SETTINGS}");
                if let Some(e) = misplaced("dns", &takes, &[("file", &file_settings)]) {
                    return Err(e);
                }
                Ok(Discovery::Dns(DnsDiscovery {
                    name,
                    refresh_min: t.refresh_min,
                    refresh_max: t.refresh_max,
                    on_nxdomain: t.on_nxdomain.unwrap_or_default(),
                    ip_family: t.ip_family.unwrap_or_default(),
                    nameservers: t.nameservers,
                    query_timeout: t.query_timeout,
                }))
            }
            (None, Some(path), None) => {
                let takes = format!("which takes {FILE_SETTINGS}");
                if let Some(e) = misplaced("file", &takes, &[("dns", &dns_settings)]) {
                    return Err(e);
                }
                let mut file = FileDiscovery::new(path);
                file.interval = t.interval.unwrap_or(file.interval);
                file.format = t.format;
                Ok(Discovery::File(file))
            }
            (None, None, Some(kubernetes)) => {
                let takes = "whose settings are in its own table";
                let others: [(&str, &[(&'static str, bool)]); 2] =
                    [("dns", &dns_settings), ("file", &file_settings)];
                if let Some(e) = misplaced("kubernetes", takes, &others) {
                    return Err(e);
                }
                Ok(Discovery::Kubernetes(kubernetes))
            }
            (None, None, None) => Err(
                "names no source: give one of `dns`, `file` or `kubernetes`, e.g. \
                 `discovery = { dns = \"users.internal:8080\" }`"
                    .into(),
            ),
            _ => Err(format!(
                "give one source, not {}: {}",
                sources.len(),
                sources.join(" and ")
            )),
        }
    }
}

impl From<Discovery> for DiscoveryTable {
    fn from(d: Discovery) -> DiscoveryTable {
        let mut t = DiscoveryTable {
            dns: None,
            file: None,
            kubernetes: None,
            refresh_min: None,
            refresh_max: None,
            on_nxdomain: None,
            ip_family: None,
            nameservers: None,
            query_timeout: None,
            interval: None,
            format: None,
        };
        match d {
            Discovery::Dns(dns) => {
                t.dns = Some(dns.name);
                t.refresh_min = dns.refresh_min;
                t.refresh_max = dns.refresh_max;
                t.on_nxdomain = Some(dns.on_nxdomain);
                t.ip_family = Some(dns.ip_family);
                t.nameservers = dns.nameservers;
                t.query_timeout = dns.query_timeout;
            }
            Discovery::File(file) => {
                t.file = Some(file.path);
                t.interval = Some(file.interval);
                t.format = file.format;
            }
            Discovery::Kubernetes(kubernetes) => t.kubernetes = Some(kubernetes),
        }
        t
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

/// A config that could not be accepted: every problem, each naming the
/// field and, where known, the line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// One entry per problem, in the order of the file.
    pub problems: Vec<Problem>,
}

/// One problem in a config file (an error from [`Config::from_toml`] or a
/// warning from [`Config::lints`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The field's path, e.g. `services[1].retry.max_attempts`;
    /// `(syntax)` for TOML syntax errors that are in no field.
    pub field: String,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

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

/// The directory of the file at `path`, made absolute (against the
/// current directory) when it can be, so that it stays right if the
/// current directory changes.
fn dir_of(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let bytes = text.as_bytes();
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

// ---------------------------------------------------------------------------
// Durations: humantime strings ("250ms", "1m 30s"), with a message that says
// what went wrong and how to write one.

const DURATION_HINT: &str = r#"write e.g. "250ms", "15s" or "1m 30s""#;

fn format_duration(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

fn parse_duration<E: serde::de::Error>(v: &str) -> Result<Duration, E> {
    humantime_serde::re::humantime::parse_duration(v)
        .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}; {DURATION_HINT}")))
}

mod duration {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a duration string ({DURATION_HINT})")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v)
            }
        }
        d.deserialize_str(Visit)
    }
}

/// An optional duration: a duration string, or `"none"`.
mod opt_duration {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_str("none"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, r#"a duration string ({DURATION_HINT}) or "none""#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<Duration>, E> {
                if v.eq_ignore_ascii_case("none") {
                    Ok(None)
                } else {
                    parse_duration(v).map(Some)
                }
            }
        }
        d.deserialize_str(Visit)
    }
}

/// A duration that may be left out (then `None`: the library's default).
mod maybe_duration {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }
}

/// A list of socket addresses that may be left out, each checked (and its
/// problem placed) like [`socket_addr`].
mod maybe_socket_addrs {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(
        addrs: &Option<Vec<SocketAddr>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match addrs {
            Some(addrs) => s.collect_seq(addrs.iter().map(ToString::to_string)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<SocketAddr>>, D::Error> {
        struct One;
        impl<'de> serde::de::DeserializeSeed<'de> for One {
            type Value = SocketAddr;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SocketAddr, D::Error> {
                socket_addr::deserialize(d)
            }
        }
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Vec<SocketAddr>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a list of socket addresses such as ["127.0.0.1:53"]"#)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<SocketAddr>, A::Error> {
                let mut out = Vec::new();
                while let Some(addr) = seq.next_element_seed(One)? {
                    out.push(addr);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Visit).map(Some)
    }
}

/// A socket address, `IP:port`, with a message that says how to write one.
mod socket_addr {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = SocketAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a socket address such as "127.0.0.1:4140" or "[::1]:4140""#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketAddr, E> {
                v.parse().map_err(|_| {
                    E::custom(format!(
                        r#"invalid socket address {v:?}: write an IP address and a port, such as "127.0.0.1:4140", "0.0.0.0:4140" or "[::1]:4140" (host names are not resolved here)"#
                    ))
                })
            }
        }
        d.deserialize_str(Visit)
    }
}

// ---------------------------------------------------------------------------
// Field paths and where they are in the file.

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `services[1].retry.max_attempts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FieldPath(Vec<Seg>);

impl FieldPath {
    fn root() -> FieldPath {
        FieldPath::default()
    }

    /// This path and one key.
    fn key(&self, key: &str) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Seg::Key(key.to_owned()));
        path
    }

    /// This path and dotted keys (`"retry.max_attempts"`).
    fn at(&self, dotted: &str) -> FieldPath {
        let mut path = self.clone();
        path.0
            .extend(dotted.split('.').map(|k| Seg::Key(k.to_owned())));
        path
    }

    /// This path and an array index.
    fn index(&self, i: usize) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Seg::Index(i));
        path
    }
}

/// Whether a key can be written bare in a path.
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(file)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(key) {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where each field of a parsed file was written: path → 1-based line.
/// Compares equal to every other (it is not part of the configuration).
#[derive(Clone, Default)]
struct SourceMap {
    lines: Option<Arc<HashMap<FieldPath, usize>>>,
}

impl fmt::Debug for SourceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.lines {
            Some(lines) => write!(f, "SourceMap({} fields)", lines.len()),
            None => f.write_str("SourceMap(none)"),
        }
    }
}

impl PartialEq for SourceMap {
    fn eq(&self, _: &SourceMap) -> bool {
        true
    }
}

impl SourceMap {
    /// The line of `path`, or of its nearest ancestor that was written.
    fn line(&self, path: &FieldPath) -> Option<usize> {
        let lines = self.lines.as_ref()?;
        let mut segs = path.0.as_slice();
        // One clone for the lookups, shortened as we go up.
        let mut probe = FieldPath(segs.to_vec());
        loop {
            if segs.is_empty() {
                return None;
            }
            if let Some(line) = lines.get(&probe) {
                return Some(*line);
            }
            segs = &segs[..segs.len() - 1];
            probe.0.pop();
        }
    }

    fn line_of_rendered(&self, field: &str) -> Option<usize> {
        let lines = self.lines.as_ref()?;
        // Paths are few; compare renderings, going up to the nearest
        // ancestor that was written.
        let mut best: Option<(usize, usize)> = None;
        for (path, line) in lines.iter() {
            let rendered = path.to_string();
            let is_prefix = field == rendered
                || (field.starts_with(&rendered)
                    && matches!(field.as_bytes().get(rendered.len()), Some(b'.' | b'[')));
            if is_prefix && best.is_none_or(|(len, _)| rendered.len() > len) {
                best = Some((rendered.len(), *line));
            }
        }
        best.map(|(_, line)| line)
    }
}

/// One key or array element of a parsed document, with its spans.
struct Node {
    path: FieldPath,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

/// Every key and array element of a parsed document.
fn index_document(doc: &DeTable<'_>) -> Vec<Node> {
    fn table(t: &DeTable<'_>, path: &mut Vec<Seg>, out: &mut Vec<Node>) {
        for (k, v) in t.iter() {
            path.push(Seg::Key(k.get_ref().to_string()));
            out.push(Node {
                path: FieldPath(path.clone()),
                key: Some(k.span()),
                value: v.span(),
            });
            value(v.get_ref(), path, out);
            path.pop();
        }
    }
    fn value(v: &DeValue<'_>, path: &mut Vec<Seg>, out: &mut Vec<Node>) {
        match v {
            DeValue::Table(t) => table(t, path, out),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    out.push(Node {
                        path: FieldPath(path.clone()),
                        key: None,
                        value: item.span(),
                    });
                    value(item.get_ref(), path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    table(doc, &mut Vec::new(), &mut out);
    out
}

/// Whether `inner` lies within `outer` (a zero-width `inner` may sit at
/// `outer`'s end).
fn span_contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    !outer.is_empty() && outer.start <= inner.start && inner.end <= outer.end
}

/// The smallest key or value whose span holds `span`.
fn node_at<'n>(nodes: &'n [Node], span: &Range<usize>) -> Option<&'n Node> {
    let mut best: Option<(usize, &Node)> = None;
    for node in nodes {
        for s in node.key.iter().chain(std::iter::once(&node.value)) {
            if span_contains(s, span) {
                let len = s.len();
                let better = match best {
                    None => true,
                    Some((best_len, best_node)) => {
                        len < best_len
                            || (len == best_len && node.path.0.len() > best_node.path.0.len())
                    }
                };
                if better {
                    best = Some((len, node));
                }
            }
        }
    }
    best.map(|(_, node)| node)
}

/// Removes the key or array element `node` from a document, found by its
/// span (spans survive earlier removals; indices do not).
fn remove_node(table: &mut DeTable<'_>, node: &Node) -> bool {
    if let Some(key) = &node.key {
        let found = table
            .iter()
            .find(|(k, _)| k.span() == *key)
            .map(|(k, _)| k.get_ref().clone());
        if let Some(k) = found {
            table.remove(k.as_ref());
            return true;
        }
    }
    table
        .iter_mut()
        .any(|(_, v)| remove_in_value(v.get_mut(), node))
}

fn remove_in_value(value: &mut DeValue<'_>, node: &Node) -> bool {
    match value {
        DeValue::Table(t) => remove_node(t, node),
        DeValue::Array(items) => {
            if node.key.is_none()
                && let Some(i) = items.iter().position(|item| item.span() == node.value)
            {
                let mut kept = DeArray::new();
                for (k, item) in items.iter().enumerate() {
                    if k != i {
                        kept.push(item.clone());
                    }
                }
                *items = kept;
                return true;
            }
            items
                .iter_mut()
                .any(|item| remove_in_value(item.get_mut(), node))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Parsing: TOML syntax, then serde, every error kept.

/// Errors reported from one file at most; the rest are left for the next
/// run.
const MAX_PARSE_ERRORS: usize = 100;

/// A TOML or serde error placed in the file: its problem, and the key or
/// array element it is about.
fn place<'n>(
    text: &str,
    nodes: &'n [Node],
    e: &toml::de::Error,
    unplaced: &str,
) -> (Problem, Option<&'n Node>) {
    // The document itself has the empty span 0..0: an error there is about
    // the file as a whole, not about line 1.
    let span = e.span().filter(|s| !(s.start == 0 && s.end == 0));
    let node = span.as_ref().and_then(|s| node_at(nodes, s));
    let message = e.message().trim().replace('\n', "; ");
    let mut path = node.map(|n| n.path.clone()).unwrap_or_default();
    // A message about a key of the table it was raised on (serde's missing
    // fields; a `discovery` setting of another source) is placed at the key.
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|m| m.split('`').next());
    if let Some(key) = named
        && path.0.last() != Some(&Seg::Key(key.to_owned()))
    {
        path = path.key(key);
    }
    let field = if path.0.is_empty() {
        unplaced.to_owned()
    } else {
        path.to_string()
    };
    let problem = Problem {
        field,
        line: span.map(|s| line_of(text, s.start)),
        message,
    };
    (problem, node)
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    let nodes = index_document(doc.get_ref());
    if !syntax.is_empty() {
        let mut problems: Vec<Problem> = Vec::new();
        for e in syntax.iter().take(MAX_PARSE_ERRORS) {
            let (problem, _) = place(text, &nodes, e, "(syntax)");
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        return Err(ConfigError { problems });
    }

    // serde stops at the first error. To report the others too, take the
    // key (or array element) it is about out of the document and try again.
    let mut current = doc.clone();
    let mut problems: Vec<Problem> = Vec::new();
    let mut removed: Vec<FieldPath> = Vec::new();
    for _ in 0..MAX_PARSE_ERRORS {
        let e = match Config::deserialize(toml::de::Deserializer::from(current.clone())) {
            Ok(mut config) if problems.is_empty() => {
                let lines = nodes
                    .iter()
                    .map(|n| {
                        let start = n.key.as_ref().unwrap_or(&n.value).start;
                        (n.path.clone(), line_of(text, start))
                    })
                    .collect();
                config.source = SourceMap {
                    lines: Some(Arc::new(lines)),
                };
                return Ok(config);
            }
            Ok(_) => break,
            Err(e) => e,
        };
        let (problem, node) = place(text, &nodes, &e, "(file)");
        // A key we took out is then missing, and the table it was in may
        // then be incomplete (`discovery = {}`): not news.
        let ours = removed.iter().any(|r| {
            let r = r.to_string();
            r == problem.field
                || (r.starts_with(&problem.field)
                    && matches!(r.as_bytes().get(problem.field.len()), Some(b'.' | b'[')))
        });
        if !ours && !problems.contains(&problem) {
            problems.push(problem);
        }
        let Some(node) = node else { break };
        if !remove_node(current.get_mut(), node) {
            break;
        }
        removed.push(node.path.clone());
    }
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    Err(ConfigError { problems })
}

// ---------------------------------------------------------------------------
// Validation and lints.

/// Problems found, with lines looked up by path.
struct Report<'a> {
    source: &'a SourceMap,
    problems: Vec<Problem>,
}

impl<'a> Report<'a> {
    fn new(source: &'a SourceMap) -> Self {
        Report {
            source,
            problems: Vec::new(),
        }
    }

    fn add(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.problems.push(Problem {
            field: path.to_string(),
            line: self.source.line(path),
            message: message.into(),
        });
    }

    /// Whether `path` itself was written in the file (not just a table
    /// around it).
    fn written(&self, path: &FieldPath) -> bool {
        self.source
            .lines
            .as_ref()
            .is_some_and(|lines| lines.contains_key(path))
    }

    /// `path` for a message, with its line when known: `routes[0] (line 7)`.
    fn at(&self, path: &FieldPath) -> String {
        match self.source.line(path) {
            Some(line) => format!("{path} (line {line})"),
            None => path.to_string(),
        }
    }

    /// The problems in the order of the file (unknown lines last).
    fn finish(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        self.problems
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Whether two listening addresses would collide (port 0 never does: it
/// asks for a fresh port each time).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, each
/// 1 to 63 long and not starting or ending with `-`.
fn dns_name_problem(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("has an empty label (two dots in a row, or a dot at either end)".into());
        }
        if label.len() > 63 {
            return Some(format!("has a label longer than 63 characters ({label:?})"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Some(format!(
                "has {c:?}, which is not allowed in a host name (letters, digits, '-', '_', '.')"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!(
                "has a label starting or ending with '-' ({label:?})"
            ));
        }
    }
    None
}

/// What is wrong with a `match.host` pattern, if anything.
fn host_problem(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("must not be empty; leave `host` out to match every host".into());
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => None,
            _ => Some(format!(
                "{host:?} is not a bracketed IPv6 address like \"[::1]\" (ports are ignored: leave them out)"
            )),
        };
    }
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    if host.contains(':') {
        return Some(format!(
            "{host:?} has a port; ports are ignored when matching, leave it out"
        ));
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if name.contains('*') {
        return Some(format!(
            "{host:?}: a wildcard is only allowed as a leading \"*.\", as in \"*.example.com\""
        ));
    }
    dns_name_problem(name).map(|why| {
        if wild {
            format!("{host:?}: the part after \"*.\" {why}")
        } else {
            format!("{host:?} {why}")
        }
    })
}

/// What is wrong with a `match.path_prefix`, if anything.
fn path_prefix_problem(prefix: &str) -> Option<String> {
    if !prefix.starts_with('/') {
        return Some(format!("{prefix:?} must start with '/'"));
    }
    if prefix.contains(['?', '#']) {
        return Some(format!(
            "{prefix:?} must be a path only, without '?' or '#' (queries are not matched)"
        ));
    }
    if prefix.parse::<http::uri::PathAndQuery>().is_err() {
        return Some(format!(
            "{prefix:?} is not a valid URI path (percent-encode spaces and other special characters)"
        ));
    }
    None
}

/// What is wrong with a `match.methods` entry, if anything.
fn method_problem(method: &str) -> Option<String> {
    if method.is_empty() {
        return Some("must not be empty".into());
    }
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Some(format!("{method:?} is not an HTTP method"));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some(format!(
            "{method:?}: methods are case-sensitive; write {:?}",
            method.to_ascii_uppercase()
        ));
    }
    None
}

/// A ratio that must be in `[0, 1]`.
fn check_unit(r: &mut Report<'_>, path: &FieldPath, value: f64) {
    if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
        r.add(path, format!("must be between 0 and 1, got {value}"));
    }
}

fn validate(c: &Config, r: &mut Report<'_>) {
    let root = FieldPath::root();

    // Listeners and admin: distinct addresses.
    if c.listeners.is_empty() {
        r.add(
            &root.key("listeners"),
            "at least one listener is required (leave `listeners` out for 127.0.0.1:4140)",
        );
    }
    let mut addresses: Vec<(FieldPath, SocketAddr)> = c
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (root.key("listeners").index(i).key("address"), l.address))
        .collect();
    addresses.push((root.at("admin.address"), c.admin.address));
    for j in 0..addresses.len() {
        if let Some((earlier, addr)) = addresses[..j]
            .iter()
            .find(|(_, a)| overlaps(*a, addresses[j].1))
        {
            let verb = if *addr == addresses[j].1 {
                "is already used by"
            } else {
                "overlaps"
            };
            let message = format!("{} {verb} {} ({addr})", addresses[j].1, r.at(earlier));
            r.add(&addresses[j].0, message);
        }
    }

    // Server.
    if c.server.max_header_bytes < 1024 {
        r.add(
            &root.at("server.max_header_bytes"),
            format!("must be at least 1024, got {}", c.server.max_header_bytes),
        );
    }
    if c.server.watch_interval.is_zero() {
        r.add(&root.at("server.watch_interval"), "must be greater than 0");
    }

    // Services.
    if c.services.is_empty() {
        r.add(&root.key("services"), "at least one service is required");
    }
    let mut names: HashMap<&str, FieldPath> = HashMap::new();
    for (i, s) in c.services.iter().enumerate() {
        let sp = root.key("services").index(i);
        validate_service(s, &sp, r);
        let name_path = sp.key("name");
        if s.name.is_empty() {
            r.add(&name_path, "must not be empty");
        } else if let Some(c) = s.name.chars().find(|c| !is_name_char(*c)) {
            r.add(
                &name_path,
                format!(
                    "service name {:?} has {c:?}; use letters, digits, '.', '_' and '-'",
                    s.name
                ),
            );
        }
        match names.get(s.name.as_str()) {
            Some(first) => {
                let message = format!(
                    "service name {:?} is already used by {}",
                    s.name,
                    r.at(first)
                );
                r.add(&name_path, message);
            }
            None => {
                names.insert(&s.name, sp);
            }
        }
    }

    // Routes.
    if c.routes.is_empty() {
        r.add(
            &root.key("routes"),
            "at least one route is required; a `[[routes]]` table with only `service = \"NAME\"` sends every request to that service",
        );
    }
    let mut known: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    known.sort_unstable();
    known.dedup();
    let check_ref = |r: &mut Report<'_>, path: &FieldPath, name: &str| {
        if !names.contains_key(name) {
            let listed = if known.is_empty() {
                "there are no services".to_owned()
            } else if known.len() <= 10 {
                format!("services: {}", known.join(", "))
            } else {
                format!("services: {}, …", known[..10].join(", "))
            };
            r.add(path, format!("no service named {name:?} ({listed})"));
        }
    };
    let mut route_names: HashMap<&str, FieldPath> = HashMap::new();
    for (i, route) in c.routes.iter().enumerate() {
        let rp = root.key("routes").index(i);
        if let Some(name) = &route.name {
            if name.is_empty() {
                r.add(
                    &rp.key("name"),
                    "must not be empty; leave it out for route-<index>",
                );
            } else if let Some(first) = route_names.get(name.as_str()) {
                let message = format!("route name {name:?} is already used by {}", r.at(first));
                r.add(&rp.key("name"), message);
            } else {
                route_names.insert(name, rp.clone());
            }
        }
        match (&route.service, route.split.is_empty()) {
            (Some(_), false) => r.add(&rp, "give either `service` or `split`, not both"),
            (None, true) => r.add(
                &rp,
                "a route needs `service = \"NAME\"` or a non-empty `split`",
            ),
            _ => {}
        }
        if let Some(service) = &route.service {
            check_ref(r, &rp.key("service"), service);
        }
        for (j, leg) in route.split.iter().enumerate() {
            check_ref(r, &rp.key("split").index(j).key("service"), &leg.service);
        }
        if !route.split.is_empty() && route.split.iter().all(|leg| leg.weight == 0) {
            r.add(&rp.key("split"), "the weights must add up to more than 0");
        }
        validate_match(&route.matches, &rp.key("match"), r);
    }
}

fn validate_service(s: &Service, sp: &FieldPath, r: &mut Report<'_>) {
    // Endpoints or discovery: exactly one.
    match (&s.discovery, s.endpoints.is_empty()) {
        (Some(_), false) => r.add(sp, "give either `endpoints` or `discovery`, not both"),
        (None, true) if r.written(&sp.key("endpoints")) => r.add(
            &sp.key("endpoints"),
            "a service needs at least one endpoint (or a `discovery` table instead of `endpoints`)",
        ),
        (None, true) => r.add(
            sp,
            "a service needs `endpoints = [\"host:port\", …]` or a `discovery` table \
             (`discovery = { dns = \"users.internal:8080\" }`)",
        ),
        _ => {}
    }
    if let Some(discovery) = &s.discovery {
        validate_discovery(discovery, &sp.key("discovery"), r);
    }
    validate_limits(&s.limits, &sp.key("limits"), r);
    if let Some(h) = &s.hedge {
        validate_hedge(h, &sp.key("hedge"), r);
    }
    let mut seen: HashMap<Address, FieldPath> = HashMap::new();
    for (j, spec) in s.endpoints.iter().enumerate() {
        let ep = sp.key("endpoints").index(j);
        let (address_path, weight) = match spec {
            EndpointSpec::Address(_) => (ep.clone(), None),
            EndpointSpec::Detailed { weight, .. } => (ep.key("address"), Some(*weight)),
        };
        match Endpoint::parse(spec.address()) {
            Err(e) => r.add(&address_path, e.to_string()),
            Ok(endpoint) => {
                if let Some(weight) = weight
                    && let Err(e) = endpoint.clone().with_weight(weight)
                {
                    r.add(&ep.key("weight"), e.to_string());
                }
                match seen.get(endpoint.address()) {
                    Some(first) => {
                        let message = format!(
                            "endpoint {:?} is listed twice (first at {})",
                            spec.address(),
                            r.at(first)
                        );
                        r.add(&address_path, message);
                    }
                    None => {
                        seen.insert(endpoint.address().clone(), ep);
                    }
                }
            }
        }
    }

    // Retry.
    let retry = &s.retry;
    if retry.max_attempts < 1 {
        r.add(
            &sp.at("retry.max_attempts"),
            "must be at least 1 (1 means no retries)",
        );
    }
    if retry.backoff_base > retry.backoff_cap {
        r.add(
            &sp.at("retry.backoff_base"),
            format!(
                "backoff_base ({}) must not exceed backoff_cap ({})",
                format_duration(retry.backoff_base),
                format_duration(retry.backoff_cap)
            ),
        );
    }
    if retry.per_try_timeout == Some(Duration::ZERO) {
        r.add(
            &sp.at("retry.per_try_timeout"),
            "must be greater than 0 (\"none\" for no per-try timeout)",
        );
    }
    for (k, status) in retry.retryable_statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            r.add(
                &sp.at("retry.retryable_statuses").index(k),
                format!("{status} is not an HTTP status (100 to 599)"),
            );
        }
    }

    // Budget.
    let ratio = s.budget.ratio;
    if !(ratio.is_finite() && ratio >= 0.0) {
        r.add(
            &sp.at("budget.ratio"),
            format!("must be a finite number at least 0, got {ratio}"),
        );
    }

    // Deadline.
    if s.deadline.timeout == Some(Duration::ZERO) {
        r.add(
            &sp.at("deadline.timeout"),
            "must be greater than 0 (\"none\" for no default deadline)",
        );
    }
    if s.deadline.max_timeout.is_zero() {
        r.add(&sp.at("deadline.max_timeout"), "must be greater than 0");
    }

    // Ejection.
    let ej = &s.ejection;
    let ep = sp.key("ejection");
    check_unit(r, &ep.key("success_rate"), ej.success_rate);
    check_unit(r, &ep.key("jitter"), ej.jitter);
    check_unit(r, &ep.key("max_ejection_percent"), ej.max_ejection_percent);
    check_unit(r, &ep.key("panic_threshold"), ej.panic_threshold);
    if ej.base_penalty > ej.max_penalty {
        r.add(
            &ep.key("base_penalty"),
            format!(
                "base_penalty ({}) must not exceed max_penalty ({})",
                format_duration(ej.base_penalty),
                format_duration(ej.max_penalty)
            ),
        );
    }

    // Breaker.
    let br = &s.breaker;
    let t = br.error_threshold;
    if !(t.is_finite() && t > 0.0 && t <= 1.0) {
        r.add(
            &sp.at("breaker.error_threshold"),
            format!("must be greater than 0 and at most 1, got {t}"),
        );
    }
    if br.half_open_probes < 1 {
        r.add(&sp.at("breaker.half_open_probes"), "must be at least 1");
    }
}

/// Checks a discovery source with the source's own checks (names, settings,
/// format detection), each problem at its field.
fn validate_discovery(d: &Discovery, dp: &FieldPath, r: &mut Report<'_>) {
    let at = dp.key(d.kind());
    match d {
        #[cfg(feature = "dns")]
        Discovery::Dns(dns) => {
            use crate::discover::dns::DnsError;
            if let Err(e) = dns.to_dns() {
                match &e {
                    DnsError::InvalidSetting {
                        setting, reason, ..
                    } => {
                        let field = match *setting {
                            "refresh_bounds" if dns.refresh_min.is_some() => "refresh_min",
                            "refresh_bounds" => "refresh_max",
                            other => other,
                        };
                        let message = if *setting == "refresh_bounds" {
                            format!("refresh_min and refresh_max: {reason}")
                        } else {
                            reason.clone()
                        };
                        r.add(&dp.key(field), message);
                    }
                    _ => r.add(&at, e.to_string()),
                }
            }
        }
        #[cfg(not(feature = "dns"))]
        Discovery::Dns(_) => r.add(
            &at,
            "this build has no DNS support: rebuild with --features dns",
        ),
        Discovery::File(file) => {
            if file.path.as_os_str().is_empty() {
                r.add(&at, "the path must not be empty");
            } else if file.format.is_none()
                && crate::discover::file::Format::from_path(&file.path).is_none()
            {
                r.add(
                    &at,
                    format!(
                        "cannot tell the format of {:?} from its name: name it *.json or *.toml, \
                         or set `format = \"json\"` or `\"toml\"`",
                        file.path
                    ),
                );
            }
            if file.interval.is_zero() {
                r.add(&dp.key("interval"), "must be greater than 0");
            }
        }
        #[cfg(feature = "kubernetes")]
        Discovery::Kubernetes(k) => {
            use crate::discover::kubernetes::check_label;
            let names = [
                ("namespace", Some(&k.namespace)),
                ("service", Some(&k.service)),
                ("port", k.port.as_ref()),
            ];
            for (field, value) in names {
                let Some(value) = value else { continue };
                if let Err(e) = check_label(field, value) {
                    r.add(&at.key(field), e.to_string());
                }
            }
        }
        #[cfg(not(feature = "kubernetes"))]
        Discovery::Kubernetes(_) => r.add(
            &at,
            "this build has no Kubernetes support: rebuild with --features kubernetes",
        ),
    }
}

/// Checks hedging's ranges (the layer would silently clamp them).
fn validate_hedge(h: &Hedge, hp: &FieldPath, r: &mut Report<'_>) {
    if h.min_samples < 1 {
        r.add(&hp.key("min_samples"), "must be at least 1");
    }
    if h.fallback_delay.is_zero() {
        r.add(
            &hp.key("fallback_delay"),
            "must be greater than 0 (every request would be sent twice)",
        );
    }
    if h.window.is_zero() {
        r.add(&hp.key("window"), "must be greater than 0");
    }
    let ratio = h.budget_ratio;
    if !(ratio.is_finite() && ratio > 0.0 && ratio <= 1.0) {
        r.add(
            &hp.key("budget_ratio"),
            format!(
                "must be a number greater than 0 and at most 1 (a share of requests), got {ratio}"
            ),
        );
    }
}

/// Checks the limits' ranges (the layers would silently clamp them).
fn validate_limits(l: &Limits, lp: &FieldPath, r: &mut Report<'_>) {
    use crate::limit::rate::{MAX_RATE, MIN_RATE};
    if let Some(c) = &l.concurrency {
        let cp = lp.key("concurrency");
        if c.max < 1 {
            r.add(&cp.key("max"), "must be at least 1");
        }
        if c.max_wait == Some(Duration::ZERO) {
            r.add(
                &cp.key("max_wait"),
                "must be greater than 0 (\"none\" waits as long as the request's deadline allows; \
                 `queue = 0` sheds instead of queueing)",
            );
        }
    }
    if let Some(rate) = &l.rate {
        let rp = lp.key("rate");
        let per_second = rate.per_second;
        if !(per_second.is_finite() && (MIN_RATE..=MAX_RATE).contains(&per_second)) {
            r.add(
                &rp.key("per_second"),
                format!(
                    "must be a finite number of requests a second from {MIN_RATE:e} to {MAX_RATE:e}, got {per_second}"
                ),
            );
        }
        if rate.burst == Some(0) {
            r.add(&rp.key("burst"), "must be at least 1");
        }
        if let Some(name) = &rate.key_header
            && http::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            r.add(
                &rp.key("key_header"),
                format!("{name:?} is not a valid header name"),
            );
        }
        if rate.max_keys < 1 {
            r.add(&rp.key("max_keys"), "must be at least 1");
        }
    }
    if let Some(t) = &l.throttle {
        let tp = lp.key("throttle");
        if !(t.k.is_finite() && t.k >= 1.0) {
            r.add(
                &tp.key("k"),
                format!(
                    "must be a finite number at least 1 (the backend is offered at least what it accepts), got {}",
                    t.k
                ),
            );
        }
        if t.window.is_zero() {
            r.add(&tp.key("window"), "must be greater than 0");
        }
    }
}

fn validate_match(m: &Match, mp: &FieldPath, r: &mut Report<'_>) {
    if let Some(host) = &m.host
        && let Some(why) = host_problem(host)
    {
        r.add(&mp.key("host"), why);
    }
    if let Some(prefix) = &m.path_prefix
        && let Some(why) = path_prefix_problem(prefix)
    {
        r.add(&mp.key("path_prefix"), why);
    }
    let mut lowered: HashMap<String, &str> = HashMap::new();
    for (name, value) in &m.headers {
        let hp = mp.key("headers").key(name);
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            r.add(&hp, format!("{name:?} is not a valid header name"));
            continue;
        }
        if http::HeaderValue::from_str(value).is_err() {
            r.add(
                &hp,
                format!(
                    "{value:?} is not a valid header value (visible ASCII, spaces and tabs only)"
                ),
            );
        }
        if let Some(first) = lowered.insert(name.to_ascii_lowercase(), name) {
            r.add(
                &hp,
                format!("header {name:?} is also given as {first:?} (names are case-insensitive)"),
            );
        }
    }
    for (k, method) in m.methods.iter().enumerate() {
        if let Some(why) = method_problem(method) {
            r.add(&mp.key("methods").index(k), why);
        }
    }
}

/// Whether every request `b` matches also matches `a` (so a route with `a`
/// before one with `b` leaves the latter unreachable). Conservative: when
/// in doubt, `false`.
fn covers(a: &Match, b: &Match) -> bool {
    let host = match (&a.host, &b.host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ha), Some(hb)) => host_covers(ha, hb),
    };
    let path = match (&a.path_prefix, &b.path_prefix) {
        (None, _) => true,
        // Every request path starts with '/'.
        (Some(pa), _) if pa == "/" => true,
        (Some(_), None) => false,
        (Some(pa), Some(pb)) => {
            pb == pa
                || (pb.starts_with(pa.as_str())
                    && (pa.ends_with('/') || pb[pa.len()..].starts_with('/')))
        }
    };
    let headers = a.headers.iter().all(|(name, value)| {
        b.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
    });
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    host && path && headers && methods
}

fn host_covers(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    // `*.example.com` matches every name ending in `.example.com`, at any
    // depth, so it covers those names and narrower wildcards.
    let Some(suffix) = a.strip_prefix('*') else {
        return false;
    };
    let name = b.strip_prefix('*').unwrap_or(b);
    name.len() > suffix.len()
        && name.is_char_boundary(name.len() - suffix.len())
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

fn is_catch_all(m: &Match) -> bool {
    covers(m, &Match::default())
}

fn lint(c: &Config, r: &mut Report<'_>) {
    let root = FieldPath::root();

    // Routes that can never match: an earlier route takes all their requests.
    let mut live = vec![true; c.routes.len()];
    for (j, route) in c.routes.iter().enumerate() {
        if let Some(i) = (0..j).find(|&i| covers(&c.routes[i].matches, &route.matches)) {
            live[j] = false;
            let earlier = root.key("routes").index(i);
            let message = if is_catch_all(&c.routes[i].matches) {
                format!(
                    "unreachable: {} before it matches every request",
                    r.at(&earlier)
                )
            } else {
                format!(
                    "unreachable: {} before it matches every request this route matches",
                    r.at(&earlier)
                )
            };
            r.add(&root.key("routes").index(j), message);
        }
    }

    // Which live routes reach each service.
    let mut reaching: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, route) in c.routes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let mut targets: Vec<&str> = route.service.iter().map(String::as_str).collect();
        targets.extend(
            route
                .split
                .iter()
                .filter(|leg| leg.weight > 0)
                .map(|leg| leg.service.as_str()),
        );
        for target in targets {
            let routes = reaching.entry(target).or_default();
            if routes.last() != Some(&i) {
                routes.push(i);
            }
        }
    }

    for (i, s) in c.services.iter().enumerate() {
        let sp = root.key("services").index(i);
        let retry = &s.retry;
        let timeout = s.deadline.timeout;

        if let (Some(per_try), Some(timeout)) = (retry.per_try_timeout, timeout) {
            let total = per_try.saturating_mul(retry.max_attempts.max(1));
            if total > timeout {
                let message = if retry.max_attempts <= 1 || per_try >= timeout {
                    format!(
                        "per_try_timeout ({}) is not shorter than deadline.timeout ({}): the deadline always ends an attempt first, so the per-try timeout never fires",
                        format_duration(per_try),
                        format_duration(timeout)
                    )
                } else {
                    format!(
                        "per_try_timeout × max_attempts ({} × {} = {}) exceeds deadline.timeout ({}): when attempts time out, the later ones can never run",
                        retry.max_attempts,
                        format_duration(per_try),
                        format_duration(total),
                        format_duration(timeout)
                    )
                };
                r.add(&sp.at("retry.per_try_timeout"), message);
            }
        }

        if s.budget.ratio > 1.0 {
            r.add(
                &sp.at("budget.ratio"),
                format!(
                    "a ratio of {} allows more retries than requests: the budget no longer stops retry storms (0.2 is the default)",
                    s.budget.ratio
                ),
            );
        }

        if retry.max_attempts > 1
            && let Some(t) = timeout
            && retry.backoff_cap >= t
        {
            r.add(
                &sp.at("retry.backoff_cap"),
                format!(
                    "backoff_cap ({}) is not shorter than deadline.timeout ({}): a retry that backs off that long always misses the deadline",
                    format_duration(retry.backoff_cap),
                    format_duration(t)
                ),
            );
        }

        if let Some(t) = timeout
            && t > s.deadline.max_timeout
        {
            r.add(
                &sp.at("deadline.timeout"),
                format!(
                    "the default deadline ({}) is longer than max_timeout ({}), the longest a caller may ask for",
                    format_duration(t),
                    format_duration(s.deadline.max_timeout)
                ),
            );
        }

        if let Some(discovery) = &s.discovery {
            lint_discovery(c, discovery, &sp.key("discovery"), r);
        }
        lint_limits(s, &sp.key("limits"), r);
        if let Some(h) = &s.hedge {
            lint_hedge(s, h, &sp.key("hedge"), r);
        }

        match reaching.get(s.name.as_str()) {
            None => {
                r.add(
                    &sp.key("name"),
                    format!("no reachable route sends traffic to service {:?}", s.name),
                );
            }
            Some(routes) if retry.max_attempts > 1 => {
                let only_unsafe = routes.iter().all(|&k| {
                    let methods = &c.routes[k].matches.methods;
                    !methods.is_empty()
                        && methods.iter().all(|m| {
                            http::Method::from_bytes(m.as_bytes())
                                .is_ok_and(|m| !crate::retry::is_idempotent(&m))
                        })
                });
                if only_unsafe {
                    let listed: Vec<String> = routes
                        .iter()
                        .map(|&k| r.at(&root.key("routes").index(k)))
                        .collect();
                    r.add(
                        &sp.at("retry.max_attempts"),
                        format!(
                            "max_attempts is {}, but every route to {:?} ({}) takes only non-idempotent methods: only requests refused before they were sent are retried (set max_attempts = 1 to say so)",
                            retry.max_attempts,
                            s.name,
                            listed.join(", ")
                        ),
                    );
                }
            }
            Some(_) => {}
        }
    }
}

/// Refreshes and polls more often than this are lints: they load DNS
/// servers and file systems for changes that rarely come that fast.
const FAST_REFRESH: Duration = Duration::from_millis(100);

/// A throttle window shorter than this reacts to a handful of refusals.
const SHORT_THROTTLE_WINDOW: Duration = Duration::from_secs(10);

fn lint_discovery(c: &Config, d: &Discovery, dp: &FieldPath, r: &mut Report<'_>) {
    let at = dp.key(d.kind());
    match d {
        Discovery::Dns(dns) => {
            for (key, value) in [
                ("refresh_min", dns.refresh_min),
                ("refresh_max", dns.refresh_max),
            ] {
                if let Some(value) = value
                    && value < FAST_REFRESH
                {
                    r.add(
                        &dp.key(key),
                        format!(
                            "{key} of {} re-resolves more than 10 times a second: a load on the DNS servers for changes that rarely come that fast",
                            format_duration(value)
                        ),
                    );
                }
            }
        }
        Discovery::File(file) => {
            if file.interval < FAST_REFRESH {
                r.add(
                    &dp.key("interval"),
                    format!(
                        "an interval of {} checks the file more than 10 times a second",
                        format_duration(file.interval)
                    ),
                );
            }
            let path = c.resolve_path(&file.path);
            match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => r.add(
                    &at,
                    format!(
                        "{} does not exist (yet): the service has no endpoints until it appears",
                        path.display()
                    ),
                ),
                // The file as the source would read it now.
                _ => {
                    if let Err(e) = file.to_watch(c).load() {
                        r.add(
                            &at,
                            format!("{e}: the service has no endpoints until it is fixed"),
                        );
                    }
                }
            }
        }
        Discovery::Kubernetes(_) => {}
    }
}

/// Hedging that cannot work, or costs more than it looks.
fn lint_hedge(s: &Service, h: &Hedge, hp: &FieldPath, r: &mut Report<'_>) {
    use crate::hedge::HedgeDelay;
    let first = match h.delay {
        HedgeDelay::Fixed(d) => d,
        _ => h.fallback_delay,
    };
    if let Some(timeout) = s.deadline.timeout
        && first >= timeout
    {
        let key = if matches!(h.delay, HedgeDelay::Fixed(_)) {
            "delay"
        } else {
            "fallback_delay"
        };
        r.add(
            &hp.key(key),
            format!(
                "{} is not shorter than deadline.timeout ({}): no backup would ever be sent",
                format_duration(first),
                format_duration(timeout)
            ),
        );
    }
    if h.budget_ratio.is_finite() && h.budget_ratio > 0.2 {
        r.add(
            &hp.key("budget_ratio"),
            format!(
                "{} lets hedging add up to {:.0} % load; hedges are meant to be rare (the default is {})",
                h.budget_ratio,
                h.budget_ratio * 100.0,
                crate::hedge::DEFAULT_BUDGET_RATIO
            ),
        );
    }
    if let crate::hedge::HedgeDelay::Percentile(q) = h.delay
        && q < 0.5
    {
        r.add(
            &hp.key("delay"),
            format!(
                "p{} hedges more than half of all requests whenever the budget allows",
                q * 100.0
            ),
        );
    }
}

fn lint_limits(s: &Service, lp: &FieldPath, r: &mut Report<'_>) {
    let timeout = s.deadline.timeout;
    if let Some(c) = &s.limits.concurrency {
        let cp = lp.key("concurrency");
        match (c.max_wait, timeout) {
            (Some(wait), Some(timeout)) if wait > timeout => r.add(
                &cp.key("max_wait"),
                format!(
                    "max_wait ({}) is longer than deadline.timeout ({}): a queued request without a deadline header is shed at its deadline first",
                    format_duration(wait),
                    format_duration(timeout)
                ),
            ),
            (None, None) if c.queue > 0 => r.add(
                &cp.key("max_wait"),
                "max_wait and deadline.timeout are both \"none\": a queued request without a deadline header may wait for a slot for ever",
            ),
            _ => {}
        }
    }
    if let Some(rate) = &s.limits.rate
        && rate.key_header.is_none()
        && rate.without_key != WithoutKey::default()
    {
        r.add(
            &lp.at("rate.without_key"),
            "has no effect without key_header: every request shares the one bucket",
        );
    }
    if let Some(t) = &s.limits.throttle
        && !t.window.is_zero()
        && t.window < SHORT_THROTTLE_WINDOW
    {
        r.add(
            &lp.at("throttle.window"),
            format!(
                "a window of {} is shorter than {}: a handful of refusals swings the rejection probability (the default is {})",
                format_duration(t.window),
                format_duration(SHORT_THROTTLE_WINDOW),
                format_duration(crate::limit::throttle::DEFAULT_WINDOW)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PALISADE: &str = include_str!("../../examples/palisade.toml");
    const MINIMAL: &str = include_str!("../../examples/minimal.toml");

    /// The problems of an invalid file, as (field, line, message).
    fn errors(text: &str) -> Vec<(String, Option<usize>, String)> {
        match Config::from_toml(text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e
                .problems
                .into_iter()
                .map(|p| (p.field, p.line, p.message))
                .collect(),
        }
    }

    /// Asserts one problem has this field and line, and a message with `needle`.
    #[track_caller]
    fn assert_has(
        problems: &[(String, Option<usize>, String)],
        field: &str,
        line: Option<usize>,
        needle: &str,
    ) {
        assert!(
            problems
                .iter()
                .any(|(f, l, m)| f == field && *l == line && m.contains(needle)),
            "no problem {field} at {line:?} containing {needle:?} in:\n{problems:#?}"
        );
    }

    /// The lints of a valid file, as (field, line, message).
    fn lints(text: &str) -> Vec<(String, Option<usize>, String)> {
        let config = Config::from_toml(text).unwrap_or_else(|e| panic!("invalid:\n{e}"));
        config
            .lints()
            .into_iter()
            .map(|p| (p.field, p.line, p.message))
            .collect()
    }

    const ROUTE: &str = "\n[[routes]]\nservice = \"app\"\n";

    fn examples_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
    }

    #[test]
    fn examples_parse_and_have_no_lints() {
        for (name, text) in [("palisade.toml", PALISADE), ("minimal.toml", MINIMAL)] {
            let config = Config::from_file_text(text, &examples_dir().join(name))
                .unwrap_or_else(|e| panic!("{name}:\n{e}"));
            assert_eq!(config.lints(), vec![], "{name}");
        }
        let config = Config::from_toml(PALISADE).unwrap();
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.routes.len(), 5);
        // The fuller example writes every default out for `web`.
        let web = &config.services[0];
        assert_eq!(web.balancer, Balancer::default());
        assert_eq!(web.retry, Retry::default());
        assert_eq!(web.budget, Budget::default());
        assert_eq!(web.deadline, Deadline::default());
        assert_eq!(web.ejection, Ejection::default());
        assert_eq!(web.breaker, Breaker::default());
        assert_eq!(web.limits.concurrency, Some(Concurrency::default()));
        assert_eq!(web.limits.throttle, Some(Throttle::default()));
        let staging = &config.services[1];
        assert!(staging.endpoints.is_empty());
        assert!(
            matches!(&staging.discovery, Some(Discovery::File(f)) if f.path == Path::new("staging-endpoints.json")),
            "{:?}",
            staging.discovery
        );
        // Its endpoints file is good.
        let file = match &staging.discovery {
            Some(Discovery::File(f)) => f,
            _ => unreachable!(),
        };
        let config = config.clone().with_base_dir(examples_dir());
        assert_eq!(file.to_watch(&config).load().unwrap().len(), 2);
        assert_eq!(config.server, Server::default());
        assert_eq!(config.admin, Admin::default());
        assert_eq!(config.listeners, vec![Listener::default()]);
        assert_eq!(config.routes[2].matches.methods, ["GET", "HEAD"]);
        let minimal = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(minimal.listeners, vec![Listener::default()]);
    }

    #[test]
    fn defaults_match_the_library() {
        let lib = crate::balance::EjectionSettings::default();
        let ours = Ejection::default();
        assert_eq!(
            (
                lib.enabled,
                lib.consecutive_failures,
                lib.success_rate,
                lib.window
            ),
            (
                ours.enabled,
                ours.consecutive_failures,
                ours.success_rate,
                ours.window
            )
        );
        assert_eq!(
            (lib.min_requests, lib.base_penalty, lib.max_penalty),
            (ours.min_requests, ours.base_penalty, ours.max_penalty)
        );
        assert_eq!(
            (lib.jitter, lib.max_ejection_percent, lib.panic_threshold),
            (ours.jitter, ours.max_ejection_percent, ours.panic_threshold)
        );
        let lib = crate::balance::BalanceSettings::default();
        let ours = Balancer::default();
        assert_eq!(
            (
                lib.decay,
                lib.default_rtt,
                lib.failure_penalty,
                lib.endpoint_wait
            ),
            (
                ours.decay,
                ours.default_rtt,
                ours.failure_penalty,
                ours.endpoint_wait
            )
        );
        assert_eq!(
            crate::retry::Backoff::default(),
            crate::retry::Backoff::new(Retry::default().backoff_base, Retry::default().backoff_cap)
        );

        // Limits: a table written empty is the layer's defaults.
        let limits = Config::from_toml(&format!(
            "{TWO}limits = {{ concurrency = {{}}, rate = {{ per_second = 7.5 }}, throttle = {{}} }}\n{ROUTE}"
        ))
        .unwrap()
        .services[0]
            .limits
            .clone();
        let c = limits.concurrency.unwrap();
        let lib = crate::limit::ConcurrencyLimitLayer::new("x", Default::default())
            .unwrap()
            .handle();
        assert_eq!(
            (c.max, c.queue, c.max_wait),
            (lib.max(), lib.queue(), lib.max_wait())
        );
        let rate = limits.rate.unwrap();
        let settings = crate::limit::RateLimitSettings {
            per_second: 7.5,
            ..Default::default()
        };
        let lib = crate::limit::RateLimitLayer::new("x", settings)
            .unwrap()
            .keyed_by_header(http::HeaderName::from_static("x-k"))
            .handle();
        assert_eq!((rate.burst, rate.max_keys), (None, lib.max_keys()));
        assert_eq!(lib.burst(), 8, "the library's burst: one second's worth");
        assert_eq!(WithoutKey::default(), WithoutKey::Shared);
        assert_eq!(
            crate::limit::WithoutKey::default(),
            crate::limit::WithoutKey::Shared
        );
        let t = limits.throttle.unwrap();
        let lib = crate::limit::ThrottleLayer::new("x", Default::default())
            .unwrap()
            .handle();
        assert_eq!((t.k, t.window), (lib.k(), lib.window()));

        // Discovery: the file source's interval; DNS's enums.
        assert_eq!(
            FileDiscovery::new("x.json").interval,
            crate::discover::file::DEFAULT_INTERVAL
        );
        #[cfg(feature = "dns")]
        {
            use crate::discover::dns;
            assert_eq!(
                (dns::OnNxdomain::default(), dns::IpFamily::default()),
                (dns::OnNxdomain::Keep, dns::IpFamily::Both)
            );
            assert_eq!(
                (OnNxdomain::default(), IpFamily::default()),
                (OnNxdomain::Keep, IpFamily::Both)
            );
        }
    }

    /// The defaults docs/config.md states for discovery and limits are the
    /// library's constants.
    #[test]
    fn docs_state_the_library_defaults() {
        let doc = include_str!("../../docs/config.md");
        let row = |section: &str, key: &str| -> &str {
            let start = doc.find(section).unwrap_or_else(|| panic!("{section}"));
            let rest = &doc[start..];
            let end = rest[section.len()..]
                .find("\n#")
                .map_or(rest.len(), |e| e + section.len());
            let rows = &rest[..end];
            let at = rows
                .find(&format!("\n| `{key}` "))
                .unwrap_or_else(|| panic!("{section}: no row for {key}"));
            rows[at + 1..].lines().next().unwrap()
        };
        let has = |section: &str, key: &str, default: String| {
            let row = row(section, key);
            assert!(
                row.contains(&default),
                "{section} {key}: {default} not in {row}"
            );
        };
        let d = |d: Duration| format!("`\"{}\"`", format_duration(d));
        use crate::limit::{concurrency, rate, throttle};
        let c = "#### `concurrency`";
        has(c, "max", format!("`{}`", concurrency::DEFAULT_MAX));
        has(c, "queue", format!("`{}`", concurrency::DEFAULT_QUEUE));
        has(c, "max_wait", d(concurrency::DEFAULT_MAX_WAIT));
        let r = "#### `rate`";
        has(r, "max_keys", format!("`{}`", rate::DEFAULT_MAX_KEYS));
        has(r, "per_second", format!("({:e})", rate::MIN_RATE));
        has(r, "per_second", format!("({:e})", rate::MAX_RATE));
        let t = "#### `throttle`";
        has(t, "k", format!("`{:?}`", throttle::DEFAULT_K));
        has(t, "window", d(throttle::DEFAULT_WINDOW));
        let h = "### `services.hedge`";
        let pct = crate::hedge::DEFAULT_PERCENTILE * 100.0;
        has(h, "delay", format!("`\"p{pct}\"`"));
        has(
            h,
            "min_samples",
            format!("`{}`", crate::hedge::DEFAULT_MIN_SAMPLES),
        );
        has(h, "fallback_delay", d(crate::hedge::DEFAULT_FALLBACK_DELAY));
        has(h, "window", d(crate::hedge::DEFAULT_WINDOW));
        has(
            h,
            "budget_ratio",
            format!("`{}`", crate::hedge::DEFAULT_BUDGET_RATIO),
        );
        has(
            "#### File",
            "interval",
            d(crate::discover::file::DEFAULT_INTERVAL),
        );
        #[cfg(feature = "dns")]
        {
            use crate::discover::dns;
            has("#### DNS", "refresh_min", d(dns::DEFAULT_MIN_REFRESH));
            has("#### DNS", "refresh_max", d(dns::DEFAULT_MAX_REFRESH));
        }
    }

    #[test]
    fn discovery_sources_parse() {
        let text = r#"[[services]]
name = "a"
discovery = { dns = "users.internal:8080" }

[[services]]
name = "b"
[services.discovery]
dns = "_http._tcp.users.internal"
refresh_min = "2s"
refresh_max = "30s"
on_nxdomain = "clear"
ip_family = "v4"
nameservers = ["127.0.0.1:5353", "[::1]:53"]
query_timeout = "500ms"

[[services]]
name = "c"
discovery = { file = "users.json" }

[[services]]
name = "d"
discovery = { file = "/etc/users", format = "toml", interval = "250ms" }

[[services]]
name = "e"
discovery = { kubernetes = { namespace = "shop", service = "users", port = "http" } }

[[routes]]
split = [{ service = "a", weight = 1 }, { service = "b", weight = 1 }, { service = "c", weight = 1 }, { service = "d", weight = 1 }, { service = "e", weight = 1 }]
"#;
        let config = match Config::from_toml(text) {
            Ok(config) => config,
            // Only the sources this build lacks may be refused.
            Err(e) => {
                assert!(
                    e.problems
                        .iter()
                        .all(|p| p.message.contains("rebuild with --features")),
                    "{e}"
                );
                parse(text).unwrap()
            }
        };
        let d: Vec<&Discovery> = config
            .services
            .iter()
            .map(|s| s.discovery.as_ref().unwrap())
            .collect();
        assert_eq!(
            d[0],
            &Discovery::Dns(DnsDiscovery::new("users.internal:8080"))
        );
        let Discovery::Dns(b) = d[1] else { panic!() };
        assert_eq!(b.name, "_http._tcp.users.internal");
        assert_eq!(
            (b.refresh_min, b.refresh_max, b.query_timeout),
            (
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(30)),
                Some(Duration::from_millis(500))
            )
        );
        assert_eq!(
            (b.on_nxdomain, b.ip_family),
            (OnNxdomain::Clear, IpFamily::V4)
        );
        assert_eq!(
            b.nameservers.as_deref().unwrap(),
            [
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(d[2], &Discovery::File(FileDiscovery::new("users.json")));
        let Discovery::File(f) = d[3] else { panic!() };
        assert_eq!(
            (f.path.as_path(), f.format, f.interval),
            (
                Path::new("/etc/users"),
                Some(FileFormat::Toml),
                Duration::from_millis(250)
            )
        );
        let Discovery::Kubernetes(k) = d[4] else {
            panic!()
        };
        assert_eq!(
            (k.namespace.as_str(), k.service.as_str(), k.port.as_deref()),
            ("shop", "users", Some("http"))
        );
        assert!(config.services.iter().all(|s| s.endpoints.is_empty()));

        // Through TOML and JSON and back, as `/config` shows it.
        let again = parse(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(
            json["services"][0]["discovery"],
            serde_json::json!({ "dns": "users.internal:8080", "on_nxdomain": "keep", "ip_family": "both" })
        );
        assert_eq!(json["services"][1]["discovery"]["refresh_max"], "30s");
        assert_eq!(
            json["services"][1]["discovery"]["nameservers"],
            serde_json::json!(["127.0.0.1:5353", "[::1]:53"])
        );
        assert_eq!(
            json["services"][2]["discovery"],
            serde_json::json!({ "file": "users.json", "interval": "1s" })
        );
        assert_eq!(
            json["services"][4]["discovery"],
            serde_json::json!({ "kubernetes": { "namespace": "shop", "service": "users", "port": "http" } })
        );
        assert!(json["services"][2].get("endpoints").is_none());
    }

    #[test]
    fn discovery_or_endpoints_exactly_one() {
        let p = errors(&format!(
            "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\ndiscovery = {{ file = \"x.json\" }}\n\
             [[services]]\nname = \"idle\"\n\
             [[services]]\nname = \"empty\"\nendpoints = []\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0]",
            Some(1),
            "give either `endpoints` or `discovery`, not both",
        );
        assert_has(
            &p,
            "services[1]",
            Some(5),
            "a service needs `endpoints = [\"host:port\", …]` or a `discovery` table",
        );
        assert_has(
            &p,
            "services[2].endpoints",
            Some(9),
            "at least one endpoint (or a `discovery` table instead of `endpoints`)",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
    }

    #[test]
    fn discovery_shape_errors_name_the_field() {
        let svc = |d: &str| format!("[[services]]\nname = \"app\"\ndiscovery = {d}\n{ROUTE}");
        let p = errors(&svc(r#"{ dns = "a.example:80", file = "x.json" }"#));
        assert_has(
            &p,
            "services[0].discovery",
            Some(3),
            "give one source, not 2: `dns` and `file`",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        let p = errors(&svc("{}"));
        assert_has(
            &p,
            "services[0].discovery",
            Some(3),
            "names no source: give one of `dns`, `file` or `kubernetes`",
        );
        // The follow-on "no source" is not reported after the real problem.
        let p = errors(&svc(r#"{ dsn = "a.example:80" }"#));
        assert_has(
            &p,
            "services[0].discovery.dsn",
            Some(3),
            "unknown field `dsn`, expected one of `dns`, `file`, `kubernetes`",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        // Another source's settings are named as such.
        let p = errors(&svc(r#"{ dns = "a.example:80", interval = "1s" }"#));
        assert_has(
            &p,
            "services[0].discovery.interval",
            Some(3),
            "unknown field `interval`: a setting of file discovery, not of dns discovery (which takes `refresh_min`, `refresh_max`, `on_nxdomain`, `ip_family`, `nameservers` and `query_timeout`)",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        let p = errors(
            "[[services]]\nname = \"app\"\n[services.discovery]\nfile = \"x.json\"\n\
             refresh_max = \"1s\"\n[[routes]]\nservice = \"app\"\n",
        );
        assert_has(
            &p,
            "services[0].discovery.refresh_max",
            Some(3),
            "a setting of dns discovery, not of file discovery (which takes `interval` and `format`)",
        );
        let p = errors(&svc(
            r#"{ kubernetes = { namespace = "shop", service = "users" }, format = "json" }"#,
        ));
        assert_has(
            &p,
            "services[0].discovery.format",
            Some(3),
            "a setting of file discovery, not of kubernetes discovery (whose settings are in its own table)",
        );
        let p = errors(&svc(r#"{ interval = "1s" }"#));
        assert_has(&p, "services[0].discovery", Some(3), "names no source");
        let p = errors(&svc(r#"{ kubernetes = { namespace = "shop" } }"#));
        assert_has(
            &p,
            "services[0].discovery.kubernetes.service",
            Some(3),
            "missing field `service`",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        let p = errors(&svc("{ dns = 5 }"));
        assert_has(
            &p,
            "services[0].discovery.dns",
            Some(3),
            "invalid type: integer `5`, expected a string",
        );
        let p = errors(&svc(r#"{ kubernetes = "users" }"#));
        assert_has(
            &p,
            "services[0].discovery.kubernetes",
            Some(3),
            "expected a table with `namespace`, `service` and (optionally) `port`",
        );
        let p = errors(&svc(r#"{ file = "x", format = "yaml" }"#));
        assert_has(
            &p,
            "services[0].discovery.format",
            Some(3),
            "unknown variant `yaml`, expected `json` or `toml`",
        );
        let p = errors(
            "[[services]]\nname = \"app\"\n[services.discovery]\ndns = \"a.example:80\"\n\
             nameservers = [\"127.0.0.1:53\", \"ns.example:53\"]\nrefresh_min = \"soon\"\n\
             on_nxdomain = \"drop\"\n[[routes]]\nservice = \"app\"\n",
        );
        assert_has(
            &p,
            "services[0].discovery.nameservers[1]",
            Some(5),
            "invalid socket address \"ns.example:53\"",
        );
        assert_has(
            &p,
            "services[0].discovery.refresh_min",
            Some(6),
            "invalid duration \"soon\"",
        );
        assert_has(
            &p,
            "services[0].discovery.on_nxdomain",
            Some(7),
            "unknown variant `drop`, expected `keep` or `clear`",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
    }

    #[cfg(feature = "dns")]
    #[test]
    fn dns_discovery_is_checked_by_the_dns_source() {
        let text = r#"[[services]]
name = "a"
discovery = { dns = "users..internal:8080" }

[[services]]
name = "b"
discovery = { dns = "10.0.0.1:80" }

[[services]]
name = "c"
[services.discovery]
dns = "_http._tcp.users.internal"
refresh_min = "10s"
refresh_max = "5s"
query_timeout = "0s"

[[services]]
name = "d"
discovery = { dns = "users.internal:80", refresh_max = "500ms", nameservers = [] }

[[routes]]
split = [{ service = "a", weight = 1 }, { service = "b", weight = 1 }, { service = "c", weight = 1 }, { service = "d", weight = 1 }]
"#;
        let p = errors(text);
        assert_has(
            &p,
            "services[0].discovery.dns",
            Some(3),
            "dns discovery: invalid name \"users..internal:8080\": empty label (two dots in a row)",
        );
        assert_has(
            &p,
            "services[1].discovery.dns",
            Some(7),
            "is an IP address, not a DNS name",
        );
        assert_has(
            &p,
            "services[2].discovery.refresh_min",
            Some(13),
            "refresh_min and refresh_max: min must be above zero and at most max, got min 10s, max 5s",
        );
        // The default refresh_min (1 s) is above this refresh_max.
        assert_has(
            &p,
            "services[3].discovery.refresh_max",
            Some(19),
            "got min 1s, max 500ms",
        );
        assert_eq!(
            p.len(),
            4,
            "one problem per source, the first its check finds: {p:#?}"
        );
        let p = errors(
            "[[services]]\nname = \"app\"\ndiscovery = { dns = \"a.example:80\", query_timeout = \"0s\" }\n\
             [[routes]]\nservice = \"app\"\n",
        );
        assert_has(
            &p,
            "services[0].discovery.query_timeout",
            Some(3),
            "must be above zero",
        );
        let p = errors(
            "[[services]]\nname = \"app\"\ndiscovery = { dns = \"a.example:80\", nameservers = [] }\n\
             [[routes]]\nservice = \"app\"\n",
        );
        assert_has(
            &p,
            "services[0].discovery.nameservers",
            Some(3),
            "no addresses given",
        );
    }

    #[cfg(not(feature = "dns"))]
    #[test]
    fn dns_discovery_needs_the_feature() {
        let p = errors(&format!(
            "[[services]]\nname = \"app\"\ndiscovery = {{ dns = \"a.example:80\" }}\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].discovery.dns",
            Some(3),
            "this build has no DNS support: rebuild with --features dns",
        );
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn kubernetes_names_are_checked_by_the_kubernetes_source() {
        let p = errors(&format!(
            "[[services]]\nname = \"app\"\n[services.discovery.kubernetes]\nnamespace = \"Shop\"\n\
             service = \"users-\"\nport = \"http_alt\"\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].discovery.kubernetes.namespace",
            Some(4),
            "invalid namespace \"Shop\": must consist of lowercase letters, digits and '-'",
        );
        assert_has(
            &p,
            "services[0].discovery.kubernetes.service",
            Some(5),
            "must start and end with a letter or digit",
        );
        assert_has(
            &p,
            "services[0].discovery.kubernetes.port",
            Some(6),
            "invalid port \"http_alt\"",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        lints(&format!(
            "[[services]]\nname = \"app\"\ndiscovery = {{ kubernetes = {{ namespace = \"shop\", service = \"users\" }} }}\n{ROUTE}"
        ));
    }

    #[cfg(not(feature = "kubernetes"))]
    #[test]
    fn kubernetes_discovery_needs_the_feature() {
        let p = errors(&format!(
            "[[services]]\nname = \"app\"\ndiscovery = {{ kubernetes = {{ namespace = \"shop\", service = \"users\" }} }}\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].discovery.kubernetes",
            Some(3),
            "this build has no Kubernetes support: rebuild with --features kubernetes",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
    }

    #[test]
    fn file_discovery_is_checked() {
        let text = r#"[[services]]
name = "a"
discovery = { file = "endpoints.yaml" }

[[services]]
name = "b"
discovery = { file = "endpoints", format = "json", interval = "0s" }

[[services]]
name = "c"
discovery = { file = "" }

[[routes]]
split = [{ service = "a", weight = 1 }, { service = "b", weight = 1 }, { service = "c", weight = 1 }]
"#;
        let p = errors(text);
        assert_has(
            &p,
            "services[0].discovery.file",
            Some(3),
            "cannot tell the format of \"endpoints.yaml\" from its name: name it *.json or *.toml, or set `format = \"json\"` or `\"toml\"`",
        );
        assert_has(
            &p,
            "services[1].discovery.interval",
            Some(7),
            "must be greater than 0",
        );
        assert_has(
            &p,
            "services[2].discovery.file",
            Some(11),
            "the path must not be empty",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
    }

    /// A fresh directory under the system's temporary one.
    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("palisade-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_discovery_lints_read_the_file_relative_to_the_config() {
        let dir = temp_dir("lints");
        std::fs::write(dir.join("good.json"), r#"["127.0.0.1:1"]"#).unwrap();
        std::fs::write(
            dir.join("bad.toml"),
            "endpoints = [\"127.0.0.1:1\", \"nope\"]\n",
        )
        .unwrap();
        let text = format!(
            r#"[[services]]
name = "good"
discovery = {{ file = "good.json" }}

[[services]]
name = "missing"
discovery = {{ file = "missing.json" }}

[[services]]
name = "bad"
discovery = {{ file = "{}", interval = "50ms" }}

[[routes]]
split = [{{ service = "good", weight = 1 }}, {{ service = "missing", weight = 1 }}, {{ service = "bad", weight = 1 }}]
"#,
            dir.join("bad.toml").display()
        );
        let config = Config::from_file_text(&text, &dir.join("proxy.toml")).unwrap();
        let p: Vec<_> = config
            .lints()
            .into_iter()
            .map(|p| (p.field, p.line, p.message))
            .collect();
        assert_has(
            &p,
            "services[1].discovery.file",
            Some(7),
            &format!(
                "{} does not exist (yet): the service has no endpoints until it appears",
                dir.join("missing.json").display()
            ),
        );
        assert_has(
            &p,
            "services[2].discovery.file",
            Some(11),
            "line 1, column 29: endpoints[1]: endpoint \"nope\": expected host:port: the service has no endpoints until it is fixed",
        );
        assert_has(
            &p,
            "services[2].discovery.interval",
            Some(11),
            "an interval of 50ms checks the file more than 10 times a second",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        assert_eq!(config.base_dir(), Some(dir.as_path()));
        assert_eq!(config.resolve_path(Path::new("a.json")), dir.join("a.json"));
        assert_eq!(
            config.resolve_path(Path::new("/a.json")),
            Path::new("/a.json")
        );

        // Without a base directory, relative paths are the current directory's.
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(
            config.resolve_path(Path::new("good.json")),
            Path::new("good.json")
        );
        assert!(
            config
                .lints()
                .iter()
                .any(|p| p.field == "services[0].discovery.file"),
            "good.json is not in the current directory"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(feature = "dns")]
    #[test]
    fn dns_refresh_lints() {
        let p = lints(&format!(
            "[[services]]\nname = \"app\"\ndiscovery = {{ dns = \"a.example:80\", refresh_min = \"10ms\", refresh_max = \"50ms\" }}\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].discovery.refresh_min",
            Some(3),
            "refresh_min of 10ms re-resolves more than 10 times a second",
        );
        assert_has(
            &p,
            "services[0].discovery.refresh_max",
            Some(3),
            "refresh_max of 50ms",
        );
        assert_eq!(p.len(), 2, "{p:#?}");
    }

    #[test]
    fn limits_parse() {
        let config = Config::from_toml(&format!(
            r#"{TWO}[services.limits]
concurrency = {{ max = 32, queue = 0, max_wait = "none" }}
rate = {{ per_second = 0.5, burst = 3, key_header = "X-Tenant", max_keys = 10, without_key = "pass" }}
throttle = {{ k = 1.5, window = "30s" }}
{ROUTE}"#
        ))
        .unwrap();
        let l = &config.services[0].limits;
        let c = l.concurrency.as_ref().unwrap();
        assert_eq!((c.max, c.queue, c.max_wait), (32, 0, None));
        let r = l.rate.as_ref().unwrap();
        assert_eq!(
            (
                r.per_second,
                r.burst,
                r.key_header.as_deref(),
                r.max_keys,
                r.without_key
            ),
            (0.5, Some(3), Some("X-Tenant"), 10, WithoutKey::Pass)
        );
        let t = l.throttle.as_ref().unwrap();
        assert_eq!((t.k, t.window), (1.5, Duration::from_secs(30)));
        // Off unless written.
        let config = Config::from_toml(&format!("{TWO}{ROUTE}")).unwrap();
        assert_eq!(config.services[0].limits, Limits::default());
        assert_eq!(
            (
                Limits::default().concurrency,
                Limits::default().rate,
                Limits::default().throttle
            ),
            (None, None, None)
        );
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["services"][0]["limits"], serde_json::json!({}));
    }

    #[test]
    fn limits_are_range_checked() {
        let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
[services.limits.concurrency]
max = 0
max_wait = "0s"
[services.limits.rate]
per_second = 0.0
burst = 0
key_header = "x tenant"
max_keys = 0
[services.limits.throttle]
k = 0.5
window = "0s"

[[services]]
name = "other"
endpoints = ["127.0.0.1:2"]
limits = { rate = { per_second = nan }, throttle = { k = inf } }

[[services]]
name = "third"
endpoints = ["127.0.0.1:3"]
limits = { rate = { per_second = 2e9 } }

[[routes]]
split = [{ service = "app", weight = 1 }, { service = "other", weight = 1 }, { service = "third", weight = 1 }]
"#;
        let p = errors(text);
        let l = "services[0].limits";
        assert_has(
            &p,
            &format!("{l}.concurrency.max"),
            Some(5),
            "must be at least 1",
        );
        assert_has(
            &p,
            &format!("{l}.concurrency.max_wait"),
            Some(6),
            "must be greater than 0 (\"none\" waits as long as the request's deadline allows",
        );
        assert_has(
            &p,
            &format!("{l}.rate.per_second"),
            Some(8),
            "must be a finite number of requests a second from 1e-6 to 1e9, got 0",
        );
        assert_has(
            &p,
            &format!("{l}.rate.burst"),
            Some(9),
            "must be at least 1",
        );
        assert_has(
            &p,
            &format!("{l}.rate.key_header"),
            Some(10),
            "\"x tenant\" is not a valid header name",
        );
        assert_has(
            &p,
            &format!("{l}.rate.max_keys"),
            Some(11),
            "must be at least 1",
        );
        assert_has(
            &p,
            &format!("{l}.throttle.k"),
            Some(13),
            "must be a finite number at least 1 (the backend is offered at least what it accepts), got 0.5",
        );
        assert_has(
            &p,
            &format!("{l}.throttle.window"),
            Some(14),
            "must be greater than 0",
        );
        assert_has(
            &p,
            "services[1].limits.rate.per_second",
            Some(19),
            "got NaN",
        );
        assert_has(&p, "services[1].limits.throttle.k", Some(19), "got inf");
        assert_has(
            &p,
            "services[2].limits.rate.per_second",
            Some(24),
            "got 2000000000",
        );
        assert_eq!(p.len(), 11, "{p:#?}");

        let p = errors(&format!(
            "{TWO}limits = {{ rate = {{ burst = 5 }}, bulkhead = {{}} }}\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].limits.bulkhead",
            Some(4),
            "unknown field `bulkhead`, expected one of `concurrency`, `rate`, `throttle`",
        );
        assert_has(
            &p,
            "services[0].limits.rate.per_second",
            Some(4),
            "missing field `per_second`",
        );
    }

    #[test]
    fn hedge_parses_checks_and_lints() {
        use crate::hedge::HedgeDelay;
        // Off unless written; `hedge = {}` is the defaults.
        let config = Config::from_toml(&format!("{TWO}{ROUTE}")).unwrap();
        assert_eq!(config.services[0].hedge, None);
        let config = Config::from_toml(&format!("{TWO}hedge = {{}}\n{ROUTE}")).unwrap();
        assert_eq!(config.services[0].hedge, Some(Hedge::default()));
        assert_eq!(Hedge::default().delay, HedgeDelay::Percentile(0.95));

        let config = Config::from_toml(&format!(
            "{TWO}[services.hedge]\ndelay = \"p99.9\"\nmin_samples = 50\nfallback_delay = \"40ms\"\nbudget_ratio = 0.02\n{ROUTE}"
        ))
        .unwrap();
        let h = config.services[0].hedge.clone().unwrap();
        assert_eq!(h.delay, HedgeDelay::Percentile(0.999));
        assert_eq!(
            (h.min_samples, h.fallback_delay, h.budget_ratio),
            (50, Duration::from_millis(40), 0.02)
        );
        // Round trip through the effective config (`/config`).
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("delay = \"p99.9\""), "{text}");
        let again = Config::from_toml(&text).unwrap();
        assert_eq!(again.services[0].hedge, Some(h));

        let fixed =
            Config::from_toml(&format!("{TWO}hedge = {{ delay = \"20ms\" }}\n{ROUTE}")).unwrap();
        assert_eq!(
            fixed.services[0].hedge.as_ref().unwrap().delay,
            HedgeDelay::Fixed(Duration::from_millis(20))
        );

        for (value, needle) in [
            ("\"p0\"", "out of range"),
            ("\"p100\"", "out of range"),
            ("\"pNaN\"", "out of range"),
            ("\"p9x\"", "invalid percentile"),
            ("\"0s\"", "must be greater than 0"),
            ("\"soon\"", "invalid duration"),
        ] {
            let e = errors(&format!("{TWO}[services.hedge]\ndelay = {value}\n{ROUTE}"));
            assert_has(&e, "services[0].hedge.delay", Some(5), needle);
        }
        let e = errors(&format!(
            "{TWO}[services.hedge]\nmin_samples = 0\nfallback_delay = \"0s\"\nwindow = \"0s\"\nbudget_ratio = 1.5\n{ROUTE}"
        ));
        assert_has(&e, "services[0].hedge.min_samples", Some(5), "at least 1");
        assert_has(
            &e,
            "services[0].hedge.fallback_delay",
            Some(6),
            "greater than 0",
        );
        assert_has(&e, "services[0].hedge.window", Some(7), "greater than 0");
        assert_has(&e, "services[0].hedge.budget_ratio", Some(8), "at most 1");

        let p = lints(&format!(
            "{TWO}deadline = {{ timeout = \"1s\" }}\n[services.hedge]\ndelay = \"2s\"\nbudget_ratio = 0.5\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].hedge.delay",
            Some(6),
            "2s is not shorter than deadline.timeout (1s): no backup would ever be sent",
        );
        assert_has(
            &p,
            "services[0].hedge.budget_ratio",
            Some(7),
            "up to 50 % load",
        );
        let p = lints(&format!("{TWO}hedge = {{ delay = \"p20\" }}\n{ROUTE}"));
        assert_has(&p, "services[0].hedge.delay", Some(4), "more than half");
    }

    #[test]
    fn limit_lints() {
        let p = lints(&format!(
            r#"{TWO}deadline = {{ timeout = "1s" }}
[services.limits]
concurrency = {{ max_wait = "2s" }}
rate = {{ per_second = 10.0, without_key = "pass" }}
throttle = {{ window = "5s" }}
{ROUTE}"#
        ));
        assert_has(
            &p,
            "services[0].limits.concurrency.max_wait",
            Some(6),
            "max_wait (2s) is longer than deadline.timeout (1s): a queued request without a deadline header is shed at its deadline first",
        );
        assert_has(
            &p,
            "services[0].limits.rate.without_key",
            Some(7),
            "has no effect without key_header",
        );
        assert_has(
            &p,
            "services[0].limits.throttle.window",
            Some(8),
            "a window of 5s is shorter than 10s: a handful of refusals swings the rejection probability (the default is 2m)",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        let p = lints(&format!(
            "{TWO}deadline = {{ timeout = \"none\" }}\nlimits = {{ concurrency = {{ max_wait = \"none\" }} }}\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].limits.concurrency.max_wait",
            Some(5),
            "may wait for a slot for ever",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        // Fine: a wait within the deadline; no queue to wait in.
        assert_eq!(
            lints(&format!(
                "{TWO}limits = {{ concurrency = {{}}, throttle = {{ window = \"10s\" }} }}\n{ROUTE}"
            )),
            vec![]
        );
        assert_eq!(
            lints(&format!(
                "{TWO}deadline = {{ timeout = \"none\" }}\nlimits = {{ concurrency = {{ queue = 0, max_wait = \"none\" }} }}\n{ROUTE}"
            )),
            vec![]
        );
    }

    #[test]
    fn round_trips_through_toml_and_json() {
        let config = Config::from_toml(PALISADE).unwrap();
        let text = toml::to_string(&config).unwrap();
        let again = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again, config);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["services"][0]["deadline"]["timeout"], "15s");
        assert_eq!(json["services"][0]["retry"]["per_try_timeout"], "none");
        assert_eq!(json["services"][0]["ejection"]["max_penalty"], "1m");
    }

    #[test]
    fn durations_take_humantime_and_none() {
        let config = Config::from_toml(
            r#"
            [[services]]
            name = "app"
            endpoints = ["127.0.0.1:1"]
            deadline = { timeout = "none", max_timeout = "1m 30s" }
            retry = { per_try_timeout = "250ms", backoff_cap = "1.5s" }
            [[routes]]
            service = "app"
            "#,
        )
        .unwrap();
        let s = &config.services[0];
        assert_eq!(s.deadline.timeout, None);
        assert_eq!(s.deadline.max_timeout, Duration::from_secs(90));
        assert_eq!(s.retry.per_try_timeout, Some(Duration::from_millis(250)));
        assert_eq!(s.retry.backoff_cap, Duration::from_millis(1500));
    }

    #[test]
    fn endpoint_specs() {
        let config = Config::from_toml(
            r#"
            [[services]]
            name = "app"
            endpoints = ["10.0.0.1:80", { address = "db.internal:5432", weight = 3, labels = { zone = "a" } }]
            [[routes]]
            service = "app"
            "#,
        )
        .unwrap();
        let eps = &config.services[0].endpoints;
        assert_eq!(eps[0], EndpointSpec::Address("10.0.0.1:80".into()));
        let ep = eps[1].to_endpoint().unwrap();
        assert_eq!(ep.weight(), 3.0);
        assert_eq!(ep.labels()["zone"], "a");
        assert_eq!(eps[1].address(), "db.internal:5432");
    }

    #[test]
    fn services_are_required_and_checked() {
        let p = errors("services = []\n[[routes]]\nservice = \"x\"\n");
        assert_has(&p, "services", Some(1), "at least one service");
        assert_has(
            &p,
            "routes[0].service",
            Some(3),
            "no service named \"x\" (there are no services)",
        );

        let p = errors(&format!(
            "[[services]]\nname = \"\"\nendpoints = [\"127.0.0.1:1\"]\n\
             [[services]]\nname = \"a b\"\nendpoints = [\"127.0.0.1:1\"]\n\
             [[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n\
             [[services]]\nname = \"app\"\nendpoints = []\n{ROUTE}"
        ));
        assert_has(&p, "services[0].name", Some(2), "must not be empty");
        assert_has(&p, "services[1].name", Some(5), "has ' '");
        assert_has(
            &p,
            "services[3].name",
            Some(11),
            "already used by services[2] (line 7)",
        );
        assert_has(
            &p,
            "services[3].endpoints",
            Some(12),
            "at least one endpoint",
        );
        assert_eq!(p.len(), 4, "{p:#?}");
    }

    #[test]
    fn endpoints_are_checked_with_the_library_messages() {
        let p = errors(&format!(
            r#"[[services]]
name = "app"
endpoints = [
  "127.0.0.1:1",
  "no-port",
  {{ address = "127.0.0.1:2", weight = 0.0 }},
  {{ address = "bad host:80" }},
  "127.0.0.1:1",
  {{ address = "127.0.0.1:3", weight = nan }},
]
{ROUTE}"#
        ));
        assert_has(
            &p,
            "services[0].endpoints[1]",
            Some(5),
            "endpoint \"no-port\": expected host:port",
        );
        assert_has(
            &p,
            "services[0].endpoints[2].weight",
            Some(6),
            "weight must be finite and greater than 0, got 0",
        );
        assert_has(
            &p,
            "services[0].endpoints[3].address",
            Some(7),
            "host must be an IP address",
        );
        assert_has(
            &p,
            "services[0].endpoints[4]",
            Some(8),
            "listed twice (first at services[0].endpoints[0] (line 4))",
        );
        assert_has(&p, "services[0].endpoints[5].weight", Some(9), "got NaN");
        assert_eq!(p.len(), 5, "{p:#?}");
    }

    #[test]
    fn policies_are_range_checked() {
        let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
[services.retry]
max_attempts = 0
backoff_base = "1s"
backoff_cap = "100ms"
per_try_timeout = "0s"
retryable_statuses = [503, 99, 600]
[services.budget]
ratio = -0.5
[services.deadline]
timeout = "0s"
max_timeout = "0s"
[services.ejection]
success_rate = 1.5
jitter = -0.1
max_ejection_percent = inf
panic_threshold = nan
base_penalty = "2m"
max_penalty = "1m"
[services.breaker]
error_threshold = 0.0
half_open_probes = 0

[[routes]]
service = "app"
"#;
        let p = errors(text);
        let s = "services[0]";
        assert_has(
            &p,
            &format!("{s}.retry.max_attempts"),
            Some(5),
            "at least 1",
        );
        assert_has(
            &p,
            &format!("{s}.retry.backoff_base"),
            Some(6),
            "backoff_base (1s) must not exceed backoff_cap (100ms)",
        );
        assert_has(
            &p,
            &format!("{s}.retry.per_try_timeout"),
            Some(8),
            "greater than 0",
        );
        assert_has(
            &p,
            &format!("{s}.retry.retryable_statuses[1]"),
            Some(9),
            "99 is not an HTTP status",
        );
        assert_has(
            &p,
            &format!("{s}.retry.retryable_statuses[2]"),
            Some(9),
            "600 is not an HTTP status",
        );
        assert_has(
            &p,
            &format!("{s}.budget.ratio"),
            Some(11),
            "at least 0, got -0.5",
        );
        assert_has(
            &p,
            &format!("{s}.deadline.timeout"),
            Some(13),
            "greater than 0",
        );
        assert_has(
            &p,
            &format!("{s}.deadline.max_timeout"),
            Some(14),
            "greater than 0",
        );
        assert_has(
            &p,
            &format!("{s}.ejection.success_rate"),
            Some(16),
            "between 0 and 1, got 1.5",
        );
        assert_has(&p, &format!("{s}.ejection.jitter"), Some(17), "got -0.1");
        assert_has(
            &p,
            &format!("{s}.ejection.max_ejection_percent"),
            Some(18),
            "got inf",
        );
        assert_has(
            &p,
            &format!("{s}.ejection.panic_threshold"),
            Some(19),
            "got NaN",
        );
        assert_has(
            &p,
            &format!("{s}.ejection.base_penalty"),
            Some(20),
            "must not exceed max_penalty (1m)",
        );
        assert_has(
            &p,
            &format!("{s}.breaker.error_threshold"),
            Some(23),
            "greater than 0 and at most 1",
        );
        assert_has(
            &p,
            &format!("{s}.breaker.half_open_probes"),
            Some(24),
            "at least 1",
        );
        assert_eq!(p.len(), 15, "{p:#?}");
        // In file order.
        let lines: Vec<_> = p.iter().map(|(_, l, _)| l.unwrap()).collect();
        assert!(lines.is_sorted(), "{lines:?}");

        let p = errors(
            "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\nbudget = { ratio = inf }\nbreaker = { error_threshold = 1.01 }\n[[routes]]\nservice = \"app\"\n",
        );
        assert_has(&p, "services[0].budget.ratio", Some(4), "finite");
        assert_has(
            &p,
            "services[0].breaker.error_threshold",
            Some(5),
            "got 1.01",
        );
    }

    #[test]
    fn routes_are_checked() {
        let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
service = "ap"

[[routes]]
service = "app"
split = [{ service = "app", weight = 1 }]

[[routes]]
name = "nothing"

[[routes]]
split = [
  { service = "app", weight = 0 },
  { service = "gone", weight = 0 },
]

[[routes]]
name = "nothing"
service = "app"
"#;
        let p = errors(text);
        assert_has(
            &p,
            "routes[0].service",
            Some(6),
            "no service named \"ap\" (services: app)",
        );
        assert_has(
            &p,
            "routes[1]",
            Some(8),
            "either `service` or `split`, not both",
        );
        assert_has(
            &p,
            "routes[2]",
            Some(12),
            "needs `service = \"NAME\"` or a non-empty `split`",
        );
        assert_has(&p, "routes[3].split", Some(16), "add up to more than 0");
        assert_has(
            &p,
            "routes[3].split[1].service",
            Some(18),
            "no service named \"gone\"",
        );
        assert_has(
            &p,
            "routes[4].name",
            Some(22),
            "already used by routes[2] (line 12)",
        );
        assert_eq!(p.len(), 6, "{p:#?}");

        let p = errors("[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n");
        assert_has(&p, "routes", None, "at least one route");
    }

    #[test]
    fn matches_are_checked() {
        let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
service = "app"
[routes.match]
path_prefix = "api"
host = ""
methods = ["GET", "get", "G T", ""]
[routes.match.headers]
"bad header" = "x"
x-ok = "line\u0001break"
X-Dup = "1"
x-dup = "1"

[[routes]]
service = "app"
match = { host = "*.ex*ample.com", path_prefix = "/a?b" }

[[routes]]
service = "app"
match = { host = "example.com:8080" }

[[routes]]
service = "app"
match = { host = "bad.exa mple.com" }

[[routes]]
service = "app"
match = { host = "[::1]", path_prefix = "/ok/" }

[[routes]]
service = "app"
match = { host = "[nope]" }

[[routes]]
service = "app"
match = { host = "*.-bad.com" }
"#;
        let p = errors(text);
        let m = "routes[0].match";
        assert_has(
            &p,
            &format!("{m}.path_prefix"),
            Some(8),
            "must start with '/'",
        );
        assert_has(&p, &format!("{m}.host"), Some(9), "must not be empty");
        assert_has(
            &p,
            &format!("{m}.methods[1]"),
            Some(10),
            "case-sensitive; write \"GET\"",
        );
        assert_has(
            &p,
            &format!("{m}.methods[2]"),
            Some(10),
            "not an HTTP method",
        );
        assert_has(
            &p,
            &format!("{m}.methods[3]"),
            Some(10),
            "must not be empty",
        );
        assert_has(
            &p,
            &format!("{m}.headers.\"bad header\""),
            Some(12),
            "not a valid header name",
        );
        assert_has(
            &p,
            &format!("{m}.headers.x-ok"),
            Some(13),
            "not a valid header value",
        );
        assert_has(
            &p,
            &format!("{m}.headers.x-dup"),
            Some(15),
            "also given as \"X-Dup\"",
        );
        assert_has(
            &p,
            "routes[1].match.host",
            Some(19),
            "only allowed as a leading \"*.\"",
        );
        assert_has(
            &p,
            "routes[1].match.path_prefix",
            Some(19),
            "without '?' or '#'",
        );
        assert_has(&p, "routes[2].match.host", Some(23), "has a port");
        assert_has(
            &p,
            "routes[3].match.host",
            Some(27),
            "not allowed in a host name",
        );
        assert_has(&p, "routes[5].match.host", Some(35), "bracketed IPv6");
        assert_has(
            &p,
            "routes[6].match.host",
            Some(39),
            "the part after \"*.\" has a label starting or ending with '-'",
        );
        assert_eq!(p.len(), 14, "{p:#?}");
    }

    #[test]
    fn addresses_must_be_distinct() {
        let text = format!(
            r#"[[listeners]]
address = "127.0.0.1:4140"
[[listeners]]
address = "127.0.0.1:4140"
[[listeners]]
address = "0.0.0.0:9990"
[[listeners]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:9990"
[server]
max_header_bytes = 100
watch_interval = "0s"
[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
{ROUTE}"#
        );
        let p = errors(&text);
        assert_has(
            &p,
            "listeners[1].address",
            Some(4),
            "127.0.0.1:4140 is already used by listeners[0].address (line 2)",
        );
        assert_has(
            &p,
            "admin.address",
            Some(10),
            "overlaps listeners[2].address (line 6) (0.0.0.0:9990)",
        );
        assert_has(
            &p,
            "server.max_header_bytes",
            Some(12),
            "at least 1024, got 100",
        );
        assert_has(&p, "server.watch_interval", Some(13), "greater than 0");
        assert_eq!(p.len(), 4, "{p:#?}");

        // Port 0 never collides: tests bind everything to fresh ports.
        Config::from_toml(&format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\n[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
        ))
        .unwrap();
        let p = errors(&format!(
            "[[listeners]]\naddress = \"localhost:80\"\n[admin]\naddress = 9990\n[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
        ));
        assert_has(
            &p,
            "listeners[0].address",
            Some(2),
            "invalid socket address \"localhost:80\": write an IP address and a port",
        );
        assert_has(
            &p,
            "admin.address",
            Some(4),
            "expected a socket address such as \"127.0.0.1:4140\"",
        );
        let p = errors(&format!(
            "listeners = []\n[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
        ));
        assert_has(&p, "listeners", Some(1), "at least one listener");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"[[listeners]]
address = "127.0.0.1:9990"

[[services]]
name = "a"
endpoints = ["nope"]
retry = { max_attempts = 0 }

[[services]]
name = "a"
endpoints = ["127.0.0.1:1"]
breaker = { half_open_probes = 0 }

[[routes]]
match = { path_prefix = "x" }
service = "b"
"#;
        let p = errors(text);
        assert_has(
            &p,
            "admin.address",
            None,
            "127.0.0.1:9990 is already used by listeners[0].address (line 2)",
        );
        assert_has(
            &p,
            "services[0].endpoints[0]",
            Some(6),
            "expected host:port",
        );
        assert_has(&p, "services[0].retry.max_attempts", Some(7), "at least 1");
        assert_has(
            &p,
            "services[1].name",
            Some(10),
            "already used by services[0] (line 4)",
        );
        assert_has(
            &p,
            "services[1].breaker.half_open_probes",
            Some(12),
            "at least 1",
        );
        assert_has(
            &p,
            "routes[0].match.path_prefix",
            Some(15),
            "start with '/'",
        );
        assert_has(&p, "routes[0].service", Some(16), "no service named \"b\"");
        assert_eq!(p.len(), 7, "{p:#?}");
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            err.contains("line 6: services[0].endpoints[0]: endpoint \"nope\": expected host:port"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_have_lines() {
        let p = errors("[[services]]\nname = \"app\"\n[server\ngrace_period = \"1s\"\n");
        assert_has(&p, "(syntax)", Some(3), "unclosed table");

        // Every syntax error, in file order.
        let p = errors("a = \"\\q\"\nb = [1,\nc = 3\n");
        assert!(p.len() >= 3, "{p:#?}");
        assert_eq!(p[0].1, Some(1), "{p:#?}");
        assert!(p.iter().all(|(_, l, _)| l.is_some()), "{p:#?}");
        let lines: Vec<_> = p.iter().map(|(_, l, _)| l.unwrap()).collect();
        assert!(lines.is_sorted(), "{lines:?}");

        let p = errors("x = 1\nx = 2\n");
        assert_has(&p, "(syntax)", Some(2), "duplicate key");
        assert!(p.iter().all(|(_, _, m)| !m.contains('\n')), "{p:#?}");
    }

    #[test]
    fn type_errors_have_fields_and_lines() {
        // A bad duration, with humantime's reason.
        let p = errors("[server]\ngrace_period = \"10 parsecs\"\n");
        assert_has(
            &p,
            "server.grace_period",
            Some(2),
            "invalid duration \"10 parsecs\": unknown time unit \"parsecs\"",
        );
        assert_has(&p, "server.grace_period", Some(2), "\"1m 30s\"");

        // Unknown keys, at every level.
        let p = errors(&format!(
            "[[services]]\nname = \"app\"\nendpoints = [{{ address = \"127.0.0.1:1\", wieght = 2 }}]\nretri = {{}}\n{ROUTE}"
        ));
        assert_has(&p, "services[0].retri", Some(4), "unknown field `retri`");
        assert_has(
            &p,
            "services[0].endpoints[0].wieght",
            Some(3),
            "unknown field `wieght`",
        );

        // A wrong type.
        let p = errors(&format!(
            "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n[services.retry]\nmax_attempts = \"three\"\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].retry.max_attempts",
            Some(5),
            "invalid type: string \"three\", expected u32",
        );
        let p = errors(&format!(
            "[[services]]\nname = 5\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].name",
            Some(2),
            "invalid type: integer `5`, expected a string",
        );
        assert_eq!(
            p.len(),
            1,
            "the name taken out is not reported missing: {p:#?}"
        );
        let p = errors("services = 5\n");
        assert_has(&p, "services", Some(1), "invalid type");
        let p = errors(&format!(
            "[[services]]\nname = \"app\"\nendpoints = [7]\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].endpoints[0]",
            Some(3),
            "expected an endpoint",
        );
        let p = errors(&format!(
            "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\ndeadline = {{ timeout = 15 }}\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].deadline.timeout",
            Some(4),
            "expected a duration string",
        );

        // Missing fields name the field.
        let p =
            errors("[[services]]\nname = \"app\"\nendpoints = []\n[[services]]\nendpoints = []\n");
        assert_has(&p, "services[1].name", Some(4), "missing field `name`");
        let p = errors("");
        assert_has(&p, "services", None, "missing field `services`");
    }

    #[test]
    fn type_errors_in_many_places_are_all_reported() {
        let text = r#"bogus = 1
[[services]]
name = "a"
endpoints = ["127.0.0.1:1"]
retry = { max_attempts = -1 }

[[services]]
name = "b"
endpoints = ["127.0.0.1:2"]
breaker = { window = "soon" }

[server]
max_header_bytes = "big"

[[routes]]
service = "a"
match = { methods = "GET" }
also_bogus = true
"#;
        let p = errors(text);
        assert_has(&p, "bogus", Some(1), "unknown field `bogus`");
        assert_has(
            &p,
            "services[0].retry.max_attempts",
            Some(5),
            "invalid value: integer `-1`",
        );
        assert_has(
            &p,
            "services[1].breaker.window",
            Some(10),
            "invalid duration \"soon\"",
        );
        assert_has(&p, "server.max_header_bytes", Some(13), "invalid type");
        assert_has(&p, "routes[0].match.methods", Some(17), "invalid type");
        assert_has(
            &p,
            "routes[0].also_bogus",
            Some(18),
            "unknown field `also_bogus`",
        );
        let lines: Vec<_> = p.iter().map(|(_, l, _)| l.unwrap()).collect();
        assert!(lines.is_sorted(), "{lines:?}");
    }

    const TWO: &str = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
"#;

    #[test]
    fn lint_per_try_timeout_times_attempts() {
        let p = lints(&format!(
            "{TWO}[services.retry]\nper_try_timeout = \"6s\"\n[services.deadline]\ntimeout = \"15s\"\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].retry.per_try_timeout",
            Some(5),
            "(3 × 6s = 18s) exceeds deadline.timeout (15s)",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        let p = lints(&format!(
            "{TWO}retry = {{ max_attempts = 1, per_try_timeout = \"20s\" }}\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].retry.per_try_timeout",
            Some(4),
            "never fires",
        );
        // 3 × 5s fits in 15s exactly; no deadline means nothing to exceed.
        assert_eq!(
            lints(&format!(
                "{TWO}retry = {{ per_try_timeout = \"5s\" }}\n{ROUTE}"
            )),
            vec![]
        );
        assert_eq!(
            lints(&format!(
                "{TWO}retry = {{ per_try_timeout = \"1h\" }}\ndeadline = {{ timeout = \"none\" }}\n{ROUTE}"
            )),
            vec![]
        );
    }

    #[test]
    fn lint_budget_ratio_above_one() {
        let p = lints(&format!("{TWO}budget = {{ ratio = 1.5 }}\n{ROUTE}"));
        assert_has(
            &p,
            "services[0].budget.ratio",
            Some(4),
            "more retries than requests",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(
            lints(&format!("{TWO}budget = {{ ratio = 1 }}\n{ROUTE}")),
            vec![]
        );
    }

    #[test]
    fn lint_retries_behind_non_idempotent_routes() {
        let text = format!(
            "{TWO}\n[[routes]]\nmatch = {{ methods = [\"POST\", \"PATCH\"] }}\nservice = \"app\"\n"
        );
        let p = lints(&text);
        assert_has(
            &p,
            "services[0].retry.max_attempts",
            Some(1),
            "every route to \"app\" (routes[0] (line 5)) takes only non-idempotent methods",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        // Not when retries are off, nor when some route allows an idempotent method.
        assert_eq!(
            lints(&format!(
                "{TWO}retry = {{ max_attempts = 1 }}\n[[routes]]\nmatch = {{ methods = [\"POST\"] }}\nservice = \"app\"\n"
            )),
            vec![]
        );
        assert_eq!(
            lints(&format!(
                "{TWO}[[routes]]\nmatch = {{ methods = [\"POST\"] }}\nservice = \"app\"\n\
                 [[routes]]\nmatch = {{ methods = [\"PUT\"] }}\nservice = \"app\"\n"
            )),
            vec![]
        );
    }

    #[test]
    fn lint_backoff_cap_and_timeouts() {
        let p = lints(&format!(
            "{TWO}retry = {{ backoff_cap = \"2s\" }}\ndeadline = {{ timeout = \"2s\" }}\n{ROUTE}"
        ));
        assert_has(
            &p,
            "services[0].retry.backoff_cap",
            Some(4),
            "backoff_cap (2s) is not shorter than deadline.timeout (2s)",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        let p = lints(&format!("{TWO}deadline = {{ timeout = \"10m\" }}\n{ROUTE}"));
        assert_has(
            &p,
            "services[0].deadline.timeout",
            Some(4),
            "longer than max_timeout (5m)",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
    }

    #[test]
    fn lint_unreachable_routes_and_services() {
        let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
[[services]]
name = "other"
endpoints = ["127.0.0.1:2"]
[[services]]
name = "third"
endpoints = ["127.0.0.1:3"]

[[routes]]
match = { path_prefix = "/api", methods = ["GET", "PUT"] }
service = "app"

[[routes]]
match = { path_prefix = "/api/v1", methods = ["GET"], headers = { x-a = "1" } }
service = "other"

[[routes]]
match = { path_prefix = "/apiv2" }
split = [{ service = "third", weight = 0 }, { service = "app", weight = 1 }]

[[routes]]
service = "app"

[[routes]]
match = { host = "example.com" }
service = "other"
"#;
        let p = lints(text);
        assert_has(
            &p,
            "routes[1]",
            Some(15),
            "unreachable: routes[0] (line 11) before it matches every request this route matches",
        );
        assert_has(
            &p,
            "routes[4]",
            Some(26),
            "unreachable: routes[3] (line 23) before it matches every request",
        );
        assert_has(
            &p,
            "services[1].name",
            Some(5),
            "no reachable route sends traffic to service \"other\"",
        );
        assert_has(&p, "services[2].name", Some(8), "no reachable route");
        assert_eq!(p.len(), 4, "{p:#?}");
    }

    #[test]
    fn route_coverage() {
        let m = |host: Option<&str>, path: Option<&str>| Match {
            host: host.map(Into::into),
            path_prefix: path.map(Into::into),
            ..Match::default()
        };
        assert!(covers(&m(None, Some("/")), &m(Some("a.com"), None)));
        assert!(covers(&m(None, Some("/api")), &m(None, Some("/api/x"))));
        assert!(covers(&m(None, Some("/api/")), &m(None, Some("/api/x"))));
        assert!(!covers(&m(None, Some("/api")), &m(None, Some("/apix"))));
        assert!(!covers(&m(None, Some("/api/")), &m(None, Some("/api"))));
        assert!(covers(&m(Some("*.a.com"), None), &m(Some("X.A.com"), None)));
        assert!(!covers(&m(Some("*.a.com"), None), &m(Some("a.com"), None)));
        let wild = |h| m(Some(h), None);
        assert!(covers(&wild("*.a.com"), &wild("x.y.a.com")));
        assert!(covers(&wild("*.a.com"), &wild("*.y.a.com")));
        assert!(!covers(&wild("*.y.a.com"), &wild("*.a.com")));
        assert!(!covers(&wild("*.a.com"), &wild("xa.com")));
        assert!(!covers(&wild("*.a.com"), &wild("é.b.com")));
        assert!(!covers(&m(Some("a.com"), None), &m(None, None)));
        assert!(covers(
            &m(Some("A.com"), None),
            &m(Some("a.COM"), Some("/x"))
        ));
    }

    #[test]
    fn problem_display() {
        let p = Problem {
            field: "services[0].name".into(),
            line: Some(3),
            message: "must not be empty".into(),
        };
        assert_eq!(p.to_string(), "line 3: services[0].name: must not be empty");
        assert_eq!(
            FieldPath::root()
                .key("routes")
                .index(0)
                .at("match.headers")
                .key("a.b")
                .to_string(),
            "routes[0].match.headers.\"a.b\""
        );
    }

    #[test]
    fn line_of_fields() {
        let config = Config::from_toml(PALISADE).unwrap();
        let line = |needle: &str| {
            PALISADE
                .lines()
                .position(|l| l.starts_with(needle))
                .unwrap()
                + 1
        };
        assert_eq!(
            config.line_of("services[0].retry.max_attempts"),
            Some(line("max_attempts = 3"))
        );
        assert_eq!(
            config.line_of("services[1]"),
            Some(line("name = \"web-staging\"") - 1)
        );
        // Not written: the nearest enclosing table.
        assert_eq!(
            config.line_of("services[1].breaker.window"),
            Some(line("name = \"web-staging\"") - 1)
        );
        assert_eq!(config.line_of("nothing"), None);
    }

    /// A mutation of a text: delete, insert, duplicate or swap.
    fn mutate(text: &str, ops: &[(u8, usize, usize, char)]) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        for &(op, a, b, c) in ops {
            let n = chars.len().max(1);
            let (a, b) = (a % n, b % n);
            let (lo, hi) = (a.min(b), a.max(b).min(a.min(b) + 40));
            match op % 5 {
                0 if !chars.is_empty() => {
                    chars.drain(lo..hi.min(chars.len()));
                }
                1 => chars.insert(a.min(chars.len()), c),
                2 if !chars.is_empty() => {
                    let piece: Vec<char> = chars[lo..hi.min(chars.len())].to_vec();
                    let at = b.min(chars.len());
                    chars.splice(at..at, piece);
                }
                3 if !chars.is_empty() => {
                    let last = chars.len() - 1;
                    chars.swap(a.min(last), b.min(last));
                }
                _ => {
                    let at = a.min(chars.len());
                    chars.splice(at..at, "\n[[routes]]\nservice = \"web\"\n".chars());
                }
            }
        }
        chars.into_iter().collect()
    }

    fn exercise(text: &str) {
        match Config::from_toml(text) {
            Ok(config) => {
                let _ = config.lints();
                let _ = toml::to_string(&config);
            }
            Err(e) => {
                assert!(!e.problems.is_empty());
                let _ = e.to_string();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            exercise(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn random_strings_never_panic(text in "(\\PC|[\\[\\]{}=\"'.,#\n ]){0,300}") {
            exercise(&text);
        }

        #[test]
        fn mutated_examples_never_panic(
            ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<char>()), 1..6)
        ) {
            exercise(&mutate(PALISADE, &ops));
        }

        #[test]
        fn mutated_values_never_panic(
            line in any::<usize>(),
            value in prop_oneof![
                Just("\"\"".to_owned()),
                Just("-1".to_owned()),
                Just("nan".to_owned()),
                Just("inf".to_owned()),
                Just("18446744073709551615".to_owned()),
                Just("9223372036854775807".to_owned()),
                Just("\"99999999999999999999h\"".to_owned()),
                Just("\"584942417355y\"".to_owned()),
                Just("[]".to_owned()),
                Just("{}".to_owned()),
                "\"[a-z0-9 :.*\\[\\]/-]{0,20}\"",
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
            ],
        ) {
            // Replace the value of one `key = value` line.
            let lines: Vec<&str> = PALISADE.lines().collect();
            let candidates: Vec<usize> = (0..lines.len())
                .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains(" = "))
                .collect();
            let target = candidates[line % candidates.len()];
            let text: String = lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if i == target {
                        let key = l.split(" = ").next().unwrap();
                        format!("{key} = {value}\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            exercise(&text);
        }
    }
}
