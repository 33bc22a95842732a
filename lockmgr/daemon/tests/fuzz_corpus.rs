//! Replays the checked-in fuzz corpus (`fuzz/corpus/lockmgrd_config/`) through the same check
//! as the `lockmgrd_config` fuzz target, so `cargo test` on stable guards every input fuzzing
//! found interesting.

use std::path::Path;

use lockmgrd::fuzzing::{self, Outcome};

#[test]
fn config_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/lockmgrd_config");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        files.push((name, std::fs::read(&p).unwrap()));
    }
    for (name, text) in fuzzing::samples() {
        let found = files.iter().find(|(n, _)| *n == name).map(|(_, d)| d);
        assert_eq!(
            found,
            Some(&text.into_bytes()),
            "seed {name} missing or stale: run `cargo run -p lockmgrd --example gen_lockmgrd_fuzz_corpus`"
        );
    }
    for (name, data) in &files {
        let outcome = fuzzing::check_config(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("cfg-") {
            assert_eq!(outcome, Outcome::Accepted, "{name}");
        }
        // Truncations cut keys, strings and tables in every possible place.
        for cut in 0..data.len() {
            fuzzing::check_config(&data[..cut]).unwrap_or_else(|e| panic!("{name}[..{cut}]: {e}"));
        }
    }
}

#[test]
fn key_hex_must_be_plain_digits() {
    for good in [
        "000102030405060708090a0b0c0d0e0f",
        " 00112233445566778899AABBCCDDEEFF\n",
    ] {
        fuzzing::check_key_hex(good).unwrap();
    }
    // `u8::from_str_radix` accepts a leading '+', which made "+0+1..." a valid key.
    fuzzing::check_key_hex("+0+1+2+3+4+5+6+7+8+9+a+b+c+d+e+f").unwrap();
}
