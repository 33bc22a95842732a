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

/// Runs a scenario of tests/cluster_common/cluster_client.py with both of its clients on one
/// smbd (the same scenarios run across two nodes in tests/cluster.rs).
fn single_node_scenario(name: &str) {
    single_node_scenario_with(name, |_| {});
}

/// `single_node_scenario` with `setup` run on the share directory before the clients start.
fn single_node_scenario_with(name: &str, setup: impl FnOnce(&std::path::Path)) {
    single_node_scenario_checked(name, setup, |_| {});
}

/// `single_node_scenario_with`, then `check` run on the share directory once the scenario
/// passed (smbd still running).
fn single_node_scenario_checked(
    name: &str,
    setup: impl FnOnce(&std::path::Path),
    check: impl FnOnce(&std::path::Path),
) {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let srv = TestServer::start(Options::default());
    setup(&srv.share);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cluster_common/cluster_client.py");
    let port = srv.port.to_string();
    let out = Command::new(py)
        .arg(script)
        .args(["127.0.0.1", &port, &port, USER, PASS, name])
        .env("NOTIFY_SHARE_DIR", &srv.share)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains(&format!("PASS {name}")),
        "{name}:\n{text}\n--- smbd log ---\n{}",
        srv.log()
    );
    check(&srv.share);
}

/// A client that holds a batch oplock and stops acknowledging at the TCP level (dead, or cut
/// off) loses its channel once the break goes unacknowledged (six retransmission timeouts), so
/// the other client's open goes on without waiting out the 35 s break timeout.
#[test]
fn a_client_that_stops_acknowledging_its_break_loses_its_channel() {
    single_node_scenario("deadclient");
}

/// Issue 12, change notify on one node: the changes another client of the same smbd makes
/// are reported once each (smbd reports them itself and its inotify watch sees them too), and
/// a file created directly in the directory is reported.
#[test]
fn change_notify_reports_smb_and_direct_changes_once() {
    single_node_scenario("notify");
}

/// Issue 12, SMB2_WATCH_TREE: changes below the watched directory reach the handle that
/// watches the tree, with their relative path, and not the one that does not.
#[test]
fn change_notify_watch_tree() {
    single_node_scenario("notifytree");
}

/// Issue 12 item 6: a lease next to a plain open keeps handle caching (RH) and so gets its
/// durable handle; next to a Level II oplock it is R only.
#[test]
fn lease_keeps_handle_caching_next_to_plain_open() {
    single_node_scenario("leaseh");
}

/// Issue 12 item 3: a stream open without FILE_SHARE_DELETE stops DELETE opens of its file;
/// a delete-pending file refuses opens of its streams.
#[test]
fn stream_shares_its_file_delete_state() {
    single_node_scenario("streams");
}

/// Issue 12: a local process's `touch -d` or plain write makes SMB report the kernel mtime
/// again (Windows' time is trusted only beside the mtime it was recorded with); SMB writes
/// after that are delayed from it.
#[test]
fn outside_change_moves_write_time() {
    single_node_scenario("outsidetime");
}

/// Issue 12: a write to a named stream moves its file's LastWriteTime by the delayed rule.
#[test]
fn stream_write_moves_file_write_time() {
    single_node_scenario("streamtime");
}

/// Issue 12: a delayed LastWriteTime update pending when a durable handle's transport drops
/// is applied at the disconnect.
#[test]
fn durable_disconnect_applies_write_time() {
    single_node_scenario("durabletime");
}

/// Two hard links of one file, `links-a.txt` and `links-b.txt`, for the `links` scenario.
fn make_hard_links(share: &std::path::Path) {
    std::fs::write(share.join("links-a.txt"), b"links").unwrap();
    std::fs::hard_link(share.join("links-a.txt"), share.join("links-b.txt")).unwrap();
}

/// Issue 12 item 9: delete-pending belongs to the link it was set through: another handle
/// of that link reports it (FileStandardInformation), a handle of another hard link does
/// not, the other link stays openable, and the last close removes only the deleted name.
#[test]
fn delete_pending_belongs_to_the_link() {
    single_node_scenario_with("links", make_hard_links);
}

/// Issue 12 (smbtorture smb2.notify.tree): `..` in a CREATE or rename name takes back the
/// component before it (`dotdot\zqy\..` is `dotdot`); one that would climb above the share
/// root is refused with OBJECT_PATH_SYNTAX_BAD, and nothing is made or renamed outside.
#[test]
fn dotdot_resolves_by_name_and_never_leaves_the_share() {
    single_node_scenario_checked(
        "dotdot",
        |share| {
            let outside = share.parent().unwrap();
            std::fs::write(outside.join("outside.txt"), b"outside").unwrap();
        },
        |share| {
            let outside = share.parent().unwrap();
            let names: Vec<String> = std::fs::read_dir(outside)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                !names.iter().any(|n| n.starts_with("escaped")),
                "a name was made next to the share: {names:?}"
            );
            assert_eq!(
                std::fs::read(outside.join("outside.txt")).unwrap(),
                b"outside"
            );
            assert!(share.join("dotdot").join("y.txt").exists());
        },
    );
}
