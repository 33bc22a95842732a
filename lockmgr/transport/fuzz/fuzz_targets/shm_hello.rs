#![no_main]

use libfuzzer_sys::fuzz_target;

// The shm set-up hello: accepted hellos announce a valid ring and re-encode byte for byte.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = lockmgr_transport::fuzzing::check_shm_hello(data) {
        panic!("{e}");
    }
});
