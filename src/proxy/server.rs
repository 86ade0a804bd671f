//! The proxy server: listeners, routing, forwarding through one palisade
//! [`Client`](crate::Client) per service, the admin server, reload and graceful shutdown.
//!
//! Every policy (balancing, retries, deadlines, ejection, breaking, metrics)
//! is the library's: a service in the config becomes a
//! [`Client::builder`](crate::Client::builder) call, nothing more. This module only adds what a
//! proxy needs around it: HTTP/1.1 and h2c listeners, routing, hop-by-hop
//! header handling, error statuses, admin endpoints and reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

pub(crate) use super::admin::*;
use super::answer::{Dialect, error_response, own};
use super::config::{Config, ConfigError, Protocol};
use super::conns::{
    Connections as ClientConnections, default_max_connections, raise_descriptor_limit,
};
use super::inbound::{Refusal, host_of, prepare, strip_hop_by_hop};
use super::listen::{Side, serve};
use super::pool::PerThread;
pub(crate) use super::reload::*;
use super::routes::RouteTable;
pub(crate) use super::upstream::*;
use crate::classify::{EosBody, GrpcCode};
use crate::discover::DynamicHandle;
use crate::http::{HttpSettings, HyperClient};
use crate::metrics::Metrics;
use crate::retry::ReplayBody;

/// The body of every response the proxy sends: the upstream's, streamed, or
/// one of its own.
pub type ProxyBody = Either<EosBody<Incoming>, Full<Bytes>>;

/// The header naming why the proxy itself answered.
pub const ERROR_HEADER: &str = "x-palisade-error";

pub(crate) type ServiceClient = crate::Client<crate::http::HttpEndpoint<Pool>>;

/// The largest config file the proxy reads (at startup, on reload, and
/// in `palisade check`).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// What requests are routed with: swapped whole on reload, so a request
/// keeps the routing it started with.
pub(crate) struct Routing {
    /// The running config, without its routes (they are in `routes`) and
    /// without the text it was read from.
    pub(crate) config: Arc<Config>,
    pub(crate) services: HashMap<String, Upstream>,
    pub(crate) routes: RouteTable,
    /// The connection pools the services use, one per protocol and
    /// transport settings; a reload reuses the pools whose key it still
    /// has, and those no service uses any more close with the old routing.
    pub(crate) pools: HashMap<PoolKey, Arc<Pool>>,
}

/// One service's client, and what keeps its endpoint source going. Kept
/// whole across reloads that do not change the service.
#[derive(Clone)]
pub(crate) struct Upstream {
    pub(crate) client: ServiceClient,
    /// Whether requests go upstream over HTTP/1.1 (else h2c).
    pub(crate) http1: bool,
    /// The handle of a static list's source: held as long as the client,
    /// so that its stream stays open.
    pub(crate) _endpoints: Option<DynamicHandle>,
    /// A DNS source's live state, for `/snapshot` and `/ready`.
    #[cfg(feature = "dns")]
    pub(crate) dns: Option<crate::discover::dns::DnsStatus>,
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

/// A pooled upstream client, shared by the services of one [`PoolKey`].
pub(crate) type Pool = PerThread<HyperClient<ReplayBody<Incoming>>>;

/// What services share a pool by: the protocol and the transport settings.
pub(crate) type PoolKey = (Protocol, HttpSettings);

/// The running proxy's shared state.
pub(crate) struct State {
    pub(crate) routing: ArcSwap<Routing>,
    pub(crate) metrics: Metrics,
    pub(crate) registry: std::sync::Mutex<Registry>,
    pub(crate) path: PathBuf,
    /// Set once shutdown has begun: `/ready` answers 503 from then on,
    /// while in-flight requests finish.
    pub(crate) draining: AtomicBool,
    /// The client connections open, and those refused over the cap.
    pub(crate) connections: ClientConnections,
    /// The same for the admin listener, counted apart.
    pub(crate) admin_connections: ClientConnections,
    /// `server.max_connections` when the config leaves it out: from the
    /// descriptor limit, raised at startup.
    pub(crate) default_max_connections: usize,
}

impl State {
    /// The state of a proxy about to serve `config`, read from `path`: its
    /// clients built, nothing bound yet.
    pub(crate) async fn new(path: PathBuf, config: Config) -> Result<State, StartError> {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let connections = ClientConnections::register(&mut registry, Side::Proxy);
        let admin_connections = ClientConnections::register(&mut registry, Side::Admin);
        let default_max_connections = default_max_connections(raise_descriptor_limit());
        let routing = build_routing(config, None, &metrics).await?;
        Ok(State {
            routing: ArcSwap::from_pointee(routing),
            metrics,
            registry: std::sync::Mutex::new(registry),
            path,
            draining: AtomicBool::new(false),
            connections,
            admin_connections,
            default_max_connections,
        })
    }
}

/// Reads and validates a config file; relative paths in it are relative
/// to its directory.
///
/// Startup, `palisade check` and reloads read the file the same way:
/// a regular file of at most [`MAX_CONFIG_BYTES`] (4 MiB).
pub fn load(path: &Path) -> Result<Config, StartError> {
    let bytes = read_config(path)?;
    super::reload::parse_config(path, &bytes)
}

/// Reads a config file: a regular file (a FIFO or `/dev/zero` is refused
/// before it is opened) of at most [`MAX_CONFIG_BYTES`].
pub(crate) fn read_config(path: &Path) -> Result<Vec<u8>, StartError> {
    crate::discover::file::read_bounded(path, MAX_CONFIG_BYTES)
        .map(|(bytes, _)| bytes)
        .map_err(|e| StartError::Read(path.to_owned(), e))
}

/// Runs the proxy on `config` (read from `path`, which is watched for
/// changes) until `shutdown` resolves; then stops accepting and drains
/// in-flight requests for up to the grace period, the admin server still
/// answering (`/ready` with 503). `ready` receives the bound addresses
/// (listeners, then admin) once serving.
///
/// The runtime `run` is called on serves the listeners, the admin server,
/// discovery and reloads; `server.threads` − 1 more threads each serve
/// the listeners on a current-thread runtime of their own (see
/// [`Server::threads`](super::config::Server::threads)).
pub async fn run(
    path: PathBuf,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&[SocketAddr], SocketAddr),
) -> Result<(), StartError> {
    let state = Arc::new(State::new(path, config).await?);
    let config = state.routing.load().config.clone();
    let threads = config.server.threads();

    let mut listeners = Vec::new();
    for l in &config.listeners {
        let listener = bind(l.address, threads > 1).map_err(|e| StartError::Bind(l.address, e))?;
        listeners.push(listener);
    }
    let admin = TcpListener::bind(config.admin.address)
        .await
        .map_err(|e| StartError::Bind(config.admin.address, e))?;
    let bound: Vec<SocketAddr> = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Bind(config.listeners[0].address, e))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| StartError::Bind(config.admin.address, e))?;

    // The listeners and the watcher stop when shutdown begins, and every
    // connection is asked to finish; the admin server only once the drain
    // is over, so that `/ready` can say 503 meanwhile; the other serving
    // threads' runtimes (with their connections) only then too.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let (exit_tx, exit_rx) = watch::channel(false);
    let mut cores = Vec::new();
    for index in 1..threads {
        let started = spawn_core(
            index,
            bound.clone(),
            state.clone(),
            stop_rx.clone(),
            exit_rx.clone(),
        )
        .await;
        match started {
            Ok(core) => cores.push(core),
            Err(e) => {
                let _ = stop_tx.send(true);
                let _ = exit_tx.send(true);
                return Err(e);
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(serve_proxy(listener, state.clone(), stop_rx.clone()));
    }
    let admin_task = tokio::spawn(admin_server(admin, state.clone(), admin_stop_rx));
    tasks.spawn(watch_config(state.clone(), stop_rx.clone()));
    // From here on only the connections hold receivers: the sender's
    // `closed()` is every connection drained, on every thread.
    drop(stop_rx);
    ready(&bound, admin_addr);
    tracing::info!(listeners = ?bound, admin = %admin_addr, threads, "palisade proxy serving");

    shutdown.await;
    state.draining.store(true, Ordering::Relaxed);
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let grace = state.routing.load().config.server.grace_period;
    if tokio::time::timeout(grace, stop_tx.closed()).await.is_err() {
        tracing::warn!(?grace, "grace period over with requests still in flight");
    }
    let _ = exit_tx.send(true);
    for core in cores {
        let _ = tokio::task::spawn_blocking(move || core.join()).await;
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    Ok(())
}

/// A listening socket on `address`; with `shared`, `SO_REUSEPORT` is set
/// first, so that every serving thread can have its own socket on the
/// address and the kernel spreads new connections over them. (Only a
/// process of the same user can bind beside them.)
fn bind(address: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    if shared {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(unix))]
    let _ = shared;
    socket.bind(address)?;
    socket.listen(1024)
}

/// Serves one proxy listener until `stop` says so.
async fn serve_proxy(listener: TcpListener, state: Arc<State>, stop: watch::Receiver<bool>) {
    let handler = {
        let state = state.clone();
        move |req, remote| {
            let state = state.clone();
            async move { handle(&state, req, remote).await }
        }
    };
    serve(listener, state, Side::Proxy, stop, handler).await;
}

/// Starts serving thread number `index`: a current-thread runtime with
/// its own sockets on `addresses` (the first thread's, ports resolved),
/// serving until `stop`, then keeping its runtime, and the connections
/// draining on it, until `exit`. Returns once its sockets are bound.
async fn spawn_core(
    index: usize,
    addresses: Vec<SocketAddr>,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
    mut exit: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let first = addresses[0];
    let thread = std::thread::Builder::new()
        .name(format!("palisade-serve-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = bound_tx.send(Err(StartError::Bind(first, e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut listeners = Vec::new();
                for &address in &addresses {
                    match bind(address, true) {
                        Ok(listener) => listeners.push(listener),
                        Err(e) => {
                            let _ = bound_tx.send(Err(StartError::Bind(address, e)));
                            return;
                        }
                    }
                }
                let _ = bound_tx.send(Ok(()));
                let mut tasks = tokio::task::JoinSet::new();
                for listener in listeners {
                    tasks.spawn(serve_proxy(listener, state.clone(), stop.clone()));
                }
                drop(stop);
                while tasks.join_next().await.is_some() {}
                let _ = exit.wait_for(|exit| *exit).await;
            });
        })
        .map_err(|e| StartError::Bind(first, e))?;
    match bound_rx.await {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StartError::Bind(
            first,
            std::io::Error::other("the serving thread ended before it bound its sockets"),
        )),
    }
}

/// Routes and forwards one request.
pub(crate) async fn handle(
    state: &State,
    mut req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<ProxyBody> {
    let routing = state.routing.load_full();
    let dialect = Dialect::of(&req);
    if let Err(refusal) = prepare(&mut req, remote) {
        let Refusal {
            status,
            code,
            reason,
            text,
        } = refusal;
        return own(dialect, status, code, reason, text);
    }
    // `prepare` made the target's authority and `Host` agree, and checked
    // them: this is the host the backend will be asked for.
    let host = host_of(&req).unwrap_or(None);
    let Some(route) = routing.routes.find(host, &req) else {
        return own(
            dialect,
            StatusCode::NOT_FOUND,
            GrpcCode::Unimplemented,
            "no-route",
            "no route matches this request".into(),
        );
    };
    let service = route.pick();
    let Some(Upstream { client, http1, .. }) = routing.services.get(service) else {
        return own(
            dialect,
            StatusCode::BAD_GATEWAY,
            GrpcCode::Unavailable,
            "no-service",
            format!("route {:?} names unknown service {service:?}", route.name()),
        );
    };
    // The upstream pool picks the protocol (HTTP/1.1 or h2c) whatever the
    // client spoke.
    *req.version_mut() = http::Version::HTTP_11;
    // hyper's HTTP/1.1 client sends no body for a GET or HEAD of unknown
    // length unless told to: a body the client sent is forwarded, chunked.
    if *http1
        && matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        && !req.headers().contains_key(http::header::CONTENT_LENGTH)
        && !http_body::Body::is_end_stream(req.body())
    {
        req.headers_mut().insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }

    match client.clone().oneshot(req).await {
        // Upgrades are not forwarded (`Upgrade` is hop-by-hop), so a 101 is
        // one nobody asked for.
        Ok(rsp) if rsp.status() == StatusCode::SWITCHING_PROTOCOLS => own(
            dialect,
            StatusCode::BAD_GATEWAY,
            GrpcCode::Unavailable,
            "unexpected-upgrade",
            format!(
                "service {service:?} answered 101 Switching Protocols, which was not asked for"
            ),
        ),
        Ok(rsp) => {
            let (mut parts, body) = rsp.into_parts();
            // A response's unreadable `Connection` names nothing we can
            // honour; the standard set is gone either way.
            let _ = strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => error_response(dialect, service, &e, routing.config.server.verbose_errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        let routing = build_routing(config, None, &metrics).await.unwrap();
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
}
