//! A reqwest client as the inner client of the whole stack: real hyper
//! servers on 127.0.0.1, the real reqwest client, the default classifier.
//!
//! As in `balance_http.rs`, assertions are about shares of traffic with wide
//! margins, never absolute times.

#![cfg(all(feature = "reqwest", feature = "demo"))]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use palisade::Client;
use palisade::Reqwest;
use palisade::deadline::header::DEADLINE_HEADER;
use palisade::demo::{BACKEND_HEADER, Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::http::reqwest::{ReqwestService, client_builder};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

fn client(addrs: impl IntoIterator<Item = SocketAddr>) -> Reqwest {
    Client::builder("test")
        .endpoints(addrs.into_iter().map(Endpoint::from))
        .http(ReqwestService::new(client_builder().build().unwrap()))
        .build()
        .unwrap()
}

async fn ready(client: &Reqwest, n: usize) {
    tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_until(|c| c.endpoint_count() == n),
    )
    .await
    .expect("endpoints discovered");
}

async fn backends(behaviors: &[Behavior]) -> Vec<Backend> {
    let mut out = Vec::new();
    for b in behaviors {
        out.push(Backend::spawn(*b).await.expect("bind 127.0.0.1"));
    }
    out
}

/// An address on 127.0.0.1 where nothing listens: connections are refused.
async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// `total` GETs from `concurrency` workers; how many each backend answered
/// (by the demo backends' response header). Panics on any error or non-200.
async fn spread(client: &Reqwest, total: usize, concurrency: usize) -> HashMap<SocketAddr, usize> {
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let n = total / concurrency + usize::from(w < total % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(n);
            for _ in 0..n {
                let req = Request::get("http://test/hello")
                    .body(Full::<Bytes>::default())
                    .unwrap();
                let rsp = client.clone().oneshot(req).await.expect("request succeeds");
                assert_eq!(rsp.status(), 200);
                let backend: SocketAddr = rsp.headers()[BACKEND_HEADER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, "ok\n");
                seen.push(backend);
            }
            seen
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        for backend in t.await.unwrap() {
            *counts.entry(backend).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_succeed_and_spread_over_the_fleet() {
    let fast = Behavior::new().latency(Duration::from_millis(5));
    let fleet = backends(&[fast, fast, fast]).await;
    let client = client(fleet.iter().map(Backend::addr));
    ready(&client, 3).await;

    let counts = spread(&client, 300, 6).await;
    eprintln!("{counts:?}");
    for b in &fleet {
        let n = counts.get(&b.addr()).copied().unwrap_or(0);
        assert!(n >= 30, "{} answered {n} of 300: {counts:?}", b.addr());
        assert_eq!(b.requests() as usize, n, "no request was sent twice");
    }
    // The logical authority travels in Host; the URI went to the endpoint.
    let seen = fleet[0].last_request().unwrap();
    assert_eq!(seen.headers["host"], "test");
    assert_eq!(seen.uri.path(), "/hello");
    assert!(
        seen.headers.contains_key(DEADLINE_HEADER),
        "headers set by the stack reach the backend: {:?}",
        seen.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_little_traffic() {
    let fast = Behavior::new().latency(Duration::from_millis(10));
    let slow = Behavior::new().latency(Duration::from_millis(200));
    let fleet = backends(&[fast, fast, slow]).await;
    let slow_addr = fleet[2].addr();
    let client = client(fleet.iter().map(Backend::addr));
    ready(&client, 3).await;

    let counts = spread(&client, 600, 6).await;
    let slow_share = counts.get(&slow_addr).copied().unwrap_or(0) as f64 / 600.0;
    eprintln!("slow share {slow_share:.4}: {counts:?}");
    assert!(
        slow_share < 0.08,
        "the slow backend got {:.1}% of requests",
        slow_share * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_on_get_is_retried_on_another_backend() {
    let failing = Backend::spawn(Behavior::new().failure_rate(1.0))
        .await
        .unwrap();
    // Slower than a new endpoint's 30 ms seed, so the failing endpoint looks
    // cheaper and is chosen (and fails) early, whichever goes first.
    let healthy = Backend::spawn(Behavior::new().latency(Duration::from_millis(50)))
        .await
        .unwrap();
    let client = client([failing.addr(), healthy.addr()]);
    ready(&client, 2).await;
    for _ in 0..20 {
        let req = Request::get("http://test/")
            .body(Full::<Bytes>::default())
            .unwrap();
        let rsp = client.clone().oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), 200, "a 503 on GET is retried elsewhere");
        assert_eq!(
            rsp.headers()[BACKEND_HEADER],
            healthy.addr().to_string().as_str()
        );
    }
    assert!(
        failing.requests() >= 1,
        "the failing backend was never tried"
    );
    assert_eq!(failing.failures(), failing.requests());
    assert_eq!(healthy.requests(), 20, "every GET reached it exactly once");
}

/// What a [`Recorder`] saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    body: Bytes,
}

/// A hyper server on 127.0.0.1 that reads each request body whole, keeps
/// it, and answers 200 with the body's length after `latency`. While a body
/// streams in, `received` holds the count of its bytes so far.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    received: watch::Receiver<usize>,
    server: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn spawn(latency: Duration) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (received_tx, received) = watch::channel(0);
        let (seen2, received2) = (seen.clone(), Arc::new(received_tx));
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, received) = (seen2.clone(), received2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        record(req, latency, seen.clone(), received.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            seen,
            received,
            server,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    req: Request<Incoming>,
    latency: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
    received: Arc<watch::Sender<usize>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, mut body) = req.into_parts();
    received.send_replace(0);
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(chunk) = frame?.into_data() {
            data.extend_from_slice(&chunk);
            received.send_modify(|n| *n += chunk.len());
        }
    }
    let len = data.len();
    seen.lock().unwrap().push(Seen {
        method: parts.method,
        body: data.into(),
    });
    tokio::time::sleep(latency).await;
    Ok(Response::new(Full::new(Bytes::from(len.to_string()))))
}

/// 10 KiB that would show any byte dropped, repeated or reordered.
fn payload() -> Bytes {
    (0..10 * 1024u32).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_is_sent_intact_and_replayed_when_the_connection_is_refused() {
    // Slower than a new endpoint's 30 ms seed, so the dead endpoint looks
    // cheaper and is chosen (and refuses) whichever goes first.
    let recorder = Recorder::spawn(Duration::from_millis(50)).await;
    let dead = refused_addr().await;
    let client = client([dead, recorder.addr]);
    ready(&client, 2).await;

    let body = payload();
    for _ in 0..10 {
        let req = Request::post("http://test/orders")
            .body(Full::new(body.clone()))
            .unwrap();
        let rsp = client.clone().oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), 200, "a refused POST is retried elsewhere");
        let answer = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(answer, "10240");
    }
    let seen = recorder.seen();
    assert_eq!(seen.len(), 10, "every POST arrived exactly once");
    for s in &seen {
        assert_eq!(s.method, Method::POST);
        assert!(s.body == body, "body of {} bytes differs", s.body.len());
    }
    let stats = client.endpoint_stats();
    let dead_stats = stats.iter().find(|s| s.address == dead.into()).unwrap();
    assert!(
        dead_stats.failures >= 1,
        "the dead endpoint was never tried: {dead_stats:?}"
    );
}

/// A request body fed chunk by chunk from a channel, with no known length.
struct Channel(mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_streams_through_without_being_collected_first() {
    let recorder = Recorder::spawn(Duration::ZERO).await;
    let client = client([recorder.addr]);
    ready(&client, 1).await;

    let (tx, rx) = mpsc::channel(1);
    let req = Request::put("http://test/upload")
        .body(Channel(rx))
        .unwrap();
    let call = tokio::spawn(client.clone().oneshot(req));

    tx.send(Bytes::from(vec![b'a'; 1000])).await.unwrap();
    // The backend gets the first chunk while the body is still open: neither
    // palisade nor reqwest waits for the end of the body.
    let mut received = recorder.received.clone();
    tokio::time::timeout(Duration::from_secs(10), received.wait_for(|n| *n >= 1000))
        .await
        .expect("the first chunk arrived before the body ended")
        .unwrap();
    tx.send(Bytes::from(vec![b'b'; 500])).await.unwrap();
    drop(tx);

    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 200);
    let answer = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(answer, "1500");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..1000], &[b'a'; 1000][..]);
    assert_eq!(&seen[0].body[1000..], &[b'b'; 500][..]);
}
