//! What each limit adds per request on its admitting path, against a bare
//! service measured in the same run, on 1 and 2 threads sharing one limit.
//!
//! `cargo bench --bench limit` (`-- --quick` for a short run). Without
//! `--bench` (as under `cargo test --benches`) it runs a smoke test whose
//! numbers mean nothing.

#[path = "common/mod.rs"]
mod common;

use common::median;
use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use futures::FutureExt;
use http::{HeaderValue, Request, Response};
use palisade::limit::{
    ConcurrencyLimitLayer, ConcurrencySettings, RateLimitLayer, RateLimitSettings, ThrottleLayer,
    ThrottleSettings,
};
use tower::{Layer, Service, service_fn};

type Req = Request<()>;

fn bare()
-> impl Service<Req, Response = Response<()>, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    service_fn(|_: Req| std::future::ready(Ok::<_, Infallible>(Response::new(()))))
}

/// Nanoseconds per request over `n` requests on each of `threads` threads,
/// every thread on its own clone of `svc`; requests carry one of 1000
/// `x-tenant` values.
fn measure<S>(svc: &S, threads: usize, n: u64) -> f64
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
{
    let reqs: Vec<Req> = (0..1000)
        .map(|i| {
            let mut req = Request::new(());
            let value = HeaderValue::from_str(&format!("tenant-{i}")).expect("header");
            req.headers_mut().insert("x-tenant", value);
            req
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let mut svc = svc.clone();
            let reqs = reqs.clone();
            scope.spawn(move || {
                for i in 0..n {
                    let req = reqs[(i % 1000) as usize].clone();
                    let out = svc.call(req).now_or_never().expect("ready at once");
                    let _ = black_box(out.is_ok());
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let (n, reps) = match (bench, quick) {
        (false, _) => (2_000, 1),
        (true, true) => (200_000, 5),
        (true, false) => (1_000_000, 11),
    };
    let smoke = if bench { "" } else { " (smoke)" };

    // Limits that admit everything: the cost of the admitting path.
    let bulkhead = ConcurrencySettings {
        max: 1024,
        ..ConcurrencySettings::default()
    };
    let concurrency = ConcurrencyLimitLayer::new("bench", bulkhead)
        .unwrap()
        .layer(bare());
    let unlimited = RateLimitSettings {
        per_second: 1e9,
        burst: Some(u32::MAX),
        ..RateLimitSettings::default()
    };
    let rate = RateLimitLayer::new("bench", unlimited.clone())
        .unwrap()
        .layer(bare());
    let keyed = RateLimitSettings {
        key_header: Some("x-tenant".into()),
        ..unlimited
    };
    let keyed = RateLimitLayer::new("bench", keyed).unwrap().layer(bare());
    let throttle = ThrottleLayer::new("bench", ThrottleSettings::default())
        .unwrap()
        .layer(bare());

    for threads in [1, 2] {
        let mut rows: Vec<(&str, Vec<f64>)> = [
            "bare service_fn",
            "ConcurrencyLimit",
            "RateLimit",
            "RateLimit keyed (1000 keys)",
            "Throttle",
        ]
        .into_iter()
        .map(|name| (name, Vec::new()))
        .collect();
        // Interleaved repetitions, so drift hits every variant alike.
        for _ in 0..reps {
            rows[0].1.push(measure(&bare(), threads, n));
            rows[1].1.push(measure(&concurrency, threads, n));
            rows[2].1.push(measure(&rate, threads, n));
            rows[3].1.push(measure(&keyed, threads, n));
            rows[4].1.push(measure(&throttle, threads, n));
        }
        let base = median(rows[0].1.clone());
        println!(
            "{threads} thread(s), one shared limit, ns per request (median of {reps}){smoke}:"
        );
        for (name, xs) in rows {
            let m = median(xs);
            println!("  {name:<30} {m:>8.1} ns   +{:>6.1} ns over bare", m - base);
        }
    }
    let _ = Duration::ZERO;
}
