//! The endpoint entry as written in files: `"host:port"`, or a table with
//! `address`, `weight` and `labels`. The proxy's config
//! (`services[].endpoints`) and file discovery
//! ([`discover::file`](crate::discover::file)) read it with this one piece
//! of code.
//!
//! [`EndpointSpec`]'s `Deserialize` reads the shape only (the proxy checks
//! values afterwards, all problems at once). File discovery reads through
//! [`EntrySeed`] with a [`Strict`] context instead, which checks each value
//! where it is written, so that the format's error carries the line and
//! column of the bad value, and records which field it was.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{Address, Endpoint, EndpointError};

/// One endpoint as written in a file, before it is checked.
///
/// `"host:port"` (weight 1, no labels), or a table
/// `{ address = "host:port", weight = 2.0, labels = { zone = "a" } }` in
/// which only `address` is required and no other key is allowed.
/// [`to_endpoint`](EndpointSpec::to_endpoint) checks it.
///
/// ```
/// use palisade::discover::EndpointSpec;
///
/// let spec = EndpointSpec::Detailed {
///     address: "10.0.0.7:8080".into(),
///     weight: 2.0,
///     labels: [("zone".to_owned(), "a".to_owned())].into(),
/// };
/// let endpoint = spec.to_endpoint()?;
/// assert_eq!(endpoint.weight(), 2.0);
/// assert_eq!(spec.address(), "10.0.0.7:8080");
/// assert!(EndpointSpec::Address("no-port".into()).to_endpoint().is_err());
/// # Ok::<(), palisade::discover::EndpointError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EndpointSpec {
    /// `"host:port"`, weight 1.
    Address(String),
    /// `{ address = "host:port", weight = 2.0, labels = { zone = "a" } }`.
    Detailed {
        /// `host:port`.
        address: String,
        /// Relative capacity, finite and greater than 0. Default 1.
        weight: f64,
        /// Free-form metadata.
        labels: BTreeMap<String, String>,
    },
}

impl EndpointSpec {
    /// The `host:port` as written.
    pub fn address(&self) -> &str {
        match self {
            EndpointSpec::Address(address) | EndpointSpec::Detailed { address, .. } => address,
        }
    }

    /// The endpoint this describes, or why it is not one (the message names
    /// the endpoint).
    pub fn to_endpoint(&self) -> Result<Endpoint, EndpointError> {
        self.check().map_err(|(_, e)| e)
    }

    /// Like [`to_endpoint`](EndpointSpec::to_endpoint), naming the field that
    /// is wrong: `"address"` or `"weight"` (`""` for the string form).
    fn check(&self) -> Result<Endpoint, (&'static str, EndpointError)> {
        match self {
            EndpointSpec::Address(address) => Endpoint::parse(address).map_err(|e| ("", e)),
            EndpointSpec::Detailed {
                address,
                weight,
                labels,
            } => {
                let mut endpoint = Endpoint::parse(address).map_err(|e| ("address", e))?;
                endpoint = endpoint.with_weight(*weight).map_err(|e| ("weight", e))?;
                for (key, value) in labels {
                    endpoint = endpoint.with_label(key, value);
                }
                Ok(endpoint)
            }
        }
    }
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        EntrySeed { strict: None }.deserialize(deserializer)
    }
}

/// A problem [`Strict`] found in a value (rather than in the shape, which
/// the format's own error describes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Problem {
    /// A bad address or weight.
    Endpoint(EndpointError),
    /// An address given by an earlier entry too.
    Duplicate {
        /// The address as written the second time.
        address: String,
        /// The index of the first entry with it.
        first: usize,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Endpoint(e) => e.fmt(f),
            Problem::Duplicate { address, first } => duplicate(f, address, *first),
        }
    }
}

/// The message for an address listed twice.
pub(crate) fn duplicate(f: &mut fmt::Formatter<'_>, address: &str, first: usize) -> fmt::Result {
    write!(
        f,
        "endpoint {address:?} is listed twice (first at endpoints[{first}])"
    )
}

/// The context of a checking read of a list of entries: which entry is
/// being read, the addresses seen so far, and, after an error, the field
/// within the entry it is about and the [`Problem`] when it was one.
///
/// Errors keep flowing through serde as the format's own errors (so they
/// carry its line and column); this records what serde cannot carry.
#[derive(Debug, Default)]
pub(crate) struct Strict {
    index: Cell<usize>,
    seen: RefCell<HashMap<Address, usize>>,
    field: RefCell<Option<String>>,
    problem: RefCell<Option<Problem>>,
}

impl Strict {
    /// Starts entry `index` (0-based) of the list.
    pub(crate) fn enter(&self, index: usize) {
        self.index.set(index);
    }

    /// The field within the entry the first error is about (`"weight"`,
    /// `"labels.zone"`, `""` for the entry as a whole), if it was noted.
    pub(crate) fn take_field(&self) -> Option<String> {
        self.field.borrow_mut().take()
    }

    /// The value problem behind the first error, if it was one.
    pub(crate) fn take_problem(&self) -> Option<Problem> {
        self.problem.borrow_mut().take()
    }

    /// Notes the field of an error on its way out; the first (innermost)
    /// note wins.
    fn note(&self, field: impl FnOnce() -> String) {
        let mut slot = self.field.borrow_mut();
        if slot.is_none() {
            *slot = Some(field());
        }
    }

    /// Records `problem` for `field` and returns it as a serde error.
    fn fail<E: de::Error>(&self, field: &str, problem: Problem) -> E {
        let e = E::custom(&problem);
        self.note(|| field.to_owned());
        let mut slot = self.problem.borrow_mut();
        if slot.is_none() {
            *slot = Some(problem);
        }
        e
    }

    /// Checks an address and that no earlier entry had it.
    fn address<E: de::Error>(&self, field: &str, address: &str) -> Result<(), E> {
        let parsed: Address = address
            .parse()
            .map_err(|e| self.fail(field, Problem::Endpoint(e)))?;
        let index = self.index.get();
        match self.seen.borrow_mut().entry(parsed) {
            std::collections::hash_map::Entry::Occupied(first) => Err(self.fail(
                field,
                Problem::Duplicate {
                    address: address.to_owned(),
                    first: *first.get(),
                },
            )),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
                Ok(())
            }
        }
    }
}

/// Reads one entry; with a [`Strict`] context it also checks each value as
/// it is read (see the [module docs](self)).
#[derive(Clone, Copy)]
pub(crate) struct EntrySeed<'a> {
    pub(crate) strict: Option<&'a Strict>,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = EndpointSpec;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<EndpointSpec, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// The keys of the table form.
const FIELDS: &[&str] = &["address", "weight", "labels"];

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = EndpointSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"an endpoint: "host:port" or a table with `address`, `weight`, `labels`"#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointSpec, E> {
        if let Some(strict) = self.strict {
            strict.address("", v)?;
        }
        Ok(EndpointSpec::Address(v.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EndpointSpec, A::Error> {
        let strict = self.strict;
        let note = |field: &'static str| move |e| noted(strict, || field.to_owned(), e);
        let mut address: Option<String> = None;
        let mut weight: Option<f64> = None;
        let mut labels: Option<BTreeMap<String, String>> = None;
        while let Some(field) = map.next_key_seed(FieldSeed { strict })? {
            match field {
                Field::Address => {
                    if address.is_some() {
                        return Err(note("address")(de::Error::duplicate_field("address")));
                    }
                    address = Some(map.next_value_seed(AddressSeed { strict })?);
                }
                Field::Weight => {
                    if weight.is_some() {
                        return Err(note("weight")(de::Error::duplicate_field("weight")));
                    }
                    let seed = WeightSeed {
                        strict,
                        address: address.as_deref(),
                    };
                    weight = Some(map.next_value_seed(seed)?);
                }
                Field::Labels => {
                    if labels.is_some() {
                        return Err(note("labels")(de::Error::duplicate_field("labels")));
                    }
                    labels = Some(map.next_value_seed(LabelsSeed { strict })?);
                }
            }
        }
        let Some(address) = address else {
            return Err(note("address")(de::Error::missing_field("address")));
        };
        let spec = EndpointSpec::Detailed {
            address,
            weight: weight.unwrap_or(1.0),
            labels: labels.unwrap_or_default(),
        };
        // Values were checked where they were read; this catches a weight
        // written before its address, which could not be checked then.
        if let Some(strict) = strict
            && let Err((field, e)) = spec.check()
        {
            return Err(strict.fail(field, Problem::Endpoint(e)));
        }
        Ok(spec)
    }
}

enum Field {
    Address,
    Weight,
    Labels,
}

/// Reads a key of the table form; unknown keys are errors.
struct FieldSeed<'a> {
    strict: Option<&'a Strict>,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`address`, `weight` or `labels`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        match v {
            "address" => Ok(Field::Address),
            "weight" => Ok(Field::Weight),
            "labels" => Ok(Field::Labels),
            _ => {
                note(self.strict, || key_path("", v));
                Err(E::unknown_field(v, FIELDS))
            }
        }
    }
}

// The values are checked inside the format's `deserialize_*` call (in the
// visitor, not after it returns): only there does serde_json place an error
// on the value itself, and toml attach the value's span.

/// Reads `address`, checking it when strict.
struct AddressSeed<'a> {
    strict: Option<&'a Strict>,
}

impl<'de> DeserializeSeed<'de> for AddressSeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let strict = self.strict;
        deserializer
            .deserialize_string(self)
            .inspect_err(|_| note(strict, || "address".to_owned()))
    }
}

impl<'de> Visitor<'de> for AddressSeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if let Some(s) = self.strict {
            s.address("address", v)?;
        }
        Ok(v.to_owned())
    }
}

/// Reads `weight` (any number), checking it when strict and the address is
/// known.
struct WeightSeed<'a> {
    strict: Option<&'a Strict>,
    address: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for WeightSeed<'_> {
    type Value = f64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<f64, D::Error> {
        let strict = self.strict;
        deserializer
            .deserialize_f64(self)
            .inspect_err(|_| note(strict, || "weight".to_owned()))
    }
}

impl<'de> Visitor<'de> for WeightSeed<'_> {
    type Value = f64;

    // As serde's own `f64`, so the messages are the same.
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("f64")
    }

    fn visit_f64<E: de::Error>(self, weight: f64) -> Result<f64, E> {
        if let (Some(s), Some(address)) = (self.strict, self.address)
            // The address was checked when it was read.
            && let Ok(endpoint) = Endpoint::parse(address)
            && let Err(e) = endpoint.with_weight(weight)
        {
            return Err(s.fail("weight", Problem::Endpoint(e)));
        }
        Ok(weight)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        self.visit_f64(v as f64)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<f64, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<f64, E> {
        self.visit_f64(v as f64)
    }
}

/// Reads `labels`: a table of strings, each key once.
struct LabelsSeed<'a> {
    strict: Option<&'a Strict>,
}

impl<'de> DeserializeSeed<'de> for LabelsSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let strict = self.strict;
        deserializer
            .deserialize_map(self)
            .inspect_err(|_| note(strict, || "labels".to_owned()))
    }
}

impl<'de> Visitor<'de> for LabelsSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As serde's own maps, so the messages are the same.
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut labels = BTreeMap::new();
        while let Some(key) = map.next_key_seed(LabelKey {
            strict: self.strict,
            labels: &labels,
        })? {
            let value: String = map
                .next_value()
                .inspect_err(|_| note(self.strict, || key_path("labels", &key)))?;
            labels.insert(key, value);
        }
        Ok(labels)
    }
}

/// A label's key: a string not given before.
struct LabelKey<'a> {
    strict: Option<&'a Strict>,
    labels: &'a BTreeMap<String, String>,
}

impl<'de> DeserializeSeed<'de> for LabelKey<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for LabelKey<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if self.labels.contains_key(key) {
            note(self.strict, || key_path("labels", key));
            return Err(E::custom(format_args!("label {key:?} is given twice")));
        }
        Ok(key.to_owned())
    }
}

/// Notes `field` as the place of an error, when reading strictly.
fn note(strict: Option<&Strict>, field: impl FnOnce() -> String) {
    if let Some(s) = strict {
        s.note(field);
    }
}

/// `e`, after noting `field` as its place.
fn noted<E>(strict: Option<&Strict>, field: impl FnOnce() -> String, e: E) -> E {
    note(strict, field);
    e
}

/// `parent.key`, quoting a key that is not bare (`labels."a b"`).
pub(crate) fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), bare) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{key:?}"),
        (false, true) => format!("{parent}.{key}"),
        (false, false) => format!("{parent}.{key:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lenient_read_takes_both_forms_and_checks_only_the_shape() {
        let specs: Vec<EndpointSpec> = serde_json::from_str(
            r#"["no-port", {"address": "10.0.0.1:80", "weight": 0, "labels": {"zone": "a"}}]"#,
        )
        .unwrap();
        assert_eq!(specs[0], EndpointSpec::Address("no-port".into()));
        assert_eq!(specs[1].address(), "10.0.0.1:80");
        assert!(specs[0].to_endpoint().is_err());
        assert!(specs[1].to_endpoint().is_err());

        let err = serde_json::from_str::<EndpointSpec>(r#"{"address": "a:1", "wieght": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "unknown field `wieght`, expected one of `address`, `weight`, `labels`"
            ),
            "{err}"
        );
        let err = serde_json::from_str::<EndpointSpec>(r#"{"weight": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("missing field `address`"), "{err}");
        let err = serde_json::from_str::<EndpointSpec>(r#"{"address": "a:1", "weight": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid type: string \"x\", expected f64"),
            "{err}"
        );
        let err = serde_json::from_str::<EndpointSpec>(r#"{"address": "a:1", "address": "b:1"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("duplicate field `address`"), "{err}");
    }

    #[test]
    fn a_strict_read_names_the_field() {
        let strict = Strict::default();
        let seed = EntrySeed {
            strict: Some(&strict),
        };
        let mut de = serde_json::Deserializer::from_str(r#"{"address": "a:1", "weight": -1}"#);
        let err = seed.deserialize(&mut de).unwrap_err();
        assert_eq!(strict.take_field().as_deref(), Some("weight"));
        assert!(matches!(strict.take_problem(), Some(Problem::Endpoint(_))));
        assert!(
            err.to_string()
                .contains("weight must be finite and greater than 0, got -1"),
            "{err}"
        );

        // A weight before its address is checked at the end of the entry.
        let strict = Strict::default();
        let seed = EntrySeed {
            strict: Some(&strict),
        };
        let mut de = serde_json::Deserializer::from_str(r#"{"weight": 0, "address": "a:1"}"#);
        seed.deserialize(&mut de).unwrap_err();
        assert_eq!(strict.take_field().as_deref(), Some("weight"));

        let strict = Strict::default();
        let seed = EntrySeed {
            strict: Some(&strict),
        };
        let mut de =
            serde_json::Deserializer::from_str(r#"{"address": "a:1", "labels": {"a b": 1}}"#);
        seed.deserialize(&mut de).unwrap_err();
        assert_eq!(strict.take_field().as_deref(), Some(r#"labels."a b""#));
        assert_eq!(strict.take_problem(), None);
    }
}
