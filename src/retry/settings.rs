//! The retry layer's settings: plain data with the library's defaults.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::classify::{GrpcCode, HttpClassify};
use crate::settings::{Problems, SettingsError};

/// What the retry layer may retry and how; see the [module docs](super).
/// `Default` is the library's default; [`validate`](Self::validate) names
/// every problem.
///
/// ```
/// use palisade::retry::RetrySettings;
/// use std::time::Duration;
///
/// let settings = RetrySettings {
///     max_attempts: 2,
///     per_try_timeout: Some(Duration::from_millis(300)),
///     ..RetrySettings::default()
/// };
/// assert!(settings.validate().is_ok());
/// assert_eq!(settings.retryable_statuses, [502, 503, 504]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct RetrySettings {
    /// Attempts in total, the first included (1 disables retries). At
    /// least 1. Default 3.
    pub max_attempts: u32,
    /// The first retry waits up to this long (full jitter), doubling per
    /// retry; at most `backoff_cap`. Default 25 ms.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub backoff_base: Duration,
    /// The longest wait between attempts. Default 250 ms.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub backoff_cap: Duration,
    /// A timeout for each attempt, capped by what remains of the deadline
    /// (`"none"` in a file). Default none.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::opt_duration"))]
    pub per_try_timeout: Option<Duration>,
    /// Request body bytes kept so the body can be sent again; a larger body
    /// is sent once and not retried. Default 65536.
    pub body_limit: usize,
    /// Response statuses retried for idempotent methods: 429 or 500 to 599
    /// (other 4xx answers are the request's own fault; sending it again
    /// gets the same answer). Applies to the default HTTP classifier.
    /// Default `[502, 503, 504]`.
    pub retryable_statuses: Vec<u16>,
    /// gRPC statuses retried, for any method, when they arrive in a
    /// Trailers-Only response (gRPC's retry rule, gRFC A6: once response
    /// headers arrive the call is committed): names like `"UNAVAILABLE"`,
    /// each a failure code (UNKNOWN, DEADLINE_EXCEEDED, INTERNAL,
    /// UNAVAILABLE, DATA_LOSS) or RESOURCE_EXHAUSTED. Applies to the default
    /// classifier. Default `["UNAVAILABLE"]`.
    pub retryable_grpc_codes: Vec<GrpcCode>,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 3,
            backoff_base: Duration::from_millis(25),
            backoff_cap: Duration::from_millis(250),
            per_try_timeout: None,
            body_limit: 64 * 1024,
            retryable_statuses: vec![502, 503, 504],
            retryable_grpc_codes: vec![GrpcCode::Unavailable],
        }
    }
}

/// The most statuses `retryable_statuses` may list.
const MAX_STATUSES: usize = 64;

impl RetrySettings {
    /// Every problem with these settings, each at its field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        p.at_least("max_attempts", self.max_attempts, 1, "1 means no retries");
        p.ordered(
            ("backoff_base", self.backoff_base),
            ("backoff_cap", self.backoff_cap),
        );
        if self.per_try_timeout == Some(Duration::ZERO) {
            p.add(
                "per_try_timeout",
                "must be greater than 0 (\"none\" for no per-try timeout)",
            );
        }
        if self.retryable_statuses.len() > MAX_STATUSES {
            p.add(
                "retryable_statuses",
                format!(
                    "lists {} statuses; at most {MAX_STATUSES}",
                    self.retryable_statuses.len()
                ),
            );
        }
        for (k, &status) in self.retryable_statuses.iter().enumerate() {
            let field = format!("retryable_statuses[{k}]");
            if !(100..=599).contains(&status) {
                p.add(
                    &field,
                    format!("{status} is not an HTTP status (100 to 599)"),
                );
            } else if !(status == 429 || (500..=599).contains(&status)) {
                p.add(
                    &field,
                    format!(
                        "{status} cannot be retried: only 429 and 500 to 599 can (any other \
                         answer below 500 is the request's own fault, and sending it again \
                         gets the same answer)"
                    ),
                );
            }
        }
        if self.retryable_grpc_codes.len() > GrpcCode::ALL.len() {
            p.add(
                "retryable_grpc_codes",
                format!(
                    "lists {} codes; there are {} gRPC codes",
                    self.retryable_grpc_codes.len(),
                    GrpcCode::ALL.len()
                ),
            );
        }
        let judge = HttpClassify::default();
        for (k, &code) in self.retryable_grpc_codes.iter().enumerate() {
            if !judge.classify_grpc(code).is_failure() {
                p.add(
                    &format!("retryable_grpc_codes[{k}]"),
                    format!(
                        "{code} cannot be retried: only UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, \
                         UNAVAILABLE, DATA_LOSS and RESOURCE_EXHAUSTED can (any other code is \
                         the call's own answer, and sending it again gets the same one)"
                    ),
                );
            }
        }
        p.finish()
    }

    /// The default classifier, retrying what these settings list.
    pub fn classifier(&self) -> HttpClassify {
        HttpClassify::default()
            .retryable_codes(&self.retryable_statuses)
            .retryable_grpc_codes(self.retryable_grpc_codes.iter().copied())
    }

    /// The backoff these settings describe.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_base, self.backoff_cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(RetrySettings::default().validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_named_at_its_field() {
        let bad = RetrySettings {
            max_attempts: 0,
            backoff_base: Duration::from_secs(1),
            per_try_timeout: Some(Duration::ZERO),
            retryable_statuses: vec![503, 404, 700],
            ..RetrySettings::default()
        };
        let problems = bad.validate().unwrap_err().into_problems();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "max_attempts",
                "backoff_base",
                "per_try_timeout",
                "retryable_statuses[1]",
                "retryable_statuses[2]"
            ]
        );
        assert_eq!(
            problems[1].message,
            "backoff_base (1s) must not exceed backoff_cap (250ms)"
        );
        assert!(problems[3].message.starts_with("404 cannot be retried"));
        assert_eq!(
            problems[4].message,
            "700 is not an HTTP status (100 to 599)"
        );
    }

    #[test]
    fn only_failing_grpc_codes_may_be_retried() {
        let s = RetrySettings {
            retryable_grpc_codes: vec![
                GrpcCode::Unavailable,
                GrpcCode::NotFound,
                GrpcCode::ResourceExhausted,
            ],
            ..RetrySettings::default()
        };
        let problems = s.validate().unwrap_err().into_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "retryable_grpc_codes[1]");
        assert!(
            problems[0]
                .message
                .starts_with("NOT_FOUND cannot be retried"),
            "{}",
            problems[0].message
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn grpc_codes_are_read_by_name() {
        let s: RetrySettings =
            toml::from_str("retryable_grpc_codes = [\"unavailable\", \"RESOURCE_EXHAUSTED\"]")
                .unwrap();
        assert_eq!(
            s.retryable_grpc_codes,
            [GrpcCode::Unavailable, GrpcCode::ResourceExhausted]
        );
        let err =
            toml::from_str::<RetrySettings>("retryable_grpc_codes = [\"UNAVAIL\"]").unwrap_err();
        assert!(
            err.to_string()
                .contains("\"UNAVAIL\" is not a gRPC status code"),
            "{err}"
        );
    }

    #[test]
    fn a_429_may_be_retried() {
        let s = RetrySettings {
            retryable_statuses: vec![429, 500],
            ..RetrySettings::default()
        };
        assert_eq!(s.validate(), Ok(()));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn reads_durations_and_refuses_unknown_fields() {
        let s: RetrySettings =
            toml::from_str("max_attempts = 2\nper_try_timeout = \"300ms\"\nbackoff_cap = \"1s\"")
                .unwrap();
        assert_eq!(s.max_attempts, 2);
        assert_eq!(s.per_try_timeout, Some(Duration::from_millis(300)));
        assert_eq!(s.backoff_cap, Duration::from_secs(1));
        assert_eq!(s.body_limit, RetrySettings::default().body_limit);
        let back: RetrySettings = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let err = toml::from_str::<RetrySettings>("max_attempt = 2").unwrap_err();
        assert!(err.to_string().contains("max_attempt"), "{err}");
        let none: RetrySettings = toml::from_str("per_try_timeout = \"none\"").unwrap();
        assert_eq!(none.per_try_timeout, None);
    }
}
