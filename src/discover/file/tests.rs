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

    let text =
        "[\n  \"10.0.0.1:80\",\n  {\n    \"address\": \"10.0.0.2:80\",\n    \"weight\": 0\n  }\n]";
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
        "line 1, column 32: endpoints[2]: more than 2 endpoints, the limit (max_endpoints)"
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
fn the_default_limit_admits_past_the_old_10_000_cap() {
    let entries: Vec<String> = (0..20_000u32)
        .map(|i| format!("\"{}:80\"", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let text = format!("[{}]", entries.join(","));
    assert!(text.len() as u64 <= DEFAULT_MAX_BYTES);
    assert_eq!(parse(&text, Format::Json).unwrap().len(), 20_000);
    let e = parse_text(&text, Format::Json, 19_999).unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::TooManyEndpoints { limit: 19_999 }
    ));
    assert!(
        e.to_string()
            .ends_with("more than 19999 endpoints, the limit (max_endpoints)"),
        "{e}"
    );
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

    let e =
        toml("[[endpoints]]\naddress = \"10.0.0.1:80\"\n\n[[endpoints]]\naddress = \"nope:x\"\n");
    assert_eq!(place(&e), (Some(5), Some(11), Some("endpoints[1].address")));
    assert!(
        e.to_string()
            .ends_with("endpoint \"nope:x\": port must be a number from 0 to 65535")
    );

    let e = toml("endpoints = [{ address = \"10.0.0.1:80\", wieght = 2 }]");
    assert_eq!(place(&e), (Some(1), Some(41), Some("endpoints[0].wieght")));
    assert!(matches!(e.kind(), ErrorKind::Invalid(m) if m.starts_with("unknown field `wieght`")));

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
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
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
        let guard = tracing::subscriber::set_default(subscriber);
        // Call sites another thread reached first have their interest
        // cached without this subscriber: ask again.
        tracing::callsite::rebuild_interest_cache();
        (logs, guard)
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
