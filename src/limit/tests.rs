//! The limits on paused time, over backends whose every answer the test
//! decides.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_test::task::{Spawn, spawn};
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::deadline::Deadline;
use crate::error::{BoxError, Error, Limit};
use crate::settings::SettingsError;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn limit_of(err: &Error) -> Limit {
    assert_eq!(err.service(), "users", "{err}");
    err.limit()
        .unwrap_or_else(|| panic!("not shed: {err:?}"))
        .clone()
}

// ---------------------------------------------------------------------------
// A backend that holds every call until the test answers it.

/// How the test answers a call: a status, or a transport error.
type Reply = Result<u16, io::ErrorKind>;

#[derive(Default)]
struct Calls {
    /// Calls waiting for their answer, by request id.
    pending: HashMap<u32, oneshot::Sender<Reply>>,
    /// Request ids in the order the backend received them.
    order: Vec<u32>,
    in_flight: usize,
    peak: usize,
}

/// Each request's body is its id; the backend answers it when told.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<Mutex<Calls>>,
}

type BackendFuture = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

/// Counts a call in flight at the backend until dropped.
struct InFlight(Arc<Mutex<Calls>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

impl Backend {
    fn answer(&self, id: u32, reply: Reply) {
        let tx = self.calls.lock().unwrap().pending.remove(&id);
        let _ = tx.expect("a call waiting for its answer").send(reply);
    }

    fn order(&self) -> Vec<u32> {
        self.calls.lock().unwrap().order.clone()
    }

    fn in_flight(&self) -> usize {
        self.calls.lock().unwrap().in_flight
    }

    fn peak(&self) -> usize {
        self.calls.lock().unwrap().peak
    }
}

impl Service<Request<u32>> for Backend {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<u32>) -> BackendFuture {
        let id = *req.body();
        let (tx, rx) = oneshot::channel();
        let mut calls = self.calls.lock().unwrap();
        calls.pending.insert(id, tx);
        calls.order.push(id);
        calls.in_flight += 1;
        calls.peak = calls.peak.max(calls.in_flight);
        drop(calls);
        let guard = InFlight(self.calls.clone());
        Box::pin(async move {
            let _guard = guard;
            match rx.await {
                Ok(Ok(status)) => Ok(Response::builder().status(status).body(()).unwrap()),
                Ok(Err(kind)) => Err(io::Error::new(kind, "transport").into()),
                Err(_) => Err("the test dropped the call".into()),
            }
        })
    }
}

fn req(id: u32) -> Request<u32> {
    Request::new(id)
}

fn req_within(id: u32, timeout: Duration) -> Request<u32> {
    let mut req = req(id);
    req.extensions_mut().insert(Deadline::after(timeout));
    req
}

// ---------------------------------------------------------------------------
// Concurrency limit.

type Limited = ConcurrencyLimit<Backend>;
type LimitedFuture = concurrency::ResponseFuture<Backend, Request<u32>>;

struct Bulkhead {
    backend: Backend,
    svc: Limited,
    handle: ConcurrencyHandle,
}

impl Bulkhead {
    fn new(settings: ConcurrencySettings) -> Self {
        let layer = ConcurrencyLimitLayer::new("users", settings).unwrap();
        let backend = Backend::default();
        Bulkhead {
            svc: layer.layer(backend.clone()),
            handle: layer.handle(),
            backend,
        }
    }

    /// Calls a clone of the service (every call through a different clone:
    /// the limit is shared); the future is not polled yet.
    fn start(&self, req: Request<u32>) -> Spawn<LimitedFuture> {
        let mut svc = self.svc.clone();
        let mut ready = spawn(svc.ready());
        assert!(ready.poll().is_ready(), "the backend is always ready");
        drop(ready);
        spawn(svc.call(req))
    }

    /// Starts a request that is not shed: it runs or waits.
    fn begin(&self, req: Request<u32>) -> Spawn<LimitedFuture> {
        let mut fut = self.start(req);
        assert!(fut.poll().is_pending(), "shed at once");
        fut
    }

    fn counts(&self) -> (usize, usize) {
        (self.handle.in_flight(), self.handle.queued())
    }
}

fn ok_status(poll: Poll<Result<Response<()>, Error>>) -> u16 {
    match poll {
        Poll::Ready(Ok(rsp)) => rsp.status().as_u16(),
        other => panic!("expected a response, got {other:?}"),
    }
}

fn shed(poll: Poll<Result<Response<()>, Error>>) -> Limit {
    match poll {
        Poll::Ready(Err(err)) => limit_of(&err),
        other => panic!("expected a shed, got {other:?}"),
    }
}

fn bulkhead(max: usize, queue: usize) -> ConcurrencySettings {
    ConcurrencySettings {
        max,
        queue,
        max_wait: None,
    }
}

#[tokio::test(start_paused = true)]
async fn exactly_max_in_flight_and_queue_across_clones_then_shed_at_once() {
    let h = Bulkhead::new(bulkhead(3, 2));
    let mut futs: Vec<_> = (0..5).map(|id| h.begin(req(id))).collect();
    assert_eq!(
        h.backend.order(),
        [0, 1, 2],
        "exactly max reach the backend"
    );
    assert_eq!(h.counts(), (3, 2), "the next two wait");

    // The queue is full: the sixth is shed on its first poll, no time passes.
    let start = Instant::now();
    let mut sixth = h.start(req(5));
    assert_eq!(shed(sixth.poll()), Limit::Concurrency { max: 3, queue: 2 });
    let err = h.svc.clone().oneshot(req(6)).await.unwrap_err();
    assert_eq!(limit_of(&err), Limit::Concurrency { max: 3, queue: 2 });
    assert_eq!(
        err.to_string(),
        "service \"users\": overloaded: concurrency limit reached (3 in flight, 2 queued)"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(h.handle.shed_full(), 2);
    assert_eq!(h.counts(), (3, 2), "shedding took nothing");

    // A response frees a slot for the first waiter (FIFO), not the second.
    h.backend.answer(1, Ok(200));
    assert_eq!(ok_status(futs[1].poll()), 200);
    assert!(futs[3].is_woken());
    assert!(!futs[4].is_woken());
    assert!(futs[4].poll().is_pending());
    assert!(futs[3].poll().is_pending(), "now waiting on the backend");
    assert_eq!(h.backend.order(), [0, 1, 2, 3]);
    assert_eq!(h.counts(), (3, 1));

    // Drain everything: every slot comes back.
    for id in [0, 2, 3] {
        h.backend.answer(id, Ok(200));
        assert_eq!(ok_status(futs[id as usize].poll()), 200);
    }
    assert!(futs[4].poll().is_pending());
    h.backend.answer(4, Ok(503));
    assert_eq!(ok_status(futs[4].poll()), 503);
    assert_eq!(h.counts(), (0, 0));
    assert_eq!(h.backend.peak(), 3);
}

#[tokio::test(start_paused = true)]
async fn queue_zero_sheds_whatever_finds_the_slots_taken() {
    let h = Bulkhead::new(bulkhead(1, 0));
    let _first = h.begin(req(0));
    let mut second = h.start(req(1));
    assert_eq!(shed(second.poll()), Limit::Concurrency { max: 1, queue: 0 });
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_queued_request_leaves_the_queue() {
    let h = Bulkhead::new(bulkhead(1, 2));
    let mut first = h.begin(req(0));
    let second = h.begin(req(1));
    let mut third = h.begin(req(2));
    assert_eq!(h.counts(), (1, 2));

    drop(second);
    assert_eq!(h.counts(), (1, 1));
    // The slot goes to the next waiter still there.
    h.backend.answer(0, Ok(200));
    assert_eq!(ok_status(first.poll()), 200);
    assert!(third.is_woken());
    assert!(third.poll().is_pending());
    assert_eq!(h.backend.order(), [0, 2]);
    drop(third);
    assert_eq!(h.counts(), (0, 0));
    assert_eq!(
        h.backend.in_flight(),
        0,
        "the backend call was cancelled too"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_request_frees_its_slot() {
    let h = Bulkhead::new(bulkhead(2, 1));
    let first = h.begin(req(0));
    let second = h.begin(req(1));
    let mut third = h.begin(req(2));
    assert_eq!(h.counts(), (2, 1));

    drop(first);
    assert!(third.is_woken(), "the slot went straight to the waiter");
    assert!(third.poll().is_pending());
    assert_eq!(h.backend.order(), [0, 1, 2]);
    assert_eq!(h.counts(), (2, 0));
    drop(third);
    drop(second);
    assert_eq!(h.counts(), (0, 0));
    assert_eq!(h.backend.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_after_its_slot_came_passes_the_slot_on() {
    let h = Bulkhead::new(bulkhead(1, 2));
    let mut first = h.begin(req(0));
    let second = h.begin(req(1));
    let mut third = h.begin(req(2));

    h.backend.answer(0, Ok(200));
    assert_eq!(ok_status(first.poll()), 200);
    assert!(second.is_woken());
    assert_eq!(h.counts(), (1, 1), "the slot is the second's, unused");

    drop(second);
    assert!(third.is_woken());
    assert!(third.poll().is_pending());
    assert_eq!(h.backend.order(), [0, 2]);
    h.backend.answer(2, Ok(200));
    assert_eq!(ok_status(third.poll()), 200);
    assert_eq!(h.counts(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_queue_wait_is_bounded() {
    let h = Bulkhead::new(ConcurrencySettings {
        max_wait: Some(ms(100)),
        ..bulkhead(1, 4)
    });
    let _first = h.begin(req(0));
    let mut waiting = h.begin(req(1));

    tokio::time::advance(ms(99)).await;
    assert!(waiting.poll().is_pending());
    tokio::time::advance(ms(1)).await;
    assert!(waiting.is_woken());
    assert_eq!(
        shed(waiting.poll()),
        Limit::QueueTimeout {
            max: 1,
            waited: ms(100)
        }
    );
    assert_eq!(h.counts(), (1, 0), "it left the queue");
    assert_eq!(h.handle.shed_timeout(), 1);
    assert_eq!(h.backend.order(), [0]);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_never_waits_past_its_deadline() {
    let h = Bulkhead::new(ConcurrencySettings {
        max_wait: Some(secs(1)),
        ..bulkhead(1, 4)
    });
    let _first = h.begin(req(0));
    let mut waiting = h.begin(req_within(1, ms(30)));
    let mut patient = h.begin(req(2));

    tokio::time::advance(ms(30)).await;
    assert_eq!(
        shed(waiting.poll()),
        Limit::QueueTimeout {
            max: 1,
            waited: ms(30)
        }
    );
    assert!(
        patient.poll().is_pending(),
        "a request without one waits on"
    );
    assert_eq!(h.counts(), (1, 1));

    // With no max wait, the deadline alone bounds it.
    let h = Bulkhead::new(bulkhead(1, 4));
    let _first = h.begin(req(0));
    let mut waiting = h.begin(req_within(1, ms(45)));
    tokio::time::advance(ms(45)).await;
    assert_eq!(
        shed(waiting.poll()),
        Limit::QueueTimeout {
            max: 1,
            waited: ms(45)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_deadline_is_not_queued_but_may_take_a_free_slot() {
    let h = Bulkhead::new(bulkhead(1, 4));
    // A free slot: admitted (failing a spent deadline is the deadline
    // layer's call).
    let _first = h.begin(req_within(0, Duration::ZERO));
    let start = Instant::now();
    let mut second = h.start(req_within(1, Duration::ZERO));
    assert_eq!(
        shed(second.poll()),
        Limit::QueueTimeout {
            max: 1,
            waited: Duration::ZERO
        }
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(h.counts(), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_slot_freed_as_the_wait_ends_is_taken() {
    let h = Bulkhead::new(ConcurrencySettings {
        max_wait: Some(ms(10)),
        ..bulkhead(1, 1)
    });
    let mut first = h.begin(req(0));
    let mut waiting = h.begin(req(1));
    tokio::time::advance(ms(10)).await;
    // The timer fired, but the slot arrives before the waiter looks.
    h.backend.answer(0, Ok(200));
    assert_eq!(ok_status(first.poll()), 200);
    assert!(waiting.poll().is_pending(), "running, not shed");
    assert_eq!(h.backend.order(), [0, 1]);
    h.backend.answer(1, Ok(200));
    assert_eq!(ok_status(waiting.poll()), 200);
    assert_eq!(h.counts(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn inner_errors_name_the_service_and_free_the_slot() {
    let h = Bulkhead::new(bulkhead(1, 1));
    let mut first = h.begin(req(0));
    h.backend.answer(0, Err(io::ErrorKind::ConnectionReset));
    match first.poll() {
        Poll::Ready(Err(Error::Inner { service, .. })) => assert_eq!(&*service, "users"),
        other => panic!("expected an inner error, got {other:?}"),
    }
    assert_eq!(h.counts(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn many_tasks_never_exceed_max_and_all_finish() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let backend = service_fn({
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        move |_: Request<()>| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(ms(10)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, io::Error>(Response::new(()))
            }
        }
    });
    let layer = ConcurrencyLimitLayer::new("users", bulkhead(4, 100)).unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend);
    let start = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    assert_eq!(start.elapsed(), ms(250), "25 rounds of 4, back to back");
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

mod interleavings {
    //! Random interleavings of starts, answers, cancellations and time.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Start,
        /// Answer the n-th (mod count) call waiting at the backend.
        Answer(usize),
        /// Drop the n-th (mod count) live future, queued or running.
        Cancel(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Start),
            3 => any::<usize>().prop_map(Op::Answer),
            2 => any::<usize>().prop_map(Op::Cancel),
            1 => (1u64..40).prop_map(Op::Advance),
        ]
    }

    fn run(max: usize, queue: usize, wait: Option<u64>, ops: Vec<Op>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let h = Bulkhead::new(ConcurrencySettings {
                max_wait: wait.map(ms),
                ..bulkhead(max, queue)
            });
            let mut live: Vec<(u32, Spawn<LimitedFuture>)> = Vec::new();
            let mut next = 0;
            for op in ops {
                match op {
                    Op::Start => {
                        live.push((next, h.start(req(next))));
                        next += 1;
                    }
                    Op::Answer(n) => {
                        let waiting: Vec<u32> = {
                            let calls = h.backend.calls.lock().unwrap();
                            let mut ids: Vec<u32> = calls.pending.keys().copied().collect();
                            ids.sort();
                            ids
                        };
                        if !waiting.is_empty() {
                            h.backend.answer(waiting[n % waiting.len()], Ok(200));
                        }
                    }
                    Op::Cancel(n) => {
                        if !live.is_empty() {
                            drop(live.remove(n % live.len()));
                        }
                    }
                    Op::Advance(n) => tokio::time::advance(ms(n)).await,
                }
                // Let every future see what changed (a finished one may hand
                // its slot to one polled before it); finished ones go.
                loop {
                    live.retain_mut(|(_, fut)| fut.poll().is_pending());
                    if !live.iter().any(|(_, fut)| fut.is_woken()) {
                        break;
                    }
                }
                let (in_flight, queued) = h.counts();
                let at_backend = h.backend.in_flight();
                assert!(in_flight <= max, "{in_flight} in flight, max {max}");
                assert!(queued <= queue, "{queued} queued, queue {queue}");
                assert_eq!(at_backend, in_flight, "every slot is at the backend");
                assert_eq!(
                    in_flight + queued,
                    live.len(),
                    "every live future is counted"
                );
                if queued > 0 {
                    assert_eq!(in_flight, max, "nobody waits beside a free slot");
                }
            }
            assert!(h.backend.peak() <= max);
            drop(live);
            assert_eq!(h.counts(), (0, 0), "every slot and place came back");
            assert_eq!(h.backend.in_flight(), 0);
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn slots_and_queue_stay_bounded_and_come_back(
            max in 1usize..4,
            queue in 0usize..4,
            wait in prop::option::of(1u64..60),
            ops in prop::collection::vec(op(), 1..80),
        ) {
            run(max, queue, wait, ops);
        }
    }
}

// ---------------------------------------------------------------------------
// Rate limit.

type Plain = Request<()>;

fn answering()
-> impl Service<Plain, Response = Response<()>, Error = io::Error, Future: Send> + Clone + Send + Sync
{
    service_fn(|_: Plain| async { Ok::<_, io::Error>(Response::new(())) })
}

fn tenant(name: &str) -> Plain {
    Request::builder()
        .header("x-tenant", name)
        .body(())
        .unwrap()
}

/// Sends one request; `Err` is the limit that shed it. Shedding is checked
/// to take no time.
async fn send<S>(svc: &S, req: Plain) -> Result<(), Limit>
where
    S: Service<Plain, Response = Response<()>, Error = Error> + Clone,
{
    let start = Instant::now();
    match svc.clone().oneshot(req).await {
        Ok(_) => Ok(()),
        Err(err) => {
            assert_eq!(start.elapsed(), Duration::ZERO, "shed at once");
            Err(limit_of(&err))
        }
    }
}

fn rate_limit(settings: RateLimitSettings) -> RateLimitLayer {
    RateLimitLayer::new("users", settings).unwrap()
}

fn retry_in(limit: &Limit) -> Duration {
    match limit {
        Limit::Rate { retry_in, .. } => *retry_in,
        other => panic!("expected a rate limit, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn rate_admits_the_burst_then_exactly_the_rate() {
    let layer = rate_limit(rate(10.0, 5));
    let handle = layer.handle();
    let svc = layer.layer(answering());
    for _ in 0..5 {
        send(&svc, Request::new(())).await.unwrap();
    }
    let limit = send(&svc, Request::new(())).await.unwrap_err();
    assert_eq!(
        limit,
        Limit::Rate {
            rate: 10.0,
            burst: 5,
            key: None,
            retry_in: ms(100)
        }
    );
    assert_eq!(handle.available(), 0);

    // One attempt a millisecond for 10 simulated seconds: one admitted
    // every 100 ms, no more.
    let mut admitted = 0;
    for _ in 0..10_000 {
        tokio::time::advance(ms(1)).await;
        if send(&svc, Request::new(())).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 100);
    assert_eq!(handle.admitted(), 105);
    assert_eq!(handle.rejected(), 1 + 10_000 - 100);

    // A quiet spell refills the burst, and no more than the burst.
    tokio::time::advance(secs(60)).await;
    assert_eq!(handle.available(), 5);
}

#[tokio::test(start_paused = true)]
async fn retry_in_says_exactly_when_the_next_is_admitted() {
    let svc = rate_limit(RateLimitSettings {
        per_second: 4.0,
        ..RateLimitSettings::default()
    })
    .layer(answering());
    for _ in 0..4 {
        send(&svc, Request::new(())).await.unwrap();
    }
    tokio::time::advance(ms(30)).await;
    let wait = retry_in(&send(&svc, Request::new(())).await.unwrap_err());
    assert_eq!(wait, ms(220));
    tokio::time::advance(wait - Duration::from_nanos(1)).await;
    let almost = retry_in(&send(&svc, Request::new(())).await.unwrap_err());
    assert_eq!(almost, Duration::from_nanos(1));
    tokio::time::advance(Duration::from_nanos(1)).await;
    send(&svc, Request::new(())).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_bucket_is_shared_by_every_clone_and_service() {
    let layer = rate_limit(rate(1.0, 3));
    let a = layer.layer(answering());
    let b = layer.clone().layer(answering());
    send(&a, Request::new(())).await.unwrap();
    send(&b, Request::new(())).await.unwrap();
    send(&a.clone(), Request::new(())).await.unwrap();
    send(&b, Request::new(())).await.unwrap_err();
    send(&a, Request::new(())).await.unwrap_err();
}

#[tokio::test(start_paused = true)]
async fn keys_have_their_own_buckets() {
    let layer = rate_limit(RateLimitSettings {
        key_header: Some("X-Tenant".into()),
        ..rate(1.0, 2)
    });
    let handle = layer.handle();
    let svc = layer.layer(answering());
    send(&svc, tenant("a")).await.unwrap();
    send(&svc, tenant("a")).await.unwrap();
    let limit = send(&svc, tenant("a")).await.unwrap_err();
    assert_eq!(
        limit,
        Limit::Rate {
            rate: 1.0,
            burst: 2,
            key: Some("a".into()),
            retry_in: secs(1)
        }
    );
    assert_eq!(
        limit.to_string(),
        "rate limit of 1/s (burst 2) reached for key \"a\"; next request admitted in 1s"
    );
    // Another tenant is untouched, and so is the shared bucket.
    send(&svc, tenant("b")).await.unwrap();
    send(&svc, tenant("b")).await.unwrap();
    send(&svc, Request::new(())).await.unwrap();
    send(&svc, Request::new(())).await.unwrap();
    assert!(
        send(&svc, Request::new(())).await.is_err(),
        "unkeyed share one bucket"
    );
    assert_eq!(handle.keys(), 2);
    assert_eq!(
        (handle.available_for("a"), handle.available_for("c")),
        (0, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_may_pass() {
    let pass = RateLimitSettings {
        without_key: WithoutKey::Pass,
        ..rate(1.0, 1)
    };
    let svc = rate_limit(pass.clone())
        .keyed(|req: &Plain| {
            req.headers()
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .layer(answering());
    for _ in 0..100 {
        send(&svc, Request::new(())).await.unwrap();
    }
    send(&svc, tenant("a")).await.unwrap();
    send(&svc, tenant("a")).await.unwrap_err();

    // An unkeyed limit has no "missing key": it limits everything.
    let svc = rate_limit(pass).layer(answering());
    send(&svc, Request::new(())).await.unwrap();
    send(&svc, Request::new(())).await.unwrap_err();
}

#[tokio::test(start_paused = true)]
async fn the_key_table_is_bounded_and_forgets_idle_keys() {
    // Two keys at most; a bucket refills in 2 s (burst 2 at 1/s).
    let layer = rate_limit(RateLimitSettings {
        max_keys: 2,
        ..rate(1.0, 2)
    })
    .keyed_by_header(http::HeaderName::from_static("x-tenant"));
    let handle = layer.handle();
    let svc = layer.layer(answering());
    send(&svc, tenant("a")).await.unwrap();
    send(&svc, tenant("b")).await.unwrap();
    send(&svc, tenant("b")).await.unwrap();
    // Full of busy keys: a new key is shed, old keys still work.
    assert_eq!(
        send(&svc, tenant("c")).await.unwrap_err(),
        Limit::Keys { max: 2 }
    );
    assert_eq!(handle.keys(), 2);

    // After 1 s, a's bucket (one spent) is full again: idle, forgotten for c.
    tokio::time::advance(secs(1)).await;
    send(&svc, tenant("c")).await.unwrap();
    assert_eq!(handle.keys(), 2);
    // b is still busy (its bucket is not full until 2 s): d must wait.
    assert_eq!(
        send(&svc, tenant("d")).await.unwrap_err(),
        Limit::Keys { max: 2 }
    );
    tokio::time::advance(secs(1)).await;
    send(&svc, tenant("d")).await.unwrap();
    assert_eq!(
        handle.keys(),
        1,
        "b and c (one spent a second ago) were idle"
    );
    // `a` comes back with the full bucket it had.
    send(&svc, tenant("a")).await.unwrap();
    send(&svc, tenant("a")).await.unwrap();
    assert_eq!(
        send(&svc, tenant("e")).await.unwrap_err(),
        Limit::Keys { max: 2 },
        "a and d are busy"
    );
    assert_eq!(handle.rejected(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_full_table_of_busy_keys_does_not_sweep_on_every_request() {
    let layer = rate_limit(RateLimitSettings {
        max_keys: 1000,
        ..rate(0.5, 1)
    })
    .keyed_by_header(http::HeaderName::from_static("x-tenant"));
    let handle = layer.handle();
    let svc = layer.layer(answering());
    for i in 0..1000 {
        send(&svc, tenant(&i.to_string())).await.unwrap();
    }
    for i in 1000..1100 {
        assert_eq!(
            send(&svc, tenant(&i.to_string())).await.unwrap_err(),
            Limit::Keys { max: 1000 }
        );
    }
    // Every bucket refills after 2 s: then new keys fit again.
    tokio::time::advance(secs(2)).await;
    send(&svc, tenant("new")).await.unwrap();
    assert_eq!(handle.keys(), 1, "the idle keys were all forgotten at once");
}

// ---------------------------------------------------------------------------
// Adaptive throttling.

/// A backend with a fixed capacity: it accepts the first `per_second`
/// requests of each simulated second and answers the rest with `refusal`
/// (503 or 429) — overload, not breakage. It counts what it was offered
/// and what it accepted.
#[derive(Clone)]
struct Capacity {
    per_second: Arc<AtomicUsize>,
    refusal: u16,
    start: Instant,
    state: Arc<Mutex<CapacityState>>,
}

#[derive(Default, Debug, Clone, Copy)]
struct CapacityState {
    second: u64,
    this_second: usize,
    offered: u64,
    accepted: u64,
}

impl Capacity {
    fn new(per_second: usize, refusal: u16) -> Self {
        Capacity {
            per_second: Arc::new(AtomicUsize::new(per_second)),
            refusal,
            start: Instant::now(),
            state: Arc::default(),
        }
    }

    fn counts(&self) -> CapacityState {
        *self.state.lock().unwrap()
    }

    fn answer(&self) -> u16 {
        let second = self.start.elapsed().as_secs();
        let mut s = self.state.lock().unwrap();
        if s.second != second {
            s.second = second;
            s.this_second = 0;
        }
        s.offered += 1;
        if s.this_second < self.per_second.load(Ordering::SeqCst) {
            s.this_second += 1;
            s.accepted += 1;
            200
        } else {
            self.refusal
        }
    }
}

impl Service<Plain> for Capacity {
    type Response = Response<()>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Response<()>, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Plain) -> Self::Future {
        let status = self.answer();
        std::future::ready(Ok(Response::builder().status(status).body(()).unwrap()))
    }
}

/// Offers `rate` requests a second for `duration`; returns how many were
/// throttled locally.
async fn offer<S>(svc: &S, rate: u64, duration: Duration) -> u64
where
    S: Service<Plain, Response = Response<()>, Error = Error> + Clone,
{
    let gap = Duration::from_secs(1) / rate as u32;
    let mut throttled = 0;
    for _ in 0..(duration.as_nanos() / gap.as_nanos()) {
        match send(svc, Request::new(())).await {
            Err(Limit::Throttled { probability }) => {
                assert!(probability > 0.0 && probability < 1.0, "{probability}");
                throttled += 1;
            }
            Err(other) => panic!("unexpected limit {other:?}"),
            Ok(()) => {}
        }
        tokio::time::advance(gap).await;
    }
    throttled
}

fn throttling() -> ThrottleLayer {
    ThrottleLayer::new("users", ThrottleSettings::default()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn throttling_keeps_offered_load_within_k_times_accepts() {
    for refusal in [503, 429] {
        // The backend can take 10 a second; it is offered 100 a second, so
        // unthrottled it would accept 1 in 10.
        let backend = Capacity::new(10, refusal);
        let layer = throttling().seed(7);
        let handle = layer.handle();
        let svc = layer.layer(backend.clone());

        // Warm up over one window (2 min), then measure over the next two.
        offer(&svc, 100, secs(120)).await;
        let before = backend.counts();
        let throttled = offer(&svc, 100, secs(240)).await;
        let after = backend.counts();
        let offered = after.offered - before.offered;
        let accepted = after.accepted - before.accepted;
        let ratio = offered as f64 / accepted as f64;
        eprintln!(
            "refusal {refusal}: offered {offered}, accepted {accepted}, ratio {ratio:.3}, \
             throttled {throttled} of 24000, probability {:.3}",
            handle.probability()
        );
        assert_eq!(accepted, 2400, "the backend stays busy: 10 a second");
        assert!(ratio <= 2.0 * 1.1, "offered/accepted = {ratio:.3}, K = 2");
        assert!(ratio >= 1.5, "the extra K share still probes: {ratio:.3}");
        let p = handle.probability();
        assert!(
            (0.75..0.85).contains(&p),
            "p = {p}, expected about 1 - 2·10/100"
        );
        assert!(handle.rejected() >= throttled);
    }
}

#[tokio::test(start_paused = true)]
async fn throttling_recovers_once_the_backend_accepts_again() {
    let backend = Capacity::new(10, 503);
    let layer = throttling().seed(11);
    let handle = layer.handle();
    let svc = layer.layer(backend.clone());
    offer(&svc, 100, secs(240)).await;
    assert!(handle.probability() > 0.7);

    // Capacity returns: the probability falls to 0 in about a window (the
    // old refusals expire, and early on some new requests are still
    // rejected, which count against it: ~60 s × ln 9 ≈ 132 s here).
    backend.per_second.store(usize::MAX, Ordering::SeqCst);
    let start = Instant::now();
    let mut halved = None;
    while handle.probability() > 0.0 {
        assert!(
            start.elapsed() <= secs(240),
            "still throttling after two windows"
        );
        if halved.is_none() && handle.probability() < 0.4 {
            halved = Some(start.elapsed());
        }
        offer(&svc, 100, secs(1)).await;
    }
    eprintln!(
        "p below 0.4 after {halved:?}, 0 after {:?}",
        start.elapsed()
    );
    let throttled = offer(&svc, 100, secs(60)).await;
    assert_eq!(throttled, 0);
    assert_eq!(handle.probability(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn no_throttling_while_the_backend_accepts() {
    let layer = throttling();
    let handle = layer.handle();
    // 500s are failures, but the backend took the requests: accepted.
    let svc = layer.layer(service_fn(|_: Plain| async {
        Ok::<_, io::Error>(Response::builder().status(500).body(()).unwrap())
    }));
    assert_eq!(offer(&svc, 1000, secs(10)).await, 0);
    assert_eq!((handle.requests(), handle.accepts()), (10_000, 10_000));
}

#[tokio::test(start_paused = true)]
async fn rejections_count_as_requests_and_carry_the_probability() {
    let layer = throttling().seed(1);
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: Plain| async {
        Ok::<_, io::Error>(Response::builder().status(503).body(()).unwrap())
    }));
    // Nothing accepted: p = r / (r + 1).
    for r in 0..1000u64 {
        let expected = r as f64 / (r as f64 + 1.0);
        assert_eq!(handle.probability(), expected);
        if let Err(limit) = send(&svc, Request::new(())).await {
            assert_eq!(
                limit,
                Limit::Throttled {
                    probability: expected
                }
            );
        }
    }
    assert_eq!(handle.requests(), 1000);
    assert_eq!(handle.accepts(), 0);
    assert!(handle.rejected() > 950, "{}", handle.rejected());

    let err = Error::Overloaded {
        service: "users".into(),
        limit: Limit::Throttled { probability: 0.5 },
    };
    assert_eq!(
        err.to_string(),
        "service \"users\": overloaded: adaptive throttling rejected the request locally \
         (rejecting 50.0% of requests)"
    );
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_throttles_the_same_requests() {
    async fn pattern(seed: u64) -> Vec<bool> {
        let svc = throttling().seed(seed).layer(service_fn(|_: Plain| async {
            Ok::<_, io::Error>(Response::builder().status(429).body(()).unwrap())
        }));
        let mut out = Vec::new();
        for _ in 0..200 {
            out.push(send(&svc, Request::new(())).await.is_err());
        }
        out
    }
    assert_eq!(pattern(5).await, pattern(5).await);
    assert_ne!(pattern(5).await, pattern(6).await);
}

#[tokio::test(start_paused = true)]
async fn what_counts_as_accepted() {
    let cases: [(Reply, bool); 10] = [
        (Ok(200), true),
        (Ok(404), true),
        (Ok(500), true),
        (Ok(501), true),
        (Ok(429), false),
        (Ok(502), false),
        (Ok(503), false),
        (Ok(504), false),
        (Err(io::ErrorKind::ConnectionRefused), false),
        (Err(io::ErrorKind::ConnectionReset), false),
    ];
    for (reply, accepted) in cases {
        let backend = Backend::default();
        let layer = throttling();
        let handle = layer.handle();
        let mut fut = spawn(layer.layer(backend.clone()).oneshot(req(0)));
        assert!(fut.poll().is_pending());
        backend.answer(0, reply);
        let result = match fut.poll() {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("answered, yet pending"),
        };
        if let Err(err) = &result {
            assert_eq!(err.service(), "users");
        }
        assert_eq!(handle.requests(), 1);
        assert_eq!(handle.accepts(), u64::from(accepted), "{reply:?}");
    }

    // Cancelled: a request, not accepted.
    let backend = Backend::default();
    let layer = throttling();
    let handle = layer.handle();
    let mut fut = spawn(layer.layer(backend).oneshot(req(0)));
    assert!(fut.poll().is_pending());
    drop(fut);
    assert_eq!((handle.requests(), handle.accepts()), (1, 0));
}

#[test]
fn layers_and_services_are_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<ConcurrencyLimitLayer>();
    check::<ConcurrencyLimit<Backend>>();
    check::<ConcurrencyHandle>();
    check::<RateLimitLayer>();
    check::<RateLimit<Backend>>();
    check::<RateLimitHandle>();
    check::<ThrottleLayer>();
    check::<Throttle<Backend>>();
    check::<ThrottleHandle>();
    fn send<T: Send>() {}
    send::<LimitedFuture>();
    send::<throttle::ResponseFuture<BackendFuture, crate::classify::HttpClassify>>();
    send::<rate::ResponseFuture<BackendFuture>>();
}

// ---------------------------------------------------------------------------
// Settings, and the one shared state `new` creates.

/// Each problem as `field: message`, in field order.
fn problems(result: Result<(), SettingsError>) -> Vec<String> {
    match result {
        Ok(()) => Vec::new(),
        Err(err) => err.problems().iter().map(ToString::to_string).collect(),
    }
}

/// `per_second` with bursts of `burst`.
fn rate(per_second: f64, burst: u32) -> RateLimitSettings {
    RateLimitSettings {
        per_second,
        burst: Some(burst),
        ..RateLimitSettings::default()
    }
}

const NO_PROBLEM: [&str; 0] = [];

const RATE_REQUIRED: &str = "per_second: is required (0 is not a rate): a finite number of \
                             requests a second from 1e-6 to 1e9";

#[test]
fn the_defaults_are_valid_and_are_what_the_layers_use() {
    assert_eq!(
        problems(ConcurrencySettings::default().validate()),
        NO_PROBLEM
    );
    assert_eq!(problems(ThrottleSettings::default().validate()), NO_PROBLEM);
    // A rate has no sensible default: it is the one field to set.
    assert_eq!(
        problems(RateLimitSettings::default().validate()),
        [RATE_REQUIRED]
    );
    let settings = RateLimitSettings {
        per_second: 7.5,
        ..RateLimitSettings::default()
    };
    assert_eq!(problems(settings.validate()), NO_PROBLEM);

    let c = ConcurrencyLimitLayer::new("users", ConcurrencySettings::default())
        .unwrap()
        .handle();
    assert_eq!(
        (c.max(), c.queue(), c.max_wait()),
        (
            concurrency::DEFAULT_MAX,
            concurrency::DEFAULT_QUEUE,
            Some(concurrency::DEFAULT_MAX_WAIT)
        )
    );
    let r = rate_limit(settings).handle();
    assert_eq!(
        (r.rate(), r.burst(), r.max_keys()),
        (7.5, 8, rate::DEFAULT_MAX_KEYS),
        "the burst: one second's worth, rounded up"
    );
    let t = throttling().handle();
    assert_eq!(
        (t.k(), t.window()),
        (throttle::DEFAULT_K, throttle::DEFAULT_WINDOW)
    );
}

#[test]
fn each_bad_concurrency_setting_is_refused_at_its_field() {
    let cases = [
        (
            ConcurrencySettings {
                max: 0,
                ..ConcurrencySettings::default()
            },
            "max: must be at least 1",
        ),
        (
            ConcurrencySettings {
                max_wait: Some(Duration::ZERO),
                ..ConcurrencySettings::default()
            },
            "max_wait: must be greater than 0 (\"none\" waits as long as the request's \
             deadline allows; `queue = 0` sheds instead of queueing)",
        ),
    ];
    for (settings, problem) in cases {
        assert_eq!(problems(settings.validate()), [problem]);
        // Refused, not adjusted.
        let err = ConcurrencyLimitLayer::new("users", settings).unwrap_err();
        assert_eq!(err.to_string(), problem);
    }
    // A queue of 0 and no wait limit are settings, not mistakes.
    let edge = ConcurrencySettings {
        max: 1,
        queue: 0,
        max_wait: None,
    };
    assert_eq!(problems(edge.validate()), NO_PROBLEM);

    let all = ConcurrencySettings {
        max: 0,
        queue: 0,
        max_wait: Some(Duration::ZERO),
    };
    let err = all.validate().unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["max", "max_wait"]);
}

#[test]
fn each_bad_rate_setting_is_refused_at_its_field() {
    let range = "must be a finite number of requests a second from 1e-6 to 1e9, got";
    let per_second = |per_second| RateLimitSettings {
        per_second,
        ..RateLimitSettings::default()
    };
    let cases = [
        (per_second(0.0), RATE_REQUIRED.to_owned()),
        (per_second(-1.0), format!("per_second: {range} -1")),
        (per_second(f64::NAN), format!("per_second: {range} NaN")),
        (
            per_second(f64::INFINITY),
            format!("per_second: {range} inf"),
        ),
        (per_second(1e-7), format!("per_second: {range} 0.0000001")),
        (per_second(2e9), format!("per_second: {range} 2000000000")),
        (
            RateLimitSettings {
                burst: Some(0),
                ..rate(1.0, 1)
            },
            "burst: must be at least 1".to_owned(),
        ),
        (
            RateLimitSettings {
                key_header: Some("x tenant".into()),
                ..rate(1.0, 1)
            },
            "key_header: \"x tenant\" is not a valid header name".to_owned(),
        ),
        (
            RateLimitSettings {
                max_keys: 0,
                ..rate(1.0, 1)
            },
            "max_keys: must be at least 1".to_owned(),
        ),
    ];
    for (settings, problem) in cases {
        assert_eq!(problems(settings.validate()), [problem.as_str()]);
        // Refused, not clamped.
        let err = RateLimitLayer::new("users", settings).unwrap_err();
        assert_eq!(err.to_string(), problem);
    }
    // The ends of the range are rates.
    for per_second in [rate::MIN_RATE, rate::MAX_RATE] {
        assert_eq!(problems(rate(per_second, 1).validate()), NO_PROBLEM);
    }

    let all = RateLimitSettings {
        per_second: f64::NAN,
        burst: Some(0),
        key_header: Some("x tenant".into()),
        max_keys: 0,
        without_key: WithoutKey::Pass,
    };
    let err = all.validate().unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["per_second", "burst", "key_header", "max_keys"]);
}

#[test]
fn each_bad_throttle_setting_is_refused_at_its_field() {
    let k = |k| ThrottleSettings {
        k,
        ..ThrottleSettings::default()
    };
    let at_least = "k: must be a finite number at least 1 (the backend is offered at least \
                    what it accepts), got";
    let cases = [
        (k(0.5), format!("{at_least} 0.5")),
        (k(-2.0), format!("{at_least} -2")),
        (k(f64::NAN), format!("{at_least} NaN")),
        (k(f64::INFINITY), format!("{at_least} inf")),
        (
            ThrottleSettings {
                window: Duration::ZERO,
                ..ThrottleSettings::default()
            },
            "window: must be greater than 0".to_owned(),
        ),
    ];
    for (settings, problem) in cases {
        assert_eq!(problems(settings.validate()), [problem.as_str()]);
        // Refused, not raised to 1 or left as it was.
        let err = ThrottleLayer::new("users", settings).unwrap_err();
        assert_eq!(err.to_string(), problem);
    }
    assert_eq!(problems(k(1.0).validate()), NO_PROBLEM);

    let both = ThrottleSettings {
        k: f64::NAN,
        window: Duration::ZERO,
    };
    let err = both.validate().unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["k", "window"]);
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_handle_taken_right_after_new_sees_the_traffic() {
    let layer = ConcurrencyLimitLayer::new("users", bulkhead(1, 0)).unwrap();
    let handle = layer.handle();
    assert_eq!(layer.settings(), &bulkhead(1, 0));
    let backend = Backend::default();
    let mut first = spawn(layer.layer(backend.clone()).oneshot(req(0)));
    assert!(first.poll().is_pending());
    // Another client's clone of the layer shares the one slot.
    let mut second = spawn(layer.clone().layer(backend.clone()).oneshot(req(1)));
    assert_eq!(shed(second.poll()), Limit::Concurrency { max: 1, queue: 0 });
    assert_eq!((handle.in_flight(), handle.shed_full()), (1, 1));
    backend.answer(0, Ok(200));
    assert_eq!(ok_status(first.poll()), 200);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_rate_handle_taken_right_after_new_sees_the_traffic() {
    let layer = rate_limit(rate(1.0, 1));
    let handle = layer.handle();
    // Keying afterwards keeps the buckets.
    let layer = layer.keyed_by_header(http::HeaderName::from_static("x-tenant"));
    assert_eq!(layer.settings().key_header.as_deref(), Some("x-tenant"));
    let svc = layer.layer(answering());
    send(&svc, tenant("a")).await.unwrap();
    send(&svc, Request::new(())).await.unwrap();
    // A clone shares the shared bucket, now empty.
    let other = layer.clone().layer(answering());
    send(&other, Request::new(())).await.unwrap_err();
    assert_eq!(
        (handle.admitted(), handle.rejected(), handle.keys()),
        (2, 1, 1)
    );

    let layer = layer.keyed(|req: &Plain| Some(req.uri().path().to_owned()));
    assert_eq!(layer.settings().key_header, None, "the key is a function");
    send(&layer.layer(answering()), Request::new(()))
        .await
        .unwrap();
    assert_eq!((handle.admitted(), handle.keys()), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn a_throttle_handle_taken_right_after_new_sees_the_traffic() {
    let layer = throttling();
    let handle = layer.handle();
    // Seeding and a classifier of its own keep the counts.
    let layer = layer
        .seed(3)
        .classify(crate::classify::HttpClassify::default());
    assert_eq!(layer.settings(), &ThrottleSettings::default());
    send(&layer.layer(answering()), Request::new(()))
        .await
        .unwrap();
    // A clone counts into the same window: one accepted, one refused.
    let refusing = layer.clone().layer(service_fn(|_: Plain| async {
        Ok::<_, io::Error>(Response::builder().status(503).body(()).unwrap())
    }));
    send(&refusing, Request::new(())).await.unwrap();
    assert_eq!((handle.requests(), handle.accepts()), (2, 1));
    assert_eq!(handle.probability(), 0.0, "(2 - 2·1) / 3");
}

/// Settings files: durations as strings, unknown fields refused. The
/// formats come with the `file` feature.
#[cfg(all(feature = "serde", feature = "file"))]
mod files {
    use super::*;

    #[test]
    fn settings_read_and_write_durations_as_strings() {
        let c: ConcurrencySettings = toml::from_str("max = 32\nmax_wait = \"250ms\"").unwrap();
        assert_eq!(
            c,
            ConcurrencySettings {
                max: 32,
                max_wait: Some(ms(250)),
                ..ConcurrencySettings::default()
            }
        );
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("max_wait = \"250ms\""), "{text}");
        assert_eq!(toml::from_str::<ConcurrencySettings>(&text).unwrap(), c);
        let none: ConcurrencySettings = toml::from_str("max_wait = \"none\"").unwrap();
        assert_eq!(none.max_wait, None);
        let json = serde_json::to_string(&none).unwrap();
        assert!(json.contains(r#""max_wait":"none""#), "{json}");
        assert_eq!(
            serde_json::from_str::<ConcurrencySettings>(&json).unwrap(),
            none
        );

        let t: ThrottleSettings = toml::from_str("window = \"1m 30s\"").unwrap();
        assert_eq!(
            t,
            ThrottleSettings {
                window: secs(90),
                ..ThrottleSettings::default()
            }
        );
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains(r#""window":"1m 30s""#), "{json}");
        assert_eq!(serde_json::from_str::<ThrottleSettings>(&json).unwrap(), t);
        assert_eq!(
            toml::from_str::<ThrottleSettings>(&toml::to_string(&t).unwrap()).unwrap(),
            t
        );

        let r: RateLimitSettings = toml::from_str(
            "per_second = 0.5\nburst = 3\nkey_header = \"X-Tenant\"\nmax_keys = 10\n\
             without_key = \"pass\"",
        )
        .unwrap();
        assert_eq!(
            r,
            RateLimitSettings {
                per_second: 0.5,
                burst: Some(3),
                key_header: Some("X-Tenant".into()),
                max_keys: 10,
                without_key: WithoutKey::Pass,
            }
        );
        assert_eq!(
            toml::from_str::<RateLimitSettings>(&toml::to_string(&r).unwrap()).unwrap(),
            r
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<RateLimitSettings>(&json).unwrap(), r);

        let bad = toml::from_str::<ThrottleSettings>("window = \"2 fortnights\"").unwrap_err();
        assert!(
            bad.to_string().contains("\"250ms\""),
            "says how to write one: {bad}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let errors = [
            toml::from_str::<ConcurrencySettings>("max = 1\nmax_wiat = \"1s\"")
                .unwrap_err()
                .to_string(),
            toml::from_str::<RateLimitSettings>("per_second = 1.0\nburts = 3")
                .unwrap_err()
                .to_string(),
            serde_json::from_str::<ThrottleSettings>(r#"{"k": 2.0, "windw": "1s"}"#)
                .unwrap_err()
                .to_string(),
        ];
        for (err, field) in errors.iter().zip(["max_wiat", "burts", "windw"]) {
            assert!(err.contains(&format!("unknown field `{field}`")), "{err}");
        }
        let err = toml::from_str::<RateLimitSettings>("per_second = 1.0\nwithout_key = \"drop\"")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown variant `drop`, expected `shared` or `pass`"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_per_second_is_refused_by_name() {
        let r: RateLimitSettings = toml::from_str("burst = 3").unwrap();
        assert_eq!(problems(r.validate()), [RATE_REQUIRED]);
    }
}
