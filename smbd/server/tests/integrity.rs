//! Message integrity (MS-SMB2 3.3.5.2): crafted requests from the Python smbprotocol client
//! (smbd/tests/integrity_client.py) that try to change a file or act on a session through a
//! path that must be refused. Each case leaves the file `<case>.txt` with b"good" when the
//! server refused; the script checks the protocol outcome, this test also the disk.
//! Skipped without a Python that has smbprotocol (see python_smbprotocol.rs).

mod common;
use common::*;
use std::process::Command;

fn probe(case: &str, opts: Options) {
    let Some(py) = python() else {
        missing("no python with smbprotocol (set SMBD_PYTHON)");
        return;
    };
    let srv = TestServer::start(opts);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/integrity_client.py");
    let out = Command::new(py)
        .arg(script)
        .args([
            "127.0.0.1",
            &srv.port.to_string(),
            "data",
            USER,
            PASS,
            USER2,
            PASS2,
            case,
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains(&format!("PASS {case}")),
        "{text}\n--- smbd log ---\n{}",
        srv.log()
    );
    let file = srv.share.join(format!("{case}.txt"));
    let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(
        String::from_utf8_lossy(&data),
        "good",
        "{case}: file changed on disk\n{text}"
    );
}

#[test]
fn replayed_signed_write_disconnects() {
    probe("replay_write", Options::default());
}

#[test]
fn out_of_window_message_id_disconnects() {
    probe("out_of_window", Options::default());
}

#[test]
fn sealed_request_for_another_session_disconnects() {
    probe("sealed_other_session", Options::default());
}

#[test]
fn file_id_from_another_tree_is_closed() {
    probe("fileid_other_tree", Options::default());
}

#[test]
fn file_id_from_another_session_is_closed() {
    probe("fileid_other_session", Options::default());
}

#[test]
fn reauthentication_as_another_user_refused() {
    probe("reauth_other_user", Options::default());
}

#[test]
fn unsigned_reauthentication_refused() {
    probe("reauth_unsigned", Options::default());
}

#[test]
fn unsigned_cancel_ignored() {
    probe("cancel_unsigned", Options::default());
}

#[test]
fn related_request_with_bad_signature_refused() {
    probe("compound_bad_signature", Options::default());
}
