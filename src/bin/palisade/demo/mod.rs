//! `palisade demo`: palisade's balancer against a small, partly broken fleet.
//!
//! Five in-process HTTP backends run on 127.0.0.1: three healthy, one about
//! 20× slower, one that fails 30% of its requests with 503. A fixed number of
//! tasks send GET requests through one [`palisade::Client`] for a while,
//! printing the balancer's per-endpoint view once a second. Then the same
//! load runs through a client that picks endpoints uniformly at random, and a
//! summary compares the two.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use palisade::Client;
use palisade::balance::{BalanceSettings, Choice, EndpointStats};
use palisade::demo::{Backend, Behavior};
use palisade::discover::{Address, Endpoint};
use rand::RngExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::CliError;

mod render;

use render::*;

/// Options of `palisade demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How long to send load through palisade's balancer, in whole seconds
    /// ("10" or "10s").
    #[arg(
        short,
        long,
        value_name = "SECS",
        default_value = "10",
        value_parser = parse_seconds
    )]
    seconds: Duration,

    /// How long the uniform-random comparison runs [default: half of
    /// --seconds, at least 1s].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    baseline_seconds: Option<Duration>,

    /// Skip the uniform-random comparison.
    #[arg(long, conflicts_with = "baseline_seconds")]
    no_baseline: bool,

    /// How many requests are in flight at once: each of N tasks sends a
    /// request, reads the whole response, and repeats.
    #[arg(
        short,
        long,
        value_name = "N",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    concurrency: u32,
}

/// Parses a whole number of seconds, with or without an `s` suffix.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let digits = s.trim().strip_suffix('s').unwrap_or(s.trim());
    match digits.parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".into()),
        Ok(n) if n > 24 * 3600 => Err("must be at most 86400 seconds (one day)".into()),
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => Err(format!(
            "expected a whole number of seconds, like 10 or 10s, got {s:?}"
        )),
    }
}

/// Latency of a healthy backend.
const HEALTHY_LATENCY: Duration = Duration::from_millis(10);
/// Latency of the slow backend: 20× a healthy one.
const SLOW_LATENCY: Duration = Duration::from_millis(200);
/// Latency spread of every backend: ±30%.
const JITTER: f64 = 0.3;
/// Share of the flaky backend's answers that are 503.
const FLAKY_FAILURE_RATE: f64 = 0.3;
/// Index of the slow backend in [`FLEET`].
const SLOW: usize = 3;
/// Index of the flaky backend in [`FLEET`].
const FLAKY: usize = 4;
/// Names of the demo backends, in display order.
const FLEET: [&str; 5] = ["healthy-1", "healthy-2", "healthy-3", "slow", "flaky"];

/// The behavior of the backend at `index` in [`FLEET`], with a short
/// description of it for people.
fn behavior(index: usize) -> (Behavior, String) {
    let base = Behavior::new().jitter(JITTER);
    let jitter = format!("±{:.0}%", JITTER * 100.0);
    match index {
        SLOW => (
            base.latency(SLOW_LATENCY),
            format!(
                "{} ms {jitter} ({}× slower)",
                SLOW_LATENCY.as_millis(),
                SLOW_LATENCY.as_millis() / HEALTHY_LATENCY.as_millis()
            ),
        ),
        FLAKY => (
            base.latency(HEALTHY_LATENCY)
                .failure_rate(FLAKY_FAILURE_RATE),
            format!(
                "{} ms {jitter}, {:.0}% of answers are 503",
                HEALTHY_LATENCY.as_millis(),
                FLAKY_FAILURE_RATE * 100.0
            ),
        ),
        _ => (
            base.latency(HEALTHY_LATENCY),
            format!("{} ms {jitter}", HEALTHY_LATENCY.as_millis()),
        ),
    }
}

/// The client type the demo builds.
type DemoClient = palisade::Hyper<Full<Bytes>>;

/// The logical service every request is addressed to.
const SERVICE_URI: &str = "http://demo/";

/// At most this many latency samples are kept per phase (a uniform random
/// sample of them beyond that), so memory stays bounded on long runs.
const MAX_SAMPLES: usize = 1_000_000;

/// How long the last requests of a run may take to finish before the demo
/// gives up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a new client may take to see every demo backend.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `palisade demo`.
pub(crate) async fn run(args: DemoArgs) -> Result<(), CliError> {
    let mut screen = Screen::stdout();
    let baseline = (!args.no_baseline).then(|| {
        args.baseline_seconds
            .unwrap_or_else(|| (args.seconds / 2).max(Duration::from_secs(1)))
    });

    let fleet = start_fleet().await?;
    screen.print(&intro(&args, baseline, &fleet))?;

    let load = Load {
        concurrency: args.concurrency,
    };
    let palisade = load
        .run(
            &fleet,
            "palisade P2C-EWMA",
            Choice::PeakEwmaP2c,
            args.seconds,
            &mut screen,
        )
        .await?;
    let random = match baseline {
        Some(duration) => {
            screen.print(&format!(
                "\n{}\n",
                wrap(&format!(
                    "Now the same load for {}s through a client that sends each request \
                     to a backend picked uniformly at random (it still measures the \
                     backends, but ignores the estimates):",
                    duration.as_secs()
                ))
            ))?;
            Some(
                load.run(
                    &fleet,
                    "uniform random",
                    Choice::Random,
                    duration,
                    &mut screen,
                )
                .await?,
            )
        }
        None => None,
    };
    screen.print(&summary(&palisade, random.as_ref()))
}

/// One demo backend: a name, a description of how it behaves, the server.
struct Member {
    /// Its name in [`FLEET`].
    name: &'static str,
    /// How it behaves, for people.
    description: String,
    /// The running server (stopped when dropped).
    backend: Backend,
}

impl Member {
    /// The address palisade knows it by.
    fn address(&self) -> Address {
        Address::from(self.backend.addr())
    }
}

/// Starts every backend of [`FLEET`] on a free loopback port.
async fn start_fleet() -> Result<Vec<Member>, CliError> {
    let mut fleet = Vec::with_capacity(FLEET.len());
    for (index, name) in FLEET.into_iter().enumerate() {
        let (behavior, description) = behavior(index);
        let backend = Backend::spawn(behavior).await.map_err(|e| {
            CliError::new(format!(
                "could not start the demo backend {name:?} on 127.0.0.1"
            ))
            .because(e)
        })?;
        fleet.push(Member {
            name,
            description,
            backend,
        });
    }
    Ok(fleet)
}

/// The text printed before any load: what is about to happen, the fleet,
/// and how to read the live table.
fn intro(args: &DemoArgs, baseline: Option<Duration>, fleet: &[Member]) -> String {
    let mut what = format!(
        "palisade demo: {} tasks send HTTP requests through one palisade client to \
         {} local backends for {}s. For every request, palisade's balancer draws two \
         backends at random and picks the one with the lower latency estimate \
         (peak-EWMA) times outstanding requests (\"power of two choices\").",
        args.concurrency,
        fleet.len(),
        args.seconds.as_secs()
    );
    if let Some(baseline) = baseline {
        let _ = write!(
            what,
            " Then, for comparison, the same load runs for {}s with uniform random choice.",
            baseline.as_secs()
        );
    }
    let mut s = wrap(&what);
    s += "\nBackends (in-process HTTP servers):\n";
    let width = address_width(fleet);
    for m in fleet {
        let _ = writeln!(
            s,
            "  {:<9}  {:<width$}  {}",
            m.name,
            m.backend.addr(),
            m.description
        );
    }
    s.push('\n');
    s += &wrap(&format!(
        "Every second: each backend's share of the attempts so far (retries \
         included), palisade's cost estimate for it (peak-EWMA latency, plus a \
         {:?} penalty per failure that fades over seconds), failures, and requests \
         in flight.",
        BalanceSettings::default().failure_penalty
    ));
    s.push('\n');
    s
}

/// Terminal width the prose is wrapped to.
const TEXT_WIDTH: usize = 80;

/// Wraps one paragraph to [`TEXT_WIDTH`] columns at spaces; ends with a
/// newline.
fn wrap(paragraph: &str) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in paragraph.split_whitespace() {
        let len = word.chars().count();
        if line_len > 0 && line_len + 1 + len > TEXT_WIDTH {
            out.push('\n');
            line_len = 0;
        }
        if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += len;
    }
    out.push('\n');
    out
}

/// The width of the widest backend address.
fn address_width(fleet: &[Member]) -> usize {
    fleet
        .iter()
        .map(|m| m.backend.addr().to_string().len())
        .max()
        .unwrap_or(0)
        .max("address".len())
}

/// The load generator's settings.
struct Load {
    /// Tasks sending requests at once.
    concurrency: u32,
}

impl Load {
    /// Sends load through a new client with the given `choice` for
    /// `duration`, redrawing the live table every second, and returns what
    /// happened.
    async fn run(
        &self,
        fleet: &[Member],
        label: &'static str,
        choice: Choice,
        duration: Duration,
        screen: &mut Screen,
    ) -> Result<Phase, CliError> {
        let client: DemoClient = Client::builder("demo")
            .endpoints(fleet.iter().map(|m| Endpoint::from(m.backend.addr())))
            .http(palisade::http::hyper_client())
            .choice(choice)
            .build()
            .map_err(|e| CliError::new("could not build the palisade client").because(e))?;
        wait_for_endpoints(&client, fleet.len()).await?;

        let tally = Arc::new(Mutex::new(Tally::default()));
        let start = Instant::now();
        let deadline = start + duration;
        let mut workers = JoinSet::new();
        for _ in 0..self.concurrency {
            workers.spawn(worker(client.clone(), deadline, tally.clone()));
        }

        let table = Table::new(label, duration, fleet);
        let mut tick = start;
        loop {
            tick += Duration::from_secs(1);
            if tick >= deadline {
                break;
            }
            tokio::time::sleep_until(tick).await;
            screen.frame(&table.render(start.elapsed(), &client.snapshot().endpoints, false))?;
            // When nothing works (connections refused, say), say so now
            // rather than after the whole run.
            if let Err(e) = lock(&tally).check(label, start.elapsed()) {
                workers.abort_all();
                return Err(e);
            }
        }
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(joined) = workers.join_next().await {
                joined.map_err(|e| CliError::new("a load task failed").because(e))?;
            }
            Ok::<(), CliError>(())
        })
        .await;
        match drained {
            Ok(result) => result?,
            Err(_) => {
                workers.abort_all();
                let stuck: usize = client
                    .snapshot()
                    .endpoints
                    .iter()
                    .map(|s| s.in_flight)
                    .sum();
                let tally = lock(&tally);
                return Err(CliError::new(format!(
                    "{stuck} requests to the demo backends were still unanswered {}s after \
                     the {label} run ended ({} had finished, {} of them successfully)",
                    DRAIN_TIMEOUT.as_secs(),
                    group(tally.sent),
                    group(tally.ok),
                )));
            }
        }
        let stats = client.snapshot().endpoints;
        screen.frame(&table.render(duration, &stats, true))?;

        let tally = std::mem::take(&mut *lock(&tally));
        tally.check(label, duration)?;
        let by_address: HashMap<Address, &EndpointStats> =
            stats.iter().map(|s| (s.address.clone(), s)).collect();
        let requests_to = fleet
            .iter()
            .map(|m| by_address.get(&m.address()).map_or(0, |s| s.requests))
            .collect();
        let ejections = fleet
            .iter()
            .map(|m| by_address.get(&m.address()).map_or(0, |s| s.ejections))
            .collect();
        let mut latencies = tally.samples.kept;
        latencies.sort_unstable();
        Ok(Phase {
            label,
            tasks: self.concurrency,
            duration,
            sent: tally.sent,
            ok: tally.ok,
            latencies,
            requests_to,
            ejections,
        })
    }
}

/// Waits until the client's discovery has added all `expected` endpoints,
/// so that the first request already sees the whole fleet.
async fn wait_for_endpoints(client: &DemoClient, expected: usize) -> Result<(), CliError> {
    let all = client.wait_until(|c| c.endpoint_count() >= expected);
    tokio::time::timeout(DISCOVERY_TIMEOUT, all)
        .await
        .map_err(|_| {
            CliError::new(format!(
                "the palisade client saw only {} of the {expected} demo backends after {}s",
                client.endpoint_count(),
                DISCOVERY_TIMEOUT.as_secs()
            ))
        })
}

/// One load task: sends a GET, reads the whole body (so the connection goes
/// back to the pool), records the outcome, and repeats until `deadline`.
async fn worker(client: DemoClient, deadline: Instant, tally: Arc<Mutex<Tally>>) {
    let uri = Uri::from_static(SERVICE_URI);
    while Instant::now() < deadline {
        let mut req = Request::new(Full::<Bytes>::default());
        *req.uri_mut() = uri.clone();
        let start = Instant::now();
        let outcome = match client.clone().oneshot(req).await {
            Ok(rsp) => {
                let status = rsp.status();
                match rsp.into_body().collect().await {
                    Ok(_) => Ok(status),
                    Err(e) => Err(format!("reading the response body: {e}")),
                }
            }
            Err(e) => Err(error_chain(&e)),
        };
        let latency = start.elapsed();
        let failed = outcome.is_err();
        lock(&tally).record(latency, outcome);
        if failed {
            // A request that fails at once (connection refused) never waits
            // on I/O; without a yield, a few such loops would keep the
            // runtime's threads, and its timers, to themselves.
            tokio::task::yield_now().await;
        }
    }
}

/// `err` and its causes, joined by ": ".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    std::iter::once(err.to_string())
        .chain(crate::causes(err))
        .collect::<Vec<_>>()
        .join(": ")
}

/// Locks `m`, carrying on if a holder panicked (the counts stay usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the load tasks of one phase observed.
#[derive(Debug, Default)]
struct Tally {
    /// Requests completed (answered or failed).
    sent: u64,
    /// Of those, answered with a 2xx status.
    ok: u64,
    /// The first request error, for the message if nothing succeeds.
    first_error: Option<String>,
    /// Latency of every request, successful or not.
    samples: Samples,
}

impl Tally {
    /// Fails if requests have finished but none succeeded: the demo has
    /// nothing to show then.
    fn check(&self, label: &str, elapsed: Duration) -> Result<(), CliError> {
        if self.ok > 0 || self.sent == 0 {
            return Ok(());
        }
        let err = CliError::new(format!(
            "none of the {} requests of the first {:.0}s of the {label} run succeeded",
            group(self.sent),
            elapsed.as_secs_f64()
        ));
        Err(match &self.first_error {
            Some(first) => err.because(format!("the first one failed: {first}")),
            None => err.because("every answer had an error status"),
        })
    }

    /// Counts one finished request.
    fn record(&mut self, latency: Duration, outcome: Result<http::StatusCode, String>) {
        self.sent += 1;
        match outcome {
            Ok(status) if status.is_success() => self.ok += 1,
            Ok(_) => {}
            Err(e) => {
                self.first_error.get_or_insert(e);
            }
        }
        self.samples.record(latency);
    }
}

/// A bounded uniform sample of latencies, in microseconds (reservoir
/// sampling: every observation is kept with the same probability).
#[derive(Debug, Default)]
struct Samples {
    /// Observations so far.
    seen: u64,
    /// At most [`MAX_SAMPLES`] of them.
    kept: Vec<u32>,
}

impl Samples {
    /// Adds one observation.
    fn record(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.seen += 1;
        if self.kept.len() < MAX_SAMPLES {
            self.kept.push(micros);
        } else {
            let slot = rand::rng().random_range(0..self.seen);
            if let Some(kept) = self.kept.get_mut(slot as usize) {
                *kept = micros;
            }
        }
    }
}

/// The outcome of one load phase.
#[derive(Debug)]
struct Phase {
    /// Which balancer ran ("palisade P2C-EWMA", "uniform random").
    label: &'static str,
    /// How many load tasks ran.
    tasks: u32,
    /// How long new requests were started; every counted request started
    /// within it (the last answers arrive a little later).
    duration: Duration,
    /// Requests completed.
    sent: u64,
    /// Of those, answered with a 2xx status.
    ok: u64,
    /// Latency samples in microseconds, sorted.
    latencies: Vec<u32>,
    /// Requests the balancer sent to each backend, in [`FLEET`] order
    /// (retries included: these are attempts).
    requests_to: Vec<u64>,
    /// How many times each backend was ejected, in [`FLEET`] order.
    ejections: Vec<u64>,
}

impl Phase {
    /// Requests per second.
    fn throughput(&self) -> f64 {
        self.sent as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// Share of completed requests answered with 2xx, in 0..=1.
    fn success_rate(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.ok as f64 / self.sent as f64)
    }

    /// The `p`th percentile latency (nearest rank), `p` in 0..=100.
    fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = (p / 100.0 * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len()) - 1;
        Some(Duration::from_micros(u64::from(self.latencies[index])))
    }

    /// Share of the balancer's requests that went to backend `index`, in
    /// 0..=1.
    fn share(&self, index: usize) -> Option<f64> {
        let total: u64 = self.requests_to.iter().sum();
        (total > 0).then(|| self.requests_to[index] as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seconds() {
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("3s"), Ok(Duration::from_secs(3)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("1.5").is_err());
        assert!(parse_seconds("10ms").is_err());
    }

    #[test]
    fn wraps_prose() {
        let text = "word ".repeat(40);
        let wrapped = wrap(&text);
        assert!(wrapped.lines().all(|l| l.len() <= TEXT_WIDTH));
        assert_eq!(wrapped.split_whitespace().count(), 40);
        assert!(wrapped.ends_with("word\n"));
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(0.0045), "0.45%");
        assert_eq!(percent(0.333), "33.3%");
        assert_eq!(millis(Duration::from_micros(450)), "0.45 ms");
        assert_eq!(millis(Duration::from_micros(10_940)), "10.9 ms");
        assert_eq!(millis(Duration::from_micros(212_400)), "212 ms");
        assert_eq!(times(3.214), "3.21×");
        assert_eq!(times(1.046), "1.05×");
        assert_eq!(times(0.0712), "0.07×");
        assert_eq!(times(0.00412), "0.0041×");
        assert_eq!(times(15.2), "15×");
        assert_eq!(times(0.0), "0×");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let phase = Phase {
            label: "test",
            tasks: 1,
            duration: Duration::from_secs(1),
            sent: 100,
            ok: 100,
            latencies: (1..=100).collect(),
            requests_to: vec![1, 1, 1, 1, 0],
            ejections: vec![0; 5],
        };
        assert_eq!(phase.percentile(50.0), Some(Duration::from_micros(50)));
        assert_eq!(phase.percentile(99.0), Some(Duration::from_micros(99)));
        assert_eq!(phase.percentile(100.0), Some(Duration::from_micros(100)));
        assert_eq!(phase.share(0), Some(0.25));
        assert_eq!(phase.share(FLAKY), Some(0.0));
    }
}
