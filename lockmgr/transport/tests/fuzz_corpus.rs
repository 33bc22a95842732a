//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/`) through the same checks as
//! the fuzz targets, so `cargo test` on stable guards every input fuzzing found interesting.

use std::path::Path;

use lockmgr_transport::fuzzing::{self, Outcome};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    lockmgr_transport::fuzzing::read_corpus(dir, target)
        .unwrap_or_else(|e| panic!("{}/fuzz/corpus/{target}: {e}", dir.display()))
}

/// Every generated seed is checked in unchanged; a format change must regenerate them
/// (`cargo run -p lockmgr-transport --example gen_transport_fuzz_corpus`).
fn assert_seeds_current(files: &[(String, Vec<u8>)], seeds: &[(String, Vec<u8>)]) {
    for (name, data) in seeds {
        let found = files.iter().find(|(n, _)| n == name);
        assert_eq!(
            found.map(|(_, d)| d),
            Some(data),
            "seed {name} missing or stale: run `cargo run -p lockmgr-transport --example gen_transport_fuzz_corpus`"
        );
    }
}

#[test]
fn reliable_datagram_corpus() {
    let files = corpus("reliable_datagram");
    let seeds = fuzzing::reliable_samples();
    assert_seeds_current(&files, &seeds);
    for (name, data) in &files {
        let outcome =
            fuzzing::check_reliable_datagram(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("dgram-") {
            assert_eq!(outcome, Outcome::RoundTripped, "{name}");
        }
        for cut in 0..data.len().min(64) {
            fuzzing::check_reliable_datagram(&data[..cut]).unwrap();
        }
        let mut flipped = data.clone();
        for i in 0..flipped.len().min(64) {
            flipped[i] ^= 0x81;
            fuzzing::check_reliable_datagram(&flipped).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn reliable_datagram_rejects_what_it_must() {
    let seeds = fuzzing::reliable_samples();
    let (_, syn) = seeds.iter().find(|(n, _)| n == "dgram-syn").unwrap();
    let mut with_payload = syn.clone();
    with_payload.push(0);
    assert_eq!(
        fuzzing::check_reliable_datagram(&with_payload).unwrap(),
        Outcome::Rejected,
        "handshake bodies have one size"
    );
    let mut bad_version = syn.clone();
    bad_version[2] = 1;
    assert_eq!(
        fuzzing::check_reliable_datagram(&bad_version).unwrap(),
        Outcome::Rejected
    );
    let (_, max) = seeds.iter().find(|(n, _)| n == "dgram-data-max").unwrap();
    let mut too_long = max.clone();
    too_long.push(0);
    assert_eq!(
        fuzzing::check_reliable_datagram(&too_long).unwrap(),
        Outcome::Rejected
    );
}

#[test]
fn eth_frames_corpus() {
    let files = corpus("eth_frames");
    let seeds = fuzzing::eth_samples();
    assert_seeds_current(&files, &seeds);
    let mut completed = 0;
    for (name, data) in &files {
        let n = fuzzing::check_eth_frames(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("eth-") {
            completed += n;
        }
        for cut in (0..data.len()).step_by(97) {
            fuzzing::check_eth_frames(&data[..cut]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let mut flipped = data.clone();
        for i in (0..flipped.len()).step_by(13).take(200) {
            flipped[i] ^= 0x5a;
            fuzzing::check_eth_frames(&flipped).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    // 3 small + in order + reversed with a duplicate + the datagram after a loss + padded.
    assert_eq!(completed, 7, "every seed datagram reassembles exactly once");
}

#[test]
fn shm_hello_corpus() {
    let files = corpus("shm_hello");
    let seeds = fuzzing::shm_hello_samples();
    assert_seeds_current(&files, &seeds);
    for (name, data) in &files {
        let outcome = fuzzing::check_shm_hello(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("hello-") {
            assert_eq!(outcome, Outcome::RoundTripped, "{name}");
        }
        for cut in 0..data.len() {
            assert_eq!(
                fuzzing::check_shm_hello(&data[..cut]).unwrap(),
                Outcome::Rejected
            );
        }
        let mut flipped = data.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x10;
            fuzzing::check_shm_hello(&flipped).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    // A ring size that is not a power of two, or a region length that disagrees, is refused.
    let mut odd = seeds[0].1.clone();
    odd[12] = 1;
    assert_eq!(fuzzing::check_shm_hello(&odd).unwrap(), Outcome::Rejected);
    let mut short_region = seeds[0].1.clone();
    short_region[16] ^= 0x40;
    assert_eq!(
        fuzzing::check_shm_hello(&short_region).unwrap(),
        Outcome::Rejected
    );
}
