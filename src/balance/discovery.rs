//! The balancer's discovery task: it owns the discovery stream and the
//! endpoint factory, applies changes to its own map of slots, and publishes
//! a new endpoint set for the request path to load. Nothing here runs per
//! request.

use super::*;

/// Most changes applied before the set is republished, so a flood of changes
/// cannot delay publication indefinitely.
pub(super) const MAX_BATCH: usize = 1024;

/// Applies discovery changes to the published set until the balancer is
/// dropped or the source ends (the last set is kept).
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
    let mut slots: HashMap<D::Key, Arc<Slot<S>>> = HashMap::new();
    loop {
        let next = futures::future::poll_fn(|cx| discover.as_mut().poll_discover(cx));
        let mut change = tokio::select! {
            biased;
            _ = &mut close => return,
            change = next => change,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut ended = false;
        for read in 1..=MAX_BATCH {
            match change {
                None => {
                    ended = true;
                    break;
                }
                Some(Ok(change)) => apply(&shared, &mut slots, &mut new_endpoint, change),
                Some(Err(e)) => {
                    let e: BoxError = e.into();
                    tracing::warn!(service = %shared.name, error = %e, "discovery failed; keeping the last endpoint set");
                }
            }
            // A change is read only when this batch has room for it: one
            // read on the last pass used to be dropped.
            if read == MAX_BATCH {
                break;
            }
            match futures::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)).now_or_never()
            {
                Some(next) => change = next,
                None => break,
            }
        }
        let set = EndpointSet::new(slots.values().cloned().collect());
        let ejected = set
            .slots
            .iter()
            .filter(|s| s.load.health.is_ejected())
            .count();
        shared.ejected.store(ejected, Ordering::Relaxed);
        tracing::debug!(service = %shared.name, endpoints = set.len(), "endpoint set updated");
        shared.set.store(Arc::new(set));
        shared.changed.notify_waiters();
        if ended {
            tracing::info!(service = %shared.name, endpoints = slots.len(), "discovery ended; keeping the last endpoint set");
            return;
        }
    }
}

fn apply<K, N, S, C>(
    shared: &Shared<S, C>,
    slots: &mut HashMap<K, Arc<Slot<S>>>,
    new_endpoint: &mut N,
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
                    let seed = seed_rtt(shared, slots.values());
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

/// The median current estimate of `slots`, or the default when empty; never
/// below the floor.
fn seed_rtt<'a, S: 'a, C>(
    shared: &Shared<S, C>,
    slots: impl Iterator<Item = &'a Arc<Slot<S>>>,
) -> Duration {
    let now = Instant::now();
    let mut rtts: Vec<f64> = slots
        .map(|s| s.load.ewma.latency_ns(now, shared.config.decay))
        .collect();
    let seed = if rtts.is_empty() {
        shared.config.default_rtt
    } else {
        let mid = rtts.len() / 2;
        let (_, median, _) = rtts.select_nth_unstable_by(mid, f64::total_cmp);
        Duration::from_nanos(*median as u64)
    };
    seed.max(shared.config.min_rtt)
}
