//! The /metrics endpoint's HTTP request parser on arbitrary bytes (see
//! `clustersmb_metrics::check_request` for the property checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = clustersmb_metrics::check_request(data) {
        panic!("{e}");
    }
});
