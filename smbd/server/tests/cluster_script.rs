//! `scripts/run-local-cluster.sh --check` (the README's main command, non-interactive): starts
//! a replicated lock manager (etcd, two lockmgrd replicas) and two smbd nodes, lists the share
//! through both with smbclient, prints `lockmgrctl status`, SIGKILLs the primary lockmgrd and
//! checks both nodes again through the promoted standby, stops everything and removes its
//! temporary directory.

mod cluster_common;
use cluster_common::*;

use std::path::Path;
use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn run_local_cluster_check() {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    let bin_dir = lockmgrd_bin()
        .parent()
        .expect("lockmgrd has a directory")
        .to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/run-local-cluster.sh");
    if !have("etcd") {
        missing("etcd not installed (apt-get install etcd-server)");
        return;
    }
    let (p1, p2) = (free_port(), free_port());
    let out = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .env("BIN_DIR", &bin_dir)
        .env("PORT1", p1.to_string())
        .env("PORT2", p2.to_string())
        .env("ETCD_PORT", free_port().to_string())
        .env("REPLICAS", "2")
        .output()
        .expect("run the script");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("CHECK OK"), "{text}");
    assert!(
        text.contains("SIGKILL of the primary") && text.contains("role primary"),
        "the check did not fail the lock manager over:\n{text}"
    );
    for node in ["node1", "node2"] {
        assert!(
            text.contains(node),
            "{node} missing from lockmgrctl status:\n{text}"
        );
    }
    // Nothing left listening: the script stopped its nodes. smbd shuts its listeners before it
    // exits; the few retries only absorb the kernel's asynchronous socket teardown, a node that
    // is still running fails this.
    for p in [p1, p2] {
        let still_served = (0..50).all(|_| {
            let served = std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
            if served {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            served
        });
        assert!(!still_served, "port {p} still served 5 s after --check");
    }
}
