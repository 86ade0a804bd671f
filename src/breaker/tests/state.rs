//! The state machine: closed, open, half-open, and the counting window.

use super::*;

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_volume_threshold_even_at_100_percent_errors() {
    let mut h = Harness::new(users());
    for i in 0..19 {
        let rsp = h.send(status(500)).unwrap();
        assert_eq!(rsp.status(), 500, "request {i} went through");
    }
    assert_eq!(h.backend.calls(), 19);
    assert_eq!(h.state(), BreakerState::Closed);
    assert_eq!(h.handle.transitions(), 0);

    // The 20th failure reaches the volume threshold.
    let err = h.send(reset()).unwrap_err();
    assert!(matches!(err, Error::Inner { .. }), "{err:?}");
    assert_eq!(err.service(), "users");
    assert_eq!(h.state(), BreakerState::Open { retry_in: secs(5) });
    assert_eq!(h.handle.transitions(), 1);
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_error_threshold_and_not_below() {
    // 9 failures in 20: 45 %, below the 50 % threshold.
    let mut h = Harness::new(users());
    h.send_n(11, || status(200));
    h.send_n(9, || status(503));
    assert_eq!(h.state(), BreakerState::Closed);
    // The 10th failure in 21: 47.6 %, still below.
    let _ = h.send(status(500));
    assert_eq!(h.state(), BreakerState::Closed);
    // 11 in 22: 50 %.
    let _ = h.send(reset());
    assert!(is_open(h.state()));

    // Custom thresholds; 4xx are successes, 429 a failure.
    let mut h = Harness::new(users_with(BreakerSettings {
        volume_threshold: 4,
        error_threshold: 0.75,
        ..BreakerSettings::default()
    }));
    h.send_n(1, || status(404));
    h.send_n(2, || status(429));
    assert_eq!(h.state(), BreakerState::Closed, "3 outcomes < volume 4");
    let _ = h.send(status(200));
    assert_eq!(h.state(), BreakerState::Closed, "2 of 4 < 0.75");
    h.send_n(2, || status(500));
    assert_eq!(h.state(), BreakerState::Closed, "4 of 6 < 0.75");
    let _ = h.send(status(500));
    assert_eq!(h.state(), BreakerState::Closed, "5 of 7 < 0.75");
    let _ = h.send(status(500));
    assert!(is_open(h.state()), "6 of 8 = 0.75");
}

#[tokio::test(start_paused = true)]
async fn a_window_of_successes_never_opens_even_at_the_lowest_thresholds() {
    let mut h = Harness::new(users_with(BreakerSettings {
        volume_threshold: 0,
        error_threshold: f64::MIN_POSITIVE,
        ..BreakerSettings::default()
    }));
    h.send_n(50, || status(200));
    assert_eq!(h.state(), BreakerState::Closed);
    let _ = h.send(status(500));
    assert!(is_open(h.state()), "one failure is enough");
}

#[tokio::test(start_paused = true)]
async fn only_a_failure_trips_the_breaker() {
    // A case proptest found: the window is over both thresholds after a
    // success (2 failures in 3 at volume 3), but a success does not open
    // the breaker; the next failure does.
    let mut h = Harness::new(users_with(BreakerSettings {
        volume_threshold: 3,
        ..BreakerSettings::default()
    }));
    h.send_n(2, || status(500));
    let _ = h.send(status(200));
    assert_eq!(h.state(), BreakerState::Closed);
    let _ = h.send(status(500));
    assert!(is_open(h.state()), "3 failures in 4");
}

#[tokio::test(start_paused = true)]
async fn open_fails_fast_without_calling_the_backend() {
    let mut h = opened(users());
    let calls = h.backend.calls();
    let err = h.send(status(200)).unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(
        err.to_string(),
        "service \"users\": circuit breaker open; next probe in 5s"
    );
    tokio::time::advance(Duration::from_millis(3500)).await;
    for _ in 0..100 {
        let err = h.send(status(200)).unwrap_err();
        assert_eq!(retry_in(&err), Duration::from_millis(1500));
        assert_eq!(err.service(), "users");
    }
    assert_eq!(h.backend.calls(), calls, "no request reached the backend");
    assert_eq!(
        h.state(),
        BreakerState::Open {
            retry_in: Duration::from_millis(1500)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn after_the_sleep_window_one_probe_goes_and_others_wait() {
    let mut h = opened(users());
    tokio::time::advance(secs(5)).await;
    assert_eq!(h.state(), BreakerState::HalfOpen);
    let calls = h.backend.calls();

    let probe = h.start();
    assert!(probe.id.is_some(), "the probe reached the backend");
    assert_eq!(h.handle.core.probes_in_flight(), 1);
    for _ in 0..10 {
        let err = h.send(status(200)).unwrap_err();
        assert_eq!(retry_in(&err), Duration::from_millis(100));
    }
    assert_eq!(h.backend.calls(), calls + 1, "only the probe went through");
    assert_eq!(h.state(), BreakerState::HalfOpen);
    drop(probe);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_the_configured_number_of_probes() {
    let mut h = opened(users_with(BreakerSettings {
        half_open_probes: 3,
        ..BreakerSettings::default()
    }));
    tokio::time::advance(secs(5)).await;
    let probes: Vec<_> = (0..3).map(|_| h.start()).collect();
    assert!(probes.iter().all(|p| p.id.is_some()));
    assert_eq!(h.handle.core.probes_in_flight(), 3);
    assert!(h.send(status(200)).unwrap_err().is_circuit_open());

    // The first outcome decides; the others' are ignored.
    let mut probes = probes.into_iter();
    let first = probes.next().unwrap();
    assert_eq!(h.finish(first, status(200)).unwrap().status(), 200);
    assert_eq!(h.state(), BreakerState::Closed);
    for p in probes {
        let _ = h.finish(p, status(500));
    }
    assert_eq!(h.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_success_closes_with_fresh_counts() {
    let mut h = opened(users());
    tokio::time::advance(secs(5)).await;
    let probe = h.start();
    assert_eq!(h.finish(probe, status(204)).unwrap().status(), 204);
    assert_eq!(h.state(), BreakerState::Closed);
    assert_eq!(h.handle.transitions(), 3, "open, half-open, closed");

    // The 20 failures that opened it are still inside the 10 s window, but
    // closing forgot them: 19 more do not reach the volume threshold.
    h.send_n(19, || status(500));
    assert_eq!(h.state(), BreakerState::Closed);
    let _ = h.send(status(500));
    assert!(is_open(h.state()));
}

#[tokio::test(start_paused = true)]
async fn a_probe_failure_reopens_for_a_new_sleep_window() {
    let mut h = opened(users());
    tokio::time::advance(secs(5)).await;
    let probe = h.start();
    tokio::time::advance(secs(1)).await;
    let err = h.finish(probe, reset()).unwrap_err();
    assert!(matches!(err, Error::Inner { .. }));
    assert_eq!(h.state(), BreakerState::Open { retry_in: secs(5) });
    assert_eq!(h.handle.transitions(), 3, "open, half-open, open");

    let calls = h.backend.calls();
    tokio::time::advance(Duration::from_millis(4999)).await;
    assert_eq!(
        retry_in(&h.send(status(200)).unwrap_err()),
        Duration::from_millis(1)
    );
    assert_eq!(h.backend.calls(), calls);
    tokio::time::advance(Duration::from_millis(1)).await;
    // A 5xx probe fails too.
    let probe = h.start();
    assert!(probe.id.is_some());
    assert_eq!(h.finish(probe, status(503)).unwrap().status(), 503);
    assert_eq!(h.state(), BreakerState::Open { retry_in: secs(5) });
}

#[tokio::test(start_paused = true)]
async fn window_counts_expire_with_time() {
    let twenty_seconds = || {
        users_with(BreakerSettings {
            window: secs(20),
            ..BreakerSettings::default()
        })
    };
    let mut h = Harness::new(users());
    h.send_n(19, || status(500));
    tokio::time::advance(secs(10)).await;
    let _ = h.send(status(500));
    assert_eq!(h.state(), BreakerState::Closed, "the 19 expired");

    // Expiry is a tenth of the window at a time.
    let mut h = Harness::new(twenty_seconds());
    h.send_n(10, || status(500));
    tokio::time::advance(secs(12)).await;
    h.send_n(9, || status(500));
    tokio::time::advance(secs(7)).await;
    let _ = h.send(status(500));
    assert!(is_open(h.state()), "20 failures within 20 s");

    let mut h = Harness::new(twenty_seconds());
    h.send_n(10, || status(500));
    tokio::time::advance(secs(12)).await;
    h.send_n(9, || status(500));
    tokio::time::advance(secs(8)).await;
    let _ = h.send(status(500));
    assert_eq!(h.state(), BreakerState::Closed, "the first 10 expired");
}

#[tokio::test(start_paused = true)]
async fn an_outcome_from_before_the_breaker_opened_is_ignored() {
    let mut h = Harness::new(users());
    let early = h.start();
    h.send_n(20, || status(500));
    assert!(is_open(h.state()));
    tokio::time::advance(secs(5)).await;
    let probe = h.start();
    let _ = h.finish(early, status(500));
    assert_eq!(
        h.state(),
        BreakerState::HalfOpen,
        "the late failure decided nothing"
    );
    let _ = h.finish(probe, status(200));
    assert_eq!(h.state(), BreakerState::Closed);
}
