//! MS-DFS: node 1 is a DFS root (`data`, `dfs_root = true`) whose link `link1` refers to
//! `\\127.0.0.2\data\sub`, a directory of node 2 (another smbd with its own share directory,
//! on the same port at another loopback address, as DFS targets name a server and not a
//! port). Real clients follow the referral: smbclient (Samba 4.17) and smbprotocol's
//! high-level client. What only node 2 holds proves which node served the data.

mod common;
use common::*;
use std::process::Command;

const CONTENT: &str = "served by node 2";

/// Node 1 (the DFS root, listening on `node1_listen`) and node 2 (on `node2_ip`, node 1's
/// port) with `sub/only-on-node2.txt`; the link's target names node 2 by its address.
fn two_nodes(node1_listen: &str, node2_ip: &str) -> (TestServer, TestServer) {
    let node1 = TestServer::start(Options {
        listen: Some(node1_listen.into()),
        share_extra: format!(
            "dfs_root = true\ndfs_links = [{{ path = \"link1\", targets = [\"\\\\\\\\{node2_ip}\\\\data\\\\sub\"] }}]"
        ),
        ..Options::default()
    });
    let node2 = TestServer::start(Options {
        listen: Some(format!("{node2_ip}:{}", node1.port)),
        ..Options::default()
    });
    assert_eq!(node2.port, node1.port);
    std::fs::create_dir(node2.share.join("sub")).unwrap();
    std::fs::write(node2.share.join("sub/only-on-node2.txt"), CONTENT).unwrap();
    (node1, node2)
}

/// Two loopback addresses of a /24 no other run of this test picks at the same time.
fn loopback_pair() -> (String, String) {
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let (a, b) = (100 + seed % 100, (seed / 100) % 250 + 1);
    (format!("127.{a}.{b}.1"), format!("127.{a}.{b}.2"))
}

#[test]
fn smbclient_follows_a_referral_to_another_node() {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    // smbclient 4.17 connects to referral targets (and to IPC$ for the referral) on ports
    // 445/139 whatever `-p` or `smb ports` say: both nodes listen on 445, at two loopback
    // addresses of their own.
    let (ip1, ip2) = loopback_pair();
    if let Err(e) = std::net::TcpListener::bind((ip1.as_str(), 445)) {
        missing(&format!(
            "cannot listen on {ip1}:445 ({e}): needs CAP_NET_BIND_SERVICE"
        ));
        return;
    }
    let (node1, node2) = two_nodes(&format!("{ip1}:445"), &ip2);
    let work = tempfile::tempdir().unwrap();
    let user = format!("{USER}%{PASS}");
    let out = Command::new("smbclient")
        .current_dir(work.path())
        .arg(format!("//{ip1}/data"))
        .arg("-s")
        .arg(&node1.client_conf)
        .args([
            "-U",
            &user,
            "-c",
            "cd link1; ls; get only-on-node2.txt got.txt",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = format!(
        "--- node 1 ---\n{}\n--- node 2 ---\n{}",
        node1.log(),
        node2.log()
    );
    assert!(
        out.status.success() && !text.contains("NT_STATUS_"),
        "{text}\n{logs}"
    );
    assert!(
        text.contains("only-on-node2.txt"),
        "ls output: {text}\n{logs}"
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("got.txt")).unwrap(),
        CONTENT
    );
}

#[test]
fn smbprotocol_follows_a_referral_to_another_node() {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let (node1, node2) = two_nodes("127.0.0.1:0", "127.0.0.2");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dfs_common/dfs_client.py");
    let out = Command::new(py)
        .arg(script)
        .args([
            "127.0.0.1",
            &node1.port.to_string(),
            "data",
            USER,
            PASS,
            "link1",
            "only-on-node2.txt",
            CONTENT,
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && text.contains("referral versions 1-3 passed")
            && text.contains("dfs read passed"),
        "{text}\n--- node 1 ---\n{}\n--- node 2 ---\n{}",
        node1.log(),
        node2.log()
    );
}
