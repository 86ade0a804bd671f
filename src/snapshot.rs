//! A client's live state as plain data: what the demo's table, the metrics
//! collector and the proxy's admin server all read, so that there is one
//! source for it. Each part comes from a layer's handle (`stats()`), read
//! when the snapshot is taken; nothing here is counted twice.

use crate::balance::EndpointStats;
use crate::breaker::BreakerState;
use crate::hedge::HedgeStats;
pub use crate::limit::{ConcurrencyStats, RateLimitStats, ThrottleStats};
pub use crate::retry::RetryStats;

/// A client's live state at one moment; see [`Client::snapshot`](crate::Client::snapshot).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Snapshot {
    /// The service name.
    pub service: String,
    /// Every current endpoint: address, state, estimates, in-flight, counts.
    pub endpoints: Vec<EndpointStats>,
    /// Retries the budget would grant right now.
    pub retry_budget: f64,
    /// Attempts sent and retries refused, counted by the retry layer.
    pub retries: RetryStats,
    /// The service breaker's state.
    pub breaker: BreakerState,
    /// How many times the breaker changed state.
    pub breaker_transitions: u64,
    /// Whether the balancer is in panic mode (ejections ignored).
    pub panic_mode: bool,
    /// How many times panic mode was entered.
    pub panics: u64,
    /// The concurrency limit, if the client has one.
    pub concurrency: Option<ConcurrencyStats>,
    /// The rate limit, if the client has one.
    pub rate_limit: Option<RateLimitStats>,
    /// Adaptive throttling, if the client has it.
    pub throttle: Option<ThrottleStats>,
    /// Hedging, if the client hedges.
    pub hedges: Option<HedgeStats>,
}
