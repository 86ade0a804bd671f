//! Balancer behaviour with in-memory endpoints on paused Tokio time: every
//! latency here is virtual, so these tests are deterministic in time.

use std::convert::Infallible;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use http::Request;
use tokio::time::Instant;
use tower::{BoxError, ServiceExt};

use super::*;
use crate::classify::HttpClassify;
use crate::discover::{self, Endpoint, Static};
use crate::testing::{Answer, Fleet, settle_until};

type Body = http_body_util::Empty<bytes::Bytes>;
type Svc = crate::testing::Svc<Body>;

/// Lets the discovery task apply pending changes (no time passes).
async fn settle<S, C>(b: &Balance<S, C>, n: usize) {
    settle_until(b, |b| b.len() == n).await;
}

/// Starts a request now (the choice happens in `call`), without awaiting it.
fn start(b: &Balance<Svc, HttpClassify>) -> ResponseFuture<Svc, HttpClassify, Request<Body>> {
    b.clone().call(get())
}

fn get() -> Request<Body> {
    Request::get("http://test/").body(Body::new()).unwrap()
}

/// Sends `n` requests, `concurrency` at a time.
async fn load(b: &Balance<Svc, HttpClassify>, n: usize, concurrency: usize) {
    drive(b, concurrency, |sent| sent < n / concurrency).await;
}

/// Runs `concurrency` workers, each sending requests back to back while
/// `more(requests it has sent)` says so.
async fn drive(
    b: &Balance<Svc, HttpClassify>,
    concurrency: usize,
    more: impl Fn(usize) -> bool + Copy,
) {
    join_all((0..concurrency).map(|_| {
        let b = b.clone();
        async move {
            let mut sent = 0;
            while more(sent) {
                let _ = b.clone().oneshot(get()).await;
                sent += 1;
            }
        }
    }))
    .await;
}

#[tokio::test(start_paused = true)]
async fn prefers_the_faster_endpoint() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::ok(10)),
        fleet.set("127.0.0.1:3", Answer::ok(10)),
        fleet.set("127.0.0.1:4", Answer::ok(200)),
    ];
    let b = fleet.balance(Static::new(eps), BalanceSettings::default());
    settle(&b, 4).await;
    load(&b, 4000, 8).await;
    let slow = fleet.count("127.0.0.1:4");
    assert!(slow < 40, "slow endpoint got {slow} of 4000");
    for fast in ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"] {
        let n = fleet.count(fast);
        assert!((1000..1700).contains(&n), "{fast} got {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_cut_short_still_teaches_the_estimate() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::ok(10)),
        fleet.set("127.0.0.1:3", Answer::ok(500)),
    ];
    let b = fleet.balance(Static::new(eps), BalanceSettings::default());
    settle(&b, 3).await;
    // Every call is cut off at 50 ms (as a hedge or a per-try timeout
    // would): the slow endpoint's calls never finish. For 100 s, ten times
    // the decay: without a lower bound from the cut-off calls, its estimate
    // would fade to nothing and it would get its share again.
    let cut = |b: &Balance<Svc, HttpClassify>| {
        let b = b.clone();
        async move {
            let _ = tokio::time::timeout(Duration::from_millis(50), b.oneshot(get())).await;
        }
    };
    for _ in 0..1000 {
        cut(&b).await;
    }
    let before = fleet.count("127.0.0.1:3");
    for _ in 0..1000 {
        cut(&b).await;
    }
    let slow = fleet.count("127.0.0.1:3") - before;
    let estimate = state_of(&b, "127.0.0.1:3").latency_estimate;
    let fast = state_of(&b, "127.0.0.1:1").latency_estimate;
    // It fades between the (rare) calls the slow endpoint still gets, and a
    // cut-off call raises it back to 50 ms: it stays near the fast
    // endpoints' 10 ms or above (without the lower bound it fades to
    // nothing, 0.3 ms here).
    assert!(
        estimate >= fast / 2,
        "cut-off calls keep the estimate up: {estimate:?} against {fast:?}"
    );
    assert!(
        slow < 100,
        "the slow endpoint got {slow} of the last 1000 calls"
    );
    // Never lowered: the fast endpoints' calls finish, and their estimate
    // is what they take.
    assert!(fast <= Duration::from_millis(11), "{fast:?}");
}

#[tokio::test(start_paused = true)]
async fn in_flight_requests_count_against_an_endpoint() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::ok(10)),
    ];
    let b = fleet.balance(Static::new(eps), BalanceSettings::default());
    settle(&b, 2).await;
    // Many concurrent requests with equal latency spread evenly: every pick
    // sees the other's in-flight count (to within the 10 % tie tolerance).
    let futures: Vec<_> = (0..100).map(|_| start(&b)).collect();
    let stats = b.endpoint_stats();
    let in_flight: Vec<usize> = stats.iter().map(|s| s.in_flight).collect();
    assert_eq!(in_flight.iter().sum::<usize>(), 100);
    assert!(
        in_flight.iter().all(|&n| (45..=55).contains(&n)),
        "{in_flight:?}"
    );
    for r in join_all(futures).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert!(b.endpoint_stats().iter().all(|s| s.in_flight == 0));
}

#[tokio::test(start_paused = true)]
async fn failures_carry_a_penalty() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::ok(10)),
        fleet.set("127.0.0.1:3", Answer::ok(10)),
        // Fails instantly: without the penalty it would look fastest.
        fleet.set("127.0.0.1:4", Answer::ok(0).status(503)),
    ];
    let b = fleet.balance(Static::new(eps), BalanceSettings::default());
    settle(&b, 4).await;
    load(&b, 4000, 8).await;
    let bad = fleet.count("127.0.0.1:4");
    assert!(bad < 40, "failing endpoint got {bad} of 4000");
    let stats = b.endpoint_stats();
    let bad_stats = stats
        .iter()
        .find(|s| s.address.to_string() == "127.0.0.1:4")
        .unwrap();
    assert_eq!(bad_stats.failures, bad);
    // Its cost carries the (fading) penalty; its latency is what it took.
    let healthy = stats
        .iter()
        .map(|s| s.rtt_estimate)
        .filter(|r| *r < Duration::from_millis(50))
        .max()
        .unwrap();
    assert!(
        bad_stats.rtt_estimate > 3 * healthy,
        "{:?} vs {healthy:?}",
        bad_stats.rtt_estimate
    );
    assert!(bad_stats.latency_estimate < Duration::from_millis(1));
}

#[tokio::test(start_paused = true)]
async fn failure_penalty_is_configurable() {
    let fleet = Fleet::default();
    let eps = vec![fleet.set("127.0.0.1:1", Answer::ok(0).status(500))];
    let config = BalanceSettings {
        failure_penalty: Duration::from_millis(250),
        ..BalanceSettings::default()
    };
    let b = fleet.balance(Static::new(eps), config);
    settle(&b, 1).await;
    let rsp = b.clone().oneshot(get()).await.unwrap();
    assert_eq!(
        rsp.status(),
        500,
        "failures are classified, not turned into errors"
    );
    assert_eq!(
        b.endpoint_stats()[0].rtt_estimate,
        Duration::from_millis(250)
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_marks_an_endpoint_busy() {
    let fleet = Fleet::default();
    let mut busy = Answer::ok(1).status(429);
    busy.retry_after = Some(5);
    let eps = vec![
        // Far slower, but not busy.
        fleet.set("127.0.0.1:1", Answer::ok(100)),
        fleet.set("127.0.0.1:2", busy),
    ];
    // Make the 429 cheap so that only the busy mark keeps it away.
    let config = BalanceSettings {
        failure_penalty: Duration::ZERO,
        ..BalanceSettings::default()
    };
    let b = fleet.balance(Static::new(eps), config);
    settle(&b, 2).await;

    // Until one request has hit the busy endpoint, nothing is marked.
    while fleet.count("127.0.0.1:2") == 0 {
        b.clone().oneshot(get()).await.unwrap();
    }
    let marked_at = Instant::now();
    let stats = b.endpoint_stats();
    let s = stats
        .iter()
        .find(|s| s.address.to_string() == "127.0.0.1:2")
        .unwrap();
    assert_eq!(s.busy_for, Some(Duration::from_secs(5)));

    let before = fleet.count("127.0.0.1:2");
    while marked_at.elapsed() < Duration::from_millis(4900) {
        b.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(fleet.count("127.0.0.1:2"), before, "busy endpoint was used");

    // Once the mark expires it is chosen again (it is the cheaper one).
    tokio::time::sleep(Duration::from_millis(200)).await;
    fleet.set("127.0.0.1:2", Answer::ok(1));
    b.clone().oneshot(get()).await.unwrap();
    assert_eq!(fleet.count("127.0.0.1:2"), before + 1);
}

#[tokio::test(start_paused = true)]
async fn weights_split_light_traffic_roughly_in_proportion() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::ok(10)),
        fleet
            .set("127.0.0.1:3", Answer::ok(10))
            .with_weight(2.0)
            .unwrap(),
    ];
    let b = fleet.balance(Static::new(eps), BalanceSettings::default());
    settle(&b, 3).await;
    // Sequential: no in-flight differences, identical latencies.
    load(&b, 4000, 1).await;
    let (a, c) = (fleet.count("127.0.0.1:1"), fleet.count("127.0.0.1:3"));
    // Light traffic: weights tilt the split, load decides (module docs).
    let ratio = c as f64 / a as f64;
    assert!(
        ratio > 1.05,
        "weight-2 / weight-1 share = {ratio} ({c} / {a})"
    );
}

#[tokio::test(start_paused = true)]
async fn weights_scale_the_in_flight_share() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet
            .set("127.0.0.1:2", Answer::ok(10))
            .with_weight(3.0)
            .unwrap(),
    ];
    // Room for all 400 on either endpoint: the split is the weights' doing.
    let settings = BalanceSettings {
        endpoint_max_in_flight: 400,
        ..BalanceSettings::default()
    };
    let b = fleet.balance(Static::new(eps), settings);
    settle(&b, 2).await;
    let futures: Vec<_> = (0..400).map(|_| start(&b)).collect();
    let stats = b.endpoint_stats();
    let heavy = stats.iter().find(|s| s.weight == 3.0).unwrap().in_flight;
    assert!(
        (290..=310).contains(&heavy),
        "weight 3 of 4 carries {heavy} of 400"
    );
    join_all(futures).await;
}

#[tokio::test(start_paused = true)]
async fn new_endpoints_are_seeded_with_the_median() {
    let fleet = Fleet::default();
    let (handle, discover) = discover::dynamic();
    let b = fleet.balance::<Body, _>(discover, BalanceSettings::default());

    // The first endpoint starts at the default.
    handle.insert(fleet.set("127.0.0.1:1", Answer::ok(100)));
    settle(&b, 1).await;
    assert_eq!(
        b.endpoint_stats()[0].rtt_estimate,
        Duration::from_millis(30)
    );
    // One 100 ms answer is a peak: the estimate jumps to it.
    b.clone().oneshot(get()).await.unwrap();
    assert_eq!(
        b.endpoint_stats()[0].rtt_estimate,
        Duration::from_millis(100)
    );

    // Later ones start at the median of the set, not at the default.
    handle.insert(fleet.set("127.0.0.1:2", Answer::ok(1)));
    handle.insert(fleet.set("127.0.0.1:3", Answer::ok(1)));
    settle(&b, 3).await;
    for s in b.endpoint_stats() {
        assert_eq!(s.rtt_estimate, Duration::from_millis(100), "{}", s.address);
    }
}

#[tokio::test(start_paused = true)]
async fn seeds_respect_the_floor() {
    let fleet = Fleet::default();
    let config = BalanceSettings {
        default_rtt: Duration::ZERO,
        ..BalanceSettings::default()
    };
    let b = fleet.balance::<Body, _>(
        Static::new([fleet.set("127.0.0.1:1", Answer::ok(1))]),
        config,
    );
    settle(&b, 1).await;
    assert_eq!(b.endpoint_stats()[0].rtt_estimate, Duration::from_millis(1));
}

#[tokio::test(start_paused = true)]
async fn removed_endpoints_drain_and_get_nothing_new() {
    let fleet = Fleet::default();
    let (handle, discover) = discover::dynamic();
    let b = fleet.balance::<Body, _>(discover, BalanceSettings::default());
    handle.insert(fleet.set("127.0.0.1:1", Answer::ok(1000)));
    settle(&b, 1).await;

    // A slow request in flight on the only endpoint...
    let in_flight = tokio::spawn(b.clone().oneshot(get()));
    tokio::task::yield_now().await;
    assert_eq!(b.endpoint_stats()[0].in_flight, 1);

    // ...is replaced by another endpoint.
    handle.insert(fleet.set("127.0.0.1:2", Answer::ok(1)));
    handle.remove(&"127.0.0.1:1".parse().unwrap());
    settle_until(&b, |b| {
        b.endpoint_stats()[0].address.to_string() == "127.0.0.1:2"
    })
    .await;
    assert_eq!(b.endpoint_stats()[0].address.to_string(), "127.0.0.1:2");

    for _ in 0..50 {
        b.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(
        fleet.count("127.0.0.1:1"),
        1,
        "removed endpoint got new requests"
    );
    assert_eq!(fleet.count("127.0.0.1:2"), 50);
    // The in-flight request to the removed endpoint still completes.
    let rsp = in_flight.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_fails_after_the_wait() {
    let fleet = Fleet::default();
    let b = fleet.balance(Static::new([]), BalanceSettings::default());
    let start = Instant::now();
    let err = b.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(err.is_no_endpoints(), "{err}");
    assert_eq!(
        err.to_string(),
        "service \"test\": no endpoints available after waiting 3s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_takes_an_endpoint_that_appears() {
    let fleet = Fleet::default();
    let (handle, discover) = discover::dynamic();
    let b = fleet.balance::<Body, _>(discover, BalanceSettings::default());
    let start = Instant::now();
    let waiting = tokio::spawn(b.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    handle.insert(fleet.set("127.0.0.1:1", Answer::ok(5)));
    let rsp = waiting.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(start.elapsed(), Duration::from_millis(1005));
}

#[tokio::test(start_paused = true)]
async fn a_failing_factory_leaves_the_others_serving() {
    let fleet = Fleet::default();
    let mut inner = fleet.factory();
    let factory = move |ep: &Endpoint| {
        if ep.address().to_string() == "127.0.0.1:2" {
            return Err::<Svc, BoxError>("no client for you".into());
        }
        inner(ep)
    };
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(1)),
        fleet.set("127.0.0.1:2", Answer::ok(1)),
    ];
    let b = Balance::new(
        "test",
        Static::new(eps),
        factory,
        HttpClassify::default(),
        BalanceSettings::default(),
        EjectionSettings::default(),
    )
    .unwrap();
    settle(&b, 1).await;
    for _ in 0..10 {
        b.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(fleet.count("127.0.0.1:1"), 10);
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_keeps_the_last_set() {
    let fleet = Fleet::default();
    let ep = fleet.set("127.0.0.1:1", Answer::ok(1));
    let source = futures::stream::iter(vec![
        Ok(Change::Insert(ep.address().clone(), ep)),
        Err::<_, BoxError>("resolver exploded".into()),
    ])
    .chain(futures::stream::pending());
    let b = fleet.balance(source, BalanceSettings::default());
    settle(&b, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.len(), 1);
    b.clone().oneshot(get()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_ended_source_keeps_the_last_set() {
    let fleet = Fleet::default();
    let ep = fleet.set("127.0.0.1:1", Answer::ok(1));
    let source = futures::stream::iter(vec![Ok::<_, Infallible>(Change::Insert(
        ep.address().clone(),
        ep,
    ))]);
    let b = fleet.balance(source, BalanceSettings::default());
    settle(&b, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.clone().oneshot(get()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn random_choice_follows_weights_exactly() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet
            .set("127.0.0.1:2", Answer::ok(10))
            .with_weight(3.0)
            .unwrap(),
    ];
    let config = BalanceSettings {
        choice: Choice::Random,
        ..BalanceSettings::default()
    };
    let b = fleet.balance(Static::new(eps), config);
    settle(&b, 2).await;
    load(&b, 8000, 16).await;
    let heavy = fleet.count("127.0.0.1:2") as f64 / 8000.0;
    assert!((0.72..0.78).contains(&heavy), "weight 3 of 4 got {heavy}");
}

#[tokio::test(start_paused = true)]
async fn random_choice_ignores_load() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::ok(1000)),
    ];
    let config = BalanceSettings {
        choice: Choice::Random,
        ..BalanceSettings::default()
    };
    let b = fleet.balance(Static::new(eps), config);
    settle(&b, 2).await;
    load(&b, 400, 40).await;
    let slow = fleet.count("127.0.0.1:2");
    assert!(
        (150..250).contains(&slow),
        "random sent {slow} of 400 to the slow one"
    );
}

#[tokio::test]
async fn the_discovery_task_ends_with_the_balancer() {
    let fleet = Fleet::default();
    let (handle, discover) = discover::dynamic();
    let b = fleet.balance::<Body, _>(discover, BalanceSettings::default());
    let weak = Arc::downgrade(&b.shared);
    drop(b);
    assert!(weak.upgrade().is_none());
    // The task noticed and dropped its end: the handle still works, alone.
    handle.insert(Endpoint::parse("127.0.0.1:1").unwrap());
}

/// No jitter: ejection penalties are exact.
fn exact_ejection() -> EjectionSettings {
    EjectionSettings {
        jitter: 0.0,
        ..EjectionSettings::default()
    }
}

fn state_of(b: &Balance<Svc, HttpClassify>, addr: &str) -> EndpointStats {
    b.endpoint_stats()
        .into_iter()
        .find(|s| s.address.to_string() == addr)
        .unwrap()
}

/// Sends requests from `concurrency` workers for `duration` of (paused) time.
async fn load_for(b: &Balance<Svc, HttpClassify>, duration: Duration, concurrency: usize) {
    let until = Instant::now() + duration;
    drive(b, concurrency, |_| Instant::now() < until).await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_ejected_probed_and_restored() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::ok(10)),
        fleet.set("127.0.0.1:3", Answer::ok(10)),
        fleet.set("127.0.0.1:4", Answer::ok(10)),
    ];
    let b = fleet.balance_with(
        Static::new(eps),
        BalanceSettings::default(),
        exact_ejection(),
    );
    settle(&b, 4).await;
    load_for(&b, Duration::from_secs(2), 4).await;
    let healthy_share = fleet.count("127.0.0.1:4");
    assert!(
        healthy_share > 100,
        "it had its share before: {healthy_share}"
    );

    // It turns to 100 % 503: ejected within five failures...
    fleet.set("127.0.0.1:4", Answer::ok(1).status(503));
    let before = fleet.count("127.0.0.1:4");
    while !matches!(
        state_of(&b, "127.0.0.1:4").state,
        EndpointState::Ejected { .. }
    ) {
        b.clone().oneshot(get()).await.unwrap();
        assert!(
            Instant::now().elapsed() < Duration::from_secs(1),
            "never ejected"
        );
    }
    let failures = fleet.count("127.0.0.1:4") - before;
    assert!(failures <= 5, "ejected after {failures} failures");
    assert_eq!(state_of(&b, "127.0.0.1:4").ejections, 1);

    // ...and gets nothing but probes: one after 1 s, one 2 s later, one 4 s
    // after that (each failed probe doubles the penalty).
    let ejected_at = fleet.count("127.0.0.1:4");
    load_for(&b, Duration::from_millis(6_500), 4).await;
    let probes = fleet.count("127.0.0.1:4") - ejected_at;
    assert_eq!(
        probes, 2,
        "probes in 6.5 s after ejection (at ~1 s and ~3 s)"
    );
    assert_eq!(state_of(&b, "127.0.0.1:4").ejections, 3);

    // Healed: the next probe (due ~7 s after ejection) restores it, and
    // within a second after that it has its fair share again.
    fleet.set("127.0.0.1:4", Answer::ok(10));
    while state_of(&b, "127.0.0.1:4").state != EndpointState::Active {
        load_for(&b, Duration::from_millis(100), 4).await;
        assert!(
            state_of(&b, "127.0.0.1:4").ejections <= 3,
            "the healed probe failed"
        );
    }
    let restored_at = fleet.count("127.0.0.1:4");
    let others_at: u64 = (1..=3)
        .map(|p| fleet.count(&format!("127.0.0.1:{p}")))
        .sum();
    load_for(&b, Duration::from_secs(1), 4).await;
    let mine = fleet.count("127.0.0.1:4") - restored_at;
    let others: u64 = (1..=3)
        .map(|p| fleet.count(&format!("127.0.0.1:{p}")))
        .sum::<u64>()
        - others_at;
    let share = mine as f64 / (mine + others) as f64;
    assert!(
        share > 0.18,
        "share in the second after restoration: {share:.3}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_fleet_guard_keeps_half_the_endpoints_in_play() {
    let fleet = Fleet::default();
    let eps: Vec<_> = (1..=4)
        .map(|p| fleet.set(&format!("127.0.0.1:{p}"), Answer::ok(1).status(503)))
        .collect();
    let b = fleet.balance_with(
        Static::new(eps),
        BalanceSettings::default(),
        exact_ejection(),
    );
    settle(&b, 4).await;
    load_for(&b, Duration::from_millis(500), 2).await;
    let stats = b.endpoint_stats();
    let ejected = stats
        .iter()
        .filter(|s| s.state != EndpointState::Active)
        .count();
    assert_eq!(ejected, 2, "at most 50 % of 4 are ejected");
    // The two left in play keep getting traffic.
    let before: Vec<u64> = stats.iter().map(|s| s.requests).collect();
    load_for(&b, Duration::from_millis(200), 2).await;
    let after: Vec<u64> = b.endpoint_stats().iter().map(|s| s.requests).collect();
    assert!(after.iter().sum::<u64>() - before.iter().sum::<u64>() > 100);
}

#[tokio::test(start_paused = true)]
async fn panic_mode_uses_every_endpoint_when_too_few_are_left() {
    let fleet = Fleet::default();
    let eps: Vec<_> = (1..=2)
        .map(|p| fleet.set(&format!("127.0.0.1:{p}"), Answer::ok(1).status(503)))
        .collect();
    let mut ejection = exact_ejection();
    ejection.max_ejection_percent = 1.0;
    ejection.base_penalty = Duration::from_secs(60);
    let b = fleet.balance_with(Static::new(eps), BalanceSettings::default(), ejection);
    settle(&b, 2).await;
    load_for(&b, Duration::from_millis(200), 1).await;
    assert!(
        b.endpoint_stats()
            .iter()
            .all(|s| s.state != EndpointState::Active)
    );
    // Both ejected for a minute, yet both still get requests.
    let before = (fleet.count("127.0.0.1:1"), fleet.count("127.0.0.1:2"));
    load_for(&b, Duration::from_secs(1), 2).await;
    assert!(fleet.count("127.0.0.1:1") > before.0);
    assert!(fleet.count("127.0.0.1:2") > before.1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_does_not_block_the_next_one() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(1)),
        fleet.set("127.0.0.1:2", Answer::ok(1).status(503)),
    ];
    let b = fleet.balance_with(
        Static::new(eps),
        BalanceSettings::default(),
        exact_ejection(),
    );
    settle(&b, 2).await;
    while state_of(&b, "127.0.0.1:2").state == EndpointState::Active {
        b.clone().oneshot(get()).await.unwrap();
    }
    // The probe hangs; its caller gives up.
    fleet.set("127.0.0.1:2", Answer::ok(60_000));
    tokio::time::sleep(Duration::from_secs(2)).await;
    while state_of(&b, "127.0.0.1:2").state != EndpointState::Probing {
        let probe = start(&b);
        if state_of(&b, "127.0.0.1:2").state == EndpointState::Probing {
            drop(probe);
            break;
        }
        probe.await.unwrap();
    }
    assert!(
        matches!(
            state_of(&b, "127.0.0.1:2").state,
            EndpointState::Ejected { .. }
        ),
        "probe given back"
    );
    // The next probe goes out and, the endpoint healed, restores it.
    fleet.set("127.0.0.1:2", Answer::ok(1));
    while state_of(&b, "127.0.0.1:2").state != EndpointState::Active {
        b.clone().oneshot(get()).await.unwrap();
        assert!(
            state_of(&b, "127.0.0.1:2").ejections == 1,
            "a second ejection: the probe failed"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn ejection_can_be_turned_off() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(1)),
        fleet.set("127.0.0.1:2", Answer::ok(1).status(503)),
    ];
    // No penalty either: nothing but ejection could keep it away.
    let mut ejection = exact_ejection();
    ejection.enabled = false;
    let config = BalanceSettings {
        failure_penalty: Duration::ZERO,
        ..BalanceSettings::default()
    };
    let b = fleet.balance_with(Static::new(eps), config, ejection);
    settle(&b, 2).await;
    load_for(&b, Duration::from_secs(1), 2).await;
    assert_eq!(state_of(&b, "127.0.0.1:2").state, EndpointState::Active);
    assert!(
        fleet.count("127.0.0.1:2") > 100,
        "{}",
        fleet.count("127.0.0.1:2")
    );
}
