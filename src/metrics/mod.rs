//! Metrics (prometheus-client) and tracing for every layer.
//!
//! [`Metrics::register`] adds palisade's metrics to your
//! [`Registry`] under the prefix `palisade`; give the handle to every client
//! you build ([`Builder::metrics`](crate::stack::Builder::metrics)) and each
//! registers itself with a `client` label.
//!
//! Two kinds of series, with two costs:
//!
//! - **Per request** (counted as requests happen, with handles resolved once
//!   per client when it is built — never a label lookup per request). A
//!   response is counted when its body ends, with the end-of-stream verdict
//!   ([`Classify::classify_end`](crate::classify::Classify::classify_end)):
//!   a gRPC failure in the trailers, or a body that breaks after a good
//!   head, is a `failure`:
//!
//!   | metric | type | labels |
//!   |---|---|---|
//!   | `palisade_requests_total` | counter | client |
//!   | `palisade_responses_total` | counter | client, class (`success`, `failure`, `overloaded`, `error`), status (`1xx`…`5xx`, `none`) |
//!   | `palisade_grpc_responses_total` | counter | client, code (`OK`, `UNAVAILABLE`, … : the 17 gRPC codes) |
//!   | `palisade_request_duration_seconds` (to the response head) | histogram, 1 ms – 10 s | client |
//!   | `palisade_requests_in_flight` (until the response body ends) | gauge | client |
//!   | `palisade_errors_total` | counter | client, kind (`deadline_exceeded`, `circuit_open`, `no_endpoints`, `overloaded`, `inner`, `caller`: the caller's own body stream failed) |
//!   | `palisade_retry_attempts_total` | counter (first attempts included) | client |
//!   | `palisade_retry_refusals_total` | counter | client, reason (`budget`, `deadline`, `attempts`, `method`, `body`) |
//!
//! - **Live state**, read from the clients when the registry is encoded (a
//!   [`Collector`]), so they cost nothing per request and an endpoint's
//!   series disappear when it leaves the set:
//!
//!   | metric | type | labels |
//!   |---|---|---|
//!   | `palisade_endpoint_requests_total`, `_failures_total`, `_timeouts_total` (of the failures, attempts cut off waiting: per-try timeout or deadline), `_ejections_total` | counter | client, endpoint |
//!   | `palisade_endpoint_rtt_seconds` (cost estimate), `_latency_seconds`, `_in_flight` | gauge | client, endpoint |
//!   | `palisade_endpoint_state` (1 for the current one) | gauge | client, endpoint, state (`active`, `ejected`, `probing`) |
//!   | `palisade_retry_budget_balance` | gauge | client |
//!   | `palisade_retry_amplification` (attempts per request) | gauge | client |
//!   | `palisade_breaker_state` (0 closed, 1 half-open, 2 open), `palisade_breaker_transitions_total` | gauge, counter | client |
//!   | `palisade_balancer_panic_mode`, `palisade_balancer_panics_total` | gauge, counter | client |
//!   | `palisade_endpoint_series_dropped` | gauge | client |
//!   | `palisade_concurrency_in_flight`, `_queued` (clients with a concurrency limit) | gauge | client |
//!   | `palisade_throttle_probability` (clients with adaptive throttling) | gauge | client |
//!   | `palisade_limit_shed_total` | counter | client, limit (`concurrency`, `queue_timeout`, `rate`, `throttle`) |
//!   | `palisade_hedges_total`, `palisade_hedges_won_total`, `palisade_hedge_delay_seconds`, `palisade_hedge_budget_balance` (clients that hedge) | counter, gauge | client |
//!
//! Label sets are bounded: `client` is one per client you build, `endpoint`
//! at most [`max_endpoint_series`](Metrics::register_with_limit) per client
//! (default 256); endpoints beyond that are left out of the scrape and
//! counted in `palisade_endpoint_series_dropped`.
//!
//! Tracing: the client opens a `palisade.request` span per request (client,
//! method, path) and the retry layer a `palisade.attempt` span per attempt
//! (attempt number; the balancer records the endpoint). Decisions are events:
//! retries scheduled or refused (with the reason), endpoints ejected and
//! restored, breaker transitions, panic mode. W3C `traceparent` and
//! `tracestate` headers pass through to the upstream request untouched.
//!
//! ```
//! use palisade::{Client, discover::Endpoint, retry::ReplayBody};
//! use prometheus_client::registry::Registry;
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut registry = Registry::default();
//! let metrics = palisade::metrics::Metrics::register(&mut registry);
//!
//! // Any inner client; here one that answers 200 at once.
//! let ok = |_: &Endpoint| Ok::<_, std::convert::Infallible>(service_fn(
//!     |_: http::Request<ReplayBody<String>>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) },
//! ));
//! let client = Client::builder("users")
//!     .endpoints([Endpoint::parse("127.0.0.1:8080")?])
//!     .new_endpoint(ok)
//!     .metrics(metrics.clone())
//!     .build()?;
//! client.clone().oneshot(http::Request::new(String::from("hi"))).await?;
//!
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry)?;
//! assert!(text.contains(r#"palisade_requests_total{client="users"} 1"#));
//! assert!(text.contains(r#"palisade_endpoint_requests_total{client="users",endpoint="127.0.0.1:8080"} 1"#));
//! # Ok(())
//! # }
//! ```

mod layer;

pub use layer::{ResponseFuture, Telemetry, TelemetryLayer};

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::balance::EndpointState;
use crate::breaker::BreakerState;
use crate::classify::{GrpcCode, Outcome};
use crate::snapshot::Snapshot;

type Labels = Vec<(&'static str, String)>;

/// Latency buckets: 1 ms to 10 s, about three per decade.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Endpoint series per client when not configured.
const DEFAULT_MAX_ENDPOINT_SERIES: usize = 256;

/// palisade's metrics in a prometheus-client [`Registry`]; cheap to clone.
/// See the [module docs](self) for the series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    requests: Family<Labels, Counter>,
    responses: Family<Labels, Counter>,
    grpc_responses: Family<Labels, Counter>,
    duration: Family<Labels, LatencyHistogram>,
    in_flight: Family<Labels, Gauge>,
    errors: Family<Labels, Counter>,
    observed: Arc<Observed>,
}

/// What the collector reads at scrape time: one probe per client.
struct Observed {
    max_endpoint_series: usize,
    clients: Mutex<Vec<Box<dyn Observe>>>,
}

impl fmt::Debug for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observed").finish_non_exhaustive()
    }
}

/// A client, as the collector sees it: `None` once the client is gone.
pub(crate) trait Observe: Send + Sync + 'static {
    /// The client's snapshot and its request count; `None` once it is gone.
    fn snapshot(&self) -> Option<(Snapshot, u64)>;
}

impl Metrics {
    /// Registers palisade's metrics in `registry` under the prefix
    /// `palisade`, keeping at most 256 endpoint series per client.
    pub fn register(registry: &mut Registry) -> Metrics {
        Metrics::register_with_limit(registry, DEFAULT_MAX_ENDPOINT_SERIES)
    }

    /// Like [`register`](Metrics::register), keeping at most
    /// `max_endpoint_series` endpoints' series per client.
    pub fn register_with_limit(registry: &mut Registry, max_endpoint_series: usize) -> Metrics {
        let inner = Arc::new(Inner {
            requests: Family::default(),
            responses: Family::default(),
            grpc_responses: Family::default(),
            duration: Family::default(),
            in_flight: Family::default(),
            errors: Family::default(),
            observed: Arc::new(Observed {
                max_endpoint_series,
                clients: Mutex::new(Vec::new()),
            }),
        });
        let r = registry.sub_registry_with_prefix("palisade");
        r.register(
            "requests",
            "Requests received by the client",
            inner.requests.clone(),
        );
        r.register(
            "responses",
            "Requests answered, by class and status class",
            inner.responses.clone(),
        );
        r.register(
            "grpc_responses",
            "gRPC responses, by the grpc-status they ended with",
            inner.grpc_responses.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head or error",
            inner.duration.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests not yet answered",
            inner.in_flight.clone(),
        );
        r.register(
            "errors",
            "Requests that failed with an error, by kind",
            inner.errors.clone(),
        );
        r.register_collector(Box::new(Collector_(inner.observed.clone())));
        Metrics { inner }
    }

    /// The handles one client updates, resolved once.
    pub(crate) fn client(&self, client: &str) -> ClientMetrics {
        let labels = |extra: &[(&'static str, &str)]| -> Labels {
            let mut l: Labels = vec![("client", client.to_owned())];
            l.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            l
        };
        let i = &self.inner;
        let responses = std::array::from_fn(|class| {
            std::array::from_fn(|status| {
                i.responses
                    .get_or_create(&labels(&[
                        ("class", CLASSES[class]),
                        ("status", STATUSES[status]),
                    ]))
                    .clone()
            })
        });
        let errors = std::array::from_fn(|k| {
            i.errors
                .get_or_create(&labels(&[("kind", ERRORS[k])]))
                .clone()
        });
        ClientMetrics {
            requests: i.requests.get_or_create(&labels(&[])).clone(),
            in_flight: i.in_flight.get_or_create(&labels(&[])).clone(),
            duration: i.duration.get_or_create(&labels(&[])).clone(),
            responses: Arc::new(responses),
            grpc: Arc::new(GrpcCounters {
                family: i.grpc_responses.clone(),
                client: client.to_owned(),
                codes: Default::default(),
            }),
            errors: Arc::new(errors),
        }
    }

    /// Starts reading a client's live state at scrape time.
    pub(crate) fn observe(&self, client: Box<dyn Observe>) {
        self.inner
            .observed
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(client);
    }
}

const CLASSES: [&str; 4] = ["success", "failure", "overloaded", "error"];
const STATUSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
const ERRORS: [&str; 6] = [
    "deadline_exceeded",
    "circuit_open",
    "no_endpoints",
    "inner",
    "overloaded",
    "caller",
];

/// One client's per-request handles (each an `Arc` around atomics).
#[derive(Clone, Debug)]
pub(crate) struct ClientMetrics {
    pub(crate) requests: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) duration: LatencyHistogram,
    /// `[class][status class]`.
    responses: Arc<[[Counter; 6]; 4]>,
    grpc: Arc<GrpcCounters>,
    errors: Arc<[Counter; ERRORS.len()]>,
}

/// One client's `palisade_grpc_responses_total` series, one per code,
/// each resolved the first time its code is seen (a client that never
/// carries gRPC has none).
#[derive(Debug)]
struct GrpcCounters {
    family: Family<Labels, Counter>,
    client: String,
    codes: [OnceLock<Counter>; 17],
}

impl ClientMetrics {
    /// Counts a response by class and status code.
    pub(crate) fn response(&self, outcome: Outcome, status: u16) {
        let class = match outcome {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Overloaded => 2,
            Outcome::Caller | Outcome::Local => 3,
        };
        let status = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.responses[class][status].inc();
    }

    /// Counts a gRPC response by the status it ended with.
    pub(crate) fn grpc_response(&self, code: GrpcCode) {
        let g = &*self.grpc;
        g.codes[usize::from(code.as_u8())]
            .get_or_init(|| {
                let labels = vec![
                    ("client", g.client.clone()),
                    ("code", code.as_str().to_owned()),
                ];
                g.family.get_or_create(&labels).clone()
            })
            .inc();
    }

    /// Counts an error by kind.
    pub(crate) fn error(&self, error: &crate::Error) {
        let kind = match error {
            crate::Error::DeadlineExceeded { .. } => 0,
            crate::Error::CircuitOpen { .. } => 1,
            crate::Error::NoEndpoints { .. } => 2,
            crate::Error::Overloaded { .. } => 4,
            crate::Error::Caller { .. } => 5,
            _ => 3,
        };
        self.errors[kind].inc();
        self.responses[3][5].inc();
    }
}

/// A latency histogram over [`BUCKETS`] that observes without a lock
/// (prometheus-client's `Histogram` takes a mutex per observation, which
/// every request of a client would contend on).
#[derive(Debug, Clone, Default)]
pub(crate) struct LatencyHistogram(Arc<HistogramCounts>);

#[derive(Debug, Default)]
struct HistogramCounts {
    /// Per bucket, not cumulative; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let c = &self.0;
        c.buckets[i].fetch_add(1, Ordering::Relaxed);
        c.count.fetch_add(1, Ordering::Relaxed);
        c.sum_nanos.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }
}

impl prometheus_client::metrics::TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), fmt::Error> {
        let c = &self.0;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(c.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let sum = c.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            sum,
            c.count.load(Ordering::Relaxed),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The scrape-time collector (named with a trailing underscore to keep the
/// trait's name free).
#[derive(Debug)]
struct Collector_(Arc<Observed>);

fn seconds(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

impl Collector for Collector_ {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let max = self.0.max_endpoint_series;
        let snapshots: Vec<(Snapshot, u64)> = {
            let mut clients = self.0.clients.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::with_capacity(clients.len());
            // Clients that are gone are forgotten: their series disappear.
            clients.retain(|c| match c.snapshot() {
                Some(s) => {
                    out.push(s);
                    true
                }
                None => false,
            });
            out
        };

        // Per-client gauges and counters.
        type ClientValue = fn(&(Snapshot, u64)) -> f64;
        let client_series: [(&str, &str, MetricType, ClientValue); 7] = [
            (
                "retry_attempts",
                "Attempts sent to endpoints, first attempts included",
                MetricType::Counter,
                |s| s.0.retries.attempts as f64,
            ),
            (
                "retry_budget_balance",
                "Retries the budget would grant now",
                MetricType::Gauge,
                |s| s.0.retry_budget,
            ),
            (
                "retry_amplification",
                "Attempts per request since the client was built",
                MetricType::Gauge,
                |s| {
                    if s.1 == 0 {
                        0.0
                    } else {
                        s.0.retries.attempts as f64 / s.1 as f64
                    }
                },
            ),
            (
                "breaker_state",
                "Service breaker state: 0 closed, 1 half-open, 2 open",
                MetricType::Gauge,
                |s| match s.0.breaker {
                    BreakerState::Closed => 0.0,
                    BreakerState::HalfOpen => 1.0,
                    _ => 2.0,
                },
            ),
            (
                "breaker_transitions",
                "Service breaker state changes",
                MetricType::Counter,
                |s| s.0.breaker_transitions as f64,
            ),
            (
                "balancer_panic_mode",
                "1 while too few endpoints are available and ejections are ignored",
                MetricType::Gauge,
                |s| f64::from(u8::from(s.0.panic_mode)),
            ),
            (
                "balancer_panics",
                "Times the balancer entered panic mode",
                MetricType::Counter,
                |s| s.0.panics as f64,
            ),
        ];
        for (name, help, kind, value) in client_series {
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for s in &snapshots {
                let labels = [("client", s.0.service.as_str())];
                encode_value(&mut metric, &labels, kind, value(s))?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "retry_refusals",
            "Retryable failures returned without a retry, by reason",
            None,
            MetricType::Counter,
        )?;
        for s in &snapshots {
            for (reason, n) in s.0.retries.refusals() {
                let labels = [("client", s.0.service.as_str()), ("reason", reason)];
                encode_value(&mut metric, &labels, MetricType::Counter, n as f64)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "endpoint_series_dropped",
            "Endpoints left out of this scrape by the series limit",
            None,
            MetricType::Gauge,
        )?;
        for s in &snapshots {
            let dropped = s.0.endpoints.len().saturating_sub(max) as f64;
            encode_value(
                &mut metric,
                &[("client", s.0.service.as_str())],
                MetricType::Gauge,
                dropped,
            )?;
        }

        // The optional layers: series only for the clients that have them.
        type OptionalValue = fn(&Snapshot) -> Option<f64>;
        let optional_series: [(&str, &str, MetricType, OptionalValue); 7] = [
            (
                "concurrency_in_flight",
                "Requests in flight under the concurrency limit",
                MetricType::Gauge,
                |s| s.concurrency.as_ref().map(|c| c.in_flight as f64),
            ),
            (
                "concurrency_queued",
                "Requests waiting for a concurrency slot",
                MetricType::Gauge,
                |s| s.concurrency.as_ref().map(|c| c.queued as f64),
            ),
            (
                "throttle_probability",
                "Probability that adaptive throttling rejects a request now",
                MetricType::Gauge,
                |s| s.throttle.as_ref().map(|t| t.probability),
            ),
            ("hedges", "Backup requests sent", MetricType::Counter, |s| {
                s.hedges.as_ref().map(|h| h.sent as f64)
            }),
            (
                "hedges_won",
                "Backup requests whose answer was returned",
                MetricType::Counter,
                |s| s.hedges.as_ref().map(|h| h.won as f64),
            ),
            (
                "hedge_delay_seconds",
                "The delay before a backup request, now",
                MetricType::Gauge,
                |s| s.hedges.as_ref().map(|h| seconds(h.delay)),
            ),
            (
                "hedge_budget_balance",
                "Backups the hedge budget would grant now",
                MetricType::Gauge,
                |s| s.hedges.as_ref().map(|h| h.budget_balance),
            ),
        ];
        for (name, help, kind, value) in optional_series {
            if !snapshots.iter().any(|s| value(&s.0).is_some()) {
                continue;
            }
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for s in &snapshots {
                if let Some(v) = value(&s.0) {
                    encode_value(&mut metric, &[("client", s.0.service.as_str())], kind, v)?;
                }
            }
        }
        type ShedValue = fn(&Snapshot) -> Option<u64>;
        let sheds: [(&str, ShedValue); 4] = [
            ("concurrency", |s| {
                s.concurrency.as_ref().map(|c| c.shed_full)
            }),
            ("queue_timeout", |s| {
                s.concurrency.as_ref().map(|c| c.shed_timeout)
            }),
            ("rate", |s| s.rate_limit.as_ref().map(|r| r.rejected)),
            ("throttle", |s| s.throttle.as_ref().map(|t| t.rejected)),
        ];
        if snapshots
            .iter()
            .any(|s| sheds.iter().any(|(_, v)| v(&s.0).is_some()))
        {
            let mut metric = encoder.encode_descriptor(
                "limit_shed",
                "Requests a limit shed, by limit",
                None,
                MetricType::Counter,
            )?;
            for s in &snapshots {
                for (limit, value) in &sheds {
                    if let Some(v) = value(&s.0) {
                        let labels = [("client", s.0.service.as_str()), ("limit", *limit)];
                        encode_value(&mut metric, &labels, MetricType::Counter, v as f64)?;
                    }
                }
            }
        }

        // Per-endpoint series, at most `max` per client.
        type EndpointValue = fn(&crate::balance::EndpointStats) -> f64;
        let endpoint_series: [(&str, &str, MetricType, EndpointValue); 7] = [
            (
                "endpoint_requests",
                "Attempts sent to the endpoint",
                MetricType::Counter,
                |e| e.requests as f64,
            ),
            (
                "endpoint_failures",
                "Attempts the endpoint failed",
                MetricType::Counter,
                |e| e.failures as f64,
            ),
            (
                "endpoint_timeouts",
                "Of the failures, attempts cut off while they waited on the endpoint (per-try timeout or deadline)",
                MetricType::Counter,
                |e| e.timeouts as f64,
            ),
            (
                "endpoint_ejections",
                "Times the endpoint was ejected",
                MetricType::Counter,
                |e| e.ejections as f64,
            ),
            (
                "endpoint_rtt_seconds",
                "The balancer's cost estimate: latency plus failure penalty",
                MetricType::Gauge,
                |e| seconds(e.rtt_estimate),
            ),
            (
                "endpoint_latency_seconds",
                "Peak-EWMA latency of the endpoint",
                MetricType::Gauge,
                |e| seconds(e.latency_estimate),
            ),
            (
                "endpoint_in_flight",
                "Attempts outstanding at the endpoint",
                MetricType::Gauge,
                |e| e.in_flight as f64,
            ),
        ];
        for (name, help, kind, value) in endpoint_series {
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for s in &snapshots {
                for e in s.0.endpoints.iter().take(max) {
                    let endpoint = e.address.to_string();
                    let labels = [
                        ("client", s.0.service.as_str()),
                        ("endpoint", endpoint.as_str()),
                    ];
                    encode_value(&mut metric, &labels, kind, value(e))?;
                }
            }
        }
        let mut metric = encoder.encode_descriptor(
            "endpoint_state",
            "1 for the endpoint's current standing with failure accrual",
            None,
            MetricType::Gauge,
        )?;
        for s in &snapshots {
            for e in s.0.endpoints.iter().take(max) {
                let endpoint = e.address.to_string();
                let current = match e.state {
                    EndpointState::Active => "active",
                    EndpointState::Probing => "probing",
                    _ => "ejected",
                };
                for state in ["active", "ejected", "probing"] {
                    let labels = [
                        ("client", s.0.service.as_str()),
                        ("endpoint", endpoint.as_str()),
                        ("state", state),
                    ];
                    encode_value(
                        &mut metric,
                        &labels,
                        MetricType::Gauge,
                        f64::from(u8::from(state == current)),
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(
    metric: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &[(&str, &str)],
    kind: MetricType,
    value: f64,
) -> Result<(), fmt::Error> {
    let family = metric.encode_family(&labels)?;
    match kind {
        // Every counter here counts events: encode it as an integer.
        MetricType::Counter => ConstCounter::new(value as u64).encode(family),
        _ => ConstGauge::new(value).encode(family),
    }
}

#[cfg(test)]
mod tests;
