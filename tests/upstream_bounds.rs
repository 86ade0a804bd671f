//! Upstream resources are bounded by default (issue 15, part 5), through a
//! whole library client over real hyper servers on 127.0.0.1:
//!
//! - HTTP/1.1 connections per endpoint are capped (each outstanding
//!   request holds one): requests over the cap wait for a slot;
//! - h2c upstreams multiplex many requests over one connection;
//! - a response body that stops sending is cut, counted as the endpoint's
//!   failure, and the reader sees the truncation;
//! - a caller's deadline header can shorten the timeout, never extend it.

#![cfg(feature = "demo")]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use palisade::classify::BodyStalled;
use palisade::discover::Endpoint;
use palisade::http::{hyper_client, hyper_h2c_client};
use palisade::retry::ReplayBody;
use palisade::{Client, Hyper};
use support::backends::{Answer, backend};
use tower::ServiceExt;

type Body = Full<Bytes>;

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::parse(&addr.to_string()).unwrap()
}

fn get() -> Request<Body> {
    Request::get("http://app/").body(Body::default()).unwrap()
}

/// Sends `n` requests at once; every status, or the error.
async fn burst(client: &Hyper<Body>, n: usize) -> Vec<Result<u16, String>> {
    join_all((0..n).map(|_| {
        let client = client.clone();
        async move {
            let rsp = client.oneshot(get()).await.map_err(|e| e.to_string())?;
            let status = rsp.status().as_u16();
            rsp.into_body().collect().await.map_err(|e| e.to_string())?;
            Ok(status)
        }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_per_endpoint_are_capped_by_default() {
    let (addr, conns) = backend(false, Answer::After(Duration::from_millis(300))).await;
    let client: Hyper<Body> = Client::builder("app")
        .endpoints([endpoint(addr)])
        .http(hyper_client())
        .build()
        .unwrap();
    // 600 callers at once: with no cap, 600 connections.
    let results = burst(&client, 600).await;
    assert!(
        results.iter().all(|r| r == &Ok(200)),
        "every request waited for a slot and succeeded: {:?}",
        results.iter().find(|r| r != &&Ok(200))
    );
    // At most 256 busy (the default cap) and the pool's 64 idle: a slot
    // freed at the end of a body is taken before its connection is back in
    // the pool, so a few new connections overlap with idle ones.
    let max = conns.max.load(Ordering::SeqCst);
    assert!(
        max <= 256 + 64,
        "at most the default cap of 256 busy connections plus 64 idle, saw {max}"
    );
    assert!(
        max >= 200,
        "the cap, not something else, bounded them: {max}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_full_endpoint_are_shed_as_overloaded_after_the_wait() {
    let (addr, conns) = backend(false, Answer::After(Duration::from_secs(2))).await;
    let client: Hyper<Body> = Client::builder("app")
        .endpoints([endpoint(addr)])
        .http(hyper_client())
        .endpoint_max_in_flight(4)
        .endpoint_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let results = burst(&client, 10).await;
    let ok = results.iter().filter(|r| r == &&Ok(200)).count();
    let shed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(ok, 4, "{results:?}");
    assert_eq!(shed.len(), 6, "{results:?}");
    assert!(
        shed[0].contains("every endpoint has 4 requests outstanding"),
        "{}",
        shed[0]
    );
    assert_eq!(conns.accepted.load(Ordering::SeqCst), 4);
    // Shedding is the client's own doing: the endpoint is not blamed.
    let stats = &client.endpoint_stats()[0];
    assert_eq!(stats.failures, 0);
    assert_eq!(
        client.breaker().state(),
        palisade::breaker::BreakerState::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstreams_multiplex_instead_of_fanning_out() {
    let (addr, conns) = backend(true, Answer::After(Duration::from_millis(300))).await;
    let client: Hyper<Body> = Client::builder("app")
        .endpoints([endpoint(addr)])
        .http(hyper_h2c_client())
        .build()
        .unwrap();
    let results = burst(&client, 200).await;
    assert!(results.iter().all(|r| r == &Ok(200)), "{results:?}");
    assert_eq!(
        conns.accepted.load(Ordering::SeqCst),
        1,
        "200 concurrent requests shared one h2c connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_sending_is_cut_and_counted_against_the_endpoint() {
    let (addr, _) = backend(false, Answer::Stall).await;
    let client: Hyper<Body> = Client::builder("app")
        .endpoints([endpoint(addr)])
        .http(hyper_client())
        .body_idle_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let rsp = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(rsp.status(), 200, "the head arrived");
    let started = tokio::time::Instant::now();
    let mut body = rsp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "0123456789");
    let err = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the stalled body was cut")
        .unwrap()
        .unwrap_err();
    assert!(
        err.downcast_ref::<BodyStalled>().is_some(),
        "the reader sees the truncation, as a stall: {err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let stats = &client.endpoint_stats()[0];
    assert_eq!(stats.failures, 1, "a stall is the endpoint's failure");
    assert_eq!(stats.in_flight, 0, "and its slot is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_header_cannot_stretch_the_default_timeout() {
    let (addr, _) = backend(false, Answer::After(Duration::ZERO)).await;
    let client: Hyper<Body> = Client::builder("app")
        .endpoints([endpoint(addr)])
        .http(hyper_client())
        .build()
        .unwrap();
    let ask = |ms: &str| {
        Request::get("http://app/")
            .header("palisade-deadline-ms", ms)
            .body(Body::default())
            .unwrap()
    };
    let seen = |rsp: Response<_>| async move {
        let body: Bytes = BodyExt::collect(rsp.into_body()).await.unwrap().to_bytes();
        std::str::from_utf8(&body).unwrap().parse::<u64>().unwrap()
    };
    // Asking for five minutes gets the default 15 s.
    let next_hop = seen(client.clone().oneshot(ask("300000")).await.unwrap()).await;
    assert!(
        (14_000..=15_000).contains(&next_hop),
        "the next hop saw {next_hop} ms"
    );
    // Asking for less is honoured.
    let next_hop = seen(client.clone().oneshot(ask("2000")).await.unwrap()).await;
    assert!((1_000..=2_000).contains(&next_hop), "{next_hop} ms");
}

/// The default idle timeout, on paused time with an in-memory endpoint: a
/// body silent for 60 s is cut; one that sends every 59 s is not.
#[tokio::test(start_paused = true)]
async fn by_default_a_body_silent_for_a_minute_is_cut() {
    let new_endpoint = |_: &Endpoint| {
        Ok::<_, Infallible>(tower::service_fn(
            |req: Request<ReplayBody<Body>>| async move {
                let gap = Duration::from_secs(req.uri().path()[1..].parse().unwrap());
                let frames = futures::stream::unfold(0, move |sent| async move {
                    if sent == 3 {
                        return None;
                    }
                    tokio::time::sleep(gap).await;
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x"))),
                        sent + 1,
                    ))
                });
                Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
            },
        ))
    };
    let client = Client::builder("app")
        .endpoints([Endpoint::parse("127.0.0.1:1").unwrap()])
        .new_endpoint(new_endpoint)
        .build()
        .unwrap();
    let read = |path: &'static str| {
        let client = client.clone();
        async move {
            let req = Request::get(format!("http://app{path}"))
                .body(Body::default())
                .unwrap();
            let rsp = client.oneshot(req).await.unwrap();
            rsp.into_body().collect().await.map(|b| b.to_bytes())
        }
    };
    assert_eq!(read("/59").await.unwrap(), "xxx");
    let start = tokio::time::Instant::now();
    let err = read("/61").await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    assert!(err.downcast_ref::<BodyStalled>().is_some(), "{err}");
}
