//! The hostile-client suite: `palisade proxy` (the real binary) attacked
//! the way an internet-facing sidecar is, with raw sockets and HTTP/1 and
//! HTTP/2 clients, all on 127.0.0.1. Each test names the attack and checks
//! what the proxy does now; docs/reliability.md has the table.
//!
//! In order: upstream resources a client must not exhaust or hold; the
//! listeners' and the admin listener's limits against clients that hold,
//! drip or probe; idle h2c connections; what `/config` and error answers
//! show; one Host; header counts; descriptors and connection caps; config
//! files that are not files. The caller-fault attacks (aborted uploads,
//! bad chunked bodies) are in `blame.rs`, beside the library's own.

#![cfg(all(feature = "cli", unix))]

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use palisade::demo::{Backend, Behavior};
use support::backends::{Answer, backend};
use support::proxy::{
    Plain, Proxy, closed, config_path, config_with_server, eventually, get, head, metric, plain,
    raw, ready, refused_at_once, serve_raw, service, status_of,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Ten HTTP/2 clients with 60 streams each, against a backend that holds
/// every request 300 ms: the proxy used to open one upstream HTTP/1.1
/// connection per stream. With the defaults, at most 256 requests are
/// outstanding at the endpoint (so at most 256 busy connections, besides
/// the pools' idle ones), the rest wait for a slot, and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_h2_streams_get_bounded_upstream_connections() {
    let (addr, conns) = backend(false, Answer::After(Duration::from_millis(300))).await;
    let proxy = Proxy::start_with(&config_with_server(
        &(service("app", &[addr]) + "[[routes]]\nservice = \"app\"\n"),
        "threads = 2",
    ));
    ready(&plain(), &proxy).await;
    let statuses = join_all((0..10).map(|_| {
        // One client, one h2 connection, 60 streams.
        let h2: Plain = HttpClient::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let listen = proxy.listen;
        async move {
            join_all((0..60).map(|_| {
                let h2 = h2.clone();
                async move { get(&h2, listen, "/").await.0 }
            }))
            .await
        }
    }))
    .await;
    let statuses: Vec<u16> = statuses.into_iter().flatten().collect();
    assert_eq!(statuses.len(), 600);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let busy = conns.max_requests.load(Ordering::SeqCst);
    let open = conns.max.load(Ordering::SeqCst);
    assert!(
        busy <= 256,
        "at most 256 requests at the backend at once, saw {busy}"
    );
    assert!(busy >= 200, "the cap bounded them, not the clients: {busy}");
    // Each of the 2 serving threads has its own pool: a connection on its
    // way back to one thread's pool can race a new request on the other,
    // so the bound is the busy cap plus the idle allowance per thread.
    assert!(open <= 256 + 64 * 2, "busy plus idle connections: {open}");
}

/// A backend that sends its head and part of its body, then nothing: the
/// proxy used to hold the client for ever (120 s and counting). Now the
/// body is cut after `body_idle_timeout` (here 500 ms; 60 s by default),
/// the client sees the response end short of its `content-length`, and the
/// endpoint is charged a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_cut_and_the_client_sees_the_truncation() {
    let (addr, _) = backend(false, Answer::Stall).await;
    let proxy = Proxy::start(
        &(service("app", &[addr])
            + "deadline = { body_idle_timeout = \"500ms\" }\n\n[[routes]]\nservice = \"app\"\n"),
    );
    let client = plain();
    ready(&client, &proxy).await;
    let req = http::Request::get(format!("http://{}/", proxy.listen))
        .body(Full::<Bytes>::default())
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(10), rsp.into_body().collect())
        .await
        .expect("the stalled body was cut, not held");
    assert!(read.is_err(), "the client sees a truncated body");
    let endpoint = format!(r#"client="app",endpoint="{addr}""#);
    let failures = format!("palisade_endpoint_failures_total{{{endpoint}}}");
    assert_eq!(metric(&client, &proxy, &failures).await, 1);
}

/// A client asking for a five-minute deadline in a header used to get it
/// (the 5 min `max_timeout`), holding a connection and an endpoint's slot
/// that long. Now a header can only shorten the service's 15 s timeout:
/// the next hop is told at most 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_header_cannot_stretch_the_services_timeout() {
    let (addr, _) = backend(false, Answer::After(Duration::ZERO)).await;
    let proxy = Proxy::start(&(service("app", &[addr]) + "[[routes]]\nservice = \"app\"\n"));
    let client = plain();
    ready(&client, &proxy).await;
    for (asked, most) in [("300000", 15_000), ("2000", 2_000)] {
        let req = http::Request::get(format!("http://{}/", proxy.listen))
            .header("palisade-deadline-ms", asked)
            .body(Full::<Bytes>::default())
            .unwrap();
        let rsp = client.request(req).await.unwrap();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let next_hop: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
        assert!(
            (most - 1_000..=most).contains(&next_hop),
            "asked {asked} ms, the next hop was told {next_hop} ms"
        );
    }
}

/// The proxy over one demo backend behaving as `behavior`, with the lines
/// `server` added to its `[server]` table.
async fn proxy_over(behavior: Behavior, server: &str) -> (Backend, Proxy) {
    let backend = Backend::spawn(behavior).await.unwrap();
    let body = service("app", &[backend.addr()]) + "[[routes]]\nservice = \"app\"\n";
    let proxy = Proxy::start_with(&config_with_server(&body, server));
    (backend, proxy)
}

/// The admin listener has the listeners' request-head limits and timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_the_listeners_timeouts_and_head_limits() {
    let (_backend, proxy) = proxy_over(Behavior::new(), "header_read_timeout = \"500ms\"").await;
    ready(&plain(), &proxy).await;

    // A head of exactly `max_header_bytes` is read (and not found); one
    // more byte is 431.
    assert_eq!(raw(proxy.admin, &head(8192)).await, 404);
    assert_eq!(raw(proxy.admin, &head(8193)).await, 431);

    let silent = TcpStream::connect(proxy.admin).await.unwrap();
    let mut drip = TcpStream::connect(proxy.admin).await.unwrap();
    drip.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n")
        .await
        .unwrap();
    let (silent, drip) = tokio::join!(closed(silent), closed(drip));
    assert!(silent, "an admin connection that sent nothing stayed open");
    assert!(drip, "an admin connection with half a head stayed open");
}

/// A GET on a connection of its own (closed after the answer), so that no
/// pooled connection holds a place: the answer's text, or `None` when the
/// connection was closed without one.
async fn get_alone(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.starts_with("HTTP/1.1 ").then_some(answer)
}

/// The value of a `series` in Prometheus text.
fn series(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The admin listener is capped by `server.max_connections` too, counted
/// apart from the proxy's listeners: neither can lock the other out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_capped_apart_from_the_listeners() {
    let (_backend, proxy) = proxy_over(Behavior::new(), "max_connections = 3").await;

    // Three admin connections that send nothing hold every admin place.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(proxy.admin).await.unwrap());
    }
    // Connections are accepted in order: a fourth is closed at once,
    // whatever it asks.
    refused_at_once(proxy.admin, b"GET /live HTTP/1.1\r\nHost: admin\r\n\r\n").await;

    // The proxy's listener still serves: its places are its own.
    eventually(async || {
        let answer = get_alone(proxy.listen, "/").await.unwrap_or_default();
        answer.starts_with("HTTP/1.1 200")
    })
    .await;

    // A freed admin place is taken again, and the refusal was counted.
    drop(held.pop());
    eventually(async || {
        let metrics = get_alone(proxy.admin, "/metrics").await.unwrap_or_default();
        series(&metrics, "palisade_proxy_admin_connections_refused_total") >= Some(1)
    })
    .await;

    // And the other way round: the listener full, the admin still answers.
    drop(held);
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(TcpStream::connect(proxy.listen).await.unwrap());
    }
    eventually(async || {
        let metrics = get_alone(proxy.admin, "/metrics").await.unwrap_or_default();
        series(&metrics, "palisade_proxy_connections") == Some(3)
    })
    .await;
    let live = get_alone(proxy.admin, "/live").await.unwrap_or_default();
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
}

/// GETs `/` on an h2c connection and reads the answer to its end: the
/// status, or the h2 error that stopped it (a GOAWAY, a closed
/// connection).
async fn h2c_get(
    h2: h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
) -> Result<u16, h2::Error> {
    let mut h2 = h2.ready().await?;
    let req = http::Request::get(format!("http://{addr}/"))
        .body(())
        .unwrap();
    let (rsp, _) = h2.send_request(req, true)?;
    let rsp = rsp.await?;
    let status = rsp.status().as_u16();
    let mut body = rsp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
    }
    Ok(status)
}

/// `server.idle_timeout`: an h2c connection with no open stream for that
/// long is closed (GOAWAY), but a request in flight for far longer keeps
/// it open, and it can still be used as soon as that request is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2c_connection_is_closed_but_not_while_a_request_is_in_flight() {
    let slow = Behavior::new().latency(Duration::from_secs(3));
    let (backend, proxy) = proxy_over(slow, "idle_timeout = \"1s\"").await;
    ready(&plain(), &proxy).await;

    let tcp = TcpStream::connect(proxy.listen).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    // Three times the idle timeout in flight.
    assert_eq!(h2c_get(h2.clone(), proxy.listen).await.unwrap(), 200);
    assert!(
        !conn.is_finished(),
        "the connection was closed while a request was in flight"
    );
    // At once, a second request on the same connection: no GOAWAY came.
    assert_eq!(h2c_get(h2.clone(), proxy.listen).await.unwrap(), 200);
    assert_eq!(backend.requests(), 2);

    // Then idle: the proxy closes it (the client answers its pings, so
    // nothing else would).
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "an idle h2c connection stayed open");
}

/// `/config` shows header-match values and endpoint labels as
/// `"<redacted>"`, keeping their keys and everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_redacts_header_match_values_and_endpoint_labels() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let body = format!(
        "[[services]]\nname = \"app\"\n\
         endpoints = [{{ address = \"{}\", labels = {{ zone = \"vault-zone-7\" }} }}]\n\n\
         [[routes]]\nmatch = {{ headers = {{ authorization = \"Bearer s3cr3t-token\" }} }}\n\
         service = \"app\"\n",
        backend.addr()
    );
    let proxy = Proxy::start(&body);
    let client = plain();
    ready(&client, &proxy).await;
    let (status, _, text) = get(&client, proxy.admin, "/config").await;
    assert_eq!(status, 200);
    assert!(!text.contains("s3cr3t-token"), "{text}");
    assert!(!text.contains("vault-zone-7"), "{text}");
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let route = &config["routes"][0];
    assert_eq!(route["match"]["headers"]["authorization"], "<redacted>");
    assert_eq!(route["service"], "app");
    let endpoint = &config["services"][0]["endpoints"][0];
    assert_eq!(endpoint["labels"]["zone"], "<redacted>");
    assert_eq!(endpoint["address"], backend.addr().to_string());
    assert_eq!(config["services"][0]["retry"]["max_attempts"], 3);
}

/// `server.verbose_errors = true` puts the whole error, the endpoint and
/// the connection error included, in the proxy's own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_errors_show_the_whole_error() {
    // An address nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let body = service("app", &[dead]) + "[[routes]]\nservice = \"app\"\n";
    let proxy = Proxy::start_with(&config_with_server(&body, "verbose_errors = true"));
    let client = plain();
    ready(&client, &proxy).await;
    let (status, headers, text) = get(&client, proxy.listen, "/").await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(headers["x-palisade-error"], "upstream-error");
    assert!(text.contains(&dead.to_string()), "{text}");
    assert!(text.contains("refused"), "{text}");
}

/// A backend that answers every request with `101 Switching Protocols`,
/// which nobody asked for.
async fn upgrading_backend() -> SocketAddr {
    serve_raw(|mut stream| async move {
        let mut buf = vec![0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\n",
            )
            .await;
    })
    .await
}

/// One Host: the request is routed by the host the backend is asked for;
/// what cannot be made one request is refused before routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_forwarding_agree_on_one_host() {
    let internal = Backend::spawn(Behavior::new()).await.unwrap();
    let public = Backend::spawn(Behavior::new()).await.unwrap();
    let upgrading = upgrading_backend().await;
    let body = service("internal", &[internal.addr()])
        + &service("upgrading", &[upgrading])
        + &service("public", &[public.addr()])
        + "[[routes]]\nmatch = { host = \"internal.example\" }\nservice = \"internal\"\n\n\
           [[routes]]\nmatch = { host = \"up.example\" }\nservice = \"upgrading\"\n\n\
           [[routes]]\nservice = \"public\"\n";
    let proxy = Proxy::start(&body);
    ready(&plain(), &proxy).await;
    let send = |bytes: &'static [u8]| raw(proxy.listen, bytes);

    // An absolute-form target beside another Host: routed by the target,
    // and the backend is asked for the target's host too.
    let absolute = b"GET http://internal.example/x HTTP/1.1\r\nHost: www.example\r\n\r\n";
    assert_eq!(send(absolute).await, 200);
    let seen = internal
        .last_request()
        .expect("reached the internal backend");
    assert_eq!(seen.headers["host"], "internal.example");
    assert_eq!(public.requests(), 0);

    // Two Host headers, a non-http target, CONNECT: refused, not routed.
    let two = b"GET / HTTP/1.1\r\nHost: www.example\r\nHost: internal.example\r\n\r\n";
    assert_eq!(send(two).await, 400);
    let https = b"GET https://internal.example/ HTTP/1.1\r\nHost: internal.example\r\n\r\n";
    assert_eq!(send(https).await, 400);
    let connect = b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n";
    assert_eq!(send(connect).await, 501);
    assert_eq!(internal.requests(), 1, "none of them reached a backend");

    // `Connection` cannot name `Host` away; one that cannot be read is a 400.
    let named_host =
        b"GET / HTTP/1.1\r\nHost: www.example\r\nConnection: Host, X-Gone\r\nX-Gone: 1\r\n\r\n";
    assert_eq!(send(named_host).await, 200);
    let seen = public.last_request().expect("reached the public backend");
    assert_eq!(seen.headers["host"], "www.example");
    assert!(!seen.headers.contains_key("x-gone"));
    let unreadable = b"GET / HTTP/1.1\r\nHost: www.example\r\nConnection: x, \xe9t\xe9\r\n\r\n";
    assert_eq!(send(unreadable).await, 400);

    // A 101 nobody asked for is the backend's error.
    let upgrade = b"GET / HTTP/1.1\r\nHost: up.example\r\n\r\n";
    assert_eq!(send(upgrade).await, 502);
}

/// A request head of `n` header fields (`Host` and `n - 1` others).
fn fields(n: usize) -> Vec<u8> {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 1..n {
        head += &format!("X-H{i}: 1\r\n");
    }
    head += "\r\n";
    head.into_bytes()
}

/// A backend that takes any head (it does not parse the headers, so it
/// has no header limit of its own), counts it, and answers 200.
async fn any_head_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let heads = Arc::new(AtomicUsize::new(0));
    let counted = heads.clone();
    let addr = serve_raw(move |mut stream| {
        let heads = counted.clone();
        async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let Ok(n) = stream.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
                while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    seen.drain(..end + 4);
                    heads.fetch_add(1, Ordering::SeqCst);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    (addr, heads)
}

/// `server.max_headers`: 100 header fields by default, more are a 431
/// from the proxy itself (the backend never sees them); a reload raises it
/// for new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_headers_is_the_most_header_fields_accepted() {
    let (backend, heads) = any_head_backend().await;
    let body = service("app", &[backend]) + "[[routes]]\nservice = \"app\"\n";
    let proxy = Proxy::start(&body);
    ready(&plain(), &proxy).await;
    assert_eq!(raw(proxy.listen, &fields(100)).await, 200);
    let reached = heads.load(Ordering::SeqCst);
    assert_eq!(raw(proxy.listen, &fields(101)).await, 431);
    assert_eq!(
        heads.load(Ordering::SeqCst),
        reached,
        "refused by the proxy itself"
    );

    let text = support::proxy::config_text(&body);
    std::fs::write(
        &proxy.config,
        text.replace(
            "max_header_bytes = 8192",
            "max_header_bytes = 8192\nmax_headers = 150",
        ),
    )
    .unwrap();
    eventually(async || raw(proxy.listen, &fields(150)).await == 200).await;
    assert_eq!(raw(proxy.listen, &fields(151)).await, 431);
}

/// A backend that answers with the request body it received.
async fn echo_body_backend() -> SocketAddr {
    serve_raw(|stream| async move {
        let service =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                use http_body_util::BodyExt;
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(http::Response::new(Full::new(body)))
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// A GET's chunked body reaches the backend (hyper's client would drop a
/// GET body of unknown length unless told to send it chunked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gets_chunked_body_is_forwarded() {
    let backend = echo_body_backend().await;
    let body = service("app", &[backend]) + "[[routes]]\nservice = \"app\"\n";
    let proxy = Proxy::start(&body);
    ready(&plain(), &proxy).await;
    let mut stream = TcpStream::connect(proxy.listen).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello world"), "{answer}");
}

/// The soft descriptor limit is raised to the hard one at startup, and
/// `server.max_connections` caps the client connections: one more is
/// closed at once and counted, and a place freed is taken again.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_are_raised_and_client_connections_capped() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let text = support::proxy::config_text(
        &(service("app", &[backend.addr()]) + "[[routes]]\nservice = \"app\"\n"),
    )
    .replace(
        "max_header_bytes = 8192",
        "max_header_bytes = 8192\nmax_connections = 3",
    );
    let proxy = Proxy::start_with_soft_nofile(&text, 512);
    let client = plain();
    ready(&client, &proxy).await;

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft raised to hard: {line}");

    let metrics = async || get(&client, proxy.admin, "/metrics").await.2;
    // Three connections that send nothing hold their places.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(proxy.listen).await.unwrap());
    }
    eventually(async || metrics().await.contains("palisade_proxy_connections 3")).await;

    // A fourth is closed at once, whatever it sends.
    refused_at_once(proxy.listen, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let text = metrics().await;
    assert!(
        text.contains("palisade_proxy_connections_refused_total 1"),
        "{text}"
    );

    // A place freed is taken again.
    drop(held.pop());
    eventually(async || {
        let mut s = TcpStream::connect(proxy.listen).await.unwrap();
        let get = b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
        let _ = s.write_all(get).await;
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        answer.starts_with(b"HTTP/1.1 200")
    })
    .await;
}

/// `palisade check` and `palisade proxy` read the config as reloads do: a
/// regular file of at most 4 MiB. A FIFO (which would hang a read) and
/// `/dev/zero` (which would never end) are refused at once, by name.
#[cfg(unix)]
#[test]
fn config_files_must_be_regular_and_bounded() {
    let fifo = config_path().with_extension("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let big = config_path();
    std::fs::write(&big, vec![b'#'; (4 << 20) + 1]).unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A hang would be the bug: give it 10 s, then fail.
        for _ in 0..100 {
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                return (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned()
                        + &String::from_utf8_lossy(&out.stderr),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("palisade {args:?} hung");
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    for path in [fifo.as_os_str(), os("/dev/zero")] {
        let (code, out) = run(&[os("check"), path]);
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains("not a regular file"), "{out}");
        let (code, out) = run(&[os("proxy"), os("--config"), path]);
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains("not a regular file"), "{out}");
    }
    let (code, out) = run(&[os("check"), big.as_os_str()]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("larger than the limit of 4194304 bytes"),
        "{out}"
    );
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&big);
}

/// `server.header_read_timeout`: a connection that sends nothing, one that
/// stops in the middle of its head, and one kept alive and idle after a
/// response are all closed once it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_closes_silent_slow_and_idle_connections() {
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let text = support::proxy::config_text(
        &(service("app", &[backend.addr()]) + "[[routes]]\nservice = \"app\"\n"),
    )
    .replace(
        "max_header_bytes = 8192",
        "max_header_bytes = 8192\nheader_read_timeout = \"500ms\"",
    );
    let proxy = Proxy::start_with(&text);
    ready(&plain(), &proxy).await;

    let silent = TcpStream::connect(proxy.listen).await.unwrap();
    let mut slow = TcpStream::connect(proxy.listen).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(proxy.listen).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&mut idle).await, 200);
    let (silent, slow, idle) = tokio::join!(closed(silent), closed(slow), closed(idle));
    assert!(silent, "a connection that sent nothing stayed open");
    assert!(slow, "a connection with half a head stayed open");
    assert!(idle, "an idle kept-alive connection stayed open");
}
