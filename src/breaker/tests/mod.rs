//! The service breaker on paused time, over a backend whose every response
//! the test decides: the harness shared by every group of tests.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::oneshot;
use tokio_test::task::{Spawn, spawn};
use tower::ServiceExt;

use super::*;

mod cancel;
mod properties;
mod service;
mod settings;
mod state;

type Reply = Result<Response<()>, io::Error>;
type BackendFuture = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

/// Calls waiting for their answer, by call number.
type Pending = VecDeque<(usize, oneshot::Sender<Reply>)>;

/// A backend that counts its calls and answers each one when the test says.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    pending: Arc<Mutex<Pending>>,
}

impl Backend {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Answers call `id` (if it is still waiting).
    fn answer(&self, id: usize, reply: Reply) {
        let mut pending = self.pending.lock().unwrap();
        if let Some(i) = pending.iter().position(|(i, _)| *i == id) {
            let (_, tx) = pending.remove(i).unwrap();
            let _ = tx.send(reply);
        }
    }
}

impl Service<Request<()>> for Backend {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> BackendFuture {
        let id = self.calls.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().push_back((id, tx));
        Box::pin(async move {
            match rx.await {
                Ok(reply) => reply.map_err(BoxError::from),
                Err(_) => Err("the test dropped the request".into()),
            }
        })
    }
}

fn status(code: u16) -> Reply {
    Ok(Response::builder().status(code).body(()).unwrap())
}

fn reset() -> Reply {
    Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
}

type Svc = Breaker<Backend, HttpClassify>;
type Fut = ResponseFuture<BackendFuture, HttpClassify>;

/// One request through the breaker: its future, and the backend's id for it
/// when it got that far.
struct Call {
    future: Spawn<Fut>,
    id: Option<usize>,
}

struct Harness {
    backend: Backend,
    svc: Svc,
    handle: BreakerHandle,
}

impl Harness {
    fn new(layer: BreakerLayer) -> Self {
        let backend = Backend::default();
        let svc = layer.layer(backend.clone());
        let handle = layer.handle();
        Harness {
            backend,
            svc,
            handle,
        }
    }

    fn start(&mut self) -> Call {
        let before = self.backend.calls();
        // The backend is always ready.
        let mut ready = spawn(self.svc.ready());
        assert!(ready.poll().is_ready());
        drop(ready);
        let mut future = spawn(self.svc.call(Request::new(())));
        let id = (self.backend.calls() > before).then_some(before);
        if id.is_some() {
            assert!(future.poll().is_pending(), "the backend has not answered");
        }
        Call { future, id }
    }

    /// Answers `call` and returns its outcome.
    fn finish(&mut self, mut call: Call, reply: Reply) -> Result<Response<()>, Error> {
        if let Some(id) = call.id {
            self.backend.answer(id, reply);
        }
        match call.future.poll() {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("answered, yet pending"),
        }
    }

    /// A whole request answered with `reply`.
    fn send(&mut self, reply: Reply) -> Result<Response<()>, Error> {
        let call = self.start();
        self.finish(call, reply)
    }

    fn send_n(&mut self, n: usize, reply: impl Fn() -> Reply) {
        for _ in 0..n {
            let _ = self.send(reply());
        }
    }

    fn state(&self) -> BreakerState {
        self.handle.state()
    }
}

fn users() -> BreakerLayer {
    users_with(BreakerSettings::default())
}

fn users_with(settings: BreakerSettings) -> BreakerLayer {
    BreakerLayer::new("users", settings).unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn is_open(state: BreakerState) -> bool {
    matches!(state, BreakerState::Open { .. })
}

fn retry_in(err: &Error) -> Duration {
    match err {
        Error::CircuitOpen { retry_in, .. } => *retry_in,
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
}

/// A harness whose breaker just opened (at 20 failures).
fn opened(layer: BreakerLayer) -> Harness {
    let mut h = Harness::new(layer);
    h.send_n(20, || status(500));
    assert!(is_open(h.state()));
    h
}
