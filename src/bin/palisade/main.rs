//! The `palisade` command line.
//!
//! `palisade demo` shows the client at work against in-process backends;
//! `palisade proxy -c FILE` runs the sidecar; `palisade check FILE`
//! validates a config. Logs go to stderr, filtered by `RUST_LOG` (default
//! `warn`).

mod demo;

use std::error::Error as StdError;
use std::fmt;
use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    about = "The client half of a service mesh as tower layers, and a sidecar proxy built from them.",
    after_help = "Logs go to stderr. Set RUST_LOG to change the level (default: warn), e.g. RUST_LOG=palisade=debug."
)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Start 5 local backends (3 healthy, 1 slow, 1 flaky), send load through
    /// palisade, and compare with uniform random choice.
    Demo(demo::DemoArgs),
    /// Run the sidecar proxy from a TOML config file. The file is reloaded
    /// when it changes and on SIGHUP (a bad file is rejected and the running
    /// config stays); SIGTERM or SIGINT stop accepting and drain in-flight
    /// requests for the grace period, then exit 0.
    Proxy {
        /// The config file (see docs/config.md; examples/minimal.toml).
        #[arg(short, long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
    /// Validate a proxy config file: print errors with field paths and line
    /// numbers (exit status 1) and lint policies that cannot work.
    Check {
        /// The config file.
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        // No runtime needed: a report on stdout and a status.
        Command::Check { file } => {
            let report = palisade::proxy::check::check_file(&file);
            print!("{report}");
            return ExitCode::from(report.exit_code());
        }
        Command::Demo(args) => with_runtime(demo::run(args)),
        Command::Proxy { config } => {
            fix_malloc_thresholds();
            // The first serving thread; the proxy starts one more per
            // `server.threads`, each with a runtime of its own.
            with_current_thread_runtime(proxy(config))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Output piped into something like `head` that stopped reading: not
        // worth an error message.
        Err(err) if err.is_broken_pipe() => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("palisade: error: {err}");
            for cause in causes(&err) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The messages of `err`'s causes, outermost first, leaving out a cause
/// whose message only repeats the end of the one before (some errors both
/// print their source and return it from `source()`).
pub(crate) fn causes(err: &(dyn StdError + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut previous = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !previous.ends_with(&message) {
            out.push(message.clone());
        }
        previous = message;
        source = cause.source();
    }
    out
}

/// Starts the Tokio runtime and runs a subcommand on it.
fn with_runtime(
    job: impl std::future::Future<Output = Result<(), CliError>>,
) -> Result<(), CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new("could not start the Tokio runtime").because(e))?
        .block_on(job)
}

/// Sets glibc malloc's thresholds to fixed values, for a long-running
/// proxy whose memory should follow what it holds.
///
/// By default glibc raises its mmap and trim thresholds (up to 32 and 64
/// MiB) each time a large block is freed. After a large config reload the
/// parser's freed memory then sat at the top of a thread's arena, under
/// the raised trim threshold, where neither `free` nor `malloc_trim` gives
/// it back: 30 MB stayed resident for good. Fixed thresholds keep the
/// defaults (blocks of 128 KiB and more come from mmap and go back on
/// free; a free top of 128 KiB is trimmed).
fn fix_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
    }
}

/// Starts a current-thread Tokio runtime and runs a subcommand on it.
fn with_current_thread_runtime(
    job: impl std::future::Future<Output = Result<(), CliError>>,
) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new("could not start the Tokio runtime").because(e))?
        .block_on(job)
}

/// `palisade proxy`: loads the config, serves until SIGTERM/SIGINT.
async fn proxy(path: std::path::PathBuf) -> Result<(), CliError> {
    use palisade::proxy::server;
    let config = server::load(&path).map_err(|e| CliError::new(e.to_string()))?;
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    server::run(path, config, shutdown, |listeners, admin| {
        let listeners: Vec<String> = listeners.iter().map(ToString::to_string).collect();
        // One line on stdout, for people and for scripts that wait for it.
        println!(
            "palisade proxy: listening on {} (admin {admin})",
            listeners.join(", ")
        );
    })
    .await
    .map_err(|e| CliError::new(e.to_string()))
}

/// Sends `tracing` output to stderr, filtered by `RUST_LOG` (default `warn`;
/// unparsable directives are ignored).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::builder()
                .with_default_directive(LevelFilter::WARN.into())
                .from_env_lossy(),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
}

/// An error for the user: one sentence saying what failed, and the
/// underlying cause, if any (printed as "caused by" lines).
#[derive(Debug)]
pub(crate) struct CliError {
    /// What failed, as a sentence fragment ("could not start ...").
    message: String,
    /// Why, when there is an underlying error.
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl CliError {
    /// An error with just a message.
    pub(crate) fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub(crate) fn because(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> CliError {
        self.source = Some(source.into());
        self
    }

    /// Whether this is a failed write to a closed stdout.
    fn is_broken_pipe(&self) -> bool {
        self.source
            .as_ref()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for CliError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}
