//! Limits and hedging: parsing, range checks and lints.

use super::*;

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
