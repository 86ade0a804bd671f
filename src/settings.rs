//! The vocabulary every layer's settings share: a [`Problem`] found by
//! `validate()`, the [`SettingsError`] that gathers them, how durations are
//! written, and (feature `serde`) how they are read from a file.
//!
//! Each layer has one plain settings struct (`RetrySettings`,
//! `BreakerSettings`, …) whose `Default` is the library's default and whose
//! `validate()` returns every problem at once, each with the path of its
//! field. The client builder and the proxy's config use the same structs, so
//! a default is written once and a bad value gets the same message from
//! both.
//!
//! ```
//! use palisade::retry::RetrySettings;
//! use std::time::Duration;
//!
//! let settings = RetrySettings {
//!     max_attempts: 0,
//!     backoff_base: Duration::from_secs(1),
//!     ..RetrySettings::default()
//! };
//! let err = settings.validate().unwrap_err();
//! assert_eq!(err.problems().len(), 2);
//! assert_eq!(err.problems()[0].field, "max_attempts");
//! assert_eq!(
//!     err.to_string(),
//!     "max_attempts: must be at least 1 (1 means no retries); \
//!      backoff_base: backoff_base (1s) must not exceed backoff_cap (250ms)"
//! );
//! ```

use std::fmt;
use std::time::Duration;

/// One thing wrong with a setting: the field's path (`max_attempts`,
/// `retry.max_attempts`, `retryable_statuses[2]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's path, relative to the settings that were validated.
    pub field: String,
    /// What is wrong with it, and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem `validate()` found in a set of settings (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    problems: Vec<Problem>,
}

impl SettingsError {
    /// The problems, in field order.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The problems, owned.
    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SettingsError {}

/// Gathers problems while a settings struct is validated.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    prefix: String,
    problems: Vec<Problem>,
}

impl Problems {
    pub(crate) fn new() -> Problems {
        Problems::default()
    }

    /// Problems whose fields are under `prefix` (`"retry"`).
    #[cfg(test)]
    pub(crate) fn under(prefix: &str) -> Problems {
        Problems {
            prefix: prefix.to_owned(),
            problems: Vec::new(),
        }
    }

    fn path(&self, field: &str) -> String {
        match (self.prefix.is_empty(), field.starts_with('[')) {
            (true, _) => field.to_owned(),
            (false, true) => format!("{}{field}", self.prefix),
            (false, false) => format!("{}.{field}", self.prefix),
        }
    }

    pub(crate) fn add(&mut self, field: &str, message: impl Into<String>) {
        let field = self.path(field);
        self.problems.push(Problem {
            field,
            message: message.into(),
        });
    }

    /// The problems of a nested struct's `validate()`, under `field`.
    pub(crate) fn nested(&mut self, field: &str, result: Result<(), SettingsError>) {
        if let Err(e) = result {
            let base = self.path(field);
            for p in e.problems {
                let field = if p.field.starts_with('[') {
                    format!("{base}{}", p.field)
                } else {
                    format!("{base}.{}", p.field)
                };
                self.problems.push(Problem {
                    field,
                    message: p.message,
                });
            }
        }
    }

    /// A share: between 0 and 1.
    pub(crate) fn unit(&mut self, field: &str, value: f64) {
        if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
            self.add(field, format!("must be between 0 and 1, got {value}"));
        }
    }

    /// A count with a floor.
    pub(crate) fn at_least<T: PartialOrd + fmt::Display>(
        &mut self,
        field: &str,
        value: T,
        min: T,
        why: &str,
    ) {
        if value < min {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            self.add(field, format!("must be at least {min}{why}"));
        }
    }

    /// A duration that must not be zero.
    pub(crate) fn positive(&mut self, field: &str, value: Duration, why: &str) {
        if value.is_zero() {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            self.add(field, format!("must be greater than 0{why}"));
        }
    }

    /// `low` must not exceed `high` (reported at `low`).
    pub(crate) fn ordered(&mut self, low: (&str, Duration), high: (&str, Duration)) {
        if low.1 > high.1 {
            self.add(
                low.0,
                format!(
                    "{} ({}) must not exceed {} ({})",
                    low.0,
                    format_duration(low.1),
                    high.0,
                    format_duration(high.1)
                ),
            );
        }
    }

    pub(crate) fn finish(self) -> Result<(), SettingsError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError {
                problems: self.problems,
            })
        }
    }
}

/// A duration the way settings are written: `"250ms"`, `"15s"`,
/// `"1m 30s"`, `"1s 500ms"`, `"0s"`.
///
/// ```
/// use palisade::settings::format_duration;
/// use std::time::Duration;
///
/// assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
/// assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
/// assert_eq!(format_duration(Duration::from_micros(1500)), "1ms 500us");
/// assert_eq!(format_duration(Duration::ZERO), "0s");
/// ```
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1000 % 1000), "us"),
        (u64::from(nanos % 1000), "ns"),
    ];
    let mut out = String::new();
    for (n, unit) in parts {
        if n > 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&n.to_string());
            out.push_str(unit);
        }
    }
    out
}

/// How to write a duration, for error messages.
pub const DURATION_HINT: &str = r#"write e.g. "250ms", "15s" or "1m 30s""#;

/// Reads a duration string (`"250ms"`, `"1m 30s"`), with a message that
/// says how to write one when it is not.
#[cfg(feature = "serde")]
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e}; {DURATION_HINT}"))
}

/// Serde for a [`Duration`] written as a string (`"250ms"`): use with
/// `#[serde(with = "palisade::settings::duration")]`.
#[cfg(feature = "serde")]
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes `"250ms"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads `"250ms"`, `"1m 30s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a duration string ({})", super::DURATION_HINT)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                super::parse_duration(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visit)
    }
}

/// Serde for an optional [`Duration`]: a duration string, or `"none"`.
#[cfg(feature = "serde")]
pub mod opt_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes `"250ms"` or `"none"`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_str("none"),
        }
    }

    /// Reads `"250ms"` or `"none"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    r#"a duration string ({}) or "none""#,
                    super::DURATION_HINT
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<Duration>, E> {
                if v.eq_ignore_ascii_case("none") {
                    Ok(None)
                } else {
                    super::parse_duration(v).map(Some).map_err(E::custom)
                }
            }
        }
        d.deserialize_str(Visit)
    }
}

/// Serde for a live figure that is a [`Duration`]: written as milliseconds
/// (a number, for dashboards), as in `rtt_estimate_ms`. Serialize only: the
/// figures of a [`Snapshot`](crate::Snapshot) are not read back.
#[cfg(feature = "serde")]
pub mod millis {
    use std::time::Duration;

    use serde::Serializer;

    /// Writes `d` as fractional milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    /// [`serialize`] for an optional duration (`null` when absent).
    pub mod option {
        use super::*;

        /// Writes `d` as fractional milliseconds, or `null`.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_problems_carry_the_whole_path() {
        let mut inner = Problems::new();
        inner.add("[2]", "not an HTTP status");
        inner.add("max_attempts", "must be at least 1");
        let mut outer = Problems::under("services[0]");
        outer.nested("retry", inner.finish());
        let err = outer.finish().unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["services[0].retry[2]", "services[0].retry.max_attempts"]
        );
    }

    #[test]
    fn no_problem_is_ok() {
        let mut p = Problems::new();
        p.unit("share", 0.5);
        p.positive("window", Duration::from_secs(1), "");
        p.at_least("probes", 1, 1, "");
        assert!(p.finish().is_ok());
    }

    #[test]
    fn durations_read_back_as_written() {
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(3725),
            Duration::from_nanos(1_000_001),
            Duration::from_secs(2 * 86_400),
        ] {
            let text = format_duration(d);
            let back = humantime_parse(&text);
            assert_eq!(back, d, "{text}");
        }
    }

    fn humantime_parse(text: &str) -> Duration {
        // The parser the serde feature uses; parsed by hand here so the
        // test runs without the feature.
        let mut total = Duration::ZERO;
        for part in text.split(' ') {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            let n: u64 = digits.parse().unwrap();
            total += match &part[digits.len()..] {
                "d" => Duration::from_secs(n * 86_400),
                "h" => Duration::from_secs(n * 3600),
                "m" => Duration::from_secs(n * 60),
                "s" => Duration::from_secs(n),
                "ms" => Duration::from_millis(n),
                "us" => Duration::from_micros(n),
                "ns" => Duration::from_nanos(n),
                u => panic!("unit {u}"),
            };
        }
        total
    }
}
