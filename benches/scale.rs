//! Large and churning endpoint sets (issue 22): what applying discovery
//! changes costs as the set grows, and what it costs the requests that
//! share the worker with it.
//!
//! Part (a), changes: on one worker thread (a current-thread runtime),
//! the balancer is fed from a channel and timed until it publishes the
//! change: inserting every endpoint of an empty balancer, replacing 10 %
//! of them (a remove and an insert each, ready together), and changes
//! that trickle in one at a time (each published before the next is
//! sent). At 1,000, 10,000 and 50,000 endpoints; the 1,000 row is the
//! baseline of the per-change ratio.
//!
//! Part (b), churn: 10,000 endpoints, one worker thread. Requests run back
//! to back, each after a yield (so the discovery task can run between
//! them, as it would between a real worker's requests), first with no
//! churn (the baseline), then while 10 % of the endpoints are replaced
//! every 100 ms. Reports the mean request cost of each and the longest
//! any single request took from its yield to its answer: in wall time
//! (which includes the OS running other processes) and in the worker
//! thread's CPU time (what the worker spent on its other tasks while the
//! request waited: the wait on discovery), each from runs of its own.
//!
//! `cargo bench --bench scale [-- [--quick] [changes] [churn]]`. Without
//! `--bench` (as under `cargo test --benches`) it runs a smoke test whose
//! numbers mean nothing.

#[path = "common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::future::ready;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Mode, median};
use futures::channel::mpsc;
use http::{Request, Response};
use palisade::balance::{Balance, BalanceSettings, EjectionSettings};
use palisade::classify::HttpClassify;
use palisade::discover::Endpoint;
use tower::discover::Change;
use tower::{ServiceExt, service_fn};

/// Issue targets, printed next to the measured values.
const TARGET_INSERT_50K: Duration = Duration::from_secs(1);
const TARGET_REPLACE_10K: Duration = Duration::from_millis(20);
const TARGET_FLAT: f64 = 2.0;
const TARGET_CHURN_RATIO: f64 = 1.5;
const TARGET_STALL: Duration = Duration::from_millis(5);

type Key = u32;
type Source = mpsc::UnboundedReceiver<Result<Change<Key, Endpoint>, Infallible>>;
type Sender = mpsc::UnboundedSender<Result<Change<Key, Endpoint>, Infallible>>;

fn main() {
    let mode = Mode::from_env();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "palisade scale bench: {mode:?} mode, loadavg {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Positional filters; everything else (e.g. cargo's `--bench`) is ignored.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = |part: &str| {
        let named = args.iter().any(|a| a == "changes" || a == "churn");
        !named || args.iter().any(|a| a == part)
    };
    if only("changes") {
        changes(mode);
    }
    if only("churn") {
        churn(mode);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Endpoint `i`: a distinct address for every `i`.
fn endpoint(i: u32) -> Endpoint {
    let ip = Ipv4Addr::from(0x0a00_0000_u32.wrapping_add(i));
    Endpoint::from(SocketAddr::from((ip, 80)))
}

/// A balancer over endpoints that answer at once, fed by a channel.
fn balance(
    source: Source,
) -> Balance<
    impl tower::Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static,
    HttpClassify,
> {
    let new_endpoint = |_: &Endpoint| {
        Ok::<_, Infallible>(service_fn(|_: Request<()>| ready(Ok(Response::new(())))))
    };
    Balance::new(
        "scale",
        source,
        new_endpoint,
        HttpClassify::default(),
        BalanceSettings::default(),
        EjectionSettings::default(),
    )
    .expect("balancer")
}

fn send(tx: &Sender, change: Change<Key, Endpoint>) {
    tx.unbounded_send(Ok(change))
        .expect("the balancer is alive");
}

fn insert(tx: &Sender, i: u32) {
    send(tx, Change::Insert(i, endpoint(i)));
}

/// Waits until the balancer shows `n` endpoints.
async fn until_len<S, C>(b: &Balance<S, C>, n: usize) {
    tokio::time::timeout(Duration::from_secs(600), b.wait_until(|b| b.len() == n))
        .await
        .expect("the balancer applied the changes");
}

/// One size's figures.
struct Changes {
    n: usize,
    insert_all: Duration,
    replace: Duration,
    /// Per change, changes sent one at a time.
    trickle: Duration,
}

impl Changes {
    fn per_insert_ns(&self) -> f64 {
        self.insert_all.as_nanos() as f64 / self.n as f64
    }
    fn per_replace_change_ns(&self) -> f64 {
        // A remove and an insert for each replaced endpoint.
        self.replace.as_nanos() as f64 / (2 * (self.n / 10)) as f64
    }
}

/// Inserts `n` endpoints, replaces 10 % of them, then trickles changes
/// in; `reps` times, medians.
fn measure_changes(n: usize, reps: usize, trickle: usize) -> Changes {
    let mut insert_all = Vec::new();
    let mut replace = Vec::new();
    let mut trickled = Vec::new();
    for _ in 0..reps {
        runtime().block_on(async {
            let (tx, rx) = mpsc::unbounded();
            let b = balance(rx);
            let n32 = n as u32;

            // The changes are all ready before the clock starts (the
            // discovery task runs only when this task waits): what is
            // timed is the balancer's work, not the source's.
            for i in 0..n32 {
                insert(&tx, i);
            }
            let start = Instant::now();
            until_len(&b, n).await;
            insert_all.push(start.elapsed().as_secs_f64());

            // Replace the first tenth by new endpoints, and end with a
            // sentinel: all of them are applied when it shows.
            let tenth = n32 / 10;
            let sentinel = u32::MAX - 1;
            for i in 0..tenth {
                send(&tx, Change::Remove(i));
                insert(&tx, n32 + i);
            }
            insert(&tx, sentinel);
            let start = Instant::now();
            until_len(&b, n + 1).await;
            replace.push(start.elapsed().as_secs_f64());
            send(&tx, Change::Remove(sentinel));
            until_len(&b, n).await;

            let start = Instant::now();
            for i in 0..trickle as u32 {
                insert(&tx, sentinel - 1 - i);
                until_len(&b, n + 1).await;
                send(&tx, Change::Remove(sentinel - 1 - i));
                until_len(&b, n).await;
            }
            trickled.push(start.elapsed().as_secs_f64() / (2 * trickle) as f64);
        });
    }
    let secs = |xs: Vec<f64>| Duration::from_secs_f64(median(xs));
    Changes {
        n,
        insert_all: secs(insert_all),
        replace: secs(replace),
        trickle: secs(trickled),
    }
}

fn verdict(mode: Mode, met: bool) -> &'static str {
    match (mode, met) {
        (Mode::Smoke, _) => "(smoke)",
        (_, true) => "met",
        (_, false) => "MISSED",
    }
}

fn changes(mode: Mode) {
    let (sizes, reps, trickle): (&[usize], usize, usize) = match mode {
        Mode::Smoke => (&[1_000, 5_000], 1, 5),
        Mode::Quick => (&[1_000, 10_000, 50_000], 1, 50),
        Mode::Full => (&[1_000, 10_000, 50_000], 5, 200),
    };
    println!();
    println!("(a) applying changes, one worker thread, median of {reps}");
    println!(
        "| endpoints | insert all | per insert | replace 10 % | per change | one at a time, per change |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let rows: Vec<Changes> = sizes
        .iter()
        .map(|&n| measure_changes(n, reps, trickle))
        .collect();
    for r in &rows {
        println!(
            "| {} | {:.1} ms | {:.0} ns | {:.2} ms | {:.0} ns | {:.1} µs |",
            r.n,
            r.insert_all.as_secs_f64() * 1e3,
            r.per_insert_ns(),
            r.replace.as_secs_f64() * 1e3,
            r.per_replace_change_ns(),
            r.trickle.as_secs_f64() * 1e6,
        );
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    if let Some(r) = rows.iter().find(|r| r.n == 50_000) {
        println!(
            "insert 50,000: {:.0} ms (target ≤ {} ms): {}",
            r.insert_all.as_secs_f64() * 1e3,
            TARGET_INSERT_50K.as_millis(),
            verdict(mode, r.insert_all <= TARGET_INSERT_50K),
        );
    }
    if let Some(r) = rows.iter().find(|r| r.n == 10_000) {
        println!(
            "replace 10 % of 10,000: {:.2} ms (target ≤ {} ms): {}",
            r.replace.as_secs_f64() * 1e3,
            TARGET_REPLACE_10K.as_millis(),
            verdict(mode, r.replace <= TARGET_REPLACE_10K),
        );
    }
    let insert_ratio = last.per_insert_ns() / first.per_insert_ns();
    let replace_ratio = last.per_replace_change_ns() / first.per_replace_change_ns();
    println!(
        "per-change cost {} → {}: inserts ×{insert_ratio:.2}, replaces ×{replace_ratio:.2} (target ≤ {TARGET_FLAT}×): {}",
        first.n,
        last.n,
        verdict(
            mode,
            insert_ratio <= TARGET_FLAT && replace_ratio <= TARGET_FLAT
        ),
    );
}

/// Request figures over one window.
struct Requests {
    count: u64,
    mean_ns: f64,
    p99: Duration,
    max: Duration,
    churns: u64,
}

/// CPU time this thread has used: what it spent while a request waited
/// is the time the request waited on the worker's other tasks (the
/// discovery task, the churner), not on the OS running another process.
#[cfg(all(unix, feature = "proxy"))]
fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    ok.then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(all(unix, feature = "proxy")))]
fn thread_cpu() -> Option<Duration> {
    None
}

/// Sends requests back to back for `window` over `n` endpoints, each after
/// a yield; with `churn`, replaces 10 % of the endpoints every 100 ms.
/// With `cpu`, each request's time is this thread's CPU time while it
/// waited (a system call per request: for the stall figures, not the
/// cost); otherwise its wall time.
fn measure_requests(n: u32, window: Duration, churn: bool, cpu: bool) -> Requests {
    runtime().block_on(async {
        let (tx, rx) = mpsc::unbounded();
        let b = balance(rx);
        for i in 0..n {
            insert(&tx, i);
        }
        until_len(&b, n as usize).await;

        // Replaces a tenth at a time, walking through the set: the oldest
        // tenth goes, a new tenth comes.
        let churner = churn.then(|| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                tick.tick().await;
                let (mut oldest, mut next, tenth) = (0, n, n / 10);
                let mut churns = 0u64;
                loop {
                    tick.tick().await;
                    for i in 0..tenth {
                        send(&tx, Change::Remove(oldest + i));
                        insert(&tx, next + i);
                    }
                    oldest += tenth;
                    next += tenth;
                    churns += 1;
                    if churns * 100 > window.as_millis() as u64 {
                        return churns;
                    }
                }
            })
        });

        let mut took = Vec::new();
        let start = Instant::now();
        while start.elapsed() < window {
            let (t, c) = (Instant::now(), cpu.then(thread_cpu).flatten());
            tokio::task::yield_now().await;
            let rsp = b.clone().oneshot(Request::new(())).await;
            took.push(match c {
                Some(c) => thread_cpu().expect("the clock") - c,
                None => t.elapsed(),
            });
            assert!(rsp.is_ok());
        }
        let elapsed = start.elapsed();
        let churns = match churner {
            Some(task) => task.await.expect("churner"),
            None => 0,
        };
        let count = took.len() as u64;
        took.sort();
        Requests {
            count,
            mean_ns: elapsed.as_nanos() as f64 / count as f64,
            p99: took[took.len() * 99 / 100],
            max: took[took.len() - 1],
            churns,
        }
    })
}

fn churn(mode: Mode) {
    let (n, window) = match mode {
        Mode::Smoke => (2_000, Duration::from_millis(300)),
        Mode::Quick => (10_000, Duration::from_secs(1)),
        Mode::Full => (10_000, Duration::from_secs(3)),
    };
    println!();
    println!(
        "(b) requests on one worker thread, {n} endpoints, {:.0} s each",
        window.as_secs_f64()
    );
    println!("| | requests | mean cost | p99 | longest (wall) | longest (worker CPU) | churns |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let quiet = measure_requests(n, window, false, false);
    let churning = measure_requests(n, window, true, false);
    let quiet_cpu = measure_requests(n, window, false, true);
    let churning_cpu = measure_requests(n, window, true, true);
    let cpu_known = thread_cpu().is_some();
    for (name, r, c) in [
        ("no churn", &quiet, &quiet_cpu),
        ("10 % churn every 100 ms", &churning, &churning_cpu),
    ] {
        println!(
            "| {name} | {} | {:.0} ns | {:.1} µs | {:.2} ms | {} | {} |",
            r.count,
            r.mean_ns,
            r.p99.as_secs_f64() * 1e6,
            r.max.as_secs_f64() * 1e3,
            if cpu_known {
                format!("{:.2} ms", c.max.as_secs_f64() * 1e3)
            } else {
                "n/a".to_string()
            },
            r.churns,
        );
    }
    // The wall figure includes the OS running other processes (compare the
    // no-churn row); the worker's CPU time during a request is what it
    // spent on its other tasks, discovery first of all.
    let stall = if cpu_known {
        churning_cpu.max
    } else {
        churning.max
    };
    let ratio = churning.mean_ns / quiet.mean_ns;
    println!(
        "request cost while churning: ×{ratio:.2} of no churn (target ≤ {TARGET_CHURN_RATIO}×): {}",
        verdict(mode, ratio <= TARGET_CHURN_RATIO),
    );
    println!(
        "longest wait on discovery while churning: {:.2} ms (target ≤ {} ms): {}",
        stall.as_secs_f64() * 1e3,
        TARGET_STALL.as_millis(),
        verdict(mode, stall <= TARGET_STALL),
    );
}
