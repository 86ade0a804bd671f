//! The proxy server: listeners, routing, forwarding through one palisade
//! [`Client`] per service, the admin server, reload and graceful shutdown.
//!
//! Every policy (balancing, retries, deadlines, ejection, breaking, metrics)
//! is the library's: a service in the config becomes a
//! [`Client::builder`] call, nothing more. This module only adds what a
//! proxy needs around it: HTTP/1.1 and h2c listeners, routing, hop-by-hop
//! header handling, error statuses, admin endpoints and reload.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use rand::RngExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use super::config::{self, Config, ConfigError, Discovery};
use crate::balance::EjectionConfig;
use crate::breaker::{BreakerLayer, BreakerSettings};
use crate::classify::HttpClassify;
use crate::deadline::{DeadlineLayer, DeadlineSettings};
use crate::discover::file::Watched;
use crate::discover::{self, Dynamic, DynamicHandle};
use crate::hedge::{HedgeLayer, HedgeSettings};
use crate::http::{HyperClient, hyper_client, hyper_h2c_client};
use crate::limit::{ConcurrencyLimitLayer, RateLimitLayer, ThrottleLayer, WithoutKey};
use crate::metrics::Metrics;
use crate::retry::{Backoff, ReplayBody, RetryBudget};
use crate::stack::Hyper;
use crate::{Client, Error, Limit};

/// The body of every response the proxy sends: the upstream's, streamed, or
/// one of its own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The header naming why the proxy itself answered.
pub const ERROR_HEADER: &str = "x-palisade-error";

type ServiceClient = Hyper<Incoming>;

/// The largest config file a reload reads.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// What requests are routed with: swapped whole on reload, so a request
/// keeps the routing it started with.
struct Routing {
    config: Arc<Config>,
    services: HashMap<String, Upstream>,
    routes: Vec<CompiledRoute>,
}

/// One service's client, and what keeps its endpoint source going. Kept
/// whole across reloads that do not change the service.
#[derive(Clone)]
struct Upstream {
    client: ServiceClient,
    /// The handle of a static list's source: held as long as the client,
    /// so that its stream stays open.
    _endpoints: Option<DynamicHandle>,
    /// A DNS source's live state, for `/snapshot` and `/ready`.
    #[cfg(feature = "dns")]
    dns: Option<crate::discover::dns::DnsStatus>,
}

struct CompiledRoute {
    name: String,
    host: Option<HostMatch>,
    path_prefix: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    methods: Vec<http::Method>,
    /// Services with cumulative weights; one entry for a plain route.
    targets: Vec<(String, u64)>,
}

enum HostMatch {
    Exact(String),
    Suffix(String),
}

impl CompiledRoute {
    fn matches(&self, host: Option<&str>, req: &Request<Incoming>) -> bool {
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            let ok = match want {
                HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
                HostMatch::Suffix(s) => {
                    host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                }
            };
            if !ok {
                return false;
            }
        }
        if let Some(prefix) = &self.path_prefix {
            let path = req.uri().path();
            let under = path.starts_with(prefix.as_str())
                && (path.len() == prefix.len()
                    || prefix.ends_with('/')
                    || path.as_bytes()[prefix.len()] == b'/');
            if !under {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method()) {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, value)| req.headers().get(name) == Some(value))
    }

    fn pick(&self) -> &str {
        let total = self.targets.last().map_or(0, |t| t.1);
        if self.targets.len() == 1 || total == 0 {
            return &self.targets[0].0;
        }
        let draw = rand::rng().random_range(0..total);
        let i = self.targets.partition_point(|t| t.1 <= draw);
        &self.targets[i.min(self.targets.len() - 1)].0
    }
}

/// Errors starting the proxy.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The config file could not be read.
    Read(PathBuf, std::io::Error),
    /// The config file is invalid.
    Config(PathBuf, ConfigError),
    /// A listener could not bind.
    Bind(SocketAddr, std::io::Error),
    /// A client could not be built.
    Build(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            StartError::Config(p, e) => write!(f, "{} is invalid:\n{e}", p.display()),
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Build(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StartError {}

/// The shared connection pools, one per upstream protocol.
struct Upstreams {
    http1: HyperClient<ReplayBody<Incoming>>,
    h2c: HyperClient<ReplayBody<Incoming>>,
}

/// The running proxy's shared state.
struct State {
    routing: ArcSwap<Routing>,
    http: Upstreams,
    metrics: Metrics,
    registry: std::sync::Mutex<Registry>,
    path: PathBuf,
}

/// Reads and validates a config file; relative paths in it are relative
/// to its directory.
pub fn load(path: &Path) -> Result<Config, StartError> {
    let text = std::fs::read_to_string(path).map_err(|e| StartError::Read(path.to_owned(), e))?;
    Config::from_file_text(&text, path).map_err(|e| StartError::Config(path.to_owned(), e))
}

/// Runs the proxy on `config` (read from `path`, which is watched for
/// changes) until `shutdown` resolves; then stops accepting and drains
/// in-flight requests for up to the grace period. `ready` receives the
/// bound addresses (listeners, then admin) once serving.
pub async fn run(
    path: PathBuf,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&[SocketAddr], SocketAddr),
) -> Result<(), StartError> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let http = Upstreams {
        http1: hyper_client(),
        h2c: hyper_h2c_client(),
    };
    let routing = build_routing(Arc::new(config), None, &http, &metrics).await?;
    let config = routing.config.clone();
    let state = Arc::new(State {
        routing: ArcSwap::from_pointee(routing),
        http,
        metrics,
        registry: std::sync::Mutex::new(registry),
        path,
    });

    let mut listeners = Vec::new();
    for l in &config.listeners {
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|e| StartError::Bind(l.address, e))?;
        listeners.push(listener);
    }
    let admin = TcpListener::bind(config.admin.address)
        .await
        .map_err(|e| StartError::Bind(config.admin.address, e))?;
    let bound: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let admin_addr = admin
        .local_addr()
        .map_err(|e| StartError::Bind(config.admin.address, e))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(serve(
            listener,
            state.clone(),
            stop_rx.clone(),
            graceful.clone(),
            config.server.max_header_bytes,
        ));
    }
    tasks.spawn(admin_server(admin, state.clone(), stop_rx.clone()));
    tasks.spawn(watch_config(
        state.clone(),
        stop_rx.clone(),
        config.server.watch_interval,
    ));
    ready(&bound, admin_addr);
    tracing::info!(listeners = ?bound, admin = %admin_addr, "palisade proxy serving");

    shutdown.await;
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let grace = state.routing.load().config.server.grace_period;
    let graceful = Arc::try_unwrap(graceful).unwrap_or_default();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over with requests still in flight");
    }
    Ok(())
}

/// Builds the clients and routes for `config`, reusing clients of services
/// whose settings (discovery and limits included) did not change, so their
/// load estimates, limits and discovery tasks survive. The clients of
/// services changed or removed are dropped with the old routing; their
/// discovery tasks stop with them.
async fn build_routing(
    config: Arc<Config>,
    old: Option<&Routing>,
    http: &Upstreams,
    metrics: &Metrics,
) -> Result<Routing, StartError> {
    let mut services = HashMap::new();
    for svc in &config.services {
        let reused = old.and_then(|old| {
            let before = old.config.services.iter().find(|s| s.name == svc.name)?;
            (before == svc).then(|| old.services.get(&svc.name).cloned())?
        });
        let upstream = match reused {
            Some(upstream) => upstream,
            None => build_upstream(svc, &config, http, metrics).await?,
        };
        services.insert(svc.name.clone(), upstream);
    }
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| compile_route(i, r))
        .collect();
    Ok(Routing {
        config,
        services,
        routes,
    })
}

fn compile_route(index: usize, r: &config::Route) -> CompiledRoute {
    let host = r.matches.host.as_ref().map(|h| match h.strip_prefix('*') {
        Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
        None => HostMatch::Exact(h.clone()),
    });
    let headers = r
        .matches
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::try_from(k.as_str()).ok()?,
                HeaderValue::try_from(v.as_str()).ok()?,
            ))
        })
        .collect();
    let methods = r
        .matches
        .methods
        .iter()
        .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .collect();
    let mut targets = Vec::new();
    if let Some(service) = &r.service {
        targets.push((service.clone(), 1));
    }
    let mut total = 0u64;
    for leg in &r.split {
        total += u64::from(leg.weight);
        targets.push((leg.service.clone(), total));
    }
    CompiledRoute {
        name: r.name.clone().unwrap_or_else(|| format!("route-{index}")),
        host,
        path_prefix: r.matches.path_prefix.clone(),
        headers,
        methods,
        targets,
    }
}

/// One service's endpoint source, started, and its client.
async fn build_upstream(
    svc: &config::Service,
    config: &Config,
    http: &Upstreams,
    metrics: &Metrics,
) -> Result<Upstream, StartError> {
    let bad = |e: &dyn std::fmt::Display| StartError::Build(format!("service {:?}: {e}", svc.name));
    let mut upstream_endpoints = None;
    #[cfg(feature = "dns")]
    let mut dns = None;
    let discover = match &svc.discovery {
        // A static list through the same kind of source as the others: one
        // client type, one builder chain.
        None => {
            let endpoints = svc
                .endpoints
                .iter()
                .map(config::EndpointSpec::to_endpoint)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            let (handle, discover) = discover::dynamic();
            handle.replace(endpoints);
            upstream_endpoints = Some(handle);
            discover
        }
        #[cfg(feature = "dns")]
        Some(Discovery::Dns(d)) => {
            let source = d.to_dns().map_err(|e| bad(&e))?;
            dns = Some(source.status());
            source.spawn().map_err(|e| bad(&e))?
        }
        Some(Discovery::File(f)) => f.to_watch(config).spawn().map_err(|e| bad(&e))?,
        #[cfg(feature = "kubernetes")]
        Some(Discovery::Kubernetes(k)) => {
            let mut source =
                crate::discover::kubernetes::Kubernetes::infer(&k.namespace, &k.service)
                    .await
                    .map_err(|e| bad(&e))?;
            if let Some(port) = &k.port {
                source = source.port_name(port);
            }
            source.spawn().map_err(|e| bad(&e))?
        }
        // Validation refuses the sources this build has no support for.
        #[cfg(not(all(feature = "dns", feature = "kubernetes")))]
        Some(other) => {
            return Err(bad(&format!(
                "this build has no {} discovery",
                other.kind()
            )));
        }
    };
    Ok(Upstream {
        client: build_client(svc, discover, http, metrics)?,
        _endpoints: upstream_endpoints,
        #[cfg(feature = "dns")]
        dns,
    })
}

/// One service of the config as a library client: nothing but builder
/// calls.
fn build_client(
    svc: &config::Service,
    discover: Dynamic,
    http: &Upstreams,
    metrics: &Metrics,
) -> Result<ServiceClient, StartError> {
    let pool = match svc.protocol {
        config::Protocol::H2c => &http.h2c,
        _ => &http.http1,
    };
    let bad = |e: &dyn std::fmt::Display| StartError::Build(format!("service {:?}: {e}", svc.name));
    let mut ejection = EjectionConfig::default();
    let e = &svc.ejection;
    ejection.enabled = e.enabled;
    ejection.consecutive_failures = e.consecutive_failures;
    ejection.success_rate = e.success_rate;
    ejection.window = e.window;
    ejection.min_requests = e.min_requests;
    ejection.base_penalty = e.base_penalty;
    ejection.max_penalty = e.max_penalty;
    ejection.jitter = e.jitter;
    ejection.max_ejection_percent = e.max_ejection_percent;
    ejection.panic_threshold = e.panic_threshold;

    let statuses = svc
        .retry
        .retryable_statuses
        .iter()
        .filter_map(|s| StatusCode::from_u16(*s).ok());
    let classify = HttpClassify::default().retryable_statuses(statuses);
    let b = &svc.breaker;
    let settings = BreakerSettings {
        enabled: b.enabled,
        window: b.window,
        volume_threshold: b.volume_threshold,
        error_threshold: b.error_threshold,
        sleep_window: b.sleep_window,
        half_open_probes: b.half_open_probes,
    };
    let breaker = BreakerLayer::new(svc.name.as_str(), settings).map_err(|e| bad(&e))?;
    let d = &svc.deadline;
    let settings = DeadlineSettings {
        timeout: d.timeout,
        max_timeout: d.max_timeout,
        reserve: d.reserve,
        propagate: d.propagate,
    };
    let deadline = DeadlineLayer::new(svc.name.as_str(), settings).map_err(|e| bad(&e))?;
    let bal = &svc.balancer;
    let name = svc.name.as_str();
    let mut builder = Client::builder(name)
        .discover(discover)
        .http(pool.clone())
        .classify(classify)
        .decay(bal.decay)
        .failure_penalty(bal.failure_penalty)
        .endpoint_wait(bal.endpoint_wait)
        .ejection(ejection)
        .breaker(breaker)
        .deadline(deadline)
        .max_attempts(svc.retry.max_attempts)
        .backoff(Backoff::new(svc.retry.backoff_base, svc.retry.backoff_cap))
        .per_try_timeout(svc.retry.per_try_timeout)
        .body_limit(svc.retry.body_limit)
        .retry_budget(RetryBudget::new(
            svc.budget.ttl,
            svc.budget.min_per_sec,
            svc.budget.ratio,
        ))
        .metrics(metrics.clone());
    let limits = &svc.limits;
    if let Some(c) = &limits.concurrency {
        builder = builder.concurrency_limit(
            ConcurrencyLimitLayer::new(name)
                .max(c.max)
                .queue(c.queue)
                .max_wait(c.max_wait),
        );
    }
    if let Some(r) = &limits.rate {
        let mut rate = RateLimitLayer::new(name, r.per_second)
            .max_keys(r.max_keys)
            .without_key(match r.without_key {
                config::WithoutKey::Shared => WithoutKey::Shared,
                config::WithoutKey::Pass => WithoutKey::Pass,
            });
        if let Some(burst) = r.burst {
            rate = rate.burst(burst);
        }
        builder = match &r.key_header {
            Some(header) => {
                let header = HeaderName::try_from(header.as_str()).map_err(|e| bad(&e))?;
                builder.rate_limit(rate.keyed_by_header(header))
            }
            None => builder.rate_limit(rate),
        };
    }
    if let Some(t) = &limits.throttle {
        builder = builder.throttle(ThrottleLayer::new(name).k(t.k).window(t.window));
    }
    if let Some(h) = &svc.hedge {
        let settings = HedgeSettings {
            delay: h.delay,
            min_samples: h.min_samples,
            fallback_delay: h.fallback_delay,
            window: h.window,
            budget_ratio: h.budget_ratio,
        };
        builder = builder.hedge(HedgeLayer::new(name, settings).map_err(|e| bad(&e))?);
    }
    builder.build().map_err(|e| bad(&e))
}

/// Accepts connections on `listener` until told to stop; each connection is
/// watched by `graceful` so that shutdown can drain it.
async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    max_header_bytes: usize,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(max_header_bytes.max(8192))
        .timer(hyper_util::rt::TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    while let Some((stream, remote)) = accept(&listener, &mut stop).await {
        let _ = stream.set_nodelay(true);
        let (state, builder) = (state.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req, remote).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
}

/// The next connection, or `None` once told to stop. Accept errors (out of
/// file descriptors and the like) are logged and retried after a pause
/// rather than spun on.
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.changed() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header
/// names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names beyond the standard set are rare: `Connection: keep-alive` or
    // `close` (on nearly every HTTP/1.1 response) allocate nothing here.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            let known = token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()));
            if !known && let Ok(name) = HeaderName::try_from(token) {
                named.push(name);
            }
        }
    }
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn own(status: StatusCode, reason: &'static str, text: String) -> Response<ProxyBody> {
    let mut rsp = Response::new(Either::Right(Full::new(Bytes::from(text + "\n"))));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(reason));
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// The request's host, from the URI's authority or the `Host` header,
/// without a port; `Err` when the `Host` header is not a valid authority
/// (RFC 3986 `host [ ":" port ]`). Borrowed: routing allocates nothing.
fn host_of(req: &Request<Incoming>) -> Result<Option<&str>, ()> {
    if let Some(a) = req.uri().authority() {
        return Ok(Some(a.host()));
    }
    match req.headers().get(header::HOST) {
        None => Ok(None),
        Some(v) => split_host(v.to_str().map_err(|_| ())?).map(Some),
    }
}

/// The host part of a `Host` header value, checked against RFC 3986: an
/// IP literal in brackets, or registered-name / IPv4 characters, then an
/// optional numeric port.
fn split_host(value: &str) -> Result<&str, ()> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let end = rest.find(']').ok_or(())?;
        let literal = &rest[..end];
        let valid = !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        let port = match &rest[end + 1..] {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(())?),
        };
        if !valid {
            return Err(());
        }
        (&value[..end + 2], port)
    } else {
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        };
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
        if !valid {
            return Err(());
        }
        (host, port)
    };
    match port {
        Some(p) if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) => Err(()),
        _ => Ok(host),
    }
}

/// Routes and forwards one request.
async fn handle(
    state: &State,
    mut req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<ProxyBody> {
    let routing = state.routing.load_full();
    let host = match host_of(&req) {
        Ok(host) => host,
        Err(()) => {
            return own(
                StatusCode::BAD_REQUEST,
                "invalid-host",
                "invalid Host header".into(),
            );
        }
    };
    let Some(route) = routing.routes.iter().find(|r| r.matches(host, &req)) else {
        return own(
            StatusCode::NOT_FOUND,
            "no-route",
            "no route matches this request".into(),
        );
    };
    let service = route.pick();
    let Some(Upstream { client, .. }) = routing.services.get(service) else {
        return own(
            StatusCode::BAD_GATEWAY,
            "no-service",
            format!("route {:?} names unknown service {service:?}", route.name),
        );
    };

    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    let forwarded = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", remote.ip()),
        None => remote.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::try_from(forwarded) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    // The upstream pool picks the protocol (HTTP/1.1 or h2c) whatever the
    // client spoke. The URI's authority (an h2 `:authority`, or an
    // absolute-form HTTP/1.1 target) becomes `Host` in the endpoint layer,
    // as for any client request.
    *req.version_mut() = http::Version::HTTP_11;

    match client.clone().oneshot(req).await {
        Ok(rsp) => {
            let (mut parts, body) = rsp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => error_response(service, &e),
    }
}

/// A typed error as a status, a short body and a header naming the reason.
fn error_response(service: &str, e: &Error) -> Response<ProxyBody> {
    let (status, reason) = match e {
        Error::NoEndpoints { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no-endpoints"),
        Error::CircuitOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "circuit-open"),
        Error::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        Error::DeadlineExceeded { .. } => (StatusCode::GATEWAY_TIMEOUT, "deadline-exceeded"),
        _ => (StatusCode::BAD_GATEWAY, "upstream-error"),
    };
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    tracing::debug!(service, error = %text, "answering with an error status");
    let mut rsp = own(status, reason, text);
    if let Some(Limit::Rate { retry_in, .. }) = e.limit() {
        rsp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(*retry_in)),
        );
    }
    rsp
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The admin server: `/metrics`, `/ready`, `/live`, `/config`, `/snapshot`.
async fn admin_server(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    while let Some((stream, _)) = accept(&listener, &mut stop).await {
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(admin(&state, &req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut rsp = Response::new(Full::new(Bytes::from(body)));
        *rsp.status_mut() = status;
        rsp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        rsp
    };
    let routing = state.routing.load_full();
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => {
            // Services in the order of the file, each with where its
            // endpoints should come from.
            let waiting: Vec<String> = routing
                .config
                .services
                .iter()
                .filter_map(|svc| {
                    let upstream = routing.services.get(&svc.name)?;
                    (upstream.client.endpoint_count() == 0)
                        .then(|| waiting_for(svc, upstream, &routing.config))
                })
                .collect();
            if waiting.is_empty() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: no endpoints yet for {}\n", waiting.join(", ")),
                )
            }
        }
        "/metrics" => {
            let mut body = String::new();
            let registry = state.registry.lock().unwrap_or_else(|p| p.into_inner());
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        "/config" => match serde_json::to_string_pretty(&*routing.config) {
            Ok(json) => text(StatusCode::OK, "application/json", json + "\n"),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        "/snapshot" => {
            let mut services: Vec<&config::Service> = routing.config.services.iter().collect();
            services.sort_by(|a, b| a.name.cmp(&b.name));
            let services: Vec<serde_json::Value> = services
                .into_iter()
                .filter_map(|svc| {
                    let upstream = routing.services.get(&svc.name)?;
                    let mut json = snapshot_json(&upstream.client.snapshot());
                    json["discovery"] = discovery_json(svc, upstream, &routing.config);
                    json["limits"] = limits_json(&upstream.client);
                    Some(json)
                })
                .collect();
            let json = serde_json::json!({ "services": services });
            text(StatusCode::OK, "application/json", format!("{json:#}\n"))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /ready, /live, /config, /snapshot\n".into(),
        ),
    }
}

fn snapshot_json(s: &crate::Snapshot) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = s
        .endpoints
        .iter()
        .map(|e| {
            let state = match e.state {
                crate::balance::EndpointState::Active => "active".to_owned(),
                crate::balance::EndpointState::Probing => "probing".to_owned(),
                _ => "ejected".to_owned(),
            };
            serde_json::json!({
                "address": e.address.to_string(),
                "weight": e.weight,
                "labels": e.labels,
                "state": state,
                "rtt_estimate_ms": e.rtt_estimate.as_secs_f64() * 1e3,
                "latency_estimate_ms": e.latency_estimate.as_secs_f64() * 1e3,
                "in_flight": e.in_flight,
                "requests": e.requests,
                "failures": e.failures,
                "ejections": e.ejections,
            })
        })
        .collect();
    let breaker = match s.breaker {
        crate::breaker::BreakerState::Closed => "closed",
        crate::breaker::BreakerState::HalfOpen => "half-open",
        _ => "open",
    };
    serde_json::json!({
        "service": s.service,
        "endpoints": endpoints,
        "retry_budget": s.retry_budget,
        "breaker": breaker,
        "breaker_transitions": s.breaker_transitions,
        "panic_mode": s.panic_mode,
    })
}

/// A service with no endpoints, for `/ready`: its name and where its
/// endpoints should come from (with a DNS source's last error).
#[cfg_attr(not(feature = "dns"), allow(unused_variables))]
fn waiting_for(svc: &config::Service, upstream: &Upstream, config: &Config) -> String {
    match &svc.discovery {
        None => svc.name.clone(),
        #[cfg(feature = "dns")]
        Some(Discovery::Dns(d)) => match upstream.dns.as_ref().and_then(|s| s.last_error()) {
            Some(error) => format!("{} (dns {:?}: {error})", svc.name, d.name),
            None => format!("{} (dns {:?}: no answer yet)", svc.name, d.name),
        },
        Some(Discovery::File(f)) => format!(
            "{} (file {})",
            svc.name,
            config.resolve_path(&f.path).display()
        ),
        Some(Discovery::Kubernetes(k)) => format!(
            "{} (kubernetes service {}/{})",
            svc.name, k.namespace, k.service
        ),
        #[cfg(not(feature = "dns"))]
        Some(other) => format!("{} ({})", svc.name, other.kind()),
    }
}

/// Where a service's endpoints come from, for `/snapshot`: `kind`, the
/// settings as configured (a file's path resolved), and a DNS source's live
/// state.
#[cfg_attr(not(feature = "dns"), allow(unused_variables))]
fn discovery_json(
    svc: &config::Service,
    upstream: &Upstream,
    config: &Config,
) -> serde_json::Value {
    let Some(discovery) = &svc.discovery else {
        return serde_json::json!({ "kind": "endpoints" });
    };
    // The settings as `/config` shows them, and `kind`.
    let mut json = match serde_json::to_value(discovery) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    json.insert("kind".into(), discovery.kind().into());
    if let Discovery::File(f) = discovery {
        let path = config.resolve_path(&f.path).display().to_string();
        json.insert("resolved_path".into(), path.into());
    }
    #[cfg(feature = "dns")]
    if let Some(status) = &upstream.dns {
        json.insert(
            "status".into(),
            serde_json::json!({
                "endpoints": status.endpoints().len(),
                "lookups": status.lookups(),
                "consecutive_failures": status.consecutive_failures(),
                "last_error": status.last_error(),
            }),
        );
    }
    json.into()
}

/// The limits' settings and live state, for `/snapshot`; `null` for a limit
/// that is off.
fn limits_json(client: &ServiceClient) -> serde_json::Value {
    let concurrency = client.concurrency_limit().map(|c| {
        serde_json::json!({
            "max": c.max(),
            "queue": c.queue(),
            "max_wait_ms": c.max_wait().map(|w| w.as_secs_f64() * 1e3),
            "in_flight": c.in_flight(),
            "queued": c.queued(),
            "shed_full": c.shed_full(),
            "shed_timeout": c.shed_timeout(),
        })
    });
    let rate = client.rate_limit().map(|r| {
        serde_json::json!({
            "per_second": r.rate(),
            "burst": r.burst(),
            "available": r.available(),
            "keys": r.keys(),
            "admitted": r.admitted(),
            "rejected": r.rejected(),
        })
    });
    let throttle = client.throttle().map(|t| {
        serde_json::json!({
            "k": t.k(),
            "window_ms": t.window().as_secs_f64() * 1e3,
            "probability": t.probability(),
            "requests": t.requests(),
            "accepts": t.accepts(),
            "rejected": t.rejected(),
        })
    });
    let hedge = client.hedge().map(|h| {
        let s = h.stats();
        let skipped: serde_json::Map<String, serde_json::Value> = crate::hedge::HedgeSkip::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), s.skipped(*r).into()))
            .collect();
        serde_json::json!({
            "sent": s.sent,
            "won": s.won,
            "delay_ms": s.delay.as_secs_f64() * 1e3,
            "samples": s.samples,
            "budget_balance": s.budget_balance,
            "skipped": skipped,
        })
    });
    serde_json::json!({
        "concurrency": concurrency,
        "rate": rate,
        "throttle": throttle,
        "hedge": hedge,
    })
}

/// Reloads the config when the file changes (polled) or on SIGHUP. A bad
/// file is logged, naming the field and line, and the running config stays.
///
/// Changes are seen by the change detector file discovery uses: not only a
/// new modification time but a new inode, size or change time too, so an
/// atomic rename over the file and a Kubernetes ConfigMap's symlink swap
/// are reloads; content identical to the last read is not.
async fn watch_config(state: Arc<State>, mut stop: watch::Receiver<bool>, interval: Duration) {
    let mut watched = Watched::new(state.path.clone(), MAX_CONFIG_BYTES);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(interval) => false,
            _ = hangup => true,
        };
        if forced {
            watched.forget();
        }
        // The first check reads the file whatever it is: a config equal to
        // the running one is no reload.
        let config = match watched.check() {
            Ok(None) => continue,
            Ok(Some(bytes)) => parse_config(&state.path, bytes),
            Err(e) => Err(StartError::Read(state.path.clone(), e)),
        };
        match config {
            Ok(config) => {
                reload(&state, config).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
            }
        }
    }
}

/// Validates a config file's content, read from `path`.
fn parse_config(path: &Path, bytes: &[u8]) -> Result<Config, StartError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        StartError::Read(
            path.to_owned(),
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    Config::from_file_text(text, path).map_err(|e| StartError::Config(path.to_owned(), e))
}

/// Swaps in a new config; keeps the old one if a client cannot be built.
async fn reload(state: &State, config: Config) -> bool {
    let old = state.routing.load_full();
    if *old.config == config {
        return false;
    }
    match build_routing(Arc::new(config), Some(&old), &state.http, &state.metrics).await {
        Ok(routing) => {
            state.routing.store(Arc::new(routing));
            tracing::info!(path = %state.path.display(), "config reloaded");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; the running config stays");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_are_checked_and_split_without_allocating() {
        assert_eq!(split_host("example.com"), Ok("example.com"));
        assert_eq!(split_host("example.com:8080"), Ok("example.com"));
        assert_eq!(split_host("127.0.0.1:80"), Ok("127.0.0.1"));
        assert_eq!(split_host("[::1]:4140"), Ok("[::1]"));
        assert_eq!(split_host("[::1]"), Ok("[::1]"));
        for bad in [
            "",
            ":80",
            "exa mple.com",
            "a:b",
            "a:123456",
            "[::1",
            "[]",
            "[::1]x",
            "[zz]",
            "a/b",
            "a@b",
            "a:80:80",
        ] {
            assert_eq!(split_host(bad), Err(()), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_at_least_one() {
        for (wait, secs) in [
            (Duration::ZERO, 1),
            (Duration::from_millis(1), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(90), 90),
        ] {
            assert_eq!(retry_after_secs(wait), secs, "{wait:?}");
        }
    }

    #[tokio::test]
    async fn every_source_feeds_a_client_and_says_where_endpoints_come_from() {
        let dir = std::env::temp_dir().join(format!("palisade-server-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::from(
            "[[services]]\nname = \"listed\"\nendpoints = [\"127.0.0.1:1\"]\n\
             [[services]]\nname = \"filed\"\ndiscovery = { file = \"missing.json\" }\n",
        );
        if cfg!(feature = "dns") {
            // Nothing answers there: the source keeps trying.
            text += "[[services]]\nname = \"named\"\n\
                     discovery = { dns = \"users.internal:80\", nameservers = [\"127.0.0.1:9\"], query_timeout = \"50ms\" }\n";
        }
        text += "[[routes]]\nsplit = [{ service = \"listed\", weight = 1 }, { service = \"filed\", weight = 1 }]\n";
        let config = Config::from_file_text(&text, &dir.join("proxy.toml")).unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        let http = Upstreams {
            http1: hyper_client(),
            h2c: hyper_h2c_client(),
        };
        let routing = build_routing(Arc::new(config), None, &http, &metrics)
            .await
            .unwrap();
        let upstream = |name: &str| &routing.services[name];
        let svc = |name: &str| {
            let config = &routing.config;
            config.services.iter().find(|s| s.name == name).unwrap()
        };

        // The static list reaches the balancer through its source.
        let listed = upstream("listed");
        tokio::time::timeout(
            Duration::from_secs(5),
            listed.client.wait_until(|c| c.endpoint_count() == 1),
        )
        .await
        .unwrap();
        assert_eq!(
            discovery_json(svc("listed"), listed, &routing.config),
            serde_json::json!({ "kind": "endpoints" })
        );

        let filed = upstream("filed");
        assert_eq!(filed.client.endpoint_count(), 0);
        let missing = std::path::absolute(dir.join("missing.json")).unwrap();
        assert_eq!(
            waiting_for(svc("filed"), filed, &routing.config),
            format!("filed (file {})", missing.display())
        );
        let json = discovery_json(svc("filed"), filed, &routing.config);
        assert_eq!(json["kind"], "file");
        assert_eq!(json["file"], "missing.json");
        assert_eq!(json["resolved_path"], missing.display().to_string());

        #[cfg(feature = "dns")]
        {
            let named = upstream("named");
            let status = named.dns.clone().unwrap();
            let waiting = waiting_for(svc("named"), named, &routing.config);
            assert!(
                waiting.starts_with("named (dns \"users.internal:80\": "),
                "{waiting}"
            );
            tokio::time::timeout(Duration::from_secs(10), async {
                while status.lookups() == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap();
            let json = discovery_json(svc("named"), named, &routing.config);
            assert_eq!(json["kind"], "dns");
            assert_eq!(json["dns"], "users.internal:80");
            assert_eq!(json["status"]["endpoints"], 0);
            assert!(json["status"]["last_error"].is_string(), "{json}");
            let waiting = waiting_for(svc("named"), named, &routing.config);
            assert!(!waiting.ends_with("no answer yet)"), "{waiting}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Private, close"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["x-kept"]);
    }
}
