//! Writes the fuzzing seed corpora of the `reliable_datagram`, `eth_frames` and `shm_hello`
//! targets into `fuzz/corpus/<target>/` (real encoded inputs; libFuzzer's own finds sit beside
//! them).
//!
//! `cargo run -p lockmgr-transport --example gen_transport_fuzz_corpus`

use std::path::Path;

use lockmgr_transport::fuzzing;

fn write(target: &str, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir)?;
    for (name, data) in files {
        std::fs::write(dir.join(name), data)?;
    }
    println!("{}: {} seeds", dir.display(), files.len());
    Ok(())
}

fn main() -> std::io::Result<()> {
    write("reliable_datagram", &fuzzing::reliable_samples())?;
    write("eth_frames", &fuzzing::eth_samples())?;
    write("shm_hello", &fuzzing::shm_hello_samples())?;
    Ok(())
}
