//! Invariants under any sequence of operations, and under threads racing.

use proptest::prelude::*;

use super::*;
use crate::testing::paused_runtime;

#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Status5xx,
    Err,
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    Complete { newest: bool, answer: Answer },
    Cancel { index: usize },
    Advance(Duration),
}

fn op() -> impl Strategy<Value = Op> {
    let answer = prop_oneof![Just(Answer::Ok), Just(Answer::Status5xx), Just(Answer::Err)];
    prop_oneof![
        4 => Just(Op::Start),
        4 => (any::<bool>(), answer).prop_map(|(newest, answer)| Op::Complete { newest, answer }),
        1 => any::<usize>().prop_map(|index| Op::Cancel { index }),
        2 => (0u64..6000).prop_map(|ms| Op::Advance(Duration::from_millis(ms))),
    ]
}

/// Runs `ops` against a breaker, checking the invariants after every step.
async fn run(ops: Vec<Op>, probes: u32, successes_only: bool) -> Result<(), TestCaseError> {
    let sleep = secs(5);
    let layer = users_with(BreakerSettings {
        enabled: true,
        window: secs(10),
        volume_threshold: 3,
        error_threshold: 0.5,
        sleep_window: sleep,
        half_open_probes: probes,
    });
    let mut h = Harness::new(layer);
    let mut in_flight: VecDeque<Call> = VecDeque::new();
    let mut failed = false;

    for op in ops {
        match op {
            Op::Start => {
                let before = h.state();
                let probing = h.handle.core.probes_in_flight();
                let calls = h.backend.calls();
                let mut call = h.start();
                let admitted = h.backend.calls() > calls;
                match before {
                    BreakerState::Open { .. } => {
                        prop_assert!(!admitted, "open, yet the backend was called");
                    }
                    BreakerState::Closed => prop_assert!(admitted, "closed, yet rejected"),
                    BreakerState::HalfOpen => prop_assert_eq!(
                        admitted,
                        probing < probes,
                        "half-open with {} of {} probes in flight",
                        probing,
                        probes
                    ),
                }
                if admitted {
                    in_flight.push_back(call);
                } else {
                    match call.future.poll() {
                        Poll::Ready(Err(err)) => prop_assert!(err.is_circuit_open()),
                        other => prop_assert!(false, "rejected, yet {:?}", other.map(|_| ())),
                    }
                }
            }
            Op::Complete { newest, answer } => {
                let call = if newest {
                    in_flight.pop_back()
                } else {
                    in_flight.pop_front()
                };
                if let Some(call) = call {
                    let answer = if successes_only { Answer::Ok } else { answer };
                    let reply = match answer {
                        Answer::Ok => status(200),
                        Answer::Status5xx => status(500),
                        Answer::Err => reset(),
                    };
                    failed |= !matches!(answer, Answer::Ok);
                    let result = h.finish(call, reply);
                    prop_assert_eq!(result.is_ok(), !matches!(answer, Answer::Err));
                }
            }
            Op::Cancel { index } => {
                if !in_flight.is_empty() {
                    let i = index % in_flight.len();
                    drop(in_flight.remove(i));
                }
            }
            Op::Advance(by) => tokio::time::advance(by).await,
        }

        let probing = h.handle.core.probes_in_flight();
        prop_assert!(probing <= probes, "{} probes in flight", probing);
        prop_assert!(
            probing as usize <= in_flight.len(),
            "{} probes counted, {} requests in flight",
            probing,
            in_flight.len()
        );
        if !failed {
            prop_assert_eq!(h.state(), BreakerState::Closed);
            prop_assert_eq!(h.handle.transitions(), 0);
        }
    }

    // Never wedged: once nothing is in flight and the sleep window passed,
    // the next request goes through.
    in_flight.clear();
    tokio::time::advance(sleep).await;
    let calls = h.backend.calls();
    let call = h.start();
    prop_assert_eq!(h.backend.calls(), calls + 1, "wedged in {:?}", h.state());
    let _ = h.finish(call, status(200));
    prop_assert_eq!(h.state(), BreakerState::Closed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_for_any_sequence(
        ops in proptest::collection::vec(op(), 0..200),
        probes in 1u32..=3,
    ) {
        paused_runtime().block_on(run(ops, probes, false))?;
    }

    #[test]
    fn only_successes_never_open(
        ops in proptest::collection::vec(op(), 0..200),
        probes in 1u32..=3,
    ) {
        paused_runtime().block_on(run(ops, probes, true))?;
    }
}

/// Threads racing through admission, outcomes and cancellation on the real
/// clock, with a zero sleep window so every state is visited often.
#[test]
fn concurrent_use_never_exceeds_the_probe_limit_or_wedges() {
    let layer = users_with(BreakerSettings {
        volume_threshold: 1,
        sleep_window: Duration::ZERO,
        half_open_probes: 2,
        ..BreakerSettings::default()
    });
    let handle = layer.handle();
    let core = handle.core.clone();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let core = &core;
            s.spawn(move || {
                let mut seed = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..20_000 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if let Ok(permit) = core.admit() {
                        assert!(core.probes_in_flight() <= 2);
                        match seed % 3 {
                            0 => permit.record(false),
                            1 => permit.record(true),
                            _ => drop(permit),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(core.probes_in_flight(), 0);
    assert!(core.admit().is_ok(), "wedged in {:?}", handle.state());
    assert!(
        handle.transitions() > 10,
        "{} transitions",
        handle.transitions()
    );
}
