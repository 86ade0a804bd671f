//! The deadline layer on paused time.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::testing::problems;

/// A backend that takes `latency` and answers with the headers it received;
/// counts its calls.
fn backend(
    latency: Duration,
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<HeaderMap>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<HeaderMap>, Infallible>>,
> + Clone {
    service_fn(move |req: Request<()>| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, Infallible>(Response::new(req.headers().clone()))
        }
    })
}

fn layer() -> DeadlineLayer {
    layer_with(DeadlineSettings::default())
}

fn layer_with(settings: DeadlineSettings) -> DeadlineLayer {
    DeadlineLayer::new("users", settings).unwrap()
}

/// The default settings with this default timeout.
fn timeout(timeout: Option<Duration>) -> DeadlineSettings {
    DeadlineSettings {
        timeout,
        ..DeadlineSettings::default()
    }
}

async fn send(
    layer: DeadlineLayer,
    latency: Duration,
    req: Request<()>,
) -> (Result<Response<HeaderMap>, Error>, Duration, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(backend(latency, calls.clone()));
    let start = Instant::now();
    let result = svc.oneshot(req).await;
    (result, start.elapsed(), calls.load(Ordering::Relaxed))
}

fn get() -> Request<()> {
    Request::get("http://users/").body(()).unwrap()
}

fn with_header(name: &str, value: &str) -> Request<()> {
    Request::get("http://users/")
        .header(name, value)
        .body(())
        .unwrap()
}

fn deadline_ms(rsp: &Response<HeaderMap>) -> u64 {
    rsp.body()[header::DEADLINE_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_spent_deadline_fails_at_once_without_calling_the_service() {
    let mut req = get();
    req.extensions_mut()
        .insert(Deadline::at(Instant::now() - Duration::from_millis(1)));
    let (result, elapsed, calls) = send(layer(), Duration::ZERO, req).await;
    let err = result.unwrap_err();
    assert!(err.is_deadline_exceeded(), "{err}");
    assert_eq!(elapsed, Duration::ZERO);
    assert_eq!(calls, 0);
    assert_eq!(
        err.to_string(),
        "service \"users\": deadline exceeded after 0ns"
    );

    let (result, _, calls) = send(
        layer(),
        Duration::ZERO,
        with_header(header::DEADLINE_HEADER, "0"),
    )
    .await;
    assert!(result.unwrap_err().is_deadline_exceeded());
    assert_eq!(calls, 0, "a zero header is a spent deadline");
}

#[tokio::test(start_paused = true)]
async fn the_default_timeout_cuts_a_slow_call() {
    let (result, elapsed, calls) = send(layer(), Duration::from_secs(60), get()).await;
    assert!(result.unwrap_err().is_deadline_exceeded());
    assert_eq!(elapsed, Duration::from_secs(15));
    assert_eq!(calls, 1);

    let layer = layer_with(timeout(Some(Duration::from_secs(1))));
    let (result, elapsed, _) = send(layer, Duration::from_secs(5), get()).await;
    match result.unwrap_err() {
        Error::DeadlineExceeded { elapsed: e, .. } => assert_eq!(e, Duration::from_secs(1)),
        other => panic!("{other}"),
    }
    assert_eq!(elapsed, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn without_any_deadline_nothing_is_cut() {
    let layer = layer_with(timeout(None));
    let (result, elapsed, _) = send(layer, Duration::from_secs(100), get()).await;
    let rsp = result.unwrap();
    assert_eq!(elapsed, Duration::from_secs(100));
    assert!(!rsp.body().contains_key(header::DEADLINE_HEADER));
}

#[tokio::test(start_paused = true)]
async fn where_the_deadline_comes_from() {
    // The extension wins over a header.
    let mut req = with_header(header::DEADLINE_HEADER, "100");
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(2000)));
    let (result, _, _) = send(layer(), Duration::ZERO, req).await;
    assert_eq!(deadline_ms(&result.unwrap()), 1995);

    // A header wins over the default, and the tightest header wins.
    let mut req = with_header(header::GRPC_TIMEOUT, "3S");
    req.headers_mut()
        .insert(header::ENVOY_TIMEOUT, "700".parse().unwrap());
    let (result, _, _) = send(layer(), Duration::ZERO, req).await;
    assert_eq!(deadline_ms(&result.unwrap()), 695);

    // A header asking for more than the cap is clamped.
    let layer = layer_with(DeadlineSettings {
        max_timeout: Duration::from_secs(2),
        ..DeadlineSettings::default()
    });
    let (result, _, _) = send(
        layer,
        Duration::ZERO,
        with_header(header::DEADLINE_HEADER, "3600000"),
    )
    .await;
    assert_eq!(deadline_ms(&result.unwrap()), 1995);
}

#[tokio::test(start_paused = true)]
async fn by_default_a_header_can_shorten_the_timeout_but_never_extend_it() {
    let ask_a_minute = || with_header(header::DEADLINE_HEADER, "60000");
    // The default timeout is 15 s: a caller asking for a minute gets 15 s.
    let (result, _, _) = send(layer(), Duration::ZERO, ask_a_minute()).await;
    assert_eq!(deadline_ms(&result.unwrap()), 14_995);
    let (result, _, _) = send(
        layer(),
        Duration::ZERO,
        with_header(header::GRPC_TIMEOUT, "20S"),
    )
    .await;
    assert_eq!(deadline_ms(&result.unwrap()), 14_995);
    // Trusted callers may ask for more, up to max_timeout.
    let trusting = DeadlineSettings {
        headers_may_extend: true,
        ..DeadlineSettings::default()
    };
    let (result, _, _) = send(layer_with(trusting), Duration::ZERO, ask_a_minute()).await;
    assert_eq!(deadline_ms(&result.unwrap()), 59_995);
    // With no default timeout, max_timeout is the only cap.
    let unbounded = DeadlineSettings {
        timeout: None,
        ..DeadlineSettings::default()
    };
    let (result, _, _) = send(layer_with(unbounded), Duration::ZERO, ask_a_minute()).await;
    assert_eq!(deadline_ms(&result.unwrap()), 59_995);
}

#[tokio::test(start_paused = true)]
async fn malformed_headers_are_ignored_never_zero() {
    for (name, value) in [
        (header::DEADLINE_HEADER, "-1"),
        (header::DEADLINE_HEADER, "soon"),
        (header::GRPC_TIMEOUT, "10x"),
        (header::GRPC_TIMEOUT, "123456789S"),
        (header::ENVOY_TIMEOUT, "1e3"),
    ] {
        let (result, _, calls) = send(layer(), Duration::ZERO, with_header(name, value)).await;
        let rsp = result.unwrap_or_else(|e| panic!("{name}: {value:?}: {e}"));
        assert_eq!(calls, 1);
        assert_eq!(
            deadline_ms(&rsp),
            14_995,
            "{name}: {value:?} falls back to the default"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn propagation_writes_what_remains() {
    let settings = DeadlineSettings {
        reserve: Duration::from_millis(20),
        ..timeout(Some(Duration::from_millis(500)))
    };
    let layer = layer_with(settings.clone());
    let req = Request::post("http://users/pkg.Svc/Method")
        .header(http::header::CONTENT_TYPE, "application/grpc+proto")
        .header(header::ENVOY_TIMEOUT, "500")
        .body(())
        .unwrap();
    let (result, _, _) = send(layer.clone(), Duration::ZERO, req).await;
    let rsp = result.unwrap();
    let headers = rsp.body();
    assert_eq!(deadline_ms(&rsp), 480);
    assert_eq!(headers[header::GRPC_TIMEOUT], "480000u");
    assert!(
        !headers.contains_key(header::ENVOY_TIMEOUT),
        "stale Envoy header removed"
    );

    // Not gRPC: no grpc-timeout.
    let (result, _, _) = send(layer.clone(), Duration::ZERO, get()).await;
    assert!(!result.unwrap().body().contains_key(header::GRPC_TIMEOUT));

    // Propagation off: no header at all, but the deadline still holds.
    let quiet = layer_with(DeadlineSettings {
        propagate: false,
        ..settings
    });
    let (result, elapsed, _) = send(quiet, Duration::from_secs(1), get()).await;
    assert!(result.unwrap_err().is_deadline_exceeded());
    assert_eq!(elapsed, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn a_reserve_larger_than_what_remains_propagates_zero() {
    let layer = layer_with(DeadlineSettings {
        reserve: Duration::from_millis(5),
        ..timeout(Some(Duration::from_millis(3)))
    });
    let (result, _, _) = send(layer, Duration::ZERO, get()).await;
    assert_eq!(deadline_ms(&result.unwrap()), 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_from_incoming_headers() {
    let mut headers = HeaderMap::new();
    headers.insert(header::GRPC_TIMEOUT, "250m".parse().unwrap());
    let d = Deadline::from_headers(&headers).unwrap();
    assert_eq!(d.remaining(), Duration::from_millis(250));
    tokio::time::advance(Duration::from_millis(300)).await;
    assert!(d.is_expired());
    assert_eq!(d.remaining(), Duration::ZERO);
    assert!(Deadline::from_headers(&HeaderMap::new()).is_none());
}

#[tokio::test(start_paused = true)]
async fn absurd_timeouts_saturate_instead_of_panicking() {
    let d = Deadline::after(Duration::MAX);
    assert!(d.remaining() > Duration::from_secs(3600));
    let layer = layer_with(DeadlineSettings {
        max_timeout: Duration::MAX,
        ..DeadlineSettings::default()
    });
    let (result, _, _) = send(
        layer,
        Duration::ZERO,
        with_header(header::DEADLINE_HEADER, "18446744073709551615"),
    )
    .await;
    assert!(result.is_ok());
}

// ---- settings -------------------------------------------------------------

#[test]
fn the_default_settings_are_valid() {
    assert_eq!(DeadlineSettings::default().validate(), Ok(()));
    assert_eq!(layer().settings(), &DeadlineSettings::default());
}

#[test]
fn each_bad_value_is_refused_at_its_field() {
    assert_eq!(
        problems(timeout(Some(Duration::ZERO)).validate()),
        ["timeout: must be greater than 0 (\"none\" for no default deadline)"],
    );
    let settings = DeadlineSettings {
        max_timeout: Duration::ZERO,
        ..DeadlineSettings::default()
    };
    assert_eq!(
        problems(settings.validate()),
        ["max_timeout: must be greater than 0"],
    );
    // The edges are fine: no timeout, a reserve of 0 or longer than the
    // timeout (it propagates 0), propagation off.
    let edges = DeadlineSettings {
        timeout: None,
        max_timeout: Duration::from_nanos(1),
        reserve: Duration::ZERO,
        propagate: false,
        headers_may_extend: true,
        body_idle_timeout: None,
    };
    assert_eq!(edges.validate(), Ok(()));
    let edges = DeadlineSettings {
        timeout: Some(Duration::from_nanos(1)),
        reserve: Duration::from_secs(3600),
        ..DeadlineSettings::default()
    };
    assert_eq!(edges.validate(), Ok(()));
}

#[test]
fn several_bad_values_give_several_problems() {
    let settings = DeadlineSettings {
        timeout: Some(Duration::ZERO),
        max_timeout: Duration::ZERO,
        ..DeadlineSettings::default()
    };
    let err = DeadlineLayer::new("users", settings).unwrap_err();
    assert_eq!(
        err.to_string(),
        "timeout: must be greater than 0 (\"none\" for no default deadline); \
         max_timeout: must be greater than 0"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_refuses_a_zero_timeout_when_it_is_built() {
    let fleet = crate::testing::Fleet::default();
    let err = crate::Client::builder("users")
        .endpoints([])
        .new_endpoint(fleet.factory::<http_body_util::Empty<bytes::Bytes>>())
        .timeout(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(
        problems(Err(err.settings_error().unwrap().clone())),
        ["deadline.timeout: must be greater than 0 (\"none\" for no default deadline)"],
    );
    assert_eq!(
        err.to_string(),
        "service \"users\": invalid settings: \
         deadline.timeout: must be greater than 0 (\"none\" for no default deadline)"
    );
}

/// Settings files: durations as strings, `"none"` for no timeout, unknown
/// fields refused.
#[cfg(all(feature = "serde", feature = "file"))]
mod settings_files {
    use super::*;

    #[test]
    fn durations_are_strings_and_settings_round_trip() {
        let s: DeadlineSettings =
            toml::from_str("timeout = \"2s 500ms\"\nmax_timeout = \"1m\"\nreserve = \"10ms\"")
                .unwrap();
        assert_eq!(
            s,
            DeadlineSettings {
                timeout: Some(Duration::from_millis(2500)),
                max_timeout: Duration::from_secs(60),
                reserve: Duration::from_millis(10),
                ..DeadlineSettings::default()
            }
        );
        let text = toml::to_string(&s).unwrap();
        assert!(text.contains("timeout = \"2s 500ms\""), "{text}");
        assert_eq!(toml::from_str::<DeadlineSettings>(&text).unwrap(), s);

        let none: DeadlineSettings =
            toml::from_str("timeout = \"none\"\npropagate = false").unwrap();
        assert_eq!(
            none,
            DeadlineSettings {
                propagate: false,
                ..timeout(None)
            }
        );
        let json = serde_json::to_string(&none).unwrap();
        assert!(json.contains(r#""timeout":"none""#), "{json}");
        assert_eq!(
            serde_json::from_str::<DeadlineSettings>(&json).unwrap(),
            none
        );
        assert_eq!(
            toml::from_str::<DeadlineSettings>("").unwrap(),
            DeadlineSettings::default()
        );
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let err = toml::from_str::<DeadlineSettings>("default_timeout = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `default_timeout`"), "{err}");
        let err = serde_json::from_str::<DeadlineSettings>(r#"{"reserv": "5ms"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `reserv`"), "{err}");
    }
}

/// A gRPC server that gives up at the `grpc-timeout` it was sent (as tonic
/// servers do, with CANCELLED "Timeout expired"), or at once when `early`.
fn giving_up(
    early: bool,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
    service_fn(move |req: Request<()>| async move {
        let sent = header::incoming_timeout(req.headers()).expect("a grpc-timeout");
        if !early {
            tokio::time::sleep(sent).await;
        }
        let rsp = Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "1")
            .header("grpc-message", "Timeout expired")
            .body(())
            .unwrap();
        Ok::<_, Infallible>(rsp)
    })
}

fn grpc_call() -> Request<()> {
    Request::post("/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "200m")
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_grpc_server_giving_up_at_its_deadline_is_a_deadline_exceeded() {
    let svc = layer().layer(giving_up(false));
    let start = Instant::now();
    let err = svc.oneshot(grpc_call()).await.unwrap_err();
    assert!(err.is_deadline_exceeded(), "{err}");
    // It answered when its deadline (ours less the 5 ms reserve) passed.
    assert_eq!(start.elapsed(), Duration::from_millis(195));

    // A CANCELLED before that is the server's own answer, passed on.
    let svc = layer().layer(giving_up(true));
    let rsp = svc.oneshot(grpc_call()).await.unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "1");
}
