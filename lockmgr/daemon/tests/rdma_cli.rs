//! `--transport rdma` on the command line and in the config file. The machines that run
//! `cargo test` usually have no RDMA (the soft-RoCE tests run in a qemu guest: see
//! hw-tests/run-softroce.sh), so this checks that lockmgrd and lockmgrctl fail there with the
//! transport's explanation instead of a generic error. On a machine that does have an RDMA
//! device the no-device checks are skipped with a message.

use std::process::{Command, Output};

use lockmgr_rdma::{probe, DeviceConfig, RdmaError};

/// The start of `RdmaError::NoDevice`'s message.
const NO_DEVICE: &str = "no RDMA device";

/// `true` if this machine has no RDMA device at all (the case these tests are about).
fn no_rdma_here(test: &str) -> bool {
    match probe(&DeviceConfig::default()) {
        Err(RdmaError::NoDevice(_)) => true,
        other => {
            eprintln!("SKIPPED {test}: this machine has RDMA ({other:?})");
            false
        }
    }
}

fn key_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("cluster.key");
    std::fs::write(&path, b"rdma-cli-test-cluster-key-000000").unwrap();
    // lockmgrd refuses a key file that group or others can read.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

fn assert_no_device_failure(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded without RDMA");
    assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
    assert!(stderr.contains(NO_DEVICE), "{what}: stderr was {stderr:?}");
    // The explanation names the way out, not only the symptom.
    assert!(stderr.contains("rdma link add"), "{what}: {stderr:?}");
}

#[test]
fn lockmgrd_rdma_without_device_explains() {
    if !no_rdma_here("lockmgrd_rdma_without_device_explains") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_lockmgrd"))
        .args(["--transport", "rdma", "--listen", "127.0.0.1:0"])
        .args(["--rdma-device", "rxe0", "--gid-index", "1"])
        .arg("--cluster-key-file")
        .arg(&key)
        .output()
        .unwrap();
    assert_no_device_failure("lockmgrd --transport rdma", &out);
}

#[test]
fn lockmgrd_rdma_config_file_without_device_explains() {
    if !no_rdma_here("lockmgrd_rdma_config_file_without_device_explains") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let cfg = dir.path().join("lockmgrd.toml");
    std::fs::write(
        &cfg,
        format!(
            "cluster_key_file = {:?}\n[transport]\nkind = \"rdma\"\nlisten = \"127.0.0.1:0\"\n\
             gid_index = 1\n",
            key.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lockmgrd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_no_device_failure("lockmgrd --config (rdma)", &out);
}

#[test]
fn lockmgrd_rdma_rejects_bad_listen_before_touching_devices() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_lockmgrd"))
        .args(["--transport", "rdma", "--listen", "/run/lockmgr.sock"])
        .arg("--cluster-key-file")
        .arg(&key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("transport.listen"), "{stderr:?}");
    assert!(!stderr.contains(NO_DEVICE), "{stderr:?}");
}

#[test]
fn lockmgrctl_rdma_without_device_explains() {
    if !no_rdma_here("lockmgrctl_rdma_without_device_explains") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_lockmgrctl"))
        .args(["--transport", "rdma", "--connect", "127.0.0.1:7500"])
        .arg("--cluster-key-file")
        .arg(&key)
        .arg("status")
        .output()
        .unwrap();
    assert_no_device_failure("lockmgrctl --transport rdma", &out);
}
