#![no_main]

use libfuzzer_sys::fuzz_target;

// Any bytes as every SMB Direct message and as buffer descriptors: decoding never panics,
// accepted messages round-trip.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = smbdirect::fuzzing::check_decode(data) {
        panic!("{e}");
    }
});
