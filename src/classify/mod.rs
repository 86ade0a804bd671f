//! Response classification: the one place that decides whether an outcome is
//! a success or a failure, and whether it may be retried.
//!
//! Every layer that cares about outcomes asks a [`Classify`] rather than
//! looking at status codes itself: retries and hedging, the balancer's load
//! and failure accrual, the breaker, throttling and the metrics. Change the
//! classifier and all of them agree.
//!
//! An outcome is judged twice, once for good:
//!
//! - **at the head** ([`Classify::classify_response`]): may this be retried
//!   now? Retries and hedging decide on this verdict alone; once a response's
//!   head is accepted, the call is committed.
//! - **at the end of the stream** ([`Classify::classify_end`]): the trailers
//!   arrived, the body ended, failed or was dropped ([`End`]). This is the
//!   verdict the balancer, the breaker, throttling and the metrics record.
//!   The [`eos`] module says how layers hear about the end.
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
//! | the body fails after the head (reset, truncated) | failure | — (committed) |
//!
//! and for gRPC responses (`content-type: application/grpc…`), by
//! `grpc-status`, read from the head (a Trailers-Only response) or from the
//! trailers:
//!
//! | `grpc-status` | class | retry |
//! |---|---|---|
//! | UNAVAILABLE in the head | failure | any method (configurable) |
//! | UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS | failure | never |
//! | CANCELLED (a server gave up: tonic's answer to an expired `grpc-timeout`; a caller that cancels sees no status) | failure | never |
//! | RESOURCE_EXHAUSTED | overloaded | never (configurable) |
//! | any other code (OK, NOT_FOUND, INVALID_ARGUMENT, …: the caller's affair) | success | never |
//! | none: the stream ended without a status | failure (UNKNOWN, as the caller's gRPC library reports it) | — |
//! | none: the caller dropped the stream first | the head's verdict (success) | — |
//!
//! Only a Trailers-Only response may be retried: gRPC commits a call once
//! response headers arrive (gRFC A6). `grpc-retry-pushback-ms` is honoured
//! like `Retry-After`; a negative or malformed value forbids the retry.
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

pub mod eos;
mod grpc;
mod rules;

pub use eos::{BodyStalled, End, Eos, EosBody, ResponseEos, WatchEos, WatchEosLayer};
pub use grpc::{
    GRPC_MESSAGE, GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS, GrpcCode, UnknownGrpcCode,
    is_grpc_content_type,
};
pub use rules::HttpClassify;

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use crate::error::{CallerError, Error};

use http::HeaderValue;

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
    /// The caller's own side failed: its request body stream failed or
    /// ended early (an aborted upload). Says nothing about the endpoint:
    /// no layer counts it for or against it, and it is never retried.
    Caller,
    /// This process ran out of something (file descriptors, ephemeral
    /// ports) before the request could be sent: our failure, not the
    /// endpoint's. Counted nowhere, never retried.
    Local,
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Never retry.
    Never,
    /// Retry only requests whose method is idempotent (RFC 9110 §9.2.2), since
    /// the server may have acted on the first attempt.
    IfIdempotent,
    /// Retry any request: it provably never reached the server, or the
    /// protocol says it was not processed (gRPC's UNAVAILABLE).
    Always,
}

/// The classification of one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Class {
    outcome: Outcome,
    retry: Retry,
    retry_after: Option<Duration>,
    grpc: Option<GrpcCode>,
    awaiting_trailers: bool,
    unreachable: bool,
}

impl Class {
    /// A success, never retried.
    pub const SUCCESS: Class = Class {
        outcome: Outcome::Success,
        retry: Retry::Never,
        retry_after: None,
        grpc: None,
        awaiting_trailers: false,
        unreachable: false,
    };

    /// A failure with the given retry rule.
    pub const fn failure(retry: Retry) -> Class {
        Class {
            outcome: Outcome::Failure,
            retry,
            ..Class::SUCCESS
        }
    }

    /// The endpoint could not be reached: its connect was refused or timed
    /// out, so nothing was sent. A failure that may be retried for any
    /// method, and that takes the endpoint out of the balancer's choice at
    /// once (failure accrual ejects it, and backs off).
    pub const fn unreachable() -> Class {
        Class {
            outcome: Outcome::Failure,
            retry: Retry::Always,
            unreachable: true,
            ..Class::SUCCESS
        }
    }

    /// An overload refusal (429) with the given retry rule.
    pub const fn overloaded() -> Class {
        Class {
            outcome: Outcome::Overloaded,
            ..Class::SUCCESS
        }
    }

    /// The caller's own failure ([`Outcome::Caller`]), never retried.
    pub const fn caller() -> Class {
        Class {
            outcome: Outcome::Caller,
            ..Class::SUCCESS
        }
    }

    /// A local resource ran out ([`Outcome::Local`]), never retried.
    pub const fn local() -> Class {
        Class {
            outcome: Outcome::Local,
            ..Class::SUCCESS
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

    /// The same class, naming the gRPC status it was judged on.
    pub const fn with_grpc_status(mut self, code: Option<GrpcCode>) -> Class {
        self.grpc = code;
        self
    }

    /// The same class, marked as a head whose verdict the trailers will
    /// give (a gRPC response without `grpc-status` in its head).
    pub const fn awaiting_trailers(mut self) -> Class {
        self.awaiting_trailers = true;
        self
    }

    /// Whether the endpoint could not be reached (see
    /// [`unreachable`](Self::unreachable)).
    pub fn is_unreachable(&self) -> bool {
        self.unreachable
    }

    /// Success or failure.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether the outcome is a failure of the endpoint (overload
    /// included).
    pub fn is_failure(&self) -> bool {
        matches!(self.outcome, Outcome::Failure | Outcome::Overloaded)
    }

    /// Whether the outcome says something about the endpoint: false for the
    /// caller's own failures and local exhaustion, which the balancer,
    /// breaker and throttle leave out of their counts.
    pub fn judges_endpoint(&self) -> bool {
        !matches!(self.outcome, Outcome::Caller | Outcome::Local)
    }

    /// Whether the request may be retried.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// How long the server asked us to stay away (`Retry-After`,
    /// `grpc-retry-pushback-ms`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The gRPC status this class was judged on, for a gRPC response that
    /// had one.
    pub fn grpc_status(&self) -> Option<GrpcCode> {
        self.grpc
    }

    /// Whether this is a head whose verdict the trailers will give.
    pub fn is_awaiting_trailers(&self) -> bool {
        self.awaiting_trailers
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
    /// Classifies a response's head, as the endpoint returned it. This
    /// verdict decides retries and hedges.
    fn classify_response(&self, rsp: &Rsp) -> Class;

    /// Classifies an error the endpoint's service returned.
    fn classify_error(&self, err: &(dyn StdError + 'static)) -> Class;

    /// Classifies the end of a response's stream, given its head's class:
    /// the final verdict, which the balancer, breaker, throttling and
    /// metrics record. Nothing retries on it (the response was delivered);
    /// its [`retry`](Class::retry) still says whether the endpoint did the
    /// work, which adaptive throttling reads.
    ///
    /// The default: a body that failed is judged as an error
    /// ([`classify_error`](Self::classify_error)); a body that completed or
    /// was dropped keeps the head's verdict.
    fn classify_end(&self, head: Class, end: &End<'_>) -> Class {
        match end {
            End::Error(e) => self.classify_error(*e),
            End::Complete(_) | End::Dropped => head,
        }
    }
}

/// Classifies a transport error by walking its `source()` chain:
///
/// - the caller's own body stream failed (a [`CallerError`] in the chain,
///   which [`ReplayBody`](crate::replay::ReplayBody) puts there):
///   [`Outcome::Caller`];
/// - this process ran out of file descriptors or ephemeral ports, or the
///   balancer shed the request because every endpoint was at its in-flight
///   cap ([`Error::Overloaded`]): [`Outcome::Local`];
/// - a refused or timed-out connect (a hyper-util connect error) is
///   [`Class::unreachable`]: never sent, retried for any method, and the
///   endpoint is ejected at once (failure accrual's backoff);
/// - an HTTP/2
///   stream the server refused unprocessed (REFUSED_STREAM, or above a
///   graceful GOAWAY's last stream), never reached the application and may
///   be retried for any method;
/// - anything else may only be retried when the method is idempotent.
///
/// ```
/// use palisade::classify::{Outcome, classify_transport_error};
/// use palisade::error::CallerError;
///
/// let aborted = CallerError::body(std::io::Error::other("upload aborted"));
/// assert_eq!(classify_transport_error(&aborted).outcome(), Outcome::Caller);
/// ```
pub fn classify_transport_error(err: &(dyn StdError + 'static)) -> Class {
    if CallerError::is_in(err) {
        Class::caller()
    } else if out_of_local_resources(err)
        || matches!(err.downcast_ref::<Error>(), Some(Error::Overloaded { .. }))
    {
        Class::local()
    } else if let Some(unsent) = never_sent(err) {
        match unsent {
            Unsent::Unreachable => Class::unreachable(),
            Unsent::Refused => Class::failure(Retry::Always),
        }
    } else {
        Class::failure(Retry::IfIdempotent)
    }
}

/// Whether an error is this process running out of file descriptors
/// (EMFILE, ENFILE), buffer space (ENOBUFS) or local addresses
/// (EADDRNOTAVAIL: no ephemeral port left).
fn out_of_local_resources(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::AddrNotAvailable
                || matches!(io.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS)))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The POSIX error numbers (Linux, the BSDs and macOS agree on these).
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;
#[cfg(target_os = "linux")]
const ENOBUFS: i32 = 105;
#[cfg(not(target_os = "linux"))]
const ENOBUFS: i32 = 55;

/// Why a request never left this process.
enum Unsent {
    /// The endpoint could not be connected to (refused, timed out).
    Unreachable,
    /// The server refused the stream before processing it.
    Refused,
}

/// Whether an error proves the request never left this process, and why.
fn never_sent(err: &(dyn StdError + 'static)) -> Option<Unsent> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return Some(Unsent::Unreachable);
        }
        #[cfg(feature = "http")]
        if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && legacy.is_connect()
        {
            return Some(Unsent::Unreachable);
        }
        // HTTP/2: the server refused the stream before processing it
        // (RST_STREAM REFUSED_STREAM), or its graceful GOAWAY came before
        // the stream (RFC 9113 §8.7: safe to retry whatever the method).
        #[cfg(feature = "http")]
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && h2.is_remote()
            && (h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)))
        {
            return Some(Unsent::Refused);
        }
        cur = e.source();
    }
    None
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
