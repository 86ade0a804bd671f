//! The service breaker on paused time, over a backend whose every response
//! the test decides.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio_test::task::{Spawn, spawn};
use tower::ServiceExt;

use super::*;
use crate::testing::{paused_runtime, problems};

type Reply = Result<Response<()>, io::Error>;
type BackendFuture = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

/// Calls waiting for their answer, by call number.
type Pending = VecDeque<(usize, oneshot::Sender<Reply>)>;

/// A backend that counts its calls and answers each one when the test says.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    pending: Arc<Mutex<Pending>>,
}

impl Backend {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Answers call `id` (if it is still waiting).
    fn answer(&self, id: usize, reply: Reply) {
        let mut pending = self.pending.lock().unwrap();
        if let Some(i) = pending.iter().position(|(i, _)| *i == id) {
            let (_, tx) = pending.remove(i).unwrap();
            let _ = tx.send(reply);
        }
    }
}

impl Service<Request<()>> for Backend {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> BackendFuture {
        let id = self.calls.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().push_back((id, tx));
        Box::pin(async move {
            match rx.await {
                Ok(reply) => reply.map_err(BoxError::from),
                Err(_) => Err("the test dropped the request".into()),
            }
        })
    }
}

fn status(code: u16) -> Reply {
    Ok(Response::builder().status(code).body(()).unwrap())
}

fn reset() -> Reply {
    Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
}

type Svc = Breaker<Backend, HttpClassify>;
type Fut = ResponseFuture<BackendFuture, HttpClassify>;

/// One request through the breaker: its future, and the backend's id for it
/// when it got that far.
struct Call {
    future: Spawn<Fut>,
    id: Option<usize>,
}

struct Harness {
    backend: Backend,
    svc: Svc,
    handle: BreakerHandle,
}

impl Harness {
    fn new(layer: BreakerLayer) -> Self {
        let backend = Backend::default();
        let svc = layer.layer(backend.clone());
        let handle = layer.handle();
        Harness {
            backend,
            svc,
            handle,
        }
    }

    fn start(&mut self) -> Call {
        let before = self.backend.calls();
        // The backend is always ready.
        let mut ready = spawn(self.svc.ready());
        assert!(ready.poll().is_ready());
        drop(ready);
        let mut future = spawn(self.svc.call(Request::new(())));
        let id = (self.backend.calls() > before).then_some(before);
        if id.is_some() {
            assert!(future.poll().is_pending(), "the backend has not answered");
        }
        Call { future, id }
    }

    /// Answers `call` and returns its outcome.
    fn finish(&mut self, mut call: Call, reply: Reply) -> Result<Response<()>, Error> {
        if let Some(id) = call.id {
            self.backend.answer(id, reply);
        }
        match call.future.poll() {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("answered, yet pending"),
        }
    }

    /// A whole request answered with `reply`.
    fn send(&mut self, reply: Reply) -> Result<Response<()>, Error> {
        let call = self.start();
        self.finish(call, reply)
    }

    fn send_n(&mut self, n: usize, reply: impl Fn() -> Reply) {
        for _ in 0..n {
            let _ = self.send(reply());
        }
    }

    fn state(&self) -> BreakerState {
        self.handle.state()
    }
}

fn users() -> BreakerLayer {
    users_with(BreakerSettings::default())
}

fn users_with(settings: BreakerSettings) -> BreakerLayer {
    BreakerLayer::new("users", settings).unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn is_open(state: BreakerState) -> bool {
    matches!(state, BreakerState::Open { .. })
}

fn retry_in(err: &Error) -> Duration {
    match err {
        Error::CircuitOpen { retry_in, .. } => *retry_in,
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
}

/// A harness whose breaker just opened (at 20 failures).
fn opened(layer: BreakerLayer) -> Harness {
    let mut h = Harness::new(layer);
    h.send_n(20, || status(500));
    assert!(is_open(h.state()));
    h
}

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
async fn a_cancelled_probe_returns_its_permit() {
    let mut h = opened(users());
    tokio::time::advance(secs(5)).await;
    let probe = h.start();
    assert!(h.send(status(200)).unwrap_err().is_circuit_open());
    drop(probe);
    assert_eq!(h.handle.core.probes_in_flight(), 0);
    assert_eq!(
        h.state(),
        BreakerState::HalfOpen,
        "a cancel decides nothing"
    );

    let calls = h.backend.calls();
    let probe = h.start();
    assert_eq!(h.backend.calls(), calls + 1, "the next request probes");
    let _ = h.finish(probe, status(200));
    assert_eq!(h.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_counts_nothing_while_closed() {
    let mut h = Harness::new(users());
    h.send_n(19, || status(500));
    for _ in 0..10 {
        drop(h.start());
    }
    assert_eq!(h.state(), BreakerState::Closed);
    let _ = h.send(status(500));
    assert!(is_open(h.state()));
}

/// A call the deadline cuts off while it waits on the service is a
/// failure: a hung service opens the breaker with the defaults, with no
/// per-try timeout. A call cancelled before its deadline counts nothing.
#[tokio::test(start_paused = true)]
async fn a_call_cut_off_by_its_deadline_is_a_failure() {
    let mut h = Harness::new(users());
    let start_with_deadline = |h: &mut Harness| {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(crate::facts::Deadline::after(secs(1)));
        let mut ready = spawn(h.svc.ready());
        assert!(ready.poll().is_ready());
        drop(ready);
        let mut future = spawn(h.svc.call(req));
        assert!(future.poll().is_pending(), "the service never answers");
        future
    };
    // Cancelled before the deadline (a hedge won, the caller left).
    for _ in 0..25 {
        drop(start_with_deadline(&mut h));
    }
    assert_eq!(h.state(), BreakerState::Closed, "a cancel decides nothing");
    // Cut off at the deadline, as the deadline layer above does.
    let mut cut = Vec::new();
    for _ in 0..20 {
        cut.push(start_with_deadline(&mut h));
    }
    tokio::time::advance(secs(1)).await;
    drop(cut);
    assert!(is_open(h.state()), "{:?}", h.state());
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

#[tokio::test(start_paused = true)]
async fn every_service_from_one_layer_shares_one_breaker() {
    let layer = users_with(BreakerSettings {
        volume_threshold: 2,
        ..BreakerSettings::default()
    });
    let a = Backend::default();
    let b = Backend::default();
    let mut svc_a = layer.layer(a.clone());
    let svc_b = layer.layer(b.clone());
    for _ in 0..2 {
        let call = svc_a.ready().await.unwrap().call(Request::new(()));
        a.answer(a.calls() - 1, status(500));
        let _ = call.await;
    }
    assert!(is_open(svc_b.handle().state()));
    let err = svc_b.clone().oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(b.calls(), 0);

    // A clone, even with another classifier, is the same breaker.
    let other = layer.clone().classify(HttpClassify::default());
    assert!(is_open(other.handle().state()));
    assert_eq!(other.handle().transitions(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_palisade_error_from_below_is_not_wrapped_again() {
    let backend = tower::service_fn(|_: Request<()>| async {
        Err::<Response<()>, _>(Error::NoEndpoints {
            service: "below".into(),
            waited: secs(1),
        })
    });
    let svc = users().layer(backend);
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is_no_endpoints());
    assert_eq!(err.service(), "below");
}

#[tokio::test(start_paused = true)]
async fn a_custom_classifier_decides_failures() {
    #[derive(Clone)]
    struct NotFoundFails;
    impl Classify<Response<()>> for NotFoundFails {
        fn classify_response(&self, rsp: &Response<()>) -> crate::classify::Class {
            if rsp.status() == 404 {
                crate::classify::Class::failure(crate::classify::Retry::Never)
            } else {
                crate::classify::Class::SUCCESS
            }
        }
        fn classify_error(&self, _: &(dyn std::error::Error + 'static)) -> crate::classify::Class {
            crate::classify::Class::failure(crate::classify::Retry::Never)
        }
    }
    let backend = Backend::default();
    let layer = users_with(BreakerSettings {
        volume_threshold: 3,
        ..BreakerSettings::default()
    })
    .classify(NotFoundFails);
    let mut svc = layer.layer(backend.clone());
    for code in [500, 500, 500, 404, 404] {
        let call = svc.ready().await.unwrap().call(Request::new(()));
        backend.answer(backend.calls() - 1, status(code));
        let _ = call.await;
    }
    assert_eq!(svc.handle().state(), BreakerState::Closed, "2 of 5 failed");
    let call = svc.ready().await.unwrap().call(Request::new(()));
    backend.answer(backend.calls() - 1, status(404));
    let _ = call.await;
    assert!(is_open(svc.handle().state()), "3 of 6 failed");
}

// ---- property test ------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Status5xx,
    Err,
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    Complete { newest: bool, answer: Answer },
    Cancel { index: usize },
    Advance(Duration),
}

fn op() -> impl Strategy<Value = Op> {
    let answer = prop_oneof![Just(Answer::Ok), Just(Answer::Status5xx), Just(Answer::Err)];
    prop_oneof![
        4 => Just(Op::Start),
        4 => (any::<bool>(), answer).prop_map(|(newest, answer)| Op::Complete { newest, answer }),
        1 => any::<usize>().prop_map(|index| Op::Cancel { index }),
        2 => (0u64..6000).prop_map(|ms| Op::Advance(Duration::from_millis(ms))),
    ]
}

/// Runs `ops` against a breaker, checking the invariants after every step.
async fn run(ops: Vec<Op>, probes: u32, successes_only: bool) -> Result<(), TestCaseError> {
    let sleep = secs(5);
    let layer = users_with(BreakerSettings {
        enabled: true,
        window: secs(10),
        volume_threshold: 3,
        error_threshold: 0.5,
        sleep_window: sleep,
        half_open_probes: probes,
    });
    let mut h = Harness::new(layer);
    let mut in_flight: VecDeque<Call> = VecDeque::new();
    let mut failed = false;

    for op in ops {
        match op {
            Op::Start => {
                let before = h.state();
                let probing = h.handle.core.probes_in_flight();
                let calls = h.backend.calls();
                let mut call = h.start();
                let admitted = h.backend.calls() > calls;
                match before {
                    BreakerState::Open { .. } => {
                        prop_assert!(!admitted, "open, yet the backend was called");
                    }
                    BreakerState::Closed => prop_assert!(admitted, "closed, yet rejected"),
                    BreakerState::HalfOpen => prop_assert_eq!(
                        admitted,
                        probing < probes,
                        "half-open with {} of {} probes in flight",
                        probing,
                        probes
                    ),
                }
                if admitted {
                    in_flight.push_back(call);
                } else {
                    match call.future.poll() {
                        Poll::Ready(Err(err)) => prop_assert!(err.is_circuit_open()),
                        other => prop_assert!(false, "rejected, yet {:?}", other.map(|_| ())),
                    }
                }
            }
            Op::Complete { newest, answer } => {
                let call = if newest {
                    in_flight.pop_back()
                } else {
                    in_flight.pop_front()
                };
                if let Some(call) = call {
                    let answer = if successes_only { Answer::Ok } else { answer };
                    let reply = match answer {
                        Answer::Ok => status(200),
                        Answer::Status5xx => status(500),
                        Answer::Err => reset(),
                    };
                    failed |= !matches!(answer, Answer::Ok);
                    let result = h.finish(call, reply);
                    prop_assert_eq!(result.is_ok(), !matches!(answer, Answer::Err));
                }
            }
            Op::Cancel { index } => {
                if !in_flight.is_empty() {
                    let i = index % in_flight.len();
                    drop(in_flight.remove(i));
                }
            }
            Op::Advance(by) => tokio::time::advance(by).await,
        }

        let probing = h.handle.core.probes_in_flight();
        prop_assert!(probing <= probes, "{} probes in flight", probing);
        prop_assert!(
            probing as usize <= in_flight.len(),
            "{} probes counted, {} requests in flight",
            probing,
            in_flight.len()
        );
        if !failed {
            prop_assert_eq!(h.state(), BreakerState::Closed);
            prop_assert_eq!(h.handle.transitions(), 0);
        }
    }

    // Never wedged: once nothing is in flight and the sleep window passed,
    // the next request goes through.
    in_flight.clear();
    tokio::time::advance(sleep).await;
    let calls = h.backend.calls();
    let call = h.start();
    prop_assert_eq!(h.backend.calls(), calls + 1, "wedged in {:?}", h.state());
    let _ = h.finish(call, status(200));
    prop_assert_eq!(h.state(), BreakerState::Closed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_for_any_sequence(
        ops in proptest::collection::vec(op(), 0..200),
        probes in 1u32..=3,
    ) {
        paused_runtime().block_on(run(ops, probes, false))?;
    }

    #[test]
    fn only_successes_never_open(
        ops in proptest::collection::vec(op(), 0..200),
        probes in 1u32..=3,
    ) {
        paused_runtime().block_on(run(ops, probes, true))?;
    }
}

#[test]
fn the_breaker_and_its_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Svc>();
    send_sync::<BreakerLayer>();
    send_sync::<BreakerHandle>();
    fn send<T: Send>() {}
    send::<Fut>();
}

/// Threads racing through admission, outcomes and cancellation on the real
/// clock, with a zero sleep window so every state is visited often.
#[test]
fn concurrent_use_never_exceeds_the_probe_limit_or_wedges() {
    let layer = users_with(BreakerSettings {
        volume_threshold: 1,
        sleep_window: Duration::ZERO,
        half_open_probes: 2,
        ..BreakerSettings::default()
    });
    let handle = layer.handle();
    let core = handle.core.clone();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let core = &core;
            s.spawn(move || {
                let mut seed = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..20_000 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if let Ok(permit) = core.admit() {
                        assert!(core.probes_in_flight() <= 2);
                        match seed % 3 {
                            0 => permit.record(false),
                            1 => permit.record(true),
                            _ => drop(permit),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(core.probes_in_flight(), 0);
    assert!(core.admit().is_ok(), "wedged in {:?}", handle.state());
    assert!(
        handle.transitions() > 10,
        "{} transitions",
        handle.transitions()
    );
}

#[test]
fn debug_shows_the_state_not_the_counters() {
    let layer = users_with(BreakerSettings {
        volume_threshold: 7,
        ..BreakerSettings::default()
    });
    let debug = format!("{:?}", layer.handle());
    assert!(
        debug.starts_with("Breaker { service: \"users\", state: Closed, transitions: 0"),
        "{debug}"
    );
    assert!(debug.contains("volume_threshold: 7"), "{debug}");
}

// ---- settings -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_handle_taken_right_after_new_sees_every_service_of_the_layer() {
    let layer = users_with(BreakerSettings {
        volume_threshold: 2,
        ..BreakerSettings::default()
    });
    let handle = layer.handle();
    // Services from a clone with another classifier: the same breaker.
    let backend = Backend::default();
    let mut svc = layer
        .clone()
        .classify(HttpClassify::default())
        .layer(backend.clone());
    for _ in 0..2 {
        let call = svc.ready().await.unwrap().call(Request::new(()));
        backend.answer(backend.calls() - 1, status(500));
        let _ = call.await;
    }
    assert!(is_open(handle.state()), "{:?}", handle.state());
    assert_eq!(handle.transitions(), 1);
    assert!(is_open(layer.handle().state()));
    let err = layer
        .layer(Backend::default())
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert!(err.is_circuit_open());
}

#[tokio::test(start_paused = true)]
async fn a_disabled_breaker_never_trips() {
    let mut h = Harness::new(users_with(BreakerSettings {
        enabled: false,
        volume_threshold: 1,
        ..BreakerSettings::default()
    }));
    // (In batches under Tokio's cooperative budget: the test never yields.)
    h.send_n(50, || status(500));
    tokio::task::yield_now().await;
    h.send_n(50, reset);
    tokio::time::advance(secs(5)).await;
    h.send_n(50, || status(503));
    assert_eq!(h.state(), BreakerState::Closed);
    assert_eq!(h.handle.transitions(), 0);
    assert_eq!(h.backend.calls(), 150, "every request reached the backend");
}

#[test]
fn the_default_settings_are_valid() {
    assert_eq!(BreakerSettings::default().validate(), Ok(()));
    let layer = users();
    assert_eq!(layer.settings(), &BreakerSettings::default());
}

#[test]
fn each_bad_value_is_refused_at_its_field() {
    let bad = |change: &dyn Fn(&mut BreakerSettings)| {
        let mut settings = BreakerSettings::default();
        change(&mut settings);
        problems(settings.validate())
    };
    for t in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert_eq!(
            bad(&|s| s.error_threshold = t),
            [format!(
                "error_threshold: must be greater than 0 and at most 1, got {t}"
            )],
        );
    }
    assert_eq!(
        bad(&|s| s.half_open_probes = 0),
        ["half_open_probes: must be at least 1"],
    );
    assert_eq!(
        bad(&|s| s.window = Duration::ZERO),
        ["window: must be greater than 0"],
    );
    // The edges are fine.
    let edges = BreakerSettings {
        enabled: false,
        window: Duration::from_nanos(1),
        volume_threshold: 0,
        error_threshold: 1.0,
        sleep_window: Duration::ZERO,
        half_open_probes: 1,
    };
    assert_eq!(edges.validate(), Ok(()));
}

#[test]
fn several_bad_values_give_several_problems() {
    let err = BreakerLayer::new(
        "users",
        BreakerSettings {
            window: Duration::ZERO,
            error_threshold: 2.0,
            half_open_probes: 0,
            ..BreakerSettings::default()
        },
    )
    .unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["window", "error_threshold", "half_open_probes"]);
    assert_eq!(
        err.to_string(),
        "window: must be greater than 0; \
         error_threshold: must be greater than 0 and at most 1, got 2; \
         half_open_probes: must be at least 1"
    );
}

/// Settings files: durations as strings, unknown fields refused.
#[cfg(all(feature = "serde", feature = "file"))]
mod settings_files {
    use super::*;

    #[test]
    fn durations_are_strings_and_settings_round_trip() {
        let s: BreakerSettings = toml::from_str(
            "window = \"30s\"\nsleep_window = \"1m 30s\"\nerror_threshold = 0.25\nenabled = false",
        )
        .unwrap();
        assert_eq!(
            s,
            BreakerSettings {
                enabled: false,
                window: secs(30),
                error_threshold: 0.25,
                sleep_window: secs(90),
                ..BreakerSettings::default()
            }
        );
        let text = toml::to_string(&s).unwrap();
        assert!(text.contains("sleep_window = \"1m 30s\""), "{text}");
        assert_eq!(toml::from_str::<BreakerSettings>(&text).unwrap(), s);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""window":"30s""#), "{json}");
        assert_eq!(serde_json::from_str::<BreakerSettings>(&json).unwrap(), s);
        assert_eq!(
            toml::from_str::<BreakerSettings>("").unwrap(),
            BreakerSettings::default()
        );
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let err = toml::from_str::<BreakerSettings>("sleep_windw = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `sleep_windw`"), "{err}");
        let err = serde_json::from_str::<BreakerSettings>(r#"{"treshold": 0.5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `treshold`"), "{err}");
    }
}
