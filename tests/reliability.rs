//! Reliability scenarios: demo backends behind fault-injecting TCP proxies
//! (`support::faulty`), a palisade client (or the `palisade proxy` binary)
//! in front, real sockets on 127.0.0.1, real time. What each scenario
//! proves, and the figures, are in `docs/reliability.md`.
//!
//! Every scenario checks that nothing is lost or duplicated: each request
//! carries a unique id; every id gets exactly one outcome at the caller;
//! the fault proxies record which ids reached a backend; and
//! `support::account` checks that every attempt is accounted for (an id
//! reaches a backend twice only through a retry, a POST at most once).
//! Latency bounds are relative to a healthy phase of the same test, or
//! derived from the configured deadline and per-try timeout. Scenarios run
//! one at a time (`support::serial`), so a healthy phase and its faulty
//! phase see the same machine.
//!
//! `cargo test --test reliability -- --nocapture` prints the figures.

#![cfg(feature = "demo")]

mod support;

use std::error::Error as _;
use std::time::Duration;

use palisade::Limit;
use palisade::breaker::{BreakerSettings, BreakerState};
use palisade::demo::Behavior;
use palisade::discover::Address;
use palisade::limit::ConcurrencySettings;
use palisade::retry::{AttemptTimedOut, RetryStop};
use support::{
    Fault, Fleet, Ledger, Load, Outcome, Plan, Record, Run, account, client, eventually_within, ms,
    quantile, serial, via_client,
};
use tokio::time::Instant;

/// Fast backends with some jitter.
fn fast() -> Behavior {
    Behavior::new()
        .latency(Duration::from_millis(5))
        .jitter(0.5)
}

/// A healthy baseline of `n` requests (every `posts`th a POST): all must
/// succeed.
async fn baseline(client: &support::TestClient, n: u64, posts: u64) -> Run {
    let run = Load::start(via_client(client), Plan::new("healthy", n, 24).posts(posts))
        .finish()
        .await;
    run.assert_each_answered_once(n);
    assert_eq!(run.ok(), n as usize, "healthy phase: {}", run.summary());
    eprintln!("  healthy: {}", run.summary());
    run
}

/// The library error of a failed request, or a panic naming what it got.
fn error_of(r: &Record) -> &palisade::Error {
    match &r.outcome {
        Outcome::Error(e) => e,
        other => panic!(
            "{} {}: expected a palisade error, got {other:?}",
            r.method, r.id
        ),
    }
}

/// The endpoint address a failed request names.
fn failed_on(r: &Record) -> Option<&Address> {
    error_of(r).endpoint()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_load_loses_nothing() {
    let _serial = serial().await;
    let mut fleet = Fleet::spawn(4, fast()).await;
    let ledger = Ledger::default();
    let client = client(&fleet, &ledger, |b| b.timeout(Some(Duration::from_secs(2)))).await;
    eprintln!("a: one of 4 backends killed after 1000 of 3000 requests (1 in 5 a POST)");
    let healthy = baseline(&client, 600, 5).await;

    let load = Load::start(via_client(&client), Plan::new("kill", 3000, 24).posts(5));
    load.reached(1000).await;
    fleet.kill(0).await;
    let run = load.finish().await;
    eprintln!("  killed:  {}", run.summary());

    run.assert_each_answered_once(3000);
    // The only failures: POSTs in flight on the killed backend. Their
    // connection was reset after they were sent, so the server may have
    // acted on them: the library must not retry them (GETs it retries).
    let killed = Address::from(fleet.addrs()[0]);
    let failures: Vec<_> = run.failures().collect();
    for r in &failures {
        assert_eq!(r.method, http::Method::POST, "{r:?}");
        assert_eq!(error_of(r).retry_stop(), Some(RetryStop::Method), "{r:?}");
        assert_eq!(failed_on(r), Some(&killed), "{r:?}");
    }
    let cut = fleet.faulties[0].counts().refused;
    assert!(
        failures.len() as u64 <= cut,
        "{} failures, but only {cut} connections were cut",
        failures.len()
    );
    assert!(run.success_rate() >= 0.995, "{}", run.summary());
    let (_, healthy_p99) = healthy.p50_p99();
    let (_, p99) = run.p50_p99();
    assert!(
        p99 <= healthy_p99 * 5 + Duration::from_millis(100),
        "p99 {p99:?} vs healthy {healthy_p99:?}"
    );
    let acc = account(&[&healthy, &run], &ledger, &fleet, &client);
    eprintln!("  {} failed (POSTs cut in flight); {acc:?}", failures.len());
}

/// Blackholes one of four backends; returns the fleet, the client, its
/// ledger, the healthy baseline and the faulty run, with the blackholed
/// endpoint's attempts (before, after the first 1000 requests, at the end).
async fn blackhole(total: u64) -> (Fleet, support::TestClient, Ledger, Run, Run, [u64; 3]) {
    let fleet = Fleet::spawn(4, fast()).await;
    let ledger = Ledger::default();
    let client = client(&fleet, &ledger, |b| {
        b.timeout(Some(DEADLINE)).per_try_timeout(Some(PER_TRY))
    })
    .await;
    let healthy = baseline(&client, 600, 10).await;
    let hole = fleet.addrs()[1];
    let attempts_on_hole = || {
        client
            .endpoint_stats()
            .iter()
            .find(|s| s.address == hole.into())
            .map_or(0, |s| s.requests)
    };
    fleet.faulties[1].set(Fault::Blackhole).await;
    let before = attempts_on_hole();
    let load = Load::start(via_client(&client), Plan::new("hole", total, 24).posts(10));
    load.reached(1000).await;
    let mid = attempts_on_hole();
    let run = load.finish().await;
    let end = attempts_on_hole();
    (fleet, client, ledger, healthy, run, [before, mid, end])
}

const DEADLINE: Duration = Duration::from_secs(1);
const PER_TRY: Duration = Duration::from_millis(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_blackholed_backend_is_bounded_by_the_per_try_timeout() {
    let _serial = serial().await;
    eprintln!(
        "b: one of 4 backends blackholed; deadline {DEADLINE:?}, per-try timeout {PER_TRY:?}"
    );
    let (fleet, client, ledger, healthy, run, [before, mid, end]) = blackhole(2000).await;
    eprintln!("  blackhole: {}", run.summary());

    run.assert_each_answered_once(2000);
    // GETs that met the blackhole timed out after the per-try timeout and
    // were retried elsewhere; POSTs cannot be (the server may have acted on
    // them): they fail, naming the endpoint and the per-try timeout, and
    // never reached a backend.
    let hole = Address::from(fleet.addrs()[1]);
    let reached = fleet.reached();
    let failures: Vec<_> = run.failures().collect();
    for r in &failures {
        assert_eq!(r.method, http::Method::POST, "{r:?}");
        let e = error_of(r);
        assert_eq!(e.retry_stop(), Some(RetryStop::Method), "{r:?}");
        assert_eq!(e.endpoint(), Some(&hole), "{r:?}");
        assert!(
            e.source()
                .is_some_and(|s| s.downcast_ref::<AttemptTimedOut>().is_some()),
            "{r:?}"
        );
        assert!(!reached.contains_key(&r.id), "{} reached a backend", r.id);
    }
    // Latency: nothing waits past the deadline; a GET costs at most one
    // per-try timeout, the first backoff (≤ 25 ms) and a healthy attempt.
    let slack = Duration::from_millis(250);
    let worst = run.quantile(1.0, |_| true);
    assert!(worst <= DEADLINE + slack, "slowest request {worst:?}");
    let (_, healthy_p99) = healthy.p50_p99();
    let get_p99 = run.quantile(0.99, |r| r.method == http::Method::GET);
    let bound = PER_TRY + Duration::from_millis(25) + healthy_p99 * 5 + Duration::from_millis(50);
    assert!(get_p99 <= bound, "GET p99 {get_p99:?} > {bound:?}");
    let acc = account(&[&healthy, &run], &ledger, &fleet, &client);
    // What the proxy swallowed is exactly what was not forwarded.
    assert!(acc.attempts - acc.forwarded <= fleet.faulties[1].counts().blackholed);
    eprintln!(
        "  GET p99 {:.1} ms (bound {:.1} ms); {} POSTs failed on the blackhole; \
         attempts on it: {} in the first 1000 requests, {} in the last 1000; {acc:?}",
        ms(get_p99),
        ms(bound),
        failures.len(),
        mid - before,
        end - mid,
    );
}

/// Ejection follows: every attempt cut off by the per-try timeout is a
/// failure of its endpoint (the retry layer marks it in the request's
/// `Tried`, and the balancer's dropped future records it), so the
/// blackholed endpoint is ejected after its consecutive failures and gets
/// only probes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_blackholed_backend_is_ejected() {
    let _serial = serial().await;
    let (fleet, client, _, _, run, [_, mid, end]) = blackhole(3000).await;
    let hole = fleet.addrs()[1];
    let stats = client.endpoint_stats();
    let hole_stats = stats.iter().find(|s| s.address == hole.into()).unwrap();
    eprintln!("  blackhole: {}; {hole_stats:?}", run.summary());
    assert!(hole_stats.ejections >= 1, "never ejected: {hole_stats:?}");
    // After the first 1000 requests, ~0 of the last 2000 attempts: the
    // probes only (one per penalty, 1 s then doubling).
    assert!(end - mid <= 5, "{} attempts on the blackhole", end - mid);
}

/// The same blackhole with the defaults: no per-try timeout, the 15 s
/// deadline. Stall detection gives up a GET waiting on the blackhole once
/// it has answered nothing for a second while the other endpoints answer
/// requests sent since, and the retry layer sends it elsewhere; the
/// stalled endpoint is passed over meanwhile, and ejected as its given-up
/// calls add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_blackholed_backend_with_the_defaults() {
    let _serial = serial().await;
    eprintln!("b (defaults): one of 5 backends blackholed; no per-try timeout, 15 s deadline");
    let fleet = Fleet::spawn(5, fast()).await;
    let ledger = Ledger::default();
    let client = client(&fleet, &ledger, |b| b).await;
    let healthy = baseline(&client, 600, 10).await;
    let hole = Address::from(fleet.addrs()[2]);
    let on_hole = |c: &support::TestClient| {
        c.endpoint_stats()
            .into_iter()
            .find(|s| s.address == hole)
            .map_or(0, |s| s.requests)
    };
    let before = on_hole(&client);
    fleet.faulties[2].set(Fault::Blackhole).await;
    // Steady load: other traffic goes on while the measured requests run
    // and after (stall detection judges an endpoint against answers to
    // requests sent after it should have answered; a load that simply
    // stops leaves its last stuck request to the deadline).
    let steady = {
        let send = via_client(&client);
        tokio::spawn(async move {
            for n in 0.. {
                let _ = send(http::Method::GET, format!("steady-{n}")).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let total = 4000;
    let run = Load::start(via_client(&client), Plan::new("quiet", total, 16))
        .finish()
        .await;
    steady.abort();
    eprintln!("  blackhole: {}", run.summary());
    run.assert_each_answered_once(total);
    let worst = run.quantile(1.0, |_| true);
    let stats = client.endpoint_stats();
    let hole_stats = stats.iter().find(|s| s.address == hole).unwrap();
    eprintln!(
        "  success {:.3} %, slowest {:.0} ms; attempts sent to the blackhole: {} \
         ({} given up as stalled), ejections {}",
        run.success_rate() * 100.0,
        ms(worst),
        hole_stats.requests - before,
        hole_stats.timeouts,
        hole_stats.ejections,
    );
    assert!(run.success_rate() >= 0.9995, "{}", run.summary());
    assert!(
        worst <= Duration::from_secs(2),
        "slowest request {worst:?}: a GET waited on the blackhole"
    );
    assert!(hole_stats.timeouts >= 1, "{hole_stats:?}");
    let _ = (healthy, ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_reset_before_the_head_is_retried_elsewhere() {
    let _serial = serial().await;
    eprintln!("c: one of 4 backends' connections reset after 10 response bytes (1 in 10 a POST)");
    let fleet = Fleet::spawn(4, fast()).await;
    let ledger = Ledger::default();
    let client = client(&fleet, &ledger, |b| b.timeout(Some(Duration::from_secs(2)))).await;
    let healthy = baseline(&client, 600, 10).await;
    let before = fleet.reached();
    let fault = Fault::ResetMidResponse { after_bytes: 10 };
    fleet.faulties[2].set(fault).await;
    let run = Load::start(via_client(&client), Plan::new("head", 2000, 24).posts(10))
        .finish()
        .await;
    eprintln!("  reset:   {}", run.summary());

    run.assert_each_answered_once(2000);
    // The caller never saw a head from the reset endpoint, so every GET was
    // retried on another; POSTs reached the server and are not retried.
    let resetter = Address::from(fleet.addrs()[2]);
    let via_resetter = fleet.reached_via(2);
    let failures: Vec<_> = run.failures().collect();
    for r in &failures {
        assert_eq!(r.method, http::Method::POST, "{r:?}");
        assert_eq!(error_of(r).retry_stop(), Some(RetryStop::Method), "{r:?}");
        assert_eq!(failed_on(r), Some(&resetter), "{r:?}");
        assert!(via_resetter.contains(&r.id), "{} never reached it", r.id);
    }
    // Every reset is accounted for: a POST that failed, or a GET that
    // reached a backend twice (the reset one, then another).
    let reached = fleet.reached();
    let retried_gets = reached
        .iter()
        .filter(|(id, n)| **n > before.get(*id).copied().unwrap_or(0) + 1)
        .count() as u64;
    let resets = fleet.faulties[2].counts().reset;
    assert_eq!(
        resets,
        failures.len() as u64 + retried_gets,
        "resets vs failed POSTs + retried GETs"
    );
    // The balancer saw every reset as a failure (of the endpoint's attempts
    // in this phase, all failed, so they were consecutive: five eject it;
    // its failure penalty often steers traffic away before the fifth).
    let stats = client.endpoint_stats();
    let on_resetter = stats.iter().find(|s| s.address == resetter).unwrap();
    assert_eq!(on_resetter.failures, resets, "{on_resetter:?}");
    assert!(
        on_resetter.failures < 5 || on_resetter.ejections >= 1,
        "{on_resetter:?}"
    );
    let (_, healthy_p99) = healthy.p50_p99();
    let (_, p99) = run.p50_p99();
    assert!(
        p99 <= healthy_p99 * 5 + Duration::from_millis(50),
        "p99 {p99:?} vs healthy {healthy_p99:?}"
    );
    let acc = account(&[&healthy, &run], &ledger, &fleet, &client);
    eprintln!(
        "  {resets} resets: {} POSTs failed, {retried_gets} GETs retried; endpoint {:?} after {} failures; {acc:?}",
        failures.len(),
        on_resetter.state,
        on_resetter.failures,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_reset_mid_body_reaches_the_caller_and_ejects_the_endpoint() {
    let _serial = serial().await;
    eprintln!("c: one of 4 backends' connections reset after the head and one body byte (GETs)");
    let fleet = Fleet::spawn(4, fast()).await;
    let ledger = Ledger::default();
    let client = client(&fleet, &ledger, |b| b.timeout(Some(Duration::from_secs(2)))).await;
    let healthy = baseline(&client, 600, 0).await;
    // Every response of one backend has the same length (head + "ok\n").
    let (bytes, responses) = (fleet.faulties[2].counts().bytes_down, fleet.forwarded_to(2));
    assert!(
        responses > 0 && bytes % responses == 0,
        "{bytes} bytes in {responses} responses"
    );
    let len = bytes / responses;
    let before = fleet.reached();
    fleet.faulties[2]
        .set(Fault::ResetMidResponse {
            after_bytes: len - 2,
        })
        .await;
    let run = Load::start(via_client(&client), Plan::new("body", 1000, 24))
        .finish()
        .await;
    eprintln!("  reset:   {}", run.summary());

    run.assert_each_answered_once(1000);
    // Once the caller has the head, the library has returned: the body's
    // failure reaches the caller as a body error, and nothing retries it.
    let via_resetter = fleet.reached_via(2);
    let reached = fleet.reached();
    let mut retried = 0;
    for r in &run.records {
        if !via_resetter.contains(&r.id) {
            assert!(r.outcome.is_ok(), "{r:?}");
            continue;
        }
        match &r.outcome {
            Outcome::Body(200, _) => {
                assert_eq!(reached[&r.id], 1, "{} was sent again", r.id);
                assert_eq!(ledger.tries(&r.id).attempts, 1, "{}", r.id);
            }
            // The reset overtook the head: an ordinary retried failure.
            Outcome::Ok => retried += 1,
            other => panic!("{}: {other:?}", r.id),
        }
    }
    let failures = run.failures().count() as u64;
    let resets = fleet.faulties[2].counts().reset;
    assert_eq!(
        resets,
        failures + retried,
        "resets vs body errors + retried"
    );
    // The end of the stream is judged: every body error is a failure of
    // the resetting endpoint (penalised, counted), and five in a row eject
    // it, so it stops getting its quarter of the traffic.
    let resetter = Address::from(fleet.addrs()[2]);
    let stats = client.endpoint_stats();
    let on_resetter = stats.iter().find(|s| s.address == resetter).unwrap();
    assert!(
        on_resetter.failures >= failures,
        "{failures} body errors, {} failures counted: {on_resetter:?}",
        on_resetter.failures
    );
    assert!(on_resetter.ejections >= 1, "never ejected: {on_resetter:?}");
    assert!(
        failures <= 50,
        "{failures} of 1000 failed: the endpoint kept its share"
    );
    let (_, healthy_p99) = healthy.p50_p99();
    let (_, p99) = run.p50_p99();
    assert!(
        p99 <= healthy_p99 * 5 + Duration::from_millis(50),
        "p99 {p99:?} vs healthy {healthy_p99:?}"
    );
    let acc = account(&[&healthy, &run], &ledger, &fleet, &client);
    let newly: u64 = reached
        .iter()
        .map(|(id, n)| u64::from(*n) - u64::from(before.get(id).copied().unwrap_or(0)))
        .sum();
    eprintln!(
        "  {resets} resets: {failures} body errors at the caller ({:.1} % of requests; \
         {} failures counted on the endpoint, ejected {} times), {retried} retried; {newly} forwarded; {acc:?}",
        100.0 * failures as f64 / 1000.0,
        on_resetter.failures,
        on_resetter.ejections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_every_backend_down_then_back() {
    let _serial = serial().await;
    eprintln!("d: all 4 backends refuse connections until the breaker has probed, then return");
    let behavior = Behavior::new()
        .latency(Duration::from_millis(20))
        .jitter(0.2);
    let fleet = Fleet::spawn(4, behavior).await;
    let ledger = Ledger::default();
    let sleep_window = Duration::from_millis(500);
    let settings = BreakerSettings {
        sleep_window,
        ..BreakerSettings::default()
    };
    let client = client(&fleet, &ledger, |b| {
        b.timeout(Some(Duration::from_secs(2))).breaker(settings)
    })
    .await;
    // Paced: while the breaker is open, failures are instant.
    let plan = Plan::new("d", 50_000, 16)
        .posts(5)
        .paced(Duration::from_millis(10));
    let load = Load::start(via_client(&client), plan);
    load.reached(300).await;
    let down = Instant::now();
    fleet.set_all(Fault::Refuse).await;
    eventually_within(Duration::from_secs(10), || {
        client.breaker().state() != BreakerState::Closed
    })
    .await;
    let opened = Instant::now();
    // Probes (half-open) while still down, and opens again.
    eventually_within(Duration::from_secs(10), || {
        client.breaker().transitions() >= 3
    })
    .await;
    let up = Instant::now();
    fleet.set_all(Fault::Pass).await;
    eventually_within(Duration::from_secs(10), || {
        client.breaker().state() == BreakerState::Closed
    })
    .await;
    let closed = Instant::now();
    let n = load.done();
    load.reached(n + 1000).await;
    load.stop();
    let run = load.finish().await;
    eprintln!(
        "  whole run: {}; breaker opened {:.2} s into the outage, probed and reopened, fleet back after {:.2} s, \
         breaker closed {:.2} s later",
        run.summary(),
        (opened - down).as_secs_f64(),
        (up - down).as_secs_f64(),
        (closed - up).as_secs_f64()
    );

    run.assert_each_answered_once(run.records.len() as u64);
    // Requests answered before the outage all succeeded (ones in flight
    // when it began may fail like any other during it).
    let before: Vec<_> = run
        .records
        .iter()
        .filter(|r| r.sent + r.latency < down)
        .collect();
    assert!(
        before.len() >= 200,
        "{} answered before the outage",
        before.len()
    );
    assert!(
        before.iter().all(|r| r.outcome.is_ok()),
        "failures before the outage"
    );
    // Open-breaker failures: fast, and none reached an endpoint.
    let reached = fleet.reached();
    let open: Vec<_> = run
        .records
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::Error(e) if e.is_circuit_open()))
        .collect();
    assert!(
        open.len() >= 50,
        "only {} circuit-open failures",
        open.len()
    );
    for r in &open {
        assert_eq!(ledger.tries(&r.id).attempts, 0, "{} made an attempt", r.id);
        assert!(!reached.contains_key(&r.id), "{} reached a backend", r.id);
    }
    let served_p50 = quantile(before.iter().map(|r| r.latency).collect(), 0.5);
    let open_p99 = quantile(open.iter().map(|r| r.latency).collect(), 0.99);
    assert!(
        open_p99 < served_p50,
        "open-breaker p99 {open_p99:?} vs served p50 {served_p50:?}"
    );
    // Everything else that failed failed on the way to a refusing fleet.
    for r in run.failures().filter(|r| r.sent < closed) {
        if matches!(&r.outcome, Outcome::Error(e) if e.is_circuit_open()) {
            continue;
        }
        assert!(
            matches!(&r.outcome, Outcome::Error(palisade::Error::Inner { .. })),
            "{r:?}"
        );
    }
    // Recovery: the probe closed it soon after the fleet came back, and
    // then nearly everything succeeds.
    assert!(
        closed - up <= sleep_window * 2 + Duration::from_secs(3),
        "closed {:?} after the fleet came back",
        closed - up
    );
    let after: Vec<_> = run.records.iter().filter(|r| r.sent >= closed).collect();
    let after_ok = after.iter().filter(|r| r.outcome.is_ok()).count();
    assert!(
        after_ok as f64 >= 0.99 * after.len() as f64,
        "{after_ok} of {} succeeded after recovery",
        after.len()
    );
    let acc = account(&[&run], &ledger, &fleet, &client);
    eprintln!(
        "  {} circuit-open failures (p99 {:.3} ms vs served p50 {:.1} ms), none reached a backend; \
         after recovery {after_ok}/{} ok; {} breaker transitions; {acc:?}",
        open.len(),
        ms(open_p99),
        ms(served_p50),
        after.len(),
        client.breaker().transitions(),
    );
}

#[cfg(all(feature = "cli", unix))]
/// This process's resident memory, in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_ten_times_overload_against_limits_sheds_fast_and_stays_bounded() {
    let _serial = serial().await;
    // Two backends answering in 20 ms; the bulkhead lets 8 requests in
    // flight and 8 wait, so the fleet serves about 8 / 20 ms = 400 a second.
    // 40 callers each send one every 10 ms: 4000 a second, 10x that.
    const MAX: usize = 8;
    eprintln!(
        "f: 10x overload (4000/s offered, ~400/s served) against a bulkhead of {MAX} + queue {MAX}"
    );
    let fleet = Fleet::spawn(2, Behavior::new().latency(Duration::from_millis(20))).await;
    let ledger = Ledger::default();
    let client = client(&fleet, &ledger, |b| {
        let settings = ConcurrencySettings {
            max: MAX,
            queue: MAX,
            max_wait: Some(Duration::from_millis(100)),
        };
        b.timeout(Some(Duration::from_secs(2)))
            .concurrency_limit(settings)
    })
    .await;
    // The healthy phase stays within the bulkhead: 8 callers.
    let healthy = Load::start(via_client(&client), Plan::new("healthy", 200, MAX))
        .finish()
        .await;
    assert_eq!(healthy.ok(), 200, "healthy phase: {}", healthy.summary());
    eprintln!("  healthy: {}", healthy.summary());
    let limit = client.concurrency_limit().expect("a bulkhead").clone();

    // Two overload runs: memory after the second must not have grown with
    // the number of requests (everything is bounded, nothing accumulates).
    let mut rss = vec![rss_kib()];
    let mut runs = Vec::new();
    for round in 0..2 {
        let plan =
            Plan::new(&format!("overload{round}"), 8000, 40).paced(Duration::from_millis(10));
        let load = Load::start(via_client(&client), plan);
        // Sample the bulkhead while the load runs.
        let mut peak = (0, 0);
        while load.done() < 8000 {
            peak = (peak.0.max(limit.in_flight()), peak.1.max(limit.queued()));
            tokio::time::sleep(Duration::from_millis(2)).await;
            if load.done() >= 7990 {
                break;
            }
        }
        let run = load.finish().await;
        eprintln!(
            "  overload {round}: {}; peak in flight {} queued {}",
            run.summary(),
            peak.0,
            peak.1
        );
        assert!(
            peak.0 <= MAX && peak.1 <= MAX,
            "bulkhead exceeded: {peak:?}"
        );
        run.assert_each_answered_once(8000);
        rss.push(rss_kib());
        runs.push(run);
    }

    let (healthy_p50, _) = healthy.p50_p99();
    for run in &runs {
        // Every request is served or shed by the bulkhead; nothing else.
        for r in run.failures() {
            let e = error_of(r);
            assert!(e.is_overloaded(), "{r:?}");
            assert!(
                matches!(
                    e.limit(),
                    Some(Limit::Concurrency { .. } | Limit::QueueTimeout { .. })
                ),
                "{e}"
            );
        }
        let shed = run.records.len() - run.ok();
        assert!(
            shed as f64 > 0.5 * run.records.len() as f64,
            "10x overload shed only {shed}"
        );
        assert!(run.ok() > 0);
        // Sheds are fast: the bulk of them is faster than a served request.
        let shed_p90 = run.quantile(0.9, |r| !r.outcome.is_ok());
        assert!(
            shed_p90 < healthy_p50,
            "shed p90 {shed_p90:?} vs served p50 {healthy_p50:?}"
        );
        // Served requests waited at most max_wait in the queue.
        let served_p99 = run.quantile(0.99, |r| r.outcome.is_ok());
        assert!(
            served_p99 <= Duration::from_millis(100) + healthy_p50 * 3 + Duration::from_millis(100),
            "served p99 {served_p99:?}"
        );
    }
    let acc = account(&[&healthy, &runs[0], &runs[1]], &ledger, &fleet, &client);
    assert_eq!(
        limit.in_flight() + limit.queued(),
        0,
        "every slot came back"
    );
    eprintln!("  RSS {} -> {} -> {} KiB; {acc:?}", rss[0], rss[1], rss[2]);
    // The second run adds nothing the first did not: growth within 4 MiB
    // (allocator noise), against 8000 requests of records kept by the test.
    assert!(
        rss[2] <= rss[1] + 4096,
        "RSS grew {} KiB in the second run",
        rss[2] - rss[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_proxy_restarted_with_sigterm_under_load_drains() {
    use support::proxy::{Proxy, plain, ready, service, via_proxy_resending_refused};

    let _serial = serial().await;
    eprintln!("e: `palisade proxy` gets SIGTERM under load and is restarted on the same port");
    let latency = Duration::from_millis(300);
    let fleet = Fleet::spawn(3, Behavior::new().latency(latency).jitter(0.2)).await;
    let body = service("app", &fleet.addrs()) + "[[routes]]\nservice = \"app\"\n";
    let grace = Duration::from_secs(5);
    let mut old = Proxy::start(&body);
    let listen = old.listen;
    let http = plain();
    ready(&http, &old).await;
    // Callers re-send a request only when its connection was refused
    // (nothing was sent), as a client riding out a restart would.
    let (send, refusals) = via_proxy_resending_refused(&http, listen);
    let load = Load::start(send, Plan::new("e", 100_000, 20).posts(4));
    load.reached(100).await;

    let sigterm = Instant::now();
    old.signal("-TERM");
    // New connections are refused while the old process still drains.
    let mut refused_while_draining = None;
    eventually_within(Duration::from_secs(5), || {
        let refused = std::net::TcpStream::connect(listen).is_err();
        if refused {
            refused_while_draining = Some(old.child.try_wait().unwrap().is_none());
        }
        refused
    })
    .await;
    let refused_after = sigterm.elapsed();
    let (status, old) = tokio::task::spawn_blocking(move || (old.child.wait().unwrap(), old))
        .await
        .unwrap();
    let exited_after = sigterm.elapsed();
    drop(old);
    let text = format!(
        "[[listeners]]\naddress = \"{listen}\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [server]\ngrace_period = \"5s\"\n\n{body}"
    );
    let new = tokio::task::spawn_blocking(move || Proxy::start_with(&text))
        .await
        .unwrap();
    let restarted_after = sigterm.elapsed();
    ready(&http, &new).await;
    let n = load.done();
    load.reached(n + 200).await;
    load.stop();
    let run = load.finish().await;
    eprintln!("  whole run: {}", run.summary());

    assert!(status.success(), "{status:?}");
    assert!(
        exited_after <= grace + Duration::from_secs(1),
        "{exited_after:?}"
    );
    assert_eq!(
        refused_while_draining,
        Some(true),
        "the listener was still open when the old proxy exited"
    );
    run.assert_each_answered_once(run.records.len() as u64);
    // Every request got a 200: the ones in flight at SIGTERM from the
    // draining proxy, the rest (after refused connections) from the new one.
    let failures: Vec<_> = run.failures().collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let refusals = refusals.lock().unwrap().clone();
    let in_flight: Vec<_> = run
        .records
        .iter()
        .filter(|r| r.sent < sigterm && r.sent + r.latency > sigterm)
        .collect();
    assert!(
        in_flight.len() >= 10,
        "only {} in flight at SIGTERM",
        in_flight.len()
    );
    for r in &in_flight {
        assert!(!refusals.contains_key(&r.id), "{} was refused", r.id);
    }
    // Each request reached a backend exactly once: no loss, no duplicate.
    let reached = fleet.reached();
    for r in &run.records {
        assert_eq!(reached.get(&r.id), Some(&1), "{} {}", r.method, r.id);
    }
    // Latency: the restart gap plus at most two backend answers.
    let worst = run.quantile(1.0, |_| true);
    let bound = restarted_after + latency.mul_f64(1.2) * 2 + Duration::from_secs(1);
    assert!(worst <= bound, "slowest {worst:?} > {bound:?}");
    eprintln!(
        "  {} in flight at SIGTERM, all answered; refused from {:.0} ms, old proxy exited after {:.0} ms, \
         new one listening after {:.0} ms; {} requests re-sent after {} refusals; p99 {:.0} ms, max {:.0} ms",
        in_flight.len(),
        ms(refused_after),
        ms(exited_after),
        ms(restarted_after),
        refusals.len(),
        refusals.values().sum::<u32>(),
        ms(run.quantile(0.99, |_| true)),
        ms(worst),
    );
}

/// The fault proxy itself: ids split across writes are found, `Refuse`
/// refuses and resets, `Pass` comes back on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_taps_ids_and_switches_modes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let _serial = serial().await;
    let backend = palisade::demo::Backend::spawn(Behavior::new())
        .await
        .unwrap();
    let faulty = support::Faulty::spawn(backend.addr()).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nhost: x\r\n{}: split-id-1\r\n\r\n",
        support::ID_HEADER
    );
    let mut stream = tokio::net::TcpStream::connect(faulty.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for byte in request.as_bytes() {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let ids: Vec<_> = faulty
        .take_forwarded()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["split-id-1"]);

    faulty.set(Fault::Refuse).await;
    // The live connection is reset, new ones are refused.
    let n = stream.read(&mut buf).await;
    assert!(n.is_err() || n.unwrap() == 0);
    let refused = tokio::net::TcpStream::connect(faulty.addr())
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    faulty.set(Fault::Pass).await;
    let mut stream = tokio::net::TcpStream::connect(faulty.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let c = faulty.counts();
    assert_eq!((c.accepted, c.refused), (2, 1), "{c:?}");
    assert_eq!(backend.requests(), 2);
}
