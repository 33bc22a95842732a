#![no_main]

use libfuzzer_sys::fuzz_target;

// One received SEND (header + payload): accepted messages must be consistent and re-encode
// byte for byte. The property lives in the library so `cargo test` replays the corpus.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = lockmgr_rdma::fuzzing::check_header(data) {
        panic!("{e}");
    }
});
