//! The balancer end to end: real hyper servers on 127.0.0.1, a real
//! hyper-util client, the default HTTP classifier.
//!
//! Latencies here are real (they cross sockets), so assertions are about
//! shares of traffic and ratios against healthy peers in the same run, with
//! wide margins, never absolute times.

#![cfg(feature = "demo")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade::Hyper;
use palisade::demo::{BACKEND_HEADER, Backend, Behavior};
use palisade::discover::{self, Endpoint, Static};
use palisade::http::hyper_client;
use palisade::{Client, Error};
use tokio::time::Instant;
use tower::ServiceExt;

type TestClient = Hyper<Full<Bytes>>;

async fn backends(behaviors: &[Behavior]) -> Vec<Backend> {
    let mut out = Vec::new();
    for b in behaviors {
        out.push(Backend::spawn(*b).await.expect("bind 127.0.0.1"));
    }
    out
}

fn client(backends: &[Backend]) -> TestClient {
    Client::builder("test")
        .endpoints(backends.iter().map(|b| Endpoint::from(b.addr())))
        .http(hyper_client())
        .build()
        .unwrap()
}

/// Waits until the client's discovery task has applied its changes.
async fn settle(client: &TestClient, done: impl Fn(&TestClient) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), client.wait_until(done))
        .await
        .unwrap_or_else(|_| panic!("discovery change not applied: {client:?}"));
}

struct Outcome {
    latency: Duration,
    backend: Option<SocketAddr>,
    status: Option<u16>,
}

async fn send(client: &TestClient) -> Result<Outcome, Error> {
    let start = Instant::now();
    let req = http::Request::get("http://test/")
        .body(Full::default())
        .unwrap();
    let rsp = client.clone().oneshot(req).await?;
    let backend = rsp
        .headers()
        .get(BACKEND_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let status = rsp.status().as_u16();
    rsp.into_body().collect().await.expect("body");
    Ok(Outcome {
        latency: start.elapsed(),
        backend,
        status: Some(status),
    })
}

/// `total` requests from `concurrency` workers, each sending one after the
/// other (a steady concurrency).
async fn run(client: &TestClient, total: usize, concurrency: usize) -> Vec<Result<Outcome, Error>> {
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let n = total / concurrency + usize::from(w < total % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(send(&client).await);
            }
            out
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await.unwrap());
    }
    out
}

fn p99(mut xs: Vec<Duration>) -> Duration {
    assert!(!xs.is_empty());
    xs.sort();
    xs[(xs.len() * 99).div_ceil(100) - 1]
}

fn by_backend(outcomes: &[Result<Outcome, Error>]) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for o in outcomes.iter().flatten() {
        *counts
            .entry(o.backend.expect("backend header"))
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_little_traffic_and_does_not_hurt_p99() {
    // Latencies well above scheduling noise on a busy 2-core machine.
    let fast = Behavior::new().latency(Duration::from_millis(10));
    let slow = Behavior::new().latency(Duration::from_millis(200));
    let fleet = backends(&[fast, fast, fast, fast, slow]).await;
    let slow_addr = fleet[4].addr();
    let client = client(&fleet);

    let outcomes = run(&client, 2000, 10).await;
    assert!(outcomes.iter().all(|o| o.is_ok()), "every request succeeds");

    let counts = by_backend(&outcomes);
    let slow_share = counts.get(&slow_addr).copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        slow_share < 0.03,
        "slow backend got {:.2}% of requests",
        slow_share * 100.0
    );
    assert_eq!(
        fleet[4].requests() as usize,
        counts.get(&slow_addr).copied().unwrap_or(0)
    );

    let all: Vec<Duration> = outcomes.iter().flatten().map(|o| o.latency).collect();
    let healthy: Vec<Duration> = outcomes
        .iter()
        .flatten()
        .filter(|o| o.backend != Some(slow_addr))
        .map(|o| o.latency)
        .collect();
    let (overall, healthy) = (p99(all), p99(healthy));
    eprintln!("slow share {slow_share:.4}; p99 overall {overall:?}, healthy {healthy:?}");
    assert!(
        overall.as_secs_f64() <= 1.5 * healthy.as_secs_f64(),
        "overall p99 {overall:?} vs healthy backends' p99 {healthy:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_fast_gets_little_traffic() {
    let fast = Behavior::new().latency(Duration::from_millis(5));
    let failing = Behavior::new().failure_rate(1.0);
    let fleet = backends(&[fast, fast, fast, fast, failing]).await;
    let client = client(&fleet);

    let outcomes = run(&client, 1000, 10).await;
    // The client retries each 503 on a healthy backend: callers see none.
    assert!(outcomes.iter().flatten().all(|o| o.status == Some(200)));
    let failed = fleet[4].requests();
    assert!(
        failed < 50,
        "the failing backend got {failed} attempts for 1000 requests"
    );
    let stats = client.endpoint_stats();
    let s = stats
        .iter()
        .find(|s| s.address.to_string() == fleet[4].addr().to_string())
        .unwrap();
    assert_eq!(
        s.failures, s.requests,
        "every one of its answers was classified a failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_stops_getting_traffic() {
    let fast = Behavior::new().latency(Duration::from_millis(2));
    let mut fleet = backends(&[fast, fast, fast]).await;
    let client = client(&fleet);
    let warm = run(&client, 300, 6).await;
    assert!(warm.iter().all(|o| o.is_ok()));

    // Killed: connections to it are now refused.
    let dead = fleet.pop().unwrap();
    let dead_addr = dead.addr();
    dead.shutdown().await;

    let outcomes = run(&client, 1000, 6).await;
    let errors: Vec<&Error> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    for e in &errors {
        assert_eq!(
            e.endpoint().map(|a| a.to_string()),
            Some(dead_addr.to_string()),
            "{e}"
        );
    }
    assert!(
        errors.len() < 30,
        "{} of 1000 requests hit the dead backend",
        errors.len()
    );
    let served: usize = by_backend(&outcomes).values().sum();
    assert_eq!(
        served + errors.len(),
        1000,
        "every request is accounted for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_added_and_removed_at_runtime() {
    // Latency well above connection set-up, so a new endpoint's first
    // (connecting) request does not make it look slow.
    let b = Behavior::new().latency(Duration::from_millis(5));
    let fleet = backends(&[b, b, b]).await;
    let (handle, discover) = discover::dynamic();
    let client = Client::builder("test")
        .discover(discover)
        .http(hyper_client())
        .build()
        .unwrap();

    handle.insert(Endpoint::from(fleet[0].addr()));
    settle(&client, |c| c.endpoint_count() == 1).await;
    run(&client, 50, 2).await;
    assert_eq!(fleet[0].requests(), 50);

    // Added: the new endpoints take traffic.
    handle.insert(Endpoint::from(fleet[1].addr()));
    handle.insert(Endpoint::from(fleet[2].addr()));
    settle(&client, |c| c.endpoint_count() == 3).await;
    let outcomes = run(&client, 300, 3).await;
    let counts = by_backend(&outcomes);
    for b in &fleet {
        assert!(
            counts.get(&b.addr()).copied().unwrap_or(0) > 30,
            "{counts:?}"
        );
    }

    // Removed: no new requests reach it.
    handle.remove(&fleet[0].addr().into());
    settle(&client, |c| c.endpoint_count() == 2).await;
    let before = fleet[0].requests();
    let outcomes = run(&client, 300, 3).await;
    assert!(outcomes.iter().all(|o| o.is_ok()));
    assert_eq!(
        fleet[0].requests(),
        before,
        "a removed endpoint got new requests"
    );
    assert_eq!(fleet[1].requests() + fleet[2].requests() + before, 650);
}

#[tokio::test]
async fn zero_endpoints_fail_with_no_endpoints_after_the_wait() {
    let wait = Duration::from_millis(100);
    let client: TestClient = Client::builder("empty")
        .discover(Static::new([]))
        .http(hyper_client())
        .endpoint_wait(wait)
        .build()
        .unwrap();
    let start = Instant::now();
    let err = match send(&client).await {
        Err(e) => e,
        Ok(_) => panic!("a request with no endpoints succeeded"),
    };
    assert!(start.elapsed() >= wait);
    assert!(matches!(err, Error::NoEndpoints { .. }), "{err}");
    assert!(err.to_string().contains("\"empty\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tasks_on_clones_lose_nothing() {
    let quick = Behavior::new().latency(Duration::from_millis(1));
    let fleet = backends(&[quick, quick, quick, quick, quick]).await;
    let client = client(&fleet);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { send(&client).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let outcome = t.await.expect("task");
        assert_eq!(outcome.expect("request").status, Some(200));
        ok += 1;
    }
    assert_eq!(ok, 1000);
    let served: u64 = fleet.iter().map(Backend::requests).sum();
    assert_eq!(
        served, 1000,
        "each request reached exactly one backend once"
    );
    assert!(client.endpoint_stats().iter().all(|s| s.in_flight == 0));
}
