//! A caller's own failure is never blamed on an endpoint: a request body
//! stream that fails (an aborted upload) feeds no failure accrual, penalty,
//! breaker or retry, and gets its own error kind. Real hyper backends on
//! 127.0.0.1.

#![cfg(feature = "demo")]

#[cfg(all(feature = "cli", unix))]
mod support;

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
    http::Request::post("http://upload/")
        .body(upload(abort))
        .unwrap()
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

/// The same through the proxy binary, with raw sockets: uploads that break
/// off and chunked bodies that are malformed, sustained at twice the rate
/// of a good client, leave the breaker closed and every endpoint
/// unblamed, and every good request succeeds.
#[cfg(all(feature = "cli", unix))]
mod through_the_proxy {
    use std::net::SocketAddr;

    use palisade::demo::{Backend, Behavior};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::support;
    use support::proxy::{Proxy, get, plain, ready, service};

    /// Sends a request that the client itself breaks: an upload that stops
    /// short and hangs up, or (`chunked`) a chunked body with a malformed
    /// chunk size. Returns the status line the proxy answered, if any.
    async fn broken_upload(proxy: SocketAddr, chunked: bool) -> Option<String> {
        let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let head = if chunked {
            "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\nnot-a-size\r\n"
        } else {
            "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100000\r\n\r\nonly a little"
        };
        stream.write_all(head.as_bytes()).await.unwrap();
        if !chunked {
            // The client goes away mid-upload.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let _ = stream.shutdown().await;
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut answer),
        )
        .await;
        let text = String::from_utf8_lossy(&answer);
        text.lines().next().map(str::to_owned)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broken_uploads_from_one_client_do_not_hurt_another() {
        let backends = [
            Backend::spawn(Behavior::new()).await.unwrap(),
            Backend::spawn(Behavior::new()).await.unwrap(),
        ];
        let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
        let proxy = Proxy::start(&(service("app", &addrs) + "[[routes]]\nservice = \"app\"\n"));
        let client = plain();
        ready(&client, &proxy).await;

        let listen = proxy.listen;
        let bad = tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..200 {
                answers.push(broken_upload(listen, i % 2 == 0).await);
            }
            answers
        });
        let good = {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    let (status, _, _) = get(&client, listen, "/").await;
                    assert_eq!(status, 200, "good request {i}");
                }
            })
        };
        let answers = bad.await.unwrap();
        good.await.unwrap();
        for answer in answers.iter().flatten() {
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "a broken upload got {answer:?}"
            );
        }

        let (_, _, snapshot) = get(&client, proxy.admin, "/snapshot").await;
        let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
        let app = &snapshot["services"][0];
        assert!(app["breaker"].to_string().contains("closed"), "{app}");
        for endpoint in app["endpoints"].as_array().unwrap() {
            assert_eq!(endpoint["failures"], 0, "{endpoint}");
            assert_eq!(endpoint["ejections"], 0, "{endpoint}");
        }
        drop(backends);
    }
}
