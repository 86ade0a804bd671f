//! gRPC status codes and the headers that carry them.
//!
//! A gRPC response is `200 OK` with `content-type: application/grpc…`; its
//! outcome is the `grpc-status` header, either in the head (a
//! *Trailers-Only* response, which carries no messages) or in the trailers
//! after the messages. [`HttpClassify`](super::HttpClassify) reads both.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// The `grpc-status` header.
pub const GRPC_STATUS: &str = "grpc-status";
/// The `grpc-message` header.
pub const GRPC_MESSAGE: &str = "grpc-message";
/// The `grpc-retry-pushback-ms` header: how long the server asks the client
/// to wait before retrying (gRFC A6); negative means "do not retry".
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// A gRPC status code (the `grpc-status` header's value).
///
/// Values outside 0–16 read as [`Unknown`](GrpcCode::Unknown), as the gRPC
/// specification tells clients to do, so the set of codes (and of metric
/// labels made from them) is closed.
///
/// ```
/// use palisade::classify::GrpcCode;
///
/// assert_eq!(GrpcCode::from_header(&"14".parse().unwrap()), GrpcCode::Unavailable);
/// assert_eq!(GrpcCode::from_header(&"99".parse().unwrap()), GrpcCode::Unknown);
/// assert_eq!(GrpcCode::Unavailable.as_str(), "UNAVAILABLE");
/// assert_eq!("unavailable".parse::<GrpcCode>(), Ok(GrpcCode::Unavailable));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum GrpcCode {
    /// 0: not an error.
    Ok = 0,
    /// 1: the operation was cancelled, typically by the caller.
    Cancelled = 1,
    /// 2: unknown error (also what a missing or unreadable status means).
    Unknown = 2,
    /// 3: the client specified an invalid argument.
    InvalidArgument = 3,
    /// 4: the deadline expired before the operation could complete.
    DeadlineExceeded = 4,
    /// 5: some requested entity was not found.
    NotFound = 5,
    /// 6: the entity the client tried to create already exists.
    AlreadyExists = 6,
    /// 7: the caller may not execute the operation.
    PermissionDenied = 7,
    /// 8: some resource (a quota, the server's capacity) is exhausted.
    ResourceExhausted = 8,
    /// 9: the system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// 10: the operation was aborted (a concurrency conflict, say).
    Aborted = 10,
    /// 11: the operation was attempted past the valid range.
    OutOfRange = 11,
    /// 12: the operation is not implemented or supported.
    Unimplemented = 12,
    /// 13: an internal invariant broke.
    Internal = 13,
    /// 14: the service is currently unavailable; retrying may help.
    Unavailable = 14,
    /// 15: unrecoverable data loss or corruption.
    DataLoss = 15,
    /// 16: the request lacks valid authentication credentials.
    Unauthenticated = 16,
}

impl GrpcCode {
    /// Every code, in numeric order.
    pub const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code for a number; anything outside 0–16 is `Unknown`.
    pub fn from_i32(n: i32) -> GrpcCode {
        usize::try_from(n)
            .ok()
            .and_then(|i| GrpcCode::ALL.get(i).copied())
            .unwrap_or(GrpcCode::Unknown)
    }

    /// Reads a `grpc-status` header value; a malformed one is `Unknown`.
    pub fn from_header(value: &HeaderValue) -> GrpcCode {
        std::str::from_utf8(value.as_bytes())
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<i32>().ok())
            .map_or(GrpcCode::Unknown, GrpcCode::from_i32)
    }

    /// The `grpc-status` in `headers` (a head or trailers), if there is one.
    pub fn from_headers(headers: &HeaderMap) -> Option<GrpcCode> {
        headers.get(GRPC_STATUS).map(GrpcCode::from_header)
    }

    /// The number on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The canonical name, `UNAVAILABLE`: the form settings and metric
    /// labels use.
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The header value for this code (`"14"`).
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from(u16::from(self.as_u8()))
    }

    /// This code's bit in a [`GrpcCodes`] set.
    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a gRPC status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownGrpcCode(pub String);

impl fmt::Display for UnknownGrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a gRPC status code (expected a name like UNAVAILABLE, or 0–16)",
            self.0
        )
    }
}

impl std::error::Error for UnknownGrpcCode {}

impl std::str::FromStr for GrpcCode {
    type Err = UnknownGrpcCode;

    /// Parses a name (`UNAVAILABLE`, any case) or a number 0–16.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u8>() {
            return GrpcCode::ALL
                .get(usize::from(n))
                .copied()
                .ok_or_else(|| UnknownGrpcCode(s.to_owned()));
        }
        GrpcCode::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownGrpcCode(s.to_owned()))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for GrpcCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for GrpcCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of gRPC codes, as a bit set (cheap to copy and test).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GrpcCodes(u32);

impl GrpcCodes {
    /// The codes that are failures of the server by default: UNKNOWN,
    /// DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    pub(crate) const FAILURES: GrpcCodes = GrpcCodes(
        GrpcCode::Unknown.bit()
            | GrpcCode::DeadlineExceeded.bit()
            | GrpcCode::Internal.bit()
            | GrpcCode::Unavailable.bit()
            | GrpcCode::DataLoss.bit(),
    );

    pub(crate) fn contains(self, code: GrpcCode) -> bool {
        self.0 & code.bit() != 0
    }
}

impl FromIterator<GrpcCode> for GrpcCodes {
    fn from_iter<I: IntoIterator<Item = GrpcCode>>(iter: I) -> Self {
        GrpcCodes(iter.into_iter().fold(0, |bits, c| bits | c.bit()))
    }
}

impl fmt::Debug for GrpcCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(GrpcCode::ALL.into_iter().filter(|c| self.contains(*c)))
            .finish()
    }
}

/// What `grpc-retry-pushback-ms` says: wait this long, or never retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Retry no sooner than this.
    After(Duration),
    /// Do not retry (a negative or malformed value, per gRFC A6).
    Never,
}

impl Pushback {
    /// Reads the header from a head, if present.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Pushback> {
        let value = headers.get(GRPC_RETRY_PUSHBACK_MS)?;
        let text = value.to_str().ok().map(str::trim).unwrap_or_default();
        Some(match text.parse::<i64>() {
            Ok(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms.unsigned_abs())),
            _ => Pushback::Never,
        })
    }
}

/// Whether headers carry gRPC's `content-type` (`application/grpc`, with or
/// without a `+proto`-style suffix or parameters): how the default
/// classifier, and the proxy, tell a gRPC message.
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// headers.insert("content-type", "application/grpc+proto".parse().unwrap());
/// assert!(palisade::classify::is_grpc_content_type(&headers));
/// ```
pub fn is_grpc_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start();
            ct.len() >= 16
                && ct[..16].eq_ignore_ascii_case("application/grpc")
                && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_told_from_others() {
        let of = |ct: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            }
            is_grpc_content_type(&h)
        };
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(of(Some(yes)), "{yes}");
        }
        for no in [
            "application/json",
            "application/grpcx",
            "application/grp",
            "grpc",
        ] {
            assert!(!of(Some(no)), "{no}");
        }
        assert!(!of(None));
    }

    #[test]
    fn a_code_listed_twice_is_still_in_the_set() {
        let set: GrpcCodes = [GrpcCode::Unavailable, GrpcCode::Unavailable]
            .into_iter()
            .collect();
        assert!(set.contains(GrpcCode::Unavailable));
        assert!(!set.contains(GrpcCode::Internal));
        assert_eq!(
            format!("{:?}", GrpcCodes::FAILURES),
            "{Unknown, DeadlineExceeded, Internal, Unavailable, DataLoss}"
        );
    }

    #[test]
    fn codes_round_trip_by_number_and_name() {
        for (i, code) in GrpcCode::ALL.into_iter().enumerate() {
            assert_eq!(code.as_u8() as usize, i);
            assert_eq!(GrpcCode::from_i32(i as i32), code);
            assert_eq!(code.as_str().parse::<GrpcCode>(), Ok(code));
            assert_eq!(GrpcCode::from_header(&code.header_value()), code);
        }
        // "+1" and "0014" parse as numbers: the filter before the parse refuses them.
        for bad in [
            "", "-1", "+1", "0014", "17", "1000", "1.0", "OK ", "0x1", "٣",
        ] {
            let v = HeaderValue::from_str(bad).unwrap_or(HeaderValue::from_static("?"));
            if bad != "OK " {
                assert_eq!(GrpcCode::from_header(&v), GrpcCode::Unknown, "{bad:?}");
            }
        }
        assert!("NOPE".parse::<GrpcCode>().is_err());
        assert!("17".parse::<GrpcCode>().is_err());
        assert_eq!(GrpcCode::Unavailable.to_string(), "UNAVAILABLE");
        assert_eq!(
            "NOPE".parse::<GrpcCode>().unwrap_err().to_string(),
            "\"NOPE\" is not a gRPC status code (expected a name like UNAVAILABLE, or 0–16)"
        );
    }

    #[test]
    fn content_types() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            is_grpc_content_type(&m)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(h("Application/GRPC; charset=utf-8"));
        assert!(!h("application/grpc-web"));
        assert!(!h("application/grpcx"));
        assert!(!h("application/json"));
        assert!(!is_grpc_content_type(&HeaderMap::new()));
    }

    #[test]
    fn pushback() {
        let p = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(GRPC_RETRY_PUSHBACK_MS, v.parse().unwrap());
            Pushback::from_headers(&m)
        };
        assert_eq!(p("250"), Some(Pushback::After(Duration::from_millis(250))));
        assert_eq!(p("-1"), Some(Pushback::Never));
        assert_eq!(p("soon"), Some(Pushback::Never));
        assert_eq!(Pushback::from_headers(&HeaderMap::new()), None);
    }
}
