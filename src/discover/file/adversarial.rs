//! Adversarial input for the file format (issue 9): random bytes and
//! mutations of valid files never panic; every error names a place.

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
