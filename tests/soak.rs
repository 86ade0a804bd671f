//! Soak: `palisade proxy` under a steady load for minutes while its
//! backends' connections go through a cycle of faults. Ignored by default;
//! run it with
//!
//! ```sh
//! SOAK_SECS=600 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! (`SOAK_SECS` defaults to 600). It reports success, p50/p99 and the
//! proxy's resident memory (`VmRSS`) after warm-up and at the end, and
//! asserts the thresholds documented in `docs/reliability.md`.

#![cfg(all(feature = "cli", unix))]

mod support;

use std::time::Duration;

use palisade::demo::Behavior;
use support::proxy::{Proxy, metric, plain, ready, service, via_proxy};
use support::{Fault, Fleet, Load, Outcome, Plan, ms};
use tokio::time::Instant;

/// Overall success at least this (1 request in 10 is a POST, which the
/// proxy must not retry after a failure that may have reached the server).
const MIN_SUCCESS: f64 = 0.99;
/// GETs: everything the faults do to them is retryable.
const MIN_GET_SUCCESS: f64 = 0.999;

/// The faults the backends go through, one backend at a time.
const FAULTS: [Fault; 5] = [
    Fault::Refuse,
    Fault::Blackhole,
    Fault::ResetMidResponse { after_bytes: 10 },
    Fault::SlowDrip {
        bytes_per_tick: 16,
        tick: Duration::from_millis(5),
    },
    Fault::HalfClose { after_bytes: 0 },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: SOAK_SECS=600 cargo test --release --test soak -- --ignored --nocapture"]
async fn soak_through_the_proxy_with_faults() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let run_for = Duration::from_secs(secs);
    let behavior = Behavior::new()
        .latency(Duration::from_millis(10))
        .jitter(0.5);
    let fleet = Fleet::spawn(4, behavior).await;
    let body = service("app", &fleet.addrs())
        + "[services.retry]\nper_try_timeout = \"200ms\"\n\n\
           [services.deadline]\ntimeout = \"2s\"\n\n\
           [[routes]]\nservice = \"app\"\n";
    let proxy = Proxy::start(&body);
    let http = plain();
    ready(&http, &proxy).await;

    // 20 callers, each one request per 100 ms: 200 requests a second.
    let (concurrency, pace) = (20, Duration::from_millis(100));
    let rate = concurrency as f64 / pace.as_secs_f64();
    let total = (rate * run_for.as_secs_f64() * 2.0) as u64 + 1000;
    let plan = Plan::new("soak", total, concurrency).posts(10).paced(pace);
    let load = Load::start(via_proxy(&http, proxy.listen), plan);
    let started = Instant::now();
    eprintln!(
        "soak: {secs} s at {rate:.0} req/s through palisade proxy (pid {}), 4 backends, faults cycling: {FAULTS:?}",
        proxy.child.id()
    );

    // Faults: one backend at a time, 2 s on, 1 s off.
    let warm_up = (run_for / 10).clamp(Duration::from_secs(5), Duration::from_secs(30));
    let mut rss_start = None;
    let mut applied = [0u32; FAULTS.len()];
    let mut step = 0usize;
    let mut next_report = started + Duration::from_secs(30);
    while started.elapsed() < run_for {
        let (i, fault) = (step % fleet.faulties.len(), FAULTS[step % FAULTS.len()]);
        fleet.faulties[i].set(fault).await;
        applied[step % FAULTS.len()] += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
        fleet.faulties[i].set(Fault::Pass).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        step += 1;
        if rss_start.is_none() && started.elapsed() >= warm_up {
            rss_start = Some(proxy.rss_kib());
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            eprintln!(
                "  {:>4.0} s: {} requests, proxy RSS {} KiB",
                started.elapsed().as_secs_f64(),
                load.done(),
                proxy.rss_kib()
            );
        }
    }
    let rss_end = proxy.rss_kib();
    let rss_start = rss_start.unwrap_or(rss_end);
    load.stop();
    let run = load.finish().await;
    assert!(proxy_running(&proxy), "the proxy exited during the soak");
    let requests = metric(&http, &proxy, "palisade_requests_total{client=\"app\"}").await;
    let attempts = metric(
        &http,
        &proxy,
        "palisade_retry_attempts_total{client=\"app\"}",
    )
    .await;

    let (p50, p99) = run.p50_p99();
    let get_ok = run
        .records
        .iter()
        .filter(|r| r.method == http::Method::GET)
        .fold((0, 0), |(ok, n), r| {
            (ok + usize::from(r.outcome.is_ok()), n + 1)
        });
    let post_ok = run
        .records
        .iter()
        .filter(|r| r.method == http::Method::POST)
        .fold((0, 0), |(ok, n), r| {
            (ok + usize::from(r.outcome.is_ok()), n + 1)
        });
    let reached = fleet.reached();
    let duplicated_posts = run
        .records
        .iter()
        .filter(|r| r.method == http::Method::POST && reached.get(&r.id).copied().unwrap_or(0) > 1)
        .count();
    let mut kinds = std::collections::BTreeMap::new();
    for r in run.failures() {
        let kind = match &r.outcome {
            Outcome::Status(s) => format!("{} {s}", r.method),
            Outcome::Body(s, _) => format!("{} {s} then body error", r.method),
            Outcome::Transport { .. } => format!("{} transport error", r.method),
            Outcome::Hung => format!("{} hung", r.method),
            other => format!("{} {other:?}", r.method),
        };
        *kinds.entry(kind).or_insert(0u32) += 1;
    }
    eprintln!("soak: {}", run.summary());
    eprintln!(
        "  GET {}/{} ok ({:.3} %), POST {}/{} ok ({:.3} %); failures by kind: {kinds:?}",
        get_ok.0,
        get_ok.1,
        100.0 * get_ok.0 as f64 / get_ok.1.max(1) as f64,
        post_ok.0,
        post_ok.1,
        100.0 * post_ok.0 as f64 / post_ok.1.max(1) as f64,
    );
    eprintln!(
        "  p50 {:.1} ms, p99 {:.1} ms; proxy RSS {rss_start} KiB after {:.0} s warm-up, {rss_end} KiB at the end; \
         proxy counted {requests} requests, {attempts} attempts ({:.3} per request); faults applied {applied:?}",
        ms(p50),
        ms(p99),
        warm_up.as_secs_f64(),
        attempts as f64 / requests.max(1) as f64,
    );
    for (i, f) in fleet.faulties.iter().enumerate() {
        eprintln!("  backend {i}: {:?}", f.counts());
    }

    run.assert_each_answered_once(run.records.len() as u64);
    assert_eq!(duplicated_posts, 0, "POSTs that reached backends twice");
    assert!(
        run.success_rate() >= MIN_SUCCESS,
        "success {:.4} < {MIN_SUCCESS}",
        run.success_rate()
    );
    assert!(
        get_ok.0 as f64 >= MIN_GET_SUCCESS * get_ok.1 as f64,
        "GET success {get_ok:?} < {MIN_GET_SUCCESS}"
    );
    assert!(
        rss_end as f64 <= rss_start as f64 * 1.5 + 5.0 * 1024.0,
        "proxy RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}

fn proxy_running(proxy: &Proxy) -> bool {
    std::fs::metadata(format!("/proc/{}", proxy.child.id())).is_ok()
        && !std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id()))
            .unwrap_or_default()
            .contains("State:\tZ")
}
