//! The demo's rendering: the live table, the summary, number formatting.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write as _};
use std::time::Duration;

use palisade::balance::EndpointStats;
use palisade::discover::Address;

use crate::CliError;

use super::*;

/// The live per-endpoint table of one phase.
pub(super) struct Table<'a> {
    /// Which balancer is running.
    pub(super) label: &'static str,
    /// How long the phase runs.
    pub(super) duration: Duration,
    /// The backends, in display order.
    pub(super) fleet: &'a [Member],
    /// Width of the address column.
    pub(super) address_width: usize,
}

impl<'a> Table<'a> {
    /// A table for `fleet`.
    pub(super) fn new(label: &'static str, duration: Duration, fleet: &'a [Member]) -> Self {
        Table {
            label,
            duration,
            fleet,
            address_width: address_width(fleet),
        }
    }

    /// One frame: a header line with progress and totals, then a row per
    /// backend. `elapsed` is the time since the start, or the phase's whole
    /// duration once `done`.
    pub(super) fn render(&self, elapsed: Duration, stats: &[EndpointStats], done: bool) -> String {
        let by_address: HashMap<&Address, &EndpointStats> =
            stats.iter().map(|s| (&s.address, s)).collect();
        let total: u64 = stats.iter().map(|s| s.requests).sum();
        let secs = elapsed.as_secs_f64();
        let progress = if done {
            format!("done, {}s", self.duration.as_secs())
        } else {
            format!("{secs:.0}s of {}s", self.duration.as_secs())
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "[{}] {progress} · {} requests · {} req/s",
            self.label,
            group(total),
            group((total as f64 / secs.max(1e-9)).round() as u64),
        );
        let w = self.address_width;
        let _ = writeln!(
            s,
            "  {:<9}  {:<w$}  {:>6}  {:>8}  {:>8}  {:>8}  {:>9}",
            "backend", "address", "share", "requests", "EWMA", "failures", "in flight"
        );
        for m in self.fleet {
            let addr = m.backend.addr();
            match by_address.get(&m.address()) {
                Some(st) => {
                    let share = if total == 0 {
                        0.0
                    } else {
                        st.requests as f64 / total as f64
                    };
                    let _ = writeln!(
                        s,
                        "  {:<9}  {:<w$}  {:>6}  {:>8}  {:>8}  {:>8}  {:>9}",
                        m.name,
                        addr,
                        percent(share),
                        group(st.requests),
                        millis(st.rtt_estimate),
                        group(st.failures),
                        st.in_flight,
                    );
                }
                None => {
                    let _ = writeln!(s, "  {:<9}  {:<w$}  (not in the balancer)", m.name, addr);
                }
            }
        }
        s
    }
}

/// Row names of the summary table.
pub(super) const METRICS: [&str; 9] = [
    "duration",
    "requests",
    "throughput",
    "success rate",
    "latency p50",
    "latency p90",
    "latency p99",
    "sent to slow",
    "sent to flaky",
];

/// A phase's figures for the [`METRICS`] rows, as displayed.
pub(super) fn cells(p: &Phase) -> [String; 9] {
    let latency = |q| p.percentile(q).map_or_else(|| "-".into(), millis);
    let share = |i| p.share(i).map_or_else(|| "-".into(), percent);
    [
        format!("{}s", p.duration.as_secs()),
        group(p.sent),
        format!("{} req/s", group(p.throughput().round() as u64)),
        p.success_rate().map_or_else(|| "-".into(), percent),
        latency(50.0),
        latency(90.0),
        latency(99.0),
        share(SLOW),
        share(FLAKY),
    ]
}

/// A phase's figures for the [`METRICS`] rows, as numbers to divide; `None`
/// where a ratio means nothing (the phases run for different times).
pub(super) fn figures(p: &Phase) -> [Option<f64>; 9] {
    let latency = |q| p.percentile(q).map(|d| d.as_secs_f64());
    [
        None,
        None,
        Some(p.throughput()),
        p.success_rate(),
        latency(50.0),
        latency(90.0),
        latency(99.0),
        p.share(SLOW),
        p.share(FLAKY),
    ]
}

/// The closing comparison of the two phases (or the palisade phase alone).
pub(super) fn summary(palisade: &Phase, random: Option<&Phase>) -> String {
    let mut table: Vec<Vec<String>> = vec![vec!["metric".into(), palisade.label.into()]];
    if let Some(random) = random {
        table[0].extend([random.label.into(), "ratio".into()]);
    }
    let ours = (cells(palisade), figures(palisade));
    let theirs = random.map(|r| (cells(r), figures(r)));
    for (i, metric) in METRICS.iter().enumerate() {
        let mut row = vec![metric.to_string(), ours.0[i].clone()];
        if let Some((cells, figures)) = &theirs {
            let ratio = match (ours.1[i], figures[i]) {
                (Some(a), Some(b)) if b > 0.0 => times(a / b),
                _ => String::new(),
            };
            row.extend([cells[i].clone(), ratio]);
        }
        table.push(row);
    }

    let mut s = String::from(
        "\nSummary (latency: from sending a request to reading the whole response;\n\
         failed requests included):\n\n",
    );
    s += &align(&table);
    let Some(random) = random else {
        s += "\n(Run without --no-baseline to compare with uniform random choice.)\n";
        return s;
    };
    let avoided = |p: &Phase| p.share(SLOW).unwrap_or(0.0) + p.share(FLAKY).unwrap_or(0.0);
    s.push('\n');
    s += &wrap(
        "ratio = palisade ÷ uniform random. Lower is better for latency and for the \
         slow/flaky shares; higher is better for throughput and success rate.",
    );
    s.push('\n');
    let mut closing = format!(
        "palisade sent {} of its attempts to the slow and flaky backends (uniform \
         random: {}), so the same {} tasks completed {} as many requests per second. \
         Both clients retry a 503 on another backend and eject a backend that keeps \
         failing (the flaky one was ejected {} times with P2C, {} with random choice); \
         what differs is the choice: P2C draws two backends and sends the request to \
         the one with the lower latency estimate × outstanding requests.",
        percent(avoided(palisade)),
        percent(avoided(random)),
        palisade.tasks,
        times(palisade.throughput() / random.throughput().max(1e-9)),
        palisade.ejections[FLAKY],
        random.ejections[FLAKY],
    );
    let slow_share = |p: &Phase| p.share(SLOW).unwrap_or(0.0);
    if slow_share(palisade) > 0.01 {
        closing += " More than 1% of the attempts went to the slow backend, so p99 \
                    is the slow backend's latency.";
    }
    s += &wrap(&closing);
    s
}

/// Lays out `rows` as text columns, indented by two spaces: the first
/// column left-aligned, the others right-aligned.
pub(super) fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            let w = widths[c];
            if c == 0 {
                let _ = write!(line, " {cell:<w$}");
            } else {
                let _ = write!(line, "   {cell:>w$}");
            }
        }
        s += line.trim_end();
        s.push('\n');
    }
    s
}

/// `n` with thousands separators: `12,345`.
pub(super) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A fraction in 0..=1 as a percentage, with more decimals when small so
/// that a tiny share does not read as zero: `33.3%`, `0.45%`, `0%`.
pub(super) fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p == 0.0 {
        "0%".into()
    } else if p < 1.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

/// A duration in milliseconds, with precision to match: `0.45 ms`,
/// `9.87 ms`, `10.9 ms`, `212 ms`.
pub(super) fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// A ratio: `0.95×`, `2.60×`, `15×`; below 0.01 with two significant
/// digits (`0.0041×`), so a small ratio does not read as zero.
pub(super) fn times(r: f64) -> String {
    if r == 0.0 {
        "0×".into()
    } else if r >= 10.0 {
        format!("{r:.0}×")
    } else if r >= 0.01 {
        format!("{r:.2}×")
    } else {
        let decimals = (1 - r.log10().floor() as i32).clamp(2, 6) as usize;
        format!("{r:.decimals$}×")
    }
}

/// Where the demo's report goes: stdout, redrawing the live table in place
/// when stdout is a terminal, and appending a new block otherwise.
pub(super) struct Screen {
    /// Standard output.
    pub(super) out: io::Stdout,
    /// Whether stdout is a terminal that understands cursor movement.
    pub(super) redraw: bool,
    /// Lines of the live frame last printed, to overwrite with the next.
    pub(super) frame_lines: usize,
}

impl Screen {
    /// A screen on this process's stdout.
    pub(super) fn stdout() -> Screen {
        let out = io::stdout();
        let redraw = out.is_terminal() && std::env::var_os("TERM").is_some_and(|t| t != "dumb");
        Screen {
            out,
            redraw,
            frame_lines: 0,
        }
    }

    /// Prints `text` as is; the next frame starts below it.
    pub(super) fn print(&mut self, text: &str) -> Result<(), CliError> {
        self.frame_lines = 0;
        self.write(text)
    }

    /// Prints a live frame, replacing the previous one on a terminal, or
    /// after a blank line otherwise.
    pub(super) fn frame(&mut self, text: &str) -> Result<(), CliError> {
        let mut buf = String::new();
        if self.frame_lines > 0 {
            if self.redraw {
                // Up to the previous frame's first line, then clear below.
                let _ = write!(buf, "\x1b[{}F\x1b[J", self.frame_lines);
            } else {
                buf.push('\n');
            }
        }
        buf.push_str(text);
        self.frame_lines = text.lines().count();
        self.write(&buf)
    }

    /// Writes and flushes.
    pub(super) fn write(&mut self, text: &str) -> Result<(), CliError> {
        let mut out = self.out.lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| CliError::new("could not write to stdout").because(e))
    }
}
