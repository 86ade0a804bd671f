//! A caller's own failure is never blamed on an endpoint: a request body
//! stream that fails (an aborted upload) feeds no failure accrual, penalty,
//! breaker or retry, and gets its own error kind. Real hyper backends on
//! 127.0.0.1.

#![cfg(feature = "demo")]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use palisade::breaker::BreakerState;
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::http::hyper_client;
use palisade::metrics::Metrics;
use palisade::{Client, Hyper};
use prometheus_client::registry::Registry;
use tower::ServiceExt;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A request body: one chunk, then, when `abort`, an error (the caller's
/// upload broke off) instead of the end.
fn upload(abort: bool) -> Body {
    let first = futures::stream::iter([Ok(Frame::data(Bytes::from_static(b"part one")))]);
    let rest = futures::stream::once(async move {
        // A moment later, so the request is on its way first.
        tokio::time::sleep(Duration::from_millis(2)).await;
        if abort {
            Err(std::io::Error::other("the caller's upload broke off"))
        } else {
            Ok(Frame::data(Bytes::from_static(b", part two")))
        }
    });
    BodyExt::boxed(StreamBody::new(first.chain(rest)))
}

fn post(abort: bool) -> http::Request<Body> {
    http::Request::post("http://upload/").body(upload(abort)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_failing_upload_is_never_the_endpoints_fault() {
    let backends = [
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
    ];
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let client: Hyper<Body> = Client::builder("upload")
        .endpoints(backends.iter().map(|b| Endpoint::from(b.addr())))
        .http(hyper_client())
        .metrics(metrics)
        .build()
        .unwrap();

    // Two aborted uploads for every good request, from two callers at once.
    let bad = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut caller_faults = 0;
            for _ in 0..200 {
                match client.clone().oneshot(post(true)).await {
                    Err(e) if e.is_caller_fault() => caller_faults += 1,
                    Err(e) => panic!("an aborted upload is the caller's fault, not: {e}"),
                    Ok(rsp) => panic!("an aborted upload got {}", rsp.status()),
                }
            }
            caller_faults
        })
    };
    let good = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..100 {
                let rsp = client.clone().oneshot(post(false)).await;
                let rsp = rsp.unwrap_or_else(|e| panic!("a good request failed: {e}"));
                assert_eq!(rsp.status(), 200);
                let _ = rsp.into_body().collect().await;
                ok += 1;
            }
            ok
        })
    };
    assert_eq!(bad.await.unwrap(), 200);
    assert_eq!(good.await.unwrap(), 100, "every good request succeeded");

    assert!(
        matches!(client.breaker().state(), BreakerState::Closed),
        "{:?}",
        client.breaker().state()
    );
    for endpoint in client.endpoint_stats() {
        assert_eq!(endpoint.failures, 0, "{endpoint:?}");
        assert_eq!(endpoint.ejections, 0, "{endpoint:?}");
    }
    // Never retried: one attempt each.
    assert_eq!(client.snapshot().retries.attempts, 300);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"palisade_errors_total{client="upload",kind="caller"} 200"#),
        "{text}"
    );
}
