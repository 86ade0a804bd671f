//! `Retry-After`: never panics; the classifier's cap always holds.
#![no_main]

use std::time::{Duration, SystemTime};

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use palisade::classify::{Classify, HttpClassify, parse_retry_after};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let _ = parse_retry_after(&value, SystemTime::now());
    let rsp = http::Response::builder()
        .status(503)
        .header(http::header::RETRY_AFTER, value)
        .body(())
        .unwrap();
    let class = HttpClassify::default().classify_response(&rsp);
    if let Some(after) = class.retry_after() {
        assert!(after <= Duration::from_secs(60));
    }
});
