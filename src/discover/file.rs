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
/// 10 000.
pub const DEFAULT_MAX_ENDPOINTS: usize = 10_000;

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
            ErrorKind::TooManyEndpoints { limit } => write!(
                f,
                "more than {limit} endpoints, the limit (Watch::max_endpoints)"
            ),
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

// ---------------------------------------------------------------------------
// Parsing.

/// Parses bytes read from a file: UTF-8 (a BOM is skipped), then the format.
fn parse_bytes(
    bytes: &[u8],
    format: Format,
    max_endpoints: usize,
) -> Result<Vec<Endpoint>, FileError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_text(text, format, max_endpoints),
        Err(e) => {
            // The valid part is text; the position is where it stops.
            let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
            let mut err = FileError::new(ErrorKind::Syntax(format!(
                "the file is not valid UTF-8 ({format} files must be)"
            )));
            err.position = Some(line_column(valid, valid.len()));
            Err(err)
        }
    }
}

fn parse_text(
    text: &str,
    format: Format,
    max_endpoints: usize,
) -> Result<Vec<Endpoint>, FileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let ctx = Ctx {
        strict: Strict::default(),
        max_endpoints,
        field: RefCell::new(None),
        too_many: Cell::new(false),
    };
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            Doc { ctx: &ctx }
                .deserialize(&mut de)
                .and_then(|endpoints| de.end().map(|()| endpoints))
                .map_err(|e| ctx.json_error(e))
        }
        Format::Toml => {
            let de = toml::de::Deserializer::parse(text)
                .map_err(|e| ctx.toml_error(text, e, ErrorKind::Syntax))?;
            Doc { ctx: &ctx }
                .deserialize(de)
                .map_err(|e| ctx.toml_error(text, e, ErrorKind::Invalid))
        }
    }
}

/// What a parse learns beyond serde's error: the field, and the problem
/// when it is about a value.
struct Ctx {
    strict: Strict,
    max_endpoints: usize,
    field: RefCell<Option<String>>,
    too_many: Cell<bool>,
}

impl Ctx {
    /// Notes the field of an error on its way out; the innermost wins.
    fn note(&self, field: impl FnOnce() -> String) {
        let mut slot = self.field.borrow_mut();
        if slot.is_none() {
            *slot = Some(field());
        }
    }

    fn error(&self, position: Option<(usize, usize)>, fallback: ErrorKind) -> FileError {
        let kind = if self.too_many.get() {
            ErrorKind::TooManyEndpoints {
                limit: self.max_endpoints,
            }
        } else {
            match self.strict.take_problem() {
                Some(spec::Problem::Endpoint(e)) => ErrorKind::Endpoint(e),
                Some(spec::Problem::Duplicate { address, first }) => {
                    ErrorKind::Duplicate { address, first }
                }
                None => fallback,
            }
        };
        FileError {
            path: None,
            position,
            field: self.field.borrow_mut().take(),
            kind,
        }
    }

    fn json_error(&self, e: serde_json::Error) -> FileError {
        let message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
        let kind = match e.classify() {
            serde_json::error::Category::Data => ErrorKind::Invalid(message),
            _ => ErrorKind::Syntax(message),
        };
        // serde_json says column 0 just after a newline.
        let position = (e.line() > 0).then(|| (e.line(), e.column().max(1)));
        self.error(position, kind)
    }

    fn toml_error(
        &self,
        text: &str,
        e: toml::de::Error,
        kind: fn(String) -> ErrorKind,
    ) -> FileError {
        // The document itself has the empty span 0..0: an error there is
        // about the file as a whole.
        let position = e
            .span()
            .filter(|s| !(s.start == 0 && s.end == 0))
            .map(|s| line_column(text, s.start));
        let message = e.message().trim().replace('\n', "; ");
        self.error(position, kind(message))
    }
}

/// The whole document: a list of entries (JSON), or a table whose only key
/// is `endpoints`.
struct Doc<'a> {
    ctx: &'a Ctx,
}

impl<'de> DeserializeSeed<'de> for Doc<'_> {
    type Value = Vec<Endpoint>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Doc<'_> {
    type Value = Vec<Endpoint>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of endpoints, or a table with `endpoints`")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        List { ctx: self.ctx }.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let mut endpoints = None;
        while map.next_key_seed(DocKey { ctx })?.is_some() {
            if endpoints.is_some() {
                ctx.note(|| "endpoints".to_owned());
                return Err(de::Error::duplicate_field("endpoints"));
            }
            let list = map
                .next_value_seed(List { ctx })
                .inspect_err(|_| ctx.note(|| "endpoints".to_owned()))?;
            endpoints = Some(list);
        }
        endpoints.ok_or_else(|| de::Error::missing_field("endpoints"))
    }
}

/// A top-level key: only `endpoints`.
struct DocKey<'a> {
    ctx: &'a Ctx,
}

impl<'de> DeserializeSeed<'de> for DocKey<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for DocKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`endpoints`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if v == "endpoints" {
            return Ok(());
        }
        self.ctx.note(|| spec::key_path("", v));
        Err(E::unknown_field(v, &["endpoints"]))
    }
}

/// The list of entries, each read strictly.
struct List<'a> {
    ctx: &'a Ctx,
}

impl<'de> DeserializeSeed<'de> for List<'_> {
    type Value = Vec<Endpoint>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = Vec<Endpoint>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of endpoints")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let hint = seq.size_hint().unwrap_or(0).min(ctx.max_endpoints);
        let mut endpoints = Vec::with_capacity(hint);
        loop {
            let index = endpoints.len();
            let entry = |e: A::Error| {
                ctx.note(|| match ctx.strict.take_field() {
                    Some(field) if !field.is_empty() => format!("endpoints[{index}].{field}"),
                    _ => format!("endpoints[{index}]"),
                });
                e
            };
            if index == ctx.max_endpoints {
                // Any further entry is one too many (and the error is
                // placed on it).
                return match seq.next_element_seed(TooMany { ctx }).map_err(entry)? {
                    None => Ok(endpoints),
                    Some(never) => match never {},
                };
            }
            ctx.strict.enter(index);
            let seed = EntrySeed {
                strict: Some(&ctx.strict),
            };
            let Some(spec) = seq.next_element_seed(seed).map_err(entry)? else {
                return Ok(endpoints);
            };
            // Checked as it was read; this cannot fail.
            let endpoint = spec
                .to_endpoint()
                .map_err(|e| entry(de::Error::custom(e)))?;
            endpoints.push(endpoint);
        }
    }
}

/// An entry past the limit: any value is an error.
struct TooMany<'a> {
    ctx: &'a Ctx,
}

impl<'de> DeserializeSeed<'de> for TooMany<'_> {
    type Value = std::convert::Infallible;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.ctx.too_many.set(true);
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TooMany<'_> {
    type Value = std::convert::Infallible;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} endpoints", self.ctx.max_endpoints)
    }
}

// ---------------------------------------------------------------------------
// Change detection.

/// What a file looked like at one `stat`, following symlinks: enough to
/// tell, without reading it, that it was very probably rewritten, replaced
/// (renamed over) or swapped (a symlink along the way now points
/// elsewhere).
///
/// Modification time and length everywhere; on Unix also device, inode
/// and change time (`ctime`: chmod, rename and link changes set it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    id: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

/// A file modified this recently may be modified again without its stamp
/// changing (file-system clocks tick coarsely), so it is re-read.
const RACY: Duration = Duration::from_secs(2);

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
    fn is_racy(&self) -> bool {
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
    racy: bool,
    /// A digest of the content last read, `None` before the first good
    /// read: the content itself is not kept (a large file would be held
    /// twice, once as text and once parsed).
    content: Option<Digest>,
}

/// A 128-bit digest of a file's content: two SipHash sums under different
/// prefixes, and the length. Content that changes and keeps its digest
/// (odds of 2⁻¹²⁸ by accident) would be missed until the next change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest(u64, u64, usize);

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
pub(crate) struct OverLimit(u64);

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "larger than the limit of {} bytes", self.0)
    }
}

impl std::error::Error for OverLimit {}

// ---------------------------------------------------------------------------
// The polling task.

/// The state of one spawned [`Watch`].
struct Source {
    path: PathBuf,
    watched: Watched,
    format: Format,
    max_endpoints: usize,
    handle: DynamicHandle,
}

impl Source {
    /// One look at the file: `Ok(Some(n))` when a new set of `n` endpoints
    /// was applied, `Ok(None)` when nothing changed, `Err` when the file
    /// changed and was rejected (the set stays).
    fn poll(&mut self) -> Result<Option<usize>, FileError> {
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

    fn log(&self, outcome: Result<Option<usize>, FileError>) {
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

    async fn run(mut self, interval: Duration) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tower::discover::Change;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "palisade-file-{}-{}-{name}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Writes a file atomically: a temporary file renamed over it.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    /// Sets a file's modification time well in the past, so its stamp is
    /// trusted (not racy).
    fn age(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    fn addresses(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(|e| e.address().to_string()).collect()
    }

    fn json(text: &str) -> FileError {
        parse(text, Format::Json).unwrap_err()
    }

    fn toml(text: &str) -> FileError {
        parse(text, Format::Toml).unwrap_err()
    }

    /// The line, column and field of an error.
    fn place(e: &FileError) -> (Option<usize>, Option<usize>, Option<&str>) {
        (e.line(), e.column(), e.field())
    }

    // --- Parsing -----------------------------------------------------------

    #[test]
    fn json_takes_a_list_or_an_object_and_both_entry_shapes() {
        let list = r#"[
  "10.0.0.1:80",
  {"address": "db.internal:5432", "weight": 2.5, "labels": {"zone": "a", "version": "v2"}},
  {"address": "[::1]:81"}
]"#;
        let endpoints = parse(list, Format::Json).unwrap();
        assert_eq!(
            addresses(&endpoints),
            ["10.0.0.1:80", "db.internal:5432", "[::1]:81"]
        );
        assert_eq!(endpoints[0].weight(), 1.0);
        assert_eq!(endpoints[1].weight(), 2.5);
        assert_eq!(endpoints[1].labels()["zone"], "a");
        assert_eq!(endpoints[1].labels()["version"], "v2");
        assert!(endpoints[2].labels().is_empty());

        let object = format!("{{\"endpoints\": {list}}}");
        assert_eq!(parse(&object, Format::Json).unwrap(), endpoints);
        assert!(parse("[]", Format::Json).unwrap().is_empty());
        assert!(
            parse(r#"{"endpoints": []}"#, Format::Json)
                .unwrap()
                .is_empty()
        );
        // A byte-order mark is ignored.
        assert_eq!(
            parse_bytes(b"\xEF\xBB\xBF[\"10.0.0.1:80\"]", Format::Json, 10)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn toml_takes_an_array_or_tables() {
        let inline = r#"
endpoints = [
  "10.0.0.1:80",
  { address = "db.internal:5432", weight = 3, labels = { zone = "a" } },
]
"#;
        let endpoints = parse(inline, Format::Toml).unwrap();
        assert_eq!(addresses(&endpoints), ["10.0.0.1:80", "db.internal:5432"]);
        assert_eq!(endpoints[1].weight(), 3.0);
        assert_eq!(endpoints[1].labels()["zone"], "a");

        let tables = r#"
[[endpoints]]
address = "10.0.0.1:80"

[[endpoints]]
address = "db.internal:5432"
weight = 3.0
labels = { zone = "a" }
"#;
        assert_eq!(parse(tables, Format::Toml).unwrap(), endpoints);
        assert!(parse("endpoints = []", Format::Toml).unwrap().is_empty());
    }

    #[test]
    fn json_syntax_errors_say_where() {
        let e = json("[\n  \"10.0.0.1:80\"\n  \"10.0.0.2:80\"\n]");
        assert_eq!(place(&e), (Some(3), Some(3), Some("endpoints[1]")));
        assert!(matches!(e.kind(), ErrorKind::Syntax(m) if m == "expected `,` or `]`"));
        assert_eq!(
            e.to_string(),
            "line 3, column 3: endpoints[1]: expected `,` or `]`"
        );

        let e = json("[\n  \"10.0.0.1:80\",\n");
        assert_eq!(place(&e), (Some(3), Some(1), Some("endpoints[1]")));
        assert!(matches!(e.kind(), ErrorKind::Syntax(m) if m.starts_with("EOF")));

        let e = json("[] x");
        assert_eq!(place(&e), (Some(1), Some(4), None));
        assert!(matches!(e.kind(), ErrorKind::Syntax(m) if m == "trailing characters"));

        let e = parse_bytes(b"[\"10.0.0.1:80\",\n \xff]", Format::Json, 10).unwrap_err();
        assert_eq!(place(&e), (Some(2), Some(2), None));
        assert_eq!(
            e.to_string(),
            "line 2, column 2: the file is not valid UTF-8 (JSON files must be)"
        );
    }

    #[test]
    fn json_entry_errors_name_the_entry_the_field_and_where() {
        // A bad address as a string entry: serde_json places errors on the
        // last character of the value (the closing quote).
        let e = json("[\n  \"10.0.0.1:80\",\n  \"nope\"\n]");
        assert_eq!(place(&e), (Some(3), Some(8), Some("endpoints[1]")));
        assert!(matches!(e.kind(), ErrorKind::Endpoint(_)));
        assert_eq!(
            e.to_string(),
            "line 3, column 8: endpoints[1]: endpoint \"nope\": expected host:port"
        );

        let e = json(r#"[{"address": "bad host:80"}]"#);
        assert_eq!(place(&e), (Some(1), Some(26), Some("endpoints[0].address")));
        assert!(e.to_string().ends_with(
            "endpoint \"bad host:80\": host must be an IP address or a DNS name (letters, digits, '-', '.', '_')"
        ));

        let text = "[\n  \"10.0.0.1:80\",\n  {\n    \"address\": \"10.0.0.2:80\",\n    \"weight\": 0\n  }\n]";
        let e = json(text);
        assert_eq!(place(&e), (Some(5), Some(15), Some("endpoints[1].weight")));
        assert_eq!(
            e.to_string(),
            "line 5, column 15: endpoints[1].weight: endpoint \"10.0.0.2:80\": weight must be finite and greater than 0, got 0"
        );

        // A weight before its address is checked at the end of the entry.
        let e = json(r#"[{"weight": -2, "address": "10.0.0.2:80"}]"#);
        assert_eq!(place(&e), (Some(1), Some(41), Some("endpoints[0].weight")));
        assert!(matches!(e.kind(), ErrorKind::Endpoint(_)));

        let e = json(r#"[{"address": "10.0.0.1:80", "weight": "2"}]"#);
        assert_eq!(place(&e), (Some(1), Some(41), Some("endpoints[0].weight")));
        assert!(
            matches!(e.kind(), ErrorKind::Invalid(m) if m == "invalid type: string \"2\", expected f64")
        );

        let e = json(r#"[{"address": "10.0.0.1:80", "wieght": 2}]"#);
        assert_eq!(place(&e), (Some(1), Some(36), Some("endpoints[0].wieght")));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m)
            if m == "unknown field `wieght`, expected one of `address`, `weight`, `labels`"));

        let e = json(r#"[{"weight": 2}]"#);
        assert_eq!(place(&e), (Some(1), Some(14), Some("endpoints[0].address")));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m) if m == "missing field `address`"));

        let e = json(r#"[{"address": "10.0.0.1:80", "labels": {"zone": 1}}]"#);
        assert_eq!(
            place(&e),
            (Some(1), Some(48), Some("endpoints[0].labels.zone"))
        );
        assert!(matches!(e.kind(), ErrorKind::Invalid(m)
            if m == "invalid type: integer `1`, expected a string"));

        let e = json(r#"[{"address": "10.0.0.1:80", "labels": {"zone": "a", "zone": "b"}}]"#);
        assert_eq!(e.field(), Some("endpoints[0].labels.zone"));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m) if m == "label \"zone\" is given twice"));

        let e = json(r#"["127.0.0.1:1", "10.0.0.1:80", {"address": "127.0.0.1:1"}]"#);
        assert_eq!(place(&e), (Some(1), Some(56), Some("endpoints[2].address")));
        assert!(
            matches!(e.kind(), ErrorKind::Duplicate { address, first: 0 } if address == "127.0.0.1:1")
        );
        assert!(
            e.to_string()
                .ends_with("endpoint \"127.0.0.1:1\" is listed twice (first at endpoints[0])")
        );

        let e = json("[true]");
        assert_eq!(place(&e), (Some(1), Some(5), Some("endpoints[0]")));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m) if m.starts_with(
            "invalid type: boolean `true`, expected an endpoint: \"host:port\" or a table"
        )));
    }

    #[test]
    fn json_document_errors_say_which_key() {
        let e = json(r#"{"endpoint": []}"#);
        assert_eq!(place(&e), (Some(1), Some(11), Some("endpoint")));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m)
            if m == "unknown field `endpoint`, expected `endpoints`"));

        let e = json(r#"{"endpoints": 5}"#);
        assert_eq!(place(&e), (Some(1), Some(15), Some("endpoints")));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m)
            if m == "invalid type: integer `5`, expected a list of endpoints"));

        let e = json(r#"{"endpoints": [], "endpoints": []}"#);
        assert_eq!(e.field(), Some("endpoints"));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m) if m == "duplicate field `endpoints`"));

        let e = json("{}");
        assert_eq!(place(&e), (Some(1), Some(2), None));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m) if m == "missing field `endpoints`"));

        let e = json("5");
        assert_eq!(place(&e), (Some(1), Some(1), None));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m) if m
            == "invalid type: integer `5`, expected a list of endpoints, or a table with `endpoints`"));
    }

    #[test]
    fn the_number_of_entries_is_bounded() {
        let three = r#"["10.0.0.1:80", "10.0.0.2:80", {"address": "10.0.0.3:80"}]"#;
        assert_eq!(parse_text(three, Format::Json, 3).unwrap().len(), 3);
        let e = parse_text(three, Format::Json, 2).unwrap_err();
        assert_eq!(place(&e), (Some(1), Some(32), Some("endpoints[2]")));
        assert!(matches!(e.kind(), ErrorKind::TooManyEndpoints { limit: 2 }));
        assert_eq!(
            e.to_string(),
            "line 1, column 32: endpoints[2]: more than 2 endpoints, the limit (Watch::max_endpoints)"
        );

        let e = parse_text(
            "endpoints = [\"10.0.0.1:80\",\n  \"10.0.0.2:80\"]",
            Format::Toml,
            1,
        )
        .unwrap_err();
        assert_eq!(place(&e), (Some(2), Some(3), Some("endpoints[1]")));
        assert!(matches!(e.kind(), ErrorKind::TooManyEndpoints { limit: 1 }));
    }

    #[test]
    fn toml_errors_point_at_the_start_of_the_bad_key_or_value() {
        let e = toml("endpoints = [\n  \"10.0.0.1:80\",\n  \"10.0.0.2:80\"\n");
        assert!(matches!(e.kind(), ErrorKind::Syntax(_)), "{e}");
        assert_eq!(e.line(), Some(3), "{e}");
        assert_eq!(e.field(), None);

        let e = toml("endpoints = [\n  { address = \"10.0.0.1:80\", weight = -1.5 },\n]\n");
        assert_eq!(place(&e), (Some(2), Some(39), Some("endpoints[0].weight")));
        assert_eq!(
            e.to_string(),
            "line 2, column 39: endpoints[0].weight: endpoint \"10.0.0.1:80\": weight must be finite and greater than 0, got -1.5"
        );

        let e = toml("endpoints = [\"10.0.0.1:80\", \"nope\"]");
        assert_eq!(place(&e), (Some(1), Some(29), Some("endpoints[1]")));
        assert!(matches!(e.kind(), ErrorKind::Endpoint(_)));

        let e = toml(
            "[[endpoints]]\naddress = \"10.0.0.1:80\"\n\n[[endpoints]]\naddress = \"nope:x\"\n",
        );
        assert_eq!(place(&e), (Some(5), Some(11), Some("endpoints[1].address")));
        assert!(
            e.to_string()
                .ends_with("endpoint \"nope:x\": port must be a number from 0 to 65535")
        );

        let e = toml("endpoints = [{ address = \"10.0.0.1:80\", wieght = 2 }]");
        assert_eq!(place(&e), (Some(1), Some(41), Some("endpoints[0].wieght")));
        assert!(
            matches!(e.kind(), ErrorKind::Invalid(m) if m.starts_with("unknown field `wieght`"))
        );

        let e = toml("endpoints = [{ weight = 2 }]");
        assert_eq!(place(&e), (Some(1), Some(14), Some("endpoints[0].address")));
        assert!(matches!(e.kind(), ErrorKind::Invalid(m) if m == "missing field `address`"));

        let e = toml("endpoints = [{ address = \"10.0.0.1:80\", labels = { \"a b\" = 1 } }]");
        assert_eq!(
            place(&e),
            (Some(1), Some(60), Some("endpoints[0].labels.\"a b\""))
        );

        let e = toml("endpoints = [\"10.0.0.1:80\", \"10.0.0.1:80\"]");
        assert_eq!(place(&e), (Some(1), Some(29), Some("endpoints[1]")));
        assert!(matches!(e.kind(), ErrorKind::Duplicate { first: 0, .. }));

        let e = toml("endpoints = []\nextra = 1\n");
        assert_eq!(place(&e), (Some(2), Some(1), Some("extra")));
        assert!(
            matches!(e.kind(), ErrorKind::Invalid(m) if m == "unknown field `extra`, expected `endpoints`")
        );

        let e = toml("endpoints = \"10.0.0.1:80\"");
        assert_eq!(place(&e), (Some(1), Some(13), Some("endpoints")));

        let e = toml("");
        assert_eq!(place(&e), (None, None, None));
        assert_eq!(e.to_string(), "missing field `endpoints`");
    }

    #[test]
    fn line_column_counts_characters() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 7), (2, 4)); // the newline after é
        assert_eq!(line_column(text, 6), (2, 3)); // inside é: its start
        assert_eq!(line_column(text, 100), (3, 2));
    }

    #[test]
    fn load_and_format_errors_name_the_path() {
        let dir = TempDir::new("load");
        let path = dir.join("users.json");
        fs::write(&path, "[\n  \"10.0.0.1:80\",\n  \"nope\"\n]").unwrap();
        let e = Watch::new(&path).load().unwrap_err();
        assert_eq!(e.path(), Some(path.as_path()));
        assert_eq!(
            e.to_string(),
            format!(
                "endpoints file {}: line 3, column 8: endpoints[1]: endpoint \"nope\": expected host:port",
                path.display()
            )
        );

        // The format override wins over the extension.
        let toml_text = dir.join("users.conf");
        fs::write(&toml_text, "endpoints = [\"10.0.0.1:80\"]").unwrap();
        let e = Watch::new(&toml_text).load().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::UnknownFormat));
        assert!(
            e.to_string().contains("users.conf: cannot tell the format"),
            "{e}"
        );
        assert_eq!(
            Watch::new(&toml_text)
                .format(Format::Toml)
                .load()
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            Watch::new(&path)
                .format(Format::Toml)
                .load()
                .unwrap_err()
                .kind(),
            ErrorKind::Syntax(_)
        ));

        let e = Watch::new(&dir.0).format(Format::Json).load().unwrap_err();
        assert!(
            e.to_string()
                .ends_with("cannot read it: not a regular file"),
            "{e}"
        );

        let e = Watch::new(dir.join("missing.json")).load().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Read(io) if io.kind() == io::ErrorKind::NotFound));
        assert!(
            e.to_string().contains("missing.json: cannot read it: "),
            "{e}"
        );
    }

    // --- Change detection ----------------------------------------------------

    #[test]
    fn stamps_tell_replaced_files_apart_even_with_the_same_time_and_length() {
        let dir = TempDir::new("stamp");
        let path = dir.join("a.json");
        fs::write(&path, "AAAA").unwrap();
        age(&path);
        let before = FileStamp::of(&fs::metadata(&path).unwrap());
        assert!(!before.is_racy());
        assert_eq!(before, FileStamp::of(&fs::metadata(&path).unwrap()));

        let tmp = dir.join("a.tmp");
        fs::write(&tmp, "BBBB").unwrap();
        fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(before.modified.unwrap())
            .unwrap();
        fs::rename(&tmp, &path).unwrap();
        let after = FileStamp::of(&fs::metadata(&path).unwrap());
        assert_eq!((after.modified, after.len), (before.modified, before.len));
        assert_ne!(after, before, "another inode");

        fs::write(&path, "CCCC").unwrap();
        assert!(FileStamp::of(&fs::metadata(&path).unwrap()).is_racy());
    }

    #[test]
    fn watched_sees_rewrites_but_not_identical_ones() {
        let dir = TempDir::new("rewrite");
        let path = dir.join("e.json");
        fs::write(&path, "[\"10.0.0.1:80\"]").unwrap();
        let mut w = Watched::new(path.clone(), DEFAULT_MAX_BYTES);
        assert_eq!(
            w.check().unwrap().as_deref(),
            Some(&b"[\"10.0.0.1:80\"]"[..])
        );
        assert_eq!(w.check().unwrap().as_deref(), None);

        // In place, another length.
        fs::write(&path, "[\"10.0.0.1:80\", \"10.0.0.2:80\"]").unwrap();
        assert_eq!(
            w.check().unwrap().as_deref(),
            Some(&b"[\"10.0.0.1:80\", \"10.0.0.2:80\"]"[..])
        );
        // The same bytes again: no change.
        fs::write(&path, "[\"10.0.0.1:80\", \"10.0.0.2:80\"]").unwrap();
        assert_eq!(w.check().unwrap().as_deref(), None);
        // In place, the same length, at once: a fresh file is re-read
        // whatever its stamp says.
        fs::write(&path, "[\"10.0.0.1:80\", \"10.0.0.3:80\"]").unwrap();
        assert_eq!(
            w.check().unwrap().as_deref(),
            Some(&b"[\"10.0.0.1:80\", \"10.0.0.3:80\"]"[..])
        );

        // An old file whose stamp is unchanged is not read again.
        age(&path);
        assert_eq!(
            w.check().unwrap().as_deref(),
            None,
            "the content is the same"
        );
        assert!(!w.racy);
        assert_eq!(w.check().unwrap().as_deref(), None);

        w.forget();
        assert!(
            w.check().unwrap().is_some(),
            "after forget, the content again"
        );
    }

    #[test]
    fn watched_sees_an_atomic_rename() {
        let dir = TempDir::new("rename");
        let path = dir.join("e.json");
        fs::write(&path, "[\"10.0.0.1:80\"]").unwrap();
        age(&path);
        let mut w = Watched::new(path.clone(), DEFAULT_MAX_BYTES);
        assert!(w.check().unwrap().is_some());
        assert_eq!(w.check().unwrap().as_deref(), None);

        // Same length, and the same (old) modification time: the inode tells.
        let tmp = dir.join("e.tmp");
        fs::write(&tmp, "[\"10.0.0.2:80\"]").unwrap();
        fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(fs::metadata(&path).unwrap().modified().unwrap())
            .unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert_eq!(
            w.check().unwrap().as_deref(),
            Some(&b"[\"10.0.0.2:80\"]"[..])
        );

        // The same content renamed over: no change.
        replace(&path, "[\"10.0.0.2:80\"]");
        assert_eq!(w.check().unwrap().as_deref(), None);
    }

    #[cfg(unix)]
    #[test]
    fn watched_follows_a_configmap_symlink_swap() {
        use std::os::unix::fs::symlink;

        // What the kubelet does: the files live in a dated directory,
        // `..data` links to it, and each file is a link through `..data`.
        let dir = TempDir::new("configmap");
        let publish = |version: &str, text: &str| {
            let dated = dir.join(&format!("..2024_01_01_{version}"));
            fs::create_dir(&dated).unwrap();
            fs::write(dated.join("endpoints.json"), text).unwrap();
            let tmp = dir.join("..data_tmp");
            symlink(dated.file_name().unwrap(), &tmp).unwrap();
            let old = fs::read_link(dir.join("..data")).ok();
            fs::rename(&tmp, dir.join("..data")).unwrap();
            if let Some(old) = old {
                fs::remove_dir_all(dir.0.join(old)).unwrap();
            }
        };
        publish("a", "[\"10.0.0.1:80\"]");
        let path = dir.join("endpoints.json");
        symlink("..data/endpoints.json", &path).unwrap();

        let mut w = Watched::new(path.clone(), DEFAULT_MAX_BYTES);
        assert_eq!(
            w.check().unwrap().as_deref(),
            Some(&b"[\"10.0.0.1:80\"]"[..])
        );
        assert_eq!(w.check().unwrap().as_deref(), None);

        publish("b", "[\"10.0.0.2:80\"]");
        assert_eq!(
            w.check().unwrap().as_deref(),
            Some(&b"[\"10.0.0.2:80\"]"[..])
        );
        assert_eq!(w.check().unwrap().as_deref(), None);

        // A new version with the same content is no change.
        publish("c", "[\"10.0.0.2:80\"]");
        assert_eq!(w.check().unwrap().as_deref(), None);
    }

    #[test]
    fn watched_reports_a_missing_file_once_and_sees_it_come_back() {
        let dir = TempDir::new("missing");
        let path = dir.join("e.json");
        let mut w = Watched::new(path.clone(), DEFAULT_MAX_BYTES);
        let e = w.check().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(w.check().unwrap().as_deref(), None, "reported once");

        fs::write(&path, "[]").unwrap();
        assert_eq!(w.check().unwrap().as_deref(), Some(&b"[]"[..]));
        fs::remove_file(&path).unwrap();
        assert!(w.check().is_err());
        assert_eq!(w.check().unwrap().as_deref(), None);
        // Back with the content it had: nothing new.
        fs::write(&path, "[]").unwrap();
        assert_eq!(w.check().unwrap().as_deref(), None);
    }

    #[test]
    fn watched_bounds_the_size() {
        let dir = TempDir::new("size");
        let path = dir.join("e.json");
        fs::write(&path, "[\"10.0.0.1:80\"]").unwrap();
        let mut w = Watched::new(path.clone(), 8);
        let e = w.check().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(e.to_string(), "larger than the limit of 8 bytes");
        let e = FileError::read(&path, e);
        assert!(matches!(e.kind(), ErrorKind::TooLarge { limit: 8 }));
        assert_eq!(
            e.to_string(),
            format!(
                "endpoints file {}: it is larger than the limit of 8 bytes (Watch::max_bytes)",
                path.display()
            )
        );
        fs::write(&path, "[]").unwrap();
        assert_eq!(w.check().unwrap().as_deref(), Some(&b"[]"[..]));
    }

    // --- The polling task ------------------------------------------------------

    /// Every event's level and fields, as text.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logs {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                    use std::fmt::Write;
                    let _ = write!(self.0, " {}={:?}", field.name(), value);
                }
            }
            let mut fields = Fields(event.metadata().level().to_string());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }

    /// Held by every test that spawns a source (and so logs). tracing
    /// caches per call site whether anyone listens; a call site first hit
    /// on another thread while [`Logs::capture`] installs its subscriber
    /// can be cached as "no one" and its events lost. One such test at a
    /// time keeps the capture deterministic.
    static LOGGING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    impl Logs {
        /// Captures this thread's events until the guard is dropped.
        fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
            use tracing_subscriber::layer::SubscriberExt;
            let logs = Logs::default();
            let subscriber = tracing_subscriber::registry().with(logs.clone());
            (logs, tracing::subscriber::set_default(subscriber))
        }

        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// The changes a `Dynamic` has ready now, as `+addr` / `-addr`, sorted.
    fn ready(d: &mut Dynamic) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(Ok(change))) = d.next().now_or_never() {
            out.push(show(change));
        }
        out.sort();
        out
    }

    fn show(change: Change<super::super::Address, Endpoint>) -> String {
        match change {
            Change::Insert(a, _) => format!("+{a}"),
            Change::Remove(a) => format!("-{a}"),
        }
    }

    /// Waits (on paused time) for the next changes; returns them with how
    /// long they took.
    async fn next(d: &mut Dynamic) -> (Vec<String>, Duration) {
        let start = Instant::now();
        let first = tokio::time::timeout(Duration::from_secs(60), d.next())
            .await
            .expect("a change")
            .unwrap()
            .unwrap();
        let mut changes = ready(d);
        changes.push(show(first));
        changes.sort();
        (changes, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_source_applies_each_change_within_one_interval() {
        let _serial = LOGGING.lock().await;
        let dir = TempDir::new("loop");
        let path = dir.join("e.json");
        fs::write(&path, "[\"10.0.0.1:80\"]").unwrap();
        let interval = Duration::from_secs(1);
        let mut d = Watch::new(&path).interval(interval).spawn().unwrap();
        assert_eq!(ready(&mut d), ["+10.0.0.1:80"], "read at spawn");

        tokio::time::advance(Duration::from_millis(300)).await;
        replace(&path, "[\"10.0.0.1:80\", \"10.0.0.2:80\"]");
        let (changes, took) = next(&mut d).await;
        assert_eq!(changes, ["+10.0.0.2:80"]);
        assert!(took <= interval, "{took:?}");

        fs::write(&path, "[{\"address\": \"10.0.0.2:80\", \"weight\": 2}]").unwrap();
        let (changes, took) = next(&mut d).await;
        assert_eq!(changes, ["+10.0.0.2:80", "-10.0.0.1:80"]);
        assert!(took <= interval, "{took:?}");

        // The same content again, in place and renamed over: nothing.
        fs::write(&path, "[{\"address\": \"10.0.0.2:80\", \"weight\": 2}]").unwrap();
        tokio::time::sleep(interval * 3).await;
        replace(&path, "[{\"address\": \"10.0.0.2:80\", \"weight\": 2}]");
        tokio::time::sleep(interval * 3).await;
        assert!(ready(&mut d).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_file_keeps_the_last_good_set_and_is_logged_with_its_place() {
        let _serial = LOGGING.lock().await;
        let (logs, _guard) = Logs::capture();
        let dir = TempDir::new("bad");
        let path = dir.join("e.toml");
        fs::write(&path, "endpoints = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n").unwrap();
        let interval = Duration::from_millis(500);
        let mut d = Watch::new(&path).interval(interval).spawn().unwrap();
        assert_eq!(ready(&mut d).len(), 2);
        assert!(
            logs.take()
                .iter()
                .any(|l| l.starts_with("INFO") && l.contains("endpoints=2"))
        );

        replace(
            &path,
            "endpoints = [\n  \"10.0.0.1:80\",\n  { address = \"10.0.0.3:80\", weight = 0 },\n]\n",
        );
        tokio::time::sleep(interval * 3).await;
        assert!(ready(&mut d).is_empty(), "the last good set stays");
        let logs_now = logs.take();
        let rejected: Vec<&String> = logs_now.iter().filter(|l| l.starts_with("ERROR")).collect();
        assert_eq!(
            rejected.len(),
            1,
            "logged once, not at every poll: {logs_now:#?}"
        );
        let line = rejected[0];
        for part in [
            format!("path={}", path.display()),
            "line=3".to_owned(),
            "column=39".to_owned(),
            "field=\"endpoints[1].weight\"".to_owned(),
            "kept=2".to_owned(),
            "weight must be finite and greater than 0, got 0".to_owned(),
        ] {
            assert!(line.contains(&part), "{part:?} not in {line}");
        }

        // Gone is no better: still the last good set.
        fs::remove_file(&path).unwrap();
        tokio::time::sleep(interval * 3).await;
        assert!(ready(&mut d).is_empty());
        assert!(
            logs.take()
                .iter()
                .any(|l| l.starts_with("WARN") && l.contains("missing"))
        );

        replace(&path, "endpoints = [\"10.0.0.3:80\"]\n");
        let (changes, took) = next(&mut d).await;
        assert_eq!(changes, ["+10.0.0.3:80", "-10.0.0.1:80", "-10.0.0.2:80"]);
        assert!(took <= interval);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_file_starts_empty_unless_fail_fast() {
        let _serial = LOGGING.lock().await;
        let dir = TempDir::new("start");
        let path = dir.join("e.json");
        let e = Watch::new(&path).fail_fast(true).spawn().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Read(_)));
        fs::write(&path, "[\"nope\"]").unwrap();
        let e = Watch::new(&path).fail_fast(true).spawn().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Endpoint(_)));
        fs::remove_file(&path).unwrap();

        let interval = Duration::from_secs(2);
        let mut d = Watch::new(&path).interval(interval).spawn().unwrap();
        assert!(ready(&mut d).is_empty());
        tokio::time::sleep(interval * 2).await;
        fs::write(&path, "[\"10.0.0.1:80\"]").unwrap();
        let (changes, took) = next(&mut d).await;
        assert_eq!(changes, ["+10.0.0.1:80"]);
        assert!(took <= interval);
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_stops_when_the_stream_is_dropped() {
        let _serial = LOGGING.lock().await;
        let dir = TempDir::new("stop");
        let path = dir.join("e.json");
        fs::write(&path, "[]").unwrap();
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let d = Watch::new(&path).spawn().unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(metrics.num_alive_tasks(), before + 1);
        drop(d);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(metrics.num_alive_tasks(), before);
    }

    #[test]
    fn spawn_needs_a_runtime_and_a_format() {
        let _serial = LOGGING.blocking_lock();
        let e = Watch::new("/nonexistent/e.json").spawn().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::NoRuntime));
        assert_eq!(
            e.to_string(),
            "endpoints file /nonexistent/e.json: Watch::spawn must be called from within a Tokio runtime"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let e = Watch::new("/nonexistent/e.yaml").spawn().unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::UnknownFormat));
            assert!(
                Watch::new("/nonexistent/e.yaml")
                    .format(Format::Json)
                    .spawn()
                    .is_ok()
            );
        });
    }
}

/// Adversarial input for the file format (issue 9): random bytes and
/// mutations of valid files never panic; every error names a place.
#[cfg(test)]
mod adversarial {
    use super::*;
    use proptest::prelude::*;

    const VALID_JSON: &str = r#"{"endpoints": ["127.0.0.1:8081", {"address": "127.0.0.1:8082", "weight": 2.5, "labels": {"zone": "a"}}]}"#;
    const VALID_TOML: &str = "endpoints = [\"127.0.0.1:8081\", { address = \"127.0.0.1:8082\", weight = 2.5, labels = { zone = \"a\" } }]\n";

    fn exercise(text: &str) {
        for format in [Format::Json, Format::Toml] {
            match parse(text, format) {
                Ok(endpoints) => {
                    assert!(endpoints.len() <= DEFAULT_MAX_ENDPOINTS);
                    for e in &endpoints {
                        assert!(e.weight().is_finite() && e.weight() > 0.0);
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    assert!(!message.is_empty());
                }
            }
        }
    }

    /// Applies byte-level edits: (kind, position, length, replacement).
    fn mutate(base: &str, ops: &[(u8, usize, usize, char)]) -> String {
        let mut chars: Vec<char> = base.chars().collect();
        for &(kind, at, len, c) in ops {
            let at = at % (chars.len() + 1);
            match kind % 3 {
                0 => chars.insert(at, c),
                1 => {
                    let end = (at + len % 8).min(chars.len());
                    chars.drain(at..end);
                }
                _ => {
                    if at < chars.len() {
                        chars[at] = c;
                    }
                }
            }
        }
        chars.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            exercise(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn structured_noise_never_panics(text in "(\\PC|[\\[\\]{}=:,\"'\n ]|address|weight|labels|endpoints|1e999|-0|NaN){0,60}") {
            exercise(&text);
        }

        #[test]
        fn mutated_files_never_panic(
            ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<char>()), 1..6),
        ) {
            exercise(&mutate(VALID_JSON, &ops));
            exercise(&mutate(VALID_TOML, &ops));
        }

        #[test]
        fn weights_must_be_positive_and_finite(weight in prop_oneof![
            Just("0".to_owned()), Just("-1".to_owned()), Just("1e999".to_owned()),
            Just("-0.0".to_owned()), any::<f64>().prop_map(|w| format!("{w:?}")),
        ]) {
            let json = format!(r#"[{{"address": "127.0.0.1:1", "weight": {weight}}}]"#);
            if let Ok(endpoints) = parse(&json, Format::Json) {
                prop_assert!(endpoints[0].weight().is_finite() && endpoints[0].weight() > 0.0);
            } else {
                let e = parse(&json, Format::Json).unwrap_err();
                prop_assert!(e.line().is_some(), "{e} names no line");
            }
        }
    }
}
