//! The layer and its services: one shared breaker, errors, classifiers,
//! handles, auto traits and `Debug`.

use super::*;

#[tokio::test(start_paused = true)]
async fn every_service_from_one_layer_shares_one_breaker() {
    let layer = users_with(BreakerSettings {
        volume_threshold: 2,
        ..BreakerSettings::default()
    });
    let a = Backend::default();
    let b = Backend::default();
    let mut svc_a = layer.layer(a.clone());
    let svc_b = layer.layer(b.clone());
    for _ in 0..2 {
        let call = svc_a.ready().await.unwrap().call(Request::new(()));
        a.answer(a.calls() - 1, status(500));
        let _ = call.await;
    }
    assert!(is_open(svc_b.handle().state()));
    let err = svc_b.clone().oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(b.calls(), 0);

    // A clone, even with another classifier, is the same breaker.
    let other = layer.clone().classify(HttpClassify::default());
    assert!(is_open(other.handle().state()));
    assert_eq!(other.handle().transitions(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_palisade_error_from_below_is_not_wrapped_again() {
    let backend = tower::service_fn(|_: Request<()>| async {
        Err::<Response<()>, _>(Error::NoEndpoints {
            service: "below".into(),
            waited: secs(1),
        })
    });
    let svc = users().layer(backend);
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is_no_endpoints());
    assert_eq!(err.service(), "below");
}

#[tokio::test(start_paused = true)]
async fn a_custom_classifier_decides_failures() {
    #[derive(Clone)]
    struct NotFoundFails;
    impl Classify<Response<()>> for NotFoundFails {
        fn classify_response(&self, rsp: &Response<()>) -> crate::classify::Class {
            if rsp.status() == 404 {
                crate::classify::Class::failure(crate::classify::Retry::Never)
            } else {
                crate::classify::Class::SUCCESS
            }
        }
        fn classify_error(&self, _: &(dyn std::error::Error + 'static)) -> crate::classify::Class {
            crate::classify::Class::failure(crate::classify::Retry::Never)
        }
    }
    let backend = Backend::default();
    let layer = users_with(BreakerSettings {
        volume_threshold: 3,
        ..BreakerSettings::default()
    })
    .classify(NotFoundFails);
    let mut svc = layer.layer(backend.clone());
    for code in [500, 500, 500, 404, 404] {
        let call = svc.ready().await.unwrap().call(Request::new(()));
        backend.answer(backend.calls() - 1, status(code));
        let _ = call.await;
    }
    assert_eq!(svc.handle().state(), BreakerState::Closed, "2 of 5 failed");
    let call = svc.ready().await.unwrap().call(Request::new(()));
    backend.answer(backend.calls() - 1, status(404));
    let _ = call.await;
    assert!(is_open(svc.handle().state()), "3 of 6 failed");
}

#[tokio::test(start_paused = true)]
async fn a_handle_taken_right_after_new_sees_every_service_of_the_layer() {
    let layer = users_with(BreakerSettings {
        volume_threshold: 2,
        ..BreakerSettings::default()
    });
    let handle = layer.handle();
    // Services from a clone with another classifier: the same breaker.
    let backend = Backend::default();
    let mut svc = layer
        .clone()
        .classify(HttpClassify::default())
        .layer(backend.clone());
    for _ in 0..2 {
        let call = svc.ready().await.unwrap().call(Request::new(()));
        backend.answer(backend.calls() - 1, status(500));
        let _ = call.await;
    }
    assert!(is_open(handle.state()), "{:?}", handle.state());
    assert_eq!(handle.transitions(), 1);
    assert!(is_open(layer.handle().state()));
    let err = layer
        .layer(Backend::default())
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert!(err.is_circuit_open());
}

#[test]
fn the_breaker_and_its_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Svc>();
    send_sync::<BreakerLayer>();
    send_sync::<BreakerHandle>();
    fn send<T: Send>() {}
    send::<Fut>();
}

#[test]
fn debug_shows_the_state_not_the_counters() {
    let layer = users_with(BreakerSettings {
        volume_threshold: 7,
        ..BreakerSettings::default()
    });
    let debug = format!("{:?}", layer.handle());
    assert!(
        debug.starts_with("Breaker { service: \"users\", state: Closed, transitions: 0"),
        "{debug}"
    );
    assert!(debug.contains("volume_threshold: 7"), "{debug}");
}
