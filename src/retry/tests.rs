//! The retry layer over the real balancer and in-memory endpoints, on paused
//! time.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::*;
use crate::balance::{Balance, BalanceSettings};
use crate::deadline::{DeadlineLayer, DeadlineSettings, header};
use crate::discover::{Address, Static};
use crate::testing::{Answer, Fleet, Svc, settle_until};

type Body = Full<Bytes>;
type Inner = Balance<Svc<ReplayBody<Body>>, HttpClassify>;

fn balance(fleet: &Fleet, endpoints: &[(&str, Answer)]) -> Inner {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(a, ans)| fleet.set(a, *ans))
        .collect();
    fleet.balance(Static::new(eps), BalanceSettings::default())
}

async fn ready(b: &Inner, n: usize) {
    settle_until(b, |b| b.len() == n).await;
}

fn req(method: Method, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("http://test/")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// A deadline layer with this default timeout.
/// A retry layer with `settings` and no backoff between attempts.
fn no_backoff(settings: RetrySettings) -> RetryLayer {
    let settings = RetrySettings {
        backoff_base: Duration::ZERO,
        backoff_cap: Duration::ZERO,
        ..settings
    };
    RetryLayer::new("test", settings).unwrap()
}

fn deadline(timeout: Duration) -> DeadlineLayer {
    let settings = DeadlineSettings {
        timeout: Some(timeout),
        ..DeadlineSettings::default()
    };
    DeadlineLayer::new("test", settings).unwrap()
}

fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

/// The retry goes to the other endpoint because the first was tried, not
/// because its failure made it look worse: the failing endpoint is the
/// faster one, failures add no latency penalty and eject nothing, so P2C
/// alone would pick it again.
#[tokio::test(start_paused = true)]
async fn a_503_is_retried_on_another_endpoint() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(1).status(503)),
        fleet.set("127.0.0.1:2", Answer::ok(40)),
    ];
    let settings = BalanceSettings {
        failure_penalty: Duration::ZERO,
        ..BalanceSettings::default()
    };
    let ejection = crate::balance::EjectionSettings {
        enabled: false,
        ..Default::default()
    };
    let b = fleet.balance_with(Static::new(eps), settings, ejection);
    ready(&b, 2).await;
    let svc = RetryLayer::new("test", RetrySettings::default())
        .unwrap()
        .layer(b);
    for _ in 0..20 {
        let rsp = svc
            .clone()
            .oneshot(req(Method::GET, "hello"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
    }
    // Every request that hit the failing endpoint was retried on the other.
    assert_eq!(fleet.count("127.0.0.1:2"), 20);
    assert!(
        fleet.count("127.0.0.1:1") > 0,
        "the failing endpoint was tried"
    );
    let received = fleet.received();
    assert!(received.iter().all(|(_, body, _)| body == "hello"));
}

#[tokio::test(start_paused = true)]
async fn retries_avoid_every_endpoint_already_tried() {
    let fleet = Fleet::default();
    let b = balance(
        &fleet,
        &[
            ("127.0.0.1:1", Answer::ok(1).status(503)),
            ("127.0.0.1:2", Answer::ok(1).status(503)),
            ("127.0.0.1:3", Answer::ok(1).status(503)),
        ],
    );
    ready(&b, 3).await;
    let svc = RetryLayer::new("test", RetrySettings::default())
        .unwrap()
        .layer(b);
    let rsp = svc.oneshot(req(Method::GET, "")).await.unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(
        rsp.extensions().get::<RetryStop>(),
        Some(&RetryStop::Attempts(3))
    );
    let mut hit: Vec<Address> = fleet.received().into_iter().map(|(a, ..)| a).collect();
    hit.sort();
    assert_eq!(
        hit,
        vec![
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:3")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_single_endpoint_is_retried_when_it_is_all_there_is() {
    let fleet = Fleet::default();
    let b = balance(&fleet, &[("127.0.0.1:1", Answer::ok(1).status(502))]);
    ready(&b, 1).await;
    let rsp = RetryLayer::new("test", RetrySettings::default())
        .unwrap()
        .layer(b)
        .oneshot(req(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 502);
    assert_eq!(fleet.count("127.0.0.1:1"), 3);
}

#[tokio::test(start_paused = true)]
async fn post_is_not_retried_on_503() {
    let fleet = Fleet::default();
    let b = balance(&fleet, &[("127.0.0.1:1", Answer::ok(1).status(503))]);
    ready(&b, 1).await;
    let svc = RetryLayer::new("test", RetrySettings::default())
        .unwrap()
        .layer(b);
    for _ in 0..20 {
        let rsp = svc.clone().oneshot(req(Method::POST, "x")).await.unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(
            rsp.extensions().get::<RetryStop>(),
            Some(&RetryStop::Method)
        );
    }
    assert_eq!(fleet.total(), 20, "no POST was sent twice");
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_when_the_connection_was_refused() {
    let fleet = Fleet::default();
    // The healthy endpoint is slower than the seed, so the refusing one is
    // chosen at least once whichever goes first.
    let b = balance(
        &fleet,
        &[
            ("127.0.0.1:1", Answer::refused()),
            ("127.0.0.1:2", Answer::ok(50)),
        ],
    );
    ready(&b, 2).await;
    let svc = RetryLayer::new("test", RetrySettings::default())
        .unwrap()
        .layer(b);
    for _ in 0..20 {
        let rsp = svc
            .clone()
            .oneshot(req(Method::POST, "payload"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
    }
    assert!(
        fleet.count("127.0.0.1:1") > 0,
        "the refusing endpoint was never tried"
    );
    assert_eq!(fleet.count("127.0.0.1:2"), 20);
    let bodies: Vec<_> = fleet.received().into_iter().map(|(_, b, _)| b).collect();
    assert!(bodies.iter().all(|b| b == "payload"), "{bodies:?}");
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_returns_the_real_failure_and_says_why() {
    let fleet = Fleet::default();
    let b = balance(&fleet, &[("127.0.0.1:1", Answer::ok(1).status(503))]);
    ready(&b, 1).await;
    // No floor, one retry per ten requests.
    let budget = RetryBudget::from_settings(&BudgetSettings {
        ratio: 0.1,
        min_per_sec: 0,
        ttl: Duration::from_secs(10),
    })
    .unwrap();
    let svc = RetryLayer::new("test", RetrySettings::default())
        .unwrap()
        .budget(budget.clone())
        .layer(b);
    let mut stops = Vec::new();
    for _ in 0..10 {
        let rsp = svc.clone().oneshot(req(Method::GET, "")).await.unwrap();
        assert_eq!(rsp.status(), 503, "the caller gets the real failure");
        stops.push(rsp.extensions().get::<RetryStop>().copied());
    }
    // The tenth deposit pays for one retry; that retry's failure finds the
    // budget empty again.
    assert_eq!(fleet.count("127.0.0.1:1"), 11, "ten requests, one retry");
    assert!(
        stops.iter().all(|s| *s == Some(RetryStop::Budget)),
        "{stops:?}"
    );
    assert_eq!(budget.balance(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn errors_carry_the_reason_they_were_not_retried() {
    let fleet = Fleet::default();
    let b = balance(&fleet, &[("127.0.0.1:1", Answer::refused())]);
    ready(&b, 1).await;
    let svc = RetryLayer::new(
        "test",
        RetrySettings {
            max_attempts: 2,
            ..Default::default()
        },
    )
    .unwrap()
    .layer(b);
    let err = svc.oneshot(req(Method::GET, "")).await.unwrap_err();
    assert_eq!(err.retry_stop(), Some(RetryStop::Attempts(2)));
    assert_eq!(err.endpoint(), Some(&addr("127.0.0.1:1")));
    assert_eq!(
        err.to_string(),
        "service \"test\": request to endpoint 127.0.0.1:1 failed (not retried: 2 attempts made)"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_with_full_jitter_and_is_capped() {
    let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
    for retry in 1..=6u32 {
        let ceiling = Duration::from_millis(10 * (1 << (retry - 1))).min(Duration::from_millis(50));
        let draws: Vec<Duration> = (0..2000).map(|_| b.delay(retry)).collect();
        assert!(draws.iter().all(|d| *d <= ceiling), "retry {retry}");
        // Full jitter: the draws spread over [0, ceiling].
        let low = draws.iter().filter(|d| **d < ceiling / 4).count();
        let high = draws.iter().filter(|d| **d > ceiling * 3 / 4).count();
        assert!(
            low > 300 && high > 300,
            "retry {retry}: {low} low, {high} high"
        );
    }
    assert_eq!(
        Backoff::new(Duration::ZERO, Duration::ZERO).delay(3),
        Duration::ZERO
    );
    assert!(Backoff::new(Duration::MAX, Duration::MAX).delay(40) <= Duration::MAX);
}

#[tokio::test(start_paused = true)]
async fn backoff_never_sleeps_past_the_deadline() {
    let fleet = Fleet::default();
    let b = balance(
        &fleet,
        &[
            ("127.0.0.1:1", Answer::ok(10).status(503)),
            ("127.0.0.1:2", Answer::ok(10).status(503)),
        ],
    );
    ready(&b, 2).await;
    let retry = RetryLayer::new(
        "test",
        RetrySettings {
            max_attempts: 10,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .unwrap();
    let deadline = deadline(Duration::from_millis(1500));
    let svc = deadline.layer(retry.layer(b));
    let start = Instant::now();
    let rsp = svc.oneshot(req(Method::GET, "")).await.unwrap();
    // Attempts go on while a backoff fits; then the last 503 comes back
    // before the deadline, not a DeadlineExceeded after it.
    assert_eq!(rsp.status(), 503);
    assert_eq!(
        rsp.extensions().get::<RetryStop>(),
        Some(&RetryStop::Deadline)
    );
    assert!(start.elapsed() < Duration::from_millis(1500));
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_on_an_endpoint_that_cannot_answer_in_time() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10).status(503)),
        fleet.set("127.0.0.1:2", Answer::ok(400)),
    ];
    // No failure penalty and no ejection: the failing endpoint stays the
    // cheaper one, so it gets every first attempt.
    let config = BalanceSettings {
        failure_penalty: Duration::ZERO,
        ..BalanceSettings::default()
    };
    let ejection = crate::balance::EjectionSettings {
        enabled: false,
        ..Default::default()
    };
    let b: Inner = fleet.balance_with(Static::new(eps), config, ejection);
    ready(&b, 2).await;
    // Teach the balancer that :2 takes 400 ms.
    while fleet.count("127.0.0.1:2") == 0 {
        let direct = req(Method::GET, "").map(|body| ReplayBody::new(body, 0));
        let _ = b.clone().oneshot(direct).await;
    }
    let on_2 = fleet.count("127.0.0.1:2");

    let retry = no_backoff(RetrySettings::default());
    let deadline = deadline(Duration::from_millis(200));
    let svc = deadline.layer(retry.layer(b));
    for _ in 0..20 {
        let rsp = svc.clone().oneshot(req(Method::GET, "")).await.unwrap();
        // The caller gets the failure that prompted the retry, with the
        // reason the retry never started.
        assert_eq!(rsp.status(), 503);
        assert_eq!(
            rsp.extensions().get::<RetryStop>(),
            Some(&RetryStop::Deadline)
        );
    }
    assert_eq!(
        fleet.count("127.0.0.1:2"),
        on_2,
        "a retry that could not finish in time was started"
    );
}

#[tokio::test(start_paused = true)]
async fn the_per_try_timeout_moves_on_to_another_endpoint() {
    let fleet = Fleet::default();
    let b = balance(
        &fleet,
        &[
            ("127.0.0.1:1", Answer::ok(10_000)),
            ("127.0.0.1:2", Answer::ok(10)),
        ],
    );
    ready(&b, 2).await;
    let svc = no_backoff(RetrySettings {
        per_try_timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .layer(b);
    for _ in 0..10 {
        let start = Instant::now();
        let rsp = svc.clone().oneshot(req(Method::GET, "")).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert!(
            start.elapsed() <= Duration::from_millis(110),
            "{:?}",
            start.elapsed()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_never_answers_is_ejected_through_its_per_try_timeouts() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(60_000)),
        fleet.set("127.0.0.1:2", Answer::ok(10)),
        fleet.set("127.0.0.1:3", Answer::ok(10)),
    ];
    // Two consecutive failures eject: after its first failure (and its
    // penalty) the balancer rarely draws the hung endpoint again, so the
    // default five could take longer than the test runs; what is tested is
    // that timed-out attempts count towards ejection at all.
    let ejection = crate::balance::EjectionSettings {
        consecutive_failures: 2,
        ..Default::default()
    };
    let b = fleet.balance_with(Static::new(eps), BalanceSettings::default(), ejection);
    ready(&b, 3).await;
    let svc = no_backoff(RetrySettings {
        per_try_timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .layer(b.clone());
    // The hung endpoint is tried now and then (new endpoints are seeded
    // with the median, and its cut-off calls are its only news); each time
    // the per-try timeout cuts it off, that is a failure of the endpoint.
    let hung = || {
        b.endpoint_stats()
            .into_iter()
            .find(|e| e.address == addr("127.0.0.1:1"))
            .unwrap()
    };
    // Sixteen callers at once, so the fast endpoints carry load and the hung
    // one keeps being drawn until it is ejected.
    let mut n = 0;
    while n < 4000 && hung().state == crate::balance::EndpointState::Active {
        let calls = (0..16).map(|_| svc.clone().oneshot(req(Method::GET, "")));
        for rsp in futures::future::join_all(calls).await {
            assert_eq!(rsp.unwrap().status(), 200);
        }
        n += 16;
    }
    let hung = hung();
    assert_eq!(
        hung.failures, hung.requests,
        "every attempt it got was cut off, and counted: {hung:?}"
    );
    assert_ne!(
        hung.state,
        crate::balance::EndpointState::Active,
        "still active after {n} requests: {hung:?}"
    );
    assert!(hung.failures >= 2, "{hung:?}");
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_on_the_last_attempt_is_an_error_naming_it() {
    let fleet = Fleet::default();
    let b = balance(&fleet, &[("127.0.0.1:1", Answer::ok(10_000))]);
    ready(&b, 1).await;
    let svc = RetryLayer::new(
        "test",
        RetrySettings {
            max_attempts: 2,
            per_try_timeout: Some(Duration::from_millis(100)),
            ..Default::default()
        },
    )
    .unwrap()
    .layer(b);
    let start = Instant::now();
    let err = svc.oneshot(req(Method::GET, "")).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(500));
    let source = std::error::Error::source(&err).unwrap();
    assert_eq!(source.to_string(), "attempt timed out after 100ms");
    assert_eq!(err.retry_stop(), Some(RetryStop::Attempts(2)));
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_sent_once_and_not_retried() {
    let fleet = Fleet::default();
    let b = balance(&fleet, &[("127.0.0.1:1", Answer::ok(1).status(503))]);
    ready(&b, 1).await;
    let svc = RetryLayer::new(
        "test",
        RetrySettings {
            body_limit: 4,
            ..Default::default()
        },
    )
    .unwrap()
    .layer(b);
    let rsp = svc
        .clone()
        .oneshot(req(Method::PUT, "12345"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(rsp.extensions().get::<RetryStop>(), Some(&RetryStop::Body));
    assert_eq!(fleet.received().len(), 1);
    assert_eq!(
        fleet.received()[0].1,
        "12345",
        "sent whole, never truncated"
    );

    // At the limit it is replayed.
    let rsp = svc.oneshot(req(Method::PUT, "1234")).await.unwrap();
    assert_eq!(
        rsp.extensions().get::<RetryStop>(),
        Some(&RetryStop::Attempts(3))
    );
    let replays: Vec<_> = fleet
        .received()
        .into_iter()
        .skip(1)
        .map(|(_, b, _)| b)
        .collect();
    assert_eq!(replays, vec!["1234", "1234", "1234"]);
}

#[tokio::test(start_paused = true)]
async fn each_attempt_carries_the_deadline_that_remains() {
    let fleet = Fleet::default();
    let b = balance(
        &fleet,
        &[
            ("127.0.0.1:1", Answer::ok(100).status(503)),
            ("127.0.0.1:2", Answer::ok(100).status(503)),
        ],
    );
    ready(&b, 2).await;
    let retry = no_backoff(RetrySettings::default());
    let deadline = deadline(Duration::from_secs(1));
    let svc = deadline.layer(retry.layer(b));
    svc.oneshot(req(Method::GET, "")).await.unwrap();
    let sent: Vec<u64> = fleet
        .received()
        .iter()
        .map(|(_, _, h)| {
            h[header::DEADLINE_HEADER]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    // 1 s minus the 5 ms reserve, then 100 ms less per attempt.
    assert_eq!(sent, vec![995, 895, 795]);
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_is_not_retried() {
    let fleet = Fleet::default();
    let b = balance(&fleet, &[]);
    let svc = RetryLayer::new("test", RetrySettings::default())
        .unwrap()
        .layer(b);
    let start = Instant::now();
    let err = svc.oneshot(req(Method::GET, "")).await.unwrap_err();
    assert!(err.is_no_endpoints());
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "waited once, not three times"
    );
}

#[tokio::test(start_paused = true)]
async fn idempotent_methods() {
    for m in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ] {
        assert!(is_idempotent(&m), "{m}");
    }
    for m in [Method::POST, Method::PATCH, Method::CONNECT] {
        assert!(!is_idempotent(&m), "{m}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_amplification_when_everything_fails() {
    let fleet = Fleet::default();
    let b = balance(
        &fleet,
        &[
            ("127.0.0.1:1", Answer::ok(1).status(503)),
            ("127.0.0.1:2", Answer::ok(1).status(503)),
        ],
    );
    ready(&b, 2).await;
    let svc = RetryLayer::new("test", RetrySettings::default())
        .unwrap()
        .layer(b);
    // A steady 100 requests a second for a minute, every attempt failing.
    let (rate, seconds) = (100u32, 60u32);
    let mut requests = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    for _ in 0..rate * seconds {
        tick.tick().await;
        requests.push(tokio::spawn(svc.clone().oneshot(req(Method::GET, ""))));
    }
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().status(), 503);
    }
    let per_request = fleet.total() as f64 / f64::from(rate * seconds);
    eprintln!("all-503 at {rate}/s: {per_request:.4} attempts per request");
    // Finagle's bound: 1 + ratio + min_per_sec / rate, within 2 %.
    let bound = 1.0 + 0.2 + 10.0 / f64::from(rate);
    assert!(
        per_request <= bound * 1.02,
        "{per_request} attempts per request (bound {bound})"
    );
    assert!(
        per_request >= 1.2,
        "the budget allowed too little: {per_request}"
    );
}
