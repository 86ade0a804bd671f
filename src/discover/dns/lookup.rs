//! Lookups through hickory: A/AAAA for `host:port`, SRV (with the
//! targets' addresses) for `_service._proto.name`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use futures::StreamExt;
use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::super::Endpoint;

use super::*;

// ---------------------------------------------------------------------------
// Lookups through hickory.

pub(super) struct Hickory {
    pub(super) resolver: TokioResolver,
    pub(super) target: Target,
    pub(super) family: IpFamily,
    /// SRV: each target's addresses in the last set published, kept for a
    /// target whose lookup fails while others answer.
    pub(super) srv_targets: HashMap<String, Vec<IpAddr>>,
}

impl Resolve for Hickory {
    async fn resolve(&mut self) -> Outcome {
        // One lookup round sees fresh answers: nothing cached in an earlier
        // round can hide a change.
        self.resolver.clear_cache();
        match &self.target {
            Target::Host { name, port } => {
                match lookup_ips(&self.resolver, name, self.family).await {
                    Ok(ips) => Outcome::Found {
                        endpoints: ips
                            .addrs
                            .into_iter()
                            .map(|ip| Endpoint::new(SocketAddr::new(ip, *port)))
                            .collect(),
                        ttl: ips.ttl,
                        family_errors: ips.family_errors,
                    },
                    Err(miss) => miss.into_outcome(self.family),
                }
            }
            Target::Srv { name } => {
                lookup_srv(&self.resolver, name, self.family, &mut self.srv_targets).await
            }
        }
    }
}

/// Addresses of one name, the smallest TTL of the records behind them, and
/// the errors of the address families that failed while another answered.
#[derive(Debug, Default)]
pub(super) struct Ips {
    pub(super) addrs: Vec<IpAddr>,
    pub(super) ttl: Option<u32>,
    pub(super) family_errors: Vec<String>,
}

/// Why a name produced no addresses.
#[derive(Debug)]
pub(super) enum Miss {
    NoRecords { nxdomain: bool },
    Failed(String),
}

impl Miss {
    pub(super) fn into_outcome(self, family: IpFamily) -> Outcome {
        match self {
            Miss::NoRecords { nxdomain: true } => {
                Outcome::Missing("NXDOMAIN (no such name)".into())
            }
            Miss::NoRecords { nxdomain: false } => {
                Outcome::Missing(format!("no {} records", family_name(family)))
            }
            Miss::Failed(error) => Outcome::Failed(error),
        }
    }
}

pub(super) fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::Both => "A/AAAA",
        IpFamily::V4 => "A",
        IpFamily::V6 => "AAAA",
    }
}

pub(super) fn min_ttl(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub(super) async fn lookup_ips(
    resolver: &TokioResolver,
    name: &Name,
    family: IpFamily,
) -> Result<Ips, Miss> {
    let types = family.record_types();
    let results = futures::future::join_all(
        types
            .iter()
            .map(|&rtype| resolver.lookup(name.clone(), rtype)),
    )
    .await;
    let mut ips = Ips::default();
    let mut nxdomain = false;
    let mut errors = Vec::new();
    for (rtype, result) in types.iter().zip(results) {
        match result {
            Ok(lookup) => {
                for record in lookup.answers() {
                    ips.ttl = min_ttl(ips.ttl, Some(record.ttl));
                    if record.record_type() == *rtype
                        && let Some(ip) = record.data.ip_addr()
                        && !ips.addrs.contains(&ip)
                    {
                        ips.addrs.push(ip);
                    }
                }
            }
            Err(e) => match classify(&e) {
                Some(nx) => nxdomain |= nx,
                None => errors.push(format!("{rtype} {name}: {e}")),
            },
        }
    }
    // One family's failure (a server that refuses AAAA, as dnsmasq does
    // with no upstream) does not hide another family's answer: the round
    // fails only when no family produced an address and one failed. The
    // failed families are kept for the status. NXDOMAIN is said of the
    // name, not of one type, so it stands even when another family's query
    // failed: a deleted name behind such a server is still missing (and
    // `OnNxdomain::Clear` still clears). An empty answer (NODATA) says
    // nothing of the other type, so next to a failure it is a failure.
    if ips.addrs.is_empty() {
        return Err(if errors.is_empty() || nxdomain {
            Miss::NoRecords { nxdomain }
        } else {
            Miss::Failed(errors.join("; "))
        });
    }
    ips.family_errors = errors;
    Ok(ips)
}

/// `Some(is_nxdomain)` for an answer without records, `None` for a failure.
pub(super) fn classify(error: &NetError) -> Option<bool> {
    error.is_no_records_found().then(|| error.is_nx_domain())
}

/// SRV records and their targets' addresses. `last` holds each target's
/// addresses in the last set this produced: a target whose lookup fails
/// while another target answers keeps them; it is replaced by every
/// answer.
pub(super) async fn lookup_srv(
    resolver: &TokioResolver,
    name: &Name,
    family: IpFamily,
    last: &mut HashMap<String, Vec<IpAddr>>,
) -> Outcome {
    let lookup = match resolver.lookup(name.clone(), RecordType::SRV).await {
        Ok(lookup) => lookup,
        Err(e) => {
            return match classify(&e) {
                Some(true) => Outcome::Missing("NXDOMAIN (no such name)".into()),
                Some(false) => Outcome::Missing("no SRV records".into()),
                None => Outcome::Failed(format!("SRV {name}: {e}")),
            };
        }
    };
    let mut ttl = None;
    let mut records = Vec::new();
    for record in lookup.answers() {
        ttl = min_ttl(ttl, Some(record.ttl));
        if let RData::SRV(srv) = &record.data {
            records.push(SrvRecord {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: target_key(&srv.target),
            });
        }
    }
    let picks = select_srv(&records);
    if picks.is_empty() {
        return Outcome::Missing(
            "no usable SRV records (none, or only target '.' or port 0)".into(),
        );
    }

    let mut targets: Vec<String> = picks.iter().map(|p| p.target.clone()).collect();
    targets.dedup();
    if targets.len() > MAX_SRV_TARGETS {
        tracing::warn!(dns.name = %name, targets = targets.len(), kept = MAX_SRV_TARGETS, "too many SRV targets; ignoring the rest");
        targets.truncate(MAX_SRV_TARGETS);
    }
    let resolved: Vec<(String, Result<Ips, Miss>)> = futures::stream::iter(targets)
        .map(|target| {
            // Owned, so the future is `Send` for any lifetime.
            let resolver = resolver.clone();
            async move {
                let result = match Name::from_ascii(format!("{target}.")) {
                    Ok(target_name) => lookup_ips(&resolver, &target_name, family).await,
                    Err(_) => Err(Miss::NoRecords { nxdomain: false }),
                };
                (target, result)
            }
        })
        .buffered(TARGET_CONCURRENCY)
        .collect()
        .await;

    let mut addrs = HashMap::new();
    let mut family_errors = Vec::new();
    let mut failed = Vec::new();
    for (target, result) in resolved {
        match result {
            Ok(ips) => {
                ttl = min_ttl(ttl, ips.ttl);
                family_errors.extend(ips.family_errors);
                addrs.insert(target, ips.addrs);
            }
            Err(Miss::Failed(error)) => failed.push((target, error)),
            Err(Miss::NoRecords { nxdomain }) => {
                tracing::warn!(
                    dns.name = %name,
                    srv_target = %target,
                    error = if nxdomain { "NXDOMAIN" } else { "no address records" },
                    "SRV target has no addresses; skipping it",
                );
            }
        }
    }
    // A target whose every family failed (a name the server refuses) is
    // what one failed family is to a name: the round fails only when no
    // target answered. Otherwise the target keeps its last addresses (the
    // last good set holds for it) and its error is kept for the status.
    if !failed.is_empty() && addrs.is_empty() {
        let errors: Vec<String> = failed.into_iter().map(|(_, error)| error).collect();
        return Outcome::Failed(errors.join("; "));
    }
    for (target, error) in failed {
        if let Some(kept) = last.remove(&target) {
            addrs.insert(target, kept);
        }
        family_errors.push(error);
    }
    let endpoints = srv_endpoints(&picks, &addrs);
    if endpoints.is_empty() {
        return Outcome::Missing("no SRV target has addresses".into());
    }
    *last = addrs;
    Outcome::Found {
        endpoints,
        ttl,
        family_errors,
    }
}

/// A target name as compared and shown: lower case, no final dot; `""` for
/// the root (`.`).
pub(super) fn target_key(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// One SRV record, as far as selection goes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SrvRecord {
    pub(super) priority: u16,
    pub(super) weight: u16,
    pub(super) port: u16,
    pub(super) target: String,
}

/// A selected SRV record: a target and port, with its endpoint weight.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pick {
    pub(super) target: String,
    pub(super) port: u16,
    pub(super) weight: f64,
}

/// RFC 2782 selection: drops `.` targets and port 0, keeps the group with
/// the lowest priority number, maps weights (see the module docs), merges
/// duplicates of a target and port. Sorted by target, then port.
pub(super) fn select_srv(records: &[SrvRecord]) -> Vec<Pick> {
    let usable = || {
        records
            .iter()
            .filter(|r| !r.target.is_empty() && r.port != 0)
    };
    let Some(priority) = usable().map(|r| r.priority).min() else {
        return Vec::new();
    };
    let group: Vec<&SrvRecord> = usable().filter(|r| r.priority == priority).collect();
    let all_zero = group.iter().all(|r| r.weight == 0);
    let mut picks: Vec<Pick> = Vec::with_capacity(group.len());
    for r in group {
        let weight = match r.weight {
            0 if all_zero => 1.0,
            0 => SRV_ZERO_WEIGHT,
            w => f64::from(w),
        };
        match picks
            .iter_mut()
            .find(|p| p.target == r.target && p.port == r.port)
        {
            Some(p) => p.weight += weight,
            None => picks.push(Pick {
                target: r.target.clone(),
                port: r.port,
                weight,
            }),
        }
    }
    picks.sort_by(|a, b| a.target.cmp(&b.target).then(a.port.cmp(&b.port)));
    picks
}

/// Endpoints of the picks whose targets resolved: a pick's weight is split
/// evenly over its target's addresses; picks landing on the same address
/// add up, and the first (in target order) names it.
pub(super) fn srv_endpoints(picks: &[Pick], addrs: &HashMap<String, Vec<IpAddr>>) -> Vec<Endpoint> {
    let mut merged: Vec<(SocketAddr, f64, &str)> = Vec::new();
    let mut index: HashMap<SocketAddr, usize> = HashMap::new();
    for pick in picks {
        let Some(ips) = addrs.get(&pick.target).filter(|ips| !ips.is_empty()) else {
            continue;
        };
        let share = pick.weight / ips.len() as f64;
        for ip in ips {
            let addr = SocketAddr::new(*ip, pick.port);
            match index.get(&addr) {
                Some(&i) => merged[i].1 += share,
                None => {
                    index.insert(addr, merged.len());
                    merged.push((addr, share, &pick.target));
                }
            }
        }
    }
    let mut endpoints: Vec<Endpoint> = merged
        .into_iter()
        .map(|(addr, weight, target)| {
            let ep = Endpoint::new(addr).with_label(SRV_TARGET_LABEL, target);
            // Weights are finite and above zero by construction; should that
            // ever not hold, weight 1 is better than losing the endpoint.
            ep.clone().with_weight(weight).unwrap_or(ep)
        })
        .collect();
    endpoints.sort_by(|a, b| a.address().cmp(b.address()));
    endpoints
}
