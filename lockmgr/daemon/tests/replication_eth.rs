//! A replicated lock manager over raw Ethernet (AF_PACKET and AF_XDP): two lockmgrd replicas
//! as real processes in network namespaces on one switch, epochs in a real etcd. The standby
//! reaches its primary as a node does (by MAC, authenticated with the cluster key, every
//! frame MAC'd); the primary is SIGKILLed while nodes hold locks, the standby must take over
//! through etcd, and the nodes must resume their sessions on it with their locks.
//!
//! Network: a [`NetnsStar`]: replica lm-a in client namespace 0, lm-b in 1, node1 in 2,
//! node2 in 3, every `veth0` on the bridge of the server namespace. Over AF_XDP a replica also
//! has `veth1` on the switch for its standby link (one AF_XDP socket holds a whole interface
//! queue); over AF_PACKET the standby's link shares `veth0` with its server.
//!
//! etcd runs in the test's own namespace on loopback; each replica's namespace reaches it
//! through a TCP relay of this process (a listener made inside that namespace, connections
//! made from outside), so no namespace needs an IP address on the switch.
//!
//! Needs root, network namespaces, etcd (and AF_XDP for its half): SKIPPED without, a
//! failure with CI=true.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lockmgr_client::{AnyTransport, ClientError, ConnectError, LockClient, TransportSpec};
use lockmgr_coord::{Coordinator, LocalEtcd, LocalEtcdError};
use lockmgr_engine::{FileId, LockRange, Reply, Status};
use lockmgr_proto::{ClusterKey, RejectReason};
use lockmgr_transport::afxdp::XdpOptions;
use lockmgr_transport::eth::{EthConfig, MacAddr};
use lockmgr_transport::netns::{client_mac, star_or_skip, NetnsPair, NetnsStar, IFACE};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::{FabricKey, SpinConfig};

#[path = "support/replica_node.rs"]
mod replica_node;
use replica_node::{
    connect_with, key_file, lock, open, options, resume_with, unlock, KEY, TIMEOUT,
};
/// Client namespaces of the star.
const LM_A: usize = 0;
const LM_B: usize = 1;
const NODE1: usize = 2;
const NODE2: usize = 3;
/// The replicas' second interface (AF_XDP: the standby's link).
const LINK_IFACE: &str = "veth1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Medium {
    AfPacket,
    AfXdp,
}

impl Medium {
    fn kind(self) -> &'static str {
        match self {
            Medium::AfPacket => "afpacket",
            Medium::AfXdp => "afxdp",
        }
    }
}

/// A replica's second interface's MAC (`veth1` in its namespace).
fn link_mac(client: usize) -> MacAddr {
    MacAddr([0x02, 0x6c, 0x6d, 0x00, 0x02, client as u8])
}

fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} (CI=true: missing capabilities fail instead of skipping)");
    }
    eprintln!("SKIPPED: {what}");
}

/// A child process of this test, killed (by PID) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies bytes from `from` to `to` until either end closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// A loopback port in namespace `ns` whose connections are relayed to `target` (etcd, in the
/// test's namespace). The listener lives in `ns` (made by a thread that entered it); the
/// relay threads connect from the test's namespace. They end with the test process.
fn relay_into(ns: &str, target: std::net::SocketAddr) -> u16 {
    let listener = NetnsPair::run_in(ns, || TcpListener::bind("127.0.0.1:0"))
        .expect("enter namespace")
        .expect("relay listener");
    let port = listener.local_addr().expect("relay addr").port();
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { continue };
            let Ok(outbound) = TcpStream::connect(target) else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (Ok(i2), Ok(o2)) = (inbound.try_clone(), outbound.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || pump(inbound, outbound));
            std::thread::spawn(move || pump(o2, i2));
        }
    });
    port
}

struct Etcd {
    local: LocalEtcd,
    cluster: String,
    addr: std::net::SocketAddr,
}

fn start_etcd() -> Option<Etcd> {
    match LocalEtcd::start() {
        Ok(local) => {
            let addr = local
                .endpoint()
                .trim_start_matches("http://")
                .parse()
                .expect("etcd endpoint");
            let cluster = format!(
                "etheth-{}",
                local.endpoint().rsplit(':').next().unwrap_or("0")
            );
            Some(Etcd {
                local,
                cluster,
                addr,
            })
        }
        Err(LocalEtcdError::NotInstalled) => {
            missing("etcd not installed (apt-get install etcd-server)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn coordinator(etcd: &Etcd) -> Result<Coordinator, lockmgr_coord::CoordError> {
    etcd.local.coordinator(&etcd.cluster)
}

/// Waits until etcd's configuration satisfies `ok`; returns it.
fn wait_config(
    etcd: &Etcd,
    what: &str,
    ok: impl Fn(&lockmgr_coord::Configuration) -> bool,
) -> lockmgr_coord::Configuration {
    let mut c = coordinator(etcd).expect("etcd");
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = c.read() {
            if ok(&s.config) {
                return s.config;
            }
        }
        assert!(start.elapsed() < TIMEOUT * 3, "etcd never showed {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The times (since the test's kill) at which lm-b's log said it suspected its primary.
fn follow_log(
    name: &str,
    stderr: std::process::ChildStderr,
    suspected: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
) {
    use std::io::BufRead;
    let name = name.to_owned();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if line.contains("primary lost: asking to be primary") {
                let mut s = suspected.lock().unwrap_or_else(|e| e.into_inner());
                s.get_or_insert_with(Instant::now);
            }
            eprintln!("[{name}] {line}");
        }
    });
}

/// What every replica of one test is started with.
struct Setup<'a> {
    star: &'a NetnsStar,
    medium: Medium,
    etcd: &'a Etcd,
    key_file: &'a std::path::Path,
    /// When the standby's log said it suspected its primary.
    suspected: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Setup<'_> {
    /// lockmgrd as replica `name` in client namespace `client` of the star, serving on
    /// `veth0` (AF_XDP: the standby link on `veth1`), reaching etcd through its relay
    /// `etcd_port`. No `--advertise`: a raw-Ethernet replica is recorded at its interface's MAC.
    fn start_replica(&self, client: usize, name: &str, etcd_port: u16) -> Proc {
        let log = std::env::var("REPLICA_LOG").unwrap_or_else(|_| "info".into());
        let mut command =
            NetnsPair::command_in(&self.star.clients[client], env!("CARGO_BIN_EXE_lockmgrd"));
        command
            .args(["--transport", self.medium.kind(), "--interface", IFACE])
            .arg("--cluster-key-file")
            .arg(self.key_file)
            .args(["--spin-us", "0", "--liveness-ms", "2000"])
            .args(["--replica-name", name, "--etcd"])
            .arg(format!("http://127.0.0.1:{etcd_port}"))
            .args(["--cluster-name", &self.etcd.cluster, "--failover-ms", "100"])
            .args(["--log", &log]);
        if self.medium == Medium::AfXdp {
            command.args(["--link-interface", LINK_IFACE]);
        }
        // `ip netns exec` execs lockmgrd in place: the child's PID is lockmgrd's.
        let mut child = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lockmgrd");
        if let Some(stderr) = child.stderr.take() {
            follow_log(name, stderr, self.suspected.clone());
        }
        Proc(child)
    }
}

/// A node's transport to the replica at `server`, opened on `veth0` of namespace `ns`.
fn node_transport(medium: Medium, ns: &str, server: MacAddr) -> Result<AnyTransport, ClientError> {
    let cfg = ReliableConfig {
        spin: SpinConfig::never(),
        fabric_key: Some(FabricKey::new(
            ClusterKey::new(KEY).expect("key").fabric_secret(),
        )),
        connect_timeout: Duration::from_millis(500),
        keepalive: Some(Duration::from_millis(5)),
        ..ReliableConfig::default()
    };
    let eth = EthConfig::new(IFACE);
    let spec = match medium {
        Medium::AfPacket => TransportSpec::Afpacket { eth, server, cfg },
        Medium::AfXdp => TransportSpec::Afxdp {
            eth,
            xdp: XdpOptions::default(),
            server,
            cfg,
        },
    };
    NetnsPair::run_in(ns, move || lockmgr_client::connect(&spec))
        .expect("enter namespace")
        .map_err(|e| match e {
            ConnectError::Transport { source, .. } => ClientError::Transport(source),
            other => panic!("{other}"),
        })
}

fn connect(medium: Medium, ns: &str, server: MacAddr, name: &str) -> LockClient<AnyTransport> {
    connect_with(name, server, || node_transport(medium, ns, server))
}

/// Resumes `old`'s session on the replica at `server`. `old` is dropped first: over AF_XDP
/// its socket holds the node's interface queue.
fn resume(
    medium: Medium,
    ns: &str,
    server: MacAddr,
    name: &str,
    old: LockClient<AnyTransport>,
) -> LockClient<AnyTransport> {
    let point = old.resume_point();
    drop(old);
    resume_with(name, server, point, || node_transport(medium, ns, server))
}

fn standby_takes_over(medium: Medium) {
    let test = format!("replication over {}", medium.kind());
    let Some(star) = star_or_skip(&test, 4, 1500) else {
        return;
    };
    if medium == Medium::AfXdp {
        for r in [LM_A, LM_B] {
            star.add_port(r, LINK_IFACE, link_mac(r), 1500)
                .expect("second interface");
        }
    }
    let Some(etcd) = start_etcd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = key_file(&dir);
    let suspected = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let relay_a = relay_into(&star.clients[LM_A], etcd.addr);
    let relay_b = relay_into(&star.clients[LM_B], etcd.addr);
    let (mac_a, mac_b) = (client_mac(LM_A), client_mac(LM_B));

    let setup = Setup {
        star: &star,
        medium,
        etcd: &etcd,
        key_file: &key_file,
        suspected: suspected.clone(),
    };
    let mut a = setup.start_replica(LM_A, "lm-a", relay_a);
    let first = wait_config(&etcd, "lm-a primary", |c| c.primary.name == "lm-a");
    // Recorded at its interface's MAC, which is where the standby and the nodes reach it.
    assert_eq!(first.primary.address, mac_a.to_string());
    let _b = setup.start_replica(LM_B, "lm-b", relay_b);
    // The standby attached over raw Ethernet, installed the snapshot and caught up: only
    // then does the primary record it.
    let recorded = wait_config(&etcd, "lm-b recorded as standby", |c| {
        c.primary.name == "lm-a"
            && c.standbys
                .iter()
                .any(|m| m.name == "lm-b" && m.address == mac_b.to_string())
    });

    let ns1 = star.clients[NODE1].clone();
    let ns2 = star.clients[NODE2].clone();
    // A standby takes no node sessions.
    match node_transport(medium, &ns1, mac_b)
        .and_then(|t| LockClient::connect(t, &options("early")))
    {
        Err(ClientError::Rejected(RejectReason::NotPrimary)) => {}
        other => panic!("standby accepted a node: {:?}", other.map(|c| c.session())),
    }

    let file = FileId(0xe7e7);
    let range = LockRange {
        offset: 0,
        length: 100,
        exclusive: true,
    };
    let later = LockRange {
        offset: 1000,
        length: 100,
        exclusive: true,
    };
    let mut n1 = connect(medium, &ns1, mac_a, "node1");
    let mut n2 = connect(medium, &ns2, mac_a, "node2");
    let o1 = open(&mut n1, file);
    let o2 = open(&mut n2, file);
    assert_eq!(lock(&mut n1, o1, range), Reply::Done(Status::Success));
    assert_eq!(
        lock(&mut n2, o2, range),
        Reply::Done(Status::LockNotGranted)
    );

    // Kill the primary without warning.
    let killed = Instant::now();
    let _ = a.0.kill();
    let _ = a.0.wait();
    let promoted_config = wait_config(&etcd, "lm-b promoted", |c| c.primary.name == "lm-b");
    let promoted = killed.elapsed();
    assert!(promoted_config.epoch > recorded.epoch);

    // node1 continues its session on the new primary and is granted a new lock: the first
    // grant after the kill.
    let mut n1 = resume(medium, &ns1, mac_b, "node1", n1);
    assert_eq!(lock(&mut n1, o1, later), Reply::Done(Status::Success));
    let first_grant = killed.elapsed();
    let mut n2 = resume(medium, &ns2, mac_b, "node2", n2);
    let resumed = killed.elapsed();
    let status = n1.status(TIMEOUT).expect("status");
    assert!(
        status.contains(&format!(
            "replica lm-b role primary epoch {}",
            promoted_config.epoch
        )),
        "{status}"
    );
    let suspected_after = suspected
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| t.saturating_duration_since(killed));
    eprintln!(
        "failover over {}: lm-b suspected its primary {suspected_after:?} after SIGKILL, etcd \
         names it primary after {promoted:?}, first lock granted after {first_grant:?}, both \
         nodes resumed after {resumed:?}",
        medium.kind()
    );
    // node1's locks survived the failover: node2 still cannot have them.
    assert_eq!(
        lock(&mut n2, o2, range),
        Reply::Done(Status::LockNotGranted)
    );
    assert_eq!(
        lock(&mut n2, o2, later),
        Reply::Done(Status::LockNotGranted)
    );
    // node1 still holds the first under its open: it releases it, then node2 gets it.
    assert_eq!(unlock(&mut n1, o1, range), Reply::Done(Status::Success));
    assert_eq!(lock(&mut n2, o2, range), Reply::Done(Status::Success));
    drop(n1);
    drop(n2);
}

#[test]
fn standby_takes_over_over_af_packet() {
    standby_takes_over(Medium::AfPacket);
}

#[test]
fn standby_takes_over_over_af_xdp() {
    standby_takes_over(Medium::AfXdp);
}
