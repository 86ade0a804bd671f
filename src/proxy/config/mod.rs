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

use crate::ClientConfig;
use crate::discover::{Address, Endpoint};
use crate::http::HttpSettings;

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
    /// HTTP/1.1: the request line and headers; h2c: the header list as
    /// HTTP/2 counts it; either way exactly. At least 1024. Default 64 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// The most header fields an HTTP/1.1 request may carry; more are
    /// answered 431. On h2c, `max_header_bytes` bounds the list instead.
    /// 1 to 10 000. Default 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// The most client connections open at once; more are closed at once
    /// and counted. At least 1. Default: half of what the descriptor limit
    /// (raised to the hard limit at startup) leaves after 128, at least 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// How long a client has to send a complete request head: from the
    /// connection's start, and on HTTP/1.1 from the end of the previous
    /// response (so it is also how long a kept-alive connection may sit
    /// idle). Greater than 0. Default 30 s.
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// How long an h2c connection may have no open stream before it is
    /// closed gracefully (GOAWAY); a stream is open from its request to
    /// the end of its response body. Greater than 0. Default 5 min.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Whether the proxy's error answers carry the whole error, with the
    /// inner client's chain and the endpoint's address, instead of the
    /// reason alone: for debugging, never for clients one does not trust.
    /// Default false.
    #[serde(default)]
    pub verbose_errors: bool,
    /// How often the config file is checked for changes; greater than 0.
    /// Default 2 s.
    #[serde(default = "default_watch_interval", with = "duration")]
    pub watch_interval: Duration,
    /// How many threads serve the listeners, each with its own runtime,
    /// its own socket on every listener address (`SO_REUSEPORT`: the
    /// kernel spreads new connections over them) and its own upstream
    /// connections; balancers, limits and metrics are shared. 1 to 1024.
    /// Default: one per CPU the process may run on. Read at startup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

/// The most serving threads `server.threads` may ask for.
pub const MAX_THREADS: usize = 1024;

impl Server {
    /// The serving threads: `threads`, or one per CPU the process may run
    /// on. Only Unix has `SO_REUSEPORT`: elsewhere, one.
    pub fn threads(&self) -> usize {
        if cfg!(not(unix)) {
            return 1;
        }
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_max_headers() -> usize {
    100
}
fn default_watch_interval() -> Duration {
    Duration::from_secs(2)
}

impl Default for Server {
    fn default() -> Self {
        Server {
            grace_period: default_grace(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_connections: None,
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            verbose_errors: false,
            watch_interval: default_watch_interval(),
            threads: None,
        }
    }
}

/// An upstream service: a name, its endpoints, and the client's settings.
///
/// Beside `name`, `endpoints`, `discovery`, `protocol` and `http`, a service's
/// table holds the library's [`ClientConfig`] tables directly (`retry`,
/// `budget`, `balancer`, `ejection`, `limits`, …): the same structs, the
/// same defaults and the same validation as `Client::builder(..).config(..)`.
///
/// ```
/// let config = palisade::proxy::config::Config::from_toml(r#"
///     [[services]]
///     name = "app"
///     endpoints = ["127.0.0.1:8080"]
///     retry = { max_attempts = 2 }
///
///     [[routes]]
///     service = "app"
/// "#).unwrap();
/// assert_eq!(config.services[0].client.retry.max_attempts, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Service {
    /// The name routes refer to (and metrics and errors carry): letters,
    /// digits, `.`, `_` and `-`, unique among the services.
    pub name: String,
    /// A fixed list of endpoints: `"host:port"`, or a table with
    /// `address`, `weight` and `labels`. Give either this (at least one
    /// endpoint) or [`discovery`](Service::discovery).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
    /// Where the endpoints come from when they are not listed: DNS, a file
    /// or Kubernetes. Give either this or [`endpoints`](Service::endpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    /// How the proxy talks to the endpoints: `"http1"` (default) or `"h2c"`
    /// (HTTP/2 over plain TCP, prior knowledge). Either way connections are
    /// pooled and shared by every service with the same protocol and
    /// [`http`](Service::http) settings.
    pub protocol: Protocol,
    /// How the endpoints are connected to and their connections kept: the
    /// connect timeout, and the pool's idle timeout and idle connections
    /// per endpoint (the library's [`HttpSettings`]).
    pub http: HttpSettings,
    /// The client's settings, one table per layer (written beside the keys
    /// above, not under a key of their own).
    #[serde(flatten)]
    pub client: ClientConfig,
}

/// The keys of a service table that are not [`ClientConfig`]'s.
const SERVICE_KEYS: &[&str] = &["name", "endpoints", "discovery", "protocol", "http"];

impl<'de> Deserialize<'de> for Service {
    /// Reads the service's own keys and hands the rest to
    /// [`ClientConfig::read_key`], so that an error inside a client table
    /// keeps its position in the file (serde's `flatten` would buffer the
    /// values and lose it).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Service, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Service;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a service table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Service, A::Error> {
                use serde::de::Error;
                let mut name = None;
                let mut endpoints = None;
                let mut discovery = None;
                let mut protocol = None;
                let mut http = None;
                let mut client = ClientConfig::default();
                // An unknown key is refused while the key is read, so the
                // error points at it.
                while let Some(ServiceKey(key)) = map.next_key()? {
                    match key {
                        "name" => name = Some(map.next_value()?),
                        "endpoints" => endpoints = Some(map.next_value()?),
                        "discovery" => discovery = Some(map.next_value()?),
                        "protocol" => protocol = Some(map.next_value()?),
                        "http" => http = Some(map.next_value()?),
                        other => {
                            client.read_key(other, &mut map)?;
                        }
                    }
                }
                Ok(Service {
                    name: name.ok_or_else(|| A::Error::missing_field("name"))?,
                    endpoints: endpoints.unwrap_or_default(),
                    discovery,
                    protocol: protocol.unwrap_or_default(),
                    http: http.unwrap_or_default(),
                    client,
                })
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A key of a service table: one of the service's own or one of
/// [`ClientConfig::KEYS`].
struct ServiceKey(&'static str);

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServiceKey, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = ServiceKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a service key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ServiceKey, E> {
                let all = service_keys();
                match all.iter().find(|k| **k == v) {
                    Some(k) => Ok(ServiceKey(k)),
                    None => Err(E::unknown_field(v, all)),
                }
            }
        }
        d.deserialize_identifier(Visit)
    }
}

/// Every key a service table may have, made once.
fn service_keys() -> &'static [&'static str] {
    static ALL: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        SERVICE_KEYS
            .iter()
            .chain(ClientConfig::KEYS)
            .copied()
            .collect()
    })
}

/// The protocol to the endpoints of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// Policies that are valid but cannot work as written, or expose more
    /// than meant: an admin address that is not loopback, per-try timeouts
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

    /// The config without the text it was read from (kept for line
    /// numbers in problems): what a running proxy holds once the config is
    /// checked.
    pub(crate) fn without_source(mut self) -> Config {
        self.source = SourceMap::default();
        self
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
