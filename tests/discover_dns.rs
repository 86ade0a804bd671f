//! DNS discovery end to end: a real DNS server (hickory-server, UDP and TCP
//! on 127.0.0.1) whose zone the tests change at run time, real hyper
//! backends on 127.0.0.1, a real balancer.
//!
//! Only 127.0.0.1 is used, so endpoints that must differ are told apart by
//! port: through SRV records whose targets resolve to 127.0.0.1.
//!
//! Refresh intervals are short (TTL 0 with a 100 ms lower bound, unless a
//! test is about the TTL), and every wait is on a condition with a generous
//! timeout; no sleep is an assertion.

#![cfg(all(feature = "dns", feature = "demo"))]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;
use http_body_util::{BodyExt, Full};
use palisade::Client;
use palisade::Hyper;
use palisade::demo::{BACKEND_HEADER, Backend, Behavior};
use palisade::discover::Address;
use palisade::discover::dns::{Dns, DnsError, DnsStatus, OnNxdomain};
use palisade::http::hyper_client;
use support::dns::{DnsServer, Mode, Zone};
use tokio::time::Instant;
use tower::ServiceExt;

type TestClient = Hyper<Full<Bytes>>;

/// How long any condition may take before the test fails: far above what
/// it needs, so a noisy machine does not make the tests flaky.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Helpers.

/// A DNS source pointed at `server`, re-resolving every 100 ms to 1 s (so
/// with the zone's TTL 0, every 100 ms), queries timing out after 200 ms.
fn dns(target: &str, server: &DnsServer) -> Dns {
    Dns::parse(target)
        .unwrap()
        .nameservers([server.addr])
        .refresh_bounds(Duration::from_millis(100), Duration::from_secs(1))
        .query_timeout(Duration::from_millis(200))
}

fn client(dns: Dns) -> TestClient {
    Client::builder("users")
        .discover(dns.spawn().expect("spawn dns discovery"))
        .http(hyper_client())
        .build()
        .unwrap()
}

async fn backend(behavior: Behavior) -> Backend {
    Backend::spawn(behavior).await.expect("bind 127.0.0.1")
}

/// The balancer's endpoint addresses, sorted.
fn addrs(client: &TestClient) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = client
        .endpoint_stats()
        .iter()
        .map(|s| match &s.address {
            Address::Socket(a) => *a,
            other => panic!("DNS endpoints are socket addresses, got {other}"),
        })
        .collect();
    out.sort();
    out
}

fn sorted(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs
}

/// Waits (woken by each change of the endpoint set) until the balancer's
/// addresses are `want`.
async fn until_addrs(client: &TestClient, want: &[SocketAddr]) {
    let want = sorted(want.to_vec());
    tokio::time::timeout(WAIT, client.wait_until(|c| addrs(c) == want))
        .await
        .unwrap_or_else(|_| panic!("endpoints never became {want:?}: {:?}", addrs(client)));
}

/// Polls `done` until it holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `status` has seen `n` more lookups fail in a row.
async fn until_failures(status: &DnsStatus, n: u32) {
    until(&format!("{n} failed lookups of {}", status.name()), || {
        status.consecutive_failures() >= n
    })
    .await;
}

/// Sends one GET; returns the backend that answered.
async fn send(client: &TestClient) -> SocketAddr {
    let req = http::Request::get("http://users/")
        .body(Full::default())
        .unwrap();
    let rsp = client.clone().oneshot(req).await.expect("request");
    assert_eq!(rsp.status(), 200);
    let backend = rsp
        .headers()
        .get(BACKEND_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("backend header");
    rsp.into_body().collect().await.expect("body");
    backend
}

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_resolve_and_reach_the_balancer() {
    let zone = Zone::new();
    zone.a("users.test");
    let server = DnsServer::start(&zone).await;
    let b = backend(Behavior::new()).await;

    let source = dns(&format!("users.test:{}", b.addr().port()), &server);
    let status = source.status();
    let client = client(source);
    until_addrs(&client, &[b.addr()]).await;

    for _ in 0..5 {
        assert_eq!(send(&client).await, b.addr());
    }
    assert_eq!(b.requests(), 5);
    let stats = client.endpoint_stats();
    assert_eq!(stats[0].weight, 1.0);
    assert!(stats[0].labels.is_empty(), "{:?}", stats[0].labels);
    assert_eq!(status.endpoints().len(), 1);
    assert!(status.last_success().is_some());
    assert_eq!(status.last_error(), None, "AAAA NODATA is not an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_ports_and_targets_are_carried_into_endpoints() {
    let zone = Zone::new();
    for t in [
        "a.users.test",
        "b.users.test",
        "c.users.test",
        "backup.users.test",
    ] {
        zone.a(t);
    }
    let fleet = [
        backend(Behavior::new()).await,
        backend(Behavior::new()).await,
        backend(Behavior::new()).await,
    ];
    let backup = backend(Behavior::new()).await;
    let port = |i: usize| fleet[i].addr().port();
    zone.srv(
        "_http._tcp.users.test",
        &[
            (10, 10, port(0), "a.users.test"),
            (10, 30, port(1), "b.users.test"),
            (10, 0, port(2), "c.users.test"),
            // A worse priority: a fallback, never used while the group above exists.
            (20, 100, backup.addr().port(), "backup.users.test"),
        ],
    );
    let server = DnsServer::start(&zone).await;
    let client = client(dns("_http._tcp.users.test", &server));
    until_addrs(
        &client,
        &fleet.iter().map(Backend::addr).collect::<Vec<_>>(),
    )
    .await;

    let by_addr: HashMap<SocketAddr, (f64, String)> = client
        .endpoint_stats()
        .into_iter()
        .map(|s| {
            let Address::Socket(addr) = s.address else {
                panic!("not a socket address: {}", s.address)
            };
            (addr, (s.weight, s.labels["srv_target"].clone()))
        })
        .collect();
    assert_eq!(by_addr[&fleet[0].addr()], (10.0, "a.users.test".into()));
    assert_eq!(by_addr[&fleet[1].addr()], (30.0, "b.users.test".into()));
    // Weight 0 next to heavier records: a very small share.
    assert_eq!(by_addr[&fleet[2].addr()], (0.01, "c.users.test".into()));

    for _ in 0..20 {
        send(&client).await;
    }
    assert_eq!(backup.requests(), 0, "the fallback priority got traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_the_balancer_within_one_refresh() {
    let zone = Zone::new();
    zone.a("a.users.test");
    zone.a("b.users.test");
    zone.ttl(1);
    let one = backend(Behavior::new()).await;
    let two = backend(Behavior::new()).await;
    zone.srv(
        "_http._tcp.users.test",
        &[(0, 0, one.addr().port(), "a.users.test")],
    );
    let server = DnsServer::start(&zone).await;

    // TTL 1 s inside bounds of 100 ms to 10 s: one refresh is 1 s.
    let refresh = Duration::from_secs(1);
    let source = dns("_http._tcp.users.test", &server)
        .refresh_bounds(Duration::from_millis(100), Duration::from_secs(10));
    let status = source.status();
    let client = client(source);
    until_addrs(&client, &[one.addr()]).await;

    let lookups_before = status.lookups();
    let changed = Instant::now();
    zone.srv(
        "_http._tcp.users.test",
        &[
            (0, 0, one.addr().port(), "a.users.test"),
            (0, 0, two.addr().port(), "b.users.test"),
        ],
    );
    until_addrs(&client, &[one.addr(), two.addr()]).await;
    let took = changed.elapsed();
    // Generous slack for a busy machine; what matters is that it is one
    // refresh, not the lower bound's many nor an unbounded wait.
    assert!(took < refresh + Duration::from_secs(4), "took {took:?}");
    // The TTL is honoured: it did not re-resolve at the 100 ms lower bound.
    let lookups = status.lookups() - lookups_before;
    let allowed = took.as_secs_f64() / refresh.as_secs_f64() + 2.0;
    assert!(
        (lookups as f64) <= allowed,
        "{lookups} lookups in {took:?} with a 1 s TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_ttl_is_capped_by_the_max_bound() {
    let zone = Zone::new();
    zone.a("a.users.test");
    zone.a("b.users.test");
    zone.ttl(3600);
    let one = backend(Behavior::new()).await;
    let two = backend(Behavior::new()).await;
    zone.srv(
        "_http._tcp.users.test",
        &[(0, 0, one.addr().port(), "a.users.test")],
    );
    let server = DnsServer::start(&zone).await;

    // An hour's TTL, a 1 s upper bound: neither the loop nor the resolver's
    // cache may hold the answer longer than that.
    let client = client(dns("_http._tcp.users.test", &server));
    until_addrs(&client, &[one.addr()]).await;

    let changed = Instant::now();
    zone.srv(
        "_http._tcp.users.test",
        &[(0, 0, two.addr().port(), "b.users.test")],
    );
    until_addrs(&client, &[two.addr()]).await;
    let took = changed.elapsed();
    assert!(took < Duration::from_secs(1 + 4), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_keeps_the_last_good_set_and_recovers() {
    let zone = Zone::new();
    zone.a("a.users.test");
    zone.a("b.users.test");
    let one = backend(Behavior::new()).await;
    let two = backend(Behavior::new()).await;
    zone.srv(
        "_http._tcp.users.test",
        &[(0, 0, one.addr().port(), "a.users.test")],
    );
    let server = DnsServer::start(&zone).await;
    let source = dns("_http._tcp.users.test", &server);
    let status = source.status();
    let client = client(source);
    until_addrs(&client, &[one.addr()]).await;

    // The zone changes while the server fails: nothing reaches the balancer.
    zone.srv(
        "_http._tcp.users.test",
        &[(0, 0, two.addr().port(), "b.users.test")],
    );
    zone.mode(Mode::ServFail);
    until_failures(&status, 3).await;
    assert_eq!(addrs(&client), vec![one.addr()]);
    assert_eq!(status.endpoints().len(), 1);
    let error = status.last_error().expect("the error is kept");
    assert!(error.contains("users.test"), "names the name: {error}");
    assert_eq!(send(&client).await, one.addr(), "requests still flow");

    // No answer at all: timeouts, same outcome.
    zone.mode(Mode::Silent);
    let failed = status.consecutive_failures();
    until_failures(&status, failed + 2).await;
    assert_eq!(addrs(&client), vec![one.addr()]);
    assert_eq!(send(&client).await, one.addr());

    // Fixed: the new set arrives.
    zone.mode(Mode::Answer);
    until_addrs(&client, &[two.addr()]).await;
    assert_eq!(status.last_error(), None);
    assert_eq!(send(&client).await, two.addr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_keeps_the_last_good_set_until_it_is_back() {
    let zone = Zone::new();
    zone.a("a.users.test");
    zone.a("b.users.test");
    let one = backend(Behavior::new()).await;
    let two = backend(Behavior::new()).await;
    zone.srv(
        "_http._tcp.users.test",
        &[(0, 0, one.addr().port(), "a.users.test")],
    );
    let mut server = DnsServer::start(&zone).await;
    let source = dns("_http._tcp.users.test", &server);
    let status = source.status();
    let client = client(source);
    until_addrs(&client, &[one.addr()]).await;

    server.stop().await;
    until_failures(&status, 2).await;
    assert_eq!(addrs(&client), vec![one.addr()]);
    assert_eq!(send(&client).await, one.addr());

    zone.srv(
        "_http._tcp.users.test",
        &[(0, 0, two.addr().port(), "b.users.test")],
    );
    server.restart().await;
    until_addrs(&client, &[two.addr()]).await;
    assert_eq!(status.consecutive_failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_after_success_keeps_the_set_by_default() {
    let zone = Zone::new();
    zone.a("users.test");
    let server = DnsServer::start(&zone).await;
    let b = backend(Behavior::new()).await;
    let source = dns(&format!("users.test:{}", b.addr().port()), &server);
    let status = source.status();
    let client = client(source);
    until_addrs(&client, &[b.addr()]).await;

    zone.remove("users.test");
    until_failures(&status, 2).await;
    assert!(
        status.last_error().unwrap().contains("NXDOMAIN"),
        "{:?}",
        status.last_error()
    );
    assert_eq!(addrs(&client), vec![b.addr()]);
    assert_eq!(send(&client).await, b.addr());

    zone.a("users.test");
    until("the name to resolve again", || {
        status.last_error().is_none()
    })
    .await;
    assert_eq!(addrs(&client), vec![b.addr()]);
}

/// Also behind a server that refuses AAAA: NXDOMAIN is said of the name,
/// so a deleted name is missing even though the AAAA query failed (it used
/// to count as a failed lookup, which keeps the set forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_after_success_clears_the_set_when_configured() {
    for mode in [
        Mode::Answer,
        Mode::FailType(RecordType::AAAA, ResponseCode::Refused),
    ] {
        let zone = Zone::new();
        zone.a("users.test");
        zone.mode(mode);
        let server = DnsServer::start(&zone).await;
        let b = backend(Behavior::new()).await;
        let source =
            dns(&format!("users.test:{}", b.addr().port()), &server).on_nxdomain(OnNxdomain::Clear);
        let status = source.status();
        let client = client(source);
        until_addrs(&client, &[b.addr()]).await;

        zone.remove("users.test");
        until_addrs(&client, &[]).await;
        assert!(status.endpoints().is_empty());
        assert!(
            status.last_error().unwrap().contains("NXDOMAIN"),
            "{mode:?}"
        );

        zone.a("users.test");
        until_addrs(&client, &[b.addr()]).await;
        assert_eq!(send(&client).await, b.addr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_drains_its_in_flight_request() {
    let zone = Zone::new();
    zone.a("slow.users.test");
    zone.a("fast.users.test");
    // Far longer than a refresh (100 ms here), so the removal lands while
    // the request is in flight.
    let slow = backend(Behavior::new().latency(Duration::from_secs(3))).await;
    let fast = backend(Behavior::new()).await;
    zone.srv(
        "_http._tcp.users.test",
        &[(0, 0, slow.addr().port(), "slow.users.test")],
    );
    let server = DnsServer::start(&zone).await;
    let client = client(dns("_http._tcp.users.test", &server));
    until_addrs(&client, &[slow.addr()]).await;

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { send(&client).await }
    });
    until("the slow backend to receive the request", || {
        slow.requests() == 1
    })
    .await;

    zone.srv(
        "_http._tcp.users.test",
        &[(0, 0, fast.addr().port(), "fast.users.test")],
    );
    until_addrs(&client, &[fast.addr()]).await;
    assert!(
        !in_flight.is_finished(),
        "the request finished before the removal; the test proves nothing"
    );
    // New requests go to the new set only...
    for _ in 0..5 {
        assert_eq!(send(&client).await, fast.addr());
    }
    // ...while the removed endpoint finishes what it started.
    let answered_by = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight request completes")
        .expect("task");
    assert_eq!(answered_by, slow.addr());
    assert_eq!(slow.requests(), 1);
}

#[tokio::test]
async fn an_invalid_name_is_a_typed_error_naming_it() {
    let err = Dns::new("users internal:8080").spawn().unwrap_err();
    assert!(matches!(err, DnsError::InvalidName { .. }), "{err:?}");
    assert!(err.to_string().contains("\"users internal:8080\""), "{err}");

    let err = Dns::srv("users.internal").spawn().unwrap_err();
    assert!(err.to_string().contains("_service._proto.name"), "{err}");
}

/// With the default `ip_family` (both), a server that refuses AAAA (as
/// dnsmasq does with no upstream), or answers it SERVFAIL, while it answers
/// A: the A addresses are used, for a host name and for an SRV target, and
/// the failure is kept in the status. Before, the whole lookup failed and
/// no endpoint was ever found. When every family fails, the lookup fails as
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_that_fails_does_not_hide_the_others_answer() {
    for (code, says) in [
        (ResponseCode::Refused, "Refused"),
        (ResponseCode::ServFail, "Server Failure"),
    ] {
        let b = backend(Behavior::new()).await;
        let zone = Zone::new();
        zone.a("h.svc.test");
        zone.srv(
            "_http._tcp.svc.test",
            &[(0, 1, b.addr().port(), "h.svc.test")],
        );
        zone.mode(Mode::FailType(RecordType::AAAA, code));
        let server = DnsServer::start(&zone).await;

        let srv = dns("_http._tcp.svc.test", &server);
        let status = srv.status();
        let srv_client = client(srv);
        until_addrs(&srv_client, &[b.addr()]).await;
        assert_eq!(send(&srv_client).await, b.addr());
        let errors = status.family_errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("AAAA h.svc.test.") && errors[0].contains(says),
            "{code}: {errors:?}"
        );
        assert_eq!(status.last_error(), None);

        let host = dns(&format!("h.svc.test:{}", b.addr().port()), &server);
        let host_status = host.status();
        let host_client = client(host);
        until_addrs(&host_client, &[b.addr()]).await;
        assert_eq!(host_status.family_errors().len(), 1);

        // Every family failing fails the lookup; the last good set stays.
        zone.mode(Mode::ServFail);
        until_failures(&status, 2).await;
        until_failures(&host_status, 2).await;
        assert!(status.last_error().is_some());
        assert_eq!(addrs(&srv_client), [b.addr()]);
        assert_eq!(addrs(&host_client), [b.addr()]);
    }
}

/// An SRV target whose every family fails (a name outside dnsmasq's zone,
/// refused) is to the round what one failed family is to a name: the other
/// targets' answers are used, the failed target keeps the addresses it had,
/// and its error is kept in the status. The round fails only when every
/// target fails. Before, one such target failed every round, so a service
/// started while it failed never became ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srv_target_that_fails_does_not_fail_the_round() {
    let (b1, b2, b3) = (
        backend(Behavior::new()).await,
        backend(Behavior::new()).await,
        backend(Behavior::new()).await,
    );
    let zone = Zone::new();
    zone.a("one.svc.test");
    zone.a("two.svc.test");
    let records = |one: &Backend| {
        [
            (0, 1, one.addr().port(), "one.svc.test"),
            (0, 1, b2.addr().port(), "two.svc.test"),
        ]
    };
    zone.srv("_http._tcp.svc.test", &records(&b1));
    zone.mode(Mode::FailType(RecordType::AAAA, ResponseCode::Refused));
    let server = DnsServer::start(&zone).await;
    let source = dns("_http._tcp.svc.test", &server);
    let status = source.status();
    let running = client(source);
    until_addrs(&running, &[b1.addr(), b2.addr()]).await;

    // two.svc.test fails; rounds still succeed (a change to the other
    // target is seen) and two keeps its address.
    zone.fail_name("two.svc.test", ResponseCode::Refused);
    zone.srv("_http._tcp.svc.test", &records(&b3));
    until_addrs(&running, &[b2.addr(), b3.addr()]).await;
    assert_eq!(status.last_error(), None);
    let errors = status.family_errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("A two.svc.test.") && e.contains("Refused")),
        "{errors:?}"
    );

    // A source started while two fails is ready with one's endpoint.
    let fresh = dns("_http._tcp.svc.test", &server);
    let fresh_status = fresh.status();
    let fresh = client(fresh);
    until_addrs(&fresh, &[b3.addr()]).await;
    assert_eq!(send(&fresh).await, b3.addr());

    // Every target failing fails the round; the last good set stays.
    zone.fail_name("one.svc.test", ResponseCode::ServFail);
    until_failures(&fresh_status, 2).await;
    until_failures(&status, 2).await;
    let error = status.last_error().unwrap();
    assert!(
        error.contains("one.svc.test.") && error.contains("two.svc.test."),
        "{error}"
    );
    assert_eq!(addrs(&running), sorted(vec![b2.addr(), b3.addr()]));
    assert_eq!(addrs(&fresh), [b3.addr()]);
}
