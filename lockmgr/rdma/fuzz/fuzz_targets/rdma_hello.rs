#![no_main]

use libfuzzer_sys::fuzz_target;

// The queue-pair hello from the TCP side channel: accepted hellos must be in range and
// re-encode byte for byte.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = lockmgr_rdma::fuzzing::check_hello(data) {
        panic!("{e}");
    }
});
