#![no_main]

use libfuzzer_sys::fuzz_target;

// A standby snapshot from the primary: decoding never panics, accepted snapshots round-trip.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = lockmgr_replica::fuzzing::check_snapshot(data) {
        panic!("{e}");
    }
});
