//! gRPC: a [`Client`] as the channel of a tonic client (feature `tonic`).
//!
//! A tonic-generated client takes any `Service<http::Request<tonic::body::Body>>`
//! as its channel; [`Grpc`], the client [`Builder::grpc`] builds, is one:
//! cheap to clone, `Send + Sync`, HTTP/2 with prior knowledge (h2c) to each
//! endpoint, one multiplexed connection per endpoint. Every call goes
//! through the whole stack: deadline (a tonic `Request::set_timeout` is a
//! `grpc-timeout` header, which the deadline layer reads), limits, breaker,
//! retries, the balancer.
//!
//! - `poll_ready` is always ready; refusals come from the response future,
//!   so the generated client reports them instead of "Service was not
//!   ready".
//! - Every [`Error`] maps to a [`tonic::Status`] the way tonic expects
//!   (`Status::from_error` looks for a `Status` down the source chain):
//!   [`Error::DeadlineExceeded`] is `DEADLINE_EXCEEDED`,
//!   [`Error::NoEndpoints`] and [`Error::CircuitOpen`] are `UNAVAILABLE`,
//!   [`Error::Overloaded`] is `RESOURCE_EXHAUSTED`; a connection that could
//!   not be made is `UNAVAILABLE`, as with tonic's own `Channel`. `From<Error>
//!   for Status` gives the same code with the whole message.
//! - A request message up to the retry settings' `body_limit` (64 KiB) is
//!   kept, so a call can be sent again: a connection refused by one endpoint
//!   is retried on another.
//!
//! ```
//! use palisade::{Client, Grpc};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let channel: Grpc = Client::builder("greeter")
//!     .endpoints([]) // normally: a discovery source or addresses
//!     .endpoint_wait(std::time::Duration::ZERO)
//!     .grpc()
//!     .build()?;
//! // A generated client would be `GreeterClient::new(channel.clone())`;
//! // here, the raw call it makes.
//! let call = http::Request::post("/helloworld.Greeter/SayHello")
//!     .header("content-type", "application/grpc")
//!     .body(tonic::body::Body::empty())?;
//! let err = channel.oneshot(call).await.unwrap_err();
//! let status = tonic::Status::from_error(Box::new(err));
//! assert_eq!(status.code(), tonic::Code::Unavailable);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use ::tonic::body::Body;
use ::tonic::{Code, ConnectError, Status};
use hyper_util::client::legacy::Error as HyperError;
use tower::util::MapErr;

use super::{Builder, Client};
use crate::error::Error;
use crate::http::{HttpEndpoint, HttpEndpoints, HyperClient, hyper_h2c_client};
use crate::retry::ReplayBody;

/// A palisade [`Client`] for gRPC: the type [`Builder::grpc`] builds, a
/// channel for tonic-generated clients (see the [module docs](self)).
///
/// ```no_run
/// use palisade::discover::Static;
/// use palisade::{Client, Grpc};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let channel: Grpc = Client::builder("greeter")
///     .discover(Static::parse(["127.0.0.1:50051", "127.0.0.1:50052"])?)
///     .grpc()
///     .build()?;
/// // let mut greeter = GreeterClient::new(channel);
/// # let _ = channel;
/// # Ok(())
/// # }
/// ```
pub type Grpc = Client<HttpEndpoint<GrpcTransport>>;

/// The shared inner client of a [`Grpc`] client: hyper-util over h2c
/// ([`hyper_h2c_client`]), its errors made [`TransportError`]s.
pub type GrpcTransport = MapErr<HyperClient<ReplayBody<Body>>, fn(HyperError) -> TransportError>;

/// A [`GrpcTransport`]: one h2c hyper-util client with palisade's pool
/// defaults, shared by every endpoint it is given to.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let builder = palisade::Client::builder("greeter")
///     .http(palisade::stack::tonic::grpc_transport()); // what `.grpc()` does
/// # let _ = builder;
/// # }
/// ```
pub fn grpc_transport() -> GrpcTransport {
    MapErr::new(hyper_h2c_client(), TransportError::new as fn(_) -> _)
}

/// The error of a [`GrpcTransport`]: hyper-util's, with a failed connect
/// wrapped in a [`tonic::ConnectError`], so that tonic reads it as
/// `UNAVAILABLE` as it does for its own `Channel`. The hyper-util error stays
/// in the source chain, so palisade still knows that nothing was sent.
///
/// A named type rather than a `BoxError`: a boxed trait object in the
/// channel's types trips a compiler limitation ("implementation of `From`
/// is not general enough") when a tonic call's future must be `Send`.
#[derive(Debug)]
pub struct TransportError(TransportErrorKind);

#[derive(Debug)]
enum TransportErrorKind {
    Connect(ConnectError),
    Other(HyperError),
}

impl TransportError {
    fn new(err: HyperError) -> Self {
        TransportError(if err.is_connect() {
            TransportErrorKind::Connect(ConnectError(Box::new(err)))
        } else {
            TransportErrorKind::Other(err)
        })
    }

    /// Whether the connection could not be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(self.0, TransportErrorKind::Connect(_))
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            TransportErrorKind::Connect(_) => "gRPC transport: could not connect",
            TransportErrorKind::Other(_) => "gRPC transport failed",
        })
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(match &self.0 {
            TransportErrorKind::Connect(e) => e,
            TransportErrorKind::Other(e) => e,
        })
    }
}

impl<D, N, C> Builder<D, N, C> {
    /// Sends calls as gRPC over HTTP/2 (h2c) through one shared
    /// [`grpc_transport`]: the client built is a [`Grpc`] (with the default
    /// classifier), a channel for tonic-generated clients.
    ///
    /// ```
    /// use palisade::discover::Endpoint;
    /// use palisade::{Client, Grpc};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let channel: Grpc = Client::builder("greeter")
    ///     .endpoints([Endpoint::parse("127.0.0.1:50051")?])
    ///     .grpc()
    ///     .build()?;
    /// # let _ = channel;
    /// # Ok(())
    /// # }
    /// ```
    pub fn grpc(self) -> Builder<D, HttpEndpoints<GrpcTransport>, C> {
        self.http(grpc_transport())
    }
}

/// The gRPC status for a palisade error: the code tonic finds in its source
/// chain (see the [module docs](self)), with the error's whole message
/// (service, times, limit) and the error as the status's source. An
/// [`Error::Inner`] is left to `tonic::Status::from_error`: a status or
/// transport error inside it decides the code, else `UNKNOWN`.
///
/// ```
/// use palisade::Error;
/// # use palisade::{Client, discover::Static};
/// # use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let channel: palisade::Grpc = Client::builder("greeter").discover(Static::new([]))
/// #     .endpoint_wait(std::time::Duration::ZERO).grpc().build().unwrap();
/// # let call = http::Request::new(tonic::body::Body::empty());
/// let err: Error = channel.oneshot(call).await.unwrap_err();
/// let status = tonic::Status::from(err);
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert!(status.message().contains("no endpoints available"));
/// # }
/// ```
impl From<Error> for Status {
    fn from(err: Error) -> Status {
        if matches!(err, Error::Inner { .. } | Error::Caller { .. }) {
            return Status::from_error(Box::new(err));
        }
        let code = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<Status>())
            .map_or(Code::Unknown, Status::code);
        let mut status = Status::new(code, err.to_string());
        status.set_source(Arc::new(err));
        status
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::Limit;

    fn refusals() -> Vec<(Error, Code)> {
        let service: Arc<str> = "greeter".into();
        vec![
            (
                Error::NoEndpoints {
                    service: service.clone(),
                    waited: Duration::from_secs(3),
                },
                Code::Unavailable,
            ),
            (
                Error::DeadlineExceeded {
                    service: service.clone(),
                    elapsed: Duration::from_millis(250),
                },
                Code::DeadlineExceeded,
            ),
            (
                Error::CircuitOpen {
                    service: service.clone(),
                    retry_in: Duration::from_secs(5),
                },
                Code::Unavailable,
            ),
            (
                Error::Overloaded {
                    service,
                    limit: Limit::Concurrency { max: 4, queue: 0 },
                },
                Code::ResourceExhausted,
            ),
        ]
    }

    #[test]
    fn tonic_finds_the_status_of_every_refusal() {
        for (err, code) in refusals() {
            let message = err.to_string();
            let status = Status::from_error(Box::new(err));
            assert_eq!(status.code(), code, "{message}");
            // tonic keeps the palisade error as the status's source.
            let source = std::error::Error::source(&status).expect("a source");
            assert_eq!(source.to_string(), message);
        }
    }

    #[test]
    fn from_error_keeps_the_whole_message() {
        for (err, code) in refusals() {
            let message = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
            let source = std::error::Error::source(&status).expect("a source");
            assert!(source.downcast_ref::<Error>().is_some());
        }
    }

    #[test]
    fn an_inner_error_keeps_its_cause_and_its_status() {
        // A status inside an inner error decides the code.
        let inner = Error::inner(&"greeter".into(), None, Status::permission_denied("no"));
        let status = Status::from(inner);
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "no");

        // A failed connect is UNAVAILABLE, and still proves nothing was sent.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::inner(&"greeter".into(), None, ConnectError(Box::new(refused)));
        assert!(matches!(
            crate::classify::classify_transport_error(&err).retry(),
            crate::classify::Retry::Always
        ));
        assert_eq!(Status::from(err).code(), Code::Unavailable);

        // Anything else is UNKNOWN, with palisade's message.
        let eof = std::io::Error::other("eof");
        let err = Error::inner(&"greeter".into(), None, eof);
        let message = err.to_string();
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Unknown);
        assert_eq!(status.message(), message);
    }

    #[test]
    fn a_grpc_client_is_a_channel() {
        fn channel<T>()
        where
            T: ::tonic::client::GrpcService<Body> + Clone + Send + Sync + 'static,
            T::Future: Send,
        {
        }
        channel::<Grpc>();
    }
}
