//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/`) through the same checks as
//! the fuzz targets, so `cargo test` on stable guards every input fuzzing found interesting.

use std::path::Path;

use lockmgr_rdma::fuzzing::{self, Outcome, PropertyViolation};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    lockmgr_transport::fuzzing::read_corpus(dir, target)
        .unwrap_or_else(|e| panic!("{}/fuzz/corpus/{target}: {e}", dir.display()))
}

/// Seeds (named `prefix*`) must round-trip and be checked in unchanged; everything else, with
/// its truncations and bit flips, must only never violate the property.
fn replay(
    target: &str,
    prefix: &str,
    seeds: &[(String, Vec<u8>)],
    check: fn(&[u8]) -> Result<Outcome, PropertyViolation>,
) {
    let files = corpus(target);
    for (name, data) in seeds {
        let found = files.iter().find(|(n, _)| n == name).map(|(_, d)| d);
        assert_eq!(
            found,
            Some(data),
            "seed {name} missing or stale: run `cargo run -p lockmgr-rdma --example gen_rdma_fuzz_corpus`"
        );
    }
    for (name, data) in &files {
        let outcome = check(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with(prefix) {
            assert_eq!(outcome, Outcome::RoundTripped, "{name}");
        }
        for cut in 0..data.len().min(64) {
            check(&data[..cut]).unwrap_or_else(|e| panic!("{name}[..{cut}]: {e}"));
        }
        let mut flipped = data.clone();
        for i in 0..flipped.len().min(64) {
            flipped[i] ^= 0x81;
            check(&flipped).unwrap_or_else(|e| panic!("{name} flipped: {e}"));
        }
    }
}

#[test]
fn rdma_header_corpus() {
    replay(
        "rdma_header",
        "hdr-",
        &fuzzing::header_samples(),
        fuzzing::check_header,
    );
}

#[test]
fn rdma_hello_corpus() {
    replay(
        "rdma_hello",
        "hello-",
        &fuzzing::hello_samples(),
        fuzzing::check_hello,
    );
}

#[test]
fn rdma_hello_checks_reject_short_and_bad_input() {
    let (_, roce) = &fuzzing::hello_samples()[0];
    assert_eq!(
        fuzzing::check_hello(&roce[..47]).unwrap(),
        Outcome::Rejected
    );
    let mut reserved = roce.clone();
    reserved[44] = 1;
    assert_eq!(fuzzing::check_hello(&reserved).unwrap(), Outcome::Rejected);
    // Trailing bytes after the fixed-size hello are not part of it.
    let mut trailing = roce.clone();
    trailing.push(9);
    assert_eq!(
        fuzzing::check_hello(&trailing).unwrap(),
        Outcome::RoundTripped
    );
}
