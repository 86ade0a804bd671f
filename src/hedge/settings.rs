//! Hedging's settings: the delay before a backup and the budget backups
//! draw on, with the library's defaults and a `validate()` that names every
//! problem.

#[cfg(feature = "serde")]
use std::fmt;
use std::time::Duration;

use crate::settings::{Problems, SettingsError, format_duration};

/// How long to wait for an answer before sending the backup.
///
/// In a settings file (feature `serde`) it is a string: a percentile from
/// `"p1"` to `"p99.99"`, or a duration greater than 0 such as `"20ms"`.
///
/// ```
/// use palisade::hedge::HedgeDelay;
/// use std::time::Duration;
///
/// assert_eq!(HedgeDelay::default(), HedgeDelay::Percentile(0.95));
/// let fixed = HedgeDelay::Fixed(Duration::from_millis(20));
/// # let _ = fixed;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// Always this long.
    Fixed(Duration),
    /// This quantile (a fraction: 0.95 for p95, from 0.01 to 0.9999) of
    /// the latencies the layer observed recently; see the
    /// [module docs](super#the-delay).
    Percentile(f64),
}

impl Default for HedgeDelay {
    fn default() -> Self {
        HedgeDelay::Percentile(DEFAULT_PERCENTILE)
    }
}

/// What is wrong with a fixed delay of 0.
const ZERO_FIXED_DELAY: &str =
    "a fixed hedge delay must be greater than 0 (every request would be sent twice)";

/// The message for a percentile outside p1..=p99.99, written as `text`.
fn percentile_out_of_range(text: &str) -> String {
    format!("percentile {text:?} is out of range: from p1 to p99.99")
}

/// A quantile as a percentile string: 0.95 is `"p95"`, 0.999 `"p99.9"`.
fn percentile_text(q: f64) -> String {
    format!("p{}", (q * 100_000.0).round() / 1000.0)
}

impl HedgeDelay {
    /// What is wrong with this delay, if anything.
    fn problem(&self) -> Option<String> {
        match *self {
            HedgeDelay::Fixed(d) if d.is_zero() => Some(ZERO_FIXED_DELAY.to_owned()),
            HedgeDelay::Percentile(q) if !(0.01..=0.9999).contains(&q) => {
                Some(percentile_out_of_range(&percentile_text(q)))
            }
            _ => None,
        }
    }
}

/// Writes `"p95"` or a duration (`"20ms"`).
#[cfg(feature = "serde")]
impl serde::Serialize for HedgeDelay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeDelay::Fixed(d) => s.serialize_str(&format_duration(*d)),
            HedgeDelay::Percentile(q) => s.serialize_str(&percentile_text(*q)),
        }
    }
}

/// Reads `"p95"` (`"p1"` to `"p99.99"`) or a duration greater than 0
/// (`"20ms"`).
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for HedgeDelay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HedgeDelay, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = HedgeDelay;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    r#"a percentile such as "p95" or a duration ({})"#,
                    crate::settings::DURATION_HINT
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HedgeDelay, E> {
                if let Some(p) = v.strip_prefix('p').or_else(|| v.strip_prefix('P')) {
                    let pct: f64 = p.parse().map_err(|_| {
                        E::custom(format!(
                            r#"invalid percentile {v:?}: write "p" and a number, such as "p95" or "p99.9""#
                        ))
                    })?;
                    if !(pct.is_finite() && (1.0..=99.99).contains(&pct)) {
                        return Err(E::custom(percentile_out_of_range(v)));
                    }
                    // Thousandths of a percent: "p99.9" is exactly 0.999.
                    return Ok(HedgeDelay::Percentile((pct * 1000.0).round() / 100_000.0));
                }
                let d = crate::settings::parse_duration(v).map_err(E::custom)?;
                if d.is_zero() {
                    return Err(E::custom(ZERO_FIXED_DELAY));
                }
                Ok(HedgeDelay::Fixed(d))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// The default delay's quantile: p95.
pub const DEFAULT_PERCENTILE: f64 = 0.95;
/// Latency samples needed before the percentile is used (default 100).
pub const DEFAULT_MIN_SAMPLES: u64 = 100;
/// The delay while there are fewer samples (default 100 ms).
pub const DEFAULT_FALLBACK_DELAY: Duration = Duration::from_millis(100);
/// The window the percentile is taken over (default 10 s).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// The shortest [`window`](HedgeSettings::window): 10 ms.
pub const MIN_WINDOW: Duration = Duration::from_millis(10);
/// The share of requests that may be hedged, over the budget's 10 s
/// (default 0.05: 5 % extra load at most; no minimum per second).
pub const DEFAULT_BUDGET_RATIO: f64 = 0.05;
/// How long the hedge budget remembers requests (default 10 s).
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);

/// The settings of a [`HedgeLayer`](super::HedgeLayer); `Default` is the library's default.
///
/// ```
/// use palisade::hedge::{HedgeDelay, HedgeSettings};
/// use std::time::Duration;
///
/// let settings = HedgeSettings {
///     delay: HedgeDelay::Percentile(0.99),
///     fallback_delay: Duration::from_millis(250),
///     ..Default::default()
/// };
/// assert!(settings.validate().is_ok());
///
/// let settings = HedgeSettings { min_samples: 0, budget_ratio: 2.0, ..settings };
/// assert_eq!(
///     settings.validate().unwrap_err().to_string(),
///     "min_samples: must be at least 1; budget_ratio: must be a number greater than 0 \
///      and at most 1 (a share of requests), got 2"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct HedgeSettings {
    /// When the backup goes: a percentile of recent latencies (0.01 to
    /// 0.9999; `"p95"` in a file) or a fixed delay greater than 0
    /// (`"20ms"`). Default [`HedgeDelay::Percentile`]`(`[`DEFAULT_PERCENTILE`]`)`
    /// (p95).
    pub delay: HedgeDelay,
    /// Latency samples the window must hold before a percentile delay is
    /// used; at least 1. Default [`DEFAULT_MIN_SAMPLES`] (100).
    pub min_samples: u64,
    /// The delay used until then; greater than 0. Default
    /// [`DEFAULT_FALLBACK_DELAY`] (100 ms).
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub fallback_delay: Duration,
    /// How far back a percentile delay looks: samples are kept in two
    /// halves of this, so the percentile covers the last `window / 2` to
    /// `window`. At least [`MIN_WINDOW`] (10 ms). Default
    /// [`DEFAULT_WINDOW`] (10 s).
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub window: Duration,
    /// Backups as a share of requests (over 10 s, no minimum per second):
    /// the most extra load hedging may add. Greater than 0, at most 1.
    /// Default [`DEFAULT_BUDGET_RATIO`] (0.05).
    pub budget_ratio: f64,
}

impl Default for HedgeSettings {
    fn default() -> Self {
        HedgeSettings {
            delay: HedgeDelay::default(),
            min_samples: DEFAULT_MIN_SAMPLES,
            fallback_delay: DEFAULT_FALLBACK_DELAY,
            window: DEFAULT_WINDOW,
            budget_ratio: DEFAULT_BUDGET_RATIO,
        }
    }
}

impl HedgeSettings {
    /// Every problem with these settings, each at its field
    /// (`"budget_ratio"`).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        if let Some(message) = self.delay.problem() {
            p.add("delay", message);
        }
        p.at_least("min_samples", self.min_samples, 1, "");
        p.positive(
            "fallback_delay",
            self.fallback_delay,
            "every request would be sent twice",
        );
        p.positive("window", self.window, "");
        if !self.window.is_zero() && self.window < MIN_WINDOW {
            p.add(
                "window",
                format!("must be at least {}", format_duration(MIN_WINDOW)),
            );
        }
        let ratio = self.budget_ratio;
        if !(ratio.is_finite() && ratio > 0.0 && ratio <= 1.0) {
            p.add(
                "budget_ratio",
                format!(
                    "must be a number greater than 0 and at most 1 (a share of requests), got {ratio}"
                ),
            );
        }
        p.finish()
    }
}
