//! The one error type every palisade layer returns.
//!
//! Callers match on [`Error`] to tell *why* a call failed: the balancer had no
//! endpoint, or the inner client failed. Later layers add deadline, budget,
//! breaker and overload variants; the enum is `#[non_exhaustive]` so that adding
//! them is not a breaking change.
//!
//! Every variant names the service (the name given to
//! [`Client::builder`](crate::Client::builder)) so a log line is useful on its
//! own.
//!
//! ```
//! use palisade::Error;
//!
//! fn describe(err: &Error) -> &'static str {
//!     match err {
//!         Error::NoEndpoints { .. } => "nothing to talk to",
//!         Error::Inner { .. } => "the endpoint failed",
//!         _ => "something else",
//!     }
//! }
//! # let _ = describe;
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::Address;
use crate::settings::SettingsError;

/// A type-erased error, as tower uses: `Box<dyn Error + Send + Sync>`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error palisade's services return.
///
/// The `Display` form is one line naming the service and the reason, e.g.
/// `service "users": no endpoints available after waiting 3s`. An inner
/// client's error is the [`source`](std::error::Error::source), not part of
/// the message, following the Rust convention so that reporters walking the
/// chain print each cause once.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The balancer had no endpoint to send the request to, and none appeared
    /// within the configured wait
    /// ([`BalanceSettings::endpoint_wait`](crate::balance::BalanceSettings::endpoint_wait)).
    #[non_exhaustive]
    NoEndpoints {
        /// The service that had no endpoints.
        service: Arc<str>,
        /// How long the request waited for an endpoint before giving up.
        waited: Duration,
    },
    /// The request's [`Deadline`](crate::deadline::Deadline) passed before
    /// its response arrived, or had passed before it was sent.
    #[non_exhaustive]
    DeadlineExceeded {
        /// The service the request was for.
        service: Arc<str>,
        /// How long after the deadline layer accepted the request it gave
        /// up (zero when the deadline was already spent on arrival).
        elapsed: Duration,
    },
    /// The service's circuit breaker is open: recent calls failed too often,
    /// so this one fails at once instead of adding load.
    #[non_exhaustive]
    CircuitOpen {
        /// The service whose breaker is open.
        service: Arc<str>,
        /// How long until the breaker lets a probe through.
        retry_in: Duration,
    },
    /// A limit shed the request before it was sent: a concurrency limit with
    /// its queue full, a rate limit, or adaptive client throttling. Nothing
    /// reached an endpoint, so the request is safe to send again later.
    #[non_exhaustive]
    Overloaded {
        /// The service's name.
        service: Arc<str>,
        /// Which limit, with its settings.
        limit: Limit,
    },
    /// The inner client (the endpoint's service) failed.
    #[non_exhaustive]
    Inner {
        /// The service the request was for.
        service: Arc<str>,
        /// The endpoint the request was sent to, when one had been chosen.
        endpoint: Option<Address>,
        /// The inner client's error.
        source: BoxError,
        /// When the failure was retryable but was not retried: why not
        /// (budget, deadline, attempts, method, body).
        retry_stop: Option<RetryStop>,
    },
    /// The request failed on the caller's side: its body stream failed or
    /// ended early (an aborted upload, a malformed chunked body). That says
    /// nothing about the endpoint, so it feeds no failure accrual, penalty,
    /// breaker or throttle, and is never retried.
    #[non_exhaustive]
    Caller {
        /// The service the request was for.
        service: Arc<str>,
        /// What failed, with a [`CallerError`] down its source chain.
        source: BoxError,
    },
}

/// The caller's own side of a request failed: [`ReplayBody`] wraps the
/// error of the caller's body stream in one, so that every layer (and the
/// classifier walking an error's source chain) can tell it from a failure
/// of the endpoint.
///
/// [`ReplayBody`]: crate::replay::ReplayBody
///
/// ```
/// use palisade::error::CallerError;
///
/// let err = CallerError::body(std::io::Error::other("upload aborted"));
/// assert_eq!(err.to_string(), "the request body stream failed");
/// assert!(std::error::Error::source(&err).is_some());
/// ```
#[derive(Debug)]
pub struct CallerError {
    source: BoxError,
}

impl CallerError {
    /// The caller's request body stream failed with `source`.
    pub fn body(source: impl Into<BoxError>) -> Self {
        CallerError {
            source: source.into(),
        }
    }

    /// Whether `err`'s source chain (itself included) holds a
    /// `CallerError`.
    pub fn is_in(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if e.is::<CallerError>()
                || matches!(e.downcast_ref::<Error>(), Some(Error::Caller { .. }))
            {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

impl fmt::Display for CallerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body stream failed")
    }
}

impl std::error::Error for CallerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl Error {
    /// The name of the service the failed request was for.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use palisade::{Client, discover::Static};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// # use tower::ServiceExt;
    /// # let client = Client::builder("users").discover(Static::new([]))
    /// #     .new_endpoint(|_: &palisade::discover::Endpoint| Ok::<_, std::io::Error>(tower::service_fn(
    /// #         |_: http::Request<palisade::retry::ReplayBody<String>>| async { Ok::<_, std::io::Error>(http::Response::new(())) })))
    /// #     .build().unwrap();
    /// let err = client.oneshot(http::Request::new(String::new())).await.unwrap_err();
    /// assert_eq!(err.service(), "users");
    /// # }
    /// ```
    pub fn service(&self) -> &str {
        match self {
            Error::NoEndpoints { service, .. }
            | Error::DeadlineExceeded { service, .. }
            | Error::CircuitOpen { service, .. }
            | Error::Overloaded { service, .. }
            | Error::Inner { service, .. }
            | Error::Caller { service, .. } => service,
        }
    }

    /// Whether the caller's own side failed ([`Error::Caller`]).
    pub fn is_caller_fault(&self) -> bool {
        matches!(self, Error::Caller { .. })
    }

    /// Whether this is [`Error::CircuitOpen`].
    pub fn is_circuit_open(&self) -> bool {
        matches!(self, Error::CircuitOpen { .. })
    }

    /// Whether a limit shed the request ([`Error::Overloaded`]).
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Error::Overloaded { .. })
    }

    /// The limit that shed the request, for [`Error::Overloaded`].
    pub fn limit(&self) -> Option<&Limit> {
        match self {
            Error::Overloaded { limit, .. } => Some(limit),
            _ => None,
        }
    }

    /// Whether this is [`Error::DeadlineExceeded`].
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self, Error::DeadlineExceeded { .. })
    }

    /// When the failure could have been retried but was not, why not.
    pub fn retry_stop(&self) -> Option<RetryStop> {
        match self {
            Error::Inner { retry_stop, .. } => *retry_stop,
            _ => None,
        }
    }

    /// Records why a retryable failure was not retried.
    pub(crate) fn with_retry_stop(mut self, stop: RetryStop) -> Self {
        if let Error::Inner { retry_stop, .. } = &mut self {
            *retry_stop = Some(stop);
        }
        self
    }

    /// The endpoint the request was sent to, if it got that far.
    pub fn endpoint(&self) -> Option<&Address> {
        match self {
            Error::Inner { endpoint, .. } => endpoint.as_ref(),
            _ => None,
        }
    }

    /// Whether this is [`Error::NoEndpoints`].
    pub fn is_no_endpoints(&self) -> bool {
        matches!(self, Error::NoEndpoints { .. })
    }

    /// Wraps an inner client's error, unless it already is a palisade
    /// [`Error`] (layers stack; an error is wrapped once, at the bottom).
    pub(crate) fn inner(
        service: &Arc<str>,
        endpoint: Option<&Address>,
        source: impl Into<BoxError>,
    ) -> Error {
        let source = source.into();
        match source.downcast::<Error>() {
            Ok(err) => *err,
            Err(source) => Error::Inner {
                service: service.clone(),
                endpoint: endpoint.cloned(),
                source,
                retry_stop: None,
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoEndpoints { service, waited } => write!(
                f,
                "service {service:?}: no endpoints available after waiting {waited:?}"
            ),
            Error::DeadlineExceeded { service, elapsed } => {
                write!(
                    f,
                    "service {service:?}: deadline exceeded after {elapsed:?}"
                )
            }
            Error::CircuitOpen { service, retry_in } => write!(
                f,
                "service {service:?}: circuit breaker open; next probe in {retry_in:?}"
            ),
            Error::Overloaded { service, limit } => {
                write!(f, "service {service:?}: overloaded: {limit}")
            }
            // The cause is `source()`, not part of this message, so that
            // error reporters that walk the chain print it once.
            Error::Inner {
                service,
                endpoint,
                retry_stop,
                ..
            } => {
                write!(f, "service {service:?}: request")?;
                if let Some(endpoint) = endpoint {
                    write!(f, " to endpoint {endpoint}")?;
                }
                f.write_str(" failed")?;
                if let Some(stop) = retry_stop {
                    write!(f, " (not retried: {stop})")?;
                }
                Ok(())
            }
            Error::Caller { service, .. } => write!(
                f,
                "service {service:?}: the request failed on the caller's side"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Inner { source, .. } | Error::Caller { source, .. } => Some(&**source),
            #[cfg(feature = "tonic")]
            _ => grpc_status(self).map(|s| s as _),
            #[cfg(not(feature = "tonic"))]
            _ => None,
        }
    }
}

/// With the `tonic` feature, the gRPC status a refusal stands for is its
/// [`source`](std::error::Error::source), because `tonic::Status::from_error`
/// (what a tonic client does with its channel's error) looks for a `Status`
/// down the source chain: a spent deadline is `DEADLINE_EXCEEDED`, no
/// endpoints and an open breaker are `UNAVAILABLE`, a limit's refusal is
/// `RESOURCE_EXHAUSTED`. An [`Error::Inner`] keeps the inner error as its
/// source, so tonic finds a status or transport error there.
///
/// The statuses are statics (a source must live somewhere to be borrowed,
/// and the variants have no room for one): a code and a fixed message. The
/// details (service, times, the limit) are in the `Error` itself, which
/// tonic keeps as the status's own source.
#[cfg(feature = "tonic")]
fn grpc_status(err: &Error) -> Option<&'static tonic::Status> {
    use std::sync::OnceLock;
    use tonic::{Code, Status};

    static NO_ENDPOINTS: OnceLock<Status> = OnceLock::new();
    static DEADLINE: OnceLock<Status> = OnceLock::new();
    static CIRCUIT_OPEN: OnceLock<Status> = OnceLock::new();
    static OVERLOADED: OnceLock<Status> = OnceLock::new();
    let (cell, code, message) = match err {
        Error::NoEndpoints { .. } => (&NO_ENDPOINTS, Code::Unavailable, "no endpoints available"),
        Error::DeadlineExceeded { .. } => (&DEADLINE, Code::DeadlineExceeded, "deadline exceeded"),
        Error::CircuitOpen { .. } => (&CIRCUIT_OPEN, Code::Unavailable, "circuit breaker open"),
        Error::Overloaded { .. } => (
            &OVERLOADED,
            Code::ResourceExhausted,
            "overloaded: shed by a client-side limit",
        ),
        Error::Inner { .. } | Error::Caller { .. } => return None,
    };
    Some(cell.get_or_init(|| Status::new(code, message)))
}

/// The limit behind an [`Error::Overloaded`], with the settings that were
/// hit, so that the message says which knob to turn.
///
/// ```
/// use palisade::error::Limit;
///
/// let limit = Limit::Concurrency { max: 64, queue: 128 };
/// assert_eq!(
///     limit.to_string(),
///     "concurrency limit reached (64 in flight, 128 queued)"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Limit {
    /// The concurrency limit (bulkhead): `max` requests in flight and its
    /// wait queue of `queue` full.
    Concurrency {
        /// Requests allowed in flight.
        max: usize,
        /// Requests allowed to wait for a slot.
        queue: usize,
    },
    /// The request waited `waited` for a concurrency slot, the longest wait
    /// allowed (or all its deadline allowed), and was shed.
    QueueTimeout {
        /// Requests allowed in flight.
        max: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// The rate limit: `rate` requests per second with bursts of `burst`.
    Rate {
        /// Sustained requests per second.
        rate: f64,
        /// Burst size.
        burst: u32,
        /// The key's value, for a keyed limit.
        key: Option<Arc<str>>,
        /// When the next request would be admitted.
        retry_in: Duration,
    },
    /// A keyed rate limit tracks at most `max` keys, and a new key found
    /// the table full of keys that are all still in use.
    Keys {
        /// The most keys tracked.
        max: usize,
    },
    /// Every endpoint had `max` requests outstanding
    /// ([`BalanceSettings::endpoint_max_in_flight`](crate::balance::BalanceSettings::endpoint_max_in_flight)),
    /// and none freed a slot within `waited`
    /// ([`endpoint_wait`](crate::balance::BalanceSettings::endpoint_wait)).
    EndpointInFlight {
        /// Requests allowed outstanding per endpoint.
        max: usize,
        /// How long the request waited for a slot.
        waited: Duration,
    },
    /// Adaptive client throttling rejected the request locally, with this
    /// probability (requests − K·accepts) / (requests + 1).
    Throttled {
        /// The rejection probability at the time.
        probability: f64,
    },
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Concurrency { max, queue } => write!(
                f,
                "concurrency limit reached ({max} in flight, {queue} queued)"
            ),
            Limit::QueueTimeout { max, waited } => {
                write!(f, "waited {waited:?} for one of {max} concurrency slots")
            }
            Limit::Rate {
                rate,
                burst,
                key,
                retry_in,
            } => {
                write!(f, "rate limit of {rate}/s (burst {burst}) reached")?;
                if let Some(key) = key {
                    write!(f, " for key {key:?}")?;
                }
                write!(f, "; next request admitted in {retry_in:?}")
            }
            Limit::Keys { max } => {
                write!(f, "rate limit key table full ({max} keys, all in use)")
            }
            Limit::EndpointInFlight { max, waited } => write!(
                f,
                "every endpoint has {max} requests outstanding (balancer.endpoint_max_in_flight); waited {waited:?} for one to finish"
            ),
            Limit::Throttled { probability } => write!(
                f,
                "adaptive throttling rejected the request locally (rejecting {:.1}% of requests)",
                probability * 100.0
            ),
        }
    }
}

/// Why a client or balancer could not be built.
///
/// ```
/// use palisade::{Client, discover::Static};
///
/// // Outside a Tokio runtime there is nowhere to run discovery.
/// let err = Client::builder("users")
///     .discover(Static::parse(["127.0.0.1:8080"]).unwrap())
///     .new_endpoint(|_: &palisade::discover::Endpoint| Ok::<_, std::io::Error>(tower::service_fn(
///         |_: http::Request<()>| async { Ok::<_, std::io::Error>(http::Response::new(())) })))
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("Tokio runtime"));
/// ```
#[derive(Debug, Clone)]
pub struct BuildError {
    service: Arc<str>,
    reason: BuildReason,
}

#[derive(Debug, Clone)]
enum BuildReason {
    NoRuntime,
    Settings(SettingsError),
}

impl BuildError {
    pub(crate) fn no_runtime(service: &Arc<str>) -> Self {
        BuildError {
            service: service.clone(),
            reason: BuildReason::NoRuntime,
        }
    }

    pub(crate) fn settings(service: &Arc<str>, error: SettingsError) -> Self {
        BuildError {
            service: service.clone(),
            reason: BuildReason::Settings(error),
        }
    }

    /// The settings problems that stopped the build, if that is why it
    /// failed (each with its field path, such as `retry.max_attempts`).
    pub fn settings_error(&self) -> Option<&SettingsError> {
        match &self.reason {
            BuildReason::Settings(e) => Some(e),
            BuildReason::NoRuntime => None,
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            BuildReason::NoRuntime => write!(
                f,
                "service {:?}: a client must be built inside a Tokio runtime (it spawns its discovery task there)",
                self.service
            ),
            BuildReason::Settings(e) => {
                write!(f, "service {:?}: invalid settings: {e}", self.service)
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Why a retryable failure was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryStop {
    /// The retry budget was spent.
    Budget,
    /// The deadline would pass before the next attempt could finish.
    Deadline,
    /// The maximum number of attempts (this many) was made.
    Attempts(u32),
    /// The failure is only retryable for idempotent methods, and this
    /// request's method is not one.
    Method,
    /// The request body outgrew the replay buffer.
    Body,
}

impl fmt::Display for RetryStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryStop::Budget => f.write_str("retry budget exhausted"),
            RetryStop::Deadline => f.write_str("no time left before the deadline"),
            RetryStop::Attempts(n) => write!(f, "{n} attempts made"),
            RetryStop::Method => f.write_str("method is not idempotent"),
            RetryStop::Body => f.write_str("request body too large to replay"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_service_and_endpoint() {
        let err = Error::NoEndpoints {
            service: "users".into(),
            waited: Duration::from_secs(3),
        };
        assert_eq!(
            err.to_string(),
            "service \"users\": no endpoints available after waiting 3s"
        );

        let addr: Address = "127.0.0.1:8080".parse().unwrap();
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::inner(&"users".into(), Some(&addr), io);
        assert_eq!(
            err.to_string(),
            "service \"users\": request to endpoint 127.0.0.1:8080 failed"
        );
        let source = std::error::Error::source(&err).expect("the cause is the source");
        assert_eq!(source.to_string(), "refused");
    }

    #[test]
    fn inner_does_not_wrap_twice() {
        let first = Error::NoEndpoints {
            service: "a".into(),
            waited: Duration::ZERO,
        };
        let err = Error::inner(&"b".into(), None, first);
        assert!(err.is_no_endpoints());
        assert_eq!(err.service(), "a");
    }
}
