//! Reload: the config file watched with the change detector file discovery
//! uses, SIGHUP, and the swap of the routing table.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::discover::file::Watched;
use crate::proxy::config::Config;

use super::server::*;

/// Reloads the config when the file changes (polled) or on SIGHUP. A bad
/// file is logged, naming the field and line, and the running config stays.
///
/// Changes are seen by the change detector file discovery uses: not only a
/// new modification time but a new inode, size or change time too, so an
/// atomic rename over the file and a Kubernetes ConfigMap's symlink swap
/// are reloads; content identical to the last read is not.
///
/// The interval is the running config's `server.watch_interval`, read
/// before each wait: a reload that changes it applies from the next wait.
pub(crate) async fn watch_config(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut watched = Watched::new(state.path.clone(), MAX_CONFIG_BYTES);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let interval = state.routing.load().config.server.watch_interval;
        let forced = tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(interval) => false,
            _ = hangup => true,
        };
        if forced {
            watched.forget();
        }
        // The first check reads the file whatever it is: a config equal to
        // the running one is no reload. Reading and parsing run on a
        // blocking thread: a large file must not stall the requests this
        // runtime serves.
        let path = state.path.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let config = match watched.check() {
                Ok(None) => None,
                Ok(Some(bytes)) => Some(parse_config(&path, &bytes)),
                Err(e) => Some(Err(StartError::Read(path.clone(), e))),
            };
            (watched, config)
        })
        .await;
        let config = match checked {
            Ok((back, config)) => {
                watched = back;
                match config {
                    Some(config) => config,
                    None => continue,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; the running config stays");
                watched = Watched::new(state.path.clone(), MAX_CONFIG_BYTES);
                continue;
            }
        };
        match config {
            Ok(config) => {
                reload(&state, config).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
            }
        }
        // Parsing a large file, and the routing it replaced, freed far
        // more than stays in use.
        release_freed_memory();
    }
}

/// Hands memory the allocator holds free back to the operating system.
///
/// glibc's malloc keeps freed memory in its arenas (one per thread that
/// allocated; the parse ran on a blocking thread) and returns it only from
/// the top of the main heap: after a large reload the proxy kept the peak
/// for good. `malloc_trim` releases every arena's free pages. Elsewhere
/// (musl, macOS) the allocator returns memory on its own terms and this
/// does nothing.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // takes the arenas' locks and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Validates a config file's content, read from `path`.
pub(crate) fn parse_config(path: &Path, bytes: &[u8]) -> Result<Config, StartError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        StartError::Read(
            path.to_owned(),
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    Config::from_file_text(text, path).map_err(|e| StartError::Config(path.to_owned(), e))
}

/// A field a reload does not apply: the running value stays until the
/// proxy is restarted.
struct NeedsRestart {
    field: &'static str,
    running: String,
    file: String,
}

/// Puts the running values of the fields a reload cannot apply (the
/// sockets bound at startup: the listeners and the admin address) into
/// `config`, so that it is the config that will actually run, and names
/// those the file changed.
fn keep_bound_addresses(running: &Config, config: &mut Config) -> Vec<NeedsRestart> {
    let listeners = |c: &Config| {
        let addresses: Vec<String> = c.listeners.iter().map(|l| l.address.to_string()).collect();
        format!("[{}]", addresses.join(", "))
    };
    let mut kept = Vec::new();
    if config.listeners != running.listeners {
        kept.push(NeedsRestart {
            field: "listeners",
            running: listeners(running),
            file: listeners(config),
        });
        config.listeners = running.listeners.clone();
    }
    if config.admin != running.admin {
        kept.push(NeedsRestart {
            field: "admin.address",
            running: running.admin.address.to_string(),
            file: config.admin.address.to_string(),
        });
        config.admin = running.admin.clone();
    }
    if config.server.threads != running.server.threads {
        let threads = |c: &Config| match c.server.threads {
            Some(n) => n.to_string(),
            None => format!("one per CPU ({})", c.server.threads()),
        };
        kept.push(NeedsRestart {
            field: "server.threads",
            running: threads(running),
            file: threads(config),
        });
        config.server.threads = running.server.threads;
    }
    kept
}

/// Swaps in a new config; keeps the old one if a client cannot be built.
///
/// Everything but the listeners and the admin address applies: those keep
/// their running values (warned about, naming both values) and the proxy
/// keeps serving on the sockets it has. The running config, as `/config`
/// shows it, is what runs.
pub(crate) async fn reload(state: &State, mut config: Config) -> bool {
    let old = state.routing.load_full();
    let kept = keep_bound_addresses(&old.config, &mut config);
    for k in &kept {
        tracing::warn!(
            path = %state.path.display(),
            "config reload: {} changed from {} to {}, which needs a restart; \
             the running value stays",
            k.field,
            k.running,
            k.file,
        );
    }
    // The running config keeps its routes apart, in their table.
    let routes = std::mem::take(&mut config.routes);
    let unchanged = *old.config == config && old.routes.is(&routes);
    config.routes = routes;
    if unchanged {
        return false;
    }
    match build_routing(config, Some(&old), &state.metrics).await {
        Ok(routing) => {
            state.routing.store(Arc::new(routing));
            if kept.is_empty() {
                tracing::info!(path = %state.path.display(), "config reloaded");
            } else {
                let fields: Vec<&str> = kept.iter().map(|k| k.field).collect();
                tracing::info!(
                    path = %state.path.display(),
                    "config reloaded, except {} (a restart is needed for those)",
                    fields.join(", "),
                );
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; the running config stays");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::proxy::config::EndpointSpec;

    /// A config whose one service's endpoint has `port`, checked every
    /// `interval`.
    fn text(interval: &str, port: u16) -> String {
        format!(
            "[server]\nwatch_interval = \"{interval}\"\n\
             [[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:{port}\"]\n\
             [[routes]]\nservice = \"app\"\n"
        )
    }

    /// How long (in paused time) until the running config's endpoint has
    /// port `want`; panics after two hours.
    async fn until_port(state: &State, want: u16) -> Duration {
        let want_endpoint = EndpointSpec::Address(format!("127.0.0.1:{want}"));
        let start = Instant::now();
        while state.routing.load().config.services[0].endpoints[0] != want_endpoint {
            assert!(
                start.elapsed() < Duration::from_secs(7200),
                "no reload to port {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_reloaded_watch_interval_applies_to_the_next_wait() {
        let dir = std::env::temp_dir().join(format!("palisade-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path: PathBuf = dir.join("interval.toml");
        std::fs::write(&path, text("1h", 1)).unwrap();
        let config = load(&path).unwrap();
        let state = Arc::new(State::new(path.clone(), config).await.unwrap());
        let (stop, stopped) = watch::channel(false);
        let watcher = tokio::spawn(watch_config(state.clone(), stopped));

        // Seen after the hour-long wait the proxy started with ...
        std::fs::write(&path, text("1s", 2)).unwrap();
        let waited = until_port(&state, 2).await;
        assert!(waited >= Duration::from_secs(3599), "{waited:?}");
        assert_eq!(
            state.routing.load().config.server.watch_interval,
            Duration::from_secs(1)
        );
        // ... and from then on the file is checked every second.
        std::fs::write(&path, text("1s", 3)).unwrap();
        let waited = until_port(&state, 3).await;
        assert!(waited <= Duration::from_secs(2), "{waited:?}");

        stop.send(true).unwrap();
        watcher.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
