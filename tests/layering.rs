//! The import rule of docs/ARCHITECTURE.md, checked on the source: a module
//! imports only modules below it on the request path, plus the shared ones;
//! a shared module imports only shared ones; nothing forms a circle.
//!
//! It reads every `crate::…` path in `src/` (in `use` items, grouped or not,
//! and inline in code; comments, strings and test code are skipped) and maps
//! it to the top-level module it names. When this test fails, it prints each
//! edge that breaks the rule with the file and line that makes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, outside in: the order a request travels through them. A
/// layer may import the layers after it, never those before it.
const LAYERS: &[&str] = &[
    "proxy",    // the sidecar: config, routing, admin
    "demo",     // in-process demo backends
    "stack",    // Client and its Builder: assembles the layers below
    "metrics",  // telemetry: the outermost layer, and the scrape-time collector
    "snapshot", // a client's live state as plain data, read from the layers' handles
    "deadline", // one absolute deadline per request
    "limit",    // rate limit, bulkhead, adaptive throttling
    "breaker",  // the service breaker
    "retry",    // retries (policy, budget, backoff, replay)
    "hedge",    // backup requests, inside retries
    "balance",  // P2C over peak-EWMA, failure accrual
    "http",     // the inner client: per-endpoint HTTP services
    "discover", // where endpoints come from
];

/// Modules every layer may import. They import only each other, never a
/// layer, and never in a circle.
const SHARED: &[&str] = &[
    "error",    // Error, BuildError, Limit, RetryStop
    "classify", // the one classifier
    "facts",    // request facts: Deadline, Tried, Hints, Circuit
    "endpoint", // Endpoint, Address, NewEndpoint
    "settings", // the settings vocabulary: problems, durations
    "backoff",  // exponential backoff with jitter
    "budget",   // the token budget of retries and hedges
    "replay",   // the replayable request body
    "rolling",  // the sliding-window counter
    "refuse",   // the "refuse now or run" response future
];

/// Test-only helpers: may import anything.
const EXEMPT: &[&str] = &["testing"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    at: String,
}

#[test]
fn layers_import_downward_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let reexports = root_reexports(&root.join("lib.rs"));
    let edges = edges(&root, &reexports);
    assert!(
        edges.len() > 50,
        "found only {} import edges in src/: the scanner is broken",
        edges.len()
    );

    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let shared = |m: &str| SHARED.contains(&m);
    let mut broken = Vec::new();
    let mut unknown = BTreeSet::new();
    for e in &edges {
        if EXEMPT.contains(&e.from.as_str()) {
            continue;
        }
        for m in [&e.from, &e.to] {
            if rank(m).is_none() && !shared(m) && !EXEMPT.contains(&m.as_str()) {
                unknown.insert(m.clone());
            }
        }
        let ok = match (rank(&e.from), rank(&e.to)) {
            (Some(from), Some(to)) => to > from,
            (Some(_), None) => shared(&e.to),
            (None, Some(_)) => false, // a shared module never imports a layer
            (None, None) => true,     // shared → shared: checked for circles below
        };
        if !ok {
            broken.push(format!("{} → {} ({})", e.from, e.to, e.at));
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS or SHARED in tests/layering.rs (and from \
         docs/ARCHITECTURE.md): {unknown:?}"
    );
    assert!(
        broken.is_empty(),
        "imports that run up the request path (see docs/ARCHITECTURE.md, \"Imports\"):\n  {}",
        broken.join("\n  ")
    );

    // No circle anywhere, shared modules included.
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in &edges {
        graph.entry(&e.from).or_default().insert(&e.to);
    }
    if let Some(circle) = find_circle(&graph) {
        panic!("import circle: {}", circle.join(" → "));
    }
}

#[test]
fn the_scanner_sees_every_form_of_path() {
    let text = r#"
        use crate::alpha::A;
        use crate::{beta::{B, C}, gamma, self as _};
        // use crate::commented::Out;
        /// [`x`](crate::doc::Link)
        let s = "crate::in_string::No";
        fn f() -> crate::delta::D { crate::Client::new() }
        #[cfg(test)]
        mod tests { use crate::testonly::T; }
    "#;
    let reexports = BTreeMap::from([("Client".to_owned(), "stack".to_owned())]);
    let found: BTreeSet<String> = paths_in(text, &reexports)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let want: BTreeSet<String> = ["alpha", "beta", "gamma", "delta", "stack"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, want);
}

/// `pub use module::{A, B};` in lib.rs: the root names and their modules.
fn root_reexports(lib: &Path) -> BTreeMap<String, String> {
    let text = strip(&fs::read_to_string(lib).unwrap());
    let mut map = BTreeMap::new();
    for item in text.split(';') {
        let item = item.trim();
        let Some(i) = item.find("pub use ") else {
            continue;
        };
        let rest = &item[i + "pub use ".len()..];
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names.trim_matches(|c| c == '{' || c == '}' || c == ' ');
        for name in names.split(',') {
            let name = name.split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() {
                map.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    map
}

fn edges(root: &Path, reexports: &BTreeMap<String, String>) -> Vec<Edge> {
    let mut out = BTreeSet::new();
    for file in rust_files(root) {
        let rel = file.strip_prefix(root).unwrap();
        let Some(from) = module_of(rel) else { continue };
        // Test modules in their own files: `tests.rs`, `eos_tests.rs`, and
        // every file of a `tests/` folder.
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let in_tests_folder = rel.parent().is_some_and(|p| p.ends_with("tests"));
        if name == "tests.rs" || name.ends_with("_tests.rs") || in_tests_folder {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        for (to, line) in paths_in(&text, reexports) {
            if to != from {
                out.insert(Edge {
                    from: from.clone(),
                    to,
                    at: format!("src/{}:{line}", rel.display()),
                });
            }
        }
    }
    // One edge per (from, to), keeping the first place that makes it.
    let mut seen = BTreeSet::new();
    out.into_iter()
        .filter(|e| seen.insert((e.from.clone(), e.to.clone())))
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to; `None` for the crate root and the
/// binary (a separate crate that sees only the public API).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// Every `crate::` path in code: (top-level module, line).
fn paths_in(text: &str, reexports: &BTreeMap<String, String>) -> Vec<(String, usize)> {
    let code = strip(text);
    let code = match code.find("#[cfg(test)]\nmod tests") {
        Some(i) => &code[..i],
        None => code.as_str(),
    };
    let code = match code.find("#[cfg(test)]") {
        // An inline test module written with other whitespace.
        Some(i)
            if code[i..]
                .trim_start_matches("#[cfg(test)]")
                .trim_start()
                .starts_with("mod ") =>
        {
            &code[..i]
        }
        _ => code,
    };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i;
        at = start + "crate::".len();
        // `$crate::` in macros, or part of a longer identifier.
        if start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b'$')
        {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[at..];
        let heads: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            top_level_items(group)
        } else {
            vec![rest]
        };
        for head in heads {
            let name: String = head
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() || name == "self" {
                continue;
            }
            let module = reexports.get(&name).cloned().unwrap_or(name);
            out.push((module, line));
        }
    }
    out
}

/// The comma-separated items of a `{…}` group, up to its closing brace.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// The text with comments and string literals blanked (newlines kept, so
/// line numbers stay true).
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&chars, i)
        {
            // Raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(&ch) => {
                        out.push(blank(ch));
                        j += 1;
                    }
                }
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    out.push(blank(ch));
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            // A char literal such as '"' (lifetimes have no closing quote).
            i += 3;
        } else if c == '\'' && next == Some('\\') {
            while i < chars.len() && !(chars[i] == '\'' && i > 0 && chars[i - 1] != '\\') {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

fn find_circle<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|n| *n == node) {
            let mut circle = path[i..].to_vec();
            circle.push(node);
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}
