//! Hanging endpoints (issue 16), through a whole library client over real
//! sockets on 127.0.0.1: an endpoint that accepts and never answers.

#![cfg(feature = "demo")]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use palisade::breaker::BreakerState;
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::http::hyper_client;
use palisade::metrics::Metrics;
use palisade::{Client, Hyper};
use prometheus_client::registry::Registry;
use support::{Fault, Faulty};
use tower::ServiceExt;

/// Calls cut off by their deadline while they wait on a hung endpoint are
/// that endpoint's failures, for the balancer (failure accrual), the
/// breaker and the metrics (`palisade_endpoint_timeouts_total`), with no
/// per-try timeout configured. Before, they counted nowhere: a hung
/// endpoint was never ejected and never opened the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cut_off_by_the_deadline_are_the_hung_endpoints_failures() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let hung = Faulty::spawn(backend.addr()).await.unwrap();
    hung.set(Fault::Blackhole).await;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let client: Hyper<Full<Bytes>> = Client::builder("app")
        .endpoints([Endpoint::parse(&hung.addr().to_string()).unwrap()])
        .http(hyper_client())
        .timeout(Some(Duration::from_millis(300)))
        .metrics(metrics)
        .build()
        .unwrap();
    for _ in 0..20 {
        let req = http::Request::get("http://app/")
            .body(Full::default())
            .unwrap();
        let err = client.clone().oneshot(req).await.unwrap_err();
        assert!(err.is_deadline_exceeded(), "{err}");
    }
    let stats = &client.endpoint_stats()[0];
    assert_eq!((stats.failures, stats.timeouts), (20, 20));
    assert!(
        matches!(client.breaker().state(), BreakerState::Open { .. }),
        "20 calls cut off by their deadline open the breaker: {:?}",
        client.breaker().state()
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series = format!(
        r#"palisade_endpoint_timeouts_total{{client="app",endpoint="{}"}} 20"#,
        hung.addr()
    );
    assert!(text.contains(&series), "{series} in\n{text}");
}
