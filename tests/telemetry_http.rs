//! Tracing end to end: spans per request and per attempt, the attempt's
//! endpoint recorded, W3C trace headers passed through to the backend.
//! Real hyper servers on 127.0.0.1.

#![cfg(feature = "demo")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade::Client;
use palisade::Hyper;
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::http::hyper_client;
use tower::ServiceExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Records every span's name and its `endpoint` / `attempt` fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(String, String)>>>);

struct Fields<'a>(&'a mut Vec<(String, String)>, &'static str);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((format!("{}.{}", self.1, field.name()), format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        let name = attrs.metadata().name();
        spans.push(("span".into(), name.into()));
        attrs.record(&mut Fields(&mut spans, name));
    }

    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap(), "record"));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn spans_and_trace_headers() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let client: Hyper<Full<Bytes>> = Client::builder("users")
        .endpoints([Endpoint::from(backend.addr())])
        .http(hyper_client())
        .build()
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_until(|c| c.endpoint_count() == 1),
    )
    .await
    .unwrap();

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = http::Request::get("http://users/v1/me")
        .header("traceparent", traceparent)
        .header("tracestate", "congo=t61rcWkgMzE")
        .body(Full::<Bytes>::default())
        .unwrap();
    let rsp = client.oneshot(req).await.unwrap();
    rsp.into_body().collect().await.unwrap();

    let seen = backend.last_request().unwrap();
    assert_eq!(seen.headers["traceparent"], traceparent);
    assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");

    let spans = spans.0.lock().unwrap().clone();
    let has = |k: &str, v: &str| spans.iter().any(|(a, b)| a == k && b == v);
    assert!(has("span", "palisade.request"), "{spans:?}");
    assert!(has("palisade.request.client", "users"), "{spans:?}");
    assert!(has("palisade.request.path", "\"/v1/me\""), "{spans:?}");
    assert!(has("span", "palisade.attempt"), "{spans:?}");
    assert!(has("palisade.attempt.attempt", "1"), "{spans:?}");
    assert!(
        has("record.endpoint", &backend.addr().to_string()),
        "{spans:?}"
    );
}
