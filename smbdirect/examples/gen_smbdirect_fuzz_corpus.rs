//! Writes the fuzz seeds of `smbdirect::fuzzing::samples` into `fuzz/corpus/<target>/`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, bytes) in smbdirect::fuzzing::samples() {
        let target = if name.starts_with("dec-") {
            "smbdirect_decode"
        } else {
            "smbdirect_conn"
        };
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&name), bytes)?;
    }
    Ok(())
}
