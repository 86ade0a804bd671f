//! Shared by the integration tests (`mod support;`): a fault-injecting TCP
//! proxy ([`faulty`]), a real DNS server whose zone a test changes ([`dns`]), the `palisade proxy` binary as a child process
//! ([`proxy`]), a gRPC service on tonic's server with switchable faults
//! ([`grpc`], feature `tonic`), and the bookkeeping the reliability tests share:
//!
//! - [`Fleet`]: demo backends, each behind a [`Faulty`] that records which
//!   request ids it forwarded;
//! - [`client`], [`Ledger`]: a library client whose inner client counts
//!   attempts per request id;
//! - [`Load`]: `concurrency` callers sending uniquely numbered requests,
//!   each outcome recorded in a [`Run`];
//! - [`account`]: every request answered once, every attempt accounted for.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod backends;
pub mod dns;
pub mod faulty;
#[cfg(feature = "tonic")]
pub mod grpc;
#[cfg(all(feature = "cli", unix))]
pub mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use palisade::balance::NewEndpoint;
use palisade::classify::HttpClassify;
use palisade::classify::{Retry, classify_transport_error};
use palisade::demo::{Backend, Behavior};
use palisade::discover::{Endpoint, EndpointError, Static};
use palisade::http::{HttpEndpoint, HttpEndpoints, HyperClient, hyper_client};
use palisade::retry::ReplayBody;
use palisade::stack::Builder;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

pub use faulty::{Fault, Faulty, ID_HEADER};

/// Request bodies the tests send.
pub type Body = Full<Bytes>;
/// The per-endpoint service under [`Counted`].
pub type Inner = HttpEndpoint<HyperClient<ReplayBody<Body>>>;
/// A library client whose attempts are counted in a [`Ledger`].
pub type TestClient = palisade::Client<Counted>;

/// Runs one scenario at a time: latency bounds compare phases of one test,
/// so other tests of the same binary must not load the machine meanwhile.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Attempts per request id, as seen by the inner (per-endpoint) client.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<HashMap<String, Tries>>>);

/// One request id's attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tries {
    /// Attempts handed to the inner client.
    pub attempts: u32,
    /// Of those, failed with an error that proves nothing was sent
    /// (the library's own classifier says `Retry::Always`).
    pub unsent: u32,
}

impl Ledger {
    fn update(&self, id: &str, f: impl FnOnce(&mut Tries)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(id.to_owned()).or_default());
    }

    /// The attempts made for `id`.
    pub fn tries(&self, id: &str) -> Tries {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).copied().unwrap_or_default()
    }

    /// Every id's attempts.
    pub fn all(&self) -> HashMap<String, Tries> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The inner client of a [`TestClient`]: counts each attempt per request id
/// ([`ID_HEADER`]) in a [`Ledger`], then sends it.
#[derive(Clone)]
pub struct Counted {
    inner: Inner,
    ledger: Ledger,
}

impl Service<Request<ReplayBody<Body>>> for Counted {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReplayBody<Body>>) -> Self::Future {
        let id = request_id(req.headers());
        self.ledger.update(&id, |t| t.attempts += 1);
        let future = self.inner.call(req);
        let ledger = self.ledger.clone();
        Box::pin(async move {
            let result = future.await;
            if let Err(e) = &result
                && matches!(classify_transport_error(e).retry(), Retry::Always)
            {
                ledger.update(&id, |t| t.unsent += 1);
            }
            result
        })
    }
}

fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The endpoint factory of a [`TestClient`]: one shared hyper client,
/// every attempt counted in a [`Ledger`]. Use with `Builder::new_endpoint`.
pub struct CountedEndpoints {
    http: HttpEndpoints<HyperClient<ReplayBody<Body>>>,
    ledger: Ledger,
}

impl CountedEndpoints {
    /// Counts in `ledger`.
    pub fn new(ledger: &Ledger) -> CountedEndpoints {
        CountedEndpoints {
            http: HttpEndpoints::new(hyper_client()),
            ledger: ledger.clone(),
        }
    }
}

impl NewEndpoint for CountedEndpoints {
    type Service = Counted;
    type Error = EndpointError;

    fn new_endpoint(&mut self, endpoint: &Endpoint) -> Result<Counted, EndpointError> {
        Ok(Counted {
            inner: self.http.new_endpoint(endpoint)?,
            ledger: self.ledger.clone(),
        })
    }
}

/// The builder of a [`TestClient`], before its settings.
pub type TestBuilder = Builder<Static, CountedEndpoints, HttpClassify>;

/// Builds a client named `svc` over `fleet` (its attempts counted in
/// `ledger`), with `configure` applied to the builder, and waits until it
/// sees every endpoint.
pub async fn client(
    fleet: &Fleet,
    ledger: &Ledger,
    configure: impl FnOnce(TestBuilder) -> TestBuilder,
) -> TestClient {
    let builder = palisade::Client::builder("svc")
        .endpoints(fleet.endpoints())
        .new_endpoint(CountedEndpoints::new(ledger));
    let client = configure(builder).build().expect("client");
    let n = fleet.faulties.len();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_until(|c| c.endpoint_count() == n),
    )
    .await
    .expect("the client never saw every endpoint");
    client
}

/// Demo backends, each behind a [`Faulty`]; clients talk to the faulty
/// proxies' addresses.
pub struct Fleet {
    backends: Vec<Option<Backend>>,
    /// Requests each backend had answered when it was killed.
    died_with: Vec<u64>,
    pub faulties: Vec<Faulty>,
    /// Every id forwarded to a backend: (backend index, id, when).
    forwarded: Mutex<Vec<(usize, String, Instant)>>,
}

impl Fleet {
    /// `n` backends answering with `behavior`, each behind a fault proxy in
    /// [`Fault::Pass`].
    pub async fn spawn(n: usize, behavior: Behavior) -> Fleet {
        let mut fleet = Fleet {
            backends: Vec::new(),
            died_with: vec![0; n],
            faulties: Vec::new(),
            forwarded: Mutex::new(Vec::new()),
        };
        for _ in 0..n {
            let backend = Backend::spawn(behavior).await.expect("backend");
            fleet
                .faulties
                .push(Faulty::spawn(backend.addr()).await.expect("fault proxy"));
            fleet.backends.push(Some(backend));
        }
        fleet
    }

    /// The addresses clients should use (the fault proxies).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.faulties.iter().map(Faulty::addr).collect()
    }

    /// The endpoints clients should use.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.addrs().into_iter().map(Endpoint::from).collect()
    }

    /// Backend `i`, unless it was killed.
    pub fn backend(&self, i: usize) -> &Backend {
        self.backends[i].as_ref().expect("backend was killed")
    }

    /// Sets every fault proxy to `fault`.
    pub async fn set_all(&self, fault: Fault) {
        for f in &self.faulties {
            f.set(fault).await;
        }
    }

    /// Kills backend `i` the way a crashed process goes: its address
    /// refuses connections and its open connections are reset (the fault
    /// proxy first, so that no connection is accepted and then found dead),
    /// then the server itself stops.
    pub async fn kill(&mut self, i: usize) {
        self.faulties[i].set(Fault::Refuse).await;
        if let Some(backend) = self.backends[i].take() {
            self.died_with[i] = backend.requests();
            backend.shutdown().await;
        }
    }

    /// Requests backend `i` received (until it was killed).
    pub fn backend_requests(&self, i: usize) -> u64 {
        self.backends[i]
            .as_ref()
            .map_or(self.died_with[i], Backend::requests)
    }

    /// Moves what the fault proxies recorded into the fleet's log.
    fn collect(&self) -> std::sync::MutexGuard<'_, Vec<(usize, String, Instant)>> {
        let mut log = self.forwarded.lock().unwrap_or_else(|p| p.into_inner());
        for (i, f) in self.faulties.iter().enumerate() {
            log.extend(f.take_forwarded().into_iter().map(|(id, t)| (i, id, t)));
        }
        log
    }

    /// How many times each id was forwarded to a backend.
    pub fn reached(&self) -> HashMap<String, u32> {
        let mut reached = HashMap::new();
        for (_, id, _) in self.collect().iter() {
            *reached.entry(id.clone()).or_default() += 1;
        }
        reached
    }

    /// When each id was first forwarded to a backend.
    pub fn first_reached(&self) -> HashMap<String, Instant> {
        let mut first: HashMap<String, Instant> = HashMap::new();
        for (_, id, t) in self.collect().iter() {
            first.entry(id.clone()).or_insert(*t);
        }
        first
    }

    /// The ids forwarded to backend `i`.
    pub fn reached_via(&self, i: usize) -> std::collections::HashSet<String> {
        self.collect()
            .iter()
            .filter(|(j, _, _)| *j == i)
            .map(|(_, id, _)| id.clone())
            .collect()
    }

    /// Requests forwarded to backend `i`.
    pub fn forwarded_to(&self, i: usize) -> u64 {
        self.collect().iter().filter(|(j, _, _)| *j == i).count() as u64
    }
}

/// What one request got.
#[derive(Debug)]
pub enum Outcome {
    /// 200 and the whole body.
    Ok,
    /// Another status (the body was read).
    Status(u16),
    /// The head arrived (with this status), then the body failed.
    Body(u16, String),
    /// The library client failed with this error.
    Error(palisade::Error),
    /// A plain HTTP client failed; `unsent` when the connection was refused
    /// (nothing was sent).
    Transport { unsent: bool, error: String },
    /// No outcome within the load's hang limit: a lost request.
    Hung,
}

impl Outcome {
    /// Whether it is a success.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// One request of a [`Run`].
#[derive(Debug)]
pub struct Record {
    pub id: String,
    pub method: Method,
    /// When the caller sent it.
    pub sent: Instant,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// Sends one request (method, id) and reports what it got.
pub type Sender = Arc<dyn Fn(Method, String) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Sends through a library client, with the id in [`ID_HEADER`].
pub fn via_client(client: &TestClient) -> Sender {
    let client = client.clone();
    Arc::new(move |method, id| {
        let client = client.clone();
        Box::pin(async move {
            let body = if method == Method::POST {
                Bytes::from_static(b"payload")
            } else {
                Bytes::new()
            };
            let req = Request::builder()
                .method(method)
                .uri("http://svc/")
                .header(ID_HEADER, id)
                .body(Full::new(body))
                .expect("request");
            match client.oneshot(req).await {
                Ok(rsp) => read_body(rsp).await,
                Err(e) => Outcome::Error(e),
            }
        })
    })
}

/// Reads a response to the end.
pub async fn read_body<B>(rsp: Response<B>) -> Outcome
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let status = rsp.status().as_u16();
    match rsp.into_body().collect().await.map(|b| b.to_bytes()) {
        Ok(body) if status == 200 && body == "ok\n" => Outcome::Ok,
        Ok(body) if status == 200 => Outcome::Body(status, format!("wrong body {body:?}")),
        Ok(_) => Outcome::Status(status),
        Err(e) => Outcome::Body(status, e.to_string()),
    }
}

/// How a [`Load`] sends.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests in all (ids `<prefix>-0` ..).
    pub total: u64,
    /// Callers sending at once.
    pub concurrency: usize,
    /// Every `post_every`th request is a POST (0: none).
    pub post_every: u64,
    /// Each caller sends at most one request per `pace` (a steady rate of
    /// `concurrency / pace`); `None`: back to back.
    pub pace: Option<Duration>,
    /// Prefix of the request ids.
    pub prefix: String,
    /// A request without an outcome after this long is recorded as
    /// [`Outcome::Hung`] (lost).
    pub hang_after: Duration,
}

impl Plan {
    /// `total` GETs from `concurrency` callers, back to back.
    pub fn new(prefix: &str, total: u64, concurrency: usize) -> Plan {
        Plan {
            total,
            concurrency,
            post_every: 0,
            pace: None,
            prefix: prefix.to_owned(),
            hang_after: Duration::from_secs(30),
        }
    }

    /// Makes every `n`th request a POST.
    pub fn posts(mut self, n: u64) -> Plan {
        self.post_every = n;
        self
    }

    /// Paces each caller to one request per `every`.
    pub fn paced(mut self, every: Duration) -> Plan {
        self.pace = Some(every);
        self
    }
}

/// Requests in progress; see [`Plan`].
pub struct Load {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    started: Instant,
    workers: Vec<JoinHandle<Vec<Record>>>,
}

impl Load {
    /// Starts the callers.
    pub fn start(send: Sender, plan: Plan) -> Load {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let plan = Arc::new(plan);
        let workers = (0..plan.concurrency)
            .map(|_| {
                let (send, plan, next) = (send.clone(), plan.clone(), next.clone());
                let (done, stop) = (done.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut records = Vec::new();
                    let mut pace = plan.pace.map(|every| {
                        let mut pace = tokio::time::interval(every);
                        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        pace
                    });
                    loop {
                        if let Some(pace) = &mut pace {
                            pace.tick().await;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= plan.total || stop.load(Ordering::Relaxed) {
                            return records;
                        }
                        let method = if plan.post_every > 0 && i % plan.post_every == 0 {
                            Method::POST
                        } else {
                            Method::GET
                        };
                        let id = format!("{}-{i}", plan.prefix);
                        let sent = Instant::now();
                        let outcome =
                            tokio::time::timeout(plan.hang_after, send(method.clone(), id.clone()))
                                .await
                                .unwrap_or(Outcome::Hung);
                        records.push(Record {
                            id,
                            method,
                            sent,
                            latency: sent.elapsed(),
                            outcome,
                        });
                        done.fetch_add(1, Ordering::Relaxed);
                        // Instant failures (an open breaker) must not
                        // starve the rest of the runtime.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        Load {
            done,
            stop,
            started: Instant::now(),
            workers,
        }
    }

    /// Requests completed so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `n` requests have completed (at most 60 s).
    pub async fn reached(&self, n: u64) {
        eventually_within(Duration::from_secs(60), || self.done() >= n).await;
    }

    /// Tells the callers to stop after their current request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for every caller (each request is bounded by the plan's hang
    /// limit) and returns what they saw.
    pub async fn finish(self) -> Run {
        let mut records = Vec::new();
        for w in self.workers {
            records.extend(w.await.expect("load worker panicked"));
        }
        Run {
            records,
            elapsed: self.started.elapsed(),
        }
    }
}

/// Waits until `done` holds, checking every 10 ms, panicking after `limit`.
pub async fn eventually_within(limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The outcomes of a [`Load`].
#[derive(Debug)]
pub struct Run {
    pub records: Vec<Record>,
    pub elapsed: Duration,
}

impl Run {
    /// Requests that succeeded.
    pub fn ok(&self) -> usize {
        self.records.iter().filter(|r| r.outcome.is_ok()).count()
    }

    /// The share of requests that succeeded.
    pub fn success_rate(&self) -> f64 {
        self.ok() as f64 / self.records.len().max(1) as f64
    }

    /// Requests that did not succeed.
    pub fn failures(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| !r.outcome.is_ok())
    }

    /// The `p` quantile (0..=1) of the latencies of the records `which`
    /// selects (zero if none).
    pub fn quantile(&self, p: f64, which: impl Fn(&Record) -> bool) -> Duration {
        quantile(
            self.records
                .iter()
                .filter(|r| which(r))
                .map(|r| r.latency)
                .collect(),
            p,
        )
    }

    /// The p50 and p99 latency of every request.
    pub fn p50_p99(&self) -> (Duration, Duration) {
        (self.quantile(0.5, |_| true), self.quantile(0.99, |_| true))
    }

    /// Asserts every one of `total` ids got exactly one outcome and none
    /// hung: nothing lost, nothing answered twice.
    pub fn assert_each_answered_once(&self, total: u64) {
        let mut seen = HashMap::new();
        for r in &self.records {
            *seen.entry(r.id.as_str()).or_insert(0u32) += 1;
        }
        assert_eq!(self.records.len() as u64, total, "requests sent");
        assert_eq!(seen.len() as u64, total, "distinct ids answered");
        assert!(seen.values().all(|&n| n == 1), "an id answered twice");
        let hung: Vec<_> = self
            .records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Hung))
            .map(|r| &r.id)
            .collect();
        assert!(hung.is_empty(), "lost (no outcome): {hung:?}");
    }

    /// One line: count, success, p50, p99, max, duration.
    pub fn summary(&self) -> String {
        let (p50, p99) = self.p50_p99();
        let max = self.quantile(1.0, |_| true);
        format!(
            "{} requests in {:.2} s, {} ok ({:.2} %), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.records.len(),
            self.elapsed.as_secs_f64(),
            self.ok(),
            100.0 * self.success_rate(),
            ms(p50),
            ms(p99),
            ms(max),
        )
    }
}

/// Milliseconds, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p` quantile (0..=1) of `xs` (zero if empty).
pub fn quantile(mut xs: Vec<Duration>, p: f64) -> Duration {
    if xs.is_empty() {
        return Duration::ZERO;
    }
    xs.sort();
    let i = ((xs.len() - 1) as f64 * p).round() as usize;
    xs[i.min(xs.len() - 1)]
}

/// What [`account`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Attempts the inner client was handed.
    pub attempts: u64,
    /// Of those, proven never sent (connection refused).
    pub unsent: u64,
    /// Requests the fault proxies forwarded to backends.
    pub forwarded: u64,
    /// Requests the backends received.
    pub at_backends: u64,
    /// Ids that reached backends more than once (each a retried GET).
    pub repeated: u64,
    /// Connections the fault proxies cut before forwarding what they
    /// carried (refused, blackholed, upstream unreachable): the most
    /// attempts that can have been sent and yet not forwarded.
    pub cut: u64,
}

/// Checks that every attempt is accounted for, after the [`Load`]s that
/// produced `runs` (every request the client was sent) finished:
///
/// - the inner clients' attempts equal the balancer's per-endpoint request
///   counts (the snapshot);
/// - per id, the times it reached a backend are at most its attempts that
///   were not proven unsent, so an id reaches a backend twice only through
///   a retry; a POST reaches the backends at most once; a request that made
///   no attempt (circuit open, say) reached none; nothing reached a
///   backend that the load did not send;
/// - per backend, what it received is what its fault proxy forwarded, less
///   at most the connections that proxy cut (a request forwarded on a
///   connection then reset may be discarded by the kernel unread);
/// - attempts sent (not proven unsent) minus requests forwarded lies
///   between zero and the connections the proxies cut.
pub fn account(runs: &[&Run], ledger: &Ledger, fleet: &Fleet, client: &TestClient) -> Accounting {
    let tries = ledger.all();
    let reached = fleet.reached();
    let mut a = Accounting {
        attempts: tries.values().map(|t| u64::from(t.attempts)).sum(),
        unsent: tries.values().map(|t| u64::from(t.unsent)).sum(),
        forwarded: reached.values().map(|&n| u64::from(n)).sum(),
        ..Accounting::default()
    };
    let by_balancer: u64 = client.endpoint_stats().iter().map(|s| s.requests).sum();
    assert_eq!(
        a.attempts, by_balancer,
        "attempts seen by the inner clients vs the balancer's counts"
    );
    let sent: HashMap<&str, &Record> = runs
        .iter()
        .flat_map(|run| &run.records)
        .map(|r| (r.id.as_str(), r))
        .collect();
    for (id, &n) in &reached {
        let record = sent
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} reached a backend but was never sent"));
        let t = tries.get(id).copied().unwrap_or_default();
        assert!(
            n <= t.attempts - t.unsent,
            "{id} reached backends {n} times in {t:?}"
        );
        if record.method == Method::POST {
            assert!(n <= 1, "POST {id} reached backends {n} times");
        }
        if n > 1 {
            a.repeated += 1;
        }
    }
    for (i, f) in fleet.faulties.iter().enumerate() {
        let c = f.counts();
        let (forwarded, received) = (fleet.forwarded_to(i), fleet.backend_requests(i));
        a.at_backends += received;
        a.cut += c.refused + c.blackholed + c.upstream_errors;
        assert!(
            received <= forwarded && forwarded - received <= c.refused,
            "backend {i}: received {received}, forwarded {forwarded}, {c:?}"
        );
    }
    let not_forwarded = (a.attempts - a.unsent).checked_sub(a.forwarded);
    assert!(
        not_forwarded.is_some_and(|n| n <= a.cut),
        "attempts not accounted for: {a:?}"
    );
    a
}
