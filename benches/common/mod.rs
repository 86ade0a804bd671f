//! What the benches share: how long a run was asked to be, and medians.
//! Each bench includes this file (`#[path = "common/mod.rs"] mod common;`).

#![allow(dead_code)]

/// How long a run was asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Not started by `cargo bench` (`cargo test --benches`, a plain
    /// run): the least that shows the bench works.
    Smoke,
    /// `-- --quick`, or `PALISADE_BENCH_QUICK` set: a short look.
    Quick,
    /// `cargo bench`: the figures the README quotes.
    Full,
}

impl Mode {
    /// The mode this process was started in.
    pub fn from_env() -> Mode {
        let args: Vec<String> = std::env::args().collect();
        if !args.iter().any(|a| a == "--bench") {
            Mode::Smoke
        } else if args.iter().any(|a| a == "--quick")
            || std::env::var_os("PALISADE_BENCH_QUICK").is_some()
        {
            Mode::Quick
        } else {
            Mode::Full
        }
    }
}

/// The median (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
