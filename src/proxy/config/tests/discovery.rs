//! The discovery tables: their shapes, each source's checks, and their lints.

use super::*;

#[test]
fn discovery_sources_parse() {
    let text = r#"[[services]]
name = "a"
discovery = { dns = "users.internal:8080" }

[[services]]
name = "b"
[services.discovery]
dns = "_http._tcp.users.internal"
refresh_min = "2s"
refresh_max = "30s"
on_nxdomain = "clear"
ip_family = "v4"
nameservers = ["127.0.0.1:5353", "[::1]:53"]
query_timeout = "500ms"

[[services]]
name = "c"
discovery = { file = "users.json" }

[[services]]
name = "d"
discovery = { file = "/etc/users", format = "toml", interval = "250ms" }

[[services]]
name = "e"
discovery = { kubernetes = { namespace = "shop", service = "users", port = "http" } }

[[routes]]
split = [{ service = "a", weight = 1 }, { service = "b", weight = 1 }, { service = "c", weight = 1 }, { service = "d", weight = 1 }, { service = "e", weight = 1 }]
"#;
    let config = match Config::from_toml(text) {
        Ok(config) => config,
        // Only the sources this build lacks may be refused.
        Err(e) => {
            assert!(
                e.problems
                    .iter()
                    .all(|p| p.message.contains("rebuild with --features")),
                "{e}"
            );
            parse(text).unwrap()
        }
    };
    let d: Vec<&Discovery> = config
        .services
        .iter()
        .map(|s| s.discovery.as_ref().unwrap())
        .collect();
    assert_eq!(
        d[0],
        &Discovery::Dns(DnsDiscovery::new("users.internal:8080"))
    );
    let Discovery::Dns(b) = d[1] else { panic!() };
    assert_eq!(b.name, "_http._tcp.users.internal");
    assert_eq!(
        (b.refresh_min, b.refresh_max, b.query_timeout),
        (
            Some(Duration::from_secs(2)),
            Some(Duration::from_secs(30)),
            Some(Duration::from_millis(500))
        )
    );
    assert_eq!(
        (b.on_nxdomain, b.ip_family),
        (OnNxdomain::Clear, IpFamily::V4)
    );
    assert_eq!(
        b.nameservers.as_deref().unwrap(),
        [
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    assert_eq!(d[2], &Discovery::File(FileDiscovery::new("users.json")));
    let Discovery::File(f) = d[3] else { panic!() };
    assert_eq!(
        (f.path.as_path(), f.format, f.interval),
        (
            Path::new("/etc/users"),
            Some(FileFormat::Toml),
            Duration::from_millis(250)
        )
    );
    let Discovery::Kubernetes(k) = d[4] else {
        panic!()
    };
    assert_eq!(
        (k.namespace.as_str(), k.service.as_str(), k.port.as_deref()),
        ("shop", "users", Some("http"))
    );
    assert!(config.services.iter().all(|s| s.endpoints.is_empty()));

    // Through TOML and JSON and back, as `/config` shows it.
    let again = parse(&toml::to_string(&config).unwrap()).unwrap();
    assert_eq!(again, config);
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(
        json["services"][0]["discovery"],
        serde_json::json!({ "dns": "users.internal:8080", "on_nxdomain": "keep", "ip_family": "both" })
    );
    assert_eq!(json["services"][1]["discovery"]["refresh_max"], "30s");
    assert_eq!(
        json["services"][1]["discovery"]["nameservers"],
        serde_json::json!(["127.0.0.1:5353", "[::1]:53"])
    );
    assert_eq!(
        json["services"][2]["discovery"],
        serde_json::json!({ "file": "users.json", "interval": "1s" })
    );
    assert_eq!(
        json["services"][4]["discovery"],
        serde_json::json!({ "kubernetes": { "namespace": "shop", "service": "users", "port": "http" } })
    );
    assert!(json["services"][2].get("endpoints").is_none());
}

#[test]
fn discovery_or_endpoints_exactly_one() {
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\ndiscovery = {{ file = \"x.json\" }}\n\
         [[services]]\nname = \"idle\"\n\
         [[services]]\nname = \"empty\"\nendpoints = []\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0]",
        Some(1),
        "give either `endpoints` or `discovery`, not both",
    );
    assert_has(
        &p,
        "services[1]",
        Some(5),
        "a service needs `endpoints = [\"host:port\", …]` or a `discovery` table",
    );
    assert_has(
        &p,
        "services[2].endpoints",
        Some(9),
        "at least one endpoint (or a `discovery` table instead of `endpoints`)",
    );
    assert_eq!(p.len(), 3, "{p:#?}");
}

#[test]
fn discovery_shape_errors_name_the_field() {
    let svc = |d: &str| format!("[[services]]\nname = \"app\"\ndiscovery = {d}\n{ROUTE}");
    let p = errors(&svc(r#"{ dns = "a.example:80", file = "x.json" }"#));
    assert_has(
        &p,
        "services[0].discovery",
        Some(3),
        "give one source, not 2: `dns` and `file`",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    let p = errors(&svc("{}"));
    assert_has(
        &p,
        "services[0].discovery",
        Some(3),
        "names no source: give one of `dns`, `file` or `kubernetes`",
    );
    // The follow-on "no source" is not reported after the real problem.
    let p = errors(&svc(r#"{ dsn = "a.example:80" }"#));
    assert_has(
        &p,
        "services[0].discovery.dsn",
        Some(3),
        "unknown field `dsn`, expected one of `dns`, `file`, `kubernetes`",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    // Another source's settings are named as such.
    let p = errors(&svc(r#"{ dns = "a.example:80", interval = "1s" }"#));
    assert_has(
        &p,
        "services[0].discovery.interval",
        Some(3),
        "unknown field `interval`: a setting of file discovery, not of dns discovery (which takes `refresh_min`, `refresh_max`, `on_nxdomain`, `ip_family`, `nameservers`, `query_timeout` and `max_endpoints`)",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    let p = errors(
        "[[services]]\nname = \"app\"\n[services.discovery]\nfile = \"x.json\"\n\
         refresh_max = \"1s\"\n[[routes]]\nservice = \"app\"\n",
    );
    assert_has(
        &p,
        "services[0].discovery.refresh_max",
        Some(3),
        "a setting of dns discovery, not of file discovery (which takes `interval`, `format` and `max_endpoints`)",
    );
    let p = errors(&svc(
        r#"{ kubernetes = { namespace = "shop", service = "users" }, format = "json" }"#,
    ));
    assert_has(
        &p,
        "services[0].discovery.format",
        Some(3),
        "a setting of file discovery, not of kubernetes discovery (whose settings are in its own table)",
    );
    let p = errors(&svc(r#"{ interval = "1s" }"#));
    assert_has(&p, "services[0].discovery", Some(3), "names no source");
    let p = errors(&svc(r#"{ kubernetes = { namespace = "shop" } }"#));
    assert_has(
        &p,
        "services[0].discovery.kubernetes.service",
        Some(3),
        "missing field `service`",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    let p = errors(&svc("{ dns = 5 }"));
    assert_has(
        &p,
        "services[0].discovery.dns",
        Some(3),
        "invalid type: integer `5`, expected a string",
    );
    let p = errors(&svc(r#"{ kubernetes = "users" }"#));
    assert_has(
        &p,
        "services[0].discovery.kubernetes",
        Some(3),
        "expected a table with `namespace`, `service` and (optionally) `port`",
    );
    let p = errors(&svc(r#"{ file = "x", format = "yaml" }"#));
    assert_has(
        &p,
        "services[0].discovery.format",
        Some(3),
        "unknown variant `yaml`, expected `json` or `toml`",
    );
    let p = errors(
        "[[services]]\nname = \"app\"\n[services.discovery]\ndns = \"a.example:80\"\n\
         nameservers = [\"127.0.0.1:53\", \"ns.example:53\"]\nrefresh_min = \"soon\"\n\
         on_nxdomain = \"drop\"\n[[routes]]\nservice = \"app\"\n",
    );
    assert_has(
        &p,
        "services[0].discovery.nameservers[1]",
        Some(5),
        "invalid socket address \"ns.example:53\"",
    );
    assert_has(
        &p,
        "services[0].discovery.refresh_min",
        Some(6),
        "invalid duration \"soon\"",
    );
    assert_has(
        &p,
        "services[0].discovery.on_nxdomain",
        Some(7),
        "unknown variant `drop`, expected `keep` or `clear`",
    );
    assert_eq!(p.len(), 3, "{p:#?}");
}

#[cfg(feature = "dns")]
#[test]
fn dns_discovery_is_checked_by_the_dns_source() {
    let text = r#"[[services]]
name = "a"
discovery = { dns = "users..internal:8080" }

[[services]]
name = "b"
discovery = { dns = "10.0.0.1:80" }

[[services]]
name = "c"
[services.discovery]
dns = "_http._tcp.users.internal"
refresh_min = "10s"
refresh_max = "5s"
query_timeout = "0s"

[[services]]
name = "d"
discovery = { dns = "users.internal:80", refresh_max = "500ms", nameservers = [] }

[[routes]]
split = [{ service = "a", weight = 1 }, { service = "b", weight = 1 }, { service = "c", weight = 1 }, { service = "d", weight = 1 }]
"#;
    let p = errors(text);
    assert_has(
        &p,
        "services[0].discovery.dns",
        Some(3),
        "dns discovery: invalid name \"users..internal:8080\": empty label (two dots in a row)",
    );
    assert_has(
        &p,
        "services[1].discovery.dns",
        Some(7),
        "is an IP address, not a DNS name",
    );
    assert_has(
        &p,
        "services[2].discovery.refresh_min",
        Some(13),
        "refresh_min and refresh_max: min must be above zero and at most max, got min 10s, max 5s",
    );
    // The default refresh_min (1 s) is above this refresh_max.
    assert_has(
        &p,
        "services[3].discovery.refresh_max",
        Some(19),
        "got min 1s, max 500ms",
    );
    assert_eq!(
        p.len(),
        4,
        "one problem per source, the first its check finds: {p:#?}"
    );
    let p = errors(
        "[[services]]\nname = \"app\"\ndiscovery = { dns = \"a.example:80\", query_timeout = \"0s\" }\n\
         [[routes]]\nservice = \"app\"\n",
    );
    assert_has(
        &p,
        "services[0].discovery.query_timeout",
        Some(3),
        "must be above zero",
    );
    let p = errors(
        "[[services]]\nname = \"app\"\ndiscovery = { dns = \"a.example:80\", nameservers = [] }\n\
         [[routes]]\nservice = \"app\"\n",
    );
    assert_has(
        &p,
        "services[0].discovery.nameservers",
        Some(3),
        "no addresses given",
    );
}

#[cfg(not(feature = "dns"))]
#[test]
fn dns_discovery_needs_the_feature() {
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\ndiscovery = {{ dns = \"a.example:80\" }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].discovery.dns",
        Some(3),
        "this build has no DNS support: rebuild with --features dns",
    );
}

#[cfg(feature = "kubernetes")]
#[test]
fn kubernetes_names_are_checked_by_the_kubernetes_source() {
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\n[services.discovery.kubernetes]\nnamespace = \"Shop\"\n\
         service = \"users-\"\nport = \"http_alt\"\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].discovery.kubernetes.namespace",
        Some(4),
        "invalid namespace \"Shop\": must consist of lowercase letters, digits and '-'",
    );
    assert_has(
        &p,
        "services[0].discovery.kubernetes.service",
        Some(5),
        "must start and end with a letter or digit",
    );
    assert_has(
        &p,
        "services[0].discovery.kubernetes.port",
        Some(6),
        "invalid port \"http_alt\"",
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    lints(&format!(
        "[[services]]\nname = \"app\"\ndiscovery = {{ kubernetes = {{ namespace = \"shop\", service = \"users\" }} }}\n{ROUTE}"
    ));
}

/// `max_endpoints` in each source's table: read, passed to the source,
/// and 0 refused where it was written.
#[test]
fn max_endpoints_is_read_for_each_source_and_zero_is_refused() {
    let c = Config::from_toml(&format!(
        "[[services]]\nname = \"app\"\ndiscovery = {{ dns = \"a.internal:80\", max_endpoints = 20 }}\n\
         [[services]]\nname = \"b\"\ndiscovery = {{ file = \"b.json\", max_endpoints = 30 }}\n{ROUTE}"
    ))
    .unwrap();
    let (Some(Discovery::Dns(dns)), Some(Discovery::File(file))) =
        (&c.services[0].discovery, &c.services[1].discovery)
    else {
        panic!("{:?}", c.services)
    };
    assert_eq!(
        (dns.max_endpoints, file.max_endpoints),
        (Some(20), Some(30))
    );
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\ndiscovery = {{ file = \"b.json\", max_endpoints = 0 }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].discovery.max_endpoints",
        Some(3),
        "must be at least 1",
    );
}

#[cfg(feature = "kubernetes")]
#[test]
fn kubernetes_max_endpoints_is_read_and_zero_is_refused() {
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\n[services.discovery.kubernetes]\nnamespace = \"shop\"\n\
         service = \"users\"\nmax_endpoints = 0\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].discovery.kubernetes.max_endpoints",
        Some(6),
        "must be at least 1",
    );
    let c = Config::from_toml(&format!(
        "[[services]]\nname = \"app\"\ndiscovery = {{ kubernetes = {{ namespace = \"shop\", service = \"users\", max_endpoints = 7 }} }}\n{ROUTE}"
    ))
    .unwrap();
    let Some(Discovery::Kubernetes(k)) = &c.services[0].discovery else {
        panic!("{:?}", c.services[0].discovery)
    };
    assert_eq!(k.max_endpoints, Some(7));
}

#[cfg(not(feature = "kubernetes"))]
#[test]
fn kubernetes_discovery_needs_the_feature() {
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\ndiscovery = {{ kubernetes = {{ namespace = \"shop\", service = \"users\" }} }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].discovery.kubernetes",
        Some(3),
        "this build has no Kubernetes support: rebuild with --features kubernetes",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
}

#[test]
fn file_discovery_is_checked() {
    let text = r#"[[services]]
name = "a"
discovery = { file = "endpoints.yaml" }

[[services]]
name = "b"
discovery = { file = "endpoints", format = "json", interval = "0s" }

[[services]]
name = "c"
discovery = { file = "" }

[[routes]]
split = [{ service = "a", weight = 1 }, { service = "b", weight = 1 }, { service = "c", weight = 1 }]
"#;
    let p = errors(text);
    assert_has(
        &p,
        "services[0].discovery.file",
        Some(3),
        "cannot tell the format of \"endpoints.yaml\" from its name: name it *.json or *.toml, or set `format = \"json\"` or `\"toml\"`",
    );
    assert_has(
        &p,
        "services[1].discovery.interval",
        Some(7),
        "must be greater than 0",
    );
    assert_has(
        &p,
        "services[2].discovery.file",
        Some(11),
        "the path must not be empty",
    );
    assert_eq!(p.len(), 3, "{p:#?}");
}

/// A fresh directory under the system's temporary one.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn file_discovery_lints_read_the_file_relative_to_the_config() {
    let dir = temp_dir("lints");
    std::fs::write(dir.join("good.json"), r#"["127.0.0.1:1"]"#).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        "endpoints = [\"127.0.0.1:1\", \"nope\"]\n",
    )
    .unwrap();
    let text = format!(
        r#"[[services]]
name = "good"
discovery = {{ file = "good.json" }}

[[services]]
name = "missing"
discovery = {{ file = "missing.json" }}

[[services]]
name = "bad"
discovery = {{ file = "{}", interval = "50ms" }}

[[routes]]
split = [{{ service = "good", weight = 1 }}, {{ service = "missing", weight = 1 }}, {{ service = "bad", weight = 1 }}]
"#,
        dir.join("bad.toml").display()
    );
    let config = Config::from_file_text(&text, &dir.join("proxy.toml")).unwrap();
    let p: Vec<_> = config
        .lints()
        .into_iter()
        .map(|p| (p.field, p.line, p.message))
        .collect();
    assert_has(
        &p,
        "services[1].discovery.file",
        Some(7),
        &format!(
            "{} does not exist (yet): the service has no endpoints until it appears",
            dir.join("missing.json").display()
        ),
    );
    assert_has(
        &p,
        "services[2].discovery.file",
        Some(11),
        "line 1, column 29: endpoints[1]: endpoint \"nope\": expected host:port: the service has no endpoints until it is fixed",
    );
    assert_has(
        &p,
        "services[2].discovery.interval",
        Some(11),
        "an interval of 50ms checks the file more than 10 times a second",
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_eq!(config.base_dir(), Some(dir.as_path()));
    assert_eq!(config.resolve_path(Path::new("a.json")), dir.join("a.json"));
    assert_eq!(
        config.resolve_path(Path::new("/a.json")),
        Path::new("/a.json")
    );

    // Without a base directory, relative paths are the current directory's.
    let config = Config::from_toml(&text).unwrap();
    assert_eq!(
        config.resolve_path(Path::new("good.json")),
        Path::new("good.json")
    );
    assert!(
        config
            .lints()
            .iter()
            .any(|p| p.field == "services[0].discovery.file"),
        "good.json is not in the current directory"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "dns")]
#[test]
fn dns_refresh_lints() {
    let p = lints(&format!(
        "[[services]]\nname = \"app\"\ndiscovery = {{ dns = \"a.example:80\", refresh_min = \"10ms\", refresh_max = \"50ms\" }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].discovery.refresh_min",
        Some(3),
        "refresh_min of 10ms re-resolves more than 10 times a second",
    );
    assert_has(
        &p,
        "services[0].discovery.refresh_max",
        Some(3),
        "refresh_max of 50ms",
    );
    assert_eq!(p.len(), 2, "{p:#?}");
}
