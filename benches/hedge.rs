//! Hedging against a heavy tail: p50 and p99 with and without the hedge
//! layer, and the extra load it costs, measured in the same run; then what
//! the layer costs a request that it does not hedge.
//!
//! (a) **Tail**: five real hyper backends on 127.0.0.1 answer in 5–10 ms,
//! but 3 % of requests take 150 ms (20× the typical 7.5 ms). The same
//! workload (GETs from 8 workers) goes through deadline → retry →
//! balancer, with and without the hedge layer (all defaults: p95 delay,
//! 5 % budget) between retry and balancer, in alternating rounds so that
//! machine noise falls on both alike. Each repetition builds fresh stacks
//! and warms them up (connections, load estimates, the p95's first 200
//! samples); figures are medians over repetitions. Extra load is backend
//! requests per client request, minus one, during the hedged rounds.
//!
//! (b) **Overhead**: ns per request of an always-ready in-memory service
//! alone, behind a hedge layer that never fires (fixed 1 s delay), and
//! behind one with the default p95 delay (a latency sample per request),
//! current-thread runtime, interleaved repetitions, medians. The requests
//! are GETs with a replayable body and a `Tried`, as under the retry layer:
//! the layer's most expensive path short of sending a backup.
//!
//! ```text
//! cargo bench --bench hedge                          # full: 5 × 2 000 requests per variant (~1 min)
//! PALISADE_BENCH_QUICK=1 cargo bench --bench hedge   # or `-- --quick`: 3 × 1 000
//! cargo bench --bench hedge -- overhead              # part (b) only; `tail` for part (a) only
//! ```
//!
//! Without `--bench` (as under `cargo test --all-targets`) it runs a smoke
//! test of a second or two whose numbers mean nothing.

#[path = "common/mod.rs"]
mod common;

use common::{Mode, median};
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use palisade::Error;
use palisade::balance::{Balance, BalanceSettings, Tried};
use palisade::classify::HttpClassify;
use palisade::deadline::{DeadlineLayer, DeadlineSettings};
use palisade::demo::{Backend, Behavior};
use palisade::discover::{Endpoint, Static};
use palisade::hedge::{HedgeDelay, HedgeLayer, HedgeSettings};
use palisade::http::{HttpEndpoints, hyper_client};
use palisade::retry::{ReplayBody, RetryLayer};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt, service_fn};

type Req = Request<Full<Bytes>>;
type Stack = BoxCloneService<Req, Response<Incoming>, Error>;

const BACKENDS: usize = 5;
const CONCURRENCY: usize = 8;
const ROUNDS: usize = 4;
const WARM_UP: usize = 200;

impl Mode {
    /// Repetitions, and requests per variant per repetition.
    fn tail_size(self) -> (usize, usize) {
        match self {
            Mode::Smoke => (1, 200),
            Mode::Quick => (3, 1000),
            Mode::Full => (5, 2000),
        }
    }
}

fn heavy_tail() -> Behavior {
    Behavior::new()
        .latency(Duration::from_micros(7500))
        .jitter(1.0 / 3.0)
        .tail(0.03, Duration::from_millis(150))
}

/// deadline → retry → [hedge] → balancer over `addrs`, all defaults.
async fn stack(addrs: &[SocketAddr], hedge: Option<HedgeLayer>) -> Stack {
    let balance = Balance::new(
        "bench",
        Static::new(addrs.iter().copied().map(Endpoint::from)),
        HttpEndpoints::new(hyper_client()),
        HttpClassify::default(),
        BalanceSettings::default(),
        palisade::balance::EjectionSettings::default(),
    )
    .expect("balance");
    tokio::time::timeout(
        Duration::from_secs(10),
        balance.wait_until(|b| b.len() == addrs.len()),
    )
    .await
    .expect("endpoints discovered");
    let deadline = DeadlineLayer::new("bench", DeadlineSettings::default()).expect("settings");
    let retry = RetryLayer::new("bench", palisade::retry::RetrySettings::default()).unwrap();
    match hedge {
        Some(hedge) => BoxCloneService::new(deadline.layer(retry.layer(hedge.layer(balance)))),
        None => BoxCloneService::new(deadline.layer(retry.layer(balance))),
    }
}

/// Sends `n` GETs from [`CONCURRENCY`] workers; each one's latency.
async fn drive(svc: &Stack, n: usize) -> Vec<Duration> {
    let left = Arc::new(AtomicUsize::new(n));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (svc, left) = (svc.clone(), left.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                    .is_ok()
                {
                    let req = Request::get("http://bench/")
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let start = Instant::now();
                    let rsp = svc.clone().oneshot(req).await.expect("response");
                    rsp.into_body().collect().await.expect("body");
                    latencies.push(start.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all
}

fn quantile(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort_unstable();
    let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
    latencies[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One repetition of part (a).
struct Rep {
    p50: [f64; 2],
    p99: [f64; 2],
    extra_load: f64,
    sent: f64,
    won: f64,
    delay: f64,
}

async fn tail_rep(fleet: &[Backend], n: usize) -> Rep {
    let addrs: Vec<SocketAddr> = fleet.iter().map(Backend::addr).collect();
    let layer = HedgeLayer::new("bench", HedgeSettings::default()).expect("settings");
    let hedges = layer.handle();
    let hedged = stack(&addrs, Some(layer)).await;
    let plain = stack(&addrs, None).await;
    drive(&plain, WARM_UP).await;
    drive(&hedged, WARM_UP).await;
    let backend_requests = || fleet.iter().map(Backend::requests).sum::<u64>();
    let sent_before = hedges.stats().sent;
    let won_before = hedges.stats().won;
    let (mut with, mut without, mut load) = (Vec::new(), Vec::new(), 0);
    for _ in 0..ROUNDS {
        without.extend(drive(&plain, n / ROUNDS).await);
        let before = backend_requests();
        with.extend(drive(&hedged, n / ROUNDS).await);
        load += backend_requests() - before;
    }
    let requests = with.len() as f64;
    let stats = hedges.stats();
    Rep {
        p50: [
            ms(quantile(&mut without, 0.5)),
            ms(quantile(&mut with, 0.5)),
        ],
        p99: [
            ms(quantile(&mut without, 0.99)),
            ms(quantile(&mut with, 0.99)),
        ],
        extra_load: load as f64 / requests - 1.0,
        sent: (stats.sent - sent_before) as f64 / requests,
        won: (stats.won - won_before) as f64 / requests,
        delay: ms(stats.delay),
    }
}

fn tail(mode: Mode) {
    let (reps, n) = mode.tail_size();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let results: Vec<Rep> = rt.block_on(async {
        let mut fleet = Vec::new();
        for _ in 0..BACKENDS {
            fleet.push(Backend::spawn(heavy_tail()).await.expect("backend"));
        }
        let mut results = Vec::new();
        for rep in 0..reps {
            let r = tail_rep(&fleet, n).await;
            if std::env::var_os("PALISADE_BENCH_VERBOSE").is_some() {
                println!(
                    "  rep {rep}: p99 {:.1} → {:.1} ms, extra load {:.2} %",
                    r.p99[0],
                    r.p99[1],
                    r.extra_load * 100.0
                );
            }
            results.push(r);
        }
        results
    });
    let smoke = if mode == Mode::Smoke { " (smoke)" } else { "" };
    println!(
        "(a) heavy tail{smoke}: {BACKENDS} hyper backends on 127.0.0.1, 5–10 ms with 3 % at 150 ms; \
         {n} GETs per variant × {reps} reps, {CONCURRENCY} workers, 2 runtime threads; medians"
    );
    println!(
        "    stack: deadline → retry → [hedge: defaults, p95 delay, 5 % budget] → balancer (P2C peak-EWMA)"
    );
    let med = |f: &dyn Fn(&Rep) -> f64| median(results.iter().map(f).collect());
    let (p50_without, p50_with) = (med(&|r| r.p50[0]), med(&|r| r.p50[1]));
    let (p99_without, p99_with) = (med(&|r| r.p99[0]), med(&|r| r.p99[1]));
    println!("{:<12} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!(
        "{:<12} {:>10.2} {:>10.2}",
        "unhedged", p50_without, p99_without
    );
    println!("{:<12} {:>10.2} {:>10.2}", "hedged", p50_with, p99_with);
    println!(
        "p99 hedged / unhedged: {:.3} (median of per-rep ratios {:.3}; target ≤ 0.5)",
        p99_with / p99_without,
        med(&|r| r.p99[1] / r.p99[0]),
    );
    println!(
        "extra load: {:.2} % (target ≤ 6 %); backups sent {:.2} %, won {:.2} % of requests; delay at the end {:.2} ms",
        med(&|r| r.extra_load) * 100.0,
        med(&|r| r.sent) * 100.0,
        med(&|r| r.won) * 100.0,
        med(&|r| r.delay),
    );
}

type Body = ReplayBody<Full<Bytes>>;

fn ready_backend() -> impl Service<
    Request<Body>,
    Response = Response<()>,
    Error = Error,
    Future = Ready<Result<Response<()>, Error>>,
> + Clone {
    service_fn(|_: Request<Body>| ready(Ok(Response::new(()))))
}

/// ns per request of `svc`, `n` GETs back to back.
async fn per_request<S>(mut svc: S, n: u32) -> f64
where
    S: Service<Request<Body>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let start = std::time::Instant::now();
    for _ in 0..n {
        let mut req = Request::get("http://bench/")
            .body(ReplayBody::new(Full::new(Bytes::new()), 1024))
            .expect("request");
        // As under the retry layer, which gives every attempt one.
        req.extensions_mut().insert(Tried::default());
        let rsp = svc
            .ready()
            .await
            .expect("ready")
            .call(black_box(req))
            .await
            .expect("response");
        black_box(rsp);
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn overhead(mode: Mode) {
    let (reps, n) = match mode {
        Mode::Smoke => (1, 10_000),
        Mode::Quick => (5, 100_000),
        Mode::Full => (15, 200_000),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut bare, mut fixed, mut p95) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        let never = HedgeSettings {
            delay: HedgeDelay::Fixed(Duration::from_secs(1)),
            ..HedgeSettings::default()
        };
        let never = HedgeLayer::new("bench", never).expect("settings");
        let default = HedgeLayer::new("bench", HedgeSettings::default()).expect("settings");
        for _ in 0..reps {
            bare.push(per_request(ready_backend(), n).await);
            fixed.push(per_request(never.layer(ready_backend()), n).await);
            p95.push(per_request(default.layer(ready_backend()), n).await);
        }
    });
    let (bare, fixed, p95) = (median(bare), median(fixed), median(p95));
    let smoke = if mode == Mode::Smoke { " (smoke)" } else { "" };
    println!(
        "\n(b) overhead{smoke}: an always-ready service, {n} GETs × {reps} interleaved reps, 1 thread; medians"
    );
    println!("{:<44} {:>10} {:>10}", "variant", "ns/req", "added ns");
    println!(
        "{:<44} {:>10.1} {:>10}",
        "bare service (baseline)", bare, "-"
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "hedge, fixed delay (never fires)",
        fixed,
        fixed - bare
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "hedge, p95 delay (one sample per request)",
        p95,
        p95 - bare
    );
}

fn main() {
    let mode = Mode::from_env();
    let args: Vec<String> = std::env::args().collect();
    let only = |part: &str| args.iter().any(|a| a == part);
    let all = !only("tail") && !only("overhead");
    if all || only("tail") {
        tail(mode);
    }
    if all || only("overhead") {
        overhead(mode);
    }
}
