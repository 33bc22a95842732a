//! Test harness for the all-active cluster: one real `lockmgrd` process (shared memory) and
//! several real `smbd` processes serving one directory through it, plus the Python
//! smbprotocol driver (`cluster_client.py`) that talks to two nodes at once.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const USER: &str = "alice";
pub const PASS: &str = "secret";
pub const USER2: &str = "bob";
pub const PASS2: &str = "pass2";
pub const SHARE: &str = "data";
pub const FS_ID: &str = "0x6c757374";

include!("../support/tools.rs");

/// The lockmgrd binary: $SMBD_LOCKMGRD, else next to our smbd (same target dir), else built
/// there with cargo (smbd cannot name another package's binary as a dependency).
pub fn lockmgrd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SMBD_LOCKMGRD") {
            return PathBuf::from(p);
        }
        let smbd = Path::new(env!("CARGO_BIN_EXE_smbd"));
        let dir = smbd.parent().expect("smbd has a directory");
        let cand = dir.join("lockmgrd");
        let target_dir = dir.parent().expect("profile dir has a parent");
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "-q", "-p", "lockmgrd", "--bins"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            c.arg("--release");
        }
        // Always run cargo: it is a no-op when lockmgrd is up to date, and a stale binary
        // would test old lock-manager code.
        let st = c.status().expect("run cargo build -p lockmgrd");
        assert!(st.success(), "cargo build -p lockmgrd failed");
        assert!(cand.exists(), "{} missing after build", cand.display());
        cand
    })
    .clone()
}

/// Reads `smbd listening on ADDR` and returns the port.
fn read_port(child: &mut Child) -> u16 {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read smbd stdout");
    line.trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected smbd output {line:?}"))
}

pub struct Node {
    pub child: Option<Child>,
    pub port: u16,
    pub name: String,
    pub log: PathBuf,
}

impl Node {
    /// SIGKILL: the node dies without closing anything (its lockmgrd session drops).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How the nodes reach lockmgrd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockTransportKind {
    /// Shared memory (one host).
    Shm,
    /// Reliable UDP on loopback.
    Udp,
    /// Raw Ethernet through AF_PACKET: lockmgrd and each node in their own network namespace
    /// on one bridge (lockmgr_transport::netns::NetnsStar); SMB traffic crosses the bridge too.
    AfPacket,
    /// As AfPacket, through AF_XDP sockets.
    AfXdp,
    /// Reliable UDP over the bridge of the same namespaces as AfPacket (lockmgrd listens on
    /// `EthNet::SERVER_IP`): a node can be partitioned from lockmgrd with `tc netem`.
    UdpNetns,
}

/// The namespaces of an Ethernet cluster and the nodes' IPv4 addresses on the bridge.
pub struct EthNet {
    pub star: lockmgr_transport::netns::NetnsStar,
    pub kind: LockTransportKind,
}

impl EthNet {
    pub const SERVER_IP: &'static str = "10.231.0.1";
    /// lockmgrd's UDP port in a `UdpNetns` cluster.
    pub const UDP_PORT: u16 = 7500;
    pub fn node_ip(i: usize) -> String {
        format!("10.231.0.{}", i + 2)
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub share: PathBuf,
    pub socket: PathBuf,
    /// UDP: lockmgrd's ADDR:PORT.
    pub udp: Option<String>,
    /// AF_PACKET / AF_XDP: the namespaces (dropped last: removes them).
    pub eth: Option<EthNet>,
    pub key: PathBuf,
    pub lockmgrd: Option<Child>,
    /// A replicated lock manager: etcd and the second replica (the first is `lockmgrd`).
    pub replication: Option<Replication>,
    pub nodes: Vec<Node>,
    pub client_conf: PathBuf,
    break_timeout_ms: Option<u64>,
    server_extra: String,
    share_extra: String,
    lockmgrd_args: Vec<String>,
    /// `ClusterOptions::node_mounts`: node `i`'s mount of `share`.
    pub mounts: Vec<PathBuf>,
    log_filter: Option<String>,
}

#[derive(Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// false: every node runs its own in-process lock engine (the broken "cluster" the
    /// cross-node tests must detect).
    pub shared_lockmgr: bool,
    /// lockmgrd's oplock/lease break acknowledgement timeout.
    pub break_timeout_ms: Option<u64>,
    /// How nodes reach lockmgrd.
    pub transport: LockTransportKind,
    /// Extra `[server]` lines of every node (the default configuration otherwise); `{node}`
    /// stands for the node's name (node1, node2, ...).
    pub server_extra: String,
    /// Extra lines of the share's `[[share]]` table on every node.
    pub share_extra: String,
    /// UDP only: two lockmgrd replicas (primary + standby, epochs in a private etcd) instead
    /// of one; nodes list both.
    pub replicated: bool,
    /// Extra command-line arguments of the (first) lockmgrd.
    pub lockmgrd_args: Vec<String>,
    /// Each node serves the share through its own bindfs (FUSE) mount of the one directory: a
    /// cluster filesystem in miniature, where a node's inotify sees only what goes through its
    /// own mount, as on NFS or CephFS. `Cluster::mount` is node `i`'s.
    pub node_mounts: bool,
    /// The nodes' RUST_LOG (default: $SMBD_TEST_LOG, else "info").
    pub log_filter: Option<String>,
}

/// The pieces of a replicated lock manager in a test cluster.
pub struct Replication {
    /// The standby's ADDR:PORT and process.
    pub standby_addr: String,
    pub standby: Option<Child>,
    // Dropped after the standby (fields drop in order): the replicas never outlive etcd.
    etcd: lockmgr_coord::LocalEtcd,
}

impl Drop for Replication {
    fn drop(&mut self) {
        if let Some(mut c) = self.standby.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 2,
            shared_lockmgr: true,
            break_timeout_ms: None,
            transport: LockTransportKind::Shm,
            server_extra: String::new(),
            share_extra: String::new(),
            replicated: false,
            lockmgrd_args: Vec::new(),
            node_mounts: false,
            log_filter: None,
        }
    }
}

impl Cluster {
    pub fn start(opts: ClusterOptions) -> Cluster {
        Self::try_start(opts).expect("network namespaces are needed for this transport")
    }

    /// As [`Cluster::start`]; `None` when the transport needs network namespaces and this
    /// machine cannot make them (skipped with a message; a failure with CI=true).
    pub fn try_start(opts: ClusterOptions) -> Option<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        give_share_to_test_users(dir.path(), &share);
        let users = dir.path().join("users");
        write_users_file(&users, &[(USER, PASS), (USER2, PASS2)]);
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, rand_key()).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let socket = dir.path().join("lockmgr.sock");
        let client_conf = dir.path().join("client.conf");
        std::fs::write(
            &client_conf,
            "[global]\nclient min protocol = SMB2_02\nclient max protocol = SMB3_11\n",
        )
        .unwrap();
        let eth = match opts.transport {
            LockTransportKind::AfPacket
            | LockTransportKind::AfXdp
            | LockTransportKind::UdpNetns => {
                let star = lockmgr_transport::netns::star_or_skip("cluster", opts.nodes, 1500)?;
                let ip = |ns: &str, dev: &str, addr: String| {
                    let st = Command::new("ip")
                        .args(["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])
                        .status()
                        .expect("run ip");
                    assert!(st.success(), "ip addr add {addr} in {ns} failed");
                };
                ip(
                    &star.server,
                    lockmgr_transport::netns::BRIDGE,
                    EthNet::SERVER_IP.to_string(),
                );
                for (i, c) in star.clients.iter().enumerate() {
                    ip(c, lockmgr_transport::netns::IFACE, EthNet::node_ip(i));
                }
                Some(EthNet {
                    star,
                    kind: opts.transport,
                })
            }
            _ => None,
        };
        let free_udp = || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().to_string()
        };
        let udp = match opts.transport {
            LockTransportKind::UdpNetns => {
                Some(format!("{}:{}", EthNet::SERVER_IP, EthNet::UDP_PORT))
            }
            _ => (opts.transport == LockTransportKind::Udp || opts.replicated).then(free_udp),
        };
        let replication = if opts.replicated {
            let etcd = match lockmgr_coord::LocalEtcd::start() {
                Ok(e) => e,
                Err(lockmgr_coord::LocalEtcdError::NotInstalled) => {
                    missing("etcd not installed (apt-get install etcd-server)");
                    return None;
                }
                Err(e) => panic!("{e}"),
            };
            Some(Replication {
                standby_addr: free_udp(),
                standby: None,
                etcd,
            })
        } else {
            None
        };
        let mut mounts = Vec::new();
        if opts.node_mounts {
            if !have("bindfs") {
                missing("bindfs not installed (apt-get install bindfs)");
                return None;
            }
            for i in 1..=opts.nodes {
                let m = dir.path().join(format!("mnt-node{i}"));
                std::fs::create_dir(&m).unwrap();
                // use_ino: the backing inode numbers, so every node derives the same file ids;
                // allow_other and --create-as-user: smbd works as the SMB user's uid.
                let st = Command::new("bindfs")
                    .args(["-o", "use_ino,allow_other", "--create-as-user"])
                    .arg(&share)
                    .arg(&m)
                    .status()
                    .expect("run bindfs");
                assert!(st.success(), "bindfs {} failed", m.display());
                mounts.push(m);
            }
        }
        let mut cluster = Cluster {
            mounts,
            log_filter: opts.log_filter.clone(),
            dir,
            share,
            socket,
            udp,
            eth,
            key,
            lockmgrd: None,
            replication,
            nodes: Vec::new(),
            client_conf,
            break_timeout_ms: opts.break_timeout_ms,
            server_extra: opts.server_extra.clone(),
            share_extra: opts.share_extra.clone(),
            lockmgrd_args: opts.lockmgrd_args.clone(),
        };
        if opts.shared_lockmgr {
            cluster.start_lockmgrd();
        }
        if cluster.replication.is_some() {
            cluster.start_standby();
        }
        for i in 1..=opts.nodes {
            let node = cluster.start_node(i, &users, opts.shared_lockmgr);
            cluster.nodes.push(node);
        }
        Some(cluster)
    }

    /// Where clients reach node `i`.
    pub fn host(&self, i: usize) -> String {
        match self.eth {
            Some(_) => EthNet::node_ip(i),
            None => "127.0.0.1".into(),
        }
    }

    /// A command for an SMB client: in the lockmgrd namespace (which reaches every node over
    /// the bridge) for Ethernet clusters, else on this host.
    pub fn client_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.eth {
            Some(e) => lockmgr_transport::netns::NetnsPair::command_in(&e.star.server, program),
            None => Command::new(program),
        }
    }

    /// Where node `i` (1-based) serves the share from.
    pub fn node_share(&self, i: usize) -> &Path {
        self.mounts.get(i - 1).unwrap_or(&self.share)
    }

    fn start_node(&self, i: usize, users: &Path, shared: bool) -> Node {
        let name = &format!("node{i}");
        let cfg = self.dir.path().join(format!("{name}.toml"));
        let mut text = format!(
            "[server]\nnetbios_name = \"{}\"\nusers = \"{}\"\ncluster_fs_id = \"{FS_ID}\"\n{}\n\n[[share]]\nname = \"{SHARE}\"\npath = \"{}\"\n{}\n",
            name.to_uppercase(),
            users.display(),
            self.server_extra.replace("{node}", name),
            self.node_share(i).display(),
            self.share_extra
        );
        if shared {
            let (transport, connect) = match (&self.udp, &self.eth) {
                (Some(addr), _) => match &self.replication {
                    Some(r) => ("udp", format!("{addr},{}", r.standby_addr)),
                    None => ("udp", addr.clone()),
                },
                (None, Some(e)) if e.kind == LockTransportKind::AfXdp => {
                    ("afxdp", lockmgr_transport::netns::MAC_A.to_string())
                }
                (None, Some(_)) => ("afpacket", lockmgr_transport::netns::MAC_A.to_string()),
                (None, None) => ("shm", self.socket.display().to_string()),
            };
            text.push_str(&format!(
                "\n[lockmgr]\ntransport = \"{transport}\"\nconnect = \"{connect}\"\ncluster_key_file = \"{}\"\nnode_name = \"{name}\"\n",
                self.key.display()
            ));
            if self.eth.is_some() {
                text.push_str(&format!(
                    "interface = \"{}\"\n",
                    lockmgr_transport::netns::IFACE
                ));
            }
        }
        std::fs::write(&cfg, text).unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        let index = self.nodes.len();
        let (mut cmd, listen) = match &self.eth {
            Some(e) => (
                lockmgr_transport::netns::NetnsPair::command_in(
                    &e.star.clients[index],
                    env!("CARGO_BIN_EXE_smbd"),
                ),
                format!("{}:0", EthNet::node_ip(index)),
            ),
            None => (
                Command::new(env!("CARGO_BIN_EXE_smbd")),
                "127.0.0.1:0".to_string(),
            ),
        };
        let mut child = cmd
            .arg("--config")
            .arg(&cfg)
            .arg("--listen")
            .arg(listen)
            .env(
                "RUST_LOG",
                self.log_filter
                    .clone()
                    .unwrap_or_else(|| std::env::var("SMBD_TEST_LOG").unwrap_or("info".into())),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn smbd");
        let port = read_port(&mut child);
        Node {
            child: Some(child),
            port,
            name: name.to_string(),
            log,
        }
    }

    /// Starts lockmgrd (again: its log is appended to) and waits until it listens.
    pub fn start_lockmgrd(&mut self) {
        let path = self.dir.path().join("lockmgrd.log");
        // A replica decides its role (through etcd) just after it listens: the standby must
        // not start before, or it may take the primary's place (seen once in CI under load).
        let roles = |l: &str| {
            l.matches("first replica: primary").count()
                + l.matches("joining the primary as standby").count()
        };
        let (before, roles_before) = std::fs::read_to_string(&path)
            .map(|l| (l.matches("lockmgrd listening").count(), roles(&l)))
            .unwrap_or((0, 0));
        let replicated = self.replication.is_some();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut c = match &self.eth {
            Some(e) => {
                lockmgr_transport::netns::NetnsPair::command_in(&e.star.server, lockmgrd_bin())
            }
            None => Command::new(lockmgrd_bin()),
        };
        match (&self.udp, &self.eth) {
            (Some(addr), _) => c.args(["--transport", "udp", "--listen", addr]),
            (None, Some(e)) => c
                .arg("--transport")
                .arg(if e.kind == LockTransportKind::AfXdp {
                    "afxdp"
                } else {
                    "afpacket"
                })
                .args(["--interface", lockmgr_transport::netns::BRIDGE]),
            (None, None) => c.args(["--transport", "shm", "--listen"]).arg(&self.socket),
        };
        c.arg("--cluster-key-file")
            .arg(&self.key)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(r) = &self.replication {
            c.args(["--replica-name", "lm-a", "--etcd", r.etcd.endpoint()])
                .args(["--cluster-name", "test", "--failover-ms", "100"]);
        }
        if let Some(t) = self.break_timeout_ms {
            c.arg("--break-timeout-ms").arg(t.to_string());
        }
        c.args(&self.lockmgrd_args);
        self.lockmgrd = Some(c.spawn().expect("spawn lockmgrd"));
        // The shm socket file exists a moment before lockmgrd listens on it: wait for
        // lockmgrd's own word, or the first node may start while lockmgrd refuses it.
        let ready = || {
            std::fs::read_to_string(&path).is_ok_and(|l| {
                l.matches("lockmgrd listening").count() > before
                    && (!replicated || roles(&l) > roles_before)
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            assert!(Instant::now() < deadline, "lockmgrd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The standby replica (second lockmgrd); returns once the primary has recorded it.
    fn start_standby(&mut self) {
        let path = self.dir.path().join("lockmgrd-standby.log");
        let log = std::fs::File::create(&path).unwrap();
        let r = self.replication.as_mut().expect("replicated cluster");
        let child = Command::new(lockmgrd_bin())
            .args(["--transport", "udp", "--listen", &r.standby_addr])
            .arg("--cluster-key-file")
            .arg(&self.key)
            .args(["--replica-name", "lm-b", "--etcd", r.etcd.endpoint()])
            .args(["--cluster-name", "test", "--failover-ms", "100"])
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn standby lockmgrd");
        r.standby = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&path).is_ok_and(|l| l.contains("recorded as standby")) {
            if Instant::now() >= deadline {
                // Both replicas' logs say why (a failure seen once in CI under load).
                panic!("the standby was never recorded\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL lockmgrd.
    pub fn kill_lockmgrd(&mut self) {
        if let Some(mut c) = self.lockmgrd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// smbclient against node `i`; returns (no error reported, output).
    pub fn smbclient(&self, i: usize, cwd: &Path, cmds: &str) -> (bool, String) {
        let out = self
            .client_command("smbclient")
            .current_dir(cwd)
            .arg(format!("//{}/{SHARE}", self.host(i)))
            .args(["-p", &self.port(i).to_string()])
            .arg("-s")
            .arg(&self.client_conf)
            .args(["-U", &format!("{USER}%{PASS}"), "-c", cmds])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success() && !text.contains("NT_STATUS_"), text)
    }

    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Every process's log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let lm = std::fs::read_to_string(self.dir.path().join("lockmgrd.log")).unwrap_or_default();
        s.push_str(&format!("--- lockmgrd ---\n{lm}\n"));
        if let Ok(st) = std::fs::read_to_string(self.dir.path().join("lockmgrd-standby.log")) {
            s.push_str(&format!("--- lockmgrd standby ---\n{st}\n"));
        }
        for n in &self.nodes {
            s.push_str(&format!("--- {} ---\n{}\n", n.name, n.log()));
        }
        if let Some(st) = self.status() {
            s.push_str(&format!("--- lockmgrctl status ---\n{st}\n"));
        }
        s
    }

    /// `lockmgrctl status` equivalent through a fresh session (needs lockmgrctl next to
    /// lockmgrd; returns None if it is not there).
    pub fn status(&self) -> Option<String> {
        let ctl = lockmgrd_bin().with_file_name("lockmgrctl");
        // Over Ethernet the nodes' interfaces are taken (AF_XDP binds a whole queue).
        if !ctl.exists() || self.eth.is_some() {
            return None;
        }
        let mut c = Command::new(ctl);
        match &self.udp {
            Some(addr) => c.args(["--transport", "udp", "--connect", addr]),
            None => c
                .args(["--transport", "shm", "--connect"])
                .arg(&self.socket),
        };
        let out = c
            .arg("--cluster-key-file")
            .arg(&self.key)
            .arg("status")
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if let Some(mut c) = self.lockmgrd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in &self.mounts {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

fn rand_key() -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
    let mut x = seed | 1;
    for _ in 0..32 {
        // xorshift: a test key only needs to be unpredictable enough not to collide.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        k.push(x as u8);
    }
    k
}

/// What a client script driven by [`drive_marked_script`] did.
pub struct ScriptRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Whether the script printed the marker (and `act` ran).
    pub acted: bool,
}

/// Runs a client script spawned with piped stdin, stdout and stderr that prints `marker` on a
/// line of its own when the harness should act: reads its output up to the marker, runs
/// `act`, tells the script to go on (a line on its stdin), and collects the rest.
pub fn drive_marked_script(mut child: Child, marker: &str, act: impl FnOnce()) -> ScriptRun {
    use std::io::{Read, Write};
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut seen = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).unwrap();
        seen.push_str(&line);
        if n == 0 || line.trim() == marker {
            break;
        }
    }
    let acted = line.trim() == marker;
    if acted {
        act();
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"go\n").unwrap();
    }
    stdout.read_to_string(&mut seen).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    ScriptRun {
        status,
        stdout: seen,
        stderr,
        acted,
    }
}

pub fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster_common/cluster_client.py")
}

/// Runs one smbtorture suite against node `node` of `cluster`; returns the subunit text.
pub fn run_smbtorture(cluster: &Cluster, node: usize, suite: &str) -> String {
    let out = cluster
        .client_command("smbtorture")
        .arg(format!("//{}/{SHARE}", cluster.host(node)))
        .arg("-p")
        .arg(cluster.port(node).to_string())
        .arg("-s")
        .arg(&cluster.client_conf)
        .arg("-U")
        .arg(format!("{USER}%{PASS}"))
        .arg("--target=samba3")
        .arg("--format=subunit")
        .arg("--fullname")
        .arg(format!("--option=torture:user2name={USER2}"))
        .arg(format!("--option=torture:user2password={PASS2}"))
        .arg(suite)
        .output()
        .expect("run smbtorture");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Known failures of the suites run against a cluster node.
pub fn cluster_known_failures() -> Vec<String> {
    read_known_failures("cluster-known-failures.txt")
}
