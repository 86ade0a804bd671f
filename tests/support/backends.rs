//! Test backends for upstream bounds: hyper servers on 127.0.0.1 that
//! count their connections and requests, answer after a delay or stall
//! after the head (used by `upstream_bounds.rs` and `hostile.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Open connections now, and the most ever open at once.
#[derive(Default)]
pub struct Conns {
    pub open: AtomicUsize,
    pub max: AtomicUsize,
    pub accepted: AtomicUsize,
    /// Requests being answered now, and the most ever at once.
    pub requests: AtomicUsize,
    pub max_requests: AtomicUsize,
}

/// How the test backend answers a request.
#[derive(Clone, Copy)]
pub enum Answer {
    /// `200` after this long, echoing the request's deadline header.
    After(Duration),
    /// A head promising 100 bytes, 10 of them, then nothing ever again.
    Stall,
}

/// A hyper server on 127.0.0.1 (HTTP/1.1, or h2c when `h2`), counting its
/// connections.
pub async fn backend(h2: bool, answer: Answer) -> (SocketAddr, Arc<Conns>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(Conns::default());
    let counts = conns.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let now = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
            counts.max.fetch_max(now, Ordering::SeqCst);
            let counts = counts.clone();
            tokio::spawn(async move {
                let per_request = counts.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let counts = per_request.clone();
                    async move {
                        let now = counts.requests.fetch_add(1, Ordering::SeqCst) + 1;
                        counts.max_requests.fetch_max(now, Ordering::SeqCst);
                        let asked = req
                            .headers()
                            .get("palisade-deadline-ms")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let body = match answer {
                            Answer::After(latency) => {
                                tokio::time::sleep(latency).await;
                                StreamBody::new(
                                    futures::stream::iter([Ok::<_, Infallible>(Frame::data(
                                        Bytes::from(asked),
                                    ))])
                                    .boxed(),
                                )
                            }
                            Answer::Stall => StreamBody::new(
                                futures::stream::iter([Ok(Frame::data(Bytes::from_static(
                                    b"0123456789",
                                )))])
                                .chain(futures::stream::pending())
                                .boxed(),
                            ),
                        };
                        let mut rsp = Response::new(body);
                        if let Answer::Stall = answer {
                            rsp.headers_mut()
                                .insert("content-length", "100".parse().unwrap());
                        }
                        counts.requests.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let io = TokioIo::new(stream);
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(1000)
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                };
                counts.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, conns)
}
