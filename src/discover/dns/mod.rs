//! DNS discovery: A/AAAA records of a `host:port`, or SRV records of a
//! `_service._proto.name`, re-resolved at the records' TTL.
//!
//! A [`Dns`] builder describes what to resolve and how often;
//! [`Dns::spawn`] starts one task on the current tokio runtime and returns
//! the [`Dynamic`] stream a balancer consumes. The task stops when that
//! stream is dropped (the balancer is gone).
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use palisade::Client;
//! use palisade::discover::dns::{Dns, OnNxdomain};
//! use palisade::Hyper;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // A and AAAA records of `users.internal`, every address on port 8080.
//! let users: Hyper<Full<Bytes>> = Client::builder("users")
//!     .discover(Dns::new("users.internal:8080").spawn()?)
//!     .http(palisade::http::hyper_client())
//!     .build()?;
//!
//! // SRV records: ports and weights come from the records.
//! let payments = Dns::srv("_http._tcp.payments.internal")
//!     .refresh_bounds(Duration::from_secs(5), Duration::from_secs(30))
//!     .on_nxdomain(OnNxdomain::Clear)
//!     .spawn()?;
//! let payments: Hyper<Full<Bytes>> = Client::builder("payments")
//!     .discover(payments)
//!     .http(palisade::http::hyper_client())
//!     .build()?;
//! # let _ = (users, payments);
//! # Ok(())
//! # }
//! ```
//!
//! Names are checked when the builder is made into a source, with errors
//! that name them:
//!
//! ```
//! use palisade::discover::dns::Dns;
//!
//! let err = Dns::parse("users..internal:8080").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "dns discovery: invalid name \"users..internal:8080\": empty label (two dots in a row)"
//! );
//! assert!(Dns::parse("_http._tcp.users.internal").is_ok());
//! ```
//!
//! # What is resolved
//!
//! - **A/AAAA** ([`Dns::new`]): both record types are queried at once (see
//!   [`Dns::ip_family`]); every address becomes an [`Endpoint`] at the
//!   given port with weight 1. One family failing (a server that answers
//!   REFUSED or SERVFAIL for AAAA, as dnsmasq does with no upstream) does
//!   not fail the lookup when the other answered: its addresses are used
//!   and the failure is kept in [`DnsStatus::family_errors`]. The lookup
//!   fails only when no family produced an address and one failed;
//!   NXDOMAIN from one family, being said of the name, makes it missing
//!   even when the other failed.
//! - **SRV** ([`Dns::srv`]): only the records with the lowest priority
//!   number are used (RFC 2782: the others are fallbacks for clients that
//!   cannot reach them, while the balancer's own health checks already
//!   route around dead endpoints). Each target is resolved to its addresses
//!   (A/AAAA as above) and every address becomes an endpoint at the
//!   record's port, labelled `srv_target` with the target name. Weights:
//!   - a record's weight becomes the endpoint weight, split evenly over the
//!     target's addresses (the weight belongs to the host, not to each of
//!     its addresses);
//!   - **weight 0**: if every record of the group has weight 0, each
//!     counts as 1 (equal shares, the usual meaning of an all-zero group);
//!     next to records with weights above 0, a weight-0 record counts as
//!     0.01 — "a very small chance of being selected", as RFC 2782 asks;
//!   - two records that land on the same address add their weights; the
//!     label names the first target in name order.
//!
//!   Records whose target is `.` ("service not available here") or whose
//!   port is 0 are skipped.
//!
//! Endpoints are always [`Address::Socket`](super::Address::Socket): the
//! inner client connects to the address DNS returned and does no
//! resolution of its own.
//!
//! # When it re-resolves
//!
//! After an answer, at the smallest TTL of every record that produced it
//! (CNAMEs and SRV target lookups included), clamped to
//! [`Dns::refresh_bounds`] (1 s to 60 s by default). The resolver's own
//! cache is flushed before every lookup and caps TTLs at the upper bound,
//! so a change is seen within one refresh, never later than the upper
//! bound.
//!
//! # When it fails
//!
//! - A lookup that fails (timeout, SERVFAIL, REFUSED, connection error,
//!   or a failure of every SRV target's lookup) keeps the last good set and
//!   is retried with [`Backoff`](crate::backoff::Backoff): retry `n` waits a
//!   random time up to `min × 2^(n−1)`, capped by the upper bound, and
//!   never less than the lower bound.
//! - An SRV target whose lookup fails while another target answers keeps
//!   the addresses it had in the last set, and its error is kept in
//!   [`DnsStatus::family_errors`], as one failed address family is.
//! - NXDOMAIN or an answer without usable records keeps the last set by
//!   default, or clears it with [`OnNxdomain::Clear`]; it is re-checked on
//!   the same backoff schedule. An SRV target with no addresses is
//!   skipped; if no target has any, the answer counts as "no records".
//! - Every failure is logged with `tracing` (target `palisade::discover::dns`)
//!   naming the DNS name and the error; [`DnsStatus`] holds the last one.
//!
//! # Bounds
//!
//! At most 256 distinct SRV targets (16 looked up at a time) and
//! [`Dns::max_endpoints`] endpoints per answer ([`DEFAULT_MAX_ENDPOINTS`],
//! 100,000, by default); past the limit the first by address are kept and a
//! warning naming the limit is logged.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RecordType};
use tokio::time::Instant;

use super::{Dynamic, Endpoint, dynamic};

mod lookup;
mod task;

use lookup::*;
use task::*;

/// The default lower bound of [`Dns::refresh_bounds`]: 1 s.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);
/// The default upper bound of [`Dns::refresh_bounds`]: 60 s.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(60);
/// Distinct SRV targets resolved per answer.
const MAX_SRV_TARGETS: usize = 256;
/// SRV target lookups in flight at once.
const TARGET_CONCURRENCY: usize = 16;
/// The default of [`Dns::max_endpoints`]: 100,000 endpoints per answer.
pub const DEFAULT_MAX_ENDPOINTS: usize = 100_000;
/// Weight of an SRV weight-0 record next to records with weights above 0.
const SRV_ZERO_WEIGHT: f64 = 0.01;
/// The label that carries an SRV endpoint's target name.
const SRV_TARGET_LABEL: &str = "srv_target";

/// What to do with the last good set when the name stops resolving:
/// NXDOMAIN, or an answer without usable records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnNxdomain {
    /// Keep the last good set (the default): a name deleted by mistake, or a
    /// resolver that briefly answers NXDOMAIN, does not take the service
    /// down.
    #[default]
    Keep,
    /// Clear the set: requests fail fast with `NoEndpoints` until the name
    /// resolves again.
    Clear,
}

/// Which address records a name is resolved to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpFamily {
    /// A and AAAA, queried at once (the default). A name with only one
    /// kind is fine, and so is one kind failing while the other answers
    /// (see [`DnsStatus::family_errors`]); the lookup fails when both fail.
    #[default]
    Both,
    /// A records only.
    V4,
    /// AAAA records only.
    V6,
}

impl IpFamily {
    fn record_types(self) -> &'static [RecordType] {
        match self {
            IpFamily::Both => &[RecordType::A, RecordType::AAAA],
            IpFamily::V4 => &[RecordType::A],
            IpFamily::V6 => &[RecordType::AAAA],
        }
    }
}

/// A DNS discovery source, to be configured and then [spawned](Dns::spawn);
/// see the [module docs](self).
#[derive(Debug)]
#[must_use = "a Dns builder does nothing until spawned"]
pub struct Dns {
    query: Query,
    min_refresh: Duration,
    max_refresh: Duration,
    on_nxdomain: OnNxdomain,
    nameservers: Option<Vec<SocketAddr>>,
    query_timeout: Option<Duration>,
    ip_family: IpFamily,
    max_endpoints: usize,
    status: DnsStatus,
}

#[derive(Debug, Clone)]
enum Query {
    Host(String),
    Srv(String),
}

impl Dns {
    /// Resolves the A/AAAA records of `host:port` (for example
    /// `users.internal:8080`); every address gets that port. The name is
    /// checked by [`spawn`](Dns::spawn).
    pub fn new(host_port: impl Into<String>) -> Dns {
        Dns::with_query(Query::Host(host_port.into()))
    }

    /// Resolves the SRV records of `_service._proto.name` (for example
    /// `_http._tcp.users.internal`); ports and weights come from the
    /// records. The name is checked by [`spawn`](Dns::spawn).
    pub fn srv(name: impl Into<String>) -> Dns {
        Dns::with_query(Query::Srv(name.into()))
    }

    /// Parses a target as written in a config file: a name starting with `_`
    /// is an SRV name ([`Dns::srv`]), anything else a `host:port`
    /// ([`Dns::new`]). Unlike those two, it checks the name at once.
    pub fn parse(target: &str) -> Result<Dns, DnsError> {
        let dns = if target.starts_with('_') {
            Dns::srv(target)
        } else {
            Dns::new(target)
        };
        dns.query.target()?;
        Ok(dns)
    }

    fn with_query(query: Query) -> Dns {
        let name: Arc<str> = match &query {
            Query::Host(s) | Query::Srv(s) => bounded(s).into(),
        };
        Dns {
            query,
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            on_nxdomain: OnNxdomain::Keep,
            nameservers: None,
            query_timeout: None,
            ip_family: IpFamily::Both,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
            status: DnsStatus::new(name),
        }
    }

    /// Bounds the re-resolve interval: the records' TTL is clamped to
    /// `min..=max`, and retries after failures wait at least `min` and at
    /// most `max`. `min` must be above zero and at most `max`. Default 1 s
    /// to 60 s.
    pub fn refresh_bounds(mut self, min: Duration, max: Duration) -> Dns {
        self.min_refresh = min;
        self.max_refresh = max;
        self
    }

    /// What NXDOMAIN (or no usable records) after a success does to the set;
    /// default [`OnNxdomain::Keep`].
    pub fn on_nxdomain(mut self, policy: OnNxdomain) -> Dns {
        self.on_nxdomain = policy;
        self
    }

    /// Queries these name servers (UDP, and TCP for truncated answers, on
    /// each address's port) instead of the system's, without search domains
    /// and without the hosts file. Default: the system configuration
    /// (`/etc/resolv.conf` on Unix); if it cannot be read, a warning is
    /// logged and `127.0.0.1:53` is used, as the C library does.
    pub fn nameservers(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Dns {
        self.nameservers = Some(servers.into_iter().collect());
        self
    }

    /// How long one query may take before it counts as failed (the resolver
    /// may try it again, or another server, before the lookup fails).
    /// Default: the system configuration's, else 5 s.
    pub fn query_timeout(mut self, timeout: Duration) -> Dns {
        self.query_timeout = Some(timeout);
        self
    }

    /// Which address records names are resolved to; default
    /// [`IpFamily::Both`].
    pub fn ip_family(mut self, family: IpFamily) -> Dns {
        self.ip_family = family;
        self
    }

    /// The most endpoints one answer may give the balancer; at least 1.
    /// Default [`DEFAULT_MAX_ENDPOINTS`] (100,000). Past it the first by
    /// address are kept, and a warning names the limit.
    ///
    /// ```
    /// use palisade::discover::dns::Dns;
    ///
    /// let dns = Dns::parse("users.internal:8080").unwrap().max_endpoints(0);
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # let _guard = rt.enter();
    /// let err = dns.spawn().unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "dns discovery for \"users.internal:8080\": max_endpoints: must be at least 1"
    /// );
    /// ```
    pub fn max_endpoints(mut self, max: usize) -> Dns {
        self.max_endpoints = max;
        self
    }

    /// A handle on this source's live state (current set, last success, last
    /// error), for admin endpoints and tests. Take it before
    /// [`spawn`](Dns::spawn).
    pub fn status(&self) -> DnsStatus {
        self.status.clone()
    }

    /// Checks the settings, then spawns the task that resolves the name and
    /// feeds the returned stream. Must be called within a tokio runtime (an
    /// error otherwise); the task runs there until the stream is dropped.
    pub fn spawn(self) -> Result<Dynamic, DnsError> {
        let target = self.checked()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime {
            name: self.status.name().to_owned(),
        })?;
        let resolver = self.build_resolver()?;
        let (handle, discover) = dynamic();
        let schedule = Schedule {
            min: self.min_refresh,
            max: self.max_refresh,
            on_nxdomain: self.on_nxdomain,
            max_endpoints: self.max_endpoints,
        };
        let lookup = Hickory {
            resolver,
            target,
            family: self.ip_family,
            srv_targets: HashMap::new(),
        };
        runtime.spawn(run(lookup, handle, schedule, self.status));
        Ok(discover)
    }

    /// Checks the name and the settings as [`spawn`](Dns::spawn) does,
    /// without starting anything (the proxy's config validation uses this).
    pub(crate) fn check(&self) -> Result<(), DnsError> {
        self.checked().map(drop)
    }

    fn checked(&self) -> Result<Target, DnsError> {
        let target = self.query.target()?;
        let invalid = |setting, reason: String| DnsError::InvalidSetting {
            name: self.status.name().to_owned(),
            setting,
            reason,
        };
        if self.min_refresh.is_zero() || self.min_refresh > self.max_refresh {
            return Err(invalid(
                "refresh_bounds",
                format!(
                    "min must be above zero and at most max, got min {:?}, max {:?}",
                    self.min_refresh, self.max_refresh
                ),
            ));
        }
        if self.query_timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid("query_timeout", "must be above zero".into()));
        }
        if self.max_endpoints == 0 {
            return Err(invalid("max_endpoints", "must be at least 1".into()));
        }
        if self.nameservers.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid("nameservers", "no addresses given".into()));
        }
        Ok(target)
    }

    fn build_resolver(&self) -> Result<TokioResolver, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match &self.nameservers {
            Some(servers) => {
                let servers = servers
                    .iter()
                    .map(|addr| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = addr.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = addr.port();
                        NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                    })
                    .collect();
                let mut builder = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers),
                    provider,
                );
                builder.options_mut().use_hosts_file = ResolveHosts::Never;
                builder
            }
            None => match TokioResolver::builder(provider.clone()) {
                Ok(builder) => builder,
                Err(error) => {
                    tracing::warn!(
                        dns.name = %self.status.name(),
                        %error,
                        "could not read the system DNS configuration; using 127.0.0.1:53",
                    );
                    let local = NameServerConfig::udp_and_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST));
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(vec![local]),
                        provider,
                    )
                }
            },
        };
        let opts = builder.options_mut();
        // The cache is flushed before every lookup; capping its TTLs as well
        // means nothing it holds can outlive one refresh even if that changes.
        opts.positive_max_ttl = Some(self.max_refresh);
        opts.negative_max_ttl = Some(self.max_refresh);
        if let Some(timeout) = self.query_timeout {
            opts.timeout = timeout;
        }
        builder.build().map_err(|e| DnsError::Resolver {
            name: self.status.name().to_owned(),
            message: e.to_string(),
        })
    }
}

impl Query {
    /// Checks the name and turns it into what is queried.
    fn target(&self) -> Result<Target, DnsError> {
        match self {
            Query::Host(s) => parse_host_port(s),
            Query::Srv(s) => parse_srv(s),
        }
        .map_err(|reason| DnsError::InvalidName {
            name: bounded(match self {
                Query::Host(s) | Query::Srv(s) => s,
            }),
            reason,
        })
    }
}

/// A validated query.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Host { name: Name, port: u16 },
    Srv { name: Name },
}

fn parse_host_port(s: &str) -> Result<Target, &'static str> {
    if s.parse::<SocketAddr>().is_ok() {
        return Err("is an IP address, not a DNS name (use discover::Static for fixed addresses)");
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("expected host:port (SRV names start with '_')");
    };
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("port must be a number from 1 to 65535"),
        Ok(port) => port,
    };
    if host.parse::<IpAddr>().is_ok() {
        return Err("is an IP address, not a DNS name (use discover::Static for fixed addresses)");
    }
    let name = parse_name(host)?;
    Ok(Target::Host { name, port })
}

fn parse_srv(s: &str) -> Result<Target, &'static str> {
    if s.contains(':') {
        return Err("an SRV name has no port: ports come from the records");
    }
    let name = parse_name(s)?;
    let mut labels = s.trim_end_matches('.').split('.');
    let service = labels.next().unwrap_or_default();
    let proto = labels.next().unwrap_or_default();
    if !(service.len() > 1 && service.starts_with('_') && proto.len() > 1 && proto.starts_with('_'))
        || labels.next().is_none()
    {
        return Err("an SRV name has the form _service._proto.name");
    }
    Ok(Target::Srv { name })
}

/// Checks a host name (letters, digits, `-`, `_`; labels of 1 to 63;
/// at most 253 in all; an optional final dot) and parses it.
fn parse_name(host: &str) -> Result<Name, &'static str> {
    let bare = host.strip_suffix('.').unwrap_or(host);
    if bare.is_empty() {
        return Err("the name is empty");
    }
    if bare.len() > 253 {
        return Err("the name is longer than 253 characters");
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row)");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a name may only hold letters, digits, '-', '_' and '.'");
        }
    }
    Name::from_ascii(host).map_err(|_| "not a valid DNS name")
}

/// Bounds what is echoed back of an input that may be hostile.
fn bounded(s: &str) -> String {
    if s.len() <= 256 {
        return s.to_owned();
    }
    let mut cut = 256;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

impl FromStr for Dns {
    type Err = DnsError;

    fn from_str(s: &str) -> Result<Dns, DnsError> {
        Dns::parse(s)
    }
}

/// Why a [`Dns`] source could not be started; every message names the DNS
/// name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsError {
    /// The name to resolve is not a valid `host:port` or SRV name.
    InvalidName {
        /// The name as given (at most 256 bytes of it).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A setting is out of range.
    InvalidSetting {
        /// The DNS name of the source.
        name: String,
        /// The builder method that set it.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// [`Dns::spawn`] was called outside a tokio runtime.
    NoRuntime {
        /// The DNS name of the source.
        name: String,
    },
    /// The resolver could not be built.
    Resolver {
        /// The DNS name of the source.
        name: String,
        /// The resolver's error.
        message: String,
    },
}

impl DnsError {
    /// The DNS name (as given) of the source that failed.
    pub fn name(&self) -> &str {
        match self {
            DnsError::InvalidName { name, .. }
            | DnsError::InvalidSetting { name, .. }
            | DnsError::NoRuntime { name }
            | DnsError::Resolver { name, .. } => name,
        }
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::InvalidName { name, reason } => {
                write!(f, "dns discovery: invalid name {name:?}: {reason}")
            }
            DnsError::InvalidSetting {
                name,
                setting,
                reason,
            } => write!(f, "dns discovery for {name:?}: {setting}: {reason}"),
            DnsError::NoRuntime { name } => write!(
                f,
                "dns discovery for {name:?}: spawn() must be called within a tokio runtime"
            ),
            DnsError::Resolver { name, message } => write!(
                f,
                "dns discovery for {name:?}: could not build the resolver: {message}"
            ),
        }
    }
}

impl std::error::Error for DnsError {}

/// The live state of a [`Dns`] source; cheap to clone. See [`Dns::status`].
#[derive(Clone)]
pub struct DnsStatus {
    inner: Arc<StatusInner>,
}

struct StatusInner {
    name: Arc<str>,
    state: Mutex<StatusState>,
}

#[derive(Default)]
struct StatusState {
    endpoints: Vec<Endpoint>,
    last_success: Option<Instant>,
    last_error: Option<String>,
    family_errors: Vec<String>,
    failures: u32,
    lookups: u64,
}

impl DnsStatus {
    fn new(name: Arc<str>) -> DnsStatus {
        DnsStatus {
            inner: Arc::new(StatusInner {
                name,
                state: Mutex::new(StatusState::default()),
            }),
        }
    }

    fn update<R>(&self, f: impl FnOnce(&mut StatusState) -> R) -> R {
        f(&mut self.inner.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The DNS name, as given.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The set last handed to the balancer, sorted by address.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.update(|s| s.endpoints.clone())
    }

    /// When a lookup last produced endpoints.
    pub fn last_success(&self) -> Option<Instant> {
        self.update(|s| s.last_success)
    }

    /// The error (or NXDOMAIN) of the last lookup, if it did not produce
    /// endpoints; `None` once one does again.
    pub fn last_error(&self) -> Option<String> {
        self.update(|s| s.last_error.clone())
    }

    /// The errors of the address families that failed in the last lookup
    /// that produced endpoints, because another family answered: with
    /// [`IpFamily::Both`], a server that refuses AAAA (as dnsmasq does with
    /// no upstream) while A answers gives
    /// `["AAAA h.svc.test.: … Query Refused"]`, and the A addresses are
    /// used. For SRV, one entry per failed family of each target, and an
    /// SRV target whose families all failed while another target answered
    /// (`"A db.example.: …; AAAA db.example.: …"`; it kept its last
    /// addresses). Empty when every family answered.
    pub fn family_errors(&self) -> Vec<String> {
        self.update(|s| s.family_errors.clone())
    }

    /// Lookups in a row that did not produce endpoints.
    pub fn consecutive_failures(&self) -> u32 {
        self.update(|s| s.failures)
    }

    /// Lookups completed so far, whatever their outcome.
    pub fn lookups(&self) -> u64 {
        self.update(|s| s.lookups)
    }
}

impl fmt::Debug for DnsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.update(|s| {
            f.debug_struct("DnsStatus")
                .field("name", &self.inner.name)
                .field("endpoints", &s.endpoints.len())
                .field("last_success", &s.last_success)
                .field("last_error", &s.last_error)
                .field("family_errors", &s.family_errors)
                .field("failures", &s.failures)
                .field("lookups", &s.lookups)
                .finish()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::DynamicHandle;
    use std::collections::HashMap;
    use std::collections::VecDeque;

    fn ep(addr: &str) -> Endpoint {
        Endpoint::parse(addr).unwrap()
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    fn schedule(min_ms: u64, max_ms: u64) -> Schedule {
        Schedule {
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
            on_nxdomain: OnNxdomain::Keep,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
        }
    }

    #[test]
    fn the_ttl_is_clamped_to_the_refresh_bounds() {
        let s = schedule(1000, 60_000);
        assert_eq!(s.refresh(Some(0)), Duration::from_secs(1));
        assert_eq!(s.refresh(Some(1)), Duration::from_secs(1));
        assert_eq!(s.refresh(Some(30)), Duration::from_secs(30));
        assert_eq!(s.refresh(Some(86_400)), Duration::from_secs(60));
        assert_eq!(s.refresh(Some(u32::MAX)), Duration::from_secs(60));
        assert_eq!(s.refresh(None), Duration::from_secs(60));
    }

    #[test]
    fn retries_back_off_between_the_bounds() {
        let s = schedule(100, 1000);
        for retry in 1..=40 {
            let ceiling = Duration::from_millis(100 * (1u64 << (retry - 1).min(20))).min(s.max);
            for _ in 0..200 {
                let d = s.retry(retry);
                assert!(d >= s.min, "retry {retry}: {d:?} below the min bound");
                assert!(d <= ceiling, "retry {retry}: {d:?} above {ceiling:?}");
            }
        }
        // Late retries spread over the whole range up to the cap.
        let late: Vec<Duration> = (0..500).map(|_| s.retry(30)).collect();
        assert!(
            late.iter().any(|d| *d > Duration::from_millis(800)),
            "{late:?}"
        );
        assert!(late.iter().all(|d| *d <= s.max));
    }

    #[test]
    fn srv_uses_the_lowest_priority_group_only() {
        let picks = select_srv(&[
            srv(20, 100, 80, "backup.example"),
            srv(10, 30, 8081, "b.example"),
            srv(10, 10, 8080, "a.example"),
            srv(30, 5, 80, "later.example"),
        ]);
        assert_eq!(
            picks,
            vec![
                Pick {
                    target: "a.example".into(),
                    port: 8080,
                    weight: 10.0
                },
                Pick {
                    target: "b.example".into(),
                    port: 8081,
                    weight: 30.0
                },
            ]
        );
    }

    #[test]
    fn srv_weight_zero_is_equal_alone_and_tiny_next_to_others() {
        let all_zero = select_srv(&[srv(1, 0, 80, "a"), srv(1, 0, 80, "b")]);
        assert!(all_zero.iter().all(|p| p.weight == 1.0), "{all_zero:?}");

        let mixed = select_srv(&[srv(1, 0, 80, "a"), srv(1, 5, 80, "b")]);
        assert_eq!(mixed[0].weight, SRV_ZERO_WEIGHT);
        assert_eq!(mixed[1].weight, 5.0);
    }

    #[test]
    fn srv_skips_root_targets_and_port_zero_and_merges_duplicates() {
        // A "." target at a better priority does not hide the real group.
        let picks = select_srv(&[
            srv(0, 1, 80, ""),
            srv(5, 1, 0, "zero.port"),
            srv(10, 2, 80, "a"),
            srv(10, 3, 80, "a"),
        ]);
        assert_eq!(
            picks,
            vec![Pick {
                target: "a".into(),
                port: 80,
                weight: 5.0
            }]
        );
        assert!(select_srv(&[srv(0, 0, 0, "")]).is_empty());
        assert!(select_srv(&[]).is_empty());
    }

    #[test]
    fn srv_endpoints_split_weights_over_addresses_and_label_targets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let picks = vec![
            Pick {
                target: "a.example".into(),
                port: 80,
                weight: 10.0,
            },
            Pick {
                target: "b.example".into(),
                port: 80,
                weight: 4.0,
            },
            Pick {
                target: "c.example".into(),
                port: 81,
                weight: 1.0,
            },
            Pick {
                target: "missing.example".into(),
                port: 80,
                weight: 1.0,
            },
        ];
        let addrs = HashMap::from([
            ("a.example".to_owned(), vec![ip("10.0.0.1"), ip("fd00::1")]),
            // b shares 10.0.0.1:80 with a: their weights add up.
            ("b.example".to_owned(), vec![ip("10.0.0.1")]),
            ("c.example".to_owned(), vec![ip("10.0.0.3")]),
        ]);
        let eps = srv_endpoints(&picks, &addrs);
        let got: Vec<(String, f64, String)> = eps
            .iter()
            .map(|e| {
                (
                    e.address().to_string(),
                    e.weight(),
                    e.labels()[SRV_TARGET_LABEL].clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1:80".into(), 9.0, "a.example".into()),
                ("10.0.0.3:81".into(), 1.0, "c.example".into()),
                ("[fd00::1]:80".into(), 5.0, "a.example".into()),
            ]
        );
    }

    #[test]
    fn names_are_checked_with_errors_that_name_them() {
        for (input, reason) in [
            ("users.internal", "expected host:port"),
            ("users.internal:http", "port must be"),
            ("users.internal:0", "port must be"),
            ("users.internal:70000", "port must be"),
            ("10.0.0.1:80", "is an IP address"),
            ("[::1]:80", "is an IP address"),
            (":80", "the name is empty"),
            ("users..internal:80", "empty label"),
            ("users internal:80", "may only hold"),
            ("usérs.internal:80", "may only hold"),
            ("_http._tcp.users.internal:80", "an SRV name has no port"),
            ("_http.users.internal", "the form _service._proto.name"),
            ("_http._tcp", "the form _service._proto.name"),
            ("_._tcp.users", "the form _service._proto.name"),
        ] {
            let err = Dns::parse(input).expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains(reason), "{input:?}: {msg}");
            assert!(msg.contains(&format!("{input:?}")), "{input:?}: {msg}");
            assert_eq!(err.name(), input);
        }
        let long = format!("{}.internal:80", "a".repeat(64));
        assert!(
            Dns::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("longer than 63")
        );
        let huge = format!("{}:80", "a.".repeat(400));
        let err = Dns::parse(&huge).unwrap_err();
        assert!(err.name().len() < 300, "the echo is bounded");

        for ok in [
            "users.internal:8080",
            "users:80",
            "users.internal.:80",
            "my_svc.ns.svc.cluster.local:9000",
            "_http._tcp.users.internal",
            "_grpc._tcp.users.internal.",
        ] {
            assert!(Dns::parse(ok).is_ok(), "{ok}");
        }
        assert!(matches!(
            Dns::parse("_http._tcp.users").unwrap().query,
            Query::Srv(_)
        ));
        assert!(matches!(
            "users:80".parse::<Dns>().unwrap().query,
            Query::Host(_)
        ));
    }

    #[test]
    fn spawn_outside_a_runtime_is_an_error() {
        let err = Dns::new("users.internal:80")
            .nameservers(["127.0.0.1:53".parse().unwrap()])
            .spawn()
            .unwrap_err();
        assert_eq!(
            err,
            DnsError::NoRuntime {
                name: "users.internal:80".into()
            }
        );
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }

    #[tokio::test]
    async fn bad_settings_are_errors_naming_the_setting() {
        let base = || Dns::new("users.internal:80").nameservers(["127.0.0.1:53".parse().unwrap()]);
        let secs = Duration::from_secs;
        let cases = [
            (
                base().refresh_bounds(Duration::ZERO, secs(1)),
                "refresh_bounds",
            ),
            (base().refresh_bounds(secs(2), secs(1)), "refresh_bounds"),
            (base().query_timeout(Duration::ZERO), "query_timeout"),
            (base().nameservers([]), "nameservers"),
            (base().max_endpoints(0), "max_endpoints"),
        ];
        for (dns, setting) in cases {
            let err = dns.spawn().unwrap_err();
            assert!(
                matches!(&err, DnsError::InvalidSetting { setting: s, .. } if *s == setting),
                "{err}"
            );
            assert!(err.to_string().contains("\"users.internal:80\""), "{err}");
        }
        assert!(matches!(
            Dns::new("nope").spawn().unwrap_err(),
            DnsError::InvalidName { .. }
        ));
    }

    /// A scripted resolver: answers in order, then repeats the last one, and
    /// records when it was asked.
    struct Script {
        answers: VecDeque<Outcome>,
        last: Outcome,
        asked: Arc<Mutex<Vec<Instant>>>,
    }

    impl Resolve for Script {
        async fn resolve(&mut self) -> Outcome {
            self.asked.lock().unwrap().push(Instant::now());
            if let Some(next) = self.answers.pop_front() {
                self.last = next;
            }
            self.last.clone()
        }
    }

    fn found(addrs: &[&str], ttl: u32) -> Outcome {
        Outcome::Found {
            endpoints: addrs.iter().map(|a| ep(a)).collect(),
            ttl: Some(ttl),
            family_errors: Vec::new(),
        }
    }

    struct Harness {
        handle: DynamicHandle,
        dynamic: Option<Dynamic>,
        status: DnsStatus,
        asked: Arc<Mutex<Vec<Instant>>>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(answers: Vec<Outcome>, schedule: Schedule) -> Harness {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (handle, dynamic) = dynamic();
        let status = DnsStatus::new("test.internal:80".into());
        let script = Script {
            answers: answers.into(),
            last: Outcome::Failed("script ran dry".into()),
            asked: asked.clone(),
        };
        let task = tokio::spawn(run(script, handle.clone(), schedule, status.clone()));
        Harness {
            handle,
            dynamic: Some(dynamic),
            status,
            asked,
            task,
        }
    }

    impl Harness {
        /// Lets the task run until it has been asked `n` times.
        async fn until_asked(&self, n: usize) {
            while self.asked.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Let it apply the answer.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }

        fn gaps(&self) -> Vec<Duration> {
            let asked = self.asked.lock().unwrap();
            asked.windows(2).map(|w| w[1] - w[0]).collect()
        }

        fn addrs(&self) -> Vec<String> {
            self.handle
                .endpoints()
                .iter()
                .map(|e| e.address().to_string())
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn re_resolves_at_the_clamped_ttl() {
        let h = start(
            vec![
                found(&["10.0.0.1:80"], 5),
                found(&["10.0.0.1:80"], 0),
                found(&["10.0.0.2:80"], 3600),
                found(&["10.0.0.2:80"], 30),
            ],
            schedule(1000, 60_000),
        );
        h.until_asked(5).await;
        assert_eq!(
            h.gaps(),
            vec![
                Duration::from_secs(5),
                Duration::from_secs(1),
                Duration::from_secs(60),
                Duration::from_secs(30),
            ]
        );
        assert_eq!(h.addrs(), vec!["10.0.0.2:80"]);
        assert_eq!(h.status.consecutive_failures(), 0);
        assert!(h.status.last_success().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_the_set_and_retries_with_backoff() {
        let mut answers = vec![found(&["10.0.0.1:80", "10.0.0.2:80"], 10)];
        answers.extend((0..6).map(|_| Outcome::Failed("SERVFAIL".into())));
        answers.push(found(&["10.0.0.3:80"], 10));
        let s = schedule(100, 20_000);
        let h = start(answers, s);

        h.until_asked(2).await;
        assert_eq!(h.addrs(), vec!["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(h.status.last_error().as_deref(), Some("SERVFAIL"));

        h.until_asked(8).await;
        assert_eq!(h.addrs(), vec!["10.0.0.3:80"]);
        assert_eq!(h.status.last_error(), None);
        assert_eq!(h.status.endpoints().len(), 1);

        let gaps = h.gaps();
        assert_eq!(
            gaps[0],
            Duration::from_secs(10),
            "the first refresh is at the TTL"
        );
        // Gaps after failures 1..=6: at least min, at most min × 2^(n−1), capped.
        for (n, gap) in gaps[1..7].iter().enumerate() {
            let ceiling = (s.min * (1 << n)).min(s.max);
            assert!(*gap >= s.min && *gap <= ceiling, "retry {}: {gap:?}", n + 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nxdomain_keeps_the_set_by_default() {
        let h = start(
            vec![
                found(&["10.0.0.1:80"], 1),
                Outcome::Missing("NXDOMAIN (no such name)".into()),
            ],
            schedule(1000, 10_000),
        );
        h.until_asked(3).await;
        assert_eq!(h.addrs(), vec!["10.0.0.1:80"]);
        assert_eq!(h.status.endpoints().len(), 1);
        assert!(h.status.last_error().unwrap().contains("NXDOMAIN"));
        assert_eq!(h.status.consecutive_failures(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn nxdomain_clears_the_set_when_configured() {
        let mut s = schedule(1000, 10_000);
        s.on_nxdomain = OnNxdomain::Clear;
        let h = start(
            vec![
                found(&["10.0.0.1:80"], 1),
                Outcome::Missing("NXDOMAIN (no such name)".into()),
                found(&["10.0.0.2:80"], 1),
            ],
            s,
        );
        h.until_asked(2).await;
        assert!(h.handle.is_empty());
        assert!(h.status.endpoints().is_empty());
        h.until_asked(3).await;
        assert_eq!(h.addrs(), vec!["10.0.0.2:80"]);
    }

    /// Every event as one line: its level and `field=value` pairs.
    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<String>>>);

    struct Line<'a>(&'a mut String);

    impl tracing::field::Visit for Line<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut line = event.metadata().level().to_string();
            event.record(&mut Line(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }

    /// Tests that capture log events run one at a time.
    static LOGGING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    thread_local! {
        /// Where this thread's events go while it captures.
        static CAPTURING: std::cell::RefCell<Option<Events>> =
            const { std::cell::RefCell::new(None) };
    }

    /// The process-wide subscriber: it hands each event to its thread's
    /// capture, if there is one. A scoped subscriber per test
    /// (`set_default`) lost events when other tests on other threads
    /// reached the same call sites at the same time (tracing caches a call
    /// site's interest process-wide); a global one is always interested.
    struct ToCapturing;

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ToCapturing {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            CAPTURING.with(|c| {
                if let Some(events) = &*c.borrow() {
                    tracing_subscriber::Layer::<S>::on_event(events, event, ctx);
                }
            });
        }
    }

    /// Stops this thread's capture when dropped.
    struct Capture;

    impl Drop for Capture {
        fn drop(&mut self) {
            CAPTURING.with(|c| *c.borrow_mut() = None);
        }
    }

    /// Captures this thread's events until the guard is dropped.
    fn capture(events: &Events) -> Capture {
        use tracing_subscriber::layer::SubscriberExt;
        static GLOBAL: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(|| {
            let _ = tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(ToCapturing),
            );
        });
        CAPTURING.with(|c| *c.borrow_mut() = Some(events.clone()));
        Capture
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_logged_naming_the_name_and_the_error() {
        let _serial = LOGGING.lock().await;
        let events = Events::default();
        let _guard = capture(&events);

        let h = start(
            vec![
                found(&["10.0.0.1:80"], 1),
                Outcome::Failed("SRV _http._tcp.users.internal.: request timed out".into()),
                Outcome::Missing("NXDOMAIN (no such name)".into()),
                found(&["10.0.0.1:80"], 1),
            ],
            schedule(1000, 10_000),
        );
        h.until_asked(4).await;
        let events = events.0.lock().unwrap().clone();
        let warned = |needle: &str| {
            events.iter().any(|e| {
                e.starts_with("WARN") && e.contains("test.internal:80") && e.contains(needle)
            })
        };
        assert!(warned("request timed out"), "{events:#?}");
        assert!(warned("NXDOMAIN"), "{events:#?}");
        assert!(
            events
                .iter()
                .any(|e| e.starts_with("INFO") && e.contains("recovered")),
            "{events:#?}"
        );
    }

    /// `n` distinct addresses, 10.0.0.0 upwards on port 80.
    fn many(n: u32) -> Vec<String> {
        (0..n)
            .map(|i| format!("{}:80", Ipv4Addr::from(0x0a00_0000 + i)))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn answers_past_the_old_1024_cap_reach_the_balancer_by_default() {
        let addrs = many(20_000);
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let h = start(vec![found(&refs, 3600)], schedule(1000, 60_000));
        h.until_asked(1).await;
        assert_eq!(h.handle.endpoints().len(), 20_000);
        assert_eq!(h.status.endpoints().len(), 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_cap_keeps_the_first_by_address_and_warns_naming_the_limit() {
        let _serial = LOGGING.lock().await;
        let events = Events::default();
        let _guard = capture(&events);
        let addrs = many(5);
        let mut refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        refs.reverse();
        let mut capped = schedule(1000, 60_000);
        capped.max_endpoints = 3;
        let h = start(vec![found(&refs, 3600)], capped);
        h.until_asked(1).await;
        assert_eq!(h.addrs(), vec!["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]);
        let events = events.0.lock().unwrap().clone();
        assert!(
            events.iter().any(|e| e.starts_with("WARN")
                && e.contains("more than 3 endpoints, the limit (max_endpoints)")),
            "{events:#?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_stops_when_the_stream_is_dropped() {
        let mut h = start(vec![found(&["10.0.0.1:80"], 3600)], schedule(1000, 60_000));
        h.until_asked(1).await;
        assert!(!h.task.is_finished());
        drop(h.dynamic.take());
        tokio::time::timeout(Duration::from_secs(1), &mut h.task)
            .await
            .expect("the task stops without waiting for its refresh")
            .unwrap();
        assert_eq!(h.asked.lock().unwrap().len(), 1);
    }
}
