//! File discovery: a JSON or TOML list of endpoints, watched for changes.
//!
//! [`Watch`] reads the file, feeds its endpoints to a [`Dynamic`] source
//! (the stream a balancer consumes), and polls the file for changes:
//!
//! ```
//! use std::time::Duration;
//! use palisade::discover::file;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("palisade-doc-file-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("users.json");
//! std::fs::write(&path, r#"["127.0.0.1:8081", {"address": "127.0.0.1:8082", "weight": 2}]"#)?;
//!
//! let discover = file::Watch::new(&path)
//!     .interval(Duration::from_millis(50))
//!     .spawn()?;
//! let client = palisade::Client::builder("users")
//!     .discover(discover)
//!     .http(palisade::http::hyper_client::<http_body_util::Full<bytes::Bytes>>())
//!     .build()?;
//! let wait = |n| tokio::time::timeout(Duration::from_secs(10), client.wait_until(move |c| c.endpoint_count() == n));
//! wait(2).await?;
//!
//! // Replace the file atomically (write, then rename over it): the next poll
//! // picks it up.
//! std::fs::write(dir.join("users.json.tmp"), r#"{"endpoints": ["127.0.0.1:8083"]}"#)?;
//! std::fs::rename(dir.join("users.json.tmp"), &path)?;
//! wait(1).await?;
//! assert_eq!(client.endpoint_stats()[0].address.to_string(), "127.0.0.1:8083");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! # The file
//!
//! UTF-8 (a leading byte-order mark is ignored), [JSON](Format::Json) or
//! [TOML](Format::Toml), told apart by the extension (`.json`, `.toml`, in
//! any case) unless [`Watch::format`] says. JSON is a list of entries, or an
//! object whose only key is `endpoints`:
//!
//! ```json
//! [
//!   "10.0.0.1:8080",
//!   { "address": "10.0.0.2:8080", "weight": 2.0, "labels": { "zone": "eu-west-1a" } }
//! ]
//! ```
//!
//! TOML has `endpoints` as its only key (an array, or `[[endpoints]]`
//! tables):
//!
//! ```toml
//! endpoints = [
//!   "10.0.0.1:8080",
//!   { address = "10.0.0.2:8080", weight = 2.0, labels = { zone = "eu-west-1a" } },
//! ]
//! ```
//!
//! Each entry is an address (`ip:port`, `[ipv6]:port` or `host:port`; see
//! [`Endpoint::parse`]), or a table with:
//!
//! | key | required | what |
//! |---|---|---|
//! | `address` | yes | the address, as above |
//! | `weight` | no | relative capacity, finite and greater than 0; default 1 |
//! | `labels` | no | a table of strings (zone, version, …) |
//!
//! The entry shape is the one the proxy's config uses for
//! `services[].endpoints` ([`EndpointSpec`](crate::discover::EndpointSpec)).
//! Anything else is an error: an unknown key (at the top or in an entry), a
//! wrong type, a bad address or weight, an address listed twice, more than
//! [`DEFAULT_MAX_ENDPOINTS`] entries or a file larger than
//! [`DEFAULT_MAX_BYTES`] (both adjustable). An empty list is valid: it
//! empties the set.
//!
//! # Errors
//!
//! A [`FileError`] names the file, the 1-based line and column, the entry
//! and field (`endpoints[3].weight`; entries are called `endpoints[i]` in
//! both forms of JSON) and what is wrong:
//!
//! ```
//! use palisade::discover::file::{self, ErrorKind, Format};
//!
//! let err = file::parse(r#"[
//!   "127.0.0.1:8081",
//!   { "address": "127.0.0.1:8082", "weight": 0 }
//! ]"#, Format::Json).unwrap_err();
//! assert_eq!((err.line(), err.column(), err.field()), (Some(3), Some(44), Some("endpoints[1].weight")));
//! assert!(matches!(err.kind(), ErrorKind::Endpoint(_)));
//! assert_eq!(err.to_string(), "line 3, column 44: endpoints[1].weight: \
//!     endpoint \"127.0.0.1:8082\": weight must be finite and greater than 0, got 0");
//! ```
//!
//! The position is that of the bad value: its last character in JSON (where
//! serde_json reports it), its first in TOML. A problem with the entry as a
//! whole (a missing `address`, or a bad weight written before its address)
//! is placed on the entry: its end in JSON, its start in TOML. Columns
//! count bytes in JSON and characters in TOML (the same for ASCII).
//!
//! # Watching
//!
//! Every [`interval`](Watch::interval) (default 1 s, on Tokio's clock) the
//! source looks at the file's metadata, following symlinks: modification
//! time, length and, on Unix, device, inode and change time. When they
//! differ from the last look it reads the file and compares the bytes with
//! the last read, so a rewrite with the same content does nothing. This
//! catches in-place writes, a new file renamed over the old one, and the
//! way Kubernetes updates a mounted ConfigMap (the file is a symlink through
//! `..data`, and `..data` is swapped to a new directory). A file modified
//! within the last 2 s is also re-read at the next poll whatever its
//! metadata, since coarse file-system clocks can hide a quick second write.
//!
//! A file that is missing, unreadable or invalid never changes the set: the
//! source logs the error (with `tracing`, naming the path, line, column and
//! field) and keeps the last good set until the file changes again. Write
//! files atomically (a temporary file renamed over the old one) so that a
//! poll never sees half a file; a half-written file is rejected like any
//! bad one and picked up at the next poll once complete.
//!
//! When the file is missing or bad at [`spawn`](Watch::spawn), the source
//! starts with no endpoints (a balancer waits for some, up to its endpoint
//! wait) and keeps polling. Set [`fail_fast`](Watch::fail_fast) to have
//! `spawn` return that error instead, or call [`Watch::load`] first.
//!
//! The task stops when the [`Dynamic`] stream is dropped (with its
//! balancer). It reads the file with blocking calls on the runtime's
//! thread, which is fine for the small files this is for (bounded by
//! [`max_bytes`](Watch::max_bytes)).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use tokio::time::{Instant, MissedTickBehavior};

use super::spec::{self, EntrySeed, Strict};
use super::{Dynamic, DynamicHandle, Endpoint, EndpointError};

/// How often the file is polled unless [`Watch::interval`] says: 1 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The largest file read unless [`Watch::max_bytes`] says: 4 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 20;

/// The most entries a file may list unless [`Watch::max_endpoints`] says:
/// 100,000 (about 2 MB of bare `"10.1.2.3:8080"` entries, within
/// [`DEFAULT_MAX_BYTES`]; raise that too for entries with labels).
pub const DEFAULT_MAX_ENDPOINTS: usize = 100_000;

/// The shortest poll interval; shorter ones are raised to it.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The longest poll interval; longer ones are cut to it.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// The format of an endpoints file; see the [module docs](self#the-file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// JSON: a list of entries, or `{"endpoints": [...]}`.
    Json,
    /// TOML: `endpoints = [...]`.
    Toml,
}

impl Format {
    /// The format a file name's extension says (`.json` or `.toml`, in any
    /// case), if any.
    ///
    /// ```
    /// use palisade::discover::file::Format;
    ///
    /// assert_eq!(Format::from_path("/etc/palisade/users.JSON".as_ref()), Some(Format::Json));
    /// assert_eq!(Format::from_path("users.toml".as_ref()), Some(Format::Toml));
    /// assert_eq!(Format::from_path("users.yaml".as_ref()), None);
    /// ```
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?;
        if ext.eq_ignore_ascii_case("json") {
            Some(Format::Json)
        } else if ext.eq_ignore_ascii_case("toml") {
            Some(Format::Toml)
        } else {
            None
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Toml => "TOML",
        })
    }
}

/// Watches a file of endpoints and feeds them to a balancer; see the
/// [module docs](self).
///
/// Build it with [`Watch::new`], adjust it, then [`spawn`](Watch::spawn)
/// it (or [`load`](Watch::load) the file once).
#[derive(Debug, Clone)]
#[must_use = "a Watch does nothing until spawned"]
pub struct Watch {
    path: PathBuf,
    interval: Duration,
    format: Option<Format>,
    max_bytes: u64,
    max_endpoints: usize,
    fail_fast: bool,
}

impl Watch {
    /// Watches the file at `path`, with the defaults: the format from the
    /// extension, polled every [`DEFAULT_INTERVAL`], at most
    /// [`DEFAULT_MAX_BYTES`] and [`DEFAULT_MAX_ENDPOINTS`], starting empty
    /// when the file is missing or bad.
    pub fn new(path: impl Into<PathBuf>) -> Watch {
        Watch {
            path: path.into(),
            interval: DEFAULT_INTERVAL,
            format: None,
            max_bytes: DEFAULT_MAX_BYTES,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
            fail_fast: false,
        }
    }

    /// How often the file is checked for changes. Default 1 s; under 1 ms
    /// counts as 1 ms, over a day as a day.
    pub fn interval(mut self, interval: Duration) -> Watch {
        self.interval = interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
        self
    }

    /// The file's format, whatever its extension. By default the extension
    /// says (`.json` or `.toml`); [`spawn`](Watch::spawn) and
    /// [`load`](Watch::load) fail with [`ErrorKind::UnknownFormat`] when it
    /// does not.
    pub fn format(mut self, format: Format) -> Watch {
        self.format = Some(format);
        self
    }

    /// The largest file accepted, in bytes; a larger one is an error
    /// ([`ErrorKind::TooLarge`]). Default [`DEFAULT_MAX_BYTES`].
    pub fn max_bytes(mut self, max_bytes: u64) -> Watch {
        self.max_bytes = max_bytes;
        self
    }

    /// The most entries a file may list; more is an error
    /// ([`ErrorKind::TooManyEndpoints`]). Default [`DEFAULT_MAX_ENDPOINTS`].
    pub fn max_endpoints(mut self, max_endpoints: usize) -> Watch {
        self.max_endpoints = max_endpoints;
        self
    }

    /// Whether [`spawn`](Watch::spawn) fails when the file cannot be read or
    /// is bad at start, returning that error. Default false: the source
    /// starts with no endpoints, logs the error and waits for a good file.
    pub fn fail_fast(mut self, fail_fast: bool) -> Watch {
        self.fail_fast = fail_fast;
        self
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and parses the file once, with this watch's format and limits.
    ///
    /// ```
    /// use palisade::discover::file::{ErrorKind, Watch};
    ///
    /// let path = std::env::temp_dir().join(format!("palisade-doc-load-{}.toml", std::process::id()));
    /// std::fs::write(&path, "endpoints = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n")?;
    /// assert_eq!(Watch::new(&path).load()?.len(), 2);
    ///
    /// let err = Watch::new(&path).max_bytes(16).load().unwrap_err();
    /// assert!(matches!(err.kind(), ErrorKind::TooLarge { limit: 16 }));
    /// assert!(err.to_string().contains("larger than the limit of 16 bytes"), "{err}");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(&self) -> Result<Vec<Endpoint>, FileError> {
        let format = self.resolved_format()?;
        let (bytes, _) =
            read_bounded(&self.path, self.max_bytes).map_err(|e| FileError::read(&self.path, e))?;
        parse_bytes(&bytes, format, self.max_endpoints).map_err(|e| e.at(&self.path))
    }

    /// Starts watching: reads the file now, then spawns one task on the
    /// current Tokio runtime that polls it every
    /// [`interval`](Watch::interval) and stops when the returned stream is
    /// dropped.
    ///
    /// Fails when called outside a Tokio runtime
    /// ([`ErrorKind::NoRuntime`]), when the format is unknown
    /// ([`ErrorKind::UnknownFormat`]), and, with
    /// [`fail_fast`](Watch::fail_fast), when the file cannot be read or is
    /// bad now. Otherwise a missing or bad file is logged and the source
    /// starts empty.
    ///
    /// ```
    /// use palisade::discover::file::{ErrorKind, Watch};
    ///
    /// let path = std::env::temp_dir().join(format!("palisade-doc-missing-{}.json", std::process::id()));
    /// let err = Watch::new(&path).spawn().unwrap_err();
    /// assert!(matches!(err.kind(), ErrorKind::NoRuntime));
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let err = Watch::new(&path).fail_fast(true).spawn().unwrap_err();
    /// assert!(matches!(err.kind(), ErrorKind::Read(_)));
    /// assert!(Watch::new(&path).spawn().is_ok(), "starts empty, waiting for the file");
    /// # });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn(self) -> Result<Dynamic, FileError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| FileError::new(ErrorKind::NoRuntime).at(&self.path))?;
        let format = self.resolved_format()?;
        let (handle, dynamic) = super::dynamic();
        let mut source = Source {
            path: self.path.clone(),
            watched: Watched::new(self.path.clone(), self.max_bytes),
            format,
            max_endpoints: self.max_endpoints,
            handle,
        };
        match source.poll() {
            Err(e) if self.fail_fast => return Err(e),
            outcome => source.log(outcome),
        }
        runtime.spawn(source.run(self.interval));
        Ok(dynamic)
    }

    fn resolved_format(&self) -> Result<Format, FileError> {
        self.format
            .or_else(|| Format::from_path(&self.path))
            .ok_or_else(|| FileError::new(ErrorKind::UnknownFormat).at(&self.path))
    }
}

/// Parses the text of an endpoints file (see the
/// [module docs](self#the-file)), with the default limit of
/// [`DEFAULT_MAX_ENDPOINTS`] entries.
///
/// ```
/// use palisade::discover::file::{self, Format};
///
/// let endpoints = file::parse(r#"
/// endpoints = [
///   "10.0.0.1:8080",
///   { address = "10.0.0.2:8080", weight = 2, labels = { zone = "a" } },
/// ]
/// "#, Format::Toml)?;
/// assert_eq!(endpoints[1].weight(), 2.0);
/// assert_eq!(endpoints[1].labels()["zone"], "a");
///
/// let err = file::parse("endpoints = [\"10.0.0.1:8080\", \"nope\"]", Format::Toml).unwrap_err();
/// assert_eq!(err.to_string(), "line 1, column 31: endpoints[1]: endpoint \"nope\": expected host:port");
/// # Ok::<(), file::FileError>(())
/// ```
pub fn parse(text: &str, format: Format) -> Result<Vec<Endpoint>, FileError> {
    parse_text(text, format, DEFAULT_MAX_ENDPOINTS)
}

// ---------------------------------------------------------------------------
// Errors.

/// Why an endpoints file was not accepted, or could not be watched.
///
/// Its message names the file (when there is one), the 1-based line and
/// column and the field (when known), and what is wrong:
/// `endpoints file /etc/palisade/users.json: line 3, column 44:
/// endpoints[1].weight: endpoint "10.0.0.2:80": weight must be finite and
/// greater than 0, got 0`.
#[derive(Debug)]
pub struct FileError {
    path: Option<PathBuf>,
    position: Option<(usize, usize)>,
    field: Option<String>,
    kind: ErrorKind,
}

/// What is wrong, as a [`FileError`] says it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read: missing, a directory, not permitted.
    Read(io::Error),
    /// The file is larger than the limit ([`Watch::max_bytes`]).
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// Not valid UTF-8, JSON or TOML.
    Syntax(String),
    /// Valid JSON or TOML, but not a list of endpoints: an unknown key, a
    /// wrong type, a missing `address` or `endpoints`.
    Invalid(String),
    /// An entry's address or weight is not valid.
    Endpoint(EndpointError),
    /// Two entries have the same address.
    Duplicate {
        /// The address, as the later entry writes it.
        address: String,
        /// The index of the first entry with it.
        first: usize,
    },
    /// More entries than the limit ([`Watch::max_endpoints`]).
    TooManyEndpoints {
        /// The limit.
        limit: usize,
    },
    /// The format cannot be told from the file name; name the file `.json`
    /// or `.toml`, or set [`Watch::format`].
    UnknownFormat,
    /// [`Watch::spawn`] was called outside a Tokio runtime.
    NoRuntime,
}

impl FileError {
    fn new(kind: ErrorKind) -> FileError {
        FileError {
            path: None,
            position: None,
            field: None,
            kind,
        }
    }

    /// A read error: [`ErrorKind::TooLarge`] when it is [`OverLimit`].
    fn read(path: &Path, e: io::Error) -> FileError {
        let over = e.get_ref().and_then(|e| e.downcast_ref::<OverLimit>());
        let kind = match over {
            Some(OverLimit(limit)) => ErrorKind::TooLarge { limit: *limit },
            None => ErrorKind::Read(e),
        };
        FileError::new(kind).at(path)
    }

    fn at(mut self, path: &Path) -> FileError {
        self.path = Some(path.to_owned());
        self
    }

    /// What is wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The file, unless the error came from [`parse`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The 1-based line of the problem, when it is in the text.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    /// The 1-based column of the problem, when it is in the text.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, column)| column)
    }

    /// The entry and field the problem is in, such as `endpoints[3].weight`,
    /// `endpoints[0]` (a string entry, or the entry as a whole) or a
    /// top-level key; `None` for the file as a whole.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "endpoints file {}: ", path.display())?;
        }
        if let Some((line, column)) = self.position {
            write!(f, "line {line}, column {column}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        match &self.kind {
            ErrorKind::Read(e) => write!(f, "cannot read it: {e}"),
            ErrorKind::TooLarge { limit } => write!(
                f,
                "it is larger than the limit of {limit} bytes (Watch::max_bytes)"
            ),
            ErrorKind::Syntax(message) | ErrorKind::Invalid(message) => f.write_str(message),
            ErrorKind::Endpoint(e) => e.fmt(f),
            ErrorKind::Duplicate { address, first } => spec::duplicate(f, address, *first),
            ErrorKind::TooManyEndpoints { limit } => {
                write!(f, "more than {limit} endpoints, the limit (max_endpoints)")
            }
            ErrorKind::UnknownFormat => f.write_str(
                "cannot tell the format from the file name: name it *.json or *.toml, \
                 or set Watch::format",
            ),
            ErrorKind::NoRuntime => {
                f.write_str("Watch::spawn must be called from within a Tokio runtime")
            }
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Read(e) => Some(e),
            ErrorKind::Endpoint(e) => Some(e),
            _ => None,
        }
    }
}

/// The 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

mod parse;
mod watch;

use parse::*;
use watch::*;
pub(crate) use watch::{OverLimit, Watched, read_bounded};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod adversarial;
