//! Discovery tables: where a service's endpoints come from when they are
//! not listed.

use super::*;

// ---------------------------------------------------------------------------
// Discovery: where a service's endpoints come from, when not listed.

/// Where a service's endpoints come from when they are not listed: one
/// source, named by its key (`dns`, `file` or `kubernetes`, whose value
/// says what to watch), with that source's settings beside it. Each source
/// starts empty, feeds the balancer as it learns, and keeps its last good
/// set through failures.
///
/// ```toml
/// discovery = { dns = "users.internal:8080" }
/// discovery = { dns = "_http._tcp.users.internal", refresh_max = "30s" }
/// discovery = { file = "endpoints.json", interval = "1s" }
/// discovery = { kubernetes = { namespace = "shop", service = "users", port = "http" } }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DiscoveryTable", into = "DiscoveryTable")]
#[non_exhaustive]
pub enum Discovery {
    /// A/AAAA or SRV records (`palisade::discover::dns`, feature `dns`).
    Dns(DnsDiscovery),
    /// A JSON or TOML file of endpoints (`palisade::discover::file`).
    File(FileDiscovery),
    /// A Service's EndpointSlices (`palisade::discover::kubernetes`,
    /// feature `kubernetes`).
    Kubernetes(KubernetesDiscovery),
}

impl Discovery {
    /// The source's key in the file: `"dns"`, `"file"` or `"kubernetes"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Discovery::Dns(_) => "dns",
            Discovery::File(_) => "file",
            Discovery::Kubernetes(_) => "kubernetes",
        }
    }
}

/// DNS discovery (`palisade::discover::dns`, feature `dns`). Settings left
/// out take the library's defaults.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DnsDiscovery {
    /// `dns`: `host:port` for A/AAAA records (every address gets the port),
    /// or `_service._proto.name` for SRV records (ports and weights from
    /// the records).
    pub name: String,
    /// The shortest re-resolve interval: record TTLs are raised to it, and
    /// retries after a failure wait at least this. Greater than 0, at most
    /// `refresh_max`. Default: the library's (`dns::DEFAULT_MIN_REFRESH`).
    pub refresh_min: Option<Duration>,
    /// The longest re-resolve interval: record TTLs are cut to it, and so
    /// is the backoff after failures. Default: the library's
    /// (`dns::DEFAULT_MAX_REFRESH`).
    pub refresh_max: Option<Duration>,
    /// What NXDOMAIN (or an answer without usable records) does to the
    /// endpoints: keep the last set (the default) or clear it.
    pub on_nxdomain: OnNxdomain,
    /// Which address records: A and AAAA (the default), or one of them.
    pub ip_family: IpFamily,
    /// Name servers to ask, instead of the system's (`/etc/resolv.conf`);
    /// at least one when given.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// How long one query may take. Default: the system configuration's.
    pub query_timeout: Option<Duration>,
    /// The most endpoints one answer gives the balancer (at least 1); past
    /// it the first by address are kept. Default: the library's
    /// (`dns::DEFAULT_MAX_ENDPOINTS`, 100,000).
    pub max_endpoints: Option<usize>,
}

impl DnsDiscovery {
    /// DNS discovery of `name` with the default settings.
    pub fn new(name: impl Into<String>) -> DnsDiscovery {
        DnsDiscovery {
            name: name.into(),
            refresh_min: None,
            refresh_max: None,
            on_nxdomain: OnNxdomain::default(),
            ip_family: IpFamily::default(),
            nameservers: None,
            query_timeout: None,
            max_endpoints: None,
        }
    }

    /// The library's source for these settings, checked by the library
    /// (name and settings) but not started.
    #[cfg(feature = "dns")]
    pub(crate) fn to_dns(
        &self,
    ) -> Result<crate::discover::dns::Dns, crate::discover::dns::DnsError> {
        use crate::discover::dns;
        let mut source = dns::Dns::parse(&self.name)?
            .refresh_bounds(
                self.refresh_min.unwrap_or(dns::DEFAULT_MIN_REFRESH),
                self.refresh_max.unwrap_or(dns::DEFAULT_MAX_REFRESH),
            )
            .on_nxdomain(match self.on_nxdomain {
                OnNxdomain::Keep => dns::OnNxdomain::Keep,
                OnNxdomain::Clear => dns::OnNxdomain::Clear,
            })
            .ip_family(match self.ip_family {
                IpFamily::Both => dns::IpFamily::Both,
                IpFamily::V4 => dns::IpFamily::V4,
                IpFamily::V6 => dns::IpFamily::V6,
            });
        if let Some(servers) = &self.nameservers {
            source = source.nameservers(servers.iter().copied());
        }
        if let Some(timeout) = self.query_timeout {
            source = source.query_timeout(timeout);
        }
        if let Some(max) = self.max_endpoints {
            source = source.max_endpoints(max);
        }
        source.check()?;
        Ok(source)
    }
}

/// What DNS discovery does with its endpoints when the name stops
/// resolving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OnNxdomain {
    /// Keep the last good set (the default).
    #[default]
    Keep,
    /// Clear it: requests fail fast until the name resolves again.
    Clear,
}

/// Which address records DNS discovery asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum IpFamily {
    /// A and AAAA (the default).
    #[default]
    Both,
    /// A only.
    V4,
    /// AAAA only.
    V6,
}

/// File discovery (`palisade::discover::file`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FileDiscovery {
    /// `file`: the endpoints file, JSON or TOML. A relative path is
    /// relative to the config file's directory.
    pub path: PathBuf,
    /// How often the file is checked for changes; greater than 0. Default
    /// [`file::DEFAULT_INTERVAL`](crate::discover::file::DEFAULT_INTERVAL).
    pub interval: Duration,
    /// The format, whatever the file's name says. Default: from the name's
    /// extension.
    pub format: Option<FileFormat>,
    /// The most entries the file may list; a file with more is rejected
    /// (the last good set stays) with an error naming the limit. Default:
    /// the library's
    /// ([`file::DEFAULT_MAX_ENDPOINTS`](crate::discover::file::DEFAULT_MAX_ENDPOINTS),
    /// 100,000).
    pub max_endpoints: Option<usize>,
}

impl FileDiscovery {
    /// File discovery of `path` with the default settings.
    pub fn new(path: impl Into<PathBuf>) -> FileDiscovery {
        FileDiscovery {
            path: path.into(),
            interval: crate::discover::file::DEFAULT_INTERVAL,
            format: None,
            max_endpoints: None,
        }
    }

    /// The library's source for these settings (not started), with the
    /// path resolved against `config`'s directory.
    pub(crate) fn to_watch(&self, config: &Config) -> crate::discover::file::Watch {
        use crate::discover::file::{Format, Watch};
        let mut watch = Watch::new(config.resolve_path(&self.path)).interval(self.interval);
        if let Some(max) = self.max_endpoints {
            watch = watch.max_endpoints(max);
        }
        match self.format {
            Some(FileFormat::Json) => watch.format(Format::Json),
            Some(FileFormat::Toml) => watch.format(Format::Toml),
            None => watch,
        }
    }
}

/// The format of an endpoints file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FileFormat {
    /// JSON.
    Json,
    /// TOML.
    Toml,
}

/// Kubernetes discovery (`palisade::discover::kubernetes`, feature
/// `kubernetes`): the ready endpoints of a Service, through the API server
/// the proxy finds the way `kubectl` does (in a pod: its service account).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `namespace`, `service` and (optionally) `port`"
)]
#[non_exhaustive]
pub struct KubernetesDiscovery {
    /// The namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service port's name (e.g. `"http"`). Default: each
    /// EndpointSlice's only TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// The most endpoints kept (the first by address; the rest are left
    /// out, with a warning). At least 1. Default: the library's
    /// `discover::kubernetes::DEFAULT_MAX_ENDPOINTS` (100,000; that module
    /// is built with the `kubernetes` feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_endpoints: Option<usize>,
}

/// The `discovery` table as written: the source's key and every source's
/// settings. Reading it checks that there is one source and that the
/// settings given are that source's.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoveryTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kubernetes: Option<KubernetesDiscovery>,
    // dns
    #[serde(
        default,
        with = "maybe_duration",
        skip_serializing_if = "Option::is_none"
    )]
    refresh_min: Option<Duration>,
    #[serde(
        default,
        with = "maybe_duration",
        skip_serializing_if = "Option::is_none"
    )]
    refresh_max: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_nxdomain: Option<OnNxdomain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip_family: Option<IpFamily>,
    #[serde(
        default,
        with = "maybe_socket_addrs",
        skip_serializing_if = "Option::is_none"
    )]
    nameservers: Option<Vec<SocketAddr>>,
    #[serde(
        default,
        with = "maybe_duration",
        skip_serializing_if = "Option::is_none"
    )]
    query_timeout: Option<Duration>,
    // file
    #[serde(
        default,
        with = "maybe_duration",
        skip_serializing_if = "Option::is_none"
    )]
    interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<FileFormat>,
    // dns and file
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_endpoints: Option<usize>,
}

/// The settings of each source, as they are written.
pub(crate) const DNS_SETTINGS: &str = "`refresh_min`, `refresh_max`, `on_nxdomain`, `ip_family`, `nameservers`, `query_timeout` and `max_endpoints`";
pub(crate) const FILE_SETTINGS: &str = "`interval`, `format` and `max_endpoints`";

impl TryFrom<DiscoveryTable> for Discovery {
    type Error = String;

    fn try_from(t: DiscoveryTable) -> Result<Discovery, String> {
        let dns_settings = [
            ("refresh_min", t.refresh_min.is_some()),
            ("refresh_max", t.refresh_max.is_some()),
            ("on_nxdomain", t.on_nxdomain.is_some()),
            ("ip_family", t.ip_family.is_some()),
            ("nameservers", t.nameservers.is_some()),
            ("query_timeout", t.query_timeout.is_some()),
        ];
        let file_settings = [
            ("interval", t.interval.is_some()),
            ("format", t.format.is_some()),
        ];
        let first = |settings: &[(&'static str, bool)]| {
            settings
                .iter()
                .find_map(|(key, given)| given.then_some(*key))
        };
        // A setting of another source: the message names the key, so the
        // problem is placed at it.
        let misplaced = |source: &str, takes: &str, others: &[(&str, &[(&'static str, bool)])]| {
            others.iter().find_map(|(other, settings)| {
                first(settings).map(|key| {
                    format!(
                        "unknown field `{key}`: a setting of {other} discovery, not of {source} discovery ({takes})"
                    )
                })
            })
        };
        let sources: Vec<&str> = [
            ("`dns`", t.dns.is_some()),
            ("`file`", t.file.is_some()),
            ("`kubernetes`", t.kubernetes.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect();
        match (t.dns, t.file, t.kubernetes) {
            (Some(name), None, None) => {
                let takes = format!("which takes {DNS_SETTINGS}");
                if let Some(e) = misplaced("dns", &takes, &[("file", &file_settings)]) {
                    return Err(e);
                }
                Ok(Discovery::Dns(DnsDiscovery {
                    name,
                    refresh_min: t.refresh_min,
                    refresh_max: t.refresh_max,
                    on_nxdomain: t.on_nxdomain.unwrap_or_default(),
                    ip_family: t.ip_family.unwrap_or_default(),
                    nameservers: t.nameservers,
                    query_timeout: t.query_timeout,
                    max_endpoints: t.max_endpoints,
                }))
            }
            (None, Some(path), None) => {
                let takes = format!("which takes {FILE_SETTINGS}");
                if let Some(e) = misplaced("file", &takes, &[("dns", &dns_settings)]) {
                    return Err(e);
                }
                let mut file = FileDiscovery::new(path);
                file.interval = t.interval.unwrap_or(file.interval);
                file.format = t.format;
                file.max_endpoints = t.max_endpoints;
                Ok(Discovery::File(file))
            }
            (None, None, Some(kubernetes)) => {
                let takes = "whose settings are in its own table";
                let shared = [("max_endpoints", t.max_endpoints.is_some())];
                let others: [(&str, &[(&'static str, bool)]); 3] = [
                    ("dns", &dns_settings),
                    ("file", &file_settings),
                    ("dns and file", &shared),
                ];
                if let Some(e) = misplaced("kubernetes", takes, &others) {
                    return Err(e);
                }
                Ok(Discovery::Kubernetes(kubernetes))
            }
            (None, None, None) => Err(
                "names no source: give one of `dns`, `file` or `kubernetes`, e.g. \
                 `discovery = { dns = \"users.internal:8080\" }`"
                    .into(),
            ),
            _ => Err(format!(
                "give one source, not {}: {}",
                sources.len(),
                sources.join(" and ")
            )),
        }
    }
}

impl From<Discovery> for DiscoveryTable {
    fn from(d: Discovery) -> DiscoveryTable {
        let mut t = DiscoveryTable {
            dns: None,
            file: None,
            kubernetes: None,
            refresh_min: None,
            refresh_max: None,
            on_nxdomain: None,
            ip_family: None,
            nameservers: None,
            query_timeout: None,
            interval: None,
            format: None,
            max_endpoints: None,
        };
        match d {
            Discovery::Dns(dns) => {
                t.dns = Some(dns.name);
                t.refresh_min = dns.refresh_min;
                t.refresh_max = dns.refresh_max;
                t.on_nxdomain = Some(dns.on_nxdomain);
                t.ip_family = Some(dns.ip_family);
                t.nameservers = dns.nameservers;
                t.query_timeout = dns.query_timeout;
                t.max_endpoints = dns.max_endpoints;
            }
            Discovery::File(file) => {
                t.file = Some(file.path);
                t.interval = Some(file.interval);
                t.format = file.format;
                t.max_endpoints = file.max_endpoints;
            }
            Discovery::Kubernetes(kubernetes) => t.kubernetes = Some(kubernetes),
        }
        t
    }
}
