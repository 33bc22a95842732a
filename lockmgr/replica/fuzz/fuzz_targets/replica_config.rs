#![no_main]

use libfuzzer_sys::fuzz_target;

// The replica-set record stored in etcd: never panics, accepted records are canonical.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = lockmgr_replica::fuzzing::check_config(data) {
        panic!("{e}");
    }
});
