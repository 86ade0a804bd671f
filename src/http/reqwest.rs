//! reqwest glue (feature `reqwest`): a [`reqwest::Client`] as the inner
//! client of a palisade [`Client`](crate::Client).
//!
//! [`ReqwestService`] wraps one `reqwest::Client` in a cheap, `Clone`
//! `tower::Service<http::Request<B>>`; give it to
//! [`Builder::http`](crate::stack::Builder::http) and every endpoint shares
//! reqwest's connection pool, as with `palisade::http::hyper_client()`.
//! Request bodies are streamed to reqwest as they are polled (never
//! collected first), so palisade's [`ReplayBody`](crate::retry::ReplayBody)
//! keeps its byte limit and a retry resends exactly what the first attempt
//! sent.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use palisade::{Client, discover::Static};
//! use palisade::http::reqwest::{ReqwestService, client_builder};
//! use tower::ServiceExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = Client::builder("users")
//!     .discover(Static::parse(["127.0.0.1:8081", "127.0.0.1:8082"])?)
//!     .http(ReqwestService::new(client_builder().build()?))
//!     .build()?;
//! let req = http::Request::get("http://users/v1/me").body(Full::<Bytes>::default())?;
//! let rsp = client.clone().oneshot(req).await?;   // http::Response<reqwest::Body>
//! println!("{}", rsp.status());
//! # Ok(())
//! # }
//! ```
//!
//! # reqwest's own retries, timeouts and redirects
//!
//! palisade retries with a budget, a deadline and a fresh endpoint each time,
//! so the inner client should not retry on its own: two retry layers
//! multiply. reqwest 0.13 retries by default, but only HTTP/2 and HTTP/3
//! "protocol NACKs" (a graceful `GOAWAY`, `REFUSED_STREAM`), at most twice,
//! and only when the request body can be cloned — which a streamed body such
//! as palisade's never can. It is off entirely with
//! `reqwest::ClientBuilder::retry(reqwest::retry::never())`, which
//! [`client_builder`] sets.
//!
//! reqwest has no request timeout by default. Leave it so (or longer than
//! the deadline): palisade's deadline and per-try timeout already bound each
//! attempt, and a reqwest timeout fires as an error that only idempotent
//! requests may retry. reqwest follows up to 10 redirects by default, within
//! one attempt and possibly to another host; [`client_builder`] turns that
//! off, so the caller sees the 3xx, as with the hyper-util client.
//!
//! # Errors
//!
//! The service's error is [`reqwest::Error`], whose
//! [`source`](std::error::Error::source) chain palisade's classifier walks.
//! A refused connection keeps its `io::Error` of kind `ConnectionRefused` in
//! that chain, so [`HttpClassify`](crate::classify::HttpClassify) calls it
//! [`Retry::Always`](crate::classify::Retry::Always): a POST whose connection
//! was refused is retried on another endpoint, like with the hyper client.
//! Other connect failures (a connect timeout, say) are retried only for
//! idempotent methods unless the `http` feature is on, whose hyper-util
//! connect-error check also recognises reqwest's (reqwest is built on the
//! same hyper-util client).
//!
//! # TLS
//!
//! palisade depends on reqwest with `default-features = false`: plain HTTP
//! only. For `https` endpoints enable a TLS feature on your own `reqwest`
//! dependency (for example `reqwest = { version = "0.13", features =
//! ["rustls"] }`); Cargo unifies features, so the client you pass in has it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use pin_project::pin_project;
use tower::Service;

use crate::BoxError;

/// A `reqwest::ClientBuilder` with palisade's defaults, to adjust further
/// (TLS roots, default headers, ...) and then `build()`.
///
/// Compared with `reqwest::Client::builder()`:
///
/// - **no retries** (`retry(reqwest::retry::never())`): palisade retries;
/// - **no redirects** (`redirect(Policy::none())`): the caller sees the 3xx;
/// - **no proxy** (`no_proxy()`, so `HTTP_PROXY` and friends are ignored):
///   requests go straight to the endpoint the balancer picked, so its
///   latency and connection errors are that endpoint's;
/// - **bounded pool**: idle connections kept 90 s, at most 64 per endpoint,
///   as `hyper_client()` does;
/// - **`TCP_NODELAY`** on (reqwest's default too);
/// - no request, connect or read timeout (reqwest's default): the deadline
///   bounds each attempt.
///
/// ```
/// use std::time::Duration;
///
/// let client = palisade::http::reqwest::client_builder()
///     .connect_timeout(Duration::from_millis(500))
///     .build()?;
/// let service = palisade::http::reqwest::ReqwestService::new(client);
/// # let _ = service;
/// # Ok::<(), reqwest::Error>(())
/// ```
pub fn client_builder() -> ::reqwest::ClientBuilder {
    ::reqwest::Client::builder()
        .retry(::reqwest::retry::never())
        .redirect(::reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
}

/// A `reqwest::Client` as a `tower::Service<http::Request<B>>`, for
/// [`Builder::http`](crate::stack::Builder::http); see the
/// [module docs](self).
///
/// It converts an `http::Request<B>` into a `reqwest::Request`, keeping the
/// method, URI, version, headers and extensions (reqwest reads its own
/// per-request settings there and does not send them on), with the body
/// wrapped by `reqwest::Body::wrap` so that it streams; and reqwest's
/// response back into an `http::Response<reqwest::Body>` (status, version,
/// headers, extensions, and the body still streaming). It is always ready; cloning it clones the
/// `reqwest::Client`, which shares one pool.
///
/// `reqwest::Body::wrap` needs a `Send + Sync + 'static` body. Behind a
/// palisade [`Client`](crate::Client) any `Send + 'static` body will do:
/// the [`ReplayBody`](crate::retry::ReplayBody) it is wrapped in is `Sync`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use palisade::http::reqwest::ReqwestService;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// # let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
/// // Nothing listens at `addr`: the connection is refused.
/// let service = ReqwestService::new(palisade::http::reqwest::client_builder().build()?);
/// let req = http::Request::post(format!("http://{addr}/orders"))
///     .body(Full::new(Bytes::from_static(b"{}")))?;
/// let err = service.oneshot(req).await.unwrap_err();
/// assert!(err.is_connect());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ReqwestService {
    client: ::reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    ///
    /// ```
    /// let service = palisade::http::reqwest::ReqwestService::new(reqwest::Client::new());
    /// # let _ = service;
    /// ```
    pub fn new(client: ::reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The wrapped client.
    ///
    /// ```
    /// let service = palisade::http::reqwest::ReqwestService::new(reqwest::Client::new());
    /// let _plain: &reqwest::Client = service.client();
    /// ```
    pub fn client(&self) -> &::reqwest::Client {
        &self.client
    }

    /// Unwraps the client.
    ///
    /// ```
    /// let service = palisade::http::reqwest::ReqwestService::new(reqwest::Client::new());
    /// let _plain: reqwest::Client = service.into_inner();
    /// ```
    pub fn into_inner(self) -> ::reqwest::Client {
        self.client
    }
}

impl From<::reqwest::Client> for ReqwestService {
    /// Same as [`ReqwestService::new`].
    ///
    /// ```
    /// use palisade::http::reqwest::ReqwestService;
    ///
    /// let service = ReqwestService::from(reqwest::Client::new());
    /// # let _ = service;
    /// ```
    fn from(client: ::reqwest::Client) -> Self {
        ReqwestService::new(client)
    }
}

impl fmt::Debug for ReqwestService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // reqwest's own Debug lists its whole configuration; keep it short.
        f.debug_struct("ReqwestService").finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for ReqwestService
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<::reqwest::Body>;
    type Error = ::reqwest::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // reqwest's client is always ready: its pool has no back-pressure.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, ::reqwest::Body::wrap(body));
        let state = match ::reqwest::Request::try_from(req) {
            Ok(req) => State::Sent(Service::call(&mut self.client, req)),
            Err(error) => State::Failed(Some(error)),
        };
        ResponseFuture { state }
    }
}

/// reqwest's response future, as its `tower::Service` impl names it.
type Pending = <::reqwest::Client as Service<::reqwest::Request>>::Future;

/// The response future of [`ReqwestService`]: reqwest's, with the response
/// converted to an `http::Response`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use palisade::http::reqwest::{ReqwestService, ResponseFuture};
/// use tower::Service;
///
/// let mut service = ReqwestService::new(reqwest::Client::new());
/// let req = http::Request::get("http://127.0.0.1:1/").body(Full::<Bytes>::default()).unwrap();
/// let future: ResponseFuture = service.call(req);
/// # drop(future);
/// ```
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    #[pin]
    state: State,
}

#[pin_project(project = StateProj)]
enum State {
    /// reqwest has the request.
    Sent(#[pin] Pending),
    /// The request could not be converted (its URI is not a valid URL); the
    /// error is returned on the first poll.
    Failed(Option<::reqwest::Error>),
}

impl Future for ResponseFuture {
    type Output = Result<Response<::reqwest::Body>, ::reqwest::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sent(pending) => {
                let rsp = ready!(pending.poll(cx))?;
                Poll::Ready(Ok(Response::from(rsp)))
            }
            StateProj::Failed(error) => match error.take() {
                Some(error) => Poll::Ready(Err(error)),
                None => panic!("palisade::http::reqwest::ResponseFuture polled after completion"),
            },
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Sent(_) => "sent",
            State::Failed(_) => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Retry, classify_transport_error};
    use tower::ServiceExt;

    /// An address on 127.0.0.1 where nothing listens.
    async fn refused_addr() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[derive(Debug)]
    struct Empty;
    impl http_body::Body for Empty {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(None)
        }
        fn is_end_stream(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable_for_any_method() {
        let addr = refused_addr().await;
        let service = ReqwestService::new(client_builder().build().unwrap());
        let req = Request::post(format!("http://{addr}/"))
            .body(Empty)
            .unwrap();
        let err = service.oneshot(req).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        let mut chain = Vec::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = cur {
            chain.push(format!("{e:?}"));
            cur = e.source();
        }
        assert_eq!(
            classify_transport_error(&err).retry(),
            Retry::Always,
            "source chain: {chain:#?}"
        );
    }

    #[tokio::test]
    async fn a_uri_that_is_not_a_url_fails_on_the_first_poll() {
        let service = ReqwestService::new(reqwest_client());
        let req = Request::get("/no/authority").body(Empty).unwrap();
        let err = service.oneshot(req).await.unwrap_err();
        assert!(err.is_builder(), "{err:?}");
    }

    /// The whole stack takes any `Send + 'static` body, `Sync` or not:
    /// `ReplayBody` is `Sync` whenever the body it wraps is `Send`.
    #[test]
    fn the_stack_accepts_bodies_that_are_not_sync() {
        struct NotSync(std::cell::Cell<bool>);
        impl http_body::Body for NotSync {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
                Poll::Ready(None)
            }
        }
        fn is_service<S: Service<Request<B>>, B>() {}
        is_service::<crate::Reqwest, NotSync>();
        is_service::<crate::Reqwest, http_body_util::Full<Bytes>>();
        let _ = NotSync(std::cell::Cell::new(false)).0.get();
    }

    fn reqwest_client() -> ::reqwest::Client {
        client_builder().build().unwrap()
    }
}
