//! Endpoint addresses as discovery sources and configs give them: a parsed
//! address displays back to something that parses to the same address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::discover::{Address, Endpoint};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(address) = text.parse::<Address>() {
        let again: Address = address.to_string().parse().expect("display round-trips");
        assert_eq!(address, again);
    }
    let _ = Endpoint::parse(&text).map(|e| e.with_weight(f64::from(data.len() as u32)));
});
