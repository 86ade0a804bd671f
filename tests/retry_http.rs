//! Retries and deadlines end to end: real hyper servers on 127.0.0.1, the
//! real hyper-util client, the whole `Client` stack.
//!
//! Exact timing properties (budget arithmetic, backoff bounds, deadline
//! instants) are tested on paused time in `src/retry/tests.rs` and
//! `src/deadline/tests.rs`; these tests check the same promises across real
//! sockets, with margins that hold on a busy machine.

#![cfg(feature = "demo")]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use palisade::Client;
use palisade::Hyper;
use palisade::deadline::header::DEADLINE_HEADER;
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::http::hyper_client;
use palisade::retry::RetryStop;
use tokio::time::Instant;
use tower::ServiceExt;

type TestClient = Hyper<Full<Bytes>>;

/// A client over `addrs` with the default settings but the timeout (the
/// default deadline) and the replay buffer size.
fn client(
    addrs: impl IntoIterator<Item = SocketAddr>,
    timeout: Duration,
    body_limit: usize,
) -> TestClient {
    Client::builder("test")
        .endpoints(addrs.into_iter().map(Endpoint::from))
        .http(hyper_client())
        .timeout(Some(timeout))
        .body_limit(body_limit)
        .build()
        .unwrap()
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_LIMIT: usize = 64 * 1024;

async fn ready(client: &TestClient, n: usize) {
    tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_until(|c| c.endpoint_count() == n),
    )
    .await
    .expect("endpoints discovered");
}

fn request(method: Method, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("http://test/")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// An address on 127.0.0.1 where nothing listens: connections are refused.
async fn refused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_503s_are_absorbed_with_few_extra_attempts() {
    let flaky = Behavior::new()
        .latency(Duration::from_millis(1))
        .fail_every(10);
    let mut fleet = Vec::new();
    for _ in 0..5 {
        fleet.push(Backend::spawn(flaky).await.unwrap());
    }
    let client: TestClient = client(
        fleet.iter().map(Backend::addr),
        DEFAULT_TIMEOUT,
        DEFAULT_LIMIT,
    );
    ready(&client, 5).await;

    let total = 2000;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..total / 10 {
                let rsp = client
                    .clone()
                    .oneshot(request(Method::GET, ""))
                    .await
                    .unwrap();
                ok += usize::from(rsp.status() == 200);
                rsp.into_body().collect().await.unwrap();
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let attempts: u64 = fleet.iter().map(Backend::requests).sum();
    let success = ok as f64 / total as f64;
    let per_request = attempts as f64 / total as f64;
    eprintln!("success {success:.4}, attempts per request {per_request:.4}");
    assert!(success >= 0.995, "success rate {success}");
    assert!(per_request <= 1.12, "attempts per request {per_request}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_on_503() {
    let failing = Backend::spawn(Behavior::new().failure_rate(1.0))
        .await
        .unwrap();
    let client: TestClient = client([failing.addr()], DEFAULT_TIMEOUT, DEFAULT_LIMIT);
    ready(&client, 1).await;
    for _ in 0..10 {
        let rsp = client
            .clone()
            .oneshot(request(Method::POST, "order"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(
            rsp.extensions().get::<RetryStop>(),
            Some(&RetryStop::Method)
        );
    }
    assert_eq!(failing.requests(), 10, "each POST reached the backend once");

    // The same backend with GET: retried (three attempts, all 503).
    let rsp = client
        .clone()
        .oneshot(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(
        rsp.extensions().get::<RetryStop>(),
        Some(&RetryStop::Attempts(3))
    );
    assert_eq!(failing.requests(), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_when_the_connection_was_refused() {
    // Slower than a new endpoint's 30 ms seed, so the dead endpoint looks
    // cheaper and is chosen (and refuses) whichever goes first.
    let healthy = Backend::spawn(Behavior::new().latency(Duration::from_millis(50)))
        .await
        .unwrap();
    let dead = refused_addr().await;
    let client: TestClient = client([dead, healthy.addr()], DEFAULT_TIMEOUT, DEFAULT_LIMIT);
    ready(&client, 2).await;
    for _ in 0..20 {
        let rsp = client
            .clone()
            .oneshot(request(Method::POST, "order"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "a refused POST is retried elsewhere");
    }
    assert_eq!(healthy.requests(), 20, "every POST arrived exactly once");
    let stats = client.endpoint_stats();
    let dead_stats = stats.iter().find(|s| s.address == dead.into()).unwrap();
    assert!(
        dead_stats.failures >= 1,
        "the dead endpoint was never tried: {dead_stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_cuts_a_slow_backend_and_no_retry_starts_late() {
    let slow = Backend::spawn(Behavior::new().latency(Duration::from_secs(5)))
        .await
        .unwrap();
    let client: TestClient = client([slow.addr()], Duration::from_secs(1), DEFAULT_LIMIT);
    ready(&client, 1).await;
    let start = Instant::now();
    let err = client.oneshot(request(Method::GET, "")).await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(err.is_deadline_exceeded(), "{err}");
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "cut near the deadline, not the backend's 5 s: {elapsed:?}"
    );
    assert_eq!(slow.requests(), 1, "no retry was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_the_remaining_deadline() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let client: TestClient = client([backend.addr()], Duration::from_millis(800), DEFAULT_LIMIT);
    ready(&client, 1).await;
    client
        .clone()
        .oneshot(request(Method::GET, ""))
        .await
        .unwrap();
    let seen = backend.last_request().expect("a request arrived");
    let ms: u64 = seen.headers[DEADLINE_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms <= 795, "at most the timeout less the reserve: {ms}");
    assert!(ms > 0, "a budget remains: {ms}");

    // A caller's own (tighter) header is honoured and passed on, reduced.
    let mut req = request(Method::GET, "");
    req.headers_mut()
        .insert(DEADLINE_HEADER, "300".parse().unwrap());
    client.clone().oneshot(req).await.unwrap();
    let ms: u64 = backend.last_request().unwrap().headers[DEADLINE_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms <= 295 && ms > 0, "{ms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_deadline_headers_are_ignored() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let client: TestClient = client([backend.addr()], DEFAULT_TIMEOUT, DEFAULT_LIMIT);
    ready(&client, 1).await;
    for (name, value) in [
        (DEADLINE_HEADER, "soon"),
        (DEADLINE_HEADER, "-20"),
        ("grpc-timeout", "9999999999S"),
        ("grpc-timeout", "5 parsecs"),
        ("x-envoy-expected-rq-timeout-ms", "0x10"),
    ] {
        let mut req = request(Method::GET, "");
        req.headers_mut().insert(name, value.parse().unwrap());
        let rsp = client
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| panic!("{name}: {value}: {e}"));
        assert_eq!(rsp.status(), 200);
        // The default timeout (15 s) applies instead: never a zero deadline.
        let ms: u64 = backend.last_request().unwrap().headers[DEADLINE_HEADER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(ms > 10_000, "{name}: {value} gave a deadline of {ms} ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_sent_once_and_whole() {
    let failing = Backend::spawn(Behavior::new().failure_rate(1.0))
        .await
        .unwrap();
    let client: TestClient = client([failing.addr()], DEFAULT_TIMEOUT, 1024);
    ready(&client, 1).await;
    let body = Bytes::from(vec![b'x'; 100 * 1024]);
    let req = Request::put("http://test/").body(Full::new(body)).unwrap();
    let rsp = client.oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(rsp.extensions().get::<RetryStop>(), Some(&RetryStop::Body));
    assert_eq!(failing.requests(), 1);
}

/// An HTTP/2 server that refuses every stream before processing it
/// (RST_STREAM REFUSED_STREAM, RFC 9113 §8.7); counts the streams.
async fn refusing_h2(streams: std::sync::Arc<std::sync::atomic::AtomicU64>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let streams = streams.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    addr
}

/// A stream the server refused unprocessed is retried on another endpoint
/// even for a POST: nothing was done, whatever the method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_refused_unprocessed_is_retried_for_any_method() {
    let streams = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let refusing = refusing_h2(streams.clone()).await;
    let healthy = Backend::spawn(Behavior::new()).await.unwrap();
    let client: TestClient = Client::builder("h2")
        .endpoints([Endpoint::from(refusing), Endpoint::from(healthy.addr())])
        .http(palisade::http::hyper_h2c_client())
        // Random picks: the refusing endpoint is drawn about every other
        // first attempt until it is ejected.
        .choice(palisade::balance::Choice::Random)
        .build()
        .unwrap();
    client.wait_until(|c| c.endpoint_count() == 2).await;
    let mut calls = 0;
    while streams.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(calls < 64, "64 calls never drew the refusing endpoint");
        let req = Request::post("http://h2/")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        let rsp = client.clone().oneshot(req).await;
        let rsp = rsp.unwrap_or_else(|e| panic!("a refused POST was not retried: {e}"));
        assert_eq!(rsp.status(), 200);
        calls += 1;
    }
    assert_eq!(healthy.requests(), calls, "each POST was answered once");
}
