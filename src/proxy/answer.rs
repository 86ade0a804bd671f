//! The proxy's own answers: when it cannot forward a request, it says why,
//! in the request's own dialect.
//!
//! An HTTP request gets a status (`503`, `504`, …), a one-line text body
//! and [`ERROR_HEADER`] naming the reason. The text never carries an
//! endpoint's address or the inner client's error chain: those are logged
//! (at debug), not shown to whoever sent the request, unless
//! `server.verbose_errors` is on (for debugging), when the text is the
//! whole error with its chain. A gRPC request
//! (`content-type: application/grpc…`) gets what a gRPC client can read: a
//! Trailers-Only response, `200` with `grpc-status` and a `grpc-message`
//! naming the reason in its head and no body, because a gRPC client turns
//! any other status into a vague UNKNOWN or UNAVAILABLE.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};

use super::server::{ERROR_HEADER, ProxyBody};
use crate::classify::{
    GRPC_MESSAGE, GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS, GrpcCode, is_grpc_content_type,
};
use crate::{Error, Limit};

/// How the proxy answers for itself: in HTTP, or in gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Http,
    Grpc,
}

impl Dialect {
    /// A request's dialect, by its `content-type`.
    pub(crate) fn of<B>(req: &Request<B>) -> Dialect {
        if is_grpc_content_type(req.headers()) {
            Dialect::Grpc
        } else {
            Dialect::Http
        }
    }
}

/// One of the proxy's own answers: `status` (HTTP) or `code` (gRPC), with
/// a reason for [`ERROR_HEADER`] and a text for the body or `grpc-message`.
pub(crate) fn own(
    dialect: Dialect,
    status: StatusCode,
    code: GrpcCode,
    reason: &'static str,
    text: String,
) -> Response<ProxyBody> {
    let mut rsp = match dialect {
        Dialect::Http => {
            let mut rsp = Response::new(Either::Right(Full::new(Bytes::from(text + "\n"))));
            *rsp.status_mut() = status;
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            rsp
        }
        Dialect::Grpc => {
            let mut rsp = Response::new(Either::Right(Full::default()));
            let headers = rsp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(GRPC_STATUS, code.header_value());
            if let Ok(message) = HeaderValue::try_from(percent_encode(&text)) {
                headers.insert(GRPC_MESSAGE, message);
            }
            rsp
        }
    };
    rsp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(reason));
    rsp
}

/// A typed error as an answer naming the reason; its text is the reason
/// in words, or, when `verbose`, the error's whole chain.
pub(crate) fn error_response(
    dialect: Dialect,
    service: &str,
    e: &Error,
    verbose: bool,
) -> Response<ProxyBody> {
    let (status, code, reason) = match e {
        Error::NoEndpoints { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            GrpcCode::Unavailable,
            "no-endpoints",
        ),
        Error::CircuitOpen { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            GrpcCode::Unavailable,
            "circuit-open",
        ),
        Error::Overloaded { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            GrpcCode::ResourceExhausted,
            "overloaded",
        ),
        Error::DeadlineExceeded { .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            GrpcCode::DeadlineExceeded,
            "deadline-exceeded",
        ),
        // The client's own request body failed (an aborted upload, a bad
        // chunked encoding): its fault, and no backend's.
        Error::Caller { .. } => (
            StatusCode::BAD_REQUEST,
            GrpcCode::Cancelled,
            "bad-request-body",
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            GrpcCode::Unavailable,
            "upstream-error",
        ),
    };
    // The whole chain (endpoint addresses, the inner client's errors) is
    // for the log; the client is told palisade's own reason, or the chain
    // with `server.verbose_errors`.
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !chain.ends_with(&cause_text) {
            chain = format!("{chain}: {cause_text}");
        }
        source = cause.source();
    }
    tracing::debug!(service, error = %chain, "answering with an error");
    let told = match e {
        _ if verbose => chain,
        Error::Inner { .. } => format!("service {service:?}: the upstream request failed"),
        Error::Caller { .. } => {
            format!("service {service:?}: the request body broke off or was malformed")
        }
        // The typed refusals name the limit or the wait, nothing internal.
        refusal => refusal.to_string(),
    };
    let mut rsp = own(dialect, status, code, reason, told);
    if let Some(Limit::Rate { retry_in, .. }) = e.limit() {
        let (name, value) = match dialect {
            Dialect::Http => (
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_in)),
            ),
            Dialect::Grpc => (
                header::HeaderName::from_static(GRPC_RETRY_PUSHBACK_MS),
                HeaderValue::from(u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX)),
            ),
        };
        rsp.headers_mut().insert(name, value);
    }
    rsp
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`
/// itself, as `%XX` (the gRPC HTTP/2 protocol's percent-encoding).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_at_least_one() {
        for (wait, secs) in [
            (Duration::ZERO, 1),
            (Duration::from_millis(1), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(90), 90),
        ] {
            assert_eq!(retry_after_secs(wait), secs, "{wait:?}");
        }
    }

    #[test]
    fn grpc_requests_get_trailers_only_answers() {
        let req = Request::post("/echo.Echo/Say")
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap();
        assert_eq!(Dialect::of(&req), Dialect::Grpc);
        let e = Error::DeadlineExceeded {
            service: "users".into(),
            elapsed: Duration::from_secs(1),
        };
        let rsp = error_response(Dialect::Grpc, "users", &e, false);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["content-type"], "application/grpc");
        assert_eq!(rsp.headers()[GRPC_STATUS], "4");
        assert_eq!(rsp.headers()[ERROR_HEADER], "deadline-exceeded");
        let message = rsp.headers()[GRPC_MESSAGE].to_str().unwrap();
        assert!(message.contains("users"), "{message}");
        assert!(matches!(rsp.body(), Either::Right(b) if b.size_hint().exact() == Some(0)));

        let http = error_response(Dialect::Http, "users", &e, false);
        assert_eq!(http.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(!http.headers().contains_key(GRPC_STATUS));
    }

    #[tokio::test]
    async fn verbose_errors_show_the_whole_chain_and_only_then() {
        use http_body_util::BodyExt;
        let e = || Error::Inner {
            service: "users".into(),
            endpoint: None,
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connect to 10.0.0.7:8080: connection refused",
            )),
            retry_stop: None,
        };
        let text = async |dialect, verbose| {
            let rsp = error_response(dialect, "users", &e(), verbose);
            assert_eq!(rsp.headers()[ERROR_HEADER], "upstream-error");
            match rsp.headers().get(GRPC_MESSAGE) {
                Some(message) => message.to_str().unwrap().to_owned(),
                None => {
                    let body = rsp.into_body().collect().await.unwrap().to_bytes();
                    String::from_utf8(body.to_vec()).unwrap()
                }
            }
        };
        for dialect in [Dialect::Http, Dialect::Grpc] {
            let terse = text(dialect, false).await;
            assert!(terse.contains("service \"users\""), "{terse}");
            assert!(!terse.contains("10.0.0.7"), "{dialect:?}: {terse}");
            let verbose = text(dialect, true).await;
            assert!(
                verbose.starts_with("service \"users\": request"),
                "{verbose}"
            );
            assert!(
                verbose.contains("connect to 10.0.0.7:8080: connection refused"),
                "{dialect:?}: {verbose}"
            );
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("plain text: ok"), "plain text: ok");
        assert_eq!(percent_encode("50% ünï\n"), "50%25 %C3%BCn%C3%AF%0A");
    }
}
