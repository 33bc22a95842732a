#![no_main]

use libfuzzer_sys::fuzz_target;

// A sequence of length-prefixed Ethernet frames into one reassembler: completed datagrams must
// lie inside the buffer and survive a fragment/reassemble round trip.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = lockmgr_transport::fuzzing::check_eth_frames(data) {
        panic!("{e}");
    }
});
