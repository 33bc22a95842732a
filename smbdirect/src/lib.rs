//! SMB Direct (MS-SMBD): SMB2 over RDMA send/receive.
//!
//! This crate is the protocol without I/O: [`codec`] parses and builds the three MS-SMBD
//! messages and the SMB2 RDMA buffer descriptors, [`conn`] is the per-connection state
//! machine (negotiation, credits, fragmentation, keep-alive) driven by the caller's clock and
//! completions, [`sim`] steps a client and a server core against each other in simulated
//! time for tests, and [`fuzzing`] holds the properties the fuzz targets check. The RDMA
//! daemon that moves the bytes (smbdirectd) will sit on top.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod conn;
pub mod fuzzing;
pub mod sim;

pub use codec::{BufferDescriptorV1, Channel, DecodeError, RdmaChannel};
pub use conn::{
    Config, ConfigError, Connection, ConnectionError, Event, Negotiated, Output, Role, SendError,
    Stats, Time, Transmit,
};
