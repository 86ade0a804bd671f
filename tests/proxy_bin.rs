//! `palisade proxy` end to end: the real binary, real backends, all on
//! 127.0.0.1.

#![cfg(all(feature = "cli", unix))]

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use palisade::demo::{Backend, Behavior};
use support::proxy::{
    Plain, Proxy, config_path, eventually, get, head, plain, raw, ready, serve_raw, service,
    status_of,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_the_librarys_policies() {
    let fast = Behavior::new().latency(Duration::from_millis(5));
    let slow = Backend::spawn(Behavior::new().latency(Duration::from_millis(150)))
        .await
        .unwrap();
    let failing = Backend::spawn(Behavior::new().failure_rate(1.0))
        .await
        .unwrap();
    let healthy = [
        Backend::spawn(fast).await.unwrap(),
        Backend::spawn(fast).await.unwrap(),
    ];
    let doomed = Backend::spawn(fast).await.unwrap();
    let addrs = [
        healthy[0].addr(),
        healthy[1].addr(),
        slow.addr(),
        failing.addr(),
        doomed.addr(),
    ];
    let proxy = Proxy::start(&(service("app", &addrs) + "[[routes]]\nservice = \"app\"\n"));
    let client = plain();
    ready(&client, &proxy).await;

    let mut ok = 0;
    let total = 600;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (client, addr) = (client.clone(), proxy.listen);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..total / 6 {
                ok += usize::from(get(&client, addr, "/").await.0 == 200);
            }
            ok
        }));
    }
    // One backend dies mid-run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.shutdown().await;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert!(
        ok as f64 / total as f64 >= 0.99,
        "{ok} of {total} succeeded"
    );
    assert!(
        (slow.requests() as f64) < 0.05 * total as f64,
        "slow got {}",
        slow.requests()
    );
    assert!(
        (failing.requests() as f64) < 0.05 * total as f64,
        "failing got {}",
        failing.requests()
    );
    let seen = healthy[0].last_request().unwrap();
    assert!(seen.headers.contains_key("x-forwarded-for"));
    assert!(seen.headers.contains_key("palisade-deadline-ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let proxy =
        Proxy::start(&(service("app", &[backend.addr()]) + "[[routes]]\nservice = \"app\"\n"));
    let client = plain();
    ready(&client, &proxy).await;
    assert_eq!(get(&client, proxy.listen, "/").await.0, 200);

    assert_eq!(get(&client, proxy.admin, "/live").await.0, 200);
    let (status, _, metrics) = get(&client, proxy.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"palisade_requests_total{client="app"} 1"#),
        "{metrics}"
    );
    let (status, _, config) = get(&client, proxy.admin, "/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["services"][0]["name"], "app");
    let (status, _, snapshot) = get(&client, proxy.admin, "/snapshot").await;
    assert_eq!(status, 200);
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(
        snapshot["services"][0]["endpoints"][0]["address"],
        backend.addr().to_string()
    );
    assert_eq!(snapshot["services"][0]["endpoints"][0]["requests"], 1);
    assert_eq!(get(&client, proxy.admin, "/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_become_statuses() {
    let failing = Backend::spawn(Behavior::new()).await.unwrap();
    let refused = failing.addr();
    failing.shutdown().await;
    let body = service("down", &[refused])
        + "[[routes]]\nmatch = { path_prefix = \"/down\" }\nservice = \"down\"\n";
    let proxy = Proxy::start(&body);
    let client = plain();
    ready(&client, &proxy).await;
    let (status, headers, _) = get(&client, proxy.listen, "/elsewhere").await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-palisade-error"], "no-route");
    let (status, headers, body) = get(&client, proxy.listen, "/down").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers["x-palisade-error"], "upstream-error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_good_files_and_keeps_serving_through_bad_ones() {
    let a = Backend::spawn(Behavior::new()).await.unwrap();
    let b = Backend::spawn(Behavior::new()).await.unwrap();
    let route = "[[routes]]\nservice = \"app\"\n";
    let proxy = Proxy::start(&(service("app", &[a.addr()]) + route));
    let client = plain();
    ready(&client, &proxy).await;
    assert_eq!(get(&client, proxy.listen, "/").await.0, 200);

    // A good change: the service moves to b.
    proxy.rewrite(&(service("app", &[b.addr()]) + route));
    eventually(async || {
        get(&client, proxy.listen, "/").await;
        b.requests() > 0
    })
    .await;
    let on_a = a.requests();
    for _ in 0..20 {
        assert_eq!(get(&client, proxy.listen, "/").await.0, 200);
    }
    assert_eq!(a.requests(), on_a, "the old endpoint still gets traffic");

    // A bad change is rejected: traffic keeps flowing to b.
    proxy.rewrite("this is = not [valid toml");
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..20 {
        assert_eq!(get(&client, proxy.listen, "/").await.0, 200);
    }
    let (_, _, config) = get(&client, proxy.admin, "/config").await;
    assert!(config.contains(&b.addr().to_string()), "{config}");

    // SIGHUP reloads too (the file is good again, pointing at a).
    proxy.rewrite(&(service("app", &[a.addr()]) + route));
    proxy.signal("-HUP");
    eventually(async || {
        get(&client, proxy.listen, "/").await;
        a.requests() > on_a
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let slow = Backend::spawn(Behavior::new().latency(Duration::from_millis(700)))
        .await
        .unwrap();
    let mut proxy =
        Proxy::start(&(service("app", &[slow.addr()]) + "[[routes]]\nservice = \"app\"\n"));
    let client = plain();
    ready(&client, &proxy).await;
    let in_flight: Vec<_> = (0..10)
        .map(|_| {
            let (client, addr) = (client.clone(), proxy.listen);
            tokio::spawn(async move { get(&client, addr, "/").await.0 })
        })
        .collect();
    // Every request has reached the backend (it counts on arrival).
    eventually(async || slow.requests() == 10).await;
    proxy.signal("-TERM");
    for r in in_flight {
        assert_eq!(r.await.unwrap(), 200, "an in-flight request was lost");
    }
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(slow.requests(), 10);
}

/// A backend on 127.0.0.1 that answers each request only once released:
/// a request stays in flight for as long as a test needs.
struct Held {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl Held {
    async fn spawn() -> Held {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let counter = arrived.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counter, mut released) = (counter.clone(), released.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                        .await;
                });
            }
        });
        Held {
            addr,
            arrived,
            release,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_503_while_draining() {
    let held = Held::spawn().await;
    // A grace period far longer than the test: the drain ends when the
    // held request is released, not by running out of time.
    let text = support::proxy::config_text(
        &(service("app", &[held.addr]) + "[[routes]]\nservice = \"app\"\n"),
    )
    .replace("grace_period = \"5s\"", "grace_period = \"60s\"");
    let mut proxy = Proxy::start_with(&text);
    let client = plain();
    ready(&client, &proxy).await;
    let in_flight = {
        let (client, addr) = (client.clone(), proxy.listen);
        tokio::spawn(async move { get(&client, addr, "/").await.0 })
    };
    eventually(async || held.arrived.load(Ordering::SeqCst) == 1).await;

    proxy.signal("-TERM");
    // The request is held, so the proxy is draining, not gone: the admin
    // server still answers, and says it is not ready.
    eventually(async || get(&client, proxy.admin, "/ready").await.0 == 503).await;
    let (_, _, body) = get(&client, proxy.admin, "/ready").await;
    assert!(body.contains("draining"), "{body}");
    assert_eq!(get(&client, proxy.admin, "/live").await.0, 200);

    held.release.send(true).unwrap();
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request was lost"
    );
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_max_header_bytes_applies_to_new_connections() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let body = service("app", &[backend.addr()]) + "[[routes]]\nservice = \"app\"\n";
    let proxy = Proxy::start(&body);
    ready(&plain(), &proxy).await;
    assert_eq!(raw(proxy.listen, &head(16384)).await, 431);

    let text = support::proxy::config_text(&body);
    std::fs::write(
        &proxy.config,
        text.replace("max_header_bytes = 8192", "max_header_bytes = 16384"),
    )
    .unwrap();
    eventually(async || raw(proxy.listen, &head(16384)).await == 200).await;
    assert_eq!(raw(proxy.listen, &head(16385)).await, 431);
}

/// The status of a GET over h2c to `addr` whose header list, as HTTP/2
/// counts it (each field's name and value plus 32 bytes, the pseudo-header
/// fields included; RFC 9113 §6.5.2), is `size` bytes.
async fn h2c_header_list(client: &Plain, addr: SocketAddr, size: usize) -> u16 {
    let authority = addr.to_string();
    let fields = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", authority.as_str()),
        (":path", "/"),
        ("x-pad", ""),
    ];
    let counted: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    let req = http::Request::get(format!("http://{addr}/"))
        .header("x-pad", "a".repeat(size - counted))
        .body(Full::default())
        .unwrap();
    client
        .request(req)
        .await
        .expect("h2c request")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_header_bytes_is_the_largest_head_accepted() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let h2: Plain = HttpClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    // Powers of two and not, below hyper's smallest HTTP/1 buffer and above.
    for limit in [1024, 8192, 10_000] {
        let body = service("app", &[backend.addr()]) + "[[routes]]\nservice = \"app\"\n";
        let text = support::proxy::config_text(&body).replace(
            "max_header_bytes = 8192",
            &format!("max_header_bytes = {limit}"),
        );
        let proxy = Proxy::start_with(&text);
        ready(&plain(), &proxy).await;

        // HTTP/1.1, on a new connection: the request line and headers.
        assert_eq!(raw(proxy.listen, &head(limit)).await, 200, "{limit}");
        assert_eq!(raw(proxy.listen, &head(limit + 1)).await, 431, "{limit}");
        // ... and on a connection that already served a request.
        assert_eq!(
            raw_second(proxy.listen, &head(limit)).await,
            200,
            "{limit}, kept alive"
        );
        assert_eq!(
            raw_second(proxy.listen, &head(limit + 1)).await,
            431,
            "{limit}, kept alive"
        );
        // h2c: the header list.
        assert_eq!(
            h2c_header_list(&h2, proxy.listen, limit).await,
            200,
            "{limit}"
        );
        assert_eq!(
            h2c_header_list(&h2, proxy.listen, limit + 1).await,
            431,
            "{limit}"
        );
        // The connection is still good.
        assert_eq!(get(&h2, proxy.listen, "/").await.0, 200);
    }
}

/// The status of `bytes` sent as the second request of a connection whose
/// first request was a small GET that got its answer.
async fn raw_second(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read the first answer whole: its head and its `ok\n` body.
    let mut first = Vec::new();
    let mut buf = [0u8; 1024];
    while !first.ends_with(b"ok\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the first answer ended early: {first:?}");
        first.extend_from_slice(&buf[..n]);
    }
    stream.write_all(bytes).await.unwrap();
    status_of(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_4xx_and_the_proxy_stays_up() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let proxy =
        Proxy::start(&(service("app", &[backend.addr()]) + "[[routes]]\nservice = \"app\"\n"));
    let client = plain();
    ready(&client, &proxy).await;

    assert_eq!(raw(proxy.listen, b"GARBAGE\r\n\r\n").await, 400);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(raw(proxy.listen, big.as_bytes()).await, 431);
    assert_eq!(
        raw(proxy.listen, b"GET / HTTP/1.1\r\nHost: bad host!\r\n\r\n").await,
        400
    );
    // Still serving.
    assert_eq!(get(&client, proxy.listen, "/").await.0, 200);
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let proxy =
        Proxy::start(&(service("app", &[backend.addr()]) + "[[routes]]\nservice = \"app\"\n"));
    ready(&plain(), &proxy).await;
    let h2: Plain = HttpClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for _ in 0..5 {
        let (status, _, body) = get(&h2, proxy.listen, "/").await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok\n");
    }
    let seen = backend.last_request().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_11, "upstream is HTTP/1.1");
    assert_eq!(
        seen.headers["host"],
        proxy.listen.to_string(),
        "the h2 :authority became Host"
    );
}

#[test]
fn check_reports_errors_with_lines_and_exits_1() {
    let path = config_path();
    std::fs::write(
        &path,
        "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n\n[services.retry]\nmax_attempts = 0\n\n[[routes]]\nservice = \"nope\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(":6: error: services[0].retry.max_attempts"),
        "{stdout}"
    );
    assert!(stdout.contains(":9: error: routes[0].service"), "{stdout}");

    let good = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/palisade.toml"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_header_and_split() {
    let (a, b, c, d, e) = (
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
    );
    let body = service("a", &[a.addr()])
        + &service("b", &[b.addr()])
        + &service("c", &[c.addr()])
        + &service("d", &[d.addr()])
        + &service("e", &[e.addr()])
        + "[[routes]]\nmatch = { headers = { \"x-canary\" = \"1\" } }\nservice = \"c\"\n\n\
           [[routes]]\nmatch = { host = \"*.tenants.example\" }\nservice = \"d\"\n\n\
           [[routes]]\nmatch = { host = \"api.example\", methods = [\"POST\"] }\nservice = \"e\"\n\n\
           [[routes]]\nmatch = { path_prefix = \"/b\" }\nservice = \"b\"\n\n\
           [[routes]]\nsplit = [{ service = \"a\", weight = 3 }, { service = \"b\", weight = 1 }]\n";
    let proxy = Proxy::start(&body);
    let client = plain();
    ready(&client, &proxy).await;
    let send = async |method: http::Method, host: &str, path: &str, canary: bool| {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", proxy.listen))
            .header("host", host);
        if canary {
            req = req.header("x-canary", "1");
        }
        let rsp = client.request(req.body(Full::default()).unwrap()).await;
        assert_eq!(rsp.unwrap().status(), 200);
    };

    send(http::Method::GET, "x", "/x", true).await;
    assert_eq!(c.requests(), 1, "header route");
    // A wildcard host matches names under it at any depth, in any case,
    // with a port or not; not the bare name.
    send(http::Method::GET, "a.tenants.example", "/", false).await;
    send(http::Method::GET, "x.y.TENANTS.example:8080", "/", false).await;
    assert_eq!(d.requests(), 2, "wildcard host route");
    // An exact host with a method: both must match.
    send(http::Method::POST, "API.example", "/", false).await;
    assert_eq!(e.requests(), 1, "host and method route");
    let (a0, b0) = (a.requests(), b.requests());
    send(http::Method::GET, "tenants.example", "/b", false).await;
    send(http::Method::GET, "api.example", "/b", false).await;
    assert_eq!(
        (d.requests(), e.requests()),
        (2, 1),
        "bare name, other method"
    );
    assert_eq!(
        (a.requests(), b.requests()),
        (a0, b0 + 2),
        "the path route took them"
    );
    get(&client, proxy.listen, "/b/thing").await;
    get(&client, proxy.listen, "/bx").await; // not under /b: the split
    let b_before = b.requests();
    for _ in 0..400 {
        get(&client, proxy.listen, "/").await;
    }
    let (to_a, to_b) = (a.requests(), b.requests() - b_before);
    let share = to_a as f64 / (to_a + to_b) as f64;
    assert!(
        (0.68..0.82).contains(&share),
        "3:1 split gave {to_a}:{to_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstreams_are_pooled_and_used() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let (counted, conns) =
        support::backends::backend(true, support::backends::Answer::After(Duration::ZERO)).await;
    let body = format!(
        "[[services]]\nname = \"app\"\nprotocol = \"h2c\"\nendpoints = [\"{}\"]\n\n\
         [[services]]\nname = \"counted\"\nprotocol = \"h2c\"\nendpoints = [\"{counted}\"]\n\n\
         [[routes]]\nmatch = {{ path_prefix = \"/counted\" }}\nservice = \"counted\"\n\n\
         [[routes]]\nservice = \"app\"\n",
        backend.addr()
    );
    // One serving thread: one pool, so one connection is all it may open.
    let proxy = Proxy::start_with(&support::proxy::config_with_server(&body, "threads = 1"));
    let client = plain();
    ready(&client, &proxy).await;
    for _ in 0..5 {
        assert_eq!(get(&client, proxy.listen, "/").await.0, 200);
    }
    let seen = backend.last_request().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(backend.requests(), 5);
    // Pooled: 40 requests, 20 at a time, share one h2c connection.
    for _ in 0..2 {
        let batch = (0..20).map(|_| get(&client, proxy.listen, "/counted"));
        for (status, _, _) in futures::future::join_all(batch).await {
            assert_eq!(status, 200);
        }
    }
    assert_eq!(
        conns.accepted.load(Ordering::SeqCst),
        1,
        "one pooled h2c connection"
    );
}

/// Writes `text` to `path` atomically: a temporary file renamed over it.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Removes a file when dropped.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits until the proxy's requests reach `to`, then checks that ten more
/// all succeed and none reaches `from` (a removed endpoint gets nothing new).
async fn traffic_moves(client: &Plain, proxy: &Proxy, from: &Backend, to: &Backend) {
    eventually(async || {
        get(client, proxy.listen, "/").await;
        to.requests() > 0
    })
    .await;
    let on_from = from.requests();
    for _ in 0..10 {
        assert_eq!(get(client, proxy.listen, "/").await.0, 200);
    }
    assert_eq!(
        from.requests(),
        on_from,
        "the removed endpoint still gets traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_discovery_moves_traffic_without_a_config_reload() {
    let a = Backend::spawn(Behavior::new()).await.unwrap();
    let b = Backend::spawn(Behavior::new()).await.unwrap();
    // Next to the config file, named relative to it; missing at start.
    let endpoints = config_path().with_extension("json");
    let _cleanup = Cleanup(endpoints.clone());
    let name = endpoints.file_name().unwrap().to_str().unwrap();
    let proxy = Proxy::start(&format!(
        "[[services]]\nname = \"app\"\ndiscovery = {{ file = \"{name}\", interval = \"100ms\" }}\n\n\
         [[routes]]\nservice = \"app\"\n"
    ));
    let client = plain();

    // No file yet: not ready, and /ready says where the endpoints should come from.
    let (status, _, body) = get(&client, proxy.admin, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!(
            "no endpoints yet for app (file {})",
            endpoints.display()
        )),
        "{body}"
    );

    replace_file(&endpoints, &format!("[\"{}\"]", a.addr()));
    ready(&client, &proxy).await;
    assert_eq!(get(&client, proxy.listen, "/").await.0, 200);
    assert_eq!(a.requests(), 1);

    // The file changes, the config does not: traffic moves to b.
    replace_file(
        &endpoints,
        &format!(
            "{{\"endpoints\": [{{\"address\": \"{}\", \"labels\": {{\"zone\": \"b\"}}}}]}}",
            b.addr()
        ),
    );
    traffic_moves(&client, &proxy, &a, &b).await;

    // A bad file keeps the last good set.
    replace_file(&endpoints, "[\"nope\"]");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&client, proxy.listen, "/").await.0, 200);

    let (_, _, snapshot) = get(&client, proxy.admin, "/snapshot").await;
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    let app = &snapshot["services"][0];
    assert_eq!(app["discovery"]["kind"], "file", "{app}");
    assert_eq!(app["discovery"]["file"], name);
    assert_eq!(
        app["discovery"]["resolved_path"],
        endpoints.display().to_string()
    );
    assert_eq!(app["discovery"]["interval"], "100ms");
    assert_eq!(app["endpoints"][0]["address"], b.addr().to_string());
    assert_eq!(app["endpoints"][0]["labels"]["zone"], "b");
    let (_, _, config) = get(&client, proxy.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["services"][0]["discovery"],
        serde_json::json!({ "file": name, "interval": "100ms" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_sheds_at_once_and_caps_what_the_backend_sees() {
    let slow = Backend::spawn(Behavior::new().latency(Duration::from_secs(1)))
        .await
        .unwrap();
    let proxy = Proxy::start(
        &(service("app", &[slow.addr()])
            + "[services.limits]\nconcurrency = { max = 2, queue = 2, max_wait = \"100ms\" }\n\n\
           [[routes]]\nservice = \"app\"\n"),
    );
    let client = plain();
    ready(&client, &proxy).await;

    let started = tokio::time::Instant::now();
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let (client, addr) = (client.clone(), proxy.listen);
            tokio::spawn(async move {
                let (status, headers, body) = get(&client, addr, "/").await;
                (status, headers, body, started.elapsed())
            })
        })
        .collect();
    let mut served = 0;
    for r in requests {
        let (status, headers, body, elapsed) = r.await.unwrap();
        if status == 200 {
            served += 1;
            continue;
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(headers["x-palisade-error"], "overloaded");
        assert!(headers.get("retry-after").is_none());
        // Shed at once, or after the 100 ms wait: never after the backend's second.
        assert!(
            elapsed < Duration::from_millis(700),
            "shed after {elapsed:?}: {body}"
        );
        assert!(
            body.contains("concurrency limit reached (2 in flight, 2 queued)")
                || body.contains("for one of 2 concurrency slots"),
            "{body}"
        );
    }
    assert_eq!(served, 2);
    assert_eq!(
        slow.requests(),
        2,
        "the backend saw more than max in flight"
    );

    let (_, _, snapshot) = get(&client, proxy.admin, "/snapshot").await;
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    let limit = &snapshot["services"][0]["concurrency"];
    assert_eq!(limit["max"], 2, "{snapshot}");
    assert_eq!(limit["in_flight"], 0);
    assert_eq!(
        limit["shed_full"].as_u64().unwrap() + limit["shed_timeout"].as_u64().unwrap(),
        8
    );
    assert!(snapshot["services"][0]["rate_limit"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_answers_503_with_retry_after() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let proxy = Proxy::start(
        &(service("app", &[backend.addr()])
            + "limits = { rate = { per_second = 1.0, burst = 2, key_header = \"x-tenant\" } }\n\n\
           [[routes]]\nservice = \"app\"\n"),
    );
    let client = plain();
    ready(&client, &proxy).await;
    let send = async |tenant: &str| {
        let req = http::Request::get(format!("http://{}/", proxy.listen))
            .header("x-tenant", tenant)
            .body(Full::default())
            .unwrap();
        let rsp = client.request(req).await.unwrap();
        let (status, headers) = (rsp.status().as_u16(), rsp.headers().clone());
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(send("a").await.0, 200);
    assert_eq!(send("a").await.0, 200);
    let (status, headers, body) = send("a").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["x-palisade-error"], "overloaded");
    assert_eq!(headers["retry-after"], "1", "whole seconds, rounded up");
    assert!(
        body.contains("rate limit of 1/s (burst 2) reached for key \"a\""),
        "{body}"
    );
    // Another tenant has its own bucket.
    assert_eq!(send("b").await.0, 200);
    assert_eq!(backend.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_clients_of_unchanged_services() {
    let (a, b, c) = (
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
    );
    let routes = "[[routes]]\nmatch = { path_prefix = \"/a\" }\nservice = \"a\"\n\n\
                  [[routes]]\nservice = \"b\"\n";
    let limits = "limits = { concurrency = { max = 8 } }\n\n";
    let proxy =
        Proxy::start(&(service("a", &[a.addr()]) + limits + &service("b", &[b.addr()]) + routes));
    let client = plain();
    ready(&client, &proxy).await;
    for _ in 0..3 {
        assert_eq!(get(&client, proxy.listen, "/a").await.0, 200);
        assert_eq!(get(&client, proxy.listen, "/b").await.0, 200);
    }

    // Only b changes.
    proxy.rewrite(&(service("a", &[a.addr()]) + limits + &service("b", &[c.addr()]) + routes));
    eventually(async || {
        get(&client, proxy.listen, "/b").await;
        c.requests() > 0
    })
    .await;
    let (_, _, snapshot) = get(&client, proxy.admin, "/snapshot").await;
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    let (sa, sb) = (&snapshot["services"][0], &snapshot["services"][1]);
    assert_eq!(sa["service"], "a");
    // a's client (with its counts and its limit) survived the reload ...
    assert_eq!(sa["endpoints"][0]["requests"], 3, "{sa}");
    assert_eq!(sa["concurrency"]["max"], 8);
    // ... b's is new: it has counted only what went to c.
    assert_eq!(sb["endpoints"].as_array().unwrap().len(), 1, "{sb}");
    assert_eq!(sb["endpoints"][0]["address"], c.addr().to_string());
    assert_eq!(sb["endpoints"][0]["requests"], c.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_what_it_can_and_says_what_needs_a_restart() {
    let (a, b, c) = (
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
    );
    let route = "[[routes]]\nservice = \"app\"\n";
    let config_text = support::proxy::config_text;
    let proxy = Proxy::start_logging(&config_text(&(service("app", &[a.addr()]) + route)));
    let client = plain();
    ready(&client, &proxy).await;
    assert_eq!(get(&client, proxy.listen, "/").await.0, 200);

    // A file with a second listener, another admin address, the service on
    // `backend`, and `note` (a comment).
    let running_admin = "[admin]\naddress = \"127.0.0.1:0\"";
    let moved = |backend: &Backend, note: &str| {
        config_text(&(service("app", &[backend.addr()]) + route)).replacen(
            running_admin,
            &format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"{}\"",
                proxy.admin
            ),
            1,
        ) + note
    };
    let listeners_kept = [
        "listeners changed from [127.0.0.1:0] to [127.0.0.1:0, 127.0.0.1:0]",
        "needs a restart",
    ];
    let admin_changed = format!("admin.address changed from 127.0.0.1:0 to {}", proxy.admin);
    let admin_kept = [admin_changed.as_str(), "needs a restart"];
    let reloaded = ["config reloaded"];

    // The service moves to b; the sockets stay, each change named with
    // its running and its new value, and the reload says what it left out.
    std::fs::write(&proxy.config, moved(&b, "")).unwrap();
    traffic_moves(&client, &proxy, &a, &b).await;
    eventually(async || {
        proxy.logged(&listeners_kept).len() == 1
            && proxy.logged(&admin_kept).len() == 1
            && proxy.logged(&reloaded).len() == 1
    })
    .await;
    let line = &proxy.logged(&reloaded)[0];
    assert!(
        line.contains("except listeners, admin.address (a restart is needed for those)"),
        "{line}"
    );
    assert_eq!(get(&client, proxy.listen, "/").await.0, 200);
    let (_, _, config) = get(&client, proxy.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["listeners"],
        serde_json::json!([{ "address": "127.0.0.1:0" }]),
        "/config shows what runs"
    );
    assert_eq!(config["admin"]["address"], "127.0.0.1:0");
    assert_eq!(config["services"][0]["endpoints"][0], b.addr().to_string());

    // A file that differs from the running config only there: warned
    // about again, and no reload is logged ...
    std::fs::write(&proxy.config, moved(&b, "# touched\n")).unwrap();
    eventually(async || proxy.logged(&listeners_kept).len() == 2).await;
    // ... as the next real reload shows: its line is the second.
    std::fs::write(&proxy.config, moved(&c, "")).unwrap();
    traffic_moves(&client, &proxy, &b, &c).await;
    eventually(async || proxy.logged(&listeners_kept).len() == 3).await;
    eventually(async || {
        let lines = proxy.logged(&[]);
        let third_warning = lines
            .iter()
            .rposition(|l| listeners_kept.iter().all(|p| l.contains(p)));
        let last_reload = lines.iter().rposition(|l| l.contains(reloaded[0]));
        last_reload > third_warning
    })
    .await;
    assert_eq!(proxy.logged(&reloaded).len(), 2, "{:#?}", proxy.logged(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_renamed_over_the_old_one_is_picked_up() {
    let a = Backend::spawn(Behavior::new()).await.unwrap();
    let b = Backend::spawn(Behavior::new()).await.unwrap();
    let route = "[[routes]]\nservice = \"app\"\n";
    let proxy = Proxy::start(&(service("app", &[a.addr()]) + route));
    let client = plain();
    ready(&client, &proxy).await;

    // A new file with the old one's modification time renamed over it: a
    // check of the modification time alone misses it (its inode and change
    // time say it changed), as it can miss a ConfigMap's symlink swap.
    let old = std::fs::metadata(&proxy.config).unwrap();
    let text = support::proxy::config_text(&(service("app", &[b.addr()]) + route));
    let tmp = proxy.config.with_extension("new");
    std::fs::write(&tmp, &text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(old.modified().unwrap())
        .unwrap();
    std::fs::rename(&tmp, &proxy.config).unwrap();
    eventually(async || {
        get(&client, proxy.listen, "/").await;
        b.requests() > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_answers_from_the_fast_endpoint_when_the_first_is_slow() {
    // One endpoint answers in 2 s, the other at once; a fixed 50 ms delay
    // and a generous budget, so every GET that lands on the slow one is
    // hedged to the fast one and answered long before 2 s. A 1 ms decay
    // forgets latencies between requests, so the balancer's choice is a
    // coin flip each time and the slow endpoint does get requests.
    let slow = Backend::spawn(Behavior::new().latency(Duration::from_secs(2)))
        .await
        .unwrap();
    let fast = Backend::spawn(Behavior::new()).await.unwrap();
    let proxy = Proxy::start(
        &(service("app", &[slow.addr(), fast.addr()])
            + "[services.balancer]\ndecay = \"1ms\"\n\
           [services.hedge]\ndelay = \"50ms\"\nbudget_ratio = 1.0\n\n\
           [[routes]]\nservice = \"app\"\n"),
    );
    let client = plain();
    ready(&client, &proxy).await;

    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        let (status, _, _) = get(&client, proxy.listen, "/").await;
        assert_eq!(status, 200);
        // Spread the requests out a little, so the estimates fade.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Twenty requests, none waiting for the slow endpoint's 2 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let (_, _, snapshot) = get(&client, proxy.admin, "/snapshot").await;
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    let hedge = &snapshot["services"][0]["hedges"];
    assert!(hedge["sent"].as_u64().unwrap() >= 1, "{snapshot}");
    assert_eq!(
        hedge["sent"], hedge["won"],
        "every backup beat the slow endpoint: {hedge}"
    );
    assert_eq!(hedge["delay_ms"], 50.0);
    assert!(slow.requests() >= 1, "the slow endpoint was tried");
}

#[cfg(feature = "dns")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_moves_traffic_when_the_zone_changes() {
    use support::dns::{DnsServer, Zone};

    let a = Backend::spawn(Behavior::new()).await.unwrap();
    let b = Backend::spawn(Behavior::new()).await.unwrap();
    // A real DNS server on 127.0.0.1: SRV for the service, pointing at a's
    // port; the target resolves to 127.0.0.1.
    let zone = Zone::new();
    zone.a("host.app.test");
    zone.srv(
        "_http._tcp.app.test",
        &[(0, 1, a.addr().port(), "host.app.test")],
    );
    let server = DnsServer::start(&zone).await;
    let proxy = Proxy::start(&format!(
        "[[services]]\nname = \"app\"\n\
         discovery = {{ dns = \"_http._tcp.app.test\", nameservers = [\"{}\"], \
         refresh_min = \"100ms\", refresh_max = \"1s\", query_timeout = \"200ms\" }}\n\n\
         [[routes]]\nservice = \"app\"\n",
        server.addr
    ));
    let client = plain();
    ready(&client, &proxy).await;
    assert_eq!(get(&client, proxy.listen, "/").await.0, 200);
    assert_eq!(a.requests(), 1);

    // The zone changes, the config does not: traffic moves to b.
    zone.srv(
        "_http._tcp.app.test",
        &[(0, 1, b.addr().port(), "host.app.test")],
    );
    traffic_moves(&client, &proxy, &a, &b).await;

    let (_, _, snapshot) = get(&client, proxy.admin, "/snapshot").await;
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    let app = &snapshot["services"][0];
    assert_eq!(app["discovery"]["kind"], "dns", "{app}");
    assert_eq!(
        app["endpoints"][0]["address"],
        b.addr().to_string(),
        "{app}"
    );
    assert_eq!(
        app["endpoints"][0]["labels"]["srv_target"], "host.app.test",
        "{app}"
    );
}

/// A server that behaves as gRPC servers do: h2c only, it refuses a request
/// without `te: trailers` (grpc-go and tonic answer such a request with an
/// error), and puts `grpc-status` in the trailers.
async fn grpc_like_backend() -> SocketAddr {
    serve_raw(|stream| async move {
        let service =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let te = req.headers().get("te").is_some_and(|v| v == "trailers");
                let mut trailers = http::HeaderMap::new();
                let code = if te { "0" } else { "13" };
                trailers.insert("grpc-status", http::HeaderValue::from_static(code));
                let frames = vec![
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                        bytes::Bytes::from_static(b"\0\0\0\0\0"),
                    )),
                    Ok(hyper::body::Frame::trailers(trailers)),
                ];
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                let rsp = http::Response::builder()
                    .status(if te { 200 } else { 400 })
                    .header("content-type", "application/grpc")
                    .body(body)
                    .unwrap();
                Ok::<_, std::convert::Infallible>(rsp)
            });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// A gRPC call through the proxy reaches a gRPC server: `te: trailers` is
/// forwarded (gRPC servers refuse a request without it) and the
/// `grpc-status` trailer comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_keeps_te_trailers_and_gets_its_trailers_back() {
    use http_body_util::BodyExt;
    let backend = grpc_like_backend().await;
    let body = format!(
        "[[services]]\nname = \"grpc\"\nprotocol = \"h2c\"\nendpoints = [\"{backend}\"]\n\n[[routes]]\nservice = \"grpc\"\n"
    );
    let proxy = Proxy::start(&body);
    ready(&plain(), &proxy).await;
    let h2: Plain = HttpClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::post(format!("http://{}/echo.Echo/Say", proxy.listen))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let rsp = h2.request(req).await.unwrap();
    assert_eq!(rsp.status(), 200, "the server saw no `te: trailers`");
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().expect("trailers came back");
    assert_eq!(trailers["grpc-status"], "0");
}

/// The proxy's own errors on a gRPC call are Trailers-Only gRPC answers
/// (`200`, `grpc-status`, `grpc-message`), which a gRPC client reads as the
/// right code, not an HTTP 502 it would turn into a vague UNKNOWN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_gets_the_proxys_own_errors_as_grpc_statuses() {
    // An address nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let body = format!(
        "[[services]]\nname = \"grpc\"\nprotocol = \"h2c\"\nendpoints = [\"{dead}\"]\n\n[[routes]]\nservice = \"grpc\"\n"
    );
    let proxy = Proxy::start(&body);
    ready(&plain(), &proxy).await;
    let h2: Plain = HttpClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let send = |content_type: &'static str| {
        let req = http::Request::post(format!("http://{}/echo.Echo/Say", proxy.listen))
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        h2.request(req)
    };
    let rsp = send("application/grpc").await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "application/grpc");
    assert_eq!(rsp.headers()["grpc-status"], "14", "UNAVAILABLE");
    assert_eq!(rsp.headers()["x-palisade-error"], "upstream-error");
    let message = rsp.headers()["grpc-message"].to_str().unwrap();
    assert!(message.contains("grpc"), "names the service: {message}");
    assert!(
        !message.contains(&dead.to_string()),
        "shows an endpoint: {message}"
    );

    // The same failure, asked in plain HTTP, is an HTTP status, whose body
    // names the service, not the endpoint or the connection error.
    let rsp = send("application/json").await.unwrap();
    assert_eq!(rsp.status(), 502);
    assert!(!rsp.headers().contains_key("grpc-status"));
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("service \"grpc\""), "{body}");
    assert!(
        !body.contains(&dead.to_string()),
        "shows an endpoint: {body}"
    );
    assert!(!body.contains("refused"), "shows the inner error: {body}");
}
