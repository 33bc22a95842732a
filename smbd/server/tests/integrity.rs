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

#[path = "../fuzz/conn_harness.rs"]
mod conn_harness;

/// MS-SMB2 3.3.5.5.2: a SESSION_SETUP binding a second connection to a session must be
/// signed with the session's key: unsigned or wrongly signed it is refused, correctly signed
/// it goes on (MORE_PROCESSING_REQUIRED). Fails with the signature check of the binding path
/// off (channel.rs bind_session, binding_checks).
#[test]
fn binding_without_a_good_signature_refused() {
    probe("binding_signature", Options::default());
}

/// MS-SMB2 3.3.4.1.1: the final response of a request that went async (a blocking LOCK)
/// is signed with the session's key; the client verifies the MAC itself (smbprotocol alone
/// would accept an unsigned one). Fails with signing off in Conn::complete_async.
#[test]
fn async_final_response_is_signed() {
    probe("async_final_signed", Options::default());
}

/// MS-SMB2 3.3.4.1.1: the response to a signed LOGOFF is signed with the ended session's key
/// (the Linux kernel client verifies it and logged "sign fail cmd 0x2" against smbd). Fails
/// with the session's signer not kept for the response (session.rs logoff).
#[test]
fn logoff_response_is_signed() {
    probe("logoff_signed", Options::default());
}

/// MS-SMB2 3.3.5.2.5 and 3.3.5.2.3 on an in-process connection (no client needed): a READ
/// of 256 KiB charged one credit is INVALID_PARAMETER, charged four it runs; a multi-credit
/// charge reaching past the granted ids drops the connection.
#[test]
fn credit_charge_must_cover_payload() {
    use conn_harness::{body_create, body_read, cmd, Seq, FIRST_FID};
    let f = (FIRST_FID, FIRST_FID);
    let mut s = Seq::new();
    s.login(&[0x0302]);
    s.push(cmd::CREATE, body_create("charge.txt", 5, 0x40));
    let cheap = s.push_charged(cmd::READ, body_read(f, 0, 256 * 1024), 1);
    let paid = s.push_charged(cmd::READ, body_read(f, 0, 256 * 1024), 4);
    let echo = s.push(cmd::ECHO, conn_harness::body_small());
    let answers = conn_harness::run(&s.input()).unwrap();
    let st = |mid: u64| answers.iter().find(|a| a.1 == mid).map(|a| a.2);
    const INVALID_PARAMETER: u32 = 0xC000_000D;
    assert_eq!(st(cheap), Some(INVALID_PARAMETER), "{answers:x?}");
    // A large lone READ goes to the worker's ring, which the harness does not run: no
    // answer here means it was accepted.
    assert_eq!(st(paid), None, "{answers:x?}");
    assert_eq!(st(echo), Some(0), "{answers:x?}");

    // Every request asks for 64 credits: after the login the client holds far fewer than
    // 60000, so a 60000-credit charge reaches beyond the window.
    let mut s = Seq::new();
    s.login(&[0x0302]);
    let greedy = s.push_charged(cmd::ECHO, conn_harness::body_small(), 60000);
    s.push(cmd::ECHO, conn_harness::body_small());
    let answers = conn_harness::run(&s.input()).unwrap();
    assert!(
        !answers.iter().any(|a| a.1 >= greedy),
        "answered after an out-of-window charge: {answers:x?}"
    );
}
