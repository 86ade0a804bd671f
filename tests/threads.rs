//! The proxy's serving threads: each has its own sockets and upstream
//! connections, and all share one balancer per service. The real binary,
//! real backends, all on 127.0.0.1.

#![cfg(all(feature = "cli", unix))]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::proxy::{Proxy, config_with_server, eventually, metric, plain, ready, service};
use tokio::net::TcpStream;

/// What a backend saw: the connections it accepted, the requests it
/// answered.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

/// An HTTP/1.1 backend on 127.0.0.1 answering every request with `status`
/// after `delay`.
async fn backend(status: StatusCode, delay: std::time::Duration) -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok")));
                    *rsp.status_mut() = status;
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// One client connection to the proxy, sending GETs one after another.
struct Connection(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl Connection {
    async fn open(addr: SocketAddr) -> Connection {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Connection(send)
    }

    async fn get(&mut self) -> StatusCode {
        self.0.ready().await.unwrap();
        let req = Request::get("/")
            .header("host", "app")
            .body(Empty::new())
            .unwrap();
        let rsp = self.0.send_request(req).await.unwrap();
        let status = rsp.status();
        rsp.into_body().collect().await.unwrap();
        status
    }
}

/// An endpoint ejected through the traffic of one client connection (so
/// one serving thread) is passed over by the other thread too: the
/// balancer, its failure accrual and its ejections, is one for the whole
/// proxy. With a balancer per thread the other thread would keep sending
/// to the failing endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_ejected_through_one_thread_is_passed_over_by_every_thread() {
    // The failing endpoint is the faster one, so that the balancer, which
    // compares both endpoints on every pick, tries it.
    let (good, good_seen) = backend(StatusCode::OK, std::time::Duration::from_millis(20)).await;
    let (bad, bad_seen) =
        backend(StatusCode::INTERNAL_SERVER_ERROR, std::time::Duration::ZERO).await;
    let proxy = Proxy::start_with(&config_with_server(
        // One failure ejects, for longer than the test takes: after its
        // first failure the balancer's penalty keeps the endpoint from
        // being picked often enough to fail five times in a row.
        &format!(
            "{}\n[services.ejection]\nconsecutive_failures = 1\nbase_penalty = \"1m\"\n\
             jitter = 0.0\n\n[[routes]]\nservice = \"app\"\n",
            service("app", &[good, bad])
        ),
        "threads = 2",
    ));
    let admin = plain();
    ready(&admin, &proxy).await;

    // One connection, one thread: until the failing endpoint is ejected.
    let ejected =
        format!("palisade_endpoint_state{{client=\"app\",endpoint=\"{bad}\",state=\"ejected\"}}");
    let mut first = Connection::open(proxy.listen).await;
    eventually(async || {
        first.get().await;
        metric(&admin, &proxy, &ejected).await == 1
    })
    .await;
    let upstream_before = good_seen.connections.load(Ordering::SeqCst);
    let bad_before = bad_seen.requests.load(Ordering::SeqCst);

    // New connections, one at a time: the kernel spreads them over both
    // threads' sockets. Each thread opens its own connection to the good
    // backend, and one at a time it needs only one.
    for _ in 0..24 {
        let mut c = Connection::open(proxy.listen).await;
        for _ in 0..3 {
            assert_eq!(c.get().await, StatusCode::OK);
        }
    }
    let threads_seen = good_seen.connections.load(Ordering::SeqCst);
    assert!(
        threads_seen >= 2 && threads_seen > upstream_before,
        "the requests were not served by both threads: the good backend saw \
         {threads_seen} connections ({upstream_before} before)"
    );
    assert_eq!(
        bad_seen.requests.load(Ordering::SeqCst),
        bad_before,
        "a thread sent requests to the ejected endpoint"
    );
}
