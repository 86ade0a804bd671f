//! Response classification: the one place that decides whether an outcome is
//! a success or a failure, and whether it may be retried.
//!
//! Every layer that cares about outcomes asks a [`Classify`] rather than
//! looking at status codes itself: the balancer's load (failures are penalty
//! latency samples), and in later layers retries, breakers, failure accrual and
//! metrics. Change the classifier and all of them agree.
//!
//! [`HttpClassify`] is the default for `http::Response<B>`:
//!
//! | outcome | class | retry |
//! |---|---|---|
//! | 1xx–4xx except 429 | success | never |
//! | 429 Too Many Requests | overloaded: a failure for load, not for ejection runs | never (configurable) |
//! | 500, 501, 505.. | failure | never |
//! | 502, 503, 504 | failure | idempotent methods |
//! | connection refused / connect error | failure | any method (nothing was sent) |
//! | other transport errors (reset, EOF, timeouts) | failure | idempotent methods |
//!
//! `Retry-After` (delta-seconds or an HTTP date) on a 429 or 503 is parsed
//! here too, capped at [`HttpClassify::max_retry_after`], so the balancer can
//! mark the endpoint busy until then.
//!
//! ```
//! use palisade::classify::{Classify, HttpClassify, Retry};
//!
//! let classify = HttpClassify::default();
//! let rsp = http::Response::builder().status(503).header("retry-after", "2").body(()).unwrap();
//! let class = classify.classify_response(&rsp);
//! assert!(class.is_failure());
//! assert_eq!(class.retry(), Retry::IfIdempotent);
//! assert_eq!(class.retry_after(), Some(std::time::Duration::from_secs(2)));
//! ```

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, StatusCode};

/// Whether an outcome counts as a success or a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The endpoint did its job (this includes most 4xx: the caller's fault).
    Success,
    /// The endpoint failed: it should get less traffic, and repeated
    /// failures eject it.
    Failure,
    /// The endpoint refused the request for load (429): a failure for load
    /// and success-rate purposes, but not a sign that it is broken, so it
    /// does not count toward consecutive failures.
    Overloaded,
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Never retry.
    Never,
    /// Retry only requests whose method is idempotent (RFC 9110 §9.2.2), since
    /// the server may have acted on the first attempt.
    IfIdempotent,
    /// Retry any request: it provably never reached the server.
    Always,
}

/// The classification of one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Class {
    outcome: Outcome,
    retry: Retry,
    retry_after: Option<Duration>,
}

impl Class {
    /// A success, never retried.
    pub const SUCCESS: Class = Class {
        outcome: Outcome::Success,
        retry: Retry::Never,
        retry_after: None,
    };

    /// A failure with the given retry rule.
    pub const fn failure(retry: Retry) -> Class {
        Class {
            outcome: Outcome::Failure,
            retry,
            retry_after: None,
        }
    }

    /// An overload refusal (429) with the given retry rule.
    pub const fn overloaded() -> Class {
        Class {
            outcome: Outcome::Overloaded,
            retry: Retry::Never,
            retry_after: None,
        }
    }

    /// The same class with another retry rule.
    pub const fn with_retry(mut self, retry: Retry) -> Class {
        self.retry = retry;
        self
    }

    /// The same class, with a server-requested pause before this endpoint is
    /// used again.
    pub const fn with_retry_after(mut self, after: Option<Duration>) -> Class {
        self.retry_after = after;
        self
    }

    /// Success or failure.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether the outcome is a failure (overload included).
    pub fn is_failure(&self) -> bool {
        self.outcome != Outcome::Success
    }

    /// Whether the request may be retried.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// How long the server asked us to stay away (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// Decides the [`Class`] of a response or an error.
///
/// Implementations must be cheap: they run once per attempt. Errors are given
/// as `dyn Error` so that a classifier can walk the `source()` chain of any
/// client's error type.
///
/// ```
/// use palisade::classify::{Class, Classify, Retry};
///
/// /// Treats every `Err` as a retryable failure and every `Ok` as success.
/// #[derive(Clone)]
/// struct OkIsGood;
///
/// impl<T> Classify<T> for OkIsGood {
///     fn classify_response(&self, _: &T) -> Class { Class::SUCCESS }
///     fn classify_error(&self, _: &(dyn std::error::Error + 'static)) -> Class {
///         Class::failure(Retry::IfIdempotent)
///     }
/// }
/// # let _ = OkIsGood;
/// ```
pub trait Classify<Rsp>: Clone + Send + Sync + 'static {
    /// Classifies a response the endpoint returned.
    fn classify_response(&self, rsp: &Rsp) -> Class;
    /// Classifies an error the endpoint's service returned.
    fn classify_error(&self, err: &(dyn StdError + 'static)) -> Class;
}

/// The default HTTP classifier; see the [module docs](self) for its table.
///
/// ```
/// use http::StatusCode;
/// use palisade::classify::HttpClassify;
/// use std::time::Duration;
///
/// // Also retry 500s, and honour Retry-After up to 10 s.
/// let classify = HttpClassify::default()
///     .retryable_statuses([StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY,
///                          StatusCode::SERVICE_UNAVAILABLE, StatusCode::GATEWAY_TIMEOUT])
///     .max_retry_after(Duration::from_secs(10));
/// # let _ = classify;
/// ```
#[derive(Debug, Clone)]
pub struct HttpClassify {
    retryable: Arc<[StatusCode]>,
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

    /// Caps how long a `Retry-After` header may keep an endpoint busy.
    /// Default 60 s; longer values are clamped, so a hostile or buggy header
    /// cannot take an endpoint out for a day.
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
            Class {
                retry,
                ..Class::SUCCESS
            }
        }
    }
}

impl<B> Classify<http::Response<B>> for HttpClassify {
    fn classify_response(&self, rsp: &http::Response<B>) -> Class {
        let status = rsp.status();
        let class = self.classify_status(status);
        if (status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE)
            && let Some(value) = rsp.headers().get(http::header::RETRY_AFTER)
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
}

/// Classifies a transport error by walking its `source()` chain: a refused
/// connection (or a hyper-util connect error) never reached the server and may
/// be retried for any method; anything else may only be retried when the
/// method is idempotent.
pub fn classify_transport_error(err: &(dyn StdError + 'static)) -> Class {
    if never_sent(err) {
        Class::failure(Retry::Always)
    } else {
        Class::failure(Retry::IfIdempotent)
    }
}

/// Whether an error proves the request never left this process.
fn never_sent(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        #[cfg(feature = "http")]
        if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && legacy.is_connect()
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Parses a `Retry-After` value: delta-seconds (`"120"`) or an HTTP date.
///
/// Returns `None` for anything malformed. A date in the past is `Some(ZERO)`.
///
/// ```
/// use http::HeaderValue;
/// use palisade::classify::parse_retry_after;
/// use std::time::{Duration, SystemTime};
///
/// let now = SystemTime::now();
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("3"), now), Some(Duration::from_secs(3)));
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("soon"), now), None);
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurd values rather than overflow; callers clamp anyway.
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a method is idempotent (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsp(status: u16) -> http::Response<()> {
        http::Response::builder().status(status).body(()).unwrap()
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
    fn retry_after_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        let v = HeaderValue::from_str(&later).unwrap();
        assert_eq!(parse_retry_after(&v, now), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        let v = HeaderValue::from_str(&earlier).unwrap();
        assert_eq!(parse_retry_after(&v, now), Some(Duration::ZERO));
    }

    #[test]
    fn transport_errors() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no");
        assert_eq!(classify_transport_error(&refused).retry(), Retry::Always);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(
            classify_transport_error(&reset).retry(),
            Retry::IfIdempotent
        );

        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = Wrapper(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "no",
        ));
        assert_eq!(
            classify_transport_error(&wrapped).retry(),
            Retry::Always,
            "walks the source chain"
        );
    }

    mod adversarial {
        use super::super::*;
        use proptest::prelude::*;
        use std::time::{Duration, SystemTime, UNIX_EPOCH};

        fn now() -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(1_800_000_000)
        }

        proptest! {
            #[test]
            fn retry_after_never_panics_on_any_bytes(
                bytes in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                    let _ = parse_retry_after(&v, now());
                    // Through the classifier too: the cap always holds.
                    let rsp = http::Response::builder()
                        .status(503)
                        .header(http::header::RETRY_AFTER, v)
                        .body(())
                        .unwrap();
                    let class = HttpClassify::default().classify_response(&rsp);
                    if let Some(after) = class.retry_after() {
                        prop_assert!(after <= Duration::from_secs(60));
                    }
                }
            }

            #[test]
            fn delta_seconds_parse_exactly_or_saturate(
                digits in "[0-9]{1,40}", pad in "[ \t]{0,3}",
            ) {
                let text = format!("{pad}{digits}{pad}");
                let v = HeaderValue::from_str(&text).unwrap();
                let parsed = parse_retry_after(&v, now()).expect("digits always parse");
                match digits.parse::<u64>() {
                    Ok(secs) => prop_assert_eq!(parsed, Duration::from_secs(secs)),
                    Err(_) => prop_assert_eq!(parsed, Duration::from_secs(u64::MAX)),
                }
            }

            #[test]
            fn dates_round_trip_and_the_past_is_zero(offset in -100_000i64..100_000) {
                let when = if offset >= 0 {
                    now() + Duration::from_secs(offset as u64)
                } else {
                    now() - Duration::from_secs(offset.unsigned_abs())
                };
                let v = HeaderValue::from_str(&httpdate::fmt_http_date(when)).unwrap();
                let parsed = parse_retry_after(&v, now()).expect("a valid HTTP date parses");
                prop_assert_eq!(parsed, Duration::from_secs(offset.max(0) as u64));
            }

            #[test]
            fn signs_fractions_and_garbage_are_rejected(
                text in "[-+][0-9]{1,5}|[0-9]{1,5}\\.[0-9]{1,3}|[0-9]{1,3} ?[a-z]{1,5}[0-9]{0,3}",
            ) {
                let v = HeaderValue::from_str(&text).unwrap();
                prop_assert_eq!(parse_retry_after(&v, now()), None, "{:?}", text);
            }
        }
    }
}
