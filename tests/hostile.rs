//! The hostile-client suite: `palisade proxy` (the real binary) attacked
//! the way an internet-facing sidecar is, with raw sockets and HTTP/1 and
//! HTTP/2 clients, all on 127.0.0.1. Each test names the attack and checks
//! what the proxy does now; docs/reliability.md has the table.
//!
//! This file: upstream resources, which a client must not be able to
//! exhaust or hold (issue 15, part 5).

#![cfg(all(feature = "cli", unix))]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use support::backends::{Answer, backend};
use support::proxy::{Plain, Proxy, get, metric, plain, ready, service};

/// Ten HTTP/2 clients with 60 streams each, against a backend that holds
/// every request 300 ms: the proxy used to open one upstream HTTP/1.1
/// connection per stream. With the defaults, at most 256 requests are
/// outstanding at the endpoint (so at most 256 busy connections, besides
/// the pool's idle ones), the rest wait for a slot, and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_h2_streams_get_bounded_upstream_connections() {
    let (addr, conns) = backend(false, Answer::After(Duration::from_millis(300))).await;
    let proxy = Proxy::start(&(service("app", &[addr]) + "[[routes]]\nservice = \"app\"\n"));
    ready(&plain(), &proxy).await;
    let statuses = join_all((0..10).map(|_| {
        // One client, one h2 connection, 60 streams.
        let h2: Plain = HttpClient::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let listen = proxy.listen;
        async move {
            join_all((0..60).map(|_| {
                let h2 = h2.clone();
                async move { get(&h2, listen, "/").await.0 }
            }))
            .await
        }
    }))
    .await;
    let statuses: Vec<u16> = statuses.into_iter().flatten().collect();
    assert_eq!(statuses.len(), 600);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let busy = conns.max_requests.load(Ordering::SeqCst);
    let open = conns.max.load(Ordering::SeqCst);
    assert!(
        busy <= 256,
        "at most 256 requests at the backend at once, saw {busy}"
    );
    assert!(busy >= 200, "the cap bounded them, not the clients: {busy}");
    assert!(open <= 256 + 64, "busy plus idle connections: {open}");
}

/// A backend that sends its head and part of its body, then nothing: the
/// proxy used to hold the client for ever (120 s and counting). Now the
/// body is cut after `body_idle_timeout` (here 500 ms; 60 s by default),
/// the client sees the response end short of its `content-length`, and the
/// endpoint is charged a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_cut_and_the_client_sees_the_truncation() {
    let (addr, _) = backend(false, Answer::Stall).await;
    let proxy = Proxy::start(
        &(service("app", &[addr])
            + "deadline = { body_idle_timeout = \"500ms\" }\n\n[[routes]]\nservice = \"app\"\n"),
    );
    let client = plain();
    ready(&client, &proxy).await;
    let req = http::Request::get(format!("http://{}/", proxy.listen))
        .body(Full::<Bytes>::default())
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(10), rsp.into_body().collect())
        .await
        .expect("the stalled body was cut, not held");
    assert!(read.is_err(), "the client sees a truncated body");
    let endpoint = format!(r#"client="app",endpoint="{addr}""#);
    let failures = format!("palisade_endpoint_failures_total{{{endpoint}}}");
    assert_eq!(metric(&client, &proxy, &failures).await, 1);
}

/// A client asking for a five-minute deadline in a header used to get it
/// (the 5 min `max_timeout`), holding a connection and an endpoint's slot
/// that long. Now a header can only shorten the service's 15 s timeout:
/// the next hop is told at most 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_header_cannot_stretch_the_services_timeout() {
    let (addr, _) = backend(false, Answer::After(Duration::ZERO)).await;
    let proxy = Proxy::start(&(service("app", &[addr]) + "[[routes]]\nservice = \"app\"\n"));
    let client = plain();
    ready(&client, &proxy).await;
    for (asked, most) in [("300000", 15_000), ("2000", 2_000)] {
        let req = http::Request::get(format!("http://{}/", proxy.listen))
            .header("palisade-deadline-ms", asked)
            .body(Full::<Bytes>::default())
            .unwrap();
        let rsp = client.request(req).await.unwrap();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let next_hop: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
        assert!(
            (most - 1_000..=most).contains(&next_hop),
            "asked {asked} ms, the next hop was told {next_hop} ms"
        );
    }
}
