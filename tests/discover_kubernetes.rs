//! Kubernetes discovery end to end: a fake API server on 127.0.0.1 that
//! speaks the real list and watch wire format for EndpointSlices, a real kube
//! client, a real balancer and real hyper backends on 127.0.0.1.
//!
//! The fake keeps a resource version counter, a history of changes (so a
//! resumed watch replays what it missed) and a compaction point (so a watch
//! from too old a version gets 410 Gone, as an `ERROR` event or as the HTTP
//! status). Tests change its slices while the client runs and wait, with
//! generous bounds, for the balancer to agree.

#![cfg(all(feature = "kubernetes", feature = "demo"))]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use palisade::Client;
use palisade::Hyper;
use palisade::demo::{BACKEND_HEADER, Backend, Behavior};
use palisade::discover::Address;
use palisade::discover::kubernetes::{Kubernetes, KubernetesError};
use palisade::http::hyper_client;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(30);
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

// ---------------------------------------------------------------------------
// The fake API server.

/// One request the fake answered.
#[derive(Debug, Clone)]
struct Logged {
    watch: bool,
    query: BTreeMap<String, String>,
    status: u16,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Clone)]
enum Live {
    Change(Change),
    Bookmark(u64),
    Gone,
    Close,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    /// (namespace, name) → the slice, without kind/apiVersion (as in lists).
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    /// A watch from a version older than this is answered 410 Gone.
    oldest: u64,
    gone_as_http: bool,
    fail_with: Option<u16>,
    log: Vec<Logged>,
}

struct Shared {
    state: Mutex<State>,
    live: broadcast::Sender<Live>,
    watches: AtomicUsize,
}

struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 100,
                ..State::default()
            }),
            live: broadcast::channel(1024).0,
            watches: AtomicUsize::new(0),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        FakeApi {
            addr,
            shared,
            server: Mutex::new(Some(server)),
        }
    }

    /// Closes the listener and every connection: the API server is down.
    async fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
    }

    /// Serves again on the same address.
    async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        let server = tokio::spawn(serve(listener, self.shared.clone()));
        *self.server.lock().unwrap() = Some(server);
    }

    async fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).expect("kube client")
    }

    /// Creates or replaces a slice and tells the watches (ADDED/MODIFIED).
    fn apply(&self, namespace: &str, slice: Value) -> u64 {
        self.change(namespace, slice, false, true)
    }

    /// Deletes a slice and tells the watches (DELETED).
    fn delete(&self, namespace: &str, name: &str) -> u64 {
        let mut state = self.shared.state.lock().unwrap();
        let mut object = state
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))
            .expect("no such slice");
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            namespace: namespace.to_owned(),
            kind: "DELETED",
            object,
        };
        state.history.push(change.clone());
        let _ = self.shared.live.send(Live::Change(change));
        rv
    }

    /// Changes a slice without telling anyone and compacts the history, as
    /// if the client had been away long enough to miss it.
    fn apply_unseen(&self, namespace: &str, slice: Value) {
        self.change(namespace, slice, true, false);
    }

    fn delete_unseen(&self, namespace: &str, name: &str) {
        let mut state = self.shared.state.lock().unwrap();
        state
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()));
        state.rv += 1;
        state.oldest = state.rv;
        state.history.clear();
    }

    fn change(&self, namespace: &str, mut slice: Value, compact: bool, tell: bool) -> u64 {
        let mut state = self.shared.state.lock().unwrap();
        state.rv += 1;
        let rv = state.rv;
        slice["metadata"]["resourceVersion"] = json!(rv.to_string());
        slice["metadata"]["namespace"] = json!(namespace);
        let name = slice["metadata"]["name"].as_str().unwrap().to_owned();
        let kind = match state
            .objects
            .insert((namespace.to_owned(), name), slice.clone())
        {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        if compact {
            state.oldest = rv;
            state.history.clear();
        }
        if tell {
            let change = Change {
                rv,
                namespace: namespace.to_owned(),
                kind,
                object: slice,
            };
            state.history.push(change.clone());
            let _ = self.shared.live.send(Live::Change(change));
        }
        rv
    }

    /// Sends a BOOKMARK at a newer version (other objects changed).
    fn bookmark(&self) -> u64 {
        let mut state = self.shared.state.lock().unwrap();
        state.rv += 10;
        let _ = self.shared.live.send(Live::Bookmark(state.rv));
        state.rv
    }

    /// Ends every watch stream cleanly.
    fn close_watches(&self) {
        let _ = self.shared.live.send(Live::Close);
    }

    /// Sends `ERROR` 410 Gone on every watch stream, then ends it.
    fn gone(&self) {
        let _ = self.shared.live.send(Live::Gone);
    }

    fn gone_as_http(&self, yes: bool) {
        self.shared.state.lock().unwrap().gone_as_http = yes;
    }

    fn fail_with(&self, status: Option<u16>) {
        self.shared.state.lock().unwrap().fail_with = status;
    }

    fn log(&self) -> Vec<Logged> {
        self.shared.state.lock().unwrap().log.clone()
    }

    fn lists(&self) -> usize {
        self.log()
            .iter()
            .filter(|l| !l.watch && l.status == 200)
            .count()
    }

    fn watches(&self) -> Vec<Logged> {
        self.log().into_iter().filter(|l| l.watch).collect()
    }

    fn active_watches(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connections here means aborting this task closes them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(answer(&shared, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Equality-based label selectors (`a=b,c==d`), all the client sends.
fn selects(selector: Option<&String>, object: &Value) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').all(|term| {
        let (k, v) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .unwrap_or_else(|| panic!("unsupported selector {term:?}"));
        object["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut object = object.clone();
    if kind != "ERROR" && kind != "BOOKMARK" {
        object["apiVersion"] = json!("discovery.k8s.io/v1");
        object["kind"] = json!("EndpointSlice");
    }
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn answer(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query());
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let mut state = shared.state.lock().unwrap();
    let log = |status: u16, state: &mut State| {
        state.log.push(Logged {
            watch,
            query: query.clone(),
            status,
        })
    };

    if let Some(status) = state.fail_with {
        log(status, &mut state);
        return json_response(
            status,
            &status_json(status, "ServiceUnavailable", "down for a test"),
        );
    }
    let namespace = path
        .strip_prefix("/apis/discovery.k8s.io/v1/namespaces/")
        .and_then(|rest| rest.strip_suffix("/endpointslices"))
        .map(str::to_owned);
    let Some(namespace) = namespace else {
        log(404, &mut state);
        return json_response(404, &status_json(404, "NotFound", "no such path"));
    };
    let selector = query.get("labelSelector");

    if !watch {
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((ns, _), o)| *ns == namespace && selects(selector, o))
            .map(|(_, o)| o.clone())
            .collect();
        let list = json!({
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": { "resourceVersion": state.rv.to_string() },
            "items": items,
        });
        log(200, &mut state);
        return json_response(200, &list);
    }

    let from: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .expect("the client watches from a resource version");
    let too_old = from < state.oldest;
    if too_old && state.gone_as_http {
        log(410, &mut state);
        return json_response(
            410,
            &status_json(410, "Expired", "too old resource version"),
        );
    }
    log(200, &mut state);
    let replay: Vec<Bytes> = if too_old {
        vec![event_line(
            "ERROR",
            &status_json(410, "Expired", "too old resource version"),
        )]
    } else {
        state
            .history
            .iter()
            .filter(|c| c.rv > from && c.namespace == namespace && selects(selector, &c.object))
            .map(|c| event_line(c.kind, &c.object))
            .collect()
    };
    let mut live = shared.live.subscribe();
    drop(state);

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let selector = selector.cloned();
    let shared = shared.clone();
    shared.watches.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        struct Active(Arc<Shared>);
        impl Drop for Active {
            fn drop(&mut self) {
                self.0.watches.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _active = Active(shared);
        for line in replay {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if too_old {
            return;
        }
        loop {
            let msg = tokio::select! {
                msg = live.recv() => msg,
                () = tx.closed() => return,
            };
            let line = match msg {
                Ok(Live::Change(c)) => {
                    if c.namespace != namespace || !selects(selector.as_ref(), &c.object) {
                        continue;
                    }
                    event_line(c.kind, &c.object)
                }
                Ok(Live::Bookmark(rv)) => event_line(
                    "BOOKMARK",
                    &json!({
                        "kind": "EndpointSlice",
                        "apiVersion": "discovery.k8s.io/v1",
                        "metadata": { "resourceVersion": rv.to_string() },
                    }),
                ),
                Ok(Live::Gone) => {
                    let line = event_line(
                        "ERROR",
                        &status_json(410, "Expired", "too old resource version"),
                    );
                    let _ = tx.send(line).await;
                    return;
                }
                Ok(Live::Close) | Err(_) => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    }));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .unwrap()
}

// ---------------------------------------------------------------------------
// Log capture: every palisade event, as text, to check what is logged.

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if metadata.target().starts_with("palisade") {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={:?}", field.name(), value));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.push_str(&format!(" {}={}", field.name(), value));
            }
        }
        let mut text = Text(event.metadata().level().to_string());
        event.record(&mut text);
        let mut logs = LOGS.lock().unwrap();
        if logs.len() < 100_000 {
            logs.push(text.0);
        }
    }
}

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture));
    });
}

/// The captured warnings about this namespace.
fn warnings(namespace: &str) -> Vec<String> {
    let needle = format!("namespace={namespace} ");
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("WARN") && l.contains(&needle))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// Helpers.

type TestClient = Hyper<Full<Bytes>>;

fn slice(service: &str, name: &str, backend: SocketAddr, ready: bool) -> Value {
    json!({
        "metadata": {
            "name": name,
            "labels": { SERVICE_LABEL: service, "app.kubernetes.io/name": service },
        },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": backend.port(), "protocol": "TCP" }],
        "endpoints": [{
            "addresses": [backend.ip().to_string()],
            "conditions": { "ready": ready, "serving": ready, "terminating": false },
            "zone": "zone-a",
            "nodeName": "node-1",
            "targetRef": { "kind": "Pod", "name": format!("{name}-pod") },
        }],
    })
}

/// A slice whose endpoint is terminating but still serving.
fn terminating(service: &str, name: &str, backend: SocketAddr) -> Value {
    let mut s = slice(service, name, backend, false);
    s["endpoints"][0]["conditions"] =
        json!({ "ready": false, "serving": true, "terminating": true });
    s
}

async fn backends(n: usize) -> Vec<Backend> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Backend::spawn(Behavior::new())
                .await
                .expect("bind 127.0.0.1"),
        );
    }
    out
}

fn fast_backoff(k: Kubernetes) -> Kubernetes {
    k.backoff(Duration::from_millis(50), Duration::from_millis(400))
}

async fn client_for(api: &FakeApi, namespace: &str) -> TestClient {
    let discover = fast_backoff(Kubernetes::new(api.client().await, namespace, "users"))
        .port_name("http")
        .spawn()
        .expect("spawn kubernetes discovery");
    Client::builder("users")
        .discover(discover)
        .http(hyper_client())
        .build()
        .unwrap()
}

fn current(client: &TestClient) -> BTreeSet<SocketAddr> {
    client
        .endpoint_stats()
        .into_iter()
        .map(|e| match e.address {
            Address::Socket(a) => a,
            other => panic!("unexpected address {other}"),
        })
        .collect()
}

async fn wait_for(client: &TestClient, api: &FakeApi, want: &[&Backend]) {
    let want: BTreeSet<SocketAddr> = want.iter().map(|b| b.addr()).collect();
    if tokio::time::timeout(WAIT, client.wait_until(|c| current(c) == want))
        .await
        .is_err()
    {
        panic!(
            "the balancer did not reach {want:?}; it has {:?}; requests: {:#?}",
            current(client),
            api.log()
        );
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn send(client: &TestClient) -> (StatusCode, SocketAddr) {
    let req = Request::get("http://users/").body(Full::default()).unwrap();
    let rsp = client.clone().oneshot(req).await.expect("request succeeds");
    let backend = rsp
        .headers()
        .get(BACKEND_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("backend header");
    let status = rsp.status();
    rsp.into_body().collect().await.expect("body");
    (status, backend)
}

/// Sends `n` requests; each must succeed and land on one of `allowed`.
async fn traffic(client: &TestClient, n: usize, allowed: &[&Backend]) {
    let allowed: BTreeSet<SocketAddr> = allowed.iter().map(|b| b.addr()).collect();
    for _ in 0..n {
        let (status, backend) = send(client).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            allowed.contains(&backend),
            "{backend} is not in {allowed:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_endpoints_of_the_services_slices_reach_the_balancer() {
    let api = FakeApi::start().await;
    let fleet = backends(4).await;
    let (a, b, c, other) = (&fleet[0], &fleet[1], &fleet[2], &fleet[3]);
    api.apply("shop", slice("users", "users-a", a.addr(), true));
    api.apply("shop", slice("users", "users-b", b.addr(), true));
    api.apply("shop", slice("users", "users-c", c.addr(), false));
    // Another service in the namespace, and the same service elsewhere.
    api.apply("shop", slice("orders", "orders-a", other.addr(), true));
    api.apply("elsewhere", slice("users", "users-x", other.addr(), true));

    let client = client_for(&api, "shop").await;
    wait_for(&client, &api, &[a, b]).await;
    traffic(&client, 40, &[a, b]).await;
    assert_eq!(c.requests() + other.requests(), 0);
    until("the watch to start", || api.active_watches() == 1).await;

    // Labels come along.
    let stats = client.endpoint_stats();
    let labels = &stats
        .iter()
        .find(|e| e.address == Address::Socket(a.addr()))
        .unwrap()
        .labels;
    assert_eq!(labels["zone"], "zone-a");
    assert_eq!(labels["node"], "node-1");
    assert_eq!(labels["pod"], "users-a-pod");
    assert_eq!(labels["app.kubernetes.io/name"], "users");

    // What the client asked for: a list by label, then a watch from the
    // list's version with bookmarks and a server-side timeout.
    let log = api.log();
    let list = log.iter().find(|l| !l.watch).expect("a list");
    assert_eq!(
        list.query["labelSelector"],
        "kubernetes.io/service-name=users"
    );
    let watch = log.iter().find(|l| l.watch).expect("a watch");
    assert_eq!(
        watch.query["labelSelector"],
        "kubernetes.io/service-name=users"
    );
    assert_eq!(watch.query["resourceVersion"], "105");
    assert_eq!(watch.query["allowWatchBookmarks"], "true");
    assert!(watch.query.contains_key("timeoutSeconds"), "{watch:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_reach_the_balancer() {
    let api = FakeApi::start().await;
    let fleet = backends(4).await;
    let (a, b, c, d) = (&fleet[0], &fleet[1], &fleet[2], &fleet[3]);
    api.apply("shop", slice("users", "users-a", a.addr(), true));
    api.apply("shop", slice("users", "users-b", b.addr(), true));
    api.apply("shop", slice("users", "users-c", c.addr(), false));
    let client = client_for(&api, "shop").await;
    wait_for(&client, &api, &[a, b]).await;
    until("the watch to start", || api.active_watches() == 1).await;

    // MODIFIED: b stops being ready, c becomes ready.
    api.apply("shop", slice("users", "users-b", b.addr(), false));
    api.apply("shop", slice("users", "users-c", c.addr(), true));
    wait_for(&client, &api, &[a, c]).await;
    let before = b.requests();
    traffic(&client, 30, &[a, c]).await;
    assert_eq!(b.requests(), before);

    // ADDED and DELETED.
    api.apply("shop", slice("users", "users-d", d.addr(), true));
    api.delete("shop", "users-a");
    wait_for(&client, &api, &[c, d]).await;
    traffic(&client, 30, &[c, d]).await;

    // A change to another service is not seen.
    api.apply("shop", slice("orders", "orders-a", a.addr(), true));
    api.apply("shop", slice("users", "users-b", b.addr(), true));
    wait_for(&client, &api, &[b, c, d]).await;

    // Still one list: everything came through the one watch.
    assert_eq!(api.lists(), 1);
    assert_eq!(api.watches().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_endpoints_serve_only_when_nothing_is_ready() {
    let api = FakeApi::start().await;
    let fleet = backends(2).await;
    let (a, b) = (&fleet[0], &fleet[1]);
    api.apply("shop", slice("users", "users-a", a.addr(), true));
    api.apply("shop", terminating("users", "users-b", b.addr()));
    let client = client_for(&api, "shop").await;
    wait_for(&client, &api, &[a]).await;

    // The last ready endpoint goes: the terminating one still serves
    // rather than nothing at all.
    api.apply("shop", slice("users", "users-a", a.addr(), false));
    wait_for(&client, &api, &[b]).await;
    traffic(&client, 10, &[b]).await;

    // Ready again: the terminating one gets nothing new.
    api.apply("shop", slice("users", "users-a", a.addr(), true));
    wait_for(&client, &api, &[a]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_watch_is_resumed_from_the_last_version_seen() {
    let api = FakeApi::start().await;
    let fleet = backends(3).await;
    let (a, b, c) = (&fleet[0], &fleet[1], &fleet[2]);
    api.apply("shop", slice("users", "users-a", a.addr(), true));
    let client = client_for(&api, "shop").await;
    wait_for(&client, &api, &[a]).await;

    api.apply("shop", slice("users", "users-b", b.addr(), true));
    wait_for(&client, &api, &[a, b]).await;
    // A bookmark moves the version on; then the server ends the stream (as
    // it does at `timeoutSeconds`). Both go down the same stream, in order.
    let bookmark = api.bookmark();
    api.close_watches();
    until("a second watch", || api.watches().len() >= 2).await;
    let resumed = &api.watches()[1];
    assert_eq!(resumed.query["resourceVersion"], bookmark.to_string());
    assert_eq!(resumed.status, 200);

    // The resumed watch carries on; no relist was needed.
    api.apply("shop", slice("users", "users-c", c.addr(), true));
    api.delete("shop", "users-a");
    wait_for(&client, &api, &[b, c]).await;
    traffic(&client, 20, &[b, c]).await;
    assert_eq!(api.lists(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_event_leads_to_a_relist() {
    let api = FakeApi::start().await;
    let fleet = backends(3).await;
    let (a, b, c) = (&fleet[0], &fleet[1], &fleet[2]);
    api.apply("shop", slice("users", "users-a", a.addr(), true));
    api.apply("shop", slice("users", "users-b", b.addr(), true));
    let client = client_for(&api, "shop").await;
    wait_for(&client, &api, &[a, b]).await;
    until("the watch to start", || api.active_watches() == 1).await;

    // Changes the client never hears of, then the history is gone.
    api.delete_unseen("shop", "users-a");
    api.apply_unseen("shop", slice("users", "users-c", c.addr(), true));
    api.gone();
    wait_for(&client, &api, &[b, c]).await;
    assert_eq!(api.lists(), 2, "relisted once");
    traffic(&client, 20, &[b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_answer_to_the_watch_request_leads_to_a_relist() {
    let api = FakeApi::start().await;
    let fleet = backends(3).await;
    let (a, b, c) = (&fleet[0], &fleet[1], &fleet[2]);
    api.apply("shop", slice("users", "users-a", a.addr(), true));
    let client = client_for(&api, "shop").await;
    wait_for(&client, &api, &[a]).await;
    until("the watch to start", || api.active_watches() == 1).await;

    api.gone_as_http(true);
    api.apply_unseen("shop", slice("users", "users-b", b.addr(), true));
    api.apply_unseen("shop", slice("users", "users-c", c.addr(), true));
    api.delete_unseen("shop", "users-a");
    api.close_watches();
    wait_for(&client, &api, &[b, c]).await;
    assert!(
        api.watches().iter().any(|w| w.status == 410),
        "the resumed watch was answered 410: {:#?}",
        api.log()
    );
    assert_eq!(api.lists(), 2, "relisted once");
    traffic(&client, 20, &[b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_set_survives_an_api_outage_and_recovers() {
    capture_logs();
    let namespace = "outage";
    let api = FakeApi::start().await;
    let fleet = backends(3).await;
    let (a, b, c) = (&fleet[0], &fleet[1], &fleet[2]);
    api.apply(namespace, slice("users", "users-a", a.addr(), true));
    api.apply(namespace, slice("users", "users-b", b.addr(), true));
    let client = client_for(&api, namespace).await;
    wait_for(&client, &api, &[a, b]).await;
    until("the watch to start", || api.active_watches() == 1).await;

    // The API server answers errors: the client retries, with backoff, and
    // keeps its set.
    api.fail_with(Some(503));
    api.close_watches();
    until("the client to retry", || {
        api.log().iter().filter(|l| l.status == 503).count() >= 3
    })
    .await;
    traffic(&client, 30, &[a, b]).await;

    // The API server is gone altogether: connections are refused, and the
    // log says so (the error's sources included).
    api.stop().await;
    until("a refused connection to be logged", || {
        warnings(namespace).iter().any(|l| l.contains("refused"))
    })
    .await;
    traffic(&client, 30, &[a, b]).await;
    assert_eq!(current(&client), BTreeSet::from([a.addr(), b.addr()]));

    // It comes back, with a change made meanwhile: the client resumes its
    // watch from where it was, and the change arrives.
    api.fail_with(None);
    let last_seen = api.shared.state.lock().unwrap().rv;
    api.apply(namespace, slice("users", "users-c", c.addr(), true));
    api.delete(namespace, "users-a");
    api.restart().await;
    wait_for(&client, &api, &[b, c]).await;
    traffic(&client, 20, &[b, c]).await;
    let resumed = api
        .watches()
        .into_iter()
        .rfind(|w| w.status == 200)
        .unwrap();
    assert_eq!(resumed.query["resourceVersion"], last_seen.to_string());
    assert_eq!(api.lists(), 1, "resumed, not relisted");

    // The failures were logged, naming what was watched and why it failed.
    let logged = warnings(namespace);
    assert!(
        logged
            .iter()
            .any(|l| l.contains("service=users") && l.contains("error=") && l.contains("503")),
        "{logged:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_drains() {
    let api = FakeApi::start().await;
    let slow = Backend::spawn(Behavior::new().latency(Duration::from_secs(2)))
        .await
        .unwrap();
    let fast = Backend::spawn(Behavior::new()).await.unwrap();
    api.apply("shop", slice("users", "users-slow", slow.addr(), true));
    let client = client_for(&api, "shop").await;
    wait_for(&client, &api, &[&slow]).await;

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { send(&client).await }
    });
    until("the slow request to arrive", || slow.requests() == 1).await;

    api.delete("shop", "users-slow");
    api.apply("shop", slice("users", "users-fast", fast.addr(), true));
    wait_for(&client, &api, &[&fast]).await;
    traffic(&client, 10, &[&fast]).await;

    let (status, backend) = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight request finishes")
        .unwrap();
    assert_eq!((status, backend), (StatusCode::OK, slow.addr()));
    assert_eq!(slow.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_balancer_stops_the_watch() {
    let api = FakeApi::start().await;
    let a = Backend::spawn(Behavior::new()).await.unwrap();
    api.apply("shop", slice("users", "users-a", a.addr(), true));
    let client = client_for(&api, "shop").await;
    wait_for(&client, &api, &[&a]).await;
    until("the watch to start", || api.active_watches() == 1).await;
    drop(client);
    until("the watch to be closed", || api.active_watches() == 0).await;
}

#[tokio::test]
async fn invalid_names_are_typed_errors() {
    let api = FakeApi::start().await;
    for (namespace, service, port, field, value) in [
        ("Shop", "users", "http", "namespace", "Shop"),
        ("shop", "users_v2", "http", "service", "users_v2"),
        ("shop", "", "http", "service", ""),
        ("shop", "users", "-http", "port_name", "-http"),
    ] {
        let err = Kubernetes::new(api.client().await, namespace, service)
            .port_name(port)
            .spawn()
            .unwrap_err();
        match &err {
            KubernetesError::InvalidName {
                field: f, value: v, ..
            } => {
                assert_eq!((*f, v.as_str()), (field, value));
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(field) && text.contains(&format!("{value:?}")),
            "{text}"
        );
    }
}

#[tokio::test]
async fn spawning_outside_a_runtime_is_an_error() {
    let api = FakeApi::start().await;
    let kubernetes = Kubernetes::new(api.client().await, "shop", "users");
    let result = std::thread::spawn(move || kubernetes.spawn().map(drop))
        .join()
        .unwrap();
    assert!(
        matches!(result, Err(KubernetesError::NoRuntime)),
        "{result:?}"
    );
}
