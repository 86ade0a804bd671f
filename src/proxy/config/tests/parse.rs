//! Parsing: the examples, the documented defaults, round trips, durations
//! and endpoint specs.

use super::*;

const MINIMAL: &str = include_str!("../../../../examples/minimal.toml");

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
    let doc = include_str!("../../../../docs/config.md");
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
