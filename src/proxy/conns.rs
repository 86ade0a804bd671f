//! Client connections: how many the proxy holds at once, the descriptor
//! limit that bounds them, and what happens when accepting fails.
//!
//! - At startup the soft `RLIMIT_NOFILE` is raised to the hard limit (Unix):
//!   a sidecar should not run out of descriptors at a distro's default of
//!   1024 while the kernel allows far more.
//! - `server.max_connections` caps the client connections open at once;
//!   by default half of what the descriptor limit leaves after a reserve
//!   of 128 (each client connection may need an upstream one too), at
//!   least 64. A connection over the cap is closed at once and counted in
//!   `palisade_proxy_connections_refused_total`; the open ones are
//!   `palisade_proxy_connections`. The admin listener's connections are
//!   counted apart (`palisade_proxy_admin_connections`), capped at
//!   `max_connections` but never more than 64, which the reserve covers.
//! - An accept error (out of descriptors, say) backs off, from 10 ms up to
//!   1 s while the errors go on, and is logged at most once a second, with
//!   the number of errors since the last line.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::listen::Side;

/// Descriptors kept back from the connection cap for everything else:
/// listeners, config and discovery files, DNS, logs.
const RESERVE: u64 = 128;
/// The least default cap, however low the descriptor limit.
const MIN_DEFAULT: usize = 64;

/// Raises the soft descriptor limit to the hard one; returns the limit in
/// force afterwards (`None` where there is no such limit to read).
pub(crate) fn raise_descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given, nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit reads the struct it is given, nothing else.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                tracing::info!(
                    from = limit.rlim_cur,
                    to = raised.rlim_cur,
                    "raised the file descriptor limit to the hard limit"
                );
                limit = raised;
            }
        }
        // `rlim_t` is u64 on Linux and macOS, not on every Unix.
        #[allow(clippy::useless_conversion)]
        Some(u64::from(limit.rlim_cur))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The default `server.max_connections` for a descriptor limit.
pub(crate) fn default_max_connections(descriptors: Option<u64>) -> usize {
    match descriptors {
        Some(n) => usize::try_from(n.saturating_sub(RESERVE) / 2)
            .unwrap_or(usize::MAX)
            .max(MIN_DEFAULT),
        // No limit to read: a generous cap all the same.
        None => 16_384,
    }
}

/// The count of open client connections and of refused ones.
#[derive(Debug)]
pub(crate) struct Connections {
    open: Arc<AtomicUsize>,
    open_gauge: Gauge,
    refused: Counter,
}

/// One admitted connection: dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Admitted {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

impl Connections {
    /// Counts one listener's connections into `registry` (the proxy's):
    /// `palisade_proxy_connections` and `…_refused_total` for the proxy's
    /// listeners, `palisade_proxy_admin_connections` and `…_refused_total`
    /// for the admin listener.
    pub(crate) fn register(registry: &mut Registry, side: Side) -> Connections {
        let open_gauge = Gauge::<i64, AtomicI64>::default();
        let refused = Counter::default();
        let (name, open_help, refused_help) = match side {
            Side::Proxy => (
                "connections",
                "Client connections open",
                "Client connections closed at once: server.max_connections were open",
            ),
            Side::Admin => (
                "admin_connections",
                "Admin connections open",
                "Admin connections closed at once: server.max_connections (at most 64) were open",
            ),
        };
        let r = registry.sub_registry_with_prefix("palisade_proxy");
        r.register(name, open_help, open_gauge.clone());
        r.register(format!("{name}_refused"), refused_help, refused.clone());
        Connections {
            open: Arc::new(AtomicUsize::new(0)),
            open_gauge,
            refused,
        }
    }

    /// A place for a new connection, or `None` (counted) when `max` are
    /// open.
    pub(crate) fn admit(&self, max: usize) -> Option<Admitted> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => {
                self.open_gauge.inc();
                Some(Admitted {
                    open: self.open.clone(),
                    gauge: self.open_gauge.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }

    /// How many connections were refused.
    #[cfg(test)]
    fn refused(&self) -> u64 {
        self.refused.get()
    }
}

/// Accept errors: a growing pause while they go on, and a log line at most
/// once a second.
#[derive(Debug)]
pub(crate) struct AcceptErrors {
    pause: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Default for AcceptErrors {
    fn default() -> Self {
        AcceptErrors {
            pause: FIRST_PAUSE,
            last_log: None,
            unlogged: 0,
        }
    }
}

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

impl AcceptErrors {
    /// An accept failed with `error`: logs it if a second has passed since
    /// the last line, and returns how long to pause before accepting again.
    pub(crate) fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            tracing::warn!(%error, errors = self.unlogged, pause = ?self.pause, "accept failed");
            self.last_log = Some(now);
            self.unlogged = 0;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        pause
    }

    /// An accept succeeded: the next error pauses briefly again.
    pub(crate) fn succeeded(&mut self) {
        self.pause = FIRST_PAUSE;
    }

    #[cfg(test)]
    fn logged_since(&self) -> u64 {
        self.unlogged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_follows_the_descriptor_limit() {
        assert_eq!(default_max_connections(Some(1024)), 448);
        assert_eq!(default_max_connections(Some(65_536)), 32_704);
        assert_eq!(default_max_connections(Some(100)), MIN_DEFAULT);
        assert_eq!(default_max_connections(None), 16_384);
    }

    #[test]
    fn the_cap_refuses_and_counts_and_a_closed_connection_frees_its_place() {
        let mut registry = Registry::default();
        let c = Connections::register(&mut registry, Side::Proxy);
        let first = c.admit(2).unwrap();
        let _second = c.admit(2).unwrap();
        assert!(c.admit(2).is_none());
        assert_eq!(c.refused(), 1);
        drop(first);
        assert!(c.admit(2).is_some());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("palisade_proxy_connections_refused_total 1"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_and_log_once_a_second() {
        let mut errors = AcceptErrors::default();
        let e = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<Duration> = (0..9).map(|_| errors.failed(&e)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[8], Duration::from_secs(1), "capped");
        // One line for the first error; the other eight wait for a second.
        assert_eq!(errors.logged_since(), 8);
        tokio::time::advance(LOG_EVERY).await;
        errors.failed(&e);
        assert_eq!(errors.logged_since(), 0, "logged, with the count");
        errors.succeeded();
        assert_eq!(errors.failed(&e), Duration::from_millis(10));
    }
}
