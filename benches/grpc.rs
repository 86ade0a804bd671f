//! gRPC: palisade (`Client::builder(..).grpc()`, all defaults) against
//! tonic's own `Channel::balance_channel`, over the same kind of fleet, in
//! one run.
//!
//! Five tonic servers on 127.0.0.1 (the `Greeter` of
//! `tests/support/grpc.rs`) answer `SayHello` after 1 ms. 8 callers send
//! unary calls back to back through one channel (palisade's, or tonic's
//! balance channel with the five endpoints inserted). Every run builds a
//! fresh fleet and a fresh channel, warms it up with 200 calls on the
//! healthy fleet, then applies the scenario's fault and measures:
//!
//! 1. **healthy**: p50 and p99 per call;
//! 2. **slow**: one server answers after 20 ms (20× the others): p99, and
//!    its ratio to the same client's healthy p99 of the same repetition;
//! 3. **unavailable**: one server answers `UNAVAILABLE` (Trailers-Only):
//!    success rate, and attempts per call (palisade: its retry stats;
//!    tonic, which has no retries: calls the servers received per
//!    successful call);
//! 4. **killed**: one server is killed when a third of the calls have
//!    started (its connections cut, calls in flight on it lost, new
//!    connections refused): success rate;
//! 5. **stopped**: the same, but a graceful shutdown (GOAWAY, calls in
//!    flight finish): success rate.
//!
//! Repetitions interleave the two clients (which goes first alternates);
//! every figure is the median over repetitions.
//!
//! ```text
//! cargo bench --bench grpc --features tonic                          # 5 reps × 2 000 calls per scenario
//! PALISADE_BENCH_QUICK=1 cargo bench --bench grpc --features tonic   # or `-- --quick`: 3 × 500
//! ```
//!
//! `PALISADE_BENCH_VERBOSE=1` prints every run. Without `--bench` (as under
//! `cargo test --all-targets`) it runs a smoke test of a second or two
//! whose numbers mean nothing.

#[path = "common/mod.rs"]
mod common;

#[path = "../tests/support/grpc.rs"]
mod grpc;

use common::{Mode, median};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grpc::{Fault, GreeterClient, GrpcServer, hello};
use palisade::Grpc;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

const SERVERS: usize = 5;
const CALLERS: usize = 8;
const BASE: Duration = Duration::from_millis(1);
const SLOW: Duration = Duration::from_millis(20);
/// A call that takes longer than this is counted as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Mode {
    /// Repetitions, calls per scenario and client, warm-up calls.
    fn size(self) -> (usize, usize, usize) {
        match self {
            Mode::Smoke => (1, 100, 20),
            Mode::Quick => (3, 500, 200),
            Mode::Full => (5, 2000, 200),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Side {
    Palisade,
    Tonic,
}

const SIDES: [Side; 2] = [Side::Palisade, Side::Tonic];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Scenario {
    Healthy,
    Slow,
    Unavailable,
    Killed,
    Stopped,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario::Healthy,
    Scenario::Slow,
    Scenario::Unavailable,
    Scenario::Killed,
    Scenario::Stopped,
];

/// The channel under test.
#[derive(Clone)]
enum Caller {
    Palisade(GreeterClient<Grpc>),
    Tonic(GreeterClient<Channel>),
}

impl Caller {
    async fn call(&mut self) -> Result<(), tonic::Status> {
        let call = async {
            match self {
                Caller::Palisade(c) => c.say_hello(hello("bench", 0)).await.map(drop),
                Caller::Tonic(c) => c.say_hello(hello("bench", 0)).await.map(drop),
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("bench: call timed out")))
    }
}

/// What one run measured.
struct Run {
    latencies: Vec<Duration>,
    calls: usize,
    ok: usize,
    /// palisade's attempts (its retry stats); `None` for tonic.
    attempts: Option<u64>,
    /// Calls the servers received.
    server_calls: u64,
    /// The share of them the faulty server (the slow, unavailable, killed
    /// or stopped one; in the healthy scenario, the same first server) got.
    faulty_share: f64,
    /// palisade's cost estimates at the end, for the verbose output.
    estimates: String,
    /// Failures by code and message.
    errors: BTreeMap<String, usize>,
}

impl Run {
    fn success(&self) -> f64 {
        self.ok as f64 / self.calls as f64
    }

    /// Attempts per call: palisade's own count; for tonic (no retries),
    /// calls the servers received per successful call.
    fn attempts_per_call(&self) -> f64 {
        match self.attempts {
            Some(attempts) => attempts as f64 / self.calls as f64,
            None => self.server_calls as f64 / self.ok.max(1) as f64,
        }
    }

    fn quantile_ms(&mut self, q: f64) -> f64 {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.latencies[rank - 1].as_secs_f64() * 1e3
    }
}

/// A failure: its code, message and the chain of its sources, with every
/// number made `N` (addresses, ports, times), so that alike failures count
/// together.
fn error_kind(status: &tonic::Status) -> String {
    let mut text = format!("{:?} \"{}\"", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text = format!("{text} <- {e}");
        source = e.source();
    }
    let mut kind = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_ascii_digit() {
            kind.push(c);
        } else if !kind.ends_with('N') {
            kind.push('N');
        }
    }
    kind
}

/// Sends `n` calls from [`CALLERS`] callers; notifies `third` when the
/// call a third of the way in starts.
async fn drive(caller: &Caller, n: usize, third: Option<Arc<Notify>>) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (mut caller, next, third) = (caller.clone(), next.clone(), third.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if i == n / 3
                        && let Some(third) = &third
                    {
                        third.notify_one();
                    }
                    let start = Instant::now();
                    let result = caller.call().await;
                    latencies.push(start.elapsed());
                    if let Err(status) = result {
                        *errors.entry(error_kind(&status)).or_insert(0) += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut run = Run {
        latencies: Vec::with_capacity(n),
        calls: n,
        ok: 0,
        attempts: None,
        server_calls: 0,
        faulty_share: 0.0,
        estimates: String::new(),
        errors: BTreeMap::new(),
    };
    for c in callers {
        let (latencies, errors) = c.await.expect("caller");
        run.latencies.extend(latencies);
        for (kind, count) in errors {
            *run.errors.entry(kind).or_insert(0) += count;
        }
    }
    run.ok = n - run.errors.values().sum::<usize>();
    run
}

/// One scenario for one client on a fresh fleet and a fresh channel.
async fn run(side: Side, scenario: Scenario, n: usize, warm_up: usize) -> Run {
    let mut fleet = GrpcServer::fleet(SERVERS).await;
    for server in &fleet {
        server.set(Fault::Slow(BASE));
    }
    let addrs: Vec<_> = fleet.iter().map(GrpcServer::addr).collect();
    let faulty = addrs[0];
    let mut palisade = None;
    let caller = match side {
        Side::Palisade => {
            let channel = grpc::ready(grpc::builder(addrs.clone()), SERVERS).await;
            palisade = Some(channel.clone());
            Caller::Palisade(GreeterClient::new(channel))
        }
        Side::Tonic => {
            let (channel, changes) = Channel::balance_channel(SERVERS);
            for addr in addrs {
                let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("uri");
                changes
                    .send(Change::Insert(addr, endpoint))
                    .await
                    .expect("balance channel");
            }
            // Dropped: tonic reads a closed sender as "no more changes".
            drop(changes);
            Caller::Tonic(GreeterClient::new(channel))
        }
    };
    let _ = drive(&caller, warm_up, None).await;
    let attempts_before = palisade.as_ref().map(|p| p.snapshot().retries.attempts);
    let served_before: u64 = fleet.iter().map(GrpcServer::calls).sum();
    let faulty_before = fleet[0].calls();

    let third = Arc::new(Notify::new());
    let victim = match scenario {
        Scenario::Healthy => None,
        Scenario::Slow => {
            fleet[0].set(Fault::Slow(SLOW));
            None
        }
        Scenario::Unavailable => {
            fleet[0].set(Fault::Unavailable);
            None
        }
        Scenario::Killed | Scenario::Stopped => {
            let victim = fleet.remove(0);
            let calls = victim.call_counter();
            let third = third.clone();
            let gone = tokio::spawn(async move {
                third.notified().await;
                if scenario == Scenario::Killed {
                    victim.kill();
                } else {
                    victim.stop().await;
                }
            });
            Some((gone, calls))
        }
    };
    let mut run = drive(&caller, n, victim.is_some().then_some(third)).await;
    let faulty_after = if victim.is_some() {
        None
    } else {
        Some(fleet[0].calls())
    };
    let victim_calls = match victim {
        Some((gone, calls)) => {
            tokio::time::timeout(Duration::from_secs(10), gone)
                .await
                .expect("the stopped server never finished")
                .expect("victim");
            calls()
        }
        None => 0,
    };
    run.server_calls =
        fleet.iter().map(GrpcServer::calls).sum::<u64>() + victim_calls - served_before;
    run.faulty_share = (faulty_after.unwrap_or(victim_calls) - faulty_before) as f64
        / run.server_calls.max(1) as f64;
    if let Some(p) = &palisade {
        run.attempts = Some(p.snapshot().retries.attempts - attempts_before.unwrap_or(0));
        let faulty = palisade::discover::Address::from(faulty);
        run.estimates = p
            .endpoint_stats()
            .iter()
            .map(|e| {
                let mark = if e.address == faulty { "*" } else { "" };
                format!(
                    "{mark}{:.1}ms/{}",
                    e.rtt_estimate.as_secs_f64() * 1e3,
                    e.in_flight
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    run
}

/// Per scenario and client, one value per repetition.
#[derive(Default)]
struct Figures {
    p50: Vec<f64>,
    p99: Vec<f64>,
    success: Vec<f64>,
    attempts: Vec<f64>,
    server_per_ok: Vec<f64>,
    faulty_share: Vec<f64>,
    errors: BTreeMap<String, usize>,
}

impl Figures {
    fn p50(&self) -> f64 {
        median(self.p50.clone())
    }
    fn p99(&self) -> f64 {
        median(self.p99.clone())
    }
    fn success(&self) -> f64 {
        median(self.success.clone())
    }
    fn attempts(&self) -> f64 {
        median(self.attempts.clone())
    }
    fn server_per_ok(&self) -> f64 {
        median(self.server_per_ok.clone())
    }
    fn faulty_share(&self) -> f64 {
        median(self.faulty_share.clone())
    }
    fn worst_success(&self) -> f64 {
        self.success.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

fn main() {
    let mode = Mode::from_env();
    let (reps, n, warm_up) = mode.size();
    let verbose = std::env::var_os("PALISADE_BENCH_VERBOSE").is_some();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = std::time::Instant::now();
    let mut figures: BTreeMap<(Scenario, Side), Figures> = BTreeMap::new();
    rt.block_on(async {
        for rep in 0..reps {
            for scenario in SCENARIOS {
                let order = if rep % 2 == 0 {
                    SIDES
                } else {
                    [Side::Tonic, Side::Palisade]
                };
                for side in order {
                    let mut r = run(side, scenario, n, warm_up).await;
                    let (p50, p99) = (r.quantile_ms(0.5), r.quantile_ms(0.99));
                    if verbose {
                        println!(
                            "  rep {rep} {scenario:?} {side:?}: p50 {p50:.2} ms, p99 {p99:.2} ms, \
                             success {:.2} %, attempts/call {:.4}, server calls {} for {} ok, \
                             {:.2} % on the faulty one, errors {:?}",
                            r.success() * 100.0,
                            r.attempts_per_call(),
                            r.server_calls,
                            r.ok,
                            r.faulty_share * 100.0,
                            r.errors
                        );
                    }
                    if verbose && !r.estimates.is_empty() {
                        println!(
                            "    palisade's estimates at the end (rtt/in flight, * faulty): {}",
                            r.estimates
                        );
                    }
                    let f = figures.entry((scenario, side)).or_default();
                    f.p50.push(p50);
                    f.p99.push(p99);
                    f.success.push(r.success());
                    f.attempts.push(r.attempts_per_call());
                    f.server_per_ok
                        .push(r.server_calls as f64 / r.ok.max(1) as f64);
                    f.faulty_share.push(r.faulty_share);
                    for (kind, count) in r.errors {
                        *f.errors.entry(kind).or_insert(0) += count;
                    }
                }
            }
        }
    });
    report(mode, reps, n, &figures, started.elapsed());
}

fn report(
    mode: Mode,
    reps: usize,
    n: usize,
    figures: &BTreeMap<(Scenario, Side), Figures>,
    took: Duration,
) {
    let f = |scenario, side| &figures[&(scenario, side)];
    let smoke = if mode == Mode::Smoke { " (smoke)" } else { "" };
    println!(
        "gRPC{smoke}: palisade (defaults) against tonic's Channel::balance_channel; {SERVERS} tonic \
         servers on 127.0.0.1 answering after {} ms; {CALLERS} callers, {n} unary calls per \
         scenario and client × {reps} reps, 2 runtime threads; medians over reps ({:.0} s)",
        BASE.as_millis(),
        took.as_secs_f64()
    );
    println!("tonic's balance channel has no retries: a failed call is the caller's failure.\n");
    println!(
        "{:<46} {:>12} {:>12} {:>9}",
        "scenario, figure", "palisade", "tonic", "p / t"
    );
    let row = |label: &str, p: f64, t: f64, unit: &str, digits: usize| {
        println!(
            "{label:<46} {:>12} {:>12} {:>8.2}×",
            format!("{p:.digits$}{unit}"),
            format!("{t:.digits$}{unit}"),
            p / t
        );
    };
    use Scenario::*;
    use Side::{Palisade as P, Tonic as T};
    row(
        "(1) healthy: p50 ms",
        f(Healthy, P).p50(),
        f(Healthy, T).p50(),
        "",
        2,
    );
    row(
        "(1) healthy: p99 ms",
        f(Healthy, P).p99(),
        f(Healthy, T).p99(),
        "",
        2,
    );
    row(
        "(2) one 20× slower: p50 ms",
        f(Slow, P).p50(),
        f(Slow, T).p50(),
        "",
        2,
    );
    row(
        "(2) one 20× slower: p99 ms",
        f(Slow, P).p99(),
        f(Slow, T).p99(),
        "",
        2,
    );
    // Ratios to the same client's healthy baseline: of the medians, and the
    // median of the per-repetition ratios (each against the healthy run of
    // its own repetition).
    let per_rep = |side: Side| {
        median(
            f(Slow, side)
                .p99
                .iter()
                .zip(&f(Healthy, side).p99)
                .map(|(s, h)| s / h)
                .collect(),
        )
    };
    let ratio = |side: Side| f(Slow, side).p99() / f(Healthy, side).p99();
    row(
        "(2)   p99 / healthy p99 (ratio of medians)",
        ratio(P),
        ratio(T),
        "×",
        2,
    );
    row(
        "(2)   p99 / healthy p99 (median per rep)",
        per_rep(P),
        per_rep(T),
        "×",
        2,
    );
    row(
        "(2)   share of calls on the slow server %",
        f(Slow, P).faulty_share() * 100.0,
        f(Slow, T).faulty_share() * 100.0,
        "",
        2,
    );
    for (scenario, label) in [
        (Unavailable, "(3) one UNAVAILABLE"),
        (Killed, "(4) one killed mid-run"),
        (Stopped, "(5) one stopped (graceful) mid-run"),
    ] {
        row(
            &format!("{label}: success %"),
            f(scenario, P).success() * 100.0,
            f(scenario, T).success() * 100.0,
            "",
            2,
        );
        if scenario == Unavailable {
            row(
                "(3)   attempts per call",
                f(Unavailable, P).attempts(),
                f(Unavailable, T).attempts(),
                "",
                3,
            );
        }
        row(
            &format!("{}   share of calls on that server %", &label[..3]),
            f(scenario, P).faulty_share() * 100.0,
            f(scenario, T).faulty_share() * 100.0,
            "",
            2,
        );
        row(
            &format!("{}   server calls per successful call", &label[..3]),
            f(scenario, P).server_per_ok(),
            f(scenario, T).server_per_ok(),
            "",
            3,
        );
        row(
            &format!("{}   p99 ms", &label[..3]),
            f(scenario, P).p99(),
            f(scenario, T).p99(),
            "",
            2,
        );
    }

    println!("\nfailures seen by callers (all reps):");
    let mut any = false;
    for ((scenario, side), fig) in figures {
        for (kind, count) in &fig.errors {
            any = true;
            println!("  {scenario:?} {side:?}: {count} × {kind}");
        }
    }
    if !any {
        println!("  none");
    }

    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let slow = per_rep(P);
    let unavailable = f(Unavailable, P);
    let killed = f(Killed, P);
    println!("\ntargets (palisade){smoke}:");
    println!(
        "  (2) p99 with one server 20× slower ≤ 1.25× healthy p99: {slow:.2}× ({:.2} against {:.2} ms)  {}",
        f(Slow, P).p99(),
        f(Healthy, P).p99(),
        verdict(slow <= 1.25)
    );
    println!(
        "  (3) 100 % success with ≤ 1.05 attempts per call: {:.2} %, {:.3} attempts  {}",
        unavailable.success() * 100.0,
        unavailable.attempts(),
        verdict(unavailable.worst_success() >= 1.0 && unavailable.attempts() <= 1.05)
    );
    println!(
        "  (4) ≥ 99.9 % success with one server killed: {:.2} % (worst rep {:.2} %)  {}",
        killed.success() * 100.0,
        killed.worst_success() * 100.0,
        verdict(killed.success() >= 0.999)
    );
}
