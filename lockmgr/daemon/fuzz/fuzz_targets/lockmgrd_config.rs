#![no_main]

use libfuzzer_sys::fuzz_target;

// lockmgrd's TOML config: arbitrary text must never panic, and accepted configs must be
// self-consistent. The property lives in the library so `cargo test` replays the corpus.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = lockmgrd::fuzzing::check_config(data) {
        panic!("{e}");
    }
});
