//! Replays the checked-in fuzz corpora (`fuzz/corpus/replica_{config,snapshot}/`) through the
//! same checks as the fuzz targets, with every truncation of every input.

use std::path::Path;

use lockmgr_replica::fuzzing;

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
    let mut all = corpus("replica_config");
    all.extend(corpus("replica_snapshot"));
    for (name, bytes) in fuzzing::samples() {
        let found = all.iter().find(|(n, _)| *n == name).map(|(_, d)| d);
        assert_eq!(
            found,
            Some(&bytes),
            "seed {name} missing or stale: run `cargo run -p lockmgr-replica --example gen_replica_fuzz_corpus`"
        );
    }
}

#[test]
fn config_corpus() {
    for (name, data) in corpus("replica_config") {
        let accepted = fuzzing::check_config(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("cfg-") {
            assert!(accepted, "{name} refused");
        }
        for cut in 0..data.len() {
            fuzzing::check_config(&data[..cut]).unwrap_or_else(|e| panic!("{name}[..{cut}]: {e}"));
        }
    }
}

#[test]
fn snapshot_corpus() {
    for (name, data) in corpus("replica_snapshot") {
        let accepted = fuzzing::check_snapshot(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("snap-") {
            assert!(accepted, "{name} refused");
        }
        for cut in 0..data.len() {
            let r = fuzzing::check_snapshot(&data[..cut])
                .unwrap_or_else(|e| panic!("{name}[..{cut}]: {e}"));
            assert!(!r, "{name}[..{cut}]: a truncated snapshot was accepted");
        }
    }
}
