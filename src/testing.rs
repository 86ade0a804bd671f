//! In-memory endpoints for unit tests on paused time: every latency is
//! virtual, so tests that use them are deterministic in time.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::discover::Discover;
use tower::service_fn;

use crate::balance::{Balance, BalanceSettings, EjectionSettings};
use crate::classify::HttpClassify;
use crate::discover::{Address, Endpoint};
use crate::error::BoxError;
use crate::settings::SettingsError;

/// How one in-memory endpoint answers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answer {
    pub(crate) latency: Duration,
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<u64>,
    /// Fail with "connection refused" instead of answering.
    pub(crate) refuse: bool,
}

impl Answer {
    pub(crate) fn ok(ms: u64) -> Self {
        Answer {
            latency: Duration::from_millis(ms),
            status: StatusCode::OK,
            retry_after: None,
            refuse: false,
        }
    }

    pub(crate) fn status(mut self, status: u16) -> Self {
        self.status = StatusCode::from_u16(status).unwrap();
        self
    }

    pub(crate) fn refused() -> Self {
        Answer {
            refuse: true,
            ..Answer::ok(0)
        }
    }
}

/// A fleet of in-memory endpoints whose answers can change at run time; it
/// counts the requests each endpoint receives and keeps every body it read.
#[derive(Clone, Default)]
pub(crate) struct Fleet {
    answers: Arc<Mutex<HashMap<Address, Answer>>>,
    counts: Arc<Mutex<HashMap<Address, Arc<AtomicU64>>>>,
    bodies: Arc<Mutex<Vec<(Address, Bytes, http::HeaderMap)>>>,
}

pub(crate) type Svc<B> = tower::util::BoxCloneSyncService<Request<B>, Response<()>, BoxError>;

impl Fleet {
    pub(crate) fn set(&self, addr: &str, answer: Answer) -> Endpoint {
        let ep = Endpoint::parse(addr).unwrap();
        self.answers
            .lock()
            .unwrap()
            .insert(ep.address().clone(), answer);
        ep
    }

    pub(crate) fn count(&self, addr: &str) -> u64 {
        let addr: Address = addr.parse().unwrap();
        self.counts
            .lock()
            .unwrap()
            .get(&addr)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn total(&self) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .values()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Every request each endpoint read: address, body, headers, in order.
    pub(crate) fn received(&self) -> Vec<(Address, Bytes, http::HeaderMap)> {
        self.bodies.lock().unwrap().clone()
    }

    pub(crate) fn factory<B>(
        &self,
    ) -> impl FnMut(&Endpoint) -> Result<Svc<B>, BoxError> + Send + 'static
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let fleet = self.clone();
        move |ep: &Endpoint| {
            let addr = ep.address().clone();
            let count = fleet
                .counts
                .lock()
                .unwrap()
                .entry(addr.clone())
                .or_default()
                .clone();
            let fleet = fleet.clone();
            Ok(Svc::new(service_fn(move |req: Request<B>| {
                count.fetch_add(1, Ordering::Relaxed);
                let answer = fleet.answers.lock().unwrap()[&addr];
                let (fleet, addr) = (fleet.clone(), addr.clone());
                async move {
                    if answer.refuse {
                        return Err::<Response<()>, BoxError>(Box::new(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            "connection refused",
                        )));
                    }
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map_err(Into::into)?.to_bytes();
                    fleet
                        .bodies
                        .lock()
                        .unwrap()
                        .push((addr, body, parts.headers));
                    tokio::time::sleep(answer.latency).await;
                    let mut rsp = Response::builder().status(answer.status);
                    if let Some(secs) = answer.retry_after {
                        rsp = rsp.header("retry-after", secs.to_string());
                    }
                    Ok(rsp.body(()).unwrap())
                }
            })))
        }
    }

    pub(crate) fn balance<B, D>(
        &self,
        discover: D,
        config: BalanceSettings,
    ) -> Balance<Svc<B>, HttpClassify>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        D: Discover<Service = Endpoint> + Send + 'static,
        D::Key: Hash + Eq + Clone + fmt::Debug + Send,
        D::Error: Into<BoxError>,
    {
        self.balance_with(discover, config, EjectionSettings::default())
    }

    /// [`balance`](Self::balance) with failure accrual settings too.
    pub(crate) fn balance_with<B, D>(
        &self,
        discover: D,
        config: BalanceSettings,
        ejection: EjectionSettings,
    ) -> Balance<Svc<B>, HttpClassify>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        D: Discover<Service = Endpoint> + Send + 'static,
        D::Key: Hash + Eq + Clone + fmt::Debug + Send,
        D::Error: Into<BoxError>,
    {
        Balance::new(
            "test",
            discover,
            self.factory(),
            HttpClassify::default(),
            config,
            ejection,
        )
        .unwrap()
    }
}

/// Waits until the discovery task has applied a change (on paused time the
/// timeout fires virtually at once if it never does).
pub(crate) async fn settle_until<S, C>(b: &Balance<S, C>, done: impl Fn(&Balance<S, C>) -> bool) {
    tokio::time::timeout(Duration::from_secs(1), b.wait_until(done))
        .await
        .unwrap_or_else(|_| panic!("the balancer did not apply the change: {b:?}"));
}

/// A current-thread runtime on paused time, for tests that build their own
/// (proptests, which cannot be `#[tokio::test]`s).
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// The problems of a `validate()` result, each as `field: message` (none
/// when the settings are valid).
pub(crate) fn problems(result: Result<(), SettingsError>) -> Vec<String> {
    match result {
        Ok(()) => Vec::new(),
        Err(err) => err.problems().iter().map(ToString::to_string).collect(),
    }
}
