#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../conn_harness.rs"]
mod conn_harness;

// smbd's connection state machine fed with a sequence of messages (see conn_harness.rs): no
// panic, well-formed output frames, no MessageId answered twice.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = conn_harness::run(data) {
        panic!("{e}");
    }
});
