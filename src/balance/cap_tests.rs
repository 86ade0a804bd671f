//! The per-endpoint in-flight cap: an endpoint at its cap is passed over,
//! a request finding every endpoint full waits for a slot within
//! `endpoint_wait`, then is shed as `Overloaded`, a local verdict.

use std::time::Duration;

use futures::future::join_all;
use http::Request;
use tokio::time::Instant;
use tower::ServiceExt;

use super::*;
use crate::classify::{HttpClassify, Outcome, classify_transport_error};
use crate::discover::{self, Static};
use crate::error::Limit;
use crate::testing::{Answer, Fleet, settle_until};

type Body = http_body_util::Empty<bytes::Bytes>;
type Svc = crate::testing::Svc<Body>;

fn get() -> Request<Body> {
    Request::get("http://test/").body(Body::new()).unwrap()
}

fn capped(max: usize) -> BalanceSettings {
    BalanceSettings {
        endpoint_max_in_flight: max,
        ..BalanceSettings::default()
    }
}

fn in_flight(b: &Balance<Svc, HttpClassify>) -> Vec<usize> {
    let mut v: Vec<usize> = b.endpoint_stats().iter().map(|s| s.in_flight).collect();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn the_default_cap_is_256() {
    assert_eq!(BalanceSettings::default().endpoint_max_in_flight, 256);
    let bad = capped(0).validate().unwrap_err().to_string();
    assert!(bad.contains("endpoint_max_in_flight"), "{bad}");
}

#[tokio::test(start_paused = true)]
async fn a_full_endpoint_is_passed_over_whatever_its_cost() {
    let fleet = Fleet::default();
    // The fast endpoint would win every comparison, but holds 3 at most.
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::ok(500)),
    ];
    let b = fleet.balance(Static::new(eps), capped(3));
    settle_until(&b, |b| b.len() == 2).await;
    let started: Vec<_> = (0..6).map(|_| b.clone().call(get())).collect();
    assert_eq!(in_flight(&b), [3, 3]);
    for r in join_all(started).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(in_flight(&b), [0, 0]);
}

#[tokio::test(start_paused = true)]
async fn requests_over_the_cap_wait_for_freed_slots() {
    let fleet = Fleet::default();
    let eps = vec![fleet.set("127.0.0.1:1", Answer::ok(100))];
    let b = fleet.balance(Static::new(eps), capped(2));
    settle_until(&b, |b| b.len() == 1).await;
    let start = Instant::now();
    let all: Vec<_> = (0..5)
        .map(|_| tokio::spawn(b.clone().oneshot(get())))
        .collect();
    // Never more than the cap outstanding at the endpoint.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(in_flight(&b)[0] <= 2, "{:?}", in_flight(&b));
    }
    for r in join_all(all).await {
        assert_eq!(r.unwrap().unwrap().status(), 200);
    }
    // Two at a time, 100 ms each: three rounds.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(fleet.count("127.0.0.1:1"), 5);
}

#[tokio::test(start_paused = true)]
async fn a_request_finding_every_endpoint_full_is_shed_after_the_wait() {
    let fleet = Fleet::default();
    let eps = vec![fleet.set("127.0.0.1:1", Answer::ok(60_000))];
    let settings = BalanceSettings {
        endpoint_wait: Duration::from_millis(200),
        ..capped(1)
    };
    let b = fleet.balance(Static::new(eps), settings);
    settle_until(&b, |b| b.len() == 1).await;
    let _held = tokio::spawn(b.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let start = Instant::now();
    let err = b.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(
        err.limit(),
        Some(&Limit::EndpointInFlight {
            max: 1,
            waited: Duration::from_millis(200)
        })
    );
    assert_eq!(
        err.to_string(),
        "service \"test\": overloaded: every endpoint has 1 requests outstanding \
         (balancer.endpoint_max_in_flight); waited 200ms for one to finish"
    );
    // Shedding is this client's doing: no breaker or throttle counts it.
    assert_eq!(classify_transport_error(&err).outcome(), Outcome::Local);
    assert_eq!(
        fleet.count("127.0.0.1:1"),
        1,
        "the shed request was never sent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_endpoint_takes_a_waiting_request() {
    let fleet = Fleet::default();
    let (handle, discover) = discover::dynamic();
    handle.insert(fleet.set("127.0.0.1:1", Answer::ok(60_000)));
    let b = fleet.balance::<Body, _>(discover, capped(1));
    settle_until(&b, |b| b.len() == 1).await;
    let _held = tokio::spawn(b.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let waiting = tokio::spawn(b.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.insert(fleet.set("127.0.0.1:2", Answer::ok(5)));
    let rsp = waiting.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(fleet.count("127.0.0.1:2"), 1);
}
