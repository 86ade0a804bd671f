//! A palisade client over reqwest's `Client`, end to end.
//!
//! Starts three local backends on 127.0.0.1 (one of them slow), balances 320
//! requests over them through one shared reqwest client, and prints how the
//! balancer saw each endpoint.
//!
//! ```text
//! cargo run --example reqwest_client --features reqwest
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade::Client;
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::http::reqwest::{ReqwestService, client_builder};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let fast = Behavior::new().latency(Duration::from_millis(5));
    let slow = Behavior::new().latency(Duration::from_millis(100));
    let backends = [
        Backend::spawn(fast).await?,
        Backend::spawn(fast).await?,
        Backend::spawn(slow).await?,
    ];

    // One shared reqwest client with palisade's defaults (its own retries
    // and redirects off, no proxy, bounded pool); palisade rewrites each
    // request's URL to the endpoint it picks and keeps `Host: users`.
    let reqwest = client_builder().build()?;
    let client = Client::builder("users")
        .endpoints(backends.iter().map(|b| Endpoint::from(b.addr())))
        .http(ReqwestService::new(reqwest))
        .build()?;

    // Eight concurrent callers, each with its own clone.
    let mut callers = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        callers.push(tokio::spawn(async move {
            for _ in 0..40 {
                let req = http::Request::get("http://users/hello").body(Full::<Bytes>::default())?;
                // An http::Response<reqwest::Body>.
                let rsp = client.clone().oneshot(req).await?;
                rsp.into_body().collect().await?;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for caller in callers {
        caller.await??;
    }

    println!("{:<22} {:>9} {:>12}", "endpoint", "requests", "ewma");
    for b in &backends {
        let stats = client
            .endpoint_stats()
            .into_iter()
            .find(|s| s.address == b.addr().into())
            .expect("every backend is an endpoint");
        println!(
            "{:<22} {:>9} {:>10.1}ms",
            stats.address.to_string(),
            stats.requests,
            stats.rtt_estimate.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
