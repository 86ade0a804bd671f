//! What a loaded config costs in memory: the proxy runs in this process
//! under a counting allocator, reloads from a one-route config to one with
//! 10,000 routes and back, and the live heap is compared with the file.
//!
//! The heap is counted, not the process's RSS, so the figures do not
//! depend on the allocator's fragmentation or on other tests (this file
//! holds one test, so nothing else allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the
// counter only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const HEAD: &str = r#"
[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[server]
watch_interval = "50ms"

[[services]]
name = "app"
endpoints = ["127.0.0.1:9"]
"#;

fn small() -> String {
    format!("{HEAD}\n[[routes]]\nservice = \"app\"\n")
}

/// The large config's last route goes to a service of its own, so that
/// `/snapshot` (whose answer is small) tells which config runs.
const LARGE_ONLY: &str = "\n[[services]]\nname = \"large-only\"\nendpoints = [\"127.0.0.1:9\"]\n";

/// `n` routes of the shape a large multi-tenant config has: a path prefix
/// and a header each.
fn large(n: usize) -> String {
    let mut text = HEAD.to_owned();
    for i in 0..n {
        text.push_str(&format!(
            "\n[[routes]]\nservice = \"app\"\nmatch = {{ path_prefix = \"/route/number/{i}/\", \
             headers = {{ \"x-tenant\" = \"tenant-{i}-with-a-longer-name\" }} }}\n"
        ));
    }
    text.push_str(LARGE_ONLY);
    text.push_str("\n[[routes]]\nservice = \"large-only\"\n");
    text
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Writes `text` to `path` in one step (a rename), as an operator's tools do.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Asks the admin server for `/snapshot` until it shows the large config's
/// own service (`large`), or does not: the reload has been applied.
async fn wait_for_config(admin: std::net::SocketAddr, large: bool) {
    let needle = "large-only";
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..400 {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /snapshot HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.unwrap();
        if String::from_utf8_lossy(&body).contains(needle) == large {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy never applied the config (large: {large})");
}

/// The live heap once it has settled: background tasks (the reload's own
/// work, connection tasks) finish within a few watch intervals.
async fn settled() -> isize {
    let mut last = live();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = live();
        if (now - last).abs() < 4096 {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_config_costs_at_most_twice_its_size_and_is_given_back() {
    const ROUTES: usize = 10_000;
    let dir = std::env::temp_dir().join(format!("palisade-config-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, small()).unwrap();

    let config = palisade::proxy::server::load(&path).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(palisade::proxy::server::run(
        path.clone(),
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |_, admin| {
            let _ = tx.send(admin);
        },
    ));
    let admin = rx.await.unwrap();
    // The text is made before the baseline: it is the test's, not the
    // proxy's.
    let text = large(ROUTES);
    wait_for_config(admin, false).await;
    let baseline = settled().await;

    replace(&path, &text);
    wait_for_config(admin, true).await;
    let loaded = settled().await;

    replace(&path, &small());
    wait_for_config(admin, false).await;
    let after = settled().await;

    let _ = stop_tx.send(());
    let _ = proxy.await;
    let _ = std::fs::remove_dir_all(&dir);

    let size = text.len() as isize;
    let cost = loaded - baseline;
    println!(
        "config of {ROUTES} routes, {size} bytes: live heap {baseline} → {loaded} bytes \
         (+{cost}, {:.2}× the file, {} bytes a route); back to one route: {after} bytes",
        cost as f64 / size as f64,
        cost / ROUTES as isize,
    );
    assert!(
        cost <= 2 * size,
        "a loaded config of {size} bytes holds {cost} bytes of heap (more than twice its size)"
    );
    assert!(
        after - baseline < size / 20,
        "after going back to one route, {} bytes more heap than before the large config",
        after - baseline
    );
}
