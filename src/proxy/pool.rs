//! Upstream connection pools, one per thread that serves requests.
//!
//! The proxy serves on one current-thread runtime per core (see
//! `server::run`). A pool shared by every core would let a request taken
//! on one core use a connection whose task runs on another, and every such
//! request crosses threads twice (the request to the connection's task,
//! the response back): two wake-ups through the kernel. [`PerThread`]
//! gives each thread its own client, built on first use from the same
//! settings, so a connection's task runs on the thread whose requests use
//! it. The balancer, its estimates and ejections, stay shared: only the
//! transport under them is per thread.

use std::any::Any;
use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use tower::Service;

/// A client built once per thread that uses it; clones share the factory
/// (and so each thread's client). See the [module docs](self).
///
/// For clients that are always ready (hyper-util's legacy `Client` is):
/// `poll_ready` answers ready, and each call goes to the calling thread's
/// client.
pub(crate) struct PerThread<C> {
    shared: Arc<Factory<C>>,
}

struct Factory<C> {
    make: Box<dyn Fn() -> C + Send + Sync>,
}

impl<C> Clone for PerThread<C> {
    fn clone(&self) -> Self {
        PerThread {
            shared: self.shared.clone(),
        }
    }
}

impl<C> std::fmt::Debug for PerThread<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerThread").finish_non_exhaustive()
    }
}

/// One thread's clients: whose factory made each (dead once every
/// `PerThread` of it is dropped), and the client.
struct Entry {
    owner: Weak<dyn Any + Send + Sync>,
    client: Box<dyn Any>,
}

thread_local! {
    static CLIENTS: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

impl<C: 'static> PerThread<C> {
    /// Clients made by `make`, one per thread.
    pub(crate) fn new(make: impl Fn() -> C + Send + Sync + 'static) -> PerThread<C> {
        PerThread {
            shared: Arc::new(Factory {
                make: Box::new(make),
            }),
        }
    }

    /// Runs `f` with this thread's client, made now if this thread has none.
    fn with<R>(&self, f: impl FnOnce(&mut C) -> R) -> R {
        let key = Arc::as_ptr(&self.shared).cast::<()>();
        CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            let found = clients
                .iter()
                .position(|e| e.owner.as_ptr().cast::<()>() == key && e.owner.strong_count() > 0);
            let index = match found {
                Some(i) => i,
                None => {
                    // Clients of pools no longer in use (a reload dropped
                    // them) go, with their idle connections.
                    clients.retain(|e| e.owner.strong_count() > 0);
                    let owner: Arc<dyn Any + Send + Sync> = self.shared.clone();
                    clients.push(Entry {
                        owner: Arc::downgrade(&owner),
                        client: Box::new((self.shared.make)()),
                    });
                    clients.len() - 1
                }
            };
            let client = clients[index]
                .client
                .downcast_mut::<C>()
                .expect("an entry's client is of its factory's type");
            f(client)
        })
    }
}

impl<C, R> Service<R> for PerThread<C>
where
    C: Service<R> + 'static,
{
    type Response = C::Response;
    type Error = C::Error;
    type Future = C::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> C::Future {
        self.with(|client| client.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone)]
    struct Made(usize);

    impl Service<()> for Made {
        type Response = usize;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<usize, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, (): ()) -> Self::Future {
            std::future::ready(Ok(self.0))
        }
    }

    fn counting() -> (PerThread<Made>, Arc<AtomicUsize>) {
        let made = Arc::new(AtomicUsize::new(0));
        let m = made.clone();
        let pool = PerThread::new(move || Made(m.fetch_add(1, Ordering::SeqCst)));
        (pool, made)
    }

    fn call(pool: &PerThread<Made>) -> usize {
        use futures::FutureExt;
        pool.clone()
            .call(())
            .now_or_never()
            .expect("a ready future")
            .unwrap()
    }

    /// Each thread gets its own client, made once; clones share them.
    #[test]
    fn one_client_per_thread() {
        let (pool, made) = counting();
        let here = call(&pool);
        assert_eq!(call(&pool.clone()), here, "a clone uses the same client");
        let there = std::thread::scope(|s| s.spawn(|| (call(&pool), call(&pool))).join().unwrap());
        assert_eq!(there.0, there.1);
        assert_ne!(there.0, here, "another thread has its own client");
        assert_eq!(made.load(Ordering::SeqCst), 2);
    }

    /// A dropped pool's clients go when the thread next makes a client,
    /// and a new pool never takes a dead one's client.
    #[test]
    fn a_dropped_pools_clients_are_released() {
        // On a thread of its own: the check counts this thread's clients.
        std::thread::spawn(|| {
            let (first, _) = counting();
            call(&first);
            drop(first);
            let (second, made) = counting();
            assert_eq!(call(&second), 0, "the new pool made its own client");
            assert_eq!(made.load(Ordering::SeqCst), 1);
            CLIENTS.with(|c| assert_eq!(c.borrow().len(), 1, "the dead entry was swept"));
        })
        .join()
        .unwrap();
    }
}
