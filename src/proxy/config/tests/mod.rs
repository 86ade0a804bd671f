//! The config's tests: parsing, validation, lints. The helpers and
//! snippets that every group shares are here; each group has its file.

use super::*;

mod discovery;
mod fuzz;
mod limits;
mod lints;
mod parse;
mod problems;
mod validation;

const PALISADE: &str = include_str!("../../../../examples/palisade.toml");

/// The problems of an invalid file, as (field, line, message).
fn errors(text: &str) -> Vec<(String, Option<usize>, String)> {
    match Config::from_toml(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| (p.field, p.line, p.message))
            .collect(),
    }
}

/// Asserts one problem has this field and line, and a message with `needle`.
#[track_caller]
fn assert_has(
    problems: &[(String, Option<usize>, String)],
    field: &str,
    line: Option<usize>,
    needle: &str,
) {
    assert!(
        problems
            .iter()
            .any(|(f, l, m)| f == field && *l == line && m.contains(needle)),
        "no problem {field} at {line:?} containing {needle:?} in:\n{problems:#?}"
    );
}

/// The lints of a valid file, as (field, line, message).
fn lints(text: &str) -> Vec<(String, Option<usize>, String)> {
    let config = Config::from_toml(text).unwrap_or_else(|e| panic!("invalid:\n{e}"));
    config
        .lints()
        .into_iter()
        .map(|p| (p.field, p.line, p.message))
        .collect()
}

const ROUTE: &str = "\n[[routes]]\nservice = \"app\"\n";

const TWO: &str = r#"[[services]]
name = "app"
endpoints = ["127.0.0.1:1"]
"#;
