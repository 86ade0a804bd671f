//! The HTTP transport's defaults (issue 16, parts 1 and 5), against real
//! sockets on 127.0.0.1:
//!
//! - a connect that hangs (a listener whose accept queue is full) fails
//!   after the connect timeout (1 s by default) as an error the classifier
//!   knows was never sent, and a POST caught by it succeeds on another
//!   endpoint, reaching the backend once;
//! - a pooled HTTP/1.1 connection the server closed while it sat idle is
//!   not used for a request: the request, unwritten, goes on a new
//!   connection, whatever its method; a request that was written is not
//!   resent by the transport.

#![cfg(feature = "demo")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use palisade::classify::{Retry, classify_transport_error};
use palisade::deadline::DeadlineSettings;
use palisade::discover::Endpoint;
use palisade::http::{HttpSettings, hyper_client};
use palisade::{Client, Hyper};

type Body = Full<Bytes>;

/// A listener on 127.0.0.1 that never accepts, with its accept queue full:
/// the kernel drops further SYNs, so a connect to it hangs, as to a host
/// that is down or a process too busy to accept.
struct Unreachable {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<std::net::TcpStream>,
}

async fn unreachable() -> Unreachable {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    // Fill the queue until a connect hangs: that is the state under test.
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Unreachable {
                    addr,
                    _listener: listener,
                    _queued: queued,
                };
            }
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// What a backend received: connections accepted, and each request's
/// method and body.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    requests: Mutex<Vec<(Method, String)>>,
}

impl Seen {
    /// How many times each body arrived with `method`.
    fn count(&self, method: &Method) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (m, body) in self.requests.lock().unwrap().iter() {
            if m == method {
                *out.entry(body.clone()).or_default() += 1;
            }
        }
        out
    }
}

/// A hyper HTTP/1.1 server on 127.0.0.1 answering `200` to everything,
/// recording what it received. With `idle_close`, it closes a connection
/// that has not begun a request head for that long (hyper's header read
/// timeout, which runs between kept-alive requests too). It runs on a
/// runtime of its own, so it closes on time whatever the test's runtime
/// is doing.
fn backend(idle_close: Option<Duration>) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                let counts = counts.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let counts = counts.clone();
                        async move {
                            let method = req.method().clone();
                            let body = req.into_body().collect().await?.to_bytes();
                            let body = String::from_utf8_lossy(&body).into_owned();
                            counts.requests.lock().unwrap().push((method, body));
                            Ok::<_, hyper::Error>(Response::new(Body::new(Bytes::from("ok"))))
                        }
                    });
                    let mut http1 = hyper::server::conn::http1::Builder::new();
                    http1.timer(TokioTimer::new());
                    if let Some(idle) = idle_close {
                        http1.header_read_timeout(idle);
                    }
                    let _ = http1.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
    });
    (addr, seen)
}

fn request(method: Method, addr: SocketAddr, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}/"))
        .body(Body::new(Bytes::from(body.to_owned())))
        .unwrap()
}

#[tokio::test]
async fn a_connect_that_hangs_fails_after_the_default_timeout_as_never_sent() {
    let down = unreachable().await;
    let client = hyper_client::<Body>();
    // Without a connect timeout the kernel gives up after about two
    // minutes of SYN retries; the default is 1 s.
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(request(Method::POST, down.addr, "x")),
    )
    .await
    .expect("the connect timed out")
    .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let class = classify_transport_error(&err);
    assert!(class.is_failure(), "{class:?}");
    assert_eq!(class.retry(), Retry::Always, "nothing was sent: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_caught_by_a_connect_timeout_succeeds_on_another_endpoint_once() {
    let down = unreachable().await;
    let (up, seen) = backend(None);
    let settings = HttpSettings {
        connect_timeout: Duration::from_millis(100),
        ..HttpSettings::default()
    };
    let client: Hyper<Body> = Client::builder("app")
        .endpoints([Endpoint::new(down.addr), Endpoint::new(up)])
        .http(settings.http1_client().unwrap())
        .deadline(DeadlineSettings {
            timeout: Some(Duration::from_secs(5)),
            ..DeadlineSettings::default()
        })
        .build()
        .unwrap();
    // At once, so that the balancer (which counts requests in flight)
    // spreads them over both endpoints before either has a latency.
    let results = join_all((0..10).map(|i| {
        let client = client.clone();
        async move {
            let req = Request::post("http://app/")
                .body(Body::new(Bytes::from(format!("post-{i}"))))
                .unwrap();
            match tower::ServiceExt::oneshot(client, req).await {
                Ok(rsp) => Ok(rsp.status().as_u16()),
                Err(e) => Err(e.to_string()),
            }
        }
    }))
    .await;
    assert!(results.iter().all(|r| r == &Ok(200)), "{results:?}");
    let posts = seen.count(&Method::POST);
    assert_eq!(posts.len(), 10, "{posts:?}");
    assert!(posts.values().all(|n| *n == 1), "each POST once: {posts:?}");
    let stats = client.endpoint_stats();
    let hung = stats
        .iter()
        .find(|s| s.address == down.addr.into())
        .unwrap();
    assert!(
        hung.failures >= 1,
        "the unreachable endpoint was tried and its connect counted against it: {stats:?}"
    );
}
/// A request handed to a pooled connection that the server closed while
/// it sat idle goes out on a new connection, GET or POST alike, once.
///
/// The race is made certain rather than likely: this runtime has one
/// thread, and the test blocks it while the backend (on its own runtime)
/// closes the idle connection, so the client's connection task cannot see
/// the close before the next request is taken from the pool.
#[tokio::test(flavor = "current_thread")]
async fn a_request_on_a_connection_closed_while_idle_is_sent_again_unwritten() {
    let (addr, seen) = backend(Some(Duration::from_secs(1)));
    let client = hyper_client::<Body>();
    let methods = [Method::GET, Method::POST, Method::GET, Method::POST];
    for (i, method) in methods.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        let rsp = client
            .request(request(method.clone(), addr, &format!("{method}-{i}")))
            .await
            .unwrap_or_else(|e| panic!("request {i} ({method}): {e:?}"));
        assert_eq!(rsp.status(), 200);
        rsp.into_body().collect().await.unwrap();
    }
    let posts = seen.count(&Method::POST);
    assert_eq!(
        posts,
        HashMap::from([("POST-1".into(), 1), ("POST-3".into(), 1)])
    );
    assert_eq!(seen.count(&Method::GET).len(), 2);
    // Every request after the first found its connection closed.
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 4);
}

/// A backend that reads a request head and closes without answering.
async fn closes_after_the_head() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let count = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, heads)
}

/// The other side of the line: a POST that was written is not sent again
/// by the transport, and the classifier allows a retry only to idempotent
/// methods, since the server may have acted on it.
#[tokio::test]
async fn a_written_post_is_not_sent_again_when_the_connection_closes() {
    let (addr, heads) = closes_after_the_head().await;
    let client = hyper_client::<Body>();
    let err = client
        .request(request(Method::POST, addr, "once"))
        .await
        .unwrap_err();
    assert!(!err.is_connect(), "{err:?}");
    assert_eq!(classify_transport_error(&err).retry(), Retry::IfIdempotent);
    assert_eq!(heads.load(Ordering::SeqCst), 1);
}
