//! Public address takeover with tickle ACKs, with the real thing in network namespaces: a
//! bridge (its namespace also runs a UDP lockmgrd), two smbd nodes and a client, each in its
//! own namespace on the bridge. The public address 10.88.0.100 starts on node 1 (its home). A
//! client connects to it, negotiates, and waits in a recv with no timeout. Node 1 dies: its
//! link goes down, then it is SIGKILLed (a kill alone would let its kernel close the
//! connection itself). Node 2 must take the address after the fence wait and tickle the
//! client, whose recv then fails with ECONNRESET; the client reconnects to the same address
//! and is served by node 2 (another server GUID). Without the tickle the client never hears
//! anything: run with `PUBLIC_IP_TEST_NO_TICKLE=1` (node 2 gets `tickle = false`) and the test
//! fails at its own deadline. A second test cuts node 1 off from lockmgrd only: it must hand
//! its address over by itself (it is isolated) and get it back once the path returns.
//!
//! The same takeover over IPv6 (public address fd88::100/64, the client at fd88::10, IPv6
//! turned on in the namespaces without duplicate address detection): node 2 announces the
//! address with an unsolicited Neighbor Advertisement and tickles over IPv6.
//!
//! Needs root (namespaces, raw sockets): a missing capability is a failure.

mod cluster_common;
#[path = "support/rpcclient.rs"]
mod rpcclient_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use lockmgr_transport::netns::{NetnsPair, NetnsStar, BRIDGE, IFACE};

const PUBLIC: &str = "10.88.0.100";
const NODE_IPS: [&str; 2] = ["10.88.0.1", "10.88.0.2"];
const CLIENT_IP: &str = "10.88.0.10";

/// The family the public address and the client use (the nodes, lockmgrd and the heartbeats
/// stay on IPv4).
struct Net {
    public: &'static str,
    prefix: u8,
    client: &'static str,
    /// What smbd listens on.
    listen: &'static str,
}

const V4: Net = Net {
    public: PUBLIC,
    prefix: 24,
    client: CLIENT_IP,
    listen: "0.0.0.0:445",
};

/// smbd on a dual-stack socket.
const V6: Net = Net {
    public: "fd88::100",
    prefix: 64,
    client: "fd88::10",
    listen: "[::]:445",
};
const LOCKMGRD_IP: &str = "10.88.0.254";
const LOCKMGRD_PORT: u16 = 7500;
const SMB_PORT: u16 = 445;
const PEER_PORT: u16 = 5135;
const HEARTBEAT_MS: u64 = 200;
const DEAD_AFTER_MS: u64 = 1000;
/// lockmgrd's liveness lease, and the nodes' fence wait.
const LEASE_MS: u64 = 1000;
/// How long a witness registration sent elsewhere lives on (`[witness] reregister_after_ms`):
/// short for quick tests, long enough for the AVAILABLE that follows a moving address's
/// UNAVAILABLE.
const REREGISTER_AFTER_MS: u64 = 2000;
/// From the kill until the client must have been reset and served again.
const DEADLINE: Duration = Duration::from_secs(30);

/// A child process killed (by its PID) and reaped when dropped.
struct Proc(Option<Child>);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// SIGTERM and wait: a clean stop.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.0.take().expect("running");
        // By PID: our own child, not yet reaped.
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success());
        c.wait().expect("wait smbd")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node_config(dir: &Path, me: usize, key: &Path, tickle: bool, net: &Net) -> PathBuf {
    let mut s = format!(
        "[server]\nlisten = [\"{listen}\"]\nnetbios_name = \"NODE{me}\"\nworkers = 1\n\
         users = \"{users}\"\ncluster_fs_id = \"{fs_id}\"\n\n\
         [[share]]\nname = \"{share_name}\"\npath = \"{share}\"\n\n\
         [lockmgr]\ntransport = \"udp\"\nconnect = \"{LOCKMGRD_IP}:{LOCKMGRD_PORT}\"\n\
         cluster_key_file = \"{key}\"\nnode_name = \"node{me}\"\n\n\
         [witness]\nenabled = true\nnet_name = \"CLUSTER\"\nnode = \"node{me}\"\n\
         listen = \"0.0.0.0:0\"\nepm_listen = \"0.0.0.0:135\"\n\
         peer_listen = \"{ip}:{PEER_PORT}\"\nheartbeat_ms = {HEARTBEAT_MS}\n\
         dead_after_ms = {DEAD_AFTER_MS}\ncontrol_socket = \"{ctl}\"\n\
         reregister_after_ms = {REREGISTER_AFTER_MS}\n",
        key = key.display(),
        users = dir.join("users").display(),
        fs_id = cluster_common::FS_ID,
        share_name = cluster_common::SHARE,
        share = dir.join("share").display(),
        ip = NODE_IPS[me - 1],
        ctl = control_socket(dir, me).display(),
        listen = net.listen,
    );
    for (n, node_ip) in NODE_IPS.iter().enumerate() {
        s.push_str(&format!(
            "[[witness.nodes]]\nname = \"node{}\"\naddress = \"{node_ip}\"\npeer = \"{node_ip}:{PEER_PORT}\"\n",
            n + 1
        ));
    }
    s.push_str(&format!(
        "\n[public_addresses]\nfence_ms = {LEASE_MS}\ntickle = {tickle}\n\
         [[public_addresses.addresses]]\naddress = \"{}/{}\"\ninterface = \"{IFACE}\"\n",
        net.public, net.prefix
    ));
    let path = dir.join(format!("node{me}.toml"));
    std::fs::write(&path, s).unwrap();
    path
}

fn control_socket(dir: &Path, me: usize) -> PathBuf {
    dir.join(format!("ctl{me}"))
}

fn control(dir: &Path, me: usize, command: &str) -> String {
    smbd::witness::peers::control_request(&control_socket(dir, me), command).unwrap_or_default()
}

fn start_node(
    star: &NetnsStar,
    dir: &Path,
    me: usize,
    key: &Path,
    tickle: bool,
    net: &Net,
) -> Proc {
    let cfg = node_config(dir, me, key, tickle, net);
    let log = std::fs::File::create(dir.join(format!("node{me}.log"))).unwrap();
    let mut child = NetnsPair::command_in(&star.clients[me - 1], env!("CARGO_BIN_EXE_smbd"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn smbd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let proc = Proc(Some(child));
    assert!(
        line.starts_with("smbd listening on"),
        "node{me} did not start: {line:?}\n{}",
        logs(dir)
    );
    proc
}

fn logs(dir: &Path) -> String {
    ["lockmgrd", "node1", "node2"]
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
            format!("--- {n}.log ---\n{text}")
        })
        .collect()
}

fn wait_for(what: &str, dir: &Path, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out: {what}\n{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An SMB2 NEGOTIATE (dialect 2.0.2) over `s`: the server's GUID from the response.
fn negotiate(s: &mut TcpStream) -> std::io::Result<[u8; 16]> {
    let mut smb = Vec::new();
    smb.extend_from_slice(b"\xfeSMB");
    smb.extend_from_slice(&64u16.to_le_bytes());
    smb.extend_from_slice(&[0; 2]); // credit charge
    smb.extend_from_slice(&[0; 4]); // status
    smb.extend_from_slice(&0u16.to_le_bytes()); // NEGOTIATE
    smb.extend_from_slice(&1u16.to_le_bytes()); // credits requested
    smb.extend_from_slice(&[0; 4]); // flags
    smb.extend_from_slice(&[0; 4]); // next command
    smb.extend_from_slice(&0u64.to_le_bytes()); // message id
    smb.extend_from_slice(&[0; 4 + 4 + 8 + 16]); // process id, tree id, session, signature
    smb.extend_from_slice(&36u16.to_le_bytes());
    smb.extend_from_slice(&1u16.to_le_bytes()); // one dialect
    smb.extend_from_slice(&1u16.to_le_bytes()); // signing enabled
    smb.extend_from_slice(&[0; 2 + 4]); // reserved, capabilities
    smb.extend_from_slice(&[7; 16]); // client GUID
    smb.extend_from_slice(&[0; 8]); // client start time
    smb.extend_from_slice(&0x0202u16.to_le_bytes());
    let mut frame = (smb.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&smb);
    s.write_all(&frame)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut resp = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut resp)?;
    let status = u32::from_le_bytes(resp[8..12].try_into().unwrap());
    assert_eq!(status, 0, "NEGOTIATE failed: {status:#x}");
    Ok(resp[64 + 8..64 + 24].try_into().unwrap())
}

/// How an idle client's connection to node 1 ends when node 1 leaves.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Node 1 died: the new holder's tickle ACK draws the client's RST (seen as a reset).
    Reset,
    /// Node 1 let the address go: it ended the connection itself (the client reads a FIN).
    Closed,
}

enum ClientEvent {
    Served([u8; 16]),
    RecvEnded(Instant, std::io::Result<usize>),
    ServedAgain(Instant, [u8; 16]),
}

/// The namespaces, addresses, key and UDP lockmgrd every test starts from.
struct Cluster {
    star: NetnsStar,
    dir: tempfile::TempDir,
    key: PathBuf,
    net: &'static Net,
    _lockmgrd: Proc,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with(&V4)
    }

    fn with(net: &'static Net) -> Cluster {
        let star = NetnsStar::new(3, 1500).expect("network namespaces (this test needs root)");
        if net.public.contains(':') {
            // NetnsStar turns IPv6 off; turn it on in the node and client namespaces, without
            // duplicate address detection so addresses are usable at once. The bridge floods
            // multicast (Neighbor Solicitations and Advertisements) without snooping.
            for ns in &star.clients {
                for conf in ["all", "default", IFACE] {
                    for (key, value) in [("accept_dad", "0"), ("disable_ipv6", "0")] {
                        let k = format!("net.ipv6.conf.{conf}.{key}={value}");
                        let out = NetnsPair::command_in(ns, "sysctl")
                            .args(["-qw", &k])
                            .output()
                            .expect("sysctl");
                        assert!(out.status.success(), "{k}: {out:?}");
                    }
                }
            }
            ip(&[
                "-n",
                &star.server,
                "link",
                "set",
                BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ]);
            let client = format!("{}/{}", net.client, net.prefix);
            ip(&[
                "-n",
                &star.clients[2],
                "addr",
                "add",
                &client,
                "dev",
                IFACE,
                "nodad",
            ]);
        }
        ip(&[
            "-n",
            &star.server,
            "addr",
            "add",
            &format!("{LOCKMGRD_IP}/24"),
            "dev",
            BRIDGE,
        ]);
        for (ns, addr) in star
            .clients
            .iter()
            .zip([NODE_IPS[0], NODE_IPS[1], CLIENT_IP])
        {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", IFACE]);
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, rand::random::<[u8; 32]>()).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // One directory both nodes serve (the durable-handle test's files).
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        cluster_common::give_share_to_test_users(dir.path(), &share);
        // The SMB and witness callers' accounts (the witness takes NTLMSSP callers only).
        cluster_common::write_users_file(
            &dir.path().join("users"),
            &[(cluster_common::USER, cluster_common::PASS)],
        );
        let lockmgrd_log = dir.path().join("lockmgrd.log");
        let log = std::fs::File::create(&lockmgrd_log).unwrap();
        let lockmgrd = Proc(Some(
            NetnsPair::command_in(&star.server, cluster_common::lockmgrd_bin())
                .args(["--transport", "udp", "--listen"])
                .arg(format!("{LOCKMGRD_IP}:{LOCKMGRD_PORT}"))
                .arg("--cluster-key-file")
                .arg(&key)
                .args(["--liveness-ms", &LEASE_MS.to_string()])
                .env("NO_COLOR", "1")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn lockmgrd"),
        ));
        wait_for(
            "lockmgrd listening",
            dir.path(),
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(&lockmgrd_log)
                    .is_ok_and(|l| l.contains("lockmgrd listening"))
            },
        );
        Cluster {
            star,
            dir,
            key,
            net,
            _lockmgrd: lockmgrd,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn start_node(&self, me: usize, tickle: bool) -> Proc {
        start_node(&self.star, self.dir(), me, &self.key, tickle, self.net)
    }

    /// Waits until both nodes report `holder` holding the public address (and assigned it).
    fn wait_held_by(&self, holder: usize) {
        let expected = format!("{} node{holder} node{holder}\n", self.net.public);
        wait_for(
            &format!("node {holder} holds the public address"),
            self.dir(),
            Duration::from_secs(30),
            || {
                control(self.dir(), 1, "ips") == expected
                    && control(self.dir(), 2, "ips") == expected
            },
        );
    }

    /// A client in the third namespace: connects to the public address, negotiates, then
    /// waits idle in a recv; when that ends it reconnects until it is served again. Returns
    /// once node 2 knows the client's connection (the published list), with the first
    /// server's GUID.
    fn idle_client(&self) -> (std::sync::mpsc::Receiver<ClientEvent>, [u8; 16]) {
        let (tx, events) = channel();
        let public = SocketAddr::new(self.net.public.parse().unwrap(), SMB_PORT);
        NetnsPair::spawn_in(&self.star.clients[2], move || {
            let mut s =
                TcpStream::connect_timeout(&public, Duration::from_secs(5)).expect("connect");
            let guid = negotiate(&mut s).expect("negotiate with node 1");
            tx.send(ClientEvent::Served(guid)).unwrap();
            // Idle: nothing more to send, so nothing but the server can end this recv.
            let mut b = [0u8; 1];
            let r = s.read(&mut b);
            if tx.send(ClientEvent::RecvEnded(Instant::now(), r)).is_err() {
                return;
            }
            // Again and again while the address moves: refused, unreachable, or ended at
            // once by a node letting the address go.
            let again = loop {
                if let Ok(mut s) = TcpStream::connect_timeout(&public, Duration::from_secs(1)) {
                    if let Ok(guid) = negotiate(&mut s) {
                        break guid;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let _ = tx.send(ClientEvent::ServedAgain(Instant::now(), again));
        });
        let first_guid = match events.recv_timeout(Duration::from_secs(20)) {
            Ok(ClientEvent::Served(g)) => g,
            _ => panic!("the client was not served by node 1\n{}", logs(self.dir())),
        };
        // How `connections` prints the client: A.B.C.D:PORT or [IPV6]:PORT.
        let client_prefix = if self.net.client.contains(':') {
            format!("[{}]:", self.net.client)
        } else {
            format!("{}:", self.net.client)
        };
        wait_for(
            "node 2 knows the client's connection",
            self.dir(),
            Duration::from_secs(20),
            || control(self.dir(), 2, "connections").contains(&client_prefix),
        );
        (events, first_guid)
    }

    /// After node 1 failed at `failed` (`why` for messages): the client's recv must end as
    /// `ending` says and the client be served by another server. Returns (ended, served
    /// again), measured from `failed`.
    fn expect_end_and_served_again(
        &self,
        events: &std::sync::mpsc::Receiver<ClientEvent>,
        first_guid: [u8; 16],
        failed: Instant,
        why: &str,
        ending: Ending,
    ) -> (Duration, Duration) {
        let (reset_at, result) = match events.recv_timeout(DEADLINE) {
            Ok(ClientEvent::RecvEnded(at, r)) => (at, r),
            Ok(ClientEvent::Served(_) | ClientEvent::ServedAgain(..)) => unreachable!(),
            Err(RecvTimeoutError::Timeout) => panic!(
                "the client still hangs {DEADLINE:?} after {why}\nnode 1: {}node 2 ips: {}\n{}",
                control(self.dir(), 1, "status"),
                control(self.dir(), 2, "ips"),
                logs(self.dir())
            ),
            Err(e) => panic!("client thread: {e}"),
        };
        match (ending, result) {
            (Ending::Reset, Err(e)) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "the client's recv failed otherwise: {e}"
            ),
            (Ending::Reset, Ok(n)) => panic!("the client's recv returned {n} instead of a reset"),
            (Ending::Closed, Ok(0)) => {}
            (Ending::Closed, other) => {
                panic!("the client's recv ended with {other:?}, not the releasing node's FIN")
            }
        }
        let remaining = DEADLINE.saturating_sub(failed.elapsed());
        let (served_at, second_guid) = match events.recv_timeout(remaining) {
            Ok(ClientEvent::ServedAgain(at, g)) => (at, g),
            _ => panic!("the client was not served again\n{}", logs(self.dir())),
        };
        assert_ne!(
            first_guid, second_guid,
            "served by another server than node 1"
        );
        (
            reset_at.duration_since(failed),
            served_at.duration_since(failed),
        )
    }

    /// Adds (`"add"`) or removes (`"del"`) a blackhole route to `to` in node `me`'s namespace.
    fn blackhole(&self, me: usize, op: &str, to: &str) {
        let to = format!("{to}/32");
        ip(&[
            "-n",
            &self.star.clients[me - 1],
            "route",
            op,
            "blackhole",
            &to,
        ]);
    }

    /// Asserts that node `asked`'s witness status shows node `about` in `state`.
    fn assert_status(&self, asked: usize, about: usize, state: &str) {
        let status = control(self.dir(), asked, "status");
        let line = format!("node{about} {} {state}", NODE_IPS[about - 1]);
        assert!(status.contains(&line), "node {asked}: {status}");
    }

    /// Samba's rpcclient in the client namespace, authenticated and sealed, on the witness
    /// it finds through the endpoint mapper at `address`.
    fn rpcclient(&self, address: &str) -> rpcclient_support::Rpcclient {
        assert!(
            Command::new("rpcclient").arg("--version").output().is_ok(),
            "rpcclient not installed (apt-get install samba-common-bin)"
        );
        let conf = self.dir().join("client.conf");
        std::fs::write(&conf, "[global]\n").unwrap();
        let mut cmd = NetnsPair::command_in(&self.star.clients[2], "rpcclient");
        cmd.arg("-s")
            .arg(&conf)
            .args([
                "-U",
                &format!("{}%{}", cluster_common::USER, cluster_common::PASS),
            ])
            .arg(format!("ncacn_ip_tcp:{address}[seal]"));
        rpcclient_support::Rpcclient::spawn(cmd)
    }

    fn addresses_on(&self, me: usize) -> String {
        ip_output(&[
            "-n",
            &self.star.clients[me - 1],
            "addr",
            "show",
            "dev",
            IFACE,
        ])
    }
}

#[test]
fn a_dead_nodes_public_address_moves_and_its_idle_client_is_reset() {
    dead_node_takeover(&V4);
}

/// The same over IPv6: the Neighbor Advertisement moves the client's neighbour entry to node
/// 2 and the tickle is an IPv6 packet. With `PUBLIC_IP_TEST_NO_TICKLE=1` the client hangs and
/// the test fails at its deadline, as over IPv4.
#[test]
fn a_dead_nodes_ipv6_public_address_moves_and_its_idle_client_is_reset() {
    dead_node_takeover(&V6);
}

fn dead_node_takeover(net: &'static Net) {
    let tickle = std::env::var_os("PUBLIC_IP_TEST_NO_TICKLE").is_none();
    let c = Cluster::with(net);
    let public = net.public;
    let mut node1 = c.start_node(1, true);
    let mut node2 = c.start_node(2, tickle);
    // Both nodes agree that node 1 holds the address (its home).
    c.wait_held_by(1);
    let (events, first_guid) = c.idle_client();

    // Node 1 dies: link first (its kernel must not close the connection for it), then SIGKILL.
    ip(&["-n", &c.star.clients[0], "link", "set", IFACE, "down"]);
    let killed_pid = node1.pid();
    node1.kill();
    let killed = Instant::now();
    eprintln!(
        "node 1 (pid {killed_pid}) killed; tickle ACKs {}",
        if tickle { "on" } else { "off" }
    );
    let (reset, served) = c.expect_end_and_served_again(
        &events,
        first_guid,
        killed,
        "node 1 died (no tickle ACK?)",
        Ending::Reset,
    );
    eprintln!(
        "kill -> client reset: {reset:?}; kill -> served by node 2: {served:?} (dead_after {DEAD_AFTER_MS} ms + fence {LEASE_MS} ms)"
    );
    assert_eq!(
        control(c.dir(), 2, "ips"),
        format!("{public} node2 node2\n")
    );
    assert!(c.addresses_on(2).contains(public), "{}", c.addresses_on(2));

    // A clean stop removes the address.
    let st = node2.stop();
    assert!(st.success(), "node 2 stopped with {st}\n{}", logs(c.dir()));
    assert!(!c.addresses_on(2).contains(public), "{}", c.addresses_on(2));
}

/// A client that reaches the cluster through the public address opens a file with a durable
/// handle (DH2Q, a read-handle lease, a byte-range lock) on node 1. Node 1 dies (link down,
/// then SIGKILL); node 2 takes the address, and the client, reconnecting to the same address
/// with the same ClientGuid, is served by node 2 and reclaims its handle with DH2C: same file
/// id, lease, data, and its lock still in force against another client, until it unlocks
/// (tests/cluster_common/durable_client.py, scenario "moved", smbprotocol in the client
/// namespace).
#[test]
fn a_moved_clients_durable_handle_is_reclaimed_on_the_new_node() {
    durable_client_moves(Leaving::Dies);
}

/// The same when node 1 is drained (a planned move): it releases the address, node 2 takes
/// it, and the client reclaims there. Node 1 must end its SMB connections to the address as
/// it releases it: left open, the connection would keep the handle open on node 1 (nothing
/// can reach node 1 at that address any more, so TCP takes minutes to give up) and the
/// reclaim on node 2 would meet it (the script gives up after 100 attempts).
#[test]
fn a_drained_nodes_client_reclaims_its_durable_handle_on_the_new_holder() {
    durable_client_moves(Leaving::Drains);
}

/// How node 1 leaves in [`durable_client_moves`].
#[derive(Debug, Clone, Copy)]
enum Leaving {
    /// Link down, then SIGKILL.
    Dies,
    /// `drain` on its control socket.
    Drains,
}

fn durable_client_moves(leaving: Leaving) {
    let Some(py) = cluster_common::python() else {
        panic!(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)"
        );
    };
    let c = Cluster::new();
    let mut node1 = c.start_node(1, true);
    let _node2 = c.start_node(2, true);
    c.wait_held_by(1);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster_common/durable_client.py");
    let child = NetnsPair::command_in(&c.star.clients[2], &py)
        .arg(&script)
        .args([
            PUBLIC,
            &SMB_PORT.to_string(),
            &SMB_PORT.to_string(),
            cluster_common::USER,
            cluster_common::PASS,
            "moved",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let mut left = None;
    let run = cluster_common::drive_marked_script(child, "KILL-NODE1", || {
        let t = Instant::now();
        match leaving {
            Leaving::Dies => {
                ip(&["-n", &c.star.clients[0], "link", "set", IFACE, "down"]);
                node1.kill();
            }
            Leaving::Drains => {
                assert_eq!(control(c.dir(), 1, "drain"), "ok\n");
                // The client comes back once the address has moved (its old connection ends
                // when node 1 lets the address go).
                c.wait_held_by(2);
            }
        }
        left = Some(t);
    });
    assert!(
        run.acted && run.status.success() && run.stdout.contains("PASS moved"),
        "durable_client.py moved ({leaving:?}): {}\nstdout:\n{}\nstderr:\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr,
        logs(c.dir())
    );
    if let Some(k) = left {
        eprintln!(
            "node 1 {leaving:?} -> handle reclaimed on node 2 and the scenario done: {:?} (dead_after {DEAD_AFTER_MS} ms + fence {LEASE_MS} ms)",
            k.elapsed()
        );
    }
    assert!(c.addresses_on(2).contains(PUBLIC), "{}", c.addresses_on(2));
}

/// Node 1 loses its path to lockmgrd but not to its peers or clients (a blackhole route to
/// lockmgrd's address in its namespace). Its lease runs out, lockmgrd fences it, and it can
/// grant nothing: it must call itself isolated, release its address (its peers hear it
/// still, so nobody would take it from a live node otherwise), ending the client's connection
/// to it as it does, and let node 2 take it; the client is then served by node 2. Once the
/// path is back node 1 is in service
/// again and gets its home address back. Without the isolation the client stays on node 1 and
/// the test fails at its deadline.
#[test]
fn a_node_cut_off_from_the_lock_manager_hands_its_address_over() {
    let c = Cluster::new();
    let _node1 = c.start_node(1, true);
    let _node2 = c.start_node(2, true);
    c.wait_held_by(1);
    let (events, first_guid) = c.idle_client();

    c.blackhole(1, "add", LOCKMGRD_IP);
    let cut = Instant::now();
    // Node 1 ends the client's connection itself as it lets the address go.
    let (ended, served) = c.expect_end_and_served_again(
        &events,
        first_guid,
        cut,
        "node 1 was cut off from lockmgrd",
        Ending::Closed,
    );
    eprintln!(
        "cut -> client's connection ended by node 1: {ended:?}; cut -> served by node 2: {served:?} (lease {LEASE_MS} ms)"
    );
    c.assert_status(1, 1, "isolated");
    c.assert_status(2, 1, "isolated");
    assert_eq!(
        control(c.dir(), 2, "ips"),
        format!("{PUBLIC} node2 node2\n")
    );
    assert!(!c.addresses_on(1).contains(PUBLIC), "{}", c.addresses_on(1));

    // The path comes back: node 1 gets a lease again, then its home address.
    c.blackhole(1, "del", LOCKMGRD_IP);
    c.wait_held_by(1);
    assert!(c.addresses_on(1).contains(PUBLIC), "{}", c.addresses_on(1));
    assert!(!c.addresses_on(2).contains(PUBLIC), "{}", c.addresses_on(2));
}

/// Only the heartbeats between the two nodes are cut (each blackholes the other's address);
/// both still reach lockmgrd and the client. Node 2 soon calls node 1 dead, but lockmgrd
/// still holds node 1's session, so node 1 can still serve: node 2 must not take its address
/// (it would be held twice and node 1's client reset for nothing). After the heal node 1 is
/// heard again and the client's connection never noticed. Without asking lockmgrd, node 2
/// takes the address after the fence wait and resets the client.
#[test]
fn a_silent_node_that_still_holds_its_lock_manager_session_keeps_its_address() {
    let c = Cluster::new();
    let _node1 = c.start_node(1, true);
    let _node2 = c.start_node(2, true);
    c.wait_held_by(1);
    let (events, _) = c.idle_client();

    let cuts = [(1, NODE_IPS[1]), (2, NODE_IPS[0])];
    for (me, peer) in cuts {
        c.blackhole(me, "add", peer);
    }
    let log2 = c.dir().join("node2.log");
    wait_for(
        "node 2 holds back: node 1 is silent but not fenced",
        c.dir(),
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log2)
                .is_ok_and(|l| l.contains("node silent but not fenced by the lock manager"))
        },
    );
    c.assert_status(2, 1, "dead");
    // One more fence period: still only on node 1, and the client still connected.
    std::thread::sleep(Duration::from_millis(DEAD_AFTER_MS + LEASE_MS));
    assert!(!c.addresses_on(2).contains(PUBLIC), "{}", c.addresses_on(2));
    assert!(c.addresses_on(1).contains(PUBLIC), "{}", c.addresses_on(1));
    assert!(
        events.try_recv().is_err(),
        "the client's connection to node 1 ended\n{}",
        logs(c.dir())
    );

    for (me, peer) in cuts {
        c.blackhole(me, "del", peer);
    }
    wait_for(
        "node 2 hears node 1 again",
        c.dir(),
        Duration::from_secs(30),
        || control(c.dir(), 2, "status").contains(&format!("node1 {} up", NODE_IPS[0])),
    );
    c.wait_held_by(1);
    assert!(
        events.try_recv().is_err(),
        "the client's connection to node 1 ended\n{}",
        logs(c.dir())
    );
}

/// A witness client whose SMB connection is to the public address registers that address
/// (MS-SWN 3.2.4.1: IpAddress is the address the application is connected to; the witness
/// connection goes to another node's interface from GetInterfaceList). Samba's rpcclient in
/// the client namespace, on node 2's witness, registers 10.88.0.100 while node 1 holds it;
/// node 1 drains: the registration hears RESOURCE_CHANGE UNAVAILABLE when node 1 lets the
/// address go and AVAILABLE when node 2 takes it. Told that its address went away, the
/// registration then ends (`reregister_after_ms` after the UNAVAILABLE, as Samba's
/// rpcd_witness does): the next AsyncNotify fails with WERR_NOT_FOUND (MS-SWN 3.1.4.4) and
/// the client registers again. The new registration hears the same again when node 1, back
/// in service, gets its home address back. Without the ending, that AsyncNotify waits for
/// the next change and the test fails at its limit.
#[test]
fn a_witness_registration_for_the_public_address_follows_it() {
    let c = Cluster::new();
    let _node1 = c.start_node(1, true);
    let _node2 = c.start_node(2, true);
    c.wait_held_by(1);
    let mut rpc = c.rpcclient(NODE_IPS[1]);
    let limit = Duration::from_secs(30);
    rpc.send("GetInterfaceList");
    rpc.expect(&format!("node1 {PUBLIC}"), limit);
    rpc.send(&format!("Register -n CLUSTER -i {PUBLIC} -c testclient"));
    let h = rpc.handle(limit);
    let unavailable = format!("{PUBLIC} -> Unavailable");
    let available = format!("{PUBLIC} -> Available");

    rpc.send(&format!("AsyncNotify {h}"));
    assert_eq!(control(c.dir(), 1, "drain"), "ok\n");
    rpc.expect("Resource change with 1 messages", limit);
    rpc.expect(&unavailable, limit);
    rpc.send(&format!("AsyncNotify {h}"));
    rpc.expect("Resource change with 1 messages", limit);
    rpc.expect(&available, limit);
    let told = Instant::now();
    c.wait_held_by(2);

    rpc.send(&format!("AsyncNotify {h}"));
    rpc.expect("WERR_NOT_FOUND", limit);
    eprintln!(
        "registration ended {:?} after AVAILABLE (reregister_after_ms {REREGISTER_AFTER_MS} from UNAVAILABLE)",
        told.elapsed()
    );
    rpc.send(&format!("Register -n CLUSTER -i {PUBLIC} -c testclient"));
    let h = rpc.handle(limit);
    rpc.send(&format!("AsyncNotify {h}"));
    assert_eq!(control(c.dir(), 1, "undrain"), "ok\n");
    rpc.expect(&unavailable, limit);
    rpc.send(&format!("AsyncNotify {h}"));
    rpc.expect(&available, limit);
    c.wait_held_by(1);
    rpc.send("GetInterfaceList");
    rpc.expect(&format!("node1 {PUBLIC}"), limit);
}

/// A witness client that reached node 1's witness through the public address (the endpoint
/// mapper and the witness listen on every address) and registered there. Node 1 drains and
/// releases the address: it must end that connection itself while the address is still
/// there, so the client's pending AsyncNotify fails as the connection ends, and drop the
/// registration. Node 2 runs without tickle ACKs, so nothing else ends the connection:
/// without node 1 ending it, the client waits on a node that no longer answers there, and the
/// test fails at its limit. The client then connects to the same address again, now node
/// 2's, registers (RegisterEx for share `data`) and hears node 2's SHARE_MOVE.
#[test]
fn a_released_public_address_ends_its_witness_connections_and_the_client_registers_anew() {
    let c = Cluster::new();
    let _node1 = c.start_node(1, true);
    let _node2 = c.start_node(2, false);
    c.wait_held_by(1);
    let limit = Duration::from_secs(20);
    let mut rpc = c.rpcclient(PUBLIC);
    rpc.send(&format!("Register -n CLUSTER -i {PUBLIC} -c testclient"));
    let h = rpc.handle(limit);
    rpc.send(&format!("AsyncNotify {h}"));
    let status = control(c.dir(), 1, "status");
    assert!(status.contains("registrations 1"), "node 1: {status}");

    let drained = Instant::now();
    assert_eq!(control(c.dir(), 1, "drain"), "ok\n");
    let ended = rpc.expect("AsyncNotify failed", limit);
    eprintln!(
        "drain -> the client's witness connection to node 1 ended: {:?} ({ended})",
        drained.elapsed()
    );
    let status = control(c.dir(), 1, "status");
    assert!(status.contains("registrations 0"), "node 1: {status}");

    c.wait_held_by(2);
    let mut again = c.rpcclient(PUBLIC);
    again.send(&format!(
        "RegisterEx -n CLUSTER -s data -i {PUBLIC} -c testclient"
    ));
    let h = again.handle(limit);
    again.send(&format!("AsyncNotify {h}"));
    assert_eq!(
        control(c.dir(), 2, "share-move data node2"),
        "ok 1 registrations\n"
    );
    again.expect("Share move with 1 messages", limit);
    let line = again.expect("Flags", limit);
    assert!(line.contains(NODE_IPS[1]), "{line}");
    eprintln!(
        "drain -> registered with node 2 and told: {:?}",
        drained.elapsed()
    );
}
