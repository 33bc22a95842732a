#![no_main]

use libfuzzer_sys::fuzz_target;

// The reliability-layer header parse behind UDP, AF_PACKET and AF_XDP: accepted datagrams must
// re-encode byte for byte. The property lives in the library so `cargo test` replays the corpus.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = lockmgr_transport::fuzzing::check_reliable_datagram(data) {
        panic!("{e}");
    }
});
