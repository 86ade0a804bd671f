//! Endpoint discovery: where the balancer learns which endpoints exist.
//!
//! A discovery source is any [`tower::discover::Discover`] whose services are
//! [`Endpoint`]s, i.e. any `TryStream` of
//! `tower::discover::Change<Key, Endpoint>`. The balancer turns each endpoint
//! into a service with a [`NewEndpoint`](crate::balance::NewEndpoint) factory,
//! so sources stay free of client details.
//!
//! The sources that ship:
//!
//! | source | feature | what it watches |
//! |---|---|---|
//! | [`Static`] | — | a fixed list |
//! | [`dynamic`] | — | a [`DynamicHandle`] your code drives: insert, remove, replace |
//! | `dns::Dns` | `dns` (default) | A/AAAA or SRV records, re-resolved at their TTL (clamped 1 s – 60 s) |
//! | `file::Watch` | `file` (default) | a JSON or TOML endpoint list, polled; renames and ConfigMap symlink swaps included |
//! | `kubernetes::Kubernetes` | `kubernetes` | the ready endpoints of a Service's EndpointSlices, through kube-rs |
//!
//! The DNS, file and Kubernetes sources all work the same way: a builder,
//! then `spawn()`, which starts one task on the current Tokio runtime and
//! returns the [`Dynamic`] stream to give to
//! [`Builder::discover`](crate::stack::Builder::discover). The task owns a
//! [`DynamicHandle`], replaces the set with each good answer, keeps the last
//! good set through failures (logging each, naming the source and the
//! error), and stops when the balancer drops the stream
//! ([`DynamicHandle::closed`]). Removed endpoints drain: their in-flight
//! requests finish, new ones go elsewhere.
//!
//! ```no_run
//! # #[cfg(feature = "dns")]
//! # async fn f() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use palisade::discover::dns::Dns;
//!
//! let users = palisade::Client::builder("users")
//!     .discover(Dns::parse("_http._tcp.users.internal")?.spawn()?)
//!     .http(palisade::http::hyper_client::<palisade::retry::ReplayBody<Full<Bytes>>>())
//!     .build()?;
//! # let _ = users;
//! # Ok(())
//! # }
//! ```
//!
//! Any other source plugs in as it is: a stream of
//! `Result<Change<K, Endpoint>, E>` is a `Discover`. To adapt a source that
//! yields something else (say, socket addresses), map it:
//!
//! ```
//! use futures::{stream, StreamExt};
//! use palisade::discover::Endpoint;
//! use std::net::SocketAddr;
//! use tower::discover::Change;
//!
//! let addrs: Vec<SocketAddr> = vec!["127.0.0.1:8080".parse().unwrap()];
//! let source = stream::iter(addrs).map(|addr| {
//!     Ok::<_, std::convert::Infallible>(Change::Insert(addr, Endpoint::from(addr)))
//! });
//! # let _ = source;
//! ```
//!
//! When a source fails (yields `Err`) the balancer logs it and keeps its last
//! set; when a source ends, the balancer keeps its last set for good.

#[cfg(any(feature = "file", feature = "proxy"))]
mod spec;

#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;

pub use crate::endpoint::{Address, Endpoint, EndpointError};
#[cfg(any(feature = "file", feature = "proxy"))]
pub use spec::EndpointSpec;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use futures::task::AtomicWaker;
use tower::discover::Change;

/// A fixed list of endpoints, keyed by address.
///
/// It yields one `Insert` per endpoint and then stays pending (it never ends),
/// so the balancer keeps the set. Later duplicates of an address replace
/// earlier ones.
///
/// ```
/// use palisade::discover::Static;
///
/// let endpoints = Static::parse(["127.0.0.1:8081", "127.0.0.1:8082"])?;
/// assert_eq!(endpoints.len(), 2);
/// assert!(Static::parse(["127.0.0.1:8081", "nope"]).is_err());
/// # Ok::<(), palisade::discover::EndpointError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "discovery does nothing unless given to a balancer"]
pub struct Static {
    pending: VecDeque<Endpoint>,
}

impl Static {
    /// A static list of endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Static {
        let mut pending: VecDeque<Endpoint> = VecDeque::new();
        for ep in endpoints {
            pending.retain(|e| e.address() != ep.address());
            pending.push_back(ep);
        }
        Static { pending }
    }

    /// Parses each address (see [`Endpoint::parse`]); the first bad one is the
    /// error, naming it.
    pub fn parse<I>(addresses: I) -> Result<Static, EndpointError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let endpoints = addresses
            .into_iter()
            .map(|a| Endpoint::parse(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Static::new(endpoints))
    }

    /// How many endpoints are still to be yielded.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether there is nothing left to yield.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl Stream for Static {
    type Item = Result<Change<Address, Endpoint>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.pending.pop_front() {
            Some(ep) => Poll::Ready(Some(Ok(Change::Insert(ep.address().clone(), ep)))),
            None => Poll::Pending,
        }
    }
}

/// Creates a [`DynamicHandle`] to change a set of endpoints at run time, and
/// the [`Dynamic`] stream that feeds the changes to a balancer.
///
/// The handle stores the *desired* set; the stream yields the difference
/// between it and what the stream last yielded. Rapid updates therefore
/// coalesce (memory is bounded by the set's size, never by the number of
/// updates), and a balancer that falls behind catches up to the latest set,
/// not through every intermediate one.
///
/// The stream ends when every handle is dropped; the balancer then keeps the
/// last set.
///
/// ```
/// use palisade::discover::{self, Endpoint};
///
/// let (handle, discover) = discover::dynamic();
/// handle.insert(Endpoint::parse("127.0.0.1:8081")?);
/// handle.insert(Endpoint::parse("127.0.0.1:8082")?);
/// handle.remove(&"127.0.0.1:8081".parse()?);
/// assert_eq!(handle.len(), 1);
/// # let _ = discover;
/// # Ok::<(), palisade::discover::EndpointError>(())
/// ```
pub fn dynamic() -> (DynamicHandle, Dynamic) {
    let shared = Arc::new(DynamicShared {
        desired: Mutex::new(HashMap::new()),
        version: AtomicU64::new(0),
        waker: AtomicWaker::new(),
        handles: AtomicU64::new(1),
        closed: AtomicBool::new(false),
        closed_notify: tokio::sync::Notify::new(),
    });
    (
        DynamicHandle {
            shared: shared.clone(),
        },
        Dynamic {
            shared,
            seen: 0,
            current: HashMap::new(),
            pending: VecDeque::new(),
        },
    )
}

struct DynamicShared {
    desired: Mutex<HashMap<Address, Endpoint>>,
    version: AtomicU64,
    waker: AtomicWaker,
    handles: AtomicU64,
    /// Set when the [`Dynamic`] stream is dropped; `closed_notify` wakes
    /// [`DynamicHandle::closed`].
    closed: AtomicBool,
    closed_notify: tokio::sync::Notify,
}

impl DynamicShared {
    fn update<R>(&self, f: impl FnOnce(&mut HashMap<Address, Endpoint>) -> R) -> R {
        let mut desired = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut desired);
        self.version.fetch_add(1, Ordering::Release);
        drop(desired);
        self.waker.wake();
        out
    }
}

/// Changes the endpoint set of a [`Dynamic`] source; cheap to clone.
pub struct DynamicHandle {
    shared: Arc<DynamicShared>,
}

impl Clone for DynamicHandle {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        DynamicHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for DynamicHandle {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.waker.wake();
        }
    }
}

impl std::fmt::Debug for DynamicHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicHandle")
            .field("len", &self.len())
            .finish()
    }
}

impl DynamicHandle {
    /// Adds an endpoint, or replaces the one with the same address.
    pub fn insert(&self, endpoint: Endpoint) {
        self.shared.update(|set| {
            set.insert(endpoint.address().clone(), endpoint);
        })
    }

    /// Removes the endpoint with this address; returns whether it was there.
    /// Its in-flight requests finish; it gets no new ones.
    pub fn remove(&self, address: &Address) -> bool {
        self.shared.update(|set| set.remove(address).is_some())
    }

    /// Replaces the whole set.
    pub fn replace(&self, endpoints: impl IntoIterator<Item = Endpoint>) {
        let new: HashMap<Address, Endpoint> = endpoints
            .into_iter()
            .map(|ep| (ep.address().clone(), ep))
            .collect();
        self.shared.update(|set| *set = new)
    }

    /// How many endpoints the desired set holds.
    pub fn len(&self) -> usize {
        self.shared
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether the desired set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The desired set, sorted by address.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let set = self
            .shared
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Endpoint> = set.values().cloned().collect();
        out.sort_by(|a, b| a.address().cmp(b.address()));
        out
    }

    /// Whether the [`Dynamic`] stream is gone (its balancer was dropped), so
    /// that nobody reads this set any more.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Completes when the [`Dynamic`] stream is dropped. A source task
    /// selects on this to stop with its balancer:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (handle, discover) = palisade::discover::dynamic();
    /// let task = tokio::spawn(async move {
    ///     loop {
    ///         tokio::select! {
    ///             _ = handle.closed() => return "stopped",
    ///             _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
    ///                 // re-read the source, then `handle.replace(...)`
    ///             }
    ///         }
    ///     }
    /// });
    /// drop(discover);
    /// assert_eq!(task.await.unwrap(), "stopped");
    /// # }
    /// ```
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.closed_notify.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

/// The discovery stream fed by a [`DynamicHandle`]; see [`dynamic`].
#[must_use = "discovery does nothing unless given to a balancer"]
pub struct Dynamic {
    shared: Arc<DynamicShared>,
    seen: u64,
    current: HashMap<Address, Endpoint>,
    pending: VecDeque<Change<Address, Endpoint>>,
}

impl std::fmt::Debug for Dynamic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dynamic")
            .field("current", &self.current.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Drop for Dynamic {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.closed_notify.notify_waiters();
    }
}

impl Dynamic {
    /// Computes the changes from `current` to the desired set.
    fn diff(&mut self) {
        let desired = self
            .shared
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.pending.clear();
        for (addr, _) in self.current.iter() {
            if !desired.contains_key(addr) {
                self.pending.push_back(Change::Remove(addr.clone()));
            }
        }
        for (addr, ep) in desired.iter() {
            if self.current.get(addr) != Some(ep) {
                self.pending
                    .push_back(Change::Insert(addr.clone(), ep.clone()));
            }
        }
        self.current.clone_from(&desired);
    }
}

impl Stream for Dynamic {
    type Item = Result<Change<Address, Endpoint>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(change) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(change)));
        }
        this.shared.waker.register(cx.waker());
        let version = this.shared.version.load(Ordering::Acquire);
        if version != this.seen {
            this.seen = version;
            this.diff();
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
        }
        if this.shared.handles.load(Ordering::Acquire) == 0 {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use futures::StreamExt;

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    fn drain(d: &mut Dynamic) -> Vec<Change<Address, Endpoint>> {
        let mut out = Vec::new();
        while let Some(Some(Ok(c))) = d.next().now_or_never() {
            out.push(c);
        }
        out
    }

    #[test]
    fn static_yields_each_once_and_dedups() {
        let mut s = Static::parse(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1"]).unwrap();
        let mut keys = Vec::new();
        while let Some(Some(Ok(Change::Insert(k, _)))) = s.next().now_or_never() {
            keys.push(k);
        }
        assert_eq!(keys, vec![addr("127.0.0.1:2"), addr("127.0.0.1:1")]);
        assert!(s.next().now_or_never().is_none(), "stays pending");
    }

    #[test]
    fn dynamic_coalesces_to_a_diff() {
        let (h, mut d) = dynamic();
        for port in 1..=100 {
            h.insert(Endpoint::parse(&format!("127.0.0.1:{port}")).unwrap());
        }
        for port in 1..=99 {
            h.remove(&addr(&format!("127.0.0.1:{port}")));
        }
        let changes = drain(&mut d);
        assert_eq!(changes.len(), 1);
        assert!(matches!(&changes[0], Change::Insert(a, _) if *a == addr("127.0.0.1:100")));

        h.replace([Endpoint::parse("127.0.0.1:5").unwrap()]);
        let mut changes = drain(&mut d);
        changes.sort_by_key(|c| matches!(c, Change::Insert(..)));
        assert!(matches!(&changes[0], Change::Remove(a) if *a == addr("127.0.0.1:100")));
        assert!(matches!(&changes[1], Change::Insert(a, _) if *a == addr("127.0.0.1:5")));

        // Re-inserting an identical endpoint yields nothing; a new weight does.
        h.insert(Endpoint::parse("127.0.0.1:5").unwrap());
        assert!(drain(&mut d).is_empty());
        h.insert(
            Endpoint::parse("127.0.0.1:5")
                .unwrap()
                .with_weight(3.0)
                .unwrap(),
        );
        assert_eq!(drain(&mut d).len(), 1);
    }

    #[tokio::test]
    async fn the_handle_learns_when_the_stream_is_dropped() {
        let (h, d) = dynamic();
        assert!(!h.is_closed());
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(d);
        assert!(h.is_closed());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("closed() completes once the stream is dropped")
            .unwrap();
        h.closed().await; // and completes at once afterwards
    }

    #[test]
    fn dynamic_ends_when_every_handle_is_dropped() {
        let (h, mut d) = dynamic();
        let h2 = h.clone();
        drop(h);
        assert!(d.next().now_or_never().is_none());
        drop(h2);
        assert!(matches!(d.next().now_or_never(), Some(None)));
    }
}
