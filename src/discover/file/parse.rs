//! Parsing an endpoints file: UTF-8, then JSON or TOML read entry by entry,
//! each problem placed at its line and column, and no more entries than the
//! limit ever held.

use super::*;

/// Parses bytes read from a file: UTF-8 (a BOM is skipped), then the format.
pub(super) fn parse_bytes(
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

pub(super) fn parse_text(
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
pub(super) struct Ctx {
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
pub(super) struct Doc<'a> {
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
pub(super) struct DocKey<'a> {
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
pub(super) struct List<'a> {
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
pub(super) struct TooMany<'a> {
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
