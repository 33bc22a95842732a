//! lockmgrd configuration: a TOML file, overridable from the command line.
//!
//! ```toml
//! # Secret shared by lockmgrd and every smbd node: a file holding at least 16 bytes
//! # (e.g. `head -c 32 /dev/urandom > cluster.key`), or inline hex.
//! cluster_key_file = "/etc/clustersmb/cluster.key"
//! # cluster_key_hex = "00112233..."
//! # Prometheus text endpoint (GET /metrics; off when absent). Metrics are unauthenticated:
//! # an address that is not loopback is refused unless metrics_allow_remote = true.
//! # metrics_listen = "127.0.0.1:9750"
//! # metrics_allow_remote = false
//! # Keep lockmgrd's memory resident (mlockall, as corosync and ctdbd do): its code is never
//! # evicted, so a failover never waits for a page-in. Needs CAP_IPC_LOCK (root has it) or
//! # RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=infinity); lockmgrd warns and runs on without it.
//! # lock_memory = true
//!
//! [transport]
//! kind = "shm"                          # shm | udp | afpacket | afxdp | rdma
//! listen = "/run/clustersmb/lockmgr.sock"  # shm: unix socket path; udp, rdma: ADDR:PORT;
//!                                        # afpacket/afxdp: interface name (or use `interface`)
//! spin_us = 50                           # busy-poll this long before sleeping (0 = always sleep)
//! spin_mode = "adaptive"                 # adaptive: spin only while there is traffic and no
//!                                        # runnable thread waits for a CPU (kernel CPU pressure),
//!                                        # stop spin_idle_ms after the last frame (an idle
//!                                        # lockmgrd uses no CPU); traffic: the same without the
//!                                        # CPU-pressure check (a core of its own that should
//!                                        # still idle); always: never sleep (dedicated core)
//! spin_idle_ms = 10                      # adaptive: quiet time after which spinning stops
//! # shm only: the unix socket is created 0600 (only lockmgrd's user and root may connect);
//! # with a group, 0660 and owned by that group (e.g. the group smbd runs as).
//! # socket_group = "smbd"                 # name or numeric gid
//! # Raw Ethernet only (afpacket, afxdp):
//! # interface = "eth1"                   # overrides `listen`
//! # ethertype = 0x88B5                   # lockmgr frames' EtherType (default: IEEE local experimental)
//! # peer_mac = "02:00:00:00:00:01"       # clients: lockmgrd's MAC (the server learns client MACs)
//! # RDMA only (rdma): `listen` is the TCP side channel (queue-pair set-up and death detection);
//! # the data path is an RC queue pair on this device/port.
//! # rdma_device = "mlx5_0"               # as `ibv_devices` prints it (default: the first device)
//! # rdma_port = 1                        # HCA port, 1-based (default 1)
//! # gid_index = 3                        # GID table index (default: RoCE: first IPv4-mapped
//! #                                      # (RoCEv2) GID; InfiniBand: 0). See `show_gids`.
//! # rdma_slots = 32                      # receive slots = credits per connection (4..=4096);
//! #                                      # each pins 2 x 8.2 KB of registered memory
//!
//! [engine]
//! break_timeout_ms = 35000               # oplock/lease break acknowledgement timeout
//!
//! [sessions]
//! liveness_ms = 1000                     # a node silent this long (or whose transport dropped) is dead
//! # Caps per session (= per smbd node; lockmgrd does not see the SMB connections inside a
//! # session). A request beyond a cap fails with STATUS_INSUFFICIENT_RESOURCES; the node's other
//! # requests and other nodes are unaffected. Roughly 100 bytes per lock, a few hundred per open.
//! max_opens = 1048576                    # opens held at once
//! max_locks = 4194304                    # byte-range locks held at once, over all its opens
//! max_waiters = 65536                    # blocking lock requests and deferred opens waiting at once
//! max_watches = 65536                    # directories with change-notify watchers registered at once
//!
//! # Optional: a replicated lock manager (primary + standby, epochs in etcd). Start the same
//! # configuration (with its own name and listen address) on two hosts: the first to reach
//! # etcd is primary, the second attaches as its standby and takes over when it dies. Nodes
//! # list both addresses. Replicas use the same transport kind as the nodes (any of them).
//! [replication]
//! name = "lockmgr-a"                     # unique per replica: [A-Za-z0-9._-], at most 64 bytes
//! etcd = ["http://10.0.0.10:2379"]       # etcd endpoints
//! cluster = "prod"                       # etcd key prefix /clustersmb/<cluster>/lockmgr/
//! # advertise = "10.0.0.1:7100"          # where nodes and the other replica reach this one
//! #                                      # (default: transport.listen; rdma: the TCP side
//! #                                      # channel's ADDR:PORT); afpacket/afxdp: the
//! #                                      # MAC of transport.interface, "02:00:00:00:00:01"
//! #                                      # (default: that interface's MAC)
//! # link_interface = "eth2"              # afpacket/afxdp: the interface this replica reaches
//! #                                      # its primary through as standby (afpacket default:
//! #                                      # transport.interface; afxdp: required, another
//! #                                      # interface on the same segment, as one AF_XDP
//! #                                      # socket holds a whole interface queue)
//! failover_ms = 100                      # a partner silent this long is declared dead
//! ```
//!
//! The datagram transports (udp, afpacket, afxdp) need no security settings: the cluster key
//! authenticates every node in the transport handshake and keys a MAC on every frame (see
//! `lockmgr_transport::fabric`). Handshakes in progress hold no memory (stateless cookies), so
//! there is no half-open limit to tune.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cluster key: {0}")]
    Key(String),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// `spin_mode`: when lockmgrd busy-polls (see [`lockmgr_transport::SpinMode`]).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpinModeKind {
    /// Spin up to `spin_us` per wait while there is traffic and the CPUs have room (no
    /// runnable thread kept waiting, per the kernel's CPU pressure); sleep once it has been
    /// quiet for `spin_idle_ms`. For hosts where lockmgrd shares its CPUs with others.
    #[default]
    Adaptive,
    /// Like adaptive, but ignoring CPU pressure: for a lockmgrd that owns its core (isolcpus,
    /// a cpuset) yet should still sleep when idle.
    Traffic,
    /// Never sleep: busy-poll all the time (a core dedicated to lockmgrd).
    Always,
}

impl SpinModeKind {
    /// The transports' [`lockmgr_transport::SpinMode`] for this setting; `idle_after` is the
    /// quiet time after which adaptive spinning stops.
    pub fn mode(self, idle_after: std::time::Duration) -> lockmgr_transport::SpinMode {
        use lockmgr_transport::SpinMode;
        match self {
            SpinModeKind::Adaptive | SpinModeKind::Traffic => SpinMode::Adaptive {
                idle_after,
                yield_to_cpu_pressure: self == SpinModeKind::Adaptive,
            },
            SpinModeKind::Always => SpinMode::Always,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Shm,
    Udp,
    /// Raw Ethernet frames over an AF_PACKET socket.
    Afpacket,
    /// Raw Ethernet frames over AF_XDP (copy mode, generic XDP).
    Afxdp,
    /// RDMA verbs: RC queue pairs, two-sided SEND/RECV (InfiniBand, RoCE, soft-RoCE).
    Rdma,
}

impl TransportKind {
    /// Raw-Ethernet kinds address peers by interface + MAC.
    pub fn is_ethernet(self) -> bool {
        matches!(self, TransportKind::Afpacket | TransportKind::Afxdp)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    pub kind: TransportKind,
    #[serde(default)]
    pub listen: String,
    #[serde(default = "default_spin_us")]
    pub spin_us: u64,
    /// Whether `spin_us` applies only while there is traffic (adaptive) or lockmgrd never
    /// sleeps (always: for a core of its own).
    #[serde(default)]
    pub spin_mode: SpinModeKind,
    /// adaptive: quiet time after which lockmgrd stops spinning.
    #[serde(default = "default_spin_idle_ms")]
    pub spin_idle_ms: u64,
    /// afpacket/afxdp: interface name (defaults to `listen`).
    #[serde(default)]
    pub interface: Option<String>,
    /// afpacket/afxdp: EtherType of lockmgr frames.
    #[serde(default = "default_ethertype")]
    pub ethertype: u16,
    /// afpacket/afxdp clients: the server's MAC address.
    #[serde(default)]
    pub peer_mac: Option<String>,
    /// shm: group (name or gid) allowed to connect; the socket is 0600 without, 0660 with.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// rdma: device name (`None` = the first device).
    #[serde(default)]
    pub rdma_device: Option<String>,
    /// rdma: HCA port (1-based).
    #[serde(default = "default_rdma_port")]
    pub rdma_port: u8,
    /// rdma: GID table index (`None` = automatic, see [`lockmgr_rdma::DeviceConfig`]).
    #[serde(default)]
    pub gid_index: Option<u8>,
    /// rdma: receive slots (credits) per connection.
    #[serde(default = "default_rdma_slots")]
    pub rdma_slots: u16,
}

fn default_rdma_port() -> u8 {
    1
}

fn default_rdma_slots() -> u16 {
    lockmgr_rdma::RdmaConfig::default().slots
}

impl Default for TransportConfig {
    /// Only `kind` and `listen` need setting for a shm/udp/rdma server.
    fn default() -> Self {
        TransportConfig {
            kind: TransportKind::Shm,
            listen: String::new(),
            spin_us: default_spin_us(),
            spin_mode: SpinModeKind::default(),
            spin_idle_ms: default_spin_idle_ms(),
            interface: None,
            ethertype: default_ethertype(),
            peer_mac: None,
            socket_group: None,
            rdma_device: None,
            rdma_port: default_rdma_port(),
            gid_index: None,
            rdma_slots: default_rdma_slots(),
        }
    }
}

fn default_ethertype() -> u16 {
    lockmgr_transport::eth::DEFAULT_ETHERTYPE
}

impl TransportConfig {
    /// Interface for the raw-Ethernet kinds: `interface`, else `listen`.
    pub fn interface(&self) -> &str {
        self.interface.as_deref().unwrap_or(&self.listen)
    }

    /// Raw-Ethernet settings for the transport crate.
    pub fn eth(&self) -> lockmgr_transport::eth::EthConfig {
        lockmgr_transport::eth::EthConfig {
            interface: self.interface().to_string(),
            ethertype: self.ethertype,
        }
    }

    /// The busy-poll policy of every transport.
    pub fn spin(&self) -> lockmgr_transport::SpinConfig {
        lockmgr_transport::SpinConfig {
            spin: std::time::Duration::from_micros(self.spin_us),
            mode: self
                .spin_mode
                .mode(std::time::Duration::from_millis(self.spin_idle_ms)),
        }
    }

    /// RDMA settings for lockmgr-rdma (device, port, GID index, slots, spin).
    pub fn rdma(&self) -> lockmgr_rdma::RdmaConfig {
        lockmgr_rdma::RdmaConfig {
            device: lockmgr_rdma::DeviceConfig {
                device: self.rdma_device.clone(),
                port: self.rdma_port,
                gid_index: self.gid_index,
            },
            slots: self.rdma_slots,
            spin: self.spin(),
            ..lockmgr_rdma::RdmaConfig::default()
        }
    }

    /// `peer_mac`, parsed (`None` if unset).
    pub fn peer_mac(&self) -> Result<Option<lockmgr_transport::eth::MacAddr>, ConfigError> {
        self.peer_mac
            .as_deref()
            .map(|m| {
                m.parse().map_err(|e| ConfigError::Invalid {
                    field: "transport.peer_mac",
                    message: format!("{e}"),
                })
            })
            .transpose()
    }
}

fn default_spin_us() -> u64 {
    50
}

fn default_spin_idle_ms() -> u64 {
    lockmgr_transport::DEFAULT_SPIN_IDLE_AFTER.as_millis() as u64
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(default = "default_break_timeout_ms")]
    pub break_timeout_ms: u64,
}

fn default_break_timeout_ms() -> u64 {
    35_000
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            break_timeout_ms: default_break_timeout_ms(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    #[serde(default = "default_liveness_ms")]
    pub liveness_ms: u64,
    /// Opens one session may hold.
    #[serde(default = "default_max_opens")]
    pub max_opens: usize,
    /// Byte-range locks one session may hold.
    #[serde(default = "default_max_locks")]
    pub max_locks: usize,
    /// Requests of one session that may wait at once.
    #[serde(default = "default_max_waiters")]
    pub max_waiters: usize,
    /// Directories one session may register change-notify watchers on.
    #[serde(default = "default_max_watches")]
    pub max_watches: usize,
}

fn default_max_watches() -> usize {
    lockmgr_engine::SessionLimits::default().max_watches
}

fn default_liveness_ms() -> u64 {
    1000
}

fn default_max_opens() -> usize {
    lockmgr_engine::SessionLimits::default().max_opens
}

fn default_max_locks() -> usize {
    lockmgr_engine::SessionLimits::default().max_locks
}

fn default_max_waiters() -> usize {
    lockmgr_engine::SessionLimits::default().max_waiters
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            liveness_ms: default_liveness_ms(),
            max_opens: default_max_opens(),
            max_locks: default_max_locks(),
            max_waiters: default_max_waiters(),
            max_watches: default_max_watches(),
        }
    }
}

impl SessionConfig {
    /// The engine's per-session caps.
    pub fn limits(&self) -> lockmgr_engine::SessionLimits {
        lockmgr_engine::SessionLimits {
            max_opens: self.max_opens,
            max_locks: self.max_locks,
            max_waiters: self.max_waiters,
            max_watches: self.max_watches,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cluster_key_file: Option<PathBuf>,
    pub cluster_key_hex: Option<String>,
    pub transport: TransportConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub sessions: SessionConfig,
    #[serde(default)]
    pub replication: Option<ReplicationConfig>,
    /// Where to serve `GET /metrics` (Prometheus text format); off when absent.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Allow `metrics_listen` on an address that is not loopback.
    #[serde(default)]
    pub metrics_allow_remote: bool,
    /// Keep lockmgrd's memory resident (mlockall), so that neither its replies nor its
    /// failure detection ever wait for a page-in.
    #[serde(default = "default_lock_memory")]
    pub lock_memory: bool,
}

fn default_lock_memory() -> bool {
    true
}

/// `[replication]`: this lockmgrd is one replica of a replicated lock manager.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    pub name: String,
    pub etcd: Vec<String>,
    pub cluster: String,
    pub advertise: Option<String>,
    /// afpacket/afxdp: the interface the standby's link to its primary uses.
    #[serde(default)]
    pub link_interface: Option<String>,
    #[serde(default = "default_failover_ms")]
    pub failover_ms: u64,
}

fn default_failover_ms() -> u64 {
    100
}

impl ReplicationConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !name_ok(&self.name) {
            return Err(ConfigError::Invalid {
                field: "replication.name",
                message: "1-64 of [A-Za-z0-9._-]".into(),
            });
        }
        if !name_ok(&self.cluster) {
            return Err(ConfigError::Invalid {
                field: "replication.cluster",
                message: "1-64 of [A-Za-z0-9._-]".into(),
            });
        }
        if self.etcd.is_empty() || self.etcd.iter().any(|e| e.is_empty()) {
            return Err(ConfigError::Invalid {
                field: "replication.etcd",
                message: "at least one etcd endpoint".into(),
            });
        }
        if self.failover_ms < 10 {
            return Err(ConfigError::Invalid {
                field: "replication.failover_ms",
                message: "at least 10".into(),
            });
        }
        if let Some(a) = &self.advertise {
            if a.is_empty() || a.len() > 256 || !a.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::Invalid {
                    field: "replication.advertise",
                    message: "1-256 printable characters without spaces".into(),
                });
            }
        }
        Ok(())
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.metrics_listen {
            clustersmb_metrics::check_listen(addr, self.metrics_allow_remote).map_err(|e| {
                ConfigError::Invalid {
                    field: "metrics_listen",
                    message: e.to_string(),
                }
            })?;
        }
        for (field, v) in [
            ("sessions.liveness_ms", self.sessions.liveness_ms as usize),
            ("sessions.max_opens", self.sessions.max_opens),
            ("sessions.max_locks", self.sessions.max_locks),
            ("sessions.max_waiters", self.sessions.max_waiters),
            ("sessions.max_watches", self.sessions.max_watches),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    message: "must be at least 1".into(),
                });
            }
        }
        if self.transport.kind.is_ethernet() {
            if self.transport.interface().is_empty() {
                return Err(ConfigError::Invalid {
                    field: "transport.interface",
                    message: "afpacket/afxdp need an interface (interface = or listen =)".into(),
                });
            }
            if self.transport.ethertype < 0x0600 {
                return Err(ConfigError::Invalid {
                    field: "transport.ethertype",
                    message: format!(
                        "{:#06x} is a length, not an EtherType",
                        self.transport.ethertype
                    ),
                });
            }
            self.transport.peer_mac()?;
        } else if self.transport.listen.is_empty() {
            return Err(ConfigError::Invalid {
                field: "transport.listen",
                message: "empty".into(),
            });
        }
        if matches!(
            self.transport.kind,
            TransportKind::Udp | TransportKind::Rdma
        ) && self
            .transport
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(ConfigError::Invalid {
                field: "transport.listen",
                message: format!("{:?} is not ADDR:PORT", self.transport.listen),
            });
        }
        if let Some(r) = &self.replication {
            r.validate()?;
            self.validate_replica_link(r)?;
        }
        if self.transport.socket_group.is_some() && self.transport.kind != TransportKind::Shm {
            return Err(ConfigError::Invalid {
                field: "transport.socket_group",
                message: "only applies to kind = \"shm\"".into(),
            });
        }
        self.validate_rdma()
    }

    /// How the replicas reach each other over this transport: the kinds that carry a
    /// replication link, a raw-Ethernet replica's address (its MAC) and link interface.
    fn validate_replica_link(&self, r: &ReplicationConfig) -> Result<(), ConfigError> {
        let kind = self.transport.kind;
        if !kind.is_ethernet() {
            // udp, rdma: ADDR:PORT (rdma: the TCP side channel), like `listen`.
            if let (Some(a), TransportKind::Udp | TransportKind::Rdma) = (&r.advertise, kind) {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ConfigError::Invalid {
                        field: "replication.advertise",
                        message: format!("{a:?} is not ADDR:PORT"),
                    });
                }
            }
            if r.link_interface.is_some() {
                return Err(ConfigError::Invalid {
                    field: "replication.link_interface",
                    message: "only applies to kind = \"afpacket\" or \"afxdp\"".into(),
                });
            }
            return Ok(());
        }
        if let Some(a) = &r.advertise {
            if a.parse::<lockmgr_transport::eth::MacAddr>().is_err() {
                return Err(ConfigError::Invalid {
                    field: "replication.advertise",
                    message: format!(
                        "afpacket/afxdp replicas are reached by the MAC of their interface: \
                         {a:?} is not a MAC address like 02:00:00:00:00:01"
                    ),
                });
            }
        }
        match r.link_interface.as_deref() {
            Some("") => Err(ConfigError::Invalid {
                field: "replication.link_interface",
                message: "empty".into(),
            }),
            None if kind == TransportKind::Afxdp => Err(ConfigError::Invalid {
                field: "replication.link_interface",
                message: format!(
                    "afxdp replicas need an interface for the standby's link besides {:?} \
                     (one AF_XDP socket holds a whole interface queue)",
                    self.transport.interface()
                ),
            }),
            Some(l) if kind == TransportKind::Afxdp && l == self.transport.interface() => {
                Err(ConfigError::Invalid {
                    field: "replication.link_interface",
                    message: format!(
                        "{l:?} is the interface lockmgrd serves on; afxdp needs another one \
                         (one AF_XDP socket holds a whole interface queue)"
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// The RDMA keys: ranges here, device existence when the transport opens it.
    fn validate_rdma(&self) -> Result<(), ConfigError> {
        let t = &self.transport;
        let rdma_keys_set = t.rdma_device.is_some()
            || t.gid_index.is_some()
            || t.rdma_port != default_rdma_port()
            || t.rdma_slots != default_rdma_slots();
        if t.kind != TransportKind::Rdma {
            if rdma_keys_set {
                return Err(ConfigError::Invalid {
                    field: "transport.rdma_*",
                    message: "rdma_device, rdma_port, gid_index and rdma_slots only apply to \
                              kind = \"rdma\""
                        .into(),
                });
            }
            return Ok(());
        }
        if t.rdma_port == 0 {
            return Err(ConfigError::Invalid {
                field: "transport.rdma_port",
                message: "port numbers start at 1".into(),
            });
        }
        if t.rdma_device.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::Invalid {
                field: "transport.rdma_device",
                message: "empty (omit it to use the first device)".into(),
            });
        }
        let slots = lockmgr_rdma::wire::MIN_SLOTS..=lockmgr_rdma::wire::MAX_SLOTS;
        if !slots.contains(&t.rdma_slots) {
            return Err(ConfigError::Invalid {
                field: "transport.rdma_slots",
                message: format!(
                    "{} is outside {}..={}",
                    t.rdma_slots,
                    slots.start(),
                    slots.end()
                ),
            });
        }
        Ok(())
    }

    /// The cluster key from `cluster_key_file` or `cluster_key_hex` (exactly one must be set).
    pub fn cluster_key(&self) -> Result<Vec<u8>, ConfigError> {
        match (&self.cluster_key_file, &self.cluster_key_hex) {
            (Some(path), None) => read_key_file(path),
            (None, Some(hex)) => parse_key_hex(hex),
            (Some(_), Some(_)) => Err(ConfigError::Key(
                "set cluster_key_file or cluster_key_hex, not both".into(),
            )),
            (None, None) => Err(ConfigError::Key(
                "no cluster_key_file or cluster_key_hex".into(),
            )),
        }
    }
}

/// Minimum key size: a shorter secret is too easy to guess for a challenge-response proof.
pub const MIN_KEY_BYTES: usize = lockmgr_proto::auth::MIN_KEY_LEN;

/// The bytes of a cluster-key file (owner-only, long enough): the one reader lockmgrd,
/// lockmgrctl and smbd share.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    lockmgr_proto::auth::read_key_file(path).map_err(|e| ConfigError::Key(e.to_string()))
}

pub fn parse_key_hex(hex: &str) -> Result<Vec<u8>, ConfigError> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return Err(ConfigError::Key(
            "hex key has an odd number of digits".into(),
        ));
    }
    let mut key = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(2) {
        let byte = hex
            .get(i..i + 2)
            // `from_str_radix` also takes a leading '+', which would let "+0+1.." pass as a key.
            .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .ok_or_else(|| ConfigError::Key(format!("invalid hex digit near offset {i}")))?;
        key.push(byte);
    }
    if key.len() < MIN_KEY_BYTES {
        return Err(ConfigError::Key(format!(
            "hex key holds {} bytes; at least {MIN_KEY_BYTES} needed",
            key.len()
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_is_off_by_default_and_non_loopback_needs_allow_remote() {
        let head = "cluster_key_hex = \"000102030405060708090a0b0c0d0e0f\"\n";
        let tail = "[transport]\nkind = \"udp\"\nlisten = \"127.0.0.1:7500\"\n";
        let cfg = Config::parse(&format!("{head}{tail}")).unwrap();
        assert_eq!(cfg.metrics_listen, None);
        let cfg = Config::parse(&format!(
            "{head}metrics_listen = \"127.0.0.1:9750\"\n{tail}"
        ))
        .unwrap();
        assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9750".parse().unwrap()));
        let err =
            Config::parse(&format!("{head}metrics_listen = \"0.0.0.0:9750\"\n{tail}")).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "metrics_listen",
                    ..
                }
            ),
            "{err}"
        );
        let cfg = Config::parse(&format!(
            "{head}metrics_listen = \"0.0.0.0:9750\"\nmetrics_allow_remote = true\n{tail}"
        ))
        .unwrap();
        assert!(cfg.metrics_allow_remote);
    }

    const GOOD: &str = r#"
cluster_key_hex = "000102030405060708090a0b0c0d0e0f"
[transport]
kind = "udp"
listen = "127.0.0.1:7500"
"#;

    #[test]
    fn parses_minimal_config_with_defaults() {
        let cfg = Config::parse(GOOD).unwrap();
        assert_eq!(cfg.transport.kind, TransportKind::Udp);
        assert_eq!(cfg.transport.spin_us, 50);
        assert_eq!(cfg.engine.break_timeout_ms, 35_000);
        assert_eq!(cfg.sessions.liveness_ms, 1000);
        assert_eq!(
            cfg.sessions.limits(),
            lockmgr_engine::SessionLimits::default()
        );
        assert_eq!(cfg.cluster_key().unwrap().len(), 16);
    }

    #[test]
    fn spin_mode_defaults_to_adaptive_and_always_is_a_knob() {
        use lockmgr_transport::SpinMode;
        use std::time::Duration;
        let cfg = Config::parse(GOOD).unwrap();
        assert_eq!(
            cfg.transport.spin().mode,
            SpinMode::Adaptive {
                idle_after: Duration::from_millis(10),
                yield_to_cpu_pressure: true,
            }
        );
        let text = GOOD.replace(
            "listen = \"127.0.0.1:7500\"",
            "listen = \"127.0.0.1:7500\"\nspin_mode = \"adaptive\"\nspin_idle_ms = 3",
        );
        assert_eq!(
            Config::parse(&text).unwrap().transport.spin().mode,
            SpinMode::Adaptive {
                idle_after: Duration::from_millis(3),
                yield_to_cpu_pressure: true,
            }
        );
        let text = GOOD.replace(
            "listen = \"127.0.0.1:7500\"",
            "listen = \"127.0.0.1:7500\"\nspin_mode = \"traffic\"",
        );
        assert_eq!(
            Config::parse(&text).unwrap().transport.spin().mode,
            SpinMode::Adaptive {
                idle_after: Duration::from_millis(10),
                yield_to_cpu_pressure: false,
            }
        );
        let text = GOOD.replace(
            "listen = \"127.0.0.1:7500\"",
            "listen = \"127.0.0.1:7500\"\nspin_mode = \"always\"",
        );
        let spin = Config::parse(&text).unwrap().transport.spin();
        assert_eq!(spin.mode, SpinMode::Always);
        assert_eq!(spin.spin, Duration::from_micros(50));
        let text = GOOD.replace(
            "listen = \"127.0.0.1:7500\"",
            "listen = \"127.0.0.1:7500\"\nspin_mode = \"sometimes\"",
        );
        assert!(Config::parse(&text).is_err());
    }

    #[test]
    fn parses_session_caps() {
        let text = format!("{GOOD}[sessions]\nmax_opens = 10\nmax_locks = 20\nmax_waiters = 3\n");
        let l = Config::parse(&text).unwrap().sessions.limits();
        assert_eq!((l.max_opens, l.max_locks, l.max_waiters), (10, 20, 3));
        let zero = format!("{GOOD}[sessions]\nmax_locks = 0\n");
        assert!(matches!(
            Config::parse(&zero),
            Err(ConfigError::Invalid {
                field: "sessions.max_locks",
                ..
            })
        ));
    }

    #[test]
    fn rejects_unknown_field() {
        let err = Config::parse(&format!("{GOOD}\nbogus = 1\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn rejects_bad_udp_address() {
        let text = GOOD.replace("127.0.0.1:7500", "localhost");
        assert!(matches!(
            Config::parse(&text),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn parses_raw_ethernet_transports() {
        let text = GOOD.replace("kind = \"udp\"", "kind = \"afxdp\"").replace(
            "listen = \"127.0.0.1:7500\"",
            "interface = \"veth0\"\nethertype = 0x88B6\npeer_mac = \"02:00:00:00:00:01\"",
        );
        let cfg = Config::parse(&text).unwrap();
        assert_eq!(cfg.transport.kind, TransportKind::Afxdp);
        assert_eq!(cfg.transport.eth().interface, "veth0");
        assert_eq!(cfg.transport.ethertype, 0x88b6);
        assert_eq!(
            cfg.transport.peer_mac().unwrap().unwrap().to_string(),
            "02:00:00:00:00:01"
        );
        let text = GOOD
            .replace("kind = \"udp\"", "kind = \"afpacket\"")
            .replace("127.0.0.1:7500", "eth1");
        let cfg = Config::parse(&text).unwrap();
        assert_eq!(cfg.transport.eth().interface, "eth1");
        assert_eq!(cfg.transport.ethertype, 0x88b5);
        let bad_mac = format!("{text}peer_mac = \"02:00:00\"\n");
        assert!(matches!(
            Config::parse(&bad_mac),
            Err(ConfigError::Invalid {
                field: "transport.peer_mac",
                ..
            })
        ));
        let bad_type = format!("{text}ethertype = 100\n");
        assert!(Config::parse(&bad_type).is_err());
        let no_if = GOOD
            .replace("kind = \"udp\"", "kind = \"afpacket\"")
            .replace("listen = \"127.0.0.1:7500\"", "");
        assert!(Config::parse(&no_if).is_err());
    }

    #[test]
    fn parses_rdma_transport() {
        let text = GOOD.replace("kind = \"udp\"", "kind = \"rdma\"");
        let cfg = Config::parse(&text).unwrap();
        assert_eq!(cfg.transport.kind, TransportKind::Rdma);
        let r = cfg.transport.rdma();
        assert_eq!(r.device.device, None);
        assert_eq!(r.device.port, 1);
        assert_eq!(r.device.gid_index, None);
        assert_eq!(r.slots, 32);
        assert_eq!(r.spin.spin, std::time::Duration::from_micros(50));

        let full = format!(
            "{text}rdma_device = \"mlx5_0\"\nrdma_port = 2\ngid_index = 3\nrdma_slots = 64\n"
        );
        let r = Config::parse(&full).unwrap().transport.rdma();
        assert_eq!(r.device.device.as_deref(), Some("mlx5_0"));
        assert_eq!(r.device.port, 2);
        assert_eq!(r.device.gid_index, Some(3));
        assert_eq!(r.slots, 64);
    }

    #[test]
    fn rejects_bad_rdma_settings() {
        let text = GOOD.replace("kind = \"udp\"", "kind = \"rdma\"");
        let field = |extra: &str| match Config::parse(&format!("{text}{extra}\n")) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{extra}: expected Invalid, got {other:?}"),
        };
        assert_eq!(field("rdma_port = 0"), "transport.rdma_port");
        assert_eq!(field("rdma_slots = 2"), "transport.rdma_slots");
        assert_eq!(field("rdma_slots = 5000"), "transport.rdma_slots");
        assert_eq!(field("rdma_device = \"\""), "transport.rdma_device");
        // Out of u8 range: a parse error, not a silent truncation.
        assert!(matches!(
            Config::parse(&format!("{text}gid_index = 256\n")),
            Err(ConfigError::Parse { .. })
        ));
        // The side channel is TCP: ADDR:PORT like udp.
        let bad_listen = text.replace("127.0.0.1:7500", "/run/lockmgr.sock");
        assert!(matches!(
            Config::parse(&bad_listen),
            Err(ConfigError::Invalid {
                field: "transport.listen",
                ..
            })
        ));
        // RDMA keys on another transport are a mistake worth reporting.
        assert!(matches!(
            Config::parse(&format!("{GOOD}gid_index = 1\n")),
            Err(ConfigError::Invalid {
                field: "transport.rdma_*",
                ..
            })
        ));
    }

    #[test]
    fn rejects_short_or_malformed_keys() {
        assert!(parse_key_hex("0011").is_err());
        assert!(parse_key_hex("zz0102030405060708090a0b0c0d0e0f").is_err());
        assert!(parse_key_hex("0").is_err());
        assert!(parse_key_hex("é0102030405060708090a0b0c0d0e0f0").is_err());
    }

    #[test]
    fn rejects_both_or_no_key() {
        let both = GOOD.replace(
            "cluster_key_hex",
            "cluster_key_file = \"/nonexistent\"\ncluster_key_hex",
        );
        assert!(Config::parse(&both).unwrap().cluster_key().is_err());
        let none = GOOD.replace("cluster_key_hex = \"000102030405060708090a0b0c0d0e0f\"", "");
        assert!(Config::parse(&none).unwrap().cluster_key().is_err());
    }

    #[test]
    fn raw_ethernet_replicas_are_addressed_by_mac_and_afxdp_needs_a_link_interface() {
        let cfg = |kind: &str, repl: &str| {
            Config::parse(&format!(
                "cluster_key_hex = \"000102030405060708090a0b0c0d0e0f\"\n\
                 [transport]\nkind = \"{kind}\"\ninterface = \"lm0\"\n\
                 [replication]\nname = \"lm-a\"\netcd = [\"http://127.0.0.1:2379\"]\n\
                 cluster = \"t\"\n{repl}"
            ))
        };
        let field_of = |r: Result<Config, ConfigError>| match r {
            Err(ConfigError::Invalid { field, message }) => (field, message),
            other => panic!("accepted: {other:?}"),
        };
        // AF_PACKET: advertise defaults to the interface's MAC, the link to that interface.
        let ok = cfg("afpacket", "").unwrap();
        assert_eq!(ok.replication.unwrap().link_interface, None);
        cfg("afpacket", "advertise = \"02:6c:6d:00:01:00\"\n").unwrap();
        cfg("afpacket", "link_interface = \"lm1\"\n").unwrap();
        let (field, message) = field_of(cfg("afpacket", "advertise = \"10.0.0.1:7500\"\n"));
        assert_eq!(field, "replication.advertise");
        assert!(message.contains("not a MAC address"), "{message}");
        // AF_XDP: the standby's link needs an interface of its own.
        let (field, message) = field_of(cfg("afxdp", ""));
        assert_eq!(field, "replication.link_interface");
        assert!(message.contains("AF_XDP"), "{message}");
        let (field, _) = field_of(cfg("afxdp", "link_interface = \"lm0\"\n"));
        assert_eq!(field, "replication.link_interface");
        cfg(
            "afxdp",
            "link_interface = \"lm1\"\nadvertise = \"02:6c:6d:00:01:00\"\n",
        )
        .unwrap();
        // Elsewhere a link interface means nothing.
        let udp = GOOD.to_owned()
            + "[replication]\nname = \"a\"\netcd = [\"http://e:2379\"]\ncluster = \"t\"\n";
        Config::parse(&udp).unwrap();
        let (field, _) = field_of(Config::parse(&(udp.clone() + "link_interface = \"lm1\"\n")));
        assert_eq!(field, "replication.link_interface");
        // udp and rdma (the TCP side channel) replicas are reached at ADDR:PORT.
        let (field, _) = field_of(Config::parse(
            &(udp.clone() + "advertise = \"02:6c:6d:00:01:00\"\n"),
        ));
        assert_eq!(field, "replication.advertise");
        let rdma = udp.replace("kind = \"udp\"", "kind = \"rdma\"");
        Config::parse(&(rdma.clone() + "advertise = \"10.0.0.1:7600\"\n")).unwrap();
        let (field, _) = field_of(Config::parse(&(rdma + "advertise = \"rxe0\"\n")));
        assert_eq!(field, "replication.advertise");
    }
}
