//! A call cut off while it waits on an endpoint (by the retry layer's
//! per-try timeout or by the request's deadline) is the endpoint's
//! failure: with the defaults, a hung endpoint is ejected. A call
//! cancelled for any other reason (a hedge won, the caller left) is not.

use std::time::Duration;

use http::Request;
use tower::ServiceExt;

use super::*;
use crate::discover::Static;
use crate::facts::Deadline;
use crate::testing::{Answer, Fleet, settle_until};

type Body = http_body_util::Empty<bytes::Bytes>;

fn get_within(deadline: Deadline) -> Request<Body> {
    let mut req = Request::get("http://test/").body(Body::new()).unwrap();
    req.extensions_mut().insert(deadline);
    req
}

#[tokio::test(start_paused = true)]
async fn calls_cut_off_by_their_deadline_eject_a_hung_endpoint() {
    let fleet = Fleet::default();
    let eps = vec![fleet.set("127.0.0.1:1", Answer::ok(3_600_000))];
    // The deadline alone: stall detection would give these up first.
    let settings = BalanceSettings {
        stall_detection: false,
        ..BalanceSettings::default()
    };
    let b = fleet.balance(Static::new(eps), settings);
    settle_until(&b, |b| b.len() == 1).await;
    let stats = |b: &Balance<_, _>| b.endpoint_stats().remove(0);

    // Cancelled before their deadline: the endpoint is not blamed.
    for _ in 0..10 {
        let deadline = Deadline::after(Duration::from_secs(1));
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            b.clone().oneshot(get_within(deadline)),
        );
        assert!(cancelled.await.is_err());
    }
    assert_eq!((stats(&b).failures, stats(&b).timeouts), (0, 0));
    assert_eq!(stats(&b).state, EndpointState::Active);

    // Cut off at their deadline, as the deadline layer does: failures, and
    // five in a row eject the endpoint (the default).
    for i in 1..=5 {
        let deadline = Deadline::after(Duration::from_secs(1));
        let cut =
            tokio::time::timeout_at(deadline.instant(), b.clone().oneshot(get_within(deadline)));
        assert!(cut.await.is_err());
        assert_eq!(stats(&b).timeouts, i);
    }
    assert_eq!(stats(&b).failures, 5);
    assert!(
        matches!(stats(&b).state, EndpointState::Ejected { .. }),
        "{:?}",
        stats(&b).state
    );
}

fn request(method: http::Method) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("http://test/")
        .body(Body::new())
        .unwrap()
}

fn stats_of<S, C>(b: &Balance<S, C>, addr: &str) -> EndpointStats {
    b.endpoint_stats()
        .into_iter()
        .find(|s| s.address.to_string() == addr)
        .unwrap()
}

/// With the defaults, a GET waiting on an endpoint that answers nothing,
/// while another endpoint answers requests sent after the first should
/// have answered, is given up soon after the stall floor (1 s), as the
/// endpoint's failure, with an error the retry layer may send elsewhere.
#[tokio::test(start_paused = true)]
async fn a_get_on_a_hung_endpoint_is_given_up_after_the_stall_floor() {
    let fleet = Fleet::default();
    let (handle, discover) = crate::discover::dynamic();
    handle.insert(fleet.set("127.0.0.1:1", Answer::ok(3_600_000)));
    let b = fleet.balance::<Body, _>(discover, BalanceSettings::default());
    settle_until(&b, |b| b.len() == 1).await;
    let start = tokio::time::Instant::now();
    let stuck = tokio::spawn(b.clone().oneshot(request(http::Method::GET)));
    // The GET is on the hung endpoint before the other one appears.
    tokio::task::yield_now().await;
    assert_eq!(stats_of(&b, "127.0.0.1:1").in_flight, 1);
    handle.insert(fleet.set("127.0.0.1:2", Answer::ok(10)));
    settle_until(&b, |b| b.len() == 2).await;
    // Other traffic, answered by the healthy endpoint, until the stuck
    // GET is given up.
    let traffic = async {
        loop {
            let _ = b.clone().oneshot(request(http::Method::GET)).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    };
    let err = tokio::select! {
        result = stuck => result.unwrap().unwrap_err(),
        () = traffic => unreachable!(),
    };
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1200),
        "given up {waited:?} after it was sent"
    );
    let stalled = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<Stalled>())
        .unwrap_or_else(|| panic!("a Stalled error: {err}"));
    assert!(stalled.silent() >= Duration::from_secs(1));
    let s = stats_of(&b, "127.0.0.1:1");
    assert_eq!((s.failures, s.timeouts, s.in_flight), (1, 1, 0));
    assert_eq!(
        crate::classify::classify_transport_error(&err).retry(),
        crate::classify::Retry::IfIdempotent
    );
}

/// An endpoint alone, or a fleet that goes silent as a whole (everything
/// slowed down at once), is not judged stalled: nothing shows that it
/// should have answered. Its GETs wait for their answers.
#[tokio::test(start_paused = true)]
async fn a_fleet_silent_as_a_whole_is_not_stalled() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(5_000)),
        fleet.set("127.0.0.1:2", Answer::ok(5_000)),
    ];
    let b = fleet.balance(Static::new(eps), BalanceSettings::default());
    settle_until(&b, |b| b.len() == 2).await;
    let results =
        futures::future::join_all((0..10).map(|_| b.clone().oneshot(request(http::Method::GET))))
            .await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert!(b.endpoint_stats().iter().all(|s| s.timeouts == 0));
}

/// A POST is never given up (it may not be sent twice), but while it
/// waits on a silent endpoint past the threshold, that endpoint is passed
/// over: new requests go to the others.
#[tokio::test(start_paused = true)]
async fn a_stalled_endpoint_is_passed_over_and_its_post_waits() {
    let fleet = Fleet::default();
    let (handle, discover) = crate::discover::dynamic();
    handle.insert(fleet.set("127.0.0.1:2", Answer::ok(3_600_000)));
    let b = fleet.balance::<Body, _>(discover, BalanceSettings::default());
    settle_until(&b, |b| b.len() == 1).await;
    let waiting = tokio::spawn(b.clone().oneshot(request(http::Method::POST)));
    // The POST is on the hung endpoint before the other one appears.
    tokio::task::yield_now().await;
    assert_eq!(stats_of(&b, "127.0.0.1:2").in_flight, 1);
    // Slower than the hung endpoint looks (its 30 ms seed): only stall
    // detection keeps requests away from the hung one.
    handle.insert(fleet.set("127.0.0.1:1", Answer::ok(100)));
    settle_until(&b, |b| b.len() == 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = fleet.count("127.0.0.1:2");
    for _ in 0..20 {
        let rsp = b.clone().oneshot(request(http::Method::GET)).await.unwrap();
        assert_eq!(rsp.status(), 200);
    }
    assert_eq!(fleet.count("127.0.0.1:2"), before, "stalled: passed over");
    assert!(
        !waiting.is_finished(),
        "the POST still waits for its answer"
    );
    assert_eq!(stats_of(&b, "127.0.0.1:2").timeouts, 0);
}

/// A slow endpoint (20× the others) answers: it is not stalled, and its
/// requests complete there.
#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_is_not_stalled() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::ok(10)),
        fleet.set("127.0.0.1:3", Answer::ok(200)),
    ];
    let b = fleet.balance(Static::new(eps), BalanceSettings::default());
    settle_until(&b, |b| b.len() == 3).await;
    let results = futures::future::join_all((0..300).map(|_| {
        let b = b.clone();
        async move {
            b.oneshot(request(http::Method::GET))
                .await
                .map(|r| r.status())
        }
    }))
    .await;
    assert!(results.iter().all(|r| matches!(r, Ok(s) if *s == 200)));
    let slow = stats_of(&b, "127.0.0.1:3");
    assert!(slow.requests > 0, "the slow endpoint got requests");
    assert_eq!((slow.failures, slow.timeouts), (0, 0));
}

/// An endpoint whose connects are refused is out of the choice at once,
/// with failure accrual's backoff, not after a run of five failures; the
/// fleet guard still keeps half the set in play; a successful probe
/// restores it.
#[tokio::test(start_paused = true)]
async fn an_unreachable_endpoint_is_ejected_at_once_and_backs_off() {
    let fleet = Fleet::default();
    let eps = vec![
        fleet.set("127.0.0.1:1", Answer::ok(10)),
        fleet.set("127.0.0.1:2", Answer::refused()),
        fleet.set("127.0.0.1:3", Answer::refused()),
    ];
    let ejection = EjectionSettings {
        jitter: 0.0,
        ..EjectionSettings::default()
    };
    let b = fleet.balance_with(Static::new(eps), BalanceSettings::default(), ejection);
    settle_until(&b, |b| b.len() == 3).await;
    let start = tokio::time::Instant::now();
    // Requests until both refusing endpoints have been tried once.
    for _ in 0..50 {
        let _ = b.clone().oneshot(request(http::Method::GET)).await;
        if fleet.count("127.0.0.1:2") > 0 && fleet.count("127.0.0.1:3") > 0 {
            break;
        }
    }
    let (two, three) = (stats_of(&b, "127.0.0.1:2"), stats_of(&b, "127.0.0.1:3"));
    // One refusal ejects; the fleet guard (half of three, rounded down:
    // one) keeps the other in play.
    let ejected = [&two, &three]
        .iter()
        .filter(|s| matches!(s.state, EndpointState::Ejected { .. }))
        .count();
    assert_eq!(ejected, 1, "{two:?} {three:?}");
    let out = if matches!(two.state, EndpointState::Ejected { .. }) {
        &two
    } else {
        &three
    };
    assert_eq!(out.failures, 1, "ejected on its first refusal: {out:?}");
    // The state says what is left of the backoff: 1 s less the (paused)
    // time the requests above took since the ejection.
    let EndpointState::Ejected { probe_in } = out.state else {
        unreachable!()
    };
    assert!(
        probe_in <= Duration::from_secs(1) && probe_in >= Duration::from_secs(1) - start.elapsed(),
        "the first backoff is 1 s: {probe_in:?} left after {:?}",
        start.elapsed()
    );
}
