//! What the proxy checks and settles in a request before routing it, so
//! that routing and forwarding see one and the same request:
//!
//! - CONNECT is refused (501): the proxy forwards requests, it does not
//!   open tunnels;
//! - a target with a scheme other than `http` is refused (400): the
//!   proxy's upstreams are plain HTTP, and an `https://` target would be
//!   sent on in clear text or refused by the connector;
//! - two `Host` headers are refused (400, RFC 9110 §7.2);
//! - an absolute-form target's or an HTTP/2 request's authority becomes
//!   `Host` (RFC 9112 §3.2.2), so the host the request is routed by is the
//!   host the backend is asked for;
//! - hop-by-hop headers go, those `Connection` names included (never
//!   `Host`); a `Connection` header that cannot be read is refused (400);
//! - `x-forwarded-for` gets the client's address.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::classify::GrpcCode;

/// Why a request is answered by the proxy itself instead of being routed:
/// a status (or gRPC code), a reason for `x-palisade-error`, a text.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) code: GrpcCode,
    pub(crate) reason: &'static str,
    pub(crate) text: String,
}

fn refuse(status: StatusCode, code: GrpcCode, reason: &'static str, text: &str) -> Refusal {
    Refusal {
        status,
        code,
        reason,
        text: text.to_owned(),
    }
}

/// Checks and settles `req` (see the [module docs](self)); `Err` says how
/// to answer instead.
pub(crate) fn prepare(req: &mut Request<Incoming>, remote: SocketAddr) -> Result<(), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(refuse(
            StatusCode::NOT_IMPLEMENTED,
            GrpcCode::Unimplemented,
            "connect-unsupported",
            "CONNECT is not supported: this proxy forwards requests, it does not open tunnels",
        ));
    }
    if let Some(scheme) = req.uri().scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            GrpcCode::InvalidArgument,
            "unsupported-scheme",
            &format!("the target's scheme {scheme:?} is not supported: only http"),
        ));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            GrpcCode::InvalidArgument,
            "duplicate-host",
            "more than one Host header",
        ));
    }
    if let Some(authority) = req.uri().authority() {
        // The target's authority is the host asked for (RFC 9112 §3.2.2):
        // it replaces any `Host`, for routing and for the backend alike.
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid_host())?;
        req.headers_mut().insert(header::HOST, host);
    }
    if host_of(req).is_err() {
        return Err(invalid_host());
    }
    let headers = req.headers_mut();
    if strip_hop_by_hop(headers).is_err() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            GrpcCode::InvalidArgument,
            "invalid-connection",
            "the Connection header is not visible ASCII",
        ));
    }
    let forwarded = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", remote.ip()),
        None => remote.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::try_from(forwarded) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    Ok(())
}

fn invalid_host() -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        GrpcCode::InvalidArgument,
        "invalid-host",
        "invalid Host header",
    )
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header
/// names, whatever their case. `TE: trailers` is the one kept: a proxy may
/// forward it (RFC 9110 §7.6.1, the only `TE` HTTP/2 allows), and gRPC
/// servers refuse a request without it; every other `TE` value is the
/// client's business with us. `Host` is never removed, whatever
/// `Connection` names: the next hop must know which host is asked for.
///
/// A `Connection` value that is not visible ASCII cannot be read, so what
/// it names cannot be removed: `Err`, after removing the standard set.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) -> Result<(), InvalidConnection> {
    let trailers = headers.get_all(header::TE).iter().any(|value| {
        value.to_str().unwrap_or("").split(',').any(|token| {
            let coding = token.split(';').next().unwrap_or("").trim();
            coding.eq_ignore_ascii_case("trailers")
        })
    });
    // Names beyond the standard set are rare: `Connection: keep-alive` or
    // `close` (on nearly every HTTP/1.1 response) allocate nothing here.
    let mut named: Vec<HeaderName> = Vec::new();
    let mut unreadable = false;
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else {
            unreadable = true;
            continue;
        };
        for token in text.split(',') {
            let token = token.trim();
            let known = token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case(header::HOST.as_str())
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()));
            if !known && let Ok(name) = HeaderName::try_from(token) {
                named.push(name);
            }
        }
    }
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if unreadable {
        Err(InvalidConnection)
    } else {
        Ok(())
    }
}

/// A `Connection` header that is not visible ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidConnection;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The request's host, from the URI's authority or the `Host` header
/// (after [`prepare`] they agree), without a port; `Err` when the `Host`
/// header is not a valid authority (RFC 3986 `host [ ":" port ]`).
/// Borrowed: routing allocates nothing.
pub(crate) fn host_of(req: &Request<Incoming>) -> Result<Option<&str>, ()> {
    if let Some(a) = req.uri().authority() {
        return Ok(Some(a.host()));
    }
    match req.headers().get(header::HOST) {
        None => Ok(None),
        Some(v) => split_host(v.to_str().map_err(|_| ())?).map(Some),
    }
}

/// The host part of a `Host` header value, checked against RFC 3986: an
/// IP literal in brackets, or registered-name / IPv4 characters, then an
/// optional numeric port.
pub(crate) fn split_host(value: &str) -> Result<&str, ()> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let end = rest.find(']').ok_or(())?;
        let literal = &rest[..end];
        let valid = !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        let port = match &rest[end + 1..] {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(())?),
        };
        if !valid {
            return Err(());
        }
        (&value[..end + 2], port)
    } else {
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        };
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
        if !valid {
            return Err(());
        }
        (host, port)
    };
    match port {
        Some(p) if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) => Err(()),
        _ => Ok(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_are_checked_and_split_without_allocating() {
        assert_eq!(split_host("example.com"), Ok("example.com"));
        assert_eq!(split_host("example.com:8080"), Ok("example.com"));
        assert_eq!(split_host("127.0.0.1:80"), Ok("127.0.0.1"));
        assert_eq!(split_host("[::1]:4140"), Ok("[::1]"));
        assert_eq!(split_host("[::1]"), Ok("[::1]"));
        for bad in [
            "",
            ":80",
            "exa mple.com",
            "a:b",
            "a:123456",
            "[::1",
            "[]",
            "[::1]x",
            "[zz]",
            "a/b",
            "a@b",
            "a:80:80",
        ] {
            assert_eq!(split_host(bad), Err(()), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Private, close"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert_eq!(strip_hop_by_hop(&mut h), Ok(()));
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn te_trailers_is_forwarded_and_nothing_else_of_te() {
        let forwarded = |te: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static("TE"));
            h.insert(header::TE, HeaderValue::from_static(te));
            assert_eq!(strip_hop_by_hop(&mut h), Ok(()));
            assert!(h.get(header::CONNECTION).is_none());
            h.get(header::TE).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(forwarded("trailers").as_deref(), Some("trailers"));
        assert_eq!(
            forwarded("gzip, Trailers;q=0.5").as_deref(),
            Some("trailers")
        );
        assert_eq!(forwarded("gzip"), None);
        assert_eq!(forwarded("trailersx"), None);
    }

    #[test]
    fn connection_names_are_stripped_in_any_case_but_never_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Secret, HOST, keep-alive"),
        );
        assert_eq!(strip_hop_by_hop(&mut h), Ok(()));
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key(header::CONNECTION));
        assert_eq!(h[header::HOST], "app");

        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-secret, \xe9t\xe9").unwrap(),
        );
        assert_eq!(strip_hop_by_hop(&mut h), Err(InvalidConnection));
        assert!(
            !h.contains_key(header::CONNECTION),
            "the standard set still goes"
        );
    }
}
