//! Hedging end to end: real hyper servers on 127.0.0.1 with a heavy tail,
//! the real hyper-util client, and a `Client` built with `.hedge(..)`
//! (telemetry → deadline → breaker → retry → hedge → balancer), measured
//! against the same client without hedging in the same run.
//!
//! The target: hedging at p95 cuts p99 by at least half on a fleet
//! with a heavy tail while adding at most 6 % load. Exact timing (the delay,
//! the budget arithmetic, who wins) is tested on paused time in
//! `src/hedge/tests.rs`; here the tail is made of the backends' injected
//! delay (150 ms against 5–10 ms), so a busy machine's scheduling noise
//! (a few ms) cannot decide the outcome.

#![cfg(feature = "demo")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use palisade::classify::EosBody;
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::hedge::{HedgeDelay, HedgeHandle, HedgeLayer, HedgeSettings, HedgeSkip};
use palisade::http::hyper_client;
use palisade::{Client, Error};
use tokio::time::Instant;
use tower::ServiceExt;
use tower::util::BoxCloneService;

type Req = Request<Full<Bytes>>;

/// 5–10 ms usually; 3 % of requests take 150 ms (20× the typical 7.5 ms).
fn heavy_tail() -> Behavior {
    Behavior::new()
        .latency(Duration::from_millis(7) + Duration::from_micros(500))
        .jitter(1.0 / 3.0)
        .tail(0.03, Duration::from_millis(150))
}

async fn fleet(n: usize, behavior: Behavior) -> Vec<Backend> {
    let mut fleet = Vec::new();
    for _ in 0..n {
        fleet.push(Backend::spawn(behavior).await.unwrap());
    }
    fleet
}

fn backend_requests(fleet: &[Backend]) -> u64 {
    fleet.iter().map(Backend::requests).sum()
}

/// The stacks compared: boxed alike, so that they differ only in the hedge.
type Stack = BoxCloneService<Req, Response<EosBody<Incoming>>, Error>;

/// A `Client` over `addrs` (telemetry → deadline → breaker → retry →
/// [hedge] → balancer), all defaults, and its hedging counters.
async fn stack(addrs: &[SocketAddr], hedge: Option<HedgeLayer>) -> (Stack, Option<HedgeHandle>) {
    let mut builder = Client::builder("hedge-test")
        .endpoints(addrs.iter().copied().map(Endpoint::from))
        .http(hyper_client());
    if let Some(hedge) = hedge {
        builder = builder.share_hedge(hedge);
    }
    let client = builder.build().unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_until(|c| c.endpoint_count() == addrs.len()),
    )
    .await
    .expect("endpoints discovered");
    let hedges = client.hedge().cloned();
    (BoxCloneService::new(client), hedges)
}

fn get() -> Req {
    Request::get("http://hedge-test/")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends `n` requests from `concurrency` workers; returns each one's
/// latency (to the end of its body).
async fn drive(svc: &Stack, n: usize, concurrency: usize, method: Method) -> Vec<Duration> {
    let left = Arc::new(AtomicUsize::new(n));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (svc, left, method) = (svc.clone(), left.clone(), method.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                    .is_ok()
                {
                    let mut req = get();
                    *req.method_mut() = method.clone();
                    let start = Instant::now();
                    let rsp = svc.clone().oneshot(req).await.unwrap();
                    assert_eq!(rsp.status(), StatusCode::OK);
                    rsp.into_body().collect().await.unwrap();
                    latencies.push(start.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all
}

fn quantile(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort_unstable();
    let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
    latencies[rank - 1]
}

fn report(name: &str, latencies: &mut [Duration]) -> (Duration, Duration) {
    let (p50, p99) = (quantile(latencies, 0.5), quantile(latencies, 0.99));
    eprintln!(
        "{name:>9}: n {} p50 {p50:?} p95 {:?} p99 {p99:?} max {:?}",
        latencies.len(),
        quantile(latencies, 0.95),
        latencies[latencies.len() - 1],
    );
    (p50, p99)
}

fn print_stats(hedges: &HedgeHandle) {
    let s = hedges.stats();
    let skipped: Vec<_> = HedgeSkip::ALL
        .iter()
        .map(|r| format!("{}={}", r.as_str(), s.skipped(*r)))
        .collect();
    eprintln!(
        "hedges: sent {} won {} delay {:?} samples {} skipped [{}]",
        s.sent,
        s.won,
        s.delay,
        s.samples,
        skipped.join(" ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_at_p95_halves_p99_for_at_most_six_percent_more_load() {
    let fleet = fleet(5, heavy_tail()).await;
    let addrs: Vec<SocketAddr> = fleet.iter().map(Backend::addr).collect();
    let layer = HedgeLayer::new("hedge-test", HedgeSettings::default()).unwrap();
    let (hedged, hedges) = stack(&addrs, Some(layer)).await;
    let hedges = hedges.expect("the client hedges");
    let (plain, none) = stack(&addrs, None).await;
    assert!(none.is_none());

    // Warm up: connections, load estimates, and the p95's first samples.
    drive(&plain, 200, 4, Method::GET).await;
    drive(&hedged, 200, 4, Method::GET).await;

    // Alternate rounds, so that whatever else the machine does falls on
    // both alike; count the backends' requests during the hedged rounds.
    let (rounds, per_round, concurrency) = (8, 250, 8);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut backend_load = 0;
    let start = Instant::now();
    for _ in 0..rounds {
        without.extend(drive(&plain, per_round, concurrency, Method::GET).await);
        let before = backend_requests(&fleet);
        with.extend(drive(&hedged, per_round, concurrency, Method::GET).await);
        backend_load += backend_requests(&fleet) - before;
    }
    eprintln!("measured in {:?}", start.elapsed());
    let (_, p99_without) = report("unhedged", &mut without);
    let (_, p99_with) = report("hedged", &mut with);
    print_stats(&hedges);
    let requests = (rounds * per_round) as f64;
    let extra = backend_load as f64 / requests - 1.0;
    let ratio = p99_with.as_secs_f64() / p99_without.as_secs_f64();
    eprintln!("p99 ratio {ratio:.3}, extra load {:.2} %", extra * 100.0);

    assert!(
        p99_without >= Duration::from_millis(140),
        "the tail did not show without hedging: p99 {p99_without:?}"
    );
    assert!(
        ratio <= 0.5,
        "p99 {p99_with:?} hedged vs {p99_without:?} unhedged: ratio {ratio:.3}"
    );
    assert!(extra <= 0.06, "extra load {:.2} %", extra * 100.0);
    assert!(hedges.stats().won > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_idempotent_request_is_sent_once() {
    let fleet = fleet(3, heavy_tail()).await;
    let addrs: Vec<SocketAddr> = fleet.iter().map(Backend::addr).collect();
    let settings = HedgeSettings {
        delay: HedgeDelay::Fixed(Duration::from_millis(1)),
        ..HedgeSettings::default()
    };
    let budget = palisade::retry::RetryBudget::from_settings(&palisade::retry::BudgetSettings {
        ratio: 1.0,
        min_per_sec: 1000,
        ttl: Duration::from_secs(10),
    })
    .unwrap();
    let layer = HedgeLayer::with_budget("hedge-test", settings, budget).unwrap();
    let (hedged, hedges) = stack(&addrs, Some(layer)).await;
    let hedges = hedges.expect("the client hedges");
    drive(&hedged, 200, 4, Method::POST).await;
    assert_eq!(
        backend_requests(&fleet),
        200,
        "every POST arrived exactly once"
    );
    assert_eq!(hedges.stats().skipped(HedgeSkip::Method), 200);

    // The same layer hedges GETs after 1 ms: nearly every one of them, and
    // every answer is still a 200.
    drive(&hedged, 200, 4, Method::GET).await;
    let sent = hedges.stats().sent;
    assert!(sent >= 150, "only {sent} of 200 GETs hedged");
    // A backup cancelled at once (its first request answered first) may
    // never have reached a backend.
    let load = backend_requests(&fleet);
    assert!(load > 400 && load <= 400 + sent, "{load} backend requests");
}
