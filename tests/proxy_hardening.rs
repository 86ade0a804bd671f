//! The proxy binary's listeners against clients that hold, drip or probe:
//! the admin listener's limits, idle h2c connections, what `/config` and
//! error answers show. Real sockets on 127.0.0.1; small timeouts set in
//! the config, never an assertion on speed.

#![cfg(all(feature = "cli", unix))]

mod support;

use std::time::Duration;

use palisade::demo::{Backend, Behavior};
use support::proxy::{
    Proxy, closed, config_with_server, eventually, get, head, plain, raw, ready, refused_at_once,
    service,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
