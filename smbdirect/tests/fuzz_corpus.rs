//! Replays the checked-in fuzz corpora (`fuzz/corpus/smbdirect_{decode,conn}/`) through the
//! same checks as the fuzz targets, with every truncation of every input.

use std::path::Path;

use smbdirect::fuzzing;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        files.push((name, std::fs::read(&p).expect("read")));
    }
    files
}

#[test]
fn seeds_are_current() {
    let mut all = corpus("smbdirect_decode");
    all.extend(corpus("smbdirect_conn"));
    for (name, bytes) in fuzzing::samples() {
        let found = all.iter().find(|(n, _)| *n == name).map(|(_, d)| d);
        assert_eq!(
            found,
            Some(&bytes),
            "seed {name} missing or stale: run `cargo run -p smbdirect --example gen_smbdirect_fuzz_corpus`"
        );
    }
}

#[test]
fn decode_corpus() {
    for (name, data) in corpus("smbdirect_decode") {
        let accepted = fuzzing::check_decode(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("dec-") {
            assert!(accepted, "{name} refused");
        }
        for cut in 0..data.len() {
            fuzzing::check_decode(&data[..cut]).unwrap_or_else(|e| panic!("{name}[..{cut}]: {e}"));
        }
    }
}

#[test]
fn conn_corpus() {
    for (name, data) in corpus("smbdirect_conn") {
        fuzzing::check_connection(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        for cut in 0..data.len() {
            fuzzing::check_connection(&data[..cut])
                .unwrap_or_else(|e| panic!("{name}[..{cut}]: {e}"));
        }
    }
}
