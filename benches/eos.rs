//! What judging a response at the end of its stream costs per request:
//! the body wrapper and its handle (`WatchEos`), a listener on it, and the
//! telemetry layer taking its verdict at the end instead of at the head.
//! Every variant reads the (in-memory, one-frame) body to its end, and is
//! compared with the bare service measured in the same run.
//! See `benches/README.md`.
//!
//! `cargo bench --bench eos` (`-- --quick` or `PALISADE_BENCH_QUICK=1`
//! for a smoke run)

#[path = "common/mod.rs"]
mod common;

use common::{Mode, median};
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use palisade::classify::{Eos, HttpClassify, WatchEos};
use palisade::metrics::{Metrics, TelemetryLayer};
use prometheus_client::registry::Registry;
use tower::{Layer, Service, ServiceExt, service_fn};

const REQUESTS: u32 = 200_000;
const REPS: usize = 15;

type Answer = Result<Response<Full<Bytes>>, palisade::Error>;

fn backend() -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = palisade::Error,
    Future = Ready<Answer>,
> + Clone {
    service_fn(|_: Request<()>| ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))))))
}

/// A one-frame body that is pending once before its frame, as a body read
/// off a socket often is: the case where the idle timer is armed.
struct PendingOnce {
    pended: bool,
    data: Option<Bytes>,
}

impl http_body::Body for PendingOnce {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if !self.pended {
            self.pended = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }
}

fn pending_backend() -> impl Service<
    Request<()>,
    Response = Response<PendingOnce>,
    Error = palisade::Error,
    Future = Ready<Result<Response<PendingOnce>, palisade::Error>>,
> + Clone {
    service_fn(|_: Request<()>| {
        ready(Ok(Response::new(PendingOnce {
            pended: false,
            data: Some(Bytes::from_static(b"ok\n")),
        })))
    })
}

/// ns per request of `svc`, sending `REQUESTS` back to back, each body read
/// to its end; with `listen`, a no-op listener is put on each response's
/// end of stream first.
async fn measure<S, B>(mut svc: S, listen: bool) -> f64
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..REQUESTS {
        let rsp = svc
            .ready()
            .await
            .unwrap()
            .call(black_box(Request::new(())))
            .await
            .unwrap();
        if listen && let Some(eos) = rsp.extensions().get::<Eos>() {
            eos.on_end(|end| {
                black_box(end);
            });
        }
        black_box(rsp.into_body().collect().await.unwrap());
    }
    start.elapsed().as_nanos() as f64 / f64::from(REQUESTS)
}

fn main() {
    let reps = if Mode::from_env() == Mode::Full {
        REPS
    } else {
        1
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let telemetry = TelemetryLayer::new("bench", Some(&metrics), HttpClassify::default());

    let idle = Some(std::time::Duration::from_secs(60));
    let mut runs: [Vec<f64>; 8] = Default::default();
    rt.block_on(async {
        // Interleaved repetitions: noise hits every variant alike.
        for _ in 0..reps {
            runs[0].push(measure(backend(), false).await);
            runs[1].push(measure(WatchEos::new(backend()), false).await);
            runs[2].push(measure(WatchEos::new(backend()), true).await);
            runs[3].push(measure(telemetry.layer(backend()), false).await);
            runs[4].push(measure(telemetry.layer(WatchEos::new(backend())), false).await);
            runs[5].push(measure(pending_backend(), false).await);
            runs[6].push(measure(WatchEos::new(pending_backend()), false).await);
            let timed = WatchEos::new(pending_backend()).idle_timeout(idle);
            runs[7].push(measure(timed, false).await);
        }
    });
    let [
        bare,
        watched,
        listened,
        head,
        end,
        p_bare,
        p_watched,
        p_timed,
    ] = runs.map(median);
    println!(
        "end-of-stream cost, {REQUESTS} requests × {reps} interleaved reps, medians, 1 thread, no tracing subscriber"
    );
    println!("{:<58} {:>8} {:>9}", "variant", "ns/req", "added ns");
    println!(
        "{:<58} {:>8.1} {:>9}",
        "bare service, body read (baseline)", bare, "-"
    );
    let row = |name: &str, ns: f64, base: f64| {
        println!("{name:<58} {ns:>8.1} {:>9.1}", ns - base);
    };
    row("WatchEos (body wrapper + handle)", watched, bare);
    row("WatchEos + one listener", listened, bare);
    row(
        "telemetry, verdict at the head (unwatched service)",
        head,
        bare,
    );
    row("telemetry, verdict at the end (over WatchEos)", end, bare);
    println!(
        "{:<58} {:>8.1} {:>9}",
        "body pending once, bare (baseline)", p_bare, "-"
    );
    row("body pending once, WatchEos", p_watched, p_bare);
    row(
        "body pending once, WatchEos + 60 s idle timeout",
        p_timed,
        p_bare,
    );
    println!(
        "the idle timeout adds {:.1} ns to a body that waits once (a timer armed and dropped); none to a body that never waits",
        p_timed - p_watched
    );
    println!(
        "the end-of-stream verdict adds {:.1} ns to the telemetry layer ({:.2}×); one listener costs {:.1} ns",
        end - head,
        (end - bare) / (head - bare),
        listened - watched
    );
}
