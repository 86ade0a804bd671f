//! Discovery files: any bytes, read as JSON and as TOML, either parse into
//! endpoints within the limits or fail with an error that names a place.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::discover::file::{DEFAULT_MAX_ENDPOINTS, Format, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for format in [Format::Json, Format::Toml] {
        match parse(&text, format) {
            Ok(endpoints) => assert!(endpoints.len() <= DEFAULT_MAX_ENDPOINTS),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
