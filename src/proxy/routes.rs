//! Route matching, written once: the router tests requests with it, and the
//! config's shadowing lint asks it whether one route covers another.
//!
//! A match is a conjunction: the host (exact, or `*.suffix` for every name
//! ending in `.suffix`, at any depth; case-insensitive), a path prefix on
//! segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`),
//! headers (each named header with exactly that value) and methods (any of
//! them). A part left out matches everything.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rand::RngExt;

use super::config::{Match, Route};

/// A route's [`Match`], compiled.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    host: Option<HostMatch>,
    path_prefix: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    methods: Vec<Method>,
}

#[derive(Debug, Clone)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` is kept as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    /// Whether `name` is matched: a host from a request, or (for
    /// [`Matcher::covers`]) a wildcard's suffix such as `.a.example.com`,
    /// which stands for every name ending in it.
    fn matches(&self, name: &str) -> bool {
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

impl Matcher {
    /// Compiles a match. Header names, values and methods that do not parse
    /// are left out (validation refuses them before a config is used).
    pub(crate) fn new(m: &Match) -> Matcher {
        Matcher {
            host: m.host.as_ref().map(|h| match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                None => HostMatch::Exact(h.clone()),
            }),
            path_prefix: m.path_prefix.clone(),
            headers: m
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::try_from(k.as_str()).ok()?,
                        HeaderValue::try_from(v.as_str()).ok()?,
                    ))
                })
                .collect(),
            methods: m
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
        }
    }

    /// Whether a request matches.
    pub(crate) fn matches(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> bool {
        if let Some(want) = &self.host
            && !host.is_some_and(|h| want.matches(h))
        {
            return false;
        }
        if let Some(prefix) = &self.path_prefix
            && !path_under(prefix, path)
        {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get(name) == Some(value))
    }

    /// Whether every request `other` matches, this matches too: a route
    /// with `other` after one with `self` is never reached.
    pub(crate) fn covers(&self, other: &Matcher) -> bool {
        let host = match (&self.host, &other.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(HostMatch::Exact(b))) => a.matches(b),
            // A wildcard stands for the names ending in its suffix: only a
            // wildcard with a suffix of that suffix covers them all.
            (Some(a @ HostMatch::Suffix(_)), Some(HostMatch::Suffix(b))) => {
                a.matches(b) || matches!(a, HostMatch::Suffix(s) if s.eq_ignore_ascii_case(b))
            }
            (Some(HostMatch::Exact(_)), Some(HostMatch::Suffix(_))) => false,
        };
        let path = match (&self.path_prefix, &other.path_prefix) {
            (None, _) => true,
            // Every request path starts with '/'.
            (Some(a), None) => a == "/",
            (Some(a), Some(b)) => path_under(a, b),
        };
        let headers = self
            .headers
            .iter()
            .all(|h| other.headers.iter().any(|o| o == h));
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty()
                && other.methods.iter().all(|m| self.methods.contains(m)));
        host && path && headers && methods
    }

    /// Whether this matches every request.
    pub(crate) fn is_catch_all(&self) -> bool {
        self.covers(&Matcher::new(&Match::default()))
    }
}

/// A route, compiled: its matcher and where it sends requests.
pub(crate) struct CompiledRoute {
    pub(crate) name: String,
    matcher: Matcher,
    /// Services with cumulative weights; one entry for a plain route.
    targets: Vec<(String, u64)>,
}

impl CompiledRoute {
    /// Compiles route number `index` of the file.
    pub(crate) fn new(index: usize, r: &Route) -> CompiledRoute {
        let mut targets = Vec::new();
        if let Some(service) = &r.service {
            targets.push((service.clone(), 1));
        }
        let mut total = 0u64;
        for leg in &r.split {
            total += u64::from(leg.weight);
            targets.push((leg.service.clone(), total));
        }
        CompiledRoute {
            name: r.name.clone().unwrap_or_else(|| format!("route-{index}")),
            matcher: Matcher::new(&r.matches),
            targets,
        }
    }

    /// Whether a request matches this route.
    pub(crate) fn matches<B>(&self, host: Option<&str>, req: &http::Request<B>) -> bool {
        self.matcher
            .matches(host, req.method(), req.uri().path(), req.headers())
    }

    /// The service for one request: a weighted draw among a split's legs.
    pub(crate) fn pick(&self) -> &str {
        let total = self.targets.last().map_or(0, |t| t.1);
        if self.targets.len() == 1 || total == 0 {
            return &self.targets[0].0;
        }
        let draw = rand::rng().random_range(0..total);
        let i = self.targets.partition_point(|t| t.1 <= draw);
        &self.targets[i.min(self.targets.len() - 1)].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(host: Option<&str>, path: Option<&str>, methods: &[&str]) -> Matcher {
        Matcher::new(&Match {
            host: host.map(str::to_owned),
            path_prefix: path.map(str::to_owned),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            ..Match::default()
        })
    }

    /// The lint's "covers" is the router's "matches", quantified: whenever
    /// one matcher covers another, every request the second matches, the
    /// first matches too.
    #[test]
    fn covering_agrees_with_matching() {
        let matchers = [
            matcher(None, None, &[]),
            matcher(Some("a.com"), None, &[]),
            matcher(Some("*.a.com"), None, &[]),
            matcher(Some("*.y.a.com"), Some("/api"), &[]),
            matcher(None, Some("/api/"), &["GET"]),
            matcher(None, Some("/api"), &["GET", "PUT"]),
            matcher(Some("x.y.a.com"), Some("/api/v1"), &["GET"]),
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
        let headers = HeaderMap::new();
        let mut covered = 0;
        for a in &matchers {
            for b in &matchers {
                if !a.covers(b) {
                    continue;
                }
                covered += 1;
                for host in hosts {
                    for path in paths {
                        for method in &methods {
                            if b.matches(host, method, path, &headers) {
                                assert!(
                                    a.matches(host, method, path, &headers),
                                    "{a:?} covers {b:?} but not {host:?} {method} {path}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(covered > matchers.len(), "some matchers cover others");
        assert!(matchers[0].is_catch_all());
        assert!(!matchers[1].is_catch_all());
    }

    #[test]
    fn wildcards_match_at_any_depth_and_never_panic_on_non_ascii() {
        let m = matcher(Some("*.a.com"), None, &[]);
        let h = HeaderMap::new();
        assert!(m.matches(Some("x.y.A.com"), &Method::GET, "/", &h));
        assert!(!m.matches(Some("a.com"), &Method::GET, "/", &h));
        assert!(!m.matches(Some("é.com"), &Method::GET, "/", &h));
        assert!(!m.matches(Some("xé"), &Method::GET, "/", &h));
    }
}
