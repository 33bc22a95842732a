//! lockmgr RDMA transport: reliable-connected (RC) queue pairs carrying lockmgr frames with
//! two-sided SEND/RECV.
//!
//! * **Set-up** goes over a TCP side channel, authenticated before anything else: the server
//!   sends a nonce, the client its nonce and proof of the cluster's fabric secret
//!   ([`lockmgr_transport::fabric::channel_proof`]) followed by its [`wire::Hello`] (QPN, PSN,
//!   LID, GID, MTU, ring size). Only if the proof verifies does the server create a queue pair
//!   (and pin memory for it); it answers with its own proof and hello, which the client checks
//!   before connecting its QP. Both move their QPs INIT -> RTR -> RTS. Connections still in
//!   set-up are capped ([`RdmaConfig::max_pending`], oldest dropped first) and time out after
//!   `handshake_timeout`. The socket then stays open, idle, purely for death detection: a
//!   killed process's socket is closed by the kernel, and the EOF becomes
//!   `ServerEvent::Disconnected` / `TransportError::Disconnected`.
//! * **Data**: every frame is one SEND of an 8-byte [`wire::Header`] plus the frame into a
//!   pre-posted receive slot of [`wire::SLOT_SIZE`] bytes (one slot per credit). Small messages
//!   go inline (`IBV_SEND_INLINE`, no registered send buffer).
//! * **Flow control**: credits, see [`credit`]; returned piggy-backed on data or in explicit
//!   credit-only messages, with the last credit reserved for credit returns.
//! * **Waiting**: busy-poll the CQ for [`SpinConfig::spin`], then arm it with
//!   `ibv_req_notify_cq` and sleep in epoll on the completion channel fd (plus the TCP sockets
//!   and the waker's eventfd).
//! * **Addressing**: RoCE needs a global route header (`is_global = 1`) and a GID index; by
//!   default the first IPv4-mapped GID of the port is used (index 1 on a fresh soft-RoCE link).
//!   InfiniBand uses LIDs.
//!
//! On a machine without RDMA, [`RdmaServer::bind`] and [`RdmaClient::connect`] fail with
//! [`RdmaError::NoDevice`] and an explanation.
//!
//! The verbs come from `rdma-sys` (bindgen against the system's libibverbs): it links the
//! distribution's libibverbs, so the binary uses whatever provider the target machine has
//! (mlx5, rxe, ...) through `/etc/libibverbs.d`, and needs no vendored rdma-core build.
//! Layers: `verbs`, `mr` and `qp` own every verbs object (RAII, destroy order encoded in
//! ownership) and are the only modules allowed `unsafe`; `slots` tracks which slot memory the
//! HCA owns; `conn` is the per-connection protocol (framing, credits) on a safe `QueuePair`;
//! `client`/`server`/`raw` drive connections. Why not the `ibverbs` crate: see the README's RDMA
//! section.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
// `unsafe` stays denied (workspace lint) everywhere but the three verbs modules, which wrap every
// libibverbs object in an owning type with safe methods; every unsafe block there carries a
// `// SAFETY:` comment (clippy::undocumented_unsafe_blocks is denied). The connection, client,
// server and benchmark code above them cannot contain `unsafe`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::time::Duration;

use lockmgr_transport::{SpinConfig, TransportError};

mod client;
mod conn;
pub mod credit;
#[doc(hidden)]
pub mod fuzzing;
#[allow(unsafe_code)]
mod mr;
#[allow(unsafe_code)]
mod qp;
pub mod raw;
mod server;
mod slots;
mod sys;
#[allow(unsafe_code)]
mod verbs;
pub mod wire;

pub use client::RdmaClient;
pub use conn::ConnStats;
pub use server::RdmaServer;
pub use verbs::{format_gid, DeviceConfig, DeviceInfo, LINK_LAYER_ETHERNET, LINK_LAYER_INFINIBAND};

/// Default of [`RdmaConfig::max_pending`].
pub const MAX_PENDING: usize = 1024;

/// Nonce and proof lengths of the side channel's challenge-response.
pub(crate) const AUTH_LEN: usize = 32;
/// Names the RDMA side channel in its proofs.
pub(crate) const CHANNEL: &[u8] = b"lockmgr-rdma side channel v1";

/// Settings shared by server and client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaConfig {
    /// Device, port and GID index.
    pub device: DeviceConfig,
    /// Receive slots per connection (credits granted to the peer), in
    /// [`wire::MIN_SLOTS`]..=[`wire::MAX_SLOTS`]. Each slot is [`wire::SLOT_SIZE`] bytes of
    /// registered (pinned) memory, and as much again for send slots.
    pub slots: u16,
    /// Requested `max_inline_data`; messages up to this size (header included) are sent
    /// inline. The provider may grant less (or nothing); 0 disables inline sends.
    pub max_inline: u32,
    /// Busy-poll budget of `wait`.
    pub spin: SpinConfig,
    /// Limit for the TCP connect and hello exchange.
    pub handshake_timeout: Duration,
    /// The cluster's fabric secret: both sides prove it on the TCP side channel before any
    /// queue pair is set up. Servers refuse to start without it; a client without it connects
    /// the side channel only, and [`lockmgr_transport::ClientTransport::authenticate`] (which
    /// `lockmgr-client` calls) finishes.
    pub fabric_key: Option<lockmgr_transport::FabricKey>,
    /// Side-channel connections a server keeps in set-up (not yet authenticated) at once;
    /// beyond it the oldest is dropped. Each costs a socket and ~150 bytes, never a queue pair.
    pub max_pending: usize,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: DeviceConfig::default(),
            slots: 32,
            max_inline: 256,
            spin: SpinConfig::default(),
            handshake_timeout: Duration::from_secs(5),
            fabric_key: None,
            max_pending: MAX_PENDING,
        }
    }
}

impl RdmaConfig {
    fn validate(&self) -> Result<(), RdmaError> {
        if self.max_pending == 0 {
            return Err(RdmaError::Config("max_pending must be at least 1".into()));
        }
        if !(wire::MIN_SLOTS..=wire::MAX_SLOTS).contains(&self.slots) {
            return Err(RdmaError::Config(format!(
                "slots must be in {}..={}",
                wire::MIN_SLOTS,
                wire::MAX_SLOTS
            )));
        }
        Ok(())
    }
}

/// Errors of opening devices and setting up connections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RdmaError {
    /// This machine has no usable RDMA device (no kernel support, no NIC, or no soft-RoCE
    /// link). The message says which and what to do.
    #[error("no RDMA device: {0}")]
    NoDevice(String),
    /// The configured device name does not exist.
    #[error("RDMA device {name:?} not found (available: {available})")]
    DeviceNotFound {
        /// Requested name.
        name: String,
        /// Devices that do exist.
        available: String,
    },
    /// A verbs call failed.
    #[error("{op} failed: {source}")]
    Verbs {
        /// The call.
        op: &'static str,
        /// errno.
        #[source]
        source: std::io::Error,
    },
    /// Bad configuration value.
    #[error("invalid RDMA configuration: {0}")]
    Config(String),
    /// Handshake or socket failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl From<std::io::Error> for RdmaError {
    fn from(e: std::io::Error) -> Self {
        RdmaError::Transport(TransportError::Io(e))
    }
}

impl From<RdmaError> for TransportError {
    /// For callers that only speak [`TransportError`]; the full message is in the
    /// [`RdmaError`]'s `Display`, so log that first where possible.
    fn from(e: RdmaError) -> Self {
        match e {
            RdmaError::NoDevice(_) => TransportError::Config(
                "no RDMA device (no kernel RDMA support, no RDMA NIC, or no soft-RoCE link)",
            ),
            RdmaError::DeviceNotFound { .. } => {
                TransportError::Config("the configured RDMA device does not exist")
            }
            RdmaError::Config(_) => TransportError::Config("invalid RDMA configuration"),
            RdmaError::Verbs { op, source } => TransportError::Io(std::io::Error::new(
                source.kind(),
                format!("{op}: {source}"),
            )),
            RdmaError::Transport(t) => t,
        }
    }
}

/// Opens the configured device without creating any connection: a cheap probe for "is there
/// RDMA here", and the way to learn which GID index auto-selection picks.
pub fn probe(cfg: &DeviceConfig) -> Result<DeviceInfo, RdmaError> {
    verbs::open(cfg).map(|d| d.info().clone())
}

fn check_frame_len(frame: &[u8]) -> Result<(), TransportError> {
    if frame.len() > lockmgr_transport::MAX_FRAME {
        return Err(TransportError::FrameTooLarge {
            len: frame.len(),
            max: lockmgr_transport::MAX_FRAME,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_slot_count_is_config_error() {
        let cfg = RdmaConfig {
            slots: 2,
            ..RdmaConfig::default()
        };
        assert!(matches!(cfg.validate(), Err(RdmaError::Config(_))));
        assert!(RdmaConfig::default().validate().is_ok());
    }

    #[test]
    fn no_device_maps_to_config_error() {
        let e: TransportError = RdmaError::NoDevice("x".into()).into();
        assert!(matches!(e, TransportError::Config(m) if m.starts_with("no RDMA device")));
    }
}
