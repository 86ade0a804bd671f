//! Metrics after known workloads, on paused time with in-memory endpoints.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use tower::ServiceExt;

use super::*;
use crate::Client;
use crate::classify::HttpClassify;
use crate::discover;
use crate::retry::ReplayBody;
use crate::testing::{Answer, Fleet, Svc};

type TestClient = Client<Svc<ReplayBody<Full<Bytes>>>, HttpClassify>;

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// The value of the one series whose line starts with `series` (name and
/// labels exactly as encoded).
fn value(text: &str, series: &str) -> f64 {
    let matches: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{series} ")))
        .collect();
    assert_eq!(matches.len(), 1, "{series} in:\n{text}");
    matches[0].rsplit(' ').next().unwrap().parse().unwrap()
}

async fn send(client: &TestClient, method: Method) -> u16 {
    let req = Request::builder()
        .method(method)
        .uri("http://users/")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    client.clone().oneshot(req).await.unwrap().status().as_u16()
}

/// A client called `name` over the in-memory `fleet`, counting into
/// `metrics`, whose endpoints the returned handle sets.
fn client(name: &str, fleet: &Fleet, metrics: Metrics) -> (discover::DynamicHandle, TestClient) {
    let (handle, discover) = discover::dynamic();
    let client = Client::builder(name)
        .discover(discover)
        .new_endpoint(fleet.factory())
        .metrics(metrics)
        .build()
        .unwrap();
    (handle, client)
}

/// Waits until the client has applied its discovery changes.
async fn settled(client: &TestClient, n: usize) {
    tokio::time::timeout(
        Duration::from_secs(1),
        client.wait_until(|c| c.endpoint_count() == n),
    )
    .await
    .expect("discovery change applied");
}

#[tokio::test(start_paused = true)]
async fn a_known_workload_gives_exact_counters() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let fleet = Fleet::default();
    let (handle, client) = client("users", &fleet, metrics);
    handle.insert(fleet.set("127.0.0.1:1", Answer::ok(5)));
    settled(&client, 1).await;

    for _ in 0..10 {
        assert_eq!(send(&client, Method::GET).await, 200);
    }
    fleet.set("127.0.0.1:1", Answer::ok(5).status(503));
    for _ in 0..2 {
        assert_eq!(send(&client, Method::GET).await, 503);
    }
    assert_eq!(send(&client, Method::POST).await, 503);

    let text = scrape(&registry);
    let c = r#"client="users""#;
    assert_eq!(
        value(&text, &format!("palisade_requests_total{{{c}}}")),
        13.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_responses_total{{{c},class="success",status="2xx"}}"#)
        ),
        10.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_responses_total{{{c},class="failure",status="5xx"}}"#)
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_responses_total{{{c},class="overloaded",status="4xx"}}"#)
        ),
        0.0
    );
    // 10 + 2 × 3 (GETs retried to the limit) + 1 (the POST, not retried).
    assert_eq!(
        value(&text, &format!("palisade_retry_attempts_total{{{c}}}")),
        17.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_retry_refusals_total{{{c},reason="attempts"}}"#)
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_retry_refusals_total{{{c},reason="method"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_retry_refusals_total{{{c},reason="budget"}}"#)
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            &format!("palisade_request_duration_seconds_count{{{c}}}")
        ),
        13.0
    );
    assert_eq!(
        value(&text, &format!("palisade_requests_in_flight{{{c}}}")),
        0.0
    );
    assert!(
        (value(&text, &format!("palisade_retry_amplification{{{c}}}")) - 17.0 / 13.0).abs() < 1e-9
    );
    assert_eq!(value(&text, &format!("palisade_breaker_state{{{c}}}")), 0.0);

    let e = r#"client="users",endpoint="127.0.0.1:1""#;
    assert_eq!(
        value(&text, &format!("palisade_endpoint_requests_total{{{e}}}")),
        17.0
    );
    assert_eq!(
        value(&text, &format!("palisade_endpoint_failures_total{{{e}}}")),
        7.0
    );
    assert_eq!(
        value(&text, &format!("palisade_endpoint_in_flight{{{e}}}")),
        0.0
    );
    // One endpoint: it cannot be ejected for good (panic mode), and after 5
    // failures in a row it was ejected once.
    assert_eq!(
        value(&text, &format!("palisade_endpoint_ejections_total{{{e}}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("palisade_endpoint_latency_seconds{{{e}}}")),
        0.005
    );
    let state = |s: &str| {
        value(
            &text,
            &format!(r#"palisade_endpoint_state{{{e},state="{s}"}}"#),
        )
    };
    assert_eq!(state("active") + state("ejected") + state("probing"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn errors_are_counted_by_kind() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let fleet = Fleet::default();
    let client: TestClient = Client::builder("empty")
        .endpoints([])
        .new_endpoint(fleet.factory())
        .metrics(metrics)
        .endpoint_wait(Duration::from_millis(10))
        .build()
        .unwrap();
    let req = Request::get("http://empty/").body(Full::default()).unwrap();
    assert!(
        client
            .clone()
            .oneshot(req)
            .await
            .unwrap_err()
            .is_no_endpoints()
    );
    let text = scrape(&registry);
    let c = r#"client="empty""#;
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_errors_total{{{c},kind="no_endpoints"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_errors_total{{{c},kind="deadline_exceeded"}}"#)
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_responses_total{{{c},class="error",status="none"}}"#)
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_removed_endpoints_series_disappear_and_so_do_a_dropped_clients() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let fleet = Fleet::default();
    let (handle, client) = client("users", &fleet, metrics);
    handle.insert(fleet.set("127.0.0.1:1", Answer::ok(1)));
    handle.insert(fleet.set("127.0.0.1:2", Answer::ok(1)));
    settled(&client, 2).await;
    assert!(scrape(&registry).contains(r#"endpoint="127.0.0.1:2""#));

    handle.remove(&"127.0.0.1:2".parse().unwrap());
    settled(&client, 1).await;
    let text = scrape(&registry);
    assert!(!text.contains(r#"endpoint="127.0.0.1:2""#), "{text}");
    assert!(text.contains(r#"endpoint="127.0.0.1:1""#));

    drop(client);
    tokio::task::yield_now().await;
    let text = scrape(&registry);
    assert!(!text.contains("endpoint="), "{text}");
    assert!(!text.contains("palisade_breaker_state{"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn endpoint_series_are_capped() {
    let mut registry = Registry::default();
    let metrics = Metrics::register_with_limit(&mut registry, 2);
    let fleet = Fleet::default();
    let (handle, client) = client("big", &fleet, metrics);
    handle.replace((1..=5).map(|p| fleet.set(&format!("127.0.0.1:{p}"), Answer::ok(1))));
    settled(&client, 5).await;
    let text = scrape(&registry);
    let series = text
        .lines()
        .filter(|l| l.starts_with("palisade_endpoint_in_flight{"))
        .count();
    assert_eq!(series, 2);
    assert_eq!(
        value(&text, r#"palisade_endpoint_series_dropped{client="big"}"#),
        3.0
    );
}

#[tokio::test(start_paused = true)]
async fn optional_layers_are_in_the_snapshot_and_the_scrape() {
    use crate::hedge::{HedgeDelay, HedgeSettings};
    use crate::limit::{ConcurrencySettings, RateLimitSettings, ThrottleLayer, ThrottleSettings};

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let fleet = Fleet::default();
    // One client with every optional layer, one with none.
    let rate = RateLimitSettings {
        per_second: 1.0,
        burst: Some(3),
        ..RateLimitSettings::default()
    };
    let bulkhead = ConcurrencySettings {
        max: 2,
        queue: 0,
        ..ConcurrencySettings::default()
    };
    let hedge = HedgeSettings {
        delay: HedgeDelay::Fixed(Duration::from_millis(20)),
        ..HedgeSettings::default()
    };
    let (handle, limited) = {
        let (handle, discover) = discover::dynamic();
        let client = Client::builder("limited")
            .discover(discover)
            .new_endpoint(fleet.factory())
            .metrics(metrics.clone())
            .rate_limit(rate)
            .concurrency_limit(bulkhead)
            .share_throttle(
                ThrottleLayer::new("limited", ThrottleSettings::default())
                    .unwrap()
                    .seed(1),
            )
            .hedge(hedge)
            .build()
            .unwrap();
        (handle, client)
    };
    let (plain_handle, plain) = client("plain", &fleet, metrics);
    handle.insert(fleet.set("127.0.0.1:1", Answer::ok(50)));
    plain_handle.insert(fleet.set("127.0.0.1:1", Answer::ok(50)));
    settled(&limited, 1).await;
    settled(&plain, 1).await;

    // Three at once: two run, the third finds no queue; a fourth is over the
    // rate (burst 3).
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let req = Request::get("http://users/")
                .body(Full::new(Bytes::new()))
                .unwrap();
            limited.clone().oneshot(req)
        })
        .collect();
    let results = futures::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
    // Throttling counts an outcome at the end of its response's stream.
    drop(results);

    let snap = limited.snapshot();
    let concurrency = snap.concurrency.expect("a concurrency limit");
    assert_eq!((concurrency.in_flight, concurrency.shed_full), (0, 1));
    let rate = snap.rate_limit.expect("a rate limit");
    assert_eq!((rate.admitted, rate.rejected), (3, 1));
    assert_eq!(snap.throttle.expect("throttling").accepts, 2);
    // Both calls took 50 ms against a 20 ms delay; one endpoint only, so
    // the backups had nowhere else to go.
    let hedges = snap.hedges.expect("hedging");
    assert_eq!(hedges.delay, Duration::from_millis(20));
    assert!(plain.snapshot().hedges.is_none());

    let text = scrape(&registry);
    let c = r#"client="limited""#;
    assert_eq!(
        value(&text, &format!("palisade_concurrency_in_flight{{{c}}}")),
        0.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_limit_shed_total{{{c},limit="concurrency"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_limit_shed_total{{{c},limit="rate"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(&text, &format!("palisade_hedge_delay_seconds{{{c}}}")),
        0.02
    );
    assert_eq!(
        value(&text, &format!("palisade_throttle_probability{{{c}}}")),
        0.0
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"palisade_errors_total{{{c},kind="overloaded"}}"#)
        ),
        2.0
    );
    assert!(
        !text.contains(r#"palisade_hedges_total{client="plain"}"#),
        "no hedge series for a client without hedging"
    );
}
