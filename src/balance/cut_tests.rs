//! A call cut off while it waits on an endpoint (by the retry layer's
//! per-try timeout or by the request's deadline) is the endpoint's
//! failure: with the defaults, a hung endpoint is ejected. A call
//! cancelled for any other reason (a hedge won, the caller left) is not.

use std::time::Duration;

use http::Request;
use tower::ServiceExt;

use super::*;
use crate::discover::Static;
use crate::facts::Deadline;
use crate::testing::{Answer, Fleet, settle_until};

type Body = http_body_util::Empty<bytes::Bytes>;

fn get_within(deadline: Deadline) -> Request<Body> {
    let mut req = Request::get("http://test/").body(Body::new()).unwrap();
    req.extensions_mut().insert(deadline);
    req
}

#[tokio::test(start_paused = true)]
async fn calls_cut_off_by_their_deadline_eject_a_hung_endpoint() {
    let fleet = Fleet::default();
    let eps = vec![fleet.set("127.0.0.1:1", Answer::ok(3_600_000))];
    let b = fleet.balance(Static::new(eps), BalanceSettings::default());
    settle_until(&b, |b| b.len() == 1).await;
    let stats = |b: &Balance<_, _>| b.endpoint_stats().remove(0);

    // Cancelled before their deadline: the endpoint is not blamed.
    for _ in 0..10 {
        let deadline = Deadline::after(Duration::from_secs(1));
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            b.clone().oneshot(get_within(deadline)),
        );
        assert!(cancelled.await.is_err());
    }
    assert_eq!((stats(&b).failures, stats(&b).timeouts), (0, 0));
    assert_eq!(stats(&b).state, EndpointState::Active);

    // Cut off at their deadline, as the deadline layer does: failures, and
    // five in a row eject the endpoint (the default).
    for i in 1..=5 {
        let deadline = Deadline::after(Duration::from_secs(1));
        let cut =
            tokio::time::timeout_at(deadline.instant(), b.clone().oneshot(get_within(deadline)));
        assert!(cut.await.is_err());
        assert_eq!(stats(&b).timeouts, i);
    }
    assert_eq!(stats(&b).failures, 5);
    assert!(
        matches!(stats(&b).state, EndpointState::Ejected { .. }),
        "{:?}",
        stats(&b).state
    );
}
