//! Upstreams: each service's endpoint source, started, and its client,
//! built from the service's settings; the routing table they make.

use std::collections::HashMap;
use std::sync::Arc;

use crate::Client;
use crate::breaker::BreakerLayer;
use crate::deadline::DeadlineLayer;
use crate::discover::{self, Dynamic};
use crate::hedge::HedgeLayer;
use crate::metrics::Metrics;
use crate::proxy::config::{self, Config, Discovery};
use crate::proxy::routes::CompiledRoute;
use crate::retry::RetryBudget;

use super::server::*;

/// Builds the clients and routes for `config`, reusing clients of services
/// whose settings (discovery and limits included) did not change, so their
/// load estimates, limits and discovery tasks survive. The clients of
/// services changed or removed are dropped with the old routing; their
/// discovery tasks stop with them.
pub(crate) async fn build_routing(
    config: Arc<Config>,
    old: Option<&Routing>,
    http: &Upstreams,
    metrics: &Metrics,
) -> Result<Routing, StartError> {
    let mut services = HashMap::new();
    for svc in &config.services {
        let reused = old.and_then(|old| {
            let before = old.config.services.iter().find(|s| s.name == svc.name)?;
            (before == svc).then(|| old.services.get(&svc.name).cloned())?
        });
        let upstream = match reused {
            Some(upstream) => upstream,
            None => build_upstream(svc, &config, http, metrics).await?,
        };
        services.insert(svc.name.clone(), upstream);
    }
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| CompiledRoute::new(i, r))
        .collect();
    Ok(Routing {
        config,
        services,
        routes,
    })
}

/// One service's endpoint source, started, and its client.
pub(crate) async fn build_upstream(
    svc: &config::Service,
    config: &Config,
    http: &Upstreams,
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
        client: build_client(svc, discover, http, metrics)?,
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
    http: &Upstreams,
    metrics: &Metrics,
) -> Result<ServiceClient, StartError> {
    let pool = match svc.protocol {
        config::Protocol::H2c => &http.h2c,
        _ => &http.http1,
    };
    let bad = |e: &dyn std::fmt::Display| StartError::Build(format!("service {:?}: {e}", svc.name));
    let b = &svc.breaker;
    let breaker = BreakerLayer::new(svc.name.as_str())
        .window(b.window)
        .volume_threshold(if b.enabled {
            b.volume_threshold
        } else {
            u32::MAX
        })
        .error_threshold(b.error_threshold)
        .sleep_window(b.sleep_window)
        .half_open_probes(b.half_open_probes);
    let d = &svc.deadline;
    let deadline = DeadlineLayer::new(svc.name.as_str())
        .default_timeout(d.timeout)
        .max_timeout(d.max_timeout)
        .reserve(d.reserve)
        .propagate(d.propagate);
    let name = svc.name.as_str();
    // Every client setting reaches its layer through the one ClientConfig:
    // nothing is copied field by field.
    let mut builder = Client::builder(name)
        .discover(discover)
        .http(pool.clone())
        .config(&svc.client)
        .breaker(breaker)
        .deadline(deadline)
        .metrics(metrics.clone());
    if let Some(h) = &svc.hedge {
        builder = builder.hedge(
            HedgeLayer::new(name)
                .delay(h.delay)
                .min_samples(h.min_samples)
                .fallback_delay(h.fallback_delay)
                .window(h.window)
                .budget(RetryBudget::new(
                    crate::hedge::DEFAULT_BUDGET_TTL,
                    0,
                    h.budget_ratio,
                )),
        );
    }
    builder.build().map_err(|e| bad(&e))
}
