//! A palisade client as the channel of a tonic gRPC client, end to end.
//!
//! Starts three tonic servers on 127.0.0.1 (the `Greeter` service of
//! `tests/support/grpc.rs`, written by hand as tonic-build would generate
//! it, so no protoc is needed), adds a fourth address where nothing
//! listens, makes 120 unary calls from 4 callers and a server-streaming
//! call through palisade, prints how the balancer saw each endpoint, and
//! shows a refusal as the `tonic::Status` a caller gets.
//!
//! ```text
//! cargo run --example tonic_client --features tonic
//! ```

#[path = "../tests/support/grpc.rs"]
mod grpc;

use std::time::Duration;

use grpc::{GreeterClient, GrpcServer, HelloRequest};
use palisade::discover::Endpoint;
use palisade::{Client, Grpc};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let servers = GrpcServer::fleet(3).await;
    let down = grpc::refused_addr().await;

    // HTTP/2 (h2c) to every endpoint. A call that goes to `down` is
    // refused and retried on another endpoint (the balancer prefers the
    // endpoints it has measured: a new one is taken to answer in 30 ms).
    let channel: Grpc = Client::builder("greeter")
        .endpoints(
            servers
                .iter()
                .map(|s| Endpoint::from(s.addr()))
                .chain([Endpoint::from(down)]),
        )
        .grpc()
        .build()?;

    // A generated client takes the channel as it would take tonic's own;
    // clones share the endpoints, their load and the retry budget.
    let mut callers = Vec::new();
    for c in 0..4 {
        let mut greeter = GreeterClient::new(channel.clone());
        callers.push(tokio::spawn(async move {
            for i in 0..30 {
                let request = HelloRequest {
                    name: format!("caller {c}/{i}"),
                    count: 0,
                };
                greeter.say_hello(request).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for caller in callers {
        caller.await??;
    }
    let mut greeter = GreeterClient::new(channel.clone());
    let request = HelloRequest {
        name: "stream".into(),
        count: 3,
    };
    let mut stream = greeter.say_many(request).await?.into_inner();
    while let Some(reply) = stream.message().await? {
        println!("{} (#{}, from {})", reply.message, reply.seq, reply.server);
    }

    println!(
        "\n{:<22} {:>6} {:>9} {:>9}",
        "endpoint", "calls", "failures", "state"
    );
    for stats in channel.endpoint_stats() {
        let note = if stats.address == down.into() {
            "  (nothing listens)"
        } else {
            ""
        };
        println!(
            "{:<22} {:>6} {:>9} {:>9?}{note}",
            stats.address.to_string(),
            stats.requests,
            stats.failures,
            stats.state
        );
    }
    let retries = channel.snapshot().retries;
    println!("attempts: {} for 121 calls", retries.attempts);

    // A refusal is a tonic::Status with the code gRPC callers expect.
    let nowhere: Grpc = Client::builder("nowhere")
        .endpoints([])
        .endpoint_wait(Duration::from_millis(50))
        .grpc()
        .build()?;
    let status = GreeterClient::new(nowhere)
        .say_hello(HelloRequest::default())
        .await
        .unwrap_err();
    let cause = std::error::Error::source(&status).map(|e| e.to_string());
    println!(
        "\nno endpoints: {:?} {:?} ({})",
        status.code(),
        status.message(),
        cause.unwrap_or_default()
    );
    Ok(())
}
