//! The limits end to end, around a real palisade `Client` (hyper-util
//! client, real hyper servers on 127.0.0.1).
//!
//! Latencies here are real, so assertions compare sheds with requests served
//! in the same run, with wide margins, never absolute times.

#![cfg(feature = "demo")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use palisade::Hyper;
use palisade::classify::HttpClassify;
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::discover::Static;
use palisade::http::{HttpEndpoints, HyperClient, hyper_client};
use palisade::limit::{
    ConcurrencyLimitLayer, ConcurrencySettings, RateLimitSettings, ThrottleLayer, ThrottleSettings,
};
use palisade::retry::ReplayBody;
use palisade::stack::Builder;
use palisade::{Client, Error, Limit};
use tokio::net::TcpListener;
use tokio::time::{Instant, MissedTickBehavior};
use tower::{Service, ServiceBuilder, ServiceExt};

type Body = Full<Bytes>;

/// A client with neither retries nor a breaker, so the backend sees exactly
/// the requests the limits let through.
fn client(addr: SocketAddr) -> Hyper<Body> {
    client_with(addr, |b| b)
}

/// [`client`], with more builder settings (the limits).
fn client_with(
    addr: SocketAddr,
    settings: impl FnOnce(
        Builder<Static, HttpEndpoints<HyperClient<ReplayBody<Body>>>, HttpClassify>,
    )
        -> Builder<Static, HttpEndpoints<HyperClient<ReplayBody<Body>>>, HttpClassify>,
) -> Hyper<Body> {
    let builder = Client::builder("test")
        .endpoints([Endpoint::from(addr)])
        .http(hyper_client())
        .max_attempts(1)
        .without_breaker();
    settings(builder).build().unwrap()
}

fn get() -> http::Request<Body> {
    http::Request::get("http://test/")
        .body(Body::default())
        .unwrap()
}

/// What one request came to.
enum Outcome {
    Served(u16, Duration),
    Shed(Limit, Duration),
}

/// Sends `rate` requests a second for `duration`, each on its own task
/// (an open loop: sheds do not slow the offered load down), and waits for
/// all of them.
async fn open_loop<S>(svc: S, rate: u32, duration: Duration) -> Vec<Outcome>
where
    S: Service<
            http::Request<Body>,
            Response = http::Response<palisade::classify::EosBody<hyper::body::Incoming>>,
            Error = Error,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    while tick.tick().await < end {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            match svc.oneshot(get()).await {
                Ok(rsp) => {
                    let status = rsp.status().as_u16();
                    let latency = start.elapsed();
                    rsp.into_body().collect().await.expect("body");
                    Outcome::Served(status, latency)
                }
                Err(err) => {
                    let latency = start.elapsed();
                    let limit = err.limit().unwrap_or_else(|| panic!("{err}")).clone();
                    assert_eq!(err.service(), "test");
                    Outcome::Shed(limit, latency)
                }
            }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn quantile(mut xs: Vec<Duration>, q: f64) -> Duration {
    assert!(!xs.is_empty());
    xs.sort();
    xs[((xs.len() as f64 * q).ceil() as usize).clamp(1, xs.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulkhead_under_10x_overload_sheds_fast_and_caps_the_backend() {
    // The backend serves each request in 100 ms; 5 in flight is 50 a second.
    // The client offers 500 a second: 10x.
    const MAX: usize = 5;
    let backend = Backend::spawn(Behavior::new().latency(Duration::from_millis(100)))
        .await
        .unwrap();
    let settings = ConcurrencySettings {
        max: MAX,
        queue: 5,
        ..ConcurrencySettings::default()
    };
    let limit = ConcurrencyLimitLayer::new("test", settings).unwrap();
    let handle = limit.handle();
    // Counts responses below the limit, before the slot is released.
    let done = Arc::new(AtomicU64::new(0));
    let svc = ServiceBuilder::new()
        .layer(limit)
        .map_future({
            let done = done.clone();
            move |fut| {
                let done = done.clone();
                async move {
                    let result = fut.await;
                    done.fetch_add(1, Ordering::SeqCst);
                    result
                }
            }
        })
        .service(client(backend.addr()));

    // In flight at the backend, sampled: arrivals read before completions,
    // so a sample never overcounts (every request counted was in flight
    // from the first read to the second).
    let backend = Arc::new(backend);
    let peak = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (backend, peak, stop, done) =
            (backend.clone(), peak.clone(), stop.clone(), done.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let arrived = backend.requests();
                let completed = done.load(Ordering::SeqCst);
                peak.fetch_max(arrived.saturating_sub(completed) as usize, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    let outcomes = open_loop(svc, 500, Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();

    let served: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Served(200, d) => Some(*d),
            Outcome::Served(s, _) => panic!("status {s}"),
            Outcome::Shed(..) => None,
        })
        .collect();
    let shed: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Shed(Limit::Concurrency { max: 5, queue: 5 }, d) => Some(*d),
            Outcome::Shed(other, _) => panic!("unexpected limit {other}"),
            Outcome::Served(..) => None,
        })
        .collect();
    let peak = peak.load(Ordering::SeqCst);
    let (served_p50, shed_p50, shed_p99) = (
        quantile(served.clone(), 0.5),
        quantile(shed.clone(), 0.5),
        quantile(shed.clone(), 0.99),
    );
    eprintln!(
        "offered {}, served {}, shed {}; served p50 {served_p50:?}; shed p50 {shed_p50:?}, \
         p99 {shed_p99:?}; peak in flight at the backend {peak}",
        outcomes.len(),
        served.len(),
        shed.len(),
    );

    assert!(peak <= MAX, "{peak} in flight at the backend, max {MAX}");
    assert!(
        peak >= MAX - 1,
        "the sampler saw the backend saturated: {peak}"
    );
    assert!(
        shed.len() > outcomes.len() / 2,
        "most of a 10x overload is shed"
    );
    assert_eq!(backend.requests() as usize, served.len());
    assert!(
        shed_p99 * 10 < served_p50,
        "sheds (p99 {shed_p99:?}) are fast next to a served request (p50 {served_p50:?})"
    );
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

/// What a capacity-limited backend was offered and accepted.
#[derive(Default)]
struct Counts {
    offered: AtomicU64,
    accepted: AtomicU64,
}

/// A hyper server with a fixed capacity: `per_slot` requests each
/// `slot`; the rest are refused at once with 429 and 503 alternately —
/// an overloaded backend, not a broken one.
async fn capacity_backend(per_slot: u64, slot: Duration) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let window = Arc::new(std::sync::Mutex::new((0u128, 0u64)));
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (counts, window) = (c.clone(), window.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let n = counts.offered.fetch_add(1, Ordering::SeqCst);
                    let this = start.elapsed().as_nanos() / slot.as_nanos();
                    let admit = {
                        let mut w = window.lock().unwrap();
                        if w.0 != this {
                            *w = (this, 0);
                        }
                        w.1 += 1;
                        w.1 <= per_slot
                    };
                    let status = if admit {
                        counts.accepted.fetch_add(1, Ordering::SeqCst);
                        200
                    } else if n % 2 == 0 {
                        429
                    } else {
                        503
                    };
                    let rsp = http::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"x")))
                        .unwrap();
                    async move { Ok::<_, Infallible>(rsp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_keeps_an_overloaded_backends_load_near_k_times_what_it_accepts() {
    // The backend takes 50 a second (5 each 100 ms); the client offers 500.
    let (addr, counts) = capacity_backend(5, Duration::from_millis(100)).await;
    let settings = ThrottleSettings {
        window: Duration::from_secs(2),
        ..ThrottleSettings::default()
    };
    let throttle = ThrottleLayer::new("test", settings).unwrap().seed(42);
    let handle = throttle.handle();
    // Through the builder: the throttle sits above the breaker and retries.
    let svc = client_with(addr, |b| b.share_throttle(throttle));

    // One window to warm up, then measure over the next 1.5 windows.
    let warm = open_loop(svc.clone(), 500, Duration::from_secs(2)).await;
    let (offered0, accepted0) = (
        counts.offered.load(Ordering::SeqCst),
        counts.accepted.load(Ordering::SeqCst),
    );
    let measured = open_loop(svc, 500, Duration::from_secs(3)).await;
    let offered = counts.offered.load(Ordering::SeqCst) - offered0;
    let accepted = counts.accepted.load(Ordering::SeqCst) - accepted0;
    let throttled = measured
        .iter()
        .filter(|o| matches!(o, Outcome::Shed(Limit::Throttled { .. }, _)))
        .count();
    let ratio = offered as f64 / accepted as f64;
    eprintln!(
        "warm-up {} requests; measured: {} requests, {throttled} throttled locally, \
         backend offered {offered}, accepted {accepted}: ratio {ratio:.2} (K = 2); p = {:.2}",
        warm.len(),
        measured.len(),
        handle.probability(),
    );
    for o in &measured {
        if let Outcome::Shed(limit, _) = o {
            assert!(matches!(limit, Limit::Throttled { .. }), "{limit}");
        }
    }
    assert!(accepted > 0);
    assert!(
        ratio <= 2.0 * 1.3,
        "the backend was offered {ratio:.2}x what it accepted (K = 2)"
    );
    assert!(
        throttled > measured.len() / 2,
        "most of the overload was rejected locally"
    );
    // Unthrottled, the backend would have been offered all of it.
    assert!(offered < measured.len() as u64 / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_stacks_rate_then_concurrency_and_sheds_with_typed_errors() {
    let backend = Backend::spawn(Behavior::new().latency(Duration::from_millis(200)))
        .await
        .unwrap();
    let rate = RateLimitSettings {
        per_second: 1.0,
        burst: Some(3),
        ..RateLimitSettings::default()
    };
    let bulkhead = ConcurrencySettings {
        max: 1,
        queue: 1,
        ..ConcurrencySettings::default()
    };
    let svc = client_with(backend.addr(), |b| {
        b.rate_limit(rate).concurrency_limit(bulkhead)
    });
    // Four at once: the rate limit admits three (its burst) and sheds the
    // fourth; of the three, one runs, one waits, one finds the queue full.
    let calls: Vec<_> = (0..4).map(|_| svc.clone().oneshot(get())).collect();
    let results = futures::future::join_all(calls).await;
    let mut served = 0;
    let (mut rate, mut bulkhead) = (0, 0);
    for r in &results {
        match r {
            Ok(rsp) => {
                assert_eq!(rsp.status(), 200);
                served += 1;
            }
            Err(e) => match e.limit() {
                Some(Limit::Rate { burst: 3, .. }) => rate += 1,
                Some(Limit::Concurrency { max: 1, queue: 1 }) => bulkhead += 1,
                other => panic!("unexpected error {e} ({other:?})"),
            },
        }
    }
    assert_eq!((served, rate, bulkhead), (2, 1, 1), "{results:?}");
    assert_eq!(backend.requests(), 2, "sheds never reach the backend");
    let limit = svc.concurrency_limit().expect("the client has a bulkhead");
    assert_eq!(
        (limit.in_flight(), limit.queued(), limit.shed_full()),
        (0, 0, 1)
    );
    assert_eq!(svc.rate_limit().expect("and a rate limit").rejected(), 1);
    assert!(svc.throttle().is_none());
}
