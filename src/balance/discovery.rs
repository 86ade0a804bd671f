//! The balancer's discovery task: it owns the discovery stream and the
//! endpoint factory, applies changes to its own map of slots, and publishes
//! a new endpoint set for the request path to load. Nothing here runs per
//! request.

use std::pin::Pin;

use rand::RngExt;

use super::*;

/// Most changes applied in one round, before the task yields to the other
/// tasks on its worker: a round of 1024 changes takes about half a
/// millisecond (`benches/scale.rs`), so requests on the same worker never
/// wait long on discovery however many changes keep coming.
pub(super) const MAX_BATCH: usize = 1024;

/// Applies discovery changes to the published set until the balancer is
/// dropped or the source ends (the last set is kept).
///
/// Each round applies the changes that are ready, up to [`MAX_BATCH`] (a
/// change is read only when the round has room for it, so none is ever
/// read and dropped), then yields. The set is published when the source
/// has nothing more ready, or once the changes applied since the last
/// publication reach a quarter of the set (at least [`MAX_BATCH`]): a
/// publication copies the whole set, so this keeps its cost per change
/// constant however large the set, while a burst shows in the set within
/// a few rounds; see [`publish`].
pub(super) async fn discover_task<D, N, S, C>(
    discover: D,
    mut new_endpoint: N,
    shared: Weak<Shared<S, C>>,
    mut close: oneshot::Receiver<()>,
) where
    D: Discover<Service = Endpoint>,
    D::Key: Hash + Eq + Clone + fmt::Debug,
    D::Error: Into<BoxError>,
    N: NewEndpoint<Service = S>,
{
    let mut discover = pin!(discover);
    let mut slots: Slots<D::Key, S> = Slots::default();
    // Changes applied and not yet published.
    let mut unpublished = 0;
    loop {
        // Boxed at once: the source's own error type need not be `Send`,
        // and this value lives across the wait below.
        let ready = futures::future::poll_fn(|cx| discover.as_mut().poll_discover(cx))
            .now_or_never()
            .map(boxed);
        let first = match ready {
            Some(change) => change,
            None => {
                if unpublished > 0 {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    publish(&shared, &slots);
                    unpublished = 0;
                }
                let next = futures::future::poll_fn(|cx| discover.as_mut().poll_discover(cx));
                tokio::select! {
                    biased;
                    _ = &mut close => return,
                    change = next => boxed(change),
                }
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let round = apply_round(&shared, &mut discover, &mut slots, &mut new_endpoint, first);
        unpublished += round.read;
        if round.ended {
            publish(&shared, &slots);
            tracing::info!(service = %shared.name, endpoints = slots.len(), "discovery ended; keeping the last endpoint set");
            return;
        }
        if round.drained || unpublished >= (slots.len() / 4).max(MAX_BATCH) {
            publish(&shared, &slots);
            unpublished = 0;
        }
        drop(shared);
        // Requests on this worker run before the next round.
        tokio::task::yield_now().await;
    }
}

/// A change from the source, its error boxed.
fn boxed<K, E: Into<BoxError>>(
    change: Option<Result<Change<K, Endpoint>, E>>,
) -> Option<Result<Change<K, Endpoint>, BoxError>> {
    change.map(|change| change.map_err(Into::into))
}

/// What one round of changes did.
struct Round {
    /// Changes (and errors) read.
    read: usize,
    /// The source had nothing more ready.
    drained: bool,
    /// The source ended.
    ended: bool,
}

/// Applies `change` and then the changes that are ready, up to
/// [`MAX_BATCH`] in all.
fn apply_round<D, N, S, C>(
    shared: &Shared<S, C>,
    discover: &mut Pin<&mut D>,
    slots: &mut Slots<D::Key, S>,
    new_endpoint: &mut N,
    mut change: Option<Result<Change<D::Key, Endpoint>, BoxError>>,
) -> Round
where
    D: Discover<Service = Endpoint>,
    D::Key: Hash + Eq + Clone + fmt::Debug,
    D::Error: Into<BoxError>,
    N: NewEndpoint<Service = S>,
{
    // One seed for every endpoint this round adds, sampled when the first
    // one needs it.
    let mut seed = None;
    let mut read = 1;
    loop {
        match change {
            None => {
                return Round {
                    read: read - 1,
                    drained: true,
                    ended: true,
                };
            }
            Some(Ok(change)) => apply(shared, slots, new_endpoint, &mut seed, change),
            Some(Err(e)) => {
                tracing::warn!(service = %shared.name, error = %e, "discovery failed; keeping the last endpoint set");
            }
        }
        // A change is read only when this round has room for it.
        if read == MAX_BATCH {
            return Round {
                read,
                drained: false,
                ended: false,
            };
        }
        match futures::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)).now_or_never() {
            Some(next) => {
                change = boxed(next);
                read += 1;
            }
            None => {
                return Round {
                    read,
                    drained: true,
                    ended: false,
                };
            }
        }
    }
}

/// Publishes the slots as the new endpoint set and wakes its waiters.
///
/// This copies the whole set (a pointer per endpoint; the alias table
/// too when the weights differ): O(set) per publication, not O(changes).
/// That is the price of a pick that reads one flat, immutable `Vec` with
/// no lock and no extra indirection, and it is paid rarely: a publication
/// waits until the source has nothing more ready or a quarter of the set
/// has changed, so a burst of k changes costs k applies and at most
/// `1 + 4k / set` copies, O(k) in all. Measured (`benches/scale.rs`,
/// release, one worker): a copy costs about 13 ns an endpoint (0.65 ms at
/// 50,000), and the cost per change of a burst stays nearly flat: 0.25 µs
/// at 1,000 endpoints (all in cache), 0.35-0.4 µs at 10,000, 0.45-0.55 µs
/// at 50,000. What does pay O(set) per change is a source that trickles
/// changes in one at a time into a very large set: 0.12 ms a change at
/// 10,000, 0.65 ms at 50,000; changes that arrive
/// during one publication are coalesced into the next, so that cost is
/// bounded by the CPU of one copy at a time however fast they come.
fn publish<K, S, C>(shared: &Shared<S, C>, slots: &Slots<K, S>) {
    let set = EndpointSet::new(slots.slots.clone(), slots.weights.len() <= 1);
    // Recounted only when some endpoint is ejected: a removed one may have
    // been. (With none, there is nothing to correct: a new endpoint is
    // never ejected, and reading every endpoint's health was a quarter of
    // a publication's cost at 50,000.)
    if shared.ejected.load(Ordering::Relaxed) > 0 {
        let ejected = set
            .slots
            .iter()
            .filter(|s| s.load.health.is_ejected())
            .count();
        shared.ejected.store(ejected, Ordering::Relaxed);
    }
    tracing::debug!(service = %shared.name, endpoints = set.len(), "endpoint set updated");
    shared.set.store(Arc::new(set));
    shared.changed.notify_waiters();
}

/// The discovery task's endpoints: the slots in the order they are
/// published, with an index by key, so that inserting, replacing and
/// removing one (swap-remove) are O(1) and the seed can sample the slots.
struct Slots<K, S> {
    slots: Vec<Arc<Slot<S>>>,
    /// `keys[i]` is the key of `slots[i]`.
    keys: Vec<K>,
    index: HashMap<K, usize>,
    /// How many slots have each weight (by its bits): the weights are
    /// uniform when there is at most one.
    weights: HashMap<u64, usize>,
}

impl<K, S> Default for Slots<K, S> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            keys: Vec::new(),
            index: HashMap::new(),
            weights: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, S> Slots<K, S> {
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn get(&self, key: &K) -> Option<&Arc<Slot<S>>> {
        self.index.get(key).map(|&i| &self.slots[i])
    }

    /// Adds the slot, or replaces the one under the same key in place.
    fn insert(&mut self, key: K, slot: Arc<Slot<S>>) {
        *self
            .weights
            .entry(slot.endpoint.weight().to_bits())
            .or_default() += 1;
        match self.index.get(&key) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.slots[i], slot);
                self.forget_weight(&old);
            }
            None => {
                self.index.insert(key.clone(), self.slots.len());
                self.keys.push(key);
                self.slots.push(slot);
            }
        }
    }

    /// Removes the slot under `key`; the last slot takes its place.
    fn remove(&mut self, key: &K) -> Option<Arc<Slot<S>>> {
        let i = self.index.remove(key)?;
        self.keys.swap_remove(i);
        let slot = self.slots.swap_remove(i);
        if let Some(moved) = self.keys.get(i) {
            *self.index.get_mut(moved).expect("every key is indexed") = i;
        }
        self.forget_weight(&slot);
        Some(slot)
    }

    fn forget_weight(&mut self, slot: &Slot<S>) {
        let bits = slot.endpoint.weight().to_bits();
        if let Some(count) = self.weights.get_mut(&bits) {
            *count -= 1;
            if *count == 0 {
                self.weights.remove(&bits);
            }
        }
    }
}

fn apply<K, N, S, C>(
    shared: &Shared<S, C>,
    slots: &mut Slots<K, S>,
    new_endpoint: &mut N,
    seed: &mut Option<Duration>,
    change: Change<K, Endpoint>,
) where
    K: Hash + Eq + Clone + fmt::Debug,
    N: NewEndpoint<Service = S>,
{
    match change {
        Change::Remove(key) => {
            if let Some(slot) = slots.remove(&key) {
                tracing::debug!(service = %shared.name, endpoint = %slot.endpoint.address(), "endpoint removed");
            }
        }
        Change::Insert(key, endpoint) => {
            let service = match new_endpoint.new_endpoint(&endpoint) {
                Ok(service) => service,
                Err(e) => {
                    let e: BoxError = e.into();
                    tracing::error!(
                        service = %shared.name,
                        endpoint = %endpoint.address(),
                        error = %e,
                        "could not build a client for the endpoint; it is left out",
                    );
                    return;
                }
            };
            let load = match slots.get(&key) {
                Some(old) if old.endpoint.address() == endpoint.address() => old.load.clone(),
                _ => {
                    let seed = *seed.get_or_insert_with(|| seed_rtt(shared, &slots.slots));
                    Arc::new(Load::new(
                        seed,
                        Instant::now(),
                        &shared.ejection,
                        shared.config.endpoint_max_in_flight,
                        shared.room.clone(),
                        Duration::from_nanos(shared.config.stall_after_ns(seed.as_nanos() as f64)),
                    ))
                }
            };
            tracing::debug!(service = %shared.name, endpoint = %endpoint.address(), weight = endpoint.weight(), "endpoint added");
            slots.insert(
                key,
                Arc::new(Slot {
                    endpoint,
                    service,
                    load,
                }),
            );
        }
    }
}

/// Endpoints sampled for a new endpoint's seed estimate: the median of
/// this many is within a few percentiles of the set's median, at a cost
/// that does not grow with the set.
const SEED_SAMPLE: usize = 63;

/// The median current estimate of `slots` (of a random sample of
/// [`SEED_SAMPLE`] when there are more), or the default when empty; never
/// below the floor.
fn seed_rtt<S, C>(shared: &Shared<S, C>, slots: &[Arc<Slot<S>>]) -> Duration {
    let now = Instant::now();
    let estimate = |s: &Arc<Slot<S>>| s.load.ewma.latency_ns(now, shared.config.decay);
    let mut rtts: Vec<f64> = if slots.len() <= SEED_SAMPLE {
        slots.iter().map(estimate).collect()
    } else {
        let mut rng = rand::rng();
        (0..SEED_SAMPLE)
            .map(|_| estimate(&slots[rng.random_range(0..slots.len())]))
            .collect()
    };
    let seed = if rtts.is_empty() {
        shared.config.default_rtt
    } else {
        let mid = rtts.len() / 2;
        let (_, median, _) = rtts.select_nth_unstable_by(mid, f64::total_cmp);
        Duration::from_nanos(*median as u64)
    };
    seed.max(shared.config.min_rtt)
}
