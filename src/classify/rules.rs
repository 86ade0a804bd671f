//! [`HttpClassify`]: the default rules, for HTTP and gRPC responses.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::grpc::{GrpcCodes, Pushback, is_grpc_content_type};
use super::{Class, Classify, End, GrpcCode, Retry, classify_transport_error, parse_retry_after};

/// The default classifier for HTTP and gRPC responses; see the
/// [module docs](super) for its tables.
///
/// ```
/// use http::StatusCode;
/// use palisade::classify::{GrpcCode, HttpClassify};
/// use std::time::Duration;
///
/// // Also retry 500s, and honour Retry-After up to 10 s; retry gRPC's
/// // RESOURCE_EXHAUSTED as well as UNAVAILABLE.
/// let classify = HttpClassify::default()
///     .retryable_statuses([StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY,
///                          StatusCode::SERVICE_UNAVAILABLE, StatusCode::GATEWAY_TIMEOUT])
///     .max_retry_after(Duration::from_secs(10))
///     .retryable_grpc_codes([GrpcCode::Unavailable, GrpcCode::ResourceExhausted]);
/// # let _ = classify;
/// ```
#[derive(Debug, Clone)]
pub struct HttpClassify {
    retryable: Arc<[StatusCode]>,
    retryable_grpc: GrpcCodes,
    max_retry_after: Duration,
}

impl Default for HttpClassify {
    fn default() -> Self {
        HttpClassify {
            retryable: Arc::new([
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ]),
            retryable_grpc: [GrpcCode::Unavailable].into_iter().collect(),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl HttpClassify {
    /// Replaces the statuses that may be retried (for idempotent methods).
    /// Default: 502, 503, 504. A listed 429 or 5xx is retried for
    /// idempotent methods; any other status is a success, so listing it has
    /// no effect (settings refuse it: see
    /// [`RetrySettings`](crate::retry::RetrySettings)).
    pub fn retryable_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.retryable = statuses.into_iter().collect();
        self
    }

    /// [`retryable_statuses`](Self::retryable_statuses) from numbers, as
    /// settings write them; numbers that are not statuses are skipped
    /// (validated settings have none).
    pub fn retryable_codes(self, codes: &[u16]) -> Self {
        self.retryable_statuses(codes.iter().filter_map(|c| StatusCode::from_u16(*c).ok()))
    }

    /// Replaces the gRPC codes that may be retried when they arrive in a
    /// Trailers-Only response (for any method: gRPC's retry rule, gRFC A6).
    /// Default: UNAVAILABLE. Only failure codes and RESOURCE_EXHAUSTED are
    /// failures; listing another code has no effect (settings refuse it).
    pub fn retryable_grpc_codes(mut self, codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        self.retryable_grpc = codes.into_iter().collect();
        self
    }

    /// Caps how long a `Retry-After` or `grpc-retry-pushback-ms` header may
    /// keep an endpoint busy. Default 60 s; longer values are clamped, so a
    /// hostile or buggy header cannot take an endpoint out for a day.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Classifies a status code (without headers).
    pub fn classify_status(&self, status: StatusCode) -> Class {
        let retry = if self.retryable.contains(&status) {
            Retry::IfIdempotent
        } else {
            Retry::Never
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            Class::overloaded().with_retry(retry)
        } else if status.is_server_error() {
            Class::failure(retry)
        } else {
            Class::SUCCESS.with_retry(retry)
        }
    }

    /// Classifies a gRPC status (without headers): see the module's table.
    pub fn classify_grpc(&self, code: GrpcCode) -> Class {
        let class = if code == GrpcCode::ResourceExhausted {
            Class::overloaded()
        } else if GrpcCodes::FAILURES.contains(code) || code == GrpcCode::Cancelled {
            // CANCELLED that a server sends is its own giving up: tonic's
            // servers answer an expired `grpc-timeout` with it, so a server
            // that let the deadline run out would otherwise look healthy.
            // (A caller that cancels sees no status: it dropped the call.)
            Class::failure(Retry::Never)
        } else {
            Class::SUCCESS
        };
        let retry = if class.is_failure() && self.retryable_grpc.contains(code) {
            Retry::Always
        } else {
            Retry::Never
        };
        class.with_retry(retry).with_grpc_status(Some(code))
    }

    /// A Trailers-Only gRPC response: the status is in the head, and may be
    /// retried, subject to `grpc-retry-pushback-ms`.
    fn classify_grpc_head(&self, code: GrpcCode, headers: &http::HeaderMap) -> Class {
        let class = self.classify_grpc(code);
        match Pushback::from_headers(headers) {
            None => class,
            Some(Pushback::Never) => class.with_retry(Retry::Never),
            Some(Pushback::After(after)) => {
                class.with_retry_after(Some(after.min(self.max_retry_after)))
            }
        }
    }
}

impl<B> Classify<http::Response<B>> for HttpClassify {
    fn classify_response(&self, rsp: &http::Response<B>) -> Class {
        let status = rsp.status();
        let headers = rsp.headers();
        if status == StatusCode::OK && is_grpc_content_type(headers) {
            return match GrpcCode::from_headers(headers) {
                Some(code) => self.classify_grpc_head(code, headers),
                None => Class::SUCCESS.awaiting_trailers(),
            };
        }
        let class = self.classify_status(status);
        if (status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE)
            && let Some(value) = headers.get(http::header::RETRY_AFTER)
        {
            let after = parse_retry_after(value, SystemTime::now());
            if after.is_none() {
                tracing::debug!(?value, "ignoring malformed Retry-After header");
            }
            return class.with_retry_after(after.map(|d| d.min(self.max_retry_after)));
        }
        class
    }

    fn classify_error(&self, err: &(dyn StdError + 'static)) -> Class {
        classify_transport_error(err)
    }

    fn classify_end(&self, head: Class, end: &End<'_>) -> Class {
        let class = match *end {
            End::Error(e) => classify_transport_error(e),
            End::Dropped => head,
            End::Complete(_) if !head.is_awaiting_trailers() => head,
            End::Complete(trailers) => {
                // A gRPC stream: its status is in the trailers; without
                // one the caller's gRPC library reports UNKNOWN.
                let code = trailers.and_then(GrpcCode::from_headers);
                self.classify_grpc(code.unwrap_or(GrpcCode::Unknown))
            }
        };
        Class {
            awaiting_trailers: false,
            ..class
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn rsp(status: u16) -> http::Response<()> {
        http::Response::builder().status(status).body(()).unwrap()
    }

    fn grpc(head: &[(&str, &str)]) -> http::Response<()> {
        let mut b = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc");
        for (k, v) in head {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    /// The end-of-stream verdict on an `http::Response<()>`'s head.
    fn end(c: &HttpClassify, head: Class, e: &End<'_>) -> Class {
        Classify::<http::Response<()>>::classify_end(c, head, e)
    }

    fn trailers(code: &str) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        t
    }

    #[test]
    fn default_table() {
        let c = HttpClassify::default();
        for s in [200, 204, 301, 400, 404, 499] {
            assert_eq!(c.classify_response(&rsp(s)), Class::SUCCESS, "{s}");
        }
        for s in [500, 501, 505, 599] {
            assert_eq!(
                c.classify_response(&rsp(s)),
                Class::failure(Retry::Never),
                "{s}"
            );
        }
        for s in [502, 503, 504] {
            assert_eq!(
                c.classify_response(&rsp(s)),
                Class::failure(Retry::IfIdempotent),
                "{s}"
            );
        }
        let overloaded = c.classify_response(&rsp(429));
        assert_eq!(overloaded, Class::overloaded());
        assert!(overloaded.is_failure());
    }

    /// The retryable statuses are replaced, not added to: from numbers as
    /// settings give them (those that are not statuses skipped).
    #[test]
    fn retryable_statuses_replace_the_defaults() {
        let c = HttpClassify::default().retryable_codes(&[500, 1000]);
        assert_eq!(
            c.classify_response(&rsp(500)),
            Class::failure(Retry::IfIdempotent)
        );
        assert_eq!(c.classify_response(&rsp(503)), Class::failure(Retry::Never));
    }

    #[test]
    fn retry_after_on_429_and_503_only() {
        let c = HttpClassify::default().max_retry_after(Duration::from_secs(30));
        let with = |status: u16, v: &str| {
            http::Response::builder()
                .status(status)
                .header("retry-after", v)
                .body(())
                .unwrap()
        };
        assert_eq!(
            c.classify_response(&with(429, "5")).retry_after(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            c.classify_response(&with(503, "99999999999999999999999"))
                .retry_after(),
            Some(Duration::from_secs(30)),
            "clamped"
        );
        assert_eq!(c.classify_response(&with(500, "5")).retry_after(), None);
        assert_eq!(c.classify_response(&with(503, "-1")).retry_after(), None);
        assert_eq!(c.classify_response(&with(503, "")).retry_after(), None);
    }

    #[test]
    fn http_end_of_stream_keeps_the_head_unless_the_body_fails() {
        let c = HttpClassify::default();
        let head = c.classify_response(&rsp(200));
        assert_eq!(end(&c, head, &End::Complete(None)), Class::SUCCESS);
        assert_eq!(end(&c, head, &End::Dropped), Class::SUCCESS);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let failed = end(&c, head, &End::Error(&reset));
        assert!(failed.is_failure());
        let head = c.classify_response(&rsp(503));
        assert_eq!(end(&c, head, &End::Complete(None)), head);
    }

    #[test]
    fn grpc_trailers_only_heads_are_judged_and_maybe_retried() {
        let c = HttpClassify::default();
        let unavailable = c.classify_response(&grpc(&[("grpc-status", "14")]));
        assert!(unavailable.is_failure());
        assert_eq!(unavailable.retry(), Retry::Always);
        assert_eq!(unavailable.grpc_status(), Some(GrpcCode::Unavailable));
        for code in ["1", "2", "4", "13", "15"] {
            let class = c.classify_response(&grpc(&[("grpc-status", code)]));
            assert_eq!(class.outcome(), super::super::Outcome::Failure, "{code}");
            assert_eq!(class.retry(), Retry::Never, "{code}");
        }
        let exhausted = c.classify_response(&grpc(&[("grpc-status", "8")]));
        assert_eq!(exhausted.outcome(), super::super::Outcome::Overloaded);
        for code in ["0", "3", "5", "7", "12", "16"] {
            let class = c.classify_response(&grpc(&[("grpc-status", code)]));
            assert!(!class.is_failure(), "{code}: the caller's affair");
        }
        // Pushback: a wait (clamped), or no retry at all.
        let c = c.max_retry_after(Duration::from_secs(1));
        let wait = c.classify_response(&grpc(&[
            ("grpc-status", "14"),
            ("grpc-retry-pushback-ms", "250"),
        ]));
        assert_eq!(wait.retry(), Retry::Always);
        assert_eq!(wait.retry_after(), Some(Duration::from_millis(250)));
        let long = c.classify_response(&grpc(&[
            ("grpc-status", "14"),
            ("grpc-retry-pushback-ms", "99999999"),
        ]));
        assert_eq!(long.retry_after(), Some(Duration::from_secs(1)));
        for never in ["-1", "x", ""] {
            let class = c.classify_response(&grpc(&[
                ("grpc-status", "14"),
                ("grpc-retry-pushback-ms", never),
            ]));
            assert_eq!(class.retry(), Retry::Never, "{never:?}");
        }
        // Configurable: RESOURCE_EXHAUSTED retried too; UNAVAILABLE not.
        let c = HttpClassify::default().retryable_grpc_codes([GrpcCode::ResourceExhausted]);
        let class = c.classify_response(&grpc(&[("grpc-status", "8")]));
        assert_eq!(class.retry(), Retry::Always);
        let class = c.classify_response(&grpc(&[("grpc-status", "14")]));
        assert_eq!(class.retry(), Retry::Never);
    }

    #[test]
    fn grpc_streams_are_judged_by_their_trailers() {
        let c = HttpClassify::default();
        let head = c.classify_response(&grpc(&[]));
        assert!(!head.is_failure(), "committed: nothing to retry");
        assert_eq!(head.retry(), Retry::Never);
        assert!(head.is_awaiting_trailers());

        let ok = end(&c, head, &End::Complete(Some(&trailers("0"))));
        assert_eq!(ok.grpc_status(), Some(GrpcCode::Ok));
        assert!(!ok.is_failure());

        let internal = end(&c, head, &End::Complete(Some(&trailers("13"))));
        assert!(internal.is_failure());
        assert_eq!(internal.grpc_status(), Some(GrpcCode::Internal));

        let missing = end(&c, head, &End::Complete(None));
        assert_eq!(missing.grpc_status(), Some(GrpcCode::Unknown));
        assert!(missing.is_failure());
        let garbage = end(&c, head, &End::Complete(Some(&trailers("x"))));
        assert_eq!(garbage.grpc_status(), Some(GrpcCode::Unknown));

        let dropped = end(&c, head, &End::Dropped);
        assert!(!dropped.is_failure(), "the caller stopped reading");
        assert!(!dropped.is_awaiting_trailers());
    }

    #[test]
    fn grpc_needs_its_content_type_and_a_200() {
        let c = HttpClassify::default();
        let plain = http::Response::builder()
            .status(200)
            .header("grpc-status", "14")
            .body(())
            .unwrap();
        assert_eq!(c.classify_response(&plain), Class::SUCCESS);
        let proxy_503 = http::Response::builder()
            .status(503)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        assert_eq!(
            c.classify_response(&proxy_503),
            Class::failure(Retry::IfIdempotent),
            "judged as HTTP"
        );
    }
}
