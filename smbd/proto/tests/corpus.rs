//! Runs the checked-in fuzz seed corpus (smbd/proto/fuzz/corpus/decode) through the decoders:
//! real client messages must decode, and truncations/bit flips of them must not panic.

use std::path::Path;

#[test]
fn seed_corpus_decodes_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut files = 0;
    let mut decoded = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        files += 1;
        decoded += smb_proto::fuzz_decode(&data);
        payload_frame_round_trips(&data);
        for cut in (0..data.len()).step_by(7) {
            smb_proto::fuzz_decode(&data[..cut]);
            payload_frame_round_trips(&data[..cut]);
        }
        let mut flipped = data.clone();
        for i in (0..flipped.len()).step_by(5) {
            flipped[i] ^= 0xA5;
            smb_proto::fuzz_decode(&flipped);
            payload_frame_round_trips(&flipped);
        }
    }
    assert!(files >= 10, "corpus too small: {files}");
    assert!(
        decoded >= files / 2,
        "most seeds are real messages: {decoded}/{files}"
    );
}

/// The decode fuzz target's second property.
fn payload_frame_round_trips(data: &[u8]) {
    if let Err(property) = smb_proto::payload_frame::check_round_trip(data) {
        panic!("payload frame property violated: {property}");
    }
    if let Err(property) = smb_proto::area_frame::check_round_trip(data) {
        panic!("area frame property violated: {property}");
    }
}

/// Replays smbd/proto/fuzz/corpus/security_descriptor with the fuzz target's round-trip
/// property, also over truncations and bit flips of every seed.
#[test]
fn security_descriptor_corpus_round_trips() {
    use smb_proto::security_descriptor::check_round_trip;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/security_descriptor");
    let mut files = 0;
    let mut decoded = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        files += 1;
        decoded += usize::from(check_round_trip(&data).unwrap());
        for cut in 0..data.len() {
            check_round_trip(&data[..cut]).unwrap();
        }
        for i in 0..data.len() {
            let mut flipped = data.clone();
            flipped[i] ^= 0xA5;
            check_round_trip(&flipped).unwrap();
        }
    }
    assert!(files >= 8, "corpus too small: {files}");
    assert!(
        decoded >= files / 2,
        "most seeds are real descriptors: {decoded}/{files}"
    );
}

/// Replays smbd/proto/fuzz/corpus/dfs_referral with the fuzz target's round-trip property,
/// also over truncations and bit flips of every seed.
#[test]
fn dfs_referral_corpus_round_trips() {
    use smb_proto::dfs::check_round_trip;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dfs_referral");
    let mut files = 0;
    let mut decoded = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        files += 1;
        decoded += usize::from(check_round_trip(&data).unwrap());
        for cut in 0..data.len() {
            check_round_trip(&data[..cut]).unwrap();
        }
        for i in 0..data.len() {
            let mut flipped = data.clone();
            flipped[i] ^= 0xA5;
            check_round_trip(&flipped).unwrap();
        }
    }
    assert!(files >= 10, "corpus too small: {files}");
    assert_eq!(decoded, files, "every seed is a real request or response");
}
