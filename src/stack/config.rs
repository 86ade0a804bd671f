//! [`ClientConfig`]: every layer's settings for one client, as data.

use crate::balance::{BalanceSettings, EjectionSettings};
use crate::breaker::BreakerSettings;
use crate::budget::BudgetSettings;
use crate::deadline::DeadlineSettings;
use crate::hedge::HedgeSettings;
use crate::limit::LimitSettings;
use crate::retry::RetrySettings;
use crate::settings::{Problems, SettingsError};

/// Every layer's settings for one client: what
/// [`Builder::config`](super::Builder::config) applies, and what a proxy
/// `[[services]]` entry holds beside its name, endpoints and protocol. Each
/// table is its layer's own settings struct, so a default is written once,
/// in that struct's `Default`.
///
/// Load one from a file with serde (feature `serde`; any format serde
/// reads, such as TOML or JSON). Unknown keys are refused, durations are
/// strings such as `"250ms"`, and every key left out keeps the library's
/// default:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use palisade::ClientConfig;
/// use std::time::Duration;
///
/// let config: ClientConfig = toml::from_str(r#"
///     retry = { max_attempts = 2, per_try_timeout = "300ms" }
///     budget = { ratio = 0.1 }
/// "#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.retry.per_try_timeout, Some(Duration::from_millis(300)));
/// assert_eq!(config.budget.min_per_sec, 10); // the default
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct ClientConfig {
    /// Load balancing.
    pub balancer: BalanceSettings,
    /// Retries.
    pub retry: RetrySettings,
    /// The retry budget.
    pub budget: BudgetSettings,
    /// Deadlines.
    pub deadline: DeadlineSettings,
    /// Failure accrual (outlier ejection).
    pub ejection: EjectionSettings,
    /// The service breaker.
    pub breaker: BreakerSettings,
    /// Limits: concurrency, rate, adaptive throttling. All off by default.
    pub limits: LimitSettings,
    /// Hedging: one backup request to another endpoint after a delay. Off
    /// unless present (in a file, `hedge = {}` hedges with the defaults).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub hedge: Option<HedgeSettings>,
}

impl ClientConfig {
    /// The tables of a `ClientConfig`, as a file names them.
    pub const KEYS: &'static [&'static str] = &[
        "balancer", "retry", "budget", "deadline", "ejection", "breaker", "limits", "hedge",
    ];

    /// Reads the value of one of [`KEYS`](Self::KEYS) (`"retry"`) from a map
    /// being deserialized, into this config; `Ok(false)` if `key` is not
    /// one of them. A struct that embeds a `ClientConfig` beside keys of
    /// its own (the proxy's `[[services]]` entries) reads its map with this
    /// instead of `#[serde(flatten)]`, which would buffer the values and
    /// lose the positions that errors are reported at.
    #[cfg(feature = "serde")]
    pub fn read_key<'de, A>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>
    where
        A: serde::de::MapAccess<'de>,
    {
        match key {
            "balancer" => self.balancer = map.next_value()?,
            "retry" => self.retry = map.next_value()?,
            "budget" => self.budget = map.next_value()?,
            "deadline" => self.deadline = map.next_value()?,
            "ejection" => self.ejection = map.next_value()?,
            "breaker" => self.breaker = map.next_value()?,
            "hedge" => self.hedge = Some(map.next_value()?),
            "limits" => self.limits = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Every problem in every table, each at its path (`retry.max_attempts`).
    ///
    /// ```
    /// use palisade::ClientConfig;
    ///
    /// let mut config = ClientConfig::default();
    /// config.retry.max_attempts = 0;
    /// config.budget.ratio = -1.0;
    /// let err = config.validate().unwrap_err();
    /// let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    /// assert_eq!(fields, ["retry.max_attempts", "budget.ratio"]);
    /// ```
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        p.nested("balancer", self.balancer.validate());
        p.nested("retry", self.retry.validate());
        p.nested("budget", self.budget.validate());
        p.nested("deadline", self.deadline.validate());
        p.nested("ejection", self.ejection.validate());
        p.nested("breaker", self.breaker.validate());
        p.nested("limits", self.limits.validate());
        if let Some(hedge) = &self.hedge {
            p.nested("hedge", hedge.validate());
        }
        p.finish()
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    /// `KEYS` and `read_key` list the tables by hand; serde's derive lists
    /// them too. They must agree, or a table would be readable one way and
    /// not the other.
    #[test]
    fn keys_are_the_serialized_tables() {
        let full = ClientConfig {
            hedge: Some(HedgeSettings::default()),
            ..ClientConfig::default()
        };
        let value = serde_json::to_value(&full).unwrap();
        let mut serialized: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        serialized.sort_unstable();
        let mut keys = ClientConfig::KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(serialized, keys);

        struct Probe;
        impl<'de> serde::de::Visitor<'de> for Probe {
            type Value = ClientConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ClientConfig, A::Error> {
                let mut config = ClientConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    assert!(config.read_key(&key, &mut map)?, "read_key misses {key}");
                }
                Ok(config)
            }
        }
        let mut written = full.clone();
        written.retry.max_attempts = 7;
        written.budget.min_per_sec = 3;
        let text = serde_json::to_string(&written).unwrap();
        let mut de = serde_json::Deserializer::from_str(&text);
        let read = serde::Deserializer::deserialize_map(&mut de, Probe).unwrap();
        assert_eq!(read, written);
    }
}
