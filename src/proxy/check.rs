//! `palisade check FILE`: validates a config file and reports every problem,
//! compiler-style, one line each.
//!
//! ```text
//! proxy.toml:6: error: services[0].endpoints[1]: endpoint "no-port": expected host:port
//! proxy.toml:14: error: routes[0].service: no service named "ap" (services: app)
//! proxy.toml: 2 errors; policy warnings are checked once the errors are fixed
//! ```
//!
//! Errors make the check fail (exit status 1). Warnings are the
//! [lints](crate::proxy::config::Config::lints) of a valid file: policies
//! that cannot work as written. They are reported, and the check still
//! passes (exit status 0).
//!
//! ```
//! use palisade::proxy::check::check_str;
//!
//! let report = check_str("proxy.toml", r#"
//! [[services]]
//! name = "app"
//! endpoints = ["127.0.0.1:8080"]
//! budget = { ratio = 2.0 }
//!
//! [[routes]]
//! service = "app"
//! "#);
//! assert!(!report.failed());
//! assert_eq!(report.exit_code(), 0);
//! let text = report.to_string();
//! assert!(text.starts_with("proxy.toml:5: warning: services[0].budget.ratio: "));
//! assert!(text.ends_with("proxy.toml: valid, 1 warning (1 service, 1 route, 1 listener)\n"));
//! ```

use std::fmt;
use std::path::Path;

use super::config::{Config, Problem};

/// The outcome of checking one config file: what to print and how to exit.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[must_use]
pub struct CheckReport {
    /// The file, as it is named in the report.
    pub file: String,
    /// Why the file could not be read, when it could not.
    pub unreadable: Option<String>,
    /// The errors: the config is not valid. In the order of the file.
    pub errors: Vec<Problem>,
    /// The lints of a valid config. In the order of the file.
    pub warnings: Vec<Problem>,
    /// The config, when it is valid.
    pub config: Option<Config>,
}

impl CheckReport {
    /// Whether the check failed: the file is unreadable or not valid.
    pub fn failed(&self) -> bool {
        self.unreadable.is_some() || !self.errors.is_empty()
    }

    /// The process exit status: 1 when the check [failed](Self::failed),
    /// otherwise 0 (warnings alone do not fail it).
    pub fn exit_code(&self) -> u8 {
        u8::from(self.failed())
    }
}

/// Reads, validates and lints the config file at `path`. Never fails: an
/// unreadable file is a failed report naming the path and the reason.
pub fn check_file(path: &Path) -> CheckReport {
    let file = path.display().to_string();
    let read = crate::discover::file::read_bounded(path, super::server::MAX_CONFIG_BYTES);
    match read.map(|(bytes, _)| bytes) {
        Err(e) => CheckReport {
            unreadable: Some(format!("cannot read the config file: {e}")),
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
            config: None,
        },
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => check_text(&file, &text, path),
            Err(e) => {
                let offset = e.utf8_error().valid_up_to();
                let line = super::config::line_of(&String::from_utf8_lossy(e.as_bytes()), offset);
                CheckReport {
                    unreadable: Some(format!(
                        "the config file is not UTF-8 text (invalid byte at line {line}, byte offset {offset})"
                    )),
                    file,
                    errors: Vec::new(),
                    warnings: Vec::new(),
                    config: None,
                }
            }
        },
    }
}

/// Validates and lints a config file's text; `file` names it in the
/// report, and relative paths in the text (such as `discovery.file`) are
/// taken relative to its directory.
pub fn check_str(file: &str, text: &str) -> CheckReport {
    check_text(file, text, Path::new(file))
}

fn check_text(file: &str, text: &str, path: &Path) -> CheckReport {
    let (config, errors, warnings) = match Config::from_file_text(text, path) {
        Ok(config) => {
            let warnings = config.lints();
            (Some(config), Vec::new(), warnings)
        }
        Err(e) => (None, e.problems, Vec::new()),
    };
    CheckReport {
        file: file.to_owned(),
        unreadable: None,
        errors,
        warnings,
        config,
    }
}

/// `n thing` or `n things`.
fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("{n} {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

fn problem_line(f: &mut fmt::Formatter<'_>, file: &str, kind: &str, p: &Problem) -> fmt::Result {
    match p.line {
        Some(line) => writeln!(f, "{file}:{line}: {kind}: {}: {}", p.field, p.message),
        None => writeln!(f, "{file}: {kind}: {}: {}", p.field, p.message),
    }
}

/// The report: one line per problem, `FILE:LINE: error: FIELD: MESSAGE` or
/// `FILE:LINE: warning: FIELD: MESSAGE` (without `LINE:` when it is not
/// known), then a summary line. Every line ends with a newline.
impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = &self.file;
        if let Some(why) = &self.unreadable {
            writeln!(f, "{file}: error: {why}")?;
            return writeln!(f, "{file}: 1 error");
        }
        for p in &self.errors {
            problem_line(f, file, "error", p)?;
        }
        for p in &self.warnings {
            problem_line(f, file, "warning", p)?;
        }
        if !self.errors.is_empty() {
            return writeln!(
                f,
                "{file}: {}; policy warnings are checked once the errors are fixed",
                count(self.errors.len(), "error")
            );
        }
        let shape = match &self.config {
            Some(c) => format!(
                " ({}, {}, {})",
                count(c.services.len(), "service"),
                count(c.routes.len(), "route"),
                count(c.listeners.len(), "listener")
            ),
            None => String::new(),
        };
        if self.warnings.is_empty() {
            writeln!(f, "{file}: valid{shape}")
        } else {
            writeln!(
                f,
                "{file}: valid, {}{shape}",
                count(self.warnings.len(), "warning")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_address_open_to_all_is_a_warning_naming_the_field() {
        let text = "[admin]\naddress = \"0.0.0.0:9990\"\n\
                    [[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n\
                    [[routes]]\nservice = \"app\"\n";
        let report = check_str("proxy.toml", text);
        assert_eq!(report.exit_code(), 0, "{report}");
        let text = report.to_string();
        assert!(
            text.starts_with(
                "proxy.toml:2: warning: admin.address: 0.0.0.0 is not a loopback address: anyone who can reach it"
            ),
            "{text}"
        );
    }

    #[test]
    fn examples_check_clean() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for name in ["palisade.toml", "minimal.toml"] {
            let report = check_file(&dir.join(name));
            assert!(!report.failed(), "{report}");
            assert_eq!(report.exit_code(), 0);
            assert!(report.warnings.is_empty(), "{report}");
            let text = report.to_string();
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(text.contains(": valid ("), "{text}");
        }
        let report = check_file(&dir.join("palisade.toml"));
        assert!(
            report
                .to_string()
                .ends_with("palisade.toml: valid (2 services, 5 routes, 1 listener)\n"),
            "{report}"
        );
    }

    #[test]
    fn errors_fail_with_file_line_field_message() {
        let report = check_str(
            "bad.toml",
            "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:8080\", \"no-port\"]\n\
             retry = { max_attempts = 0 }\n\n[[routes]]\nservice = \"ap\"\n",
        );
        assert!(report.failed());
        assert_eq!(report.exit_code(), 1);
        assert!(report.config.is_none());
        assert_eq!(
            report.to_string(),
            "bad.toml:3: error: services[0].endpoints[1]: endpoint \"no-port\": expected host:port\n\
             bad.toml:4: error: services[0].retry.max_attempts: must be at least 1 (1 means no retries)\n\
             bad.toml:7: error: routes[0].service: no service named \"ap\" (services: app)\n\
             bad.toml: 3 errors; policy warnings are checked once the errors are fixed\n"
        );
    }

    #[test]
    fn problems_without_a_line() {
        let report = check_str(
            "x.toml",
            "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n",
        );
        assert_eq!(
            report.to_string().lines().next().unwrap(),
            "x.toml: error: routes: at least one route is required; a `[[routes]]` table with only `service = \"NAME\"` sends every request to that service"
        );
        let report = check_str("empty.toml", "");
        assert!(report.failed());
        assert!(
            report
                .to_string()
                .starts_with("empty.toml: error: services: missing field `services`\n"),
            "{report}"
        );
    }

    #[test]
    fn syntax_errors_are_reported_with_lines() {
        let report = check_str("s.toml", "[[services]]\nname = \"app\"\n[server\n");
        assert!(report.failed());
        let text = report.to_string();
        assert!(
            text.starts_with("s.toml:3: error: server: unclosed table, expected `]`\n"),
            "{text}"
        );
        let report = check_str("d.toml", "[server]\ngrace_period = \"10 parsecs\"\n");
        let text = report.to_string();
        assert!(
            text.contains("d.toml:2: error: server.grace_period: invalid duration \"10 parsecs\": unknown time unit \"parsecs\""),
            "{text}"
        );
    }

    #[test]
    fn warnings_alone_pass() {
        let report = check_str(
            "w.toml",
            "[[services]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n\
             retry = { per_try_timeout = \"10s\" }\n\
             [[services]]\nname = \"idle\"\nendpoints = [\"127.0.0.1:2\"]\n\
             [[routes]]\nservice = \"app\"\n",
        );
        assert!(!report.failed());
        assert_eq!(report.exit_code(), 0);
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("w.toml:4: warning: services[0].retry.per_try_timeout: per_try_timeout × max_attempts (3 × 10s = 30s) exceeds deadline.timeout (15s)"),
            "{text}"
        );
        assert_eq!(
            lines[1],
            "w.toml:6: warning: services[1].name: no reachable route sends traffic to service \"idle\""
        );
        assert_eq!(
            lines[2],
            "w.toml: valid, 2 warnings (2 services, 1 route, 1 listener)"
        );
    }

    #[test]
    fn unreadable_files_name_the_path() {
        let missing = Path::new("/nonexistent/palisade/proxy.toml");
        let report = check_file(missing);
        assert!(report.failed());
        assert_eq!(report.exit_code(), 1);
        let text = report.to_string();
        assert!(
            text.starts_with(
                "/nonexistent/palisade/proxy.toml: error: cannot read the config file: "
            ),
            "{text}"
        );
        assert!(
            text.ends_with("/nonexistent/palisade/proxy.toml: 1 error\n"),
            "{text}"
        );

        let dir = std::env::temp_dir().join(format!("palisade-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = check_file(&dir);
        assert!(report.failed(), "a directory is not a file: {report}");
        let binary = dir.join("binary.toml");
        std::fs::write(&binary, b"[server]\n\xff\xfe = 1\n").unwrap();
        let report = check_file(&binary);
        assert!(report.failed());
        assert!(
            report
                .to_string()
                .contains("not UTF-8 text (invalid byte at line 2, byte offset 9)"),
            "{report}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn endpoints_files_are_looked_for_next_to_the_config() {
        let dir = std::env::temp_dir().join(format!("palisade-check-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("proxy.toml");
        std::fs::write(
            &config,
            "[[services]]\nname = \"app\"\ndiscovery = { file = \"users.json\" }\n\n[[routes]]\nservice = \"app\"\n",
        )
        .unwrap();
        let report = check_file(&config);
        assert!(!report.failed(), "{report}");
        let users = std::path::absolute(dir.join("users.json")).unwrap();
        assert_eq!(
            report.to_string(),
            format!(
                "{}:3: warning: services[0].discovery.file: {} does not exist (yet): the service has no endpoints until it appears\n\
                 {}: valid, 1 warning (1 service, 1 route, 1 listener)\n",
                config.display(),
                users.display(),
                config.display()
            )
        );
        std::fs::write(&users, r#"["127.0.0.1:8080"]"#).unwrap();
        let report = check_file(&config);
        assert!(report.warnings.is_empty(), "{report}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The example at the end of docs/config.md is real output.
    #[test]
    fn docs_example_is_accurate() {
        let doc = include_str!("../../docs/config.md");
        let example = &doc[doc.rfind("$ cat proxy.toml\n").expect("example in docs")..];
        let (file, rest) = example["$ cat proxy.toml\n".len()..]
            .split_once("\n$ palisade check proxy.toml\n")
            .unwrap();
        let expected = &rest[..rest.find("```").unwrap()];
        let report = check_str("proxy.toml", file);
        assert_eq!(report.to_string(), expected);
        assert_eq!(report.exit_code(), 0);
    }
}
