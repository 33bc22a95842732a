//! Runs the committed fuzz corpus (`fuzz/corpus/rpc_pipe/`) through the fuzz entry point on
//! stable, so every saved input stays a regression test.

use std::path::Path;

#[test]
fn rpc_pipe_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rpc_pipe");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 8, "seed corpus missing");
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let pdus = smb_rpc::fuzzing::pipe_bytes(&data);
        // Every seed is a conversation the server answers.
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            assert!(pdus >= 1, "{} got no answer", path.display());
        }
        // Truncations exercise every length check on the way.
        for cut in (0..data.len()).step_by(7) {
            smb_rpc::fuzzing::pipe_bytes(&data[..cut]);
        }
    }
}

#[test]
fn rpc_witness_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rpc_witness");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "seed corpus missing");
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let pdus = smb_rpc::fuzzing::witness_bytes(&data);
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            // The bind_ack and at least one answer.
            assert!(pdus >= 2, "{} got {pdus} answers", path.display());
        }
        for cut in (0..data.len()).step_by(7) {
            smb_rpc::fuzzing::witness_bytes(&data[..cut]);
        }
    }
}
