//! Failure accrual end to end: a backend killed mid-run (connections
//! refused) is ejected, probed, and back to its fair share soon after it
//! returns. Real hyper servers on 127.0.0.1, real time.
//!
//! This is also the measurement in `benches/README.md`: run it with
//! `cargo test --test ejection_http -- --nocapture` to see the figures.

#![cfg(feature = "demo")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade::Client;
use palisade::Hyper;
use palisade::demo::{Backend, Behavior};
use palisade::discover::Endpoint;
use palisade::http::hyper_client;
use tokio::time::Instant;
use tower::ServiceExt;

type TestClient = Hyper<Full<Bytes>>;

/// Attempts sent to the killed backend's address, and how many of them
/// failed (from the balancer's view).
fn attempts_on(client: &TestClient, addr: std::net::SocketAddr) -> (u64, u64) {
    client
        .endpoint_stats()
        .into_iter()
        .find(|s| s.address == addr.into())
        .map_or((0, 0), |s| (s.requests, s.failures))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_ejected_and_recovers_its_share() {
    let behavior = Behavior::new().latency(Duration::from_millis(5));
    let mut fleet = Vec::new();
    for _ in 0..5 {
        fleet.push(Backend::spawn(behavior).await.unwrap());
    }
    let client: TestClient = Client::builder("test")
        .endpoints(fleet.iter().map(|b| Endpoint::from(b.addr())))
        .http(hyper_client())
        .build()
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_until(|c| c.endpoint_count() == 5),
    )
    .await
    .unwrap();

    // Steady load from 8 callers until told to stop; count what they see.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop, ok, failed) =
                (client.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = http::Request::get("http://test/")
                        .body(Full::<Bytes>::default())
                        .unwrap();
                    match client.clone().oneshot(req).await {
                        Ok(rsp) if rsp.status() == 200 => {
                            rsp.into_body().collect().await.unwrap();
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = fleet.remove(0);
    let addr = victim.addr();
    let before_kill = attempts_on(&client, addr);
    victim.shutdown().await;
    let killed_at = Instant::now();

    // Dead for 3 s: after its first refusals it is penalised (and, after
    // five failures in a row, ejected), so it sees only a few tries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (attempts, failures) = attempts_on(&client, addr);
    // Attempts that failed on it: the ones in flight when it died, and the
    // tries after (each retried elsewhere).
    let wasted = failures - before_kill.1;
    let tried_while_dead = attempts - before_kill.0;
    let stats = client.endpoint_stats();
    let victim_stats = stats.iter().find(|s| s.address == addr.into()).unwrap();
    eprintln!("while dead: {victim_stats:?}");

    // Back on the same address.
    let back = Backend::spawn_on(addr, behavior).await.unwrap();
    let returned_at = Instant::now();
    // Fair share is 20 %; wait until a 250 ms window gives it at least 15 %.
    let mut recovered = None;
    while returned_at.elapsed() < Duration::from_secs(20) {
        let (mine, all) = (
            back.requests(),
            back.requests() + fleet.iter().map(Backend::requests).sum::<u64>(),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mine = back.requests() - mine;
        let all = back.requests() + fleet.iter().map(Backend::requests).sum::<u64>() - all;
        if all > 0 && mine as f64 / all as f64 >= 0.15 {
            recovered = Some(returned_at.elapsed());
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let recovered = recovered.expect("the backend never got its fair share back");
    let dead_for = returned_at - killed_at;
    eprintln!(
        "killed backend: {failed} of {} requests failed at the caller; {wasted} attempts failed on it \
         ({tried_while_dead} started while it was dead for {:.1} s); fair share again {:.2} s after it returned",
        ok + failed,
        dead_for.as_secs_f64(),
        recovered.as_secs_f64()
    );
    assert_eq!(failed, 0, "retries absorb a refused connection");
    assert!(wasted <= 20, "{wasted} attempts went to the dead backend");
    // Its penalty when it returned was at most 4 s (1 s, then doubled twice).
    assert!(
        recovered <= Duration::from_secs(5) + Duration::from_secs(1),
        "{recovered:?}"
    );
}
