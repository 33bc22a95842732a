//! Writes the seed corpus of the `lockmgrd_config` fuzz target into
//! `fuzz/corpus/lockmgrd_config/` (real configurations; libFuzzer's own finds sit beside them).
//!
//! `cargo run -p lockmgrd --example gen_lockmgrd_fuzz_corpus`

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/lockmgrd_config");
    std::fs::create_dir_all(&dir)?;
    let seeds = lockmgrd::fuzzing::samples();
    for (name, text) in &seeds {
        std::fs::write(dir.join(name), text)?;
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
    Ok(())
}
