//! Deadline headers: `palisade-deadline-ms`, `grpc-timeout` and
//! `x-envoy-expected-rq-timeout-ms` never panic, and what parses is bounded.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palisade::deadline::header;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    if let Ok(d) = header::parse_grpc_timeout(&value) {
        // Whatever parsed formats back without panicking.
        let _ = header::format_grpc_timeout(d);
    }
    let _ = header::parse_millis(header::DEADLINE_HEADER, &value);
    let mut headers = HeaderMap::new();
    headers.insert(header::GRPC_TIMEOUT, value.clone());
    headers.insert(header::DEADLINE_HEADER, value.clone());
    headers.insert(header::ENVOY_TIMEOUT, value);
    let _ = header::incoming_timeout(&headers);
});
