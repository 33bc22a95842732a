#![no_main]

use libfuzzer_sys::fuzz_target;

// Decodes arbitrary bytes; every frame whose messages all decode must re-encode to the same
// bytes and messages. The property lives in the library so `cargo test` checks the corpus too.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = lockmgr_proto::fuzzing::check_roundtrip(data) {
        panic!("{e}");
    }
});
