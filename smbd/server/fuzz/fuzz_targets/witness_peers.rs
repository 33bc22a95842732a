#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check_peers.rs"]
mod check_peers;

// A datagram on the witness heartbeat port (see check_peers.rs).
fuzz_target!(|data: &[u8]| {
    check_peers::check_peers(data);
});
