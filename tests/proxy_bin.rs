//! `palisade proxy` end to end: the real binary, real backends, all on
//! 127.0.0.1.

#![cfg(all(feature = "cli", unix))]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::demo::{Backend, Behavior};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A running `palisade proxy` process; killed when dropped.
struct Proxy {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn config_path() -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("palisade-test-{}-{n}.toml", std::process::id()))
}

/// A config with listener and admin on free ports, a fast file watch, and
/// `body` appended (services and routes).
fn config_text(body: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [server]\nwatch_interval = \"100ms\"\ngrace_period = \"5s\"\nmax_header_bytes = 8192\n\n{body}"
    )
}

fn service(name: &str, backends: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[services]]\nname = \"{name}\"\nendpoints = [{}]\n\n",
        endpoints.join(", ")
    )
}

impl Proxy {
    fn start(body: &str) -> Proxy {
        let config = config_path();
        std::fs::write(&config, config_text(body)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["proxy", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start palisade");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "palisade proxy: listening on 127.0.0.1:X (admin 127.0.0.1:Y)"
        let listen = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        let admin = line
            .split("(admin ")
            .nth(1)
            .and_then(|r| r.strip_suffix(")\n"))
            .unwrap()
            .parse()
            .unwrap();
        Proxy {
            child,
            listen,
            admin,
            config,
        }
    }

    fn rewrite(&self, body: &str) {
        std::fs::write(&self.config, config_text(body)).unwrap();
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

type Plain = HttpClient<HttpConnector, Full<Bytes>>;

fn plain() -> Plain {
    HttpClient::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &Plain, addr: SocketAddr, path: &str) -> (u16, http::HeaderMap, String) {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    let rsp = client.request(req).await.expect("request");
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 10 s");
}

async fn ready(client: &Plain, proxy: &Proxy) {
    eventually(async || get(client, proxy.admin, "/ready").await.0 == 200).await;
}

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

/// Sends raw bytes and returns the status code of the response.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{head:?}"))
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
    let (a, b, c) = (
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
        Backend::spawn(Behavior::new()).await.unwrap(),
    );
    let body = service("a", &[a.addr()])
        + &service("b", &[b.addr()])
        + &service("c", &[c.addr()])
        + "[[routes]]\nmatch = { headers = { \"x-canary\" = \"1\" } }\nservice = \"c\"\n\n\
           [[routes]]\nmatch = { path_prefix = \"/b\" }\nservice = \"b\"\n\n\
           [[routes]]\nsplit = [{ service = \"a\", weight = 3 }, { service = \"b\", weight = 1 }]\n";
    let proxy = Proxy::start(&body);
    let client = plain();
    ready(&client, &proxy).await;

    let req = http::Request::get(format!("http://{}/x", proxy.listen))
        .header("x-canary", "1")
        .body(Full::default())
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200);
    assert_eq!(c.requests(), 1, "header route");
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
    let body = format!(
        "[[services]]\nname = \"app\"\nprotocol = \"h2c\"\nendpoints = [\"{}\"]\n\n[[routes]]\nservice = \"app\"\n",
        backend.addr()
    );
    let proxy = Proxy::start(&body);
    let client = plain();
    ready(&client, &proxy).await;
    for _ in 0..5 {
        assert_eq!(get(&client, proxy.listen, "/").await.0, 200);
    }
    let seen = backend.last_request().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(backend.requests(), 5);
}
