//! Kubernetes discovery: the ready endpoints of a Service, watched through
//! its EndpointSlices (`discovery.k8s.io/v1`) with kube-rs.
//!
//! [`Kubernetes`] is a builder; [`spawn`](Kubernetes::spawn) starts one task
//! on the current tokio runtime and returns the [`Dynamic`] stream a balancer
//! consumes. The task lists and then watches the slices labelled
//! `kubernetes.io/service-name=<service>` in the namespace, keeps a map from
//! slice name to that slice's endpoints, and publishes the union over all
//! slices whenever it changes. It stops when the `Dynamic` stream (that is,
//! the balancer) is dropped.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use palisade::discover::kubernetes::Kubernetes;
//! use tower::ServiceExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // In a pod: its service account; elsewhere: the local kubeconfig.
//! let discover = Kubernetes::infer("shop", "users")
//!     .await?
//!     .port_name("http")
//!     .spawn()?;
//! let client = palisade::Client::builder("users")
//!     .discover(discover)
//!     .http(palisade::http::hyper_client())
//!     .build()?;
//!
//! let req = http::Request::get("http://users/v1/me").body(Full::<Bytes>::default())?;
//! let rsp = client.oneshot(req).await?;
//! println!("{}", rsp.status());
//! # Ok(())
//! # }
//! ```
//!
//! The identity it runs as needs `list` and `watch` on
//! `endpointslices.discovery.k8s.io` in the namespace.
//!
//! # Which endpoints
//!
//! - **Readiness.** An endpoint is used when `conditions.ready` is true or
//!   unset (the API says to read an unknown state as ready). Endpoints that
//!   are not ready but still `serving` while `terminating` are a *fallback*:
//!   they are used only when the whole service has no ready endpoint, as
//!   kube-proxy does, so that a service whose last pods are being replaced
//!   keeps answering instead of failing every request. Turn this off with
//!   [`terminating_fallback(false)`](Kubernetes::terminating_fallback).
//! - **Port.** The slice's port named by [`port_name`](Kubernetes::port_name),
//!   or, without it, the slice's only TCP port. A slice that has endpoints
//!   but not that port (or has several ports and no name was set) contributes
//!   nothing; this is logged once when it happens to that slice, not on
//!   every event.
//! - **Addresses.** Every address of an endpoint is an
//!   [`Address::Socket`] (IPv4 and IPv6 slices); an `FQDN` slice's addresses
//!   become [`Address::Name`]s. An address listed by several slices is used
//!   once.
//! - **Labels.** Each endpoint carries `zone`, `node`, `hostname` and `pod`
//!   (or `target`, `Kind/name`, for a target that is not a pod) when the
//!   slice says so, then the slice's own labels (the ones the EndpointSlice
//!   controller copies from the Service) except its bookkeeping labels. At
//!   most 16 labels an endpoint; a key longer than 128 bytes or a value
//!   longer than 256 bytes is left out.
//! - **Size.** At most [`max_endpoints`](Kubernetes::max_endpoints)
//!   ([`DEFAULT_MAX_ENDPOINTS`], 100,000, by default) endpoints are
//!   published, the first by address; a larger set is logged with a warning
//!   naming the limit.
//!
//! # Failures
//!
//! The watch is kube-rs's [`watcher`](kube::runtime::watcher()): it pages
//! through the list, resumes a dropped watch from the last resource version
//! it saw (bookmarks included) and relists when the API server says that
//! version is gone (410 as a watch `ERROR` event). It retries a watch whose
//! HTTP status is 410 with the same version forever, though, so here such an
//! answer starts a new watcher, which lists.
//!
//! Every error is logged (warning) with the namespace, the service and the
//! error, and followed by an exponential backoff with jitter
//! ([`backoff`](Kubernetes::backoff): 800 ms doubling to 30 s by default,
//! as client-go). The backoff is reset by progress (a completed list, a
//! watch event), not by a mere reconnect, so an API server that accepts
//! connections and fails every list still sees the delays grow.
//!
//! While the API server cannot be reached the balancer keeps the last
//! complete set, and a relist replaces the set only once it has completed.
//! A connection that goes silent without closing is noticed when the watch
//! times out (the server ends it after about 290 s; kube's read timeout is
//! 295 s); until then, too, the last set is kept.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use kube::runtime::watcher::{self, Event};
use rand::RngExt;

use super::{Address, Dynamic, DynamicHandle, Endpoint};

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Slice labels that are bookkeeping, not metadata worth carrying.
const SKIPPED_SLICE_LABELS: &[&str] = &[
    SERVICE_NAME_LABEL,
    "endpointslice.kubernetes.io/managed-by",
    "endpointslice.kubernetes.io/skip-mirror",
    "service.kubernetes.io/headless",
];

const MAX_LABELS: usize = 16;
const MAX_LABEL_KEY_LEN: usize = 128;
const MAX_LABEL_VALUE_LEN: usize = 256;
/// The default of [`Kubernetes::max_endpoints`]: 100,000 endpoints.
pub const DEFAULT_MAX_ENDPOINTS: usize = 100_000;
const DEFAULT_BACKOFF: (Duration, Duration) = (Duration::from_millis(800), Duration::from_secs(30));

/// Builds a Kubernetes discovery source; see the [module docs](self).
#[must_use = "nothing is watched until `spawn` is called"]
pub struct Kubernetes {
    client: kube::Client,
    namespace: String,
    service: String,
    port_name: Option<String>,
    backoff: (Duration, Duration),
    max_endpoints: usize,
    terminating_fallback: bool,
}

impl fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kubernetes")
            .field("namespace", &self.namespace)
            .field("service", &self.service)
            .field("port_name", &self.port_name)
            .field("backoff", &self.backoff)
            .field("max_endpoints", &self.max_endpoints)
            .field("terminating_fallback", &self.terminating_fallback)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// Discovery of `service` in `namespace` through `client`.
    ///
    /// The names are checked by [`spawn`](Kubernetes::spawn).
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        service: impl Into<String>,
    ) -> Kubernetes {
        Kubernetes {
            client,
            namespace: namespace.into(),
            service: service.into(),
            port_name: None,
            backoff: DEFAULT_BACKOFF,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
            terminating_fallback: true,
        }
    }

    /// Like [`new`](Kubernetes::new), with a client configured the way
    /// `kubectl` would be: the pod's service account in a cluster, else the
    /// local kubeconfig ([`kube::Config::infer`]).
    pub async fn infer(
        namespace: impl Into<String>,
        service: impl Into<String>,
    ) -> Result<Kubernetes, KubernetesError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| KubernetesError::Config(Box::new(e)))?;
        let client = kube::Client::try_from(config).map_err(KubernetesError::Client)?;
        Ok(Kubernetes::new(client, namespace, service))
    }

    /// Uses the slices' port with this name (a Service port name, such as
    /// `http`). Without it, each slice's only TCP port is used.
    pub fn port_name(mut self, name: impl Into<String>) -> Kubernetes {
        self.port_name = Some(name.into());
        self
    }

    /// The backoff after an error: `initial`, doubling up to `max`, each
    /// delay jittered by ±25 % (default 800 ms to 30 s). `initial` is at
    /// least 1 ms and `max` at least `initial`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Kubernetes {
        let initial = initial.max(Duration::from_millis(1));
        self.backoff = (initial, max.max(initial));
        self
    }

    /// The most endpoints published (default [`DEFAULT_MAX_ENDPOINTS`],
    /// 100,000; at least 1); beyond it the first by address are kept and a
    /// warning names the limit.
    pub fn max_endpoints(mut self, max: usize) -> Kubernetes {
        self.max_endpoints = max.max(1);
        self
    }

    /// Whether endpoints that are terminating but still serving are used
    /// when the service has no ready endpoint at all (default true).
    pub fn terminating_fallback(mut self, enabled: bool) -> Kubernetes {
        self.terminating_fallback = enabled;
        self
    }

    /// Checks the names, spawns the watch task on the current tokio runtime
    /// and returns the stream to give the balancer
    /// ([`Builder::discover`](crate::stack::Builder::discover)).
    ///
    /// The stream yields nothing until the first list has completed. The
    /// task ends when the stream is dropped.
    pub fn spawn(self) -> Result<Dynamic, KubernetesError> {
        check_label("namespace", &self.namespace)?;
        check_label("service", &self.service)?;
        if let Some(port) = &self.port_name {
            check_label("port_name", port)?;
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| KubernetesError::NoRuntime)?;
        let (handle, dynamic) = super::dynamic();
        let span = tracing::info_span!(
            "kubernetes_discovery",
            namespace = %self.namespace,
            service = %self.service,
        );
        runtime.spawn(tracing::Instrument::instrument(run(self, handle), span));
        Ok(dynamic)
    }
}

/// Why Kubernetes discovery could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum KubernetesError {
    /// A name is not a valid Kubernetes name (an RFC 1123 label: at most 63
    /// lowercase letters, digits and `-`, starting and ending with a letter
    /// or digit).
    InvalidName {
        /// Which name: `namespace`, `service` or `port_name`.
        field: &'static str,
        /// The name given (cut to 80 characters).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`Kubernetes::spawn`] was called outside a tokio runtime.
    NoRuntime,
    /// No Kubernetes configuration could be found
    /// ([`Kubernetes::infer`]).
    Config(Box<kube::config::InferConfigError>),
    /// The configuration found could not make a client
    /// ([`Kubernetes::infer`]).
    Client(kube::Error),
}

impl fmt::Display for KubernetesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubernetesError::InvalidName {
                field,
                value,
                reason,
            } => write!(
                f,
                "kubernetes discovery: invalid {field} {value:?}: {reason}"
            ),
            KubernetesError::NoRuntime => f.write_str(
                "kubernetes discovery: spawn must be called from within a tokio runtime",
            ),
            KubernetesError::Config(e) => {
                write!(f, "kubernetes discovery: no Kubernetes configuration: {e}")
            }
            KubernetesError::Client(e) => {
                write!(f, "kubernetes discovery: cannot build a client: {e}")
            }
        }
    }
}

impl std::error::Error for KubernetesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KubernetesError::Config(e) => Some(e),
            KubernetesError::Client(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks an RFC 1123 label (namespace, service and port names); the
/// proxy's config validation uses it too.
pub(crate) fn check_label(field: &'static str, value: &str) -> Result<(), KubernetesError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > 63 {
        Some("must be at most 63 characters")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("must consist of lowercase letters, digits and '-'")
    } else if value.starts_with('-') || value.ends_with('-') {
        Some("must start and end with a letter or digit")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(KubernetesError::InvalidName {
            field,
            value: value.chars().take(80).collect(),
            reason,
        }),
    }
}

/// The watch task: one kube watcher at a time (a new one relists), applied
/// to a [`SliceSet`], until the `Dynamic` stream is dropped.
async fn run(config: Kubernetes, handle: DynamicHandle) {
    let Kubernetes {
        client,
        namespace,
        service,
        port_name,
        backoff,
        max_endpoints,
        terminating_fallback,
    } = config;
    let api: kube::Api<EndpointSlice> = kube::Api::namespaced(client, &namespace);
    let watch_config =
        watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    let mut set = SliceSet::new(
        namespace.clone(),
        service.clone(),
        port_name,
        terminating_fallback,
        max_endpoints,
    );
    let mut backoff = Backoff::new(backoff.0, backoff.1);
    let mut failing = false;
    let closed = handle.closed();
    tokio::pin!(closed);

    loop {
        let mut events = watcher::watcher(api.clone(), watch_config.clone()).boxed();
        loop {
            let next = tokio::select! {
                biased;
                () = &mut closed => {
                    tracing::debug!(%namespace, %service, "kubernetes discovery: balancer gone, stopping");
                    return;
                }
                next = events.next() => next,
            };
            let relist = match next {
                Some(Ok(event)) => {
                    // Init and InitApply only prepare a relist; the rest
                    // is progress, and may change the set.
                    if set.apply(event) {
                        backoff.reset();
                        if failing {
                            failing = false;
                            tracing::info!(%namespace, %service, "kubernetes discovery: watching again");
                        }
                        if let Some(endpoints) = set.changed() {
                            handle.replace(endpoints);
                        }
                    }
                    continue;
                }
                Some(Err(error)) => {
                    failing = true;
                    let gone = is_gone_at_start(&error);
                    tracing::warn!(
                        %namespace,
                        %service,
                        error = %chain(&error),
                        kept = set.published_len(),
                        relist = gone,
                        "kubernetes discovery: watch failed; keeping the last endpoint set",
                    );
                    gone
                }
                None => {
                    // kube's watcher never ends; if a future one does, start over.
                    tracing::warn!(%namespace, %service, "kubernetes discovery: watch ended; starting over");
                    true
                }
            };
            let delay = backoff.next_delay();
            tokio::select! {
                biased;
                () = &mut closed => return,
                () = tokio::time::sleep(delay) => {}
            }
            if relist {
                set.abandon_relist();
                break;
            }
        }
    }
}

/// The error and its sources, each source once: kube's messages include
/// some of their sources' messages and leave out others (such as why a
/// connection failed).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Whether the watch request itself was answered `410 Gone`: the resource
/// version we resume from is too old. kube's watcher relists on a 410
/// `ERROR` event, but retries a watch whose HTTP status is 410 with the same
/// version forever, so we start a new watcher, which lists.
fn is_gone_at_start(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// Exponential backoff with ±25 % jitter.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        let jittered = base.as_secs_f64() * rand::rng().random_range(0.75..=1.25);
        Duration::try_from_secs_f64(jittered)
            .unwrap_or(self.max)
            .min(self.max)
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// The slices of one service and the endpoint set they make.
#[derive(Debug)]
struct SliceSet {
    namespace: String,
    service: String,
    port_name: Option<String>,
    terminating_fallback: bool,
    max_endpoints: usize,
    slices: BTreeMap<String, Converted>,
    /// A list in progress: replaces `slices` once complete.
    relist: Option<BTreeMap<String, Converted>>,
    /// What was last published; `None` before the first complete list.
    published: Option<Vec<Endpoint>>,
    listed: bool,
    over_limit: bool,
    /// How many slice problems were logged (each once, when it appears).
    problems_logged: u64,
}

impl SliceSet {
    fn new(
        namespace: String,
        service: String,
        port_name: Option<String>,
        terminating_fallback: bool,
        max_endpoints: usize,
    ) -> SliceSet {
        SliceSet {
            namespace,
            service,
            port_name,
            terminating_fallback,
            max_endpoints,
            slices: BTreeMap::new(),
            relist: None,
            published: None,
            listed: false,
            over_limit: false,
            problems_logged: 0,
        }
    }

    /// Applies one watcher event; returns whether it was progress (a
    /// completed list or a watch event), which resets the backoff.
    fn apply(&mut self, event: Event<EndpointSlice>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(slice) => {
                let (name, converted) = self.convert(&slice);
                match &mut self.relist {
                    Some(relist) => {
                        relist.insert(name, converted);
                    }
                    None => {
                        self.slices.insert(name, converted);
                    }
                }
                false
            }
            Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    self.slices = relist;
                }
                self.listed = true;
                tracing::debug!(
                    namespace = %self.namespace,
                    service = %self.service,
                    slices = self.slices.len(),
                    "kubernetes discovery: listed",
                );
                true
            }
            Event::Apply(slice) => {
                let (name, converted) = self.convert(&slice);
                self.slices.insert(name, converted);
                true
            }
            Event::Delete(slice) => {
                let name = slice.metadata.name.unwrap_or_default();
                self.slices.remove(&name);
                true
            }
        }
    }

    /// Forgets a list in progress (the watcher is being replaced).
    fn abandon_relist(&mut self) {
        self.relist = None;
    }

    /// Converts a slice and logs a problem with it once: when it appears.
    fn convert(&mut self, slice: &EndpointSlice) -> (String, Converted) {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let converted = convert(slice, &self.service, self.port_name.as_deref());
        let before = self
            .relist
            .as_ref()
            .and_then(|r| r.get(&name))
            .or_else(|| self.slices.get(&name))
            .and_then(|c| c.problem.as_ref());
        if converted.problem.as_ref() != before
            && let Some(problem) = &converted.problem
        {
            self.problems_logged += 1;
            tracing::warn!(
                namespace = %self.namespace,
                service = %self.service,
                slice = %name,
                %problem,
                "kubernetes discovery: a slice is left out (in part or whole)",
            );
        }
        (name, converted)
    }

    /// The endpoint set if it changed since it was last published.
    fn changed(&mut self) -> Option<Vec<Endpoint>> {
        if !self.listed {
            return None;
        }
        let (endpoints, dropped) =
            union(&self.slices, self.terminating_fallback, self.max_endpoints);
        if dropped > 0 && !self.over_limit {
            tracing::warn!(
                namespace = %self.namespace,
                service = %self.service,
                limit = self.max_endpoints,
                dropped,
                "kubernetes discovery: more than {} endpoints, the limit (max_endpoints); the rest are left out",
                self.max_endpoints,
            );
        }
        self.over_limit = dropped > 0;
        if self.published.as_ref() == Some(&endpoints) {
            return None;
        }
        if endpoints.is_empty() {
            tracing::info!(
                namespace = %self.namespace,
                service = %self.service,
                "kubernetes discovery: the service has no ready endpoints",
            );
        }
        self.published = Some(endpoints.clone());
        Some(endpoints)
    }

    fn published_len(&self) -> usize {
        self.published.as_ref().map_or(0, Vec::len)
    }
}

/// The union over the slices: the ready endpoints or, when there is none and
/// `fallback` is on, the serving-terminating ones. Each address once (the
/// first slice by name wins), sorted by address, cut to `max`; also returns
/// how many were cut.
fn union(
    slices: &BTreeMap<String, Converted>,
    fallback: bool,
    max: usize,
) -> (Vec<Endpoint>, usize) {
    let collect = |pick: fn(&Converted) -> &Vec<Endpoint>| {
        let mut set: BTreeMap<&Address, &Endpoint> = BTreeMap::new();
        for ep in slices.values().flat_map(pick) {
            set.entry(ep.address()).or_insert(ep);
        }
        set
    };
    let mut set = collect(|c| &c.ready);
    if set.is_empty() && fallback {
        set = collect(|c| &c.terminating);
    }
    let total = set.len();
    let endpoints: Vec<Endpoint> = set.into_values().take(max).cloned().collect();
    let dropped = total - endpoints.len();
    (endpoints, dropped)
}

/// What one slice contributes.
#[derive(Debug, Default, Clone, PartialEq)]
struct Converted {
    /// Ready endpoints.
    ready: Vec<Endpoint>,
    /// Not ready, but serving while terminating: the fallback.
    terminating: Vec<Endpoint>,
    /// Why some or all of the slice was left out.
    problem: Option<Problem>,
}

/// Why a slice (or some of its addresses) was left out.
#[derive(Debug, Clone, PartialEq)]
enum Problem {
    /// No TCP port of that name.
    NoSuchPort { wanted: String, ports: Vec<String> },
    /// No TCP port at all.
    NoPorts,
    /// Several TCP ports and no port name to choose one.
    SeveralPorts { ports: Vec<String> },
    /// The port has no number, or one out of range.
    BadPort(Option<i32>),
    /// An address type other than IPv4, IPv6 or FQDN.
    AddressType(String),
    /// Addresses that do not parse; the first of them.
    BadAddresses { count: usize, first: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoSuchPort { wanted, ports } => {
                write!(f, "no TCP port named {wanted:?} (ports: {ports:?})")
            }
            Problem::NoPorts => f.write_str("no TCP port"),
            Problem::SeveralPorts { ports } => write!(
                f,
                "several TCP ports ({ports:?}) and no port name set to choose one"
            ),
            Problem::BadPort(Some(p)) => write!(f, "port {p} is out of range"),
            Problem::BadPort(None) => f.write_str("the port has no number"),
            Problem::AddressType(t) => write!(f, "unsupported address type {t:?}"),
            Problem::BadAddresses { count, first } => {
                write!(f, "{count} address(es) that do not parse, first {first:?}")
            }
        }
    }
}

/// A bounded string for messages (hostile input).
fn bounded(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Picks the port: the TCP port named `name`, or the only TCP port.
fn pick_port(ports: &[EndpointPort], name: Option<&str>) -> Result<u16, Problem> {
    let tcp: Vec<&EndpointPort> = ports
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .collect();
    let names = || {
        tcp.iter()
            .take(8)
            .map(|p| bounded(p.name.as_deref().unwrap_or("")))
            .collect()
    };
    let port = match name {
        Some(name) => match tcp.iter().find(|p| p.name.as_deref() == Some(name)) {
            Some(port) => port,
            None => {
                return Err(Problem::NoSuchPort {
                    wanted: name.to_owned(),
                    ports: names(),
                });
            }
        },
        None => match tcp.as_slice() {
            [] => return Err(Problem::NoPorts),
            [port] => port,
            _ => return Err(Problem::SeveralPorts { ports: names() }),
        },
    };
    match port.port {
        Some(n) => u16::try_from(n)
            .ok()
            .filter(|&n| n != 0)
            .ok_or(Problem::BadPort(Some(n))),
        None => Err(Problem::BadPort(None)),
    }
}

/// Converts one slice to the endpoints it contributes (pure).
fn convert(slice: &EndpointSlice, service: &str, port_name: Option<&str>) -> Converted {
    let labels = slice.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
        != Some(service)
    {
        // Not ours (the API server honours the selector; a proxy might not).
        return Converted::default();
    }
    if slice.endpoints.is_empty() {
        // The controller keeps an empty slice for a service without
        // endpoints; it has no ports and is no problem.
        return Converted::default();
    }
    let port = match pick_port(slice.ports.as_deref().unwrap_or_default(), port_name) {
        Ok(port) => port,
        Err(problem) => {
            return Converted {
                problem: Some(problem),
                ..Converted::default()
            };
        }
    };
    let fqdn = match slice.address_type.as_str() {
        "IPv4" | "IPv6" => false,
        "FQDN" => true,
        other => {
            return Converted {
                problem: Some(Problem::AddressType(bounded(other))),
                ..Converted::default()
            };
        }
    };

    let slice_labels: Vec<(&String, &String)> = labels
        .into_iter()
        .flatten()
        .filter(|(k, v)| {
            !SKIPPED_SLICE_LABELS.contains(&k.as_str())
                && k.len() <= MAX_LABEL_KEY_LEN
                && v.len() <= MAX_LABEL_VALUE_LEN
        })
        .collect();

    let mut out = Converted::default();
    let mut bad = 0usize;
    let mut first_bad = None;
    for ep in &slice.endpoints {
        let into = match readiness(ep.conditions.as_ref()) {
            Readiness::Ready => &mut out.ready,
            Readiness::ServingTerminating => &mut out.terminating,
            Readiness::NotReady => continue,
        };
        let meta = endpoint_labels(ep, &slice_labels);
        for addr in &ep.addresses {
            let address = if fqdn {
                format!("{addr}:{port}").parse::<Address>().ok()
            } else {
                addr.parse::<IpAddr>()
                    .ok()
                    .map(|ip| Address::Socket(SocketAddr::new(ip, port)))
            };
            let Some(address) = address else {
                bad += 1;
                first_bad.get_or_insert_with(|| bounded(addr));
                continue;
            };
            let endpoint = meta
                .iter()
                .fold(Endpoint::new(address), |e, (k, v)| e.with_label(k, v));
            into.push(endpoint);
        }
    }
    if let Some(first) = first_bad {
        out.problem = Some(Problem::BadAddresses { count: bad, first });
    }
    out
}

enum Readiness {
    Ready,
    ServingTerminating,
    NotReady,
}

/// `ready` unset means ready; `serving` unset defers to `ready`;
/// `terminating` unset means not terminating (the API's reading).
fn readiness(conditions: Option<&EndpointConditions>) -> Readiness {
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if ready {
        Readiness::Ready
    } else if serving && terminating {
        Readiness::ServingTerminating
    } else {
        Readiness::NotReady
    }
}

/// The labels of one endpoint, most specific first, bounded.
fn endpoint_labels(
    ep: &SliceEndpoint,
    slice_labels: &[(&String, &String)],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: &str| {
        if out.len() < MAX_LABELS
            && k.len() <= MAX_LABEL_KEY_LEN
            && v.len() <= MAX_LABEL_VALUE_LEN
            && !out.iter().any(|(key, _)| key == k)
        {
            out.push((k.to_owned(), v.to_owned()));
        }
    };
    if let Some(zone) = &ep.zone {
        push("zone", zone);
    }
    if let Some(node) = &ep.node_name {
        push("node", node);
    }
    if let Some(hostname) = &ep.hostname {
        push("hostname", hostname);
    }
    if let Some(target) = &ep.target_ref
        && let Some(name) = &target.name
    {
        match target.kind.as_deref() {
            Some("Pod") | None => push("pod", name),
            Some(kind) => push("target", &format!("{kind}/{name}")),
        }
    }
    for (k, v) in slice_labels {
        push(k, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn slice(value: Value) -> EndpointSlice {
        serde_json::from_value(value).expect("a valid EndpointSlice")
    }

    /// A slice of service `users` with the given ports and endpoints.
    fn users(name: &str, ports: Value, endpoints: Value) -> EndpointSlice {
        slice(json!({
            "metadata": {
                "name": name,
                "labels": { SERVICE_NAME_LABEL: "users" },
                "resourceVersion": "1",
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
    }

    fn http() -> Value {
        json!([{ "name": "http", "port": 8080, "protocol": "TCP" }])
    }

    fn addrs(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(|e| e.address().to_string()).collect()
    }

    #[test]
    fn readiness_follows_the_api() {
        let s = users(
            "users-a",
            http(),
            json!([
                { "addresses": ["10.0.0.1"] },
                { "addresses": ["10.0.0.2"], "conditions": {} },
                { "addresses": ["10.0.0.3"], "conditions": { "ready": true } },
                { "addresses": ["10.0.0.4"], "conditions": { "ready": false } },
                { "addresses": ["10.0.0.5"], "conditions": { "ready": false, "serving": true, "terminating": true } },
                { "addresses": ["10.0.0.6"], "conditions": { "ready": false, "serving": false, "terminating": true } },
                // serving unset defers to ready: not serving.
                { "addresses": ["10.0.0.7"], "conditions": { "ready": false, "terminating": true } },
                // publishNotReadyAddresses: ready while terminating is used.
                { "addresses": ["10.0.0.8"], "conditions": { "ready": true, "terminating": true } },
            ]),
        );
        let c = convert(&s, "users", None);
        assert_eq!(c.problem, None);
        assert_eq!(
            addrs(&c.ready),
            [
                "10.0.0.1:8080",
                "10.0.0.2:8080",
                "10.0.0.3:8080",
                "10.0.0.8:8080"
            ]
        );
        assert_eq!(addrs(&c.terminating), ["10.0.0.5:8080"]);
    }

    #[test]
    fn serving_terminating_endpoints_are_only_a_fallback() {
        let a = users(
            "users-a",
            http(),
            json!([{ "addresses": ["10.0.0.5"], "conditions": { "ready": false, "serving": true, "terminating": true } }]),
        );
        let b = users(
            "users-b",
            http(),
            json!([{ "addresses": ["10.0.0.6"], "conditions": { "ready": false } }]),
        );
        let mut slices = BTreeMap::new();
        slices.insert("users-a".to_owned(), convert(&a, "users", None));
        slices.insert("users-b".to_owned(), convert(&b, "users", None));
        assert_eq!(addrs(&union(&slices, true, 100).0), ["10.0.0.5:8080"]);
        assert!(union(&slices, false, 100).0.is_empty());

        // Once anything is ready, terminating endpoints get nothing.
        let c = users("users-c", http(), json!([{ "addresses": ["10.0.0.9"] }]));
        slices.insert("users-c".to_owned(), convert(&c, "users", None));
        assert_eq!(addrs(&union(&slices, true, 100).0), ["10.0.0.9:8080"]);
    }

    #[test]
    fn the_port_is_the_named_one_or_the_only_one() {
        let eps = json!([{ "addresses": ["10.0.0.1"] }]);
        let two = json!([
            { "name": "http", "port": 8080 },
            { "name": "admin", "port": 9901, "protocol": "TCP" },
            { "name": "dns", "port": 53, "protocol": "UDP" },
        ]);
        let s = users("users-a", two.clone(), eps.clone());
        assert_eq!(
            addrs(&convert(&s, "users", Some("admin")).ready),
            ["10.0.0.1:9901"]
        );
        assert_eq!(
            addrs(&convert(&s, "users", Some("http")).ready),
            ["10.0.0.1:8080"]
        );

        let c = convert(&s, "users", None);
        assert!(c.ready.is_empty());
        assert!(
            matches!(&c.problem, Some(Problem::SeveralPorts { ports }) if ports == &["http", "admin"])
        );

        // UDP ports are not candidates.
        let c = convert(&s, "users", Some("dns"));
        assert!(c.ready.is_empty());
        let problem = c.problem.expect("a problem").to_string();
        assert!(problem.contains("no TCP port named \"dns\""), "{problem}");

        // The only port, named or not.
        let s = users("users-a", json!([{ "port": 7000 }]), eps.clone());
        assert_eq!(addrs(&convert(&s, "users", None).ready), ["10.0.0.1:7000"]);

        // No port, a port without a number, a port out of range.
        for (ports, problem) in [
            (json!(null), Problem::NoPorts),
            (json!([]), Problem::NoPorts),
            (json!([{ "name": "http" }]), Problem::BadPort(None)),
            (json!([{ "port": 70000 }]), Problem::BadPort(Some(70000))),
            (json!([{ "port": 0 }]), Problem::BadPort(Some(0))),
        ] {
            let c = convert(&users("users-a", ports.clone(), eps.clone()), "users", None);
            assert!(c.ready.is_empty(), "{ports}");
            assert_eq!(c.problem, Some(problem), "{ports}");
        }

        // The controller's empty placeholder slice is no problem.
        let c = convert(&users("users-a", json!(null), json!([])), "users", None);
        assert_eq!(c, Converted::default());
    }

    #[test]
    fn every_address_of_every_family_is_used() {
        let s = users(
            "users-a",
            http(),
            json!([{ "addresses": ["10.0.0.1", "10.0.0.2"] }, { "addresses": ["bogus", "10.0.0.3"] }]),
        );
        let c = convert(&s, "users", None);
        assert_eq!(
            addrs(&c.ready),
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
        );
        assert!(matches!(c.ready[0].address(), Address::Socket(_)));
        assert_eq!(
            c.problem,
            Some(Problem::BadAddresses {
                count: 1,
                first: "bogus".into()
            })
        );

        let v6 = slice(json!({
            "metadata": { "name": "users-v6", "labels": { SERVICE_NAME_LABEL: "users" } },
            "addressType": "IPv6",
            "ports": [{ "port": 8080 }],
            "endpoints": [{ "addresses": ["fd00::1", "2001:db8::2"] }],
        }));
        let c = convert(&v6, "users", None);
        assert_eq!(addrs(&c.ready), ["[fd00::1]:8080", "[2001:db8::2]:8080"]);
        assert_eq!(
            c.ready[0].address(),
            &Address::Socket("[fd00::1]:8080".parse().unwrap())
        );

        let fqdn = slice(json!({
            "metadata": { "name": "users-ext", "labels": { SERVICE_NAME_LABEL: "users" } },
            "addressType": "FQDN",
            "ports": [{ "port": 443 }],
            "endpoints": [{ "addresses": ["users.example.org"] }],
        }));
        let c = convert(&fqdn, "users", None);
        assert_eq!(addrs(&c.ready), ["users.example.org:443"]);
        assert!(matches!(c.ready[0].address(), Address::Name { .. }));

        let odd = slice(json!({
            "metadata": { "name": "users-x", "labels": { SERVICE_NAME_LABEL: "users" } },
            "addressType": "AppleTalk",
            "ports": [{ "port": 1 }],
            "endpoints": [{ "addresses": ["x"] }],
        }));
        assert_eq!(
            convert(&odd, "users", None).problem,
            Some(Problem::AddressType("AppleTalk".into()))
        );
    }

    #[test]
    fn a_slice_of_another_service_contributes_nothing() {
        let s = users("users-a", http(), json!([{ "addresses": ["10.0.0.1"] }]));
        assert_eq!(convert(&s, "orders", None), Converted::default());
    }

    #[test]
    fn labels_are_carried_and_bounded() {
        let mut labels = serde_json::Map::new();
        labels.insert(SERVICE_NAME_LABEL.into(), "users".into());
        labels.insert("endpointslice.kubernetes.io/managed-by".into(), "x".into());
        labels.insert("app.kubernetes.io/version".into(), "1.2.3".into());
        labels.insert("long".into(), "v".repeat(MAX_LABEL_VALUE_LEN + 1).into());
        for i in 0..40 {
            labels.insert(format!("z-extra-{i:02}"), "x".into());
        }
        let s = slice(json!({
            "metadata": { "name": "users-a", "labels": labels },
            "addressType": "IPv4",
            "ports": [{ "port": 8080 }],
            "endpoints": [
                {
                    "addresses": ["10.0.0.1"],
                    "zone": "eu-west-1a",
                    "nodeName": "node-7",
                    "hostname": "users-0",
                    "targetRef": { "kind": "Pod", "name": "users-0", "namespace": "shop" },
                },
                {
                    "addresses": ["10.0.0.2"],
                    "targetRef": { "kind": "VirtualMachine", "name": "vm-1" },
                },
            ],
        }));
        let c = convert(&s, "users", None);
        let first = c.ready[0].labels();
        assert_eq!(first["zone"], "eu-west-1a");
        assert_eq!(first["node"], "node-7");
        assert_eq!(first["hostname"], "users-0");
        assert_eq!(first["pod"], "users-0");
        assert_eq!(first["app.kubernetes.io/version"], "1.2.3");
        assert!(!first.contains_key(SERVICE_NAME_LABEL));
        assert!(!first.contains_key("endpointslice.kubernetes.io/managed-by"));
        assert!(!first.contains_key("long"), "over-long values are left out");
        assert_eq!(first.len(), MAX_LABELS);
        assert!(first.contains_key("z-extra-00"));
        assert!(!first.contains_key("z-extra-39"));

        let second = c.ready[1].labels();
        assert_eq!(second["target"], "VirtualMachine/vm-1");
        assert!(!second.contains_key("pod"));
        assert_eq!(second.len(), MAX_LABELS);

        // Endpoint-specific labels win over the slice's.
        let s = slice(json!({
            "metadata": { "name": "users-a", "labels": { SERVICE_NAME_LABEL: "users", "zone": "from-slice" } },
            "addressType": "IPv4",
            "ports": [{ "port": 8080 }],
            "endpoints": [{ "addresses": ["10.0.0.1"], "zone": "eu-west-1b" }],
        }));
        assert_eq!(
            convert(&s, "users", None).ready[0].labels()["zone"],
            "eu-west-1b"
        );
    }

    #[test]
    fn the_union_is_deduplicated_sorted_and_capped() {
        let mut slices = BTreeMap::new();
        for (name, ips) in [
            ("users-b", json!(["10.0.0.3", "10.0.0.1"])),
            ("users-a", json!(["10.0.0.1", "10.0.0.2"])),
        ] {
            let s = users(name, http(), json!([{ "addresses": ips, "zone": name }]));
            slices.insert(name.to_owned(), convert(&s, "users", None));
        }
        let (set, dropped) = union(&slices, true, 100);
        assert_eq!(
            addrs(&set),
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
        );
        assert_eq!(dropped, 0);
        // A shared address comes from the first slice by name.
        assert_eq!(set[0].labels()["zone"], "users-a");

        let (set, dropped) = union(&slices, true, 2);
        assert_eq!(addrs(&set), ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(dropped, 1);
    }

    fn set() -> SliceSet {
        SliceSet::new("shop".into(), "users".into(), None, true, 100)
    }

    fn one(name: &str, ip: &str) -> EndpointSlice {
        users(name, http(), json!([{ "addresses": [ip] }]))
    }

    #[test]
    fn events_build_the_union_and_a_relist_replaces_it_only_when_complete() {
        let mut s = set();
        assert!(!s.apply(Event::Init));
        assert!(!s.apply(Event::InitApply(one("users-a", "10.0.0.1"))));
        assert_eq!(s.changed(), None, "nothing before the list completes");
        assert!(!s.apply(Event::InitApply(one("users-b", "10.0.0.2"))));
        assert!(s.apply(Event::InitDone));
        assert_eq!(
            addrs(&s.changed().unwrap()),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        assert_eq!(s.changed(), None, "no change, nothing to publish");

        // Modified: a slice's endpoint changes; added; deleted.
        assert!(s.apply(Event::Apply(one("users-a", "10.0.0.9"))));
        assert_eq!(
            addrs(&s.changed().unwrap()),
            ["10.0.0.2:8080", "10.0.0.9:8080"]
        );
        assert!(s.apply(Event::Apply(one("users-c", "10.0.0.3"))));
        assert!(s.apply(Event::Delete(one("users-b", "10.0.0.2"))));
        assert_eq!(
            addrs(&s.changed().unwrap()),
            ["10.0.0.3:8080", "10.0.0.9:8080"]
        );

        // A relist that fails half way keeps the set...
        s.apply(Event::Init);
        s.apply(Event::InitApply(one("users-d", "10.0.0.4")));
        assert_eq!(s.changed(), None);
        s.abandon_relist();
        assert_eq!(s.published_len(), 2);
        // ...and one that completes replaces it, dropping slices it lacks.
        s.apply(Event::Init);
        s.apply(Event::InitApply(one("users-d", "10.0.0.4")));
        assert_eq!(s.changed(), None);
        s.apply(Event::InitDone);
        assert_eq!(addrs(&s.changed().unwrap()), ["10.0.0.4:8080"]);

        // An empty list is a real answer: no endpoints.
        s.apply(Event::Init);
        s.apply(Event::InitDone);
        assert_eq!(s.changed(), Some(vec![]));
    }

    #[test]
    fn a_slice_problem_is_logged_once_when_it_appears() {
        let mut s = set();
        let broken = || {
            users(
                "users-a",
                json!([{ "port": 1 }, { "port": 2 }]),
                json!([{ "addresses": ["10.0.0.1"] }]),
            )
        };
        s.apply(Event::Init);
        s.apply(Event::InitApply(broken()));
        s.apply(Event::InitDone);
        for _ in 0..5 {
            s.apply(Event::Apply(broken()));
        }
        // A relist that finds it unchanged says nothing new either.
        s.apply(Event::Init);
        s.apply(Event::InitApply(broken()));
        s.apply(Event::InitDone);
        assert_eq!(s.problems_logged, 1);
        // Fixed, then broken again: logged again.
        s.apply(Event::Apply(one("users-a", "10.0.0.1")));
        s.apply(Event::Apply(broken()));
        assert_eq!(s.problems_logged, 2);
        // Deleted and re-created broken: a new slice, logged.
        s.apply(Event::Delete(broken()));
        s.apply(Event::Apply(broken()));
        assert_eq!(s.problems_logged, 3);
    }

    #[test]
    fn names_are_checked_as_rfc_1123_labels() {
        for ok in ["a", "shop", "users-v2", "0abc", &"a".repeat(63)] {
            check_label("service", ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("Users", "lowercase"),
            ("users_v2", "lowercase"),
            ("users.shop", "lowercase"),
            ("-users", "start and end"),
            ("users-", "start and end"),
            (&"a".repeat(64), "63"),
        ] {
            let err = check_label("namespace", bad).unwrap_err();
            assert!(
                matches!(&err, KubernetesError::InvalidName { field: "namespace", value, .. } if value.as_str() == bad.chars().take(80).collect::<String>()),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.contains("namespace") && text.contains(why), "{text}");
        }
    }

    #[test]
    fn the_backoff_doubles_to_its_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let within = |d: Duration, base: u64| {
            d >= Duration::from_millis(base * 3 / 4)
                && d <= Duration::from_millis(base * 5 / 4).min(Duration::from_millis(500))
        };
        for (d, base) in delays.iter().zip([100, 200, 400, 500, 500, 500]) {
            assert!(within(*d, base), "{delays:?}");
        }
        b.reset();
        assert!(within(b.next_delay(), 100));

        // No overflow with an unbounded maximum.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            b.next_delay();
        }
    }

    #[test]
    fn errors_are_logged_with_their_sources_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl fmt::Display for E {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let refused = E("connection refused", None);
        let connect = E("client error (Connect)", Some(Box::new(refused)));
        let top = E(
            "watch failed: client error (Connect)",
            Some(Box::new(connect)),
        );
        assert_eq!(
            chain(&top),
            "watch failed: client error (Connect): connection refused"
        );
    }

    #[test]
    fn the_default_limit_admits_past_the_old_10_000_cap_and_a_lower_one_cuts() {
        let endpoints: Vec<Value> = (0..20_000u32)
            .map(|i| json!({ "addresses": [IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)).to_string()] }))
            .collect();
        let slices: BTreeMap<String, Converted> = endpoints
            .chunks(100)
            .enumerate()
            .map(|(i, chunk)| {
                let name = format!("users-{i:03}");
                let slice = users(&name, http(), json!(chunk));
                (name, convert(&slice, "users", None))
            })
            .collect();
        let (all, dropped) = union(&slices, true, DEFAULT_MAX_ENDPOINTS);
        assert_eq!((all.len(), dropped), (20_000, 0));
        let (cut, dropped) = union(&slices, true, 5);
        assert_eq!((cut.len(), dropped), (5, 19_995));
        assert_eq!(cut[..], all[..5]);
    }

    #[test]
    fn a_410_on_the_watch_request_means_relist() {
        let gone = || {
            kube::Error::Api(
                kube::core::Status::failure("too old", "Expired")
                    .with_code(410)
                    .boxed(),
            )
        };
        assert!(is_gone_at_start(&watcher::Error::WatchFailed(gone())));
        assert!(is_gone_at_start(&watcher::Error::WatchStartFailed(gone())));
        let other = kube::Error::Api(
            kube::core::Status::failure("no", "Forbidden")
                .with_code(403)
                .boxed(),
        );
        assert!(!is_gone_at_start(&watcher::Error::WatchFailed(other)));
        // kube's watcher relists on a 410 event by itself.
        let event = kube::core::Status::failure("too old", "Expired")
            .with_code(410)
            .boxed();
        assert!(!is_gone_at_start(&watcher::Error::WatchError(event)));
    }
}
