//! The witness service (MS-SWN) with a real client: two smbd nodes on 127.0.0.2 and
//! 127.0.0.3 (each its own endpoint mapper on port 135, which rpcclient always asks), Samba's
//! `rpcclient` registered on node 2's witness for node 1's address. Draining node 1 through
//! its control socket must reach node 2's witness (heartbeat channel) and move the client,
//! whose registration then ends so that it registers again; node 1 stopping must then show
//! as RESOURCE_CHANGE(unavailable).
//!
//! Needs root (port 135) and rpcclient (Debian samba-common-bin); skipped without them (a
//! failure with `CI=true`).

mod common;
#[path = "support/rpcclient.rs"]
mod rpcclient_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use rpcclient_support::Rpcclient;

fn node_config(
    dir: &std::path::Path,
    me: usize,
    key: &std::path::Path,
    peer_ports: [u16; 2],
) -> String {
    let mut s = format!(
        "[witness]\nenabled = true\nnet_name = \"CLUSTER\"\nnode = \"node{me}\"\n\
         listen = \"127.0.0.{ip}:0\"\nepm_listen = \"127.0.0.{ip}:135\"\n\
         peer_listen = \"127.0.0.{ip}:{pp}\"\nkey_file = \"{key}\"\nheartbeat_ms = 100\n\
         dead_after_ms = 1500\ncontrol_socket = \"{ctl}\"\n",
        ip = me + 1,
        pp = peer_ports[me - 1],
        key = key.display(),
        ctl = dir.join(format!("ctl{me}")).display(),
    );
    for n in 1..=2 {
        s.push_str(&format!(
            "[[witness.nodes]]\nname = \"node{n}\"\naddress = \"127.0.0.{ip}\"\npeer = \"127.0.0.{ip}:{pp}\"\n",
            ip = n + 1,
            pp = peer_ports[n - 1]
        ));
    }
    s
}

/// Both tests listen on 127.0.0.2:135 and 127.0.0.3:135 (rpcclient asks the endpoint mapper
/// there): one at a time.
static PORT_135: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What both tests start from: the port-135 turn, a shared directory with the cluster key,
/// and a heartbeat port per node.
struct Setup {
    shared: tempfile::TempDir,
    key: std::path::PathBuf,
    peer_ports: [u16; 2],
    _port_135: std::sync::MutexGuard<'static, ()>,
}

/// `None` (skipped; a failure with `CI=true`) without rpcclient or port 135.
fn setup() -> Option<Setup> {
    if Command::new("rpcclient").arg("--version").output().is_err() {
        missing("rpcclient not installed (apt-get install samba-common-bin)");
        return None;
    }
    let port_135 = PORT_135.lock().unwrap_or_else(|e| e.into_inner());
    if std::net::TcpListener::bind("127.0.0.2:135").is_err() {
        missing("cannot bind port 135 (needs root, and the port free)");
        return None;
    }
    let shared = tempfile::tempdir().unwrap();
    let key = shared.path().join("cluster.key");
    std::fs::write(&key, b"witness test cluster key 0123456789").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Some(Setup {
        peer_ports: [free_udp_port("127.0.0.2"), free_udp_port("127.0.0.3")],
        shared,
        key,
        _port_135: port_135,
    })
}

impl Setup {
    /// Node `me` (1 or 2) of the two-node witness cluster, listening on 127.0.0.`me+1`, with
    /// `witness_extra` added to its `[witness]` section.
    fn start_node(&self, me: usize, witness_extra: &str) -> TestServer {
        TestServer::start(Options {
            server_extra: format!("listen = [\"127.0.0.{}:0\"]", me + 1),
            config_extra: node_config(self.shared.path(), me, &self.key, self.peer_ports).replacen(
                "[witness]\n",
                &format!("[witness]\n{witness_extra}"),
                1,
            ),
            ..Options::default()
        })
    }
}

fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// rpcclient against a node's witness.
fn rpcclient(port: u16, binding: &str, password: &str, conf: &std::path::Path) -> Rpcclient {
    // `binding`: e.g. `ncacn_ip_tcp:127.0.0.3[seal]` (`[seal]`: NTLMSSP at packet privacy,
    // `[sign]`: at packet integrity, nothing: no authentication).
    let mut cmd = Command::new("rpcclient");
    cmd.arg("-s")
        .arg(conf)
        .args(["-U", &format!("{USER}%{password}"), "-p", &port.to_string()])
        .arg(binding);
    Rpcclient::spawn(cmd)
}

fn control(dir: &std::path::Path, node: usize, cmd: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_smbd"))
        .args(["witness", "--socket"])
        .arg(dir.join(format!("ctl{node}")))
        .arg(cmd)
        .output()
        .unwrap();
    assert!(out.status.success(), "smbd witness {cmd}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registration told CLIENT_MOVE (to another address than its own) ends
/// `reregister_after_ms` later, as Samba's rpcd_witness does: the client's next AsyncNotify
/// fails with WERR_NOT_FOUND (MS-SWN 3.1.4.4) and it registers again. Without that, the
/// AsyncNotify waits and the test fails at its limit.
#[test]
fn drained_node_moves_its_witness_clients_and_a_dead_one_is_unavailable() {
    let Some(setup) = setup() else {
        return;
    };
    let shared = &setup.shared;
    let start = |me: usize| setup.start_node(me, "reregister_after_ms = 1000\n");
    let mut node1 = start(1);
    let node2 = start(2);
    let status = control(shared.path(), 2, "status");
    assert!(status.contains("node1 127.0.0.2 up"), "{status}");

    // The client's SMB connection would be to node 1 (127.0.0.2); its witness is node 2.
    // The witness takes only authenticated callers, at packet privacy by default (the
    // calls below and their answers are sealed).
    let mut rpc = rpcclient(
        node2.port,
        "ncacn_ip_tcp:127.0.0.3[seal]",
        PASS,
        &node2.client_conf,
    );
    let limit = Duration::from_secs(20);
    rpc.send("GetInterfaceList");
    rpc.expect("node1 127.0.0.2", limit);
    rpc.expect("node2 127.0.0.3", limit);
    // An address no node has: ERROR_INVALID_STATE.
    rpc.send("Register -n CLUSTER -i 192.0.2.1 -c testclient");
    rpc.expect("WERR_INVALID_STATE", limit);
    rpc.send("Register -n CLUSTER -i 127.0.0.2 -c testclient");
    let handle = rpc.handle(limit);
    rpc.send(&format!("AsyncNotify {handle}"));
    // The call stays pending until the drain; the drain goes to node 1's own socket.
    assert_eq!(control(shared.path(), 1, "drain"), "ok\n");
    rpc.expect("Client move with 1 messages", limit);
    let target = rpc.expect("Flags", limit);
    assert!(target.contains("127.0.0.3"), "moved to {target}");
    assert!(!target.contains("127.0.0.2"), "moved to {target}");
    let moved = std::time::Instant::now();

    // Sent elsewhere, the registration ends: the client registers again.
    rpc.send(&format!("AsyncNotify {handle}"));
    rpc.expect("WERR_NOT_FOUND", limit);
    eprintln!("CLIENT_MOVE -> registration ended: {:?}", moved.elapsed());
    rpc.send("Register -n CLUSTER -i 127.0.0.2 -c testclient");
    let handle = rpc.handle(limit);

    // Node 1 goes away: its clients hear that its address is unavailable.
    rpc.send(&format!("AsyncNotify {handle}"));
    node1.stop();
    rpc.expect("Resource change with 1 messages", limit);
    rpc.expect("127.0.0.2 -> Unavailable", limit);
    let status = control(shared.path(), 2, "status");
    assert!(status.contains("node1 127.0.0.2 dead"), "{status}");
    // rpcclient leaving runs down the registration it still holds (one for node 2, which
    // nothing sends elsewhere) with the connection.
    rpc.send("Register -n CLUSTER -i 127.0.0.3 -c testclient");
    rpc.handle(limit);
    wait_for_status(shared.path(), "registrations 1");
    drop(rpc);
    wait_for_status(shared.path(), "registrations 0");
}

/// Waits (up to 5 s) until node 2's `status` contains `want`.
fn wait_for_status(dir: &std::path::Path, want: &str) {
    let mut status = String::new();
    for _ in 0..50 {
        status = control(dir, 2, "status");
        if status.contains(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("node 2 never showed {want:?}: {status}");
}

/// RegisterEx's two opt-ins (MS-SWN 3.1.4.5): with WITNESS_REGISTER_IP_NOTIFICATION a client
/// hears IP_CHANGE when a node's address goes offline (drain) and online again (undrain),
/// MS-SWN 3.1.6.4; with a ShareName it hears SHARE_MOVE when the operator moves that share
/// (`smbd witness share-move`, as Samba's `net witness share-move`), 3.1.6.3. A registration
/// with neither hears none of it: its AsyncNotify runs into its keep-alive timeout.
#[test]
fn ip_change_and_share_move_reach_the_registrations_that_asked() {
    let Some(setup) = setup() else {
        return;
    };
    let shared = &setup.shared;
    let start = |me: usize| setup.start_node(me, "");
    let _node1 = start(1);
    let node2 = start(2);
    let limit = Duration::from_secs(20);
    let rpc = |node: &TestServer| {
        rpcclient(
            node.port,
            "ncacn_ip_tcp:127.0.0.3[seal]",
            PASS,
            &node.client_conf,
        )
    };
    // Both clients' SMB connections are to node 2 and their witness is node 2 too (any node
    // will do for this): node 1's address changing is an IP change, not a move, for them.
    let mut asked = rpc(&node2);
    asked.send("RegisterEx -n CLUSTER -s data -i 127.0.0.3 -c asked -f 1");
    let h = asked.handle(limit);
    let mut plain = rpc(&node2);
    plain.send("RegisterEx -n CLUSTER -s other -i 127.0.0.3 -c plain -t 3");
    let plain_h = plain.handle(limit);

    asked.send(&format!("AsyncNotify {h}"));
    assert_eq!(control(shared.path(), 1, "drain"), "ok\n");
    asked.expect("IP change with 1 messages", limit);
    // IPADDR_V4 | IPADDR_OFFLINE.
    let line = asked.expect("Flags", limit);
    assert!(line.contains("0x00000011 127.0.0.2"), "{line}");
    asked.send(&format!("AsyncNotify {h}"));
    assert_eq!(control(shared.path(), 1, "undrain"), "ok\n");
    asked.expect("IP change with 1 messages", limit);
    // IPADDR_V4 | IPADDR_ONLINE.
    let line = asked.expect("Flags", limit);
    assert!(line.contains("0x00000009 127.0.0.2"), "{line}");

    asked.send(&format!("AsyncNotify {h}"));
    assert_eq!(
        control(shared.path(), 2, "share-move data node1"),
        "ok 1 registrations\n"
    );
    asked.expect("Share move with 1 messages", limit);
    let line = asked.expect("Flags", limit);
    assert!(line.contains("0x00000009 127.0.0.2"), "{line}");

    // The plain registration heard none of the above: nothing is queued for it.
    plain.send(&format!("AsyncNotify {plain_h}"));
    let line = plain.expect_by("an answer", limit, |l| {
        l.contains("TIMEOUT") || l.contains("with 1 messages")
    });
    assert!(line.contains("TIMEOUT"), "{}", plain.seen.join("\n"));
}

/// A share move given on one node reaches the registrations on every node: the node it was
/// given on forwards it over the heartbeat channel (signed like the heartbeats). rpcclient
/// on node 1's witness and on node 2's both registered for share `data` (RegisterEx with a
/// ShareName, MS-SWN 3.1.4.5); `share-move data node2` on node 2 only must reach both
/// (SHARE_MOVE, 3.1.6.3).
#[test]
fn a_share_move_given_on_one_node_reaches_every_nodes_registrations() {
    let Some(setup) = setup() else {
        return;
    };
    let shared = &setup.shared;
    let start = |me: usize| setup.start_node(me, "");
    let node1 = start(1);
    let node2 = start(2);
    let limit = Duration::from_secs(20);
    // On node 1's witness: a client whose SMB connection is to node 2, and the reverse.
    let mut on1 = rpcclient(
        node1.port,
        "ncacn_ip_tcp:127.0.0.2[seal]",
        PASS,
        &node1.client_conf,
    );
    on1.send("RegisterEx -n CLUSTER -s data -i 127.0.0.3 -c on1");
    let h1 = on1.handle(limit);
    let mut on2 = rpcclient(
        node2.port,
        "ncacn_ip_tcp:127.0.0.3[seal]",
        PASS,
        &node2.client_conf,
    );
    on2.send("RegisterEx -n CLUSTER -s data -i 127.0.0.2 -c on2");
    let h2 = on2.handle(limit);
    on1.send(&format!("AsyncNotify {h1}"));
    on2.send(&format!("AsyncNotify {h2}"));
    assert_eq!(
        control(shared.path(), 2, "share-move data node2"),
        "ok 1 registrations\n"
    );
    for rpc in [&mut on2, &mut on1] {
        rpc.expect("Share move with 1 messages", limit);
        // IPADDR_V4 | IPADDR_ONLINE.
        let line = rpc.expect("Flags", limit);
        assert!(line.contains("0x00000009 127.0.0.3"), "{line}");
    }
}

/// The witness answers only callers who authenticate (NTLMSSP, a user of `[server] users`)
/// at the configured level, packet privacy by default: no authentication, a wrong password
/// and packet integrity are refused on a default node; a node configured for integrity
/// serves a signed caller.
#[test]
fn witness_callers_must_authenticate_at_the_configured_level() {
    let Some(setup) = setup() else {
        return;
    };
    let start = |me: usize, extra: &str| setup.start_node(me, extra);
    let node1 = start(1, "auth_level = \"integrity\"\n");
    let node2 = start(2, "");
    let limit = Duration::from_secs(20);
    let refused = |binding: &str, password: &str| {
        let mut rpc = rpcclient(node2.port, binding, password, &node2.client_conf);
        rpc.send("GetInterfaceList");
        rpc.send("quit");
        let line = rpc.expect_by("a refusal", limit, |l| {
            l.contains("node2 127.0.0.3") || l.contains("ACCESS_DENIED") || l.contains("failed")
        });
        assert!(
            !line.contains("node2 127.0.0.3"),
            "{binding} with password {password:?} was served: {}",
            rpc.seen.join("\n")
        );
        eprintln!("{binding} ({password}): {line}");
    };
    refused("ncacn_ip_tcp:127.0.0.3", PASS);
    refused("ncacn_ip_tcp:127.0.0.3[seal]", "not-the-password");
    refused("ncacn_ip_tcp:127.0.0.3[sign]", PASS);

    let served = |node: &TestServer, binding: &str, interface: &str| {
        let mut rpc = rpcclient(node.port, binding, PASS, &node.client_conf);
        rpc.send("GetInterfaceList");
        rpc.expect(interface, limit);
    };
    served(&node2, "ncacn_ip_tcp:127.0.0.3[seal]", "node2 127.0.0.3");
    // NTLMSSP inside SPNEGO (auth type 9, as Windows binds): its third leg and the
    // mechListMICs travel in an alter_context round trip.
    served(
        &node2,
        "ncacn_ip_tcp:127.0.0.3[seal,spnego]",
        "node2 127.0.0.3",
    );
    served(&node1, "ncacn_ip_tcp:127.0.0.2[sign]", "node1 127.0.0.2");
}
