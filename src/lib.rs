//! # palisade
//!
//! The client half of a service mesh, as [`tower`] layers: give any client
//! `Service` (hyper-util's `Client`, reqwest's, your own; with the `tonic`
//! feature a client is also the channel of a tonic gRPC client)
//! endpoint discovery (static, DNS, files, Kubernetes), latency-aware load
//! balancing, outlier ejection, retry budgets, deadlines, circuit breaking,
//! limits, hedging, metrics and tracing. The same layers, assembled from a
//! config file, make the `palisade` sidecar binary.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use palisade::{Client, discover::Static};
//! use tower::ServiceExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = Client::builder("users")
//!     .discover(Static::parse(["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"])?)
//!     .http(palisade::http::hyper_client())
//!     .build()?;
//!
//! // Clone freely: every clone shares one endpoint set and one load table.
//! let req = http::Request::get("http://users/v1/me").body(Full::<Bytes>::default())?;
//! let rsp = client.clone().oneshot(req).await?;
//! println!("{}", rsp.status());
//! # Ok(())
//! # }
//! ```
//!
//! ## Modules, in request order
//!
//! - [`stack`]: [`Client`] and its [`Builder`](stack::Builder), where the
//!   layers are assembled; [`Snapshot`], the client's live state.
//! - [`metrics`]: prometheus-client metrics and tracing spans.
//! - [`deadline`]: one absolute deadline per request, propagated per hop.
//! - [`limit`]: a shared rate limit, a concurrency limit (bulkhead) and
//!   adaptive client throttling; each sheds with [`Error::Overloaded`].
//! - [`breaker`]: a Hystrix-style service breaker.
//! - [`retry`]: policy, budget, backoff and body replay.
//! - [`hedge`]: one backup request to another endpoint after a delay, on
//!   its own budget.
//! - [`balance`]: P2C over peak-EWMA load, without a buffer worker; failure
//!   accrual.
//! - [`http`]: one shared HTTP client turned into per-endpoint services.
//! - [`discover`]: the sources of endpoints: static, dynamic, DNS, files,
//!   Kubernetes.
//!
//! Shared by all of them (a layer imports only the layers below it and
//! these; `docs/ARCHITECTURE.md` draws the graph):
//!
//! - [`error`]: the one error type callers match on.
//! - [`classify`]: the one classifier every layer consults.
//! - [`facts`]: what a layer tells the layers below about a request (its
//!   [`Deadline`](facts::Deadline), the endpoints it [`Tried`](facts::Tried)).
//! - [`endpoint`]: an endpoint and the factory that turns it into a service.
//! - [`backoff`], [`budget`], [`replay`]: backoff with jitter, the token
//!   budget of retries and hedges, the replayable request body.
//! - [`snapshot`]: a client's live state as plain data.
//!
//! ## Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `http` | yes | `http::hyper_client()` and hyper-util error classification |
//! | `demo` | yes | [`demo`]: in-process test backends on 127.0.0.1 |
//! | `proxy` | yes | [`proxy`]: the sidecar's config, server, admin and reload |
//! | `cli` | yes | the `palisade` binary (`palisade demo`, `proxy`, `check`) |
//! | `dns` | yes | `discover::dns`: A/AAAA and SRV discovery through hickory-resolver |
//! | `file` | yes | `discover::file`: a watched JSON or TOML endpoint list |
//! | `kubernetes` | no | `discover::kubernetes`: EndpointSlices through kube-rs (pulls in kube and k8s-openapi) |
//! | `reqwest` | no | `http::reqwest`: a `reqwest::Client` as the inner client |
//! | `tonic` | no | `stack::tonic`: a [`Client`] as the channel of a tonic gRPC client (`Grpc`, `Builder::grpc`) |
//!
//! A library user who brings their own client can build lean with
//! `default-features = false`.

#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod classify;
pub mod deadline;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discover;
pub mod endpoint;
pub mod error;
pub mod facts;
pub mod hedge;
pub mod http;
pub mod limit;
pub mod metrics;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod refuse;
pub mod replay;
pub mod retry;
mod rolling;
pub mod settings;
pub mod snapshot;
pub mod stack;
#[cfg(test)]
mod testing;

pub use error::{BoxError, BuildError, Error, Limit};
#[cfg(feature = "tonic")]
pub use stack::Grpc;
#[cfg(feature = "http")]
pub use stack::Hyper;
#[cfg(feature = "reqwest")]
pub use stack::Reqwest;
pub use stack::{Client, ClientConfig, Snapshot};
