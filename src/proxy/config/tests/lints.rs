//! Lints of valid files: retries, budgets, timeouts, reachability, route
//! coverage and the admin address.

use super::*;

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
