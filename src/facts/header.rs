//! Deadline headers: reading what a caller sent, writing what remains.
//!
//! Three headers are understood on the way in (the tightest valid one wins):
//!
//! | header | format |
//! |---|---|
//! | [`DEADLINE_HEADER`] (`palisade-deadline-ms`) | remaining milliseconds, ASCII digits |
//! | [`GRPC_TIMEOUT`] (`grpc-timeout`) | 1–8 digits and a unit: `H` `M` `S` `m` `u` `n` |
//! | [`ENVOY_TIMEOUT`] (`x-envoy-expected-rq-timeout-ms`) | milliseconds, read for compatibility |
//!
//! A malformed value is ignored with a warning naming the header; it never
//! panics and never becomes a zero deadline.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// palisade's own header: the milliseconds that remain of the deadline.
pub const DEADLINE_HEADER: &str = "palisade-deadline-ms";
/// gRPC's timeout header (gRPC over HTTP/2 spec).
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
/// Envoy's expected-timeout header, read for compatibility.
pub const ENVOY_TIMEOUT: &str = "x-envoy-expected-rq-timeout-ms";

/// The written headers' names, made once: inserting by `&str` builds a
/// `HeaderName` (an allocation for a name outside the standard set) every
/// time, and these are written on every attempt.
pub(crate) const DEADLINE_NAME: http::HeaderName = http::HeaderName::from_static(DEADLINE_HEADER);
pub(crate) const GRPC_TIMEOUT_NAME: http::HeaderName = http::HeaderName::from_static(GRPC_TIMEOUT);

/// Why a deadline header was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError {
    header: &'static str,
    reason: &'static str,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "header {}: {}", self.header, self.reason)
    }
}

impl std::error::Error for HeaderError {}

fn digits(header: &'static str, text: &[u8], max_len: usize) -> Result<u64, HeaderError> {
    let err = |reason| HeaderError { header, reason };
    if text.is_empty() {
        return Err(err("empty value"));
    }
    if text.len() > max_len {
        return Err(err("too many digits"));
    }
    let mut n: u64 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return Err(err("expected ASCII digits"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| err("value out of range"))?;
    }
    Ok(n)
}

/// Parses a milliseconds header value (`palisade-deadline-ms`, Envoy's).
///
/// ```
/// use http::HeaderValue;
/// use palisade::deadline::header::parse_millis;
/// use std::time::Duration;
///
/// assert_eq!(parse_millis("palisade-deadline-ms", &HeaderValue::from_static("1500")), Ok(Duration::from_millis(1500)));
/// assert!(parse_millis("palisade-deadline-ms", &HeaderValue::from_static("-5")).is_err());
/// ```
pub fn parse_millis(header: &'static str, value: &HeaderValue) -> Result<Duration, HeaderError> {
    let text = trim(value.as_bytes());
    Ok(Duration::from_millis(digits(header, text, 20)?))
}

/// Parses a `grpc-timeout` value: 1 to 8 digits followed by a unit.
///
/// ```
/// use http::HeaderValue;
/// use palisade::deadline::header::parse_grpc_timeout;
/// use std::time::Duration;
///
/// assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("250m")), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("3S")), Ok(Duration::from_secs(3)));
/// assert!(parse_grpc_timeout(&HeaderValue::from_static("123456789n")).is_err());
/// ```
pub fn parse_grpc_timeout(value: &HeaderValue) -> Result<Duration, HeaderError> {
    let text = trim(value.as_bytes());
    let Some((&unit, number)) = text.split_last() else {
        return Err(HeaderError {
            header: GRPC_TIMEOUT,
            reason: "empty value",
        });
    };
    let n = digits(GRPC_TIMEOUT, number, 8)?;
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => {
            return Err(HeaderError {
                header: GRPC_TIMEOUT,
                reason: "unit must be one of H, M, S, m, u, n",
            });
        }
    })
}

/// Formats a duration as a `grpc-timeout` value, in the finest unit whose
/// value fits in 8 digits, rounded down so that the callee never believes it
/// has more time than there is.
///
/// ```
/// use palisade::deadline::header::format_grpc_timeout;
/// use std::time::Duration;
///
/// assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250000u");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(3600)), "3600000m");
/// ```
pub fn format_grpc_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        // Round down: a callee must not believe it has more time than we do.
        let value = nanos / per;
        if value <= MAX {
            return header_value(format!("{value}{unit}"));
        }
    }
    header_value(format!("{MAX}H"))
}

/// Formats a duration as whole milliseconds (rounded down).
pub fn format_millis(d: Duration) -> HeaderValue {
    header_value(d.as_millis().to_string())
}

fn header_value(text: String) -> HeaderValue {
    // Digits and an ASCII unit letter: always a valid header value.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The tightest timeout among the deadline headers present; malformed ones
/// are skipped with a warning.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use palisade::deadline::header::incoming_timeout;
/// use std::time::Duration;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("grpc-timeout", HeaderValue::from_static("2S"));
/// headers.insert("palisade-deadline-ms", HeaderValue::from_static("1500"));
/// headers.insert("x-envoy-expected-rq-timeout-ms", HeaderValue::from_static("soon"));
/// assert_eq!(incoming_timeout(&headers), Some(Duration::from_millis(1500)));
/// ```
pub fn incoming_timeout(headers: &HeaderMap) -> Option<Duration> {
    let mut tightest: Option<Duration> = None;
    let mut consider = |parsed: Option<Result<Duration, HeaderError>>,
                        value: Option<&HeaderValue>| match parsed {
        Some(Ok(d)) => tightest = Some(tightest.map_or(d, |t| t.min(d))),
        Some(Err(e)) => {
            let shown = value
                .map(|v| String::from_utf8_lossy(&v.as_bytes()[..v.len().min(64)]).into_owned());
            tracing::warn!(error = %e, value = ?shown, "ignoring malformed deadline header");
        }
        None => {}
    };
    let ours = headers.get(DEADLINE_HEADER);
    consider(ours.map(|v| parse_millis(DEADLINE_HEADER, v)), ours);
    let grpc = headers.get(GRPC_TIMEOUT);
    consider(grpc.map(parse_grpc_timeout), grpc);
    let envoy = headers.get(ENVOY_TIMEOUT);
    consider(envoy.map(|v| parse_millis(ENVOY_TIMEOUT, v)), envoy);
    tightest
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grpc_units() {
        for (text, want) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("4m", Duration::from_millis(4)),
            ("5u", Duration::from_micros(5)),
            ("6n", Duration::from_nanos(6)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
            (" 7m ", Duration::from_millis(7)),
        ] {
            assert_eq!(
                parse_grpc_timeout(&HeaderValue::from_str(text).unwrap()),
                Ok(want),
                "{text}"
            );
        }
        for bad in [
            "",
            "m",
            "1",
            "1x",
            "-1m",
            "1.5S",
            "123456789m",
            "1 m",
            "１m",
        ] {
            let v = HeaderValue::from_bytes(bad.as_bytes()).unwrap();
            assert!(parse_grpc_timeout(&v).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn millis() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_millis(DEADLINE_HEADER, &v("0")), Ok(Duration::ZERO));
        assert_eq!(
            parse_millis(DEADLINE_HEADER, &v("18446744073709551615")),
            Ok(Duration::from_millis(u64::MAX))
        );
        for bad in ["", "1e3", "0x10", "18446744073709551616", "1,000", "+5"] {
            let err = parse_millis(DEADLINE_HEADER, &v(bad)).unwrap_err();
            assert!(
                err.to_string().starts_with("header palisade-deadline-ms:"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_tightest_valid_header_wins_and_garbage_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert(ENVOY_TIMEOUT, HeaderValue::from_static("900"));
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("bogus"));
        assert_eq!(incoming_timeout(&h), Some(Duration::from_millis(900)));
        h.insert(DEADLINE_HEADER, HeaderValue::from_static(""));
        assert_eq!(incoming_timeout(&h), Some(Duration::from_millis(900)));
        let mut only_bad = HeaderMap::new();
        only_bad.insert(DEADLINE_HEADER, HeaderValue::from_static("-1"));
        assert_eq!(
            incoming_timeout(&only_bad),
            None,
            "garbage never becomes a deadline"
        );
    }

    proptest! {
        #[test]
        fn grpc_format_round_trips_without_gaining_time(nanos in 0u64..u64::MAX) {
            let d = Duration::from_nanos(nanos);
            let back = parse_grpc_timeout(&format_grpc_timeout(d)).unwrap();
            prop_assert!(back <= d);
            // Less than one unit is lost, and the unit chosen is the finest
            // that fits 8 digits: at least 10^5 of it (units step by at most
            // 1000), so the loss is under 10^-5 of the value.
            prop_assert!(d - back <= d / 100_000);
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let _ = parse_grpc_timeout(&v);
                let _ = parse_millis(DEADLINE_HEADER, &v);
                let mut h = HeaderMap::new();
                h.insert(GRPC_TIMEOUT, v.clone());
                h.insert(DEADLINE_HEADER, v);
                let _ = incoming_timeout(&h);
            }
        }
    }
}
