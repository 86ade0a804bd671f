//! A real DNS server for tests: hickory-server on 127.0.0.1 (UDP, and TCP
//! on the same port when it is free) serving a [`Zone`] the test changes
//! while it runs (records, TTL, SERVFAIL, REFUSED, silence, NXDOMAIN),
//! counting the queries. Used by `tests/discover_dns.rs` and by the proxy's DNS
//! discovery test in `tests/proxy_bin.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Instant;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How long binding a just-freed port may take.
const WAIT: Duration = Duration::from_secs(20);

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// From the zone: records, NODATA for a known name without records of
    /// the type, NXDOMAIN for an unknown name.
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// Nothing at all: every query times out.
    Silent,
    /// This error (REFUSED, SERVFAIL) to queries of this type, answers to
    /// the others (dnsmasq with no upstream refuses AAAA).
    FailType(RecordType, ResponseCode),
}

pub struct ZoneState {
    /// (lower-case name without final dot, type) → records' data.
    pub records: HashMap<(String, RecordType), Vec<RData>>,
    pub ttl: u32,
    pub mode: Mode,
    /// (lower-case name without final dot) → the error every query of it
    /// gets, whatever the mode (a name outside dnsmasq's zone).
    pub failing: HashMap<String, ResponseCode>,
}

/// A zone the tests change while the server runs; it counts the queries.
#[derive(Clone)]
pub struct Zone {
    state: Arc<Mutex<ZoneState>>,
    pub queries: Arc<AtomicU64>,
}

pub fn name(s: &str) -> Name {
    Name::from_ascii(format!("{s}.")).unwrap()
}

fn key(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    pub fn new() -> Zone {
        Zone {
            state: Arc::new(Mutex::new(ZoneState {
                records: HashMap::new(),
                ttl: 0,
                mode: Mode::Answer,
                failing: HashMap::new(),
            })),
            queries: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn edit(&self, f: impl FnOnce(&mut ZoneState)) {
        f(&mut self.state.lock().unwrap())
    }

    pub fn set(&self, owner: &str, rtype: RecordType, data: Vec<RData>) {
        self.edit(|z| {
            if data.is_empty() {
                z.records.remove(&(owner.to_owned(), rtype));
            } else {
                z.records.insert((owner.to_owned(), rtype), data);
            }
        })
    }

    /// `owner` has one A record, 127.0.0.1.
    pub fn a(&self, owner: &str) {
        self.set(owner, RecordType::A, vec![RData::A(A(LOCALHOST))]);
    }

    /// `owner` has these SRV records: (priority, weight, port, target).
    pub fn srv(&self, owner: &str, records: &[(u16, u16, u16, &str)]) {
        let data = records
            .iter()
            .map(|&(priority, weight, port, target)| {
                RData::SRV(SRV::new(priority, weight, port, name(target)))
            })
            .collect();
        self.set(owner, RecordType::SRV, data);
    }

    /// Removes every record of `owner`: it answers NXDOMAIN from now on.
    pub fn remove(&self, owner: &str) {
        self.edit(|z| z.records.retain(|(n, _), _| n != owner));
    }

    pub fn ttl(&self, ttl: u32) {
        self.edit(|z| z.ttl = ttl);
    }

    pub fn mode(&self, mode: Mode) {
        self.edit(|z| z.mode = mode);
    }

    /// Every query of `owner` gets `code` from now on.
    pub fn fail_name(&self, owner: &str, code: ResponseCode) {
        self.edit(|z| {
            z.failing.insert(owner.to_owned(), code);
        });
    }

    async fn answer<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let silent = ResponseInfo::from(Header {
            metadata,
            counts: HeaderCounts::default(),
        });
        let Ok(info) = request.request_info() else {
            metadata.response_code = ResponseCode::FormErr;
            let rsp =
                MessageResponseBuilder::from_message_request(request).build_no_records(metadata);
            return response.send_response(rsp).await.unwrap_or(silent);
        };
        let qname: Name = info.query.name().clone().into();
        let qtype = info.query.query_type();
        let (mode, answers, known) = {
            let z = self.state.lock().unwrap();
            let owner = key(&qname);
            let mode = match z.failing.get(&owner) {
                Some(&code) => Mode::FailType(qtype, code),
                None => z.mode,
            };
            let answers: Vec<Record> = z
                .records
                .get(&(owner.clone(), qtype))
                .map(|data| {
                    data.iter()
                        .map(|d| Record::from_rdata(qname.clone(), z.ttl, d.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let known = z.records.keys().any(|(n, _)| *n == owner);
            (mode, answers, known)
        };
        let builder = MessageResponseBuilder::from_message_request(request);
        let sent = match mode {
            Mode::Silent => return silent,
            Mode::FailType(failed, code) if failed == qtype => {
                response
                    .send_response(builder.error_msg(&request.metadata, code))
                    .await
            }
            Mode::ServFail => {
                response
                    .send_response(builder.error_msg(&request.metadata, ResponseCode::ServFail))
                    .await
            }
            Mode::Answer | Mode::FailType(..) if !known => {
                response
                    .send_response(builder.error_msg(&request.metadata, ResponseCode::NXDomain))
                    .await
            }
            Mode::Answer | Mode::FailType(..) => {
                let rsp = builder.build(metadata, answers.iter(), None, None, None);
                response.send_response(rsp).await
            }
        };
        sent.unwrap_or(silent)
    }
}

// The trait is declared with `#[async_trait]`; this is its expansion, so the
// tests need no macro crate of their own.
impl RequestHandler for Zone {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: ResponseHandler + 'async_trait,
        T: Time + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.answer(request, response_handle))
    }
}

/// A hickory-server on 127.0.0.1 (UDP, and TCP on the same port when it is
/// free) serving a [`Zone`].
pub struct DnsServer {
    pub addr: SocketAddr,
    pub zone: Zone,
    server: Option<Server<Zone>>,
}

impl DnsServer {
    pub async fn start(zone: &Zone) -> DnsServer {
        DnsServer::start_on(SocketAddr::from((LOCALHOST, 0)), zone).await
    }

    pub async fn start_on(addr: SocketAddr, zone: &Zone) -> DnsServer {
        // The port of a server just stopped may take a moment to free up.
        let deadline = Instant::now() + WAIT;
        let udp = loop {
            match UdpSocket::bind(addr).await {
                Ok(udp) => break udp,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("binding {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        let addr = udp.local_addr().unwrap();
        let mut server = Server::new(zone.clone());
        server.register_socket(udp);
        // TCP is only used for truncated answers, which these tests do not
        // produce; serve it when the port is free anyway.
        if let Ok(tcp) = TcpListener::bind(addr).await {
            server.register_listener(tcp, Duration::from_secs(5), 64);
        }
        DnsServer {
            addr,
            zone: zone.clone(),
            server: Some(server),
        }
    }

    /// Stops serving: queries go unanswered (the port is closed).
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.shutdown_gracefully().await;
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&mut self) {
        self.stop().await;
        *self = DnsServer::start_on(self.addr, &self.zone).await;
    }
}
