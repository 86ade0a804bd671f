//! Validation: services, endpoints, policies, routes, matches, addresses,
//! the server and the services' HTTP settings.

use super::*;

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
fn server_idle_timeout_defaults_to_5_minutes_and_must_be_positive() {
    let config = Config::from_toml(&format!("{TWO}{ROUTE}")).unwrap();
    assert_eq!(config.server.idle_timeout, Duration::from_secs(300));
    let p = errors(&format!("[server]\nidle_timeout = \"0s\"\n{TWO}{ROUTE}"));
    assert_has(&p, "server.idle_timeout", Some(2), "must be greater than 0");
    assert_eq!(p.len(), 1, "{p:#?}");
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
