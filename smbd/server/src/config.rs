//! Server configuration (TOML).
//!
//! ```toml
//! [server]
//! # Addresses to listen on; `--listen` on the command line adds more.
//! listen = ["0.0.0.0:445"]
//! # NetBIOS name of this server (used in NTLM target info).
//! netbios_name = "SMBD"
//! # NTLM domain / workgroup name.
//! domain = "WORKGROUP"
//! # Users file (`name:uid:gid:NT-hash[:groups]` lines, see smb_auth::users::UserDb), managed
//! # with `smbd passwd`. Refused at start when group or others can access it (like ssh).
//! users = "/etc/smbd/users"
//! # Require signing on every session (clients that cannot sign are refused). Default on, as
//! # Windows Server 2025 does.
//! signing_required = true
//! # Encrypt every session (SMB 3.x only; 2.x clients are refused on encrypted shares).
//! encrypt = false
//! # Accept anonymous (null) session setups. Even then an anonymous session reaches only IPC$
//! # and shares with `guest_ok = true`, and never counts as Authenticated Users.
//! allow_anonymous = false
//! # The Unix account anonymous sessions run as on `guest_ok` shares.
//! guest_account = "nobody"
//! # Number of io_uring worker threads (0 = one per CPU).
//! workers = 0
//! # Cluster-wide filesystem identity used to derive file ids; defaults to statfs f_fsid of the
//! # share root. Set it on every node of a cluster serving the same shared filesystem.
//! # cluster_fs_id = "0x1234"
//! # Multichannel: advertise SMB2_GLOBAL_CAP_MULTI_CHANNEL at 3.x and accept session binding.
//! multichannel = true
//! # Which channels of a multichannel session an oplock break goes to (MS-SMB2 3.3.4.6):
//! #   "each" (default): the channels in the order they were established, the next one each
//! #     time a channel fails before the client's TCP acknowledged the break (the
//! #     specification; Samba's default);
//! #   "latest": the most recently bound channel only, never retried (Windows Server; Samba's
//! #     `smb2 disable oplock break retry = yes`).
//! # Lease breaks are retried on each channel either way.
//! # oplock_break_channels = "each"
//! # Prometheus text endpoint (GET /metrics; off when absent). Metrics are unauthenticated: an
//! # address that is not loopback is refused unless metrics_allow_remote = true.
//! # metrics_listen = "127.0.0.1:9445"
//! # metrics_allow_remote = false
//! # Operator view (sessions, open files, byte-range locks of this node, like smbstatus):
//! # `smbd status --socket PATH`. The unix socket is created 0600 (smbd's user and root).
//! # status_socket = "/run/smbd/status.sock"
//! # How CHANGE_NOTIFY watchers learn of changes smbd did not make itself:
//! #   "auto" (default): per share, "local" on a filesystem of this machine (ext4, XFS, Btrfs,
//! #     tmpfs, ZFS...: nodes sharing it run here), "cluster" on any other (NFS, CephFS, GPFS,
//! #     Lustre, GFS2, FUSE...);
//! #   "local": inotify only (it sees every process on this machine, other nodes included);
//! #   "cluster": inotify for this machine's processes, and lockmgrd carries each node's changes
//! #     (through SMB or not) to the nodes whose clients watch the directory;
//! #   "lockmgr": no inotify; only changes made through smbd, carried between nodes by lockmgrd.
//! # change_notify = "auto"
//! # SMB Direct: the unix socket smbdirectd connects to (`smbdirectd --forward-unix PATH`),
//! # created 0600 in a 0700 directory; only root (and the uids listed) may connect.
//! # rdma_proxy_socket = "/run/clustersmb/smbdirect.sock"
//! # rdma_proxy_uids = []
//!
//! [[share]]
//! name = "data"
//! path = "/srv/data"
//! read_only = false
//! encrypt = false
//! # Who may connect: user names and `@group` (name or gid); empty = every configured user.
//! valid_users = ["alice", "@staff"]
//! # Let anonymous sessions in (as `guest_account`); off by default.
//! guest_ok = false
//! # A DFS root (MS-DFSC): its links refer clients to shares on other nodes or clusters
//! # (FSCTL_DFS_GET_REFERRALS; opens below a link fail with STATUS_PATH_NOT_COVERED).
//! # dfs_root = true
//! # dfs_links = [{ path = "link1", targets = ["\\\\node2\\data\\sub"] }]
//!
//! # Where share modes, byte-range locks, oplocks and leases are decided. Without this section
//! # (or with transport = "embedded") the node runs the lock engine in process: a single node.
//! # With any other transport every decision goes to one lockmgrd shared by all nodes of a
//! # cluster (set the same `cluster_fs_id` on every node so file ids agree).
//! [lockmgr]
//! # "embedded" (default) | "shm" (lockmgrd on this host) | "udp" (lockmgrd elsewhere) |
//! # "afpacket" / "afxdp" (raw Ethernet on one L2 segment) | "rdma" (InfiniBand / RoCE).
//! transport = "shm"
//! # shm: path of lockmgrd's unix socket; udp and rdma: ADDR:PORT (rdma: lockmgrd's TCP
//! # side channel); afpacket/afxdp: lockmgrd's MAC address. A replicated lockmgrd: every
//! # replica's address, comma-separated; the node resumes its session on whichever replica
//! # is primary after a failover, keeping every open and lock.
//! connect = "/run/clustersmb/lockmgr.sock"
//! # afpacket/afxdp: the interface that reaches lockmgrd, and the EtherType (default 0x88B5 =
//! # 34997, must match lockmgrd's --ethertype).
//! # interface = "eth1"
//! # ethertype = 34997
//! # rdma: device (default the first), port (default 1), GID index (default automatic).
//! # rdma_device = "mlx5_0"
//! # rdma_port = 1
//! # gid_index = 3
//! # The cluster key shared with lockmgrd (at least 16 bytes).
//! cluster_key_file = "/etc/clustersmb/cluster.key"
//! # How this node appears in `lockmgrctl status` (default: the host name).
//! node_name = "node1"
//! # Busy-poll budget (microseconds) while waiting for lockmgrd's reply before sleeping. The
//! # waiting thread is an SMB worker, and on small machines spinning steals the CPU lockmgrd
//! # needs, so the default is 0.
//! spin_us = 0
//! # A request lockmgrd does not answer in this time counts as a lost session (reconnect).
//! request_timeout_ms = 5000
//! # With several `connect` addresses: a replica silent (or a request unanswered) this long
//! # moves the session to another replica.
//! failover_timeout_ms = 200
//! ```
//!
//! ```toml
//! # Limits and backpressure: what one client can make this server hold. Every key is optional;
//! # the defaults below suit a file server with a few thousand clients.
//! [limits]
//! # SESSION_SETUPs started and not finished on one connection; the next new session gets
//! # STATUS_REQUEST_NOT_ACCEPTED (what Windows answers when it has no room for a session).
//! sessions_in_setup_per_conn = 16
//! # Sessions of one connection, established or in setup; the next new one also gets
//! # STATUS_REQUEST_NOT_ACCEPTED.
//! sessions_per_conn = 1024
//! # Opens of one session / of one connection; more get STATUS_INSUFFICIENT_RESOURCES
//! # (Samba's answer when its open table is full).
//! opens_per_session = 8192
//! opens_per_conn = 16384
//! # Byte-range locks one connection may hold (STATUS_INSUFFICIENT_RESOURCES beyond): bounds
//! # one client's share of the node's lockmgrd session (lockmgrd caps the session itself).
//! locks_per_conn = 65536
//! # Tree connects of one session; more get STATUS_INSUFFICIENT_RESOURCES.
//! trees_per_session = 1024
//! # Requests of one connection waiting asynchronously (blocking locks, creates waiting for a
//! # break, change notifications); a request that could go async beyond this gets
//! # STATUS_INSUFFICIENT_RESOURCES.
//! pending_async_per_conn = 4096
//! # Directory opens of one connection with a CHANGE_NOTIFY outstanding; more get
//! # STATUS_INSUFFICIENT_RESOURCES.
//! notify_watches_per_conn = 1024
//! # Requests in one compound message; a longer chain disconnects the client.
//! max_compound = 1024
//! # Response bytes of one compound: a request whose answer could go over it (by its READ
//! # length or output buffer length) gets STATUS_INSUFFICIENT_RESOURCES. Between 8 MiB +
//! # 64 KiB (one maximal READ) and 15 MiB (a chain is one NetBIOS message, < 16 MiB).
//! max_response_bytes = 12582912
//! # Backpressure: while this many response bytes of a connection wait for the client to
//! # read them, smbd stops reading and processing that connection's requests.
//! output_bytes_per_conn = 16777216
//! # Open files of the whole process (0 = automatic: RLIMIT_NOFILE, raised to its hard limit
//! # at start, minus a headroom of an eighth, at least 64, for accept, lockmgr, io_uring and
//! # directory listings). Connections and file I/O in flight count against it; an open beyond
//! # it gets STATUS_TOO_MANY_OPENED_FILES (what Samba maps EMFILE to), before the process runs
//! # out of descriptors.
//! open_files = 0
//! # One client across all its connections: connections and opens of one source address, and
//! # of one authenticated user (every address it comes from), so that opening more
//! # connections does not multiply the per-connection limits. A SESSION_SETUP on a connection
//! # beyond `connections_per_client` / `connections_per_user` gets
//! # STATUS_REQUEST_NOT_ACCEPTED (as a session beyond the per-connection limits); an open
//! # beyond `opens_per_client` / `opens_per_user` gets STATUS_INSUFFICIENT_RESOURCES.
//! # Windows clients use one connection per server, plus at most 32 channels per session
//! # for multichannel.
//! connections_per_client = 256
//! connections_per_user = 1024
//! opens_per_client = 65536
//! opens_per_user = 65536
//! ```
//!
//! Memory per connection is bounded by these limits: at most `output_bytes_per_conn` plus one
//! compound (`max_response_bytes`) of queued responses, 8 READs/WRITEs of 8 MiB in the ring,
//! one request frame (8 MiB + 64 KiB) being received, plus the per-open and per-session state
//! (about 1 KiB each, so up to 16 MiB at `opens_per_conn`): with the defaults about 116 MiB
//! for a hostile client, and a few hundred KiB for an ordinary one.
//!
//! If lockmgrd is unreachable when smbd starts (or later), smbd keeps serving: requests that
//! need a lock decision (CREATE, LOCK, and I/O checks) fail with a clean NTSTATUS
//! (STATUS_REQUEST_NOT_ACCEPTED from the lock layer) while the node retries the connection
//! every 500 ms in the background. An operator sees the state in smbd's log. Configuration
//! mistakes (unknown transport, missing `connect`, unreadable key file) stop smbd at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Largest READ/WRITE/transact we accept (MS-SMB2 with LARGE_MTU: credit charge covers it).
pub const MAX_IO: u32 = 8 * 1024 * 1024;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    #[serde(default = "default_netbios")]
    pub netbios_name: String,
    #[serde(default = "default_domain")]
    pub domain: String,
    #[serde(default)]
    pub users: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub signing_required: bool,
    #[serde(default)]
    pub encrypt: bool,
    #[serde(default)]
    pub allow_anonymous: bool,
    #[serde(default = "default_guest_account")]
    pub guest_account: String,
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub cluster_fs_id: Option<String>,
    /// Advertise SMB2_GLOBAL_CAP_MULTI_CHANNEL at SMB 3.x and accept session binding
    /// (MS-SMB2 3.3.5.5.2).
    #[serde(default = "default_true")]
    pub multichannel: bool,
    /// Which channels of a multichannel session an oplock break goes to
    /// ([`crate::break_delivery::ChannelPolicy`]).
    #[serde(default)]
    pub oplock_break_channels: crate::break_delivery::ChannelPolicy,
    /// The unix socket smbdirectd (the SMB Direct proxy, `--forward-unix PATH`) connects to:
    /// a connection accepted here is an SMB Direct connection, whose READ/WRITE requests may
    /// use RDMA channels, the data travelling beside the SMB2 messages in payload frames (see
    /// `smbdirect::rw`). smbd trusts what the proxy says about its clients' transport, so this
    /// is not a TCP port any local process could reach: the socket is created 0600 in a
    /// directory smbd creates (or finds) 0700 and owned by its user, and every peer's
    /// credentials (SO_PEERCRED) must name root or one of `rdma_proxy_uids`; others are
    /// disconnected at once, logged and counted (`smbd_rdma_proxy_refused_total`).
    #[serde(default)]
    pub rdma_proxy_socket: Option<PathBuf>,
    /// Uids besides root whose processes may connect to `rdma_proxy_socket` (an smbdirectd
    /// run as a dedicated user).
    #[serde(default)]
    pub rdma_proxy_uids: Vec<u32>,
    /// Where to serve `GET /metrics` (Prometheus text format, `crate::metrics`); off when
    /// absent. Port 0 picks a free port (printed at start).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Allow `metrics_listen` on an address that is not loopback.
    #[serde(default)]
    pub metrics_allow_remote: bool,
    /// Unix socket answering `smbd status --socket PATH` (crate::smbstatus); off when absent.
    #[serde(default)]
    pub status_socket: Option<PathBuf>,
    /// How changes smbd did not make reach CHANGE_NOTIFY watchers ([`ChangeNotify`]).
    #[serde(default)]
    pub change_notify: ChangeNotify,
}

/// `[server] change_notify`: where CHANGE_NOTIFY watchers learn of changes this smbd did not
/// make itself (`crate::dirwatch` for inotify, `Shared::dir_changed` for lockmgrd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeNotify {
    /// Per share, from its filesystem (`crate::fs::machine_local_filesystem`): `Local` on a
    /// filesystem of this machine, `Cluster` on any other.
    #[default]
    Auto,
    /// inotify only: it sees every change, other nodes' included (they run on this machine).
    Local,
    /// inotify sees this machine's processes; lockmgrd carries every node's changes, made
    /// through SMB or not, to the other nodes watching the directory.
    Cluster,
    /// No inotify: changes made through smbd only, carried between nodes by lockmgrd.
    Lockmgr,
}

fn default_netbios() -> String {
    "SMBD".into()
}
fn default_domain() -> String {
    "WORKGROUP".into()
}
fn default_true() -> bool {
    true
}
fn default_guest_account() -> String {
    "nobody".into()
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Vec::new(),
            netbios_name: default_netbios(),
            domain: default_domain(),
            users: None,
            signing_required: true,
            encrypt: false,
            allow_anonymous: false,
            guest_account: default_guest_account(),
            workers: 0,
            cluster_fs_id: None,
            multichannel: true,
            oplock_break_channels: Default::default(),
            rdma_proxy_socket: None,
            rdma_proxy_uids: Vec::new(),
            metrics_listen: None,
            metrics_allow_remote: false,
            status_socket: None,
            change_notify: ChangeNotify::Auto,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub encrypt: bool,
    /// Users (`name`) and groups (`@name` or `@gid`) allowed to connect; empty: every user of
    /// the users file.
    #[serde(default)]
    pub valid_users: Vec<String>,
    /// Anonymous sessions may connect (running as `[server] guest_account`).
    #[serde(default)]
    pub guest_ok: bool,
    /// Continuously available (MS-SMB2 SMB2_SHARE_CAP_CONTINUOUS_AVAILABILITY): clients may
    /// ask for persistent handles, which survive the death of this node (and a lock-manager
    /// failover) when the node uses lockmgrd, and whose writes are written through to stable
    /// storage before they are acknowledged.
    #[serde(default)]
    pub continuous_availability: bool,
    /// The share is a DFS root (MS-DFSC): advertised with SMB2_SHAREFLAG_DFS(_ROOT), and
    /// FSCTL_DFS_GET_REFERRALS answers for it and its `dfs_links`.
    #[serde(default)]
    pub dfs_root: bool,
    /// DFS links of a DFS root: a path below the share that refers clients elsewhere.
    #[serde(default)]
    pub dfs_links: Vec<DfsLinkConfig>,
}

/// One DFS link (`[[share.dfs_links]]`, or inline `dfs_links = [{ path = .., targets = [..] }]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DfsLinkConfig {
    /// Path of the link below the share root (`a` or `a/b`; `\` also separates).
    pub path: String,
    /// UNC targets, `\\server\share[\path]` (TOML basic strings double the backslashes;
    /// `//server/share/path` is accepted too), in the order clients should try them.
    pub targets: Vec<String>,
}

/// A validated DFS link: components without separators, targets as `\server\share[\path]`
/// (one leading backslash, as MS-DFSC 2.2.5.3.1 NetworkAddress carries them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfsLink {
    pub components: Vec<String>,
    pub targets: Vec<String>,
}

fn dfs_components(path: &str) -> Option<Vec<String>> {
    let comps: Vec<String> = path
        .split(['\\', '/'])
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    if comps.is_empty()
        || comps
            .iter()
            .any(|c| c == "." || c == ".." || c.contains(':'))
    {
        return None;
    }
    Some(comps)
}

impl ShareConfig {
    /// The share's DFS links, validated: only on a DFS root, each a clean relative path with
    /// at least one `\\server\share` target, no link inside another.
    pub fn dfs_links(&self) -> Result<Vec<DfsLink>, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("share {} {m}", self.name)));
        if !self.dfs_root && !self.dfs_links.is_empty() {
            return bad("has dfs_links but is not dfs_root".into());
        }
        let mut links: Vec<DfsLink> = Vec::new();
        for l in &self.dfs_links {
            let Some(components) = dfs_components(&l.path) else {
                return bad(format!(
                    "dfs link path {:?} is not a path below the share",
                    l.path
                ));
            };
            if l.targets.is_empty() {
                return bad(format!("dfs link {:?} has no targets", l.path));
            }
            let mut targets = Vec::new();
            for t in &l.targets {
                let unc = t.starts_with("\\\\") || t.starts_with("//");
                let parts: Vec<&str> = t.split(['\\', '/']).filter(|c| !c.is_empty()).collect();
                if !unc || parts.len() < 2 || parts.iter().any(|c| *c == "." || *c == "..") {
                    return bad(format!(
                        "dfs link {:?} target {t:?} is not \\\\server\\share[\\path]",
                        l.path
                    ));
                }
                targets.push(format!("\\{}", parts.join("\\")));
            }
            let prefix_of = |a: &[String], b: &[String]| {
                a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
            };
            if let Some(o) = links.iter().find(|o| {
                prefix_of(&o.components, &components) || prefix_of(&components, &o.components)
            }) {
                return bad(format!(
                    "dfs link {:?} overlaps link {:?}",
                    l.path,
                    o.components.join("/")
                ));
            }
            links.push(DfsLink {
                components,
                targets,
            });
        }
        Ok(links)
    }
}

/// Which lock service the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LockTransport {
    /// The lock engine in process (a single node).
    #[default]
    Embedded,
    /// lockmgrd over shared memory (same host).
    Shm,
    /// lockmgrd over reliable UDP.
    Udp,
    /// lockmgrd over raw Ethernet frames through an AF_PACKET socket.
    Afpacket,
    /// lockmgrd over raw Ethernet frames through an AF_XDP socket (kernel bypass).
    Afxdp,
    /// lockmgrd over RDMA verbs (InfiniBand / RoCE reliable connections).
    Rdma,
}

/// `[lockmgr]`: where lock decisions are made (see the module documentation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockmgrConfig {
    #[serde(default)]
    pub transport: LockTransport,
    #[serde(default)]
    pub connect: Option<String>,
    #[serde(default)]
    pub cluster_key_file: Option<PathBuf>,
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub spin_us: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Several `connect` addresses (a replicated lockmgrd): how long a silent replica or an
    /// unanswered request may take before the session is resumed on another replica.
    #[serde(default = "default_failover_timeout_ms")]
    pub failover_timeout_ms: u64,
    /// afpacket/afxdp: the interface that reaches lockmgrd.
    #[serde(default)]
    pub interface: Option<String>,
    /// afpacket/afxdp: EtherType of lockmgr frames (lockmgrd's `--ethertype`).
    #[serde(default = "default_ethertype")]
    pub ethertype: u16,
    /// rdma: device name (`ibv_devices`); default the first device.
    #[serde(default)]
    pub rdma_device: Option<String>,
    /// rdma: port number (1-based).
    #[serde(default = "default_rdma_port")]
    pub rdma_port: u8,
    /// rdma: GID table index; default automatic (the IPv4-mapped GID on RoCE, 0 on InfiniBand).
    #[serde(default)]
    pub gid_index: Option<u8>,
}

fn default_ethertype() -> u16 {
    lockmgr_transport::eth::DEFAULT_ETHERTYPE
}

fn default_rdma_port() -> u8 {
    1
}

fn default_request_timeout_ms() -> u64 {
    5000
}

fn default_failover_timeout_ms() -> u64 {
    200
}

impl Default for LockmgrConfig {
    fn default() -> Self {
        LockmgrConfig {
            transport: LockTransport::Embedded,
            connect: None,
            cluster_key_file: None,
            node_name: None,
            spin_us: 0,
            request_timeout_ms: default_request_timeout_ms(),
            failover_timeout_ms: default_failover_timeout_ms(),
            interface: None,
            ethertype: default_ethertype(),
            rdma_device: None,
            rdma_port: default_rdma_port(),
            gid_index: None,
        }
    }
}

impl LockmgrConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("[lockmgr] {m}")));
        if self.transport == LockTransport::Embedded {
            return Ok(());
        }
        let Some(connect) = self.connect.as_deref().filter(|c| !c.is_empty()) else {
            return bad(
                "`connect` is needed with a remote lockmgrd (shm: socket path, udp: ADDR:PORT)"
                    .into(),
            );
        };
        // Several comma-separated addresses name the replicas of a replicated lockmgrd.
        for connect in connect.split(',').map(str::trim) {
            match self.transport {
                LockTransport::Udp | LockTransport::Rdma
                    if connect.parse::<SocketAddr>().is_err() =>
                {
                    return bad(format!(
                        "connect = {connect:?}: {:?} needs ADDR:PORT, e.g. \"192.0.2.10:7500\"",
                        self.transport
                    ));
                }
                LockTransport::Afpacket | LockTransport::Afxdp => {
                    if connect.parse::<lockmgr_transport::eth::MacAddr>().is_err() {
                        return bad(format!(
                        "connect = {connect:?}: {:?} needs lockmgrd's MAC address, e.g. \"02:00:00:00:00:01\"",
                        self.transport
                    ));
                    }
                    if self.interface.as_deref().is_none_or(str::is_empty) {
                        return bad(format!(
                            "{:?} needs `interface` (the interface that reaches lockmgrd)",
                            self.transport
                        ));
                    }
                }
                _ => {}
            }
        }
        if self.failover_timeout_ms == 0 {
            return bad("failover_timeout_ms must be positive".into());
        }
        if self.rdma_port == 0 {
            return bad("rdma_port is 1-based".into());
        }
        if self.cluster_key_file.is_none() {
            return bad("`cluster_key_file` is needed with a remote lockmgrd".into());
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms must be positive".into());
        }
        if self.spin_us > 1_000_000 {
            return bad(format!("spin_us = {} is more than a second", self.spin_us));
        }
        if self.node_name.as_deref().is_some_and(|n| n.is_empty()) {
            return bad("node_name must not be empty".into());
        }
        Ok(())
    }
}

/// Largest `[limits] max_response_bytes` (see [`LimitsConfig::validate`]).
const MAX_RESPONSE_BYTES: usize = 15 << 20;
/// Largest `[limits] max_compound`.
const MAX_COMPOUND: usize = 8192;

/// `[limits]`: resource limits and backpressure (see the module documentation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub sessions_in_setup_per_conn: usize,
    pub sessions_per_conn: usize,
    pub opens_per_session: usize,
    pub opens_per_conn: usize,
    /// Byte-range locks one connection may hold (they live in the node's lockmgrd session,
    /// so this is what keeps one client from using up the node's share there).
    pub locks_per_conn: usize,
    pub trees_per_session: usize,
    pub pending_async_per_conn: usize,
    pub notify_watches_per_conn: usize,
    pub max_compound: usize,
    pub max_response_bytes: usize,
    pub output_bytes_per_conn: usize,
    /// 0 = automatic (RLIMIT_NOFILE minus headroom).
    pub open_files: usize,
    /// Connections from one source address (crate::limits::ClientUsage).
    pub connections_per_client: usize,
    /// Connections with a session of one user, from any address.
    pub connections_per_user: usize,
    /// Opens of all the connections of one source address.
    pub opens_per_client: usize,
    /// Opens of one user's sessions, over all connections.
    pub opens_per_user: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            // A client needs one session in setup at a time; a few in parallel is generous.
            sessions_in_setup_per_conn: 16,
            // Clients use one or a few sessions per connection (one per user).
            sessions_per_conn: 1024,
            // Samba's `max open files` is 16404 per client process; one session gets half.
            opens_per_session: 8192,
            opens_per_conn: 16384,
            // Far beyond what applications take; lockmgrd's per-node cap is 4,194,304.
            locks_per_conn: 65536,
            trees_per_session: 1024,
            // Half the credit window (MAX_CREDITS): every pending request holds a credit.
            pending_async_per_conn: 4096,
            notify_watches_per_conn: 1024,
            // Real clients chain a handful of requests (CREATE+READ/QUERY_INFO+CLOSE).
            max_compound: 1024,
            // One maximal READ (8 MiB) and then some; at most 15 MiB (one NetBIOS message).
            max_response_bytes: 12 << 20,
            output_bytes_per_conn: 16 << 20,
            open_files: 0,
            // A client machine uses one connection per server (plus up to 32 channels of a
            // multichannel session); a NAT gateway in front of many machines needs more.
            connections_per_client: 256,
            connections_per_user: 1024,
            // Four connections' worth (opens_per_conn) per client and per user.
            opens_per_client: 65536,
            opens_per_user: 65536,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            (
                "sessions_in_setup_per_conn",
                self.sessions_in_setup_per_conn,
            ),
            ("sessions_per_conn", self.sessions_per_conn),
            ("opens_per_session", self.opens_per_session),
            ("opens_per_conn", self.opens_per_conn),
            ("locks_per_conn", self.locks_per_conn),
            ("trees_per_session", self.trees_per_session),
            ("pending_async_per_conn", self.pending_async_per_conn),
            ("notify_watches_per_conn", self.notify_watches_per_conn),
            ("max_compound", self.max_compound),
            ("max_response_bytes", self.max_response_bytes),
            ("output_bytes_per_conn", self.output_bytes_per_conn),
            ("connections_per_client", self.connections_per_client),
            ("connections_per_user", self.connections_per_user),
            ("opens_per_client", self.opens_per_client),
            ("opens_per_user", self.opens_per_user),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!(
                    "[limits] {name} must be positive"
                )));
            }
        }
        // A chain is one NetBIOS message (24-bit length): the budget plus the error answers of
        // a maximal chain (under 100 bytes each) and the encryption transform must stay below
        // 16 MiB, and one maximal READ (8 MiB) must fit.
        let min = MAX_IO as usize + 64 * 1024;
        if !(min..=MAX_RESPONSE_BYTES).contains(&self.max_response_bytes) {
            return Err(ConfigError::Invalid(format!(
                "[limits] max_response_bytes must be between {min} and {MAX_RESPONSE_BYTES}"
            )));
        }
        if self.max_compound > MAX_COMPOUND {
            return Err(ConfigError::Invalid(format!(
                "[limits] max_compound must be at most {MAX_COMPOUND}"
            )));
        }
        if self.output_bytes_per_conn < 64 * 1024 {
            return Err(ConfigError::Invalid(
                "[limits] output_bytes_per_conn must be at least 65536".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub share: Vec<ShareConfig>,
    #[serde(default)]
    pub lockmgr: LockmgrConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub witness: WitnessConfig,
    #[serde(default)]
    pub public_addresses: PublicAddressesConfig,
}

/// `[public_addresses]`: service addresses that move between the nodes (CTDB's public
/// addresses; see `crate::witness::public_ip` for the assignment and takeover rules). Needs
/// `[witness]` (the node states and the heartbeat channel). Every node carries the same list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicAddressesConfig {
    /// At most 64 (the heartbeat carries who holds what as a 64-bit set).
    #[serde(default)]
    pub addresses: Vec<PublicAddress>,
    /// How long a dead node's addresses wait after it was declared dead (`[witness]
    /// dead_after_ms` of silence) before a survivor takes them: at least lockmgrd's liveness
    /// lease (`[sessions] liveness_ms`), so the dead node has lost its lock session and can no
    /// longer answer for them.
    #[serde(default = "default_fence_ms")]
    pub fence_ms: u64,
    /// Send tickle ACKs for the connections of a taken address. Only turned off to show what
    /// they are for (tests): without them a dead node's idle clients hang.
    #[serde(default = "default_true")]
    pub tickle: bool,
    /// The most client connections this node publishes to its peers (what a survivor
    /// tickles); beyond it the rest are not tickled and wait for TCP to notice.
    #[serde(default = "default_published_connections")]
    pub max_published_connections: usize,
}

/// One `[[public_addresses.addresses]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicAddress {
    /// `A.B.C.D/PREFIX` or `IPV6/PREFIX` (an IPv6 address is announced with an unsolicited
    /// Neighbor Advertisement instead of a gratuitous ARP).
    pub address: IpCidr,
    /// The interface it is added to on whichever node holds it.
    pub interface: String,
}

/// An IPv4 or IPv6 address with its prefix length (`10.0.0.100/24`, `fd00::100/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpCidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl TryFrom<String> for IpCidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX"))?;
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: bad IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: prefix must be 0-{max}"))?;
        Ok(IpCidr { addr, prefix })
    }
}

impl std::fmt::Display for IpCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Most public addresses a cluster can have (one bit each in the heartbeat).
pub const MAX_PUBLIC_ADDRESSES: usize = 64;
/// Most connections a node can publish: 255 datagrams of at least 31 (IPv6 ones; see
/// `witness::peers`).
pub const MAX_PUBLISHED_CONNECTIONS: usize = 255 * 31;

fn default_fence_ms() -> u64 {
    1000
}
fn default_published_connections() -> usize {
    4096
}

impl Default for PublicAddressesConfig {
    fn default() -> Self {
        PublicAddressesConfig {
            addresses: Vec::new(),
            fence_ms: default_fence_ms(),
            tickle: true,
            max_published_connections: default_published_connections(),
        }
    }
}

impl PublicAddressesConfig {
    fn validate(&self, witness: &WitnessConfig) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("[public_addresses] {m}")));
        if self.addresses.is_empty() {
            return Ok(());
        }
        if !witness.enabled {
            return bad("needs [witness] enabled = true (node states and heartbeats)".into());
        }
        if self.addresses.len() > MAX_PUBLIC_ADDRESSES {
            return bad(format!("at most {MAX_PUBLIC_ADDRESSES} addresses"));
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if self.addresses[..i]
                .iter()
                .any(|b| b.address.addr == a.address.addr)
            {
                return bad(format!("{} listed twice", a.address));
            }
            // IFNAMSIZ is 16 with the NUL.
            if a.interface.is_empty() || a.interface.len() > 15 || a.interface.contains('\0') {
                return bad(format!("{}: bad interface {:?}", a.address, a.interface));
            }
        }
        if self.max_published_connections > MAX_PUBLISHED_CONNECTIONS {
            return bad(format!(
                "max_published_connections must be at most {}",
                MAX_PUBLISHED_CONNECTIONS
            ));
        }
        Ok(())
    }
}

/// `[witness]`: the SMB witness service (MS-SWN) on ncacn_ip_tcp, its endpoint mapper, and
/// how the nodes of the cluster learn each other's state (see `crate::witness`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Off by default: nothing listens and shares do not advertise SMB2_SHARE_CAP_CLUSTER.
    #[serde(default)]
    pub enabled: bool,
    /// The witness' own TCP endpoint (port 0: any free port, published through the endpoint
    /// mapper, as Windows does).
    #[serde(default = "default_witness_listen")]
    pub listen: SocketAddr,
    /// The endpoint mapper (clients look for it on port 135).
    #[serde(default = "default_epm_listen")]
    pub epm_listen: SocketAddr,
    /// The NetName clients register with (the cluster's name); `[server] netbios_name` is
    /// accepted too.
    #[serde(default)]
    pub net_name: Option<String>,
    /// This node's entry in `nodes`.
    #[serde(default)]
    pub node: String,
    /// Every node of the cluster, this one included.
    #[serde(default)]
    pub nodes: Vec<WitnessNode>,
    /// UDP address the node state heartbeats arrive on (this node's `peer`).
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// Key authenticating the heartbeats (HMAC-SHA256); default `[lockmgr] cluster_key_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A node not heard from this long is dead: RESOURCE_CHANGE(unavailable) for its address.
    #[serde(default = "default_dead_after_ms")]
    pub dead_after_ms: u64,
    /// Unix socket (mode 0600) taking `drain`, `undrain` and `status` (`smbd witness`).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    #[serde(default = "default_witness_connections")]
    pub max_connections: usize,
    #[serde(default = "default_witness_registrations")]
    pub max_registrations: usize,
    #[serde(default = "default_witness_registrations_per_conn")]
    pub max_registrations_per_conn: usize,
    /// The protection a witness call needs (MS-RPCE 3.3.1.5.2): an NTLMSSP bind of a user in
    /// `[server] users` at packet privacy (the default, what Windows clients and Samba's
    /// witness use) or integrity; `none` lets any client call without authenticating.
    #[serde(default)]
    pub auth_level: RpcAuthLevel,
    /// How long a registration lives on after it was told its resource went away or moved
    /// elsewhere (RESOURCE_CHANGE unavailable, CLIENT_MOVE or SHARE_MOVE to another
    /// address). Then it is removed, its pending AsyncNotify fails with ERROR_NOT_FOUND
    /// (MS-SWN 3.1.4.4) and the client registers again, with the witness that now serves
    /// the address. Samba's rpcd_witness waits 5 s (what Windows Server 2022 clients need to
    /// re-register); at least two heartbeats, so that the AVAILABLE that follows a moving
    /// address's UNAVAILABLE is heard first.
    #[serde(default = "default_reregister_after_ms")]
    pub reregister_after_ms: u64,
}

/// `[witness] auth_level`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RpcAuthLevel {
    /// RPC_C_AUTHN_LEVEL_PKT_PRIVACY: every call and answer signed and encrypted.
    #[default]
    Privacy,
    /// RPC_C_AUTHN_LEVEL_PKT_INTEGRITY: signed (privacy is accepted too).
    Integrity,
    /// No authentication: anyone who reaches the port may call.
    None,
}

impl RpcAuthLevel {
    /// The least DCE/RPC auth level a call must have, if any.
    pub fn min_level(self) -> Option<u8> {
        match self {
            RpcAuthLevel::Privacy => Some(smb_rpc::pdu::auth_level::PRIVACY),
            RpcAuthLevel::Integrity => Some(smb_rpc::pdu::auth_level::INTEGRITY),
            RpcAuthLevel::None => None,
        }
    }
}

/// One node of `[witness] nodes`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WitnessNode {
    pub name: String,
    /// The address clients reach this node's SMB service on (what they register with and are
    /// moved to).
    pub address: std::net::IpAddr,
    /// Where its heartbeats are sent (its `peer_listen`).
    pub peer: SocketAddr,
    /// Its `[lockmgr] node_name`, when that differs from `name`: a survivor asks lockmgrd
    /// whether the node still holds a session before it takes the node's public addresses.
    #[serde(default)]
    pub lockmgr_node: Option<String>,
}

impl WitnessNode {
    /// The name lockmgrd knows this node by.
    pub fn lockmgr_name(&self) -> &str {
        self.lockmgr_node.as_deref().unwrap_or(&self.name)
    }
}

fn default_witness_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
fn default_epm_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 135))
}
fn default_heartbeat_ms() -> u64 {
    500
}
fn default_dead_after_ms() -> u64 {
    3000
}
fn default_witness_connections() -> usize {
    64
}
fn default_witness_registrations() -> usize {
    1024
}
fn default_witness_registrations_per_conn() -> usize {
    16
}
fn default_reregister_after_ms() -> u64 {
    5000
}

impl Default for WitnessConfig {
    fn default() -> Self {
        WitnessConfig {
            enabled: false,
            listen: default_witness_listen(),
            epm_listen: default_epm_listen(),
            net_name: None,
            node: String::new(),
            nodes: Vec::new(),
            peer_listen: None,
            key_file: None,
            heartbeat_ms: default_heartbeat_ms(),
            dead_after_ms: default_dead_after_ms(),
            control_socket: None,
            max_connections: default_witness_connections(),
            max_registrations: default_witness_registrations(),
            max_registrations_per_conn: default_witness_registrations_per_conn(),
            auth_level: RpcAuthLevel::default(),
            reregister_after_ms: default_reregister_after_ms(),
        }
    }
}

impl WitnessConfig {
    fn validate(&self, lockmgr: &LockmgrConfig) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("[witness] {m}")));
        if !self.enabled {
            return Ok(());
        }
        if !self.nodes.iter().any(|n| n.name == self.node) {
            return bad(format!("node = {:?} is not one of `nodes`", self.node));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty() || self.nodes[..i].iter().any(|m| m.name == n.name) {
                return bad(format!("node name {:?} empty or repeated", n.name));
            }
        }
        if self.nodes.len() > 1 {
            if self.peer_listen.is_none() {
                return bad("`peer_listen` is needed with more than one node".into());
            }
            if self.key_file.is_none() && lockmgr.cluster_key_file.is_none() {
                return bad("`key_file` (or [lockmgr] cluster_key_file) is needed".into());
            }
        }
        if self.heartbeat_ms == 0 || self.dead_after_ms <= 2 * self.heartbeat_ms {
            return bad("dead_after_ms must exceed two heartbeats (heartbeat_ms > 0)".into());
        }
        if self.reregister_after_ms < 2 * self.heartbeat_ms {
            // Shorter, a registration for a moving public address could end between its
            // UNAVAILABLE and the AVAILABLE the new holder's claim brings a heartbeat later.
            return bad("reregister_after_ms must be at least two heartbeats".into());
        }
        if self.max_connections == 0 || self.max_registrations_per_conn == 0 {
            return bad("max_connections and max_registrations_per_conn must be positive".into());
        }
        Ok(())
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        for s in &cfg.share {
            if s.name.is_empty() || s.name.contains(['\\', '/']) {
                return Err(ConfigError::Invalid(format!("bad share name {:?}", s.name)));
            }
            if s.name.eq_ignore_ascii_case("IPC$") {
                return Err(ConfigError::Invalid("IPC$ is built in".into()));
            }
            s.dfs_links()?;
        }
        if let Some(addr) = cfg.server.metrics_listen {
            clustersmb_metrics::check_listen(addr, cfg.server.metrics_allow_remote)
                .map_err(|e| ConfigError::Invalid(format!("[server] {e}")))?;
        }
        cfg.lockmgr.validate()?;
        cfg.limits.validate()?;
        cfg.witness.validate(&cfg.lockmgr)?;
        cfg.public_addresses.validate(&cfg.witness)?;
        Ok(cfg)
    }

    /// The configured cluster filesystem id, if any (decimal or 0x-hex).
    pub fn cluster_fs_id(&self) -> Result<Option<u64>, ConfigError> {
        let Some(s) = &self.server.cluster_fs_id else {
            return Ok(None);
        };
        let v = if let Some(h) = s.strip_prefix("0x") {
            u64::from_str_radix(h, 16)
        } else {
            s.parse()
        };
        v.map(Some)
            .map_err(|_| ConfigError::Invalid(format!("cluster_fs_id {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example() {
        let c = Config::parse(
            "[server]\nlisten=[\"127.0.0.1:4450\"]\nnetbios_name=\"X\"\n[[share]]\nname=\"s\"\npath=\"/tmp\"\nencrypt=true\n",
        )
        .unwrap();
        assert_eq!(c.share.len(), 1);
        assert!(c.share[0].encrypt);
        assert_eq!(c.server.netbios_name, "X");
    }

    #[test]
    fn example_file_parses() {
        let c = Config::parse(include_str!("../../smbd.example.toml")).unwrap();
        assert_eq!(c.share.len(), 2);
        assert!(c.share[1].read_only);
    }

    #[test]
    fn dfs_links_parse_and_validate() {
        let share = |extra: &str| {
            Config::parse(&format!("[[share]]\nname=\"d\"\npath=\"/tmp\"\n{extra}\n"))
        };
        let c = share(
            "dfs_root = true\ndfs_links = [{ path = \"a/b\", targets = [\"\\\\\\\\n2\\\\data\\\\sub\", \"//n3/x\"] }]",
        )
        .unwrap();
        let links = c.share[0].dfs_links().unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].components, ["a", "b"]);
        assert_eq!(links[0].targets, ["\\n2\\data\\sub", "\\n3\\x"]);
        let refused = |extra: &str, what: &str| match share(extra) {
            Err(ConfigError::Invalid(m)) => assert!(m.contains(what), "{extra}: {m}"),
            other => panic!("{extra}: {other:?}"),
        };
        refused(
            "dfs_links = [{ path = \"a\", targets = [\"//n/s\"] }]",
            "not dfs_root",
        );
        refused(
            "dfs_root = true\ndfs_links = [{ path = \"../a\", targets = [\"//n/s\"] }]",
            "not a path below",
        );
        refused(
            "dfs_root = true\ndfs_links = [{ path = \"a\", targets = [] }]",
            "no targets",
        );
        refused(
            "dfs_root = true\ndfs_links = [{ path = \"a\", targets = [\"n/s\"] }]",
            "is not",
        );
        refused(
            "dfs_root = true\ndfs_links = [{ path = \"a\", targets = [\"//n\"] }]",
            "is not",
        );
        refused(
            "dfs_root = true\ndfs_links = [{ path = \"a\", targets = [\"//n/s\"] }, { path = \"A/b\", targets = [\"//n/t\"] }]",
            "overlaps",
        );
    }

    #[test]
    fn lockmgr_section_defaults_to_embedded() {
        let c = Config::parse("[server]\n").unwrap();
        assert_eq!(c.lockmgr.transport, LockTransport::Embedded);
        assert_eq!(c.lockmgr.request_timeout_ms, 5000);
    }

    #[test]
    fn lockmgr_section_parses_and_validates() {
        let c = Config::parse(
            "[lockmgr]\ntransport = \"shm\"\nconnect = \"/r/l.sock\"\ncluster_key_file = \"/k\"\nnode_name = \"n1\"\nspin_us = 5\nrequest_timeout_ms = 100\n",
        )
        .unwrap();
        assert_eq!(c.lockmgr.transport, LockTransport::Shm);
        assert_eq!(c.lockmgr.connect.as_deref(), Some("/r/l.sock"));
        assert_eq!(c.lockmgr.spin_us, 5);
        let udp = "[lockmgr]\ntransport = \"udp\"\nconnect = \"127.0.0.1:7500\"\ncluster_key_file = \"/k\"\n";
        assert_eq!(
            Config::parse(udp).unwrap().lockmgr.transport,
            LockTransport::Udp
        );
        let xdp = Config::parse(
            "[lockmgr]\ntransport = \"afxdp\"\nconnect = \"02:6c:6d:00:00:0a\"\ninterface = \"veth0\"\nethertype = 0x88b6\ncluster_key_file = \"/k\"\n",
        )
        .unwrap()
        .lockmgr;
        assert_eq!(
            (xdp.transport, xdp.interface.as_deref(), xdp.ethertype),
            (LockTransport::Afxdp, Some("veth0"), 0x88b6)
        );
        let rdma = Config::parse(
            "[lockmgr]\ntransport = \"rdma\"\nconnect = \"192.0.2.1:7500\"\nrdma_device = \"rxe0\"\ngid_index = 1\ncluster_key_file = \"/k\"\n",
        )
        .unwrap()
        .lockmgr;
        assert_eq!(
            (rdma.rdma_device.as_deref(), rdma.rdma_port, rdma.gid_index),
            (Some("rxe0"), 1, Some(1))
        );
        for (bad, why) in [
            ("[lockmgr]\ntransport = \"carrier-pigeon\"\n", "unknown variant"),
            ("[lockmgr]\ntransport = \"shm\"\ncluster_key_file = \"/k\"\n", "connect"),
            ("[lockmgr]\ntransport = \"shm\"\nconnect = \"/s\"\n", "cluster_key_file"),
            (
                "[lockmgr]\ntransport = \"udp\"\nconnect = \"/s\"\ncluster_key_file = \"/k\"\n",
                "ADDR:PORT",
            ),
            (
                "[lockmgr]\ntransport = \"shm\"\nconnect = \"/s\"\ncluster_key_file = \"/k\"\nrequest_timeout_ms = 0\n",
                "request_timeout_ms",
            ),
            ("[lockmgr]\nbogus = 1\n", "bogus"),
            (
                "[lockmgr]\ntransport = \"afxdp\"\nconnect = \"02:00:00:00:00:01\"\ncluster_key_file = \"/k\"\n",
                "needs `interface`",
            ),
            (
                "[lockmgr]\ntransport = \"afpacket\"\nconnect = \"10.0.0.1:7500\"\ninterface = \"eth1\"\ncluster_key_file = \"/k\"\n",
                "MAC address",
            ),
            (
                "[lockmgr]\ntransport = \"rdma\"\nconnect = \"mlx5_0\"\ncluster_key_file = \"/k\"\n",
                "ADDR:PORT",
            ),
            (
                "[lockmgr]\ntransport = \"rdma\"\nconnect = \"10.0.0.1:7500\"\nrdma_port = 0\ncluster_key_file = \"/k\"\n",
                "1-based",
            ),
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn limits_section_defaults_and_overrides() {
        let c = Config::parse("[server]\n").unwrap();
        assert_eq!(c.limits.sessions_in_setup_per_conn, 16);
        assert_eq!(c.limits.max_compound, 1024);
        let c = Config::parse("[limits]\nopens_per_session = 10\nmax_compound = 4\n").unwrap();
        assert_eq!((c.limits.opens_per_session, c.limits.max_compound), (10, 4));
        assert_eq!(c.limits.opens_per_conn, 16384);
        for bad in [
            "[limits]\nmax_compound = 0\n",
            "[limits]\noutput_bytes_per_conn = 100\n",
            "[limits]\nmax_response_bytes = 16777216\n",
            "[limits]\nmax_response_bytes = 65536\n",
            "[limits]\nbogus = 1\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_addresses_parse_and_need_the_witness() {
        let witness = "[witness]\nenabled = true\nnode = \"n1\"\n[[witness.nodes]]\nname = \"n1\"\naddress = \"10.0.0.1\"\npeer = \"10.0.0.1:5135\"\n";
        let addrs = "[public_addresses]\nfence_ms = 2000\n[[public_addresses.addresses]]\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\n";
        let c = Config::parse(&format!("{witness}{addrs}")).unwrap();
        let p = &c.public_addresses;
        assert_eq!((p.fence_ms, p.tickle), (2000, true));
        assert_eq!(p.addresses[0].address.to_string(), "10.0.0.100/24");
        assert_eq!(p.addresses[0].interface, "eth0");
        let e = Config::parse(addrs).unwrap_err().to_string();
        assert!(e.contains("needs [witness]"), "{e}");
        let v6 = format!("{witness}[[public_addresses.addresses]]\naddress = \"fd00::100/64\"\ninterface = \"eth0\"\n");
        let c = Config::parse(&v6).unwrap();
        assert_eq!(
            c.public_addresses.addresses[0].address,
            IpCidr {
                addr: "fd00::100".parse().unwrap(),
                prefix: 64
            }
        );
        for (bad, why) in [
            ("10.0.0.100", "ADDRESS/PREFIX"),
            ("10.0.0.100/33", "prefix must be 0-32"),
            ("fd00::100/129", "prefix must be 0-128"),
            ("10.0.0/24", "IPv4 or IPv6"),
        ] {
            let text = format!("{witness}[[public_addresses.addresses]]\naddress = \"{bad}\"\ninterface = \"eth0\"\n");
            let e = Config::parse(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let twice = format!("{witness}{addrs}[[public_addresses.addresses]]\naddress = \"10.0.0.100/16\"\ninterface = \"eth1\"\n");
        assert!(Config::parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn a_witness_registration_outlives_a_move_by_at_least_two_heartbeats() {
        let witness = "[witness]\nenabled = true\nnode = \"n1\"\nheartbeat_ms = 200\n[[witness.nodes]]\nname = \"n1\"\naddress = \"10.0.0.1\"\npeer = \"10.0.0.1:5135\"\n";
        let c = Config::parse(witness).unwrap();
        assert_eq!(c.witness.reregister_after_ms, 5000);
        let short = witness.replace("heartbeat_ms", "reregister_after_ms = 399\nheartbeat_ms");
        let e = Config::parse(&short).unwrap_err().to_string();
        assert!(e.contains("reregister_after_ms"), "{e}");
        let enough = short.replace("399", "400");
        assert_eq!(
            Config::parse(&enough).unwrap().witness.reregister_after_ms,
            400
        );
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(Config::parse("[server]\nbogus=1\n").is_err());
    }
}
