//! A fault-injecting TCP proxy on 127.0.0.1, for tests.
//!
//! A [`Faulty`] listens on a free loopback port and forwards every
//! connection to one upstream address (typically a
//! [`palisade::demo::Backend`]). Its [`Fault`] can be switched while a test
//! runs with [`Faulty::set`], which returns once the listener has applied
//! it:
//!
//! | fault | new connections | live connections |
//! |---|---|---|
//! | [`Pass`](Fault::Pass) | forwarded | forwarded |
//! | [`Refuse`](Fault::Refuse) | refused: the listener is closed (`ECONNREFUSED`) | reset (RST) at once |
//! | [`ResetMidResponse`](Fault::ResetMidResponse) | request forwarded; after `after_bytes` of response (counted from when the fault took effect on the connection) both sides are reset | same |
//! | [`Blackhole`](Fault::Blackhole) | accepted, read, never forwarded nor answered | stop forwarding both ways |
//! | [`SlowDrip`](Fault::SlowDrip) | response forwarded `bytes_per_tick` bytes per `tick` | same |
//! | [`HalfClose`](Fault::HalfClose) | after `after_bytes` of response, the write half toward the client is shut down (FIN); the client's bytes are still read | same |
//!
//! A connection that was blackholed stays blackholed (its bytes are lost);
//! other connections follow the current fault at their next read.
//!
//! Request heads forwarded upstream are scanned for the [`ID_HEADER`]
//! header: each value, with the instant it was written upstream, is kept
//! until [`Faulty::take_forwarded`] so that a test can tell which requests
//! reached the backend behind it, and how many times.
//!
//! Counters ([`Faulty::counts`]): connections accepted and live, bytes each
//! way, and how many connections each fault acted on. Live connections are
//! capped ([`Faulty::spawn_with`], default [`MAX_CONNECTIONS`]): over the
//! cap, new connections wait in the kernel's accept queue. Dropping the
//! `Faulty` closes the listener and every connection (its tasks are
//! aborted).
//!
//! ```ignore
//! let backend = Backend::spawn(Behavior::new()).await?;
//! let faulty = Faulty::spawn(backend.addr()).await?;
//! // ... point a client at faulty.addr() ...
//! faulty.set(Fault::Blackhole).await;
//! assert!(faulty.counts().blackholed > 0);
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The request header whose values the proxy records when it forwards them.
pub const ID_HEADER: &str = "x-request-id";

/// Live connections allowed by [`Faulty::spawn`].
pub const MAX_CONNECTIONS: usize = 512;

/// What the proxy does to traffic; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Close the listener (connections are refused) and reset live ones.
    Refuse,
    /// Forward `after_bytes` of response, then reset both sides.
    ResetMidResponse {
        /// Response bytes forwarded before the reset.
        after_bytes: u64,
    },
    /// Accept and read, never forward or answer.
    Blackhole,
    /// Forward responses a few bytes at a time.
    SlowDrip {
        /// Bytes written per tick.
        bytes_per_tick: usize,
        /// The pause between writes.
        tick: Duration,
    },
    /// Forward `after_bytes` of response, then shut down the write half
    /// toward the client.
    HalfClose {
        /// Response bytes forwarded before the FIN.
        after_bytes: u64,
    },
}

/// A snapshot of a [`Faulty`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub live: u64,
    /// Bytes forwarded client → upstream.
    pub bytes_up: u64,
    /// Bytes forwarded upstream → client.
    pub bytes_down: u64,
    /// Live connections reset by [`Fault::Refuse`] (or accepted in the
    /// instant before the listener closed).
    pub refused: u64,
    /// Connections reset by [`Fault::ResetMidResponse`].
    pub reset: u64,
    /// Connections that [`Fault::Blackhole`] swallowed.
    pub blackholed: u64,
    /// Connections on which [`Fault::SlowDrip`] slowed a response.
    pub dripped: u64,
    /// Connections half-closed by [`Fault::HalfClose`].
    pub half_closed: u64,
    /// Connections reset because the upstream could not be reached.
    pub upstream_errors: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    live: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    blackholed: AtomicU64,
    dripped: AtomicU64,
    half_closed: AtomicU64,
    upstream_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    upstream: SocketAddr,
    counters: Counters,
    forwarded: Mutex<Vec<(String, Instant)>>,
}

/// A fault-injecting TCP proxy; see the [module docs](self).
pub struct Faulty {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The fault, with a generation number that `set` waits for.
    mode: watch::Sender<(u64, Fault)>,
    applied: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Faulty {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`, in
    /// [`Fault::Pass`], with at most [`MAX_CONNECTIONS`] live connections.
    pub async fn spawn(upstream: SocketAddr) -> io::Result<Faulty> {
        Faulty::spawn_with(upstream, MAX_CONNECTIONS).await
    }

    /// Like [`spawn`](Faulty::spawn), with at most `max_connections` live
    /// connections.
    pub async fn spawn_with(upstream: SocketAddr, max_connections: usize) -> io::Result<Faulty> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            counters: Counters::default(),
            forwarded: Mutex::new(Vec::new()),
        });
        let (mode, mode_rx) = watch::channel((0, Fault::Pass));
        let (applied_tx, applied) = watch::channel(0);
        let task = tokio::spawn(accept_loop(
            listener,
            addr,
            shared.clone(),
            mode_rx,
            applied_tx,
            Arc::new(Semaphore::new(max_connections)),
        ));
        Ok(Faulty {
            addr,
            shared,
            mode,
            applied,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        self.mode.borrow().1
    }

    /// Switches the fault; returns once the listener has applied it (for
    /// [`Fault::Refuse`]: the listener is closed; leaving it: open again).
    /// Live connections apply it at their next read, or at once for
    /// `Refuse` and `Blackhole`.
    pub async fn set(&self, fault: Fault) {
        let mut generation = 0;
        self.mode.send_modify(|(g, f)| {
            *g += 1;
            generation = *g;
            *f = fault;
        });
        let mut applied = self.applied.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            applied.wait_for(|g| *g >= generation),
        )
        .await
        .unwrap_or_else(|_| panic!("fault proxy {}: {fault:?} not applied in 10 s", self.addr))
        .expect("fault proxy task ended");
    }

    /// The counters so far.
    pub fn counts(&self) -> Counts {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            accepted: get(&c.accepted),
            live: get(&c.live),
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
            refused: get(&c.refused),
            reset: get(&c.reset),
            blackholed: get(&c.blackholed),
            dripped: get(&c.dripped),
            half_closed: get(&c.half_closed),
            upstream_errors: get(&c.upstream_errors),
        }
    }

    /// Every [`ID_HEADER`] value forwarded upstream since the last call,
    /// with when it was written, in order.
    pub fn take_forwarded(&self) -> Vec<(String, Instant)> {
        std::mem::take(
            &mut *self
                .shared
                .forwarded
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        // The accept loop owns the connections: aborting it closes them.
        self.task.abort();
    }
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("fault", &self.fault())
            .finish()
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut mode: watch::Receiver<(u64, Fault)>,
    applied: watch::Sender<u64>,
    slots: Arc<Semaphore>,
) {
    let mut listener = Some(listener);
    let mut connections = JoinSet::new();
    loop {
        let (generation, fault) = *mode.borrow_and_update();
        if fault == Fault::Refuse {
            listener = None;
        } else if listener.is_none() {
            listener = Some(rebind(addr).await);
        }
        applied.send_replace(generation);
        let Some(open) = &listener else {
            tokio::select! {
                changed = mode.changed() => if changed.is_err() { return },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
            continue;
        };
        let accept = async {
            let permit = slots.clone().acquire_owned().await;
            (permit, open.accept().await)
        };
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            (permit, accepted) = accept => {
                let Ok(permit) = permit else { return };
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                bump(&shared.counters.accepted);
                let (shared, mode) = (shared.clone(), mode.clone());
                connections.spawn(async move {
                    shared.counters.live.fetch_add(1, Ordering::Relaxed);
                    connection(stream, &shared, mode).await;
                    shared.counters.live.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
        }
    }
}

/// Binds `addr` again after a `Refuse`, retrying while another socket still
/// holds it.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut delay = Duration::from_millis(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => {
                eprintln!("fault proxy {addr}: rebinding failed ({e}); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Resets a stream: `SO_LINGER` 0, then close, so the peer gets a RST.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(
    mut client: TcpStream,
    shared: &Shared,
    mut mode: watch::Receiver<(u64, Fault)>,
) {
    let _ = client.set_nodelay(true);
    let c = &shared.counters;
    let fault = mode.borrow_and_update().1;
    match fault {
        Fault::Refuse => {
            bump(&c.refused);
            return reset(client);
        }
        Fault::Blackhole => {
            bump(&c.blackholed);
            return swallow(client, mode).await;
        }
        _ => {}
    }
    let mut upstream = match TcpStream::connect(shared.upstream).await {
        Ok(upstream) => upstream,
        Err(_) => {
            bump(&c.upstream_errors);
            return reset(client);
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut tap = Tap::default();
    let (mut up_buf, mut down_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    // Response bytes forwarded since the current fault took effect here.
    let mut since_fault = 0u64;
    let mut half_closed = false;
    let mut dripped = false;
    let end = loop {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    break End::Close;
                }
                since_fault = 0;
                let fault = mode.borrow_and_update().1;
                match fault {
                    Fault::Refuse => {
                        bump(&c.refused);
                        break End::Reset;
                    }
                    Fault::Blackhole => {
                        bump(&c.blackholed);
                        break End::Swallow;
                    }
                    _ => {}
                }
            }
            read = cr.read(&mut up_buf) => {
                let n = match read {
                    Ok(0) => break End::Close,
                    Ok(n) => n,
                    Err(_) => break End::Reset,
                };
                if uw.write_all(&up_buf[..n]).await.is_err() {
                    break End::Reset;
                }
                c.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                tap.feed(&up_buf[..n], &shared.forwarded);
            }
            read = ur.read(&mut down_buf), if !half_closed => {
                let n = match read {
                    Ok(0) => break End::Close,
                    Ok(n) => n,
                    Err(_) => break End::Reset,
                };
                let fault = mode.borrow().1;
                let chunk = &down_buf[..n];
                let result = match fault {
                    Fault::ResetMidResponse { after_bytes } | Fault::HalfClose { after_bytes } => {
                        let allowed = after_bytes.saturating_sub(since_fault);
                        let send = &chunk[..chunk.len().min(allowed as usize)];
                        let result = cw.write_all(send).await;
                        since_fault += send.len() as u64;
                        c.bytes_down.fetch_add(send.len() as u64, Ordering::Relaxed);
                        if result.is_ok() && since_fault >= after_bytes {
                            if let Fault::ResetMidResponse { .. } = fault {
                                bump(&c.reset);
                                break End::Reset;
                            }
                            bump(&c.half_closed);
                            half_closed = true;
                            let _ = cw.shutdown().await;
                        }
                        result
                    }
                    Fault::SlowDrip { bytes_per_tick, tick } => {
                        if !dripped {
                            dripped = true;
                            bump(&c.dripped);
                        }
                        drip(&mut cw, chunk, bytes_per_tick.max(1), tick, &c.bytes_down).await
                    }
                    // Pass, or a fault that the select's mode branch has
                    // not seen yet (`Refuse`, `Blackhole`): forward.
                    _ => {
                        c.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                        cw.write_all(chunk).await
                    }
                };
                if result.is_err() {
                    break End::Reset;
                }
            }
        }
    };
    match end {
        End::Close => {}
        End::Reset => {
            reset(client);
            reset(upstream);
        }
        End::Swallow => {
            reset(upstream);
            swallow(client, mode).await;
        }
    }
}

/// How a forwarding loop ends.
enum End {
    /// One side closed: close both.
    Close,
    /// Reset both sides.
    Reset,
    /// Blackholed: drop the upstream, keep reading the client.
    Swallow,
}

/// Writes `chunk` a few bytes per tick.
async fn drip(
    out: &mut tokio::net::tcp::WriteHalf<'_>,
    chunk: &[u8],
    bytes_per_tick: usize,
    tick: Duration,
    counter: &AtomicU64,
) -> io::Result<()> {
    for piece in chunk.chunks(bytes_per_tick) {
        out.write_all(piece).await?;
        counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
        tokio::time::sleep(tick).await;
    }
    Ok(())
}

/// Reads and discards the client's bytes until it closes, or until the
/// fault becomes `Refuse` (then resets it).
async fn swallow(mut client: TcpStream, mut mode: watch::Receiver<(u64, Fault)>) {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = mode.changed() => {
                if changed.is_err() || mode.borrow_and_update().1 == Fault::Refuse {
                    return reset(client);
                }
            }
        }
    }
}

/// Finds `\r\n<ID_HEADER>: <value>\r\n` in a byte stream split at arbitrary
/// points.
#[derive(Default)]
struct Tap {
    carry: Vec<u8>,
}

impl Tap {
    /// Longest value kept while waiting for its end.
    const MAX_VALUE: usize = 256;

    fn feed(&mut self, chunk: &[u8], out: &Mutex<Vec<(String, Instant)>>) {
        let pattern = format!("\r\n{ID_HEADER}: ");
        let pattern = pattern.as_bytes();
        self.carry.extend_from_slice(chunk);
        let mut found = Vec::new();
        let mut consumed = 0;
        while let Some(i) = find(&self.carry[consumed..], pattern) {
            let value = consumed + i + pattern.len();
            let Some(len) = find(&self.carry[value..], b"\r\n") else {
                // The value continues in the next chunk.
                consumed += i;
                break;
            };
            found.push(String::from_utf8_lossy(&self.carry[value..value + len]).into_owned());
            // Keep the `\r\n` that ends the value: it starts the next line.
            consumed = value + len;
        }
        if find(&self.carry[consumed..], pattern).is_none() {
            // Keep only what could be the start of the pattern.
            consumed = consumed.max(self.carry.len().saturating_sub(pattern.len() - 1));
        }
        self.carry.drain(..consumed);
        if self.carry.len() > pattern.len() + Self::MAX_VALUE {
            self.carry.clear();
        }
        if !found.is_empty() {
            let now = Instant::now();
            let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(found.into_iter().map(|id| (id, now)));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
