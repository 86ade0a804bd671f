//! How problems are reported: all at once, with fields and lines, from
//! syntax and type errors; their display; the source map's lines.

use super::*;

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
