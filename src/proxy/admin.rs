//! The admin server: `/metrics`, `/ready`, `/live`, `/config` and
//! `/snapshot`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::config::{self, Config, Discovery};

use super::server::*;

/// The admin server: `/metrics`, `/ready`, `/live`, `/config`, `/snapshot`.
pub(crate) async fn admin_server(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, _)) = accept(&listener, &mut stop).await {
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(admin(&state, &req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub(crate) fn admin(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut rsp = Response::new(Full::new(Bytes::from(body)));
        *rsp.status_mut() = status;
        rsp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        rsp
    };
    let routing = state.routing.load_full();
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" if state.draining.load(Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: draining; in-flight requests are finishing before exit\n".into(),
        ),
        "/ready" => {
            // Services in the order of the file, each with where its
            // endpoints should come from.
            let waiting: Vec<String> = routing
                .config
                .services
                .iter()
                .filter_map(|svc| {
                    let upstream = routing.services.get(&svc.name)?;
                    (upstream.client.endpoint_count() == 0)
                        .then(|| waiting_for(svc, upstream, &routing.config))
                })
                .collect();
            if waiting.is_empty() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: no endpoints yet for {}\n", waiting.join(", ")),
                )
            }
        }
        "/metrics" => {
            let mut body = String::new();
            let registry = state.registry.lock().unwrap_or_else(|p| p.into_inner());
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        "/config" => match serde_json::to_string_pretty(&*routing.config) {
            Ok(json) => text(StatusCode::OK, "application/json", json + "\n"),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        "/snapshot" => {
            let mut services: Vec<&config::Service> = routing.config.services.iter().collect();
            services.sort_by(|a, b| a.name.cmp(&b.name));
            let services: Vec<serde_json::Value> = services
                .into_iter()
                .filter_map(|svc| {
                    let upstream = routing.services.get(&svc.name)?;
                    let mut json = snapshot_json(&upstream.client.snapshot());
                    json["discovery"] = discovery_json(svc, upstream, &routing.config);
                    json["limits"] = limits_json(&upstream.client);
                    Some(json)
                })
                .collect();
            let json = serde_json::json!({ "services": services });
            text(StatusCode::OK, "application/json", format!("{json:#}\n"))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /ready, /live, /config, /snapshot\n".into(),
        ),
    }
}

pub(crate) fn snapshot_json(s: &crate::Snapshot) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = s
        .endpoints
        .iter()
        .map(|e| {
            let state = match e.state {
                crate::balance::EndpointState::Active => "active".to_owned(),
                crate::balance::EndpointState::Probing => "probing".to_owned(),
                _ => "ejected".to_owned(),
            };
            serde_json::json!({
                "address": e.address.to_string(),
                "weight": e.weight,
                "labels": e.labels,
                "state": state,
                "rtt_estimate_ms": e.rtt_estimate.as_secs_f64() * 1e3,
                "latency_estimate_ms": e.latency_estimate.as_secs_f64() * 1e3,
                "in_flight": e.in_flight,
                "requests": e.requests,
                "failures": e.failures,
                "ejections": e.ejections,
            })
        })
        .collect();
    let breaker = match s.breaker {
        crate::breaker::BreakerState::Closed => "closed",
        crate::breaker::BreakerState::HalfOpen => "half-open",
        _ => "open",
    };
    serde_json::json!({
        "service": s.service,
        "endpoints": endpoints,
        "retry_budget": s.retry_budget,
        "breaker": breaker,
        "breaker_transitions": s.breaker_transitions,
        "panic_mode": s.panic_mode,
    })
}

/// A service with no endpoints, for `/ready`: its name and where its
/// endpoints should come from (with a DNS source's last error).
#[cfg_attr(not(feature = "dns"), allow(unused_variables))]
pub(crate) fn waiting_for(svc: &config::Service, upstream: &Upstream, config: &Config) -> String {
    match &svc.discovery {
        None => svc.name.clone(),
        #[cfg(feature = "dns")]
        Some(Discovery::Dns(d)) => match upstream.dns.as_ref().and_then(|s| s.last_error()) {
            Some(error) => format!("{} (dns {:?}: {error})", svc.name, d.name),
            None => format!("{} (dns {:?}: no answer yet)", svc.name, d.name),
        },
        Some(Discovery::File(f)) => format!(
            "{} (file {})",
            svc.name,
            config.resolve_path(&f.path).display()
        ),
        Some(Discovery::Kubernetes(k)) => format!(
            "{} (kubernetes service {}/{})",
            svc.name, k.namespace, k.service
        ),
        #[cfg(not(feature = "dns"))]
        Some(other) => format!("{} ({})", svc.name, other.kind()),
    }
}

/// Where a service's endpoints come from, for `/snapshot`: `kind`, the
/// settings as configured (a file's path resolved), and a DNS source's live
/// state.
#[cfg_attr(not(feature = "dns"), allow(unused_variables))]
pub(crate) fn discovery_json(
    svc: &config::Service,
    upstream: &Upstream,
    config: &Config,
) -> serde_json::Value {
    let Some(discovery) = &svc.discovery else {
        return serde_json::json!({ "kind": "endpoints" });
    };
    // The settings as `/config` shows them, and `kind`.
    let mut json = match serde_json::to_value(discovery) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    json.insert("kind".into(), discovery.kind().into());
    if let Discovery::File(f) = discovery {
        let path = config.resolve_path(&f.path).display().to_string();
        json.insert("resolved_path".into(), path.into());
    }
    #[cfg(feature = "dns")]
    if let Some(status) = &upstream.dns {
        json.insert(
            "status".into(),
            serde_json::json!({
                "endpoints": status.endpoints().len(),
                "lookups": status.lookups(),
                "consecutive_failures": status.consecutive_failures(),
                "last_error": status.last_error(),
            }),
        );
    }
    json.into()
}

/// The limits' settings and live state, for `/snapshot`; `null` for a limit
/// that is off.
pub(crate) fn limits_json(client: &ServiceClient) -> serde_json::Value {
    let concurrency = client.concurrency_limit().map(|c| {
        serde_json::json!({
            "max": c.max(),
            "queue": c.queue(),
            "max_wait_ms": c.max_wait().map(|w| w.as_secs_f64() * 1e3),
            "in_flight": c.in_flight(),
            "queued": c.queued(),
            "shed_full": c.shed_full(),
            "shed_timeout": c.shed_timeout(),
        })
    });
    let rate = client.rate_limit().map(|r| {
        serde_json::json!({
            "per_second": r.rate(),
            "burst": r.burst(),
            "available": r.available(),
            "keys": r.keys(),
            "admitted": r.admitted(),
            "rejected": r.rejected(),
        })
    });
    let throttle = client.throttle().map(|t| {
        serde_json::json!({
            "k": t.k(),
            "window_ms": t.window().as_secs_f64() * 1e3,
            "probability": t.probability(),
            "requests": t.requests(),
            "accepts": t.accepts(),
            "rejected": t.rejected(),
        })
    });
    let hedge = client.hedge().map(|h| {
        let s = h.stats();
        let skipped: serde_json::Map<String, serde_json::Value> = crate::hedge::HedgeSkip::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), s.skipped(*r).into()))
            .collect();
        serde_json::json!({
            "sent": s.sent,
            "won": s.won,
            "delay_ms": s.delay.as_secs_f64() * 1e3,
            "samples": s.samples,
            "budget_balance": s.budget_balance,
            "skipped": skipped,
        })
    });
    serde_json::json!({
        "concurrency": concurrency,
        "rate": rate,
        "throttle": throttle,
        "hedge": hedge,
    })
}
