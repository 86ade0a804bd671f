//! Upstreams: each service's endpoint source, started, and its client,
//! built from the service's settings; the routing table they make.

use std::collections::HashMap;
use std::sync::Arc;

use crate::Client;
use crate::discover::{self, Dynamic};
use crate::metrics::Metrics;
use crate::proxy::config::{self, Config, Discovery};
use crate::proxy::pool::PerThread;
use crate::proxy::routes::RouteTable;

use super::server::*;

/// Builds the clients and routes for `config`, reusing clients of services
/// whose settings (discovery and limits included) did not change, so their
/// load estimates, limits and discovery tasks survive. The clients of
/// services changed or removed are dropped with the old routing; their
/// discovery tasks stop with them. Services share a connection pool when
/// their protocol and `http` settings are equal; the old routing's pools
/// are reused by key.
pub(crate) async fn build_routing(
    mut config: Config,
    old: Option<&Routing>,
    metrics: &Metrics,
) -> Result<Routing, StartError> {
    let mut pools: HashMap<PoolKey, Arc<Pool>> = HashMap::new();
    let mut services = HashMap::new();
    for svc in &config.services {
        let key = (svc.protocol, svc.http.clone());
        let pool = match pools.get(&key) {
            Some(pool) => pool.clone(),
            None => {
                let pool = match old.and_then(|old| old.pools.get(&key)) {
                    Some(pool) => pool.clone(),
                    None => Arc::new(new_pool(&key, config.server.threads()).map_err(|e| {
                        StartError::Build(format!("service {:?}: http: {e}", svc.name))
                    })?),
                };
                pools.insert(key, pool.clone());
                pool
            }
        };
        let reused = old.and_then(|old| {
            let before = old.config.services.iter().find(|s| s.name == svc.name)?;
            (before == svc).then(|| old.services.get(&svc.name).cloned())?
        });
        let upstream = match reused {
            Some(upstream) => upstream,
            None => build_upstream(svc, &config, &pool, metrics).await?,
        };
        services.insert(svc.name.clone(), upstream);
    }
    // The routes move into their compact table, and the file's text goes:
    // a large config costs about its size while it runs.
    let routes = RouteTable::new(&std::mem::take(&mut config.routes));
    Ok(Routing {
        config: Arc::new(config.without_source()),
        services,
        routes,
        pools,
    })
}

/// A connection pool for services of `key`'s protocol and settings.
/// Each of the `threads` serving threads gets its own client from the same
/// settings (see `pool.rs`), with its share of the idle connections an
/// endpoint may keep: `max_idle_per_endpoint` stays the bound for the
/// whole proxy.
fn new_pool(
    (protocol, settings): &PoolKey,
    threads: usize,
) -> Result<Pool, crate::settings::SettingsError> {
    settings.validate()?;
    let mut settings = settings.clone();
    settings.max_idle_per_endpoint = settings.max_idle_per_endpoint.div_ceil(threads.max(1));
    let h2c = *protocol == config::Protocol::H2c;
    Ok(PerThread::new(move || {
        crate::http::pooled_client(&settings, h2c)
    }))
}

/// One service's endpoint source, started, and its client.
pub(crate) async fn build_upstream(
    svc: &config::Service,
    config: &Config,
    pool: &Pool,
    metrics: &Metrics,
) -> Result<Upstream, StartError> {
    let bad = |e: &dyn std::fmt::Display| StartError::Build(format!("service {:?}: {e}", svc.name));
    let mut upstream_endpoints = None;
    #[cfg(feature = "dns")]
    let mut dns = None;
    let discover = match &svc.discovery {
        // A static list through the same kind of source as the others: one
        // client type, one builder chain.
        None => {
            let endpoints = svc
                .endpoints
                .iter()
                .map(config::EndpointSpec::to_endpoint)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            let (handle, discover) = discover::dynamic();
            handle.replace(endpoints);
            upstream_endpoints = Some(handle);
            discover
        }
        #[cfg(feature = "dns")]
        Some(Discovery::Dns(d)) => {
            let source = d.to_dns().map_err(|e| bad(&e))?;
            dns = Some(source.status());
            source.spawn().map_err(|e| bad(&e))?
        }
        Some(Discovery::File(f)) => f.to_watch(config).spawn().map_err(|e| bad(&e))?,
        #[cfg(feature = "kubernetes")]
        Some(Discovery::Kubernetes(k)) => {
            let mut source =
                crate::discover::kubernetes::Kubernetes::infer(&k.namespace, &k.service)
                    .await
                    .map_err(|e| bad(&e))?;
            if let Some(port) = &k.port {
                source = source.port_name(port);
            }
            if let Some(max) = k.max_endpoints {
                source = source.max_endpoints(max);
            }
            source.spawn().map_err(|e| bad(&e))?
        }
        // Validation refuses the sources this build has no support for.
        #[cfg(not(all(feature = "dns", feature = "kubernetes")))]
        Some(other) => {
            return Err(bad(&format!(
                "this build has no {} discovery",
                other.kind()
            )));
        }
    };
    Ok(Upstream {
        client: build_client(svc, discover, pool, metrics)?,
        http1: !matches!(svc.protocol, config::Protocol::H2c),
        _endpoints: upstream_endpoints,
        #[cfg(feature = "dns")]
        dns,
    })
}

/// One service of the config as a library client: nothing but builder
/// calls.
pub(crate) fn build_client(
    svc: &config::Service,
    discover: Dynamic,
    pool: &Pool,
    metrics: &Metrics,
) -> Result<ServiceClient, StartError> {
    let bad = |e: &dyn std::fmt::Display| StartError::Build(format!("service {:?}: {e}", svc.name));
    // Every client setting reaches its layer through the one ClientConfig:
    // nothing is copied field by field.
    Client::builder(svc.name.as_str())
        .discover(discover)
        .http(pool.clone())
        .config(&svc.client)
        .metrics(metrics.clone())
        .build()
        .map_err(|e| bad(&e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::ClientConfig;

    /// Every client setting, each with a value that is not its default, as
    /// TOML writes it: `(path, value)`.
    const KNOBS: &[(&str, &str)] = &[
        ("balancer.decay", r#""3s""#),
        ("balancer.default_rtt", r#""7ms""#),
        ("balancer.min_rtt", r#""2ms""#),
        ("balancer.failure_penalty", r#""3s""#),
        ("balancer.endpoint_wait", r#""1s""#),
        ("balancer.endpoint_max_in_flight", "12"),
        ("balancer.stall_detection", "false"),
        ("balancer.stall_factor", "3.5"),
        ("balancer.stall_floor", r#""2s""#),
        ("balancer.choice", r#""random""#),
        ("retry.max_attempts", "2"),
        ("retry.backoff_base", r#""5ms""#),
        ("retry.backoff_cap", r#""2s""#),
        ("retry.per_try_timeout", r#""300ms""#),
        ("retry.body_limit", "1024"),
        ("retry.retryable_statuses", "[500, 503]"),
        (
            "retry.retryable_grpc_codes",
            r#"["UNAVAILABLE", "RESOURCE_EXHAUSTED"]"#,
        ),
        ("budget.ratio", "0.5"),
        ("budget.min_per_sec", "3"),
        ("budget.ttl", r#""20s""#),
        ("deadline.timeout", r#""4s""#),
        ("deadline.max_timeout", r#""1m""#),
        ("deadline.reserve", r#""9ms""#),
        ("deadline.propagate", "false"),
        ("deadline.headers_may_extend", "true"),
        ("deadline.body_idle_timeout", r#""none""#),
        ("breaker.enabled", "false"),
        ("breaker.window", r#""20s""#),
        ("breaker.volume_threshold", "40"),
        ("breaker.error_threshold", "0.7"),
        ("breaker.sleep_window", r#""9s""#),
        ("breaker.half_open_probes", "3"),
        ("hedge.delay", r#""p99""#),
        ("hedge.min_samples", "50"),
        ("hedge.fallback_delay", r#""70ms""#),
        ("hedge.window", r#""20s""#),
        ("hedge.budget_ratio", "0.1"),
        ("ejection.enabled", "false"),
        ("ejection.consecutive_failures", "9"),
        ("ejection.success_rate", "0.6"),
        ("ejection.window", r#""30s""#),
        ("ejection.min_requests", "12"),
        ("ejection.base_penalty", r#""2s""#),
        ("ejection.max_penalty", r#""2m""#),
        ("ejection.jitter", "0.25"),
        ("ejection.max_ejection_percent", "0.3"),
        ("ejection.panic_threshold", "0.2"),
        ("limits.concurrency.max", "7"),
        ("limits.concurrency.queue", "3"),
        ("limits.concurrency.max_wait", r#""none""#),
        ("limits.rate.per_second", "42.5"),
        ("limits.rate.burst", "9"),
        ("limits.rate.key_header", r#""x-tenant""#),
        ("limits.rate.max_keys", "17"),
        ("limits.rate.without_key", r#""pass""#),
        ("limits.throttle.k", "1.5"),
        ("limits.throttle.window", r#""45s""#),
    ];

    /// `limits.rate.burst = 9` as a TOML key-value line:
    /// `limits = { rate = { burst = 9 } }`, plus what the table needs to be
    /// valid (a rate needs its rate).
    fn line(path: &str, value: &str) -> String {
        let parts: Vec<&str> = path.split('.').collect();
        let mut inner = format!("{} = {value}", parts[parts.len() - 1]);
        if parts[..parts.len() - 1] == ["limits", "rate"] && !path.ends_with("per_second") {
            inner += ", per_second = 10.0";
        }
        for table in parts[..parts.len() - 1].iter().rev() {
            inner = format!("{table} = {{ {inner} }}");
        }
        inner
    }

    /// Every leaf setting of a `ClientConfig` with every optional table
    /// present: `retry.max_attempts`, `limits.rate.burst`, …
    fn leaves() -> BTreeSet<String> {
        let mut full = ClientConfig::default();
        full.limits.concurrency = Some(Default::default());
        full.limits.rate = Some(crate::limit::RateLimitSettings {
            burst: Some(1),
            key_header: Some("x".into()),
            ..Default::default()
        });
        full.limits.throttle = Some(Default::default());
        full.hedge = Some(Default::default());
        leaves_of(&full).into_keys().collect()
    }

    /// Each knob, set alone in a service table, reaches the client: the
    /// settings the built client reads back from its layers are the ones
    /// parsed. A knob that is parsed but not applied (the proxy's
    /// `balancer.default_rtt` once was) fails here.
    #[tokio::test]
    async fn every_knob_in_the_file_reaches_the_client() {
        let knobs: BTreeSet<String> = KNOBS.iter().map(|(p, _)| (*p).to_owned()).collect();
        assert_eq!(
            knobs,
            leaves(),
            "KNOBS must list every client setting, once"
        );
        let pool = new_pool(
            &(
                config::Protocol::Http1,
                crate::http::HttpSettings::default(),
            ),
            1,
        )
        .unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        for (path, value) in KNOBS {
            let text = format!(
                "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n{}\n\
                 [[routes]]\nservice = \"app\"\n",
                line(path, value)
            );
            let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            let svc = &config.services[0];
            let defaults = leaves_of(&ClientConfig::default());
            let parsed = leaves_of(&svc.client);
            assert_ne!(
                parsed.get(*path),
                defaults.get(*path),
                "{path} = {value} is the default: pick another value"
            );
            let (_handle, discover) = crate::discover::dynamic();
            let client = build_client(svc, discover, &pool, &metrics).unwrap();
            assert_eq!(
                client.settings(),
                svc.client,
                "{path} = {value} was parsed but did not reach its layer"
            );
        }
    }

    /// Services share a pool when their protocol and `http` settings are
    /// equal, and only then; a reload keeps the pools whose key it still
    /// has and drops the others.
    #[tokio::test]
    async fn services_share_pools_by_protocol_and_http_settings() {
        let text = |timeout: &str| {
            let svc = |name: &str, extra: &str| {
                format!("[[services]]\nname = \"{name}\"\nendpoints = [\"127.0.0.1:1\"]\n{extra}\n")
            };
            svc("a", "")
                + &svc(
                    "b",
                    &format!("http = {{ connect_timeout = \"{timeout}\" }}"),
                )
                + &svc("c", "protocol = \"h2c\"")
                + &svc("d", "http = { idle_timeout = \"90s\" }")
                + "[[routes]]\nservice = \"a\"\n"
        };
        let metrics = Metrics::register(&mut Registry::default());
        let config = Config::from_toml(&text("100ms")).unwrap();
        assert_eq!(
            config.services[1].http.connect_timeout,
            std::time::Duration::from_millis(100)
        );
        let old = build_routing(config, None, &metrics).await.unwrap();
        let http1 = (
            config::Protocol::Http1,
            crate::http::HttpSettings::default(),
        );
        let mut keys: Vec<_> = old.pools.keys().cloned().collect();
        keys.sort_by_key(|(p, s)| (*p == config::Protocol::H2c, s.connect_timeout));
        assert_eq!(
            keys,
            [
                (config::Protocol::Http1, old.config.services[1].http.clone()),
                http1.clone(),
                (config::Protocol::H2c, crate::http::HttpSettings::default()),
            ],
            "a and d (the default written out) share one pool"
        );

        let config = Config::from_toml(&text("200ms")).unwrap();
        let new = build_routing(config, Some(&old), &metrics).await.unwrap();
        assert_eq!(new.pools.len(), 3);
        assert!(Arc::ptr_eq(&new.pools[&http1], &old.pools[&http1]));
        let b = |r: &Routing| (config::Protocol::Http1, r.config.services[1].http.clone());
        assert!(!old.pools.contains_key(&b(&new)) && !new.pools.contains_key(&b(&old)));
    }

    fn leaves_of(config: &ClientConfig) -> std::collections::BTreeMap<String, serde_json::Value> {
        fn walk(
            prefix: &str,
            v: &serde_json::Value,
            out: &mut std::collections::BTreeMap<String, serde_json::Value>,
        ) {
            match v.as_object() {
                Some(map) => {
                    for (k, v) in map {
                        walk(&format!("{prefix}{k}."), v, out);
                    }
                }
                None => {
                    out.insert(prefix.trim_end_matches('.').to_owned(), v.clone());
                }
            }
        }
        let mut out = std::collections::BTreeMap::new();
        walk("", &serde_json::to_value(config).unwrap(), &mut out);
        out
    }
}
