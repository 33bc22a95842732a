//! One way to reach lockmgrd over any transport: describe the transport in a [`TransportSpec`]
//! and call [`connect`]. smbd, lockmgrctl and lockbench all used to repeat this switch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lockmgr_rdma::{RdmaClient, RdmaConfig, RdmaError};
use lockmgr_transport::afpacket::PacketClient;
use lockmgr_transport::afxdp::{XdpClient, XdpOptions};
use lockmgr_transport::eth::{EthConfig, MacAddr};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::shm::ShmClient;
use lockmgr_transport::udp::UdpClient;
use lockmgr_transport::{ClientTransport, SpinConfig, TransportError};

/// A client transport of any kind.
pub type AnyTransport = Box<dyn ClientTransport>;

/// Where lockmgrd listens and how to reach it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TransportSpec {
    /// Shared-memory rings set up over lockmgrd's unix socket.
    Shm {
        /// lockmgrd's unix socket.
        path: PathBuf,
        /// Busy-poll budget of `wait`.
        spin: SpinConfig,
        /// Limit for the set-up message.
        timeout: Duration,
    },
    /// Reliable datagrams over UDP.
    Udp {
        /// lockmgrd's address.
        server: SocketAddr,
        /// Reliability, spin and fabric settings.
        cfg: ReliableConfig,
    },
    /// Reliable datagrams in raw Ethernet frames over AF_PACKET.
    Afpacket {
        /// Local interface and EtherType.
        eth: EthConfig,
        /// lockmgrd's MAC address.
        server: MacAddr,
        /// Reliability, spin and fabric settings.
        cfg: ReliableConfig,
    },
    /// Reliable datagrams in raw Ethernet frames over AF_XDP.
    Afxdp {
        /// Local interface and EtherType.
        eth: EthConfig,
        /// AF_XDP socket options.
        xdp: XdpOptions,
        /// lockmgrd's MAC address.
        server: MacAddr,
        /// Reliability, spin and fabric settings.
        cfg: ReliableConfig,
    },
    /// RDMA RC queue pair, set up over a TCP side channel.
    Rdma {
        /// lockmgrd's TCP side channel.
        server: SocketAddr,
        /// Device, slots, spin and handshake settings.
        cfg: RdmaConfig,
    },
}

impl TransportSpec {
    /// Human-readable target for error messages ("shm:/run/lockmgrd.sock", ...).
    pub fn describe(&self) -> String {
        match self {
            TransportSpec::Shm { path, .. } => format!("shm:{}", path.display()),
            TransportSpec::Udp { server, .. } => format!("udp:{server}"),
            TransportSpec::Afpacket { eth, server, .. } => {
                format!("afpacket:{server} via {}", eth.interface)
            }
            TransportSpec::Afxdp { eth, server, .. } => {
                format!("afxdp:{server} via {}", eth.interface)
            }
            TransportSpec::Rdma { server, .. } => format!("rdma:{server}"),
        }
    }
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The transport could not be set up.
    #[error("cannot reach lockmgrd at {target}: {source}")]
    Transport {
        /// [`TransportSpec::describe`].
        target: String,
        /// The transport's error.
        #[source]
        source: TransportError,
    },
    /// RDMA could not be set up (its text names what is missing: no device, no GID, ...).
    #[error("cannot reach lockmgrd at {target} over RDMA: {source}")]
    Rdma {
        /// [`TransportSpec::describe`].
        target: String,
        /// The verbs layer's error.
        #[source]
        source: RdmaError,
    },
}

impl From<ConnectError> for TransportError {
    /// For callers that only speak [`TransportError`]: the full text survives as an I/O error.
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Transport { source, .. } => source,
            e @ ConnectError::Rdma { .. } => {
                TransportError::Io(std::io::Error::other(e.to_string()))
            }
        }
    }
}

/// Sets up the transport `spec` describes (not yet the lockmgr session: hand the result to
/// [`crate::LockClient::connect`]).
pub fn connect(spec: &TransportSpec) -> Result<AnyTransport, ConnectError> {
    let target = || spec.describe();
    let transport_err = |source| ConnectError::Transport {
        target: target(),
        source,
    };
    Ok(match spec {
        TransportSpec::Shm {
            path,
            spin,
            timeout,
        } => Box::new(ShmClient::connect(path, *spin, *timeout).map_err(transport_err)?),
        TransportSpec::Udp { server, cfg } => {
            Box::new(UdpClient::connect(*server, *cfg).map_err(transport_err)?)
        }
        TransportSpec::Afpacket { eth, server, cfg } => {
            Box::new(PacketClient::connect(eth, *server, *cfg).map_err(transport_err)?)
        }
        TransportSpec::Afxdp {
            eth,
            xdp,
            server,
            cfg,
        } => Box::new(XdpClient::connect(eth, xdp, *server, *cfg).map_err(transport_err)?),
        TransportSpec::Rdma { server, cfg } => Box::new(
            RdmaClient::connect(*server, cfg).map_err(|source| ConnectError::Rdma {
                target: target(),
                source,
            })?,
        ),
    })
}
