//! Validation: every problem in a config, each at its field and line.

use super::*;
use crate::proxy::listen::{MAX_MAX_HEADERS, MIN_MAX_HEADER_BYTES};

// ---------------------------------------------------------------------------
// Validation and lints.

/// Problems found, with lines looked up by path.
pub(crate) struct Report<'a> {
    source: &'a SourceMap,
    problems: Vec<Problem>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(source: &'a SourceMap) -> Self {
        Report {
            source,
            problems: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.problems.push(Problem {
            field: path.to_string(),
            line: self.source.line(path),
            message: message.into(),
        });
    }

    /// Whether `path` itself was written in the file (not just a table
    /// around it).
    pub(crate) fn written(&self, path: &FieldPath) -> bool {
        self.source.written(path)
    }

    /// `path` for a message, with its line when known: `routes[0] (line 7)`.
    pub(crate) fn at(&self, path: &FieldPath) -> String {
        match self.source.line(path) {
            Some(line) => format!("{path} (line {line})"),
            None => path.to_string(),
        }
    }

    /// The problems in the order of the file (unknown lines last).
    pub(crate) fn finish(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        self.problems
    }
}

pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Whether two listening addresses would collide (port 0 never does: it
/// asks for a fresh port each time).
pub(crate) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, each
/// 1 to 63 long and not starting or ending with `-`.
pub(crate) fn dns_name_problem(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("has an empty label (two dots in a row, or a dot at either end)".into());
        }
        if label.len() > 63 {
            return Some(format!("has a label longer than 63 characters ({label:?})"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Some(format!(
                "has {c:?}, which is not allowed in a host name (letters, digits, '-', '_', '.')"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!(
                "has a label starting or ending with '-' ({label:?})"
            ));
        }
    }
    None
}

/// What is wrong with a `match.host` pattern, if anything.
pub(crate) fn host_problem(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("must not be empty; leave `host` out to match every host".into());
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => None,
            _ => Some(format!(
                "{host:?} is not a bracketed IPv6 address like \"[::1]\" (ports are ignored: leave them out)"
            )),
        };
    }
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    if host.contains(':') {
        return Some(format!(
            "{host:?} has a port; ports are ignored when matching, leave it out"
        ));
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if name.contains('*') {
        return Some(format!(
            "{host:?}: a wildcard is only allowed as a leading \"*.\", as in \"*.example.com\""
        ));
    }
    dns_name_problem(name).map(|why| {
        if wild {
            format!("{host:?}: the part after \"*.\" {why}")
        } else {
            format!("{host:?} {why}")
        }
    })
}

/// What is wrong with a `match.path_prefix`, if anything.
pub(crate) fn path_prefix_problem(prefix: &str) -> Option<String> {
    if !prefix.starts_with('/') {
        return Some(format!("{prefix:?} must start with '/'"));
    }
    if prefix.contains(['?', '#']) {
        return Some(format!(
            "{prefix:?} must be a path only, without '?' or '#' (queries are not matched)"
        ));
    }
    if prefix.parse::<http::uri::PathAndQuery>().is_err() {
        return Some(format!(
            "{prefix:?} is not a valid URI path (percent-encode spaces and other special characters)"
        ));
    }
    None
}

/// What is wrong with a `match.methods` entry, if anything.
pub(crate) fn method_problem(method: &str) -> Option<String> {
    if method.is_empty() {
        return Some("must not be empty".into());
    }
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Some(format!("{method:?} is not an HTTP method"));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some(format!(
            "{method:?}: methods are case-sensitive; write {:?}",
            method.to_ascii_uppercase()
        ));
    }
    None
}

/// A ratio that must be in `[0, 1]`.
pub(crate) fn validate(c: &Config, r: &mut Report<'_>) {
    let root = FieldPath::root();

    // Listeners and admin: distinct addresses.
    if c.listeners.is_empty() {
        r.add(
            &root.key("listeners"),
            "at least one listener is required (leave `listeners` out for 127.0.0.1:4140)",
        );
    }
    let mut addresses: Vec<(FieldPath, SocketAddr)> = c
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (root.key("listeners").index(i).key("address"), l.address))
        .collect();
    addresses.push((root.at("admin.address"), c.admin.address));
    for j in 0..addresses.len() {
        if let Some((earlier, addr)) = addresses[..j]
            .iter()
            .find(|(_, a)| overlaps(*a, addresses[j].1))
        {
            let verb = if *addr == addresses[j].1 {
                "is already used by"
            } else {
                "overlaps"
            };
            let message = format!("{} {verb} {} ({addr})", addresses[j].1, r.at(earlier));
            r.add(&addresses[j].0, message);
        }
    }

    // Server.
    if c.server.max_header_bytes < MIN_MAX_HEADER_BYTES {
        r.add(
            &root.at("server.max_header_bytes"),
            format!(
                "must be at least {MIN_MAX_HEADER_BYTES} (a request line and a Host \
                 header need room), got {}",
                c.server.max_header_bytes
            ),
        );
    }
    if !(1..=MAX_MAX_HEADERS).contains(&c.server.max_headers) {
        r.add(
            &root.at("server.max_headers"),
            format!(
                "must be 1 to {MAX_MAX_HEADERS}, got {}",
                c.server.max_headers
            ),
        );
    }
    if c.server.header_read_timeout.is_zero() {
        r.add(
            &root.at("server.header_read_timeout"),
            "must be greater than 0",
        );
    }
    if c.server.idle_timeout.is_zero() {
        r.add(&root.at("server.idle_timeout"), "must be greater than 0");
    }
    if let Some(threads) = c.server.threads
        && !(1..=MAX_THREADS).contains(&threads)
    {
        r.add(
            &root.at("server.threads"),
            format!("must be 1 to {MAX_THREADS}, got {threads}"),
        );
    }
    if c.server.max_connections == Some(0) {
        r.add(&root.at("server.max_connections"), "must be at least 1");
    }
    if c.server.watch_interval.is_zero() {
        r.add(&root.at("server.watch_interval"), "must be greater than 0");
    }

    // Services.
    if c.services.is_empty() {
        r.add(&root.key("services"), "at least one service is required");
    }
    let mut names: HashMap<&str, FieldPath> = HashMap::new();
    for (i, s) in c.services.iter().enumerate() {
        let sp = root.key("services").index(i);
        validate_service(s, &sp, r);
        let name_path = sp.key("name");
        if s.name.is_empty() {
            r.add(&name_path, "must not be empty");
        } else if let Some(c) = s.name.chars().find(|c| !is_name_char(*c)) {
            r.add(
                &name_path,
                format!(
                    "service name {:?} has {c:?}; use letters, digits, '.', '_' and '-'",
                    s.name
                ),
            );
        }
        match names.get(s.name.as_str()) {
            Some(first) => {
                let message = format!(
                    "service name {:?} is already used by {}",
                    s.name,
                    r.at(first)
                );
                r.add(&name_path, message);
            }
            None => {
                names.insert(&s.name, sp);
            }
        }
    }

    // Routes.
    if c.routes.is_empty() {
        r.add(
            &root.key("routes"),
            "at least one route is required; a `[[routes]]` table with only `service = \"NAME\"` sends every request to that service",
        );
    }
    let mut known: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    known.sort_unstable();
    known.dedup();
    let check_ref = |r: &mut Report<'_>, path: &FieldPath, name: &str| {
        if !names.contains_key(name) {
            let listed = if known.is_empty() {
                "there are no services".to_owned()
            } else if known.len() <= 10 {
                format!("services: {}", known.join(", "))
            } else {
                format!("services: {}, …", known[..10].join(", "))
            };
            r.add(path, format!("no service named {name:?} ({listed})"));
        }
    };
    let mut route_names: HashMap<&str, FieldPath> = HashMap::new();
    for (i, route) in c.routes.iter().enumerate() {
        let rp = root.key("routes").index(i);
        if let Some(name) = &route.name {
            if name.is_empty() {
                r.add(
                    &rp.key("name"),
                    "must not be empty; leave it out for route-<index>",
                );
            } else if let Some(first) = route_names.get(name.as_str()) {
                let message = format!("route name {name:?} is already used by {}", r.at(first));
                r.add(&rp.key("name"), message);
            } else {
                route_names.insert(name, rp.clone());
            }
        }
        match (&route.service, route.split.is_empty()) {
            (Some(_), false) => r.add(&rp, "give either `service` or `split`, not both"),
            (None, true) => r.add(
                &rp,
                "a route needs `service = \"NAME\"` or a non-empty `split`",
            ),
            _ => {}
        }
        if let Some(service) = &route.service {
            check_ref(r, &rp.key("service"), service);
        }
        for (j, leg) in route.split.iter().enumerate() {
            check_ref(r, &rp.key("split").index(j).key("service"), &leg.service);
        }
        if !route.split.is_empty() && route.split.iter().all(|leg| leg.weight == 0) {
            r.add(&rp.key("split"), "the weights must add up to more than 0");
        }
        validate_match(&route.matches, &rp.key("match"), r);
    }
}

pub(crate) fn validate_service(s: &Service, sp: &FieldPath, r: &mut Report<'_>) {
    // Endpoints or discovery: exactly one.
    match (&s.discovery, s.endpoints.is_empty()) {
        (Some(_), false) => r.add(sp, "give either `endpoints` or `discovery`, not both"),
        (None, true) if r.written(&sp.key("endpoints")) => r.add(
            &sp.key("endpoints"),
            "a service needs at least one endpoint (or a `discovery` table instead of `endpoints`)",
        ),
        (None, true) => r.add(
            sp,
            "a service needs `endpoints = [\"host:port\", …]` or a `discovery` table \
             (`discovery = { dns = \"users.internal:8080\" }`)",
        ),
        _ => {}
    }
    if let Some(discovery) = &s.discovery {
        validate_discovery(discovery, &sp.key("discovery"), r);
    }
    if let Err(e) = s.http.validate() {
        for p in e.into_problems() {
            r.add(&sp.key("http").at(&p.field), p.message);
        }
    }
    // Every client table: the library's own checks, each at its field.
    if let Err(e) = s.client.validate() {
        for p in e.into_problems() {
            r.add(&sp.at(&p.field), p.message);
        }
    }
    let mut seen: HashMap<Address, FieldPath> = HashMap::new();
    for (j, spec) in s.endpoints.iter().enumerate() {
        let ep = sp.key("endpoints").index(j);
        let (address_path, weight) = match spec {
            EndpointSpec::Address(_) => (ep.clone(), None),
            EndpointSpec::Detailed { weight, .. } => (ep.key("address"), Some(*weight)),
        };
        match Endpoint::parse(spec.address()) {
            Err(e) => r.add(&address_path, e.to_string()),
            Ok(endpoint) => {
                if let Some(weight) = weight
                    && let Err(e) = endpoint.clone().with_weight(weight)
                {
                    r.add(&ep.key("weight"), e.to_string());
                }
                match seen.get(endpoint.address()) {
                    Some(first) => {
                        let message = format!(
                            "endpoint {:?} is listed twice (first at {})",
                            spec.address(),
                            r.at(first)
                        );
                        r.add(&address_path, message);
                    }
                    None => {
                        seen.insert(endpoint.address().clone(), ep);
                    }
                }
            }
        }
    }
}

/// Checks a discovery source with the source's own checks (names, settings,
/// format detection), each problem at its field.
pub(crate) fn validate_discovery(d: &Discovery, dp: &FieldPath, r: &mut Report<'_>) {
    let at = dp.key(d.kind());
    match d {
        #[cfg(feature = "dns")]
        Discovery::Dns(dns) => {
            use crate::discover::dns::DnsError;
            if let Err(e) = dns.to_dns() {
                match &e {
                    DnsError::InvalidSetting {
                        setting, reason, ..
                    } => {
                        let field = match *setting {
                            "refresh_bounds" if dns.refresh_min.is_some() => "refresh_min",
                            "refresh_bounds" => "refresh_max",
                            other => other,
                        };
                        let message = if *setting == "refresh_bounds" {
                            format!("refresh_min and refresh_max: {reason}")
                        } else {
                            reason.clone()
                        };
                        r.add(&dp.key(field), message);
                    }
                    _ => r.add(&at, e.to_string()),
                }
            }
        }
        #[cfg(not(feature = "dns"))]
        Discovery::Dns(_) => r.add(
            &at,
            "this build has no DNS support: rebuild with --features dns",
        ),
        Discovery::File(file) => {
            if file.path.as_os_str().is_empty() {
                r.add(&at, "the path must not be empty");
            } else if file.format.is_none()
                && crate::discover::file::Format::from_path(&file.path).is_none()
            {
                r.add(
                    &at,
                    format!(
                        "cannot tell the format of {:?} from its name: name it *.json or *.toml, \
                         or set `format = \"json\"` or `\"toml\"`",
                        file.path
                    ),
                );
            }
            if file.interval.is_zero() {
                r.add(&dp.key("interval"), "must be greater than 0");
            }
            if file.max_endpoints == Some(0) {
                r.add(&dp.key("max_endpoints"), "must be at least 1");
            }
        }
        #[cfg(feature = "kubernetes")]
        Discovery::Kubernetes(k) => {
            use crate::discover::kubernetes::check_label;
            let names = [
                ("namespace", Some(&k.namespace)),
                ("service", Some(&k.service)),
                ("port", k.port.as_ref()),
            ];
            for (field, value) in names {
                let Some(value) = value else { continue };
                if let Err(e) = check_label(field, value) {
                    r.add(&at.key(field), e.to_string());
                }
            }
            if k.max_endpoints == Some(0) {
                r.add(&at.key("max_endpoints"), "must be at least 1");
            }
        }
        #[cfg(not(feature = "kubernetes"))]
        Discovery::Kubernetes(_) => r.add(
            &at,
            "this build has no Kubernetes support: rebuild with --features kubernetes",
        ),
    }
}

pub(crate) fn validate_match(m: &Match, mp: &FieldPath, r: &mut Report<'_>) {
    if let Some(host) = &m.host
        && let Some(why) = host_problem(host)
    {
        r.add(&mp.key("host"), why);
    }
    if let Some(prefix) = &m.path_prefix
        && let Some(why) = path_prefix_problem(prefix)
    {
        r.add(&mp.key("path_prefix"), why);
    }
    let mut lowered: HashMap<String, &str> = HashMap::new();
    for (name, value) in &m.headers {
        let hp = mp.key("headers").key(name);
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            r.add(&hp, format!("{name:?} is not a valid header name"));
            continue;
        }
        if http::HeaderValue::from_str(value).is_err() {
            r.add(
                &hp,
                format!(
                    "{value:?} is not a valid header value (visible ASCII, spaces and tabs only)"
                ),
            );
        }
        if let Some(first) = lowered.insert(name.to_ascii_lowercase(), name) {
            r.add(
                &hp,
                format!("header {name:?} is also given as {first:?} (names are case-insensitive)"),
            );
        }
    }
    for (k, method) in m.methods.iter().enumerate() {
        if let Some(why) = method_problem(method) {
            r.add(&mp.key("methods").index(k), why);
        }
    }
}
