//! [`ClientConfig`]: every layer's settings for one client, as data.

use crate::balance::{BalanceSettings, EjectionSettings};
use crate::budget::BudgetSettings;
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
    /// Failure accrual (outlier ejection).
    pub ejection: EjectionSettings,
}

impl ClientConfig {
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
        p.nested("ejection", self.ejection.validate());
        p.finish()
    }
}
