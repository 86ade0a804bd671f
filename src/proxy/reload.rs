//! Reload: the config file watched with the change detector file discovery
//! uses, SIGHUP, and the swap of the routing table.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
pub(crate) async fn watch_config(
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    interval: Duration,
) {
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
        let forced = tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(interval) => false,
            _ = hangup => true,
        };
        if forced {
            watched.forget();
        }
        // The first check reads the file whatever it is: a config equal to
        // the running one is no reload.
        let config = match watched.check() {
            Ok(None) => continue,
            Ok(Some(bytes)) => parse_config(&state.path, bytes),
            Err(e) => Err(StartError::Read(state.path.clone(), e)),
        };
        match config {
            Ok(config) => {
                reload(&state, config).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
            }
        }
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

/// Swaps in a new config; keeps the old one if a client cannot be built.
pub(crate) async fn reload(state: &State, config: Config) -> bool {
    let old = state.routing.load_full();
    if *old.config == config {
        return false;
    }
    match build_routing(Arc::new(config), Some(&old), &state.http, &state.metrics).await {
        Ok(routing) => {
            state.routing.store(Arc::new(routing));
            tracing::info!(path = %state.path.display(), "config reloaded");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; the running config stays");
            false
        }
    }
}
