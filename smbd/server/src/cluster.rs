//! The cluster lock service: every share-mode, byte-range, oplock and lease decision of this
//! node goes to one lockmgrd shared by all nodes ([`ClusterLocks`]), through the node's single
//! lockmgrd session multiplexed over its SMB connections
//! ([`lockmgr_client::mux::NodeSessions`]).
//!
//! Requests are synchronous round trips made by the worker thread that needs the answer. What
//! lockmgrd sends on its own (breaks caused by other nodes' opens, completions of blocking locks
//! and deferred creates) is picked up by a pump thread ([`Pump`]) that sleeps on the session's
//! fd and runs [`Shared::lock_tick`], so it reaches the owning connection at once rather than on
//! the workers' timer.
//!
//! While lockmgrd is unreachable the node keeps serving: lock requests are answered with
//! `STATUS_REQUEST_NOT_ACCEPTED` and the session is retried in the background (NodeSessions).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockmgr_client::mux::NodeSessions;
use lockmgr_client::{ClientError, ClientOptions, LockClient};
use lockmgr_proto::ClusterKey;
use lockmgr_rdma::{DeviceConfig, RdmaClient, RdmaConfig};
use lockmgr_transport::afpacket::PacketClient;
use lockmgr_transport::afxdp::XdpClient;
use lockmgr_transport::eth::{EthConfig, MacAddr};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::shm::ShmClient;
use lockmgr_transport::udp::{UdpClient, UdpConfig};
use lockmgr_transport::{ClientTransport, SpinConfig};

use crate::config::{LockTransport, LockmgrConfig};
use crate::locking::{LockService, Notification, Reply, Request, RequestId, SessionId};
use crate::shared::{lock, Shared};

/// Any lockmgr client transport, chosen from the configuration at run time.
pub type Transport = Box<dyn ClientTransport>;

type Nodes = Arc<Mutex<NodeSessions<Transport>>>;

/// Handshake limit of one connection attempt.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pump never sleeps longer than this, so shutdown is noticed promptly.
const PUMP_MAX_SLEEP: Duration = Duration::from_millis(100);
/// Same rule as lockmgrd's key files.
const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("[lockmgr] transport = \"embedded\" needs no cluster lock service")]
    Embedded,
    #[error("[lockmgr] {0}")]
    Config(String),
    #[error("cluster key file {path}: {why}")]
    Key { path: PathBuf, why: String },
}

fn read_key(path: &Path) -> Result<ClusterKey, ClusterError> {
    let key_err = |why: String| ClusterError::Key {
        path: path.to_owned(),
        why,
    };
    lockmgr_proto::private_file::check_private_file(path).map_err(key_err)?;
    let bytes = std::fs::read(path).map_err(|e| key_err(e.to_string()))?;
    if bytes.len() < MIN_KEY_BYTES {
        return Err(key_err(format!(
            "holds {} bytes; at least {MIN_KEY_BYTES} needed",
            bytes.len()
        )));
    }
    ClusterKey::new(&bytes).map_err(|e| key_err(e.to_string()))
}

fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "smbd".into())
}

/// [`LockService`] over a remote lockmgrd.
pub struct ClusterLocks {
    nodes: Nodes,
}

/// The pump's handle on the node session (see the module documentation).
pub struct Pump {
    nodes: Nodes,
}

impl ClusterLocks {
    /// Builds the node's lockmgrd session from `[lockmgr]`. Configuration errors are returned;
    /// an unreachable lockmgrd is not an error (it is logged and retried).
    pub fn from_config(cfg: &LockmgrConfig) -> Result<(ClusterLocks, Pump), ClusterError> {
        let missing = |what: &str| ClusterError::Config(format!("`{what}` is needed"));
        let connect = cfg.connect.clone().ok_or_else(|| missing("connect"))?;
        let key_file = cfg
            .cluster_key_file
            .clone()
            .ok_or_else(|| missing("cluster_key_file"))?;
        let key = read_key(&key_file)?;
        let options = ClientOptions {
            node_name: cfg.node_name.clone().unwrap_or_else(default_node_name),
            key,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        let spin = SpinConfig::adaptive(Duration::from_micros(cfg.spin_us));
        let connector: lockmgr_client::mux::Connector<Transport> = match cfg.transport {
            LockTransport::Embedded => return Err(ClusterError::Embedded),
            LockTransport::Shm => {
                let path = PathBuf::from(connect);
                Box::new(move || {
                    let t = ShmClient::connect(&path, spin, HANDSHAKE_TIMEOUT)?;
                    LockClient::connect(Box::new(t) as Transport, &options)
                })
            }
            LockTransport::Udp => {
                let addr: std::net::SocketAddr = connect.parse().map_err(|_| {
                    ClusterError::Config(format!("connect = {connect:?} is not ADDR:PORT"))
                })?;
                Box::new(move || {
                    let t = UdpClient::connect(
                        addr,
                        UdpConfig {
                            spin,
                            connect_timeout: HANDSHAKE_TIMEOUT,
                            ..UdpConfig::default()
                        },
                    )?;
                    LockClient::connect(Box::new(t) as Transport, &options)
                })
            }
            LockTransport::Afpacket | LockTransport::Afxdp => {
                let server: MacAddr = connect.parse().map_err(|_| {
                    ClusterError::Config(format!("connect = {connect:?} is not a MAC address"))
                })?;
                let eth = EthConfig {
                    interface: cfg.interface.clone().ok_or_else(|| missing("interface"))?,
                    ethertype: cfg.ethertype,
                };
                let reliable = ReliableConfig {
                    spin,
                    connect_timeout: HANDSHAKE_TIMEOUT,
                    ..ReliableConfig::default()
                };
                if cfg.transport == LockTransport::Afpacket {
                    Box::new(move || {
                        let t = PacketClient::connect(&eth, server, reliable)?;
                        LockClient::connect(Box::new(t) as Transport, &options)
                    })
                } else {
                    Box::new(move || {
                        let t = XdpClient::connect(&eth, &Default::default(), server, reliable)?;
                        LockClient::connect(Box::new(t) as Transport, &options)
                    })
                }
            }
            LockTransport::Rdma => {
                let addr: std::net::SocketAddr = connect.parse().map_err(|_| {
                    ClusterError::Config(format!("connect = {connect:?} is not ADDR:PORT"))
                })?;
                let rdma = RdmaConfig {
                    device: DeviceConfig {
                        device: cfg.rdma_device.clone(),
                        port: cfg.rdma_port,
                        gid_index: cfg.gid_index,
                    },
                    spin,
                    handshake_timeout: HANDSHAKE_TIMEOUT,
                    ..RdmaConfig::default()
                };
                Box::new(move || {
                    let t = RdmaClient::connect(addr, &rdma).map_err(|e| {
                        // RdmaError's text names what is missing (no device, no GID).
                        ClientError::Transport(lockmgr_transport::TransportError::Io(
                            std::io::Error::other(e.to_string()),
                        ))
                    })?;
                    LockClient::connect(Box::new(t) as Transport, &options)
                })
            }
        };
        tracing::info!(
            transport = ?cfg.transport,
            connect = cfg.connect.as_deref().unwrap_or(""),
            "using the cluster lock manager"
        );
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        Ok(Self::with_connector(connector, timeout))
    }

    /// A cluster lock service over any connector (tests use an in-process lockmgrd).
    pub fn with_connector(
        connector: lockmgr_client::mux::Connector<Transport>,
        timeout: Duration,
    ) -> (ClusterLocks, Pump) {
        let sessions = NodeSessions::new(connector, timeout);
        if sessions.is_connected() {
            tracing::info!("lockmgrd session established");
        }
        let nodes = Arc::new(Mutex::new(sessions));
        (
            ClusterLocks {
                nodes: Arc::clone(&nodes),
            },
            Pump { nodes },
        )
    }

    /// The lock manager's operator view, through this node's session.
    pub fn status(&self) -> Result<String, ClientError> {
        lock(&self.nodes).status()
    }
}

/// Re-arms the session fd after a worker used the session. Reading from the session disarms the
/// shared-memory doorbell; if the pump is asleep it would then not be woken by the next break.
/// When frames are already waiting they are taken in now (and routed by the caller).
fn rearm(n: &mut NodeSessions<Transport>) {
    for _ in 0..4 {
        if n.arm() {
            return;
        }
        if !n.is_connected() {
            return;
        }
        n.tick();
    }
}

impl LockService for ClusterLocks {
    fn open_session(&mut self, _session: SessionId) {
        // lockmgrd knows nodes, not connections: nothing to announce.
    }

    fn end_session(&mut self, session: SessionId) {
        let mut n = lock(&self.nodes);
        n.end_connection(session);
        rearm(&mut n);
    }

    fn request(&mut self, session: SessionId, id: RequestId, req: Request) -> Reply {
        let mut n = lock(&self.nodes);
        let reply = n.request(session, id, req);
        rearm(&mut n);
        reply
    }

    fn poll_event(&mut self) -> Option<(SessionId, Notification)> {
        lock(&self.nodes).poll_event()
    }

    fn tick(&mut self) {
        lock(&self.nodes).tick();
    }

    fn take_lost_connections(&mut self) -> Vec<SessionId> {
        lock(&self.nodes).take_lost_connections()
    }
}

impl Pump {
    /// Runs until `shared.shutdown`: sleeps on the lockmgrd session's fd and delivers what
    /// arrives (breaks, completions) to the connections.
    pub fn run(self, shared: Arc<Shared>) {
        while !shared.shutdown.load(Ordering::Relaxed) {
            let (fd, armed, sleep) = {
                let mut n = lock(&self.nodes);
                let armed = n.arm();
                (n.raw_fd(), armed, n.poll_timeout().min(PUMP_MAX_SLEEP))
            };
            if armed {
                match fd {
                    Some(fd) => wait_readable(fd, sleep),
                    None => std::thread::sleep(sleep),
                }
            }
            shared.lock_tick();
        }
        tracing::debug!("lockmgr pump stopped");
    }
}

fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid, exclusively borrowed pollfd array of length 1 for the call's
    // duration. A stale fd (the session was replaced meanwhile) makes poll return at once with
    // POLLNVAL, which only costs one extra loop turn.
    let r = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
    if r < 0 {
        // EINTR or a transient failure: avoid a busy loop, the caller ticks anyway.
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"short").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let e = read_key(&p).err().unwrap().to_string();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [7u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let e = read_key(&p).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
