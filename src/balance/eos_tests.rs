//! The balancer's verdict at the end of a response's stream: a body that
//! fails after its head, or a gRPC status in the trailers, is the
//! endpoint's failure; the in-flight count lasts until the body ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tower::{ServiceExt, service_fn};

use super::*;
use crate::classify::{EosBody, HttpClassify, WatchEos};
use crate::discover::{Endpoint, Static};

/// How an endpoint's response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Ending {
    /// A data frame, then the body ends.
    Clean = 0,
    /// A data frame, then the body fails (a reset mid-body).
    Reset = 1,
    /// gRPC: a message, then `grpc-status` in the trailers.
    GrpcOk = 2,
    GrpcInternal = 3,
}

type Frames = futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>;
type Watched =
    WatchEos<tower::util::BoxCloneSyncService<Request<()>, Response<StreamBody<Frames>>, BoxError>>;

/// One endpoint whose responses end as `ending` says (switchable).
fn balancer(ending: Arc<AtomicU8>) -> Balance<Watched, HttpClassify> {
    let new_endpoint = move |_: &Endpoint| {
        let ending = ending.clone();
        let svc = service_fn(move |_: Request<()>| {
            let ending = ending.load(Ordering::Relaxed);
            async move {
                let grpc = ending >= Ending::GrpcOk as u8;
                let mut frames = vec![Ok(Frame::data(Bytes::from_static(b"ok")))];
                match ending {
                    1 => frames.push(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "reset mid-body",
                    ))),
                    2 | 3 => {
                        let mut t = HeaderMap::new();
                        t.insert(
                            "grpc-status",
                            if ending == 2 { "0" } else { "13" }.parse().unwrap(),
                        );
                        frames.push(Ok(Frame::trailers(t)));
                    }
                    _ => {}
                }
                let mut rsp = Response::new(StreamBody::new(futures::stream::iter(frames)));
                if grpc {
                    rsp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                }
                Ok::<_, BoxError>(rsp)
            }
        });
        Ok::<_, Infallible>(WatchEos::new(tower::util::BoxCloneSyncService::new(svc)))
    };
    let ejection = EjectionSettings {
        jitter: 0.0,
        ..EjectionSettings::default()
    };
    Balance::new(
        "eos",
        Static::parse(["127.0.0.1:1"]).unwrap(),
        new_endpoint,
        HttpClassify::default(),
        BalanceSettings::default(),
        ejection,
    )
    .unwrap()
}

fn stats(b: &Balance<Watched, HttpClassify>) -> EndpointStats {
    b.endpoint_stats().pop().expect("one endpoint")
}

async fn call(b: &Balance<Watched, HttpClassify>) -> Response<EosBody<StreamBody<Frames>>> {
    b.clone()
        .oneshot(Request::new(()))
        .await
        .expect("a response head")
}

#[tokio::test(start_paused = true)]
async fn a_body_that_fails_after_its_head_is_the_endpoints_failure() {
    let ending = Arc::new(AtomicU8::new(Ending::Reset as u8));
    let b = balancer(ending.clone());
    crate::testing::settle_until(&b, |b| b.len() == 1).await;

    let rsp = call(&b).await;
    assert_eq!(rsp.status(), 200);
    let s = stats(&b);
    assert_eq!(
        (s.in_flight, s.failures),
        (1, 0),
        "judged at the end, not at the head"
    );
    assert!(
        rsp.into_body().collect().await.is_err(),
        "the caller sees the reset"
    );
    let s = stats(&b);
    assert_eq!((s.in_flight, s.failures), (0, 1));
    assert!(
        s.rtt_estimate >= Duration::from_millis(300),
        "penalised: {s:?}"
    );

    // Four more in a row: ejected (the default is five consecutive).
    for _ in 0..4 {
        let _ = call(&b).await.into_body().collect().await;
    }
    let s = stats(&b);
    assert_eq!(s.failures, 5);
    assert_eq!(s.ejections, 1, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_clean_or_dropped_body_is_a_success_and_in_flight_lasts_until_then() {
    let ending = Arc::new(AtomicU8::new(Ending::Clean as u8));
    let b = balancer(ending.clone());
    crate::testing::settle_until(&b, |b| b.len() == 1).await;

    let held = call(&b).await;
    let dropped = call(&b).await;
    assert_eq!(stats(&b).in_flight, 2, "a body being read is load");
    drop(dropped);
    assert_eq!(stats(&b).in_flight, 1);
    let body = held.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    let s = stats(&b);
    assert_eq!((s.in_flight, s.failures, s.requests), (0, 0, 2));
}

#[tokio::test(start_paused = true)]
async fn a_grpc_status_in_the_trailers_is_the_verdict() {
    let ending = Arc::new(AtomicU8::new(Ending::GrpcOk as u8));
    let b = balancer(ending.clone());
    crate::testing::settle_until(&b, |b| b.len() == 1).await;

    let ok = call(&b).await.into_body().collect().await.unwrap();
    assert_eq!(ok.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(stats(&b).failures, 0);

    ending.store(Ending::GrpcInternal as u8, Ordering::Relaxed);
    let failed = call(&b).await.into_body().collect().await.unwrap();
    assert_eq!(failed.trailers().unwrap()["grpc-status"], "13");
    assert_eq!(stats(&b).failures, 1, "INTERNAL after data is a failure");

    // A stream the caller drops before its status is the caller's choice.
    drop(call(&b).await);
    assert_eq!(stats(&b).failures, 1);
}
