//! Writes the fuzzing seed corpus: one frame per sample message, a batch of all of them, and a
//! few near-misses, into `fuzz/corpus/decode_frame/` (or the directory given as argument).
//!
//! `cargo run -p lockmgr-proto --example gen_corpus`

use std::path::PathBuf;

use lockmgr_engine::SessionId;
use lockmgr_proto::{samples, split_status_text, FrameWriter, Message, MSG_FLAG_OPTIONAL};

fn frame(msgs: &[Message]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, SessionId(0x5e55_1000));
    for m in msgs {
        if let Err(e) = w.push(m) {
            eprintln!("skipping {m:?}: {e}");
        }
    }
    w.finish();
    buf
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_frame")
        });
    std::fs::create_dir_all(&dir)?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, m) in samples::all_messages().iter().enumerate() {
        files.push((
            format!("msg-{i:02}-{:02x}", m.tag()),
            frame(std::slice::from_ref(m)),
        ));
    }
    files.push(("batch-all".into(), frame(&samples::all_messages())));
    files.push(("empty-frame".into(), frame(&[])));
    // A frame of replica-set epoch 7 (header bytes 20..24).
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, SessionId(0x5e55_1000));
    w.set_epoch(7);
    if let Err(e) = w.push(&Message::Heartbeat { seq: 9 }) {
        eprintln!("skipping the epoch frame: {e}");
    }
    w.finish();
    files.push(("epoch-frame".into(), buf));
    let long: String = "lockmgr status € ".repeat(600);
    let chunk = split_status_text(&long)
        .next()
        .into_iter()
        .collect::<Vec<_>>();
    files.push(("status-text-full".into(), frame(&chunk)));
    // An unknown optional message before a heartbeat: exercises the skip path.
    let mut skip = frame(&[Message::Heartbeat { seq: 3 }]);
    skip[6] = 2; // message count
    let extra = [0x7f, MSG_FLAG_OPTIONAL, 2, 0, 0xaa, 0xbb];
    skip.extend_from_slice(&extra);
    let len = skip.len() as u32;
    skip[16..20].copy_from_slice(&len.to_le_bytes());
    files.push(("optional-unknown".into(), skip));
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("wrote {} files to {}", files.len(), dir.display());
    Ok(())
}
