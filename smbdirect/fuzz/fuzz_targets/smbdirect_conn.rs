#![no_main]

use libfuzzer_sys::fuzz_target;

// A connection driven by a script of received messages, posted receives, time and sends:
// never panics, never grants credits for receives not posted, never overruns the peer.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = smbdirect::fuzzing::check_connection(data) {
        panic!("{e}");
    }
});
