//! Replays the checked-in fuzz corpus (`fuzz/corpus/smbd_config/`) through the same check as
//! the `smbd_config` fuzz target, so `cargo test` on stable guards every input fuzzing found
//! interesting.

use std::path::Path;

#[path = "../fuzz/check_config.rs"]
mod check_config;

#[test]
fn config_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("fuzz/corpus/smbd_config");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        files.push((name, std::fs::read(&p).unwrap()));
    }
    // The shipped example is a seed too, read from where it lives so it cannot go stale.
    files.push((
        "seed-example".into(),
        std::fs::read(root.join("../smbd.example.toml")).unwrap(),
    ));
    let mut accepted = 0;
    for (name, data) in &files {
        let ok = check_config::check_config(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("seed-") {
            assert!(ok, "seed {name} must be a valid config");
            accepted += 1;
        }
        for cut in 0..data.len() {
            check_config::check_config(&data[..cut])
                .unwrap_or_else(|e| panic!("{name}[..{cut}]: {e}"));
        }
    }
    assert!(accepted >= 4, "seed corpus missing: {accepted} seeds");
}
