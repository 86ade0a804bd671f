//! Random and mutated texts never panic the parser, validation or lints.

use proptest::prelude::*;

use super::*;

/// A mutation of a text: delete, insert, duplicate or swap.
fn mutate(text: &str, ops: &[(u8, usize, usize, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(op, a, b, c) in ops {
        let n = chars.len().max(1);
        let (a, b) = (a % n, b % n);
        let (lo, hi) = (a.min(b), a.max(b).min(a.min(b) + 40));
        match op % 5 {
            0 if !chars.is_empty() => {
                chars.drain(lo..hi.min(chars.len()));
            }
            1 => chars.insert(a.min(chars.len()), c),
            2 if !chars.is_empty() => {
                let piece: Vec<char> = chars[lo..hi.min(chars.len())].to_vec();
                let at = b.min(chars.len());
                chars.splice(at..at, piece);
            }
            3 if !chars.is_empty() => {
                let last = chars.len() - 1;
                chars.swap(a.min(last), b.min(last));
            }
            _ => {
                let at = a.min(chars.len());
                chars.splice(at..at, "\n[[routes]]\nservice = \"web\"\n".chars());
            }
        }
    }
    chars.into_iter().collect()
}

fn exercise(text: &str) {
    match Config::from_toml(text) {
        Ok(config) => {
            let _ = config.lints();
            let _ = toml::to_string(&config);
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            let _ = e.to_string();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_strings_never_panic(text in "(\\PC|[\\[\\]{}=\"'.,#\n ]){0,300}") {
        exercise(&text);
    }

    #[test]
    fn mutated_examples_never_panic(
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<char>()), 1..6)
    ) {
        exercise(&mutate(PALISADE, &ops));
    }

    #[test]
    fn mutated_values_never_panic(
        line in any::<usize>(),
        value in prop_oneof![
            Just("\"\"".to_owned()),
            Just("-1".to_owned()),
            Just("nan".to_owned()),
            Just("inf".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("9223372036854775807".to_owned()),
            Just("\"99999999999999999999h\"".to_owned()),
            Just("\"584942417355y\"".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            "\"[a-z0-9 :.*\\[\\]/-]{0,20}\"",
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
        ],
    ) {
        // Replace the value of one `key = value` line.
        let lines: Vec<&str> = PALISADE.lines().collect();
        let candidates: Vec<usize> = (0..lines.len())
            .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains(" = "))
            .collect();
        let target = candidates[line % candidates.len()];
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if i == target {
                    let key = l.split(" = ").next().unwrap();
                    format!("{key} = {value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        exercise(&text);
    }
}
