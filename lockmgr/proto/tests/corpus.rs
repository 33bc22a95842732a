//! Runs the checked-in fuzz corpus through the same check as the fuzz target, so CI (stable,
//! no libFuzzer) guards every input fuzzing ever found interesting.

use lockmgr_proto::fuzzing::{check_roundtrip, Outcome};

#[test]
fn fuzz_corpus_passes_roundtrip_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_frame");
    let mut files = 0;
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let outcome = check_roundtrip(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        files += 1;
        // Seeds written by examples/gen_corpus.rs (named, unlike libFuzzer's hash-named finds)
        // are valid frames: if one stops round-tripping, the format changed and the corpus
        // must be regenerated.
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if SEED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            assert_eq!(outcome, Outcome::RoundTripped, "seed {name}");
            seeds += 1;
        }
    }
    let expected_seeds = lockmgr_proto::samples::all_messages().len() + 4;
    assert!(
        seeds >= expected_seeds,
        "{} has {seeds} seeds (of {files} files), expected {expected_seeds}: run gen_corpus",
        dir.display()
    );
}

const SEED_PREFIXES: &[&str] = &["msg-", "batch-", "empty-", "status-", "optional-"];
