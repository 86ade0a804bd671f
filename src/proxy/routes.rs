//! Route matching, written once: the router tests requests with it, and the
//! config's shadowing lint asks it whether one route covers another.
//!
//! A match is a conjunction: the host (exact, or `*.suffix` for every name
//! ending in `.suffix`, at any depth; case-insensitive), a path prefix on
//! segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`),
//! headers (each named header with exactly that value) and methods (any of
//! them). A part left out matches everything.
//!
//! The running proxy keeps its routes in a [`RouteTable`]: every string of
//! every route once, in one buffer, and small fixed-size entries that point
//! into it. A route costs about what its text in the file costs, where the
//! config's own types (a `String` per part, a map per header set) cost ten
//! times as much. The lint works on the config's [`Match`] directly; both
//! go through [`MatchParts`], so the semantics are written once.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use http::{HeaderMap, Method};
use rand::RngExt;

use super::config::{Match, Route, Split};

/// The parts of a route's match, however they are stored. Strings are as
/// the config wrote them: a wildcard host keeps its `*`.
pub(crate) trait MatchParts {
    fn host(&self) -> Option<&str>;
    fn path_prefix(&self) -> Option<&str>;
    fn headers(&self) -> impl Iterator<Item = (&str, &str)>;
    fn methods(&self) -> impl Iterator<Item = &str> + Clone;
}

impl MatchParts for Match {
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    fn path_prefix(&self) -> Option<&str> {
        self.path_prefix.as_deref()
    }
    fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    fn methods(&self) -> impl Iterator<Item = &str> + Clone {
        self.methods.iter().map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy)]
enum HostMatch<'a> {
    Exact(&'a str),
    /// `*.example.com` is kept as `.example.com`.
    Suffix(&'a str),
}

impl<'a> HostMatch<'a> {
    fn of(written: &'a str) -> HostMatch<'a> {
        match written.strip_prefix('*') {
            Some(suffix) => HostMatch::Suffix(suffix),
            None => HostMatch::Exact(written),
        }
    }

    /// Whether `name` is matched: a host from a request, or (for
    /// [`covers`]) a wildcard's suffix such as `.a.example.com`, which
    /// stands for every name ending in it.
    fn matches(self, name: &str) -> bool {
        match self {
            HostMatch::Exact(h) => name.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                name.len() > s.len()
                    && name.is_char_boundary(name.len() - s.len())
                    && name[name.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// Whether `path` is `prefix` or under it, on a segment boundary.
fn path_under(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len()
            || prefix.ends_with('/')
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Whether a request matches `m`. Header names are compared without
/// regard to case, values exactly; of a repeated header, the first value
/// counts.
pub(crate) fn matches(
    m: &impl MatchParts,
    host: Option<&str>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> bool {
    if let Some(want) = m.host()
        && !host.is_some_and(|h| HostMatch::of(want).matches(h))
    {
        return false;
    }
    if let Some(prefix) = m.path_prefix()
        && !path_under(prefix, path)
    {
        return false;
    }
    let mut methods = m.methods();
    if methods.clone().next().is_some() && !methods.any(|m| m == method.as_str()) {
        return false;
    }
    m.headers()
        .all(|(name, value)| headers.get(name).is_some_and(|v| v == value))
}

/// Whether every request `b` matches, `a` matches too: a route matching
/// `b` after one matching `a` is never reached.
pub(crate) fn covers(a: &impl MatchParts, b: &impl MatchParts) -> bool {
    let host = match (a.host().map(HostMatch::of), b.host().map(HostMatch::of)) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(HostMatch::Exact(b))) => a.matches(b),
        // A wildcard stands for the names ending in its suffix: only a
        // wildcard with a suffix of that suffix covers them all.
        (Some(a @ HostMatch::Suffix(s)), Some(HostMatch::Suffix(b))) => {
            a.matches(b) || s.eq_ignore_ascii_case(b)
        }
        (Some(HostMatch::Exact(_)), Some(HostMatch::Suffix(_))) => false,
    };
    let path = match (a.path_prefix(), b.path_prefix()) {
        (None, _) => true,
        // Every request path starts with '/'.
        (Some(a), None) => a == "/",
        (Some(a), Some(b)) => path_under(a, b),
    };
    let headers = a.headers().all(|(name, value)| {
        b.headers()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
    });
    let a_methods = a.methods();
    let mut b_methods = b.methods();
    let methods = a_methods.clone().next().is_none()
        || (b_methods.clone().next().is_some()
            && b_methods.all(|m| a_methods.clone().any(|a| a == m)));
    host && path && headers && methods
}

/// Whether `m` matches every request.
pub(crate) fn is_catch_all(m: &impl MatchParts) -> bool {
    covers(m, &Match::default())
}

/// Where a string is in a [`RouteTable`]'s text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// A part the route leaves out.
    const NONE: Span = Span {
        start: u32::MAX,
        len: 0,
    };
}

/// One route, in a [`RouteTable`]: spans of its text and ranges of the
/// table's lists.
#[derive(Debug)]
struct Entry {
    /// [`Span::NONE`]: the route has no name (`route-<index>`).
    name: Span,
    host: Span,
    path_prefix: Span,
    headers: Range<u32>,
    methods: Range<u32>,
    targets: Range<u32>,
    /// Written as a `split` (else as `service`).
    split: bool,
}

/// One service a route sends to, with the running total of the weights
/// up to and including it.
#[derive(Debug)]
struct Target {
    service: Span,
    weight: u32,
    cumulative: u64,
}

/// The routes the proxy runs, compact (see the module's docs).
#[derive(Debug)]
pub(crate) struct RouteTable {
    text: Box<str>,
    routes: Box<[Entry]>,
    headers: Box<[(Span, Span)]>,
    methods: Box<[Span]>,
    targets: Box<[Target]>,
}

/// Builds a [`RouteTable`]'s text, storing each distinct string once
/// (service names, header names and methods repeat from route to route).
struct Interner<'a> {
    text: String,
    seen: HashMap<&'a str, Span>,
}

impl<'a> Interner<'a> {
    fn add(&mut self, s: &'a str) -> Span {
        if let Some(span) = self.seen.get(s) {
            return *span;
        }
        // A config is at most a few MiB: offsets fit in u32.
        let span = Span {
            start: self.text.len() as u32,
            len: s.len() as u32,
        };
        self.text.push_str(s);
        self.seen.insert(s, span);
        span
    }

    fn add_opt(&mut self, s: Option<&'a str>) -> Span {
        s.map_or(Span::NONE, |s| self.add(s))
    }
}

/// The range of a list's items pushed since `start`.
fn since<T>(list: &[T], start: usize) -> Range<u32> {
    start as u32..list.len() as u32
}

impl RouteTable {
    /// Compiles a config's routes, in order.
    pub(crate) fn new(routes: &[Route]) -> RouteTable {
        let mut strings = Interner {
            text: String::new(),
            seen: HashMap::new(),
        };
        let (mut headers, mut methods, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        let mut entries = Vec::with_capacity(routes.len());
        for r in routes {
            let m = &r.matches;
            let (h, me, t) = (headers.len(), methods.len(), targets.len());
            headers.extend(
                m.headers
                    .iter()
                    .map(|(k, v)| (strings.add(k), strings.add(v))),
            );
            methods.extend(m.methods.iter().map(|x| strings.add(x)));
            let mut cumulative = 0u64;
            let legs = r
                .service
                .iter()
                .map(|s| (s, 1))
                .chain(r.split.iter().map(|leg| (&leg.service, leg.weight)));
            for (service, weight) in legs {
                cumulative += u64::from(weight);
                targets.push(Target {
                    service: strings.add(service),
                    weight,
                    cumulative,
                });
            }
            entries.push(Entry {
                name: strings.add_opt(r.name.as_deref()),
                host: strings.add_opt(m.host.as_deref()),
                path_prefix: strings.add_opt(m.path_prefix.as_deref()),
                headers: since(&headers, h),
                methods: since(&methods, me),
                targets: since(&targets, t),
                split: r.service.is_none(),
            });
        }
        RouteTable {
            text: strings.text.into_boxed_str(),
            routes: entries.into_boxed_slice(),
            headers: headers.into_boxed_slice(),
            methods: methods.into_boxed_slice(),
            targets: targets.into_boxed_slice(),
        }
    }

    fn str(&self, span: Span) -> Option<&str> {
        (span != Span::NONE)
            .then(|| &self.text[span.start as usize..(span.start + span.len) as usize])
    }

    fn route(&self, index: usize) -> RouteRef<'_> {
        RouteRef {
            table: self,
            index,
            entry: &self.routes[index],
        }
    }

    /// The first route a request matches.
    pub(crate) fn find<B>(
        &self,
        host: Option<&str>,
        req: &http::Request<B>,
    ) -> Option<RouteRef<'_>> {
        (0..self.routes.len())
            .map(|i| self.route(i))
            .find(|r| matches(r, host, req.method(), req.uri().path(), req.headers()))
    }

    /// The routes as the config wrote them (for `/config`, and to tell
    /// whether a reload changes them).
    pub(crate) fn to_routes(&self) -> Vec<Route> {
        (0..self.routes.len())
            .map(|i| self.route(i).to_route())
            .collect()
    }

    /// Whether these are exactly `routes`.
    pub(crate) fn is(&self, routes: &[Route]) -> bool {
        routes.len() == self.routes.len()
            && routes
                .iter()
                .enumerate()
                .all(|(i, r)| self.route(i).to_route() == *r)
    }
}

/// One route of a [`RouteTable`].
#[derive(Clone, Copy)]
pub(crate) struct RouteRef<'a> {
    table: &'a RouteTable,
    index: usize,
    entry: &'a Entry,
}

impl<'a> RouteRef<'a> {
    /// Its name, for logs and errors: as written, or `route-<index>`.
    pub(crate) fn name(&self) -> String {
        match self.table.str(self.entry.name) {
            Some(name) => name.to_owned(),
            None => format!("route-{}", self.index),
        }
    }

    fn targets(&self) -> &'a [Target] {
        let r = &self.entry.targets;
        &self.table.targets[r.start as usize..r.end as usize]
    }

    fn service_of(&self, t: &Target) -> &'a str {
        self.table.str(t.service).unwrap_or_default()
    }

    /// The service for one request: a weighted draw among a split's legs.
    pub(crate) fn pick(&self) -> &'a str {
        let targets = self.targets();
        let total = targets.last().map_or(0, |t| t.cumulative);
        if targets.len() <= 1 || total == 0 {
            return targets.first().map_or("", |t| self.service_of(t));
        }
        let draw = rand::rng().random_range(0..total);
        let i = targets.partition_point(|t| t.cumulative <= draw);
        self.service_of(&targets[i.min(targets.len() - 1)])
    }

    /// The route as the config wrote it.
    fn to_route(self) -> Route {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        let legs = self.targets().iter().map(|t| Split {
            service: self.service_of(t).to_owned(),
            weight: t.weight,
        });
        let (service, split) = if self.entry.split {
            (None, legs.collect())
        } else {
            (legs.map(|leg| leg.service).next(), Vec::new())
        };
        Route {
            name: owned(self.table.str(self.entry.name)),
            matches: Match {
                host: owned(self.host()),
                path_prefix: owned(self.path_prefix()),
                headers: self
                    .headers()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect::<BTreeMap<_, _>>(),
                methods: self.methods().map(str::to_owned).collect(),
            },
            service,
            split,
        }
    }
}

impl MatchParts for RouteRef<'_> {
    fn host(&self) -> Option<&str> {
        self.table.str(self.entry.host)
    }
    fn path_prefix(&self) -> Option<&str> {
        self.table.str(self.entry.path_prefix)
    }
    fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        let r = &self.entry.headers;
        self.table.headers[r.start as usize..r.end as usize]
            .iter()
            .map(|&(k, v)| {
                (
                    self.table.str(k).unwrap_or_default(),
                    self.table.str(v).unwrap_or_default(),
                )
            })
    }
    fn methods(&self) -> impl Iterator<Item = &str> + Clone {
        let r = &self.entry.methods;
        self.table.methods[r.start as usize..r.end as usize]
            .iter()
            .map(|&m| self.table.str(m).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(host: Option<&str>, path: Option<&str>, methods: &[&str]) -> Match {
        Match {
            host: host.map(str::to_owned),
            path_prefix: path.map(str::to_owned),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            ..Match::default()
        }
    }

    /// The lint's "covers" is the router's "matches", quantified: whenever
    /// one matcher covers another, every request the second matches, the
    /// first matches too.
    #[test]
    fn covering_agrees_with_matching() {
        let mut with_header = matcher(None, Some("/api"), &[]);
        with_header.headers.insert("X-Tenant".into(), "blue".into());
        let matchers = [
            matcher(None, None, &[]),
            matcher(Some("a.com"), None, &[]),
            matcher(Some("*.a.com"), None, &[]),
            matcher(Some("*.y.a.com"), Some("/api"), &[]),
            matcher(None, Some("/api/"), &["GET"]),
            matcher(None, Some("/api"), &["GET", "PUT"]),
            matcher(Some("x.y.a.com"), Some("/api/v1"), &["GET"]),
            with_header,
        ];
        let hosts = [
            None,
            Some("a.com"),
            Some("x.a.com"),
            Some("x.y.a.com"),
            Some("b.com"),
        ];
        let paths = ["/", "/api", "/api/", "/api/v1", "/apix"];
        let methods = [Method::GET, Method::PUT, Method::POST];
        let mut tenant = HeaderMap::new();
        tenant.insert("x-tenant", "blue".parse().unwrap());
        let header_sets = [HeaderMap::new(), tenant];
        let mut covered = 0;
        for a in &matchers {
            for b in &matchers {
                if !covers(a, b) {
                    continue;
                }
                covered += 1;
                for host in hosts {
                    for path in paths {
                        for method in &methods {
                            for headers in &header_sets {
                                if matches(b, host, method, path, headers) {
                                    assert!(
                                        matches(a, host, method, path, headers),
                                        "{a:?} covers {b:?} but not {host:?} {method} {path}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(covered > matchers.len(), "some matchers cover others");
        assert!(is_catch_all(&matchers[0]));
        assert!(!is_catch_all(&matchers[1]));
        // A header narrows a match: the route without it covers the one
        // with it, not the other way round.
        let api = matcher(None, Some("/api"), &[]);
        assert!(covers(&api, &matchers[7]) && !covers(&matchers[7], &api));
    }

    #[test]
    fn wildcards_match_at_any_depth_and_never_panic_on_non_ascii() {
        let m = matcher(Some("*.a.com"), None, &[]);
        let h = HeaderMap::new();
        assert!(matches(&m, Some("x.y.A.com"), &Method::GET, "/", &h));
        assert!(!matches(&m, Some("a.com"), &Method::GET, "/", &h));
        assert!(!matches(&m, Some("é.com"), &Method::GET, "/", &h));
        assert!(!matches(&m, Some("xé"), &Method::GET, "/", &h));
    }

    fn routes(text: &str) -> Vec<Route> {
        let config = crate::proxy::config::Config::from_toml(&format!(
            "[[services]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n\
             [[services]]\nname = \"b\"\nendpoints = [\"127.0.0.1:2\"]\n{text}"
        ))
        .unwrap();
        config.routes
    }

    /// The table gives back the routes it was built from, field for field,
    /// and finds the first route that matches, as the config's order says.
    #[test]
    fn the_table_keeps_every_route_as_written_and_in_order() {
        let written = routes(
            r#"
            [[routes]]
            name = "tenants"
            service = "a"
            match = { host = "*.example.com", path_prefix = "/api", headers = { "X-Tenant" = "blue", "x-zone" = "1" }, methods = ["GET", "PUT"] }
            [[routes]]
            split = [{ service = "a", weight = 1 }, { service = "b", weight = 3 }]
            match = { path_prefix = "/api" }
            [[routes]]
            service = "b"
            "#,
        );
        let table = RouteTable::new(&written);
        assert_eq!(table.to_routes(), written);
        assert!(table.is(&written));
        assert!(!table.is(&written[..2]));

        let request = |host: &str, method: Method, tenant: Option<&str>| {
            let mut req = http::Request::builder()
                .method(method)
                .uri("/api/x")
                .body(())
                .unwrap();
            if let Some(t) = tenant {
                req.headers_mut().insert("x-tenant", t.parse().unwrap());
                req.headers_mut().insert("x-zone", "1".parse().unwrap());
            }
            (host.to_owned(), req)
        };
        let name = |(host, req): (String, http::Request<()>)| {
            table.find(Some(&host), &req).map(|r| r.name())
        };
        assert_eq!(
            name(request("a.example.com", Method::GET, Some("blue"))).unwrap(),
            "tenants"
        );
        assert_eq!(
            name(request("a.example.com", Method::GET, Some("red"))).unwrap(),
            "route-1"
        );
        assert_eq!(
            name(request("a.example.com", Method::POST, Some("blue"))).unwrap(),
            "route-1"
        );
        assert_eq!(
            name(request("example.com", Method::GET, Some("blue"))).unwrap(),
            "route-1"
        );
    }

    /// A split's legs are drawn by weight; a zero weight is never drawn.
    #[test]
    fn a_split_draws_by_weight() {
        let written = routes(
            r#"
            [[routes]]
            split = [{ service = "a", weight = 1 }, { service = "b", weight = 3 }]
            [[routes]]
            split = [{ service = "a", weight = 0 }, { service = "b", weight = 1 }]
            "#,
        );
        let table = RouteTable::new(&written);
        let draws = (0..4000).filter(|_| table.route(0).pick() == "b").count();
        assert!(
            (2700..3300).contains(&draws),
            "{draws} of 4000 went to b (weight 3 of 4)"
        );
        assert!((0..100).all(|_| table.route(1).pick() == "b"));
    }
}
