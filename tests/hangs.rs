//! Hanging endpoints (issue 16), through a whole library client over real
//! sockets on 127.0.0.1: an endpoint that accepts and never answers.

#![cfg(feature = "demo")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use palisade::breaker::BreakerState;
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::http::hyper_client;
use palisade::metrics::Metrics;
use palisade::{Client, Hyper};
use prometheus_client::registry::Registry;
use support::{Fault, Faulty};
use tokio::time::Instant;
use tower::ServiceExt;

/// Calls cut off by their deadline while they wait on a hung endpoint are
/// that endpoint's failures, for the balancer (failure accrual), the
/// breaker and the metrics (`palisade_endpoint_timeouts_total`), with no
/// per-try timeout configured. Before, they counted nowhere: a hung
/// endpoint was never ejected and never opened the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cut_off_by_the_deadline_are_the_hung_endpoints_failures() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let hung = Faulty::spawn(backend.addr()).await.unwrap();
    hung.set(Fault::Blackhole).await;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let client: Hyper<Full<Bytes>> = Client::builder("app")
        .endpoints([Endpoint::parse(&hung.addr().to_string()).unwrap()])
        .http(hyper_client())
        .timeout(Some(Duration::from_millis(300)))
        .metrics(metrics)
        .build()
        .unwrap();
    for _ in 0..20 {
        let req = http::Request::get("http://app/")
            .body(Full::default())
            .unwrap();
        let err = client.clone().oneshot(req).await.unwrap_err();
        assert!(err.is_deadline_exceeded(), "{err}");
    }
    let stats = &client.endpoint_stats()[0];
    assert_eq!((stats.failures, stats.timeouts), (20, 20));
    assert!(
        matches!(client.breaker().state(), BreakerState::Open { .. }),
        "20 calls cut off by their deadline open the breaker: {:?}",
        client.breaker().state()
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series = format!(
        r#"palisade_endpoint_timeouts_total{{client="app",endpoint="{}"}} 20"#,
        hung.addr()
    );
    assert!(text.contains(&series), "{series} in\n{text}");
}

/// What a steady load saw: requests, successes, the slowest.
#[derive(Debug, Default)]
struct Seen {
    sent: u64,
    ok: u64,
    slowest: Duration,
}

/// `callers` callers sending GETs back to back through `send` for `run`,
/// while `steady` keeps going (so that there is always other traffic).
async fn steady_load<F, Fut>(callers: usize, run: Duration, send: F) -> Seen
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let until = Instant::now() + run;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let send = send.clone();
            tokio::spawn(async move {
                let mut seen = Seen::default();
                while Instant::now() < until {
                    let start = Instant::now();
                    let ok = send().await;
                    seen.slowest = seen.slowest.max(start.elapsed());
                    seen.sent += 1;
                    seen.ok += u64::from(ok);
                }
                seen
            })
        })
        .collect();
    let mut all = Seen::default();
    for t in tasks {
        let seen = t.await.unwrap();
        all.sent += seen.sent;
        all.ok += seen.ok;
        all.slowest = all.slowest.max(seen.slowest);
    }
    all
}

/// Five demo backends on 127.0.0.1, the third behind a blackhole (it
/// accepts and never answers); the addresses clients use.
async fn fleet_with_a_blackhole() -> (Vec<Backend>, Vec<Faulty>, Vec<SocketAddr>) {
    let mut backends = Vec::new();
    let mut faulties = Vec::new();
    for _ in 0..5 {
        let backend = Backend::spawn(Behavior::new()).await.unwrap();
        faulties.push(Faulty::spawn(backend.addr()).await.unwrap());
        backends.push(backend);
    }
    faulties[2].set(Fault::Blackhole).await;
    let addrs = faulties.iter().map(Faulty::addr).collect();
    (backends, faulties, addrs)
}

/// The proxy on a minimal config (one service, one route, every other
/// setting the default) over five backends, one of which never answers:
/// under steady load, at least 99.95 % of GETs succeed and none waits
/// more than 2 s. Stall detection gives up a GET stuck on the blackhole
/// about a second after it went silent and the retry layer sends it
/// elsewhere; the stalled endpoint is passed over, then ejected.
#[cfg(all(feature = "cli", unix))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_proxy_with_the_defaults_a_hung_backend_costs_at_most_a_second() {
    use support::proxy::{Plain, Proxy, plain, ready, service};
    let (_backends, faulties, addrs) = fleet_with_a_blackhole().await;
    let proxy = Proxy::start(&(service("app", &addrs) + "[[routes]]\nservice = \"app\"\n"));
    let client: Plain = plain();
    ready(&client, &proxy).await;
    let listen = proxy.listen;
    let send = move || {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("http://{listen}/"))
                .body(Full::<Bytes>::default())
                .unwrap();
            match client.request(req).await {
                Ok(rsp) => rsp.status() == 200,
                Err(_) => false,
            }
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (send, stop) = (send.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                send().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let seen = steady_load(8, Duration::from_secs(6), send).await;
    stop.store(true, Ordering::Relaxed);
    background.abort();
    let blackholed = faulties[2].counts();
    eprintln!("proxy, defaults, 1 of 5 blackholed: {seen:?}; blackhole saw {blackholed:?}");
    assert!(seen.sent >= 1000, "{seen:?}");
    assert!(
        seen.ok as f64 >= seen.sent as f64 * 0.9995,
        "{} of {} succeeded",
        seen.ok,
        seen.sent
    );
    assert!(seen.slowest <= Duration::from_secs(2), "{seen:?}");
}

/// A slow but working endpoint (20× the others) is not stalled: its
/// requests complete there, none is given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_is_not_judged_stalled() {
    let mut backends = Vec::new();
    for i in 0..5 {
        let latency = Duration::from_millis(if i == 2 { 100 } else { 5 });
        backends.push(
            Backend::spawn(Behavior::new().latency(latency))
                .await
                .unwrap(),
        );
    }
    let endpoints = backends
        .iter()
        .map(|b| Endpoint::parse(&b.addr().to_string()).unwrap());
    let client: Hyper<Full<Bytes>> = Client::builder("app")
        .endpoints(endpoints)
        .http(hyper_client())
        .build()
        .unwrap();
    let sender = client.clone();
    let send = move || {
        let client = sender.clone();
        async move {
            let req = http::Request::get("http://app/")
                .body(Full::default())
                .unwrap();
            client.oneshot(req).await.is_ok_and(|r| r.status() == 200)
        }
    };
    let seen = steady_load(32, Duration::from_secs(3), send).await;
    assert_eq!(seen.ok, seen.sent, "{seen:?}");
    let slow_addr = backends[2].addr().to_string();
    let stats = client.endpoint_stats();
    let slow = stats
        .iter()
        .find(|s| s.address.to_string() == slow_addr)
        .unwrap();
    assert!(
        slow.requests >= 5,
        "the slow endpoint got requests: {slow:?}"
    );
    assert_eq!(
        (slow.failures, slow.timeouts),
        (0, 0),
        "none given up: {slow:?}"
    );
    assert_eq!(
        backends[2].requests(),
        slow.requests,
        "each completed there"
    );
    eprintln!(
        "slow endpoint (20x) answered {} of {} requests, none given up",
        slow.requests, seen.sent
    );
}
