#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check_config.rs"]
mod check_config;

// smbd's TOML config: arbitrary text must never panic; accepted configs are consistent.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_config::check_config(data) {
        panic!("{e}");
    }
});
