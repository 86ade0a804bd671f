//! Where things are in the file: field paths, the source map from paths to
//! lines, parsing with every error placed, and how errors are rendered.

use super::*;

use std::ops::Range;
use std::sync::OnceLock;

use toml::de::{DeArray, DeTable, DeValue};

/// A config that could not be accepted: every problem, each naming the
/// field and, where known, the line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// One entry per problem, in the order of the file.
    pub problems: Vec<Problem>,
}

/// One problem in a config file (an error from [`Config::from_toml`] or a
/// warning from [`Config::lints`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The field's path, e.g. `services[1].retry.max_attempts`;
    /// `(syntax)` for TOML syntax errors that are in no field.
    pub field: String,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The directory of the file at `path`, made absolute (against the
/// current directory) when it can be, so that it stays right if the
/// current directory changes.
pub(crate) fn dir_of(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

/// The 1-based line of a byte offset.
/// Where a text's lines end: each offset → line lookup is a binary
/// search, not a rescan of the text (a parse makes one per node, and a
/// rescan each made parsing quadratic in the file's size).
pub(crate) struct LineIndex(Vec<usize>);

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        LineIndex(
            text.bytes()
                .enumerate()
                .filter_map(|(i, b)| (b == b'\n').then_some(i))
                .collect(),
        )
    }

    /// The 1-based line of the byte at `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&newline| newline < offset) + 1
    }
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let bytes = text.as_bytes();
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

// ---------------------------------------------------------------------------
// Durations: humantime strings ("250ms", "1m 30s"), with a message that says
// what went wrong and how to write one.

pub(crate) use crate::settings::{duration, format_duration};

/// A duration that may be left out (then `None`: the library's default).
pub(crate) mod maybe_duration {
    use super::*;

    pub(crate) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }
}

/// A list of socket addresses that may be left out, each checked (and its
/// problem placed) like [`socket_addr`].
pub(crate) mod maybe_socket_addrs {
    use super::*;

    pub(crate) fn serialize<S: serde::Serializer>(
        addrs: &Option<Vec<SocketAddr>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match addrs {
            Some(addrs) => s.collect_seq(addrs.iter().map(ToString::to_string)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<SocketAddr>>, D::Error> {
        struct One;
        impl<'de> serde::de::DeserializeSeed<'de> for One {
            type Value = SocketAddr;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SocketAddr, D::Error> {
                socket_addr::deserialize(d)
            }
        }
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Vec<SocketAddr>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a list of socket addresses such as ["127.0.0.1:53"]"#)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<SocketAddr>, A::Error> {
                let mut out = Vec::new();
                while let Some(addr) = seq.next_element_seed(One)? {
                    out.push(addr);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Visit).map(Some)
    }
}

/// A socket address, `IP:port`, with a message that says how to write one.
pub(crate) mod socket_addr {
    use super::*;

    pub(crate) fn serialize<S: serde::Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = SocketAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a socket address such as "127.0.0.1:4140" or "[::1]:4140""#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketAddr, E> {
                v.parse().map_err(|_| {
                    E::custom(format!(
                        r#"invalid socket address {v:?}: write an IP address and a port, such as "127.0.0.1:4140", "0.0.0.0:4140" or "[::1]:4140" (host names are not resolved here)"#
                    ))
                })
            }
        }
        d.deserialize_str(Visit)
    }
}

// ---------------------------------------------------------------------------
// Field paths and where they are in the file.

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `services[1].retry.max_attempts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FieldPath(Vec<Seg>);

impl FieldPath {
    pub(crate) fn root() -> FieldPath {
        FieldPath::default()
    }

    /// This path and one key.
    pub(crate) fn key(&self, key: &str) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Seg::Key(key.to_owned()));
        path
    }

    /// This path and dotted keys, with indexes (`"retry.max_attempts"`,
    /// `"retry.retryable_statuses[2]"`): a settings problem's field.
    pub(crate) fn at(&self, dotted: &str) -> FieldPath {
        let mut path = self.clone();
        for part in dotted.split('.') {
            let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
            if !key.is_empty() {
                path.0.push(Seg::Key(key.to_owned()));
            }
            while let Some(inner) = rest.strip_prefix('[') {
                let end = inner.find(']').unwrap_or(inner.len());
                match inner[..end].parse() {
                    Ok(i) => path.0.push(Seg::Index(i)),
                    Err(_) => path.0.push(Seg::Key(inner[..end].to_owned())),
                }
                rest = inner.get(end + 1..).unwrap_or("");
            }
        }
        path
    }

    /// This path and an array index.
    pub(crate) fn index(&self, i: usize) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Seg::Index(i));
        path
    }
}

/// Whether a key can be written bare in a path.
pub(crate) fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(file)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(key) {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where each field of a parsed file was written: path → 1-based line.
/// Compares equal to every other (it is not part of the configuration).
///
/// It keeps the file's text and indexes it on the first lookup: a valid
/// file is never looked up, and indexing every key of a large file (a
/// path per key) cost more than parsing it.
#[derive(Clone, Default)]
pub(crate) struct SourceMap {
    source: Option<Arc<Source>>,
}

struct Source {
    text: Box<str>,
    lines: OnceLock<HashMap<FieldPath, usize>>,
}

impl Source {
    fn lines(&self) -> &HashMap<FieldPath, usize> {
        self.lines.get_or_init(|| {
            let (doc, _) = DeTable::parse_recoverable(&self.text);
            let index = LineIndex::new(&self.text);
            index_document(doc.get_ref())
                .into_iter()
                .map(|n| {
                    let start = n.key.as_ref().unwrap_or(&n.value).start;
                    (n.path, index.line(start))
                })
                .collect()
        })
    }
}

impl fmt::Debug for SourceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "SourceMap({} bytes)", s.text.len()),
            None => f.write_str("SourceMap(none)"),
        }
    }
}

impl PartialEq for SourceMap {
    fn eq(&self, _: &SourceMap) -> bool {
        true
    }
}

impl SourceMap {
    /// The source map of a file whose text is `text`.
    pub(crate) fn of(text: &str) -> SourceMap {
        SourceMap {
            source: Some(Arc::new(Source {
                text: text.into(),
                lines: OnceLock::new(),
            })),
        }
    }

    fn lines(&self) -> Option<&HashMap<FieldPath, usize>> {
        self.source.as_deref().map(Source::lines)
    }

    /// Whether `path` itself was written in the file.
    pub(crate) fn written(&self, path: &FieldPath) -> bool {
        self.lines().is_some_and(|lines| lines.contains_key(path))
    }

    /// The line of `path`, or of its nearest ancestor that was written.
    pub(crate) fn line(&self, path: &FieldPath) -> Option<usize> {
        let lines = self.lines()?;
        let mut segs = path.0.as_slice();
        // One clone for the lookups, shortened as we go up.
        let mut probe = FieldPath(segs.to_vec());
        loop {
            if segs.is_empty() {
                return None;
            }
            if let Some(line) = lines.get(&probe) {
                return Some(*line);
            }
            segs = &segs[..segs.len() - 1];
            probe.0.pop();
        }
    }

    pub(crate) fn line_of_rendered(&self, field: &str) -> Option<usize> {
        let lines = self.lines()?;
        // Paths are few; compare renderings, going up to the nearest
        // ancestor that was written.
        let mut best: Option<(usize, usize)> = None;
        for (path, line) in lines.iter() {
            let rendered = path.to_string();
            let is_prefix = field == rendered
                || (field.starts_with(&rendered)
                    && matches!(field.as_bytes().get(rendered.len()), Some(b'.' | b'[')));
            if is_prefix && best.is_none_or(|(len, _)| rendered.len() > len) {
                best = Some((rendered.len(), *line));
            }
        }
        best.map(|(_, line)| line)
    }
}

/// One key or array element of a parsed document, with its spans.
pub(crate) struct Node {
    path: FieldPath,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

/// Every key and array element of a parsed document.
pub(crate) fn index_document(doc: &DeTable<'_>) -> Vec<Node> {
    fn table(t: &DeTable<'_>, path: &mut Vec<Seg>, out: &mut Vec<Node>) {
        for (k, v) in t.iter() {
            path.push(Seg::Key(k.get_ref().to_string()));
            out.push(Node {
                path: FieldPath(path.clone()),
                key: Some(k.span()),
                value: v.span(),
            });
            value(v.get_ref(), path, out);
            path.pop();
        }
    }
    fn value(v: &DeValue<'_>, path: &mut Vec<Seg>, out: &mut Vec<Node>) {
        match v {
            DeValue::Table(t) => table(t, path, out),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    out.push(Node {
                        path: FieldPath(path.clone()),
                        key: None,
                        value: item.span(),
                    });
                    value(item.get_ref(), path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    table(doc, &mut Vec::new(), &mut out);
    out
}

/// Whether `inner` lies within `outer` (a zero-width `inner` may sit at
/// `outer`'s end).
pub(crate) fn span_contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    !outer.is_empty() && outer.start <= inner.start && inner.end <= outer.end
}

/// The smallest key or value whose span holds `span`.
pub(crate) fn node_at<'n>(nodes: &'n [Node], span: &Range<usize>) -> Option<&'n Node> {
    let mut best: Option<(usize, &Node)> = None;
    for node in nodes {
        for s in node.key.iter().chain(std::iter::once(&node.value)) {
            if span_contains(s, span) {
                let len = s.len();
                let better = match best {
                    None => true,
                    Some((best_len, best_node)) => {
                        len < best_len
                            || (len == best_len && node.path.0.len() > best_node.path.0.len())
                    }
                };
                if better {
                    best = Some((len, node));
                }
            }
        }
    }
    best.map(|(_, node)| node)
}

/// Removes the key or array element `node` from a document, found by its
/// span (spans survive earlier removals; indices do not).
pub(crate) fn remove_node(table: &mut DeTable<'_>, node: &Node) -> bool {
    if let Some(key) = &node.key {
        let found = table
            .iter()
            .find(|(k, _)| k.span() == *key)
            .map(|(k, _)| k.get_ref().clone());
        if let Some(k) = found {
            table.remove(k.as_ref());
            return true;
        }
    }
    table
        .iter_mut()
        .any(|(_, v)| remove_in_value(v.get_mut(), node))
}

pub(crate) fn remove_in_value(value: &mut DeValue<'_>, node: &Node) -> bool {
    match value {
        DeValue::Table(t) => remove_node(t, node),
        DeValue::Array(items) => {
            if node.key.is_none()
                && let Some(i) = items.iter().position(|item| item.span() == node.value)
            {
                let mut kept = DeArray::new();
                for (k, item) in items.iter().enumerate() {
                    if k != i {
                        kept.push(item.clone());
                    }
                }
                *items = kept;
                return true;
            }
            items
                .iter_mut()
                .any(|item| remove_in_value(item.get_mut(), node))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Parsing: TOML syntax, then serde, every error kept.

/// Errors reported from one file at most; the rest are left for the next
/// run.
pub(crate) const MAX_PARSE_ERRORS: usize = 100;

/// A TOML or serde error placed in the file: its problem, and the key or
/// array element it is about.
pub(crate) fn place<'n>(
    lines: &LineIndex,
    nodes: &'n [Node],
    e: &toml::de::Error,
    unplaced: &str,
) -> (Problem, Option<&'n Node>) {
    // The document itself has the empty span 0..0: an error there is about
    // the file as a whole, not about line 1.
    let span = e.span().filter(|s| !(s.start == 0 && s.end == 0));
    let node = span.as_ref().and_then(|s| node_at(nodes, s));
    let message = e.message().trim().replace('\n', "; ");
    let mut path = node.map(|n| n.path.clone()).unwrap_or_default();
    // A message about a key of the table it was raised on (serde's missing
    // fields; a `discovery` setting of another source) is placed at the key.
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|m| m.split('`').next());
    if let Some(key) = named
        && path.0.last() != Some(&Seg::Key(key.to_owned()))
    {
        path = path.key(key);
    }
    let field = if path.0.is_empty() {
        unplaced.to_owned()
    } else {
        path.to_string()
    };
    let problem = Problem {
        field,
        line: span.map(|s| lines.line(s.start)),
        message,
    };
    (problem, node)
}

pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let nodes = index_document(doc.get_ref());
        let lines = LineIndex::new(text);
        let mut problems: Vec<Problem> = Vec::new();
        for e in syntax.iter().take(MAX_PARSE_ERRORS) {
            let (problem, _) = place(&lines, &nodes, e, "(syntax)");
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        return Err(ConfigError { problems });
    }

    // A valid file (the common case) is deserialized once, without a copy
    // of the document, and its source map indexed only if a line is ever
    // asked for.
    let e = match Config::deserialize(toml::de::Deserializer::from(doc)) {
        Ok(mut config) => {
            config.source = SourceMap::of(text);
            return Ok(config);
        }
        Err(e) => e,
    };

    // serde stops at the first error. To report the others too, take the
    // key (or array element) it is about out of the document and try again.
    let (doc, _) = DeTable::parse_recoverable(text);
    let nodes = index_document(doc.get_ref());
    let lines = LineIndex::new(text);
    let mut current = doc;
    let mut problems: Vec<Problem> = Vec::new();
    let mut removed: Vec<FieldPath> = Vec::new();
    let mut next = Some(e);
    for _ in 0..MAX_PARSE_ERRORS {
        let e = match next.take() {
            Some(e) => e,
            None => match Config::deserialize(toml::de::Deserializer::from(current.clone())) {
                Ok(_) => break,
                Err(e) => e,
            },
        };
        let (problem, node) = place(&lines, &nodes, &e, "(file)");
        // A key we took out is then missing, and the table it was in may
        // then be incomplete (`discovery = {}`): not news.
        let ours = removed.iter().any(|r| {
            let r = r.to_string();
            r == problem.field
                || (r.starts_with(&problem.field)
                    && matches!(r.as_bytes().get(problem.field.len()), Some(b'.' | b'[')))
        });
        if !ours && !problems.contains(&problem) {
            problems.push(problem);
        }
        let Some(node) = node else { break };
        if !remove_node(current.get_mut(), node) {
            break;
        }
        removed.push(node.path.clone());
    }
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    Err(ConfigError { problems })
}
