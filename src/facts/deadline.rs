//! The request's deadline: an absolute instant in its extensions, read by
//! every layer below the one that set it, and written to outgoing headers.

use std::time::Duration;

use http::{HeaderMap, Request};
use tokio::time::Instant;

use super::header;

/// The absolute time by which a request must have its response.
///
/// Lives in the request's extensions; every layer below reads it.
///
/// ```
/// use palisade::deadline::Deadline;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Deadline::after(Duration::from_millis(300)));
/// assert_eq!(Deadline::of(&req).unwrap().remaining(), Duration::from_millis(300));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

/// Far enough to mean "no deadline" without risking `Instant` overflow.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Deadline {
    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Deadline {
        Deadline { at: instant }
    }

    /// A deadline `timeout` from now (saturating far in the future).
    pub fn after(timeout: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            at: now
                .checked_add(timeout.min(FAR))
                .unwrap_or_else(|| now + Duration::from_secs(3600)),
        }
    }

    /// The deadline from a request's deadline headers, if any is valid; see
    /// [`header::incoming_timeout`]. Servers use it to carry their caller's
    /// deadline into their own outgoing calls.
    pub fn from_headers(headers: &HeaderMap) -> Option<Deadline> {
        header::incoming_timeout(headers).map(Deadline::after)
    }

    /// The deadline in a request's extensions.
    pub fn of<B>(req: &Request<B>) -> Option<Deadline> {
        req.extensions().get::<Deadline>().copied()
    }

    /// The instant.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// What remains, zero once spent.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// In a request's extensions: write the deadline to outgoing headers, less
/// this reserve. Put there by the deadline layer when it propagates.
#[derive(Debug, Clone, Copy)]
pub struct Propagate {
    /// Time kept back for the response's trip back.
    pub reserve: Duration,
}

/// Writes the request's remaining deadline into its outgoing headers, if the
/// deadline layer asked for propagation. Called once per attempt.
pub(crate) fn stamp_headers(parts: &mut http::request::Parts) {
    let (Some(deadline), Some(propagate)) = (
        parts.extensions.get::<Deadline>(),
        parts.extensions.get::<Propagate>(),
    ) else {
        return;
    };
    let left = deadline.remaining().saturating_sub(propagate.reserve);
    let headers = &mut parts.headers;
    headers.insert(header::DEADLINE_NAME, header::format_millis(left));
    headers.remove(header::ENVOY_TIMEOUT);
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        headers.insert(header::GRPC_TIMEOUT_NAME, header::format_grpc_timeout(left));
    }
}
