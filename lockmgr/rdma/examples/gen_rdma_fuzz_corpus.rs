//! Writes the fuzzing seed corpora of the `rdma_header` and `rdma_hello` targets into
//! `fuzz/corpus/<target>/` (real encoded inputs; libFuzzer's own finds sit beside them).
//!
//! `cargo run -p lockmgr-rdma --example gen_rdma_fuzz_corpus`

use std::path::Path;

use lockmgr_rdma::fuzzing;

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
    write("rdma_header", &fuzzing::header_samples())?;
    write("rdma_hello", &fuzzing::hello_samples())?;
    Ok(())
}
