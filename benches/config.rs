//! How parsing and validating a proxy config grows with its size: the same
//! shape of file with 1 000 and 10 000 routes (and a service per ten
//! routes), timed in the same run; the target is linear growth, 10× the
//! routes in at most 15× the time. See `benches/README.md`.
//!
//! `cargo bench --bench config`

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use common::{Mode, median};
use palisade::proxy::config::Config;

/// A config with `routes` routes over `routes / 10` services.
fn config(routes: usize) -> String {
    let services = (routes / 10).max(1);
    let mut text = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n");
    for s in 0..services {
        text += &format!(
            "[[services]]\nname = \"svc{s}\"\nendpoints = [\"127.0.0.1:{}\"]\nretry = {{ max_attempts = 2 }}\n\n",
            10_000 + s % 50_000
        );
    }
    for r in 0..routes {
        text += &format!(
            "[[routes]]\nname = \"r{r}\"\nservice = \"svc{}\"\nmatch = {{ host = \"h{r}.example\", path_prefix = \"/p{r}\" }}\n\n",
            r % services
        );
    }
    text
}

/// Seconds to parse and validate `text` once.
fn once(text: &str) -> f64 {
    let start = Instant::now();
    let config = Config::from_file_text(text, Path::new("bench.toml"));
    let took = start.elapsed().as_secs_f64();
    assert!(config.is_ok(), "{:?}", config.err());
    took
}

/// Seconds for the `toml` crate alone to read `text` into a table once:
/// the baseline.
fn once_toml(text: &str) -> f64 {
    let start = Instant::now();
    let table = text.parse::<toml::Table>();
    let took = start.elapsed().as_secs_f64();
    assert!(table.is_ok());
    took
}

fn main() {
    let mode = Mode::from_env();
    let (small, reps) = match mode {
        Mode::Smoke => (100, 1),
        Mode::Quick => (1_000, 3),
        Mode::Full => (1_000, 7),
    };
    let large = small * 10;
    let (a, b) = (config(small), config(large));
    // Interleaved, so that the allocator's state and the machine's noise
    // fall on every figure alike.
    let mut samples: [Vec<f64>; 4] = Default::default();
    for _ in 0..reps {
        samples[0].push(once(&a));
        samples[1].push(once_toml(&a));
        samples[2].push(once(&b));
        samples[3].push(once_toml(&b));
    }
    let [ta, ba, tb, bb] = samples.map(median);
    println!("config parse + validate, medians of {reps}; baseline: the toml crate alone");
    println!(
        "{small:>6} routes ({:>5} KiB): {:>8.1} ms (toml alone {:>6.1} ms, {:.1}×)",
        a.len() / 1024,
        ta * 1e3,
        ba * 1e3,
        ta / ba
    );
    println!(
        "{large:>6} routes ({:>5} KiB): {:>8.1} ms (toml alone {:>6.1} ms, {:.1}×)",
        b.len() / 1024,
        tb * 1e3,
        bb * 1e3,
        tb / bb
    );
    println!("toml alone: 10× the routes took {:.1}× the time", bb / ba);
    let ratio = tb / ta;
    let verdict = if mode != Mode::Full {
        "(smoke or quick run)"
    } else if ratio <= 15.0 {
        "met"
    } else {
        "MISSED"
    };
    println!("10× the routes took {ratio:.1}× the time; target ≤ 15×: {verdict}");
}
