//! The refresh loop, written against `Resolve` so that it runs on paused
//! time with a scripted resolver in the unit tests.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::super::{DynamicHandle, Endpoint};
use crate::backoff::Backoff;

use super::*;

// ---------------------------------------------------------------------------
// The refresh loop, written against `Resolve` so that it runs on paused time
// with a scripted resolver in the unit tests.

/// The outcome of one lookup round.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// Endpoints, the smallest TTL (seconds) of the records behind them,
    /// and the errors of address families that failed while another
    /// answered (`AAAA h.svc.test.: … Query Refused`).
    Found {
        endpoints: Vec<Endpoint>,
        ttl: Option<u32>,
        family_errors: Vec<String>,
    },
    /// NXDOMAIN, or no usable records.
    Missing(String),
    /// The lookup failed.
    Failed(String),
}

pub(super) trait Resolve: Send + 'static {
    fn resolve(&mut self) -> impl Future<Output = Outcome> + Send;
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    pub(super) min: Duration,
    pub(super) max: Duration,
    pub(super) on_nxdomain: OnNxdomain,
    /// The most endpoints an answer gives the balancer ([`Dns::max_endpoints`]).
    pub(super) max_endpoints: usize,
}

impl Schedule {
    /// When to re-resolve after an answer with this TTL.
    pub(super) fn refresh(&self, ttl: Option<u32>) -> Duration {
        ttl.map_or(self.max, |ttl| {
            Duration::from_secs(u64::from(ttl)).clamp(self.min, self.max)
        })
    }

    /// How long to wait before retry number `retry` (1 for the first).
    pub(super) fn retry(&self, retry: u32) -> Duration {
        Backoff::new(self.min, self.max)
            .delay(retry)
            .clamp(self.min, self.max)
    }
}

pub(super) async fn run<R: Resolve>(
    mut lookup: R,
    handle: DynamicHandle,
    schedule: Schedule,
    status: DnsStatus,
) {
    let name = status.name().to_owned();
    let mut failures: u32 = 0;
    loop {
        let outcome = tokio::select! {
            _ = handle.closed() => break,
            outcome = lookup.resolve() => outcome,
        };
        let delay = match outcome {
            Outcome::Found {
                mut endpoints,
                ttl,
                family_errors,
            } => {
                endpoints.sort_by(|a, b| a.address().cmp(b.address()));
                let limit = schedule.max_endpoints;
                if endpoints.len() > limit {
                    tracing::warn!(
                        dns.name = %name,
                        endpoints = endpoints.len(),
                        limit,
                        "dns answer has more than {limit} endpoints, the limit (max_endpoints); keeping the first {limit} by address",
                    );
                    endpoints.truncate(limit);
                }
                let delay = schedule.refresh(ttl);
                let changed = status.endpoints() != endpoints;
                if failures > 0 {
                    tracing::info!(dns.name = %name, endpoints = endpoints.len(), after_failures = failures, "dns lookup recovered");
                } else if changed {
                    tracing::info!(dns.name = %name, endpoints = endpoints.len(), "dns endpoints changed");
                }
                tracing::debug!(dns.name = %name, endpoints = endpoints.len(), ?ttl, refresh_in = ?delay, "dns lookup succeeded");
                if changed {
                    handle.replace(endpoints.iter().cloned());
                }
                failures = 0;
                let newly = status.update(|s| {
                    let newly = s.family_errors != family_errors;
                    s.endpoints = endpoints;
                    s.last_success = Some(Instant::now());
                    s.last_error = None;
                    s.family_errors = family_errors.clone();
                    s.failures = 0;
                    s.lookups += 1;
                    newly
                });
                if newly && !family_errors.is_empty() {
                    // Logged when it starts or changes, not every round.
                    tracing::warn!(
                        dns.name = %name,
                        errors = %family_errors.join("; "),
                        "an address family failed; using the others' answers",
                    );
                }
                delay
            }
            Outcome::Missing(reason) => {
                failures = failures.saturating_add(1);
                let delay = schedule.retry(failures);
                let clear = schedule.on_nxdomain == OnNxdomain::Clear;
                let had = status.endpoints().len();
                tracing::warn!(
                    dns.name = %name,
                    error = %reason,
                    policy = if clear { "clear" } else { "keep" },
                    endpoints = had,
                    retry_in = ?delay,
                    "dns name has no usable records",
                );
                if clear && had > 0 {
                    handle.replace([]);
                }
                status.update(|s| {
                    if clear {
                        s.endpoints.clear();
                    }
                    s.last_error = Some(reason);
                    s.failures = failures;
                    s.lookups += 1;
                });
                delay
            }
            Outcome::Failed(error) => {
                failures = failures.saturating_add(1);
                let delay = schedule.retry(failures);
                tracing::warn!(
                    dns.name = %name,
                    %error,
                    endpoints = status.endpoints().len(),
                    retry_in = ?delay,
                    "dns lookup failed; keeping the last good set",
                );
                status.update(|s| {
                    s.last_error = Some(error);
                    s.failures = failures;
                    s.lookups += 1;
                });
                delay
            }
        };
        tokio::select! {
            _ = handle.closed() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::debug!(dns.name = %name, "dns discovery stopped: its balancer is gone");
}
