//! Watching the file: telling cheaply whether it changed (a `stat`, then a
//! digest of what was read), and the polling task that applies new sets.

use super::*;

/// What a file looked like at one `stat`, following symlinks: enough to
/// tell, without reading it, that it was very probably rewritten, replaced
/// (renamed over) or swapped (a symlink along the way now points
/// elsewhere).
///
/// Modification time and length everywhere; on Unix also device, inode
/// and change time (`ctime`: chmod, rename and link changes set it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub(super) modified: Option<SystemTime>,
    pub(super) len: u64,
    #[cfg(unix)]
    id: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

/// A file modified this recently may be modified again without its stamp
/// changing (file-system clocks tick coarsely), so it is re-read.
pub(super) const RACY: Duration = Duration::from_secs(2);

impl FileStamp {
    /// The stamp of `metadata` (of the file, not of a symlink to it).
    pub(crate) fn of(metadata: &fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            #[cfg(unix)]
            id: (metadata.dev(), metadata.ino()),
            #[cfg(unix)]
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Whether the file was modified too recently for its stamp to be
    /// trusted (or has no modification time).
    pub(super) fn is_racy(&self) -> bool {
        self.modified.is_none_or(|modified| {
            SystemTime::now()
                .duration_since(modified)
                .map_or(true, |age| age < RACY)
        })
    }
}

/// A file watched by polling: [`check`](Watched::check) says whether its
/// content changed since the last check, reading it only when its
/// [`FileStamp`] changed (or was too recent to trust), and comparing what it
/// read with the last content, so an identical rewrite is no change.
///
/// Every source that reloads a file on a timer uses this (file discovery;
/// the proxy's config reload can too): call `check` at each tick, act on
/// `Ok(Some(bytes))`, log `Err` (it is returned once per change of the
/// file, not at every tick). Its errors are plain `io::Error`s, so that
/// each user words them for its own file.
#[derive(Debug)]
pub(crate) struct Watched {
    path: PathBuf,
    max_bytes: u64,
    /// The stamp at the last check (`Err`: `stat` failed), `None` before
    /// the first.
    stamp: Option<Result<FileStamp, io::ErrorKind>>,
    /// Re-read at the next check whatever the stamp.
    pub(super) racy: bool,
    /// A digest of the content last read, `None` before the first good
    /// read: the content itself is not kept (a large file would be held
    /// twice, once as text and once parsed).
    content: Option<Digest>,
}

/// A 128-bit digest of a file's content: two SipHash sums under different
/// prefixes, and the length. Content that changes and keeps its digest
/// (odds of 2⁻¹²⁸ by accident) would be missed until the next change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Digest(u64, u64, usize);

impl Digest {
    fn of(bytes: &[u8]) -> Digest {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let sum = |prefix: u8| {
            let mut h = DefaultHasher::new();
            prefix.hash(&mut h);
            bytes.hash(&mut h);
            h.finish()
        };
        Digest(sum(0), sum(1), bytes.len())
    }
}

impl Watched {
    /// Watches `path`; files larger than `max_bytes` are an error.
    pub(crate) fn new(path: PathBuf, max_bytes: u64) -> Watched {
        Watched {
            path,
            max_bytes,
            stamp: None,
            racy: false,
            content: None,
        }
    }

    /// `Ok(Some(content))` when the file's content differs from the last
    /// check's (the first check returns it whatever it is), `Ok(None)` when
    /// it is the same, or the file is still missing or bad as it was at the
    /// last check; `Err` when the file changed and cannot be read now
    /// (missing, unreadable, or larger than the limit: then the error's
    /// kind is `FileTooLarge` and its message names the limit). Blocking;
    /// cheap when nothing changed (one `stat`).
    pub(crate) fn check(&mut self) -> io::Result<Option<Vec<u8>>> {
        let metadata = fs::metadata(&self.path);
        let stamp = match &metadata {
            Ok(m) => Ok(FileStamp::of(m)),
            Err(e) => Err(e.kind()),
        };
        if !self.racy && self.stamp == Some(stamp) {
            return Ok(None);
        }
        self.stamp = Some(stamp);
        self.racy = false;
        metadata?;
        let (bytes, stamp) = read_bounded(&self.path, self.max_bytes)?;
        // The stamp of what was read (the path may have changed since the
        // `stat` above; if so the next check sees it).
        self.stamp = Some(Ok(stamp));
        self.racy = stamp.is_racy();
        let digest = Digest::of(&bytes);
        if self.content == Some(digest) {
            return Ok(None);
        }
        self.content = Some(digest);
        Ok(Some(bytes))
    }

    /// Forgets what was seen, so that the next [`check`](Watched::check)
    /// returns the content even if it did not change (for a forced reload,
    /// such as on SIGHUP).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn forget(&mut self) {
        self.stamp = None;
        self.racy = false;
        self.content = None;
    }
}

/// Reads at most `max_bytes` of the file at `path`, and its stamp. A
/// larger file is an error of kind `FileTooLarge` carrying [`OverLimit`];
/// anything but a regular file (a FIFO, a device, a directory) is refused
/// before it is opened. The proxy reads its config file with it too.
pub(crate) fn read_bounded(path: &Path, max_bytes: u64) -> io::Result<(Vec<u8>, FileStamp)> {
    let too_large = || io::Error::new(io::ErrorKind::FileTooLarge, OverLimit(max_bytes));
    // Opening a FIFO would block until a writer comes; a directory cannot
    // be read. Only a regular file (through symlinks) will do.
    if !fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let file = fs::File::open(path)?;
    let metadata = file.metadata()?;
    if metadata.len() > max_bytes {
        return Err(too_large());
    }
    // The file may grow while we read: never read more than the limit.
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok((bytes, FileStamp::of(&metadata)))
}

/// A file over the size limit (in bytes); see [`read_bounded`].
#[derive(Debug)]
pub(crate) struct OverLimit(pub(super) u64);

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "larger than the limit of {} bytes", self.0)
    }
}

impl std::error::Error for OverLimit {}

// ---------------------------------------------------------------------------
// The polling task.

/// The state of one spawned [`Watch`].
pub(super) struct Source {
    pub(super) path: PathBuf,
    pub(super) watched: Watched,
    pub(super) format: Format,
    pub(super) max_endpoints: usize,
    pub(super) handle: DynamicHandle,
}

impl Source {
    /// One look at the file: `Ok(Some(n))` when a new set of `n` endpoints
    /// was applied, `Ok(None)` when nothing changed, `Err` when the file
    /// changed and was rejected (the set stays).
    pub(super) fn poll(&mut self) -> Result<Option<usize>, FileError> {
        let path = &self.path;
        let Some(bytes) = self.watched.check().map_err(|e| FileError::read(path, e))? else {
            return Ok(None);
        };
        let endpoints =
            parse_bytes(&bytes, self.format, self.max_endpoints).map_err(|e| e.at(path))?;
        let n = endpoints.len();
        self.handle.replace(endpoints);
        Ok(Some(n))
    }

    pub(super) fn log(&self, outcome: Result<Option<usize>, FileError>) {
        let path = self.path.display();
        match outcome {
            Ok(None) => {}
            Ok(Some(0)) => tracing::warn!(%path, "endpoints file loaded: it lists no endpoints"),
            Ok(Some(endpoints)) => tracing::info!(%path, endpoints, "endpoints file loaded"),
            Err(e) => {
                let kept = self.handle.len();
                let missing =
                    matches!(&e.kind, ErrorKind::Read(io) if io.kind() == io::ErrorKind::NotFound);
                if missing {
                    tracing::warn!(%path, kept, error = %e, "endpoints file missing; keeping the last good set");
                } else {
                    tracing::error!(
                        %path,
                        line = e.line(),
                        column = e.column(),
                        field = e.field(),
                        kept,
                        error = %e,
                        "endpoints file rejected; keeping the last good set"
                    );
                }
            }
        }
    }

    pub(super) async fn run(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let tick = tokio::select! {
                biased;
                () = self.handle.closed() => false,
                _ = ticks.tick() => true,
            };
            if !tick {
                tracing::debug!(path = %self.path.display(), "endpoints file no longer watched: its balancer is gone");
                return;
            }
            let outcome = self.poll();
            self.log(outcome);
        }
    }
}
