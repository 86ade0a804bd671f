//! What palisade makes of gRPC outcomes, with a real tonic client over real
//! tonic servers on 127.0.0.1: UNAVAILABLE in a Trailers-Only answer is
//! retried on another endpoint; a failure in the trailers after data, or a
//! stream reset midway, is counted and penalised but never retried (the
//! call was committed), and an endpoint that keeps resetting is ejected;
//! the metrics carry the gRPC status.

#![cfg(all(feature = "tonic", feature = "demo"))]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use palisade::Grpc;
use palisade::balance::Choice;
use palisade::discover::Address;
use palisade::metrics::Metrics;
use prometheus_client::registry::Registry;
use support::grpc::{Fault, GreeterClient, GrpcBuilder, GrpcServer, builder, hello, ready};
use tonic::Code;

/// A client over `addrs` that picks endpoints at random by weight: with
/// calls one after another, P2C would keep to whichever answered first,
/// and the faulty server would never be tried.
fn random(addrs: impl IntoIterator<Item = SocketAddr>) -> GrpcBuilder {
    builder(addrs).choice(Choice::Random)
}

/// The stats of the endpoint at `addr`.
fn stats_of(channel: &Grpc, addr: SocketAddr) -> palisade::balance::EndpointStats {
    let addr = Address::from(addr);
    channel
        .endpoint_stats()
        .into_iter()
        .find(|s| s.address == addr)
        .expect("a known endpoint")
}

/// A `SayMany` of `count`: the sequence numbers received and the code it
/// ended with.
async fn many(greeter: &mut GreeterClient<Grpc>, count: u32) -> (Vec<u32>, Option<Code>) {
    let (seqs, end) = greeter.many(count).await;
    (seqs, end.map(|s| s.code()))
}

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_on_another_endpoint_and_its_endpoint_ejected() {
    let unavailable = GrpcServer::spawn().await;
    let healthy = GrpcServer::spawn().await;
    unavailable.set(Fault::Unavailable);
    let channel = ready(random([unavailable.addr(), healthy.addr()]), 2).await;
    let mut greeter = GreeterClient::new(channel.clone());

    for i in 0..100 {
        let name = format!("call-{i}");
        let reply = greeter
            .say_hello(hello(name.as_str(), 0))
            .await
            .unwrap_or_else(|s| panic!("{name} was not retried: {s}"))
            .into_inner();
        assert_eq!(reply.server, healthy.addr().to_string());
    }
    assert!(
        unavailable.calls() >= 1,
        "the UNAVAILABLE server was never tried"
    );
    assert_eq!(
        healthy.calls(),
        100,
        "each call reached the healthy one once"
    );
    let attempts = channel.snapshot().retries.attempts;
    assert_eq!(
        attempts,
        100 + unavailable.calls(),
        "one retry per UNAVAILABLE"
    );
    let bad = stats_of(&channel, unavailable.addr());
    assert_eq!(bad.failures, unavailable.calls());
    assert!(
        unavailable.calls() <= 10,
        "{} calls reached the UNAVAILABLE server: it kept its share",
        unavailable.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_trailers_after_data_is_counted_and_penalised_not_retried() {
    let server = GrpcServer::spawn().await;
    server.set(Fault::FailAfter {
        messages: 2,
        code: Code::Internal,
    });
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let channel = ready(random([server.addr()]).metrics(metrics), 1).await;
    let mut greeter = GreeterClient::new(channel.clone());

    assert_eq!(
        many(&mut greeter, 5).await,
        (vec![0, 1], Some(Code::Internal))
    );
    assert_eq!(server.calls(), 1, "committed: never retried");
    let stats = stats_of(&channel, server.addr());
    assert_eq!((stats.failures, stats.in_flight), (1, 0), "{stats:?}");
    assert!(
        stats.rtt_estimate >= Duration::from_millis(300),
        "penalised: {stats:?}"
    );

    server.set(Fault::Normal);
    assert_eq!(many(&mut greeter, 3).await, (vec![0, 1, 2], None));
    let text = scrape(&registry);
    for line in [
        r#"palisade_grpc_responses_total{client="greeter",code="INTERNAL"} 1"#,
        r#"palisade_grpc_responses_total{client="greeter",code="OK"} 1"#,
        r#"palisade_responses_total{client="greeter",class="failure",status="2xx"} 1"#,
        r#"palisade_responses_total{client="greeter",class="success",status="2xx"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_midway_is_penalised_and_ejected_when_it_repeats() {
    let resetter = GrpcServer::spawn().await;
    let healthy = GrpcServer::spawn().await;
    resetter.set(Fault::ResetAfter { messages: 2 });

    // Beside a healthy endpoint: each reset penalises the resetter, which
    // then gets little traffic.
    let channel = ready(random([resetter.addr(), healthy.addr()]), 2).await;
    let mut greeter = GreeterClient::new(channel.clone());
    let mut reset = 0;
    for _ in 0..100 {
        let (seqs, end) = many(&mut greeter, 4).await;
        match end {
            None => assert_eq!(seqs, [0, 1, 2, 3]),
            Some(_) => {
                assert_eq!(seqs, [0, 1], "a reset after two messages");
                reset += 1;
            }
        }
    }
    assert!(reset >= 1, "the resetter was never tried");
    assert_eq!(
        resetter.calls(),
        reset,
        "a reset stream is never sent again"
    );
    let stats = stats_of(&channel, resetter.addr());
    assert_eq!(stats.failures, reset, "{stats:?}");
    assert!(
        reset <= 10,
        "{reset} of 100 streams were reset: it kept its share"
    );

    // Alone, so that it keeps being called: five resets in a row eject it.
    let calls_before = resetter.calls();
    let channel = ready(random([resetter.addr()]), 1).await;
    let mut greeter = GreeterClient::new(channel.clone());
    for _ in 0..6 {
        let (seqs, end) = many(&mut greeter, 4).await;
        assert_eq!((seqs, end.is_some()), (vec![0, 1], true));
    }
    assert_eq!(resetter.calls() - calls_before, 6, "never sent again");
    let stats = stats_of(&channel, resetter.addr());
    assert_eq!(stats.failures, 6, "{stats:?}");
    assert!(
        stats.ejections >= 1,
        "never ejected after 6 resets: {stats:?}"
    );
}

/// A tonic server that lets the propagated deadline run out answers
/// CANCELLED ("Timeout expired") before the caller's own deadline fires:
/// the caller gets DEADLINE_EXCEEDED, and the endpoint is charged a
/// failure through the classifier (not a cut: the answer came in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_gives_up_at_its_deadline_is_failing() {
    let server = GrpcServer::spawn().await;
    server.set(Fault::Slow(Duration::from_secs(30)));
    // The server is told 300 ms less than the caller waits.
    let deadline = palisade::deadline::DeadlineSettings {
        timeout: Some(Duration::from_millis(600)),
        reserve: Duration::from_millis(300),
        ..Default::default()
    };
    let channel = ready(builder([server.addr()]).deadline(deadline), 1).await;
    let mut greeter = GreeterClient::new(channel.clone());
    let status = greeter.say_hello(hello("late", 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    let stats = stats_of(&channel, server.addr());
    assert_eq!(
        (stats.failures, stats.timeouts),
        (1, 0),
        "a failure by its CANCELLED, not a cut: {stats:?}"
    );
}
