//! The Python smbprotocol client (smbd/tests/smbprotocol_client.py) against the real smbd.
//! Python comes from $SMBD_PYTHON, else /tmp/venv/bin/python (see STATUS.md for the venv
//! setup); without an interpreter that can `import smbprotocol` the test is skipped.

mod common;
use common::*;
use std::process::Command;

#[test]
fn smbprotocol_operations() {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let srv = TestServer::start(Options::default());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/smbprotocol_client.py");
    let out = Command::new(py)
        .arg(script)
        .args(["127.0.0.1", &srv.port.to_string(), "data", USER, PASS])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{text}\n--- smbd log ---\n{}",
        srv.log()
    );
    assert!(text.contains("all operations passed"), "{text}");
}
