//! Replays the committed `user_db` fuzz corpus (`fuzz/corpus/user_db/`) through the same check
//! as the fuzz target (`smb_auth::fuzzing::user_db`), on stable.

use std::path::Path;

#[test]
fn user_db_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/user_db");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 6, "seed corpus missing");
    let mut users = 0;
    for (name, data) in &files {
        users += smb_auth::fuzzing::user_db(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Truncations end the file mid-name, mid-hash and between "\r" and "\n".
        for cut in 0..data.len() {
            smb_auth::fuzzing::user_db(&data[..cut])
                .unwrap_or_else(|e| panic!("{name}[..{cut}]: {e}"));
        }
    }
    // seed-basic (2) + seed-crlf-utf8 (2) + seed-groups (1); the others are refused.
    assert_eq!(users, 5);
}
