//! Lints: policies that parse but cannot work as written.

use super::*;
pub(crate) use crate::proxy::routes::{covers, is_catch_all};

pub(crate) fn lint(c: &Config, r: &mut Report<'_>) {
    let root = FieldPath::root();

    // The admin server answers anyone who reaches it.
    let admin = c.admin.address.ip();
    if !admin.to_canonical().is_loopback() {
        r.add(
            &root.at("admin.address"),
            format!(
                "{admin} is not a loopback address: anyone who can reach it can read /config (routes and services), /snapshot (every endpoint and its health) and /metrics; bind 127.0.0.1 or ::1 unless a firewall or network policy keeps others out"
            ),
        );
    }

    // Routes that can never match: an earlier route takes all their requests.
    let mut live = vec![true; c.routes.len()];
    for (j, route) in c.routes.iter().enumerate() {
        if let Some(i) = (0..j).find(|&i| covers(&c.routes[i].matches, &route.matches)) {
            live[j] = false;
            let earlier = root.key("routes").index(i);
            let message = if is_catch_all(&c.routes[i].matches) {
                format!(
                    "unreachable: {} before it matches every request",
                    r.at(&earlier)
                )
            } else {
                format!(
                    "unreachable: {} before it matches every request this route matches",
                    r.at(&earlier)
                )
            };
            r.add(&root.key("routes").index(j), message);
        }
    }

    // Which live routes reach each service.
    let mut reaching: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, route) in c.routes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let mut targets: Vec<&str> = route.service.iter().map(String::as_str).collect();
        targets.extend(
            route
                .split
                .iter()
                .filter(|leg| leg.weight > 0)
                .map(|leg| leg.service.as_str()),
        );
        for target in targets {
            let routes = reaching.entry(target).or_default();
            if routes.last() != Some(&i) {
                routes.push(i);
            }
        }
    }

    for (i, s) in c.services.iter().enumerate() {
        let sp = root.key("services").index(i);
        let retry = &s.client.retry;
        let timeout = s.client.deadline.timeout;

        if let (Some(per_try), Some(timeout)) = (retry.per_try_timeout, timeout) {
            let total = per_try.saturating_mul(retry.max_attempts.max(1));
            if total > timeout {
                let message = if retry.max_attempts <= 1 || per_try >= timeout {
                    format!(
                        "per_try_timeout ({}) is not shorter than deadline.timeout ({}): the deadline always ends an attempt first, so the per-try timeout never fires",
                        format_duration(per_try),
                        format_duration(timeout)
                    )
                } else {
                    format!(
                        "per_try_timeout × max_attempts ({} × {} = {}) exceeds deadline.timeout ({}): when attempts time out, the later ones can never run",
                        retry.max_attempts,
                        format_duration(per_try),
                        format_duration(total),
                        format_duration(timeout)
                    )
                };
                r.add(&sp.at("retry.per_try_timeout"), message);
            }
        }

        if s.client.budget.ratio > 1.0 {
            r.add(
                &sp.at("budget.ratio"),
                format!(
                    "a ratio of {} allows more retries than requests: the budget no longer stops retry storms (0.2 is the default)",
                    s.client.budget.ratio
                ),
            );
        }

        if retry.max_attempts > 1
            && let Some(t) = timeout
            && retry.backoff_cap >= t
        {
            r.add(
                &sp.at("retry.backoff_cap"),
                format!(
                    "backoff_cap ({}) is not shorter than deadline.timeout ({}): a retry that backs off that long always misses the deadline",
                    format_duration(retry.backoff_cap),
                    format_duration(t)
                ),
            );
        }

        if let Some(t) = timeout
            && t > s.client.deadline.max_timeout
        {
            r.add(
                &sp.at("deadline.timeout"),
                format!(
                    "the default deadline ({}) is longer than max_timeout ({}), the longest a caller may ask for",
                    format_duration(t),
                    format_duration(s.client.deadline.max_timeout)
                ),
            );
        }

        if let Some(discovery) = &s.discovery {
            lint_discovery(c, discovery, &sp.key("discovery"), r);
        }
        lint_limits(s, &sp.key("limits"), r);
        if let Some(h) = &s.client.hedge {
            lint_hedge(s, h, &sp.key("hedge"), r);
        }

        match reaching.get(s.name.as_str()) {
            None => {
                r.add(
                    &sp.key("name"),
                    format!("no reachable route sends traffic to service {:?}", s.name),
                );
            }
            Some(routes) if retry.max_attempts > 1 => {
                let only_unsafe = routes.iter().all(|&k| {
                    let methods = &c.routes[k].matches.methods;
                    !methods.is_empty()
                        && methods.iter().all(|m| {
                            http::Method::from_bytes(m.as_bytes())
                                .is_ok_and(|m| !crate::retry::is_idempotent(&m))
                        })
                });
                if only_unsafe {
                    let listed: Vec<String> = routes
                        .iter()
                        .map(|&k| r.at(&root.key("routes").index(k)))
                        .collect();
                    r.add(
                        &sp.at("retry.max_attempts"),
                        format!(
                            "max_attempts is {}, but every route to {:?} ({}) takes only non-idempotent methods: only requests refused before they were sent are retried (set max_attempts = 1 to say so)",
                            retry.max_attempts,
                            s.name,
                            listed.join(", ")
                        ),
                    );
                }
            }
            Some(_) => {}
        }
    }
}

/// Refreshes and polls more often than this are lints: they load DNS
/// servers and file systems for changes that rarely come that fast.
pub(crate) const FAST_REFRESH: Duration = Duration::from_millis(100);

/// A throttle window shorter than this reacts to a handful of refusals.
pub(crate) const SHORT_THROTTLE_WINDOW: Duration = Duration::from_secs(10);

pub(crate) fn lint_discovery(c: &Config, d: &Discovery, dp: &FieldPath, r: &mut Report<'_>) {
    let at = dp.key(d.kind());
    match d {
        Discovery::Dns(dns) => {
            for (key, value) in [
                ("refresh_min", dns.refresh_min),
                ("refresh_max", dns.refresh_max),
            ] {
                if let Some(value) = value
                    && value < FAST_REFRESH
                {
                    r.add(
                        &dp.key(key),
                        format!(
                            "{key} of {} re-resolves more than 10 times a second: a load on the DNS servers for changes that rarely come that fast",
                            format_duration(value)
                        ),
                    );
                }
            }
        }
        Discovery::File(file) => {
            if file.interval < FAST_REFRESH {
                r.add(
                    &dp.key("interval"),
                    format!(
                        "an interval of {} checks the file more than 10 times a second",
                        format_duration(file.interval)
                    ),
                );
            }
            let path = c.resolve_path(&file.path);
            match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => r.add(
                    &at,
                    format!(
                        "{} does not exist (yet): the service has no endpoints until it appears",
                        path.display()
                    ),
                ),
                // The file as the source would read it now.
                _ => {
                    if let Err(e) = file.to_watch(c).load() {
                        r.add(
                            &at,
                            format!("{e}: the service has no endpoints until it is fixed"),
                        );
                    }
                }
            }
        }
        Discovery::Kubernetes(_) => {}
    }
}

/// Hedging that cannot work, or costs more than it looks.
pub(crate) fn lint_hedge(
    s: &Service,
    h: &crate::hedge::HedgeSettings,
    hp: &FieldPath,
    r: &mut Report<'_>,
) {
    use crate::hedge::HedgeDelay;
    let first = match h.delay {
        HedgeDelay::Fixed(d) => d,
        _ => h.fallback_delay,
    };
    if let Some(timeout) = s.client.deadline.timeout
        && first >= timeout
    {
        let key = if matches!(h.delay, HedgeDelay::Fixed(_)) {
            "delay"
        } else {
            "fallback_delay"
        };
        r.add(
            &hp.key(key),
            format!(
                "{} is not shorter than deadline.timeout ({}): no backup would ever be sent",
                format_duration(first),
                format_duration(timeout)
            ),
        );
    }
    if h.budget_ratio.is_finite() && h.budget_ratio > 0.2 {
        r.add(
            &hp.key("budget_ratio"),
            format!(
                "{} lets hedging add up to {:.0} % load; hedges are meant to be rare (the default is {})",
                h.budget_ratio,
                h.budget_ratio * 100.0,
                crate::hedge::DEFAULT_BUDGET_RATIO
            ),
        );
    }
    if let crate::hedge::HedgeDelay::Percentile(q) = h.delay
        && q < 0.5
    {
        r.add(
            &hp.key("delay"),
            format!(
                "p{} hedges more than half of all requests whenever the budget allows",
                q * 100.0
            ),
        );
    }
}

pub(crate) fn lint_limits(s: &Service, lp: &FieldPath, r: &mut Report<'_>) {
    let timeout = s.client.deadline.timeout;
    if let Some(c) = &s.client.limits.concurrency {
        let cp = lp.key("concurrency");
        match (c.max_wait, timeout) {
            (Some(wait), Some(timeout)) if wait > timeout => r.add(
                &cp.key("max_wait"),
                format!(
                    "max_wait ({}) is longer than deadline.timeout ({}): a queued request without a deadline header is shed at its deadline first",
                    format_duration(wait),
                    format_duration(timeout)
                ),
            ),
            (None, None) if c.queue > 0 => r.add(
                &cp.key("max_wait"),
                "max_wait and deadline.timeout are both \"none\": a queued request without a deadline header may wait for a slot for ever",
            ),
            _ => {}
        }
    }
    if let Some(rate) = &s.client.limits.rate
        && rate.key_header.is_none()
        && rate.without_key != crate::limit::WithoutKey::default()
    {
        r.add(
            &lp.at("rate.without_key"),
            "has no effect without key_header: every request shares the one bucket",
        );
    }
    if let Some(t) = &s.client.limits.throttle
        && !t.window.is_zero()
        && t.window < SHORT_THROTTLE_WINDOW
    {
        r.add(
            &lp.at("throttle.window"),
            format!(
                "a window of {} is shorter than {}: a handful of refusals swings the rejection probability (the default is {})",
                format_duration(t.window),
                format_duration(SHORT_THROTTLE_WINDOW),
                format_duration(crate::limit::throttle::DEFAULT_WINDOW)
            ),
        );
    }
}
