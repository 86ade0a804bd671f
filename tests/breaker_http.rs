//! The service breaker end to end: every backend failing opens it, it fails
//! fast while open, probes after its sleep window, and closes once the
//! backends heal. Real hyper servers on 127.0.0.1, real time.

#![cfg(feature = "demo")]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade::Client;
use palisade::Hyper;
use palisade::balance::EndpointState;
use palisade::breaker::{BreakerSettings, BreakerState};
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::http::hyper_client;
use tokio::time::Instant;
use tower::ServiceExt;

type TestClient = Hyper<Full<Bytes>>;

async fn get(client: &TestClient) -> (Result<u16, palisade::Error>, Duration) {
    let start = Instant::now();
    let req = http::Request::get("http://test/")
        .body(Full::<Bytes>::default())
        .unwrap();
    let result = match client.clone().oneshot(req).await {
        Ok(rsp) => {
            let status = rsp.status().as_u16();
            rsp.into_body().collect().await.unwrap();
            Ok(status)
        }
        Err(e) => Err(e),
    };
    (result, start.elapsed())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_probes_and_closes() {
    let healthy = Behavior::new().latency(Duration::from_millis(10));
    let mut fleet = Vec::new();
    for _ in 0..4 {
        fleet.push(Backend::spawn(healthy).await.unwrap());
    }
    let client: TestClient = Client::builder("users")
        .endpoints(fleet.iter().map(|b| Endpoint::from(b.addr())))
        .http(hyper_client())
        .breaker(BreakerSettings {
            sleep_window: Duration::from_millis(500),
            ..BreakerSettings::default()
        })
        .build()
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_until(|c| c.endpoint_count() == 4),
    )
    .await
    .unwrap();

    // Healthy: what a real request costs here.
    let mut served = Vec::new();
    for _ in 0..20 {
        let (result, took) = get(&client).await;
        assert_eq!(result.unwrap(), 200);
        served.push(took);
    }
    let served = median(served);

    // Every backend fails.
    for b in &fleet {
        b.set_behavior(
            Behavior::new()
                .latency(Duration::from_millis(10))
                .failure_rate(1.0),
        );
    }
    let mut opened_after = None;
    for i in 1..=100 {
        let (result, _) = get(&client).await;
        match result {
            Ok(status) => assert_eq!(status, 503),
            Err(e) => {
                assert!(e.is_circuit_open(), "{e}");
                opened_after = Some(i);
                break;
            }
        }
    }
    let opened_after = opened_after.expect("the breaker never opened");
    assert!(opened_after <= 25, "opened after {opened_after} requests");
    assert!(matches!(
        client.breaker().state(),
        BreakerState::Open { .. }
    ));
    // The fleet guard kept half of the endpoints in play meanwhile.
    let ejected = client
        .endpoint_stats()
        .iter()
        .filter(|s| s.state != EndpointState::Active)
        .count();
    assert!(ejected <= 2, "{ejected} of 4 ejected");

    // Open: fails fast, and nothing reaches the backends.
    let reached: u64 = fleet.iter().map(Backend::requests).sum();
    let mut rejected = Vec::new();
    for _ in 0..50 {
        let (result, took) = get(&client).await;
        let err = result.unwrap_err();
        assert!(err.is_circuit_open());
        assert!(
            err.to_string()
                .starts_with("service \"users\": circuit breaker open; next probe in"),
            "{err}"
        );
        rejected.push(took);
    }
    let rejected = median(rejected);
    assert_eq!(fleet.iter().map(Backend::requests).sum::<u64>(), reached);
    eprintln!("served request median {served:?}; rejected while open median {rejected:?}");
    assert!(
        rejected * 20 < served,
        "rejections are not fast: {rejected:?} vs {served:?}"
    );

    // Heal; after the sleep window a probe goes through and closes it.
    for b in &fleet {
        b.set_behavior(healthy);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (result, _) = get(&client).await;
    assert_eq!(result.unwrap(), 200, "the probe");
    assert_eq!(client.breaker().state(), BreakerState::Closed);
    for _ in 0..20 {
        assert_eq!(get(&client).await.0.unwrap(), 200);
    }
}
