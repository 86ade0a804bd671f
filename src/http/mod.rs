//! HTTP glue: turn one shared HTTP client into a service per endpoint.
//!
//! [`HttpEndpoints`] is a [`NewEndpoint`] factory that wraps one client (a
//! hyper-util legacy `Client`, or any `Clone` `Service<http::Request<B>>`)
//! and gives each endpoint an [`HttpEndpoint`]: the same client, with every
//! request's URI authority rewritten to that endpoint's address. All
//! endpoints share the client's connection pool.
//!
//! The request's logical authority is kept in the `Host` header: a request
//! for `http://users/v1/me` sent to `10.0.0.7:8080` goes to
//! `http://10.0.0.7:8080/v1/me` with `Host: users`, unless the request
//! already carried a `Host` header, which is left alone.
//!
//! ```
//! use palisade::balance::NewEndpoint;
//! use palisade::discover::Endpoint;
//! use palisade::http::HttpEndpoints;
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Any HTTP client service; this one echoes what it was asked for.
//! let client = service_fn(|req: http::Request<()>| async move {
//!     let host = req.headers()["host"].to_str().unwrap().to_owned();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(format!("{} {}", req.uri(), host)))
//! });
//! let mut factory = HttpEndpoints::new(client);
//! let endpoint = factory.new_endpoint(&Endpoint::parse("127.0.0.1:8080")?)?;
//! let req = http::Request::get("http://users/v1/me?x=1").body(())?;
//! let rsp = endpoint.oneshot(req).await?;
//! assert_eq!(rsp.body(), "http://127.0.0.1:8080/v1/me?x=1 users");
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "http")]
mod connect;
#[cfg(feature = "reqwest")]
pub mod reqwest;
mod settings;

#[cfg(feature = "http")]
pub use connect::{Conn, Connector};
pub use settings::HttpSettings;

use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri};
use tower::Service;

use crate::endpoint::{Endpoint, EndpointError, NewEndpoint};
#[cfg(feature = "http")]
use crate::settings::SettingsError;

/// The hyper-util client [`hyper_client`] builds.
#[cfg(feature = "http")]
pub type HyperClient<B> = hyper_util::client::legacy::Client<Connector, B>;

/// A hyper-util legacy client over plain TCP with palisade's defaults
/// ([`HttpSettings::default`]): HTTP/1.1, `TCP_NODELAY`, a 1 s connect
/// timeout, idle connections kept 90 s and at most 64 idle connections per
/// endpoint (hyper-util's own default is unbounded).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = palisade::http::hyper_client::<http_body_util::Full<bytes::Bytes>>();
/// # let _ = client;
/// # }
/// ```
#[cfg(feature = "http")]
pub fn hyper_client<B>() -> HyperClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    pooled_client(&HttpSettings::default(), false)
}

/// Like [`hyper_client`], but speaking HTTP/2 over plain TCP with prior
/// knowledge (h2c): one multiplexed connection per endpoint.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = palisade::http::hyper_h2c_client::<http_body_util::Full<bytes::Bytes>>();
/// # let _ = client;
/// # }
/// ```
#[cfg(feature = "http")]
pub fn hyper_h2c_client<B>() -> HyperClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    pooled_client(&HttpSettings::default(), true)
}

#[cfg(feature = "http")]
impl HttpSettings {
    /// An HTTP/1.1 client like [`hyper_client`], with these settings;
    /// fails with every problem [`validate`](Self::validate) finds.
    pub fn http1_client<B>(&self) -> Result<HyperClient<B>, SettingsError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        self.validate()?;
        Ok(pooled_client(self, false))
    }

    /// An h2c client like [`hyper_h2c_client`], with these settings;
    /// fails with every problem [`validate`](Self::validate) finds.
    pub fn h2c_client<B>(&self) -> Result<HyperClient<B>, SettingsError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        self.validate()?;
        Ok(pooled_client(self, true))
    }
}

/// The one place the pooled client is built from its settings.
///
/// `retry_canceled_requests` is hyper-util's default, written out because
/// the pool relies on it: a request handed to a pooled HTTP/1.1 connection
/// that turns out to be closed (the server's FIN arrived as the request was
/// taken from the pool, a keep-alive race) comes back unwritten and is sent
/// again on another connection, whatever its method; over HTTP/1.1 the
/// [`Connector`]'s connections make sure a close the kernel has already
/// seen is noticed before the request is written. A request that was
/// written is never resent here; whether it may be is the classifier's call
/// (idempotent methods only).
#[cfg(feature = "http")]
pub(crate) fn pooled_client<B>(settings: &HttpSettings, http2_only: bool) -> HyperClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.connect_timeout));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(settings.idle_timeout)
        .pool_max_idle_per_host(settings.max_idle_per_endpoint)
        .retry_canceled_requests(true)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_only(http2_only)
        .build(Connector::new(connector, !http2_only))
}

/// A [`NewEndpoint`] factory that shares one HTTP client across endpoints;
/// see the [module docs](self).
#[derive(Debug, Clone)]
pub struct HttpEndpoints<S> {
    client: S,
}

impl<S> HttpEndpoints<S> {
    /// Wraps `client`; it is cloned once per endpoint.
    pub fn new(client: S) -> Self {
        HttpEndpoints { client }
    }
}

impl<S> NewEndpoint for HttpEndpoints<S>
where
    S: Clone + Send + 'static,
{
    type Service = HttpEndpoint<S>;
    type Error = EndpointError;

    fn new_endpoint(&mut self, endpoint: &Endpoint) -> Result<HttpEndpoint<S>, EndpointError> {
        let authority: Authority = endpoint
            .address()
            .to_string()
            .parse()
            .map_err(|_| EndpointError::not_an_authority(endpoint.address()))?;
        Ok(HttpEndpoint {
            client: self.client.clone(),
            authority,
        })
    }
}

/// One endpoint's view of a shared HTTP client: rewrites the URI authority to
/// the endpoint and keeps the logical one in `Host`.
#[derive(Debug, Clone)]
pub struct HttpEndpoint<S> {
    client: S,
    authority: Authority,
}

impl<S> HttpEndpoint<S> {
    /// The authority requests are sent to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl<S, B> Service<Request<B>> for HttpEndpoint<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        let (mut parts, body) = req.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        if let Some(logical) = uri.authority.take()
            && !parts.headers.contains_key(http::header::HOST)
            && let Ok(host) = HeaderValue::from_str(logical.as_str())
        {
            parts.headers.insert(http::header::HOST, host);
        }
        uri.scheme = Some(uri.scheme.unwrap_or(Scheme::HTTP));
        uri.authority = Some(self.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path are all set: from_parts cannot fail.
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
        self.client.call(Request::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    fn echo()
    -> impl Service<Request<()>, Response = (Uri, Option<String>), Error = Infallible> + Clone {
        service_fn(|req: Request<()>| async move {
            let host = req
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_owned());
            Ok::<_, Infallible>((req.uri().clone(), host))
        })
    }

    async fn send(ep: &str, req: Request<()>) -> (Uri, Option<String>) {
        let mut f = HttpEndpoints::new(echo());
        let svc = f.new_endpoint(&Endpoint::parse(ep).unwrap()).unwrap();
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn rewrites_authority_and_keeps_logical_host() {
        let (uri, host) = send(
            "[::1]:9000",
            Request::get("https://users:443/a?b").body(()).unwrap(),
        )
        .await;
        assert_eq!(uri, "https://[::1]:9000/a?b");
        assert_eq!(host.as_deref(), Some("users:443"));
    }

    #[tokio::test]
    async fn keeps_an_explicit_host_and_fills_origin_form() {
        let req = Request::get("/only/path")
            .header("host", "explicit")
            .body(())
            .unwrap();
        let (uri, host) = send("127.0.0.1:80", req).await;
        assert_eq!(uri, "http://127.0.0.1:80/only/path");
        assert_eq!(host.as_deref(), Some("explicit"));

        let req = Request::get("http://svc").body(()).unwrap();
        let (uri, _) = send("127.0.0.1:80", req).await;
        assert_eq!(uri, "http://127.0.0.1:80/");
    }
}
