//! The config's tests: parsing, validation, lints.

use super::*;
use proptest::prelude::*;

const PALISADE: &str = include_str!("../../../examples/palisade.toml");
const MINIMAL: &str = include_str!("../../../examples/minimal.toml");

/// The problems of an invalid file, as (field, line, message).
fn errors(text: &str) -> Vec<(String, Option<usize>, String)> {
    match Config::from_toml(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| (p.field, p.line, p.message))
            .collect(),
    }
}

/// Asserts one problem has this field and line, and a message with `needle`.
#[track_caller]
fn assert_has(
    problems: &[(String, Option<usize>, String)],
    field: &str,
    line: Option<usize>,
    needle: &str,
) {
    assert!(
        problems
            .iter()
            .any(|(f, l, m)| f == field && *l == line && m.contains(needle)),
        "no problem {field} at {line:?} containing {needle:?} in:\n{problems:#?}"
    );
}

/// The lints of a valid file, as (field, line, message).
fn lints(text: &str) -> Vec<(String, Option<usize>, String)> {
    let config = Config::from_toml(text).unwrap_or_else(|e| panic!("invalid:\n{e}"));
    config
        .lints()
        .into_iter()
        .map(|p| (p.field, p.line, p.message))
        .collect()
}

const ROUTE: &str = "\n[[routes]]\nservice = \"app\"\n";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn examples_parse_and_have_no_lints() {
    for (name, text) in [("palisade.toml", PALISADE), ("minimal.toml", MINIMAL)] {
        let config = Config::from_file_text(text, &examples_dir().join(name))
            .unwrap_or_else(|e| panic!("{name}:\n{e}"));
        assert_eq!(config.lints(), vec![], "{name}");
    }
    let config = Config::from_toml(PALISADE).unwrap();
    assert_eq!(config.services.len(), 2);
    assert_eq!(config.routes.len(), 5);
    // The fuller example writes every default out for `web`.
    let web = &config.services[0];
    let mut defaults = crate::ClientConfig::default();
    defaults.limits.concurrency = Some(Default::default());
    defaults.limits.throttle = Some(Default::default());
    defaults.hedge = Some(Default::default());
    assert_eq!(web.client, defaults);
    let staging = &config.services[1];
    assert!(staging.endpoints.is_empty());
    assert!(
        matches!(&staging.discovery, Some(Discovery::File(f)) if f.path == Path::new("staging-endpoints.json")),
        "{:?}",
        staging.discovery
    );
    // Its endpoints file is good.
    let file = match &staging.discovery {
        Some(Discovery::File(f)) => f,
        _ => unreachable!(),
    };
    let config = config.clone().with_base_dir(examples_dir());
    assert_eq!(file.to_watch(&config).load().unwrap().len(), 2);
    assert_eq!(config.server, Server::default());
    assert_eq!(config.admin, Admin::default());
    assert_eq!(config.listeners, vec![Listener::default()]);
    assert_eq!(config.routes[2].matches.methods, ["GET", "HEAD"]);
    let minimal = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(minimal.listeners, vec![Listener::default()]);
}

#[test]
fn docs_state_the_library_defaults() {
    let doc = include_str!("../../../docs/config.md");
    let row = |section: &str, key: &str| -> &str {
        let start = doc.find(section).unwrap_or_else(|| panic!("{section}"));
        let rest = &doc[start..];
        let end = rest[section.len()..]
            .find("\n#")
            .map_or(rest.len(), |e| e + section.len());
        let rows = &rest[..end];
        let at = rows
            .find(&format!("\n| `{key}` "))
            .unwrap_or_else(|| panic!("{section}: no row for {key}"));
        rows[at + 1..].lines().next().unwrap()
    };
    let has = |section: &str, key: &str, default: String| {
        let row = row(section, key);
        assert!(
            row.contains(&default),
            "{section} {key}: {default} not in {row}"
        );
    };
    let d = |d: Duration| format!("`\"{}\"`", format_duration(d));
    use crate::limit::{concurrency, rate, throttle};
    let c = "#### `concurrency`";
    has(c, "max", format!("`{}`", concurrency::DEFAULT_MAX));
    has(c, "queue", format!("`{}`", concurrency::DEFAULT_QUEUE));
    has(c, "max_wait", d(concurrency::DEFAULT_MAX_WAIT));
    let r = "#### `rate`";
    has(r, "max_keys", format!("`{}`", rate::DEFAULT_MAX_KEYS));
    has(r, "per_second", format!("({:e})", rate::MIN_RATE));
    has(r, "per_second", format!("({:e})", rate::MAX_RATE));
    let t = "#### `throttle`";
    has(t, "k", format!("`{:?}`", throttle::DEFAULT_K));
    has(t, "window", d(throttle::DEFAULT_WINDOW));
    let h = "### `services.hedge`";
    let pct = crate::hedge::DEFAULT_PERCENTILE * 100.0;
    has(h, "delay", format!("`\"p{pct}\"`"));
    has(
        h,
        "min_samples",
        format!("`{}`", crate::hedge::DEFAULT_MIN_SAMPLES),
    );
    has(h, "fallback_delay", d(crate::hedge::DEFAULT_FALLBACK_DELAY));
    has(h, "window", d(crate::hedge::DEFAULT_WINDOW));
    has(
        h,
        "budget_ratio",
        format!("`{}`", crate::hedge::DEFAULT_BUDGET_RATIO),
    );
    has(
        "#### File",
        "interval",
        d(crate::discover::file::DEFAULT_INTERVAL),
    );
    #[cfg(feature = "dns")]
    {
        use crate::discover::dns;
        has("#### DNS", "refresh_min", d(dns::DEFAULT_MIN_REFRESH));
        has("#### DNS", "refresh_max", d(dns::DEFAULT_MAX_REFRESH));
    }
}

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
        "unknown field `interval`: a setting of file discovery, not of dns discovery (which takes `refresh_min`, `refresh_max`, `on_nxdomain`, `ip_family`, `nameservers` and `query_timeout`)",
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
        "a setting of dns discovery, not of file discovery (which takes `interval` and `format`)",
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

#[test]
fn limits_parse() {
    let config = Config::from_toml(&format!(
        r#"{TWO}[services.limits]
concurrency = {{ max = 32, queue = 0, max_wait = "none" }}
rate = {{ per_second = 0.5, burst = 3, key_header = "X-Tenant", max_keys = 10, without_key = "pass" }}
throttle = {{ k = 1.5, window = "30s" }}
{ROUTE}"#
    ))
    .unwrap();
    let l = &config.services[0].client.limits;
    let c = l.concurrency.as_ref().unwrap();
    assert_eq!((c.max, c.queue, c.max_wait), (32, 0, None));
    let r = l.rate.as_ref().unwrap();
    assert_eq!(
        (
            r.per_second,
            r.burst,
            r.key_header.as_deref(),
            r.max_keys,
            r.without_key
        ),
        (
            0.5,
            Some(3),
            Some("X-Tenant"),
            10,
            crate::limit::WithoutKey::Pass
        )
    );
    let t = l.throttle.as_ref().unwrap();
    assert_eq!((t.k, t.window), (1.5, Duration::from_secs(30)));
    // Off unless written.
    let config = Config::from_toml(&format!("{TWO}{ROUTE}")).unwrap();
    assert_eq!(
        config.services[0].client.limits,
        crate::limit::LimitSettings::default()
    );
    let off = crate::limit::LimitSettings::default();
    assert_eq!(
        (off.concurrency, off.rate, off.throttle),
        (None, None, None)
    );
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["services"][0]["limits"], serde_json::json!({}));
}

#[test]
fn limits_are_range_checked() {
    let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
[services.limits.concurrency]
max = 0
max_wait = "0s"
[services.limits.rate]
per_second = 0.0
burst = 0
key_header = "x tenant"
max_keys = 0
[services.limits.throttle]
k = 0.5
window = "0s"

[[services]]
name = "other"
endpoints = ["127.0.0.1:2"]
limits = { rate = { per_second = nan }, throttle = { k = inf } }

[[services]]
name = "third"
endpoints = ["127.0.0.1:3"]
limits = { rate = { per_second = 2e9 } }

[[routes]]
split = [{ service = "app", weight = 1 }, { service = "other", weight = 1 }, { service = "third", weight = 1 }]
"#;
    let p = errors(text);
    let l = "services[0].limits";
    assert_has(
        &p,
        &format!("{l}.concurrency.max"),
        Some(5),
        "must be at least 1",
    );
    assert_has(
        &p,
        &format!("{l}.concurrency.max_wait"),
        Some(6),
        "must be greater than 0 (\"none\" waits as long as the request's deadline allows",
    );
    assert_has(
        &p,
        &format!("{l}.rate.per_second"),
        Some(8),
        "is required (0 is not a rate): a finite number of requests a second from 1e-6 to 1e9",
    );
    assert_has(
        &p,
        &format!("{l}.rate.burst"),
        Some(9),
        "must be at least 1",
    );
    assert_has(
        &p,
        &format!("{l}.rate.key_header"),
        Some(10),
        "\"x tenant\" is not a valid header name",
    );
    assert_has(
        &p,
        &format!("{l}.rate.max_keys"),
        Some(11),
        "must be at least 1",
    );
    assert_has(
        &p,
        &format!("{l}.throttle.k"),
        Some(13),
        "must be a finite number at least 1 (the backend is offered at least what it accepts), got 0.5",
    );
    assert_has(
        &p,
        &format!("{l}.throttle.window"),
        Some(14),
        "must be greater than 0",
    );
    assert_has(
        &p,
        "services[1].limits.rate.per_second",
        Some(19),
        "got NaN",
    );
    assert_has(&p, "services[1].limits.throttle.k", Some(19), "got inf");
    assert_has(
        &p,
        "services[2].limits.rate.per_second",
        Some(24),
        "got 2000000000",
    );
    assert_eq!(p.len(), 11, "{p:#?}");

    let p = errors(&format!(
        "{TWO}limits = {{ rate = {{ burst = 5 }}, bulkhead = {{}} }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].limits.bulkhead",
        Some(4),
        "unknown field `bulkhead`, expected one of `concurrency`, `rate`, `throttle`",
    );
    // A rate without `per_second` is refused by the settings' own check,
    // once the file parses.
    let p = errors(&format!(
        "{TWO}limits = {{ rate = {{ burst = 5 }} }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].limits.rate.per_second",
        Some(4),
        "is required",
    );
}

#[test]
fn hedge_parses_checks_and_lints() {
    use crate::hedge::HedgeDelay;
    // Off unless written; `hedge = {}` is the defaults.
    let config = Config::from_toml(&format!("{TWO}{ROUTE}")).unwrap();
    assert_eq!(config.services[0].client.hedge, None);
    let config = Config::from_toml(&format!("{TWO}hedge = {{}}\n{ROUTE}")).unwrap();
    assert_eq!(
        config.services[0].client.hedge,
        Some(crate::hedge::HedgeSettings::default())
    );
    assert_eq!(
        crate::hedge::HedgeSettings::default().delay,
        HedgeDelay::Percentile(0.95)
    );

    let config = Config::from_toml(&format!(
        "{TWO}[services.hedge]\ndelay = \"p99.9\"\nmin_samples = 50\nfallback_delay = \"40ms\"\nbudget_ratio = 0.02\n{ROUTE}"
    ))
    .unwrap();
    let h = config.services[0].client.hedge.clone().unwrap();
    assert_eq!(h.delay, HedgeDelay::Percentile(0.999));
    assert_eq!(
        (h.min_samples, h.fallback_delay, h.budget_ratio),
        (50, Duration::from_millis(40), 0.02)
    );
    // Round trip through the effective config (`/config`).
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("delay = \"p99.9\""), "{text}");
    let again = Config::from_toml(&text).unwrap();
    assert_eq!(again.services[0].client.hedge, Some(h));

    let fixed =
        Config::from_toml(&format!("{TWO}hedge = {{ delay = \"20ms\" }}\n{ROUTE}")).unwrap();
    assert_eq!(
        fixed.services[0].client.hedge.as_ref().unwrap().delay,
        HedgeDelay::Fixed(Duration::from_millis(20))
    );

    for (value, needle) in [
        ("\"p0\"", "out of range"),
        ("\"p100\"", "out of range"),
        ("\"pNaN\"", "out of range"),
        ("\"p9x\"", "invalid percentile"),
        ("\"0s\"", "must be greater than 0"),
        ("\"soon\"", "invalid duration"),
    ] {
        let e = errors(&format!("{TWO}[services.hedge]\ndelay = {value}\n{ROUTE}"));
        assert_has(&e, "services[0].hedge.delay", Some(5), needle);
    }
    let e = errors(&format!(
        "{TWO}[services.hedge]\nmin_samples = 0\nfallback_delay = \"0s\"\nwindow = \"0s\"\nbudget_ratio = 1.5\n{ROUTE}"
    ));
    assert_has(&e, "services[0].hedge.min_samples", Some(5), "at least 1");
    assert_has(
        &e,
        "services[0].hedge.fallback_delay",
        Some(6),
        "greater than 0",
    );
    assert_has(&e, "services[0].hedge.window", Some(7), "greater than 0");
    assert_has(&e, "services[0].hedge.budget_ratio", Some(8), "at most 1");

    let p = lints(&format!(
        "{TWO}deadline = {{ timeout = \"1s\" }}\n[services.hedge]\ndelay = \"2s\"\nbudget_ratio = 0.5\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].hedge.delay",
        Some(6),
        "2s is not shorter than deadline.timeout (1s): no backup would ever be sent",
    );
    assert_has(
        &p,
        "services[0].hedge.budget_ratio",
        Some(7),
        "up to 50 % load",
    );
    let p = lints(&format!("{TWO}hedge = {{ delay = \"p20\" }}\n{ROUTE}"));
    assert_has(&p, "services[0].hedge.delay", Some(4), "more than half");
}

#[test]
fn limit_lints() {
    let p = lints(&format!(
        r#"{TWO}deadline = {{ timeout = "1s" }}
[services.limits]
concurrency = {{ max_wait = "2s" }}
rate = {{ per_second = 10.0, without_key = "pass" }}
throttle = {{ window = "5s" }}
{ROUTE}"#
    ));
    assert_has(
        &p,
        "services[0].limits.concurrency.max_wait",
        Some(6),
        "max_wait (2s) is longer than deadline.timeout (1s): a queued request without a deadline header is shed at its deadline first",
    );
    assert_has(
        &p,
        "services[0].limits.rate.without_key",
        Some(7),
        "has no effect without key_header",
    );
    assert_has(
        &p,
        "services[0].limits.throttle.window",
        Some(8),
        "a window of 5s is shorter than 10s: a handful of refusals swings the rejection probability (the default is 2m)",
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    let p = lints(&format!(
        "{TWO}deadline = {{ timeout = \"none\" }}\nlimits = {{ concurrency = {{ max_wait = \"none\" }} }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].limits.concurrency.max_wait",
        Some(5),
        "may wait for a slot for ever",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    // Fine: a wait within the deadline; no queue to wait in.
    assert_eq!(
        lints(&format!(
            "{TWO}limits = {{ concurrency = {{}}, throttle = {{ window = \"10s\" }} }}\n{ROUTE}"
        )),
        vec![]
    );
    assert_eq!(
        lints(&format!(
            "{TWO}deadline = {{ timeout = \"none\" }}\nlimits = {{ concurrency = {{ queue = 0, max_wait = \"none\" }} }}\n{ROUTE}"
        )),
        vec![]
    );
}

#[test]
fn round_trips_through_toml_and_json() {
    let config = Config::from_toml(PALISADE).unwrap();
    let text = toml::to_string(&config).unwrap();
    let again = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again, config);
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["services"][0]["deadline"]["timeout"], "15s");
    assert_eq!(json["services"][0]["retry"]["per_try_timeout"], "none");
    assert_eq!(json["services"][0]["ejection"]["max_penalty"], "1m");
}

#[test]
fn durations_take_humantime_and_none() {
    let config = Config::from_toml(
        r#"
        [[services]]
        name = "app"
        endpoints = ["127.0.0.1:1"]
        deadline = { timeout = "none", max_timeout = "1m 30s" }
        retry = { per_try_timeout = "250ms", backoff_cap = "1.5s" }
        [[routes]]
        service = "app"
        "#,
    )
    .unwrap();
    let s = &config.services[0];
    assert_eq!(s.client.deadline.timeout, None);
    assert_eq!(s.client.deadline.max_timeout, Duration::from_secs(90));
    assert_eq!(
        s.client.retry.per_try_timeout,
        Some(Duration::from_millis(250))
    );
    assert_eq!(s.client.retry.backoff_cap, Duration::from_millis(1500));
}

#[test]
fn endpoint_specs() {
    let config = Config::from_toml(
        r#"
        [[services]]
        name = "app"
        endpoints = ["10.0.0.1:80", { address = "db.internal:5432", weight = 3, labels = { zone = "a" } }]
        [[routes]]
        service = "app"
        "#,
    )
    .unwrap();
    let eps = &config.services[0].endpoints;
    assert_eq!(eps[0], EndpointSpec::Address("10.0.0.1:80".into()));
    let ep = eps[1].to_endpoint().unwrap();
    assert_eq!(ep.weight(), 3.0);
    assert_eq!(ep.labels()["zone"], "a");
    assert_eq!(eps[1].address(), "db.internal:5432");
}

#[test]
fn services_are_required_and_checked() {
    let p = errors("services = []\n[[routes]]\nservice = \"x\"\n");
    assert_has(&p, "services", Some(1), "at least one service");
    assert_has(
        &p,
        "routes[0].service",
        Some(3),
        "no service named \"x\" (there are no services)",
    );

    let p = errors(&format!(
        "[[services]]\nname = \"\"\nendpoints = [\"127.0.0.1:1\"]\n\
         [[services]]\nname = \"a b\"\nendpoints = [\"127.0.0.1:1\"]\n\
         [[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n\
         [[services]]\nname = \"app\"\nendpoints = []\n{ROUTE}"
    ));
    assert_has(&p, "services[0].name", Some(2), "must not be empty");
    assert_has(&p, "services[1].name", Some(5), "has ' '");
    assert_has(
        &p,
        "services[3].name",
        Some(11),
        "already used by services[2] (line 7)",
    );
    assert_has(
        &p,
        "services[3].endpoints",
        Some(12),
        "at least one endpoint",
    );
    assert_eq!(p.len(), 4, "{p:#?}");
}

#[test]
fn endpoints_are_checked_with_the_library_messages() {
    let p = errors(&format!(
        r#"[[services]]
name = "app"
endpoints = [
  "127.0.0.1:1",
  "no-port",
  {{ address = "127.0.0.1:2", weight = 0.0 }},
  {{ address = "bad host:80" }},
  "127.0.0.1:1",
  {{ address = "127.0.0.1:3", weight = nan }},
]
{ROUTE}"#
    ));
    assert_has(
        &p,
        "services[0].endpoints[1]",
        Some(5),
        "endpoint \"no-port\": expected host:port",
    );
    assert_has(
        &p,
        "services[0].endpoints[2].weight",
        Some(6),
        "weight must be finite and greater than 0, got 0",
    );
    assert_has(
        &p,
        "services[0].endpoints[3].address",
        Some(7),
        "host must be an IP address",
    );
    assert_has(
        &p,
        "services[0].endpoints[4]",
        Some(8),
        "listed twice (first at services[0].endpoints[0] (line 4))",
    );
    assert_has(&p, "services[0].endpoints[5].weight", Some(9), "got NaN");
    assert_eq!(p.len(), 5, "{p:#?}");
}

#[test]
fn policies_are_range_checked() {
    let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
[services.retry]
max_attempts = 0
backoff_base = "1s"
backoff_cap = "100ms"
per_try_timeout = "0s"
retryable_statuses = [503, 99, 600]
[services.budget]
ratio = -0.5
[services.deadline]
timeout = "0s"
max_timeout = "0s"
[services.ejection]
success_rate = 1.5
jitter = -0.1
max_ejection_percent = inf
panic_threshold = nan
base_penalty = "2m"
max_penalty = "1m"
[services.breaker]
error_threshold = 0.0
half_open_probes = 0

[[routes]]
service = "app"
"#;
    let p = errors(text);
    let s = "services[0]";
    assert_has(
        &p,
        &format!("{s}.retry.max_attempts"),
        Some(5),
        "at least 1",
    );
    assert_has(
        &p,
        &format!("{s}.retry.backoff_base"),
        Some(6),
        "backoff_base (1s) must not exceed backoff_cap (100ms)",
    );
    assert_has(
        &p,
        &format!("{s}.retry.per_try_timeout"),
        Some(8),
        "greater than 0",
    );
    assert_has(
        &p,
        &format!("{s}.retry.retryable_statuses[1]"),
        Some(9),
        "99 is not an HTTP status",
    );
    assert_has(
        &p,
        &format!("{s}.retry.retryable_statuses[2]"),
        Some(9),
        "600 is not an HTTP status",
    );
    assert_has(
        &p,
        &format!("{s}.budget.ratio"),
        Some(11),
        "at least 0, got -0.5",
    );
    assert_has(
        &p,
        &format!("{s}.deadline.timeout"),
        Some(13),
        "greater than 0",
    );
    assert_has(
        &p,
        &format!("{s}.deadline.max_timeout"),
        Some(14),
        "greater than 0",
    );
    assert_has(
        &p,
        &format!("{s}.ejection.success_rate"),
        Some(16),
        "between 0 and 1, got 1.5",
    );
    assert_has(&p, &format!("{s}.ejection.jitter"), Some(17), "got -0.1");
    assert_has(
        &p,
        &format!("{s}.ejection.max_ejection_percent"),
        Some(18),
        "got inf",
    );
    assert_has(
        &p,
        &format!("{s}.ejection.panic_threshold"),
        Some(19),
        "got NaN",
    );
    assert_has(
        &p,
        &format!("{s}.ejection.base_penalty"),
        Some(20),
        "must not exceed max_penalty (1m)",
    );
    assert_has(
        &p,
        &format!("{s}.breaker.error_threshold"),
        Some(23),
        "greater than 0 and at most 1",
    );
    assert_has(
        &p,
        &format!("{s}.breaker.half_open_probes"),
        Some(24),
        "at least 1",
    );
    assert_eq!(p.len(), 15, "{p:#?}");
    // In file order.
    let lines: Vec<_> = p.iter().map(|(_, l, _)| l.unwrap()).collect();
    assert!(lines.is_sorted(), "{lines:?}");

    let p = errors(
        "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\nbudget = { ratio = inf }\nbreaker = { error_threshold = 1.01 }\n[[routes]]\nservice = \"app\"\n",
    );
    assert_has(&p, "services[0].budget.ratio", Some(4), "finite");
    assert_has(
        &p,
        "services[0].breaker.error_threshold",
        Some(5),
        "got 1.01",
    );
}

#[test]
fn routes_are_checked() {
    let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
service = "ap"

[[routes]]
service = "app"
split = [{ service = "app", weight = 1 }]

[[routes]]
name = "nothing"

[[routes]]
split = [
  { service = "app", weight = 0 },
  { service = "gone", weight = 0 },
]

[[routes]]
name = "nothing"
service = "app"
"#;
    let p = errors(text);
    assert_has(
        &p,
        "routes[0].service",
        Some(6),
        "no service named \"ap\" (services: app)",
    );
    assert_has(
        &p,
        "routes[1]",
        Some(8),
        "either `service` or `split`, not both",
    );
    assert_has(
        &p,
        "routes[2]",
        Some(12),
        "needs `service = \"NAME\"` or a non-empty `split`",
    );
    assert_has(&p, "routes[3].split", Some(16), "add up to more than 0");
    assert_has(
        &p,
        "routes[3].split[1].service",
        Some(18),
        "no service named \"gone\"",
    );
    assert_has(
        &p,
        "routes[4].name",
        Some(22),
        "already used by routes[2] (line 12)",
    );
    assert_eq!(p.len(), 6, "{p:#?}");

    let p = errors("[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n");
    assert_has(&p, "routes", None, "at least one route");
}

#[test]
fn matches_are_checked() {
    let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
service = "app"
[routes.match]
path_prefix = "api"
host = ""
methods = ["GET", "get", "G T", ""]
[routes.match.headers]
"bad header" = "x"
x-ok = "line\u0001break"
X-Dup = "1"
x-dup = "1"

[[routes]]
service = "app"
match = { host = "*.ex*ample.com", path_prefix = "/a?b" }

[[routes]]
service = "app"
match = { host = "example.com:8080" }

[[routes]]
service = "app"
match = { host = "bad.exa mple.com" }

[[routes]]
service = "app"
match = { host = "[::1]", path_prefix = "/ok/" }

[[routes]]
service = "app"
match = { host = "[nope]" }

[[routes]]
service = "app"
match = { host = "*.-bad.com" }
"#;
    let p = errors(text);
    let m = "routes[0].match";
    assert_has(
        &p,
        &format!("{m}.path_prefix"),
        Some(8),
        "must start with '/'",
    );
    assert_has(&p, &format!("{m}.host"), Some(9), "must not be empty");
    assert_has(
        &p,
        &format!("{m}.methods[1]"),
        Some(10),
        "case-sensitive; write \"GET\"",
    );
    assert_has(
        &p,
        &format!("{m}.methods[2]"),
        Some(10),
        "not an HTTP method",
    );
    assert_has(
        &p,
        &format!("{m}.methods[3]"),
        Some(10),
        "must not be empty",
    );
    assert_has(
        &p,
        &format!("{m}.headers.\"bad header\""),
        Some(12),
        "not a valid header name",
    );
    assert_has(
        &p,
        &format!("{m}.headers.x-ok"),
        Some(13),
        "not a valid header value",
    );
    assert_has(
        &p,
        &format!("{m}.headers.x-dup"),
        Some(15),
        "also given as \"X-Dup\"",
    );
    assert_has(
        &p,
        "routes[1].match.host",
        Some(19),
        "only allowed as a leading \"*.\"",
    );
    assert_has(
        &p,
        "routes[1].match.path_prefix",
        Some(19),
        "without '?' or '#'",
    );
    assert_has(&p, "routes[2].match.host", Some(23), "has a port");
    assert_has(
        &p,
        "routes[3].match.host",
        Some(27),
        "not allowed in a host name",
    );
    assert_has(&p, "routes[5].match.host", Some(35), "bracketed IPv6");
    assert_has(
        &p,
        "routes[6].match.host",
        Some(39),
        "the part after \"*.\" has a label starting or ending with '-'",
    );
    assert_eq!(p.len(), 14, "{p:#?}");
}

#[test]
fn addresses_must_be_distinct() {
    let text = format!(
        r#"[[listeners]]
address = "127.0.0.1:4140"
[[listeners]]
address = "127.0.0.1:4140"
[[listeners]]
address = "0.0.0.0:9990"
[[listeners]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:9990"
[server]
max_header_bytes = 100
watch_interval = "0s"
[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
{ROUTE}"#
    );
    let p = errors(&text);
    assert_has(
        &p,
        "listeners[1].address",
        Some(4),
        "127.0.0.1:4140 is already used by listeners[0].address (line 2)",
    );
    assert_has(
        &p,
        "admin.address",
        Some(10),
        "overlaps listeners[2].address (line 6) (0.0.0.0:9990)",
    );
    assert_has(
        &p,
        "server.max_header_bytes",
        Some(12),
        "must be at least 1024 (a request line and a Host header need room), got 100",
    );
    assert_has(&p, "server.watch_interval", Some(13), "greater than 0");
    assert_eq!(p.len(), 4, "{p:#?}");

    // Below hyper's smallest HTTP/1 buffer a limit would not be the one
    // enforced.
    let p = errors(&format!(
        "[server]\nmax_header_bytes = 1023\n[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
    ));
    assert_has(&p, "server.max_header_bytes", Some(2), "at least 1024");
    Config::from_toml(&format!(
        "[server]\nmax_header_bytes = 1024\n[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
    ))
    .unwrap();

    // Port 0 never collides: tests bind everything to fresh ports.
    Config::from_toml(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
    ))
    .unwrap();
    let p = errors(&format!(
        "[[listeners]]\naddress = \"localhost:80\"\n[admin]\naddress = 9990\n[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
    ));
    assert_has(
        &p,
        "listeners[0].address",
        Some(2),
        "invalid socket address \"localhost:80\": write an IP address and a port",
    );
    assert_has(
        &p,
        "admin.address",
        Some(4),
        "expected a socket address such as \"127.0.0.1:4140\"",
    );
    let p = errors(&format!(
        "listeners = []\n[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
    ));
    assert_has(&p, "listeners", Some(1), "at least one listener");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"[[listeners]]
address = "127.0.0.1:9990"

[[services]]
name = "a"
endpoints = ["nope"]
retry = { max_attempts = 0 }

[[services]]
name = "a"
endpoints = ["127.0.0.1:1"]
breaker = { half_open_probes = 0 }

[[routes]]
match = { path_prefix = "x" }
service = "b"
"#;
    let p = errors(text);
    assert_has(
        &p,
        "admin.address",
        None,
        "127.0.0.1:9990 is already used by listeners[0].address (line 2)",
    );
    assert_has(
        &p,
        "services[0].endpoints[0]",
        Some(6),
        "expected host:port",
    );
    assert_has(&p, "services[0].retry.max_attempts", Some(7), "at least 1");
    assert_has(
        &p,
        "services[1].name",
        Some(10),
        "already used by services[0] (line 4)",
    );
    assert_has(
        &p,
        "services[1].breaker.half_open_probes",
        Some(12),
        "at least 1",
    );
    assert_has(
        &p,
        "routes[0].match.path_prefix",
        Some(15),
        "start with '/'",
    );
    assert_has(&p, "routes[0].service", Some(16), "no service named \"b\"");
    assert_eq!(p.len(), 7, "{p:#?}");
    let err = Config::from_toml(text).unwrap_err().to_string();
    assert!(
        err.contains("line 6: services[0].endpoints[0]: endpoint \"nope\": expected host:port"),
        "{err}"
    );
}

#[test]
fn syntax_errors_have_lines() {
    let p = errors("[[services]]\nname = \"app\"\n[server\ngrace_period = \"1s\"\n");
    assert_has(&p, "(syntax)", Some(3), "unclosed table");

    // Every syntax error, in file order.
    let p = errors("a = \"\\q\"\nb = [1,\nc = 3\n");
    assert!(p.len() >= 3, "{p:#?}");
    assert_eq!(p[0].1, Some(1), "{p:#?}");
    assert!(p.iter().all(|(_, l, _)| l.is_some()), "{p:#?}");
    let lines: Vec<_> = p.iter().map(|(_, l, _)| l.unwrap()).collect();
    assert!(lines.is_sorted(), "{lines:?}");

    let p = errors("x = 1\nx = 2\n");
    assert_has(&p, "(syntax)", Some(2), "duplicate key");
    assert!(p.iter().all(|(_, _, m)| !m.contains('\n')), "{p:#?}");
}

#[test]
fn type_errors_have_fields_and_lines() {
    // A bad duration, with humantime's reason.
    let p = errors("[server]\ngrace_period = \"10 parsecs\"\n");
    assert_has(
        &p,
        "server.grace_period",
        Some(2),
        "invalid duration \"10 parsecs\": unknown time unit \"parsecs\"",
    );
    assert_has(&p, "server.grace_period", Some(2), "\"1m 30s\"");

    // Unknown keys, at every level.
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\nendpoints = [{{ address = \"127.0.0.1:1\", wieght = 2 }}]\nretri = {{}}\n{ROUTE}"
    ));
    assert_has(&p, "services[0].retri", Some(4), "unknown field `retri`");
    assert_has(
        &p,
        "services[0].endpoints[0].wieght",
        Some(3),
        "unknown field `wieght`",
    );

    // A wrong type.
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n[services.retry]\nmax_attempts = \"three\"\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].retry.max_attempts",
        Some(5),
        "invalid type: string \"three\", expected u32",
    );
    let p = errors(&format!(
        "[[services]]\nname = 5\nendpoints = [\"127.0.0.1:1\"]\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].name",
        Some(2),
        "invalid type: integer `5`, expected a string",
    );
    assert_eq!(
        p.len(),
        1,
        "the name taken out is not reported missing: {p:#?}"
    );
    let p = errors("services = 5\n");
    assert_has(&p, "services", Some(1), "invalid type");
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\nendpoints = [7]\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].endpoints[0]",
        Some(3),
        "expected an endpoint",
    );
    let p = errors(&format!(
        "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\ndeadline = {{ timeout = 15 }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].deadline.timeout",
        Some(4),
        "expected a duration string",
    );

    // Missing fields name the field.
    let p = errors("[[services]]\nname = \"app\"\nendpoints = []\n[[services]]\nendpoints = []\n");
    assert_has(&p, "services[1].name", Some(4), "missing field `name`");
    let p = errors("");
    assert_has(&p, "services", None, "missing field `services`");
}

#[test]
fn type_errors_in_many_places_are_all_reported() {
    let text = r#"bogus = 1
[[services]]
name = "a"
endpoints = ["127.0.0.1:1"]
retry = { max_attempts = -1 }

[[services]]
name = "b"
endpoints = ["127.0.0.1:2"]
breaker = { window = "soon" }

[server]
max_header_bytes = "big"

[[routes]]
service = "a"
match = { methods = "GET" }
also_bogus = true
"#;
    let p = errors(text);
    assert_has(&p, "bogus", Some(1), "unknown field `bogus`");
    assert_has(
        &p,
        "services[0].retry.max_attempts",
        Some(5),
        "invalid value: integer `-1`",
    );
    assert_has(
        &p,
        "services[1].breaker.window",
        Some(10),
        "invalid duration \"soon\"",
    );
    assert_has(&p, "server.max_header_bytes", Some(13), "invalid type");
    assert_has(&p, "routes[0].match.methods", Some(17), "invalid type");
    assert_has(
        &p,
        "routes[0].also_bogus",
        Some(18),
        "unknown field `also_bogus`",
    );
    let lines: Vec<_> = p.iter().map(|(_, l, _)| l.unwrap()).collect();
    assert!(lines.is_sorted(), "{lines:?}");
}

const TWO: &str = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
"#;

#[test]
fn lint_per_try_timeout_times_attempts() {
    let p = lints(&format!(
        "{TWO}[services.retry]\nper_try_timeout = \"6s\"\n[services.deadline]\ntimeout = \"15s\"\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].retry.per_try_timeout",
        Some(5),
        "(3 × 6s = 18s) exceeds deadline.timeout (15s)",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    let p = lints(&format!(
        "{TWO}retry = {{ max_attempts = 1, per_try_timeout = \"20s\" }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].retry.per_try_timeout",
        Some(4),
        "never fires",
    );
    // 3 × 5s fits in 15s exactly; no deadline means nothing to exceed.
    assert_eq!(
        lints(&format!(
            "{TWO}retry = {{ per_try_timeout = \"5s\" }}\n{ROUTE}"
        )),
        vec![]
    );
    assert_eq!(
        lints(&format!(
            "{TWO}retry = {{ per_try_timeout = \"1h\" }}\ndeadline = {{ timeout = \"none\" }}\n{ROUTE}"
        )),
        vec![]
    );
}

#[test]
fn lint_budget_ratio_above_one() {
    let p = lints(&format!("{TWO}budget = {{ ratio = 1.5 }}\n{ROUTE}"));
    assert_has(
        &p,
        "services[0].budget.ratio",
        Some(4),
        "more retries than requests",
    );
    assert_eq!(p.len(), 1);
    assert_eq!(
        lints(&format!("{TWO}budget = {{ ratio = 1 }}\n{ROUTE}")),
        vec![]
    );
}

#[test]
fn lint_retries_behind_non_idempotent_routes() {
    let text = format!(
        "{TWO}\n[[routes]]\nmatch = {{ methods = [\"POST\", \"PATCH\"] }}\nservice = \"app\"\n"
    );
    let p = lints(&text);
    assert_has(
        &p,
        "services[0].retry.max_attempts",
        Some(1),
        "every route to \"app\" (routes[0] (line 5)) takes only non-idempotent methods",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    // Not when retries are off, nor when some route allows an idempotent method.
    assert_eq!(
        lints(&format!(
            "{TWO}retry = {{ max_attempts = 1 }}\n[[routes]]\nmatch = {{ methods = [\"POST\"] }}\nservice = \"app\"\n"
        )),
        vec![]
    );
    assert_eq!(
        lints(&format!(
            "{TWO}[[routes]]\nmatch = {{ methods = [\"POST\"] }}\nservice = \"app\"\n\
             [[routes]]\nmatch = {{ methods = [\"PUT\"] }}\nservice = \"app\"\n"
        )),
        vec![]
    );
}

#[test]
fn lint_backoff_cap_and_timeouts() {
    let p = lints(&format!(
        "{TWO}retry = {{ backoff_cap = \"2s\" }}\ndeadline = {{ timeout = \"2s\" }}\n{ROUTE}"
    ));
    assert_has(
        &p,
        "services[0].retry.backoff_cap",
        Some(4),
        "backoff_cap (2s) is not shorter than deadline.timeout (2s)",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    let p = lints(&format!("{TWO}deadline = {{ timeout = \"10m\" }}\n{ROUTE}"));
    assert_has(
        &p,
        "services[0].deadline.timeout",
        Some(4),
        "longer than max_timeout (5m)",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
}

#[test]
fn lint_unreachable_routes_and_services() {
    let text = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
[[services]]
name = "other"
endpoints = ["127.0.0.1:2"]
[[services]]
name = "third"
endpoints = ["127.0.0.1:3"]

[[routes]]
match = { path_prefix = "/api", methods = ["GET", "PUT"] }
service = "app"

[[routes]]
match = { path_prefix = "/api/v1", methods = ["GET"], headers = { x-a = "1" } }
service = "other"

[[routes]]
match = { path_prefix = "/apiv2" }
split = [{ service = "third", weight = 0 }, { service = "app", weight = 1 }]

[[routes]]
service = "app"

[[routes]]
match = { host = "example.com" }
service = "other"
"#;
    let p = lints(text);
    assert_has(
        &p,
        "routes[1]",
        Some(15),
        "unreachable: routes[0] (line 11) before it matches every request this route matches",
    );
    assert_has(
        &p,
        "routes[4]",
        Some(26),
        "unreachable: routes[3] (line 23) before it matches every request",
    );
    assert_has(
        &p,
        "services[1].name",
        Some(5),
        "no reachable route sends traffic to service \"other\"",
    );
    assert_has(&p, "services[2].name", Some(8), "no reachable route");
    assert_eq!(p.len(), 4, "{p:#?}");
}

#[test]
fn route_coverage() {
    let m = |host: Option<&str>, path: Option<&str>| Match {
        host: host.map(Into::into),
        path_prefix: path.map(Into::into),
        ..Match::default()
    };
    assert!(covers(&m(None, Some("/")), &m(Some("a.com"), None)));
    assert!(covers(&m(None, Some("/api")), &m(None, Some("/api/x"))));
    assert!(covers(&m(None, Some("/api/")), &m(None, Some("/api/x"))));
    assert!(!covers(&m(None, Some("/api")), &m(None, Some("/apix"))));
    assert!(!covers(&m(None, Some("/api/")), &m(None, Some("/api"))));
    assert!(covers(&m(Some("*.a.com"), None), &m(Some("X.A.com"), None)));
    assert!(!covers(&m(Some("*.a.com"), None), &m(Some("a.com"), None)));
    let wild = |h| m(Some(h), None);
    assert!(covers(&wild("*.a.com"), &wild("x.y.a.com")));
    assert!(covers(&wild("*.a.com"), &wild("*.y.a.com")));
    assert!(!covers(&wild("*.y.a.com"), &wild("*.a.com")));
    assert!(!covers(&wild("*.a.com"), &wild("xa.com")));
    assert!(!covers(&wild("*.a.com"), &wild("é.b.com")));
    assert!(!covers(&m(Some("a.com"), None), &m(None, None)));
    assert!(covers(
        &m(Some("A.com"), None),
        &m(Some("a.COM"), Some("/x"))
    ));
}

#[test]
fn problem_display() {
    let p = Problem {
        field: "services[0].name".into(),
        line: Some(3),
        message: "must not be empty".into(),
    };
    assert_eq!(p.to_string(), "line 3: services[0].name: must not be empty");
    assert_eq!(
        FieldPath::root()
            .key("routes")
            .index(0)
            .at("match.headers")
            .key("a.b")
            .to_string(),
        "routes[0].match.headers.\"a.b\""
    );
}

#[test]
fn line_of_fields() {
    let config = Config::from_toml(PALISADE).unwrap();
    let line = |needle: &str| {
        PALISADE
            .lines()
            .position(|l| l.starts_with(needle))
            .unwrap()
            + 1
    };
    assert_eq!(
        config.line_of("services[0].retry.max_attempts"),
        Some(line("max_attempts = 3"))
    );
    assert_eq!(
        config.line_of("services[1]"),
        Some(line("name = \"web-staging\"") - 1)
    );
    // Not written: the nearest enclosing table.
    assert_eq!(
        config.line_of("services[1].breaker.window"),
        Some(line("name = \"web-staging\"") - 1)
    );
    assert_eq!(config.line_of("nothing"), None);
}

/// A mutation of a text: delete, insert, duplicate or swap.
fn mutate(text: &str, ops: &[(u8, usize, usize, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(op, a, b, c) in ops {
        let n = chars.len().max(1);
        let (a, b) = (a % n, b % n);
        let (lo, hi) = (a.min(b), a.max(b).min(a.min(b) + 40));
        match op % 5 {
            0 if !chars.is_empty() => {
                chars.drain(lo..hi.min(chars.len()));
            }
            1 => chars.insert(a.min(chars.len()), c),
            2 if !chars.is_empty() => {
                let piece: Vec<char> = chars[lo..hi.min(chars.len())].to_vec();
                let at = b.min(chars.len());
                chars.splice(at..at, piece);
            }
            3 if !chars.is_empty() => {
                let last = chars.len() - 1;
                chars.swap(a.min(last), b.min(last));
            }
            _ => {
                let at = a.min(chars.len());
                chars.splice(at..at, "\n[[routes]]\nservice = \"web\"\n".chars());
            }
        }
    }
    chars.into_iter().collect()
}

fn exercise(text: &str) {
    match Config::from_toml(text) {
        Ok(config) => {
            let _ = config.lints();
            let _ = toml::to_string(&config);
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            let _ = e.to_string();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_strings_never_panic(text in "(\\PC|[\\[\\]{}=\"'.,#\n ]){0,300}") {
        exercise(&text);
    }

    #[test]
    fn mutated_examples_never_panic(
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<char>()), 1..6)
    ) {
        exercise(&mutate(PALISADE, &ops));
    }

    #[test]
    fn mutated_values_never_panic(
        line in any::<usize>(),
        value in prop_oneof![
            Just("\"\"".to_owned()),
            Just("-1".to_owned()),
            Just("nan".to_owned()),
            Just("inf".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("9223372036854775807".to_owned()),
            Just("\"99999999999999999999h\"".to_owned()),
            Just("\"584942417355y\"".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            "\"[a-z0-9 :.*\\[\\]/-]{0,20}\"",
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
        ],
    ) {
        // Replace the value of one `key = value` line.
        let lines: Vec<&str> = PALISADE.lines().collect();
        let candidates: Vec<usize> = (0..lines.len())
            .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains(" = "))
            .collect();
        let target = candidates[line % candidates.len()];
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if i == target {
                    let key = l.split(" = ").next().unwrap();
                    format!("{key} = {value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        exercise(&text);
    }
}

#[test]
fn server_idle_timeout_defaults_to_5_minutes_and_must_be_positive() {
    let config = Config::from_toml(&format!("{TWO}{ROUTE}")).unwrap();
    assert_eq!(config.server.idle_timeout, Duration::from_secs(300));
    let p = errors(&format!("[server]\nidle_timeout = \"0s\"\n{TWO}{ROUTE}"));
    assert_has(&p, "server.idle_timeout", Some(2), "must be greater than 0");
    assert_eq!(p.len(), 1, "{p:#?}");
}

#[test]
fn lint_an_admin_address_that_is_not_loopback() {
    for address in ["0.0.0.0:9990", "[::]:9990", "10.1.2.3:9990"] {
        let p = lints(&format!("[admin]\naddress = \"{address}\"\n{TWO}{ROUTE}"));
        assert_has(&p, "admin.address", Some(2), "is not a loopback address");
        assert_has(&p, "admin.address", Some(2), "/config");
        assert_eq!(p.len(), 1, "{address}: {p:#?}");
    }
    for address in [
        "127.0.0.1:9990",
        "127.0.0.2:0",
        "[::1]:9990",
        "[::ffff:127.0.0.1]:9990",
    ] {
        let p = lints(&format!("[admin]\naddress = \"{address}\"\n{TWO}{ROUTE}"));
        assert_eq!(p, vec![], "{address}");
    }
}

#[test]
fn service_http_settings_default_to_the_librarys_and_are_validated_at_their_line() {
    let config = Config::from_toml(&format!("{TWO}{ROUTE}")).unwrap();
    assert_eq!(
        config.services[0].http,
        crate::http::HttpSettings::default()
    );
    let text = "[[services]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n\
                http = { connect_timeout = \"0s\", max_idle_per_endpoint = 0 }\n\
                [[routes]]\nservice = \"a\"\n";
    let p = errors(text);
    assert_has(
        &p,
        "services[0].http.connect_timeout",
        Some(4),
        "must be greater than 0",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    let p = errors(&text.replace("connect_timeout", "connect"));
    assert!(
        p.iter()
            .any(|(_, _, m)| m.contains("unknown field `connect`")),
        "{p:#?}"
    );
}
