//! The HTTP transport's settings: how the pooled hyper-util client
//! connects to endpoints and keeps their connections.

use std::time::Duration;

use crate::settings::{Problems, SettingsError};

/// How the pooled HTTP client ([`hyper_client`](super::hyper_client),
/// [`hyper_h2c_client`](super::hyper_h2c_client)) connects to an endpoint
/// and keeps its connections; every field has a documented default.
///
/// A connect that fails or takes longer than
/// [`connect_timeout`](Self::connect_timeout) is an error the classifier
/// knows was never sent: the endpoint's failure, retried on another
/// endpoint whatever the method.
///
/// ```
/// use palisade::http::HttpSettings;
/// use std::time::Duration;
///
/// let settings = HttpSettings {
///     connect_timeout: Duration::from_millis(250),
///     ..HttpSettings::default()
/// };
/// let client = settings.http1_client::<http_body_util::Full<bytes::Bytes>>()?;
/// # let _ = client;
/// assert_eq!(HttpSettings::default().connect_timeout, Duration::from_secs(1));
/// # Ok::<(), palisade::settings::SettingsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct HttpSettings {
    /// How long a TCP connect to an endpoint may take (divided among its
    /// addresses when a name resolves to several). Greater than 0.
    /// Default 1 s, as in Linkerd and Finagle.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept before it is closed.
    /// Greater than 0. Default 90 s.
    #[cfg_attr(feature = "serde", serde(with = "crate::settings::duration"))]
    pub idle_timeout: Duration,
    /// The most idle connections kept per endpoint; 0 keeps none (a
    /// connection per request over HTTP/1.1). Default 64 (hyper-util's
    /// own default is unbounded).
    pub max_idle_per_endpoint: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 64,
        }
    }
}

impl HttpSettings {
    /// Every problem with these settings, each at its field.
    ///
    /// ```
    /// use palisade::http::HttpSettings;
    /// use std::time::Duration;
    ///
    /// let bad = HttpSettings { connect_timeout: Duration::ZERO, ..HttpSettings::default() };
    /// assert_eq!(
    ///     bad.validate().unwrap_err().to_string(),
    ///     "connect_timeout: must be greater than 0"
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut p = Problems::new();
        p.positive("connect_timeout", self.connect_timeout, "");
        p.positive("idle_timeout", self.idle_timeout, "");
        p.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_every_bad_field() {
        let bad = HttpSettings {
            connect_timeout: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            max_idle_per_endpoint: 0,
        };
        let err = bad.validate().unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["connect_timeout", "idle_timeout"]);
        assert!(HttpSettings::default().validate().is_ok());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn reads_durations_and_refuses_unknown_keys() {
        let s: HttpSettings =
            toml::from_str("connect_timeout = \"250ms\"\nmax_idle_per_endpoint = 0\n").unwrap();
        assert_eq!(s.connect_timeout, Duration::from_millis(250));
        assert_eq!(s.max_idle_per_endpoint, 0);
        assert_eq!(s.idle_timeout, HttpSettings::default().idle_timeout);
        let err = toml::from_str::<HttpSettings>("connect = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `connect`"), "{err}");
    }
}
