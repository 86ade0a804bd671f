//! The balancer's settings and failure accrual's: plain data with the
//! library's defaults and a `validate()` that names every problem.

use std::time::Duration;

use crate::settings::{Problems, SettingsError};

/// How the balancer picks an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Choice {
    /// Power of two choices over peak-EWMA cost (the default); written
    /// `"p2c"`.
    #[cfg_attr(feature = "serde", serde(rename = "p2c"))]
    #[default]
    PeakEwmaP2c,
    /// One weighted random draw, ignoring load: a baseline to measure the
    /// default against (the demo and the benchmarks use it).
    Random,
}

/// The balancer's settings; every field has a documented default.
///
/// ```
/// use palisade::balance::BalanceSettings;
/// use std::time::Duration;
///
/// let mut config = BalanceSettings::default();
/// config.failure_penalty = Duration::from_secs(2);
/// assert_eq!(config.decay, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct BalanceSettings {
    /// Time constant of the EWMA decay. Default 10 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub decay: Duration,
    /// Seed estimate for an endpoint when the set is empty. Default 30 ms.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub default_rtt: Duration,
    /// Floor of every estimate used in the cost. Default 1 ms.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub min_rtt: Duration,
    /// What a failure adds to an endpoint's cost; it fades with this as its
    /// time constant. Default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub failure_penalty: Duration,
    /// How long a request waits for an endpoint when there is none, or
    /// when every endpoint has
    /// [`endpoint_max_in_flight`](Self::endpoint_max_in_flight) requests
    /// outstanding. Default 3 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub endpoint_wait: Duration,
    /// The most requests one endpoint may have outstanding at once (until
    /// each response's body ends). An endpoint at this cap is passed over;
    /// when every endpoint is, a request waits for a slot up to
    /// [`endpoint_wait`](Self::endpoint_wait) (and never past its
    /// deadline), then fails with [`Error::Overloaded`](crate::Error::Overloaded)
    /// ([`Limit::EndpointInFlight`](crate::error::Limit::EndpointInFlight)).
    /// Over HTTP/1.1 each outstanding request holds a connection of its
    /// own, so this is also the cap on connections per endpoint; over
    /// HTTP/2 it caps streams. At least 1. Default 256.
    pub endpoint_max_in_flight: usize,
    /// Whether the balancer watches for stalled endpoints: one that has
    /// requests outstanding and has answered none of them for
    /// `max(stall_factor × its latency estimate, stall_floor)` is not
    /// picked, and its idempotent requests are given up (the endpoint's
    /// failure) so that the retry layer can send them elsewhere. Default
    /// true; see the [module docs](super#stalled-endpoints).
    pub stall_detection: bool,
    /// How many times its own latency estimate an endpoint may go silent
    /// before it is stalled. At least 1. Default 8.
    pub stall_factor: f64,
    /// The least silence that makes an endpoint stalled, however fast it
    /// usually answers. Greater than 0. Default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub stall_floor: Duration,
    /// The selection strategy. Default [`Choice::PeakEwmaP2c`].
    pub choice: Choice,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        BalanceSettings {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            min_rtt: Duration::from_millis(1),
            failure_penalty: Duration::from_secs(1),
            endpoint_wait: Duration::from_secs(3),
            endpoint_max_in_flight: 256,
            stall_detection: true,
            stall_factor: 8.0,
            stall_floor: Duration::from_secs(1),
            choice: Choice::PeakEwmaP2c,
        }
    }
}

/// When endpoints are ejected, for how long, and how many may be.
///
/// An endpoint is ejected after [`consecutive_failures`](Self::consecutive_failures)
/// failures in a row, at once when it cannot be reached (a connect refused
/// or timed out: [`Class::unreachable`](crate::classify::Class::unreachable)),
/// or when its success rate over
/// [`window`](Self::window) falls below [`success_rate`](Self::success_rate)
/// with at least [`min_requests`](Self::min_requests) requests in it. A 429
/// (an [`Outcome::Overloaded`](crate::classify::Outcome::Overloaded)) counts against the success rate but does not
/// break or extend a run of consecutive failures: an overloaded endpoint is
/// busy, not broken.
///
/// An ejected endpoint gets no requests. After its penalty (starting at
/// [`base_penalty`](Self::base_penalty), ± [`jitter`](Self::jitter)/2) it
/// gets exactly one probe request at a time; a successful probe restores it
/// (its load estimate restarts from the probe's latency, so it gets its fair
/// share back at once), a failed one ejects it again for twice the penalty,
/// up to [`max_penalty`](Self::max_penalty).
///
/// Fleet guards, as Envoy has them: at most
/// [`max_ejection_percent`](Self::max_ejection_percent) of the endpoints are
/// ejected at once (always allowing one); and when fewer than
/// [`panic_threshold`](Self::panic_threshold) of them are available, the
/// balancer ignores ejections and uses every endpoint (logged on entering and
/// leaving that *panic mode*).
///
/// ```
/// use palisade::balance::EjectionSettings;
/// use std::time::Duration;
///
/// let mut ejection = EjectionSettings::default();
/// ejection.consecutive_failures = 3;
/// ejection.max_penalty = Duration::from_secs(30);
/// assert_eq!(ejection.success_rate, 0.8);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct EjectionSettings {
    /// Whether endpoints are ejected at all. Default on.
    pub enabled: bool,
    /// Failures in a row that eject an endpoint. Default 5; 0 turns this
    /// trigger off.
    pub consecutive_failures: u32,
    /// The success rate below which an endpoint is ejected. Default 0.8; 0
    /// turns this trigger off.
    pub success_rate: f64,
    /// The window the success rate is measured over. Default 10 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub window: Duration,
    /// Requests needed in the window before the success rate counts.
    /// Default 5.
    pub min_requests: u32,
    /// The first ejection's length. Default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub base_penalty: Duration,
    /// The longest ejection. Default 1 min.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub max_penalty: Duration,
    /// Each penalty is scaled by a random factor in `1 ± jitter/2`.
    /// Default 0.5.
    pub jitter: f64,
    /// The largest share of endpoints ejected at once (at least one is
    /// always allowed). Default 0.5.
    pub max_ejection_percent: f64,
    /// When the share of available (not ejected) endpoints is below this,
    /// ejections are ignored. Default 0.5.
    pub panic_threshold: f64,
}

impl Default for EjectionSettings {
    fn default() -> Self {
        EjectionSettings {
            enabled: true,
            consecutive_failures: 5,
            success_rate: 0.8,
            window: Duration::from_secs(10),
            min_requests: 5,
            base_penalty: Duration::from_secs(1),
            max_penalty: Duration::from_secs(60),
            jitter: 0.5,
            max_ejection_percent: 0.5,
            panic_threshold: 0.5,
        }
    }
}

impl BalanceSettings {
    /// How long an endpoint whose latency estimate is `estimate_ns` may go
    /// silent with requests outstanding before it is stalled; `u64::MAX`
    /// (never) with stall detection off.
    pub(crate) fn stall_after_ns(&self, estimate_ns: f64) -> u64 {
        if !self.stall_detection {
            return u64::MAX;
        }
        (self.stall_factor * estimate_ns).max(self.stall_floor.as_nanos() as f64) as u64
    }

    /// Every problem with these settings, each at its field.
    ///
    /// ```
    /// use palisade::balance::BalanceSettings;
    /// use std::time::Duration;
    ///
    /// let bad = BalanceSettings { decay: Duration::ZERO, ..BalanceSettings::default() };
    /// assert_eq!(bad.validate().unwrap_err().to_string(), "decay: must be greater than 0");
    /// ```
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        p.positive("decay", self.decay, "");
        p.at_least("endpoint_max_in_flight", self.endpoint_max_in_flight, 1, "");
        if !(self.stall_factor >= 1.0 && self.stall_factor.is_finite()) {
            p.add(
                "stall_factor",
                format!(
                    "must be a finite number of at least 1, got {}",
                    self.stall_factor
                ),
            );
        }
        p.positive("stall_floor", self.stall_floor, "");
        p.finish()
    }
}

impl EjectionSettings {
    /// Every problem with these settings, each at its field.
    ///
    /// ```
    /// use palisade::balance::EjectionSettings;
    ///
    /// let bad = EjectionSettings { success_rate: 1.5, ..EjectionSettings::default() };
    /// assert_eq!(
    ///     bad.validate().unwrap_err().to_string(),
    ///     "success_rate: must be between 0 and 1, got 1.5"
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        p.unit("success_rate", self.success_rate);
        p.positive("window", self.window, "");
        p.at_least("min_requests", self.min_requests, 1, "");
        p.positive("base_penalty", self.base_penalty, "");
        p.ordered(
            ("base_penalty", self.base_penalty),
            ("max_penalty", self.max_penalty),
        );
        p.unit("jitter", self.jitter);
        p.unit("max_ejection_percent", self.max_ejection_percent);
        p.unit("panic_threshold", self.panic_threshold);
        p.finish()
    }
}
