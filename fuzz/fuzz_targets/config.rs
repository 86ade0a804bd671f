//! The proxy's config: any text either parses into a config whose lints and
//! serialization work, or is an error with at least one located problem.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::from_toml(&text) {
        Ok(config) => {
            let _ = config.lints();
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error names at least one problem");
            let _ = e.to_string();
        }
    }
});
