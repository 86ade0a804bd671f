//! Permits and deadlines: what a cancelled or cut-off call counts.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_returns_its_permit() {
    let mut h = opened(users());
    tokio::time::advance(secs(5)).await;
    let probe = h.start();
    assert!(h.send(status(200)).unwrap_err().is_circuit_open());
    drop(probe);
    assert_eq!(h.handle.core.probes_in_flight(), 0);
    assert_eq!(
        h.state(),
        BreakerState::HalfOpen,
        "a cancel decides nothing"
    );

    let calls = h.backend.calls();
    let probe = h.start();
    assert_eq!(h.backend.calls(), calls + 1, "the next request probes");
    let _ = h.finish(probe, status(200));
    assert_eq!(h.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_counts_nothing_while_closed() {
    let mut h = Harness::new(users());
    h.send_n(19, || status(500));
    for _ in 0..10 {
        drop(h.start());
    }
    assert_eq!(h.state(), BreakerState::Closed);
    let _ = h.send(status(500));
    assert!(is_open(h.state()));
}

/// A call the deadline cuts off while it waits on the service is a
/// failure: a hung service opens the breaker with the defaults, with no
/// per-try timeout. A call cancelled before its deadline counts nothing.
#[tokio::test(start_paused = true)]
async fn a_call_cut_off_by_its_deadline_is_a_failure() {
    let mut h = Harness::new(users());
    let start_with_deadline = |h: &mut Harness| {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(crate::facts::Deadline::after(secs(1)));
        let mut ready = spawn(h.svc.ready());
        assert!(ready.poll().is_ready());
        drop(ready);
        let mut future = spawn(h.svc.call(req));
        assert!(future.poll().is_pending(), "the service never answers");
        future
    };
    // Cancelled before the deadline (a hedge won, the caller left).
    for _ in 0..25 {
        drop(start_with_deadline(&mut h));
    }
    assert_eq!(h.state(), BreakerState::Closed, "a cancel decides nothing");
    // Cut off at the deadline, as the deadline layer above does.
    let mut cut = Vec::new();
    for _ in 0..20 {
        cut.push(start_with_deadline(&mut h));
    }
    tokio::time::advance(secs(1)).await;
    drop(cut);
    assert!(is_open(h.state()), "{:?}", h.state());
}
