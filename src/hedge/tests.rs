//! Hedging on paused Tokio time: every latency here is virtual, so these
//! tests are exact about when things happen.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tokio_test::task;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::balance::{BalanceSettings, Tried};
use crate::breaker::{BreakerLayer, BreakerSettings, BreakerState};
use crate::discover::Static;
use crate::error::BoxError;
use crate::testing::{Answer, Fleet, problems, settle_until};

type Body = ReplayBody<Full<Bytes>>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How one scripted call answers.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    Error,
}

/// What became of one scripted call.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    method: Method,
    finished: bool,
    dropped: bool,
}

#[derive(Default)]
struct ScriptState {
    /// Answers for the next calls, in order; then `default`.
    next: VecDeque<(Duration, Reply)>,
    default: Option<(Duration, Reply)>,
    calls: Vec<Call>,
}

/// An endpoint whose calls answer as scripted, and which records every call
/// and whether its future finished or was dropped first.
#[derive(Clone, Default)]
struct Script(Arc<Mutex<ScriptState>>);

/// Marks a call dropped if its future goes away before it finished.
struct DropGuard {
    script: Script,
    call: usize,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let mut s = self.script.0.lock().unwrap();
        let call = &mut s.calls[self.call];
        if !call.finished {
            call.dropped = true;
        }
    }
}

impl Script {
    fn new(answers: impl IntoIterator<Item = (u64, Reply)>) -> Script {
        let script = Script::default();
        script.0.lock().unwrap().next = answers.into_iter().map(|(t, r)| (ms(t), r)).collect();
        script
    }

    /// Every call after the scripted ones answers 200 after `latency`.
    fn set_default(&self, latency: Duration) {
        self.0.lock().unwrap().default = Some((latency, Reply::Status(200)));
    }

    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().calls.clone()
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Body>,
        Response = Response<()>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<()>, BoxError>> + Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static {
        let script = self.clone();
        service_fn(move |req: Request<Body>| {
            let script = script.clone();
            let (n, (latency, reply)) = {
                let mut s = script.0.lock().unwrap();
                let answer = s
                    .next
                    .pop_front()
                    .or(s.default)
                    .expect("an answer scripted for every call");
                s.calls.push(Call {
                    at: Instant::now(),
                    method: req.method().clone(),
                    finished: false,
                    dropped: false,
                });
                (s.calls.len() - 1, answer)
            };
            async move {
                let guard = DropGuard {
                    script: script.clone(),
                    call: n,
                };
                tokio::time::sleep(latency).await;
                script.0.lock().unwrap().calls[n].finished = true;
                drop(guard);
                match reply {
                    Reply::Status(status) => Ok(Response::builder()
                        .status(status)
                        .header("x-call", n)
                        .body(())
                        .unwrap()),
                    Reply::Error => Err::<_, BoxError>("scripted error".into()),
                }
            }
        })
    }
}

fn request(method: Method) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("http://test/")
        .body(ReplayBody::new(
            Full::new(Bytes::from_static(b"hello")),
            1024,
        ))
        .unwrap()
}

fn get() -> Request<Body> {
    request(Method::GET)
}

fn call_index(rsp: &Response<()>) -> usize {
    rsp.headers()["x-call"].to_str().unwrap().parse().unwrap()
}

/// A budget that never runs out in these tests.
fn plenty() -> RetryBudget {
    RetryBudget::new(Duration::from_secs(10), 1000, 1.0)
}

/// A layer with these settings and budget.
fn layer(settings: HedgeSettings, budget: RetryBudget) -> HedgeLayer {
    HedgeLayer::with_budget("test", settings, budget).unwrap()
}

fn fixed_settings(delay: u64) -> HedgeSettings {
    HedgeSettings {
        delay: HedgeDelay::Fixed(ms(delay)),
        ..HedgeSettings::default()
    }
}

fn fixed(delay: u64) -> HedgeLayer {
    layer(fixed_settings(delay), plenty())
}

#[tokio::test(start_paused = true)]
async fn the_backup_goes_exactly_after_the_delay_and_the_loser_is_dropped() {
    let script = Script::new([(1000, Reply::Status(200)), (10, Reply::Status(200))]);
    let layer = fixed(50);
    let hedges = layer.handle();
    let svc = layer.layer(script.service());
    let start = Instant::now();
    let mut fut = task::spawn(svc.oneshot(get()));

    assert_pending!(fut.poll());
    assert_eq!(script.calls().len(), 1);
    tokio::time::advance(ms(49)).await;
    assert_pending!(fut.poll());
    assert_eq!(script.calls().len(), 1, "not before the delay");
    tokio::time::advance(ms(1)).await;
    assert_pending!(fut.poll());
    let calls = script.calls();
    assert_eq!(calls.len(), 2, "the backup goes at 50 ms");
    assert_eq!(calls[1].at - start, ms(50));

    tokio::time::advance(ms(10)).await;
    let rsp = assert_ready_ok!(fut.poll());
    assert_eq!(call_index(&rsp), 1, "the backup answered first");
    let calls = script.calls();
    assert!(calls[0].dropped, "the first request was cancelled");
    assert!(calls[1].finished);
    let stats = hedges.stats();
    assert_eq!((stats.sent, stats.won), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_first_request_can_still_win() {
    let script = Script::new([(70, Reply::Status(200)), (100, Reply::Status(200))]);
    let layer = fixed(50);
    let hedges = layer.handle();
    let start = Instant::now();
    let rsp = layer.layer(script.service()).oneshot(get()).await.unwrap();
    assert_eq!(call_index(&rsp), 0);
    assert_eq!(start.elapsed(), ms(70));
    let calls = script.calls();
    assert!(calls[1].dropped, "the backup was cancelled");
    assert_eq!((hedges.stats().sent, hedges.stats().won), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn an_answer_before_the_delay_sends_nothing_more() {
    let script = Script::new([(30, Reply::Status(200))]);
    let layer = fixed(50);
    let hedges = layer.handle();
    let rsp = layer.layer(script.service()).oneshot(get()).await.unwrap();
    assert_eq!(call_index(&rsp), 0);
    tokio::time::sleep(ms(500)).await;
    assert_eq!(script.calls().len(), 1);
    let stats = hedges.stats();
    assert_eq!(stats.sent, 0);
    assert!(HedgeSkip::ALL.iter().all(|r| stats.skipped(*r) == 0));
}

#[tokio::test(start_paused = true)]
async fn the_default_budget_allows_one_hedge_per_twenty_requests() {
    let script = Script::default();
    script.set_default(ms(100));
    // The default budget: 5 %, no floor.
    let layer = HedgeLayer::new("test", fixed_settings(10)).unwrap();
    let hedges = layer.handle();
    let svc = layer.layer(script.service());
    for _ in 0..40 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    let stats = hedges.stats();
    // Request 20 brings the balance to 1.0, request 40 to 1.0 again.
    assert_eq!(stats.sent, 2);
    assert_eq!(stats.skipped(HedgeSkip::Budget), 38);
    assert_eq!(script.calls().len(), 42);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_sends_no_hedge() {
    let script = Script::default();
    script.set_default(ms(100));
    let layer = layer(
        fixed_settings(10),
        RetryBudget::new(Duration::from_secs(10), 0, 0.0),
    );
    let hedges = layer.handle();
    let svc = layer.layer(script.service());
    for _ in 0..50 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(hedges.stats().sent, 0);
    assert_eq!(hedges.stats().skipped(HedgeSkip::Budget), 50);
    assert_eq!(script.calls().len(), 50);
}

#[tokio::test(start_paused = true)]
async fn only_idempotent_requests_with_replayable_bodies_are_hedged() {
    let script = Script::default();
    script.set_default(ms(100));
    let layer = fixed(10);
    let hedges = layer.handle();
    let svc = layer.layer(script.service());

    svc.clone().oneshot(request(Method::POST)).await.unwrap();
    svc.clone().oneshot(request(Method::PATCH)).await.unwrap();
    assert_eq!(script.calls().len(), 2);
    assert_eq!(hedges.stats().skipped(HedgeSkip::Method), 2);

    // 100 bytes against a 10-byte replay limit: never replayable.
    let big = ReplayBody::new(Full::new(Bytes::from(vec![b'x'; 100])), 10);
    svc.clone()
        .oneshot(Request::put("http://test/").body(big).unwrap())
        .await
        .unwrap();
    // A handle whose body was moved out.
    let gone = Request::get("http://test/")
        .body(ReplayBody::<Full<Bytes>>::empty())
        .unwrap();
    svc.clone().oneshot(gone).await.unwrap();
    assert_eq!(script.calls().len(), 4);
    assert_eq!(hedges.stats().skipped(HedgeSkip::Body), 2);

    // Idempotent methods other than GET are hedged.
    for method in [Method::PUT, Method::DELETE, Method::HEAD, Method::OPTIONS] {
        svc.clone().oneshot(request(method)).await.unwrap();
    }
    assert_eq!(hedges.stats().sent, 4);
    assert_eq!(script.calls().len(), 12);
    assert!(script.calls()[4..].iter().all(|c| c.method != Method::POST));
}

#[tokio::test(start_paused = true)]
async fn no_hedge_when_the_deadline_is_too_close() {
    let script = Script::default();
    script.set_default(ms(100));
    let layer = fixed(50);
    let hedges = layer.handle();
    let svc = layer.layer(script.service());

    // At 50 ms only 10 ms remain: less than the delay.
    let mut req = get();
    req.extensions_mut().insert(Deadline::after(ms(60)));
    svc.clone().oneshot(req).await.unwrap();
    assert_eq!(script.calls().len(), 1);
    assert_eq!(hedges.stats().skipped(HedgeSkip::Deadline), 1);

    // 150 ms remain: hedged.
    let mut req = get();
    req.extensions_mut().insert(Deadline::after(ms(200)));
    svc.clone().oneshot(req).await.unwrap();
    assert_eq!(script.calls().len(), 3);
    assert_eq!(hedges.stats().sent, 1);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_while_the_breaker_is_not_closed() {
    // Open a breaker: one 503 over a volume threshold of 1.
    let settings = BreakerSettings {
        volume_threshold: 1,
        ..BreakerSettings::default()
    };
    let breaker = BreakerLayer::new("test", settings).unwrap();
    let failing = service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::builder().status(503).body(()).unwrap())
    });
    breaker
        .layer(failing)
        .oneshot(Request::new(()))
        .await
        .unwrap();
    let handle = breaker.handle();
    assert!(matches!(handle.state(), BreakerState::Open { .. }));

    let script = Script::default();
    script.set_default(ms(100));
    let layer = fixed(10).breaker(handle.clone());
    let hedges = layer.handle();
    let svc = layer.layer(script.service());
    svc.clone().oneshot(get()).await.unwrap();
    // Past the sleep window: half-open, still no extra load.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(script.calls().len(), 2);
    assert_eq!(hedges.stats().skipped(HedgeSkip::Breaker), 2);
    assert_eq!(hedges.stats().sent, 0);
}

#[tokio::test(start_paused = true)]
async fn the_percentile_delay_follows_observed_latencies() {
    let script = Script::default();
    // No hedges: only first requests, at known latencies.
    let settings = HedgeSettings {
        delay: HedgeDelay::Percentile(0.95),
        min_samples: 100,
        fallback_delay: ms(100),
        ..HedgeSettings::default()
    };
    let layer = layer(settings, RetryBudget::new(Duration::from_secs(10), 0, 0.0));
    let hedges = layer.handle();
    let svc = layer.layer(script.service());
    let run = |n: usize, latency: u64| {
        script.set_default(ms(latency));
        let svc = svc.clone();
        async move {
            for _ in 0..n {
                svc.clone().oneshot(get()).await.unwrap();
            }
        }
    };
    let within = |d: Duration, target: u64| {
        // Rounded up to the top of a bucket 1/16 wide.
        d >= ms(target) && d <= ms(target) * 17 / 16
    };

    assert_eq!(hedges.delay(), ms(100), "the fallback until 100 samples");
    run(99, 10).await;
    assert_eq!(hedges.delay(), ms(100));
    run(17, 10).await;
    assert!(within(hedges.delay(), 10), "{:?}", hedges.delay());

    // Slower: the p95 moves up with them.
    run(400, 40).await;
    assert!(within(hedges.delay(), 40), "{:?}", hedges.delay());

    // Quiet for longer than the window: the fallback again, then the new
    // latency.
    tokio::time::advance(Duration::from_secs(20)).await;
    run(1, 20).await;
    assert_eq!(hedges.delay(), ms(100));
    run(120, 20).await;
    assert!(within(hedges.delay(), 20), "{:?}", hedges.delay());
    assert_eq!(hedges.stats().samples, 121);
}

#[tokio::test(start_paused = true)]
async fn hedges_at_the_observed_p95() {
    let script = Script::default();
    let layer = layer(HedgeSettings::default(), plenty());
    let hedges = layer.handle();
    let svc = layer.layer(script.service());
    script.set_default(ms(10));
    for _ in 0..112 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    let delay = hedges.delay();
    assert!(delay >= ms(10) && delay < ms(11), "{delay:?}");
    assert_eq!(
        hedges.stats().sent,
        0,
        "answers at 10 ms beat a delay of {delay:?}"
    );

    // A slow one is hedged at the p95, and the backup's answer wins.
    let n = script.calls().len();
    script.0.lock().unwrap().next =
        [(ms(500), Reply::Status(200)), (ms(10), Reply::Status(200))].into();
    let start = Instant::now();
    let rsp = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(call_index(&rsp), n + 1);
    // Tokio's timers tick in whole milliseconds.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= delay + ms(10) && elapsed <= delay + ms(11),
        "{elapsed:?}"
    );
    // The loser counts with the time it ran (above the delay).
    assert_eq!(hedges.stats().samples, 113);
}

#[tokio::test(start_paused = true)]
async fn a_failure_waits_for_the_other_request() {
    // The first fails after the backup went: the backup's answer is returned.
    let script = Script::new([(80, Reply::Status(503)), (100, Reply::Status(200))]);
    let layer = fixed(50);
    let hedges = layer.handle();
    let start = Instant::now();
    let rsp = layer.layer(script.service()).oneshot(get()).await.unwrap();
    assert_eq!((rsp.status().as_u16(), call_index(&rsp)), (200, 1));
    assert_eq!(start.elapsed(), ms(150));
    assert_eq!(hedges.stats().won, 1);

    // The backup fails fast: the first request's answer is awaited.
    let script = Script::new([(100, Reply::Status(200)), (5, Reply::Error)]);
    let layer = fixed(50);
    let start = Instant::now();
    let rsp = layer.layer(script.service()).oneshot(get()).await.unwrap();
    assert_eq!(call_index(&rsp), 0);
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(layer.handle().stats().won, 0);

    // Both fail: the later failure is returned, when it arrives.
    let script = Script::new([(80, Reply::Status(503)), (100, Reply::Error)]);
    let start = Instant::now();
    let err = fixed(50)
        .layer(script.service())
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "scripted error");
    assert_eq!(start.elapsed(), ms(150));

    // A failure before the delay is returned at once (retrying is the retry
    // layer's job), and nothing more is sent.
    let script = Script::new([(20, Reply::Status(503))]);
    let start = Instant::now();
    let rsp = fixed(50)
        .layer(script.service())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(start.elapsed(), ms(20));
    tokio::time::sleep(ms(100)).await;
    assert_eq!(script.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_made_from_budget_ratio() {
    let script = Script::default();
    script.set_default(ms(100));
    let settings = HedgeSettings {
        budget_ratio: 0.1,
        ..fixed_settings(10)
    };
    let layer = HedgeLayer::new("test", settings).unwrap();
    let hedges = layer.handle();
    let svc = layer.layer(script.service());
    for _ in 0..40 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    // Every tenth request brings the balance to 1.0.
    assert_eq!(hedges.stats().sent, 4);
    assert_eq!(hedges.stats().skipped(HedgeSkip::Budget), 36);
}

#[tokio::test(start_paused = true)]
async fn a_budget_given_to_with_budget_is_shared() {
    let script = Script::default();
    script.set_default(ms(100));
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 1.0);
    let layer = HedgeLayer::with_budget("test", fixed_settings(10), budget.clone()).unwrap();
    let svc = layer.layer(script.service());
    // Not hedged, but each deposits a token into the caller's budget.
    for _ in 0..3 {
        svc.clone().oneshot(request(Method::POST)).await.unwrap();
    }
    assert_eq!(budget.balance(), 3.0);
    assert_eq!(layer.hedge_budget().balance(), 3.0);
    assert_eq!(layer.settings(), &fixed_settings(10));
}

#[tokio::test(start_paused = true)]
async fn a_handle_taken_right_after_new_sees_every_service_of_the_layer() {
    let settings = HedgeSettings {
        min_samples: 16,
        ..HedgeSettings::default()
    };
    let layer = HedgeLayer::with_budget("test", settings, plenty()).unwrap();
    let hedges = layer.handle();
    // Wired after the handle was taken: a (closed) breaker and a classifier.
    let breaker = BreakerLayer::new("test", BreakerSettings::default())
        .unwrap()
        .handle();
    let wired = layer
        .clone()
        .breaker(breaker)
        .classify(HttpClassify::default());
    let script = Script::default();
    script.set_default(ms(10));
    let svc = wired.layer(script.service());
    for _ in 0..16 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(hedges.stats().samples, 16);
    let delay = hedges.delay();
    assert!(delay >= ms(10) && delay < ms(11), "{delay:?}");

    // A slow request is hedged at that delay, and counted.
    script.0.lock().unwrap().next =
        [(ms(500), Reply::Status(200)), (ms(10), Reply::Status(200))].into();
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!((hedges.stats().sent, hedges.stats().won), (1, 1));
    assert_eq!(layer.handle().stats(), hedges.stats());
}

/// In-memory endpoints with these latencies (ms) behind the real balancer.
async fn fleet_balance(
    fleet: &Fleet,
    latencies: &[u64],
) -> crate::balance::Balance<crate::testing::Svc<Body>, HttpClassify> {
    let eps: Vec<_> = latencies
        .iter()
        .enumerate()
        .map(|(i, ms)| fleet.set(&format!("127.0.0.1:{}", i + 1), Answer::ok(*ms)))
        .collect();
    let b = fleet.balance(Static::new(eps), BalanceSettings::default());
    settle_until(&b, |b| b.len() == latencies.len()).await;
    b
}

#[tokio::test(start_paused = true)]
async fn the_backup_goes_to_another_endpoint_with_the_same_request() {
    let fleet = Fleet::default();
    let balance = fleet_balance(&fleet, &[50, 50, 50]).await;
    let layer = fixed(10);
    let hedges = layer.handle();
    let svc = layer.layer(balance);
    for i in 0..20 {
        let tried = Tried::default();
        let mut req = request(Method::PUT);
        req.headers_mut()
            .insert("x-test", http::HeaderValue::from(i));
        req.extensions_mut().insert(tried.clone());
        let rsp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        let addrs = tried.addresses();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert_ne!(
            addrs[0], addrs[1],
            "request {i}: the backup went to the same endpoint"
        );
    }
    assert_eq!(hedges.stats().sent, 20);
    assert_eq!(fleet.total(), 40);
    // Every endpoint that got a request read the same body and headers.
    let received = fleet.received();
    assert_eq!(received.len(), 40);
    for (i, pair) in received.chunks(2).enumerate() {
        for (_, body, headers) in pair {
            assert_eq!(body, "hello");
            assert_eq!(headers["x-test"], i.to_string().as_str());
        }
    }

    // Without a retry layer (no `Tried` in the request) the layer adds one,
    // so the backup still goes elsewhere.
    let counts = || -> Vec<u64> {
        (1..=3)
            .map(|i| fleet.count(&format!("127.0.0.1:{i}")))
            .collect()
    };
    let before = counts();
    svc.clone().oneshot(get()).await.unwrap();
    let added: Vec<u64> = counts().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(added.iter().filter(|&&n| n == 1).count(), 2, "{added:?}");
    assert_eq!(added.iter().sum::<u64>(), 2, "{added:?}");
}

#[tokio::test(start_paused = true)]
async fn no_backup_to_the_same_endpoint() {
    let fleet = Fleet::default();
    let balance = fleet_balance(&fleet, &[50]).await;
    let layer = fixed(10);
    let hedges = layer.handle();
    let svc = layer.layer(balance);
    let tried = Tried::default();
    let mut req = get();
    req.extensions_mut().insert(tried.clone());
    svc.clone().oneshot(req).await.unwrap();
    assert_eq!(fleet.total(), 1, "nothing sent twice to the one endpoint");
    assert_eq!(hedges.stats().sent, 0);
    assert_eq!(hedges.stats().skipped(HedgeSkip::SameEndpoint), 1);
}

#[test]
fn the_service_and_its_future_are_send_sync_and_clone() {
    fn service<T: Clone + Send + Sync + 'static>() {}
    fn future<T: Send + 'static>() {}
    type Balanced = crate::balance::Balance<crate::testing::Svc<Body>, HttpClassify>;
    service::<Hedge<Balanced>>();
    service::<HedgeLayer>();
    service::<HedgeHandle>();
    future::<<Hedge<Balanced> as Service<Request<Body>>>::Future>();
}

// ---- settings -------------------------------------------------------------

#[test]
fn the_default_settings_are_valid() {
    assert_eq!(HedgeSettings::default().validate(), Ok(()));
    let layer = HedgeLayer::new("test", HedgeSettings::default()).unwrap();
    assert_eq!(layer.settings(), &HedgeSettings::default());
    assert_eq!(
        layer.settings().delay,
        HedgeDelay::Percentile(DEFAULT_PERCENTILE)
    );
}

#[test]
fn each_bad_value_is_refused_at_its_field() {
    let bad = |change: &dyn Fn(&mut HedgeSettings)| {
        let mut settings = HedgeSettings::default();
        change(&mut settings);
        problems(settings.validate())
    };
    assert_eq!(
        bad(&|s| s.delay = HedgeDelay::Fixed(Duration::ZERO)),
        ["delay: a fixed hedge delay must be greater than 0 (every request would be sent twice)"],
    );
    for (q, text) in [
        (0.0, "p0"),
        (0.005, "p0.5"),
        (1.0, "p100"),
        (1.5, "p150"),
        (-0.1, "p-10"),
        (f64::NAN, "pNaN"),
    ] {
        assert_eq!(
            bad(&|s| s.delay = HedgeDelay::Percentile(q)),
            [format!(
                "delay: percentile \"{text}\" is out of range: from p1 to p99.99"
            )],
        );
    }
    assert_eq!(
        bad(&|s| s.min_samples = 0),
        ["min_samples: must be at least 1"],
    );
    assert_eq!(
        bad(&|s| s.fallback_delay = Duration::ZERO),
        ["fallback_delay: must be greater than 0 (every request would be sent twice)"],
    );
    assert_eq!(
        bad(&|s| s.window = Duration::ZERO),
        ["window: must be greater than 0"],
    );
    assert_eq!(
        bad(&|s| s.window = ms(9)),
        ["window: must be at least 10ms"],
    );
    for r in [0.0, -0.05, 1.5, f64::NAN, f64::INFINITY] {
        assert_eq!(
            bad(&|s| s.budget_ratio = r),
            [format!(
                "budget_ratio: must be a number greater than 0 and at most 1 (a share of requests), got {r}"
            )],
        );
    }
    // The edges are fine.
    for delay in [
        HedgeDelay::Percentile(0.01),
        HedgeDelay::Percentile(0.9999),
        HedgeDelay::Fixed(Duration::from_nanos(1)),
    ] {
        let edges = HedgeSettings {
            delay,
            min_samples: 1,
            fallback_delay: Duration::from_nanos(1),
            window: MIN_WINDOW,
            budget_ratio: 1.0,
        };
        assert_eq!(edges.validate(), Ok(()), "{delay:?}");
    }
}

#[test]
fn several_bad_values_give_several_problems() {
    let settings = HedgeSettings {
        delay: HedgeDelay::Fixed(Duration::ZERO),
        min_samples: 0,
        fallback_delay: Duration::ZERO,
        window: Duration::ZERO,
        budget_ratio: 0.0,
    };
    let err = HedgeLayer::new("test", settings.clone()).unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "delay",
            "min_samples",
            "fallback_delay",
            "window",
            "budget_ratio"
        ]
    );
    assert_eq!(
        HedgeLayer::with_budget("test", settings, plenty()).unwrap_err(),
        err
    );
}

/// Settings files: durations and delays as strings, unknown fields refused.
#[cfg(all(feature = "serde", feature = "file"))]
mod settings_files {
    use super::*;

    #[test]
    fn delays_and_durations_are_strings_and_settings_round_trip() {
        let s: HedgeSettings = toml::from_str(
            "delay = \"p99.9\"\nwindow = \"30s\"\nfallback_delay = \"250ms\"\nbudget_ratio = 0.1",
        )
        .unwrap();
        assert_eq!(
            s,
            HedgeSettings {
                delay: HedgeDelay::Percentile(0.999),
                fallback_delay: ms(250),
                window: Duration::from_secs(30),
                budget_ratio: 0.1,
                ..HedgeSettings::default()
            }
        );
        let text = toml::to_string(&s).unwrap();
        assert!(text.contains("delay = \"p99.9\""), "{text}");
        assert!(text.contains("fallback_delay = \"250ms\""), "{text}");
        assert_eq!(toml::from_str::<HedgeSettings>(&text).unwrap(), s);

        let fixed: HedgeSettings = toml::from_str("delay = \"20ms\"").unwrap();
        assert_eq!(fixed, fixed_settings(20));
        let json = serde_json::to_string(&fixed).unwrap();
        assert!(json.contains(r#""delay":"20ms""#), "{json}");
        assert_eq!(serde_json::from_str::<HedgeSettings>(&json).unwrap(), fixed);

        let text = toml::to_string(&HedgeSettings::default()).unwrap();
        assert!(text.contains("delay = \"p95\""), "{text}");
        assert_eq!(
            toml::from_str::<HedgeSettings>("").unwrap(),
            HedgeSettings::default()
        );
    }

    #[test]
    fn a_bad_delay_is_refused_with_what_to_write() {
        for (text, message) in [
            (
                "p0",
                r#"percentile "p0" is out of range: from p1 to p99.99"#,
            ),
            (
                "P100",
                r#"percentile "P100" is out of range: from p1 to p99.99"#,
            ),
            (
                "pxx",
                r#"invalid percentile "pxx": write "p" and a number, such as "p95" or "p99.9""#,
            ),
            (
                "0s",
                "a fixed hedge delay must be greater than 0 (every request would be sent twice)",
            ),
            ("soon", r#"invalid duration "soon""#),
        ] {
            let err = toml::from_str::<HedgeSettings>(&format!("delay = \"{text}\""))
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{text}: {err}");
        }
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let err = toml::from_str::<HedgeSettings>("min_sample = 10")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `min_sample`"), "{err}");
        let err = serde_json::from_str::<HedgeSettings>(r#"{"budget": 0.1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `budget`"), "{err}");
    }
}
