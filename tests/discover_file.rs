//! File discovery end to end: a watched file feeds a real balancer in front
//! of real hyper backends on 127.0.0.1.
//!
//! Waits are bounded waits on conditions (the balancer's set, a log line, a
//! backend's counter), with margins far above one poll interval; nothing
//! asserts how fast the machine is.

#![cfg(all(feature = "demo", feature = "file"))]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade::Hyper;
use palisade::demo::{BACKEND_HEADER, Backend, Behavior};
use palisade::discover::file::Watch;
use palisade::http::hyper_client;
use palisade::{Client, Error};
use tokio::time::Instant;
use tower::ServiceExt;

type TestClient = Hyper<Full<Bytes>>;

/// How often the files are polled.
const INTERVAL: Duration = Duration::from_millis(200);

/// How much longer than one poll interval a change may take to arrive on a
/// busy machine before the test gives up.
const MARGIN: Duration = Duration::from_secs(10);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "palisade-discover-file-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A JSON list of the backends' addresses.
fn list(backends: &[&Backend]) -> String {
    let entries: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    format!("[{}]", entries.join(", "))
}

/// Writes a file atomically: a temporary file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn backends(n: usize, behavior: Behavior) -> Vec<Backend> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Backend::spawn(behavior).await.expect("bind 127.0.0.1"));
    }
    out
}

fn client(path: &Path) -> TestClient {
    let discover = Watch::new(path).interval(INTERVAL).spawn().unwrap();
    Client::builder("file")
        .discover(discover)
        .http(hyper_client())
        .build()
        .unwrap()
}

fn addresses(client: &TestClient) -> BTreeSet<String> {
    client
        .endpoint_stats()
        .iter()
        .map(|s| s.address.to_string())
        .collect()
}

/// Waits until the balancer's set is exactly `backends`; returns how long
/// that took.
async fn until_set(client: &TestClient, backends: &[&Backend]) -> Duration {
    let want: BTreeSet<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let start = Instant::now();
    tokio::time::timeout(
        INTERVAL + MARGIN,
        client.wait_until(|c| addresses(c) == want),
    )
    .await
    .unwrap_or_else(|_| panic!("wanted {want:?}, the balancer has {:?}", addresses(client)));
    start.elapsed()
}

/// Waits until `done` holds, checking every few milliseconds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + MARGIN;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends one request; the backend that answered it.
async fn send(client: &TestClient) -> Result<SocketAddr, Error> {
    let req = http::Request::get("http://file/")
        .body(Full::default())
        .unwrap();
    let rsp = client.clone().oneshot(req).await?;
    assert_eq!(rsp.status(), 200);
    let backend = rsp
        .headers()
        .get(BACKEND_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("backend header");
    rsp.into_body().collect().await.expect("body");
    Ok(backend)
}

/// Sends `n` requests one after the other; every one must succeed, on one
/// of `backends`.
async fn all_answered_by(client: &TestClient, n: usize, backends: &[&Backend]) {
    let allowed: BTreeSet<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    for _ in 0..n {
        let answered = send(client).await.expect("request succeeds");
        assert!(
            allowed.contains(&answered),
            "{answered} answered; wanted one of {allowed:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Log capture: one global subscriber, set before any test starts a source
// (so tracing's per-call-site cache never sees a moment without it).

#[derive(Default)]
struct Logs {
    events: Mutex<Vec<String>>,
    notify: tokio::sync::Notify,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for &'static Logs {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                let _ = write!(self.0, " {}={:?}", field.name(), value);
            }
        }
        let mut fields = Fields(event.metadata().level().to_string());
        event.record(&mut fields);
        self.events.lock().unwrap().push(fields.0);
        self.notify.notify_waiters();
    }
}

fn logs() -> &'static Logs {
    static LOGS: OnceLock<&'static Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let logs: &'static Logs = Box::leak(Box::default());
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(logs))
            .expect("no other global subscriber in this test binary");
        logs
    })
}

impl Logs {
    /// Waits for the `n`th event (1-based) that contains every one of
    /// `parts`, and returns it.
    async fn until(&self, n: usize, parts: &[&str]) -> String {
        let found = async {
            loop {
                let notified = self.notify.notified();
                let events = self.events.lock().unwrap().clone();
                let matching: Vec<String> = events
                    .into_iter()
                    .filter(|e| parts.iter().all(|p| e.contains(p)))
                    .collect();
                if matching.len() >= n {
                    return matching[n - 1].clone();
                }
                notified.await;
            }
        };
        tokio::time::timeout(INTERVAL + MARGIN, found)
            .await
            .unwrap_or_else(|_| panic!("no log event with {parts:?}"))
    }
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_file_reaches_the_balancer_within_a_poll() {
    logs();
    let fleet = backends(3, Behavior::new()).await;
    let dir = TempDir::new("change");
    let path = dir.join("users.json");
    std::fs::write(&path, list(&[&fleet[0]])).unwrap();

    let client = client(&path);
    until_set(&client, &[&fleet[0]]).await;
    all_answered_by(&client, 10, &[&fleet[0]]).await;

    // Rewritten in place.
    std::fs::write(&path, list(&[&fleet[0], &fleet[1]])).unwrap();
    let took = until_set(&client, &[&fleet[0], &fleet[1]]).await;
    eprintln!("in-place rewrite applied after {took:?} (poll interval {INTERVAL:?})");
    all_answered_by(&client, 10, &[&fleet[0], &fleet[1]]).await;

    // Replaced: a table entry, another backend.
    std::fs::write(
        &path,
        format!(
            "{{\"endpoints\": [{{\"address\": \"{}\", \"weight\": 2, \"labels\": {{\"zone\": \"b\"}}}}]}}",
            fleet[2].addr()
        ),
    )
    .unwrap();
    let took = until_set(&client, &[&fleet[2]]).await;
    eprintln!("second rewrite applied after {took:?}");
    let stats = client.endpoint_stats();
    assert_eq!(stats[0].weight, 2.0);
    assert_eq!(stats[0].labels["zone"], "b");
    all_answered_by(&client, 10, &[&fleet[2]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_rename_is_picked_up() {
    logs();
    let fleet = backends(2, Behavior::new()).await;
    let dir = TempDir::new("rename");
    let path = dir.join("users.toml");
    let toml = |b: &Backend| format!("endpoints = [\"{}\"]\n", b.addr());
    std::fs::write(&path, toml(&fleet[0])).unwrap();

    let client = client(&path);
    until_set(&client, &[&fleet[0]]).await;

    // The same length, written as a new file and renamed over the old one.
    replace(&path, &toml(&fleet[1]));
    let took = until_set(&client, &[&fleet[1]]).await;
    eprintln!("rename applied after {took:?}");
    all_answered_by(&client, 10, &[&fleet[1]]).await;

    replace(&path, &toml(&fleet[0]));
    until_set(&client, &[&fleet[0]]).await;
    all_answered_by(&client, 10, &[&fleet[0]]).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    logs();
    let fleet = backends(2, Behavior::new()).await;
    let dir = TempDir::new("configmap");
    // As the kubelet mounts a ConfigMap: the file is a link through `..data`,
    // and an update points `..data` at a new dated directory.
    let publish = |version: &str, text: &str| {
        let dated = dir.join(&format!("..2024_06_01_{version}"));
        std::fs::create_dir(&dated).unwrap();
        std::fs::write(dated.join("users.json"), text).unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(dated.file_name().unwrap(), &tmp).unwrap();
        let old = std::fs::read_link(dir.join("..data")).ok();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(dir.0.join(old)).unwrap();
        }
    };
    publish("a", &list(&[&fleet[0]]));
    let path = dir.join("users.json");
    symlink("..data/users.json", &path).unwrap();

    let client = client(&path);
    until_set(&client, &[&fleet[0]]).await;

    publish("b", &list(&[&fleet[1]]));
    let took = until_set(&client, &[&fleet[1]]).await;
    eprintln!("symlink swap applied after {took:?}");
    all_answered_by(&client, 10, &[&fleet[1]]).await;

    publish("c", &list(&[&fleet[0], &fleet[1]]));
    until_set(&client, &[&fleet[0], &fleet[1]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_keeps_the_last_good_set_and_traffic_continues() {
    let logs = logs();
    let fleet = backends(3, Behavior::new()).await;
    let dir = TempDir::new("bad");
    let path = dir.join("users.json");
    std::fs::write(&path, list(&[&fleet[0], &fleet[1]])).unwrap();
    let client = client(&path);
    until_set(&client, &[&fleet[0], &fleet[1]]).await;

    // Steady traffic all along.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let client = client.clone();
        let stop = stop.clone();
        async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                outcomes.push(send(&client).await);
            }
            outcomes
        }
    });

    let path_field = format!("path={}", path.display());
    // A bad weight: rejected, logged with its place.
    replace(
        &path,
        &format!(
            "[\n  \"{}\",\n  {{\"address\": \"{}\", \"weight\": 0}}\n]",
            fleet[0].addr(),
            fleet[2].addr()
        ),
    );
    let event = logs.until(1, &["ERROR", &path_field]).await;
    for part in [
        "line=3",
        "column=",
        "field=\"endpoints[1].weight\"",
        "kept=2",
    ] {
        assert!(event.contains(part), "{part:?} not in {event}");
    }
    assert_eq!(client.endpoint_count(), 2);
    all_answered_by(&client, 20, &[&fleet[0], &fleet[1]]).await;

    // Half a file (a writer that does not rename): rejected too.
    std::fs::write(&path, format!("[\"{}\", ", fleet[2].addr())).unwrap();
    let event = logs.until(2, &["ERROR", &path_field]).await;
    assert!(event.contains("EOF while parsing"), "{event}");
    all_answered_by(&client, 20, &[&fleet[0], &fleet[1]]).await;

    // Gone: still the last good set.
    std::fs::remove_file(&path).unwrap();
    logs.until(1, &["WARN", &path_field, "missing"]).await;
    all_answered_by(&client, 20, &[&fleet[0], &fleet[1]]).await;

    // Fixed: applied.
    replace(&path, &list(&[&fleet[2]]));
    until_set(&client, &[&fleet[2]]).await;
    all_answered_by(&client, 10, &[&fleet[2]]).await;

    stop.store(true, Ordering::Relaxed);
    let outcomes = load.await.unwrap();
    assert!(!outcomes.is_empty());
    let failed: Vec<&Error> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_drains_its_in_flight_requests() {
    logs();
    // Slow enough that its request is surely still in flight once the
    // removal (one poll, a few ms) has been applied.
    let slow = Backend::spawn(Behavior::new().latency(Duration::from_secs(5)))
        .await
        .unwrap();
    let fast = Backend::spawn(Behavior::new()).await.unwrap();
    let dir = TempDir::new("drain");
    let path = dir.join("users.json");
    std::fs::write(&path, list(&[&slow])).unwrap();
    let client = client(&path);
    until_set(&client, &[&slow]).await;

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { send(&client).await }
    });
    until("the slow backend to receive the request", || {
        slow.requests() == 1
    })
    .await;

    replace(&path, &list(&[&fast]));
    until_set(&client, &[&fast]).await;
    assert!(
        !in_flight.is_finished(),
        "the removal was applied while the request was in flight"
    );
    all_answered_by(&client, 10, &[&fast]).await;
    assert_eq!(slow.requests(), 1, "no new request for a removed endpoint");

    let answered = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(answered, slow.addr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_means_no_endpoints_until_it_appears() {
    logs();
    let backend = Backend::spawn(Behavior::new()).await.unwrap();
    let dir = TempDir::new("late");
    let path = dir.join("users.json");
    assert!(
        Watch::new(&path).fail_fast(true).spawn().is_err(),
        "fail_fast: the error at once"
    );

    let discover = Watch::new(&path).interval(INTERVAL).spawn().unwrap();
    let client: TestClient = Client::builder("file")
        .discover(discover)
        .http(hyper_client())
        .endpoint_wait(INTERVAL + MARGIN)
        .build()
        .unwrap();
    assert_eq!(client.endpoint_count(), 0);
    // A request waits for an endpoint (up to the balancer's endpoint wait,
    // here far longer than a poll), and the file arrives meanwhile.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { send(&client).await }
    });
    replace(&path, &list(&[&backend]));
    until_set(&client, &[&backend]).await;
    assert_eq!(waiting.await.unwrap().expect("served"), backend.addr());
}
