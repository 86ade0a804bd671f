//! Benchmarks for `palisade::balance::Balance`: a self-contained harness
//! (no criterion). See `benches/README.md` for what is measured and how.
//!
//! Part (a), overhead: ns per request of the balancer over 10 trivially cheap
//! in-memory endpoints, against the bare endpoint and against tower's
//! `Buffer<Balance<PeakEwmaDiscover<..>>>`, at 1 and 2 worker threads.
//!
//! Part (b), simulated fleet: 10 endpoints, one 100× slower, driven at a fixed
//! concurrency under paused Tokio time; P2C peak-EWMA against random choice.
//!
//! Usage: `cargo bench --bench balance [-- [--quick] [overhead] [fleet]]`, or
//! `PALISADE_BENCH_QUICK=1` for a shorter run. Other arguments are ignored.
//! Without the `--bench` argument that `cargo bench` passes (as under
//! `cargo test --benches` or `--all-targets`) it runs a seconds-long smoke
//! test whose numbers mean nothing.
//!
//! Part (a) must run before part (b): pausing Tokio's clock flips a
//! process-wide flag after which every `tokio::time::Instant::now()` (with
//! the `test-util` feature, which the dev-dependencies enable) takes the
//! runtime's clock mutex, which would distort the overhead figures.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade::balance::{Balance, BalanceSettings, Choice, Hints};
use palisade::classify::{Class, Classify, ResponseEos};
use palisade::discover::{Address, Endpoint, Static};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt, service_fn};

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

const ENDPOINTS: usize = 10;
/// Issue targets, printed next to the measured values.
const TARGET_ADDED_NS: f64 = 1_000.0;
const TARGET_THROUGHPUT_RATIO: f64 = 2.0;
const TARGET_P99_RATIO: f64 = 0.05;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Length {
    Full,
    Quick,
    /// Run by `cargo test`: check that everything works, measure nothing.
    Smoke,
}

struct Settings {
    length: Length,
    /// Also print every repetition's ns/req (`PALISADE_BENCH_VERBOSE=1`).
    verbose: bool,
    /// Run only the overhead variants whose name contains this
    /// (`PALISADE_BENCH_ONLY=...`, for profiling); skips the derived table.
    only: Option<String>,
    /// Run the overhead part at this thread count only
    /// (`PALISADE_BENCH_THREADS=1` or `2`).
    threads: Option<usize>,
    overhead: bool,
    fleet: bool,
    /// Interleaved repetitions of every overhead measurement (odd, so the
    /// median is one sample).
    reps: usize,
    /// Length of one overhead measurement window.
    window: Duration,
    fleet_requests: usize,
    fleet_concurrency: usize,
    /// Latency seeds for the fleet simulation (one repetition each).
    fleet_seeds: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("PALISADE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let length = if !args.iter().any(|a| a == "--bench") {
            Length::Smoke
        } else if quick {
            Length::Quick
        } else {
            Length::Full
        };
        let pick = |full, quick, smoke| match length {
            Length::Full => full,
            Length::Quick => quick,
            Length::Smoke => smoke,
        };
        // Positional filters; everything else (e.g. cargo's `--bench`) is ignored.
        let overhead = args.iter().any(|a| a == "overhead");
        let fleet = args.iter().any(|a| a == "fleet");
        let (overhead, fleet) = if overhead || fleet {
            (overhead, fleet)
        } else {
            (true, true)
        };
        Settings {
            length,
            verbose: std::env::var("PALISADE_BENCH_VERBOSE")
                .is_ok_and(|v| !v.is_empty() && v != "0"),
            only: std::env::var("PALISADE_BENCH_ONLY")
                .ok()
                .filter(|v| !v.is_empty()),
            threads: std::env::var("PALISADE_BENCH_THREADS")
                .ok()
                .and_then(|v| v.parse().ok()),
            overhead,
            fleet,
            reps: pick(21, 5, 1),
            window: Duration::from_millis(pick(200, 50, 5) as u64),
            fleet_requests: pick(20_000, 5_000, 500),
            fleet_concurrency: 32,
            fleet_seeds: pick(7, 3, 1) as u64,
        }
    }
}

fn main() {
    let settings = Settings::from_env();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "palisade balance bench: {} mode, {} CPUs available, loadavg {}",
        match settings.length {
            Length::Full => "full",
            Length::Quick => "quick",
            Length::Smoke => "smoke-test (no --bench argument; the numbers mean nothing)",
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    // Order matters: see the module docs.
    if settings.overhead {
        overhead(&settings);
    }
    if settings.fleet {
        fleet(&settings);
    }
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// Every response is a success: the classifier the balancer needs.
#[derive(Clone)]
struct AlwaysOk;

impl<T> Classify<T> for AlwaysOk {
    fn classify_response(&self, _: &T) -> Class {
        Class::SUCCESS
    }
    fn classify_error(&self, e: &(dyn std::error::Error + 'static)) -> Class {
        palisade::classify::classify_transport_error(e)
    }
}

fn addresses() -> Vec<String> {
    (1..=ENDPOINTS).map(|i| format!("10.0.0.{i}:80")).collect()
}

/// Waits (bounded) for the balancer's discovery task to publish all endpoints.
async fn wait_for_set<S, C>(balance: &Balance<S, C>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while balance.len() < ENDPOINTS {
        assert!(
            Instant::now() < deadline,
            "balancer has {} of {ENDPOINTS} endpoints after 5 s",
            balance.len()
        );
        tokio::task::yield_now().await;
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn verdict(settings: &Settings, met: bool) -> &'static str {
    match (settings.length, met) {
        (Length::Smoke, _) => "(smoke)",
        (_, true) => "met",
        (_, false) => "MISSED",
    }
}

// ---------------------------------------------------------------------------
// (a) Overhead
// ---------------------------------------------------------------------------

/// The overhead part's request: a number. `Balance` needs its requests to
/// implement `Hints` (retry and deadline hints); this one has none.
struct Req(u64);

impl Hints for Req {}

/// The overhead part's response: a number, judged by its head alone (it
/// has no stream whose end could be watched). Its number is computed per
/// request, as a real answer would be, though nothing reads it.
struct Rsp(#[allow(dead_code)] u64);

impl ResponseEos for Rsp {}

/// The fleet part's response: nothing but its arrival.
struct Done;

impl ResponseEos for Done {}

/// A trivially cheap endpoint: answers at once with a number derived from the
/// request. One opaque type for every `id`, so they fit in one `Vec`.
fn cheap_endpoint(
    id: u64,
) -> impl Service<Req, Response = Rsp, Error = Infallible, Future = Ready<Result<Rsp, Infallible>>>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |req: Req| ready(Ok::<_, Infallible>(Rsp(req.0.wrapping_add(id)))))
}

/// How a worker task issues each request.
#[derive(Clone, Copy)]
enum Mode {
    /// `svc.ready().await?.call(req).await` on the task's own clone.
    ReadyCall,
    /// `svc.clone().oneshot(req).await`: a fresh clone per request.
    Oneshot,
}

/// One timed window.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    /// On-CPU time of the whole process during the window, if known.
    cpu: Option<Duration>,
    requests: u64,
    /// Distinct OS threads the worker tasks started on.
    threads_seen: usize,
}

impl Sample {
    /// Wall time × worker threads / requests: the per-core cost, assuming
    /// every worker thread had a core for the whole window.
    fn ns_per_request(&self, threads: usize) -> f64 {
        self.wall.as_nanos() as f64 * threads as f64 / self.requests as f64
    }

    /// Process on-CPU time / requests: the same cost, but not inflated when
    /// another process takes a core away (NaN if unknown).
    fn cpu_ns_per_request(&self) -> f64 {
        self.cpu
            .map_or(f64::NAN, |c| c.as_nanos() as f64 / self.requests as f64)
    }

    /// Process on-CPU time / (wall × worker threads): how much of its N
    /// cores the run actually got (or used: a Buffer worker parks).
    fn cpu_use(&self, threads: usize) -> f64 {
        self.cpu.map_or(f64::NAN, |c| {
            c.as_secs_f64() / (self.wall.as_secs_f64() * threads as f64)
        })
    }

    /// Total requests / wall time.
    fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
    }
}

/// On-CPU time so far of every thread of this process, summed (Linux:
/// `/proc/self/task/*/schedstat`, nanosecond resolution); `None` elsewhere.
fn process_cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(entry) = entry else { continue };
        // A thread may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Round-trip time of one cache line between two threads spinning on it, in
/// ns: roughly what two contended atomics cost when the other core wrote the
/// line last. It depends on where the host placed the two vCPUs, and it is
/// wildly inflated when another process takes one of the cores (so the run
/// is capped at 20 000 round trips or 20 ms).
fn cache_line_round_trip() -> f64 {
    const ROUND_TRIPS: u64 = 20_000;
    const BUDGET: Duration = Duration::from_millis(20);
    const DONE: u64 = u64::MAX;
    let line = AtomicU64::new(0);
    let start = Instant::now();
    let mut completed = 0;
    std::thread::scope(|scope| {
        // Answers every odd value with the next even one.
        scope.spawn(|| {
            loop {
                match line.load(Ordering::Acquire) {
                    DONE => return,
                    v if v % 2 == 1 => line.store(v + 1, Ordering::Release),
                    _ => std::hint::spin_loop(),
                }
            }
        });
        while completed < ROUND_TRIPS && (!completed.is_multiple_of(16) || start.elapsed() < BUDGET)
        {
            line.store(2 * completed + 1, Ordering::Release);
            while line.load(Ordering::Acquire) != 2 * completed + 2 {
                std::hint::spin_loop();
            }
            completed += 1;
        }
        line.store(DONE, Ordering::Release);
    });
    start.elapsed().as_nanos() as f64 / completed.max(1) as f64
}

type Runner = Box<dyn Fn(&Runtime, usize, Duration) -> Sample>;

/// Wraps `svc` in a closure that runs one window: `tasks` tasks on the
/// runtime, each sending requests back to back on its own clone of `svc`
/// until the window closes.
fn runner<S>(svc: S, mode: Mode) -> Runner
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
{
    Box::new(move |rt: &Runtime, tasks: usize, window: Duration| {
        let stop = Arc::new(AtomicBool::new(false));
        let cpu_start = process_cpu_time();
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let mut svc = svc.clone();
                let stop = stop.clone();
                rt.spawn(async move {
                    let thread = std::thread::current().id();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let rsp = match mode {
                            Mode::ReadyCall => {
                                svc.ready()
                                    .await
                                    .expect("ready")
                                    .call(Req(black_box(n)))
                                    .await
                            }
                            Mode::Oneshot => svc.clone().oneshot(Req(black_box(n))).await,
                        };
                        black_box(rsp.expect("call"));
                        n += 1;
                    }
                    (n, thread)
                })
            })
            .collect();
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        let results = rt.block_on(async {
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.expect("worker task panicked"));
            }
            out
        });
        let wall = start.elapsed();
        let cpu = cpu_start
            .zip(process_cpu_time())
            .map(|(a, b)| b.saturating_sub(a));
        let mut threads: Vec<_> = results.iter().map(|r| r.1).collect();
        threads.sort_by_key(|t| format!("{t:?}"));
        threads.dedup();
        Sample {
            wall,
            cpu,
            requests: results.iter().map(|r| r.0).sum(),
            threads_seen: threads.len(),
        }
    })
}

/// The variants measured, in table order.
const VARIANTS: [&str; 4] = [
    "bare endpoint (ready+call)",
    "palisade Balance (ready+call)",
    "palisade Balance (oneshot on clone)",
    "tower Buffer<p2c PeakEwma> (ready+call)",
];
const BARE: usize = 0;
const PALISADE: usize = 1;
const TOWER: usize = 3;

/// One runtime with `threads` workers and the variants built inside it.
struct Setup {
    threads: usize,
    rt: Runtime,
    runners: Vec<Runner>,
}

fn setup(threads: usize) -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let runners = rt.block_on(async {
        let bare = cheap_endpoint(0);

        let mut next_id = 0u64;
        let new_endpoint = move |_: &Endpoint| {
            next_id += 1;
            Ok::<_, Infallible>(cheap_endpoint(next_id))
        };
        let balance = Balance::new(
            "bench",
            Static::parse(addresses()).expect("addresses"),
            new_endpoint,
            AlwaysOk,
            BalanceSettings::default(),
            palisade::balance::EjectionSettings::default(),
        )
        .expect("balance");
        wait_for_set(&balance).await;

        // tower's equivalent: p2c over peak-EWMA with the same decay and
        // default RTT, behind a Buffer so that it can be shared by tasks.
        let services: Vec<_> = (1..=ENDPOINTS as u64).map(cheap_endpoint).collect();
        let discover = tower::load::PeakEwmaDiscover::new(
            tower::discover::ServiceList::new(services),
            Duration::from_millis(30),
            Duration::from_secs(10),
            tower::load::CompleteOnResponse::default(),
        );
        let tower = tower::buffer::Buffer::new(tower::balance::p2c::Balance::new(discover), 1024);

        vec![
            runner(bare, Mode::ReadyCall),
            runner(balance.clone(), Mode::ReadyCall),
            runner(balance, Mode::Oneshot),
            runner(tower, Mode::ReadyCall),
        ]
    });
    Setup {
        threads,
        rt,
        runners,
    }
}

fn overhead(settings: &Settings) {
    let thread_counts: Vec<usize> = [1usize, 2]
        .into_iter()
        .filter(|n| settings.threads.is_none_or(|t| t == *n))
        .collect();
    let enabled: Vec<bool> = VARIANTS
        .iter()
        .map(|v| {
            settings
                .only
                .as_ref()
                .is_none_or(|o| v.contains(o.as_str()))
        })
        .collect();
    println!();
    println!(
        "(a) Overhead: {ENDPOINTS} in-memory endpoints answering with a ready future; \
         N worker threads (multi-thread runtime), N tasks each sending requests back to back."
    );
    println!(
        "    {} interleaved repetitions of a {} ms window per cell; medians shown.",
        settings.reps,
        settings.window.as_millis()
    );
    println!(
        "    ns/req = wall × N / requests (per-core cost); req/s = requests / wall (throughput)."
    );

    let setups: Vec<Setup> = thread_counts.iter().map(|&n| setup(n)).collect();
    // Warm-up: one short window per cell, discarded.
    for s in &setups {
        for (vi, r) in s.runners.iter().enumerate() {
            if enabled[vi] {
                r(&s.rt, s.threads, settings.window / 4);
            }
        }
    }
    // samples[setup][variant][rep]
    let mut samples: Vec<Vec<Vec<Sample>>> = setups
        .iter()
        .map(|s| vec![Vec::new(); s.runners.len()])
        .collect();
    let mut round_trips = Vec::new();
    for rep in 0..settings.reps {
        if thread_counts.contains(&2) {
            round_trips.push(cache_line_round_trip());
        }
        // Interleave thread counts and variants, rotating the start so that no
        // variant always runs first (or right after another).
        for (si, s) in setups.iter().enumerate() {
            let n = s.runners.len();
            for k in 0..n {
                let vi = (k + rep) % n;
                if enabled[vi] {
                    let sample = s.runners[vi](&s.rt, s.threads, settings.window);
                    samples[si][vi].push(sample);
                }
            }
        }
    }

    println!();
    println!(
        "{:>7}  {:<40} {:>8} {:>15} {:>10} {:>7} {:>8} {:>7}",
        "threads", "variant", "ns/req", "(min–max)", "CPU ns/req", "CPU use", "Mreq/s", "tasks on"
    );
    for (si, s) in setups.iter().enumerate() {
        for (vi, name) in VARIANTS.iter().enumerate() {
            let xs = &samples[si][vi];
            if xs.is_empty() {
                continue;
            }
            let ns: Vec<f64> = xs.iter().map(|x| x.ns_per_request(s.threads)).collect();
            let cpu: Vec<f64> = xs.iter().map(Sample::cpu_ns_per_request).collect();
            let used: Vec<f64> = xs.iter().map(|x| x.cpu_use(s.threads)).collect();
            let rps: Vec<f64> = xs.iter().map(Sample::requests_per_sec).collect();
            let (lo, hi) = min_max(&ns);
            let min_seen = xs.iter().map(|x| x.threads_seen).min().unwrap_or(0);
            println!(
                "{:>7}  {:<40} {:>8.1} {:>15} {:>10.1} {:>6.0}% {:>8.2} {:>8}",
                s.threads,
                name,
                median(&ns),
                format!("({lo:.0}–{hi:.0})"),
                median(&cpu),
                median(&used) * 100.0,
                median(&rps) / 1e6,
                format!("{min_seen}/{} thr", s.threads),
            );
            if settings.verbose {
                let all: Vec<String> = ns
                    .iter()
                    .zip(&cpu)
                    .map(|(w, c)| format!("{w:.0}/{c:.0}"))
                    .collect();
                println!("{:>9}every rep (wall/CPU ns): {}", "", all.join(" "));
            }
        }
    }
    println!(
        "    ns/req: wall × N / requests. CPU ns/req: process on-CPU time / requests. \
         CPU use: on-CPU time / (wall × N)."
    );
    println!("    tasks on: fewest distinct OS threads the N tasks started on, over all windows.");
    if !round_trips.is_empty() {
        let (lo, hi) = min_max(&round_trips);
        println!(
            "    Cache-line round trip between two spinning threads (once per repetition): \
         median {:.0} ns ({lo:.0}–{hi:.0}).",
            median(&round_trips)
        );
        if settings.verbose {
            let all: Vec<String> = round_trips.iter().map(|x| format!("{x:.0}")).collect();
            println!("{:>9}every rep: {}", "", all.join(" "));
        }
    }

    if !(enabled[BARE] && enabled[PALISADE] && enabled[TOWER]) {
        return;
    }
    println!();
    println!(
        "    Palisade vs the baselines, each the median over repetitions of the per-repetition value:"
    );
    println!(
        "{:>7}  {:>14} {:>14} {:>14}  {:>19} {:>17} {:>12}",
        "threads",
        "added ns/req",
        "added CPU ns",
        "target ≤ 1000",
        "throughput vs tower",
        "CPU cost vs tower",
        "target ≥ 2×"
    );
    for (si, s) in setups.iter().enumerate() {
        let at = |vi: usize, r: usize| &samples[si][vi][r];
        let per_rep =
            |f: &dyn Fn(usize) -> f64| median(&(0..settings.reps).map(f).collect::<Vec<_>>());
        let added = per_rep(&|r| {
            at(PALISADE, r).ns_per_request(s.threads) - at(BARE, r).ns_per_request(s.threads)
        });
        let added_cpu =
            per_rep(&|r| at(PALISADE, r).cpu_ns_per_request() - at(BARE, r).cpu_ns_per_request());
        let ratio =
            per_rep(&|r| at(PALISADE, r).requests_per_sec() / at(TOWER, r).requests_per_sec());
        let cpu_ratio =
            per_rep(&|r| at(TOWER, r).cpu_ns_per_request() / at(PALISADE, r).cpu_ns_per_request());
        let ratio_target = if s.threads == 2 {
            verdict(settings, ratio >= TARGET_THROUGHPUT_RATIO)
        } else {
            "(at 2 thr)"
        };
        println!(
            "{:>7}  {:>14.1} {:>14.1} {:>14}  {:>18.2}× {:>16.2}× {:>12}",
            s.threads,
            added,
            added_cpu,
            verdict(settings, added.max(added_cpu) <= TARGET_ADDED_NS),
            ratio,
            cpu_ratio,
            ratio_target
        );
    }
    println!(
        "    CPU cost vs tower: tower's CPU ns/req ÷ palisade's (higher is better for palisade)."
    );
}

// ---------------------------------------------------------------------------
// (b) Simulated fleet
// ---------------------------------------------------------------------------

struct FleetResult {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    /// Share of all requests the slow endpoint got.
    slow_share: f64,
    /// Simulated (paused-clock) time the run took.
    simulated: Duration,
}

/// The fleet part's request: carries nothing.
struct Visit;

impl Hints for Visit {}

/// Nearest-rank percentile of sorted `xs`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One simulated run: `requests` requests at `concurrency`, under paused time.
fn fleet_run(choice: Choice, seed: u64, requests: usize, concurrency: usize) -> FleetResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let addrs = addresses();
        let slow: Address = addrs[ENDPOINTS - 1].parse().expect("address");
        let parsed: Vec<Address> = addrs.iter().map(|a| a.parse().expect("address")).collect();
        // Each endpoint sleeps a uniformly drawn latency: 5–15 ms, or 100×
        // that (0.5–1.5 s) for the slow one, from its own seeded generator.
        let new_endpoint = move |ep: &Endpoint| {
            let index = parsed
                .iter()
                .position(|a| a == ep.address())
                .expect("known address") as u64;
            let (lo_us, hi_us) = if *ep.address() == slow {
                (500_000u64, 1_500_000u64)
            } else {
                (5_000, 15_000)
            };
            let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(
                seed.wrapping_mul(1_000).wrapping_add(index),
            )));
            Ok::<_, Infallible>(service_fn(move |_: Visit| {
                let us = rng.lock().expect("rng").random_range(lo_us..hi_us);
                async move {
                    tokio::time::sleep(Duration::from_micros(us)).await;
                    Ok::<_, Infallible>(Done)
                }
            }))
        };
        let config = BalanceSettings {
            choice,
            ..BalanceSettings::default()
        };
        let balance = Balance::new(
            "fleet",
            Static::parse(&addrs).expect("addresses"),
            new_endpoint,
            AlwaysOk,
            config,
            palisade::balance::EjectionSettings::default(),
        )
        .expect("balance");
        wait_for_set(&balance).await;

        let started = tokio::time::Instant::now();
        let issued = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let mut balance = balance.clone();
                let issued = issued.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while issued.fetch_add(1, Ordering::Relaxed) < requests {
                        let t0 = tokio::time::Instant::now();
                        balance
                            .ready()
                            .await
                            .expect("ready")
                            .call(Visit)
                            .await
                            .expect("call");
                        latencies.push(t0.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::with_capacity(requests);
        for w in workers {
            all.extend(w.await.expect("worker task panicked"));
        }
        let simulated = started.elapsed();
        all.sort();

        let stats = balance.endpoint_stats();
        let total: u64 = stats.iter().map(|s| s.requests).sum();
        let slow_requests: u64 = stats
            .iter()
            .filter(|s| s.address == addrs[ENDPOINTS - 1].parse().expect("address"))
            .map(|s| s.requests)
            .sum();
        FleetResult {
            p50: percentile(&all, 0.50),
            p99: percentile(&all, 0.99),
            p999: percentile(&all, 0.999),
            slow_share: slow_requests as f64 / total as f64,
            simulated,
        }
    })
}

fn fleet(settings: &Settings) {
    let choices = [
        ("P2C peak-EWMA", Choice::PeakEwmaP2c),
        ("random", Choice::Random),
    ];
    println!();
    println!(
        "(b) Simulated fleet (paused Tokio time): {ENDPOINTS} endpoints, 9 at uniform 5–15 ms, \
         1 at uniform 0.5–1.5 s (100×);"
    );
    println!(
        "    {} requests per run at concurrency {}; {} latency seeds, choices interleaved; medians shown.",
        settings.fleet_requests, settings.fleet_concurrency, settings.fleet_seeds
    );
    let real = Instant::now();
    // results[choice][seed]
    let mut results: Vec<Vec<FleetResult>> = vec![Vec::new(), Vec::new()];
    for seed in 0..settings.fleet_seeds {
        for k in 0..choices.len() {
            let ci = (k + seed as usize) % choices.len();
            results[ci].push(fleet_run(
                choices[ci].1,
                seed,
                settings.fleet_requests,
                settings.fleet_concurrency,
            ));
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let col = |rs: &[FleetResult], f: &dyn Fn(&FleetResult) -> f64| {
        median(&rs.iter().map(f).collect::<Vec<_>>())
    };

    println!();
    println!(
        "{:<15} {:>10} {:>10} {:>10} {:>12} {:>17} {:>14}",
        "choice", "p50 ms", "p99 ms", "p99.9 ms", "slow share", "(min–max p99 ms)", "simulated s"
    );
    for (ci, (name, _)) in choices.iter().enumerate() {
        let rs = &results[ci];
        let p99s: Vec<f64> = rs.iter().map(|r| ms(r.p99)).collect();
        let (lo, hi) = min_max(&p99s);
        println!(
            "{:<15} {:>10.2} {:>10.2} {:>10.2} {:>11.3}% {:>17} {:>14.1}",
            name,
            col(rs, &|r| ms(r.p50)),
            col(rs, &|r| ms(r.p99)),
            col(rs, &|r| ms(r.p999)),
            col(rs, &|r| r.slow_share * 100.0),
            format!("({lo:.1}–{hi:.1})"),
            col(rs, &|r| r.simulated.as_secs_f64()),
        );
    }
    // Ratios: median over seeds of P2C / random for the same seed.
    let ratio = |f: &dyn Fn(&FleetResult) -> Duration| {
        median(
            &(0..results[0].len())
                .map(|i| ms(f(&results[0][i])) / ms(f(&results[1][i])))
                .collect::<Vec<_>>(),
        )
    };
    let (r50, r99, r999) = (ratio(&|r| r.p50), ratio(&|r| r.p99), ratio(&|r| r.p999));
    println!(
        "{:<15} {:>10.3} {:>10.3} {:>10.3}   (median over seeds of per-seed ratios)",
        "P2C / random", r50, r99, r999
    );
    println!(
        "    target: p99 ratio ≤ {TARGET_P99_RATIO}: {} ({r99:.3})",
        verdict(settings, r99 <= TARGET_P99_RATIO)
    );
    println!(
        "    (fleet part took {} ms of real time)",
        real.elapsed().as_millis()
    );
}
