//! Cost of the telemetry layer (span + per-request metrics) per request,
//! against the same service without it, measured in the same run.
//! See `benches/README.md`.
//!
//! `cargo bench --bench metrics`

#[path = "common/mod.rs"]
mod common;

use common::median;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::{Duration, Instant};

use http::{Request, Response};
use palisade::classify::HttpClassify;
use palisade::metrics::{Metrics, TelemetryLayer};
use prometheus_client::registry::Registry;
use tower::{Layer, Service, ServiceExt, service_fn};

const REQUESTS: u32 = 200_000;
const REPS: usize = 15;

fn backend() -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = palisade::Error,
    Future = Ready<Result<Response<()>, palisade::Error>>,
> + Clone {
    service_fn(|_: Request<()>| ready(Ok(Response::new(()))))
}

/// ns per request of `svc`, sending `REQUESTS` back to back.
async fn measure<S>(mut svc: S) -> f64
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..REQUESTS {
        let rsp = svc
            .ready()
            .await
            .unwrap()
            .call(black_box(Request::new(())))
            .await
            .unwrap();
        black_box(rsp);
    }
    start.elapsed().as_nanos() as f64 / f64::from(REQUESTS)
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let reps = if quick { 1 } else { REPS };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let with_metrics = TelemetryLayer::new("bench", Some(&metrics), HttpClassify::default());
    let tracing_only = TelemetryLayer::new("bench", None, HttpClassify::default());

    let (mut bare, mut full, mut spans) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        // Interleaved repetitions: noise hits every variant alike.
        for _ in 0..reps {
            bare.push(measure(backend()).await);
            full.push(measure(with_metrics.layer(backend())).await);
            spans.push(measure(tracing_only.layer(backend())).await);
        }
    });
    let (bare, full, spans) = (median(bare), median(full), median(spans));
    println!(
        "telemetry layer cost, {REQUESTS} requests × {reps} interleaved reps, medians, 1 thread, no tracing subscriber"
    );
    println!("{:<44} {:>10} {:>12}", "variant", "ns/req", "added ns");
    println!(
        "{:<44} {:>10.1} {:>12}",
        "bare service (baseline)", bare, "-"
    );
    println!(
        "{:<44} {:>10.1} {:>12.1}",
        "telemetry layer, tracing only",
        spans,
        spans - bare
    );
    println!(
        "{:<44} {:>10.1} {:>12.1}",
        "telemetry layer, tracing + metrics",
        full,
        full - bare
    );
    let verdict = if quick {
        "(smoke run)"
    } else if full - bare <= 200.0 {
        "met"
    } else {
        "MISSED"
    };
    println!("target: metrics layer adds ≤ 200 ns per request: {verdict}");
    let _ = Duration::ZERO;
}
