//! A palisade client as the channel of a real tonic client, against real
//! tonic servers on 127.0.0.1 (the hand-written `Greeter` of
//! `support/grpc.rs`). Assertions about load are shares with wide margins,
//! never absolute times.

#![cfg(all(feature = "tonic", feature = "demo"))]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use palisade::Grpc;
use palisade::balance::Choice;
use palisade::deadline::DeadlineSettings;
use palisade::limit::ConcurrencySettings;
use support::grpc::{Fault, GreeterClient, GrpcServer, builder, hello, ready, refused_addr};
use tonic::{Code, Status};

/// The palisade error tonic kept as the status's source.
fn palisade_error(status: &Status) -> &palisade::Error {
    std::error::Error::source(status)
        .and_then(|s| s.downcast_ref::<palisade::Error>())
        .unwrap_or_else(|| panic!("no palisade error behind {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_succeed_and_spread_over_the_fleet() {
    let servers = GrpcServer::fleet(3).await;
    let channel = ready(builder(servers.iter().map(GrpcServer::addr)), 3).await;

    // Unary: 150 calls from 6 concurrent callers (spawned: the calls are Send).
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let mut greeter = GreeterClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut by_server = HashMap::<String, usize>::new();
            for i in 0..25 {
                let name = format!("w{worker}-{i}");
                let reply = greeter
                    .say_hello(hello(name.clone(), 0))
                    .await
                    .unwrap_or_else(|s| panic!("{name}: {s}"))
                    .into_inner();
                assert_eq!(reply.message, format!("hello {name}"));
                *by_server.entry(reply.server).or_default() += 1;
            }
            by_server
        }));
    }
    let mut unary = HashMap::<String, usize>::new();
    for task in tasks {
        for (server, n) in task.await.unwrap() {
            *unary.entry(server).or_default() += n;
        }
    }
    for server in &servers {
        let n = unary.get(&server.addr().to_string()).copied().unwrap_or(0);
        assert!(n >= 15, "{} answered {n} of 150: {unary:?}", server.addr());
        assert_eq!(server.calls(), n as u64, "no call was sent twice");
    }

    // Server streaming: 60 calls of 4 replies each, 3 at a time; each
    // stream comes whole, in order, from one server.
    let mut tasks = Vec::new();
    for worker in 0..3 {
        let mut greeter = GreeterClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut by_server = HashMap::<String, usize>::new();
            for i in 0..20 {
                let name = format!("s{worker}-{i}");
                let mut stream = greeter
                    .say_many(hello(name.clone(), 4))
                    .await
                    .unwrap_or_else(|s| panic!("{name}: {s}"))
                    .into_inner();
                let mut replies = Vec::new();
                while let Some(reply) = stream.next().await {
                    replies.push(reply.unwrap_or_else(|s| panic!("{name}: {s}")));
                }
                let seqs: Vec<u32> = replies.iter().map(|r| r.seq).collect();
                assert_eq!(seqs, [0, 1, 2, 3], "{name}");
                assert!(replies.iter().all(|r| r.server == replies[0].server));
                assert!(replies.iter().all(|r| r.message == format!("hello {name}")));
                *by_server.entry(replies[0].server.clone()).or_default() += 1;
            }
            by_server
        }));
    }
    let mut streams = HashMap::<String, usize>::new();
    for task in tasks {
        for (server, n) in task.await.unwrap() {
            *streams.entry(server).or_default() += n;
        }
    }
    for server in &servers {
        let n = streams
            .get(&server.addr().to_string())
            .copied()
            .unwrap_or(0);
        assert!(
            n >= 3,
            "{} answered {n} of 60 streams: {streams:?}",
            server.addr()
        );
        let both = unary.get(&server.addr().to_string()).copied().unwrap_or(0) + n;
        assert_eq!(server.calls(), both as u64, "no call was sent twice");
    }
}

#[tokio::test]
async fn a_deadline_on_a_slow_server_is_deadline_exceeded() {
    let server = GrpcServer::spawn().await;
    server.set(Fault::Slow(Duration::from_secs(30)));
    // Unary calls only: the deadline bounds the wait for the response head,
    // and a server stream's head comes at once.

    // palisade's own deadline (the client's default timeout), with the
    // defaults otherwise: propagated as `grpc-timeout` less a 5 ms reserve,
    // so the tonic server gives up first and answers CANCELLED ("Timeout
    // expired"), which is the deadline's doing.
    let deadline = |timeout| DeadlineSettings {
        timeout,
        ..DeadlineSettings::default()
    };
    let channel = ready(
        builder([server.addr()]).deadline(deadline(Some(Duration::from_millis(200)))),
        1,
    )
    .await;
    let mut greeter = GreeterClient::new(channel);
    let status = greeter.say_hello(hello("late", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(palisade_error(&status).is_deadline_exceeded());

    // The caller's deadline: tonic's `set_timeout` is a `grpc-timeout`
    // header, which the deadline layer reads (no default timeout here).
    // Not propagated: palisade's deadline is the only one.
    let channel = ready(
        builder([server.addr()]).deadline(DeadlineSettings {
            propagate: false,
            ..deadline(None)
        }),
        1,
    )
    .await;
    let mut greeter = GreeterClient::new(channel);
    let mut request = tonic::Request::new(hello("late", 0));
    request.set_timeout(Duration::from_millis(200));
    let status = greeter.say_hello(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(palisade_error(&status).is_deadline_exceeded());
    assert_eq!(server.calls(), 2, "each call reached the server once");
}

#[tokio::test]
async fn no_endpoints_is_unavailable() {
    let channel = builder([])
        .endpoint_wait(Duration::from_millis(20))
        .build()
        .expect("client");
    let mut greeter = GreeterClient::new(channel);

    let status = greeter.say_hello(hello("anyone", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    assert!(palisade_error(&status).is_no_endpoints());
    let status = greeter.say_many(hello("anyone", 2)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status}");
}

#[tokio::test]
async fn a_full_concurrency_limit_is_resource_exhausted() {
    let server = GrpcServer::spawn().await;
    server.set(Fault::Slow(Duration::from_secs(30)));
    let limit = ConcurrencySettings {
        max: 1,
        queue: 0,
        ..ConcurrencySettings::default()
    };
    let channel = ready(builder([server.addr()]).concurrency_limit(limit), 1).await;

    // One call holds the only slot (until it is dropped at the end).
    let mut holder = GreeterClient::new(channel.clone());
    let held = tokio::spawn(async move { holder.say_hello(hello("first", 0)).await });
    support::eventually_within(Duration::from_secs(10), || server.calls() == 1).await;
    let mut greeter = GreeterClient::new(channel.clone());
    let status = greeter.say_hello(hello("second", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(palisade_error(&status).is_overloaded());
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_endpoint() {
    let healthy = GrpcServer::spawn().await;
    let refused = refused_addr().await;
    // One weighted random draw per attempt: the refused endpoint is drawn
    // about every other first attempt until failure accrual ejects it.
    let channel = ready(builder([refused, healthy.addr()]).choice(Choice::Random), 2).await;
    let mut greeter = GreeterClient::new(channel.clone());

    let refused_failures = |c: &Grpc| {
        c.endpoint_stats()
            .iter()
            .find(|e| e.address.to_string() == refused.to_string())
            .map_or(0, |e| e.failures)
    };
    let mut calls = 0u64;
    while refused_failures(&channel) == 0 {
        assert!(calls < 64, "64 calls never drew the refused endpoint");
        let name = format!("call-{calls}");
        let reply = greeter
            .say_hello(hello(name.clone(), 0))
            .await
            .unwrap_or_else(|s| panic!("{name} was not retried: {s}"))
            .into_inner();
        assert_eq!(reply.message, format!("hello {name}"));
        assert_eq!(reply.server, healthy.addr().to_string());
        calls += 1;
    }
    assert_eq!(
        healthy.calls(),
        calls,
        "every call reached the healthy server once"
    );
    let attempts = channel.snapshot().retries.attempts;
    assert!(
        attempts > calls,
        "{attempts} attempts for {calls} calls: no retry"
    );
}

/// The test server's faults, as the tonic client sees them through a
/// client that neither retries nor breaks (what palisade makes of them is
/// for the classification tests).
#[tokio::test]
async fn the_test_server_faults_reach_the_caller() {
    let server = GrpcServer::spawn().await;
    let channel = ready(
        builder([server.addr()]).max_attempts(1).without_breaker(),
        1,
    )
    .await;
    let mut greeter = GreeterClient::new(channel);
    /// The replies a `SayMany` of 5 gets, and the code it ends with.
    async fn many(greeter: &mut GreeterClient<Grpc>) -> (Vec<u32>, Option<Code>) {
        let (seqs, end) = greeter.many(5).await;
        (seqs, end.map(|s| s.code()))
    }

    assert_eq!(many(&mut greeter).await, (vec![0, 1, 2, 3, 4], None));

    server.set(Fault::Unavailable);
    let status = greeter.say_hello(hello("x", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    assert_eq!(many(&mut greeter).await, (vec![], Some(Code::Unavailable)));

    server.set(Fault::FailAfter {
        messages: 2,
        code: Code::Internal,
    });
    assert_eq!(many(&mut greeter).await, (vec![0, 1], Some(Code::Internal)));
    server.set(Fault::FailAfter {
        messages: 1,
        code: Code::DataLoss,
    });
    // A unary reply followed by a failing status is a failed call.
    let status = greeter.say_hello(hello("x", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status}");

    server.set(Fault::ResetAfter { messages: 3 });
    let (seqs, end) = many(&mut greeter).await;
    assert_eq!(seqs, [0, 1, 2]);
    assert!(end.is_some(), "the reset stream ended without an error");

    server.set(Fault::Normal);
    let reply = greeter.say_hello(hello("x", 0)).await.unwrap().into_inner();
    assert_eq!(reply.message, "hello x");
    assert_eq!(server.calls(), 7);
}
