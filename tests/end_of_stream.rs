//! Judging a response at the end of its stream, through a whole client over
//! real h2c servers on 127.0.0.1: a gRPC status in the trailers (after
//! data) and a body reset after a good head reach the balancer, the
//! breaker and the metrics, and are never retried.

#![cfg(feature = "demo")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade::breaker::BreakerState;
use palisade::discover::Endpoint;
use palisade::http::hyper_h2c_client;
use palisade::metrics::Metrics;
use palisade::{Client, Error, Hyper};
use prometheus_client::registry::Registry;
use tower::ServiceExt;

/// An h2c server answering as a gRPC server would: `200`,
/// `content-type: application/grpc`, one message, then `grpc-status` in
/// the trailers. The status is the request's `x-status` header (default
/// 0); `x-status: reset` resets the stream after the message instead.
/// Counts the calls it receives.
async fn grpc_like(calls: Arc<AtomicU64>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = calls.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        calls.fetch_add(1, Ordering::Relaxed);
                        let status = req
                            .headers()
                            .get("x-status")
                            .map_or("0".to_owned(), |v| v.to_str().unwrap().to_owned());
                        async move {
                            let message = Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")));
                            let end = if status == "reset" {
                                Err(std::io::Error::other("reset mid-stream"))
                            } else {
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", status.parse().unwrap());
                                Ok(Frame::trailers(trailers))
                            };
                            // The end comes a moment after the message, so that
                            // a reset cannot overtake the head.
                            let end = futures::stream::once(async move {
                                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                                end
                            });
                            let body = StreamBody::new(futures::stream::iter([message]).chain(end));
                            let rsp = http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(rsp)
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn call(status: &str) -> http::Request<Full<Bytes>> {
    http::Request::post("http://grpc/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-status", status)
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_failures_and_resets_reach_every_verdict_and_are_never_retried() {
    let calls = Arc::new(AtomicU64::new(0));
    let addr = grpc_like(calls.clone()).await;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let client: Hyper<Full<Bytes>> = Client::builder("grpc")
        .endpoints([Endpoint::from(addr)])
        .http(hyper_h2c_client())
        .metrics(metrics)
        .build()
        .unwrap();

    // OK: a success everywhere.
    let rsp = client.clone().oneshot(call("0")).await.unwrap();
    let ended = rsp.into_body().collect().await.unwrap();
    assert_eq!(ended.trailers().unwrap()["grpc-status"], "0");
    let text = scrape(&registry);
    assert!(
        text.contains(r#"palisade_grpc_responses_total{client="grpc",code="OK"} 1"#),
        "{text}"
    );

    // INTERNAL after a message: the call was committed (one attempt), and
    // the end-of-stream verdict is a failure.
    let rsp = client.clone().oneshot(call("13")).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let ended = rsp.into_body().collect().await.unwrap();
    assert_eq!(ended.trailers().unwrap()["grpc-status"], "13");
    assert_eq!(calls.load(Ordering::Relaxed), 2, "never retried");
    let text = scrape(&registry);
    assert!(
        text.contains(r#"palisade_grpc_responses_total{client="grpc",code="INTERNAL"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"palisade_responses_total{client="grpc",class="failure",status="2xx"} 1"#),
        "{text}"
    );
    let endpoint = client.endpoint_stats().pop().unwrap();
    assert_eq!(
        (endpoint.failures, endpoint.in_flight),
        (1, 0),
        "{endpoint:?}"
    );

    // A stream reset after its first message: the caller sees a body error,
    // the endpoint a failure.
    let rsp = client.clone().oneshot(call("reset")).await.unwrap();
    assert!(rsp.into_body().collect().await.is_err());
    assert_eq!(client.endpoint_stats().pop().unwrap().failures, 2);
    assert_eq!(calls.load(Ordering::Relaxed), 3, "never retried");

    // Enough failures in the trailers open the breaker (20 calls in the
    // window, over 50 % failing).
    for _ in 0..20 {
        if let Ok(rsp) = client.clone().oneshot(call("14")).await {
            let _ = rsp.into_body().collect().await;
        }
    }
    let state = client.breaker().state();
    assert!(matches!(state, BreakerState::Open { .. }), "{state:?}");
    let refused = client.clone().oneshot(call("0")).await.unwrap_err();
    assert!(matches!(refused, Error::CircuitOpen { .. }), "{refused}");
}
