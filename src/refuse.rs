//! The response future of a layer that either refuses a request at once or
//! lets it run: written once, for the breaker, the rate limit, throttling
//! and the deadline.
//!
//! A layer decides in `call`: refuse (an open breaker, a spent rate, a spent
//! deadline) with [`Refusable::refused`], or run the inner service's future
//! with [`Refusable::running`] and a [`Finish`] step that sees its output
//! (to record the outcome, count an accept, name the service in an error).
//! Neither path allocates.
//!
//! ```
//! use std::future::Future;
//! use palisade::Error;
//! use palisade::refuse::{Finish, Refusable};
//!
//! /// Passes the output through.
//! struct Pass;
//! impl Finish<Result<u32, Error>> for Pass {
//!     type Response = u32;
//!     fn finish(self, output: Result<u32, Error>) -> Result<u32, Error> {
//!         output
//!     }
//! }
//!
//! /// A layer's `call`: run the request, or refuse it.
//! fn call<F>(admit: bool, future: F, refusal: impl FnOnce() -> Error) -> Refusable<F, Pass>
//! where
//!     F: Future<Output = Result<u32, Error>>,
//! {
//!     if admit { Refusable::running(future, Pass) } else { Refusable::refused(refusal()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let ran = call(true, async { Ok(7) }, || unreachable!());
//! assert_eq!(ran.await.unwrap(), 7);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;

use crate::error::Error;

/// What a layer does with its inner future's output, once, when it
/// completes: record the outcome, count it, name the service in an error.
pub trait Finish<T> {
    /// The response the layer returns.
    type Response;
    /// Turns the inner future's output into the layer's.
    fn finish(self, output: T) -> Result<Self::Response, Error>;
}

/// The [`Finish`] step of a layer that only names its service in an
/// inner error ([`Error::Inner`]) and passes a response through.
#[derive(Debug, Clone)]
pub struct NameErrors(pub(crate) std::sync::Arc<str>);

impl<T, E> Finish<Result<T, E>> for NameErrors
where
    E: Into<crate::error::BoxError>,
{
    type Response = T;

    fn finish(self, output: Result<T, E>) -> Result<T, Error> {
        output.map_err(|e| Error::inner(&self.0, None, e))
    }
}

/// The [`Finish`] step of a layer whose running future already yields the
/// layer's output (the deadline's race): nothing to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pass;

impl<T> Finish<Result<T, Error>> for Pass {
    type Response = T;

    fn finish(self, output: Result<T, Error>) -> Result<T, Error> {
        output
    }
}

/// A response future that refuses at once or runs; see the
/// [module docs](self).
#[pin_project(project = Proj)]
#[must_use = "futures do nothing unless polled"]
pub struct Refusable<F, K> {
    #[pin]
    state: State<F, K>,
}

#[pin_project(project = StateProj)]
enum State<F, K> {
    Refused {
        error: Option<Error>,
    },
    Running {
        #[pin]
        future: F,
        finish: Option<K>,
    },
}

impl<F, K> Refusable<F, K> {
    /// A request refused with `error`, without calling the inner service.
    pub fn refused(error: Error) -> Self {
        Refusable {
            state: State::Refused { error: Some(error) },
        }
    }

    /// A request running in `future`, whose output goes through `finish`.
    pub fn running(future: F, finish: K) -> Self {
        Refusable {
            state: State::Running {
                future,
                finish: Some(finish),
            },
        }
    }
}

impl<F, K> Future for Refusable<F, K>
where
    F: Future,
    K: Finish<F::Output>,
{
    type Output = Result<K::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
            StateProj::Running { future, finish } => {
                let output = ready!(future.poll(cx));
                let finish = finish.take().expect("polled after completion");
                Poll::Ready(finish.finish(output))
            }
        }
    }
}

impl<F, K> fmt::Debug for Refusable<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Refused { .. } => "Refused",
            State::Running { .. } => "Running",
        };
        f.debug_struct("Refusable")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
