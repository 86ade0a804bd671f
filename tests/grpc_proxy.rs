//! gRPC through the `palisade proxy` binary: a standard tonic client (its
//! own `Channel`, no palisade inside) calls real tonic servers behind an
//! h2c service. Unary and server-streaming calls flow; UNAVAILABLE is
//! retried on another server; a failure in the trailers after data reaches
//! the caller intact and is not retried; the proxy's own errors arrive as
//! gRPC statuses naming the reason.

#![cfg(all(feature = "tonic", feature = "cli", unix))]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::grpc::{Fault, GreeterClient, GrpcServer, hello, refused_addr};
use support::proxy::Proxy;
use tonic::Code;
use tonic::transport::Channel;

/// The proxy in front of `backends`, as one h2c service; `extra` is added
/// to the service's table.
async fn proxy(backends: &[SocketAddr], extra: &str) -> (Proxy, GreeterClient<Channel>) {
    let endpoints: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let body = format!(
        "[[services]]\nname = \"greeter\"\nprotocol = \"h2c\"\nendpoints = [{}]\n{extra}\n\n[[routes]]\nservice = \"greeter\"\n",
        endpoints.join(", ")
    );
    let proxy = Proxy::start(&body);
    let channel = Channel::from_shared(format!("http://{}", proxy.listen))
        .unwrap()
        .connect()
        .await
        .expect("connect to the proxy");
    (proxy, GreeterClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_flow_and_unavailable_is_retried() {
    let servers = GrpcServer::fleet(2).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(GrpcServer::addr).collect();
    // Random choice: calls one after another would otherwise stay with
    // whichever server answered first.
    let (_proxy, mut greeter) = proxy(&addrs, "balancer = { choice = \"random\" }").await;

    let mut by_server = HashMap::<String, usize>::new();
    for i in 0..40 {
        let name = format!("u{i}");
        let reply = greeter
            .say_hello(hello(name.as_str(), 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.message, format!("hello {name}"));
        *by_server.entry(reply.server).or_default() += 1;
    }
    assert_eq!(by_server.len(), 2, "both servers answered: {by_server:?}");
    for _ in 0..10 {
        let (seqs, end) = greeter.many(4).await;
        assert_eq!(seqs, [0, 1, 2, 3]);
        assert!(end.is_none(), "{end:?}");
    }

    // One server answers UNAVAILABLE (Trailers-Only): every call succeeds
    // on the other.
    servers[0].set(Fault::Unavailable);
    let before = (servers[0].calls(), servers[1].calls());
    for i in 0..40 {
        let name = format!("r{i}");
        let reply = greeter
            .say_hello(hello(name.as_str(), 0))
            .await
            .unwrap_or_else(|s| panic!("{name} was not retried: {s}"))
            .into_inner();
        assert_eq!(reply.server, addrs[1].to_string());
    }
    assert!(
        servers[0].calls() > before.0,
        "the UNAVAILABLE server was never tried"
    );
    assert_eq!(servers[1].calls() - before.1, 40, "each call answered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_trailers_reaches_the_caller_and_is_not_retried() {
    let server = GrpcServer::spawn().await;
    server.set(Fault::FailAfter {
        messages: 2,
        code: Code::Internal,
    });
    let (_proxy, mut greeter) = proxy(&[server.addr()], "").await;
    let (seqs, end) = greeter.many(5).await;
    assert_eq!(seqs, [0, 1]);
    assert_eq!(end.map(|s| s.code()), Some(Code::Internal));
    assert_eq!(server.calls(), 1, "committed: never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_errors_are_grpc_statuses() {
    // Nothing listens: UNAVAILABLE, naming the reason.
    let refused = refused_addr().await;
    let (_proxy, mut greeter) = proxy(&[refused], "").await;
    let status = greeter.say_hello(hello("x", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    assert!(status.message().contains("greeter"), "{status}");
    assert_eq!(
        status.metadata().get("x-palisade-error").unwrap(),
        "upstream-error"
    );

    // The proxy's deadline (not propagated, so the server cannot answer
    // first): DEADLINE_EXCEEDED.
    let slow = GrpcServer::spawn().await;
    slow.set(Fault::Slow(Duration::from_secs(5)));
    let (_proxy, mut greeter) = proxy(
        &[slow.addr()],
        "deadline = { timeout = \"200ms\", propagate = false }",
    )
    .await;
    let status = greeter.say_hello(hello("x", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert_eq!(
        status.metadata().get("x-palisade-error").unwrap(),
        "deadline-exceeded"
    );
}

/// Both directions stream at once through the proxy: each message gets its
/// reply before the next is sent, so nothing waits for a request's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_flows_both_ways_at_once() {
    let server = GrpcServer::spawn().await;
    let (_proxy, mut greeter) = proxy(&[server.addr()], "").await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let requests =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|ask| (ask, rx)) },
        );
    let mut replies = greeter.chat(requests).await.unwrap().into_inner();
    for i in 0..20u32 {
        tx.send(hello(format!("m{i}"), 0)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .unwrap_or_else(|_| panic!("no reply to m{i} while the request stream is open"))
            .unwrap()
            .expect("a reply");
        assert_eq!((reply.message, reply.seq), (format!("hello m{i}"), i));
    }
    drop(tx);
    assert!(
        replies.message().await.unwrap().is_none(),
        "ends with the requests"
    );
}

/// A caller that stops reading holds the server back: the proxy buffers
/// only what HTTP/2 flow control lets through, not the whole stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_a_fast_stream_back() {
    let server = GrpcServer::spawn().await;
    let (_proxy, mut greeter) = proxy(&[server.addr()], "").await;
    // 100 000 replies of about 1 KiB: 100 MiB if nothing held them back.
    let name = "x".repeat(1000);
    let mut replies = greeter
        .say_many(hello(name, 100_000))
        .await
        .unwrap()
        .into_inner();
    replies.message().await.unwrap().expect("the first reply");
    // Give the server time to run ahead, were it allowed to.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let produced = server.produced();
    eprintln!("{produced} replies produced while the caller read one");
    assert!(
        produced < 30_000,
        "{produced} of 100 000 replies produced while the caller read one"
    );
    // Reading on releases it.
    for _ in 0..1_000 {
        replies.message().await.unwrap().expect("a reply");
    }
    assert!(server.produced() > produced.min(1_001));
}
