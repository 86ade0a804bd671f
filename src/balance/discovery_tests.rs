//! The discovery task against sources whose changes arrive in bursts: every
//! change applies, in order, however many are ready at once.

use std::collections::BTreeMap;
use std::convert::Infallible;

use futures::StreamExt;
use futures::channel::mpsc;
use proptest::prelude::*;

use super::discovery::MAX_BATCH;
use super::*;
use crate::testing::{Answer, Fleet, paused_runtime, settle_until};

type Body = http_body_util::Empty<bytes::Bytes>;
type Svc = crate::testing::Svc<Body>;
type Item = Result<Change<u16, Endpoint>, Infallible>;
type Source = mpsc::UnboundedReceiver<Item>;

/// A balancer fed by a channel: whatever is sent before the discovery task
/// runs is ready to it all at once.
fn channel_balance(
    fleet: &Fleet,
) -> (
    mpsc::UnboundedSender<Item>,
    Balance<Svc, crate::classify::HttpClassify>,
) {
    let (tx, rx): (_, Source) = mpsc::unbounded();
    (tx, fleet.balance(rx, BalanceSettings::default()))
}

/// The endpoint of key `key` at version `version`: the version changes
/// its address (not its port) and its weight, so a replace is visible.
fn endpoint(fleet: &Fleet, key: u16, version: u8) -> Endpoint {
    let addr = format!("127.0.{}.1:{}", version % 4, u32::from(key) + 1);
    fleet
        .set(&addr, Answer::ok(1))
        .with_weight(f64::from(1 + version % 3))
        .unwrap()
}

/// What the balancer currently chooses from: (address, weight), sorted.
fn published<S, C>(b: &Balance<S, C>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = b
        .endpoint_stats()
        .into_iter()
        .map(|s| (s.address.to_string(), s.weight as u64))
        .collect();
    out.sort();
    out
}

fn expected(model: &BTreeMap<u16, Endpoint>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = model
        .values()
        .map(|ep| (ep.address().to_string(), ep.weight() as u64))
        .collect();
    out.sort();
    out
}

#[tokio::test(start_paused = true)]
async fn a_burst_over_the_batch_size_applies_every_change() {
    let fleet = Fleet::default();
    let (tx, b) = channel_balance(&fleet);
    // Three batches and a bit, ready together: the batch loop used to read
    // one change past each batch's end and drop it.
    let n = (3 * MAX_BATCH + 7) as u16;
    let mut model = BTreeMap::new();
    for key in 0..n {
        let ep = endpoint(&fleet, key, 0);
        model.insert(key, ep.clone());
        tx.unbounded_send(Ok(Change::Insert(key, ep))).unwrap();
    }
    settle_until(&b, |b| b.len() == n as usize).await;
    assert_eq!(published(&b), expected(&model));

    // A lost remove would leave a dead endpoint taking traffic for good.
    for key in 10..n {
        model.remove(&key);
        tx.unbounded_send(Ok(Change::Remove(key))).unwrap();
    }
    settle_until(&b, |b| b.len() == 10).await;
    assert_eq!(published(&b), expected(&model));
}

/// One step of a discovery source.
#[derive(Debug, Clone)]
enum Op {
    /// Insert (or replace, when present) a key at a version.
    Insert(u16, u8),
    /// Remove a key (present or not).
    Remove(u16),
    /// More changes than one batch holds, over keys `0..MAX_BATCH + extra`:
    /// all inserted at a version, or all removed.
    Flood { extra: u16, insert: Option<u8> },
}

/// What the test does after sending one round's changes.
#[derive(Debug, Clone, Copy)]
enum After {
    /// Nothing: the next round's changes join these.
    Nothing,
    /// Lets the discovery task run once.
    Yield,
    /// Waits until the balancer shows the source's set.
    Settle,
}

fn op() -> impl Strategy<Value = Op> {
    // Few keys, so duplicates, replaces and re-inserts of removed keys are
    // common.
    prop_oneof![
        6 => (0u16..24, 0u8..4).prop_map(|(k, v)| Op::Insert(k, v)),
        4 => (0u16..24).prop_map(Op::Remove),
        1 => (0u16..40, proptest::option::of(0u8..4))
            .prop_map(|(extra, insert)| Op::Flood { extra, insert }),
    ]
}

fn after() -> impl Strategy<Value = After> {
    prop_oneof![
        Just(After::Nothing),
        Just(After::Yield),
        Just(After::Settle)
    ]
}

/// Sends `rounds` to a balancer and checks that it ends (and, where a
/// round says so, is along the way) on exactly the source's set.
async fn converges(rounds: Vec<(Vec<Op>, After)>) {
    let fleet = Fleet::default();
    let (tx, b) = channel_balance(&fleet);
    let mut model: BTreeMap<u16, Endpoint> = BTreeMap::new();
    let send = |change| tx.unbounded_send(Ok(change)).unwrap();
    for (ops, after) in rounds {
        for op in ops {
            match op {
                Op::Insert(key, version) => {
                    let ep = endpoint(&fleet, key, version);
                    model.insert(key, ep.clone());
                    send(Change::Insert(key, ep));
                }
                Op::Remove(key) => {
                    model.remove(&key);
                    send(Change::Remove(key));
                }
                Op::Flood { extra, insert } => {
                    for key in 0..MAX_BATCH as u16 + extra {
                        match insert {
                            Some(version) => {
                                let ep = endpoint(&fleet, key, version);
                                model.insert(key, ep.clone());
                                send(Change::Insert(key, ep));
                            }
                            None => {
                                model.remove(&key);
                                send(Change::Remove(key));
                            }
                        }
                    }
                }
            }
        }
        match after {
            After::Nothing => {}
            After::Yield => tokio::task::yield_now().await,
            After::Settle => {
                let want = expected(&model);
                settle_until(&b, |b| published(b) == want).await;
            }
        }
    }
    let want = expected(&model);
    settle_until(&b, |b| published(b) == want).await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random streams of inserts, removes and replaces (duplicates,
    /// re-inserts of removed keys, floods over the batch size) always end on
    /// the source's set: nothing stale, nothing missing.
    #[test]
    fn discovery_converges_to_the_source(
        rounds in proptest::collection::vec(
            (proptest::collection::vec(op(), 0..30), after()),
            1..8,
        ),
    ) {
        paused_runtime().block_on(converges(rounds));
    }
}

#[tokio::test(start_paused = true)]
async fn discovery_yields_between_rounds() {
    // A source with many rounds' worth of changes always ready: the task
    // used to apply them all in one poll, holding the worker that requests
    // on this (current-thread) runtime need.
    let fleet = Fleet::default();
    let rounds = 8;
    let n = (rounds * MAX_BATCH) as u16;
    let changes: Vec<_> = (0..n)
        .map(|key| Ok::<_, Infallible>(Change::Insert(key, endpoint(&fleet, key, 0))))
        .collect();
    let source = futures::stream::iter(changes).chain(futures::stream::pending());
    let b = fleet.balance::<Body, _>(source, BalanceSettings::default());
    // Each turn this task gets while the set fills is one a request would
    // have had.
    let mut turns = 0;
    while b.len() < n as usize {
        tokio::task::yield_now().await;
        turns += 1;
        assert!(turns < 1000, "the set never filled: {}", b.len());
    }
    assert!(turns >= rounds, "{turns} turns in {rounds} rounds");
    assert_eq!(b.len(), n as usize);
}
