//! What one proxied request costs in allocations: the proxy runs in this
//! process on a runtime of its own, whose threads alone are counted, between
//! a raw keep-alive HTTP/1.1 client and a raw backend on 127.0.0.1.
//!
//! Allocation counts are exact and do not depend on the machine's speed,
//! so a change that adds work per request fails here instead of hiding in
//! a noisy benchmark. The bound is the count measured when it was written,
//! with a little room; lower it when the count drops.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the proxy runtime's threads: only their allocations count.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counters only record that it happened.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A backend that answers every request on a connection with a 3-byte
/// body, as fast as it can; it runs on the test's runtime (not counted).
async fn backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut have = 0;
                loop {
                    while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                }
            });
        }
    });
    addr
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `n` GETs on one keep-alive connection, each after the last
/// answer, and checks every answer.
async fn get(conn: &mut TcpStream, n: usize) {
    let mut buf = vec![0u8; 8192];
    for _ in 0..n {
        conn.write_all(b"GET /items/1 HTTP/1.1\r\nhost: app\r\nuser-agent: t\r\n\r\n")
            .await
            .unwrap();
        let mut have = 0;
        loop {
            let read = conn.read(&mut buf[have..]).await.unwrap();
            assert!(read > 0, "the proxy closed the connection");
            have += read;
            if let Some(end) = find(&buf[..have], b"\r\n\r\n")
                && have >= end + 4 + 3
            {
                break;
            }
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..have])
        );
    }
}

#[tokio::test]
async fn a_proxied_get_allocates_a_bounded_number_of_times() {
    let upstream = backend().await;
    let dir = std::env::temp_dir().join(format!("palisade-allocs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    // The minimal config: every default on (retries, ejection, breaker,
    // deadline, metrics, spans); one serving thread, the counted runtime.
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [server]\nthreads = 1\n\
             [[services]]\nname = \"app\"\nendpoints = [\"{upstream}\"]\n\
             [[routes]]\nservice = \"app\"\n"
        ),
    )
    .unwrap();
    let config = palisade::proxy::server::load(&path).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| COUNTED.with(|c| c.set(true)))
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = runtime.spawn(palisade::proxy::server::run(
        path.clone(),
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |listeners, _| {
            let _ = tx.send(listeners[0]);
        },
    ));
    let listen = rx.await.unwrap();

    let mut conn = TcpStream::connect(listen).await.unwrap();
    // Warm up: the upstream connection, the pool, lazily built state.
    get(&mut conn, 200).await;
    const N: u64 = 2000;
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    get(&mut conn, N as usize).await;
    let (a1, b1) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let _ = stop_tx.send(());
    drop(conn);
    let _ = proxy.await;
    runtime.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);

    let per_request = (a1 - a0) as f64 / N as f64;
    let bytes = (b1 - b0) as f64 / N as f64;
    println!(
        "a proxied GET: {per_request:.1} allocations, {bytes:.0} bytes allocated, in the proxy"
    );
    assert!(
        per_request <= 40.0,
        "a proxied GET makes {per_request:.1} allocations in the proxy (bound 40)"
    );
}
