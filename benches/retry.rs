//! Retry amplification: backend attempts per request when backends fail,
//! with palisade's retry budget against a naive "always up to 3 attempts"
//! policy, side by side. See `benches/README.md`.
//!
//! The fleet is simulated on paused Tokio time (5 in-memory endpoints, 1 ms
//! each, failing with a seeded probability), so the figures are exact and
//! the same on every machine: this measures the policy, not the computer.
//!
//! `cargo bench --bench retry`

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use palisade::balance::{Balance, BalanceSettings};
use palisade::classify::HttpClassify;
use palisade::discover::{Endpoint, Static};
use palisade::retry::{BudgetSettings, ReplayBody, RetryBudget, RetryLayer, RetrySettings};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tower::{Layer, ServiceExt, service_fn};

const ENDPOINTS: u16 = 5;
const RATE: u32 = 100;
const SECONDS: u32 = 60;

struct Outcome {
    attempts_per_request: f64,
    success: f64,
}

/// Runs `RATE × SECONDS` GETs against endpoints failing with probability
/// `failure`, through a retry layer with `budget` and 3 attempts.
fn run(failure: f64, budget: RetryBudget, seed: u64) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let attempts = Arc::new(AtomicU64::new(0));
        let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
        let factory = {
            let (attempts, rng) = (attempts.clone(), rng.clone());
            move |_: &Endpoint| {
                let (attempts, rng) = (attempts.clone(), rng.clone());
                Ok::<_, Infallible>(service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let fail = rng.lock().expect("rng").random::<f64>() < failure;
                    async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let status = if fail {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(())
                                .expect("response"),
                        )
                    }
                }))
            }
        };
        let endpoints = Static::new(
            (1..=ENDPOINTS)
                .map(|port| Endpoint::from(std::net::SocketAddr::from(([127, 0, 0, 1], port)))),
        );
        let balance = Balance::new(
            "bench",
            endpoints,
            factory,
            HttpClassify::default(),
            BalanceSettings::default(),
            palisade::balance::EjectionSettings::default(),
        )
        .expect("balance");
        tokio::time::timeout(
            Duration::from_secs(1),
            balance.wait_until(|b| b.len() == usize::from(ENDPOINTS)),
        )
        .await
        .expect("endpoints");
        let client = RetryLayer::new("bench", RetrySettings::default())
            .unwrap()
            .budget(budget)
            .layer(balance);

        let total = RATE * SECONDS;
        let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
        let mut calls = Vec::with_capacity(total as usize);
        for _ in 0..total {
            tick.tick().await;
            let req = Request::get("http://bench/")
                .body(Full::new(Bytes::new()))
                .expect("request");
            calls.push(tokio::spawn(client.clone().oneshot(req)));
        }
        let mut ok = 0u32;
        for call in calls {
            let rsp = call.await.expect("task").expect("response");
            ok += u32::from(rsp.status() == StatusCode::OK);
        }
        Outcome {
            attempts_per_request: attempts.load(Ordering::Relaxed) as f64 / f64::from(total),
            success: f64::from(ok) / f64::from(total),
        }
    })
}

fn main() {
    println!(
        "retry amplification: {ENDPOINTS} endpoints, {RATE} requests/s for {SECONDS} s (paused time), 3 attempts at most"
    );
    println!(
        "budget: palisade default (20 % of requests + 10 retries/s over 10 s); naive: no budget\n"
    );
    println!(
        "{:>8}  {:>17}  {:>15}  {:>9}  {:>15}  {:>13}",
        "failing", "budget att/req", "naive att/req", "ratio", "budget success", "naive success"
    );
    for failure in [1.0, 0.5, 0.1] {
        let budget = run(failure, RetryBudget::default(), 7);
        // "No budget": a floor far above anything this run can use.
        let naive = run(
            failure,
            RetryBudget::from_settings(&BudgetSettings {
                ratio: 0.0,
                min_per_sec: 1_000_000,
                ttl: Duration::from_secs(10),
            })
            .unwrap(),
            7,
        );
        println!(
            "{:>7.0}%  {:>17.3}  {:>15.3}  {:>8.2}×  {:>14.1}%  {:>12.1}%",
            failure * 100.0,
            budget.attempts_per_request,
            naive.attempts_per_request,
            budget.attempts_per_request / naive.attempts_per_request,
            budget.success * 100.0,
            naive.success * 100.0,
        );
    }
    let bound = 1.0 + 0.2 + 10.0 / f64::from(RATE);
    println!(
        "\nFinagle's bound at this rate: 1 + 0.2 + 10/{RATE} = {bound:.2} attempts per request when everything fails."
    );
}
