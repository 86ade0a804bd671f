//! The admin server: `/metrics`, `/ready`, `/live`, `/config` and
//! `/snapshot`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::config::{self, Config, Discovery, EndpointSpec};

use super::listen::{Side, serve};
use super::server::*;

/// The admin server: `/metrics`, `/ready`, `/live`, `/config`, `/snapshot`,
/// until `stop` says so. Its connections are served as the listeners' are
/// (the same request-head limits and timeouts), and counted apart.
pub(crate) async fn admin_server(
    listener: TcpListener,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
) {
    let handler = {
        let state = state.clone();
        move |req: Request<Incoming>, _| {
            let state = state.clone();
            async move { admin(&state, &req) }
        }
    };
    serve(listener, state, Side::Admin, stop, handler).await;
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
        "/config" => match serde_json::to_string_pretty(&effective_config(&routing)) {
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
                    // The client's own Snapshot, as serde writes it: the
                    // same data the metrics read, rendered once.
                    let mut json = serde_json::to_value(upstream.client.snapshot()).ok()?;
                    json["discovery"] = discovery_json(svc, upstream, &routing.config);
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
                "family_errors": status.family_errors(),
            }),
        );
    }
    json.into()
}

/// The running config: the file's, with each service's client settings
/// read back from its client's layers (the same structs the file is read
/// into), so `/config` shows what runs, not only what was asked for; and
/// [redacted](redact).
fn effective_config(routing: &Routing) -> Config {
    let mut config = (*routing.config).clone();
    config.routes = routing.routes.to_routes();
    for svc in &mut config.services {
        if let Some(upstream) = routing.services.get(&svc.name) {
            svc.client = upstream.client.settings();
        }
    }
    redact(&mut config);
    config
}

/// What `/config` shows in place of a value that may be a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// Replaces the values that may be secrets with [`REDACTED`], keeping
/// their keys: the values a route's `match.headers` asks for (an
/// `authorization` to match is a credential) and endpoint labels.
fn redact(config: &mut Config) {
    for route in &mut config.routes {
        for value in route.matches.headers.values_mut() {
            *value = REDACTED.into();
        }
    }
    for svc in &mut config.services {
        for endpoint in &mut svc.endpoints {
            if let EndpointSpec::Detailed { labels, .. } = endpoint {
                for value in labels.values_mut() {
                    *value = REDACTED.into();
                }
            }
        }
    }
}
