//! Endpoints: an address plus the metadata the balancer uses (weight, zone,
//! labels), and [`NewEndpoint`], the factory that turns one into a service.
//! Shared by discovery (which yields endpoints), the balancer (which builds
//! a service per endpoint) and the HTTP glue (which is such a factory).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

/// Where an endpoint listens: a socket address, or a `host:port` to be
/// resolved by the inner client's connector.
///
/// ```
/// use palisade::discover::Address;
///
/// let a: Address = "127.0.0.1:8080".parse().unwrap();
/// assert!(matches!(a, Address::Socket(_)));
/// let b: Address = "users.internal:80".parse().unwrap();
/// assert_eq!(b.to_string(), "users.internal:80");
/// assert!("no-port".parse::<Address>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A host name and port.
    Name {
        /// The host name (a DNS name, validated to be a URI authority host).
        host: Arc<str>,
        /// The port.
        port: u16,
    },
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Socket(addr)
    }
}

/// An address is written as text: `10.0.0.7:8080`, `users.internal:80`.
#[cfg(feature = "serde")]
impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Socket(addr) => addr.fmt(f),
            Address::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for Address {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Address::Socket(addr));
        }
        let err = |reason| EndpointError::new(s, reason);
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| err(Reason::Address("expected host:port")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| err(Reason::Address("port must be a number from 0 to 65535")))?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid_host {
            return Err(err(Reason::Address(
                "host must be an IP address or a DNS name (letters, digits, '-', '.', '_')",
            )));
        }
        Ok(Address::Name {
            host: host.into(),
            port,
        })
    }
}

/// One instance of a service: an address plus metadata.
///
/// The weight is a relative capacity (default 1.0): see
/// [the balancer docs](crate::balance#weights) for exactly how it is used.
/// Labels are free-form metadata (zone, version, …) carried through to
/// snapshots; the balancer does not interpret them.
///
/// ```
/// use palisade::discover::Endpoint;
///
/// let ep = Endpoint::parse("10.0.0.7:8080")?
///     .with_weight(2.0)?
///     .with_label("zone", "eu-west-1a");
/// assert_eq!(ep.weight(), 2.0);
/// assert_eq!(ep.labels().get("zone").map(String::as_str), Some("eu-west-1a"));
///
/// let err = Endpoint::parse("10.0.0.8:8080")?.with_weight(0.0).unwrap_err();
/// assert_eq!(err.to_string(), "endpoint \"10.0.0.8:8080\": weight must be finite and greater than 0, got 0");
/// # Ok::<(), palisade::discover::EndpointError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    address: Address,
    weight: f64,
    labels: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint at `address` with weight 1 and no labels.
    pub fn new(address: impl Into<Address>) -> Endpoint {
        Endpoint {
            address: address.into(),
            weight: 1.0,
            labels: BTreeMap::new(),
        }
    }

    /// Parses `ip:port`, `[ipv6]:port` or `host:port`.
    pub fn parse(address: &str) -> Result<Endpoint, EndpointError> {
        Ok(Endpoint::new(address.parse::<Address>()?))
    }

    /// Sets the weight; it must be finite and greater than zero.
    pub fn with_weight(mut self, weight: f64) -> Result<Endpoint, EndpointError> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(EndpointError::new(
                self.address.to_string(),
                Reason::Weight(weight),
            ));
        }
        self.weight = weight;
        Ok(self)
    }

    /// Adds (or replaces) a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Endpoint {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The endpoint's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The endpoint's weight (finite, greater than zero).
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The endpoint's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::new(addr)
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

/// An endpoint that could not be accepted; the message names it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointError {
    endpoint: String,
    reason: Reason,
}

#[derive(Debug, Clone, PartialEq)]
enum Reason {
    Address(&'static str),
    Weight(f64),
}

impl EndpointError {
    fn new(endpoint: impl Into<String>, reason: Reason) -> Self {
        let mut endpoint = endpoint.into();
        // Bound what we echo back: the input may be hostile.
        if endpoint.len() > 256 {
            let mut cut = 256;
            while !endpoint.is_char_boundary(cut) {
                cut -= 1;
            }
            endpoint.truncate(cut);
            endpoint.push('…');
        }
        EndpointError { endpoint, reason }
    }

    pub(crate) fn not_an_authority(address: &Address) -> Self {
        EndpointError::new(
            address.to_string(),
            Reason::Address("is not a valid URI authority"),
        )
    }

    /// The endpoint (as given) that was rejected.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Reason::Address(why) => write!(f, "endpoint {:?}: {why}", self.endpoint),
            Reason::Weight(w) => write!(
                f,
                "endpoint {:?}: weight must be finite and greater than 0, got {w}",
                self.endpoint
            ),
        }
    }
}

impl std::error::Error for EndpointError {}

/// Builds the service for one endpoint: the user-supplied factory.
///
/// Any `FnMut(&Endpoint) -> Result<S, E>` is one. For HTTP,
/// `palisade::http::HttpEndpoints` wraps one shared
/// client. An `Err` leaves that endpoint out (logged with its address); the
/// others keep serving.
///
/// ```
/// use palisade::balance::NewEndpoint;
/// use palisade::discover::Endpoint;
///
/// let mut factory = |ep: &Endpoint| Ok::<_, std::io::Error>(ep.address().to_string());
/// let svc = factory.new_endpoint(&Endpoint::parse("127.0.0.1:80").unwrap()).unwrap();
/// assert_eq!(svc, "127.0.0.1:80");
/// ```
pub trait NewEndpoint: Send + 'static {
    /// The per-endpoint service.
    type Service;
    /// Why a service could not be built.
    type Error: Into<Box<dyn std::error::Error + Send + Sync>>;
    /// Builds the service for `endpoint`.
    fn new_endpoint(&mut self, endpoint: &Endpoint) -> Result<Self::Service, Self::Error>;
}

impl<F, S, E> NewEndpoint for F
where
    F: FnMut(&Endpoint) -> Result<S, E> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Service = S;
    type Error = E;

    fn new_endpoint(&mut self, endpoint: &Endpoint) -> Result<S, E> {
        self(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "[::1]:80".parse::<Address>().unwrap(),
            Address::Socket("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            "svc-a.ns.svc.cluster.local:8080"
                .parse::<Address>()
                .unwrap()
                .to_string(),
            "svc-a.ns.svc.cluster.local:8080"
        );
    }

    #[test]
    fn rejects_bad_addresses_naming_them() {
        for (input, msg) in [
            ("", "expected host:port"),
            ("localhost", "expected host:port"),
            ("localhost:http", "port must be"),
            ("localhost:70000", "port must be"),
            (":80", "host must be"),
            ("bad host:80", "host must be"),
            ("a/b:80", "host must be"),
        ] {
            let err = input.parse::<Address>().unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(msg) && text.contains(&format!("{input:?}")),
                "{input:?} -> {text}"
            );
        }
    }

    #[test]
    fn rejects_bad_weights() {
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = Endpoint::parse("127.0.0.1:1")
                .unwrap()
                .with_weight(w)
                .unwrap_err();
            assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        }
        assert_eq!(
            Endpoint::parse("127.0.0.1:1")
                .unwrap()
                .with_weight(0.5)
                .unwrap()
                .weight(),
            0.5
        );
    }

    #[test]
    fn long_input_is_truncated_in_errors() {
        let long = "é".repeat(1000);
        let err = long.parse::<Address>().unwrap_err();
        assert!(err.endpoint().len() < 300);
    }
}
